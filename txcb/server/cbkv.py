"""
The Couchbase endpoint's key-value operations: one handler per opcode
(:data:`KV_HANDLERS`), each turning a request into one bucket call of the
collection its key names, and the rendering of results into responses.

A bucket that provides :class:`~txcb.interfaces.ISyncBucket` (decided once
per bucket by the factory) is called synchronously and its reply returned at
once; any other through its IBucket Deferreds, answered in request order by
:class:`~txcb.server.mcreplies.OrderedReplies`, and so is a synchronous call
that raises :class:`~txcb.errors.WouldBlock` (a value not resident):
:meth:`KeyValueOps.run_op` decides (the inline GET and SET paths take its
:meth:`~KeyValueOps.run_later` too).  Durable writes (framing extra id 1, a
persist level) wait for the disk: ``on_durable`` on a synchronous bucket,
``endure(persist_to=1)`` otherwise.
"""

from __future__ import annotations

import struct
from functools import wraps
from typing import Any, Callable, Dict, Optional, Union

from twisted.internet.defer import Deferred, fail
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.errors import RC, CouchbaseError, NotSupportedError, TimeoutError, WouldBlock
from txcb.formats import Encoded
from txcb.limits import DEFAULT_LOCK_TTL, MAX_KEY_LEN, MAX_LOCK_TTL
from txcb.server.mcsession import get_and_touch, status_of
from txcb.wire import couchbase as W
from txcb.wire.mcbinary import (
    COUNTER_EXTRAS as _COUNTER, HEADER, RES_MAGIC as _RES_MAGIC, STORE_EXTRAS as _STORE,
    U32 as _U32, U64 as _U64)

__all__ = ["KeyOp", "KeyValueOps", "KV_HANDLERS", "keyed", "COUNTER_NO_CREATE",
           "DEFAULT_DURABILITY_TIMEOUT"]

_O = W.Opcode
_S = W.Status
_log = Logger()
_response = W.encode_response
_pack_header = HEADER.pack
# A response header with a GET's flags, and with a mutation token, packed at once.
_pack_value_head = struct.Struct(">BBHBBHIIQI").pack
_pack_token_head = struct.Struct(">BBHBBHIIQQQ").pack

#: INCREMENT/DECREMENT expiry meaning "do not create a missing counter".
COUNTER_NO_CREATE = 0xFFFFFFFF
#: Seconds a durable write waits for the disk when its request names no timeout.
DEFAULT_DURABILITY_TIMEOUT = 10.0

_QUIET = {_O.GETQ: _O.GET, _O.GETKQ: _O.GETK, _O.SETQ: _O.SET, _O.ADDQ: _O.ADD,
          _O.REPLACEQ: _O.REPLACE, _O.DELETEQ: _O.DELETE, _O.INCREMENTQ: _O.INCREMENT,
          _O.DECREMENTQ: _O.DECREMENT, _O.APPENDQ: _O.APPEND, _O.PREPENDQ: _O.PREPEND,
          _O.GATQ: _O.GAT}
_STORE_OPS = {_O.SET: "upsert", _O.ADD: "insert", _O.REPLACE: "replace"}
#: The opcodes that may carry a durability requirement (mutations).
_DURABLE = frozenset((_O.SET, _O.ADD, _O.REPLACE, _O.DELETE, _O.INCREMENT, _O.DECREMENT,
                      _O.APPEND, _O.PREPEND))
#: The opcodes that may carry preserve-expiry (the others answer NOT_SUPPORTED):
#: the stores honour it, the counters and concatenations keep the expiry anyway.
_PRESERVES = frozenset((_O.SET, _O.ADD, _O.REPLACE, _O.INCREMENT, _O.DECREMENT,
                        _O.APPEND, _O.PREPEND))
#: Extras lengths each keyed opcode accepts (by loud opcode).
_EXTRAS = {_O.GET: (0,), _O.GETK: (0,), _O.SET: (8,), _O.ADD: (8,), _O.REPLACE: (8,),
           _O.DELETE: (0,), _O.INCREMENT: (20,), _O.DECREMENT: (20,), _O.APPEND: (0,),
           _O.PREPEND: (0,), _O.TOUCH: (4,), _O.GAT: (4,), _O.GET_LOCKED: (0, 4),
           _O.UNLOCK_KEY: (0,), _O.GET_META: (0, 1)}
