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

from tests.support.contract import BucketContractMixin
from tests.support.servers import start_server


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
