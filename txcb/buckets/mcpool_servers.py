"""
The memcached pool's servers: the server list forms, key placement with
ejection and readmission, reconnection backoff, and the two pool-wide
timers (the deadline sweeper and the write coalescer).
"""

from __future__ import annotations

import random
from typing import Any, Dict, Iterable, List, Optional, Tuple, Union

from txcb.buckets.ketama import DEFAULT_KETAMA_PORT, Continuum, Modula, NoServersError, ServerSpec
from txcb.buckets.mcconn import CLOSED, DOWN, UP, MemcachedProtocol, MemcachedServer
from txcb.buckets.mcrequests import log
from txcb.errors import CouchbaseError, NetworkError

__all__ = ["ServerArg", "parse_servers", "parse_backend", "PoolTopology",
           "DeadlineSweeper", "WriteCoalescer", "NEVER"]

NEVER = float("inf")
#: key -> server routes remembered (the continuum lookup hashes the key).
_MAX_ROUTES = 65536

ServerArg = Union[str, ServerSpec, Tuple[str, int], Tuple[str, int, int]]


# -- server specs -------------------------------------------------------------

def _split_line(entry: ServerArg) -> Tuple[str, List[str], Optional[str]]:
    """``"host:port[:weight][ name]"`` / ``"[v6]:port..."`` -> (host, [port, weight?], name)."""
    name: Optional[str] = None
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
            raise ValueError("bad server %r: write IPv6 addresses as [addr]:port" % (entry,))
        host, rest = parts[0], parts[1:]
    if not host or not 1 <= len(rest) <= 2:
        raise ValueError("bad server %r: expected host:port[:weight]" % (entry,))
    return host, rest, name


def _parse_one(entry: ServerArg) -> ServerSpec:
    """
    ``"host:port[:weight][ name]"``, ``"[v6addr]:port[:weight][ name]"`` or a
    ``(host, port[, weight])`` tuple -> a ServerSpec whose hash name follows
    twemproxy (``name`` if given, else ``host`` for port 11211, else
    ``host:port``).
    """
    name: Optional[str] = None
    port: Any
    weight: Any
    if isinstance(entry, ServerSpec):
        return entry
    if isinstance(entry, tuple):
        if len(entry) not in (2, 3):
            raise ValueError("server tuple must be (host, port[, weight]): %r" % (entry,))
        host, port = str(entry[0]), entry[1]
        weight = entry[2] if len(entry) == 3 else 1
        port_s = str(port)
    else:
        host, rest, name = _split_line(entry)
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


# -- placement, ejection, backoff ---------------------------------------------

