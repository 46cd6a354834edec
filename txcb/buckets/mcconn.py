"""
One memcached server of the pool: its pipelined connection, handshake,
failure accounting and reconnection.

:class:`MemcachedProtocol` is one binary-protocol connection (replies matched
to their :mod:`txcb.buckets.mcrequests` entry by opaque);
:class:`MemcachedServer` owns the connection to one server and reconnects it.
What a server needs from the pool is passed in, not reached for:
:class:`ConnectionSettings` (reactor, timeouts, limits, credentials), a
:class:`ServerEvents` listener (up, failed, the backoff delay), ``arm(deadline)``
(the deadline sweeper) and ``dirty(proto)`` (the write coalescer).
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple
from typing import Protocol as TypingProtocol

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import (
    HostnameEndpoint, TCP4ClientEndpoint, TCP6ClientEndpoint)
from twisted.internet.interfaces import IDelayedCall, ITCPTransport
from twisted.internet.protocol import Factory, Protocol
from twisted.python.failure import Failure

from txcb.buckets.ketama import ServerSpec
from txcb.buckets.mcrequests import K_PROBE, K_SASL, Request, log
from txcb.errors import AuthError, CouchbaseError, NetworkError, ProtocolError
from txcb.wire import mcbinary as mcb

__all__ = ["NEW", "FIRST", "UP", "DOWN", "CLOSED", "ConnectionSettings", "ServerEvents",
           "MemcachedProtocol", "ConnectionFactory", "MemcachedServer"]

O = mcb.Opcode

# Server states.
NEW = "new"            # never tried
FIRST = "connecting"   # first connection attempt: requests wait for it
UP = "up"
DOWN = "down"          # known dead (reconnecting in the background): fail fast
CLOSED = "closed"


class ConnectionSettings(NamedTuple):
    """How a server connects: the same for every server of a pool."""
    reactor: Any                     # IReactorTCP and IReactorTime
    connect_timeout: float           # TCP connect plus handshake, seconds
    max_body: int                    # the reply decoder's body limit
    credentials: Optional[Tuple[bytes, bytes]]  # SASL PLAIN (user, password)


class ServerEvents(TypingProtocol):
    """What a server tells the pool (its topology) and asks of it."""

    def server_up(self, server: "MemcachedServer") -> None:
        """The server connected (and passed the handshake)."""

    def server_failed(self, server: "MemcachedServer") -> None:
        """A failure was counted in ``server.failures`` (may eject it)."""

    def retry_delay(self, attempts: int) -> float:
        """Seconds to wait before reconnection attempt ``attempts + 1``."""


class MemcachedProtocol(Protocol):
    """
    One pipelined binary-protocol connection to one memcached server.

    :ivar pending: opaque -> the request (or batch) awaiting its reply.
    :ivar locks: whether the server has GET_LOCKED/UNLOCK_KEY (None until
        the handshake probe is answered).
    """

    # Connected by a TCP client endpoint (see MemcachedServer.endpoint).
    transport: Optional[ITCPTransport]

    def __init__(self, server: "MemcachedServer", max_body: int,
                 dirty: Callable[["MemcachedProtocol"], None]) -> None:
        self.server = server
        self.pending: Dict[int, Any] = {}
        self.decoder = mcb.Decoder("response", max_body=max_body)
        self.locks: Optional[bool] = None
        self.failure: Optional[CouchbaseError] = None
        self._dirty = dirty
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
            self._dirty(self)

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
            log.warn("memcached {server}: bad reply ({error}); closing the connection",
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


class ConnectionFactory(Factory):
    """Builds the one connection of a :class:`MemcachedServer`."""

    noisy = False  # the pool logs connections itself

    def __init__(self, server: "MemcachedServer") -> None:
        self.server = server

    def buildProtocol(self, addr: Any) -> MemcachedProtocol:
        server = self.server
        p = MemcachedProtocol(server, server.settings.max_body, server.dirty)
        p.factory = self
        return p


class MemcachedServer:
    """One server of the pool: its connection, state and reconnection."""

    def __init__(self, index: int, spec: ServerSpec, settings: ConnectionSettings,
                 events: ServerEvents, arm: Callable[[float], None],
                 dirty: Callable[[MemcachedProtocol], None]) -> None:
        self.index = index
        self.spec = spec
        self.settings = settings
        self.events = events
        self.arm = arm
        self.dirty = dirty
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
        #: the last opaque handed out (senders take the next one, see next_opaque).
        self.last_opaque = 0
        self._closed_waiters: List[Deferred] = []

    def endpoint(self) -> Any:
        reactor = self.settings.reactor
        host, port, t = self.spec.host, self.spec.port, self.settings.connect_timeout
        if isIPAddress(host):
            return TCP4ClientEndpoint(reactor, host, port, timeout=t)
        if isIPv6Address(host):
            return TCP6ClientEndpoint(reactor, host, port, timeout=t)
        return HostnameEndpoint(reactor, host, port, timeout=t)

    def next_opaque(self, proto: Optional[MemcachedProtocol]) -> int:
        """The next opaque not in use on ``proto``."""
        o = self.last_opaque = (self.last_opaque + 1) & 0xFFFFFFFF
        if proto is not None:
            pending = proto.pending
            while o in pending:  # only after 2**32 requests with one still out
                o = self.last_opaque = (o + 1) & 0xFFFFFFFF
        return o

    def opaque_block(self, proto: Optional[MemcachedProtocol], n: int) -> int:
        """The first of ``n`` consecutive opaques, none of them in use."""
        while True:
            base = (self.last_opaque + 1) & 0xFFFFFFFF
            self.last_opaque = (base + n - 1) & 0xFFFFFFFF
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
        d = self.attempt = self.endpoint().connect(ConnectionFactory(self))
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
        ds = []
        frames: List[bytes] = []
        credentials = self.settings.credentials
        if credentials is not None:
            ds.append(self._handshake_request(proto, O.SASL_AUTH, K_SASL, b"PLAIN",
                                              mcb.build_sasl_plain(*credentials), frames))
        # Keyless, so that a server without the opcode skips nothing: memcached
        # 1.6 answers UNKNOWN_COMMAND and then loses its place in the stream if
        # the unknown request had a body.
        ds.append(self._handshake_request(proto, O.GET_LOCKED, K_PROBE, b"", b"", frames))
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

    def _handshake_request(self, proto: MemcachedProtocol, opcode: int, kind: int,
                           k: bytes, value: bytes, frames: List[bytes]) -> Deferred:
        """A handshake request on a connection that is not in use yet."""
        op = Request(None, self, None, k, kind, False, None, False)
        op.opaque = self.next_opaque(proto)
        timeout = self.settings.connect_timeout
        op.timeout = timeout
        op.deadline = self.settings.reactor.seconds() + timeout
        self.arm(op.deadline)
        op.proto = proto
        proto.pending[op.opaque] = op
        frames.append(mcb.encode_request(opcode, k, value, b"", op.opaque))
        return op.d

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
        log.info("memcached {server} connected{again}", server=self.label,
                 again=" again" if was == DOWN else "")
        waiting, self.waiting = self.waiting, []
        for entry in waiting:
            if entry.register(proto):
                proto.send(entry.frame)
            entry.frame = b""
        self.events.server_up(self)

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
            log.warn("memcached {server} is down: {error}", server=self.label,
                     error=error.message)
        self.state = DOWN
        self.last_error = error
        self.attempts += 1
        self.failures += 1
        waiting, self.waiting = self.waiting, []
        for entry in waiting:
            entry.down(self)
        self.events.server_failed(self)
        if self.state != CLOSED and self.retry_call is None:
            self.retry_call = self.settings.reactor.callLater(
                self.events.retry_delay(self.attempts), self.connect)

    def note_failure(self) -> None:
        """A request timed out: counts toward ejection (twemproxy does the same)."""
        self.failures += 1
        self.events.server_failed(self)

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
            call = self.settings.reactor.callLater(1.0, transport.abortConnection)
            d.addBoth(_cancel_call, call)
        return d


def _cancel_call(result: Any, call: IDelayedCall) -> Any:
    """A callback (and errback) cancelling ``call`` if pending; passes ``result`` on."""
    if call.active():
        call.cancel()
    return result
