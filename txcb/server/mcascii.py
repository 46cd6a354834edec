"""
The memcached ASCII protocol over a bucket: one session per connection.

Bytes in go through the one parser (:class:`txcb.wire.mcascii.Parser`),
which cuts every complete command out of a read and calls the session's
method for it (:data:`_METHODS`) with its fields; the method calls the
bucket (synchronously when it provides ISyncBucket) and renders its reply
with :mod:`txcb.wire.mcascii`'s formatting; the replies of one read leave in
one write.  While replies back up, a command is held in the reply queue's
backlog (``conn.hold``) and runs, in order, once they drain.  The reply to a
get of several keys, or to a gat, is a stream (:class:`_Values`): made a
part at a time as the transport drains, so that what the server holds for
it is one part, however many values the client asks for.
"""

from __future__ import annotations

import time
from collections import deque
from typing import Any, Callable, Deque, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.errors import (
    RC, ArgumentError, CouchbaseError, DeltaBadvalError, KeyExistsError, NoMemoryError,
    NotFoundError, NotStoredError, TemporaryFailError, TooBigError, WouldBlock)
from txcb.formats import Encoded
from txcb.limits import MAX_KEY_LEN
from txcb.results import ValueResult
from txcb.server.mcsession import (
    EXPIRED_TTL, VERSION, Session, get_and_touch, one_line, status_of)
from txcb.server.mcauth import CLIENT_ERROR_UNAUTHENTICATED
from txcb.server.mcreplies import DONE, MORE, WAIT, WRITE_CHUNK
from txcb.wire import mcascii as A

__all__ = ["AsciiSession"]

_log = Logger()

_CLIENT_ERROR_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
_SERVER_ERROR_INTERNAL = b"SERVER_ERROR internal error\r\n"
_VERSION_REPLY = b"VERSION %s\r\n" % (VERSION.encode("ascii"),)
_STORE_OPS = {"set": "upsert", "add": "insert", "replace": "replace"}
_format_one_hit = A.format_one_hit
_format_hit = A.format_hit
_END = A.END
_STORED = A.STORED
#: Keys of one multi-get a Deferred bucket is asked for ahead of its reply.
_FETCH_AHEAD = 16


def _ascii_ttl(exptime: int) -> int:
    """memcached's ASCII exptime as a bucket TTL (negative: expired now)."""
    return EXPIRED_TTL if exptime < 0 else exptime


