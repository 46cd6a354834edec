"""
Real memcached (and nutcracker) processes for tests, on free loopback ports.

Every process is started with a parent-death signal (Linux), stopped by pid
(SIGTERM, then SIGKILL after a bounded wait) and reaped; every wait here is
bounded.  Nothing here imports the reactor: starting and stopping block for
at most a few hundred milliseconds, before or after the reactor work.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Dict, List, Optional, Sequence

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

MEMCACHED = shutil.which("memcached") or "/usr/bin/memcached"
NUTCRACKER = shutil.which("nutcracker") or "/usr/sbin/nutcracker"
SASLPASSWD2 = shutil.which("saslpasswd2") or "/usr/sbin/saslpasswd2"

_live: Dict[int, "Process"] = {}


def have(path: str) -> bool:
    return os.path.isfile(path) and os.access(path, os.X_OK)


def free_port() -> int:
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
    finally:
        s.close()


def die_with_parent() -> None:  # pragma: no cover - runs in the child
    """``preexec_fn`` of a child process: SIGTERM when the test run dies
    (Linux), so no server outlives it even when atexit handlers do not run."""
    try:
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:
        pass


def accepts(port: int) -> bool:
    """Whether 127.0.0.1:port takes a connection now."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
        return True
    except OSError:
        return False


