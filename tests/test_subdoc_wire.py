"""
Sub-documents over the wire and over memcached: the netstring LOOKUP_IN
(0xd0) / MUTATE_IN (0xd1) codec and server (StringTransport, frames split at
every offset, illegal-input tables), RemoteBucket and the blocking client
against an in-process txcb server on loopback, and MemcachedPool's
lookup_in / mutate_in against real memcached (with CAS conflicts from a
concurrent writer).

The served bucket is tests.support.subdoc.SubdocTestBucket: the embedded
bucket, recording what the server passed on.
"""

import json
import os
import random
import re

from twisted.internet import defer, reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest
from zope.interface import implementer_only

import txcb.subdocument as SD
from txcb import errors
from txcb.buckets.memcached import MemcachedPool
from txcb.client.blocking import Bucket
from txcb.client.remote import BucketClientFactory
from txcb.errors import RC
from txcb.formats import FMT_JSON
from txcb.interfaces import IBucket
from txcb.wire.netstring import (
    encode_request, encode_response, netstring, SDOPT_PRESERVE_EXPIRY, SUBDOC_HEAD, SUBDOC_SPEC, FrameError, NetstringDecoder, Op,
    decode_lookup_reply, decode_mutate_reply, decode_response, decode_subdoc_failure,
    decode_subdoc_request, encode_lookup_reply, encode_mutate_reply, encode_subdoc_failure,
    encode_subdoc_request)

from tests.support import procs
from tests.support.netstring import ClientTestBase, ServerTestBase, frame, response
from tests.support.servers import _clock_at_now, start_server
from tests.support.subdoc import SubdocTestBucket
from tests.support.sync_contract import ThreadedServer

S = SD.Status
DOC = {"a": {"b": [1, 2, 3]}, "n": 10, "name": "x"}


def make_bucket(clock, **kw):
    """The bucket the server tests serve (see the module docstring)."""
    return SubdocTestBucket(clock=clock, pager_interval=0, **kw)


def spec_bytes(opcode, flags, path, value=b"", plen=None, vlen=None):
    """One raw spec, its lengths overridable (lying)."""
    return SUBDOC_SPEC.pack(opcode, flags, len(path) if plen is None else plen,
                            len(value) if vlen is None else vlen) + path + value


def body_of(*specs, doc_flags=0, options=0):
    return SUBDOC_HEAD.pack(doc_flags, options) + b"".join(specs)


GET_A = spec_bytes(SD.Opcode.GET, 0, b"a")


# -- the codec ------------------------------------------------------------------------

class SubdocCodecTests(unittest.TestCase):

    def test_request_round_trip_keeps_every_field(self):
        specs = [SD.get("a.b[0]"), SD.exists("x", xattr=True), SD.get_count(""),
                 SD.upsert("p.q", {"z": 1}, create_parents=True), SD.counter("n", -3),
                 SD.array_append("a.b", 4, 5), SD.remove("gone"), SD.get_fulldoc(),
                 SD.upsert("caf\u00e9", "\u00e9")]
        body = encode_subdoc_request(specs, SD.DocFlag.MKDOC, SDOPT_PRESERVE_EXPIRY)
        self.assertEqual(decode_subdoc_request(body, True),
                         (SD.DocFlag.MKDOC, SDOPT_PRESERVE_EXPIRY, specs))

    def test_spec_layout_is_opcode_flags_path_len_value_len(self):
        body = encode_subdoc_request([SD.upsert("ab", 7, xattr=True)], SD.DocFlag.ADD)
        self.assertEqual(body, b"\x02\x00" + b"\xc8\x04\x00\x02\x00\x00\x00\x01" + b"ab7")

    def test_sixteen_specs_pass(self):
        body = body_of(*[GET_A] * SD.MAX_SPECS)
        self.assertEqual(len(decode_subdoc_request(body, False)[2]), SD.MAX_SPECS)

    def test_illegal_request_bodies(self):
        rows = [
            ("empty body", b"", RC.EINVAL),
            ("half a head", b"\x00", RC.EINVAL),
            ("no specs", body_of(), S.INVALID_COMBO),
            ("seventeen specs", body_of(*[GET_A] * 17), S.INVALID_COMBO),
            ("truncated spec header", body_of(GET_A, b"\xc5\x00\x00"), RC.EINVAL),
            ("path length past the frame", body_of(spec_bytes(0xC5, 0, b"abc", plen=4)),
             RC.EINVAL),
            ("path length 65535", body_of(spec_bytes(0xC5, 0, b"abc", plen=0xFFFF)),
             RC.EINVAL),
            ("value length past the frame",
             body_of(spec_bytes(0xC8, 0, b"a", b"1", vlen=2)), RC.EINVAL),
            ("value length 2**32-1",
             body_of(spec_bytes(0xC8, 0, b"a", b"1", vlen=0xFFFFFFFF)), RC.EINVAL),
            ("unknown option bit", body_of(GET_A, options=0x02), RC.EINVAL),
        ]
        for name, body, status in rows:
            with self.assertRaises(FrameError, msg=name) as cm:
                decode_subdoc_request(body, True)
            self.assertEqual(cm.exception.status, status, name)

    def test_random_bodies_decode_or_raise_frame_error(self):
        rnd = random.Random(15)
        good = encode_subdoc_request([SD.get("a.b"), SD.upsert("c", [1, 2])])
        for _ in range(3000):
            body = bytearray(good)
            for _ in range(rnd.randint(1, 4)):
                body[rnd.randrange(len(body))] = rnd.randrange(256)
            body = bytes(body[:rnd.randint(0, len(body))])
            try:
                doc_flags, options, specs = decode_subdoc_request(body, True)
            except FrameError as e:
                self.assertIn(e.status, (RC.EINVAL, S.INVALID_COMBO))
                self.assertFalse(e.fatal)
            else:
                self.assertTrue(1 <= len(specs) <= SD.MAX_SPECS)
                self.assertEqual(encode_subdoc_request(specs, doc_flags, options), body)

    def test_preserve_expiry_is_a_mutation_option_only(self):
        body = body_of(GET_A, options=SDOPT_PRESERVE_EXPIRY)
        self.assertEqual(decode_subdoc_request(body, True)[1], SDOPT_PRESERVE_EXPIRY)
        with self.assertRaises(FrameError) as cm:
            decode_subdoc_request(body, False)
        self.assertEqual(cm.exception.status, RC.EINVAL)

    def test_replies_round_trip(self):
        found = [(0, b"[1,2]"), (S.PATH_ENOENT, b""), (0, b"2")]
        self.assertEqual(decode_lookup_reply(encode_lookup_reply(
            [(0, b"[1,2]"), (S.PATH_ENOENT, None), (0, b"2")])), found)
        self.assertEqual(decode_lookup_reply(encode_lookup_reply(found)), found)
        done = [(0, 0, b"11"), (3, 0, b"-1")]
        self.assertEqual(decode_mutate_reply(encode_mutate_reply(done)), done)
        self.assertEqual(decode_subdoc_failure(encode_subdoc_failure(2, S.PATH_EEXISTS, b"m")),
                         (2, S.PATH_EEXISTS, "m"))

    def test_truncated_replies_are_fatal(self):
        lookup = encode_lookup_reply([(0, b"[1,2]")])
        mutate = encode_mutate_reply([(0, 0, b"11")])
        for n in range(1, len(lookup)):
            with self.assertRaises(FrameError) as cm:
                decode_lookup_reply(lookup[:n])
            self.assertTrue(cm.exception.fatal)
        for n in range(1, len(mutate)):
            with self.assertRaises(FrameError) as cm:
                decode_mutate_reply(mutate[:n])
            self.assertTrue(cm.exception.fatal)
        with self.assertRaises(FrameError):
            decode_subdoc_failure(b"\x01\x00")


