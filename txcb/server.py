"""
The txcb server: serves any IBucket over the netstring protocol.

The protocol only translates: a decoded request becomes one IBucket call and
its result (or error) becomes one response carrying the request's opaque id.
Requests are dispatched as they arrive, without waiting for earlier ones, so
pipelined clients keep the bucket busy and slow operations (a durable write)
never hold up fast ones.
"""

from __future__ import annotations

import json
from typing import Any, Dict, Optional

from twisted.internet.defer import succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import NetstringReceiver
from twisted.python.failure import Failure

from txcb import __version__
from txcb.codec import (
    COUNTER_BODY, ENDURE_BODY, HEADER_LEN, OPT_CHECK_REMOVED, OPT_DECREMENT,
    OPT_INITIAL, OPT_QUIET, FrameError, Op, Request, decode_request, encode_response)
from txcb.errors import RC, ArgumentError, CouchbaseError
from txcb.formats import Encoded

__all__ = ["BucketServerProtocol", "BucketServerFactory", "ServerStats"]

#: Longest error message sent back, in bytes.
_MAX_MESSAGE = 512


class ServerStats:
    """Connection counters shared by every endpoint serving one bucket."""

    def __init__(self) -> None:
        self.connections = 0
        self.total_connections = 0
        self.rejected_connections = 0

    def as_dict(self) -> Dict[str, int]:
        return {"connections": self.connections,
                "total_connections": self.total_connections,
                "rejected_connections": self.rejected_connections}


class BucketServerProtocol(NetstringReceiver):
    """One client connection: netstring frames in, IBucket calls, frames out."""

    _log = Logger()

    def connectionMade(self) -> None:
        f = self.factory
        self.MAX_LENGTH = f.max_frame
        self._inflight = 0
        self._paused = False
        self._peer = str(self.transport.getPeer())
        f.stats.connections += 1
        f.stats.total_connections += 1
        self._log.debug("txcb: connection from {peer}", peer=self._peer)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[override]
        self.connected = False
        self.factory.stats.connections -= 1
        self._log.debug("txcb: connection from {peer} closed", peer=self._peer)

    # -- NetstringReceiver --------------------------------------------------

    def stringReceived(self, payload: bytes) -> None:
        try:
            req = decode_request(payload)
        except FrameError as e:
            self._frame_error(e)
            return
        handler = _HANDLERS[req.opcode]
        self._inflight += 1
        if self._inflight >= self.factory.max_inflight and not self._paused:
            self._paused = True
            self.transport.pauseProducing()
        try:
            d = handler(self, req)
        except CouchbaseError as e:
            self._error(e, req)
            return
        except Exception:
            self._internal_error(Failure(), req)
            return
        d.addCallbacks(self._reply, self._failed, (req,), None, (req,))

    def _handleParseError(self) -> None:
        self._log.warn("txcb: malformed netstring from {peer}; closing", peer=self._peer)
        NetstringReceiver._handleParseError(self)

    # -- replies --------------------------------------------------------------

    def _send(self, payload: bytes) -> None:
        self._inflight -= 1
        if self._paused and self._inflight < self.factory.max_inflight // 2:
            self._paused = False
            self.transport.resumeProducing()
        if self.connected:
            self.sendString(payload)

    def _reply(self, payload: bytes, req: Request) -> None:
        self._send(payload)

    def _failed(self, f: Failure, req: Request) -> None:
        if isinstance(f.value, CouchbaseError):
            self._error(f.value, req)
        else:
            self._internal_error(f, req)

    def _error(self, e: CouchbaseError, req: Request) -> None:
        msg = e.message.encode("utf-8", "replace")[:_MAX_MESSAGE]
        self._send(encode_response(req.opcode, req.opaque, e.rc & 0xFFFF, body=msg))

    def _internal_error(self, f: Failure, req: Request) -> None:
        self._log.failure("txcb: internal error handling {req!r}", f, req=req)
        self._send(encode_response(req.opcode, req.opaque, RC.EINTERNAL,
                                   body=b"internal server error"))

    def _frame_error(self, e: FrameError) -> None:
        if e.opaque is not None:
            self.sendString(encode_response(e.opcode, e.opaque, e.status,
                                            body=str(e).encode("utf-8")[:_MAX_MESSAGE]))
        if e.fatal or e.opaque is None:
            self._log.warn("txcb: protocol error from {peer}: {error}; closing",
                           peer=self._peer, error=str(e))
            self.transport.loseConnection()
        else:
            self._log.info("txcb: bad request from {peer}: {error}", peer=self._peer,
                           error=str(e))


# -- request handlers: Request -> Deferred of a response payload --------------

def _mutation(result: Any, req: Request) -> bytes:
    return encode_response(req.opcode, req.opaque, 0, result.cas, 0, result.seqno)


def _value(result: Any, req: Request) -> bytes:
    if not result.success:  # a quiet miss
        return encode_response(req.opcode, req.opaque, result.rc)
    return encode_response(req.opcode, req.opaque, 0, result.cas, result.flags,
                           result.seqno, result.raw)


def _quiet_miss(result: Any, req: Request) -> bytes:
    if not result.success:
        return encode_response(req.opcode, req.opaque, result.rc)
    return _mutation(result, req)


