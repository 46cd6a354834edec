"""
Streaming scans beyond the contract: the SCAN wire format, the server's
statelessness and limits, the ScanResult cursor (flow control, each(),
async iteration, cancellation), the embedded bucket's shared key index, and
the blocking client's iterator.  (Scan semantics are in tests/support/contract.py.)
"""

import time

from twisted.internet import defer, reactor
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.task import Clock
from twisted.trial import unittest

from txcb import errors
from txcb.client.blocking import Bucket
from txcb.client.remote import connect
from txcb.wire.netstring import (
    OPT_IDS_ONLY, SCAN_BODY, FrameError, Op, decode_request, decode_response,
    decode_scan_reply, decode_scan_request, encode_request, encode_scan_reply,
    encode_scan_request, scan_args)
from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import RC
from txcb.results import ScanItem
from txcb.scan import KeyIndex, ScanResult
from txcb.testing import FaultyBucket, InMemoryConnection, memory_bucket

from tests.support.servers import start_server
from tests.support.sync_contract import ThreadedServer


class ScanCodecTests(unittest.SynchronousTestCase):
    def test_request_round_trip(self):
        body = encode_scan_request(10, 4096, b"p", b"pa", b"q")
        self.assertEqual(len(body), SCAN_BODY.size + 4)
        self.assertEqual(decode_scan_request(body), (10, 4096, b"p", b"pa", b"q"))
        payload = encode_request(Op.SCAN, 7, b"", body, options=OPT_IDS_ONLY)
        req = decode_request(payload)
        self.assertEqual((req.opcode, req.value, req.options), (Op.SCAN, body, OPT_IDS_ONLY))

    def test_bad_requests_are_einval(self):
        good = encode_scan_request(10, 4096, b"p", b"", b"")
        for bad in [good[:5], good + b"x", good[:-1], encode_scan_request(0, 1, b"", b"", b""),
                    encode_scan_request(1, 0, b"", b"", b""),
                    encode_scan_request(1, 1, b"x" * 252, b"", b"")]:
            with self.assertRaises(FrameError) as cm:
                decode_scan_request(bad)
            self.assertEqual(cm.exception.status, RC.EINVAL)
        # SCAN takes no key.
        with self.assertRaises(FrameError) as cm:
            decode_request(encode_request(Op.SCAN, 1, b"k", good))
        self.assertEqual(cm.exception.status, RC.EINVAL)

    def test_reply_round_trip(self):
        rows = [(b"a", 1, 2, 3, b"v"), (b"\xff" * 250, 0xFFFFFFFF, 2 ** 64 - 1, 0, b""),
                (b"c", 0, 0, 0, b"x" * 70000)]
        body = encode_scan_reply(b"c\x00", rows)
        self.assertEqual(decode_scan_reply(body), (b"c\x00", rows))
        self.assertEqual(decode_scan_reply(encode_scan_reply(b"", [])), (b"", []))
        for bad in [b"", b"\x00", b"\x00\x05ab", body[:-1], body[:30]]:
            self.assertRaises(FrameError, decode_scan_reply, bad)

    def test_scan_args(self):
        self.assertEqual(scan_args("é", None, b"z", 1, 5, 100),
                         ("é".encode(), b"", b"z", True, 5, 100))
        for bad in [("", "", "", 0, 0, 1), (None, None, None, 0, 1, 2 ** 24 + 1),
                    (1, None, None, 0, 1, 1), (None, None, None, 0, True, 1)]:
            self.assertRaises(errors.ArgumentError, scan_args, *bad)


