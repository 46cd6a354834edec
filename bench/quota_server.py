"""
A stand-in for ``twistd txcb --data-dir D --memory-quota N`` while that
option is not in this tree: a persistent bucket with a RAM quota, served on
loopback by the netstring (``--port``) and memcached (``--memcached``)
endpoints, with the heap trimmer twistd txcb runs.  SIGTERM closes it
(listeners first, then the bucket, which writes its queue).

    python -m bench.quota_server --data-dir D --memory-quota BYTES \
        --port P [--memcached M]
"""

from __future__ import annotations

import argparse
import sys
from typing import List, Optional

from twisted.application.service import MultiService

from txcb.buckets.persistent import PersistentBucket
from txcb.server.core import ServerStats
from txcb.server.memcached import MemcachedServerFactory
from txcb.server.netstring import BucketServerFactory
from txcb.service.listen import BucketService, ListenService
from txcb.service.memory import MemoryTrimmer, glibc_heap
from txcb.service.reactor import install_default


def build(reactor: object, data_dir: str, quota: int, port: int,
          memcached: Optional[int]) -> MultiService:
    """The application: the bucket's service first, then the listeners."""
    bucket = PersistentBucket(data_dir, clock=reactor, memory_quota=quota, start=False)
    top = MultiService()
    BucketService(bucket).setServiceParent(top)
    MemoryTrimmer(reactor, glibc_heap()).setServiceParent(top)
    stats = ServerStats(clock=reactor)
    ListenService("tcp:%d:interface=127.0.0.1" % port, BucketServerFactory(bucket, stats=stats),
                  reactor).setServiceParent(top)
    if memcached:
        ListenService("tcp:%d:interface=127.0.0.1" % memcached,
                      MemcachedServerFactory(bucket, stats=stats, clock=reactor),
                      reactor).setServiceParent(top)
    return top


def main(argv: Optional[List[str]] = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-dir", required=True)
    p.add_argument("--memory-quota", type=int, required=True, help="bytes")
    p.add_argument("--port", type=int, required=True, help="netstring port")
    p.add_argument("--memcached", type=int, default=None, help="memcached port")
    p.add_argument("--profile", default=None,
                   help="write a cProfile of the reactor thread to this file at exit")
    a = p.parse_args(argv)
    install_default()
    from twisted.internet import reactor
    top = build(reactor, a.data_dir, a.memory_quota, a.port, a.memcached)
    top.startService()
    reactor.addSystemEventTrigger("before", "shutdown", top.stopService)
    if a.profile:
        import cProfile
        cProfile.runctx("reactor.run()", globals(), {"reactor": reactor}, a.profile)
    else:
        reactor.run()


if __name__ == "__main__":
    main(sys.argv[1:])
