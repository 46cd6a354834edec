"""
The in-memory harness of txcb's memcached server protocol: a bucket on a
task.Clock, a MemcachedServerFactory, and StringTransport connections.
"""

import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txcb.buckets.embedded import EmbeddedBucket
from txcb.server.memcached import MemcachedServerFactory
from txcb.server.core import ServerStats
from txcb.wire import mcbinary as B

__all__ = ["PEER", "Harness", "Conn", "responses"]

#: The client's address as the server under test sees it.
PEER = IPv4Address("TCP", "127.0.0.1", 54321)


class Harness:
    """A bucket on a Clock, a factory, and StringTransport connections."""

    def __init__(self, bucket=None, credentials=None, max_inflight=1024,
                 max_connections=None, max_value_size=4096, wrap=None):
        self.clock = Clock()
        self.clock.advance(time.time())  # absolute exptimes are Unix times
        self.embedded = EmbeddedBucket(clock=self.clock, max_value_size=max_value_size,
                                       pager_interval=0)
        self.bucket = bucket if bucket is not None else self.embedded
        if wrap is not None:
            self.bucket = wrap(self.embedded, self.clock)
        self.stats = ServerStats(max_connections=max_connections)
        self.factory = MemcachedServerFactory(self.bucket, stats=self.stats,
                                              credentials=credentials,
                                              max_inflight=max_inflight, clock=self.clock)

    def connect(self):
        p = self.factory.buildProtocol(PEER)
        t = StringTransport()
        p.makeConnection(t)
        return Conn(p, t)


class Conn:
    def __init__(self, p, t):
        self.p = p
        self.t = t

    def send(self, data):
        """Feed data; return (and clear) what the server wrote."""
        self.p.dataReceived(data)
        return self.take()

    def send_bytewise(self, data):
        for i in range(len(data)):
            self.p.dataReceived(data[i:i + 1])
        return self.take()

    def take(self):
        out = self.t.value()
        self.t.clear()
        return out

    def request(self, *a, **kw):
        """Send one binary request; return the decoded responses."""
        return responses(self.send(B.encode_request(*a, **kw)))

    @property
    def closed(self):
        return self.t.disconnecting


def responses(data):
    return B.Decoder("response").feed(data)
