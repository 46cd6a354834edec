"""
memcaslap against txcb's memcached endpoint and, in the same run, against
nutcracker (twemproxy) in front of a real memcached.  A benchmark, not a test.

    python bench/memcaslap_bench.py [--time 10] [--rounds 3] [--concurrency 32]
                                    [--threads 1] [--window 1k] [--direct]
                                    [--binary] [--baseline DIR] [--json out.json]

The workload is memcaslap's 90% get / 10% set of 100-byte values (32-byte
keys).  memcaslap sets every key of its window once before the mix starts,
so the window is kept small (``-w 1k``) for the mix, not the fill, to be what
is measured.  ``--direct`` adds memcached without the proxy, for reference;
``--binary`` runs memcaslap's binary protocol, which nutcracker does not
speak, so txcb is then compared with memcached itself.  ``--baseline DIR``
also measures the txcb of another checkout (say ``git worktree add DIR
HEAD~1``), in the same rounds, to compare two versions under the same load.

Every server starts on a free loopback port and every process started here is
stopped by its pid, also on Ctrl-C.  With ``--rounds N`` the targets are
measured alternately N times and the best of each is reported, with the
servers' CPU use (the machine may be shared: ratios measured back to back are
what to compare).  Needs the Debian packages memcached, libmemcached-tools
(memcaslap) and nutcracker; txcb runs from this checkout (PYTHONPATH), on the
memory bucket (``--ephemeral``) when that option exists.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.run import free_port  # noqa: E402  (after the path set-up)

CONFIG = """\
key
32 32 1
value
100 100 1
cmd
0 0.1
1 0.9
"""

NUTCRACKER_CONF = """\
bench:
  listen: 127.0.0.1:{port}
  hash: fnv1a_64
  distribution: ketama
  timeout: 2000
  backlog: 1024
  preconnect: true
  auto_eject_hosts: false
  servers:
   - 127.0.0.1:{backend}:1
"""


def wait_port(port: int, proc: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc.poll() is not None:
            raise RuntimeError("process exited with %s before listening" % proc.returncode)
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError("nothing listening on port %d after %.0fs" % (port, timeout))


class Processes:
    """Every process started here, stopped by pid (SIGTERM, then SIGKILL)."""

    def __init__(self) -> None:
        self.procs: List[subprocess.Popen] = []

    def start(self, argv: List[str], log: str, **kw: Any) -> subprocess.Popen:
        out = open(log, "wb")
        proc = subprocess.Popen(argv, stdout=out, stderr=subprocess.STDOUT, **kw)
        out.close()
        self.procs.append(proc)
        return proc

    def stop_all(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(5)
        self.procs = []


def has_txcb_option(name: str, root: str = ROOT) -> bool:
    """Whether the txcb plugin of the checkout at ``root`` has an option."""
    code = "import sys; from txcb import tap; sys.exit(%r not in str(tap.Options()))" % (name,)
    return subprocess.run([sys.executable, "-c", code], cwd=root,
                          env=dict(os.environ, PYTHONPATH=root)).returncode == 0


def start_txcb(procs: Processes, workdir: str, root: str = ROOT) -> int:
    """twistd txcb --memcached from the checkout at ``root`` on a free port."""
    port = free_port()
    log = os.path.join(workdir, "txcb-%d" % port)
    argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
            "-n", "--pidfile=", "--logfile", log + ".log", "txcb",
            "--port", "tcp:0:interface=127.0.0.1",
            "--memcached", "tcp:%d:interface=127.0.0.1" % port]
    if has_txcb_option("--ephemeral", root):
        argv.append("--ephemeral")
    env = dict(os.environ, PYTHONPATH=root)
    proc = procs.start(argv, log + ".out", cwd=workdir, env=env)
    wait_port(port, proc)
    return port


def start_memcached(procs: Processes, workdir: str) -> int:
    """A real memcached on a free port; returns the port."""
    port = free_port()
    argv = ["memcached", "-l", "127.0.0.1", "-p", str(port), "-U", "0", "-m", "1024",
            "-c", "4096"]
    if os.getuid() == 0:
        argv += ["-u", "root"]  # memcached refuses to run as root without -u
    proc = procs.start(argv, os.path.join(workdir, "memcached-%d.log" % port))
    wait_port(port, proc)
    return port


def start_nutcracker_chain(procs: Processes, workdir: str) -> int:
    """memcached behind nutcracker, on free ports; returns nutcracker's."""
    backend = start_memcached(procs, workdir)
    port = free_port()
    conf = os.path.join(workdir, "nutcracker.yml")
    with open(conf, "w") as f:
        f.write(NUTCRACKER_CONF.format(port=port, backend=backend))
    argv = ["nutcracker", "-c", conf, "-s", str(free_port()), "-a", "127.0.0.1",
            "-p", os.path.join(workdir, "nutcracker.pid"),
            "-o", os.path.join(workdir, "nutcracker.log")]
    proc = procs.start(argv, os.path.join(workdir, "nutcracker.out"))
    wait_port(port, proc)
    return port


