"""
BucketServerProtocol driven through StringTransport, with an EmbeddedBucket
(or a test double) on a task.Clock: no sockets, no real time.
"""

import json

from twisted.internet.defer import Deferred, succeed
from twisted.internet.error import ConnectionDone, ConnectionLost
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel
from twisted.python.failure import Failure

from txcb.wire.netstring import (
    COUNTER_BODY, ENDURE_BODY, OPT_DECREMENT, OPT_INITIAL, OPT_QUIET, REQ_MAGIC,
    Op, Request, decode_response, encode_request, netstring)
from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import RC, ArgumentError, NotFoundError, TemporaryFailError
from txcb.formats import FMT_BYTES
from txcb.interfaces import ISyncBucket
from txcb.results import OperationResult, ValueResult
from txcb.testing import FaultyBucket
from txcb.server.netstring import _COMMANDS

from tests.support.netstring import PEER as ADDR
from tests.support.netstring import DeferredOnlyBucket
from tests.support.netstring import (
    SERVER_NS, DelegatingBucket, PendingBucket, ServerTestBase, buffered, frame)


def bad_magic_frame(opaque):
    payload = bytearray(encode_request(Op.NOOP, opaque))
    payload[0] = REQ_MAGIC ^ 0xFF
    return netstring(bytes(payload))


class ContractBreakingBucket(FaultyBucket):
    """
    txcb.testing.FaultyBucket (whose faults always come as Deferreds) plus
    the two breaches of the IBucket contract it cannot inject: get() raising
    at once (key b"raise") or returning no Deferred at all (key b"none").
    """

    def get(self, key, ttl=0, quiet=False):
        if key == b"raise":
            raise ZeroDivisionError("sync boom")
        if key == b"none":
            return None
        return FaultyBucket.get(self, key, ttl, quiet)


