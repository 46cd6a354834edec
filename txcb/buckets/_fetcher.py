"""
The persistent bucket's background fetcher: ejected values read back from
the data file (Couchbase's "bg fetch"), never on the reactor thread.

Requests that find values ejected ask for their keys; the keys wait in the
next batch while one batch is read, on a thread of its own with a read-only
connection of its own (SQLite's WAL lets it read beside the writer).  When a
batch is read the bucket restores the values still ejected (a key written
or removed since is left as it is) and every request of the batch goes on.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

from twisted.internet.defer import Deferred
from twisted.internet.threads import deferToThreadPool
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txcb.buckets import _store
from txcb.errors import InternalError, NetworkError, TemporaryFailError

__all__ = ["BackgroundFetcher"]

#: restore(keys, found, damaged) -> the keys that could not be restored.
Restore = Callable[[List[bytes], Dict[bytes, bytes], List[bytes]], Set[bytes]]


class _Batch:
    """The keys of one read, and who waits for them."""

    def __init__(self) -> None:
        self.keys: Dict[bytes, None] = {}
        self.waiters: List[Tuple[Sequence[bytes], Deferred]] = []


class BackgroundFetcher:
    """
    Reads values back, a batch at a time, on a thread of its own.

    :param reactor: the reactor the thread reports to.
    :param path: the data file.
    :param restore: called on the reactor thread with what a batch read;
        returns the keys it could not restore (damaged or missing on disk).
    """

    def __init__(self, reactor: Any, path: str, name: str, restore: Restore) -> None:
        self._reactor = reactor
        self._path = path
        self._restore = restore
        self._pool = ThreadPool(1, 1, name="txcb-fetcher-%s" % (name,))  # started on first use
        self._conn: Any = None  # opened by the thread, on first use
        self._next = _Batch()
        self._reading: Optional[_Batch] = None
        self._starting: Any = None  # the next turn's _start, once asked for
        self._closed = False

    def fetch(self, keys: Sequence[bytes]) -> Deferred:
        """A Deferred firing (None) once ``keys`` were read back (or errbacking)."""
        d: Deferred = Deferred()
        if self._closed:
            d.errback(NetworkError("the bucket is closed"))
            return d
        batch = self._next
        batch.keys.update(dict.fromkeys(keys))
        batch.waiters.append((keys, d))
        if self._reading is None and self._starting is None:
            # On the next turn: what the rest of this turn asks for joins the read.
            self._starting = self._reactor.callLater(0, self._start)
        return d

    def _start(self) -> None:
        self._starting = None
        if self._closed or not self._next.keys:
            return
        batch, self._next = self._next, _Batch()
        self._reading = batch
        if not self._pool.started:
            self._pool.start()
        d = deferToThreadPool(self._reactor, self._pool, self._read, list(batch.keys))
        d.addBoth(self._done, batch)

    def _read(self, keys: List[bytes]) -> Tuple[Dict[bytes, bytes], List[bytes]]:
        """(on the thread) The stored items of ``keys``."""
        if self._conn is None:
            self._conn = _store.open_reader(self._path)
        return _store.read_items(self._conn, keys)

    def _done(self, result: Any, batch: _Batch) -> None:
        self._reading = None
        if isinstance(result, Failure):
            bad: Set[bytes] = set(batch.keys)
            error = "cannot read %s: %s" % (self._path, result.getErrorMessage())
        else:
            bad = self._restore(list(batch.keys), *result)
            error = ""
        if self._next.keys and not self._closed:
            self._start()  # the next read overlaps the requests going on below
        for keys, d in batch.waiters:
            if d.called:
                continue  # (cancelled)
            lost = [k for k in keys if k in bad]
            if not lost:
                d.callback(None)
            elif error:
                d.errback(TemporaryFailError(error, key=lost[0]))
            else:
                d.errback(InternalError(
                    "the value of key %r cannot be read back from %s (damaged or missing "
                    "on disk): it is not served" % (lost[0], self._path), key=lost[0]))

    def close(self) -> None:
        """Fail whoever waits, stop the thread, close the connection."""
        self._closed = True
        if self._starting is not None and self._starting.active():
            self._starting.cancel()
        self._starting = None
        waiting = self._next.waiters + (self._reading.waiters if self._reading else [])
        self._next = _Batch()
        for _keys, d in waiting:
            if not d.called:
                d.errback(NetworkError("the bucket is closed"))
        if self._pool.started:
            self._pool.stop()
        if self._conn is not None:
            conn, self._conn = self._conn, None
            conn.close()
