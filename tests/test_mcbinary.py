"""
Tests for txcb.wire.mcbinary, the sans-IO memcached binary protocol codec.

Byte-exact vectors come from the memcached "Binary Protocol Revamped"
document's examples.  Refusals are named after the memcached case they
mirror (its dispatch_bin_command() checks, and CVE-2016-8704/8705/8706,
the heap overflows memcached had when keylen + extlen > bodylen).  The
LiveMemcached tests speak to a real memcached with this codec and check
that it answers our malformed frames with the status validate_request
predicts.
"""

from __future__ import annotations

import ast
import os
import pwd
import random
import shutil
import socket
import struct
import subprocess
import tempfile
import time
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from twisted.trial import unittest

from txcb.wire import mcbinary as mc
from txcb.wire.mcbinary import (
    COUNTER_NO_CREATE, DEFAULT_MAX_BODY, HEADER_LEN, MAX_KEY_LEN, QUIET,
    REQ_MAGIC, RES_MAGIC, Decoder, FrameError, Opcode, Packet, Status,
    build_sasl_plain, counter_extras, counter_value, encode_request,
    encode_response, flush_extras, get_locked_extras, get_response_extras,
    is_quiet, loud_opcode, parse_counter_extras, parse_counter_value,
    parse_flush_extras, parse_get_locked_extras, parse_get_response_extras,
    parse_sasl_plain, parse_store_extras, parse_touch_extras,
    parse_verbosity_extras, store_extras, touch_extras, validate_request,
    verbosity_extras)
from txcb.errors import RC

from tests.support.procs import free_port as _free_port

_RAW_HEADER = struct.Struct(">BBHBBHIIQ")


def raw_header(opcode: int, keylen: int = 0, extlen: int = 0,
               bodylen: int = 0, opaque: int = 0, magic: int = REQ_MAGIC,
               cas: int = 0) -> bytes:
    """A header with arbitrary (possibly inconsistent) lengths."""
    return _RAW_HEADER.pack(magic, opcode, keylen, extlen, 0, 0, bodylen,
                            opaque, cas)


def request(opcode: int, key: bytes = b"", value: bytes = b"",
            extras: bytes = b"", cas: int = 0, opaque: int = 0,
            vbucket: int = 0) -> Packet:
    return Packet(REQ_MAGIC, opcode, 0, vbucket, opaque, cas, extras, key,
                  value)


# A well-formed request for every opcode.
VALID: Dict[int, Dict[str, object]] = {}


def _valid(ops: Tuple[int, ...], **fields: object) -> None:
    for op in ops:
        VALID[op] = fields


O = Opcode
_valid((O.GET, O.GETQ, O.GETK, O.GETKQ), key=b"somekey")
_valid((O.SET, O.SETQ, O.ADD, O.ADDQ, O.REPLACE, O.REPLACEQ),
       key=b"somekey", value=b"somevalue",
       extras=store_extras(0xDEADBEEF, 3600))
_valid((O.DELETE, O.DELETEQ), key=b"somekey", cas=77)
_valid((O.INCREMENT, O.INCREMENTQ, O.DECREMENT, O.DECREMENTQ),
       key=b"counter", extras=counter_extras(1, 0, 3600))
_valid((O.QUIT, O.QUITQ, O.NOOP, O.VERSION, O.SASL_LIST_MECHS))
_valid((O.FLUSH, O.FLUSHQ), extras=flush_extras(10))
_valid((O.APPEND, O.APPENDQ, O.PREPEND, O.PREPENDQ), key=b"somekey",
       value=b" more")
_valid((O.STAT,), key=b"items")
_valid((O.VERBOSITY,), extras=verbosity_extras(1))
_valid((O.TOUCH, O.GAT, O.GATQ, O.GATK, O.GATKQ), key=b"somekey",
       extras=touch_extras(60))
_valid((O.SASL_AUTH,), key=b"PLAIN", value=build_sasl_plain(b"u", b"p"))
_valid((O.SASL_STEP,), key=b"PLAIN", value=b"step-data")
_valid((O.GET_LOCKED,), key=b"somekey", extras=get_locked_extras(15))
_valid((O.UNLOCK_KEY,), key=b"somekey", cas=0x1122334455667788)

ALL_OPCODES = sorted(mc.OPCODE_NAMES)


