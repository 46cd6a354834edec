"""
Sub-documents on txcb's Couchbase endpoint: SUBDOC_MULTI_LOOKUP (0xd0) and
SUBDOC_MULTI_MUTATION (0xd1) through the sans-IO client (every spec kind,
errors, xattrs, macros, the mutation token, durability, hostile input with
a test named after each case, frames split at every offset), and the
official SDK (sync API) against a real twistd: lookup_in / mutate_in,
get(with_expiry) / get(project), store semantics, the SDK's exceptions, and
values read back through the netstring endpoint.
"""

import json
import os
import shutil
import struct
import tempfile
import time
import uuid
from datetime import timedelta

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.task import deferLater
from twisted.trial import unittest
from zope.interface import implementer_only

from txcb.buckets.persistent import PersistentBucket
from txcb.interfaces import IBucket
from txcb.server.couchbase import GRANTED_FEATURES
from txcb.wire import cbbootstrap as WB
from txcb.wire import cbspecs as WS
from txcb.wire import couchbase as W

from tests.support.cbsubdoc import (
    ACCESS_DELETED, ADD, EXPAND, MKDIR_P, MKDOC, XATTR, lookup_frame, lookup_in,
    lookup_results, mutate_in, mutation_failure, mutation_frame, mutation_results)
from tests.support.couchbase import (
    ALL_FEATURES, CbHarness, HeldDiskBucket, responses, store_extras)
from tests.support.netstring import DeferredOnlyBucket
from tests.support.couchbase_sdk import SKIP_SDK, TxcbTwistd, connect, free_ports, shared_txcb

if SKIP_SDK is None:
    import couchbase.subdocument as SD
    from couchbase.durability import Durability, ServerDurability
    from couchbase.exceptions import (
        CasMismatchException, DocumentExistsException, DocumentNotFoundException,
        DocumentNotJsonException, InvalidArgumentException, InvalidValueException,
        PathExistsException, PathMismatchException, PathNotFoundException)
    from couchbase.options import GetOptions, MutateInOptions
    from couchbase.subdocument import StoreSemantics
    from couchbase.transcoder import RawJSONTranscoder

O = W.Opcode
S = W.Status
LOOKUP, MUTATION = O.SUBDOC_MULTI_LOOKUP, O.SUBDOC_MULTI_MUTATION
JSON_FLAGS = 0x02000000
# Spec opcodes (kv_engine ClientOpcode)
GET_DOC, SET_DOC, DELETE_DOC = 0x00, 0x01, 0x04
GET, EXISTS, DICT_ADD, DICT_UPSERT, DELETE, REPLACE = 0xC5, 0xC6, 0xC7, 0xC8, 0xC9, 0xCA
PUSH_LAST, PUSH_FIRST, ARRAY_INSERT, ADD_UNIQUE, COUNTER, GET_COUNT = (
    0xCB, 0xCC, 0xCD, 0xCE, 0xCF, 0xD2)


def _near(testcase, got, want, delta):
    """trial's assertAlmostEqual ignores ``delta``: within ``delta`` of ``want``."""
    testcase.assertLessEqual(abs(got - want), delta, "%r is not within %r of %r"
                             % (got, delta, want))


class CouchbaseSubdocCodecTests(unittest.TestCase):
    """The spec-list codec of txcb.wire.couchbase alone."""

    def test_lookup_specs_round_trip(self):
        specs = [(GET, 0, b"a.b"), (EXISTS, XATTR, b"_x"), (GET_DOC, 0, b"")]
        self.assertEqual(WS.decode_lookup_specs(WS.encode_lookup_specs(specs)),
                         [s + (b"",) for s in specs])

    def test_mutation_specs_round_trip(self):
        specs = [(DICT_UPSERT, MKDIR_P, b"a.b", b"1"), (DELETE, 0, b"c", b""),
                 (SET_DOC, 0, b"", b"{}")]
        self.assertEqual(WS.decode_mutation_specs(WS.encode_mutation_specs(specs)), specs)

    def test_results_round_trip(self):
        lookups = [(0, b"1"), (S.SUBDOC_PATH_ENOENT, b"")]
        self.assertEqual(WS.decode_lookup_results(WS.encode_lookup_results(lookups)), lookups)
        mutations = [(3, 0, b"7")]
        self.assertEqual(WS.decode_mutation_results(WS.encode_mutation_results(mutations)),
                         mutations)
        self.assertEqual(WS.decode_mutation_failure(WS.encode_mutation_failure(2, 0xC0)),
                         (2, 0xC0))

    def test_every_truncation_of_a_spec_list_is_einval_or_a_shorter_list(self):
        data = WS.encode_mutation_specs([(DICT_UPSERT, 0, b"ab", b"12"), (GET, 0, b"c", b"")])
        for i in range(1, len(data)):
            try:
                got = WS.decode_mutation_specs(data[:i])
            except WS.SpecListError as e:
                self.assertEqual(e.status, S.EINVAL, i)
            else:
                self.assertEqual(len(got), 1, i)

    def test_seventeen_specs_are_invalid_combo(self):
        data = WS.encode_lookup_specs([(GET, 0, b"a")] * 17)
        with self.assertRaises(WS.SpecListError) as e:
            WS.decode_lookup_specs(data)
        self.assertEqual(e.exception.status, S.SUBDOC_INVALID_COMBO)
        self.assertEqual(len(WS.decode_lookup_specs(WS.encode_lookup_specs([(GET, 0, b"a")] * 16))),
                         16)

    def test_error_map_names_the_subdoc_statuses(self):
        errors = json.loads(WB.error_map(2))["errors"]
        for status in (0x87, 0xC0, 0xC9, 0xCB, 0xCC, 0xCD, 0xD3, 0xD4):
            entry = errors["%x" % status]
            self.assertIn("subdoc", entry["attrs"])
            self.assertTrue(entry["name"] and entry["desc"])

    def test_no_specs_are_invalid_combo(self):
        with self.assertRaises(WS.SpecListError) as e:
            WS.decode_lookup_specs(b"")
        self.assertEqual(e.exception.status, S.SUBDOC_INVALID_COMBO)


