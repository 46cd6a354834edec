"""
Benchmark (not a test): the official Couchbase Python SDK's sync API against
``twistd txcb --couchbase``, next to memcached clients against txcb's
memcached endpoint and against a real memcached, in the same run.

    python -m bench.couchbase_bench [--duration 1.5] [--warmup 0.3] [--rounds 1]
                                    [--smoke] [--json FILE]

Also run by ``python -m bench`` (``--only couchbase``, and in a full run).

One ``twistd -n txcb --ephemeral`` serves ``--couchbase`` and ``--memcached``
on the same memory bucket; a real memcached runs beside it.  Each job runs in
a fresh client process (this module with ``--job JSON``) for ``--warmup``
then ``--duration`` seconds, one request at a time on one connection, over
1,000 keys ``key:N`` of 100-byte values (the SDK stores them raw, with
RawBinaryTranscoder).  The server's CPU per operation comes from its
``/proc/PID/stat`` at the start and the end of the measured window
(:class:`bench.worker.Meter`).  Rows:

* get and set one at a time: the SDK -> ``--couchbase``; bmemcached (binary
  protocol) and pymemcache (ASCII) -> txcb's ``--memcached``; pymemcache ->
  memcached;
* a 90% get / 10% set mix one at a time: the SDK -> ``--couchbase``,
  bmemcached -> ``--memcached`` (the same binary framing without the
  Couchbase extensions) and -> memcached;
* ``get_multi``/``upsert_multi`` of 100 keys (ops = keys): the SDK ->
  ``--couchbase``; pymemcache ``get_many``/``set_many`` -> ``--memcached``
  and -> memcached.

Last, the two server protocols alone in this process (no sockets, no
client: :func:`protocol_cost`), for the framing's own cost.

Targets: the server's CPU per operation over ``--couchbase`` at most 1.1x its
CPU per operation over the memcached binary endpoint for the mix, and the
SDK's ``get_multi`` of 100 at least 0.8x the keys per second of pymemcache's
``get_many`` of 100 against a real memcached.  The machine may be shared:
ratios measured back to back in one run are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import struct
import subprocess
import sys
import time
from datetime import timedelta
from typing import Any, Callable, Dict, List, Optional, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.run import (  # noqa: E402  (after the path set-up)
    Server, busy_fraction, child_env, fmt_int, free_port, memcached_server, twistd_argv)
from bench.worker import Meter, chunks, key_list  # noqa: E402

_pc = time.perf_counter
_pc_ns = time.perf_counter_ns

LABELS = {
    ("sdk", "couchbase"): "couchbase SDK (sync) -> txcb --couchbase",
    ("bmc", "txcb-mc"): "bmemcached (binary) -> txcb --memcached",
    ("pym", "txcb-mc"): "pymemcache -> txcb --memcached",
    ("bmc", "memcached"): "bmemcached (binary) -> memcached",
    ("pym", "memcached"): "pymemcache -> memcached",
}
SDK = ("sdk", "couchbase")
BINARY = ("bmc", "txcb-mc")
PYM_MEMCACHED = ("pym", "memcached")

ONE_AT_A_TIME = [SDK, BINARY, ("pym", "txcb-mc"), PYM_MEMCACHED]
MULTI = [SDK, ("pym", "txcb-mc"), PYM_MEMCACHED]
WORKLOADS: List[Dict[str, Any]] = [
    {"id": "cb-get1", "title": "one at a time, get", "op": "get", "multi": 0,
     "jobs": ONE_AT_A_TIME},
    {"id": "cb-set1", "title": "one at a time, upsert/set", "op": "set", "multi": 0,
     "jobs": ONE_AT_A_TIME},
    {"id": "cb-mix1", "title": "one at a time, 90% get / 10% set", "op": "mix", "multi": 0,
     "jobs": [SDK, BINARY, ("bmc", "memcached")]},
    {"id": "cb-getmulti", "title": "get_multi of 100 (ops = keys)", "op": "get",
     "multi": 100, "jobs": MULTI},
    {"id": "cb-setmulti", "title": "upsert_multi of 100 (ops = keys)", "op": "set",
     "multi": 100, "jobs": MULTI},
]
TARGETS: List[Tuple[Any, ...]] = [
    # (label, kind, (workload, client), (workload, anchor), op, want)
    ("server CPU/op, 90/10 mix: --couchbase vs memcached binary", "server_us_per_op",
     ("cb-mix1", SDK), ("cb-mix1", BINARY), "<=", 1.1),
    ("SDK get_multi(100) keys/s vs pymemcache get_many -> memcached", "ops_per_s",
     ("cb-getmulti", SDK), ("cb-getmulti", PYM_MEMCACHED), ">=", 0.8),
]


# -- the client side (one job, in its own process) -------------------------------

class Calls:
    """One client's get, set, get-many and set-many of raw byte values, and close."""

    def __init__(self, get: Callable, set: Callable, get_many: Callable,
                 set_many: Callable, close: Callable) -> None:
        self.get, self.set, self.get_many, self.set_many = get, set, get_many, set_many
        self.close = close


