"""
Issue 12, item 5 (second half): ``--idle-timeout SECONDS`` closes client
connections that send nothing, on every endpoint (netstring and memcached),
off by default as in memcached.  One timer per endpoint (core.IdleSweeper)
whatever the number of connections; a read costs a connection one attribute
store; a connection with requests still being answered is not idle; closing
for idle is logged at most once per interval.
"""

from twisted.internet import defer, error, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.logger import formatEvent
from twisted.python import usage
from twisted.python.failure import Failure
from twisted.trial import unittest

from txcb.buckets.embedded import EmbeddedBucket
from txcb.server.core import ServerStats
from txcb.server.memcached import MemcachedServerFactory
from txcb.server.netstring import BucketServerFactory
from txcb.service import tap
from txcb.wire import mcbinary
from txcb.wire.netstring import Op, encode_request, netstring

from tests.support.lifetime import HangingBucket, connect, listen, receive, wait_until
from tests.support.netstring import LogCapture

PEER = IPv4Address("TCP", "127.0.0.1", 40000)
TIMEOUT = 10.0
NOOP = netstring(encode_request(Op.NOOP, 1))
GET = netstring(encode_request(Op.GET, 2, key=b"k"))


class _Endpoint:
    """One endpoint's factory on a Clock, and its connections over StringTransports."""

    def __init__(self, make_factory, idle_timeout=TIMEOUT, bucket=None):
        self.clock = Clock()
        self.clock.advance(1_700_000_000)
        self.bucket = bucket if bucket is not None else EmbeddedBucket(
            clock=self.clock, pager_interval=0)
        self.stats = ServerStats(clock=self.clock, idle_timeout=idle_timeout)
        self.factory = make_factory(self.bucket, self.stats)
        self.conns = []

    def connect(self):
        p = self.factory.buildProtocol(PEER)
        t = StringTransport(peerAddress=PEER)
        p.makeConnection(t)
        self.conns.append((p, t))
        return p, t

    def advance(self, seconds, step=0.5):
        """Let time pass; a connection closed meanwhile is lost as the reactor would."""
        while seconds > 0:
            self.clock.advance(min(step, seconds))
            seconds -= step
            for p, t in self.conns:
                if t.disconnecting and not getattr(t, "lost", False):
                    t.lost = True
                    p.connectionLost(Failure(error.ConnectionDone()))

    def closed(self):
        return [t.disconnecting for _p, t in self.conns]


def netstring_factory(bucket, stats):
    return BucketServerFactory(bucket, stats=stats)


def memcached_factory(bucket, stats):
    return MemcachedServerFactory(bucket, stats=stats, clock=stats.clock)


class NetstringIdleTimeoutTests(unittest.TestCase):

    make_factory = staticmethod(netstring_factory)
    request = NOOP

    def endpoint(self, **kw):
        return _Endpoint(self.make_factory, **kw)

    def send(self, p):
        p.dataReceived(self.request)

    def test_silent_connection_is_closed_after_the_idle_timeout(self):
        e = self.endpoint()
        e.connect()
        e.advance(TIMEOUT - 0.5)
        self.assertEqual(e.closed(), [False])
        e.advance(e.factory.idle.interval + 0.5)
        self.assertEqual(e.closed(), [True])
        self.assertEqual(e.factory.idle.closed, 1)

    def test_a_connection_that_keeps_sending_stays_open(self):
        e = self.endpoint()
        p, _t = e.connect()
        for _ in range(20):  # 100 s, a request every 5 s
            self.send(p)
            e.advance(TIMEOUT / 2)
        self.assertEqual(e.closed(), [False])
        e.advance(TIMEOUT + e.factory.idle.interval + 0.5)  # then silence
        self.assertEqual(e.closed(), [True])

    def test_a_connection_waiting_for_its_replies_is_not_idle(self):
        bucket = HangingBucket()
        e = self.endpoint(bucket=bucket)
        p, _t = e.connect()
        self.send_get(p)
        self.assertEqual(len(bucket.pending()), 1)
        e.advance(10 * TIMEOUT)
        self.assertEqual(e.closed(), [False])
        bucket.answer_all()
        e.advance(TIMEOUT + e.factory.idle.interval + 0.5)
        self.assertEqual(e.closed(), [True])

    def send_get(self, p):
        p.dataReceived(GET)

    def test_idle_timeout_is_off_by_default(self):
        e = self.endpoint(idle_timeout=None)
        self.assertIsNone(e.factory.idle)
        e.connect()
        self.assertEqual(e.clock.getDelayedCalls(), [])
        e.advance(86400, step=3600)
        self.assertEqual(e.closed(), [False])

    def test_one_timer_for_all_connections_and_none_per_read(self):
        e = self.endpoint()
        conns = [e.connect()[0] for _ in range(100)]
        calls = e.clock.getDelayedCalls()
        self.assertEqual(len(calls), 1)
        timer = calls[0]
        when = timer.getTime()
        for p in conns:
            for _ in range(10):
                self.send(p)
        self.assertEqual(e.clock.getDelayedCalls(), [timer])
        self.assertEqual(timer.getTime(), when)  # not reset by the reads

    def test_the_sweeper_stops_with_the_last_connection(self):
        e = self.endpoint()
        for _ in range(5):
            e.connect()
        e.advance(TIMEOUT + e.factory.idle.interval + 0.5)
        self.assertEqual(e.closed(), [True] * 5)
        self.assertEqual(e.clock.getDelayedCalls(), [])
        e.connect()  # and starts again with the next
        self.assertEqual(len(e.clock.getDelayedCalls()), 1)

    def test_closing_for_idle_is_logged_once_per_interval(self):
        log = LogCapture(self)
        e = self.endpoint()
        for _ in range(50):
            e.connect()
        e.advance(TIMEOUT + e.factory.idle.interval + 0.5)
        for _ in range(50):
            e.connect()
        e.advance(TIMEOUT + e.factory.idle.interval + 0.5)
        self.assertEqual(e.closed(), [True] * 100)
        lines = [formatEvent(x) for x in log.events if "idle for" in x.get("log_format", "")]
        self.assertEqual(len(lines), 2, lines)
        self.assertIn("closing ", lines[0])
        self.assertIn("127.0.0.1", lines[0])
        self.assertIn("idle for 10s (--idle-timeout 10)", lines[0])
        self.assertIn("49 more closed since the last such line", lines[1])


