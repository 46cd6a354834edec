"""
The memcached protocol adapters (txcb.server.memcached), driven through a
StringTransport with the bucket on a task.Clock: every command of both
protocols, pipelining and split frames, reply order with a slow bucket, the
hostile inputs of memcached's own regression tests, authentication, limits
and flow control (and the netstring server's flow control, which follows the
same rule).
"""

from __future__ import annotations

import os
import socket
import time

from twisted.internet import defer, reactor
from twisted.internet.protocol import Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock, StringTransport
from twisted.python import usage
from twisted.trial import unittest

from txcb.wire import mcbinary as B
from txcb import errors
from txcb.service import tap
from txcb.wire.netstring import Op, encode_request, netstring
from txcb.buckets.embedded import LOCKED_CAS, EmbeddedBucket
from txcb.formats import FMT_JSON, Encoded
from txcb.server.memcached import (
    EXPIRED_TTL, TOO_MANY_CONNECTIONS, VERSION, MemcachedServerFactory,
    MemcachedServerProtocol, load_auth_file)
from txcb.server.netstring import BucketServerFactory
from txcb.testing import FaultyBucket

from tests.support.memcached import PEER as ADDR
from tests.support.memcached import Harness, responses

O = B.Opcode
S = B.Status
U64 = 2 ** 64 - 1


def req(opcode, key=b"", value=b"", extras=b"", opaque=0, cas=0):
    return B.encode_request(opcode, key, value, extras, opaque=opaque, cas=cas)


# -- ASCII ------------------------------------------------------------------------------

class AsciiCommandTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness()
        self.c = self.h.connect()

    def test_set_get_gets(self):
        c = self.c
        self.assertEqual(c.send(b"set k 42 0 5\r\nhello\r\n"), b"STORED\r\n")
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 42 5\r\nhello\r\nEND\r\n")
        cas = self.h.embedded.get_sync(b"k").cas
        self.assertEqual(c.send(b"gets k\r\n"),
                         b"VALUE k 42 5 %d\r\nhello\r\nEND\r\n" % cas)
        self.assertEqual(c.send(b"get nope\r\n"), b"END\r\n")

    def test_multi_get_in_order_with_misses_and_duplicates(self):
        c = self.c
        c.send(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n")
        self.assertEqual(c.send(b"get b nope a b\r\n"),
                         b"VALUE b 0 1\r\n2\r\nVALUE a 0 1\r\n1\r\nVALUE b 0 1\r\n2\r\nEND\r\n")

    def test_set_is_upsert_add_is_insert_replace_needs_the_key(self):
        c = self.c
        self.assertEqual(c.send(b"add k 0 0 1\r\na\r\n"), b"STORED\r\n")
        self.assertEqual(c.send(b"add k 0 0 1\r\nb\r\n"), b"NOT_STORED\r\n")
        self.assertEqual(c.send(b"replace nope 0 0 1\r\nb\r\n"), b"NOT_STORED\r\n")
        self.assertEqual(c.send(b"replace k 7 0 1\r\nc\r\n"), b"STORED\r\n")
        self.assertEqual(c.send(b"set k 8 0 1\r\nd\r\n"), b"STORED\r\n")
        r = self.h.embedded.get_sync(b"k")
        self.assertEqual((r.raw, r.flags), (b"d", 8))
        ops = self.h.embedded.stats_sync()
        self.assertEqual((ops["op_insert"], ops["op_replace"], ops["op_upsert"]), (2, 2, 1))

    def test_cas(self):
        c = self.c
        c.send(b"set k 0 0 1\r\na\r\n")
        cas = self.h.embedded.get_sync(b"k").cas
        self.assertEqual(c.send(b"cas k 3 0 1 %d\r\nb\r\n" % (cas + 1,)), b"EXISTS\r\n")
        self.assertEqual(c.send(b"cas k 3 0 1 %d\r\nb\r\n" % cas), b"STORED\r\n")
        self.assertEqual(c.send(b"cas k 3 0 1 %d\r\nb\r\n" % cas), b"EXISTS\r\n")
        self.assertEqual(c.send(b"cas nope 0 0 1 5\r\nb\r\n"), b"NOT_FOUND\r\n")
        self.assertEqual(self.h.embedded.get_sync(b"k").raw, b"b")

    def test_cas_unique_zero_never_stores(self):
        c = self.c
        c.send(b"set k 0 0 1\r\na\r\n")
        self.assertEqual(c.send(b"cas k 0 0 1 0\r\nb\r\n"), b"EXISTS\r\n")
        self.assertEqual(c.send(b"cas nope 0 0 1 0\r\nb\r\n"), b"NOT_FOUND\r\n")
        self.assertEqual(self.h.embedded.get_sync(b"k").raw, b"a")

    def test_append_prepend_keep_flags(self):
        c = self.c
        c.send(b"set k 99 0 5\r\nhello\r\n")
        self.assertEqual(c.send(b"append k 1 0 6\r\n world\r\n"), b"STORED\r\n")
        self.assertEqual(c.send(b"prepend k 2 0 2\r\n<<\r\n"), b"STORED\r\n")
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 99 13\r\n<<hello world\r\nEND\r\n")
        self.assertEqual(c.send(b"append nope 0 0 1\r\nx\r\n"), b"NOT_STORED\r\n")
        self.assertEqual(c.send(b"prepend nope 0 0 1\r\nx\r\n"), b"NOT_STORED\r\n")

    def test_incr_decr(self):
        c = self.c
        self.assertEqual(c.send(b"incr n 1\r\n"), b"NOT_FOUND\r\n")
        c.send(b"set n 5 0 1\r\n9\r\n")
        self.assertEqual(c.send(b"incr n 1\r\n"), b"10\r\n")
        self.assertEqual(c.send(b"decr n 3\r\n"), b"7\r\n")
        self.assertEqual(c.send(b"decr n 100\r\n"), b"0\r\n")   # floors at 0
        self.assertEqual(c.send(b"get n\r\n"), b"VALUE n 5 1\r\n0\r\nEND\r\n")
        c.send(b"set n 0 0 20\r\n18446744073709551615\r\n")
        self.assertEqual(c.send(b"incr n 2\r\n"), b"1\r\n")      # wraps at 2**64
        self.assertEqual(c.send(b"incr n 18446744073709551615\r\n"), b"0\r\n")

    def test_incr_on_non_numeric_value(self):
        c = self.c
        c.send(b"set k 0 0 3\r\nabc\r\n")
        self.assertEqual(c.send(b"incr k 1\r\n"),
                         b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        self.assertEqual(c.send(b"decr k 1\r\n"),
                         b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        self.assertEqual(self.h.embedded.get_sync(b"k").raw, b"abc")

    def test_delete(self):
        c = self.c
        c.send(b"set k 0 0 1\r\na\r\n")
        self.assertEqual(c.send(b"delete k\r\n"), b"DELETED\r\n")
        self.assertEqual(c.send(b"delete k\r\n"), b"NOT_FOUND\r\n")
        self.assertEqual(c.send(b"delete k 0\r\n"), b"NOT_FOUND\r\n")

    def test_touch_and_expiry_on_the_bucket_clock(self):
        c = self.c
        c.send(b"set k 0 10 1\r\na\r\n")
        self.assertEqual(c.send(b"touch k 100\r\n"), b"TOUCHED\r\n")
        self.assertEqual(c.send(b"touch nope 100\r\n"), b"NOT_FOUND\r\n")
        self.h.clock.advance(50)
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 0 1\r\na\r\nEND\r\n")
        self.h.clock.advance(51)
        self.assertEqual(c.send(b"get k\r\n"), b"END\r\n")

    def test_negative_exptime_means_expired(self):
        c = self.c
        self.assertEqual(c.send(b"set k 0 -1 1\r\na\r\n"), b"STORED\r\n")
        self.assertEqual(c.send(b"get k\r\n"), b"END\r\n")
        c.send(b"set k 0 0 1\r\na\r\n")
        self.assertEqual(c.send(b"touch k -1\r\n"), b"TOUCHED\r\n")
        self.assertEqual(c.send(b"get k\r\n"), b"END\r\n")
        self.assertGreater(EXPIRED_TTL, 30 * 24 * 3600)

    def test_absolute_exptime(self):
        c = self.c
        at = int(self.h.clock.seconds()) + 100
        c.send(b"set k 0 %d 1\r\na\r\n" % at)
        self.h.clock.advance(99)
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 0 1\r\na\r\nEND\r\n")
        self.h.clock.advance(2)
        self.assertEqual(c.send(b"get k\r\n"), b"END\r\n")

    def test_gat_gats(self):
        c = self.c
        c.send(b"set k 3 10 1\r\na\r\n")
        self.assertEqual(c.send(b"gat 100 k nope\r\n"), b"VALUE k 3 1\r\na\r\nEND\r\n")
        cas = self.h.embedded.get_sync(b"k").cas
        self.assertEqual(c.send(b"gats 100 k\r\n"),
                         b"VALUE k 3 1 %d\r\na\r\nEND\r\n" % (cas + 1,))
        self.h.clock.advance(50)
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 3 1\r\na\r\nEND\r\n")
        # gat 0: never expire.
        self.assertEqual(c.send(b"gat 0 k\r\n"), b"VALUE k 3 1\r\na\r\nEND\r\n")
        self.h.clock.advance(1000)
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 3 1\r\na\r\nEND\r\n")
        self.assertEqual(c.send(b"gat 0 nope\r\n"), b"END\r\n")
        self.assertEqual(c.send(b"gat 5\r\n"), b"END\r\n")

    def test_flush_all(self):
        c = self.c
        c.send(b"set a 0 0 1\r\n1\r\nset b 0 0 1\r\n2\r\n")
        self.assertEqual(c.send(b"flush_all\r\n"), b"OK\r\n")
        self.assertEqual(c.send(b"get a b\r\n"), b"END\r\n")
        self.assertEqual(self.h.embedded.stats_sync()["items"], 0)

    def test_flush_all_delayed_on_the_bucket_clock(self):
        c = self.c
        c.send(b"set a 0 0 1\r\n1\r\n")
        self.assertEqual(c.send(b"flush_all 10\r\n"), b"OK\r\n")
        self.h.clock.advance(9)
        self.assertEqual(c.send(b"get a\r\n"), b"VALUE a 0 1\r\n1\r\nEND\r\n")
        c.send(b"set b 0 0 1\r\n2\r\n")  # stored before the flush time: flushed too
        self.h.clock.advance(1)
        self.assertEqual(c.send(b"get a b\r\n"), b"END\r\n")

    def test_later_flush_all_replaces_a_pending_one(self):
        c = self.c
        c.send(b"flush_all 10\r\n")
        c.send(b"flush_all 100\r\n")
        self.h.clock.advance(20)
        c.send(b"set a 0 0 1\r\n1\r\n")
        self.h.clock.advance(20)
        self.assertEqual(c.send(b"get a\r\n"), b"VALUE a 0 1\r\n1\r\nEND\r\n")
        self.h.clock.advance(60)
        self.assertEqual(c.send(b"get a\r\n"), b"END\r\n")
        # An absolute time is read as one; a negative delay flushes now.
        c.send(b"set a 0 0 1\r\n1\r\n")
        c.send(b"flush_all %d\r\n" % (int(self.h.clock.seconds()) + 5,))
        self.h.clock.advance(5)
        self.assertEqual(c.send(b"get a\r\n"), b"END\r\n")
        c.send(b"set a 0 0 1\r\n1\r\n")
        self.assertEqual(c.send(b"flush_all -1\r\n"), b"OK\r\n")
        self.assertEqual(c.send(b"get a\r\n"), b"END\r\n")

    def test_stopping_the_factory_cancels_a_delayed_flush(self):
        self.c.send(b"flush_all 10\r\n")
        self.assertEqual(len(self.h.clock.getDelayedCalls()), 1)
        self.h.factory.stopFactory()
        self.assertEqual(self.h.clock.getDelayedCalls(), [])

    def test_version_verbosity_quit(self):
        c = self.c
        self.assertEqual(c.send(b"version\r\n"), b"VERSION %s\r\n" % VERSION.encode())
        self.assertTrue(VERSION.startswith("1.6"))
        self.assertEqual(c.send(b"verbosity 1\r\n"), b"OK\r\n")
        self.assertEqual(self.h.factory.verbosity, 1)
        self.assertEqual(c.send(b"verbosity\r\n"), b"ERROR\r\n")
        self.assertEqual(c.send(b"quit\r\nget k\r\n"), b"")
        self.assertTrue(c.closed)

    def test_stats(self):
        c = self.c
        c.send(b"set k 0 0 1\r\na\r\nget k\r\nget nope\r\n")
        out = c.send(b"stats\r\n")
        self.assertTrue(out.endswith(b"END\r\n"))
        stats = dict(line.split(b" ", 2)[1:] for line in out.splitlines()[:-1])
        for name in (b"curr_items", b"bytes", b"get_hits", b"get_misses", b"curr_connections",
                     b"total_connections", b"uptime", b"pid", b"version", b"cmd_get",
                     b"cmd_set", b"time", b"rejected_connections"):
            self.assertIn(name, stats)
        self.assertEqual(stats[b"curr_items"], b"1")
        self.assertEqual(stats[b"get_hits"], b"1")
        self.assertEqual(stats[b"get_misses"], b"1")
        self.assertEqual(stats[b"curr_connections"], b"1")
        self.assertEqual(stats[b"pid"], str(os.getpid()).encode())
        self.assertEqual(stats[b"version"], VERSION.encode())
        settings = c.send(b"stats settings\r\n")
        self.assertIn(b"STAT item_size_max 4096\r\n", settings)
        self.assertIn(b"STAT maxconns 0\r\n", settings)
        self.assertEqual(c.send(b"stats noreply\r\n"), b"ERROR\r\n")
        self.assertEqual(c.send(b"stats bogus\r\n"), b"ERROR\r\n")

    def test_noreply_everywhere(self):
        c = self.c
        cmds = [b"set k 1 0 1 noreply\r\n1\r\n", b"add k 0 0 1 noreply\r\n1\r\n",
                b"add j 0 0 1 noreply\r\n1\r\n", b"replace k 2 0 1 noreply\r\n2\r\n",
                b"replace nope 0 0 1 noreply\r\n2\r\n", b"append k 0 0 1 noreply\r\n3\r\n",
                b"prepend k 0 0 1 noreply\r\n4\r\n", b"append nope 0 0 1 noreply\r\n3\r\n",
                b"cas k 0 0 1 1 noreply\r\n5\r\n", b"cas nope 0 0 1 1 noreply\r\n5\r\n",
                b"incr k 1 noreply\r\n", b"decr k 1 noreply\r\n", b"incr nope 1 noreply\r\n",
                b"incr j 1 noreply\r\n", b"touch k 10 noreply\r\n",
                b"touch nope 10 noreply\r\n", b"delete j noreply\r\n",
                b"delete nope noreply\r\n", b"verbosity 1 noreply\r\n",
                b"set big 0 0 5000 noreply\r\n" + b"x" * 5000 + b"\r\n"]
        for cmd in cmds:
            self.assertEqual(c.send(cmd), b"", cmd)
        self.assertEqual(c.send(b"get k j\r\n"), b"VALUE k 2 3\r\n423\r\nEND\r\n")
        self.assertEqual(c.send(b"flush_all noreply\r\n"), b"")
        self.assertEqual(c.send(b"get k\r\n"), b"END\r\n")
        cas = self.h.embedded.store_sync("upsert", b"k", b"v").cas
        self.assertEqual(c.send(b"cas k 0 0 1 %d noreply\r\nw\r\n" % cas), b"")
        self.assertEqual(self.h.embedded.get_sync(b"k").raw, b"w")

    def test_too_big_value(self):
        c = self.c
        # Over the bucket's limit: refused by the parser, data swallowed.
        self.assertEqual(c.send(b"set k 0 0 5000\r\n" + b"x" * 5000 + b"\r\nget k\r\n"),
                         b"SERVER_ERROR object too large for cache\r\nEND\r\n")
        # Growing over it by append: refused by the bucket.
        c.send(b"set k 0 0 4000\r\n" + b"x" * 4000 + b"\r\n")
        self.assertEqual(c.send(b"append k 0 0 200\r\n" + b"y" * 200 + b"\r\n"),
                         b"SERVER_ERROR object too large for cache\r\n")

    def test_keys_with_control_characters_are_accepted_as_memcached_does(self):
        # memcaslap's keys start with bytes such as 0x10.
        key = b"\x10\x10\x01key\x7f"
        c = self.c
        self.assertEqual(c.send(b"set " + key + b" 0 0 1\r\na\r\n"), b"STORED\r\n")
        self.assertEqual(c.send(b"get " + key + b"\r\n"),
                         b"VALUE " + key + b" 0 1\r\na\r\nEND\r\n")
        self.assertEqual(c.send(b"get a\x00b\r\n"), b"CLIENT_ERROR bad command line format\r\n")

    def test_locked_item(self):
        c = self.c
        c.send(b"set k 0 0 1\r\na\r\n")
        lock = self.h.embedded.lock_sync(b"k", 10)
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 0 1\r\na\r\nEND\r\n")
        self.assertEqual(c.send(b"gets k\r\n"), b"VALUE k 0 1 %d\r\na\r\nEND\r\n" % LOCKED_CAS)
        self.assertTrue(c.send(b"set k 0 0 1\r\nb\r\n").startswith(b"SERVER_ERROR "))
        self.assertTrue(c.send(b"delete k\r\n").startswith(b"SERVER_ERROR "))
        self.assertEqual(c.send(b"gat 10 k\r\n"), b"END\r\n")
        self.assertEqual(c.send(b"cas k 0 0 1 %d\r\nc\r\n" % lock.cas), b"STORED\r\n")
        self.assertEqual(c.send(b"get k\r\n"), b"VALUE k 0 1\r\nc\r\nEND\r\n")

    def test_flags_are_the_items_flags(self):
        # Written through memcached, read through the bucket (as netstrings
        # would), and the other way round.
        c = self.c
        c.send(b"set k 4294967295 0 2\r\nhi\r\n")
        r = self.h.embedded.get_sync(b"k")
        self.assertEqual((r.raw, r.flags), (b"hi", 0xFFFFFFFF))
        self.h.embedded.store_sync("upsert", b"j", Encoded(b"yo", 0xDEADBEEF))
        self.assertEqual(c.send(b"get j\r\n"), b"VALUE j 3735928559 2\r\nyo\r\nEND\r\n")
        self.h.embedded.store_sync("upsert", b"doc", {"a": 1})
        self.assertEqual(c.send(b"get doc\r\n"),
                         b"VALUE doc %d 7\r\n{\"a\":1}\r\nEND\r\n" % FMT_JSON)


class AsciiStreamTests(unittest.TestCase):
    """Pipelining, split frames, reply order and flow control."""

    STREAM = (b"set a 1 0 3\r\nabc\r\nget a\r\nincr a 1\r\nset n 0 0 1\r\n5\r\n"
              b"incr n 10\r\nappend a 0 0 2\r\nxy\r\ngets nope\r\ndelete n\r\n"
              b"get a n\r\nversion\r\nbogus\r\n")
    EXPECTED = (b"STORED\r\nVALUE a 1 3\r\nabc\r\nEND\r\n"
                b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
                b"STORED\r\n15\r\nSTORED\r\nEND\r\nDELETED\r\n"
                b"VALUE a 1 5\r\nabcxy\r\nEND\r\nVERSION %s\r\nERROR\r\n" % VERSION.encode())

    def test_pipelined_in_one_chunk(self):
        c = Harness().connect()
        self.assertEqual(c.send(self.STREAM), self.EXPECTED)

    def test_split_byte_by_byte(self):
        c = Harness().connect()
        self.assertEqual(c.send_bytewise(self.STREAM), self.EXPECTED)

    def test_one_write_per_chunk(self):
        c = Harness().connect()
        writes = []
        c.t.write = writes.append
        c.p._direct = None
        c.p.dataReceived(self.STREAM)
        self.assertEqual(writes, [self.EXPECTED])

    def test_replies_stay_in_request_order_with_a_slow_bucket(self):
        h = Harness(wrap=lambda b, clock: FaultyBucket(b, clock))
        h.bucket.delay("get", 2)
        h.bucket.delay("upsert", 1)
        c = h.connect()
        out = c.send(b"set a 0 0 1\r\n1\r\nget a\r\nset b 0 0 1\r\n2\r\nversion\r\n")
        self.assertEqual(out, b"")  # the first reply is not ready: nothing may pass it
        h.clock.advance(1)           # both sets done, the get still pending
        self.assertEqual(c.take(), b"STORED\r\n")
        h.clock.advance(1)
        self.assertEqual(c.take(), b"VALUE a 0 1\r\n1\r\nEND\r\nSTORED\r\nVERSION %s\r\n"
                         % VERSION.encode())

    def test_quit_waits_for_pending_replies(self):
        h = Harness(wrap=lambda b, clock: FaultyBucket(b, clock))
        h.bucket.delay("get", 1)
        c = h.connect()
        self.assertEqual(c.send(b"get a\r\nquit\r\nget b\r\n"), b"")
        self.assertFalse(c.closed)
        h.clock.advance(1)
        self.assertEqual(c.take(), b"END\r\n")
        self.assertTrue(c.closed)

    def test_max_inflight_stops_reading_until_replies_go_out(self):
        h = Harness(max_inflight=2, wrap=lambda b, clock: FaultyBucket(b, clock))
        h.bucket.delay("get", 1)
        c = h.connect()
        self.assertEqual(c.send(b"get a\r\nget b\r\nget c\r\nversion\r\n"), b"")
        self.assertEqual(c.t.producerState, "paused")
        self.assertEqual(len(h.bucket.calls), 2)  # get c is held, not started
        h.clock.advance(1)
        self.assertEqual(c.take(), b"END\r\nEND\r\n")
        self.assertEqual(len(h.bucket.calls), 3)
        h.clock.advance(1)
        self.assertEqual(c.take(), b"END\r\nVERSION %s\r\n" % VERSION.encode())
        self.assertEqual(c.t.producerState, "producing")

    def test_output_backed_up_stops_reading_and_running_commands(self):
        # The transport calls pauseProducing when its write buffer is full:
        # nothing more runs and nothing more is read until it drains.
        h = Harness()
        c = h.connect()
        self.assertIs(c.t.producer, c.p)
        self.assertTrue(c.t.streaming)
        c.send(b"set a 0 0 1\r\n1\r\n")
        c.p.pauseProducing()
        self.assertEqual(c.send(b"get a\r\nset a 0 0 1\r\n2\r\nget a\r\n"), b"")
        self.assertEqual(c.t.producerState, "paused")
        self.assertEqual(h.embedded.get_sync(b"a").raw, b"1")  # the set has not run
        c.p.resumeProducing()
        self.assertEqual(c.take(), b"VALUE a 0 1\r\n1\r\nEND\r\nSTORED\r\n"
                                   b"VALUE a 0 1\r\n2\r\nEND\r\n")
        self.assertEqual(c.t.producerState, "producing")

    def test_big_replies_are_handed_over_as_they_come(self):
        # Replies are given to the transport once 64 KiB are pending, so that
        # its flow control can stop the rest of a pipelined batch.
        h = Harness(max_value_size=100000)
        c = h.connect()
        c.send(b"set big 0 0 100000\r\n" + b"x" * 100000 + b"\r\n")
        writes = []

        def write(data):
            writes.append(len(data))
            c.p.pauseProducing()  # as a full transport would
        c.t.write = write
        c.p._direct = None
        c.p.dataReceived(b"get big\r\n" * 10)
        self.assertEqual(len(writes), 1)
        self.assertGreater(writes[0], 100000)
        self.assertEqual(len(c.p._backlog), 9)
        self.assertEqual(c.t.producerState, "paused")

    def test_connection_counts(self):
        h = Harness()
        c1, c2 = h.connect(), h.connect()
        self.assertEqual((h.stats.connections, h.stats.total_connections), (2, 2))
        c1.p.connectionLost(None)
        c2.p.connectionLost(None)
        self.assertEqual((h.stats.connections, h.stats.total_connections), (0, 2))


class SyncAndDeferredBucketsAgreeTests(unittest.TestCase):
    """
    ``get``/``set`` (ASCII) or a GET/SET frame, odd or refused ones included,
    get exactly the same reply whether the bucket provides ISyncBucket (its
    synchronous calls are used) or not (its Deferreds are).  (Pipelined runs,
    split at every offset: tests/test_mc_fastpath.py.)
    """

    ASCII = [b"get k\r\n", b"get nope\r\n", b"get  k\r\n", b"get k \r\n", b"get k\n",
             b"get \x10k\r\n", b"get k\x00\r\n", b"get k\rx\r\n", b"get " + b"k" * 251 + b"\r\n",
             b"get " + b"k" * 250 + b"\r\n", b"get k j\r\n", b"get \r\n", b"get k\r\nget k\r\n",
             b"set k 1 0 1\r\na\r\n", b"set k 0 0 1 noreply\r\na\r\n",
             b"set k 4294967295 0 1\r\na\r\n", b"set k 4294967296 0 1\r\na\r\n",
             b"set k 0 -1 1\r\na\r\n", b"set k 0 0 2\r\na\r\n", b"set k 0 0 1\r\nab\r\n",
             b"set k 00 0 001\r\na\r\n", b"set k 0 0 1 junk\r\na\r\n",
             b"set k 0 0 1\r\na", b"set k  0 0 1\r\na\r\n", b"set k 0 0 4097\r\n" + b"x" * 4097
             + b"\r\n", b"set k 0 0 4096\r\n" + b"x" * 4096 + b"\r\n",
             b"set \x10k 0 0 1\r\na\r\n", b"set k\x00 0 0 1\r\na\r\n",
             b"set k 0 999999999 1\r\na\r\n", b"set k 0 0 1\r\na\r\nget k\r\n"]

    def ascii_reply(self, data, fast):
        wrap = None if fast else (lambda b, clock: FaultyBucket(b, clock))
        h = Harness(wrap=wrap)
        c = h.connect()
        c.send(b"set k 7 0 3\r\nabc\r\n")
        return c.send(data), c.closed, h.embedded.get_sync(b"k", quiet=True).raw

    def test_ascii(self):
        for data in self.ASCII:
            self.assertEqual(self.ascii_reply(data, True), self.ascii_reply(data, False), data)

    def test_ascii_locked_item(self):
        for fast in (True, False):
            h = Harness(wrap=None if fast else (lambda b, clock: FaultyBucket(b, clock)))
            c = h.connect()
            h.embedded.store_sync("upsert", b"k", b"v")
            h.embedded.lock_sync(b"k", 5)
            self.assertEqual(c.send(b"set k 0 0 1\r\na\r\n"),
                             b"SERVER_ERROR the key is locked\r\n")

    def frames(self):
        store = B.store_extras(3, 0)
        yield req(O.GET, b"k", opaque=1)
        yield req(O.GETK, b"k", opaque=2)
        yield req(O.GETQ, b"nope", opaque=3)
        yield req(O.GETKQ, b"nope", opaque=3)
        yield req(O.GET, b"nope", opaque=4)
        yield req(O.GETK, b"nope", opaque=4)
        yield req(O.GET, b"k", b"v", opaque=5)
        yield req(O.GET, b"k", extras=b"\0\0\0\0", opaque=6)
        yield req(O.GET, b"k" * 251, opaque=7)
        yield req(O.SET, b"k", b"v", store, opaque=8)
        yield req(O.SETQ, b"k", b"v", store, opaque=9)
        yield req(O.SET, b"k", b"v", store, opaque=10, cas=12345)
        yield req(O.SET, b"k", b"v", b"\0" * 4, opaque=11)
        yield req(O.SET, b"k", b"x" * 4097, store, opaque=12)
        yield req(O.SET, b"k", b"x" * 5000, store, opaque=13)
        yield req(O.SET, b"", b"v", store, opaque=14)
        yield req(O.SET, b"k", b"v", store, opaque=15) + req(O.NOOP, opaque=16)
        yield req(O.SET, b"k", b"v", store, opaque=17)[:-1]

    def binary_reply(self, data, fast):
        wrap = None if fast else (lambda b, clock: FaultyBucket(b, clock))
        h = Harness(wrap=wrap)
        h.factory.max_body = 4300
        c = h.connect()
        c.send(req(O.SET, b"k", b"abc", B.store_extras(7, 0)))
        rs = responses(c.send(data))
        shape = [(r.opcode, r.status, r.opaque, r.key, r.value, r.extras, bool(r.cas))
                 for r in rs]
        return shape, c.closed, h.embedded.get_sync(b"k", quiet=True).raw

    def test_binary(self):
        for data in self.frames():
            self.assertEqual(self.binary_reply(data, True), self.binary_reply(data, False),
                             data[:40])


class _RecordingObserver:
    def __init__(self):
        self.seen = []

    def request_done(self, op, status, started):
        self.seen.append((op, status, type(started)))


class RequestObserverTests(unittest.TestCase):
    """The factory's observer is told of every answered request, both protocols."""

    def observed(self, wrap=None):
        h = Harness(wrap=wrap)
        h.factory.observer = observer = _RecordingObserver()
        return h, observer

    def check_ascii(self, wrap):
        h, observer = self.observed(wrap)
        c = h.connect()
        c.send(b"set k 0 0 1\r\na\r\nget k\r\nget nope\r\nget k nope\r\nadd k 0 0 1\r\nb\r\n"
               b"delete nope\r\nincr k 1\r\ntouch k 10\r\nappend k 0 0 1\r\nc\r\n")
        self.assertEqual(observer.seen, [
            ("upsert", 0, float), ("get", 0, float), ("get", errors.RC.KEY_ENOENT, float),
            ("get", errors.RC.KEY_ENOENT, float), ("insert", errors.RC.KEY_EEXISTS, float),
            ("remove", errors.RC.KEY_ENOENT, float),
            ("counter", errors.RC.DELTA_BADVAL, float), ("touch", 0, float),
            ("append", 0, float)])

    def test_ascii_sync_bucket(self):
        self.check_ascii(None)

    def test_ascii_deferred_bucket(self):
        self.check_ascii(lambda b, clock: FaultyBucket(b, clock))

    def test_binary(self):
        h, observer = self.observed()
        c = h.connect()
        c.send(req(O.SET, b"k", b"v", B.store_extras(0, 0)) + req(O.GET, b"k")
               + req(O.GETQ, b"nope") + req(O.DELETE, b"k") + req(O.NOOP))
        self.assertEqual(observer.seen, [
            ("upsert", 0, float), ("get", 0, float), ("get", errors.RC.KEY_ENOENT, float),
            ("remove", 0, float)])

    def test_no_observer_no_calls(self):
        h = Harness()
        self.assertIsNone(h.factory.observer)
        c = h.connect()
        self.assertEqual(c.send(b"set k 0 0 1\r\na\r\nget k\r\n"),
                         b"STORED\r\nVALUE k 0 1\r\na\r\nEND\r\n")


class AsciiHostileInputTests(unittest.TestCase):
    """memcached's own regression cases (t/issue_*.t, malicious-commands.t)."""

    def setUp(self):
        self.h = Harness()
        self.c = self.h.connect()

    def test_ascii_line_over_2048_bytes_without_newline_closes(self):
        self.assertEqual(self.c.send(b"set " + b"k" * 3000), b"")
        self.assertTrue(self.c.closed)
        self.assertLess(self.c.p.session.parser.buffered, 2100)

    def test_get_followed_by_thousands_of_spaces(self):
        c = self.c
        self.assertEqual(c.send(b"get" + b" " * 5000 + b"\r\n"), b"ERROR\r\n")
        self.assertEqual(c.send(b"get" + b" " * 5000 + b"k\r\n"), b"END\r\n")
        self.assertFalse(c.closed)
        self.assertEqual(c.send(b"version\r\n"), b"VERSION %s\r\n" % VERSION.encode())

    def test_negative_length(self):
        c = self.c
        self.assertEqual(c.send(b"set k 0 0 -1\r\n"),
                         b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(c.send(b"version\r\n"), b"VERSION %s\r\n" % VERSION.encode())

    def test_huge_length(self):
        c = self.c
        self.assertEqual(c.send(b"set k 0 0 4294967295\r\n"),
                         b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(c.send(b"set k 0 0 2147483600\r\n"),
                         b"SERVER_ERROR object too large for cache\r\n")
        self.assertFalse(c.closed)
        self.assertEqual(self.c.p.session.parser.buffered, 0)

    def test_set_k_0_0_2147483646(self):
        # Issue 12 item 9.  memcached 1.6.18, checked live: a length up to
        # INT_MAX - 2 over the item limit is SERVER_ERROR object too large and
        # its data is swallowed; 2147483646 and up are CLIENT_ERROR bad command
        # line format, the data then read as commands.  So here.
        c = self.c
        self.assertEqual(c.send(b"set k 0 0 2147483646\r\nab\r\n"),
                         b"CLIENT_ERROR bad command line format\r\nERROR\r\n")
        self.assertEqual(c.send(b"set k 0 0 2147483645\r\n"),
                         b"SERVER_ERROR object too large for cache\r\n")
        self.assertEqual(c.send(b"version\r\n" + b"x" * 100000), b"")
        self.assertEqual(self.c.p.session.parser.buffered, 0)
        self.assertFalse(c.closed)

    def test_key_over_250_bytes(self):
        c = self.c
        key = b"k" * 251
        self.assertEqual(c.send(b"get " + key + b"\r\n"),
                         b"CLIENT_ERROR bad command line format\r\n")
        self.assertEqual(c.send(b"set " + key + b" 0 0 1\r\na\r\nversion\r\n"),
                         b"CLIENT_ERROR bad command line format\r\nVERSION %s\r\n"
                         % VERSION.encode())
        self.assertEqual(c.send(b"get " + b"k" * 250 + b"\r\n"), b"END\r\n")

    def test_http_request_line_closes(self):
        self.assertEqual(self.c.send(b"GET / HTTP/1.0\r\n\r\n"), b"")
        self.assertTrue(self.c.closed)

    def test_binary_after_ascii_is_just_a_bad_line(self):
        out = self.c.send(b"version\r\n" + req(O.NOOP) + b"\r\n")
        self.assertTrue(out.startswith(b"VERSION "))


# -- binary -----------------------------------------------------------------------------

class BinaryCommandTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness()
        self.c = self.h.connect()

    def set(self, key, value, flags=0, exptime=0, cas=0, opcode=O.SET, opaque=0):
        return self.c.request(opcode, key, value, B.store_extras(flags, exptime),
                              opaque=opaque, cas=cas)

    def assertStatus(self, rs, status, opcode=None, opaque=0):
        self.assertEqual(len(rs), 1, rs)
        self.assertEqual(rs[0].status, status, rs[0])
        self.assertEqual(rs[0].opaque, opaque)
        if opcode is not None:
            self.assertEqual(rs[0].opcode, opcode)
        if status:
            # memcached's error responses: no extras, no CAS.
            self.assertEqual((rs[0].extras, rs[0].cas), (b"", 0))
        return rs[0]

    def test_get_family(self):
        self.set(b"k", b"v", flags=7)
        cas = self.h.embedded.get_sync(b"k").cas
        r = self.assertStatus(self.c.request(O.GET, b"k", opaque=1), 0, O.GET, 1)
        self.assertEqual((r.extras, r.key, r.value, r.cas), (B.get_response_extras(7), b"",
                                                             b"v", cas))
        r = self.assertStatus(self.c.request(O.GETK, b"k", opaque=2), 0, O.GETK, 2)
        self.assertEqual((r.key, r.value), (b"k", b"v"))
        r = self.assertStatus(self.c.request(O.GET, b"nope", opaque=3), S.KEY_ENOENT, O.GET, 3)
        self.assertEqual((r.key, r.value), (b"", b"Not found"))
        r = self.assertStatus(self.c.request(O.GETK, b"nope", opaque=4), S.KEY_ENOENT,
                              O.GETK, 4)
        self.assertEqual(r.key, b"nope")

    def test_quiet_gets_and_noop_batching(self):
        self.set(b"a", b"1")
        self.set(b"c", b"3")
        out = self.c.send(req(O.GETQ, b"a", opaque=1) + req(O.GETKQ, b"b", opaque=2)
                          + req(O.GETKQ, b"c", opaque=3) + req(O.GETQ, b"d", opaque=4)
                          + req(O.NOOP, opaque=5))
        rs = responses(out)
        self.assertEqual([(r.opcode, r.opaque, r.key, r.value) for r in rs],
                         [(O.GETQ, 1, b"", b"1"), (O.GETKQ, 3, b"c", b"3"),
                          (O.NOOP, 5, b"", b"")])

    def test_set_add_replace_and_cas(self):
        r = self.assertStatus(self.set(b"k", b"v1", opaque=9), 0, O.SET, 9)
        self.assertNotEqual(r.cas, 0)
        self.assertEqual((r.extras, r.key, r.value), (b"", b"", b""))
        self.assertStatus(self.set(b"k", b"v2", cas=r.cas - 1), S.KEY_EEXISTS)
        r2 = self.assertStatus(self.set(b"k", b"v2", cas=r.cas), 0)
        self.assertStatus(self.set(b"nope", b"v", cas=5), S.KEY_ENOENT)
        self.assertStatus(self.set(b"k", b"x", opcode=O.ADD), S.KEY_EEXISTS)
        self.assertStatus(self.set(b"new", b"x", opcode=O.ADD), 0)
        self.assertStatus(self.set(b"new", b"x", opcode=O.ADD, cas=1), S.EINVAL)
        self.assertStatus(self.set(b"nope", b"x", opcode=O.REPLACE), S.KEY_ENOENT)
        self.assertStatus(self.set(b"k", b"x", opcode=O.REPLACE, cas=r.cas), S.KEY_EEXISTS)
        self.assertStatus(self.set(b"k", b"v3", flags=5, opcode=O.REPLACE, cas=r2.cas), 0)
        g = self.h.embedded.get_sync(b"k")
        self.assertEqual((g.raw, g.flags), (b"v3", 5))

    def test_quiet_mutations_answer_only_errors(self):
        out = self.c.send(
            req(O.SETQ, b"a", b"1", B.store_extras(0, 0), opaque=1)
            + req(O.ADDQ, b"a", b"2", B.store_extras(0, 0), opaque=2)
            + req(O.REPLACEQ, b"a", b"3", B.store_extras(0, 0), opaque=3)
            + req(O.REPLACEQ, b"zz", b"3", B.store_extras(0, 0), opaque=4)
            + req(O.APPENDQ, b"a", b"x", opaque=5) + req(O.PREPENDQ, b"zz", b"4", opaque=6)
            + req(O.INCREMENTQ, b"n", extras=B.counter_extras(1, 5, 0), opaque=7)
            + req(O.DECREMENTQ, b"a", extras=B.counter_extras(1, 0, 0), opaque=8)
            + req(O.DELETEQ, b"n", opaque=9) + req(O.DELETEQ, b"n", opaque=10)
            + req(O.NOOP, opaque=11))
        rs = responses(out)
        self.assertEqual([(r.opaque, r.status) for r in rs],
                         [(2, S.KEY_EEXISTS), (4, S.KEY_ENOENT), (6, S.NOT_STORED),
                          (8, S.DELTA_BADVAL), (10, S.KEY_ENOENT), (11, 0)])
        self.assertEqual(self.h.embedded.get_sync(b"a").raw, b"3x")

    def test_delete(self):
        r = self.set(b"k", b"v")[0]
        self.assertStatus(self.c.request(O.DELETE, b"k", cas=r.cas + 1), S.KEY_EEXISTS)
        d = self.assertStatus(self.c.request(O.DELETE, b"k", cas=r.cas), 0, O.DELETE)
        self.assertEqual(d.cas, 0)   # as memcached (and memcapable) expect
        self.assertStatus(self.c.request(O.DELETE, b"k"), S.KEY_ENOENT)

    def test_increment_decrement(self):
        def counter(op, key, delta, initial=0, exptime=0, **kw):
            return self.c.request(op, key, extras=B.counter_extras(delta, initial, exptime),
                                  **kw)
        r = self.assertStatus(counter(O.INCREMENT, b"n", 1, 10), 0, O.INCREMENT)
        self.assertEqual(B.parse_counter_value(r.value), 10)   # created with initial
        self.assertNotEqual(r.cas, 0)
        r = self.assertStatus(counter(O.INCREMENT, b"n", 5, 10), 0)
        self.assertEqual(B.parse_counter_value(r.value), 15)
        r = self.assertStatus(counter(O.DECREMENT, b"n", 100), 0, O.DECREMENT)
        self.assertEqual(B.parse_counter_value(r.value), 0)    # floors at 0
        self.set(b"n", b"18446744073709551615")
        r = self.assertStatus(counter(O.INCREMENT, b"n", 2), 0)
        self.assertEqual(B.parse_counter_value(r.value), 1)    # wraps at 2**64
        # exptime 0xffffffff: do not create.
        self.assertStatus(counter(O.INCREMENT, b"m", 1, 5, B.COUNTER_NO_CREATE),
                          S.KEY_ENOENT)
        self.assertStatus(counter(O.DECREMENT, b"m", 1, 5, B.COUNTER_NO_CREATE),
                          S.KEY_ENOENT)
        self.set(b"s", b"abc")
        self.assertStatus(counter(O.INCREMENT, b"s", 1), S.DELTA_BADVAL)
        self.assertStatus(counter(O.INCREMENT, b"n", 1, cas=5), S.NOT_SUPPORTED)

    def test_counter_created_with_ttl(self):
        self.c.request(O.INCREMENT, b"n", extras=B.counter_extras(1, 7, 10))
        self.h.clock.advance(11)
        self.assertStatus(self.c.request(O.GET, b"n"), S.KEY_ENOENT)

    def test_append_prepend(self):
        self.set(b"k", b"hello", flags=3)
        r = self.assertStatus(self.c.request(O.APPEND, b"k", b" world"), 0, O.APPEND)
        self.assertNotEqual(r.cas, 0)
        self.assertStatus(self.c.request(O.PREPEND, b"k", b">", cas=r.cas + 1), S.KEY_EEXISTS)
        self.assertStatus(self.c.request(O.PREPEND, b"k", b">", cas=r.cas), 0, O.PREPEND)
        g = self.h.embedded.get_sync(b"k")
        self.assertEqual((g.raw, g.flags), (b">hello world", 3))
        self.assertStatus(self.c.request(O.APPEND, b"nope", b"x"), S.NOT_STORED)

    def test_touch_gat_gatq(self):
        self.set(b"k", b"v", flags=2, exptime=10)
        r = self.assertStatus(self.c.request(O.TOUCH, b"k", extras=B.touch_extras(100)), 0,
                              O.TOUCH)
        self.assertNotEqual(r.cas, 0)
        self.assertStatus(self.c.request(O.TOUCH, b"nope", extras=B.touch_extras(1)),
                          S.KEY_ENOENT)
        self.h.clock.advance(50)
        r = self.assertStatus(self.c.request(O.GAT, b"k", extras=B.touch_extras(100)), 0,
                              O.GAT)
        self.assertEqual((r.extras, r.value), (B.get_response_extras(2), b"v"))
        r = self.assertStatus(self.c.request(O.GATK, b"k", extras=B.touch_extras(100)), 0)
        self.assertEqual(r.key, b"k")
        self.h.clock.advance(90)
        self.assertStatus(self.c.request(O.GET, b"k"), 0)
        self.assertEqual(self.c.send(req(O.GATQ, b"nope", extras=B.touch_extras(5))
                                     + req(O.NOOP, opaque=3)),
                         B.encode_response(O.NOOP, opaque=3))
        self.assertStatus(self.c.request(O.GAT, b"k", extras=B.touch_extras(0)), 0)
        self.h.clock.advance(10000)
        self.assertStatus(self.c.request(O.GET, b"k"), 0)   # exptime 0: never expires

    def test_noop_version_verbosity(self):
        self.assertStatus(self.c.request(O.NOOP, opaque=1), 0, O.NOOP, 1)
        r = self.assertStatus(self.c.request(O.VERSION, opaque=2), 0, O.VERSION, 2)
        self.assertEqual(r.value, VERSION.encode())
        self.assertStatus(self.c.request(O.VERBOSITY, extras=B.verbosity_extras(2)), 0)
        self.assertEqual(self.h.factory.verbosity, 2)

    def test_stat(self):
        self.set(b"k", b"v")
        rs = self.c.request(O.STAT, opaque=7)
        self.assertEqual(rs[-1].key, b"")
        self.assertTrue(all(r.opaque == 7 and r.status == 0 and r.cas == 0 for r in rs))
        stats = {r.key: r.value for r in rs[:-1]}
        self.assertEqual(stats[b"curr_items"], b"1")
        self.assertEqual(stats[b"version"], VERSION.encode())
        self.assertIn(b"get_misses", stats)
        rs = self.c.request(O.STAT, b"settings")
        self.assertIn(b"item_size_max", [r.key for r in rs])
        self.assertStatus(self.c.request(O.STAT, b"bogus"), S.KEY_ENOENT)

    def test_flush_and_flushq(self):
        self.set(b"k", b"v")
        self.assertStatus(self.c.request(O.FLUSH), 0, O.FLUSH)
        self.assertStatus(self.c.request(O.GET, b"k"), S.KEY_ENOENT)
        self.set(b"k", b"v")
        self.assertEqual(self.c.send(req(O.FLUSHQ) + req(O.NOOP)), B.encode_response(O.NOOP))
        self.assertStatus(self.c.request(O.GET, b"k"), S.KEY_ENOENT)

    def test_flush_with_a_delay(self):
        self.set(b"k", b"v")
        self.assertStatus(self.c.request(O.FLUSH, extras=B.flush_extras(5)), 0)
        self.assertStatus(self.c.request(O.GET, b"k"), 0)
        self.h.clock.advance(5)
        self.assertStatus(self.c.request(O.GET, b"k"), S.KEY_ENOENT)

    def test_quit_and_quitq(self):
        self.assertStatus(self.c.request(O.QUIT, opaque=4), 0, O.QUIT, 4)
        self.assertTrue(self.c.closed)
        c = self.h.connect()
        self.assertEqual(c.send(req(O.QUITQ) + req(O.NOOP)), b"")
        self.assertTrue(c.closed)

    def test_get_locked_and_unlock_key(self):
        self.set(b"k", b"v", flags=4)
        r = self.assertStatus(self.c.request(O.GET_LOCKED, b"k",
                                             extras=B.get_locked_extras(5)), 0, O.GET_LOCKED)
        self.assertEqual((r.extras, r.value), (B.get_response_extras(4), b"v"))
        lock_cas = r.cas
        self.assertStatus(self.c.request(O.GET_LOCKED, b"k"), S.ETMPFAIL)
        self.assertStatus(self.set(b"k", b"w"), S.ETMPFAIL)
        g = self.assertStatus(self.c.request(O.GET, b"k"), 0)
        self.assertEqual(g.cas, LOCKED_CAS)
        self.assertStatus(self.c.request(O.UNLOCK_KEY, b"k", cas=lock_cas + 1), S.ETMPFAIL)
        self.assertStatus(self.c.request(O.UNLOCK_KEY, b"k", cas=lock_cas), 0, O.UNLOCK_KEY)
        self.assertStatus(self.set(b"k", b"w"), 0)
        self.assertStatus(self.c.request(O.GET_LOCKED, b"nope"), S.KEY_ENOENT)
        self.assertStatus(self.c.request(O.GET_LOCKED, b"k", extras=B.get_locked_extras(99)),
                          S.EINVAL)
        # Lock time 0 (or none): the default; it expires on the bucket's clock.
        self.assertStatus(self.c.request(O.GET_LOCKED, b"k"), 0)
        self.h.clock.advance(15)
        self.assertStatus(self.set(b"k", b"x"), 0)
        self.assertStatus(self.c.request(O.UNLOCK_KEY, b"k"), S.EINVAL)  # needs a CAS

    def test_split_frames_give_the_same_replies(self):
        stream = (req(O.GETK, b"a", opaque=2) + req(O.GETQ, b"b", opaque=3)
                  + req(O.SET, b"a", b"1", B.store_extras(1, 0), opaque=1)
                  + req(O.GETK, b"a", opaque=2) + req(O.NOOP, opaque=5))
        whole = responses(self.c.send(stream))
        c2 = Harness().connect()
        split = responses(c2.send_bytewise(stream))
        shape = lambda rs: [(r.opcode, r.status, r.opaque, r.key, r.value) for r in rs]  # noqa
        self.assertEqual(shape(split), shape(whole))
        self.assertEqual([r.opaque for r in whole], [2, 1, 2, 5])

    def test_replies_stay_in_request_order_with_a_slow_bucket(self):
        h = Harness(wrap=lambda b, clock: FaultyBucket(b, clock))
        h.bucket.delay("upsert", 2)
        c = h.connect()
        out = c.send(req(O.SET, b"a", b"1", B.store_extras(0, 0), opaque=1)
                     + req(O.GETK, b"b", opaque=2) + req(O.NOOP, opaque=3))
        self.assertEqual(out, b"")
        h.clock.advance(2)
        self.assertEqual([r.opaque for r in responses(c.take())], [1, 2, 3])

    def test_unknown_opcode(self):
        r = self.assertStatus(self.c.request(0x77, opaque=8), S.UNKNOWN_COMMAND, 0x77, 8)
        self.assertEqual(r.value, b"Unknown command")
        self.assertStatus(self.c.request(O.NOOP), 0)

    def test_bucket_errors_map_to_statuses(self):
        h = Harness(wrap=lambda b, clock: FaultyBucket(b, clock))
        c = h.connect()
        h.bucket.fail("get", errors.TemporaryFailError("busy"))
        h.bucket.fail("upsert", errors.NetworkError("remote bucket gone"))
        h.bucket.fail("remove", RuntimeError("bug"))
        self.assertEqual(c.request(O.GET, b"k")[0].status, S.ETMPFAIL)
        self.assertEqual(c.request(O.GETQ, b"k")[0].status, S.ETMPFAIL)
        r = c.request(O.SET, b"k", b"v", B.store_extras(0, 0))[0]
        self.assertEqual((r.status, r.value), (S.ETMPFAIL, b"remote bucket gone"))
        self.assertEqual(c.request(O.DELETE, b"k")[0].status, S.EINTERNAL)
        self.assertEqual(len(self.flushLoggedErrors(RuntimeError)), 1)


class BinaryHostileInputTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness()
        self.c = self.h.connect()

    def header(self, opcode=O.GET, keylen=0, extlen=0, bodylen=0, opaque=0, magic=0x80):
        import struct
        return struct.pack(">BBHBBHIIQ", magic, opcode, keylen, extlen, 0, 0, bodylen,
                           opaque, 0)

    def test_binary_keylen_plus_extlen_over_bodylen(self):
        rs = responses(self.c.send(self.header(O.SET, keylen=10, extlen=8, bodylen=12,
                                               opaque=5)))
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.EINVAL, 5)])
        self.assertTrue(self.c.closed)

    def test_binary_extlen_out_of_range(self):
        # Wrong extras length for the opcode: refused, the stream goes on.
        rs = self.c.request(O.GET, b"k", extras=b"\0\0\0\0", opaque=1)
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.EINVAL, 1)])
        rs = self.c.request(O.SET, b"k", b"v", extras=b"\0" * 3, opaque=2)
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.EINVAL, 2)])
        self.assertFalse(self.c.closed)
        # extlen beyond the body: the frame boundary is lost, so it closes.
        rs = responses(self.c.send(self.header(O.GET, extlen=255, bodylen=3, opaque=3)))
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.EINVAL, 3)])
        self.assertTrue(self.c.closed)

    def test_binary_body_over_the_item_limit_refused_before_buffering(self):
        rs = responses(self.c.send(self.header(O.SET, keylen=1, extlen=8,
                                               bodylen=64 * 1024 * 1024, opaque=6)
                                   + b"\0" * 1000))
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.E2BIG, 6)])
        self.assertTrue(self.c.closed)
        self.assertEqual(self.c.p.session.decoder.buffered, 0)

    def test_binary_huge_length(self):
        rs = responses(self.c.send(self.header(O.GET, keylen=1, bodylen=4294967295,
                                               opaque=1)))
        self.assertEqual([r.status for r in rs], [S.E2BIG])
        self.assertTrue(self.c.closed)

    def test_binary_value_just_over_the_bucket_limit_is_refused_and_skipped(self):
        rs = self.c.request(O.SET, b"k", b"x" * 4097, B.store_extras(0, 0), opaque=1)
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.E2BIG, 1)])
        self.assertEqual(self.c.request(O.NOOP)[0].status, 0)

    def test_binary_key_over_250_bytes(self):
        rs = self.c.request(O.GET, b"k" * 251, opaque=1)
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.EINVAL, 1)])
        # The frame is skipped (its body never buffered) and the stream goes on.
        rs = responses(self.c.send(req(O.SET, b"k" * 300, b"v" * 100, B.store_extras(0, 0),
                                       opaque=2) + req(O.NOOP, opaque=3)))
        self.assertEqual([(r.status, r.opaque) for r in rs], [(S.EINVAL, 2), (0, 3)])

    def test_binary_bad_magic_closes_without_reply(self):
        out = self.c.send(req(O.NOOP, opaque=1) + self.header(O.GET, magic=0x81))
        self.assertEqual([r.opaque for r in responses(out)], [1])
        self.assertTrue(self.c.closed)

    def test_binary_missing_or_forbidden_key_and_value(self):
        self.assertEqual(self.c.request(O.GET)[0].status, S.EINVAL)
        self.assertEqual(self.c.request(O.NOOP, b"k")[0].status, S.EINVAL)
        self.assertEqual(self.c.request(O.GET, b"k", b"v")[0].status, S.EINVAL)


