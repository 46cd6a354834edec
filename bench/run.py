"""
Run the txcb benchmark: ``python -m bench`` (``--help`` for the options).

Checks the prerequisites, starts every server on free loopback ports (a real
``memcached``, ``twistd txcb`` with the memory bucket, an echo server), runs
each job in its own client process for a bounded time, stops the servers it
started (by pid), prints a table and writes the same figures as JSON (and a
PNG chart of the target ratios if matplotlib is installed).

Absolute figures on a shared machine drift between runs; the ratios, measured
back to back in one run, are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)

CLIENTS = {
    "txcb": "txcb RemoteBucket -> txcb server",
    "mcp": "Twisted MemCacheProtocol -> memcached",
    "pym": "pymemcache -> memcached",
    "echo": "floor: blocking socket -> echo server",
    "echo-tw": "floor: Twisted Protocol -> echo server",
}
SUBJECT = "txcb"


# -- prerequisites ------------------------------------------------------------

def check_prerequisites() -> Tuple[List[str], List[str], Dict[str, str]]:
    """(missing required, missing optional, tool versions)."""
    missing, optional, versions = [], [], {}
    if shutil.which("memcached") is None:
        missing.append("memcached (Debian: apt-get install memcached)")
    else:
        out = subprocess.run(["memcached", "-V"], capture_output=True, text=True)
        versions["memcached"] = out.stdout.strip()
    for tool, pkg in (("memcaslap", "libmemcached-tools"),
                      ("memccapable", "libmemcached-tools"), ("nutcracker", "nutcracker")):
        if shutil.which(tool) is None:
            optional.append("%s (Debian: apt-get install %s)" % (tool, pkg))
    try:
        import pymemcache
        versions["pymemcache"] = pymemcache.__version__
    except ImportError:
        missing.append("pymemcache (pip install pymemcache, or pip install -e .[test])")
    try:
        import twisted
        import txcb
        versions["twisted"] = twisted.__version__
        versions["txcb"] = txcb.__version__
    except ImportError as e:
        missing.append("txcb and Twisted importable (pip install -e .): %s" % (e,))
    return missing, optional, versions


# -- processes ----------------------------------------------------------------

def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def child_env(root: str = ROOT) -> Dict[str, str]:
    """Children import the txcb, bench and twistd plugin of the tree ``root`` first."""
    env = dict(os.environ)
    env["PYTHONPATH"] = root + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    return env


def busy_fraction(seconds: float = 0.5) -> float:
    """How busy the machine's CPUs are (0..1) over a short sample, from /proc/stat."""
    def sample() -> Tuple[int, int]:
        with open("/proc/stat") as f:
            v = [int(x) for x in f.readline().split()[1:]]
        idle = v[3] + (v[4] if len(v) > 4 else 0)
        return sum(v) - idle, sum(v)
    b0, t0 = sample()
    time.sleep(seconds)
    b1, t1 = sample()
    return (b1 - b0) / max(t1 - t0, 1)


def rss_bytes(pid: int) -> int:
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS for pid %d" % pid)


