"""
The memcached endpoint's connection core: replies in request order and flow
control, whatever the protocol (ASCII or binary) the connection speaks.

Replies leave in request order, whatever order the bucket answers in: a
result that is ready at once is written (batched per read) unless an earlier
one is still pending, and pending ones wait in an ordered queue of slots.

Flow control: the connection is a streaming producer for its transport.
When the transport's write buffer fills up (a client that sends but never
reads), it stops executing commands and stops reading; parsed commands that
were already read wait in a backlog, and everything resumes once the buffer
drains.  The same happens while ``max_inflight`` bucket calls are pending.
A reply that may be far larger than what it answers (a get of many keys) is
a stream (:class:`ReplyStream`), made a part at a time while the transport
takes more.  So a connection holds at most one read of input, the
transport's buffer plus one reply or one part of a stream, and
``max_inflight`` pending results.
"""

from __future__ import annotations

from collections import deque
from typing import (
    Any, Callable, Deque, List, Optional, Protocol as TypingProtocol, Tuple, cast)

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from zope.interface import implementer

from txcb.transport import StreamTransport, direct_writer, set_nodelay

__all__ = ["OrderedReplies", "WRITE_CHUNK", "Render", "ReplyStream", "MORE", "WAIT",
           "DONE"]

#: Pending output is handed to the transport once it reaches this size; a
#: stream's part is about this size too.
WRITE_CHUNK = 65536

#: What :meth:`ReplyStream.step` says: more parts are ready to be made, it
#: waits for a result (and calls :meth:`OrderedReplies.stream_ready`), or the
#: reply is complete.
MORE, WAIT, DONE = 0, 1, 2

#: ``render(result or Failure, context) -> reply bytes`` (b"" for none).
Render = Callable[[Any, Any], bytes]


class _ProducerTransport(StreamTransport, TypingProtocol):
    """A stream transport, with ``disconnecting`` (no Twisted interface has both)."""

    disconnecting: bool


class ReplyStream(TypingProtocol):
    """A reply made part by part (:meth:`OrderedReplies.stream`)."""

    def step(self, write: Callable[[bytes], None]) -> int:
        """Write the next part with ``write``; MORE, WAIT or DONE."""

    def stop(self) -> None:
        """The connection is gone: drop what is held, write nothing more."""


class _Slot:
    """
    One pending reply, in request order: ``data`` is None until it is ready,
    then its bytes, a :class:`ReplyStream` or ``_CLOSE``.
    """

    __slots__ = ("data",)

    def __init__(self, data: Any = None) -> None:
        self.data = data


# Marks "close the connection here" in the reply queue.
_CLOSE = object()