class Process:
    """One server process listening on ``127.0.0.1:port``."""

    name = "process"

    def __init__(self, port: Optional[int] = None) -> None:
        self.port = port or free_port()
        self.proc: Optional[subprocess.Popen] = None
        self.log_path = os.path.join(tempfile.gettempdir(), "txcb-test-%s-%d-%d.log"
                                     % (self.name, os.getpid(), self.port))

    @property
    def address(self) -> str:
        return "127.0.0.1:%d" % (self.port,)

    @property
    def pid(self) -> Optional[int]:
        return self.proc.pid if self.proc is not None else None

    def argv(self) -> List[str]:
        raise NotImplementedError

    def env(self) -> Optional[Dict[str, str]]:
        return None

    def log(self) -> str:
        """What the process has written to its log so far ("" if nothing)."""
        try:
            with open(self.log_path) as f:
                return f.read()
        except OSError:
            return ""

    def start(self, timeout: float = 5.0) -> "Process":
        """Start and wait (at most ``timeout`` s) until the port accepts."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        kwargs = {}
        if sys.platform.startswith("linux"):
            kwargs["preexec_fn"] = die_with_parent
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.argv(), stdin=subprocess.DEVNULL, stdout=log,
                                         stderr=log, env=self.env(), **kwargs)
        _live[self.proc.pid] = self
        deadline = time.monotonic() + timeout
        while not accepts(self.port):
            if self.proc.poll() is not None:
                self._reap(keep_log=True)
                raise RuntimeError("%s exited with %s at start-up (port %d); see %s"
                                   % (self.name, self.proc.returncode, self.port,
                                      self.log_path))
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("%s did not listen on port %d within %.1fs"
                                   % (self.name, self.port, timeout))
            time.sleep(0.005)
        return self

    def _reap(self, keep_log: bool = False) -> None:
        if self.proc is not None:
            _live.pop(self.proc.pid, None)
        if not keep_log:
            try:
                os.unlink(self.log_path)
            except OSError:
                pass

    def kill(self) -> None:
        """SIGKILL by pid and reap (a crash, as far as clients can tell)."""
        p = self.proc
        if p is None or p.poll() is not None:
            self._reap()
            return
        os.kill(p.pid, signal.SIGKILL)
        p.wait(timeout=5)
        self._reap()

    def stop(self, timeout: float = 2.0) -> None:
        """SIGTERM by pid; SIGKILL if it has not exited within ``timeout`` s."""
        p = self.proc
        if p is None:
            return
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
            try:
                p.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(timeout=5)
        self._reap()

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


class Memcached(Process):
    name = "memcached"

    def __init__(self, port: Optional[int] = None, extra: Sequence[str] = (),
                 env: Optional[Dict[str, str]] = None) -> None:
        Process.__init__(self, port)
        self.extra = list(extra)
        self._env = env

    def argv(self) -> List[str]:
        argv = [MEMCACHED, "-l", "127.0.0.1", "-p", str(self.port), "-U", "0", "-m", "64",
                "-t", "2", "-c", "512"]
        if hasattr(os, "geteuid") and os.geteuid() == 0:
            argv += ["-u", "root"]  # memcached refuses to run as root otherwise
        return argv + self.extra

    def env(self) -> Optional[Dict[str, str]]:
        if self._env is None:
            return None
        return dict(os.environ, **self._env)

    def stop(self, timeout: float = 2.0) -> None:
        """SIGKILL by pid: memcached keeps nothing to save, and it only acts
        on SIGTERM at its next clock tick (up to a second later)."""
        self.kill()
        d = getattr(self, "cleanup_dir", None)
        if d is not None:
            shutil.rmtree(d, ignore_errors=True)


class Nutcracker(Process):
    """nutcracker (twemproxy) in front of memcached servers."""

    name = "nutcracker"

    def __init__(self, servers: Sequence[str], distribution: str = "ketama",
                 hash: str = "md5", port: Optional[int] = None) -> None:
        Process.__init__(self, port)
        self.stats_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="txcb-nutcracker-")
        self.conf = os.path.join(self.dir, "nutcracker.yml")
        lines = ["pool:", "  listen: 127.0.0.1:%d" % self.port, "  hash: %s" % hash,
                 "  distribution: %s" % distribution, "  auto_eject_hosts: false",
                 "  timeout: 2000", "  servers:"]
        lines += ["   - %s" % s for s in servers]
        with open(self.conf, "w") as f:
            f.write("\n".join(lines) + "\n")

    def argv(self) -> List[str]:
        return [NUTCRACKER, "-c", self.conf, "-s", str(self.stats_port), "-a", "127.0.0.1",
                "-o", os.path.join(self.dir, "nutcracker.log")]

    def stop(self, timeout: float = 2.0) -> None:
        Process.stop(self, timeout)
        shutil.rmtree(self.dir, ignore_errors=True)


def sasl_memcached(username: str, password: str) -> Optional[Memcached]:
    """
    A memcached with SASL PLAIN (``-S``) and one user, or None when
    ``saslpasswd2`` (Debian's sasl2-bin) is not installed.
    """
    if not have(SASLPASSWD2):
        return None
    d = tempfile.mkdtemp(prefix="txcb-sasl-")
    db = os.path.join(d, "sasldb2")
    subprocess.run([SASLPASSWD2, "-p", "-a", "memcached", "-c", "-f", db, username],
                   input=password.encode(), check=True, timeout=10,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with open(os.path.join(d, "memcached.conf"), "w") as f:
        f.write("mech_list: plain\nsasldb_path: %s\n" % db)
    m = Memcached(extra=["-S"], env={"SASL_CONF_PATH": d})
    m.cleanup_dir = d  # type: ignore[attr-defined]
    return m


def stop_all() -> None:
    """Stop every process this module started that is still running."""
    for proc in list(_live.values()):
        try:
            proc.stop()
        except Exception:
            pass


atexit.register(stop_all)

_shared: Optional[List[Memcached]] = None


def shared_memcached(n: int = 3) -> List[Memcached]:
    """``n`` memcached servers shared by the tests of this process (started
    once, stopped at exit); tests must not kill them."""
    global _shared
    if _shared is None or not all(m.running for m in _shared):
        if _shared:
            for m in _shared:
                m.stop()
        _shared = [Memcached().start() for _ in range(n)]
    return _shared


def start_group(n: int = 3, extra: Sequence[str] = ()) -> List[Memcached]:
    """``n`` fresh servers for one test (stop them with :func:`stop_group`)."""
    group: List[Memcached] = []
    try:
        for _ in range(n):
            group.append(Memcached(extra=extra).start())
    except Exception:
        stop_group(group)
        raise
    return group


def stop_group(group: Sequence[Process]) -> None:
    for m in group:
        m.stop()


def start_txcb_twistd(testcase, args: Sequence[str], port: int) -> str:
    """
    Start ``twistd -n txcb ARGS`` from this tree in a temp dir of
    ``testcase``, wait until ``port`` accepts, and return its log file; it is
    stopped by its pid at cleanup (SIGTERM, then KILL).
    """
    workdir = os.path.abspath(testcase.mktemp())
    os.makedirs(workdir)
    log = os.path.join(workdir, "twistd.log")
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", log, "txcb"] + list(args)
    proc = subprocess.Popen(argv, cwd=workdir, env=dict(os.environ, PYTHONPATH=_ROOT),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def stop() -> None:
        if proc.poll() is None:
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(10)
    testcase.addCleanup(stop)
    deadline = time.time() + 30
    while not accepts(port):
        if proc.poll() is not None or time.time() > deadline:
            text = open(log).read() if os.path.exists(log) else ""
            raise AssertionError("twistd did not start (exit %s):\n%s"
                                 % (proc.poll(), text[-3000:]))
        time.sleep(0.1)
    return log