class AsciiSession(Session):
    """One ASCII connection: the parser, and a handler per command it calls."""

    name = "ascii"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        #: The parser's table once authenticated: a bound method per command.
        self.handlers: Dict[str, Callable[..., None]] = {
            name: getattr(self, method) for name, method in _METHODS.items()}
        # Before login, every command reaches the login step as a Command (a
        # table made only for a connection that must log in).
        table = self.handlers if self.auth.done else \
            A.EventRecorder(self._unauthenticated).handlers
        # control_keys: memcached takes any byte but space, CR, LF (and NUL)
        # in a key, and clients such as memcaslap use them.
        self.parser = A.Parser(table, self._refused, max_value=self.factory.max_value_size,
                               max_key=MAX_KEY_LEN, control_keys=True)
        self._feed = self.parser.feed
        self._end_read = self.conn.end_read
        self._get_sync: Any = self.bucket.get_sync if self.sync else None
        self._store_sync: Any = self.bucket.store_sync if self.sync else None
        if self.observer is None:
            self.data_received = self._unobserved_read  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        """One read: every complete command in it, answered in one write."""
        self.started = time.perf_counter()
        self._feed(data)
        self._end_read()

    def _unobserved_read(self, data: bytes) -> None:
        """:meth:`data_received` with no observer: no start time to take."""
        self._feed(data)
        self._end_read()

    def handle(self, held: Tuple[Callable[..., None], Tuple[Any, ...]]) -> None:
        """Run a command held while output was backed up (``conn.hold``)."""
        self.conn.blocked = False
        held[0](*held[1])

    def internal_error(self, ctx: Any) -> bytes:
        return _SERVER_ERROR_INTERNAL

    def _failed(self, noreply: bool) -> None:
        """A handler raised: log it, and answer as memcached's internal error."""
        _log.failure("txcb memcached: internal error handling a command")
        if not noreply:
            self.reply(_SERVER_ERROR_INTERNAL)

    def _refused(self, response: bytes, close: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self._refused, (response, close))
            return
        if response:
            self.reply(response)
        if close:
            _log.info("txcb memcached: closing {peer} after a refused line",
                      peer=self.auth.peer)
            self.close()

    def _unauthenticated(self, ev: Any) -> None:
        """A command before login (an :class:`A.Command`, from the recorder)."""
        conn = self.conn
        if conn.blocked:
            conn.hold(self._unauthenticated, (ev,))
        elif ev.name == "quit":
            self.close()
        elif ev.name == "set":
            self.reply(self.auth.ascii_login(ev))
            if self.auth.done:
                self.parser.handlers = self.handlers
        elif not ev.noreply:
            self.reply(CLIENT_ERROR_UNAUTHENTICATED)

    # -- handlers: the parser calls them with a command's fields ------------------------

    def get(self, keys: List[bytes], with_cas: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.get, (keys, with_cas))
            return
        try:
            if len(keys) != 1:
                self._multi_get(keys, with_cas)
            elif self.sync:
                key = keys[0]
                try:
                    r = self._get_sync(key, 0, True)
                except WouldBlock:
                    self._get_later(key, with_cas)
                    return
                except Exception:
                    r = Failure()
                else:
                    if self.observer is None:
                        self.reply(_END if r.rc else _format_one_hit(
                            key, r.flags, r.raw, r.cas if with_cas else None))
                        return
                self.done("get", r, _render_get1, (key, with_cas))
            else:
                self._get_later(keys[0], with_cas)
        except Exception:
            self._failed(False)

    def _get_later(self, key: bytes, with_cas: bool) -> None:
        """A get of one key through the IBucket call."""
        self.call_later("get", _render_get1, (key, with_cas), lambda b: b.get(key, quiet=True))

    def _multi_get(self, keys: List[bytes], with_cas: bool) -> None:
        bucket = self.bucket
        stream: _Values
        if self.sync:
            stream = _SyncValues(self, keys, with_cas, bucket.get_sync, 0,
                                 lambda k: bucket.get(k, quiet=True))
        else:
            stream = _DeferredValues(self, keys, with_cas, lambda k: bucket.get(k, quiet=True))
        self.conn.stream(stream)

    def gat(self, keys: List[bytes], exptime: int, with_cas: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.gat, (keys, exptime, with_cas))
            return
        try:
            if not keys:
                self.reply(_END)
                return
            ttl = _ascii_ttl(exptime)
            bucket = self.bucket
            stream: _Values
            if self.sync:
                stream = _SyncValues(self, keys, with_cas,
                                     lambda k, t, _q: _get_and_touch_sync(bucket, k, t), ttl,
                                     lambda k: get_and_touch(bucket, k, ttl))
            else:
                stream = _DeferredValues(self, keys, with_cas,
                                         lambda k: get_and_touch(bucket, k, ttl))
            conn.stream(stream)
        except Exception:
            self._failed(False)

    def store(self, name: str, key: bytes, flags: int, exptime: int, data: bytes,
              cas: Optional[int], noreply: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.store, (name, key, flags, exptime, data, cas, noreply))
            return
        try:
            op = _STORE_OPS.get(name)
            if op is None:
                self._store_other(name, key, flags, exptime, data, cas, noreply)
                return
            value = Encoded(data, flags)
            ttl = EXPIRED_TTL if exptime < 0 else exptime
            if self.sync:
                try:
                    self._store_sync(op, key, value, 0, ttl)
                except WouldBlock:
                    self._store_later(op, key, value, ttl, (name, noreply))
                    return
                except Exception:
                    r: Any = Failure()
                else:
                    if self.observer is None:
                        if not noreply:
                            self.reply(_STORED)
                        return
                    r = None
                self.done(op, r, _render_store, (name, noreply))
                return
            self._store_later(op, key, value, ttl, (name, noreply))
        except Exception:
            self._failed(noreply)

    def _store_later(self, op: str, key: bytes, value: Encoded, ttl: int,
                     ctx: Tuple[str, bool]) -> None:
        """A set, add or replace (``op``: upsert, insert, replace) through the IBucket call."""
        self.call_later(op, _render_store, ctx, lambda b: getattr(b, op)(key, value, ttl=ttl))

    def _store_other(self, name: str, key: bytes, flags: int, exptime: int, data: bytes,
                     cas: Optional[int], noreply: bool) -> None:
        """cas, append and prepend."""
        ctx = (name, noreply)
        if name != "cas":
            self.call(name, _render_store, ctx, lambda b: b.concat_sync(name, key, data),
                      lambda b: getattr(b, name)(key, data))
        elif not cas:
            # No item ever has CAS 0: nothing to store; EXISTS or NOT_FOUND.
            self.call("get", _render_cas0, ctx, lambda b: b.get_sync(key, 0, True),
                      lambda b: b.get(key, quiet=True))
        else:
            value = Encoded(data, flags)
            ttl = _ascii_ttl(exptime)
            self.call("replace", _render_store, ctx,
                      lambda b: b.store_sync("replace", key, value, cas, ttl),
                      lambda b: b.replace(key, value, cas=cas, ttl=ttl))

    def arith(self, name: str, key: bytes, delta: int, noreply: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.arith, (name, key, delta, noreply))
            return
        try:
            if name != "incr":
                delta = -delta
            self.call("counter", _render_counter, noreply,
                      lambda b: b.counter_sync(key, delta),
                      lambda b: b.counter(key, delta=delta))
        except Exception:
            self._failed(noreply)

    def touch(self, key: bytes, exptime: int, noreply: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.touch, (key, exptime, noreply))
            return
        try:
            ttl = _ascii_ttl(exptime)
            self.call("touch", _render_simple, (noreply, A.TOUCHED),
                      lambda b: b.touch_sync(key, ttl), lambda b: b.touch(key, ttl))
        except Exception:
            self._failed(noreply)

    def delete(self, key: bytes, noreply: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.delete, (key, noreply))
            return
        try:
            self.call("remove", _render_simple, (noreply, A.DELETED),
                      lambda b: b.remove_sync(key), lambda b: b.remove(key))
        except Exception:
            self._failed(noreply)

    def flush_all(self, exptime: int, args: List[bytes], noreply: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.flush_all, (exptime, args, noreply))
            return
        try:
            d = self._deferred(lambda b: self.factory.flush(exptime))
            self.later("flush", d, _render_simple, (noreply, A.OK))
        except Exception:
            self._failed(noreply)

    def version(self, args: List[bytes]) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.version, (args,))
            return
        self.reply(_VERSION_REPLY)

    def verbosity(self, args: List[bytes], noreply: bool) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.verbosity, (args, noreply))
            return
        self.factory.verbosity = int(args[0])
        if not noreply:
            self.reply(A.OK)

    def stats(self, args: List[bytes]) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.stats, (args,))
            return
        try:
            if not args:
                d = self._deferred(lambda b: self.factory.general_stats())
            elif args == [b"settings"]:
                d = self._deferred(lambda b: succeed(self.factory.settings_stats()))
            else:
                # memcached answers ERROR to a statistics group it does not know
                # (and "stats noreply": stats takes no noreply).
                self.reply(A.ERROR)
                return
            self.later("stats", d, _render_stats, None)
        except Exception:
            self._failed(False)

    def quit(self, args: List[bytes]) -> None:
        conn = self.conn
        if conn.blocked:
            conn.hold(self.quit, (args,))
            return
        self.close()

    # -- Deferreds ----------------------------------------------------------------------

    def _deferred(self, call: Callable[[Any], Any]) -> Any:
        """``call(bucket)``, a Deferred; its synchronous exception a failed one."""
        try:
            return call(self.bucket)
        except Exception:
            return fail()


