"""
BucketClientProtocol, RemoteBucket, BucketClientFactory and connect():
mostly with StringTransport and task.Clock, client<->server in memory with
an iosim pump, and reconnection against a real loopback server.
"""

import json

from twisted.internet import defer, reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import CancelledError, Deferred, inlineCallbacks
from twisted.internet.error import ConnectionDone, ConnectionLost, ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest
from zope.interface import implementer_only

from txcb.client import remote as client_module
from txcb import errors
from txcb.client.remote import (
    BucketClientFactory, BucketClientProtocol, RemoteBucket, connect)
from txcb.wire.netstring import (
    COUNTER_BODY, ENDURE_BODY, OPT_CHECK_REMOVED, OPT_DECREMENT, OPT_INITIAL, OPT_QUIET,
    NetstringDecoder, Op, decode_request, encode_response, netstring)
from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import RC
from txcb.formats import FMT_JSON, FMT_UTF8
from txcb.interfaces import IBucket
from txcb.results import OperationResult, ValueResult
from txcb.server.netstring import BucketServerFactory

from tests.support.netstring import SERVER_ADDR as ADDR
from tests.support.netstring import HELLO_INFO, ClientTestBase, buffered, response
from tests.support.servers import TrackedServerFactory


class HandshakeTests(ClientTestBase):

    def test_hello_is_sent_first_and_ready_waits_for_it(self):
        proto, transport = self.make_client(hello=False)
        ready = proto.when_ready()
        self.assertNoResult(ready)
        self.assertEqual(proto.server_info, {})
        proto.dataReceived(response(Op.HELLO, 0, body=json.dumps(
            dict(HELLO_INFO, max_value_size=50 * 1024 * 1024)).encode()))
        info = self.successResultOf(ready)
        self.assertEqual(info["server"], "txcb/test")
        self.assertEqual(proto.server_info, info)
        self.assertEqual(proto.max_value_size, 50 * 1024 * 1024)
        self.assertGreaterEqual(proto.MAX_LENGTH, 28 + 50 * 1024 * 1024)
        self.assertEqual(self.successResultOf(proto.when_ready()), info)
        self.assertIdle()

    def test_max_value_size_comes_from_the_server(self):
        self.make_client()
        self.assertEqual(self.bucket.max_value_size, 1000)
        f = self.failureResultOf(self.bucket.upsert("k", b"x" * 1001), errors.TooBigError)
        self.assertEqual(f.value.key, "k")
        self.assertEqual(self.transport.value(), b"")
        self.bucket.upsert("k", b"x" * 1000)
        self.assertEqual(len(self.one_request().value), 1000)

    def test_hello_error_fails_ready(self):
        proto, transport = self.make_client(hello=False)
        ready = proto.when_ready()
        proto.dataReceived(response(Op.HELLO, 0, RC.UNKNOWN_COMMAND, body=b"what?"))
        self.failureResultOf(ready, errors.UnknownCommandError)
        self.failureResultOf(proto.when_ready(), errors.UnknownCommandError)

    def test_malformed_hello_reply_fails_the_handshake(self):
        """
        Regression: a HELLO reply whose body was not a JSON object (or held a
        non-numeric max_value_size) raised inside the handshake callback:
        when_ready() and so factory.deferred never fired (a hang).
        """
        for body in (b"not json", b"[]", b'"x"', b'{"max_value_size": "big"}', b"\xff"):
            proto, transport = self.make_client(hello=False)
            ready = proto.when_ready()
            proto.dataReceived(response(Op.HELLO, 0, body=body))
            self.failureResultOf(ready, errors.ProtocolError)
            self.assertIdle(proto)


