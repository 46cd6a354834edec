"""
The embedded bucket: an in-process IBucket provider holding items in memory.

Items live in one dict, key bytes -> one bytes object holding a small header
(CAS, expiry time, flags) followed by the value, which keeps memory per item
close to memcached's (see ``_make_item`` for the layout).  Expiry is lazy (checked on access) plus a pager
that reclaims expired items periodically from a heap of expiry times.  Locks
sit in a separate, usually empty, dict.  Every mutation gets a bucket-wide
sequence number and passes through :meth:`EmbeddedBucket._mutated`, the hook
a persistent bucket uses to queue the change for disk.

Time comes from the injected clock (any ``IReactorTime``), so tests drive
TTLs and locks with :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

import heapq
import struct
import time
from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from zope.interface import implementer

from txcb.multi import MultiMixin
from txcb.validation import (
    DEFAULT_MAX_VALUE_SIZE, U64, check_cas, check_delta, check_lock_ttl, check_ttl,
    expiry_time, resolve_durability, scan_args, to_key)
from txcb.errors import (
    ArgumentError, CouchbaseError, DeltaBadvalError, KeyExistsError, NetworkError,
    NotFoundError, NotStoredError, TemporaryFailError, TimeoutError, TooBigError)
from txcb.formats import (
    DEFAULT_TRANSCODER, FMT_BYTES, FMT_JSON, FMT_PICKLE, FMT_UTF8, Transcoder)
from txcb.interfaces import IBucket, ISyncBucket
from txcb.results import OperationResult, ValueResult
from txcb.errors import RC

__all__ = ["EmbeddedBucket", "LOCKED_CAS"]

#: The CAS a locked item reads with (as Couchbase Server reports it).
LOCKED_CAS = U64

# Item layout: a header, then the value.  An item that never expires and has
# one of the common flags (most items) has a 9-byte header,
#     <index of its flags in _FLAGS:u8><cas:u64>
# any other item a 21-byte one,
#     <0xFF><cas:u64><expiry:f64><flags:u32>
# The CAS is at offset 1 in both.  With CPython's 33-byte bytes header, a
# 100-byte value then fits pymalloc's 144-byte size class (a fixed 20-byte
# header would take the 160-byte one): 16 bytes an item at a million items.
_LONG = 0xFF
_SHORT_HDR = struct.Struct("<BQ")
_LONG_HDR = struct.Struct("<BQdI")
_SHORT_LEN = _SHORT_HDR.size
_LONG_LEN = _LONG_HDR.size
_short_pack = _SHORT_HDR.pack
_long_pack = _LONG_HDR.pack
_short_unpack = _SHORT_HDR.unpack_from
_long_unpack = _LONG_HDR.unpack_from
#: Flags a short header can name (the order is part of the disk format).
_FLAGS = (0, FMT_JSON, FMT_BYTES, FMT_UTF8, FMT_PICKLE)
_FLAG_INDEX = {f: i for i, f in enumerate(_FLAGS)}


def _make_item(cas: int, exp: float, flags: int, data: bytes) -> bytes:
    """The stored form of an item."""
    if not exp:
        i = _FLAG_INDEX.get(flags)
        if i is not None:
            return _short_pack(i, cas) + data
    return _long_pack(_LONG, cas, exp, flags) + data


def _header(item: bytes) -> Tuple[int, float, int, int]:
    """``(cas, expiry, flags, header length)`` of a stored item."""
    if item[0] == _LONG:
        _t, cas, exp, flags = _long_unpack(item)
        return cas, exp, flags, _LONG_LEN
    i, cas = _short_unpack(item)
    return cas, 0.0, _FLAGS[i], _SHORT_LEN


def _expiry(item: bytes) -> float:
    """A stored item's expiry time (0: never)."""
    return _long_unpack(item)[2] if item[0] == _LONG else 0.0


def _cas_of(item: bytes) -> int:
    return _short_unpack(item)[1]


def _value_len(item: bytes) -> int:
    return len(item) - (_LONG_LEN if item[0] == _LONG else _SHORT_LEN)


# Mutation kinds for the _mutated hook.
STORED = 1
DELETED = 2
EXPIRED = 3

_log = Logger()


def _check_open(bucket: "EmbeddedBucket") -> None:
    if bucket._closed:
        raise NetworkError("the bucket is closed")


