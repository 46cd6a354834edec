"""
The sub-document part of the IBucket contract (lookup_in / mutate_in), as
tables: one row per spec kind and per error, run against every provider
through :class:`tests.support.contract.BucketContractMixin` (which mixes this
in, so a provider gets these tests with the rest of the contract).

Expected statuses are Couchbase Server's (kv_engine's numbers, as
``txcb.subdocument.Status`` names them).  Every row starts from the same
document, stored with a plain upsert, so the rows do not depend on each
other.  Providers that keep no xattrs set ``supports_xattrs = False``, and
those that cannot keep an expiry they are not told ``supports_preserve_expiry
= False``: those tests then assert the provider's refusal (NotSupportedError)
instead.  A provider without seqnos (no mutation token) is not asked for
increasing ones.
"""

from __future__ import annotations

from twisted.internet.defer import inlineCallbacks

import txcb.subdocument as SD
from txcb import errors
from txcb.formats import FMT_JSON
from txcb.subdocument import Opcode, Spec

S = SD.Status
I64_MAX = (1 << 63) - 1
LOCKED = 2 ** 64 - 1

DOC = {"name": "ada", "age": 36, "tags": ["x", "y"], "a": {"b": [10, 20]}, "n": 5,
       "big": I64_MAX, "dot.ted": 1}

#: (spec, status, decoded value or None): one lookup each on DOC.
LOOKUP_ROWS = [
    (SD.get("name"), S.SUCCESS, "ada"),
    (SD.get("a.b[1]"), S.SUCCESS, 20),
    (SD.get("a.b[-1]"), S.SUCCESS, 20),
    (SD.get("a"), S.SUCCESS, {"b": [10, 20]}),
    (SD.get("`dot.ted`"), S.SUCCESS, 1),
    (SD.get("nope"), S.PATH_ENOENT, None),
    (SD.get("a.b[5]"), S.PATH_ENOENT, None),
    (SD.get("name.first"), S.PATH_MISMATCH, None),
    (SD.get("a.b[x]"), S.PATH_EINVAL, None),
    (SD.exists("age"), S.SUCCESS, None),
    (SD.exists("nope"), S.PATH_ENOENT, None),
    (SD.get_count("tags"), S.SUCCESS, 2),
    (SD.get_count("a"), S.SUCCESS, 1),
    (SD.get_count("name"), S.PATH_MISMATCH, None),
]

#: (spec, what DOC becomes, the spec's result value or None).
MUTATE_ROWS = [
    (SD.upsert("name", "bob"), dict(DOC, name="bob"), None),
    (SD.upsert("new", {"k": [1]}), dict(DOC, new={"k": [1]}), None),
    (SD.upsert("p.q.r", 1, create_parents=True), dict(DOC, p={"q": {"r": 1}}), None),
    (SD.insert("fresh", True), dict(DOC, fresh=True), None),
    (SD.replace("age", 37), dict(DOC, age=37), None),
    (SD.replace("a.b[0]", 11), dict(DOC, a={"b": [11, 20]}), None),
    (SD.remove("tags[0]"), dict(DOC, tags=["y"]), None),
    (SD.remove("dot.ted".join("``")), {k: v for k, v in DOC.items() if k != "dot.ted"}, None),
    (SD.array_append("tags", "z", "w"), dict(DOC, tags=["x", "y", "z", "w"]), None),
    (SD.array_append("l", 1, create_parents=True), dict(DOC, l=[1]), None),
    (SD.array_prepend("tags", "w"), dict(DOC, tags=["w", "x", "y"]), None),
    (SD.array_insert("tags[1]", "m"), dict(DOC, tags=["x", "m", "y"]), None),
    (SD.array_addunique("tags", "q"), dict(DOC, tags=["x", "y", "q"]), None),
    (SD.counter("n", 10), dict(DOC, n=15), 15),
    (SD.counter("n", -7), dict(DOC, n=-2), -2),
    (SD.counter("c", 3, create_parents=True), dict(DOC, c=3), 3),
    (SD.upsert_fulldoc({"whole": 1}), {"whole": 1}, None),
]

