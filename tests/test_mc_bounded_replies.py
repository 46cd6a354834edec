"""
A memcached ASCII reply far larger than its request (``get big big big ...``
naming one big value hundreds of times; ``gets``, ``gat`` and ``gats`` the
same) is made as the client reads it: while the client does not read, the
server holds the transport's buffer and one part of the reply, not the whole
reply (issue 12, item 1).  What a client that reads gets is unchanged: the
same bytes, and the replies of the commands pipelined after it, in order.
"""

import re
import socket
import time

from twisted.internet import defer, reactor
from twisted.internet.error import ConnectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure
from twisted.trial import unittest

from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import RC, NetworkError
from txcb.formats import Encoded
from txcb.server.memcached import VERSION, MemcachedServerFactory
from txcb.server.mcreplies import WRITE_CHUNK
from txcb.testing import FaultyBucket

from tests.support.memcached import PEER, Conn, Harness
from tests.support.slowpeer import SlowPeerTransport, peak_allocated

SIZE = 100000
KEYS = 300
BIG = b"x" * SIZE
HIT = b"VALUE big 5 %d\r\n%s\r\n" % (SIZE, BIG)
#: What the transport and the protocol may hold: the transport's buffer
#: (64 KiB), then one part (under WRITE_CHUNK before its last value).
CAP = 65536 + WRITE_CHUNK + len(HIT)
GET_MANY = b"get" + b" big" * KEYS + b"\r\n"
_CAS = re.compile(rb"^(VALUE big 5 %d) \d+\r\n" % SIZE, re.M)


def _deferred(b, clock):
    return FaultyBucket(b, clock)


def _harness(wrap=None):
    h = Harness(max_value_size=2 * SIZE, wrap=wrap)
    h.embedded.store_sync("upsert", b"big", Encoded(BIG, 5))
    return h


def _connect(h):
    p = h.factory.buildProtocol(PEER)
    t = SlowPeerTransport()
    p.makeConnection(t)
    return Conn(p, t)


