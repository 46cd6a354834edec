"""
The memcached binary protocol over a bucket: one session per connection.

Bytes in go through the one frame decoder (:class:`txcb.wire.mcbinary.Decoder`),
which decodes every complete frame of a read; each request is checked with
:func:`~txcb.wire.mcbinary.validate_request` and has one handler per opcode
(:data:`_HANDLERS`), which calls the bucket (synchronously when it provides
ISyncBucket); the responses of one read leave in one write.
"""

from __future__ import annotations

import struct
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import fail, succeed
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.errors import RC, CouchbaseError, NotFoundError, WouldBlock
from txcb.formats import Encoded
from txcb.limits import MAX_KEY_LEN
from txcb.server.mcsession import VERSION, Session, get_and_touch, one_line, stat_value
from txcb.wire import mcbinary as B

__all__ = ["BinarySession", "DEFAULT_LOCK_TIME"]

#: GET_LOCKED's lock time when the request gives none (Couchbase's default).
DEFAULT_LOCK_TIME = 15

_log = Logger()

_O = B.Opcode
_S = B.Status
# The 24-byte frame header (txcb.wire.mcbinary's layout).
_HEADER = B.HEADER
_pack_header = _HEADER.pack
_RES_MAGIC = B.RES_MAGIC
_QUIET = B.QUIET
_KEYED = frozenset((_O.GETK, _O.GETKQ, _O.GATK, _O.GATKQ))
_Packet = B.Packet
_validate = B.validate_request

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

# Opcodes an unauthenticated connection may use (memcached's list, plus QUIT
# so that a client can always say goodbye).
_AUTH_FREE = frozenset((_O.SASL_LIST_MECHS, _O.SASL_AUTH, _O.SASL_STEP, _O.VERSION,
                        _O.QUIT, _O.QUITQ))
_LOUD_STORE_OPS = {_O.SET: "upsert", _O.ADD: "insert", _O.REPLACE: "replace"}
#: The bucket operation of each store opcode, loud or quiet.
_STORE_OPS = {**_LOUD_STORE_OPS, **{q: _LOUD_STORE_OPS[loud] for q, loud in _QUIET.items()
                                    if loud in _LOUD_STORE_OPS}}
# A GET response's header and item flags, packed at once.
_pack_value_head = struct.Struct(_HEADER.format + B.ITEM_FLAGS.format.lstrip("<>!=@")).pack