class ScanServerTests(unittest.SynchronousTestCase):
    """SCAN through the real server and client, pumped in memory."""

    def setUp(self):
        self.clock = Clock()
        self.bucket = memory_bucket(self.clock, max_value_size=4096)
        self.faulty = FaultyBucket(self.bucket, self.clock)
        self.conn = InMemoryConnection(self.faulty, clock=self.clock)
        self.client = self.conn.client
        for i in range(35):
            self.bucket.store_sync("upsert", "k%02d" % i, b"x" * 1000)

    def scans(self):
        """How many batches the server was asked for."""
        return len([c for c in self.faulty.calls if c[0] == "scan"])

    def open(self, **kwargs):
        d = self.client.scan(**kwargs)
        self.conn.flush()
        return self.successResultOf(d)

    def test_the_client_asks_for_a_batch_only_when_the_consumer_is_ready(self):
        scan = self.open(batch_size=10, ids_only=True)
        self.assertEqual(self.scans(), 1)
        waiting = []

        def consume(row):
            d = Deferred()
            waiting.append((row.key, d))
            return d
        done = scan.each(consume)
        for _ in range(10):
            self.conn.flush()
            self.assertEqual(self.scans(), 1)  # still in the first batch
            waiting[-1][1].callback(None)
        self.conn.flush()
        self.assertEqual(self.scans(), 2)
        while not done.called:
            waiting[-1][1].callback(None)
            self.conn.flush()
        self.assertEqual(self.successResultOf(done), 35)
        self.assertEqual([k for k, _ in waiting], ["k%02d" % i for i in range(35)])
        self.assertEqual(self.scans(), 4)

    def test_batches_are_capped_at_the_servers_max_value_size(self):
        # Each row is 22 + 3 + 1000 bytes: 3 fit in the 4096-byte cap.
        scan = self.open(batch_bytes=2 ** 24)
        sizes = []
        while True:
            d = scan.next_batch()
            self.conn.flush()
            rows = self.successResultOf(d)
            if not rows:
                break
            sizes.append(len(rows))
        self.assertEqual(sizes, [3] * 11 + [2])

    def test_the_server_keeps_nothing_between_batches(self):
        scan = self.open(batch_size=5, ids_only=True)
        server = self.conn.server_factory
        self.assertEqual(self.scans(), 1)
        self.assertFalse([name for name in vars(self.conn.pump.server)
                          if "scan" in name.lower()])
        self.assertEqual(server.stats.connections, 1)
        # The next batch resumes from the continuation the client holds.
        self.assertEqual(scan.continuation, b"k04\x00")

    def test_a_bad_scan_request_is_einval_and_the_connection_stays(self):
        proto = self.conn.client_protocol
        d = proto.request(Op.SCAN, None, b"", b"\x00" * 3)
        self.conn.flush()
        self.failureResultOf(d, errors.ArgumentError)
        d = self.client.get("k00")
        self.conn.flush()
        self.assertEqual(len(self.successResultOf(d).raw), 1000)

    def test_a_bucket_that_cannot_scan(self):
        self.faulty.fail("scan", errors.NotSupportedError("no scans here"))
        d = self.client.scan()
        self.conn.flush()
        self.assertIn("no scans here", str(self.failureResultOf(
            d, errors.NotSupportedError).value))

    def test_cancel_while_a_batch_is_in_flight(self):
        scan = self.open(batch_size=10)
        self.successResultOf(scan.next_batch())
        d = scan.next_batch()  # sent, not answered yet
        self.failureResultOf(scan.next_batch(), errors.ArgumentError)  # one at a time
        scan.cancel()
        self.failureResultOf(d, CancelledError)
        self.conn.flush()  # the late reply goes nowhere
        self.assertEqual(self.successResultOf(scan.next_batch()), [])
        self.assertTrue(scan.done)

    def test_each_stops_at_a_failing_consumer(self):
        scan = self.open(batch_size=10)

        def consume(row):
            if row.key == "k03":
                raise ValueError("no thanks")
        d = scan.each(consume)
        self.conn.flush()
        self.failureResultOf(d, ValueError)
        self.assertTrue(scan.done)


