"""
Real memcached clients against txcb's memcached endpoint, over loopback TCP:
pymemcache (ASCII), python-binary-memcached (binary, with and without SASL)
and Twisted's own MemCacheProtocol.  Round trips of every common command,
values written through one protocol and read through another (the netstring
protocol included, flags and all), and the netstring and memcached endpoints
of one ``twistd txcb`` serving one bucket.

The blocking clients run in a thread (deferToThread) while the reactor
serves; every connection is closed, on both sides, before a test ends.
"""

from __future__ import annotations

import inspect
from typing import Any, List

from twisted.internet import defer, reactor, threads
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol
from twisted.internet.task import deferLater
from twisted.protocols.memcache import MemCacheProtocol
from twisted.trial import unittest

from txcb.service import tap
from txcb.client.remote import connect
from txcb.buckets.embedded import EmbeddedBucket
from txcb.formats import Encoded
from txcb.server.memcached import VERSION, MemcachedServerFactory, MemcachedServerProtocol

try:
    import pymemcache
    from pymemcache.client.base import Client as PymemcacheClient
except ImportError:  # pragma: no cover
    pymemcache = None
try:
    import bmemcached
except ImportError:  # pragma: no cover
    bmemcached = None

USER, PASSWORD = "ada", "lovelace:1815"


class TrackedFactory(MemcachedServerFactory):
    """Knows when every connection it served has closed (for clean tests)."""

    def __init__(self, *a: Any, **kw: Any) -> None:
        MemcachedServerFactory.__init__(self, *a, **kw)
        self.lost: List[defer.Deferred] = []

    def buildProtocol(self, addr: Any) -> Any:
        p = MemcachedServerFactory.buildProtocol(self, addr)
        if isinstance(p, MemcachedServerProtocol):
            done: defer.Deferred = defer.Deferred()
            self.lost.append(done)
            orig = p.connectionLost

            def lost(reason: Any = None) -> None:
                orig(reason)
                if not done.called:
                    done.callback(None)
            p.connectionLost = lost  # type: ignore[method-assign]
        return p


class ServerMixin:
    timeout = 60
    credentials = None

    def start(self, credentials: Any = None) -> int:
        self.bucket = EmbeddedBucket(clock=reactor, max_value_size=1024 * 1024,
                                     pager_interval=0)
        self.factory = TrackedFactory(self.bucket, credentials=credentials)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")

        @defer.inlineCallbacks
        def cleanup() -> Any:
            yield port.stopListening()
            yield defer.gatherResults(list(self.factory.lost))
            yield self.bucket.close()
        self.addCleanup(cleanup)  # type: ignore[attr-defined]
        self.port = port.getHost().port
        return self.port

    def in_thread(self, f: Any, *a: Any) -> defer.Deferred:
        return threads.deferToThread(f, *a)


