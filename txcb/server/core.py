"""
The protocol-neutral part of txcb's servers: what every endpoint serving a
bucket shares, whatever its wire protocol.

- :class:`ServerStats` and :func:`admit`: connection counters and the
  connection limit shared by every endpoint serving one bucket;
- :class:`RequestFlow`: a server protocol's flow control, the in-flight cap
  that stops reading while too many bucket calls are pending, and output
  backpressure (an ``IPushProducer`` holding the requests read while the
  client is not reading its replies);
- :class:`LateReplies`: replies made outside a read, written together at the
  end of the reactor turn;
- :class:`IRequestObserver`: told of every request answered (metrics);
- :class:`IdleSweeper`: ``--idle-timeout``, closing connections that send
  nothing, with one timer for all of an endpoint's connections;
- :class:`ServingFactory`: the factory settings every KV endpoint takes
  (stats, credentials, in-flight cap, clock) and its admission.
"""

from __future__ import annotations

from time import monotonic
from typing import TYPE_CHECKING, Any, Callable, Dict, List, Mapping, Optional

from twisted.internet.protocol import Factory, Protocol
from zope.interface import Interface

__all__ = ["ServerStats", "IRequestObserver", "admit", "RequestFlow", "LateReplies",
           "RateLimit", "RefusalLog", "IdleSweeper", "idle_sweeper", "ServingFactory"]


class IRequestObserver(Interface):
    """
    Told of every request an endpoint served, whatever its protocol: how
    metrics (``--metrics``) count the netstring, memcached and any later
    endpoint alike.  A factory's ``observer`` is None unless one is
    installed, and then the endpoints do no per-request work for it.
    """

    def request_done(op, status, started):
        """
        One request was answered.  ``op``: the IBucket operation it was
        ("get", "upsert", "get_multi", "stats", ...); ``status``: 0, or the
        rc of the error it was answered with; ``started``:
        ``time.perf_counter()`` when its bytes were read.
        """


class ServerStats:
    """
    Connection counters shared by every endpoint serving one bucket, and
    their common connection limit (``max_connections``, None: no limit) and
    idle timeout (``idle_timeout`` seconds, None: none; see :func:`idle_sweeper`).
    ``clock``: the IReactorTime both are measured on (the idle timeout needs one).
    """

    def __init__(self, max_connections: Optional[int] = None, clock: Any = None,
                 idle_timeout: Optional[float] = None) -> None:
        self.clock = clock
        self.idle_timeout = idle_timeout
        self.connections = 0
        self.total_connections = 0
        self.rejected_connections = 0
        self.max_connections = max_connections
        self.refusals = RefusalLog(clock.seconds if clock is not None else monotonic)

    def admit(self) -> bool:
        """Whether one more connection may open now (a refusal is counted)."""
        if self.max_connections is not None and self.connections >= self.max_connections:
            self.rejected_connections += 1
            return False
        return True

    def opened(self) -> None:
        """A connection was made."""
        self.connections += 1
        self.total_connections += 1

    def closed(self) -> None:
        """A connection was lost."""
        self.connections -= 1

    def as_dict(self) -> Dict[str, int]:
        return {"connections": self.connections,
                "total_connections": self.total_connections,
                "rejected_connections": self.rejected_connections}


def admit(stats: ServerStats, addr: Any, log: Any, what: str = "txcb") -> bool:
    """
    Whether a connection from ``addr`` may open under the shared connection
    limit; a refusal is counted and logged (the factory then refuses it in
    its protocol's way: Twisted hangs up on None, memcached says why first).
    """
    if stats.admit():
        return True
    stats.refusals.refused(log, what, addr, stats.connections)
    return False


class RateLimit:
    """
    At most one log line per ``interval`` seconds: :meth:`allow` says whether
    a line may be written now, and how many were held back since the last one.
    The first is allowed at once.
    """

    __slots__ = ("_seconds", "interval", "_next", "_unlogged")

    def __init__(self, seconds: Callable[[], float], interval: float = 10.0) -> None:
        self._seconds = seconds
        self.interval = interval
        self._next = -1.0   # when the next line may be written
        self._unlogged = 0

    def allow(self) -> Optional[int]:
        """None: no line now (counted); else the count of lines held back before it."""
        now = self._seconds()
        if now < self._next:
            self._unlogged += 1
            return None
        self._next = now + self.interval
        unlogged, self._unlogged = self._unlogged, 0
        return unlogged


