"""
Sub-documents for :class:`txcb.buckets.couchbase.CouchbaseBucket`: txcb's
``lookup_in`` / ``mutate_in`` through the SDK's own sub-document API
(``couchbase.subdocument``).

Each txcb spec becomes the SDK's spec by its opcode (:data:`_BUILD`); values
stay the raw JSON txcb's spec carries, handed through the bucket's
passthrough transcoder as ``(bytes, flags)``, except where the SDK builds the
value itself: array values (it JSON-encodes them as a list, so they are
parsed first), counter deltas (an int) and ``${Mutation...}`` macros (the
SDK's MutationMacro).  Results come back as :class:`txcb.subdocument.SubdocResult`
with kv_engine's statuses: a lookup's per-spec statuses are the server's
own; a failed mutation's spec status is read from the SDK's exception (its
error code), its index from the exception's context.

What the SDK cannot express is refused with NotSupportedError: path flags
its spec for the opcode cannot carry (``BINARY_VALUE``; any on a
whole-document spec; create-parents on replace or remove; macros in an
add-unique or counter), a macro inside a value (a value that is one macro,
as a JSON string, is sent as the SDK's MutationMacro), and what the SDK
refuses with ``preserve_expiry`` (an insert spec; a replace spec with a ttl).

Some requests the SDK would refuse with errors of its own, or change (it
adds the xattr flag to a macro spec; its C++ core sends xattr specs first),
so they are refused here with the engine's statuses, as every provider's:
no specs, lookup specs in a mutation or the reverse (INVALID_COMBO),
``insert_doc`` with ``upsert_doc`` or a CAS (EINVAL), an xattr spec after a
body spec (INVALID_XATTR_ORDER), macros without the xattr flag
(XATTR_INVALID_FLAG_COMBO); array values or a counter delta it cannot parse
fail at their index (VALUE_CANTINSERT, DELTA_EINVAL), before anything is sent.
Array values are sent as the SDK re-encodes them (same values, its spacing).
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred, fail

import txcb.subdocument as SD
from txcb.buckets.cbsdk import expiry, sdk_error, text_key
from txcb.errors import ArgumentError, CouchbaseError, NotSupportedError
from txcb.formats import FMT_JSON
from txcb.validation import check_cas, check_ttl

__all__ = ["SubdocCalls"]

S, Op, PF = SD.Status, SD.Opcode, SD.PathFlag
_INT64 = 1 << 63

#: The couchbase-cxx-client's key-value error codes of a failed spec, as
#: kv_engine's statuses.
_STATUS_BY_CODE: Dict[int, int] = {
    113: S.PATH_ENOENT, 114: S.PATH_MISMATCH, 115: S.PATH_EINVAL, 116: S.PATH_E2BIG,
    117: S.DOC_E2DEEP, 118: S.VALUE_ETOODEEP, 119: S.VALUE_CANTINSERT,
    120: S.DOC_NOTJSON, 121: S.NUM_ERANGE, 122: S.DELTA_EINVAL, 123: S.PATH_EEXISTS,
    124: S.XATTR_UNKNOWN_MACRO, 127: S.XATTR_UNKNOWN_VATTR,
    128: S.XATTR_CANT_MODIFY_VATTR,
}

#: Request statuses that are the sub-document engine's refusals (the rest --
#: missing key, CAS, lock, size -- are the usual key-value errors).
_REQUEST_STATUSES = frozenset([S.EINVAL, S.XATTR_EINVAL] + [
    s for s in range(0xC0, 0xD8) if s not in (
        S.MULTI_PATH_FAILURE, S.SUCCESS_DELETED, S.MULTI_PATH_FAILURE_DELETED)])


def _refuse(n: int, why: str) -> NotSupportedError:
    return NotSupportedError("sub-document spec %d: %s cannot be expressed through the "
                             "Couchbase SDK" % (n, why))


def _value(sd: Any, spec: SD.Spec, n: int) -> Any:
    """The spec's value for the SDK: a MutationMacro, or the raw JSON as it is."""
    if not spec.flags & PF.EXPAND_MACROS:
        return (spec.value, FMT_JSON)
    name = _macro(spec)
    if name is None:
        raise _refuse(n, "a macro inside a value (a value that is one macro, as text, is)")
    return sd.MutationMacro(name)


