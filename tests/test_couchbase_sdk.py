"""
The official Couchbase Python SDK (4.6.3, sync API) against a real
``twistd -n txcb --couchbase PORT`` process: bootstrap (SCRAM-SHA512 and
PLAIN), every KV operation with its success and error cases as the SDK
reports them, durability on a persistent bucket and its refusal on an
ephemeral one, ping and wait_until_ready, a restart with the SDK
reconnecting, and values crossing to the memcached endpoint.
"""

import os
import tempfile
import time
import uuid
from datetime import timedelta

from twisted.trial import unittest

from tests.support.couchbase_sdk import (
    KV_TIMEOUT, SKIP_SDK, TxcbTwistd, connect, free_ports, shared_txcb)

if SKIP_SDK is None:
    import couchbase.subdocument as SD
    from couchbase.durability import (
        ClientDurability, Durability, PersistTo, PersistToExtended, ServerDurability)
    from couchbase.exceptions import (
        AuthenticationException, CasMismatchException, CouchbaseException,
        DocumentExistsException, DocumentLockedException, DocumentNotFoundException,
        DocumentNotLockedException, DurabilityImpossibleException,
        DurabilityInvalidLevelException, InvalidArgumentException, ScopeNotFoundException,
        UnAmbiguousTimeoutException)
    from couchbase.options import (
        DecrementOptions, DeltaValue, GetOptions, IncrementOptions, InsertOptions,
        RemoveOptions, ReplaceOptions, SignedInt64, UpsertOptions)
    from couchbase.transcoder import RawBinaryTranscoder, RawStringTranscoder


def _key():
    return "k-" + uuid.uuid4().hex[:12]


def _own_server(testcase, args=(), port=None, data_dir=None):
    server = TxcbTwistd(list(args), port=port, data_dir=data_dir).start()
    testcase.addCleanup(server.remove)
    return server


class SdkAuthTests(unittest.TestCase):
    """--auth-file: SCRAM-SHA512 (the SDK's default) and PLAIN, and a wrong password."""

    skip = SKIP_SDK

    def setUp(self):
        fd, path = tempfile.mkstemp(prefix="txcb-auth-")
        os.write(fd, b"alice:s3cret\n")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        self.server = _own_server(self, ["--ephemeral", "--auth-file", path])

    def test_scram_sha512_plain_and_wrong_password(self):
        _c, _b, coll = connect(self, self.server.port, "alice", "s3cret")
        coll.upsert("scram", {"via": "SCRAM-SHA512"})
        _c, _b, plain = connect(self, self.server.port, "alice", "s3cret",
                                mechanisms=["PLAIN"])
        self.assertEqual(plain.get("scram").content_as[dict], {"via": "SCRAM-SHA512"})
        with self.assertRaises(AuthenticationException):
            connect(self, self.server.port, "alice", "wrong")
        with self.assertRaises(AuthenticationException):
            connect(self, self.server.port, "alice", "wrong", mechanisms=["PLAIN"])
        log = self.server.log()
        self.assertIn("authentication failure", log)
        self.assertNotIn("wrong", log.replace("wrong proof", ""))
        self.assertNotIn("s3cret", log)


