"""
An IBucket backed by a pool of real memcached servers.

:class:`MemcachedPool` speaks memcached's **binary** protocol (the sans-IO
codec in :mod:`txcb.wire.mcbinary`) to N servers and spreads keys over them with
twemproxy's ``hash: md5`` + ``distribution: ketama`` (or ``modula``), from
:mod:`txcb.buckets.ketama`: a key lands on the same server as through nutcracker,
libmemcached or pylibmc with ketama, so they can share the pool.

* One connection per server, pipelined: every request carries an opaque
  id and its reply is matched by it.  ``get_multi`` sends one batch of
  GETKQ (GATKQ with a ttl) per server, closed by a NOOP, all servers at
  once; ``upsert_multi``/``insert_multi``/``replace_multi``/``remove_multi``
  send quiet SETQ/ADDQ/REPLACEQ/DELETEQ batches the same way (memcached
  answers a quiet mutation only when it fails, so their results carry
  ``cas == 0``; pass ``quiet_multi=False`` to get every CAS back).
* Values are stored as the transcoder's ``(bytes, flags)`` with the flags
  in memcached's 32-bit item flags, and read back as ``ValueResult(raw,
  flags)``: what txcb writes, other clients read with the same flags, and
  ``Encoded(data, flags)`` passes through unchanged.
* What memcached does not have is refused, honestly: ``lock``/``unlock``
  use Couchbase's GET_LOCKED/UNLOCK_KEY when the server has them (probed
  once per connection with a keyless GET_LOCKED), else errback
  NotSupportedError; ``persist_to``/``replicate_to`` > 0 errback
  DurabilityError before anything is sent (memcached keeps items in
  memory only, on one server); ``endure`` checks presence/CAS with GETs.
* Counters: INCR/DECR that never create (exptime 0xFFFFFFFF); a missing
  key with an ``initial`` is then created with ADD as JSON (FMT_JSON flags,
  so ``get`` reads an int back, as from the other txcb buckets), retrying
  the INCR if another client created it meanwhile.
* Faults: a server whose connection is known dead makes its keys errback
  NetworkError at once (AuthError if it refused our credentials); the
  others keep serving.  Lost connections reconnect with exponential
  backoff on the injected reactor.  With ``auto_eject_hosts`` a server
  that failed ``server_failure_limit`` times in a row is taken out of the
  continuum (its keys move to the others, twemproxy's semantics) for at
  least ``server_retry_timeout`` seconds and until it answers again.
* Keyspaces: with ``namespace=`` every key goes out behind that prefix
  (counted in memcached's 250 bytes; a longer key errbacks ArgumentError
  saying so), so keyspaces can share servers without seeing each other's
  keys; :meth:`MemcachedPool.namespaced` makes one more on the same
  connections.  ``flush`` empties whole servers, so a namespaced pool
  refuses it.
* ``lookup_in`` / ``mutate_in`` (:mod:`~txcb.buckets.mcpool_subdoc`): a GET,
  the sub-document engine, a CAS REPLACE, retried a bounded number of times
  (``subdoc_attempts``) on CAS conflicts, then TemporaryFailError; xattr
  specs and ``preserve_expiry`` are refused with NotSupportedError.
* Every operation has a timeout (2.5 s by default, ``timeout=`` on each
  call) and can be cancelled; a lost connection errbacks everything in
  flight on it with NetworkError.  No Deferred is left unfired.

Its pieces, one job each: :mod:`~txcb.buckets.mcpool_servers` (the server
forms, key placement, ejection, the deadline sweeper and write coalescer),
:mod:`~txcb.buckets.mcconn` (one server's connection and reconnection),
:mod:`~txcb.buckets.mcpool_dispatch` (the send path),
:mod:`~txcb.buckets.mcrequests` (what each reply turns into),
:mod:`~txcb.buckets.mcpool_multi` (the batched ``*_multi`` methods),
:mod:`~txcb.buckets.mcpool_subdoc` (``lookup_in`` / ``mutate_in``) and
:mod:`~txcb.buckets.mcpool_endure` (``endure``'s polling).

Example::

    pool = MemcachedPool(["10.0.0.1:11211", "10.0.0.2:11211:2"], reactor=reactor)
    yield pool.upsert("k", {"a": 1})
    r = yield pool.get("k")
"""

