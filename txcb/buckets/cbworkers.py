"""
The worker threads of :class:`txcb.buckets.couchbase.CouchbaseBucket`: a
fixed number of threads that each run one blocking SDK call at a time, and
hand the outcomes back to the reactor in batches (one ``callFromThread`` per
batch, however many calls finished meanwhile: under load a wake-up of the
reactor serves many replies).

Lighter than Twisted's ThreadPool for this job (no context copying, no
per-call wake-up); the threads are daemons, so a bucket never closed does
not keep the process alive.
"""

from __future__ import annotations

import collections
import queue
import threading
from typing import Any, Callable, Deque, List, Tuple

__all__ = ["Workers"]

#: A job: what to run on a worker, and what to call with its outcome on the
#: reactor thread.
Job = Tuple[Callable[[], Any], Callable[[Any], None]]


class Workers:
    """``size`` threads running jobs in order of submission."""

    def __init__(self, reactor: Any, size: int, name: str = "txcb-worker") -> None:
        if size < 1:
            raise ValueError("a worker pool needs at least one thread, not %r" % (size,))
        self.size = size
        self._reactor = reactor
        self._name = name
        self._jobs: "queue.SimpleQueue[Any]" = queue.SimpleQueue()
        self._done: Deque[Tuple[Callable[[Any], None], Any]] = collections.deque()
        self._lock = threading.Lock()
        self._wake_pending = False
        self._threads: List[threading.Thread] = []

    @property
    def started(self) -> bool:
        return bool(self._threads)

    def start(self) -> None:
        for i in range(self.size):
            t = threading.Thread(target=self._work, name="%s-%d" % (self._name, i),
                                 daemon=True)
            t.start()
            self._threads.append(t)

    def submit(self, run: Callable[[], Any], then: Callable[[Any], None]) -> None:
        """Run ``run()`` on a worker; ``then(outcome)`` on the reactor thread
        (``outcome``: its return value; ``run`` must not raise)."""
        self._jobs.put((run, then))

    def stop(self) -> None:
        """Let every thread finish its current job and exit (no waiting)."""
        for _ in self._threads:
            self._jobs.put(None)
        self._threads = []

    def _work(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            run, then = job
            outcome = run()
            self._done.append((then, outcome))
            with self._lock:
                if self._wake_pending:
                    continue
                self._wake_pending = True
            self._reactor.callFromThread(self._deliver)

    def _deliver(self) -> None:
        """On the reactor: every outcome that is in."""
        with self._lock:
            self._wake_pending = False
        done = self._done
        while done:
            then, outcome = done.popleft()
            then(outcome)
