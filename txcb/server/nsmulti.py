"""
The netstring server's GET_MULTI (docs/protocol.rst, 3.2): many keys, one
request, the reply in frames as they fill (and held when the client does not
read).  Handlers of :mod:`txcb.server.netstring`'s command table.
"""

from __future__ import annotations

from typing import Any, Optional

from twisted.python.failure import Failure

from txcb.errors import RC, CouchbaseError, WouldBlock, exception_for_rc
from txcb.limits import MAX_REPLY_MESSAGE
from txcb.wire.netstring import (
    HEADER_LEN, MULTI_FRAME_BYTES, Op, Request, encode_multi_frame, encode_multi_keys,
    encode_multi_reply, encode_request)

__all__ = ["get_multi", "get_multi_now"]


def _multi_limit(p: Any) -> int:
    """A GET_MULTI reply frame's body: 1 MiB at most, and what the client accepts."""
    return max(min(MULTI_FRAME_BYTES, p.factory.max_frame - HEADER_LEN), 1)


def _multi_entry(b: Any, p: Any, key: bytes, ttl: int) -> tuple:
    """
    One key's GET_MULTI entry from ``get_sync`` (quiet: a miss is an entry);
    WouldBlock (the value is not resident) is raised.
    """
    try:
        res = b.get_sync(key, ttl, True)
    except CouchbaseError as e:
        return (e.rc & 0xFFFF, 0, 0, e.message.encode("utf-8", "replace")[:MAX_REPLY_MESSAGE])
    except WouldBlock:
        raise
    except Exception:
        p._logger.failure("txcb: internal error in GET_MULTI of {key!r}", key=key)
        return (RC.EINTERNAL, 0, 0, b"internal server error")
    if res.rc:  # a miss
        return (res.rc, 0, 0, b"")
    return (0, res.cas, res.flags, res.raw)


def get_multi_now(p: Any, b: Any, r: Request) -> bytes:
    """
    GET_MULTI on an ISyncBucket: each key's get (or GAT with the request's
    ttl) with ``get_sync``, a frame written as soon as it is full; the last
    frame is returned.

    If the client stops reading (the transport pauses the protocol) in the
    middle of a long reply, the keys left become a GET_MULTI of their own
    (same opaque), held with the requests read after this one: the reply
    goes on when the client reads again, and a client that never reads costs
    a frame, not every value it asked for.

    A key whose value is not resident (``get_sync`` raises WouldBlock) ends
    the synchronous part: the entries made before it go out in a frame (more
    follow), the request's ``keys`` become the keys left, from that one, and
    WouldBlock goes up to the protocol, whose IBucket call (:func:`get_multi`)
    answers them in the frames after it.
    """
    keys = r.keys
    ttl = r.ttl
    limit = _multi_limit(p)
    entries: list = []
    size = 0
    sent = 0  # keys whose entries are written
    for k in keys:
        try:
            entry = _multi_entry(b, p, k, ttl)
        except WouldBlock:
            if entries and p.connected:
                p.sendString(encode_multi_frame(r.opaque, entries, True))
            r.keys = keys[sent + len(entries):]
            raise
        m = 18 + len(entry[3])
        if size + m > limit and size:  # the frame is full: out it goes
            if p.connected:
                p.sendString(encode_multi_frame(r.opaque, entries, True))
            sent += len(entries)
            entries = [entry]
            size = m
            if p._out_paused and sent + 1 < len(keys):
                p._held.append(encode_request(Op.GET_MULTI, r.opaque, ttl=ttl,
                                              value=encode_multi_keys(keys[sent + 1:])))
                return encode_multi_frame(r.opaque, entries, True)
        else:
            entries.append(entry)
            size += m
    return encode_multi_frame(r.opaque, entries)


def _multi_reply(p: Any, r: Request, entries: list) -> bytes:
    """
    Write every frame of a GET_MULTI reply but the last, which is returned
    (to go out after them, as the request's reply).
    """
    frames = encode_multi_reply(r.opaque, entries, _multi_limit(p))
    for payload in frames[:-1]:
        if p.connected:
            p.sendString(payload)
    return frames[-1]


def _multi_entries(keys: list, results: Any, error: Optional[CouchbaseError]) -> list:
    """
    The entries of a MultiResult.  ``error``: the call's, if it failed (the
    first failed key's, see txcb.multi.gather_results), whose message goes
    with its key; other failed keys have only an rc, and the generic message.
    """
    entries: list = []
    append = entries.append
    mine = error.key if error is not None else None  # None: the first failed key's
    for k in keys:
        res = results.get(k)
        rc = res.rc if res is not None else error.rc if error is not None else RC.EINTERNAL
        if not rc:
            append((0, res.cas, res.flags, res.raw or b""))
        elif rc == RC.KEY_ENOENT:
            append((rc, 0, 0, b""))
        else:
            if error is not None and (res is None or mine is None or mine == k):
                message = error.message
                if mine is None:
                    mine = k
            else:
                message = exception_for_rc(rc).message
            append((rc & 0xFFFF, 0, 0, message.encode("utf-8", "replace")[:MAX_REPLY_MESSAGE]))
    return entries


def get_multi(p: Any, b: Any, r: Request) -> Any:
    """GET_MULTI on any other bucket: its ``get_multi``, quiet (misses are entries)."""
    keys = r.keys

    def failed(f: Failure) -> Any:
        err = f.value
        results = getattr(err, "all_results", None) if isinstance(err, CouchbaseError) \
            else None
        if not isinstance(results, dict):
            return f  # one error for the whole request (see _failed)
        return _multi_reply(p, r, _multi_entries(keys, results, err))
    return b.get_multi(keys, ttl=r.ttl, quiet=True).addCallbacks(
        lambda results: _multi_reply(p, r, _multi_entries(keys, results, None)), failed)