class RefusalLog:
    """
    Refused connections, logged at most once per ``interval`` seconds: a
    client hammering a full server costs a line per interval, not per refusal.
    The first refusal is logged at once; the next line says how many were
    refused meanwhile without a line of their own.
    """

    def __init__(self, seconds: Callable[[], float], interval: float = 10.0) -> None:
        self._limit = RateLimit(seconds, interval)

    @property
    def interval(self) -> float:
        return self._limit.interval

    def refused(self, log: Any, what: str, addr: Any, open_now: int) -> None:
        unlogged = self._limit.allow()
        if unlogged is None:
            return
        if unlogged:
            log.warn("{what}: refusing {addr}: {n} connections open already ({unlogged} more"
                     " refused since the last such line)", what=what, addr=str(addr),
                     n=open_now, unlogged=unlogged)
        else:
            log.warn("{what}: refusing {addr}: {n} connections open already", what=what,
                     addr=str(addr), n=open_now)


class RequestFlow:
    """
    Flow control for a server protocol (a mixin): how many bucket calls a
    connection may have pending, and what happens when its client stops
    reading.

    The protocol calls :meth:`flow_started` when its connection is made,
    :meth:`request_started` when a request takes a slot (a bucket call whose
    answer comes later) and :meth:`request_finished` when that answer is
    sent.  At ``max_inflight`` slots it stops reading; it reads again when
    half are free.

    Registered with its transport as a streaming producer, it is paused while
    the transport's write buffer is full: reading stops, and what was read
    already waits in ``_held`` (the protocol puts a request there instead of
    handling it while ``_out_paused`` or ``_held`` is set) until the buffer
    drains, when :meth:`resumeProducing` hands each to :meth:`handle_held`.
    A client that sends but never reads then costs one read of requests and
    the transport's buffer, not unbounded replies.

    ``brokenPeer`` set (Twisted's receivers' flag): reading never resumes.
    """

    _io: Any
    connected: int
    brokenPeer: int
    _max_inflight: int
    _inflight: int
    _paused: bool       # reading stopped: too many requests in flight
    _out_paused: bool   # the transport's write buffer is full
    _held: List[Any]    # requests read while the client's replies are backed up

    def flow_started(self, max_inflight: int) -> None:
        """Start flow control on a new connection (registers the producer)."""
        self._max_inflight = max_inflight
        self._inflight = 0
        self._paused = False
        self._out_paused = False
        self._held = []
        self._io.registerProducer(self, True)

    def handle_held(self, request: Any) -> None:
        """Handle a request held while the client was not reading."""
        raise NotImplementedError

    def request_started(self) -> None:
        """A request took an in-flight slot."""
        self._inflight += 1
        if self._inflight >= self._max_inflight and not self._paused:
            self._paused = True
            self._io.pauseProducing()

    def request_finished(self) -> None:
        """A request's slot is free again (its answer is being sent)."""
        self._inflight -= 1
        if self._paused and self._inflight <= self._max_inflight // 2:
            self._paused = False
            if self.connected and not self.brokenPeer and not self._out_paused:
                self._io.resumeProducing()

    # -- IPushProducer: the transport pauses us while its write buffer is full.

    def pauseProducing(self) -> None:
        self._out_paused = True
        if not self._paused and self.connected and not self.brokenPeer:
            self._io.pauseProducing()  # stop reading

    def resumeProducing(self) -> None:
        self._out_paused = False
        held, self._held = self._held, []
        for i, request in enumerate(held):
            if self._out_paused or not self.connected:
                self._held[:0] = held[i:]
                return
            self.handle_held(request)
        if not (self._out_paused or self._paused) and self.connected \
                and not self.brokenPeer:
            self._io.resumeProducing()

    def stopProducing(self) -> None:
        self._held = []