class MemcachedIdleTimeoutTests(NetstringIdleTimeoutTests):
    """The same, on the memcached endpoint, ASCII (``request``) and binary."""

    make_factory = staticmethod(memcached_factory)
    request = b"version\r\n"

    def send_get(self, p):
        p.dataReceived(b"get k\r\n")

    def test_binary_connections_time_out_too(self):
        e = self.endpoint()
        p, t = e.connect()
        noop = mcbinary.encode_request(mcbinary.Opcode.NOOP)
        for _ in range(10):
            p.dataReceived(noop)
            e.advance(TIMEOUT / 2)
        self.assertEqual(e.closed(), [False])
        self.assertEqual(p.protocol_name, "binary")
        e.advance(TIMEOUT + e.factory.idle.interval + 0.5)
        self.assertEqual(e.closed(), [True])


class IdleTimeoutOverTCPTests(unittest.TestCase):
    """Real loopback connections and the real reactor, with a short timeout."""

    timeout = 20

    @defer.inlineCallbacks
    def check(self, factory):
        port = listen(self, factory)
        quiet = connect(self, port)
        talking = connect(self, port)
        for _ in range(12):  # 0.6 s: three timeouts
            talking.send(NOOP if isinstance(factory, BucketServerFactory) else b"version\r\n")
            yield receive(talking)
        self.assertEqual((yield receive(quiet)), b"")  # closed by the server
        talking.close()
        yield wait_until(lambda: factory.stats.connections == 0, what="both closed")
        self.assertEqual(factory.idle.closed, 1)

    def stats(self):
        return ServerStats(clock=reactor, idle_timeout=0.2)

    def test_idle_netstring_connection_is_closed(self):
        return self.check(BucketServerFactory(EmbeddedBucket(pager_interval=0),
                                              stats=self.stats()))

    def test_idle_memcached_connection_is_closed(self):
        return self.check(MemcachedServerFactory(EmbeddedBucket(pager_interval=0),
                                                 stats=self.stats(), clock=reactor))


class IdleTimeoutOptionTests(unittest.TestCase):

    def options(self, *args):
        o = tap.Options()
        extra = ["--ephemeral"] if "--ephemeral" in str(tap.Options()) else []
        o.parseOptions(list(args) + extra)
        return o

    def factories(self, o):
        svc = tap.makeService(o, reactor=MemoryReactorClock())
        return [s.factory for s in svc if isinstance(s, tap.ListenService)]

    def test_idle_timeout_reaches_every_endpoint(self):
        o = self.options("--idle-timeout", "30", "--memcached", "11211")
        fs = self.factories(o)
        self.assertEqual(len(fs), 2)
        for f in fs:
            self.assertEqual(f.idle.timeout, 30.0)

    def test_idle_timeout_is_off_by_default(self):
        for f in self.factories(self.options("--memcached", "11211")):
            self.assertIsNone(f.idle)

    def test_idle_timeout_must_be_positive(self):
        for bad in ("0", "-1", "nan", "soon"):
            self.assertRaises(usage.UsageError, self.options, "--idle-timeout", bad)

    def test_help_documents_idle_timeout(self):
        self.assertIn("--idle-timeout", str(tap.Options()))