class SubdocDocExampleTests(unittest.TestCase):
    """docs/protocol.rst 3.4's hex dumps are what the codec makes."""

    def dumps(self):
        path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                            "docs", "protocol.rst")
        with open(path, encoding="utf-8") as f:
            text = f.read()
        pattern = r"^(\S[^\n]*)::\n\n((?:    [0-9a-f]{4}  [^\n]*\n)+)"
        return {m.group(1): bytes(int(h, 16) for line in m.group(2).splitlines()
                                  for h in line[10:57].split())
                for m in re.finditer(pattern, text, re.M)}

    def test_lookup_in_example(self):
        dumps = self.dumps()
        self.assertEqual(dumps["LOOKUP_IN request: GET ``a``, EXISTS ``b`` of ``u``, opaque 4"],
                         netstring(encode_request(Op.LOOKUP_IN, 4, key=b"u",
                                                  value=encode_subdoc_request(
                                                      [SD.get("a"), SD.exists("b")]))))
        self.assertEqual(dumps["LOOKUP_IN reply: ``a`` is ``[1]``, ``b`` not found (0xCC), "
                               "CAS 0x21"],
                         netstring(encode_response(Op.LOOKUP_IN, 4, S.MULTI_PATH_FAILURE,
                                                   cas=0x21, body=encode_lookup_reply(
                                                       [(0, b"[1]"), (S.PATH_ENOENT, None)]))))


# -- the server, over a StringTransport -----------------------------------------------