class BinarySession(Session):
    """One binary connection: the frame decoder, and a handler per opcode."""

    name = "binary"

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.decoder = B.Decoder(max_body=self.factory.max_body, max_key=MAX_KEY_LEN)
        self._feed = self.decoder.feed
        self._get_sync: Any = self.bucket.get_sync if self.sync else None
        self._store_sync: Any = self.bucket.store_sync if self.sync else None

    def data_received(self, data: bytes) -> None:
        """One read: every complete frame in it, answered in one write."""
        if self.observer is not None:
            self.started = time.perf_counter()
        try:
            events: List[Any] = self._feed(data)
        except B.FrameError as e:
            events = self._after_refusal(e)
        self.run(events)

    def _after_refusal(self, e: B.FrameError) -> List[Any]:
        """The frames before a refused one, the refusal, and what follows it."""
        events: List[Any] = list(e.packets)
        events.append(e)
        while not e.fatal:
            # A refused frame whose boundary is known: go on behind it.
            try:
                events.extend(self._feed(b""))
                break
            except B.FrameError as again:
                e = again
                events.extend(e.packets)
                events.append(e)
        return events

    def handle(self, p: Any) -> Optional[bytes]:
        """Execute one decoded request (or answer one refused frame)."""
        if type(p) is not _Packet:
            self._frame_error(p)
            return None
        status = _validate(p)
        if status is not None:
            return _error(p, status)
        if not self.auth.done and p.opcode not in _AUTH_FREE:
            return _error(p, _S.AUTH_ERROR)
        try:
            return _HANDLERS[p.opcode](self, p)
        except Exception:
            _log.failure("txcb memcached: internal error handling {packet!r}", packet=p)
            return _error(p, _S.EINTERNAL)

    def internal_error(self, ctx: Any) -> bytes:
        if isinstance(ctx, _Packet):
            return _error(ctx, _S.EINTERNAL)
        return b""

    def _frame_error(self, e: B.FrameError) -> None:
        if e.opcode is not None and e.opaque is not None:  # both or neither
            body = _MESSAGES.get(e.status, b"")
            self.reply(_response(e.opcode, e.status, e.opaque, value=body))
        if e.fatal:
            _log.info("txcb memcached: protocol error from {peer}: {error}; closing",
                      peer=self.auth.peer, error=str(e))
            self.close()

    # -- handlers ---------------------------------------------------------------------

    def _get(self, p: B.Packet) -> Optional[bytes]:
        key = p.key
        if self.sync:
            try:
                r = self._get_sync(key, 0, True)
            except WouldBlock:
                self.call_later("get", _render_value, p, lambda b: b.get(key, quiet=True))
                return None
            except Exception:
                r = Failure()
            if self.observer is None:
                return _render_value(r, p)
            self.done("get", r, _render_value, p)
        else:
            self.call_later("get", _render_value, p, lambda b: b.get(key, quiet=True))
        return None

    def _gat(self, p: B.Packet) -> None:
        key, ttl = p.key, B.parse_touch_extras(p.extras)
        # A bucket's get with a ttl is memcached's GAT (exptime 0: touch, get).
        self.later("get", get_and_touch(self.bucket, key, ttl), _render_value, p)

    def _store(self, p: B.Packet) -> Optional[bytes]:
        flags, exptime = B.parse_store_extras(p.extras)
        value = Encoded(p.value, flags)
        op = _STORE_OPS[p.opcode]
        key, cas = p.key, p.cas
        if op == "insert" and cas:
            return _error(p, _S.EINVAL)
        if self.sync:
            try:
                r = self._store_sync(op, key, value, cas, exptime)
            except WouldBlock:
                self.call_later(op, _render_mutation, p, _store_call(op, key, value, cas, exptime))
                return None
            except Exception:
                r = Failure()
            if self.observer is None:
                return _render_mutation(r, p)
            self.done(op, r, _render_mutation, p)
        else:
            self.call_later(op, _render_mutation, p, _store_call(op, key, value, cas, exptime))
        return None

    def _concat(self, p: B.Packet) -> None:
        op = "append" if B.loud_opcode(p.opcode) == _O.APPEND else "prepend"
        key, value, cas = p.key, p.value, p.cas
        self.call(op, _render_mutation, p, lambda b: b.concat_sync(op, key, value, cas),
                  lambda b: getattr(b, op)(key, value, cas=cas))

    def _delete(self, p: B.Packet) -> None:
        key, cas = p.key, p.cas
        self.call("remove", _render_delete, p, lambda b: b.remove_sync(key, cas),
                  lambda b: b.remove(key, cas=cas))

    def _counter(self, p: B.Packet) -> None:
        if p.cas:
            # The bucket's counter has no CAS check to honour it with.
            self.reply(_error(p, _S.NOT_SUPPORTED,
                              b"CAS is not supported on INCREMENT/DECREMENT"))
            return
        delta, initial, exptime = B.parse_counter_extras(p.extras)
        if B.loud_opcode(p.opcode) == _O.DECREMENT:
            delta = -delta
        key = p.key
        if exptime == B.COUNTER_NO_CREATE:
            self.call("counter", _render_counter, p, lambda b: b.counter_sync(key, delta),
                      lambda b: b.counter(key, delta=delta))
        else:
            self.call("counter", _render_counter, p,
                      lambda b: b.counter_sync(key, delta, initial, exptime),
                      lambda b: b.counter(key, delta=delta, initial=initial, ttl=exptime))

    def _touch(self, p: B.Packet) -> None:
        key, ttl = p.key, B.parse_touch_extras(p.extras)
        self.call("touch", _render_mutation, p, lambda b: b.touch_sync(key, ttl),
                  lambda b: b.touch(key, ttl))

    def _lock(self, p: B.Packet) -> None:
        key = p.key
        ttl = B.parse_get_locked_extras(p.extras) or DEFAULT_LOCK_TIME
        self.call("lock", _render_value, p, lambda b: b.lock_sync(key, ttl),
                  lambda b: b.lock(key, ttl=ttl))

    def _unlock(self, p: B.Packet) -> None:
        key, cas = p.key, p.cas
        self.call("unlock", _render_mutation, p, lambda b: b.unlock_sync(key, cas),
                  lambda b: b.unlock(key, cas))

    def _noop(self, p: B.Packet) -> None:
        self.reply(_response(p.opcode, 0, p.opaque))

    def _version(self, p: B.Packet) -> None:
        self.reply(_response(p.opcode, 0, p.opaque, value=VERSION.encode("ascii")))

    def _verbosity(self, p: B.Packet) -> None:
        self.factory.verbosity = B.parse_verbosity_extras(p.extras)
        self.reply(_response(p.opcode, 0, p.opaque))

    def _flush(self, p: B.Packet) -> None:
        delay = B.parse_flush_extras(p.extras)
        self.later("flush", self._deferred(lambda b: self.factory.flush(delay)),
                   _render_flush, p)

    def _quit(self, p: B.Packet) -> None:
        if p.opcode == _O.QUIT:
            self.reply(_response(p.opcode, 0, p.opaque))
        self.close()

    def _stat(self, p: B.Packet) -> None:
        if not p.key:
            d = self._deferred(lambda b: self.factory.general_stats())
        elif p.key == b"settings":
            d = succeed(self.factory.settings_stats())
        else:
            self.reply(_error(p, _S.KEY_ENOENT))
            return
        self.later("stats", d, _render_stats, p)

    def _sasl_list_mechs(self, p: B.Packet) -> None:
        if not self.auth.required:
            self.reply(_error(p, _S.UNKNOWN_COMMAND))
        else:
            self.reply(_response(p.opcode, 0, p.opaque, value=b"PLAIN"))

    def _sasl_auth(self, p: B.Packet) -> None:
        if not self.auth.required:
            self.reply(_error(p, _S.UNKNOWN_COMMAND))
        elif self.auth.sasl_plain(p):
            self.reply(_response(p.opcode, 0, p.opaque, value=b"Authenticated"))
        else:
            self.reply(_error(p, _S.AUTH_ERROR))

    def _deferred(self, call: Callable[[Any], Any]) -> Any:
        """``call(bucket)``, a Deferred; its synchronous exception a failed one."""
        try:
            return call(self.bucket)
        except Exception:
            return fail()


