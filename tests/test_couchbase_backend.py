"""
txcb.buckets.couchbase (an IBucket over the official Couchbase SDK) and
``twistd txcb --backend couchbase://`` (txcb as its memcached/netstring proxy),
against real ``twistd txcb --couchbase`` processes.
"""

import os
import time
import threading

from twisted.internet import defer, reactor, threads
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.python import usage
from twisted.trial import unittest
from zope.interface.verify import verifyObject

from tests.support.cbbackend import (
    PASSWORD, SCOPE, SKIP_SDK, USER, ProxyTwistd, RawReader, backing_server,
    next_collection)
from tests.support.contract import BucketContractMixin
from tests.support.procs import free_port
import txcb.subdocument as SD
from txcb import errors
from txcb.buckets import cbsdk, cbsubdocs
from txcb.formats import FMT_BYTES, FMT_JSON, FMT_UTF8, Encoded
from txcb.interfaces import IBucket
from txcb.service import tap
from txcb.service.keyspaces import is_couchbase_backend, make_keyspaces, with_bucket

try:
    import pymemcache.client.base as pymemcache
except ImportError:  # pragma: no cover
    pymemcache = None
try:
    import bmemcached
except ImportError:  # pragma: no cover
    bmemcached = None

if SKIP_SDK is None:
    from txcb.buckets.couchbase import CouchbaseBucket


def sleep(seconds):
    return deferLater(reactor, seconds, lambda: None)


def new_bucket(testcase, port, timeout=1.0, **kw):
    b = CouchbaseBucket("couchbase://127.0.0.1:%d" % (port,), USER, PASSWORD,
                        reactor=reactor, timeout=timeout, **kw)
    testcase.addCleanup(b.close)
    return b


class _OneBackingServer:
    """One backing server per test class (started in setUpClass)."""

    @classmethod
    def setUpClass(cls):
        if SKIP_SDK is not None:
            return
        cls.server = backing_server().start()

    @classmethod
    def tearDownClass(cls):
        server = getattr(cls, "server", None)
        if server is not None:
            server.remove()


_REAL_TIME = ("the backing server's clock is the real one: this test waits %s at fixed "
              "TTLs (CouchbaseBackendBehaviourTests.test_real_time_ttls checks TTLs with "
              "short real waits)")


class CouchbaseBackendContractTests(_OneBackingServer, BucketContractMixin,
                                    unittest.TestCase):
    """
    The IBucket contract against CouchbaseBucket on a real, persistent
    ``twistd txcb --couchbase``: each test in a fresh named collection.
    """

    skip = SKIP_SDK
    timeout = 30
    supports_locks = True
    supports_scan = False
    max_persist_to = 1  # a persistent bucket, no replicas
    short_ttl = 1

    def make_bucket(self):
        return new_bucket(self, self.server.port, timeout=0.75, max_value_size=4096,
                          scope=SCOPE, collection=next_collection())

    def advance(self, seconds):
        if seconds > 3:
            raise unittest.SkipTest(_REAL_TIME % ("%ss" % seconds))
        return sleep(seconds)

    def expire(self, ttl):
        return sleep(ttl + 1.1)

    def test_relative_ttl_expires(self):
        raise unittest.SkipTest(_REAL_TIME % "10.5 s")

    def test_touch_changes_expiry(self):
        raise unittest.SkipTest(_REAL_TIME % "1050 s")

    def test_get_with_ttl_touches(self):
        raise unittest.SkipTest(_REAL_TIME % "50 s")

    def test_counter_with_ttl_on_creation(self):
        raise unittest.SkipTest(_REAL_TIME % "11 s")

    # What the SDK cannot do, asserted as NotSupportedError.

    @inlineCallbacks
    def test_flush_removes_every_item_and_lock(self):
        b = yield self.bucket()
        yield b.upsert("a", 1)
        yield self.assertFails(b.flush(), errors.NotSupportedError)
        r = yield b.get("a")
        self.assertEqual(r.value, 1)

    @inlineCallbacks
    def test_stats(self):
        # The provider's own counters: the SDK does not report the bucket's.
        b = yield self.bucket()
        yield b.upsert("k", "v")
        yield b.get("k")
        yield b.get("missing", quiet=True)
        yield self.assertFails(b.get("missing"), errors.NotFoundError)
        s = yield b.stats()
        self.assertEqual((s["op_upsert"], s["op_get"], s["hits"], s["misses"]), (1, 3, 1, 2))
        self.assertEqual((s["errors_get"], s["errors_upsert"]), (1, 0))
        self.assertGreater(s["latency_avg_us_get"], 0)
        self.assertGreaterEqual(s["latency_max_us_get"], s["latency_avg_us_get"])
        self.assertEqual(s["bucket_type"], "couchbase")
        self.assertEqual((s["connections"], s["pending"], s["max_persist_to"]), (1, 0, 1))
        self.assertIn("uptime", s)

    @inlineCallbacks
    def test_endure_defaults(self):
        b = yield self.bucket()
        r = yield b.upsert("k", "v")
        e = yield b.endure("k", persist_to=0, replicate_to=0, cas=r.cas)
        self.assertEqual(e.cas, r.cas)
        yield self.assertFails(b.endure("k", persist_to=0, replicate_to=0, cas=r.cas + 1),
                               errors.KeyExistsError)
        yield self.assertFails(b.endure("missing", persist_to=0, replicate_to=0),
                               errors.NotFoundError)
        yield self.assertFails(b.endure("k"), errors.NotSupportedError)
        yield b.remove("k")
        e = yield b.endure("k", persist_to=0, replicate_to=0, check_removed=True)
        self.assertTrue(e.success)

    @inlineCallbacks
    def test_subdoc_mutate_durability(self):
        # As the contract's, but endure cannot observe the disk here (see
        # test_endure_defaults): the durable mutate_in waits for it itself.
        b = yield self.bucket()
        yield b.upsert("doc", {"n": 1})
        r = yield b.mutate_in("doc", SD.upsert("a", 1), persist_to=1)
        e = yield b.endure("doc", persist_to=0, replicate_to=0, cas=r.cas)
        self.assertEqual(e.cas, r.cas)
        r = yield b.mutate_in("doc", SD.counter("n", 2), persist_to=-1)
        self.assertEqual(r[0], 3)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("b", 1), persist_to=2),
                               errors.DurabilityError)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("b", 1), replicate_to=1),
                               errors.DurabilityError)
        got = yield b.get("doc")
        self.assertEqual((got.value, got.cas), ({"n": 3, "a": 1}, r.cas))

    @inlineCallbacks
    def test_durable_mutations_within_the_bucket(self):
        # Client durability (OBSERVE_SEQNO polling of the active node's disk).
        b = yield self.bucket()
        for persist in (-1, 1):
            r = yield b.upsert("k", "v%d" % persist, persist_to=persist)
            g = yield b.get("k")
            self.assertEqual((g.value, g.cas), ("v%d" % persist, r.cas))
        r = yield b.append("k", "+", persist_to=-1)
        g = yield b.get("k")
        self.assertEqual((g.value, g.cas), ("v1+", r.cas))
        r = yield b.remove("k", persist_to=-1)
        self.assertTrue(r.success)
        yield self.assertFails(b.get("k"), errors.NotFoundError)
        q = yield b.remove("k", quiet=True, persist_to=-1)
        self.assertFalse(q.success)


