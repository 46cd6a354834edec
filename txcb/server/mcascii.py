"""
The memcached ASCII protocol over a bucket: one session per connection.

Bytes in go through the one parser (:class:`txcb.wire.mcascii.Parser`),
which cuts every complete command out of a read; each command has one
handler (:data:`_HANDLERS`), which calls the bucket (synchronously when it
provides ISyncBucket) and renders its reply with :mod:`txcb.wire.mcascii`'s
formatting; the replies of one read leave in one write.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.errors import (
    RC, ArgumentError, CouchbaseError, DeltaBadvalError, KeyExistsError, NotFoundError,
    NotStoredError, TemporaryFailError, TooBigError)
from txcb.formats import Encoded
from txcb.limits import MAX_KEY_LEN
from txcb.results import ValueResult
from txcb.server.mcsession import (
    EXPIRED_TTL, VERSION, Session, get_and_touch, one_line, status_of)
from txcb.server.mcauth import CLIENT_ERROR_UNAUTHENTICATED
from txcb.wire import mcascii as A

__all__ = ["AsciiSession"]

_log = Logger()

_CLIENT_ERROR_NON_NUMERIC = b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
_SERVER_ERROR_INTERNAL = b"SERVER_ERROR internal error\r\n"
_VERSION_REPLY = b"VERSION %s\r\n" % (VERSION.encode("ascii"),)
_STORE_OPS = {"set": "upsert", "add": "insert", "replace": "replace"}
_format_one_hit = A.format_one_hit
_END = A.END
_STORED = A.STORED
_Error = A.Error


def _ascii_ttl(exptime: int) -> int:
    """memcached's ASCII exptime as a bucket TTL (negative: expired now)."""
    return EXPIRED_TTL if exptime < 0 else exptime


