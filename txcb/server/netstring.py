"""
The txcb server: serves any IBucket over the netstring protocol.

The protocol only translates: a decoded request becomes one bucket call and
its result (or error) becomes one response carrying the request's opaque id.
Requests are dispatched as they arrive, without waiting for earlier ones, so
pipelined clients keep the bucket busy and slow operations (a durable write)
never hold up fast ones.

Every opcode has one entry in ``_COMMANDS``: its name (for the request
observer), its reply made at once from the ISyncBucket calls (for a bucket
providing :class:`~txcb.interfaces.ISyncBucket`: no Deferred, no in-flight
slot) and its reply made from the IBucket calls (a Deferred, for any other
bucket).  Which of the two a connection uses is decided once per bucket, in
:meth:`BucketServerProtocol._serve`; a ``now`` call that raises
:class:`~txcb.errors.WouldBlock` (a value not resident) is answered by the
IBucket call instead, in :meth:`BucketServerProtocol.stringReceived`.
"""

from __future__ import annotations

import json
from time import perf_counter
from typing import Any, Callable, Dict, Optional, Set

from twisted.internet.defer import CancelledError, succeed
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols.basic import NetstringReceiver
from twisted.python.failure import Failure

from txcb import __version__
from txcb.errors import RC, ArgumentError, CouchbaseError, WouldBlock
from txcb.formats import Encoded
from txcb.interfaces import ISyncBucket
from txcb.limits import (
    MAX_KEY_LEN, MAX_REPLY_MESSAGE, MAX_SCAN_BATCH, MAX_SCAN_BYTES, max_value_size)
from txcb.subdocument import SubdocError
from txcb.server import nsmulti, nssubdoc
from txcb.server.core import LateReplies, RequestFlow, ServerStats, admit, idle_sweeper
from txcb.transport import FastNetstringReceiver, set_nodelay
from txcb.validation import resolve_durability
from txcb.wire.netstring import (
    COUNTER_BODY, ENDURE_BODY, HEADER_LEN, MAX_MULTI, OPT_CHECK_REMOVED, OPT_DECREMENT,
    OPT_IDS_ONLY, OPT_INITIAL, OPT_QUIET, RES_MAGIC, FrameError, Op,
    Request, decode_request, decode_scan_request, encode_subdoc_failure, encode_response, encode_scan_reply,
    res_pack)

__all__ = ["BucketServerProtocol", "BucketServerFactory", "ServerStats"]

#: Longest error message sent back, in bytes.