class OpcodeTests(ServerTestBase):
    """Every opcode against an EmbeddedBucket (the server may call it directly)."""

    def setUp(self):
        ServerTestBase.setUp(self)
        self.factory = self.make_factory()
        self.factory.bucket = self.wrap(self.factory.bucket)
        self.proto, self.transport = self.connect(self.factory)

    def wrap(self, bucket):
        return bucket

    def test_pipelined_requests_in_one_write(self):
        data = b"".join(frame(Op.UPSERT, 2 * i, key=b"k%d" % i, value=b"v%d" % i) +
                        frame(Op.GET, 2 * i + 1, key=b"k%d" % i) for i in range(100))
        self.proto.dataReceived(data)
        res = self.responses()
        self.assertEqual([r.opaque for r in res], list(range(200)))
        self.assertEqual([r.status for r in res], [0] * 200)
        self.assertEqual([r.body for r in res[1::2]], [b"v%d" % i for i in range(100)])
        self.assertFalse(self.transport.disconnecting)

    def test_hello(self):
        res = self.call(Op.HELLO, 7)
        self.assertEqual(res.status, 0)
        info = json.loads(res.body)
        self.assertEqual(info["protocol"], 1)
        self.assertEqual(info["max_value_size"], 1000)
        self.assertEqual(info["max_frame"], 28 + 250 + 1000)
        self.assertEqual(info["max_inflight"], 1024)
        self.assertTrue(info["server"].startswith("txcb/"))

    def test_noop(self):
        res = self.call(Op.NOOP, 0xFFFFFFFF)
        self.assertEqual((res.status, res.body), (0, b""))

    def test_upsert_get(self):
        up = self.call(Op.UPSERT, 1, key=b"k", value=b"\x00v,:", flags=0x03000002)
        self.assertEqual(up.status, 0)
        self.assertNotEqual(up.cas, 0)
        self.assertEqual(up.seqno, 1)
        res = self.call(Op.GET, 2, key=b"k")
        self.assertEqual((res.status, res.body, res.flags, res.cas),
                         (0, b"\x00v,:", 0x03000002, up.cas))

    def test_get_miss(self):
        res = self.call(Op.GET, 3, key=b"nope")
        self.assertEqual(res.status, RC.KEY_ENOENT)
        self.assertIn(b"no such key", res.body)

    def test_quiet_get_and_remove_miss(self):
        res = self.call(Op.GET, 3, key=b"nope", options=OPT_QUIET)
        self.assertEqual((res.status, res.body), (RC.KEY_ENOENT, b""))
        res = self.call(Op.REMOVE, 4, key=b"nope", options=OPT_QUIET)
        self.assertEqual((res.status, res.body), (RC.KEY_ENOENT, b""))

    def test_insert_replace(self):
        self.assertEqual(self.call(Op.INSERT, 1, key=b"k", value=b"a").status, 0)
        self.assertEqual(self.call(Op.INSERT, 2, key=b"k", value=b"b").status,
                         RC.KEY_EEXISTS)
        self.assertEqual(self.call(Op.REPLACE, 3, key=b"k", value=b"c").status, 0)
        self.assertEqual(self.call(Op.REPLACE, 4, key=b"other", value=b"c").status,
                         RC.KEY_ENOENT)
        self.assertEqual(self.call(Op.GET, 5, key=b"k").body, b"c")

    def test_cas_mismatch(self):
        up = self.call(Op.UPSERT, 1, key=b"k", value=b"a")
        self.assertEqual(self.call(Op.UPSERT, 2, key=b"k", value=b"b", cas=up.cas + 1).status,
                         RC.KEY_EEXISTS)
        self.assertEqual(self.call(Op.UPSERT, 3, key=b"k", value=b"b", cas=up.cas).status, 0)

    def test_append_prepend(self):
        self.call(Op.UPSERT, 1, key=b"k", value=b"mid")
        self.assertEqual(self.call(Op.APPEND, 2, key=b"k", value=b"+end").status, 0)
        self.assertEqual(self.call(Op.PREPEND, 3, key=b"k", value=b"start+").status, 0)
        self.assertEqual(self.call(Op.GET, 4, key=b"k").body, b"start+mid+end")
        self.assertEqual(self.call(Op.APPEND, 5, key=b"none", value=b"x").status,
                         RC.NOT_STORED)

    def test_counter(self):
        res = self.call(Op.COUNTER, 1, key=b"c", value=COUNTER_BODY.pack(1, 10),
                        options=OPT_INITIAL)
        self.assertEqual((res.status, res.body), (0, b"10"))
        res = self.call(Op.COUNTER, 2, key=b"c", value=COUNTER_BODY.pack(5, 0))
        self.assertEqual(res.body, b"15")
        res = self.call(Op.COUNTER, 3, key=b"c", value=COUNTER_BODY.pack(20, 0),
                        options=OPT_DECREMENT)
        self.assertEqual(res.body, b"0")
        res = self.call(Op.COUNTER, 4, key=b"missing", value=COUNTER_BODY.pack(1, 0))
        self.assertEqual(res.status, RC.KEY_ENOENT)
        self.call(Op.UPSERT, 5, key=b"s", value=b"abc")
        res = self.call(Op.COUNTER, 6, key=b"s", value=COUNTER_BODY.pack(1, 0))
        self.assertEqual(res.status, RC.DELTA_BADVAL)

    def test_touch_and_gat_follow_the_clock(self):
        self.call(Op.UPSERT, 1, key=b"k", value=b"v")
        self.assertEqual(self.call(Op.TOUCH, 2, key=b"k", ttl=10).status, 0)
        self.clock.advance(9)
        res = self.call(Op.GAT, 3, key=b"k", ttl=20)
        self.assertEqual((res.status, res.body), (0, b"v"))
        self.clock.advance(19)
        self.assertEqual(self.call(Op.GET, 4, key=b"k").status, 0)
        self.clock.advance(1)
        self.assertEqual(self.call(Op.GET, 5, key=b"k").status, RC.KEY_ENOENT)
        self.assertEqual(self.call(Op.TOUCH, 6, key=b"k", ttl=1).status, RC.KEY_ENOENT)

    def test_gat_needs_a_ttl(self):
        self.call(Op.UPSERT, 1, key=b"k", value=b"v")
        res = self.call(Op.GAT, 2, key=b"k", ttl=0)
        self.assertEqual(res.status, RC.EINVAL)
        self.assertEqual(self.call(Op.NOOP, 3).status, 0)

    def test_lock_unlock(self):
        self.call(Op.UPSERT, 1, key=b"k", value=b"v")
        lock = self.call(Op.LOCK, 2, key=b"k", ttl=5)
        self.assertEqual((lock.status, lock.body), (0, b"v"))
        self.assertEqual(self.call(Op.LOCK, 3, key=b"k", ttl=5).status, RC.ETMPFAIL)
        self.assertEqual(self.call(Op.UPSERT, 4, key=b"k", value=b"w").status, RC.ETMPFAIL)
        self.assertEqual(self.call(Op.UNLOCK, 5, key=b"k", cas=lock.cas + 1).status,
                         RC.ETMPFAIL)
        self.assertEqual(self.call(Op.UNLOCK, 6, key=b"k", cas=lock.cas).status, 0)
        self.assertEqual(self.call(Op.UPSERT, 7, key=b"k", value=b"w").status, 0)
        self.assertEqual(self.call(Op.LOCK, 8, key=b"k", ttl=0).status, RC.EINVAL)

    def test_remove(self):
        self.call(Op.UPSERT, 1, key=b"k", value=b"v")
        self.assertEqual(self.call(Op.REMOVE, 2, key=b"k").status, 0)
        self.assertEqual(self.call(Op.REMOVE, 3, key=b"k").status, RC.KEY_ENOENT)

    def test_endure(self):
        up = self.call(Op.UPSERT, 1, key=b"k", value=b"v")
        body = ENDURE_BODY.pack(1000, 10)
        res = self.call(Op.ENDURE, 2, key=b"k", value=body, cas=up.cas)
        self.assertEqual((res.status, res.cas), (0, up.cas))
        # No disk: asking to persist is a clear DurabilityError, never success.
        res = self.call(Op.ENDURE, 3, key=b"k", value=body, persist_to=1)
        self.assertEqual(res.status, RC.DURABILITY_IMPOSSIBLE)
        res = self.call(Op.UPSERT, 4, key=b"k", value=b"v", replicate_to=1)
        self.assertEqual(res.status, RC.DURABILITY_IMPOSSIBLE)

    def test_stats(self):
        self.call(Op.UPSERT, 1, key=b"k", value=b"v")
        stats = json.loads(self.call(Op.STATS, 2).body)
        self.assertEqual(stats["items"], 1)
        self.assertEqual(stats["connections"], 1)
        self.assertEqual(stats["total_connections"], 1)

    def test_value_too_big(self):
        res = self.call(Op.UPSERT, 1, key=b"k", value=b"x" * 1001)
        self.assertEqual(res.status, RC.E2BIG)
        self.assertEqual(self.call(Op.UPSERT, 2, key=b"k" * 250, value=b"x" * 1000).status, 0)

    def test_insert_with_cas_is_not_an_internal_error(self):
        """
        Regression: INSERT with a non-zero cas called ``bucket.insert(...,
        cas=...)``: a TypeError, answered 0x84 (internal error) and logged as
        a traceback.  It is the client's mistake: 0x04 (ArgumentError), on
        the synchronous path (EmbeddedBucket) and the Deferred path alike,
        with no failure logged (ServerTestBase checks) and nothing stored.
        """
        for opaque, kw in ((1, {}), (2, {"replicate_to": 1})):
            res = self.call(Op.INSERT, opaque, key=b"k", value=b"v", cas=1234, **kw)
            self.assertEqual((res.status, res.body), (RC.EINVAL, b"insert takes no cas"))
        self.assertEqual(self.call(Op.GET, 3, key=b"k").status, RC.KEY_ENOENT)
        up = self.call(Op.UPSERT, 4, key=b"k", value=b"v")
        res = self.call(Op.INSERT, 5, key=b"k", value=b"w", cas=up.cas)
        self.assertEqual(res.status, RC.EINVAL)
        self.assertEqual(self.call(Op.GET, 6, key=b"k").body, b"v")
        # Without a cas, insert is as ever.
        self.assertEqual(self.call(Op.INSERT, 7, key=b"k2", value=b"v").status, 0)
        self.assertEqual(self.proto._inflight, 0)
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.log.failures(), [])
        self.assertEqual(self.log.server_lines(LogLevel.warn), [])

    def test_get_ignores_the_ttl_field(self):
        """
        GET ignores its request's ttl field: only GAT touches.  A GET with
        the field set neither changes the item's expiry nor its cas.
        """
        up = self.call(Op.UPSERT, 1, key=b"k", value=b"v", ttl=10)
        forever = self.call(Op.UPSERT, 2, key=b"forever", value=b"f")
        res = self.call(Op.GET, 3, key=b"k", ttl=100)
        self.assertEqual((res.status, res.body, res.cas), (0, b"v", up.cas))
        res = self.call(Op.GET, 4, key=b"k", ttl=100, options=OPT_QUIET)
        self.assertEqual((res.status, res.body, res.cas), (0, b"v", up.cas))
        res = self.call(Op.GET, 5, key=b"forever", ttl=5)
        self.assertEqual((res.status, res.cas), (0, forever.cas))
        self.clock.advance(10)
        self.assertEqual(self.call(Op.GET, 6, key=b"k", ttl=100).status, RC.KEY_ENOENT)
        self.assertEqual(self.call(Op.GET, 7, key=b"forever").body, b"f")
        # GAT does touch.
        gat = self.call(Op.GAT, 8, key=b"forever", ttl=5)
        self.assertNotEqual(gat.cas, forever.cas)
        self.clock.advance(5)
        self.assertEqual(self.call(Op.GET, 9, key=b"forever").status, RC.KEY_ENOENT)


