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
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import os
import re
import sqlite3
import time
from collections import deque
from typing import Any, Deque, Dict, List, Optional, Tuple

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IReactorFromThreads
from twisted.internet.threads import deferToThreadPool
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.python.threadpool import ThreadPool

from txcb.validation import DEFAULT_MAX_VALUE_SIZE, check_cas, resolve_durability, to_key
from txcb.buckets.embedded import (
    EmbeddedBucket, _check_open, _expiry, _make_item, _value_len)
from txcb.errors import (
    ArgumentError, CouchbaseError, NetworkError, TemporaryFailError, TimeoutError)
from txcb.formats import Transcoder
from txcb.results import OperationResult

__all__ = [
    "PersistentBucket", "create_bucket", "StorageError", "CorruptDataError",
    "DataDirLockedError", "DEFAULT_DATA_DIR", "BUCKET_TYPES",
]

#: Where ``twistd txcb`` and :func:`create_bucket` keep data by default
#: (relative to the working directory).
DEFAULT_DATA_DIR = "txcb-data"
#: The bucket types, as Couchbase names them.
BUCKET_TYPES = ("couchbase", "ephemeral")
LOCK_FILE = "txcb.lock"
#: The data file's format version (meta row ``format``).  Format 1 (items
#: with a fixed 20-byte header) is upgraded in place when opened.
FORMAT_VERSION = 2
#: CAS and seqno continuity across restarts.  The data file's meta rows hold
#: a CAS and a seqno high-water mark.  A clean close writes the exact ones
#: (and ``clean = 1``); start-up writes ``clean = 0``; while running, a batch
#: rewrites them only once the bucket's CAS or seqno has moved
#: ``META_STEP`` past them.  After an unclean stop, start-up adds
#: ``RESTART_GAP`` (> META_STEP + whatever one batch's write lets through),
#: so a CAS or seqno handed out after a restart is always above every one
#: handed out before it, whatever the wall clock says.
META_STEP = 1 << 31
RESTART_GAP = 1 << 32
CAS_RESTART_GAP = RESTART_GAP  # the name the tests and docs use

_NAME_RE = re.compile(r"^[A-Za-z0-9._%-]{1,100}$")

_SCHEMA = (
    # key -> the embedded bucket's item bytes (its header + value, see
    # txcb.buckets.embedded._make_item); exp is the header's expiry, kept in a column so warmup finds TTL'd items by index.
    "CREATE TABLE items (key BLOB PRIMARY KEY, exp REAL NOT NULL, item BLOB NOT NULL)"
    " WITHOUT ROWID",
    "CREATE INDEX items_exp ON items (exp) WHERE exp > 0",
    "CREATE TABLE meta (name TEXT PRIMARY KEY, value)",
)
# Rows go to SQLite in multi-row statements of up to _CHUNK rows (one call,
# one GIL release and one statement step for many rows; executemany takes
# and releases the GIL around every row, which a busy reactor thread turns
# into a thread handoff per row).  Remainders use power-of-two chunk sizes, so
# few distinct statements exist and all stay in the connection's statement
# cache.  Python's sqlite3 copies each bound blob: items over _BIG bytes go
# row by row, so no single statement copies more than _CHUNK * _BIG bytes.
_CHUNK = 256  # * 3 parameters: under SQLite's historical 999-variable limit
_BIG = 64 * 1024
# An upsert updates a row in place (INSERT OR REPLACE deletes and inserts).
_CONFLICT = (" ON CONFLICT (key) DO UPDATE SET exp = excluded.exp, item = excluded.item"
             if sqlite3.sqlite_version_info >= (3, 24) else "")
_PUT_HEAD = ("INSERT INTO items (key, exp, item) VALUES " if _CONFLICT
             else "INSERT OR REPLACE INTO items (key, exp, item) VALUES ")
_DEL = "DELETE FROM items WHERE key = ?"
_META = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
_META_MARKS = ("INSERT OR REPLACE INTO meta (name, value) "
               "VALUES ('max_cas', ?), ('high_seqno', ?), ('clean', ?)")