# -- authentication ---------------------------------------------------------------

CREDS = {b"ada": b"s3cret:with colon"}


class SaslTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(credentials=CREDS)
        self.c = self.h.connect()

    def auth(self, c, user, password, mech=b"PLAIN"):
        return c.request(O.SASL_AUTH, mech, B.build_sasl_plain(user, password))

    def test_list_mechs(self):
        r = self.c.request(O.SASL_LIST_MECHS)[0]
        self.assertEqual((r.status, r.value), (0, b"PLAIN"))

    def test_commands_need_auth(self):
        self.assertEqual(self.c.request(O.GET, b"k")[0].status, S.AUTH_ERROR)
        self.assertEqual(self.c.request(O.SETQ, b"k", b"v", B.store_extras(0, 0))[0].status,
                         S.AUTH_ERROR)
        self.assertEqual(self.c.request(O.VERSION)[0].status, 0)
        self.assertEqual(self.h.embedded.stats_sync()["op_upsert"], 0)

    def test_bad_credentials(self):
        self.assertEqual(self.auth(self.c, b"ada", b"wrong")[0].status, S.AUTH_ERROR)
        self.assertEqual(self.auth(self.c, b"bob", b"s3cret:with colon")[0].status,
                         S.AUTH_ERROR)
        self.assertEqual(self.auth(self.c, b"ada", b"s3cret:with colon", b"CRAM-MD5"
                                   )[0].status, S.AUTH_ERROR)
        self.assertEqual(self.c.request(O.SASL_AUTH, b"PLAIN", b"garbage")[0].status,
                         S.AUTH_ERROR)
        self.assertEqual(self.c.request(O.GET, b"k")[0].status, S.AUTH_ERROR)
        self.assertEqual(len(self.flushLoggedErrors()), 0)

    def test_good_credentials(self):
        r = self.auth(self.c, b"ada", b"s3cret:with colon")[0]
        self.assertEqual((r.status, r.value), (0, b"Authenticated"))
        self.assertEqual(self.c.request(O.GET, b"k")[0].status, S.KEY_ENOENT)
        # Per connection.
        self.assertEqual(self.h.connect().request(O.GET, b"k")[0].status, S.AUTH_ERROR)

    def test_no_sasl_without_credentials(self):
        c = Harness().connect()
        self.assertEqual(c.request(O.SASL_LIST_MECHS)[0].status, S.UNKNOWN_COMMAND)
        self.assertEqual(self.auth(c, b"ada", b"x")[0].status, S.UNKNOWN_COMMAND)


