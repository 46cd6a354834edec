"""
Issue 12, items 2 and 4: what a closed connection leaves behind.

Item 2: ENDURE waiters outlived their connection (4,000 closed connections'
ENDUREs kept the server at 100% CPU).  Now a lost connection cancels what it
waits for (the bucket's Deferreds, durable replies), and the bucket drops
those waiters at once: its count is 0 and its clock holds no timer.

Item 4: a closed connection's memory was only returned by the garbage
collector (RSS stayed at 963 MB after four connections of finding 1 closed).
Now nothing refers to a lost connection's protocol: with the collector off,
its weak reference is dead and what it buffered (a half-read frame, replies
the client never read) is freed.

Real loopback connections (the reactor's TCP transports), gc disabled.
"""

import socket
import struct
import threading

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.persistent import PersistentBucket
from txcb.server.memcached import MemcachedServerFactory
from txcb.server.netstring import BucketServerFactory
from txcb.wire import mcbinary
from txcb.wire.netstring import (
    ENDURE_BODY, OPT_CHECK_REMOVED, Op, encode_request, netstring)

from tests.support.lifetime import (
    HangingBucket, Traced, connect, gc_off, listen, live, receive, send, track_protocols,
    turns, wait_until)

N = 40  # connections


def endure(opaque, key, timeout_ms=600000, **kw):
    return netstring(encode_request(Op.ENDURE, opaque, key=key,
                                    value=ENDURE_BODY.pack(timeout_ms, 1), **kw))


def upsert(opaque, key, value, **kw):
    return netstring(encode_request(Op.UPSERT, opaque, key=key, value=value, **kw))


def get(opaque, key):
    return netstring(encode_request(Op.GET, opaque, key=key))


def clock_at_now():
    clock = Clock()
    clock.advance(1_700_000_000)
    return clock


@defer.inlineCallbacks
def close_all(socks, factory):
    """Close the client sockets; wait until the server has lost every connection."""
    for s in socks:
        s.close()
    yield wait_until(lambda: factory.stats.connections == 0, what="every connection lost")
    yield turns()  # out of the transports' connectionLost frames


class NetstringWaitersDieTests(unittest.TestCase):
    """Item 2, the server half: a lost netstring connection's waits are cancelled."""

    timeout = 60

    @defer.inlineCallbacks
    def test_endure_waiters_die_with_their_connection(self):
        gc_off(self)
        clock = clock_at_now()
        bucket = EmbeddedBucket(clock=clock, pager_interval=0)
        for i in range(N):
            bucket.store_sync("upsert", b"k%d" % (i,), b"v", 0, 0)
        factory = BucketServerFactory(bucket)
        refs = track_protocols(factory)
        port = listen(self, factory)
        socks = [connect(self, port, b"".join(
            endure(j, b"k%d" % (i,), options=OPT_CHECK_REMOVED) for j in range(5)))
            for i in range(N)]
        yield wait_until(lambda: len(bucket._waiters) == 5 * N, what="every ENDURE waiting")
        self.assertTrue(clock.getDelayedCalls())  # the waiters' timeout
        yield close_all(socks, factory)
        self.assertEqual(len(bucket._waiters), 0)
        self.assertEqual(clock.getDelayedCalls(), [])
        self.assertFalse(bucket._waiters.waits_for(b"k0"))
        self.assertEqual(live(refs), [])

    @defer.inlineCallbacks
    def test_persist_to_waits_die_with_their_connection(self):
        """
        On a persistent bucket whose writer is held up: persist_to=1 upserts
        (answered by durable replies) and ENDUREs persist_to=1 of N closed
        connections leave no waiter and nothing that refers to them.
        """
        gc_off(self)
        bucket = PersistentBucket(self.mktemp(), reactor=reactor, flush_delay=0)
        self.addCleanup(bucket.close)
        writing = threading.Event()
        release = threading.Event()
        self.addCleanup(release.set)

        def hold():
            writing.set()
            release.wait(30)
        bucket._pool.callInThread(hold)  # the one writer thread, busy until released
        writing.wait(5)
        factory = BucketServerFactory(bucket)
        refs = track_protocols(factory)
        port = listen(self, factory)
        big = b"x" * 65536
        socks = [connect(self, port, upsert(1, b"k%d" % (i,), big, persist_to=1)
                         + endure(2, b"k%d" % (i,), persist_to=1)) for i in range(N)]
        yield wait_until(lambda: len(bucket._waiters) == N and len(bucket._persist_waiters)
                         == N, what="every write and ENDURE waiting for the disk")
        yield close_all(socks, factory)
        self.assertEqual(len(bucket._waiters), 0)
        # A persist_to wait is an entry of the commit queue until its commit
        # comes: cancelled, it is skipped then, and holds nothing of its connection.
        self.assertTrue(all(target.called for _s, target, _r in bucket._persist_waiters))
        self.assertEqual([t for _s, t, _r in bucket._persist_waiters
                          if getattr(t, "proto", None) is not None], [])
        self.assertEqual(live(refs), [])
        release.set()
        yield wait_until(lambda: not bucket._persist_waiters, what="the commit")

    @defer.inlineCallbacks
    def test_pending_bucket_calls_die_with_their_connection(self):
        gc_off(self)
        bucket = HangingBucket()
        factory = BucketServerFactory(bucket)
        refs = track_protocols(factory)
        port = listen(self, factory)
        socks = [connect(self, port, get(1, b"a") + get(2, b"b")) for _ in range(N)]
        yield wait_until(lambda: len(bucket.calls) == 2 * N, what="every get pending")
        yield close_all(socks, factory)
        self.assertEqual(bucket.pending(), [])
        self.assertEqual(bucket.cancelled, 2 * N)
        self.assertEqual(live(refs), [])


