"""
The sans-IO reply side of both clients (no Twisted): what a response turns
into, decided once for the Twisted client (:mod:`txcb.client.remote`) and the
blocking one (:mod:`txcb.client.blocking`), which only move the bytes.

- :data:`KIND` says, by opcode, what a success reply gives; :func:`outcome`
  builds it (a ValueResult or OperationResult through the transcoder, a
  counter's int, a JSON document, a SCAN body, or None), or the exception of
  an error status (a quiet miss is a failed result, not an error);
- :func:`multi_frame` records one GET_MULTI reply frame's entries (with
  the GET_MULTI rules of :mod:`txcb.client.requests`), :func:`scan_rows`
  reads one SCAN batch, :func:`server_limits` the HELLO reply;
- LOOKUP_IN / MUTATE_IN replies become a :class:`SubdocReply` (0xCC of a
  lookup included: :func:`subdoc_outcome`), which :func:`subdoc_result`
  turns into the ``txcb.subdocument.SubdocResult`` of the call's specs.

Malformed replies raise :class:`~txcb.errors.ProtocolError`: the caller
closes the connection, since the stream can no longer be trusted.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from txcb.client.requests import multi_entries, multi_limits
from txcb.errors import RC, CouchbaseError, ProtocolError, exception_for_rc
from txcb.limits import DEFAULT_MAX_VALUE_SIZE
from txcb.results import UNSET, OperationResult, ScanItem, ValueResult
from txcb.subdocument import SpecResult, Status, SubdocError, SubdocResult
from txcb.wire.netstring import (
    HEADER_LEN, MULTI_MORE, RES_MAGIC, FrameError, Op, decode_lookup_reply, decode_multi_reply,
    decode_mutate_reply, decode_response, decode_scan_reply, decode_subdoc_failure, res_pack)

__all__ = ["VALUE", "MUTATION", "COUNTER", "JSON", "NONE", "RAW", "MULTI", "KIND",
           "unpack_header", "bad_response", "outcome", "success", "error", "multi_frame",
           "is_last_frame", "scan_rows", "ServerLimits", "server_limits", "frame_limit",
           "failed_key_result", "LOOKUP_IN", "MUTATE_IN", "SubdocReply", "subdoc_outcome",
           "subdoc_result"]

# What a successful response turns into, by opcode.
VALUE = 1  # a ValueResult (GET, GAT, LOCK)
MUTATION = 2  # an OperationResult
COUNTER = 3  # a ValueResult whose value is the counter's new int
JSON = 4  # the JSON document of the body (STATS, HELLO)
NONE = 5  # None (NOOP, FLUSH)
RAW = 6  # the reply body itself (SCAN: see scan_rows)
MULTI = 7  # GET_MULTI: frames of entries (see multi_frame)
LOOKUP_IN = 8  # a SubdocReply (see subdoc_outcome, subdoc_result)
MUTATE_IN = 9  # a SubdocReply
KIND: Dict[int, int] = {
    Op.GET: VALUE, Op.GAT: VALUE, Op.LOCK: VALUE, Op.COUNTER: COUNTER,
    Op.UPSERT: MUTATION, Op.INSERT: MUTATION, Op.REPLACE: MUTATION,
    Op.REMOVE: MUTATION, Op.APPEND: MUTATION, Op.PREPEND: MUTATION,
    Op.TOUCH: MUTATION, Op.UNLOCK: MUTATION, Op.ENDURE: MUTATION,
    Op.STATS: JSON, Op.HELLO: JSON, Op.NOOP: NONE, Op.FLUSH: NONE, Op.SCAN: RAW,
    Op.GET_MULTI: MULTI, Op.LOOKUP_IN: LOOKUP_IN, Op.MUTATE_IN: MUTATE_IN,
}

# The codec's response header, read in place (txcb.wire.netstring packs it
# with res_pack; this is its unpack, checked against it).
_HEADER = struct.Struct("!BBHIQIQ")
assert _HEADER.size == HEADER_LEN
assert _HEADER.unpack(res_pack(RES_MAGIC, 1, 2, 3, 4, 5, 6)) == (RES_MAGIC, 1, 2, 3, 4, 5, 6)
#: ``unpack_header(payload)``: (magic, opcode, status, opaque, cas, flags, seqno).
unpack_header = _HEADER.unpack_from

_ENOENT = RC.KEY_ENOENT


def success(kind: int, key: Any, cas: int, flags: int, seqno: int, body: bytes,
            transcoder: Any) -> Any:
    """The result of a status-0 reply of ``kind``; ProtocolError if its body is malformed."""
    if kind == VALUE:
        return ValueResult(key, body, flags, cas, 0, transcoder, UNSET, seqno)
    if kind == MUTATION:
        return OperationResult(key, cas, 0, seqno)
    if kind == COUNTER or kind == JSON:
        try:
            return (ValueResult(key, body, flags, cas, 0, transcoder, int(body), seqno)
                    if kind == COUNTER else json.loads(body))
        except ValueError as e:  # UnicodeDecodeError and JSONDecodeError too
            raise ProtocolError("malformed reply body: %s" % (e,), key=key)
    if kind == LOOKUP_IN or kind == MUTATE_IN:
        return _subdoc_reply(kind, key, 0, cas, seqno, body)
    return body if kind == RAW else None


def error(kind: int, key: Any, quiet: bool, status: int, body: bytes) -> Any:
    """
    What an error status gives: the exception to raise (or errback), or,
    for a quiet request's miss, a failed result (not an exception).
    """
    if status == _ENOENT and quiet:
        return ValueResult(key, rc=status) if kind == VALUE else OperationResult(key, rc=status)
    return exception_for_rc(status, body.decode("utf-8", "replace"), key)


def outcome(kind: int, key: Any, quiet: bool, status: int, cas: int, flags: int, seqno: int,
            body: bytes, transcoder: Any) -> Any:
    """A reply's result, or the exception of its error status (returned, not raised)."""
    if status:
        if kind == LOOKUP_IN or kind == MUTATE_IN:
            return subdoc_outcome(kind, key, status, cas, seqno, body)
        return error(kind, key, quiet, status, body)
    return success(kind, key, cas, flags, seqno, body, transcoder)


