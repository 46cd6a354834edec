"""
What a memcached ASCII server writes back: the reply lines (memcached 1.6's
strings) and the ``format_*`` helpers.  Public through :mod:`txcb.wire.mcascii`.
"""

from __future__ import annotations

from typing import Any, List, Mapping, Optional

_UINT32_MAX = 2 ** 32 - 1
_UINT64_MAX = 2 ** 64 - 1
# Bytes that may not appear in a key: whitespace, control characters, DEL.
KEY_FORBIDDEN = bytes(range(0x21)) + b"\x7f"

def valid_key(key: bytes, max_key: int, forbidden: bytes = KEY_FORBIDDEN) -> bool:
    """True if ``key`` is 1..max_key bytes without whitespace or controls."""
    return (0 < len(key) <= max_key
            and len(key.translate(None, forbidden)) == len(key))



# -- replies ----------------------------------------------------------------

END = b"END\r\n"
STORED = b"STORED\r\n"
NOT_STORED = b"NOT_STORED\r\n"
EXISTS = b"EXISTS\r\n"
NOT_FOUND = b"NOT_FOUND\r\n"
DELETED = b"DELETED\r\n"
TOUCHED = b"TOUCHED\r\n"
OK = b"OK\r\n"
ERROR = b"ERROR\r\n"

# Error replies, spelled exactly as memcached 1.6 spells them.
BAD_FORMAT = b"CLIENT_ERROR bad command line format\r\n"
BAD_DATA_CHUNK = b"CLIENT_ERROR bad data chunk\r\n"
TOO_LARGE = b"SERVER_ERROR object too large for cache\r\n"
BAD_DELTA = b"CLIENT_ERROR invalid numeric delta argument\r\n"
BAD_EXPTIME = b"CLIENT_ERROR invalid exptime argument\r\n"
BAD_DELETE = (b"CLIENT_ERROR bad command line format.  "
              b"Usage: delete <key> [noreply]\r\n")
# memcached's reply when it cannot build a get response; used when a
# multi-get names more than ``max_keys`` keys.
GET_TOO_MANY_KEYS = b"SERVER_ERROR out of memory writing get response\r\n"
# memcached's replies when it cannot allocate an item (``-M``, or memory
# full): to a storage command, and to incr/decr.
OUT_OF_MEMORY_STORING = b"SERVER_ERROR out of memory storing object\r\n"
OUT_OF_MEMORY = b"SERVER_ERROR out of memory\r\n"
# memcached hangs up on these without a word (t/malicious-commands.t and
# try_read_command_ascii), so the reply is empty and ``close`` is set.


# -- formatting -------------------------------------------------------------

def format_value(key: bytes, flags: int, data: bytes,
                 cas: Optional[int] = None) -> bytes:
    """
    Build one ``VALUE`` block of a get reply (``gets``/``gats`` pass cas).

    The key is checked so that a bad key can never corrupt the reply stream.
    """
    if not valid_key(key, len(key)):
        raise ValueError("invalid key %r" % (key,))
    if not 0 <= flags <= _UINT32_MAX:
        raise ValueError("flags out of range: %r" % (flags,))
    if cas is not None and not 0 <= cas <= _UINT64_MAX:
        raise ValueError("cas out of range: %r" % (cas,))
    return format_hit(key, flags, data, cas)


def format_hit(key: bytes, flags: int, data: bytes, cas: Optional[int] = None) -> bytes:
    """
    :func:`format_value` without its checks, for a server's get path: the
    key is one the :class:`Parser` accepted (it may hold control characters
    with ``control_keys=True``) and flags and CAS are a stored item's.
    """
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\n" % (key, flags, len(data), data)
    return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, flags, len(data), cas, data)


def format_one_hit(key: bytes, flags: int, data: bytes, cas: Optional[int] = None) -> bytes:
    """The whole reply to a one-key get that hit: :func:`format_hit` and ``END``."""
    if cas is None:
        return b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (key, flags, len(data), data)
    return b"VALUE %s %d %d %d\r\n%s\r\nEND\r\n" % (key, flags, len(data), cas, data)


def format_number(n: int) -> bytes:
    """Build the reply to a successful incr/decr (an unsigned 64-bit)."""
    if not 0 <= n <= _UINT64_MAX:
        raise ValueError("incr/decr result out of range: %r" % (n,))
    return b"%d\r\n" % (n,)


def _stat_bytes(thing: Any) -> bytes:
    if isinstance(thing, bytes):
        return thing
    if isinstance(thing, bool):
        return b"yes" if thing else b"no"
    return str(thing).encode("utf-8")


def format_stats(stats: Mapping[Any, Any]) -> bytes:
    """
    Build a ``stats`` reply: ``STAT <name> <value>`` lines, then ``END``.

    Names must be single tokens and values single lines, so that a stat can
    never inject a reply line of its own.
    """
    out: List[bytes] = []
    for name, value in stats.items():
        bname, bvalue = _stat_bytes(name), _stat_bytes(value)
        if not valid_key(bname, len(bname)):
            raise ValueError("invalid stat name %r" % (name,))
        if b"\r" in bvalue or b"\n" in bvalue:
            raise ValueError("stat %r has a line break in its value" % (name,))
        out.append(b"STAT %s %s\r\n" % (bname, bvalue))
    out.append(END)
    return b"".join(out)