#: Opcodes whose request carries no value.
_NO_VALUE = frozenset((_O.GET, _O.GETK, _O.DELETE, _O.INCREMENT, _O.DECREMENT, _O.TOUCH,
                       _O.GAT, _O.GET_LOCKED, _O.UNLOCK_KEY, _O.GET_META))
#: Bucket error rcs that are Couchbase statuses as they are.
_PLAIN_RCS = frozenset((RC.KEY_ENOENT, RC.KEY_EEXISTS, RC.E2BIG, RC.EINVAL, RC.NOT_STORED,
                        RC.DELTA_BADVAL, RC.UNKNOWN_COMMAND, RC.ENOMEM, RC.NOT_SUPPORTED,
                        RC.EINTERNAL, RC.EBUSY, RC.DURABILITY_IMPOSSIBLE))
#: The buckets' lock refusals (TemporaryFailError, by message) and their
#: XERROR statuses; any other temporary failure stays ETMPFAIL.
_LOCK_STATUSES = {"the key is locked": _S.LOCKED, "the key is locked already": _S.LOCKED,
                  "wrong lock cas": _S.LOCKED, "the key is not locked": _S.NOT_LOCKED}
_TEMPORARY_RCS = frozenset((RC.TIMEOUT, RC.CONNECT_ERROR, RC.NETWORK_ERROR, RC.ETMPFAIL))


class KeyOp:
    """One keyed request, resolved: its collection, key and durability."""

    __slots__ = ("opcode", "loud", "opaque", "quiet", "collection", "key", "raw_key",
                 "level", "timeout", "removes", "preserve")

    def __init__(self, r: W.Request, collection: Any, key: bytes, info: W.FrameInfo) -> None:
        self.opcode = r.opcode
        self.loud = _QUIET.get(r.opcode, r.opcode)
        self.opaque = r.opaque
        self.quiet = r.opcode in _QUIET
        self.collection = collection
        self.key = key
        self.raw_key = r.key
        self.level = info.durability
        self.timeout = (info.timeout / 1000.0 if info.timeout
                        else DEFAULT_DURABILITY_TIMEOUT)
        #: The write deletes the document (a durable wait checks for its removal).
        self.removes = r.opcode in (_O.DELETE, _O.DELETEQ)
        #: Preserve-expiry (framing extra id 5): an existing document keeps its expiry.
        self.preserve = info.preserve_ttl

    @property
    def persist(self) -> bool:
        """Whether the write waits for the disk (a persist level)."""
        return self.level >= W.Durability.MAJORITY_AND_PERSIST_TO_ACTIVE


def keyed(handler: Callable[[Any, W.Request, KeyOp], Optional[bytes]]
          ) -> Callable[[Any, W.Request], Optional[bytes]]:
    """A handler of one key's request, called with its KeyOp (or refused with key_op's reply)."""
    @wraps(handler)
    def with_key(self: Any, r: W.Request) -> Optional[bytes]:
        op = self.key_op(r)
        if isinstance(op, bytes):
            return op
        return handler(self, r, op)
    return with_key