class BucketServerProtocol(RequestFlow, FastNetstringReceiver):
    """
    One client connection: netstring frames in, bucket calls, frames out.

    What it waits for (the bucket's Deferreds, durable replies) is in
    ``_waiting``; when the connection is lost each is cancelled, so that the
    bucket forgets its waiters (an ENDURE's, a persist_to write's) at once,
    and nothing refers to the protocol any more: its memory (and that of
    what it buffered) is freed by reference counting, not by the garbage
    collector.
    """

    _log = Logger()
    _late: Optional[LateReplies] = None

    @property
    def _logger(self) -> Logger:
        """
        The class's logger (``_log`` read from the class): its events name the
        class as their source, not this connection, so that an observer which
        keeps events (the log beginner's buffer before logging starts) keeps
        no connection alive.
        """
        return type(self)._log

    #: Set by every read, cleared by the factory's idle sweeper (--idle-timeout).
    idle_seen = False

    def connectionMade(self) -> None:
        f = self.factory
        self.MAX_LENGTH = f.max_frame
        self._peer = str(self._io.getPeer())
        self._observer = f.observer  # installed before the connection is made
        self._serve(f.bucket)
        f._protocols.add(self)  # told if the factory is given another bucket
        set_nodelay(self._io)
        f.stats.opened()
        # Replies made outside a read go out together at the end of the
        # reactor turn, where the transport names its reactor.
        clock = getattr(self._io, "reactor", None)
        self._late = (LateReplies(clock, self._write_late, self.flushEvery)
                      if clock is not None else None)
        self._waiting: Set[Any] = set()  # Deferreds and _DurableReplies not fired yet
        self.flow_started(f.max_inflight)
        if f.idle is not None:
            f.idle.add(self)
        self._logger.debug("txcb: connection from {peer}", peer=self._peer)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.connected = False
        self._held = []
        self._buf = b""      # a frame half read
        self._parts = None
        late, self._late = self._late, None
        if late is not None:
            late.drop()
        f = self.factory
        f.stats.closed()
        f._protocols.discard(self)
        if f.idle is not None:
            f.idle.discard(self)
        waiting, self._waiting = self._waiting, set()
        for w in waiting:
            w.cancel()
        self._logger.debug("txcb: connection from {peer} closed", peer=self._peer)

    # -- --idle-timeout (core.IdleSweeper) ------------------------------------

    def dataReceived(self, data: bytes) -> None:
        self.idle_seen = True
        FastNetstringReceiver.dataReceived(self, data)

    def idle_busy(self) -> bool:
        """Requests are still being answered (or wait for the client to read)."""
        return bool(self._inflight or self._held or self._out_paused)

    def idle_peer(self) -> str:
        return self._peer

    def idle_close(self) -> None:
        self._io.loseConnection()

    def _serve(self, bucket: Any) -> None:
        """
        Serve ``bucket``: the one place that decides how each opcode runs,
        synchronously if the bucket provides ISyncBucket, else through its
        IBucket Deferreds (NOOP and HELLO, which need no bucket, always at
        once); a durable mutation on an ISyncBucket is made at once and
        answered when the bucket says it is durable.  Worked out when the
        connection is made and when the factory is given another bucket
        (``factory.bucket = ...``), never per request.
        """
        self._bucket = bucket
        self._sync = sync = ISyncBucket.providedBy(bucket)
        # opcode -> its ``now`` handler, the one call stringReceived makes.
        self._now = {op: c.now for op, c in _COMMANDS.items()
                     if c.now is not None and (sync or c.bucketless)}
        self._durable = {op: c for op, c in _COMMANDS.items() if sync and c.durable}

    # -- requests -------------------------------------------------------------

    # dataReceived: FastNetstringReceiver's, which, closing after a protocol
    # error, drops whatever still arrives (TLS keeps delivering until the peer
    # answers close_notify) unread and unbuffered.

    def stringReceived(self, payload: bytes) -> None:
        if self.brokenPeer:  # frames pipelined behind a fatal one are not run
            return
        if self._out_paused or self._held:
            self._held.append(payload)  # run when the client has read its replies
            return
        observer = self._observer
        started = 0.0 if observer is None else perf_counter()
        try:
            req = decode_request(payload)
        except FrameError as e:
            self._frame_error(e, started)
            return
        now = self._now.get(req.opcode)
        if now is None or req.persist_to or req.replicate_to:
            self._call_later(req, started)
            return
        try:
            reply = now(self, self._bucket, req)
        except CouchbaseError as e:
            self._failed_now(req, e.rc & 0xFFFF, self._error_reply(e, req), started)
            return
        except WouldBlock:  # a value not resident: the IBucket call answers it later
            self._call_later(req, started)
            return
        except Exception:
            self._failed_now(req, RC.EINTERNAL, self._internal_reply(Failure(), req), started)
            return
        self.sendString(reply)
        if observer is not None:
            observer.request_done(_COMMANDS[req.opcode].name, 0, started)

    def _failed_now(self, req: Request, status: int, reply: bytes, started: float) -> None:
        """Send the error reply of a request answered at once."""
        self.sendString(reply)
        if self._observer is not None:
            self._observer.request_done(_COMMANDS[req.opcode].name, status, started)

    def handle_held(self, request: Any) -> None:
        """RequestFlow: a request held while the client was not reading."""
        self.stringReceived(request)

    def _call_later(self, req: Request, started: float) -> None:
        """
        A request answered later: through an IBucket Deferred, or once durable
        (a durable mutation on an ISyncBucket, made at once unless the bucket
        says WouldBlock).  On an ISyncBucket, the requests whose ``now`` call
        raised WouldBlock come here too, and take the IBucket call.
        """
        bucket = self._bucket
        self.request_started()
        try:
            durable = self._durable.get(req.opcode)
            if durable is not None and (req.persist_to or req.replicate_to) and \
                    self._call_durable(durable, bucket, req, started):
                return
            d = _COMMANDS[req.opcode].later(self, bucket, req)
        except CouchbaseError as e:
            self._finish(self._error_reply(e, req), req, e.rc & 0xFFFF, started)
            return
        except Exception:
            self._finish(self._internal_reply(Failure(), req), req, RC.EINTERNAL, started)
            return
        if d.called:
            d.addCallbacks(self._finish, self._failed, (req, 0, started), None, (req, started))
        else:
            self._waiting.add(d)
            d.addCallbacks(self._answered, self._refused, (d, req, started), None,
                           (d, req, started))

    def _call_durable(self, cmd: "_Command", bucket: Any, req: Request,
                      started: float) -> bool:
        """
        A durable mutation on an ISyncBucket: made now, answered once durable
        (by the bucket's ``on_durable`` firing a _DurableReply, no Deferred).
        False if the bucket said WouldBlock (nothing made: the IBucket call
        is to make it).
        """
        if req.cas and req.opcode == Op.INSERT:
            raise ArgumentError("insert takes no cas")  # as the IBucket call would
        persist, replicate = resolve_durability(
            req.persist_to, req.replicate_to, bucket.max_persist_to, bucket.max_replicate_to,
            req.key)
        try:
            result = cmd.mutate(bucket, req)
        except WouldBlock:
            return False
        reply = _DurableReply(self, req, cmd.encode, started)
        if bucket.on_durable(result, persist, replicate, reply):
            self._waiting.add(reply)
        else:
            self._finish(cmd.encode(result, req), req, 0, started)
        return True

    def _handleParseError(self) -> None:
        self._logger.warn("txcb: malformed netstring from {peer}; closing", peer=self._peer)
        NetstringReceiver._handleParseError(self)

    # -- replies --------------------------------------------------------------

    def _finish(self, payload: bytes, req: Request, status: int, started: float) -> None:
        """Send the reply of a request that held an in-flight slot."""
        self.request_finished()
        if self.connected:
            if self._batch is None and self._late is not None:
                self._late.add(b"%d:%s," % (len(payload), payload))
            else:
                self.sendString(payload)
        if self._observer is not None:
            self._observer.request_done(_COMMANDS[req.opcode].name, status, started)

    def _answered(self, payload: bytes, d: Any, req: Request, started: float) -> None:
        """A Deferred in ``_waiting`` fired."""
        self._waiting.discard(d)
        self._finish(payload, req, 0, started)

    def _refused(self, f: Failure, d: Any, req: Request, started: float) -> None:
        """A Deferred in ``_waiting`` failed, or was cancelled by connectionLost."""
        self._waiting.discard(d)
        if not self.connected and f.check(CancelledError):
            self.request_finished()  # not answered: nobody is there to tell
            return
        self._failed(f, req, started)

    def _failed(self, f: Failure, req: Request, started: float) -> None:
        e = f.value
        if isinstance(e, CouchbaseError):
            self._finish(self._error_reply(e, req), req, e.rc & 0xFFFF, started)
        else:
            self._finish(self._internal_reply(f, req), req, RC.EINTERNAL, started)

    def _write_late(self, replies: list) -> None:
        if self.connected:
            self._flush(replies)

    def _send_late(self) -> None:
        """Write the late replies gathered so far, now."""
        if self._late is not None:
            self._late.flush()

    def _error_reply(self, e: CouchbaseError, req: Request) -> bytes:
        msg = e.message.encode("utf-8", "replace")[:MAX_REPLY_MESSAGE]
        if isinstance(e, SubdocError) and e.index is not None:  # 0xCC: which spec, why
            msg = encode_subdoc_failure(e.index, e.status, msg)
        return encode_response(req.opcode, req.opaque, e.rc & 0xFFFF, body=msg)

    def _internal_reply(self, f: Failure, req: Request) -> bytes:
        self._logger.failure("txcb: internal error handling {req!r}", f, req=req)
        return encode_response(req.opcode, req.opaque, RC.EINTERNAL,
                               body=b"internal server error")

    def _frame_error(self, e: FrameError, started: float) -> None:
        if e.opaque is not None:
            self.sendString(encode_response(e.opcode, e.opaque, e.status,
                                            body=str(e).encode("utf-8")[:MAX_REPLY_MESSAGE]))
            if self._observer is not None:
                cmd = _COMMANDS.get(e.opcode)
                self._observer.request_done(cmd.name if cmd is not None else
                                            "0x%02x" % (e.opcode,), e.status, started)
        if e.fatal or e.opaque is None:
            self._logger.warn("txcb: protocol error from {peer}: {error}; closing",
                              peer=self._peer, error=str(e))
            self.brokenPeer = 1
            self._io.loseConnection()
        else:
            self._logger.info("txcb: bad request from {peer}: {error}", peer=self._peer,
                              error=str(e))


