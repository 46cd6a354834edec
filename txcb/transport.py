"""
Twisted stream helpers shared by txcb's clients and servers: Nagle off, a
write that goes to the socket at once when nothing is queued, and the
netstring receiver both netstring peers frame with.

Core: no bucket, no protocol semantics, only how bytes move on a stream.
"""

from __future__ import annotations

from typing import Any, Optional, Protocol as _Interface

from twisted.protocols.basic import NetstringReceiver

__all__ = ["StreamTransport", "set_nodelay", "direct_writer", "FastNetstringReceiver"]


class StreamTransport(_Interface):
    """
    What the protocols use of their transport: an ``ITCPTransport`` that is
    also an ``IConsumer`` and an ``IPushProducer`` (every Twisted stream
    transport, TLS included, and the test transports).  ``Protocol.transport``
    is typed ``Optional[ITransport]``, which has none of the producer methods.
    """

    def write(self, data: bytes) -> None: ...
    def getPeer(self) -> Any: ...
    def loseConnection(self) -> None: ...
    def abortConnection(self) -> None: ...
    def registerProducer(self, producer: Any, streaming: bool) -> None: ...
    def pauseProducing(self) -> None: ...
    def resumeProducing(self) -> None: ...


def set_nodelay(transport: Any) -> None:
    """
    Turn off Nagle's algorithm where the transport has it: every message
    txcb writes is complete, so waiting for an ACK only adds latency.
    """
    nodelay = getattr(transport, "setTcpNoDelay", None)
    if nodelay is not None:
        try:
            nodelay(True)
        except OSError:
            pass


def direct_writer(transport: Any) -> Any:
    """
    A ``write(data)`` for ``transport`` that sends at once when nothing is
    queued before it, or None if the transport is not a plain socket one.

    ``transport.write`` only queues: the bytes go out when the reactor next
    finds the socket writable, a whole reactor turn (and two epoll_ctl calls)
    later, which a request/response protocol pays on every round trip.  Here
    the socket's ``send`` is tried first (what ``writeSomeData`` does); whatever
    it does not take, or an error, goes through ``transport.write`` as usual,
    so ordering, flow control, loseConnection and error handling stay Twisted's.

    The one private read: whether Twisted still holds bytes written before
    (``_tempDataLen``, written but not yet moved to ``dataBuffer``), which must
    go out first; no public attribute says so.  The public alternative,
    ``transport.write`` then ``transport.doWrite()``, registers and
    unregisters the socket for writing around every send (two epoll_ctl
    calls per reply), so it is kept here, confined to this function.  (A
    send after the write side is shut down fails, and falls back to
    ``transport.write``, which drops it as Twisted would.)
    """
    # On the class: a wrapper (TLS is one) forwards these names to the TCP
    # transport below it, whose socket must then not be written around it.
    if not (hasattr(type(transport), "writeSomeData") and hasattr(transport, "_tempDataLen")
            and hasattr(transport, "dataBuffer") and hasattr(transport, "TLS")
            and hasattr(transport, "socket")):
        return None
    t = transport
    send = transport.socket.send

    def write(data: bytes) -> None:
        if t._tempDataLen or t.dataBuffer or t.TLS or t.disconnecting or not t.connected:
            t.write(data)
            return
        try:
            n = send(data)
        except OSError:  # EAGAIN, or an error the reactor will find and report
            t.write(data)
            return
        if n < len(data):
            t.write(data[n:])  # the rest is queued
    return write


