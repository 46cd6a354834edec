"""
The Twisted client's connection: :class:`BucketClientProtocol` sends
requests with their opaques, keeps one timeout timer for all of them, and
fires each request's target when its reply (or the connection's loss) comes.
:class:`~txcb.client.remote.RemoteBucket` calls it.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, cast

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.client import requests as _rq
from txcb.client.multicalls import _GetMultiPart
from txcb.client.replies import (
    KIND, LOOKUP_IN, MULTI, MUTATE_IN, bad_response, frame_limit, is_last_frame, server_limits,
    subdoc_outcome, unpack_header, error as reply_error, success as reply_success)
from txcb.transport import FastNetstringReceiver, set_nodelay
from txcb.limits import DEFAULT_MAX_VALUE_SIZE, DEFAULT_TIMEOUT, MAX_KEY_LEN
from txcb.wire.netstring import HEADER_LEN, OPT_QUIET, RES_MAGIC, encode_request
from txcb.errors import CouchbaseError, NetworkError, ProtocolError, TimeoutError
from txcb.formats import DEFAULT_TRANSCODER, Transcoder

__all__ = ["BucketClientProtocol", "RequestDeferred"]

_NEVER = float("inf")
#: The sweeper fires this much before a deadline, and takes anything due
#: within twice it: float rounding never makes a timeout wait a turn longer.
_EPSILON = 1e-6
_kind = KIND.get

# A pending request: [target, reply kind, key, quiet, deadline or None, timeout].
_TARGET, _KIND_AT, _KEY, _QUIET, _DEADLINE, _TIMEOUT = range(6)


class RequestDeferred(Deferred):
    """The Deferred of one request: its :attr:`opaque` is what cancelling takes back."""

    opaque = 0


class BucketClientProtocol(FastNetstringReceiver):
    """
    One connection to a txcb server.

    :param timeout: each request's default timeout, in seconds; 0 (or None)
        disables it.
    :ivar server_info: what the server said about itself (HELLO), once known.
    :ivar multi_get_keys: the most keys one GET_MULTI request may carry (0:
        the server has no GET_MULTI, and ``get_multi`` sends a GET per key).
    :ivar max_multi_body: the largest GET_MULTI request body the server takes.
    :ivar lost: why the connection is gone (None while it is up).
    """

    _log = Logger()
    MAX_LENGTH = frame_limit(DEFAULT_MAX_VALUE_SIZE)

    def __init__(self, clock: Any = None, timeout: Optional[float] = DEFAULT_TIMEOUT,
                 transcoder: Optional[Transcoder] = None) -> None:
        self.clock = clock
        self.timeout = timeout
        self.transcoder = transcoder if transcoder is not None else DEFAULT_TRANSCODER
        # opaque -> a pending request (see _TARGET...)
        self._pending: Dict[int, List[Any]] = {}
        # One timer for every request's timeout: it fires at the earliest
        # deadline, errbacks what is due and sets itself for the next.
        self._sweeper: Any = None
        self._sweep_at = _NEVER
        self._next_opaque = 0
        self.server_info: Dict[str, Any] = {}
        self.max_value_size = DEFAULT_MAX_VALUE_SIZE
        self.multi_get_keys = 0
        self.max_multi_body = MAX_KEY_LEN + DEFAULT_MAX_VALUE_SIZE
        self.lost: Optional[str] = None
        self._on_lost: List[Callable[[BucketClientProtocol], Any]] = []
        self._ready: Any = None
        self._ready_waiters: List[Deferred] = []

    def connectionMade(self) -> None:
        if self.clock is None:
            from twisted.internet import reactor
            self.clock = reactor
        set_nodelay(self.transport)
        self.request(*_rq.hello()).addBoth(self._hello_done)

    def _hello_done(self, result: Any) -> None:
        """The server's HELLO reply (its limits) arrived, or the handshake failed."""
        if not isinstance(result, Failure):
            try:
                limits = server_limits(result)
            except ProtocolError as e:
                result = Failure(e)
            else:
                self.server_info = result
                self.max_value_size = limits.max_value_size
                self.MAX_LENGTH = max(self.MAX_LENGTH, frame_limit(limits.max_value_size))
                # GET_MULTI (docs/protocol.rst, 3.2): its key limit, and the
                # server's frame limit, which a request must keep within.
                self.multi_get_keys, self.max_multi_body = limits.multi_keys, limits.multi_body
        self._ready = result
        waiters, self._ready_waiters = self._ready_waiters, []
        for d in waiters:
            d.errback(result) if isinstance(result, Failure) else d.callback(result)

    def when_ready(self) -> Deferred:
        """Fires with the server info once the handshake is done (or errbacks)."""
        r = self._ready
        if r is None:
            d: Deferred = Deferred()
            self._ready_waiters.append(d)
            return d
        return fail(r) if isinstance(r, Failure) else succeed(r)

    def on_lost(self, callback: Callable[["BucketClientProtocol"], Any]) -> None:
        """Call ``callback(self)`` once the connection is lost."""
        self._on_lost.append(callback)

    def disconnect(self) -> None:
        """Close the connection (what is in flight errbacks NetworkError)."""
        self._io.loseConnection()

    def abort(self) -> None:
        """Drop the connection at once."""
        self._io.abortConnection()

    # -- requests -----------------------------------------------------------

    def request(self, opcode: int, key: Any, k: bytes, value: bytes = b"", cas: int = 0,
                ttl: int = 0, flags: int = 0, options: int = 0, persist_to: int = 0,
                replicate_to: int = 0, *, timeout: Optional[float] = None) -> Deferred:
        """
        Send one request; the Deferred fires with its result or error.

        :param timeout: seconds before it errbacks TimeoutError; None for the
            protocol's :attr:`timeout`; 0 (or a protocol timeout of 0 or None)
            for no timeout.
        """
        if self.lost is not None:
            return fail(NetworkError("not connected: %s" % (self.lost,), key=key))
        d = RequestDeferred(self.cancel_request)
        d.opaque = self.send(d, (opcode, key, k, value, cas, ttl, flags, options, persist_to,
                                 replicate_to), timeout)
        return d

    def send(self, target: Any, fields: _rq.Fields, timeout: Optional[float] = None) -> int:
        """
        Send the request of ``fields`` (from a :mod:`txcb.client.requests`
        function) whose outcome goes to ``target.callback(result)`` or
        ``target.errback(error)`` (a Deferred, or a slot of a multi-key call);
        returns its opaque.  The connection must be up.  ``timeout`` as for
        :meth:`request`.
        """
        opcode, key, k, value, cas, ttl, flags, options, persist_to, replicate_to = fields
        opaque = self._next_opaque
        pending = self._pending
        while opaque in pending:  # only after 2**32 requests, with one still out
            opaque = (opaque + 1) & 0xFFFFFFFF
        self._next_opaque = (opaque + 1) & 0xFFFFFFFF
        if timeout is None:
            timeout = self.timeout
        if timeout:
            deadline = self.clock.seconds() + timeout
            pending[opaque] = [target, _kind(opcode), key, options & OPT_QUIET, deadline,
                               timeout]
            if deadline < self._sweep_at:
                self._sweep_at = deadline
                if self._sweeper is not None:
                    self._sweeper.cancel()
                self._sweeper = self.clock.callLater(max(timeout - _EPSILON, 0), self._sweep)
        else:
            pending[opaque] = [target, _kind(opcode), key, options & OPT_QUIET, None, timeout]
        self.sendString(encode_request(opcode, opaque, k, value, cas, ttl, flags, options,
                                       persist_to, replicate_to))
        return opaque

    def cancel_request(self, d: Deferred) -> None:
        """The canceller of :meth:`request`'s Deferreds (RequestDeferred)."""
        self._pending.pop(cast(RequestDeferred, d).opaque, None)
        if not self._pending:
            self._stop_sweeper()
        # Deferred.cancel then errbacks d with CancelledError.

    def withdraw(self, opaque: int, target: Any) -> bool:
        """Forget request ``opaque`` if ``target`` still waits for it (a cancelled
        multi-key call); whether it did."""
        entry = self._pending.get(opaque)
        if entry is None or entry[_TARGET] is not target:
            return False
        del self._pending[opaque]
        if not self._pending:
            self._stop_sweeper()
        return True

    def hold_writes(self) -> bool:
        """
        Keep what is sent from now on to write it in one go at
        :meth:`release_writes` (given what this returned: False if writes were
        held already, by an outer caller or while replies are handled).
        """
        if self._batch is not None:
            return False
        self._batch = []
        return True

    def release_writes(self, held: bool) -> None:
        """Write what :meth:`hold_writes` kept (if it was the one that held them)."""
        if held:
            batch, self._batch = self._batch, None
            if batch and self.lost is None:
                self._flush(batch)

    def _stop_sweeper(self) -> None:
        if self._sweeper is not None:
            sweeper, self._sweeper = self._sweeper, None
            self._sweep_at = _NEVER
            if sweeper.active():
                sweeper.cancel()

    def _sweep(self) -> None:
        """Time out every request whose deadline has come; wait for the next."""
        self._sweeper = None
        self._sweep_at = _NEVER
        now = self.clock.seconds() + 2 * _EPSILON
        pending = self._pending
        due = [opaque for opaque, entry in pending.items()
               if entry[_DEADLINE] is not None and entry[_DEADLINE] <= now]
        for opaque in due:
            entry = pending.pop(opaque, None)
            if entry is not None:
                entry[_TARGET].errback(TimeoutError(
                    "no reply within %.3gs" % (entry[_TIMEOUT],), key=entry[_KEY]))
        # The errbacks may have made or cancelled requests: wait for the
        # earliest deadline still pending, if any.
        if self._pending and self.lost is None:
            self._reschedule()

    def _reschedule(self) -> None:
        self._stop_sweeper()
        deadlines = [e[_DEADLINE] for e in self._pending.values() if e[_DEADLINE] is not None]
        if deadlines:
            self._sweep_at = at = min(deadlines)
            self._sweeper = self.clock.callLater(
                max(at - self.clock.seconds() - _EPSILON, 0), self._sweep)

    # -- responses: txcb.client.replies says what each one gives ------------

    def dataReceived(self, data: bytes) -> None:
        try:
            FastNetstringReceiver.dataReceived(self, data)
        finally:
            # Nothing left to wait for: no timer either.  Checked once per read,
            # not per reply: a reply's callback usually makes the next request
            # at once, which then keeps the running timer (due no later than
            # its own deadline) instead of cancelling one and making another.
            if not self._pending and self._sweeper is not None:
                self._stop_sweeper()

    def stringReceived(self, payload: bytes) -> None:
        if len(payload) < HEADER_LEN or payload[0] != RES_MAGIC:
            self._bad_frame(payload)
            return
        _m, _o, status, opaque, cas, flags, seqno = unpack_header(payload)
        pending = self._pending
        entry = pending.get(opaque)
        if entry is None:
            return  # timed out or cancelled already: the reply has nobody to go to
        target, kind = entry[0], entry[1]
        if kind == MULTI and not status:
            self._multi_frame(opaque, target, is_last_frame(flags), payload)
            return
        del pending[opaque]
        if status:
            if kind == LOOKUP_IN or kind == MUTATE_IN:  # 0xCC may be a result
                self._subdoc_status(target, kind, entry[2], status, cas, seqno, payload)
                return
            outcome = reply_error(kind, entry[2], entry[3], status, payload[HEADER_LEN:])
            if isinstance(outcome, CouchbaseError):
                target.errback(outcome)
            else:
                target.callback(outcome)
            return
        try:
            result = reply_success(kind, entry[2], cas, flags, seqno, payload[HEADER_LEN:],
                                   self.transcoder)
        except ProtocolError as e:
            self._log.warn("txcb: {error}; closing", error=str(e))
            target.errback(e)
            self._lose(e)
            return
        target.callback(result)

    def _subdoc_status(self, target: Any, kind: int, key: Any, status: int, cas: int,
                       seqno: int, payload: bytes) -> None:
        """A LOOKUP_IN / MUTATE_IN reply of a non-zero status: a result or an error."""
        try:
            outcome = subdoc_outcome(kind, key, status, cas, seqno, payload[HEADER_LEN:])
        except ProtocolError as e:
            self._log.warn("txcb: {error}; closing", error=str(e))
            target.errback(e)
            self._lose(e)
            return
        if isinstance(outcome, CouchbaseError):
            target.errback(outcome)
        else:
            target.callback(outcome)

    def _bad_frame(self, payload: bytes) -> None:
        error = bad_response(payload)
        self._log.warn("txcb: {error}; closing", error=error.message)
        self._lose(error)

    def _multi_frame(self, opaque: int, part: "_GetMultiPart", last: bool,
                     payload: bytes) -> None:
        """One frame of a GET_MULTI reply (status 0): its entries go to ``part``."""
        try:
            if last:
                del self._pending[opaque]
            part.frame(payload, last)
        except ProtocolError as e:
            self._pending.pop(opaque, None)
            self._log.warn("txcb: {error}; closing", error=str(e))
            part.errback(e)
            self._lose(e)

    def _handleParseError(self) -> None:
        self._log.warn("txcb: malformed netstring from server; closing")
        self._lose(ProtocolError("malformed netstring from the server"))

    def _lose(self, why: CouchbaseError) -> None:
        self._fail_all(NetworkError("connection closed: %s" % (why,)))
        self._io.abortConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        self.connected = False
        self._fail_all(NetworkError("connection lost: %s" % (
            reason.getErrorMessage() if reason is not None else "closed",)))
        for callback in self._on_lost:
            callback(self)

    def _fail_all(self, error: NetworkError) -> None:
        if self.lost is None:
            self.lost = error.message
        pending, self._pending = self._pending, {}
        self._stop_sweeper()
        for entry in pending.values():
            entry[_TARGET].errback(NetworkError(error.message, key=entry[_KEY]))
