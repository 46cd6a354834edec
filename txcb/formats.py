"""
Value formats and the transcoder that applies them.

A format is a 32-bit flags word stored with the item.  The ``FMT_*`` values
are the Couchbase *common flags*, so other Couchbase SDKs read what txcb
writes and the other way round.  Encoding and decoding happen on the client
side only: servers store bytes and flags and never look inside a value.
"""

from __future__ import annotations

import json
import pickle
from typing import Any, Optional, Tuple

from txcb.errors import ValueFormatError

__all__ = [
    "FMT_JSON", "FMT_UTF8", "FMT_BYTES", "FMT_PICKLE", "FMT_AUTO",
    "Encoded", "Transcoder", "concat_bytes",
]

FMT_JSON = 0x02000000
FMT_PICKLE = 0x01000001
FMT_BYTES = 0x03000002
FMT_UTF8 = 0x04000004
#: Choose by type: str -> UTF8, bytes -> BYTES, anything else -> JSON.
FMT_AUTO = None

_COMMON_MASK = 0xFF000000
# Common-flags "format" byte -> our format; the low bits of the legacy
# (pre common-flags) Couchbase formats are read as well.
_COMMON = {0x01: FMT_PICKLE, 0x02: FMT_JSON, 0x03: FMT_BYTES, 0x04: FMT_UTF8}
_LEGACY = {0x01: FMT_PICKLE, 0x02: FMT_BYTES, 0x04: FMT_UTF8}


class Encoded:
    """
    A value that is already encoded: stored as these bytes with these flags.

    Servers and proxies use it to pass items through unchanged; so can
    applications that manage their own flags (e.g. memcached clients' flags).
    """

    __slots__ = ("data", "flags")

    def __init__(self, data: bytes, flags: int = 0) -> None:
        self.data = data
        self.flags = flags

    def __repr__(self) -> str:
        return "Encoded(%r, flags=0x%x)" % (self.data[:40], self.flags)

    def __eq__(self, other: object) -> bool:
        return (isinstance(other, Encoded) and other.data == self.data
                and other.flags == self.flags)

    __hash__ = None  # type: ignore[assignment]


def format_of(flags: int) -> Optional[int]:
    """The FMT_* constant the flags word denotes, or None for foreign flags."""
    fmt = _COMMON.get((flags & _COMMON_MASK) >> 24)
    if fmt is None and flags & _COMMON_MASK == 0:
        fmt = _LEGACY.get(flags & 0x07)
    return fmt


def concat_bytes(value: Any, transcoder: Any) -> bytes:
    """The bytes an append/prepend adds, the one rule of every provider:
    text as UTF-8, bytes as they are, anything else as ``transcoder``
    encodes it."""
    if isinstance(value, str):
        return value.encode("utf-8")
    if isinstance(value, bytes):
        return value
    return transcoder.encode(value)[0]


class Transcoder:
    """
    Turns Python values into ``(bytes, flags)`` and back.

    :param unpickle: decode ``FMT_PICKLE`` values.  Off by default: unpickling
        runs arbitrary code, so only opt in when every writer is trusted.
    """

    def __init__(self, unpickle: bool = False) -> None:
        self.unpickle = unpickle

    def encode(self, value: Any, format: Optional[int] = None) -> Tuple[bytes, int]:
        if type(value) is Encoded:
            return value.data, value.flags
        if format is None:
            t = type(value)
            if t is bytes:
                return value, FMT_BYTES
            if t is str:
                return value.encode("utf-8"), FMT_UTF8
            format = FMT_JSON
        if format == FMT_JSON:
            try:
                return json.dumps(value, separators=(",", ":")).encode("utf-8"), FMT_JSON
            except (TypeError, ValueError) as e:
                raise ValueFormatError("cannot encode as JSON: %s" % (e,))
        if format == FMT_UTF8:
            if not isinstance(value, str):
                raise ValueFormatError("FMT_UTF8 needs a str, not %s" % (type(value).__name__,))
            return value.encode("utf-8"), FMT_UTF8
        if format == FMT_BYTES:
            if not isinstance(value, (bytes, bytearray, memoryview)):
                raise ValueFormatError("FMT_BYTES needs bytes, not %s" % (type(value).__name__,))
            return bytes(value), FMT_BYTES
        if format == FMT_PICKLE:
            return pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL), FMT_PICKLE
        raise ValueFormatError(
            "unknown format 0x%x (use FMT_* or wrap pre-encoded bytes in Encoded)" % (format,))

    def decode(self, data: bytes, flags: int, key: Any = None) -> Any:
        fmt = format_of(flags)
        try:
            if fmt == FMT_JSON:
                return json.loads(data)
            if fmt == FMT_UTF8:
                return data.decode("utf-8")
            if fmt == FMT_PICKLE:
                if not self.unpickle:
                    raise ValueFormatError(
                        "value is pickled; pass Transcoder(unpickle=True) to decode it",
                        key=key)
                return pickle.loads(data)
        except ValueFormatError:
            raise
        except Exception as e:
            raise ValueFormatError("cannot decode value with flags 0x%x: %s" % (flags, e),
                                   key=key)
        return data


DEFAULT_TRANSCODER = Transcoder()
