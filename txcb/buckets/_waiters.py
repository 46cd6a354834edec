"""
ENDURE waiters, indexed so that waiting costs nothing per mutation, per
commit or per clock tick beyond the waiters an event releases: by key (those
waiting for the key to change, woken by the bucket when it does), by seqno
(those waiting for the disk, woken by a commit at or past it) and by time
(timeouts and TTL expiries, behind one clock call for the earliest).  A
cancelled waiter leaves the key index at once; its heap entries are dropped
when met (and compacted when they pile up).
"""

from __future__ import annotations

import heapq
from itertools import count
from typing import Any, Callable, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txcb.buckets.items import expiry_of
from txcb.errors import CouchbaseError, TimeoutError

__all__ = ["EndureWaiter", "EndureWaiters"]

_TIMEOUT = 0
_RECHECK = 1


class EndureWaiter:
    """One endure: what it waits for and its Deferred."""

    __slots__ = ("k", "key", "persist", "cas", "check_removed", "d", "timeout", "live")

    def __init__(self, k: bytes, key: Any, persist: int, cas: int,
                 check_removed: bool, timeout: float) -> None:
        self.k = k
        self.key = key
        self.persist = persist
        self.cas = cas
        self.check_removed = check_removed
        self.timeout = timeout
        self.d: Any = None
        self.live = True