class GenericPathOpcodeTests(OpcodeTests):
    """The same, with the bucket behind a wrapper: the Deferred path."""

    def wrap(self, bucket):
        return DelegatingBucket(bucket)


class SyncHandlerTests(ServerTestBase):
    """The synchronous handlers, called as the server calls them."""

    def test_get_handler_ignores_the_ttl_field(self):
        bucket = EmbeddedBucket(clock=self.clock, pager_interval=0)
        up = bucket.store_sync("upsert", b"k", b"v", ttl=10)
        get = _COMMANDS[Op.GET].now
        for options in (0, OPT_QUIET):
            res = decode_response(get(None, bucket, Request(Op.GET, 1, b"k", ttl=100,
                                                            options=options)))
            self.assertEqual((res.status, res.body, res.cas), (0, b"v", up.cas))
        self.clock.advance(10)
        res = decode_response(get(None, bucket, Request(Op.GET, 2, b"k", ttl=100,
                                                        options=OPT_QUIET)))
        self.assertEqual(res.status, RC.KEY_ENOENT)

    def test_insert_handler_refuses_a_cas(self):
        bucket = EmbeddedBucket(clock=self.clock, pager_interval=0)
        insert = _COMMANDS[Op.INSERT].now
        with self.assertRaises(ArgumentError) as cm:
            insert(None, bucket, Request(Op.INSERT, 1, b"k", b"v", cas=5))
        self.assertEqual((cm.exception.rc, cm.exception.message),
                         (RC.EINVAL, "insert takes no cas"))
        self.assertEqual(bucket.stats_sync()["items"], 0)


class GatedDurableBucket(EmbeddedBucket):
    """
    An embedded bucket that can "persist" to one node: a durable mutation's
    target waits in ``targets`` until the test fires it.
    """

    max_persist_to = 1

    def __init__(self, *a, **kw):
        EmbeddedBucket.__init__(self, *a, **kw)
        self.targets = []

    def on_durable(self, result, persist_to, replicate_to, target):
        if not persist_to or not result.seqno:
            return False
        self.targets.append((target, result))
        return True


