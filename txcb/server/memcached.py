"""
Serve any IBucket over the memcached protocols, ASCII and binary.

One factory, :class:`MemcachedServerFactory`, serves both: like memcached, a
connection whose first byte is ``0x80`` speaks the binary protocol and any
other connection speaks ASCII.  The wire formats live in the sans-IO modules
:mod:`txcb.wire.mcascii` (parser and reply formatting) and :mod:`txcb.wire.mcbinary`
(frame codec); this module only adapts: one parsed command becomes one
:class:`~txcb.interfaces.IBucket` call, and its result or error becomes the
reply memcached would send.  Semantics come from the bucket:

=====================  ======================================================
memcached              IBucket
=====================  ======================================================
set / SET              ``upsert`` (with the request's CAS, if any)
add / ADD              ``insert``
replace / REPLACE      ``replace`` (with CAS)
cas                    ``replace`` with the CAS (``cas ... 0`` never stores:
                       it answers EXISTS, or NOT_FOUND for a missing key)
append/prepend         ``append`` / ``prepend`` (flags and expiry are kept)
incr/decr              ``counter`` (wraps at 2**64 / stops at 0)
touch / TOUCH          ``touch``
get, gets / GET...     ``get``
gat, gats / GAT...     ``get`` with a ttl (exptime 0: ``touch`` to "never"
                       then ``get``)
delete / DELETE        ``remove``
flush_all / FLUSH      ``flush`` (a delay is scheduled on the bucket's clock)
GET_LOCKED 0x94        ``lock`` (lock time 0 = 15 s)
UNLOCK_KEY 0x95        ``unlock``
=====================  ======================================================

memcached's 32-bit flags are the item's flags (stored with
:class:`~txcb.formats.Encoded`), so they round-trip with the netstring
protocol in both directions.  A negative ASCII exptime means "already
expired", as in memcached; it is passed to the bucket as an absolute time in
the past.

Replies leave in request order, whatever order the bucket answers in: a
result that is ready at once is written (batched per read) unless an earlier
one is still pending, and pending ones wait in an ordered queue of slots.

Fast paths: on a bucket whose get and upsert are EmbeddedBucket's own (see
:func:`_sync_calls`), while nothing is pending, a read's leading run of whole
ASCII ``get``/``gets`` (one key or several) and ``set`` commands, or one
whole binary GET/SET frame, is served by the bucket's synchronous calls
without the parser and without Deferreds, with exactly the replies the
general path gives (tests/test_mc_fastpath.py compares them, split at every
offset); the rest of the read takes the parser.

Flow control: the protocol is a streaming producer for its transport.  When
the transport's write buffer fills up (a client that sends but never reads),
the protocol stops executing commands and stops reading; parsed commands that
were already read wait, and everything resumes once the buffer drains.  The
same happens while ``max_inflight`` bucket calls are pending.  So a
connection holds at most one read of input, the transport's buffer plus one
reply, and ``max_inflight`` pending results.

Authentication, when the factory has credentials: the binary protocol offers
SASL PLAIN (``SASL_LIST_MECHS``/``SASL_AUTH``), and every other command but
``VERSION`` and ``QUIT`` answers ``0x20`` until it succeeds.  ASCII
connections must authenticate as with memcached's ``-Y`` option: the first
command is ``set <any key> 0 0 <n>`` whose data is ``<user> <password>``
(``STORED`` on success, ``CLIENT_ERROR authentication failure`` otherwise);
anything else answers ``CLIENT_ERROR unauthenticated``.
"""

from __future__ import annotations

import hmac
import os
import struct
from collections import deque
from typing import (
    TYPE_CHECKING, Any, Callable, Deque, Dict, List, Optional, Protocol as TypingProtocol,
    Tuple, cast)

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IProducer, IPushProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txcb import __version__
from txcb.wire import mcascii as A
from txcb.wire import mcbinary as B
from txcb.validation import DEFAULT_MAX_VALUE_SIZE, MAX_KEY_LEN, THIRTY_DAYS
from txcb.errors import (
    RC, ArgumentError, CouchbaseError, DeltaBadvalError, KeyExistsError, NotFoundError,
    NotStoredError, TemporaryFailError, TooBigError)
from txcb.formats import Encoded
from txcb.results import ValueResult
from txcb.server.core import ServerStats
from txcb.transport import direct_writer, set_nodelay

__all__ = ["MemcachedServerFactory", "MemcachedServerProtocol", "VERSION",
           "load_auth_file"]

#: What ``version`` / VERSION answer: the memcached protocol level served
#: (numeric first, as memcached clients parse it), then txcb's own version.
VERSION = "1.6.0-txcb-" + __version__

#: An exptime that reads as already expired (an absolute time in 1970).
EXPIRED_TTL = THIRTY_DAYS + 1
#: GET_LOCKED's lock time when the request gives none (Couchbase's default).
DEFAULT_LOCK_TIME = 15
#: Pending output is handed to the transport once it reaches this size.
_WRITE_CHUNK = 65536
#: What memcached writes to a connection over its limit before closing it.
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"

_log = Logger()

_O = B.Opcode
_S = B.Status
_RES_HEADER = struct.Struct(">BBHBBHIIQ")
_pack_header = _RES_HEADER.pack
_unpack_request_header = _RES_HEADER.unpack_from   # the same layout
_STORE_EXTRAS = struct.Struct(">II")
_FAST_GETS = frozenset((_O.GET, _O.GETQ, _O.GETK, _O.GETKQ))
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")

#: Error bodies of binary responses, as memcached words them.
_MESSAGES = {
    _S.KEY_ENOENT: b"Not found",
    _S.KEY_EEXISTS: b"Data exists for key.",
    _S.E2BIG: b"Too large.",
    _S.EINVAL: b"Invalid arguments",
    _S.NOT_STORED: b"Not stored.",
    _S.DELTA_BADVAL: b"Non-numeric server-side value for incr or decr",
    _S.AUTH_ERROR: b"Auth failure.",
    _S.UNKNOWN_COMMAND: b"Unknown command",
    _S.ENOMEM: b"Out of memory",
    _S.NOT_SUPPORTED: b"Not supported",
    _S.EINTERNAL: b"Internal error",
    _S.EBUSY: b"Server busy",
    _S.ETMPFAIL: b"Temporary failure",
}
# Bucket errors whose rc is no memcached status: the bucket (a remote one) is
# unreachable or slow, which memcached clients know as a temporary failure.
_TEMPORARY_RCS = frozenset((RC.TIMEOUT, RC.CONNECT_ERROR, RC.NETWORK_ERROR))

# Opcodes an unauthenticated binary connection may use (memcached's list,
# plus QUIT so that a client can always say goodbye).
_AUTH_FREE = frozenset((_O.SASL_LIST_MECHS, _O.SASL_AUTH, _O.SASL_STEP, _O.VERSION,
                        _O.QUIT, _O.QUITQ))

# What the parser (control_keys=True) refuses in a key.
_ASCII_KEY_FORBIDDEN = A._KEY_FORBIDDEN_MIN

_CLIENT_ERROR_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
_CLIENT_ERROR_UNAUTHENTICATED = b"CLIENT_ERROR unauthenticated\r\n"
_CLIENT_ERROR_AUTH_FAILURE = b"CLIENT_ERROR authentication failure\r\n"
_SERVER_ERROR_INTERNAL = b"SERVER_ERROR internal error\r\n"


