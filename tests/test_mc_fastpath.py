"""
The memcached ASCII endpoint's one path (the parser cuts every complete
command out of a read, one handler per command, one write per read): runs of
``get``/``gets`` (one key or several) and ``set`` commands pipelined in one
read, mixed with other and refused commands.  Whatever the input and however
it is split into reads (at every offset, byte by byte, in random chunks), the
replies, the connection's fate and the bucket's contents are the expected
ones, and the same whether the bucket is called through ISyncBucket or
through IBucket's Deferreds (which a FaultyBucket wrapper forces).
"""

from __future__ import annotations

import random
import re

from twisted.trial import unittest

from txcb.buckets.embedded import LOCKED_CAS
from txcb.errors import NetworkError
from txcb.formats import Encoded
from txcb.interfaces import ISyncBucket
from txcb.testing import FaultyBucket

from tests.support.memcached import Harness

# A gets reply's VALUE line, its CAS apart.
_GETS_LINE = re.compile(rb"(VALUE \S+ \d+ \d+) (\d+)\r\n")

KEYS = [b"k", b"a", b"b", b"c", b"x", b"k\x10", b"big"]


def _deferred(b, clock):
    return FaultyBucket(b, clock)


def _cas(cas, base):
    cas = int(cas)
    return cas if cas == LOCKED_CAS else cas - base


def _run(chunks, sync, setup=None, max_value_size=4096):
    """
    Feed ``chunks`` to a new connection (its bucket called through ISyncBucket
    if ``sync``, else through Deferreds); return what can be observed.
    """
    h = Harness(wrap=None if sync else _deferred, max_value_size=max_value_size)
    c = h.connect()
    assert ISyncBucket.providedBy(c.p.bucket) == sync
    c.send(b"set k 7 0 3\r\nabc\r\n")
    base = h.embedded.get_sync(b"k").cas  # CAS values start from the time
    if setup is not None:
        setup(h)
    out = []
    for chunk in chunks:
        out.append(c.send(chunk))
    replies = _GETS_LINE.sub(lambda m: b"%s %d\r\n" % (m.group(1), _cas(m.group(2), base)),
                             b"".join(out))
    state = {}
    for key in KEYS:
        try:
            r = h.embedded.get_sync(key, quiet=True)
        except NetworkError:  # the bucket is closed
            break
        state[key] = (r.raw, r.flags) if r.success else None
    return replies, c.closed, state


def _splits(data, stride=1):
    """The two-way splits of ``data`` (every ``stride``-th offset, and the ends)."""
    offsets = set(range(0, len(data) + 1, stride)) | {len(data)}
    for i in sorted(offsets):
        yield [data[:i], data[i:]]


LONG_GET = b"get " + b" ".join(b"k%d" % i for i in range(1000)) + b"\r\n"

STREAMS = [
    # runs of gets and sets
    b"get k\r\nget nope\r\nset a 1 0 3\r\nxyz\r\nget a k nope a\r\ngets a\r\n"
    b"set b 0 0 2 noreply\r\nhi\r\nget b\r\ngets k b\r\n",
    b"set a 0 0 12\r\nget k\r\nabcde\r\nget a\r\n",  # a data block that looks like commands
    # gets and sets around other commands
    b"set a 0 0 1\r\n1\r\nincr a 5\r\nget a\r\ndelete a\r\nget a\r\nversion\r\n"
    b"touch k 100\r\nget k\r\nappend k 0 0 2\r\nzz\r\nget k\r\n",
    # refused input in between: runs of spaces, bad chunks, negative exptime,
    # unknown commands, NUL in keys, LF-only line ends
    b"get  k\r\nget k \r\nget k\r\nset k 0 0 1\r\nab\r\nget k\r\nset k 0 -1 1\r\nx\r\n"
    b"get k\r\nbogus\r\nget\r\ngets\r\ngetsk\r\nget k\r\n",
    b"get a\x00b\r\nget k\r\nset k\x10 0 0 1\r\nq\r\nget k\x10 k\r\nget k\nset x 0 0 1\n"
    b"z\r\nget x\nget kk\nget k\rk\r\nget k\r\r\nset k 0 0 1\r\r\nz\r\nget k\r\n",
    b"set k 0 0 1 noreply extra\r\nx\r\nset k 0 0 1 junk\r\ny\r\nget k\r\n"
    b"set k 4294967296 0 1\r\nw\r\nset k 4294967295 0 1\r\nv\r\nget k\r\n"
    b"set k 00 0 001\r\nu\r\nget k\r\nset k 0 999999999 1\r\nt\r\nget k\r\n",
    # keys and lines at and over their limits, values over the limit
    b"get " + b"k" * 251 + b"\r\nget " + b"k" * 250 + b"\r\nget " + b" ".join([b"k"] * 600)
    + b"\r\nget k\r\n",
    LONG_GET + b"get k\r\n",
    b"set k 0 0 5000\r\n" + b"x" * 5000 + b"\r\nget k\r\nset k 0 0 4096\r\n" + b"y" * 4096
    + b"\r\nget k\r\n",
    # quit stops everything pipelined behind it
    b"get k\r\nset x 0 0 1\r\n1\r\nquit\r\nget k\r\nset x 0 0 1\r\n2\r\n",
]


