"""
The embedded bucket's item table: the items, their locks and expiries.

Items live in one dict, key bytes -> the stored item (:mod:`txcb.buckets.items`).
Expiry is lazy (checked on access) plus a pager that reclaims expired items
periodically from a heap of expiry times.  Locks sit in a separate, usually
empty, dict.  Every mutation gets a bucket-wide sequence number and passes
through :meth:`ItemTable._mutated`, the hook a persistent bucket uses to
queue the change for disk.  Scans walk a sorted :class:`~txcb.scan.KeyIndex`
of the keys, built on the first scan.
"""

from __future__ import annotations

import heapq
import time
from bisect import bisect_left
from math import ceil
from typing import Any, Dict, List, Optional, Tuple

from txcb.buckets.items import (
    DELETED, EJECTED, EXPIRED, ITEM_OVERHEAD, LOCKED_CAS, LONG_FROM, STORED, XATTRS,
    cas_of, expiry_of, header, item_cost, long_unpack, make_item, make_tombstone, make_xitem,
    meta, system_xattrs, value_len, xattrs_of)
from txcb.buckets.pager import ItemPager
from txcb.errors import (
    KeyExistsError, NetworkError, NotFoundError, TemporaryFailError, WouldBlock)
from txcb.results import OperationResult, ScanItem
from txcb.scan import KeyIndex

__all__ = ["ItemTable", "OPS", "MAX_TOMBSTONES"]

#: The operations a bucket counts (its ``op_*`` stats).
OPS = ("get", "upsert", "insert", "replace", "remove", "touch", "lock", "unlock",
       "counter", "append", "prepend", "endure", "stats", "flush", "scan", "lookup_in",
       "mutate_in")
#: What a scan row counts for against ``batch_bytes`` besides its key and
#: value (as the wire does).
SCAN_ROW_OVERHEAD = 22
#: How many items of a flushed table one reactor turn frees.
FREE_BATCH = 10000
#: At most this many tombstones are kept (the oldest go first): Couchbase
#: purges them by age, this bucket by count, so they stay bounded.
MAX_TOMBSTONES = 100000