class DurableSyncPathTests(ServerTestBase):
    """
    Durable mutations on a bucket served synchronously: made at once,
    answered when the bucket fires the target it was given (no Deferred).
    """

    def setUp(self):
        ServerTestBase.setUp(self)
        self.bucket = GatedDurableBucket(clock=self.clock, pager_interval=0)
        self.setup_server(bucket=self.bucket)

    def test_durable_mutations_take_the_synchronous_path(self):
        self.assertTrue(self.proto._sync)
        self.assertEqual(sorted(self.proto._durable), sorted(
            [Op.UPSERT, Op.INSERT, Op.REPLACE, Op.APPEND, Op.PREPEND, Op.REMOVE]))

    def test_reply_waits_for_durability_and_the_mutation_is_made_at_once(self):
        self.proto.dataReceived(frame(Op.UPSERT, 1, key=b"k", value=b"v", persist_to=1))
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.bucket.get_sync("k").raw, b"v")
        self.assertEqual(self.proto._inflight, 1)
        [(target, result)] = self.bucket.targets
        self.assertIsNot(type(target), Deferred)
        target.callback(result)
        [res] = self.responses()
        self.assertEqual((res.opaque, res.status, res.cas, res.seqno),
                         (1, 0, result.cas, result.seqno))
        self.assertEqual(self.proto._inflight, 0)

    def test_every_durable_opcode_answers_as_the_deferred_path(self):
        self.bucket.store_sync("upsert", "k", b"v")
        requests = [(Op.REPLACE, {"key": b"k", "value": b"w"}),
                    (Op.APPEND, {"key": b"k", "value": b"+"}),
                    (Op.PREPEND, {"key": b"k", "value": b"-"}),
                    (Op.INSERT, {"key": b"n", "value": b"new"}),
                    (Op.REMOVE, {"key": b"n"})]
        for opaque, (op, kw) in enumerate(requests):
            self.proto.dataReceived(frame(op, opaque, persist_to=1, **kw))
        self.assertEqual(self.transport.value(), b"")
        for target, result in self.bucket.targets:
            target.callback(result)
        res = self.responses()
        self.assertEqual([(r.opcode, r.opaque, r.status) for r in res],
                         [(op, i, 0) for i, (op, _kw) in enumerate(requests)])
        self.assertEqual(self.bucket.get_sync("k").raw, b"-w+")

    def test_quiet_remove_of_a_missing_key_answers_at_once(self):
        self.proto.dataReceived(frame(Op.REMOVE, 1, key=b"nope", options=OPT_QUIET,
                                      persist_to=1))
        [res] = self.responses()
        self.assertEqual(res.status, RC.KEY_ENOENT)
        self.assertEqual(self.proto._inflight, 0)

    def test_impossible_durability_is_refused_before_the_mutation(self):
        res = self.call(Op.UPSERT, 1, key=b"k", value=b"v", persist_to=2)
        self.assertEqual(res.status, RC.DURABILITY_IMPOSSIBLE)
        res = self.call(Op.INSERT, 2, key=b"k", value=b"v", cas=5, persist_to=1)
        self.assertEqual(res.status, RC.EINVAL)
        self.assertRaises(NotFoundError, self.bucket.get_sync, "k")
        self.assertEqual((self.bucket.targets, self.proto._inflight), ([], 0))

    def test_mutation_errors_are_answered_at_once(self):
        res = self.call(Op.REPLACE, 1, key=b"missing", value=b"v", persist_to=1)
        self.assertEqual(res.status, RC.KEY_ENOENT)
        self.assertEqual(self.proto._inflight, 0)

    def test_durability_failure_is_answered_with_its_error(self):
        self.proto.dataReceived(frame(Op.UPSERT, 1, key=b"a", value=b"v", persist_to=1)
                                + frame(Op.UPSERT, 2, key=b"b", value=b"v", persist_to=1))
        (t1, r1), (t2, r2) = self.bucket.targets
        t1.errback(TemporaryFailError("the write could not be persisted", key=b"a"))
        t2.errback(Failure(TemporaryFailError("again", key=b"b")))
        res = self.responses()
        self.assertEqual([(r.opaque, r.status, r.body) for r in res],
                         [(1, RC.ETMPFAIL, b"the write could not be persisted"),
                          (2, RC.ETMPFAIL, b"again")])
        self.assertEqual(self.proto._inflight, 0)

    def test_unexpected_durability_failure_is_an_internal_error_logged_once(self):
        self.expected_failures = 1
        self.proto.dataReceived(frame(Op.UPSERT, 1, key=b"a", value=b"v", persist_to=1))
        [(target, _r)] = self.bucket.targets
        target.errback(ZeroDivisionError("disk on fire"))
        [res] = self.responses()
        self.assertEqual(res.status, RC.EINTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)

    def test_inflight_cap_counts_durable_mutations(self):
        self.setup_server(bucket=self.bucket, max_inflight=2)
        self.proto.dataReceived(frame(Op.UPSERT, 1, key=b"a", value=b"v", persist_to=1)
                                + frame(Op.UPSERT, 2, key=b"b", value=b"v", persist_to=1))
        self.assertEqual(self.transport.producerState, "paused")
        for target, result in self.bucket.targets:
            target.callback(result)
        self.assertEqual(self.transport.producerState, "producing")
        self.assertEqual([r.opaque for r in self.responses()], [1, 2])

    def test_target_fired_after_the_connection_is_lost_sends_nothing(self):
        self.proto.dataReceived(frame(Op.UPSERT, 1, key=b"a", value=b"v", persist_to=1))
        self.proto.connectionLost(Failure(ConnectionLost()))
        [(target, result)] = self.bucket.targets
        target.callback(result)
        self.assertEqual(self.transport.value(), b"")

    def test_bucket_without_isyncbucket_takes_the_deferred_path(self):
        calls = []

        def on_durable(result, persist_to, replicate_to, target):
            calls.append(type(target))
            return False
        self.bucket.on_durable = on_durable
        self.factory.bucket = DelegatingBucket(self.bucket)
        proto, transport = self.connect(self.factory)
        self.assertEqual(proto._durable, {})
        res = self.call(Op.UPSERT, 1, key=b"k", value=b"v", persist_to=1, proto=proto,
                        transport=transport)
        self.assertEqual((res.status, calls), (0, [Deferred]))