#: (spec, status): each fails as the second spec, after one that would
#: succeed, so the call fails at index 1 and changes nothing.
MUTATE_ERROR_ROWS = [
    (SD.insert("name", 1), S.PATH_EEXISTS),
    (SD.replace("nope", 1), S.PATH_ENOENT),
    (SD.remove("nope"), S.PATH_ENOENT),
    (SD.upsert("x.y", 1), S.PATH_ENOENT),
    (SD.upsert("a.b[x]", 1), S.PATH_EINVAL),
    (SD.upsert("name.first", 1), S.PATH_MISMATCH),
    (Spec(Opcode.DICT_UPSERT, "v", b"{bad"), S.VALUE_CANTINSERT),
    (SD.array_append("name", 1), S.PATH_MISMATCH),
    (SD.array_insert("tags[5]", 1), S.PATH_ENOENT),
    (SD.array_addunique("tags", "x"), S.PATH_EEXISTS),
    (SD.array_addunique("tags", [1]), S.VALUE_CANTINSERT),
    (SD.counter("name", 1), S.PATH_MISMATCH),
    (SD.counter("big", 1), S.VALUE_CANTINSERT),
    (Spec(Opcode.COUNTER, "n", b"0"), S.DELTA_EINVAL),
    (Spec(Opcode.COUNTER, "n", b"one"), S.DELTA_EINVAL),
]


def _hex_cas(cas: int) -> str:
    """``${Mutation.CAS}`` as kv_engine expands it: the CAS's bytes in network order."""
    return "0x%016x" % int.from_bytes(cas.to_bytes(8, "big"), "little")