class ItemTable(ItemPager):
    """
    Items with CAS, expiry, locks and sequence numbers, on an injected clock,
    in a RAM quota (:class:`~txcb.buckets.pager.ItemPager`).

    The base of :class:`~txcb.buckets.embedded.EmbeddedBucket`: it holds the
    state and the steps every operation is made of; the bucket holds the
    operations.
    """

    def __init__(self, clock: Any, transcoder: Any, quota: int, policy: str) -> None:
        self.clock = clock
        self.transcoder = transcoder
        self._items: Dict[bytes, bytes] = {}
        self._locks: Dict[bytes, float] = {}
        # Deleted documents that kept system xattrs (txcb.buckets.items).
        self._tombstones: Dict[bytes, bytes] = {}
        self._expiries: List[Tuple[float, bytes]] = []
        self._bytes = 0
        self._cas = time.time_ns()
        self._seqno = 0
        self._closed = False
        # Mutations ask _check_mutation first (closed, or refusing writes).
        self._gated = False
        self._stats = {"hits": 0, "misses": 0, "expired": 0}
        self._ops = dict.fromkeys(OPS, 0)
        self._scan_index: Any = None  # a KeyIndex, once something scans
        self._init_pager(quota, policy)

    def _check_open(self) -> None:
        if self._closed:
            raise NetworkError("the bucket is closed")

    def _check_mutation(self, key: Any) -> None:
        """(only while ``_gated``) Refuse a mutation now: closed (or, in a subclass, busy)."""
        self._check_open()

    def _next_cas(self) -> int:
        self._cas = cas = self._cas + 1
        return cas

    def _lookup(self, k: bytes, now: float) -> Optional[bytes]:
        """The live item for a key, expiring it on the way if it is due."""
        item = self._items.get(k)
        if item is not None and item[0] >= LONG_FROM:
            exp = long_unpack(item)[2]
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

    def _check_unlocked(self, k: bytes, now: float, key: Any) -> None:
        if self._locks and self._is_locked(k, now):
            raise TemporaryFailError("the key is locked", key=key)

    def _put(self, k: bytes, old: Optional[bytes], cas: int, exp: float, flags: int,
             data: bytes, xattrs: Optional[bytes] = None) -> int:
        """
        Store an item; ``xattrs`` (encoded) None keeps the old item's, as a
        whole-value mutation does in Couchbase, b"" drops them.  A mutation
        ends a lock (the caller checked its cas).  Memory past the high
        watermark goes through the pager first, which may refuse the write
        (nothing changed then).
        """
        if xattrs is None and (old is None or old[0] != XATTRS):
            item = make_item(cas, exp, flags, data)
            size = len(data)
        else:
            blob = xattrs if xattrs is not None else xattrs_of(old or b"")
            item = make_xitem(cas, exp, flags, blob, data)
            size = len(blob) + len(data)
        grow = len(item) - len(old) if old is not None else len(item) + len(k) + ITEM_OVERHEAD
        if grow > 0 and self._mem + grow > self._high:
            self._grow(k, grow)
        self._items[k] = item
        self._mem += grow
        if self._locks:
            self._locks.pop(k, None)
        if old is None:
            self._bytes += len(k) + size
            if self._scan_index is not None:
                self._scan_index.add(k)
            if self._tombstones:
                self._drop_tombstone(k)  # a new document: the deleted one is gone
        else:
            self._bytes += size - value_len(old)
            if old[0] == EJECTED:
                self._nonresident -= 1
        if exp:
            heapq.heappush(self._expiries, (exp, k))
        self._seqno = seqno = self._seqno + 1
        self._mutated(k, item, seqno, STORED)
        return seqno

    def _remove_item(self, k: bytes, item: bytes, why: int,
                     keep: Optional[bytes] = None) -> int:
        """
        Remove a live item.  Its system xattrs (or ``keep``, encoded xattrs,
        if given) stay on a tombstone with the latest CAS handed out, as a
        deletion leaves them in Couchbase.
        """
        del self._items[k]
        self._locks.pop(k, None)
        self._bytes -= len(k) + value_len(item)
        self._forget(k, item)
        if why == EXPIRED:
            self._stats["expired"] += 1
        self._seqno = seqno = self._seqno + 1
        tomb = None
        if keep is not None or item[0] == XATTRS:
            kept = system_xattrs(xattrs_of(item)) if keep is None else keep
            if kept:
                tomb = self._tombstones[k] = make_tombstone(self._cas, kept)
                self._mem += item_cost(k, tomb)
        self._mutated(k, tomb, seqno, why)
        if tomb is not None and len(self._tombstones) > self.max_tombstones:
            self._purge_tombstone()
        return seqno

    #: How many tombstones the table keeps (see MAX_TOMBSTONES).
    max_tombstones = MAX_TOMBSTONES

    def _purge_tombstone(self) -> None:
        """Forget the oldest tombstone (a mutation of its own: the disk forgets it too)."""
        k = next(iter(self._tombstones))
        self._drop_tombstone(k)
        self._seqno = seqno = self._seqno + 1
        self._mutated(k, None, seqno, DELETED)

    def _drop_tombstone(self, k: bytes) -> None:
        tomb = self._tombstones.pop(k, None)
        if tomb is not None:
            self._mem -= item_cost(k, tomb)

    def _mutated(self, k: bytes, item: Optional[bytes], seqno: int, why: int) -> None:
        """Called after every change of an item (item None: removed)."""

    def _check_mutable(self, k: bytes, item: bytes, cas: int, now: float, key: Any) -> None:
        """
        Refuse a mutation on a locked item without the lock cas, or a cas
        mismatch.  (The mutation, once made, ends the lock: a refused one keeps it.)
        """
        item_cas = cas_of(item)
        if self._locks and self._is_locked(k, now):
            if cas != item_cas:
                raise TemporaryFailError("the key is locked", key=key)
        elif cas and cas != item_cas:
            raise KeyExistsError("CAS mismatch", key=key)

    def _remove_all(self) -> int:
        """
        Remove every item at once, in O(1): the table is swapped for an empty
        one, the old one handed to :meth:`_flushed` (one seqno for the whole
        flush); returns how many items it held.
        """
        old = self._items
        removed = len(old)
        self._items = {}
        self._locks = {}
        self._tombstones = {}
        self._expiries = []
        self._bytes = 0
        self._scan_index = None
        self._forget_all()
        if removed:
            self._seqno += 1
            self._flushed(old, self._seqno)
        return removed

    def _flushed(self, old: Dict[bytes, bytes], seqno: int) -> None:
        """Called after a flush with the old items: freed in the background, in batches."""
        self.clock.callLater(0, self._free_some, old)

    def _free_some(self, old: Dict[bytes, bytes]) -> None:
        """Drop up to FREE_BATCH of a flushed table's items; again later if more are left."""
        pop = old.popitem
        for _ in range(min(FREE_BATCH, len(old))):
            pop()
        if old:
            self.clock.callLater(0, self._free_some, old)

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
        item_cas = cas_of(item)
        if cas and cas != item_cas:
            raise KeyExistsError("the key was modified since (CAS differs)", key=key)
        if persist and not self._is_persisted(k):
            return None
        return OperationResult(key, item_cas)

    def _is_persisted(self, k: bytes) -> bool:
        """Whether the key's latest change is on disk (no disk: never)."""
        return False

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
                item_exp = expiry_of(item)
                if item_exp and item_exp <= now:
                    self._remove_item(k, item, EXPIRED)
                    removed += 1
        if len(heap) > 2 * len(self._items) + 1024:
            # Stale entries (keys re-stored or touched) outnumber live ones.
            self._expiries = [(e, k) for k, it in self._items.items()
                              for e in (expiry_of(it),) if e]
            heapq.heapify(self._expiries)
        return removed

    def scan_batch_sync(self, prefix: bytes, start: bytes, end: bytes, ids_only: bool,
                        batch_size: int, batch_bytes: int) -> Tuple[List[Any], Any]:
        """
        One batch of a scan, from ``start`` (arguments as
        :func:`txcb.validation.scan_args` returns them): ``(rows, resume)``,
        ``resume`` being the start of the next batch or None at the end of the
        range.  Walks the shared sorted :class:`~txcb.scan.KeyIndex`;
        ``batch_bytes`` counts rows as the wire does (22 bytes + key + value)
        and lets one row through on its own.  WouldBlock, naming them, if
        values of the batch are ejected.
        """
        missing: List[bytes] = []
        batch = self._scan_batch(prefix, start, end, ids_only, batch_size, batch_bytes,
                                 missing)
        if missing:
            raise WouldBlock(missing)
        return batch

    def _scan_batch(self, prefix: bytes, start: bytes, end: bytes, ids_only: bool,
                    batch_size: int, batch_bytes: int, missing: List[bytes]
                    ) -> Tuple[List[Any], Any]:
        """scan_batch_sync's batch; the keys of ejected values go to ``missing``."""
        self._check_open()
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
            if item is not None and item[0] == EJECTED and not ids_only:
                missing.append(k)
                size += SCAN_ROW_OVERHEAD + len(k) + value_len(item)
                if size > batch_bytes or len(rows) + len(missing) >= batch_size:
                    break
            elif item is not None:
                row = self._scan_row(k, item, now, ids_only)
                if row is not None:
                    raw = row.raw
                    cost = SCAN_ROW_OVERHEAD + len(k) + (len(raw) if raw is not None else 0)
                    if rows and size + cost > batch_bytes:
                        return rows, k
                    size += cost
                    rows.append(row)
                    if len(rows) >= batch_size:
                        break
            if budget <= 0:
                break
        if i >= n or (end and keys[i] >= end) or not keys[i].startswith(prefix):
            return rows, None
        return rows, k + b"\x00"

    def _scan_row(self, k: bytes, item: bytes, now: float, ids_only: bool
                  ) -> Optional[ScanItem]:
        """A scan's row for an item, or None if it has expired (it is removed)."""
        cas, exp, flags = meta(item)
        if exp and exp <= now:
            self._remove_item(k, item, EXPIRED)
            return None
        if self._locks and self._is_locked(k, now):
            cas = LOCKED_CAS
        value = None if ids_only else item[header(item)[3]:]
        return ScanItem.from_row(k, flags, cas, ceil(exp) if exp else 0, value,
                                 self.transcoder)
