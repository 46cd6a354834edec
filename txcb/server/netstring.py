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
from txcb.wire.netstring import (
    COUNTER_BODY, ENDURE_BODY, HEADER_LEN, OPT_CHECK_REMOVED, OPT_DECREMENT,
    OPT_INITIAL, OPT_QUIET, REQ_MAGIC, RES_MAGIC, FrameError, Op, Request, decode_request,
    encode_response)
from txcb.wire.netstring import req_unpack, res_pack
from txcb.wire.netstring import (
    MAX_MULTI, MULTI_FRAME_BYTES, encode_multi_frame, encode_multi_keys, encode_multi_reply,
    encode_request)
from txcb.validation import resolve_durability
from txcb.errors import RC, ArgumentError, CouchbaseError
from txcb.formats import Encoded
from txcb.server.core import ServerStats
from txcb.transport import FastNetstringReceiver, set_nodelay

__all__ = ["BucketServerProtocol", "BucketServerFactory", "ServerStats"]

#: Longest error message sent back, in bytes.
_MAX_MESSAGE = 512


class BucketServerProtocol(FastNetstringReceiver):
    """One client connection: netstring frames in, IBucket calls, frames out."""

    _log = Logger()

    def connectionMade(self) -> None:
        f = self.factory
        self.MAX_LENGTH = f.max_frame
        self._inflight = 0
        self._paused = False
        self._peer = str(self._io.getPeer())
        self._sync = _sync_handlers(f.bucket)
        self._sync_durable = _durable_handlers(f.bucket, self._sync)
        self._sync_for = f.bucket
        set_nodelay(self._io)
        f.stats.connections += 1
        f.stats.total_connections += 1
        self._held: list = []  # frames read while the client's replies are backed up
        self._out_paused = False
        # Replies ready outside a read (a Deferred fired later: a durable
        # write's batch committing, a remote backend answering) gather here
        # and go out in one write at the end of the reactor turn, rather than
        # one send each.  Only where the transport names its reactor.
        self._late: list = []
        self._late_clock = getattr(self._io, "reactor", None)
        self._io.registerProducer(self, True)
        self._log.debug("txcb: connection from {peer}", peer=self._peer)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.connected = False
        self._held = []
        self._late = []
        self.factory.stats.connections -= 1
        self._log.debug("txcb: connection from {peer} closed", peer=self._peer)

    # -- IPushProducer: the transport pauses us while its write buffer is full.
    # A client that sends but never reads then costs one read of requests and
    # the transport's buffer, not unbounded replies.

    def pauseProducing(self) -> None:
        self._out_paused = True
        if not self._paused and self.connected and not self.brokenPeer:
            self._io.pauseProducing()  # stop reading

    def resumeProducing(self) -> None:
        self._out_paused = False
        held, self._held = self._held, []
        for i, payload in enumerate(held):
            if self._out_paused or not self.connected:
                self._held[:0] = held[i:]
                return
            self.stringReceived(payload)
        if not (self._out_paused or self._paused) and self.connected \
                and not self.brokenPeer:
            self._io.resumeProducing()

    def stopProducing(self) -> None:
        self._held = []

    # -- NetstringReceiver --------------------------------------------------

    # dataReceived: FastNetstringReceiver's, which, closing after a protocol
    # error, drops whatever still arrives (TLS keeps delivering until the peer
    # answers close_notify) unread and unbuffered.

    def stringReceived(self, payload: bytes) -> None:
        if self.brokenPeer:  # frames pipelined behind a fatal one are not run
            return
        if self._out_paused or self._held:
            self._held.append(payload)  # run when the client has read its replies
            return
        n = len(payload)
        if n > HEADER_LEN and payload[1] <= 0x01 and payload[0] == REQ_MAGIC:
            # GET and UPSERT, the commonest requests, served without the
            # Request object when they are well formed (what decode_request
            # checks for them: a key of 1 to 250 bytes, then nothing for a
            # GET, the value for an UPSERT) and served synchronously (see
            # _get_now and _store_now).  Anything else takes the general way.
            op = payload[1]
            bucket = self.factory.bucket
            if bucket is self._sync_for and op in self._sync:
                _m, _o, p_to, r_to, options, keylen, opaque, cas, ttl, flags = \
                    req_unpack(payload)
                end = HEADER_LEN + keylen
                if 0 < keylen <= 250 and (end == n if op == 0x00 else end <= n) \
                        and not (p_to or r_to):
                    key = payload[HEADER_LEN:end]
                    try:
                        if op == 0x00:  # GET ignores the ttl field
                            result = bucket.get_sync(key, 0, bool(options & OPT_QUIET))
                        else:
                            result = bucket.store_sync("upsert", key,
                                                       Encoded(payload[end:], flags), cas, ttl)
                    except Exception as e:
                        req = Request(op, opaque, key, payload[end:], cas, ttl, flags, options)
                        self._inflight += 1
                        if isinstance(e, CouchbaseError):
                            self._error(e, req)
                        else:
                            self._internal_error(Failure(), req)
                        return
                    if op:
                        self.sendString(res_pack(RES_MAGIC, 0x01, 0, opaque, result.cas, 0,
                                                  result.seqno))
                    elif result.rc:  # a quiet miss
                        self.sendString(res_pack(RES_MAGIC, 0x00, result.rc, opaque,
                                                  0, 0, 0))
                    else:
                        self.sendString(res_pack(RES_MAGIC, 0x00, 0, opaque, result.cas,
                                                  result.flags, result.seqno) + result.raw)
                    return
        try:
            req = decode_request(payload)
        except FrameError as e:
            self._frame_error(e)
            return
        bucket = self.factory.bucket
        if bucket is not self._sync_for:  # the factory was given another bucket
            self._sync = _sync_handlers(bucket)
            self._sync_durable = _durable_handlers(bucket, self._sync)
            self._sync_for = bucket
        sync = self._sync.get(req.opcode)
        if sync is not None and not (req.persist_to or req.replicate_to):
            # The bucket's own synchronous call: no Deferred, no in-flight slot.
            try:
                payload = sync(bucket, req)
            except CouchbaseError as e:
                self._inflight += 1
                self._error(e, req)
                return
            except Exception:
                self._inflight += 1
                self._internal_error(Failure(), req)
                return
            if payload is not None:
                self.sendString(payload)
                return
        elif req.opcode in self._sync_durable:
            # A durable mutation on such a bucket: made now, answered once
            # durable (by a _DurableReply, not a Deferred chain).
            encode, call = self._sync_durable[req.opcode]
            self._inflight += 1
            if self._inflight >= self.factory.max_inflight and not self._paused:
                self._paused = True
                self._io.pauseProducing()
            try:
                if req.cas and req.opcode == Op.INSERT:
                    raise ArgumentError("insert takes no cas")  # as _store's handler
                persist, replicate = resolve_durability(
                    req.persist_to, req.replicate_to, bucket.max_persist_to,
                    bucket.max_replicate_to, req.key)
                result = call(bucket, req)
                if not bucket.on_durable(result, persist, replicate,
                                          _DurableReply(self, req, encode)):
                    self._send(encode(result, req))
            except CouchbaseError as e:
                self._error(e, req)
            except Exception:
                self._internal_error(Failure(), req)
            return
        handler = _HANDLERS[req.opcode]
        self._inflight += 1
        if self._inflight >= self.factory.max_inflight and not self._paused:
            self._paused = True
            self._io.pauseProducing()
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
        if self._paused and self._inflight <= self.factory.max_inflight // 2:
            self._paused = False
            if self.connected and not self.brokenPeer and not self._out_paused:
                self._io.resumeProducing()
        if not self.connected:
            return
        if self._batch is None and self._late_clock is not None:
            late = self._late
            late.append(b"%d:%s," % (len(payload), payload))
            if len(late) == 1:
                self._late_clock.callLater(0, self._send_late)
            elif len(late) >= self.flushEvery:
                self._send_late()
        else:
            self.sendString(payload)

    def _send_late(self) -> None:
        """Write the replies gathered by :meth:`_send` since the last call."""
        late, self._late = self._late, []
        if late and self.connected:
            self._flush(late)

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
            self.brokenPeer = 1
            self._io.loseConnection()
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
            if method == "insert":  # IBucket.insert has no cas parameter
                raise ArgumentError("insert takes no cas")
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