from __future__ import annotations

import copy
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail, succeed
from twisted.python.failure import Failure
from zope.interface import implementer

from txcb.buckets.ketama import NoServersError
from txcb.buckets.mcconn import NEW, ConnectionSettings, MemcachedProtocol, MemcachedServer
from txcb.buckets.mcpool_dispatch import Dispatcher
from txcb.buckets.mcpool_endure import EndurePoll
from txcb.buckets.mcpool_subdoc import SubdocOperations
from txcb.buckets.mcpool_multi import MultiOperations
from txcb.buckets.mcpool_servers import (
    DeadlineSweeper, PoolTopology, ServerArg, WriteCoalescer, parse_backend, parse_servers)
from txcb.buckets.mcrequests import (
    K_COUNTER, K_CONCAT, K_MUTATION, K_NONE, K_STATS, K_VALUE)
from txcb.errors import ArgumentError, NetworkError, NotSupportedError, TooBigError
from txcb.formats import DEFAULT_TRANSCODER, Transcoder, concat_bytes
from txcb.interfaces import IBucket
from txcb.limits import DEFAULT_TIMEOUT, MAX_KEY_LEN
from txcb.multi import MultiMixin
from txcb.refusals import refuses_with_deferred
from txcb.verbs import StoreVerbs
from txcb.validation import (
    check_cas, check_delta, check_lock_ttl, check_ttl, check_ttl_cas, resolve_durability, scan_args, to_key)
from txcb.wire import mcbinary as mcb

__all__ = ["MemcachedPool", "MemcachedProtocol", "parse_servers", "parse_backend",
           "DEFAULT_TIMEOUT", "DEFAULT_MAX_VALUE_SIZE"]

#: memcached's default item size limit (``-I 1m``).  The exact limit for a
#: value is a little lower (the item header, key and flags count too): the
#: server answers E2BIG for those, which errbacks TooBigError as well.
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024

O = mcb.Opcode


class _Setting:
    """A pool attribute that lives on one of its collaborators."""

    def __init__(self, owner: str, name: str) -> None:
        self.owner = owner
        self.name = name

    def __get__(self, pool: Any, cls: Any = None) -> Any:
        if pool is None:
            return self
        return getattr(getattr(pool, self.owner), self.name)

    def __set__(self, pool: Any, value: Any) -> None:
        setattr(getattr(pool, self.owner), self.name, value)


def _credentials(username: Optional[Union[str, bytes]],
                 password: Optional[Union[str, bytes]]) -> Optional[Tuple[bytes, bytes]]:
    """SASL PLAIN credentials as bytes (checked now), or None."""
    if (username is None) != (password is None):
        raise ValueError("give both username and password, or neither")
    if username is None or password is None:
        return None
    credentials = (
        username.encode("utf-8") if isinstance(username, str) else bytes(username),
        password.encode("utf-8") if isinstance(password, str) else bytes(password))
    mcb.build_sasl_plain(*credentials)  # validates them now
    return credentials


# -- the pool -------------------------------------------------------------------

