"""
A blocking txcb client, for scripts, threads and programs without Twisted.

:class:`Bucket` has the IBucket method names, arguments and result types,
but returns results directly and raises the :mod:`txcb.errors` exceptions
instead of returning Deferreds::

    from txcb.client.blocking import Bucket
    from txcb.errors import NotFoundError

    with Bucket("tcp:127.0.0.1:11222", timeout=2.5) as bucket:
        bucket.upsert("user:1", {"name": "Ada"})
        print(bucket.get("user:1").value)
        try:
            bucket.get("nobody")
        except NotFoundError:
            pass
        many = bucket.get_multi(["user:1", "user:2"], quiet=True)   # one request
        for row in bucket.scan(prefix="user:"):                       # streamed
            print(row.key, row.value)

It speaks the protocol of ``docs/protocol.rst`` with the same sans-IO codec
as the Twisted client (:mod:`txcb.wire.netstring`, including its
:class:`~txcb.wire.netstring.NetstringDecoder`) over a plain socket, and imports no
Twisted at all.

Endpoints.  The client endpoint strings of Twisted that make sense for a
plain socket: ``tcp:HOST:PORT`` (or ``tcp:host=HOST:port=PORT``, with an
optional ``timeout=SECONDS`` for connecting), ``tcp6:`` likewise (escape the
colons of an IPv6 address with backslashes: ``tcp6:\\:\\:1:11222``),
``unix:PATH`` (or ``unix:path=PATH``), and a bare port number, meaning
``tcp:127.0.0.1:PORT``.  Anything else (``ssl:``, ``tor:``...) is refused
with :class:`~txcb.errors.ArgumentError`; use :func:`txcb.client.remote.connect`
from Twisted for those.

Timeouts.  ``timeout`` (default 2.5 s, overridable per call with
``timeout=``) bounds the wait for a reply; a request that times out raises
:class:`~txcb.errors.TimeoutError` and the connection is closed, since a late
reply could still be on its way.  ``connect_timeout`` bounds connecting
(default: ``timeout``).

Reconnection.  With ``reconnect=True`` (the default) a closed or lost
connection is re-established by the next call, and a connection the server
closed while it was idle is noticed before a request is sent on it.  A
request in flight when the connection breaks raises
:class:`~txcb.errors.NetworkError` and is not retried: it may or may not have
been applied.

Threads.  A Bucket is thread-safe: calls from several threads are
serialized on its one connection (a lock is held for each call, including
the whole of a ``*_multi`` call or of one scan batch).  For parallel
throughput give each thread its own Bucket.  A Bucket must not be used in a
child process after ``fork()``; open a new one there.
"""

from __future__ import annotations

import functools
import threading
import time
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Tuple

from txcb.client import requests as _rq
from txcb.client.connection import (
    _DEFAULT_WINDOW, _Connection, _MultiReq, _Req, parse_endpoint, unique)
from txcb.client.replies import failed_key_result, scan_rows, subdoc_result
from txcb.limits import DEFAULT_MAX_VALUE_SIZE, DEFAULT_TIMEOUT, MAX_KEY_LEN
from txcb.verbs import StoreVerbs
from txcb.validation import check_ttl, scan_args
from txcb.wire.netstring import Op
from txcb.errors import ArgumentError, CouchbaseError, NetworkError
from txcb.formats import DEFAULT_TRANSCODER, Transcoder
from txcb.results import MultiResult, OperationResult, ScanItem, ValueResult
from txcb.subdocument import SubdocResult

__all__ = ["Bucket", "ScanIterator", "parse_endpoint", "DEFAULT_ENDPOINT", "DEFAULT_TIMEOUT"]

DEFAULT_ENDPOINT = "tcp:127.0.0.1:11222"


