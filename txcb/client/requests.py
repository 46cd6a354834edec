"""
The sans-IO request builder of both clients (no Twisted): one function per
operation checks its arguments, encodes the value or body, and returns the
request's fields, in the order of :func:`txcb.wire.netstring.encode_request`'s
arguments after the opaque, with the caller's key second::

    (opcode, key, k, value, cas, ttl, flags, options, persist_to, replicate_to)

:class:`txcb.client.remote.RemoteBucket` and :class:`txcb.client.blocking.Bucket`
send them with ``encode_request`` (the opaque filled in at send);
:mod:`txcb.client.replies` says what the replies give.
Bad arguments raise the :mod:`txcb.errors` exceptions (with ``key``) here,
before anything is sent.  ``transcoder`` and ``max_value_size`` are the
caller's (the latter as the server said in its HELLO).
"""

from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

from txcb.limits import MAX_KEY_LEN
from txcb.validation import (
    check_cas, check_delta, check_lock_ttl, check_ttl, check_ttl_cas, to_key)
from txcb.wire.netstring import (
    COUNTER_BODY, ENDURE_BODY, HEADER_LEN, MAX_MULTI, OPT_CHECK_REMOVED, OPT_DECREMENT,
    OPT_IDS_ONLY, OPT_INITIAL, OPT_QUIET, SDOPT_PRESERVE_EXPIRY, Op, encode_multi_keys,
    encode_scan_request, encode_subdoc_request)
from txcb.subdocument import MAX_PATH_LEN, DocFlag, Spec, Status as SDStatus, SubdocError
from txcb.errors import (
    RC, ArgumentError, CouchbaseError, ProtocolError, TooBigError, exception_for_rc)
from txcb.formats import concat_bytes
from txcb.results import ValueResult

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
    data = concat_bytes(value, transcoder)
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
    """One SCAN batch from ``start``; the arguments as :func:`txcb.wire.netstring.scan_args` gave."""
    body = encode_scan_request(batch_size, batch_bytes, prefix, start, end)
    return (Op.SCAN, None, b"", body, 0, 0, 0, OPT_IDS_ONLY if ids_only else 0, 0, 0)


_HELLO: Fields = (Op.HELLO, None, b"", b"", 0, 0, 0, 0, 0, 0)
_STATS: Fields = (Op.STATS, None, b"", b"", 0, 0, 0, 0, 0, 0)
_FLUSH: Fields = (Op.FLUSH, None, b"", b"", 0, 0, 0, 0, 0, 0)
_NOOP: Fields = (Op.NOOP, None, b"", b"", 0, 0, 0, 0, 0, 0)


def _subdoc_body(key: Any, specs: Any, doc_flags: int, options: int,
                 max_value_size: int) -> bytes:
    """The LOOKUP_IN / MUTATE_IN body: ``specs`` must be txcb.subdocument Specs."""
    for n, spec in enumerate(specs):
        if not isinstance(spec, Spec):
            raise ArgumentError("specs must be txcb.subdocument specs (SD.get, SD.upsert...), "
                                "not %r" % (spec,), key=key)
        if len(spec.path.encode("utf-8", "surrogateescape")) > MAX_PATH_LEN:
            # what the server's engine answers; past 65535 bytes it could not be sent
            raise SubdocError(SDStatus.EINVAL, "spec %d: path longer than %d bytes"
                              % (n, MAX_PATH_LEN), key=key)
    body = encode_subdoc_request(list(specs), doc_flags, options)
    if len(body) > max_value_size:
        raise TooBigError("sub-document request of %d bytes is over the server's %d byte "
                          "limit" % (len(body), max_value_size), key=key)
    return body