class SubdocServerProtocolTests(ServerTestBase):

    def setUp(self):
        ServerTestBase.setUp(self)
        self.bucket = make_bucket(self.clock)
        self.setup_server(bucket=self.bucket)
        self.bucket.store_sync("upsert", "k", DOC)

    def lookup(self, *specs, key=b"k", doc_flags=0, opaque=1):
        body = encode_subdoc_request(list(specs), doc_flags)
        return self.call(Op.LOOKUP_IN, opaque, key=key, value=body)

    def mutate(self, *specs, key=b"k", doc_flags=0, options=0, opaque=1, **kw):
        body = encode_subdoc_request(list(specs), doc_flags, options)
        return self.call(Op.MUTATE_IN, opaque, key=key, value=body, **kw)

    def raw(self, opcode, body, key=b"k", opaque=7):
        return self.call(opcode, opaque, key=key, value=body)

    def test_lookup_answers_per_spec(self):
        cas = self.bucket.get_sync("k").cas
        res = self.lookup(SD.get("a.b"), SD.exists("a.nope"), SD.get_count("a.b"))
        self.assertEqual((res.status, res.cas), (S.MULTI_PATH_FAILURE, cas))
        self.assertEqual(decode_lookup_reply(res.body),
                         [(0, b"[1,2,3]"), (S.PATH_ENOENT, b""), (0, b"3")])
        res = self.lookup(SD.get("name"), SD.exists("n"))
        self.assertEqual(res.status, 0)
        self.assertEqual(decode_lookup_reply(res.body), [(0, b'"x"'), (0, b"")])

    def test_lookup_frame_split_at_every_offset(self):
        body = encode_subdoc_request([SD.get("a.b[1]"), SD.get_count("a")])
        data = frame(Op.LOOKUP_IN, 3, key=b"k", value=body)
        self.proto.dataReceived(data)
        whole = self.transport.value()
        self.transport.clear()
        for cut in range(1, len(data)):
            self.proto.dataReceived(data[:cut])
            self.assertEqual(self.transport.value(), b"", cut)
            self.proto.dataReceived(data[cut:])
            self.assertEqual(self.transport.value(), whole, cut)
            self.transport.clear()
        self.assertEqual(decode_lookup_reply(decode_response(
            NetstringDecoder(1 << 20).feed(whole)[0]).body), [(0, b"2"), (0, b"1")])

    def test_mutate_frame_split_at_every_offset_applies_once_per_frame(self):
        data = frame(Op.MUTATE_IN, 4, key=b"k", value=encode_subdoc_request(
            [SD.counter("n", 1)]))
        for cut in range(1, len(data)):
            self.proto.dataReceived(data[:cut])
            self.proto.dataReceived(data[cut:])
        self.assertEqual(json.loads(self.bucket.get_sync("k").raw)["n"], 10 + len(data) - 1)
        replies = self.responses()
        self.assertEqual(len(replies), len(data) - 1)
        self.assertEqual(decode_mutate_reply(replies[-1].body),
                         [(0, 0, str(10 + len(data) - 1).encode())])

    def test_sync_bucket_is_answered_without_its_deferred_calls(self):
        def deferred_call(*a, **kw):
            raise AssertionError("the Deferred path was taken")
        self.bucket.lookup_in = self.bucket.mutate_in = deferred_call
        res = self.mutate(SD.upsert("a.c", 7), SD.counter("n", 1))
        self.assertEqual((res.status, decode_mutate_reply(res.body)), (0, [(1, 0, b"11")]))
        res = self.lookup(SD.get("a.c"), SD.get("nope"))
        self.assertEqual((res.status, decode_lookup_reply(res.body)),
                         (S.MULTI_PATH_FAILURE, [(0, b"7"), (S.PATH_ENOENT, b"")]))
        res = self.mutate(SD.insert("a.c", 1))
        self.assertEqual(res.status, S.MULTI_PATH_FAILURE)
        self.assertEqual(self.bucket.get_sync("k").value["n"], 11)

    def test_mutate_returns_cas_seqno_and_counter_values(self):
        old = self.bucket.get_sync("k")
        res = self.mutate(SD.upsert("a.c", True), SD.counter("n", 5), SD.counter("m", -2,
                                                                                  True))
        self.assertEqual(res.status, 0)
        now = self.bucket.get_sync("k")
        self.assertNotEqual(now.cas, old.cas)
        self.assertEqual(res.cas, now.cas)
        self.assertGreater(res.seqno, 0)
        self.assertEqual(decode_mutate_reply(res.body), [(1, 0, b"15"), (2, 0, b"-2")])
        self.assertEqual(json.loads(now.raw)["a"]["c"], True)

    def test_failing_spec_is_0xcc_with_index_and_status_and_changes_nothing(self):
        before = self.bucket.get_sync("k")
        res = self.mutate(SD.counter("n", 1), SD.insert("name", "y"))
        self.assertEqual(res.status, S.MULTI_PATH_FAILURE)
        index, status, message = decode_subdoc_failure(res.body)
        self.assertEqual((index, status), (1, S.PATH_EEXISTS))
        self.assertIn("spec 1", message)
        after = self.bucket.get_sync("k")
        self.assertEqual((after.cas, after.raw), (before.cas, before.raw))

    def test_document_errors(self):
        self.assertEqual(self.lookup(SD.get("a"), key=b"missing").status, RC.KEY_ENOENT)
        self.assertEqual(self.mutate(SD.upsert("a", 1), key=b"missing").status,
                         RC.KEY_ENOENT)
        self.assertEqual(self.mutate(SD.upsert("a", 1), doc_flags=SD.DocFlag.ADD).status,
                         RC.KEY_EEXISTS)
        self.assertEqual(self.mutate(SD.upsert("a", 1), cas=12345).status, RC.KEY_EEXISTS)
        self.bucket.store_sync("upsert", "text", "not json")
        self.assertEqual(decode_lookup_reply(self.lookup(SD.get("a"), key=b"text").body),
                         [(S.DOC_NOTJSON, b"")])

    def test_doc_flags_create_and_insert(self):
        res = self.mutate(SD.upsert("p.q", 1), key=b"new", doc_flags=SD.DocFlag.MKDOC)
        self.assertEqual(res.status, 0)
        got = self.bucket.get_sync("new")
        self.assertEqual((json.loads(got.raw), got.cas), ({"p": {"q": 1}}, res.cas))
        res = self.mutate(SD.upsert("z", 2), key=b"new2", doc_flags=SD.DocFlag.ADD)
        self.assertEqual(res.status, 0)
        self.assertEqual(self.mutate(SD.upsert("z", 2), key=b"new2",
                                     doc_flags=SD.DocFlag.ADD).status, RC.KEY_EEXISTS)

    def test_header_and_options_reach_the_bucket(self):
        res = self.mutate(SD.upsert("a.c", 1), options=SDOPT_PRESERVE_EXPIRY, ttl=100,
                          doc_flags=SD.DocFlag.MKDOC, key=b"k2")
        self.assertEqual(res.status, 0)
        name, key, specs, kw = self.bucket.calls[-1]
        self.assertEqual((name, key, specs), ("mutate_in", b"k2", (SD.upsert("a.c", 1),)))
        self.assertEqual(kw, dict(cas=0, ttl=100, upsert_doc=True, insert_doc=False,
                                  persist_to=0, replicate_to=0, preserve_expiry=True))
        self.lookup(SD.get("a"), doc_flags=SD.DocFlag.ACCESS_DELETED | SD.DocFlag.REPLICA_READ)
        self.assertEqual(self.bucket.calls[-1][3], {"access_deleted": True})

    def test_durable_mutate_in_goes_to_the_bucket_call(self):
        res = self.mutate(SD.upsert("a.c", 1), persist_to=-1, replicate_to=-1)
        self.assertEqual(res.status, 0)
        self.assertEqual((self.bucket.calls[-1][3]["persist_to"],
                          self.bucket.calls[-1][3]["replicate_to"]), (-1, -1))

    def test_illegal_requests_are_answered_and_the_connection_stays(self):
        up = spec_bytes(SD.Opcode.DICT_UPSERT, 0, b"a", b"1")
        rows = [
            ("no specs", Op.LOOKUP_IN, body_of(), S.INVALID_COMBO),
            ("seventeen specs", Op.LOOKUP_IN, body_of(*[GET_A] * 17), S.INVALID_COMBO),
            ("seventeen mutations", Op.MUTATE_IN, body_of(*[up] * 17), S.INVALID_COMBO),
            ("malformed spec list", Op.LOOKUP_IN, body_of(GET_A, b"\xc5"), RC.EINVAL),
            ("path length past the frame", Op.LOOKUP_IN,
             body_of(spec_bytes(0xC5, 0, b"a", plen=200)), RC.EINVAL),
            ("value length past the frame", Op.MUTATE_IN,
             body_of(spec_bytes(0xC8, 0, b"a", b"1", vlen=9)), RC.EINVAL),
            ("unknown spec opcode", Op.LOOKUP_IN, body_of(spec_bytes(0x77, 0, b"a")),
             S.INVALID_COMBO),
            ("unknown mutation opcode", Op.MUTATE_IN, body_of(spec_bytes(0xEE, 0, b"a", b"1")),
             S.INVALID_COMBO),
            ("a lookup spec in MUTATE_IN", Op.MUTATE_IN, body_of(GET_A), S.INVALID_COMBO),
            ("a mutation spec in LOOKUP_IN", Op.LOOKUP_IN, body_of(up), S.INVALID_COMBO),
            ("unknown path flag", Op.LOOKUP_IN, body_of(spec_bytes(0xC5, 0x40, b"a")),
             RC.EINVAL),
            ("path over 1024 bytes", Op.LOOKUP_IN, body_of(spec_bytes(0xC5, 0, b"a" * 1025)),
             RC.EINVAL),
            ("malformed path", Op.LOOKUP_IN, body_of(spec_bytes(0xC5, 0, b"a[x")),
             S.MULTI_PATH_FAILURE),
            ("value that is not JSON", Op.MUTATE_IN,
             body_of(spec_bytes(0xC8, 0, b"a", b"{nope")), S.MULTI_PATH_FAILURE),
            ("unknown doc flags", Op.LOOKUP_IN, body_of(GET_A, doc_flags=0x80), RC.EINVAL),
            ("MKDOC on a lookup", Op.LOOKUP_IN, body_of(GET_A, doc_flags=SD.DocFlag.MKDOC),
             RC.EINVAL),
            ("create as deleted", Op.MUTATE_IN,
             body_of(up, doc_flags=SD.DocFlag.CREATE_AS_DELETED), RC.NOT_SUPPORTED),
            ("access deleted on a mutation", Op.MUTATE_IN,
             body_of(up, doc_flags=SD.DocFlag.ACCESS_DELETED), RC.NOT_SUPPORTED),
            ("MKDOC and ADD", Op.MUTATE_IN,
             body_of(up, doc_flags=SD.DocFlag.MKDOC | SD.DocFlag.ADD), RC.EINVAL),
            ("preserve expiry on a lookup", Op.LOOKUP_IN,
             body_of(GET_A, options=SDOPT_PRESERVE_EXPIRY), RC.EINVAL),
        ]
        before = self.bucket.get_sync("k")
        for n, (name, opcode, body, status) in enumerate(rows):
            res = self.raw(opcode, body, opaque=100 + n)
            self.assertEqual(res.status, status, name)
        after = self.bucket.get_sync("k")
        self.assertEqual((after.cas, after.raw), (before.cas, before.raw))
        self.assertEqual(self.call(Op.NOOP, 9).status, 0)
        self.assertFalse(self.transport.disconnecting)

    def test_random_bodies_get_one_reply_each_and_no_internal_error(self):
        rnd = random.Random(16)
        good = encode_subdoc_request([SD.get("a.b"), SD.exists("n")])
        replies = 0
        for n in range(500):
            body = bytearray(good)
            for _ in range(rnd.randint(1, 3)):
                body[rnd.randrange(len(body))] = rnd.randrange(256)
            opcode = rnd.choice((Op.LOOKUP_IN, Op.MUTATE_IN))
            self.proto.dataReceived(frame(opcode, n, key=b"k", value=bytes(body)))
            for res in self.responses():
                replies += 1
                self.assertEqual(res.opaque, n)
                self.assertNotEqual(res.status, RC.EINTERNAL)
        self.assertEqual(replies, 500)
        self.assertFalse(self.transport.disconnecting)

    def test_keyless_request_is_refused(self):
        res = self.raw(Op.LOOKUP_IN, body_of(GET_A), key=b"")
        self.assertEqual(res.status, RC.EINVAL)
        self.assertEqual(self.call(Op.NOOP, 9).status, 0)