def _all_ok(result: Any) -> Any:
    if not result.all_ok:
        raise RuntimeError("multi failed: %r" % (list(result.exceptions.items())[:1],))
    return [r.value for r in result.results.values()]


def sdk_calls(port: int) -> Calls:
    """The official SDK's sync API, as its documentation connects it."""
    from couchbase.auth import PasswordAuthenticator
    from couchbase.cluster import Cluster
    from couchbase.options import (ClusterOptions, GetMultiOptions, GetOptions,
                                   UpsertMultiOptions, UpsertOptions)
    from couchbase.transcoder import RawBinaryTranscoder
    cluster = Cluster("couchbase://127.0.0.1:%d" % (port,),
                      ClusterOptions(PasswordAuthenticator("bench", "bench")))
    cluster.wait_until_ready(timedelta(seconds=10))
    coll = cluster.bucket("default").default_collection()
    raw = RawBinaryTranscoder()
    gopt, uopt = GetOptions(transcoder=raw), UpsertOptions(transcoder=raw)
    gmopt, umopt = GetMultiOptions(transcoder=raw), UpsertMultiOptions(transcoder=raw)
    return Calls(lambda k: coll.get(k, gopt).value, lambda k, v: coll.upsert(k, v, uopt),
                 lambda ks: _all_ok(coll.get_multi(ks, gmopt)),
                 lambda kv: _all_ok(coll.upsert_multi(kv, umopt)), cluster.close)


def bmc_calls(port: int) -> Calls:
    """python-binary-memcached, raw bytes (flags 0), one server."""
    import bmemcached
    c = bmemcached.Client(("127.0.0.1:%d" % (port,),), raw_data=True, socket_timeout=5)

    def set_one(k: str, v: bytes) -> None:
        if not c.set(k, v):
            raise RuntimeError("set failed")

    def set_many(kv: Dict[str, bytes]) -> None:
        failed = c.set_multi(kv)
        if failed:
            raise RuntimeError("set_multi failed for %d keys" % len(failed))
    return Calls(c.get, set_one, c.get_multi, set_many, c.disconnect_all)


def pym_calls(port: int) -> Calls:
    """pymemcache, as bench.worker drives it."""
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", port), no_delay=True, default_noreply=False, connect_timeout=5,
               timeout=5)

    def set_one(k: str, v: bytes) -> None:
        if not c.set(k, v, noreply=False):
            raise RuntimeError("set failed")

    def set_many(kv: Dict[str, bytes]) -> None:
        failed = c.set_many(kv, noreply=False)
        if failed:
            raise RuntimeError("set_many failed for %d keys" % len(failed))
    return Calls(c.get, set_one, c.get_many, set_many, c.close)


CLIENTS = {"sdk": sdk_calls, "bmc": bmc_calls, "pym": pym_calls}


def job_call(job: Dict[str, Any], calls: Calls) -> Tuple[Callable[[int], Any], int]:
    """(call(i), operations per call) for the job's op and shape."""
    value = b"v" * job["value_size"]
    keys = key_list(job, as_bytes=False)
    m = job["multi"]
    if m:
        groups = chunks(keys, m)
        if job["op"] == "get":
            return (lambda i: calls.get_many(groups[i % len(groups)])), m
        maps = [dict.fromkeys(g, value) for g in groups]
        return (lambda i: calls.set_many(maps[i % len(maps)])), m
    n = len(keys)
    if job["op"] == "get":
        return (lambda i: calls.get(keys[i % n])), 1
    if job["op"] == "set":
        return (lambda i: calls.set(keys[i % n], value)), 1

    def mix(i: int) -> Any:
        if i % 10 == 0:
            return calls.set(keys[i % n], value)
        return calls.get(keys[i % n])
    return mix, 1