class CouchbaseBackendBehaviourTests(_OneBackingServer, unittest.TestCase):
    """What is particular to this provider: TTLs on the real clock, formats
    across SDKs, timeouts and cancellation, the bounded queue."""

    skip = SKIP_SDK
    timeout = 30

    def bucket(self, **kw):
        kw.setdefault("scope", SCOPE)
        kw.setdefault("collection", next_collection())
        return new_bucket(self, self.server.port, **kw)

    def test_provides_ibucket(self):
        self.assertTrue(verifyObject(IBucket, self.bucket()))

    @inlineCallbacks
    def test_real_time_ttls(self):
        b = self.bucket()
        yield b.upsert("k", "v", ttl=1)
        yield b.counter("c", initial=1, ttl=1)
        yield b.upsert("t", "v", ttl=1)
        yield b.touch("t", 100)
        yield b.upsert("g", "v", ttl=1)
        yield b.get("g", ttl=100)
        yield sleep(2.2)
        got = yield b.get_multi(["k", "c", "t", "g"], quiet=True)
        self.assertEqual([got[k].success for k in ("k", "c", "t", "g")],
                         [False, False, True, True])
        # An absolute expiry already past: stored, and gone at once.
        yield b.upsert("p", "v", ttl=31 * 24 * 3600)
        yield self.assertFailure(b.get("p"), errors.NotFoundError)
        yield b.touch("t", int(time.time()) - 10)
        yield self.assertFailure(b.get("t"), errors.NotFoundError)

    # -- sub-documents (the contract has the rest) ---------------------------

    @inlineCallbacks
    def test_subdoc_refuses_what_the_sdk_cannot_express(self):
        b = self.bucket()
        stored = yield b.upsert("doc", {"a": 1, "l": [1]})
        X, E, M = SD.PathFlag.XATTR, SD.PathFlag.EXPAND_MACROS, SD.PathFlag.MKDIR_P
        Op = SD.Opcode
        for specs, kw in [
                ((SD.Spec(Op.GET, "a", b"", SD.PathFlag.BINARY_VALUE),), {}),
                ((SD.Spec(Op.DICT_UPSERT, "m", b'{"c":"${Mutation.CAS}"}', X | E),), {}),
                ((SD.Spec(Op.ARRAY_PUSH_LAST, "l", b'"${Mutation.CAS}",1', X | E),), {}),
                ((SD.Spec(Op.COUNTER, "n", b"1", X | E),), {}),
                ((SD.Spec(Op.GET_DOC, "", b"", X),), {}),
                ((SD.Spec(Op.REPLACE, "a", b"2", M),), {}),
                ((SD.insert("b", 1),), dict(preserve_expiry=True)),
                ((SD.replace("a", 2),), dict(preserve_expiry=True, ttl=100))]:
            call = b.lookup_in if SD.is_lookup(specs[0]) else b.mutate_in
            e = yield self.assertFailure(call("doc", *specs, **kw), errors.NotSupportedError)
            self.assertIn("Couchbase SDK", e.message)
        got = yield b.get("doc")
        self.assertEqual((got.value, got.cas), ({"a": 1, "l": [1]}, stored.cas))

    @inlineCallbacks
    def test_subdoc_refusals_the_sdk_would_change_get_the_engines_status(self):
        # The SDK adds the xattr flag to a macro spec and sends xattr specs
        # first; the engine's answers are these (as every provider's).
        b = self.bucket()
        stored = yield b.upsert("doc", {"a": 1})
        S = SD.Status
        for specs, status, index in [
                ((), S.INVALID_COMBO, None),
                ((SD.Spec(SD.Opcode.DICT_UPSERT, "m", b'"${Mutation.CAS}"',
                          SD.PathFlag.EXPAND_MACROS),), S.XATTR_INVALID_FLAG_COMBO, None),
                ((SD.get("a"), SD.get("x", xattr=True)), S.INVALID_XATTR_ORDER, None),
                ((SD.upsert("a", 2), SD.Spec(SD.Opcode.ARRAY_PUSH_LAST, "l", b"{bad")),
                 S.VALUE_CANTINSERT, 1)]:
            call = b.lookup_in if not specs or SD.is_lookup(specs[0]) else b.mutate_in
            e = yield self.assertFailure(call("doc", *specs), SD.SubdocError)
            self.assertEqual((e.status, e.index, e.key), (status, index, "doc"))
        e = yield self.assertFailure(b.mutate_in("doc", SD.upsert("a", 2), insert_doc=True,
                                                 cas=stored.cas), SD.SubdocError)
        self.assertEqual((e.status, e.index), (S.EINVAL, None))
        got = yield b.get("doc")
        self.assertEqual(got.value, {"a": 1})

    @inlineCallbacks
    def test_subdoc_access_deleted_reads_a_tombstones_system_xattrs(self):
        b = self.bucket()
        yield b.upsert("doc", {"a": 1})
        yield b.mutate_in("doc", SD.upsert("_sys", "s", xattr=True),
                          SD.upsert("user", "u", xattr=True))
        yield b.remove("doc")
        yield self.assertFailure(b.lookup_in("doc", SD.get("_sys", xattr=True)),
                                 errors.NotFoundError)
        r = yield b.lookup_in("doc", SD.get("_sys", xattr=True), SD.get("user", xattr=True),
                              access_deleted=True)
        self.assertEqual(r.get(0), (SD.Status.SUCCESS, "s"))
        self.assertEqual(r.status(1), SD.Status.PATH_ENOENT)
        self.assertEqual(r.rc, SD.Status.MULTI_PATH_FAILURE_DELETED)
        r = yield b.lookup_in("doc", SD.get("_sys", xattr=True), access_deleted=True)
        self.assertEqual((r.rc, r[0]), (SD.Status.SUCCESS_DELETED, "s"))

    @inlineCallbacks
    def test_subdoc_document_macros_read_back_as_written(self):
        b = self.bucket()
        stored = yield b.upsert("doc", {"a": 1})
        r = yield b.mutate_in("doc", SD.Spec(
            SD.Opcode.DICT_UPSERT, "old", b'"${$document.CAS}"',
            SD.PathFlag.XATTR | SD.PathFlag.EXPAND_MACROS), SD.upsert("a", 2))
        found = yield b.lookup_in("doc", SD.get("old", xattr=True))
        self.assertEqual(r[0], found[0])
        self.assertEqual(found[0], "0x%016x" % stored.cas)
        # In arrays: each spec's result is the value its macro became.
        M = SD.MutationMacro
        r = yield b.mutate_in(
            "doc", SD.array_append("l", M.CAS, xattr=True, create_parents=True),
            SD.array_prepend("l", M.SEQNO, xattr=True),
            SD.array_insert("l[1]", M.CAS, xattr=True))
        found = yield b.lookup_in("doc", SD.get("l", xattr=True))
        self.assertEqual(len(found[0]), 3)
        self.assertEqual([r[0], r[1], r[2]], [found[0][2], found[0][0], found[0][1]])
        self.assertEqual(int(r[1], 16), r.seqno)

    @inlineCallbacks
    def test_subdoc_ttl_already_past_removes_the_document(self):
        b = self.bucket()
        yield b.upsert("doc", {"a": 1})
        r = yield b.mutate_in("doc", SD.upsert("a", 2), ttl=int(time.time()) - 10)
        self.assertTrue(r.success)
        yield self.assertFailure(b.get("doc"), errors.NotFoundError)
        s = yield b.stats()
        self.assertEqual((s["op_mutate_in"], s["errors_mutate_in"]), (1, 0))

    @inlineCallbacks
    def test_formats_read_the_same_through_the_sdk(self):
        # Common flags both ways: txcb's values read by the SDK's default
        # transcoder, the SDK's read by txcb.
        from couchbase.cluster import Cluster
        from couchbase.auth import PasswordAuthenticator
        from couchbase.options import ClusterOptions, GetOptions, UpsertOptions
        from couchbase.transcoder import RawBinaryTranscoder, RawStringTranscoder
        b = self.bucket(scope=None, collection=None)
        yield b.upsert_multi({"fj": {"a": [1]}, "fs": "héllo", "fb": b"\x00\xff"})
        cluster = Cluster("couchbase://127.0.0.1:%d" % (self.server.port,),
                          ClusterOptions(PasswordAuthenticator(USER, PASSWORD)))
        self.addCleanup(cluster.close)
        coll = cluster.bucket("default").default_collection()
        text, raw = RawStringTranscoder(), RawBinaryTranscoder()
        self.assertEqual(coll.get("fj").content_as[dict], {"a": [1]})
        self.assertEqual(coll.get("fs", GetOptions(transcoder=text)).content_as[str], "héllo")
        self.assertEqual(coll.get("fb", GetOptions(transcoder=raw)).content_as[bytes],
                         b"\x00\xff")
        coll.binary().append("fb", b"!")
        coll.upsert("sdk-json", {"x": 2})
        coll.upsert("sdk-text", "text", UpsertOptions(transcoder=text))
        r = yield b.get_multi(["sdk-json", "sdk-text", "fb"])
        self.assertEqual([(r[k].value, r[k].flags) for k in ("sdk-json", "sdk-text", "fb")],
                         [({"x": 2}, FMT_JSON), ("text", FMT_UTF8), (b"\x00\xff!", FMT_BYTES)])
        yield b.upsert("raw", Encoded(b"opaque", 0xDEADBEEF))
        self.assertEqual(RawReaderOnce(self.server.port).read("raw"), (b"opaque", 0xDEADBEEF))

    @inlineCallbacks
    def test_replicas_beyond_the_url_errback_before_sending(self):
        b = self.bucket()
        yield self.assertFails(b.upsert("k", 1, replicate_to=1), errors.DurabilityError)
        yield self.assertFails(b.upsert("k", 1, persist_to=2), errors.DurabilityError)
        yield self.assertFails(b.get("k"), errors.NotFoundError)

    @inlineCallbacks
    def test_the_sdks_own_durability_refusal_is_a_durability_error(self):
        # The URL claims a replica the server does not have: the SDK refuses
        # after the write, as DurabilityImpossible -> DurabilityError.
        b = CouchbaseBucket("couchbase://127.0.0.1:%d?replicas=1" % (self.server.port,),
                            USER, PASSWORD, reactor=reactor, timeout=2.0,
                            durable_timeout=2.0)
        self.addCleanup(b.close)
        yield self.assertFails(b.upsert("dur", 1, replicate_to=1), errors.DurabilityError)

    @inlineCallbacks
    def test_cancel_fires_at_once_while_the_worker_is_busy(self):
        b = self.bucket(threads=1)
        yield b.upsert("k", 1)
        gate = threading.Event()
        self.addCleanup(gate.set)
        blocked = b._call("get", "k", lambda coll, t: gate.wait(5), None)
        d = b.get("k")
        d.cancel()
        yield self.assertFailure(d, defer.CancelledError)
        blocked.cancel()
        yield self.assertFailure(blocked, defer.CancelledError)
        gate.set()
        r = yield b.get("k")  # the worker is free again, the late outcome dropped
        self.assertEqual(r.value, 1)

    @inlineCallbacks
    def test_a_stuck_worker_times_out_on_the_reactor(self):
        b = self.bucket(threads=1, timeout=0.3)
        yield b.upsert("k", 1)
        gate = threading.Event()
        self.addCleanup(gate.set)
        started = time.monotonic()
        d = b._call("get", "k", lambda coll, t: gate.wait(5), None)
        queued = b.get("k")
        yield self.assertFailure(d, errors.TimeoutError)
        yield self.assertFailure(queued, errors.TimeoutError)
        self.assertLess(time.monotonic() - started, 1.5)
        gate.set()

    @inlineCallbacks
    def test_gets_wait_to_be_batched_while_two_batches_are_out(self):
        b = self.bucket()
        yield b.upsert_multi({"a": 1, "b": 2})
        runs = []
        real = b._gets._submit
        b._gets._submit = lambda run, then: (runs.append(run), real(run, then))
        ds = [b.get("a"), b.get("b"), b.get("a"), b.get("miss", quiet=True),
              b.get("miss"), b.get("b")]
        ds[5].cancel()
        got = yield defer.DeferredList(ds, consumeErrors=True)
        # "a" and "b" went at once, each alone; the four others as one batch.
        self.assertEqual(len(runs), 3)
        self.assertEqual([r.value for ok, r in got[:4]], [1, 2, 1, None])
        self.assertEqual(got[3][1].rc, errors.RC.KEY_ENOENT)
        self.assertTrue(got[4][1].check(errors.NotFoundError))
        self.assertTrue(got[5][1].check(defer.CancelledError))
        r = yield b.get("a", timeout=1.0)  # a timeout of its own: alone, unbatched
        self.assertEqual((r.value, len(runs)), (1, 3))

    @inlineCallbacks
    def test_an_unreachable_cluster_fails_fast_after_one_bootstrap(self):
        b = CouchbaseBucket("couchbase://127.0.0.1:%d" % (free_port(),), USER, PASSWORD,
                            reactor=reactor, timeout=0.5, connect_timeout=1.0)
        self.addCleanup(b.close)
        started = time.monotonic()
        while time.monotonic() - started < 10:
            t0 = time.monotonic()
            try:
                yield b.get("k")
            except errors.ConnectError as e:
                self.assertLess(time.monotonic() - t0, 0.3)
                self.assertIn("cannot reach the cluster", str(e))
                break
            except errors.TimeoutError:  # while the first bootstrap runs
                self.assertLess(time.monotonic() - t0, 0.5 + 0.25 + 0.2)
        else:
            self.fail("no ConnectError within 10 s")

    @inlineCallbacks
    def test_endure_check_removed_polls_until_removed_or_timeout(self):
        b = self.bucket()
        yield b.upsert("k", 1)
        reactor.callLater(0.3, b.remove, "k")
        started = time.monotonic()
        r = yield b.endure("k", persist_to=0, replicate_to=0, check_removed=True,
                           timeout=3.0, interval=0.05)
        self.assertTrue(r.success)
        self.assertGreater(time.monotonic() - started, 0.25)
        yield b.upsert("k", 1)
        started = time.monotonic()
        yield self.assertFailure(b.endure("k", persist_to=0, replicate_to=0,
                                          check_removed=True, timeout=0.4, interval=0.05),
                                 errors.TimeoutError)
        self.assertLess(time.monotonic() - started, 1.0)

    @inlineCallbacks
    def test_append_of_a_non_bytes_value_is_transcoded_as_elsewhere(self):
        # Regression: bytes(12) is twelve NUL bytes, not the text 12.
        b = self.bucket()
        yield b.upsert("k", "v")
        yield b.append("k", 12)
        yield self.assertFailure(b.append("k", object()), errors.ValueFormatError)
        r = yield b.get("k")
        self.assertEqual(r.value, "v12")

    @inlineCallbacks
    def test_pending_calls_are_bounded(self):
        b = self.bucket(threads=1, max_pending=2)
        yield b.upsert("k", 1)
        ds = [b.get("k") for _ in range(3)]
        yield self.assertFailure(ds[2], errors.TemporaryFailError)
        yield defer.gatherResults(ds[:2])

    @inlineCallbacks
    def test_closed_bucket_errbacks_network_error(self):
        b = self.bucket()
        yield b.upsert("k", 1)
        yield b.close()
        yield self.assertFailure(b.get("k"), errors.NetworkError)

    def assertFails(self, d, exc_type):
        return self.assertFailure(d, exc_type)