def lookup_in(key: Any, specs: Any, access_deleted: bool, max_value_size: int) -> Fields:
    """LOOKUP_IN: the specs' own checks are the server's (one path: the bucket's engine)."""
    k = to_key(key)
    doc_flags = DocFlag.ACCESS_DELETED if access_deleted else 0
    body = _subdoc_body(key, specs, doc_flags, 0, max_value_size)
    return (Op.LOOKUP_IN, key, k, body, 0, 0, 0, 0, 0, 0)


def mutate_in(key: Any, specs: Any, cas: int, ttl: int, upsert_doc: bool, insert_doc: bool,
              persist_to: int, replicate_to: int, preserve_expiry: bool,
              max_value_size: int) -> Fields:
    """MUTATE_IN: document flags and options in the body, the rest in the header."""
    k = to_key(key)
    check_ttl_cas(ttl, cas, key)
    durability_args(persist_to, replicate_to, key)
    doc_flags = (DocFlag.MKDOC if upsert_doc else 0) | (DocFlag.ADD if insert_doc else 0)
    body = _subdoc_body(key, specs, doc_flags,
                        SDOPT_PRESERVE_EXPIRY if preserve_expiry else 0, max_value_size)
    return (Op.MUTATE_IN, key, k, body, cas, ttl, 0, 0, persist_to, replicate_to)


def hello() -> Fields:
    return _HELLO


def stats() -> Fields:
    return _STATS


def flush() -> Fields:
    return _FLUSH


def noop() -> Fields:
    return _NOOP


# -- get_multi on one GET_MULTI request per chunk of keys (docs/protocol.rst, 3.2)
#
# Both clients: get_multi_requests() makes the requests, then each reply
# frame's entries go through multi_entries(), a request that fails as a whole
# (timeout, lost connection, error status) through multi_fail(), and
# multi_outcome() gives the call's error, if any, once every request is done.
# ``results`` is the call's MultiResult; ``errors`` maps each failed key to
# its exception, or to ``(status, message bytes)`` from the server (made into
# an exception only for the key that is raised).

#: The message of a miss, whose entry carries none (every provider's).
MISS_MESSAGE = "no such key"
_ENOENT = RC.KEY_ENOENT


def multi_limits(info: Dict[str, Any], max_value_size: int) -> Tuple[int, int]:
    """
    From a server's HELLO reply: how many keys one GET_MULTI may carry (0:
    the server has no GET_MULTI) and the longest request body it accepts.
    """
    n = info.get("get_multi")
    keys = min(n, MAX_MULTI) if type(n) is int and n > 0 else 0
    frame = info.get("max_frame")
    body = (frame - HEADER_LEN if type(frame) is int and frame > HEADER_LEN + MAX_KEY_LEN
            else MAX_KEY_LEN + max_value_size)
    return keys, body


def get_multi_requests(keys: List[Any], ttl: int, max_keys: int, max_body: int,
                       results: Dict[Any, Any], errors: Dict[Any, Any]
                       ) -> List[Tuple[List[Any], Fields]]:
    """
    The GET_MULTI requests for ``keys`` (unique; ``ttl`` checked by the
    caller): ``(the keys it asks for, its fields)``, each with at most
    ``max_keys`` keys and a body of at most ``max_body`` bytes.  A key that
    cannot be sent (bad type or length) is not: its result and error go to
    ``results`` and ``errors`` now, as a ``get`` of it would have failed.
    """
    n = len(keys)
    if 0 < n <= max_keys:
        # The usual case, checked in bulk: keys all str (or all bytes) of 1 to
        # MAX_KEY_LEN bytes, in one request.
        raw: Optional[List[bytes]] = None
        if all([type(key) is str for key in keys]):
            raw = [key.encode("utf-8") for key in keys]
        elif all([type(key) is bytes for key in keys]):
            raw = keys
        if raw is not None:
            lens = list(map(len, raw))
            if min(lens) and max(lens) <= MAX_KEY_LEN and sum(lens) + n <= max_body:
                return [(keys, (Op.GET_MULTI, None, b"", encode_multi_keys(raw), 0, ttl, 0, 0,
                                0, 0))]
    out = []
    ks: List[Any] = []
    raw = []
    size = 0
    for key in keys:
        t = type(key)
        if t is str:
            k = key.encode("utf-8")
        elif t is bytes:
            k = key
        else:
            k = b""
        if not 0 < len(k) <= MAX_KEY_LEN:
            try:
                k = to_key(key)  # a subclass of str or bytes, or the error
            except CouchbaseError as e:
                results[key] = ValueResult(key, rc=e.rc)
                errors[key] = e
                continue
        n = len(k) + 1
        if size + n > max_body or len(ks) == max_keys:
            if ks:
                out.append((ks, (Op.GET_MULTI, None, b"", encode_multi_keys(raw), 0, ttl, 0,
                                 0, 0, 0)))
            ks, raw, size = [], [], 0
        ks.append(key)
        raw.append(k)
        size += n
    if ks:
        out.append((ks, (Op.GET_MULTI, None, b"", encode_multi_keys(raw), 0, ttl, 0, 0, 0, 0)))
    return out


