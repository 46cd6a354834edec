"""
The servers under a RAM quota (issue 17): a synchronous call that raises
WouldBlock (the value is ejected to disk) is answered by the IBucket call,
later, with the right value and in its place among the replies; a full
bucket's NoMemoryError answers each protocol's out-of-memory status; the
clients rebuild it as NoMemoryError.  Every protocol is driven in memory
(StringTransport, a task.Clock) over :class:`EjectingBucket`; the memcached
pool meets a real memcached started with ``-M`` (errors instead of evictions).
"""

from __future__ import annotations

import socket

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial import unittest

from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.memcached import MemcachedPool
from txcb.errors import NoMemoryError, RC, TemporaryFailError
from txcb.formats import Encoded
from txcb.subdocument import Opcode as SDOp
from txcb.wire import couchbase as W
from txcb.wire import mcascii as A
from txcb.wire import mcbinary as B
from txcb.wire.netstring import (
    MULTI_MORE, OPT_QUIET, Op, decode_multi_reply, encode_multi_keys)

from tests.support import procs
from tests.support.cbsubdoc import lookup_frame, lookup_results
from tests.support.couchbase import CbHarness, HeldDiskBucket, store_extras
from tests.support.memcached import Harness, responses as mc_responses
from tests.support.netstring import ClientTestBase, ServerTestBase, frame, response
from tests.support.quota import READ_BACK, EjectingBucket

CO = W.Opcode


def _fill(inner):
    """Three items a, b, c with values va, vb, vc (flags 0), on the inner bucket."""
    return {k: inner.store_sync("upsert", k, Encoded(b"v" + k, 0)).cas
            for k in (b"a", b"b", b"c")}


class _Observer:
    """An IRequestObserver keeping (op, status) of each request answered."""

    def __init__(self, seen):
        self.seen = seen

    def request_done(self, op, status, started):
        self.seen.append((op, status))


# -- netstring ---------------------------------------------------------------------------