def RawReaderOnce(port):
    reader = RawReader(port)
    return _Closing(reader)


class _Closing:
    def __init__(self, reader):
        self.reader = reader

    def read(self, key):
        try:
            return self.reader.read(key)
        finally:
            self.reader.close()


class CouchbaseBackendProxyTests(_OneBackingServer, unittest.TestCase):
    """
    ``twistd txcb --memcached M --port N --backend couchbase://`` in front of
    the backing server: what memcached clients and txcb's netstring client
    write is what the SDK reads from the backing server, bytes and flags.
    """

    skip = SKIP_SDK
    timeout = 60

    @classmethod
    def setUpClass(cls):
        _OneBackingServer.setUpClass.__func__(cls)
        if SKIP_SDK is None:
            cls.proxy = ProxyTwistd(cls.server.port).start()
            cls.reader = RawReader(cls.server.port)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "reader", None) is not None:
            cls.reader.close()
        if getattr(cls, "proxy", None) is not None:
            cls.proxy.remove()
        _OneBackingServer.tearDownClass.__func__(cls)

    def test_pymemcache_values_read_back_through_the_sdk(self):
        if pymemcache is None:
            raise unittest.SkipTest("pymemcache not installed")
        c = pymemcache.Client(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(c.close)
        for i, (value, flags) in enumerate([(b"plain", 0), (b"\x00\xff\r\n", 0xDEADBEEF),
                                            (b'{"a":1}', FMT_JSON), (b"", 7)]):
            key = "pm-%d" % i
            self.assertTrue(c.set(key, value, flags=flags, noreply=False))
            self.assertEqual(self.reader.read(key), (value, flags))
            self.assertEqual(c.get(key), value)
        self.assertTrue(c.add("pm-add", b"1", noreply=False))
        self.assertFalse(c.add("pm-add", b"2", noreply=False))
        self.assertEqual(c.incr("pm-add", 41), 42)
        self.assertTrue(c.append("pm-add", b"!", noreply=False))
        self.assertEqual(self.reader.read("pm-add")[0], b"42!")
        self.assertTrue(c.delete("pm-add", noreply=False))
        self.assertIsNone(c.get("pm-add"))

    def test_sdk_values_read_through_the_proxy(self):
        if pymemcache is None:
            raise unittest.SkipTest("pymemcache not installed")
        self.reader.write("from-sdk", b"sdk bytes", 0x04000004)
        c = pymemcache.Client(("127.0.0.1", self.proxy.port), timeout=5)
        self.addCleanup(c.close)
        head = c.raw_command(b"get from-sdk", b"END\r\n").split(b"\r\n")[0]
        self.assertEqual(head, b"VALUE from-sdk %d 9" % (0x04000004,))
        self.assertEqual(c.get("from-sdk"), b"sdk bytes")

    def test_bmemcached_values_read_back_through_the_sdk(self):
        if bmemcached is None:
            raise unittest.SkipTest("python-binary-memcached not installed")
        c = bmemcached.Client(("127.0.0.1:%d" % self.proxy.port,), socket_timeout=5)
        self.addCleanup(c.disconnect_all)
        self.assertTrue(c.set("bm-s", "text"))
        self.assertTrue(c.set("bm-i", 12))
        self.assertTrue(c.set("bm-b", b"\x01\x02"))
        for key, value in (("bm-s", "text"), ("bm-i", 12), ("bm-b", b"\x01\x02")):
            self.assertEqual(c.get(key), value)
            data, flags = self.reader.read(key)
            # bmemcached's own bytes and flags, through unchanged.
            self.assertEqual((flags, data), next(iter(c.servers)).serialize(value))
        self.assertEqual(c.incr("bm-n", 1) if c.set("bm-n", b"5") else None, 6)

    def test_netstring_client_values_read_back_through_the_sdk(self):
        from txcb.client.blocking import Bucket
        nb = Bucket("tcp:127.0.0.1:%d" % (self.proxy.netstring_port,), timeout=5)
        self.addCleanup(nb.close)
        nb.upsert("ns-j", {"n": [1, 2]})
        nb.upsert("ns-s", "héllo")
        nb.upsert("ns-e", Encoded(b"\x00raw", 0x1234))
        self.assertEqual(self.reader.read("ns-j"), (b'{"n":[1,2]}', FMT_JSON))
        self.assertEqual(self.reader.read("ns-s"), ("héllo".encode(), FMT_UTF8))
        self.assertEqual(self.reader.read("ns-e"), (b"\x00raw", 0x1234))
        r = nb.get("ns-j")
        self.assertEqual((r.value, r.flags), ({"n": [1, 2]}, FMT_JSON))
        with self.assertRaises(errors.NotFoundError):
            nb.get("ns-missing")
        with self.assertRaises(errors.KeyExistsError):
            nb.insert("ns-j", 1)


class CouchbaseBackendFaultTests(unittest.TestCase):
    """The backing server killed and restarted under load: every call fails
    within its timeout with NetworkError or TimeoutError, nothing hangs, and
    the provider and the proxy recover without a restart."""

    skip = SKIP_SDK
    timeout = 90

    def setUp(self):
        self.data_dir = self.mktemp()
        os.makedirs(self.data_dir)
        self.server = backing_server(data_dir=self.data_dir).start()
        self.addCleanup(self.server.remove)

    @inlineCallbacks
    def test_kill_and_restart_under_load(self):
        b = new_bucket(self, self.server.port, timeout=0.5, connect_timeout=2.0)
        yield b.upsert("k", 1)
        outcomes, stop = [], []

        @inlineCallbacks
        def load():
            while not stop:
                started = time.monotonic()
                try:
                    yield b.upsert("k", 2)
                    outcomes.append(("ok", time.monotonic() - started))
                except errors.CouchbaseError as e:
                    outcomes.append((type(e), time.monotonic() - started))
        workers = [load() for _ in range(8)]
        yield sleep(0.3)
        self.server.kill()
        yield sleep(1.5)
        yield threads.deferToThread(self.server.start)  # the reactor keeps running
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            mark = len(outcomes)
            yield sleep(0.3)
            if outcomes[mark:] and all(o == "ok" for o, _ in outcomes[mark:]):
                break
        stop.append(True)
        yield defer.gatherResults(workers)
        kinds = {o for o, _ in outcomes}
        self.assertIn("ok", kinds)
        self.assertTrue(kinds - {"ok"}, "no call failed while the server was down")
        self.assertLessEqual(kinds - {"ok"}, {errors.NetworkError, errors.TimeoutError})
        self.assertLess(max(t for _, t in outcomes), 0.5 + 0.25 + 0.5)
        self.assertEqual(outcomes[-1][0], "ok")

    def test_proxy_recovers_without_a_restart(self):
        if pymemcache is None:
            raise unittest.SkipTest("pymemcache not installed")
        proxy = ProxyTwistd(self.server.port).start()
        self.addCleanup(proxy.remove)
        c = pymemcache.Client(("127.0.0.1", proxy.port), timeout=6)
        self.addCleanup(c.close)
        self.assertTrue(c.set("k", b"before", noreply=False))
        self.server.kill()
        started = time.monotonic()
        with self.assertRaises(Exception):
            c.set("k", b"down", noreply=False)
        self.assertLess(time.monotonic() - started, 5.5)
        self.server.start()
        deadline = time.monotonic() + 20
        while True:
            try:
                c = pymemcache.Client(("127.0.0.1", proxy.port), timeout=6)
                self.assertTrue(c.set("k", b"after", noreply=False))
                break
            except AssertionError:
                raise
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.3)
        self.assertEqual(c.get("k"), b"after")
        self.assertTrue(proxy.running)


