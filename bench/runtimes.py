"""
Interpreter mode of the benchmark: ``python -m bench --pythons
cpython=/usr/bin/python3,pypy=/tmp/pypyenv/bin/python`` (or
``--server-python`` and ``--client-python``) measures issue 16's rows with
the txcb servers and the client processes on the interpreters given, side by
side in one run (``--help`` says what the rows are).

A row is (workload, client, server interpreter, client interpreter); "-"
stands for a process that is not Python (memcached, nutcracker, memcaslap).
Each interpreter runs this tree's txcb: servers are ``twistd txcb`` with
PYTHONPATH=this tree and this tree's plugin first on the plugin path, clients
are :mod:`bench.worker` on the same PYTHONPATH, and both are checked (an
installed, non-editable txcb in a venv would otherwise win).  Servers, ports,
client processes and medians are :mod:`bench.run`'s and
:mod:`bench.baseline`'s; memcaslap is run by :mod:`bench.memcaslap_bench`.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Tuple

from bench import memcaslap_bench
from bench.baseline import Side
from bench.run import (ROOT, Server, _median_run, busy_fraction, child_env, fmt_int,
                       free_port, memcached_server, rss_bytes, run_worker, twistd_in)

NKEYS = 1000
NONE = "-"


class Interp(NamedTuple):
    """An interpreter given on the command line, and what it says it is."""

    name: str
    path: str
    impl: str  # platform.python_implementation(): "CPython", "PyPy"
    version: str


_PROBE = ("import platform, sys; v = getattr(sys, 'pypy_version_info', None); "
          "print(platform.python_implementation()); print(platform.python_version() + "
          "(' (PyPy %d.%d.%d)' % tuple(v[:3]) if v else ''))")


def probe(name: Optional[str], path: str) -> Interp:
    """Ask ``path`` what it is; a one-line error if it cannot be run."""
    exe = shutil.which(path) or path
    try:
        out = subprocess.run([exe, "-c", _PROBE], capture_output=True, text=True, timeout=60)
    except OSError as e:
        raise ValueError("cannot run %s: %s" % (path, e.strerror))
    if out.returncode != 0:
        raise ValueError("%s -c ... exited %s: %s" % (path, out.returncode,
                                                      out.stderr.strip()[-300:]))
    impl, version = out.stdout.strip().splitlines()[:2]
    return Interp(name or impl.lower(), exe, impl, version)


def _specs(values: List[str]) -> List[Tuple[Optional[str], str]]:
    """``NAME=PATH`` or ``PATH`` items, comma-separated, from repeated options."""
    out: List[Tuple[Optional[str], str]] = []
    for value in values:
        for item in filter(None, (v.strip() for v in value.split(","))):
            name, sep, path = item.partition("=")
            out.append((name, path) if sep else (None, item))
    return out


class Interpreters:
    """The interpreters of a run by name, each probed once."""

    def __init__(self) -> None:
        self.by_name: Dict[str, Interp] = {}

    def get(self, name: Optional[str], path: str) -> Interp:
        for it in self.by_name.values():
            if (name is None or name == it.name) and (shutil.which(path) or path) == it.path:
                return it
        it = probe(name, path)
        if name is None and it.name in self.by_name:
            n = 2
            while "%s%d" % (it.name, n) in self.by_name:
                n += 1
            it = it._replace(name="%s%d" % (it.name, n))
        if it.name in self.by_name:
            raise ValueError("two interpreters named %s: %s and %s" % (
                it.name, self.by_name[it.name].path, it.path))
        self.by_name[it.name] = it
        return it


def parse_pythons(a: argparse.Namespace) -> List[Tuple[Interp, Interp]]:
    """
    The (server, client) interpreter pairs of the run: each ``--pythons``
    interpreter with itself, and every ``--server-python`` with every
    ``--client-python`` (the one not given is this interpreter).
    """
    known = Interpreters()
    pairs: List[Tuple[Interp, Interp]] = []
    for name, path in _specs(a.pythons):
        it = known.get(name, path)
        pairs.append((it, it))
    if a.server_python or a.client_python:
        here = [(None, sys.executable)]
        servers = [known.get(n, p) for n, p in _specs(a.server_python) or here]
        clients = [known.get(n, p) for n, p in _specs(a.client_python) or here]
        pairs += [(s, c) for s in servers for c in clients]
    return list(dict.fromkeys(pairs))


# -- rows -------------------------------------------------------------------------

NETSTRING = {  # workload: (title, op, depth)
    "get1": ("netstring get, one at a time", "get", 1),
    "set1": ("netstring upsert, one at a time", "set", 1),
    "get100": ("netstring get, 100 in flight", "get", 100),
    "set100": ("netstring upsert, 100 in flight", "set", 100),
    "persist": ("upsert, 100 in flight, persistent bucket", "set", 100),
    "persist_to1": ("upsert persist_to=1, 100 in flight, persistent", "set", 100),
}
LABELS = {
    ("memcaslap", "txcb"): "memcaslap -> txcb --memcached",
    ("memcaslap", "nutcracker"): "memcaslap -> nutcracker -> memcached",
    ("memcaslap", "direct"): "memcaslap -> memcached",
    ("net", "txcb"): "txcb RemoteBucket -> txcb server",
    ("net", "mcp"): "MemCacheProtocol -> memcached",
    ("persist", "txcb"): "txcb RemoteBucket -> txcb persistent",
}


def _row(workload: str, client: str, server: Optional[Interp],
         cli: Optional[Interp]) -> Dict[str, Any]:
    kind = ("memcaslap" if workload == "memcaslap" else
            "persist" if workload.startswith("persist") else "net")
    return {"workload": workload, "client": client, "label": LABELS[kind, client],
            "title": NETSTRING.get(workload, ("memcaslap 90/10, 100 B, -c 32",))[0],
            "server_python": server.name if server else NONE,
            "client_python": cli.name if cli else NONE}


def plan_rows(pairs: List[Tuple[Interp, Interp]], want: List[str]) -> List[Dict[str, Any]]:
    """Every row of the run, grouped by workload, anchors after the subjects."""
    servers = list(dict.fromkeys(s for s, _c in pairs))
    clients = list(dict.fromkeys(c for _s, c in pairs))
    rows = []
    if "memcaslap" in want:
        rows += [_row("memcaslap", "txcb", s, None) for s in servers]
        rows += [_row("memcaslap", "nutcracker", None, None),
                 _row("memcaslap", "direct", None, None)]
    net: List[str] = [w for w in ("get1", "set1", "get100", "set100") if w in want]
    if "persist" in want and "set100" not in net:
        net.append("set100")  # the ephemeral figure persistent upserts are compared with
    for w in net:
        rows += [_row(w, "txcb", s, c) for s, c in pairs]
        rows += [_row(w, "mcp", None, c) for c in clients]
    if "persist" in want:
        for w in ("persist", "persist_to1"):
            rows += [_row(w, "txcb", s, c) for s, c in pairs]
    return rows


# -- the run ----------------------------------------------------------------------

class Run:
    """The servers of one interpreter-mode run, and how to measure each row."""

    def __init__(self, a: argparse.Namespace, known: Dict[str, Interp], workdir: str,
                 log_dir: str) -> None:
        self.a = a
        self.known = known
        self.workdir = workdir
        self.log_dir = log_dir
        self.sides: Dict[str, Side] = {}
        self.memcached: Optional[Server] = None
        self.anchors = memcaslap_bench.Processes()
        self.anchor_ports: Dict[str, Tuple[int, List[int]]] = {}
        self.started: List[Server] = []

    def start(self, rows: List[Dict[str, Any]]) -> None:
        kinds: Dict[str, set] = {}
        for r in rows:
            if r["client"] == "txcb":
                kind = {"memcaslap": "memcaslap", "persist": "persist1",
                        "persist_to1": "persist1"}.get(r["workload"], "get1")
                kinds.setdefault(r["server_python"], set()).add(kind)
        for name, want in kinds.items():
            side = Side(name, ROOT, self.workdir, self.log_dir, python=self.known[name].path)
            self.sides[name] = side
            side.start(sorted(want))
            self.started += list(side.servers.values())
        if any(r["client"] == "mcp" for r in rows):
            self.memcached = memcached_server("memcached", self.log_dir)
            self.started.append(self.memcached)
        for anchor, start in (("nutcracker", memcaslap_bench.start_nutcracker_chain),
                              ("direct", memcaslap_bench.start_memcached)):
            if any(r["client"] == anchor for r in rows):
                n = len(self.anchors.procs)
                port = start(self.anchors, self.workdir)
                self.anchor_ports[anchor] = (port, [p.pid for p in self.anchors.procs[n:]])
        for side in self.sides.values():
            side.wait_ready()
        if self.memcached is not None:
            self.memcached.wait_ready()
        self._load()

    def _load(self) -> None:
        """Keys key:0 .. key:999 in every server the gets read."""
        targets = [(s.servers["ephemeral"], "txcb") for s in self.sides.values()
                   if "ephemeral" in s.servers]
        if self.memcached is not None:
            targets.append((self.memcached, "memcached"))
        for srv, kind in targets:
            r = load(srv, kind, 0, NKEYS, self.a.value_size, self.workdir)
            if "fatal" in r:
                raise RuntimeError("loading %s failed: %s" % (srv.name, r["fatal"]))

    def stop(self) -> None:
        for s in self.started:
            s.stop()
        self.anchors.stop_all()

    def measure(self, row: Dict[str, Any], warm: bool = False) -> Dict[str, Any]:
        try:
            if row["workload"] == "memcaslap":
                return self._memcaslap(row, warm)
            return self._ops(row)
        except Exception as e:  # noqa: BLE001 - reported in the table
            return {"fatal": "%s: %s" % (type(e).__name__, e)}

    def _memcaslap(self, row: Dict[str, Any], warm: bool) -> Dict[str, Any]:
        if row["client"] == "txcb":
            side = self.sides[row["server_python"]]
            port, pids = side.mc_port, [side.servers["memcached"].pid]
        else:
            port, pids = self.anchor_ports[row["client"]]
        # memcaslap sets its whole window before the 90/10 mix: twice the job's time
        secs = max(1, int(round(self.a.warmup if warm else 2 * self.a.duration)))
        opts = argparse.Namespace(time=secs, threads=1, concurrency=32, window="1k",
                                  binary=False)
        r = memcaslap_bench.memcaslap(port, opts, self.workdir, pids)
        return {"ops_per_s": float(r["tps"]), "errors": 0, "client_us_per_op": None,
                "server_us_per_op": r["server_cpu"] * 1e6 / r["tps"] if r["tps"] else None,
                "p50_us": None, "p99_us": None}

    def _ops(self, row: Dict[str, Any]) -> Dict[str, Any]:
        _title, op, depth = NETSTRING[row["workload"]]
        if row["client"] == "mcp":
            assert self.memcached is not None
            srv = self.memcached
        else:
            side = self.sides[row["server_python"]]
            srv = side.servers["persistent" if row["workload"].startswith("persist")
                               else "ephemeral"]
        job = {"kind": "ops", "client": row["client"], "op": op, "depth": depth, "conns": 1,
               "multi": 0, "port": srv.port, "server_pid": srv.pid, "nkeys": NKEYS,
               "random": False, "value_size": self.a.value_size,
               "duration": self.a.duration, "warmup": self.a.warmup}
        if row["workload"] == "persist_to1":
            job["persist_to"] = 1
        python = self.known[row["client_python"]].path
        timeout = self.a.warmup + self.a.duration + 120
        if row["client"] == "txcb":  # the side checks the client ran this tree's txcb
            return next(iter(self.sides.values())).worker(job, timeout, python=python)
        return run_worker(job, timeout, root=ROOT, cwd=self.workdir, python=python)


def load(srv: Server, kind: str, lo: int, hi: int, value_size: int,
         cwd: str) -> Dict[str, Any]:
    """Store key:lo .. key:hi-1 in a server (a raw pipelined connection from this interpreter)."""
    return run_worker({"kind": "load", "server": kind, "port": srv.port,
                       "value_size": value_size, "start": lo, "stop": hi}, 600, root=ROOT,
                      cwd=cwd)


def measure_rounds(run: Run, rows: List[Dict[str, Any]], rounds: int,
                   show: Callable[[Dict[str, Any]], None]) -> List[Dict[str, Any]]:
    """Each workload's rows back to back every round (order alternating); medians kept."""
    runs: List[List[Dict[str, Any]]] = [[] for _ in rows]
    for row in rows:  # warm the JIT: memcaslap has no warm-up of its own
        if row["workload"] == "memcaslap" and row["client"] == "txcb" and run.a.warmup >= 0.5:
            run.measure(row, warm=True)
    order = list(range(len(rows)))
    for rnd in range(rounds):
        groups: Dict[str, List[int]] = {}
        for i in order:
            groups.setdefault(rows[i]["workload"], []).append(i)
        for idx in groups.values():
            for i in (idx if rnd % 2 == 0 else idx[::-1]):
                r = run.measure(rows[i])
                runs[i].append(r)
                sys.stderr.write("  round %d  %-11s %-11s %s/%s  %s\n" % (
                    rnd + 1, rows[i]["workload"], rows[i]["client"],
                    rows[i]["server_python"], rows[i]["client_python"],
                    "failed" if "fatal" in r else fmt_int(r["ops_per_s"]) + " ops/s"))
    out = []
    for row, rs in zip(rows, runs):
        r = dict(_median_run(rs), **row)
        out.append(r)
        show(r)
    return out


