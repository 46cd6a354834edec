"""
The sans-IO wire codec (txcb.wire.netstring): round trips for every opcode, the
netstring decoder under every split of the stream, and illegal-input tables
for the netstring decoder, decode_request and decode_response.
"""

import json
import os
import re
import struct

from twisted.trial import unittest

from txcb.wire import netstring as codec
from txcb.wire.netstring import (
    COUNTER_BODY, ENDURE_BODY, HEADER_LEN, KNOWN_OPS, OPT_CHECK_REMOVED, OPT_DECREMENT,
    OPT_INITIAL, OPT_QUIET, REQ_MAGIC, RES_MAGIC, FrameError, NetstringDecoder, Op,
    decode_request, decode_response, encode_request, encode_response, netstring)
from txcb.errors import RC

U32 = 2 ** 32 - 1
U64 = 2 ** 64 - 1

#: One representative request per opcode: the keyword arguments of encode_request.
REQUESTS = {
    Op.GET: dict(key=b"k", options=OPT_QUIET),
    Op.GAT: dict(key=b"gat-key", ttl=30),
    Op.UPSERT: dict(key=b"u" * 250, value=b"\x00binary,:value\xff", cas=U64, ttl=U32,
                    flags=U32, persist_to=-1, replicate_to=127),
    Op.INSERT: dict(key=b"ins", value=b"", flags=0x02000000, persist_to=-1, replicate_to=-1),
    Op.REPLACE: dict(key=b"rep", value=b"123:,", cas=1, ttl=2592001),
    Op.REMOVE: dict(key=b"rm", cas=7, options=OPT_QUIET),
    Op.COUNTER: dict(key=b"ctr", value=COUNTER_BODY.pack(U64, 10),
                     options=OPT_DECREMENT | OPT_INITIAL, ttl=5),
    Op.NOOP: dict(),
    Op.APPEND: dict(key=b"ap", value=b"tail"),
    Op.PREPEND: dict(key=b"pp", value=b"head", cas=99),
    Op.STATS: dict(),
    Op.TOUCH: dict(key=b"t", ttl=1),
    Op.HELLO: dict(value=b'{"client": "test"}'),
    Op.LOCK: dict(key=b"lk", ttl=15),
    Op.UNLOCK: dict(key=b"lk", cas=12345),
    Op.ENDURE: dict(key=b"e", value=ENDURE_BODY.pack(5000, 10), options=OPT_CHECK_REMOVED,
                    persist_to=1, replicate_to=-1, cas=3),
    Op.GET_MULTI: dict(value=b"\x01a\x03bcd", ttl=60),
}



def request_kwargs(opcode):
    """The table's request for an opcode; a minimal legal one for any other."""
    if opcode in REQUESTS:
        return REQUESTS[opcode]
    kw = {}
    if opcode in codec._KEYED:
        kw["key"] = b"key"
    if opcode in codec._BODY:
        size = codec._BODY[opcode]
        kw["value"] = b"body" if size is None else b"\x01" * size
    return kw


REQUEST_FIELDS = ("key", "value", "cas", "ttl", "flags", "options", "persist_to",
                  "replicate_to")


def request_payload(opcode, opaque=1, **kw):
    return encode_request(opcode, opaque, **kw)


def raw_request(magic=REQ_MAGIC, opcode=Op.GET, persist_to=0, replicate_to=0, options=0,
                keylen=None, opaque=0x01020304, cas=0, ttl=0, flags=0, key=b"k", body=b""):
    """A request payload with every header field under the caller's control."""
    if keylen is None:
        keylen = len(key)
    return struct.pack("!BBbbHHIQII", magic, opcode, persist_to, replicate_to, options,
                       keylen, opaque, cas, ttl, flags) + key + body


def decode_all(decoder, chunks):
    out = []
    for c in chunks:
        out.extend(decoder.feed(c))
    return out


