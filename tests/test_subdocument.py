"""
The sub-document engine (txcb.subdocument): Couchbase's path syntax, every
spec kind and error as tables, hostile paths and spec lists, all or nothing,
xattrs, virtual xattrs, macros and counters at the int64 bounds.

Expected statuses and documents follow kv_engine (docs/SubDocument.md,
daemon/subdocument*.cc, tests/testapp/testapp_subdoc.cc) and subjson
(subdoc/operations.cc, tests/t_ops.cc).
"""

import json
import random
import subprocess
import sys

from twisted.trial.unittest import SynchronousTestCase

import txcb.subdocument as SD
from tests.support import ROOT
from txcb.errors import KeyExistsError, NotFoundError, TooBigError
from txcb.subdocument import _path as sd_path  # the parser, to walk decoded copies
from txcb.subdocument import (
    DocFlag, DocumentMeta, Opcode, PathFlag, Spec, Status, SubdocError, SubdocResult)

S = Status
I64_MAX, I64_MIN = (1 << 63) - 1, -(1 << 63)


def run_lookup(doc, *specs, xattrs=None, meta=DocumentMeta(), doc_flags=0):
    return SD.lookup(doc, xattrs or {}, list(specs), meta, doc_flags)


def run_mutate(doc, *specs, xattrs=None, meta=DocumentMeta(), doc_flags=0, **kw):
    return SD.mutate(doc, xattrs or {}, list(specs), meta, doc_flags, **kw)


class SubdocConstantsTests(SynchronousTestCase):
    """The numbers are kv_engine's (status.h, opcode.h, protocol_binary.h)."""

    TABLE = [
        (Opcode.GET, 0xC5), (Opcode.EXISTS, 0xC6), (Opcode.DICT_ADD, 0xC7),
        (Opcode.DICT_UPSERT, 0xC8), (Opcode.DELETE, 0xC9), (Opcode.REPLACE, 0xCA),
        (Opcode.ARRAY_PUSH_LAST, 0xCB), (Opcode.ARRAY_PUSH_FIRST, 0xCC),
        (Opcode.ARRAY_INSERT, 0xCD), (Opcode.ARRAY_ADD_UNIQUE, 0xCE), (Opcode.COUNTER, 0xCF),
        (Opcode.MULTI_LOOKUP, 0xD0), (Opcode.MULTI_MUTATION, 0xD1), (Opcode.GET_COUNT, 0xD2),
        (Opcode.GET_DOC, 0x00), (Opcode.SET_DOC, 0x01), (Opcode.DELETE_DOC, 0x04),
        (PathFlag.MKDIR_P, 0x01), (PathFlag.XATTR, 0x04), (PathFlag.EXPAND_MACROS, 0x10),
        (DocFlag.MKDOC, 0x01), (DocFlag.ADD, 0x02), (DocFlag.ACCESS_DELETED, 0x04),
        (S.PATH_ENOENT, 0xC0), (S.PATH_MISMATCH, 0xC1), (S.PATH_EINVAL, 0xC2),
        (S.PATH_E2BIG, 0xC3), (S.DOC_E2DEEP, 0xC4), (S.VALUE_CANTINSERT, 0xC5),
        (S.DOC_NOTJSON, 0xC6), (S.NUM_ERANGE, 0xC7), (S.DELTA_EINVAL, 0xC8),
        (S.PATH_EEXISTS, 0xC9), (S.VALUE_ETOODEEP, 0xCA), (S.INVALID_COMBO, 0xCB),
        (S.MULTI_PATH_FAILURE, 0xCC), (S.SUCCESS_DELETED, 0xCD),
        (S.XATTR_INVALID_FLAG_COMBO, 0xCE), (S.XATTR_INVALID_KEY_COMBO, 0xCF),
        (S.XATTR_UNKNOWN_MACRO, 0xD0), (S.XATTR_UNKNOWN_VATTR, 0xD1),
        (S.XATTR_CANT_MODIFY_VATTR, 0xD2), (S.MULTI_PATH_FAILURE_DELETED, 0xD3),
        (S.INVALID_XATTR_ORDER, 0xD4), (S.XATTR_UNKNOWN_VATTR_MACRO, 0xD5),
        (S.XATTR_EINVAL, 0x87), (SD.MAX_SPECS, 16), (SD.MAX_PATH_LEN, 1024),
        (SD.MAX_DEPTH, 32),
    ]

    def test_numbers(self):
        for got, want in self.TABLE:
            self.assertEqual(got, want)

    def test_engine_imports_no_twisted(self):
        code = ("import sys, txcb.subdocument; print(sorted(m for m in sys.modules "
                "if m.split('.')[0] in ('twisted', 'zope')))")
        out = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT)
        self.assertEqual(out.strip(), b"[]")


class SubdocPathSyntaxTests(SynchronousTestCase):
    """Paths that parse, through GET on a document that has them all."""

    DOC = json.dumps({
        "a": {"b": [10, 20, {"c": "deep"}]}, "dot.ted": 1, "back`tick": 2,
        "br[ack]et": 3, 'quo"te': 4, "x": [[1, 2], [3]], "": 5,
    }).encode()

    TABLE = [
        ("a.b[0]", b"10"), ("a.b[2].c", b'"deep"'), ("a.b[-1].c", b'"deep"'),
        ("`dot.ted`", b"1"), ("`back``tick`", b"2"), ("`br[ack]et`", b"3"),
        ('quo\\"te', b"4"), ("x[1][0]", b"3"), ("x[-1][-1]", b"3"), ("x[0].", b"[1, 2]"),
        ("x[]", b"[1, 2]"),  # subjson reads [] as [0]
        ("a.", json.dumps({"b": [10, 20, {"c": "deep"}]}).encode()),
    ]

    def test_paths(self):
        for path, value in self.TABLE:
            found = run_lookup(self.DOC, SD.get(path))
            self.assertEqual(found.results[0], (S.SUCCESS, value), path)

    HOSTILE = [
        ("a[0", S.PATH_EINVAL), ("a]", S.PATH_EINVAL), ("a[x]", S.PATH_EINVAL),
        ("a[-2]", S.PATH_EINVAL), ("a[-0]", S.PATH_EINVAL), ("a[0]b", S.PATH_EINVAL),
        ("a[1.5]", S.PATH_EINVAL), ("`a", S.PATH_EINVAL), ("a`b", S.PATH_EINVAL),
        ("``", S.PATH_EINVAL), ("a..b", S.PATH_EINVAL), (".a", S.PATH_EINVAL),
        ('a"b', S.PATH_EINVAL), ("a\\u0041", S.PATH_EINVAL), ("a\\x", S.PATH_EINVAL),
        ("a\\", S.PATH_EINVAL), ("a\nb", S.PATH_EINVAL), ("[", S.PATH_EINVAL),
        ("a[٣]", S.PATH_EINVAL),
        (".".join(["a"] * 32), S.PATH_E2BIG), ("a" + "[0]" * 31, S.PATH_E2BIG),
    ]

    def test_hostile_paths(self):
        for path, status in self.HOSTILE:
            found = run_lookup(self.DOC, SD.get(path))
            self.assertEqual(found.results[0].status, status, path)
            self.assertEqual(found.status, S.MULTI_PATH_FAILURE)

    def test_31_components_is_the_limit(self):
        ok = run_lookup(b"{}", SD.get(".".join(["a"] * 31)))
        self.assertEqual(ok.results[0].status, S.PATH_ENOENT)

    def test_path_longer_than_1024_bytes_is_refused(self):
        run_lookup(b"{}", SD.get("a" * 1024))
        e = self.assertRaises(SubdocError, run_lookup, b"{}", SD.get("é" * 513))
        self.assertEqual((e.status, e.index, e.rc), (S.EINVAL, None, S.EINVAL))