def measure_memory(a: argparse.Namespace, servers: List[Interp], workdir: str,
                   log_dir: str) -> List[Dict[str, Any]]:
    """RSS per item, one server at a time: each txcb --ephemeral, then memcached."""
    out = []
    for it in servers + [None]:
        name = "memory-%s" % (it.name if it else "memcached")
        if it is None:
            srv = memcached_server(name, log_dir)
        else:
            port = free_port()
            log = os.path.join(log_dir, name)
            srv = Server(name, twistd_in(ROOT, it.path) + [
                "-n", "--pidfile=", "--logfile", log + ".twistd", "txcb",
                "-p", "tcp:%d:interface=127.0.0.1" % port, "--ephemeral"],
                port, log + ".log", root=ROOT, cwd=workdir)
        kind = "memcached" if it is None else "txcb"
        entry: Dict[str, Any] = {"server_python": it.name if it else NONE,
                                 "server": "memcached" if it is None else "txcb --ephemeral",
                                 "items": a.items}
        try:
            srv.wait_ready()
            for lo, hi, key in ((0, NKEYS, "rss_before"), (NKEYS, a.items, "rss_after")):
                r = load(srv, kind, lo, hi, a.value_size, workdir)
                if "fatal" in r:
                    raise RuntimeError(r["fatal"])
                entry[key] = rss_bytes(srv.pid)
            entry["bytes_per_item"] = (entry["rss_after"] - entry["rss_before"]) / (
                a.items - NKEYS)
        except Exception as e:  # noqa: BLE001 - reported in the table
            entry["fatal"] = "%s: %s" % (type(e).__name__, e)
        finally:
            srv.stop()
        out.append(entry)
    return out


