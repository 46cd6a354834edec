"""
Streaming key scans: :meth:`IBucket.scan <txcb.interfaces.IBucket.scan>`.

``bucket.scan(...)`` fires a :class:`ScanResult`, a cursor that hands out the
items of a key range in ascending byte order of the key, one batch at a time,
and only when asked: the consumer pulls, so a slow consumer slows the scan
down instead of piling rows up in memory (on the server, a remote scan holds
nothing between batches: each batch is one stateless SCAN request carrying
the key to resume from, see ``docs/protocol.rst``)::

    scan = yield bucket.scan(prefix="user:", batch_size=500)
    while True:
        rows = yield scan.next_batch()        # [] once the range is exhausted
        if not rows:
            break
        for row in rows:                      # txcb.results.ScanItem
            print(row.key, row.value, row.cas, row.expiry)

or, in a coroutine run by Twisted (``defer.ensureDeferred``)::

    async for row in await bucket.scan(start="a", end="b"):
        ...

or with a consumer whose Deferred pauses the stream until it fires::

    count = yield scan.each(write_row)        # write_row(row) -> None or a Deferred

From asyncio code, turn each Deferred into a Future:
``rows = await scan.next_batch().asFuture(loop)``.

Consistency: every key that is in the range for the whole scan is returned
exactly once; a key added or removed during the scan may or may not be; each
row is the item as it was when its batch was read.  :attr:`continuation`
(the start bound of the next batch) lets a later scan resume where this one
stopped: ``bucket.scan(..., start=scan.continuation)``.

The embedded bucket walks a :class:`KeyIndex`: one sorted list of its keys
shared by all its scans, built by the first scan and then kept up to date
lazily (keys added since are merged in by the next batch; removed keys are
skipped and dropped when they outnumber the live ones), so a scan never
copies the key set and costs O(log n + batch) per batch.
"""

from __future__ import annotations

from bisect import insort
from typing import Any, Callable, Dict, List, Optional

from twisted.internet.defer import Deferred, fail, inlineCallbacks, succeed
from twisted.python.failure import Failure

from txcb.errors import ArgumentError, CouchbaseError
from txcb.results import ScanItem

__all__ = ["ScanResult", "KeyIndex"]

#: ``fetch(start) -> Deferred of (rows, resume)``: one batch from ``start``
#: (inclusive), and the start of the next one (None: the range is done).
Fetch = Callable[[bytes], Deferred]