@implementer(IBucket)
class MemcachedPool(StoreVerbs[Deferred], SubdocOperations, MultiOperations, MultiMixin):
    """
    An IBucket over a pool of memcached servers (binary protocol).

    :param servers: ``"host:port[:weight]"`` strings (``"[v6]:port"`` for
        IPv6; an optional ``" name"`` suffix sets the ketama hash name as in
        twemproxy), ``(host, port[, weight])`` tuples, or one
        comma-separated string of them.
    :param reactor: provides IReactorTCP and IReactorTime: connections,
        timeouts and reconnection delays all use it (default: the global
        reactor, imported here, when the pool is made).
    :param distribution: ``"ketama"`` (default) or ``"modula"``, as twemproxy
        with ``hash: md5``.
    :param timeout: seconds before an operation errbacks TimeoutError (each
        method also takes ``timeout=``; 0 means none).
    :param connect_timeout: seconds for a TCP connect plus handshake.
    :param username: / :param password: SASL PLAIN credentials (str or bytes)
        for servers started with ``-S``.
    :param auto_eject_hosts: take a failing server out of the continuum
        (off by default, because it silently moves keys to other servers).
    :param server_failure_limit: consecutive failures (failed or lost
        connections, timeouts) before ejection.
    :param server_retry_timeout: seconds an ejected server stays out, at
        least (it comes back once it also answers again).
    :param retry_initial: / :param retry_max: / :param retry_factor: the
        exponential backoff between reconnection attempts (seconds), with up
        to 10% jitter.
    :param max_value_size: values above this are refused (TooBigError)
        without asking the server; set it to the servers' ``-I``.
    :param quiet_multi: multi-mutations as quiet requests (their results
        have ``cas == 0``); False sends loud ones and returns every CAS.
    :param hash_tag: twemproxy's ``hash_tag`` (two bytes such as ``b"{}"``).
    :param start: connect now (else on :meth:`start` or on first use).
    :param namespace: bytes put before every key sent, so several keyspaces
        can share the servers without seeing each other's keys (results
        carry the caller's keys, without it).  It counts against memcached's
        250-byte key limit.  :meth:`namespaced` makes another keyspace on the
        same connections.
    """
    #: memcached keeps items in memory, on one server each.
    UPSERT_OP, INSERT_OP, REPLACE_OP = O.SET, O.ADD, O.REPLACE
    APPEND_OP, PREPEND_OP = O.APPEND, O.PREPEND
    max_persist_to = 0
    max_replicate_to = 0

    timeout = _Setting("_dispatcher", "timeout")
    transcoder = _Setting("_dispatcher", "transcoder")
    quiet_multi = _Setting("_dispatcher", "quiet_multi")
    distribution = _Setting("_topology", "distribution")
    auto_eject_hosts = _Setting("_topology", "auto_eject_hosts")
    server_failure_limit = _Setting("_topology", "server_failure_limit")
    server_retry_timeout = _Setting("_topology", "server_retry_timeout")
    retry_initial = _Setting("_topology", "retry_initial")
    retry_max = _Setting("_topology", "retry_max")
    retry_factor = _Setting("_topology", "retry_factor")

    def __init__(self, servers: Union[str, Iterable[ServerArg]], reactor: Any = None,
                 distribution: str = "ketama", timeout: float = DEFAULT_TIMEOUT,
                 connect_timeout: float = DEFAULT_TIMEOUT,
                 transcoder: Optional[Transcoder] = None,
                 username: Optional[Union[str, bytes]] = None,
                 password: Optional[Union[str, bytes]] = None,
                 auto_eject_hosts: bool = False, server_failure_limit: int = 2,
                 server_retry_timeout: float = 30.0, retry_initial: float = 0.5,
                 retry_max: float = 30.0, retry_factor: float = 2.0,
                 max_value_size: int = DEFAULT_MAX_VALUE_SIZE, quiet_multi: bool = True,
                 hash_tag: Optional[bytes] = None, start: bool = True,
                 namespace: bytes = b"") -> None:
        self._set_namespace(namespace)
        self._owner = True
        if reactor is None:
            from twisted.internet import reactor as _reactor
            reactor = _reactor
        self._reactor = reactor
        specs = parse_servers(servers)
        #: the servers, in configuration order.
        self._servers: List[MemcachedServer] = []
        self._topology = topology = PoolTopology(
            specs, distribution, hash_tag, reactor, self._servers, auto_eject_hosts,
            server_failure_limit, server_retry_timeout, retry_initial, retry_max,
            retry_factor)
        self.connect_timeout = connect_timeout
        credentials = _credentials(username, password)
        self.max_value_size = max_value_size
        self._sweeper = DeadlineSweeper(reactor, self._servers)
        self._writes = WriteCoalescer(reactor)
        settings = ConnectionSettings(reactor, connect_timeout,
                                      max(mcb.DEFAULT_MAX_BODY, max_value_size + 1024),
                                      credentials)
        self._servers.extend(
            MemcachedServer(i, spec, settings, topology, self._sweeper.arm,
                            self._writes.dirty)
            for i, spec in enumerate(specs))
        topology.rebuild()
        self._dispatcher = dispatcher = Dispatcher(
            topology, self._sweeper, reactor.seconds,
            transcoder if transcoder is not None else DEFAULT_TRANSCODER, timeout,
            quiet_multi)
        self._request = dispatcher.request
        self._closed = False
        if start:
            self.start()

    # -- the key namespace -------------------------------------------------------

    def _set_namespace(self, namespace: bytes) -> None:
        if not isinstance(namespace, bytes) or len(namespace) >= MAX_KEY_LEN:
            raise ValueError("namespace must be bytes shorter than %d, not %r"
                             % (MAX_KEY_LEN, namespace))
        self._namespace = namespace
        # No namespace: keys go out as to_key makes them, at no extra cost.
        self._key: Callable[[Any], bytes] = self._namespaced_key if namespace else to_key

    def _namespaced_key(self, key: Any) -> bytes:
        k = self._namespace + to_key(key)
        if len(k) > MAX_KEY_LEN:
            room = MAX_KEY_LEN - len(self._namespace)
            raise ArgumentError(
                "key of %d bytes is too long for this keyspace: its %d-byte namespace "
                "prefix leaves %d of memcached's %d key bytes"
                % (len(k) - len(self._namespace), len(self._namespace), room, MAX_KEY_LEN),
                key=key)
        return k

    @property
    def namespace(self) -> bytes:
        return self._namespace

    def namespaced(self, namespace: bytes) -> "MemcachedPool":
        """
        Another keyspace on this pool's connections (and settings): its keys
        go out behind ``namespace``.  Closing it leaves the connections to
        this pool, which closes them.
        """
        view = copy.copy(self)
        view._set_namespace(namespace)
        view._owner = False
        return view

    # -- the servers -------------------------------------------------------------

    def start(self) -> None:
        """Connect to every server (else each connects on first use)."""
        for s in self._servers:
            if s.state == NEW:
                s.connect()

    @property
    def servers(self) -> List[str]:
        """The servers' ``host:port`` labels, in configuration order."""
        return [s.label for s in self._servers]

    def server_for(self, key: Any) -> str:
        """The ``host:port`` of the server that holds ``key`` now."""
        try:
            return self._topology.locate(self._key(key)).label
        except NoServersError:
            raise NetworkError("no memcached server available (all ejected)", key=key)

    def status(self) -> Dict[str, Dict[str, Any]]:
        """Per server: ``state`` (new, connecting, up, down, closed),
        ``ejected``, ``failures``, ``in_flight``, ``locks``, ``last_error``."""
        return self._topology.status()

    # -- argument checks -------------------------------------------------------

    def _durability(self, persist_to: Any, replicate_to: Any, key: Any) -> None:
        if persist_to or replicate_to:
            resolve_durability(persist_to, replicate_to, 0, 0, key)

    def _encode(self, value: Any, format: Any, key: Any) -> Tuple[bytes, int]:
        data, flags = self._dispatcher.transcoder.encode(value, format)
        return self._sized(data, key), flags

    def _sized(self, data: bytes, key: Any) -> bytes:
        """``data``, unless it is over the pool's value size (TooBigError)."""
        if len(data) > self.max_value_size:
            raise TooBigError("value of %d bytes is over the pool's %d byte limit"
                              % (len(data), self.max_value_size), key=key)
        return data

    # -- IBucket: single keys ----------------------------------------------------

    @refuses_with_deferred
    def get(self, key: Any, ttl: int = 0, quiet: bool = False,
            timeout: Optional[float] = None) -> Deferred:
        k = self._key(key)
        if ttl:
            check_ttl(ttl, key)
            return self._request(k, key, O.GAT, K_VALUE, mcb.touch_extras(ttl), b"", 0,
                                 quiet, timeout)
        return self._request(k, key, O.GET, K_VALUE, b"", b"", 0, quiet, timeout)

    @refuses_with_deferred
    def _store(self, opcode: int, key: Any, value: Any, cas: int, ttl: int, format: Any,
               persist_to: int, replicate_to: int, timeout: Optional[float]) -> Deferred:
        k = self._key(key)
        check_ttl_cas(ttl, cas, key)
        self._durability(persist_to, replicate_to, key)
        data, flags = self._encode(value, format, key)
        return self._request(k, key, opcode, K_MUTATION, mcb.store_extras(flags, ttl),
                             data, cas, False, timeout)

    @refuses_with_deferred
    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        k = self._key(key)
        if cas:
            check_cas(cas, key)
        self._durability(persist_to, replicate_to, key)
        return self._request(k, key, O.DELETE, K_MUTATION, b"", b"", cas, quiet, timeout)

    @refuses_with_deferred
    def touch(self, key: Any, ttl: int, timeout: Optional[float] = None) -> Deferred:
        k = self._key(key)
        check_ttl(ttl, key)
        return self._request(k, key, O.TOUCH, K_MUTATION, mcb.touch_extras(ttl), b"", 0,
                             False, timeout)

    @refuses_with_deferred
    def lock(self, key: Any, ttl: int = 15, timeout: Optional[float] = None) -> Deferred:
        """GET_LOCKED where the server has it (Couchbase); NotSupportedError on memcached."""
        k = self._key(key)
        check_lock_ttl(ttl, key)
        return self._request(k, key, O.GET_LOCKED, K_VALUE, mcb.get_locked_extras(ttl), b"",
                             0, False, timeout, locks=True)

    @refuses_with_deferred
    def unlock(self, key: Any, cas: int, timeout: Optional[float] = None) -> Deferred:
        """UNLOCK_KEY where the server has it (Couchbase); NotSupportedError on memcached."""
        k = self._key(key)
        check_cas(cas, key)
        return self._request(k, key, O.UNLOCK_KEY, K_MUTATION, b"", b"", cas, False, timeout,
                             locks=True)

    @refuses_with_deferred
    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                timeout: Optional[float] = None) -> Deferred:
        k = self._key(key)
        check_delta(delta, initial, key)
        if ttl:
            check_ttl(ttl, key)
        return self._request(
            k, key, O.DECREMENT if delta < 0 else O.INCREMENT, K_COUNTER,
            mcb.counter_extras(abs(delta), 0, mcb.COUNTER_NO_CREATE), b"", 0, False, timeout,
            (delta, initial, ttl, 0))

    @refuses_with_deferred
    def _concat(self, opcode: int, key: Any, value: Any, cas: int, persist_to: int,
                replicate_to: int, timeout: Optional[float]) -> Deferred:
        k = self._key(key)
        if cas:
            check_cas(cas, key)
        self._durability(persist_to, replicate_to, key)
        data = self._sized(concat_bytes(value, self.transcoder), key)
        verb = "append" if opcode == O.APPEND else "prepend"
        return self._request(k, key, opcode, K_CONCAT, b"", data, cas, False, timeout, verb)

    # -- durability --------------------------------------------------------------

    @refuses_with_deferred
    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> Deferred:
        """
        memcached has neither disks nor replicas: anything beyond memory
        errbacks DurabilityError; otherwise GETs check that the key is there
        (at ``cas``, if given), or poll every ``interval`` seconds until it
        is gone if ``check_removed``.
        """
        k = self._key(key)
        if cas:
            check_cas(cas, key)
        resolve_durability(persist_to, replicate_to, 0, 0, key)
        if not (isinstance(timeout, (int, float)) and timeout >= 0
                and isinstance(interval, (int, float)) and interval > 0):
            raise ArgumentError("timeout must be >= 0 and interval > 0", key=key)

        def get(t: float) -> Deferred:
            return self._request(k, key, O.GET, K_VALUE, quiet=True, timeout=t)
        return EndurePoll(get, self._reactor, key, cas, check_removed, timeout, interval,
                          self.timeout).start()

    # -- whole pool --------------------------------------------------------------

    @refuses_with_deferred
    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000,
             batch_bytes: int = 1048576) -> Deferred:
        """
        Not supported: memcached keeps no key order and its binary protocol
        has no way to list keys.  Bad arguments still errback ArgumentError.
        """
        scan_args(prefix, start, end, ids_only, batch_size, batch_bytes)
        return fail(NotSupportedError("memcached cannot scan: it keeps no key order and "
                                      "has no command to list keys"))

    def _each_server(self, opcode: int, kind: int, timeout: Optional[float],
                     args: Callable[[], Any] = lambda: None
                     ) -> List[Tuple[MemcachedServer, Deferred]]:
        return [(s, self._request(b"", None, opcode, kind, timeout=timeout, args=args(),
                                  server=s))
                for s in self._servers]

    def stats(self, timeout: Optional[float] = None) -> Deferred:
        """
        ``{stat: {"host:port": value}}`` like the Couchbase SDK, from each
        server's STAT, plus txcb's names for the common ones (``items`` =
        curr_items, ``hits`` = get_hits, ``misses`` = get_misses,
        ``connections`` = curr_connections, ``op_get`` = cmd_get,
        ``op_upsert`` = cmd_set (every store)).  Servers that do not answer
        are left out; if none answers, errbacks the first error.
        """
        pairs = self._each_server(O.STAT, K_STATS, timeout, dict)
        return _gather(pairs).addCallback(_merge_stats)

    def flush(self, timeout: Optional[float] = None) -> Deferred:
        """FLUSH every server (memcached's ``flush_all``): fires None.  Errbacks
        (with the first server's error) if any server could not be flushed.
        Every namespace on the servers is emptied, so a namespaced pool refuses
        (NotSupportedError)."""
        if self._namespace:
            return fail(NotSupportedError(
                "memcached can only flush whole servers, which would empty every "
                "keyspace on them: flush the pool without a namespace"))
        return _gather(self._each_server(O.FLUSH, K_NONE, timeout)).addCallback(
            _all_or_first_error)

    def close(self) -> Deferred:
        """Close every connection, stop reconnecting; requests in flight errback.
        A pool made by :meth:`namespaced` leaves that to the pool it came from."""
        if not self._owner:
            return succeed(None)
        self._closed = True
        ds = [s.close() for s in self._servers]
        self._sweeper.stop()
        self._writes.stop()
        return _gather([(None, d) for d in ds]).addCallback(lambda _: None)


