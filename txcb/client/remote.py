"""
The txcb client: a remote IBucket talking to a txcb server.

:class:`BucketClientProtocol` is a ``NetstringReceiver`` that sends requests
as soon as they are made (pipelining) and matches responses to requests by
their opaque id, so the server may answer in any order.  Each request has a
timeout and can be cancelled; losing the connection errbacks every request in
flight with :class:`~txcb.errors.NetworkError`.  No Deferred is left unfired
and nothing is kept once a request completes.  What each reply gives is
decided by :mod:`txcb.client.replies`, shared with the blocking client.

:class:`RemoteBucket` is the IBucket face of a connection;
:class:`BucketClientFactory` (for ``reactor.connectTCP``) and :func:`connect`
(for endpoint strings, with optional reconnection) make one.
"""

from __future__ import annotations

import random
from typing import Any, Callable, List, Optional, cast

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import IDelayedCall, IProtocol
from twisted.internet.protocol import ClientFactory, Factory
from twisted.python.failure import Failure
from zope.interface import implementer

from txcb.client import requests as _rq
from txcb.client.multicalls import _GetMulti, _GetMultiPart, _MultiCall
from txcb.client.protocol import BucketClientProtocol, RequestDeferred
from txcb.client.replies import (
    scan_rows, subdoc_result)
from txcb.multi import MultiMixin, unique, gather_results
from txcb.limits import DEFAULT_MAX_VALUE_SIZE, DEFAULT_TIMEOUT
from txcb.verbs import StoreVerbs
from txcb.validation import check_ttl, scan_args
from txcb.wire.netstring import (
    Op)
from txcb.errors import (
    ArgumentError, CouchbaseError, ConnectError, NetworkError, TimeoutError)
from txcb.formats import DEFAULT_TRANSCODER, Transcoder
from txcb.interfaces import IBucket
from txcb.results import OperationResult, ValueResult
from txcb.scan import ScanResult

__all__ = ["BucketClientProtocol", "RemoteBucket", "BucketClientFactory", "connect",
           "DEFAULT_TIMEOUT"]

