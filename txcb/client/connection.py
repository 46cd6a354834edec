"""
The blocking client's socket side: endpoint strings, one connection with its
HELLO handshake, and pipelined round trips of requests (no Twisted).
:mod:`txcb.client.blocking` builds its Bucket on it.
"""

from __future__ import annotations

import select
import socket
from typing import Any, Dict, Iterable, List, Optional, Tuple

from txcb.client import requests as _rq
from txcb.client.replies import (
    KIND, MULTI, bad_response, frame_limit, is_last_frame, multi_frame, ServerLimits,
    outcome, server_limits, unpack_header)
from txcb.limits import DEFAULT_MAX_VALUE_SIZE
from txcb.wire.netstring import (
    HEADER_LEN, OPT_QUIET, RES_MAGIC, FrameError, NetstringDecoder, encode_request, netstring)
from txcb.errors import (
    ArgumentError, ConnectError, CouchbaseError, NetworkError, ProtocolError, TimeoutError)

__all__ = ["parse_endpoint", "unique"]

#: Requests sent before reading replies, when the server did not say.
_DEFAULT_WINDOW = 512
_RECV = 262144
_kind = KIND.get


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


# -- requests and their round trips ---------------------------------------------

class _Req:
    """One request of a pipeline: its fields (from txcb.client.requests), and its reply's kind."""

    __slots__ = ("fields", "opcode", "kind", "key", "quiet", "timeout")

    def __init__(self, fields: _rq.Fields, timeout: float) -> None:
        self.fields = fields
        self.opcode = opcode = fields[0]
        self.kind = _kind(opcode)
        self.key = fields[1]
        self.quiet = bool(fields[7] & OPT_QUIET)
        self.timeout = timeout


class _MultiReq(_Req):
    """A GET_MULTI request: the keys it asks for, and where its results go."""

    __slots__ = ("keys", "pos", "call")

    def __init__(self, keys: List[Any], fields: _rq.Fields, timeout: float,
                 call: Tuple[bool, Any, Dict[Any, Any], Dict[Any, Any]]) -> None:
        _Req.__init__(self, fields, timeout)
        self.keys = keys
        self.pos = 0  # keys[:pos] are answered
        self.call = call  # (quiet, transcoder, results, errors) of the get_multi

    def frame(self, payload: bytes, last: bool) -> None:
        quiet, transcoder, results, errors = self.call
        self.pos = multi_frame(payload, self.keys, self.pos, last, quiet, transcoder, results,
                               errors)


def unique(keys: Iterable[Any]) -> List[Any]:
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys must be an iterable of keys, not a single key")
    return list(dict.fromkeys(keys))


class _Connection:
    """
    One socket to a server (connected, handshake to follow): pipelined round
    trips, each reply read by :mod:`txcb.client.replies`.  After a failed
    round trip it is :attr:`broken` and must be closed.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.decoder = NetstringDecoder(frame_limit(DEFAULT_MAX_VALUE_SIZE))
        self.next_opaque = 1
        self.broken = False

    @classmethod
    def open(cls, family: int, address: Any, timeout: float, endpoint: str) -> "_Connection":
        """Connect, or raise ConnectError."""
        try:
            if family == socket.AF_UNIX:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(timeout)
                try:
                    sock.connect(address)
                except BaseException:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(address, timeout)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except socket.timeout:
            raise ConnectError("cannot connect to %s: timed out after %.3gs"
                               % (endpoint, timeout))
        except OSError as e:
            raise ConnectError("cannot connect to %s: %s" % (endpoint, e.strerror or e))
        return cls(sock)

    def handshake(self, timeout: float, transcoder: Any, endpoint: str
                  ) -> Tuple[Dict[str, Any], ServerLimits]:
        """HELLO: the server's info and limits, or ConnectError (the socket closed)."""
        out: List[Any] = [None]
        self.round_trip([_Req(_rq.hello(), timeout)], [0], out, transcoder)
        info = out[0]
        try:
            if isinstance(info, CouchbaseError):
                raise info
            limits = server_limits(info)
        except CouchbaseError as e:
            self.close()
            raise ConnectError("handshake with %s failed: %s" % (endpoint, e.message))
        self.decoder.max_length = max(self.decoder.max_length,
                                      frame_limit(limits.max_value_size))
        return info, limits

    def closed_by_peer(self) -> bool:
        """Whether the server closed the connection (an EOF waits to be read)."""
        try:
            readable = select.select([self.sock], [], [], 0)[0]
            return bool(readable) and not self.sock.recv(1, socket.MSG_PEEK)
        except (OSError, ValueError):
            return True

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def round_trip(self, reqs: List[Any], chunk: List[int], results: List[Any],
                   transcoder: Any) -> None:
        """Send ``reqs[i]`` for ``i`` in ``chunk`` together; their outcomes go to ``results``."""
        waiting: Dict[int, int] = {}
        frames = []
        for i in chunk:
            opaque = self.next_opaque
            self.next_opaque = (opaque + 1) & 0xFFFFFFFF
            waiting[opaque] = i
            f = reqs[i].fields
            frames.append(netstring(encode_request(f[0], opaque, *f[2:])))
        wait = max(reqs[i].timeout for i in chunk)
        sock = self.sock
        error: Optional[CouchbaseError] = None
        try:
            sock.settimeout(wait)
            sock.sendall(b"".join(frames))
            while waiting:
                data = sock.recv(_RECV)
                if not data:
                    raise NetworkError("connection closed by the server")
                try:
                    payloads = self.decoder.feed(data)
                except FrameError as e:
                    self._answer_all(e.payloads, reqs, waiting, results, transcoder)
                    raise ProtocolError("bad frame from the server: %s" % (e,))
                self._answer_all(payloads, reqs, waiting, results, transcoder)
        except socket.timeout:
            error = TimeoutError("no reply within %.3gs" % (wait,))
        except CouchbaseError as e:
            error = e
        except OSError as e:
            error = NetworkError("connection lost: %s" % (e.strerror or e,))
        if error is not None:
            self.broken = True
            for i in waiting.values():
                results[i] = type(error)(error.message, key=reqs[i].key)

    @staticmethod
    def _answer_all(payloads: List[bytes], reqs: List[Any], waiting: Dict[int, int],
                    results: List[Any], transcoder: Any) -> None:
        for payload in payloads:
            if len(payload) < HEADER_LEN or payload[0] != RES_MAGIC:
                raise bad_response(payload)
            _m, _o, status, opaque, cas, flags, seqno = unpack_header(payload)
            i = waiting.get(opaque)
            if i is None:
                continue  # not ours (cannot happen: a timeout closes the connection)
            req = reqs[i]
            if req.kind == MULTI and not status:
                # One frame of a GET_MULTI reply: its entries go to the call's results.
                last = is_last_frame(flags)
                req.frame(payload, last)
                if last:
                    del waiting[opaque]
                    results[i] = None
                continue
            results[i] = outcome(req.kind, req.key, req.quiet, status, cas, flags, seqno,
                                 payload[HEADER_LEN:], transcoder)
            del waiting[opaque]
