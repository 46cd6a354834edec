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

import struct
from typing import Dict, List, NamedTuple, Optional, Tuple, Union

from txcb.errors import McStatus, code_names
from txcb.limits import MAX_KEY_LEN
from txcb.wire import mcbinary
from txcb.wire.mcbinary import (
    HEADER, HEADER_LEN, REQ_MAGIC, RES_MAGIC, U16 as _U16)

__all__ = [
    "ALT_REQ_MAGIC", "ALT_RES_MAGIC", "NUM_VBUCKETS", "MAX_LEB128", "NO_FRAME_INFO",
    "Opcode", "Status", "Feature", "Durability", "Request", "FrameError", "Decoder",
    "FrameInfo", "FramingError", "parse_frame_infos", "encode_frame_info",
    "durability_frame", "split_collection", "leb128", "encode_request", "encode_response",
    "get_meta_extras", "observe_seqno_value", "mutation_extras", "STATUS_NAMES",
    "OPCODE_NAMES",
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


class Request(mcbinary.Packet):
    """
    One decoded frame (a request, or a response for a client): a
    :class:`txcb.wire.mcbinary.Packet` whose ``key`` is the raw key,
    collection prefix included, and whose ``framing`` holds the flexible
    framing extras (b"" for magic 0x80 / 0x81).
    """

    __slots__ = ()

    def encode(self) -> bytes:
        """Serialise back to wire bytes, framing extras included."""
        return _frame(self.magic, self.magic, self.opcode, self.vbucket_or_status,
                      self.opaque, self.cas, self.framing, self.extras, self.key,
                      self.value, self.datatype)

    def __repr__(self) -> str:
        name = OPCODE_NAMES.get(self.opcode, "0x%02x" % self.opcode)
        value = self.value if len(self.value) <= 32 else self.value[:32] + b"..."
        return ("<Request magic=0x%02x %s vb/status=%d opaque=%d cas=%d framing=%r "
                "extras=%r key=%r value=%r>" % (self.magic, name, self.vbucket_or_status,
                                                self.opaque, self.cas, self.framing,
                                                self.extras, self.key, value))


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
                           src[b:c] if extlen else b"", src[c:d],
                           src[d:stop] if d < stop else b"", src[a:b] if framelen else b""))
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
