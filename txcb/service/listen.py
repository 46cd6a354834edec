"""
The services an application built by ``twistd txcb`` is made of: one that
owns the bucket, and one per listening endpoint (the netstring and memcached
protocols, the metrics page).  Each owns one lifetime, so the application
stops in the reverse order it started: listeners first, the bucket last.
"""

from __future__ import annotations

from typing import Any, List

from twisted.application.service import Service
from twisted.internet.endpoints import serverFromString
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["BucketService", "ListenService"]

_log = Logger()


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