class AsciiAuthTests(unittest.TestCase):
    def setUp(self):
        self.h = Harness(credentials=CREDS)
        self.c = self.h.connect()

    def test_commands_need_auth(self):
        self.assertEqual(self.c.send(b"get k\r\n"), b"CLIENT_ERROR unauthenticated\r\n")
        self.assertEqual(self.c.send(b"version\r\n"), b"CLIENT_ERROR unauthenticated\r\n")
        self.assertEqual(self.c.send(b"delete k noreply\r\n"), b"")

    def test_set_with_user_and_password_authenticates(self):
        self.assertEqual(self.c.send(b"set auth 0 0 9\r\nada wrong\r\n"),
                         b"CLIENT_ERROR authentication failure\r\n")
        self.assertEqual(self.c.send(b"set auth 0 0 21\r\nada s3cret:with colon\r\n"),
                         b"STORED\r\n")
        self.assertEqual(self.c.send(b"get auth\r\n"), b"END\r\n")  # nothing was stored
        self.assertEqual(self.c.send(b"set k 0 0 1\r\na\r\nget k\r\n"),
                         b"STORED\r\nVALUE k 0 1\r\na\r\nEND\r\n")

    def test_quit_works_unauthenticated(self):
        self.c.send(b"quit\r\n")
        self.assertTrue(self.c.closed)


