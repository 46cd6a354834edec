"""
The Couchbase endpoint's sub-document operations: SUBDOC_MULTI_LOOKUP (0xd0)
and SUBDOC_MULTI_MUTATION (0xd1), each one ``lookup_in`` / ``mutate_in``
call of the key's collection (``*_sync`` on an ISyncBucket, the Deferred
otherwise: :meth:`~txcb.server.cbkv.KeyValueOps.run_op`).

The request is checked here only as far as the frame goes (extras
lengths, doc flags, a spec list that parses, kv_engine's
``subdocument_validators.cc`` order); what the specs mean is the engine's
(:mod:`txcb.subdocument`), whose statuses are Couchbase's own and go to
the wire unchanged.  Durability and preserve-expiry come from the framing
extras, as for every mutation.
"""

from __future__ import annotations

import struct
from typing import Any, Callable, Dict, List, Optional, Union

from twisted.python.failure import Failure

from txcb.errors import SubdocError
from txcb.server.cbkv import KeyOp
from txcb.subdocument import DocFlag, Opcode as SDOp, Spec
from txcb.wire import cbspecs as WS
from txcb.wire import couchbase as W

__all__ = ["SubdocOps", "SUBDOC_HANDLERS"]

_O = W.Opcode
_S = W.Status
_response = W.encode_response
_U32 = struct.Struct(">I")

#: Doc flags each call takes; REPLICA_READ is accepted (there are no replicas).
_LOOKUP_DOC_FLAGS = DocFlag.ACCESS_DELETED | DocFlag.REPLICA_READ
_MUTATE_DOC_FLAGS = DocFlag.MKDOC | DocFlag.ADD
#: Known doc flags txcb does not implement: NOT_SUPPORTED, not EINVAL.
_UNSUPPORTED_DOC_FLAGS = (DocFlag.CREATE_AS_DELETED | DocFlag.REVIVE_DOCUMENT
                          | DocFlag.ACCESS_DELETED)
#: Extras lengths: lookups doc flags or none; mutations expiry and/or doc flags.
_LOOKUP_EXTRAS = (0, 1)
_MUTATE_EXTRAS = (0, 1, 4, 5)


