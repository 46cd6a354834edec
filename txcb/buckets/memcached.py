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
* Every operation has a timeout (2.5 s by default, ``timeout=`` on each
  call) and can be cancelled; a lost connection errbacks everything in
  flight on it with NetworkError.  No Deferred is left unfired.

Example::

    pool = MemcachedPool(["10.0.0.1:11211", "10.0.0.2:11211:2"], reactor=reactor)
    yield pool.upsert("k", {"a": 1})
    r = yield pool.get("k")
"""

from __future__ import annotations

import random
import struct
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure
from zope.interface import implementer

from txcb.wire import mcbinary as mcb
from txcb.buckets.ketama import DEFAULT_KETAMA_PORT, Continuum, Modula, NoServersError, ServerSpec
# The per-server machinery lives in txcb.buckets._mcconn (see its docstring); every
# name it defines stays importable from here.
from txcb.buckets._mcconn import (  # noqa: F401
    CLOSED, DOWN, FIRST, K_CONCAT, K_CONCAT_CHECK, K_COUNTER, K_COUNTER_ADD, K_MUTATION,
    K_NONE, K_PROBE, K_SASL, K_STATS, K_VALUE, NEW, UP, O, _COUNTER_TRIES, _U32, _Batch,
    _ConnFactory, MemcachedProtocol, _flags_of, _log, _Multi, _no_locks, _Op, _Server,
    _stat_value)
from txcb.multi import MultiMixin, unique
from txcb.validation import (
    MAX_KEY_LEN, check_cas, check_delta, check_lock_ttl, check_ttl, resolve_durability,
    scan_args, to_key)
from txcb.errors import (
    ArgumentError, CouchbaseError, KeyExistsError, NetworkError, NotFoundError,
    NotSupportedError, TimeoutError, TooBigError)
from txcb.formats import DEFAULT_TRANSCODER, Transcoder
from txcb.interfaces import IBucket
from txcb.results import OperationResult, ValueResult

__all__ = ["MemcachedPool", "MemcachedProtocol", "parse_servers", "parse_backend",
           "DEFAULT_TIMEOUT", "DEFAULT_MAX_VALUE_SIZE"]

DEFAULT_TIMEOUT = 2.5
#: memcached's default item size limit (``-I 1m``).  The exact limit for a
#: value is a little lower (the item header, key and flags count too): the
#: server answers E2BIG for those, which errbacks TooBigError as well.
DEFAULT_MAX_VALUE_SIZE = 1024 * 1024

_NEVER = float("inf")
#: key -> server routes remembered (the continuum lookup hashes the key).
_MAX_ROUTES = 65536
_REQ_HEADER = struct.Struct(">BBHBBHIIQ")
_STORE_EXTRAS = struct.Struct(">II")


# -- server specs -------------------------------------------------------------

ServerArg = Union[str, ServerSpec, Tuple[str, int], Tuple[str, int, int]]


def _parse_one(entry: ServerArg) -> ServerSpec:
    """
    ``"host:port[:weight][ name]"``, ``"[v6addr]:port[:weight][ name]"`` or a
    ``(host, port[, weight])`` tuple -> a ServerSpec whose hash name follows
    twemproxy (``name`` if given, else ``host`` for port 11211, else
    ``host:port``).
    """
    name: Optional[str] = None
    if isinstance(entry, ServerSpec):
        return entry
    if isinstance(entry, tuple):
        if len(entry) not in (2, 3):
            raise ValueError("server tuple must be (host, port[, weight]): %r" % (entry,))
        host, port = str(entry[0]), entry[1]
        weight = entry[2] if len(entry) == 3 else 1
        port_s = str(port)
    else:
        line = str(entry).strip()
        if " " in line:
            line, name = line.rsplit(" ", 1)
        if line.startswith("["):
            end = line.find("]")
            if end < 0 or line[end + 1:end + 2] != ":":
                raise ValueError("bad server %r: expected [v6addr]:port[:weight]" % (entry,))
            host, rest = line[1:end], line[end + 2:].split(":")
        else:
            parts = line.split(":")
            if len(parts) > 3:
                raise ValueError("bad server %r: write IPv6 addresses as [addr]:port"
                                 % (entry,))
            host, rest = parts[0], parts[1:]
        if not host or not 1 <= len(rest) <= 2:
            raise ValueError("bad server %r: expected host:port[:weight]" % (entry,))
        port_s = rest[0]
        if not port_s.isdigit():
            raise ValueError("bad port in server %r" % (entry,))
        port = int(port_s)
        weight_s = rest[1] if len(rest) == 2 else "1"
        if not weight_s.isdigit():
            raise ValueError("bad weight in server %r" % (entry,))
        weight = int(weight_s)
    if type(port) is not int or not 0 < port < 65536:
        raise ValueError("bad port in server %r" % (entry,))
    if type(weight) is not int or weight < 1:
        raise ValueError("weight must be a positive int in server %r" % (entry,))
    if name is None:
        name = host if port == DEFAULT_KETAMA_PORT else "%s:%s" % (host, port_s)
    return ServerSpec("%s:%d:%d" % (host, port, weight), name, host, port, weight)


def parse_servers(servers: Union[str, Iterable[ServerArg]]) -> List[ServerSpec]:
    """Parse a list of servers, or one comma-separated string of them."""
    if isinstance(servers, str):
        servers = [s for s in servers.split(",") if s.strip()]
    specs = [_parse_one(s) for s in servers]
    if not specs:
        raise ValueError("a memcached pool needs at least one server")
    return specs


def parse_backend(description: str) -> List[ServerSpec]:
    """
    ``memcached:HOST:PORT[:WEIGHT],HOST:PORT[:WEIGHT],...`` (the form of
    ``twistd txcb --backend``) -> the servers.
    """
    kind, sep, rest = description.partition(":")
    if kind != "memcached" or not sep:
        raise ValueError("unknown backend %r (expected memcached:HOST:PORT,...)"
                         % (description,))
    return parse_servers(rest)


# -- the pool -------------------------------------------------------------------

@implementer(IBucket)
class MemcachedPool(MultiMixin):
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
    """

    #: memcached keeps items in memory, on one server each.
    max_persist_to = 0
    max_replicate_to = 0

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
                 hash_tag: Optional[bytes] = None, start: bool = True) -> None:
        if reactor is None:
            from twisted.internet import reactor as _reactor
            reactor = _reactor
        self._reactor = reactor
        self._seconds = reactor.seconds
        self._specs = parse_servers(servers)
        if distribution not in ("ketama", "modula"):
            raise ValueError("distribution must be 'ketama' or 'modula', not %r"
                             % (distribution,))
        self.distribution = distribution
        self._dist_cls = Continuum if distribution == "ketama" else Modula
        self._hash_tag = hash_tag
        self.timeout = timeout
        self.connect_timeout = connect_timeout
        self.transcoder = transcoder if transcoder is not None else DEFAULT_TRANSCODER
        if (username is None) != (password is None):
            raise ValueError("give both username and password, or neither")
        self._credentials: Optional[Tuple[bytes, bytes]] = None
        if username is not None and password is not None:
            self._credentials = (
                username.encode("utf-8") if isinstance(username, str) else bytes(username),
                password.encode("utf-8") if isinstance(password, str) else bytes(password))
            mcb.build_sasl_plain(*self._credentials)  # validates them now
        if server_failure_limit < 1:
            raise ValueError("server_failure_limit must be at least 1")
        self.auto_eject_hosts = auto_eject_hosts
        self.server_failure_limit = server_failure_limit
        self.server_retry_timeout = server_retry_timeout
        if not (0 < retry_initial <= retry_max and retry_factor >= 1):
            raise ValueError("need 0 < retry_initial <= retry_max and retry_factor >= 1")
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.retry_factor = retry_factor
        self._retry_jitter = random.Random()
        self.max_value_size = max_value_size
        self._max_body = max(mcb.DEFAULT_MAX_BODY, max_value_size + 1024)
        self.quiet_multi = quiet_multi
        self._servers = [_Server(self, i, spec) for i, spec in enumerate(self._specs)]
        self._sweep_call: Any = None
        self._sweep_at = _NEVER
        self._flush_call: Any = None
        self._unflushed: List[MemcachedProtocol] = []
        self._dist: Any = None
        self._rebuild()
        self._closed = False
        if start:
            self.start()

    # -- topology --------------------------------------------------------------

    def _rebuild(self) -> None:
        ejected = [s.index for s in self._servers if s.ejected]
        self._dist = self._dist_cls(self._specs, ejected=ejected, hash_tag=self._hash_tag)
        self._server_for = self._dist.server_for
        self._routes: Dict[bytes, _Server] = {}

    # -- deadlines: one DelayedCall for the pool, at the earliest deadline ------

    def _arm(self, deadline: float) -> None:
        if deadline < self._sweep_at:
            call = self._sweep_call
            if call is not None and call.active():
                call.cancel()
            self._sweep_at = deadline
            self._sweep_call = self._reactor.callLater(
                max(deadline - self._reactor.seconds(), 0.0), self._sweep)

    def _sweep(self) -> None:
        """Expire what is past its deadline; wake up again at the next one."""
        self._sweep_call = None
        self._sweep_at = _NEVER
        now = self._reactor.seconds()
        expired = []
        nearest = _NEVER
        for server in self._servers:
            for proto in (server.proto, server.handshaking):
                if proto is not None:
                    for entry in proto.pending.values():
                        d = entry.deadline
                        if d:
                            if d <= now:
                                expired.append(entry)
                            elif d < nearest:
                                nearest = d
            for entry in server.waiting:
                d = entry.deadline
                if d:
                    if d <= now:
                        expired.append(entry)
                    elif d < nearest:
                        nearest = d
        for entry in expired:
            if entry.deadline:  # not finished by an earlier expiry (same multi)
                entry.expire()
        if nearest is not _NEVER:
            self._arm(nearest)

    # -- coalesced writes ----------------------------------------------------

    def _dirty(self, proto: MemcachedProtocol) -> None:
        self._unflushed.append(proto)
        if self._flush_call is None:
            self._flush_call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._flush_call = None
        protos, self._unflushed = self._unflushed, []
        for proto in protos:
            proto.flush()

    def _retry_delay(self, attempts: int) -> float:
        """Exponential backoff (like ClientService's), plus up to 10% jitter."""
        delay = min(self.retry_initial * self.retry_factor ** min(attempts - 1, 64),
                    self.retry_max)
        return delay * (1.0 + 0.1 * self._retry_jitter.random())

    def _server_failed(self, server: _Server) -> None:
        if (self.auto_eject_hosts and not server.ejected and server.state != CLOSED
                and server.failures >= self.server_failure_limit):
            server.ejected = True
            server.ejected_at = self._reactor.seconds()
            self._rebuild()
            _log.warn("memcached {server} ejected after {n} failures: its keys go to the "
                      "other servers for at least {retry}s",
                      server=server.label, n=server.failures, retry=self.server_retry_timeout)
            if server.proto is not None:
                # Ejected while connected (timeouts): reconnecting makes the
                # handshake prove the server answers before it comes back.
                proto = server.proto
                proto.failure = NetworkError("ejected after %d failures" % (server.failures,))
                transport = proto.transport
                assert transport is not None  # server.proto: connected
                transport.abortConnection()

    def _server_up(self, server: _Server) -> None:
        if not server.ejected:
            return
        wait = server.ejected_at + self.server_retry_timeout - self._reactor.seconds()
        if wait <= 0:
            self._readmit(server)
        elif server.readmit_call is None:
            server.readmit_call = self._reactor.callLater(wait, self._readmit, server)

    def _readmit(self, server: _Server) -> None:
        server.readmit_call = None
        if server.ejected and server.state == UP:
            server.ejected = False
            server.failures = 0
            self._rebuild()
            _log.info("memcached {server} is back in the pool", server=server.label)

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
            return self._servers[self._server_for(to_key(key))].label
        except NoServersError:
            raise NetworkError("no memcached server available (all ejected)", key=key)

    def status(self) -> Dict[str, Dict[str, Any]]:
        """Per server: ``state`` (new, connecting, up, down, closed),
        ``ejected``, ``failures``, ``in_flight``, ``locks``, ``last_error``."""
        out = {}
        for s in self._servers:
            out[s.label] = {
                "state": s.state, "ejected": s.ejected, "failures": s.failures,
                "in_flight": len(s.proto.pending) if s.proto is not None else 0,
                "locks": s.proto.locks if s.proto is not None else None,
                "last_error": s.last_error.message if s.state == DOWN else None,
                "name": s.spec.name, "weight": s.spec.weight,
            }
        return out

    # -- sending ---------------------------------------------------------------

    def _route(self, k: bytes, key: Any) -> Union[_Server, CouchbaseError]:
        """The server for ``k``, or the error to fail with."""
        routes = self._routes
        server = routes.get(k)
        if server is None:
            try:
                server = self._servers[self._server_for(k)]
            except NoServersError:
                return NetworkError("no memcached server available (all ejected)", key=key)
            if len(routes) >= _MAX_ROUTES:
                routes.clear()
            routes[k] = server
        return server

    def _request(self, k: bytes, key: Any, opcode: int, kind: int, extras: bytes = b"",
                 value: bytes = b"", cas: int = 0, quiet: bool = False,
                 timeout: Optional[float] = None, args: Any = None, locks: bool = False,
                 server: Optional[_Server] = None) -> Deferred:
        if server is None:
            routed = self._route(k, key)
            if isinstance(routed, CouchbaseError):
                return fail(routed)
            server = routed
        state = server.state
        if state is UP:
            proto = server.proto
            if locks and not proto.locks:  # type: ignore[union-attr]
                return fail(_no_locks(server, key))
        elif state is DOWN or state is CLOSED:
            return fail(server.down_error(key))
        else:
            proto = None
        op = _Op(self, server, key, k, kind, quiet, args, locks)
        opaque = server._opaque = (server._opaque + 1) & 0xFFFFFFFF
        if proto is not None and opaque in proto.pending:
            opaque = server.next_opaque(proto)
        op.opaque = opaque
        lx = len(extras)
        lk = len(k)
        frame = b"".join((_REQ_HEADER.pack(0x80, opcode, lk, lx, 0, 0, lx + lk + len(value),
                                           opaque, cas), extras, k, value))
        if timeout is None:
            timeout = self.timeout
        if timeout:
            op.timeout = timeout
            op.deadline = deadline = self._seconds() + timeout
            if deadline < self._sweep_at:
                self._arm(deadline)
        if proto is not None:
            op.proto = proto
            proto.pending[opaque] = op
            proto.send(frame)
        else:
            op.frame = frame
            server.waiting.append(op)
            if state is NEW:
                server.connect()
        return op.d

    def _internal(self, server: _Server, proto: MemcachedProtocol, opcode: int, kind: int,
                  k: bytes, value: bytes, frames: List[bytes]) -> Deferred:
        """A handshake request on a connection that is not in use yet."""
        op = _Op(self, server, None, k, kind, False, None, False)
        op.opaque = server.next_opaque(proto)
        op.timeout = self.connect_timeout
        op.deadline = self._reactor.seconds() + self.connect_timeout
        self._arm(op.deadline)
        op.proto = proto
        proto.pending[op.opaque] = op
        frames.append(mcb.encode_request(opcode, k, value, b"", op.opaque))
        return op.d

    def _multi(self, keys: List[Any], build: Any, get: bool,
               quiet: bool, verb: str, timeout: Optional[float]) -> Deferred:
        """
        Send one batch per server: ``build(i, key)`` returns ``(k, opcode,
        extras, value)`` for key ``i`` or raises a CouchbaseError for it; or
        ``build`` is ``(opcode, extras)`` for the same keyed request per key.
        """
        m = _Multi(self, keys, quiet, get, verb)
        quiet_ops = get or self.quiet_multi
        groups: Dict[_Server, List[Tuple[int, bytes, int, bytes, bytes]]] = {}
        route = self._route
        routes = self._routes
        get_op: Optional[int] = None
        get_extras = b""  # (only read when get_op is set)
        if isinstance(build, tuple):  # get_multi: (opcode, extras)
            get_op, get_extras = build
        k: Optional[bytes]
        server: Union[_Server, CouchbaseError, None]
        for i, key in enumerate(keys):
            if get_op is not None:
                # to_key's checks, inlined for the common str key.
                if key.__class__ is str:
                    k = key.encode("utf-8")
                    if not 0 < len(k) <= MAX_KEY_LEN:
                        k = None
                else:
                    k = None
                if k is None:
                    try:
                        k = to_key(key)
                    except CouchbaseError as e:
                        m.failed(i, e)
                        continue
                opcode, extras, value = get_op, get_extras, b""
                server = routes.get(k)
                if server is None:
                    server = route(k, key)
            else:
                try:
                    k, opcode, extras, value = build(i, key)
                except CouchbaseError as e:
                    m.failed(i, e)
                    continue
                server = route(k, key)
            if isinstance(server, CouchbaseError):
                m.failed(i, server)
                continue
            group = groups.get(server)
            if group is None:
                state = server.state
                if state is DOWN or state is CLOSED:
                    m.failed(i, server.down_error(key))
                    continue
                group = groups[server] = []
            group.append((i, k, opcode, extras, value))
        if not groups:
            m.finish()
            return m.d
        m.remaining = len(groups)
        if timeout is None:
            timeout = self.timeout
        if timeout:
            m.timeout = timeout
            m.deadline = self._seconds() + timeout
            if m.deadline < self._sweep_at:
                self._arm(m.deadline)
        pack = _REQ_HEADER.pack
        sends = []
        for server, group in groups.items():
            proto = server.proto if server.state is UP else None
            n = len(group)
            base = server.opaque_block(proto, n + 1)
            batch = _Batch(m, server, quiet_ops, [g[0] for g in group], base)
            frames: List[bytes] = []
            append = frames.append
            o = base
            for _i, k, opcode, extras, value in group:
                lk = len(k)
                lx = len(extras)
                append(pack(0x80, opcode, lk, lx, 0, 0, lx + lk + len(value), o, 0))
                if lx:
                    append(extras)
                append(k)
                if value:
                    append(value)
                o = (o + 1) & 0xFFFFFFFF
            append(pack(0x80, O.NOOP, 0, 0, 0, 0, 0, o, 0))
            m.batches.append(batch)
            sends.append((server, proto, batch, b"".join(frames)))
        for server, proto, batch, frame in sends:
            if proto is not None:
                batch.register(proto)
                proto.send(frame)
            else:
                batch.frame = frame
                server.waiting.append(batch)
                if server.state is NEW:
                    server.connect()
        return m.d

    # -- argument checks -------------------------------------------------------

    def _durability(self, persist_to: Any, replicate_to: Any, key: Any) -> None:
        if persist_to or replicate_to:
            resolve_durability(persist_to, replicate_to, 0, 0, key)

    def _encode(self, value: Any, format: Any, key: Any) -> Tuple[bytes, int]:
        data, flags = self.transcoder.encode(value, format)
        if len(data) > self.max_value_size:
            raise TooBigError("value of %d bytes is over the pool's %d byte limit"
                              % (len(data), self.max_value_size), key=key)
        return data, flags

    # -- IBucket: single keys ----------------------------------------------------

    def get(self, key: Any, ttl: int = 0, quiet: bool = False,
            timeout: Optional[float] = None) -> Deferred:
        try:
            k = to_key(key)
            if ttl:
                check_ttl(ttl, key)
        except CouchbaseError as e:
            return fail(e)
        if ttl:
            return self._request(k, key, O.GAT, K_VALUE, mcb.touch_extras(ttl), b"", 0,
                                 quiet, timeout)
        return self._request(k, key, O.GET, K_VALUE, b"", b"", 0, quiet, timeout)

    def _store(self, opcode: int, key: Any, value: Any, cas: int, ttl: int, format: Any,
               persist_to: int, replicate_to: int, timeout: Optional[float]) -> Deferred:
        try:
            k = to_key(key)
            if ttl:
                check_ttl(ttl, key)
            if cas:
                check_cas(cas, key)
            if persist_to or replicate_to:
                resolve_durability(persist_to, replicate_to, 0, 0, key)
            data, flags = self.transcoder.encode(value, format)
            if len(data) > self.max_value_size:
                raise TooBigError("value of %d bytes is over the pool's %d byte limit"
                                  % (len(data), self.max_value_size), key=key)
        except CouchbaseError as e:
            return fail(e)
        return self._request(k, key, opcode, K_MUTATION, _STORE_EXTRAS.pack(flags, ttl),
                             data, cas, False, timeout)

    def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> Deferred:
        return self._store(O.SET, key, value, cas, ttl, format, persist_to, replicate_to,
                           timeout)

    def insert(self, key: Any, value: Any, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> Deferred:
        return self._store(O.ADD, key, value, 0, ttl, format, persist_to, replicate_to,
                           timeout)

    def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0,
                timeout: Optional[float] = None) -> Deferred:
        return self._store(O.REPLACE, key, value, cas, ttl, format, persist_to,
                           replicate_to, timeout)

    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        try:
            k = to_key(key)
            if cas:
                check_cas(cas, key)
            self._durability(persist_to, replicate_to, key)
        except CouchbaseError as e:
            return fail(e)
        return self._request(k, key, O.DELETE, K_MUTATION, b"", b"", cas, quiet, timeout)

    def touch(self, key: Any, ttl: int, timeout: Optional[float] = None) -> Deferred:
        try:
            k = to_key(key)
            check_ttl(ttl, key)
        except CouchbaseError as e:
            return fail(e)
        return self._request(k, key, O.TOUCH, K_MUTATION, mcb.touch_extras(ttl), b"", 0,
                             False, timeout)

    def lock(self, key: Any, ttl: int = 15, timeout: Optional[float] = None) -> Deferred:
        """GET_LOCKED where the server has it (Couchbase); NotSupportedError on memcached."""
        try:
            k = to_key(key)
            check_lock_ttl(ttl, key)
        except CouchbaseError as e:
            return fail(e)
        return self._request(k, key, O.GET_LOCKED, K_VALUE, mcb.get_locked_extras(ttl), b"",
                             0, False, timeout, locks=True)

    def unlock(self, key: Any, cas: int, timeout: Optional[float] = None) -> Deferred:
        """UNLOCK_KEY where the server has it (Couchbase); NotSupportedError on memcached."""
        try:
            k = to_key(key)
            check_cas(cas, key)
        except CouchbaseError as e:
            return fail(e)
        return self._request(k, key, O.UNLOCK_KEY, K_MUTATION, b"", b"", cas, False, timeout,
                             locks=True)

    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None, ttl: int = 0,
                timeout: Optional[float] = None) -> Deferred:
        try:
            k = to_key(key)
            check_delta(delta, initial, key)
            if ttl:
                check_ttl(ttl, key)
        except CouchbaseError as e:
            return fail(e)
        return self._request(
            k, key, O.DECREMENT if delta < 0 else O.INCREMENT, K_COUNTER,
            mcb.counter_extras(abs(delta), 0, mcb.COUNTER_NO_CREATE), b"", 0, False, timeout,
            (delta, initial, ttl, 0))

    def _concat(self, opcode: int, verb: str, key: Any, value: Any, cas: int,
                persist_to: int, replicate_to: int, timeout: Optional[float]) -> Deferred:
        try:
            k = to_key(key)
            if cas:
                check_cas(cas, key)
            self._durability(persist_to, replicate_to, key)
            if isinstance(value, str):
                data = value.encode("utf-8")
            elif isinstance(value, bytes):
                data = value
            else:
                data = self.transcoder.encode(value)[0]
            if len(data) > self.max_value_size:
                raise TooBigError("value of %d bytes is over the pool's %d byte limit"
                                  % (len(data), self.max_value_size), key=key)
        except CouchbaseError as e:
            return fail(e)
        return self._request(k, key, opcode, K_CONCAT, b"", data, cas, False, timeout, verb)

    def append(self, key: Any, value: Any, cas: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> Deferred:
        return self._concat(O.APPEND, "append", key, value, cas, persist_to, replicate_to,
                            timeout)

    def prepend(self, key: Any, value: Any, cas: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0,
                timeout: Optional[float] = None) -> Deferred:
        return self._concat(O.PREPEND, "prepend", key, value, cas, persist_to, replicate_to,
                            timeout)

    # -- IBucket: many keys --------------------------------------------------------

    def get_multi(self, keys: Iterable[Any], ttl: int = 0, quiet: bool = False,
                  timeout: Optional[float] = None) -> Deferred:
        """One GETKQ (GATKQ with a ttl) batch per server, each closed by a NOOP."""
        try:
            keys = unique(keys)
            if ttl:
                check_ttl(ttl)
        except (CouchbaseError, TypeError) as e:
            return fail(e if isinstance(e, CouchbaseError) else ArgumentError(str(e)))
        if ttl:
            how = (O.GATKQ, mcb.touch_extras(ttl))
        else:
            how = (O.GETKQ, b"")
        return self._multi(keys, how, True, quiet, "get", timeout)

    def _store_multi(self, loud: int, quiet_op: int, verb: str, mapping: Any, ttl: int,
                     format: Any, persist_to: int, replicate_to: int,
                     timeout: Optional[float]) -> Deferred:
        try:
            items = list(mapping.items() if hasattr(mapping, "items") else mapping)
            if ttl:
                check_ttl(ttl)
            self._durability(persist_to, replicate_to, None)
        except (CouchbaseError, TypeError, ValueError) as e:
            return fail(e if isinstance(e, CouchbaseError) else ArgumentError(str(e)))
        values = dict(items)
        keys = list(values)
        opcode = quiet_op if self.quiet_multi else loud
        def build(i: int, key: Any) -> Tuple[bytes, int, bytes, bytes]:
            k = to_key(key)
            data, flags = self._encode(values[key], format, key)
            return k, opcode, _STORE_EXTRAS.pack(flags, ttl), data
        return self._multi(keys, build, False, False, verb, timeout)

    def upsert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        """SETQ per key, a NOOP per server (results have cas 0 unless ``quiet_multi`` is off)."""
        return self._store_multi(O.SET, O.SETQ, "upsert", keys, ttl, format, persist_to,
                                 replicate_to, timeout)

    def insert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        return self._store_multi(O.ADD, O.ADDQ, "insert", keys, ttl, format, persist_to,
                                 replicate_to, timeout)

    def replace_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                      replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        return self._store_multi(O.REPLACE, O.REPLACEQ, "replace", keys, ttl, format,
                                 persist_to, replicate_to, timeout)

    def remove_multi(self, keys: Iterable[Any], quiet: bool = False, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        try:
            keys = unique(keys)
            self._durability(persist_to, replicate_to, None)
        except (CouchbaseError, TypeError) as e:
            return fail(e if isinstance(e, CouchbaseError) else ArgumentError(str(e)))
        opcode = O.DELETEQ if self.quiet_multi else O.DELETE

        def build(i: int, key: Any) -> Tuple[bytes, int, bytes, bytes]:
            return to_key(key), opcode, b"", b""
        return self._multi(keys, build, False, quiet, "remove", timeout)

    # touch_multi, counter_multi, lock_multi, unlock_multi: MultiMixin's
    # pipelined single-key requests (TOUCH has no quiet form, counters need
    # their values back).

    # -- durability --------------------------------------------------------------

    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> Deferred:
        """
        memcached has neither disks nor replicas: anything beyond memory
        errbacks DurabilityError; otherwise GETs check that the key is there
        (at ``cas``, if given), or poll every ``interval`` seconds until it
        is gone if ``check_removed``.
        """
        try:
            k = to_key(key)
            if cas:
                check_cas(cas, key)
            resolve_durability(persist_to, replicate_to, 0, 0, key)
            if not (isinstance(timeout, (int, float)) and timeout >= 0
                    and isinstance(interval, (int, float)) and interval > 0):
                raise ArgumentError("timeout must be >= 0 and interval > 0", key=key)
        except CouchbaseError as e:
            return fail(e)
        clock = self._reactor
        deadline = clock.seconds() + timeout
        current: List[Any] = [None]

        def cancel(_d: Deferred) -> None:
            c = current[0]
            current[0] = None
            if isinstance(c, Deferred):
                c.cancel()
            elif c is not None and c.active():
                c.cancel()

        out: Deferred = Deferred(cancel)

        def check() -> None:
            left = deadline - clock.seconds()
            t = self.timeout if not self.timeout else min(self.timeout, max(left, 0.001))
            g = current[0] = self._request(k, key, O.GET, K_VALUE, quiet=True, timeout=t)
            g.addCallbacks(got, failed)

        def got(r: ValueResult) -> None:
            current[0] = None
            if out.called:
                return
            if check_removed:
                if not r.success:
                    out.callback(OperationResult(key, 0))
                    return
            elif not r.success:
                out.errback(NotFoundError("no such key", key=key))
                return
            elif cas and r.cas != cas:
                out.errback(KeyExistsError("the key was modified since (CAS differs)",
                                           key=key))
                return
            else:
                out.callback(OperationResult(key, r.cas))
                return
            if clock.seconds() >= deadline:
                out.errback(TimeoutError("key not removed within %.3gs" % (timeout,), key=key))
            else:
                current[0] = clock.callLater(interval, check)

        def failed(f: Failure) -> None:
            current[0] = None
            if not out.called:
                out.errback(f)

        check()
        return out

    # -- whole pool --------------------------------------------------------------

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000,
             batch_bytes: int = 1048576) -> Deferred:
        """
        Not supported: memcached keeps no key order and its binary protocol
        has no way to list keys.  Bad arguments still errback ArgumentError.
        """
        try:
            scan_args(prefix, start, end, ids_only, batch_size, batch_bytes)
        except CouchbaseError as e:
            return fail(e)
        return fail(NotSupportedError("memcached cannot scan: it keeps no key order and "
                                      "has no command to list keys"))

    def _each_server(self, opcode: int, kind: int, timeout: Optional[float],
                     args: Callable[[], Any] = lambda: None) -> List[Tuple[_Server, Deferred]]:
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
        (with the first server's error) if any server could not be flushed."""
        return _gather(self._each_server(O.FLUSH, K_NONE, timeout)).addCallback(
            _all_or_first_error)

    def close(self) -> Deferred:
        """Close every connection, stop reconnecting; requests in flight errback."""
        self._closed = True
        ds = [s.close() for s in self._servers]
        for name in ("_sweep_call", "_flush_call"):
            call = getattr(self, name)
            setattr(self, name, None)
            if call is not None and call.active():
                call.cancel()
        self._sweep_at = _NEVER
        self._unflushed = []
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


def _merge_stats(results: List[Tuple[_Server, Any]]) -> Any:
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