class AsciiSession(Session):
    """One ASCII connection: the parser, and a handler per command."""

    name = "ascii"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        # control_keys: memcached takes any byte but space, CR, LF (and NUL)
        # in a key, and clients such as memcaslap use them.
        self.parser = A.Parser(max_value=self.factory.max_value_size,
                               max_key=MAX_KEY_LEN, control_keys=True)
        self._feed = self.parser.feed
        #: The handlers by command name (only the login until authenticated).
        self._table = _HANDLERS if self.auth.done else _UNAUTHENTICATED
        self._get_sync: Any = self.bucket.get_sync if self.sync else None
        self._store_sync: Any = self.bucket.store_sync if self.sync else None
        if self.observer is None:
            self.data_received = self._unobserved_read  # type: ignore[method-assign]

    def data_received(self, data: bytes) -> None:
        """One read: every complete command in it, answered in one write."""
        self.started = time.perf_counter()
        self.run(self._feed(data))

    def _unobserved_read(self, data: bytes) -> None:
        """:meth:`data_received` with no observer: no start time to take."""
        self.run(self._feed(data))

    def handle(self, ev: Any) -> Optional[bytes]:
        """Execute one parsed command (or answer one refused line)."""
        try:
            return self._table[ev.name](self, ev)
        except Exception:
            _log.failure("txcb memcached: internal error handling {cmd!r}", cmd=ev)
            return None if getattr(ev, "noreply", False) else _SERVER_ERROR_INTERNAL

    def internal_error(self, ctx: Any) -> bytes:
        return _SERVER_ERROR_INTERNAL

    def _refused(self, ev: A.Error) -> None:
        if ev.response:
            self.reply(ev.response)
        if ev.close:
            _log.info("txcb memcached: closing {peer} after a refused line",
                      peer=self.auth.peer)
            self.close()

    def _unauthenticated(self, ev: A.Command) -> None:
        if ev.name == "quit":
            self.close()
        elif ev.name == "set":
            self.reply(self.auth.ascii_login(ev))
            if self.auth.done:
                self._table = _HANDLERS
        elif not ev.noreply:
            self.reply(CLIENT_ERROR_UNAUTHENTICATED)

    # -- handlers ---------------------------------------------------------------------

    def _get(self, cmd: A.Command) -> Optional[bytes]:
        keys = cmd.keys
        if len(keys) == 1:
            key = keys[0]
            if self.sync:
                try:
                    r = self._get_sync(key, 0, True)
                except Exception:
                    r = Failure()
                else:
                    if self.observer is None:
                        if r.rc:
                            return _END
                        return _format_one_hit(key, r.flags, r.raw,
                                               r.cas if cmd.name == "gets" else None)
                self.done("get", r, _render_get1, (key, cmd.name == "gets"))
            else:
                self.later("get", self._deferred(lambda b: b.get(key, quiet=True)),
                           _render_get1, (key, cmd.name == "gets"))
            return None
        with_cas = cmd.name == "gets"
        if self.sync:
            get_sync = self.bucket.get_sync
            results: List[Any] = []
            for key in keys:
                try:
                    results.append(get_sync(key, 0, True))
                except Exception:
                    results.append(Failure())
            self.done("get", results, _render_values, (keys, with_cas))
        else:
            bucket = self.bucket
            self._later_all("get", [_get_deferred(bucket, k) for k in keys], (keys, with_cas))
        return None

    def _gat(self, cmd: A.Command) -> None:
        keys = cmd.keys
        if not keys:
            self.reply(_END)
            return
        ttl = _ascii_ttl(cmd.exptime)
        if self.sync:
            results = [_get_and_touch_sync(self.bucket, k, ttl) for k in keys]
            self.done("get", results, _render_values, (keys, cmd.name == "gats"))
        else:
            self._later_all("get", [get_and_touch(self.bucket, k, ttl) for k in keys],
                            (keys, cmd.name == "gats"))

    def _set(self, cmd: A.Command) -> Optional[bytes]:
        assert cmd.value is not None  # the parser sets it for every store command
        value = Encoded(cmd.value, cmd.flags)
        ttl = cmd.exptime
        if ttl < 0:
            ttl = EXPIRED_TTL
        op = _STORE_OPS[cmd.name]
        if self.sync:
            try:
                self._store_sync(op, cmd.key, value, 0, ttl)
            except Exception:
                r: Any = Failure()
            else:
                if self.observer is None:
                    return None if cmd.noreply else _STORED
                r = None
            self.done(op, r, _render_store, cmd)
            return None
        key = cmd.key
        if op == "upsert":
            d = self._deferred(lambda b: b.upsert(key, value, ttl=ttl))
        elif op == "insert":
            d = self._deferred(lambda b: b.insert(key, value, ttl=ttl))
        else:
            d = self._deferred(lambda b: b.replace(key, value, ttl=ttl))
        self.later(op, d, _render_store, cmd)
        return None

    def _cas(self, cmd: A.Command) -> None:
        key, cas = cmd.key, cmd.cas
        if not cas:
            # No item ever has CAS 0: nothing to store; EXISTS or NOT_FOUND.
            self.call("get", _render_cas0, cmd, lambda b: b.get_sync(key, 0, True),
                      lambda b: b.get(key, quiet=True))
            return
        assert cmd.value is not None  # the parser sets it for every store command
        value = Encoded(cmd.value, cmd.flags)
        ttl = _ascii_ttl(cmd.exptime)
        self.call("replace", _render_store, cmd,
                  lambda b: b.store_sync("replace", key, value, cas, ttl),
                  lambda b: b.replace(key, value, cas=cas, ttl=ttl))

    def _concat(self, cmd: A.Command) -> None:
        op, key, value = cmd.name, cmd.key, cmd.value
        self.call(op, _render_store, cmd, lambda b: b.concat_sync(op, key, value),
                  lambda b: getattr(b, op)(key, value))

    def _arith(self, cmd: A.Command) -> None:
        assert cmd.delta is not None  # the parser sets it for incr/decr
        key = cmd.key
        delta = cmd.delta if cmd.name == "incr" else -cmd.delta
        self.call("counter", _render_counter, cmd, lambda b: b.counter_sync(key, delta),
                  lambda b: b.counter(key, delta=delta))

    def _touch(self, cmd: A.Command) -> None:
        key, ttl = cmd.key, _ascii_ttl(cmd.exptime)
        self.call("touch", _render_simple, (cmd, A.TOUCHED),
                  lambda b: b.touch_sync(key, ttl), lambda b: b.touch(key, ttl))

    def _delete(self, cmd: A.Command) -> None:
        key = cmd.key
        self.call("remove", _render_simple, (cmd, A.DELETED),
                  lambda b: b.remove_sync(key), lambda b: b.remove(key))

    def _flush_all(self, cmd: A.Command) -> None:
        d = self._deferred(lambda b: self.factory.flush(cmd.exptime))
        self.later("flush", d, _render_simple, (cmd, A.OK))

    def _version(self, cmd: A.Command) -> None:
        self.reply(_VERSION_REPLY)

    def _verbosity(self, cmd: A.Command) -> None:
        self.factory.verbosity = int(cmd.args[0])
        if not cmd.noreply:
            self.reply(A.OK)

    def _stats(self, cmd: A.Command) -> None:
        if not cmd.args:
            d = self._deferred(lambda b: self.factory.general_stats())
        elif cmd.args == [b"settings"]:
            d = self._deferred(lambda b: succeed(self.factory.settings_stats()))
        else:
            # memcached answers ERROR to a statistics group it does not know
            # (and "stats noreply": stats takes no noreply).
            self.reply(A.ERROR)
            return
        self.later("stats", d, _render_stats, cmd)

    def _quit(self, cmd: A.Command) -> None:
        self.close()

    # -- Deferreds ----------------------------------------------------------------------

    def _deferred(self, call: Callable[[Any], Any]) -> Any:
        """``call(bucket)``, a Deferred; its synchronous exception a failed one."""
        try:
            return call(self.bucket)
        except Exception:
            return fail()

    def _later_all(self, op: str, ds: List[Any], ctx: Any) -> None:
        """One reply to several Deferreds: a multi-get."""
        render: Any = _render_values
        observer = self.observer
        if observer is not None:
            started = self.started

            def render(results: List[Any], ctx: Any) -> bytes:
                observer.request_done(op, status_of(results), started)
                return _render_values(results, ctx)
        self.conn.submit_all(ds, render, ctx)