class AsyncIterationTests(unittest.TestCase):
    """``async for`` over a remote scan, in a coroutine driven by Twisted."""

    timeout = 20

    @inlineCallbacks
    def test_async_for(self):
        factory, port, bucket = yield start_server(self)
        for i in range(250):
            bucket.store_sync("upsert", "u%03d" % i, {"i": i})
        b = yield connect(reactor, "tcp:127.0.0.1:%d" % port)
        self.addCleanup(b.close)

        async def collect():
            seen = []
            async for row in await b.scan(prefix="u", batch_size=40):
                seen.append((row.key, row.value["i"]))
            return seen
        seen = yield defer.ensureDeferred(collect())
        self.assertEqual(seen, [("u%03d" % i, i) for i in range(250)])


class KeyIndexTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.b = EmbeddedBucket(clock=Clock(), pager_interval=0)
        for i in range(100):
            self.b.store_sync("upsert", "k%03d" % i, i)

    def keys(self, **kwargs):
        scan = self.successResultOf(self.b.scan(ids_only=True, **kwargs))
        out = []
        while True:
            rows = self.successResultOf(scan.next_batch())
            if not rows:
                return out
            out.extend(r.key for r in rows)

    def test_no_index_until_something_scans(self):
        self.assertIsNone(self.b._scan_index)
        self.assertEqual(len(self.keys()), 100)
        self.assertIsInstance(self.b._scan_index, KeyIndex)

    def test_one_index_shared_by_every_scan_and_never_copied(self):
        self.keys()
        index = self.b._scan_index
        keys = index._keys
        for _ in range(3):
            self.assertEqual(len(self.keys(batch_size=7)), 100)
        self.b.store_sync("upsert", "k050", "updated")  # not a new key
        self.keys()
        self.assertIs(self.b._scan_index, index)
        self.assertIs(index._keys, keys)

    def test_new_keys_are_merged_in(self):
        self.keys()
        self.b.store_sync("upsert", "a", 1)                  # a few: insorted
        self.assertEqual(self.keys()[:2], ["a", "k000"])
        for i in range(100):                                # many: merged runs
            self.b.store_sync("upsert", "m%03d" % i, i)
        got = self.keys()
        self.assertEqual(got, sorted(got))
        self.assertEqual(len(got), 201)

    def test_removed_then_added_again_is_returned_once(self):
        self.keys()
        self.b.remove_sync("k010")
        self.b.store_sync("upsert", "k010", "back")
        self.b.remove_sync("k020")
        got = self.keys(batch_size=3)
        self.assertEqual(self.b._scan_index._keys.count(b"k010"), 2)  # listed twice
        self.assertEqual(got.count("k010"), 1)
        self.assertNotIn("k020", got)
        self.assertEqual(len(got), 99)

    def test_dead_keys_are_dropped_when_they_outnumber_the_live_ones(self):
        for i in range(5000):
            self.b.store_sync("upsert", "d%05d" % i, i)
        self.keys()
        index = self.b._scan_index
        for i in range(5000):
            self.b.remove_sync("d%05d" % i)
        self.assertEqual(len(self.keys()), 100)
        self.assertIsNot(self.b._scan_index, index)  # rebuilt
        self.assertEqual(len(self.b._scan_index._keys), 100)

    def test_many_inserts_without_scans_drop_the_pending_list(self):
        self.keys()
        index = self.b._scan_index
        for i in range(5000):
            self.b.store_sync("upsert", "n%05d" % i, i)
        self.assertTrue(index._overflow)  # the pending list was not kept growing
        self.assertLess(len(index._added), 5000)
        self.assertEqual(len(self.keys()), 5100)
        self.assertIsNot(self.b._scan_index, index)

    def test_a_replaced_item_dict_rebuilds_the_index(self):
        # As a persistent bucket's warm-up does.
        self.keys()
        self.b._items = dict(list(self.b._items.items())[:10])
        self.assertEqual(len(self.keys()), 10)

    def test_removed_keys_alone_make_an_empty_batch_and_the_scan_goes_on(self):
        for i in range(3000):
            self.b.store_sync("upsert", "r%04d" % i, i)
        self.keys()
        for i in range(2999):
            self.b.remove_sync("r%04d" % i)
        # A batch visits at most 4 * batch_size + 1024 keys of the index.
        rows, resume = self.b.scan_batch_sync(b"r", b"", b"", True, 1, 2 ** 20)
        self.assertEqual((rows, resume), ([], b"r1027\x00"))
        self.assertEqual(self.keys(prefix="r", batch_size=1), ["r2999"])

    def test_expired_items_are_reclaimed_by_the_scan(self):
        self.b.store_sync("upsert", "t", 1, ttl=5)
        self.b.clock.advance(6)
        self.assertNotIn("t", self.keys())
        self.assertEqual(self.b.stats_sync()["expired"], 1)
        self.assertGreater(self.b.stats_sync()["op_scan"], 0)

    def test_scan_of_a_closed_bucket(self):
        self.successResultOf(self.b.close())
        self.failureResultOf(self.b.scan(), errors.NetworkError)