class _MultiCalls:
    """
    The pipelined ``*_multi`` calls of :class:`Bucket`: each runs the
    single-key method per key, its requests collected and sent together
    (``_collected``), with :func:`txcb.multi.gather_results`'s rules.
    """

    # Bucket's.
    _collected: Callable[..., List[Any]]
    upsert: Callable[..., Any]
    insert: Callable[..., Any]
    replace: Callable[..., Any]
    remove: Callable[..., Any]
    touch: Callable[..., Any]
    counter: Callable[..., Any]
    lock: Callable[..., Any]
    unlock: Callable[..., Any]

    def _gather(self, keys: List[Any], call: Callable[[Any], Any],
                result_cls: type = OperationResult) -> MultiResult:
        out = MultiResult()
        first: Optional[CouchbaseError] = None
        for key, r in zip(keys, self._collected([functools.partial(call, k) for k in keys])):
            if isinstance(r, BaseException):
                out[key] = failed_key_result(r, key, result_cls)
                if first is None:
                    first = r  # type: ignore[assignment]
            else:
                out[key] = r
        if first is not None:
            first.all_results = out
            raise first
        return out

    def _store_multi(self, call: Callable[[Any, Any], Any], mapping: Any) -> MultiResult:
        values = dict(mapping.items() if hasattr(mapping, "items") else mapping)
        return self._gather(list(values), lambda k: call(k, values[k]))

    def upsert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """upsert() for a mapping of key -> value, pipelined."""
        return self._store_multi(lambda k, v: self.upsert(
            k, v, 0, ttl, format, persist_to, replicate_to, timeout), keys)

    def insert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """insert() for a mapping of key -> value, pipelined."""
        return self._store_multi(lambda k, v: self.insert(
            k, v, ttl, format, persist_to, replicate_to, timeout), keys)

    def replace_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                      replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """replace() for a mapping of key -> value, pipelined."""
        return self._store_multi(lambda k, v: self.replace(
            k, v, 0, ttl, format, persist_to, replicate_to, timeout), keys)

    def remove_multi(self, keys: Iterable[Any], quiet: bool = False, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """remove() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self.remove(
            k, 0, quiet, persist_to, replicate_to, timeout))

    def touch_multi(self, keys: Iterable[Any], ttl: int = 0,
                    timeout: Optional[float] = None) -> MultiResult:
        """touch() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self.touch(k, ttl, timeout))

    def counter_multi(self, keys: Iterable[Any], delta: int = 1, initial: Any = None,
                      ttl: int = 0, timeout: Optional[float] = None) -> MultiResult:
        """counter() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self.counter(
            k, delta, initial, ttl, timeout), ValueResult)

    def lock_multi(self, keys: Iterable[Any], ttl: int = 15,
                   timeout: Optional[float] = None) -> MultiResult:
        """lock() for many keys, pipelined."""
        return self._gather(unique(keys), lambda k: self.lock(k, ttl, timeout), ValueResult)

    def unlock_multi(self, keys: Any, timeout: Optional[float] = None) -> MultiResult:
        """unlock() for a mapping of key -> lock cas, pipelined."""
        return self._store_multi(lambda k, cas: self.unlock(k, cas, timeout), keys)


class Bucket(StoreVerbs[OperationResult], _MultiCalls):
    """
    A blocking connection to a txcb server (see the module docstring).

    :param endpoint: a ``tcp:``, ``tcp6:`` or ``unix:`` client endpoint
        string, or a bare port number (127.0.0.1).
    :param timeout: seconds to wait for a reply (each method also takes
        ``timeout=``).
    :param connect_timeout: seconds to wait for a connection (default
        ``timeout``, or the endpoint's own ``timeout=``).
    :param transcoder: encodes values and decodes results.
    :param reconnect: reconnect on the next call after a lost connection.
    :param connect: connect now (raising ConnectError); if False, the first
        call connects.
    """

    UPSERT_OP, INSERT_OP, REPLACE_OP = Op.UPSERT, Op.INSERT, Op.REPLACE
    APPEND_OP, PREPEND_OP = Op.APPEND, Op.PREPEND

    def __init__(self, endpoint: str = DEFAULT_ENDPOINT, timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: Optional[float] = None,
                 transcoder: Optional[Transcoder] = None, reconnect: bool = True,
                 connect: bool = True) -> None:
        self.endpoint = endpoint
        self._family, self._address, ep_timeout = parse_endpoint(endpoint)
        if not (isinstance(timeout, (int, float)) and timeout > 0):
            raise ArgumentError("timeout must be a positive number, not %r" % (timeout,))
        self.timeout = float(timeout)
        if connect_timeout is None:
            connect_timeout = ep_timeout if ep_timeout is not None else self.timeout
        self.connect_timeout = connect_timeout
        self.transcoder = transcoder if transcoder is not None else DEFAULT_TRANSCODER
        self.reconnect = reconnect
        self.server_info: Dict[str, Any] = {}
        self.max_value_size = DEFAULT_MAX_VALUE_SIZE
        self._window = _DEFAULT_WINDOW
        #: GET_MULTI: the server's key limit (0: none, a GET per key) and body limit.
        self._multi_get_keys = 0
        self._max_multi_body = MAX_KEY_LEN + DEFAULT_MAX_VALUE_SIZE
        self._conn: Optional[_Connection] = None
        self._lock = threading.RLock()
        #: While pipeline() or a *_multi call collects requests: where they go.
        self._collect: Optional[List[Any]] = None
        self._closed = False
        self._ever_connected = False
        if connect:
            with self._lock:
                self._connect()

    def __repr__(self) -> str:
        return "<txcb.client.blocking.Bucket %s%s>" % (
            self.endpoint, " connected" if self._conn is not None else "")

    def __enter__(self) -> "Bucket":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- the connection -----------------------------------------------------

    @property
    def connected(self) -> bool:
        """Whether a connection is open (it may still turn out to be broken)."""
        return self._conn is not None

    def _connect(self) -> None:
        conn = _Connection.open(self._family, self._address, self.connect_timeout,
                                self.endpoint)
        self.server_info, limits = conn.handshake(self.timeout, self.transcoder, self.endpoint)
        self._conn = conn
        self.max_value_size = limits.max_value_size
        self._window = max(1, min(_DEFAULT_WINDOW, limits.max_inflight // 2))
        self._multi_get_keys, self._max_multi_body = limits.multi_keys, limits.multi_body
        self._ever_connected = True

    def _ensure_connected(self) -> None:
        if self._closed:
            raise NetworkError("the bucket is closed")
        # A connection the server closed while we were idle reads as EOF:
        # notice it now, before a request is sent into it.
        if self._conn is not None and self._conn.closed_by_peer():
            self._drop()
        if self._conn is None:
            if self._ever_connected and not self.reconnect:
                raise NetworkError("not connected (the connection was lost)")
            self._connect()

    def _drop(self) -> None:
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close()

    def close(self) -> None:
        """Close the connection; later calls raise NetworkError."""
        with self._lock:
            self._closed = True
            self._drop()

    # -- sending and receiving ------------------------------------------------

    def _exchange(self, reqs: List[Any]) -> List[Any]:
        """
        Send requests pipelined and return, in order, each one's result or
        exception (entries of ``reqs`` that are exceptions already, from
        argument checks, are passed through).
        """
        with self._lock:
            self._ensure_connected()
            return self._exchange_now(reqs)

    def _exchange_now(self, reqs: List[Any]) -> List[Any]:
        results: List[Any] = list(reqs)
        todo = [i for i, r in enumerate(reqs) if isinstance(r, _Req)]
        window = self._window
        for start in range(0, len(todo), window):
            chunk = todo[start:start + window]
            conn = self._conn
            if conn is None:
                for i in chunk:
                    results[i] = NetworkError("not sent: the connection broke", key=reqs[i].key)
                continue
            conn.round_trip(reqs, chunk, results, self.transcoder)
            if conn.broken:
                self._drop()
        return results

    def _one(self, fields: _rq.Fields, timeout: Optional[float]) -> Any:
        """
        The result of one request (raising its error), or, while a pipeline
        collects requests, None: the request is kept for it.
        """
        req = _Req(fields, self.timeout if timeout is None else timeout)
        with self._lock:
            collect = self._collect
            if collect is not None:
                collect.append(req)
                return None
            self._ensure_connected()
            result = self._exchange_now([req])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def _collected(self, calls: Iterable[Callable[[], Any]], type_errors: bool = False
                   ) -> List[Any]:
        """
        Make each call (of a single-key method) collect its request instead
        of sending it, then send them all pipelined: each one's result or
        exception, in order.  An argument error (and, given ``type_errors``,
        a TypeError, as ArgumentError) is the call's outcome.
        """
        reqs: List[Any] = []
        with self._lock:
            outer, self._collect = self._collect, reqs
            try:
                for call in calls:
                    n = len(reqs)
                    try:
                        call()
                    except CouchbaseError as e:
                        del reqs[n:]
                        reqs.append(e)
                    except TypeError as e:
                        if not type_errors:
                            raise
                        del reqs[n:]
                        reqs.append(ArgumentError(str(e)))
            finally:
                self._collect = outer
            return self._exchange(reqs)

    # -- IBucket, blocking: txcb.client.requests checks the arguments, raising here --

    def get(self, key: Any, ttl: int = 0, quiet: bool = False,
            timeout: Optional[float] = None) -> ValueResult:
        """Fetch a value (``ttl``: get-and-touch); NotFoundError unless ``quiet``."""
        return self._one(_rq.get(key, ttl, quiet), timeout)

    def _concat(self, opcode: int, key: Any, value: Any, cas: int, persist_to: int,
                replicate_to: int, timeout: Optional[float]) -> Any:
        return self._one(_rq.concat(opcode, key, value, cas, persist_to, replicate_to,
                                    self.transcoder, self.max_value_size), timeout)

    def _store(self, opcode: int, key: Any, value: Any, cas: int, ttl: int, format: Any,
               persist_to: int, replicate_to: int, timeout: Optional[float]) -> Any:
        return self._one(_rq.store(opcode, key, value, cas, ttl, format, persist_to,
                                   replicate_to, self.transcoder, self.max_value_size), timeout)

    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0, timeout: Optional[float] = None) -> OperationResult:
        """Delete a key; NotFoundError unless ``quiet``."""
        return self._one(_rq.remove(key, cas, quiet, persist_to, replicate_to), timeout)

    def touch(self, key: Any, ttl: int, timeout: Optional[float] = None) -> OperationResult:
        """Set a new expiry on an existing key."""
        return self._one(_rq.touch(key, ttl), timeout)

    def lock(self, key: Any, ttl: int = 15, timeout: Optional[float] = None) -> ValueResult:
        """Fetch and lock a key for ``ttl`` seconds (1 to 30)."""
        return self._one(_rq.lock(key, ttl), timeout)

    def unlock(self, key: Any, cas: int, timeout: Optional[float] = None) -> OperationResult:
        """Unlock a key locked with :meth:`lock`, given the lock's cas."""
        return self._one(_rq.unlock(key, cas), timeout)

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                timeout: Optional[float] = None) -> ValueResult:
        """Add ``delta`` to an unsigned 64-bit counter; ``.value`` is the new int."""
        return self._one(_rq.counter(key, delta, initial, ttl), timeout)

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> OperationResult:
        """Wait (on the server) until a key meets a durability requirement."""
        try:
            fields = _rq.endure(key, persist_to, replicate_to, cas, check_removed, timeout,
                                interval)
        except TypeError:
            raise ArgumentError("timeout must be >= 0 and interval > 0", key=key) from None
        return self._one(fields, timeout + self.timeout)

    def stats(self, timeout: Optional[float] = None) -> Dict[str, Any]:
        """The server's counters, as a dict."""
        return self._one(_rq.stats(), timeout)

    def flush(self, timeout: Optional[float] = None) -> None:
        """Remove every item in the server's bucket."""
        return self._one(_rq.flush(), timeout)

    def noop(self, timeout: Optional[float] = None) -> None:
        """A round trip that does nothing (health checks, latency)."""
        return self._one(_rq.noop(), timeout)

    def ping(self, timeout: Optional[float] = None) -> float:
        """The round-trip time of a NOOP, in seconds."""
        with self._lock:
            self._ensure_connected()
            started = time.perf_counter()
            self.noop(timeout)
            return time.perf_counter() - started

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000, batch_bytes: int = 1048576,
             timeout: Optional[float] = None) -> "ScanIterator":
        """
        Stream the items of a key range in key order (see IBucket.scan): a
        :class:`ScanIterator` whose first batch is in already.  Iterate over
        it for rows, or call ``next_batch()`` for lists of rows (``[]`` at
        the end); each batch is one request, made when asked for.
        """
        prefix, start, end, ids_only, batch_size, batch_bytes = scan_args(
            prefix, start, end, ids_only, batch_size, batch_bytes)

        def fetch(at: bytes) -> Tuple[List[ScanItem], Optional[bytes]]:
            body = self._one(_rq.scan_batch(batch_size, batch_bytes, prefix, at, end,
                                            ids_only), timeout)
            return scan_rows(body, ids_only, self.transcoder)
        return ScanIterator(fetch, start)

    def lookup_in(self, key: Any, *specs: Any, access_deleted: bool = False,
                  timeout: Optional[float] = None) -> SubdocResult:
        """See IBucket.lookup_in (one LOOKUP_IN request): the SubdocResult."""
        reply = self._one(_rq.lookup_in(key, specs, access_deleted, self.max_value_size),
                          timeout)
        return subdoc_result(reply, list(specs), True)

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, preserve_expiry: bool = False,
                  timeout: Optional[float] = None) -> SubdocResult:
        """See IBucket.mutate_in (one MUTATE_IN request): the SubdocResult, or SubdocError."""
        reply = self._one(_rq.mutate_in(key, specs, cas, ttl, upsert_doc, insert_doc,
                                        persist_to, replicate_to, preserve_expiry,
                                        self.max_value_size), timeout)
        return subdoc_result(reply, list(specs), False)

    # -- pipelines and *_multi ----------------------------------------------------

    _PIPELINE_OPS = frozenset(("get", "upsert", "insert", "replace", "remove", "touch",
                               "lock", "unlock", "counter", "append", "prepend", "endure"))

    def pipeline(self, calls: Iterable[Tuple[str, tuple, dict]]) -> List[Any]:
        """
        Run many single-key operations pipelined (sent together, then the
        replies read): ``calls`` is an iterable of ``(method name, args,
        kwargs)``; returns, in the same order, each call's result or the
        exception it would have raised (not raised)::

            bucket.pipeline([("upsert", ("a", 1), {}),
                             ("upsert", ("b", 2), {"ttl": 60}),
                             ("get", ("c",), {"quiet": True})])
        """
        todo = []
        for name, args, kwargs in calls:
            if name not in self._PIPELINE_OPS:
                raise ArgumentError("pipeline: unknown operation %r" % (name,))
            todo.append(functools.partial(getattr(self, name), *args, **kwargs))
        return self._collected(todo, True)

    def get_multi(self, keys: Iterable[Any], ttl: int = 0, quiet: bool = False,
                  timeout: Optional[float] = None) -> MultiResult:
        """get() for many keys: a MultiResult (or the first error, whose
        ``all_results`` holds every key's result).  One GET_MULTI request per
        chunk of keys where the server has it (docs/protocol.rst, 3.2), else
        a GET per key, pipelined."""
        keys = unique(keys)
        with self._lock:
            self._ensure_connected()
            max_keys = self._multi_get_keys
            if max_keys and ttl:
                try:
                    check_ttl(ttl)
                except CouchbaseError:  # every key fails as its own get would
                    max_keys = 0
            if not max_keys:
                return self._gather(keys, lambda k: self.get(k, ttl, quiet, timeout),
                                    ValueResult)
            results = MultiResult()
            errors: Dict[Any, Any] = {}
            call = (quiet, self.transcoder, results, errors)
            wait = self.timeout if timeout is None else timeout
            reqs = [_MultiReq(ks, fields, wait, call) for ks, fields in _rq.get_multi_requests(
                keys, ttl or 0, max_keys, self._max_multi_body, results, errors)]
            outcome = self._exchange_now(reqs) if reqs else []
        for req, r in zip(reqs, outcome):
            if r is not None:  # the request failed: the keys not answered with it
                _rq.multi_fail(req.keys, req.pos, r, results, errors)
        error = _rq.multi_outcome(keys, results, errors)
        if error is not None:
            raise error
        return results