class MultiGetBufferBoundTests(unittest.TestCase):
    """A multi-get of a big value holds one part of its reply while the client does not read."""

    wrap = None

    def setUp(self):
        self.h = _harness(self.wrap)
        self.c = self.connect()

    def connect(self):
        """A new connection (and, on a FaultyBucket, its bucket calls from now on)."""
        del getattr(self.h.bucket, "calls", [])[:]
        return _connect(self.h)

    def assertHeldWithinCap(self):
        c = self.c
        self.assertTrue(c.t.producer_paused)
        self.assertLessEqual(c.t.peak, CAP)
        self.assertLess(c.p._out_len, WRITE_CHUNK)
        self.assertEqual(c.t.producerState, "paused")  # no more is read meanwhile

    def test_multiget_of_one_big_value_buffers_within_cap(self):
        # 30 MB asked for in a 1.2 KB line: at most the cap is ever buffered,
        # and far less than the reply is ever allocated at once.
        gets = self.h.embedded.stats_sync()["op_get"]
        allocated = peak_allocated(self.c.p.dataReceived, GET_MANY)
        self.assertHeldWithinCap()
        self.assertLess(allocated, 10 * CAP)
        # The read cost a few values' work, not 300 (other connections wait less).
        self.assertLess(self.h.embedded.stats_sync()["op_get"] - gets, 20)
        self.assertEqual(self.c.t.read_all(), HIT * KEYS + b"END\r\n")
        self.assertLessEqual(self.c.t.peak, CAP)
        self.assertEqual(self.c.t.producerState, "producing")

    def test_gets_gat_and_gats_buffer_within_cap(self):
        cas = self.h.embedded.get_sync(b"big").cas
        hit_cas = b"VALUE big 5 %d %d\r\n%s\r\n" % (SIZE, cas, BIG)
        for line, want in [(b"gets", hit_cas * KEYS), (b"gat 0", HIT * KEYS),
                           (b"gat 100", HIT * KEYS), (b"gats 0", None)]:
            c = self.c = self.connect()
            c.p.dataReceived(line + b" big" * KEYS + b"\r\n")
            self.assertHeldWithinCap()
            out = c.t.read_all()
            if want is None:   # each touch gives the item a new CAS
                self.assertEqual(len(_CAS.findall(out)), KEYS)
                out, want = _CAS.sub(rb"\1\r\n", out), HIT * KEYS
            self.assertEqual(out, want + b"END\r\n", line)

    def test_client_reading_in_small_pieces_gets_the_same_bytes(self):
        self.c.p.dataReceived(GET_MANY)
        self.assertEqual(self.c.t.read_all(4096), HIT * KEYS + b"END\r\n")
        self.assertLessEqual(self.c.t.peak, CAP)

    def test_small_multiget_is_still_one_write(self):
        c = self.c
        c.p.dataReceived(b"set a 1 0 2\r\nhi\r\n")
        c.t.read_all()
        before = c.t.writes
        c.p.dataReceived(b"get a nope a\r\ngets nope\r\nget a\r\n")
        self.assertEqual(c.t.writes, before + 1)
        self.assertEqual(c.t.read_all(), b"VALUE a 1 2\r\nhi\r\n" * 2 + b"END\r\nEND\r\n"
                                         b"VALUE a 1 2\r\nhi\r\nEND\r\n")

    def test_pipelined_commands_wait_for_a_streamed_reply_and_follow_it(self):
        c = self.c
        c.p.dataReceived(b"get" + b" big" * 50 + b"\r\nset a 0 0 1\r\n1\r\nget a big\r\n"
                         b"version\r\nget" + b" big" * 3 + b"\r\n")
        self.assertHeldWithinCap()
        self.assertFalse(self.h.embedded.get_sync(b"a", quiet=True).success)  # not run yet
        self.assertEqual(c.t.read_all(), HIT * 50 + b"END\r\nSTORED\r\nVALUE a 0 1\r\n1\r\n"
                         + HIT + b"END\r\nVERSION %s\r\n" % VERSION.encode() + HIT * 3
                         + b"END\r\n")

    def test_quiet_commands_after_a_stream_take_effect_after_it(self):
        # The noreply set would change the values still to come if it ran
        # while the reply was held; it runs after it, as it would in memcached.
        c = self.c
        c.p.dataReceived(b"get" + b" big" * 20 + b"\r\nset big 0 0 1 noreply\r\nz\r\n"
                         b"set a 0 0 1 noreply\r\n1\r\ndelete a noreply\r\nget a big\r\n")
        self.assertHeldWithinCap()
        self.assertEqual(self.h.embedded.get_sync(b"big").raw, BIG)
        self.assertEqual(c.t.read_all(), HIT * 20 + b"END\r\nVALUE big 0 1\r\nz\r\nEND\r\n")

    def test_transport_resuming_from_inside_a_write_keeps_the_order(self):
        c = self.c
        c.p.dataReceived(b"get" + b" big" * 5 + b"\r\nversion\r\nget" + b" big" * 30
                         + b"\r\nset a 0 0 1 noreply\r\n1\r\nget a\r\n")
        self.assertHeldWithinCap()
        c.t.eager = True
        first = c.t.read()
        self.assertEqual(first + b"".join(c.t.early) + c.t.read_all(),
                         HIT * 5 + b"END\r\nVERSION %s\r\n" % VERSION.encode() + HIT * 30
                         + b"END\r\nVALUE a 0 1\r\n1\r\nEND\r\n")
        self.assertGreater(len(c.t.early), 20)
        c.t.early = []
        c.p.dataReceived(GET_MANY + b"get a\r\n")   # a stream that starts eager
        self.assertEqual(b"".join(c.t.early) + c.t.read_all(),
                         HIT * KEYS + b"END\r\nVALUE a 0 1\r\n1\r\nEND\r\n")

    def test_observer_is_told_once_the_stream_is_complete(self):
        seen = []

        class Observer:
            def request_done(self, op, status, started):
                seen.append((op, status))
        self.h.factory.observer = Observer()
        c = self.c = self.connect()
        c.p.dataReceived(b"get big nope" + b" big" * 20 + b"\r\nget big a\r\n")
        self.assertHeldWithinCap()
        self.assertEqual(seen, [])
        self.assertEqual(c.t.read_all(), HIT * 21 + b"END\r\n" + HIT + b"END\r\n")
        self.assertEqual(seen, [("get", RC.KEY_ENOENT)] * 2)

    def test_quit_after_a_stream_closes_once_it_is_written(self):
        c = self.c
        c.p.dataReceived(b"get" + b" big" * 20 + b"\r\nquit\r\nget big\r\n")
        self.assertFalse(c.t.disconnecting)
        self.assertEqual(c.t.read_all(), HIT * 20 + b"END\r\n")
        self.assertTrue(c.t.disconnecting)

    def test_connection_lost_in_the_middle_of_a_stream_frees_it(self):
        c = self.c
        c.p.dataReceived(GET_MANY + b"version\r\n")
        self.assertHeldWithinCap()
        stream = c.p._slots[0].data
        c.p.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((len(c.p._slots), len(c.p._backlog), c.p._out), (0, 0, []))
        self.assertTrue(stream.over)
        self.assertEqual(list(stream.keys), [])
        self.assertEqual(self.h.stats.connections, 0)
        c.t.clear()
        c.t.read()   # a transport that resumes its producer after the loss
        self.h.clock.advance(10)
        self.assertEqual(c.t.value(), b"")