class CouchbaseSubdocTests(unittest.TestCase):
    """0xd0 / 0xd1 on a synchronous embedded bucket (XERROR, Collections, tokens on)."""

    def setUp(self):
        self.h = CbHarness(make_bucket=self.make_bucket())
        self.c = self.h.ready()

    def make_bucket(self):
        return None

    def store(self, key, doc, ttl=0):
        value = json.dumps(doc).encode() if not isinstance(doc, bytes) else doc
        r = self.c.one(O.SET, key, value, extras=store_extras(JSON_FLAGS, ttl))
        self.assertEqual(r.status, 0)
        return r

    def get(self, key):
        r = self.c.one(O.GET, key)
        self.assertEqual(r.status, 0)
        return json.loads(r.value)

    def assertAlive(self):
        self.assertEqual(self.c.one(O.NOOP).status, 0)
        self.assertFalse(self.c.closed)

    # -- lookups ----------------------------------------------------------------

    def test_hello_grants_xattr_and_vattr_only(self):
        granted = self.h.connect().hello(ALL_FEATURES)
        for feature in (W.Feature.XATTR, W.Feature.VATTR):
            self.assertIn(feature, GRANTED_FEATURES)
            self.assertIn(feature, granted)
        # create-as-deleted, replica reads, binary xattrs
        for feature in (0x17, 0x1C, 0x21):
            self.assertNotIn(feature, granted)

    def test_lookup_each_spec_kind(self):
        cas = self.store(b"k", {"a": {"b": 1}, "l": [1, 2, 3]}).cas
        r = lookup_in(self.c, b"k", (GET, 0, "a.b"), (EXISTS, 0, "l[2]"), (GET_COUNT, 0, "l"),
                      (GET_COUNT, 0, "a"), (GET_DOC, 0, ""))
        self.assertEqual((r.status, r.cas, r.extras), (0, cas, b""))
        self.assertEqual(lookup_results(r), [
            (0, b"1"), (0, b""), (0, b"3"), (0, b"1"),
            (0, b'{"a": {"b": 1}, "l": [1, 2, 3]}')])

    def test_lookup_missing_path_is_multi_path_failure(self):
        self.store(b"k", {"a": 1})
        r = lookup_in(self.c, b"k", (GET, 0, "a"), (GET, 0, "zz"), (EXISTS, 0, "a[0]"))
        self.assertEqual(r.status, S.SUBDOC_MULTI_PATH_FAILURE)
        self.assertEqual(lookup_results(r), [(0, b"1"), (S.SUBDOC_PATH_ENOENT, b""),
                                             (S.SUBDOC_PATH_MISMATCH, b"")])

    def test_lookup_missing_document(self):
        r = lookup_in(self.c, b"nope", (GET, 0, "a"))
        self.assertEqual((r.status, r.value), (S.KEY_ENOENT, b""))

    def test_lookup_document_not_json(self):
        self.c.one(O.SET, b"k", b"plain text", extras=store_extras(0, 0))
        r = lookup_in(self.c, b"k", (GET, 0, "a"), (GET_DOC, 0, ""))
        self.assertEqual(r.status, S.SUBDOC_MULTI_PATH_FAILURE)
        self.assertEqual(lookup_results(r), [(S.SUBDOC_DOC_NOTJSON, b""), (0, b"plain text")])

    def test_lookup_of_a_locked_document_shows_the_locked_cas(self):
        self.store(b"k", {"a": 1})
        self.assertEqual(self.c.one(O.GET_LOCKED, b"k", extras=struct.pack(">I", 5)).status, 0)
        r = lookup_in(self.c, b"k", (GET, 0, "a"))
        self.assertEqual((r.status, r.cas), (0, 0xFFFFFFFFFFFFFFFF))

    def test_document_vattr_shows_expiry_and_flags(self):
        self.store(b"k", {"a": 1}, ttl=100)
        r = lookup_in(self.c, b"k", (GET, XATTR, "$document.exptime"),
                      (GET, XATTR, "$document.flags"), (GET_DOC, 0, ""))
        self.assertEqual(r.status, 0)
        (s1, exptime), (s2, flags), (s3, body) = lookup_results(r)
        self.assertEqual((s1, s2, s3, int(flags), body), (0, 0, 0, JSON_FLAGS, b'{"a": 1}'))
        _near(self, int(exptime), self.h.clock.seconds() + 100, delta=1)

    def test_get_meta_for_a_lookup_missing_doc(self):
        # get(project) / exists on a missing key: KEY_ENOENT, not a multi-path failure
        r = lookup_in(self.c, b"nope", (GET, XATTR, "$document.exptime"), (GET_DOC, 0, ""))
        self.assertEqual(r.status, S.KEY_ENOENT)

    # -- mutations ----------------------------------------------------------------

    def test_mutation_each_spec_kind(self):
        self.store(b"k", {"a": 1, "r": 0, "gone": 1, "l": [2], "u": [1], "n": 10})
        r = mutate_in(self.c, b"k", (DICT_ADD, 0, "b", b'"new"'),
                      (DICT_UPSERT, MKDIR_P, "c.d", b"true"), (DELETE, 0, "gone", b""),
                      (REPLACE, 0, "r", b"[]"), (PUSH_LAST, 0, "l", b"3,4"),
                      (PUSH_FIRST, 0, "l", b"1"), (ARRAY_INSERT, 0, "l[1]", b'"x"'),
                      (ADD_UNIQUE, 0, "u", b"2"), (COUNTER, 0, "n", b"-3"))
        self.assertEqual(r.status, 0)
        self.assertEqual(mutation_results(r), [(8, 0, b"7")])
        self.assertEqual(self.get(b"k"), {"a": 1, "r": [], "l": [1, "x", 2, 3, 4],
                                          "u": [1, 2], "n": 7, "b": "new", "c": {"d": True}})
        self.assertEqual(self.c.one(O.GET, b"k").cas, r.cas)

    def test_mutation_token_and_new_cas(self):
        old = self.store(b"k", {"a": 1})
        uuid_, seqno = struct.unpack(">QQ", old.extras)
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"2"))
        self.assertEqual(r.status, 0)
        self.assertNotEqual(r.cas, old.cas)
        self.assertEqual(struct.unpack(">QQ", r.extras), (uuid_, seqno + 1))

    def test_no_mutation_token_without_the_feature(self):
        c = self.h.ready([f for f in ALL_FEATURES if f != W.Feature.MUTATION_SEQNO])
        self.store(b"k", {"a": 1})
        r = mutate_in(c, b"k", (DICT_UPSERT, 0, "a", b"2"))
        self.assertEqual((r.status, r.extras), (0, b""))

    def test_failing_spec_answers_its_index_and_status(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "b", b"1"), (DICT_ADD, 0, "a", b"2"))
        self.assertEqual(r.status, S.SUBDOC_MULTI_PATH_FAILURE)
        self.assertEqual(mutation_failure(r), (1, S.SUBDOC_PATH_EEXISTS))
        r = mutate_in(self.c, b"k", (REPLACE, 0, "zz", b"2"))
        self.assertEqual(mutation_failure(r), (0, S.SUBDOC_PATH_ENOENT))
        r = mutate_in(self.c, b"k", (COUNTER, 0, "a", b"x"))
        self.assertEqual(mutation_failure(r), (0, S.SUBDOC_DELTA_EINVAL))
        self.assertEqual(self.get(b"k"), {"a": 1})  # all or nothing

    def test_counter_overflow_range_and_bad_deltas(self):
        self.store(b"k", {"n": 2 ** 63 - 2, "big": 2 ** 64 - 1})
        r = mutate_in(self.c, b"k", (COUNTER, 0, "n", b"1"))
        self.assertEqual(mutation_results(r), [(0, 0, b"%d" % (2 ** 63 - 1))])
        for spec, status in (((COUNTER, 0, "n", b"1"), S.SUBDOC_VALUE_CANTINSERT),  # overflow
                             ((COUNTER, 0, "big", b"1"), S.SUBDOC_NUM_ERANGE),
                             ((COUNTER, 0, "n", b"%d" % 2 ** 63), S.SUBDOC_DELTA_EINVAL),
                             ((COUNTER, 0, "n", b"0"), S.SUBDOC_DELTA_EINVAL)):
            r = mutate_in(self.c, b"k", spec)
            self.assertEqual((r.status, mutation_failure(r)),
                             (S.SUBDOC_MULTI_PATH_FAILURE, (0, status)), spec)
        self.assertEqual(self.get(b"k")["n"], 2 ** 63 - 1)

    def test_missing_document_and_doc_flags(self):
        r = mutate_in(self.c, b"new", (DICT_UPSERT, 0, "a", b"1"))
        self.assertEqual(r.status, S.KEY_ENOENT)
        r = mutate_in(self.c, b"new", (DICT_UPSERT, 0, "a", b"1"), doc_flags=MKDOC)
        self.assertEqual(r.status, 0)
        r = mutate_in(self.c, b"new", (DICT_UPSERT, 0, "b", b"1"), doc_flags=MKDOC)
        self.assertEqual(r.status, 0)
        r = mutate_in(self.c, b"new", (DICT_UPSERT, 0, "c", b"1"), doc_flags=ADD)
        self.assertEqual(r.status, S.KEY_EEXISTS)
        r = mutate_in(self.c, b"other", (DICT_UPSERT, 0, "c", b"1"), doc_flags=ADD)
        self.assertEqual(r.status, 0)
        self.assertEqual(self.get(b"new"), {"a": 1, "b": 1})
        self.assertEqual(self.c.one(O.GET, b"new").extras, struct.pack(">I", JSON_FLAGS))

    def test_cas_mismatch_and_match(self):
        cas = self.store(b"k", {"a": 1}).cas
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"2"), cas=cas + 1)
        self.assertEqual(r.status, S.KEY_EEXISTS)
        self.assertEqual(mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"2"), cas=cas).status, 0)

    def test_locked_document_refuses_a_mutation(self):
        self.store(b"k", {"a": 1})
        lock = self.c.one(O.GET_LOCKED, b"k", extras=struct.pack(">I", 5))
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"2"))
        self.assertEqual(r.status, S.LOCKED)
        self.assertEqual(mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"2"),
                                   cas=lock.cas).status, 0)

    def test_expiry_extras_set_and_clear_the_expiry(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"2"), expiry=50)
        self.assertEqual(r.status, 0)
        exp = lookup_results(lookup_in(self.c, b"k", (GET, XATTR, "$document.exptime")))
        _near(self, int(exp[0][1]), self.h.clock.seconds() + 50, delta=1)
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"3"), doc_flags=MKDOC, expiry=0)
        self.assertEqual(r.status, 0)
        exp = lookup_results(lookup_in(self.c, b"k", (GET, XATTR, "$document.exptime")))
        self.assertEqual(exp, [(0, b"0")])

    def test_preserve_expiry_framing_keeps_the_expiry(self):
        self.store(b"k", {"a": 1}, ttl=100)
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"2"),
                      framing=W.encode_frame_info(5))
        self.assertEqual(r.status, 0)
        exp = lookup_results(lookup_in(self.c, b"k", (GET, XATTR, "$document.exptime")))
        _near(self, int(exp[0][1]), self.h.clock.seconds() + 100, delta=1)
        self.h.clock.advance(101)
        self.assertEqual(self.c.one(O.GET, b"k").status, S.KEY_ENOENT)

    def test_whole_document_set_and_delete(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (DICT_UPSERT, XATTR, "_meta", b'{"v":1}'),
                      (SET_DOC, 0, "", b'{"b":2}'))
        self.assertEqual(r.status, 0)
        self.assertEqual(self.get(b"k"), {"b": 2})
        r = lookup_in(self.c, b"k", (GET, XATTR, "_meta"))
        self.assertEqual(lookup_results(r), [(0, b'{"v":1}')])
        self.assertEqual(mutate_in(self.c, b"k", (DELETE_DOC, 0, "", b"")).status, 0)
        self.assertEqual(self.c.one(O.GET, b"k").status, S.KEY_ENOENT)
        # the system xattr stays on the tombstone, read with ACCESS_DELETED
        r = lookup_in(self.c, b"k", (GET, XATTR, "_meta"), doc_flags=ACCESS_DELETED)
        self.assertEqual((r.status, lookup_results(r)),
                         (S.SUBDOC_SUCCESS_DELETED, [(0, b'{"v":1}')]))

    # -- xattrs and macros --------------------------------------------------------

    def test_xattrs_are_apart_from_the_body(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (DICT_UPSERT, XATTR | MKDIR_P, "app.tags", b'["x"]'),
                      (PUSH_LAST, XATTR, "app.tags", b'"y"'))
        self.assertEqual(r.status, 0)
        self.assertEqual(self.get(b"k"), {"a": 1})
        r = lookup_in(self.c, b"k", (GET, XATTR, "app"), (GET_COUNT, XATTR, "app.tags"),
                      (GET, 0, "a"))
        self.assertEqual(lookup_results(r), [(0, b'{"tags":["x","y"]}'), (0, b"2"), (0, b"1")])

    def test_macros_expand_to_the_new_cas_and_seqno(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (DICT_UPSERT, XATTR | MKDIR_P | EXPAND, "m.cas",
                                     b'"${Mutation.CAS}"'),
                      (DICT_UPSERT, XATTR | EXPAND, "m.seqno", b'"${Mutation.seqno}"'),
                      (DICT_UPSERT, XATTR | EXPAND, "m.crc", b'"${Mutation.value_crc32c}"'))
        self.assertEqual((r.status, r.value), (0, b""))  # macros return nothing on the wire
        seqno = struct.unpack(">QQ", r.extras)[1]
        m = json.loads(lookup_results(lookup_in(self.c, b"k", (GET, XATTR, "m")))[0][1])
        self.assertEqual(int(m["cas"], 16).to_bytes(8, "little"), r.cas.to_bytes(8, "big"))
        self.assertEqual(int(m["seqno"], 16), seqno)
        self.assertTrue(m["crc"].startswith("0x"))

    def test_virtual_xattr_is_read_only(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (DICT_UPSERT, XATTR, "$document.flags", b"1"))
        self.assertEqual(r.status, S.SUBDOC_XATTR_CANT_MODIFY_VATTR)
        self.assertAlive()

    def test_unknown_macro(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (DICT_UPSERT, XATTR | EXPAND, "m", b'"${Mutation.nope}"'))
        self.assertEqual(r.status, S.SUBDOC_XATTR_UNKNOWN_MACRO)

    def test_xattr_after_a_body_spec_is_invalid_xattr_order(self):
        self.store(b"k", {"a": 1})
        r = lookup_in(self.c, b"k", (GET, 0, "a"), (GET, XATTR, "_x"))
        self.assertEqual(r.status, S.SUBDOC_INVALID_XATTR_ORDER)
        self.assertAlive()

    def test_observer_sees_lookup_in_and_mutate_in(self):
        seen = []

        class Observer:
            def request_done(self, op, status, started):
                seen.append((op, status))

        self.h.factory.observer = Observer()
        c = self.h.ready()
        lookup_in(c, b"nope", (GET, 0, "a"))
        mutate_in(c, b"k", (DICT_UPSERT, 0, "a", b"1"), doc_flags=MKDOC)
        lookup_in(c, b"k", (GET, 0, "zz"))
        mutate_in(c, b"k", (DICT_ADD, 0, "a", b"2"))
        self.assertEqual(seen, [("lookup_in", S.KEY_ENOENT), ("mutate_in", 0),
                                ("lookup_in", S.SUBDOC_MULTI_PATH_FAILURE),
                                ("mutate_in", S.SUBDOC_MULTI_PATH_FAILURE)])

    # -- values across the endpoints ----------------------------------------------

    def test_written_values_read_back_through_get(self):
        r = mutate_in(self.c, b"k", (DICT_UPSERT, 0, "s", '"é"'.encode("utf-8")),
                      (DICT_UPSERT, 0, "n", b"1.5e3"), doc_flags=MKDOC)
        self.assertEqual(r.status, 0)
        got = self.c.one(O.GET, b"k")
        self.assertEqual(got.value, '{"s":"é","n":1.5e3}'.encode("utf-8"))
        self.assertEqual(self.h.bucket.get_sync(b"k").raw, got.value)

    # -- pipelining and framing ---------------------------------------------------

    def test_frames_split_at_every_offset(self):
        self.store(b"k", {"a": 1})
        data = (mutation_frame(self.c, b"k", [(COUNTER, 0, "a", b"1")])
                + lookup_frame(self.c, b"k", [(GET, 0, "a")]) + self.c.frame(O.NOOP))
        for i in range(len(data) + 1):
            out = responses(self.c.send(data[:i]) + self.c.send(data[i:]))
            self.assertEqual([(r.opcode, r.status) for r in out],
                             [(MUTATION, 0), (LOOKUP, 0), (O.NOOP, 0)], i)
            self.assertEqual(WS.decode_lookup_results(out[1].value)[0][1],
                             WS.decode_mutation_results(out[0].value)[0][2], i)

    def test_pipelined_mixed_requests_answer_in_order(self):
        self.store(b"k", {"n": 0})
        data = b"".join(mutation_frame(self.c, b"k", [(COUNTER, 0, "n", b"1")])
                        + lookup_frame(self.c, b"k", [(GET, 0, "n")]) for _ in range(5))
        out = responses(self.c.send(data))
        self.assertEqual([WS.decode_lookup_results(r.value)[0][1] for r in out[1::2]],
                         [b"1", b"2", b"3", b"4", b"5"])

    # -- hostile input (one test per case; the connection is unaffected) ---------

    def test_spec_header_past_the_value_is_einval(self):
        self.store(b"k", {"a": 1})
        value = WS.encode_lookup_specs([(GET, 0, b"a")]) + b"\xc5"
        r = self.c.one(LOOKUP, W.leb128(0) + b"k", value)
        self.assertEqual(r.status, S.EINVAL)
        self.assertAlive()

    def test_path_length_past_the_frame_is_einval(self):
        value = struct.pack(">BBH", GET, 0, 500) + b"abc"
        r = self.c.one(LOOKUP, W.leb128(0) + b"k", value)
        self.assertEqual(r.status, S.EINVAL)
        self.assertAlive()

    def test_mutation_value_length_past_the_frame_is_einval(self):
        value = struct.pack(">BBHI", DICT_UPSERT, 0, 1, 1 << 30) + b"a1"
        r = self.c.one(MUTATION, W.leb128(0) + b"k", value)
        self.assertEqual(r.status, S.EINVAL)
        self.assertAlive()

    def test_seventeen_specs_are_invalid_combo(self):
        self.store(b"k", {"a": 1})
        r = lookup_in(self.c, b"k", *[(GET, 0, "a")] * 17)
        self.assertEqual(r.status, S.SUBDOC_INVALID_COMBO)
        r = mutate_in(self.c, b"k", *[(COUNTER, 0, "a", b"1")] * 17)
        self.assertEqual(r.status, S.SUBDOC_INVALID_COMBO)
        self.assertEqual(self.get(b"k"), {"a": 1})
        self.assertEqual(lookup_in(self.c, b"k", *[(GET, 0, "a")] * 16).status, 0)
        self.assertAlive()

    def test_no_specs_are_invalid_combo(self):
        self.assertEqual(self.c.one(LOOKUP, W.leb128(0) + b"k").status, S.SUBDOC_INVALID_COMBO)
        self.assertEqual(self.c.one(MUTATION, W.leb128(0) + b"k").status,
                         S.SUBDOC_INVALID_COMBO)
        self.assertAlive()

    def test_unknown_spec_opcode_is_invalid_combo(self):
        self.store(b"k", {"a": 1})
        self.assertEqual(lookup_in(self.c, b"k", (0x77, 0, "a")).status, S.SUBDOC_INVALID_COMBO)
        self.assertEqual(mutate_in(self.c, b"k", (0x77, 0, "a", b"1")).status,
                         S.SUBDOC_INVALID_COMBO)
        self.assertAlive()

    def test_mutation_spec_in_a_lookup_is_invalid_combo(self):
        self.store(b"k", {"a": 1})
        value = WS.encode_lookup_specs([(DICT_UPSERT, 0, b"a")])
        self.assertEqual(self.c.one(LOOKUP, W.leb128(0) + b"k", value).status,
                         S.SUBDOC_INVALID_COMBO)
        self.assertEqual(mutate_in(self.c, b"k", (GET, 0, "a", b"")).status,
                         S.SUBDOC_INVALID_COMBO)
        self.assertAlive()

    def test_unknown_doc_flags_are_einval(self):
        self.store(b"k", {"a": 1})
        self.assertEqual(lookup_in(self.c, b"k", (GET, 0, "a"), doc_flags=0x80).status,
                         S.EINVAL)
        self.assertEqual(mutate_in(self.c, b"k", (COUNTER, 0, "a", b"1"),
                                   doc_flags=0x40).status, S.EINVAL)
        self.assertAlive()

    def test_doc_flags_of_the_other_call_are_einval(self):
        self.store(b"k", {"a": 1})
        self.assertEqual(lookup_in(self.c, b"k", (GET, 0, "a"), doc_flags=MKDOC).status,
                         S.EINVAL)
        self.assertEqual(mutate_in(self.c, b"k", (COUNTER, 0, "a", b"1"),
                                   doc_flags=MKDOC | ADD).status, S.EINVAL)

    def test_unsupported_doc_flags_are_not_supported(self):
        self.store(b"k", {"a": 1})
        for flags in (0x08, 0x10, ACCESS_DELETED):     # create-as-deleted, revive
            self.assertEqual(mutate_in(self.c, b"k", (COUNTER, 0, "a", b"1"),
                                       doc_flags=flags).status, S.NOT_SUPPORTED, flags)
        self.assertEqual(self.get(b"k"), {"a": 1})

    def test_bad_extras_lengths_are_einval(self):
        value = WS.encode_lookup_specs([(GET, 0, b"a")])
        for n in (2, 4, 5):
            self.assertEqual(self.c.one(LOOKUP, W.leb128(0) + b"k", value,
                                        extras=b"\x00" * n).status, S.EINVAL, n)
        value = WS.encode_mutation_specs([(COUNTER, 0, b"a", b"1")])
        for n in (2, 3, 6, 8):
            self.assertEqual(self.c.one(MUTATION, W.leb128(0) + b"k", value,
                                        extras=b"\x00" * n).status, S.EINVAL, n)
        self.assertAlive()

    def test_spec_flags_not_allowed_are_einval(self):
        self.store(b"k", {"a": 1})
        self.assertEqual(lookup_in(self.c, b"k", (GET, MKDIR_P, "a")).status, S.EINVAL)
        self.assertEqual(lookup_in(self.c, b"k", (GET, 0x80, "a")).status, S.EINVAL)

    def test_overlong_path_is_einval(self):
        self.store(b"k", {"a": 1})
        self.assertEqual(lookup_in(self.c, b"k", (GET, 0, "a" * 1025)).status, S.EINVAL)
        self.assertEqual(lookup_in(self.c, b"k", (GET, 0, "a" * 1024)).status,
                         S.SUBDOC_MULTI_PATH_FAILURE)

    def test_path_not_utf8_is_path_einval(self):
        self.store(b"k", {"a": 1})
        r = lookup_in(self.c, b"k", (GET, 0, b"\xff\xfe"))
        self.assertEqual(r.status, S.SUBDOC_MULTI_PATH_FAILURE)
        self.assertEqual(lookup_results(r), [(S.SUBDOC_PATH_EINVAL, b"")])

    def test_durability_on_a_lookup_is_einval(self):
        self.store(b"k", {"a": 1})
        r = lookup_in(self.c, b"k", (GET, 0, "a"), framing=W.durability_frame(1))
        self.assertEqual(r.status, S.EINVAL)

    def test_persist_durability_on_an_ephemeral_bucket_is_invalid_level(self):
        self.store(b"k", {"a": 1})
        r = mutate_in(self.c, b"k", (COUNTER, 0, "a", b"1"), framing=W.durability_frame(2))
        self.assertEqual(r.status, S.DURABILITY_INVALID_LEVEL)
        r = mutate_in(self.c, b"k", (COUNTER, 0, "a", b"1"), framing=W.durability_frame(1))
        self.assertEqual(r.status, 0)

    def test_unknown_collection_and_vbucket(self):
        value = WS.encode_lookup_specs([(GET, 0, b"a")])
        self.assertEqual(self.c.one(LOOKUP, W.leb128(9) + b"k", value).status,
                         S.UNKNOWN_COLLECTION)
        self.assertEqual(self.c.one(LOOKUP, W.leb128(0) + b"k", value, vbucket=1024).status,
                         S.NOT_MY_VBUCKET)
        self.assertEqual(self.c.one(LOOKUP, W.leb128(0), value).status, S.EINVAL)


