"""
The persistent bucket's data directory and SQLite data file (see
:mod:`txcb.buckets.persistent` for the design): the directory lock, opening
and checking the file, warmup, writing one batch, closing.  Functions of a
connection, run at start-up or in the writer thread; no reactor.
"""

from __future__ import annotations

import errno
import fcntl
import heapq
import os
import sqlite3
import threading
import time
from struct import Struct, error as struct_error
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from twisted.logger import Logger

from txcb.buckets.items import expiry_of, make_item, value_len

__all__ = ["StorageError", "CorruptDataError", "DataDirLockedError", "lock_dir",
           "unlock_dir", "open_db", "be_nicer", "write_batch", "close_db", "warm_up",
           "Warm", "LOCK_FILE", "FORMAT_VERSION", "META_STEP", "RESTART_GAP"]

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

SCHEMA = (
    # key -> the embedded bucket's item bytes (its header + value, see
    # txcb.buckets.items); exp is the header's expiry, kept in a
    # column so warmup finds TTL'd items by index.
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
DEL = "DELETE FROM items WHERE key = ?"
META = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
META_MARKS = ("INSERT OR REPLACE INTO meta (name, value) "
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


def lock_dir(data_dir: str) -> int:
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


def unlock_dir(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)  # releases the flock


def open_db(path: str) -> sqlite3.Connection:
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
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(META, ("format", FORMAT_VERSION))
            conn.execute(META_MARKS, ("0", 0, 1))  # empty, and clean
            conn.execute("COMMIT")
        else:
            row = conn.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if row is not None and row[0] == 1:
                upgrade_from_1(conn, path)
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


def be_nicer(steps: int) -> None:
    """
    (in a writer thread) Lower the calling thread's scheduling priority by
    ``steps`` nice levels: on Linux a thread's nice value is its own.  Where
    that is not allowed or not possible, the thread keeps its priority.
    """
    try:
        tid = threading.get_native_id()
        os.setpriority(os.PRIO_PROCESS, tid, os.getpriority(os.PRIO_PROCESS, tid) + steps)
    except (AttributeError, OSError) as e:
        _log.info("txcb: the background writer keeps its priority: {e}", e=e)


def upgrade_from_1(conn: sqlite3.Connection, path: str) -> None:
    """Rewrite a format 1 file's items (``<QdI`` header + value) as format 2, at once."""
    unpack = Struct("<QdI").unpack_from
    conn.execute("BEGIN IMMEDIATE")
    try:
        try:
            rows = []
            for k, item in conn.execute("SELECT key, item FROM items"):
                cas, exp, flags = unpack(item)
                rows.append((make_item(cas, exp, flags, item[20:]), k))
        except (struct_error, TypeError) as e:
            raise CorruptDataError("%s (data format 1) holds a bad item (%s); it is left "
                                   "as it is" % (path, e))
        conn.executemany("UPDATE items SET item = ? WHERE key = ?", rows)
        conn.execute(META, ("format", FORMAT_VERSION))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def write_batch(conn: sqlite3.Connection, batch: Dict[bytes, Optional[bytes]],
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
            puts += (k, expiry_of(item), item)
        else:
            big.append((k, expiry_of(item), item))
    conn.execute("BEGIN IMMEDIATE")
    try:
        if puts:
            _execute_chunked(conn, _put_sql, puts, 3)
        if big:
            conn.executemany(_put_sql(1), big)
        if dels:
            _execute_chunked(conn, _del_sql, dels, 1)
        if marks is not None:
            conn.execute(META_MARKS, (str(marks[0]), marks[1], 0))
        conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced here
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    return time.perf_counter() - started, len(puts) // 3 + len(big) + len(dels)


def close_db(conn: sqlite3.Connection, lock_fd: int, max_cas: int, seqno: int) -> None:
    """
    (writer thread) Record a clean shutdown with the exact CAS and seqno
    high-water marks, checkpoint the WAL into the data file, close, unlock.
    """
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(META_MARKS, (str(max_cas), seqno, 1))
            conn.execute("COMMIT")
            conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        finally:
            conn.close()
    finally:
        unlock_dir(lock_fd)


class Warm(NamedTuple):
    """What warmup loaded: the items and the marks to go on from."""

    items: Dict[bytes, bytes]
    expiries: List[Tuple[float, bytes]]  # a heap of (expiry, key)
    nbytes: int  # keys + values, as the bucket counts them
    cas: int  # the last CAS handed out
    seqno: int  # the last seqno handed out
    expired: int  # expired items dropped from the file


def warm_up(conn: sqlite3.Connection, path: str, now: float, floor_cas: int) -> Warm:
    """
    Load every live item of the data file, delete the expired ones from it and
    mark it "not closed cleanly" (until :func:`close_db` says otherwise).
    After an unclean stop the CAS and seqno go on ``RESTART_GAP`` past the
    marks; the CAS never goes below ``floor_cas``.
    """
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
            nbytes = sum(map(len, items)) + sum(map(value_len, items.values()))
        except (TypeError, ValueError) as e:
            raise CorruptDataError("the data file %s holds bad data: %s" % (path, e))
        cas = max(floor_cas, max_cas + gap)
        if gap:
            seqno += RESTART_GAP
        conn.execute("BEGIN IMMEDIATE")
        if expired:
            conn.executemany(DEL, expired)
        conn.execute(META_MARKS, (str(cas), seqno, 0))
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        raise CorruptDataError("cannot read the data file %s: %s (%s); it is left as "
                               "it is" % (path, e, type(e).__name__))
    return Warm(items, heap, nbytes, cas, seqno, len(expired))