class _Values:
    """
    The reply to a get of several keys or to a gat: a VALUE item per hit,
    then END, made (:meth:`step`) a part of about WRITE_CHUNK bytes at a
    time as the transport drains (``conn.stream``), each key fetched as its
    part is made.  A key's error ends the reply with the error line: alone if
    nothing of the reply went out yet (as when the whole reply was made at
    once), else after the values before it.
    """

    __slots__ = ("conn", "observer", "started", "keys", "with_cas", "fetch", "ttl", "sent",
                 "status", "over")

    def __init__(self, session: AsciiSession, keys: List[bytes], with_cas: bool,
                 fetch: Callable[..., Any], ttl: int = 0) -> None:
        self.conn = session.conn
        self.observer = session.observer
        self.started = session.started
        self.keys = iter(keys)  # the keys not fetched yet
        self.with_cas = with_cas
        self.fetch = fetch
        self.ttl = ttl
        self.sent = False       # a part went out
        self.status = 0         # the observer's: the first miss's or error's rc
        self.over = False

    def _take(self, key: bytes, r: Any, parts: List[bytes]) -> int:
        """Add a key's result to ``parts``: the bytes added, or -1 for an error."""
        if type(r) is not Failure and r.rc == 0:
            part = _format_hit(key, r.flags, r.raw, r.cas if self.with_cas else None)
            parts.append(part)
            return len(part)
        if not self.status:
            self.status = status_of(r)
        return 0 if _is_miss(r) else -1

    def _part(self, parts: List[bytes], write: Callable[[bytes], None], last: bool) -> int:
        if last:
            parts.append(_END)
        if parts:
            write(parts[0] if len(parts) == 1 else b"".join(parts))
            self.sent = True
        if not last:
            return MORE
        self._finish()
        return DONE

    def _failed(self, f: Failure, parts: List[bytes], write: Callable[[bytes], None]) -> int:
        error = _ascii_error(f, False)
        if self.sent:
            parts.append(error)
            write(b"".join(parts))
        else:
            write(error)
        self._finish()
        return DONE

    def _finish(self) -> None:
        self.stop()
        if self.observer is not None:
            self.observer.request_done("get", self.status, self.started)

    def stop(self) -> None:
        """Make nothing more; drop the keys."""
        self.over = True
        self.keys = iter(())


