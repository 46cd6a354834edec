"""Argument checks shared by every bucket provider and codec (no Twisted)."""

from __future__ import annotations

from typing import Any

from txcb.errors import ArgumentError, DurabilityError

from txcb.limits import (  # noqa: F401 (re-exported: the checks' limits)
    DEFAULT_MAX_VALUE_SIZE, MAX_KEY_LEN, MAX_LOCK_TTL, MAX_SCAN_BATCH, MAX_SCAN_BOUND,
    MAX_SCAN_BYTES, MAX_TTL, THIRTY_DAYS, U64)


def to_key(key: Any) -> bytes:
    """The wire form of a key: str is UTF-8 encoded; 1 to ``MAX_KEY_LEN`` bytes."""
    t = type(key)
    if t is bytes:
        k = key
    elif t is str:
        k = key.encode("utf-8")
    elif isinstance(key, (bytes, str)):
        k = key.encode("utf-8") if isinstance(key, str) else bytes(key)
    else:
        raise ArgumentError("key must be str or bytes, not %s" % (t.__name__,), key=key)
    if not 0 < len(k) <= MAX_KEY_LEN:
        raise ArgumentError("key must be 1 to %d bytes, not %d" % (MAX_KEY_LEN, len(k)),
                            key=key)
    return k


def check_ttl(ttl: Any, key: Any = None) -> int:
    """A TTL is an int from 0 to 2**32-1."""
    if type(ttl) is not int:
        if isinstance(ttl, bool) or not isinstance(ttl, int):
            raise ArgumentError("ttl must be an int, not %r" % (ttl,), key=key)
    if not 0 <= ttl <= MAX_TTL:
        raise ArgumentError("ttl must be 0 to %d, not %d" % (MAX_TTL, ttl), key=key)
    return ttl


def expiry_time(ttl: int, now: float) -> float:
    """
    The absolute expiry time for a TTL (0.0 = never).  Absolute times in the
    past come back as a time <= now, which reads as already expired.
    """
    if ttl == 0:
        return 0.0
    if ttl <= THIRTY_DAYS:
        return now + ttl
    return float(ttl)


def check_cas(cas: Any, key: Any = None) -> int:
    if type(cas) is not int or not 0 <= cas <= U64:
        raise ArgumentError("cas must be an int from 0 to 2**64-1, not %r" % (cas,), key=key)
    return cas


def check_ttl_cas(ttl: Any, cas: Any, key: Any = None) -> None:
    """A write's TTL and CAS, each checked unless it is 0 (the usual case)."""
    if ttl:
        check_ttl(ttl, key)
    if cas:
        check_cas(cas, key)


def check_lock_ttl(ttl: Any, key: Any = None) -> int:
    if type(ttl) is not int or not 1 <= ttl <= MAX_LOCK_TTL:
        raise ArgumentError("lock ttl must be 1 to %d seconds, not %r" % (MAX_LOCK_TTL, ttl),
                            key=key)
    return ttl


def check_delta(delta: Any, initial: Any, key: Any = None) -> None:
    if type(delta) is not int or not -U64 <= delta <= U64:
        raise ArgumentError("delta must be an int of at most 64 bits, not %r" % (delta,),
                            key=key)
    if initial is not None and (type(initial) is not int or not 0 <= initial <= U64):
        raise ArgumentError("initial must be None or an int from 0 to 2**64-1, not %r"
                            % (initial,), key=key)


def resolve_durability(persist_to: Any, replicate_to: Any, max_persist: int,
                       max_replicate: int, key: Any = None) -> tuple:
    """
    Turn requested durability counts into the counts to wait for.  Negative
    means "as many as possible"; more than possible is a DurabilityError.
    """
    for name, v in (("persist_to", persist_to), ("replicate_to", replicate_to)):
        if type(v) is not int:
            raise ArgumentError("%s must be an int, not %r" % (name, v), key=key)
    p = max_persist if persist_to < 0 else persist_to
    r = max_replicate if replicate_to < 0 else replicate_to
    if p > max_persist:
        raise DurabilityError(
            "persist_to=%d but this bucket can persist to at most %d node(s)%s"
            % (p, max_persist, " (it has no disk)" if max_persist == 0 else ""), key=key)
    if r > max_replicate:
        raise DurabilityError(
            "replicate_to=%d but this bucket has %d replica(s)" % (r, max_replicate), key=key)
    return p, r


def scan_args(prefix: object, start: object, end: object, ids_only: object,
              batch_size: object, batch_bytes: object) -> tuple:
    """
    Check the arguments of ``IBucket.scan``: returns ``(prefix, start, end,
    ids_only, batch_size, batch_bytes)`` with the bounds as bytes (``b""``:
    none); raises :class:`txcb.errors.ArgumentError`.
    """
    out = []
    for name, v in (("prefix", prefix), ("start", start), ("end", end)):
        if v is None:
            v = b""
        elif isinstance(v, str):
            v = v.encode("utf-8")
        elif not isinstance(v, bytes):
            raise ArgumentError("%s must be str, bytes or None, not %r" % (name, v))
        if len(v) > MAX_SCAN_BOUND:
            raise ArgumentError("%s must be at most %d bytes" % (name, MAX_SCAN_BOUND))
        out.append(v)
    for name, v, top in (("batch_size", batch_size, MAX_SCAN_BATCH),
                         ("batch_bytes", batch_bytes, MAX_SCAN_BYTES)):
        if type(v) is not int or not 1 <= v <= top:
            raise ArgumentError("%s must be an int from 1 to %d, not %r" % (name, top, v))
    return out[0], out[1], out[2], bool(ids_only), batch_size, batch_bytes