class LateReplyTests(ServerTestBase):
    """
    Replies made outside a read (a Deferred firing later) go out together,
    in one write at the end of the reactor turn, where the transport names
    its reactor.
    """

    def connect_with_reactor(self):
        """A PendingBucket's server, on a transport naming self.clock its reactor."""
        bucket = PendingBucket()
        proto = self.make_factory(bucket=bucket).buildProtocol(ADDR)
        transport = StringTransport(peerAddress=ADDR)
        transport.reactor = self.clock
        proto.makeConnection(transport)
        return bucket, proto, transport

    def test_late_replies_are_written_once_at_the_end_of_the_turn(self):
        bucket, proto, transport = self.connect_with_reactor()
        writes = []
        write = transport.write
        transport.write = lambda data: (writes.append(data), write(data))
        proto.dataReceived(b"".join(frame(Op.GET, i, key=b"k%d" % i) for i in range(3)))
        for i in range(3):
            bucket.answer(i)
        self.assertEqual(writes, [])
        self.clock.advance(0)
        self.assertEqual(len(writes), 1)
        self.assertEqual([r.opaque for r in self.responses(transport)], [0, 1, 2])

    def test_many_late_replies_go_out_every_flush_every(self):
        bucket, proto, transport = self.connect_with_reactor()
        n = proto.flushEvery + 5
        proto.dataReceived(b"".join(frame(Op.GET, i, key=b"k") for i in range(n)))
        for i in range(n):
            bucket.answer(i)
        self.assertEqual(len(self.responses(transport)), proto.flushEvery)
        self.clock.advance(0)
        self.assertEqual([r.opaque for r in self.responses(transport)],
                         list(range(proto.flushEvery, n)))

    def test_late_replies_of_a_lost_connection_are_dropped(self):
        bucket, proto, transport = self.connect_with_reactor()
        proto.dataReceived(frame(Op.GET, 1, key=b"k"))
        bucket.answer(0)
        proto.connectionLost(Failure(ConnectionLost()))
        self.clock.advance(0)
        self.assertEqual(transport.value(), b"")


class InstancePatchTests(ServerTestBase):
    """
    A method replaced on the instance of a bucket that does not provide
    ISyncBucket (``bucket.get = ...``) is called by the server: such a
    bucket is served through its IBucket Deferreds.
    """

    def patched_bucket(self):
        bucket = DeferredOnlyBucket(clock=self.clock, pager_interval=0)
        bucket.store_sync("upsert", b"k", b"real")
        self.calls = []

        def get(key, ttl=0, quiet=False):
            self.calls.append(("get", key, ttl))
            return succeed(ValueResult(key, b"patched", FMT_BYTES, 77))

        def _mutate(key, persist_to, replicate_to, call, *args):
            self.calls.append(("_mutate", key))
            return succeed(OperationResult(key, 88))

        bucket.get = get
        bucket._mutate = _mutate
        return bucket

    def assertPatchedCalled(self, proto, transport):
        res = self.call(Op.GET, 1, proto=proto, transport=transport, key=b"k")  # fast path
        self.assertEqual((res.body, res.cas), (b"patched", 77))
        res = self.call(Op.GAT, 2, proto=proto, transport=transport, key=b"k", ttl=5)
        self.assertEqual((res.body, res.cas), (b"patched", 77))
        res = self.call(Op.UPSERT, 3, proto=proto, transport=transport, key=b"k",
                        value=b"x")  # fast path
        self.assertEqual(res.cas, 88)
        res = self.call(Op.INSERT, 4, proto=proto, transport=transport, key=b"n", value=b"x")
        self.assertEqual(res.cas, 88)
        self.assertEqual(self.calls, [("get", b"k", 0), ("get", b"k", 5),
                                      ("_mutate", b"k"), ("_mutate", b"n")])
        # What is not replaced answers as usual, through its Deferred too.
        res = self.call(Op.COUNTER, 5, proto=proto, transport=transport, key=b"c",
                        value=COUNTER_BODY.pack(1, 3), options=OPT_INITIAL)
        self.assertEqual((res.status, res.body), (0, b"3"))
        self.assertFalse(proto._sync)
        self.assertNotIn(Op.COUNTER, proto._now)
        self.assertNotIn(Op.GET, proto._now)
        self.assertNotIn(Op.UPSERT, proto._now)

    def test_patched_before_the_connection(self):
        proto, transport = self.setup_server(bucket=self.patched_bucket())
        self.assertPatchedCalled(proto, transport)

    def test_patched_bucket_given_to_the_factory_later(self):
        proto, transport = self.setup_server()
        self.assertEqual(self.call(Op.UPSERT, 1, key=b"k", value=b"v").status, 0)
        self.assertEqual(self.call(Op.GET, 2, key=b"k").body, b"v")
        self.factory.bucket = self.patched_bucket()
        self.assertPatchedCalled(proto, transport)

    def test_a_plain_embedded_bucket_is_still_served_synchronously(self):
        self.patched_bucket()
        plain = EmbeddedBucket(clock=self.clock, pager_interval=0)
        self.assertTrue(ISyncBucket.providedBy(plain))
        proto, _transport = self.connect(self.make_factory(bucket=plain))
        self.assertIn(Op.GET, proto._now)
        self.assertIn(Op.UPSERT, proto._now)


