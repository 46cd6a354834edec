"""
Request bookkeeping for the memcached pool: what a reply turns into.

A :class:`Request` is one single-key operation (possibly a few requests in
a row on one connection: a counter's INCR then ADD, an append's GET telling
"missing" from "too big"); a :class:`MultiRequest` is one ``*_multi`` call,
split into one :class:`Batch` per server.  Each is the entry a connection
keeps per opaque (``pending``) and calls ``respond`` / ``lost`` on; the pool's
deadline sweeper calls ``expire``.  Frames are built and parsed by
:mod:`txcb.wire.mcbinary`; nothing here does I/O.

The collaborators are duck-typed (see :mod:`txcb.buckets.mcconn`): a
*server* has ``label``, ``waiting``, ``next_opaque(proto)`` and
``note_failure()``; a *connection* has ``pending``, ``locks`` and
``send(frame)``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred
from twisted.logger import Logger

from txcb.errors import (
    RC, AuthError, CouchbaseError, NetworkError, NotFoundError, NotStoredError,
    NotSupportedError, ProtocolError, TemporaryFailError, TimeoutError, TooBigError,
    exception_for_rc)
from txcb.formats import FMT_JSON, Transcoder
from txcb.results import MultiResult, OperationResult, ValueResult
from txcb.wire import mcbinary as mcb

if TYPE_CHECKING:
    from txcb.buckets.mcconn import MemcachedProtocol, MemcachedServer

__all__ = [
    "K_VALUE", "K_MUTATION", "K_COUNTER", "K_COUNTER_ADD", "K_CONCAT", "K_CONCAT_CHECK",
    "K_NONE", "K_STATS", "K_SASL", "K_PROBE", "COUNTER_TRIES", "Request", "MultiRequest",
    "Batch", "no_locks_error", "stat_value", "log"]

#: The namespace the pool's log events have always had.
log = Logger(namespace="txcb.buckets.memcached")
O = mcb.Opcode
_ITEM_FLAGS = mcb.ITEM_FLAGS.unpack

# What a reply turns into (per request kind).
K_VALUE = 1          # get, gat, get_locked -> ValueResult
K_MUTATION = 2       # set/add/replace/delete/touch/unlock -> OperationResult
K_COUNTER = 3        # incr/decr (never creating) -> ValueResult(int)
K_COUNTER_ADD = 4    # the ADD creating a counter with its initial value
K_CONCAT = 5         # append/prepend
K_CONCAT_CHECK = 6   # the GET telling NOT_STORED's "missing" from "too big"
K_NONE = 7           # flush, noop -> None
K_STATS = 8          # stat (several replies) -> dict
K_SASL = 9           # handshake: SASL PLAIN
K_PROBE = 10         # handshake: keyless GET_LOCKED (are locks supported?)

#: INCR, ADD, INCR...: how often a counter may be created under our feet.
COUNTER_TRIES = 5


def stat_value(text: str) -> Any:
    """A STAT value as int or float where it reads as one, else the text."""
    if text.isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def no_locks_error(server: "MemcachedServer", key: Any) -> NotSupportedError:
    """What lock/unlock errback with on a server without GET_LOCKED/UNLOCK_KEY."""
    return NotSupportedError(
        "lock/unlock need Couchbase's GET_LOCKED/UNLOCK_KEY, which memcached %s does not "
        "have" % (server.label,), key=key)


def _error_text(p: mcb.Packet) -> str:
    return p.value.decode("utf-8", "replace")


class Request:
    """One request (possibly a few in a row, e.g. counter INCR then ADD)."""

    __slots__ = ("transcoder", "server", "proto", "opaque", "frame", "key", "k", "kind",
                 "quiet", "d", "deadline", "timeout", "args", "locks")

    #: set by the sender before the request is sent or queued.
    opaque: int
    #: the encoded request while it waits for a connection (then b"").
    frame: bytes

    def __init__(self, transcoder: Optional[Transcoder], server: "MemcachedServer",
                 key: Any, k: bytes, kind: int, quiet: bool, args: Any,
                 locks: bool) -> None:
        self.transcoder = transcoder
        self.server = server
        self.proto: Optional[MemcachedProtocol] = None
        self.key = key
        self.k = k
        self.kind = kind
        self.quiet = quiet
        self.args = args
        self.locks = locks
        self.deadline = 0.0  # 0: none (see DeadlineSweeper)
        self.timeout = 0.0
        self.d: Deferred[Any] = Deferred(self._cancel)

    # -- placement --

    def register(self, proto: "MemcachedProtocol") -> bool:
        """About to be written on ``proto``: False if it must not be."""
        if self.locks and not proto.locks:
            self.fail(no_locks_error(self.server, self.key))
            return False
        self.proto = proto
        proto.pending[self.opaque] = self
        return True

    def withdraw(self) -> None:
        proto = self.proto
        if proto is not None:
            proto.pending.pop(self.opaque, None)
            self.proto = None
        else:
            _leave_queue(self)

    def _cancel(self, _d: Deferred) -> None:
        self.deadline = 0.0
        self.withdraw()

    def expire(self) -> None:
        """The deadline passed without a reply."""
        self.deadline = 0.0
        self.withdraw()
        server = self.server
        if not self.d.called:
            self.d.errback(TimeoutError("no reply from memcached %s within %.3gs"
                                        % (server.label, self.timeout), key=self.key))
        if self.kind < K_SASL:  # a handshake's own failure is counted once, as such
            server.note_failure()

    def fail(self, error: CouchbaseError) -> None:
        self.deadline = 0.0
        self.proto = None
        if not self.d.called:
            self.d.errback(error)

    def down(self, server: "MemcachedServer") -> None:
        """The server went down before this request could be sent."""
        self.frame = b""
        self.fail(server.down_error(self.key))

    def lost(self, proto: "MemcachedProtocol", message: str) -> None:
        self.fail(NetworkError(message, key=self.key))

    def resend(self, proto: "MemcachedProtocol", opcode: int, kind: int, extras: bytes = b"",
               value: bytes = b"") -> None:
        """Send the next step of this operation on the same connection."""
        self.kind = kind
        self.opaque = self.server.next_opaque(proto)
        proto.pending[self.opaque] = self
        proto.send(mcb.encode_request(opcode, self.k, value, extras, self.opaque))

    # -- the reply --

    def respond(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        """A reply: success by kind, else the status's meaning for this kind."""
        if p.vbucket_or_status == 0:
            _ON_SUCCESS[self.kind](self, proto, p)
        else:
            self._on_status(proto, p, p.vbucket_or_status)

    def _done(self, result: Any) -> None:
        self.proto = None
        self.deadline = 0.0
        self.d.callback(result)

    def _error(self, error: CouchbaseError) -> None:
        self.proto = None
        self.deadline = 0.0
        self.d.errback(error)

    def _value(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        extras = p.extras
        if len(extras) == 4:  # mcb.parse_item_flags, inlined for the common case
            flags = _ITEM_FLAGS(extras)[0]
        else:
            try:
                flags = mcb.parse_item_flags(extras)
            except ValueError as e:
                self._error(ProtocolError(str(e), key=self.key))
                return
        self.proto = None
        self.deadline = 0.0
        self.d.callback(ValueResult(self.key, p.value, flags, p.cas, 0, self.transcoder))

    def _mutated(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        self.proto = None
        self.deadline = 0.0
        self.d.callback(OperationResult(self.key, p.cas))

    def _counted(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        try:
            n = mcb.parse_counter_value(p.value)
        except ValueError as e:
            self._error(ProtocolError(str(e), key=self.key))
        else:
            self._done(ValueResult(self.key, b"%d" % n, FMT_JSON, p.cas, 0,
                                   self.transcoder, n))

    def _counter_created(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        n = self.args[1]
        self._done(ValueResult(self.key, b"%d" % n, FMT_JSON, p.cas, 0, self.transcoder, n))

    def _concat_checked(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        # The item is there, so NOT_STORED meant it would have grown too big.
        self._error(TooBigError(
            "memcached did not store the %s: the item would outgrow its item size "
            "limit (or the server is out of memory)" % (self.args,), key=self.key))

    def _stat(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        if p.key:
            self.args[p.key.decode("utf-8", "replace")] = stat_value(
                p.value.decode("utf-8", "replace"))
            proto.pending[self.opaque] = self  # more to come
        else:
            self._done(self.args)

    def _probed(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        self._done(True)

    def _none(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        self._done(None)

    def _on_status(self, proto: "MemcachedProtocol", p: mcb.Packet, status: int) -> None:
        """A non-zero status: a miss, a next step, or the error it means."""
        kind = self.kind
        if status == RC.KEY_ENOENT and self.quiet:
            self._done(ValueResult(self.key, rc=status) if kind == K_VALUE
                       else OperationResult(self.key, rc=status))
            return
        handler = _ON_STATUS.get(kind)
        if handler is not None and handler(self, proto, p, status):
            return
        if status == RC.UNKNOWN_COMMAND and self.locks:
            proto.locks = False
            self._error(no_locks_error(self.server, self.key))
        else:
            self._error(exception_for_rc(status, _error_text(p), self.key))

    # Per-kind status handlers: True when they dealt with the reply.

    def _counter_missing(self, proto: "MemcachedProtocol", p: mcb.Packet,
                         status: int) -> bool:
        if status != RC.KEY_ENOENT or self.args[1] is None:
            return False
        delta, initial, ttl, tries = self.args
        self.args = (delta, initial, ttl, tries + 1)
        self.resend(proto, O.ADD, K_COUNTER_ADD, mcb.store_extras(FMT_JSON, ttl),
                    b"%d" % initial)
        return True

    def _counter_raced(self, proto: "MemcachedProtocol", p: mcb.Packet,
                       status: int) -> bool:
        if status != RC.KEY_EEXISTS:
            return False
        # Someone created the counter between our INCR and ADD.
        delta, initial, ttl, tries = self.args
        if tries < COUNTER_TRIES:
            self.resend(proto, O.DECREMENT if delta < 0 else O.INCREMENT, K_COUNTER,
                        mcb.counter_extras(abs(delta), 0, mcb.COUNTER_NO_CREATE))
        else:
            self._error(TemporaryFailError("counter kept being created and removed",
                                           key=self.key))
        return True

    def _concat_refused(self, proto: "MemcachedProtocol", p: mcb.Packet,
                        status: int) -> bool:
        if status != RC.NOT_STORED:
            return False
        # memcached says NOT_STORED both for a missing key and for an item
        # that would grow too big: a GET tells which.
        self.resend(proto, O.GET, K_CONCAT_CHECK)
        return True

    def _concat_missing(self, proto: "MemcachedProtocol", p: mcb.Packet,
                        status: int) -> bool:
        if status != RC.KEY_ENOENT:
            return False
        self._error(NotStoredError("no such key to %s to" % (self.args,), key=self.key))
        return True

    def _probe_refused(self, proto: "MemcachedProtocol", p: mcb.Packet,
                       status: int) -> bool:
        if status in (RC.UNKNOWN_COMMAND, RC.NOT_SUPPORTED):
            self._done(False)
        elif status == RC.AUTH_ERROR:
            self._error(AuthError("memcached %s requires SASL authentication and no "
                                  "credentials were given" % (self.server.label,)))
        else:
            self._done(True)  # EINVAL for the missing key: the opcode is known
        return True

    def _sasl_refused(self, proto: "MemcachedProtocol", p: mcb.Packet,
                      status: int) -> bool:
        if status == RC.UNKNOWN_COMMAND:
            log.warn("memcached {server} does not support SASL; going on without "
                     "authentication", server=self.server.label)
            self._done(None)
        else:
            self._error(AuthError("memcached %s refused the credentials: %s"
                                  % (self.server.label, _error_text(p))))
        return True


_OnSuccess = Callable[[Request, "MemcachedProtocol", mcb.Packet], None]
_OnStatus = Callable[[Request, "MemcachedProtocol", mcb.Packet, int], bool]

_ON_SUCCESS: Dict[int, _OnSuccess] = {
    K_VALUE: Request._value, K_MUTATION: Request._mutated, K_CONCAT: Request._mutated,
    K_COUNTER: Request._counted, K_COUNTER_ADD: Request._counter_created,
    K_CONCAT_CHECK: Request._concat_checked, K_STATS: Request._stat,
    K_PROBE: Request._probed, K_NONE: Request._none, K_SASL: Request._none,
}
_ON_STATUS: Dict[int, _OnStatus] = {
    K_COUNTER: Request._counter_missing, K_COUNTER_ADD: Request._counter_raced,
    K_CONCAT: Request._concat_refused, K_CONCAT_CHECK: Request._concat_missing,
    K_PROBE: Request._probe_refused, K_SASL: Request._sasl_refused,
}


class MultiRequest:
    """A *_multi operation: per-server batches of quiet requests, each closed by NOOP."""

    __slots__ = ("transcoder", "keys", "results", "errors", "nerrors", "d", "deadline",
                 "timeout", "batches", "remaining", "quiet", "get", "verb")

    def __init__(self, transcoder: Transcoder, keys: List[Any], quiet: bool, get: bool,
                 verb: str) -> None:
        self.transcoder = transcoder
        self.keys = keys
        self.results: List[Any] = [None] * len(keys)
        self.errors: List[Optional[CouchbaseError]] = [None] * len(keys)
        self.nerrors = 0
        self.quiet = quiet
        self.get = get
        self.verb = verb
        self.batches: List[Batch] = []
        self.remaining = 0
        self.deadline = 0.0
        self.timeout = 0.0
        self.d: Deferred = Deferred(self._cancel)

    def failed(self, i: int, error: CouchbaseError) -> None:
        key = self.keys[i]
        if self.get:
            r: Any = ValueResult(key, rc=error.rc)
        else:
            r = OperationResult(key, rc=error.rc)
        if error.key is None:
            error.key = key
        error.result = r
        self.results[i] = r
        if self.errors[i] is None:
            self.nerrors += 1
        self.errors[i] = error

    def slot_reply(self, i: int, p: mcb.Packet) -> None:
        key = self.keys[i]
        status = p.vbucket_or_status
        if status == 0:
            if self.get:
                try:
                    flags = mcb.parse_item_flags(p.extras)
                except ValueError as e:
                    self.failed(i, ProtocolError(str(e), key=key))
                    return
                self.results[i] = ValueResult(key, p.value, flags, p.cas, 0,
                                              self.transcoder)
            else:
                self.results[i] = OperationResult(key, p.cas)
        elif status == RC.KEY_ENOENT and self.quiet:
            self.results[i] = (ValueResult(key, rc=status) if self.get
                               else OperationResult(key, rc=status))
        else:
            self.failed(i, exception_for_rc(status, _error_text(p), key))

    def unanswered(self, i: int, quiet_ops: bool) -> None:
        """The NOOP came and this request had no reply: its quiet answer."""
        key = self.keys[i]
        if self.get:
            if self.quiet:
                self.results[i] = ValueResult(key, rc=RC.KEY_ENOENT)
            else:
                self.failed(i, NotFoundError("no such key", key=key))
        elif quiet_ops:
            self.results[i] = OperationResult(key, 0)
        else:
            self.failed(i, ProtocolError("memcached sent no reply", key=key))

    def batch_done(self) -> None:
        self.remaining -= 1
        if self.remaining == 0:
            self.finish()

    def finish(self) -> None:
        self.deadline = 0.0
        out = MultiResult(zip(self.keys, self.results))
        if self.nerrors:
            first = next(e for e in self.errors if e is not None)
            first.all_results = out
            self.d.errback(first)
        else:
            self.d.callback(out)

    def expire(self) -> None:
        if self.d.called:
            return
        timeout = self.timeout
        for batch in self.batches:
            if not batch.finished:
                batch.withdraw()
                batch.finished = True
                for i in batch.open_indexes():
                    self.failed(i, TimeoutError("no reply from memcached %s within %.3gs"
                                                % (batch.server.label, timeout)))
                batch.server.note_failure()
        self.finish()

    def _cancel(self, _d: Deferred) -> None:
        self.deadline = 0.0
        for batch in self.batches:
            if not batch.finished:
                batch.finished = True
                batch.withdraw()


class Batch:
    """
    One server's share of a MultiRequest: a request per key, then a NOOP.
    The requests use consecutive opaques from ``base``; the batch itself is
    the pending entry of each of them and of the NOOP (``opaque``).
    """

    __slots__ = ("multi", "server", "proto", "indexes", "answered", "base", "opaque",
                 "frame", "finished", "quiet_ops")

    def __init__(self, multi: MultiRequest, server: "MemcachedServer", quiet_ops: bool,
                 indexes: List[int], base: int) -> None:
        self.multi = multi
        self.server = server
        self.proto: Optional[MemcachedProtocol] = None
        self.indexes = indexes            # position in the batch -> index in the multi
        self.answered = [False] * len(indexes)
        self.base = base
        self.opaque = (base + len(indexes)) & 0xFFFFFFFF  # the NOOP's
        self.finished = False
        self.quiet_ops = quiet_ops
        self.frame = b""

    def open_indexes(self) -> List[int]:
        answered = self.answered
        return [i for j, i in enumerate(self.indexes) if not answered[j]]

    @property
    def deadline(self) -> float:
        return 0.0 if self.finished else self.multi.deadline

    def expire(self) -> None:
        self.multi.expire()

    def register(self, proto: "MemcachedProtocol") -> bool:
        self.proto = proto
        pending = proto.pending
        base = self.base
        for j in range(len(self.indexes) + 1):
            pending[(base + j) & 0xFFFFFFFF] = self
        return True

    def withdraw(self) -> None:
        proto = self.proto
        if proto is not None:
            pending = proto.pending
            base = self.base
            for j in range(len(self.indexes) + 1):
                o = (base + j) & 0xFFFFFFFF
                if pending.get(o) is self:
                    del pending[o]
            self.proto = None
        else:
            _leave_queue(self)

    def respond(self, proto: "MemcachedProtocol", p: mcb.Packet) -> None:
        opaque = p.opaque
        if opaque != self.opaque:
            j = (opaque - self.base) & 0xFFFFFFFF
            answered = self.answered
            if not answered[j]:
                answered[j] = True
                multi = self.multi
                i = self.indexes[j]
                extras = p.extras
                if multi.get and p.vbucket_or_status == 0 and len(extras) == 4:
                    multi.results[i] = ValueResult(multi.keys[i], p.value,
                                                   _ITEM_FLAGS(extras)[0], p.cas, 0,
                                                   multi.transcoder)
                else:
                    multi.slot_reply(i, p)
            return
        self._noop(proto)

    def _noop(self, proto: "MemcachedProtocol") -> None:
        """The NOOP: every request before it has been answered, or was quiet."""
        self.proto = None
        self.finished = True
        multi = self.multi
        pending = proto.pending
        base = self.base
        quiet_ops = self.quiet_ops
        answered = self.answered
        for j, i in enumerate(self.indexes):
            if not answered[j]:
                pending.pop((base + j) & 0xFFFFFFFF, None)
                multi.unanswered(i, quiet_ops)
        multi.batch_done()

    def fail(self, error: CouchbaseError) -> None:
        self.proto = None
        if self.finished:
            return
        self.finished = True
        multi = self.multi
        for i in self.open_indexes():
            multi.failed(i, type(error)(error.message, rc=error.rc))
        multi.batch_done()

    def down(self, server: "MemcachedServer") -> None:
        """The server went down before this batch could be sent."""
        self.frame = b""
        self.fail(server.down_error(None))

    def lost(self, proto: "MemcachedProtocol", message: str) -> None:
        if not self.finished:
            self.fail(NetworkError(message))


def _leave_queue(request: Any) -> None:
    """Take a request not yet written off its server's wait queue (if it is on it)."""
    try:
        request.server.waiting.remove(request)
    except ValueError:
        pass
