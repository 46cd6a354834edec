"""
The memcached pool's send path: a request (or one batch per server for a
``*_multi`` call) goes to its server's connection, or waits in the server's
queue while it connects, with a deadline the sweeper enforces.  Frames are
encoded by :mod:`txcb.wire.mcbinary`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple, Union

from twisted.internet.defer import Deferred, fail

from txcb.buckets.mcconn import CLOSED, DOWN, NEW, UP, MemcachedServer
from txcb.buckets.mcpool_servers import DeadlineSweeper, PoolTopology
from txcb.buckets.mcrequests import Batch, MultiRequest, Request, no_locks_error
from txcb.errors import CouchbaseError
from txcb.formats import Transcoder
from txcb.limits import MAX_KEY_LEN
from txcb.validation import to_key
from txcb.wire import mcbinary as mcb

__all__ = ["Dispatcher", "BuildRequest"]

#: ``build(i, key) -> (k, opcode, extras, value)`` for key ``i`` of a multi.
BuildRequest = Callable[[int, Any], Tuple[bytes, int, bytes, bytes]]
#: per server: the keys' indexes, and their ``(opcode, k, extras, value)``.
_Group = Tuple[List[int], List[Tuple[int, bytes, bytes, bytes]]]

_encode_request = mcb.encode_request


class Dispatcher:
    """Sends the pool's requests: routing, opaques, deadlines, queueing."""

    def __init__(self, topology: PoolTopology, sweeper: DeadlineSweeper, seconds: Any,
                 transcoder: Transcoder, timeout: float, quiet_multi: bool) -> None:
        self.topology = topology
        self.sweeper = sweeper
        self._seconds = seconds
        self._routes = topology.routes  # the same dict, cleared on rebuilds
        self.transcoder = transcoder
        #: seconds before an operation errbacks TimeoutError (0: none).
        self.timeout = timeout
        #: multi-mutations as quiet requests.
        self.quiet_multi = quiet_multi

    def _deadline(self, entry: Union[Request, MultiRequest], timeout: Optional[float]) -> None:
        if timeout is None:
            timeout = self.timeout
        if timeout:
            entry.timeout = timeout
            entry.deadline = deadline = self._seconds() + timeout
            sweeper = self.sweeper
            if deadline < sweeper.at:
                sweeper.arm(deadline)

    def request(self, k: bytes, key: Any, opcode: int, kind: int, extras: bytes = b"",
                value: bytes = b"", cas: int = 0, quiet: bool = False,
                timeout: Optional[float] = None, args: Any = None, locks: bool = False,
                server: Optional[MemcachedServer] = None) -> Deferred:
        """One request for ``k`` (or to ``server``): fires with its result."""
        if server is None:
            server = self._routes.get(k)
            if server is None:
                routed = self.topology.route(k, key)
                if isinstance(routed, CouchbaseError):
                    return fail(routed)
                server = routed
        state = server.state
        if state is UP:
            proto = server.proto
            if locks and not proto.locks:  # type: ignore[union-attr]
                return fail(no_locks_error(server, key))
        elif state is DOWN or state is CLOSED:
            return fail(server.down_error(key))
        else:
            proto = None
        op = Request(self.transcoder, server, key, k, kind, quiet, args, locks)
        # server.next_opaque(proto), inlined for the common case.
        opaque = server.last_opaque = (server.last_opaque + 1) & 0xFFFFFFFF
        if proto is not None and opaque in proto.pending:
            opaque = server.next_opaque(proto)
        op.opaque = opaque
        frame = _encode_request(opcode, k, value, extras, opaque, cas)
        if timeout is None:
            timeout = self.timeout
        if timeout:
            op.timeout = timeout
            op.deadline = deadline = self._seconds() + timeout
            if deadline < self.sweeper.at:
                self.sweeper.arm(deadline)
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

    # -- many keys --

    def multi(self, keys: List[Any], build: Union[BuildRequest, Tuple[int, bytes]],
              get: bool, quiet: bool, verb: str, timeout: Optional[float]) -> Deferred:
        """
        Send one batch per server: ``build(i, key)`` returns ``(k, opcode,
        extras, value)`` for key ``i`` or raises a CouchbaseError for it; or
        ``build`` is ``(opcode, extras)`` for the same keyed request per key.
        """
        m = MultiRequest(self.transcoder, keys, quiet, get, verb)
        if isinstance(build, tuple):  # get_multi: (opcode, extras)
            groups = self._group_keys(m, build[0], build[1])
        else:
            groups = self._group_built(m, build)
        if not groups:
            m.finish()
            return m.d
        m.remaining = len(groups)
        self._deadline(m, timeout)
        self._send_batches(m, groups, get or self.quiet_multi)
        return m.d

    def _group(self, m: MultiRequest, groups: Dict[MemcachedServer, _Group],
               server: Union[MemcachedServer, CouchbaseError], i: int,
               key: Any) -> Optional[_Group]:
        """The group of key ``i`` on ``server`` (None: failed in ``m``)."""
        if isinstance(server, CouchbaseError):
            m.failed(i, server)
            return None
        group = groups.get(server)
        if group is None:
            state = server.state
            if state is DOWN or state is CLOSED:
                m.failed(i, server.down_error(key))
                return None
            group = groups[server] = ([], [])
        return group

    def _group_keys(self, m: MultiRequest, opcode: int,
                    extras: bytes) -> Dict[MemcachedServer, _Group]:
        """The same keyed request for every key, grouped by server."""
        groups: Dict[MemcachedServer, _Group] = {}
        route = self.topology.route
        routes = self._routes
        k: Optional[bytes]
        for i, key in enumerate(m.keys):
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
            server = routes.get(k)
            group = groups.get(server) if server is not None else None
            if group is None:
                group = self._group(m, groups, route(k, key) if server is None else server,
                                    i, key)
                if group is None:
                    continue
            group[0].append(i)
            group[1].append((opcode, k, extras, b""))
        return groups

    def _group_built(self, m: MultiRequest,
                     build: BuildRequest) -> Dict[MemcachedServer, _Group]:
        """A request per key from ``build``, grouped by server."""
        groups: Dict[MemcachedServer, _Group] = {}
        route = self.topology.route
        for i, key in enumerate(m.keys):
            try:
                k, opcode, extras, value = build(i, key)
            except CouchbaseError as e:
                m.failed(i, e)
                continue
            group = self._group(m, groups, route(k, key), i, key)
            if group is not None:
                group[0].append(i)
                group[1].append((opcode, k, extras, value))
        return groups

    def _send_batches(self, m: MultiRequest, groups: Dict[MemcachedServer, _Group],
                      quiet_ops: bool) -> None:
        """Encode every server's batch, then send (or queue) them all."""
        sends = []
        for server, (indexes, requests) in groups.items():
            proto = server.proto if server.state is UP else None
            base = server.opaque_block(proto, len(indexes) + 1)
            batch = Batch(m, server, quiet_ops, indexes, base)
            m.batches.append(batch)
            sends.append((server, proto, batch, mcb.encode_batch(requests, base)))
        for server, proto, batch, frame in sends:
            if proto is not None:
                batch.register(proto)
                proto.send(frame)
            else:
                batch.frame = frame
                server.waiting.append(batch)
                if server.state is NEW:
                    server.connect()