class PymemcacheTests(ServerMixin, unittest.TestCase):
    if pymemcache is None:
        skip = "pymemcache not installed (pip install -e .[test])"

    def client(self, **kw: Any) -> Any:
        return PymemcacheClient(("127.0.0.1", self.port), connect_timeout=5, timeout=5,
                                **kw)

    def setUp(self) -> None:
        self.start()

    def test_round_trips(self) -> defer.Deferred:
        def work() -> None:
            c = self.client()
            try:
                self.assertTrue(c.set("k", b"v1", noreply=False))
                self.assertEqual(c.get("k"), b"v1")
                value, cas = c.gets("k")
                self.assertEqual(value, b"v1")
                self.assertFalse(c.cas("k", b"v2", int(cas) + 1))
                self.assertTrue(c.cas("k", b"v2", cas))
                self.assertEqual(c.get("k"), b"v2")
                self.assertTrue(c.append("k", b"+a", noreply=False))
                self.assertTrue(c.prepend("k", b"p+", noreply=False))
                self.assertEqual(c.get("k"), b"p+v2+a")
                self.assertTrue(c.add("n", b"10", noreply=False))
                self.assertFalse(c.add("n", b"11", noreply=False))
                self.assertEqual(c.incr("n", 5), 15)
                self.assertEqual(c.decr("n", 20), 0)
                self.assertIsNone(c.incr("missing", 1))
                self.assertTrue(c.replace("n", b"7", noreply=False))
                self.assertFalse(c.replace("missing", b"7", noreply=False))
                c.set("a", b"1")
                c.set("b", b"2")   # noreply: pymemcache's default
                self.assertEqual(c.get_many(["a", "b", "missing", "n"]),
                                 {"a": b"1", "b": b"2", "n": b"7"})
                self.assertTrue(c.touch("a", 100, noreply=False))
                self.assertFalse(c.touch("missing", 100, noreply=False))
                self.assertTrue(c.delete("a", noreply=False))
                self.assertFalse(c.delete("a", noreply=False))
                self.assertEqual(c.get("a"), None)
                self.assertEqual(c.version(), VERSION.encode())
                stats = c.stats()
                self.assertEqual(stats[b"curr_connections"], 1)
                self.assertGreaterEqual(stats[b"curr_items"], 3)
                self.assertTrue(c.flush_all(noreply=False))
                self.assertEqual(c.get_many(["b", "k", "n"]), {})
            finally:
                c.close()
        return self.in_thread(work)

    def test_non_numeric_incr_is_a_client_error(self) -> defer.Deferred:
        from pymemcache.exceptions import MemcacheClientError

        def work() -> None:
            c = self.client()
            try:
                c.set("s", b"abc", noreply=False)
                with self.assertRaises(MemcacheClientError) as e:
                    c.incr("s", 1)
                self.assertIn(b"non-numeric", str(e.exception).encode())
                self.assertEqual(c.get("s"), b"abc")
            finally:
                c.close()
        return self.in_thread(work)

    def test_ascii_auth_as_memcached_does(self) -> defer.Deferred:
        # A server with credentials: the first command is "set <user> <pass>".
        self.factory.credentials = {USER.encode(): PASSWORD.encode()}
        from pymemcache.exceptions import MemcacheClientError

        def work() -> None:
            c = self.client()
            try:
                with self.assertRaises(MemcacheClientError):
                    c.get("k")
                self.assertTrue(c.set("auth", "%s %s" % (USER, PASSWORD), noreply=False))
                self.assertTrue(c.set("k", b"v", noreply=False))
                self.assertEqual(c.get("k"), b"v")
            finally:
                c.close()
        return self.in_thread(work)


class BinaryMemcachedTests(ServerMixin, unittest.TestCase):
    if bmemcached is None:
        skip = "python-binary-memcached not installed (pip install -e .[test])"

    def client(self, **kw: Any) -> Any:
        return bmemcached.Client(("127.0.0.1:%d" % self.port,), socket_timeout=5, **kw)

    def round_trips(self, c: Any) -> None:
        self.assertTrue(c.set("k", "v1"))
        self.assertEqual(c.get("k"), "v1")
        value, cas = c.gets("k")
        self.assertEqual(value, "v1")
        self.assertFalse(c.cas("k", "v2", cas + 1))
        self.assertTrue(c.cas("k", "v2", cas))
        self.assertEqual(c.get("k"), "v2")
        self.assertTrue(c.add("a", 1))
        self.assertFalse(c.add("a", 2))
        self.assertTrue(c.replace("a", 3))
        self.assertEqual(c.get("a"), 3)
        self.assertEqual(c.incr("n", 1), 0)      # created with the default, 0
        self.assertEqual(c.incr("n", 41), 41)
        self.assertEqual(c.decr("n", 50), 0)
        c.set_multi({"x": "1", "y": b"2"})
        self.assertEqual(c.get_multi(["x", "y", "missing"]), {"x": "1", "y": b"2"})
        self.assertTrue(c.delete("x"))
        self.assertIsNone(c.get("x"))
        _value, cas = c.gets("y")
        self.assertFalse(c.delete("y", cas + 1))   # the CAS is honoured
        self.assertTrue(c.delete("y", cas))
        self.assertIsNone(c.get("y"))
        stats = list(c.stats().values())[0]
        self.assertIn("curr_items", stats)
        self.assertTrue(c.flush_all())
        self.assertIsNone(c.get("k"))

    def test_round_trips_without_sasl(self) -> defer.Deferred:
        self.start()

        def work() -> None:
            c = self.client()
            try:
                self.round_trips(c)
            finally:
                c.disconnect_all()
        return self.in_thread(work)

    def test_round_trips_with_sasl(self) -> defer.Deferred:
        self.start(credentials={USER.encode(): PASSWORD.encode()})

        def work() -> None:
            c = self.client(username=USER, password=PASSWORD)
            try:
                self.round_trips(c)
            finally:
                c.disconnect_all()
        return self.in_thread(work)

    def test_sasl_refuses_wrong_or_missing_credentials(self) -> defer.Deferred:
        self.start(credentials={USER.encode(): PASSWORD.encode()})

        def work() -> None:
            c = self.client(username=USER, password="wrong")
            try:
                with self.assertRaises(bmemcached.exceptions.MemcachedException):
                    c.get("k")
            finally:
                c.disconnect_all()
            c = self.client()
            try:
                with self.assertRaises(bmemcached.exceptions.MemcachedException) as e:
                    c.set("k", "v")
                self.assertEqual(e.exception.code, 0x20)
            finally:
                c.disconnect_all()
            self.assertEqual(self.bucket.stats_sync()["op_upsert"], 0)
        return self.in_thread(work)