class ScanIterator:
    """
    A scan through a blocking :class:`Bucket` (from :meth:`Bucket.scan`).

    :ivar continuation: the start bound (bytes) of the next batch, or None
        when the range is done: ``bucket.scan(..., start=it.continuation)``
        resumes a scan later.
    """

    def __init__(self, fetch: Callable[[bytes], Tuple[List[ScanItem], Optional[bytes]]],
                 start: bytes) -> None:
        #: ``fetch(start)``: one batch from ``start``, and where the next starts.
        self._fetch_batch = fetch
        self.continuation: Optional[bytes] = start
        self._ready: Optional[List[ScanItem]] = None
        self._ready = self._fetch()

    @property
    def done(self) -> bool:
        return self.continuation is None and not self._ready

    def _fetch(self) -> List[ScanItem]:
        while self.continuation is not None:
            rows, self.continuation = self._fetch_batch(self.continuation)
            if rows or self.continuation is None:
                return rows
        return []

    def next_batch(self) -> List[ScanItem]:
        """The next batch of rows, ``[]`` once the scan is complete."""
        ready = self._ready
        if ready is not None:
            self._ready = None
            return ready
        return self._fetch()

    def __iter__(self) -> Iterator[ScanItem]:
        while True:
            rows = self.next_batch()
            if not rows:
                return
            yield from rows

    def close(self) -> None:
        """Stop: :meth:`next_batch` returns ``[]`` from now on."""
        self.continuation = None
        self._ready = None

    cancel = close