def _store_call(op: str, key: bytes, value: Encoded, cas: int, ttl: int) -> Callable[[Any], Any]:
    """The IBucket call of a SET, ADD or REPLACE (``op``): ``call(bucket)``, a Deferred."""
    if op == "insert":      # ADD: its cas is refused before
        return lambda b: b.insert(key, value, ttl=ttl)
    return lambda b: getattr(b, op)(key, value, cas=cas, ttl=ttl)


_B = BinarySession
_HANDLERS: Dict[int, Callable[[BinarySession, B.Packet], Optional[bytes]]] = {
    _O.GET: _B._get, _O.GETQ: _B._get, _O.GETK: _B._get, _O.GETKQ: _B._get,
    _O.GAT: _B._gat, _O.GATQ: _B._gat, _O.GATK: _B._gat, _O.GATKQ: _B._gat,
    _O.SET: _B._store, _O.SETQ: _B._store, _O.ADD: _B._store,
    _O.ADDQ: _B._store, _O.REPLACE: _B._store, _O.REPLACEQ: _B._store,
    _O.APPEND: _B._concat, _O.APPENDQ: _B._concat,
    _O.PREPEND: _B._concat, _O.PREPENDQ: _B._concat,
    _O.DELETE: _B._delete, _O.DELETEQ: _B._delete,
    _O.INCREMENT: _B._counter, _O.INCREMENTQ: _B._counter,
    _O.DECREMENT: _B._counter, _O.DECREMENTQ: _B._counter,
    _O.TOUCH: _B._touch,
    _O.GET_LOCKED: _B._lock, _O.UNLOCK_KEY: _B._unlock,
    _O.NOOP: _B._noop, _O.VERSION: _B._version, _O.VERBOSITY: _B._verbosity,
    _O.FLUSH: _B._flush, _O.FLUSHQ: _B._flush,
    _O.QUIT: _B._quit, _O.QUITQ: _B._quit,
    _O.STAT: _B._stat,
    _O.SASL_LIST_MECHS: _B._sasl_list_mechs,
    _O.SASL_AUTH: _B._sasl_auth, _O.SASL_STEP: _B._sasl_auth,
}
del _B


