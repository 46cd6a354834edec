"""
A blocking txcb client, for scripts, threads and programs without Twisted.

:class:`Bucket` has the IBucket method names, arguments and result types,
but returns results directly and raises the :mod:`txcb.errors` exceptions
instead of returning Deferreds::

    from txcb.client.blocking import Bucket
    from txcb.errors import NotFoundError

    with Bucket("tcp:127.0.0.1:11222", timeout=2.5) as bucket:
        bucket.upsert("user:1", {"name": "Ada"})
        print(bucket.get("user:1").value)
        try:
            bucket.get("nobody")
        except NotFoundError:
            pass
        many = bucket.get_multi(["user:1", "user:2"], quiet=True)   # one request
        for row in bucket.scan(prefix="user:"):                       # streamed
            print(row.key, row.value)

It speaks the protocol of ``docs/protocol.rst`` with the same sans-IO codec
as the Twisted client (:mod:`txcb.wire.netstring`, including its
:class:`~txcb.wire.netstring.NetstringDecoder`) over a plain socket, and imports no
Twisted at all.

Endpoints.  The client endpoint strings of Twisted that make sense for a
plain socket: ``tcp:HOST:PORT`` (or ``tcp:host=HOST:port=PORT``, with an
optional ``timeout=SECONDS`` for connecting), ``tcp6:`` likewise (escape the
colons of an IPv6 address with backslashes: ``tcp6:\\:\\:1:11222``),
``unix:PATH`` (or ``unix:path=PATH``), and a bare port number, meaning
``tcp:127.0.0.1:PORT``.  Anything else (``ssl:``, ``tor:``...) is refused
with :class:`~txcb.errors.ArgumentError`; use :func:`txcb.client.remote.connect`
from Twisted for those.

Timeouts.  ``timeout`` (default 2.5 s, overridable per call with
``timeout=``) bounds the wait for a reply; a request that times out raises
:class:`~txcb.errors.TimeoutError` and the connection is closed, since a late
reply could still be on its way.  ``connect_timeout`` bounds connecting
(default: ``timeout``).

Reconnection.  With ``reconnect=True`` (the default) a closed or lost
connection is re-established by the next call, and a connection the server
closed while it was idle is noticed before a request is sent on it.  A
request in flight when the connection breaks raises
:class:`~txcb.errors.NetworkError` and is not retried: it may or may not have
been applied.

Threads.  A Bucket is thread-safe: calls from several threads are
serialized on its one connection (a lock is held for each call, including
the whole of a ``*_multi`` call or of one scan batch).  For parallel
throughput give each thread its own Bucket.  A Bucket must not be used in a
child process after ``fork()``; open a new one there.
"""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from txcb.client import requests as _rq
from txcb.validation import DEFAULT_MAX_VALUE_SIZE, MAX_KEY_LEN, check_ttl
from txcb.wire.netstring import (
    HEADER_LEN, MULTI_MORE, OPT_QUIET, FrameError, NetstringDecoder, Op,
    decode_multi_reply, decode_response, decode_scan_reply, encode_request, netstring,
    scan_args)
from txcb.errors import (
    RC, ArgumentError, ConnectError, CouchbaseError, NetworkError, ProtocolError,
    TimeoutError, exception_for_rc)
from txcb.formats import DEFAULT_TRANSCODER, Transcoder
from txcb.results import MultiResult, OperationResult, ScanItem, ValueResult

__all__ = ["Bucket", "ScanIterator", "parse_endpoint", "DEFAULT_ENDPOINT"]

DEFAULT_ENDPOINT = "tcp:127.0.0.1:11222"
DEFAULT_TIMEOUT = 2.5
#: Requests sent before reading replies, when the server did not say.
_DEFAULT_WINDOW = 512
_RECV = 262144

