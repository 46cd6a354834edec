"""
Serve txcb's buckets over the Couchbase KV protocol, to the official
Couchbase SDKs.

One connection is one :class:`CouchbaseServerProtocol`: bytes go through the
sans-IO decoder (:mod:`txcb.wire.couchbase`), each request has one handler
per opcode -- the bootstrap ones here (HELLO, SASL, the error map,
SELECT_BUCKET, the cluster config, collections), the key-value ones in
:mod:`txcb.server.cbkv`, the sub-document ones (0xd0 / 0xd1) in
:mod:`txcb.server.cbsubdoc` -- and replies leave in request order through
:class:`~txcb.server.mcreplies.OrderedReplies` (batched per read, with flow
control), the memcached endpoint's connection core.

Buckets come from a :class:`~txcb.keyspaces.Keyspaces`: SELECT_BUCKET picks
a bucket space, a key's collection id (once Collections is negotiated) a
collection of it, whose IBucket serves the key.  The cluster config names
one node, the address the client dialled (``$HOST``) and the port the
connection arrived on, holding all 1024 vBuckets.
"""

from __future__ import annotations

import json
import time
import struct
from typing import Any, Callable, Dict, List, Mapping, Optional

from twisted.internet.interfaces import INegotiated, ISSLTransport
from twisted.logger import Logger
from twisted.python.failure import Failure

from txcb.interfaces import ISyncBucket
from txcb.limits import MAX_KEY_LEN, max_value_size
from txcb.server.cbkv import KV_HANDLERS, KeyValueOps
from txcb.server.cbsubdoc import SUBDOC_HANDLERS, SubdocOps
from txcb.server.core import ServerStats, ServingFactory
from txcb.server.mcreplies import OrderedReplies
from txcb.server.mcsession import VERSION
from txcb.wire import cbbootstrap as WB
from txcb.wire import couchbase as W
from txcb.wire.mcbinary import U16 as _U16, U64 as _U64
from txcb.wire.sasl import SaslFailure, SaslServer

__all__ = ["CouchbaseServerFactory", "CouchbaseServerProtocol", "GRANTED_FEATURES"]

_O = W.Opcode
_S = W.Status
_F = W.Feature
_log = Logger()
_response = W.encode_response
_UID_CID = struct.Struct(">QI")

#: The HELLO features served, granted when asked for: each is honoured.
GRANTED_FEATURES = frozenset((
    _F.TCPNODELAY, _F.MUTATION_SEQNO, _F.XERROR, _F.SELECT_BUCKET,
    _F.ALT_REQUEST_SUPPORT, _F.SYNC_REPLICATION, _F.COLLECTIONS, _F.XATTR,
    _F.VATTR, _F.PRESERVE_TTL))
#: Opcodes a connection may use before it authenticates.
_AUTH_FREE = frozenset((_O.HELLO, _O.SASL_LIST_MECHS, _O.SASL_AUTH, _O.SASL_STEP,
                        _O.VERSION, _O.NOOP, _O.QUIT, _O.QUITQ))
#: The cluster config's revision: the one-node map never changes.
CONFIG_REV = 1