class TimeoutTests(ClientTestBase):

    def test_timeout_errbacks_and_late_reply_is_ignored(self):
        self.make_client()
        d = self.bucket.get("k", timeout=1.0)
        req = self.one_request()
        self.clock.advance(0.999)
        self.assertNoResult(d)
        self.clock.advance(0.001)
        f = self.failureResultOf(d, errors.TimeoutError)
        self.assertEqual(f.value.key, "k")
        self.assertEqual(f.value.rc, RC.TIMEOUT)
        self.assertIdle()
        # The late reply finds nobody and harms nothing.
        self.proto.dataReceived(response(Op.GET, req.opaque, body=b"late", flags=FMT_UTF8))
        self.assertFalse(self.transport.disconnecting)
        self.assertIdle()
        d2 = self.bucket.noop()
        self.proto.dataReceived(response(Op.NOOP, self.one_request().opaque))
        self.assertIsNone(self.successResultOf(d2))
        self.assertEqual(self.client_warnings(), [])

    def test_default_timeout(self):
        self.make_client()
        d = self.bucket.get("k")
        self.clock.advance(2.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.failureResultOf(d, errors.TimeoutError)
        self.assertIdle()

    def test_timeout_is_per_request(self):
        self.make_client()
        short = self.bucket.get("a", timeout=1)
        long = self.bucket.get("b", timeout=10)
        reqs = self.sent(self.transport)
        self.clock.advance(1)
        self.failureResultOf(short, errors.TimeoutError)
        self.assertNoResult(long)
        self.proto.dataReceived(response(Op.GET, reqs[1].opaque, body=b'"b"', flags=FMT_JSON))
        self.assertEqual(self.successResultOf(long).value, "b")
        self.assertIdle()

    def deadlines(self):
        """When the timers fire (the timeout sweeper goes a microsecond early)."""
        return sorted(round(c.getTime(), 3) for c in self.clock.getDelayedCalls())

    def test_short_deadline_after_a_long_one(self):
        """One timer per connection: a shorter deadline moves it earlier."""
        self.make_client()
        long = self.bucket.get("long", timeout=10)
        self.clock.advance(2)
        short = self.bucket.get("short", timeout=1)
        self.assertEqual(self.deadlines(), [3])
        self.clock.advance(0.999)
        self.assertNoResult(short)
        self.clock.advance(0.001)
        self.assertEqual(self.failureResultOf(short, errors.TimeoutError).value.key, "short")
        self.assertNoResult(long)
        self.assertEqual(self.deadlines(), [10])
        self.clock.advance(6.999)
        self.assertNoResult(long)
        self.clock.advance(0.001)
        self.assertEqual(self.failureResultOf(long, errors.TimeoutError).value.key, "long")
        self.assertIdle()

    def test_long_deadline_after_a_short_one(self):
        """A later deadline keeps the running timer, then gets its own turn."""
        self.make_client()
        short = self.bucket.get("short", timeout=1)
        long = self.bucket.get("long", timeout=10)
        self.assertEqual(self.deadlines(), [1])
        self.clock.advance(1)
        self.failureResultOf(short, errors.TimeoutError)
        self.assertNoResult(long)
        self.assertEqual(self.deadlines(), [10])
        self.clock.advance(8.999)
        self.assertNoResult(long)
        self.clock.advance(0.001)
        self.failureResultOf(long, errors.TimeoutError)
        self.assertIdle()

    def test_same_deadline_times_out_together(self):
        self.make_client()
        ds = [self.bucket.get("k%d" % i, timeout=1) for i in range(3)]
        self.clock.advance(1)
        for d in ds:
            self.failureResultOf(d, errors.TimeoutError)
        self.assertIdle()

    def test_earliest_answered_the_later_still_times_out_on_time(self):
        self.make_client()
        short = self.bucket.get("short", timeout=1)
        long = self.bucket.get("long", timeout=5)
        reqs = self.sent(self.transport)
        self.clock.advance(0.5)
        self.proto.dataReceived(response(Op.GET, reqs[0].opaque, body=b"s"))
        self.assertEqual(self.successResultOf(short).raw, b"s")
        self.clock.advance(4.499)
        self.assertNoResult(long)
        self.clock.advance(0.001)
        self.failureResultOf(long, errors.TimeoutError)
        self.assertIdle()

    def test_timer_cancelled_when_idle(self):
        self.make_client()
        short = self.bucket.get("a", timeout=1)
        long = self.bucket.get("b", timeout=10)
        reqs = self.sent(self.transport)
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # one timer for both
        self.proto.dataReceived(response(Op.GET, reqs[1].opaque, body=b"b"))
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # "a" is still out
        self.proto.dataReceived(response(Op.GET, reqs[0].opaque, body=b"a"))
        self.successResultOf(short)
        self.successResultOf(long)
        self.assertIdle()
        # And the next request has a timer again.
        d = self.bucket.noop(timeout=2)
        self.assertEqual(self.deadlines(), [2])
        self.proto.dataReceived(response(Op.NOOP, self.one_request().opaque))
        self.successResultOf(d)
        self.assertIdle()

    def test_timeout_zero_disables_the_timeout(self):
        """``timeout=0`` (documented in RemoteBucket): no timer, no TimeoutError."""
        self.make_client()
        forever = self.bucket.get("k", timeout=0)
        req = self.one_request()
        self.assertEqual(self.clock.getDelayedCalls(), [])
        timed = self.bucket.get("t", timeout=1)
        self.clock.advance(1)
        self.failureResultOf(timed, errors.TimeoutError)
        self.assertEqual(self.clock.getDelayedCalls(), [])  # none left for the untimed one
        self.clock.advance(1e6)
        self.assertNoResult(forever)
        self.proto.dataReceived(response(Op.GET, req.opaque, body=b"v"))
        self.assertEqual(self.successResultOf(forever).raw, b"v")
        self.assertIdle()

    def test_bucket_timeout_zero(self):
        """A bucket (and protocol) made with timeout=0 has no default timeout."""
        self.make_client(timeout=0)
        self.assertEqual(self.bucket.timeout, 0)
        self.assertEqual(self.clock.getDelayedCalls(), [])
        d = self.bucket.get("k")
        e = self.bucket.endure("k", persist_to=0, replicate_to=0, timeout=3.0)
        m = self.bucket.get_multi(["a", "b"])
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.clock.advance(1e6)
        for x in (d, e, m):
            self.assertNoResult(x)
        # A method's own timeout still applies.
        t = self.bucket.get("t", timeout=1)
        self.clock.advance(1)
        self.failureResultOf(t, errors.TimeoutError)
        self.proto.connectionLost(Failure(ConnectionDone()))
        for x in (d, e, m):
            self.failureResultOf(x, errors.NetworkError)
        self.assertIdle()

    def test_protocol_timeout_none_disables_the_timeout(self):
        proto = BucketClientProtocol(clock=self.clock, timeout=None)
        proto.makeConnection(StringTransport())
        d = proto.request(Op.NOOP, None, b"")
        self.assertEqual(self.clock.getDelayedCalls(), [])
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(d, errors.NetworkError)

    def test_endure_timeout_covers_the_server_wait(self):
        self.make_client()
        d = self.bucket.endure("k", persist_to=0, replicate_to=0, timeout=3.0)
        req = self.one_request()
        self.assertEqual(ENDURE_BODY.unpack(req.value), (3000, 10))
        self.clock.advance(3.0 + 2.5 - 0.01)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        self.failureResultOf(d, errors.TimeoutError)
        self.assertIdle()


class CancelTests(ClientTestBase):

    def test_cancel(self):
        self.make_client()
        d = self.bucket.get("k")
        other = self.bucket.get("other")
        req, other_req = self.sent(self.transport)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(list(self.proto._pending), [other_req.opaque])
        self.assertEqual(len(self.clock.getDelayedCalls()), 1)  # other's timer only
        self.proto.dataReceived(response(Op.GET, req.opaque, body=b"late"))
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(response(Op.GET, other_req.opaque, body=b"o"))
        self.assertEqual(self.successResultOf(other).raw, b"o")
        self.assertIdle()

    def test_cancel_after_result_is_harmless(self):
        self.make_client()
        d = self.bucket.noop()
        self.proto.dataReceived(response(Op.NOOP, self.one_request().opaque))
        d.cancel()
        self.assertIsNone(self.successResultOf(d))
        self.assertIdle()

    def test_cancel_multi(self):
        self.make_client()
        d = self.bucket.get_multi(["a", "b", "c"])
        self.assertEqual(len(self.sent(self.transport)), 3)  # pipelined
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIdle()

    def test_cancel_multi_cancels_every_key(self):
        """
        Cancelling a multi-key call takes every key still out off the
        pending table (its late reply finds nobody), stops the timer, and
        leaves other requests alone.
        """
        self.make_client()
        other = self.bucket.get("other")
        d = self.bucket.get_multi(["a", "b", "c"])
        reqs = self.sent(self.transport)
        self.assertEqual(len(self.proto._pending), 4)
        # "a" is answered before the cancel.
        self.proto.dataReceived(response(Op.GET, reqs[1].opaque, body=b"a"))
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(list(self.proto._pending), [reqs[0].opaque])
        # The late replies go nowhere, harmlessly.
        self.proto.dataReceived(b"".join(response(Op.GET, r.opaque, body=b"late")
                                         for r in reqs[2:]))
        self.assertFalse(self.transport.disconnecting)
        self.proto.dataReceived(response(Op.GET, reqs[0].opaque, body=b"o"))
        self.assertEqual(self.successResultOf(other).raw, b"o")
        self.assertIdle()

    def test_cancel_multi_with_a_key_that_failed_before_sending(self):
        self.make_client()
        d = self.bucket.upsert_multi({"a": 1, "big": b"x" * 1001, "c": 3})
        self.assertEqual(len(self.sent(self.transport)), 2)  # "big" is never sent
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIdle()

    def test_cancel_multi_twice_and_after_its_result(self):
        self.make_client()
        d = self.bucket.get_multi(["a", "b"])
        reqs = self.sent(self.transport)
        self.proto.dataReceived(b"".join(response(Op.GET, r.opaque, body=b"v") for r in reqs))
        d.cancel()
        self.assertEqual(len(self.successResultOf(d)), 2)
        d = self.bucket.get_multi(["a", "b"])
        d.cancel()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIdle()

    def test_multi_timeout(self):
        """A multi-key call times out key by key: the answered keys keep their results."""
        self.make_client()
        d = self.bucket.get_multi(["a", "b", "c"])
        reqs = self.sent(self.transport)
        self.proto.dataReceived(response(Op.GET, reqs[0].opaque, body=b"a"))
        self.clock.advance(2.49)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        f = self.failureResultOf(d, errors.TimeoutError)
        self.assertEqual(f.value.key, "b")  # the first failed key, in key order
        res = f.value.all_results
        self.assertEqual(res["a"].raw, b"a")
        self.assertEqual([(res[k].success, res[k].rc) for k in ("b", "c")],
                         [(False, RC.TIMEOUT)] * 2)
        self.assertIdle()
        # Late replies are harmless.
        self.proto.dataReceived(b"".join(response(Op.GET, r.opaque) for r in reqs[1:]))
        self.assertFalse(self.transport.disconnecting)
        self.assertIdle()

    def test_multi_timeout_with_mixed_single_requests(self):
        self.make_client()
        single = self.bucket.get("s", timeout=1)
        multi = self.bucket.get_multi(["a", "b"])
        self.clock.advance(1)
        self.failureResultOf(single, errors.TimeoutError)
        self.assertNoResult(multi)
        self.clock.advance(1.5)
        self.failureResultOf(multi, errors.TimeoutError)
        self.assertIdle()


class ConnectionLossTests(ClientTestBase):

    def test_loss_fails_everything_in_flight(self):
        self.make_client()
        ds = [self.bucket.get("a"), self.bucket.upsert("b", 1), self.bucket.stats()]
        self.proto.connectionLost(Failure(ConnectionLost("cable cut")))
        fs = [self.failureResultOf(d, errors.NetworkError) for d in ds]
        self.assertEqual([f.value.key for f in fs], ["a", "b", None])
        self.assertIn("cable cut", fs[0].value.message)
        self.assertIdle()

    def test_requests_after_loss_fail_immediately(self):
        self.make_client()
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.transport.clear()
        for d in (self.bucket.get("a"), self.bucket.counter("c"), self.bucket.noop(),
                  self.bucket.get_multi(["x", "y"])):
            self.failureResultOf(d, errors.NetworkError)
        self.assertEqual(self.transport.value(), b"")
        self.assertIdle()

    def test_loss_during_handshake(self):
        proto, transport = self.make_client(hello=False)
        ready = proto.when_ready()
        proto.connectionLost(Failure(ConnectionDone()))
        self.failureResultOf(ready, errors.NetworkError)
        self.assertIdle()

    def test_close(self):
        self.make_client()
        d = self.bucket.get("a")
        closed = self.bucket.close()
        self.assertTrue(self.transport.disconnecting)
        self.assertNoResult(closed)
        self.proto.connectionLost(Failure(ConnectionDone()))
        self.successResultOf(closed)
        self.failureResultOf(d, errors.NetworkError)
        self.failureResultOf(self.bucket.get("a"), errors.NetworkError)
        self.successResultOf(self.bucket.close())
        self.assertIdle()


class ResponseTests(ClientTestBase):

    def setUp(self):
        ClientTestBase.setUp(self)
        self.make_client()

    def test_out_of_order_replies_are_matched_by_opaque(self):
        ds = {k: self.bucket.get(k) for k in ("a", "b", "c")}
        reqs = {r.key: r for r in self.sent(self.transport)}
        self.assertEqual(len({r.opaque for r in reqs.values()}), 3)
        for k in (b"c", b"a", b"b"):
            self.proto.dataReceived(response(Op.GET, reqs[k].opaque, body=b'"%s!"' % k,
                                             flags=FMT_JSON, cas=ord(k)))
        for k, d in ds.items():
            r = self.successResultOf(d)
            self.assertEqual((r.key, r.value, r.cas), (k, k + "!", ord(k)))
        self.assertIdle()

    def test_multi_error_is_the_first_failed_key_in_key_order(self):
        """
        Regression: a key refused before sending (a bad key, a value too big)
        ranked after every key sent, so a later key's server error was raised
        instead of it.  Key order, as gather_results and the other buckets.
        """
        d = self.bucket.upsert_multi({"a": 1, "big": b"x" * 1001, "c": 3})
        reqs = self.sent(self.transport)
        self.assertEqual([r.key for r in reqs], [b"a", b"c"])
        self.proto.dataReceived(response(Op.UPSERT, reqs[0].opaque, cas=1) +
                                response(Op.UPSERT, reqs[1].opaque, RC.KEY_EEXISTS))
        e = self.failureResultOf(d, errors.TooBigError).value
        self.assertEqual(e.key, "big")
        self.assertEqual([e.all_results[k].rc for k in ("a", "big", "c")],
                         [0, RC.E2BIG, RC.KEY_EEXISTS])
        # Without GET_MULTI, get_multi likewise.
        d = self.bucket.get_multi(["a", "", "c"])
        reqs = self.sent(self.transport)
        self.proto.dataReceived(response(Op.GET, reqs[0].opaque, body=b"A") +
                                response(Op.GET, reqs[1].opaque, RC.KEY_ENOENT))
        self.assertEqual(self.failureResultOf(d, errors.ArgumentError).value.key, "")
        self.assertIdle()

    def test_replies_in_one_chunk(self):
        ds = [self.bucket.noop() for _ in range(5)]
        reqs = self.sent(self.transport)
        self.proto.dataReceived(b"".join(response(Op.NOOP, r.opaque) for r in reversed(reqs)))
        for d in ds:
            self.assertIsNone(self.successResultOf(d))
        self.assertIdle()

    def test_reply_split_byte_by_byte(self):
        d = self.bucket.get("k")
        data = response(Op.GET, self.one_request().opaque, body=b"value", flags=FMT_UTF8)
        for i in range(len(data)):
            self.assertNoResult(d)
            self.proto.dataReceived(data[i:i + 1])
        self.assertEqual(self.successResultOf(d).value, "value")

    def test_quiet_get_miss(self):
        d = self.bucket.get("k", quiet=True)
        req = self.one_request()
        self.assertEqual(req.options & OPT_QUIET, OPT_QUIET)
        self.proto.dataReceived(response(Op.GET, req.opaque, RC.KEY_ENOENT))
        r = self.successResultOf(d)
        self.assertIsInstance(r, ValueResult)
        self.assertEqual((r.key, r.success, r.value, r.rc), ("k", False, None, RC.KEY_ENOENT))

    def test_quiet_gat_miss(self):
        d = self.bucket.get("k", ttl=10, quiet=True)
        req = self.one_request()
        self.assertEqual((req.opcode, req.ttl), (Op.GAT, 10))
        self.proto.dataReceived(response(Op.GAT, req.opaque, RC.KEY_ENOENT))
        self.assertFalse(self.successResultOf(d).success)

    def test_quiet_remove_miss(self):
        d = self.bucket.remove("k", quiet=True)
        req = self.one_request()
        self.assertEqual(req.options & OPT_QUIET, OPT_QUIET)
        self.proto.dataReceived(response(Op.REMOVE, req.opaque, RC.KEY_ENOENT))
        r = self.successResultOf(d)
        self.assertIsInstance(r, OperationResult)
        self.assertEqual((r.key, r.success, r.rc), ("k", False, RC.KEY_ENOENT))

    def test_quiet_covers_only_misses(self):
        d = self.bucket.get("k", quiet=True)
        self.proto.dataReceived(response(Op.GET, self.one_request().opaque, RC.ETMPFAIL))
        self.failureResultOf(d, errors.TemporaryFailError)

    def test_loud_miss(self):
        d = self.bucket.get("k")
        req = self.one_request()
        self.assertEqual(req.options, 0)
        self.proto.dataReceived(response(Op.GET, req.opaque, RC.KEY_ENOENT, body=b"gone"))
        f = self.failureResultOf(d, errors.NotFoundError)
        self.assertEqual((f.value.key, f.value.message, f.value.rc), ("k", "gone", 1))

    def test_status_codes_become_named_errors(self):
        table = [(RC.KEY_ENOENT, errors.NotFoundError), (RC.KEY_EEXISTS, errors.KeyExistsError),
                 (RC.E2BIG, errors.TooBigError), (RC.EINVAL, errors.ArgumentError),
                 (RC.NOT_STORED, errors.NotStoredError),
                 (RC.DELTA_BADVAL, errors.DeltaBadvalError),
                 (RC.UNKNOWN_COMMAND, errors.UnknownCommandError),
                 (RC.EINTERNAL, errors.InternalError),
                 (RC.ETMPFAIL, errors.TemporaryFailError),
                 (RC.DURABILITY_IMPOSSIBLE, errors.DurabilityError),
                 (RC.PROTOCOL_ERROR, errors.ProtocolError), (0x99, errors.CouchbaseError)]
        for status, exc in table:
            d = self.bucket.upsert("k", "v")
            self.proto.dataReceived(response(Op.UPSERT, self.one_request().opaque, status,
                                             body=b"msg \xe2\x9c\x93"))
            f = self.failureResultOf(d, exc)
            self.assertIs(type(f.value), exc)
            self.assertEqual((f.value.rc, f.value.key, f.value.message),
                             (status, "k", "msg \u2713"))
        self.assertFalse(self.transport.disconnecting)
        self.assertIdle()

    def test_result_shapes(self):
        d = self.bucket.upsert("k", {"a": 1}, ttl=5)
        req = self.one_request()
        self.assertEqual((req.opcode, req.key, req.value, req.flags, req.ttl),
                         (Op.UPSERT, b"k", b'{"a":1}', FMT_JSON, 5))
        self.proto.dataReceived(response(Op.UPSERT, req.opaque, cas=77, seqno=3))
        r = self.successResultOf(d)
        self.assertEqual((r.key, r.cas, r.seqno, r.success), ("k", 77, 3, True))

        d = self.bucket.counter("c", delta=-3, initial=10)
        req = self.one_request()
        self.assertEqual(req.options, OPT_DECREMENT | OPT_INITIAL)
        self.assertEqual(COUNTER_BODY.unpack(req.value), (3, 10))
        self.proto.dataReceived(response(Op.COUNTER, req.opaque, body=b"7", cas=5))
        self.assertEqual(self.successResultOf(d).value, 7)

        d = self.bucket.stats()
        self.proto.dataReceived(response(Op.STATS, self.one_request().opaque,
                                         body=b'{"items": 3}'))
        self.assertEqual(self.successResultOf(d), {"items": 3})

        d = self.bucket.endure("k", persist_to=0, replicate_to=0, check_removed=True)
        req = self.one_request()
        self.assertEqual(req.options, OPT_CHECK_REMOVED)
        self.proto.dataReceived(response(Op.ENDURE, req.opaque, cas=9))
        self.assertEqual(self.successResultOf(d).cas, 9)
        self.assertIdle()

    def test_unknown_opaque_is_ignored(self):
        self.proto.dataReceived(response(Op.GET, 123456, body=b"?"))
        self.assertFalse(self.transport.disconnecting)
        d = self.bucket.noop()
        self.proto.dataReceived(response(Op.NOOP, self.one_request().opaque))
        self.assertIsNone(self.successResultOf(d))


class MalformedResponseTests(ClientTestBase):

    def setUp(self):
        ClientTestBase.setUp(self)
        self.make_client()
        self.inflight = [self.bucket.get("a"), self.bucket.upsert("b", 1)]
        self.reqs = self.sent(self.transport)

    def assertAllFailedAndClosed(self, *exc_types):
        for d in self.inflight:
            self.failureResultOf(d, *exc_types)
        self.assertTrue(self.transport.disconnected)  # aborted
        self.assertIdle()
        self.assertEqual(len(self.client_warnings()), 1)
        # Later requests fail at once.
        self.failureResultOf(self.bucket.get("a"), errors.NetworkError)
        self.assertEqual(self.transport.value(), b"")

    def test_bad_magic(self):
        payload = bytearray(encode_response(Op.GET, self.reqs[0].opaque))
        payload[0] = 0x00
        self.proto.dataReceived(netstring(bytes(payload)))
        self.assertAllFailedAndClosed(errors.NetworkError)

    def test_short_response(self):
        self.proto.dataReceived(netstring(encode_response(Op.GET, 0)[:27]))
        self.assertAllFailedAndClosed(errors.NetworkError)

    def test_malformed_netstring(self):
        self.proto.dataReceived(b"12x:")
        self.assertAllFailedAndClosed(errors.NetworkError)

    def test_oversized_netstring(self):
        self.proto.dataReceived(b"99999999999:")
        self.assertAllFailedAndClosed(errors.NetworkError)
        self.assertLess(buffered(self.proto), 1000)  # no more than the last reply



class MalformedReplyBodyTests(ClientTestBase):

    def test_malformed_reply_body(self):
        """
        Regression: a reply whose body could not be decoded (a non-numeric
        COUNTER value, STATS that is not JSON) raised out of dataReceived
        after its request had been taken off the pending table: that
        Deferred never fired and its timer was already cancelled (a hang).
        """
        for opcode, call, body in ((Op.COUNTER, lambda b: b.counter("c"), b"12abc"),
                                   (Op.STATS, lambda b: b.stats(), b"{nope"),
                                   (Op.STATS, lambda b: b.stats(), b"\xff\xfe")):
            self.make_client()
            others = [self.bucket.get("x"), self.bucket.noop()]
            d = call(self.bucket)
            req = self.sent(self.transport)[-1]
            self.proto.dataReceived(response(opcode, req.opaque, body=body))
            self.failureResultOf(d, errors.ProtocolError)
            for o in others:
                self.failureResultOf(o, errors.NetworkError)
            self.assertTrue(self.transport.disconnected)
            self.assertIdle()
            self.assertEqual(len(self.client_warnings()), 1)
            del self.events[:]


class ClientFactoryTests(ClientTestBase):

    def build(self, factory):
        proto = factory.buildProtocol(ADDR)
        transport = StringTransport()
        proto.makeConnection(transport)
        [hello] = self.sent(transport)
        self.assertEqual(hello.opcode, Op.HELLO)
        return proto, transport, hello

    def test_deferred_fires_after_hello(self):
        factory = BucketClientFactory(clock=self.clock, timeout=4.0)
        proto, transport, hello = self.build(factory)
        self.assertNoResult(factory.deferred)
        proto.dataReceived(response(Op.HELLO, hello.opaque, body=json.dumps(HELLO_INFO).encode()))
        bucket = self.successResultOf(factory.deferred)
        self.assertIsInstance(bucket, RemoteBucket)
        self.assertTrue(IBucket.providedBy(bucket))
        self.assertIs(bucket._proto, proto)
        self.assertEqual(bucket.timeout, 4.0)
        self.assertIs(proto.factory, factory)
        # A later loss is no second result.
        proto.connectionLost(Failure(ConnectionDone()))
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError()))
        self.assertIdle(proto)

    def test_client_connection_failed(self):
        factory = BucketClientFactory(clock=self.clock)
        factory.clientConnectionFailed(None, Failure(ConnectionRefusedError("nobody home")))
        f = self.failureResultOf(factory.deferred, errors.ConnectError)
        self.assertIn("nobody home", f.value.message)

    def test_connection_drops_before_hello(self):
        factory = BucketClientFactory(clock=self.clock)
        proto, transport, hello = self.build(factory)
        proto.connectionLost(Failure(ConnectionLost()))
        self.failureResultOf(factory.deferred, errors.ConnectError)
        self.assertIdle(proto)

    def test_hello_timeout(self):
        factory = BucketClientFactory(clock=self.clock, timeout=1.0)
        proto, transport, hello = self.build(factory)
        self.clock.advance(1.0)
        self.failureResultOf(factory.deferred, errors.ConnectError)
        self.assertTrue(transport.disconnected)
        self.assertIdle(proto)

    def test_hello_refused(self):
        factory = BucketClientFactory(clock=self.clock)
        proto, transport, hello = self.build(factory)
        proto.dataReceived(response(Op.HELLO, hello.opaque, RC.UNKNOWN_COMMAND))
        self.failureResultOf(factory.deferred, errors.ConnectError)
        self.assertTrue(transport.disconnected)

    def test_memory_reactor_connectTCP(self):
        mreactor = MemoryReactorClock()
        factory = BucketClientFactory(clock=mreactor)
        connector = mreactor.connectTCP("127.0.0.1", 11222, factory)
        [(host, port, f, _timeout, _bind)] = mreactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 11222))
        self.assertIs(f, factory)
        self.assertNoResult(factory.deferred)
        # Complete the connection with a real server, in memory.
        server_factory = BucketServerFactory(EmbeddedBucket(clock=mreactor, pager_interval=0))
        server = server_factory.buildProtocol(ADDR)
        client = factory.buildProtocol(connector.getDestination())
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                             client, iosim.FakeTransport(client, isServer=False),
                             clock=mreactor)
        bucket = self.successResultOf(factory.deferred)
        d = bucket.upsert("k", {"n": 1})
        pump.flush()
        self.assertTrue(self.successResultOf(d).success)
        d = bucket.get("k")
        pump.flush()
        self.assertEqual(self.successResultOf(d).value, {"n": 1})
        closed = bucket.close()
        pump.flush()
        self.successResultOf(closed)
        self.assertEqual(server_factory.stats.connections, 0)
        self.assertEqual(mreactor.getDelayedCalls(), [])

    def test_memory_reactor_connection_refused(self):
        mreactor = MemoryReactorClock()
        factory = BucketClientFactory(clock=mreactor)
        connector = mreactor.connectTCP("127.0.0.1", 11222, factory)
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))
        self.failureResultOf(factory.deferred, errors.ConnectError)