def _flush(p: BucketServerProtocol, r: Request) -> Any:
    return p.factory.bucket.flush().addCallback(
        lambda _: encode_response(r.opcode, r.opaque))


def _scan(p: BucketServerProtocol, r: Request) -> Any:
    """One batch per request, nothing kept in between (docs/protocol.rst, 3.1)."""
    from txcb.wire.netstring import (
        MAX_SCAN_BATCH, MAX_SCAN_BYTES, OPT_IDS_ONLY, decode_scan_request, encode_scan_reply)
    try:
        batch_size, batch_bytes, prefix, start, end = decode_scan_request(r.value)
    except FrameError as e:
        raise ArgumentError(str(e))
    batch_bytes = min(batch_bytes, MAX_SCAN_BYTES, p.factory.max_value_size)

    def batch(scan: Any) -> Any:
        return scan.next_batch().addCallback(lambda rows: encode_response(
            r.opcode, r.opaque, body=encode_scan_reply(scan.continuation or b"", [
                (x.key if type(x.key) is bytes else x.key.encode("utf-8"), x.flags, x.cas,
                 x.expiry, x.raw or b"") for x in rows])))
    return p.factory.bucket.scan(prefix, start, end, bool(r.options & OPT_IDS_ONLY),
                                 min(batch_size, MAX_SCAN_BATCH), batch_bytes
                                 ).addCallback(batch)