def _macro(spec: SD.Spec) -> Optional[str]:
    """The macro a macro-expanding spec's value names (the server checks the
    name), or None if the value is not one JSON string."""
    try:
        name = json.loads(spec.value)
    except ValueError:
        return None
    return name if isinstance(name, str) else None


def _array(sd: Any, spec: SD.Spec, n: int) -> List[Any]:
    """The values, parsed (the SDK encodes them); a macro is one value alone."""
    if spec.flags & PF.EXPAND_MACROS:
        return [_value(sd, spec, n)]
    try:
        return json.loads(b"[" + spec.value + b"]")
    except ValueError:
        raise SD.SubdocError(S.VALUE_CANTINSERT, "the values are not JSON", index=n)


def _delta(spec: SD.Spec, n: int) -> int:
    try:
        delta = int(spec.value)
    except ValueError:
        delta = 0
    if not delta or not -_INT64 <= delta < _INT64:
        raise SD.SubdocError(S.DELTA_EINVAL, "the delta is not a non-zero int64", index=n)
    return delta


def _x(spec: SD.Spec) -> bool:
    return spec.xattr


def _mk(spec: SD.Spec) -> bool:
    return bool(spec.flags & PF.MKDIR_P)


_X, _XE, _MX, _ALL = PF.XATTR, PF.XATTR | PF.EXPAND_MACROS, PF.MKDIR_P | PF.XATTR, (
    PF.MKDIR_P | PF.XATTR | PF.EXPAND_MACROS)

#: opcode -> (build(sdk_subdocument, spec, index), the path flags its SDK
#: spec can carry: the server judges those; others cannot be sent).
_BUILD: Dict[int, Tuple[Callable[[Any, SD.Spec, int], Any], int]] = {
    Op.GET: (lambda sd, s, n: sd.get(s.path, xattr=_x(s)), _X),
    Op.EXISTS: (lambda sd, s, n: sd.exists(s.path, xattr=_x(s)), _X),
    Op.GET_COUNT: (lambda sd, s, n: sd.count(s.path, xattr=_x(s)), _X),
    Op.GET_DOC: (lambda sd, s, n: sd.get_full(), 0),
    Op.DICT_ADD: (lambda sd, s, n: sd.insert(s.path, _value(sd, s, n), create_parents=_mk(s),
                                             xattr=_x(s)), _ALL),
    Op.DICT_UPSERT: (lambda sd, s, n: sd.upsert(
        s.path, _value(sd, s, n), create_parents=_mk(s), xattr=_x(s)), _ALL),
    Op.REPLACE: (lambda sd, s, n: sd.replace(s.path, _value(sd, s, n), xattr=_x(s)), _XE),
    Op.SET_DOC: (lambda sd, s, n: sd.replace("", _value(sd, s, n)), 0),
    Op.DELETE: (lambda sd, s, n: sd.remove(s.path, xattr=_x(s)), _X),
    Op.DELETE_DOC: (lambda sd, s, n: sd.remove(""), 0),
    Op.ARRAY_PUSH_LAST: (lambda sd, s, n: sd.array_append(
        s.path, *_array(sd, s, n), create_parents=_mk(s), xattr=_x(s)), _ALL),
    Op.ARRAY_PUSH_FIRST: (lambda sd, s, n: sd.array_prepend(
        s.path, *_array(sd, s, n), create_parents=_mk(s), xattr=_x(s)), _ALL),
    Op.ARRAY_INSERT: (lambda sd, s, n: sd.array_insert(
        s.path, *_array(sd, s, n), create_parents=_mk(s), xattr=_x(s)), _ALL),
    # The SDK's array_addunique passes a MutationMacro on unencoded: no macros.
    Op.ARRAY_ADD_UNIQUE: (lambda sd, s, n: sd.array_addunique(
        s.path, _value(sd, s, n), create_parents=_mk(s), xattr=_x(s)), _MX),
    Op.COUNTER: (lambda sd, s, n: sd.counter(s.path, _delta(s, n), xattr=_x(s),
                                             create_parents=_mk(s)), _MX),
}