class RoundTripTests(unittest.SynchronousTestCase):

    def test_table_rows_are_known_opcodes(self):
        self.assertEqual(set(REQUESTS) - set(KNOWN_OPS), set())
        self.assertIn(Op.HELLO, KNOWN_OPS)

    def test_header_is_28_bytes(self):
        self.assertEqual(HEADER_LEN, 28)
        self.assertEqual(len(encode_request(Op.NOOP, 0)), 28)
        self.assertEqual(len(encode_response(Op.NOOP, 0)), 28)

    def test_decoded_request_sets_every_field_init_sets(self):
        # decode_request fills a Request's slots without its __init__.
        for opcode in sorted(KNOWN_OPS):
            kw = request_kwargs(opcode)
            req = decode_request(request_payload(opcode, 7, **kw))
            made = codec.Request(opcode, 7)
            for name in codec.Request.__slots__:
                if name != "keys":
                    self.assertTrue(hasattr(made, name), name)
                    self.assertTrue(hasattr(req, name), (opcode, name))

    def test_request_round_trip_every_opcode(self):
        for opcode in sorted(KNOWN_OPS):
            kw = request_kwargs(opcode)
            for opaque in (0, 1, U32):
                framed = netstring(request_payload(opcode, opaque, **kw))
                payloads = NetstringDecoder(1 << 20).feed(framed)
                self.assertEqual(len(payloads), 1)
                req = decode_request(payloads[0])
                self.assertEqual((req.opcode, req.opaque), (opcode, opaque))
                for field in REQUEST_FIELDS:
                    self.assertEqual(getattr(req, field), kw.get(field, b"" if field in (
                        "key", "value") else 0), "opcode 0x%02x field %s" % (opcode, field))

    def test_response_round_trip_every_opcode(self):
        for opcode in sorted(KNOWN_OPS):
            for status, body in ((0, b""), (0, b"\x00value,:\xff" * 3),
                                 (RC.KEY_ENOENT, b"no such key"),
                                 (RC.PROTOCOL_ERROR, b"bad"), (0xFFFF, b"")):
                payload = encode_response(opcode, U32, status, cas=U64, flags=U32,
                                          seqno=U64 - 1, body=body)
                self.assertEqual(payload[0], RES_MAGIC)
                [p] = NetstringDecoder(1 << 20).feed(netstring(payload))
                res = decode_response(p)
                self.assertEqual(
                    (res.opcode, res.status, res.opaque, res.cas, res.flags, res.seqno,
                     res.body),
                    (opcode, status, U32, U64, U32, U64 - 1, body))

    def test_response_defaults(self):
        res = decode_response(encode_response(Op.NOOP, 42))
        self.assertEqual((res.status, res.cas, res.flags, res.seqno, res.body),
                         (0, 0, 0, 0, b""))

    def test_counter_and_endure_bodies(self):
        req = decode_request(request_payload(Op.COUNTER, **REQUESTS[Op.COUNTER]))
        self.assertEqual(COUNTER_BODY.unpack(req.value), (U64, 10))
        req = decode_request(request_payload(Op.ENDURE, **REQUESTS[Op.ENDURE]))
        self.assertEqual(ENDURE_BODY.unpack(req.value), (5000, 10))

    def test_netstring_framing(self):
        self.assertEqual(netstring(b""), b"0:,")
        self.assertEqual(netstring(b"abc"), b"3:abc,")
        self.assertEqual(netstring(b"x" * 12), b"12:" + b"x" * 12 + b",")

    def test_reprs_do_not_fail(self):
        self.assertIn("opaque=1", repr(decode_request(request_payload(Op.GET, key=b"k"))))
        self.assertIn("status=0x01", repr(decode_response(encode_response(0, 1, 1))))


# Streams for the split tests: every one is legal.
_PAYLOADS = [b"", b",", b":", b"0:,", b"abc", b"\x00" * 9, b"x" * 10, b"y" * 11,
             bytes(range(256))[:100]]
STREAMS = {
    "empty payloads": netstring(b"") * 3,
    "assorted": b"".join(netstring(p) for p in _PAYLOADS),
    "requests": b"".join(netstring(request_payload(op, i, **kw))
                         for i, (op, kw) in enumerate(sorted(REQUESTS.items()))
                         if op in (Op.GET, Op.COUNTER, Op.NOOP, Op.UPSERT)),
}


