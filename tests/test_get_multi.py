"""
GET_MULTI (docs/protocol.rst, 3.2): one request for many keys.

The codec's bodies and reply frames, the shared request builder, the
server's handler (synchronous and Deferred paths, frame splitting, in-flight
accounting), the Twisted client (results, chunks, frames split anywhere,
timeouts, cancellation, loss between frames, fallback to a GET per key) and
the blocking client, and both clients against the per-key path they replace:
the same results, the same errors.
"""

import json
import socket
import struct
import threading

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure
from twisted.test import iosim
from twisted.trial import unittest

from txcb.client import requests as _rq
from txcb import errors
from txcb.client.blocking import Bucket
from txcb.client.remote import BucketClientProtocol, RemoteBucket
from txcb.wire.netstring import (
    HEADER_LEN, MAX_MULTI, MULTI_ENTRY, MULTI_FRAME_BYTES, MULTI_MORE, FrameError,
    NetstringDecoder, Op, decode_multi_keys, decode_multi_reply, decode_request,
    decode_response, encode_multi_keys, encode_multi_reply, encode_request, encode_response,
    netstring)
from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import RC
from txcb.formats import DEFAULT_TRANSCODER, FMT_BYTES
from txcb.results import MultiResult, ValueResult
from txcb.server.netstring import BucketServerFactory

from tests.support.netstring import SERVER_ADDR as ADDR
from tests.support.netstring import DeferredOnlyBucket
from tests.support.netstring import (
    ClientTestBase, DelegatingBucket, ServerTestBase, frame, response)
from tests.support.sync_contract import ThreadedServer

U64 = 2 ** 64 - 1
HELLO_MULTI = {"server": "txcb/test", "protocol": 1, "max_value_size": 1000,
               "max_frame": 1278, "max_inflight": 16, "get_multi": MAX_MULTI}


def entries_of(payloads):
    """Every entry of a reply's frames, and their MORE flags."""
    out, more = [], []
    for p in payloads:
        res = decode_response(p)
        out.extend(decode_multi_reply(res.body))
        more.append(res.flags & MULTI_MORE)
    return out, more


def describe(outcome, base=0):
    """
    A get_multi outcome (a MultiResult or an error), comparable with ==;
    CAS values relative to ``base`` (that of another bucket in the same state).
    """
    def results(r):
        return {k: (type(v).__name__, v.rc, v.raw, v.flags,
                    v.cas - base if v.cas not in (0, U64) else v.cas,
                    v.value if v.success else None) for k, v in r.items()}
    if isinstance(outcome, BaseException):
        return (type(outcome).__name__, outcome.key, outcome.message, outcome.rc,
                results(outcome.all_results))
    return ("ok", results(outcome))


# -- the codec ----------------------------------------------------------------

class CodecTests(unittest.SynchronousTestCase):

    def test_keys_round_trip(self):
        for keys in ([b"k"], [b"a", b"z" * 250, b"\x00,:\xff"], [b"%d" % i for i in range(4096)]):
            body = encode_multi_keys(keys)
            self.assertEqual(len(body), sum(len(k) + 1 for k in keys))
            self.assertEqual(decode_multi_keys(body), keys)
        self.assertEqual(encode_multi_keys([b"ab", b"c"]), b"\x02ab\x01c")

    def test_request_round_trip(self):
        payload = encode_request(Op.GET_MULTI, 7, value=encode_multi_keys([b"a", b"bc"]), ttl=9)
        self.assertEqual(payload[1], 0x30)
        self.assertEqual(struct.unpack_from("!H", payload, 6)[0], 0)  # keylen
        req = decode_request(payload)
        self.assertEqual((req.opcode, req.opaque, req.key, req.keys, req.ttl),
                         (Op.GET_MULTI, 7, b"", [b"a", b"bc"], 9))

    def test_illegal_bodies_name_the_problem(self):
        for body, text in ((b"", "not 0"), (b"\x01a\x00", "key 2 is empty"),
                           (b"\x03ab", "key 1 runs 1 bytes past"),
                           (b"\xfb" + b"x" * 251, "key 1 is 251 bytes"),
                           (b"\x01k" * (MAX_MULTI + 1), "more than 4096")):
            with self.assertRaises(FrameError) as cm:
                decode_multi_keys(body)
            self.assertEqual(cm.exception.status, RC.EINVAL)
            self.assertFalse(cm.exception.fatal)
            self.assertIn(text, str(cm.exception))

    def test_reply_round_trip_in_one_frame(self):
        entries = [(0, U64, 0xFFFFFFFF, b"\x00value,:"), (RC.KEY_ENOENT, 0, 0, b""),
                   (RC.ETMPFAIL, 0, 0, b"the key is locked"), (0, 1, 2, b"")]
        [payload] = encode_multi_reply(5, entries)
        res = decode_response(payload)
        self.assertEqual((res.opcode, res.status, res.opaque, res.cas, res.flags, res.seqno),
                         (Op.GET_MULTI, 0, 5, 0, 0, 0))
        self.assertEqual(decode_multi_reply(res.body), entries)
        self.assertEqual(decode_multi_reply(payload, HEADER_LEN), entries)
        self.assertEqual(len(res.body), sum(MULTI_ENTRY.size + len(e[3]) for e in entries))

    def test_reply_splits_at_the_limit(self):
        entries = [(0, i, i, b"v" * (i * 7 % 50)) for i in range(40)]
        for limit in (18, 40, 68, 100, 333, 2000):
            payloads = encode_multi_reply(9, entries, limit)
            got, more = entries_of(payloads)
            self.assertEqual(got, entries, limit)
            self.assertEqual(more, [1] * (len(payloads) - 1) + [0], limit)
            for p in payloads:
                body = decode_response(p).body
                n = len(decode_multi_reply(body))
                self.assertGreaterEqual(n, 1)
                self.assertTrue(len(body) <= limit or n == 1, (limit, len(body)))
            # Greedy: no frame could have taken the next frame's first entry.
            for a, b in zip(payloads, payloads[1:]):
                first = decode_multi_reply(decode_response(b).body)[0]
                self.assertGreater(len(a) - HEADER_LEN + 18 + len(first[3]), limit)

    def test_entry_over_the_limit_comes_alone(self):
        entries = [(0, 1, 1, b"a"), (0, 2, 2, b"b" * 500), (0, 3, 3, b"c")]
        payloads = encode_multi_reply(1, entries, 100)
        self.assertEqual([len(decode_multi_reply(decode_response(p).body)) for p in payloads],
                         [1, 1, 1])
        self.assertEqual(entries_of(payloads), (entries, [1, 1, 0]))

    def test_default_limit_is_one_mebibyte(self):
        self.assertEqual(MULTI_FRAME_BYTES, 1 << 20)
        entries = [(0, i, 0, b"x" * 300000) for i in range(7)]
        payloads = encode_multi_reply(1, entries)
        self.assertEqual([len(decode_multi_reply(decode_response(p).body)) for p in payloads],
                         [3, 3, 1])

    def test_malformed_reply_bodies(self):
        [payload] = encode_multi_reply(1, [(0, 1, 2, b"value"), (0, 3, 4, b"xy")])
        body = decode_response(payload).body
        for bad in (body[:-1], body[:17], body + b"\x00", body[:14] + b"\xff" + body[15:]):
            with self.assertRaises(FrameError) as cm:
                decode_multi_reply(bad)
            self.assertTrue(cm.exception.fatal)
        self.assertEqual(decode_multi_reply(b""), [])


