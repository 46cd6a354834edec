"""
The RAM quota's cost, in one run: a persistent bucket with value ejection
(``--quota``, the data ``--data-ratio`` times bigger) against the same
bucket with everything resident (a quota bigger than the data).  A
benchmark, not a test::

    python -m bench.quota_bench [--quota 64M] [--data-ratio 5] [--value-size 8K]
                                [--seconds 15] [--conns 8] [--depth 16]

1. Fill rate: each server is loaded with the same keys and values (derived
   from the key) over ``--conns`` pipelined memcached connections; a
   temporary failure (the quota full of writes waiting for the disk) is
   retried after a short backoff and counted.  MB/s of values until every
   set was acknowledged, and the ratio ejecting / resident (target >= 0.8);
   also MB/s until the write queue is empty (every value on disk), since a
   resident bucket acknowledges faster than it writes.
2. Skewed reads: once the writes are on disk, a get workload where 80% of
   the reads go to the hot set and 20% to the other (cold) keys, for
   ``--seconds`` on each server.  The hot set is the 20% of the keys last
   written, unless that does not fit the resident share the quota leaves
   (the low watermark less the keys' and metadata's memory, measured from
   the server's stats): then it is the part that fits (``--hot-fraction``
   forces a share).  It is read once before the measurement.  Throughput,
   p50/p99 of all reads, p99 of the cold reads (the keys not in the hot set:
   with ejection most are read back from SQLite), and the ratio ejecting /
   resident (target >= 0.7).

The servers are ``twistd txcb --data-dir D --memory-quota N`` of this tree,
each on free loopback ports, stopped by pid at the end.  It prints a table and one JSON
line and exits 0: a measurement, not a gate.  Absolute figures drift on a
shared machine; the ratios, measured back to back, are what to compare.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sys
import tempfile
import time
from typing import Any, Dict, List, Optional, Tuple

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from bench import mcpipe  # noqa: E402  (after the path set-up)
from bench.run import Server, free_port, rss_bytes, twistd_in  # noqa: E402

MB = 1 << 20
HOT_READS = 0.8
HOT_KEYS = 0.2
FILL_TARGET = 0.8
READ_TARGET = 0.7


def parse_size(text: str) -> int:
    """Bytes from "64M", "8K", "1G" or a number."""
    units = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    t = text.strip().upper().rstrip("B")
    if t and t[-1] in units:
        return int(float(t[:-1]) * units[t[-1]])
    return int(t)


def quota_server(name: str, data_dir: str, quota: int, workdir: str) -> Server:
    """``twistd txcb`` of this tree on ``data_dir`` with ``quota``; ``.port`` is memcached's."""
    port, mc = free_port(), free_port()
    log = os.path.join(workdir, name + ".log")
    argv = twistd_in(ROOT) + [
        "-n", "--pidfile=", "--logfile", log + ".twistd", "txcb", "--data-dir", data_dir,
        "--memory-quota", str(quota), "-p", "tcp:%d:interface=127.0.0.1" % port,
        "--memcached", "tcp:%d:interface=127.0.0.1" % mc]
    server = Server(name, argv, mc, log, root=ROOT, cwd=workdir)
    server.wait_ready(60)
    return server


def wait_persisted(port: int, timeout: float = 120.0) -> Dict[str, str]:
    """The stats once the write queue is empty (every value clean, so ejectable)."""
    deadline = time.monotonic() + timeout
    while True:
        s = mcpipe.stats(port)
        if int(s.get("disk_write_queue", "0")) == 0 or time.monotonic() > deadline:
            return s
        time.sleep(0.02)


def fill(port: int, all_keys: List[bytes], a: argparse.Namespace) -> Dict[str, Any]:
    pipe = mcpipe.Pipeline(port, a.conns, a.depth)
    loader = mcpipe.Loader(pipe, a.value_size, backoff=a.backoff)
    try:
        seconds = loader.load(all_keys)
    finally:
        pipe.close()
    return {"seconds": seconds, "mb_s": len(all_keys) * a.value_size / MB / seconds,
            "tmpfail_retries": loader.retries}


def hot_count(n: int, s: Dict[str, str], a: argparse.Namespace) -> int:
    """How many keys are hot: 20%, or what fits the resident share."""
    if a.hot_fraction is not None:
        return max(1, int(n * a.hot_fraction))
    resident = int(s["resident_items"])
    per_item = max(0, (int(s["mem_used"]) - resident * a.value_size) // n)
    room = int(s["mem_low_wat"]) - n * per_item
    fits = int(0.9 * room / (a.value_size + per_item))
    return max(1, min(int(n * HOT_KEYS), fits))


def percentile(values: List[float], p: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(p * len(values)))]