class LateReplies:
    """
    Replies ready outside a read (a Deferred fired later: a durable write's
    batch committing, a remote backend answering), gathered and written in
    one ``write(list_of_bytes)`` at the end of the reactor turn rather than
    one send each, or as soon as ``every`` are waiting.
    """

    __slots__ = ("clock", "write", "every", "pending", "_call")

    def __init__(self, clock: Any, write: Callable[[List[bytes]], None], every: int) -> None:
        self.clock = clock
        self.write = write
        self.every = every
        self.pending: List[bytes] = []
        self._call: Any = None  # the end-of-turn flush, while one is scheduled

    def add(self, data: bytes) -> None:
        """Queue one reply's bytes."""
        pending = self.pending
        pending.append(data)
        if len(pending) == 1:
            self._call = self.clock.callLater(0, self.flush)
        elif len(pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write what is queued (a later call, with nothing queued, does nothing)."""
        pending, self.pending = self.pending, []
        self._call = None
        if pending:
            self.write(pending)

    def drop(self) -> None:
        """
        Forget what is queued and the scheduled flush (the connection is gone):
        the clock no longer holds the protocol, through ``write``.
        """
        self.pending = []
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()


# -- --idle-timeout --------------------------------------------------------------

def idle_sweeper(stats: ServerStats, log: Any, what: str,
                 clock: Any = None) -> Optional["IdleSweeper"]:
    """
    The :class:`IdleSweeper` of an endpoint's factory serving under ``stats``
    (on ``stats.clock``, else ``clock``, else the global reactor), or None
    when ``stats.idle_timeout`` is not set (the default: nothing is ever
    closed for being idle).
    """
    if not stats.idle_timeout:
        return None
    clock = stats.clock if stats.clock is not None else clock
    if clock is None:
        from twisted.internet import reactor as clock
    return IdleSweeper(clock, stats.idle_timeout, log, what)


class IdleSweeper:
    """
    Closes an endpoint's connections that sent nothing for ``timeout``
    seconds, like memcached's ``idle_timeout``.

    Reads cost a connection one attribute store, ``conn.idle_seen = True``,
    no clock read and no timer: one timer per sweeper runs while it has
    connections, every ``timeout / 4`` (5 s at most), and a sweep notes
    ``now`` for each connection seen since the last one.  A connection is
    closed at the first sweep at least ``timeout`` after the last sweep that
    saw it active: it sent nothing for ``timeout`` at least, and for less
    than ``timeout`` plus two sweep intervals.

    What a connection provides (any endpoint's protocol):

    - ``idle_seen``: set True by each read (a class attribute False to start);
    - ``idle_busy()``: whether requests are still being answered (then it is
      active, however long the bucket takes);
    - ``idle_close()``: close it (the line logged first is rate-limited by
      :class:`RateLimit`, with the count of the closings it did not log);
    - ``idle_peer()``: its peer, for that line.

    A connection is added (:meth:`add`) when made and discarded
    (:meth:`discard`) when lost: the sweeper holds no lost connection.
    """

    def __init__(self, clock: Any, timeout: float, log: Any, what: str) -> None:
        self.clock = clock
        self.timeout = timeout
        self.interval = min(max(timeout / 4.0, 0.05), 5.0)
        self._log = log
        self._what = what
        self._limit = RateLimit(clock.seconds)
        self._seen: Dict[Any, float] = {}  # connection -> when last seen active
        self._timer: Any = None
        self.closed = 0  # connections closed for being idle

    def add(self, conn: Any) -> None:
        """A connection was made: it starts active."""
        conn.idle_seen = False
        self._seen[conn] = self.clock.seconds()
        if self._timer is None:
            self._timer = self.clock.callLater(self.interval, self._sweep)

    def discard(self, conn: Any) -> None:
        """A connection was lost (the timer stops with the last one)."""
        self._seen.pop(conn, None)
        if not self._seen and self._timer is not None:
            if self._timer.active():
                self._timer.cancel()
            self._timer = None

    def _sweep(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        seen = self._seen
        idle = []
        for conn, last in seen.items():
            if conn.idle_seen or conn.idle_busy():
                conn.idle_seen = False
                seen[conn] = now
            elif now - last >= self.timeout:
                idle.append(conn)
        for conn in idle:
            self._close(conn, now - seen[conn])
        if seen and self._timer is None:
            self._timer = self.clock.callLater(self.interval, self._sweep)

    def _close(self, conn: Any, quiet: float) -> None:
        self.closed += 1
        self._seen.pop(conn, None)  # closing: not swept again
        unlogged = self._limit.allow()
        if unlogged is not None:
            more = (" (%d more closed since the last such line)" % (unlogged,)
                    if unlogged else "")
            self._log.info("{what}: closing {peer}: idle for {quiet:.0f}s (--idle-timeout "
                           "{timeout:g}){more}", what=self._what, peer=conn.idle_peer(),
                           quiet=quiet, timeout=self.timeout, more=more)
        conn.idle_close()


# -- the factories ---------------------------------------------------------------

if TYPE_CHECKING:
    _ProtocolFactory = Factory[Protocol]
else:  # Factory is subscriptable only in recent Twisted releases
    _ProtocolFactory = Factory


class ServingFactory(_ProtocolFactory):
    """
    What every factory of a KV endpoint starts with: its ``stats``, the
    ``credentials`` (a copy; None accepts any), ``max_inflight`` bucket
    calls per connection, the ``clock``, the :func:`idle_sweeper`, and
    :func:`admit` in :meth:`buildProtocol` (a refused connection gets
    :meth:`refused`).  ``what`` names the endpoint in its log lines.
    """

    def __init__(self, stats: Optional[ServerStats], credentials: Optional[Mapping[bytes, bytes]],
                 max_inflight: int, clock: Any, log: Any, what: str) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be positive")
        self.stats = stats if stats is not None else ServerStats()
        self.credentials = dict(credentials) if credentials is not None else None
        self.max_inflight = max_inflight
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self._log = log
        self._what = what
        #: Closes idle connections (``stats.idle_timeout``), or None.
        self.idle = idle_sweeper(self.stats, log, what, clock)

    def refused(self) -> Optional[Protocol]:
        """The protocol of a connection over the limit: none (it is closed)."""
        return None

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        if not admit(self.stats, addr, self._log, self._what):
            return self.refused()
        return Factory.buildProtocol(self, addr)