class NetstringWouldBlockTests(ServerTestBase):
    """The netstring server: WouldBlock takes the IBucket call (replies matched by opaque)."""

    def setUp(self):
        super().setUp()
        inner = EmbeddedBucket(clock=self.clock, max_value_size=1000, pager_interval=0)
        self.cas = _fill(inner)
        self.double = EjectingBucket(inner, self.clock)
        self.setup_server(bucket=self.double)

    def test_get_of_an_ejected_key_answers_once_read_back(self):
        self.double.ejected.add(b"b")
        self.proto.dataReceived(frame(Op.GET, 7, key=b"b"))
        self.assertEqual(self.responses(), [])
        self.assertEqual(self.double.blocked, [("get_sync", b"b")])
        self.clock.advance(READ_BACK)
        [res] = self.responses()
        self.assertEqual((res.opaque, res.status, res.body, res.cas),
                         (7, 0, b"vb", self.cas[b"b"]))
        self.assertEqual(self.double.read_back, [b"b"])
        self.assertEqual(self.proto._inflight, 0)

    def test_pipelined_gets_resident_answered_at_once_ejected_after(self):
        self.double.ejected.add(b"b")
        self.proto.dataReceived(frame(Op.GET, 1, key=b"a") + frame(Op.GET, 2, key=b"b")
                                + frame(Op.GET, 3, key=b"c")
                                + frame(Op.GET, 4, key=b"zz", options=OPT_QUIET))
        now = self.responses()
        self.assertEqual([(r.opaque, r.body) for r in now],
                         [(1, b"va"), (3, b"vc"), (4, b"")])
        self.assertEqual(now[2].status, RC.KEY_ENOENT)
        self.assertEqual(self.proto._inflight, 1)
        self.clock.advance(READ_BACK)
        self.assertEqual([(r.opaque, r.status, r.body) for r in self.responses()],
                         [(2, 0, b"vb")])
        self.assertEqual(self.proto._inflight, 0)

    def test_get_multi_streams_in_key_order_around_an_ejected_key(self):
        self.double.ejected.add(b"b")
        self.proto.dataReceived(frame(Op.GET_MULTI, 9,
                                      value=encode_multi_keys([b"a", b"b", b"zz", b"c"])))
        [first] = self.responses()
        self.assertEqual((first.opaque, first.flags), (9, MULTI_MORE))
        self.assertEqual([e[3] for e in decode_multi_reply(first.body)], [b"va"])
        self.clock.advance(READ_BACK)
        rest = self.responses()
        self.assertEqual(rest[-1].flags, 0)
        entries = [e for r in rest for e in decode_multi_reply(r.body)]
        self.assertEqual([(e[0], e[3]) for e in entries],
                         [(0, b"vb"), (RC.KEY_ENOENT, b""), (0, b"vc")])
        self.assertEqual(entries[0][1], self.cas[b"b"])

    def test_get_multi_whose_first_key_is_ejected_sends_no_empty_frame(self):
        self.double.ejected.add(b"a")
        self.proto.dataReceived(frame(Op.GET_MULTI, 9, value=encode_multi_keys([b"a", b"b"])))
        self.assertEqual(self.responses(), [])
        self.clock.advance(READ_BACK)
        entries = [e[3] for r in self.responses() for e in decode_multi_reply(r.body)]
        self.assertEqual(entries, [b"va", b"vb"])

    def test_mutation_of_an_ejected_key_is_made_by_the_ibucket_call(self):
        self.double.ejected.add(b"b")
        self.proto.dataReceived(frame(Op.APPEND, 5, key=b"b", value=b"+"))
        self.assertEqual(self.responses(), [])
        self.clock.advance(READ_BACK)
        [res] = self.responses()
        self.assertEqual((res.opaque, res.status), (5, 0))
        self.assertEqual(self.double.get_sync(b"b").raw, b"vb+")

    def test_durable_mutation_of_an_ejected_key_waits_for_the_disk(self):
        inner = HeldDiskBucket(clock=self.clock, max_value_size=1000, pager_interval=0)
        _fill(inner)
        double = EjectingBucket(inner, self.clock)
        self.setup_server(bucket=double)
        double.ejected.add(b"b")
        self.proto.dataReceived(frame(Op.APPEND, 5, key=b"b", value=b"+", persist_to=1))
        self.clock.advance(READ_BACK)
        self.assertEqual((self.responses(), double.read_back), ([], [b"b"]))
        inner.commit()
        [res] = self.responses()
        self.assertEqual((res.opaque, res.status), (5, 0))
        self.assertEqual(inner.get_sync(b"b").raw, b"vb+")

    def test_blocked_requests_take_in_flight_slots(self):
        self.setup_server(bucket=self.double, max_inflight=2)
        self.double.ejected.update((b"a", b"b"))
        self.proto.dataReceived(frame(Op.GET, 1, key=b"a") + frame(Op.GET, 2, key=b"b"))
        self.assertEqual(self.transport.producerState, "paused")
        self.clock.advance(READ_BACK)
        self.assertEqual(sorted(r.body for r in self.responses()), [b"va", b"vb"])
        self.assertEqual(self.transport.producerState, "producing")

    def test_observer_counts_a_blocked_request_once(self):
        seen = []
        self.factory.observer = self.proto._observer = _Observer(seen)
        self.double.ejected.add(b"b")
        self.proto.dataReceived(frame(Op.GET, 1, key=b"b") + frame(Op.GET, 2, key=b"a"))
        self.clock.advance(READ_BACK)
        self.assertEqual(seen, [("get", 0), ("get", 0)])

    def test_no_memory_is_rc_0x82(self):
        self.double.full = NoMemoryError
        res = self.call(Op.UPSERT, 3, key=b"n", value=b"x")
        self.assertEqual(res.status, RC.ENOMEM)
        self.assertEqual(self.call(Op.GET, 4, key=b"a").body, b"va")  # reads still work


class NetstringClientNoMemoryTests(ClientTestBase):
    """The netstring client rebuilds rc 0x82 as NoMemoryError."""

    def test_rc_0x82_is_no_memory_error(self):
        self.make_client()
        d = self.bucket.upsert("k", b"v")
        req = self.one_request()
        self.proto.dataReceived(response(req.opcode, req.opaque, RC.ENOMEM, body=b"full"))
        f = self.failureResultOf(d, NoMemoryError)
        self.assertEqual(f.value.rc, RC.ENOMEM)
        self.assertIsInstance(f.value, TemporaryFailError)  # SDK 2.x: retry later