class _SyncValues(_Values):
    """
    :class:`_Values` from an ISyncBucket: ``fetch(key, ttl, True)`` is the
    result.  A key whose fetch raises WouldBlock (its value is not resident)
    is asked for with ``later(key)``, its IBucket call: the part made before
    it goes out, the stream waits (WAIT) for that result, which starts the
    next part, and the keys after it are fetched at once again.
    """

    __slots__ = ("later", "pending", "waiting")

    def __init__(self, session: AsciiSession, keys: List[bytes], with_cas: bool,
                 fetch: Callable[..., Any], ttl: int,
                 later: Callable[[bytes], Deferred]) -> None:
        super().__init__(session, keys, with_cas, fetch, ttl)
        self.later = later
        #: (key, [result or Failure] once it is in, its Deferred): the key asked for later.
        self.pending: Optional[Tuple[bytes, List[Any], Deferred]] = None
        self.waiting = False    # step said WAIT: the pending key's result is not in

    def step(self, write: Callable[[bytes], None]) -> int:
        if self.over:
            return DONE
        parts: List[bytes] = []
        pending = self.pending
        if pending is not None:
            key, box, _ = pending
            if not box:
                self.waiting = True
                return WAIT
            self.pending = None
            if self._take(key, box[0], parts) < 0:
                return self._failed(box[0], parts, write)
        fetch, ttl = self.fetch, self.ttl
        got: List[bytes] = []
        results: List[Any] = []
        size = 0
        last = True
        # A part's results first, then their rendering: two short loops run
        # faster than one that alternates between the bucket and the format.
        for key in self.keys:
            try:
                r = fetch(key, ttl, True)
            except WouldBlock:
                self._ask(key)
                last = False
                break
            except Exception:
                r = Failure()
            got.append(key)
            results.append(r)
            if type(r) is not Failure and r.rc == 0:
                size += len(r.raw)
                if size >= WRITE_CHUNK:
                    last = False
                    break
        with_cas = self.with_cas
        for key, r in zip(got, results):
            if type(r) is not Failure and r.rc == 0:    # a hit: _take's first case, inline
                parts.append(_format_hit(key, r.flags, r.raw, r.cas if with_cas else None))
            elif self._take(key, r, parts) < 0:
                return self._failed(r, parts, write)
        return self._part(parts, write, last)

    def _ask(self, key: bytes) -> None:
        """Ask for ``key`` through its IBucket call: the stream's next part starts with it."""
        box: List[Any] = []
        try:
            d = self.later(key)
        except Exception:
            d = fail()
        d.addBoth(box.append)
        self.pending = (key, box, d)
        if not box:
            d.addCallback(self._arrived, box)

    def _arrived(self, _: Any, box: List[Any]) -> None:
        pending = self.pending
        if self.waiting and pending is not None and pending[1] is box:
            self.waiting = False
            self.conn.stream_ready(self)

    def stop(self) -> None:
        """Dropped (the connection is lost, or a value failed): cancel what is asked."""
        super().stop()
        pending, self.pending = self.pending, None
        self.waiting = False
        if pending is not None and not pending[1]:
            pending[2].cancel()