def load_auth_file(path: str) -> Dict[bytes, bytes]:
    """
    Read credentials: one ``user:password`` per line (the format of
    memcached's ``-Y`` file).  The password is everything after the first
    colon, up to the end of the line; blank lines and lines starting with
    ``#`` are ignored.  Raises ValueError for a malformed file.
    """
    creds: Dict[bytes, bytes] = {}
    with open(path, "rb") as f:
        for n, raw in enumerate(f, 1):
            line = raw.rstrip(b"\r\n")
            if not line.strip() or line.lstrip().startswith(b"#"):
                continue
            user, sep, password = line.partition(b":")
            if not sep or not user or b"\0" in line:
                raise ValueError("%s line %d: expected user:password" % (path, n))
            creds[user] = password
    if not creds:
        raise ValueError("%s holds no user:password line" % (path,))
    return creds


def _ascii_ttl(exptime: int) -> int:
    """memcached's ASCII exptime as a bucket TTL (negative: expired now)."""
    return EXPIRED_TTL if exptime < 0 else exptime


def _one_line(message: str) -> bytes:
    text = message.encode("utf-8", "replace")[:256]
    return text.replace(b"\r", b" ").replace(b"\n", b" ")


def _stat_value(v: Any) -> Optional[bytes]:
    """A stat's value as one token-free line, or None for non-scalars."""
    if isinstance(v, bool):
        return b"1" if v else b"0"
    if isinstance(v, (int, float)):
        return str(v).encode("ascii")
    if isinstance(v, str):
        v = v.encode("utf-8", "replace")
    if isinstance(v, bytes):
        return v.replace(b"\r", b" ").replace(b"\n", b" ")
    return None


class _Slot:
    """One pending reply, in request order: ``data`` is None until it is ready."""

    __slots__ = ("data",)

    def __init__(self, data: Any = None) -> None:
        self.data = data


# Marks "close the connection here" in the reply queue.
_CLOSE = object()


class _ProducerTransport(TypingProtocol):
    """
    What flow control needs of the transport beyond ITransport: a TCP or TLS
    connection is also an IConsumer and an IPushProducer, and has
    ``disconnecting`` (no Twisted interface declares all of these together).
    """

    disconnecting: bool

    def registerProducer(self, producer: IProducer, streaming: bool) -> None: ...

    def pauseProducing(self) -> None: ...

    def resumeProducing(self) -> None: ...


# -- the protocol -----------------------------------------------------------------

