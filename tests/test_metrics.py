"""
``twistd txcb --metrics``: the option, the service, and real scrapes parsed
with ``prometheus_client.parser``.
"""

import os
import signal
import subprocess
import sys
import time
import urllib.request

from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, inlineCallbacks
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.test.iosim import FakeTransport, connect as iosim_connect
from twisted.trial import unittest
from twisted.web.client import Agent

import txcb
from txcb import errors
from txcb.service import tap
from txcb.client.remote import BucketClientProtocol, RemoteBucket, connect
from txcb.server.core import IRequestObserver
from txcb.service.metrics import ServerMetrics, install_metrics, metrics_site
from txcb.server.netstring import BucketServerFactory
from txcb.testing import FaultyBucket, memory_bucket

from tests.support import ROOT, temp_path
from tests.support.procs import free_port


def parse(text):
    """{sample name: {frozenset(labels.items()): value}} of a scrape."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out.setdefault(s.name, {})[frozenset(s.labels.items())] = s.value
    return out


def sample(samples, name, **labels):
    return samples[name][frozenset(labels.items())]


class OptionTests(unittest.SynchronousTestCase):
    def parse(self, *args):
        o = tap.Options()
        o.parseOptions(list(args) + ["--ephemeral"])
        return o

    def test_off_by_default(self):
        o = self.parse()
        self.assertIsNone(o["metrics"])
        r = MemoryReactorClock()
        svc = tap.makeService(o, reactor=r)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual(len(r.tcpServers), 1)
        factory = r.tcpServers[0][1]
        self.assertIsNone(factory.observer)

    def test_bare_port_is_loopback(self):
        self.assertEqual(self.parse("--metrics", "9100")["metrics"],
                         "tcp:9100:interface=127.0.0.1")
        self.assertEqual(self.parse("--metrics", "unix:/tmp/m.sock")["metrics"],
                         "unix:/tmp/m.sock")
        self.assertIn("--metrics", str(tap.Options()))

    def test_metrics_service_listens(self):
        o = self.parse("--metrics", "9100")
        r = MemoryReactorClock()
        svc = tap.makeService(o, reactor=r)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual([(p, i) for p, _f, _b, i in r.tcpServers],
                         [(11222, "127.0.0.1"), (9100, "127.0.0.1")])
        self.assertTrue(IRequestObserver.providedBy(r.tcpServers[0][1].observer))


class InMemoryMeteringTests(unittest.SynchronousTestCase):
    """The metered server over an in-memory connection, on a task.Clock."""

    def setUp(self):
        self.clock = Clock()
        self.faulty = FaultyBucket(memory_bucket(self.clock), self.clock)
        self.factory = BucketServerFactory(self.faulty)
        self.metrics = ServerMetrics(self.faulty, self.factory.stats, process=False)
        self.factory.observer = self.metrics.latency
        server = self.factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 1))
        client = BucketClientProtocol(clock=self.clock, timeout=5)
        self.pump = iosim_connect(server, FakeTransport(server, isServer=True),
                                  client, FakeTransport(client, isServer=False),
                                  greet=True, clock=self.clock)
        self.server = server
        self.client = RemoteBucket(client, timeout=5)

    def scrape(self):
        from prometheus_client import generate_latest
        return parse(generate_latest(self.metrics.registry).decode())

    def test_sync_async_and_error_replies_are_timed(self):
        self.faulty.delay("get", 1.0, times=1)
        d1 = self.client.upsert("k", "v")
        d2 = self.client.get("k")           # answered later (delayed)
        d3 = self.client.get("missing")     # an error reply
        self.pump.flush()
        self.successResultOf(d1)
        self.assertNoResult(d2)
        self.failureResultOf(d3, errors.NotFoundError)
        self.assertEqual(self.server._inflight, 1)  # the get, answered later
        self.clock.advance(1.0)
        self.pump.flush()
        self.assertEqual(self.successResultOf(d2).value, "v")
        self.assertEqual(self.server._inflight, 0)
        s = self.scrape()
        self.assertEqual(sample(s, "txcb_request_duration_seconds_count", op="get"), 2)
        self.assertEqual(sample(s, "txcb_request_duration_seconds_count", op="upsert"), 1)
        self.assertEqual(sample(s, "txcb_request_duration_seconds_count", op="hello"), 1)
        self.assertEqual(sample(s, "txcb_request_duration_seconds_bucket", op="get",
                                le="+Inf"), 2)
        self.assertEqual(sample(s, "txcb_request_errors_total", op="get",
                                status="key_enoent"), 1)
        self.assertEqual(sample(s, "txcb_connections"), 1)

    def test_buckets_are_cumulative(self):
        for i in range(20):
            self.client.upsert("k%d" % i, i)
        self.pump.flush()
        s = self.scrape()
        buckets = sorted(((float(dict(k)["le"]), v) for k, v in
                          s["txcb_request_duration_seconds_bucket"].items()
                          if dict(k)["op"] == "upsert"))
        counts = [v for _le, v in buckets]
        self.assertEqual(counts, sorted(counts))
        self.assertEqual(counts[-1], 20)
        self.assertGreater(sample(s, "txcb_request_duration_seconds_sum", op="upsert"), 0)


class ScrapeTests(unittest.TestCase):
    """makeService with --metrics on the real reactor, scraped over HTTP."""

    timeout = 20

    @inlineCallbacks
    def start(self, *args):
        o = tap.Options()
        o.parseOptions(["--port", "tcp:0:interface=127.0.0.1",
                        "--metrics", "tcp:0:interface=127.0.0.1"] + list(args))
        svc = tap.makeService(o, reactor=reactor)
        svc.startService()
        self.addCleanup(svc.stopService)
        listeners = [s for s in svc if isinstance(s, tap.ListenService)]
        self.bucket_port = listeners[0].port.getHost().port
        self.metrics_port = listeners[-1].port.getHost().port
        self.assertEqual(listeners[-1].what, "txcb metrics")
        b = yield connect(reactor, "tcp:127.0.0.1:%d" % self.bucket_port)
        self.addCleanup(b.close)
        return b

    @inlineCallbacks
    def get(self, path=b"/metrics", headers=None):
        agent = Agent(reactor)
        response = yield agent.request(
            b"GET", b"http://127.0.0.1:%d%s" % (self.metrics_port, path), headers)
        done = Deferred()
        chunks = []

        class Collect(Protocol):
            def dataReceived(self, data):
                chunks.append(data)

            def connectionLost(self, reason):
                done.callback(None)
        response.deliverBody(Collect())
        yield done
        return response, b"".join(chunks)

    @inlineCallbacks
    def test_scrape_reports_operations_and_state(self):
        b = yield self.start("--ephemeral")
        yield b.upsert("a", {"x": 1})
        yield b.upsert("b", "two")
        yield b.get("a")
        yield b.get("a")
        yield b.get("nope", quiet=True)
        try:
            yield b.insert("a", 0)
        except errors.KeyExistsError:
            pass
        response, body = yield self.get()
        self.assertEqual(response.code, 200)
        ctype = response.headers.getRawHeaders(b"content-type")[0]
        self.assertTrue(ctype.startswith(b"text/plain"), ctype)
        s = parse(body.decode("utf-8"))
        self.assertEqual(sample(s, "txcb_items"), 2)
        self.assertGreater(sample(s, "txcb_bytes"), 0)
        self.assertEqual(sample(s, "txcb_get_hits_total"), 2)
        self.assertEqual(sample(s, "txcb_get_misses_total"), 1)
        self.assertEqual(sample(s, "txcb_operations_total", op="get"), 3)
        self.assertEqual(sample(s, "txcb_operations_total", op="upsert"), 2)
        self.assertEqual(sample(s, "txcb_request_duration_seconds_count", op="get"), 3)
        self.assertEqual(sample(s, "txcb_request_errors_total", op="insert",
                                status="key_eexists"), 1)
        self.assertEqual(sample(s, "txcb_connections"), 1)
        self.assertGreaterEqual(sample(s, "txcb_connections_total"), 1)
        self.assertEqual(sample(s, "txcb_info", version=txcb.__version__, bucket="default",
                                bucket_type="ephemeral"), 1)
        self.assertIn("process_cpu_seconds_total", s)
        self.assertNotIn("txcb_disk_write_queue", s)
        # A private registry: nothing leaks into prometheus_client's global one.
        self.assertFalse([n for n in REGISTRY._names_to_collectors if n.startswith("txcb")])

    @inlineCallbacks
    def test_openmetrics_and_root(self):
        yield self.start("--ephemeral")
        from twisted.web.http_headers import Headers
        response, body = yield self.get(headers=Headers(
            {b"accept": [b"application/openmetrics-text; version=1.0.0"]}))
        self.assertIn(b"openmetrics", response.headers.getRawHeaders(b"content-type")[0])
        self.assertTrue(body.endswith(b"# EOF\n"))
        response, body = yield self.get(b"/")
        self.assertIn(b"/metrics", body)

    @inlineCallbacks
    def test_persistent_bucket_reports_its_disk_queue(self):
        data_dir = os.path.abspath(temp_path(self))
        b = yield self.start("--data-dir", data_dir)
        yield b.upsert("k", "v", persist_to=1)
        response, body = yield self.get()
        s = parse(body.decode("utf-8"))
        self.assertEqual(sample(s, "txcb_disk_write_queue"), 0)
        self.assertGreaterEqual(sample(s, "txcb_disk_flushed_total"), 1)
        self.assertGreaterEqual(sample(s, "txcb_disk_persisted_seqno"), 1)
        self.assertIn("txcb_disk_errors_total", s)


class TwistdMetricsProcessTests(unittest.SynchronousTestCase):
    """`twistd -n txcb --metrics PORT` scraped with urllib."""

    def test_twistd_serves_metrics(self):
        port, mport = free_port(), free_port()
        workdir = os.path.abspath(temp_path(self))
        os.makedirs(workdir)
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logfile", os.path.join(workdir, "twistd.log"), "txcb",
             "--ephemeral", "--port", str(port), "--metrics", str(mport)],
            cwd=workdir, env=dict(os.environ, PYTHONPATH=ROOT),
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

        def stop():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        self.addCleanup(stop)
        deadline = time.monotonic() + 15
        while True:
            try:
                with urllib.request.urlopen("http://127.0.0.1:%d/metrics" % mport,
                                            timeout=2) as r:
                    text = r.read().decode("utf-8")
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise
                time.sleep(0.1)
        s = parse(text)
        self.assertEqual(sample(s, "txcb_items"), 0)
        self.assertEqual(sample(s, "txcb_connections"), 0)


class MetricsInstallTests(unittest.SynchronousTestCase):
    """install_metrics: every factory given is observed; the site serves them."""

    def test_every_factory_gets_the_observer(self):
        bucket = memory_bucket(Clock())
        netstring, other = BucketServerFactory(bucket), BucketServerFactory(bucket)
        site = install_metrics(bucket, [netstring, other], netstring.stats)
        self.assertIs(netstring.observer, site.metrics.latency)
        self.assertIs(other.observer, site.metrics.latency)
        self.assertIs(site.metrics.server_stats, netstring.stats)
