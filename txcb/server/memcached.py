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

The module layout: this module holds the factory and the protocol that
reads a connection's first byte; :mod:`txcb.server.mcascii` and
:mod:`txcb.server.mcbinary` the two protocol sessions (one parser or decoder,
one handler per command); :mod:`txcb.server.mcsession` what they share (the
bucket is called through its :class:`~txcb.interfaces.ISyncBucket` calls when
it provides them, decided once per connection, else through IBucket's
Deferreds); :mod:`txcb.server.mcreplies` the ordered replies and flow
control; :mod:`txcb.server.mcauth` authentication.
"""

from __future__ import annotations

import os
import struct
from typing import Any, Dict, List, Optional, Set

from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.limits import MAX_KEY_LEN, THIRTY_DAYS, max_value_size
from txcb.server.core import ServerStats, ServingFactory
from txcb.server.mcascii import AsciiSession
from txcb.server.mcauth import Authenticator, check_credentials
from txcb.server.mcbinary import DEFAULT_LOCK_TIME, BinarySession
from txcb.server.mcreplies import OrderedReplies, Render
from txcb.server.mcsession import EXPIRED_TTL, VERSION, Session, stat_value
from txcb.wire.mcbinary import REQ_MAGIC

__all__ = ["MemcachedServerFactory", "MemcachedServerProtocol", "VERSION",
           "load_auth_file", "EXPIRED_TTL", "DEFAULT_LOCK_TIME", "TOO_MANY_CONNECTIONS"]

#: What memcached writes to a connection over its limit before closing it.
TOO_MANY_CONNECTIONS = b"ERROR Too many open connections\r\n"

_log = Logger()


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


class MemcachedServerProtocol(OrderedReplies):
    """
    One memcached client connection: ASCII or binary, decided by its first
    byte, which picks the session (:class:`AsciiSession` or
    :class:`BinarySession`) that reads the rest.  Replies and flow control
    are :class:`~txcb.server.mcreplies.OrderedReplies`'.

    The bucket's Deferreds it waits for are in ``_waiting``: when the
    connection is lost each is cancelled and the session lets go of the
    connection (:meth:`~txcb.server.mcsession.Session.detach`), so nothing
    refers to the protocol any more and its memory is freed by reference
    counting, not by the garbage collector.
    """

    factory: "MemcachedServerFactory"
    #: Set by every read while --idle-timeout is on (core.IdleSweeper).
    idle_seen = False
    _read: Any = None  # the session's data_received, behind _idle_read

    def connectionMade(self) -> None:
        f = self.factory
        f.stats.connections += 1
        f.stats.total_connections += 1
        self.bucket = f.bucket
        transport = self.transport
        assert transport is not None  # connectionMade: connected
        self.auth = Authenticator(f.credentials, str(transport.getPeer()))
        #: "ascii" or "binary" once the first byte is in.
        self.protocol_name: Optional[str] = None
        self.session: Optional[Session] = None
        self._waiting: Set[Deferred] = set()
        self.start_replies(f.max_inflight)
        if f.idle is not None:
            f.idle.add(self)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        if self._gone:
            return
        f = self.factory
        f.stats.connections -= 1
        self.stop_replies()
        if f.idle is not None:
            f.idle.discard(self)
        waiting, self._waiting = self._waiting, set()
        for d in waiting:
            d.cancel()
        # Let go of every bound method that refers back to this protocol.
        session, self.session = self.session, None
        if session is not None:
            session.detach()
        self.__dict__.pop("dataReceived", None)
        self._read = None
        self.handle = _no_event          # type: ignore[method-assign]
        self.internal_error = _no_reply  # type: ignore[method-assign]
        self._send = _no_reply

    # -- what the bucket is still to answer ----------------------------------------

    def submit(self, d: Deferred, render: Render, ctx: Any) -> None:
        if not d.called:
            self._wait_for(d)
        OrderedReplies.submit(self, d, render, ctx)

    def _wait_for(self, d: Deferred) -> None:
        self._waiting.add(d)
        d.addBoth(self._settled, d)

    def _settled(self, result: Any, d: Deferred) -> Any:
        self._waiting.discard(d)
        return result

    def _completed(self, _: Any, box: List[Any], slot: Any, render: Render,
                   ctx: Any) -> None:
        if self._gone:  # cancelled by connectionLost: nobody to render it for
            self._slots.clear()
            return
        OrderedReplies._completed(self, _, box, slot, render, ctx)

    # -- --idle-timeout (core.IdleSweeper) ------------------------------------------

    def idle_busy(self) -> bool:
        """Requests are still being answered (or wait for the client to read)."""
        return bool(self._slots or self._backlog or self._out_full)

    def idle_peer(self) -> str:
        return self.auth.peer

    def idle_close(self) -> None:
        self.close()

    def _idle_read(self, data: bytes) -> None:
        self.idle_seen = True
        self._read(data)

    @property
    def authenticated(self) -> bool:
        return self.auth.done

    def dataReceived(self, data: bytes) -> None:
        """The first read: choose the protocol; its session reads from now on."""
        if not data or self.closing:
            return
        self.idle_seen = True
        kind = BinarySession if data[0] == REQ_MAGIC else AsciiSession
        session = kind(self, self.factory, self.auth)
        self.session = session
        self.protocol_name = session.name
        self.handle = session.handle  # type: ignore[method-assign]
        self.internal_error = session.internal_error  # type: ignore[method-assign]
        if self.factory.idle is None:  # no per-read work at all
            self.dataReceived = session.data_received  # type: ignore[method-assign]
        else:
            self._read = session.data_received
            self.dataReceived = self._idle_read  # type: ignore[method-assign]
        session.data_received(data)


def _no_event(event: Any) -> Optional[bytes]:
    """A lost connection's handler: nothing runs."""
    return None