def _expected(stream):
    # The reference: a straightforward parse of the whole stream at once.
    out, pos = [], 0
    while pos < len(stream):
        colon = stream.index(b":", pos)
        n = int(stream[pos:colon])
        out.append(stream[colon + 1:colon + 1 + n])
        assert stream[colon + 1 + n:colon + 2 + n] == b","
        pos = colon + 2 + n
    return out


class NetstringDecoderSplitTests(unittest.SynchronousTestCase):

    def check(self, stream, chunks):
        d = NetstringDecoder(1000)
        got = decode_all(d, chunks)
        self.assertEqual(got, _expected(stream), "chunks %r" % (chunks,))
        # Nothing is held once the stream ends on a frame boundary.
        self.assertEqual((d.buffered, d._need), (0, -1))

    def test_whole(self):
        for name, stream in STREAMS.items():
            self.check(stream, [stream])

    def test_byte_by_byte(self):
        for name, stream in STREAMS.items():
            self.check(stream, [stream[i:i + 1] for i in range(len(stream))])

    def test_every_two_way_split(self):
        for name, stream in STREAMS.items():
            for i in range(len(stream) + 1):
                self.check(stream, [stream[:i], stream[i:]])

    def test_every_three_way_split_of_one_request(self):
        stream = netstring(request_payload(Op.GET, 7, key=b"key")) + netstring(b"")
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                self.check(stream, [stream[:i], stream[i:j], stream[j:]])

    def test_empty_feeds_are_harmless(self):
        d = NetstringDecoder(100)
        self.assertEqual(d.feed(b""), [])
        self.assertEqual(d.feed(b"3:a"), [])
        self.assertEqual(d.feed(b""), [])
        self.assertEqual(d.feed(b"bc,"), [b"abc"])
        self.assertEqual(d.feed(b""), [])

    def test_max_length_is_inclusive(self):
        d = NetstringDecoder(10)
        self.assertEqual(d.feed(netstring(b"z" * 10)), [b"z" * 10])
        self.assertRaises(FrameError, NetstringDecoder(10).feed, b"11:")


#: (name, max_length, stream, payloads that come before the error)
NETSTRING_ILLEGAL = [
    ("bad length prefix", 1000, b"abc:xyz,", []),
    ("leading zero", 1000, b"01:a,", []),
    ("double zero", 1000, b"00:,", []),
    ("missing comma", 1000, b"3:abcX", []),
    ("missing comma, newline instead", 1000, b"3:abc\n", []),
    ("length over the limit", 1000, b"1001:", []),
    ("length far over the limit", 1000, b"99999999999:", []),
    ("non-digit in prefix", 1000, b"1a:a,", []),
    ("negative length", 1000, b"-1:,", []),
    ("plus sign", 1000, b"+1:a,", []),
    ("leading space", 1000, b" 1:a,", []),
    ("empty length", 1000, b":,", []),
    ("non-ascii digit", 1000, "\u0661:a,".encode("utf-8"), []),
    ("huge prefix without colon", 1000, b"123456789012", []),
    ("huge prefix without colon, more to come", 10 ** 12, b"9" * 40, []),
    ("garbage after a good frame", 1000, b"1:a,X:", [b"a"]),
    ("bad comma after good frames", 1000, b"1:a,0:,2:bcd", [b"a", b""]),
]