def sdk_specs(sd: Any, specs: Sequence[Any], lookup: bool) -> List[Any]:
    """txcb's specs as the SDK's (SubdocError / NotSupportedError / ArgumentError)."""
    if not specs:  # the SDK refuses it as an invalid argument
        raise SD.SubdocError(S.INVALID_COMBO, "no specs")
    out = []
    body_seen = False
    for n, spec in enumerate(specs):
        if not isinstance(spec, SD.Spec):
            raise ArgumentError("sub-document specs are built by txcb.subdocument "
                                "(SD.get, SD.upsert...), not %r" % (spec,))
        try:
            mine = SD.is_lookup(spec) == lookup
        except ValueError:
            raise _refuse(n, "opcode 0x%02x" % spec.opcode)
        if not mine:
            raise SD.SubdocError(S.INVALID_COMBO, "spec %d is a %s spec" % (
                n, "mutation" if lookup else "lookup"))
        if spec.xattr and body_seen:  # the SDK would reorder them
            raise SD.SubdocError(S.INVALID_XATTR_ORDER, "spec %d: xattr specs must come "
                                 "before document specs" % n)
        body_seen = body_seen or not spec.xattr
        build, carried = _BUILD[spec.opcode]
        if spec.flags & PF.EXPAND_MACROS and not spec.xattr:  # the SDK would add XATTR
            raise SD.SubdocError(S.XATTR_INVALID_FLAG_COMBO, "spec %d: expand macros needs "
                                 "the xattr flag" % n)
        if spec.flags & ~carried:
            raise _refuse(n, "path flags 0x%02x on opcode 0x%02x" % (spec.flags, spec.opcode))
        out.append(build(sd, spec, n))
    return out


def failed_spec(e: BaseException, key: Any) -> Optional[CouchbaseError]:
    """The SubdocError an SDK sub-document exception stands for, or None
    (then it is a key-value error: :func:`txcb.buckets.cbsdk.sdk_error`)."""
    ctx = getattr(e, "context", None)
    # SDK 4.6.3's KeyValueErrorContext keeps the status without an accessor.
    status = (getattr(ctx, "_kv_err_ctx", None) or {}).get("status_code")
    index = getattr(ctx, "first_error_index", None)
    if status == S.MULTI_PATH_FAILURE and index is not None:
        code = getattr(e, "error_code", None)
        status = _STATUS_BY_CODE.get(code if isinstance(code, int) else -1, S.EINVAL)
        return SD.SubdocError(status, index=index, key=key)
    if status in _REQUEST_STATUSES:
        return SD.SubdocError(status, key=key)
    return None


def _fields(r: Any) -> List[Dict[str, Any]]:
    """The SDK's per-spec outcomes, in spec order."""
    return sorted(r.value or [], key=lambda f: f.get("original_index", 0))


def _raw(field: Dict[str, Any]) -> Optional[bytes]:
    value = field.get("value")
    return value[0] if isinstance(value, tuple) else value or None


def _deleted(r: Any) -> bool:
    """Whether the lookup read a deleted document (access_deleted): SDK 4.6.3
    has no accessor for it, only its raw result."""
    raw = getattr(getattr(r, "_orig", None), "raw_result", None)
    return bool(raw.get("deleted")) if isinstance(raw, dict) else False


def lookup_result(key: Any, specs: Sequence[SD.Spec], r: Any) -> SD.SubdocResult:
    results = []
    for spec, f in zip(specs, _fields(r)):
        status = f.get("status", S.EINVAL)
        ok = status == S.SUCCESS and spec.opcode != Op.EXISTS
        results.append(SD.SpecResult(status, _raw(f) if ok else None))
    ok = all(x.status == S.SUCCESS for x in results)
    if _deleted(r):
        overall = S.SUCCESS_DELETED if ok else S.MULTI_PATH_FAILURE_DELETED
    else:
        overall = S.SUCCESS if ok else S.MULTI_PATH_FAILURE
    return SD.SubdocResult(key, r.cas, specs, results, overall)


def mutation_result(key: Any, specs: Sequence[SD.Spec], r: Any,
                    macros: Dict[int, Optional[bytes]]) -> SD.SubdocResult:
    results = [SD.SpecResult(S.SUCCESS, macros.get(n, _raw(f)))
               for n, f in enumerate(_fields(r))]
    token = r.mutation_token() if hasattr(r, "mutation_token") else None
    mt = (token.partition_uuid, token.sequence_number) if token is not None else None
    return SD.SubdocResult(key, r.cas, specs, results, S.SUCCESS, mt)


