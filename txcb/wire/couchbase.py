"""
Sans-IO codec for the Couchbase KV protocol ("memcached binary plus
extensions", couchbase/kv_engine ``docs/BinaryProtocol.md``).

Frames are the memcached binary header (:data:`txcb.wire.mcbinary.HEADER`)
and ``extras | key | value``; Couchbase adds:

- the alt request magic ``0x08`` (and response ``0x18``): byte 2 is the
  length of *flexible framing extras* placed before the extras, byte 3 the
  key length (u8);
- framing extras (:func:`parse_frame_infos`): durability requirements and
  preserve-expiry on requests;
- collection ids, a LEB128 prefix of every key once Collections is
  negotiated (:func:`split_collection`);
- HELLO feature codes, the error map (:func:`error_map`) and the terse
  cluster configuration (:func:`cluster_config`).

Nothing here does I/O or imports Twisted.
"""

from __future__ import annotations

import json
import struct
from functools import lru_cache
from typing import Any, Dict, Iterable, List, NamedTuple, Optional, Tuple, Union

from txcb.errors import McStatus, code_names
from txcb.limits import MAX_KEY_LEN
from txcb.wire import mcbinary
from txcb.wire.mcbinary import (
    HEADER, HEADER_LEN, REQ_MAGIC, RES_MAGIC, U16 as _U16)

__all__ = [
    "ALT_REQ_MAGIC", "ALT_RES_MAGIC", "NUM_VBUCKETS", "MAX_LEB128", "NO_FRAME_INFO",
    "Opcode", "Status", "Feature", "Durability", "Request", "FrameError", "Decoder",
    "FrameInfo", "FramingError", "parse_frame_infos", "hello_value",
    "encode_frame_info", "durability_frame", "split_collection", "leb128", "encode_request",
    "encode_response", "parse_hello", "error_map", "cluster_config", "get_meta_extras",
    "observe_seqno_value", "mutation_extras", "STATUS_NAMES", "OPCODE_NAMES",
    "SpecListError", "MAX_SUBDOC_SPECS", "decode_lookup_specs", "decode_mutation_specs",
    "encode_lookup_specs", "encode_mutation_specs", "encode_lookup_results",
    "decode_lookup_results", "encode_mutation_results", "decode_mutation_results",
    "encode_mutation_failure", "decode_mutation_failure",
]

ALT_REQ_MAGIC = 0x08
ALT_RES_MAGIC = 0x18
#: vBuckets of the one-node map: every one lives on node 0.
NUM_VBUCKETS = 1024
#: A key's LEB128 collection id is at most 5 bytes (32 bits).
MAX_LEB128 = 5

_pack_header = HEADER.pack
_unpack_header = HEADER.unpack_from
_ALT_HEADER = struct.Struct(">BBBBBBHIIQ")   # magic op framelen keylen extlen dt vb/st ...
_pack_alt = _ALT_HEADER.pack
_MUTATION = struct.Struct(">QQ")
_META = struct.Struct(">IIIQB")
_OBSERVE = struct.Struct(">BHQQQ")
_LOOKUP_SPEC = struct.Struct(">BBH")        # opcode, path flags, path length
_MUTATION_SPEC = struct.Struct(">BBHI")     # opcode, path flags, path length, value length
_LOOKUP_RESULT = struct.Struct(">HI")       # status, value length
_MUTATION_RESULT = struct.Struct(">BHI")    # spec index, status, value length
_MUTATION_FAILURE = struct.Struct(">BH")    # spec index, status

BytesLike = Union[bytes, bytearray, memoryview]


class Opcode(mcbinary.Opcode):
    """The opcodes (kv_engine ``ClientOpcode``): memcached's, and Couchbase's own."""
    HELLO = 0x1F
    SELECT_BUCKET = 0x89
    OBSERVE_SEQNO = 0x91
    GET_META = 0xA0
    GET_CLUSTER_CONFIG = 0xB5
    GET_COLLECTIONS_MANIFEST = 0xBA
    GET_COLLECTION_ID = 0xBB
    SUBDOC_MULTI_LOOKUP = 0xD0
    SUBDOC_MULTI_MUTATION = 0xD1
    GET_ERROR_MAP = 0xFE


