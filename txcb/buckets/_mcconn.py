"""
The per-server connection machinery behind :class:`txcb.buckets.memcached.MemcachedPool`.

Request bookkeeping (:class:`_Op` per single-key request; :class:`_Multi`
and its per-server :class:`_Batch` per ``*_multi`` call), the pipelined
binary-protocol connection (:class:`MemcachedProtocol`, replies matched by
opaque) and :class:`_Server` (one server's state, handshake, failure
accounting and reconnection).  It is separate only to keep
:mod:`txcb.buckets.memcached` under the project's module size limit: it has no API
of its own, works hand in hand with the pool's private attributes, and every
name defined here stays importable from :mod:`txcb.buckets.memcached`.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint)
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.wire import mcbinary as mcb
from txcb.buckets.ketama import ServerSpec
from txcb.errors import (
    RC, AuthError, CouchbaseError, NetworkError, NotFoundError, NotStoredError,
    NotSupportedError, ProtocolError, TemporaryFailError, TimeoutError, TooBigError,
    exception_for_rc)
from txcb.formats import FMT_JSON
from txcb.results import MultiResult, OperationResult, ValueResult

if TYPE_CHECKING:
    from txcb.buckets.memcached import MemcachedPool

# The namespace the pool's log events have always had (Logger() would infer
# this module's name).
_log = Logger(namespace="txcb.buckets.memcached")
_U32 = struct.Struct(">I")
O = mcb.Opcode

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

# Server states.
NEW = "new"            # never tried
FIRST = "connecting"   # first connection attempt: requests wait for it
UP = "up"
DOWN = "down"          # known dead (reconnecting in the background): fail fast
CLOSED = "closed"

_COUNTER_TRIES = 5


def _flags_of(extras: bytes) -> int:
    if len(extras) == 4:
        return _U32.unpack(extras)[0]
    if not extras:
        return 0
    raise ValueError("GET reply extras of %d bytes" % (len(extras),))


def _stat_value(text: str) -> Any:
    if text.isdigit():
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


# -- requests -------------------------------------------------------------------

class _Op:
    """One request (possibly a few in a row, e.g. counter INCR then ADD)."""

    __slots__ = ("pool", "server", "proto", "opaque", "frame", "key", "k", "kind", "quiet",
                 "d", "deadline", "timeout", "args", "locks")

    #: set by the pool before the request is sent or queued.
    opaque: int
    #: the encoded request while it waits for a connection (then b"").
    frame: bytes

    def __init__(self, pool: "MemcachedPool", server: "_Server", key: Any, k: bytes,
                 kind: int, quiet: bool, args: Any, locks: bool) -> None:
        self.pool = pool
        self.server = server
        self.proto: Optional[MemcachedProtocol] = None
        self.key = key
        self.k = k
        self.kind = kind
        self.quiet = quiet
        self.args = args
        self.locks = locks
        self.deadline = 0.0  # 0: none (see MemcachedPool._sweep)
        self.timeout = 0.0
        self.d: Deferred[Any] = Deferred(self._cancel)

    # -- placement --

    def register(self, proto: "MemcachedProtocol") -> bool:
        """About to be written on ``proto``: False if it must not be."""
        if self.locks and not proto.locks:
            self.fail(_no_locks(self.server, self.key))
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
            try:
                self.server.waiting.remove(self)
            except ValueError:
                pass

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
        status = p.vbucket_or_status
        kind = self.kind
        key = self.key
        result: Any = None
        error: Optional[CouchbaseError] = None
        if status == 0:
            if kind == K_VALUE:
                try:
                    flags = _flags_of(p.extras)
                except ValueError as e:
                    error = ProtocolError(str(e), key=key)
                else:
                    result = ValueResult(key, p.value, flags, p.cas, 0, self.pool.transcoder)
            elif kind == K_MUTATION or kind == K_CONCAT:
                result = OperationResult(key, p.cas)
            elif kind == K_COUNTER:
                try:
                    n = mcb.parse_counter_value(p.value)
                except ValueError as e:
                    error = ProtocolError(str(e), key=key)
                else:
                    result = ValueResult(key, b"%d" % n, FMT_JSON, p.cas, 0,
                                         self.pool.transcoder, n)
            elif kind == K_COUNTER_ADD:
                n = self.args[1]
                result = ValueResult(key, b"%d" % n, FMT_JSON, p.cas, 0,
                                     self.pool.transcoder, n)
            elif kind == K_CONCAT_CHECK:
                error = TooBigError(
                    "memcached did not store the %s: the item would outgrow its item size "
                    "limit (or the server is out of memory)" % (self.args,), key=key)
            elif kind == K_STATS:
                if p.key:
                    self.args[p.key.decode("utf-8", "replace")] = _stat_value(
                        p.value.decode("utf-8", "replace"))
                    proto.pending[self.opaque] = self  # more to come
                    return
                result = self.args
            elif kind == K_PROBE:
                result = True
            else:  # K_NONE, K_SASL
                result = None
        else:
            handled = True
            if status == RC.KEY_ENOENT and self.quiet:
                result = (ValueResult(key, rc=status) if kind == K_VALUE
                          else OperationResult(key, rc=status))
            elif status == RC.KEY_ENOENT and kind == K_COUNTER and self.args[1] is not None:
                delta, initial, ttl, tries = self.args
                self.args = (delta, initial, ttl, tries + 1)
                self.resend(proto, O.ADD, K_COUNTER_ADD, mcb.store_extras(FMT_JSON, ttl),
                            b"%d" % initial)
                return
            elif status == RC.KEY_ENOENT and kind == K_CONCAT_CHECK:
                error = NotStoredError("no such key to %s to" % (self.args,), key=key)
            elif status == RC.KEY_EEXISTS and kind == K_COUNTER_ADD:
                # Someone created the counter between our INCR and ADD.
                delta, initial, ttl, tries = self.args
                if tries < _COUNTER_TRIES:
                    self.resend(proto, O.DECREMENT if delta < 0 else O.INCREMENT,
                                K_COUNTER, mcb.counter_extras(abs(delta), 0,
                                                              mcb.COUNTER_NO_CREATE))
                    return
                error = TemporaryFailError("counter kept being created and removed", key=key)
            elif status == RC.NOT_STORED and kind == K_CONCAT:
                # memcached says NOT_STORED both for a missing key and for an
                # item that would grow too big: a GET tells which.
                self.resend(proto, O.GET, K_CONCAT_CHECK)
                return
            elif kind == K_PROBE:
                if status in (RC.UNKNOWN_COMMAND, RC.NOT_SUPPORTED):
                    result = False
                elif status == RC.AUTH_ERROR:
                    error = AuthError("memcached %s requires SASL authentication and no "
                                      "credentials were given" % (self.server.label,))
                else:
                    result = True  # EINVAL for the missing key: the opcode is known
            elif kind == K_SASL:
                if status == RC.UNKNOWN_COMMAND:
                    _log.warn("memcached {server} does not support SASL; going on without "
                              "authentication", server=self.server.label)
                else:
                    error = AuthError("memcached %s refused the credentials: %s"
                                      % (self.server.label,
                                         p.value.decode("utf-8", "replace")))
            elif status == RC.UNKNOWN_COMMAND and self.locks:
                proto.locks = False
                error = _no_locks(self.server, key)
            else:
                handled = False
            if not handled:
                error = exception_for_rc(status, p.value.decode("utf-8", "replace"), key)
        self.proto = None
        self.deadline = 0.0
        if error is not None:
            self.d.errback(error)
        else:
            self.d.callback(result)


def _no_locks(server: "_Server", key: Any) -> NotSupportedError:
    return NotSupportedError(
        "lock/unlock need Couchbase's GET_LOCKED/UNLOCK_KEY, which memcached %s does not "
        "have" % (server.label,), key=key)


class _Multi:
    """A *_multi operation: per-server batches of quiet requests, each closed by NOOP."""

    __slots__ = ("pool", "keys", "results", "errors", "nerrors", "d", "deadline", "timeout",
                 "batches", "remaining", "quiet", "get", "verb")

    def __init__(self, pool: "MemcachedPool", keys: List[Any], quiet: bool, get: bool,
                 verb: str) -> None:
        self.pool = pool
        self.keys = keys
        self.results: List[Any] = [None] * len(keys)
        self.errors: List[Optional[CouchbaseError]] = [None] * len(keys)
        self.nerrors = 0
        self.quiet = quiet
        self.get = get
        self.verb = verb
        self.batches: List[_Batch] = []
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
                extras = p.extras
                if len(extras) == 4:
                    flags = _U32.unpack(extras)[0]
                else:
                    try:
                        flags = _flags_of(extras)
                    except ValueError as e:
                        self.failed(i, ProtocolError(str(e), key=key))
                        return
                self.results[i] = ValueResult(key, p.value, flags, p.cas, 0,
                                              self.pool.transcoder)
            else:
                self.results[i] = OperationResult(key, p.cas)
        elif status == RC.KEY_ENOENT and self.quiet:
            self.results[i] = (ValueResult(key, rc=status) if self.get
                               else OperationResult(key, rc=status))
        else:
            self.failed(i, exception_for_rc(status, p.value.decode("utf-8", "replace"), key))

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


class _Batch:
    """
    One server's share of a _Multi: a request per key, then a NOOP.  The
    requests use consecutive opaques from ``base``; the batch itself is the
    pending entry of each of them and of the NOOP (``opaque``).
    """

    __slots__ = ("multi", "server", "proto", "indexes", "answered", "base", "opaque",
                 "frame", "finished", "quiet_ops")

    def __init__(self, multi: _Multi, server: "_Server", quiet_ops: bool,
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
            try:
                self.server.waiting.remove(self)
            except ValueError:
                pass

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
                                                   _U32.unpack(extras)[0], p.cas, 0,
                                                   multi.pool.transcoder)
                else:
                    multi.slot_reply(i, p)
            return
        # The NOOP: every request before it has been answered, or was quiet.
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

    def lost(self, proto: "MemcachedProtocol", message: str) -> None:
        if not self.finished:
            self.fail(NetworkError(message))


# -- connections -------------------------------------------------------------

class MemcachedProtocol(Protocol):
    """
    One pipelined binary-protocol connection to one memcached server.

    :ivar pending: opaque -> the request (or batch entry) awaiting its reply.
    :ivar locks: whether the server has GET_LOCKED/UNLOCK_KEY (None until
        the handshake probe is answered).
    """

    # Connected by a TCP client endpoint (see _Server.endpoint).
    transport: Optional[ITCPTransport]

    def __init__(self, server: "_Server", max_body: int) -> None:
        self.server = server
        self.pending: Dict[int, Any] = {}
        self.decoder = mcb.Decoder("response", max_body=max_body)
        self.locks: Optional[bool] = None
        self.failure: Optional[CouchbaseError] = None
        self._out: List[bytes] = []

    def send(self, frame: bytes) -> None:
        """
        Queue a frame: the frames of one reactor turn go out in one write
        (Twisted would send them in one syscall anyway, at its next write
        event; this saves a ``transport.write`` per request).
        """
        out = self._out
        out.append(frame)
        if len(out) == 1:
            self.server.pool._dirty(self)

    def flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            transport = self.transport
            assert transport is not None
            transport.write(b"".join(out) if len(out) > 1 else out[0])

    def dataReceived(self, data: bytes) -> None:
        bad = None
        try:
            packets = self.decoder.feed(data)
        except mcb.FrameError as e:
            packets = e.packets
            bad = e
        pending = self.pending
        for p in packets:
            entry = pending.pop(p.opaque, None)
            if entry is not None:
                entry.respond(self, p)
        server = self.server
        if server.failures:
            server.failures = 0
        if bad is not None:
            _log.warn("memcached {server}: bad reply ({error}); closing the connection",
                      server=server.label, error=str(bad))
            self.failure = ProtocolError("bad reply from memcached %s: %s"
                                         % (server.label, bad))
            transport = self.transport
            assert transport is not None  # dataReceived: connected
            transport.abortConnection()

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        why = self.failure.message if self.failure is not None else (
            reason.getErrorMessage() if reason is not None else "closed")
        message = "connection to memcached %s lost: %s" % (self.server.label, why)
        self._out = []
        # The server's state first: callbacks of the failed requests may
        # send new ones, which must see this server as down.
        self.server.connection_lost(self, message)
        pending, self.pending = self.pending, {}
        for entry in list(pending.values()):
            entry.lost(self, message)


class _ConnFactory(Factory):
    noisy = False  # the pool logs connections itself

    def __init__(self, server: "_Server") -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> MemcachedProtocol:
        p = MemcachedProtocol(self.server, self.server.pool._max_body)
        p.factory = self
        return p


class _Server:
    """One server of the pool: its connection, state and reconnection."""

    def __init__(self, pool: "MemcachedPool", index: int, spec: ServerSpec) -> None:
        self.pool = pool
        self.index = index
        self.spec = spec
        host = spec.host
        self.label = ("[%s]:%d" % (host, spec.port) if ":" in host
                      else "%s:%d" % (host, spec.port))
        self.state = NEW
        self.proto: Optional[MemcachedProtocol] = None
        self.handshaking: Optional[MemcachedProtocol] = None
        self.waiting: List[Any] = []
        self.attempt: Optional[Deferred] = None
        self.retry_call: Any = None
        self.readmit_call: Any = None
        self.attempts = 0       # consecutive failed connections (backoff)
        self.failures = 0       # consecutive failures of any kind (ejection)
        self.ejected = False
        self.ejected_at = 0.0
        self.last_error: CouchbaseError = NetworkError("not connected")
        self._opaque = 0
        self._closed_waiters: List[Deferred] = []

    def endpoint(self) -> Any:
        pool = self.pool
        host, port, t = self.spec.host, self.spec.port, pool.connect_timeout
        if isIPAddress(host):
            return TCP4ClientEndpoint(pool._reactor, host, port, timeout=t)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(pool._reactor, host, port, timeout=t)
        return HostnameEndpoint(pool._reactor, host, port, timeout=t)

    def next_opaque(self, proto: Optional[MemcachedProtocol]) -> int:
        o = self._opaque = (self._opaque + 1) & 0xFFFFFFFF
        if proto is not None:
            pending = proto.pending
            while o in pending:  # only after 2**32 requests with one still out
                o = self._opaque = (o + 1) & 0xFFFFFFFF
        return o

    def opaque_block(self, proto: Optional[MemcachedProtocol], n: int) -> int:
        """The first of ``n`` consecutive opaques, none of them in use."""
        while True:
            base = (self._opaque + 1) & 0xFFFFFFFF
            self._opaque = (base + n - 1) & 0xFFFFFFFF
            if proto is None or not proto.pending:
                return base
            pending = proto.pending
            if not any(((base + j) & 0xFFFFFFFF) in pending for j in range(n)):
                return base

    def down_error(self, key: Any) -> CouchbaseError:
        if self.state == CLOSED:
            return NetworkError("the pool is closed", key=key)
        last = self.last_error
        cls = AuthError if isinstance(last, AuthError) else NetworkError
        return cls("memcached %s is down: %s" % (self.label, last.message), key=key)

    # -- connecting --

    def connect(self) -> None:
        self.retry_call = None
        if self.state == CLOSED or self.attempt is not None or self.handshaking is not None:
            return
        if self.state == NEW:
            self.state = FIRST
        d = self.attempt = self.endpoint().connect(_ConnFactory(self))
        d.addCallbacks(self._tcp_connected, self._attempt_failed)

    def _attempt_failed(self, f: Failure) -> None:
        self.attempt = None
        if self.state != CLOSED:
            self._went_down(NetworkError("cannot connect to memcached %s: %s"
                                         % (self.label, f.getErrorMessage())))

    def _tcp_connected(self, proto: MemcachedProtocol) -> None:
        self.attempt = None
        transport = proto.transport
        assert transport is not None  # the endpoint fires with a connected protocol
        if self.state == CLOSED:
            transport.abortConnection()
            return
        self.handshaking = proto
        pool = self.pool
        ds = []
        frames: List[bytes] = []
        if pool._credentials is not None:
            user, password = pool._credentials
            ds.append(pool._internal(self, proto, O.SASL_AUTH, K_SASL, b"PLAIN",
                                     mcb.build_sasl_plain(user, password), frames))
        # Keyless, so that a server without the opcode skips nothing: memcached
        # 1.6 answers UNKNOWN_COMMAND and then loses its place in the stream if
        # the unknown request had a body.
        ds.append(pool._internal(self, proto, O.GET_LOCKED, K_PROBE, b"", b"", frames))
        transport.write(b"".join(frames))
        results: List[Any] = []

        def one(r: Any) -> None:
            results.append(r)
            if len(results) == len(ds):
                failures = [x for x in results if isinstance(x, Failure)]
                if failures:
                    self._handshake_failed(failures[0], proto)
                else:
                    self._ready(proto, results[-1])
        for d in ds:
            d.addBoth(one)

    def _handshake_failed(self, f: Failure, proto: MemcachedProtocol) -> None:
        if proto is not self.handshaking:
            return  # the connection was lost: already handled
        err = f.value
        proto.failure = err if isinstance(err, CouchbaseError) else NetworkError(str(err))
        transport = proto.transport
        assert transport is not None  # still the handshaking connection
        transport.abortConnection()

    def _ready(self, proto: MemcachedProtocol, locks: bool) -> None:
        if proto is not self.handshaking:
            return
        self.handshaking = None
        if self.state == CLOSED:
            transport = proto.transport
            assert transport is not None  # still the handshaking connection
            transport.abortConnection()
            return
        proto.locks = bool(locks)
        was = self.state
        self.proto = proto
        self.state = UP
        self.attempts = 0
        self.failures = 0
        _log.info("memcached {server} connected{again}", server=self.label,
                  again=" again" if was == DOWN else "")
        waiting, self.waiting = self.waiting, []
        for entry in waiting:
            if entry.register(proto):
                proto.send(entry.frame)
            entry.frame = b""
        self.pool._server_up(self)

    # -- failing --

    def connection_lost(self, proto: MemcachedProtocol, message: str) -> None:
        if proto is self.proto:
            self.proto = None
            if self.state != CLOSED:
                self._went_down(proto.failure if proto.failure is not None
                                else NetworkError(message))
        elif proto is self.handshaking:
            self.handshaking = None
            if self.state != CLOSED:
                self._went_down(proto.failure if proto.failure is not None
                                else NetworkError(message))
        if self.proto is None and self.handshaking is None and self.attempt is None:
            waiters, self._closed_waiters = self._closed_waiters, []
            for d in waiters:
                d.callback(None)

    def _went_down(self, error: CouchbaseError) -> None:
        if self.state != DOWN:  # once per outage, not per reconnection attempt
            _log.warn("memcached {server} is down: {error}", server=self.label,
                      error=error.message)
        self.state = DOWN
        self.last_error = error
        self.attempts += 1
        self.failures += 1
        waiting, self.waiting = self.waiting, []
        for entry in waiting:
            entry.frame = b""
            if isinstance(entry, _Op):
                entry.fail(self.down_error(entry.key))
            else:
                entry.fail(self.down_error(None))
        pool = self.pool
        pool._server_failed(self)
        if self.state != CLOSED and self.retry_call is None:
            self.retry_call = pool._reactor.callLater(pool._retry_delay(self.attempts),
                                                      self.connect)

    def note_failure(self) -> None:
        """A request timed out: counts toward ejection (twemproxy does the same)."""
        self.failures += 1
        self.pool._server_failed(self)

    # -- closing --

    def close(self) -> Deferred:
        self.state = CLOSED
        for name in ("retry_call", "readmit_call"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        waiting, self.waiting = self.waiting, []
        for entry in waiting:
            entry.fail(NetworkError("the pool is closed"))
        if self.attempt is not None:
            attempt, self.attempt = self.attempt, None
            attempt.cancel()
        protos = [p for p in (self.proto, self.handshaking) if p is not None]
        if not protos:
            return succeed(None)
        d: Deferred = Deferred()
        self._closed_waiters.append(d)
        for p in protos:
            p.flush()
            p.failure = NetworkError("the pool is closed")
            transport = p.transport
            assert transport is not None  # self.proto/handshaking: connected
            transport.loseConnection()
            # A server that stops reading would keep loseConnection waiting.
            call = self.pool._reactor.callLater(1.0, transport.abortConnection)
            d.addBoth(_cancel_call, call)
        return d


def _cancel_call(result: Any, call: IDelayedCall) -> Any:
    """A callback (and errback) cancelling ``call`` if pending; passes ``result`` on."""
    if call.active():
        call.cancel()
    return result