class SubdocLookupTableTests(SynchronousTestCase):
    """One row per lookup spec kind and error: (doc, spec, status, value)."""

    DOC = b'{"n": 1.50, "s": "str", "o": {"k": [1, {"x": null}]}, "e": [], "z": {}}'
    TABLE = [
        (DOC, SD.get("n"), S.SUCCESS, b"1.50"),
        (DOC, SD.get("o"), S.SUCCESS, b'{"k": [1, {"x": null}]}'),
        (DOC, SD.get("o.k[1].x"), S.SUCCESS, b"null"),
        (DOC, SD.get("missing"), S.PATH_ENOENT, None),
        (DOC, SD.get("o.k[5]"), S.PATH_ENOENT, None),
        (DOC, SD.get("e[-1]"), S.PATH_ENOENT, None),
        (DOC, SD.get("s.x"), S.PATH_MISMATCH, None),
        (DOC, SD.get("o[0]"), S.PATH_MISMATCH, None),
        (DOC, SD.get("o.k.x"), S.PATH_MISMATCH, None),
        (DOC, SD.exists("o.k"), S.SUCCESS, None),
        (DOC, SD.exists("o.q"), S.PATH_ENOENT, None),
        (DOC, SD.get_count("o.k"), S.SUCCESS, b"2"),
        (DOC, SD.get_count("o"), S.SUCCESS, b"1"),
        (DOC, SD.get_count("e"), S.SUCCESS, b"0"),
        (DOC, SD.get_count("z"), S.SUCCESS, b"0"),
        (DOC, SD.get_count(""), S.SUCCESS, b"5"),
        (DOC, SD.get_count("s"), S.PATH_MISMATCH, None),
        (DOC, SD.get_count("q"), S.PATH_ENOENT, None),
        (DOC, SD.get_fulldoc(), S.SUCCESS, DOC),
        (b"[1,2]", SD.get("[1]"), S.SUCCESS, b"2"),
        (b"not json", SD.get("a"), S.DOC_NOTJSON, None),
        (b"not json", SD.get_fulldoc(), S.SUCCESS, b"not json"),
        (b'{"a":1', SD.get("a"), S.DOC_NOTJSON, None),
        (b'{"a":NaN}', SD.get("a"), S.DOC_NOTJSON, None),
        (b'{"a":"\xff"}', SD.get("a"), S.DOC_NOTJSON, None),
        (b"", SD.get_fulldoc(), S.PATH_ENOENT, None),
        (b"[" * 33 + b"]" * 33, SD.get("[0]"), S.DOC_E2DEEP, None),
        (b"[" * 31 + b"1" + b"]" * 31, SD.get("[0]" * 30), S.SUCCESS, b"[1]"),
    ]

    def test_table(self):
        for doc, spec, status, value in self.TABLE:
            found = run_lookup(doc, spec)
            self.assertEqual(found.results, [(status, value)], (doc[:40], spec))
            self.assertEqual(found.status,
                             S.SUCCESS if status == S.SUCCESS else S.MULTI_PATH_FAILURE)

    def test_each_lookup_has_its_own_status(self):
        found = run_lookup(self.DOC, SD.get("n"), SD.get("nope"), SD.exists("s"),
                           SD.get("s.x"))
        self.assertEqual([r.status for r in found.results],
                         [S.SUCCESS, S.PATH_ENOENT, S.SUCCESS, S.PATH_MISMATCH])
        self.assertEqual(found.status, S.MULTI_PATH_FAILURE)

    def test_missing_document(self):
        self.assertRaises(NotFoundError, run_lookup, None, SD.get("a"))