class CouchbaseSubdocDeferredTests(CouchbaseSubdocTests):
    """The same through a bucket's IBucket Deferreds."""

    def make_bucket(self):
        return lambda clock: DeferredOnlyBucket(clock=clock, max_value_size=4096,
                                                   pager_interval=0)

    def test_served_through_deferreds(self):
        self.assertFalse(self.h.factory.is_sync(self.h.bucket))


class CouchbaseSubdocDurabilityTests(unittest.TestCase):
    """A persist level on mutate_in waits for the disk, as every mutation does."""

    def setUp(self):
        self.h = CbHarness(make_bucket=lambda clock: HeldDiskBucket(clock=clock,
                                                                          pager_interval=0))
        self.c = self.h.ready()

    def test_persist_waits_for_the_disk(self):
        data = mutation_frame(self.c, b"k", [(DICT_UPSERT, 0, "a", b"1")], doc_flags=MKDOC,
                              framing=W.durability_frame(3))
        self.assertEqual(self.c.send(data + self.c.frame(O.NOOP)), b"")
        self.h.bucket.commit()
        out = responses(self.c.take())
        self.assertEqual([(r.opcode, r.status) for r in out], [(MUTATION, 0), (O.NOOP, 0)])

    def test_persist_timeout_is_ambiguous(self):
        data = mutation_frame(self.c, b"k", [(DICT_UPSERT, 0, "a", b"1")], doc_flags=MKDOC,
                              framing=W.durability_frame(2, 500))
        self.assertEqual(self.c.send(data), b"")
        self.h.clock.advance(0.5)
        [r] = responses(self.c.take())
        self.assertEqual(r.status, S.SYNC_WRITE_AMBIGUOUS)