@implementer_only(IBucket)  # no ISyncBucket: the server calls get()
class PendingServerBucket(EmbeddedBucket):
    """Embedded, except that GET of b"slow" answers only when told to."""

    def __init__(self, *a, **kw):
        EmbeddedBucket.__init__(self, *a, **kw)
        self.slow = []

    def get(self, key, ttl=0, quiet=False):
        if key == b"slow":
            d = Deferred()
            self.slow.append(d)
            return d
        return EmbeddedBucket.get(self, key, ttl, quiet)


class InMemoryTests(ClientTestBase):
    """Client and server joined by an iosim pump."""

    def setUp(self):
        ClientTestBase.setUp(self)
        self.server_bucket = PendingServerBucket(clock=self.clock, pager_interval=0)
        self.server_factory = BucketServerFactory(self.server_bucket)
        server = self.server_factory.buildProtocol(ADDR)
        self.client_proto = BucketClientProtocol(clock=self.clock, timeout=2.5)
        self.pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                                  self.client_proto,
                                  iosim.FakeTransport(self.client_proto, isServer=False),
                                  clock=self.clock)
        self.server = server
        self.bucket = RemoteBucket(self.client_proto)
        self.proto = self.client_proto

    def test_round_trips(self):
        b = self.bucket
        d = b.upsert("k", "v")
        self.pump.flush()
        cas = self.successResultOf(d).cas
        d = b.lock("k", ttl=5)
        self.pump.flush()
        lock = self.successResultOf(d)
        self.assertEqual(lock.value, "v")
        d = b.upsert("k", "w")
        self.pump.flush()
        self.failureResultOf(d, errors.TemporaryFailError)
        d = b.unlock("k", lock.cas)
        self.pump.flush()
        self.successResultOf(d)
        self.assertNotEqual(lock.cas, cas)
        d = b.counter("n", 5, initial=1)
        self.pump.flush()
        self.assertEqual(self.successResultOf(d).value, 1)
        d = b.counter("n", 5)
        self.pump.flush()
        self.assertEqual(self.successResultOf(d).value, 6)
        d = b.insert("k", "x")
        self.pump.flush()
        self.failureResultOf(d, errors.KeyExistsError)
        d = b.stats()
        self.pump.flush()
        self.assertEqual(self.successResultOf(d)["connections"], 1)
        self.assertIdle()

    def test_multi_ops_are_pipelined(self):
        d = self.bucket.upsert_multi({"k%d" % i: i for i in range(10)})
        # Every request is written before any reply comes back.
        written = NetstringDecoder(1 << 20).feed(b"".join(self.client_proto.transport.stream))
        self.assertEqual(sorted(decode_request(p).key for p in written),
                         sorted(b"k%d" % i for i in range(10)))
        self.assertEqual(len(self.client_proto._pending), 10)
        self.pump.flush()
        self.assertTrue(self.successResultOf(d).all_ok)
        d = self.bucket.get_multi(["k%d" % i for i in range(10)] + ["missing"], quiet=True)
        self.assertEqual(len(self.client_proto._pending), 1)  # one GET_MULTI for them all
        self.pump.flush()
        res = self.successResultOf(d)
        self.assertEqual([res["k%d" % i].value for i in range(10)], list(range(10)))
        self.assertFalse(res["missing"].success)
        d = self.bucket.get_multi(["k1", "missing"])
        self.pump.flush()
        f = self.failureResultOf(d, errors.NotFoundError)
        self.assertEqual(f.value.all_results["k1"].value, 1)
        self.assertIdle()

    def test_timeout_then_late_server_answer(self):
        d = self.bucket.get("slow", timeout=1.0)
        self.pump.flush()
        self.assertEqual(len(self.server_bucket.slow), 1)
        self.clock.advance(1.0)
        self.failureResultOf(d, errors.TimeoutError)
        self.assertIdle()
        self.server_bucket.slow[0].callback(ValueResult(b"slow", b"late", 0, 1))
        self.pump.flush()
        self.assertIdle()
        d = self.bucket.noop()
        self.pump.flush()
        self.successResultOf(d)

    def test_server_drops_connection(self):
        ds = [self.bucket.get("slow"), self.bucket.get("slow")]
        self.pump.flush()
        self.server.transport.loseConnection()
        self.pump.flush()
        for d in ds:
            self.failureResultOf(d, errors.NetworkError)
        self.failureResultOf(self.bucket.noop(), errors.NetworkError)
        self.assertIdle()
        self.assertEqual(self.server_factory.stats.connections, 0)
        for d in self.server_bucket.slow:  # the server's late answers go nowhere
            d.callback(ValueResult(b"slow", b"late", 0, 1))