class SubdocMutationTableTests(SynchronousTestCase):
    """One row per mutation spec kind and error: (doc, spec, status, new doc)."""

    DOC = b'{"a": 1.50, "o": {"k": [1, 2]}, "e": [], "s": "x"}'
    TABLE = [
        # dict_upsert / dict_add (insert)
        (DOC, SD.upsert("b", True), S.SUCCESS, b'{"a": 1.50, "o": {"k": [1, 2]}, "e": [], '
                                               b'"s": "x","b":true}'),
        (DOC, SD.upsert("a", [1]), S.SUCCESS, b'{"a": [1], "o": {"k": [1, 2]}, "e": [], '
                                              b'"s": "x"}'),
        (b"{}", SD.upsert("p.q", 1), S.PATH_ENOENT, None),
        (b"{}", SD.upsert("p.q.r", 1, create_parents=True), S.SUCCESS,
         b'{"p":{"q":{"r":1}}}'),
        (b'{"p":[]}', SD.upsert("p[0].q", 1, create_parents=True), S.PATH_ENOENT, None),
        (b"{}", SD.upsert("p[0]", 1), S.PATH_EINVAL, None),
        (b'{"p":[]}', SD.upsert("p[0]", 1), S.PATH_EINVAL, None),
        (b'{"s":"x"}', SD.upsert("s.t", 1), S.PATH_MISMATCH, None),
        (b"{}", Spec(Opcode.DICT_UPSERT, "a", b"{bad"), S.VALUE_CANTINSERT, None),
        (b"{}", Spec(Opcode.DICT_UPSERT, "a", b"1,2"), S.VALUE_CANTINSERT, None),
        (b"{}", Spec(Opcode.DICT_UPSERT, "a", b"NaN"), S.VALUE_CANTINSERT, None),
        (b"{}", Spec(Opcode.DICT_UPSERT, "a", b'"\xff"'), S.VALUE_CANTINSERT, None),
        (b"{}", SD.insert("a", "v"), S.SUCCESS, b'{"a":"v"}'),
        (b'{"a":0}', SD.insert("a", "v"), S.PATH_EEXISTS, None),
        (b'{"x":0}', SD.insert("```b`.c", 1, create_parents=True), S.SUCCESS,
         b'{"x":0,"`b":{"c":1}}'),
        # replace
        (DOC, SD.replace("o.k[-1]", "two"), S.SUCCESS,
         b'{"a": 1.50, "o": {"k": [1, "two"]}, "e": [], "s": "x"}'),
        (DOC, SD.replace("q", 1), S.PATH_ENOENT, None),
        (DOC, SD.replace("e[0]", 1), S.PATH_ENOENT, None),
        # remove
        (DOC, SD.remove("a"), S.SUCCESS, b'{"o": {"k": [1, 2]}, "e": [], "s": "x"}'),
        (DOC, SD.remove("s"), S.SUCCESS, b'{"a": 1.50, "o": {"k": [1, 2]}, "e": []}'),
        (DOC, SD.remove("o.k[0]"), S.SUCCESS, b'{"a": 1.50, "o": {"k": [2]}, "e": [], '
                                              b'"s": "x"}'),
        (b'{"k":[1]}', SD.remove("k[-1]"), S.SUCCESS, b'{"k":[]}'),
        (DOC, SD.remove("q"), S.PATH_ENOENT, None),
        # array_append / array_prepend
        (DOC, SD.array_append("o.k", 3, 4), S.SUCCESS,
         b'{"a": 1.50, "o": {"k": [1, 2,3,4]}, "e": [], "s": "x"}'),
        (DOC, SD.array_append("e", {"x": 1}), S.SUCCESS,
         b'{"a": 1.50, "o": {"k": [1, 2]}, "e": [{"x":1}], "s": "x"}'),
        (DOC, SD.array_prepend("o.k", 0), S.SUCCESS,
         b'{"a": 1.50, "o": {"k": [0,1, 2]}, "e": [], "s": "x"}'),
        (b"[1]", SD.array_append("", 2), S.SUCCESS, b"[1,2]"),
        (b"[]", SD.array_prepend("", 2), S.SUCCESS, b"[2]"),
        (b"{}", SD.array_append("", 2), S.PATH_MISMATCH, None),
        (b"5", SD.array_append("", 2), S.DOC_NOTJSON, None),  # as subjson
        (DOC, SD.array_append("s", 1), S.PATH_MISMATCH, None),
        (DOC, SD.array_append("q", 1), S.PATH_ENOENT, None),
        (b"{}", SD.array_append("q.r", 1, create_parents=True), S.SUCCESS,
         b'{"q":{"r":[1]}}'),
        (b"{}", Spec(Opcode.ARRAY_PUSH_LAST, "q", b"1,"), S.VALUE_CANTINSERT, None),
        # array_insert
        (b'{"k":[1,3]}', SD.array_insert("k[1]", 2), S.SUCCESS, b'{"k":[1,2,3]}'),
        (b'{"k":[1,3]}', SD.array_insert("k[2]", 4), S.SUCCESS, b'{"k":[1,3,4]}'),
        (b'{"k":[]}', SD.array_insert("k[0]", 4), S.SUCCESS, b'{"k":[4]}'),
        (b'{"k":[1,3]}', SD.array_insert("k[3]", 4), S.PATH_ENOENT, None),
        (b'{"k":[1,3]}', SD.array_insert("k[-1]", 4), S.PATH_EINVAL, None),
        (b'{"k":[1,3]}', SD.array_insert("k", 4), S.PATH_EINVAL, None),
        (b'{"k":{}}', SD.array_insert("k[0]", 4), S.PATH_MISMATCH, None),
        (b"{}", SD.array_insert("k[0]", 4), S.PATH_ENOENT, None),
        # array_addunique
        (b'{"t":["a",1]}', SD.array_addunique("t", "b"), S.SUCCESS, b'{"t":["a",1,"b"]}'),
        (b'{"t":["a",1]}', SD.array_addunique("t", "a"), S.PATH_EEXISTS, None),
        (b'{"t":["a",1]}', SD.array_addunique("t", 1), S.PATH_EEXISTS, None),
        (b'{"t":["a",1.0]}', SD.array_addunique("t", 1), S.SUCCESS, b'{"t":["a",1.0,1]}'),
        (b'{"t":["1"]}', SD.array_addunique("t", 1), S.SUCCESS, b'{"t":["1",1]}'),
        (b'{"t":[[1]]}', SD.array_addunique("t", 1), S.PATH_MISMATCH, None),
        (b'{"t":[]}', SD.array_addunique("t", [1]), S.VALUE_CANTINSERT, None),
        (b'{"t":[]}', Spec(Opcode.ARRAY_ADD_UNIQUE, "t", b"1,2"), S.VALUE_CANTINSERT, None),
        (b'{"t":{}}', SD.array_addunique("t", 1), S.PATH_MISMATCH, None),
        (b"{}", SD.array_addunique("t", 1, create_parents=True), S.SUCCESS, b'{"t":[1]}'),
        # counter
        (b'{"c":10}', SD.counter("c", 5), S.SUCCESS, b'{"c":15}'),
        (b'{"c":10}', SD.counter("c", -15), S.SUCCESS, b'{"c":-5}'),
        (b"{}", SD.counter("c", 3), S.SUCCESS, b'{"c":3}'),
        (b"{}", SD.counter("p.c", 3), S.PATH_ENOENT, None),
        (b"{}", SD.counter("p.c", 3, create_parents=True), S.SUCCESS, b'{"p":{"c":3}}'),
        (b'{"c":[]}', SD.counter("c[0]", 3), S.PATH_ENOENT, None),
        (b'{"c":1.5}', SD.counter("c", 1), S.PATH_MISMATCH, None),
        (b'{"c":1e3}', SD.counter("c", 1), S.PATH_MISMATCH, None),
        (b'{"c":"1"}', SD.counter("c", 1), S.PATH_MISMATCH, None),
        (b'{"c":1}', Spec(Opcode.COUNTER, "c", b"0"), S.DELTA_EINVAL, None),
        (b'{"c":1}', Spec(Opcode.COUNTER, "c", b"1.0"), S.DELTA_EINVAL, None),
        (b'{"c":1}', Spec(Opcode.COUNTER, "c", b"01"), S.DELTA_EINVAL, None),
        (b'{"c":1}', Spec(Opcode.COUNTER, "c", b"+1"), S.DELTA_EINVAL, None),
        (b'{"c":1}', Spec(Opcode.COUNTER, "c", b"x"), S.DELTA_EINVAL, None),
        (b'{"c":1}', Spec(Opcode.COUNTER, "c", str(I64_MAX + 1).encode()), S.DELTA_EINVAL,
         None),
        # memcached checks the body is JSON before subjson looks at the delta
        (b"not json", Spec(Opcode.COUNTER, "c", b"0"), S.DOC_NOTJSON, None),
        # whole document
        (DOC, SD.upsert_fulldoc({"new": 1}), S.SUCCESS, b'{"new":1}'),
        (b"raw", SD.upsert("a", 1), S.DOC_NOTJSON, None),
        (b"raw", Spec(Opcode.SET_DOC, "", b"also raw"), S.SUCCESS, b"also raw"),
        # depth
        (b"{}", SD.upsert(".".join(["a"] * 30), 1, create_parents=True), S.SUCCESS,
         b'{"a":' * 30 + b"1" + b"}" * 30),
        (b"{}", SD.upsert(".".join(["a"] * 31), 1, create_parents=True), S.SUCCESS,
         b'{"a":' * 31 + b"1" + b"}" * 31),
        (b"{}", SD.upsert(".".join(["a"] * 31), [1], create_parents=True),
         S.VALUE_ETOODEEP, None),
        (b"{}", Spec(Opcode.DICT_UPSERT, "a", b"[" * 31 + b"]" * 31), S.SUCCESS,
         b'{"a":' + b"[" * 31 + b"]" * 31 + b"}"),
        (b"{}", Spec(Opcode.DICT_UPSERT, "a", b"[" * 32 + b"]" * 32), S.VALUE_ETOODEEP, None),
    ]

    def test_table(self):
        for doc, spec, status, new in self.TABLE:
            where = (doc[:40], spec)
            if status == S.SUCCESS:
                done = run_mutate(doc, spec)
                self.assertEqual(done.body, new, where)
                self.assertFalse(done.created)
            else:
                e = self.assertRaises(SubdocError, run_mutate, doc, spec)
                self.assertEqual((e.status, e.index, e.rc), (status, 0, S.MULTI_PATH_FAILURE),
                                 where)

    def test_counter_returns_its_new_value(self):
        done = run_mutate(b'{"c":1}', SD.upsert("x", 0), SD.counter("c", 41))
        self.assertEqual(done.results, [(S.SUCCESS, None), (S.SUCCESS, b"42")])

    def test_untouched_bytes_are_kept(self):
        doc = b'{ "f": 1.10,\n  "g": 1E+2, "u": "\\u00e9" }'
        done = run_mutate(doc, SD.upsert("h", 1))
        self.assertEqual(done.body, b'{ "f": 1.10,\n  "g": 1E+2, "u": "\\u00e9" ,"h":1}')
        self.assertEqual(json.loads(done.body)["u"], "é")