@implementer_only(IBucket)
class _PendingSubdocBucket(SubdocTestBucket):
    """
    The served bucket, its lookup_in answered only when the test says so;
    not an ISyncBucket, so the server takes the Deferred path.
    """

    def __init__(self, *a, **kw):
        SubdocTestBucket.__init__(self, *a, **kw)
        self.pending = []
        self.cancelled = []

    def lookup_in(self, key, *specs, access_deleted=False):
        d = defer.Deferred(self.cancelled.append)
        self.pending.append((d, SubdocTestBucket.lookup_in(self, key, *specs)))
        return d


class SubdocServerLaterTests(ServerTestBase):

    def setUp(self):
        ServerTestBase.setUp(self)
        self.bucket = _PendingSubdocBucket(clock=self.clock, pager_interval=0)
        self.bucket.store_sync("upsert", "k", DOC)
        self.seen = []
        self.factory = self.make_factory(bucket=self.bucket)
        self.factory.observer = self  # installed before the connection is made
        self.proto, self.transport = self.connect(self.factory)

    def request_done(self, op, status, started):
        self.seen.append((op, status))

    def test_replies_when_the_bucket_answers_and_overtaking_is_allowed(self):
        self.proto.dataReceived(frame(Op.LOOKUP_IN, 1, key=b"k", value=encode_subdoc_request(
            [SD.get("n")])))
        self.proto.dataReceived(frame(Op.NOOP, 2))
        self.assertEqual([r.opaque for r in self.responses()], [2])
        d, answer = self.bucket.pending.pop()
        answer.chainDeferred(d)
        self.clock.advance(0)
        [res] = self.responses()
        self.assertEqual((res.opaque, decode_lookup_reply(res.body)), (1, [(0, b"10")]))

    def test_connection_loss_cancels_what_the_bucket_still_owes(self):
        self.proto.dataReceived(frame(Op.LOOKUP_IN, 1, key=b"k", value=encode_subdoc_request(
            [SD.get("n")])))
        d, _answer = self.bucket.pending.pop()
        self.proto.connectionLost(None)
        self.assertEqual(self.bucket.cancelled, [d])
        self.assertEqual(self.responses(), [])

    def test_observer_sees_each_call_and_its_status(self):
        self.proto.dataReceived(frame(Op.MUTATE_IN, 1, key=b"k", value=encode_subdoc_request(
            [SD.insert("n", 1)])))
        self.proto.dataReceived(frame(Op.MUTATE_IN, 2, key=b"k", value=encode_subdoc_request(
            [SD.upsert("n", 1)])))
        self.proto.dataReceived(frame(Op.LOOKUP_IN, 3, key=b"k", value=body_of()))
        self.clock.advance(0)
        self.assertEqual(self.seen, [("mutate_in", S.MULTI_PATH_FAILURE), ("mutate_in", 0),
                                     ("lookup_in", S.INVALID_COMBO)])