@implementer_only(IBucket)
class _SubdocDeferredPersistentBucket(PersistentBucket):
    """A persistent bucket served through its Deferreds (durability by ``endure``)."""


class CouchbaseSubdocPersistentTests(unittest.TestCase):
    """mutate_in with a persist level on a real PersistentBucket answers once on disk."""

    bucket_class = PersistentBucket

    def setUp(self):
        base = tempfile.mkdtemp(prefix="txcb-cbsubdoc-")
        self.addCleanup(shutil.rmtree, base, True)
        self.dir = os.path.join(base, "data")

        def make(clock):
            b = self.bucket_class(self.dir, clock=clock, reactor=reactor)
            self.addCleanup(b.close)
            return b
        self.h = CbHarness(make_bucket=make)
        self.c = self.h.ready()

    @inlineCallbacks
    def test_durable_mutate_in_is_on_disk_when_answered(self):
        data = mutation_frame(self.c, b"k", [(DICT_UPSERT, XATTR, "_x", b"2"),
                                             (DICT_UPSERT, 0, "a", b"1")],
                              doc_flags=MKDOC, framing=W.durability_frame(3, 5000))
        out = responses(self.c.send(data))
        deadline = time.monotonic() + 10
        while not out and time.monotonic() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
            out = responses(self.c.take())
        [r] = out
        self.assertEqual(r.status, 0)
        seqno = struct.unpack(">QQ", r.extras)[1]
        stats = self.h.bucket.stats_sync()
        self.assertGreaterEqual(int(stats["persisted_seqno"]), seqno)
        yield self.h.bucket.close()
        again = PersistentBucket(self.dir, reactor=reactor)
        self.addCleanup(again.close)
        got = again.lookup_in_sync(b"k", *_specs_x_then_doc())
        self.assertEqual([x.value for x in got.results], [b"2", b'{"a":1}'])


    @inlineCallbacks
    def test_durable_whole_document_delete(self):
        self.assertEqual(mutate_in(self.c, b"k", (DICT_UPSERT, 0, "a", b"1"),
                                   doc_flags=MKDOC).status, 0)
        out = responses(self.c.send(mutation_frame(
            self.c, b"k", [(DELETE_DOC, 0, "", b"")], framing=W.durability_frame(3, 5000))))
        deadline = time.monotonic() + 10
        while not out and time.monotonic() < deadline:
            yield deferLater(reactor, 0.01, lambda: None)
            out = responses(self.c.take())
        [r] = out
        self.assertEqual(r.status, 0)
        seqno = struct.unpack(">QQ", r.extras)[1]
        self.assertGreaterEqual(int(self.h.bucket.stats_sync()["persisted_seqno"]), seqno)
        self.assertEqual(self.c.one(O.GET, b"k").status, S.KEY_ENOENT)