class SubdocCalls:
    """lookup_in / mutate_in of :class:`~txcb.buckets.couchbase.CouchbaseBucket`
    (it provides ``_sdk``, ``_call``, ``_opts`` and ``_durability``)."""

    if TYPE_CHECKING:
        _sdk: Any

        def _call(self, op: str, key: Any, work: Callable[[Any, Any], Any],
                  timeout: Optional[float], durable: bool = False) -> Deferred: ...
        def _opts(self, name: str, timeout: Any, **kwargs: Any) -> tuple: ...
        def _durability(self, persist_to: int, replicate_to: int, key: Any) -> Any: ...

    def lookup_in(self, key: Any, *specs: Any, access_deleted: bool = False) -> Deferred:
        try:
            k = text_key(key)
            built = sdk_specs(self._sdk.sd, specs, lookup=True)
        except CouchbaseError as e:
            return fail(_keyed(e, key))

        def work(coll: Any, t: Any) -> Any:
            try:
                r = coll.lookup_in(k, built, *self._opts(
                    "LookupInOptions", t, access_deleted=access_deleted or None))
            except Exception as e:
                return failed_spec(e, key) or sdk_error("lookup_in", e, key)
            return lookup_result(key, specs, r)
        return self._call("lookup_in", key, work, None)

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, preserve_expiry: bool = False) -> Deferred:
        try:
            k = text_key(key)
            if cas:
                check_cas(cas, key)
            check_ttl(ttl, key)
            if insert_doc and (upsert_doc or cas):
                raise SD.SubdocError(S.EINVAL, "insert_doc with %s" % (
                    "upsert_doc" if upsert_doc else "a CAS"))
            built = sdk_specs(self._sdk.sd, specs, lookup=False)
            if preserve_expiry:
                _check_preserve(specs, ttl)
            durability = self._durability(persist_to, replicate_to, key)
        except CouchbaseError as e:
            return fail(_keyed(e, key))
        life = expiry(ttl)
        past = life is not None and life.total_seconds() < 0
        SS = self._sdk.sd.StoreSemantics
        opts = dict(cas=cas or None, durability=durability,
                    expiry=None if past else life, preserve_expiry=preserve_expiry or None,
                    store_semantics=SS.UPSERT if upsert_doc else SS.INSERT if insert_doc
                    else None)

        def work(coll: Any, t: Any) -> Any:
            try:
                r = coll.mutate_in(k, built, *self._opts("MutateInOptions", t, **opts))
            except Exception as e:
                return failed_spec(e, key) or sdk_error("mutate_in", e, key)
            macros = self._macro_values(coll, t, k, specs, r.cas)
            if past:  # an absolute time already gone: made and expired at once
                coll.remove(k, *self._opts("RemoveOptions", t, cas=r.cas))
            return mutation_result(key, specs, r, macros)
        return self._call("mutate_in", key, work, None, durability is not None)

    def _macro_values(self, coll: Any, t: Any, k: str, specs: Sequence[SD.Spec],
                      cas: int) -> Dict[int, Optional[bytes]]:
        """What the macros became (the server does not say): read back, while
        the document still has the mutation's CAS (else left unknown: None)."""
        where = [n for n, s in enumerate(specs) if s.flags & PF.EXPAND_MACROS]
        if not where:
            return {}
        sd = self._sdk.sd
        try:
            r = coll.lookup_in(k, [sd.get(_written(specs[n]), xattr=True) for n in where],
                               *self._opts("LookupInOptions", t))
        except Exception:
            return dict.fromkeys(where)
        if r.cas != cas:
            return dict.fromkeys(where)
        return {n: _raw(f) if f.get("status") == S.SUCCESS else None
                for n, f in zip(where, _fields(r))}


#: Where an array push wrote its one value, after the array's path.
_PUSHED = {Op.ARRAY_PUSH_LAST: "[-1]", Op.ARRAY_PUSH_FIRST: "[0]"}


def _written(spec: SD.Spec) -> str:
    """The path of the value a macro spec wrote (a push: the array's element)."""
    return spec.path + _PUSHED.get(spec.opcode, "")


def _check_preserve(specs: Sequence[SD.Spec], ttl: int) -> None:
    """What the SDK refuses with preserve_expiry (the server would take it)."""
    ops = {spec.opcode for spec in specs}
    if Op.DICT_ADD in ops:
        raise NotSupportedError("the Couchbase SDK refuses preserve_expiry with an "
                                "insert spec (SD.insert)")
    if Op.REPLACE in ops and ttl:
        raise NotSupportedError("the Couchbase SDK refuses preserve_expiry with a ttl "
                                "and a replace spec (SD.replace)")


def _keyed(e: CouchbaseError, key: Any) -> CouchbaseError:
    if e.key is None:
        e.key = key
    return e
