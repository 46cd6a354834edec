"""
The contract suite against a remote bucket: a real txcb server and client
over loopback TCP.  The server's bucket runs on a task.Clock so TTL and lock
tests move time without sleeping; the network runs on the real reactor.
"""

import time

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.trial import unittest

from txcb.client.remote import RemoteBucket, connect
from txcb.buckets.embedded import EmbeddedBucket
from txcb.server.netstring import BucketServerFactory, BucketServerProtocol

from tests.contract import BucketContractMixin


class _TrackedProtocol(BucketServerProtocol):
    def connectionMade(self):
        BucketServerProtocol.connectionMade(self)
        self.factory.lost[self] = defer.Deferred()

    def connectionLost(self, reason=None):
        BucketServerProtocol.connectionLost(self, reason)
        self.factory.lost.pop(self).callback(None)


class TrackedServerFactory(BucketServerFactory):
    """A server factory whose connections can be waited on at cleanup."""
    protocol = _TrackedProtocol

    def __init__(self, *a, **kw):
        BucketServerFactory.__init__(self, *a, **kw)
        self.lost = {}

    def all_closed(self):
        return defer.gatherResults(list(self.lost.values()))


@defer.inlineCallbacks
def start_server(testcase, max_value_size=4096, clock=None, bucket=None):
    """
    Serve ``bucket`` (by default a new embedded one on ``clock``) on a free
    loopback port until the test ends; returns (factory, port number, bucket).
    """
    if bucket is None:
        if clock is None:
            clock = Clock()
            clock.advance(time.time())
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


class RemoteContractTests(BucketContractMixin, unittest.TestCase):
    timeout = 30

    @defer.inlineCallbacks
    def make_bucket(self):
        self.clock = Clock()
        self.clock.advance(time.time())
        factory, port, _ = yield start_server(self, clock=self.clock)
        b = yield connect(reactor, "tcp:127.0.0.1:%d" % port)
        self.assertIsInstance(b, RemoteBucket)
        self.addCleanup(b.close)
        return b

    def advance(self, seconds):
        self.clock.advance(seconds)
