"""
Frames trickled into txcb's receive paths (issue 12, item 3): a 10 MiB
netstring frame sent in 1-byte writes cost 48x its size in memory, held as
one small bytes object per read.  Whatever the size of the pieces, buffering
a partial frame must cost memory linear in what arrived and work linear in
the bytes: checked here for the netstring receivers (Twisted server and
client, the sans-IO decoder), the memcached binary Decoder (both directions)
and the memcached ASCII parser's data blocks.

Memory is measured with tracemalloc.  Work is measured without timing: the
bytes allocated while each piece is fed (tracemalloc's peak over it, summed)
are what a copy of held bytes costs, so copying the held frame on every read
makes that sum grow as n**2 where appending grows as n.
"""

from __future__ import annotations

import tracemalloc

from twisted.internet.testing import StringTransport
from twisted.trial import unittest

from tests.support.netstring import ClientTestBase, ServerTestBase, response
from txcb.formats import FMT_BYTES
from txcb.transport import FastNetstringReceiver
from txcb.wire import mcascii as A
from txcb.wire import mcbinary as B
from txcb.wire.netstring import NetstringDecoder, Op, encode_request, netstring

#: The big frame's payload: over the 64 KiB the old receiver switched
#: strategy at, small enough to feed in 1-3 byte pieces quickly.
BIG = 1 << 19
#: Bytes fed for the work comparisons (n and 2n), inside one frame.
WORK = 12000
#: Slack for what a parser holds besides the frame (objects, small buffers).
SLACK = 64 * 1024


def pieces(data, start=0, stop=None):
    """``data[start:stop]`` in pieces of 1, 2, 3, 1, 2, 3... bytes, each a new object."""
    stop = len(data) if stop is None else stop
    size = 0
    pos = start
    while pos < stop:
        size = size % 3 + 1
        yield data[pos:min(pos + size, stop)]
        pos += size


def trickle_memory(feed, stream, cut):
    """
    Feed ``stream`` in 1-3 byte pieces: -> (bytes held after its first
    ``cut`` bytes, peak until then, peak through the end), traced memory
    above what it was at the start.
    """
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        for piece in pieces(stream, 0, cut):
            feed(piece)
        held, peak_before = tracemalloc.get_traced_memory()
        for piece in pieces(stream, cut):
            feed(piece)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return held - base, peak_before - base, peak - base


def copy_work(feed, stream, count):
    """
    Bytes allocated while feeding the first ``count`` bytes of ``stream``
    in 1-3 byte pieces: the sum, over the pieces, of the traced peak during
    the feed above the traced memory before it.
    """
    total = 0
    tracemalloc.start()
    try:
        get, reset = tracemalloc.get_traced_memory, tracemalloc.reset_peak
        for piece in pieces(stream, 0, count):
            before = get()[0]
            reset()
            feed(piece)
            total += get()[1] - before
    finally:
        tracemalloc.stop()
    return total


class _LinearChecks:
    """Asserts shared by the cases below (a mixin of a TestCase)."""

    def assertLinearMemory(self, feed, stream, after=b""):
        """
        ``stream``: a big frame, then ``after`` (small frames): trickled, the
        big frame holds memory linear in what arrived until its last byte.
        """
        n = len(stream) - len(after) - 1
        held, peak_before, peak = trickle_memory(feed, stream, n)
        # Held: the bytes received and the buffer's growth margin, not an
        # object per piece.  Peak: that, and the payload copied out once.
        self.assertLess(held, 1.5 * n + SLACK, "held %d for %d bytes" % (held, n))
        self.assertLess(peak_before, 1.5 * n + SLACK, "peak %d for %d bytes" % (peak_before, n))
        return peak

    def assertLinearWork(self, make_feed, stream):
        one = copy_work(make_feed(), stream, WORK)
        two = copy_work(make_feed(), stream, 2 * WORK)
        # Appending: allocation grows with the bytes; copying what is held
        # on every read: four times as much for twice the bytes.
        self.assertLess(two, 3 * max(one, 1) + SLACK, "work %d for n, %d for 2n" % (one, two))
        self.assertLess(two, 100 * 2 * WORK + SLACK, "work %d for %d bytes" % (two, 2 * WORK))


# -- the netstring receivers ----------------------------------------------------