def run_job(job: Dict[str, Any]) -> Dict[str, Any]:
    """Store the keys, warm up, then measure ``duration`` seconds."""
    calls = CLIENTS[job["client"]](job["port"])
    value = b"v" * job["value_size"]
    for group in chunks(key_list(job, as_bytes=False), 100):
        calls.set_many(dict.fromkeys(group, value))
    call, per_call = job_call(job, calls)
    meter = Meter(job.get("server_pid"))
    i = 0
    warm_end = _pc() + job["warmup"]
    while _pc() < warm_end:
        call(i)
        i += 1
    meter.start()
    end_ns = int((meter.t0 + job["duration"]) * 1e9)
    lat, ops = meter.lat, 0
    while True:
        t = _pc_ns()
        try:
            call(i)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            meter.error(e)
            break
        t1 = _pc_ns()
        lat.append(t1 - t)
        ops += per_call
        i += 1
        if t1 >= end_ns:
            break
    meter.ops = ops
    meter.stop()
    calls.close()
    return meter.result()


# -- the server protocols alone, in this process ------------------------------------

def protocol_cost(n: int = 20000, rounds: int = 3) -> Dict[str, float]:
    """
    CPU microseconds per request of the two server protocols alone (no
    sockets, no client): the 90/10 mix of the SDK's frames (collections,
    mutation tokens and XERROR negotiated, as the SDK does) fed one request
    per read to the Couchbase endpoint, and the same mix of plain memcached
    binary frames to the memcached endpoint.  Best of ``rounds``.
    """
    from tests.support.couchbase import CbHarness, store_extras
    from tests.support.memcached import Harness
    from txcb.wire import couchbase as W
    from txcb.wire import mcbinary as B
    value, extras = b"v" * 100, struct.pack(">II", 0, 0)
    cb = CbHarness().ready()
    cb_frames = [cb.frame(W.Opcode.SET, b"key:%d" % (i % 1000), value,
                          extras=store_extras(0x03000002)) if i % 10 == 0 else
                 cb.frame(W.Opcode.GET, b"key:%d" % (i % 1000)) for i in range(n)]
    mc = Harness().connect()
    mc_frames = [B.encode_request(0x01, b"key:%d" % (i % 1000), value, extras, i)
                 if i % 10 == 0 else B.encode_request(0x00, b"key:%d" % (i % 1000), opaque=i)
                 for i in range(n)]
    out: Dict[str, float] = {}
    for _ in range(rounds):
        for name, conn, frames in (("couchbase", cb, cb_frames), ("memcached", mc, mc_frames)):
            feed, clear = conn.p.dataReceived, conn.t.clear
            t0 = time.process_time()
            for f in frames:
                feed(f)
                clear()
            us = (time.process_time() - t0) * 1e6 / n
            out[name] = min(out.get(name, us), us)
    return out


def print_protocol_cost(cost: Dict[str, float]) -> None:
    print("server protocol alone, 90/10 mix, one request per read (CPU us/request): "
          "--couchbase %.2f, --memcached binary %.2f: %.2fx"
          % (cost["couchbase"], cost["memcached"], cost["couchbase"] / cost["memcached"]))


# -- the run (servers, jobs in fresh processes, the table) -----------------------

def txcb_server(name: str, out_dir: str) -> Tuple[Server, int]:
    """twistd txcb --ephemeral with --couchbase (its port) and --memcached (returned)."""
    port, mc_port = free_port(), free_port()
    log = os.path.join(out_dir, name + ".log")
    argv = twistd_argv() + ["-n", "--pidfile=", "--logfile", log + ".twistd", "txcb",
                            "--ephemeral", "--port", "tcp:0:interface=127.0.0.1",
                            "--couchbase", "tcp:%d:interface=127.0.0.1" % port,
                            "--memcached", "tcp:%d:interface=127.0.0.1" % mc_port]
    return Server(name, argv, port, log, cwd=out_dir), mc_port


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError("nothing listens on port %d after %.0fs" % (port, timeout))
            time.sleep(0.05)