_TPS = re.compile(r"TPS:\s*(\d+)")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux /proc)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def memcaslap(port: int, args: argparse.Namespace, workdir: str,
              pids: List[int]) -> Dict[str, Any]:
    cfg = os.path.join(workdir, "memcaslap.cfg")
    with open(cfg, "w") as f:
        f.write(CONFIG)
    argv = [shutil.which("memcaslap") or "memcaslap", "-s", "127.0.0.1:%d" % port,
            "-F", cfg, "-t", "%ds" % args.time, "-T", str(args.threads),
            "-c", str(args.concurrency), "-w", args.window]
    if args.binary:
        argv.append("-B")
    cpu0 = sum(cpu_seconds(pid) for pid in pids)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=args.time + 60)
    cpu = sum(cpu_seconds(pid) for pid in pids) - cpu0
    text = out.stdout + out.stderr
    tps = [int(m) for m in _TPS.findall(text)]
    if out.returncode != 0 or not tps:
        raise RuntimeError("memcaslap failed (%s):\n%s" % (out.returncode, text[-2000:]))
    # The last "Run time ... TPS:" line is the whole run's.
    return {"tps": tps[-1], "argv": argv, "output": text,
            "server_cpu": cpu / args.time}


TXCB = "txcb --memcached"
BASELINE = "txcb baseline"
CHAIN = "nutcracker -> memcached"
DIRECT = "memcached (direct)"


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--time", type=int, default=10, help="seconds per measurement")
    p.add_argument("--concurrency", type=int, default=32,
                   help="memcaslap -c (simulated clients)")
    p.add_argument("--threads", type=int, default=1, help="memcaslap -T")
    p.add_argument("--window", default="1k",
                   help="memcaslap -w: keys per simulated client.  Every key is set "
                   "once before the 90/10 mix starts, so a small window makes the "
                   "mix, not the initial fill, what is measured")
    p.add_argument("--binary", action="store_true",
                   help="memcaslap -B (binary protocol).  nutcracker speaks only "
                   "ASCII, so txcb is then compared with memcached itself")
    p.add_argument("--direct", action="store_true",
                   help="also measure memcached without the proxy, for reference")
    p.add_argument("--rounds", type=int, default=1,
                   help="alternate the targets this many times; report the best of each")
    p.add_argument("--baseline", metavar="DIR",
                   help="also measure the txcb of the checkout in DIR (another version)")
    p.add_argument("--json", help="also write the results here")
    p.add_argument("--keep-logs", action="store_true",
                   help="keep the servers' logs and configs (their directory is printed)")
    args = p.parse_args(argv)

    missing = [t for t in ("memcaslap", "memcached", "nutcracker") if shutil.which(t) is None]
    if missing:
        print("missing: %s (Debian: apt-get install libmemcached-tools memcached "
              "nutcracker)" % ", ".join(missing), file=sys.stderr)
        return 2

    procs = Processes()

    def on_signal(signum: int, _frame: Any) -> None:
        procs.stop_all()
        sys.exit(128 + signum)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)

    workdir = tempfile.mkdtemp(prefix="txcb-memcaslap-")
    starters: List[Tuple[str, Any]] = [(TXCB, start_txcb)]
    if args.baseline:
        baseline = os.path.abspath(args.baseline)
        if not os.path.isdir(os.path.join(baseline, "txcb")):
            print("--baseline: no txcb package in %s" % (baseline,), file=sys.stderr)
            return 2
        starters.append((BASELINE, lambda procs, workdir: start_txcb(procs, workdir,
                                                                     baseline)))
    if not args.binary:
        starters.append((CHAIN, start_nutcracker_chain))
    if args.binary or args.direct:
        starters.append((DIRECT, start_memcached))
    results: Dict[str, List[int]] = {name: [] for name, _ in starters}
    cpu: Dict[str, List[float]] = {name: [] for name, _ in starters}
    try:
        targets = {}
        for name, start in starters:
            n = len(procs.procs)
            port = start(procs, workdir)
            targets[name] = (port, [pr.pid for pr in procs.procs[n:]])
        for rnd in range(args.rounds):
            for name, (port, pids) in targets.items():
                r = memcaslap(port, args, workdir, pids)
                results[name].append(r["tps"])
                cpu[name].append(r["server_cpu"])
                print("round %d  %-24s %8d ops/s  (server CPU %3.0f%% of a core)"
                      % (rnd + 1, name, r["tps"], 100 * r["server_cpu"]), flush=True)
    finally:
        procs.stop_all()
        if args.keep_logs:
            print("logs and configs kept in %s" % (workdir,))
        else:
            shutil.rmtree(workdir, ignore_errors=True)

    best = {name: max(v) for name, v in results.items()}
    reference = DIRECT if args.binary else CHAIN
    ratio = best[TXCB] / best[reference]
    proto = "binary" if args.binary else "ascii"
    print()
    print("memcaslap 90/10 get/set, 100-byte values, %s protocol, -c %d -T %d -w %s, "
          "%ds x %d (best)" % (proto, args.concurrency, args.threads, args.window,
                              args.time, args.rounds))
    for name in results:
        print("  %-26s %8d ops/s" % (name, best[name]))
    print("  ratio txcb / %-13s %8.2f" % (reference, ratio))
    if args.baseline:
        print("  ratio baseline / %-9s %8.2f   (txcb / baseline %.2f)"
              % (reference, best[BASELINE] / best[reference], best[TXCB] / best[BASELINE]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"protocol": proto, "time": args.time, "concurrency": args.concurrency,
                       "threads": args.threads, "window": args.window, "rounds": results,
                       "best": best, "server_cpu": cpu, "reference": reference,
                       "ratio": ratio, "baseline": args.baseline}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