# What a successful response turns into, by opcode (as in txcb.client.remote).
_VALUE, _MUTATION, _COUNTER, _JSON, _NONE, _RAW = 1, 2, 3, 4, 5, 6
_KIND = {
    Op.GET: _VALUE, Op.GAT: _VALUE, Op.LOCK: _VALUE, Op.COUNTER: _COUNTER,
    Op.UPSERT: _MUTATION, Op.INSERT: _MUTATION, Op.REPLACE: _MUTATION,
    Op.REMOVE: _MUTATION, Op.APPEND: _MUTATION, Op.PREPEND: _MUTATION,
    Op.TOUCH: _MUTATION, Op.UNLOCK: _MUTATION, Op.ENDURE: _MUTATION,
    Op.STATS: _JSON, Op.HELLO: _JSON, Op.NOOP: _NONE, Op.FLUSH: _NONE, Op.SCAN: _RAW,
}


# -- endpoint strings -----------------------------------------------------------

def _split(description: str) -> List[Tuple[str, int]]:
    """Split on unescaped colons: [(text, index of its first unescaped '=' or -1)]."""
    parts: List[Tuple[str, int]] = []
    cur: List[str] = []
    eq = -1
    chars = iter(description)
    for c in chars:
        if c == "\\":
            cur.append(next(chars, ""))
        elif c == ":":
            parts.append(("".join(cur), eq))
            cur, eq = [], -1
        else:
            if c == "=" and eq < 0:
                eq = len(cur)
            cur.append(c)
    parts.append(("".join(cur), eq))
    return parts


def parse_endpoint(description: str) -> Tuple[int, Any, Optional[float]]:
    """
    Parse a client endpoint string for a plain socket: returns
    ``(address family, address, connect timeout or None)``; raises
    :class:`ArgumentError` for anything the blocking client cannot connect to.
    """
    if not isinstance(description, str) or not description:
        raise ArgumentError("an endpoint must be a non-empty string, not %r" % (description,))
    if description.isdigit():
        description = "tcp:127.0.0.1:" + description
    parts = _split(description)
    kind = parts[0][0].lower()
    args: List[str] = []
    kw: Dict[str, str] = {}
    for text, eq in parts[1:]:
        if eq >= 0:
            kw[text[:eq]] = text[eq + 1:]
        else:
            args.append(text)
    try:
        if kind in ("tcp", "tcp6"):
            names = ["host", "port", "timeout", "bindAddress"]
            for name, value in zip(names, args):
                kw.setdefault(name, value)
            unknown = set(kw) - set(names)
            if len(args) > len(names) or unknown:
                raise ValueError("unknown arguments %s" % (sorted(unknown) or args[4:],))
            host = kw.get("host")
            port = int(kw["port"])
            if not host or not 0 < port < 65536:
                raise ValueError("needs a host and a port from 1 to 65535")
            timeout = float(kw["timeout"]) if "timeout" in kw else None
            family = socket.AF_INET6 if kind == "tcp6" else socket.AF_INET
            return family, (host, port), timeout
        if kind == "unix":
            names = ["path", "timeout", "checkPID"]
            for name, value in zip(names, args):
                kw.setdefault(name, value)
            unknown = set(kw) - set(names)
            if len(args) > len(names) or unknown or not kw.get("path"):
                raise ValueError("needs a path (unix:PATH)")
            timeout = float(kw["timeout"]) if "timeout" in kw else None
            return socket.AF_UNIX, kw["path"], timeout
    except (KeyError, ValueError) as e:
        raise ArgumentError("bad endpoint %r: %s" % (description, e or "missing argument"))
    raise ArgumentError("the blocking client connects to tcp:, tcp6: and unix: endpoints, "
                        "not %r (use txcb.client.remote.connect from Twisted for others)"
                        % (description,))


# -- requests -------------------------------------------------------------------

class _Req:
    """One request of a pipeline: its frame, and how to read its reply."""

    __slots__ = ("opcode", "key", "payload", "quiet", "timeout", "opaque")

    def __init__(self, opcode: int, key: Any, payload: bytes, quiet: bool,
                 timeout: float) -> None:
        self.opcode = opcode
        self.key = key
        self.payload = payload  # the request without its opaque (filled in at send)
        self.quiet = quiet
        self.timeout = timeout
        self.opaque = 0


