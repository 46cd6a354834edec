"""
txcb's own servers on free loopback ports, for the current test only: each
starter registers a cleanup that stops listening, closes the connections it
accepted and waits for them, so no test leaves a socket behind.
"""

import time

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory

from txcb.buckets.embedded import EmbeddedBucket
from txcb.server.memcached import MemcachedServerFactory
from txcb.server.netstring import BucketServerFactory, BucketServerProtocol
from txcb.wire import mcbinary

__all__ = ["TrackedServerFactory", "start_server", "RecordingFactory",
           "start_memcached_server"]


def _clock_at_now():
    clock = Clock()
    clock.advance(time.time())  # absolute TTLs are Unix times
    return clock


# -- netstring -----------------------------------------------------------------------

class _TrackedProtocol(BucketServerProtocol):
    def connectionMade(self):
        BucketServerProtocol.connectionMade(self)
        self.factory.live[self] = defer.Deferred()

    def connectionLost(self, reason=None):
        BucketServerProtocol.connectionLost(self, reason)
        self.factory.live.pop(self).callback(None)


class TrackedServerFactory(BucketServerFactory):
    """
    A netstring server factory whose connections can be waited on at cleanup.

    :ivar live: ``{protocol: Deferred}`` of the open connections; each
        Deferred fires when its connection is lost.
    """
    protocol = _TrackedProtocol

    def __init__(self, *a, **kw):
        BucketServerFactory.__init__(self, *a, **kw)
        self.live = {}

    def all_closed(self):
        return defer.gatherResults(list(self.live.values()))


@defer.inlineCallbacks
def start_server(testcase, max_value_size=4096, clock=None, bucket=None):
    """
    Serve ``bucket`` (by default a new embedded one on ``clock``) on a free
    loopback port until the test ends; returns (factory, port number, bucket).
    """
    if bucket is None:
        if clock is None:
            clock = _clock_at_now()
        bucket = EmbeddedBucket(clock=clock, max_value_size=max_value_size)
    factory = TrackedServerFactory(bucket)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    @defer.inlineCallbacks
    def cleanup():
        yield port.stopListening()
        yield factory.all_closed()
        yield bucket.close()
    testcase.addCleanup(cleanup)
    return factory, port.getHost().port, bucket
    yield


# -- memcached -----------------------------------------------------------------------

class _RecordingProtocol(ProtocolWrapper):
    def connectionMade(self):
        ProtocolWrapper.connectionMade(self)
        self.decoder = mcbinary.Decoder("request")
        self.factory.live[self] = defer.Deferred()

    def connectionLost(self, reason=None):
        ProtocolWrapper.connectionLost(self, reason)
        self.factory.live.pop(self).callback(None)

    def dataReceived(self, data):
        if self.factory.record:
            self.factory.seen.extend(p.opcode for p in self.decoder.feed(data))
        if not self.factory.mute:
            ProtocolWrapper.dataReceived(self, data)


class RecordingFactory(WrappingFactory):
    """
    Wraps txcb's memcached server factory (the one under ``wrappedFactory``):
    records the opcodes of the binary requests it receives (``seen``, when
    ``record``), and drops every request unanswered while ``mute`` is set, as
    a server that hangs would.

    :ivar live: ``{connection: Deferred}`` of the open connections; each
        Deferred fires when its connection is lost.
    """

    protocol = _RecordingProtocol

    def __init__(self, wrapped, mute=False, record=True):
        WrappingFactory.__init__(self, wrapped)
        self.mute = mute
        self.record = record
        self.seen = []
        self.live = {}

    @property
    def connections(self):
        """The open connections, oldest first (their ``transport`` is the TCP one)."""
        return list(self.live)

    def all_closed(self):
        return defer.gatherResults(list(self.live.values()))


@defer.inlineCallbacks
def start_memcached_server(testcase, bucket=None, clock=None, credentials=None,
                           mute=False, record=True, max_value_size=4096):
    """
    Serve ``bucket`` (by default a new embedded one on ``clock``) with txcb's
    memcached endpoint (ASCII and binary) on a free loopback port until the
    test ends; returns (:class:`RecordingFactory`, ``"127.0.0.1:port"``, bucket).
    """
    if bucket is None:
        if clock is None:
            clock = _clock_at_now()
        bucket = EmbeddedBucket(clock=clock, max_value_size=max_value_size,
                                pager_interval=0)
    factory = RecordingFactory(MemcachedServerFactory(bucket, credentials=credentials),
                               mute=mute, record=record)
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")

    @defer.inlineCallbacks
    def cleanup():
        yield port.stopListening()
        for c in factory.connections:
            c.transport.abortConnection()
        yield factory.all_closed()
        yield bucket.close()
    testcase.addCleanup(cleanup)
    return factory, "127.0.0.1:%d" % port.getHost().port, bucket
    yield
