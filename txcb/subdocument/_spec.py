"""
Specs and the checks a spec list passes before anything runs, in the order
kv_engine's ``daemon/subdocument_validators.cc`` makes them (the order
decides which status a bad request gets).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

from txcb.subdocument._const import (
    MAX_PATH_LEN, MAX_SPECS, DocFlag, Opcode, PathFlag, Status, SubdocError)
from txcb.subdocument._xattr import MUTATION_MACROS, xattr_key

__all__ = ["Spec", "Traits", "TRAITS", "check_request"]

_M, _X, _E = PathFlag.MKDIR_P, PathFlag.XATTR, PathFlag.EXPAND_MACROS
_AD, _RR = DocFlag.ACCESS_DELETED, DocFlag.REPLICA_READ
_MKDOC, _ADD = DocFlag.MKDOC, DocFlag.ADD


class Spec(NamedTuple):
    """One operation of a lookup_in / mutate_in: the wire's spec, decoded."""
    opcode: int
    path: str = ""
    value: bytes = b""
    flags: int = 0

    @property
    def xattr(self) -> bool:
        return bool(self.flags & PathFlag.XATTR)

    @classmethod
    def from_wire(cls, opcode: int, flags: int, path: bytes, value: bytes = b"") -> "Spec":
        """A spec as 0xd0 / 0xd1 carry it (a path that is not UTF-8 gets PATH_EINVAL)."""
        return cls(opcode, path.decode("utf-8", "surrogateescape"), value, flags)


class Traits(NamedTuple):
    """What an opcode allows (kv_engine ``daemon/subdocument_traits.h``)."""
    mutator: bool
    path_flags: int       # the path flags it accepts
    doc_flags: int        # the doc flags it accepts
    has_value: bool
    empty_path: bool      # an empty path is allowed
    whole_doc: bool = False


TRAITS = {
    Opcode.GET_DOC: Traits(False, 0, _AD | _RR, False, True, True),
    Opcode.SET_DOC: Traits(True, 0, _MKDOC | _ADD, True, True, True),
    Opcode.DELETE_DOC: Traits(True, 0, _AD, False, True, True),
    Opcode.GET: Traits(False, _X, _AD | _RR, False, False),
    Opcode.EXISTS: Traits(False, _X, _AD | _RR, False, False),
    Opcode.GET_COUNT: Traits(False, _X, _AD | _RR, False, True),
    Opcode.DICT_ADD: Traits(True, _M | _X | _E, _MKDOC | _AD | _ADD, True, False),
    Opcode.DICT_UPSERT: Traits(True, _M | _X | _E, _MKDOC | _AD | _ADD, True, False),
    Opcode.DELETE: Traits(True, _X, _AD, False, False),
    Opcode.REPLACE: Traits(True, _X | _E, _AD | _ADD, True, False),
    Opcode.ARRAY_PUSH_LAST: Traits(True, _M | _X | _E, _MKDOC | _AD | _ADD, True, True),
    Opcode.ARRAY_PUSH_FIRST: Traits(True, _M | _X | _E, _MKDOC | _AD | _ADD, True, True),
    Opcode.ARRAY_INSERT: Traits(True, _X | _E, _AD | _ADD, True, False),
    Opcode.ARRAY_ADD_UNIQUE: Traits(True, _M | _X, _MKDOC | _AD | _ADD, True, True),
    Opcode.COUNTER: Traits(True, _M | _X, _MKDOC | _AD | _ADD, True, False),
}


def _fail(status: int, why: str) -> SubdocError:
    return SubdocError(status, why)


