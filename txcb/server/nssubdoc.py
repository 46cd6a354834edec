"""
The netstring server's LOOKUP_IN / MUTATE_IN (docs/protocol.rst, 3.4):
handlers of :mod:`txcb.server.netstring`'s command table, onto the bucket's
``lookup_in``/``mutate_in``.
"""

from __future__ import annotations

from typing import Any

from txcb.errors import RC
from txcb.subdocument import DocFlag, SubdocError
from txcb.wire.netstring import (
    SDOPT_PRESERVE_EXPIRY, FrameError, Op, Request, decode_subdoc_request,
    encode_lookup_reply, encode_mutate_reply, encode_response)

__all__ = ["lookup_in", "lookup_in_now", "mutate_in", "mutate_in_now"]

# An ISyncBucket answers both at once (``now``: lookup_in_sync / mutate_in_sync,
# the same arguments, the same encoders); a durable mutate_in (persist_to /
# replicate_to) and any other bucket go through the IBucket calls.

_LOOKUP_DOC_FLAGS = DocFlag.ACCESS_DELETED | DocFlag.REPLICA_READ  # no replicas: ignored
_MUTATE_DOC_FLAGS = DocFlag.MKDOC | DocFlag.ADD
_UNSUPPORTED_DOC_FLAGS = DocFlag.CREATE_AS_DELETED | DocFlag.REVIVE_DOCUMENT


def _subdoc_request(r: Request, allowed: int) -> tuple:
    """(doc flags, options, specs) of a LOOKUP_IN / MUTATE_IN; SubdocError if refused."""
    try:
        doc_flags, options, specs = decode_subdoc_request(r.value, r.opcode == Op.MUTATE_IN)
    except FrameError as e:
        raise SubdocError(e.status, str(e))
    if doc_flags & ~DocFlag.KNOWN:
        raise SubdocError(RC.EINVAL, "unknown document flags 0x%02x" % doc_flags)
    if doc_flags & ~allowed & (_UNSUPPORTED_DOC_FLAGS | DocFlag.ACCESS_DELETED):
        raise SubdocError(RC.NOT_SUPPORTED, "document flags 0x%02x are not supported here"
                          % (doc_flags & ~allowed))
    if doc_flags & ~allowed:
        raise SubdocError(RC.EINVAL, "document flags 0x%02x are not valid for this opcode"
                          % (doc_flags & ~allowed))
    return doc_flags, options, specs


def _lookup_reply(result: Any, r: Request) -> bytes:
    return encode_response(r.opcode, r.opaque, result.rc, result.cas, body=encode_lookup_reply(
        [(x.status, x.value) for x in result.results]))


def _mutate_reply(result: Any, r: Request) -> bytes:
    token = result.mutation_token
    return encode_response(r.opcode, r.opaque, 0, result.cas, seqno=token[1] if token else 0,
                           body=encode_mutate_reply([(i, x.status, x.value) for i, x in
                                                     enumerate(result.results) if x.value]))


def lookup_in(p: Any, b: Any, r: Request) -> Any:
    doc_flags, _, specs = _subdoc_request(r, _LOOKUP_DOC_FLAGS)
    return b.lookup_in(r.key, *specs, access_deleted=bool(doc_flags & DocFlag.ACCESS_DELETED)
                       ).addCallback(_lookup_reply, r)


def lookup_in_now(p: Any, b: Any, r: Request) -> bytes:
    doc_flags, _, specs = _subdoc_request(r, _LOOKUP_DOC_FLAGS)
    return _lookup_reply(b.lookup_in_sync(
        r.key, *specs, access_deleted=bool(doc_flags & DocFlag.ACCESS_DELETED)), r)


def mutate_in_now(p: Any, b: Any, r: Request) -> bytes:
    doc_flags, options, specs = _subdoc_request(r, _MUTATE_DOC_FLAGS)
    return _mutate_reply(b.mutate_in_sync(
        r.key, *specs, cas=r.cas, ttl=r.ttl, upsert_doc=bool(doc_flags & DocFlag.MKDOC),
        insert_doc=bool(doc_flags & DocFlag.ADD),
        preserve_expiry=bool(options & SDOPT_PRESERVE_EXPIRY)), r)


def mutate_in(p: Any, b: Any, r: Request) -> Any:
    doc_flags, options, specs = _subdoc_request(r, _MUTATE_DOC_FLAGS)
    return b.mutate_in(
        r.key, *specs, cas=r.cas, ttl=r.ttl, upsert_doc=bool(doc_flags & DocFlag.MKDOC),
        insert_doc=bool(doc_flags & DocFlag.ADD), persist_to=r.persist_to,
        replicate_to=r.replicate_to, preserve_expiry=bool(options & SDOPT_PRESERVE_EXPIRY)
    ).addCallback(_mutate_reply, r)
