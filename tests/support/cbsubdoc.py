"""
Sub-document frames for the sans-IO Couchbase client of
:mod:`tests.support.couchbase`: 0xd0 / 0xd1 requests built from
``(opcode, flags, path[, value])`` and their responses decoded.
"""

import struct

from txcb.wire import cbspecs as WS
from txcb.wire import couchbase as W

__all__ = ["XATTR", "MKDIR_P", "EXPAND", "MKDOC", "ADD", "ACCESS_DELETED", "lookup_frame",
           "mutation_frame", "lookup_in", "mutate_in", "lookup_results", "mutation_results",
           "mutation_failure", "doc_extras"]

O = W.Opcode
XATTR, MKDIR_P, EXPAND = 0x04, 0x01, 0x10
MKDOC, ADD, ACCESS_DELETED = 0x01, 0x02, 0x04


def _key(conn, key):
    """The key as the endpoint expects it (the collection prefix once negotiated)."""
    return W.leb128(0) + key if conn.collections else key


def doc_extras(doc_flags=None, expiry=None):
    """0xd1 extras: expiry u32 and/or doc flags u8 (0xd0: doc flags only)."""
    out = b"" if expiry is None else struct.pack(">I", expiry)
    return out + (b"" if doc_flags is None else bytes((doc_flags,)))


def _path(p):
    return p.encode("utf-8") if isinstance(p, str) else p


def lookup_frame(conn, key, specs, doc_flags=None, **kw):
    """A 0xd0 frame; specs are ``(opcode, flags, path)``."""
    value = WS.encode_lookup_specs([(op, fl, _path(p)) for op, fl, p in specs])
    return conn.frame(O.SUBDOC_MULTI_LOOKUP, _key(conn, key), value,
                      extras=doc_extras(doc_flags), **kw)


def mutation_frame(conn, key, specs, doc_flags=None, expiry=None, **kw):
    """A 0xd1 frame; specs are ``(opcode, flags, path, value)``."""
    value = WS.encode_mutation_specs([(op, fl, _path(p), v) for op, fl, p, v in specs])
    return conn.frame(O.SUBDOC_MULTI_MUTATION, _key(conn, key), value,
                      extras=doc_extras(doc_flags, expiry), **kw)


def _one(conn, data):
    out = W.Decoder("response").feed(conn.send(data))
    assert len(out) == 1, out
    return out[0]


def lookup_in(conn, key, *specs, **kw):
    """Send a 0xd0; its one response."""
    return _one(conn, lookup_frame(conn, key, specs, **kw))


def mutate_in(conn, key, *specs, **kw):
    """Send a 0xd1; its one response."""
    return _one(conn, mutation_frame(conn, key, specs, **kw))


def lookup_results(r):
    """``[(status, value)]`` of a 0xd0 response."""
    return WS.decode_lookup_results(r.value)


def mutation_results(r):
    """``[(index, status, value)]`` of a successful 0xd1 response."""
    return WS.decode_mutation_results(r.value)


def mutation_failure(r):
    """``(index, status)`` of a 0xd1 SUBDOC_MULTI_PATH_FAILURE."""
    return WS.decode_mutation_failure(r.value)
