"""
The official Couchbase SDK's asynchronous APIs against txcb:

- ``acouchbase`` (asyncio) against a real ``twistd -n txcb --couchbase``
  process, every KV and binary operation with its exception cases, on a loop
  of its own in a thread of its own (never the reactor of this test run);
- ``txcouchbase`` under trial in real subprocesses running the README's
  examples (docs/examples): in-process with ``txcb.testing.couchbase_endpoint``
  and against twistd;
- ``txcb.testing.couchbase_endpoint`` itself, driven by the sync SDK from a
  thread while this run's reactor serves it, and ``import_txcouchbase`` with
  each kind of installed reactor.
"""

import asyncio
import os
import socket
import ssl
import struct
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta

import twisted.test
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.threads import blockingCallFromThread, deferToThread
from twisted.trial import unittest

from tests.support import ROOT
from tests.support.cbapps import EXAMPLES, acouchbase_collection, run_coroutine, run_trial
from tests.support.couchbase_sdk import SKIP_SDK, TxcbTwistd, shared_txcb
from tests.support.procs import free_port, start_txcb_twistd
from txcb import errors
from txcb.service import tap
from txcb.testing import FaultyBucket, couchbase_endpoint, memory_bucket

if SKIP_SDK is None:
    from couchbase.auth import PasswordAuthenticator
    from couchbase.cluster import Cluster
    from couchbase.exceptions import (
        AuthenticationException, CasMismatchException, DeltaInvalidException,
        DocumentExistsException, DocumentLockedException, DocumentNotFoundException,
        DocumentNotLockedException, DurabilityInvalidLevelException, TemporaryFailException,
        UnAmbiguousTimeoutException)
    from couchbase.durability import Durability, ServerDurability
    from couchbase.options import (
        ClusterOptions, ClusterTimeoutOptions, DecrementOptions, DeltaValue, GetOptions,
        IncrementOptions, RemoveOptions, ReplaceOptions, SignedInt64, UpsertOptions)
    from couchbase.transcoder import RawBinaryTranscoder


def _key():
    return "async-" + uuid.uuid4().hex[:12]


async def _raises(exception, awaitable):
    """The exception ``awaitable`` raised: it must be ``exception``."""
    try:
        result = await awaitable
    except exception as e:
        return e
    raise AssertionError("expected %s, got %r" % (exception.__name__, result))