class AuthFileTests(unittest.TestCase):
    def write(self, text):
        path = self.mktemp()
        with open(path, "wb") as f:
            f.write(text)
        return path

    def test_format(self):
        path = self.write(b"# users\n\nada:pa:ss\r\nbob:\n  # indented comment\n")
        self.assertEqual(load_auth_file(path), {b"ada": b"pa:ss", b"bob": b""})

    def test_malformed(self):
        for text in (b"nocolon\n", b":nouser\n", b"", b"# only a comment\n"):
            self.assertRaises(ValueError, load_auth_file, self.write(text))


# -- limits -----------------------------------------------------------------------

class ConnectionLimitTests(unittest.TestCase):
    def test_max_connections_is_shared_with_the_netstring_endpoint(self):
        h = Harness(max_connections=2)
        netstring = BucketServerFactory(h.bucket, stats=h.stats)
        n1 = netstring.buildProtocol(ADDR)
        n1.makeConnection(StringTransport())
        m1 = h.connect()
        self.assertEqual(h.stats.connections, 2)
        # Over the limit: memcached's words, then the connection closes...
        p = h.factory.buildProtocol(ADDR)
        self.assertNotIsInstance(p, MemcachedServerProtocol)
        t = StringTransport()
        p.makeConnection(t)
        self.assertEqual(t.value(), TOO_MANY_CONNECTIONS)
        self.assertTrue(t.disconnecting)
        # ... and the netstring factory refuses too (Twisted closes at once).
        self.assertIsNone(netstring.buildProtocol(ADDR))
        self.assertEqual(h.stats.rejected_connections, 2)
        m1.p.connectionLost(None)
        self.assertIsInstance(h.factory.buildProtocol(ADDR), MemcachedServerProtocol)
        n1.connectionLost(None)

    def test_rejected_connections_in_stats(self):
        h = Harness(max_connections=1)
        c = h.connect()
        h.factory.buildProtocol(ADDR)
        out = c.send(b"stats\r\n")
        self.assertIn(b"STAT rejected_connections 1\r\n", out)
        self.assertIn(b"STAT max_connections 1\r\n", out)