class SubdocCounterBoundsTests(SynchronousTestCase):
    """Counters are int64 and never wrap (testapp_subdoc.cc SubdocCounter_Limits)."""

    def counter(self, start, delta):
        return run_mutate(b'{"c":%d}' % start, SD.counter("c", delta))

    def fails(self, start, delta):
        return self.assertRaises(SubdocError, self.counter, start, delta).status

    def test_up_to_max(self):
        self.assertEqual(self.counter(I64_MAX - 1, 1).results[0].value, str(I64_MAX).encode())

    def test_past_max_cannot_insert(self):
        self.assertEqual(self.fails(I64_MAX, 1), S.VALUE_CANTINSERT)
        self.assertEqual(self.fails(1, I64_MAX), S.VALUE_CANTINSERT)

    def test_down_to_min(self):
        self.assertEqual(self.counter(I64_MIN + 1, -1).body, b'{"c":%d}' % I64_MIN)
        self.assertEqual(self.counter(-1, I64_MIN + 1).body, b'{"c":%d}' % I64_MIN)

    def test_past_min_cannot_insert(self):
        self.assertEqual(self.fails(I64_MIN, -1), S.VALUE_CANTINSERT)

    def test_existing_numbers_outside_int64(self):
        self.assertEqual(self.fails(I64_MAX + 1, 1), S.NUM_ERANGE)
        self.assertEqual(self.fails(I64_MIN - 1, 1), S.NUM_ERANGE)

    def test_delta_at_the_bounds(self):
        self.assertEqual(self.counter(0, I64_MIN).body, b'{"c":%d}' % I64_MIN)
        self.assertEqual(self.counter(0, I64_MAX).body, b'{"c":%d}' % I64_MAX)
        e = self.assertRaises(SubdocError, run_mutate, b'{"c":0}',
                              Spec(Opcode.COUNTER, "c", str(I64_MIN - 1).encode()))
        self.assertEqual(e.status, S.DELTA_EINVAL)

    def test_helper_refuses_non_integers(self):
        self.assertRaises(ValueError, SD.counter, "c", 1.5)
        self.assertRaises(ValueError, SD.counter, "c", True)


class SubdocHostileSpecListTests(SynchronousTestCase):
    """Requests refused before anything runs (subdocument_validators.cc)."""

    def refused(self, mutator, specs, doc_flags=0, cas=0):
        if mutator:
            e = self.assertRaises(SubdocError, SD.mutate, b'{"a":1}', {}, specs,
                                  DocumentMeta(), doc_flags, cas)
        else:
            e = self.assertRaises(SubdocError, SD.lookup, b'{"a":1}', {}, specs,
                                  DocumentMeta(), doc_flags)
        self.assertIsNone(e.index)
        self.assertEqual(e.rc, e.status)
        return e.status

    def test_17_specs(self):
        self.assertEqual(self.refused(False, [SD.get("a")] * 17), S.INVALID_COMBO)
        self.assertEqual(self.refused(True, [SD.upsert("a", 1)] * 17), S.INVALID_COMBO)
        self.assertEqual(len(run_lookup(b'{"a":1}', *[SD.get("a")] * 16).results), 16)

    def test_no_specs(self):
        self.assertEqual(self.refused(False, []), S.INVALID_COMBO)

    def test_a_bad_spec_among_17_reports_itself(self):
        specs = [SD.get("a")] * 3 + [SD.get("")] + [SD.get("a")] * 13
        self.assertEqual(self.refused(False, specs), S.EINVAL)

    def test_lookup_spec_in_mutate_in_and_back(self):
        self.assertEqual(self.refused(True, [SD.upsert("a", 1), SD.get("a")]),
                         S.INVALID_COMBO)
        self.assertEqual(self.refused(False, [SD.get("a"), SD.remove("a")]), S.INVALID_COMBO)
        self.assertEqual(self.refused(False, [SD.get_fulldoc(), SD.upsert_fulldoc(1)]),
                         S.INVALID_COMBO)

    def test_unknown_opcode(self):
        self.assertEqual(self.refused(False, [Spec(0x42, "a")]), S.INVALID_COMBO)

    def test_whole_document_delete_must_be_last_and_alone(self):
        self.assertEqual(self.refused(True, [SD.remove_fulldoc(), SD.upsert("a", 1)]),
                         S.INVALID_COMBO)
        self.assertEqual(self.refused(True, [SD.upsert("a", 1), SD.remove_fulldoc()]),
                         S.INVALID_COMBO)
        self.assertEqual(self.refused(True, [SD.remove_fulldoc(),
                                             SD.upsert("u", 1, xattr=True)]), S.INVALID_COMBO)

    def test_whole_document_spec_with_a_path(self):
        self.assertEqual(self.refused(False, [Spec(Opcode.GET_DOC, "a")]), S.EINVAL)
        self.assertEqual(self.refused(True, [Spec(Opcode.SET_DOC, "a", b"1")]), S.EINVAL)

    def test_empty_path_where_not_allowed(self):
        for spec in (SD.get(""), SD.exists(""), SD.upsert("", 1), SD.insert("", 1),
                     SD.replace("", 1), SD.remove(""), SD.counter("", 1),
                     SD.array_insert("", 1)):
            self.assertEqual(self.refused(not SD.is_lookup(spec), [spec]), S.EINVAL, spec)

    def test_value_missing_or_unexpected(self):
        self.assertEqual(self.refused(True, [Spec(Opcode.DICT_UPSERT, "a")]), S.EINVAL)
        self.assertEqual(self.refused(False, [Spec(Opcode.GET, "a", b"1")]), S.EINVAL)
        self.assertEqual(self.refused(True, [Spec(Opcode.DELETE, "a", b"1")]), S.EINVAL)

    def test_flags_an_opcode_does_not_take(self):
        self.assertEqual(self.refused(False, [Spec(Opcode.GET, "a", b"", PathFlag.MKDIR_P)]),
                         S.EINVAL)
        self.assertEqual(self.refused(True, [SD.replace("a", 1)], DocFlag.MKDOC), S.EINVAL)
        self.assertEqual(self.refused(True, [SD.remove("a")], DocFlag.ADD), S.EINVAL)
        self.assertEqual(self.refused(False, [SD.get("a")], DocFlag.MKDOC), S.EINVAL)
        self.assertEqual(self.refused(True, [SD.upsert("a", 1)], 0x80), S.EINVAL)
        self.assertEqual(self.refused(True, [Spec(Opcode.DICT_UPSERT, "a", b"1",
                                                  PathFlag.BINARY_VALUE)]), S.EINVAL)

    def test_document_flag_combinations(self):
        self.assertEqual(self.refused(True, [SD.upsert("a", 1)], DocFlag.MKDOC | DocFlag.ADD),
                         S.EINVAL)
        self.assertEqual(self.refused(True, [SD.upsert("a", 1)], DocFlag.ADD, cas=5),
                         S.EINVAL)
        self.assertEqual(self.refused(True, [SD.upsert("a", 1)], DocFlag.REVIVE_DOCUMENT),
                         S.NOT_SUPPORTED)

    def test_xattr_specs_come_first(self):
        self.assertEqual(self.refused(True, [SD.upsert("a", 1), SD.upsert("x", 1, xattr=True)]),
                         S.INVALID_XATTR_ORDER)
        self.assertEqual(self.refused(False, [SD.get("a"), SD.get("x", xattr=True)]),
                         S.INVALID_XATTR_ORDER)

    def test_xattr_flag_rules(self):
        expand_body = Spec(Opcode.DICT_UPSERT, "a", b'"${Mutation.CAS}"', PathFlag.EXPAND_MACROS)
        self.assertEqual(self.refused(True, [expand_body]), S.XATTR_INVALID_FLAG_COMBO)
        self.assertEqual(self.refused(True, [SD.upsert("$document.x", 1, xattr=True)]),
                         S.XATTR_CANT_MODIFY_VATTR)
        self.assertEqual(self.refused(True, [SD.upsert("x", "${Nope}", xattr=True,
                                                       _expand_macros=True)]),
                         S.XATTR_UNKNOWN_MACRO)

    def test_invalid_xattr_keys(self):
        for path in ("", ".a", "[0]", "_", "$", "!a", "a" * 16, "-x", "\x01x", "a\x00"):
            self.assertEqual(self.refused(False, [SD.get(path, xattr=True)]), S.XATTR_EINVAL,
                             path)
        self.assertEqual(run_lookup(b"{}", SD.get("a" * 15, xattr=True)).results[0].status,
                         S.PATH_ENOENT)