class CouchbaseServerProtocol(OrderedReplies, KeyValueOps, SubdocOps):
    """One Couchbase client connection: bootstrap state and a handler per opcode."""

    factory: "CouchbaseServerFactory"
    #: Set by every read, for ``--idle-timeout`` (core.IdleSweeper).
    idle_seen = False

    def connectionMade(self) -> None:
        f = self.factory
        f.stats.opened()
        transport = self.transport
        assert transport is not None
        self.peer = str(transport.getPeer())
        self.port = getattr(transport.getHost(), "port", 0)
        # TLS: a TLS endpoint's transport (TLSMemoryBIOProtocol) provides INegotiated.
        self.ssl = ISSLTransport.providedBy(transport) or INegotiated.providedBy(transport)
        self.decoder = W.Decoder(max_body=f.max_body)
        self.sasl = SaslServer(f.credentials)
        self.authenticated = False     # the SASL server's verdict, after each SASL step
        self.features: List[int] = []
        self.xerror = self.collections = self.tokens = False
        self.space: Any = None
        self.observer = f.observer
        self.started = 0.0
        self.start_replies(f.max_inflight)
        self.handle = self._dispatch  # type: ignore[method-assign]
        self.internal_error = self._internal_error  # type: ignore[method-assign]
        if f.idle is not None:
            f.idle.add(self)

    def connectionLost(self, reason: Optional[Failure] = None) -> None:
        if not self._gone:
            f = self.factory
            f.stats.closed()
            self.stop_replies()
            if f.idle is not None:
                f.idle.discard(self)

    # -- --idle-timeout (core.IdleSweeper) ----------------------------------------------

    def idle_busy(self) -> bool:
        """Requests are still being answered (or wait for the client to read)."""
        return bool(self._slots or self._backlog or self._out_full)

    def idle_peer(self) -> str:
        return self.peer

    def idle_close(self) -> None:
        self.close()

    def dataReceived(self, data: bytes) -> None:
        self.idle_seen = True
        if self.closing:
            return
        if self.observer is not None:
            self.started = time.perf_counter()
        try:
            events: List[Any] = self.decoder.feed(data)
        except W.FrameError as e:
            events = e.packets + [e]
        self.run(events)

    # -- dispatch -------------------------------------------------------------------------

    def _dispatch(self, r: Any) -> Optional[bytes]:
        if type(r) is not W.Request:
            self._refused(r)
            return None
        handler = _HANDLERS.get(r.opcode)
        if handler is None:
            return self.error(r, _S.UNKNOWN_COMMAND)
        if not self.authenticated and r.opcode not in _AUTH_FREE:
            return self.error(r, _S.AUTH_ERROR)
        try:
            return handler(self, r)
        except Exception:
            _log.failure("txcb couchbase: internal error handling {request!r}", request=r)
            return self.error(r, _S.EINTERNAL)

    def _refused(self, e: W.FrameError) -> None:
        """A frame the decoder refused: answer if it can be, log one line, close."""
        if e.opcode is not None and e.opaque is not None:
            self.reply(_response(e.opcode, e.status, e.opaque))
        _log.info("txcb couchbase: protocol error from {peer}: {error}; closing",
                  peer=self.peer, error=str(e))
        self.close()

    def _internal_error(self, ctx: Any) -> bytes:
        return _response(ctx.opcode, _S.EINTERNAL, ctx.opaque)

    def error(self, r: W.Request, status: int, value: bytes = b"") -> bytes:
        """An error response to ``r``."""
        return _response(r.opcode, status, r.opaque, value=value)

    def not_my_vbucket(self, r: W.Request) -> bytes:
        """NOT_MY_VBUCKET, with the config that says where the vBuckets are."""
        return self.error(r, _S.NOT_MY_VBUCKET, self._config())

    def _config(self) -> bytes:
        name = self.space.name if self.space is not None else None
        return WB.cluster_config(CONFIG_REV, self.port, name, self.ssl)

    def _ok(self, r: W.Request, value: bytes = b"", extras: bytes = b"") -> bytes:
        return _response(r.opcode, 0, r.opaque, extras=extras, value=value)

    # -- bootstrap --------------------------------------------------------------------

    def _hello(self, r: W.Request) -> bytes:
        try:
            asked = WB.parse_hello(r.value)
        except ValueError as e:
            _log.info("txcb couchbase: bad HELLO from {peer}: {error}", peer=self.peer,
                      error=str(e))
            return self.error(r, _S.EINVAL)
        granted = [f for f in dict.fromkeys(asked) if f in GRANTED_FEATURES]
        self.features = granted
        self.xerror = _F.XERROR in granted
        self.collections = _F.COLLECTIONS in granted
        self.tokens = _F.MUTATION_SEQNO in granted
        return self._ok(r, WB.hello_value(granted))

    def _list_mechs(self, r: W.Request) -> bytes:
        return self._ok(r, self.sasl.mechanisms())

    def _sasl_auth(self, r: W.Request) -> bytes:
        reply = self._sasl_step(r)
        self.authenticated = self.sasl.authenticated
        return reply

    def _sasl_step(self, r: W.Request) -> bytes:
        try:
            if r.opcode == _O.SASL_AUTH:
                done, challenge = self.sasl.auth(r.key, r.value)
            else:
                done, challenge = self.sasl.step(r.key, r.value)
        except SaslFailure as e:
            _log.warn("txcb couchbase: authentication failure from {peer}: {why}",
                      peer=self.peer, why=str(e))
            return self.error(r, _S.AUTH_ERROR)
        if not done:
            return _response(r.opcode, _S.AUTH_CONTINUE, r.opaque, value=challenge)
        user = (self.sasl.username or b"").decode("utf-8", "replace")
        _log.info("txcb couchbase: {peer} authenticated as {user}", peer=self.peer, user=user)
        return self._ok(r, challenge)

    def _error_map(self, r: W.Request) -> bytes:
        if len(r.value) != 2 or not _U16.unpack(r.value)[0]:
            return self.error(r, _S.EINVAL)
        return self._ok(r, WB.error_map(_U16.unpack(r.value)[0]))

    def _select_bucket(self, r: W.Request) -> bytes:
        space = self.factory.keyspaces.get(r.key.decode("utf-8", "replace"))
        if space is None:
            return self.error(r, _S.KEY_ENOENT)
        self.space = space
        return self._ok(r)

    def _cluster_config(self, r: W.Request) -> bytes:
        return self._ok(r, self._config())

    def _noop(self, r: W.Request) -> bytes:
        return self._ok(r)

    def _version(self, r: W.Request) -> bytes:
        return self._ok(r, VERSION.encode("ascii"))

    def _quit(self, r: W.Request) -> None:
        if r.opcode == _O.QUIT:
            self.reply(self._ok(r))
        self.close()

    # -- collections and seqnos ---------------------------------------------------------

    def _manifest(self, r: W.Request) -> bytes:
        if self.space is None:
            return self.error(r, _S.NO_BUCKET)
        return self._ok(r, json.dumps(self.space.manifest()).encode("utf-8"))

    def _collection_id(self, r: W.Request) -> bytes:
        if self.space is None:
            return self.error(r, _S.NO_BUCKET)
        path = (r.value or r.key).decode("utf-8", "replace")
        c = self.space.find(path)
        if c is None:
            scope = path.partition(".")[0]
            known = any(x.scope == scope for x in self.space.collections())
            return self.error(r, _S.UNKNOWN_COLLECTION if known or not scope
                              else _S.UNKNOWN_SCOPE)
        return self._ok(r, extras=_UID_CID.pack(self.space.manifest_uid, c.cid))

    def _observe_seqno(self, r: W.Request) -> Optional[bytes]:
        if self.space is None:
            return self.error(r, _S.NO_BUCKET)
        if r.vbucket >= W.NUM_VBUCKETS:
            return self.not_my_vbucket(r)
        if len(r.value) != 8:
            return self.error(r, _S.EINVAL)
        uuid = _U64.unpack(r.value)[0]
        c = self.space.by_uuid(uuid)
        if c is None:
            return self.error(r, _S.KEY_ENOENT)
        render = _SeqnoRender(r, uuid)
        if self.factory.is_sync(c.bucket):
            return render(c.bucket.stats_sync(), None)
        self.submit(c.bucket.stats(), render, None)
        return None