class _Recorder(FastNetstringReceiver):
    MAX_LENGTH = 1 << 25

    def __init__(self):
        self.strings = []
        self.errors = 0

    def stringReceived(self, string):
        self.strings.append(string)

    def _handleParseError(self):
        self.errors += 1
        FastNetstringReceiver._handleParseError(self)


def _receiver():
    r = _Recorder()
    r.makeConnection(StringTransport())
    return r


class TrickledNetstringTests(_LinearChecks, unittest.TestCase):
    """FastNetstringReceiver and NetstringDecoder, fed a big frame in 1-3 byte pieces."""

    def test_trickled_frame_costs_linear_memory_and_cpu(self):
        payload = bytes(range(256)) * (BIG // 256)
        stream = netstring(payload)
        r = _receiver()
        peak = self.assertLinearMemory(r.dataReceived, stream)
        self.assertLess(peak, 2.5 * len(stream) + SLACK)
        self.assertEqual(r.strings, [payload])
        self.assertEqual(r.errors, 0)
        self.assertEqual(len(r._partial), 0)
        self.assertLinearWork(lambda: _receiver().dataReceived, netstring(b"y" * 60000))
        self.assertLinearWork(lambda: _receiver().dataReceived, stream)

    def test_trickled_frame_costs_linear_memory_and_cpu_in_the_decoder(self):
        payload = bytes(range(256)) * (BIG // 256)
        stream = netstring(payload) + netstring(b"after")
        d = NetstringDecoder(1 << 25)
        got = []
        peak = self.assertLinearMemory(lambda b: got.extend(d.feed(b)), stream,
                                       netstring(b"after"))
        self.assertLess(peak, 2.5 * len(stream) + SLACK)
        self.assertEqual(got, [payload, b"after"])
        self.assertEqual(d.buffered, 0)
        self.assertLinearWork(lambda: NetstringDecoder(1 << 25).feed, netstring(b"y" * 60000))
        self.assertLinearWork(lambda: NetstringDecoder(1 << 25).feed, stream)

    def test_declared_length_reserves_nothing(self):
        # A length prefix alone is no reason to hold memory: the buffer
        # grows with what arrives, not to the size announced.
        r = _receiver()
        d = NetstringDecoder(1 << 25)
        tracemalloc.start()
        try:
            base = tracemalloc.get_traced_memory()[0]
            r.dataReceived(b"20000000:abc")
            d.feed(b"20000000:abc")
            held = tracemalloc.get_traced_memory()[0] - base
        finally:
            tracemalloc.stop()
        self.assertLess(held, 4096)
        self.assertEqual(d.buffered, 3)


class TrickledServerRequestTests(_LinearChecks, ServerTestBase):
    """The netstring server, receiving an UPSERT of a big value in 1-3 byte pieces."""

    def test_trickled_upsert_costs_linear_memory_and_cpu(self):
        proto, transport = self.setup_server(max_value_size=2 * BIG)
        value = b"v" * BIG
        stream = netstring(encode_request(Op.UPSERT, 7, key=b"big", value=value))
        self.assertLinearMemory(proto.dataReceived, stream)
        [res] = self.responses()
        self.assertEqual((res.opcode, res.opaque, res.status), (Op.UPSERT, 7, 0))
        self.assertEqual(self.bucket.get(b"big").result.value, value)
        self.assertEqual(len(proto._partial), 0)
        self.assertLinearWork(lambda: self.connect(self.factory)[0].dataReceived, stream)


class PartialFrameWhileHeldTests(ServerTestBase):
    """The partial frame and the requests held while replies back up are apart."""

    def test_partial_frame_while_requests_are_held(self):
        # Regression: the receiver's partial frame shared a name with the
        # requests RequestFlow holds while paused, so a frame split across
        # reads then met a list of payloads.
        proto, transport = self.setup_server()
        first = netstring(encode_request(Op.UPSERT, 1, key=b"a", value=b"1"))
        second = netstring(encode_request(Op.GET, 2, key=b"a"))
        proto.pauseProducing()
        proto.dataReceived(first + second[:5])
        proto.dataReceived(second[5:-1])
        proto.dataReceived(second[-1:])
        self.assertEqual(self.responses(), [])
        proto.resumeProducing()
        replies = self.responses()
        self.assertEqual([(r.opaque, r.status) for r in replies], [(1, 0), (2, 0)])
        self.assertEqual(replies[1].body, b"1")


class TrickledClientReplyTests(_LinearChecks, ClientTestBase):
    """The Twisted client, receiving a big GET reply in 1-3 byte pieces."""

    def test_trickled_reply_costs_linear_memory_and_cpu(self):
        self.make_client()
        value = bytes(range(256)) * (BIG // 256)
        d = self.bucket.get(b"big")
        req = self.one_request()
        stream = response(Op.GET, req.opaque, flags=FMT_BYTES, cas=5, body=value)
        self.assertLinearMemory(self.proto.dataReceived, stream)
        result = self.successResultOf(d)
        self.assertEqual((result.value, result.cas), (value, 5))
        self.assertIdle()
        # The work of a reply's first bytes, on fresh connections.
        self.assertLinearWork(lambda: self.make_client()[0].dataReceived, stream)


# -- the memcached codecs ----------------------------------------------------

class TrickledMemcachedBinaryTests(_LinearChecks, unittest.TestCase):
    """The memcached binary Decoder, both directions, fed a big body in 1-3 byte pieces."""

    def check(self, expect, stream, opcode, value):
        d = B.Decoder(expect, max_body=4 * BIG)
        got = []
        peak = self.assertLinearMemory(lambda b: got.extend(d.feed(b)), stream)
        self.assertLess(peak, 2.5 * len(stream) + SLACK)
        [packet] = got
        self.assertEqual((packet.opcode, packet.key, packet.value), (opcode, b"big", value))
        self.assertEqual(d.buffered, 0)
        self.assertLinearWork(lambda: B.Decoder(expect, max_body=4 * BIG).feed, stream)

    def test_trickled_request_costs_linear_memory_and_cpu(self):
        value = b"r" * BIG
        stream = B.encode_request(B.Opcode.SET, b"big", value, B.store_extras(0, 0))
        self.check("request", stream, B.Opcode.SET, value)

    def test_trickled_response_costs_linear_memory_and_cpu(self):
        value = b"s" * BIG
        stream = B.encode_response(B.Opcode.GETK, 0, b"big", value, B.get_response_extras(0))
        self.check("response", stream, B.Opcode.GETK, value)


class TrickledMemcachedAsciiTests(_LinearChecks, unittest.TestCase):
    """The memcached ASCII parser, fed a ``set`` data block in 1-3 byte pieces."""

    def parser(self, calls):
        handlers = {name: (lambda *args, _n=name: calls.append((_n,) + args))
                    for name in ("get", "set")}
        return A.Parser(handlers, lambda resp, close: calls.append(("error", resp, close)),
                        max_value=4 * BIG)

    def test_trickled_data_block_costs_linear_memory_and_cpu(self):
        value = b"a" * BIG
        stream = b"set big 5 0 %d\r\n%s\r\nget k\r\n" % (len(value), value)
        calls = []
        p = self.parser(calls)
        peak = self.assertLinearMemory(p.feed, stream, b"get k\r\n")
        self.assertLess(peak, 2.5 * len(stream) + SLACK)
        self.assertEqual(calls, [("set", "set", b"big", 5, 0, value, None, False),
                                 ("get", [b"k"], False)])
        self.assertEqual(p.buffered, 0)
        self.assertLinearWork(lambda: self.parser([]).feed, stream)


# -- a big partial frame behind a small one, in one read -----------------------

def _one_read_peak(feed, data):
    """Traced peak while ``feed(data)`` runs (``data`` itself is not counted)."""
    tracemalloc.start()
    try:
        base = tracemalloc.get_traced_memory()[0]
        feed(data)
        return tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()


class PartialTailCopiedOnceTests(unittest.TestCase):
    """The incomplete end of a read is copied into the buffer once, not sliced and then copied."""

    def assertCopiedOnce(self, feed, data, tail):
        peak = _one_read_peak(feed, data)
        self.assertLess(peak, 1.3 * tail + SLACK, "peak %d for a %d-byte tail" % (peak, tail))

    def test_netstring_receivers(self):
        data = netstring(b"small") + netstring(b"b" * BIG)[:-1]
        self.assertCopiedOnce(_receiver().dataReceived, data, BIG)
        self.assertCopiedOnce(NetstringDecoder(1 << 25).feed, data, BIG)

    def test_memcached_binary(self):
        data = (B.encode_request(B.Opcode.NOOP)
                + B.encode_request(B.Opcode.SET, b"big", b"b" * BIG, B.store_extras(0, 0))[:-1])
        self.assertCopiedOnce(B.Decoder(max_body=4 * BIG).feed, data, BIG)

    def test_memcached_ascii_data_block(self):
        data = b"get k\r\nset big 0 0 %d\r\n%s" % (BIG, b"b" * (BIG - 1))
        parser = A.Parser({"get": lambda *a: None, "set": lambda *a: None},
                          lambda resp, close: None, max_value=4 * BIG)
        self.assertCopiedOnce(parser.feed, data, BIG)


# -- FastNetstringReceiver: every split, illegal input ---------------------------

#: Frames of every shape: empty, one byte, several in one read, one held
#: past the old 64 KiB threshold (with its prefix split everywhere below).
_SMALL = [b"", b"a", b"hello", b"x" * 300, b"", b"0123456789" * 3]
_STREAM = b"".join(netstring(p) for p in _SMALL)


def _receive(chunks):
    r = _receiver()
    for c in chunks:
        r.dataReceived(c)
    return r


class FastNetstringSplitTests(unittest.TestCase):
    """Frames split at every offset give the same strings as whole reads."""

    def assertReceived(self, chunks, expected=_SMALL):
        r = _receive(chunks)
        self.assertEqual(r.strings, expected, [len(c) for c in chunks])
        self.assertEqual((r.errors, len(r._partial)), (0, 0))

    def test_whole(self):
        self.assertReceived([_STREAM])

    def test_byte_by_byte(self):
        self.assertReceived([_STREAM[i:i + 1] for i in range(len(_STREAM))])

    def test_every_two_way_split(self):
        for i in range(len(_STREAM) + 1):
            self.assertReceived([_STREAM[:i], _STREAM[i:]])

    def test_every_three_way_split(self):
        stream = b"".join(netstring(p) for p in (b"ab", b"", b"cde"))
        for i in range(len(stream) + 1):
            for j in range(i, len(stream) + 1):
                self.assertReceived([stream[:i], stream[i:j], stream[j:]],
                                    [b"ab", b"", b"cde"])

    def test_big_frame_split_around_its_prefix_and_comma(self):
        big = bytes(range(256)) * 300
        stream = netstring(b"q") + netstring(big) + netstring(b"z")
        n = len(stream)
        for i in list(range(0, 16)) + list(range(n - 16, n + 1)):
            self.assertReceived([stream[:i], stream[i:]], [b"q", big, b"z"])
            self.assertReceived([stream[:i], stream[i:i + 7], stream[i + 7:]], [b"q", big, b"z"])


#: (name, stream, strings received before the refusal)
_ILLEGAL = [
    ("letters for a length", b"abc:xyz,", []),
    ("leading zero", b"01:a,", []),
    ("missing comma", b"3:abcX", []),
    ("missing comma after a held frame", b"1:a," + b"70000:" + b"x" * 70000 + b"X", [b"a"]),
    ("length over MAX_LENGTH", b"33554433:", []),
    ("prefix of 21 digits", b"9" * 21, []),
    ("garbage after a good frame", b"1:a,X:", [b"a"]),
    ("negative length", b"-1:,", []),
]


class FastNetstringIllegalTests(unittest.TestCase):
    """Bad input is refused however it is split; nothing more is read or held."""

    def assertRefused(self, name, chunks, before):
        r = _receive(chunks)
        self.assertEqual(r.strings, before, name)
        self.assertEqual(r.errors, 1, name)
        self.assertTrue(r.brokenPeer, name)
        self.assertEqual(len(r._partial), 0, name)
        self.assertTrue(r.transport.disconnecting, name)
        r.dataReceived(b"1:b,")
        self.assertEqual(r.strings, before, name)

    def test_table_whole(self):
        for name, stream, before in _ILLEGAL:
            self.assertRefused(name, [stream], before)

    def test_table_every_two_way_split(self):
        for name, stream, before in _ILLEGAL:
            cuts = range(len(stream) + 1) if len(stream) < 100 else range(0, 20)
            for i in cuts:
                self.assertRefused("%s, split at %d" % (name, i), [stream[:i], stream[i:]],
                                   before)

    def test_table_byte_by_byte(self):
        for name, stream, before in _ILLEGAL:
            if len(stream) < 100:
                self.assertRefused(name, [stream[i:i + 1] for i in range(len(stream))], before)
