"""
Benchmark (not a test): txcb's MemcachedPool against Twisted's MemCacheProtocol.

    python -m bench.pool_bench [--ops 30000] [--inflight 100] [--multi 1000]
                               [--rounds 3] [--value-size 100] [--json FILE]

Starts 3 memcached servers on free loopback ports (stopped by pid at the
end) and measures, back to back in one process on the same reactor:

* pipelined get and upsert, ``--inflight`` requests outstanding, through
  the pool over 3 servers, the pool over 1 server, and Twisted's
  ``MemCacheProtocol`` (text protocol) against 1 server;
* ``get_multi`` of 100 keys (one GETKQ batch per server, NOOP-closed)
  against ``MemCacheProtocol.getMultiple`` of the same 100 keys.

Each figure is the best of ``--rounds`` runs; the ratios pool / MemCacheProtocol
are what to compare (absolute numbers drift on a shared machine).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from typing import Any, Callable, Dict, List, Optional

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from twisted.internet import defer, task  # noqa: E402
from twisted.internet.endpoints import TCP4ClientEndpoint, connectProtocol  # noqa: E402
from twisted.protocols.memcache import MemCacheProtocol  # noqa: E402

from tests.support import procs  # noqa: E402
from txcb.buckets.memcached import MemcachedPool  # noqa: E402


def pipelined(reactor: Any, n: int, inflight: int, op: Callable[[int], defer.Deferred]
              ) -> defer.Deferred:
    """Run ``op(i)`` for i in range(n) with ``inflight`` outstanding; fires seconds."""
    done: defer.Deferred[float] = defer.Deferred()
    state = {"next": 0, "finished": 0, "errors": 0}
    t0 = time.perf_counter()

    def one(_: Any) -> None:
        state["finished"] += 1
        i = state["next"]
        if i < n:
            state["next"] = i + 1
            op(i).addBoth(one)
        elif state["finished"] == n:
            done.callback(time.perf_counter() - t0)

    def failed(f: Any) -> None:
        state["errors"] += 1
        one(None)

    for _ in range(min(inflight, n)):
        i = state["next"]
        state["next"] = i + 1
        op(i).addCallbacks(one, failed)
    return done


@defer.inlineCallbacks
def sequential(n: int, op: Callable[[int], defer.Deferred]) -> Any:
    t0 = time.perf_counter()
    for i in range(n):
        yield op(i)
    return time.perf_counter() - t0


@defer.inlineCallbacks
def run(reactor: Any, args: argparse.Namespace) -> Any:
    servers = [procs.Memcached().start() for _ in range(3)]
    results: Dict[str, Dict[str, float]] = {}
    try:
        pool3 = MemcachedPool([m.address for m in servers], reactor=reactor)
        pool1 = MemcachedPool([servers[0].address], reactor=reactor)
        mcp = yield connectProtocol(TCP4ClientEndpoint(reactor, "127.0.0.1", servers[0].port),
                                    MemCacheProtocol())
        nkeys = 1000
        keys = ["key:%06d" % i for i in range(nkeys)]
        bkeys = [k.encode() for k in keys]
        value = b"v" * args.value_size
        yield pool3.upsert_multi({k: value for k in keys})
        yield pool1.upsert_multi({k: value for k in keys})
        multi_keys = keys[:100]
        multi_bkeys = bkeys[:100]
        n, inflight = args.ops, args.inflight

        clients = {
            "pool/3 servers": {
                "get": lambda i: pool3.get(keys[i % nkeys]),
                "upsert": lambda i: pool3.upsert(keys[i % nkeys], value),
                "get_multi(100)": lambda i: pool3.get_multi(multi_keys),
            },
            "pool/1 server": {
                "get": lambda i: pool1.get(keys[i % nkeys]),
                "upsert": lambda i: pool1.upsert(keys[i % nkeys], value),
                "get_multi(100)": lambda i: pool1.get_multi(multi_keys),
            },
            "MemCacheProtocol/1 server": {
                "get": lambda i: mcp.get(bkeys[i % nkeys]),
                "upsert": lambda i: mcp.set(bkeys[i % nkeys], value),
                "get_multi(100)": lambda i: mcp.getMultiple(multi_bkeys),
            },
        }
        # Warm up every path once.
        for ops in clients.values():
            yield pipelined(reactor, 2000, inflight, ops["get"])
            yield sequential(50, ops["get_multi(100)"])
        for rnd in range(args.rounds):
            for name, ops in clients.items():
                r = results.setdefault(name, {})
                for what in ("get", "upsert"):
                    secs = yield pipelined(reactor, n, inflight, ops[what])
                    r[what] = max(r.get(what, 0.0), n / secs)
                secs = yield sequential(args.multi, ops["get_multi(100)"])
                r["get_multi(100)"] = max(r.get("get_multi(100)", 0.0), args.multi / secs)
        yield pool3.close()
        yield pool1.close()
        mcp.transport.loseConnection()
        mcp.setTimeout(None)
    finally:
        for m in servers:
            m.stop()
    report(results, args)


def report(results: Dict[str, Dict[str, float]], args: argparse.Namespace) -> None:
    base = results["MemCacheProtocol/1 server"]
    print("python %s, %s; %d ops, %d in flight, %d multi-gets, value %d B, best of %d"
          % (platform.python_version(), platform.machine(), args.ops, args.inflight,
             args.multi, args.value_size, args.rounds))
    print("%-28s %14s %14s %18s" % ("client", "get ops/s", "upsert ops/s",
                                    "get_multi(100)/s"))
    for name, r in results.items():
        print("%-28s %14.0f %14.0f %18.0f" % (name, r["get"], r["upsert"],
                                               r["get_multi(100)"]))
    for name, r in results.items():
        if r is base:
            continue
        print("ratio %-22s %14.2f %14.2f %18.2f" % (
            name + " / MCP", r["get"] / base["get"], r["upsert"] / base["upsert"],
            r["get_multi(100)"] / base["get_multi(100)"]))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--ops", type=int, default=30000, help="requests per pipelined run")
    p.add_argument("--inflight", type=int, default=100, help="requests outstanding")
    p.add_argument("--multi", type=int, default=1000, help="get_multi(100) calls per run")
    p.add_argument("--rounds", type=int, default=3, help="runs; the best counts")
    p.add_argument("--value-size", type=int, default=100)
    p.add_argument("--json", default=None, help="also write the figures here")
    args = p.parse_args(argv)
    if not procs.have(procs.MEMCACHED):
        print("memcached is not installed", file=sys.stderr)
        return 2
    task.react(lambda reactor: run(reactor, args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