class SubdocOps:
    """The 0xd0 / 0xd1 handlers of a Couchbase connection (a mixin beside KeyValueOps)."""

    space: Any
    collections: bool
    tokens: bool
    error: Callable[..., bytes]
    not_my_vbucket: Callable[[W.Request], bytes]
    run_op: Callable[..., Optional[bytes]]
    _collection_op: Callable[..., Union[KeyOp, bytes]]
    _failed: Callable[[Failure, KeyOp], bytes]

    def _subdoc_op(self, r: W.Request, mutation: bool) -> Union[KeyOp, bytes]:
        """The request's KeyOp, or the error reply that refuses it."""
        if self.space is None:
            return self.error(r, _S.NO_BUCKET)
        if r.vbucket_or_status >= W.NUM_VBUCKETS:
            return self.not_my_vbucket(r)
        if len(r.extras) not in (_MUTATE_EXTRAS if mutation else _LOOKUP_EXTRAS):
            return self.error(r, _S.EINVAL)
        try:
            info = W.parse_frame_infos(r.framing)
        except W.FramingError as e:
            return self.error(r, e.status)
        if not mutation and (info.durability or info.preserve_ttl):
            return self.error(r, _S.EINVAL)
        return self._collection_op(r, info)

    def _subdoc_specs(self, r: W.Request, mutation: bool) -> Union[List[Spec], bytes]:
        """The request's specs, or the error reply of a list that does not parse."""
        try:
            raw = WS.decode_mutation_specs(r.value) if mutation else \
                WS.decode_lookup_specs(r.value)
        except WS.SpecListError as e:
            return self.error(r, e.status)
        return [Spec.from_wire(op, flags, path, value) for op, flags, path, value in raw]

    def _doc_flags(self, r: W.Request, allowed: int) -> Union[int, bytes]:
        """The request's doc flags (the extras' last byte if odd), or the refusal."""
        flags = r.extras[-1] if len(r.extras) in (1, 5) else 0
        if flags & ~DocFlag.KNOWN:
            return self.error(r, _S.EINVAL)
        if flags & ~allowed & _UNSUPPORTED_DOC_FLAGS:
            return self.error(r, _S.NOT_SUPPORTED)
        if flags & ~allowed:
            return self.error(r, _S.EINVAL)
        return flags

    def _subdoc_request(self, r: W.Request, mutation: bool, allowed: int) -> Any:
        """(op, doc flags, specs) of a 0xd0/0xd1 request, or the error reply (bytes)."""
        op = self._subdoc_op(r, mutation)
        if isinstance(op, bytes):
            return op
        flags = self._doc_flags(r, allowed)
        if isinstance(flags, bytes):
            return flags
        specs = self._subdoc_specs(r, mutation)
        if isinstance(specs, bytes):
            return specs
        return op, flags, specs

    def kv_lookup_in(self, r: W.Request) -> Optional[bytes]:
        parsed = self._subdoc_request(r, False, _LOOKUP_DOC_FLAGS)
        if isinstance(parsed, bytes):
            return parsed
        op, flags, specs = parsed
        key, deleted = op.key, bool(flags & DocFlag.ACCESS_DELETED)
        return self.run_op("lookup_in", op,
                           lambda b: b.lookup_in_sync(key, *specs, access_deleted=deleted),
                           lambda b: b.lookup_in(key, *specs, access_deleted=deleted),
                           self.render_lookup_in)

    def kv_mutate_in(self, r: W.Request) -> Optional[bytes]:
        parsed = self._subdoc_request(r, True, _MUTATE_DOC_FLAGS)
        if isinstance(parsed, bytes):
            return parsed
        op, flags, specs = parsed
        ttl = _U32.unpack_from(r.extras)[0] if len(r.extras) >= 4 else 0
        op.removes = any(s.opcode == SDOp.DELETE_DOC for s in specs)
        kw: Dict[str, Any] = dict(cas=r.cas, ttl=ttl, upsert_doc=bool(flags & DocFlag.MKDOC),
                                  insert_doc=bool(flags & DocFlag.ADD),
                                  preserve_expiry=_preserves(r))
        key = op.key
        return self.run_op("mutate_in", op, lambda b: b.mutate_in_sync(key, *specs, **kw),
                           lambda b: b.mutate_in(key, *specs, **kw), self.render_mutate_in)

    # -- rendering ----------------------------------------------------------------------

    def _subdoc_failed(self, f: Failure, op: KeyOp) -> bytes:
        """A SubdocError's status (0xcc with index and status for a failed spec)."""
        e = f.value
        if not isinstance(e, SubdocError):
            return self._failed(f, op)
        if e.index is None:
            return _response(op.opcode, e.status, op.opaque)
        return _response(op.opcode, _S.SUBDOC_MULTI_PATH_FAILURE, op.opaque,
                         value=WS.encode_mutation_failure(e.index, e.status))

    def render_lookup_in(self, r: Any, op: KeyOp) -> bytes:
        if type(r) is Failure:
            return self._subdoc_failed(r, op)
        value = WS.encode_lookup_results([(x.status, x.value) for x in r.results])
        return _response(op.opcode, r.rc, op.opaque, r.cas, value=value)

    def render_mutate_in(self, r: Any, op: KeyOp) -> bytes:
        if type(r) is Failure:
            return self._subdoc_failed(r, op)
        # Only a counter returns a value on the wire (the results' macro
        # values are the SDK 2.x view, computed by the bucket).
        values = [(n, x.status, x.value) for n, (x, s) in enumerate(zip(r.results, r.specs))
                  if s.opcode == SDOp.COUNTER and x.value]
        token = r.mutation_token
        extras = (W.mutation_extras(op.collection.uuid, token[1])
                  if self.tokens and token else b"")
        return _response(op.opcode, 0, op.opaque, r.cas, extras,
                         value=WS.encode_mutation_results(values))


def _preserves(r: W.Request) -> bool:
    """Framing extra id 5 (already parsed once, without error, by _subdoc_op)."""
    return bool(r.framing) and W.parse_frame_infos(r.framing).preserve_ttl


_D = SubdocOps
#: The sub-document handler of each opcode.
SUBDOC_HANDLERS: Dict[int, Callable[[Any, W.Request], Optional[bytes]]] = {
    _O.SUBDOC_MULTI_LOOKUP: _D.kv_lookup_in, _O.SUBDOC_MULTI_MUTATION: _D.kv_mutate_in,
}
del _D