class Server:
    """A server process this run started (and so stops, by pid)."""

    def __init__(self, name: str, argv: List[str], port: int, log_path: str,
                 root: str = ROOT, cwd: str = ROOT) -> None:
        self.name = name
        self.argv = argv
        self.port = port
        self.log_path = log_path
        self._log = open(log_path, "wb")
        self.proc = subprocess.Popen(argv, stdout=self._log, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, env=child_env(root), cwd=cwd)
        self.pid = self.proc.pid

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError("%s exited with %s; log %s:\n%s" % (
                    self.name, self.proc.returncode, self.log_path, self.tail()))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("%s not listening on port %d after %.0fs" % (
            self.name, self.port, timeout))

    def tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode("utf-8", "replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.pid, signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.pid, signal.SIGKILL)
                self.proc.wait(5)
        self._log.close()


def memcached_server(name: str, out_dir: str) -> Server:
    port = free_port()
    argv = ["memcached", "-U", "0", "-l", "127.0.0.1", "-p", str(port), "-m", "1024",
            "-c", "8192"]
    if os.geteuid() == 0:
        argv += ["-u", pwd.getpwuid(0).pw_name]  # memcached refuses root without -u
    return Server(name, argv, port, os.path.join(out_dir, name + ".log"))


def twistd_argv() -> List[str]:
    script = os.path.join(os.path.dirname(sys.executable), "twistd")
    if os.path.exists(script):
        return [script]
    return [sys.executable, "-c", "import sys; sys.argv[0] = 'twistd'; "
            "from twisted.scripts.twistd import run; run()"]


def twistd_in(root: str, python: Optional[str] = None) -> List[str]:
    """
    ``twistd`` whose ``txcb`` plugin is the one of the tree ``root``.  Twisted
    takes the first ``txcb_plugin`` on ``twisted.plugins.__path__``, where an
    installed copy (of another layout) would come before the tree's own.  Run
    it with PYTHONPATH=root and a cwd outside any tree; ``python`` is the
    interpreter (default: this one).
    """
    return [python or sys.executable, "-c", "import sys, twisted.plugins as p; "
            "p.__path__.insert(0, sys.argv.pop(1)); "
            "from twisted.scripts.twistd import run; run()",
            os.path.join(root, "twisted", "plugins")]


def worker_argv(root: Optional[str], python: Optional[str] = None) -> List[str]:
    """The client process: ``bench.worker``, as a script when it runs on another tree."""
    exe = python or sys.executable
    if root is None:
        return [exe, "-m", "bench.worker"]
    # runpy leaves sys.path alone: txcb comes from PYTHONPATH=root, not from bench's tree.
    return [exe, "-c", "import runpy, sys; sys.argv.pop(0); "
            "runpy.run_path(sys.argv[0], run_name='__main__')",
            os.path.join(HERE, "worker.py")]


def txcb_has_option(name: str) -> bool:
    try:
        from txcb.service.tap import Options
    except ImportError:
        return False
    return ("--" + name) in str(Options())


def txcb_server(name: str, out_dir: str) -> Server:
    port = free_port()
    log = os.path.join(out_dir, name + ".log")
    argv = twistd_argv() + ["-n", "--pidfile=", "--logfile", log + ".twistd", "txcb",
                            "-p", "tcp:%d:interface=127.0.0.1" % port]
    if txcb_has_option("ephemeral"):
        argv.append("--ephemeral")  # measure the memory bucket
    return Server(name, argv, port, log)


def echo_server(name: str, out_dir: str) -> Server:
    port = free_port()
    return Server(name, [sys.executable, "-m", "bench.echo", str(port)], port,
                  os.path.join(out_dir, name + ".log"))


def run_worker(job: Dict[str, Any], timeout: float, root: Optional[str] = None,
               cwd: str = ROOT, python: Optional[str] = None) -> Dict[str, Any]:
    """
    Run one job in a fresh client process; its last stdout line is the result.
    With ``root``, the client code is that tree's txcb (``cwd`` must then be
    outside any tree, since it comes first on sys.path); ``python`` is the
    client's interpreter (default: this one).
    """
    proc = subprocess.run(worker_argv(root, python) + [json.dumps(job)], capture_output=True,
                          text=True, timeout=timeout, env=child_env(root or ROOT), cwd=cwd)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"fatal": "worker exited %s: %s" % (
            proc.returncode, (proc.stderr or proc.stdout).strip()[-1500:])}
    return json.loads(lines[-1])