class SubdocAllOrNothingTests(SynchronousTestCase):

    def test_failing_third_spec_changes_nothing(self):
        doc = b'{"a": 1, "l": [1]}'
        xattrs = {"meta": b'{"v":1}'}
        before = dict(xattrs)
        specs = [SD.upsert("meta.v", 2, xattr=True), SD.upsert("a", 2),
                 SD.insert("a", 3), SD.array_append("l", 2)]
        e = self.assertRaises(SubdocError, SD.mutate, doc, xattrs, specs)
        self.assertEqual((e.status, e.index, e.rc), (S.PATH_EEXISTS, 2, S.MULTI_PATH_FAILURE))
        self.assertEqual(doc, b'{"a": 1, "l": [1]}')
        self.assertEqual(xattrs, before)

    def test_later_specs_see_earlier_ones(self):
        done = run_mutate(b"{}", SD.upsert("a", {}), SD.upsert("a.b", 1), SD.counter("a.b", 1),
                          SD.array_append("l", 1, create_parents=True), SD.remove("a.b"))
        self.assertEqual(done.body, b'{"a":{},"l":[1]}')
        self.assertEqual(done.results[2].value, b"2")

    def test_too_big(self):
        self.assertRaises(TooBigError, run_mutate, b"{}", SD.upsert("a", "x" * 100),
                          max_size=50)


class SubdocDocumentFlagsTests(SynchronousTestCase):

    def test_missing_document(self):
        self.assertRaises(NotFoundError, run_mutate, None, SD.upsert("a", 1))

    def test_mkdoc_creates_an_object_or_an_array(self):
        self.assertEqual(run_mutate(None, SD.upsert("a.b", 1), doc_flags=DocFlag.MKDOC).body,
                         b'{"a":{"b":1}}')
        self.assertEqual(run_mutate(None, SD.array_append("", 1),
                                    doc_flags=DocFlag.MKDOC).body, b"[1]")
        done = run_mutate(None, SD.upsert("x", 1, xattr=True), doc_flags=DocFlag.ADD)
        self.assertEqual((done.body, done.xattrs, done.created), (b"{}", {"x": b"1"}, True))

    def test_mkdoc_on_an_existing_document_is_upsert(self):
        done = run_mutate(b'{"z":0}', SD.upsert("a.b", 1), doc_flags=DocFlag.MKDOC)
        self.assertEqual((done.body, done.created), (b'{"z":0,"a":{"b":1}}', False))

    def test_add_on_an_existing_document(self):
        self.assertRaises(KeyExistsError, run_mutate, b"{}", SD.upsert("a", 1),
                          doc_flags=DocFlag.ADD)

    def test_tombstones(self):
        meta = DocumentMeta(deleted=True)
        self.assertRaises(NotFoundError, run_lookup, b"", SD.get("_s", xattr=True),
                          xattrs={"_s": b"1"}, meta=meta)
        found = run_lookup(b"", SD.get("_s", xattr=True), xattrs={"_s": b"1"}, meta=meta,
                           doc_flags=DocFlag.ACCESS_DELETED)
        self.assertEqual((found.status, found.results), (S.SUCCESS_DELETED, [(0, b"1")]))
        found = run_lookup(b"", SD.get("_s", xattr=True), SD.get("a"), xattrs={"_s": b"1"},
                           meta=meta, doc_flags=DocFlag.ACCESS_DELETED)
        self.assertEqual(found.status, S.MULTI_PATH_FAILURE_DELETED)
        done = run_mutate(b"", SD.upsert("_s", 2, xattr=True), xattrs={"_s": b"1"},
                          meta=meta, doc_flags=DocFlag.ACCESS_DELETED)
        self.assertEqual((done.deleted, done.xattrs), (True, {"_s": b"2"}))
        self.assertRaises(NotFoundError, run_mutate, b"", SD.upsert("_s", 2, xattr=True),
                          xattrs={"_s": b"1"}, meta=meta)


class SubdocXattrTests(SynchronousTestCase):

    def test_xattrs_beside_the_body(self):
        done = run_mutate(b'{"a":1}', SD.upsert("meta.rev", 1, xattr=True, create_parents=True),
                          SD.upsert("_sync", {"x": [1]}, xattr=True), SD.upsert("a", 2))
        self.assertEqual(done.body, b'{"a":2}')
        self.assertEqual(done.xattrs, {"_sync": b'{"x":[1]}', "meta": b'{"rev":1}'})
        self.assertEqual(list(done.xattrs), ["_sync", "meta"])  # sorted, as kv_engine stores
        found = run_lookup(done.body, SD.get("meta.rev", xattr=True),
                           SD.get("_sync.x[0]", xattr=True), SD.get("nope", xattr=True),
                           SD.get("a"), xattrs=done.xattrs)
        self.assertEqual(found.results, [(0, b"1"), (0, b"1"), (S.PATH_ENOENT, None),
                                         (0, b"2")])

    def test_operations_on_xattr_values(self):
        xattrs = {"x": b'{"l":[1],"n":5}'}
        done = run_mutate(b"{}", SD.array_append("x.l", 2, xattr=True),
                          SD.counter("x.n", 1, xattr=True), SD.remove("x.l[0]", xattr=True),
                          xattrs=xattrs)
        self.assertEqual(done.xattrs, {"x": b'{"l":[2],"n":6}'})
        self.assertEqual(done.results[1].value, b"6")
        self.assertEqual(xattrs, {"x": b'{"l":[1],"n":5}'})

    def test_remove_fulldoc_keeps_only_system_xattrs(self):
        done = run_mutate(b'{"a":1}', SD.upsert("_s.t", 1, xattr=True, create_parents=True),
                          SD.remove_fulldoc(), xattrs={"user": b"1", "_old": b"2"})
        self.assertEqual((done.body, done.deleted), (None, True))
        self.assertEqual(done.xattrs, {"_old": b"2", "_s": b'{"t":1}'})
        done = run_mutate(b'{"a":1}', SD.remove_fulldoc(), xattrs={"user": b"1"})
        self.assertEqual((done.body, done.deleted, done.xattrs), (None, True, {}))

    def test_upsert_fulldoc_keeps_xattrs(self):
        done = run_mutate(b'{"a":1}', SD.upsert_fulldoc([1]), xattrs={"u": b"1"})
        self.assertEqual((done.body, done.xattrs), (b"[1]", {"u": b"1"}))

    def test_remove_a_whole_xattr(self):
        done = run_mutate(b"{}", SD.remove("gone", xattr=True),
                          xattrs={"gone": b"[1]", "kept": b"2"})
        self.assertEqual(done.xattrs, {"kept": b"2"})
        e = self.assertRaises(SubdocError, run_mutate, b"{}", SD.remove("nope", xattr=True))
        self.assertEqual((e.status, e.index), (S.PATH_ENOENT, 0))

    def test_several_xattr_keys_in_one_call(self):
        # kv_engine refused this with XATTR_INVALID_KEY_COMBO until MB-57864.
        done = run_mutate(b"{}", SD.upsert("a", 1, xattr=True), SD.upsert("b", 2, xattr=True))
        self.assertEqual(done.xattrs, {"a": b"1", "b": b"2"})

    def test_xtoc(self):
        found = run_lookup(b"{}", SD.get("$XTOC", xattr=True), xattrs={"_a": b"1", "b": b"2"})
        self.assertEqual(found.results[0].value, b'["_a","b"]')

    def test_unknown_virtual_xattr_is_a_per_spec_status(self):
        found = run_lookup(b"{}", SD.get("$nope", xattr=True), SD.get("$document", xattr=True))
        self.assertEqual([r.status for r in found.results], [S.XATTR_UNKNOWN_VATTR, 0])