class CouchbaseBackendOptionsTests(unittest.TestCase):
    """``--backend couchbase://``: the URL, the credentials, the one-line errors."""

    def options(self, *args, env=None):
        o = tap.Options()
        old = dict(os.environ)
        os.environ.pop("TXCB_BACKEND_USER", None)
        os.environ.pop("TXCB_BACKEND_PASSWORD", None)
        os.environ.update(env or {})
        try:
            o.parseOptions(list(args))
        finally:
            os.environ.clear()
            os.environ.update(old)
        return o

    def test_parse_url(self):
        u = cbsdk.parse_url("couchbase://10.0.0.1:11210")
        self.assertEqual((u.connstr, u.bucket, u.replicas, u.tls),
                         ("couchbase://10.0.0.1:11210", "default", 0, False))
        u = cbsdk.parse_url("couchbases://a,b:11207/travel?replicas=2&x=1")
        self.assertEqual((u.connstr, u.bucket, u.replicas, u.tls),
                         ("couchbases://a,b:11207?x=1", "travel", 2, True))

    def test_bad_urls(self):
        for bad in ["couchbase://", "couchbase:/x", "http://h", "couchbase://h/a/b",
                    "couchbase://u:p@h", "couchbase://h?replicas=9", "couchbase://h:x"]:
            self.assertRaises(ValueError, cbsdk.parse_url, bad)

    def test_with_bucket(self):
        self.assertEqual(with_bucket("couchbase://h:1/a?replicas=1", "b"),
                         "couchbase://h:1/b?replicas=1")
        self.assertTrue(is_couchbase_backend("couchbases://h"))
        self.assertFalse(is_couchbase_backend("memcached:h:1"))

    def test_credentials_from_the_environment(self):
        if SKIP_SDK:
            raise unittest.SkipTest(SKIP_SDK)
        o = self.options("--backend", "couchbase://127.0.0.1",
                         env={"TXCB_BACKEND_USER": "u", "TXCB_BACKEND_PASSWORD": "p:w"})
        self.assertEqual(o["backend-credentials"], ("u", "p:w"))

    def test_credentials_from_the_file(self):
        if SKIP_SDK:
            raise unittest.SkipTest(SKIP_SDK)
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("user:pa:ss\n")
        o = self.options("--backend", "couchbase://127.0.0.1/b", "--backend-auth-file", path)
        self.assertEqual(o["backend-credentials"], ("user", "pa:ss"))

    def test_missing_or_bad_credentials_are_one_line(self):
        if SKIP_SDK:
            raise unittest.SkipTest(SKIP_SDK)
        e = self.assertRaises(usage.UsageError, self.options, "--backend",
                              "couchbase://127.0.0.1")
        self.assertIn("TXCB_BACKEND_USER", str(e))
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("no-colon\n")
        e = self.assertRaises(usage.UsageError, self.options, "--backend",
                              "couchbase://127.0.0.1", "--backend-auth-file", path)
        self.assertIn("one user:password line", str(e))
        e = self.assertRaises(usage.UsageError, self.options, "--backend",
                              "couchbase://127.0.0.1", "--backend-auth-file", path + "x")
        self.assertIn("cannot read --backend-auth-file", str(e))
        self.assertNotIn("\n", str(e))

    def test_bad_url_is_one_line(self):
        e = self.assertRaises(usage.UsageError, self.options, "--backend", "couchbase:/x")
        self.assertIn("bad Couchbase URL", str(e))

    def test_no_sdk_says_how_to_install_it(self):
        self.patch(cbsdk, "_loaded", [])
        import builtins
        real = builtins.__import__

        def no_couchbase(name, *a, **kw):
            if name == "couchbase" or name.startswith("couchbase."):
                raise ImportError("No module named %r" % (name,))
            return real(name, *a, **kw)
        self.patch(builtins, "__import__", no_couchbase)
        e = self.assertRaises(usage.UsageError, self.options, "--backend",
                              "couchbase://127.0.0.1",
                              env={"TXCB_BACKEND_USER": "u", "TXCB_BACKEND_PASSWORD": "p"})
        self.assertIn("pip install 'txcb[couchbase]'", str(e))

    def test_auth_file_without_a_couchbase_backend_is_refused(self):
        e = self.assertRaises(usage.UsageError, self.options, "--backend-auth-file", "f")
        self.assertIn("--backend couchbase://", str(e))

    def test_keyspaces_map_onto_the_clusters_buckets_and_collections(self):
        if SKIP_SDK:
            raise unittest.SkipTest(SKIP_SDK)
        o = self.options("--backend", "couchbase://127.0.0.1:1/travel?replicas=1",
                         "--bucket", "default", "--bucket", "other",
                         "--collection", "default.s.c", "--collection", "other.s.d",
                         env={"TXCB_BACKEND_USER": "u", "TXCB_BACKEND_PASSWORD": "p"})
        spaces = make_keyspaces(o, reactor)
        first, other = spaces.get("default"), spaces.get("other")
        got = [(b.name, b._where, b.max_replicate_to) for b in (
            first.default.bucket, first.find("s.c").bucket, other.default.bucket,
            other.find("s.d").bucket)]
        self.assertEqual(got, [("travel", ("_default", "_default"), 1),
                               ("travel", ("s", "c"), 1),
                               ("other", ("_default", "_default"), 1),
                               ("other", ("s", "d"), 1)])
        for b in spaces.buckets():
            self.assertIsInstance(b, CouchbaseBucket)
            self.assertFalse(b._started)  # the service starts them

    def test_txcb_imports_no_sdk_until_a_bucket_is_made(self):
        import subprocess
        import sys
        code = ("import sys, txcb.service.tap, txcb.buckets.couchbase; "
                "print(sorted(m for m in sys.modules if m.split('.')[0] in "
                "('couchbase', 'acouchbase', 'txcouchbase')))")
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60, cwd=os.path.dirname(os.path.dirname(
                                 os.path.abspath(__file__))))
        self.assertEqual((out.stdout.strip(), out.returncode), ("[]", 0), out.stderr)

    def test_memcached_backend_unchanged(self):
        o = self.options("--backend", "memcached:127.0.0.1:11211")
        self.assertIsNone(o["backend-credentials"])