class _DurableReply:
    """
    The reply to a durable mutation, sent when the bucket fires it (a
    Deferred-like ``on_durable`` target).  :meth:`cancel` (the connection is
    gone) marks it called, which tells the bucket to skip it, and lets go of
    the protocol and the request (with its value) at once.
    """

    __slots__ = ("proto", "req", "encode", "started", "called")

    def __init__(self, proto: BucketServerProtocol, req: Request, encode: Any,
                 started: float) -> None:
        self.proto: Optional[BucketServerProtocol] = proto
        self.req: Any = req
        self.encode = encode
        self.started = started
        self.called = False

    def _claim(self) -> Optional[BucketServerProtocol]:
        """The protocol to answer on, the first time only (else None)."""
        proto = self.proto
        if self.called or proto is None:
            return None
        self.called = True
        proto._waiting.discard(self)
        return proto

    def callback(self, result: Any) -> None:
        proto = self._claim()
        if proto is not None:
            proto._finish(self.encode(result, self.req), self.req, 0, self.started)

    def errback(self, error: Any) -> None:
        proto = self._claim()
        if proto is not None:
            f = error if isinstance(error, Failure) else Failure(error)
            proto._failed(f, self.req, self.started)

    def cancel(self) -> None:
        self.called = True
        self.proto = self.req = self.encode = None