class TwistedMemCacheProtocolTests(ServerMixin, unittest.TestCase):
    def setUp(self) -> defer.Deferred:
        self.start()
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.port)
        d = connectProtocol(ep, MemCacheProtocol(timeOut=10))

        def connected(proto: MemCacheProtocol) -> None:
            self.proto = proto
            self.addCleanup(proto.transport.loseConnection)
        return d.addCallback(connected)

    @defer.inlineCallbacks
    def test_round_trips(self) -> Any:
        p = self.proto
        self.assertTrue((yield p.set(b"k", b"v1", flags=5)))
        self.assertEqual((yield p.get(b"k")), (5, b"v1"))
        flags, cas, value = yield p.get(b"k", withIdentifier=True)
        self.assertEqual((flags, value), (5, b"v1"))
        self.assertFalse((yield p.checkAndSet(b"k", b"v2", str(int(cas) + 1).encode())))
        self.assertTrue((yield p.checkAndSet(b"k", b"v2", cas, flags=6)))
        self.assertEqual((yield p.get(b"k")), (6, b"v2"))
        self.assertTrue((yield p.append(b"k", b"!")))
        self.assertTrue((yield p.prepend(b"k", b"<")))
        self.assertEqual((yield p.get(b"k")), (6, b"<v2!"))
        self.assertTrue((yield p.add(b"n", b"1")))
        self.assertFalse((yield p.add(b"n", b"1")))
        self.assertEqual((yield p.increment(b"n", 9)), 10)
        self.assertEqual((yield p.decrement(b"n", 3)), 7)
        self.assertTrue((yield p.replace(b"n", b"8")))
        self.assertFalse((yield p.replace(b"missing", b"8")))
        got = yield p.getMultiple([b"k", b"n", b"missing"])
        self.assertEqual(got, {b"k": (6, b"<v2!"), b"n": (0, b"8"), b"missing": (0, None)})
        self.assertTrue((yield p.delete(b"n")))
        self.assertFalse((yield p.delete(b"n")))
        self.assertEqual((yield p.version()), VERSION.encode())
        stats = yield p.stats()
        self.assertEqual(stats[b"curr_connections"], b"1")
        self.assertTrue((yield p.flushAll()))
        self.assertEqual((yield p.get(b"k")), (0, None))


class _FlagsSerde:
    """A pymemcache serde that hands back (value, flags) untouched."""

    def serialize(self, key: Any, value: Any) -> Any:
        return value, 0   # the flags given to set() win over these

    def deserialize(self, key: Any, value: Any, flags: int) -> Any:
        return value, flags