_PUT_SQL: Dict[int, str] = {}
_DEL_SQL: Dict[int, str] = {}


def _put_sql(n: int) -> str:
    sql = _PUT_SQL.get(n)
    if sql is None:
        sql = _PUT_SQL[n] = _PUT_HEAD + ",".join(["(?, ?, ?)"] * n) + _CONFLICT
    return sql


def _del_sql(n: int) -> str:
    sql = _DEL_SQL.get(n)
    if sql is None:
        sql = _DEL_SQL[n] = "DELETE FROM items WHERE key IN (%s)" % ",".join(["?"] * n)
    return sql


def _execute_chunked(conn: sqlite3.Connection, sql_for: Any, flat: List[Any],
                     width: int) -> None:
    """Run ``flat`` (rows of ``width`` parameters, concatenated) in chunks."""
    rows = len(flat) // width
    i = 0
    while i < rows:
        n = rows - i
        n = _CHUNK if n >= _CHUNK else 1 << (n.bit_length() - 1)
        conn.execute(sql_for(n), flat[i * width:(i + n) * width])
        i += n


_log = Logger()


class StorageError(Exception):
    """
    The bucket's data directory or data file cannot be used (raised at
    start-up only; operations on a started bucket never raise it).
    """


class CorruptDataError(StorageError):
    """The data file is corrupt, unreadable or not a txcb data file."""


class DataDirLockedError(StorageError):
    """Another bucket (usually another process) is using the data directory."""


def _lock_dir(data_dir: str) -> int:
    """Create the data dir if missing and flock its lock file; returns the fd."""
    try:
        os.makedirs(data_dir, exist_ok=True)
    except OSError as e:
        raise StorageError("cannot create the data directory %s: %s" % (data_dir, e))
    if not os.path.isdir(data_dir):
        raise StorageError("the data directory %s is not a directory" % (data_dir,))
    path = os.path.join(data_dir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise StorageError("cannot open the lock file %s: %s" % (path, e))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        try:
            holder = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
        except OSError:
            holder = ""
        os.close(fd)
        if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise DataDirLockedError(
                "data dir %s is in use by %s (%s is locked); refusing to start"
                % (data_dir, "pid %s" % holder if holder else "another txcb bucket", path))
        raise StorageError("cannot lock %s: %s" % (path, e))
    os.ftruncate(fd, 0)
    os.pwrite(fd, b"%d\n" % os.getpid(), 0)
    return fd


def _unlock_dir(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)  # releases the flock


def _open_db(path: str) -> sqlite3.Connection:
    """Open (or create) a data file, checking it is one of ours."""
    conn = None
    try:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        # The first read checks the file header: nothing is written before it.
        tables = {r[0] for r in conn.execute(
            "SELECT name FROM sqlite_master WHERE type = 'table'")}
        if tables and not {"items", "meta"} <= tables:
            raise CorruptDataError(
                "%s is not a txcb data file (it holds the tables %s); refusing to use it"
                % (path, ", ".join(sorted(tables))))
        mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise StorageError("cannot put %s in WAL mode (journal_mode is %s)"
                               % (path, mode))
        conn.execute("PRAGMA synchronous = FULL")
        if not tables:
            conn.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                conn.execute(statement)
            conn.execute(_META, ("format", FORMAT_VERSION))
            conn.execute(_META_MARKS, ("0", 0, 1))  # empty, and clean
            conn.execute("COMMIT")
        else:
            row = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if row is not None and row[0] == 1:
                _upgrade_from_1(conn, path)
                row = (FORMAT_VERSION,)
            if row is None or row[0] != FORMAT_VERSION:
                raise CorruptDataError(
                    "%s has data format %r, this txcb reads format %d; refusing to use it"
                    % (path, row and row[0], FORMAT_VERSION))
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        raise CorruptDataError("cannot use the data file %s: %s (%s); it is left as it is"
                               % (path, e, type(e).__name__))
    except BaseException:
        if conn is not None:
            conn.close()
        raise


def _be_nicer(steps: int) -> None:
    """
    (in a writer thread) Lower the calling thread's scheduling priority by
    ``steps`` nice levels: on Linux a thread's nice value is its own.  Where
    that is not allowed or not possible, the thread keeps its priority.
    """
    import threading
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + steps)
    except (AttributeError, OSError) as e:
        _log.info("txcb: the background writer keeps its priority: {e}", e=e)