class _DeferredValues(_Values):
    """
    :class:`_Values` from IBucket's Deferreds (``fetch(key)``): at most
    _FETCH_AHEAD keys are asked for ahead of the part being made.
    """

    __slots__ = ("ahead", "waiting")

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        #: (key, [result or Failure] once it is in, its Deferred), in key order.
        self.ahead: Deque[Tuple[bytes, List[Any], Deferred]] = deque()
        self.waiting = False    # step said WAIT: the first key's result is not in
        self._fetch_ahead()

    def _fetch_ahead(self) -> None:
        ahead = self.ahead
        if len(ahead) >= _FETCH_AHEAD:
            return
        for key in self.keys:
            box: List[Any] = []
            try:
                d = self.fetch(key)
            except Exception:
                d = fail()
            d.addBoth(box.append)
            ahead.append((key, box, d))
            if not box:
                d.addCallback(self._arrived, box)
            if len(ahead) >= _FETCH_AHEAD:
                return

    def _arrived(self, _: Any, box: List[Any]) -> None:
        ahead = self.ahead
        if self.waiting and ahead and ahead[0][1] is box:
            self.waiting = False
            self.conn.stream_ready(self)

    def step(self, write: Callable[[bytes], None]) -> int:
        if self.over:
            return DONE
        ahead, take = self.ahead, self._take
        parts: List[bytes] = []
        size = 0
        while ahead and ahead[0][1] and size < WRITE_CHUNK:
            key, box, _ = ahead.popleft()
            added = take(key, box[0], parts)
            if added < 0:
                return self._failed(box[0], parts, write)
            size += added
            self._fetch_ahead()
        if parts or not ahead:
            return self._part(parts, write, not ahead)
        self.waiting = True
        return WAIT

    def stop(self) -> None:
        """Dropped (the connection is lost, or a value failed): cancel what is asked."""
        super().stop()
        asked = [d for _, box, d in self.ahead if not box]
        self.ahead.clear()
        self.waiting = False
        for d in asked:
            d.cancel()


def _get_and_touch_sync(bucket: Any, key: bytes, ttl: int) -> Any:
    """
    :func:`get_and_touch` on an ISyncBucket: the result, or a Failure.
    WouldBlock goes up, and the IBucket call then does the whole of it (after
    a touch, a touch to exptime 0 again: the same expiry).
    """
    try:
        if ttl:
            return bucket.get_sync(key, ttl, True)
        try:
            bucket.touch_sync(key, 0)
        except NotFoundError:
            return ValueResult(key, rc=RC.KEY_ENOENT)
        return bucket.get_sync(key, 0, True)
    except WouldBlock:
        raise
    except Exception:
        return Failure()


