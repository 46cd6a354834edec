"""
``twistd txcb``: serve a bucket on one or more endpoints.

Everything is wired here, at the edge: the options pick a bucket provider and
the endpoints, and the services own their lifetimes (the bucket is closed,
and so flushed, when the service stops).
"""

from __future__ import annotations

import os
from typing import Any, List, Optional

from twisted.application.service import IServiceMaker, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from txcb.validation import DEFAULT_MAX_VALUE_SIZE
from txcb.server.core import ServerStats
from txcb.server.netstring import BucketServerFactory

__all__ = ["Options", "makeService", "make_bucket", "BucketService", "ListenService",
           "DEFAULT_PORT", "endpoint_description"]

DEFAULT_PORT = "tcp:11222:interface=127.0.0.1"

_log = Logger()


def endpoint_description(value: str) -> str:
    """A bare port number means that port on the loopback interface only."""
    if value.isdigit():
        return "tcp:%s:interface=127.0.0.1" % (value,)
    return value


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve a Couchbase-style key-value bucket over txcb's netstring "
                "protocol.  Endpoints are Twisted server endpoint strings "
                "(tcp:, unix:, ssl:...); a bare port number listens on 127.0.0.1.")

    optParameters = [
        ["max-value-size", None, DEFAULT_MAX_VALUE_SIZE,
         "Largest value accepted, in bytes.", int],
        ["max-inflight", None, 1024,
         "Requests one connection may have outstanding before the server "
         "stops reading from it.", int],
        ["pager-interval", None, 10.0,
         "Seconds between runs of the expiry pager.", float],
        ["backend", None, None,
         "Serve a pool of memcached servers instead of a local bucket: "
         "memcached:HOST:PORT[:WEIGHT],HOST:PORT[:WEIGHT],... (binary protocol, "
         "keys placed like twemproxy with hash md5).", str],
        ["distribution", None, "ketama",
         "Key distribution over the --backend servers: ketama or modula.", str],
        ["data-dir", None, "txcb-data",
         "Directory of the persistent bucket's data (created if missing).", str],
        ["max-connections", None, 1024,
         "Most client connections open at once, over all endpoints (netstring "
         "and memcached together); more are refused.", int],
        ["auth-file", None, None,
         "File of user:password lines: memcached clients must then authenticate "
         "(binary: SASL PLAIN; ASCII: memcached's -Y style).", str],
        ["metrics", None, None,
         "Endpoint to serve Prometheus metrics on, at /metrics (off by default; "
         "a bare port number listens on 127.0.0.1).", endpoint_description],
    ]

    optFlags = [
        ["ephemeral", None, "Keep the bucket in memory only (nothing is written to "
         "disk; a restart loses everything)."],
        ["auto-eject-hosts", None, "With --backend: take a failing memcached server out "
         "of the key distribution (moves its keys; twemproxy's auto_eject_hosts)."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["port"] = []
        self["memcached"] = []

    def opt_port(self, value: str) -> None:
        """Endpoint to serve the netstring protocol on (repeatable; default
        tcp:11222:interface=127.0.0.1)."""
        self["port"].append(endpoint_description(value))

    opt_p = opt_port

    def opt_memcached(self, value: str) -> None:
        ("Endpoint to serve the memcached ASCII and binary protocols on (repeatable; "
         "off by default; a bare port number listens on 127.0.0.1).")
        self["memcached"].append(endpoint_description(value))

    def postOptions(self) -> None:
        if not self["port"]:
            self["port"] = [DEFAULT_PORT]
        if self["max-value-size"] < 1:
            raise usage.UsageError("--max-value-size must be positive")
        if self["max-inflight"] < 1:
            raise usage.UsageError("--max-inflight must be positive")
        if self["distribution"] not in ("ketama", "modula"):
            raise usage.UsageError("--distribution must be ketama or modula")
        if self["backend"] is not None:
            from txcb.buckets.memcached import parse_backend
            try:
                parse_backend(self["backend"])
            except ValueError as e:
                raise usage.UsageError("--backend: %s" % (e,))
        if self["max-connections"] < 1:
            raise usage.UsageError("--max-connections must be positive")
        self["credentials"] = None
        if self["auth-file"] is not None:
            from txcb.server.memcached import load_auth_file
            try:
                self["credentials"] = load_auth_file(self["auth-file"])
            except (OSError, ValueError) as e:
                raise usage.UsageError("--auth-file: %s" % (e,))
        # Absolute now: a daemonized twistd changes directory before start-up.
        self["data-dir"] = os.path.abspath(self["data-dir"])


class BucketService(Service):
    """
    Owns a bucket: starts it (a persistent bucket warms up from disk, before
    any later service such as a ListenService starts) and closes it, so
    flushes it, when the application stops.
    """

    def __init__(self, bucket: Any) -> None:
        self.bucket = bucket

    def startService(self) -> None:
        Service.startService(self)
        start = getattr(self.bucket, "start", None)
        if start is not None:
            start()

    def stopService(self) -> Any:
        Service.stopService(self)
        return self.bucket.close()


class ListenService(Service):
    """
    Listens on one endpoint string while running, logging the address.
    A failure to listen stops start-up with the error (twistd exits).
    """

    def __init__(self, description: str, factory: Any, reactor: Any, what: str = "txcb"
                 ) -> None:
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.what = what
        self.port: Any = None

    def startService(self) -> None:
        Service.startService(self)
        result: List[Any] = []
        serverFromString(self.reactor, self.description).listen(self.factory).addBoth(
            result.append)
        if result and isinstance(result[0], Failure):
            result[0].raiseException()
        if result:
            self.port = result[0]
            _log.info("{what} listening on {address} ({description})", what=self.what,
                      address=str(self.port.getHost()), description=self.description)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


def make_bucket(options: Options, reactor: Any) -> Any:
    """The bucket the options ask for (not started: BucketService starts it)."""
    if options["backend"] is not None:
        from txcb.buckets.memcached import MemcachedPool, parse_backend
        size = options["max-value-size"]
        return MemcachedPool(
            parse_backend(options["backend"]), reactor=reactor,
            distribution=options["distribution"], auto_eject_hosts=options["auto-eject-hosts"],
            start=False, **({} if size == DEFAULT_MAX_VALUE_SIZE else {"max_value_size": size}))
    if options["ephemeral"]:
        from txcb.buckets.embedded import EmbeddedBucket
        return EmbeddedBucket(clock=reactor, max_value_size=options["max-value-size"],
                              pager_interval=options["pager-interval"])
    from txcb.buckets.persistent import PersistentBucket
    return PersistentBucket(options["data-dir"], clock=reactor, reactor=reactor,
                            max_value_size=options["max-value-size"],
                            pager_interval=options["pager-interval"], start=False)


def makeService(options: Options, reactor: Optional[Any] = None) -> MultiService:
    if reactor is None:
        # twistd installs a reactor here only if told to (--reactor); else
        # txcb's own (see txcb.service.reactor), where the platform has epoll.
        from txcb.service.reactor import install_default
        install_default()
        from twisted.internet import reactor
    top = MultiService()
    bucket = make_bucket(options, reactor)
    BucketService(bucket).setServiceParent(top)
    stats = ServerStats(max_connections=options["max-connections"])
    factory = BucketServerFactory(bucket, max_inflight=options["max-inflight"], stats=stats)
    factories: List[Any] = [factory]
    for description in options["port"]:
        ListenService(description, factory, reactor).setServiceParent(top)
    if options["memcached"]:
        from txcb.server.memcached import MemcachedServerFactory
        mc_factory = MemcachedServerFactory(
            bucket, stats=stats, credentials=options["credentials"],
            max_inflight=options["max-inflight"], clock=reactor)
        factories.append(mc_factory)
        for description in options["memcached"]:
            ListenService(description, mc_factory, reactor, what="txcb memcached"
                          ).setServiceParent(top)
    if options["metrics"]:
        from txcb.service.metrics import install_metrics
        ListenService(options["metrics"], install_metrics(bucket, factories, stats), reactor,
                      what="txcb metrics").setServiceParent(top)
    return top