class SdkKeyValueTests(unittest.TestCase):
    """Every KV operation on the shared ephemeral server, as the SDK reports it."""

    skip = SKIP_SDK

    def setUp(self):
        self.server = shared_txcb()
        self.cluster, self.bucket, self.coll = connect(self, self.server.port)

    def test_upsert_get_insert_replace_remove(self):
        coll, k = self.coll, _key()
        r = coll.upsert(k, {"a": 1})
        self.assertEqual(coll.get(k).content_as[dict], {"a": 1})
        self.assertEqual(coll.get(k).cas, r.cas)
        with self.assertRaises(DocumentExistsException):
            coll.insert(k, {"a": 2})
        coll.insert(k + "-new", "text")
        self.assertEqual(coll.get(k + "-new").content_as[str], "text")
        with self.assertRaises(DocumentNotFoundException):
            coll.replace(k + "-missing", {"a": 2})
        with self.assertRaises(CasMismatchException):
            coll.replace(k, {"a": 3}, ReplaceOptions(cas=r.cas + 1))
        coll.replace(k, {"a": 3}, ReplaceOptions(cas=r.cas))
        with self.assertRaises(CasMismatchException):
            coll.remove(k, RemoveOptions(cas=1))
        coll.remove(k)
        with self.assertRaises(DocumentNotFoundException):
            coll.get(k)
        with self.assertRaises(DocumentNotFoundException):
            coll.remove(k)

    def test_exists(self):
        k = _key()
        self.assertFalse(self.coll.exists(k).exists)
        self.coll.upsert(k, 1)
        self.assertTrue(self.coll.exists(k).exists)

    def test_mutation_tokens(self):
        k = _key()
        t1 = self.coll.upsert(k, 1).mutation_token()
        t2 = self.coll.upsert(k, 2).mutation_token()
        self.assertEqual(t1.partition_uuid, t2.partition_uuid)
        self.assertGreater(t2.sequence_number, t1.sequence_number)
        self.assertEqual(t1.bucket_name, "default")

    def test_touch_get_and_touch_expiry(self):
        coll, k = self.coll, _key()
        coll.upsert(k, {"a": 1})
        coll.touch(k, timedelta(seconds=1))
        with self.assertRaises(DocumentNotFoundException):
            coll.touch(k + "-missing", timedelta(seconds=10))
        self.assertEqual(coll.get_and_touch(k, timedelta(seconds=100)).content_as[dict],
                         {"a": 1})
        coll.upsert(k + "-short", 1, UpsertOptions(expiry=timedelta(seconds=1)))
        time.sleep(2.1)
        with self.assertRaises(DocumentNotFoundException):
            coll.get(k + "-short")
        self.assertEqual(coll.get(k).content_as[dict], {"a": 1})

    def test_locks(self):
        coll, k = self.coll, _key()
        coll.upsert(k, {"a": 1})
        locked = coll.get_and_lock(k, timedelta(seconds=10))
        self.assertEqual(coll.get(k).cas, 0xFFFFFFFFFFFFFFFF)
        started = time.monotonic()
        with self.assertRaises(DocumentLockedException):
            coll.upsert(k, {"a": 2})
        self.assertLess(time.monotonic() - started, KV_TIMEOUT.total_seconds() + 1)
        with self.assertRaises(CasMismatchException):
            coll.unlock(k, locked.cas + 1)
        coll.unlock(k, locked.cas)
        with self.assertRaises(DocumentNotLockedException):
            coll.unlock(k, coll.get(k).cas)
        coll.upsert(k, {"a": 2})
        with self.assertRaises(DocumentNotFoundException):
            coll.get_and_lock(k + "-missing", timedelta(seconds=1))

    def test_binary_counters(self):
        bc, k = self.coll.binary(), _key()
        self.assertEqual(bc.increment(k).content, 0)          # created at its initial 0
        self.assertEqual(bc.increment(k, IncrementOptions(delta=DeltaValue(5))).content, 5)
        self.assertEqual(bc.decrement(k, DecrementOptions(delta=DeltaValue(2))).content, 3)
        self.assertEqual(bc.decrement(k, DecrementOptions(delta=DeltaValue(10))).content, 0)
        self.assertEqual(bc.increment(k + "-init", IncrementOptions(
            initial=SignedInt64(40))).content, 40)
        with self.assertRaises(DocumentNotFoundException):
            bc.increment(k + "-none", IncrementOptions(initial=SignedInt64(-1)))
        self.coll.upsert(k + "-text", "abc")
        with self.assertRaises((InvalidArgumentException, CouchbaseException)):
            bc.increment(k + "-text")

    def test_binary_append_prepend(self):
        coll, k = self.coll, _key()
        raw = RawBinaryTranscoder()
        coll.upsert(k, b"mid", UpsertOptions(transcoder=raw))
        coll.binary().append(k, b">")
        coll.binary().prepend(k, b"<")
        self.assertEqual(coll.get(k, GetOptions(transcoder=raw)).content_as[bytes], b"<mid>")
        with self.assertRaises(DocumentNotFoundException):
            coll.binary().append(k + "-missing", b"x")

    def test_get_multi_upsert_multi(self):
        keys = {_key(): {"n": i} for i in range(50)}
        self.assertTrue(self.coll.upsert_multi(keys).all_ok)
        got = self.coll.get_multi(list(keys) + ["missing-" + _key()])
        self.assertFalse(got.all_ok)
        self.assertEqual({k: r.content_as[dict] for k, r in got.results.items()}, keys)
        self.assertEqual(len(got.exceptions), 1)

    def test_durability_refused_on_ephemeral(self):
        k = _key()
        self.coll.upsert(k, 1, UpsertOptions(durability=ServerDurability(Durability.MAJORITY)))
        for level in (Durability.MAJORITY_AND_PERSIST_TO_ACTIVE,
                      Durability.PERSIST_TO_MAJORITY):
            with self.assertRaises(DurabilityInvalidLevelException):
                self.coll.upsert(k, 2, UpsertOptions(durability=ServerDurability(level)))
        with self.assertRaises(DurabilityImpossibleException):
            self.coll.upsert(k, 3, UpsertOptions(durability=ClientDurability(
                persist_to=PersistTo.ONE)))
        # The SDK sends the write, then finds that a replica cannot see it.
        self.assertEqual(self.coll.get(k).content_as[int], 3)

    def test_subdoc_is_an_error_not_an_abort(self):
        k = _key()
        self.coll.upsert(k, {"a": 1})
        with self.assertRaises(CouchbaseException):
            self.coll.lookup_in(k, [SD.get("a")])
        with self.assertRaises(CouchbaseException):
            self.coll.get(k, GetOptions(with_expiry=True))
        self.assertEqual(self.coll.get(k).content_as[dict], {"a": 1})

    def test_unknown_scope(self):
        with self.assertRaises((ScopeNotFoundException, UnAmbiguousTimeoutException)):
            self.bucket.scope("nope").collection("c").upsert(_key(), 1)

    def test_ping_and_wait_until_ready(self):
        self.cluster.wait_until_ready(timedelta(seconds=2))
        report = self.bucket.ping()
        [(service, endpoints)] = list(report.endpoints.items())
        self.assertEqual(service.value, "key_value")
        self.assertTrue(endpoints)