class NetstringDecoderIllegalTests(unittest.SynchronousTestCase):

    def assertRefused(self, name, max_length, stream, before, chunks):
        d = NetstringDecoder(max_length)
        got = []
        with self.assertRaises(FrameError, msg=name) as cm:
            for c in chunks:
                got.extend(d.feed(c))
        e = cm.exception
        self.assertTrue(e.fatal, name)
        self.assertIsNone(e.opaque, name)
        got.extend(e.payloads)
        self.assertEqual(got, before, "%s: chunks %r" % (name, chunks))
        # The buffer is dropped and the decoder refuses anything more.
        self.assertTrue(d.broken, name)
        self.assertEqual(d.buffered, 0, name)
        self.assertRaises(FrameError, d.feed, b"1:a,")

    def test_table_whole(self):
        for name, max_length, stream, before in NETSTRING_ILLEGAL:
            self.assertRefused(name, max_length, stream, before, [stream])

    def test_table_byte_by_byte(self):
        for name, max_length, stream, before in NETSTRING_ILLEGAL:
            self.assertRefused(name, max_length, stream, before,
                               [stream[i:i + 1] for i in range(len(stream))])

    def test_table_every_two_way_split(self):
        for name, max_length, stream, before in NETSTRING_ILLEGAL:
            for i in range(len(stream) + 1):
                self.assertRefused(name, max_length, stream, before, [stream[:i], stream[i:]])

    def test_frames_before_error_are_not_lost(self):
        """
        Regression: the payloads completed by the same feed() as a refused
        frame were dropped, so what a caller saw of a broken stream depended
        on how the stream was split; they now travel on the error.
        """
        d = NetstringDecoder(100)
        with self.assertRaises(FrameError) as cm:
            d.feed(b"1:a,2:bc,3:xyzQ")
        self.assertEqual(cm.exception.payloads, [b"a", b"bc"])

    def test_oversized_prefix_refused_before_buffering(self):
        d = NetstringDecoder(1000)
        # The prefix alone is refused: no payload byte needs to arrive.
        self.assertRaises(FrameError, d.feed, b"99999999999:")
        self.assertEqual(d.buffered, 0)

    def test_oversized_prefix_with_payload_keeps_nothing(self):
        d = NetstringDecoder(1000)
        self.assertRaises(FrameError, d.feed, b"99999999999:" + b"x" * 100000)
        self.assertEqual(d.buffered, 0)
        # And what follows is not buffered either.
        self.assertRaises(FrameError, d.feed, b"x" * 100000)
        self.assertEqual(d.buffered, 0)

    def test_prefix_buffer_is_bounded(self):
        # Digits without a colon: held only while they could still be a
        # length; the 12th digit is refused.
        d = NetstringDecoder(10 ** 12)
        for i in range(11):
            self.assertEqual(d.feed(b"9"), [])
            self.assertLessEqual(d.buffered, 11)
        self.assertRaises(FrameError, d.feed, b"9")
        self.assertEqual(d.buffered, 0)

    def test_length_over_limit_refused_at_the_colon(self):
        d = NetstringDecoder(1000)
        self.assertEqual(d.feed(b"1001"), [])
        self.assertRaises(FrameError, d.feed, b":")

    def test_broken_error_is_fatal(self):
        d = NetstringDecoder(10)
        self.assertRaises(FrameError, d.feed, b"x")
        with self.assertRaises(FrameError) as cm:
            d.feed(b"")
        self.assertTrue(cm.exception.fatal)