#: The session's method for each command the parser calls back.
_METHODS: Dict[str, str] = {
    "get": "get", "gets": "get", "gat": "gat", "gats": "gat",
    "set": "store", "add": "store", "replace": "store", "append": "store",
    "prepend": "store", "cas": "store", "incr": "arith", "decr": "arith",
    "touch": "touch", "delete": "delete", "flush_all": "flush_all",
    "version": "version", "verbosity": "verbosity", "stats": "stats", "quit": "quit",
}


# -- rendering: (result or Failure, context) -> reply bytes ------------------------

def _is_miss(r: Any) -> bool:
    """A get result that reads as a miss (a locked item cannot be touched)."""
    if type(r) is Failure:
        return r.check(NotFoundError, TemporaryFailError) is not None
    return not r.success


def _render_get1(r: Any, ctx: Tuple[bytes, bool]) -> bytes:
    if type(r) is not Failure and r.rc == 0:
        return _format_one_hit(ctx[0], r.flags, r.raw, r.cas if ctx[1] else None)
    if _is_miss(r):
        return _END
    return _ascii_error(r, False)


def _ascii_error(f: Failure, noreply: bool) -> bytes:
    """The reply to a bucket error memcached has no specific answer for."""
    if noreply:
        if not isinstance(f.value, CouchbaseError):
            _log.failure("txcb memcached: internal error", f)
        return b""
    e = f.value
    if isinstance(e, TooBigError):
        return A.TOO_LARGE
    if isinstance(e, NoMemoryError):    # memcached's words to incr/decr
        return A.OUT_OF_MEMORY
    if isinstance(e, ArgumentError):
        return b"CLIENT_ERROR %s\r\n" % (one_line(e.message),)
    if isinstance(e, CouchbaseError):
        return b"SERVER_ERROR %s\r\n" % (one_line(e.message),)
    _log.failure("txcb memcached: internal error", f)
    return _SERVER_ERROR_INTERNAL


def _render_store(r: Any, ctx: Tuple[str, bool]) -> bytes:
    name, noreply = ctx
    if type(r) is not Failure:
        return b"" if noreply else _STORED
    if noreply:
        return _ascii_error(r, True)
    if r.check(KeyExistsError):
        return A.NOT_STORED if name == "add" else A.EXISTS
    if r.check(NotFoundError):
        return A.NOT_FOUND if name == "cas" else A.NOT_STORED
    if r.check(NotStoredError):
        return A.NOT_STORED
    if r.check(NoMemoryError):
        return A.OUT_OF_MEMORY_STORING
    return _ascii_error(r, False)


def _render_cas0(r: Any, ctx: Tuple[str, bool]) -> bytes:
    if ctx[1]:
        return b""
    if type(r) is Failure:
        return _ascii_error(r, False)
    return A.EXISTS if r.success else A.NOT_FOUND


def _render_counter(r: Any, noreply: bool) -> bytes:
    if noreply:
        return _ascii_error(r, True) if type(r) is Failure else b""
    if type(r) is not Failure:
        return A.format_number(r.value)
    if r.check(NotFoundError):
        return A.NOT_FOUND
    if r.check(DeltaBadvalError):
        return _CLIENT_ERROR_NON_NUMERIC
    return _ascii_error(r, False)


def _render_simple(r: Any, ctx: Tuple[bool, bytes]) -> bytes:
    noreply, ok = ctx
    if noreply:
        return _ascii_error(r, True) if type(r) is Failure else b""
    if type(r) is not Failure:
        return ok
    if r.check(NotFoundError):
        return A.NOT_FOUND
    return _ascii_error(r, False)


def _render_stats(r: Any, ctx: None) -> bytes:
    if type(r) is Failure:
        return _ascii_error(r, False)
    return A.format_stats(r)