def check_multi_frame(nkeys: int, pos: int, count: int, last: bool) -> None:
    """
    A reply frame with ``count`` entries, after ``pos`` of ``nkeys`` keys
    were answered, must not run past the keys, nor stop short of them if it
    is the last, nor claim more are coming if it answers the last key:
    raises ProtocolError.
    """
    end = pos + count
    if end > nkeys or (end == nkeys) is not last:
        raise ProtocolError("GET_MULTI reply of %d entries for %d keys, %s"
                            % (end, nkeys, "and no more" if last else "and more to come"))


def multi_entries(keys: List[Any], pos: int, entries: List[tuple], last: bool, quiet: bool,
                  transcoder: Any, results: Dict[Any, Any], errors: Dict[Any, Any]) -> int:
    """
    Record one reply frame's entries (from :func:`txcb.wire.netstring.decode_multi_reply`)
    for ``keys[pos:]``; returns the position after them.  ``last``: the frame
    is the reply's last.  Raises ProtocolError (recording nothing) if the
    entries do not fit the keys (see :func:`check_multi_frame`).
    """
    end = pos + len(entries)
    if end > len(keys) or (end == len(keys)) is not last:
        check_multi_frame(len(keys), pos, len(entries), last)
    for key, (status, cas, flags, data) in zip(keys[pos:end], entries):
        if not status:
            results[key] = ValueResult(key, data, flags, cas, 0, transcoder)
        else:
            results[key] = ValueResult(key, rc=status)
            if status != _ENOENT or not quiet:
                errors[key] = (status, data)
    return end


def multi_fail(keys: List[Any], pos: int, error: Any, results: Dict[Any, Any],
               errors: Dict[Any, Any]) -> None:
    """``keys[pos:]`` failed with ``error`` (their request did, as a whole)."""
    rc = error.rc if isinstance(error, CouchbaseError) else RC.EINTERNAL
    for key in keys[pos:]:
        results[key] = ValueResult(key, rc=rc)
        errors[key] = error


def multi_outcome(keys: List[Any], results: Dict[Any, Any], errors: Dict[Any, Any]
                  ) -> Optional[BaseException]:
    """
    The error of the first failed key in ``keys`` (the call's key order),
    with ``all_results``; None if no key failed.
    """
    if not errors:
        return None
    for key in keys:
        e = errors.get(key)
        if e is None:
            continue
        if type(e) is tuple:
            status, data = e
            e = exception_for_rc(status, data.decode("utf-8", "replace") or (
                MISS_MESSAGE if status == _ENOENT else ""), key)
        elif isinstance(e, CouchbaseError) and e.key is not key:  # a whole request's
            e = exception_for_rc(e.rc, e.message, key)
        try:
            e.all_results = results
        except AttributeError:
            pass
        return e
    return None  # not reached: every key of errors is one of keys