def _upgrade_from_1(conn: sqlite3.Connection, path: str) -> None:
    """Rewrite a format 1 file's items (``<QdI`` header + value) as format 2, at once."""
    from struct import Struct, error as struct_error
    unpack = Struct("<QdI").unpack_from
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            rows = []
            for k, item in conn.execute("SELECT key, item FROM items"):
                cas, exp, flags = unpack(item)
                rows.append((_make_item(cas, exp, flags, item[20:]), k))
        except (struct_error, TypeError) as e:
            raise CorruptDataError("%s (data format 1) holds a bad item (%s); it is left "
                                   "as it is" % (path, e))
        conn.executemany("UPDATE items SET item = ? WHERE key = ?", rows)
        conn.execute(_META, ("format", FORMAT_VERSION))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _write_batch(conn: sqlite3.Connection, batch: Dict[bytes, Optional[bytes]],
                 marks: Optional[Tuple[int, int]]) -> Tuple[float, int]:
    """
    (writer thread) One batch, one transaction; returns (seconds, rows).
    ``marks``: new (max CAS, high seqno) meta rows to write too, if any.
    """
    started = time.perf_counter()
    puts: List[Any] = []  # key, exp, item, key, exp, item...
    big: List[Tuple[bytes, float, bytes]] = []
    dels: List[bytes] = []
    for k, item in batch.items():
        if item is None:
            dels.append(k)
        elif len(item) <= _BIG:
            puts += (k, _expiry(item), item)
        else:
            big.append((k, _expiry(item), item))
    conn.execute("BEGIN IMMEDIATE")
    try:
        if puts:
            _execute_chunked(conn, _put_sql, puts, 3)
        if big:
            conn.executemany(_put_sql(1), big)
        if dels:
            _execute_chunked(conn, _del_sql, dels, 1)
        if marks is not None:
            conn.execute(_META_MARKS, (str(marks[0]), marks[1], 0))
        conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced here
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    return time.perf_counter() - started, len(puts) // 3 + len(big) + len(dels)


def _close_db(conn: sqlite3.Connection, lock_fd: int, max_cas: int, seqno: int) -> None:
    """
    (writer thread) Record a clean shutdown with the exact CAS and seqno
    high-water marks, checkpoint the WAL into the data file, close, unlock.
    """
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(_META_MARKS, (str(max_cas), seqno, 1))
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    finally:
        _unlock_dir(lock_fd)


class _EndureWaiter:
    __slots__ = ("k", "key", "persist", "cas", "check_removed", "d", "timer")

    def __init__(self, k: bytes, key: Any, persist: int, cas: int,
                 check_removed: bool) -> None:
        self.k = k
        self.key = key
        self.persist = persist
        self.cas = cas
        self.check_removed = check_removed
        self.d: Any = None
        self.timer: Any = None


