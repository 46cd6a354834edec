"""
The item pager: a bucket's RAM quota and what the bucket does when memory fills.

The bucket counts the memory it holds (``mem_used``): every key and stored
item (:func:`txcb.buckets.items.item_cost`: its bytes plus a fixed per-item
overhead), tombstones included.  A mutation that would take it past the high
watermark (85% of the quota, as Couchbase) wakes the pager, which reclaims
memory in the background, a batch of keys per reactor turn, down to the low
watermark (75%).  What reclaiming means is the bucket's *policy*:

``none`` (an ephemeral bucket's default, Couchbase's noEviction)
    nothing is reclaimed: a mutation that would grow memory past the quota
    fails with NoMemoryError (rc 0x82); reads, removes and writes that do not
    grow still work.
``nru`` (an ephemeral bucket, Couchbase's nruEviction)
    not-recently-used items are evicted: gone, counted in ``evictions``.
``value`` (a persistent bucket: value ejection)
    the values of clean items (already on disk) are ejected: keys and
    metadata stay, a read brings the value back from disk
    (:mod:`txcb.buckets._fetcher`).  Dirty items cannot be ejected: if they
    fill the quota, mutations get TemporaryFailError until the writer catches
    up (back-pressure, not an out-of-memory error).

"Recently used" is a second chance, the CLOCK algorithm: reads mark a key in
a set of references (capped at 10% of the quota, which is kept out of what
items may use); the pager walks the keys in turn (in the order they were
first written, so a new key is seen last), and a marked key loses its mark
instead of its value.  A mutation that finds the quota
full reclaims inline, a bounded number of keys (marked ones too, if the
unmarked ones do not make room), before it gives up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional, Set

from txcb.buckets.items import (
    EJECTED, EJECTED_LEN, EVICTED, eject, ejectable, item_cost)
from txcb.errors import NoMemoryError
from txcb.limits import HIGH_WATERMARK, LOW_WATERMARK

__all__ = ["ItemPager", "TOUCH_COST", "TOUCH_SHARE", "PAGER_BATCH", "INLINE_BUDGET"]

#: What a key in the reference set costs (a set slot, measured on CPython),
#: and the share of the quota the set may take.
TOUCH_COST = 64
TOUCH_SHARE = 0.1
#: How many keys one turn of the pager visits, and one mutation that finds
#: the quota full (before it gives up).
PAGER_BATCH = 10000
INLINE_BUDGET = 512
#: An item is worth ejecting if that frees at least this many bytes.
MIN_EJECT_GAIN = 32


class ItemPager:
    """
    Memory accounting against a quota, and the pager (a base of
    :class:`~txcb.buckets.table.ItemTable`, which calls :meth:`_grow`,
    :meth:`_touch` and keeps ``_mem`` up to date).
    """

    if TYPE_CHECKING:
        clock: Any
        _items: Dict[bytes, bytes]
        _locks: Dict[bytes, float]
        _closed: bool
        _stats: Dict[str, int]
        _seqno: int

        def _mutated(self, k: bytes, item: Optional[bytes], seqno: int, why: int) -> None: ...
        def _is_persisted(self, k: bytes) -> bool: ...

    def _init_pager(self, quota: int, policy: str) -> None:
        self.memory_quota = quota
        self.eviction = policy
        self._mem = 0
        self._nonresident = 0
        self._high = int(quota * HIGH_WATERMARK)
        self._low = int(quota * LOW_WATERMARK)
        reclaims = policy != "none"
        self._touch_cap = int(quota * TOUCH_SHARE) // TOUCH_COST if reclaims else 0
        self._limit = quota - self._touch_cap * TOUCH_COST
        self._touched: Optional[Set[bytes]] = set() if reclaims else None
        self._free_item = self._evict if policy == "nru" else self._eject
        self._sweep: List[bytes] = []
        self._sweep_at = 0
        self._barren = 0  # full passes in a row that freed nothing
        self._stuck = False  # inline reclaiming found nothing: wait for news
        self._paging: Any = None  # the pager's next run (a DelayedCall)
        self._stats.update(ejections=0, evictions=0, bg_fetches=0, oom_errors=0)

    # -- called by the item table --------------------------------------------

    def _touch(self, k: bytes) -> None:
        """Mark a key recently used (while the reference set has room)."""
        t = self._touched
        if t is not None and len(t) < self._touch_cap:
            t.add(k)

    def _grow(self, k: bytes, grow: int) -> None:
        """
        Memory is about to grow by ``grow`` bytes past the high watermark (for
        key ``k``): wake the pager, and if that would pass the quota, reclaim
        inline or refuse (nothing changed).
        """
        self._page_soon()
        if self._mem + grow <= self._limit:
            return
        if self._touched is not None and not self._stuck:
            target = self._limit - grow
            if not self._reclaim(target, k, INLINE_BUDGET) or self._mem > target:
                # Every key seen was marked: take cold and hot alike.
                self._reclaim(target, k, 8 * INLINE_BUDGET, force=True)
            # Nothing to free (all dirty, locked...): refusals cost nothing
            # until something may be freeable again (_may_reclaim).
            self._stuck = self._mem > target
        if self._mem + grow > self._limit:
            self._stats["oom_errors"] += 1
            raise self._full(k)

    def _full(self, k: bytes) -> Exception:
        """The error of a mutation the quota has no room for."""
        return NoMemoryError(
            "the bucket's RAM quota (%d bytes) is full: remove items or give it more "
            "memory (--memory-quota)" % (self.memory_quota,), key=k)

    def _forget(self, k: bytes, item: bytes) -> None:
        """Account for a key and its item leaving the table (room: reclaiming may help again)."""
        self._mem -= item_cost(k, item)
        self._stuck = False
        self._barren = 0
        if item[0] == EJECTED:
            self._nonresident -= 1
        t = self._touched
        if t:
            t.discard(k)

    def _forget_all(self) -> None:
        """Account for the table being emptied (a flush)."""
        self._mem = 0
        self._nonresident = 0
        if self._touched is not None:
            self._touched = set()
        self._sweep = []
        self._sweep_at = 0
        self._barren = 0
        self._stuck = False

    # -- the pager ---------------------------------------------------------------

    def _page_soon(self) -> None:
        """Run the pager on the next turn (if it reclaims, is not due already, has hope)."""
        if (self._paging is None and self._touched is not None and not self._closed
                and self._barren < 2):
            self._paging = self.clock.callLater(0, self._page)

    def _stop_paging(self) -> None:
        """(closing) Drop the pager's next run, if one is due."""
        paging, self._paging = self._paging, None
        if paging is not None and paging.active():
            paging.cancel()

    def _memory_tight(self) -> bool:
        """Whether memory is past the high watermark (the disk should hurry)."""
        return self._mem > self._high

    def _may_reclaim(self) -> None:
        """
        Items may be freeable now (the disk took writes, or clean values were
        read back): page again if above high.
        """
        self._barren = 0
        self._stuck = False
        if self._mem > self._high:
            self._page_soon()

    def _page(self) -> None:
        """One turn of the pager: a batch of keys, again next turn while above low."""
        self._paging = None
        if self._closed:
            return
        if self._reclaim(self._low, None, PAGER_BATCH):
            self._stuck = False
        if self._mem > self._low and self._barren < 2:
            self._paging = self.clock.callLater(0, self._page)

    def _reclaim(self, target: int, skip: Optional[bytes], budget: int,
                 force: bool = False) -> int:
        """
        Walk the keys in turn (CLOCK), freeing cold items (any item, if
        ``force``), until memory is at ``target`` or ``budget`` keys were
        visited; never frees ``skip``.  Returns the bytes freed.
        """
        items, free = self._items, self._free_item
        touched = None if force else self._touched
        keys, i, freed = self._sweep, self._sweep_at, 0
        while self._mem > target and budget > 0:
            if i >= len(keys):
                keys, i = self._next_pass(freed)
                if not keys:
                    break
            k = keys[i]
            i += 1
            budget -= 1
            item = items.get(k)
            if item is None or k == skip:
                continue
            if touched and k in touched:
                touched.discard(k)
                continue
            freed += free(k, item)
        self._sweep_at = i
        if freed:
            self._barren = 0
        return freed

    def _next_pass(self, freed: int) -> Any:
        """A new pass over the keys (the old one ended); counts barren passes."""
        if not freed:
            self._barren += 1
        self._sweep = list(self._items) if self._barren < 3 else []
        self._sweep_at = 0
        return self._sweep, 0

    def _evict(self, k: bytes, item: bytes) -> int:
        """(nru) Drop an unlocked item; the bytes freed.  Not a mutation: no seqno."""
        if self._locks and k in self._locks:
            return 0
        del self._items[k]
        cost = item_cost(k, item)
        self._forget(k, item)
        self._stats["evictions"] += 1
        self._mutated(k, None, self._seqno, EVICTED)
        return cost

    def _eject(self, k: bytes, item: bytes) -> int:
        """(value) Keep only the metadata of a clean, unlocked item; the bytes freed."""
        if (item[0] == EJECTED or len(item) < EJECTED_LEN + MIN_EJECT_GAIN
                or not ejectable(item) or (self._locks and k in self._locks)
                or not self._is_persisted(k)):
            return 0
        ejected = eject(item)
        self._items[k] = ejected
        gain = len(item) - len(ejected)
        self._mem -= gain
        self._nonresident += 1
        self._stats["ejections"] += 1
        return gain

    # -- figures -------------------------------------------------------------------

    def quota_stats(self) -> Dict[str, Any]:
        """The quota's figures, as ``stats()`` reports them."""
        items = len(self._items)
        resident = items - self._nonresident
        touched = len(self._touched) if self._touched is not None else 0
        return {
            "mem_used": self._mem + touched * TOUCH_COST,
            "quota": self.memory_quota,
            "mem_high_wat": self._high,
            "mem_low_wat": self._low,
            "eviction": self.eviction,
            "resident_items": resident,
            "resident_ratio": resident / items if items else 1.0,
            "ejections": self._stats["ejections"],
            "evictions": self._stats["evictions"],
            "bg_fetches": self._stats["bg_fetches"],
            "oom_errors": self._stats["oom_errors"],
        }
