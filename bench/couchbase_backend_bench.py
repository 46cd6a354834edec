"""
Benchmark (not a test): the cost of txcb as a memcached proxy in front of a
Couchbase cluster.

    python -m bench.couchbase_backend_bench [--seconds 5] [--connections 32]
                                            [--procs 4] [--keys 1000] [--rounds 3]

Starts a backing ``twistd txcb --couchbase P --memcached M --ephemeral`` and a
proxy ``twistd txcb --memcached N --backend couchbase://127.0.0.1:P`` (both
stopped by pid at the end), then drives a 90/10 get/set mix of 100-byte
values with ``--connections`` pymemcache connections (spread over
``--procs`` client processes, one thread per connection) for ``--seconds``
against:

* ``direct``: the backing txcb's own memcached endpoint;
* ``proxy``: pymemcache -> the proxy -> (official SDK) -> the backing txcb.

Each round runs both back to back; the ratio proxy / direct is the figure
(absolute numbers drift on a shared machine).
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import random
import sys
import threading
import time
from typing import Any, Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from tests.support.cbbackend import ProxyTwistd  # noqa: E402
from tests.support.couchbase_sdk import TxcbTwistd  # noqa: E402
from tests.support.procs import free_port  # noqa: E402


def _connection(port: int, keys: int, until: float, seed: int, out: List[Any]) -> None:
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", port), timeout=10, no_delay=True)
    rnd = random.Random(seed)
    value = b"v" * 100
    ops = errors = 0
    lat: List[float] = []
    while time.monotonic() < until:
        key = "key%d" % rnd.randrange(keys)
        t0 = time.perf_counter()
        try:
            if rnd.random() < 0.1:
                c.set(key, value, noreply=False)
            else:
                c.get(key)
            ops += 1
        except Exception:
            errors += 1
        lat.append(time.perf_counter() - t0)
    c.close()
    out.append((ops, errors, lat))


def _client_proc(port: int, conns: int, keys: int, seconds: float, seed: int,
                 queue: Any) -> None:
    until = time.monotonic() + seconds
    out: List[Any] = []
    threads = [threading.Thread(target=_connection, args=(port, keys, until, seed * 100 + i,
                                                          out))
               for i in range(conns)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    lat = sorted(x for _o, _e, ls in out for x in ls)
    queue.put((sum(o for o, _e, _l in out), sum(e for _o, e, _l in out),
               lat[len(lat) // 2] if lat else 0.0, lat[int(len(lat) * 0.99)] if lat else 0.0))


def drive(port: int, args: argparse.Namespace) -> Dict[str, float]:
    """ops/s, errors, p50 and p99 latency (ms) of the mix against ``port``."""
    queue: Any = multiprocessing.Queue()
    per = [args.connections // args.procs + (1 if i < args.connections % args.procs else 0)
           for i in range(args.procs)]
    procs = [multiprocessing.Process(target=_client_proc,
                                     args=(port, n, args.keys, args.seconds, i, queue))
             for i, n in enumerate(per)]
    for p in procs:
        p.start()
    results = [queue.get(timeout=args.seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    ops = sum(r[0] for r in results)
    return {"ops_s": ops / args.seconds, "errors": sum(r[1] for r in results),
            "p50_ms": max(r[2] for r in results) * 1e3,
            "p99_ms": max(r[3] for r in results) * 1e3}


def preload(port: int, keys: int) -> None:
    from pymemcache.client.base import Client
    c = Client(("127.0.0.1", port), timeout=10)
    c.set_many({"key%d" % i: b"v" * 100 for i in range(keys)}, noreply=False)
    c.close()


def main(argv: Any = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--keys", type=int, default=1000)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args(argv)
    mc_port = free_port()
    backing = TxcbTwistd(["--ephemeral", "--memcached", str(mc_port)]).start()
    proxy = None
    try:
        proxy = ProxyTwistd(backing.port).start()
        preload(mc_port, args.keys)
        rows: List[Tuple[Dict[str, float], Dict[str, float]]] = []
        for _ in range(args.rounds):
            rows.append((drive(mc_port, args), drive(proxy.port, args)))
        report(rows, args)
    finally:
        if proxy is not None:
            proxy.remove()
        backing.remove()
    return 0


def report(rows: List[Tuple[Dict[str, float], Dict[str, float]]],
           args: argparse.Namespace) -> None:
    print("90/10 get/set, %d connections, %d keys, %.0f s per run"
          % (args.connections, args.keys, args.seconds))
    print("%-6s %12s %12s %8s %18s %18s" % ("round", "direct op/s", "proxy op/s", "ratio",
                                           "direct p50/p99 ms", "proxy p50/p99 ms"))
    for i, (d, p) in enumerate(rows, 1):
        print("%-6d %12.0f %12.0f %8.2f %8.2f/%-9.2f %8.2f/%-9.2f   errors %d/%d" % (
            i, d["ops_s"], p["ops_s"], p["ops_s"] / d["ops_s"], d["p50_ms"], d["p99_ms"],
            p["p50_ms"], p["p99_ms"], d["errors"], p["errors"]))


if __name__ == "__main__":
    sys.exit(main())