# -- which tree each interpreter runs ---------------------------------------------

_ORIGIN = ("import sys, twisted.plugins as p; p.__path__.insert(0, sys.argv[1]); "
           "from twisted.plugin import getPlugins; "
           "from twisted.application.service import IServiceMaker; "
           "[m for m in getPlugins(IServiceMaker, p) if m.tapname == 'txcb']; "
           "import txcb; print(sys.modules['twisted.plugins.txcb_plugin'].__file__); "
           "print(txcb.__file__)")


def origins(it: Interp, workdir: str) -> Dict[str, str]:
    """
    The twistd plugin and txcb package ``it`` loads the way the servers and
    clients are started here; an error unless both are this tree's.
    """
    out = subprocess.run([it.path, "-c", _ORIGIN, os.path.join(ROOT, "twisted", "plugins")],
                         capture_output=True, text=True, env=child_env(ROOT), cwd=workdir,
                         timeout=120)
    if out.returncode != 0:
        raise ValueError("%s (%s) cannot load txcb's twistd plugin: %s" % (
            it.name, it.path, out.stderr.strip()[-500:]))
    plugin, package = out.stdout.split()[-2:]
    root = os.path.realpath(ROOT)
    for what, path in (("plugin", plugin), ("package", package)):
        if not os.path.realpath(path).startswith(root + os.sep):
            raise ValueError("%s loads the txcb %s from %s, not from %s" % (
                it.name, what, path, root))
    return {"plugin_from": plugin, "txcb_from": os.path.dirname(package)}