def skewed_reads(port: int, all_keys: List[bytes], hot: int, a: argparse.Namespace,
                 seed: int) -> Dict[str, Any]:
    """Reads for ``a.seconds``: 80% to the last ``hot`` keys, checking each value."""
    cold_keys, hot_keys = all_keys[:-hot], all_keys[-hot:]
    rnd = random.Random(seed)
    lat: Tuple[List[float], List[float]] = ([], [])  # (hot, cold)
    errors = [0]
    pipe = mcpipe.Pipeline(port, a.conns, a.depth)
    try:
        warm = iter(hot_keys)
        pipe.run(lambda: _req(next(warm, None), 0), lambda *r: None)
        stop_at = time.perf_counter() + a.seconds

        def next_request() -> Optional[Tuple[bytes, bytes, int]]:
            if time.perf_counter() >= stop_at:
                return None
            if rnd.random() < HOT_READS or not cold_keys:
                return _req(rnd.choice(hot_keys), 0)
            return _req(rnd.choice(cold_keys), 1)

        def on_reply(key: bytes, tag: int, latency: float, line: bytes,
                     value: Optional[bytes]) -> None:
            lat[tag].append(latency)
            if value != mcpipe.value_for(key, a.value_size):
                errors[0] += 1

        started = time.perf_counter()
        pipe.run(next_request, on_reply)
        elapsed = time.perf_counter() - started
    finally:
        pipe.close()
    every = lat[0] + lat[1]
    return {"ops_s": len(every) / elapsed, "reads": len(every), "cold_reads": len(lat[1]),
            "p50_ms": percentile(every, 0.5) * 1e3, "p99_ms": percentile(every, 0.99) * 1e3,
            "cold_p99_ms": percentile(lat[1], 0.99) * 1e3,
            "hot_p99_ms": percentile(lat[0], 0.99) * 1e3, "wrong_values": errors[0]}


def _req(key: Optional[bytes], tag: int) -> Optional[Tuple[bytes, bytes, int]]:
    return None if key is None else (key, mcpipe.get_wire(key), tag)


def measure(name: str, quota: int, all_keys: List[bytes], hot: Optional[int],
            a: argparse.Namespace, workdir: str) -> Dict[str, Any]:
    """Fill one server, wait for the disk, read skewed; its figures and stats."""
    server = quota_server(name, os.path.join(workdir, name + "-data"), quota, workdir)
    try:
        started = time.perf_counter()
        out: Dict[str, Any] = {"quota": quota, "fill": fill(server.port, all_keys, a)}
        s = wait_persisted(server.port)
        durable = time.perf_counter() - started
        out["fill"]["durable_seconds"] = durable
        out["fill"]["durable_mb_s"] = len(all_keys) * a.value_size / MB / durable
        out["hot_keys"] = hot if hot is not None else hot_count(len(all_keys), s, a)
        out["after_fill"] = _quota_stats(s)
        out["reads"] = skewed_reads(server.port, all_keys, out["hot_keys"], a, a.seed)
        out["after_reads"] = _quota_stats(mcpipe.stats(server.port))
        out["rss_mb"] = rss_bytes(server.pid) / MB
    finally:
        server.stop()
    return out


def _quota_stats(s: Dict[str, str]) -> Dict[str, Any]:
    names = ("mem_used", "resident_items", "resident_ratio", "ejections", "bg_fetches",
             "oom_errors", "curr_items")
    return {n: float(s[n]) if "." in s.get(n, "") else int(s.get(n, "0")) for n in names}


