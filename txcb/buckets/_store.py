"""
The persistent bucket's data directory and SQLite data file (see
:mod:`txcb.buckets.persistent` for the design): the directory lock, opening
and checking the file, warmup, writing one batch, closing.  Functions of a
connection, run at start-up or in the writer thread; no reactor.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import heapq
import os
import sqlite3
import threading
import time
from operator import eq, itemgetter
from zlib import crc32
from struct import Struct, error as struct_error
from typing import Any, Dict, List, NamedTuple, Optional, Tuple

from twisted.logger import Logger

from txcb.buckets import _manifest
from txcb.buckets._manifest import Manifest
from txcb.buckets.items import (
    EJECTED_LEN, ITEM_OVERHEAD, TOMBSTONE, eject, ejectable, expiry_of, make_item, value_len)

__all__ = ["StorageError", "CorruptDataError", "DataDirLockedError", "DiskFullError",
           "lock_dir", "unlock_dir", "open_db", "be_nicer", "write_batch", "checkpoint",
           "write_and_checkpoint", "upgrade_from_3",
           "close_db", "warm_up", "checksum", "Warm", "LOCK_FILE", "FORMAT_VERSION",
           "open_reader", "read_items",
           "META_STEP", "RESTART_GAP"]

LOCK_FILE = "txcb.lock"
#: The data file's format version (meta row ``format``).  Format 4 items may
#: carry xattrs (the 0xFE header of :mod:`txcb.buckets.items`), which a txcb
#: reading format 3 would misread, so it refuses the file instead.  Format 3
#: stores each item's checksum (``crc``, over the whole item: xattrs too) and
#: the exact persisted seqno (meta row ``seqno``).  Format 1 (items with a
#: fixed 20-byte header), 2 (no checksums) and 3 (its items are format 4
#: items as they are: only the format row changes) are upgraded in place
#: when opened.
FORMAT_VERSION = 4
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
    # column so warmup finds TTL'd items by index; crc is checksum(key, item).
    "CREATE TABLE items (key BLOB PRIMARY KEY, exp REAL NOT NULL, item BLOB NOT NULL,"
    " crc INTEGER NOT NULL DEFAULT 0) WITHOUT ROWID",
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
_CHUNK = 240  # * 4 parameters: under SQLite's historical 999-variable limit
_BIG = 64 * 1024
# An upsert updates a row in place (INSERT OR REPLACE deletes and inserts).
_CONFLICT = (" ON CONFLICT (key) DO UPDATE SET exp = excluded.exp, item = excluded.item,"
             " crc = excluded.crc"
             if sqlite3.sqlite_version_info >= (3, 24) else "")
_PUT_HEAD = ("INSERT INTO items (key, exp, item, crc) VALUES " if _CONFLICT
             else "INSERT OR REPLACE INTO items (key, exp, item, crc) VALUES ")
DEL = "DELETE FROM items WHERE key = ?"
META = "INSERT OR REPLACE INTO meta (name, value) VALUES (?, ?)"
META_MARKS = ("INSERT OR REPLACE INTO meta (name, value) "
               "VALUES ('max_cas', ?), ('high_seqno', ?), ('clean', ?)")
META_SEQNO = "INSERT OR REPLACE INTO meta (name, value) VALUES ('seqno', ?)"
_PUT_SQL: Dict[int, str] = {}
_DEL_SQL: Dict[int, str] = {}
_GET_SQL: Dict[int, str] = {}


def _put_sql(n: int) -> str:
    sql = _PUT_SQL.get(n)
    if sql is None:
        sql = _PUT_SQL[n] = _PUT_HEAD + ",".join(["(?, ?, ?, ?)"] * n) + _CONFLICT
    return sql


def _del_sql(n: int) -> str:
    sql = _DEL_SQL.get(n)
    if sql is None:
        sql = _DEL_SQL[n] = "DELETE FROM items WHERE key IN (%s)" % ",".join(["?"] * n)
    return sql


def _get_sql(n: int) -> str:
    sql = _GET_SQL.get(n)
    if sql is None:
        sql = _GET_SQL[n] = "SELECT key, item, crc FROM items WHERE key IN (%s)" % (
            ",".join(["?"] * n))
    return sql


def _first(conn: sqlite3.Connection, sql: str) -> Any:
    """
    The first row of ``sql`` (None if none).  Every row is stepped through,
    so the statement is finished at once: PyPy frees cursors late, and an
    unfinished statement makes the next COMMIT fail.
    """
    rows = conn.execute(sql).fetchall()
    return rows[0] if rows else None


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


class DiskFullError(StorageError):
    """The disk holding the data directory is full (nothing is corrupt)."""


def checksum(k: bytes, item: bytes) -> int:
    """The checksum stored with an item: CRC-32 of its key, then its bytes."""
    return crc32(item, crc32(k))


def _refusal(path: str, e: BaseException, what: str) -> StorageError:
    """The start-up error for a SQLite error: a full disk, or a corrupt file."""
    if _manifest.disk_full(e, path):
        return DiskFullError("the disk holding %s is full (%s); free some space and "
                             "start again" % (path, e))
    return CorruptDataError("%s %s: %s (%s); it is left as it is"
                            % (what, path, e, type(e).__name__))


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
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"%d\n" % os.getpid(), 0)  # who holds it, for the refusal above
    except OSError as e:
        if not _manifest.disk_full(e):
            raise
    return fd


def unlock_dir(fd: int) -> None:
    try:
        os.ftruncate(fd, 0)
    except OSError:
        pass
    os.close(fd)  # releases the flock


def open_db(path: str) -> sqlite3.Connection:
    """Open (or create) a data file, checking it is one of ours; upgrade old formats."""
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
        mode = _first(conn, "PRAGMA journal_mode = WAL")[0]
        if str(mode).lower() != "wal":
            raise StorageError("cannot put %s in WAL mode (journal_mode is %s)"
                               % (path, mode))
        conn.execute("PRAGMA synchronous = FULL")
        if tables and os.path.exists(path + "-wal"):
            used = _first(conn, "PRAGMA wal_checkpoint(PASSIVE)")[1]
            _manifest.check_wal_tail(path, max(0, used), CorruptDataError)
        if not tables:
            conn.execute("BEGIN IMMEDIATE")
            for statement in SCHEMA:
                conn.execute(statement)
            conn.execute(META, ("format", FORMAT_VERSION))
            conn.execute(META_MARKS, ("0", 0, 1))  # empty, and clean
            conn.execute(META_SEQNO, (0,))
            conn.execute("COMMIT")
        else:
            row = _first(conn, "SELECT value FROM meta WHERE name = 'format'")
            if row is not None and row[0] == 1:
                upgrade_from_1(conn, path)
                row = (2,)
            if row is not None and row[0] == 2:
                upgrade_from_2(conn, path)
                row = (3,)
            if row is not None and row[0] == 3:
                upgrade_from_3(conn)
                row = (FORMAT_VERSION,)
            if row is None or row[0] != FORMAT_VERSION:
                raise CorruptDataError(
                    "%s has data format %r, this txcb reads format %d; refusing to use it"
                    % (path, row and row[0], FORMAT_VERSION))
        return conn
    except sqlite3.Error as e:
        if conn is not None:
            conn.close()
        raise _refusal(path, e, "cannot use the data file")
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
        conn.execute(META, ("format", 2))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def upgrade_from_2(conn: sqlite3.Connection, path: str) -> None:
    """Give a format 2 file's items their checksums (and the seqno row): format 3."""
    def crc_of(k: Any, item: Any) -> int:
        if not isinstance(k, bytes) or not isinstance(item, bytes) or not item:
            raise ValueError("key %r holds %r" % (k, type(item).__name__))
        return checksum(k, item)

    conn.create_function("txcb_checksum", 2, crc_of)
    conn.execute("BEGIN IMMEDIATE")
    try:
        if "crc" not in {r[1] for r in conn.execute("PRAGMA table_info(items)")}:
            conn.execute("ALTER TABLE items ADD COLUMN crc INTEGER NOT NULL DEFAULT 0")
        try:
            conn.execute("UPDATE items SET crc = txcb_checksum(key, item)")
        except sqlite3.OperationalError as e:
            if "user-defined function raised exception" not in str(e):
                raise
            raise CorruptDataError("%s (data format 2) holds a bad item; it is left as it "
                                   "is" % (path,))
        conn.execute(META, ("format", 3))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def upgrade_from_3(conn: sqlite3.Connection) -> None:
    """Format 3 to 4: every format 3 item reads as it is; only the format row changes."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.execute(META, ("format", FORMAT_VERSION))
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def write_batch(conn: sqlite3.Connection, batch: Dict[bytes, Optional[bytes]],
                 marks: Optional[Tuple[int, int]], seqno: int,
                 wipe: bool = False) -> Tuple[float, int]:
    """
    (writer thread) One batch, one transaction; returns (seconds, rows).
    ``marks``: new (max CAS, high seqno) meta rows to write too, if any;
    ``seqno``: the seqno the file holds every mutation up to once it commits;
    ``wipe``: delete every row first (a flush).
    """
    started = time.perf_counter()
    puts: List[Any] = []  # key, exp, item, crc, key, exp, item, crc...
    big: List[Tuple[bytes, float, bytes, int]] = []
    dels: List[bytes] = []
    for k, item in batch.items():
        if item is None:
            dels.append(k)
        elif len(item) <= _BIG:
            puts += (k, expiry_of(item), item, crc32(item, crc32(k)))
        else:
            big.append((k, expiry_of(item), item, crc32(item, crc32(k))))
    conn.execute("BEGIN IMMEDIATE")
    try:
        if wipe:
            conn.execute("DELETE FROM items")
        if puts:
            _execute_chunked(conn, _put_sql, puts, 4)
        if big:
            conn.executemany(_put_sql(1), big)
        if dels:
            _execute_chunked(conn, _del_sql, dels, 1)
        if marks is not None:
            conn.execute(META_MARKS, (str(marks[0]), marks[1], 0))
        conn.execute(META_SEQNO, (seqno,))
        conn.execute("COMMIT")  # synchronous=FULL: the WAL is fsynced here
    except BaseException:
        try:
            conn.execute("ROLLBACK")
        except sqlite3.Error:
            pass
        raise
    return time.perf_counter() - started, len(puts) // 4 + len(big) + len(dels)


def checkpoint(conn: sqlite3.Connection, path: str, seqno: int, clean: bool,
               items: Optional[int] = None) -> None:
    """
    (writer thread) Copy the WAL into the data file, truncate the WAL and
    write the manifest: the file holds ``items`` items (counted if None) up to
    ``seqno``.
    """
    busy = _first(conn, "PRAGMA wal_checkpoint(TRUNCATE)")[0]
    if busy:
        raise sqlite3.OperationalError("the checkpoint of %s could not finish" % (path,))
    if items is None:
        items = _first(conn, "SELECT count(*) FROM items")[0]
    _manifest.write_manifest(_manifest.manifest_path(path), Manifest(seqno, items, clean))


def write_and_checkpoint(conn: sqlite3.Connection, batch: Dict[bytes, Optional[bytes]],
                         marks: Optional[Tuple[int, int]], seqno: int, path: str,
                         recover: bool = False, wipe: bool = False
                         ) -> Tuple[float, int, Optional[Exception]]:
    """
    (writer thread) :func:`write_batch` (if ``batch``), then :func:`checkpoint`;
    returns (seconds, rows, the checkpoint's error if it failed).  ``recover``
    (after failed writes, say a full disk): first try to empty the WAL into the
    data file, so the batch is written into the space that frees.
    """
    if recover:
        try:
            _first(conn, "PRAGMA wal_checkpoint(TRUNCATE)")
        except sqlite3.Error:
            pass
    took, rows = (write_batch(conn, batch, marks, seqno, wipe) if batch or wipe
                  else (0.0, 0))
    try:
        checkpoint(conn, path, seqno, False)
    except (sqlite3.Error, OSError) as e:
        return took, rows, e
    return took, rows, None


def close_db(conn: sqlite3.Connection, lock_fd: int, path: str, max_cas: int,
             high_seqno: int, seqno: int) -> None:
    """
    (writer thread) Record a clean shutdown with the exact CAS and seqno
    high-water marks, checkpoint the WAL into the data file, write the
    manifest, close, unlock.  ``seqno``: the file holds everything up to it.
    """
    try:
        try:
            conn.execute("BEGIN IMMEDIATE")
            conn.execute(META_MARKS, (str(max_cas), high_seqno, 1))
            conn.execute(META_SEQNO, (seqno,))
            conn.execute("COMMIT")
            checkpoint(conn, path, seqno, True)
        finally:
            conn.close()
    finally:
        unlock_dir(lock_fd)


class Warm(NamedTuple):
    """What warmup loaded: the items and the marks to go on from."""

    items: Dict[bytes, bytes]
    tombstones: Dict[bytes, bytes]  # deleted documents' system xattrs
    expiries: List[Tuple[float, bytes]]  # a heap of (expiry, key)
    nbytes: int  # keys + values, as the bucket counts them
    cas: int  # the last CAS handed out
    seqno: int  # the last seqno handed out
    expired: int  # expired items dropped from the file
    mem: int  # the memory the items and tombstones take, as the bucket counts it
    nonresident: int  # items loaded ejected (over the budget)


def _damaged(path: str, k: bytes) -> CorruptDataError:
    return CorruptDataError("the data file %s holds a damaged item (key %r: checksum "
                            "mismatch); refusing to start, it is left as it is" % (path, k))


def _never_expiring(conn: sqlite3.Connection, path: str) -> Dict[bytes, bytes]:
    """The items that never expire, checksums verified (in C: no per-row Python)."""
    # A million row tuples alive at once would each trigger collections.
    collecting = gc.isenabled()
    gc.disable()
    try:
        rows = conn.execute("SELECT key, item, crc FROM items WHERE exp = 0").fetchall()
    finally:
        if collecting:
            gc.enable()
    if not rows:
        return {}
    key, item, crc = itemgetter(0), itemgetter(1), itemgetter(2)
    if not all(map(eq, map(crc32, map(item, rows), map(crc32, map(key, rows))),
                   map(crc, rows))):
        for k, v, c in rows:
            if crc32(v, crc32(k)) != c:
                raise _damaged(path, k)
    return dict(zip(map(key, rows), map(item, rows)))


def _value_budget(conn: sqlite3.Connection, budget: Optional[int]) -> Optional[int]:
    """
    None if every item of the file fits ``budget`` (or there is none), else
    what is left of it for values once every key and its metadata (an
    ejected item's cost) is counted.
    """
    if budget is None:
        return None
    size, keys, n = conn.execute(
        "SELECT coalesce(sum(length(key) + length(item)), 0), coalesce(sum(length(key)), 0),"
        " count(*) FROM items").fetchone()
    if size + n * ITEM_OVERHEAD <= budget:
        return None
    return budget - keys - n * (ITEM_OVERHEAD + EJECTED_LEN)


def _load_within(conn: sqlite3.Connection, path: str, now: float, budget: int
                 ) -> Tuple[Dict[bytes, bytes], List[Tuple[float, bytes]], List[Tuple[bytes]], int]:
    """
    Every row, checksums verified, values ejected once they take ``budget``
    bytes (beyond their ejected form's): ``(items, expiry heap, expired
    keys, how many ejected)``.
    """
    items: Dict[bytes, bytes] = {}
    heap: List[Tuple[float, bytes]] = []
    expired: List[Tuple[bytes]] = []
    used = ejected = 0
    rows = conn.execute("SELECT key, exp, item, crc FROM items")
    for k, exp, item, crc in _rows(rows):
        if crc32(item, crc32(k)) != crc:
            raise _damaged(path, k)
        if exp > 0:
            if exp <= now:
                expired.append((k,))
                continue
            heap.append((exp, k))
        extra = len(item) - EJECTED_LEN
        if used + extra > budget and ejectable(item):
            item = eject(item)
            ejected += 1
        else:
            used += extra
        items[k] = item
    heapq.heapify(heap)
    return items, heap, expired, ejected


#: About how many bytes of rows warmup fetches at a time.
FETCH_BYTES = 4 << 20


def _rows(cursor: sqlite3.Cursor) -> Any:
    """A cursor's rows, fetched about FETCH_BYTES at a time (up to 1,024 rows)."""
    n = 16
    while True:
        rows = cursor.fetchmany(n)
        if not rows:
            return
        size = sum(len(r[2]) for r in rows) or 1
        n = max(1, min(1024, FETCH_BYTES * len(rows) // size))
        yield from rows


def _split_tombstones(items: Dict[bytes, bytes]) -> Dict[bytes, bytes]:
    """Take the tombstones out of ``items`` (a pass in C when there are none)."""
    if bytes([TOMBSTONE]) not in bytes(map(itemgetter(0), items.values())):
        return {}
    tombs = {k: v for k, v in items.items() if v[0] == TOMBSTONE}
    for k in tombs:
        del items[k]
    return tombs


def _load_all(conn: sqlite3.Connection, path: str, now: float
              ) -> Tuple[Dict[bytes, bytes], List[Tuple[float, bytes]], List[Tuple[bytes]], int]:
    """Every row, checksums verified, as _load_within returns them (nothing ejected)."""
    items = _never_expiring(conn, path)
    heap: List[Tuple[float, bytes]] = []
    expired: List[Tuple[bytes]] = []
    for k, exp, item, crc in conn.execute(
            "SELECT key, exp, item, crc FROM items WHERE exp > 0"):
        if crc32(item, crc32(k)) != crc:
            raise _damaged(path, k)
        if exp <= now:
            expired.append((k,))
        else:
            items[k] = item
            heap.append((exp, k))
    heapq.heapify(heap)
    return items, heap, expired, 0


def warm_up(conn: sqlite3.Connection, path: str, now: float, floor_cas: int,
            manifest: Optional[Manifest] = None, wal_missing: bool = False,
            budget: Optional[int] = None) -> Warm:
    """
    Load every live item of the data file (checksums verified), refuse data
    behind ``manifest``, delete the expired items from the file and mark it
    "not closed cleanly" (until :func:`close_db` says otherwise).  After an
    unclean stop the CAS and seqno go on ``RESTART_GAP`` past the marks; the
    CAS never goes below ``floor_cas``.  Items past ``budget`` bytes (as
    ``mem_used`` counts them) are loaded ejected: keys and metadata only.
    """
    try:
        meta = dict(conn.execute("SELECT name, value FROM meta"))
        values = _value_budget(conn, budget)
        if values is None:
            items, heap, expired, ejected = _load_all(conn, path, now)
        else:
            items, heap, expired, ejected = _load_within(conn, path, now, values)
        mem = sum(map(len, items)) + sum(map(len, items.values())) + ITEM_OVERHEAD * len(items)
        tombs = _split_tombstones(items)  # (they never expire)
        try:
            max_cas = int(meta.get("max_cas", 0))
            seqno = int(meta.get("high_seqno", 0))
            # (Both are "last handed out": the next ones are +1.)
            gap = 0 if meta.get("clean") == 1 else RESTART_GAP
            nbytes = sum(map(len, items)) + sum(map(value_len, items.values()))
            held = meta.get("seqno")
            _manifest.check_data(path, None if held is None else int(held),
                                 len(items) + len(tombs) + len(expired), manifest,
                                 CorruptDataError,
                                 wal_missing, meta.get("clean") == 1)
        except (TypeError, ValueError) as e:
            raise CorruptDataError("the data file %s holds bad data: %s" % (path, e))
        cas = max(floor_cas, max_cas + gap)
        if gap:
            seqno += RESTART_GAP
        conn.execute("BEGIN IMMEDIATE")
        if expired:
            conn.executemany(DEL, expired)
        conn.execute(META_MARKS, (str(cas), seqno, 0))
        conn.execute(META_SEQNO, (seqno,))
        conn.execute("COMMIT")
    except sqlite3.Error as e:
        raise _refusal(path, e, "cannot read the data file")
    except (TypeError, IndexError, struct_error) as e:
        raise CorruptDataError("the data file %s holds bad data: %s; it is left as it is"
                               % (path, e))
    return Warm(items, tombs, heap, nbytes, cas, seqno, len(expired), mem, ejected)


#: The page cache of a reader connection (KiB).
READER_CACHE_KIB = 8192


def open_reader(path: str) -> sqlite3.Connection:
    """A read-only connection to a data file (a thread's of its own, beside the writer's)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA query_only = 1")
    # Reads land all over the file: an 8 MiB page cache keeps the tree's
    # inner pages.  (No mmap: an I/O error there would be SIGBUS, not an error.)
    conn.execute("PRAGMA cache_size = -%d" % (READER_CACHE_KIB,))
    return conn


def read_items(conn: sqlite3.Connection, keys: List[bytes]
               ) -> Tuple[Dict[bytes, bytes], List[bytes]]:
    """
    The stored items of ``keys``: ``(found, damaged)``, ``damaged`` the keys
    whose checksum does not match (a key without a row is in neither).
    Every statement is stepped to its end (no read snapshot is left open).
    """
    found: Dict[bytes, bytes] = {}
    damaged: List[bytes] = []
    for at in range(0, len(keys), _CHUNK):
        chunk = keys[at:at + _CHUNK]
        for k, item, crc in conn.execute(_get_sql(len(chunk)), chunk).fetchall():
            if crc32(item, crc32(k)) == crc:
                found[k] = item
            else:
                damaged.append(k)
    return found, damaged
