"""
Sub-document operations: read and change parts of a JSON document.

Import it as the Couchbase Python SDK 2.x does::

    import txcb.subdocument as SD
    bucket.mutate_in("k", SD.upsert("a.b", 1, create_parents=True),
                     SD.counter("n", 1), SD.array_addunique("tags", "x"))

The spec helpers build :class:`Spec` (the wire's spec: opcode, path, JSON
value, flags).  :func:`lookup` and :func:`mutate` are the engine every
bucket and the Couchbase endpoint call: pure functions over a document's
body, its xattrs and its :class:`DocumentMeta`, with Couchbase Server's
semantics and status codes (kv_engine ``docs/SubDocument.md``).
"""

from __future__ import annotations

import json
from typing import Any, Iterator, List, Optional, Sequence, Tuple, Union

from txcb.subdocument._const import (
    MAX_DEPTH, MAX_PATH_COMPONENTS, MAX_PATH_LEN, MAX_SPECS, MAX_XATTR_KEY_LEN, DocFlag,
    Opcode, PathFlag, Status, SubdocError)
from txcb.subdocument._engine import Lookup, Mutation, SpecResult, lookup, mutate
from txcb.subdocument._spec import TRAITS, Spec
from txcb.subdocument._xattr import DocumentMeta, crc32c

__all__ = [
    "Status", "Opcode", "PathFlag", "DocFlag", "SubdocError", "Spec", "SpecResult",
    "Lookup", "Mutation", "DocumentMeta", "SubdocResult", "MutationMacro", "lookup",
    "mutate", "crc32c", "is_lookup", "MAX_PATH_LEN", "MAX_SPECS", "MAX_DEPTH",
    "MAX_PATH_COMPONENTS", "MAX_XATTR_KEY_LEN",
    "get", "exists", "get_count", "upsert", "insert", "replace", "remove",
    "array_append", "array_prepend", "array_insert", "array_addunique", "counter",
    "get_fulldoc", "upsert_fulldoc", "remove_fulldoc",
]


class _Macro(str):
    """A server-side macro: the value is the macro's name, expanded at write time."""


class MutationMacro:
    """Values expanded by the server when the mutation is written (xattrs only)."""
    CAS = _Macro('"${Mutation.CAS}"')
    SEQNO = _Macro('"${Mutation.seqno}"')
    VALUE_CRC32C = _Macro('"${Mutation.value_crc32c}"')


def is_lookup(spec: Spec) -> bool:
    """True for specs lookup_in takes, False for mutate_in's (unknown: ValueError)."""
    traits = TRAITS.get(spec.opcode)
    if traits is None:
        raise ValueError("unknown sub-document opcode 0x%02x" % spec.opcode)
    return not traits.mutator


def _encode(value: Any) -> bytes:
    if isinstance(value, _Macro):
        return str(value).encode()
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def _flags(xattr: bool, create_parents: bool = False, expand: bool = False) -> int:
    return ((PathFlag.XATTR if xattr else 0) | (PathFlag.MKDIR_P if create_parents else 0)
            | (PathFlag.EXPAND_MACROS if expand else 0))


def _mutation(op: int, path: str, value: Any, create_parents: bool, xattr: bool,
              expand: bool) -> Spec:
    expand = expand or isinstance(value, _Macro)
    return Spec(op, path, _encode(value), _flags(xattr, create_parents, expand))


def _many(op: int, path: str, values: Sequence[Any], create_parents: bool,
          xattr: bool, expand: bool = False) -> Spec:
    if not values:
        raise ValueError("at least one value is required")
    expand = expand or any(isinstance(v, _Macro) for v in values)
    text = b",".join(_encode(v) for v in values)
    return Spec(op, path, text, _flags(xattr, create_parents, expand))


def get(path: str, xattr: bool = False) -> Spec:
    """The value at ``path`` (lookup_in)."""
    return Spec(Opcode.GET, path, b"", _flags(xattr))