class Status(McStatus):
    """Response statuses, kv_engine ``include/mcbp/protocol/status.h`` names:
    memcached's (:class:`txcb.errors.McStatus`), and Couchbase's own."""
    NOT_MY_VBUCKET = 0x07
    NO_BUCKET = 0x08
    LOCKED = 0x09
    NOT_LOCKED = 0x0E
    ERANGE = 0x22
    EACCESS = 0x24
    UNKNOWN_FRAME_INFO = 0x80
    UNKNOWN_COLLECTION = 0x88
    UNKNOWN_SCOPE = 0x8C
    DURABILITY_INVALID_LEVEL = 0xA0
    DURABILITY_IMPOSSIBLE = 0xA1
    SYNC_WRITE_IN_PROGRESS = 0xA2
    SYNC_WRITE_AMBIGUOUS = 0xA3
    # sub-documents (0xd0 / 0xd1)
    XATTR_EINVAL = 0x87
    SUBDOC_PATH_ENOENT = 0xC0
    SUBDOC_PATH_MISMATCH = 0xC1
    SUBDOC_PATH_EINVAL = 0xC2
    SUBDOC_PATH_E2BIG = 0xC3
    SUBDOC_DOC_E2DEEP = 0xC4
    SUBDOC_VALUE_CANTINSERT = 0xC5
    SUBDOC_DOC_NOTJSON = 0xC6
    SUBDOC_NUM_ERANGE = 0xC7
    SUBDOC_DELTA_EINVAL = 0xC8
    SUBDOC_PATH_EEXISTS = 0xC9
    SUBDOC_VALUE_ETOODEEP = 0xCA
    SUBDOC_INVALID_COMBO = 0xCB
    SUBDOC_MULTI_PATH_FAILURE = 0xCC
    SUBDOC_SUCCESS_DELETED = 0xCD
    SUBDOC_XATTR_INVALID_FLAG_COMBO = 0xCE
    SUBDOC_XATTR_INVALID_KEY_COMBO = 0xCF
    SUBDOC_XATTR_UNKNOWN_MACRO = 0xD0
    SUBDOC_XATTR_UNKNOWN_VATTR = 0xD1
    SUBDOC_XATTR_CANT_MODIFY_VATTR = 0xD2
    SUBDOC_MULTI_PATH_FAILURE_DELETED = 0xD3
    SUBDOC_INVALID_XATTR_ORDER = 0xD4


class Feature:
    """HELLO feature codes (kv_engine ``include/mcbp/protocol/feature.h``)."""
    TLS = 0x02
    TCPNODELAY = 0x03
    MUTATION_SEQNO = 0x04
    TCPDELAY = 0x05
    XATTR = 0x06
    XERROR = 0x07
    SELECT_BUCKET = 0x08
    SNAPPY = 0x0A
    JSON = 0x0B
    DUPLEX = 0x0C
    CLUSTERMAP_CHANGE_NOTIFICATION = 0x0D
    UNORDERED_EXECUTION = 0x0E
    TRACING = 0x0F
    ALT_REQUEST_SUPPORT = 0x10
    SYNC_REPLICATION = 0x11
    COLLECTIONS = 0x12
    PRESERVE_TTL = 0x14
    VATTR = 0x15


class Durability:
    """Durability levels of framing extra id 1."""
    MAJORITY = 1
    MAJORITY_AND_PERSIST_TO_ACTIVE = 2
    PERSIST_TO_MAJORITY = 3


OPCODE_NAMES: Dict[int, str] = code_names(Opcode)
STATUS_NAMES: Dict[int, str] = code_names(Status)


class Request:
    """
    One decoded frame (a request, or a response for a client).  ``key`` is
    the raw key, collection prefix included; ``framing`` the flexible
    framing extras (b"" for magic 0x80 / 0x81).
    """

    __slots__ = ("magic", "opcode", "datatype", "vbucket", "opaque", "cas",
                 "framing", "extras", "key", "value")

    def __init__(self, magic: int, opcode: int, datatype: int = 0, vbucket: int = 0,
                 opaque: int = 0, cas: int = 0, framing: bytes = b"", extras: bytes = b"",
                 key: bytes = b"", value: bytes = b"") -> None:
        self.magic = magic
        self.opcode = opcode
        self.datatype = datatype
        self.vbucket = vbucket      # a response's status
        self.opaque = opaque
        self.cas = cas
        self.framing = framing
        self.extras = extras
        self.key = key
        self.value = value

    @property
    def status(self) -> int:
        """A response's status (the request's vbucket field)."""
        return self.vbucket

    def __repr__(self) -> str:
        name = OPCODE_NAMES.get(self.opcode, "0x%02x" % self.opcode)
        value = self.value if len(self.value) <= 32 else self.value[:32] + b"..."
        return ("<Request magic=0x%02x %s vb/status=%d opaque=%d cas=%d framing=%r "
                "extras=%r key=%r value=%r>" % (self.magic, name, self.vbucket, self.opaque,
                                                self.cas, self.framing, self.extras,
                                                self.key, value))