def check_request(specs: Sequence[Spec], mutator: bool, doc_flags: int, cas: int = 0) -> None:
    """Raise SubdocError (nothing run) for a spec list Couchbase refuses."""
    _check_doc_flags(doc_flags, cas)
    body_seen = last_seen = False
    for n, spec in enumerate(specs[:MAX_SPECS]):
        if last_seen:
            raise _fail(Status.INVALID_COMBO, "spec %d follows a whole-document delete" % n)
        _check_spec(n, spec, mutator, doc_flags)
        if spec.xattr and body_seen:
            raise _fail(Status.INVALID_XATTR_ORDER,
                        "spec %d: xattr specs must come before document specs" % n)
        isolated = spec.opcode == Opcode.DELETE_DOC
        if isolated and body_seen:
            raise _fail(Status.INVALID_COMBO, "spec %d: a whole-document delete must be the "
                        "only document spec" % n)
        body_seen = body_seen or not spec.xattr
        last_seen = isolated
    if not specs:
        raise _fail(Status.INVALID_COMBO, "no specs")
    if len(specs) > MAX_SPECS:
        raise _fail(Status.INVALID_COMBO, "at most %d specs per call" % MAX_SPECS)


def _check_doc_flags(doc_flags: int, cas: int) -> None:
    if doc_flags & ~DocFlag.KNOWN:
        raise _fail(Status.EINVAL, "unknown document flags 0x%02x" % doc_flags)
    if doc_flags & (DocFlag.CREATE_AS_DELETED | DocFlag.REVIVE_DOCUMENT):
        raise _fail(Status.NOT_SUPPORTED, "create-as-deleted and revive are not supported")
    if doc_flags & _ADD and cas:
        raise _fail(Status.EINVAL, "insert_doc (ADD) with a CAS")
    if doc_flags & _ADD and doc_flags & _MKDOC:
        raise _fail(Status.EINVAL, "upsert_doc (MKDOC) and insert_doc (ADD) together")


def _check_spec(n: int, spec: Spec, mutator: bool, doc_flags: int) -> Traits:
    traits = TRAITS.get(spec.opcode)
    if traits is None:
        raise _fail(Status.INVALID_COMBO, "spec %d: unknown opcode 0x%02x" % (n, spec.opcode))
    if traits.mutator != mutator:
        raise _fail(Status.INVALID_COMBO, "spec %d: a %s spec in a %s" % (
            n, "mutation" if traits.mutator else "lookup",
            "lookup_in" if traits.mutator else "mutate_in"))
    if spec.flags & ~traits.path_flags:
        raise _fail(Status.EINVAL, "spec %d: path flags 0x%02x invalid here" % (n, spec.flags))
    if doc_flags & ~traits.doc_flags:
        raise _fail(Status.EINVAL, "spec %d: document flags 0x%02x invalid with opcode 0x%02x"
                    % (n, doc_flags, spec.opcode))
    if len(spec.path.encode("utf-8", "surrogateescape")) > MAX_PATH_LEN:
        raise _fail(Status.EINVAL, "spec %d: path longer than %d bytes" % (n, MAX_PATH_LEN))
    if traits.whole_doc and spec.path:
        raise _fail(Status.EINVAL, "spec %d: a whole-document spec has no path" % n)
    _check_xattr(n, spec, traits)
    if not spec.xattr and not traits.empty_path and not spec.path:
        raise _fail(Status.EINVAL, "spec %d: this spec needs a path" % n)
    if traits.has_value != bool(spec.value):
        raise _fail(Status.EINVAL, "spec %d: %s" % (
            n, "a value is required" if traits.has_value else "this spec takes no value"))
    return traits


def _check_xattr(n: int, spec: Spec, traits: Traits) -> None:
    expand = spec.flags & PathFlag.EXPAND_MACROS
    if not spec.xattr:
        if expand:
            raise _fail(Status.XATTR_INVALID_FLAG_COMBO,
                        "spec %d: expand macros needs the xattr flag" % n)
        return
    if xattr_key(spec.path) is None:
        raise _fail(Status.XATTR_EINVAL, "spec %d: invalid xattr key in %r" % (n, spec.path))
    if spec.path.startswith("$") and traits.mutator:
        raise _fail(Status.XATTR_CANT_MODIFY_VATTR, "spec %d: virtual xattrs are read-only" % n)
    if expand:
        text = spec.value.decode("utf-8", "replace")
        if text not in MUTATION_MACROS and not (
                text.startswith('"${$document') and text.endswith('}"')):
            raise _fail(Status.XATTR_UNKNOWN_MACRO, "spec %d: unknown macro %s" % (n, text))