#: (name, payload, status, fatal, opaque, opcode)
OPAQUE = 0x01020304
REQUEST_ILLEGAL = [
    ("empty payload", b"", RC.PROTOCOL_ERROR, True, None, 0),
    ("short header, opaque unreadable", raw_request(key=b"")[:11],
     RC.PROTOCOL_ERROR, True, None, 0),
    ("short header, opaque readable", raw_request(key=b"")[:12],
     RC.PROTOCOL_ERROR, False, OPAQUE, 0),
    ("short header by one byte", raw_request(key=b"")[:27],
     RC.PROTOCOL_ERROR, False, OPAQUE, 0),
    ("bad magic", raw_request(magic=0x80), RC.PROTOCOL_ERROR, True, OPAQUE, Op.GET),
    ("response magic", raw_request(magic=RES_MAGIC, opcode=Op.NOOP, key=b""),
     RC.PROTOCOL_ERROR, True, OPAQUE, Op.NOOP),
    ("unknown opcode", raw_request(opcode=0x42), RC.UNKNOWN_COMMAND, False, OPAQUE, 0x42),
    ("unknown opcode 0xff", raw_request(opcode=0xFF, key=b""),
     RC.UNKNOWN_COMMAND, False, OPAQUE, 0xFF),
    ("key length past the end", raw_request(keylen=10, key=b"abc"),
     RC.EINVAL, False, OPAQUE, Op.GET),
    ("key length past the end, no key", raw_request(keylen=0xFFFF, key=b""),
     RC.EINVAL, False, OPAQUE, Op.GET),
    ("key missing for GET", raw_request(key=b""), RC.EINVAL, False, OPAQUE, Op.GET),
    ("key missing for UPSERT", raw_request(opcode=Op.UPSERT, key=b"", body=b"v"),
     RC.EINVAL, False, OPAQUE, Op.UPSERT),
    ("key missing for COUNTER", raw_request(opcode=Op.COUNTER, key=b"",
                                            body=COUNTER_BODY.pack(1, 0)),
     RC.EINVAL, False, OPAQUE, Op.COUNTER),
    ("key on NOOP", raw_request(opcode=Op.NOOP, key=b"k"), RC.EINVAL, False, OPAQUE,
     Op.NOOP),
    ("key on STATS", raw_request(opcode=Op.STATS, key=b"k"), RC.EINVAL, False, OPAQUE,
     Op.STATS),
    ("key on HELLO", raw_request(opcode=Op.HELLO, key=b"k"), RC.EINVAL, False, OPAQUE,
     Op.HELLO),
    ("body on GET", raw_request(body=b"x"), RC.EINVAL, False, OPAQUE, Op.GET),
    ("body on NOOP", raw_request(opcode=Op.NOOP, key=b"", body=b"x"),
     RC.EINVAL, False, OPAQUE, Op.NOOP),
    ("body on REMOVE", raw_request(opcode=Op.REMOVE, body=b"x"),
     RC.EINVAL, False, OPAQUE, Op.REMOVE),
    ("COUNTER body empty", raw_request(opcode=Op.COUNTER), RC.EINVAL, False, OPAQUE,
     Op.COUNTER),
    ("COUNTER body short", raw_request(opcode=Op.COUNTER, body=b"\0" * 15),
     RC.EINVAL, False, OPAQUE, Op.COUNTER),
    ("COUNTER body long", raw_request(opcode=Op.COUNTER, body=b"\0" * 17),
     RC.EINVAL, False, OPAQUE, Op.COUNTER),
    ("ENDURE body short", raw_request(opcode=Op.ENDURE, body=b"\0" * 7),
     RC.EINVAL, False, OPAQUE, Op.ENDURE),
    ("ENDURE body long", raw_request(opcode=Op.ENDURE, body=b"\0" * 9),
     RC.EINVAL, False, OPAQUE, Op.ENDURE),
    ("key over 250 bytes", raw_request(key=b"k" * 251), RC.EINVAL, False, OPAQUE, Op.GET),
    ("key over 250 bytes on UPSERT", raw_request(opcode=Op.UPSERT, key=b"k" * 251),
     RC.EINVAL, False, OPAQUE, Op.UPSERT),
    # GET_MULTI: the header's key must be empty, the body 1 to MAX_MULTI keys of
    # <u8 length><key>, each 1 to 250 bytes, and nothing else.
    ("GET_MULTI with zero keys", raw_request(opcode=Op.GET_MULTI, key=b""),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI with a key in the header", raw_request(opcode=Op.GET_MULTI, key=b"k",
                                                       body=b"\x01a"),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI zero-length key", raw_request(opcode=Op.GET_MULTI, key=b"",
                                              body=b"\x01a\x00\x01b"),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI zero-length key only", raw_request(opcode=Op.GET_MULTI, key=b"",
                                                   body=b"\x00"),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI truncated key", raw_request(opcode=Op.GET_MULTI, key=b"",
                                            body=b"\x01a\x05abc"),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI trailing byte", raw_request(opcode=Op.GET_MULTI, key=b"",
                                            body=b"\x01a\x02bc\x07"),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI trailing zero byte", raw_request(opcode=Op.GET_MULTI, key=b"",
                                                 body=b"\x01a\x00"),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI key of 251 bytes", raw_request(opcode=Op.GET_MULTI, key=b"",
                                               body=b"\xfb" + b"k" * 251),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI key length 255", raw_request(opcode=Op.GET_MULTI, key=b"",
                                             body=b"\xff" + b"k" * 255),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI of MAX_MULTI + 1 keys", raw_request(
        opcode=Op.GET_MULTI, key=b"", body=b"\x01k" * (codec.MAX_MULTI + 1)),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
    ("GET_MULTI of MAX_MULTI keys and a broken one", raw_request(
        opcode=Op.GET_MULTI, key=b"", body=b"\x01k" * codec.MAX_MULTI + b"\x09"),
     RC.EINVAL, False, OPAQUE, Op.GET_MULTI),
] + [
    # Issue 12 item 9 / issue 13: unknown option bits and durability below -1
    # were accepted; docs/protocol.rst says unknown bits must be 0.
    ("unknown option bits 0x%04x on %s" % (bits, name),
     raw_request(opcode=op, options=bits, **fields), RC.EINVAL, False, OPAQUE, op)
    for bits in (0xFFFF, 0x80, 0x20, 0x8000, 0x80 | OPT_QUIET)
    for name, op, fields in (("GET", Op.GET, {}),
                             ("UPSERT", Op.UPSERT, dict(body=b"v")),
                             ("COUNTER", Op.COUNTER, dict(body=COUNTER_BODY.pack(1, 0))),
                             ("NOOP", Op.NOOP, dict(key=b"")))
] + [
    ("%s %d on %s" % (field, value, name),
     raw_request(opcode=op, body=body, **{field: value}), RC.EINVAL, False, OPAQUE, op)
    for field in ("persist_to", "replicate_to")
    for value in (-128, -2, -100)
    for name, op, body in (("GET", Op.GET, b""), ("UPSERT", Op.UPSERT, b"v"),
                           ("REMOVE", Op.REMOVE, b""))
]