def run_worker_many(jobs: List[Dict[str, Any]], timeout: float) -> List[Dict[str, Any]]:
    """Run several jobs one after the other in one client process (for --smoke)."""
    proc = subprocess.run([sys.executable, "-m", "bench.worker", json.dumps(jobs)],
                          capture_output=True, text=True, timeout=timeout, env=child_env(),
                          cwd=ROOT)
    lines = [json.loads(ln) for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or len(lines) != len(jobs):
        fatal = {"fatal": "worker exited %s: %s" % (
            proc.returncode, (proc.stderr or proc.stdout).strip()[-1500:])}
        return [fatal] * len(jobs)
    return lines


class IdleHolder:
    """A process holding n idle (handshaken) connections to a server."""

    def __init__(self, server: Server, kind: str, n: int) -> None:
        job = {"kind": "idle", "server": kind, "port": server.port, "n": n}
        self.proc = subprocess.Popen([sys.executable, "-m", "bench.worker", json.dumps(job)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     env=child_env(), cwd=ROOT)
        line = self.proc.stdout.readline().decode()  # type: ignore[union-attr]
        if not line.startswith("READY"):
            self.stop()
            raise RuntimeError("idle connection holder failed: %r" % (line,))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.close()  # type: ignore[union-attr]
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)


# -- the run --------------------------------------------------------------------

def fmt_int(n: float) -> str:
    return "{:,}".format(int(round(n)))


def workloads(a: argparse.Namespace) -> List[Dict[str, Any]]:
    """What to measure: each workload is run by the subject and its anchors."""
    one = {"depth": 1, "conns": 1, "multi": 0}
    flight = {"depth": a.inflight, "conns": 1, "multi": 0}
    multi = {"depth": 1, "conns": 1, "multi": a.multi}
    conns = {"depth": 1, "conns": a.conns, "multi": 0}
    return [
        {"id": "get1", "title": "one at a time, get",
         "jobs": [("txcb", "get", one), ("mcp", "get", one), ("pym", "get", one)]},
        {"id": "set1", "title": "one at a time, upsert/set",
         "jobs": [("txcb", "set", one), ("mcp", "set", one), ("pym", "set", one)]},
        {"id": "floor", "title": "round-trip floor, %d-byte echo" % a.value_size,
         "jobs": [("echo", "ping", one), ("echo-tw", "ping", one)]},
        {"id": "get100", "title": "%d in flight, get" % a.inflight,
         "jobs": [("txcb", "get", flight), ("mcp", "get", flight)]},
        {"id": "set100", "title": "%d in flight, upsert/set" % a.inflight,
         "jobs": [("txcb", "set", flight), ("mcp", "set", flight)]},
        {"id": "getmulti", "title": "get_multi of %d (ops = keys)" % a.multi,
         "jobs": [("txcb", "get", multi), ("mcp", "get", multi), ("pym", "get", multi)]},
        {"id": "setmulti", "title": "upsert_multi of %d (ops = keys; MemCacheProtocol: "
         "%d pipelined sets)" % (a.multi, a.multi),
         "jobs": [("txcb", "set", multi), ("mcp", "set", multi), ("pym", "set", multi)]},
        {"id": "conn10", "title": "%d connections, one get at a time on each" % a.conns,
         "jobs": [("txcb", "get", conns), ("mcp", "get", conns)]},
        {"id": "idle", "title": "%d idle + %d active connections, get" % (a.idle, a.conns),
         "jobs": [("txcb", "get", conns), ("mcp", "get", conns)], "idle": a.idle},
        {"id": "items_small", "title": "%s items, get, %d in flight, random keys"
         % (fmt_int(a.small_items), a.inflight),
         "jobs": [("txcb", "get", flight), ("mcp", "get", flight)], "items": "small"},
        {"id": "items_large", "title": "%s items, get, %d in flight, random keys"
         % (fmt_int(a.items), a.inflight),
         "jobs": [("txcb", "get", flight), ("mcp", "get", flight)], "items": "large"},
    ]


TARGETS = [
    # (label, workload, numerator client, denominator (workload, client), op, target)
    ("one at a time, get vs MemCacheProtocol", "get1", "txcb", ("get1", "mcp"), ">=", 0.9),
    ("one at a time, upsert vs MemCacheProtocol", "set1", "txcb", ("set1", "mcp"), ">=", 0.9),
    ("100 in flight, get vs MemCacheProtocol", "get100", "txcb", ("get100", "mcp"), ">=", 1.2),
    ("100 in flight, upsert vs MemCacheProtocol", "set100", "txcb", ("set100", "mcp"), ">=",
     1.2),
    ("get_multi of 100 vs MemCacheProtocol.getMultiple", "getmulti", "txcb",
     ("getmulti", "mcp"), ">=", 1.0),
    ("get_multi of 100 vs pymemcache get_many", "getmulti", "txcb", ("getmulti", "pym"), ">=",
     0.6),
    ("1,000 idle + 10 active vs 10 active alone", "idle", "txcb", ("conn10", "txcb"), ">=",
     0.9),
    ("1,000,000 items vs 1,000 items", "items_large", "txcb", ("items_small", "txcb"), ">=",
     0.9),
]


BASELINE_ROWS = ("get1", "set1", "get100", "set100", "getmulti", "memcaslap", "persist1")
BASELINE_HELP = """\
baseline mode (--baseline DIR):
  Measures two txcb source trees in one run: DIR (say a worktree of an older
  commit: git worktree add /tmp/txcb-base COMMIT) and this one.  Each side
  runs entirely from its own tree: its twistd txcb server (PYTHONPATH=that
  tree, cwd a temporary directory) and its own client code.  Rows: netstring
  get and upsert one at a time (get1, set1) and 100 in flight (get100,
  set100), get_multi of 100 keys (getmulti), memcaslap 90/10 of 100-byte
  values with -c 32 against each side's --ephemeral --memcached endpoint
  (memcaslap), persist_to=1 upserts, 100 in flight, on a persistent bucket
  (persist1).  Each round runs every row on both sides back to back (the
  order alternating between rounds); the median of the rounds is compared.
  The table gives baseline and current ops/s, their ratio and "ok" when the
  ratio is >= 0.95.  Takes --duration, --warmup, --rounds, --quick, --only
  and --out; exits 1 if a row failed, 3 if one is more than 5% slower.
"""

PYTHONS_ROWS = ("memcaslap", "get1", "set1", "get100", "set100", "persist", "memory")
PYTHONS_HELP = """\
interpreter mode (--pythons, --server-python, --client-python):
  Measures this tree's txcb with its servers and clients on the interpreters
  given, side by side in one run: --pythons cpython=/usr/bin/python3,pypy=
  /tmp/pypyenv/bin/python runs each with itself; --server-python and
  --client-python run every server interpreter with every client one.  A row
  is (workload, client, server interpreter, client interpreter), "-" where
  the process is not Python.  Rows: memcaslap 90/10 of 100-byte values, -c
  32, against each interpreter's txcb --ephemeral --memcached (for twice the
  job duration, after a warm-up run), nutcracker -> memcached and memcached
  direct (memcaslap); netstring get and upsert one at a time and 100 in
  flight, txcb client -> txcb server and Twisted MemCacheProtocol ->
  memcached on each client interpreter (get1, set1, get100, set100);
  upserts, 100 in flight, plain and persist_to=1, on a persistent bucket
  (persist); server RSS per item after loading --items 100-byte items, each
  txcb --ephemeral and memcached in turn (memory).  The summary gives issue
  16's target ratios per interpreter.  Each interpreter needs Twisted
  installed; both its servers and clients are checked to run this tree's
  txcb.  Warm-up defaults to 1 s (PyPy's JIT).  Takes --duration, --warmup,
  --rounds, --quick, --items, --only and --out; exits 1 if a row failed.
"""


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.strip().split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog=BASELINE_HELP + "\n" + PYTHONS_HELP)
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds per job and round (default 2; --quick 1)")
    p.add_argument("--warmup", type=float, default=None,
                   help="unmeasured seconds before each job (default 0.5)")
    p.add_argument("--quick", action="store_true",
                   help="1 s per job, 2 rounds, 200,000 items: a run in about two minutes")
    p.add_argument("--smoke", action="store_true",
                   help="a check that everything runs: each job for 0.05 s, all in one "
                   "client process, the servers shared (not a measurement)")
    p.add_argument("--rounds", type=int, default=None,
                   help="runs of each job, interleaved with its anchors' runs; the median "
                   "is reported (default 3; --quick 2)")
    p.add_argument("--items", type=int, default=None,
                   help="items in the large bucket (default 1,000,000)")
    p.add_argument("--idle", type=int, default=None, help="idle connections (default 1,000)")
    p.add_argument("--only", default="",
                   help="comma-separated workload ids to run (%s, memory, couchbase; with --baseline: "
                   "%s)" % (", ".join(w["id"] for w in workloads(argparse.Namespace(
                       inflight=100, multi=100, conns=10, idle=1000, items=1,
                       small_items=1, value_size=100))), ", ".join(BASELINE_ROWS)))
    p.add_argument("--baseline", metavar="DIR",
                   help="A/B mode: compare this tree's txcb with the txcb source tree in "
                   "DIR, same run, interleaved rounds (see below)")
    p.add_argument("--pythons", action="append", default=[], metavar="NAME=PATH,...",
                   help="interpreter mode: issue 16's rows with servers and clients on each "
                   "interpreter, side by side (repeatable or comma-separated; see below)")
    p.add_argument("--server-python", action="append", default=[], metavar="[NAME=]PATH",
                   help="interpreter mode: the txcb servers' interpreter(s); rows for every "
                   "--client-python (default: this interpreter)")
    p.add_argument("--client-python", action="append", default=[], metavar="[NAME=]PATH",
                   help="interpreter mode: the client processes' interpreter(s); rows for "
                   "every --server-python (default: this interpreter)")
    p.add_argument("--out", default=os.path.join(HERE, "results"),
                   help="directory for the JSON, PNG and server logs (default bench/results)")
    p.add_argument("--no-chart", action="store_true", help="skip the PNG chart")
    p.add_argument("--subdoc", action="store_true",
                   help="issue 15's rows instead: lookup1 / get, mutate1 / upsert, the "
                   "server's CPU per request (bench.subdoc_bench; --rounds applies)")
    a = p.parse_args(argv)
    a.value_size = 100
    a.inflight = 100
    a.multi = 100
    a.conns = 10
    a.keys = 1000
    a.small_items = 1000
    if a.smoke:
        defaults = dict(duration=0.05, warmup=0.02, items=3000, idle=20, rounds=1)
    elif a.quick:
        defaults = dict(duration=1.0, warmup=0.3, items=200000, idle=1000, rounds=2)
    else:
        defaults = dict(duration=2.0, warmup=0.5, items=1000000, idle=1000, rounds=3)
    pythons = a.pythons or a.server_python or a.client_python
    if pythons:
        defaults["warmup"] = max(defaults["warmup"], 1.0)  # time for PyPy's JIT
    for k, v in defaults.items():
        if getattr(a, k) is None:
            setattr(a, k, v)
    if a.items <= a.small_items:
        p.error("--items must be more than %d" % a.small_items)
    if a.subdoc:
        from bench.subdoc_bench import main as run_subdoc  # it builds on this module
        return run_subdoc(["--rounds", str(a.rounds)])
    only = set(filter(None, a.only.split(",")))
    if a.baseline:
        if a.smoke:
            p.error("--baseline measures; it does not combine with --smoke")
        unknown = only - set(BASELINE_ROWS)
        if unknown:
            p.error("--only with --baseline takes %s (not %s)" % (
                ", ".join(BASELINE_ROWS), ", ".join(sorted(unknown))))
        from bench.baseline import run_baseline  # it builds on this module
        return run_baseline(a, [r for r in BASELINE_ROWS if not only or r in only])
    if pythons:
        if a.smoke:
            p.error("--pythons/--server-python/--client-python measure; not with --smoke")
        unknown = only - set(PYTHONS_ROWS)
        if unknown:
            p.error("--only with --pythons takes %s (not %s)" % (
                ", ".join(PYTHONS_ROWS), ", ".join(sorted(unknown))))
        from bench.runtimes import run_runtimes  # it builds on this module
        return run_runtimes(a, [r for r in PYTHONS_ROWS if not only or r in only])

    missing, optional, versions = check_prerequisites()
    if missing:
        sys.stderr.write("bench: missing prerequisites:\n  %s\n" % "\n  ".join(missing))
        return 2
    if optional:
        sys.stderr.write("bench: note, not installed (needed by later workloads): %s\n"
                         % "; ".join(optional))

    busy_before = busy_fraction() if not a.smoke else 0.0
    if busy_before > 0.15:
        sys.stderr.write("bench: warning: the CPUs are %.0f%% busy before the run started: "
                         "other work on the machine will skew the figures\n"
                         % (busy_before * 100))
    os.makedirs(a.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = os.path.join(a.out, "logs-" + stamp)
    os.makedirs(run_dir, exist_ok=True)
    started: List[Server] = []
    holders: List[IdleHolder] = []

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_signal)
    t_start = time.monotonic()
    results: List[Dict[str, Any]] = []
    memory: Dict[str, Any] = {}
    couchbase: Dict[str, Any] = {}
    ok = True
    try:
        wls = [w for w in workloads(a) if not only or w["id"] in only]
        need_items = any(w.get("items") for w in wls) or not only or "memory" in only
        need_main = any(not w.get("items") for w in wls)
        servers: Dict[str, Server] = {}

        def start(name: str, make: Any) -> None:
            s = make(name, run_dir)
            started.append(s)
            servers[name] = s
        if need_main or (a.smoke and need_items):
            start("txcb", txcb_server)
            start("memcached", memcached_server)
            if any(w["id"] == "floor" for w in wls):
                start("echo", echo_server)
        if need_items and a.smoke and need_main:  # figures do not matter: share them
            servers["txcb-items"] = servers["txcb"]
            servers["memcached-items"] = servers["memcached"]
        elif need_items:
            start("txcb-items", txcb_server)
            start("memcached-items", memcached_server)
        for s in started:
            s.wait_ready()
        jobbase = {"kind": "ops", "value_size": a.value_size, "duration": a.duration,
                   "warmup": a.warmup}
        job_timeout = a.warmup + a.duration + 120
        smoke_batch: List[Tuple[Dict[str, Any], int, bool]] = []

        def run_smoke_batch() -> None:
            """--smoke: every job in one client process, idle connections held throughout."""
            jobs, where = [], []
            for w, nkeys, rnd in smoke_batch:
                t_srv = servers["txcb-items" if w.get("items") else "txcb"]
                m_srv = servers["memcached-items" if w.get("items") else "memcached"]
                for i, (client, op, shape) in enumerate(w["jobs"]):
                    srv = (t_srv if client == "txcb" else servers["echo"]
                           if client in ("echo", "echo-tw") else m_srv)
                    jobs.append(dict(jobbase, client=client, op=op, port=srv.port,
                                     server_pid=srv.pid, nkeys=nkeys, random=rnd, **shape))
                    where.append((w, i))
            idle = max([w.get("idle", 0) for w, _n, _r in smoke_batch] + [0])
            held = []
            try:
                if idle:
                    for name, kind in (("txcb", "txcb"), ("memcached", "memcached")):
                        held.append(IdleHolder(servers[name], kind, idle))
                        holders.append(held[-1])
                out = run_worker_many(jobs, job_timeout * 4 + 60)
            finally:
                for h in held:
                    h.stop()
            by_workload: Dict[str, Dict[int, List[Dict[str, Any]]]] = {}
            for (w, i), r in zip(where, out):
                by_workload.setdefault(w["id"], {}).setdefault(i, []).append(r)
            for w, _n, _r in smoke_batch:
                report_workload(w, by_workload[w["id"]])

        def load(server: Server, kind: str, lo: int, hi: int) -> float:
            r = run_worker({"kind": "load", "server": kind, "port": server.port,
                            "value_size": a.value_size, "start": lo, "stop": hi},
                           timeout=600)
            if "fatal" in r:
                raise RuntimeError("loading %s failed: %s" % (server.name, r["fatal"]))
            return r["elapsed"]

        if need_main:
            load(servers["txcb"], "txcb", 0, a.keys)
            load(servers["memcached"], "memcached", 0, a.keys)

        def run_workload(w: Dict[str, Any], txcb_srv: Optional[Server],
                         mc_srv: Optional[Server], nkeys: int, rnd: bool) -> None:
            """Each job once per round, rounds interleaved; keep each job's median."""
            runs: Dict[int, List[Dict[str, Any]]] = {i: [] for i in range(len(w["jobs"]))}

            def one(i: int, client: str, op: str, shape: Dict[str, Any]) -> None:
                if client == "txcb":
                    srv, kind = txcb_srv, "txcb"
                elif client in ("echo", "echo-tw"):
                    srv, kind = servers["echo"], "echo"
                else:
                    srv, kind = mc_srv, "memcached"
                assert srv is not None
                job = dict(jobbase, client=client, op=op, port=srv.port,
                           server_pid=srv.pid, nkeys=nkeys, random=rnd, **shape)
                holder = None
                try:
                    if w.get("idle"):
                        holder = IdleHolder(srv, kind, w["idle"])
                        holders.append(holder)
                    r = run_worker(job, job_timeout)
                except (RuntimeError, subprocess.TimeoutExpired) as e:
                    r = {"fatal": str(e)}
                finally:
                    if holder is not None:
                        holder.stop()
                runs[i].append(r)

            if a.smoke:  # run later, all in one client process
                smoke_batch.append((w, nkeys, rnd))
                return
            for _round in range(a.rounds):
                for i, job in enumerate(w["jobs"]):
                    one(i, *job)
            report_workload(w, runs)

        def report_workload(w: Dict[str, Any], runs: Dict[int, List[Dict[str, Any]]]) -> None:
            nonlocal ok
            for i, (client, op, shape) in enumerate(w["jobs"]):
                r = _median_run(runs[i])
                r.update(workload=w["id"], title=w["title"], client=client,
                         label=CLIENTS[client], op=op, **shape)
                if "fatal" in r or r.get("errors"):
                    ok = False
                results.append(r)
                _print_row(r)

        print("txcb benchmark: %s s per job (+%s s warm-up) x %d interleaved rounds (median "
              "shown), %d-byte values, keys key:N" % (a.duration, a.warmup, a.rounds,
                                                       a.value_size))
        _print_header()

        def main_phase() -> None:
            for w in wls:
                if not w.get("items"):
                    run_workload(w, servers.get("txcb"), servers.get("memcached"), a.keys,
                                 False)

        def items_phase() -> None:
            t, m = servers["txcb-items"], servers["memcached-items"]
            want_small = any(w["id"] == "items_small" for w in wls)
            want_large = any(w["id"] == "items_large" for w in wls)
            load(t, "txcb", 0, a.small_items)
            load(m, "memcached", 0, a.small_items)
            base = {"txcb": rss_bytes(t.pid), "memcached": rss_bytes(m.pid)}
            for w in wls:
                if w["id"] == "items_small" and want_small:
                    run_workload(w, t, m, a.small_items, True)
            load_time = {"txcb": load(t, "txcb", a.small_items, a.items),
                         "memcached": load(m, "memcached", a.small_items, a.items)}
            n = a.items - a.small_items
            full = {"txcb": rss_bytes(t.pid), "memcached": rss_bytes(m.pid)}
            memory.update({
                "items": a.items,
                "rss_before": base, "rss_after": full,
                "bytes_per_item": {k: (full[k] - base[k]) / n for k in full},
                "load_seconds": load_time,
            })
            memory["ratio"] = (memory["bytes_per_item"]["txcb"]
                               / memory["bytes_per_item"]["memcached"])
            for w in wls:
                if w["id"] == "items_large" and want_large:
                    run_workload(w, t, m, a.items, True)

        main_phase()
        if need_items:
            items_phase()
        if smoke_batch:
            run_smoke_batch()
        if "couchbase" in only or not (only or a.smoke):  # bench/couchbase_bench.py
            from bench.couchbase_bench import harness_phase
            couchbase = harness_phase(a, run_dir)
            ok = ok and not any("fatal" in r or r.get("errors")
                                for r in couchbase.get("results", ()))
    except KeyboardInterrupt:
        sys.stderr.write("bench: interrupted\n")
        ok = False
    except Exception as e:  # noqa: BLE001 - reported; the servers still get stopped
        sys.stderr.write("bench: %s: %s\n" % (type(e).__name__, e))
        ok = False
    finally:
        for h in holders:
            h.stop()
        for s in started:
            s.stop()
        signal.signal(signal.SIGTERM, old_term)

    ratios = _ratios(results)
    targets = _targets(results, memory)
    print()
    _print_summary(results, ratios, memory, targets)
    report = {
        "meta": {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "host": platform.node(), "python": platform.python_version(),
            "platform": platform.platform(), "cpus": os.cpu_count(),
            "loadavg": os.getloadavg(), "versions": versions,
            "cpu_busy_before_run": busy_before,
            "args": {k: v for k, v in vars(a).items()},
            "txcb_ephemeral_flag": txcb_has_option("ephemeral"),
            "wall_seconds": time.monotonic() - t_start,
            "server_pids": {s.name: s.pid for s in started},
        },
        "results": results, "ratios": ratios, "memory": memory, "targets": targets,
        "couchbase": couchbase,
        "ok": ok,
    }
    path = os.path.join(a.out, "bench-%s.json" % stamp)
    with open(path, "w") as f:
        json.dump(report, f, indent=1, sort_keys=True)
    print("\nJSON: %s" % path)
    if not a.no_chart:
        png = _chart(report, path[:-5] + ".png")
        print("PNG:  %s" % png if png
              else "PNG:  skipped (pip install matplotlib for a chart)")
    print("server logs: %s" % run_dir)
    if not ok:
        sys.stderr.write("bench: some jobs failed (see 'fatal'/'errors' in the JSON)\n")
    return 0 if ok else 1