# -- the commands -------------------------------------------------------------
# ``now(p, bucket, req)``: the reply payload, from the ISyncBucket calls (or
# the CouchbaseError they raise); ``later(p, bucket, req)``: a Deferred of it,
# from the IBucket calls.  A mutation that may be durable also has
# ``mutate(bucket, req)``, its ISyncBucket call, and ``encode(result, req)``.

Handler = Callable[[BucketServerProtocol, Any, Request], Any]


class _Command:
    """One opcode: its name (for the request observer) and how it is served."""

    __slots__ = ("name", "now", "later", "mutate", "encode", "bucketless")
    now: Any  # Optional[Handler]: None if only the IBucket call serves it

    def __init__(self, name: str, later: Optional[Handler], now: Optional[Handler] = None,
                 mutate: Any = None, encode: Any = None) -> None:
        self.name = name
        self.now = now
        self.mutate = mutate  # set: persist_to/replicate_to wait for durability
        self.encode = encode
        self.bucketless = later is None  # answered at once, whatever the bucket
        self.later = later if later is not None else self._at_once

    @property
    def durable(self) -> bool:
        """A mutation that persist_to/replicate_to may ask to wait for."""
        return self.mutate is not None

    def _at_once(self, p: BucketServerProtocol, b: Any, r: Request) -> Any:
        return succeed(self.now(p, b, r))


def _mutation(result: Any, r: Request) -> bytes:
    return res_pack(RES_MAGIC, r.opcode, 0, r.opaque, result.cas, 0, result.seqno)


def _value(result: Any, r: Request) -> bytes:
    if result.rc:  # a quiet miss
        return res_pack(RES_MAGIC, r.opcode, result.rc, r.opaque, 0, 0, 0)
    return res_pack(RES_MAGIC, r.opcode, 0, r.opaque, result.cas, result.flags,
                    result.seqno) + result.raw


def _quiet_miss(result: Any, r: Request) -> bytes:
    if result.rc:
        return res_pack(RES_MAGIC, r.opcode, result.rc, r.opaque, 0, 0, 0)
    return _mutation(result, r)


def _get_now(p: Any, b: Any, r: Request) -> bytes:
    """GET, the commonest request: ``_value`` of ``get_sync``, written out."""
    res = b.get_sync(r.key, 0, r.options & OPT_QUIET)  # GAT is the one that touches
    if res.rc:  # a quiet miss
        return res_pack(RES_MAGIC, 0x00, res.rc, r.opaque, 0, 0, 0)
    return res_pack(RES_MAGIC, 0x00, 0, r.opaque, res.cas, res.flags, res.seqno) + res.raw


def _get(p: Any, b: Any, r: Request) -> Any:
    return b.get(r.key, quiet=bool(r.options & OPT_QUIET)).addCallback(_value, r)


def _gat_now(p: Any, b: Any, r: Request) -> bytes:
    if not r.ttl:
        raise ArgumentError("GAT needs a non-zero ttl")
    return _value(b.get_sync(r.key, r.ttl, bool(r.options & OPT_QUIET)), r)