class DecodeRequestIllegalTests(unittest.SynchronousTestCase):

    def test_unknown_option_bits_refused(self):
        # Issue 12 item 9: options 0xFFFF was accepted.
        with self.assertRaises(FrameError) as cm:
            decode_request(raw_request(options=0xFFFF))
        self.assertEqual((cm.exception.status, cm.exception.fatal), (RC.EINVAL, False))
        self.assertIn("0xffe0", str(cm.exception))

    def test_persist_to_minus_128_refused(self):
        # Issue 12 item 9: persist_to=-128 was accepted.
        with self.assertRaises(FrameError) as cm:
            decode_request(raw_request(opcode=Op.UPSERT, persist_to=-128, body=b"v"))
        self.assertEqual((cm.exception.status, cm.exception.fatal), (RC.EINVAL, False))

    def test_table(self):
        for name, payload, status, fatal, opaque, opcode in REQUEST_ILLEGAL:
            with self.assertRaises(FrameError, msg=name) as cm:
                decode_request(payload)
            e = cm.exception
            self.assertEqual((e.status, e.fatal, e.opaque), (status, fatal, opaque), name)
            if opaque is not None:
                self.assertEqual(e.opcode, opcode, name)
            self.assertTrue(str(e), name)

    def test_boundaries_are_legal(self):
        # The legal neighbours of the table's rows.
        self.assertEqual(decode_request(raw_request(key=b"k" * 250)).key, b"k" * 250)
        self.assertEqual(decode_request(raw_request(key=b"k")).key, b"k")
        self.assertEqual(decode_request(raw_request(opcode=Op.UPSERT, body=b"")).value, b"")
        self.assertEqual(decode_request(raw_request(opcode=Op.HELLO, key=b"")).value, b"")
        self.assertEqual(
            decode_request(raw_request(opcode=Op.COUNTER, body=b"\0" * 16)).value,
            b"\0" * 16)
        self.assertEqual(
            decode_request(raw_request(opcode=Op.ENDURE, body=b"\0" * 8)).value, b"\0" * 8)
        req = decode_request(raw_request(persist_to=-1, replicate_to=-1))
        self.assertEqual((req.persist_to, req.replicate_to), (-1, -1))
        req = decode_request(raw_request(opcode=Op.UPSERT, persist_to=127, replicate_to=127))
        self.assertEqual((req.persist_to, req.replicate_to), (127, 127))
        every_option = (OPT_QUIET | OPT_DECREMENT | OPT_INITIAL | OPT_CHECK_REMOVED
                        | codec.OPT_IDS_ONLY)
        self.assertEqual(decode_request(raw_request(options=every_option)).options,
                         every_option)
        # GET_MULTI: one key, keys of 1 and 250 bytes, MAX_MULTI keys.
        req = decode_request(raw_request(opcode=Op.GET_MULTI, key=b"", body=b"\x01k"))
        self.assertEqual(req.keys, [b"k"])
        body = b"\x01a\xfa" + b"z" * 250
        self.assertEqual(decode_request(raw_request(opcode=Op.GET_MULTI, key=b"",
                                                    body=body)).keys, [b"a", b"z" * 250])
        req = decode_request(raw_request(opcode=Op.GET_MULTI, key=b"",
                                         body=b"\x01k" * codec.MAX_MULTI, ttl=U32))
        self.assertEqual((len(req.keys), req.ttl), (codec.MAX_MULTI, U32))