# -- the shared request builder ------------------------------------------------

class RequestBuilderTests(unittest.SynchronousTestCase):

    def build(self, keys, max_keys=MAX_MULTI, max_body=1 << 20, ttl=0):
        results, errs = MultiResult(), {}
        chunks = _rq.get_multi_requests(keys, ttl, max_keys, max_body, results, errs)
        out = []
        for ks, fields in chunks:
            self.assertEqual(fields[:3], (Op.GET_MULTI, None, b""))
            self.assertEqual(fields[4:], (0, ttl, 0, 0, 0, 0))
            sent = decode_multi_keys(fields[3])
            self.assertEqual(len(sent), len(ks))
            out.append((ks, sent))
        return out, results, errs

    def test_one_request(self):
        keys = ["a", "é" * 125, "k" * 250]
        chunks, results, errs = self.build(keys, ttl=30)
        self.assertEqual(chunks, [(keys, [b"a", "é".encode() * 125, b"k" * 250])])
        self.assertEqual((results, errs), ({}, {}))
        chunks, _, _ = self.build([b"x", b"y"])
        self.assertEqual(chunks, [([b"x", b"y"], [b"x", b"y"])])

    def test_mixed_key_types(self):
        class S(str):
            pass
        keys = ["a", b"b", S("c")]
        chunks, _, errs = self.build(keys)
        self.assertEqual(chunks, [(keys, [b"a", b"b", b"c"])])
        self.assertEqual(errs, {})

    def test_bad_keys_are_not_sent(self):
        keys = ["a", 5, "", b"", "k" * 251, "b", 1.5, None]
        chunks, results, errs = self.build(keys)
        self.assertEqual(chunks, [(["a", "b"], [b"a", b"b"])])
        bad = [keys[i] for i in (1, 2, 3, 4, 6, 7)]  # the very objects passed
        self.assertEqual(list(errs), bad)
        for k in bad:
            self.assertIsInstance(errs[k], errors.ArgumentError)
            self.assertIs(errs[k].key, k)
            self.assertEqual((results[k].rc, results[k].raw), (RC.EINVAL, None))
        chunks, results, errs = self.build([7, ""])
        self.assertEqual(chunks, [])
        self.assertEqual(len(errs), 2)

    def test_chunks_by_key_count_and_body_size(self):
        keys = ["k%02d" % i for i in range(10)]
        chunks, _, _ = self.build(keys, max_keys=3)
        self.assertEqual([ks for ks, _ in chunks], [keys[0:3], keys[3:6], keys[6:9], keys[9:]])
        chunks, _, _ = self.build(keys, max_body=17)  # 4 bytes a key: 4 keys a chunk
        self.assertEqual([ks for ks, _ in chunks], [keys[0:4], keys[4:8], keys[8:]])
        chunks, _, _ = self.build(keys + [5], max_body=16)
        self.assertEqual([ks for ks, _ in chunks], [keys[0:4], keys[4:8], keys[8:]])
        chunks, _, _ = self.build(["%d" % i for i in range(MAX_MULTI + 1)])
        self.assertEqual([len(ks) for ks, _ in chunks], [MAX_MULTI, 1])

    def test_undecodable_str_key_raises_as_get_does(self):
        self.assertRaises(UnicodeEncodeError, self.build, ["a", "\ud800"])
        self.assertRaises(UnicodeEncodeError, _rq.get, "\ud800")

    def test_outcome_is_the_first_failed_key_in_key_order(self):
        keys = ["a", "b", "c", "d"]
        results, errs = MultiResult(), {}
        pos = _rq.multi_entries(keys, 0, [(0, 5, FMT_BYTES, b"v"), (RC.KEY_ENOENT, 0, 0, b"")],
                                False, True, DEFAULT_TRANSCODER, results, errs)
        self.assertEqual(pos, 2)
        self.assertIsNone(_rq.multi_outcome(keys, results, errs))  # a quiet miss
        self.assertEqual((results["a"].value, results["a"].cas), (b"v", 5))
        self.assertEqual((results["b"].rc, results["b"].raw), (RC.KEY_ENOENT, None))
        _rq.multi_fail(keys, pos, errors.TimeoutError("no reply"), results, errs)
        e = _rq.multi_outcome(keys, results, errs)
        self.assertIsInstance(e, errors.TimeoutError)
        self.assertEqual((e.key, e.message), ("c", "no reply"))
        self.assertIs(e.all_results, results)
        self.assertEqual(results["d"].rc, RC.TIMEOUT)
        # Loud: the miss of "b" comes first, with the usual message.
        results, errs = MultiResult(), {}
        _rq.multi_entries(keys, 0, [(0, 5, 0, b"v"), (RC.KEY_ENOENT, 0, 0, b""),
                                    (RC.ETMPFAIL, 0, 0, b"locked!")],
                          False, False, DEFAULT_TRANSCODER, results, errs)
        e = _rq.multi_outcome(keys, results, errs)
        self.assertEqual((type(e), e.key, e.message), (errors.NotFoundError, "b", "no such key"))
        del errs["b"]
        e = _rq.multi_outcome(keys, results, errs)
        self.assertEqual((type(e), e.key, e.message, e.rc),
                         (errors.TemporaryFailError, "c", "locked!", RC.ETMPFAIL))

    def test_entries_that_do_not_fit_the_keys(self):
        e = (0, 0, 0, b"")
        for keys, pos, entries, last in ((["a"], 0, [e, e], True), (["a", "b"], 1, [e, e], True),
                                         (["a", "b"], 0, [e], True), (["a", "b"], 1, [e], False),
                                         (["a"], 0, [e, e], False), (["a"], 1, [e], True)):
            results, errs = {}, {}
            self.assertRaises(errors.ProtocolError, _rq.multi_entries, keys, pos, entries,
                              last, False, None, results, errs)
            self.assertEqual((results, errs), ({}, {}))  # nothing recorded
        self.assertEqual(_rq.multi_entries(["a", "b"], 1, [], False, False, None, {}, {}), 1)
        self.assertEqual(_rq.multi_entries(["a", "b"], 1, [e], True, False, None, {}, {}), 2)


# -- the server ------------------------------------------------------------------

class MultiGetBucket(DelegatingBucket):
    """An IBucket (no EmbeddedBucket) whose get_multi answers when told to."""

    def __init__(self, inner):
        DelegatingBucket.__init__(self, inner)
        self.calls = []

    def get_multi(self, keys, ttl=0, quiet=False):
        d = Deferred()
        self.calls.append((keys, ttl, quiet, d))
        return d