def _gat(p: Any, b: Any, r: Request) -> Any:
    if not r.ttl:
        raise ArgumentError("GAT needs a non-zero ttl")
    return b.get(r.key, ttl=r.ttl, quiet=bool(r.options & OPT_QUIET)).addCallback(_value, r)


def _store(op: str) -> _Command:
    def mutate(b: Any, r: Request) -> Any:  # insert's cas is refused before (see now)
        return b.store_sync(op, r.key, Encoded(r.value, r.flags), r.cas, r.ttl)

    def now(p: Any, b: Any, r: Request) -> bytes:
        if op == "insert" and r.cas:
            raise ArgumentError("insert takes no cas")  # IBucket.insert has no cas
        res = b.store_sync(op, r.key, Encoded(r.value, r.flags), r.cas, r.ttl)
        return res_pack(RES_MAGIC, r.opcode, 0, r.opaque, res.cas, 0, res.seqno)

    def later(p: Any, b: Any, r: Request) -> Any:
        kw = {"ttl": r.ttl, "persist_to": r.persist_to, "replicate_to": r.replicate_to}
        if r.cas:
            if op == "insert":
                raise ArgumentError("insert takes no cas")
            kw["cas"] = r.cas
        return getattr(b, op)(r.key, Encoded(r.value, r.flags), **kw).addCallback(
            _mutation, r)
    return _Command(op, later, now, mutate, _mutation)


def _concat(op: str) -> _Command:
    def mutate(b: Any, r: Request) -> Any:
        return b.concat_sync(op, r.key, r.value, r.cas)

    def later(p: Any, b: Any, r: Request) -> Any:
        return getattr(b, op)(r.key, r.value, cas=r.cas, persist_to=r.persist_to,
                              replicate_to=r.replicate_to).addCallback(_mutation, r)
    return _Command(op, later, lambda p, b, r: _mutation(mutate(b, r), r), mutate, _mutation)


def _remove_now(b: Any, r: Request) -> Any:
    return b.remove_sync(r.key, r.cas, bool(r.options & OPT_QUIET))


def _remove(p: Any, b: Any, r: Request) -> Any:
    return b.remove(r.key, cas=r.cas, quiet=bool(r.options & OPT_QUIET),
                    persist_to=r.persist_to, replicate_to=r.replicate_to
                    ).addCallback(_quiet_miss, r)


def _counter_args(r: Request) -> tuple:
    delta, initial = COUNTER_BODY.unpack(r.value)
    if r.options & OPT_DECREMENT:
        delta = -delta
    return delta, initial if r.options & OPT_INITIAL else None


def _counter_now(p: Any, b: Any, r: Request) -> bytes:
    delta, initial = _counter_args(r)
    return _value(b.counter_sync(r.key, delta, initial, r.ttl), r)


def _counter(p: Any, b: Any, r: Request) -> Any:
    delta, initial = _counter_args(r)
    return b.counter(r.key, delta=delta, initial=initial, ttl=r.ttl).addCallback(_value, r)


def _endure(p: Any, b: Any, r: Request) -> Any:
    timeout_ms, interval_ms = ENDURE_BODY.unpack(r.value)
    return b.endure(
        r.key, persist_to=r.persist_to, replicate_to=r.replicate_to, cas=r.cas,
        check_removed=bool(r.options & OPT_CHECK_REMOVED), timeout=timeout_ms / 1000.0,
        interval=max(interval_ms, 1) / 1000.0).addCallback(_mutation, r)


def _stats(p: BucketServerProtocol, b: Any, r: Request) -> Any:
    def encode(stats: Dict[str, Any]) -> bytes:
        stats = dict(stats)
        stats.update(p.factory.stats.as_dict())
        body = json.dumps(stats, default=str, separators=(",", ":")).encode("utf-8")
        return encode_response(r.opcode, r.opaque, body=body)
    return b.stats().addCallback(encode)


def _flush(p: Any, b: Any, r: Request) -> Any:
    return b.flush().addCallback(lambda _: encode_response(r.opcode, r.opaque))


def _scan(p: BucketServerProtocol, b: Any, r: Request) -> Any:
    """One batch per request, nothing kept in between (docs/protocol.rst, 3.1)."""
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
    return b.scan(prefix, start, end, bool(r.options & OPT_IDS_ONLY),
                  min(batch_size, MAX_SCAN_BATCH), batch_bytes).addCallback(batch)


