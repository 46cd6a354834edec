"""
The synchronous counterpart of the IBucket contract suite, for blocking
clients (:class:`txcb.client.blocking.Bucket`).

Every behaviour test of :class:`tests.support.contract.BucketContractMixin` runs
again here, unchanged, against the blocking client: its results are handed
to the contract's test bodies as already-fired Deferreds (a returned result
becomes ``succeed(result)``, a raised CouchbaseError becomes ``fail(error)``)
and each test must finish synchronously, without any reactor.  So the
blocking client obeys exactly the asynchronous contract, test for test, and
a test added to the contract applies to it at once.  On top of those,
:class:`SyncBucketContractMixin` has tests of the synchronous face itself:
the method names and signatures match IBucket's, results come back
directly, errors are raised.

A provider's test case mixes in :class:`SyncBucketContractMixin` (with
``twisted.trial.unittest.SynchronousTestCase``) and defines
``make_sync_bucket()`` (a connected blocking bucket, cleaned up by the test
case) and ``advance(seconds)`` (moving the clock of the server's bucket).

:class:`ThreadedServer` is a real txcb server for such tests: an embedded
bucket on a ``task.Clock`` served by its own reactor in a thread, so the
blocking client under test and the server never share a reactor.
"""

from __future__ import annotations

import inspect
import threading
import time
from typing import Any

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock
from twisted.internet.threads import blockingCallFromThread
from twisted.python.failure import Failure

from txcb import errors
from txcb.buckets.embedded import EmbeddedBucket
from txcb.interfaces import IBucket
from txcb.results import MultiResult, OperationResult, ValueResult
from txcb.server.netstring import BucketServerFactory

from tests.support.contract import BucketContractMixin

__all__ = ["SyncBucketContractMixin", "ThreadedServer", "DeferredFacade"]


class ThreadedServer:
    """
    A txcb server running on a reactor of its own in a daemon thread.

    :ivar clock: the ``task.Clock`` of the served bucket (start: now).
    :ivar bucket: the served :class:`EmbeddedBucket`.
    :ivar endpoint: the client endpoint string to reach it.
    """

    def __init__(self, max_value_size: int = 4096, bucket: Any = None,
                 max_inflight: int = 1024) -> None:
        from twisted.internet.selectreactor import SelectReactor
        self.reactor = SelectReactor()
        self.clock = Clock()
        self.clock.advance(time.time())
        self.bucket = bucket if bucket is not None else EmbeddedBucket(
            clock=self.clock, max_value_size=max_value_size, pager_interval=0)
        self.factory = BucketServerFactory(self.bucket, max_inflight=max_inflight)
        self._port: Any = self.reactor.listenTCP(0, self.factory, interface="127.0.0.1")
        self.port = self._port.getHost().port
        self.endpoint = "tcp:127.0.0.1:%d" % (self.port,)
        self.thread = threading.Thread(target=self.reactor.run, name="txcb-test-server",
                                       kwargs={"installSignalHandlers": False}, daemon=True)
        self.thread.start()

    def call(self, f: Any, *args: Any, **kwargs: Any) -> Any:
        """Run ``f`` in the server's thread and return its (Deferred's) result."""
        return blockingCallFromThread(self.reactor, f, *args, **kwargs)

    def advance(self, seconds: float) -> None:
        self.call(self.clock.advance, seconds)

    def stop_listening(self) -> None:
        """Stop accepting connections (open ones stay)."""
        if self._port is not None:
            port, self._port = self._port, None
            self.call(port.stopListening)

    def listen_again(self) -> None:
        """Accept connections again, on the same port."""
        def listen() -> None:
            self._port = self.reactor.listenTCP(self.port, self.factory,
                                                interface="127.0.0.1")
        self.call(listen)

    def drop_connections(self) -> None:
        """Close every open client connection from the server side."""
        def drop() -> None:
            for r in list(self.reactor.getReaders()):
                if getattr(r, "protocol", None) is not None and hasattr(r, "abortConnection"):
                    r.abortConnection()
        self.call(drop)

    def stop(self) -> None:
        if not self.thread.is_alive():
            return
        self.stop_listening()
        self.reactor.callFromThread(self.reactor.stop)
        self.thread.join(10)
        waker = getattr(self.reactor, "waker", None)
        if waker is not None:
            try:
                waker.connectionLost(None)  # close the waker's pipe
            except Exception:
                pass


class _FacadeCursor:
    """A blocking scan cursor seen through Deferreds."""

    def __init__(self, cursor: Any) -> None:
        self._cursor = cursor

    def __getattr__(self, name: str) -> Any:
        return _wrap(getattr(self._cursor, name))