# -- rendering: (result or Failure, request) -> response bytes ---------------------

def _response(opcode: int, status: int, opaque: int, cas: int = 0, extras: bytes = b"",
              key: bytes = b"", value: bytes = b"") -> bytes:
    return b"".join((
        _pack_header(_RES_MAGIC, opcode, len(key), len(extras), 0, status,
                     len(extras) + len(key) + len(value), opaque, cas),
        extras, key, value))


def _error(p: B.Packet, status: int, message: Optional[bytes] = None) -> bytes:
    """An error response: no extras, no CAS; GETK/GETKQ echo the key."""
    key = p.key if p.opcode in _KEYED else b""
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
            return _S.ETMPFAIL, one_line(e.message)
        if rc == RC.VALUE_FORMAT:
            return _S.EINVAL, one_line(e.message)
        return _S.EINTERNAL, one_line(e.message)
    _log.failure("txcb memcached: internal error", f)
    return _S.EINTERNAL, None


def _failure(f: Failure, p: B.Packet) -> bytes:
    status, message = _status_of(f)
    return _error(p, status, message)


def _render_value(r: Any, p: B.Packet) -> bytes:
    opcode = p.opcode
    if type(r) is Failure:
        if opcode in _QUIET and r.check(NotFoundError):
            return b""
        return _failure(r, p)
    if r.rc:
        if opcode in _QUIET:
            return b""
        return _error(p, r.rc)
    raw = r.raw
    if opcode in _KEYED:
        key = p.key
        return b"".join((
            _pack_value_head(_RES_MAGIC, opcode, len(key), 4, 0, 0, 4 + len(key) + len(raw),
                             p.opaque, r.cas, r.flags), key, raw))
    return _pack_value_head(_RES_MAGIC, opcode, 0, 4, 0, 0, 4 + len(raw),
                            p.opaque, r.cas, r.flags) + raw


def _render_mutation(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _failure(r, p)
    if p.opcode in _QUIET:
        return b""
    return _pack_header(_RES_MAGIC, p.opcode, 0, 0, 0, 0, 0, p.opaque, r.cas)


def _render_delete(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _failure(r, p)
    if p.opcode in _QUIET:
        return b""
    return _response(p.opcode, 0, p.opaque)     # memcached: no CAS on DELETE


def _render_counter(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _failure(r, p)
    if p.opcode in _QUIET:
        return b""
    return _response(p.opcode, 0, p.opaque, r.cas, value=B.counter_value(r.value))


def _render_flush(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _failure(r, p)
    if p.opcode in _QUIET:
        return b""
    return _response(p.opcode, 0, p.opaque)


def _render_stats(r: Any, p: B.Packet) -> bytes:
    if type(r) is Failure:
        return _failure(r, p)
    out = []
    for name, value in r.items():
        bname = str(name).encode("utf-8", "replace")
        bvalue = stat_value(value)
        if bvalue is not None and bname:
            out.append(_response(p.opcode, 0, p.opaque, key=bname, value=bvalue))
    out.append(_response(p.opcode, 0, p.opaque))
    return b"".join(out)