# -- the Twisted client, over a StringTransport ---------------------------------------

class SubdocClientProtocolTests(ClientTestBase):

    def setUp(self):
        ClientTestBase.setUp(self)
        self.make_client()

    def test_request_carries_specs_flags_and_header(self):
        self.bucket.mutate_in("k", SD.upsert("a", 1), SD.counter("n", 2), cas=5, ttl=9,
                              upsert_doc=True, preserve_expiry=True, persist_to=1)
        req = self.one_request()
        self.assertEqual((req.opcode, req.key, req.cas, req.ttl, req.persist_to),
                         (Op.MUTATE_IN, b"k", 5, 9, 1))
        self.assertEqual(decode_subdoc_request(req.value, True),
                         (SD.DocFlag.MKDOC, SDOPT_PRESERVE_EXPIRY,
                          [SD.upsert("a", 1), SD.counter("n", 2)]))
        self.proto.dataReceived(response(Op.MUTATE_IN, req.opaque, cas=77, seqno=3))
        self.bucket.lookup_in("k", SD.get("a"), access_deleted=True)
        req = self.one_request()
        self.assertEqual(decode_subdoc_request(req.value, False),
                         (SD.DocFlag.ACCESS_DELETED, 0, [SD.get("a")]))
        self.proto.dataReceived(response(Op.LOOKUP_IN, req.opaque, body=encode_lookup_reply(
            [(0, b"1")])))
        self.assertIdle()

    def test_lookup_reply_becomes_a_subdoc_result(self):
        d = self.bucket.lookup_in("k", SD.get("a"), SD.exists("b"))
        req = self.one_request()
        self.proto.dataReceived(response(Op.LOOKUP_IN, req.opaque, S.MULTI_PATH_FAILURE,
                                         cas=42, body=encode_lookup_reply(
                                             [(0, b'{"x":1}'), (S.PATH_ENOENT, None)])))
        result = self.successResultOf(d)
        self.assertEqual((result.cas, result.rc, result["a"]), (42, S.MULTI_PATH_FAILURE,
                                                                {"x": 1}))
        self.assertFalse(result.exists(1))
        self.assertEqual(result.status("b"), S.PATH_ENOENT)

    def test_mutation_failure_is_subdoc_error_with_index(self):
        d = self.bucket.mutate_in("k", SD.upsert("a", 1), SD.insert("b", 2))
        req = self.one_request()
        self.proto.dataReceived(response(Op.MUTATE_IN, req.opaque, S.MULTI_PATH_FAILURE,
                                         body=encode_subdoc_failure(1, S.PATH_EEXISTS, b"no")))
        e = self.failureResultOf(d, SD.SubdocError).value
        self.assertEqual((e.index, e.status, e.rc, e.key), (1, S.PATH_EEXISTS,
                                                            S.MULTI_PATH_FAILURE, "k"))

    def test_reply_that_does_not_fit_the_specs_is_a_protocol_error(self):
        d = self.bucket.lookup_in("k", SD.get("a"))
        req = self.one_request()
        self.proto.dataReceived(response(Op.LOOKUP_IN, req.opaque, body=encode_lookup_reply(
            [(0, b"1"), (0, b"2")])))
        self.failureResultOf(d, errors.ProtocolError)
        d = self.bucket.mutate_in("k", SD.upsert("a", 1))
        req = self.one_request()
        self.proto.dataReceived(response(Op.MUTATE_IN, req.opaque, body=encode_mutate_reply(
            [(5, 0, b"1")])))
        self.failureResultOf(d, errors.ProtocolError)
        self.assertIsNone(self.proto.lost)  # the stream itself still parses

    def test_malformed_bodies_close_the_connection(self):
        rows = [
            (Op.LOOKUP_IN, 0, encode_lookup_reply([(0, b"[1]")])[:-1]),
            (Op.LOOKUP_IN, S.MULTI_PATH_FAILURE, b"\x00\xc0\x00"),
            (Op.MUTATE_IN, 0, encode_mutate_reply([(0, 0, b"11")])[:-1]),
            (Op.MUTATE_IN, S.MULTI_PATH_FAILURE, b"\x01"),
        ]
        for opcode, status, body in rows:
            self.make_client()
            call = self.bucket.lookup_in if opcode == Op.LOOKUP_IN else self.bucket.mutate_in
            d = call("k", SD.get("a") if opcode == Op.LOOKUP_IN else SD.upsert("a", 1))
            other = self.bucket.get("other")
            req = self.sent(self.transport)[0]
            self.proto.dataReceived(response(opcode, req.opaque, status, body=body))
            self.failureResultOf(d, errors.ProtocolError)
            self.failureResultOf(other, errors.NetworkError)
            self.assertIsNotNone(self.proto.lost, (opcode, status))
            self.proto.connectionLost(None)
        self.assertEqual(len(self.client_warnings()), len(rows))

    def test_bad_arguments_fail_before_sending(self):
        rows = [
            (lambda: self.bucket.lookup_in("k", "a.b"), errors.ArgumentError),
            (lambda: self.bucket.mutate_in("k", SD.upsert("a", 1), ttl=-1),
             errors.ArgumentError),
            (lambda: self.bucket.mutate_in("k", SD.upsert("a", 1), cas=-1),
             errors.ArgumentError),
            (lambda: self.bucket.mutate_in("k", SD.upsert("a", 1), persist_to=999),
             errors.ArgumentError),
            (lambda: self.bucket.mutate_in("k", SD.upsert("a", "x" * 2000)),
             errors.TooBigError),
            (lambda: self.bucket.lookup_in("k", SD.get("p" * 1025)), SD.SubdocError),
            (lambda: self.bucket.lookup_in("k", SD.get("p" * 70000)), SD.SubdocError),
            (lambda: self.bucket.lookup_in("", SD.get("a")), errors.ArgumentError),
        ]
        for call, error in rows:
            self.failureResultOf(call(), error)
        self.assertEqual(self.sent(self.transport), [])

    def test_connection_loss_fails_the_call(self):
        d = self.bucket.lookup_in("k", SD.get("a"))
        self.transport.loseConnection()
        self.proto.connectionLost(None)
        self.failureResultOf(d, errors.NetworkError)


