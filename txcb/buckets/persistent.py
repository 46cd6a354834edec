"""
The persistent (``couchbase``) bucket: the embedded bucket plus a disk.

Memory first, as in Couchbase: every operation is served from the embedded
bucket's in-memory items and acknowledged at once.  Each mutation also lands
in a *dirty* dict (key -> latest item, or None for a delete), so repeated
writes of a key before the next flush are written once.  One background
writer takes the whole dirty dict as a batch and writes it in one SQLite
transaction (group commit); while it writes, the next batch accumulates.  The
reactor thread never waits on the disk.  The writer is one of two one-thread
:class:`~twisted.python.threadpool.ThreadPool` objects of the bucket, used
one batch at a time: a batch somebody waits for (``persist_to``,
:meth:`~PersistentBucket.endure`, :meth:`~PersistentBucket.close`) runs on a
thread of normal priority; a background batch on one ``flusher_nice`` nice
levels lower (where the OS allows), so that on a busy machine writing behind
never takes CPU from the reactor thread serving requests.

Durability: every mutation has a bucket-wide sequence number.  A batch holds
every mutation up to the sequence number current when it was taken, so
``persist_to=1`` fires once a batch at or past the mutation's sequence number
has committed, and ``endure(persist_to=1)`` once the key is neither dirty nor
in the batch being written.  SQLite runs in WAL mode with
``synchronous=FULL``: a commit returns only after the WAL is fsynced, so an
acknowledged durable write survives a process crash and a power loss.
There are no replicas: ``replicate_to > 0`` errbacks DurabilityError.

Files in the data directory: ``<bucket name>.sqlite3`` (plus SQLite's
``-wal``/``-shm`` files while open) and ``txcb.lock``, held with
``flock`` while a bucket uses the directory, so a second process (or a second
bucket in this one) refuses to start instead of corrupting the first.

Start-up (:meth:`PersistentBucket.start`, run by the constructor unless
``start=False``) locks the directory, opens or creates the data file and
loads every live item into memory (*warmup*), dropping expired ones, before
the bucket serves anything.  A file that is not a txcb data file, or cannot
be read, stops start-up with :class:`CorruptDataError` naming it; it is never
replaced.  :meth:`~PersistentBucket.close` writes the whole queue before it
fires.

Sub-documents (``lookup_in`` / ``mutate_in``) are the embedded bucket's: an
item's xattrs are part of its stored bytes (:mod:`txcb.buckets.items`), so
they are written, checksummed and warmed up with it (data format 4).

Damaged data is refused, never served: every stored item carries a CRC-32 of
its key and bytes, verified at warmup.  The bucket knows what it had: a
manifest, ``<bucket name>.manifest`` (:mod:`txcb.buckets._manifest`), says
how many items the data file held at which seqno at its last checkpoint (at
start-up, every ``checkpoint_interval`` while writing, and at close), and
start-up refuses, naming the file, a data file that is missing, empty or
behind it, or a WAL missing after an unclean stop.

A full or failing disk: a failed batch is retried with backoff (first
emptying the WAL into the data file), mutations are refused with
TemporaryFailError while more than ``max_queue`` keys wait for the disk
(``disk_refusing`` and friends in the stats), and the bucket takes writes
again by itself once a batch commits.  A full disk at start-up is
:class:`DiskFullError`, not corruption.

A RAM quota (``memory_quota``, see :mod:`txcb.buckets.pager`): above the
high watermark the values of clean items are *ejected*, coldest first, down
to the low watermark; their keys and metadata stay in memory, so a miss or a
CAS check needs no disk.  A request that needs an ejected value raises
WouldBlock on the synchronous path; on the Deferred path the value is read
back by the background fetcher (:mod:`txcb.buckets._fetcher`, on a thread)
and the request answered then.  Warmup with more data than the quota loads
every key and as many values as fit under the low watermark.  Mutations that
would pass the quota while dirty items fill it get TemporaryFailError until
the writer catches up.

Where it lives: the data directory and file (lock, open, warmup, one batch,
checkpoint, close) in :mod:`txcb.buckets._store`; the manifest in
:mod:`txcb.buckets._manifest`; the write queue in :mod:`txcb.buckets._writer`;
reading values back in :mod:`txcb.buckets._fetcher`;
endure waiters in :mod:`txcb.buckets._waiters`; the life cycle here.
"""

from __future__ import annotations