class CrossProtocolTests(unittest.TestCase):
    """One ``twistd txcb`` service (tap.makeService): netstring + memcached."""

    timeout = 60

    @defer.inlineCallbacks
    def setUp(self) -> Any:
        args = ["--port", "tcp:0:interface=127.0.0.1",
                "--memcached", "tcp:0:interface=127.0.0.1"]
        if "--ephemeral" in str(tap.Options()):
            args.append("--ephemeral")
        options = tap.Options()
        options.parseOptions(args)
        self.service = tap.makeService(options, reactor=reactor)
        # Track the memcached connections, to close them all before the end.
        listeners = [s for s in self.service if isinstance(s, tap.ListenService)]
        mc = [s for s in listeners if isinstance(s.factory, MemcachedServerFactory)][0]
        ns = [s for s in listeners if s is not mc][0]
        tracked = TrackedFactory(mc.factory.bucket, stats=mc.factory.stats,
                                 clock=reactor)
        mc.factory = tracked
        self.service.startService()
        self.bucket = tracked.bucket
        self.mc_port = mc.port.getHost().port
        self.ns_port = ns.port.getHost().port
        self.remote = yield connect(reactor, "tcp:127.0.0.1:%d" % self.ns_port)

        @defer.inlineCallbacks
        def cleanup() -> Any:
            yield self.remote.close()
            yield defer.gatherResults(list(tracked.lost))
            yield self.service.stopService()
            # The netstring server's side of the connection closes a moment later.
            yield deferLater(reactor, 0.05, lambda: None)
        self.addCleanup(cleanup)

    def pymemcache(self) -> Any:
        return PymemcacheClient(("127.0.0.1", self.mc_port), serde=_FlagsSerde(),
                                connect_timeout=5, timeout=5)

    def binary(self) -> Any:
        return bmemcached.Client(("127.0.0.1:%d" % self.mc_port,), socket_timeout=5,
                                 raw_data=True)

    @defer.inlineCallbacks
    def test_values_cross_every_protocol_with_their_flags(self) -> Any:
        if pymemcache is None or bmemcached is None:
            raise unittest.SkipTest("pymemcache and python-binary-memcached are needed")
        if "raw_data" not in inspect.signature(bmemcached.Client.__init__).parameters:
            raise unittest.SkipTest("this python-binary-memcached has no raw_data mode "
                                    "(0.33 has; it needs Python 3.10)")

        # ASCII write -> binary, Twisted (ASCII) and netstring reads.
        def ascii_write() -> None:
            c = self.pymemcache()
            try:
                c.set("from-ascii", b"A", flags=7, noreply=False)
            finally:
                c.close()
        yield threads.deferToThread(ascii_write)

        def binary_read_then_write() -> Any:
            c = self.binary()
            try:
                got = c.get("from-ascii")
                c.set("from-binary", b"B")     # raw data mode: flags 0
                return got
            finally:
                c.disconnect_all()
        self.assertEqual((yield threads.deferToThread(binary_read_then_write)), b"A")
        r = yield self.remote.get("from-ascii")
        self.assertEqual((r.raw, r.flags), (b"A", 7))
        r = yield self.remote.get("from-binary")
        self.assertEqual((r.raw, r.flags), (b"B", 0))

        # Netstring writes (txcb's formats, and foreign flags) -> memcached reads.
        yield self.remote.upsert("from-netstring", Encoded(b"N", 0xDEADBEEF))
        yield self.remote.upsert("json", {"a": 1})
        json_flags = (yield self.remote.get("json")).flags

        def ascii_read() -> Any:
            c = self.pymemcache()
            try:
                return c.get("from-netstring"), c.get("json"), c.get("from-binary")
            finally:
                c.close()
        got = yield threads.deferToThread(ascii_read)
        self.assertEqual(got, ((b"N", 0xDEADBEEF), (b'{"a":1}', json_flags), (b"B", 0)))

        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.mc_port)
        proto = yield connectProtocol(ep, MemCacheProtocol(timeOut=10))
        try:
            self.assertEqual((yield proto.get(b"from-netstring")), (0xDEADBEEF, b"N"))
            # A counter made through memcached is a counter for the bucket.
            self.assertEqual((yield proto.set(b"count", b"41")), True)
            self.assertEqual((yield proto.increment(b"count")), 42)
        finally:
            proto.transport.loseConnection()
        r = yield self.remote.counter("count", delta=1)
        self.assertEqual(r.value, 43)

    @defer.inlineCallbacks
    def test_the_endpoints_share_one_bucket(self) -> Any:
        yield self.remote.upsert("k", "from netstring")
        ep = TCP4ClientEndpoint(reactor, "127.0.0.1", self.mc_port)
        proto = yield connectProtocol(ep, MemCacheProtocol(timeOut=10))
        try:
            flags, value = yield proto.get(b"k")
            self.assertEqual(value, b"from netstring")
            yield proto.set(b"m", b"from memcached", flags=3)
            r = yield self.remote.get("m")
            self.assertEqual((r.raw, r.flags), (b"from memcached", 3))
            # One connection count for both endpoints.
            stats = yield proto.stats()
            self.assertEqual(stats[b"curr_connections"], b"2")
            s = yield self.remote.stats()
            self.assertEqual(s["connections"], 2)
            # flush_all through memcached empties what netstrings see.
            self.assertTrue((yield proto.flushAll()))
            r = yield self.remote.get("k", quiet=True)
            self.assertFalse(r.success)
            self.assertEqual((yield self.remote.stats())["items"], 0)
        finally:
            proto.transport.loseConnection()
