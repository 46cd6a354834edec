"""
Testing support for applications that use txcb.

Your trial tests can exercise code that talks to a bucket without sockets or
real time:

- :func:`memory_bucket` -- an embedded bucket on a :class:`task.Clock`;
- :class:`InMemoryConnection` -- a real txcb client connected to a real txcb
  server in memory (bytes are pumped between them, as in ``treq.testing``),
  so the whole wire path runs;
- :class:`FaultyBucket` -- wraps any bucket to make chosen operations fail,
  stall until the clock moves, or hang (to test your timeouts and errbacks).

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

from typing import Any, Dict, List, Optional, Tuple

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, fail, maybeDeferred
from twisted.internet.error import ConnectionLost
from twisted.internet.task import Clock
from twisted.test.iosim import FakeTransport, IOPump, connect
from zope.interface import implementer

from txcb.multi import MultiMixin
from txcb.client.remote import BucketClientProtocol, RemoteBucket
from txcb.buckets.embedded import EmbeddedBucket
from txcb.interfaces import IBucket
from txcb.server.netstring import BucketServerFactory

__all__ = ["memory_bucket", "InMemoryConnection", "FaultyBucket"]


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