class ScanResult:
    """
    A scan in progress (see the module docstring).

    :ivar continuation: the start bound (bytes) of the next batch, or None
        once the scan has reached the end of its range (or was cancelled).
    :ivar rows: how many rows were handed out so far.
    """

    def __init__(self, fetch: Fetch, start: bytes = b"") -> None:
        self._fetch = fetch
        self.continuation: Optional[bytes] = start
        self.rows = 0
        self._ready: Optional[List[ScanItem]] = None
        self._pending: Optional[Deferred] = None
        self._buffer: List[ScanItem] = []
        self._buffer_pos = 0

    def __repr__(self) -> str:
        return "<ScanResult rows=%d continuation=%r>" % (self.rows, self.continuation)

    @classmethod
    def open(cls, fetch: Fetch, start: bytes = b"") -> Deferred:
        """Fetch the first batch, then fire the ScanResult (or the error)."""
        scan = cls(fetch, start)

        def first(rows: List[ScanItem]) -> "ScanResult":
            scan._ready = rows
            return scan
        return scan._fetch_rows().addCallback(first)

    @property
    def done(self) -> bool:
        """Whether every row has been handed out."""
        return self.continuation is None and not self._ready

    def next_batch(self) -> Deferred:
        """
        Fire the next batch of rows (a list of
        :class:`~txcb.results.ScanItem`), or ``[]`` when the scan is
        complete.  One call at a time: the next batch is fetched only when
        asked for, which is the scan's flow control.
        """
        if self._pending is not None:
            return fail(ArgumentError("next_batch() called again before the previous "
                                      "batch arrived"))
        ready = self._ready
        if ready is not None:
            self._ready = None
            self.rows += len(ready)
            return succeed(ready)
        if self.continuation is None:
            return succeed([])

        def got(rows: List[ScanItem]) -> List[ScanItem]:
            self.rows += len(rows)
            return rows
        return self._fetch_rows().addCallback(got)

    def _fetch_rows(self) -> Deferred:
        """Fetch until some rows arrive or the range is done."""
        @inlineCallbacks
        def run() -> Any:
            while True:
                start = self.continuation
                if start is None:
                    return []
                try:
                    d = self._fetch(start)
                except CouchbaseError as e:
                    d = fail(e)
                rows, resume = yield d
                self.continuation = resume
                if rows or resume is None:
                    return rows
                # A batch of removed or expired keys only: go on.

        d = run()
        if not d.called:
            self._pending = d

            def clear(result: Any) -> Any:
                if self._pending is d:
                    self._pending = None
                return result
            d.addBoth(clear)
        return d

    def cancel(self) -> None:
        """Stop the scan: a batch being fetched errbacks CancelledError, and
        :meth:`next_batch` fires ``[]`` from now on."""
        self.continuation = None
        self._ready = None
        self._buffer = []
        pending = self._pending
        if pending is not None:
            pending.cancel()

    close = cancel

    def each(self, callback: Callable[[ScanItem], Any]) -> Deferred:
        """
        Call ``callback(row)`` for every row, in order; when it returns a
        Deferred, wait for it before the next row (and fetch no new batch
        meanwhile).  Fires the number of rows, or the first error (from the
        scan or the callback), after which the scan is cancelled.
        """
        @inlineCallbacks
        def run() -> Any:
            n = 0
            while True:
                rows = yield self.next_batch()
                if not rows:
                    return n
                for row in rows:
                    r = callback(row)
                    if isinstance(r, Deferred):
                        yield r
                    n += 1

        def failed(f: Failure) -> Failure:
            self.cancel()
            return f
        return run().addErrback(failed)

    # -- async iteration (coroutines driven by Twisted: defer.ensureDeferred) ----

    def __aiter__(self) -> "ScanResult":
        return self

    async def __anext__(self) -> ScanItem:
        if self._buffer_pos >= len(self._buffer):
            rows = await self.next_batch()
            if not rows:
                raise StopAsyncIteration
            self._buffer, self._buffer_pos = rows, 0
        row = self._buffer[self._buffer_pos]
        self._buffer_pos += 1
        return row


class KeyIndex:
    """
    A sorted list of the keys of a bucket's item dict, for scans.

    The bucket calls :meth:`add` for each new key (from its store path, only
    while an index exists); :meth:`sorted_keys` merges them in.  Removed keys
    stay listed until they outnumber the live ones (scans skip them), and a
    key removed then added again is listed twice, next to itself (scans skip
    repeats), until the next rebuild.
    """

    def __init__(self, items: Dict[bytes, Any]) -> None:
        self._items = items
        self._keys = sorted(items)
        self._added: List[bytes] = []
        self._overflow = False

    def add(self, k: bytes) -> None:
        added = self._added
        added.append(k)
        if len(added) > len(self._keys) + 4096:  # cheaper to sort afresh
            self._overflow = True
            added.clear()

    def usable(self, items: Dict[bytes, Any]) -> bool:
        """Whether the index still describes ``items`` (else build a new one)."""
        return (items is self._items and not self._overflow
                and len(self._keys) <= 2 * len(items) + 4096)

    def sorted_keys(self) -> List[bytes]:
        added = self._added
        if added:
            keys = self._keys
            added.sort()
            if len(added) <= 32:
                for k in added:
                    insort(keys, k)
            else:
                keys.extend(added)
                keys.sort()  # two sorted runs: one linear merge
            added.clear()
        return self._keys