class FrameError(Exception):
    """
    The stream holds a frame the decoder refuses; the connection cannot go
    on (every refusal is fatal).  ``status`` is what to answer with;
    ``opcode``/``opaque`` come from the header when it was readable (None
    for a wrong magic); ``packets`` are the good frames before it.
    """

    def __init__(self, message: str, status: int, opcode: Optional[int] = None,
                 opaque: Optional[int] = None,
                 packets: Optional[List[Request]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.opcode = opcode
        self.opaque = opaque
        self.packets: List[Request] = packets if packets is not None else []


class Decoder:
    """
    Incremental frame decoder: ``feed(bytes) -> [Request, ...]``, for any
    split of the stream.  A header is checked before any of its body is
    buffered: the magic, that framing + extras + key fit the body, the key
    length (``max_key``, collection prefix included) and the body length
    (``max_body``).  Bytes are appended to one buffer and consumed frames cut
    from its front once per call, so a trickled frame costs linear work.
    """

    __slots__ = ("_magics", "max_body", "max_key", "_buf", "_failed")

    def __init__(self, expect: str = "request", max_body: int = 20 * 1024 * 1024 + 1024,
                 max_key: int = MAX_KEY_LEN + MAX_LEB128) -> None:
        if expect == "request":
            self._magics = (REQ_MAGIC, ALT_REQ_MAGIC)
        elif expect == "response":
            self._magics = (RES_MAGIC, ALT_RES_MAGIC)
        else:
            raise ValueError("expect must be 'request' or 'response', not %r" % (expect,))
        self.max_body = max_body
        self.max_key = max_key
        self._buf = bytearray()
        self._failed = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    def feed(self, data: BytesLike) -> List[Request]:
        """Add bytes; every frame now complete, in order (FrameError: refused)."""
        if self._failed:
            raise FrameError("decoder already failed", Status.EINVAL)
        buf = self._buf
        out: List[Request] = []
        if buf or type(data) is not bytes:
            buf += data
            if not self._complete(buf):
                return out   # no copy while a frame trickles in: linear work
            src: bytes = bytes(buf)
        else:
            src = data      # nothing pending: slice the caller's bytes directly
        try:
            pos = self._frames(src, out)
        except FrameError as e:
            self._failed = True
            self._buf = bytearray()
            e.packets = out
            raise
        if src is data:
            if pos < len(src):
                buf += src[pos:]
        elif pos:
            del buf[:pos]
        return out

    def _complete(self, buf: bytearray) -> bool:
        """Whether ``buf`` holds its first frame whole (its header checked first)."""
        if len(buf) < HEADER_LEN:
            return False
        (magic, opcode, keylen, extlen, _dt, _vbs, bodylen, opaque,
         _cas) = _unpack_header(buf, 0)
        framelen = 0
        if magic == ALT_REQ_MAGIC or magic == ALT_RES_MAGIC:
            framelen, keylen = keylen >> 8, keylen & 0xFF
        try:
            self._check(magic, opcode, opaque, framelen, keylen, extlen, bodylen)
        except FrameError:
            self._failed = True
            self._buf = bytearray()
            raise
        return len(buf) >= HEADER_LEN + bodylen

    def _frames(self, src: bytes, out: List[Request]) -> int:
        """Decode the complete frames of ``src`` into ``out``: the bytes consumed."""
        pos = 0
        end = len(src)
        append = out.append
        while end - pos >= HEADER_LEN:
            (magic, opcode, keylen, extlen, datatype, vbs, bodylen, opaque,
             cas) = _unpack_header(src, pos)
            framelen = 0
            if magic == ALT_REQ_MAGIC or magic == ALT_RES_MAGIC:
                framelen, keylen = keylen >> 8, keylen & 0xFF
            if (magic not in self._magics or framelen + extlen + keylen > bodylen
                    or keylen > self.max_key or bodylen > self.max_body):
                self._check(magic, opcode, opaque, framelen, keylen, extlen, bodylen)
            stop = pos + HEADER_LEN + bodylen
            if stop > end:
                break
            a = pos + HEADER_LEN
            b = a + framelen
            c = b + extlen
            d = c + keylen
            append(Request(magic, opcode, datatype, vbs, opaque, cas,
                           src[a:b] if framelen else b"", src[b:c] if extlen else b"",
                           src[c:d], src[d:stop] if d < stop else b""))
            pos = stop
        return pos

    def _check(self, magic: int, opcode: int, opaque: int, framelen: int, keylen: int,
               extlen: int, bodylen: int) -> None:
        if magic not in self._magics:
            raise FrameError("bad magic 0x%02x" % (magic,), Status.EINVAL)
        if framelen + extlen + keylen > bodylen:
            raise FrameError("framing %d + extras %d + key %d > body %d" % (
                framelen, extlen, keylen, bodylen), Status.EINVAL, opcode, opaque)
        if keylen > self.max_key:
            raise FrameError("key length %d above the %d byte limit" % (
                keylen, self.max_key), Status.EINVAL, opcode, opaque)
        if bodylen > self.max_body:
            raise FrameError("body length %d above the %d byte limit" % (
                bodylen, self.max_body), Status.E2BIG, opcode, opaque)


# -- framing extras -------------------------------------------------------------------

class FrameInfo(NamedTuple):
    """What a request's framing extras ask for."""
    durability: int = 0              # 0: none, else a Durability level
    timeout: Optional[int] = None    # the durability timeout in ms, None: the default
    preserve_ttl: bool = False


class FramingError(ValueError):
    """Framing extras that cannot be honoured; ``status`` says why."""

    def __init__(self, message: str, status: int = Status.EINVAL) -> None:
        super().__init__(message)
        self.status = status


_BARRIER, _DURABILITY, _PRESERVE_TTL = 0, 1, 5
NO_FRAME_INFO = FrameInfo()


def parse_frame_infos(data: bytes) -> FrameInfo:
    """The framing extras of a request (FramingError: malformed or unknown)."""
    if not data:
        return NO_FRAME_INFO
    durability, timeout, preserve = 0, None, False
    pos, end = 0, len(data)
    while pos < end:
        fid, length, pos = _frame_info_header(data, pos)
        body = data[pos:pos + length]
        if len(body) < length:
            raise FramingError("framing extra id %d of %d bytes runs past the framing "
                               "extras" % (fid, length))
        pos += length
        if fid == _DURABILITY:
            durability, timeout = _durability(body)
        elif fid == _PRESERVE_TTL and not length:
            preserve = True
        elif fid == _BARRIER and not length:
            pass
        elif fid in (_PRESERVE_TTL, _BARRIER):
            raise FramingError("framing extra id %d takes no value" % (fid,))
        else:
            raise FramingError("unknown framing extra id %d" % (fid,),
                               Status.UNKNOWN_FRAME_INFO)
    return FrameInfo(durability, timeout, preserve)


def _frame_info_header(data: bytes, pos: int) -> Tuple[int, int, int]:
    """(id, length, position of the value): nibbles, 15 escaping to the next byte."""
    first = data[pos]
    pos += 1
    fid, length = first >> 4, first & 0x0F
    for which in ("id", "length"):
        if (fid if which == "id" else length) == 15:
            if pos >= len(data):
                raise FramingError("framing extra %s escape runs past the framing extras"
                                   % (which,))
            if which == "id":
                fid += data[pos]
            else:
                length += data[pos]
            pos += 1
    return fid, length, pos


def _durability(body: bytes) -> Tuple[int, Optional[int]]:
    if len(body) not in (1, 3):
        raise FramingError("a durability requirement is 1 or 3 bytes, not %d" % (len(body),))
    level = body[0]
    if level not in (1, 2, 3):
        raise FramingError("durability level %d is not 1-3" % (level,),
                           Status.DURABILITY_INVALID_LEVEL)
    timeout = _U16.unpack(body[1:])[0] if len(body) == 3 else None
    return level, timeout or None


def encode_frame_info(fid: int, value: bytes = b"") -> bytes:
    """One framing extra (ids and lengths under 15 in this encoder)."""
    if fid >= 15 or len(value) >= 15:
        raise ValueError("framing extra id and length must be below 15")
    return bytes((fid << 4 | len(value),)) + value


def durability_frame(level: int, timeout: Optional[int] = None) -> bytes:
    """Framing extra id 1: a durability requirement."""
    value = bytes((level,)) + (_U16.pack(timeout) if timeout is not None else b"")
    return encode_frame_info(_DURABILITY, value)


# -- collections ----------------------------------------------------------------------

def split_collection(key: bytes) -> Tuple[int, bytes]:
    """``(collection id, key)`` from a LEB128-prefixed key (ValueError: malformed)."""
    cid = 0
    for i in range(min(len(key), MAX_LEB128)):
        byte = key[i]
        cid |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if cid > 0xFFFFFFFF:
                raise ValueError("collection id above 32 bits")
            return cid, key[i + 1:]
    if len(key) >= MAX_LEB128:
        raise ValueError("collection id prefix longer than %d bytes" % (MAX_LEB128,))
    raise ValueError("collection id prefix is not terminated")


def leb128(value: int) -> bytes:
    """The unsigned LEB128 encoding of ``value``."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


# -- encoding -------------------------------------------------------------------------

def _frame(magic: int, alt: int, opcode: int, field: int, opaque: int, cas: int,
           framing: BytesLike, extras: BytesLike, key: BytesLike, value: BytesLike,
           datatype: int) -> bytes:
    body = len(framing) + len(extras) + len(key) + len(value)
    try:
        if framing:
            header = _pack_alt(alt, opcode, len(framing), len(key), len(extras), datatype,
                               field, body, opaque, cas)
        else:
            header = _pack_header(magic, opcode, len(key), len(extras), datatype, field,
                                  body, opaque, cas)
    except struct.error as e:
        raise ValueError("frame field out of range: %s" % (e,)) from None
    return b"".join((header, framing, extras, key, value))


def encode_request(opcode: int, key: BytesLike = b"", value: BytesLike = b"",
                   extras: BytesLike = b"", opaque: int = 0, cas: int = 0,
                   vbucket: int = 0, datatype: int = 0, framing: BytesLike = b"") -> bytes:
    """A request frame (magic 0x08 when it has framing extras)."""
    return _frame(REQ_MAGIC, ALT_REQ_MAGIC, opcode, vbucket, opaque, cas, framing, extras,
                  key, value, datatype)


def encode_response(opcode: int, status: int = 0, opaque: int = 0, cas: int = 0,
                    extras: BytesLike = b"", key: BytesLike = b"", value: BytesLike = b"",
                    datatype: int = 0, framing: BytesLike = b"") -> bytes:
    """A response frame (magic 0x18 only when it has framing extras)."""
    return _frame(RES_MAGIC, ALT_RES_MAGIC, opcode, status, opaque, cas, framing, extras,
                  key, value, datatype)


def mutation_extras(uuid: int, seqno: int) -> bytes:
    """A mutation token: vBucket uuid u64, seqno u64."""
    return _MUTATION.pack(uuid, seqno)


def get_meta_extras(deleted: bool, flags: int, exptime: int, seqno: int,
                    datatype: int = 0) -> bytes:
    """GET_META response extras (version 2): deleted, flags, exptime, seqno, datatype."""
    return _META.pack(1 if deleted else 0, flags, exptime, seqno, datatype)


def observe_seqno_value(vbucket: int, uuid: int, persisted: int, current: int) -> bytes:
    """OBSERVE_SEQNO's answer without a failover: format 0."""
    return _OBSERVE.pack(0, vbucket, uuid, persisted, current)


# -- HELLO, the error map, the cluster config -----------------------------------------

def parse_hello(value: bytes) -> List[int]:
    """HELLO's u16 feature codes (ValueError: an odd-length list)."""
    if len(value) % 2:
        raise ValueError("HELLO feature list of odd length %d" % (len(value),))
    return [_U16.unpack_from(value, i)[0] for i in range(0, len(value), 2)]


def hello_value(features: Iterable[int]) -> bytes:
    """HELLO's value: u16 feature codes."""
    return b"".join(_U16.pack(f) for f in features)


_RETRY_SOON = {"strategy": "exponential", "interval": 10, "after": 0, "ceil": 500,
               "max-duration": 120000}
#: status -> (name, description, attributes, retry spec or None)
_ERRORS: Dict[int, Tuple[str, str, List[str], Optional[Dict[str, Any]]]] = {
    Status.SUCCESS: ("SUCCESS", "Success", ["success"], None),
    Status.KEY_ENOENT: ("KEY_ENOENT", "Not Found", ["item-only"], None),
    Status.KEY_EEXISTS: ("KEY_EEXISTS", "key already exists, or CAS mismatch",
                         ["item-only"], None),
    Status.E2BIG: ("E2BIG", "Value is too big", ["item-only", "invalid-input"], None),
    Status.EINVAL: ("EINVAL", "Invalid packet", ["internal", "invalid-input"], None),
    Status.NOT_STORED: ("NOT_STORED", "Not Stored", ["item-only"], None),
    Status.DELTA_BADVAL: ("DELTA_BADVAL", "Existing document not a number",
                          ["item-only", "invalid-input"], None),
    Status.NOT_MY_VBUCKET: ("NOT_MY_VBUCKET", "Server does not know about this vBucket",
                            ["fetch-config", "invalid-input"], None),
    Status.NO_BUCKET: ("NO_BUCKET", "Not connected to any bucket", ["conn-state-invalidated"],
                       None),
    Status.LOCKED: ("LOCKED", "Requested resource is locked",
                    ["item-locked", "item-only", "retry-later"], _RETRY_SOON),
    Status.NOT_LOCKED: ("NOT_LOCKED", "Requested resource is not locked", ["item-only"], None),
    Status.AUTH_ERROR: ("AUTH_ERROR", "Authentication failed", ["auth"], None),
    Status.AUTH_CONTINUE: ("AUTH_CONTINUE", "Authentication continue",
                           ["auth", "special-handling"], None),
    Status.ERANGE: ("ERANGE", "Range error", ["invalid-input"], None),
    Status.EACCESS: ("EACCESS", "No access", ["support"], None),
    Status.UNKNOWN_FRAME_INFO: ("UNKNOWN_FRAME_INFO", "Unknown frame info",
                                ["support", "invalid-input"], None),
    Status.UNKNOWN_COMMAND: ("UNKNOWN_COMMAND", "Unknown command", ["support"], None),
    Status.ENOMEM: ("ENOMEM", "Out of memory", ["temp", "retry-later"], _RETRY_SOON),
    Status.NOT_SUPPORTED: ("NOT_SUPPORTED", "Not supported", ["support"], None),
    Status.EINTERNAL: ("EINTERNAL", "Internal error", ["internal"], None),
    Status.EBUSY: ("EBUSY", "Server busy", ["temp", "retry-later"], _RETRY_SOON),
    Status.ETMPFAIL: ("ETMPFAIL", "Temporary failure", ["temp", "retry-later"], _RETRY_SOON),
    Status.UNKNOWN_COLLECTION: ("UNKNOWN_COLLECTION", "Unknown Collection",
                                ["fetch-config", "item-only"], None),
    Status.UNKNOWN_SCOPE: ("UNKNOWN_SCOPE", "Unknown Scope", ["fetch-config", "item-only"],
                           None),
    Status.DURABILITY_INVALID_LEVEL: ("DURABILITY_INVALID_LEVEL",
                                      "Invalid durability level", ["support"], None),
    Status.DURABILITY_IMPOSSIBLE: ("DURABILITY_IMPOSSIBLE",
                                   "The durability requirement cannot be met", ["support"],
                                   None),
    Status.SYNC_WRITE_IN_PROGRESS: ("SYNC_WRITE_IN_PROGRESS",
                                    "A durable write is in progress on the key",
                                    ["temp", "retry-later", "item-only"], _RETRY_SOON),
    Status.SYNC_WRITE_AMBIGUOUS: ("SYNC_WRITE_AMBIGUOUS",
                                  "The durable write timed out; its outcome is unknown",
                                  ["special-handling", "item-only"], None),
}

#: The sub-document statuses (0xd0 / 0xd1): name, description, attributes.
_SUBDOC_ERRORS: Dict[int, Tuple[str, str, List[str]]] = {
    Status.XATTR_EINVAL: ("XATTR_EINVAL", "Invalid xattr key or section", ["invalid-input"]),
    Status.SUBDOC_PATH_ENOENT: ("SUBDOC_PATH_ENOENT", "Path not found", ["item-only"]),
    Status.SUBDOC_PATH_MISMATCH: ("SUBDOC_PATH_MISMATCH", "The path does not match the "
                                  "document", ["item-only"]),
    Status.SUBDOC_PATH_EINVAL: ("SUBDOC_PATH_EINVAL", "Invalid path", ["invalid-input"]),
    Status.SUBDOC_PATH_E2BIG: ("SUBDOC_PATH_E2BIG", "The path is too big", ["invalid-input"]),
    Status.SUBDOC_DOC_E2DEEP: ("SUBDOC_DOC_E2DEEP", "The document is too deep",
                               ["item-only"]),
    Status.SUBDOC_VALUE_CANTINSERT: ("SUBDOC_VALUE_CANTINSERT", "The value cannot be "
                                     "inserted", ["invalid-input"]),
    Status.SUBDOC_DOC_NOTJSON: ("SUBDOC_DOC_NOTJSON", "The document is not JSON",
                                ["item-only"]),
    Status.SUBDOC_NUM_ERANGE: ("SUBDOC_NUM_ERANGE", "The number is out of range",
                               ["item-only"]),
    Status.SUBDOC_DELTA_EINVAL: ("SUBDOC_DELTA_EINVAL", "Invalid delta", ["invalid-input"]),
    Status.SUBDOC_PATH_EEXISTS: ("SUBDOC_PATH_EEXISTS", "The path exists already",
                                 ["item-only"]),
    Status.SUBDOC_VALUE_ETOODEEP: ("SUBDOC_VALUE_ETOODEEP", "The value would nest too deep",
                                   ["invalid-input"]),
    Status.SUBDOC_INVALID_COMBO: ("SUBDOC_INVALID_COMBO", "Invalid combination of specs",
                                  ["invalid-input"]),
    Status.SUBDOC_MULTI_PATH_FAILURE: ("SUBDOC_MULTI_PATH_FAILURE", "A spec failed: see "
                                       "the value", ["item-only"]),
    Status.SUBDOC_SUCCESS_DELETED: ("SUBDOC_SUCCESS_DELETED", "Success on a deleted "
                                    "document", ["success", "item-deleted"]),
    Status.SUBDOC_XATTR_INVALID_FLAG_COMBO: ("SUBDOC_XATTR_INVALID_FLAG_COMBO",
                                             "Invalid xattr flag combination",
                                             ["invalid-input"]),
    Status.SUBDOC_XATTR_INVALID_KEY_COMBO: ("SUBDOC_XATTR_INVALID_KEY_COMBO",
                                            "Invalid xattr key combination",
                                            ["invalid-input"]),
    Status.SUBDOC_XATTR_UNKNOWN_MACRO: ("SUBDOC_XATTR_UNKNOWN_MACRO", "Unknown macro",
                                        ["invalid-input"]),
    Status.SUBDOC_XATTR_UNKNOWN_VATTR: ("SUBDOC_XATTR_UNKNOWN_VATTR", "Unknown virtual xattr",
                                        ["invalid-input"]),
    Status.SUBDOC_XATTR_CANT_MODIFY_VATTR: ("SUBDOC_XATTR_CANT_MODIFY_VATTR",
                                            "Virtual xattrs are read-only", ["invalid-input"]),
    Status.SUBDOC_MULTI_PATH_FAILURE_DELETED: ("SUBDOC_MULTI_PATH_FAILURE_DELETED",
                                               "A spec failed on a deleted document",
                                               ["item-only", "item-deleted"]),
    Status.SUBDOC_INVALID_XATTR_ORDER: ("SUBDOC_INVALID_XATTR_ORDER", "Xattr specs must come "
                                        "first", ["invalid-input"]),
}
for _status, (_name, _desc, _attrs) in _SUBDOC_ERRORS.items():
    _ERRORS[_status] = (_name, _desc, _attrs + ["subdoc"], None)
del _status, _name, _desc, _attrs


@lru_cache(maxsize=4)
def error_map(version: int) -> bytes:
    """GET_ERROR_MAP's body: version min(asked, 2) of the statuses txcb sends."""
    errors: Dict[str, Any] = {}
    for status, (name, desc, attrs, retry) in _ERRORS.items():
        entry: Dict[str, Any] = {"name": name, "desc": desc, "attrs": attrs}
        if retry is not None:
            entry["retry"] = retry
        errors["%x" % (status,)] = entry
    doc = {"version": max(1, min(version, 2)), "revision": 1, "errors": errors}
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


@lru_cache(maxsize=64)   # polled every 2.5 s by every SDK connection
def cluster_config(rev: int, port: int, bucket: Optional[str] = None,
                   ssl: bool = False) -> bytes:
    """
    The terse config of a one-node cluster on ``port`` (the address the
    client dialled, "$HOST"), serving KV only: a bucket config with every
    vBucket on node 0, or without ``bucket`` the global config.
    """
    service = "kvSSL" if ssl else "kv"
    doc: Dict[str, Any] = {
        "rev": rev,
        "nodesExt": [{"services": {service: port}, "hostname": "$HOST", "thisNode": True}],
        "clusterCapabilitiesVer": [1, 0],
        "clusterCapabilities": {},
    }
    if bucket is not None:
        doc.update({
            "name": bucket,
            "nodeLocator": "vbucket",
            "bucketCapabilitiesVer": "",
            "bucketCapabilities": ["collections", "durableWrite", "couchapi", "xattr",
                                   "dcp", "cbhello", "touch", "cccp", "xdcrCheckpointing",
                                   "nodesExt"],
            "vBucketServerMap": {
                "hashAlgorithm": "CRC",
                "numReplicas": 0,
                "serverList": ["$HOST:%d" % (port,)],
                "vBucketMap": [[0]] * NUM_VBUCKETS,
            },
        })
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


# -- sub-document spec lists (0xd0 / 0xd1, kv_engine docs/SubDocument.md) -------------

#: A multi-path request has at most this many specs (memcached's
#: subdoc_multi_max_paths); a 17th is SUBDOC_INVALID_COMBO.
MAX_SUBDOC_SPECS = 16

#: ``(opcode, path flags, path, value)`` of one spec (value b"" for lookups).
SpecTuple = Tuple[int, int, bytes, bytes]


class SpecListError(ValueError):
    """A spec list that does not parse; ``status`` is what kv_engine answers."""

    def __init__(self, message: str, status: int = Status.EINVAL) -> None:
        super().__init__(message)
        self.status = status


def _decode_specs(value: bytes, spec: struct.Struct, mutation: bool) -> List[SpecTuple]:
    """As memcached's subdoc_multi validators: a spec whose header or path
    runs past the value is EINVAL; none, or bytes past the 16th, INVALID_COMBO."""
    out: List[SpecTuple] = []
    pos, end = 0, len(value)
    while pos < end and len(out) < MAX_SUBDOC_SPECS:
        if end - pos < spec.size:
            raise SpecListError("spec %d: header runs past the value" % len(out))
        if mutation:
            opcode, flags, plen, vlen = spec.unpack_from(value, pos)
        else:
            (opcode, flags, plen), vlen = spec.unpack_from(value, pos), 0
        pos += spec.size
        if end - pos < plen + vlen:
            raise SpecListError("spec %d: path or value runs past the value" % len(out))
        path, body = value[pos:pos + plen], value[pos + plen:pos + plen + vlen]
        out.append((opcode, flags, path, body))
        pos += plen + vlen
    if not out or pos < end:
        raise SpecListError("a multi-path request has 1 to %d specs" % MAX_SUBDOC_SPECS,
                            Status.SUBDOC_INVALID_COMBO)
    return out


def decode_lookup_specs(value: bytes) -> List[SpecTuple]:
    """0xd0's specs: opcode u8, flags u8, path length u16, path (SpecListError)."""
    return _decode_specs(value, _LOOKUP_SPEC, False)


def decode_mutation_specs(value: bytes) -> List[SpecTuple]:
    """0xd1's specs: opcode, flags, path length u16, value length u32, path, value."""
    return _decode_specs(value, _MUTATION_SPEC, True)


def encode_lookup_specs(specs: Iterable[Tuple[int, int, bytes]]) -> bytes:
    """0xd0's value from ``(opcode, flags, path)``."""
    return b"".join(_LOOKUP_SPEC.pack(op, flags, len(path)) + path for op, flags, path in specs)


def encode_mutation_specs(specs: Iterable[Tuple[int, int, bytes, bytes]]) -> bytes:
    """0xd1's value from ``(opcode, flags, path, value)``."""
    return b"".join(_MUTATION_SPEC.pack(op, flags, len(path), len(v)) + path + v
                    for op, flags, path, v in specs)


def encode_lookup_results(results: Iterable[Tuple[int, Optional[bytes]]]) -> bytes:
    """0xd0's response value: status u16, length u32, value, per spec."""
    parts = []
    for status, value in results:
        value = value or b""
        parts.append(_LOOKUP_RESULT.pack(status, len(value)))
        parts.append(value)
    return b"".join(parts)


def decode_lookup_results(value: bytes) -> List[Tuple[int, bytes]]:
    """``[(status, value)]`` of a 0xd0 response (SpecListError: truncated)."""
    out, pos, end = [], 0, len(value)
    while pos < end:
        if end - pos < _LOOKUP_RESULT.size:
            raise SpecListError("lookup result header truncated")
        status, vlen = _LOOKUP_RESULT.unpack_from(value, pos)
        pos += _LOOKUP_RESULT.size
        if end - pos < vlen:
            raise SpecListError("lookup result value truncated")
        out.append((status, value[pos:pos + vlen]))
        pos += vlen
    return out


def encode_mutation_results(results: Iterable[Tuple[int, int, bytes]]) -> bytes:
    """0xd1's success value: index u8, status u16, length u32, value per
    value-returning spec (the others are not listed)."""
    return b"".join(_MUTATION_RESULT.pack(i, status, len(v)) + v for i, status, v in results)


def decode_mutation_results(value: bytes) -> List[Tuple[int, int, bytes]]:
    """``[(index, status, value)]`` of a successful 0xd1 response."""
    out, pos, end = [], 0, len(value)
    while pos < end:
        if end - pos < _MUTATION_RESULT.size:
            raise SpecListError("mutation result header truncated")
        index, status, vlen = _MUTATION_RESULT.unpack_from(value, pos)
        pos += _MUTATION_RESULT.size
        if end - pos < vlen:
            raise SpecListError("mutation result value truncated")
        out.append((index, status, value[pos:pos + vlen]))
        pos += vlen
    return out


def encode_mutation_failure(index: int, status: int) -> bytes:
    """0xd1's SUBDOC_MULTI_PATH_FAILURE value: the failed spec's index u8, status u16."""
    return _MUTATION_FAILURE.pack(index, status)


def decode_mutation_failure(value: bytes) -> Tuple[int, int]:
    """``(index, status)`` of a 0xd1 SUBDOC_MULTI_PATH_FAILURE response."""
    if len(value) != _MUTATION_FAILURE.size:
        raise SpecListError("a mutation failure is 3 bytes, not %d" % len(value))
    index, status = _MUTATION_FAILURE.unpack(value)
    return index, status
