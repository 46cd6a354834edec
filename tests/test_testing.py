"""txcb.testing: the helpers users test their own code with."""

import os
import re

from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial.reporter import TestResult
from twisted.trial.unittest import SynchronousTestCase
from zope.interface.verify import verifyObject

from txcb import errors
from txcb.interfaces import IBucket, ISyncBucket
from txcb.server.memcached import MemcachedServerFactory
from txcb.server.netstring import BucketServerFactory
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

    def test_a_server_factory_of_your_own(self):
        factory = BucketServerFactory(memory_bucket(), max_inflight=1)
        conn = InMemoryConnection(server_factory=factory)
        self.assertIs(conn.server_factory, factory)
        self.assertIs(conn.bucket, factory.bucket)
        d = conn.client.upsert("k", "v")
        conn.flush()
        self.assertTrue(self.successResultOf(d).success)
        self.assertEqual(factory.bucket.get_sync("k").value, "v")

    def test_a_bucket_or_a_server_factory_not_both(self):
        factory = BucketServerFactory(memory_bucket())
        self.assertRaises(TypeError, InMemoryConnection, memory_bucket(),
                          server_factory=factory)

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

    def test_provides_no_synchronous_face(self):
        """Whatever it wraps: servers must call its Deferred methods."""
        self.assertTrue(ISyncBucket.providedBy(self.inner))
        self.assertFalse(ISyncBucket.providedBy(self.b))

    def test_netstring_server_meets_the_faults(self):
        self.inner.upsert("k", "v")
        self.b.fail("get", errors.TemporaryFailError("busy"))
        conn = InMemoryConnection(self.b, clock=self.clock)
        d = conn.client.get("k")
        conn.flush()
        self.failureResultOf(d, errors.TemporaryFailError)
        self.assertEqual([c[0] for c in self.b.calls], ["get"])

    def test_memcached_server_meets_the_faults(self):
        self.inner.upsert("k", "v")
        self.b.hang("get")
        proto = MemcachedServerFactory(self.b, clock=self.clock).buildProtocol(
            IPv4Address("TCP", "127.0.0.1", 1))
        transport = StringTransport()
        proto.makeConnection(transport)
        proto.dataReceived(b"get k\r\n")
        self.assertEqual(transport.value(), b"")
        self.assertEqual([c[0] for c in self.b.calls], ["get"])


class ReadmeExampleTests(SynchronousTestCase):
    """README.rst's "Testing your code" example runs, and passes."""

    def example(self):
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        with open(os.path.join(root, "README.rst"), encoding="utf-8") as f:
            text = f.read()
        section = text[text.index("Testing your code\n=="):]
        block = re.search(r"\.\. code-block:: python\n\n((?:    .*\n|\n)+)", section)
        return "\n".join(line[4:] for line in block.group(1).splitlines())

    def test_readme_example_passes(self):
        namespace = {"__name__": "readme_example"}
        exec(compile(self.example(), "README.rst", "exec"), namespace)
        cases = [v for v in namespace.values() if isinstance(v, type)
                 and issubclass(v, SynchronousTestCase) and v is not SynchronousTestCase]
        self.assertEqual([c.__name__ for c in cases], ["RememberTests"])
        result = TestResult()
        for name in ("test_counts_logins", "test_bucket_down", "test_timeout"):
            cases[0](name).run(result)
        self.assertEqual((result.testsRun, result.errors, result.failures), (3, [], []))


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
        # zope.interface's declarations (__provides__...) pass through as they are.
        if not callable(attr) or name.startswith("__"):
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