class _SeqnoRender:
    """OBSERVE_SEQNO's reply from the bucket's stats: persisted and current seqnos."""

    def __init__(self, r: W.Request, uuid: int) -> None:
        self.r = r
        self.uuid = uuid

    def __call__(self, stats: Any, _ctx: Any) -> bytes:
        r = self.r
        if type(stats) is Failure:
            return _response(r.opcode, _S.ETMPFAIL, r.opaque)
        current = int(stats.get("high_seqno", 0))
        persisted = int(stats.get("persisted_seqno", 0))
        value = W.observe_seqno_value(r.vbucket, self.uuid, persisted, current)
        return _response(r.opcode, 0, r.opaque, value=value)


_P = CouchbaseServerProtocol
_HANDLERS: Dict[int, Callable[[Any, W.Request], Optional[bytes]]] = dict(KV_HANDLERS)
_HANDLERS.update(SUBDOC_HANDLERS)
_HANDLERS.update({
    _O.HELLO: _P._hello, _O.SASL_LIST_MECHS: _P._list_mechs,
    _O.SASL_AUTH: _P._sasl_auth, _O.SASL_STEP: _P._sasl_auth,
    _O.GET_ERROR_MAP: _P._error_map, _O.SELECT_BUCKET: _P._select_bucket,
    _O.GET_CLUSTER_CONFIG: _P._cluster_config, _O.NOOP: _P._noop,
    _O.VERSION: _P._version, _O.QUIT: _P._quit, _O.QUITQ: _P._quit,
    _O.GET_COLLECTIONS_MANIFEST: _P._manifest, _O.GET_COLLECTION_ID: _P._collection_id,
    _O.OBSERVE_SEQNO: _P._observe_seqno,
})
del _P


class CouchbaseServerFactory(ServingFactory):
    """
    Serves the buckets of a :class:`~txcb.keyspaces.Keyspaces` over the
    Couchbase KV protocol.

    :param keyspaces: the named buckets and their collections.
    :param stats: connection counters and limit shared with the other endpoints.
    :param credentials: ``{user: password}`` for SASL (SCRAM-SHA1/256/512,
        PLAIN), or None to accept any (the service allows that on loopback only).
    :param max_inflight: bucket calls one connection may have pending.
    :param clock: the ``IReactorTime`` of durability timeouts.
    """

    protocol = CouchbaseServerProtocol
    #: An IRequestObserver told of every answered KV request, or None.
    observer: Any = None

    def __init__(self, keyspaces: Any, stats: Optional[ServerStats] = None,
                 credentials: Optional[Mapping[bytes, bytes]] = None,
                 max_inflight: int = 1024, clock: Any = None) -> None:
        ServingFactory.__init__(self, stats, credentials, max_inflight, clock, _log,
                                "txcb couchbase")
        self.keyspaces = keyspaces
        buckets = keyspaces.buckets()
        self._sync: Dict[int, bool] = {id(b): ISyncBucket.providedBy(b) for b in buckets}
        # Framing, extras and key on top of the largest value: a longer body
        # is refused from its header alone, before any of it is buffered.
        self.max_body = max_value_size(*buckets) + MAX_KEY_LEN + W.MAX_LEB128 + 64

    def is_sync(self, bucket: Any) -> bool:
        """Whether ``bucket`` is served through ISyncBucket (decided once per bucket)."""
        sync = self._sync.get(id(bucket))
        if sync is None:
            sync = self._sync[id(bucket)] = ISyncBucket.providedBy(bucket)
        return sync