class KeyValueOps:
    """
    The KV handlers and renderers of a Couchbase connection (a mixin of the
    protocol, which provides the session state used here: ``space``,
    ``xerror``, ``collections``, ``tokens``, ``factory``, ``reply``...).
    """

    space: Any
    xerror: bool
    collections: bool
    tokens: bool
    factory: Any
    observer: Any
    started: float
    submit: Callable[..., None]
    error: Callable[..., bytes]
    not_my_vbucket: Callable[[W.Request], bytes]

    # -- resolving a request ----------------------------------------------------------

    def key_op(self, r: W.Request) -> Union[KeyOp, bytes]:
        """The request's KeyOp, or the error reply that refuses it."""
        loud = _QUIET.get(r.opcode, r.opcode)
        if self.space is None:
            return self.error(r, _S.NO_BUCKET)
        if r.vbucket_or_status >= W.NUM_VBUCKETS:
            return self.not_my_vbucket(r)
        if len(r.extras) not in _EXTRAS[loud] or (loud in _NO_VALUE and r.value):
            return self.error(r, _S.EINVAL)
        try:
            info = W.parse_frame_infos(r.framing)
        except W.FramingError as e:
            return self.error(r, e.status)
        if info.durability and loud not in _DURABLE:
            return self.error(r, _S.EINVAL)
        if info.preserve_ttl and loud not in _PRESERVES:
            return self.error(r, _S.NOT_SUPPORTED)
        return self._collection_op(r, info)

    def _collection_op(self, r: W.Request, info: W.FrameInfo) -> Union[KeyOp, bytes]:
        key = r.key
        if self.collections:
            try:
                cid, key = W.split_collection(key)
            except ValueError:
                return self.error(r, _S.EINVAL)
            collection = self.space.collection(cid)
            if collection is None:
                return self.error(r, _S.UNKNOWN_COLLECTION)
        else:
            collection = self.space.default
        if not key or len(key) > MAX_KEY_LEN:
            return self.error(r, _S.EINVAL)
        op = KeyOp(r, collection, key, info)
        if op.persist and getattr(collection.bucket, "max_persist_to", 0) < 1:
            return self.error(r, _S.DURABILITY_INVALID_LEVEL)
        return op

    def fast_target(self, r: W.Request) -> Any:
        """
        ``(collection, key)`` of a plain request on a synchronous bucket (no
        framing extras, a one-byte collection id, no observer), or None: the
        request then takes :meth:`key_op`'s full path.
        """
        space = self.space
        if space is None or r.framing or r.vbucket_or_status >= W.NUM_VBUCKETS or self.observer:
            return None
        key = r.key
        if self.collections:
            if not key or key[0] & 0x80:
                return None
            collection = space.collection(key[0])
            if collection is None:
                return None
            key = key[1:]
        else:
            collection = space.default
        if not key or len(key) > MAX_KEY_LEN or not self.factory.is_sync(collection.bucket):
            return None
        return collection, key

    # -- running a bucket call --------------------------------------------------------

    def run_op(self, name: str, op: KeyOp, sync: Callable[[Any], Any],
               deferred: Callable[[Any], Deferred],
               render: Callable[[Any, KeyOp], bytes]) -> Optional[bytes]:
        """
        ``sync(bucket)`` or ``deferred(bucket)``, then durability, then
        ``render``: the one place a KV request's way is decided.  A ``sync``
        that raises WouldBlock changed nothing: ``deferred`` answers instead.
        """
        bucket = op.collection.bucket
        if self.factory.is_sync(bucket):
            try:
                r = sync(bucket)
            except WouldBlock:
                self.run_later(name, op, deferred, render)
                return None
            except Exception:
                r = Failure()
            if op.persist and type(r) is not Failure:
                d = self._on_durable(bucket, r, op)
                if d is not None:
                    self._later(name, d, render, op)
                    return None
            if self.observer is not None:
                self.observer.request_done(name, status_of(r), self.started)
            return render(r, op)
        self.run_later(name, op, deferred, render)
        return None

    def run_later(self, name: str, op: KeyOp, deferred: Callable[[Any], Deferred],
                  render: Callable[[Any, KeyOp], bytes]) -> None:
        """``deferred(bucket)``, then durability (``endure``), answered by ``render``."""
        bucket = op.collection.bucket
        try:
            d = deferred(bucket)
        except Exception:
            d = fail()
        if op.persist:
            d.addCallback(self._endure, bucket, op)
        self._later(name, d, render, op)

    def _later(self, name: str, d: Deferred, render: Callable[[Any, KeyOp], bytes],
               op: KeyOp) -> None:
        if self.observer is not None:
            observer, started = self.observer, self.started

            def observed(r: Any) -> Any:
                observer.request_done(name, status_of(r), started)
                return r
            d.addBoth(observed)
        self.submit(d, render, op)

    def _on_durable(self, bucket: Any, result: Any, op: KeyOp) -> Optional[Deferred]:
        """A Deferred of ``result`` once it is on disk (None: it is already)."""
        d: Deferred = Deferred()
        if not bucket.on_durable(result, 1, 0, d):
            return None
        clock = self.factory.clock
        call = clock.callLater(op.timeout, self._durability_timeout, d, op)
        d.addBoth(lambda r: (call.active() and call.cancel(), r)[1])
        return d

    def _durability_timeout(self, d: Deferred, op: KeyOp) -> None:
        if not d.called:
            d.errback(TimeoutError("not on disk within %.1fs" % (op.timeout,), key=op.key))

    def _endure(self, result: Any, bucket: Any, op: KeyOp) -> Deferred:
        d = bucket.endure(op.key, persist_to=1, replicate_to=0, cas=result.cas,
                          check_removed=op.removes, timeout=op.timeout)
        return d.addCallback(lambda _: result)

    # -- handlers ---------------------------------------------------------------------

    def kv_get(self, r: W.Request) -> Optional[bytes]:
        target = None if r.extras or r.value else self.fast_target(r)
        if target is not None:
            collection, key = target
            try:
                res = collection.bucket.get_sync(key, 0, True)
            except WouldBlock:      # not resident: the IBucket call answers it
                self.run_later("get", KeyOp(r, collection, key, W.NO_FRAME_INFO),
                               lambda b: b.get(key, quiet=True), self.render_value)
                return None
            except Exception:
                res = Failure()
            if r.opcode == _O.GET and type(res) is not Failure and not res.rc:
                raw = res.raw
                return _pack_value_head(_RES_MAGIC, _O.GET, 0, 4, 0, 0, 4 + len(raw),
                                        r.opaque, res.cas, res.flags) + raw
            return self.render_value(res, KeyOp(r, collection, key, W.NO_FRAME_INFO))
        return self._get(r, self.render_value)

    @keyed
    def kv_get_meta(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        key = op.key
        return self.run_op("get", op, lambda b: b.get_meta_sync(key),
                           lambda b: b.get(key, quiet=True), self.render_meta)

    def _get(self, r: W.Request, render: Any) -> Optional[bytes]:
        """A quiet get of the request's key, answered by ``render``."""
        op = self.key_op(r)
        if isinstance(op, bytes):
            return op
        key = op.key
        return self.run_op("get", op, lambda b: b.get_sync(key, 0, True),
                           lambda b: b.get(key, quiet=True), render)

    @keyed
    def kv_gat(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        key, ttl = op.key, _U32.unpack(r.extras)[0]
        return self.run_op("get", op, lambda b: _get_and_touch_sync(b, key, ttl),
                           lambda b: get_and_touch(b, key, ttl), self.render_value)

    def kv_store(self, r: W.Request) -> Optional[bytes]:
        target = self.fast_target(r) if len(r.extras) == 8 and r.opcode == _O.SET else None
        if target is not None:
            collection, key = target
            flags, ttl = _STORE.unpack(r.extras)
            value, cas = Encoded(r.value, flags), r.cas
            try:
                res = collection.bucket.store_sync("upsert", key, value, cas, ttl)
            except WouldBlock:      # nothing stored: the IBucket call stores it
                self.run_later("upsert", KeyOp(r, collection, key, W.NO_FRAME_INFO),
                               lambda b: b.upsert(key, value, cas=cas, ttl=ttl),
                               self.render_mutation)
                return None
            except Exception:
                return self._failed(Failure(), KeyOp(r, collection, key, W.NO_FRAME_INFO))
            if self.tokens:
                return _pack_token_head(_RES_MAGIC, _O.SET, 0, 16, 0, 0, 16, r.opaque, res.cas,
                                        collection.uuid, res.seqno)
            return _pack_header(_RES_MAGIC, _O.SET, 0, 0, 0, 0, 0, r.opaque, res.cas)
        op = self.key_op(r)
        if isinstance(op, bytes):
            return op
        flags, ttl = _STORE.unpack(r.extras)
        name = _STORE_OPS[op.loud]
        key, cas, value = op.key, r.cas, Encoded(r.value, flags)
        if name == "insert" and cas:
            return self.error(r, _S.EINVAL)
        preserve = op.preserve
        if preserve:
            deferred: Callable[[Any], Deferred] = _no_preserve
        elif name == "upsert":
            deferred = lambda b: b.upsert(key, value, cas=cas, ttl=ttl)  # noqa: E731
        elif name == "insert":
            deferred = lambda b: b.insert(key, value, ttl=ttl)  # noqa: E731
        else:
            deferred = lambda b: b.replace(key, value, cas=cas, ttl=ttl)  # noqa: E731
        return self.run_op(name, op,
                           lambda b: b.store_sync(name, key, value, cas, ttl, None, preserve),
                           deferred, self.render_mutation)

    @keyed
    def kv_delete(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        key, cas = op.key, r.cas
        return self.run_op("remove", op, lambda b: b.remove_sync(key, cas),
                           lambda b: b.remove(key, cas=cas), self.render_mutation)

    @keyed
    def kv_concat(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        name = "append" if op.loud == _O.APPEND else "prepend"
        key, value, cas = op.key, r.value, r.cas
        return self.run_op(name, op, lambda b: b.concat_sync(name, key, value, cas),
                           lambda b: getattr(b, name)(key, value, cas=cas),
                           self.render_mutation)

    @keyed
    def kv_counter(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        if r.cas:
            return self.error(r, _S.NOT_SUPPORTED)
        delta, initial, ttl = _COUNTER.unpack(r.extras)
        if op.loud == _O.DECREMENT:
            delta = -delta
        key = op.key
        start: Optional[int] = None if ttl == COUNTER_NO_CREATE else initial
        ttl = 0 if start is None else ttl
        return self.run_op("counter", op, lambda b: b.counter_sync(key, delta, start, ttl),
                           lambda b: b.counter(key, delta=delta, initial=start, ttl=ttl),
                           self.render_counter)

    @keyed
    def kv_touch(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        key, ttl = op.key, _U32.unpack(r.extras)[0]
        return self.run_op("touch", op, lambda b: b.touch_sync(key, ttl),
                           lambda b: b.touch(key, ttl), self.render_plain)

    @keyed
    def kv_lock(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        if r.cas:
            return self.error(r, _S.EINVAL)
        ttl = _U32.unpack(r.extras)[0] if r.extras else 0
        key, ttl = op.key, min(ttl or DEFAULT_LOCK_TTL, MAX_LOCK_TTL)
        return self.run_op("lock", op, lambda b: b.lock_sync(key, ttl),
                           lambda b: b.lock(key, ttl=ttl), self.render_value)

    @keyed
    def kv_unlock(self, r: W.Request, op: KeyOp) -> Optional[bytes]:
        if not r.cas:
            return self.error(r, _S.EINVAL)
        key, cas = op.key, r.cas
        return self.run_op("unlock", op, lambda b: b.unlock_sync(key, cas),
                           lambda b: b.unlock(key, cas), self.render_plain)

    # -- rendering ----------------------------------------------------------------------

    def status_for(self, f: Failure, op: KeyOp) -> int:
        """The status a bucket error answers with (XERROR decides the lock ones)."""
        e = f.value
        if not isinstance(e, CouchbaseError):
            _log.failure("txcb couchbase: internal error", f)
            return _S.EINTERNAL
        rc = e.rc
        if rc in _PLAIN_RCS:
            return rc
        if rc == RC.ETMPFAIL and e.message in _LOCK_STATUSES:
            return _LOCK_STATUSES[e.message] if self.xerror else _S.ETMPFAIL
        if rc == RC.TIMEOUT and op.persist:
            return _S.SYNC_WRITE_AMBIGUOUS
        if rc in _TEMPORARY_RCS:
            return _S.ETMPFAIL
        if rc == RC.VALUE_FORMAT:
            return _S.EINVAL
        return _S.EINTERNAL

    def _failed(self, f: Failure, op: KeyOp) -> bytes:
        status = self.status_for(f, op)
        if op.quiet and status == _S.KEY_ENOENT and op.loud in (_O.GET, _O.GETK, _O.GAT):
            return b""
        return self._status_reply(op, status)

    def _status_reply(self, op: KeyOp, status: int) -> bytes:
        key = op.raw_key if op.loud == _O.GETK else b""
        return _response(op.opcode, status, op.opaque, key=key)

    def _token(self, op: KeyOp, r: Any) -> bytes:
        return W.mutation_extras(op.collection.uuid, r.seqno) if self.tokens else b""

    def render_value(self, r: Any, op: KeyOp) -> bytes:
        if type(r) is Failure:
            return self._failed(r, op)
        if r.rc:
            return b"" if op.quiet else self._status_reply(op, r.rc)
        key = op.raw_key if op.loud == _O.GETK else b""
        return _response(op.opcode, 0, op.opaque, r.cas, _U32.pack(r.flags), key, r.raw)

    def render_meta(self, r: Any, op: KeyOp) -> bytes:
        if type(r) is Failure:
            return self._failed(r, op)
        if r.rc:
            return self._status_reply(op, r.rc)
        # A bucket served through its Deferreds answers a get: no expiry known (0).
        extras = W.get_meta_extras(False, r.flags, getattr(r, "expiry", 0), r.seqno)
        return _response(op.opcode, 0, op.opaque, r.cas, extras)

    def render_mutation(self, r: Any, op: KeyOp) -> bytes:
        if type(r) is Failure:
            return self._failed(r, op)
        if op.quiet:
            return b""
        return _response(op.opcode, 0, op.opaque, r.cas, self._token(op, r))

    def render_counter(self, r: Any, op: KeyOp) -> bytes:
        if type(r) is Failure:
            return self._failed(r, op)
        if op.quiet:
            return b""
        return _response(op.opcode, 0, op.opaque, r.cas, self._token(op, r),
                         value=_U64.pack(int(r.value)))

    def render_plain(self, r: Any, op: KeyOp) -> bytes:
        if type(r) is Failure:
            return self._failed(r, op)
        return _response(op.opcode, 0, op.opaque, r.cas)


def _no_preserve(bucket: Any) -> Deferred:
    """A store with preserve-expiry on a bucket served through its Deferreds."""
    return fail(NotSupportedError("preserve-expiry needs a bucket providing ISyncBucket"))


def _get_and_touch_sync(bucket: Any, key: bytes, ttl: int) -> Any:
    """
    :func:`get_and_touch` on an ISyncBucket (exptime 0: touch, then get).
    WouldBlock goes up, and the IBucket call then does the whole of it (after
    a touch, a touch to exptime 0 again: the same expiry).
    """
    if ttl:
        return bucket.get_sync(key, ttl, True)
    try:
        bucket.touch_sync(key, 0)
    except CouchbaseError as e:
        if e.rc != RC.KEY_ENOENT:
            raise
    return bucket.get_sync(key, 0, True)


_K = KeyValueOps
#: The KV handler of each opcode.
KV_HANDLERS: Dict[int, Callable[[Any, W.Request], Optional[bytes]]] = {
    _O.GET: _K.kv_get, _O.GETQ: _K.kv_get, _O.GETK: _K.kv_get, _O.GETKQ: _K.kv_get,
    _O.GAT: _K.kv_gat, _O.GATQ: _K.kv_gat,
    _O.SET: _K.kv_store, _O.SETQ: _K.kv_store, _O.ADD: _K.kv_store, _O.ADDQ: _K.kv_store,
    _O.REPLACE: _K.kv_store, _O.REPLACEQ: _K.kv_store,
    _O.DELETE: _K.kv_delete, _O.DELETEQ: _K.kv_delete,
    _O.APPEND: _K.kv_concat, _O.APPENDQ: _K.kv_concat,
    _O.PREPEND: _K.kv_concat, _O.PREPENDQ: _K.kv_concat,
    _O.INCREMENT: _K.kv_counter, _O.INCREMENTQ: _K.kv_counter,
    _O.DECREMENT: _K.kv_counter, _O.DECREMENTQ: _K.kv_counter,
    _O.TOUCH: _K.kv_touch, _O.GET_LOCKED: _K.kv_lock, _O.UNLOCK_KEY: _K.kv_unlock,
    _O.GET_META: _K.kv_get_meta,
}
del _K