class PoolTopology:
    """
    Which server holds a key: ketama or modula over the servers not ejected,
    with a cache of recent routes.  As the servers' :class:`ServerEvents`
    listener it ejects a server after ``server_failure_limit`` failures in a
    row (if ``auto_eject_hosts``), readmits it once it answers again and
    ``server_retry_timeout`` has passed, and spaces out reconnections.
    """

    def __init__(self, specs: List[ServerSpec], distribution: str,
                 hash_tag: Optional[bytes], reactor: Any, servers: List[MemcachedServer],
                 auto_eject_hosts: bool, server_failure_limit: int,
                 server_retry_timeout: float, retry_initial: float, retry_max: float,
                 retry_factor: float) -> None:
        if distribution not in ("ketama", "modula"):
            raise ValueError("distribution must be 'ketama' or 'modula', not %r"
                             % (distribution,))
        if server_failure_limit < 1:
            raise ValueError("server_failure_limit must be at least 1")
        if not (0 < retry_initial <= retry_max and retry_factor >= 1):
            raise ValueError("need 0 < retry_initial <= retry_max and retry_factor >= 1")
        self.specs = specs
        self.distribution = distribution
        self._dist_cls = Continuum if distribution == "ketama" else Modula
        self._hash_tag = hash_tag
        self._reactor = reactor
        #: the servers, in configuration order (filled by the pool).
        self.servers = servers
        self.auto_eject_hosts = auto_eject_hosts
        self.server_failure_limit = server_failure_limit
        self.server_retry_timeout = server_retry_timeout
        self.retry_initial = retry_initial
        self.retry_max = retry_max
        self.retry_factor = retry_factor
        self._retry_jitter = random.Random()
        #: k -> server, cleared (the same dict) whenever the continuum changes.
        self.routes: Dict[bytes, MemcachedServer] = {}
        self._locate: Any = None

    def rebuild(self) -> None:
        """A new continuum without the ejected servers."""
        ejected = [s.index for s in self.servers if s.ejected]
        dist = self._dist_cls(self.specs, ejected=ejected, hash_tag=self._hash_tag)
        self._locate = dist.server_for
        self.routes.clear()

    def locate(self, k: bytes) -> MemcachedServer:
        """The server for ``k`` now; raises NoServersError when all are ejected."""
        return self.servers[self._locate(k)]

    def route(self, k: bytes, key: Any) -> Union[MemcachedServer, CouchbaseError]:
        """The server for ``k``, or the error to fail with."""
        routes = self.routes
        server = routes.get(k)
        if server is None:
            try:
                server = self.servers[self._locate(k)]
            except NoServersError:
                return NetworkError("no memcached server available (all ejected)", key=key)
            if len(routes) >= _MAX_ROUTES:
                routes.clear()
            routes[k] = server
        return server

    # -- ServerEvents --

    def retry_delay(self, attempts: int) -> float:
        """Exponential backoff (like ClientService's), plus up to 10% jitter."""
        delay = min(self.retry_initial * self.retry_factor ** min(attempts - 1, 64),
                    self.retry_max)
        return delay * (1.0 + 0.1 * self._retry_jitter.random())

    def server_failed(self, server: MemcachedServer) -> None:
        if (self.auto_eject_hosts and not server.ejected and server.state != CLOSED
                and server.failures >= self.server_failure_limit):
            server.ejected = True
            server.ejected_at = self._reactor.seconds()
            self.rebuild()
            log.warn("memcached {server} ejected after {n} failures: its keys go to the "
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

    def server_up(self, server: MemcachedServer) -> None:
        if not server.ejected:
            return
        wait = server.ejected_at + self.server_retry_timeout - self._reactor.seconds()
        if wait <= 0:
            self._readmit(server)
        elif server.readmit_call is None:
            server.readmit_call = self._reactor.callLater(wait, self._readmit, server)

    def _readmit(self, server: MemcachedServer) -> None:
        server.readmit_call = None
        if server.ejected and server.state == UP:
            server.ejected = False
            server.failures = 0
            self.rebuild()
            log.info("memcached {server} is back in the pool", server=server.label)

    def status(self) -> Dict[str, Dict[str, Any]]:
        """Per server: ``state``, ``ejected``, ``failures``, ``in_flight``,
        ``locks``, ``last_error``, ``name``, ``weight``."""
        out = {}
        for s in self.servers:
            out[s.label] = {
                "state": s.state, "ejected": s.ejected, "failures": s.failures,
                "in_flight": len(s.proto.pending) if s.proto is not None else 0,
                "locks": s.proto.locks if s.proto is not None else None,
                "last_error": s.last_error.message if s.state == DOWN else None,
                "name": s.spec.name, "weight": s.spec.weight,
            }
        return out


# -- pool-wide timers ------------------------------------------------------------

class DeadlineSweeper:
    """
    One DelayedCall for the whole pool, at the earliest deadline: requests
    carry a ``deadline`` (0 for none) and ``expire()``; the sweeper finds them
    in the servers' connections and queues.
    """

    def __init__(self, reactor: Any, servers: List[MemcachedServer]) -> None:
        self._reactor = reactor
        self._servers = servers
        self._call: Any = None
        #: when the sweeper wakes next (NEVER: not armed).
        self.at = NEVER

    def arm(self, deadline: float) -> None:
        """Wake up at ``deadline`` at the latest."""
        if deadline < self.at:
            call = self._call
            if call is not None and call.active():
                call.cancel()
            self.at = deadline
            self._call = self._reactor.callLater(
                max(deadline - self._reactor.seconds(), 0.0), self._sweep)

    def _sweep(self) -> None:
        """Expire what is past its deadline; wake up again at the next one."""
        self._call = None
        self.at = NEVER
        now = self._reactor.seconds()
        expired: List[Any] = []
        nearest = NEVER
        for server in self._servers:
            entries: List[Any] = []
            for proto in (server.proto, server.handshaking):
                if proto is not None:
                    entries.extend(proto.pending.values())
            entries.extend(server.waiting)
            for entry in entries:
                d = entry.deadline
                if d:
                    if d <= now:
                        expired.append(entry)
                    elif d < nearest:
                        nearest = d
        for entry in expired:
            if entry.deadline:  # not finished by an earlier expiry (same multi)
                entry.expire()
        if nearest is not NEVER:
            self.arm(nearest)

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self.at = NEVER


class WriteCoalescer:
    """The frames queued on connections in one reactor turn go out at its end."""

    def __init__(self, reactor: Any) -> None:
        self._reactor = reactor
        self._call: Any = None
        self._unflushed: List[MemcachedProtocol] = []

    def dirty(self, proto: MemcachedProtocol) -> None:
        """``proto`` has its first queued frame of this turn."""
        self._unflushed.append(proto)
        if self._call is None:
            self._call = self._reactor.callLater(0, self._flush)

    def _flush(self) -> None:
        self._call = None
        protos, self._unflushed = self._unflushed, []
        for proto in protos:
            proto.flush()

    def stop(self) -> None:
        call, self._call = self._call, None
        if call is not None and call.active():
            call.cancel()
        self._unflushed = []