# -- RemoteBucket against a real txcb server on loopback ------------------------------

class SubdocRemoteBucketTests(unittest.TestCase):

    @inlineCallbacks
    def setUp(self):
        self.served = make_bucket(_clock_at_now(), max_value_size=4096)
        _factory, port, _b = yield start_server(self, bucket=self.served)
        factory = BucketClientFactory(reactor, timeout=5)
        connector = reactor.connectTCP("127.0.0.1", port, factory)
        self.addCleanup(connector.disconnect)
        self.bucket = yield factory.deferred
        self.addCleanup(self.bucket.close)
        yield self.bucket.upsert("doc", DOC)

    @inlineCallbacks
    def test_lookup_in(self):
        stored = yield self.bucket.get("doc")
        r = yield self.bucket.lookup_in("doc", SD.get("a.b[-1]"), SD.exists("name"),
                                        SD.get_count("a.b"), SD.get_fulldoc())
        self.assertEqual((r.cas, r.rc, r.success), (stored.cas, S.SUCCESS, True))
        self.assertEqual((r[0], r.exists("name"), r[2], r[3]), (3, True, 3, DOC))
        r = yield self.bucket.lookup_in("doc", SD.get("a.zz"), SD.get("n"), SD.get("a[0]"))
        self.assertEqual(r.rc, S.MULTI_PATH_FAILURE)
        self.assertEqual([r.status(i) for i in range(3)],
                         [S.PATH_ENOENT, S.SUCCESS, S.PATH_MISMATCH])
        self.assertFalse(r.exists(0))
        self.assertEqual(r["n"], 10)
        with self.assertRaises(SD.SubdocError):
            r[2]

    @inlineCallbacks
    def test_mutate_in(self):
        old = yield self.bucket.get("doc")
        r = yield self.bucket.mutate_in("doc", SD.counter("n", 5), SD.array_append("a.b", 4),
                                        SD.upsert("new.x", "y", create_parents=True), ttl=60)
        self.assertNotEqual(r.cas, old.cas)
        self.assertEqual((r[0], r.mutation_token[1] > 0), (15, True))
        now = yield self.bucket.get("doc")
        self.assertEqual(now.cas, r.cas)
        self.assertEqual(now.value, dict(DOC, n=15, a={"b": [1, 2, 3, 4]}, new={"x": "y"}))
        r = yield self.bucket.mutate_in("doc", SD.remove("new"), cas=r.cas)
        self.assertEqual((yield self.bucket.get("doc")).value, dict(
            DOC, n=15, a={"b": [1, 2, 3, 4]}))

    @inlineCallbacks
    def test_every_error_kind(self):
        before = yield self.bucket.get("doc")
        f = yield self.assertFailure(self.bucket.mutate_in(
            "doc", SD.counter("n", 1), SD.replace("nope", 1)), SD.SubdocError)
        self.assertEqual((f.index, f.status), (1, S.PATH_ENOENT))
        f = yield self.assertFailure(self.bucket.lookup_in(
            "doc", *[SD.get("a")] * 17), SD.SubdocError)
        self.assertEqual((f.index, f.status), (None, S.INVALID_COMBO))
        f = yield self.assertFailure(self.bucket.mutate_in("doc", SD.get("a")), SD.SubdocError)
        self.assertEqual(f.status, S.INVALID_COMBO)
        f = yield self.assertFailure(self.bucket.mutate_in(
            "doc", SD.upsert("n", 1), upsert_doc=True, insert_doc=True), SD.SubdocError)
        self.assertEqual(f.status, S.EINVAL)
        f = yield self.assertFailure(self.bucket.mutate_in("doc", SD.counter("name", 1)),
                                     SD.SubdocError)
        self.assertEqual((f.index, f.status), (0, S.PATH_MISMATCH))
        yield self.assertFailure(self.bucket.lookup_in("missing", SD.get("a")),
                                 errors.NotFoundError)
        yield self.assertFailure(self.bucket.mutate_in("missing", SD.upsert("a", 1)),
                                 errors.NotFoundError)
        yield self.assertFailure(self.bucket.mutate_in("doc", SD.upsert("a", 1),
                                                       insert_doc=True), errors.KeyExistsError)
        yield self.assertFailure(self.bucket.mutate_in("doc", SD.upsert("a", 1),
                                                       cas=before.cas + 1),
                                 errors.KeyExistsError)
        self.assertEqual((yield self.bucket.get("doc")).cas, before.cas)
        yield self.bucket.mutate_in("doc", SD.upsert("big1", "x" * 2000))
        # the result would pass the server's 4096-byte limit: refused there
        yield self.assertFailure(self.bucket.mutate_in(
            "doc", SD.upsert("big2", "x" * 2100)), errors.TooBigError)
        # a request bigger than the limit: refused before it is sent
        yield self.assertFailure(self.bucket.mutate_in(
            "doc", SD.upsert("big3", "x" * 4100)), errors.TooBigError)

    @inlineCallbacks
    def test_xattr_specs_go_over_the_wire(self):
        d = self.bucket.mutate_in("doc", SD.upsert("meta.v", 1, xattr=True,
                                                   create_parents=True))
        yield d
        r = yield self.bucket.lookup_in("doc", SD.get("meta.v", xattr=True), SD.get("n"))
        self.assertEqual((r[0], r[1]), (1, 10))
        mutations = [call for call in self.served.calls if call[0] == "mutate_in"]
        spec = mutations[-1][2][0]
        self.assertEqual((spec.path, spec.flags), ("meta.v", SD.PathFlag.XATTR
                                                   | SD.PathFlag.MKDIR_P))

    @inlineCallbacks
    def test_document_flags(self):
        r = yield self.bucket.mutate_in("made", SD.upsert("a.b", 1), upsert_doc=True)
        got = yield self.bucket.get("made")
        self.assertEqual((got.value, got.cas, got.flags), ({"a": {"b": 1}}, r.cas, FMT_JSON))
        yield self.bucket.mutate_in("ins", SD.array_append("", 1), insert_doc=True)
        self.assertEqual((yield self.bucket.get("ins")).value, [1])
        yield self.bucket.mutate_in("ins", SD.remove_fulldoc())
        yield self.assertFailure(self.bucket.get("ins"), errors.NotFoundError)