@implementer(IPushProducer)
class MemcachedServerProtocol(Protocol):
    """
    One memcached client connection: ASCII or binary, decided by its first
    byte.  See the module docstring for ordering and flow control.
    """

    _log = Logger()
    factory: "MemcachedServerFactory"

    def connectionMade(self) -> None:
        f = self.factory
        f.stats.connections += 1
        f.stats.total_connections += 1
        self.bucket = f.bucket
        self._max_inflight = f.max_inflight
        transport = self.transport
        assert transport is not None  # connectionMade: connected
        self._peer = str(transport.getPeer())
        self._slots: Deque[_Slot] = deque()
        self._backlog: Deque[Any] = deque()
        self._out: List[bytes] = []
        self._out_len = 0
        self._out_full = False       # the transport's write buffer is full
        self._reading = True
        self._closing = False        # no more commands: a close is under way
        self._gone = False           # connectionLost was called
        self.authenticated = f.credentials is None
        self.protocol_name: Optional[str] = None
        self._handle: Callable[[Any], None] = self._ignore
        self._get_sync, self._store_sync = _sync_calls(f.bucket)
        self._direct = direct_writer(transport)
        set_nodelay(transport)
        cast(_ProducerTransport, transport).registerProducer(self, True)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        if not self._gone:
            self._gone = True
            self._closing = True
            self.factory.stats.connections -= 1
            self._backlog.clear()
            self._out = []

    # -- protocol detection ---------------------------------------------------------

    def dataReceived(self, data: bytes) -> None:
        if not data:
            return
        if data[0] == B.REQ_MAGIC:
            self.protocol_name = "binary"
            self._decoder = B.Decoder(max_body=self.factory.max_body,
                                      max_key=MAX_KEY_LEN)
            self._handle = self._binary_event
            self.dataReceived = self._binary_received  # type: ignore[method-assign]
        else:
            self.protocol_name = "ascii"
            # control_keys: memcached takes any byte but space, CR, LF (and
            # NUL) in a key, and clients such as memcaslap use them.
            self._parser = A.Parser(max_value=self.factory.max_value_size,
                                    max_key=MAX_KEY_LEN, control_keys=True)
            self._parser_idle = True     # the parser's at_command, as of its last feed
            self._handle = self._ascii_event
            self.dataReceived = self._ascii_received  # type: ignore[method-assign]
        self.dataReceived(data)

    def _ascii_received(self, data: bytes) -> None:
        if self._closing:
            return
        if self._slots or self._backlog or self._out or self._out_full \
                or not self.authenticated or not self._parser_idle:
            self._parse(data)
            return
        if data[:4] == b"get " and data[-2:] == b"\r\n":
            # The commonest request alone in a read: one "get <key>\r\n" line
            # (no CR, LF, space or NUL in the key: nothing else in ``data``).
            key = data[4:-2]
            get_sync = self._get_sync
            if get_sync is not None and 0 < len(key) <= MAX_KEY_LEN and \
                    len(key.translate(None, _ASCII_KEY_FORBIDDEN)) == len(key):
                try:
                    r = get_sync(key, 0, True)
                except Exception:
                    self._send_now(_render_ascii_get1(Failure(), (key, False)))
                    return
                if r.rc:
                    self._send_now(A.END)
                else:
                    raw = r.raw
                    self._send_now(b"VALUE %s %d %d\r\n%s\r\nEND\r\n"
                                   % (key, r.flags, len(raw), raw))
                return
        pos = self._ascii_fast(data)
        if pos < len(data) and not self._closing:
            # The rest (a command the fast path leaves alone, or an incomplete
            # one) takes the parser, which is still at a command boundary.
            self._parse(data[pos:] if pos else data)

    def _parse(self, data: bytes) -> None:
        """The general path: the parser's events, run in order."""
        parser = self._parser
        events = parser.feed(data)
        self._parser_idle = parser.at_command
        self._run(events)

    def _ascii_fast(self, data: bytes) -> int:
        """
        The fast path for the commands a cache lives on, for a bucket with
        synchronous calls: the leading run of whole ``get``/``gets <key>*``
        lines and whole ``set <key> <flags> <exptime> <bytes> [noreply]``
        commands (with their data block) in ``data``, pipelined or not.
        Serves them exactly as the parser and the general path would, and
        returns how many bytes it consumed: it stops at the first thing it
        does not recognise as such (or that is incomplete), which then
        takes the parser.  Replies are sent at once if ``data`` is consumed
        whole, else queued in ``_out`` ahead of what the parser's commands
        reply; past ``_WRITE_CHUNK`` bytes they are handed to the transport,
        and if that fills it up the rest waits (flow control).
        """
        get_sync = self._get_sync
        store_sync = self._store_sync
        n = len(data)
        pos = 0
        replies: List[bytes] = []
        size = 0
        while pos < n:
            head = data[pos:pos + 4]
            if head == b"get " or (head == b"gets" and data[pos + 4:pos + 5] == b" "):
                if get_sync is None:
                    break
                start = pos + 4 if head == b"get " else pos + 5
                # The line: at most max_line (2048) bytes before its \r\n.
                nl = data.find(b"\n", start, pos + 2050)
                if nl < 0 or data[nl - 1] != 0x0D:
                    break
                keys = data[start:nl - 1]
                with_cas = head == b"gets"
                if 0 < len(keys) <= MAX_KEY_LEN and \
                        len(keys.translate(None, _ASCII_KEY_FORBIDDEN)) == len(keys):
                    try:
                        r = get_sync(keys, 0, True)
                    except Exception:
                        reply = _render_ascii_get1(Failure(), (keys, with_cas))
                    else:
                        if r.rc:
                            reply = A.END
                        elif with_cas:
                            raw = r.raw
                            reply = b"VALUE %s %d %d %d\r\n%s\r\nEND\r\n" % (
                                keys, r.flags, len(raw), r.cas, raw)
                        else:
                            raw = r.raw
                            reply = b"VALUE %s %d %d\r\n%s\r\nEND\r\n" % (
                                keys, r.flags, len(raw), raw)
                else:
                    several = self._fast_multi_get(keys, with_cas)
                    if several is None:
                        break
                    reply = several
                pos = nl + 1
            elif head == b"set ":
                if store_sync is None:
                    break
                nl = data.find(b"\n", pos + 4, pos + 2050)
                if nl < 0 or data[nl - 1] != 0x0D:
                    break
                tokens = data[pos + 4:nl - 1].split(b" ")
                noreply = False
                if len(tokens) == 5 and tokens[4] == b"noreply":
                    noreply = True
                    del tokens[4]
                if len(tokens) != 4:
                    break
                key, flags, exptime, length = tokens
                if not (flags.isdigit() and exptime.isdigit() and length.isdigit()
                        and len(flags) <= 10 and len(exptime) <= 9 and len(length) <= 9):
                    break
                start = nl + 1
                end = start + int(length)
                if end + 2 > n or data[end:end + 2] != b"\r\n" \
                        or end - start > self.factory.max_value_size:
                    break
                iflags = int(flags)
                if iflags > 0xFFFFFFFF or not 0 < len(key) <= MAX_KEY_LEN or \
                        len(key.translate(None, _ASCII_KEY_FORBIDDEN)) != len(key):
                    break
                try:
                    store_sync("upsert", key, Encoded(data[start:end], iflags), 0,
                               int(exptime))
                except Exception:
                    reply = _ascii_store_failure(Failure(), "set", noreply)
                else:
                    reply = b"" if noreply else A.STORED
                pos = end + 2
                if not reply:
                    continue
            else:
                break
            if pos == n and not replies:  # one command in the read
                self._send_now(reply)
                return pos
            replies.append(reply)
            size += len(reply)
            if size >= _WRITE_CHUNK and pos < n:
                if not self._fast_flush(replies):
                    return pos
                del replies[:]
                size = 0
        if replies:
            if pos == n:
                self._send_now(replies[0] if len(replies) == 1 else b"".join(replies))
            else:
                self._out.extend(replies)
                self._out_len += size
        return pos

    def _fast_multi_get(self, keys: bytes, with_cas: bool) -> Optional[bytes]:
        """
        The reply to ``get``/``gets`` of ``keys``, several valid keys one
        space apart; None for anything else (a bad key, a run of spaces, no
        key), which the parser is left to answer.
        """
        tokens = keys.split(b" ")
        forbidden = _ASCII_KEY_FORBIDDEN
        for key in tokens:
            if not 0 < len(key) <= MAX_KEY_LEN or \
                    len(key.translate(None, forbidden)) != len(key):
                return None
        get_sync = self._get_sync
        results: List[Any] = []
        for key in tokens:
            try:
                results.append(get_sync(key, 0, True))
            except Exception:
                results.append(Failure())
        return _render_ascii_values(results, (tokens, with_cas))

    def _fast_flush(self, replies: List[bytes]) -> bool:
        """
        Hand the fast path's replies so far to the transport; False if that
        filled its buffer (or closed the connection): stop executing, the
        rest of the input waits for the parser and the backlog.
        """
        self._send_now(b"".join(replies))
        return not (self._out_full or self._closing)

    def _binary_received(self, data: bytes) -> None:
        if self._closing:
            return
        if not (self._slots or self._backlog or self._out or self._out_full) \
                and self.authenticated and self._binary_fast(data):
            return
        try:
            events: List[Any] = self._decoder.feed(data)
        except B.FrameError as e:
            events = list(e.packets)
            events.append(e)
            while not e.fatal:
                # A refused frame whose boundary is known: go on behind it.
                try:
                    events.extend(self._decoder.feed(b""))
                    break
                except B.FrameError as again:
                    e = again
                    events.extend(e.packets)
                    events.append(e)
        self._run(events)

    def _binary_fast(self, data: bytes) -> bool:
        """
        The binary fast path: ``data`` is exactly one whole GET/GETK/GETQ/
        GETKQ or SET/SETQ request (what a cache client sends one at a time),
        nothing is buffered before it, and the bucket has synchronous calls.
        The request must pass every check the decoder and validate_request
        make (anything unusual returns False and takes the general path).
        """
        n = len(data)
        if n < 25 or self._decoder.buffered or self._decoder.skipping:
            return False
        (magic, opcode, keylen, extlen, _datatype, _vbucket, bodylen, opaque,
         cas) = _unpack_request_header(data)
        if magic != B.REQ_MAGIC or bodylen != n - 24 or not 0 < keylen <= MAX_KEY_LEN \
                or bodylen > self.factory.max_body:
            return False
        if opcode in _FAST_GETS:
            get_sync = self._get_sync
            if get_sync is None or extlen or keylen != bodylen:
                return False
            p = B.Packet(magic, opcode, 0, 0, opaque, cas, b"", data[24:], b"")
            try:
                r = get_sync(p.key, 0, True)
            except Exception:
                r = Failure()
            reply = _render_binary_value(r, p)
        elif opcode == _O.SET or opcode == _O.SETQ:
            store_sync = self._store_sync
            if store_sync is None or extlen != 8 or keylen + 8 > bodylen:
                return False
            flags, exptime = _STORE_EXTRAS.unpack_from(data, 24)
            key = data[32:32 + keylen]
            p = B.Packet(magic, opcode, 0, 0, opaque, cas, b"", key, b"")
            try:
                r = store_sync("upsert", key, Encoded(data[32 + keylen:], flags), cas, exptime)
            except Exception:
                r = Failure()
            reply = _render_binary_mutation(r, p)
        else:
            return False
        if reply:
            self._send_now(reply)
        return True

    def _ignore(self, event: Any) -> None:
        pass

    # -- execution, ordering and flow control --------------------------------------

    def _run(self, events: List[Any]) -> None:
        """Execute events in order, keeping the rest while output is backed up."""
        if self._backlog or self._out_full or self._closing \
                or len(self._slots) >= self._max_inflight:
            self._backlog.extend(events)
        else:
            handle = self._handle
            slots = self._slots
            limit = self._max_inflight
            for i, event in enumerate(events):
                handle(event)
                if self._out_full or self._closing or len(slots) >= limit:
                    del events[:i + 1]
                    if not self._closing:
                        self._backlog.extend(events)
                    break
        self._flush()
        self._update_reading()

    def _drain_backlog(self) -> None:
        backlog = self._backlog
        handle = self._handle
        slots = self._slots
        limit = self._max_inflight
        while backlog and not (self._out_full or self._closing or len(slots) >= limit):
            handle(backlog.popleft())
        if self._closing:
            backlog.clear()
        self._flush()
        self._update_reading()

    def _update_reading(self) -> None:
        transport = cast(_ProducerTransport, self.transport)
        if self._gone or transport.disconnecting:
            return
        want = not (self._closing or self._out_full or self._backlog
                    or len(self._slots) >= self._max_inflight)
        if want != self._reading:
            self._reading = want
            if want:
                transport.resumeProducing()
            else:
                transport.pauseProducing()

    # IPushProducer: the transport calls these as its write buffer fills and drains.

    def pauseProducing(self) -> None:
        self._out_full = True

    def resumeProducing(self) -> None:
        self._out_full = False
        if not self._gone:
            self._drain_backlog()

    def stopProducing(self) -> None:
        self._closing = True
        self._backlog.clear()

    # -- replies ----------------------------------------------------------------------

    def _write(self, data: bytes) -> None:
        self._out.append(data)
        self._out_len += len(data)
        if self._out_len >= _WRITE_CHUNK:
            self._flush()

    def _flush(self) -> None:
        out = self._out
        if out:
            self._out = []
            self._out_len = 0
            if not self._gone:
                self._send_now(out[0] if len(out) == 1 else b"".join(out))

    def _send_now(self, data: bytes) -> None:
        """Straight to the socket if nothing is queued, else through the transport."""
        if self._direct is not None:
            self._direct(data)
        else:
            transport = self.transport
            assert transport is not None
            transport.write(data)

    def _reply(self, data: bytes) -> None:
        """A reply that is ready now: written behind any pending one."""
        if self._slots:
            self._slots.append(_Slot(data))
        elif data:
            self._write(data)

    def _submit(self, d: Deferred, render: Callable[[Any, Any], bytes], ctx: Any) -> None:
        """
        Reply with ``render(result or Failure, ctx)`` once ``d`` fires, in
        request order.  ``render`` returns the bytes to send (b"" for none).
        """
        box: List[Any] = []
        d.addBoth(box.append)
        if box:
            data = render(box[0], ctx)
            if self._slots:
                self._slots.append(_Slot(data))
            elif data:
                self._write(data)
            return
        slot = _Slot()
        self._slots.append(slot)
        d.addCallback(self._completed, box, slot, render, ctx)

    def _submit_all(self, ds: List[Deferred], render: Callable[[List[Any], Any], bytes],
                    ctx: Any) -> None:
        """:meth:`_submit` for several Deferreds answered by one reply."""
        boxes: List[List[Any]] = []
        pending = 0
        for d in ds:
            box: List[Any] = []
            d.addBoth(box.append)
            boxes.append(box)
            if not box:
                pending += 1
        if not pending:
            self._submit(succeed([b[0] for b in boxes]), render, ctx)
            return
        whole: Deferred = Deferred()
        left = [pending]

        def one_done(_: Any) -> None:
            left[0] -= 1
            if not left[0]:
                whole.callback([b[0] for b in boxes])

        for d, box in zip(ds, boxes):
            if not box:
                d.addCallback(one_done)
        self._submit(whole, render, ctx)

    def _completed(self, _: Any, box: List[Any], slot: _Slot,
                   render: Callable[[Any, Any], bytes], ctx: Any) -> None:
        try:
            slot.data = render(box[0], ctx)
        except Exception:
            self._log.failure("txcb memcached: internal error rendering a reply")
            slot.data = self._internal_error(ctx)
        self._drain_slots()

    def _drain_slots(self) -> None:
        if self._gone:
            self._slots.clear()
            return
        slots = self._slots
        while slots and slots[0].data is not None:
            data = slots.popleft().data
            if data is _CLOSE:
                self._close_now()
                return
            if data:
                self._write(data)
        if self._backlog:
            self._drain_backlog()
        else:
            self._flush()
            self._update_reading()

    def _close(self) -> None:
        """Close once every earlier reply is written; run nothing more."""
        if self._closing:
            return
        self._closing = True
        self._backlog.clear()
        if self._slots:
            self._update_reading()
            self._slots.append(_Slot(_CLOSE))
        else:
            self._close_now()

    def _close_now(self) -> None:
        self._closing = True
        self._flush()
        self._slots.clear()
        if not self._gone:
            transport = self.transport
            assert transport is not None
            transport.loseConnection()

    def _internal_error(self, ctx: Any) -> bytes:
        if self.protocol_name == "binary" and isinstance(ctx, B.Packet):
            return _error(ctx, _S.EINTERNAL)
        return _SERVER_ERROR_INTERNAL

    def _call(self, method: Callable[..., Deferred], *args: Any, **kw: Any) -> Deferred:
        """A bucket call whose synchronous exceptions become a failed Deferred."""
        try:
            return method(*args, **kw)
        except Exception:
            return fail()

    def _check_credentials(self, user: bytes, password: bytes) -> bool:
        ok = self.factory.check_credentials(user, password)
        if ok:
            self.authenticated = True
            self._log.info("txcb memcached: {peer} authenticated as {user}",
                           peer=self._peer, user=user.decode("utf-8", "replace"))
        else:
            self._log.warn("txcb memcached: authentication failure from {peer}",
                           peer=self._peer)
        return ok

    # -- ASCII --------------------------------------------------------------------------

    def _ascii_event(self, ev: Any) -> None:
        if type(ev) is A.Error:
            if ev.response:
                self._reply(ev.response)
            if ev.close:
                self._log.info("txcb memcached: closing {peer} after a refused line",
                               peer=self._peer)
                self._close()
            return
        if not self.authenticated:
            self._ascii_unauthenticated(ev)
            return
        try:
            _ASCII[ev.name](self, ev)
        except Exception:
            self._log.failure("txcb memcached: internal error handling {cmd!r}", cmd=ev)
            if not ev.noreply:
                self._reply(_SERVER_ERROR_INTERNAL)

    def _ascii_unauthenticated(self, ev: A.Command) -> None:
        if ev.name == "quit":
            self._close()
        elif ev.name == "set":
            user, _sep, password = (ev.value or b"").partition(b" ")
            ok = bool(_sep) and self._check_credentials(user, password.rstrip(b"\r\n"))
            if not ev.noreply:
                self._reply(A.STORED if ok else _CLIENT_ERROR_AUTH_FAILURE)
        elif not ev.noreply:
            self._reply(_CLIENT_ERROR_UNAUTHENTICATED)

    def _a_get(self, cmd: A.Command) -> None:
        keys = cmd.keys
        if not keys:
            self._reply(A.END)
            return
        bucket = self.bucket
        name = cmd.name
        with_cas = name == "gets" or name == "gats"
        if name == "get" or name == "gets":
            if len(keys) == 1:
                key = keys[0]
                get_sync = self._get_sync
                if get_sync is not None:
                    try:
                        r = get_sync(key, 0, True)
                    except Exception:
                        r = Failure()
                    self._reply(_render_ascii_get1(r, (key, with_cas)))
                    return
                try:
                    d = bucket.get(key, quiet=True)
                except Exception:
                    d = fail()
                self._submit(d, _render_ascii_get1, (key, with_cas))
                return
            ds = [self._call(bucket.get, k, quiet=True) for k in keys]
        else:
            ttl = _ascii_ttl(cmd.exptime)
            ds = [_get_and_touch(bucket, k, ttl) for k in keys]
        self._submit_all(ds, _render_ascii_values, (keys, with_cas))

    def _a_store(self, cmd: A.Command) -> None:
        bucket = self.bucket
        name = cmd.name
        key = cmd.key
        if name == "append" or name == "prepend":
            d = self._call(getattr(bucket, name), key, cmd.value)
        elif name == "cas" and not cmd.cas:
            # No item ever has CAS 0: nothing to store; EXISTS or NOT_FOUND.
            d = self._call(bucket.get, key, quiet=True)
            self._submit(d, _render_ascii_cas0, cmd)
            return
        else:
            assert cmd.value is not None  # the parser sets it for every store command
            value = Encoded(cmd.value, cmd.flags)
            ttl = _ascii_ttl(cmd.exptime)
            store_sync = self._store_sync
            if store_sync is not None and name != "cas":
                try:
                    r = store_sync(_STORE_OPS[name], key, value, 0, ttl)
                except Exception:
                    r = Failure()
                self._reply(_render_ascii_store(r, cmd))
                return
            if name == "set":
                d = self._call(bucket.upsert, key, value, ttl=ttl)
            elif name == "add":
                d = self._call(bucket.insert, key, value, ttl=ttl)
            elif name == "replace":
                d = self._call(bucket.replace, key, value, ttl=ttl)
            else:
                d = self._call(bucket.replace, key, value, cas=cmd.cas, ttl=ttl)
        self._submit(d, _render_ascii_store, cmd)

    def _a_arith(self, cmd: A.Command) -> None:
        assert cmd.delta is not None  # the parser sets it for incr/decr
        delta = cmd.delta if cmd.name == "incr" else -cmd.delta
        d = self._call(self.bucket.counter, cmd.key, delta=delta)
        self._submit(d, _render_ascii_counter, cmd)

    def _a_touch(self, cmd: A.Command) -> None:
        d = self._call(self.bucket.touch, cmd.key, _ascii_ttl(cmd.exptime))
        self._submit(d, _render_ascii_simple, (cmd, A.TOUCHED))

    def _a_delete(self, cmd: A.Command) -> None:
        d = self._call(self.bucket.remove, cmd.key)
        self._submit(d, _render_ascii_simple, (cmd, A.DELETED))

    def _a_flush_all(self, cmd: A.Command) -> None:
        d = self._call(self.factory.flush, cmd.exptime)
        self._submit(d, _render_ascii_simple, (cmd, A.OK))

    def _a_version(self, cmd: A.Command) -> None:
        self._reply(b"VERSION %s\r\n" % (VERSION.encode("ascii"),))

    def _a_verbosity(self, cmd: A.Command) -> None:
        self.factory.verbosity = int(cmd.args[0])
        if not cmd.noreply:
            self._reply(A.OK)

    def _a_stats(self, cmd: A.Command) -> None:
        if not cmd.args:
            d = self._call(self.factory.general_stats)
        elif cmd.args == [b"settings"]:
            d = succeed(self.factory.settings_stats())
        else:
            # memcached answers ERROR to a statistics group it does not know
            # (and "stats noreply": stats takes no noreply).
            self._reply(A.ERROR)
            return
        self._submit(d, _render_ascii_stats, cmd)

    def _a_quit(self, cmd: A.Command) -> None:
        self._close()

    # -- binary -------------------------------------------------------------------------

    def _binary_event(self, ev: Any) -> None:
        if type(ev) is not B.Packet:
            self._frame_error(ev)
            return
        opcode = ev.opcode
        status = B.validate_request(ev)
        if status is not None:
            self._reply(_error(ev, status))
            return
        if not self.authenticated and opcode not in _AUTH_FREE:
            self._reply(_error(ev, _S.AUTH_ERROR))
            return
        try:
            _BINARY[opcode](self, ev)
        except Exception:
            self._log.failure("txcb memcached: internal error handling {packet!r}", packet=ev)
            self._reply(_error(ev, _S.EINTERNAL))

    def _frame_error(self, e: B.FrameError) -> None:
        if e.opcode is not None and e.opaque is not None:  # both or neither
            body = _MESSAGES.get(e.status, b"")
            self._reply(_response(e.opcode, e.status, e.opaque, value=body))
        if e.fatal:
            self._log.info("txcb memcached: protocol error from {peer}: {error}; closing",
                           peer=self._peer, error=str(e))
            self._close()

    def _b_get(self, p: B.Packet) -> None:
        get_sync = self._get_sync
        if get_sync is not None:
            try:
                r = get_sync(p.key, 0, True)
            except Exception:
                r = Failure()
            self._reply(_render_binary_value(r, p))
            return
        try:
            d = self.bucket.get(p.key, quiet=True)
        except Exception:
            d = fail()
        self._submit(d, _render_binary_value, p)

    def _b_gat(self, p: B.Packet) -> None:
        d = _get_and_touch(self.bucket, p.key, B.parse_touch_extras(p.extras))
        self._submit(d, _render_binary_value, p)

    def _b_store(self, p: B.Packet) -> None:
        flags, exptime = B.parse_store_extras(p.extras)
        value = Encoded(p.value, flags)
        loud = B.loud_opcode(p.opcode)
        bucket = self.bucket
        store_sync = self._store_sync
        if store_sync is not None and not (loud == _O.ADD and p.cas):
            try:
                r = store_sync(_BINARY_STORE_OPS[loud], p.key, value, p.cas, exptime)
            except Exception:
                r = Failure()
            self._reply(_render_binary_mutation(r, p))
            return
        if loud == _O.SET:
            d = self._call(bucket.upsert, p.key, value, cas=p.cas, ttl=exptime)
        elif loud == _O.ADD:
            if p.cas:
                self._reply(_error(p, _S.EINVAL))
                return
            d = self._call(bucket.insert, p.key, value, ttl=exptime)
        else:
            d = self._call(bucket.replace, p.key, value, cas=p.cas, ttl=exptime)
        self._submit(d, _render_binary_mutation, p)

    def _b_concat(self, p: B.Packet) -> None:
        method = "append" if B.loud_opcode(p.opcode) == _O.APPEND else "prepend"
        d = self._call(getattr(self.bucket, method), p.key, p.value, cas=p.cas)
        self._submit(d, _render_binary_mutation, p)

    def _b_delete(self, p: B.Packet) -> None:
        d = self._call(self.bucket.remove, p.key, cas=p.cas)
        self._submit(d, _render_binary_delete, p)

    def _b_counter(self, p: B.Packet) -> None:
        if p.cas:
            # The bucket's counter has no CAS check to honour it with.
            self._reply(_error(p, _S.NOT_SUPPORTED,
                               b"CAS is not supported on INCREMENT/DECREMENT"))
            return
        delta, initial, exptime = B.parse_counter_extras(p.extras)
        if B.loud_opcode(p.opcode) == _O.DECREMENT:
            delta = -delta
        if exptime == B.COUNTER_NO_CREATE:
            d = self._call(self.bucket.counter, p.key, delta=delta)
        else:
            d = self._call(self.bucket.counter, p.key, delta=delta, initial=initial,
                           ttl=exptime)
        self._submit(d, _render_binary_counter, p)

    def _b_touch(self, p: B.Packet) -> None:
        d = self._call(self.bucket.touch, p.key, B.parse_touch_extras(p.extras))
        self._submit(d, _render_binary_mutation, p)

    def _b_lock(self, p: B.Packet) -> None:
        lock_time = B.parse_get_locked_extras(p.extras) or DEFAULT_LOCK_TIME
        d = self._call(self.bucket.lock, p.key, ttl=lock_time)
        self._submit(d, _render_binary_value, p)

    def _b_unlock(self, p: B.Packet) -> None:
        d = self._call(self.bucket.unlock, p.key, p.cas)
        self._submit(d, _render_binary_mutation, p)

    def _b_noop(self, p: B.Packet) -> None:
        self._reply(_response(p.opcode, 0, p.opaque))

    def _b_version(self, p: B.Packet) -> None:
        self._reply(_response(p.opcode, 0, p.opaque, value=VERSION.encode("ascii")))

    def _b_verbosity(self, p: B.Packet) -> None:
        self.factory.verbosity = B.parse_verbosity_extras(p.extras)
        self._reply(_response(p.opcode, 0, p.opaque))

    def _b_flush(self, p: B.Packet) -> None:
        d = self._call(self.factory.flush, B.parse_flush_extras(p.extras))
        self._submit(d, _render_binary_flush, p)

    def _b_quit(self, p: B.Packet) -> None:
        if p.opcode == _O.QUIT:
            self._reply(_response(p.opcode, 0, p.opaque))
        self._close()

    def _b_stat(self, p: B.Packet) -> None:
        if not p.key:
            d = self._call(self.factory.general_stats)
        elif p.key == b"settings":
            d = succeed(self.factory.settings_stats())
        else:
            self._reply(_error(p, _S.KEY_ENOENT))
            return
        self._submit(d, _render_binary_stats, p)

    def _b_sasl_list_mechs(self, p: B.Packet) -> None:
        if self.factory.credentials is None:
            self._reply(_error(p, _S.UNKNOWN_COMMAND))
        else:
            self._reply(_response(p.opcode, 0, p.opaque, value=b"PLAIN"))

    def _b_sasl_auth(self, p: B.Packet) -> None:
        if self.factory.credentials is None:
            self._reply(_error(p, _S.UNKNOWN_COMMAND))
            return
        ok = False
        if p.opcode == _O.SASL_AUTH and p.key == b"PLAIN":
            try:
                plain = B.parse_sasl_plain(p.value)
            except ValueError:
                pass
            else:
                ok = self._check_credentials(plain.username, plain.password)
        if ok:
            self._reply(_response(p.opcode, 0, p.opaque, value=b"Authenticated"))
        else:
            self._reply(_error(p, _S.AUTH_ERROR))


