"""
Per-operation counters and latencies of :class:`txcb.buckets.couchbase.CouchbaseBucket`
(the SDK does not tell a client the bucket's own counters): kept on the
reactor thread, one record per answered call.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List

from txcb.errors import NotFoundError
from txcb.results import Result

__all__ = ["OpStats"]


class OpStats:
    """Counts, errors and latencies per operation; hits and misses of gets."""

    def __init__(self, seconds: Callable[[], float]) -> None:
        self._seconds = seconds
        self._started = seconds()
        #: op -> [count, errors, total seconds, max seconds]
        self._ops: Dict[str, List[Any]] = {}
        self.hits = 0
        self.misses = 0

    def record(self, op: str, started: float, outcome: Any) -> None:
        took = self._seconds() - started
        row = self._ops.get(op)
        if row is None:
            row = self._ops[op] = [0, 0, 0.0, 0.0]
        row[0] += 1
        failed = isinstance(outcome, BaseException)
        if failed:
            row[1] += 1
        row[2] += took
        if took > row[3]:
            row[3] = took
        if op == "get":
            missed = (isinstance(outcome, NotFoundError) or
                      (isinstance(outcome, Result) and not outcome.success))
            if missed:
                self.misses += 1
            elif not failed:
                self.hits += 1

    def snapshot(self) -> Dict[str, Any]:
        """``op_X`` (count), ``errors_X``, ``latency_avg_us_X`` and
        ``latency_max_us_X`` per operation X seen; hits, misses, uptime.  Only
        the counts start with ``op_`` (the metrics endpoint counts those)."""
        s: Dict[str, Any] = {"hits": self.hits, "misses": self.misses,
                             "uptime": int(self._seconds() - self._started)}
        for op, (n, errors, total, worst) in sorted(self._ops.items()):
            s["op_" + op] = n
            s["errors_" + op] = errors
            s["latency_avg_us_" + op] = int(total / n * 1e6) if n else 0
            s["latency_max_us_" + op] = int(worst * 1e6)
        return s