class SubdocVirtualXattrTests(SynchronousTestCase):
    """$document as kv_engine formats it (subdocument_context.cc get_document_vattr)."""

    META = DocumentMeta(cas=0x16F3A2B4C5D60000, exptime=1700000000, flags=0x02000006,
                        seqno=42, revid=7, vbucket_uuid=0xABC)

    def test_document(self):
        body = b'{"a":1}'
        found = run_lookup(body, SD.get("$document", xattr=True), meta=self.META,
                           xattrs={"x": b"1"})
        self.assertEqual(json.loads(found.results[0].value), {
            "CAS": "0x16f3a2b4c5d60000", "vbucket_uuid": "0x0000000000000abc",
            "seqno": "0x000000000000002a", "revid": "7", "exptime": 1700000000,
            "flags": 0x02000006, "value_bytes": 7, "datatype": ["json", "xattr"],
            "deleted": False, "value_crc32c": "0x%08x" % SD.crc32c(body)})
        self.assertTrue(found.results[0].value.startswith(b'{"CAS":"0x16f3a2b4c5d60000",'))

    def test_fields_as_the_sdk_reads_them(self):
        found = run_lookup(b"raw", SD.get("$document.exptime", xattr=True),
                           SD.get("$document.flags", xattr=True),
                           SD.get("$document.datatype", xattr=True),
                           SD.get("$document.nope", xattr=True), SD.get_fulldoc(), meta=self.META)
        self.assertEqual(found.results, [(0, b"1700000000"), (0, b"33554438"),
                                         (0, b'["raw"]'), (S.PATH_ENOENT, None), (0, b"raw")])

    def test_last_modified_only_with_a_clock_cas(self):
        found = run_lookup(b"{}", SD.get("$document.last_modified", xattr=True),
                           meta=self.META._replace(last_modified=1700000001))
        self.assertEqual(found.results[0].value, b'"1700000001"')


class SubdocMacroTests(SynchronousTestCase):

    def test_mutation_macros_expand_at_finish(self):
        specs = [SD.upsert("m.cas", SD.MutationMacro.CAS, xattr=True, create_parents=True),
                 SD.upsert("m.seq", SD.MutationMacro.SEQNO, xattr=True),
                 SD.upsert("m.crc", SD.MutationMacro.VALUE_CRC32C, xattr=True),
                 SD.upsert("a", 2)]
        self.assertEqual(specs[0].flags, PathFlag.XATTR | PathFlag.MKDIR_P
                         | PathFlag.EXPAND_MACROS)
        done = run_mutate(b'{"a":1}', *specs)
        self.assertTrue(done.needs_finish)
        self.assertNotIn(b"Mutation", done.xattrs["m"])
        stored = done.finish(0x0102030405060708, 9)
        self.assertEqual(json.loads(stored["m"]), {
            "cas": "0x0807060504030201",  # htonll(cas) printed: the SDKs decode it so
            "seq": "0x0000000000000009",
            "crc": "0x%08x" % SD.crc32c(b'{"a":2}')})

    def test_results_read_what_the_macros_became(self):
        specs = [SD.upsert("m", SD.MutationMacro.SEQNO, xattr=True), SD.counter("n", 2)]
        done = run_mutate(b"{}", *specs)
        self.assertEqual(done.results, [(0, None), (0, b"2")])  # the wire's results
        self.assertEqual(done.macro_values(5, 0x10), {0: b'"0x0000000000000010"'})
        r = SubdocResult.of_mutation("k", 5, specs, done, seqno=0x10)
        self.assertEqual((r[0], r[1]), ("0x0000000000000010", 2))

    def test_no_macros_nothing_to_finish(self):
        done = run_mutate(b"{}", SD.upsert("x", 1, xattr=True))
        self.assertFalse(done.needs_finish)
        self.assertIs(done.finish(1, 1), done.xattrs)

    def test_virtual_macros_expand_from_the_old_document(self):
        meta = DocumentMeta(cas=0xFF, exptime=5)
        done = run_mutate(b'{"a":1}',
                          SD.upsert("p.cas", "${$document.CAS}", xattr=True, create_parents=True,
                                    _expand_macros=True),
                          SD.upsert("p.exp", "${$document.exptime}", xattr=True,
                                    _expand_macros=True),
                          SD.upsert("p.doc", "${$document}", xattr=True, _expand_macros=True),
                          meta=meta)
        p = json.loads(done.xattrs["p"])
        self.assertEqual((p["cas"], p["exp"], p["doc"]["CAS"], p["doc"]["value_bytes"]),
                         ("0x00000000000000ff", 5, "0x00000000000000ff", 7))

    def test_unknown_virtual_macro_fails_its_spec(self):
        e = self.assertRaises(SubdocError, run_mutate, b"{}", SD.upsert("x", 1, xattr=True),
                              SD.upsert("y", "${$document.nope}", xattr=True,
                                        _expand_macros=True))
        self.assertEqual((e.status, e.index), (S.XATTR_UNKNOWN_VATTR_MACRO, 1))


class SubdocCrc32cTests(SynchronousTestCase):
    """Vectors: the standard check value and couchbase/platform's crc32c_test.cc."""

    def test_vectors(self):
        self.assertEqual(SD.crc32c(b"123456789"), 0xE3069283)
        self.assertEqual(SD.crc32c(bytes(32)), 0x8A9136AA)
        self.assertEqual(SD.crc32c(b"\xff" * 32), 0x62A8AB43)
        self.assertEqual(SD.crc32c(bytes(range(32))), 0x46DD794E)
        self.assertEqual(SD.crc32c(bytes(range(31, -1, -1))), 0x113FDB5C)
        self.assertEqual(SD.crc32c(b""), 0)