# -- targets ----------------------------------------------------------------------

IMPL_TARGETS = {  # impl: (memcaslap anchor, its target, one at a time, 100 in flight)
    "PyPy": ("direct", 1.0, 1.2, 1.5),
    "CPython": ("nutcracker", 1.2, 0.9, 1.2),
}
PERSIST_TARGETS = (("persist", "set100", "persistent plain upserts / ephemeral", 0.8),
                   ("persist_to1", "persist", "persist_to=1 / persistent plain", 0.5))


def _find(results: List[Dict[str, Any]], workload: str, client: str, sp: str,
          cp: str) -> Optional[float]:
    for r in results:
        if (r["workload"], r["client"], r["server_python"], r["client_python"]) == (
                workload, client, sp, cp) and "fatal" not in r and not r.get("errors"):
            return r["ops_per_s"]
    return None


def _target(sp: str, cp: str, label: str, num: Optional[float], den: Optional[float],
            want: Optional[float], op: str = ">=") -> Dict[str, Any]:
    ratio = num / den if num is not None and den else None
    met = None if ratio is None or want is None else (
        ratio >= want if op == ">=" else ratio <= want)
    return {"server_python": sp, "client_python": cp, "target": label, "op": op,
            "want": want, "ratio": ratio, "met": met}


def targets(results: List[Dict[str, Any]], memory: List[Dict[str, Any]],
            pairs: List[Tuple[Interp, Interp]]) -> List[Dict[str, Any]]:
    """Issue 16's ratios per interpreter (a mixed pair gets ratios without targets)."""
    out = []
    for s in dict.fromkeys(s for s, _c in pairs):
        anchor, want = IMPL_TARGETS.get(s.impl, (None, None, None, None))[:2]
        mine = _find(results, "memcaslap", "txcb", s.name, NONE)
        for a in ("direct", "nutcracker"):
            den = _find(results, "memcaslap", a, NONE, NONE)
            if mine is not None or den is not None:
                out.append(_target(s.name, NONE, "memcaslap 90/10 vs " + LABELS[
                    "memcaslap", a].split(" -> ", 1)[1], mine, den,
                    want if a == anchor else None))
    for s, c in pairs:
        t = IMPL_TARGETS.get(s.impl) if s.impl == c.impl else None
        for w in ("get1", "set1", "get100", "set100"):
            num = _find(results, w, "txcb", s.name, c.name)
            den = _find(results, w, "mcp", NONE, c.name)
            if num is not None or den is not None:
                want = t and (t[2] if NETSTRING[w][2] == 1 else t[3])
                out.append(_target(s.name, c.name, NETSTRING[w][0] + " vs MemCacheProtocol",
                                   num, den, want))
        for w, base, label, want in PERSIST_TARGETS:
            num = _find(results, w, "txcb", s.name, c.name)
            if num is not None:
                out.append(_target(s.name, c.name, label, num, _find(
                    results, base, "txcb", s.name, c.name), want))
    mc = [m for m in memory if m["server_python"] == NONE and "fatal" not in m]
    for m in memory:
        if m["server_python"] != NONE:
            out.append(_target(m["server_python"], NONE, "server RSS per item at %s x %d B "
                               "vs memcached" % (fmt_int(m["items"]), 100),
                               m.get("bytes_per_item"),
                               mc[0]["bytes_per_item"] if mc else None, 1.25, "<="))
    return out


