"""
What a persistent bucket knows it had: a small manifest next to the data
file, ``<bucket name>.manifest``, and the start-up checks against it.

The manifest holds the seqno and item count of the data file at its last
checkpoint (the WAL copied into the main file), and whether the bucket was
closed cleanly.  It is written atomically (a temp file, fsync, rename, fsync
of the directory) at start-up, at each checkpoint and at a clean close, so it
is always one whole version.  Start-up refuses, naming the file, when the
data is behind it: a data file that is missing or empty, a WAL missing after
an unclean stop, or data older than (or at the same seqno, different from)
the last checkpoint.  No reactor; files only.
"""

from __future__ import annotations

import errno
import json
import os
import struct
from typing import NamedTuple, Optional

__all__ = ["Manifest", "manifest_path", "read_manifest", "write_manifest",
           "check_files", "check_data", "check_wal_tail", "disk_full"]


#: Free bytes under which an I/O error is taken for a full disk.
_ALMOST_FULL = 1 << 20


class Manifest(NamedTuple):
    """The data file's state at its last checkpoint."""

    seqno: int  # the seqno the data file holds everything up to
    items: int  # how many items it held then
    clean: bool  # written by a clean close (nothing can be in a WAL)


def manifest_path(data_path: str) -> str:
    """The manifest of a data file ``<name>.sqlite3``: ``<name>.manifest``."""
    root, _ext = os.path.splitext(data_path)
    return root + ".manifest"


def disk_full(e: BaseException, path: str = "") -> bool:
    """
    Whether an error says the disk (or quota) is full; an I/O error counts
    when the filesystem holding ``path`` has (almost) no space left (SQLite
    reports a full disk while mapping its shared-memory file as an I/O error).
    """
    if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    code = getattr(e, "sqlite_errorcode", None)
    if code is not None and code & 0xFF == 13:  # SQLITE_FULL
        return True
    if "disk is full" in str(e):
        return True
    # SQLITE_IOERR; PyPy's sqlite3 has no error codes, only the message.
    io_error = code & 0xFF == 10 if code is not None else str(e).startswith("disk I/O error")
    if path and (isinstance(e, OSError) or io_error):
        try:
            st = os.statvfs(os.path.dirname(path) or ".")
        except OSError:
            return False
        return st.f_bavail * st.f_frsize < _ALMOST_FULL
    return False


def read_manifest(path: str, corrupt: type) -> Optional[Manifest]:
    """The manifest at ``path``, None if there is none; ``corrupt`` if unreadable."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return None
    except OSError as e:
        raise corrupt("cannot read the manifest %s: %s" % (path, e))
    try:
        d = json.loads(raw.decode("utf-8"))
        m = Manifest(int(d["seqno"]), int(d["items"]), bool(d["clean"]))
    except (ValueError, KeyError, TypeError, AttributeError) as e:
        raise corrupt("the manifest %s is damaged (%s); refusing to start" % (path, e))
    return m


def write_manifest(path: str, m: Manifest) -> None:
    """Replace the manifest atomically (and durably)."""
    tmp = path + ".tmp"
    data = json.dumps({"seqno": m.seqno, "items": m.items, "clean": m.clean}).encode()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)


def check_files(data_path: str, m: Optional[Manifest], corrupt: type) -> bool:
    """
    Before opening: refuse a missing or empty data file; returns whether the
    WAL is missing (which :func:`check_data` judges).
    """
    wal_missing = not os.path.exists(data_path + "-wal")
    if m is None:
        return wal_missing
    had = "the manifest %s says it held %d items up to seqno %d" % (
        manifest_path(data_path), m.items, m.seqno)
    if m.seqno or m.items:
        try:
            size = os.path.getsize(data_path)
        except FileNotFoundError:
            raise corrupt("the data file %s is missing but %s; refusing to start (restore "
                          "it, or remove the manifest to start empty)" % (data_path, had))
        except OSError:
            return wal_missing  # open_db says what is wrong with it
        if size == 0:
            raise corrupt("the data file %s is empty but %s; refusing to start (restore "
                          "it, or remove the manifest to start empty)" % (data_path, had))
    return wal_missing


def check_data(data_path: str, seqno: Optional[int], items: int, m: Optional[Manifest],
               corrupt: type, wal_missing: bool = False, closed: bool = False) -> None:
    """
    After reading: refuse data behind what the manifest says the file had, or
    a WAL missing after an unclean stop (``closed``: the data file itself
    says it was closed cleanly, so nothing was left in a WAL).
    """
    if m is None or seqno is None:
        return
    if wal_missing and not m.clean and not closed:
        raise corrupt("the write-ahead log %s-wal is missing after an unclean stop (the "
                      "writes since the last checkpoint would be lost; the manifest %s "
                      "says the data file held %d items up to seqno %d then); refusing "
                      "to start" % (data_path, manifest_path(data_path), m.items, m.seqno))
    if seqno < m.seqno or (seqno == m.seqno and items != m.items):
        raise corrupt(
            "the data file %s (with its write-ahead log) holds %d items up to seqno %d, "
            "but the manifest %s says it held %d items up to seqno %d: it lost "
            "writes; refusing to start, it is left as it is"
            % (data_path, items, seqno, manifest_path(data_path), m.items, m.seqno))


_WAL_HEADER = struct.Struct(">IIIIII")  # magic, version, page size, seq, salt-1, salt-2
_FRAME_HEADER = struct.Struct(">IIII")  # page, db size after commit (0: not a commit), salts
_WAL_MAGIC = (0x377F0682, 0x377F0683)


def check_wal_tail(data_path: str, used: int, corrupt: type) -> None:
    """
    After SQLite recovered the WAL using its first ``used`` frames: refuse if
    a later frame of the same WAL generation ends a transaction.  SQLite stops
    at the first damaged frame, silently dropping the commits after it.
    """
    wal = data_path + "-wal"
    try:
        with open(wal, "rb") as f:
            head = f.read(_WAL_HEADER.size + 8)
            if len(head) < _WAL_HEADER.size + 8:
                return
            magic, _v, page_size, _seq, salt1, salt2 = _WAL_HEADER.unpack_from(head)
            if magic not in _WAL_MAGIC or not 512 <= page_size <= 65536:
                return
            frame = 24 + page_size
            size = os.fstat(f.fileno()).st_size
            for i in range(used, (size - 32) // frame):
                f.seek(32 + i * frame)
                _page, commit, s1, s2 = _FRAME_HEADER.unpack(f.read(16))
                if commit and (s1, s2) == (salt1, salt2):
                    raise corrupt(
                        "the write-ahead log %s is damaged: SQLite stops at frame %d but "
                        "frame %d ends a later transaction, whose writes would be lost; "
                        "refusing to start, it is left as it is" % (wal, used + 1, i + 1))
    except OSError:
        return