class SubdocResultTests(SynchronousTestCase):

    def result(self):
        specs = [SD.get("a"), SD.exists("b"), SD.get("c.d"), SD.get_count("l"), SD.get("s.x")]
        doc = b'{"a":{"x":1},"c":{"d":"v"},"l":[1,2],"s":"str"}'
        return SubdocResult.of_lookup("k", 99, specs, run_lookup(doc, *specs))

    def test_values(self):
        r = self.result()
        self.assertEqual((r.key, r.cas, r.rc, len(r)), ("k", 99, S.MULTI_PATH_FAILURE, 5))
        self.assertEqual((r[0], r["c.d"], r[3], r[-2]), ({"x": 1}, "v", 2, 2))
        self.assertEqual(r.raw(0), b'{"x":1}')
        self.assertFalse(r.success)

    def test_exists_and_statuses(self):
        r = self.result()
        self.assertEqual((r.exists(0), r.exists("b")), (True, False))
        self.assertEqual([r.status(i) for i in range(5)],
                         [0, S.PATH_ENOENT, 0, 0, S.PATH_MISMATCH])
        self.assertEqual(r.get(1), (S.PATH_ENOENT, None))
        e = self.assertRaises(SubdocError, r.exists, 4)
        self.assertEqual((e.status, e.index), (S.PATH_MISMATCH, 4))
        e = self.assertRaises(SubdocError, r.__getitem__, "b")
        self.assertEqual(e.status, S.PATH_ENOENT)
        self.assertRaises(IndexError, r.__getitem__, 5)
        self.assertRaises(IndexError, r.__getitem__, "zz")

    def test_mutation_result(self):
        specs = [SD.upsert("a", 1), SD.counter("n", 3)]
        done = run_mutate(b"{}", *specs)
        r = SubdocResult.of_mutation("k", 7, specs, done, mutation_token=(1, 2))
        self.assertEqual((r[0], r[1], r.mutation_token, r.success), (None, 3, (1, 2), True))

    def test_whole_body_that_is_not_json(self):
        specs = [SD.get_fulldoc()]
        r = SubdocResult.of_lookup("k", 1, specs, run_lookup(b"\x00raw", *specs))
        self.assertEqual(r[0], b"\x00raw")


class SubdocSpecHelperTests(SynchronousTestCase):
    """The SDK 2.x helpers build the wire's specs."""

    TABLE = [
        (SD.get("a", xattr=True), Spec(0xC5, "a", b"", 0x04)),
        (SD.exists("a"), Spec(0xC6, "a")),
        (SD.get_count("a"), Spec(0xD2, "a")),
        (SD.upsert("a", {"b": "é"}, create_parents=True), Spec(0xC8, "a", '{"b":"é"}'.encode(),
                                                              0x01)),
        (SD.insert("a", None), Spec(0xC7, "a", b"null")),
        (SD.replace("a", 1.5), Spec(0xCA, "a", b"1.5")),
        (SD.remove("a"), Spec(0xC9, "a")),
        (SD.array_append("a", 1, "x"), Spec(0xCB, "a", b'1,"x"')),
        (SD.array_prepend("a", [1], create_parents=True), Spec(0xCC, "a", b"[1]", 0x01)),
        (SD.array_insert("a[0]", 1, 2), Spec(0xCD, "a[0]", b"1,2")),
        (SD.array_addunique("a", "u"), Spec(0xCE, "a", b'"u"')),
        (SD.counter("a", -3), Spec(0xCF, "a", b"-3")),
        (SD.get_fulldoc(), Spec(0x00)), (SD.upsert_fulldoc({}), Spec(0x01, "", b"{}")),
        (SD.remove_fulldoc(), Spec(0x04)),
    ]

    def test_table(self):
        for built, want in self.TABLE:
            self.assertEqual(built, want)

    def test_is_lookup(self):
        self.assertEqual([SD.is_lookup(s) for s, _ in self.TABLE],
                         [True, True, True] + [False] * 9 + [True, False, False])
        self.assertRaises(ValueError, SD.is_lookup, Spec(0x42))

    def test_array_helpers_need_a_value(self):
        self.assertRaises(ValueError, SD.array_append, "a")


class SubdocTrustedBodyTests(SynchronousTestCase):
    """DocumentMeta.datatype ["json"] is the bucket's word that the body is
    JSON (memcached's datatype): the engine skips its own check, and a body
    that lied still only gets statuses, never an exception."""

    BAD = [b'{"a" 1}', b'{"a":1,}', b"[1 2]", b"{", b"}", b"", b'"abc', b'{"a":[}',
           b'{"a":1}}', b"[,]", b'{"b":1,"a"', b'{"b":NaN,"a":1}', b"\xff"]
    SPECS = [SD.get("a"), SD.get("[1]"), SD.get_count(""), SD.exists("b"), SD.upsert("a", 1),
             SD.remove("a"), SD.array_append("", 1), SD.counter("a", 1), SD.insert("[0]", 1),
             SD.array_insert("[0]", 1), SD.array_addunique("", 1)]

    def test_lying_bodies(self):
        trusted = DocumentMeta(datatype=["json"])
        for doc in self.BAD:
            for spec in self.SPECS:
                if SD.is_lookup(spec):
                    self.assertEqual(len(run_lookup(doc, spec, meta=trusted).results), 1)
                    untrusted = run_lookup(doc, spec).results[0].status
                    self.assertEqual(untrusted, S.DOC_NOTJSON, (doc, spec))
                    continue
                try:
                    run_mutate(doc, spec, meta=trusted)
                except SubdocError:
                    pass
                e = self.assertRaises(SubdocError, run_mutate, doc, spec)
                self.assertIn(e.status, (S.DOC_NOTJSON, S.PATH_EINVAL), (doc, spec))

    def test_mutation_says_whether_the_body_is_json(self):
        self.assertTrue(run_mutate(b"{}", SD.upsert("a", 1)).is_json)
        self.assertFalse(run_mutate(b"{}", Spec(Opcode.SET_DOC, "", b"raw")).is_json)
        self.assertFalse(run_mutate(b"{}", SD.remove_fulldoc()).is_json)


class SubdocAgainstDecodedTests(SynchronousTestCase):
    """Random documents: what the engine reads and writes in the text is what
    the same path means in the decoded document (a fixed seed, so repeatable)."""

    def random_value(self, rnd, depth):
        kind = rnd.randrange(6 if depth < 4 else 3)
        if kind == 0:
            return rnd.choice([0, -7, 12345678901234, 1.25, -0.5, True, False, None])
        if kind in (1, 2):
            return rnd.choice(["", "x", 'q"uote', "back\\slash", "é", "a.b", "[1]"])
        if kind == 3:
            return [self.random_value(rnd, depth + 1) for _ in range(rnd.randrange(4))]
        return {rnd.choice(["a", "b", "c", "d.e", "f`g", "h[i]"]): self.random_value(
            rnd, depth + 1) for _ in range(rnd.randrange(4))}

    def paths(self, value, prefix=""):
        yield prefix, value
        if isinstance(value, dict):
            for k, v in value.items():
                name = json.dumps(k)[1:-1]
                if any(c in k for c in ".[]`"):
                    name = "`%s`" % name.replace("`", "``")
                yield from self.paths(v, "%s.%s" % (prefix, name) if prefix else name)
        elif isinstance(value, list):
            for n, v in enumerate(value):
                yield from self.paths(v, "%s[%d]" % (prefix, n))
                if n == len(value) - 1:
                    yield from self.paths(v, "%s[-1]" % prefix)

    def test_random_documents(self):
        rnd = random.Random(15)
        checked = 0
        for _ in range(300):
            doc = {"root": self.random_value(rnd, 0)}
            indent = rnd.choice([None, 1])
            raw = json.dumps(doc, indent=indent, ensure_ascii=rnd.random() < 0.5).encode()
            for path, value in self.paths(doc):
                if not path:
                    continue
                found = run_lookup(raw, SD.get(path))
                self.assertEqual(json.loads(found.results[0].value), value, (raw, path))
                done = run_mutate(raw, SD.replace(path, "new"))
                self.assertEqual(json.loads(done.body), self.replaced(doc, path, "new"))
                checked += 1
        self.assertGreater(checked, 1000)

    def replaced(self, doc, path, new):
        copy = json.loads(json.dumps(doc))
        found = run_lookup(json.dumps(copy).encode(), SD.get(path))
        self.assertEqual(found.status, S.SUCCESS)
        # Walk the decoded copy with the engine's own parse of the path.
        comps = sd_path.parse(path)
        target = copy
        for comp in comps[:-1]:
            target = target[json.loads('"%s"' % comp) if isinstance(comp, str) else comp]
        last = comps[-1]
        target[json.loads('"%s"' % last) if isinstance(last, str) else last] = new
        return copy