# -- reporting --------------------------------------------------------------------

_COLS = "%-11s %-38s %-8s %-8s %10s %9s %9s %8s %8s"


def _f(v: Any) -> str:
    return "-" if v is None else "%.1f" % v


def print_header() -> None:
    print(_COLS % ("workload", "client -> server", "srv py", "cli py", "ops/s",
                   "cli us/op", "srv us/op", "p50 us", "p99 us"))
    print("-" * 120)


def print_row(r: Dict[str, Any]) -> None:
    head = (r["workload"], r["label"], r["server_python"], r["client_python"])
    if "fatal" in r or r.get("errors"):
        print(_COLS % (head + ("FAILED", "", "", "", "")) + "  " + (
            r.get("fatal") or r.get("first_error") or "errors")[:200].replace("\n", " "))
    else:
        print(_COLS % (head + (fmt_int(r["ops_per_s"]), _f(r.get("client_us_per_op")),
                               _f(r.get("server_us_per_op")), _f(r.get("p50_us")),
                               _f(r.get("p99_us")))))
    sys.stdout.flush()


def print_summary(memory: List[Dict[str, Any]], tgts: List[Dict[str, Any]],
                  known: Dict[str, Interp]) -> None:
    for m in memory:
        print("memory at %s items of 100 B: %-18s on %-8s %s" % (
            fmt_int(m["items"]), m["server"], m["server_python"],
            m.get("fatal") or "%.0f B/item, RSS %.0f MiB" % (
                m["bytes_per_item"], m["rss_after"] / 2**20)))
    groups: Dict[Tuple[str, str], List[Dict[str, Any]]] = {}
    pairs = {(t["server_python"], t["client_python"]) for t in tgts}
    for t in tgts:  # a server-only ratio goes with its interpreter's own pair
        sp, cp = t["server_python"], t["client_python"]
        if cp == NONE and (sp, sp) in pairs:
            cp = sp
        groups.setdefault((sp, cp), []).append(t)
    for (sp, cp), ts in sorted(groups.items(), key=lambda g: g[0] != (g[0][0],) * 2):
        def who(name: str) -> str:
            it = known.get(name)
            return "%s (%s %s)" % (name, it.impl, it.version) if it else name
        print("\ntargets, %s:" % ("all on " + who(sp) if sp == cp else "server %s" % who(sp)
                                  if cp == NONE else "server %s, client %s" % (sp, cp)))
        for t in ts:
            print("  %-55s %-8s %6s  %s" % (
                t["target"], "-" if t["want"] is None else "%s %.2fx" % (t["op"], t["want"]),
                "-" if t["ratio"] is None else "%.2fx" % t["ratio"],
                {True: "met", False: "MISSED", None: "not run" if t["ratio"] is None
                 else "(no target)"}[t["met"]]))