# -- memcached ASCII -------------------------------------------------------------------

def _harness():
    h = Harness(wrap=lambda inner, clock: EjectingBucket(inner, clock))
    _fill(h.embedded)
    return h


class AsciiWouldBlockTests(unittest.TestCase):
    """memcached ASCII: replies in request order, an ejected key's when it is read back."""

    def setUp(self):
        self.h = _harness()
        self.double = self.h.bucket
        self.c = self.h.connect()

    def later(self):
        self.h.clock.advance(READ_BACK)
        return self.c.take()

    def test_get_of_an_ejected_key(self):
        self.double.ejected.add(b"b")
        self.assertEqual(self.c.send(b"get b\r\n"), b"")
        self.assertEqual(self.later(), b"VALUE b 0 2\r\nvb\r\nEND\r\n")

    def test_pipelined_gets_stay_in_order(self):
        self.double.ejected.add(b"b")
        self.assertEqual(self.c.send(b"get a\r\nget b\r\nget zz\r\nget c\r\n"),
                         b"VALUE a 0 2\r\nva\r\nEND\r\n")
        self.assertEqual(self.later(), b"VALUE b 0 2\r\nvb\r\nEND\r\nEND\r\n"
                                       b"VALUE c 0 2\r\nvc\r\nEND\r\n")

    def test_multi_get_streams_in_order_then_the_next_command(self):
        self.double.ejected.add(b"b")
        self.assertEqual(self.c.send(b"get a b zz c\r\nget c\r\n"), b"VALUE a 0 2\r\nva\r\n")
        self.assertEqual(self.later(), b"VALUE b 0 2\r\nvb\r\nVALUE c 0 2\r\nvc\r\nEND\r\n"
                                       b"VALUE c 0 2\r\nvc\r\nEND\r\n")
        self.assertEqual(self.double.read_back, [b"b"])

    def test_gets_of_two_ejected_keys_with_their_cas(self):
        cas = {k: self.h.embedded.get_sync(k).cas for k in (b"a", b"c")}
        self.double.ejected.update((b"a", b"c"))
        self.assertEqual(self.c.send(b"gets a b c\r\n"), b"")
        self.assertEqual(self.later(), b"VALUE a 0 2 %d\r\nva\r\nVALUE b 0 2 %d\r\nvb\r\n"
                         % (cas[b"a"], self.h.embedded.get_sync(b"b").cas))
        self.assertEqual(self.later(), b"VALUE c 0 2 %d\r\nvc\r\nEND\r\n" % cas[b"c"])

    def test_gat_of_an_ejected_key_touches_once_read_back(self):
        self.double.ejected.add(b"b")
        self.assertEqual(self.c.send(b"gat 100 a b\r\n"), b"VALUE a 0 2\r\nva\r\n")
        self.assertEqual(self.later(), b"VALUE b 0 2\r\nvb\r\nEND\r\n")
        self.assertGreater(self.h.embedded.get_meta_sync(b"b").expiry, 0)

    def test_connection_lost_while_a_stream_waits_cancels_the_read(self):
        self.double.ejected.add(b"b")
        self.c.send(b"get a b c\r\n")
        self.c.p.connectionLost(None)
        self.h.clock.advance(READ_BACK)  # nothing is written, nothing fails
        self.assertEqual(self.c.take(), b"")

    def test_set_and_delete_of_ejected_keys_answer_in_order(self):
        self.double.ejected.update((b"a", b"b"))
        self.assertEqual(self.c.send(b"set a 0 0 1\r\nx\r\ndelete b\r\nget c\r\n"), b"")
        self.assertEqual(self.later(), b"STORED\r\nDELETED\r\nVALUE c 0 2\r\nvc\r\nEND\r\n")
        self.assertEqual(self.h.embedded.get_sync(b"a").raw, b"x")

    def test_observer_counts_each_request_once(self):
        seen = []
        h = Harness(wrap=lambda inner, clock: EjectingBucket(inner, clock))
        _fill(h.embedded)
        h.factory.observer = _Observer(seen)
        c = h.connect()
        h.bucket.ejected.update((b"a", b"b"))
        c.send(b"get a\r\nget c b zz\r\nset a 0 0 1\r\nx\r\n")
        h.clock.advance(READ_BACK)  # a; the multi-get, first in line, asks for b
        self.assertEqual(c.take(), b"VALUE a 0 2\r\nva\r\nEND\r\nVALUE c 0 2\r\nvc\r\n")
        self.assertEqual(seen, [("get", 0)])
        h.clock.advance(READ_BACK)
        self.assertEqual(c.take(), b"VALUE b 0 2\r\nvb\r\nEND\r\nSTORED\r\n")
        self.assertEqual(seen, [("get", 0), ("get", RC.KEY_ENOENT), ("upsert", 0)])

    def test_blocked_requests_count_against_max_inflight(self):
        h = Harness(wrap=lambda inner, clock: EjectingBucket(inner, clock), max_inflight=2)
        _fill(h.embedded)
        c = h.connect()
        h.bucket.ejected.update((b"a", b"b"))
        self.assertEqual(c.send(b"get a\r\nget b\r\nget c\r\n"), b"")
        self.assertEqual(c.t.producerState, "paused")
        self.assertEqual(h.bucket.blocked, [("get_sync", b"a"), ("get_sync", b"b")])
        h.clock.advance(READ_BACK)
        self.assertEqual(c.take(), b"VALUE a 0 2\r\nva\r\nEND\r\nVALUE b 0 2\r\nvb\r\nEND\r\n"
                                   b"VALUE c 0 2\r\nvc\r\nEND\r\n")
        self.assertEqual(c.t.producerState, "producing")

    def test_noreply_set_of_an_ejected_key_then_get(self):
        self.double.ejected.add(b"a")
        self.assertEqual(self.c.send(b"set a 0 0 1 noreply\r\nx\r\nget a\r\n"), b"")
        self.assertEqual(self.later(), b"VALUE a 0 1\r\nx\r\nEND\r\n")