def spawn_job(job: Dict[str, Any], timeout: float) -> Dict[str, Any]:
    proc = subprocess.run([sys.executable, "-m", "bench.couchbase_bench", "--job",
                           json.dumps(job)], capture_output=True, text=True,
                          timeout=timeout, env=child_env(), cwd=ROOT)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        return {"fatal": "worker exited %s: %s" % (
            proc.returncode, (proc.stderr or proc.stdout).strip()[-1500:])}
    return json.loads(lines[-1])


def median_run(runs: List[Dict[str, Any]]) -> Dict[str, Any]:
    """The round with the median ops/s (its CPU and latency with it), or a failure."""
    bad = [r for r in runs if "fatal" in r or r.get("errors")]
    if bad:
        return dict(bad[0])
    ordered = sorted(runs, key=lambda r: r["ops_per_s"])
    mid = dict(ordered[(len(ordered) - 1) // 2])
    mid["rounds_ops_per_s"] = [r["ops_per_s"] for r in runs]
    return mid


def measure(a: argparse.Namespace, out_dir: str, only: Optional[List[str]] = None
            ) -> List[Dict[str, Any]]:
    """Start the servers, run every job ``a.rounds`` times interleaved, stop them."""
    txcb, mc_port = txcb_server("txcb-couchbase", out_dir)
    memcached = memcached_server("memcached-cb", out_dir)
    ports = {"couchbase": txcb.port, "txcb-mc": mc_port, "memcached": memcached.port}
    pids = {"couchbase": txcb.pid, "txcb-mc": txcb.pid, "memcached": memcached.pid}
    rows: List[Dict[str, Any]] = []
    try:
        txcb.wait_ready()
        wait_port(mc_port)
        memcached.wait_ready()
        for w in WORKLOADS:
            if only and w["id"] not in only:
                continue
            runs: Dict[int, List[Dict[str, Any]]] = {i: [] for i in range(len(w["jobs"]))}
            for _round in range(a.rounds):
                for i, (client, server) in enumerate(w["jobs"]):
                    job = {"client": client, "op": w["op"], "multi": w["multi"],
                           "port": ports[server], "server_pid": pids[server],
                           "value_size": 100, "nkeys": 1000, "duration": a.duration,
                           "warmup": a.warmup}
                    runs[i].append(spawn_job(job, a.warmup + a.duration + 120))
            for i, (client, server) in enumerate(w["jobs"]):
                r = median_run(runs[i])
                r.update(workload=w["id"], title=w["title"], client=client, server=server,
                         label=LABELS[(client, server)])
                rows.append(r)
                print_row(r)
    finally:
        txcb.stop()
        memcached.stop()
    return rows


_COLS = "%-12s %-42s %11s %9s %9s %9s %9s"


def print_header() -> None:
    print(_COLS % ("workload", "client -> server", "ops/s", "cli us/op", "srv us/op",
                   "p50 us", "p99 us"))
    print("-" * 109)


def _f(v: Any) -> str:
    return "-" if v is None else "%.1f" % v


def print_row(r: Dict[str, Any]) -> None:
    if "fatal" in r or r.get("errors"):
        why = r.get("fatal") or "%d errors: %s" % (r["errors"], r.get("first_error"))
        print(_COLS % (r["workload"], r["label"], "FAILED", "", "", "", "") + "  "
              + why[:200].replace("\n", " "))
    else:
        print(_COLS % (r["workload"], r["label"], fmt_int(r["ops_per_s"]),
                       _f(r["client_us_per_op"]), _f(r["server_us_per_op"]),
                       _f(r["p50_us"]), _f(r["p99_us"])))
    sys.stdout.flush()


def _value(rows: List[Dict[str, Any]], workload: str, who: Tuple[str, str], kind: str
           ) -> Optional[float]:
    for r in rows:
        if (r["workload"], (r["client"], r["server"])) == (workload, who) and "fatal" not in r:
            return r.get(kind)
    return None


def targets(rows: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    out = []
    for label, kind, (w, who), (dw, dwho), op, want in TARGETS:
        num, den = _value(rows, w, who, kind), _value(rows, dw, dwho, kind)
        ratio = num / den if num is not None and den else None
        met = None if ratio is None else (ratio <= want if op == "<=" else ratio >= want)
        out.append({"target": label, "op": op, "want": want, "ratio": ratio, "met": met})
    return out


def print_summary(rows: List[Dict[str, Any]], goals: List[Dict[str, Any]]) -> None:
    print("server CPU per op, --couchbase (SDK) over --memcached binary (bmemcached):")
    for w in ("cb-get1", "cb-set1", "cb-mix1"):
        num, den = (_value(rows, w, SDK, "server_us_per_op"),
                    _value(rows, w, BINARY, "server_us_per_op"))
        if num is not None and den:
            print("  %-12s %.2fx (%.1f vs %.1f us)" % (w, num / den, num, den))
    print("targets (same run):")
    for t in goals:
        print("  %-62s %-8s %6s  %s" % (
            t["target"], "%s %.2fx" % (t["op"], t["want"]),
            "-" if t["ratio"] is None else "%.2fx" % t["ratio"],
            {True: "met", False: "MISSED", None: "not run"}[t["met"]]))


def sdk_problem() -> Optional[str]:
    """Why the SDK rows cannot run here, or None."""
    try:
        import bmemcached  # noqa: F401
        import couchbase.cluster  # noqa: F401
    except ImportError as e:
        return "the couchbase SDK or bmemcached is not importable (pip install -e .[test]): " \
               "%s" % (e,)
    return None


def harness_phase(a: argparse.Namespace, out_dir: str) -> Dict[str, Any]:
    """``python -m bench``'s couchbase rows: measured, printed; the JSON part."""
    problem = sdk_problem()
    if problem is not None:
        print("\ncouchbase rows skipped: %s" % (problem,))
        return {"skipped": problem}
    print("\nthe official Couchbase SDK against txcb --couchbase (%s s per job, %d rounds, "
          "median):" % (a.duration, a.rounds))
    print_header()
    rows = measure(a, out_dir)
    goals = targets(rows)
    print()
    print_summary(rows, goals)
    cost = protocol_cost(2000 if a.smoke else 20000)
    print_protocol_cost(cost)
    return {"results": rows, "targets": goals, "protocol_us_per_request": cost}


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.strip().split("\n\n")[0])
    p.add_argument("--duration", type=float, default=None,
                   help="measured seconds per job (default 1.5; --smoke 0.05)")
    p.add_argument("--warmup", type=float, default=None,
                   help="unmeasured seconds before each job (default 0.3)")
    p.add_argument("--rounds", type=int, default=1, help="runs of each job; median shown")
    p.add_argument("--smoke", action="store_true", help="every job briefly: a check, "
                   "not a measurement")
    p.add_argument("--only", default="", help="comma-separated workload ids (%s)"
                   % ", ".join(w["id"] for w in WORKLOADS))
    p.add_argument("--json", default=None, help="also write the figures here")
    p.add_argument("--job", default=None, help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.job is not None:
        sys.stdout.write(json.dumps(run_job(json.loads(a.job))) + "\n")
        return 0
    if a.duration is None:
        a.duration = 0.05 if a.smoke else 1.5
    if a.warmup is None:
        a.warmup = 0.02 if a.smoke else 0.3
    problem = sdk_problem()
    if problem is not None:
        sys.stderr.write("bench: %s\n" % (problem,))
        return 2
    busy = busy_fraction()
    print("couchbase bench: %s s per job (+%s s warm-up) x %d rounds, 100-byte values, "
          "1,000 keys; CPUs %.0f%% busy before the run" % (a.duration, a.warmup, a.rounds,
                                                            busy * 100))
    out_dir = os.path.join(HERE, "results", "logs-cb-" + time.strftime("%Y%m%d-%H%M%S"))
    os.makedirs(out_dir, exist_ok=True)
    print_header()
    rows = measure(a, out_dir, [x for x in a.only.split(",") if x] or None)
    goals = targets(rows)
    print()
    print_summary(rows, goals)
    cost = protocol_cost(2000 if a.smoke else 20000)
    print_protocol_cost(cost)
    if a.json:
        with open(a.json, "w") as f:
            json.dump({"args": vars(a), "cpu_busy_before_run": busy, "results": rows,
                       "targets": goals, "protocol_us_per_request": cost}, f, indent=1)
    failed = any("fatal" in r or r.get("errors") for r in rows)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
