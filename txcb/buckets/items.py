"""
The stored form of an item: one bytes object, a small header then the value.

The embedded bucket keeps these in its dict and the persistent bucket writes
them to disk as they are, so this layout is part of the data file format.

An item that never expires and has one of the common flags (most items) has
a 9-byte header,
    ``<index of its flags in FLAGS:u8><cas:u64>``
any other item a 21-byte one,
    ``<0xFF><cas:u64><expiry:f64><flags:u32>``
The CAS is at offset 1 in both.  With CPython's 33-byte bytes header, a
100-byte value then fits pymalloc's 144-byte size class (a fixed 20-byte
header would take the 160-byte one): 16 bytes an item at a million items.
"""

from __future__ import annotations

import struct
from typing import Tuple

from txcb.errors import DeltaBadvalError
from txcb.formats import FMT_BYTES, FMT_JSON, FMT_PICKLE, FMT_UTF8
from txcb.limits import U64

__all__ = ["make_item", "header", "expiry_of", "cas_of", "value_len", "counted",
           "FLAGS", "LONG", "LONG_LEN", "SHORT_LEN", "long_unpack", "LOCKED_CAS",
           "STORED", "DELETED", "EXPIRED"]

#: The CAS a locked item reads with (as Couchbase Server reports it).
LOCKED_CAS = U64

#: The first byte of an item with the long header.
LONG = 0xFF
_SHORT_HDR = struct.Struct("<BQ")
_LONG_HDR = struct.Struct("<BQdI")
SHORT_LEN = _SHORT_HDR.size
LONG_LEN = _LONG_HDR.size
_short_pack = _SHORT_HDR.pack
_long_pack = _LONG_HDR.pack
_short_unpack = _SHORT_HDR.unpack_from
#: ``(0xFF, cas, expiry, flags)`` of an item with the long header.
long_unpack = _LONG_HDR.unpack_from
#: Flags a short header can name (the order is part of the disk format).
FLAGS = (0, FMT_JSON, FMT_BYTES, FMT_UTF8, FMT_PICKLE)
_FLAG_INDEX = {f: i for i, f in enumerate(FLAGS)}
_U64_DIGITS = len(str(U64))

# Mutation kinds, as the bucket's ``_mutated`` hook is told them.
STORED = 1
DELETED = 2
EXPIRED = 3


def make_item(cas: int, exp: float, flags: int, data: bytes) -> bytes:
    """The stored form of an item."""
    if not exp:
        i = _FLAG_INDEX.get(flags)
        if i is not None:
            return _short_pack(i, cas) + data
    return _long_pack(LONG, cas, exp, flags) + data


def header(item: bytes) -> Tuple[int, float, int, int]:
    """``(cas, expiry, flags, header length)`` of a stored item."""
    if item[0] == LONG:
        _t, cas, exp, flags = long_unpack(item)
        return cas, exp, flags, LONG_LEN
    i, cas = _short_unpack(item)
    return cas, 0.0, FLAGS[i], SHORT_LEN


def expiry_of(item: bytes) -> float:
    """A stored item's expiry time (0: never)."""
    return long_unpack(item)[2] if item[0] == LONG else 0.0


def cas_of(item: bytes) -> int:
    """A stored item's CAS."""
    return _short_unpack(item)[1]


def value_len(item: bytes) -> int:
    """The length of a stored item's value."""
    return len(item) - (LONG_LEN if item[0] == LONG else SHORT_LEN)


def counted(value: bytes, delta: int, key: object = None) -> int:
    """
    A counter's next value: ``value`` (ASCII digits, an unsigned 64-bit
    number) plus ``delta``, wrapping at 2**64 going up and stopping at 0 going
    down, as memcached does.
    """
    text = value.strip()
    if not (0 < len(text) <= _U64_DIGITS and text.isdigit()) or int(text) > U64:
        raise DeltaBadvalError("the value is not an unsigned 64-bit number", key=key)
    if delta >= 0:
        return (int(text) + delta) & U64
    return max(0, int(text) + delta)