class SubdocContractMixin:
    """lookup_in / mutate_in behaviour, written once (see the module docstring)."""

    supports_xattrs = True
    supports_preserve_expiry = True

    @inlineCallbacks
    def doc_bucket(self, key="doc", value=None):
        b = yield self.bucket()
        yield b.upsert(key, DOC if value is None else value)
        return b

    @inlineCallbacks
    def assertDocument(self, b, key, expected):
        got = yield b.get(key)
        self.assertEqual(got.value, expected)

    # -- lookups --------------------------------------------------------------

    @inlineCallbacks
    def test_subdoc_lookup_rows(self):
        b = yield self.doc_bucket()
        for spec, status, value in LOOKUP_ROWS:
            r = yield b.lookup_in("doc", spec)
            self.assertIsInstance(r, SD.SubdocResult)
            self.assertEqual((r.status(0), r.get(0)[1]), (status, value), spec)
            self.assertEqual(r.rc, S.SUCCESS if status == S.SUCCESS
                             else S.MULTI_PATH_FAILURE, spec)
            if status in (S.SUCCESS, S.PATH_ENOENT):
                self.assertEqual(r.exists(0), status == S.SUCCESS, spec)
            else:
                self.assertRaises(SD.SubdocError, r.exists, 0)

    @inlineCallbacks
    def test_subdoc_lookup_rows_in_one_call_have_their_own_statuses(self):
        b = yield self.doc_bucket()
        stored = yield b.get("doc")
        specs = [row[0] for row in LOOKUP_ROWS]
        r = yield b.lookup_in("doc", *specs)
        self.assertEqual(r.rc, S.MULTI_PATH_FAILURE)
        self.assertEqual(r.cas, stored.cas)
        self.assertEqual(r.key, "doc")
        self.assertEqual([(r.status(i), r.get(i)[1]) for i in range(len(specs))],
                         [(status, value) for _s, status, value in LOOKUP_ROWS])
        self.assertEqual(r["name"], "ada")
        e = self.assertRaises(SD.SubdocError, lambda: r["nope"])
        self.assertEqual(e.status, S.PATH_ENOENT)

    @inlineCallbacks
    def test_subdoc_lookup_of_whole_document_and_missing_document(self):
        b = yield self.doc_bucket()
        r = yield b.lookup_in("doc", SD.get_fulldoc())
        self.assertEqual(r[0], DOC)
        e = yield self.assertFails(b.lookup_in("missing", SD.get("a")), errors.NotFoundError,
                                   0x01)
        self.assertEqual(e.key, "missing")

    @inlineCallbacks
    def test_subdoc_lookup_of_a_document_that_is_not_json(self):
        b = yield self.doc_bucket(value=b"not json")
        r = yield b.lookup_in("doc", SD.get("a"), SD.exists("b"))
        self.assertEqual((r.rc, r.status(0), r.status(1)),
                         (S.MULTI_PATH_FAILURE, S.DOC_NOTJSON, S.DOC_NOTJSON))

    @inlineCallbacks
    def test_subdoc_refused_requests_change_nothing(self):
        b = yield self.doc_bucket()
        before = yield b.get("doc")
        for call, status in [
                (lambda: b.lookup_in("doc", *[SD.get("a")] * 17), S.INVALID_COMBO),
                (lambda: b.mutate_in("doc", *[SD.upsert("a", 1)] * 17), S.INVALID_COMBO),
                (lambda: b.mutate_in("doc", SD.get("a")), S.INVALID_COMBO),
                (lambda: b.lookup_in("doc", SD.upsert("a", 1)), S.INVALID_COMBO),
                (lambda: b.mutate_in("doc", SD.upsert("a", 1), upsert_doc=True,
                                     insert_doc=True), S.EINVAL)] + [
                (lambda: b.mutate_in("doc", SD.upsert("$document.x", 1, xattr=True)),
                 S.XATTR_CANT_MODIFY_VATTR)] * self.supports_xattrs:
            e = yield self.assertFails(call(), SD.SubdocError, status)
            self.assertEqual((e.status, e.index), (status, None))
        after = yield b.get("doc")
        self.assertEqual((after.cas, after.value), (before.cas, DOC))

    @inlineCallbacks
    def test_subdoc_lookup_of_a_locked_document(self):
        if not self.supports_locks:
            return
        b = yield self.doc_bucket()
        yield b.lock("doc", ttl=5)
        r = yield b.lookup_in("doc", SD.get("name"))
        self.assertEqual((r.cas, r[0]), (LOCKED, "ada"))

    # -- mutations ------------------------------------------------------------

    @inlineCallbacks
    def test_subdoc_mutate_rows(self):
        b = yield self.bucket()
        for spec, expected, value in MUTATE_ROWS:
            before = yield b.upsert("doc", DOC)
            r = yield b.mutate_in("doc", spec)
            self.assertIsInstance(r, SD.SubdocResult)
            self.assertEqual(r.rc, S.SUCCESS)
            self.assertNotEqual(r.cas, before.cas, spec)
            got = yield b.get("doc")
            self.assertEqual((got.value, got.cas), (expected, r.cas), spec)
            if value is not None:
                self.assertEqual(r[0], value, spec)

    @inlineCallbacks
    def test_subdoc_mutate_error_rows_are_all_or_nothing(self):
        b = yield self.doc_bucket()
        before = yield b.get("doc")
        for spec, status in MUTATE_ERROR_ROWS:
            e = yield self.assertFails(b.mutate_in("doc", SD.upsert("touched", 1), spec),
                                       SD.SubdocError, S.MULTI_PATH_FAILURE)
            self.assertEqual((e.status, e.index), (status, 1), spec)
        after = yield b.get("doc")
        self.assertEqual((after.value, after.cas), (DOC, before.cas))

    @inlineCallbacks
    def test_subdoc_mutate_of_a_document_that_is_not_json(self):
        b = yield self.doc_bucket(value=b"not json")
        e = yield self.assertFails(b.mutate_in("doc", SD.upsert("a", 1)), SD.SubdocError)
        self.assertEqual((e.status, e.index), (S.DOC_NOTJSON, 0))
        got = yield b.get("doc")
        self.assertEqual(got.raw, b"not json")

    @inlineCallbacks
    def test_subdoc_many_specs_one_new_cas(self):
        b = yield self.doc_bucket()
        r = yield b.mutate_in("doc", SD.counter("n", 1), SD.counter("n", 1),
                              SD.array_append("tags", "z"), SD.remove("a"))
        self.assertEqual((r[0], r[1]), (6, 7))
        got = yield b.get("doc")
        self.assertEqual(got.cas, r.cas)
        expected = {k: v for k, v in DOC.items() if k != "a"}
        expected.update(n=7, tags=["x", "y", "z"])
        self.assertEqual(got.value, expected)
        again = yield b.mutate_in("doc", SD.upsert("m", 1))
        self.assertNotEqual(again.cas, r.cas)
        if r.mutation_token is not None:
            self.assertGreater(again.seqno, r.seqno)

    @inlineCallbacks
    def test_subdoc_document_flags(self):
        b = yield self.bucket()
        yield self.assertFails(b.mutate_in("new", SD.upsert("a", 1)), errors.NotFoundError,
                               0x01)
        yield self.assertFails(b.get("new"), errors.NotFoundError)
        r = yield b.mutate_in("new", SD.upsert("a.b", 1), upsert_doc=True)
        got = yield b.get("new")
        self.assertEqual((got.value, got.cas, got.flags), ({"a": {"b": 1}}, r.cas, FMT_JSON))
        yield b.mutate_in("new", SD.upsert("c", 2), upsert_doc=True)
        yield self.assertDocument(b, "new", {"a": {"b": 1}, "c": 2})
        yield self.assertFails(b.mutate_in("new", SD.upsert("d", 3), insert_doc=True),
                               errors.KeyExistsError, 0x02)
        yield b.mutate_in("list", SD.array_append("", 1), insert_doc=True)
        yield self.assertDocument(b, "list", [1])

    @inlineCallbacks
    def test_subdoc_mutate_with_cas(self):
        b = yield self.doc_bucket()
        stored = yield b.get("doc")
        yield self.assertFails(b.mutate_in("doc", SD.upsert("a", 1), cas=stored.cas + 1),
                               errors.KeyExistsError, 0x02)
        r = yield b.mutate_in("doc", SD.upsert("a", 1), cas=stored.cas)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("a", 2), cas=stored.cas),
                               errors.KeyExistsError, 0x02)
        yield self.assertDocument(b, "doc", dict(DOC, a=1))
        yield self.assertFails(b.mutate_in("missing", SD.upsert("a", 1), cas=r.cas),
                               errors.NotFoundError)

    @inlineCallbacks
    def test_subdoc_mutate_on_a_locked_document(self):
        if not self.supports_locks:
            return
        b = yield self.doc_bucket()
        locked = yield b.lock("doc", ttl=5)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("a", 1)),
                               errors.TemporaryFailError)
        yield b.mutate_in("doc", SD.upsert("a", 1), cas=locked.cas)
        yield b.upsert("doc", DOC)  # unlocked by the mutation with the lock's cas
        yield self.assertDocument(b, "doc", DOC)

    @inlineCallbacks
    def test_subdoc_mutate_ttl(self):
        """A mutation sets the expiry it is given, none if none (as upsert does)."""
        b = yield self.doc_bucket()
        yield b.mutate_in("doc", SD.upsert("a", 1), ttl=self.short_ttl)
        yield b.upsert("reset", DOC, ttl=self.short_ttl)
        yield b.mutate_in("reset", SD.upsert("a", 1))
        yield self.expire(self.short_ttl)
        yield self.assertFails(b.get("doc"), errors.NotFoundError)
        yield self.assertDocument(b, "reset", dict(DOC, a=1))

    @inlineCallbacks
    def test_subdoc_mutate_preserve_expiry(self):
        b = yield self.bucket()
        yield b.upsert("kept", DOC, ttl=self.short_ttl)
        d = b.mutate_in("kept", SD.upsert("a", 1), preserve_expiry=True)
        if not self.supports_preserve_expiry:
            yield self.assertFails(d, errors.NotSupportedError)
            yield self.assertDocument(b, "kept", DOC)
            return
        yield d
        yield self.assertDocument(b, "kept", dict(DOC, a=1))
        yield self.expire(self.short_ttl)
        yield self.assertFails(b.get("kept"), errors.NotFoundError)

    @inlineCallbacks
    def test_subdoc_mutate_remove_fulldoc_removes_the_document(self):
        b = yield self.doc_bucket()
        yield b.mutate_in("doc", SD.remove_fulldoc())
        yield self.assertFails(b.get("doc"), errors.NotFoundError)
        yield self.assertFails(b.lookup_in("doc", SD.get("a")), errors.NotFoundError)

    @inlineCallbacks
    def test_subdoc_mutate_too_big(self):
        b = yield self.doc_bucket()
        limit = yield self.max_value_size(b)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("pad", "x" * limit)),
                               errors.TooBigError, 0x03)
        yield self.assertDocument(b, "doc", DOC)

    @inlineCallbacks
    def test_subdoc_mutate_durability(self):
        b = yield self.doc_bucket()
        r = yield b.mutate_in("doc", SD.upsert("a", 1), persist_to=self.max_persist_to)
        if self.max_persist_to:
            e = yield b.endure("doc", persist_to=1, cas=r.cas)
            self.assertEqual(e.cas, r.cas)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("b", 1),
                                           persist_to=self.max_persist_to + 1),
                               errors.DurabilityError)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("b", 1), replicate_to=1),
                               errors.DurabilityError)
        yield self.assertDocument(b, "doc", dict(DOC, a=1))

    @inlineCallbacks
    def test_subdoc_bad_arguments(self):
        b = yield self.doc_bucket()
        yield self.assertFails(b.lookup_in("", SD.get("a")), errors.ArgumentError)
        yield self.assertFails(b.mutate_in("doc", SD.upsert("a", 1), ttl=-1),
                               errors.ArgumentError)
        yield self.assertDocument(b, "doc", DOC)

    # -- xattrs ---------------------------------------------------------------

    @inlineCallbacks
    def test_subdoc_xattrs_live_beside_the_body(self):
        b = yield self.doc_bucket()
        d = b.mutate_in("doc", SD.upsert("meta.v", 1, xattr=True, create_parents=True),
                        SD.upsert("_sys", "s", xattr=True))
        if not self.supports_xattrs:
            yield self.assertFails(d, errors.NotSupportedError)
            return
        yield d
        yield self.assertDocument(b, "doc", DOC)  # the body is untouched
        r = yield b.lookup_in("doc", SD.get("meta", xattr=True), SD.get("_sys", xattr=True),
                              SD.exists("nope", xattr=True), SD.get("name"))
        self.assertEqual([r.get(i) for i in range(4)],
                         [(0, {"v": 1}), (0, "s"), (S.PATH_ENOENT, None), (0, "ada")])
        # A whole-body upsert, replace or append keeps them...
        yield b.upsert("doc", {"other": 1})
        yield b.replace("doc", {"other": 2})
        r = yield b.lookup_in("doc", SD.get("meta.v", xattr=True), SD.get_fulldoc())
        self.assertEqual((r[0], r[1]), (1, {"other": 2}))
        # ... a removal drops them.
        yield b.remove("doc")
        yield b.upsert("doc", DOC)
        r = yield b.lookup_in("doc", SD.get("meta", xattr=True))
        self.assertEqual(r.status(0), S.PATH_ENOENT)

    @inlineCallbacks
    def test_subdoc_xattr_errors(self):
        b = yield self.doc_bucket()
        if not self.supports_xattrs:
            yield self.assertFails(b.lookup_in("doc", SD.get("x", xattr=True)),
                                   errors.NotSupportedError)
            return
        for specs, status in [
                ((SD.upsert("a", 1), SD.upsert("x", 1, xattr=True)), S.INVALID_XATTR_ORDER),
                ((SD.upsert("k" * 16, 1, xattr=True),), S.XATTR_EINVAL),
                ((SD.upsert("x", 1, xattr=True), SD.upsert("y.z", 1, xattr=True)),
                 S.PATH_ENOENT)]:
            e = yield self.assertFails(b.mutate_in("doc", *specs), SD.SubdocError)
            self.assertEqual(e.status, status, specs)
        yield self.assertDocument(b, "doc", DOC)
        r = yield b.lookup_in("doc", SD.get("$nope", xattr=True))
        self.assertEqual(r.status(0), S.XATTR_UNKNOWN_VATTR)

    @inlineCallbacks
    def test_subdoc_macros_expand_at_write_time(self):
        b = yield self.doc_bucket()
        if not self.supports_xattrs:
            yield self.assertFails(b.mutate_in("doc", SD.upsert(
                "m", SD.MutationMacro.CAS, xattr=True)), errors.NotSupportedError)
            yield self.assertDocument(b, "doc", DOC)
            return
        r = yield b.mutate_in(
            "doc", SD.upsert("m.cas", SD.MutationMacro.CAS, xattr=True, create_parents=True),
            SD.upsert("m.crc", SD.MutationMacro.VALUE_CRC32C, xattr=True),
            SD.upsert("m.seqno", SD.MutationMacro.SEQNO, xattr=True), SD.upsert("a", 1))
        got = yield b.get("doc")
        self.assertEqual(got.cas, r.cas)
        found = yield b.lookup_in("doc", SD.get("m", xattr=True))
        m = found[0]
        self.assertEqual(m["cas"], _hex_cas(r.cas))
        self.assertEqual(m["crc"], "0x%08x" % SD.crc32c(got.raw))
        self.assertEqual(int(m["seqno"], 16), r.seqno)
        self.assertEqual((r[0], r[1], r[2]), (m["cas"], m["crc"], m["seqno"]))

    @inlineCallbacks
    def test_subdoc_virtual_document_xattr(self):
        b = yield self.bucket()
        stored = yield b.upsert("doc", DOC, ttl=1000)
        d = b.lookup_in("doc", SD.get("$document", xattr=True),
                        SD.get("$document.exptime", xattr=True))
        if not self.supports_xattrs:
            yield self.assertFails(d, errors.NotSupportedError)
            return
        r = yield d
        doc = r[0]
        self.assertEqual(doc["CAS"], "0x%016x" % stored.cas)
        self.assertEqual(doc["flags"], FMT_JSON)
        got = yield b.get("doc")
        self.assertEqual(doc["value_bytes"], len(got.raw))
        self.assertEqual(doc["deleted"], False)
        self.assertEqual(r[1], doc["exptime"])
        self.assertGreater(doc["exptime"], 0)