class _MultiReq(_Req):
    """A GET_MULTI request: the keys it asks for, and the entries answered so far."""

    __slots__ = ("keys", "entries")

    def __init__(self, keys: List[Any], payload: bytes, timeout: float) -> None:
        _Req.__init__(self, Op.GET_MULTI, None, payload, False, timeout)
        self.keys = keys
        self.entries: List[tuple] = []


def unique(keys: Iterable[Any]) -> List[Any]:
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys must be an iterable of keys, not a single key")
    return list(dict.fromkeys(keys))


class Bucket:
    """
    A blocking connection to a txcb server (see the module docstring).

    :param endpoint: a ``tcp:``, ``tcp6:`` or ``unix:`` client endpoint
        string, or a bare port number (127.0.0.1).
    :param timeout: seconds to wait for a reply (each method also takes
        ``timeout=``).
    :param connect_timeout: seconds to wait for a connection (default
        ``timeout``, or the endpoint's own ``timeout=``).
    :param transcoder: encodes values and decodes results.
    :param reconnect: reconnect on the next call after a lost connection.
    :param connect: connect now (raising ConnectError); if False, the first
        call connects.
    """

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: Optional[float] = None,
                 transcoder: Optional[Transcoder] = None, reconnect: bool = True,
                 connect: bool = True) -> None:
        self.endpoint = endpoint
        self._family, self._address, ep_timeout = parse_endpoint(endpoint)
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ArgumentError("timeout must be a positive number, not %r" % (timeout,))
        self.timeout = float(timeout)
        if connect_timeout is None:
            connect_timeout = ep_timeout if ep_timeout is not None else self.timeout
        self.connect_timeout = connect_timeout
        self.transcoder = transcoder if transcoder is not None else DEFAULT_TRANSCODER
        self.reconnect = reconnect
        self.server_info: Dict[str, Any] = {}
        self.max_value_size = DEFAULT_MAX_VALUE_SIZE
        self._window = _DEFAULT_WINDOW
        #: GET_MULTI: the server's key limit (0: none, a GET per key) and body limit.
        self._multi_get_keys = 0
        self._max_multi_body = MAX_KEY_LEN + DEFAULT_MAX_VALUE_SIZE
        self._sock: Optional[socket.socket] = None
        self._decoder: Optional[NetstringDecoder] = None
        self._next_opaque = 1
        self._lock = threading.RLock()
        self._closed = False
        self._ever_connected = False
        if connect:
            with self._lock:
                self._connect()

    def __repr__(self) -> str:
        return "<txcb.client.blocking.Bucket %s%s>" % (
            self.endpoint, " connected" if self._sock is not None else "")

    def __enter__(self) -> "Bucket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the connection -----------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may still turn out to be broken)."""
        return self._sock is not None

    def _connect(self) -> None:
        try:
            if self._family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(self.connect_timeout)
                try:
                    sock.connect(self._address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self._address, self.connect_timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except socket.timeout:
            raise ConnectError("cannot connect to %s: timed out after %.3gs"
                               % (self.endpoint, self.connect_timeout))
        except OSError as e:
            raise ConnectError("cannot connect to %s: %s" % (self.endpoint, e.strerror or e))
        self._sock = sock
        self._decoder = NetstringDecoder(HEADER_LEN + DEFAULT_MAX_VALUE_SIZE + 1024)
        try:
            info = self._exchange_now([self._req(*_rq.hello(), timeout=None)])[0]
            if isinstance(info, CouchbaseError):
                raise info
        except CouchbaseError as e:
            self._drop()
            raise ConnectError("handshake with %s failed: %s" % (self.endpoint, e.message))
        self.server_info = info
        self.max_value_size = int(info.get("max_value_size", self.max_value_size))
        self._window = max(1, min(_DEFAULT_WINDOW, int(info.get("max_inflight", 1024)) // 2))
        self._decoder.max_length = max(self._decoder.max_length,
                                       HEADER_LEN + self.max_value_size + 1024)
        self._multi_get_keys, self._max_multi_body = _rq.multi_limits(
            info, self.max_value_size)
        self._ever_connected = True

    def _ensure_connected(self) -> None:
        if self._closed:
            raise NetworkError("the bucket is closed")
        sock = self._sock
        if sock is not None:
            # A connection the server closed while we were idle reads as EOF:
            # notice it now, before a request is sent into it.
            try:
                readable = select.select([sock], [], [], 0)[0]
                if readable and not sock.recv(1, socket.MSG_PEEK):
                    self._drop()
            except (OSError, ValueError):
                self._drop()
        if self._sock is None:
            if self._ever_connected and not self.reconnect:
                raise NetworkError("not connected (the connection was lost)")
            self._connect()

    def _drop(self) -> None:
        sock, self._sock = self._sock, None
        self._decoder = None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def close(self) -> None:
        """Close the connection; later calls raise NetworkError."""
        with self._lock:
            self._closed = True
            self._drop()

    # -- sending and receiving ------------------------------------------------

    def _req(self, opcode: int, key: Any, k: bytes, value: bytes = b"", cas: int = 0,
             ttl: int = 0, flags: int = 0, options: int = 0, persist_to: int = 0,
             replicate_to: int = 0, timeout: Optional[float] = None) -> _Req:
        payload = encode_request(opcode, 0, k, value, cas, ttl, flags, options, persist_to,
                                 replicate_to)
        return _Req(opcode, key, payload, bool(options & OPT_QUIET),
                    self.timeout if timeout is None else timeout)

    def _exchange(self, reqs: List[Any]) -> List[Any]:
        """
        Send requests pipelined and return, in order, each one's result or
        exception (entries of ``reqs`` that are exceptions already, from
        argument checks, are passed through).
        """
        with self._lock:
            self._ensure_connected()
            return self._exchange_now(reqs)

    def _exchange_now(self, reqs: List[Any]) -> List[Any]:
        results: List[Any] = list(reqs)
        todo = [i for i, r in enumerate(reqs) if isinstance(r, _Req)]
        window = self._window
        for start in range(0, len(todo), window):
            chunk = todo[start:start + window]
            if self._sock is None:
                for i in chunk:
                    results[i] = NetworkError("not sent: the connection broke", key=reqs[i].key)
                continue
            self._round_trip(reqs, chunk, results)
        return results

    def _round_trip(self, reqs: List[Any], chunk: List[int], results: List[Any]) -> None:
        waiting: Dict[int, int] = {}
        frames = []
        for i in chunk:
            r = reqs[i]
            opaque = self._next_opaque
            self._next_opaque = (opaque + 1) & 0xFFFFFFFF
            r.opaque = opaque
            waiting[opaque] = i
            p = r.payload
            frames.append(netstring(p[:8] + opaque.to_bytes(4, "big") + p[12:]))
        wait = max(reqs[i].timeout for i in chunk)
        sock = self._sock
        decoder = self._decoder
        assert sock is not None and decoder is not None
        error: Optional[CouchbaseError] = None
        try:
            sock.settimeout(wait)
            sock.sendall(b"".join(frames))
            while waiting:
                data = sock.recv(_RECV)
                if not data:
                    raise NetworkError("connection closed by the server")
                try:
                    payloads = decoder.feed(data)
                except FrameError as e:
                    self._answer_all(e.payloads, reqs, waiting, results)
                    raise ProtocolError("bad frame from the server: %s" % (e,))
                self._answer_all(payloads, reqs, waiting, results)
        except socket.timeout:
            error = TimeoutError("no reply within %.3gs" % (wait,))
        except CouchbaseError as e:
            error = e
        except OSError as e:
            error = NetworkError("connection lost: %s" % (e.strerror or e,))
        if error is not None:
            self._drop()
            for i in waiting.values():
                results[i] = type(error)(error.message, key=reqs[i].key)

    def _answer_all(self, payloads: List[bytes], reqs: List[Any], waiting: Dict[int, int],
                    results: List[Any]) -> None:
        for payload in payloads:
            try:
                res = decode_response(payload)
            except FrameError as e:
                raise ProtocolError("bad response from the server: %s" % (e,))
            i = waiting.get(res.opaque)
            if i is None:
                continue  # not ours (cannot happen: a timeout closes the connection)
            req = reqs[i]
            if req.opcode == Op.GET_MULTI and not res.status:
                # One frame of a GET_MULTI reply: its entries, kept until the last.
                try:
                    entries = decode_multi_reply(res.body)
                except FrameError as e:
                    raise ProtocolError("malformed GET_MULTI reply: %s" % (e,))
                _rq.check_multi_frame(len(req.keys), len(req.entries), len(entries),
                                      not res.flags & MULTI_MORE)
                req.entries.extend(entries)
                if res.flags & MULTI_MORE:
                    continue
            del waiting[res.opaque]
            results[i] = self._result(req, res)

    def _result(self, req: _Req, res: Any) -> Any:
        status = res.status
        key = req.key
        opcode = req.opcode
        if status:
            if status == RC.KEY_ENOENT and req.quiet:
                return (ValueResult(key, rc=status) if opcode in (Op.GET, Op.GAT)
                        else OperationResult(key, rc=status))
            return exception_for_rc(status, res.body.decode("utf-8", "replace"), key)
        kind = _KIND.get(opcode)
        if kind == _VALUE:
            return ValueResult(key, res.body, res.flags, res.cas, 0, self.transcoder,
                               seqno=res.seqno)
        if kind == _MUTATION:
            return OperationResult(key, res.cas, 0, res.seqno)
        if kind == _COUNTER:
            return ValueResult(key, res.body, res.flags, res.cas, 0, self.transcoder,
                               int(res.body), res.seqno)
        if kind == _JSON:
            return json.loads(res.body)
        if kind == _RAW:
            return res.body
        return None

    def _one(self, req: _Req) -> Any:
        result = self._exchange([req])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    # -- requests (txcb.client.requests checks the arguments, raising here) ---------

    def _r_get(self, key: Any, ttl: int = 0, quiet: bool = False,
               timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.get(key, ttl, quiet), timeout=timeout)

    def _r_upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
                  persist_to: int = 0, replicate_to: int = 0,
                  timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.store(Op.UPSERT, key, value, cas, ttl, format, persist_to,
                                    replicate_to, self.transcoder, self.max_value_size),
                         timeout=timeout)

    def _r_insert(self, key: Any, value: Any, ttl: int = 0, format: Any = None,
                  persist_to: int = 0, replicate_to: int = 0,
                  timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.store(Op.INSERT, key, value, 0, ttl, format, persist_to,
                                    replicate_to, self.transcoder, self.max_value_size),
                         timeout=timeout)

    def _r_replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0,
                   format: Any = None, persist_to: int = 0, replicate_to: int = 0,
                   timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.store(Op.REPLACE, key, value, cas, ttl, format, persist_to,
                                    replicate_to, self.transcoder, self.max_value_size),
                         timeout=timeout)

    def _r_append(self, key: Any, value: Any, cas: int = 0, format: Any = None,
                  persist_to: int = 0, replicate_to: int = 0,
                  timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.concat(Op.APPEND, key, value, cas, persist_to, replicate_to,
                                     self.transcoder, self.max_value_size), timeout=timeout)

    def _r_prepend(self, key: Any, value: Any, cas: int = 0, format: Any = None,
                   persist_to: int = 0, replicate_to: int = 0,
                   timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.concat(Op.PREPEND, key, value, cas, persist_to, replicate_to,
                                     self.transcoder, self.max_value_size), timeout=timeout)

    def _r_remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.remove(key, cas, quiet, persist_to, replicate_to),
                         timeout=timeout)

    def _r_touch(self, key: Any, ttl: int, timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.touch(key, ttl), timeout=timeout)

    def _r_lock(self, key: Any, ttl: int = 15, timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.lock(key, ttl), timeout=timeout)

    def _r_unlock(self, key: Any, cas: int, timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.unlock(key, cas), timeout=timeout)

    def _r_counter(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                   ttl: int = 0, timeout: Optional[float] = None) -> _Req:
        return self._req(*_rq.counter(key, delta, initial, ttl), timeout=timeout)

    def _r_endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
                  check_removed: bool = False, timeout: float = 5.0,
                  interval: float = 0.01) -> _Req:
        try:
            fields = _rq.endure(key, persist_to, replicate_to, cas, check_removed, timeout,
                                interval)
        except TypeError:
            raise ArgumentError("timeout must be >= 0 and interval > 0", key=key) from None
        return self._req(*fields, timeout=timeout + self.timeout)

    # -- IBucket, blocking ----------------------------------------------------

    def get(self, key: Any, ttl: int = 0, quiet: bool = False,
            timeout: Optional[float] = None) -> ValueResult:
        """Fetch a value (``ttl``: get-and-touch); NotFoundError unless ``quiet``."""
        return self._one(self._r_get(key, ttl, quiet, timeout))

    def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> OperationResult:
        """Store a value whether or not the key exists."""
        return self._one(self._r_upsert(key, value, cas, ttl, format, persist_to,
                                        replicate_to, timeout))

    def insert(self, key: Any, value: Any, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> OperationResult:
        """Store a value only if the key is absent (else KeyExistsError)."""
        return self._one(self._r_insert(key, value, ttl, format, persist_to, replicate_to,
                                        timeout))

    def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0,
                timeout: Optional[float] = None) -> OperationResult:
        """Store a value only if the key exists (else NotFoundError)."""
        return self._one(self._r_replace(key, value, cas, ttl, format, persist_to,
                                         replicate_to, timeout))

    def append(self, key: Any, value: Any, cas: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> OperationResult:
        """Append raw bytes (or UTF-8 text); missing key: NotStoredError."""
        return self._one(self._r_append(key, value, cas, format, persist_to, replicate_to,
                                        timeout))

    def prepend(self, key: Any, value: Any, cas: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0,
                timeout: Optional[float] = None) -> OperationResult:
        """Prepend raw bytes (or UTF-8 text); missing key: NotStoredError."""
        return self._one(self._r_prepend(key, value, cas, format, persist_to, replicate_to,
                                         timeout))

    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0, timeout: Optional[float] = None) -> OperationResult:
        """Delete a key; NotFoundError unless ``quiet``."""
        return self._one(self._r_remove(key, cas, quiet, persist_to, replicate_to, timeout))

    def touch(self, key: Any, ttl: int, timeout: Optional[float] = None) -> OperationResult:
        """Set a new expiry on an existing key."""
        return self._one(self._r_touch(key, ttl, timeout))

    def lock(self, key: Any, ttl: int = 15, timeout: Optional[float] = None) -> ValueResult:
        """Fetch and lock a key for ``ttl`` seconds (1 to 30)."""
        return self._one(self._r_lock(key, ttl, timeout))

    def unlock(self, key: Any, cas: int, timeout: Optional[float] = None) -> OperationResult:
        """Unlock a key locked with :meth:`lock`, given the lock's cas."""
        return self._one(self._r_unlock(key, cas, timeout))

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                timeout: Optional[float] = None) -> ValueResult:
        """Add ``delta`` to an unsigned 64-bit counter; ``.value`` is the new int."""
        return self._one(self._r_counter(key, delta, initial, ttl, timeout))

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> OperationResult:
        """Wait (on the server) until a key meets a durability requirement."""
        return self._one(self._r_endure(key, persist_to, replicate_to, cas, check_removed,
                                        timeout, interval))

    def stats(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The server's counters, as a dict."""
        return self._one(self._req(*_rq.stats(), timeout=timeout))

    def flush(self, timeout: Optional[float] = None) -> None:
        """Remove every item in the server's bucket."""
        return self._one(self._req(*_rq.flush(), timeout=timeout))

    def noop(self, timeout: Optional[float] = None) -> None:
        """A round trip that does nothing (health checks, latency)."""
        return self._one(self._req(*_rq.noop(), timeout=timeout))

    def ping(self, timeout: Optional[float] = None) -> float:
        """The round-trip time of a NOOP, in seconds."""
        with self._lock:
            self._ensure_connected()
            started = time.perf_counter()
            self.noop(timeout)
            return time.perf_counter() - started

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000, batch_bytes: int = 1048576,
             timeout: Optional[float] = None) -> "ScanIterator":
        """
        Stream the items of a key range in key order (see IBucket.scan): a
        :class:`ScanIterator` whose first batch is in already.  Iterate over
        it for rows, or call ``next_batch()`` for lists of rows (``[]`` at
        the end); each batch is one request, made when asked for.
        """
        args = scan_args(prefix, start, end, ids_only, batch_size, batch_bytes)
        scan = ScanIterator(self, args, timeout)
        scan._ready = scan._fetch()
        return scan

    # -- pipelines and *_multi ----------------------------------------------------

    _PIPELINE_OPS = frozenset(("get", "upsert", "insert", "replace", "remove", "touch",
                               "lock", "unlock", "counter", "append", "prepend", "endure"))

    def pipeline(self, calls: Iterable[Tuple[str, tuple, dict]]) -> List[Any]:
        """
        Run many single-key operations pipelined (sent together, then the
        replies read): ``calls`` is an iterable of ``(method name, args,
        kwargs)``; returns, in the same order, each call's result or the
        exception it would have raised (not raised)::

            bucket.pipeline([("upsert", ("a", 1), {}),
                             ("upsert", ("b", 2), {"ttl": 60}),
                             ("get", ("c",), {"quiet": True})])
        """
        reqs: List[Any] = []
        for name, args, kwargs in calls:
            if name not in self._PIPELINE_OPS:
                raise ArgumentError("pipeline: unknown operation %r" % (name,))
            try:
                reqs.append(getattr(self, "_r_" + name)(*args, **kwargs))
            except CouchbaseError as e:
                reqs.append(e)
            except TypeError as e:
                reqs.append(ArgumentError(str(e)))
        return self._exchange(reqs)

    def _gather(self, keys: List[Any], build: Callable[[Any], _Req],
                result_cls: type = OperationResult) -> MultiResult:
        reqs: List[Any] = []
        for k in keys:
            try:
                reqs.append(build(k))
            except CouchbaseError as e:
                reqs.append(e)
        out = MultiResult()
        first: Optional[CouchbaseError] = None
        for key, r in zip(keys, self._exchange(reqs)):
            if isinstance(r, CouchbaseError):
                out[key] = r.result if r.result is not None else result_cls(key, rc=r.rc)
                if first is None:
                    first = r
            else:
                out[key] = r
        if first is not None:
            first.all_results = out
            raise first
        return out

    @staticmethod
    def _items(mapping: Any) -> List[Tuple[Any, Any]]:
        items = mapping.items() if hasattr(mapping, "items") else mapping
        return list(items)

    def get_multi(self, keys: Iterable[Any], ttl: int = 0, quiet: bool = False,
                  timeout: Optional[float] = None) -> MultiResult:
        """get() for many keys: a MultiResult (or the first error, whose
        ``all_results`` holds every key's result).  One GET_MULTI request per
        chunk of keys where the server has it (docs/protocol.rst, 3.2), else
        a GET per key, pipelined."""
        keys = unique(keys)
        with self._lock:
            self._ensure_connected()
            max_keys = self._multi_get_keys
            if max_keys and ttl:
                try:
                    check_ttl(ttl)
                except CouchbaseError:  # every key fails as its own get would
                    max_keys = 0
            if not max_keys:
                return self._gather(keys, lambda k: self._r_get(k, ttl, quiet, timeout),
                                    ValueResult)
            results = MultiResult()
            errors: Dict[Any, Any] = {}
            wait = self.timeout if timeout is None else timeout
            reqs = [_MultiReq(ks, encode_request(fields[0], 0, *fields[2:]), wait)
                    for ks, fields in _rq.get_multi_requests(
                        keys, ttl or 0, max_keys, self._max_multi_body, results, errors)]
            outcome = self._exchange_now(reqs) if reqs else []
        transcoder = self.transcoder
        for req, r in zip(reqs, outcome):
            # Its entries (all of them, unless the request failed after some).
            pos = _rq.multi_entries(req.keys, 0, req.entries, r is None, quiet, transcoder,
                                    results, errors)
            if r is not None:  # the request failed: the keys not answered with it
                _rq.multi_fail(req.keys, pos, r, results, errors)
        error = _rq.multi_outcome(keys, results, errors)
        if error is not None:
            raise error
        return results

    def _store_multi(self, build: Callable[..., _Req], mapping: Any) -> MultiResult:
        items = self._items(mapping)
        values = dict(items)
        return self._gather(list(values), lambda k: build(k, values[k]))

    def upsert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """upsert() for a mapping of key -> value, pipelined."""
        return self._store_multi(lambda k, v: self._r_upsert(
            k, v, 0, ttl, format, persist_to, replicate_to, timeout), keys)

    def insert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """insert() for a mapping of key -> value, pipelined."""
        return self._store_multi(lambda k, v: self._r_insert(
            k, v, ttl, format, persist_to, replicate_to, timeout), keys)

    def replace_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                      replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """replace() for a mapping of key -> value, pipelined."""
        return self._store_multi(lambda k, v: self._r_replace(
            k, v, 0, ttl, format, persist_to, replicate_to, timeout), keys)

    def remove_multi(self, keys: Iterable[Any], quiet: bool = False, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """remove() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self._r_remove(
            k, 0, quiet, persist_to, replicate_to, timeout))

    def touch_multi(self, keys: Iterable[Any], ttl: int = 0,
                    timeout: Optional[float] = None) -> MultiResult:
        """touch() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self._r_touch(k, ttl, timeout))

    def counter_multi(self, keys: Iterable[Any], delta: int = 1, initial: Any = None,
                      ttl: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """counter() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self._r_counter(
            k, delta, initial, ttl, timeout), ValueResult)

    def lock_multi(self, keys: Iterable[Any], ttl: int = 15,
                   timeout: Optional[float] = None) -> MultiResult:
        """lock() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self._r_lock(k, ttl, timeout),
                            ValueResult)

    def unlock_multi(self, keys: Any, timeout: Optional[float] = None) -> MultiResult:
        """unlock() for a mapping of key -> lock cas, pipelined."""
        return self._store_multi(lambda k, cas: self._r_unlock(k, cas, timeout), keys)


