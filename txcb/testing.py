"""
Testing support for applications that use txcb.

Your trial tests can exercise code that talks to a bucket without sockets or
real time:

- :func:`memory_bucket` -- an embedded bucket on a :class:`task.Clock`;
- :class:`InMemoryConnection` -- a real txcb client connected to a real txcb
  server in memory (bytes are pumped between them, as in ``treq.testing``),
  so the whole wire path runs;
- :class:`FaultyBucket` -- wraps any bucket to make chosen operations fail,
  stall until the clock moves, or hang (to test your timeouts and errbacks);
- :func:`couchbase_endpoint` -- a Couchbase KV endpoint in your test's own
  process, for code written against the official SDK's ``txcouchbase`` (or
  ``acouchbase``) API, with :func:`import_txcouchbase` to import that SDK
  under ``trial --reactor=asyncio``.

Example::

    from twisted.trial.unittest import SynchronousTestCase
    from txcb.testing import InMemoryConnection

    class CartTests(SynchronousTestCase):
        def test_add_item(self):
            conn = InMemoryConnection()
            d = add_item(conn.client, "cart:1", "apple")   # your code
            conn.flush()
            self.successResultOf(d)
            self.assertEqual(conn.bucket.get_sync("cart:1").value, ["apple"])
"""

from __future__ import annotations

import importlib
import sys
from types import ModuleType
from typing import Any, Dict, List, Optional, Sequence, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock, deferLater
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.reflect import qual
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from txcb.multi import MultiMixin
from txcb.client.remote import BucketClientProtocol, RemoteBucket
from txcb.buckets.embedded import EmbeddedBucket
from txcb.interfaces import IBucket
from txcb.keyspaces import BucketSpace, Keyspaces
from txcb.server.couchbase import CouchbaseServerFactory
from txcb.server.netstring import BucketServerFactory

__all__ = ["memory_bucket", "InMemoryConnection", "FaultyBucket", "CouchbaseEndpoint",
           "couchbase_endpoint", "import_txcouchbase"]


def memory_bucket(clock: Optional[Clock] = None, **kwargs: Any) -> EmbeddedBucket:
    """An embedded bucket driven by ``clock`` (a new :class:`Clock` if None)."""
    kwargs.setdefault("pager_interval", 0)
    return EmbeddedBucket(clock=clock if clock is not None else Clock(), **kwargs)


class InMemoryConnection:
    """
    A txcb client and server joined in memory.

    :param server_factory: the netstring server factory to connect to (one
        you configured or subclassed), instead of a new
        :class:`~txcb.server.netstring.BucketServerFactory` serving ``bucket``;
        give one or the other, not both.

    :ivar client: the :class:`~txcb.client.remote.RemoteBucket` to hand to your code.
    :ivar bucket: the bucket the server serves (an embedded one by default).
    :ivar clock: the clock of the client's timeouts (and of the default bucket).

    Requests travel only when you call :meth:`flush`.
    """

    def __init__(self, bucket: Any = None, clock: Optional[Clock] = None,
                 timeout: float = 2.5, server_factory: Optional[BucketServerFactory] = None
                 ) -> None:
        self.clock = clock if clock is not None else Clock()
        if server_factory is None:
            server_factory = BucketServerFactory(
                bucket if bucket is not None else memory_bucket(self.clock))
        elif bucket is not None:
            raise TypeError("give a bucket or a server_factory, not both")
        self.server_factory = server_factory
        self.bucket = server_factory.bucket
        server = self.server_factory.buildProtocol(IPv4Address("TCP", "127.0.0.1", 11222))
        self.client_protocol = BucketClientProtocol(clock=self.clock, timeout=timeout)
        self.pump: IOPump = connect(
            server, FakeTransport(server, isServer=True),
            self.client_protocol, FakeTransport(self.client_protocol, isServer=False),
            greet=True, clock=self.clock)
        self.client = RemoteBucket(self.client_protocol, timeout=timeout)

    def flush(self) -> None:
        """Move bytes both ways until neither side has anything to send."""
        self.pump.flush()

    def disconnect(self) -> None:
        """
        Drop the connection as a network failure would: bytes not yet
        delivered are lost, and both sides see ConnectionLost.
        """
        for io in (self.pump.clientIO, self.pump.serverIO):
            io.stream = []
            io.disconnectReason = ConnectionLost("the test dropped the connection")
        self.pump.clientIO.loseConnection()
        self.flush()