def _hello(p: BucketServerProtocol, b: Any, r: Request) -> bytes:
    f = p.factory
    info = {"server": "txcb/" + __version__, "protocol": 1,
            "max_value_size": f.max_value_size, "max_frame": f.max_frame,
            "max_inflight": f.max_inflight, "get_multi": MAX_MULTI}
    return encode_response(r.opcode, r.opaque, body=json.dumps(info).encode())


def _noop(p: Any, b: Any, r: Request) -> bytes:
    return res_pack(RES_MAGIC, r.opcode, 0, r.opaque, 0, 0, 0)


#: opcode -> how it is served (see _Command).
_COMMANDS: Dict[int, _Command] = {
    Op.GET: _Command("get", _get, _get_now),
    Op.GAT: _Command("gat", _gat, _gat_now),
    Op.UPSERT: _store("upsert"), Op.INSERT: _store("insert"), Op.REPLACE: _store("replace"),
    Op.APPEND: _concat("append"), Op.PREPEND: _concat("prepend"),
    Op.REMOVE: _Command("remove", _remove, lambda p, b, r: _quiet_miss(_remove_now(b, r), r),
                        _remove_now, _quiet_miss),
    Op.COUNTER: _Command("counter", _counter, _counter_now),
    Op.TOUCH: _Command(
        "touch", lambda p, b, r: b.touch(r.key, r.ttl).addCallback(_mutation, r),
        lambda p, b, r: _mutation(b.touch_sync(r.key, r.ttl), r)),
    Op.LOCK: _Command(
        "lock", lambda p, b, r: b.lock(r.key, ttl=r.ttl).addCallback(_value, r),
        lambda p, b, r: _value(b.lock_sync(r.key, r.ttl), r)),
    Op.UNLOCK: _Command(
        "unlock", lambda p, b, r: b.unlock(r.key, r.cas).addCallback(_mutation, r),
        lambda p, b, r: _mutation(b.unlock_sync(r.key, r.cas), r)),
    Op.ENDURE: _Command("endure", _endure),
    Op.STATS: _Command("stats", _stats),
    Op.FLUSH: _Command("flush", _flush),
    Op.SCAN: _Command("scan", _scan),
    Op.NOOP: _Command("noop", None, _noop),
    Op.HELLO: _Command("hello", None, _hello),
    Op.GET_MULTI: _Command("get_multi", nsmulti.get_multi, nsmulti.get_multi_now),
    Op.LOOKUP_IN: _Command("lookup_in", nssubdoc.lookup_in, nssubdoc.lookup_in_now),
    Op.MUTATE_IN: _Command("mutate_in", nssubdoc.mutate_in, nssubdoc.mutate_in_now),
}


class BucketServerFactory(Factory):
    """
    Serves one IBucket to every connection.

    :param bucket: any IBucket provider; one that provides ISyncBucket (an
        EmbeddedBucket) is called through its synchronous methods.
    :param max_inflight: requests one connection may have outstanding before
        the server stops reading from it.
    :param stats: connection counters, shared with other endpoints serving
        the same bucket.

    ``observer``: an IRequestObserver told of every request (metrics), or
    None; set before connections are made.
    """

    protocol = BucketServerProtocol
    observer: Any = None

    def __init__(self, bucket: Any, max_inflight: int = 1024,
                 stats: Optional[ServerStats] = None) -> None:
        self._bucket = bucket
        self._protocols: Set[BucketServerProtocol] = set()  # connected
        self.max_inflight = max_inflight
        self.stats = stats if stats is not None else ServerStats()
        self.max_value_size = max_value_size(bucket)
        # The largest legal frame: header, longest key, largest value.
        self.max_frame = HEADER_LEN + MAX_KEY_LEN + self.max_value_size
        #: Closes idle connections (``stats.idle_timeout``), or None.
        self.idle = idle_sweeper(self.stats, self.protocol._log, "txcb")

    @property
    def bucket(self) -> Any:
        """The bucket served; given another, every connection serves it next."""
        return self._bucket

    @bucket.setter
    def bucket(self, bucket: Any) -> None:
        self._bucket = bucket
        for p in list(self._protocols):
            p._serve(bucket)

    def buildProtocol(self, addr: Any) -> Any:
        # Over the (shared) connection limit: None makes Twisted hang up at once.
        if not admit(self.stats, addr, self.protocol._log):
            return None
        return Factory.buildProtocol(self, addr)