def _no_reply(ctx: Any) -> Any:
    """A lost connection's reply and writer: nothing is sent."""
    return b""


# -- the factory ---------------------------------------------------------------------

class _TooManyConnections(Protocol):
    """Answers a connection over the limit as memcached does, then hangs up."""

    def connectionMade(self) -> None:
        transport = self.transport
        assert transport is not None
        transport.write(TOO_MANY_CONNECTIONS)
        transport.loseConnection()


class MemcachedServerFactory(ServingFactory):
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
    #: An IRequestObserver told of every answered request, or None (then no
    #: per-request work is done for it).  A connection reads it when it opens.
    observer: Any = None

    def __init__(self, bucket: Any, stats: Optional[ServerStats] = None,
                 credentials: Optional[Dict[bytes, bytes]] = None,
                 max_inflight: int = 1024, clock: Any = None) -> None:
        ServingFactory.__init__(self, stats, credentials, max_inflight, clock, _log,
                                "txcb memcached")
        self.bucket = bucket
        self.max_value_size = max_value_size(bucket)
        # Key and extras on top of the largest value: a longer body is refused
        # from its header alone, before any of it is buffered.
        self.max_body = self.max_value_size + MAX_KEY_LEN + 32
        self.verbosity = 0
        self._delayed_flush: Any = None

    def refused(self) -> Protocol:
        """Over the connection limit: memcached's error line, then the hang-up."""
        return _TooManyConnections()

    def stopFactory(self) -> None:
        self._cancel_delayed_flush()

    def check_credentials(self, user: bytes, password: bytes) -> bool:
        return check_credentials(self.credentials, user, password)

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
            "evictions": b.get("evictions", 0),
            "limit_maxbytes": b.get("quota", 0),
            "item_size_max": self.max_value_size,
        }
        # Then the bucket's own counters, under their own names.
        for name, value in b.items():
            if name not in s and name not in ("items", "hits", "misses", "connections") \
                    and stat_value(value) is not None and " " not in str(name):
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
