"""
``twistd txcb``: serve a bucket on one or more endpoints.

Everything is wired here, at the edge: the options pick a bucket provider and
the endpoints, and the services own their lifetimes (the bucket is closed,
and so flushed, when the service stops).
"""

from __future__ import annotations

from typing import Any, List, Optional

from twisted.application.service import IServiceMaker, MultiService, Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python import usage
from twisted.python.failure import Failure

from txcb._validate import DEFAULT_MAX_VALUE_SIZE
from txcb.server import BucketServerFactory, ServerStats

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
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["port"] = []

    def opt_port(self, value: str) -> None:
        """Endpoint to serve the netstring protocol on (repeatable; default
        tcp:11222:interface=127.0.0.1)."""
        self["port"].append(endpoint_description(value))

    opt_p = opt_port

    def postOptions(self) -> None:
        if not self["port"]:
            self["port"] = [DEFAULT_PORT]
        if self["max-value-size"] < 1:
            raise usage.UsageError("--max-value-size must be positive")
        if self["max-inflight"] < 1:
            raise usage.UsageError("--max-inflight must be positive")


class BucketService(Service):
    """Owns a bucket: closes it when the application stops."""

    def __init__(self, bucket: Any) -> None:
        self.bucket = bucket

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
    """The bucket the options ask for."""
    from txcb.embedded import EmbeddedBucket
    return EmbeddedBucket(clock=reactor, max_value_size=options["max-value-size"],
                          pager_interval=options["pager-interval"])


def makeService(options: Options, reactor: Optional[Any] = None) -> MultiService:
    if reactor is None:
        from twisted.internet import reactor
    top = MultiService()
    bucket = make_bucket(options, reactor)
    BucketService(bucket).setServiceParent(top)
    stats = ServerStats()
    factory = BucketServerFactory(bucket, max_inflight=options["max-inflight"], stats=stats)
    for description in options["port"]:
        ListenService(description, factory, reactor).setServiceParent(top)
    return top
