"""
txcb.client.blocking: the synchronous contract suite against a real txcb server (on
its own reactor thread), plus endpoints, timeouts, reconnection, pipelining
and threads.
"""

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time

from twisted.trial.unittest import SynchronousTestCase

from txcb import errors
from txcb.client.blocking import Bucket, parse_endpoint
from txcb.buckets.embedded import EmbeddedBucket
from txcb.testing import FaultyBucket

from tests.support import ROOT
from tests.support.sync_contract import SyncBucketContractMixin, ThreadedServer


class ThreadedServerMixin:
    def start_server(self, **kwargs):
        server = ThreadedServer(**kwargs)
        self.addCleanup(server.stop)
        return server

    def connect(self, endpoint, **kwargs):
        b = Bucket(endpoint, **kwargs)
        self.addCleanup(b.close)
        return b


class BlockingContractTests(ThreadedServerMixin, SyncBucketContractMixin, SynchronousTestCase):
    def setUp(self):
        self.server = self.start_server()

    def make_sync_bucket(self):
        return self.connect(self.server.endpoint)

    def advance(self, seconds):
        self.server.advance(seconds)


class EndpointTests(SynchronousTestCase):
    def test_tcp_forms(self):
        self.assertEqual(parse_endpoint("tcp:127.0.0.1:11222"),
                         (socket.AF_INET, ("127.0.0.1", 11222), None))
        self.assertEqual(parse_endpoint("tcp:host=example.org:port=1:timeout=3"),
                         (socket.AF_INET, ("example.org", 1), 3.0))
        self.assertEqual(parse_endpoint("tcp:localhost:99:timeout=0.5"),
                         (socket.AF_INET, ("localhost", 99), 0.5))
        self.assertEqual(parse_endpoint(r"tcp6:\:\:1:11222"),
                         (socket.AF_INET6, ("::1", 11222), None))
        self.assertEqual(parse_endpoint("11223"), (socket.AF_INET, ("127.0.0.1", 11223), None))

    def test_unix_forms(self):
        self.assertEqual(parse_endpoint("unix:/tmp/s"), (socket.AF_UNIX, "/tmp/s", None))
        self.assertEqual(parse_endpoint("unix:path=/tmp/a\\:b:timeout=2"),
                         (socket.AF_UNIX, "/tmp/a:b", 2.0))

    def test_refused_forms(self):
        for bad in ["ssl:localhost:443", "tor:x", "tcp:localhost", "tcp:h:notaport",
                    "tcp:h:0", "tcp:h:1:bogus=1", "unix:", "", "tcp:h:1:2:3:4:5"]:
            with self.assertRaises(errors.ArgumentError, msg=bad) as cm:
                parse_endpoint(bad)
            self.assertIn("endpoint", str(cm.exception))
        with self.assertRaises(errors.ArgumentError) as cm:
            Bucket("ssl:127.0.0.1:1")
        self.assertIn("tcp:, tcp6: and unix:", str(cm.exception))


