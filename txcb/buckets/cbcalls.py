"""
The machinery under :class:`txcb.buckets.couchbase.CouchbaseBucket`: its
lifetime (the SDK's cluster, bootstrapped on a worker on first use, and again
after a failed bootstrap), the one path of every call (admission, deadline,
cancellation, stats, the hand-off to a worker) and the argument checks its
operations share.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred, fail, succeed

from txcb.buckets.cbbatch import GetBatcher
from txcb.buckets.cbsdk import client_durability, load, parse_url, sdk_error
from txcb.buckets.cbstats import OpStats
from txcb.buckets.cbworkers import Workers
from txcb.errors import (
    ConnectError, NetworkError, RC, TemporaryFailError, TimeoutError, TooBigError)
from txcb.formats import DEFAULT_TRANSCODER, Transcoder, concat_bytes
from txcb.limits import DEFAULT_TIMEOUT
from txcb.results import ValueResult
from txcb.validation import resolve_durability

__all__ = ["SdkCalls", "MAX_VALUE_SIZE"]

#: Couchbase Server's largest value.
MAX_VALUE_SIZE = 20 * 1024 * 1024
#: What the reactor's timer adds to a call's timeout, so the SDK's own
#: timeout (the better error) normally comes first.
_GRACE = 0.25


class SdkCalls:
    """Lifetime, calls and checks of a bucket over the SDK (the parameters:
    :class:`~txcb.buckets.couchbase.CouchbaseBucket`)."""

    #: Seconds after a failed bootstrap before the next is tried.
    RETRY_CONNECT = 1.0


    def __init__(self, url: str, username: str, password: str, reactor: Any = None,
                 timeout: float = DEFAULT_TIMEOUT, durable_timeout: float = 10.0,
                 connect_timeout: float = 10.0, threads: int = 4, max_pending: int = 4096,
                 transcoder: Optional[Transcoder] = None,
                 max_value_size: int = MAX_VALUE_SIZE, scope: Optional[str] = None,
                 collection: Optional[str] = None, batch_gets: bool = True,
                 start: bool = True) -> None:
        self._sdk = load()
        self._url = parse_url(url)
        if reactor is None:
            from twisted.internet import reactor as _reactor
            reactor = _reactor
        self._reactor = reactor
        self._auth = (username, password)
        self.timeout = timeout
        self.durable_timeout = durable_timeout
        self.connect_timeout = connect_timeout
        self.max_pending = max_pending
        self.transcoder = transcoder if transcoder is not None else DEFAULT_TRANSCODER
        self.max_value_size = max_value_size
        self.max_replicate_to = self._url.replicas
        self.max_persist_to = self._url.replicas + 1
        self._where = (scope or "_default", collection or "_default")
        self._pool = Workers(reactor, threads, name="txcb-couchbase")
        self._lock = threading.Lock()
        self._connect_failure: Any = (float("-inf"), None)
        self._cluster: Any = None
        self._coll: Any = None
        self._pending = 0
        self._closed = False
        self._started = False
        self._stats = OpStats(reactor.seconds)
        self.batch_gets = batch_gets
        self._gets = GetBatcher(reactor, self._pool.submit, self._collection, self._value)
        if start:
            self.start()

    #: What ``stats()`` and the metrics call this kind of bucket.
    bucket_type = "couchbase"

    @property
    def name(self) -> str:
        """The cluster bucket's name."""
        return self._url.bucket

    # -- lifetime ------------------------------------------------------------------

    def start(self) -> None:
        """Start the workers and connect in the background (else on first use)."""
        if self._started or self._closed:
            return
        self._started = True
        self._pool.start()
        self._shutdown = self._reactor.addSystemEventTrigger(
            "during", "shutdown", self._stop_pool)
        self._pool.submit(self._quietly_connect, lambda _: None)

    def _stop_pool(self) -> None:
        if self._pool.started:
            self._pool.stop()

    def _quietly_connect(self) -> None:
        try:
            self._collection()
        except Exception:
            pass  # the first operation reports it

    def _collection(self) -> Any:
        """
        The SDK collection, bootstrapping the cluster first (worker thread).
        A bootstrap that failed is not retried for ``RETRY_CONNECT`` seconds:
        meanwhile calls errback ConnectError at once, instead of each waiting
        for a bootstrap of its own.
        """
        with self._lock:
            if self._coll is None:
                if self._closed:
                    raise NetworkError("the bucket is closed")
                failed_at, why = self._connect_failure
                if time.monotonic() - failed_at < self.RETRY_CONNECT:
                    raise ConnectError("cannot reach the cluster at %s: %s"
                                       % (self._url.connstr, why))
                try:
                    self._cluster, self._coll = self._connect()
                except Exception as e:
                    self._connect_failure = (time.monotonic(),
                                             sdk_error("connect", e, None).message)
                    raise ConnectError("cannot reach the cluster at %s: %s"
                                       % (self._url.connstr, self._connect_failure[1]))
            return self._coll

    def _connect(self) -> Any:
        sdk, o = self._sdk, self._sdk.o
        timeouts = o.ClusterTimeoutOptions(
            kv_timeout=timedelta(seconds=self.timeout),
            kv_durable_timeout=timedelta(seconds=self.durable_timeout),
            connect_timeout=timedelta(seconds=self.connect_timeout),
            bootstrap_timeout=timedelta(seconds=self.connect_timeout))
        # The SDK's threshold-logging tracer and logging meter cost more than
        # the operation itself in Python: off (this provider keeps its own stats).
        cluster = sdk.Cluster(self._url.connstr, o.ClusterOptions(
            sdk.PasswordAuthenticator(*self._auth), timeout_options=timeouts,
            transcoder=sdk.transcoder, enable_tracing=False, enable_metrics=False))
        bucket = cluster.bucket(self._url.bucket)
        return cluster, bucket.scope(self._where[0]).collection(self._where[1])

    def close(self) -> Deferred:
        """Close the SDK's cluster and stop the workers; fires when done."""
        if self._closed:
            return succeed(None)
        self._closed = True
        if not self._started:
            return succeed(None)
        d: Deferred = Deferred()

        def closing() -> None:
            with self._lock:
                cluster, self._cluster, self._coll = self._cluster, None, None
            if cluster is not None:
                try:
                    cluster.close()
                except Exception:
                    pass

        def finish(_: Any) -> None:
            self._reactor.removeSystemEventTrigger(self._shutdown)
            self._stop_pool()
            d.callback(None)
        self._pool.submit(closing, finish)
        return d

    # -- the one path of every call ---------------------------------------------------

    def _call(self, op: str, key: Any, work: Callable[[Any, Any], Any],
              timeout: Optional[float], durable: bool = False) -> Deferred:
        """
        Run ``work(collection, sdk_timeout)`` on a worker: its txcb result or
        error fires the Deferred, or TimeoutError does after ``timeout``, or
        CancelledError at once when cancelled.
        """
        refused = self._refused(key)
        if refused is not None:
            return refused
        limit = timeout if timeout is not None else (
            self.durable_timeout if durable else self.timeout)
        # None: the cluster's own kv (durable) timeout, the same number.
        sdk_timeout = None if timeout is None else timedelta(seconds=limit)
        d, done = self._track(op, key, limit)

        def job() -> Any:
            try:
                return work(self._collection(), sdk_timeout)
            except BaseException as e:
                return sdk_error(op, e, key)
        self._pool.submit(job, done)
        return d

    def _refused(self, key: Any) -> Optional[Deferred]:
        """A failed Deferred if the bucket takes no more calls, else None."""
        if self._closed:
            return fail(NetworkError("the bucket is closed", key=key))
        if self._pending >= self.max_pending:
            return fail(TemporaryFailError("%d calls pending: the backend is busy"
                                           % (self._pending,), key=key))
        if not self._started:
            self.start()
        return None

    def _track(self, op: str, key: Any, limit: float) -> Any:
        """(the call's Deferred, ``done(outcome)``): counted, timed and
        deadlined; ``done`` after a cancel or a timeout only counts."""
        d: Deferred = Deferred()
        started = self._reactor.seconds()
        self._pending += 1
        timer = self._reactor.callLater(limit + _GRACE, self._expired, d, op, key, limit)

        def done(outcome: Any) -> None:
            self._pending -= 1
            if timer.active():
                timer.cancel()
            self._stats.record(op, started, outcome)
            if d.called:
                return  # cancelled or timed out already
            if isinstance(outcome, BaseException):
                d.errback(outcome)
            else:
                d.callback(outcome)
        return d, done

    def _expired(self, d: Deferred, op: str, key: Any, limit: float) -> None:
        if not d.called:
            d.errback(TimeoutError("%s did not complete within %.3gs" % (op, limit),
                                   key=key))

    # -- argument checks -------------------------------------------------------------

    def _durability(self, persist_to: int, replicate_to: int, key: Any) -> Any:
        if not persist_to and not replicate_to:
            return None
        p, r = resolve_durability(persist_to, replicate_to, self.max_persist_to,
                                  self.max_replicate_to, key)
        return client_durability(self._sdk, p, r)

    def _encode(self, value: Any, format: Any, key: Any) -> Any:
        data, flags = self.transcoder.encode(value, format)
        if len(data) > self.max_value_size:
            raise TooBigError("value of %d bytes is over the bucket's %d byte limit"
                              % (len(data), self.max_value_size), key=key)
        return data, flags

    def _raw(self, value: Any, key: Any) -> bytes:
        """The bytes append/prepend add (as every provider: text as UTF-8,
        bytes as they are, anything else as the transcoder encodes it)."""
        data = concat_bytes(value, self.transcoder)
        if len(data) > self.max_value_size:
            raise TooBigError("value of %d bytes is over the bucket's %d byte limit"
                              % (len(data), self.max_value_size), key=key)
        return data

    def _opts(self, name: str, timeout: Any, **kwargs: Any) -> tuple:
        """The SDK call's options, as its ``*opts`` (none at all when every
        one is the default: building options costs)."""
        given = {k: v for k, v in kwargs.items() if v is not None}
        if timeout is not None:
            given["timeout"] = timeout
        return (getattr(self._sdk.o, name)(**given),) if given else ()

    def _value(self, key: Any, r: Any) -> ValueResult:
        raw, flags = r.value
        return ValueResult(key, raw, flags, r.cas, RC.SUCCESS, self.transcoder)