# -- the mode ---------------------------------------------------------------------

def _problem(want: List[str]) -> Optional[str]:
    tools = ["memcached"] + (["memcaslap", "nutcracker"] if "memcaslap" in want else [])
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        return ("bench: %s not installed (Debian: apt-get install memcached "
                "libmemcached-tools nutcracker); leave memcaslap out with --only"
                % ", ".join(missing))
    return None


def run_runtimes(a: argparse.Namespace, want: List[str]) -> int:
    """``python -m bench --pythons ...``: 0 every row ran, 1 one failed, 2 cannot start."""
    workdir = tempfile.mkdtemp(prefix="txcb-bench-pythons-")
    try:
        pairs = parse_pythons(a)
        known = {it.name: it for pair in pairs for it in pair}
        problem = _problem(want)
        found = {name: origins(it, workdir) for name, it in known.items()}
    except (ValueError, subprocess.TimeoutExpired) as e:
        problem = "bench: %s" % (e,)
    if problem:
        shutil.rmtree(workdir, ignore_errors=True)
        print(problem, file=sys.stderr)
        return 2
    busy = busy_fraction()
    t_start = time.monotonic()
    os.makedirs(a.out, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    log_dir = os.path.join(a.out, "logs-pythons-" + stamp)
    os.makedirs(log_dir, exist_ok=True)
    print("txcb on %d interpreter(s), %s s per job (+%s s warm-up) x %d interleaved rounds "
          "(median), %d-byte values; %d CPUs, %.0f%% busy before the run, load %.1f"
          % (len(known), a.duration, a.warmup, a.rounds, a.value_size, os.cpu_count() or 0,
             busy * 100, os.getloadavg()[0]), flush=True)
    for name, it in known.items():
        print("  %-8s %s %s: %s (txcb from %s)" % (name, it.impl, it.version, it.path,
                                                   found[name]["txcb_from"]))
    rows = plan_rows(pairs, want)
    run = Run(a, known, workdir, log_dir)

    def on_signal(signum: int, _frame: Any) -> None:
        raise KeyboardInterrupt
    old_term = signal.signal(signal.SIGTERM, on_signal)
    results: List[Dict[str, Any]] = []
    memory: List[Dict[str, Any]] = []
    code = 0
    try:
        print()
        print_header()
        if rows:
            run.start(rows)
            results = measure_rounds(run, rows, a.rounds, print_row)
            run.stop()
        if "memory" in want:
            memory = measure_memory(a, list(dict.fromkeys(s for s, _c in pairs)), workdir,
                                    log_dir)
    except KeyboardInterrupt:
        print("bench: interrupted", file=sys.stderr)
        code = 1
    except Exception as e:  # noqa: BLE001 - reported; the servers still get stopped
        print("bench: %s: %s" % (type(e).__name__, e), file=sys.stderr)
        code = 1
    finally:
        run.stop()
        signal.signal(signal.SIGTERM, old_term)
        shutil.rmtree(workdir, ignore_errors=True)
    tgts = targets(results, memory, pairs)
    print_summary(memory, tgts, known)
    if code == 0 and any("fatal" in r or r.get("errors") for r in results + memory):
        code = 1
    path = os.path.join(a.out, "bench-pythons-%s.json" % stamp)
    with open(path, "w") as f:
        json.dump({"meta": {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
                            "host": platform.node(), "cpus": os.cpu_count(),
                            "loadavg": os.getloadavg(), "cpu_busy_before_run": busy,
                            "interpreters": {n: dict(it._asdict(), **found[n])
                                             for n, it in known.items()},
                            "pairs": [[s.name, c.name] for s, c in pairs],
                            "wall_seconds": time.monotonic() - t_start,
                            "args": {k: v for k, v in vars(a).items()},
                            "server_pids": {s.name: s.pid for s in run.started}},
                   "results": results, "memory": memory, "targets": tgts, "exit": code},
                  f, indent=1, sort_keys=True)
    print("\nJSON: %s\nserver logs: %s\nwall time %.0f s, load %.1f at the end" % (
        path, log_dir, time.monotonic() - t_start, os.getloadavg()[0]))
    if code:
        print("bench: some rows failed (see 'fatal'/'errors' in the JSON)", file=sys.stderr)
    return code
