"""txcb.testing: the helpers users test their own code with."""

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txcb import errors
from txcb.interfaces import IBucket
from txcb.testing import FaultyBucket, InMemoryConnection, memory_bucket

from tests.support.contract import BucketContractMixin
from twisted.trial import unittest


class MemoryBucketTests(SynchronousTestCase):
    def test_memory_bucket_runs_on_the_given_clock(self):
        clock = Clock()
        b = memory_bucket(clock)
        self.successResultOf(b.upsert("k", "v", ttl=10))
        clock.advance(11)
        self.failureResultOf(b.get("k"), errors.NotFoundError)
        self.assertEqual(clock.getDelayedCalls(), [])


class InMemoryConnectionTests(SynchronousTestCase):
    def test_requests_travel_on_flush(self):
        conn = InMemoryConnection()
        d = conn.client.upsert("k", {"a": 1})
        self.assertNoResult(d)
        conn.flush()
        self.assertTrue(self.successResultOf(d).success)
        self.assertEqual(conn.bucket.get_sync("k").value, {"a": 1})

    def test_timeout_on_the_clock(self):
        bucket = FaultyBucket(memory_bucket())
        bucket.hang("get")
        conn = InMemoryConnection(bucket, timeout=1.0)
        d = conn.client.get("k")
        conn.flush()
        conn.clock.advance(1.0)
        self.failureResultOf(d, errors.TimeoutError)

    def test_disconnect_fails_requests_in_flight(self):
        conn = InMemoryConnection()
        d = conn.client.get("k")
        conn.disconnect()
        self.failureResultOf(d, errors.NetworkError)
        self.failureResultOf(conn.client.get("k"), errors.NetworkError)


class FaultyBucketTests(SynchronousTestCase):
    def setUp(self):
        self.clock = Clock()
        self.inner = memory_bucket(self.clock)
        self.b = FaultyBucket(self.inner, self.clock)

    def test_provides_ibucket(self):
        self.assertTrue(verifyObject(IBucket, self.b))

    def test_fail_times(self):
        self.b.fail("upsert", errors.TemporaryFailError("busy"), times=1)
        self.failureResultOf(self.b.upsert("k", "v"), errors.TemporaryFailError)
        self.successResultOf(self.b.upsert("k", "v"))
        self.assertEqual([c[0] for c in self.b.calls], ["upsert", "upsert"])

    def test_fail_applies_per_key_in_multi(self):
        self.b.fail("get", errors.NetworkError("down"))
        f = self.failureResultOf(self.b.get_multi(["a", "b"]), errors.NetworkError)
        self.assertEqual(set(f.value.all_results), {"a", "b"})

    def test_delay_fires_after_clock_moves(self):
        self.b.delay("get", 5)
        self.inner.upsert("k", "v")
        d = self.b.get("k")
        self.assertNoResult(d)
        self.clock.advance(5)
        self.assertEqual(self.successResultOf(d).value, "v")

    def test_delay_can_be_cancelled(self):
        self.b.delay("get", 5)
        d = self.b.get("k")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def test_heal(self):
        self.b.hang("stats")
        self.assertNoResult(self.b.stats())
        self.b.heal()
        self.assertIn("items", self.successResultOf(self.b.stats()))

    def test_unknown_operation_is_refused(self):
        self.assertRaises(ValueError, self.b.fail, "gett", Exception())


class InMemoryContractTests(BucketContractMixin, unittest.TestCase):
    """The contract holds through the in-memory pump as well."""

    def make_bucket(self):
        import time
        self.clock = Clock()
        self.clock.advance(time.time())
        self.conn = InMemoryConnection(memory_bucket(self.clock, max_value_size=4096),
                                       clock=self.clock)
        return _Pumped(self.conn)

    def advance(self, seconds):
        self.clock.advance(seconds)


class _Pumped:
    """Calls the client and pumps at once, so contract tests can yield."""

    def __init__(self, conn, target=None):
        self._conn = conn
        self._target = target if target is not None else conn.client

    def __getattr__(self, name):
        attr = getattr(self._target, name)
        if not callable(attr):
            return attr

        def call(*a, **kw):
            d = attr(*a, **kw)
            self._conn.flush()
            # A scan's cursor sends requests of its own: pump those too.
            if isinstance(d, Deferred):
                d.addCallback(lambda r: _Pumped(self._conn, r)
                              if hasattr(r, "next_batch") else r)
            return d
        return call