class CouchbaseSubdocDeferredPersistentTests(CouchbaseSubdocPersistentTests):
    """The same through IBucket: mutate_in's Deferred, then endure (check_removed for a delete)."""

    bucket_class = _SubdocDeferredPersistentBucket

    def test_served_through_deferreds(self):
        self.assertFalse(self.h.factory.is_sync(self.h.bucket))


def _specs_x_then_doc():
    import txcb.subdocument as TSD
    return TSD.get("_x", xattr=True), TSD.get_fulldoc()


# -- the official SDK against a real twistd --------------------------------------------

def _key():
    return "sd-" + uuid.uuid4().hex[:12]


class SdkSubdocTests(unittest.TestCase):
    """lookup_in / mutate_in through the SDK's sync API on the shared ephemeral server."""

    skip = SKIP_SDK

    def setUp(self):
        self.server = shared_txcb()
        self.cluster, self.bucket, self.coll = connect(self, self.server.port)

    def doc(self, value=None):
        k = _key()
        self.coll.upsert(k, value if value is not None else
                         {"a": 1, "l": [1, 2], "o": {"x": 1}, "n": 10})
        return k

    def test_lookup_in_each_spec_kind(self):
        k = self.doc()
        r = self.coll.lookup_in(k, [SD.get("a"), SD.exists("zz"), SD.exists("o.x"),
                                    SD.count("l"), SD.get("o")])
        self.assertEqual(r.content_as[int](0), 1)
        self.assertFalse(r.exists(1))
        self.assertTrue(r.exists(2))
        self.assertEqual(r.content_as[int](3), 2)
        self.assertEqual(r.content_as[dict](4), {"x": 1})
        self.assertEqual(r.cas, self.coll.get(k).cas)

    def test_lookup_in_missing_path_raises_path_not_found(self):
        k = self.doc()
        r = self.coll.lookup_in(k, [SD.get("zz")])
        with self.assertRaises(PathNotFoundException):
            r.content_as[int](0)

    def test_lookup_in_missing_document(self):
        with self.assertRaises(DocumentNotFoundException):
            self.coll.lookup_in(_key(), [SD.get("a")])

    def test_mutate_in_each_spec_kind(self):
        k = self.doc({"a": 1, "r": 0, "gone": 1, "l": [2], "u": [1], "n": 10})
        r = self.coll.mutate_in(k, [
            SD.insert("b", "new"), SD.upsert("c.d", True, create_parents=True),
            SD.remove("gone"), SD.replace("r", []), SD.array_append("l", 3, 4),
            SD.array_prepend("l", 1), SD.array_insert("l[1]", "x"),
            SD.array_addunique("u", 2), SD.increment("n", 5), SD.decrement("n", 2)])
        self.assertEqual(r.content_as[int](8), 15)
        self.assertEqual(r.content_as[int](9), 13)
        self.assertEqual(self.coll.get(k).content_as[dict], {
            "a": 1, "r": [], "l": [1, "x", 2, 3, 4], "u": [1, 2], "n": 13, "b": "new",
            "c": {"d": True}})
        self.assertEqual(self.coll.get(k).cas, r.cas)
        token = r.mutation_token()
        self.assertGreater(token.sequence_number, 0)

    def test_mutate_in_errors_as_the_sdk_raises_them(self):
        k = self.doc()
        with self.assertRaises(PathExistsException):
            self.coll.mutate_in(k, [SD.insert("a", 2)])
        with self.assertRaises(PathNotFoundException):
            self.coll.mutate_in(k, [SD.replace("zz", 2)])
        with self.assertRaises(PathMismatchException):
            self.coll.mutate_in(k, [SD.array_append("a", 2)])
        with self.assertRaises(PathExistsException):
            self.coll.mutate_in(k, [SD.array_addunique("l", 1)])
        with self.assertRaises(DocumentNotFoundException):
            self.coll.mutate_in(_key(), [SD.upsert("a", 1)])
        with self.assertRaises(CasMismatchException):
            self.coll.mutate_in(k, [SD.upsert("a", 1)], MutateInOptions(cas=1))
        self.assertEqual(self.coll.get(k).content_as[dict]["a"], 1)

    def test_counter_on_a_non_number_raises(self):
        k = self.doc({"s": "text", "n": 1})
        with self.assertRaises(PathMismatchException):
            self.coll.mutate_in(k, [SD.increment("s", 1)])

    def test_document_not_json_raises(self):
        k = _key()
        self.coll.upsert(k, "plain text")
        with self.assertRaises(DocumentNotJsonException):
            self.coll.mutate_in(k, [SD.upsert("a", 1)])

    def test_invalid_value_raises(self):
        k = self.doc()
        with self.assertRaises(InvalidValueException):      # VALUE_CANTINSERT
            self.coll.mutate_in(k, [SD.array_addunique("l", {"not": "primitive"})])
        with self.assertRaises(PathNotFoundException):      # past the array's end
            self.coll.mutate_in(k, [SD.array_insert("l[9]", 1)])

    def test_store_semantics(self):
        k = _key()
        with self.assertRaises(DocumentNotFoundException):
            self.coll.mutate_in(k, [SD.upsert("a", 1)], MutateInOptions(
                store_semantics=StoreSemantics.REPLACE))
        self.coll.mutate_in(k, [SD.upsert("a", 1)], MutateInOptions(
            store_semantics=StoreSemantics.INSERT))
        with self.assertRaises(DocumentExistsException):
            self.coll.mutate_in(k, [SD.upsert("a", 2)], MutateInOptions(
                store_semantics=StoreSemantics.INSERT))
        self.coll.mutate_in(k, [SD.upsert("b", 2)], MutateInOptions(
            store_semantics=StoreSemantics.UPSERT))
        self.coll.mutate_in(k + "-u", [SD.upsert("c", 3)], MutateInOptions(
            store_semantics=StoreSemantics.UPSERT))
        self.assertEqual(self.coll.get(k).content_as[dict], {"a": 1, "b": 2})
        self.assertEqual(self.coll.get(k + "-u").content_as[dict], {"c": 3})

    def test_xattrs_and_macros(self):
        k = self.doc()
        r = self.coll.mutate_in(k, [
            SD.upsert("meta.cas", SD.MutationMacro.cas(), xattr=True, create_parents=True),
            SD.upsert("meta.seq", SD.MutationMacro.seq_no(), xattr=True),
            SD.upsert("meta.crc", SD.MutationMacro.value_crc32c(), xattr=True),
            SD.upsert("tag", "t1", xattr=True)])
        got = self.coll.lookup_in(k, [SD.get("meta", xattr=True), SD.get("tag", xattr=True),
                                      SD.get("a")])
        meta = got.content_as[dict](0)
        self.assertEqual(int(meta["cas"], 16).to_bytes(8, "little"), r.cas.to_bytes(8, "big"))
        self.assertEqual(int(meta["seq"], 16), r.mutation_token().sequence_number)
        self.assertTrue(meta["crc"].startswith("0x"))
        self.assertEqual(got.content_as[str](1), "t1")
        self.assertEqual(got.content_as[int](2), 1)
        self.assertNotIn("tag", self.coll.get(k).content_as[dict])

    def test_get_with_expiry(self):
        k = _key()
        self.coll.upsert(k, {"a": 1}, expiry=timedelta(seconds=100))
        r = self.coll.get(k, GetOptions(with_expiry=True))
        self.assertEqual(r.content_as[dict], {"a": 1})
        _near(self, r.expiry_time.timestamp(), time.time() + 100, delta=5)
        self.coll.upsert(k + "-none", {"a": 1})
        self.assertIsNone(self.coll.get(k + "-none", GetOptions(with_expiry=True)).expiry_time)

    def test_get_with_projection(self):
        k = self.doc()
        r = self.coll.get(k, GetOptions(project=["a", "o.x"]))
        self.assertEqual(r.content_as[dict], {"a": 1, "o": {"x": 1}})
        # a projected path that is missing is left out (0xcc, PATH_ENOENT for its spec)
        r = self.coll.get(k, GetOptions(project=["o.x", "zz.y"], with_expiry=True))
        self.assertEqual(r.content_as[dict], {"o": {"x": 1}})
        self.assertIsNone(r.expiry_time)
        with self.assertRaises(DocumentNotFoundException):
            self.coll.get(_key(), GetOptions(with_expiry=True))

    def test_mutate_in_expiry_and_preserve_expiry(self):
        k = self.doc()
        self.coll.mutate_in(k, [SD.upsert("a", 2)], MutateInOptions(
            expiry=timedelta(seconds=200)))
        r = self.coll.get(k, GetOptions(with_expiry=True))
        _near(self, r.expiry_time.timestamp(), time.time() + 200, delta=5)

    def test_mutate_in_preserve_expiry(self):
        k = _key()
        self.coll.upsert(k, {"a": 1}, expiry=timedelta(seconds=300))
        self.coll.mutate_in(k, [SD.upsert("a", 2)], MutateInOptions(preserve_expiry=True))
        r = self.coll.get(k, GetOptions(with_expiry=True))
        self.assertEqual(r.content_as[dict], {"a": 2})
        _near(self, r.expiry_time.timestamp(), time.time() + 300, delta=5)
        self.coll.mutate_in(k, [SD.upsert("a", 3)])     # without it the expiry is cleared
        self.assertIsNone(self.coll.get(k, GetOptions(with_expiry=True)).expiry_time)

    def test_virtual_xattrs(self):
        k = self.doc()
        r = self.coll.lookup_in(k, [SD.get("$document", xattr=True),
                                    SD.get("$vbucket", xattr=True)])
        document = r.content_as[dict](0)
        self.assertEqual((int(document["CAS"], 16), document["flags"], document["deleted"]),
                         (self.coll.get(k).cas, 0x02000000, False))
        self.assertIn("HLC", r.content_as[dict](1))

    def test_seventeen_specs_raise_invalid_argument(self):
        k = self.doc()
        with self.assertRaises(InvalidArgumentException):
            self.coll.lookup_in(k, [SD.get("a")] * 17)
        with self.assertRaises(InvalidArgumentException):
            self.coll.mutate_in(k, [SD.upsert("a", 2)] * 17)
        self.assertEqual(self.coll.get(k).content_as[dict]["a"], 1)