class SansIOTests(unittest.TestCase):

    def test_imports_nothing_but_stdlib_and_txcb_errors(self) -> None:
        # Sans-IO: no Twisted, no sockets; only struct/typing, RC codes and
        # the shared limits (MAX_KEY_LEN).
        with open(mc.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported: set = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
        self.assertEqual(imported,
                         {"__future__", "struct", "typing", "txcb.errors",
                          "txcb.limits"})


class ConstantsTests(unittest.TestCase):
    """Values from memcached's protocol_binary.h and Couchbase's."""

    def test_opcode_values(self) -> None:
        expected = {
            "GET": 0x00, "SET": 0x01, "ADD": 0x02, "REPLACE": 0x03,
            "DELETE": 0x04, "INCREMENT": 0x05, "DECREMENT": 0x06,
            "QUIT": 0x07, "FLUSH": 0x08, "GETQ": 0x09, "NOOP": 0x0A,
            "VERSION": 0x0B, "GETK": 0x0C, "GETKQ": 0x0D, "APPEND": 0x0E,
            "PREPEND": 0x0F, "STAT": 0x10, "SETQ": 0x11, "ADDQ": 0x12,
            "REPLACEQ": 0x13, "DELETEQ": 0x14, "INCREMENTQ": 0x15,
            "DECREMENTQ": 0x16, "QUITQ": 0x17, "FLUSHQ": 0x18,
            "APPENDQ": 0x19, "PREPENDQ": 0x1A, "VERBOSITY": 0x1B,
            "TOUCH": 0x1C, "GAT": 0x1D, "GATQ": 0x1E,
            "SASL_LIST_MECHS": 0x20, "SASL_AUTH": 0x21, "SASL_STEP": 0x22,
            "GATK": 0x23, "GATKQ": 0x24, "GET_LOCKED": 0x94,
            "UNLOCK_KEY": 0x95,
        }
        self.assertEqual({v: k for k, v in expected.items()}, mc.OPCODE_NAMES)

    def test_status_values(self) -> None:
        expected = {
            "SUCCESS": 0x00, "KEY_ENOENT": 0x01, "KEY_EEXISTS": 0x02,
            "E2BIG": 0x03, "EINVAL": 0x04, "NOT_STORED": 0x05,
            "DELTA_BADVAL": 0x06, "AUTH_ERROR": 0x20, "AUTH_CONTINUE": 0x21,
            "UNKNOWN_COMMAND": 0x81, "ENOMEM": 0x82, "NOT_SUPPORTED": 0x83,
            "EINTERNAL": 0x84, "EBUSY": 0x85, "ETMPFAIL": 0x86,
        }
        self.assertEqual({v: k for k, v in expected.items()}, mc.STATUS_NAMES)
        # The same numbers as txcb.errors.RC, so errors map 1:1.
        self.assertEqual(Status.ETMPFAIL, RC.ETMPFAIL)
        self.assertEqual(Status.UNKNOWN_COMMAND, RC.UNKNOWN_COMMAND)

    def test_header(self) -> None:
        self.assertEqual((REQ_MAGIC, RES_MAGIC, HEADER_LEN), (0x80, 0x81, 24))

    def test_quiet(self) -> None:
        self.assertEqual(len(QUIET), 14)
        for quiet, loud in QUIET.items():
            self.assertTrue(is_quiet(quiet))
            self.assertFalse(is_quiet(loud))
            self.assertEqual(loud_opcode(quiet), loud)
            name = mc.OPCODE_NAMES[quiet]
            self.assertEqual(name[-1], "Q")
            # GETQ/GETKQ/GATQ/GATKQ are quiet on a miss, others on success.
            self.assertEqual(mc.OPCODE_NAMES[loud], name[:-1])
        for op in (Opcode.GET, Opcode.NOOP, Opcode.GET_LOCKED, Opcode.STAT):
            self.assertFalse(is_quiet(op))
            self.assertEqual(loud_opcode(op), op)


class SpecVectorTests(unittest.TestCase):
    """Byte-exact examples of the "Binary Protocol Revamped" document."""

    def test_get_request_hello(self) -> None:
        self.assertEqual(
            encode_request(Opcode.GET, key=b"Hello"),
            bytes.fromhex("800000050000000000000005000000000000000000000000")
            + b"Hello")

    def test_get_response_world_flags_deadbeef(self) -> None:
        frame = encode_response(Opcode.GET, value=b"World", cas=1,
                                extras=get_response_extras(0xDEADBEEF))
        self.assertEqual(
            frame,
            bytes.fromhex("810000000400000000000009000000000000000000000001"
                          "deadbeef") + b"World")

    def test_add_request(self) -> None:
        frame = encode_request(Opcode.ADD, key=b"Hello", value=b"World",
                               extras=store_extras(0xDEADBEEF, 0xE10))
        self.assertEqual(
            frame,
            bytes.fromhex("800200050800000000000012000000000000000000000000"
                          "deadbeef00000e10") + b"HelloWorld")

    def test_increment_request_and_response(self) -> None:
        frame = encode_request(Opcode.INCREMENT, key=b"counter",
                               extras=counter_extras(1, 0, 0xE10))
        self.assertEqual(
            frame,
            bytes.fromhex("80050007140000000000001b000000000000000000000000"
                          "0000000000000001" "0000000000000000" "00000e10")
            + b"counter")
        response = encode_response(Opcode.INCREMENT, value=counter_value(0),
                                   cas=5)
        self.assertEqual(
            response,
            bytes.fromhex("810500000000000000000008000000000000000000000005"
                          "0000000000000000"))

    def test_header_field_order(self) -> None:
        frame = encode_request(0x42, key=b"k", value=b"vv", extras=b"e",
                               opaque=0x01020304, cas=0x0A0B0C0D0E0F1011,
                               vbucket=0x0506, datatype=0x07)
        self.assertEqual(
            frame[:24],
            bytes([0x80, 0x42, 0x00, 0x01, 0x01, 0x07, 0x05, 0x06,
                   0, 0, 0, 4, 1, 2, 3, 4,
                   0x0A, 0x0B, 0x0C, 0x0D, 0x0E, 0x0F, 0x10, 0x11]))
        self.assertEqual(frame[24:], b"ekvv")

    def test_out_of_range_fields(self) -> None:
        self.assertRaises(ValueError, encode_request, Opcode.GET,
                          key=b"k" * 65536)
        self.assertRaises(ValueError, encode_request, Opcode.SET,
                          extras=b"e" * 256)
        self.assertRaises(ValueError, encode_request, Opcode.GET,
                          opaque=1 << 32)
        self.assertRaises(ValueError, encode_response, Opcode.GET,
                          status=1 << 16)
        self.assertRaises(ValueError, encode_request, 256)


class ExtrasTests(unittest.TestCase):

    def test_store(self) -> None:
        self.assertEqual(store_extras(1, 2), b"\0\0\0\x01\0\0\0\x02")
        self.assertEqual(parse_store_extras(store_extras(0xFFFFFFFF, 7)),
                         (0xFFFFFFFF, 7))
        self.assertRaises(ValueError, parse_store_extras, b"\0" * 4)
        self.assertRaises(ValueError, store_extras, -1, 0)

    def test_counter(self) -> None:
        ex = counter_extras(2 ** 64 - 1, 5, COUNTER_NO_CREATE)
        self.assertEqual(len(ex), 20)
        self.assertEqual(parse_counter_extras(ex),
                         (2 ** 64 - 1, 5, 0xFFFFFFFF))
        self.assertRaises(ValueError, parse_counter_extras, b"\0" * 16)
        self.assertRaises(ValueError, counter_extras, 2 ** 64)

    def test_counter_value(self) -> None:
        self.assertEqual(counter_value(8589934804),
                         b"\0\0\0\x02\0\0\0\xd4")  # binary.t's 2**33 + 212
        self.assertEqual(parse_counter_value(counter_value(2 ** 64 - 1)),
                         2 ** 64 - 1)
        self.assertRaises(ValueError, parse_counter_value, b"12")

    def test_touch_verbosity_get_response(self) -> None:
        self.assertEqual(parse_touch_extras(touch_extras(3600)), 3600)
        self.assertEqual(parse_verbosity_extras(verbosity_extras(2)), 2)
        self.assertEqual(parse_get_response_extras(get_response_extras(19)),
                         19)
        self.assertRaises(ValueError, parse_touch_extras, b"")

    def test_flush_and_get_locked_are_optional(self) -> None:
        self.assertEqual(flush_extras(), b"")
        self.assertEqual(flush_extras(30), b"\0\0\0\x1e")
        self.assertEqual(parse_flush_extras(b""), 0)
        self.assertEqual(parse_flush_extras(flush_extras(30)), 30)
        self.assertEqual(get_locked_extras(), b"")
        self.assertEqual(parse_get_locked_extras(b""), 0)
        self.assertEqual(parse_get_locked_extras(get_locked_extras(15)), 15)
        self.assertRaises(ValueError, parse_flush_extras, b"\0\0")

    def test_sasl_plain(self) -> None:
        self.assertEqual(build_sasl_plain(b"user", b"pencil"),
                         b"\0user\0pencil")
        self.assertEqual(parse_sasl_plain(b"\0user\0pencil"),
                         (b"", b"user", b"pencil"))
        self.assertEqual(parse_sasl_plain(b"admin\0user\0pw"),
                         (b"admin", b"user", b"pw"))
        # Couchbase's password-less buckets authenticate with "".
        self.assertEqual(parse_sasl_plain(b"\0default\0").password, b"")
        self.assertEqual(parse_sasl_plain(memoryview(b"\0u\0p")).username,
                         b"u")
        for bad in (b"", b"user", b"\0user", b"\0\0pw", b"a\0b\0c\0d"):
            self.assertRaises(ValueError, parse_sasl_plain, bad)
        self.assertRaises(ValueError, build_sasl_plain, b"", b"p")
        self.assertRaises(ValueError, build_sasl_plain, b"u", b"p\0q")


class BinaryCodecRoundTripTests(unittest.TestCase):

    def test_every_opcode_has_a_valid_example(self) -> None:
        self.assertEqual(sorted(VALID), ALL_OPCODES)

    def test_request_round_trip_every_opcode(self) -> None:
        for n, op in enumerate(ALL_OPCODES):
            fields = VALID[op]
            frame = encode_request(op, opaque=n + 1, vbucket=n * 3,
                                   **fields)  # type: ignore[arg-type]
            packets = Decoder().feed(frame)
            self.assertEqual(len(packets), 1)
            p = packets[0]
            self.assertEqual(
                (p.magic, p.opcode, p.vbucket, p.opaque, p.cas, p.extras,
                 p.key, p.value, p.datatype),
                (REQ_MAGIC, op, n * 3, n + 1, fields.get("cas", 0),
                 fields.get("extras", b""), fields.get("key", b""),
                 fields.get("value", b""), 0), mc.OPCODE_NAMES[op])
            self.assertTrue(p.is_request)
            self.assertEqual(p.encode(), frame)
            self.assertIsNone(validate_request(p), mc.OPCODE_NAMES[op])

    def test_response_round_trip_every_opcode(self) -> None:
        statuses = sorted(mc.STATUS_NAMES)
        for n, op in enumerate(ALL_OPCODES):
            status = statuses[n % len(statuses)]
            frame = encode_response(op, status=status, key=b"k%d" % n,
                                    value=b"v" * n,
                                    extras=get_response_extras(n),
                                    opaque=0xFFFFFFFF - n, cas=2 ** 64 - 1 - n,
                                    datatype=n % 4)
            (p,) = Decoder(expect="response").feed(frame)
            self.assertEqual(
                (p.magic, p.opcode, p.status, p.opaque, p.cas, p.extras,
                 p.key, p.value, p.datatype),
                (RES_MAGIC, op, status, 0xFFFFFFFF - n, 2 ** 64 - 1 - n,
                 get_response_extras(n), b"k%d" % n, b"v" * n, n % 4))
            self.assertFalse(p.is_request)
            self.assertEqual(p.encode(), frame)

    def test_packet_equality_and_repr(self) -> None:
        a = request(Opcode.GET, key=b"k", opaque=3)
        self.assertEqual(a, request(Opcode.GET, key=b"k", opaque=3))
        self.assertNotEqual(a, request(Opcode.GET, key=b"k", opaque=4))
        self.assertNotEqual(a, "not a packet")
        self.assertIn("GET", repr(a))
        r = Packet(RES_MAGIC, Opcode.SET, vbucket_or_status=Status.E2BIG,
                   value=b"x" * 1000)
        self.assertIn("status=E2BIG", repr(r))
        self.assertIn("1000 bytes", repr(r))
        self.assertRaises(TypeError, hash, a)


def _stream(big: bool) -> Tuple[bytes, List[Packet]]:
    """Every valid request once (if big, plus a 70 KB SET): wire, packets."""
    frames: List[bytes] = []
    expected: List[Packet] = []
    for n, op in enumerate(ALL_OPCODES):
        fields = dict(VALID[op])
        frames.append(encode_request(op, opaque=1000 + n,
                                     **fields))  # type: ignore[arg-type]
        expected.append(request(op, opaque=1000 + n,
                                **fields))  # type: ignore[arg-type]
    if big:
        value = bytes(range(256)) * 280  # 71,680 bytes
        frames.append(encode_request(Opcode.SET, key=b"big", value=value,
                                     extras=store_extras(1, 0), opaque=9))
        expected.append(request(Opcode.SET, key=b"big", value=value,
                                extras=store_extras(1, 0), opaque=9))
        frames.append(encode_request(Opcode.NOOP, opaque=10))
        expected.append(request(Opcode.NOOP, opaque=10))
    return b"".join(frames), expected


class PoolEncoderTests(unittest.TestCase):
    """The header, batch and flags helpers the memcached pool builds with."""

    def test_header_is_the_one_struct(self) -> None:
        self.assertIs(mc._HEADER, mc.HEADER)
        self.assertEqual(mc.HEADER.size, HEADER_LEN)
        self.assertEqual(mc.HEADER.format, _RAW_HEADER.format)
        self.assertEqual(MAX_KEY_LEN, 250)

    def test_encode_batch_consecutive_opaques_then_noop(self) -> None:
        reqs = [(Opcode.GETKQ, b"a", b"", b""),
                (Opcode.SETQ, b"b", store_extras(3, 0), b"v"),
                (Opcode.GATKQ, b"c", touch_extras(9), b"")]
        wire = mc.encode_batch(reqs, 0xFFFFFFFE)
        self.assertEqual(wire, b"".join(
            [encode_request(op, k, v, x, o) for (op, k, x, v), o in
             zip(reqs, (0xFFFFFFFE, 0xFFFFFFFF, 0))]
            + [encode_request(Opcode.NOOP, opaque=1)]))
        packets = Decoder().feed(wire)
        self.assertEqual([p.opaque for p in packets], [0xFFFFFFFE, 0xFFFFFFFF, 0, 1])
        self.assertEqual(packets[-1].opcode, Opcode.NOOP)
        self.assertEqual(mc.encode_batch([], 7), encode_request(Opcode.NOOP, opaque=7))
        self.assertRaises(ValueError, mc.encode_batch,
                          [(Opcode.GETKQ, b"k" * 65536, b"", b"")], 0)

    def test_parse_item_flags(self) -> None:
        self.assertEqual(mc.parse_item_flags(get_response_extras(0xDEADBEEF)), 0xDEADBEEF)
        self.assertEqual(mc.parse_item_flags(b""), 0)
        self.assertRaises(ValueError, mc.parse_item_flags, b"\0\0\0")
        self.assertEqual(mc.ITEM_FLAGS.unpack(get_response_extras(5)), (5,))


class StreamSplitTests(unittest.TestCase):
    """Any split of the byte stream decodes to the same packets."""

    def _feed_chunks(self, chunks: Sequence[mc.BytesLike],
                     expect: str = "request") -> List[Packet]:
        d = Decoder(expect=expect)
        out: List[Packet] = []
        for chunk in chunks:
            out.extend(d.feed(chunk))
        self.assertEqual(d.buffered, 0)
        return out

    def test_whole_stream(self) -> None:
        wire, expected = _stream(big=True)
        self.assertEqual(Decoder().feed(wire), expected)

    def test_one_byte_at_a_time(self) -> None:
        wire, expected = _stream(big=True)
        d = Decoder()
        out: List[Packet] = []
        largest = max(len(p.encode()) for p in expected)
        for i in range(len(wire)):
            out.extend(d.feed(wire[i:i + 1]))
            # Only the unfinished frame is ever held.
            self.assertLess(d.buffered, largest)
        self.assertEqual(out, expected)
        self.assertEqual(d.buffered, 0)

    def test_every_two_way_split(self) -> None:
        wire, expected = _stream(big=False)
        for cut in range(len(wire) + 1):
            got = self._feed_chunks([wire[:cut], wire[cut:]])
            if got != expected:
                self.fail("split at %d of %d decodes differently"
                          % (cut, len(wire)))

    def test_random_multi_way_splits(self) -> None:
        wire, expected = _stream(big=True)
        rng = random.Random(20240501)
        for _ in range(30):
            chunks, pos = [], 0
            while pos < len(wire):
                size = rng.choice((1, 2, 23, 24, 25, 100, 4096, 65536))
                chunks.append(wire[pos:pos + size])
                pos += size
            self.assertEqual(self._feed_chunks(chunks), expected)

    def test_bytearray_and_memoryview_input(self) -> None:
        wire, expected = _stream(big=False)
        self.assertEqual(self._feed_chunks([bytearray(wire[:100]),
                                            memoryview(wire)[100:]]),
                         expected)
        got = self._feed_chunks([memoryview(wire)])
        self.assertEqual(got, expected)
        self.assertIs(type(got[0].key), bytes)

    def test_response_stream_split_everywhere(self) -> None:
        # A memcached reply to "get_multi" (GETKQ... NOOP) plus STAT replies.
        frames = [encode_response(Opcode.GETK, key=b"k%d" % i,
                                  value=b"v" * i,
                                  extras=get_response_extras(i), opaque=i,
                                  cas=i + 100) for i in range(5)]
        frames.append(encode_response(Opcode.STAT, key=b"pid", value=b"42"))
        frames.append(encode_response(Opcode.STAT))
        frames.append(encode_response(Opcode.NOOP, opaque=99))
        frames.append(encode_response(Opcode.GET, status=Status.KEY_ENOENT,
                                      value=b"Not found", opaque=7))
        wire = b"".join(frames)
        expected = Decoder(expect="response").feed(wire)
        self.assertEqual([p.encode() for p in expected], frames)
        for cut in range(len(wire) + 1):
            self.assertEqual(
                self._feed_chunks([wire[:cut], wire[cut:]], "response"),
                expected)

    def test_tail_is_all_that_is_buffered(self) -> None:
        one = encode_request(Opcode.SET, key=b"k", value=b"v" * 1000,
                             extras=store_extras(0, 0))
        d = Decoder()
        self.assertEqual(len(d.feed(one + one[:500])), 1)
        self.assertEqual(d.buffered, 500)
        self.assertEqual(len(d.feed(one[500:] + one[:10])), 1)
        self.assertEqual(d.buffered, 10)
        self.assertEqual(d.feed(b""), [])
        self.assertEqual(d.buffered, 10)

    def test_large_value_in_small_chunks(self) -> None:
        # 4 MiB in 16 KiB reads: linear buffering, one packet at the end.
        value = b"\xab" * (4 * 1024 * 1024)
        wire = encode_request(Opcode.SET, key=b"big", value=value,
                              extras=store_extras(0, 0))
        d = Decoder()
        out: List[Packet] = []
        for pos in range(0, len(wire), 16384):
            out.extend(d.feed(wire[pos:pos + 16384]))
        self.assertEqual(len(out), 1)
        self.assertEqual(out[0].value, value)


class Refusal(NamedTuple):
    name: str
    data: bytes
    status: int
    fatal: bool
    opcode: Optional[int]
    opaque: Optional[int]
    expect: str = "request"
    max_body: int = DEFAULT_MAX_BODY


def _refusals() -> List[Refusal]:
    get_hdr = raw_header(Opcode.GET, keylen=3, bodylen=3, opaque=5)
    return [
        # memcached try_read_command_binary: "Invalid magic" -> close.
        Refusal("bad_magic_zero", b"\x00" + get_hdr[1:] + b"abc",
                Status.EINVAL, True, None, None),
        Refusal("ascii_command_on_binary_port",
                b"get foo bar baz qux quux corge\r\n",
                Status.EINVAL, True, None, None),
        Refusal("response_magic_on_request_stream",
                encode_response(Opcode.GET, opaque=1),
                Status.EINVAL, True, None, None),
        Refusal("request_magic_on_response_stream",
                encode_request(Opcode.GET, key=b"k"),
                Status.EINVAL, True, None, None, expect="response"),
        # CVE-2016-8705: process_bin_update with keylen + extlen > bodylen.
        Refusal("cve_2016_8705_set_keylen_plus_extlen_above_bodylen",
                raw_header(Opcode.SET, keylen=10, extlen=8, bodylen=12,
                           opaque=7) + b"x" * 12,
                Status.EINVAL, True, Opcode.SET, 7),
        # CVE-2016-8704: process_bin_append_prepend with keylen > bodylen.
        Refusal("cve_2016_8704_append_keylen_above_bodylen",
                raw_header(Opcode.APPEND, keylen=100, bodylen=10,
                           opaque=8) + b"x" * 10,
                Status.EINVAL, True, Opcode.APPEND, 8),
        # CVE-2016-8706: SASL auth with keylen > bodylen.
        Refusal("cve_2016_8706_sasl_auth_keylen_above_bodylen",
                raw_header(Opcode.SASL_AUTH, keylen=0xFFFF, bodylen=5,
                           opaque=9) + b"PLAIN",
                Status.EINVAL, True, Opcode.SASL_AUTH, 9),
        Refusal("incr_extlen_above_bodylen",
                raw_header(Opcode.INCREMENT, extlen=20, bodylen=4,
                           opaque=10) + b"abcd",
                Status.EINVAL, True, Opcode.INCREMENT, 10),
        Refusal("response_keylen_above_bodylen",
                raw_header(Opcode.GETK, keylen=9, bodylen=4, opaque=11,
                           magic=RES_MAGIC) + b"abcd",
                Status.EINVAL, True, Opcode.GETK, 11, expect="response"),
        # "Too big" of binary.t, refused from the header alone.
        Refusal("bodylen_0xffffffff",
                raw_header(Opcode.SET, keylen=3, extlen=8,
                           bodylen=0xFFFFFFFF, opaque=12) + b"z" * 5000,
                Status.E2BIG, True, Opcode.SET, 12),
        Refusal("bodylen_one_above_max_body",
                raw_header(Opcode.SET, keylen=3, extlen=8, bodylen=1025,
                           opaque=13) + b"z" * 1025,
                Status.E2BIG, True, Opcode.SET, 13, max_body=1024),
        Refusal("response_bodylen_above_max_body",
                raw_header(Opcode.GET, extlen=4, bodylen=2000, opaque=14,
                           magic=RES_MAGIC),
                Status.E2BIG, True, Opcode.GET, 14, expect="response",
                max_body=1024),
        # dispatch_bin_command: keylen > KEY_MAX_LENGTH -> EINVAL.
        Refusal("key_251_bytes",
                encode_request(Opcode.GET, key=b"k" * 251, opaque=15),
                Status.EINVAL, False, Opcode.GET, 15),
        Refusal("key_65535_bytes_header_only",
                raw_header(Opcode.SET, keylen=0xFFFF, extlen=8,
                           bodylen=0xFFFF + 8, opaque=16),
                Status.EINVAL, False, Opcode.SET, 16),
    ]


class RefusalTests(unittest.TestCase):
    """Frames the decoder refuses, each before buffering its body."""

    def _check(self, row: Refusal, err: FrameError) -> None:
        self.assertEqual(
            (err.status, err.fatal, err.opcode, err.opaque),
            (row.status, row.fatal, row.opcode, row.opaque), row.name)

    def test_table_whole_input(self) -> None:
        for row in _refusals():
            d = Decoder(expect=row.expect, max_body=row.max_body)
            err = self.assertRaises(FrameError, d.feed, row.data)
            self._check(row, err)
            self.assertEqual(err.packets, [], row.name)
            self.assertEqual(d.failed, row.fatal, row.name)
            if row.fatal:
                # Nothing kept; and no further input is accepted.
                self.assertEqual(d.buffered, 0, row.name)
                again = self.assertRaises(
                    FrameError, d.feed, encode_request(Opcode.NOOP))
                self.assertTrue(again.fatal)
                self.assertEqual(again.status, row.status)
            else:
                # The body already here was dropped, never stored.
                self.assertEqual(d.buffered, 0, row.name)

    def test_table_byte_by_byte(self) -> None:
        # The refusal comes with the 24th byte: the body is never looked at.
        for row in _refusals():
            d = Decoder(expect=row.expect, max_body=row.max_body)
            for i in range(HEADER_LEN - 1):
                self.assertEqual(d.feed(row.data[i:i + 1]), [], row.name)
            self.assertEqual(d.buffered, HEADER_LEN - 1)
            err = self.assertRaises(FrameError, d.feed,
                                    row.data[HEADER_LEN - 1:HEADER_LEN])
            self._check(row, err)
            self.assertEqual(d.buffered, 0, row.name)

    def test_huge_bodylen_is_not_buffered(self) -> None:
        # The header claims 4 GiB; stream 1 MiB behind it in the same
        # feed and after: nothing is kept, the decoder is closed.
        d = Decoder()
        hdr = raw_header(Opcode.SET, keylen=1, extlen=8, bodylen=0xFFFFFFFF)
        err = self.assertRaises(FrameError, d.feed, hdr + b"\0" * 65536)
        self.assertEqual((err.status, err.fatal), (Status.E2BIG, True))
        self.assertEqual(d.buffered, 0)
        for _ in range(16):
            self.assertRaises(FrameError, d.feed, b"\0" * 65536)
            self.assertEqual(d.buffered, 0)

    def test_boundaries_accepted(self) -> None:
        key = b"k" * MAX_KEY_LEN
        (p,) = Decoder().feed(encode_request(Opcode.GET, key=key))
        self.assertEqual(p.key, key)
        d = Decoder(max_body=1024)
        frame = encode_request(Opcode.SET, key=b"abc", value=b"v" * 1013,
                               extras=store_extras(0, 0))
        self.assertEqual(len(d.feed(frame)), 1)  # bodylen == max_body
        self.assertEqual(Decoder(max_key=10).feed(
            encode_request(Opcode.GET, key=b"k" * 10))[0].key, b"k" * 10)
        self.assertRaises(FrameError, Decoder(max_key=10).feed,
                          encode_request(Opcode.GET, key=b"k" * 11))

    def test_packets_before_the_error_are_kept(self) -> None:
        good = [encode_request(Opcode.NOOP, opaque=i) for i in range(3)]
        d = Decoder()
        err = self.assertRaises(FrameError, d.feed,
                                b"".join(good) + b"\x00" * 24)
        self.assertTrue(err.fatal)
        self.assertEqual([p.opaque for p in err.packets], [0, 1, 2])

    def test_key_too_long_is_skipped_and_decoding_resumes(self) -> None:
        bad = encode_request(Opcode.SET, key=b"k" * 300, value=b"v" * 5000,
                             extras=store_extras(0, 0), opaque=1)
        after = encode_request(Opcode.GET, key=b"next", opaque=2)
        d = Decoder()
        self.assertEqual(d.feed(encode_request(Opcode.NOOP, opaque=0)
                                + bad[:20])[0].opaque, 0)
        self.assertEqual(d.buffered, 20)
        err = self.assertRaises(FrameError, d.feed, bad[20:1000])
        self.assertEqual((err.status, err.fatal, err.opaque),
                         (Status.EINVAL, False, 1))
        self.assertEqual(d.buffered, 0)
        self.assertEqual(d.skipping, len(bad) - 1000)
        # The rest of the bad body is dropped as it arrives...
        self.assertEqual(d.feed(bad[1000:3000]), [])
        self.assertEqual(d.buffered, 0)
        # ...and what follows it decodes normally.
        (p,) = d.feed(bad[3000:] + after)
        self.assertEqual((p.opcode, p.key, p.opaque), (Opcode.GET, b"next", 2))
        self.assertEqual(d.skipping, 0)
        self.assertFalse(d.failed)

    def test_key_too_long_then_more_frames_in_the_same_feed(self) -> None:
        bad = encode_request(Opcode.GET, key=b"k" * 251, opaque=1)
        good = encode_request(Opcode.GET, key=b"ok", opaque=2)
        d = Decoder()
        err = self.assertRaises(FrameError, d.feed,
                                good + bad + good + good)
        self.assertEqual([p.opaque for p in err.packets], [2])
        self.assertFalse(err.fatal)
        # What followed the bad frame is waiting: feed(b"") decodes it.
        self.assertEqual([p.opaque for p in d.feed(b"")], [2, 2])
        self.assertEqual(d.buffered, 0)

    def test_bad_expect(self) -> None:
        self.assertRaises(ValueError, Decoder, expect="both")


class Invalid(NamedTuple):
    name: str
    packet: Packet
    status: Optional[int]
    #: memcached 1.6 answers this frame with the same status (checked live).
    memcached_agrees: bool = True


_SE = store_extras(0, 0)
_TE = touch_extras(0)
_CE = counter_extras(1, 0, 0)
E = Status.EINVAL
VALIDATION: List[Invalid] = [
    # dispatch_bin_command: SET/ADD/REPLACE need extlen == 8 and a key.
    Invalid("set_without_extras", request(O.SET, b"k", b"v"), E),
    Invalid("set_extlen_4", request(O.SET, b"k", b"v", b"\0" * 4), E),
    Invalid("set_extlen_12", request(O.SET, b"k", b"v", b"\0" * 12), E),
    Invalid("set_without_key", request(O.SET, b"", b"v", _SE), E),
    Invalid("add_extlen_0", request(O.ADD, b"k", b"v"), E),
    Invalid("replaceq_extlen_0", request(O.REPLACEQ, b"k", b"v"), E),
    Invalid("setq_without_key", request(O.SETQ, b"", b"v", _SE), E),
    # GET*: extlen == 0, keylen > 0, bodylen == keylen.
    Invalid("get_with_extras", request(O.GET, b"k", b"", b"\0" * 4), E),
    Invalid("get_without_key", request(O.GET), E),
    Invalid("get_with_value", request(O.GET, b"k", b"v"), E),
    Invalid("getk_with_value", request(O.GETK, b"k", b"v"), E),
    Invalid("getq_without_key", request(O.GETQ), E),
    # DELETE: keylen > 0, extlen == 0, bodylen == keylen (the old 4-byte
    # "delete after" extras are gone).
    Invalid("delete_with_extras", request(O.DELETE, b"k", b"", b"\0" * 4),
            E),
    Invalid("delete_with_value", request(O.DELETE, b"k", b"v"), E),
    Invalid("deleteq_without_key", request(O.DELETEQ), E),
    # INCR/DECR: keylen > 0, extlen == 20, bodylen == keylen + extlen.
    Invalid("incr_extlen_0", request(O.INCREMENT, b"k"), E),
    Invalid("incr_extlen_8", request(O.INCREMENT, b"k", b"", b"\0" * 8), E),
    Invalid("decr_extlen_24", request(O.DECREMENT, b"k", b"", b"\0" * 24),
            E),
    Invalid("incr_without_key", request(O.INCREMENT, b"", b"", _CE), E),
    Invalid("incr_with_value", request(O.INCREMENT, b"k", b"1", _CE), E),
    Invalid("decrq_extlen_0", request(O.DECREMENTQ, b"k"), E),
    # TOUCH/GAT*: extlen == 4, keylen != 0.
    Invalid("touch_extlen_0", request(O.TOUCH, b"k"), E),
    Invalid("touch_extlen_8", request(O.TOUCH, b"k", b"", b"\0" * 8), E),
    Invalid("touch_without_key", request(O.TOUCH, b"", b"", _TE), E),
    Invalid("gat_extlen_0", request(O.GAT, b"k"), E),
    Invalid("gatq_without_key", request(O.GATQ, b"", b"", _TE), E),
    Invalid("gatk_extlen_8", request(O.GATK, b"k", b"", b"\0" * 8), E),
    # memcached accepts a value here and then reads it as the next command.
    Invalid("touch_with_value", request(O.TOUCH, b"k", b"v", _TE), E, False),
    # FLUSH: no key, bodylen == extlen, extlen 0 or 4.
    Invalid("flush_extlen_8", request(O.FLUSH, b"", b"", b"\0" * 8), E),
    Invalid("flush_extlen_2", request(O.FLUSH, b"", b"", b"\0" * 2), E),
    Invalid("flush_with_key", request(O.FLUSH, b"k"), E),
    Invalid("flushq_with_value", request(O.FLUSHQ, b"", b"v"), E),
    # APPEND/PREPEND: keylen > 0, extlen == 0.
    Invalid("append_with_extras", request(O.APPEND, b"k", b"v", _SE), E),
    Invalid("prepend_without_key", request(O.PREPEND, b"", b"v"), E),
    Invalid("appendq_with_extras", request(O.APPENDQ, b"k", b"v", _TE), E),
    # NOOP/VERSION/QUIT: nothing at all.
    Invalid("noop_with_key", request(O.NOOP, b"k"), E),
    Invalid("noop_with_value", request(O.NOOP, b"", b"v"), E),
    Invalid("noop_with_extras", request(O.NOOP, b"", b"", _TE), E),
    Invalid("version_with_value", request(O.VERSION, b"", b"v"), E),
    Invalid("quit_with_key", request(O.QUIT, b"k"), E),
    Invalid("quitq_with_extras", request(O.QUITQ, b"", b"", _TE), E),
    # STAT: extlen == 0 (key optional).
    Invalid("stat_with_extras", request(O.STAT, b"", b"", _TE), E),
    Invalid("stat_with_value", request(O.STAT, b"items", b"v"), E, False),
    # VERBOSITY (memcached 1.4: extlen == 4, keylen == 0, bodylen == 4;
    # 1.6 no longer knows the opcode).
    Invalid("verbosity_extlen_0", request(O.VERBOSITY), E, False),
    Invalid("verbosity_with_key", request(O.VERBOSITY, b"k", b"",
                                          verbosity_extras(1)), E, False),
    # SASL: LIST_MECHS takes nothing, AUTH/STEP need the mechanism as key.
    Invalid("sasl_list_mechs_with_key", request(O.SASL_LIST_MECHS, b"k"), E),
    Invalid("sasl_auth_without_key", request(O.SASL_AUTH, b"", b"\0u\0p"),
            E),
    Invalid("sasl_step_with_extras", request(O.SASL_STEP, b"PLAIN", b"x",
                                             _TE), E),
    # Couchbase (kv_engine validators): GET_LOCKED extlen 0 or 4, no CAS;
    # UNLOCK_KEY needs the CAS from GET_LOCKED.
    Invalid("get_locked_extlen_8", request(O.GET_LOCKED, b"k", b"",
                                           b"\0" * 8), E, False),
    Invalid("get_locked_with_cas", request(O.GET_LOCKED, b"k", cas=1), E,
            False),
    Invalid("get_locked_without_key", request(O.GET_LOCKED), E, False),
    Invalid("get_locked_with_value", request(O.GET_LOCKED, b"k", b"v"), E,
            False),
    Invalid("unlock_without_cas", request(O.UNLOCK_KEY, b"k"), E, False),
    Invalid("unlock_with_extras", request(O.UNLOCK_KEY, b"k", b"", _TE,
                                          cas=5), E, False),
    Invalid("unlock_without_key", request(O.UNLOCK_KEY, cas=5), E, False),
    # Over-long key and unknown opcodes.
    Invalid("get_key_251_bytes", request(O.GET, b"k" * 251), E),
    Invalid("unknown_opcode_0x50", request(0x50), Status.UNKNOWN_COMMAND),
    # memcached swallows bodylen bytes *after* the key it already read, so
    # it waits for more input here instead of answering.
    Invalid("unknown_opcode_with_key", request(0x50, b"k"),
            Status.UNKNOWN_COMMAND, False),
    Invalid("unknown_opcode_0xff", request(0xFF), Status.UNKNOWN_COMMAND),
    Invalid("response_magic", Packet(RES_MAGIC, O.GET, key=b"k"), E, False),
    # Well-formed frames that must pass.
    Invalid("flush_extlen_0_ok", request(O.FLUSH), None),
    Invalid("flush_extlen_4_ok", request(O.FLUSH, b"", b"", _TE), None),
    Invalid("stat_without_key_ok", request(O.STAT), None),
    Invalid("stat_with_key_ok", request(O.STAT, b"settings"), None),
    Invalid("set_empty_value_ok", request(O.SET, b"k", b"", _SE), None),
    Invalid("set_with_cas_ok", request(O.SET, b"k", b"v", _SE, cas=9), None),
    Invalid("append_empty_value_ok", request(O.APPEND, b"k"), None),
    Invalid("get_key_250_bytes_ok", request(O.GET, b"k" * 250), None),
    Invalid("incr_no_create_ok", request(O.INCREMENT, b"k", b"",
                                         counter_extras(1, 0,
                                                        COUNTER_NO_CREATE)),
            None),
    Invalid("get_locked_extlen_0_ok", request(O.GET_LOCKED, b"k"), None,
            False),
    Invalid("unlock_with_cas_ok", request(O.UNLOCK_KEY, b"k", cas=5), None,
            False),
]
del O, E


class ValidateRequestTests(unittest.TestCase):
    """validate_request mirrors memcached's dispatch_bin_command checks."""

    def test_table(self) -> None:
        for row in VALIDATION:
            self.assertEqual(validate_request(row.packet), row.status,
                             row.name)

    def test_names_are_unique(self) -> None:
        names = [row.name for row in VALIDATION]
        self.assertEqual(len(names), len(set(names)))

    def test_max_key_argument(self) -> None:
        p = request(Opcode.GET, b"k" * 20)
        self.assertIsNone(validate_request(p))
        self.assertEqual(validate_request(p, max_key=10), Status.EINVAL)

    def test_every_valid_example_validates(self) -> None:
        for op, fields in VALID.items():
            p = request(op, **fields)  # type: ignore[arg-type]
            self.assertIsNone(validate_request(p), mc.OPCODE_NAMES[op])


# --- against a real memcached --------------------------------------------


class _Conn:
    """A blocking binary-protocol connection using the codec under test."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        self.decoder = Decoder(expect="response")
        self.pending: List[Packet] = []

    def close(self) -> None:
        self.sock.close()

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def recv_packet(self) -> Packet:
        while not self.pending:
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("memcached closed the connection")
            self.pending.extend(self.decoder.feed(data))
        return self.pending.pop(0)

    def call(self, opcode: int, **fields: object) -> Packet:
        self.send(encode_request(opcode, **fields))  # type: ignore[arg-type]
        return self.recv_packet()


class LiveMemcachedTests(unittest.TestCase):
    """The codec against a real memcached speaking the binary protocol."""

    def setUp(self) -> None:
        memcached = shutil.which("memcached")
        if memcached is None:
            raise unittest.SkipTest("needs memcached on PATH (CI installs "
                                    "Debian's memcached package)")
        tmp = tempfile.mkdtemp(prefix="txcb-mcbinary-")
        self.addCleanup(shutil.rmtree, tmp, True)
        for _attempt in range(5):
            self.port = _free_port()
            argv = [memcached, "-U", "0", "-l", "127.0.0.1", "-B", "binary",
                    "-p", str(self.port)]
            if os.geteuid() == 0:  # memcached refuses root without -u
                argv += ["-u", pwd.getpwuid(0).pw_name]
            log = os.path.join(tmp, "memcached.log")
            with open(log, "wb") as out:
                proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                        stdout=out, stderr=subprocess.STDOUT)
            self.addCleanup(self._stop, proc)
            if self._wait_port(proc):
                return
        with open(log, "rb") as f:
            self.fail("memcached did not start: %r" % f.read()[-2000:])

    def _stop(self, proc: subprocess.Popen) -> None:
        if proc.poll() is None:
            proc.terminate()  # by pid
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _wait_port(self, proc: subprocess.Popen) -> bool:
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.5).close()
                return True
            except OSError:
                time.sleep(0.05)
        return False

    def connect(self) -> _Conn:
        conn = _Conn(self.port)
        self.addCleanup(conn.close)
        return conn

    def test_conversation(self) -> None:
        c = self.connect()
        p = c.call(Opcode.VERSION, opaque=1)
        self.assertEqual((p.status, p.opaque), (Status.SUCCESS, 1))
        self.assertTrue(p.value)

        p = c.call(Opcode.SET, key=b"x", value=b"somevalue",
                   extras=store_extras(19, 0), opaque=2)
        self.assertEqual((p.opcode, p.status, p.opaque),
                         (Opcode.SET, Status.SUCCESS, 2))
        cas = p.cas
        self.assertTrue(cas)

        p = c.call(Opcode.GETK, key=b"x", opaque=3)
        self.assertEqual((p.status, p.key, p.value, p.cas),
                         (Status.SUCCESS, b"x", b"somevalue", cas))
        self.assertEqual(parse_get_response_extras(p.extras), 19)

        # CAS mismatch -> KEY_EEXISTS.
        p = c.call(Opcode.SET, key=b"x", value=b"v2",
                   extras=store_extras(0, 0), cas=cas + 1)
        self.assertEqual(p.status, Status.KEY_EEXISTS)

        p = c.call(Opcode.APPEND, key=b"x", value=b" more")
        self.assertEqual(p.status, Status.SUCCESS)
        self.assertEqual(c.call(Opcode.GET, key=b"x").value,
                         b"somevalue more")

        # binary.t "Test increment": 0, then 2**33 + 212 across 32 bits.
        p = c.call(Opcode.INCREMENT, key=b"n", extras=counter_extras(1, 0, 0))
        self.assertEqual(parse_counter_value(p.value), 0)
        p = c.call(Opcode.INCREMENT, key=b"n",
                   extras=counter_extras(2 ** 33 + 212, 0, 0))
        self.assertEqual(parse_counter_value(p.value), 8589934804)
        p = c.call(Opcode.DECREMENT, key=b"missing",
                   extras=counter_extras(1, 0, COUNTER_NO_CREATE))
        self.assertEqual(p.status, Status.KEY_ENOENT)

        p = c.call(Opcode.TOUCH, key=b"x", extras=touch_extras(100))
        self.assertEqual(p.status, Status.SUCCESS)
        p = c.call(Opcode.GAT, key=b"x", extras=touch_extras(100))
        self.assertEqual((p.status, p.value), (Status.SUCCESS,
                                               b"somevalue more"))

        # get_multi as binary.t does it: GETQ... then NOOP; misses are quiet.
        c.send(b"".join(encode_request(Opcode.GETKQ, key=k, opaque=i)
                        for i, k in enumerate([b"x", b"nope", b"n"]))
               + encode_request(Opcode.NOOP, opaque=99))
        got = []
        while True:
            p = c.recv_packet()
            if p.opcode == Opcode.NOOP:
                break
            got.append((p.opaque, p.key))
        self.assertEqual((got, p.opaque), ([(0, b"x"), (2, b"n")], 99))

        # Quiet mutation: no answer, then NOOP (binary.t "Silent set").
        c.send(encode_request(Opcode.SETQ, key=b"q", value=b"silent",
                              extras=store_extras(82, 0), opaque=5)
               + encode_request(Opcode.NOOP, opaque=6))
        self.assertEqual(c.recv_packet().opaque, 6)
        self.assertEqual(c.call(Opcode.GET, key=b"q").value, b"silent")

        p = c.call(Opcode.DELETE, key=b"x")
        self.assertEqual(p.status, Status.SUCCESS)
        p = c.call(Opcode.GET, key=b"x", opaque=7)
        self.assertEqual((p.status, p.opaque), (Status.KEY_ENOENT, 7))

        # STAT: a stream of key/value packets ending with an empty one.
        c.send(encode_request(Opcode.STAT, opaque=8))
        stats = {}
        while True:
            p = c.recv_packet()
            self.assertEqual((p.opcode, p.opaque), (Opcode.STAT, 8))
            if not p.key:
                break
            stats[p.key] = p.value
        self.assertIn(b"pid", stats)

        p = c.call(Opcode.FLUSH, extras=flush_extras())
        self.assertEqual(p.status, Status.SUCCESS)
        self.assertEqual(c.call(Opcode.GET, key=b"q").status,
                         Status.KEY_ENOENT)

    def test_too_big_like_binary_t(self) -> None:
        # binary.t "Too big": a 1 MiB + 1 value is answered with E2BIG and
        # the connection goes on (memcached swallows the body).
        c = self.connect()
        p = c.call(Opcode.SET, key=b"toobig", value=b"x" * (1024 * 1024 + 1),
                   extras=store_extras(10, 10))
        self.assertEqual(p.status, Status.E2BIG)
        self.assertEqual(c.call(Opcode.NOOP, opaque=3).opaque, 3)

    def test_memcached_answers_our_invalid_table_alike(self) -> None:
        checked = 0
        for row in VALIDATION:
            if not row.memcached_agrees:
                continue
            c = self.connect()
            p = c.call(row.packet.opcode, key=row.packet.key,
                       value=row.packet.value, extras=row.packet.extras,
                       cas=row.packet.cas, opaque=0x5A5A)
            if row.status is None:
                self.assertNotIn(p.status,
                                 (Status.EINVAL, Status.UNKNOWN_COMMAND),
                                 row.name)
            else:
                self.assertEqual(p.status, row.status, row.name)
            checked += 1
        self.assertGreater(checked, 40)