# -- reporting ------------------------------------------------------------------

_COLS = "%-12s %-40s %11s %9s %9s %9s %9s"


def _print_header() -> None:
    print(_COLS % ("workload", "client -> server", "ops/s", "cli us/op", "srv us/op",
                   "p50 us", "p99 us"))
    print("-" * 107)


def _f(v: Any, spec: str = "%.1f") -> str:
    return "-" if v is None else spec % v


def _print_row(r: Dict[str, Any]) -> None:
    if "fatal" in r:
        print(_COLS % (r["workload"], r.get("label", r.get("client")), "FAILED", "", "", "",
                       "") + "  " + r["fatal"][:200].replace("\n", " "))
        return
    line = _COLS % (r["workload"], r["label"], fmt_int(r["ops_per_s"]),
                    _f(r["client_us_per_op"]), _f(r["server_us_per_op"]), _f(r["p50_us"]),
                    _f(r["p99_us"]))
    if r.get("errors"):
        line += "  (%d errors: %s)" % (r["errors"], r.get("first_error"))
    print(line)
    sys.stdout.flush()


def _find(results: List[Dict[str, Any]], workload: str, client: str) -> Optional[float]:
    for r in results:
        if r["workload"] == workload and r["client"] == client and "fatal" not in r:
            return r["ops_per_s"]
    return None


