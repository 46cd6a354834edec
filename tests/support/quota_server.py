"""
A real server process with a persistent bucket under a RAM quota, for the
tests whose point is the process's memory: ``twistd txcb --data-dir D
--memory-quota N`` of this tree, serving memcached on a free loopback port,
and its RSS.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import List, Optional

from bench.run import rss_bytes
from tests.support.procs import accepts, die_with_parent, free_port

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class QuotaServer:
    """One server on ``data_dir`` with ``quota`` bytes; ``port`` is memcached's."""

    def __init__(self, data_dir: str, quota: str, workdir: str) -> None:
        self.data_dir = data_dir
        self.quota = quota
        self.workdir = workdir
        self.port = free_port()
        self.log_path = os.path.join(workdir, "server-%d.log" % self.port)
        self.proc: Optional[subprocess.Popen] = None

    def argv(self) -> List[str]:
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", self.log_path, "txcb",
                "--data-dir", self.data_dir, "--memory-quota", self.quota,
                "-p", "tcp:%d:interface=127.0.0.1" % free_port(),
                "--memcached", "tcp:%d:interface=127.0.0.1" % self.port]

    def start(self, timeout: float = 60.0) -> "QuotaServer":
        with open(self.log_path + ".out", "ab") as out:
            self.proc = subprocess.Popen(self.argv(), cwd=self.workdir, stdout=out,
                                         stderr=out, stdin=subprocess.DEVNULL,
                                         env=dict(os.environ, PYTHONPATH=_ROOT),
                                         preexec_fn=die_with_parent)
        deadline = time.monotonic() + timeout
        while not accepts(self.port):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("the server did not start (exit %s):\n%s"
                                     % (self.proc.returncode, self.log()[-3000:]))
            time.sleep(0.05)
        return self

    def log(self) -> str:
        text = ""
        for path in (self.log_path, self.log_path + ".out"):
            if os.path.exists(path):
                with open(path, errors="replace") as f:
                    text += f.read()
        return text

    def rss(self) -> int:
        assert self.proc is not None
        return rss_bytes(self.proc.pid)

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM by pid (the bucket writes its queue), SIGKILL after ``timeout``."""
        p = self.proc
        if p is None or p.poll() is not None:
            return
        os.kill(p.pid, signal.SIGTERM)
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            os.kill(p.pid, signal.SIGKILL)
            p.wait(10)


class RssSampler:
    """Samples a server's RSS every ``interval`` s on a thread; ``peak`` is the highest."""

    def __init__(self, server: QuotaServer, interval: float = 0.1) -> None:
        self.server = server
        self.interval = interval
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> "RssSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.peak = max(self.peak, self.server.rss())
                self.samples += 1
            except (OSError, RuntimeError):
                return
            self._stop.wait(self.interval)