_SINGLE_OPS = ("get", "upsert", "insert", "replace", "remove", "touch", "lock", "unlock",
               "counter", "append", "prepend", "endure", "stats", "flush", "scan",
               "lookup_in", "mutate_in")


@implementer(IBucket)
class FaultyBucket(MultiMixin):
    """
    Wraps any bucket and injects faults into chosen operations.  ``*_multi``
    calls go through the faulty single-key operations, key by key.

    It provides :class:`~txcb.interfaces.IBucket` only, not
    :class:`~txcb.interfaces.ISyncBucket` (whatever the wrapped bucket
    provides), so a server calls its Deferred methods and every request
    meets the faults.

    :param bucket: the bucket to wrap.
    :param clock: the clock :meth:`delay` waits on.
    """

    def __init__(self, bucket: Any, clock: Optional[Clock] = None) -> None:
        self.wrapped = bucket
        self.clock = clock if clock is not None else Clock()
        self._faults: Dict[str, List[Tuple[str, Any, int]]] = {}
        self.calls: List[Tuple[str, tuple, dict]] = []

    @property
    def transcoder(self) -> Any:
        return self.wrapped.transcoder

    def fail(self, op: str, error: Exception, times: int = -1) -> None:
        """Make ``op`` errback ``error`` (the next ``times`` calls; -1: always)."""
        self._add(op, ("fail", error, times))

    def delay(self, op: str, seconds: float, times: int = -1) -> None:
        """Make ``op`` fire only after the clock moves ``seconds``."""
        self._add(op, ("delay", seconds, times))

    def hang(self, op: str, times: int = -1) -> None:
        """Make ``op`` never fire (until cancelled): to test your timeouts."""
        self._add(op, ("hang", None, times))

    def heal(self, op: Optional[str] = None) -> None:
        """Remove the faults of ``op`` (or of every operation)."""
        if op is None:
            self._faults.clear()
        else:
            self._faults.pop(op, None)

    def _add(self, op: str, fault: Tuple[str, Any, int]) -> None:
        if op not in _SINGLE_OPS and op != "close":
            raise ValueError("unknown operation %r" % (op,))
        self._faults.setdefault(op, []).append(fault)

    def _call(self, op: str, args: tuple, kwargs: dict) -> Deferred:
        self.calls.append((op, args, kwargs))
        faults = self._faults.get(op)
        if faults:
            kind, arg, times = faults[0]
            if times > 0:
                times -= 1
                if times:
                    faults[0] = (kind, arg, times)
                else:
                    faults.pop(0)
            if kind == "fail":
                return fail(arg)
            if kind == "hang":
                return Deferred()
            return self._delayed(arg, op, args, kwargs)
        return maybeDeferred(getattr(self.wrapped, op), *args, **kwargs)

    def _delayed(self, seconds: float, op: str, args: tuple, kwargs: dict) -> Deferred:
        d: Deferred = Deferred(lambda _d: call.cancel())

        def run() -> None:
            maybeDeferred(getattr(self.wrapped, op), *args, **kwargs).chainDeferred(d)
        call = self.clock.callLater(seconds, run)
        return d

    def get(self, key: Any, ttl: int = 0, quiet: bool = False) -> Deferred:
        return self._call("get", (key,), {"ttl": ttl, "quiet": quiet})

    def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._call("upsert", (key, value), dict(
            cas=cas, ttl=ttl, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def insert(self, key: Any, value: Any, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._call("insert", (key, value), dict(
            ttl=ttl, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._call("replace", (key, value), dict(
            cas=cas, ttl=ttl, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0) -> Deferred:
        return self._call("remove", (key,), dict(
            cas=cas, quiet=quiet, persist_to=persist_to, replicate_to=replicate_to))

    def touch(self, key: Any, ttl: int) -> Deferred:
        return self._call("touch", (key, ttl), {})

    def lock(self, key: Any, ttl: int = 15) -> Deferred:
        return self._call("lock", (key,), {"ttl": ttl})

    def unlock(self, key: Any, cas: int) -> Deferred:
        return self._call("unlock", (key, cas), {})

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                ttl: int = 0) -> Deferred:
        return self._call("counter", (key,), dict(delta=delta, initial=initial, ttl=ttl))

    def append(self, key: Any, value: Any, cas: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._call("append", (key, value), dict(
            cas=cas, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def prepend(self, key: Any, value: Any, cas: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0) -> Deferred:
        return self._call("prepend", (key, value), dict(
            cas=cas, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> Deferred:
        return self._call("endure", (key,), dict(
            persist_to=persist_to, replicate_to=replicate_to, cas=cas,
            check_removed=check_removed, timeout=timeout, interval=interval))

    def lookup_in(self, key: Any, *specs: Any, access_deleted: bool = False) -> Deferred:
        return self._call("lookup_in", (key,) + specs, {"access_deleted": access_deleted})

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, preserve_expiry: bool = False) -> Deferred:
        return self._call("mutate_in", (key,) + specs, dict(
            cas=cas, ttl=ttl, upsert_doc=upsert_doc, insert_doc=insert_doc,
            persist_to=persist_to, replicate_to=replicate_to, preserve_expiry=preserve_expiry))

    def stats(self) -> Deferred:
        return self._call("stats", (), {})

    def flush(self) -> Deferred:
        return self._call("flush", (), {})

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000,
             batch_bytes: int = 1048576) -> Deferred:
        """Faults apply to opening the scan (its first batch)."""
        return self._call("scan", (), dict(prefix=prefix, start=start, end=end,
                                           ids_only=ids_only, batch_size=batch_size,
                                           batch_bytes=batch_bytes))

    def close(self) -> Deferred:
        return self._call("close", (), {})

    @property
    def max_value_size(self) -> int:
        """The wrapped bucket's value limit (servers size their buffers by it)."""
        return self.wrapped.max_value_size


class _TrackingFactory(WrappingFactory[ProtocolWrapper]):
    """Knows its open connections, to drop them all and learn when they are gone."""

    def __init__(self, wrapped: Any) -> None:
        super().__init__(wrapped)
        self._waiting: List[Deferred] = []

    def buildProtocol(self, addr: Any) -> Any:
        inner = self.wrappedFactory.buildProtocol(addr)
        return None if inner is None else self.protocol(self, inner)

    def unregisterProtocol(self, p: Any) -> None:
        super().unregisterProtocol(p)
        if not self.protocols:
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(None)

    def drop_all(self) -> Deferred:
        """Abort every connection; fires when the last one is lost."""
        if not self.protocols:
            return succeed(None)
        d: Deferred = Deferred()
        self._waiting.append(d)
        for p in list(self.protocols):
            p.transport.abortConnection()
        return d


class CouchbaseEndpoint:
    """
    txcb's Couchbase KV endpoint listening on ``127.0.0.1`` in this process:
    the official SDK's asynchronous APIs (``txcouchbase`` on this reactor,
    ``acouchbase`` on its loop) talk to it like to a one-node cluster.  Make
    one with :func:`couchbase_endpoint`.

    :ivar connection_string: ``couchbase://127.0.0.1:PORT``, for ``TxCluster``.
    :ivar bucket: what the bucket's default collection is stored in (an
        embedded bucket unless you gave one): look at it from your tests.
    :ivar collections: ``{"scope.collection": bucket}`` of the named ones.
    :ivar port: the IListeningPort.

    The blocking ``couchbase.cluster.Cluster`` waits for replies on the
    calling thread: in the reactor's thread nothing would answer it, so use
    it only from another thread (or against ``twistd txcb``).
    """

    def __init__(self, reactor: Any, bucket: Any = None, name: str = "default",
                 collections: Sequence[str] = (),
                 credentials: Optional[Dict[bytes, bytes]] = None) -> None:
        self.bucket = bucket if bucket is not None else _real_time_bucket(reactor)
        space = BucketSpace(name, self.bucket)
        self.collections: Dict[str, Any] = {}
        for path in collections:
            scope, _, collection = path.partition(".")
            self.collections[path] = space.add(scope, collection,
                                               _real_time_bucket(reactor)).bucket
        self._factory = _TrackingFactory(CouchbaseServerFactory(
            Keyspaces([space]), credentials=credentials, clock=reactor))
        self.port = reactor.listenTCP(0, self._factory, interface="127.0.0.1")
        self.connection_string = "couchbase://127.0.0.1:%d" % (self.port.getHost().port,)

    @property
    def open_connections(self) -> int:
        """How many client connections are open now (an SDK cluster opens two)."""
        return len(self._factory.protocols)

    def stop(self) -> Deferred:
        """Stop listening and drop the connections; fires when all are closed."""
        d = maybeDeferred(self.port.stopListening)
        d.addCallback(lambda _: self._factory.drop_all())
        return d


def _real_time_bucket(reactor: Any) -> EmbeddedBucket:
    """An embedded bucket whose expiry follows ``reactor``'s clock, no pager."""
    return EmbeddedBucket(clock=reactor, pager_interval=0)


def couchbase_endpoint(reactor: Any, bucket: Any = None, name: str = "default",
                       collections: Sequence[str] = (),
                       credentials: Optional[Dict[bytes, bytes]] = None) -> Deferred:
    """
    Listen with a :class:`CouchbaseEndpoint` on a free loopback port, serving
    ``bucket`` (a new embedded one if None) as the bucket ``name``, with the
    named ``collections`` (``"scope.collection"``, each its own embedded
    bucket).  ``credentials`` is ``{user: password}`` (bytes) the SDK must
    present; None accepts any.

    The Deferred fires one reactor turn later, with the reactor running: a
    ``txcouchbase`` cluster may be created as soon as it fires (it refuses to
    be created while the reactor is not running, which under trial is the
    case while ``setUp`` starts).  Stop it at cleanup with
    :meth:`CouchbaseEndpoint.stop`.
    """
    endpoint = CouchbaseEndpoint(reactor, bucket, name, collections, credentials)
    return deferLater(reactor, 0, lambda: endpoint)


def import_txcouchbase() -> ModuleType:
    """
    Import the official ``txcouchbase`` into this process and return it.

    Importing ``txcouchbase`` installs Twisted's asyncio reactor, and fails
    with ReactorAlreadyInstalledError when a reactor is installed already --
    as under ``trial --reactor=asyncio``, the reactor it wants.  Call this at
    the top of a test module, before importing code that imports
    ``txcouchbase``: with the asyncio reactor installed it imports the SDK
    without installing a second one; with no reactor installed the import
    installs it as usual; with another reactor it raises RuntimeError.
    """
    if "txcouchbase" in sys.modules:
        return sys.modules["txcouchbase"]
    if "twisted.internet.reactor" not in sys.modules:
        return importlib.import_module("txcouchbase")
    from twisted.internet import asyncioreactor, reactor
    if not isinstance(reactor, asyncioreactor.AsyncioSelectorReactor):
        raise RuntimeError("txcouchbase needs Twisted's asyncio reactor, but %s is "
                           "installed: run trial --reactor=asyncio"
                           % (qual(type(reactor)),))
    install = asyncioreactor.install
    asyncioreactor.install = lambda eventloop=None: None
    try:
        return importlib.import_module("txcouchbase")
    finally:
        asyncioreactor.install = install
