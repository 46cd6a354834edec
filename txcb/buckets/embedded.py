"""
The embedded bucket: an in-process IBucket provider holding items in memory.

The bucket's operations live here, each once, synchronously (the
:class:`~txcb.interfaces.ISyncBucket` methods, ``*_sync``, which raise
CouchbaseError); the IBucket methods wrap them in fired Deferreds.  The state
and the steps they are made of (items, locks, expiry, CAS and seqnos, scan
batches) are :class:`~txcb.buckets.table.ItemTable`'s, and an item's stored
form is :mod:`txcb.buckets.items`'.

Time comes from the injected clock (any ``IReactorTime``), so tests drive
TTLs and locks with :class:`twisted.internet.task.Clock`.
"""

from __future__ import annotations

from math import ceil
from typing import Any, Callable, Dict, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import LoopingCall
from zope.interface import implementer

from txcb.buckets._waiters import EndureWaiter, EndureWaiters
from txcb.buckets.items import (
    DELETED, LOCKED_CAS, cas_of, counted, expiry_of, header, meta, with_cas)
from txcb.buckets.subdocs import SubdocMixin
from txcb.buckets.table import ItemTable
from txcb.errors import (
    ArgumentError, CouchbaseError, InternalError, KeyExistsError, NotFoundError,
    NotStoredError, TemporaryFailError, TimeoutError, TooBigError, WouldBlock, RC)
from txcb.formats import DEFAULT_TRANSCODER, FMT_JSON, Transcoder, concat_bytes
from txcb.interfaces import IBucket, ISyncBucket
from txcb.limits import (
    DEFAULT_ENDURE_INTERVAL, DEFAULT_ENDURE_TIMEOUT, DEFAULT_EVICTION, DEFAULT_LOCK_TTL,
    DEFAULT_MAX_VALUE_SIZE, DEFAULT_SCAN_BATCH, DEFAULT_SCAN_BYTES, EVICTION_POLICIES,
    MIN_QUOTA, default_memory_quota)
from txcb.multi import MultiMixin
from txcb.results import OperationResult, ScanItem, ValueResult
from txcb.scan import ScanResult
from txcb.validation import (
    check_cas, check_delta, check_lock_ttl, check_ttl, expiry_time, resolve_durability,
    scan_args, to_key)

__all__ = ["EmbeddedBucket", "LOCKED_CAS"]