# -- the blocking client ---------------------------------------------------------------

class SubdocBlockingTests(unittest.SynchronousTestCase):

    def setUp(self):
        from twisted.internet.task import Clock
        clock = Clock()
        clock.advance(1700000000)
        self.server = ThreadedServer(bucket=make_bucket(clock, max_value_size=4096))
        self.addCleanup(self.server.stop)
        self.bucket = Bucket(self.server.endpoint, timeout=5)
        self.addCleanup(self.bucket.close)
        self.bucket.upsert("doc", DOC)

    def test_lookup_in_and_mutate_in(self):
        r = self.bucket.lookup_in("doc", SD.get("a.b"), SD.exists("zz"))
        self.assertEqual((r[0], r.exists(1), r.rc), ([1, 2, 3], False, S.MULTI_PATH_FAILURE))
        m = self.bucket.mutate_in("doc", SD.counter("n", -4), SD.array_prepend("a.b", 0))
        self.assertEqual(m[0], 6)
        self.assertEqual(self.bucket.get("doc").cas, m.cas)
        self.assertEqual(self.bucket.lookup_in("doc", SD.get("a.b[0]"))[0], 0)

    def test_errors(self):
        with self.assertRaises(SD.SubdocError) as cm:
            self.bucket.mutate_in("doc", SD.upsert("n", 1), SD.insert("n", 2))
        self.assertEqual((cm.exception.index, cm.exception.status), (1, S.PATH_EEXISTS))
        with self.assertRaises(errors.NotFoundError):
            self.bucket.lookup_in("missing", SD.get("a"))
        with self.assertRaises(errors.KeyExistsError):
            self.bucket.mutate_in("doc", SD.upsert("n", 1), insert_doc=True)
        with self.assertRaises(errors.ArgumentError):
            self.bucket.lookup_in("doc", object())
        self.assertEqual(self.bucket.get("doc").value, DOC)


# -- MemcachedPool against real memcached ----------------------------------------------

SKIP_MEMCACHED = None if procs.have(procs.MEMCACHED) else "memcached is not installed"