def _hello(p: BucketServerProtocol, r: Request) -> Any:
    info = {"server": "txcb/" + __version__, "protocol": 1,
            "max_value_size": p.factory.max_value_size,
            "max_frame": p.factory.max_frame, "max_inflight": p.factory.max_inflight,
            "get_multi": MAX_MULTI}
    return succeed(encode_response(r.opcode, r.opaque, body=json.dumps(info).encode()))


# -- synchronous handlers: (bucket, Request) -> response payload ---------------
# Used for a bucket whose IBucket method for the opcode is EmbeddedBucket's
# own, which is exactly the matching ``*_sync`` call wrapped in a Deferred:
# calling that directly gives the same result without the Deferred.  A
# handler answers as the Deferred path would, errors (CouchbaseError) included;
# None means "take the Deferred path" (a request the wrapper would treat apart).

def _value_now(result: Any, r: Request) -> bytes:
    if result.rc:  # a quiet miss
        return res_pack(RES_MAGIC, r.opcode, result.rc, r.opaque, 0, 0, 0)
    return res_pack(RES_MAGIC, r.opcode, 0, r.opaque, result.cas, result.flags,
                     result.seqno) + result.raw


def _get_now(b: Any, r: Request) -> bytes:
    # GET ignores the ttl field, as _get does (GAT is the one that touches).
    return _value_now(b.get_sync(r.key, 0, bool(r.options & OPT_QUIET)), r)


def _gat_now(b: Any, r: Request) -> bytes:
    if not r.ttl:
        raise ArgumentError("GAT needs a non-zero ttl")
    return _value_now(b.get_sync(r.key, r.ttl, bool(r.options & OPT_QUIET)), r)


def _store_now(op: str) -> Any:
    def handler(b: Any, r: Request) -> bytes:
        if op == "insert" and r.cas:
            raise ArgumentError("insert takes no cas")  # as _store's handler
        return _mutation(b.store_sync(op, r.key, Encoded(r.value, r.flags), r.cas, r.ttl), r)
    return handler


def _concat_now(op: str) -> Any:
    def handler(b: Any, r: Request) -> bytes:
        return _mutation(b.concat_sync(op, r.key, r.value, r.cas), r)
    return handler


def _remove_now(b: Any, r: Request) -> bytes:
    return _quiet_miss(b.remove_sync(r.key, r.cas, bool(r.options & OPT_QUIET)), r)


def _counter_now(b: Any, r: Request) -> bytes:
    delta, initial = COUNTER_BODY.unpack(r.value)
    if r.options & OPT_DECREMENT:
        delta = -delta
    return _value(b.counter_sync(r.key, delta, initial if r.options & OPT_INITIAL else None,
                                 r.ttl), r)


def _noop_now(b: Any, r: Request) -> bytes:
    return encode_response(r.opcode, r.opaque)


# opcode -> (the EmbeddedBucket methods that must not be overridden, handler)
_SYNC = {
    Op.GET: (("get",), _get_now), Op.GAT: (("get",), _gat_now),
    Op.UPSERT: (("upsert", "_mutate"), _store_now("upsert")),
    Op.INSERT: (("insert", "_mutate"), _store_now("insert")),
    Op.REPLACE: (("replace", "_mutate"), _store_now("replace")),
    Op.APPEND: (("append", "_mutate"), _concat_now("append")),
    Op.PREPEND: (("prepend", "_mutate"), _concat_now("prepend")),
    Op.REMOVE: (("remove", "_mutate"), _remove_now),
    Op.COUNTER: (("counter",), _counter_now),
    Op.TOUCH: (("touch",), lambda b, r: _mutation(b.touch_sync(r.key, r.ttl), r)),
    Op.LOCK: (("lock",), lambda b, r: _value(b.lock_sync(r.key, r.ttl), r)),
    Op.UNLOCK: (("unlock",), lambda b, r: _mutation(b.unlock_sync(r.key, r.cas), r)),
}
_sync_cache: Dict[type, Dict[int, Any]] = {}