class ServerTests(ServerTestBase):

    def multi(self, keys, opaque=1, ttl=0, proto=None, transport=None):
        """Send a GET_MULTI; return its reply's payloads."""
        (proto or self.proto).dataReceived(frame(Op.GET_MULTI, opaque, ttl=ttl,
                                                 value=encode_multi_keys(keys)))
        return self.payloads(transport)

    def payloads(self, transport=None):
        transport = transport if transport is not None else self.transport
        out = NetstringDecoder(1 << 26).feed(transport.value())
        transport.clear()
        return out

    def fill(self, bucket=None):
        b = bucket or self.bucket
        for k, v in ((b"a", b"A"), (b"b", b"BB"), (b"big", b"x" * 900)):
            b.store_sync("upsert", k, v, format=FMT_BYTES)

    def test_hello_advertises_get_multi(self):
        self.setup_server()
        info = json.loads(self.call(Op.HELLO).body)
        self.assertEqual(info["get_multi"], MAX_MULTI)

    def test_synchronous_path(self):
        self.setup_server()
        self.fill()
        [payload] = self.multi([b"a", b"nope", b"b", b"a", b"big"])
        res = decode_response(payload)
        self.assertEqual((res.opcode, res.status, res.opaque, res.flags), (Op.GET_MULTI, 0, 1, 0))
        got = decode_multi_reply(res.body)
        a = self.bucket.get_sync(b"a")
        self.assertEqual(got, [(0, a.cas, FMT_BYTES, b"A"), (RC.KEY_ENOENT, 0, 0, b""),
                               (0, got[2][1], FMT_BYTES, b"BB"), (0, a.cas, FMT_BYTES, b"A"),
                               (0, got[4][1], FMT_BYTES, b"x" * 900)])
        self.assertEqual(self.proto._inflight, 0)
        self.assertFalse(self.transport.disconnecting)

    def test_ttl_touches_every_key(self):
        self.setup_server()
        self.fill()
        self.bucket.lock_sync(b"b", 10)
        [payload] = self.multi([b"a", b"b", b"nope"], ttl=100)
        got = decode_multi_reply(decode_response(payload).body)
        self.assertEqual(got[0][2:], (FMT_BYTES, b"A"))
        self.assertEqual(got[1][0], RC.ETMPFAIL)
        self.assertIn(b"locked", got[1][3])
        self.assertEqual(got[2], (RC.KEY_ENOENT, 0, 0, b""))
        self.clock.advance(101)
        self.assertFalse(self.bucket.get_sync(b"a", quiet=True).success)  # touched
        self.assertTrue(self.bucket.get_sync(b"big").success)  # not asked for

    def test_locked_item_reads_with_the_locked_cas(self):
        self.setup_server()
        self.fill()
        self.bucket.lock_sync(b"a", 10)
        [payload] = self.multi([b"a"])
        self.assertEqual(decode_multi_reply(decode_response(payload).body)[0][1], U64)

    def test_unexpected_error_of_one_key(self):
        class Faulty(EmbeddedBucket):
            def get_sync(self, key, ttl=0, quiet=False):
                if key == b"boom":
                    raise ZeroDivisionError("boom")
                return EmbeddedBucket.get_sync(self, key, ttl, quiet)
        self.setup_server(bucket=Faulty(clock=self.clock, pager_interval=0))
        self.factory.bucket.store_sync("upsert", b"a", b"A", format=FMT_BYTES)
        [payload] = self.multi([b"a", b"boom", b"a"])
        got = decode_multi_reply(decode_response(payload).body)
        self.assertEqual([e[0] for e in got], [0, RC.EINTERNAL, 0])
        self.assertEqual(got[1][3], b"internal server error")
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.expected_failures = 1

    def test_deferred_path_answers_as_the_synchronous_one(self):
        self.setup_server()
        self.fill()
        keys = [b"a", b"nope", b"b", b"a", b"big"]
        expected = self.multi(keys)
        for ttl in (0, 50):
            for bucket in (DelegatingBucket(self.bucket), self.bucket):
                self.factory.bucket = bucket
                got = self.multi(keys, ttl=ttl)
                if ttl:  # GAT gives a new cas: compare the rest
                    got = [(s, f, v) for s, c, f, v in entries_of(got)[0]]
                    self.assertEqual(got, [(s, f, v) for s, c, f, v in entries_of(expected)[0]])
                else:
                    self.assertEqual(got, expected)
        self.assertEqual(self.proto._inflight, 0)

    def test_get_replaced_on_the_instance_is_called(self):
        """
        As for GET: a bucket without ISyncBucket takes the Deferred path, its
        get (replaced on the instance) called key by key.
        """
        bucket = DeferredOnlyBucket(clock=self.clock, pager_interval=0)
        self.setup_server(bucket=bucket)
        self.fill(bucket)
        calls = []

        def get(key, ttl=0, quiet=False):
            calls.append((key, ttl, quiet))
            return EmbeddedBucket.get(bucket, key, ttl, quiet)
        bucket.get = get
        proto, transport = self.connect(self.factory)  # connections made from now on
        [payload] = self.multi([b"a", b"nope"], proto=proto, transport=transport)
        self.assertEqual(calls, [(b"a", 0, True), (b"nope", 0, True)])
        self.assertEqual([(s, v) for s, c, f, v in entries_of([payload])[0]],
                         [(0, b"A"), (RC.KEY_ENOENT, b"")])

    def test_deferred_path_counts_in_flight(self):
        inner = EmbeddedBucket(clock=self.clock, pager_interval=0)
        inner.store_sync("upsert", b"a", b"A", format=FMT_BYTES)
        bucket = MultiGetBucket(inner)
        self.setup_server(bucket=bucket, max_inflight=2)
        self.proto.dataReceived(frame(Op.GET_MULTI, 1, ttl=7, value=b"\x01a\x01b") +
                                frame(Op.GET_MULTI, 2, value=b"\x01b"))
        self.assertEqual(self.payloads(), [])
        self.assertEqual([c[:3] for c in bucket.calls], [([b"a", b"b"], 7, True),
                                                         ([b"b"], 0, True)])
        self.assertEqual(self.proto._inflight, 2)
        self.assertTrue(self.proto._paused)
        self.assertEqual(self.transport.producerState, "paused")
        r = MultiResult()
        r[b"a"] = ValueResult(b"a", b"A", FMT_BYTES, 3)
        r[b"b"] = ValueResult(b"b", rc=RC.KEY_ENOENT)
        bucket.calls[0][3].callback(r)
        self.assertEqual(self.proto._inflight, 1)
        self.assertEqual(self.transport.producerState, "producing")
        [payload] = self.payloads() or self.late_payloads()
        self.assertEqual(entries_of([payload])[0], [(0, 3, FMT_BYTES, b"A"),
                                                   (RC.KEY_ENOENT, 0, 0, b"")])
        bucket.calls[1][3].errback(errors.TemporaryFailError("busy, try later"))
        [payload] = self.payloads() or self.late_payloads()
        res = decode_response(payload)
        self.assertEqual((res.opaque, res.status, res.body), (2, RC.ETMPFAIL, b"busy, try later"))
        self.assertEqual(self.proto._inflight, 0)

    def late_payloads(self):
        """Replies made outside a read go out at the end of the reactor turn."""
        self.proto._send_late()
        return self.payloads()

    def test_deferred_path_error_with_every_result(self):
        inner = EmbeddedBucket(clock=self.clock, pager_interval=0)
        bucket = MultiGetBucket(inner)
        self.setup_server(bucket=bucket)
        self.multi([b"a", b"b", b"c", b"d", b"e"])
        r = MultiResult()
        r[b"a"] = ValueResult(b"a", b"A", FMT_BYTES, 3)
        r[b"b"] = ValueResult(b"b", rc=RC.ETMPFAIL)
        r[b"c"] = ValueResult(b"c", rc=RC.ETMPFAIL)
        r[b"d"] = ValueResult(b"d", rc=RC.KEY_ENOENT)
        e = errors.TemporaryFailError("b is locked", key=b"b", all_results=r)
        bucket.calls[0][3].errback(e)
        got, more = entries_of(self.payloads() or self.late_payloads())
        self.assertEqual(got, [
            (0, 3, FMT_BYTES, b"A"), (RC.ETMPFAIL, 0, 0, b"b is locked"),
            (RC.ETMPFAIL, 0, 0, errors.TemporaryFailError().message.encode()),
            (RC.KEY_ENOENT, 0, 0, b""),
            (RC.ETMPFAIL, 0, 0, b"b is locked")])  # "e": no result, the call's error
        self.assertEqual(more, [0])

    def test_deferred_path_unexpected_error(self):
        bucket = MultiGetBucket(EmbeddedBucket(clock=self.clock, pager_interval=0))
        self.setup_server(bucket=bucket)
        self.multi([b"a"])
        bucket.calls[0][3].errback(ZeroDivisionError("oops"))
        [payload] = self.payloads() or self.late_payloads()
        res = decode_response(payload)
        self.assertEqual((res.opcode, res.status, res.body),
                         (Op.GET_MULTI, RC.EINTERNAL, b"internal server error"))
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)
        self.expected_failures = 1

    def test_big_values_split_into_frames(self):
        self.setup_server(max_value_size=600000)
        for i in range(3):
            self.bucket.store_sync("upsert", b"big%d" % i, b"%d" % i * 500000, format=FMT_BYTES)
        self.bucket.store_sync("upsert", b"small", b"s", format=FMT_BYTES)
        keys = [b"small", b"big0", b"big1", b"nope", b"big2", b"small"]
        for bucket in (self.bucket, DelegatingBucket(self.bucket)):
            self.factory.bucket = bucket
            payloads = self.multi(keys) or self.late_payloads()
            got, more = entries_of(payloads)
            self.assertEqual([(s, v) for s, c, f, v in got], [
                (0, b"s"), (0, b"0" * 500000), (0, b"1" * 500000), (RC.KEY_ENOENT, b""),
                (0, b"2" * 500000), (0, b"s")])
            self.assertEqual(more, [1, 1, 0])
            for p in payloads:
                self.assertLessEqual(len(p), HEADER_LEN + MULTI_FRAME_BYTES)
                self.assertEqual(decode_response(p).opaque, 1)

    def test_frames_stay_within_the_servers_max_frame(self):
        self.setup_server(max_value_size=1000)  # max_frame: 1278
        for i in range(20):
            self.bucket.store_sync("upsert", b"k%d" % i, b"v" * 500, format=FMT_BYTES)
        keys = [b"k%d" % i for i in range(20)]
        for bucket in (self.bucket, DelegatingBucket(self.bucket)):
            self.factory.bucket = bucket
            payloads = self.multi(keys) or self.late_payloads()
            self.assertEqual(len(payloads), 10)
            for p in payloads:
                self.assertLessEqual(len(p), self.factory.max_frame)
            self.assertEqual(len(entries_of(payloads)[0]), 20)

    def test_a_client_that_stops_reading_holds_the_rest_of_the_reply(self):
        """
        Paused by its transport (the client is not reading) in the middle of a
        long reply, the server writes no more of it, nor handles the requests
        after it, until resumed; then the reply goes on where it stopped, each
        key read (and touched) once.
        """
        self.setup_server(max_value_size=20000)
        proto, transport = self.proto, self.transport
        paused = []

        def write(data, _write=transport.write):
            _write(data)
            if not paused and len(transport.value()) > 16384:
                paused.append(True)
                proto.pauseProducing()
        transport.write = write
        keys = [b"k%d" % i for i in range(6)]
        for i, k in enumerate(keys):
            self.bucket.store_sync("upsert", k, b"%d" % i * 17000, format=FMT_BYTES)
        before = [self.bucket.get_sync(k).cas for k in keys]
        proto.dataReceived(frame(Op.GET_MULTI, 1, ttl=100, value=encode_multi_keys(keys)) +
                           frame(Op.NOOP, 2))
        first = self.payloads()
        self.assertEqual(len(first), 2)  # one frame written, one ending the handler's turn
        self.assertEqual([decode_response(p).flags for p in first], [MULTI_MORE] * 2)
        self.assertEqual(transport.producerState, "paused")
        self.assertEqual(len(proto._held), 2)  # the rest of the keys, and the NOOP
        self.assertEqual(proto._inflight, 0)
        proto.resumeProducing()
        rest = self.payloads() or self.late_payloads()
        got, more = entries_of(first + [p for p in rest if decode_response(p).opaque == 1])
        self.assertEqual([v for s, c, f, v in got], [b"%d" % i * 17000 for i in range(6)])
        self.assertEqual(more, [1] * 5 + [0])
        self.assertEqual([decode_response(p).opcode for p in rest].count(Op.NOOP), 1)
        after = [c for s, c, f, v in got]
        self.assertEqual(sorted(after), list(range(max(before) + 1, max(before) + 7)))
        self.assertEqual(proto._inflight, 0)
        self.assertEqual(proto._held, [])
        self.assertEqual(transport.producerState, "producing")

    def test_lost_connection_gets_no_frames(self):
        bucket = MultiGetBucket(EmbeddedBucket(clock=self.clock, pager_interval=0))
        self.setup_server(bucket=bucket)
        self.multi([b"a", b"b"])
        self.proto.connectionLost(None)
        r = MultiResult()
        r[b"a"] = ValueResult(b"a", b"A" * 800, FMT_BYTES, 3)
        r[b"b"] = ValueResult(b"b", b"B" * 800, FMT_BYTES, 4)
        bucket.calls[0][3].callback(r)
        self.proto._send_late()
        self.assertEqual(self.transport.value(), b"")
        self.assertEqual(self.proto._inflight, 0)

    def test_malformed_requests_keep_the_connection(self):
        self.setup_server(max_value_size=100000)
        self.fill()
        for body in (b"", b"\x00", b"\x02a", b"\x01a\x00", b"\x01k" * (MAX_MULTI + 1)):
            res = self.call(Op.GET_MULTI, 3, value=body)
            self.assertEqual(res.status, RC.EINVAL)
            self.assertIn(b"GET_MULTI", res.body)
        [payload] = self.multi([b"a"], opaque=4)
        self.assertEqual(entries_of([payload])[0][0][3], b"A")
        self.assertFalse(self.transport.disconnecting)
        self.assertEqual(self.proto._inflight, 0)

    def test_most_keys(self):
        self.setup_server(max_value_size=100000)
        self.fill()
        keys = [b"a", b"b"] * (MAX_MULTI // 2)
        got, more = entries_of(self.multi(keys))
        self.assertEqual([v for s, c, f, v in got], [b"A", b"BB"] * (MAX_MULTI // 2))


# -- the Twisted client ----------------------------------------------------------

class ClientTests(ClientTestBase):

    def make_client(self, timeout=2.5, hello=True, info=HELLO_MULTI):
        proto = BucketClientProtocol(clock=self.clock, timeout=timeout)
        transport = StringTransport()
        proto.makeConnection(transport)
        [req] = self.sent(transport)
        proto.dataReceived(response(Op.HELLO, req.opaque, body=json.dumps(info).encode()))
        self.proto, self.transport = proto, transport
        self.bucket = RemoteBucket(proto, timeout=timeout)
        return proto, transport

    def reply(self, req, entries, limit=MULTI_FRAME_BYTES):
        """The reply frames (netstrings) to a GET_MULTI request."""
        return [netstring(p) for p in encode_multi_reply(req.opaque, entries, limit)]

    def test_one_request_for_every_key(self):
        self.make_client()
        d = self.bucket.get_multi(["a", b"b", "é"], ttl=30)
        req = self.one_request()
        self.assertEqual((req.opcode, req.key, req.keys, req.ttl, req.options),
                         (Op.GET_MULTI, b"", [b"a", b"b", "é".encode()], 30, 0))
        self.assertEqual(len(self.proto._pending), 1)
        self.proto.dataReceived(b"".join(self.reply(req, [
            (0, 10, FMT_BYTES, b"A"), (0, 11, 0x02000000, b'{"x": 1}'),
            (0, 12, 0x04000004, b"\xc3\xa9")])))
        r = self.successResultOf(d)
        self.assertIsInstance(r, MultiResult)
        self.assertEqual({k: (v.value, v.cas, v.flags, v.rc) for k, v in r.items()},
                         {"a": (b"A", 10, FMT_BYTES, 0), b"b": ({"x": 1}, 11, 0x02000000, 0),
                          "é": ("é", 12, 0x04000004, 0)})
        self.assertIs(r["a"].key, "a")
        self.assertIdle()

    def test_quiet_misses(self):
        self.make_client()
        d = self.bucket.get_multi(["a", "b"], quiet=True)
        self.proto.dataReceived(b"".join(self.reply(self.one_request(), [
            (RC.KEY_ENOENT, 0, 0, b""), (0, 1, FMT_BYTES, b"B")])))
        r = self.successResultOf(d)
        self.assertEqual((r["a"].success, r["a"].rc, r["a"].value), (False, RC.KEY_ENOENT, None))
        self.assertFalse(r.all_ok)

    def test_first_failed_key_in_key_order(self):
        self.make_client()
        for quiet, first in ((False, "b"), (True, "c")):
            d = self.bucket.get_multi(["a", "b", "c", "d"], quiet=quiet)
            self.proto.dataReceived(b"".join(self.reply(self.one_request(), [
                (0, 1, FMT_BYTES, b"A"), (RC.KEY_ENOENT, 0, 0, b""),
                (RC.ETMPFAIL, 0, 0, b"the key is locked"), (RC.E2BIG, 0, 0, b"")])))
            e = self.failureResultOf(d).value
            self.assertEqual(e.key, first)
            if first == "b":
                self.assertEqual((type(e), e.message), (errors.NotFoundError, "no such key"))
            else:
                self.assertEqual((type(e), e.message), (errors.TemporaryFailError,
                                                        "the key is locked"))
            r = e.all_results
            self.assertEqual([r[k].rc for k in "abcd"],
                             [0, RC.KEY_ENOENT, RC.ETMPFAIL, RC.E2BIG])
            self.assertEqual(r["a"].value, b"A")

    def test_argument_errors_as_get(self):
        self.make_client()
        d = self.bucket.get_multi(["a", 5, "k" * 251, "b"])
        req = self.one_request()
        self.assertEqual(req.keys, [b"a", b"b"])
        self.proto.dataReceived(b"".join(self.reply(req, [(0, 1, FMT_BYTES, b"A"),
                                                          (0, 2, FMT_BYTES, b"B")])))
        e = self.failureResultOf(d, errors.ArgumentError).value
        self.assertEqual(e.key, 5)
        self.assertEqual(e.all_results["k" * 251].rc, RC.EINVAL)
        self.assertEqual(e.all_results["b"].value, b"B")
        # Nothing to send: no request.
        d = self.bucket.get_multi([b"", None])
        self.assertEqual(self.failureResultOf(d, errors.ArgumentError).value.key, b"")
        self.assertEqual(self.transport.value(), b"")
        # A bad ttl fails every key, as each get would, before anything is sent.
        for ttl in (-1, 2 ** 32, "x", True):
            d = self.bucket.get_multi(["a", "b"], ttl=ttl)
            e = self.failureResultOf(d, errors.ArgumentError).value
            self.assertEqual((e.key, len(e.all_results)), ("a", 2))
            self.assertEqual(self.transport.value(), b"")
        self.assertRaises(TypeError, self.bucket.get_multi, "ab")
        self.assertRaises(TypeError, self.bucket.get_multi, [["unhashable"]])
        self.assertEqual(self.successResultOf(self.bucket.get_multi([])), {})
        self.assertEqual(self.transport.value(), b"")
        self.assertIdle()

    def test_duplicates(self):
        self.make_client()
        d = self.bucket.get_multi(["a", "a", b"a", "b", "a"])
        req = self.one_request()
        self.assertEqual(req.keys, [b"a", b"a", b"b"])
        self.proto.dataReceived(b"".join(self.reply(req, [(0, 1, 0, b"1"), (0, 1, 0, b"2"),
                                                          (0, 3, 0, b"3")])))
        r = self.successResultOf(d)
        self.assertEqual({k: v.raw for k, v in r.items()}, {"a": b"1", b"a": b"2", "b": b"3"})

    def test_frames_split_at_every_offset(self):
        """Every split of a several-frame reply gives the same result."""
        self.make_client()
        keys = ["k%d" % i for i in range(8)]
        entries = [(0, i, FMT_BYTES, b"v%d" % i * i) if i % 3 else (RC.KEY_ENOENT, 0, 0, b"")
                   for i in range(8)]
        d = self.bucket.get_multi(keys, quiet=True)
        req = self.one_request()
        stream = b"".join(self.reply(req, entries, limit=40))
        self.assertGreater(stream.count(b":\xcc\x30"), 3)
        self.proto.dataReceived(stream)
        expected = describe(self.successResultOf(d))
        for i in range(len(stream) + 1):
            d = self.bucket.get_multi(keys, quiet=True)
            req = self.one_request()
            stream = b"".join(self.reply(req, entries, limit=40))
            self.proto.dataReceived(stream[:i])
            self.proto.dataReceived(stream[i:])
            self.assertEqual(describe(self.successResultOf(d)), expected, i)
        d = self.bucket.get_multi(keys, quiet=True)
        for b in b"".join(self.reply(self.one_request(), entries, limit=40)):
            self.proto.dataReceived(bytes((b,)))
        self.assertEqual(describe(self.successResultOf(d)), expected)
        self.assertIdle()

    def test_other_replies_between_frames(self):
        self.make_client()
        d = self.bucket.get_multi(["a", "b"])
        g = self.bucket.get("c")
        reqs = self.sent(self.transport)
        frames = self.reply(reqs[0], [(0, 1, 0, b"A" * 30), (0, 2, 0, b"B" * 30)], limit=50)
        self.proto.dataReceived(frames[0] + response(Op.GET, reqs[1].opaque, body=b"C") +
                                frames[1])
        self.assertEqual(self.successResultOf(g).raw, b"C")
        self.assertEqual([v.raw for v in self.successResultOf(d).values()],
                         [b"A" * 30, b"B" * 30])
        self.assertIdle()

    def test_chunks(self):
        self.make_client(info=dict(HELLO_MULTI, get_multi=3))
        self.assertEqual(self.proto.multi_get_keys, 3)
        keys = ["k%d" % i for i in range(7)]
        d = self.bucket.get_multi(keys)
        reqs = self.sent(self.transport)
        self.assertEqual([r.keys for r in reqs], [[b"k0", b"k1", b"k2"], [b"k3", b"k4", b"k5"],
                                                  [b"k6"]])
        self.assertEqual(len(self.proto._pending), 3)
        for req in reversed(reqs):  # any order
            self.assertNoResult(d)
            self.proto.dataReceived(b"".join(self.reply(req, [
                (0, 0, 0, k) for k in req.keys])))
        r = self.successResultOf(d)
        self.assertEqual({k: v.raw for k, v in r.items()}, {k: k.encode() for k in keys})
        self.assertIdle()

    def test_chunks_within_the_servers_max_frame(self):
        self.make_client(info=dict(HELLO_MULTI, max_frame=HEADER_LEN + 300))
        self.assertEqual(self.proto.max_multi_body, 300)
        keys = ["%03d" % i + "k" * 96 for i in range(7)]  # 100 bytes each in the body
        self.bucket.get_multi(keys)
        reqs = self.sent(self.transport)
        self.assertEqual([len(r.keys) for r in reqs], [3, 3, 1])
        d = self.bucket.get_multi(["x" * 250])
        self.assertEqual(len(self.one_request().keys), 1)
        d.cancel()
        self.failureResultOf(d, CancelledError)

    def test_chunks_of_max_multi(self):
        self.make_client(info=dict(HELLO_MULTI, get_multi=10 ** 6, max_frame=1 << 24))
        self.assertEqual(self.proto.multi_get_keys, MAX_MULTI)
        d = self.bucket.get_multi(["%d" % i for i in range(MAX_MULTI + 5)])
        reqs = self.sent(self.transport)
        self.assertEqual([len(r.keys) for r in reqs], [MAX_MULTI, 5])
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIdle()

    def test_fallback_without_the_hello_flag(self):
        for flag in (None, True, False, 0, -1, "4096", 4096.0):
            info = dict(HELLO_MULTI)
            if flag is None:
                del info["get_multi"]
            else:
                info["get_multi"] = flag
            self.make_client(info=info)
            self.assertEqual(self.proto.multi_get_keys, 0, flag)
            d = self.bucket.get_multi(["a", "b", 7], quiet=True)
            reqs = self.sent(self.transport)
            self.assertEqual([(r.opcode, r.key) for r in reqs], [(Op.GET, b"a"), (Op.GET, b"b")])
            self.proto.dataReceived(response(Op.GET, reqs[0].opaque, body=b"A") +
                                    response(Op.GET, reqs[1].opaque, RC.KEY_ENOENT))
            e = self.failureResultOf(d, errors.ArgumentError).value
            self.assertEqual((e.key, e.all_results["a"].raw, e.all_results["b"].rc),
                             (7, b"A", RC.KEY_ENOENT))
            self.assertIdle()

    def test_timeout_before_any_reply(self):
        self.make_client()
        d = self.bucket.get_multi(["a", "b"], timeout=1)
        req = self.one_request()
        self.clock.advance(0.99)
        self.assertNoResult(d)
        self.clock.advance(0.01)
        e = self.failureResultOf(d, errors.TimeoutError).value
        self.assertEqual(e.key, "a")
        self.assertEqual([v.rc for v in e.all_results.values()], [RC.TIMEOUT] * 2)
        self.assertIdle()
        self.proto.dataReceived(b"".join(self.reply(req, [(0, 1, 0, b"late")] * 2)))
        self.assertFalse(self.transport.disconnecting)
        self.assertIdle()

    def test_timeout_after_a_partial_reply(self):
        """As a GET per key would: the keys answered keep their results."""
        self.make_client()
        d = self.bucket.get_multi(["a", "b", "c"])
        req = self.one_request()
        frames = self.reply(req, [(0, 1, 0, b"A" * 30), (0, 2, 0, b"B" * 30),
                                  (0, 3, 0, b"C" * 30)], limit=50)
        self.assertEqual(len(frames), 3)
        self.proto.dataReceived(frames[0])
        self.clock.advance(2.5)
        e = self.failureResultOf(d, errors.TimeoutError).value
        self.assertEqual(e.key, "b")
        self.assertEqual(e.all_results["a"].raw, b"A" * 30)
        self.assertEqual([e.all_results[k].rc for k in "bc"], [RC.TIMEOUT] * 2)
        self.assertIdle()
        self.proto.dataReceived(b"".join(frames[1:]))
        self.assertFalse(self.transport.disconnecting)
        self.assertIdle()

    def test_cancel(self):
        self.make_client()
        other = self.bucket.get("other")
        d = self.bucket.get_multi(["a", "b"])
        reqs = self.sent(self.transport)
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertEqual(list(self.proto._pending), [reqs[0].opaque])
        self.proto.dataReceived(b"".join(self.reply(reqs[1], [(0, 1, 0, b"x")] * 2)))
        self.proto.dataReceived(response(Op.GET, reqs[0].opaque, body=b"o"))
        self.assertEqual(self.successResultOf(other).raw, b"o")
        self.assertFalse(self.transport.disconnecting)
        self.assertIdle()

    def test_cancel_after_a_partial_reply_and_twice(self):
        self.make_client(info=dict(HELLO_MULTI, get_multi=2))
        d = self.bucket.get_multi(["a", "b", "c"])
        reqs = self.sent(self.transport)
        frames = self.reply(reqs[0], [(0, 1, 0, b"A" * 30), (0, 2, 0, b"B" * 30)], limit=50)
        self.proto.dataReceived(frames[0])
        d.cancel()
        d.cancel()
        self.failureResultOf(d, CancelledError)
        self.assertIdle()
        self.proto.dataReceived(frames[1] + b"".join(self.reply(reqs[1], [(0, 1, 0, b"C")])))
        self.assertIdle()
        # Cancelling after the result changes nothing.
        d = self.bucket.get_multi(["a"])
        self.proto.dataReceived(b"".join(self.reply(self.one_request(), [(0, 1, 0, b"A")])))
        d.cancel()
        self.assertEqual(self.successResultOf(d)["a"].raw, b"A")
        self.assertIdle()

    def test_loss_between_two_frames(self):
        self.make_client()
        fired = []
        d = self.bucket.get_multi(["a", "b", "c"])
        d.addBoth(fired.append)
        frames = self.reply(self.one_request(), [(0, 1, 0, b"A" * 30), (0, 2, 0, b"B" * 30),
                                                 (0, 3, 0, b"C" * 30)], limit=50)
        self.proto.dataReceived(frames[0] + frames[1][:10])
        self.assertEqual(fired, [])
        self.proto.connectionLost(None)
        [f] = fired
        e = f.value
        self.assertIsInstance(e, errors.NetworkError)
        self.assertEqual(e.key, "b")
        self.assertEqual((e.all_results["a"].raw, e.all_results["b"].rc, e.all_results["c"].rc),
                         (b"A" * 30, RC.NETWORK_ERROR, RC.NETWORK_ERROR))
        self.assertEqual(self.proto._pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])
        self.proto.dataReceived(frames[1][10:] + frames[2])  # nowhere to go
        self.assertEqual(len(fired), 1)
        self.failureResultOf(self.bucket.get_multi(["a"]), errors.NetworkError)

    def test_error_status_fails_the_keys_left(self):
        self.make_client()
        d = self.bucket.get_multi(["a", "b"])
        req = self.one_request()
        self.proto.dataReceived(response(Op.GET_MULTI, req.opaque, RC.EINVAL, body=b"no way"))
        e = self.failureResultOf(d, errors.ArgumentError).value
        self.assertEqual((e.key, e.message), ("a", "no way"))
        self.assertEqual([v.rc for v in e.all_results.values()], [RC.EINVAL] * 2)
        # After a partial reply.
        d = self.bucket.get_multi(["a", "b", "c"])
        req = self.one_request()
        frames = self.reply(req, [(0, 1, 0, b"A" * 30)] * 3, limit=50)
        self.proto.dataReceived(frames[0] + response(Op.GET_MULTI, req.opaque, RC.EINTERNAL,
                                                     body=b"oops"))
        e = self.failureResultOf(d, errors.InternalError).value
        self.assertEqual((e.key, e.all_results["a"].raw), ("b", b"A" * 30))
        self.assertIdle()

    def assertProtocolError(self, d, other):
        e = self.failureResultOf(d, errors.ProtocolError).value
        self.assertIn("GET_MULTI", e.message)
        self.failureResultOf(other, errors.NetworkError)
        self.assertTrue(self.transport.disconnected)
        self.assertIdle()
        self.assertEqual(len(self.client_warnings()), 1)
        return e

    def test_malformed_reply(self):
        self.make_client()
        other = self.bucket.get("x")
        d = self.bucket.get_multi(["a", "b"])
        req = self.sent(self.transport)[1]
        [payload] = encode_multi_reply(req.opaque, [(0, 1, 0, b"A"), (0, 2, 0, b"B")])
        self.proto.dataReceived(netstring(payload[:-1]))
        self.assertProtocolError(d, other)

    def test_too_many_entries(self):
        self.make_client()
        other = self.bucket.get("x")
        d = self.bucket.get_multi(["a", "b"])
        req = self.sent(self.transport)[1]
        frames = self.reply(req, [(0, 1, 0, b"A" * 20)] * 3, limit=30)
        self.proto.dataReceived(frames[0])
        self.proto.dataReceived(b"".join(frames[1:]))
        e = self.assertProtocolError(d, other)
        self.assertEqual([v.rc for v in e.all_results.values()], [0, RC.PROTOCOL_ERROR])

    def test_too_few_entries(self):
        self.make_client()
        other = self.bucket.get("x")
        d = self.bucket.get_multi(["a", "b"])
        req = self.sent(self.transport)[1]
        self.proto.dataReceived(b"".join(self.reply(req, [(0, 1, 0, b"A")])))
        e = self.assertProtocolError(d, other)
        self.assertEqual(e.key, "a")  # the frame is refused whole
        self.assertEqual([v.rc for v in e.all_results.values()], [RC.PROTOCOL_ERROR] * 2)


# -- both clients against the per-key path they replace ------------------------

class _Scenario:
    """Items on a server bucket, and get_multi calls to compare."""

    CALLS = [
        (["a", "b", b"c", "big1", "big2"], {}),
        (["a", "miss", "b"], {}),
        (["a", "miss", "b"], {"quiet": True}),
        (["a", "locked", "miss", "b"], {"ttl": 60}),
        (["a", "locked", "miss", "b"], {"ttl": 60, "quiet": True}),
        (["a", 5, "", "k" * 251, "miss"], {}),
        (["a", 5, "miss"], {"quiet": True}),
        (["a", "a", b"a", "b", "a"], {}),
        (["a", "b"], {"ttl": -1}),
        ([], {}),
        (["k%d" % i for i in range(300)], {"quiet": True}),
    ]

    @staticmethod
    def fill(bucket):
        for k, v in (("a", {"json": 1}), ("b", "text"), ("c", b"bytes"), ("locked", 1),
                     ("big1", "x" * 3000), ("big2", b"y" * 3000)):
            bucket.store_sync("upsert", k, v)
        for i in range(0, 300, 2):
            bucket.store_sync("upsert", "k%d" % i, i)
        bucket.lock_sync("locked", 30)


class EndToEndTests(ClientTestBase):
    """An in-memory client and server: GET_MULTI and a GET per key agree."""

    def connect(self, server_bucket):
        factory = BucketServerFactory(server_bucket)
        server = factory.buildProtocol(ADDR)
        client = BucketClientProtocol(clock=self.clock, timeout=2.5)
        pump = iosim.connect(server, iosim.FakeTransport(server, isServer=True), client,
                             iosim.FakeTransport(client, isServer=False), clock=self.clock)
        pump.flush()
        return RemoteBucket(client), client, pump

    def outcomes(self, per_key, wrap=lambda b: b):
        clock = Clock()
        clock.advance(1700000000)
        inner = EmbeddedBucket(clock=clock, max_value_size=5000, pager_interval=0)
        _Scenario.fill(inner)
        bucket, client, pump = self.connect(wrap(inner))
        self.assertEqual(client.multi_get_keys, MAX_MULTI)
        if per_key:
            client.multi_get_keys = 0
        base = inner._cas
        out = []
        send = client.send
        for keys, kw in _Scenario.CALLS:
            sent = []
            client.send = lambda *a, **k: sent.append(a[1][0]) or send(*a, **k)
            d = bucket.get_multi(keys, **kw)
            pump.flush()
            box = []
            d.addBoth(box.append)
            [result] = box
            out.append(describe(result.value if isinstance(result, Failure) else result, base))
            if per_key:
                self.assertNotIn(Op.GET_MULTI, sent)
            elif keys and kw.get("ttl", 0) >= 0 and any(
                    isinstance(k, str) and 0 < len(k) <= 250 for k in keys):
                self.assertEqual(sent, [Op.GET_MULTI], (keys, kw))
        self.assertEqual(client._pending, {})
        return out

    def test_same_outcomes(self):
        per_key = self.outcomes(True)
        batched = self.outcomes(False)
        self.assertEqual(len(per_key), len(_Scenario.CALLS))
        for call, a, b in zip(_Scenario.CALLS, per_key, batched):
            self.assertEqual(a, b, call)
        self.assertEqual(per_key[0][1]["big1"][5], "x" * 3000)
        self.assertEqual(per_key[3][:2], ("TemporaryFailError", "locked"))

    def test_same_outcomes_through_the_deferred_path(self):
        per_key = self.outcomes(True, DelegatingBucket)
        batched = self.outcomes(False, DelegatingBucket)
        for call, a, b in zip(_Scenario.CALLS, per_key, batched):
            self.assertEqual(a, b, call)
        self.assertEqual(self.outcomes(False), batched)


# -- the blocking client ---------------------------------------------------------

class BlockingTests(unittest.SynchronousTestCase):

    def server(self, **kw):
        s = ThreadedServer(**kw)
        self.addCleanup(s.stop)
        return s

    def connect(self, endpoint, **kw):
        b = Bucket(endpoint, **kw)
        self.addCleanup(b.close)
        return b

    def outcome(self, b, keys, base, **kw):
        try:
            return describe(b.get_multi(keys, **kw), base)
        except errors.CouchbaseError as e:
            return describe(e, base)

    def test_same_outcomes_as_a_get_per_key(self):
        outs = []
        for per_key in (True, False):
            s = self.server(max_value_size=5000)
            s.call(lambda: _Scenario.fill(s.bucket))
            base = s.bucket._cas
            b = self.connect(s.endpoint)
            self.assertEqual(b._multi_get_keys, MAX_MULTI)
            sent = []
            orig = b._exchange_now
            b._exchange_now = lambda reqs: sent.extend(
                getattr(r, "opcode", None) for r in reqs) or orig(reqs)
            if per_key:
                b._multi_get_keys = 0
            outs.append([self.outcome(b, keys, base, **kw) for keys, kw in _Scenario.CALLS])
            self.assertEqual(Op.GET_MULTI in sent, not per_key)
        for call, a, c in zip(_Scenario.CALLS, *outs):
            self.assertEqual(a, c, call)

    def test_big_values_in_several_frames_and_chunks(self):
        s = self.server(max_value_size=200000)
        b = self.connect(s.endpoint)
        values = {"k%d" % i: b"%d" % i * 150000 for i in range(10)}
        b.upsert_multi(values)
        sent = []
        orig = b._exchange_now
        b._exchange_now = lambda reqs: sent.append(len(reqs)) or orig(reqs)
        r = b.get_multi(list(values) + ["nope"], quiet=True)
        self.assertEqual(sent, [1])
        self.assertEqual({k: v.raw for k, v in r.items() if v.success}, values)
        keys = ["%d" % i for i in range(MAX_MULTI + 10)]
        r = b.get_multi(keys, quiet=True)
        self.assertEqual(sent, [1, 2])
        self.assertEqual(len(r), len(keys))

    def test_deferred_path_server(self):
        from txcb.testing import FaultyBucket
        faulty = FaultyBucket(EmbeddedBucket(pager_interval=0))
        s = self.server(bucket=faulty)
        b = self.connect(s.endpoint, timeout=5)
        b.upsert_multi({"a": 1, "b": 2})
        faulty.fail("get", errors.TemporaryFailError("nope"), times=1)
        with self.assertRaises(errors.TemporaryFailError) as cm:
            b.get_multi(["a", "b"])
        self.assertEqual((cm.exception.key, cm.exception.message), ("a", "nope"))
        self.assertEqual(cm.exception.all_results["b"].value, 2)
        faulty.hang("get", times=1)
        with self.assertRaises(errors.TimeoutError) as cm:
            b.get_multi(["a", "b"], timeout=0.2)
        self.assertEqual([v.rc for v in cm.exception.all_results.values()], [RC.TIMEOUT] * 2)
        self.assertFalse(b.connected)
        self.assertEqual(b.get_multi(["a", "b"])["b"].value, 2)


class ScriptedServer:
    """
    A raw socket server for one connection: answers HELLO, then hands each
    later request to ``script(request, send)`` (send writes raw bytes).
    """

    def __init__(self, testcase, script, info=HELLO_MULTI):
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.endpoint = "tcp:127.0.0.1:%d" % self.sock.getsockname()[1]
        self.script = script
        self.info = info
        self.done = threading.Event()
        self.thread = threading.Thread(target=self.run, daemon=True)
        self.thread.start()
        testcase.addCleanup(self.stop)

    def run(self):
        conn, _ = self.sock.accept()
        decoder = NetstringDecoder(1 << 24)
        try:
            while not self.done.is_set():
                data = conn.recv(65536)
                if not data:
                    return
                for p in decoder.feed(data):
                    req = decode_request(p)
                    if req.opcode == Op.HELLO:
                        conn.sendall(netstring(encode_response(
                            Op.HELLO, req.opaque, body=json.dumps(self.info).encode())))
                    else:
                        self.script(req, conn.sendall)
        except OSError:
            pass
        finally:
            conn.close()

    def stop(self):
        self.done.set()
        self.sock.close()
        self.thread.join(5)


class BlockingScriptedTests(unittest.SynchronousTestCase):

    def test_timeout_after_a_partial_reply(self):
        def script(req, send):
            frames = encode_multi_reply(req.opaque, [(0, 1, FMT_BYTES, b"A" * 30)] * 3, 50)
            send(netstring(frames[0]))  # and never the rest
        server = ScriptedServer(self, script)
        b = Bucket(server.endpoint, timeout=0.3)
        self.addCleanup(b.close)
        with self.assertRaises(errors.TimeoutError) as cm:
            b.get_multi(["a", "b", "c"])
        e = cm.exception
        self.assertEqual(e.key, "b")
        self.assertEqual((e.all_results["a"].raw, e.all_results["c"].rc), (b"A" * 30, RC.TIMEOUT))
        self.assertFalse(b.connected)

    def test_malformed_replies(self):
        replies = []

        def script(req, send):
            send(replies.pop(0)(req.opaque))
        server = ScriptedServer(self, script)
        b = Bucket(server.endpoint, timeout=2, reconnect=False)
        self.addCleanup(b.close)
        replies.append(lambda o: b"".join(netstring(p) for p in encode_multi_reply(
            o, [(0, 1, 0, b"x" * 30)] * 3, 50)))
        with self.assertRaises(errors.ProtocolError) as cm:
            b.get_multi(["a", "b"])
        self.assertIn("2 entries for 2 keys, and more to come", cm.exception.message)
        self.assertEqual(cm.exception.all_results["a"].raw, b"x" * 30)
        self.assertFalse(b.connected)

    def test_too_few_entries_and_bad_bodies(self):
        for reply in (lambda o: encode_multi_reply(o, [(0, 1, 0, b"x")])[0],
                      lambda o: encode_multi_reply(o, [(0, 1, 0, b"x")] * 2)[0][:-1],
                      lambda o: encode_response(Op.GET_MULTI, o, body=b"\x00" * 5)):
            server = ScriptedServer(self, lambda req, send, r=reply: send(netstring(
                r(req.opaque))))
            b = Bucket(server.endpoint, timeout=2)
            self.addCleanup(b.close)
            with self.assertRaises(errors.ProtocolError):
                b.get_multi(["a", "b"])
            self.assertFalse(b.connected)

    def test_error_status(self):
        server = ScriptedServer(self, lambda req, send: send(netstring(encode_response(
            Op.GET_MULTI, req.opaque, RC.ETMPFAIL, body=b"busy"))))
        b = Bucket(server.endpoint, timeout=2)
        self.addCleanup(b.close)
        with self.assertRaises(errors.TemporaryFailError) as cm:
            b.get_multi(["a", "b"], quiet=True)
        self.assertEqual((cm.exception.key, cm.exception.message), ("a", "busy"))
        self.assertTrue(b.connected)

    def test_fallback_without_the_hello_flag(self):
        seen = []

        def script(req, send):
            seen.append((req.opcode, req.key))
            send(netstring(encode_response(req.opcode, req.opaque, body=b"v", flags=FMT_BYTES)))
        info = dict(HELLO_MULTI)
        del info["get_multi"]
        server = ScriptedServer(self, script, info)
        b = Bucket(server.endpoint, timeout=2)
        self.addCleanup(b.close)
        r = b.get_multi(["a", "b"])
        self.assertEqual({k: v.value for k, v in r.items()}, {"a": b"v", "b": b"v"})
        self.assertEqual(seen, [(Op.GET, b"a"), (Op.GET, b"b")])
