"""
A pipelined memcached ASCII load client on raw non-blocking sockets: several
connections in one process, each keeping ``depth`` requests outstanding,
driven by one ``selectors`` loop, so the client stays cheaper than the
server it loads.  Replies come in request order on a connection, so each
reply is matched with the oldest outstanding request (its send time gives
the latency).

Used by ``bench.quota_bench`` and by the real-process quota test.  Values
are derived from the key (:func:`value_for`), so a reader can check every
byte without holding the data set.
"""

from __future__ import annotations

import collections
import selectors
import socket
import time
from typing import Callable, Deque, Dict, Iterator, List, Optional, Tuple

#: (key, sent at, tag) of a request waiting for its reply.
Pending = Tuple[bytes, float, int]


def value_for(key: bytes, size: int) -> bytes:
    """``size`` bytes that only ``key`` has: the key and a dash, repeated."""
    unit = key + b"-"
    return (unit * (size // len(unit) + 1))[:size]


def keys(n: int, prefix: bytes = b"k") -> List[bytes]:
    return [b"%s%08d" % (prefix, i) for i in range(n)]


class LoadError(Exception):
    """The server answered something the workload did not expect."""


class _Conn:
    """One connection: its socket, outstanding requests and unparsed bytes."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.setblocking(False)
        self.pending: Deque[Pending] = collections.deque()
        self.buf = b""
        self.out = b""

    def replies(self) -> Iterator[Tuple[bytes, Optional[bytes]]]:
        """(first line, value or None) of each complete reply in the buffer."""
        buf, pos = self.buf, 0
        while True:
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            line = buf[pos:eol]
            if not line.startswith(b"VALUE "):
                pos = eol + 2
                yield line, None
                continue
            size = int(line.rsplit(b" ", 1)[1])
            end = eol + 2 + size + 7  # data, "\r\nEND\r\n"
            if len(buf) < end:
                break
            value = buf[eol + 2:eol + 2 + size]
            pos = end
            yield line, value
        self.buf = buf[pos:]


class Pipeline:
    """
    Runs requests over ``conns`` connections to the memcached port, at most
    ``depth`` outstanding on each.  ``run`` takes a source of requests
    (``next_request() -> (key, wire bytes, tag)`` or None when done) and a
    ``on_reply(key, tag, latency, line, value)`` callback.
    """

    def __init__(self, port: int, conns: int, depth: int) -> None:
        self.depth = depth
        self.conns = [_Conn(port) for _ in range(conns)]
        self.sel = selectors.DefaultSelector()
        for c in self.conns:
            self.sel.register(c.sock, selectors.EVENT_READ, c)

    def close(self) -> None:
        for c in self.conns:
            self.sel.unregister(c.sock)
            c.sock.close()
        self.sel.close()

    def run(self, next_request: Callable[[], Optional[Tuple[bytes, bytes, int]]],
            on_reply: Callable[[bytes, int, float, bytes, Optional[bytes]], None],
            timeout: float = 60.0) -> None:
        """Until the source is empty and every reply came (or ``timeout`` s idle)."""
        exhausted = False
        for c in self.conns:
            exhausted = self._fill(c, next_request) or exhausted
        while any(c.pending for c in self.conns):
            events = self.sel.select(timeout)
            if not events:
                raise LoadError("no reply for %.0fs" % (timeout,))
            for ev, _ in events:
                c = ev.data
                self._read(c, on_reply)
                if not exhausted:
                    exhausted = self._fill(c, next_request)

    def _fill(self, c: _Conn, next_request: Callable[[], Optional[Tuple[bytes, bytes, int]]]
              ) -> bool:
        """Top ``c`` up to ``depth`` requests in one send; True once the source is empty."""
        chunks, now, empty = [], time.perf_counter(), False
        while len(c.pending) < self.depth:
            req = next_request()
            if req is None:
                empty = True
                break
            key, wire, tag = req
            chunks.append(wire)
            c.pending.append((key, now, tag))
        if chunks:
            c.sock.setblocking(True)
            c.sock.sendall(b"".join(chunks))
            c.sock.setblocking(False)
        return empty

    def _read(self, c: _Conn, on_reply: Callable[..., None]) -> None:
        try:
            data = c.sock.recv(1 << 20)
        except BlockingIOError:
            return
        if not data:
            raise LoadError("the server closed the connection")
        c.buf += data
        now = time.perf_counter()
        for line, value in c.replies():
            key, sent, tag = c.pending.popleft()
            on_reply(key, tag, now - sent, line, value)


def set_wire(key: bytes, value: bytes) -> bytes:
    return b"set %s 0 0 %d\r\n%s\r\n" % (key, len(value), value)


def get_wire(key: bytes) -> bytes:
    return b"get %s\r\n" % (key,)


class Loader:
    """
    Sets every key to :func:`value_for` over a :class:`Pipeline`; a
    ``SERVER_ERROR`` (the temporary failure of a bucket whose quota is full
    of writes waiting for the disk) is retried after ``backoff`` seconds,
    counted in ``retries``.  ``on_progress(done)`` is called every 1,000 keys.
    """

    def __init__(self, pipe: Pipeline, size: int, backoff: float = 0.005,
                 on_progress: Optional[Callable[[int], None]] = None) -> None:
        self.pipe = pipe
        self.size = size
        self.backoff = backoff
        self.on_progress = on_progress
        self.retries = 0
        self.stored = 0
        self._retry: Deque[Tuple[float, bytes]] = collections.deque()

    def load(self, all_keys: List[bytes]) -> float:
        """Seconds to store them all."""
        todo = iter(all_keys)
        started = time.perf_counter()
        total = len(all_keys)

        def next_request() -> Optional[Tuple[bytes, bytes, int]]:
            if self._retry and self._retry[0][0] <= time.perf_counter():
                key = self._retry.popleft()[1]
            else:
                key = next(todo, None)  # type: ignore[arg-type]
                if key is None:
                    if not self._retry:
                        return None
                    time.sleep(max(0.0, self._retry[0][0] - time.perf_counter()))
                    key = self._retry.popleft()[1]
            return key, set_wire(key, value_for(key, self.size)), 0

        while self.stored < total:
            self.pipe.run(next_request, self._stored)
        return time.perf_counter() - started

    def _stored(self, key: bytes, tag: int, latency: float, line: bytes,
                value: Optional[bytes]) -> None:
        if line == b"STORED":
            self.stored += 1
            if self.on_progress is not None and self.stored % 1000 == 0:
                self.on_progress(self.stored)
        elif line.startswith(b"SERVER_ERROR"):
            self.retries += 1
            self._retry.append((time.perf_counter() + self.backoff, key))
        else:
            raise LoadError("set %r: %r" % (key, line))


def stats(port: int) -> Dict[str, str]:
    """The server's ``stats`` (name -> value text), on a fresh connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        s.sendall(b"stats\r\n")
        buf = b""
        while not buf.endswith(b"END\r\n"):
            data = s.recv(65536)
            if not data:
                raise LoadError("the server closed the stats connection")
            buf += data
    out = {}
    for line in buf.decode("utf-8", "replace").splitlines():
        parts = line.split(" ", 2)
        if len(parts) == 3 and parts[0] == "STAT":
            out[parts[1]] = parts[2]
    return out
