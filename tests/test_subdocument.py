"""
The sub-document engine (txcb.subdocument): Couchbase's path syntax, every
spec kind and error as tables, hostile paths and spec lists, all or nothing,
xattrs, virtual xattrs, macros and counters at the int64 bounds.

Expected statuses and documents follow kv_engine (docs/SubDocument.md,
daemon/subdocument*.cc, tests/testapp/testapp_subdoc.cc) and subjson
(subdoc/operations.cc, tests/t_ops.cc).
"""

import json

from twisted.trial.unittest import SynchronousTestCase

import txcb.subdocument as SD
from txcb.errors import KeyExistsError, NotFoundError, TooBigError
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