class ScanIterator:
    """
    A scan through a blocking :class:`Bucket` (from :meth:`Bucket.scan`).

    :ivar continuation: the start bound (bytes) of the next batch, or None
        when the range is done: ``bucket.scan(..., start=it.continuation)``
        resumes a scan later.
    """

    def __init__(self, bucket: Bucket, args: tuple, timeout: Optional[float]) -> None:
        self._bucket = bucket
        (self._prefix, start, self._end, self._ids_only, self._batch_size,
         self._batch_bytes) = args
        self._timeout = timeout
        self.continuation: Optional[bytes] = start
        self._ready: Optional[List[ScanItem]] = None

    @property
    def done(self) -> bool:
        return self.continuation is None and not self._ready

    def _fetch(self) -> List[ScanItem]:
        b = self._bucket
        while self.continuation is not None:
            raw = b._one(b._req(*_rq.scan_batch(self._batch_size, self._batch_bytes,
                                                self._prefix, self.continuation, self._end,
                                                self._ids_only), timeout=self._timeout))
            try:
                resume, found = decode_scan_reply(raw)
            except FrameError as e:
                raise ProtocolError("malformed SCAN reply: %s" % (e,))
            self.continuation = resume or None
            if found or not resume:
                ids_only, transcoder = self._ids_only, b.transcoder
                return [ScanItem.from_row(k, f, c, x, None if ids_only else v, transcoder)
                        for k, f, c, x, v in found]
        return []

    def next_batch(self) -> List[ScanItem]:
        """The next batch of rows, ``[]`` once the scan is complete."""
        ready = self._ready
        if ready is not None:
            self._ready = None
            return ready
        return self._fetch()

    def __iter__(self) -> Iterator[ScanItem]:
        while True:
            rows = self.next_batch()
            if not rows:
                return
            yield from rows

    def close(self) -> None:
        """Stop: :meth:`next_batch` returns ``[]`` from now on."""
        self.continuation = None
        self._ready = None

    cancel = close