class SplitStreamTests(unittest.TestCase):
    """Replies and bucket state do not depend on the split nor on ISyncBucket."""

    def assertSameEverywhere(self, data, setup=None, stride=1):
        reference = _run([data], False, setup)
        # Through Deferreds, the result does not depend on the split.
        self.assertEqual(_run([data[i:i + 1] for i in range(len(data))], False, setup),
                         reference)
        # Through ISyncBucket: the same, in one read, split anywhere, bytewise,
        # in random chunks.
        self.assertEqual(_run([data], True, setup), reference, data[:60])
        for chunks in _splits(data, stride):
            self.assertEqual(_run(chunks, True, setup), reference, chunks)
        self.assertEqual(_run([data[i:i + 1] for i in range(len(data))], True, setup),
                         reference)
        rnd = random.Random(len(data))
        for _ in range(20):
            cuts = sorted(rnd.sample(range(1, len(data)), min(5, len(data) - 1)))
            chunks = [data[i:j] for i, j in zip([0] + cuts, cuts + [len(data)])]
            self.assertEqual(_run(chunks, True, setup), reference, chunks)

    def test_streams_split_everywhere(self):
        for data in STREAMS:
            self.assertSameEverywhere(data, stride=1 if len(data) < 1000 else 37)

    def test_locked_item(self):
        def lock(h):
            h.embedded.lock_sync(b"k", 5)
        self.assertSameEverywhere(
            b"get k\r\nset k 0 0 1\r\na\r\nset k 0 0 1 noreply\r\nb\r\ngets k\r\nget k a\r\n",
            lock)

    def test_closed_bucket(self):
        def close(h):
            h.embedded.close()
        self.assertSameEverywhere(
            b"get k\r\nget k a\r\ngets k\r\nset k 0 0 1\r\na\r\nset k 0 0 1 noreply\r\nb\r\n"
            b"version\r\n", close)