def _sync_handlers(bucket: Any) -> Dict[int, Any]:
    """
    The opcodes this bucket can serve synchronously, and how: those whose
    IBucket methods are EmbeddedBucket's own, on the bucket's class and not
    replaced on the instance (``bucket.get = ...``: that opcode then takes
    the Deferred path, calling the replacement).

    Worked out when a connection is made and when the factory is given
    another bucket, never per request: a method replaced on the instance
    afterwards is seen by the connections made after that.
    """
    cls = type(bucket)
    table = _sync_cache.get(cls)
    if table is None:
        from txcb.buckets.embedded import EmbeddedBucket
        table = {Op.NOOP: _noop_now}
        if issubclass(cls, EmbeddedBucket):
            for opcode, (names, handler) in _SYNC.items():
                if all(getattr(cls, n, None) is getattr(EmbeddedBucket, n) for n in names):
                    table[opcode] = handler
        _sync_cache[cls] = table
    patched = getattr(bucket, "__dict__", None)
    if patched and len(table) > 1:  # methods replaced on the instance itself
        table = {op: h for op, h in table.items()
                 if op not in _SYNC or not any(n in patched for n in _SYNC[op][0])}
    return table


# Durable mutations served without Deferreds: opcode -> (encode the reply,
# make the mutation), for a bucket whose synchronous calls and durability
# hooks are EmbeddedBucket's own way (see _durable_handlers).
_DURABLE = {
    Op.UPSERT: (_mutation, lambda b, r: b.store_sync(
        "upsert", r.key, Encoded(r.value, r.flags), r.cas, r.ttl)),
    Op.REPLACE: (_mutation, lambda b, r: b.store_sync(
        "replace", r.key, Encoded(r.value, r.flags), r.cas, r.ttl)),
    Op.INSERT: (_mutation, lambda b, r: b.store_sync(
        "insert", r.key, Encoded(r.value, r.flags), 0, r.ttl)),
    Op.APPEND: (_mutation, lambda b, r: b.concat_sync("append", r.key, r.value, r.cas)),
    Op.PREPEND: (_mutation, lambda b, r: b.concat_sync("prepend", r.key, r.value, r.cas)),
    Op.REMOVE: (_quiet_miss, lambda b, r: b.remove_sync(
        r.key, r.cas, bool(r.options & OPT_QUIET))),
}


def _durable_handlers(bucket: Any, sync: Dict[int, Any]) -> Dict[int, Any]:
    """
    The durable mutations this bucket can serve without Deferreds: those
    served synchronously (``sync``, from :func:`_sync_handlers`) on a bucket
    whose ``_durable`` is EmbeddedBucket's (durability customised, if at
    all, through ``on_durable``), neither replaced on the instance.
    """
    from txcb.buckets.embedded import EmbeddedBucket
    if getattr(type(bucket), "_durable", None) is not EmbeddedBucket._durable:
        return {}
    patched = getattr(bucket, "__dict__", None) or {}
    if "_durable" in patched or "on_durable" in patched:
        return {}
    return {op: h for op, h in _DURABLE.items() if op in sync}


class _DurableReply:
    """The reply to a durable mutation, sent when the bucket fires it."""

    __slots__ = ("proto", "req", "encode", "called")

    def __init__(self, proto: BucketServerProtocol, req: Request, encode: Any) -> None:
        self.proto = proto
        self.req = req
        self.encode = encode
        self.called = False

    def callback(self, result: Any) -> None:
        self.called = True
        self.proto._send(self.encode(result, self.req))

    def errback(self, error: Any) -> None:
        self.called = True
        f = error if isinstance(error, Failure) else Failure(error)
        self.proto._failed(f, self.req)


# -- GET_MULTI (docs/protocol.rst, 3.2): many keys, one request ---------------

_own_get_multi_cache: Dict[type, bool] = {}


def _own_get_multi(bucket: Any) -> bool:
    """Whether ``bucket.get_multi`` is EmbeddedBucket's (its own ``get`` per key)."""
    cls = type(bucket)
    own = _own_get_multi_cache.get(cls)
    if own is None:
        from txcb.buckets.embedded import EmbeddedBucket
        own = _own_get_multi_cache[cls] = (
            getattr(cls, "get_multi", None) is EmbeddedBucket.get_multi)
    return own and "get_multi" not in (getattr(bucket, "__dict__", None) or ())


def _multi_limit(p: BucketServerProtocol) -> int:
    """A GET_MULTI reply frame's body: 1 MiB at most, and what the client accepts."""
    return max(min(MULTI_FRAME_BYTES, p.factory.max_frame - HEADER_LEN), 1)