# -- ASCII rendering: (result or Failure, context) -> reply bytes ----------------------

def _value_line(key: bytes, r: Any, with_cas: bool) -> bytes:
    raw = r.raw
    if with_cas:
        return b"VALUE %s %d %d %d\r\n%s\r\n" % (key, r.flags, len(raw), r.cas, raw)
    return b"VALUE %s %d %d\r\n%s\r\n" % (key, r.flags, len(raw), raw)


def _is_miss(r: Any) -> bool:
    """A get result that reads as a miss (a locked item cannot be touched)."""
    if type(r) is Failure:
        return r.check(NotFoundError, TemporaryFailError) is not None
    return not r.success


def _render_ascii_get1(r: Any, ctx: Tuple[bytes, bool]) -> bytes:
    if type(r) is not Failure and r.rc == 0:
        return _value_line(ctx[0], r, ctx[1]) + A.END
    if _is_miss(r):
        return A.END
    return _ascii_error(r, False)


def _render_ascii_values(results: List[Any], ctx: Tuple[List[bytes], bool]) -> bytes:
    keys, with_cas = ctx
    out = []
    for key, r in zip(keys, results):
        if type(r) is not Failure and r.rc == 0:
            out.append(_value_line(key, r, with_cas))
        elif not _is_miss(r):
            return _ascii_error(r, False)
    out.append(A.END)
    return b"".join(out)