RESPONSE_ILLEGAL = [
    ("empty", b""),
    ("short header", encode_response(Op.GET, 1)[:27]),
    ("request magic", encode_request(Op.NOOP, 1)),
    ("bad magic", b"\x00" * 28),
]


class DecodeResponseIllegalTests(unittest.SynchronousTestCase):

    def test_table(self):
        for name, payload in RESPONSE_ILLEGAL:
            with self.assertRaises(FrameError, msg=name) as cm:
                decode_response(payload)
            self.assertTrue(cm.exception.fatal, name)
            self.assertIsNone(cm.exception.opaque, name)


class ModuleTests(unittest.SynchronousTestCase):

    def test_sans_io(self):
        # The codec is shared with non-Twisted users: it must not import Twisted.
        import ast
        import inspect
        tree = ast.parse(inspect.getsource(codec))
        names = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
        names += [n.module for n in ast.walk(tree)
                  if isinstance(n, ast.ImportFrom) and n.module]
        self.assertFalse([n for n in names if n.startswith("twisted")], names)


# -- docs/protocol.rst's worked examples -------------------------------------

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                   "docs", "protocol.rst")
HELLO_INFO = {"server": "txcb/0.1.0", "protocol": 1, "max_value_size": 20971520,
              "max_frame": 20971798, "max_inflight": 1024, "get_multi": 4096}