def _gather(pairs: Sequence[Tuple[Any, Deferred]]) -> Deferred:
    """Wait for every Deferred: fires ``[(tag, result_or_Failure), ...]``."""
    out: Deferred = Deferred()
    results: List[Any] = [None] * len(pairs)
    left = [len(pairs)]
    if not pairs:
        out.callback([])

    def one(r: Any, i: int, tag: Any) -> None:
        results[i] = (tag, r)
        left[0] -= 1
        if not left[0]:
            out.callback(results)
    for i, (tag, d) in enumerate(pairs):
        d.addBoth(one, i, tag)
    return out


def _all_or_first_error(results: List[Tuple[Any, Any]]) -> Any:
    for _tag, r in results:
        if isinstance(r, Failure):
            return r
    return None


_ALIASES = (("items", "curr_items"), ("hits", "get_hits"), ("misses", "get_misses"),
            ("connections", "curr_connections"), ("op_get", "cmd_get"),
            ("op_upsert", "cmd_set"))


def _merge_stats(results: List[Tuple[MemcachedServer, Any]]) -> Any:
    out: Dict[str, Dict[str, Any]] = {}
    first = None
    answered = 0
    for server, r in results:
        if isinstance(r, Failure):
            first = first or r
            continue
        answered += 1
        for name, value in r.items():
            out.setdefault(name, {})[server.label] = value
        for alias, name in _ALIASES:
            if name in r:
                out.setdefault(alias, {})[server.label] = r[name]
    if not answered and first is not None:
        return first
    return out