class FramingTests(ServerTestBase):

    def test_request_split_at_every_offset(self):
        factory = self.make_factory()
        data = frame(Op.UPSERT, 77, key=b"key", value=b"12:,value")
        for i in range(1, len(data)):
            proto, transport = self.connect(factory)
            proto.dataReceived(data[:i])
            self.assertEqual(transport.value(), b"", "split at %d" % i)
            proto.dataReceived(data[i:])
            res = self.responses(transport)
            self.assertEqual([(r.opaque, r.status) for r in res], [(77, 0)],
                             "split at %d" % i)
            self.assertFalse(transport.disconnecting)

    def test_request_byte_by_byte(self):
        proto, transport = self.setup_server()
        data = frame(Op.NOOP, 5) + frame(Op.UPSERT, 6, key=b"k", value=b"v")
        for i in range(len(data)):
            proto.dataReceived(data[i:i + 1])
        self.assertEqual([r.opaque for r in self.responses()], [5, 6])

    def test_malformed_netstring_closes_with_one_log_line(self):
        factory = self.make_factory()
        other, other_transport = self.connect(factory)
        proto, transport = self.connect(factory)
        proto.dataReceived(frame(Op.NOOP, 1) + b"garbage!")
        # The good frame before the garbage is answered, then the connection closes.
        self.assertEqual([r.opaque for r in self.responses(transport)], [1])
        self.assertTrue(transport.disconnecting)
        lines = self.log.server_lines(LogLevel.warn)
        self.assertEqual(len(lines), 1)
        self.assertIn("malformed", lines[0]["log_format"])
        proto.connectionLost(Failure(ConnectionDone()))
        # Nothing else is broken: the other connection and the factory work on.
        self.call(Op.NOOP, 2, proto=other, transport=other_transport)
        third, third_transport = self.connect(factory)
        self.call(Op.NOOP, 3, proto=third, transport=third_transport)
        self.assertEqual(factory.stats.connections, 2)
        self.assertEqual(len(self.log.server_lines(LogLevel.warn)), 1)

    def test_data_after_a_malformed_netstring_is_ignored(self):
        """
        Regression: after a parse error the protocol kept buffering and
        re-parsing whatever still arrived (TLS keeps delivering data after
        loseConnection until the peer answers close_notify): one more warning
        per chunk and an unbounded buffer.
        """
        proto, transport = self.setup_server()
        proto.dataReceived(b"99999999999:")
        self.assertTrue(transport.disconnecting)
        for _ in range(10):
            proto.dataReceived(b"x" * 100000)
        self.assertLess(buffered(proto), 100)
        self.assertEqual(len(self.log.server_lines(LogLevel.warn)), 1)
        self.assertEqual(transport.value(), b"")

    def test_oversized_length_prefix_refused_before_buffering(self):
        proto, transport = self.setup_server(max_value_size=1000)
        # The measure works: a legal frame's first half is held.
        proto.dataReceived(frame(Op.UPSERT, 1, key=b"k", value=b"v" * 900)[:500])
        self.assertGreaterEqual(buffered(proto), 490)
        proto, transport = self.connect(self.factory)
        proto.dataReceived(b"99999999999:")
        self.assertTrue(transport.disconnecting)
        self.assertLess(buffered(proto), 100)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(len(self.log.server_lines(LogLevel.warn)), 1)

    def test_length_over_the_frame_limit_refused_at_the_prefix(self):
        # The limit is a header, the longest key and the largest value.
        factory = self.make_factory(max_value_size=1000)
        limit = 28 + 250 + 1000
        proto, transport = self.connect(factory)
        proto.dataReceived(b"%d:" % (limit + 1))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")
        # Exactly at the limit is fine.
        proto, transport = self.connect(factory)
        data = frame(Op.UPSERT, 9, key=b"k" * 250, value=b"v" * 1000)
        self.assertTrue(data.startswith(b"%d:" % limit))
        proto.dataReceived(data)
        self.assertEqual([(r.opaque, r.status) for r in self.responses(transport)], [(9, 0)])
        self.assertFalse(transport.disconnecting)

    def test_huge_prefix_without_colon(self):
        proto, transport = self.setup_server()
        proto.dataReceived(b"1" * 40)
        self.assertTrue(transport.disconnecting)
        self.assertEqual(transport.value(), b"")

    def test_bad_payload_with_readable_opaque_keeps_connection(self):
        proto, transport = self.setup_server()
        payload = encode_request(Op.GET, 42, key=b"")  # GET without a key
        proto.dataReceived(netstring(payload))
        [res] = self.responses()
        self.assertEqual((res.opaque, res.opcode, res.status), (42, Op.GET, RC.EINVAL))
        self.assertTrue(res.body)
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.call(Op.NOOP, 43).status, 0)
        # Logged, but not as a warning.
        self.assertEqual(self.log.server_lines(LogLevel.warn), [])
        self.assertEqual(len(self.log.server_lines(LogLevel.info)), 1)

    def test_store_with_ttl_0_clears_expiry(self):
        # docs/protocol.rst 2.4: a store with ttl 0 clears an existing expiry;
        # APPEND keeps it.
        self.setup_server()
        for op in (Op.UPSERT, Op.REPLACE):
            self.assertEqual(self.call(Op.UPSERT, 70, key=b"t", value=b"v", ttl=10).status, 0)
            self.assertEqual(self.call(op, 71, key=b"t", value=b"w", ttl=0).status, 0)
            self.clock.advance(20)
            self.assertEqual(self.call(Op.GET, 72, key=b"t").body, b"w")
        self.assertEqual(self.call(Op.UPSERT, 73, key=b"a", value=b"v", ttl=10).status, 0)
        self.assertEqual(self.call(Op.APPEND, 74, key=b"a", value=b"w").status, 0)
        self.clock.advance(20)
        self.assertEqual(self.call(Op.GET, 75, key=b"a").status, RC.KEY_ENOENT)

    def test_counter_creates_item_with_json_flags(self):
        # docs/protocol.rst 3: COUNTER's INITIAL item gets flags 0x02000000.
        self.setup_server()
        res = self.call(Op.COUNTER, 80, key=b"n", value=COUNTER_BODY.pack(1, 10),
                        options=OPT_INITIAL)
        self.assertEqual((res.status, res.flags, res.body), (0, 0x02000000, b"10"))
        self.assertEqual(self.call(Op.GET, 81, key=b"n").flags, 0x02000000)

    def test_unknown_option_bits_refused_keeps_connection(self):
        # Issue 12 item 9 / issue 13: options 0xFFFF and 0x80 were accepted.
        proto, transport = self.setup_server()
        for opaque, bits in ((50, 0xFFFF), (51, 0x80)):
            res = self.call(Op.UPSERT, opaque, key=b"k", value=b"v", options=bits)
            self.assertEqual((res.opaque, res.status), (opaque, RC.EINVAL))
        self.assertEqual(self.call(Op.GET, 52, key=b"k").status, RC.KEY_ENOENT)
        self.assertFalse(transport.disconnecting)

    def test_persist_to_minus_128_refused_keeps_connection(self):
        # Issue 12 item 9: persist_to=-128 was accepted.
        proto, transport = self.setup_server()
        res = self.call(Op.UPSERT, 60, key=b"k", value=b"v", persist_to=-128)
        self.assertEqual((res.opaque, res.status), (60, RC.EINVAL))
        res = self.call(Op.UPSERT, 61, key=b"k", value=b"v", replicate_to=-2)
        self.assertEqual((res.opaque, res.status), (61, RC.EINVAL))
        self.assertEqual(self.call(Op.GET, 62, key=b"k").status, RC.KEY_ENOENT)
        self.assertFalse(transport.disconnecting)

    def test_wrong_counter_body_keeps_connection(self):
        proto, transport = self.setup_server()
        res = self.call(Op.COUNTER, 8, key=b"c", value=b"\0" * 15)
        self.assertEqual(res.status, RC.EINVAL)
        self.assertEqual(self.call(Op.NOOP, 9).status, 0)
        self.assertFalse(transport.disconnecting)

    def test_short_header_with_opaque(self):
        proto, transport = self.setup_server()
        proto.dataReceived(netstring(encode_request(Op.NOOP, 31)[:20]))
        [res] = self.responses()
        self.assertEqual((res.opaque, res.status), (31, RC.PROTOCOL_ERROR))
        self.assertFalse(transport.disconnecting)

    def test_short_header_without_opaque_closes(self):
        proto, transport = self.setup_server()
        proto.dataReceived(netstring(b"\xcb\x0a"))
        self.assertEqual(transport.value(), b"")
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.log.server_lines(LogLevel.warn)), 1)

    def test_unknown_opcode(self):
        proto, transport = self.setup_server()
        proto.dataReceived(netstring(encode_request(0x42, 99, key=b"k")))
        [res] = self.responses()
        self.assertEqual((res.opaque, res.opcode, res.status), (99, 0x42, RC.UNKNOWN_COMMAND))
        self.assertFalse(transport.disconnecting)
        self.assertEqual(self.call(Op.NOOP, 100).status, 0)

    def test_bad_magic_answers_and_closes(self):
        proto, transport = self.setup_server()
        proto.dataReceived(bad_magic_frame(12))
        [res] = self.responses()
        self.assertEqual((res.opaque, res.status), (12, RC.PROTOCOL_ERROR))
        self.assertTrue(transport.disconnecting)
        self.assertEqual(len(self.log.server_lines(LogLevel.warn)), 1)

    def test_nothing_runs_after_a_fatal_frame(self):
        """
        Regression: after a fatal frame (bad magic) the server closed the
        connection but went on executing the requests pipelined behind it in
        the same read, writing their answers after loseConnection and logging
        a warning for every further bad frame.
        """
        proto, transport = self.setup_server()
        proto.dataReceived(bad_magic_frame(1) + frame(Op.UPSERT, 2, key=b"k", value=b"v")
                           + bad_magic_frame(3) + frame(Op.NOOP, 4))
        self.assertEqual([r.opaque for r in self.responses()], [1])
        self.assertTrue(transport.disconnecting)
        self.assertEqual(self.bucket.stats_sync()["items"], 0)
        self.assertEqual(len(self.log.server_lines(LogLevel.warn)), 1)
        proto.dataReceived(frame(Op.NOOP, 5))
        self.assertEqual(transport.value(), b"")