def _get(p: BucketServerProtocol, r: Request) -> Any:
    return p.factory.bucket.get(r.key, quiet=bool(r.options & OPT_QUIET)
                                ).addCallback(_value, r)


def _store(method: str) -> Any:
    def handler(p: BucketServerProtocol, r: Request) -> Any:
        kw = {"ttl": r.ttl, "persist_to": r.persist_to, "replicate_to": r.replicate_to}
        if r.cas:
            kw["cas"] = r.cas
        return getattr(p.factory.bucket, method)(r.key, Encoded(r.value, r.flags), **kw
                                                 ).addCallback(_mutation, r)
    return handler


def _concat(method: str) -> Any:
    def handler(p: BucketServerProtocol, r: Request) -> Any:
        return getattr(p.factory.bucket, method)(
            r.key, r.value, cas=r.cas, persist_to=r.persist_to, replicate_to=r.replicate_to
        ).addCallback(_mutation, r)
    return handler


def _remove(p: BucketServerProtocol, r: Request) -> Any:
    return p.factory.bucket.remove(r.key, cas=r.cas, quiet=bool(r.options & OPT_QUIET),
                                   persist_to=r.persist_to, replicate_to=r.replicate_to
                                   ).addCallback(_quiet_miss, r)


def _counter(p: BucketServerProtocol, r: Request) -> Any:
    delta, initial = COUNTER_BODY.unpack(r.value)
    if r.options & OPT_DECREMENT:
        delta = -delta
    return p.factory.bucket.counter(
        r.key, delta=delta, initial=initial if r.options & OPT_INITIAL else None, ttl=r.ttl
    ).addCallback(_value, r)


def _touch(p: BucketServerProtocol, r: Request) -> Any:
    return p.factory.bucket.touch(r.key, r.ttl).addCallback(_mutation, r)


def _gat(p: BucketServerProtocol, r: Request) -> Any:
    if not r.ttl:
        raise ArgumentError("GAT needs a non-zero ttl")
    return p.factory.bucket.get(r.key, ttl=r.ttl, quiet=bool(r.options & OPT_QUIET)
                                ).addCallback(_value, r)


def _lock(p: BucketServerProtocol, r: Request) -> Any:
    return p.factory.bucket.lock(r.key, ttl=r.ttl).addCallback(_value, r)


def _unlock(p: BucketServerProtocol, r: Request) -> Any:
    return p.factory.bucket.unlock(r.key, r.cas).addCallback(_mutation, r)


def _endure(p: BucketServerProtocol, r: Request) -> Any:
    timeout_ms, interval_ms = ENDURE_BODY.unpack(r.value)
    return p.factory.bucket.endure(
        r.key, persist_to=r.persist_to, replicate_to=r.replicate_to, cas=r.cas,
        check_removed=bool(r.options & OPT_CHECK_REMOVED), timeout=timeout_ms / 1000.0,
        interval=max(interval_ms, 1) / 1000.0).addCallback(_mutation, r)


def _stats(p: BucketServerProtocol, r: Request) -> Any:
    def encode(stats: Dict[str, Any]) -> bytes:
        stats = dict(stats)
        stats.update(p.factory.stats.as_dict())
        body = json.dumps(stats, default=str, separators=(",", ":")).encode("utf-8")
        return encode_response(r.opcode, r.opaque, body=body)
    return p.factory.bucket.stats().addCallback(encode)


def _noop(p: BucketServerProtocol, r: Request) -> Any:
    return succeed(encode_response(r.opcode, r.opaque))


def _hello(p: BucketServerProtocol, r: Request) -> Any:
    info = {"server": "txcb/" + __version__, "protocol": 1,
            "max_value_size": p.factory.max_value_size,
            "max_frame": p.factory.max_frame, "max_inflight": p.factory.max_inflight}
    return succeed(encode_response(r.opcode, r.opaque, body=json.dumps(info).encode()))


_HANDLERS = {
    Op.GET: _get, Op.GAT: _gat,
    Op.UPSERT: _store("upsert"), Op.INSERT: _store("insert"), Op.REPLACE: _store("replace"),
    Op.APPEND: _concat("append"), Op.PREPEND: _concat("prepend"),
    Op.REMOVE: _remove, Op.COUNTER: _counter, Op.TOUCH: _touch,
    Op.LOCK: _lock, Op.UNLOCK: _unlock, Op.ENDURE: _endure,
    Op.STATS: _stats, Op.NOOP: _noop, Op.HELLO: _hello,
}


class BucketServerFactory(Factory):
    """
    Serves one IBucket to every connection.

    :param bucket: any IBucket provider.
    :param max_inflight: requests one connection may have outstanding before
        the server stops reading from it.
    :param stats: connection counters, shared with other endpoints serving
        the same bucket.
    """

    protocol = BucketServerProtocol

    def __init__(self, bucket: Any, max_inflight: int = 1024,
                 stats: Optional[ServerStats] = None) -> None:
        self.bucket = bucket
        self.max_inflight = max_inflight
        self.stats = stats if stats is not None else ServerStats()
        self.max_value_size = getattr(bucket, "max_value_size", 20 * 1024 * 1024)
        # The largest legal frame: header, longest key, largest value.
        self.max_frame = HEADER_LEN + 250 + self.max_value_size
