"""
The persistent bucket's write queue: mutations collected in a dirty dict and
written behind, one batch (one SQLite transaction) at a time, by a writer
thread (see :mod:`txcb.buckets.persistent` for the design).
"""

from __future__ import annotations

from collections import deque
from typing import TYPE_CHECKING, Any, Deque, Dict, Optional, Tuple

from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.buckets import _store
from txcb.errors import TemporaryFailError
from txcb.results import OperationResult

__all__ = ["WriteQueue"]

_log = Logger()


class WriteQueue:
    """
    The write-behind queue of a bucket (a base of PersistentBucket): every
    mutation's latest item per key, the batch being written, the waiters for
    a seqno to be on disk.
    """

    if TYPE_CHECKING:
        # What the bucket provides.
        _reactor: Any
        _conn: Any
        _pool: Any
        _bg_pool: Any
        _state: str
        _seqno: int
        _cas: int
        _waiters: Any
        flush_delay: float
        retry_interval: float
        max_retry_interval: float
        checkpoint_interval: float
        max_queue: int
        close_timeout: float
        path: str
        name: str
        _gated: bool
        def _may_reclaim(self) -> None: ...
        def _memory_tight(self) -> bool: ...

        def _finish_close(self, failure: Optional[Failure]) -> None: ...


    def _init_queue(self) -> None:
        self._dirty: Dict[bytes, Optional[bytes]] = {}
        self._inflight: Dict[bytes, Optional[bytes]] = {}
        self._busy = False  # a batch is scheduled, being written or waiting to retry
        self._writing = False
        self._scheduled: Any = None
        self._lazy = False  # _scheduled is a flush_delay wait (not a retry)
        self._persisted_seqno = 0
        self._marked_cas = self._marked_seqno = 0  # the meta rows on disk
        # (seqno, Deferred or another target with called/callback/errback, result)
        self._persist_waiters: Deque[Tuple[int, Any, OperationResult]] = deque()
        self._disk = {"flushed": 0, "batches": 0, "errors": 0, "last_flush_duration": 0.0,
                      "last_batch": 0, "warmup_time": 0.0, "warmup_items": 0,
                      "warmup_expired": 0, "checkpoints": 0, "refused": 0, "lost": 0}
        self._wipe = False  # the next batch deletes every row first (a flush)
        self._wiping = False  # the batch being written does
        self._moot = False  # a flush came after the batch being written was taken
        self._failures = 0  # batches failed in a row
        self._refusing = False  # failing, and the queue is at max_queue: no mutations
        self._last_error = ""
        self._ckpt_at = 0.0  # when (reactor seconds) the last checkpoint was
        self._ckpt_seqno = 0  # and the seqno the manifest says the file holds
        self._close_deadline = 0.0  # a closing bucket stops retrying then

    def _mutated(self, k: bytes, item: Optional[bytes], seqno: int, why: int) -> None:
        dirty = self._dirty
        dirty[k] = item
        if not self._busy:
            self._busy = True
            self._lazy = True
            self._scheduled = self._reactor.callLater(self.flush_delay, self._start_batch)
        elif self._failures and len(dirty) >= self.max_queue:
            self._refuse(True)

    def _refuse(self, refusing: bool) -> None:
        """Start or stop refusing mutations (the disk cannot take the queue)."""
        if refusing != self._refusing:
            self._refusing = refusing
            self._gated = refusing or self._state != "open"
            if refusing:
                _log.warn("txcb: bucket {name!r}: {n} writes wait for the disk: refusing "
                          "mutations (temporary failure) until they are written",
                          name=self.name, n=len(self._dirty) + len(self._inflight))
            else:
                _log.info("txcb: bucket {name!r}: the disk takes writes again",
                          name=self.name)

    def _hurry(self) -> None:
        """Someone waits for the disk: a batch waiting for more writes starts now."""
        if self._lazy:
            self._lazy = False
            self._scheduled.reset(0)

    def _is_persisted(self, k: bytes) -> bool:
        if self._wipe or self._wiping:
            return False
        return k not in self._dirty and k not in self._inflight

    def _flushed(self, old: Dict[bytes, bytes], seqno: int) -> None:
        """A flush: what is queued is moot; the next batch deletes every row first."""
        self._dirty = {}
        self._wipe = True
        self._moot = self._writing
        self._mutated_all()
        super()._flushed(old, seqno)  # type: ignore[misc]

    def _mutated_all(self) -> None:
        if not self._busy:
            self._busy = True
            self._lazy = True
            self._scheduled = self._reactor.callLater(self.flush_delay, self._start_batch)

    def _start_batch(self) -> None:
        self._scheduled = None
        self._lazy = False
        ckpt = self._checkpoint_due()
        wipe, self._wipe = self._wipe, False
        if not self._dirty and not ckpt and not wipe:
            self._busy = False
            if self._state == "closing":
                self._finish_close(None)
            return
        batch, self._dirty = self._dirty, {}
        self._inflight = batch
        self._wiping = wipe
        self._moot = False
        seqno = self._seqno
        marks = None
        if self._cas - self._marked_cas >= _store.META_STEP \
                or seqno - self._marked_seqno >= _store.META_STEP:
            marks = (self._cas, seqno)
        self._writing = True
        # Batches run one at a time, so the two threads never share the
        # connection at once.
        pool = self._pool
        if self._bg_pool is not None and not (
                self._persist_waiters or self._waiters or self._state == "closing"
                or self._memory_tight()):
            pool = self._bg_pool
        d: Any
        if ckpt:
            d = deferToThreadPool(self._reactor, pool, _store.write_and_checkpoint,
                                  self._conn, batch, marks, seqno, self.path,
                                  self._failures > 0, wipe)
        else:
            d = deferToThreadPool(self._reactor, pool, _store.write_batch, self._conn,
                                  batch, marks, seqno, wipe)
        d.addBoth(self._batch_done, batch, seqno, marks)

    def _checkpoint_due(self) -> bool:
        """Whether the next job checkpoints: on recovery, or every checkpoint_interval."""
        if self._failures:
            return True
        return (self._seqno > self._ckpt_seqno and self._state == "open"
                and self._reactor.seconds() - self._ckpt_at >= self.checkpoint_interval)

    def _checkpointed(self, seqno: int, error: Optional[Exception]) -> None:
        if error is None:
            self._ckpt_seqno = seqno
            self._ckpt_at = self._reactor.seconds()
            self._disk["checkpoints"] += 1
        else:
            self._disk["errors"] += 1
            self._last_error = str(error)
            _log.warn("txcb: the checkpoint of {path} failed: {e}", path=self.path, e=error)

    def _batch_done(self, result: Any, batch: Dict[bytes, Optional[bytes]],
                    seqno: int, marks: Optional[Tuple[int, int]]) -> None:
        self._writing = False
        self._inflight = {}
        wiped, self._wiping = self._wiping, False
        if isinstance(result, Failure):
            if wiped:
                self._wipe = True
            self._batch_failed(result, batch, seqno)
            return
        if marks is not None:
            self._marked_cas, self._marked_seqno = marks
        if len(result) == 3:
            self._checkpointed(seqno, result[2])
        if self._failures:
            self._failures = 0
            self._refuse(False)
        took, rows = result[0], result[1]
        disk = self._disk
        disk["flushed"] += rows
        disk["batches"] += 1
        disk["last_flush_duration"] = took
        disk["last_batch"] = rows
        self._persisted_seqno = seqno
        self._may_reclaim()  # what was just written can be ejected
        waiters = self._persist_waiters
        # The next batch first, so its write overlaps the replies sent below.
        if not self._dirty:
            self._busy = False
        elif (self._state == "closing" or self._waiters or not self.flush_delay
              or (waiters and waiters[-1][0] > seqno) or self._memory_tight()):
            self._start_batch()
        else:
            self._lazy = True
            self._scheduled = self._reactor.callLater(self.flush_delay, self._start_batch)
        while waiters and waiters[0][0] <= seqno:
            _s, d, r = waiters.popleft()
            if not d.called:
                d.callback(r)
        if self._waiters:
            self._waiters.committed(seqno)
        if not self._busy:
            if self._dirty:  # queued by the callbacks above (say, an item expiring)
                self._busy = True
                self._start_batch()
            elif self._state == "closing":
                self._finish_close(None)

    def _batch_failed(self, f: Failure, batch: Dict[bytes, Optional[bytes]],
                      seqno: int) -> None:
        self._disk["errors"] += 1
        self._failures += 1
        self._last_error = f.getErrorMessage()
        retry = min(self.retry_interval * 2 ** min(self._failures - 1, 30),
                    max(self.retry_interval, self.max_retry_interval))
        if self._state == "closing":
            retry = min(retry, max(0.0, self._close_deadline - self._reactor.seconds()))
        if self._failures == 1:
            _log.failure("txcb: writing {n} items to {path} failed; retrying in {retry}s",
                         f, n=len(batch), path=self.path, retry=retry)
        else:
            _log.warn("txcb: writing {n} items to {path} failed again ({e}); retrying in "
                      "{retry:.3g}s", n=len(batch), path=self.path, e=self._last_error,
                      retry=retry)
        # Put the batch back under what was queued since (newer wins), unless
        # a flush came since.
        dirty = self._dirty
        if not self._moot:
            for k, item in batch.items():
                if k not in dirty:
                    dirty[k] = item
        waiters = self._persist_waiters
        error = TemporaryFailError("the write could not be persisted: %s"
                                   % (f.getErrorMessage(),))
        while waiters and waiters[0][0] <= seqno:
            _s, d, r = waiters.popleft()
            if not d.called:
                d.errback(TemporaryFailError(error.message, key=r.key))
        if len(dirty) >= self.max_queue:
            self._refuse(True)
        if self._state == "closing" and self._reactor.seconds() >= self._close_deadline:
            self._busy = False
            self._finish_close(f)
            return
        self._scheduled = self._reactor.callLater(retry, self._start_batch)