class PersistentBucket(EmbeddedBucket):
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
    :param retry_interval: seconds before a failed batch is written again.
    :param flusher_nice: how many nice levels lower the thread writing
        background batches (nobody waiting for them) runs; 0 writes every
        batch on the one normal-priority thread.

    Other parameters are :class:`~txcb.buckets.embedded.EmbeddedBucket`'s.
    """

    bucket_type = "couchbase"
    max_persist_to = 1

    def __init__(self, data_dir: str = DEFAULT_DATA_DIR, clock: Any = None,
                 reactor: Any = None, max_value_size: int = DEFAULT_MAX_VALUE_SIZE,
                 transcoder: Optional[Transcoder] = None, pager_interval: float = 10.0,
                 name: str = "default", start: bool = True,
                 flush_delay: float = 0.01, retry_interval: float = 1.0,
                 flusher_nice: int = 10) -> None:
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
                                name=name)
        self._reactor = reactor
        self.data_dir = os.path.abspath(data_dir)
        self.path = os.path.join(self.data_dir, name + ".sqlite3")
        self.flush_delay = flush_delay
        self.retry_interval = retry_interval
        self.flusher_nice = flusher_nice
        self._closed = True  # until start() has warmed up
        self._state = "new"  # -> "open" -> "closing" -> "closed"
        self._conn: Any = None  # a sqlite3.Connection once started
        self._lock_fd: Any = None  # the locked lock file descriptor once started
        self._pool: Any = None  # the writer's ThreadPool once started
        self._bg_pool: Any = None  # and the background one (flusher_nice), if any
        # The write queue.
        self._dirty: Dict[bytes, Optional[bytes]] = {}
        self._inflight: Dict[bytes, Optional[bytes]] = {}
        self._busy = False  # a batch is scheduled, being written or waiting to retry
        self._writing = False
        self._scheduled: Any = None
        self._lazy = False  # _scheduled is a flush_delay wait (not a retry)
        self._finishing = False
        self._persisted_seqno = 0
        self._marked_cas = self._marked_seqno = 0  # the meta rows on disk
        # (seqno, Deferred or another target with called/callback/errback, result)
        self._persist_waiters: Deque[Tuple[int, Any, OperationResult]] = deque()
        self._endure_waiters: Dict[int, _EndureWaiter] = {}
        self._close_waiters: List[Deferred] = []
        self._close_result: Any = None
        self._disk = {"flushed": 0, "batches": 0, "errors": 0, "last_flush_duration": 0.0,
                      "last_batch": 0, "warmup_time": 0.0, "warmup_items": 0,
                      "warmup_expired": 0}
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
        self._lock_fd = _lock_dir(self.data_dir)
        try:
            self._conn = _open_db(self.path)
            self._warmup(self._conn)
        except BaseException:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
            _unlock_dir(self._lock_fd)
            self._lock_fd = None
            raise
        self._pool = ThreadPool(1, 1, name="txcb-writer-%s" % (self.name,))
        self._pool.start()
        if self.flusher_nice > 0:
            self._bg_pool = ThreadPool(1, 1, name="txcb-flusher-%s" % (self.name,))
            self._bg_pool.start()
            self._bg_pool.callInThread(_be_nicer, self.flusher_nice)
        self._state = "open"
        self._closed = False
        self._disk["warmup_time"] = took = time.perf_counter() - started
        _log.info("txcb: bucket {name!r} warmed up {items} items from {path} in {took:.3f}s"
                  " ({expired} expired items dropped)", name=self.name,
                  items=len(self._items), path=self.path, took=took,
                  expired=self._disk["warmup_expired"])

    def _warmup(self, conn: sqlite3.Connection) -> None:
        now = self.clock.seconds()
        try:
            meta = dict(conn.execute("SELECT name, value FROM meta"))
            # Items that never expire: straight into a dict, no Python loop.
            items: Dict[bytes, bytes] = dict(conn.execute(
                "SELECT key, item FROM items WHERE exp = 0"))
            heap: List[Tuple[float, bytes]] = []
            expired: List[Tuple[bytes]] = []
            for k, exp, item in conn.execute(
                    "SELECT key, exp, item FROM items WHERE exp > 0"):
                if exp <= now:
                    expired.append((k,))
                else:
                    items[k] = item
                    heap.append((exp, k))
            heapq.heapify(heap)
            try:
                max_cas = int(meta.get("max_cas", 0))
                seqno = int(meta.get("high_seqno", 0))
                # (Both are "last handed out": the next ones are +1.)
                gap = 0 if meta.get("clean") == 1 else RESTART_GAP
                nbytes = sum(map(len, items)) + sum(map(_value_len, items.values()))
            except (TypeError, ValueError) as e:
                raise CorruptDataError("the data file %s holds bad data: %s"
                                       % (self.path, e))
            cas = max(self._cas, max_cas + gap)
            if gap:
                seqno += RESTART_GAP
            # Expired items go, and the marks say "not closed cleanly" until
            # close() says otherwise.
            conn.execute("BEGIN IMMEDIATE")
            if expired:
                conn.executemany(_DEL, expired)
            conn.execute(_META_MARKS, (str(cas), seqno, 0))
            conn.execute("COMMIT")
        except sqlite3.Error as e:
            raise CorruptDataError("cannot read the data file %s: %s (%s); it is left as "
                                   "it is" % (self.path, e, type(e).__name__))
        self._items = items
        self._expiries = heap
        self._bytes = nbytes
        self._cas = self._marked_cas = cas
        self._seqno = self._persisted_seqno = self._marked_seqno = seqno
        self._disk["warmup_items"] = len(items)
        self._disk["warmup_expired"] = len(expired)

    # -- the write queue ----------------------------------------------------------

    def _mutated(self, k: bytes, item: Optional[bytes], seqno: int, why: int) -> None:
        self._dirty[k] = item
        if not self._busy:
            self._busy = True
            self._lazy = True
            self._scheduled = self._reactor.callLater(self.flush_delay, self._start_batch)

    def _hurry(self) -> None:
        """Someone waits for the disk: a batch waiting for more writes starts now."""
        if self._lazy:
            self._lazy = False
            self._scheduled.reset(0)

    def _is_persisted(self, k: bytes) -> bool:
        return k not in self._dirty and k not in self._inflight

    def _start_batch(self) -> None:
        self._scheduled = None
        self._lazy = False
        if not self._dirty:
            self._busy = False
            if self._state == "closing":
                self._finish_close(None)
            return
        batch, self._dirty = self._dirty, {}
        self._inflight = batch
        seqno = self._seqno
        marks = None
        if self._cas - self._marked_cas >= META_STEP \
                or seqno - self._marked_seqno >= META_STEP:
            marks = (self._cas, seqno)
        self._writing = True
        # Batches run one at a time, so the two threads never share the
        # connection at once.
        pool = self._pool
        if self._bg_pool is not None and not (
                self._persist_waiters or self._endure_waiters or self._state == "closing"):
            pool = self._bg_pool
        d = deferToThreadPool(self._reactor, pool, _write_batch, self._conn, batch, marks)
        d.addBoth(self._batch_done, batch, seqno, marks)

    def _batch_done(self, result: Any, batch: Dict[bytes, Optional[bytes]],
                    seqno: int, marks: Optional[Tuple[int, int]]) -> None:
        self._writing = False
        self._inflight = {}
        if isinstance(result, Failure):
            self._batch_failed(result, batch, seqno)
            return
        if marks is not None:
            self._marked_cas, self._marked_seqno = marks
        took, rows = result
        disk = self._disk
        disk["flushed"] += rows
        disk["batches"] += 1
        disk["last_flush_duration"] = took
        disk["last_batch"] = rows
        self._persisted_seqno = seqno
        waiters = self._persist_waiters
        # The next batch first, so its write overlaps the replies sent below.
        if not self._dirty:
            self._busy = False
        elif (self._state == "closing" or self._endure_waiters or not self.flush_delay
              or (waiters and waiters[-1][0] > seqno)):
            self._start_batch()
        else:
            self._lazy = True
            self._scheduled = self._reactor.callLater(self.flush_delay, self._start_batch)
        while waiters and waiters[0][0] <= seqno:
            _s, d, r = waiters.popleft()
            if not d.called:
                d.callback(r)
        if self._endure_waiters:
            self._recheck_endure()
        if not self._busy:
            if self._dirty:  # queued by the callbacks above (say, an item expiring)
                self._busy = True
                self._start_batch()
            elif self._state == "closing":
                self._finish_close(None)

    def _batch_failed(self, f: Failure, batch: Dict[bytes, Optional[bytes]],
                      seqno: int) -> None:
        self._disk["errors"] += 1
        _log.failure("txcb: writing {n} items to {path} failed; retrying in {retry}s",
                     f, n=len(batch), path=self.path, retry=self.retry_interval)
        # Put the batch back under what was queued since (newer wins).
        dirty = self._dirty
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
        if self._state == "closing":
            self._busy = False
            self._finish_close(f)
            return
        self._scheduled = self._reactor.callLater(self.retry_interval, self._start_batch)

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
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> Deferred:
        """
        As :meth:`EmbeddedBucket.endure`; waiting for the disk is not polled:
        the key is checked again after each committed batch (``interval`` is
        unused then), and ``timeout`` runs on the bucket's clock.
        """
        try:
            persist = resolve_durability(persist_to, replicate_to, self.max_persist_to,
                                         self.max_replicate_to, key)[0]
        except CouchbaseError:
            persist = 0
        if not persist:  # nothing to wait for on disk (or a bad argument)
            return EmbeddedBucket.endure(self, key, persist_to, replicate_to, cas,
                                         check_removed, timeout, interval)
        try:
            _check_open(self)
            self._ops["endure"] += 1
            k = to_key(key)
            if cas:
                check_cas(cas, key)
            if not (isinstance(timeout, (int, float)) and timeout >= 0
                    and isinstance(interval, (int, float)) and interval > 0):
                raise ArgumentError("timeout must be >= 0 and interval > 0", key=key)
            done = self._endured(k, key, persist, cas, check_removed)
            if done is None and not timeout:
                raise TimeoutError("durability not reached within 0s", key=key)
        except CouchbaseError as e:
            return fail(e)
        if done is not None:
            return succeed(done)
        w = _EndureWaiter(k, key, persist, cas, check_removed)
        wid = id(w)
        self._endure_waiters[wid] = w
        self._hurry()

        def cancel(_d: Deferred) -> None:
            self._endure_waiters.pop(wid, None)
            if w.timer is not None and w.timer.active():
                w.timer.cancel()

        w.d = Deferred(cancel)
        w.timer = self.clock.callLater(timeout, self._endure_timed_out, wid, timeout)
        return w.d

    def _endure_timed_out(self, wid: int, timeout: float) -> None:
        w = self._endure_waiters.pop(wid, None)
        if w is not None:
            w.d.errback(TimeoutError("durability not reached within %.3gs" % (timeout,),
                                     key=w.key))

    def _recheck_endure(self) -> None:
        for wid, w in list(self._endure_waiters.items()):
            done: Any
            try:
                done = self._endured(w.k, w.key, w.persist, w.cas, w.check_removed)
            except CouchbaseError as e:
                done = Failure(e)
            if done is None:
                continue
            del self._endure_waiters[wid]
            if w.timer.active():
                w.timer.cancel()
            if isinstance(done, Failure):
                w.d.errback(done)
            else:
                w.d.callback(done)

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
        and unlock the data dir; fires when that is done (errbacks if the
        last writes failed: they are then lost, and logged).
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
        EmbeddedBucket.close(self)
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

    def _finish_close(self, failure: Optional[Failure]) -> None:
        if self._finishing:
            return
        self._finishing = True
        lost = len(self._dirty)
        if failure is not None:
            _log.critical("txcb: closing bucket {name!r}: {n} queued writes could not be "
                          "written to {path} and are lost", name=self.name, n=lost,
                          path=self.path)
        error = NetworkError("the bucket is closed")
        for wid, w in list(self._endure_waiters.items()):
            if w.timer.active():
                w.timer.cancel()
            w.d.errback(NetworkError(error.message, key=w.key))
        self._endure_waiters.clear()
        while self._persist_waiters:
            _s, pd, r = self._persist_waiters.popleft()
            if not pd.called:
                pd.errback(NetworkError(error.message, key=r.key))
        conn, self._conn = self._conn, None
        lock_fd, self._lock_fd = self._lock_fd, None
        d = deferToThreadPool(self._reactor, self._pool, _close_db, conn, lock_fd,
                              self._cas, self._seqno)

        def closed(result: Any) -> None:
            if isinstance(result, Failure):
                _log.failure("txcb: closing {path} failed", result, path=self.path)
            self._release(failure)
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
            _unlock_dir(fd)
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