class AcouchbaseKeyValueTests(unittest.SynchronousTestCase):
    """acouchbase on the shared ephemeral twistd, as the SDK reports each case."""

    skip = SKIP_SDK

    def setUp(self):
        self.port = shared_txcb().port

    def run_ops(self, ops):
        """Connect, ``await ops(collection)``, close; what ``ops`` returned."""
        async def main():
            cluster, collection = await acouchbase_collection(self.port)
            try:
                return await ops(collection)
            finally:
                await cluster.close()
        return run_coroutine(main)

    def test_upsert_get_replace_remove_exists(self):
        k = _key()

        async def ops(c):
            first = await c.upsert(k, {"n": 1})
            got = await c.get(k)
            replica = await c.get_any_replica(k)  # the one copy: the active
            assert replica.content_as[dict] == {"n": 1}, replica
            replaced = await c.replace(k, {"n": 2}, ReplaceOptions(cas=got.cas))
            after = (await c.get(k)).content_as[dict]
            present = (await c.exists(k)).exists
            await c.remove(k)
            return first.cas, got.cas, got.content_as[dict], replaced.cas, after, present, \
                (await c.exists(k)).exists
        first, got_cas, value, replaced, after, present, gone = self.run_ops(ops)
        self.assertEqual((first, value), (got_cas, {"n": 1}))
        self.assertNotEqual(replaced, first)
        self.assertEqual((after, present, gone), ({"n": 2}, True, False))

    def test_missing_document_raises_document_not_found(self):
        k = _key()

        async def ops(c):
            return [type(await _raises(DocumentNotFoundException, call)) for call in (
                c.get(k), c.replace(k, 1), c.remove(k), c.touch(k, timedelta(seconds=5)),
                c.get_and_touch(k, timedelta(seconds=5)), c.binary().append(k, b"x"),
                c.binary().prepend(k, b"x"))]
        self.assertEqual(self.run_ops(ops), [DocumentNotFoundException] * 7)

    def test_insert_existing_raises_document_exists(self):
        k = _key()

        async def ops(c):
            await c.insert(k, "first")
            await _raises(DocumentExistsException, c.insert(k, "second"))
            return (await c.get(k)).content_as[str]
        self.assertEqual(self.run_ops(ops), "first")

    def test_wrong_cas_raises_cas_mismatch(self):
        k = _key()

        async def ops(c):
            cas = (await c.upsert(k, "v")).cas
            await _raises(CasMismatchException, c.replace(k, "w", ReplaceOptions(cas=cas + 1)))
            await _raises(CasMismatchException, c.remove(k, RemoveOptions(cas=cas + 1)))
            return (await c.get(k)).content_as[str]
        self.assertEqual(self.run_ops(ops), "v")

    def test_lock_and_unlock(self):
        k = _key()

        async def ops(c):
            await c.upsert(k, "v")
            locked = await c.get_and_lock(k, timedelta(seconds=10))
            await _raises(CasMismatchException, c.unlock(k, locked.cas + 1))
            # A mutation of a locked document is retried until the 1 s timeout.
            await _raises(DocumentLockedException, c.upsert(k, "w"))
            await c.unlock(k, locked.cas)
            await _raises(DocumentNotLockedException, c.unlock(k, locked.cas))
            await c.upsert(k, "w")
            return (await c.get(k)).content_as[str]
        self.assertEqual(self.run_ops(ops), "w")

    def test_binary_counters(self):
        k, fresh, doc = _key(), _key(), _key()

        async def ops(c):
            b = c.binary()
            start = await b.increment(k, IncrementOptions(initial=SignedInt64(10)))
            up = await b.increment(k, IncrementOptions(delta=DeltaValue(5)))
            down = await b.decrement(k, DecrementOptions(delta=DeltaValue(3)))
            # Without an initial value the SDK asks for 0: created at 0.
            created = await b.increment(fresh)
            await c.upsert(doc, {"not": "a number"})
            await _raises(DeltaInvalidException, b.increment(doc))
            return start.content, up.content, down.content, created.content
        self.assertEqual(self.run_ops(ops), (10, 15, 12, 0))

    def test_binary_append_prepend(self):
        k = _key()
        raw = RawBinaryTranscoder()

        async def ops(c):
            await c.upsert(k, b"mid", UpsertOptions(transcoder=raw))
            await c.binary().append(k, b">")
            await c.binary().prepend(k, b"<")
            return (await c.get(k, GetOptions(transcoder=raw))).value
        self.assertEqual(self.run_ops(ops), b"<mid>")

    def test_touch_and_expiry(self):
        k, gone = _key(), _key()

        async def ops(c):
            await c.upsert(k, "v")
            await c.touch(k, timedelta(seconds=60))
            touched = (await c.get_and_touch(k, timedelta(seconds=60))).content_as[str]
            await c.upsert(gone, "v", UpsertOptions(expiry=timedelta(seconds=1)))
            await asyncio.sleep(2.1)
            await _raises(DocumentNotFoundException, c.get(gone))
            return touched, (await c.get(k)).content_as[str]
        self.assertEqual(self.run_ops(ops), ("v", "v"))

    def test_server_durability_on_an_ephemeral_bucket(self):
        """MAJORITY is the active node alone; the persist levels are refused."""
        k = _key()

        async def ops(c):
            await c.upsert(k, 1, UpsertOptions(durability=ServerDurability(Durability.MAJORITY)))
            for level in (Durability.MAJORITY_AND_PERSIST_TO_ACTIVE,
                          Durability.PERSIST_TO_MAJORITY):
                await _raises(DurabilityInvalidLevelException, c.upsert(
                    k, 2, UpsertOptions(durability=ServerDurability(level))))
            return (await c.get(k)).content_as[int]
        self.assertEqual(self.run_ops(ops), 1)

    def test_get_with_expiry_reads_the_expiry(self):
        """``get(with_expiry=True)`` is a sub-document lookup of $document.exptime."""
        k = _key()

        async def ops(c):
            await c.upsert(k, "v", UpsertOptions(expiry=timedelta(seconds=60)))
            r = await c.get(k, GetOptions(with_expiry=True))
            return r.content_as[str], r.expiry_time
        value, expiry = self.run_ops(ops)
        self.assertEqual(value, "v")
        left = (expiry - datetime.now()).total_seconds()
        self.assertTrue(50 < left <= 61, expiry)