class EndureWaiters:
    """
    The waiters of a bucket.  ``bucket`` provides ``clock``, ``_items``,
    ``_seqno``, ``_endured(k, key, persist, cas, check_removed)`` and
    ``_key_waiting(bool)`` (told when the key index becomes non-empty/empty).
    """

    def __init__(self, bucket: Any) -> None:
        self._bucket = bucket
        self._by_key: Dict[bytes, List[EndureWaiter]] = {}
        self._by_seqno: List[Tuple[int, int, EndureWaiter]] = []
        self._by_time: List[Tuple[float, int, int, EndureWaiter]] = []
        self._timer: Any = None
        self._order = count()
        self._live = 0
        self._dead = 0  # cancelled or done entries still in the heaps

    def __len__(self) -> int:
        return self._live

    def waits_for(self, k: bytes) -> bool:
        """Whether a waiter waits for the key to change."""
        return k in self._by_key

    def wait(self, w: EndureWaiter) -> Deferred:
        """Register a waiter not met now; its Deferred fires when it is (or times out)."""
        w.d = Deferred(lambda _d: self._cancel(w))
        self._live += 1
        self._at(self._bucket.clock.seconds() + w.timeout, _TIMEOUT, w)
        self._place(w)
        return w.d

    # -- events ----------------------------------------------------------------

    def key_changed(self, k: bytes) -> None:
        """The key was mutated, removed or expired."""
        ws = self._by_key.pop(k, None)
        if ws is not None:
            if not self._by_key:
                self._bucket._key_waiting(False)
            for w in ws:
                self._recheck(w)

    def keys_changed(self, keys: Any) -> None:
        """Several keys changed (a committed batch): wake their waiters."""
        by_key = self._by_key
        if not by_key:
            return
        if len(keys) < len(by_key):
            hit = [k for k in keys if k in by_key]
        else:
            hit = [k for k in by_key if k in keys]
        for k in hit:
            self.key_changed(k)

    def all_changed(self) -> None:
        """Every key changed (a flush)."""
        for k in list(self._by_key):
            self.key_changed(k)

    def committed(self, seqno: int) -> None:
        """Everything up to ``seqno`` is on disk."""
        heap = self._by_seqno
        due = []
        while heap and heap[0][0] <= seqno:
            due.append(heapq.heappop(heap)[2])
        for w in due:
            if w.live:
                self._recheck(w)

    def fail_all(self, error: Callable[[Any], Exception]) -> None:
        """Errback every waiter with ``error(key)`` (the bucket closes)."""
        waiters = [w for ws in self._by_key.values() for w in ws]
        waiters += [e[2] for e in self._by_seqno]
        for w in waiters:
            if w.live:
                self._finish(w, Failure(error(w.key)))
        self._by_key.clear()
        self._by_seqno = []
        self._by_time = []
        self._dead = 0
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    # -- steps -------------------------------------------------------------------

    def _place(self, w: EndureWaiter) -> None:
        """Index a waiter that is not met yet: by its key or by the seqno it needs."""
        b = self._bucket
        item = b._items.get(w.k) if w.check_removed else None
        if item is not None:
            if not self._by_key:
                b._key_waiting(True)
            self._by_key.setdefault(w.k, []).append(w)
            exp = expiry_of(item)
            if exp:
                self._at(exp, _RECHECK, w)
        else:
            heapq.heappush(self._by_seqno, (b._seqno, next(self._order), w))

    def _recheck(self, w: EndureWaiter) -> None:
        try:
            done: Any = self._bucket._endured(w.k, w.key, w.persist, w.cas, w.check_removed)
        except CouchbaseError as e:
            done = Failure(e)
        if done is None:
            self._place(w)
        else:
            self._finish(w, done)

    def _finish(self, w: EndureWaiter, result: Any) -> None:
        w.live = False
        self._live -= 1
        self._dead += 1
        d, w.d = w.d, None
        if not self._live:
            self._by_seqno = []
            self._by_time = []
            self._dead = 0
            self._arm()
        if isinstance(result, Failure):
            d.errback(result)
        else:
            d.callback(result)

    def _cancel(self, w: EndureWaiter) -> None:
        if not w.live:
            return
        w.live = False
        w.d = None
        self._live -= 1
        self._dead += 1
        self._unkey(w)
        if not self._live:
            self._by_seqno = []
            self._by_time = []
            self._dead = 0
            self._arm()
        elif self._dead > 64 and self._dead > self._live:
            self._compact()
        else:
            heap = self._by_time
            if heap and heap[0][3] is w:
                while heap and not heap[0][3].live:
                    heapq.heappop(heap)
                self._arm()

    def _unkey(self, w: EndureWaiter) -> None:
        ws = self._by_key.get(w.k)
        if ws is not None and w in ws:
            ws.remove(w)
            if not ws:
                del self._by_key[w.k]
                if not self._by_key:
                    self._bucket._key_waiting(False)

    def _compact(self) -> None:
        """Drop the heap entries of waiters that are done (they are a heuristic count)."""
        self._by_seqno = [e for e in self._by_seqno if e[2].live]
        heapq.heapify(self._by_seqno)
        self._by_time = [e for e in self._by_time if e[3].live]
        heapq.heapify(self._by_time)
        self._dead = 0
        self._arm()

    def _at(self, when: float, kind: int, w: EndureWaiter) -> None:
        heap = self._by_time
        heapq.heappush(heap, (when, kind, next(self._order), w))
        if heap[0][3] is w:
            self._arm()

    def _arm(self) -> None:
        """One clock call, for the earliest timeout or recheck."""
        clock = self._bucket.clock
        if not self._by_time:
            if self._timer is not None and self._timer.active():
                self._timer.cancel()
            self._timer = None
            return
        delay = max(0.0, self._by_time[0][0] - clock.seconds())
        if self._timer is not None and self._timer.active():
            self._timer.reset(delay)
        else:
            self._timer = clock.callLater(delay, self._tick)

    def _tick(self) -> None:
        self._timer = None
        now = self._bucket.clock.seconds()
        heap = self._by_time
        due = []
        while heap and heap[0][0] <= now:
            due.append(heapq.heappop(heap))
        for _when, kind, _n, w in due:
            if not w.live:
                continue
            if kind == _RECHECK:
                ws = self._by_key.get(w.k)
                if ws is not None and w in ws:
                    self.key_changed(w.k)
            else:
                self._timed_out(w)
        if self._timer is None:
            self._arm()

    def _timed_out(self, w: EndureWaiter) -> None:
        """The timeout: met after all, or TimeoutError."""
        try:
            done: Optional[Any] = self._bucket._endured(w.k, w.key, w.persist, w.cas,
                                                        w.check_removed)
        except CouchbaseError as e:
            done = Failure(e)
        if done is None:
            done = Failure(TimeoutError("durability not reached within %.3gs"
                                        % (w.timeout,), key=w.key))
        self._unkey(w)
        self._finish(w, done)
