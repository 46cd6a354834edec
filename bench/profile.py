"""
Profile one side of a benchmark job with cProfile (the other side runs
normally in its own process).  For finding hot spots, not for figures.

    python -m bench.profile server get 100        # the txcb server, 100 in flight gets
    python -m bench.profile client set 1          # the txcb client, one upsert at a time
    python -m bench.profile server get 1 --multi 100 --duration 5 --sort cumulative
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import sys
import threading

from bench.run import Server, free_port, run_worker, twistd_argv


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m bench.profile")
    p.add_argument("side", choices=["server", "client"])
    p.add_argument("op", choices=["get", "set"])
    p.add_argument("depth", type=int, help="requests in flight per connection")
    p.add_argument("--multi", type=int, default=0)
    p.add_argument("--conns", type=int, default=1)
    p.add_argument("--duration", type=float, default=3.0)
    p.add_argument("--sort", default="tottime")
    p.add_argument("--limit", type=int, default=30)
    p.add_argument("--keys", type=int, default=1000)
    a = p.parse_args()
    job = {"kind": "ops", "client": "txcb", "op": a.op, "depth": a.depth, "conns": a.conns,
           "multi": a.multi, "nkeys": a.keys, "random": False, "value_size": 100,
           "duration": a.duration, "warmup": 0.3}
    load = {"kind": "load", "server": "txcb", "value_size": 100, "start": 0, "stop": a.keys}
    prof = cProfile.Profile()
    if a.side == "server":
        from twisted.internet import reactor

        from txcb.buckets.embedded import EmbeddedBucket
        from txcb.server.netstring import BucketServerFactory

        bucket = EmbeddedBucket(clock=reactor)
        listening = reactor.listenTCP(0, BucketServerFactory(bucket),  # type: ignore
                                      interface="127.0.0.1")
        job["port"] = load["port"] = listening.getHost().port  # type: ignore
        job["server_pid"] = os.getpid()
        out = {}

        def drive() -> None:
            run_worker(load, 120)
            reactor.callFromThread(prof.enable)  # type: ignore[attr-defined]  # reactor thread
            out.update(run_worker(job, 120))
            reactor.callFromThread(prof.disable)  # type: ignore[attr-defined]
            reactor.callFromThread(reactor.stop)  # type: ignore[attr-defined]
        reactor.callWhenRunning(lambda: threading.Thread(target=drive, daemon=True).start())
        reactor.run()
        print(json.dumps(out))
    else:
        free = free_port()
        log = os.path.join("/tmp", "txcb-profile-%d.log" % free)
        srv = Server("txcb", twistd_argv() + ["-n", "--pidfile=", "--logfile", log, "txcb",
                                              "-p", "tcp:%d:interface=127.0.0.1" % free],
                     free, log + ".out")
        try:
            srv.wait_ready()
            job["port"] = load["port"] = free
            job["server_pid"] = srv.pid
            run_worker(load, 120)
            from bench import worker
            prof.enable()
            out = worker.run_twisted(job)
            prof.disable()
            print(json.dumps(out))
        finally:
            srv.stop()
    stats = pstats.Stats(prof)
    stats.sort_stats(a.sort).print_stats(a.limit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