@implementer(IBucket)
class RemoteBucket(StoreVerbs[Deferred], MultiMixin):
    """
    An IBucket served by a txcb server over one connection (or, from
    ``connect(..., reconnect=True)``, over whichever connection is current).

    Every method takes an extra ``timeout`` keyword: seconds before the
    operation errbacks TimeoutError (default :attr:`timeout`, 2.5 s).
    ``timeout=0`` disables the timeout: the operation waits for its reply
    (or, while a reconnecting bucket is down, for the new connection) until
    it is answered, cancelled, or its connection is lost or closed.  A bucket
    made with ``timeout=0`` has no timeout by default (but a method's own
    ``timeout`` still applies).
    """

    UPSERT_OP, INSERT_OP, REPLACE_OP = Op.UPSERT, Op.INSERT, Op.REPLACE
    APPEND_OP, PREPEND_OP = Op.APPEND, Op.PREPEND

    def __init__(self, protocol: Optional[BucketClientProtocol] = None,
                 service: Optional[ClientService] = None,
                 timeout: float = DEFAULT_TIMEOUT,
                 transcoder: Optional[Transcoder] = None) -> None:
        self._proto = protocol
        self._service = service
        self.timeout = timeout
        self.transcoder = transcoder if transcoder is not None else DEFAULT_TRANSCODER
        self._closed = False
        #: The reactor timing waits for a reconnection (None: the global one).
        self._clock: Any = None
        if protocol is not None:
            self.attach(protocol)

    def attach(self, protocol: BucketClientProtocol) -> None:
        """Use ``protocol`` (connected, handshake done) from now on."""
        protocol.transcoder = self.transcoder
        protocol.timeout = self.timeout
        protocol.on_lost(self._detach)
        self._proto = protocol

    def reconnect_with(self, service: ClientService, clock: Any) -> None:
        """Take each new connection from ``service`` (see :func:`connect`), timing
        waits for it on ``clock``."""
        self._service = service
        self._clock = clock

    def _detach(self, protocol: BucketClientProtocol) -> None:
        if self._proto is protocol:
            self._proto = None

    @property
    def max_value_size(self) -> int:
        p = self._proto
        return p.max_value_size if p is not None else DEFAULT_MAX_VALUE_SIZE

    def _call(self, fields: _rq.Fields, timeout: Optional[float] = None) -> Deferred:
        """Send the request of ``fields`` (from a txcb.client.requests function)."""
        p = self._proto
        if p is not None and (p.lost is None or self._service is None):
            multi = self._multi
            if p.lost is None:
                if multi is not None:
                    multi.send(p, fields, timeout)
                    return None  # type: ignore[return-value]  # only inside _each
                # BucketClientProtocol.request, inlined: the hot path.
                d = RequestDeferred(p.cancel_request)
                d.opaque = p.send(d, fields, timeout)
                return d
            return p.request(*fields, timeout=timeout)
        if self._closed:
            return fail(NetworkError("the bucket is closed", key=fields[1]))
        if self._service is None:
            return fail(NetworkError("not connected", key=fields[1]))
        return _ReconnectWait(lambda: self._service, self._clock, fields,
                              self.timeout if timeout is None else timeout).start()

    # -- multi-key calls: one Deferred, requests written together -----------

    _multi: Optional["_MultiCall"] = None

    def _each(self, keys: Any, call: Any, result_cls: type = OperationResult) -> Deferred:
        keys = unique(keys)
        return self._gather(lambda: [(k, call(k)) for k in keys], result_cls)

    def _each_item(self, mapping: Any, call: Any) -> Deferred:
        items = list(mapping.items() if hasattr(mapping, "items") else mapping)
        return self._gather(lambda: [(k, call(k, v)) for k, v in items], OperationResult)

    def _gather(self, make: Any, result_cls: type) -> Deferred:
        """
        Run ``make()`` (which calls the single-key methods) with the requests
        going to one :class:`_MultiCall` instead of a Deferred each, and
        written to the connection in one go.  Results and errors follow
        :func:`txcb.multi.gather_results`.
        """
        if self._multi is not None:  # re-entered (from a transcoder?): the plain way
            outer_multi, self._multi = self._multi, None
            try:
                return gather_results(make(), result_cls)
            finally:
                self._multi = outer_multi
        multi = _MultiCall(result_cls)
        p = self._proto
        held = p.hold_writes() if p is not None else False
        self._multi = multi
        try:
            pairs = make()
        finally:
            self._multi = None
            if p is not None:
                p.release_writes(held)
        late = [i for i, (_key, d) in enumerate(pairs) if d is not None]
        if late:
            # Keys that failed before sending, or wait for a reconnection: they
            # are added now, after the keys sent, but rank in key order.
            multi.order = [i for i, (_key, d) in enumerate(pairs) if d is None] + late
            for i in late:
                multi.add(*pairs[i])
        return multi.start()

    def get_multi(self, keys: Any, ttl: int = 0, quiet: bool = False,
                  timeout: Optional[float] = None) -> Deferred:
        """
        IBucket.get_multi: one GET_MULTI request (docs/protocol.rst, 3.2) per
        chunk of keys where the server has it, else a GET per key; the same
        results either way.  ``timeout`` applies to each request.
        """
        p = self._proto
        if p is None or not p.multi_get_keys or p.lost is not None or self._multi is not None:
            return self._each(keys, lambda k: self.get(k, ttl, quiet, timeout), ValueResult)
        keys = unique(keys)
        if ttl:
            try:
                check_ttl(ttl)
            except CouchbaseError:  # every key fails as its own get would
                return self._each(keys, lambda k: self.get(k, ttl, quiet, timeout),
                                  ValueResult)
        else:
            ttl = 0
        call = _GetMulti(keys, quiet, self.transcoder)
        chunks = _rq.get_multi_requests(keys, ttl, p.multi_get_keys, p.max_multi_body,
                                        call.results, call.errors)
        call.left = len(chunks) + 1
        held = p.hold_writes() if len(chunks) > 1 else False
        try:
            for ks, fields in chunks:
                part = _GetMultiPart(call, ks, p)
                call.parts.append(part)
                part.opaque = p.send(part, fields, timeout)
        finally:
            p.release_writes(held)
        call.part_done()  # every request is out: done when they are
        return call.d

    # -- IBucket: txcb.client.requests checks and encodes, _call sends ------------

    def get(self, key: Any, ttl: int = 0, quiet: bool = False,
            timeout: Optional[float] = None) -> Deferred:
        try:
            fields = _rq.get(key, ttl, quiet)
        except CouchbaseError as e:
            return fail(e)
        return self._call(fields, timeout)

    def _store(self, opcode: int, key: Any, value: Any, cas: int, ttl: int, format: Any,
               persist_to: int, replicate_to: int, timeout: Optional[float]) -> Deferred:
        try:
            fields = _rq.store(opcode, key, value, cas, ttl, format, persist_to, replicate_to,
                               self.transcoder, self.max_value_size)
        except CouchbaseError as e:
            return fail(e)
        return self._call(fields, timeout)

    def _concat(self, opcode: int, key: Any, value: Any, cas: int, persist_to: int,
                replicate_to: int, timeout: Optional[float]) -> Deferred:
        return self._send_fields(_rq.concat, opcode, key, value, cas, persist_to, replicate_to,
                                 self.transcoder, self.max_value_size, timeout=timeout)

    def _send_fields(self, build: Any, *args: Any, timeout: Optional[float] = None
                     ) -> Deferred:
        """The request ``build(*args)`` (a txcb.client.requests function) gives, or its error."""
        try:
            fields = build(*args)
        except CouchbaseError as e:
            return fail(e)
        return self._call(fields, timeout)

    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        return self._send_fields(_rq.remove, key, cas, quiet, persist_to, replicate_to,
                                 timeout=timeout)

    def touch(self, key: Any, ttl: int, timeout: Optional[float] = None) -> Deferred:
        return self._send_fields(_rq.touch, key, ttl, timeout=timeout)

    def lock(self, key: Any, ttl: int = 15, timeout: Optional[float] = None) -> Deferred:
        return self._send_fields(_rq.lock, key, ttl, timeout=timeout)

    def unlock(self, key: Any, cas: int, timeout: Optional[float] = None) -> Deferred:
        return self._send_fields(_rq.unlock, key, cas, timeout=timeout)

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                timeout: Optional[float] = None) -> Deferred:
        return self._send_fields(_rq.counter, key, delta, initial, ttl, timeout=timeout)

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> Deferred:
        """
        The server polls; the request's own timeout is ``timeout`` plus the
        usual one (:attr:`timeout`), or none if that is 0 (disabled).
        """
        try:
            fields = _rq.endure(key, persist_to, replicate_to, cas, check_removed, timeout,
                                interval)
        except (CouchbaseError, TypeError) as e:
            return fail(e if isinstance(e, CouchbaseError) else ArgumentError(str(e), key=key))
        return self._call(fields, timeout + self.timeout if self.timeout else 0)

    def stats(self, timeout: Optional[float] = None) -> Deferred:
        return self._call(_rq.stats(), timeout)

    def flush(self, timeout: Optional[float] = None) -> Deferred:
        """Remove every item on the server's bucket (FLUSH): fires None."""
        return self._call(_rq.flush(), timeout)

    def noop(self, timeout: Optional[float] = None) -> Deferred:
        """A round trip that does nothing: for health checks and latency."""
        return self._call(_rq.noop(), timeout)

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000, batch_bytes: int = 1048576,
             timeout: Optional[float] = None) -> Deferred:
        """See IBucket.scan: each batch is one SCAN request (``timeout`` each)."""
        try:
            prefix, start, end, ids_only, batch_size, batch_bytes = scan_args(
                prefix, start, end, ids_only, batch_size, batch_bytes)
        except CouchbaseError as e:
            return fail(e)
        transcoder = self.transcoder

        def fetch(at: bytes) -> Deferred:
            return self._call(_rq.scan_batch(batch_size, batch_bytes, prefix, at, end,
                                             ids_only), timeout).addCallback(
                scan_rows, ids_only, transcoder)
        return ScanResult.open(fetch, start)

    def lookup_in(self, key: Any, *specs: Any, access_deleted: bool = False,
                  timeout: Optional[float] = None) -> Deferred:
        """See IBucket.lookup_in: one LOOKUP_IN request (docs/protocol.rst, 3.4)."""
        return self._send_fields(_rq.lookup_in, key, specs, access_deleted,
                                 self.max_value_size, timeout=timeout).addCallback(
            subdoc_result, list(specs), True)

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, preserve_expiry: bool = False,
                  timeout: Optional[float] = None) -> Deferred:
        """See IBucket.mutate_in: one MUTATE_IN request (docs/protocol.rst, 3.4)."""
        return self._send_fields(
            _rq.mutate_in, key, specs, cas, ttl, upsert_doc, insert_doc, persist_to,
            replicate_to, preserve_expiry, self.max_value_size, timeout=timeout).addCallback(
            subdoc_result, list(specs), False)

    def close(self) -> Deferred:
        """Close the connection (stop reconnecting); requests in flight errback."""
        self._closed = True
        if self._service is not None:
            service, self._service = self._service, None
            return service.stopService()
        p = self._proto
        if p is None or not p.connected:
            return succeed(None)
        done: Deferred = Deferred()
        p.on_lost(lambda _p: done.callback(None))
        p.disconnect()
        return done