class AsciiNoMemoryTests(unittest.TestCase):
    """memcached ASCII: a full bucket answers memcached's exact lines."""

    def setUp(self):
        self.h = _harness()
        self.h.bucket.full = NoMemoryError
        self.c = self.h.connect()

    def test_storage_commands(self):
        for line in (b"set n 0 0 1\r\nx\r\n", b"add n 0 0 1\r\nx\r\n",
                     b"replace a 0 0 1\r\nx\r\n", b"append a 0 0 1\r\nx\r\n",
                     b"prepend a 0 0 1\r\nx\r\n", b"cas a 0 0 1 99\r\nx\r\n"):
            self.assertEqual(self.c.send(line), b"SERVER_ERROR out of memory storing object\r\n",
                             line)

    def test_through_the_ibucket_call_too(self):
        self.h.bucket.ejected.add(b"a")
        self.assertEqual(self.c.send(b"set a 0 0 1\r\nx\r\n"),
                         b"SERVER_ERROR out of memory storing object\r\n")

    def test_incr(self):
        self.h.bucket.full = None
        self.c.send(b"set n 0 0 1\r\n1\r\n")
        self.h.bucket.full = NoMemoryError
        self.assertEqual(self.c.send(b"incr n 1\r\n"), b"SERVER_ERROR out of memory\r\n")

    def test_noreply_is_silent_and_reads_work(self):
        self.assertEqual(self.c.send(b"set n 0 0 1 noreply\r\nx\r\nget a\r\n"),
                         b"VALUE a 0 2\r\nva\r\nEND\r\n")

    def test_other_errors_render_as_before(self):
        self.h.bucket.full = None
        self.assertEqual(self.c.send(b"append zz 0 0 1\r\nx\r\n"), b"NOT_STORED\r\n")


# -- memcached binary ------------------------------------------------------------------