class ConnectTests(ClientTestBase):

    def test_bad_endpoint_string(self):
        for endpoint in ("bogus:x", "", "tcp", "tcp:host", "tcp:127.0.0.1:notaport",
                         "tcp:127.0.0.1:1:foo=bar", "unix"):
            f = self.failureResultOf(connect(MemoryReactorClock(), endpoint),
                                     errors.ArgumentError)
            self.assertIn(repr(endpoint), f.value.message)

    def test_connection_refused(self):
        mreactor = MemoryReactorClock()
        d = connect(mreactor, "tcp:127.0.0.1:11222")
        [(host, port, f, _timeout, _bind)] = mreactor.tcpClients
        self.assertEqual((host, port), ("127.0.0.1", 11222))
        self.assertNoResult(d)
        f.clientConnectionFailed(mreactor.connectors[0], Failure(ConnectionRefusedError()))
        self.failureResultOf(d, errors.ConnectError)

    def test_connect_in_memory(self):
        mreactor = MemoryReactorClock()
        d = connect(mreactor, "tcp:127.0.0.1:11222", timeout=3.0)
        server_factory = BucketServerFactory(EmbeddedBucket(clock=mreactor, pager_interval=0))
        pump = complete_connection(mreactor, server_factory)
        bucket = self.successResultOf(d)
        self.assertEqual(bucket.timeout, 3.0)
        g = bucket.get("missing")
        pump.flush()
        self.failureResultOf(g, errors.NotFoundError)
        closed = bucket.close()
        pump.flush()
        self.successResultOf(closed)


