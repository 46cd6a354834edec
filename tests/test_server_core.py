"""txcb.server.core: what every endpoint shares (connection admission and its log)."""

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.logger import LogLevel, formatEvent
from twisted.trial import unittest

from txcb.buckets.embedded import EmbeddedBucket
from txcb.server.core import ServerStats
from txcb.server.memcached import MemcachedServerFactory
from txcb.server.netstring import BucketServerFactory

from tests.support.netstring import LogCapture

PEER = IPv4Address("TCP", "127.0.0.1", 40000)


class RefusalLogTests(unittest.TestCase):
    """
    Issue 12, item 5: 2,000 refusals over --max-connections wrote 2,000 log
    lines (321 KB).  Now: one line at once, then at most one per interval,
    saying how many were refused without a line.
    """

    def setUp(self):
        self.clock = Clock()
        self.log = LogCapture(self)
        self.bucket = EmbeddedBucket(clock=self.clock, pager_interval=0)
        self.stats = ServerStats(max_connections=0, clock=self.clock)

    def refusal_lines(self):
        return [formatEvent(e) for e in self.log.events
                if e.get("log_level") == LogLevel.warn and "refusing" in e.get("log_format", "")]

    def check(self, factory, refused):
        for _ in range(2000):
            self.assertEqual(factory.buildProtocol(PEER).__class__.__name__, refused)
        self.assertEqual(self.stats.rejected_connections, 2000)
        lines = self.refusal_lines()
        self.assertEqual(len(lines), 1, lines[:3])
        self.assertIn("refusing IPv4Address(type='TCP', host='127.0.0.1', port=40000): "
                      "0 connections open already", lines[0])
        self.clock.advance(9.9)
        factory.buildProtocol(PEER)
        self.assertEqual(len(self.refusal_lines()), 1)
        self.clock.advance(0.1)
        factory.buildProtocol(PEER)
        lines = self.refusal_lines()
        self.assertEqual(len(lines), 2)
        self.assertIn("2000 more refused since the last such line", lines[1])
        self.assertEqual(self.stats.rejected_connections, 2002)

    def test_refused_netstring_connections_log_one_line_per_interval(self):
        self.check(BucketServerFactory(self.bucket, stats=self.stats), "NoneType")

    def test_refused_memcached_connections_log_one_line_per_interval(self):
        factory = MemcachedServerFactory(self.bucket, stats=self.stats, clock=self.clock)
        self.check(factory, "_TooManyConnections")

    def test_endpoints_share_one_interval(self):
        BucketServerFactory(self.bucket, stats=self.stats).buildProtocol(PEER)
        MemcachedServerFactory(self.bucket, stats=self.stats, clock=self.clock
                               ).buildProtocol(PEER)
        self.assertEqual(len(self.refusal_lines()), 1)
        self.assertEqual(self.stats.rejected_connections, 2)

    def test_admitted_connections_log_no_refusal(self):
        stats = ServerStats(max_connections=1, clock=self.clock)
        proto = BucketServerFactory(self.bucket, stats=stats).buildProtocol(PEER)
        self.assertIsNotNone(proto)
        self.assertEqual((self.refusal_lines(), stats.rejected_connections), ([], 0))