class AcouchbaseAuthTests(unittest.SynchronousTestCase):
    """acouchbase with --auth-file: SCRAM-SHA512, PLAIN, a wrong password."""

    skip = SKIP_SDK

    def setUp(self):
        fd, path = tempfile.mkstemp(prefix="txcb-auth-")
        os.write(fd, b"alice:s3cret\n")
        os.close(fd)
        self.addCleanup(os.unlink, path)
        self.server = TxcbTwistd(["--ephemeral", "--auth-file", path]).start()
        self.addCleanup(self.server.remove)

    def test_scram_plain_and_wrong_password(self):
        port, k = self.server.port, _key()

        async def main():
            scram, c = await acouchbase_collection(port, "alice", "s3cret")
            await c.upsert(k, "by scram")
            plain, p = await acouchbase_collection(port, "alice", "s3cret",
                                                   mechanisms=["PLAIN"])
            value = (await p.get(k)).content_as[str]
            await scram.close()
            await plain.close()
            await _raises(AuthenticationException,
                          acouchbase_collection(port, "alice", "wrong"))
            return value
        self.assertEqual(run_coroutine(main), "by scram")
        self.assertNotIn("s3cret", self.server.log())


class AcouchbaseCollectionTests(unittest.SynchronousTestCase):
    """acouchbase with --bucket and --collection: each its own keyspace."""

    skip = SKIP_SDK

    def setUp(self):
        if "--collection" not in str(tap.Options()):
            raise unittest.SkipTest("twistd txcb has no --collection option in this tree")
        self.server = TxcbTwistd(["--ephemeral", "--bucket", "default",
                                  "--collection", "default.app.users"]).start()
        self.addCleanup(self.server.remove)

    def test_named_collection_is_its_own_keyspace(self):
        port, k = self.server.port, _key()

        async def main():
            cluster, default = await acouchbase_collection(port)
            try:
                users = cluster.bucket("default").scope("app").collection("users")
                await users.upsert(k, {"in": "users"})
                await _raises(DocumentNotFoundException, default.get(k))
                return (await users.get(k)).content_as[dict]
            finally:
                await cluster.close()
        self.assertEqual(run_coroutine(main), {"in": "users"})


class TxcouchbaseUnderTrialTests(unittest.SynchronousTestCase):
    """The README's txcouchbase examples, run as users run them."""

    skip = SKIP_SDK

    def test_in_process_example_passes(self):
        rc, out = run_trial(self, "test_carts")
        self.assertEqual(rc, 0, out)
        self.assertIn("PASSED (successes=5)", out)

    def test_every_kv_operation_example_passes(self):
        rc, out = run_trial(self, "test_txcouchbase_kv")
        self.assertEqual(rc, 0, out)
        self.assertIn("PASSED (successes=5)", out)

    def test_twistd_example_passes(self):
        env = {"CARTS_COUCHBASE": "couchbase://127.0.0.1:%d" % (shared_txcb().port,)}
        rc, out = run_trial(self, "test_carts_twistd", env=env)
        self.assertEqual(rc, 0, out)
        self.assertIn("PASSED (successes=1)", out)

    def test_another_reactor_is_refused_with_the_fix(self):
        rc, out = run_trial(self, "test_carts", reactor="select")
        self.assertNotEqual(rc, 0)
        self.assertIn("txcouchbase needs Twisted's asyncio reactor, but "
                      "twisted.internet.selectreactor.SelectReactor is installed: "
                      "run trial --reactor=asyncio", out)


class ImportTxcouchbaseTests(unittest.SynchronousTestCase):
    """import_txcouchbase with no reactor, the asyncio one, and another one."""

    skip = SKIP_SDK

    def run_python(self, code):
        proc = subprocess.run([sys.executable, "-c", code], env=dict(os.environ, PYTHONPATH=ROOT),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        return proc.returncode, proc.stdout.decode().strip().splitlines()

    def test_no_reactor_installed_installs_asyncio(self):
        rc, out = self.run_python(
            "from txcb.testing import import_txcouchbase as i; m = i()\n"
            "from twisted.internet import reactor; print(m.__name__, type(reactor).__name__)")
        self.assertEqual((rc, out[-1:]), (0, ["txcouchbase AsyncioSelectorReactor"]))

    def test_asyncio_reactor_installed_is_kept(self):
        rc, out = self.run_python(
            "from twisted.internet import asyncioreactor; asyncioreactor.install()\n"
            "from twisted.internet import reactor as before\n"
            "from txcb.testing import import_txcouchbase as i; i(); i()\n"
            "from twisted.internet import reactor; import txcouchbase.cluster\n"
            "print(reactor is before, asyncioreactor.install.__module__)")
        self.assertEqual((rc, out[-1:]), (0, ["True twisted.internet.asyncioreactor"]))

    def test_another_reactor_raises(self):
        rc, out = self.run_python(
            "from twisted.internet import selectreactor; selectreactor.install()\n"
            "from txcb.testing import import_txcouchbase as i\n"
            "try: i()\nexcept RuntimeError as e: print(e)\n"
            "import sys; print('txcouchbase' in sys.modules)")
        self.assertEqual(rc, 0, out)
        self.assertEqual(out[-2:], [
            "txcouchbase needs Twisted's asyncio reactor, but "
            "twisted.internet.selectreactor.SelectReactor is installed: run trial "
            "--reactor=asyncio", "False"])


def _sync_cluster(endpoint, user="u", password="p"):
    """The sync SDK's cluster on ``endpoint`` (call it in a thread)."""
    timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=2),
                                     connect_timeout=timedelta(seconds=5))
    return Cluster(endpoint.connection_string, ClusterOptions(
        PasswordAuthenticator(user, password), timeout_options=timeouts))