class DeferredMultiGetBufferBoundTests(MultiGetBufferBoundTests):
    """The same through IBucket's Deferreds: a few keys are asked for ahead, not all."""

    wrap = staticmethod(_deferred)

    def assertHeldWithinCap(self):
        MultiGetBufferBoundTests.assertHeldWithinCap(self)
        gets = sum(1 for call in self.h.bucket.calls if call[0] == "get")
        self.assertLess(gets, 40)

    def test_results_that_come_later_are_streamed_in_order(self):
        h, c = self.h, self.c
        h.bucket.delay("get", 1)
        c.p.dataReceived(GET_MANY + b"set a 0 0 1\r\n1\r\nget a\r\n")
        self.assertEqual(c.t.value(), b"")
        self.assertEqual(len(h.bucket.calls), 16)   # the keys asked for ahead
        out = c.t.read_all(between=lambda: h.clock.advance(1))
        self.assertEqual(out, HIT * KEYS + b"END\r\nSTORED\r\nVALUE a 0 1\r\n1\r\nEND\r\n")
        # Every key of the get was asked for before the set ran.
        self.assertEqual([op for op, _, _ in h.bucket.calls],
                         ["get"] * KEYS + ["upsert", "get"])

    def test_connection_lost_while_results_are_awaited(self):
        h, c = self.h, self.c
        h.bucket.delay("get", 1)
        c.p.dataReceived(GET_MANY)
        c.p.connectionLost(Failure(ConnectionDone()))
        h.clock.advance(5)   # the results come, to no one
        self.assertEqual(c.t.value(), b"")
        self.assertEqual(len(h.bucket.calls), 16)


class _FailingKey:
    """``get_sync`` of an embedded bucket, failing for the key ``bad``."""

    def __init__(self, bucket):
        self.get_sync = bucket.get_sync

    def __call__(self, key, ttl=0, quiet=False):
        if key == b"bad":
            raise NetworkError("backend gone")
        return self.get_sync(key, ttl, quiet)


class StreamedErrorTests(unittest.TestCase):
    """A key's error ends a multi-get's reply; it is the whole reply if it comes first."""

    def setUp(self):
        self.h = _harness()
        self.h.embedded.store_sync("upsert", b"a", Encoded(b"1", 0))
        self.h.embedded.get_sync = _FailingKey(self.h.embedded)
        self.c = _connect(self.h)

    def test_error_in_the_first_part_is_the_whole_reply(self):
        self.c.p.dataReceived(b"get a bad a\r\nget a\r\n")
        self.assertEqual(self.c.t.read_all(), b"SERVER_ERROR backend gone\r\n"
                                              b"VALUE a 0 1\r\n1\r\nEND\r\n")

    def test_error_after_a_part_went_out_ends_the_reply(self):
        self.c.p.dataReceived(b"get big big a bad big\r\nget a\r\n")
        self.assertEqual(self.c.t.read_all(), HIT * 2 + b"VALUE a 0 1\r\n1\r\n"
                         b"SERVER_ERROR backend gone\r\nVALUE a 0 1\r\n1\r\nEND\r\n")


class RealSocketMultiGetTests(unittest.TestCase):
    """Over a real socket whose client does not read: the transport's buffer stays small."""

    timeout = 30

    @defer.inlineCallbacks
    def test_real_transport_holds_one_part_of_a_multiget(self):
        bucket = EmbeddedBucket(max_value_size=2 * SIZE, pager_interval=0)
        self.addCleanup(bucket.close)
        bucket.store_sync("upsert", b"big", Encoded(BIG, 5))
        factory = MemcachedServerFactory(bucket)
        conns = []
        build = factory.buildProtocol
        factory.buildProtocol = lambda addr: conns.append(build(addr)) or conns[-1]
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sock = socket.socket()
        self.addCleanup(sock.close)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port.getHost().port))
        sock.sendall(GET_MANY)
        sock.setblocking(False)
        yield deferLater(reactor, 1.0, lambda: None)
        t = conns[0].transport
        buffered = len(t.dataBuffer) - t.offset + t._tempDataLen
        self.assertLessEqual(buffered, CAP)
        self.assertGreater(buffered, 0)   # the client has not read its reply
        got = []
        want = len(HIT) * KEYS + 5
        size = 0
        deadline = time.time() + 20
        while size < want and time.time() < deadline:
            try:
                data = sock.recv(1 << 20)
            except BlockingIOError:
                yield deferLater(reactor, 0.001, lambda: None)
                continue
            if not data:
                break
            got.append(data)
            size += len(data)
        self.assertEqual(b"".join(got), HIT * KEYS + b"END\r\n")
        sock.close()
        yield deferLater(reactor, 0.1, lambda: None)