class CouchbaseSdkMappingTests(unittest.TestCase):
    """cbsdk's tables: SDK errors, TTLs, durability."""

    skip = SKIP_SDK

    def test_errors_keep_txcbs_rc(self):
        from couchbase import exceptions as E
        cases = [
            ("get", E.DocumentNotFoundException, errors.NotFoundError),
            ("concat", E.DocumentNotFoundException, errors.NotStoredError),
            ("replace", E.CasMismatchException, errors.KeyExistsError),
            ("unlock", E.CasMismatchException, errors.TemporaryFailError),
            ("upsert", E.DocumentLockedException, errors.TemporaryFailError),
            ("insert", E.DocumentExistsException, errors.KeyExistsError),
            ("counter", E.DeltaInvalidException, errors.DeltaBadvalError),
            ("upsert", E.DurabilityImpossibleException, errors.DurabilityError),
            ("get", E.UnAmbiguousTimeoutException, errors.TimeoutError),
            ("upsert", E.AmbiguousTimeoutException, errors.TimeoutError),
            ("get", E.RequestCanceledException, errors.NetworkError),
            ("get", E.AuthenticationException, errors.AuthError),
            ("get", E.InternalServerFailureException, errors.InternalError),
        ]
        for op, sdk_cls, txcb_cls in cases:
            e = cbsdk.sdk_error(op, sdk_cls(), "k")
            self.assertIs(type(e), txcb_cls, (op, sdk_cls))
            self.assertEqual((e.rc, e.key), (txcb_cls.rc, "k"))

    def test_subdoc_specs_map_to_the_sdks_by_opcode(self):
        # The SDK's spec: (opcode, path, create_parents, xattr, expand, value).
        sd = cbsdk.load().sd
        cases = [
            (SD.get("a", xattr=True), (SD.Opcode.GET, "a", True)),
            (SD.exists("a"), (SD.Opcode.EXISTS, "a", False)),
            (SD.get_count("a"), (SD.Opcode.GET_COUNT, "a", False)),
            (SD.get_fulldoc(), (SD.Opcode.GET_DOC, "", False)),
            (SD.upsert("a", {"b": 1}, create_parents=True),
             (SD.Opcode.DICT_UPSERT, "a", True, False, False, (b'{"b":1}', FMT_JSON))),
            (SD.insert("a", 1, xattr=True),
             (SD.Opcode.DICT_ADD, "a", False, True, False, (b"1", FMT_JSON))),
            (SD.replace("a", "x"), (SD.Opcode.REPLACE, "a", False, False, False,
                                    (b'"x"', FMT_JSON))),
            (SD.upsert_fulldoc([1]), (SD.Opcode.SET_DOC, "", False, False, False,
                                      (b"[1]", FMT_JSON))),
            (SD.remove("a"), (SD.Opcode.DELETE, "a", False, False, False)),
            (SD.remove_fulldoc(), (SD.Opcode.DELETE_DOC, "", False, False, False)),
            (SD.array_append("l", 1, "x"), (SD.Opcode.ARRAY_PUSH_LAST, "l", False, False,
                                            False, (1, "x"))),
            (SD.array_prepend("l", 2), (SD.Opcode.ARRAY_PUSH_FIRST, "l", False, False,
                                        False, (2,))),
            (SD.array_insert("l[0]", 3), (SD.Opcode.ARRAY_INSERT, "l[0]", False, False,
                                          False, (3,))),
            (SD.array_addunique("l", 4), (SD.Opcode.ARRAY_ADD_UNIQUE, "l", False, False,
                                          False, (b"4", FMT_JSON))),
            (SD.counter("n", -3), (SD.Opcode.COUNTER, "n", False, False, False, -3)),
            (SD.upsert("m", SD.MutationMacro.SEQNO, xattr=True),
             (SD.Opcode.DICT_UPSERT, "m", False, True, True, "${Mutation.seqno}")),
        ]
        for spec, expected in cases:
            lookup = SD.is_lookup(spec)
            [got] = cbsubdocs.sdk_specs(sd, [spec], lookup=lookup)
            self.assertEqual(tuple(got), expected, spec)

    def test_sdk_built_subdoc_values_are_json(self):
        # A counter's delta and a macro's name reach the transcoder as the SDK
        # built them; txcb's own values are (bytes, flags) and pass unchanged.
        t = cbsdk.load().transcoder
        self.assertEqual(t.encode_value(-3), (b"-3", FMT_JSON))
        self.assertEqual(t.encode_value("${Mutation.CAS}"), (b'"${Mutation.CAS}"', FMT_JSON))
        self.assertEqual(t.encode_value((b"raw", 7)), (b"raw", 7))

    def test_expiry(self):
        from datetime import timedelta
        now = 1_800_000_000
        self.assertIsNone(cbsdk.expiry(0, now))
        self.assertEqual(cbsdk.expiry(10, now), timedelta(seconds=10))
        self.assertEqual(cbsdk.expiry(now + 40 * 86400, now), timedelta(days=40))
        self.assertEqual(cbsdk.expiry(now - 5, now), timedelta(seconds=-1))

    def test_client_durability(self):
        sdk = cbsdk.load()
        self.assertIsNone(cbsdk.client_durability(sdk, 0, 0))
        d = cbsdk.client_durability(sdk, 1, 0)
        self.assertEqual((d.persist_to, d.replicate_to),
                         (sdk.PersistToExtended.ACTIVE, sdk.ReplicateTo.NONE))
        d = cbsdk.client_durability(sdk, 2, 1)
        self.assertEqual((d.persist_to, d.replicate_to),
                         (sdk.PersistToExtended.TWO, sdk.ReplicateTo.ONE))
