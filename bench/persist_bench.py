"""
Benchmark of the persistent (``couchbase``) bucket, in one run::

    python bench/persist_bench.py [--ops 60000] [--inflight 100] [--items 1000000]

1. Throughput through the same server and client: ``twistd txcb --ephemeral``
   and ``twistd txcb --data-dir TMP`` are started side by side; this process
   drives them with ``txcb.client.remote`` connections keeping ``--inflight``
   requests outstanding.  Rounds alternate (ephemeral plain upserts,
   persistent plain upserts, persistent ``persist_to=1`` upserts) and the
   medians are reported, with the target ratios:
   persistent plain / ephemeral plain >= 0.8 and
   persist_to=1 / persistent plain >= 0.5.
2. Warmup: a child process fills a persistent bucket with ``--items`` items
   of ``--value-size`` bytes through the API and closes it; another child
   process warms a bucket up from that data dir (time, peak RSS); a third
   fills an ephemeral bucket through the API (peak RSS: the baseline).
   Targets: warmup < 10 s, warmup peak RSS <= 1.2x the baseline.
   Then ``twistd txcb`` is started on that data dir: seconds until it
   listens, and its peak RSS.

Every server and child is started by this script and stopped by pid; the
temporary data dirs are removed at the end (``--keep`` keeps them).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench.run import child_env, free_port  # noqa: E402  (after the path set-up)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def vm_hwm_mb(pid: int) -> Optional[float]:
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return None


def proc_cpu(pid: int) -> float:
    """CPU seconds (user + system, every thread) a process has used so far."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def item_key(i: int) -> str:
    return "item:%09d" % i


# -- child processes (one measurement each, one JSON line out) -------------------

def child_fill_ephemeral(items: int, value_size: int) -> Dict[str, Any]:
    from txcb.buckets.embedded import EmbeddedBucket
    value = b"x" * value_size
    b = EmbeddedBucket(pager_interval=0)
    started = time.perf_counter()
    for i in range(items):
        b.upsert(item_key(i), value)
    took = time.perf_counter() - started
    return {"items": len(b._items), "fill_seconds": took, "peak_rss_mb": peak_rss_mb()}


def child_fill_persistent(data_dir: str, items: int, value_size: int) -> Dict[str, Any]:
    from twisted.internet import defer, task
    from txcb.buckets.persistent import PersistentBucket
    out: Dict[str, Any] = {}

    @defer.inlineCallbacks
    def main(reactor: Any) -> Any:
        value = b"x" * value_size
        b = PersistentBucket(data_dir, clock=reactor)
        started = time.perf_counter()
        chunk = 20000
        for first in range(0, items, chunk):
            for i in range(first, min(first + chunk, items)):
                b.upsert(item_key(i), value)
            yield task.deferLater(reactor, 0, lambda: None)  # let the writer report
        out["fill_seconds"] = time.perf_counter() - started
        closing = time.perf_counter()
        yield b.close()
        out["close_flush_seconds"] = time.perf_counter() - closing
        out["items"] = items
        out["peak_rss_mb"] = peak_rss_mb()
        out["data_file_mb"] = os.path.getsize(b.path) / 1e6

    react(main)
    return out


def child_warmup(data_dir: str) -> Dict[str, Any]:
    from twisted.internet import defer
    from txcb.buckets.persistent import PersistentBucket
    out: Dict[str, Any] = {}

    @defer.inlineCallbacks
    def main(reactor: Any) -> Any:
        started = time.perf_counter()
        b = PersistentBucket(data_dir, clock=reactor)
        out["warmup_seconds"] = time.perf_counter() - started
        out["items"] = len(b._items)
        out["peak_rss_mb"] = peak_rss_mb()
        yield b.close()

    react(main)
    return out


def react(main: Any) -> None:
    """task.react, without its sys.exit (the caller has more to do)."""
    from twisted.internet import task
    try:
        task.react(main)
    except SystemExit as e:
        if e.code not in (0, None):
            raise


