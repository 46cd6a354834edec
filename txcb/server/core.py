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
- :class:`IRequestObserver`: told of every request answered (metrics).
"""

from __future__ import annotations

from time import monotonic
from typing import Any, Callable, Dict, List, Optional

from zope.interface import Interface

__all__ = ["ServerStats", "IRequestObserver", "admit", "RequestFlow", "LateReplies"]


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
    their common connection limit (``max_connections``, None: no limit).
    """

    def __init__(self, max_connections: Optional[int] = None, clock: Any = None) -> None:
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


class RefusalLog:
    """
    Refused connections, logged at most once per ``interval`` seconds: a
    client hammering a full server costs a line per interval, not per refusal.
    The first refusal is logged at once; the next line says how many were
    refused meanwhile without a line of their own.
    """

    def __init__(self, seconds: Callable[[], float], interval: float = 10.0) -> None:
        self._seconds = seconds
        self.interval = interval
        self._next = -1.0   # when the next line may be written
        self._unlogged = 0

    def refused(self, log: Any, what: str, addr: Any, open_now: int) -> None:
        now = self._seconds()
        if now < self._next:
            self._unlogged += 1
            return
        self._next = now + self.interval
        unlogged, self._unlogged = self._unlogged, 0
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

    __slots__ = ("clock", "write", "every", "pending")

    def __init__(self, clock: Any, write: Callable[[List[bytes]], None], every: int) -> None:
        self.clock = clock
        self.write = write
        self.every = every
        self.pending: List[bytes] = []

    def add(self, data: bytes) -> None:
        """Queue one reply's bytes."""
        pending = self.pending
        pending.append(data)
        if len(pending) == 1:
            self.clock.callLater(0, self.flush)
        elif len(pending) >= self.every:
            self.flush()

    def flush(self) -> None:
        """Write what is queued (a later call, with nothing queued, does nothing)."""
        pending, self.pending = self.pending, []
        if pending:
            self.write(pending)

    def drop(self) -> None:
        """Forget what is queued (the connection is gone)."""
        self.pending = []