class BinaryWouldBlockTests(unittest.TestCase):
    """memcached binary: a GETKQ run answers in order around an ejected key."""

    def setUp(self):
        self.h = _harness()
        self.double = self.h.bucket
        self.c = self.h.connect()

    def test_getkq_run_then_noop(self):
        self.double.ejected.add(b"b")
        run = b"".join(B.encode_request(B.Opcode.GETKQ, k, opaque=i)
                       for i, k in enumerate((b"a", b"b", b"zz", b"c")))
        now = mc_responses(self.c.send(run + B.encode_request(B.Opcode.NOOP, opaque=9)))
        self.assertEqual([(p.opaque, p.key, p.value) for p in now], [(0, b"a", b"va")])
        self.h.clock.advance(READ_BACK)
        later = mc_responses(self.c.take())
        self.assertEqual([(p.opcode, p.opaque, p.key, p.value) for p in later],
                         [(B.Opcode.GETKQ, 1, b"b", b"vb"), (B.Opcode.GETKQ, 3, b"c", b"vc"),
                          (B.Opcode.NOOP, 9, b"", b"")])

    def test_get_and_set_of_ejected_keys(self):
        self.double.ejected.update((b"a", b"b"))
        out = self.c.send(B.encode_request(B.Opcode.GET, b"a", opaque=1)
                          + B.encode_request(B.Opcode.SET, b"b", b"new", B.STORE_EXTRAS.pack(0, 0),
                                             opaque=2)
                          + B.encode_request(B.Opcode.GET, b"c", opaque=3))
        self.assertEqual(out, b"")
        self.h.clock.advance(READ_BACK)
        got = mc_responses(self.c.take())
        self.assertEqual([(p.opaque, p.status, p.value) for p in got],
                         [(1, 0, b"va"), (2, 0, b""), (3, 0, b"vc")])
        self.assertEqual(self.h.embedded.get_sync(b"b").raw, b"new")

    def test_no_memory_is_status_0x82(self):
        self.double.full = NoMemoryError
        for opcode in (B.Opcode.SET, B.Opcode.ADD):
            [p] = self.c.request(opcode, b"n", b"x", B.STORE_EXTRAS.pack(0, 0), opaque=4)
            self.assertEqual((p.status, p.value), (0x82, b"Out of memory"))
        [p] = self.c.request(B.Opcode.APPEND, b"a", b"x", opaque=5)
        self.assertEqual(p.status, 0x82)


# -- Couchbase KV ----------------------------------------------------------------------

class CouchbaseWouldBlockTests(unittest.TestCase):
    """The Couchbase KV endpoint: the fast and full paths take the IBucket call."""

    def setUp(self):
        self.h = CbHarness(make_bucket=lambda clock: EjectingBucket(
            EmbeddedBucket(clock=clock, max_value_size=4096, pager_interval=0), clock))
        self.double = self.h.bucket
        self.cas = _fill(self.double._inner)
        self.c = self.h.ready()

    def later(self):
        self.h.clock.advance(READ_BACK)
        return W.Decoder("response").feed(self.c.take())

    def test_pipelined_gets_in_order(self):
        self.double.ejected.add(b"b")
        c = self.c
        now = W.Decoder("response").feed(c.send(
            c.frame(CO.GET, b"a") + c.frame(CO.GET, b"b") + c.frame(CO.GETQ, b"zz")
            + c.frame(CO.GET, b"c")))
        self.assertEqual([r.value for r in now], [b"va"])
        later = self.later()
        self.assertEqual([(r.status, r.value, r.cas) for r in later],
                         [(0, b"vb", self.cas[b"b"]), (0, b"vc", self.cas[b"c"])])
        self.assertEqual(self.double.blocked, [("get_sync", b"b")])

    def test_set_of_an_ejected_key(self):
        self.double.ejected.add(b"a")
        self.assertEqual(self.c.request(CO.SET, b"a", b"new", extras=store_extras()), [])
        [r] = self.later()
        self.assertEqual(r.status, 0)
        self.assertEqual(self.double._inner.get_sync(b"a").raw, b"new")

    def test_full_path_ops_of_an_ejected_key(self):
        self.double.ejected.add(b"a")
        c = self.c
        self.assertEqual(c.request(CO.APPEND, b"a", b"+") + c.request(CO.GETK, b"c"), [])
        got = self.later()
        self.assertEqual([(r.opcode, r.status) for r in got], [(CO.APPEND, 0), (CO.GETK, 0)])
        self.assertEqual(self.double._inner.get_sync(b"a").raw, b"va+")

    def test_lookup_in_of_an_ejected_document(self):
        self.double._inner.store_sync("upsert", b"d", {"x": 1})
        self.double.ejected.add(b"d")
        self.assertEqual(self.c.send(lookup_frame(self.c, b"d", [(SDOp.GET, 0, "x")])), b"")
        [r] = self.later()
        self.assertEqual((r.status, lookup_results(r)), (0, [(0, b"1")]))
        self.assertEqual(self.double.blocked, [("lookup_in_sync", b"d")])

    def test_no_memory_is_enomem_and_backpressure_is_tmpfail(self):
        self.double.full = NoMemoryError
        r = self.c.one(CO.SET, b"n", b"x", extras=store_extras())
        self.assertEqual(r.status, 0x82)
        r = self.c.one(CO.ADD, b"n", b"x", extras=store_extras())
        self.assertEqual(r.status, 0x82)
        self.double.full = TemporaryFailError  # a persistent bucket's disk behind
        r = self.c.one(CO.SET, b"n", b"x", extras=store_extras())
        self.assertEqual(r.status, 0x86)