@implementer(IBucket, ISyncBucket)
class EmbeddedBucket(MultiMixin):
    """
    An in-memory bucket with Couchbase semantics.

    :param clock: the ``IReactorTime`` for TTLs, locks and the pager
        (defaults to the global reactor).
    :param max_value_size: the largest value accepted, in bytes.
    :param transcoder: encodes values and decodes results.
    :param pager_interval: seconds between expiry-pager runs (0 disables it;
        expiry on access still applies).
    """

    bucket_type = "ephemeral"
    #: How many disks / replicas a mutation can be made durable on.
    max_persist_to = 0
    max_replicate_to = 0

    def __init__(self, clock: Any = None, max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
                 transcoder: Optional[Transcoder] = None, pager_interval: float = 10.0,
                 name: str = "default") -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        self.clock = clock
        self.name = name
        self.max_value_size = max_value_size
        self.transcoder = transcoder if transcoder is not None else DEFAULT_TRANSCODER
        self._items: Dict[bytes, bytes] = {}
        self._locks: Dict[bytes, float] = {}
        self._expiries: List[Tuple[float, bytes]] = []
        self._bytes = 0
        self._cas = time.time_ns()
        self._seqno = 0
        self._closed = False
        self._started = clock.seconds()
        self._stats = {"hits": 0, "misses": 0, "expired": 0}
        self._ops = dict.fromkeys((
            "get", "upsert", "insert", "replace", "remove", "touch", "lock", "unlock",
            "counter", "append", "prepend", "endure", "stats", "flush", "scan"), 0)
        self._scan_index: Any = None  # a txcb.scan.KeyIndex, once something scans
        self._pager: Optional[LoopingCall] = None
        if pager_interval:
            self._pager = LoopingCall(self.run_pager)
            self._pager.clock = clock
            self._pager.start(pager_interval, now=False)

    # -- internal helpers --------------------------------------------------

    def _next_cas(self) -> int:
        self._cas = cas = self._cas + 1
        return cas

    def _lookup(self, k: bytes, now: float) -> Optional[bytes]:
        """The live item for a key, expiring it on the way if it is due."""
        item = self._items.get(k)
        if item is not None and item[0] == _LONG:
            exp = _long_unpack(item)[2]
            if exp and exp <= now:
                self._remove_item(k, item, EXPIRED)
                return None
        return item

    def _is_locked(self, k: bytes, now: float) -> bool:
        until = self._locks.get(k)
        if until is None:
            return False
        if until <= now:
            del self._locks[k]
            return False
        return True

    def _put(self, k: bytes, old: Optional[bytes], cas: int, exp: float, flags: int,
             data: bytes) -> int:
        item = _make_item(cas, exp, flags, data)
        self._items[k] = item
        if old is None:
            self._bytes += len(k) + len(data)
            if self._scan_index is not None:
                self._scan_index.add(k)
        else:
            self._bytes += len(data) - _value_len(old)
        if exp:
            heapq.heappush(self._expiries, (exp, k))
        self._seqno = seqno = self._seqno + 1
        self._mutated(k, item, seqno, STORED)
        return seqno

    def _remove_item(self, k: bytes, item: bytes, why: int) -> int:
        del self._items[k]
        self._locks.pop(k, None)
        self._bytes -= len(k) + _value_len(item)
        if why == EXPIRED:
            self._stats["expired"] += 1
        self._seqno = seqno = self._seqno + 1
        self._mutated(k, None, seqno, why)
        return seqno

    def _mutated(self, k: bytes, item: Optional[bytes], seqno: int, why: int) -> None:
        """Called after every change of an item (item None: removed)."""

    def _check_mutable(self, k: bytes, item: bytes, cas: int, now: float, key: Any) -> None:
        """Refuse a mutation on a locked item without the lock cas, or a cas mismatch."""
        item_cas = _cas_of(item)
        if self._locks and self._is_locked(k, now):
            if cas != item_cas:
                raise TemporaryFailError("the key is locked", key=key)
            del self._locks[k]
        elif cas and cas != item_cas:
            raise KeyExistsError("CAS mismatch", key=key)

    def _encode(self, value: Any, format: Any, key: Any) -> Tuple[bytes, int]:
        data, flags = self.transcoder.encode(value, format)
        if len(data) > self.max_value_size:
            raise TooBigError("value of %d bytes is over the %d byte limit"
                              % (len(data), self.max_value_size), key=key)
        return data, flags

    def _durable(self, result: OperationResult, persist_to: int, replicate_to: int,
                 key: Any) -> Deferred:
        """Fire the result once the mutation meets its durability requirement."""
        d: Deferred = Deferred()
        if self.on_durable(result, persist_to, replicate_to, d):
            return d
        return succeed(result)

    def on_durable(self, result: OperationResult, persist_to: int, replicate_to: int,
                    target: Any) -> bool:
        """
        Arrange for ``target.callback(result)`` (or ``target.errback(error)``)
        once the mutation of ``result`` meets the (resolved) durability
        requirement and return True, or return False if it is met already
        (``target`` is then not used).  ``target`` is a Deferred, or any object
        with ``called``, ``callback`` and ``errback`` (the server's synchronous
        path uses one without a Deferred).  Memory only: met already.
        """
        return False

    # -- synchronous core (raises CouchbaseError) ---------------------------

    def get_sync(self, key: Any, ttl: int = 0, quiet: bool = False) -> ValueResult:
        """:meth:`get` without the Deferred."""
        if self._closed:
            _check_open(self)
        self._ops["get"] += 1
        k = to_key(key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            self._stats["misses"] += 1
            if quiet:
                return ValueResult(key, rc=RC.KEY_ENOENT)
            raise NotFoundError("no such key", key=key)
        self._stats["hits"] += 1
        cas, exp, flags, off = _header(item)
        if ttl:
            check_ttl(ttl, key)
            if self._locks and self._is_locked(k, now):
                raise TemporaryFailError("the key is locked", key=key)
            cas = self._next_cas()
            self._put(k, item, cas, expiry_time(ttl, now), flags, item[off:])
        elif self._locks and self._is_locked(k, now):
            cas = LOCKED_CAS
        return ValueResult(key, item[off:], flags, cas, RC.SUCCESS, self.transcoder)

    def store_sync(self, op: str, key: Any, value: Any, cas: int = 0, ttl: int = 0,
                   format: Any = None) -> OperationResult:
        """upsert/insert/replace without the Deferred (``op`` names which)."""
        if self._closed:
            _check_open(self)
        self._ops[op] += 1
        k = to_key(key)
        if cas:
            check_cas(cas, key)
        if ttl:
            check_ttl(ttl, key)
        data, flags = self._encode(value, format, key)
        now = self.clock.seconds()
        old = self._lookup(k, now)
        if old is None:
            if op == "replace":
                raise NotFoundError("no such key", key=key)
            if cas:
                raise NotFoundError("no such key (cas given)", key=key)
        else:
            if op == "insert":
                raise KeyExistsError("the key exists", key=key)
            self._check_mutable(k, old, cas, now, key)
        new_cas = self._next_cas()
        seqno = self._put(k, old, new_cas, expiry_time(ttl, now) if ttl else 0.0, flags, data)
        return OperationResult(key, new_cas, RC.SUCCESS, seqno)

    def remove_sync(self, key: Any, cas: int = 0, quiet: bool = False) -> OperationResult:
        _check_open(self)
        self._ops["remove"] += 1
        k = to_key(key)
        if cas:
            check_cas(cas, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            if quiet:
                return OperationResult(key, rc=RC.KEY_ENOENT)
            raise NotFoundError("no such key", key=key)
        self._check_mutable(k, item, cas, now, key)
        seqno = self._remove_item(k, item, DELETED)
        return OperationResult(key, self._next_cas(), RC.SUCCESS, seqno)

    def touch_sync(self, key: Any, ttl: int) -> OperationResult:
        _check_open(self)
        self._ops["touch"] += 1
        k = to_key(key)
        check_ttl(ttl, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            raise NotFoundError("no such key", key=key)
        if self._locks and self._is_locked(k, now):
            raise TemporaryFailError("the key is locked", key=key)
        _cas, _exp, flags, off = _header(item)
        cas = self._next_cas()
        seqno = self._put(k, item, cas, expiry_time(ttl, now), flags, item[off:])
        return OperationResult(key, cas, RC.SUCCESS, seqno)

    def lock_sync(self, key: Any, ttl: int = 15) -> ValueResult:
        _check_open(self)
        self._ops["lock"] += 1
        k = to_key(key)
        check_lock_ttl(ttl, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            raise NotFoundError("no such key", key=key)
        if self._is_locked(k, now):
            raise TemporaryFailError("the key is locked already", key=key)
        _cas, exp, flags, off = _header(item)
        cas = self._next_cas()
        data = item[off:]
        # A new CAS, same value and expiry: not a mutation (no seqno, no disk).
        self._items[k] = _make_item(cas, exp, flags, data)
        self._locks[k] = now + ttl
        return ValueResult(key, data, flags, cas, RC.SUCCESS, self.transcoder)

    def unlock_sync(self, key: Any, cas: int) -> OperationResult:
        _check_open(self)
        self._ops["unlock"] += 1
        k = to_key(key)
        check_cas(cas, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            raise NotFoundError("no such key", key=key)
        if not self._is_locked(k, now):
            raise TemporaryFailError("the key is not locked", key=key)
        if cas != _cas_of(item):
            raise TemporaryFailError("wrong lock cas", key=key)
        del self._locks[k]
        return OperationResult(key, cas, RC.SUCCESS)

    def counter_sync(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                     ttl: int = 0) -> ValueResult:
        _check_open(self)
        self._ops["counter"] += 1
        k = to_key(key)
        check_delta(delta, initial, key)
        if ttl:
            check_ttl(ttl, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            if initial is None:
                raise NotFoundError("no such key (and no initial value)", key=key)
            value = initial
            data = b"%d" % value
            flags = FMT_JSON
            cas = self._next_cas()
            seqno = self._put(k, None, cas, expiry_time(ttl, now), flags, data)
        else:
            if self._locks and self._is_locked(k, now):
                raise TemporaryFailError("the key is locked", key=key)
            _cas, exp, flags, off = _header(item)
            text = item[off:].strip()
            if not (0 < len(text) <= 20 and text.isdigit()) or int(text) > U64:
                raise DeltaBadvalError("the value is not an unsigned 64-bit number",
                                       key=key)
            value = int(text)
            if delta >= 0:
                value = (value + delta) & U64
            else:
                value = max(0, value + delta)
            data = b"%d" % value
            cas = self._next_cas()
            seqno = self._put(k, item, cas, exp, flags, data)
        return ValueResult(key, data, flags, cas, RC.SUCCESS, self.transcoder, value, seqno)

    def concat_sync(self, op: str, key: Any, value: Any, cas: int = 0) -> OperationResult:
        """append/prepend without the Deferred."""
        _check_open(self)
        self._ops[op] += 1
        k = to_key(key)
        if cas:
            check_cas(cas, key)
        if isinstance(value, str):
            value = value.encode("utf-8")
        elif not isinstance(value, bytes):
            value = self.transcoder.encode(value)[0]
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            raise NotStoredError("no such key to %s to" % (op,), key=key)
        self._check_mutable(k, item, cas, now, key)
        _cas, exp, flags, off = _header(item)
        old = item[off:]
        data = old + value if op == "append" else value + old
        if len(data) > self.max_value_size:
            raise TooBigError("the value would grow over the %d byte limit"
                              % (self.max_value_size,), key=key)
        new_cas = self._next_cas()
        seqno = self._put(k, item, new_cas, exp, flags, data)
        return OperationResult(key, new_cas, RC.SUCCESS, seqno)

    # -- IBucket ------------------------------------------------------------

    def get(self, key: Any, ttl: int = 0, quiet: bool = False) -> Deferred:
        try:
            return succeed(self.get_sync(key, ttl, quiet))
        except CouchbaseError as e:
            return fail(e)

    def _mutate(self, key: Any, persist_to: int, replicate_to: int, call: Any,
                *args: Any) -> Deferred:
        try:
            if persist_to or replicate_to:
                persist_to, replicate_to = resolve_durability(
                    persist_to, replicate_to, self.max_persist_to, self.max_replicate_to, key)
            result = call(*args)
        except CouchbaseError as e:
            return fail(e)
        if persist_to or replicate_to:
            return self._durable(result, persist_to, replicate_to, key)
        return succeed(result)

    def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._mutate(key, persist_to, replicate_to, self.store_sync,
                            "upsert", key, value, cas, ttl, format)

    def insert(self, key: Any, value: Any, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._mutate(key, persist_to, replicate_to, self.store_sync,
                            "insert", key, value, 0, ttl, format)

    def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._mutate(key, persist_to, replicate_to, self.store_sync,
                            "replace", key, value, cas, ttl, format)

    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0) -> Deferred:
        return self._mutate(key, persist_to, replicate_to, self.remove_sync, key, cas, quiet)

    def append(self, key: Any, value: Any, cas: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._mutate(key, persist_to, replicate_to, self.concat_sync,
                            "append", key, value, cas)

    def prepend(self, key: Any, value: Any, cas: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._mutate(key, persist_to, replicate_to, self.concat_sync,
                            "prepend", key, value, cas)

    def touch(self, key: Any, ttl: int) -> Deferred:
        try:
            return succeed(self.touch_sync(key, ttl))
        except CouchbaseError as e:
            return fail(e)

    def lock(self, key: Any, ttl: int = 15) -> Deferred:
        try:
            return succeed(self.lock_sync(key, ttl))
        except CouchbaseError as e:
            return fail(e)

    def unlock(self, key: Any, cas: int) -> Deferred:
        try:
            return succeed(self.unlock_sync(key, cas))
        except CouchbaseError as e:
            return fail(e)

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                ttl: int = 0) -> Deferred:
        try:
            return succeed(self.counter_sync(key, delta, initial, ttl))
        except CouchbaseError as e:
            return fail(e)

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> Deferred:
        """
        Poll (every ``interval`` seconds, on the bucket's clock) until the key
        meets the durability requirement or ``timeout`` runs out.
        """
        try:
            _check_open(self)
            self._ops["endure"] += 1
            k = to_key(key)
            if cas:
                check_cas(cas, key)
            persist, _replicate = resolve_durability(
                persist_to, replicate_to, self.max_persist_to, self.max_replicate_to, key)
            if not (isinstance(timeout, (int, float)) and timeout >= 0
                    and isinstance(interval, (int, float)) and interval > 0):
                raise ArgumentError("timeout must be >= 0 and interval > 0", key=key)
        except CouchbaseError as e:
            return fail(e)
        deadline = self.clock.seconds() + timeout
        d: Deferred = Deferred(lambda _d: call and call.active() and call.cancel())
        call = None

        def check() -> None:
            nonlocal call
            call = None
            try:
                done = self._endured(k, key, persist, cas, check_removed)
            except CouchbaseError as e:
                d.errback(e)
                return
            if done is not None:
                d.callback(done)
            elif self.clock.seconds() >= deadline:
                d.errback(TimeoutError("durability not reached within %.3gs" % (timeout,),
                                       key=key))
            else:
                call = self.clock.callLater(interval, check)

        check()
        return d

    def _endured(self, k: bytes, key: Any, persist: int, cas: int,
                 check_removed: bool) -> Optional[OperationResult]:
        """The result if the requirement is met now, None to keep polling."""
        item = self._lookup(k, self.clock.seconds())
        if check_removed:
            if item is None and (not persist or self._is_persisted(k)):
                return OperationResult(key, 0)
            return None
        if item is None:
            raise NotFoundError("no such key", key=key)
        item_cas = _cas_of(item)
        if cas and cas != item_cas:
            raise KeyExistsError("the key was modified since (CAS differs)", key=key)
        if persist and not self._is_persisted(k):
            return None
        return OperationResult(key, item_cas)

    def _is_persisted(self, k: bytes) -> bool:
        """Whether the key's latest change is on disk (no disk: never)."""
        return False

    def flush_sync(self) -> int:
        """
        :meth:`flush` without the Deferred; returns how many items it removed.
        Every item goes through ``_remove_item(k, item, DELETED)`` (so the
        ``_mutated`` hook sees each removal, as for :meth:`remove`).
        """
        _check_open(self)
        self._ops["flush"] += 1
        items = self._items
        removed = 0
        for k in list(items):
            item = items.get(k)
            if item is not None:
                self._remove_item(k, item, DELETED)
                removed += 1
        self._locks.clear()
        self._expiries = []
        return removed

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000,
             batch_bytes: int = 1048576) -> Deferred:
        """See IBucket.scan; batches come from :meth:`scan_batch_sync`."""
        from txcb.scan import ScanResult
        try:
            _check_open(self)
            prefix, start, end, ids_only, batch_size, batch_bytes = scan_args(
                prefix, start, end, ids_only, batch_size, batch_bytes)
        except CouchbaseError as e:
            return fail(e)
        return ScanResult.open(lambda at: succeed(self.scan_batch_sync(
            prefix, at, end, ids_only, batch_size, batch_bytes)), start)

    def scan_batch_sync(self, prefix: bytes, start: bytes, end: bytes, ids_only: bool,
                        batch_size: int, batch_bytes: int) -> Tuple[List[Any], Any]:
        """
        One batch of a scan, from ``start`` (arguments as ``codec.scan_args``
        returns them): ``(rows, resume)``, ``resume`` being the start of the
        next batch or None at the end of the range.  Walks the shared sorted
        :class:`~txcb.scan.KeyIndex`; ``batch_bytes`` counts rows as the wire
        does (22 bytes + key + value) and lets one row through on its own.
        """
        from bisect import bisect_left
        from math import ceil
        from txcb.results import ScanItem
        from txcb.scan import KeyIndex
        _check_open(self)
        self._ops["scan"] += 1
        items = self._items
        index = self._scan_index
        if index is None or not index.usable(items):
            index = self._scan_index = KeyIndex(items)
        keys = index.sorted_keys()
        now = self.clock.seconds()
        i, n = bisect_left(keys, max(start, prefix)), len(keys)
        rows: List[Any] = []
        size, budget, last = 0, 4 * batch_size + 1024, None
        while i < n:
            k = keys[i]
            if (end and k >= end) or not k.startswith(prefix):
                return rows, None
            i += 1
            if k == last:
                continue  # listed twice (removed, then added again)
            last = k
            budget -= 1
            item = items.get(k)
            if item is not None:
                cas, exp, flags, off = _header(item)
                if exp and exp <= now:
                    self._remove_item(k, item, EXPIRED)
                else:
                    vlen = 0 if ids_only else len(item) - off
                    if rows and size + 22 + len(k) + vlen > batch_bytes:
                        return rows, k
                    size += 22 + len(k) + vlen
                    if self._locks and self._is_locked(k, now):
                        cas = LOCKED_CAS
                    rows.append(ScanItem.from_row(
                        k, flags, cas, ceil(exp) if exp else 0,
                        None if ids_only else item[off:], self.transcoder))
                    if len(rows) >= batch_size:
                        break
            if budget <= 0:
                break
        if i >= n or (end and keys[i] >= end) or not keys[i].startswith(prefix):
            return rows, None
        return rows, k + b"\x00"

    def flush(self) -> Deferred:
        try:
            self.flush_sync()
        except CouchbaseError as e:
            return fail(e)
        return succeed(None)

    def stats(self) -> Deferred:
        self._ops["stats"] += 1
        return succeed(self.stats_sync())

    def stats_sync(self) -> Dict[str, Any]:
        s: Dict[str, Any] = {
            "bucket_type": self.bucket_type,
            "items": len(self._items),
            "bytes": self._bytes,
            "hits": self._stats["hits"],
            "misses": self._stats["misses"],
            "expired": self._stats["expired"],
            "locked": len(self._locks),
            "connections": 0,
            "uptime": int(self.clock.seconds() - self._started),
            "high_seqno": self._seqno,
            "max_value_size": self.max_value_size,
        }
        for op, n in self._ops.items():
            s["op_" + op] = n
        return s

    def close(self) -> Deferred:
        self._closed = True
        if self._pager is not None and self._pager.running:
            self._pager.stop()
        return succeed(None)

    # -- expiry pager -------------------------------------------------------

    def run_pager(self, budget: int = 10000) -> int:
        """Remove up to ``budget`` expired items; returns how many it removed."""
        now = self.clock.seconds()
        heap = self._expiries
        removed = 0
        while heap and heap[0][0] <= now and budget:
            exp, k = heapq.heappop(heap)
            budget -= 1
            item = self._items.get(k)
            if item is not None:
                item_exp = _expiry(item)
                if item_exp and item_exp <= now:
                    self._remove_item(k, item, EXPIRED)
                    removed += 1
        if len(heap) > 2 * len(self._items) + 1024:
            # Stale entries (keys re-stored or touched) outnumber live ones.
            self._expiries = [(e, k) for k, it in self._items.items()
                              for e in (_expiry(it),) if e]
            heapq.heapify(self._expiries)
        return removed