def exists(path: str, xattr: bool = False) -> Spec:
    """Whether ``path`` exists (lookup_in)."""
    return Spec(Opcode.EXISTS, path, b"", _flags(xattr))


def get_count(path: str, xattr: bool = False) -> Spec:
    """How many elements / members the array or object at ``path`` has (lookup_in)."""
    return Spec(Opcode.GET_COUNT, path, b"", _flags(xattr))


def upsert(path: str, value: Any, create_parents: bool = False, xattr: bool = False,
           _expand_macros: bool = False) -> Spec:
    """Set the dictionary key at ``path``, new or not."""
    return _mutation(Opcode.DICT_UPSERT, path, value, create_parents, xattr, _expand_macros)


def insert(path: str, value: Any, create_parents: bool = False, xattr: bool = False,
           _expand_macros: bool = False) -> Spec:
    """Add the dictionary key at ``path``; PATH_EEXISTS if it is there."""
    return _mutation(Opcode.DICT_ADD, path, value, create_parents, xattr, _expand_macros)


def replace(path: str, value: Any, xattr: bool = False, _expand_macros: bool = False) -> Spec:
    """Replace the value at ``path``; PATH_ENOENT if there is none."""
    return _mutation(Opcode.REPLACE, path, value, False, xattr, _expand_macros)


def remove(path: str, xattr: bool = False) -> Spec:
    """Remove the key or element at ``path``."""
    return Spec(Opcode.DELETE, path, b"", _flags(xattr))


def array_append(path: str, *values: Any, create_parents: bool = False,
                 xattr: bool = False, _expand_macros: bool = False) -> Spec:
    """Add ``values`` at the end of the array at ``path`` ("" is the document)."""
    return _many(Opcode.ARRAY_PUSH_LAST, path, values, create_parents, xattr, _expand_macros)


def array_prepend(path: str, *values: Any, create_parents: bool = False,
                  xattr: bool = False, _expand_macros: bool = False) -> Spec:
    """Add ``values`` at the start of the array at ``path``."""
    return _many(Opcode.ARRAY_PUSH_FIRST, path, values, create_parents, xattr,
                 _expand_macros)


def array_insert(path: str, *values: Any, xattr: bool = False,
                 _expand_macros: bool = False) -> Spec:
    """Insert ``values`` at ``path``, which ends in ``[n]`` (n up to the array's size)."""
    return _many(Opcode.ARRAY_INSERT, path, values, False, xattr, _expand_macros)


def array_addunique(path: str, value: Any, create_parents: bool = False,
                    xattr: bool = False) -> Spec:
    """Append the primitive ``value`` unless the array holds it; PATH_EEXISTS if it does."""
    return _mutation(Opcode.ARRAY_ADD_UNIQUE, path, value, create_parents, xattr, False)


def counter(path: str, delta: int, create_parents: bool = False, xattr: bool = False) -> Spec:
    """Add ``delta`` (a non-zero int64) to the integer at ``path``; the result is the sum."""
    if isinstance(delta, bool) or not isinstance(delta, int):
        raise ValueError("the delta must be an integer")
    return Spec(Opcode.COUNTER, path, str(delta).encode(), _flags(xattr, create_parents))


def get_fulldoc() -> Spec:
    """The whole body (lookup_in; with xattr specs before it, one consistent read)."""
    return Spec(Opcode.GET_DOC)


def upsert_fulldoc(value: Any) -> Spec:
    """Replace the whole body (mutate_in; xattrs are kept)."""
    return Spec(Opcode.SET_DOC, "", _encode(value))


def remove_fulldoc() -> Spec:
    """Delete the document (mutate_in; the last document spec; system xattrs stay)."""
    return Spec(Opcode.DELETE_DOC)


