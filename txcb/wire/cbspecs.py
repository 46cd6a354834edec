"""
Sub-document spec lists of the Couchbase KV protocol (sans-IO): the values
of SUBDOC_MULTI_LOOKUP (0xd0) and SUBDOC_MULTI_MUTATION (0xd1) requests and
responses (kv_engine docs/SubDocument.md).  The framing is
:mod:`txcb.wire.couchbase`'s.
"""

from __future__ import annotations

import struct
from typing import Iterable, List, Optional, Tuple

from txcb.wire.couchbase import Status

__all__ = ['MAX_SUBDOC_SPECS', 'SpecTuple', 'SpecListError', 'decode_lookup_specs', 'decode_mutation_specs', 'encode_lookup_specs', 'encode_mutation_specs', 'encode_lookup_results', 'decode_lookup_results', 'encode_mutation_results', 'decode_mutation_results', 'encode_mutation_failure', 'decode_mutation_failure']

_LOOKUP_SPEC = struct.Struct(">BBH")        # opcode, path flags, path length
_MUTATION_SPEC = struct.Struct(">BBHI")     # opcode, path flags, path length, value length
_LOOKUP_RESULT = struct.Struct(">HI")       # status, value length
_MUTATION_RESULT = struct.Struct(">BHI")    # spec index, status, value length
_MUTATION_FAILURE = struct.Struct(">BH")    # spec index, status

#: A multi-path request has at most this many specs (memcached's
#: subdoc_multi_max_paths); a 17th is SUBDOC_INVALID_COMBO.
MAX_SUBDOC_SPECS = 16

#: ``(opcode, path flags, path, value)`` of one spec (value b"" for lookups).
SpecTuple = Tuple[int, int, bytes, bytes]


class SpecListError(ValueError):
    """A spec list that does not parse; ``status`` is what kv_engine answers."""

    def __init__(self, message: str, status: int = Status.EINVAL) -> None:
        super().__init__(message)
        self.status = status


def _decode_specs(value: bytes, spec: struct.Struct, mutation: bool) -> List[SpecTuple]:
    """As memcached's subdoc_multi validators: a spec whose header or path
    runs past the value is EINVAL; none, or bytes past the 16th, INVALID_COMBO."""
    out: List[SpecTuple] = []
    pos, end = 0, len(value)
    while pos < end and len(out) < MAX_SUBDOC_SPECS:
        if end - pos < spec.size:
            raise SpecListError("spec %d: header runs past the value" % len(out))
        if mutation:
            opcode, flags, plen, vlen = spec.unpack_from(value, pos)
        else:
            (opcode, flags, plen), vlen = spec.unpack_from(value, pos), 0
        pos += spec.size
        if end - pos < plen + vlen:
            raise SpecListError("spec %d: path or value runs past the value" % len(out))
        path, body = value[pos:pos + plen], value[pos + plen:pos + plen + vlen]
        out.append((opcode, flags, path, body))
        pos += plen + vlen
    if not out or pos < end:
        raise SpecListError("a multi-path request has 1 to %d specs" % MAX_SUBDOC_SPECS,
                            Status.SUBDOC_INVALID_COMBO)
    return out


def decode_lookup_specs(value: bytes) -> List[SpecTuple]:
    """0xd0's specs: opcode u8, flags u8, path length u16, path (SpecListError)."""
    return _decode_specs(value, _LOOKUP_SPEC, False)


def decode_mutation_specs(value: bytes) -> List[SpecTuple]:
    """0xd1's specs: opcode, flags, path length u16, value length u32, path, value."""
    return _decode_specs(value, _MUTATION_SPEC, True)


def encode_lookup_specs(specs: Iterable[Tuple[int, int, bytes]]) -> bytes:
    """0xd0's value from ``(opcode, flags, path)``."""
    return b"".join(_LOOKUP_SPEC.pack(op, flags, len(path)) + path for op, flags, path in specs)


def encode_mutation_specs(specs: Iterable[Tuple[int, int, bytes, bytes]]) -> bytes:
    """0xd1's value from ``(opcode, flags, path, value)``."""
    return b"".join(_MUTATION_SPEC.pack(op, flags, len(path), len(v)) + path + v
                    for op, flags, path, v in specs)


def encode_lookup_results(results: Iterable[Tuple[int, Optional[bytes]]]) -> bytes:
    """0xd0's response value: status u16, length u32, value, per spec."""
    parts = []
    for status, value in results:
        value = value or b""
        parts.append(_LOOKUP_RESULT.pack(status, len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_lookup_results(value: bytes) -> List[Tuple[int, bytes]]:
    """``[(status, value)]`` of a 0xd0 response (SpecListError: truncated)."""
    out, pos, end = [], 0, len(value)
    while pos < end:
        if end - pos < _LOOKUP_RESULT.size:
            raise SpecListError("lookup result header truncated")
        status, vlen = _LOOKUP_RESULT.unpack_from(value, pos)
        pos += _LOOKUP_RESULT.size
        if end - pos < vlen:
            raise SpecListError("lookup result value truncated")
        out.append((status, value[pos:pos + vlen]))
        pos += vlen
    return out


def encode_mutation_results(results: Iterable[Tuple[int, int, bytes]]) -> bytes:
    """0xd1's success value: index u8, status u16, length u32, value per
    value-returning spec (the others are not listed)."""
    return b"".join(_MUTATION_RESULT.pack(i, status, len(v)) + v for i, status, v in results)


def decode_mutation_results(value: bytes) -> List[Tuple[int, int, bytes]]:
    """``[(index, status, value)]`` of a successful 0xd1 response."""
    out, pos, end = [], 0, len(value)
    while pos < end:
        if end - pos < _MUTATION_RESULT.size:
            raise SpecListError("mutation result header truncated")
        index, status, vlen = _MUTATION_RESULT.unpack_from(value, pos)
        pos += _MUTATION_RESULT.size
        if end - pos < vlen:
            raise SpecListError("mutation result value truncated")
        out.append((index, status, value[pos:pos + vlen]))
        pos += vlen
    return out


def encode_mutation_failure(index: int, status: int) -> bytes:
    """0xd1's SUBDOC_MULTI_PATH_FAILURE value: the failed spec's index u8, status u16."""
    return _MUTATION_FAILURE.pack(index, status)


def decode_mutation_failure(value: bytes) -> Tuple[int, int]:
    """``(index, status)`` of a 0xd1 SUBDOC_MULTI_PATH_FAILURE response."""
    if len(value) != _MUTATION_FAILURE.size:
        raise SpecListError("a mutation failure is 3 bytes, not %d" % len(value))
    index, status = _MUTATION_FAILURE.unpack(value)
    return index, status