class NetstringFlowControlTests(unittest.TestCase):
    """The netstring server follows the same output rule (txcb/server.py)."""

    def setUp(self):
        clock = Clock()
        self.bucket = EmbeddedBucket(clock=clock, pager_interval=0)
        self.factory = BucketServerFactory(self.bucket)
        self.p = self.factory.buildProtocol(ADDR)
        self.t = StringTransport()
        self.p.makeConnection(self.t)

    def frames(self, *requests):
        return b"".join(netstring(r) for r in requests)

    def test_registered_as_streaming_producer(self):
        self.assertIs(self.t.producer, self.p)
        self.assertTrue(self.t.streaming)

    def test_output_backed_up_stops_reading_and_holds_requests(self):
        self.p.pauseProducing()
        self.assertEqual(self.t.producerState, "paused")
        self.p.dataReceived(self.frames(
            encode_request(Op.UPSERT, 1, b"k", b"v"), encode_request(Op.GET, 2, b"k")))
        self.assertEqual(self.t.value(), b"")
        self.assertEqual(self.bucket.stats_sync()["op_upsert"], 0)
        self.p.resumeProducing()
        self.assertEqual(self.t.producerState, "producing")
        self.assertIn(b"v,", self.t.value())
        self.assertEqual(self.bucket.stats_sync()["op_get"], 1)

    def test_pause_during_held_requests_keeps_the_rest(self):
        self.p.pauseProducing()
        self.p.dataReceived(self.frames(*[encode_request(Op.NOOP, i) for i in range(5)]))
        written = []

        def write(data):
            written.append(data)
            if len(written) == 2:
                self.p.pauseProducing()
        self.t.write = write
        self.p._direct = None
        self.p.resumeProducing()
        self.assertEqual(len(written), 2)
        self.assertEqual(len(self.p._held), 3)
        self.assertEqual(self.t.producerState, "paused")
        self.p.resumeProducing()
        self.assertEqual(len(written), 5)
        self.assertEqual(self.t.producerState, "producing")