def _ascii_error(f: Failure, noreply: bool) -> bytes:
    """The reply to a bucket error memcached has no specific answer for."""
    if noreply:
        if not isinstance(f.value, CouchbaseError):
            _log.failure("txcb memcached: internal error", f)
        return b""
    e = f.value
    if isinstance(e, TooBigError):
        return A.TOO_LARGE
    if isinstance(e, ArgumentError):
        return b"CLIENT_ERROR %s\r\n" % (_one_line(e.message),)
    if isinstance(e, CouchbaseError):
        return b"SERVER_ERROR %s\r\n" % (_one_line(e.message),)
    _log.failure("txcb memcached: internal error", f)
    return _SERVER_ERROR_INTERNAL


def _render_ascii_store(r: Any, cmd: A.Command) -> bytes:
    if type(r) is not Failure:
        return b"" if cmd.noreply else A.STORED
    return _ascii_store_failure(r, cmd.name, cmd.noreply)


def _ascii_store_failure(r: Failure, name: str, noreply: bool) -> bytes:
    if noreply:
        return _ascii_error(r, True)
    if r.check(KeyExistsError):
        return A.NOT_STORED if name == "add" else A.EXISTS
    if r.check(NotFoundError):
        return A.NOT_FOUND if name == "cas" else A.NOT_STORED
    if r.check(NotStoredError):
        return A.NOT_STORED
    return _ascii_error(r, False)