import os
import re
import sqlite3
import time
from collections import Counter
from typing import Any, Callable, Dict, List, Optional, Set, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txcb.buckets import _manifest, _store
from txcb.buckets._fetcher import BackgroundFetcher
from txcb.buckets._store import (  # noqa: F401 (FORMAT_VERSION: part of the API)
    FORMAT_VERSION, LOCK_FILE, META_STEP, RESTART_GAP, CorruptDataError,
    DataDirLockedError, DiskFullError, StorageError)
from txcb.buckets._writer import WriteQueue
from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.items import EJECTED, restored
from txcb.errors import ArgumentError, NetworkError, TemporaryFailError, WouldBlock
from txcb.formats import Transcoder
from txcb.limits import DEFAULT_ENDURE_INTERVAL, DEFAULT_ENDURE_TIMEOUT, DEFAULT_MAX_VALUE_SIZE
from txcb.results import OperationResult
from txcb.validation import to_key

__all__ = [
    "PersistentBucket", "create_bucket", "StorageError", "CorruptDataError",
    "DataDirLockedError", "DiskFullError", "DEFAULT_DATA_DIR", "BUCKET_TYPES",
]

#: Where ``twistd txcb`` and :func:`create_bucket` keep data by default
#: (relative to the working directory).
DEFAULT_DATA_DIR = "txcb-data"
#: The bucket types, as Couchbase names them.
BUCKET_TYPES = ("couchbase", "ephemeral")
CAS_RESTART_GAP = RESTART_GAP  # the name the tests and docs use

_NAME_RE = re.compile(r"^[A-Za-z0-9._%-]{1,100}$")

_log = Logger()

#: How many times a request reads values back before it gives up (they were
#: ejected again before it could use them: memory is very tight).
MAX_FETCHES = 3