class _ReconnectWait:
    """
    A request made while a reconnecting bucket is down: it waits (within
    its timeout, if it has one) for the service's next connection, and is
    sent on it.  ``service()`` is the bucket's service (None once closed).
    """

    def __init__(self, service: Callable[[], Optional[ClientService]], clock: Any,
                 fields: _rq.Fields, timeout: float) -> None:
        if clock is None:
            from twisted.internet import reactor
            clock = reactor
        self.service = service
        self.clock = clock
        self.fields = fields
        self.timeout = timeout
        self.started = clock.seconds()
        self.why: List[str] = []  # "timeout" or "cancel", once either happens
        self.sent: Optional[Deferred] = None  # the request, once made on the new connection
        self.waiting: Deferred = succeed(None)
        self.timer: Optional[IDelayedCall] = None
        self.result: Deferred = Deferred(lambda _: self.stop("cancel"))

    def start(self) -> Deferred:
        if self.timeout:  # 0: wait as long as it takes (or until cancelled or closed)
            self.timer = self.clock.callLater(self.timeout, self.stop, "timeout")
        self.wait()
        return self.result

    def _timed_out(self) -> TimeoutError:
        return TimeoutError("not reconnected within %.3gs" % (self.timeout,),
                            key=self.fields[1])

    def stop(self, reason: str) -> None:
        self.why.append(reason)
        timer = self.timer
        if reason == "cancel" and timer is not None and timer.active():
            timer.cancel()
        self.waiting.cancel()
        if self.sent is not None:
            self.sent.cancel()
        if reason == "timeout" and not self.result.called:  # between two waits
            self.result.errback(self._timed_out())

    def wait(self) -> None:
        if self.result.called:
            return
        service = self.service()
        if service is None:
            self.failed(Failure(NetworkError("the bucket is closed")))
            return
        self.waiting = service.whenConnected()
        self.waiting.addCallbacks(self.connected, self.failed)

    def connected(self, proto: BucketClientProtocol) -> None:
        if proto.lost is not None:
            # The connection that has just died: the service learns of it
            # after its protocol does.  Ask again on the next turn.
            self.clock.callLater(0, self.wait)
            return
        left = 0.0  # no timeout
        if self.timer is not None:
            self.timer.cancel()
            left = max(self.timeout - (self.clock.seconds() - self.started), 0.001)
        self.sent = proto.request(*self.fields, timeout=left)
        self.sent.chainDeferred(self.result)

    def failed(self, f: Failure) -> None:
        timer = self.timer
        if timer is not None and timer.active():
            timer.cancel()
        if self.result.called or self.why == ["cancel"]:
            return  # cancelled: Deferred.cancel errbacks CancelledError
        if self.why:
            self.result.errback(self._timed_out())
        else:  # the service stopped (close()) or gave up
            self.result.errback(NetworkError("not connected: %s" % (f.getErrorMessage(),),
                                             key=self.fields[1]))