def _multi_reply(p: BucketServerProtocol, r: Request, entries: list) -> bytes:
    """
    Write every frame of a GET_MULTI reply but the last, which is returned
    (to go out through ``_send``, after them, as a handler's reply).
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
    from txcb.errors import exception_for_rc
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
            append((rc & 0xFFFF, 0, 0, message.encode("utf-8", "replace")[:_MAX_MESSAGE]))
    return entries


def _get_multi(p: BucketServerProtocol, r: Request) -> Any:
    """
    GET_MULTI: each key's get (quiet: a miss is an entry, not an error), or
    GAT with the request's ttl.  A bucket whose ``get`` is served
    synchronously is read key by key with ``get_sync``, a frame written as
    soon as it is full; any other bucket through its ``get_multi``.

    If the client stops reading (the transport pauses the protocol) in the
    middle of a long reply, the keys left become a GET_MULTI of their own
    (same opaque), held with the requests read after this one: the reply
    goes on when the client reads again, and a client that never reads costs
    a frame, not every value it asked for.
    """
    bucket = p.factory.bucket
    keys = r.keys
    ttl = r.ttl
    if Op.GET in p._sync and _own_get_multi(bucket):
        get = bucket.get_sync
        limit = _multi_limit(p)
        entries: list = []
        append = entries.append
        size = 0
        sent = 0  # keys whose entries are written
        for k in keys:
            try:
                res = get(k, ttl, True)
            except CouchbaseError as e:
                entry = (e.rc & 0xFFFF, 0, 0, e.message.encode("utf-8", "replace")[:_MAX_MESSAGE])
                m = 18 + len(entry[3])
            except Exception:
                p._log.failure("txcb: internal error in GET_MULTI of {key!r}", key=k)
                entry = (RC.EINTERNAL, 0, 0, b"internal server error")
                m = 39
            else:
                if res.rc:  # a miss
                    entry = (res.rc, 0, 0, b"")
                    m = 18
                else:
                    raw = res.raw
                    entry = (0, res.cas, res.flags, raw)
                    m = 18 + len(raw)
            if size + m > limit and size:  # the frame is full: out it goes
                if p.connected:
                    p.sendString(encode_multi_frame(r.opaque, entries, True))
                sent += len(entries)
                entries = [entry]
                append = entries.append
                size = m
                if p._out_paused and sent + 1 < len(keys):
                    p._held.append(encode_request(Op.GET_MULTI, r.opaque, ttl=ttl,
                                                  value=encode_multi_keys(keys[sent + 1:])))
                    return succeed(encode_multi_frame(r.opaque, entries, True))
            else:
                append(entry)
                size += m
        return succeed(encode_multi_frame(r.opaque, entries))

    def failed(f: Failure) -> Any:
        err = f.value
        results = getattr(err, "all_results", None) if isinstance(err, CouchbaseError) \
            else None
        if not isinstance(results, dict):
            return f  # one error for the whole request (see _failed)
        return _multi_reply(p, r, _multi_entries(keys, results, err))
    return bucket.get_multi(keys, ttl=ttl, quiet=True).addCallbacks(
        lambda results: _multi_reply(p, r, _multi_entries(keys, results, None)), failed)


_HANDLERS = {
    Op.GET: _get, Op.GAT: _gat,
    Op.UPSERT: _store("upsert"), Op.INSERT: _store("insert"), Op.REPLACE: _store("replace"),
    Op.APPEND: _concat("append"), Op.PREPEND: _concat("prepend"),
    Op.REMOVE: _remove, Op.COUNTER: _counter, Op.TOUCH: _touch,
    Op.LOCK: _lock, Op.UNLOCK: _unlock, Op.ENDURE: _endure,
    Op.STATS: _stats, Op.NOOP: _noop, Op.HELLO: _hello, Op.FLUSH: _flush,
    Op.SCAN: _scan, Op.GET_MULTI: _get_multi,
}


class BucketServerFactory(Factory):
    """
    Serves one IBucket to every connection.

    :param bucket: any IBucket provider.  An EmbeddedBucket is called through
        its ``*_sync`` methods; a method replaced on the bucket instance
        (``bucket.get = ...``) is called instead, by the connections made after
        the replacement (see :func:`_sync_handlers`).
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

    def buildProtocol(self, addr: Any) -> Any:
        # Over the (shared) connection limit: None makes Twisted hang up at once.
        if not self.stats.admit():
            self.protocol._log.warn("txcb: refusing {addr}: {n} connections open already",
                                    addr=str(addr), n=self.stats.connections)
            return None
        return Factory.buildProtocol(self, addr)