def _wrap(attr: Any) -> Any:
    if not callable(attr):
        return attr

    def call(*args: Any, **kwargs: Any) -> Deferred:
        try:
            result = attr(*args, **kwargs)
        except errors.CouchbaseError as e:
            return fail(e)
        if hasattr(result, "next_batch"):
            result = _FacadeCursor(result)
        return succeed(result)
    return call


class DeferredFacade:
    """A blocking bucket with each result as a fired Deferred (for the contract)."""

    def __init__(self, sync: Any) -> None:
        self._sync = sync

    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            # Not the bucket's zope declarations (__providedBy__...): the
            # facade declares nothing, whatever the bucket's bases carry.
            raise AttributeError(name)
        return _wrap(getattr(self._sync, name))


def _derived(name: str) -> Any:
    async_test = getattr(BucketContractMixin, name)

    def test(self: Any) -> None:
        outcome: list = []
        d = async_test(self)
        d.addBoth(outcome.append)
        if not outcome:
            d.cancel()
            self.fail("%s did not finish synchronously" % (name,))
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
    test.__name__ = name
    test.__doc__ = async_test.__doc__
    return test


class SyncBucketContractMixin(BucketContractMixin):
    """The contract for blocking buckets (see the module docstring)."""

    def make_sync_bucket(self) -> Any:
        raise NotImplementedError

    def make_bucket(self) -> Any:
        # The contract's test bodies get the blocking bucket behind Deferreds.
        self.sync_bucket = self.make_sync_bucket()
        return DeferredFacade(self.sync_bucket)

    # Every contract test, run synchronously.
    for _name in [n for n in dir(BucketContractMixin) if n.startswith("test_")]:
        locals()[_name] = _derived(_name)
    del _name

    # -- the synchronous face -------------------------------------------------

    def test_provides_ibucket(self) -> None:
        """Every IBucket method, with IBucket's parameters first (and defaults)."""
        b = self.make_sync_bucket()
        self.assertIsNotNone(b.transcoder)
        for name in IBucket.names():
            declared = IBucket[name]
            if not hasattr(declared, "getSignatureInfo"):
                continue
            info = declared.getSignatureInfo()
            method = getattr(b, name, None)
            self.assertTrue(callable(method), "no method %s" % (name,))
            params = list(inspect.signature(method).parameters.values())
            self.assertEqual([p.name for p in params[:len(info["positional"])]],
                             list(info["positional"]), name)
            for p in params[:len(info["positional"])]:
                if p.name in info["optional"]:
                    self.assertEqual(p.default, info["optional"][p.name], (name, p.name))
                else:
                    self.assertIs(p.default, inspect.Parameter.empty, (name, p.name))
            for p in params[len(info["positional"]):]:
                if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
                    continue  # lookup_in(key, *specs, ...)
                self.assertIsNot(p.default, inspect.Parameter.empty,
                                 "%s: extra parameter %s needs a default" % (name, p.name))

    def test_results_are_returned_and_errors_raised(self) -> None:
        b = self.make_sync_bucket()
        r = b.upsert("k", {"v": 1})
        self.assertIsInstance(r, OperationResult)
        self.assertTrue(r.success)
        g = b.get("k")
        self.assertIsInstance(g, ValueResult)
        self.assertEqual((g.value, g.cas), ({"v": 1}, r.cas))
        with self.assertRaises(errors.KeyExistsError) as cm:
            b.insert("k", 2)
        self.assertEqual((cm.exception.rc, cm.exception.key), (0x02, "k"))
        with self.assertRaises(errors.NotFoundError):
            b.get("missing")
        with self.assertRaises(errors.ArgumentError):
            b.get("")
        self.assertFalse(b.get("missing", quiet=True).success)
        self.assertEqual(b.counter("n", initial=5).value, 5)
        self.assertIsInstance(b.stats(), dict)

    def test_multi_raises_first_error_with_all_results(self) -> None:
        b = self.make_sync_bucket()
        r = b.upsert_multi({"a": 1, "b": 2})
        self.assertIsInstance(r, MultiResult)
        self.assertTrue(r.all_ok)
        with self.assertRaises(errors.NotFoundError) as cm:
            b.get_multi(["a", "missing", "b"])
        e = cm.exception
        self.assertEqual(e.key, "missing")
        self.assertEqual(sorted(e.all_results), ["a", "b", "missing"])
        self.assertEqual(e.all_results["b"].value, 2)
        self.assertFalse(e.all_results["missing"].success)

    def test_bad_arguments_in_a_multi_are_that_keys_error(self) -> None:
        b = self.make_sync_bucket()
        with self.assertRaises(errors.ArgumentError) as cm:
            b.upsert_multi({"ok": 1, "": 2})
        self.assertTrue(cm.exception.all_results["ok"].success)
        self.assertEqual(b.get("ok").value, 1)