def _median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The round with the median ops/s (its CPU and latency figures with it)."""
    bad = [r for r in runs if "fatal" in r or r.get("errors")]
    if bad:
        return dict(bad[0], rounds_ops_per_s=[r.get("ops_per_s") for r in runs])
    ordered = sorted(runs, key=lambda r: r["ops_per_s"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["rounds_ops_per_s"] = [r["ops_per_s"] for r in runs]
    return mid


def _ratios(results: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """txcb's ops/s over each anchor's in the same workload (and the floor's)."""
    out = []
    for r in results:
        if r["client"] == SUBJECT or "fatal" in r:
            continue
        mine = _find(results, r["workload"], SUBJECT)
        if mine is not None and r["ops_per_s"]:
            out.append({"workload": r["workload"], "anchor": r["client"],
                        "ratio": mine / r["ops_per_s"]})
    for w in ("get1", "set1"):
        mine = _find(results, w, SUBJECT)
        for floor in ("echo", "echo-tw"):
            f = _find(results, "floor", floor)
            if mine is not None and f:
                out.append({"workload": w, "anchor": floor, "ratio": mine / f})
    return out


def _targets(results: List[Dict[str, Any]], memory: Dict[str, Any]) -> List[Dict[str, Any]]:
    out = []
    for label, w, client, (dw, dclient), op, target in TARGETS:
        num, den = _find(results, w, client), _find(results, dw, dclient)
        ratio = num / den if num is not None and den else None
        out.append({"target": label, "op": op, "want": target, "ratio": ratio,
                    "met": None if ratio is None else ratio >= target})
    if memory:
        out.append({"target": "server RSS per item at %s items vs memcached"
                    % fmt_int(memory["items"]), "op": "<=", "want": 1.25,
                    "ratio": memory["ratio"], "met": memory["ratio"] <= 1.25})
    return out


def _print_summary(results: List[Dict[str, Any]], ratios: List[Dict[str, Any]],
                   memory: Dict[str, Any], targets: List[Dict[str, Any]]) -> None:
    if ratios:
        print("txcb ops/s over each anchor's, same workload, same run:")
        for w in dict.fromkeys(r["workload"] for r in ratios):
            parts = ["%.2fx %s" % (r["ratio"], CLIENTS[r["anchor"]].split(" ->")[0])
                     for r in ratios if r["workload"] == w]
            print("  %-12s %s" % (w, "; ".join(parts)))
        for w, other in (("idle", "conn10"), ("items_large", "items_small")):
            for c in (SUBJECT, "mcp"):
                x, y = _find(results, w, c), _find(results, other, c)
                if x and y:
                    print("  %-12s %.2fx of %s (%s)" % (w, x / y, other,
                                                        CLIENTS[c].split(" -> ")[1]))
    if memory:
        bpi = memory["bytes_per_item"]
        print("memory at %s items of %d bytes: txcb %.0f B/item, memcached %.0f B/item "
              "(%.2fx); RSS txcb %.0f MiB, memcached %.0f MiB" % (
                  fmt_int(memory["items"]), 100, bpi["txcb"], bpi["memcached"],
                  memory["ratio"], memory["rss_after"]["txcb"] / 2**20,
                  memory["rss_after"]["memcached"] / 2**20))
    if targets:
        print("\ntargets (txcb client + txcb server against the anchor, same run):")
        for t in targets:
            print("  %-55s %-8s %6s  %s" % (
                t["target"], "%s %.2fx" % (t["op"], t["want"]),
                "-" if t["ratio"] is None else "%.2fx" % t["ratio"],
                {True: "met", False: "MISSED", None: "not run"}[t["met"]]))


def _chart(report: Dict[str, Any], path: str) -> Optional[str]:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    targets = [t for t in report["targets"] if t["ratio"] is not None]
    if not targets:
        return None
    fig, ax = plt.subplots(figsize=(10, 0.5 * len(targets) + 1.5))
    names = [t["target"] for t in targets]
    vals = [t["ratio"] for t in targets]
    colours = ["tab:green" if t["met"] else "tab:red" for t in targets]
    ys = list(range(len(targets)))
    ax.barh(ys, vals, color=colours)
    for y, t in zip(ys, targets):
        ax.plot([t["want"], t["want"]], [y - 0.4, y + 0.4], color="black")
    ax.set_yticks(ys)
    ax.set_yticklabels(names, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("ratio (black line: target)")
    ax.set_title("txcb vs anchors, %s" % report["meta"]["time"])
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":
    sys.exit(main())