@implementer(IBucket, ISyncBucket)
class EmbeddedBucket(ItemTable, SubdocMixin, MultiMixin):
    """
    An in-memory bucket with Couchbase semantics.

    :param clock: the ``IReactorTime`` for TTLs, locks and the pager
        (defaults to the global reactor).
    :param max_value_size: the largest value accepted, in bytes.
    :param transcoder: encodes values and decodes results.
    :param pager_interval: seconds between expiry-pager runs (0 disables it;
        expiry on access still applies).
    :param memory_quota: the RAM quota in bytes (what ``mem_used`` counts:
        keys, items, a fixed overhead per item); None: half the machine's
        memory (:func:`txcb.limits.default_memory_quota`).
    :param eviction: when the quota is full, ``"none"`` refuses mutations
        that would grow memory (NoMemoryError, rc 0x82; Couchbase's
        noEviction, the default) and ``"nru"`` evicts not-recently-used items
        (see :mod:`txcb.buckets.pager`).
    """

    bucket_type = "ephemeral"
    #: How many disks / replicas a mutation can be made durable on.
    max_persist_to = 0
    max_replicate_to = 0
    #: The policies ``eviction`` may name.
    eviction_policies: Tuple[str, ...] = EVICTION_POLICIES

    def __init__(self, clock: Any = None, max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
                 transcoder: Optional[Transcoder] = None, pager_interval: float = 10.0,
                 name: str = "default", memory_quota: Optional[int] = None,
                 eviction: str = DEFAULT_EVICTION) -> None:
        if clock is None:
            from twisted.internet import reactor as clock
        ItemTable.__init__(self, clock,
                           transcoder if transcoder is not None else DEFAULT_TRANSCODER,
                           self._quota_arg(memory_quota), self._policy_arg(eviction))
        self.name = name
        self.max_value_size = max_value_size
        self._waiters = EndureWaiters(self)
        self._started = clock.seconds()
        self._pager: Optional[LoopingCall] = None
        if pager_interval:
            self._pager = LoopingCall(self.run_pager)
            self._pager.clock = clock
            self._pager.start(pager_interval, now=False)

    def _quota_arg(self, quota: Optional[int]) -> int:
        if quota is None:
            return default_memory_quota()
        if not isinstance(quota, int) or isinstance(quota, bool) or quota < MIN_QUOTA:
            raise ArgumentError("memory_quota must be at least %d bytes (1 MiB), not %r"
                                % (MIN_QUOTA, quota))
        return quota

    def _policy_arg(self, eviction: str) -> str:
        if eviction not in self.eviction_policies:
            raise ArgumentError("eviction must be one of %s for a %s bucket, not %r"
                                % (", ".join(self.eviction_policies), self.bucket_type,
                                   eviction))
        return eviction

    # -- steps of the operations ---------------------------------------------

    def _begin(self, op: str, key: Any) -> bytes:
        """Count an operation on an open bucket; the key's bytes."""
        self._check_open()
        self._ops[op] += 1
        return to_key(key)

    def _existing(self, k: bytes, now: float, key: Any) -> bytes:
        """The key's live item; NotFoundError if there is none."""
        item = self._lookup(k, now)
        if item is None:
            raise NotFoundError("no such key", key=key)
        return item

    def _retouch(self, k: bytes, item: bytes, ttl: int, now: float) -> Tuple[int, int]:
        """Give an item a new expiry (and CAS); ``(cas, seqno)``."""
        _cas, _exp, flags, off = header(item)
        cas = self._next_cas()
        return cas, self._put(k, item, cas, expiry_time(ttl, now), flags, item[off:])

    def _encode(self, value: Any, format: Any, key: Any) -> Tuple[bytes, int]:
        data, flags = self.transcoder.encode(value, format)
        if len(data) > self.max_value_size:
            raise TooBigError("value of %d bytes is over the %d byte limit"
                              % (len(data), self.max_value_size), key=key)
        return data, flags

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

    # -- synchronous core (ISyncBucket; raises CouchbaseError) -----------------

    def get_sync(self, key: Any, ttl: int = 0, quiet: bool = False) -> ValueResult:
        """:meth:`get` without the Deferred."""
        if self._closed:
            self._check_open()
        self._ops["get"] += 1
        k = to_key(key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            self._stats["misses"] += 1
            if quiet:
                return ValueResult(key, rc=RC.KEY_ENOENT)
            raise NotFoundError("no such key", key=key)
        cas, exp, flags, off = header(item)  # (WouldBlock: nothing counted but the get)
        self._stats["hits"] += 1
        t = self._touched
        if t is not None and len(t) < self._touch_cap:
            t.add(k)
        if ttl:
            check_ttl(ttl, key)
            if self._gated:
                self._check_mutation(key)
            self._check_unlocked(k, now, key)
            cas = self._retouch(k, item, ttl, now)[0]
        elif self._locks and self._is_locked(k, now):
            cas = LOCKED_CAS
        return ValueResult(key, item[off:], flags, cas, RC.SUCCESS, self.transcoder)

    def store_sync(self, op: str, key: Any, value: Any, cas: int = 0, ttl: int = 0,
                   format: Any = None, preserve_expiry: bool = False) -> OperationResult:
        """
        upsert/insert/replace without the Deferred (``op`` names which);
        ``preserve_expiry`` keeps an existing item's expiry.
        """
        if self._gated:
            self._check_mutation(key)
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
        exp = expiry_time(ttl, now) if ttl else 0.0
        if preserve_expiry and old is not None:
            exp = expiry_of(old)
        new_cas = self._next_cas()
        seqno = self._put(k, old, new_cas, exp, flags, data)
        return OperationResult(key, new_cas, RC.SUCCESS, seqno)

    def get_meta_sync(self, key: Any) -> ValueResult:
        """A key's metadata (ISyncBucket.get_meta_sync): counted as a get."""
        k = self._begin("get", key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            self._stats["misses"] += 1
            return ValueResult(key, rc=RC.KEY_ENOENT)
        self._stats["hits"] += 1
        cas, exp, flags = meta(item)
        if self._locks and self._is_locked(k, now):
            cas = LOCKED_CAS
        return ScanItem(key, None, flags, cas, ceil(exp) if exp else 0, self.transcoder)

    def remove_sync(self, key: Any, cas: int = 0, quiet: bool = False) -> OperationResult:
        k = self._begin("remove", key)
        if self._gated:
            self._check_mutation(key)
        if cas:
            check_cas(cas, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            if quiet:
                return OperationResult(key, rc=RC.KEY_ENOENT)
            raise NotFoundError("no such key", key=key)
        self._check_mutable(k, item, cas, now, key)
        new_cas = self._next_cas()  # (a tombstone, if any, takes it)
        seqno = self._remove_item(k, item, DELETED)
        return OperationResult(key, new_cas, RC.SUCCESS, seqno)

    def touch_sync(self, key: Any, ttl: int) -> OperationResult:
        k = self._begin("touch", key)
        if self._gated:
            self._check_mutation(key)
        check_ttl(ttl, key)
        now = self.clock.seconds()
        item = self._existing(k, now, key)
        self._check_unlocked(k, now, key)
        cas, seqno = self._retouch(k, item, ttl, now)
        return OperationResult(key, cas, RC.SUCCESS, seqno)

    def lock_sync(self, key: Any, ttl: int = DEFAULT_LOCK_TTL) -> ValueResult:
        k = self._begin("lock", key)
        check_lock_ttl(ttl, key)
        now = self.clock.seconds()
        item = self._existing(k, now, key)
        if self._is_locked(k, now):
            raise TemporaryFailError("the key is locked already", key=key)
        _cas, exp, flags, off = header(item)
        cas = self._next_cas()
        data = item[off:]
        # A new CAS, same value and expiry: not a mutation (no seqno, no disk).
        self._items[k] = with_cas(item, cas)
        self._locks[k] = now + ttl
        return ValueResult(key, data, flags, cas, RC.SUCCESS, self.transcoder)

    def unlock_sync(self, key: Any, cas: int) -> OperationResult:
        k = self._begin("unlock", key)
        check_cas(cas, key)
        now = self.clock.seconds()
        item = self._existing(k, now, key)
        if not self._is_locked(k, now):
            raise TemporaryFailError("the key is not locked", key=key)
        if cas != cas_of(item):
            raise TemporaryFailError("wrong lock cas", key=key)
        del self._locks[k]
        return OperationResult(key, cas, RC.SUCCESS)

    def counter_sync(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                     ttl: int = 0) -> ValueResult:
        k = self._begin("counter", key)
        if self._gated:
            self._check_mutation(key)
        check_delta(delta, initial, key)
        if ttl:
            check_ttl(ttl, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            if initial is None:
                raise NotFoundError("no such key (and no initial value)", key=key)
            value, flags, exp = initial, FMT_JSON, expiry_time(ttl, now)
        else:
            self._check_unlocked(k, now, key)
            _cas, exp, flags, off = header(item)
            value = counted(item[off:], delta, key)
        data = b"%d" % value
        cas = self._next_cas()
        seqno = self._put(k, item, cas, exp, flags, data)
        return ValueResult(key, data, flags, cas, RC.SUCCESS, self.transcoder, value, seqno)

    def concat_sync(self, op: str, key: Any, value: Any, cas: int = 0) -> OperationResult:
        """append/prepend without the Deferred."""
        k = self._begin(op, key)
        if self._gated:
            self._check_mutation(key)
        if cas:
            check_cas(cas, key)
        value = concat_bytes(value, self.transcoder)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        if item is None:
            raise NotStoredError("no such key to %s to" % (op,), key=key)
        self._check_mutable(k, item, cas, now, key)
        _cas, exp, flags, off = header(item)
        old = item[off:]
        data = old + value if op == "append" else value + old
        if len(data) > self.max_value_size:
            raise TooBigError("the value would grow over the %d byte limit"
                              % (self.max_value_size,), key=key)
        new_cas = self._next_cas()
        seqno = self._put(k, item, new_cas, exp, flags, data)
        return OperationResult(key, new_cas, RC.SUCCESS, seqno)

    def flush_sync(self) -> int:
        """
        :meth:`flush` without the Deferred; returns how many items it removed.
        O(1): the item table is swapped for an empty one (see ``_flushed``).
        """
        self._check_open()
        if self._gated:
            self._check_mutation(None)
        self._ops["flush"] += 1
        return self._remove_all()

    def stats_sync(self) -> Dict[str, Any]:
        s: Dict[str, Any] = {
            "bucket_type": self.bucket_type,
            "items": len(self._items),
            "bytes": self._bytes,
            "hits": self._stats["hits"],
            "misses": self._stats["misses"],
            "expired": self._stats["expired"],
            "locked": len(self._locks),
            "tombstones": len(self._tombstones),
            "connections": 0,
            "uptime": int(self.clock.seconds() - self._started),
            "high_seqno": self._seqno,
            "max_value_size": self.max_value_size,
        }
        s.update(self.quota_stats())
        for op, n in self._ops.items():
            s["op_" + op] = n
        return s

    # -- IBucket ------------------------------------------------------------

    def get(self, key: Any, ttl: int = 0, quiet: bool = False) -> Deferred:
        try:
            return succeed(self.get_sync(key, ttl, quiet))
        except CouchbaseError as e:
            return fail(e)
        except WouldBlock as e:
            return self._when_resident(e, key, self.get_sync, (key, ttl, quiet))

    def _answer(self, key: Any, call: Callable[..., Any], *args: Any) -> Deferred:
        """``call(*args)``'s result as a Deferred: at once, or once its values are read back."""
        try:
            return succeed(call(*args))
        except CouchbaseError as e:
            return fail(e)
        except WouldBlock as e:
            return self._when_resident(e, key, call, args)

    def _when_resident(self, blocked: WouldBlock, key: Any, call: Callable[..., Any],
                       args: Tuple[Any, ...]) -> Deferred:
        """
        ``call(*args)`` again once the values it needs are resident (a bucket
        that ejects values reads them back first).  Memory only: never ejected.
        """
        return fail(InternalError("a value is not resident in a bucket that never ejects",
                                  key=key))

    def _mutate(self, key: Any, persist_to: int, replicate_to: int, call: Any,
                *args: Any) -> Deferred:
        """``call(*args)``, fired once durable as asked (every mutation's path)."""
        try:
            if persist_to or replicate_to:
                persist_to, replicate_to = resolve_durability(
                    persist_to, replicate_to, self.max_persist_to, self.max_replicate_to, key)
            result = call(*args)
        except CouchbaseError as e:
            return fail(e)
        except WouldBlock as e:
            d = self._when_resident(e, key, call, args)
            if persist_to or replicate_to:
                d.addCallback(self._durable, persist_to, replicate_to, key)
            return d
        if persist_to or replicate_to:
            return self._durable(result, persist_to, replicate_to, key)
        return succeed(result)

    def _durable(self, result: OperationResult, persist_to: int, replicate_to: int,
                 key: Any) -> Deferred:
        """Fire the result once the mutation meets its durability requirement."""
        d: Deferred = Deferred()
        if self.on_durable(result, persist_to, replicate_to, d):
            return d
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
        return self._answer(key, self.touch_sync, key, ttl)

    def lock(self, key: Any, ttl: int = DEFAULT_LOCK_TTL) -> Deferred:
        return self._answer(key, self.lock_sync, key, ttl)

    def unlock(self, key: Any, cas: int) -> Deferred:
        return self._answer(key, self.unlock_sync, key, cas)

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                ttl: int = 0) -> Deferred:
        return self._answer(key, self.counter_sync, key, delta, initial, ttl)

    def flush(self) -> Deferred:
        try:
            self.flush_sync()
        except CouchbaseError as e:
            return fail(e)
        return succeed(None)

    def stats(self) -> Deferred:
        self._ops["stats"] += 1
        return succeed(self.stats_sync())

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = DEFAULT_SCAN_BATCH,
             batch_bytes: int = DEFAULT_SCAN_BYTES) -> Deferred:
        """See IBucket.scan; batches come from :meth:`scan_batch_sync`."""
        try:
            self._check_open()
            prefix, start, end, ids_only, batch_size, batch_bytes = scan_args(
                prefix, start, end, ids_only, batch_size, batch_bytes)
        except CouchbaseError as e:
            return fail(e)
        return ScanResult.open(lambda at: self._answer(
            None, self.scan_batch_sync, prefix, at, end, ids_only, batch_size, batch_bytes),
            start)

    def close(self) -> Deferred:
        self._closed = True
        self._gated = True
        if self._pager is not None and self._pager.running:
            self._pager.stop()
        self._stop_paging()
        return succeed(None)

    # -- durability ---------------------------------------------------------

    def _endure_args(self, key: Any, persist_to: int, replicate_to: int, cas: int,
                     timeout: float, interval: float) -> Tuple[bytes, int]:
        """Check endure's arguments (and count it): ``(key bytes, persist count)``."""
        k = self._begin("endure", key)
        if cas:
            check_cas(cas, key)
        persist = resolve_durability(
            persist_to, replicate_to, self.max_persist_to, self.max_replicate_to, key)[0]
        if not (isinstance(timeout, (int, float)) and timeout >= 0
                and isinstance(interval, (int, float)) and interval > 0):
            raise ArgumentError("timeout must be >= 0 and interval > 0", key=key)
        return k, persist

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = DEFAULT_ENDURE_TIMEOUT,
               interval: float = DEFAULT_ENDURE_INTERVAL) -> Deferred:
        """
        Fire once the key meets the durability requirement, or errback
        TimeoutError after ``timeout`` seconds on the bucket's clock.  Not
        polled (``interval`` is checked, not used): the key is checked again
        when it changes (or expires, or a commit reaches it).
        """
        try:
            k, persist = self._endure_args(key, persist_to, replicate_to, cas, timeout,
                                           interval)
            done = self._endured(k, key, persist, cas, check_removed)
            if done is None and not timeout:
                raise TimeoutError("durability not reached within 0s", key=key)
        except CouchbaseError as e:
            return fail(e)
        if done is not None:
            return succeed(done)
        return self._waiters.wait(EndureWaiter(k, key, persist, cas, check_removed, timeout))

    def _key_waiting(self, waiting: bool) -> None:
        """(EndureWaiters) Hear of mutations only while an endure waits for a key."""
        if waiting:
            self._mutated = self._mutated_waited  # type: ignore[method-assign]
        else:
            self.__dict__.pop("_mutated", None)

    def _mutated_waited(self, k: bytes, item: Optional[bytes], seqno: int, why: int) -> None:
        type(self)._mutated(self, k, item, seqno, why)
        if self._waiters.waits_for(k):
            # On the next turn: never inside the mutation being made.
            self._soon(self._waiters.key_changed, k)

    def _flushed(self, old: Dict[bytes, bytes], seqno: int) -> None:
        if len(self._waiters):
            self._soon(self._waiters.all_changed)
        ItemTable._flushed(self, old, seqno)

    def _soon(self, f: Callable[..., Any], *args: Any) -> None:
        """Call ``f(*args)`` on the next turn of the bucket's clock."""
        self.clock.callLater(0, f, *args)