class ConnectionTests(ThreadedServerMixin, SynchronousTestCase):
    def test_connect_failure_is_connect_error(self):
        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        with self.assertRaises(errors.ConnectError) as cm:
            Bucket("tcp:127.0.0.1:%d" % port, timeout=1)
        self.assertIn("cannot connect", str(cm.exception))
        b = Bucket("tcp:127.0.0.1:%d" % port, connect=False)
        self.assertFalse(b.connected)
        self.assertRaises(errors.ConnectError, b.get, "k")

    def test_unix_socket(self):
        server = self.start_server()
        path = os.path.join(tempfile.mkdtemp(), "txcb.sock")
        self.addCleanup(os.rmdir, os.path.dirname(path))
        port = server.call(server.reactor.listenUNIX, path, server.factory)
        self.addCleanup(server.call, port.stopListening)
        b = self.connect("unix:" + path)
        b.upsert("k", "over unix")
        self.assertEqual(b.get("k").value, "over unix")

    def test_timeout_raises_and_the_next_call_reconnects(self):
        faulty = FaultyBucket(EmbeddedBucket(pager_interval=0))
        server = self.start_server(bucket=faulty)
        b = self.connect(server.endpoint, timeout=5)
        faulty.hang("get", times=1)
        started = time.monotonic()
        with self.assertRaises(errors.TimeoutError) as cm:
            b.get("k", timeout=0.2)
        self.assertLess(time.monotonic() - started, 2)
        self.assertEqual(cm.exception.key, "k")
        self.assertFalse(b.connected)
        b.upsert("k", "v")
        self.assertEqual(b.get("k").value, "v")

    def test_reconnects_after_the_server_drops_an_idle_connection(self):
        server = self.start_server()
        b = self.connect(server.endpoint)
        b.upsert("k", 1)
        server.drop_connections()
        time.sleep(0.05)
        self.assertEqual(b.get("k").value, 1)
        self.assertEqual(server.factory.stats.total_connections, 2)

    def test_without_reconnect_a_lost_connection_stays_lost(self):
        server = self.start_server()
        b = self.connect(server.endpoint, reconnect=False)
        server.drop_connections()
        time.sleep(0.05)
        self.assertRaises(errors.NetworkError, b.get, "k")

    def test_server_gone_then_back(self):
        server = self.start_server()
        b = self.connect(server.endpoint)
        b.upsert("k", 1)
        server.stop_listening()
        server.drop_connections()
        time.sleep(0.05)
        self.assertRaises(errors.ConnectError, b.get, "k")
        server.listen_again()
        self.assertEqual(b.get("k").value, 1)

    def test_closed_bucket_raises(self):
        server = self.start_server()
        with Bucket(server.endpoint) as b:
            b.upsert("k", 1)
        self.assertRaises(errors.NetworkError, b.get, "k")

    def test_imports_no_twisted(self):
        out = subprocess.check_output(
            [sys.executable, "-c", "import sys, txcb.client.blocking; "
             "print(sorted(m for m in sys.modules if m.split('.')[0] in "
             "('twisted', 'zope')))"], cwd=ROOT)
        self.assertEqual(out.strip(), b"[]")


class PipelineTests(ThreadedServerMixin, SynchronousTestCase):
    def test_pipeline_returns_results_and_errors_in_order(self):
        server = self.start_server()
        b = self.connect(server.endpoint)
        out = b.pipeline([("upsert", ("a", 1), {}), ("insert", ("a", 2), {}),
                          ("get", ("a",), {}), ("get", ("zz",), {"quiet": True}),
                          ("get", ("",), {}), ("counter", ("n",), {"initial": 3}),
                          ("upsert", ("t", "v"), {"ttl": 10})])
        self.assertTrue(out[0].success)
        self.assertIsInstance(out[1], errors.KeyExistsError)
        self.assertEqual(out[2].value, 1)
        self.assertFalse(out[3].success)
        self.assertIsInstance(out[4], errors.ArgumentError)
        self.assertEqual(out[5].value, 3)
        self.assertTrue(out[6].success)
        self.assertRaises(errors.ArgumentError, b.pipeline, [("flush", (), {})])

    def test_many_requests_in_windows(self):
        # More requests than the server lets one connection have in flight.
        server = self.start_server(max_inflight=16)
        b = self.connect(server.endpoint)
        self.assertEqual(b._window, 8)
        n = 3000
        r = b.upsert_multi({"k%d" % i: i for i in range(n)})
        self.assertEqual(len(r), n)
        got = b.get_multi(["k%d" % i for i in range(n)])
        self.assertEqual([got["k%d" % i].value for i in range(n)], list(range(n)))

    def test_threads_share_one_bucket(self):
        server = self.start_server()
        b = self.connect(server.endpoint)
        b.counter("n", initial=0)
        failures = []

        def work():
            try:
                for _ in range(100):
                    b.counter("n", delta=1)
                    b.get_multi(["n"])
            except Exception as e:  # pragma: no cover - reported below
                failures.append(e)
        threads = [threading.Thread(target=work) for _ in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        self.assertEqual(failures, [])
        self.assertEqual(b.get("n").value, 800)
        self.assertEqual(server.factory.stats.total_connections, 1)

    def test_ping(self):
        server = self.start_server()
        b = self.connect(server.endpoint)
        rtt = b.ping()
        self.assertGreater(rtt, 0)
        self.assertLess(rtt, 1)
        self.assertIsNone(b.noop())