class _Hold(Protocol):
    """A client that connects, writes, and never reads."""

    def connectionMade(self):
        self.factory.connected.callback(self)


class RealSocketOutputCapTests(unittest.TestCase):
    """A client that sends and never reads does not grow the server's memory."""

    timeout = 30

    @defer.inlineCallbacks
    def check_capped(self, factory, request, reply_size, held):
        conns = []
        orig = factory.buildProtocol

        def build(addr):
            p = orig(addr)
            conns.append(p)
            return p
        factory.buildProtocol = build
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", port.getHost().port))
        sock.setblocking(False)
        self.addCleanup(sock.close)
        # Send requests (for far more reply bytes than any socket buffer
        # holds) until the connection takes no more for a second.
        blob = request * 1000
        sent = 0
        stuck_since = None
        deadline = time.time() + 15
        while time.time() < deadline:
            try:
                sent += sock.send(blob)
                stuck_since = None
            except BlockingIOError:
                now = time.time()
                if stuck_since is None:
                    stuck_since = now
                elif now - stuck_since > 1.0:
                    break
                yield deferLater(reactor, 0.02, lambda: None)
        self.assertIsNotNone(stuck_since, "the server never stopped reading")
        self.assertEqual(len(conns), 1)
        p = conns[0]
        t = p.transport
        buffered = len(t.dataBuffer) - t.offset + t._tempDataLen
        # Far more replies were asked for than are buffered: the transport's
        # buffer (64 KiB) plus at most one batch and one reply, not megabytes.
        self.assertGreater(sent // len(request) * reply_size, 50 * 1000 * 1000)
        self.assertLess(buffered, 64 * 1024 + 64 * 1024 + 2 * reply_size)
        # The server stopped reading: requests wait in the kernel, and at
        # most one read's worth of them waits parsed in the protocol.
        self.assertNotIn(t, reactor.getReaders())
        self.assertLess(held(p), 65536 // len(request) + 1)
        sock.close()
        yield deferLater(reactor, 0.1, lambda: None)

    def test_memcached_client_that_never_reads(self):
        bucket = EmbeddedBucket(pager_interval=0)
        bucket.store_sync("upsert", b"big", Encoded(b"x" * 20000, 0))
        factory = MemcachedServerFactory(bucket)
        return self.check_capped(factory, b"get big\r\n", 20000, lambda p: len(p._backlog))

    def test_netstring_client_that_never_reads(self):
        bucket = EmbeddedBucket(pager_interval=0)
        bucket.store_sync("upsert", b"big", Encoded(b"x" * 20000, 0))
        factory = BucketServerFactory(bucket)
        return self.check_capped(factory, netstring(encode_request(Op.GET, 1, b"big")),
                                 20000, lambda p: len(p._held))


# -- twistd options -----------------------------------------------------------------

class TapOptionTests(unittest.TestCase):
    def parse(self, *args):
        o = tap.Options()
        o.parseOptions(list(args))
        return o

    def test_memcached_is_off_by_default_and_repeatable(self):
        self.assertEqual(self.parse()["memcached"], [])
        o = self.parse("--memcached", "11211", "--memcached", "unix:/tmp/mc.sock")
        self.assertEqual(o["memcached"], ["tcp:11211:interface=127.0.0.1",
                                          "unix:/tmp/mc.sock"])
        self.assertEqual(o["max-connections"], 1024)
        self.assertIsNone(o["credentials"])

    def test_auth_file_and_max_connections(self):
        path = self.mktemp()
        with open(path, "w") as f:
            f.write("ada:pw\n")
        o = self.parse("--auth-file", path, "--max-connections", "5")
        self.assertEqual(o["credentials"], {b"ada": b"pw"})
        self.assertEqual(o["max-connections"], 5)
        for args in (["--auth-file", path + ".missing"], ["--max-connections", "0"]):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_help_documents_the_options(self):
        text = str(tap.Options())
        for name in ("--memcached", "--auth-file", "--max-connections"):
            self.assertIn(name, text)

    def test_make_service_shares_one_bucket_and_one_limit(self):
        args = ["--port", "1234", "--memcached", "11311", "--memcached", "11312",
                "--max-connections", "7"]
        if "--ephemeral" in str(tap.Options()):
            args.append("--ephemeral")
        o = self.parse(*args)
        r = MemoryReactorClock()
        svc = tap.makeService(o, reactor=r)
        svc.startService()
        self.addCleanup(svc.stopService)
        self.assertEqual(sorted((p, i) for p, _f, _b, i in r.tcpServers),
                         [(1234, "127.0.0.1"), (11311, "127.0.0.1"), (11312, "127.0.0.1")])
        factories = {p: f for p, f, _b, _i in r.tcpServers}
        ns, mc1, mc2 = factories[1234], factories[11311], factories[11312]
        self.assertIsInstance(mc1, MemcachedServerFactory)
        self.assertIs(mc1, mc2)
        self.assertIs(mc1.bucket, ns.bucket)
        self.assertIs(mc1.stats, ns.stats)
        self.assertEqual(ns.stats.max_connections, 7)