def table(r: Dict[str, Any]) -> str:
    e, f = r["ejecting"], r["resident"]
    rows = [
        ("quota (MiB)", e["quota"] / MB, f["quota"] / MB, "%.0f"),
        ("fill MB/s", e["fill"]["mb_s"], f["fill"]["mb_s"], "%.1f"),
        ("fill MB/s, until on disk", e["fill"]["durable_mb_s"], f["fill"]["durable_mb_s"],
         "%.1f"),
        ("fill TMPFAIL retries", e["fill"]["tmpfail_retries"], f["fill"]["tmpfail_retries"],
         "%d"),
        ("resident ratio after fill", e["after_fill"]["resident_ratio"],
         f["after_fill"]["resident_ratio"], "%.3f"),
        ("resident ratio after reads", e["after_reads"]["resident_ratio"],
         f["after_reads"]["resident_ratio"], "%.3f"),
        ("ejections", e["after_reads"]["ejections"], f["after_reads"]["ejections"], "%d"),
        ("bg fetches (reads)", e["after_reads"]["bg_fetches"],
         f["after_reads"]["bg_fetches"], "%d"),
        ("skewed gets/s", e["reads"]["ops_s"], f["reads"]["ops_s"], "%.0f"),
        ("p50 ms", e["reads"]["p50_ms"], f["reads"]["p50_ms"], "%.2f"),
        ("p99 ms", e["reads"]["p99_ms"], f["reads"]["p99_ms"], "%.2f"),
        ("hot p99 ms", e["reads"]["hot_p99_ms"], f["reads"]["hot_p99_ms"], "%.2f"),
        ("cold p99 ms", e["reads"]["cold_p99_ms"], f["reads"]["cold_p99_ms"], "%.2f"),
        ("wrong values read", e["reads"]["wrong_values"], f["reads"]["wrong_values"], "%d"),
        ("server RSS MiB at end", e["rss_mb"], f["rss_mb"], "%.0f"),
    ]
    lines = ["%-28s %14s %14s" % ("", "ejecting", "all resident")]
    lines += ["%-28s %14s %14s" % (label, fmt % x, fmt % y) for label, x, y, fmt in rows]
    lines.append("")
    lines.append("fill rate ejecting / resident:     %.2fx (target >= %.1f)"
                 % (r["fill_ratio"], FILL_TARGET))
    lines.append("fill until on disk, ejecting / resident: %.2fx"
                 % (r["durable_fill_ratio"],))
    lines.append("skewed gets ejecting / resident:   %.2fx (target >= %.1f)"
                 % (r["read_ratio"], READ_TARGET))
    return "\n".join(lines)


def run(a: argparse.Namespace) -> Dict[str, Any]:
    n = max(1, int(a.quota * a.data_ratio) // a.value_size)
    all_keys = mcpipe.keys(n)
    workdir = tempfile.mkdtemp(prefix="txcb-quota-bench-")
    try:
        ejecting = measure("ejecting", a.quota, all_keys, None, a, workdir)
        big = 2 * n * a.value_size + 256 * MB
        resident = measure("resident", big, all_keys, ejecting["hot_keys"], a, workdir)
    finally:
        if not a.keep:
            shutil.rmtree(workdir, ignore_errors=True)
    return {"keys": n, "value_size": a.value_size, "data_mb": n * a.value_size / MB,
            "hot_keys": ejecting["hot_keys"], "hot_reads": HOT_READS,
            "conns": a.conns, "depth": a.depth, "seconds": a.seconds,
            "ejecting": ejecting, "resident": resident,
            "fill_ratio": ejecting["fill"]["mb_s"] / resident["fill"]["mb_s"],
            "durable_fill_ratio": ejecting["fill"]["durable_mb_s"]
            / resident["fill"]["durable_mb_s"],
            "read_ratio": ejecting["reads"]["ops_s"] / resident["reads"]["ops_s"]}


def options(argv: Optional[List[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                epilog=__doc__.split("::", 1)[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quota", type=parse_size, default=64 * MB,
                   help="the ejecting server's RAM quota (default 64M)")
    p.add_argument("--data-ratio", type=float, default=5.0,
                   help="data size / quota (default 5: about 20%% resident at most)")
    p.add_argument("--value-size", type=parse_size, default=8 * 1024,
                   help="bytes per value (default 8K)")
    p.add_argument("--seconds", type=float, default=15.0, help="read phase per server")
    p.add_argument("--conns", type=int, default=8, help="client connections")
    p.add_argument("--depth", type=int, default=16, help="requests outstanding per connection")
    p.add_argument("--hot-fraction", type=float, default=None,
                   help="share of the keys that is hot (default: 0.2, or what fits)")
    p.add_argument("--backoff", type=float, default=0.005,
                   help="seconds before retrying a temporary failure")
    p.add_argument("--seed", type=int, default=17)
    p.add_argument("--keep", action="store_true", help="keep the temporary data dirs")
    return p.parse_args(argv)


def main(argv: Optional[List[str]] = None) -> int:
    a = options(argv)
    r = run(a)
    print("quota_bench: %d keys x %d B = %.0f MiB, quota %.0f MiB; hot set %d keys "
          "(%.1f%%) gets %.0f%% of the reads; %d conns x %d deep"
          % (r["keys"], r["value_size"], r["data_mb"], a.quota / MB, r["hot_keys"],
             100.0 * r["hot_keys"] / r["keys"], 100 * HOT_READS, a.conns, a.depth))
    print(table(r))
    print(json.dumps(r, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