class SubdocMemcachedPoolTests(unittest.TestCase):
    skip = SKIP_MEMCACHED

    @inlineCallbacks
    def setUp(self):
        self.servers = procs.start_group(1)
        self.addCleanup(procs.stop_group, self.servers)
        addresses = [m.address for m in self.servers]
        self.pool = MemcachedPool(addresses, reactor=reactor)
        self.addCleanup(self.pool.close)
        self.other = MemcachedPool(addresses, reactor=reactor)  # a concurrent writer
        self.addCleanup(self.other.close)
        yield self.pool.upsert("doc", DOC)

    @inlineCallbacks
    def test_lookup_in(self):
        stored = yield self.pool.get("doc")
        r = yield self.pool.lookup_in("doc", SD.get("a.b[1]"), SD.exists("q"), SD.get_count(""))
        self.assertEqual((r.cas, r[0], r.exists(1), r[2], r.rc),
                         (stored.cas, 2, False, 3, S.MULTI_PATH_FAILURE))
        yield self.assertFailure(self.pool.lookup_in("missing", SD.get("a")),
                                 errors.NotFoundError)
        yield self.pool.upsert("text", "plain")
        r = yield self.pool.lookup_in("text", SD.get("a"))
        self.assertEqual(r.status(0), S.DOC_NOTJSON)

    @inlineCallbacks
    def test_mutate_in_keeps_flags_and_sets_cas(self):
        old = yield self.pool.get("doc")
        r = yield self.pool.mutate_in("doc", SD.counter("n", 2), SD.upsert("a.c", [1]))
        now = yield self.pool.get("doc")
        self.assertEqual((r[0], r.cas, now.flags), (12, now.cas, old.flags))
        self.assertNotEqual(r.cas, old.cas)
        self.assertIsNone(r.mutation_token)
        self.assertEqual(now.value, dict(DOC, n=12, a={"b": [1, 2, 3], "c": [1]}))

    @inlineCallbacks
    def test_errors_change_nothing(self):
        before = yield self.pool.get("doc")
        f = yield self.assertFailure(self.pool.mutate_in(
            "doc", SD.counter("n", 1), SD.insert("name", 1)), SD.SubdocError)
        self.assertEqual((f.index, f.status), (1, S.PATH_EEXISTS))
        yield self.assertFailure(self.pool.mutate_in("missing", SD.upsert("a", 1)),
                                 errors.NotFoundError)
        yield self.assertFailure(self.pool.mutate_in("doc", SD.upsert("a", 1),
                                                     insert_doc=True), errors.KeyExistsError)
        yield self.assertFailure(self.pool.mutate_in("doc", SD.upsert("a", 1),
                                                     cas=before.cas + 1),
                                 errors.KeyExistsError)
        self.assertEqual((yield self.pool.get("doc")).cas, before.cas)

    @inlineCallbacks
    def test_specs_that_are_not_specs_are_refused(self):
        yield self.assertFailure(self.pool.lookup_in("doc", "a.b"), errors.ArgumentError)
        yield self.assertFailure(self.pool.mutate_in("doc", ("a", 1)), errors.ArgumentError)

    @inlineCallbacks
    def test_xattrs_and_preserve_expiry_are_refused(self):
        for call in (lambda: self.pool.lookup_in("doc", SD.get("$document", xattr=True)),
                     lambda: self.pool.mutate_in("doc", SD.upsert("m", 1, xattr=True)),
                     lambda: self.pool.mutate_in("doc", SD.upsert("m", 1),
                                                 preserve_expiry=True)):
            e = yield self.assertFailure(call(), errors.NotSupportedError)
            self.assertIn("memcached pool", e.message)

    @inlineCallbacks
    def test_document_flags_and_whole_document_delete(self):
        r = yield self.pool.mutate_in("made", SD.upsert("x.y", 1), upsert_doc=True, ttl=100)
        got = yield self.pool.get("made")
        self.assertEqual((got.value, got.cas, got.flags), ({"x": {"y": 1}}, r.cas, FMT_JSON))
        yield self.pool.mutate_in("made", SD.remove_fulldoc())
        yield self.assertFailure(self.pool.get("made"), errors.NotFoundError)

    @inlineCallbacks
    def test_namespaced_pool_mutates_its_own_key(self):
        view = self.pool.namespaced(b"ns:")
        yield view.upsert("doc", {"v": 1})
        yield view.mutate_in("doc", SD.counter("v", 1))
        self.assertEqual((yield self.pool.get(b"ns:doc")).value, {"v": 2})
        self.assertEqual((yield self.pool.get("doc")).value, DOC)
        r = yield view.lookup_in("doc", SD.get("v"))
        self.assertEqual(r[0], 2)

    def interfere(self, times):
        """The next ``times`` GETs of the pool are followed by another client's write."""
        real_get = self.pool.get
        state = {"left": times, "gets": 0}

        def get(key, *a, **kw):
            state["gets"] += 1
            d = real_get(key, *a, **kw)
            if state["left"] <= 0:
                return d
            state["left"] -= 1

            def write(found):
                return self.other.mutate_in(key, SD.counter("n", 100)).addCallback(
                    lambda _: found)
            return d.addCallback(write)
        self.pool.get = get
        return state

    @inlineCallbacks
    def test_cas_conflict_is_retried(self):
        state = self.interfere(3)
        r = yield self.pool.mutate_in("doc", SD.counter("n", 1))
        self.assertEqual((r[0], state["gets"]), (10 + 300 + 1, 4))
        self.assertEqual((yield self.other.get("doc")).value["n"], 311)

    @inlineCallbacks
    def test_cas_conflicts_past_the_bound_fail_temporarily(self):
        state = self.interfere(1000)
        e = yield self.assertFailure(self.pool.mutate_in("doc", SD.counter("n", 1)),
                                     errors.TemporaryFailError)
        self.assertEqual(state["gets"], self.pool.subdoc_attempts)
        self.assertIn("%d CAS conflicts" % self.pool.subdoc_attempts, e.message)
        self.assertEqual((yield self.other.get("doc")).value["n"],
                         10 + 100 * self.pool.subdoc_attempts)

    @inlineCallbacks
    def test_conflict_with_the_callers_cas_is_not_retried(self):
        cas = (yield self.pool.get("doc")).cas
        state = self.interfere(1)
        yield self.assertFailure(self.pool.mutate_in("doc", SD.counter("n", 1), cas=cas),
                                 errors.KeyExistsError)
        self.assertEqual(state["gets"], 1)

    @inlineCallbacks
    def test_document_created_concurrently_is_retried_as_an_update(self):
        real_get = self.pool.get
        calls = []

        def get(key, *a, **kw):
            calls.append(key)
            d = real_get(key, *a, **kw)
            if len(calls) == 1:
                d.addCallback(lambda found: self.other.upsert(key, {"n": 1}).addCallback(
                    lambda _: found))
            return d
        self.pool.get = get
        r = yield self.pool.mutate_in("fresh", SD.counter("n", 1), upsert_doc=True)
        self.assertEqual((r[0], len(calls)), (2, 2))