class SubdocKvEngineRegressionTests(SynchronousTestCase):
    """kv_engine's own regression tests, replayed on the engine."""

    def test_mb_30278_backtick_multi_mutation(self):
        done = run_mutate(b"{}", *[Spec(Opcode.DICT_ADD, "key%d``" % n, b"%d" % n)
                                   for n in (1, 2, 3)])
        self.assertEqual(done.body, b'{"key1`":1,"key2`":2,"key3`":3}')

    def test_subdoc_op_after_wholedoc_set_non_json(self):
        for op in (Opcode.DICT_ADD, Opcode.DICT_UPSERT, Opcode.REPLACE, Opcode.ARRAY_PUSH_LAST,
                   Opcode.ARRAY_PUSH_FIRST, Opcode.ARRAY_ADD_UNIQUE):
            e = self.assertRaises(SubdocError, run_mutate, b"{}",
                                  Spec(Opcode.SET_DOC, "", b"RAW ;: NO JSON HERE"),
                                  Spec(op, "path", b"anyvalue"))
            self.assertEqual((e.status, e.index), (S.DOC_NOTJSON, 1))
        done = run_mutate(b"{}", Spec(Opcode.SET_DOC, "", b"RAW ;: NO JSON HERE"))
        self.assertFalse(done.is_json)
        self.assertTrue(run_mutate(b"x", SD.upsert_fulldoc({"json": "goodness"})).is_json)

    def test_mb57864_macro_expansion_only_where_asked(self):
        cas_macro = b'"${Mutation.CAS}"'
        specs = [Spec(Opcode.DICT_UPSERT, "user.cas", cas_macro,
                      PathFlag.XATTR | PathFlag.EXPAND_MACROS),
                 Spec(Opcode.DICT_UPSERT, "_system.cas", cas_macro, PathFlag.XATTR),
                 Spec(Opcode.DICT_UPSERT, "never.cas", cas_macro, PathFlag.XATTR),
                 Spec(Opcode.SET_DOC, "", b'{"v":1}')]
        done = run_mutate(None, *specs, doc_flags=DocFlag.MKDOC)
        stored = done.finish(0x1234, 1)
        self.assertEqual(stored["user"], b'{"cas":"0x3412000000000000"}')
        self.assertEqual(stored["_system"], b'{"cas":"${Mutation.CAS}"}')
        self.assertEqual(stored["never"], b'{"cas":"${Mutation.CAS}"}')
        self.assertEqual(done.body, b'{"v":1}')

    def test_mb_25562_value_crc32c_excludes_xattrs(self):
        done = run_mutate(b'{"body":1}', SD.upsert("_sync.value_crc32c",
                                                   SD.MutationMacro.VALUE_CRC32C, xattr=True,
                                                   create_parents=True),
                          xattrs={"big": b'"%s"' % (b"x" * 100)})
        stored = done.finish(1, 1)
        want = b'{"value_crc32c":"0x%08x"}' % SD.crc32c(b'{"body":1}')
        self.assertEqual(stored["_sync"], want)
        found = run_lookup(b'{"body":1}', SD.get("$document.value_crc32c", xattr=True))
        self.assertEqual(found.results[0].value, b'"0x%08x"' % SD.crc32c(b'{"body":1}'))


class SubdocWireSpecTests(SynchronousTestCase):
    """Specs as the Couchbase endpoint decodes them from 0xd0 / 0xd1."""

    def test_from_wire(self):
        spec = Spec.from_wire(0xC8, 0x05, "é.a".encode(), b"1")
        self.assertEqual(spec, Spec(Opcode.DICT_UPSERT, "é.a", b"1", 0x05))

    def test_path_that_is_not_utf8(self):
        spec = Spec.from_wire(0xC5, 0, b"a\xffb")
        self.assertEqual(run_lookup(b'{"a":1}', spec).results[0].status, S.PATH_EINVAL)
        e = self.assertRaises(SubdocError, run_mutate, b"{}",
                              Spec.from_wire(0xC8, 0, b"\xff", b"1"))
        self.assertEqual((e.status, e.index), (S.PATH_EINVAL, 0))
        e = self.assertRaises(SubdocError, run_lookup, b"{}",
                              Spec.from_wire(0xC5, 0x04, b"\xff"))
        self.assertEqual(e.status, S.XATTR_EINVAL)
        e = self.assertRaises(SubdocError, run_lookup, b"{}",
                              Spec.from_wire(0xC5, 0, b"\xff" * 1025))
        self.assertEqual(e.status, S.EINVAL)


class SubdocDocumentShapeTests(SynchronousTestCase):
    """testapp_subdoc.cc: documents that are not containers, and deep ones."""

    def nested_dict(self, levels):
        doc = "{}"
        for depth in range(levels - 1, 0, -1):
            doc = '{"%d":%s}' % (depth, doc)
        return doc.encode()

    def test_primitive_documents_are_not_json_to_paths(self):
        for doc in (b'"string"', b"5", b" true "):
            e = self.assertRaises(SubdocError, run_mutate, doc, SD.upsert("a", 1))
            self.assertEqual(e.status, S.DOC_NOTJSON)
            self.assertEqual(run_lookup(doc, SD.get_count("")).results[0].status,
                             S.DOC_NOTJSON)
            self.assertEqual(run_lookup(doc, SD.get_fulldoc()).results[0], (0, doc))

    def test_not_json_comes_before_a_bad_path_or_value(self):
        self.assertEqual(run_lookup(b"raw", SD.get("a[")).results[0].status, S.DOC_NOTJSON)
        e = self.assertRaises(SubdocError, run_mutate, b"raw",
                              Spec(Opcode.DICT_UPSERT, "a", b"\xff"))
        self.assertEqual(e.status, S.DOC_NOTJSON)

    def test_dict_deep(self):
        path = ".".join(str(n) for n in range(1, 32))
        found = run_lookup(self.nested_dict(32), SD.get(path))
        self.assertEqual(found.results[0], (0, b"{}"))
        found = run_lookup(self.nested_dict(33), SD.get(path + ".32"))
        self.assertEqual(found.results[0].status, S.PATH_E2BIG)

    def test_array_deep(self):
        found = run_lookup(b"[" * 32 + b"]" * 32, SD.get("[0]" * 31))
        self.assertEqual(found.results[0], (0, b"[]"))
        found = run_lookup(b"[" * 33 + b"]" * 33, SD.get("[0]" * 32))
        self.assertEqual(found.results[0].status, S.PATH_E2BIG)

    def test_too_deep_documents(self):
        # Stricter than jsonsl, which stops once the match is complete.
        found = run_lookup(self.nested_dict(33), SD.get("1"))
        self.assertEqual(found.results[0].status, S.DOC_E2DEEP)
        e = self.assertRaises(SubdocError, run_mutate, self.nested_dict(33), SD.upsert("x", 1))
        self.assertEqual(e.status, S.DOC_E2DEEP)