def run_child(*args: str) -> Dict[str, Any]:
    out = subprocess.run([sys.executable, os.path.abspath(__file__), "--child"] + list(args),
                         capture_output=True, text=True, cwd=ROOT, env=child_env())
    if out.returncode != 0:
        raise SystemExit("child %s failed:\n%s%s" % (args, out.stdout, out.stderr))
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- servers ------------------------------------------------------------------------

class Server:
    def __init__(self, name: str, args: List[str], workdir: str) -> None:
        self.name = name
        self.port = free_port()
        self.log = os.path.join(workdir, name + ".log")
        argv = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", self.log, "txcb",
                "--port", "tcp:%d:interface=127.0.0.1" % self.port] + args
        self.started = time.perf_counter()
        self.proc = subprocess.Popen(argv, cwd=workdir, env=child_env(),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
        self.listening_after: Optional[float] = None

    def wait_listening(self, timeout: float = 120.0) -> float:
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise SystemExit("%s exited at start-up; see %s" % (self.name, self.log))
            try:
                socket.create_connection(("127.0.0.1", self.port), timeout=1).close()
                self.listening_after = time.perf_counter() - self.started
                return self.listening_after
            except OSError:
                if time.monotonic() > deadline:
                    raise SystemExit("%s did not listen in %ss" % (self.name, timeout))
                time.sleep(0.005)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


# -- the throughput load ----------------------------------------------------------

def run_load(reactor: Any, buckets: List[Any], ops: int, inflight: int, value: bytes,
             prefix: str, persist_to: int) -> Any:
    """Fire a Deferred with ops/s once ``ops`` upserts completed."""
    from twisted.internet.defer import Deferred
    done: Deferred = Deferred()
    state = {"issued": 0, "completed": 0, "errors": 0}
    started = time.perf_counter()
    nb = len(buckets)

    def issue(slot: int) -> None:
        i = state["issued"]
        if i >= ops:
            return
        state["issued"] = i + 1
        buckets[slot % nb].upsert("%s%d" % (prefix, i), value, persist_to=persist_to,
                                  timeout=30).addCallbacks(ok, failed, (slot,), None, (slot,))

    def ok(_r: Any, slot: int) -> None:
        state["completed"] += 1
        if state["completed"] == ops:
            done.callback(ops / (time.perf_counter() - started))
        else:
            issue(slot)

    def failed(f: Any, slot: int) -> None:
        state["errors"] += 1
        if not done.called:
            done.errback(f)

    for slot in range(inflight):
        issue(slot)
    return done


def throughput(args: argparse.Namespace, workdir: str) -> Dict[str, Any]:
    from twisted.internet import defer
    from txcb.client.remote import connect

    eph = Server("ephemeral", ["--ephemeral"], workdir)
    per = Server("persistent", ["--data-dir", os.path.join(workdir, "tp-data")], workdir)
    results: Dict[str, List[float]] = {"ephemeral_plain": [], "persistent_plain": [],
                                       "persistent_persist_to_1": []}
    cpu_us: Dict[str, List[float]] = {k: [] for k in results}
    batch_rows: Dict[str, List[float]] = {k: [] for k in results}
    servers = {"ephemeral": eph, "persistent": per}
    extra: Dict[str, Any] = {}
    try:
        eph.wait_listening()
        per.wait_listening()

        @defer.inlineCallbacks
        def main(reactor: Any) -> Any:
            conns: Dict[str, Any] = {}
            for s in (eph, per):
                conns[s.name] = []
                for _ in range(args.clients):
                    c = yield connect(reactor, "tcp:127.0.0.1:%d" % s.port, timeout=30)
                    conns[s.name].append(c)
            value = b"v" * args.value_size
            # Warm both servers (and the client) up before measuring.
            for name in conns:
                yield run_load(reactor, conns[name], 5000, args.inflight, value,
                               "warm-", 0)
            for rnd in range(args.rounds):
                for label, name, persist in (("ephemeral_plain", "ephemeral", 0),
                                             ("persistent_plain", "persistent", 0),
                                             ("persistent_persist_to_1", "persistent", 1)):
                    pid = servers[name].proc.pid
                    if name == "persistent":
                        before = yield conns[name][0].stats()
                    cpu0 = proc_cpu(pid)
                    rate = yield run_load(reactor, conns[name], args.ops, args.inflight,
                                          value, "r%d-%s-" % (rnd, label), persist)
                    us = (proc_cpu(pid) - cpu0) / args.ops * 1e6
                    results[label].append(rate)
                    cpu_us[label].append(us)
                    batching = ""
                    if name == "persistent":
                        after = yield conns[name][0].stats()
                        n = after["disk_batches"] - before["disk_batches"]
                        rows = after["disk_flushed"] - before["disk_flushed"]
                        batch_rows[label].append(rows / n if n else 0.0)
                        batching = "  %5.0f rows/commit" % (rows / n if n else 0.0,)
                    print("  round %d  %-26s %9.0f ops/s  server CPU %5.1f us/op%s"
                          % (rnd + 1, label, rate, us, batching), flush=True)
            stats = yield conns["persistent"][0].stats()
            extra["persistent_server_stats"] = {
                k: stats[k] for k in ("disk_batches", "disk_flushed", "disk_write_queue",
                                      "disk_last_flush_duration", "disk_errors")}
            for cs in conns.values():
                for c in cs:
                    yield c.close()

        react(main)
    finally:
        eph.stop()
        per.stop()
    med = {k: statistics.median(v) for k, v in results.items()}
    cpu = {k: statistics.median(v) for k, v in cpu_us.items()}
    return {
        "rounds": results,
        "median_ops_per_s": med,
        "server_cpu_us_per_op_rounds": cpu_us,
        "median_server_cpu_us_per_op": cpu,
        "rows_per_commit_rounds": {k: v for k, v in batch_rows.items() if v},
        "cpu_ratio_ephemeral_plain_vs_persistent_plain":
            cpu["ephemeral_plain"] / cpu["persistent_plain"],
        "ratio_persistent_plain_vs_ephemeral_plain":
            med["persistent_plain"] / med["ephemeral_plain"],
        "ratio_persist_to_1_vs_persistent_plain":
            med["persistent_persist_to_1"] / med["persistent_plain"],
        **extra,
    }


def warmup(args: argparse.Namespace, workdir: str) -> Dict[str, Any]:
    data_dir = os.path.join(workdir, "warm-data")
    print("  filling a persistent bucket with %d items through the API..." % args.items,
          flush=True)
    fill = run_child("fill-persistent", data_dir, str(args.items), str(args.value_size))
    print("  warming up from disk...", flush=True)
    warm = run_child("warmup", data_dir)
    print("  filling an ephemeral bucket through the API (baseline)...", flush=True)
    base = run_child("fill-ephemeral", str(args.items), str(args.value_size))
    print("  twistd txcb on that data dir...", flush=True)
    srv = Server("warm-twistd", ["--data-dir", data_dir], workdir)
    try:
        listening = srv.wait_listening()
        hwm = vm_hwm_mb(srv.proc.pid)
    finally:
        srv.stop()
    return {
        "items": args.items, "value_size": args.value_size,
        "fill_persistent": fill, "warmup": warm, "fill_ephemeral_baseline": base,
        "warmup_seconds": warm["warmup_seconds"],
        "ratio_warmup_peak_rss_vs_ephemeral_api_fill":
            warm["peak_rss_mb"] / base["peak_rss_mb"],
        "ratio_warmup_peak_rss_vs_persistent_api_fill":
            warm["peak_rss_mb"] / fill["peak_rss_mb"],
        "twistd_seconds_until_listening": listening,
        "twistd_peak_rss_mb": hwm,
    }


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--child":
        kind, rest = argv[1], argv[2:]
        if kind == "fill-ephemeral":
            out = child_fill_ephemeral(int(rest[0]), int(rest[1]))
        elif kind == "fill-persistent":
            out = child_fill_persistent(rest[0], int(rest[1]), int(rest[2]))
        elif kind == "warmup":
            out = child_warmup(rest[0])
        else:
            raise SystemExit("unknown child %r" % (kind,))
        print(json.dumps(out))
        return 0

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ops", type=int, default=60000, help="upserts per measurement")
    p.add_argument("--inflight", type=int, default=100, help="requests outstanding")
    p.add_argument("--clients", type=int, default=4, help="connections per server")
    p.add_argument("--rounds", type=int, default=3, help="alternating rounds (median)")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--items", type=int, default=1000000, help="items for the warmup test")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--skip-warmup", action="store_true")
    p.add_argument("--json", help="also write the figures to this file")
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    args = p.parse_args(argv)

    workdir = tempfile.mkdtemp(prefix="txcb-persist-bench-")
    report: Dict[str, Any] = {"argv": [os.path.basename(sys.executable)] + sys.argv,
                              "cpus": os.cpu_count(), "workdir": workdir}
    try:
        if not args.skip_throughput:
            print("throughput (%d upserts of %d bytes, %d in flight over %d connections, "
                  "%d rounds):" % (args.ops, args.value_size, args.inflight, args.clients,
                                   args.rounds), flush=True)
            report["throughput"] = throughput(args, workdir)
        if not args.skip_warmup:
            print("warmup:", flush=True)
            report["warmup"] = warmup(args, workdir)
    finally:
        if not args.keep:
            shutil.rmtree(workdir, ignore_errors=True)

    print()
    print(json.dumps(report, indent=2))
    print()
    t = report.get("throughput")
    if t:
        m = t["median_ops_per_s"]
        print("plain upserts, ephemeral        %9.0f ops/s" % m["ephemeral_plain"])
        print("plain upserts, persistent       %9.0f ops/s   ratio %.2f (target >= 0.8)"
              % (m["persistent_plain"], t["ratio_persistent_plain_vs_ephemeral_plain"]))
        print("persist_to=1 upserts, persistent %8.0f ops/s   ratio %.2f vs plain "
              "(target >= 0.5)" % (m["persistent_persist_to_1"],
                                   t["ratio_persist_to_1_vs_persistent_plain"]))
        c = t["median_server_cpu_us_per_op"]
        print("server CPU per op (robust to a busy machine): ephemeral %.1f us, persistent "
              "%.1f us, persist_to=1 %.1f us; ephemeral/persistent %.2f"
              % (c["ephemeral_plain"], c["persistent_plain"], c["persistent_persist_to_1"],
                 t["cpu_ratio_ephemeral_plain_vs_persistent_plain"]))
    w = report.get("warmup")
    if w:
        print("warmup of %d items of %d bytes   %.2f s (target < 10 s)"
              % (w["items"], w["value_size"], w["warmup_seconds"]))
        print("peak RSS: warmup %.0f MB, ephemeral API fill %.0f MB (ratio %.2f, target "
              "<= 1.2), persistent API fill %.0f MB (ratio %.2f)"
              % (w["warmup"]["peak_rss_mb"], w["fill_ephemeral_baseline"]["peak_rss_mb"],
                 w["ratio_warmup_peak_rss_vs_ephemeral_api_fill"],
                 w["fill_persistent"]["peak_rss_mb"],
                 w["ratio_warmup_peak_rss_vs_persistent_api_fill"]))
        print("twistd txcb on that data dir: listening after %.2f s, peak RSS %s MB"
              % (w["twistd_seconds_until_listening"],
                 "%.0f" % w["twistd_peak_rss_mb"] if w["twistd_peak_rss_mb"] else "?"))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(report, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