def complete_connection(mreactor, server_factory, index=-1):
    """Join the latest connectTCP attempt to a server protocol, in memory."""
    host, port, factory = mreactor.tcpClients[index][:3]
    client = factory.buildProtocol(IPv4Address("TCP", host, port))
    server = server_factory.buildProtocol(ADDR)
    return iosim.connect(server, iosim.FakeTransport(server, isServer=True),
                         client, iosim.FakeTransport(client, isServer=False), clock=mreactor)


class ReconnectInMemoryTests(ClientTestBase):
    """connect(..., reconnect=True) on a MemoryReactorClock: time is the test's."""

    def setUp(self):
        ClientTestBase.setUp(self)
        self.mreactor = MemoryReactorClock()
        self.server_factory = BucketServerFactory(
            PendingServerBucket(clock=self.mreactor, pager_interval=0))
        d = connect(self.mreactor, "tcp:127.0.0.1:11222", reconnect=True, timeout=5.0)
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.bucket = self.successResultOf(d)
        self.addCleanup(self.close)

    def close(self):
        d = self.bucket.close()
        self.pump.flush()
        self.successResultOf(d)
        self.assertEqual(self.mreactor.getDelayedCalls(), [])

    def drop(self):
        self.pump.server.transport.loseConnection()
        self.pump.flush()
        self.assertIsNone(self.bucket._proto)
        self.assertEqual(len(self.mreactor.tcpClients), 1)

    def retry(self, within=0.225):
        """Let the next reconnection attempt happen: the first comes within 0.225 s."""
        n = len(self.mreactor.tcpClients)
        self.mreactor.advance(within)
        self.assertEqual(len(self.mreactor.tcpClients), n + 1)

    def refuse(self):
        """The latest connection attempt fails."""
        factory = self.mreactor.tcpClients[-1][2]
        factory.clientConnectionFailed(self.mreactor.connectors[-1],
                                       Failure(ConnectionRefusedError()))

    def test_reconnect_gap_longer_than_the_default_timeout(self):
        """
        Regression: connect(..., reconnect=True) used ClientService's default
        backoff, whose first attempt comes 1.5 to 2.5 s after a loss: as long
        as the default operation timeout, so operations made in the gap timed
        out just before the reconnection.  The first attempt now comes within
        0.225 s.
        """
        self.drop()
        [retry] = self.mreactor.getDelayedCalls()
        self.assertGreaterEqual(retry.getTime() - self.mreactor.seconds(), 0.15)
        self.assertLessEqual(retry.getTime() - self.mreactor.seconds(), 0.225)
        d = self.bucket.upsert("k", "v", timeout=client_module.DEFAULT_TIMEOUT)
        self.retry()
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.assertTrue(self.successResultOf(d).success)

    def test_backoff_after_failed_attempts(self):
        self.drop()
        d = self.bucket.upsert("k", "v")  # timeout: 5 s
        self.retry()
        self.refuse()
        self.retry(0.3375)  # 0.1 * 1.5 ** 2, plus up to 50%
        self.refuse()
        self.retry(0.507)
        self.assertNoResult(d)
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.assertTrue(self.successResultOf(d).success)

    def test_reconnect_delays(self):
        """_reconnect_delay: 0.1 * 1.5 ** attempt, at most 10 s, plus up to 50% jitter."""
        delay = client_module._reconnect_delay
        for r, scale in ((0.0, 1.0), (0.5, 1.25), (1.0, 1.5)):
            self.patch(client_module, "random", type("R", (), {"random": staticmethod(
                lambda r=r: r)}))
            self.assertAlmostEqual(delay(1), 0.15 * scale)
            self.assertAlmostEqual(delay(2), 0.225 * scale)
            self.assertAlmostEqual(delay(11), 0.1 * 1.5 ** 11 * scale)
            for attempt in (12, 100, 10000):
                self.assertAlmostEqual(delay(attempt), 10.0 * scale)

    def test_no_timeout_in_the_gap(self):
        """timeout=0: an operation waits for the reconnection however long it takes."""
        self.drop()
        d = self.bucket.upsert("k", "v", timeout=0)
        self.assertEqual(len(self.mreactor.getDelayedCalls()), 1)  # the service's retry
        self.retry()
        self.mreactor.advance(1000)
        self.assertNoResult(d)
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.assertTrue(self.successResultOf(d).success)
        self.assertEqual(self.bucket._proto._pending, {})
        self.assertEqual(self.mreactor.getDelayedCalls(), [])

    def test_cancel_multi_in_the_gap(self):
        self.drop()
        d = self.bucket.get_multi(["a", "b", "c"])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(len(self.mreactor.getDelayedCalls()), 1)  # the service's retry
        self.retry()
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.assertEqual(self.bucket._proto._pending, {})
        self.assertEqual(self.mreactor.getDelayedCalls(), [])

    def test_multi_timeout_in_the_gap(self):
        self.drop()
        d = self.bucket.get_multi(["a", "b"])  # timeout: 5 s
        self.retry()  # an attempt that never completes
        self.mreactor.advance(4.7)
        self.assertNoResult(d)
        self.mreactor.advance(0.1)
        f = self.failureResultOf(d, errors.TimeoutError)
        self.assertEqual([r.rc for r in f.value.all_results.values()], [RC.TIMEOUT] * 2)

    def test_operations_in_the_gap_wait_for_the_new_connection(self):
        d = self.bucket.upsert("k", "v")
        self.pump.flush()
        self.successResultOf(d)
        self.drop()
        up = self.bucket.upsert("k", "w")
        get = self.bucket.get("k")
        self.retry()
        self.assertNoResult(get)
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.successResultOf(up)
        self.assertEqual(self.successResultOf(get).value, "w")
        self.assertIsNotNone(self.bucket._proto)

    def test_gap_timeout_uses_the_given_reactor(self):
        """
        Regression: the wait for a reconnection timed out on the global
        reactor, not on the reactor given to connect(): with a fake clock the
        operation never timed out and a DelayedCall leaked into the real
        reactor.
        """
        self.drop()
        d = self.bucket.get("k", timeout=1.0)
        self.mreactor.advance(0.999)
        self.assertNoResult(d)
        self.mreactor.advance(0.001)
        self.failureResultOf(d, errors.TimeoutError)
        self.assertEqual(reactor.getDelayedCalls(), [])

    def test_cancel_in_the_gap(self):
        """
        Regression: cancelling an operation waiting for a reconnection
        errbacked it with TimeoutError instead of CancelledError.
        """
        self.drop()
        d = self.bucket.get("k")
        d.cancel()
        self.failureResultOf(d, CancelledError)
        # Only the service's retry is left on the clock.
        self.assertEqual(len(self.mreactor.getDelayedCalls()), 1)

    def test_cancel_after_reconnection(self):
        self.drop()
        d = self.bucket.get("slow")
        self.retry()
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.assertEqual(len(self.server_factory.bucket.slow), 1)  # sent, unanswered
        proto = self.bucket._proto
        self.assertEqual(len(proto._pending), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(proto._pending, {})
        self.assertEqual(self.mreactor.getDelayedCalls(), [])

    def test_close_in_the_gap(self):
        self.drop()
        d = self.bucket.get("k")
        self.close()
        self.failureResultOf(d, errors.NetworkError)
        self.failureResultOf(self.bucket.get("k"), errors.NetworkError)

    def test_retry_from_the_loss_errback(self):
        """
        Regression: an operation made while the lost connection was being
        torn down (from the errback of an in-flight request, the natural
        place to retry) got the dead connection back from the service and
        failed at once with NetworkError instead of waiting for the new one.
        """
        retried = []

        def retry(f):
            f.trap(errors.NetworkError)
            d = self.bucket.upsert("k", "again")
            retried.append(d)
            return d

        d = self.bucket.get("k", timeout=5).addErrback(retry)
        # The server goes away before it can answer.
        self.pump.server.transport.loseConnection()
        self.pump.flush()
        self.assertEqual(len(retried), 1)
        self.assertNoResult(d)
        self.retry()
        self.pump = complete_connection(self.mreactor, self.server_factory)
        self.assertTrue(self.successResultOf(d).success)
        self.assertEqual(
            self.server_factory.bucket.get_sync("k").value, "again")


class FirstConnectionRefusedTests(unittest.TestCase):
    """
    Regression (issue 13): connect(..., reconnect=True) with no server
    errbacked RuntimeError ("attempting to reentrantly run _Client.stop")
    instead of ConnectError, and left the retry loop running.
    """

    def refuse_first(self, reconnect):
        mreactor = MemoryReactorClock()
        d = connect(mreactor, "tcp:127.0.0.1:11222", reconnect=reconnect)
        self.assertEqual(len(mreactor.tcpClients), 1)
        factory = mreactor.tcpClients[0][2]
        factory.clientConnectionFailed(mreactor.connectors[0],
                                       Failure(ConnectionRefusedError()))
        mreactor.advance(0)
        f = self.failureResultOf(d, errors.ConnectError)
        self.assertIn("127.0.0.1:11222", f.value.message)
        self.assertEqual(mreactor.getDelayedCalls(), [])
        mreactor.advance(60)
        self.assertEqual(len(mreactor.tcpClients), 1)

    def test_reconnect_first_connection_refused_errbacks_connect_error(self):
        self.refuse_first(reconnect=True)

    def test_first_connection_refused_errbacks_connect_error(self):
        self.refuse_first(reconnect=False)

    @inlineCallbacks
    def test_reconnect_refused_loopback_port_errbacks_connect_error(self):
        """The same against a real loopback port where nothing listens."""
        port = reactor.listenTCP(0, TrackedServerFactory(EmbeddedBucket(pager_interval=0)),
                                 interface="127.0.0.1")
        number = port.getHost().port
        yield port.stopListening()
        before = set(reactor.getDelayedCalls())
        with self.assertRaises(errors.ConnectError):
            yield connect(reactor, "tcp:127.0.0.1:%d" % number, reconnect=True)
        self.assertEqual(set(reactor.getDelayedCalls()) - before, set())


class ReconnectLoopbackTests(unittest.TestCase):
    """connect(..., reconnect=True) against a real server over loopback TCP."""

    timeout = 20

    @inlineCallbacks
    def setUp(self):
        self.server_bucket = PendingServerBucket(pager_interval=0)
        self.factory = TrackedServerFactory(self.server_bucket)
        port = reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.addCleanup(self.stop_server, port)
        self.bucket = yield connect(reactor, "tcp:127.0.0.1:%d" % port.getHost().port,
                                    reconnect=True, timeout=5.0)
        self.addCleanup(self.bucket.close)

    @inlineCallbacks
    def stop_server(self, port):
        yield port.stopListening()
        yield defer.gatherResults(list(self.factory.live.values()))
        yield self.server_bucket.close()

    def kill_server_side(self):
        """Abort the server's end; fires once the client has seen the loss."""
        lost = Deferred()
        self.bucket._proto.on_lost(lambda _p: lost.callback(None))
        [server_proto] = list(self.factory.live)
        server_proto.transport.abortConnection()
        return lost

    @inlineCallbacks
    def test_operations_in_the_gap_succeed_after_reconnection(self):
        yield self.bucket.upsert("k", "v1")
        old = self.bucket._proto
        yield self.kill_server_side()
        # The gap: the client knows the connection is gone.
        self.assertIsNone(self.bucket._proto)
        up = self.bucket.upsert("k", "v2")
        get = self.bucket.get("k")
        yield up
        r = yield get
        self.assertEqual(r.value, "v2")
        self.assertIsNotNone(self.bucket._proto)
        self.assertIsNot(self.bucket._proto, old)
        self.assertEqual(self.factory.stats.total_connections, 2)

    @inlineCallbacks
    def test_in_flight_operation_fails_and_its_retry_succeeds(self):
        d = self.bucket.get("slow")  # the server never answers
        yield self.bucket.noop()  # the get has reached the server
        self.assertEqual(len(self.server_bucket.slow), 1)
        retry = d.addErrback(lambda f: (f.trap(errors.NetworkError),
                                        self.bucket.upsert("k", "v2"))[1])
        yield self.kill_server_side()
        r = yield retry
        self.assertTrue(r.success)
        self.assertEqual(self.server_bucket.get_sync("k").value, "v2")
