"""
The sans-IO request builder of both clients (no Twisted): one function per
operation checks its arguments, encodes the value or body, and returns the
request's fields, in the order of :func:`txcb.codec.encode_request`'s
arguments after the opaque, with the caller's key second::

    (opcode, key, k, value, cas, ttl, flags, options, persist_to, replicate_to)

:class:`txcb.client.RemoteBucket` sends them with its own header packing
(opaque filled in), :class:`txcb.blocking.Bucket` with ``encode_request``.
Bad arguments raise the :mod:`txcb.errors` exceptions (with ``key``) here,
before anything is sent.  ``transcoder`` and ``max_value_size`` are the
caller's (the latter as the server said in its HELLO).
"""

from __future__ import annotations

from typing import Any, Optional, Tuple

from txcb._validate import check_cas, check_delta, check_lock_ttl, check_ttl, to_key
from txcb.codec import (
    COUNTER_BODY, ENDURE_BODY, OPT_CHECK_REMOVED, OPT_DECREMENT, OPT_IDS_ONLY, OPT_INITIAL,
    OPT_QUIET, Op, encode_scan_request)
from txcb.errors import ArgumentError, TooBigError

#: (opcode, key, k, value, cas, ttl, flags, options, persist_to, replicate_to)
Fields = Tuple[int, Any, bytes, bytes, int, int, int, int, int, int]

_GET, _GAT = Op.GET, Op.GAT


def durability_args(persist_to: Any, replicate_to: Any, key: Any) -> None:
    """persist_to and replicate_to go on the wire as signed bytes."""
    for name, v in (("persist_to", persist_to), ("replicate_to", replicate_to)):
        if type(v) is not int or not -128 <= v <= 127:
            raise ArgumentError("%s must be a small int, not %r" % (name, v), key=key)


def get(key: Any, ttl: int = 0, quiet: bool = False) -> Fields:
    """GET, or GAT (get and touch) given a ttl."""
    k = to_key(key)
    if ttl:
        check_ttl(ttl, key)
    return (_GAT if ttl else _GET, key, k, b"", 0, ttl, 0, OPT_QUIET if quiet else 0, 0, 0)


def store(opcode: int, key: Any, value: Any, cas: int, ttl: int, format: Any,
          persist_to: int, replicate_to: int, transcoder: Any,
          max_value_size: int) -> Fields:
    """UPSERT, INSERT or REPLACE: the value through ``transcoder``."""
    k = to_key(key)
    if ttl:
        check_ttl(ttl, key)
    if cas:
        check_cas(cas, key)
    if persist_to or replicate_to or type(persist_to) is not int \
            or type(replicate_to) is not int:
        durability_args(persist_to, replicate_to, key)
    data, flags = transcoder.encode(value, format)
    if len(data) > max_value_size:
        raise TooBigError("value of %d bytes is over the server's %d byte limit"
                          % (len(data), max_value_size), key=key)
    return (opcode, key, k, data, cas, ttl, flags, 0, persist_to, replicate_to)


def concat(opcode: int, key: Any, value: Any, cas: int, persist_to: int, replicate_to: int,
           transcoder: Any, max_value_size: int) -> Fields:
    """APPEND or PREPEND: raw bytes, UTF-8 text, or the transcoder's bytes."""
    k = to_key(key)
    if cas:
        check_cas(cas, key)
    durability_args(persist_to, replicate_to, key)
    if isinstance(value, str):
        data = value.encode("utf-8")
    elif isinstance(value, bytes):
        data = value
    else:
        data = transcoder.encode(value)[0]
    if len(data) > max_value_size:
        raise TooBigError("value of %d bytes is over the server's limit" % len(data), key=key)
    return (opcode, key, k, data, cas, 0, 0, 0, persist_to, replicate_to)


def remove(key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
           replicate_to: int = 0) -> Fields:
    k = to_key(key)
    if cas:
        check_cas(cas, key)
    durability_args(persist_to, replicate_to, key)
    return (Op.REMOVE, key, k, b"", cas, 0, 0, OPT_QUIET if quiet else 0, persist_to,
            replicate_to)


def touch(key: Any, ttl: int) -> Fields:
    k = to_key(key)
    check_ttl(ttl, key)
    return (Op.TOUCH, key, k, b"", 0, ttl, 0, 0, 0, 0)


def lock(key: Any, ttl: int = 15) -> Fields:
    k = to_key(key)
    check_lock_ttl(ttl, key)
    return (Op.LOCK, key, k, b"", 0, ttl, 0, 0, 0, 0)


def unlock(key: Any, cas: int) -> Fields:
    k = to_key(key)
    check_cas(cas, key)
    return (Op.UNLOCK, key, k, b"", cas, 0, 0, 0, 0, 0)


def counter(key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0) -> Fields:
    k = to_key(key)
    check_delta(delta, initial, key)
    if ttl:
        check_ttl(ttl, key)
    options = (OPT_DECREMENT if delta < 0 else 0) | (OPT_INITIAL if initial is not None else 0)
    body = COUNTER_BODY.pack(abs(delta), initial or 0)
    return (Op.COUNTER, key, k, body, 0, ttl, 0, options, 0, 0)


def endure(key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
           check_removed: bool = False, timeout: float = 5.0,
           interval: float = 0.01) -> Fields:
    """
    ENDURE (the server polls every ``interval`` for ``timeout`` seconds).
    A ``timeout`` or ``interval`` that is not a number raises the TypeError
    of comparing it: each client turns that into its ArgumentError.
    """
    k = to_key(key)
    if cas:
        check_cas(cas, key)
    durability_args(persist_to, replicate_to, key)
    if not (0 <= timeout <= 4e6 and 0 < interval <= 4e6):
        raise ArgumentError("timeout must be >= 0 and interval > 0", key=key)
    body = ENDURE_BODY.pack(int(timeout * 1000), max(int(interval * 1000), 1))
    return (Op.ENDURE, key, k, body, cas, 0, 0, OPT_CHECK_REMOVED if check_removed else 0,
            persist_to, replicate_to)


def scan_batch(batch_size: int, batch_bytes: int, prefix: bytes, start: bytes, end: bytes,
               ids_only: bool) -> Fields:
    """One SCAN batch from ``start``; the arguments as :func:`txcb.codec.scan_args` gave."""
    body = encode_scan_request(batch_size, batch_bytes, prefix, start, end)
    return (Op.SCAN, None, b"", body, 0, 0, 0, OPT_IDS_ONLY if ids_only else 0, 0, 0)


_HELLO: Fields = (Op.HELLO, None, b"", b"", 0, 0, 0, 0, 0, 0)
_STATS: Fields = (Op.STATS, None, b"", b"", 0, 0, 0, 0, 0, 0)
_FLUSH: Fields = (Op.FLUSH, None, b"", b"", 0, 0, 0, 0, 0, 0)
_NOOP: Fields = (Op.NOOP, None, b"", b"", 0, 0, 0, 0, 0, 0)


def hello() -> Fields:
    return _HELLO


def stats() -> Fields:
    return _STATS


def flush() -> Fields:
    return _FLUSH


def noop() -> Fields:
    return _NOOP