class SubdocResult:
    """
    The result of lookup_in / mutate_in, shaped as the Couchbase SDK 2.x's.

    ``result[i]`` and ``result["path"]`` are the decoded values (a failed
    spec raises its :class:`SubdocError`), ``result.exists(i)`` is whether
    the path was found, ``result.status(i)`` the spec's status code and
    ``result.raw(i)`` the raw JSON bytes.  ``cas`` is the document's CAS
    (for mutate_in, the new one); ``mutation_token`` is (vbucket uuid,
    seqno) for mutate_in when the bucket has one.
    """

    def __init__(self, key: Any, cas: int, specs: Sequence[Spec],
                 results: Sequence[SpecResult], status: int = Status.SUCCESS,
                 mutation_token: Optional[Tuple[int, int]] = None) -> None:
        if len(specs) != len(results):
            raise ValueError("one result per spec")
        self.key, self.cas, self.specs = key, cas, list(specs)
        self.results: List[SpecResult] = list(results)
        self.rc = status
        self.mutation_token = mutation_token

    @classmethod
    def of_lookup(cls, key: Any, cas: int, specs: Sequence[Spec],
                  found: Lookup) -> "SubdocResult":
        return cls(key, cas, specs, found.results, found.status)

    @classmethod
    def of_mutation(cls, key: Any, cas: int, specs: Sequence[Spec], done: Mutation,
                    mutation_token: Optional[Tuple[int, int]] = None,
                    seqno: Optional[int] = None) -> "SubdocResult":
        """With ``seqno``, specs whose value was a ``${Mutation...}`` macro read
        as what it became (the SDK's view; the wire does not carry them)."""
        results = list(done.results)
        if seqno is not None:
            for n, value in done.macro_values(cas, seqno).items():
                results[n] = SpecResult(results[n].status, value)
        return cls(key, cas, specs, results, Status.SUCCESS, mutation_token)

    @property
    def success(self) -> bool:
        """True if every spec succeeded."""
        return all(r.status == Status.SUCCESS for r in self.results)

    def _index(self, which: Union[int, str]) -> int:
        if isinstance(which, int):
            if not -len(self.results) <= which < len(self.results):
                raise IndexError("no spec %d" % which)
            return which % len(self.results)
        for n, spec in enumerate(self.specs):
            if spec.path == which:
                return n
        raise IndexError("no spec for path %r" % (which,))

    def status(self, which: Union[int, str]) -> int:
        return self.results[self._index(which)].status

    def raw(self, which: Union[int, str]) -> Optional[bytes]:
        return self.results[self._index(which)].value

    def exists(self, which: Union[int, str]) -> bool:
        """Found (True), PATH_ENOENT (False); any other failure raises."""
        n = self._index(which)
        status = self.results[n].status
        if status in (Status.SUCCESS, Status.PATH_ENOENT):
            return status == Status.SUCCESS
        raise SubdocError(status, key=self.key, index=n)

    def get(self, which: Union[int, str]) -> Tuple[int, Any]:
        """(status, decoded value or None), never raising for the spec's status."""
        n = self._index(which)
        result = self.results[n]
        return result.status, self._decode(n, result.value)

    def _decode(self, n: int, raw: Optional[bytes]) -> Any:
        if raw is None:
            return None
        try:
            return json.loads(raw)
        except ValueError:
            if self.specs[n].opcode == Opcode.GET_DOC:
                return raw  # a body that is not JSON
            raise

    def __getitem__(self, which: Union[int, str]) -> Any:
        n = self._index(which)
        result = self.results[n]
        if result.status != Status.SUCCESS:
            raise SubdocError(result.status, key=self.key, index=n)
        return self._decode(n, result.value)

    def __len__(self) -> int:
        return len(self.results)

    def __iter__(self) -> Iterator[Any]:
        for n in range(len(self.results)):
            yield self.get(n)[1]

    def __repr__(self) -> str:
        return "SubdocResult(key=%r, cas=0x%x, statuses=%s)" % (
            self.key, self.cas, [hex(r.status) for r in self.results])