class CouchbaseEndpointTests(unittest.TestCase):
    """txcb.testing.couchbase_endpoint, served by this run's reactor."""

    skip = SKIP_SDK

    @inlineCallbacks
    def start(self, **kwargs):
        endpoint = yield couchbase_endpoint(reactor, **kwargs)
        self.addCleanup(endpoint.stop)
        return endpoint

    @inlineCallbacks
    def test_fires_listening_on_loopback_with_the_reactor_running(self):
        endpoint = yield self.start()
        self.assertTrue(reactor.running)
        host = endpoint.port.getHost()
        self.assertEqual(host.host, "127.0.0.1")
        self.assertEqual(endpoint.connection_string, "couchbase://127.0.0.1:%d" % host.port)

    @inlineCallbacks
    def test_sync_sdk_in_a_thread_stores_in_the_bucket(self):
        endpoint = yield self.start()

        def use():
            cluster = _sync_cluster(endpoint)
            try:
                cluster.bucket("default").default_collection().upsert("doc", {"a": 1})
            finally:
                cluster.close()
        yield deferToThread(use)
        self.assertEqual(endpoint.bucket.get_sync("doc").value, {"a": 1})

    @inlineCallbacks
    def test_named_collections(self):
        endpoint = yield self.start(collections=["app.carts"])

        def use():
            cluster = _sync_cluster(endpoint)
            try:
                cluster.bucket("default").scope("app").collection("carts").upsert("c", 1)
            finally:
                cluster.close()
        yield deferToThread(use)
        self.assertEqual(endpoint.collections["app.carts"].get_sync("c").value, 1)
        self.assertRaises(Exception, endpoint.bucket.get_sync, "c")

    @inlineCallbacks
    def test_credentials_are_checked(self):
        endpoint = yield self.start(credentials={b"app": b"secret"})

        def wrong():
            try:
                _sync_cluster(endpoint, "app", "wrong").close()
            except AuthenticationException:
                return "refused"
            return "accepted"
        self.assertEqual((yield deferToThread(wrong)), "refused")

    @inlineCallbacks
    def test_faulty_bucket_faults_reach_the_sdk(self):
        bucket = FaultyBucket(memory_bucket(reactor), clock=reactor)
        endpoint = yield self.start(bucket=bucket)
        seen = []

        def use():
            cluster = _sync_cluster(endpoint)
            try:
                coll = cluster.bucket("default").default_collection()
                coll.upsert("k", "v")
                for fault, exception in ((errors.NotFoundError("k"), DocumentNotFoundException),
                                         (errors.TemporaryFailError("busy"),
                                          TemporaryFailException)):
                    blockingCallFromThread(reactor, bucket.fail, "get", fault)
                    try:
                        coll.get("k")
                    except exception:  # TMPFAIL: after the SDK's retries, at its timeout
                        seen.append(exception.__name__)
                    blockingCallFromThread(reactor, bucket.heal)
                blockingCallFromThread(reactor, bucket.delay, "get", 0.2)
                started = time.monotonic()
                seen.append((coll.get("k").content_as[str], time.monotonic() - started >= 0.2))
            finally:
                cluster.close()
        yield deferToThread(use)
        self.assertEqual(seen, ["DocumentNotFoundException", "TemporaryFailException",
                                ("v", True)])

    @inlineCallbacks
    def test_hung_request_holds_back_later_replies_on_its_connection(self):
        """Replies leave in request order: a reply after a hang waits for it."""
        bucket = FaultyBucket(memory_bucket(reactor), clock=reactor)
        endpoint = yield self.start(bucket=bucket)
        seen = []

        def use():
            cluster = _sync_cluster(endpoint)
            try:
                coll = cluster.bucket("default").default_collection()
                coll.upsert("k", "v")
                blockingCallFromThread(reactor, bucket.hang, "get", 1)
                for _ in range(2):  # the hung one, then the one behind it
                    try:
                        coll.get("k")
                    except UnAmbiguousTimeoutException:
                        seen.append("timeout")
            finally:
                cluster.close()
        yield deferToThread(use)
        self.assertEqual(seen, ["timeout", "timeout"])

    @inlineCallbacks
    def test_stop_drops_open_connections(self):
        endpoint = yield couchbase_endpoint(reactor)

        def open_bucket():
            cluster = _sync_cluster(endpoint)
            cluster.bucket("default").default_collection().upsert("k", 1)
            return cluster
        cluster = yield deferToThread(open_bucket)
        self.addCleanup(deferToThread, cluster.close)
        self.assertEqual(endpoint.open_connections, 2)  # the cluster's and the bucket's
        yield endpoint.stop()
        self.assertEqual(endpoint.open_connections, 0)


