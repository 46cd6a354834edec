"""The limits every layer shares, defined once (no Twisted)."""

__all__ = ["MAX_REPLY_MESSAGE", "MAX_KEY_LEN", "THIRTY_DAYS", "MAX_TTL", "DEFAULT_MAX_VALUE_SIZE",
           "MAX_LOCK_TTL", "U64", "DEFAULT_TIMEOUT", "MAX_SCAN_BATCH", "MAX_SCAN_BYTES",
           "MAX_SCAN_BOUND", "DEFAULT_LOCK_TTL", "DEFAULT_SCAN_BATCH", "DEFAULT_SCAN_BYTES",
           "DEFAULT_ENDURE_TIMEOUT", "DEFAULT_ENDURE_INTERVAL",
           "HIGH_WATERMARK", "LOW_WATERMARK", "QUOTA_SHARE", "EVICTION_POLICIES",
           "DEFAULT_EVICTION", "MIN_QUOTA", "default_memory_quota", "parse_size"]

import os
import re

#: Keys are 1 to this many bytes (memcached's and Couchbase's limit).
MAX_KEY_LEN = 250
#: TTLs up to this many seconds are relative; larger ones are Unix times.
THIRTY_DAYS = 30 * 24 * 3600
MAX_TTL = 0xFFFFFFFF
#: The largest value a bucket accepts unless told otherwise (20 MiB).
DEFAULT_MAX_VALUE_SIZE = 20 * 1024 * 1024
#: Locks last 1 to this many seconds.
MAX_LOCK_TTL = 30
#: A lock's duration unless told otherwise, in seconds.
DEFAULT_LOCK_TTL = 15
U64 = 0xFFFFFFFFFFFFFFFF
#: Seconds a client operation waits for its reply unless told otherwise.
DEFAULT_TIMEOUT = 2.5
#: A scan batch holds at most this many items and bytes.
MAX_SCAN_BATCH = 10000
MAX_SCAN_BYTES = 16 * 1024 * 1024
#: A scan bound (prefix, start, end) is at most a key and a zero byte.
MAX_SCAN_BOUND = MAX_KEY_LEN + 1
#: A scan batch's size unless told otherwise: items and bytes.
DEFAULT_SCAN_BATCH = 1000
DEFAULT_SCAN_BYTES = 1024 * 1024
#: How long ``endure`` waits unless told otherwise, and how often it polls
#: (seconds).
DEFAULT_ENDURE_TIMEOUT = 5.0
DEFAULT_ENDURE_INTERVAL = 0.01

#: The longest error message a netstring reply carries (bytes; longer ones are cut).
MAX_REPLY_MESSAGE = 512

#: A bucket's memory (``mem_used``) above this share of its quota starts the
#: item pager, which ejects (or evicts) down to the low watermark; the
#: shares are Couchbase's.
HIGH_WATERMARK = 0.85
LOW_WATERMARK = 0.75
#: A bucket's RAM quota unless told otherwise: this share of the machine's
#: physical memory (``twistd txcb`` divides it among the buckets it serves).
QUOTA_SHARE = 0.5
#: The smallest RAM quota a bucket takes (bytes).
MIN_QUOTA = 1 << 20
#: An ephemeral bucket's policies when its quota is full: ``none`` refuses
#: mutations that would grow memory (NoMemoryError), ``nru`` evicts
#: not-recently-used items.  Couchbase's default for ephemeral buckets is
#: noEviction: ours is ``none``.
EVICTION_POLICIES = ("none", "nru")
DEFAULT_EVICTION = "none"

_SIZE_RE = re.compile(r"^\s*([0-9]+)\s*([kmgt]?)i?b?\s*$", re.IGNORECASE)
_SIZE_UNITS = {"": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}


def max_value_size(*buckets: object) -> int:
    """The largest value any of ``buckets`` takes: its ``max_value_size``, else
    :data:`DEFAULT_MAX_VALUE_SIZE` (a server sizes its frame limit by it)."""
    return max([getattr(b, "max_value_size", DEFAULT_MAX_VALUE_SIZE) for b in buckets]
               or [DEFAULT_MAX_VALUE_SIZE])


def default_memory_quota(share: float = QUOTA_SHARE) -> int:
    """``share`` of the machine's physical memory, in bytes (1 GiB if unknown)."""
    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        total = 0
    if total <= 0:
        total = 2 << 30
    return int(total * share)


def parse_size(text: str) -> int:
    """
    Bytes from ``"64M"``, ``"1g"``, ``"512K"``, ``"4096"`` (binary units:
    K = 1024); ValueError, saying what is accepted, for anything else.
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError("%r is not a size: give bytes, or a number with K, M, G or T "
                         "(as 64M)" % (text,))
    return int(m.group(1)) * _SIZE_UNITS[m.group(2).lower()]