def _render_ascii_cas0(r: Any, cmd: A.Command) -> bytes:
    if cmd.noreply:
        return b""
    if type(r) is Failure:
        return _ascii_error(r, False)
    return A.EXISTS if r.success else A.NOT_FOUND


def _render_ascii_counter(r: Any, cmd: A.Command) -> bytes:
    if cmd.noreply:
        return _ascii_error(r, True) if type(r) is Failure else b""
    if type(r) is not Failure:
        return A.format_number(r.value)
    if r.check(NotFoundError):
        return A.NOT_FOUND
    if r.check(DeltaBadvalError):
        return _CLIENT_ERROR_NON_NUMERIC
    return _ascii_error(r, False)


def _render_ascii_simple(r: Any, ctx: Tuple[A.Command, bytes]) -> bytes:
    cmd, ok = ctx
    if cmd.noreply:
        return _ascii_error(r, True) if type(r) is Failure else b""
    if type(r) is not Failure:
        return ok
    if r.check(NotFoundError):
        return A.NOT_FOUND
    return _ascii_error(r, False)


def _render_ascii_stats(r: Any, cmd: A.Command) -> bytes:
    if type(r) is Failure:
        return _ascii_error(r, False)
    return A.format_stats(r)


# -- binary rendering ----------------------------------------------------------------