class AsyncBucketTests(ServerTestBase):

    def test_out_of_order_answers_carry_their_opaque(self):
        bucket = PendingBucket()
        proto, transport = self.setup_server(bucket=bucket)
        proto.dataReceived(b"".join(frame(Op.GET, 100 + i, key=b"k%d" % i) for i in range(3)))
        self.assertEqual(transport.value(), b"")
        for i in (2, 0, 1):
            bucket.answer(i)
        res = self.responses()
        self.assertEqual([(r.opaque, r.body) for r in res],
                         [(102, b"k2"), (100, b"k0"), (101, b"k1")])
        self.assertEqual([r.cas for r in res], [1002, 1000, 1001])

    def test_fast_answers_are_not_held_up_by_slow_ones(self):
        bucket = PendingBucket()
        proto, transport = self.setup_server(bucket=bucket)
        proto.dataReceived(frame(Op.GET, 1, key=b"slow") + frame(Op.NOOP, 2))
        self.assertEqual([r.opaque for r in self.responses()], [2])
        bucket.answer(0)
        self.assertEqual([r.opaque for r in self.responses()], [1])

    def test_answer_that_never_comes_then_connection_lost(self):
        bucket = PendingBucket()
        proto, transport = self.setup_server(bucket=bucket)
        proto.dataReceived(frame(Op.GET, 1, key=b"k"))
        proto.connectionLost(Failure(ConnectionLost()))
        self.assertEqual(self.factory.stats.connections, 0)
        # A late answer after the connection is gone goes nowhere, quietly.
        bucket.answer(0)
        self.assertEqual(transport.value(), b"")

    def test_late_answer_after_close_while_paused(self):
        """
        Regression: a late answer on a paused connection that had been closed
        resumed the closed transport (StringTransport refuses it, raising
        inside the Deferred's callback: an unhandled error).
        """
        bucket = PendingBucket()
        proto, transport = self.setup_server(bucket=bucket, max_inflight=2)
        proto.dataReceived(frame(Op.GET, 1, key=b"a") + frame(Op.GET, 2, key=b"b"))
        self.assertEqual(transport.producerState, "paused")
        transport.loseConnection()
        proto.connectionLost(Failure(ConnectionDone()))
        bucket.answer(0)
        bucket.answer(1)
        self.assertEqual(transport.value(), b"")
        self.assertEqual(proto._inflight, 0)

    def test_inflight_cap_pauses_and_resumes(self):
        bucket = PendingBucket()
        proto, transport = self.setup_server(bucket=bucket, max_inflight=4)
        proto.dataReceived(b"".join(frame(Op.GET, i, key=b"k") for i in range(3)))
        self.assertEqual(transport.producerState, "producing")
        proto.dataReceived(frame(Op.GET, 3, key=b"k"))
        self.assertEqual(transport.producerState, "paused")
        bucket.answer(0)
        self.assertEqual(transport.producerState, "paused")  # hysteresis
        for i in (1, 2, 3):
            bucket.answer(i)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([r.opaque for r in self.responses()], [0, 1, 2, 3])
        self.assertEqual(proto._inflight, 0)
        # And the cap applies again.
        proto.dataReceived(b"".join(frame(Op.GET, i, key=b"k") for i in range(4, 8)))
        self.assertEqual(transport.producerState, "paused")

    def test_inflight_cap_counts_error_answers(self):
        proto, transport = self.setup_server(max_inflight=2)
        # Synchronous errors and successes release their slot at once.
        for i in range(10):
            proto.dataReceived(frame(Op.GET, i, key=b"missing"))
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual(proto._inflight, 0)
        self.assertEqual(len(self.responses()), 10)

    def test_max_inflight_one_resumes(self):
        """
        Regression: with max_inflight=1 (``twistd txcb --max-inflight 1``) the
        resume threshold was ``inflight < 1 // 2``, never true: the first slow
        request paused the connection for good.
        """
        bucket = PendingBucket()
        proto, transport = self.setup_server(bucket=bucket, max_inflight=1)
        proto.dataReceived(frame(Op.GET, 1, key=b"k"))
        self.assertEqual(transport.producerState, "paused")
        bucket.answer(0)
        self.assertEqual(transport.producerState, "producing")
        self.assertEqual([r.opaque for r in self.responses()], [1])

    def test_one_broken_connection_does_not_affect_another(self):
        bucket = PendingBucket()
        factory = self.make_factory(bucket=bucket, max_inflight=2)
        a, ta = self.connect(factory)
        b, tb = self.connect(factory)
        a.dataReceived(frame(Op.GET, 1, key=b"a1") + frame(Op.GET, 2, key=b"a2"))
        b.dataReceived(frame(Op.GET, 1, key=b"b1"))
        self.assertEqual((ta.producerState, tb.producerState), ("paused", "producing"))
        a.dataReceived(b"x:broken")  # a malformed netstring: a is closed
        self.assertTrue(ta.disconnecting)
        a.connectionLost(Failure(ConnectionLost()))
        for i in range(3):
            bucket.answer(i)
        self.assertEqual(self.responses(ta), [])
        self.assertEqual([(r.opaque, r.body) for r in self.responses(tb)], [(1, b"b1")])
        self.assertEqual(tb.producerState, "producing")
        self.assertFalse(tb.disconnecting)
        self.assertEqual(factory.stats.connections, 1)
        self.assertEqual(factory.stats.total_connections, 2)


