"""
A/B mode of the benchmark: ``python -m bench --baseline DIR`` measures the
txcb source tree in DIR and this one in the same run (``--help`` says what
the rows are).

Each side runs entirely from its own tree: its servers are ``twistd txcb``
with PYTHONPATH=that tree (and that tree's twistd plugin), its client
processes are :mod:`bench.worker` on the same PYTHONPATH, so they use that
tree's client code.  Servers, ports, client processes, rounds and medians are
:mod:`bench.run`'s; memcaslap is run by :mod:`bench.memcaslap_bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

from bench import memcaslap_bench
from bench.run import (BASELINE_ROWS, ROOT, Server, _median_run, busy_fraction, free_port,
                       run_worker, twistd_in, workloads)

TITLES = {
    "get1": "netstring get, one at a time",
    "set1": "netstring upsert, one at a time",
    "get100": "netstring get, 100 in flight",
    "set100": "netstring upsert, 100 in flight",
    "getmulti": "netstring get_multi of 100 (ops = keys)",
    "memcaslap": "memcaslap 90/10, 100 B, -c 32 (ascii)",
    "persist1": "persist_to=1 upserts, 100 in flight",
}
WITHIN = 0.95  # current / baseline at or above this is "ok"
NKEYS = 1000


class Side:
    """One tree's servers: the memory bucket (netstring + memcached) and a persistent one."""

    def __init__(self, name: str, root: str, workdir: str, log_dir: str,
                 python: Optional[str] = None) -> None:
        self.name = name
        self.root = root
        self.python = python  # the servers' interpreter (default: this one)
        self.workdir = workdir
        self.log_dir = log_dir
        self.servers: Dict[str, Server] = {}
        self.mc_port = 0

    def start(self, rows: List[str]) -> None:
        if set(rows) - {"memcaslap", "persist1"}:
            self._server("ephemeral", ["--ephemeral"])
        if "memcaslap" in rows:
            self.mc_port = free_port()
            self._server("memcached", ["--ephemeral", "--memcached",
                                       "tcp:%d:interface=127.0.0.1" % self.mc_port])
        if "persist1" in rows:
            data = os.path.join(self.workdir, self.name + "-data")
            self._server("persistent", ["--data-dir", data])

    def _server(self, kind: str, args: List[str]) -> None:
        port = free_port()
        log = os.path.join(self.log_dir, "%s-%s" % (self.name, kind))
        argv = twistd_in(self.root, self.python) + [
            "-n", "--pidfile=", "--logfile", log + ".twistd", "txcb",
            "-p", "tcp:%d:interface=127.0.0.1" % port]
        self.servers[kind] = Server("%s-%s" % (self.name, kind), argv + args, port,
                                    log + ".log", root=self.root, cwd=self.workdir)

    def wait_ready(self) -> None:
        for s in self.servers.values():
            s.wait_ready()
        if self.mc_port:
            memcaslap_bench.wait_port(self.mc_port, self.servers["memcached"].proc)

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()

    def worker(self, job: Dict[str, Any], timeout: float,
               python: Optional[str] = None) -> Dict[str, Any]:
        """Run a job in a client process on this tree's txcb (and check it was)."""
        r = run_worker(job, timeout, root=self.root, cwd=self.workdir, python=python)
        want = os.path.join(os.path.realpath(self.root), "txcb")
        if "fatal" not in r and r.get("txcb_from") != want:
            r = {"fatal": "the client ran txcb from %s, not %s" % (r.get("txcb_from"), want)}
        return r