class NetstringMemoryFreedTests(unittest.TestCase):
    """Item 4: a lost netstring connection is freed by reference counting alone."""

    timeout = 60

    def serve(self, max_value_size=4096):
        bucket = EmbeddedBucket(clock=clock_at_now(), pager_interval=0,
                                max_value_size=max_value_size)
        factory = BucketServerFactory(bucket)
        return bucket, factory, track_protocols(factory), listen(self, factory)

    @defer.inlineCallbacks
    def test_closed_connection_memory_freed_without_gc(self):
        gc_off(self)
        _bucket, factory, refs, port = self.serve()
        socks = []
        for i in range(N):
            s = connect(self, port, netstring(encode_request(Op.HELLO, 1)))
            yield receive(s)  # its reply: the connection is made and served
            socks.append(s)
        self.assertEqual(len(live(refs)), N)
        yield close_all(socks, factory)
        self.assertEqual(live(refs), [])

    @defer.inlineCallbacks
    def test_half_read_frame_freed_without_gc(self):
        gc_off(self)
        traced = Traced(self)
        _bucket, factory, refs, port = self.serve(max_value_size=16 << 20)
        s = connect(self, port)
        yield send(s, netstring(encode_request(Op.UPSERT, 1, key=b"big",
                                               value=b"v" * (8 << 20)))[:6 << 20])
        yield wait_until(lambda: traced.now() > 5 << 20, what="the frame half read")
        yield close_all([s], factory)
        self.assertEqual(live(refs), [])
        self.assertLess(traced.now(), 1 << 19)

    @defer.inlineCallbacks
    def test_unread_replies_freed_without_gc(self):
        """A client that asks for a 1 MB value 64 times and never reads its replies."""
        gc_off(self)
        bucket, factory, refs, port = self.serve(max_value_size=2 << 20)
        bucket.store_sync("upsert", b"big", b"v" * (1 << 20), 0, 0)
        traced = Traced(self)
        s = connect(self, port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        yield wait_until(lambda: live(refs), what="the connection made")
        # Small kernel buffers: what the client does not read stays in the server.
        live(refs)[0].transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        yield send(s, b"".join(get(i, b"big") for i in range(64)))
        yield wait_until(lambda: live(refs)[0]._out_paused, what="the server's output backed up")
        buffered = traced.now()  # the replies the transport holds
        self.assertGreater(buffered, 3 << 18)  # most of a reply
        yield close_all([s], factory)
        self.assertEqual(live(refs), [])
        self.assertLess(traced.now(), buffered // 3)  # the replies went with it

    def test_late_replies_flush_is_cancelled_with_the_connection(self):
        """A reply queued for the end of the reactor turn holds no lost connection."""
        gc_off(self)
        bucket = HangingBucket()
        factory = BucketServerFactory(bucket)
        refs = track_protocols(factory)
        p = factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 40000))
        transport = StringTransport()
        transport.reactor = clock = Clock()
        p.makeConnection(transport)
        p.dataReceived(get(1, b"a"))
        bucket.answer_all()  # the reply waits for the end of the turn
        self.assertEqual(len(clock.getDelayedCalls()), 1)
        p.connectionLost(None)
        transport.producer = None  # a TCP transport lets go of its producer itself
        self.assertEqual(clock.getDelayedCalls(), [])
        del p
        self.assertEqual(live(refs), [])