class BucketClientFactory(ClientFactory):
    """
    Makes one connection and fires :attr:`deferred` with a connected
    :class:`RemoteBucket`, or errbacks it with ConnectError::

        factory = BucketClientFactory()
        reactor.connectTCP("127.0.0.1", 11222, factory)
        bucket = yield factory.deferred
    """

    protocol = BucketClientProtocol

    def __init__(self, clock: Any = None, timeout: float = DEFAULT_TIMEOUT,
                 transcoder: Optional[Transcoder] = None) -> None:
        self.clock = clock
        self.timeout = timeout
        self.transcoder = transcoder
        self.deferred: Deferred = Deferred()

    def buildProtocol(self, addr: Any) -> BucketClientProtocol:
        p = self.protocol(self.clock, self.timeout, self.transcoder)
        p.factory = self
        p.when_ready().addCallbacks(self._ready, self._failed, callbackArgs=(p,),
                                    errbackArgs=(p,))
        return p

    def _ready(self, info: Any, p: BucketClientProtocol) -> None:
        if not self.deferred.called:
            self.deferred.callback(RemoteBucket(p, timeout=self.timeout,
                                                transcoder=self.transcoder))

    def _failed(self, f: Failure, p: BucketClientProtocol) -> None:
        if not self.deferred.called:
            self.deferred.errback(ConnectError("handshake failed: %s" % (f.getErrorMessage(),)))
        if p.connected:
            p.abort()

    def clientConnectionFailed(self, connector: Any, reason: Failure) -> None:
        if not self.deferred.called:
            self.deferred.errback(ConnectError("connection failed: %s"
                                               % (reason.getErrorMessage(),)))