class ScanResultTests(unittest.SynchronousTestCase):
    def fetcher(self, batches):
        calls = []

        def fetch(start):
            calls.append(start)
            return defer.succeed(batches.pop(0))
        return fetch, calls

    def test_empty_batches_with_a_resume_are_skipped(self):
        fetch, calls = self.fetcher([([], b"b"), ([], b"c"), ([ScanItem("c")], None)])
        scan = self.successResultOf(ScanResult.open(fetch, b"a"))
        self.assertEqual(calls, [b"a", b"b", b"c"])
        self.assertEqual([r.key for r in self.successResultOf(scan.next_batch())], ["c"])
        self.assertEqual(self.successResultOf(scan.next_batch()), [])
        self.assertEqual((scan.rows, scan.done), (1, True))

    def test_a_fetch_error_errbacks(self):
        def fetch(start):
            raise errors.NetworkError("gone")
        self.failureResultOf(ScanResult.open(fetch), errors.NetworkError)

    def test_each_over_many_synchronous_batches_does_not_recurse(self):
        n = 5000
        fetch, _ = self.fetcher([([ScanItem("k%d" % i)], b"x" if i < n - 1 else None)
                                 for i in range(n)])
        scan = self.successResultOf(ScanResult.open(fetch))
        self.assertEqual(self.successResultOf(scan.each(lambda row: None)), n)


class BlockingScanTests(unittest.SynchronousTestCase):
    def setUp(self):
        self.server = ThreadedServer(max_value_size=2 ** 20)
        self.addCleanup(self.server.stop)
        self.b = Bucket(self.server.endpoint)
        self.addCleanup(self.b.close)

    def test_iterate_resume_and_close(self):
        self.b.upsert_multi({"k%03d" % i: i for i in range(120)})
        self.assertEqual([r.value for r in self.b.scan(batch_size=7)], list(range(120)))
        it = self.b.scan(batch_size=50, ids_only=True)
        first = it.next_batch()
        resume = it.continuation
        it.close()
        self.assertEqual(it.next_batch(), [])
        rest = list(self.b.scan(start=resume, ids_only=True))
        self.assertEqual([r.key for r in first + rest], ["k%03d" % i for i in range(120)])
        self.assertRaises(errors.ArgumentError, self.b.scan, batch_size=0)

    def test_a_large_scan_in_bounded_batches(self):
        n = 20000
        for start in range(0, n, 5000):
            self.b.upsert_multi({"big%05d" % i: i for i in range(start, start + 5000)})
        started = time.monotonic()
        it = self.b.scan(prefix="big", batch_size=1000)
        count, biggest = 0, 0
        while True:
            rows = it.next_batch()
            if not rows:
                break
            biggest = max(biggest, len(rows))
            count += len(rows)
        self.assertEqual((count, biggest), (n, 1000))
        self.assertLess(time.monotonic() - started, 10)