def _get_deferred(bucket: Any, key: bytes) -> Any:
    """``bucket.get(key, quiet=True)``; its synchronous exception a failed Deferred."""
    try:
        return bucket.get(key, quiet=True)
    except Exception:
        return fail()


def _get_and_touch_sync(bucket: Any, key: bytes, ttl: int) -> Any:
    """:func:`get_and_touch` on an ISyncBucket: the result, or a Failure."""
    try:
        if ttl:
            return bucket.get_sync(key, ttl, True)
        try:
            bucket.touch_sync(key, 0)
        except NotFoundError:
            return ValueResult(key, rc=RC.KEY_ENOENT)
        return bucket.get_sync(key, 0, True)
    except Exception:
        return Failure()


_HANDLERS: Dict[Any, Callable[[AsciiSession, Any], Optional[bytes]]] = {
    "get": AsciiSession._get, "gets": AsciiSession._get,
    "gat": AsciiSession._gat, "gats": AsciiSession._gat,
    "set": AsciiSession._set, "add": AsciiSession._set, "replace": AsciiSession._set,
    "append": AsciiSession._concat, "prepend": AsciiSession._concat,
    "cas": AsciiSession._cas,
    "incr": AsciiSession._arith, "decr": AsciiSession._arith,
    "touch": AsciiSession._touch,
    "delete": AsciiSession._delete,
    "flush_all": AsciiSession._flush_all,
    "version": AsciiSession._version,
    "verbosity": AsciiSession._verbosity,
    "stats": AsciiSession._stats,
    "quit": AsciiSession._quit,
    None: AsciiSession._refused,        # an Error event: a refused line
}
_UNAUTHENTICATED: Dict[Any, Callable[[AsciiSession, Any], Optional[bytes]]] = dict.fromkeys(
    _HANDLERS, AsciiSession._unauthenticated)
_UNAUTHENTICATED[None] = AsciiSession._refused


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


def _render_values(results: List[Any], ctx: Tuple[List[bytes], bool]) -> bytes:
    keys, with_cas = ctx
    out = []
    format_hit = A.format_hit
    for key, r in zip(keys, results):
        if type(r) is not Failure and r.rc == 0:
            out.append(format_hit(key, r.flags, r.raw, r.cas if with_cas else None))
        elif not _is_miss(r):
            return _ascii_error(r, False)
    out.append(_END)
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
        return b"CLIENT_ERROR %s\r\n" % (one_line(e.message),)
    if isinstance(e, CouchbaseError):
        return b"SERVER_ERROR %s\r\n" % (one_line(e.message),)
    _log.failure("txcb memcached: internal error", f)
    return _SERVER_ERROR_INTERNAL


def _render_store(r: Any, cmd: A.Command) -> bytes:
    if type(r) is not Failure:
        return b"" if cmd.noreply else _STORED
    if cmd.noreply:
        return _ascii_error(r, True)
    if r.check(KeyExistsError):
        return A.NOT_STORED if cmd.name == "add" else A.EXISTS
    if r.check(NotFoundError):
        return A.NOT_FOUND if cmd.name == "cas" else A.NOT_STORED
    if r.check(NotStoredError):
        return A.NOT_STORED
    return _ascii_error(r, False)


def _render_cas0(r: Any, cmd: A.Command) -> bytes:
    if cmd.noreply:
        return b""
    if type(r) is Failure:
        return _ascii_error(r, False)
    return A.EXISTS if r.success else A.NOT_FOUND


def _render_counter(r: Any, cmd: A.Command) -> bytes:
    if cmd.noreply:
        return _ascii_error(r, True) if type(r) is Failure else b""
    if type(r) is not Failure:
        return A.format_number(r.value)
    if r.check(NotFoundError):
        return A.NOT_FOUND
    if r.check(DeltaBadvalError):
        return _CLIENT_ERROR_NON_NUMERIC
    return _ascii_error(r, False)


def _render_simple(r: Any, ctx: Tuple[A.Command, bytes]) -> bytes:
    cmd, ok = ctx
    if cmd.noreply:
        return _ascii_error(r, True) if type(r) is Failure else b""
    if type(r) is not Failure:
        return ok
    if r.check(NotFoundError):
        return A.NOT_FOUND
    return _ascii_error(r, False)


def _render_stats(r: Any, cmd: A.Command) -> bytes:
    if type(r) is Failure:
        return _ascii_error(r, False)
    return A.format_stats(r)