def ascii_lines(*lines):
    return b"".join(line + b"\r\n" for line in lines)


def binary_get(key, opaque=0):
    return mcbinary.encode_request(mcbinary.Opcode.GET, key=key, opaque=opaque)


class MemcachedMemoryFreedTests(unittest.TestCase):
    """Item 4 on the memcached endpoint: ASCII and binary sessions."""

    timeout = 60

    def serve(self, bucket=None):
        if bucket is None:
            bucket = EmbeddedBucket(clock=clock_at_now(), pager_interval=0,
                                    max_value_size=16 << 20)
        factory = MemcachedServerFactory(bucket, clock=Clock())
        return factory, track_protocols(factory), listen(self, factory)

    @defer.inlineCallbacks
    def test_closed_memcached_connections_freed_without_gc(self):
        gc_off(self)
        factory, refs, port = self.serve()
        socks = []
        for i in range(N // 2):
            s = connect(self, port, ascii_lines(b"set k%d 0 0 1" % (i,), b"v"))
            self.assertEqual((yield receive(s)), b"STORED\r\n")
            socks.append(s)
            s = connect(self, port, binary_get(b"k%d" % (i,)))
            self.assertEqual((yield receive(s))[0], mcbinary.RES_MAGIC)
            socks.append(s)
        self.assertEqual(len(live(refs)), N)
        yield close_all(socks, factory)
        self.assertEqual(live(refs), [])

    @defer.inlineCallbacks
    def test_memcached_half_read_value_freed_without_gc(self):
        gc_off(self)
        traced = Traced(self)
        factory, refs, port = self.serve()
        ascii = connect(self, port)
        yield send(ascii, b"set big 0 0 %d\r\n" % (8 << 20,) + b"v" * (3 << 20))
        binary = connect(self, port)
        yield send(binary, mcbinary.encode_request(
            mcbinary.Opcode.SET, key=b"big", value=b"v" * (8 << 20),
            extras=struct.pack("!II", 0, 0))[:3 << 20])
        yield wait_until(lambda: traced.now() > 5 << 20, what="both values half read")
        yield close_all([ascii, binary], factory)
        self.assertEqual(live(refs), [])
        self.assertLess(traced.now(), 1 << 19)

    @defer.inlineCallbacks
    def test_memcached_pending_calls_die_with_their_connection(self):
        gc_off(self)
        bucket = HangingBucket()
        factory, refs, port = self.serve(bucket)
        socks = []
        for i in range(N // 2):
            socks.append(connect(self, port, ascii_lines(b"get a", b"get a b c")))
            socks.append(connect(self, port, binary_get(b"a") + binary_get(b"b", 1)))
        yield wait_until(lambda: len(bucket.calls) == (N // 2) * 6, what="every get pending")
        yield close_all(socks, factory)
        self.assertEqual(bucket.pending(), [])
        self.assertEqual(live(refs), [])

    @defer.inlineCallbacks
    def test_memcached_unread_replies_freed_without_gc(self):
        """An ASCII client that asks for a 1 MB value 64 times and never reads."""
        gc_off(self)
        bucket = EmbeddedBucket(clock=clock_at_now(), pager_interval=0, max_value_size=2 << 20)
        bucket.store_sync("upsert", b"big", b"v" * (1 << 20), 0, 0)
        factory, refs, port = self.serve(bucket)
        traced = Traced(self)
        s = connect(self, port)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        yield wait_until(lambda: live(refs), what="the connection made")
        live(refs)[0].transport.socket.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        yield send(s, b"get big\r\n" * 64)
        yield wait_until(lambda: live(refs)[0]._out_full, what="the server's output backed up")
        buffered = traced.now()
        self.assertGreater(buffered, 3 << 18)
        yield close_all([s], factory)
        self.assertEqual(live(refs), [])
        self.assertLess(traced.now(), buffered // 3)