class PersistentBucket(WriteQueue, EmbeddedBucket):
    """
    A bucket kept in memory and persisted to a SQLite file in ``data_dir``.

    :param data_dir: the data directory (created if missing).
    :param clock: the ``IReactorTime`` for TTLs, locks, the pager and
        :meth:`endure` timeouts (defaults to ``reactor``).
    :param reactor: the reactor the writer thread reports to (an
        ``IReactorFromThreads`` and ``IReactorTime``); defaults to ``clock``
        if it is one, else the global reactor.  It must be running for
        anything to reach the disk.
    :param name: the bucket name; the data file is ``<name>.sqlite3``.
    :param start: open the data dir and warm up now (blocking, before the
        bucket serves anything).  With ``start=False`` call :meth:`start`
        later (``twistd txcb`` does, from its service's ``startService``);
        until then every operation errbacks NetworkError.
    :param flush_delay: seconds a batch waits for more writes when nobody
        waits for it (fewer, larger transactions for plain writes); a
        ``persist_to`` mutation, an :meth:`endure` or :meth:`close` starts
        the batch at once.
    :param retry_interval: seconds before a failed batch is written again
        (doubling while it keeps failing, up to ``max_retry_interval``).
    :param checkpoint_interval: how often (seconds, while writing) the WAL is
        copied into the data file and the manifest written.
    :param max_queue: while writes fail, mutations are refused with
        TemporaryFailError once this many keys wait for the disk.
    :param close_timeout: how long :meth:`close` keeps retrying failed writes.
    :param flusher_nice: how many nice levels lower the thread writing
        background batches (nobody waiting for them) runs; 0 writes every
        batch on the one normal-priority thread.
    :param memory_quota: the RAM quota in bytes (None: half the machine's
        memory); values are ejected to stay under it.

    Other parameters are :class:`~txcb.buckets.embedded.EmbeddedBucket`'s.
    """

    bucket_type = "couchbase"
    max_persist_to = 1
    eviction_policies = ("value",)

    def __init__(self, data_dir: str = DEFAULT_DATA_DIR, clock: Any = None,
                 reactor: Any = None, max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
                 transcoder: Optional[Transcoder] = None, pager_interval: float = 10.0,
                 name: str = "default", start: bool = True,
                 flush_delay: float = 0.01, retry_interval: float = 1.0,
                 flusher_nice: int = 10, checkpoint_interval: float = 5.0,
                 max_queue: int = 1000, max_retry_interval: float = 5.0,
                 close_timeout: float = 10.0, memory_quota: Optional[int] = None) -> None:
        if not isinstance(name, str) or not _NAME_RE.match(name):
            raise ArgumentError("bucket name must be 1 to 100 characters of "
                                "A-Z a-z 0-9 . _ %% -, not %r" % (name,))
        if clock is None:
            from twisted.internet import reactor as clock
        if reactor is None:
            if IReactorFromThreads.providedBy(clock):
                reactor = clock
            else:
                from twisted.internet import reactor  # type: ignore[no-redef]
        EmbeddedBucket.__init__(self, clock=clock, max_value_size=max_value_size,
                                transcoder=transcoder, pager_interval=pager_interval,
                                name=name, memory_quota=memory_quota, eviction="value")
        self._reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, name + ".sqlite3")
        self.flush_delay = flush_delay
        self.retry_interval = retry_interval
        self.max_retry_interval = max_retry_interval
        self.checkpoint_interval = checkpoint_interval
        self.max_queue = max_queue
        self.close_timeout = close_timeout
        self.flusher_nice = flusher_nice
        self.lost_writes = 0  # acknowledged writes close could not save
        self._closed = self._gated = True  # until start() has warmed up
        self._state = "new"  # -> "open" -> "closing" -> "closed"
        self._conn: Any = None  # a sqlite3.Connection once started
        self._lock_fd: Any = None  # the locked lock file descriptor once started
        self._pool: Any = None  # the writer's ThreadPool once started
        self._bg_pool: Any = None  # and the background one (flusher_nice), if any
        self._fetcher: Any = None  # the BackgroundFetcher once started
        self._finishing = False
        self._init_queue()
        self._close_waiters: List[Deferred] = []
        self._close_result: Any = None
        if start:
            try:
                self.start()
            except BaseException:
                self._state = "closed"
                EmbeddedBucket.close(self)  # stops the pager
                raise

    # -- start-up -------------------------------------------------------------

    def start(self) -> None:
        """
        Lock the data dir, open the data file and load it into memory.
        Blocks (by design: nothing is served until the bucket is warm).

        :raises DataDirLockedError: another bucket uses the directory.
        :raises CorruptDataError: the data file is unreadable, corrupt or not
            a txcb data file (it is left untouched).
        :raises StorageError: the directory cannot be created or locked.
        """
        if self._state != "new":
            raise StorageError("the bucket was started already")
        started = time.perf_counter()
        self._lock_fd = _store.lock_dir(self.data_dir)
        try:
            self._open_and_warm_up()
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            _store.unlock_dir(self._lock_fd)
            self._lock_fd = None
            raise
        self._pool = ThreadPool(1, 1, name="txcb-writer-%s" % (self.name,))
        self._pool.start()
        self._fetcher = BackgroundFetcher(self._reactor, self.path, self.name, self._restore)
        if self.flusher_nice > 0:
            self._bg_pool = ThreadPool(1, 1, name="txcb-flusher-%s" % (self.name,))
            self._bg_pool.start()
            self._bg_pool.callInThread(_store.be_nicer, self.flusher_nice)
        self._state = "open"
        self._closed = self._gated = False
        self._disk["warmup_time"] = took = time.perf_counter() - started
        _log.info("txcb: bucket {name!r} warmed up {items} items ({ejected} of them "
                  "ejected: over the quota) from {path} in {took:.3f}s ({expired} expired "
                  "items dropped)", name=self.name, items=len(self._items),
                  ejected=self._nonresident, path=self.path, took=took,
                  expired=self._disk["warmup_expired"])

    def _open_and_warm_up(self) -> None:
        """Check the files against the manifest, open, warm up, checkpoint."""
        mpath = _manifest.manifest_path(self.path)
        manifest = _manifest.read_manifest(mpath, CorruptDataError)
        wal_missing = _manifest.check_files(self.path, manifest, CorruptDataError)
        self._conn = _store.open_db(self.path)
        warm = _store.warm_up(self._conn, self.path, self.clock.seconds(), self._cas,
                              manifest, wal_missing, self._low)
        try:
            _store.checkpoint(self._conn, self.path, warm.seqno, False,
                              len(warm.items) + len(warm.tombstones))
        except (OSError, sqlite3.Error) as e:
            if _manifest.disk_full(e, self.path):
                raise DiskFullError("the disk holding %s is full (%s); free some space "
                                    "and start again" % (self.path, e))
            raise StorageError("cannot checkpoint %s or write %s: %s"
                               % (self.path, mpath, e))
        self._load(warm)
        self._ckpt_seqno = warm.seqno
        self._ckpt_at = self._reactor.seconds()

    def _load(self, warm: _store.Warm) -> None:
        """Take over what warmup loaded."""
        self._items = warm.items
        self._tombstones = warm.tombstones
        self._expiries = warm.expiries
        self._bytes = warm.nbytes
        self._mem = warm.mem
        self._nonresident = warm.nonresident
        self._cas = self._marked_cas = warm.cas
        self._seqno = self._persisted_seqno = self._marked_seqno = warm.seqno
        self._disk["warmup_items"] = len(warm.items)
        self._disk["warmup_expired"] = warm.expired

    # -- ejected values -----------------------------------------------------------

    def _when_resident(self, blocked: WouldBlock, key: Any, call: Callable[..., Any],
                       args: Tuple[Any, ...], fetches: int = 0) -> Deferred:
        """Read the values back, then ``call(*args)`` again (counted once)."""
        if fetches >= MAX_FETCHES:
            raise TemporaryFailError("the value was ejected again before it could be "
                                     "used (memory is very tight): try again", key=key)
        d = self._fetcher.fetch(blocked.keys or (to_key(key),))
        d.addCallback(lambda _: self._again(key, call, args, fetches + 1))
        return d

    def _again(self, key: Any, call: Callable[..., Any], args: Tuple[Any, ...],
               fetches: int) -> Any:
        """The call once more: its first try counted the operation already."""
        counted, self._ops = self._ops, Counter()
        try:
            return call(*args)
        except WouldBlock as e:
            return self._when_resident(e, key, call, args, fetches)
        finally:
            self._ops = counted

    def _restore(self, keys: List[bytes], found: Dict[bytes, bytes], damaged: List[bytes]
                 ) -> Set[bytes]:
        """
        Values read back: put those still ejected back; returns the keys that
        could not be (damaged, or without a row: never served as anything else).
        """
        items, bad = self._items, set(damaged)
        for k in keys:
            item = items.get(k)
            if item is None or item[0] != EJECTED or k in bad:
                continue  # written or removed since: the request sees that
            stored = found.get(k)
            if stored is None:
                bad.add(k)
                continue
            try:
                whole = restored(item, stored)
            except ValueError:
                bad.add(k)
                continue
            items[k] = whole
            self._mem += len(whole) - len(item)
            self._nonresident -= 1
            self._stats["bg_fetches"] += 1
            self._touch(k)
        for k in bad:
            _log.critical("txcb: bucket {name!r}: the value of key {key!r} cannot be read "
                          "back from {path} (damaged or missing); it is not served",
                          name=self.name, key=k, path=self.path)
        # Clean values are resident again: the pager may have found nothing
        # to eject (every value dirty) and be waiting; they are news for it.
        self._may_reclaim()
        return bad

    def _full(self, k: bytes) -> Exception:
        if self._dirty or self._inflight:
            self._hurry()  # (a batch waiting for more writes starts now)
            return TemporaryFailError(
                "the bucket's RAM quota (%d bytes) is full of writes waiting for the disk: "
                "try again shortly" % (self.memory_quota,), key=k)
        return EmbeddedBucket._full(self, k)

    # -- durability -------------------------------------------------------------

    def on_durable(self, result: OperationResult, persist_to: int, replicate_to: int,
                    target: Any) -> bool:
        seqno = result.seqno
        if not persist_to or seqno <= self._persisted_seqno:
            return False
        self._persist_waiters.append((seqno, target, result))
        if self._lazy:
            self._hurry()
        return True

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = DEFAULT_ENDURE_TIMEOUT,
               interval: float = DEFAULT_ENDURE_INTERVAL) -> Deferred:
        """
        As :meth:`EmbeddedBucket.endure`; waiting for the disk is not polled:
        a waiter is checked again when a commit reaches the seqno it needs,
        and a batch somebody waits for starts at once.
        """
        d = EmbeddedBucket.endure(self, key, persist_to, replicate_to, cas, check_removed,
                                  timeout, interval)
        if not d.called:
            self._hurry()
        return d

    def _soon(self, f: Callable[..., Any], *args: Any) -> None:
        """On the next turn of the reactor the writer reports to (the clock may be fake)."""
        self._reactor.callLater(0, f, *args)

    # -- stats / close ------------------------------------------------------------

    def stats_sync(self) -> Dict[str, Any]:
        s = EmbeddedBucket.stats_sync(self)
        disk = self._disk
        s.update({
            "disk_write_queue": len(self._dirty) + len(self._inflight),
            "disk_flushed": disk["flushed"],
            "disk_batches": disk["batches"],
            "disk_last_flush_duration": disk["last_flush_duration"],
            "disk_last_batch": disk["last_batch"],
            "disk_errors": disk["errors"],
            "disk_queue_limit": self.max_queue,
            "disk_refusing": int(self._refusing),
            "disk_refused": disk["refused"],
            "disk_failing": self._failures,
            "disk_last_error": self._last_error,
            "disk_checkpoints": disk["checkpoints"],
            "checkpointed_seqno": self._ckpt_seqno,
            "persisted_seqno": self._persisted_seqno,
            "warmup_time": disk["warmup_time"],
            "warmup_items": disk["warmup_items"],
            "warmup_expired": disk["warmup_expired"],
            "data_file": self.path,
        })
        return s

    def close(self) -> Deferred:
        """
        Stop taking operations, write the whole queue, close the data file
        and unlock the data dir; fires when that is done.  Failed writes are
        retried for ``close_timeout`` seconds; what still could not be written
        is lost: logged, with how many keys' acknowledged writes, and counted
        in :attr:`lost_writes`.
        """
        d: Deferred = Deferred()
        if self._state == "closed":
            r = self._close_result
            return fail(r) if isinstance(r, Failure) else succeed(None)
        self._close_waiters.append(d)
        if self._state == "closing":
            return d
        was_new = self._state == "new"
        self._state = "closing"
        self._close_deadline = self._reactor.seconds() + self.close_timeout
        EmbeddedBucket.close(self)
        if self._fetcher is not None:
            self._fetcher.close()
        if was_new:
            self._release(None)
            return d
        if self._scheduled is not None:
            # A batch about to start, or a retry: write now.
            if self._scheduled.active():
                self._scheduled.cancel()
            self._start_batch()
        elif not self._busy:
            self._busy = True
            self._start_batch()  # writes what is queued (if anything), then finishes
        # Else a batch is being written, or its result handled (this may be a
        # persist_to callback): _batch_done goes on to finish the close.
        return d

    def _check_mutation(self, key: Any) -> None:
        self._check_open()
        if self._refusing:
            self._disk["refused"] += 1
            raise TemporaryFailError(
                "%d writes wait for the disk (%s): try again later"
                % (len(self._dirty) + len(self._inflight), self._last_error), key=key)

    def _finish_close(self, failure: Optional[Failure]) -> None:
        if self._finishing:
            return
        self._finishing = True
        lost = len(self._dirty)
        if failure is not None:
            self.lost_writes = self._disk["lost"] = lost
            _log.critical("txcb: closing bucket {name!r}: {n} acknowledged writes (the "
                          "latest of {n} keys) could not be written to {path} after "
                          "retrying for {t:.3g}s and are lost: {e}", name=self.name, n=lost,
                          path=self.path, t=self.close_timeout, e=self._last_error)
        error = NetworkError("the bucket is closed")
        self._waiters.fail_all(lambda key: NetworkError(error.message, key=key))
        while self._persist_waiters:
            _s, pd, r = self._persist_waiters.popleft()
            if not pd.called:
                pd.errback(NetworkError(error.message, key=r.key))
        conn, self._conn = self._conn, None
        lock_fd, self._lock_fd = self._lock_fd, None
        d = deferToThreadPool(self._reactor, self._pool, _store.close_db, conn, lock_fd,
                              self.path, self._cas, self._seqno, self._persisted_seqno)

        def closed(result: Any) -> None:
            if isinstance(result, Failure):
                _log.failure("txcb: closing {path} failed", result, path=self.path)
            self._release(None)
        d.addBoth(closed)

    def _release(self, failure: Optional[Failure]) -> None:
        if self._pool is not None:
            pool, self._pool = self._pool, None
            pool.stop()
        if self._bg_pool is not None:
            pool, self._bg_pool = self._bg_pool, None
            pool.stop()
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            _store.unlock_dir(fd)
        self._state = "closed"
        self._close_result = failure
        waiters, self._close_waiters = self._close_waiters, []
        for d in waiters:
            if failure is not None:
                d.errback(failure)
            else:
                d.callback(None)


def create_bucket(bucket_type: str = "couchbase", data_dir: str = DEFAULT_DATA_DIR,
                  **kwargs: Any) -> EmbeddedBucket:
    """
    Make an in-process bucket of a Couchbase bucket type: ``"couchbase"``
    (a :class:`PersistentBucket` in ``data_dir``, started: warm) or
    ``"ephemeral"`` (an :class:`~txcb.buckets.embedded.EmbeddedBucket`, memory only;
    ``data_dir`` is ignored).  Other keywords go to the bucket's constructor.
    """
    if bucket_type == "couchbase":
        return PersistentBucket(data_dir, **kwargs)
    if bucket_type == "ephemeral":
        return EmbeddedBucket(**kwargs)
    raise ArgumentError("bucket_type must be one of %s, not %r"
                        % (", ".join(BUCKET_TYPES), bucket_type))