def bad_response(payload: bytes) -> ProtocolError:
    """The error of a response payload too short for its header or of the wrong magic."""
    try:
        decode_response(payload)
    except FrameError as e:
        return ProtocolError("bad response from the server: %s" % (e,))
    return ProtocolError("bad response from the server")  # not reached


def multi_frame(payload: bytes, keys: List[Any], pos: int, last: bool, quiet: bool,
                transcoder: Any, results: Dict[Any, Any], errors: Dict[Any, Any]) -> int:
    """
    Record one GET_MULTI reply frame (a whole response payload, status 0)
    for ``keys[pos:]`` with :func:`txcb.client.requests.multi_entries`;
    returns the position after its entries.  ``last``: the frame is its
    reply's last (see :func:`is_last_frame`).  ProtocolError if the frame
    does not parse or does not fit the keys.
    """
    try:
        entries = decode_multi_reply(payload, HEADER_LEN)
        return multi_entries(keys, pos, entries, last, quiet, transcoder, results, errors)
    except (FrameError, ProtocolError) as e:
        raise ProtocolError("malformed GET_MULTI reply: %s" % (e,))


def is_last_frame(flags: int) -> bool:
    """Whether a GET_MULTI reply frame with these header flags is its reply's last."""
    return not flags & MULTI_MORE


def scan_rows(body: bytes, ids_only: bool, transcoder: Any
              ) -> Tuple[List[ScanItem], Optional[bytes]]:
    """One SCAN batch's rows, and the bound to resume from (None: the scan is done)."""
    try:
        resume, found = decode_scan_reply(body)
    except FrameError as e:
        raise ProtocolError("malformed SCAN reply: %s" % (e,))
    return [ScanItem.from_row(k, f, c, x, None if ids_only else v, transcoder)
            for k, f, c, x, v in found], resume or None


class ServerLimits(NamedTuple):
    """What a client takes from the server's HELLO reply."""

    max_value_size: int
    #: GET_MULTI: the most keys per request (0: no GET_MULTI), the longest body.
    multi_keys: int
    multi_body: int
    #: The most requests the server takes in flight on one connection.
    max_inflight: int


def server_limits(info: Any) -> ServerLimits:
    """The limits of a HELLO reply (a dict); ProtocolError if it is not one."""
    try:
        max_value_size = int(info.get("max_value_size", DEFAULT_MAX_VALUE_SIZE))
    except (AttributeError, TypeError, ValueError):
        raise ProtocolError("bad HELLO reply: %r" % (info,))
    inflight = info.get("max_inflight")
    keys, body = multi_limits(info, max_value_size)
    return ServerLimits(max_value_size, keys, body,
                        inflight if type(inflight) is int and inflight > 0 else 1024)


