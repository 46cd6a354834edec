"""
Give freed memory back to the operating system.

CPython returns an emptied small-object arena at once, but memory from
``malloc`` (large values, big dicts, reply buffers) stays in glibc's heap
after ``free``: a bucket flushed of 300,000 items, or connections closed with
megabytes of replies pending, leave the server's RSS where the peak put it.
:class:`MemoryTrimmer` looks at glibc's free-heap figure every few seconds
and, only when a lot is free, calls ``malloc_trim(0)``, which hands the free
pages back.  The check costs microseconds and stays off the request path; on
a libc without these calls (musl, macOS) or on PyPy, it does nothing.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform
from typing import Any, Optional

from twisted.application.service import Service
from twisted.internet.task import LoopingCall
from twisted.logger import Logger

__all__ = ["MemoryTrimmer", "glibc_heap", "DEFAULT_INTERVAL", "DEFAULT_THRESHOLD"]

#: Seconds between looks at the heap.
DEFAULT_INTERVAL = 2.0
#: Free heap bytes worth a trim.
DEFAULT_THRESHOLD = 4 << 20

_log = Logger()

_FIELDS = ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
           "uordblks", "fordblks", "keepcost")


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in _FIELDS]


class GlibcHeap:
    """glibc's ``mallinfo2`` (free heap bytes) and ``malloc_trim``."""

    def __init__(self, libc: Any) -> None:
        self._mallinfo2 = libc.mallinfo2
        self._mallinfo2.restype = _MallInfo2
        self._trim = libc.malloc_trim
        self._trim.argtypes = [ctypes.c_size_t]

    def free_bytes(self) -> int:
        """Bytes free inside the heap (released or not)."""
        return int(self._mallinfo2().fordblks)

    def trim(self) -> None:
        self._trim(0)


def glibc_heap() -> Optional[GlibcHeap]:
    """This process's glibc heap, or None where there is none to trim."""
    if platform.python_implementation() != "CPython":
        return None
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        return GlibcHeap(ctypes.CDLL(name))
    except (OSError, AttributeError):  # not glibc, or older than 2.33
        return None


class MemoryTrimmer(Service):
    """Trims the heap when ``threshold`` more bytes of it are free than before."""

    def __init__(self, clock: Any, heap: Optional[GlibcHeap] = None,
                 interval: float = DEFAULT_INTERVAL,
                 threshold: int = DEFAULT_THRESHOLD) -> None:
        self.heap = heap
        self.interval = interval
        self.threshold = threshold
        self.trims = 0
        self._level = 0
        self._loop: Optional[LoopingCall] = None
        self._clock = clock

    def startService(self) -> None:
        Service.startService(self)
        if self.heap is not None:
            self._loop = LoopingCall(self.check)
            self._loop.clock = self._clock
            self._loop.start(self.interval, now=False).addErrback(self._failed)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self._loop is not None and self._loop.running:
            self._loop.stop()
        self._loop = None
        return None

    def _failed(self, f: Any) -> None:
        """A heap call that failed ends the trimming, with one log line."""
        self._loop = None
        _log.failure("txcb: trimming the heap failed; no more trims", f)

    def check(self) -> bool:
        """
        Trim if ``threshold`` more bytes are free than after the last trim
        (trimmed pages still count as free, so the level is what matters);
        whether it did.
        """
        assert self.heap is not None
        free = self.heap.free_bytes()
        self._level = min(self._level, free)
        if free - self._level < self.threshold:
            return False
        self.heap.trim()
        self.trims += 1
        self._level = self.heap.free_bytes()
        return True