class SdkPersistentTests(unittest.TestCase):
    """A persistent bucket: durable writes, OBSERVE_SEQNO, a restart."""

    skip = SKIP_SDK

    def setUp(self):
        self.data_dir = self.mktemp()
        os.makedirs(self.data_dir)
        self.server = _own_server(self, data_dir=self.data_dir)

    def test_server_durability_persists(self):
        _c, _b, coll = connect(self, self.server.port)
        k = _key()
        for level in (Durability.MAJORITY, Durability.MAJORITY_AND_PERSIST_TO_ACTIVE,
                      Durability.PERSIST_TO_MAJORITY):
            coll.upsert(k, {"level": level.value},
                        UpsertOptions(durability=ServerDurability(level)))
        coll.insert(k + "-i", 1, InsertOptions(durability=ServerDurability(
            Durability.PERSIST_TO_MAJORITY)))
        coll.remove(k + "-i", RemoveOptions(durability=ServerDurability(
            Durability.PERSIST_TO_MAJORITY)))
        coll.upsert(k + "-c", 1, UpsertOptions(durability=ClientDurability(
            persist_to=PersistToExtended.ACTIVE)))
        # What a durable write waited for is on disk: a kill loses none of it.
        self.server.kill()
        self.server.start()
        _c, _b, coll = connect(self, self.server.port)
        self.assertEqual(coll.get(k).content_as[dict], {"level": 3})
        self.assertFalse(coll.exists(k + "-i").exists)

    def test_restart_with_the_sdk_reconnecting(self):
        _c, _b, coll = connect(self, self.server.port)
        k = _key()
        coll.upsert(k, {"before": True})
        self.server.stop()
        self.server.start()
        deadline = time.monotonic() + 15
        while True:
            try:
                self.assertEqual(coll.get(k).content_as[dict], {"before": True})
                break
            except CouchbaseException:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)
        coll.upsert(k, {"after": True})
        self.assertEqual(coll.get(k).content_as[dict], {"after": True})