class ReadmeShowsTheTestedExampleTests(unittest.SynchronousTestCase):
    """README.rst's txcouchbase recipe is the file the tests above run."""

    def readme(self):
        with open(os.path.join(ROOT, "README.rst")) as f:
            return f.read()

    def example(self, name):
        """The example's code after its module docstring, indented as in the README."""
        with open(os.path.join(EXAMPLES, name)) as f:
            code = f.read().split('"""\n', 2)[2].strip("\n")
        return "\n".join(("    " + line) if line else "" for line in code.split("\n"))

    def test_in_process_example_is_in_the_readme(self):
        self.assertIn(self.example("test_carts.py"), self.readme())

    def test_twistd_example_setup_is_in_the_readme(self):
        setup = self.example("test_carts_twistd.py").split("    class CartsOnServerTests")[1]
        setup = setup.split("\n\n")[1]  # the setUp method, decorator included
        self.assertIn("\n".join(line[4:] for line in setup.split("\n")), self.readme())

    def test_readme_runs_the_example_as_the_tests_do(self):
        self.assertIn("cd docs/examples && python -m twisted.trial --reactor=asyncio "
                      "test_carts\n", self.readme())


class CouchbaseBenchSmokeTests(unittest.SynchronousTestCase):
    """bench/couchbase_bench.py runs (a check that it works, not a measurement)."""

    skip = SKIP_SDK

    def test_smoke_prints_every_row_and_the_targets(self):
        proc = subprocess.run(
            [sys.executable, "-m", "bench.couchbase_bench", "--smoke", "--only",
             "cb-mix1,cb-getmulti"], cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=300)
        out = proc.stdout.decode()
        self.assertEqual(proc.returncode, 0, out)
        self.assertNotIn("FAILED", out)
        for row in ("cb-mix1      couchbase SDK (sync) -> txcb --couchbase",
                    "cb-mix1      bmemcached (binary) -> txcb --memcached",
                    "cb-getmulti  pymemcache -> memcached"):
            self.assertIn(row, out)
        self.assertIn("server CPU/op, 90/10 mix: --couchbase vs memcached binary", out)
        self.assertIn("server protocol alone, 90/10 mix", out)


class CouchbaseTlsTests(unittest.SynchronousTestCase):
    """--couchbase ssl:...: replies inside TLS, and the SDK over couchbases://."""

    skip = SKIP_SDK

    def setUp(self):
        pem = os.path.join(os.path.dirname(twisted.test.__file__), "server.pem")
        self.port = port = free_port()
        start_txcb_twistd(self, ["--ephemeral", "--port", "tcp:0:interface=127.0.0.1",
                                 "--couchbase", "ssl:%d:privateKey=%s:interface=127.0.0.1"
                                 % (port, pem)], port)

    def test_sdk_over_couchbases(self):
        cluster = Cluster("couchbases://127.0.0.1:%d?tls_verify=none" % (self.port,),
                          ClusterOptions(PasswordAuthenticator("u", "p"),
                                         timeout_options=ClusterTimeoutOptions(
                                             connect_timeout=timedelta(seconds=5),
                                             kv_timeout=timedelta(seconds=2))))
        self.addCleanup(cluster.close)
        cluster.wait_until_ready(timedelta(seconds=5))
        coll = cluster.bucket("default").default_collection()
        coll.upsert("tls", {"over": "TLS"})
        self.assertEqual(coll.get("tls").content_as[dict], {"over": "TLS"})

    def test_direct_writes_bypassed_tls(self):
        """Regression: direct_writer sent replies on the raw socket under TLS."""
        port = self.port
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with context.wrap_socket(raw) as tls:
                tls.sendall(struct.pack(">BBHBBHIIQ", 0x80, 0x0A, 0, 0, 0, 0, 0, 7, 0))
                reply = tls.recv(24)
        self.assertEqual(struct.unpack(">BBHBBHIIQ", reply)[:2] + (reply[12:16],),
                         (0x81, 0x0A, struct.pack(">I", 7)))