def doc_examples():
    """
    (caption, frame, what it decodes to) of each worked example in section 6
    of docs/protocol.rst; ``python3 -c "import tests.test_codec as t;
    t.print_doc_examples()"`` prints the dumps to paste there.
    """
    scan_rows = [(b"user:1", 0x02000000, 0x17, 0, b'{"n":1}'),
                 (b"user:2", 0x02000000, 0x18, 1767225600, b'{"n":2}')]
    return [
        ("HELLO request, opaque 1, empty body",
         netstring(encode_request(Op.HELLO, 1)),
         dict(opcode=Op.HELLO, opaque=1, key=b"", value=b"")),
        ("HELLO reply",
         netstring(encode_response(Op.HELLO, 1, body=json.dumps(HELLO_INFO).encode())),
         dict(opcode=Op.HELLO, opaque=1, status=0, json=HELLO_INFO)),
        ("COUNTER request: add 1 to ``hits``, creating it at 10, opaque 2",
         netstring(encode_request(Op.COUNTER, 2, key=b"hits",
                                  value=COUNTER_BODY.pack(1, 10), options=OPT_INITIAL)),
         dict(opcode=Op.COUNTER, opaque=2, key=b"hits", options=OPT_INITIAL,
              counter=(1, 10))),
        ("COUNTER reply: created at 10, JSON flags, CAS 0x11, seqno 3",
         netstring(encode_response(Op.COUNTER, 2, cas=0x11, flags=0x02000000, seqno=3,
                                   body=b"10")),
         dict(opcode=Op.COUNTER, opaque=2, status=0, cas=0x11, flags=0x02000000, seqno=3,
              body=b"10")),
        ("SCAN request: keys starting ``user:``, 2 rows or 64 KiB a batch, opaque 3",
         netstring(encode_request(Op.SCAN, 3, value=codec.encode_scan_request(
             2, 65536, b"user:", b"", b""))),
         dict(opcode=Op.SCAN, opaque=3, key=b"", scan=(2, 65536, b"user:", b"", b""))),
        ("SCAN reply: two rows, resume after ``user:2``",
         netstring(encode_response(Op.SCAN, 3, body=codec.encode_scan_reply(
             b"user:2\x00", scan_rows))),
         dict(opcode=Op.SCAN, opaque=3, status=0, rows=(b"user:2\x00", scan_rows))),
    ]


def hexdump(frame):
    """The frame as the document shows it: 16 bytes a line, offset, hex, ASCII."""
    lines = []
    for i in range(0, len(frame), 16):
        chunk = frame[i:i + 16]
        text = "".join(chr(c) if 32 <= c < 127 else "." for c in chunk)
        lines.append("    %04x  %-47s  |%s|" % (i, " ".join("%02x" % c for c in chunk), text))
    return "\n".join(lines)


def print_doc_examples():
    for caption, frame, _ in doc_examples():
        print("%s::\n\n%s\n" % (caption, hexdump(frame)))


def doc_dumps():
    """{caption: frame bytes} of the hex dumps in docs/protocol.rst."""
    with open(DOC, encoding="utf-8") as f:
        text = f.read()
    found = {}
    pattern = r"^(\S[^\n]*)::\n\n((?:    [0-9a-f]{4}  [^\n]*\n)+)"
    for m in re.finditer(pattern, text, re.M):
        hexes = [line[10:57].split() for line in m.group(2).splitlines()]
        found[m.group(1)] = bytes(int(h, 16) for row in hexes for h in row)
    return found


def payload_of(frame):
    decoder = NetstringDecoder(max_length=1 << 20)
    [payload] = decoder.feed(frame)
    return payload


class DocExampleTests(unittest.SynchronousTestCase):
    """docs/protocol.rst's byte examples are what the codec makes and reads."""

    def test_examples_match_codec(self):
        dumps = doc_dumps()
        for caption, frame, _ in doc_examples():
            self.assertIn(caption, dumps)
            self.assertEqual(dumps[caption], frame, caption)

    def test_examples_decode_as_described(self):
        for caption, frame, want in doc_examples():
            payload = payload_of(doc_dumps()[caption])
            if payload[0] == REQ_MAGIC:
                req = decode_request(payload)
                got = dict(opcode=req.opcode, opaque=req.opaque, key=req.key)
                if "value" in want:
                    got["value"] = req.value
                if "options" in want:
                    got["options"] = req.options
                if "counter" in want:
                    got["counter"] = COUNTER_BODY.unpack(req.value)
                if "scan" in want:
                    got["scan"] = codec.decode_scan_request(req.value)
            else:
                res = decode_response(payload)
                got = dict(opcode=res.opcode, opaque=res.opaque, status=res.status)
                for field in ("cas", "flags", "seqno", "body"):
                    if field in want:
                        got[field] = getattr(res, field)
                if "json" in want:
                    got["json"] = json.loads(res.body)
                if "rows" in want:
                    got["rows"] = codec.decode_scan_reply(res.body)
                    got["rows"] = (got["rows"][0], [tuple(r) for r in got["rows"][1]])
            self.assertEqual(got, want, caption)