def frame_limit(max_value_size: int) -> int:
    """The longest reply frame a client accepts, given the server's value limit."""
    return HEADER_LEN + max_value_size + 1024


def failed_key_result(error: BaseException, key: Any, result_cls: type) -> Any:
    """The result a failed key of a multi-key call records: the error's, or a failed one."""
    if isinstance(error, CouchbaseError):
        return error.result if error.result is not None else result_cls(key, rc=error.rc)
    return result_cls(key, rc=RC.EINTERNAL)


# -- LOOKUP_IN / MUTATE_IN (docs/protocol.rst, 3.4) ----------------------------

class SubdocReply(NamedTuple):
    """
    A sub-document reply that is a result, its body parsed: ``entries`` are
    ``(status, value)`` per spec (LOOKUP_IN) or ``(index, status, value)``
    of the specs with a value (MUTATE_IN).  :func:`subdoc_result` makes the
    SubdocResult of it, given the specs.
    """
    key: Any
    status: int
    cas: int
    seqno: int
    entries: List[tuple]


#: A LOOKUP_IN's statuses that are results (the document was read).
_LOOKUP_RESULTS = frozenset((Status.SUCCESS, Status.MULTI_PATH_FAILURE, Status.SUCCESS_DELETED,
                             Status.MULTI_PATH_FAILURE_DELETED))
#: The statuses a sub-document reply raises as SubdocError (the others are the
#: usual errors: NotFoundError, KeyExistsError, TooBigError...).
_SUBDOC_ERRORS = frozenset([Status.EINVAL, Status.XATTR_EINVAL] + list(range(0xC0, 0xD8)))


def _subdoc_reply(kind: int, key: Any, status: int, cas: int, seqno: int,
                  body: bytes) -> SubdocReply:
    try:
        entries = decode_lookup_reply(body) if kind == LOOKUP_IN else decode_mutate_reply(body)
    except FrameError as e:
        raise ProtocolError("malformed sub-document reply: %s" % (e,), key=key)
    return SubdocReply(key, status, cas, seqno, entries)


def subdoc_outcome(kind: int, key: Any, status: int, cas: int, seqno: int,
                   body: bytes) -> Any:
    """
    A sub-document reply of a non-zero status: a SubdocReply (a LOOKUP_IN
    with failed paths), or the exception (returned); raises ProtocolError
    if the body does not parse.
    """
    if kind == LOOKUP_IN and status in _LOOKUP_RESULTS:
        return _subdoc_reply(kind, key, status, cas, seqno, body)
    if kind == MUTATE_IN and status == Status.MULTI_PATH_FAILURE:
        try:
            index, spec_status, message = decode_subdoc_failure(body)
        except FrameError as e:
            raise ProtocolError("malformed MUTATE_IN failure: %s" % (e,), key=key)
        return SubdocError(spec_status, message, index=index, key=key)
    if status in _SUBDOC_ERRORS:
        return SubdocError(status, body.decode("utf-8", "replace"), key=key)
    return exception_for_rc(status, body.decode("utf-8", "replace"), key)


def subdoc_result(reply: SubdocReply, specs: List[Any], lookup: bool) -> SubdocResult:
    """The SubdocResult of a reply to ``specs``; ProtocolError if it does not fit them."""
    n = len(specs)
    if lookup:
        if len(reply.entries) != n:
            raise ProtocolError("a LOOKUP_IN reply of %d results for %d specs"
                                % (len(reply.entries), n), key=reply.key)
        results = [SpecResult(st, v if st == Status.SUCCESS and v else None)
                   for st, v in reply.entries]
        return SubdocResult(reply.key, reply.cas, specs, results, reply.status)
    results = [SpecResult(Status.SUCCESS)] * n
    for index, st, value in reply.entries:
        if index >= n:
            raise ProtocolError("a MUTATE_IN reply for spec %d of %d" % (index, n),
                                key=reply.key)
        results[index] = SpecResult(st, value)
    token = (0, reply.seqno) if reply.seqno else None
    return SubdocResult(reply.key, reply.cas, specs, results, Status.SUCCESS, token)