def _response(opcode: int, status: int, opaque: int, cas: int = 0, extras: bytes = b"",
              key: bytes = b"", value: bytes = b"") -> bytes:
    return b"".join((
        _pack_header(B.RES_MAGIC, opcode, len(key), len(extras), 0, status,
                     len(extras) + len(key) + len(value), opaque, cas),
        extras, key, value))


def _error(p: B.Packet, status: int, message: Optional[bytes] = None) -> bytes:
    """An error response: no extras, no CAS; GETK/GETKQ echo the key."""
    key = p.key if p.opcode in (_O.GETK, _O.GETKQ, _O.GATK, _O.GATKQ) else b""
    if message is None:
        message = _MESSAGES.get(status, b"")
    return _response(p.opcode, status, p.opaque, key=key, value=message)


def _status_of(f: Failure) -> Tuple[int, Optional[bytes]]:
    """The memcached status (and message) for a bucket error."""
    e = f.value
    if isinstance(e, CouchbaseError):
        rc = e.rc
        if rc in _MESSAGES:
            return rc, None
        if rc in _TEMPORARY_RCS:
            return _S.ETMPFAIL, _one_line(e.message)
        if rc == RC.VALUE_FORMAT:
            return _S.EINVAL, _one_line(e.message)
        return _S.EINTERNAL, _one_line(e.message)
    _log.failure("txcb memcached: internal error", f)
    return _S.EINTERNAL, None


def _binary_failure(f: Failure, p: B.Packet) -> bytes:
    status, message = _status_of(f)
    return _error(p, status, message)


def _render_binary_value(r: Any, p: B.Packet) -> bytes:
    opcode = p.opcode
    if type(r) is Failure:
        if opcode in B.QUIET and r.check(NotFoundError):
            return b""
        return _binary_failure(r, p)
    if r.rc:
        if opcode in B.QUIET:
            return b""
        return _error(p, r.rc)
    key = p.key if opcode in (_O.GETK, _O.GETKQ, _O.GATK, _O.GATKQ) else b""
    return _response(opcode, 0, p.opaque, r.cas, _U32.pack(r.flags), key, r.raw)


