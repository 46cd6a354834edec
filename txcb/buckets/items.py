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

An item with extended attributes (sub-documents' xattrs) has a 25-byte one,
    ``<0xFE><cas:u64><expiry:f64><flags:u32><xattrs length:u32>``
then its xattrs, then the value.  Its first 21 bytes read as a long header,
so the CAS, expiry and flags are where they are in one.  The xattrs are
``<key length:u16><value length:u32><key><value>`` per xattr, in key order
(a key is the JSON text of its name, a value the JSON text of its value).
Items without xattrs never take this header: their stored form (and so the
data file and the memory an item uses) is what it was before xattrs.

A deleted document that kept system xattrs (names starting with ``_``), a
*tombstone*, has the same header with 0xFD first, no expiry, flags 0 and no
value.  Tombstones are kept apart from the live items (and written to the
data file as rows of their own).

A persistent bucket over its RAM quota *ejects* values (see
:mod:`txcb.buckets.pager`): an item without xattrs, already on disk, is
replaced in memory by its metadata alone, 25 bytes,
    ``<0xFC><cas:u64><expiry:f64><flags:u32><value length:u32>``
so its CAS, expiry and flags read as from a long header while its value
waits on disk.  :func:`header` of such an item raises
:class:`~txcb.errors.WouldBlock` (nothing can take a value that is not
there); :func:`meta` reads the metadata of every form.  Ejected forms are
never written to disk.
"""

from __future__ import annotations

import struct
from typing import Dict, Mapping, Tuple

from txcb.errors import DeltaBadvalError, WouldBlock
from txcb.formats import FMT_BYTES, FMT_JSON, FMT_PICKLE, FMT_UTF8
from txcb.limits import U64

__all__ = ["make_item", "make_xitem", "header", "expiry_of", "cas_of", "value_len",
           "counted", "with_cas", "xattrs_of", "encode_xattrs", "decode_xattrs",
           "make_tombstone", "system_xattrs", "FLAGS", "LONG", "XATTRS", "TOMBSTONE", "LONG_LEN", "SHORT_LEN", "XATTRS_LEN",
           "long_unpack", "LOCKED_CAS", "STORED", "DELETED", "EXPIRED", "EVICTED",
           "EJECTED", "EJECTED_LEN", "LONG_FROM", "meta", "eject", "ejectable",
           "restored", "ITEM_OVERHEAD", "item_cost"]

#: The CAS a locked item reads with (as Couchbase Server reports it).
LOCKED_CAS = U64

#: The first byte of an item with the long header.
LONG = 0xFF
#: The first byte of an item with xattrs (every first byte from it up has
#: the long header's fields).
XATTRS = 0xFE
#: The first byte of a tombstone (a deleted document's system xattrs).
TOMBSTONE = 0xFD
#: The first byte of an ejected item (its value is on disk only).
EJECTED = 0xFC
#: Every first byte from this one up has the long header's fields.
LONG_FROM = EJECTED
#: What an item costs in memory besides its key's and stored form's bytes
#: (two bytes objects' headers, the item dict's slot), as measured on
#: CPython: what ``mem_used`` counts for it.
ITEM_OVERHEAD = 125
_SHORT_HDR = struct.Struct("<BQ")
_LONG_HDR = struct.Struct("<BQdI")
_X_HDR = struct.Struct("<BQdII")
_U32 = struct.Struct("<I").unpack_from
_PAIR = struct.Struct("<HI")
_CAS = struct.Struct("<Q").pack
SHORT_LEN = _SHORT_HDR.size
LONG_LEN = _LONG_HDR.size
XATTRS_LEN = _X_HDR.size
EJECTED_LEN = XATTRS_LEN  # an ejected item's length (its header alone)
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
EVICTED = 4  # (an ephemeral bucket's NRU eviction)


def make_item(cas: int, exp: float, flags: int, data: bytes) -> bytes:
    """The stored form of an item."""
    if not exp:
        i = _FLAG_INDEX.get(flags)
        if i is not None:
            return _short_pack(i, cas) + data
    return _long_pack(LONG, cas, exp, flags) + data


def make_xitem(cas: int, exp: float, flags: int, xattrs: bytes, data: bytes) -> bytes:
    """The stored form of an item with xattrs (``xattrs``: :func:`encode_xattrs`'s)."""
    if not xattrs:
        return make_item(cas, exp, flags, data)
    return _X_HDR.pack(XATTRS, cas, exp, flags, len(xattrs)) + xattrs + data


def header(item: bytes) -> Tuple[int, float, int, int]:
    """
    ``(cas, expiry, flags, offset of the value)`` of a stored item;
    WouldBlock if its value is ejected.
    """
    if item[0] >= LONG_FROM:
        t, cas, exp, flags = long_unpack(item)
        if t == LONG:
            return cas, exp, flags, LONG_LEN
        if t == EJECTED:
            raise WouldBlock()
        return cas, exp, flags, XATTRS_LEN + _U32(item, LONG_LEN)[0]
    i, cas = _short_unpack(item)
    return cas, 0.0, FLAGS[i], SHORT_LEN


def meta(item: bytes) -> Tuple[int, float, int]:
    """``(cas, expiry, flags)`` of a stored item, ejected or not."""
    if item[0] >= LONG_FROM:
        return long_unpack(item)[1:]
    i, cas = _short_unpack(item)
    return cas, 0.0, FLAGS[i]


def expiry_of(item: bytes) -> float:
    """A stored item's expiry time (0: never)."""
    return long_unpack(item)[2] if item[0] >= LONG_FROM else 0.0


def ejectable(item: bytes) -> bool:
    """Whether an item's value can be ejected: it has one and no xattrs."""
    t = item[0]
    return t < XATTRS or t == LONG


def eject(item: bytes) -> bytes:
    """An (ejectable) item's ejected form: its metadata and value length."""
    cas, exp, flags = meta(item)
    return _X_HDR.pack(EJECTED, cas, exp, flags, value_len(item))


def restored(ejected: bytes, stored: bytes) -> bytes:
    """
    An ejected item made whole again with the value of ``stored``, its form
    on disk (the CAS, expiry and flags are the ejected form's: a lock may have
    changed the CAS since).  ValueError if ``stored`` is not that item's.
    """
    cas, exp, flags = meta(ejected)
    size = _U32(ejected, LONG_LEN)[0]
    if not ejectable(stored) or value_len(stored) != size or meta(stored)[1:] != (exp, flags):
        raise ValueError("the item on disk is not the one ejected")
    return make_item(cas, exp, flags, stored[len(stored) - size:])


def item_cost(k: bytes, item: bytes) -> int:
    """What ``mem_used`` counts for a key and its stored item."""
    return len(k) + len(item) + ITEM_OVERHEAD


def with_cas(item: bytes, cas: int) -> bytes:
    """The same item (value, xattrs, expiry, flags) with another CAS."""
    return item[:1] + _CAS(cas) + item[SHORT_LEN:]


def make_tombstone(cas: int, xattrs: bytes) -> bytes:
    """The stored form of a deleted document keeping ``xattrs`` (encoded)."""
    return _X_HDR.pack(TOMBSTONE, cas, 0.0, 0, len(xattrs)) + xattrs


def xattrs_of(item: bytes) -> bytes:
    """A stored item's (or tombstone's) encoded xattrs (empty: none)."""
    t = item[0]
    if t != XATTRS and t != TOMBSTONE:
        return b""
    return item[XATTRS_LEN:XATTRS_LEN + _U32(item, LONG_LEN)[0]]


def encode_xattrs(xattrs: Mapping[str, bytes]) -> bytes:
    """Xattrs (key: JSON text of the name -> JSON text of the value) as stored."""
    out = []
    for key in sorted(xattrs):
        k, v = key.encode("utf-8"), xattrs[key]
        out.append(_PAIR.pack(len(k), len(v)) + k + v)
    return b"".join(out)


def system_xattrs(blob: bytes) -> bytes:
    """The system xattrs (``_`` names) of encoded xattrs: what a deletion keeps."""
    if not blob:
        return b""
    return encode_xattrs({k: v for k, v in decode_xattrs(blob).items() if k[:1] == "_"})


def decode_xattrs(blob: bytes) -> Dict[str, bytes]:
    """Back from :func:`encode_xattrs` (ValueError if the bytes are not its)."""
    out: Dict[str, bytes] = {}
    at, end = 0, len(blob)
    while at < end:
        if at + _PAIR.size > end:
            raise ValueError("truncated xattrs")
        klen, vlen = _PAIR.unpack_from(blob, at)
        at += _PAIR.size
        if at + klen + vlen > end:
            raise ValueError("truncated xattrs")
        out[blob[at:at + klen].decode("utf-8")] = blob[at + klen:at + klen + vlen]
        at += klen + vlen
    return out


def cas_of(item: bytes) -> int:
    """A stored item's CAS."""
    return _short_unpack(item)[1]


def value_len(item: bytes) -> int:
    """The length of a stored item's value (with its xattrs, if any; ejected or not)."""
    t = item[0]
    if t == EJECTED:
        return _U32(item, LONG_LEN)[0]
    return len(item) - (SHORT_LEN if t < XATTRS else LONG_LEN if t == LONG else XATTRS_LEN)


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