class _ServiceFactory(Factory):
    """The factory of a reconnecting ClientService: each new connection
    becomes the bucket's current connection once its handshake is done."""

    def __init__(self, bucket: RemoteBucket, clock: Any) -> None:
        self.bucket = bucket
        self.clock = clock

    def buildProtocol(self, addr: Any) -> BucketClientProtocol:
        p = BucketClientProtocol(self.clock, self.bucket.timeout, self.bucket.transcoder)
        p.factory = self
        p.when_ready().addCallbacks(lambda _: self.bucket.attach(p), lambda _f: None)
        return p


_backoff = backoffPolicy(initialDelay=0.1, factor=1.5, maxDelay=10.0, jitter=lambda: 0.0)


def _reconnect_delay(attempt: int) -> float:
    """
    The ClientService retry policy of ``connect(..., reconnect=True)``:
    seconds to wait before reconnection attempt ``attempt`` (1 after a
    loss): ``min(0.1 * 1.5 ** attempt, 10)``, plus up to 50% jitter.

    Twisted's default (:func:`backoffPolicy`'s 1 s, plus up to 1 s of jitter)
    waits 1.5 to 2.5 s after a loss, as long as the default operation
    timeout: operations made in the gap timed out just before reconnection.
    """
    return _backoff(attempt) * (1.0 + 0.5 * random.random())


def connect(reactor: Any, endpoint: str = "tcp:127.0.0.1:11222", reconnect: bool = False,
            timeout: float = DEFAULT_TIMEOUT, transcoder: Optional[Transcoder] = None
            ) -> Deferred:
    """
    Connect to a txcb server given a client endpoint string (``tcp:``,
    ``unix:``, ``ssl:``...): fires a connected :class:`RemoteBucket`.

    With ``reconnect=True`` the bucket reconnects after a lost connection,
    with exponential backoff (:func:`_reconnect_delay`): the first attempt
    comes 0.15 to 0.225 s after the loss, each failed one makes the next wait
    1.5 times longer, up to 10 s, and each delay has up to 50% random jitter
    (so that the clients of a restarted server do not all come back at once).
    Operations made while it is down wait for the new connection within
    their timeout: the first retry comes well within the default 2.5 s.
    The first connection must succeed, or the Deferred errbacks ConnectError.

    :param timeout: every operation's default timeout, in seconds (see
        :class:`RemoteBucket`); 0 disables it.
    """
    try:
        ep = clientFromString(reactor, endpoint)
    except (ValueError, TypeError, KeyError) as e:
        return fail(ArgumentError("bad endpoint %r: %s" % (endpoint, e)))
    if not reconnect:
        factory = BucketClientFactory(reactor, timeout, transcoder)
        d = ep.connect(factory)

        def failed(f: Failure) -> None:
            if not factory.deferred.called:
                factory.deferred.errback(ConnectError("cannot connect to %s: %s"
                                                      % (endpoint, f.getErrorMessage())))
        d.addErrback(failed)
        return factory.deferred

    bucket = RemoteBucket(timeout=timeout, transcoder=transcoder)
    service = ClientService(ep, _ServiceFactory(bucket, reactor),
                            retryPolicy=_reconnect_delay, clock=reactor)
    bucket.reconnect_with(service, reactor)
    service.startService()
    first = service.whenConnected(failAfterFailures=1)

    def connected(p: IProtocol) -> Deferred:
        # The service's protocols come from _ServiceFactory.
        return cast(BucketClientProtocol, p).when_ready().addCallback(lambda _: bucket)

    def first_failed(f: Failure) -> Deferred:
        # The failure arrives from inside the service's own state machine,
        # which refuses a reentrant stopService(): stop it on the next turn,
        # and errback only once it has stopped (no retry left scheduled).
        error = ConnectError("cannot connect to %s: %s" % (endpoint, f.getErrorMessage()))
        stopped: Deferred = Deferred()
        reactor.callLater(0, lambda: service.stopService().chainDeferred(stopped))
        return stopped.addBoth(lambda _: fail(error))

    return first.addCallback(connected).addErrback(first_failed)