def _render_binary_mutation(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _binary_failure(r, p)
    if p.opcode in B.QUIET:
        return b""
    return _response(p.opcode, 0, p.opaque, r.cas)


def _render_binary_delete(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _binary_failure(r, p)
    if p.opcode in B.QUIET:
        return b""
    return _response(p.opcode, 0, p.opaque)     # memcached: no CAS on DELETE


def _render_binary_counter(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _binary_failure(r, p)
    if p.opcode in B.QUIET:
        return b""
    return _response(p.opcode, 0, p.opaque, r.cas, value=_U64.pack(r.value))


def _render_binary_flush(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _binary_failure(r, p)
    if p.opcode in B.QUIET:
        return b""
    return _response(p.opcode, 0, p.opaque)


def _render_binary_stats(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _binary_failure(r, p)
    out = []
    for name, value in r.items():
        bname = str(name).encode("utf-8", "replace")
        bvalue = _stat_value(value)
        if bvalue is not None and bname:
            out.append(_response(p.opcode, 0, p.opaque, key=bname, value=bvalue))
    out.append(_response(p.opcode, 0, p.opaque))
    return b"".join(out)


# -- shared helpers ------------------------------------------------------------------

_STORE_OPS = {"set": "upsert", "add": "insert", "replace": "replace"}
_BINARY_STORE_OPS = {_O.SET: "upsert", _O.ADD: "insert", _O.REPLACE: "replace"}


def _sync_calls(bucket: Any) -> Tuple[Any, Any]:
    """
    The bucket's synchronous ``get_sync`` / ``store_sync``, when its IBucket
    ``get`` / ``upsert``+``insert``+``replace`` are EmbeddedBucket's own:
    those are exactly the ``*_sync`` call wrapped in a Deferred, so calling it
    directly gives the same result (and the same errors, raised) without the
    Deferred.  (None, None) for any other bucket.
    """
    from txcb.buckets.embedded import EmbeddedBucket
    cls = type(bucket)
    if not issubclass(cls, EmbeddedBucket):
        return None, None
    same = lambda *names: all(  # noqa: E731
        getattr(cls, n, None) is getattr(EmbeddedBucket, n) for n in names)
    get_sync = bucket.get_sync if same("get", "get_sync") else None
    store_sync = bucket.store_sync if same(
        "upsert", "insert", "replace", "_mutate", "store_sync") else None
    return get_sync, store_sync


def _get_and_touch(bucket: Any, key: bytes, ttl: int) -> Deferred:
    """
    memcached's gat: fetch and set the expiry.  The bucket's ``get(ttl=0)`` is
    a plain get, so exptime 0 ("never expire") is a touch, then a get.  A miss
    is a quiet (unsuccessful) result, never an error.
    """
    try:
        if ttl:
            return bucket.get(key, ttl=ttl, quiet=True)
        d = bucket.touch(key, 0)
    except Exception:
        return fail()

    def miss(f: Failure) -> Any:
        f.trap(NotFoundError)
        return ValueResult(key, rc=RC.KEY_ENOENT)

    return d.addCallback(lambda _: bucket.get(key, quiet=True)).addErrback(miss)


_ASCII: Dict[str, Callable[[MemcachedServerProtocol, A.Command], None]] = {
    "get": MemcachedServerProtocol._a_get,
    "gets": MemcachedServerProtocol._a_get,
    "gat": MemcachedServerProtocol._a_get,
    "gats": MemcachedServerProtocol._a_get,
    "set": MemcachedServerProtocol._a_store,
    "add": MemcachedServerProtocol._a_store,
    "replace": MemcachedServerProtocol._a_store,
    "append": MemcachedServerProtocol._a_store,
    "prepend": MemcachedServerProtocol._a_store,
    "cas": MemcachedServerProtocol._a_store,
    "incr": MemcachedServerProtocol._a_arith,
    "decr": MemcachedServerProtocol._a_arith,
    "touch": MemcachedServerProtocol._a_touch,
    "delete": MemcachedServerProtocol._a_delete,
    "flush_all": MemcachedServerProtocol._a_flush_all,
    "version": MemcachedServerProtocol._a_version,
    "verbosity": MemcachedServerProtocol._a_verbosity,
    "stats": MemcachedServerProtocol._a_stats,
    "quit": MemcachedServerProtocol._a_quit,
}

_P = MemcachedServerProtocol
_BINARY: Dict[int, Callable[[MemcachedServerProtocol, B.Packet], None]] = {
    _O.GET: _P._b_get, _O.GETQ: _P._b_get, _O.GETK: _P._b_get, _O.GETKQ: _P._b_get,
    _O.GAT: _P._b_gat, _O.GATQ: _P._b_gat, _O.GATK: _P._b_gat, _O.GATKQ: _P._b_gat,
    _O.SET: _P._b_store, _O.SETQ: _P._b_store, _O.ADD: _P._b_store,
    _O.ADDQ: _P._b_store, _O.REPLACE: _P._b_store, _O.REPLACEQ: _P._b_store,
    _O.APPEND: _P._b_concat, _O.APPENDQ: _P._b_concat,
    _O.PREPEND: _P._b_concat, _O.PREPENDQ: _P._b_concat,
    _O.DELETE: _P._b_delete, _O.DELETEQ: _P._b_delete,
    _O.INCREMENT: _P._b_counter, _O.INCREMENTQ: _P._b_counter,
    _O.DECREMENT: _P._b_counter, _O.DECREMENTQ: _P._b_counter,
    _O.TOUCH: _P._b_touch,
    _O.GET_LOCKED: _P._b_lock, _O.UNLOCK_KEY: _P._b_unlock,
    _O.NOOP: _P._b_noop, _O.VERSION: _P._b_version, _O.VERBOSITY: _P._b_verbosity,
    _O.FLUSH: _P._b_flush, _O.FLUSHQ: _P._b_flush,
    _O.QUIT: _P._b_quit, _O.QUITQ: _P._b_quit,
    _O.STAT: _P._b_stat,
    _O.SASL_LIST_MECHS: _P._b_sasl_list_mechs,
    _O.SASL_AUTH: _P._b_sasl_auth, _O.SASL_STEP: _P._b_sasl_auth,
}
del _P


# -- the factory ---------------------------------------------------------------------

class _TooManyConnections(Protocol):
    """Answers a connection over the limit as memcached does, then hangs up."""

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(TOO_MANY_CONNECTIONS)
        transport.loseConnection()


if TYPE_CHECKING:
    _ProtocolFactory = Factory[Protocol]
else:  # Factory is subscriptable only in recent Twisted releases
    _ProtocolFactory = Factory


class MemcachedServerFactory(_ProtocolFactory):
    """
    Serves one IBucket over the memcached ASCII and binary protocols.

    :param bucket: any IBucket provider.
    :param stats: connection counters and the connection limit, shared with
        the other endpoints serving the same bucket (netstring ones too).
    :param credentials: ``{user: password}`` (bytes) to require SASL PLAIN
        (binary) / memcached ``-Y`` style (ASCII) authentication, or None.
    :param max_inflight: bucket calls one connection may have pending before
        the server stops reading from it.
    :param clock: the ``IReactorTime`` of a delayed ``flush_all`` when the
        bucket has no ``clock`` of its own, and of the ``time`` stat.
    """

    protocol = MemcachedServerProtocol

    def __init__(self, bucket: Any, stats: Optional[ServerStats] = None,
                 credentials: Optional[Dict[bytes, bytes]] = None,
                 max_inflight: int = 1024, clock: Any = None) -> None:
        if max_inflight < 1:
            raise ValueError("max_inflight must be positive")
        self.bucket = bucket
        self.stats = stats if stats is not None else ServerStats()
        self.credentials = dict(credentials) if credentials is not None else None
        self.max_inflight = max_inflight
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.max_value_size = getattr(bucket, "max_value_size", DEFAULT_MAX_VALUE_SIZE)
        # Key and extras on top of the largest value: a longer body is refused
        # from its header alone, before any of it is buffered.
        self.max_body = self.max_value_size + MAX_KEY_LEN + 32
        self.verbosity = 0
        self._delayed_flush: Any = None

    def buildProtocol(self, addr: Any) -> Optional[Protocol]:
        if not self.stats.admit():
            _log.warn("txcb memcached: refusing {addr}: {n} connections open already",
                      addr=str(addr), n=self.stats.connections)
            return _TooManyConnections()
        return Factory.buildProtocol(self, addr)

    def stopFactory(self) -> None:
        self._cancel_delayed_flush()

    def check_credentials(self, user: bytes, password: bytes) -> bool:
        creds = self.credentials
        if creds is None:
            return True
        expected = creds.get(user)
        # Compare in constant time, even for an unknown user.
        ok = hmac.compare_digest(password, expected if expected is not None else b"\0" * 64)
        return ok and expected is not None

    # -- flush_all ---------------------------------------------------------------------

    def flush(self, delay: int = 0) -> Deferred:
        """
        Flush the bucket now (``delay <= 0``) or once ``delay`` has passed on
        the bucket's clock (a relative number of seconds up to 30 days, else
        a Unix time, as memcached reads it).  A later flush replaces a
        pending delayed one.  Fires once the flush is done or scheduled.
        """
        self._cancel_delayed_flush()
        if delay > 0:
            clock = getattr(self.bucket, "clock", None) or self.clock
            if delay > THIRTY_DAYS:
                delay = delay - clock.seconds()
            if delay > 0:
                self._delayed_flush = clock.callLater(delay, self._run_delayed_flush)
                return succeed(None)
        return self.bucket.flush()

    def _run_delayed_flush(self) -> None:
        self._delayed_flush = None

        def failed(f: Failure) -> None:
            _log.failure("txcb memcached: delayed flush_all failed", f)
        try:
            self.bucket.flush().addErrback(failed)
        except Exception:
            failed(Failure())

    def _cancel_delayed_flush(self) -> None:
        call, self._delayed_flush = self._delayed_flush, None
        if call is not None and call.active():
            call.cancel()

    # -- stats ---------------------------------------------------------------------------

    def general_stats(self) -> Deferred:
        """Fires ``stats``' reply as a dict: memcached's names first."""
        return self.bucket.stats().addCallback(self._general_stats)

    def _general_stats(self, b: Dict[str, Any]) -> Dict[str, Any]:
        conns = self.stats
        s: Dict[str, Any] = {
            "pid": os.getpid(),
            "uptime": b.get("uptime", 0),
            "time": int(self.clock.seconds()),
            "version": VERSION,
            "pointer_size": struct.calcsize("P") * 8,
            "threads": 1,
            "curr_connections": conns.connections,
            "total_connections": conns.total_connections,
            "rejected_connections": conns.rejected_connections,
            "max_connections": conns.max_connections or 0,
            "curr_items": b.get("items", 0),
            "bytes": b.get("bytes", 0),
            "cmd_get": b.get("op_get", 0),
            "cmd_set": sum(b.get("op_" + op, 0) for op in (
                "upsert", "insert", "replace", "append", "prepend")),
            "cmd_touch": b.get("op_touch", 0),
            "cmd_flush": b.get("op_flush", 0),
            "get_hits": b.get("hits", 0),
            "get_misses": b.get("misses", 0),
            "evictions": 0,
            "item_size_max": self.max_value_size,
        }
        # Then the bucket's own counters, under their own names.
        for name, value in b.items():
            if name not in s and name not in ("items", "hits", "misses", "connections") \
                    and _stat_value(value) is not None and " " not in str(name):
                s[name] = value
        return s

    def settings_stats(self) -> Dict[str, Any]:
        """``stats settings``: the limits this endpoint runs with."""
        return {
            "maxconns": self.stats.max_connections or 0,
            "item_size_max": self.max_value_size,
            "max_inflight": self.max_inflight,
            "verbosity": self.verbosity,
            "binding_protocol": "auto-negotiate",
            "auth_enabled_sasl": "yes" if self.credentials is not None else "no",
            "auth_enabled_ascii": "yes" if self.credentials is not None else "no",
            "cas_enabled": "yes",
            "flush_enabled": "yes",
            "evictions": "off",
            "key_max_length": MAX_KEY_LEN,
        }