class OneWritePerReadTests(unittest.TestCase):
    """Each read is parsed once, its commands run in order, its replies written once."""

    def setUp(self):
        self.h = Harness(max_value_size=100000)
        self.c = self.h.connect()
        self.c.send(b"set k 7 0 3\r\nabc\r\n")
        self.parsed = []
        session = self.c.p.session
        feed = session._feed

        def counting_feed(data):
            self.parsed.append(data)
            return feed(data)
        session._feed = counting_feed
        self.writes = []
        self.c.t.write = self.writes.append
        self.c.p._direct = None

    def test_pipelined_gets_and_sets_in_one_parse_and_one_write(self):
        data = (b"get k\r\nset a 1 0 2\r\nhi\r\nget a k nope\r\ngets a\r\n"
                b"set b 0 0 1 noreply\r\nz\r\nget b\r\n")
        self.c.p.dataReceived(data)
        cas = self.h.embedded.get_sync(b"a").cas
        self.assertEqual(self.parsed, [data])
        self.assertEqual(self.writes, [
            b"VALUE k 7 3\r\nabc\r\nEND\r\nSTORED\r\nVALUE a 1 2\r\nhi\r\nVALUE k 7 3\r\n"
            b"abc\r\nEND\r\nVALUE a 1 2 %d\r\nhi\r\nEND\r\nVALUE b 0 1\r\nz\r\nEND\r\n" % cas])

    def test_mixed_commands_in_the_same_write_and_a_held_partial_set(self):
        self.c.p.dataReceived(b"get k\r\nincr n 1\r\nget k\r\nset a 0 0 5\r\nab")
        self.assertEqual(self.parsed, [b"get k\r\nincr n 1\r\nget k\r\nset a 0 0 5\r\nab"])
        self.assertEqual(self.writes, [b"VALUE k 7 3\r\nabc\r\nEND\r\nNOT_FOUND\r\n"
                                       b"VALUE k 7 3\r\nabc\r\nEND\r\n"])
        del self.writes[:]
        self.c.p.dataReceived(b"cde\r\nget a\r\n")  # the parser holds a partial set
        self.assertEqual(self.parsed[1:], [b"cde\r\nget a\r\n"])
        self.assertEqual(self.writes, [b"STORED\r\nVALUE a 0 5\r\nabcde\r\nEND\r\n"])
        del self.writes[:]
        self.c.p.dataReceived(b"get a\r\n")  # the parser is back at a command
        self.assertEqual(len(self.parsed), 3)
        self.assertEqual(self.writes, [b"VALUE a 0 5\r\nabcde\r\nEND\r\n"])

    def test_incomplete_command_is_held_by_the_parser(self):
        self.c.p.dataReceived(b"get k\r\nget k")
        self.assertEqual(self.parsed, [b"get k\r\nget k"])
        self.assertEqual(self.c.p.session.parser.buffered, 5)
        self.c.p.dataReceived(b"\r\n")
        self.assertEqual(self.writes, [b"VALUE k 7 3\r\nabc\r\nEND\r\n"] * 2)

    def test_big_replies_go_out_as_they_come_and_flow_control_stops_the_rest(self):
        c = self.c
        self.h.embedded.store_sync("upsert", b"big", Encoded(b"x" * 70000, 0))

        def write(data):
            self.writes.append(data)
            c.p.pauseProducing()  # as a full transport would
        c.t.write = write
        c.p.dataReceived(b"get big\r\nset a 0 0 1\r\n1\r\nget big\r\nget a\r\n")
        self.assertEqual(len(self.writes), 1)
        self.assertTrue(self.writes[0].startswith(b"VALUE big 0 70000\r\n"))
        self.assertEqual(c.t.producerState, "paused")
        self.assertFalse(self.h.embedded.get_sync(b"a", quiet=True).success)  # not run yet
        self.assertEqual(len(c.p._backlog), 3)
        c.t.write = self.writes.append
        c.p.resumeProducing()
        self.assertEqual(c.t.producerState, "producing")
        self.assertEqual(b"".join(self.writes[1:]),
                         b"STORED\r\nVALUE big 0 70000\r\n" + b"x" * 70000
                         + b"\r\nEND\r\nVALUE a 0 1\r\n1\r\nEND\r\n")

    def test_a_big_multi_get_reply_is_handed_over_once(self):
        self.h.embedded.store_sync("upsert", b"big", Encoded(b"x" * 70000, 0))
        self.c.p.dataReceived(b"get big k\r\nget k\r\n")
        self.assertEqual(len(self.writes), 2)
        self.assertEqual(b"".join(self.writes),
                         b"VALUE big 0 70000\r\n" + b"x" * 70000 + b"\r\nVALUE k 7 3\r\nabc\r\n"
                         b"END\r\nVALUE k 7 3\r\nabc\r\nEND\r\n")

    def test_big_replies_are_handed_over_in_chunks(self):
        self.h.embedded.store_sync("upsert", b"big", Encoded(b"x" * 70000, 0))
        self.c.p.dataReceived(b"get big\r\n" * 3)
        self.assertEqual(len(self.writes), 3)
        self.assertEqual(b"".join(self.writes),
                         (b"VALUE big 0 70000\r\n" + b"x" * 70000 + b"\r\nEND\r\n") * 3)

    def test_a_bucket_without_isyncbucket_is_served_through_deferreds(self):
        h = Harness(wrap=lambda b, clock: FaultyBucket(b, clock))
        c = h.connect()
        # No synchronous calls: everything goes through Deferreds.
        self.assertEqual(c.send(b"set k 0 0 1\r\na\r\nget k k\r\n"),
                         b"STORED\r\nVALUE k 0 1\r\na\r\nVALUE k 0 1\r\na\r\nEND\r\n")
        self.assertFalse(c.p.session.sync)
        self.assertTrue(self.c.p.session.sync)

    def test_unauthenticated_connections_answer_only_the_login(self):
        h = Harness(credentials={b"user": b"pw"})
        c = h.connect()
        self.assertEqual(c.send(b"get k\r\nset k 0 0 1\r\na\r\n"),
                         b"CLIENT_ERROR unauthenticated\r\n"
                         b"CLIENT_ERROR authentication failure\r\n")
        self.assertEqual(c.send(b"set auth 0 0 7\r\nuser pw\r\nset k 0 0 1\r\na\r\nget k\r\n"),
                         b"STORED\r\nSTORED\r\nVALUE k 0 1\r\na\r\nEND\r\n")
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 0 1\r\na\r\nEND\r\n")