class AsciiQuotaStatsTests(unittest.TestCase):
    """memcached ASCII ``stats``: the quota and evictions under memcached's names."""

    def test_limit_maxbytes_and_evictions_are_the_buckets(self):
        h = Harness(max_value_size=2000)
        h.bucket = EmbeddedBucket(clock=h.clock, memory_quota=1 << 20, eviction="nru",
                                  max_value_size=2000)
        h.factory.bucket = h.bucket
        c = h.connect()
        for i in range(2000):
            c.send(b"set k%d 0 0 1000 noreply\r\n%s\r\n" % (i, b"x" * 1000))
        h.clock.advance(0)
        lines = dict(line.split(b" ")[1:3] for line in c.send(b"stats\r\n").split(b"\r\n")
                     if line.startswith(b"STAT "))
        evicted = h.bucket.stats_sync()["evictions"]
        self.assertGreater(evicted, 1000)
        self.assertEqual(lines[b"evictions"], b"%d" % evicted)
        self.assertEqual(lines[b"limit_maxbytes"], b"%d" % (1 << 20))


def _harness_full_reply():
    """What txcb's ASCII endpoint answers a set into a full bucket."""
    h = _harness()
    h.bucket.full = NoMemoryError
    return h.connect().send(b"set n 0 0 1\r\nx\r\n")


# -- the memcached pool against a real memcached -M ------------------------------------

class RealMemcachedNoMemoryTests(unittest.TestCase):
    """
    A real memcached that refuses writes when full (``-M``, 2 MB): its ASCII
    reply is the line txcb's ASCII endpoint sends, and the pool (binary, 0x82)
    says NoMemoryError.
    """

    skip = None if procs.have(procs.MEMCACHED) else "memcached is not installed"
    timeout = 20

    def setUp(self):
        self.m = procs.Memcached(extra=["-m", "2", "-I", "512k", "-M"]).start()
        self.addCleanup(self.m.stop)

    def test_memcached_says_what_the_ascii_endpoint_says(self):
        s = socket.create_connection(("127.0.0.1", self.m.port), timeout=5)
        self.addCleanup(s.close)
        value = b"x" * 100000
        for i in range(60):
            s.sendall(b"set k%d 0 0 %d\r\n%s\r\n" % (i, len(value), value))
            reply = s.recv(100)
            if reply != b"STORED\r\n":
                break
        self.assertEqual(reply, A.OUT_OF_MEMORY_STORING)
        self.assertEqual(reply, _harness_full_reply())

    @inlineCallbacks
    def test_a_full_memcached_is_no_memory_error(self):
        pool = MemcachedPool([self.m.address], reactor=reactor)
        self.addCleanup(pool.close)
        value = b"x" * 100000
        for i in range(60):
            try:
                yield pool.upsert("k%d" % i, value)
            except NoMemoryError as e:
                self.assertEqual(e.rc, RC.ENOMEM)
                break
        else:
            self.fail("memcached -M -m 2 stored 6 MB")
        yield pool.upsert("small", b"s")  # another slab class still has room