def _jobs(a: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """The netstring rows: the txcb jobs of bench.run's workloads of the same ids."""
    out = {}
    for w in workloads(a):
        for client, op, shape in w["jobs"]:
            if client == "txcb" and w["id"] in TITLES:
                out[w["id"]] = dict(op=op, **shape)
    out["persist1"] = dict(op="set", depth=a.inflight, conns=1, multi=0, persist_to=1)
    return out


def _measure(side: Side, row: str, a: argparse.Namespace,
             jobs: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """One run of one row on one side."""
    if row == "memcaslap":
        srv = side.servers["memcached"]
        opts = argparse.Namespace(time=max(1, int(round(a.duration))), threads=1,
                                  concurrency=32, window="1k", binary=False)
        try:
            r = memcaslap_bench.memcaslap(side.mc_port, opts, side.workdir, [srv.pid])
        except Exception as e:  # noqa: BLE001 - reported in the table
            return {"fatal": str(e)}
        return {"ops_per_s": float(r["tps"]), "errors": 0,
                "server_us_per_op": r["server_cpu"] * 1e6 / r["tps"] if r["tps"] else None}
    srv = side.servers["persistent" if row == "persist1" else "ephemeral"]
    job = dict(jobs[row], kind="ops", client="txcb", port=srv.port, server_pid=srv.pid,
               nkeys=NKEYS, random=False, value_size=a.value_size, duration=a.duration,
               warmup=a.warmup)
    try:
        return side.worker(job, a.warmup + a.duration + 120)
    except Exception as e:  # noqa: BLE001 - reported in the table
        return {"fatal": str(e)}


def _load(side: Side, a: argparse.Namespace) -> None:
    srv = side.servers.get("ephemeral")
    if srv is None:
        return
    r = side.worker({"kind": "load", "server": "txcb", "port": srv.port,
                     "value_size": a.value_size, "start": 0, "stop": NKEYS}, 600)
    if "fatal" in r:
        raise RuntimeError("loading %s failed: %s" % (srv.name, r["fatal"]))


def compare(rows: List[str], sides: List[Side], a: argparse.Namespace) -> List[Dict[str, Any]]:
    """Every row on both sides each round, the sides' order alternating; medians compared."""
    jobs = _jobs(a)
    runs: Dict[str, Dict[str, List[Dict[str, Any]]]] = {
        row: {s.name: [] for s in sides} for row in rows}
    for rnd in range(a.rounds):
        for row in rows:
            for side in (sides if rnd % 2 == 0 else sides[::-1]):
                r = _measure(side, row, a, jobs)
                runs[row][side.name].append(r)
                print("  round %d  %-9s %-8s %s" % (
                    rnd + 1, row, side.name, r.get("fatal") or "%.0f ops/s" % r["ops_per_s"]),
                    flush=True)
    table = []
    for row in rows:
        base, cur = (_median_run(runs[row][s.name]) for s in sides)
        entry: Dict[str, Any] = {"row": row, "title": TITLES[row], "baseline": base,
                                 "current": cur, "ratio": None, "ok": False}
        if not _failed(base) and not _failed(cur) and base["ops_per_s"]:
            entry["ratio"] = cur["ops_per_s"] / base["ops_per_s"]
            entry["ok"] = entry["ratio"] >= WITHIN
        table.append(entry)
    return table


def _failed(r: Dict[str, Any]) -> bool:
    return "fatal" in r or bool(r.get("errors"))


_COLS = "%-10s %-40s %11s %11s %7s  %-9s %8s %8s"


def print_table(table: List[Dict[str, Any]]) -> None:
    print(_COLS % ("row", "", "baseline", "current", "ratio", "within 5%", "base srv",
                   "cur srv"))
    print(_COLS % ("", "", "ops/s", "ops/s", "cur/base", "", "us/op", "us/op"))
    print("-" * 113)
    for e in table:
        b, c = e["baseline"], e["current"]
        print(_COLS % (e["row"], e["title"], _ops(b), _ops(c),
                       "-" if e["ratio"] is None else "%.3f" % e["ratio"],
                       "FAILED" if e["ratio"] is None else "ok" if e["ok"] else "NO",
                       _us(b), _us(c)))
    for e in table:
        for name in ("baseline", "current"):
            if _failed(e[name]):
                print("%s %s: %s" % (e["row"], name, (e[name].get("fatal") or e[name].get(
                    "first_error") or "errors")[:300].replace("\n", " ")))


def _ops(r: Dict[str, Any]) -> str:
    return "-" if _failed(r) else "{:,}".format(int(round(r["ops_per_s"])))


def _us(r: Dict[str, Any]) -> str:
    v = None if _failed(r) else r.get("server_us_per_op")
    return "-" if v is None else "%.1f" % v


def _check_tree(root: str) -> Optional[str]:
    for part in (("txcb", "__init__.py"), ("twisted", "plugins", "txcb_plugin.py")):
        if not os.path.isfile(os.path.join(root, *part)):
            return "--baseline: %s has no %s" % (root, os.path.join(*part))
    return None


def run_baseline(a: argparse.Namespace, rows: List[str]) -> int:
    """``python -m bench --baseline DIR``: the A/B table; 0 ok, 1 a failure, 3 slower."""
    base_root = os.path.abspath(a.baseline)
    problem = _check_tree(base_root)
    if problem is None and "memcaslap" in rows and not shutil.which("memcaslap"):
        problem = "bench: memcaslap is not installed (Debian: apt-get install " \
                  "libmemcached-tools); leave it out with --only"
    if problem:
        print(problem, file=sys.stderr)
        return 2
    busy = busy_fraction()
    os.makedirs(a.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = os.path.join(a.out, "logs-baseline-" + stamp)
    os.makedirs(log_dir, exist_ok=True)
    workdir = tempfile.mkdtemp(prefix="txcb-bench-baseline-")
    sides = [Side("baseline", base_root, workdir, log_dir),
             Side("current", ROOT, workdir, log_dir)]

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_signal)
    print("txcb A/B: baseline %s vs current %s; %s s per job (+%s s warm-up) x %d "
          "interleaved rounds (median), %d-byte values; CPUs %.0f%% busy before the run"
          % (base_root, ROOT, a.duration, a.warmup, a.rounds, a.value_size, busy * 100),
          flush=True)
    table: List[Dict[str, Any]] = []
    code = 0
    try:
        for side in sides:
            side.start(rows)
        for side in sides:
            side.wait_ready()
            _load(side, a)
        table = compare(rows, sides, a)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        code = 1
    except Exception as e:  # noqa: BLE001 - reported; the servers still get stopped
        print("bench: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        code = 1
    finally:
        for side in sides:
            side.stop()
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print_table(table)
    if code == 0 and any(e["ratio"] is None for e in table):
        code = 1
    elif code == 0 and not all(e["ok"] for e in table):
        code = 3
    path = os.path.join(a.out, "bench-baseline-%s.json" % stamp)
    with open(path, "w") as f:
        json.dump({"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "host": platform.node(), "cpus": os.cpu_count(),
                            "loadavg": os.getloadavg(), "cpu_busy_before_run": busy,
                            "baseline": base_root, "current": ROOT,
                            "args": {k: v for k, v in vars(a).items()},
                            "server_pids": {s.name: s.pid for side in sides
                                            for s in side.servers.values()}},
                   "rows": table, "exit": code}, f, indent=1, sort_keys=True)
    print("\nJSON: %s\nserver logs: %s" % (path, log_dir))
    return code