class UnexpectedErrorTests(ServerTestBase):

    def setUp(self):
        ServerTestBase.setUp(self)
        self.faulty = ContractBreakingBucket(
            EmbeddedBucket(clock=self.clock, pager_interval=0), self.clock)
        self.setup_server(bucket=self.faulty)

    def assertInternalError(self, key, opaque):
        res = self.call(Op.GET, opaque, key=key)
        self.assertEqual((res.status, res.body), (RC.EINTERNAL, b"internal server error"))
        self.assertFalse(self.transport.disconnecting)
        # The connection goes on.
        self.assertEqual(self.call(Op.NOOP, opaque + 1).status, 0)
        self.assertEqual(self.proto._inflight, 0)

    def test_bucket_raising(self):
        self.assertInternalError(b"raise", 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.expected_failures = 1
        [event] = self.log.failures()
        self.assertEqual(event["log_namespace"], SERVER_NS)
        self.assertEqual(event["log_level"], LogLevel.critical)

    def test_bucket_failing_with_unexpected_error(self):
        self.faulty.fail("get", ZeroDivisionError("async boom"), times=1)
        self.assertInternalError(b"fail", 1)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.expected_failures = 1

    def test_bucket_returning_a_non_deferred(self):
        self.assertInternalError(b"none", 1)
        self.assertEqual(len(self.flushLoggedErrors(AttributeError)), 1)
        self.expected_failures = 1

    def test_long_error_message_is_truncated(self):
        self.faulty.fail("get", NotFoundError("x" * 5000, key=b"long-error"), times=1)
        res = self.call(Op.GET, 1, key=b"long-error")
        self.assertEqual(res.status, RC.KEY_ENOENT)
        self.assertEqual(len(res.body), 512)

    def test_ordinary_errors_are_not_logged_as_failures(self):
        self.assertEqual(self.call(Op.GET, 1, key=b"missing").status, RC.KEY_ENOENT)
        self.assertEqual(self.log.failures(), [])


class ConnectionCountTests(ServerTestBase):

    def test_connections_are_counted(self):
        factory = self.make_factory()
        a, ta = self.connect(factory)
        b, tb = self.connect(factory)
        self.assertEqual((factory.stats.connections, factory.stats.total_connections), (2, 2))
        a.connectionLost(Failure(ConnectionDone()))
        self.assertEqual((factory.stats.connections, factory.stats.total_connections), (1, 2))
        stats = json.loads(self.call(Op.STATS, 1, proto=b, transport=tb).body)
        self.assertEqual((stats["connections"], stats["total_connections"]), (1, 2))