class SdkCrossEndpointTests(unittest.TestCase):
    """Documents cross to the memcached and netstring endpoints with the same bytes and flags."""

    skip = SKIP_SDK

    def test_values_cross_to_netstring(self):
        from txcb.client.blocking import Bucket
        ns_port, = free_ports(1)
        server = _own_server(self, ["--ephemeral", "--port", str(ns_port)])
        _c, _b, coll = connect(self, server.port)
        ns = Bucket("tcp:127.0.0.1:%d" % (ns_port,))
        self.addCleanup(ns.close)
        k = _key()
        coll.upsert(k, {"a": [1, 2]})
        r = ns.get(k)
        self.assertEqual((r.value, r.flags, r.raw), ({"a": [1, 2]}, 0x02000000, b'{"a": [1, 2]}'))
        ns.upsert(k + "-ns", {"from": "netstring"})
        ns.upsert(k + "-text", "text")
        self.assertEqual(coll.get(k + "-ns").content_as[dict], {"from": "netstring"})
        self.assertEqual(coll.get(k + "-text", GetOptions(transcoder=RawStringTranscoder()))
                         .content_as[str], "text")
        cas = coll.get(k).cas
        self.assertEqual(r.cas, cas)

    def test_values_cross_to_memcached(self):
        from pymemcache.client.base import Client
        mc_port, = free_ports(1)
        server = _own_server(self, ["--ephemeral", "--memcached", str(mc_port)])
        _c, _b, coll = connect(self, server.port)
        mc = Client(("127.0.0.1", mc_port), default_noreply=False)
        self.addCleanup(mc.close)
        k = _key()
        coll.upsert(k, {"a": 1})
        raw = mc.raw_command(b"get " + k.encode(), b"END")
        # 0x02000000: the JSON common flags, and the bytes the SDK sent.
        self.assertEqual(raw, b"VALUE %s 33554432 8\r\n{\"a\": 1}\r\n" % k.encode())
        mc.set(k + "-mc", b"from memcached", flags=0x04000004)
        self.assertEqual(coll.get(k + "-mc", GetOptions(transcoder=RawStringTranscoder()))
                         .content_as[str], "from memcached")
        mc.set(k + "-bin", b"\x00\x01", flags=0x03000002)
        self.assertEqual(coll.get(k + "-bin", GetOptions(transcoder=RawBinaryTranscoder()))
                         .content_as[bytes], b"\x00\x01")


def _skip_without_collections():
    from txcb.service import tap
    if "--collection" not in str(tap.Options()):
        return "twistd txcb has no --collection option in this tree"
    return SKIP_SDK


class SdkCollectionTests(unittest.TestCase):
    """--bucket and --collection: each bucket and collection is its own keyspace."""

    skip = _skip_without_collections()

    def test_named_buckets_and_collections(self):
        server = _own_server(self, ["--ephemeral", "--bucket", "default", "--bucket", "other",
                                    "--collection", "default.app.users"])
        cluster, b, coll = connect(self, server.port)
        users = b.scope("app").collection("users")
        k = _key()
        users.upsert(k, {"in": "users"})
        coll.upsert(k, {"in": "default"})
        other = cluster.bucket("other").default_collection()
        other.upsert(k, {"in": "other"})
        self.assertEqual(users.get(k).content_as[dict], {"in": "users"})
        self.assertEqual(coll.get(k).content_as[dict], {"in": "default"})
        self.assertEqual(other.get(k).content_as[dict], {"in": "other"})
        self.assertEqual(users.upsert(k, 1).mutation_token().partition_uuid !=
                         coll.upsert(k, 1).mutation_token().partition_uuid, True)
        with self.assertRaises(CouchbaseException):       # 0x88, retried to the timeout
            b.scope("app").collection("nope").get(k)


class SdkTlsTests(unittest.TestCase):
    """An ssl: endpoint: the SDK over TLS (kvSSL), and memcached over TLS beside it."""

    skip = SKIP_SDK

    def test_sdk_and_memcached_over_tls(self):
        import ssl
        import twisted.test
        from pymemcache.client.base import Client
        pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
        cb_port, mc_port = free_ports(2)
        server = _own_server(self, [
            "--ephemeral",
            "--couchbase", "ssl:%d:interface=127.0.0.1:privateKey=%s" % (cb_port, pem),
            "--memcached", "ssl:%d:interface=127.0.0.1:privateKey=%s" % (mc_port, pem)])
        _c, _b, coll = connect_tls(self, cb_port)
        k = _key()
        coll.upsert(k, {"over": "tls"})
        self.assertEqual(coll.get(k).content_as[dict], {"over": "tls"})
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        mc = Client(("127.0.0.1", mc_port), tls_context=ctx, timeout=5, default_noreply=False)
        self.addCleanup(mc.close)
        # Regression: these replies went out unencrypted ("wrong version number").
        self.assertEqual(mc.get(k), b'{"over": "tls"}')
        self.assertTrue(server.running)


def connect_tls(testcase, port):
    """The SDK over TLS (``couchbases://``, the test certificate not verified)."""
    from couchbase.auth import PasswordAuthenticator
    from couchbase.cluster import Cluster
    from couchbase.options import ClusterOptions, ClusterTimeoutOptions
    cluster = Cluster("couchbases://127.0.0.1:%d?ssl=no_verify" % (port,), ClusterOptions(
        PasswordAuthenticator("user", "pass"),
        timeout_options=ClusterTimeoutOptions(kv_timeout=KV_TIMEOUT,
                                              connect_timeout=timedelta(seconds=5))))
    testcase.addCleanup(cluster.close)
    cluster.wait_until_ready(timedelta(seconds=5))
    b = cluster.bucket("default")
    return cluster, b, b.default_collection()