class FastNetstringReceiver(NetstringReceiver):
    """
    A :class:`NetstringReceiver` (same frames, same MAX_LENGTH, same
    ``_handleParseError`` on bad input) with a faster receive loop and write
    batching:

    - frames are cut out of each chunk by offset, instead of re-slicing the
      rest of the buffer per frame;
    - a frame arriving in pieces costs memory and work linear in what
      arrived, however small the pieces: it is appended to one bytearray
      (not kept as a list of pieces, each an object of its own), whose
      length prefix is read once and which is not scanned again, and its
      payload is copied out once, when whole.  The buffer grows with what
      arrives, never to the declared length at once, which would let a
      length prefix alone reserve memory nobody sent;
    - every string sent while a chunk is being handled is written in one
      ``write`` at its end, and a write with nothing queued before it goes to
      the socket at once (see :func:`direct_writer`).

    Data arriving after a parse error is ignored.
    """

    _batch: Optional[list] = None
    _direct: Any = None
    #: ``self.transport``, typed for what is used of it (set by makeConnection).
    _io: StreamTransport
    #: While a chunk is handled, what is sent goes out every this many strings
    #: (memcached's default requests per event is 20 too), so that both peers
    #: work at once instead of taking turns with whole batches: with 100
    #: requests in flight, flushing every 20 instead of once per chunk took
    #: pipelined gets from ~52k to ~85-100k/s and upserts from ~48k to ~80k/s
    #: (python -m bench --only get100,set100 on a 2-core machine).
    flushEvery = 20

    def makeConnection(self, transport: Any) -> None:
        # The incomplete frame at the end of the last chunk: its length prefix
        # alone (_need 0), or, once that is read, the whole frame so far
        # (_need: its size with prefix and comma; _payload_at: where its payload starts).
        self._partial = bytearray()
        self._need = self._payload_at = 0
        self._batch = None
        self._direct = direct_writer(transport)
        self._io = transport
        NetstringReceiver.makeConnection(self, transport)

    def sendString(self, string: bytes) -> None:
        data = b"%d:%s," % (len(string), string)
        batch = self._batch
        if batch is not None:
            batch.append(data)
            if len(batch) >= self.flushEvery or len(data) >= 16384:
                # Hand many or big replies over now, so that the transport's
                # flow control sees them (BucketServerProtocol.pauseProducing),
                # and the peer works on the first ones while the next are made.
                self._flush(batch)
                del batch[:]
        elif self._direct is not None:
            self._direct(data)
        else:
            self._io.write(data)

    def _flush(self, batch: list) -> None:
        data = batch[0] if len(batch) == 1 else b"".join(batch)
        if self._direct is not None:
            self._direct(data)
        else:
            self._io.write(data)

    def dataReceived(self, data: bytes) -> None:
        if self.brokenPeer:
            return
        pos = 0
        held = self._partial
        if held:
            if self._need:
                missing = self._need - len(held)  # the payload's rest and its comma
                if len(data) < missing:
                    held += data
                    return
                held += memoryview(data)[:missing]
                pos = missing
            else:
                data = bytes(held) + data  # a partial length prefix: a few bytes
                self._partial = bytearray()
        outer = self._batch
        batch = self._batch = [] if outer is None else outer
        try:
            if pos:
                self._partial_frame()
            if pos < len(data) and not self.brokenPeer:
                self._frames(data, pos)
        finally:
            if outer is None:
                self._batch = None
                if batch:
                    self._flush(batch)

    def _partial_frame(self) -> None:
        """Deliver the held frame, now whole (its last byte should be a comma)."""
        held, start = self._partial, self._payload_at
        self._partial = bytearray()
        self._need = self._payload_at = 0
        if held[-1] != 0x2C:  # ","
            self._parse_error()
            return
        with memoryview(held) as view:
            payload = view[start:-1].tobytes()
        self.stringReceived(payload)

    def _frames(self, data: bytes, pos: int) -> None:
        n = len(data)
        find = data.find
        received = self.stringReceived
        while pos < n:
            colon = find(b":", pos, pos + 21)
            if colon < 0:
                prefix = data[pos:]
                if (len(prefix) > 20 or not prefix.isdigit()
                        or (prefix[0] == 0x30 and len(prefix) > 1)
                        or int(prefix) > self.MAX_LENGTH):
                    self._parse_error()
                    return
                self._partial = bytearray(prefix)
                return
            prefix = data[pos:colon]
            if (not prefix.isdigit() or (prefix[0] == 0x30 and colon - pos > 1)):
                self._parse_error()
                return
            length = int(prefix)
            if length > self.MAX_LENGTH:
                self._parse_error()
                return
            end = colon + 1 + length
            if end >= n:  # the payload or its comma is still to come
                self._partial = bytearray(memoryview(data)[pos:])
                self._need = end + 1 - pos
                self._payload_at = colon + 1 - pos
                return
            if data[end] != 0x2C:  # ","
                self._parse_error()
                return
            received(data[colon + 1:end])
            pos = end + 1
            if self.brokenPeer:
                return

    def _parse_error(self) -> None:
        self._partial = bytearray()
        self._need = self._payload_at = 0
        self._handleParseError()
        self.brokenPeer = 1