class SdkSubdocServerTests(unittest.TestCase):
    """Servers of their own: a persistent bucket (durability) and the netstring endpoint."""

    skip = SKIP_SDK

    def own(self, args):
        server = TxcbTwistd(list(args)).start()
        self.addCleanup(server.remove)
        return server

    def test_durable_mutate_in_on_a_persistent_bucket(self):
        server = self.own([])
        _c, _b, coll = connect(self, server.port)
        k = _key()
        coll.upsert(k, {"a": 1})
        for level in (Durability.MAJORITY, Durability.MAJORITY_AND_PERSIST_TO_ACTIVE,
                      Durability.PERSIST_TO_MAJORITY):
            coll.mutate_in(k, [SD.increment("a", 1)], MutateInOptions(
                durability=ServerDurability(level)))
        server.kill()
        server.start()
        _c, _b, coll = connect(self, server.port)
        self.assertEqual(coll.get(k).content_as[dict], {"a": 4})

    def test_mutate_in_values_read_back_through_netstring(self):
        from txcb.client.blocking import Bucket
        ns_port, = free_ports(1)
        server = self.own(["--ephemeral", "--port", str(ns_port)])
        _c, _b, coll = connect(self, server.port)
        ns = Bucket("tcp:127.0.0.1:%d" % (ns_port,))
        self.addCleanup(ns.close)
        k = _key()
        r = coll.mutate_in(k, [SD.upsert("a", [1, "é"]), SD.upsert("x", 1, xattr=True)],
                           MutateInOptions(store_semantics=StoreSemantics.UPSERT))
        got = ns.get(k)
        raw = coll.get(k, GetOptions(transcoder=RawJSONTranscoder())).content_as[bytes]
        self.assertEqual((got.raw, got.flags, got.cas), (raw, 0x02000000, r.cas))
        self.assertEqual(json.loads(got.raw), {"a": [1, "é"]})
        import txcb.subdocument as TSD
        x = ns.lookup_in(k, TSD.get("x", xattr=True), TSD.get("a"))
        self.assertEqual((x[0], x[1]), (1, [1, "é"]))