@implementer(IPushProducer)
class OrderedReplies(Protocol):
    """
    A connection whose requests are executed in order and answered in order,
    with flow control.  A protocol session sets :attr:`handle` (one parsed
    request -> its execution) and feeds parsed requests to :meth:`run`.  A
    handler returns its reply when it is ready at once and is all it sends,
    else answers with :meth:`reply` or :meth:`submit` and returns None.
    A session may instead run its requests itself: each answers with
    :meth:`reply` or :meth:`submit`, waits with :meth:`hold` while
    :attr:`blocked`, and the read ends with :meth:`end_read`.
    """

    _log = Logger()

    def start_replies(self, max_inflight: int) -> None:
        """Set up (from connectionMade): empty queues, registered as producer."""
        self._max_inflight = max_inflight
        self._slots: Deque[_Slot] = deque()
        self._backlog: Deque[Any] = deque()
        self._streams = 0            # streams not complete: later requests wait for them
        self._pumping = False        # a stream is being stepped
        self._out: List[bytes] = []
        self._out_len = 0
        self._out_full = False       # the transport's write buffer is full
        self._reading = True
        self._closing = False        # no more requests: a close is under way
        self._gone = False           # connectionLost was called
        #: True while a request must wait (:meth:`hold`) rather than run: a
        #: close, full output, a backlog, a stream or ``max_inflight`` pending.
        self.blocked = False
        self.handle: Callable[[Any], Optional[bytes]] = _ignore
        #: What a request whose handler failed is answered with.
        self.internal_error: Callable[[Any], bytes] = lambda ctx: b""
        transport = self.transport
        self._direct = direct_writer(transport)     # also binds _send
        set_nodelay(transport)
        cast(StreamTransport, transport).registerProducer(self, True)

    def stop_replies(self) -> None:
        """The connection is gone (from connectionLost): drop what is queued."""
        self._gone = True
        self.stopProducing()
        self._slots.clear()
        self._streams = 0
        self._out.clear()

    @property
    def closing(self) -> bool:
        """True once no more requests run (a close is under way or done)."""
        return self._closing

    # -- execution and flow control -----------------------------------------------

    def run(self, events: List[Any]) -> None:
        """Execute requests in order, keeping the rest while output is backed up."""
        slots = self._slots
        if slots or self._backlog or self._out_full or self._closing:
            self._run_held(events)
            return
        handle = self.handle
        if len(events) == 1:
            # One request in the read (the usual): its reply needs no batching.
            data = handle(events[0])
            if slots or self._out_full or self._closing or self._out:
                if data:
                    self.reply(data)
                self._flush()
                self._update_reading()
            else:
                if data:
                    self._send(data)
                if not self._reading:
                    self._update_reading()
            return
        # Nothing pending: run until a reply is pending or output backs up.
        out = self._out
        done = 0
        for event in events:
            data = handle(event)
            done += 1
            if data:                # a reply ready now, and nothing pending before it
                out.append(data)
                self._out_len += len(data)
                if self._out_len >= WRITE_CHUNK:
                    self._flush()
            if slots or self._out_full or self._closing:
                self._run_held(events[done:])
                return
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_len = 0
            self._send(data)
        if not self._reading:
            self._update_reading()

    def hold(self, call: Callable[..., None], args: Tuple[Any, ...]) -> None:
        """
        Keep a request for later, while :attr:`blocked`: its ``handle`` gets
        ``(call, args)`` once output drains (dropped if the connection closes).
        """
        if not self._closing:
            self._backlog.append((call, args))
            self.blocked = True

    def end_read(self) -> None:
        """After a read whose requests replied through :meth:`reply`: one write."""
        self._flush()
        if self.blocked or not self._reading:
            if self._backlog and not (self._out_full or self._closing or self._streams
                                      or len(self._slots) >= self._max_inflight):
                self._drain_backlog()
            else:
                self._update_reading()

    def _run_held(self, events: List[Any]) -> None:
        """:meth:`run` while replies are pending, output is backed up or closing."""
        slots = self._slots
        limit = self._max_inflight
        if self._closing:
            pass                    # nothing more runs
        elif self._backlog or self._out_full or self._streams or len(slots) >= limit:
            self._backlog.extend(events)
        else:
            handle = self.handle
            done = 0
            for event in events:
                data = handle(event)
                if data:
                    self.reply(data)
                done += 1
                if self._out_full or self._closing or self._streams or len(slots) >= limit:
                    if not self._closing:
                        self._backlog.extend(events[done:])
                    break
        self._flush()
        self._update_reading()

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        handle = self.handle
        slots = self._slots
        limit = self._max_inflight
        while backlog and not (self._out_full or self._closing or self._streams
                               or len(slots) >= limit):
            data = handle(backlog.popleft())
            if data:
                self.reply(data)
        if self._closing:
            backlog.clear()
        self._flush()
        self._update_reading()

    def _update_reading(self) -> None:
        want = not (self._closing or self._out_full or self._backlog
                    or len(self._slots) >= self._max_inflight)
        self.blocked = not want or self._streams > 0
        transport = cast(_ProducerTransport, self.transport)
        if self._gone or transport.disconnecting:
            return
        if want != self._reading:
            self._reading = want
            if want:
                transport.resumeProducing()
            else:
                transport.pauseProducing()

    # IPushProducer: the transport calls these as its write buffer fills and drains.

    def pauseProducing(self) -> None:
        self._out_full = True
        self.blocked = True

    def resumeProducing(self) -> None:
        self._out_full = False
        if not self._gone:
            self._drain_slots()     # a stream first in line goes on; then the backlog

    def stopProducing(self) -> None:
        self._closing = True
        self.blocked = True
        self._backlog.clear()
        for slot in self._slots:
            data = slot.data
            if data is not None and type(data) is not bytes and data is not _CLOSE:
                data.stop()

    # -- replies ----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_len += len(data)
        if self._out_len >= WRITE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        out = self._out       # one list for the connection's life: run() holds it
        if out:
            data = out[0] if len(out) == 1 else b"".join(out)
            out.clear()
            self._out_len = 0
            if not self._gone:
                self._send(data)

    def _send_now(self, data: bytes) -> None:
        """Straight to the socket if nothing is queued, else through the transport."""
        self._send(data)

    def _transport_write(self, data: bytes) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(data)

    @property
    def _direct(self) -> Optional[Callable[[bytes], None]]:
        """The transport's direct writer (None: none), which :attr:`_send` is bound to."""
        return self._direct_writer

    @_direct.setter
    def _direct(self, writer: Optional[Callable[[bytes], None]]) -> None:
        self._direct_writer = writer
        self._send: Callable[[bytes], None] = (
            writer if writer is not None else self._transport_write)

    def reply(self, data: bytes) -> None:
        """A reply that is ready now (b"": none): written behind any pending one."""
        if self._slots:
            self._slots.append(_Slot(data))
        elif data:
            self._out.append(data)
            self._out_len += len(data)
            if self._out_len >= WRITE_CHUNK:
                self._flush()

    def submit(self, d: Deferred, render: Render, ctx: Any) -> None:
        """
        Reply with ``render(result or Failure, ctx)`` once ``d`` fires, in
        request order.  ``render`` returns the bytes to send (b"" for none).
        """
        box: List[Any] = []
        d.addBoth(box.append)
        if box:
            self.reply(render(box[0], ctx))
            return
        slot = _Slot()
        self._slots.append(slot)
        if len(self._slots) >= self._max_inflight:
            self.blocked = True
        d.addCallback(self._completed, box, slot, render, ctx)

    def stream(self, parts: ReplyStream) -> None:
        """
        Reply with a stream: once every earlier reply is out, ``parts.step``
        writes a part at a time for as long as the transport takes more, and
        goes on when it drains (or, after WAIT, at :meth:`stream_ready`).
        Later requests wait (:attr:`blocked`) until it is complete, so they
        run after it as they would after a reply made at once; what it holds
        is one part, whatever its length.
        """
        slots = self._slots
        self._streams += 1      # from now on: a transport resuming us runs nothing else
        self.blocked = True
        if slots or not self._pump(parts):
            slots.append(_Slot(parts))
        else:                   # complete at once: the usual
            self._streams -= 1
            self.blocked = self._out_full

    def stream_ready(self, parts: ReplyStream) -> None:
        """A stream that said WAIT has its next part ready."""
        slots = self._slots
        if slots and slots[0].data is parts and not (self._gone or self._out_full):
            self._drain_slots()

    def _pump(self, parts: ReplyStream) -> bool:
        """Step a stream that is first in line until it waits or is done: True if done."""
        if self._pumping:
            return False    # resumed from inside one of its writes: the loop below goes on
        self._pumping = True
        try:
            write = self._write
            while not (self._out_full or self._gone):
                try:
                    state = parts.step(write)
                except Exception:
                    self._log.failure("txcb memcached: internal error streaming a reply")
                    parts.stop()
                    self._write(self.internal_error(None))
                    return True
                if state != MORE:
                    return state == DONE
            return False
        finally:
            self._pumping = False

    def _completed(self, _: Any, box: List[Any], slot: _Slot, render: Render,
                   ctx: Any) -> None:
        try:
            slot.data = render(box[0], ctx)
        except Exception:
            self._log.failure("txcb memcached: internal error rendering a reply")
            slot.data = self.internal_error(ctx)
        self._drain_slots()

    def _drain_slots(self) -> None:
        if self._gone:
            return
        slots = self._slots
        while slots and slots[0].data is not None:
            data = slots[0].data
            if type(data) is not bytes and data is not _CLOSE and not self._pump(data):
                self._flush()       # a stream that goes on once the transport drains
                self._update_reading()
                return
            slots.popleft()
            if data is _CLOSE:
                self._close_now()
                return
            if type(data) is bytes:
                if data:
                    self._write(data)
            else:                   # a stream, complete
                self._streams -= 1
        if self._backlog:
            self._drain_backlog()
        else:
            self._flush()
            self._update_reading()

    def close(self) -> None:
        """Close once every earlier reply is written; run nothing more."""
        if self._closing:
            return
        self._closing = True
        self.blocked = True
        self._backlog.clear()
        if self._slots:
            self._update_reading()
            self._slots.append(_Slot(_CLOSE))
        else:
            self._close_now()

    def _close_now(self) -> None:
        self._closing = True
        self.blocked = True
        self._flush()
        self._slots.clear()
        self._streams = 0
        if not self._gone:
            transport = self.transport
            assert transport is not None
            transport.loseConnection()


def _ignore(event: Any) -> Optional[bytes]:
    """The handler before a connection's protocol is known."""
    return None

