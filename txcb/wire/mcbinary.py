"""
Sans-IO codec for the memcached binary protocol (plus Couchbase's
GET_LOCKED / UNLOCK_KEY and the SASL opcodes).

Nothing here does I/O or imports Twisted: a transport feeds received bytes
to a :class:`Decoder` and writes the bytes that :func:`encode_request` /
:func:`encode_response` return.  The layout follows memcached's
``protocol_binary.h`` and the "Binary Protocol Revamped" document; every
frame is a 24-byte header followed by ``extras | key | value``::

    magic:u8 opcode:u8 keylen:u16 extlen:u8 datatype:u8
    vbucket-or-status:u16 bodylen:u32 opaque:u32 cas:u64      (big-endian)

Like h11, the decoder caps what it is willing to buffer: a frame whose
header announces a body above ``max_body`` is refused from its header
alone, before a single body byte is stored.
"""

from __future__ import annotations

import struct
from typing import (
    Callable, Dict, FrozenSet, Iterable, List, NamedTuple, Optional, Tuple, Union)

from txcb.errors import McStatus, code_names
from txcb.limits import MAX_KEY_LEN

__all__ = [
    "REQ_MAGIC", "RES_MAGIC", "HEADER", "HEADER_LEN", "ITEM_FLAGS", "MAX_KEY_LEN",
    "U16", "U32", "U64", "STORE_EXTRAS", "COUNTER_EXTRAS",
    "DEFAULT_MAX_BODY",
    "COUNTER_NO_CREATE", "Opcode", "Status", "OPCODE_NAMES", "STATUS_NAMES",
    "QUIET", "is_quiet", "loud_opcode", "Packet", "encode_request",
    "encode_response", "FrameError", "Decoder", "validate_request",
    "store_extras", "parse_store_extras", "counter_extras",
    "parse_counter_extras", "touch_extras", "parse_touch_extras",
    "flush_extras", "parse_flush_extras", "verbosity_extras",
    "parse_verbosity_extras", "get_locked_extras", "parse_get_locked_extras",
    "get_response_extras", "parse_get_response_extras", "counter_value",
    "parse_counter_value", "SaslPlain", "parse_sasl_plain",
    "build_sasl_plain", "encode_batch", "parse_item_flags",
]

REQ_MAGIC = 0x80
RES_MAGIC = 0x81
HEADER_LEN = 24
# MAX_KEY_LEN (txcb.limits) is memcached's KEY_MAX_LENGTH: longer keys are
# a protocol error.
#: Largest body the decoder buffers by default: memcached's 1 MiB default
#: item size is far below; 20 MiB matches Couchbase's document limit, plus
#: room for the key and extras.
DEFAULT_MAX_BODY = 20 * 1024 * 1024 + 1024
#: INCR/DECR expiration meaning "fail with KEY_ENOENT instead of creating".
COUNTER_NO_CREATE = 0xFFFFFFFF

#: The 24-byte frame header (see the module docstring), the one definition
#: every memcached binary speaker in txcb packs and unpacks with.
HEADER = struct.Struct(">BBHBBHIIQ")
_HEADER = HEADER
#: Big-endian u16 / u32 / u64, the one definition of each for every
#: memcached-binary and Couchbase KV speaker in txcb.
U16 = struct.Struct(">H")
U32 = _U32 = struct.Struct(">I")
U64 = _U64 = struct.Struct(">Q")
#: GET-family response extras: the item's flags, u32.
ITEM_FLAGS = _U32
#: SET/ADD/REPLACE extras (flags, exptime) and INCR/DECR extras (delta,
#: initial, exptime), for servers that unpack them inline.
STORE_EXTRAS = _STORE = struct.Struct(">II")
_pack_store = _STORE.pack
COUNTER_EXTRAS = _COUNTER = struct.Struct(">QQI")

BytesLike = Union[bytes, bytearray, memoryview]


class Opcode:
    """Request/response opcodes (``protocol_binary_command``)."""
    GET = 0x00
    SET = 0x01
    ADD = 0x02
    REPLACE = 0x03
    DELETE = 0x04
    INCREMENT = 0x05
    DECREMENT = 0x06
    QUIT = 0x07
    FLUSH = 0x08
    GETQ = 0x09
    NOOP = 0x0A
    VERSION = 0x0B
    GETK = 0x0C
    GETKQ = 0x0D
    APPEND = 0x0E
    PREPEND = 0x0F
    STAT = 0x10
    SETQ = 0x11
    ADDQ = 0x12
    REPLACEQ = 0x13
    DELETEQ = 0x14
    INCREMENTQ = 0x15
    DECREMENTQ = 0x16
    QUITQ = 0x17
    FLUSHQ = 0x18
    APPENDQ = 0x19
    PREPENDQ = 0x1A
    VERBOSITY = 0x1B
    TOUCH = 0x1C
    GAT = 0x1D
    GATQ = 0x1E
    SASL_LIST_MECHS = 0x20
    SASL_AUTH = 0x21
    SASL_STEP = 0x22
    GATK = 0x23
    GATKQ = 0x24
    # Couchbase extensions.
    GET_LOCKED = 0x94
    UNLOCK_KEY = 0x95


class Status(McStatus):
    """Response status codes (``protocol_binary_response_status``): the
    table :class:`txcb.errors.RC` starts with, so an error's ``rc`` is its
    status on the wire."""


#: opcode -> name, for logs and reprs.
OPCODE_NAMES: Dict[int, str] = code_names(Opcode)
#: status -> name, for logs and reprs.
STATUS_NAMES: Dict[int, str] = code_names(Status)

#: quiet opcode -> the loud opcode it is the "no reply on success" form of
#: (for GETQ/GETKQ/GATQ/GATKQ: no reply on a miss).
QUIET: Dict[int, int] = {
    Opcode.GETQ: Opcode.GET,
    Opcode.GETKQ: Opcode.GETK,
    Opcode.SETQ: Opcode.SET,
    Opcode.ADDQ: Opcode.ADD,
    Opcode.REPLACEQ: Opcode.REPLACE,
    Opcode.DELETEQ: Opcode.DELETE,
    Opcode.INCREMENTQ: Opcode.INCREMENT,
    Opcode.DECREMENTQ: Opcode.DECREMENT,
    Opcode.QUITQ: Opcode.QUIT,
    Opcode.FLUSHQ: Opcode.FLUSH,
    Opcode.APPENDQ: Opcode.APPEND,
    Opcode.PREPENDQ: Opcode.PREPEND,
    Opcode.GATQ: Opcode.GAT,
    Opcode.GATKQ: Opcode.GATK,
}


def is_quiet(opcode: int) -> bool:
    """True for the quiet ("...Q") opcodes, whose success is not answered."""
    return opcode in QUIET


def loud_opcode(opcode: int) -> int:
    """The loud form of a quiet opcode; any other opcode is returned as is."""
    return QUIET.get(opcode, opcode)


class Packet:
    """
    One decoded frame.  ``vbucket_or_status`` is the raw header field; read
    it as :attr:`vbucket` on a request and :attr:`status` on a response.
    ``framing`` holds the flexible framing extras of the alternative magics
    (0x08/0x18, which :mod:`txcb.wire.couchbase` decodes); b"" otherwise.
    """

    __slots__ = ("magic", "opcode", "datatype", "vbucket_or_status", "opaque",
                 "cas", "extras", "key", "value", "framing")

    def __init__(self, magic: int, opcode: int, datatype: int = 0,
                 vbucket_or_status: int = 0, opaque: int = 0, cas: int = 0,
                 extras: bytes = b"", key: bytes = b"",
                 value: bytes = b"", framing: bytes = b"") -> None:
        self.magic = magic
        self.opcode = opcode
        self.datatype = datatype
        self.vbucket_or_status = vbucket_or_status
        self.opaque = opaque
        self.cas = cas
        self.extras = extras
        self.key = key
        self.value = value
        self.framing = framing

    @property
    def vbucket(self) -> int:
        """The vbucket id (requests)."""
        return self.vbucket_or_status

    @property
    def status(self) -> int:
        """The status code (responses)."""
        return self.vbucket_or_status

    @property
    def is_request(self) -> bool:
        """True when the magic is :data:`REQ_MAGIC`."""
        return self.magic == REQ_MAGIC

    def encode(self) -> bytes:
        """Serialise back to wire bytes (round-trip of :class:`Decoder`)."""
        if self.framing:
            raise ValueError("flexible framing extras need txcb.wire.couchbase")
        return _encode(self.magic, self.opcode, self.datatype,
                       self.vbucket_or_status, self.opaque, self.cas,
                       self.extras, self.key, self.value)

    def _astuple(self) -> Tuple[object, ...]:
        return (self.magic, self.opcode, self.datatype, self.vbucket_or_status,
                self.opaque, self.cas, self.extras, self.key, self.value, self.framing)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Packet):
            return NotImplemented
        return self._astuple() == other._astuple()

    __hash__ = None  # type: ignore[assignment]  # mutable

    def __repr__(self) -> str:
        name = OPCODE_NAMES.get(self.opcode, "0x%02x" % self.opcode)
        if self.magic == REQ_MAGIC:
            vs = "vbucket=%d" % self.vbucket_or_status
        else:
            vs = "status=%s" % STATUS_NAMES.get(
                self.vbucket_or_status, "0x%02x" % self.vbucket_or_status)
        value = self.value if len(self.value) <= 32 else (
            self.value[:32] + b"...(%d bytes)" % len(self.value))
        return ("<Packet magic=0x%02x %s %s opaque=%d cas=%d datatype=%d "
                "extras=%r key=%r value=%r>" % (
                    self.magic, name, vs, self.opaque, self.cas,
                    self.datatype, self.extras, self.key, value))


def _encode(magic: int, opcode: int, datatype: int, vbucket_or_status: int,
            opaque: int, cas: int, extras: BytesLike, key: BytesLike,
            value: BytesLike) -> bytes:
    extlen = len(extras)
    keylen = len(key)
    try:
        header = _HEADER.pack(magic, opcode, keylen, extlen, datatype,
                              vbucket_or_status, extlen + keylen + len(value),
                              opaque, cas)
    except struct.error as e:
        raise ValueError(
            "field out of range (opcode=%r keylen=%d extlen=%d bodylen=%d "
            "opaque=%r cas=%r): %s" % (opcode, keylen, extlen,
                                       extlen + keylen + len(value), opaque,
                                       cas, e)) from None
    return b"".join((header, extras, key, value))


def encode_request(opcode: int, key: BytesLike = b"", value: BytesLike = b"",
                   extras: BytesLike = b"", opaque: int = 0, cas: int = 0,
                   vbucket: int = 0, datatype: int = 0) -> bytes:
    """Build a request frame.  Raises ValueError for out-of-range fields."""
    extlen = len(extras)
    keylen = len(key)
    try:
        header = _HEADER.pack(REQ_MAGIC, opcode, keylen, extlen, datatype,
                              vbucket, extlen + keylen + len(value), opaque,
                              cas)
    except struct.error:
        # _encode raises the ValueError that says which field.
        return _encode(REQ_MAGIC, opcode, datatype, vbucket, opaque, cas,
                       extras, key, value)
    return b"".join((header, extras, key, value))


def encode_response(opcode: int, status: int = 0, key: BytesLike = b"",
                    value: BytesLike = b"", extras: BytesLike = b"",
                    opaque: int = 0, cas: int = 0, datatype: int = 0) -> bytes:
    """Build a response frame.  Raises ValueError for out-of-range fields."""
    return _encode(RES_MAGIC, opcode, datatype, status, opaque, cas, extras,
                   key, value)


def encode_batch(requests: Iterable[Tuple[int, BytesLike, BytesLike, BytesLike]],
                 opaque: int) -> bytes:
    """
    A pipelined batch: ``(opcode, key, extras, value)`` request frames with
    consecutive opaques from ``opaque`` (wrapping at 2**32), then a NOOP
    with the next one.  Memcached answers in order, so the NOOP's reply
    says every request before it was answered (quiet ones only on failure).
    Raises ValueError for out-of-range fields.
    """
    frames: List[BytesLike] = []
    append = frames.append
    pack = HEADER.pack
    o = opaque
    try:
        for opcode, key, extras, value in requests:
            lk = len(key)
            lx = len(extras)
            append(pack(REQ_MAGIC, opcode, lk, lx, 0, 0, lx + lk + len(value),
                        o, 0))
            if lx:
                append(extras)
            append(key)
            if value:
                append(value)
            o = (o + 1) & 0xFFFFFFFF
        append(pack(REQ_MAGIC, Opcode.NOOP, 0, 0, 0, 0, 0, o, 0))
    except struct.error as e:
        raise ValueError("batch field out of range (opaque=%r): %s"
                         % (o, e)) from None
    return b"".join(frames)


# --- extras --------------------------------------------------------------

def _unpack(st: struct.Struct, data: BytesLike, what: str) -> Tuple[int, ...]:
    if len(data) != st.size:
        raise ValueError("%s extras must be %d bytes, got %d"
                         % (what, st.size, len(data)))
    return st.unpack(data)


def _pack(st: struct.Struct, what: str, *values: int) -> bytes:
    try:
        return st.pack(*values)
    except struct.error as e:
        raise ValueError("%s: value out of range %r: %s"
                         % (what, values, e)) from None


def store_extras(flags: int, exptime: int) -> bytes:
    """SET/ADD/REPLACE extras: flags:u32, expiration:u32."""
    try:
        return _pack_store(flags, exptime)
    except struct.error:
        return _pack(_STORE, "store extras", flags, exptime)  # raises ValueError


def parse_store_extras(extras: BytesLike) -> Tuple[int, int]:
    """-> (flags, exptime) from SET/ADD/REPLACE extras."""
    return _unpack(_STORE, extras, "store")  # type: ignore[return-value]


def counter_extras(delta: int, initial: int = 0,
                   exptime: int = 0) -> bytes:
    """INCR/DECR extras: delta:u64, initial:u64, expiration:u32.

    An ``exptime`` of :data:`COUNTER_NO_CREATE` asks the server not to
    create a missing counter."""
    return _pack(_COUNTER, "counter extras", delta, initial, exptime)


def parse_counter_extras(extras: BytesLike) -> Tuple[int, int, int]:
    """-> (delta, initial, exptime) from INCR/DECR extras."""
    return _unpack(_COUNTER, extras, "counter")  # type: ignore[return-value]


def _u32_extras(what: str, doc: str, optional: bool = False
                ) -> Tuple[Callable[..., bytes], Callable[[BytesLike], int]]:
    """
    The ``(encode, parse)`` pair of an extras that is one u32; an
    ``optional`` one is empty for 0 (as clients send it) and parses as 0.
    """
    label = what + " extras"

    def encode(value: int = 0) -> bytes:
        if optional and not value:
            return b""
        return _pack(_U32, label, value)

    def parse(extras: BytesLike) -> int:
        if optional and not extras:
            return 0
        return _unpack(_U32, extras, what)[0]

    name = what.replace(" ", "_") + "_extras"
    encode.__name__ = encode.__qualname__ = name
    parse.__name__ = parse.__qualname__ = "parse_" + name
    encode.__doc__ = doc
    parse.__doc__ = "-> the u32 of " + doc
    return encode, parse


touch_extras, parse_touch_extras = _u32_extras(
    "touch", "TOUCH/GAT/GATQ extras: expiration:u32.")
flush_extras, parse_flush_extras = _u32_extras(
    "flush", "FLUSH extras: optional delay:u32 (empty when 0).", optional=True)
verbosity_extras, parse_verbosity_extras = _u32_extras(
    "verbosity", "VERBOSITY extras: level:u32.")
get_locked_extras, parse_get_locked_extras = _u32_extras(
    "get_locked", "GET_LOCKED extras: optional lock time:u32 (empty = server default).",
    optional=True)
get_response_extras, parse_get_response_extras = _u32_extras(
    "get response", "GET/GETK/GAT/GET_LOCKED response extras: flags:u32.")


def parse_item_flags(extras: BytesLike) -> int:
    """-> an item's flags from GET-family response extras, 0 when there are
    none (a server that keeps no flags); ValueError for any other length."""
    if len(extras) == 4:
        return int(_U32.unpack(extras)[0])
    if not extras:
        return 0
    raise ValueError("GET reply extras of %d bytes" % (len(extras),))


def counter_value(value: int) -> bytes:
    """INCR/DECR response body: the new value as a big-endian u64."""
    return _pack(_U64, "counter value", value)


def parse_counter_value(value: BytesLike) -> int:
    """-> the counter from an INCR/DECR response body."""
    if len(value) != 8:
        raise ValueError("counter value must be 8 bytes, got %d" % len(value))
    return int(_U64.unpack(value)[0])


class SaslPlain(NamedTuple):
    """A decoded SASL PLAIN message (RFC 4616)."""
    authzid: bytes
    username: bytes
    password: bytes


def parse_sasl_plain(payload: BytesLike) -> SaslPlain:
    """
    Split ``[authzid] NUL authcid NUL passwd``.  Raises ValueError unless
    there are exactly two NULs and a non-empty username.  An empty password
    is accepted: Couchbase clients send one for password-less buckets.
    """
    parts = bytes(payload).split(b"\0")
    if len(parts) != 3:
        raise ValueError("SASL PLAIN payload needs exactly 2 NUL separators, "
                         "got %d" % (len(parts) - 1))
    authzid, username, password = parts
    if not username:
        raise ValueError("SASL PLAIN payload has an empty username")
    return SaslPlain(authzid, username, password)


def build_sasl_plain(username: bytes, password: bytes,
                     authzid: bytes = b"") -> bytes:
    """Build the SASL PLAIN payload (the value of a SASL_AUTH request)."""
    if not username:
        raise ValueError("SASL PLAIN username must not be empty")
    for part in (authzid, username, password):
        if b"\0" in part:
            raise ValueError("SASL PLAIN fields must not contain NUL")
    return b"\0".join((authzid, username, password))


# --- decoding ------------------------------------------------------------

class FrameError(Exception):
    """
    The byte stream holds a frame the decoder refuses.

    :ivar status: the status to answer with (EINVAL, E2BIG...).
    :ivar fatal: True when the stream cannot be resynchronised: answer (if
        at all) and close the connection; the decoder refuses further input.
        When False the bad frame's body is skipped and decoding can go on
        with ``feed(b"")``.
    :ivar opcode: / :ivar opaque: from the bad frame's header, or None when
        the header itself is unusable (wrong magic).
    :ivar packets: the good packets decoded by the same ``feed`` call before
        the bad frame; handle them before the error.
    """

    def __init__(self, message: str, status: int, fatal: bool,
                 opcode: Optional[int] = None, opaque: Optional[int] = None,
                 packets: Optional[List[Packet]] = None) -> None:
        super().__init__(message)
        self.status = status
        self.fatal = fatal
        self.opcode = opcode
        self.opaque = opaque
        self.packets: List[Packet] = packets if packets is not None else []


class Decoder:
    """
    Incremental frame decoder: ``feed(bytes) -> [Packet, ...]``.

    Accepts any split of the stream.  Checks done on the header alone,
    before any body byte is buffered: wrong magic (fatal), keylen + extlen
    > bodylen (fatal, EINVAL), bodylen > ``max_body`` (fatal, E2BIG), key
    longer than ``max_key`` (not fatal, EINVAL: the body is discarded as it
    arrives, never stored).  Buffering is linear: bytes are appended to one
    bytearray and consumed frames are cut from its front once per call; a
    frame arriving in pieces has its header parsed once, and is copied out
    once, when whole.

    Where memcached differs: it answers keylen + extlen > bodylen with
    UNKNOWN_COMMAND (we say EINVAL, which is what is wrong), and it closes
    the connection on a key above 250 bytes (we can resynchronise, so the
    caller may answer EINVAL and go on, or close like memcached).
    """

    __slots__ = ("_magic", "max_body", "max_key", "_buf", "_want", "_skip", "_failed")

    def __init__(self, expect: str = "request",
                 max_body: int = DEFAULT_MAX_BODY,
                 max_key: int = MAX_KEY_LEN) -> None:
        if expect == "request":
            self._magic = REQ_MAGIC
        elif expect == "response":
            self._magic = RES_MAGIC
        else:
            raise ValueError("expect must be 'request' or 'response', not %r"
                             % (expect,))
        self.max_body = max_body
        self.max_key = max_key
        self._buf = bytearray()
        # The size of the incomplete frame at the front of _buf, once its
        # header is read (0 before): no need to parse it again until then.
        self._want = 0
        self._skip = 0
        self._failed: Optional[FrameError] = None

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._buf)

    @property
    def skipping(self) -> int:
        """Body bytes of a refused frame still to be discarded."""
        return self._skip

    @property
    def failed(self) -> bool:
        """True after a fatal error: the decoder refuses further input."""
        return self._failed is not None

    def feed(self, data: BytesLike = b"") -> List[Packet]:
        """
        Add received bytes; return every frame now complete, in order.

        Raises :class:`FrameError` for a refused frame; the packets decoded
        before it in this call are in its ``packets``.  After a non-fatal
        error, call ``feed(b"")`` to decode what was buffered behind it.
        """
        if self._failed is not None:
            failed = self._failed
            raise FrameError("decoder already failed: %s" % (failed,),
                             failed.status, True, failed.opcode,
                             failed.opaque)
        if self._skip and data:
            n = min(self._skip, len(data))
            self._skip -= n
            data = memoryview(data)[n:]
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._want:
                return []  # the frame begun is still incomplete: nothing to parse again
            src: BytesLike = buf
        else:
            # Nothing pending: decode straight from the caller's bytes and
            # keep only the incomplete tail.
            src = data
        end = len(src)
        if end < HEADER_LEN:
            if src is not buf and end:
                buf += src
            return []
        out: List[Packet] = []
        pos, err = self._frames(src, end, out)
        if err is not None and err.fatal:
            self._failed = err
            self._buf = bytearray()
            raise err
        if src is buf:
            if pos:
                del buf[:pos]
        elif pos < end:
            buf += memoryview(src)[pos:]  # one copy of the tail, not two
        if err is not None:
            raise err
        return out

    def _frames(self, src: BytesLike, end: int,
                out: List[Packet]) -> Tuple[int, Optional[FrameError]]:
        """
        Decode the complete frames of ``src[:end]`` into ``out``: -> (bytes
        consumed, the refusal that stopped decoding or None).
        """
        err: Optional[FrameError] = None
        pos = self._want = 0
        expect = self._magic
        max_body = self.max_body
        max_key = self.max_key
        unpack = _HEADER.unpack_from
        append = out.append
        # Slicing bytes gives bytes (one copy); anything else (the
        # bytearray buffer, a memoryview) is sliced through a memoryview
        # and copied once into bytes.
        direct = src if isinstance(src, bytes) else None
        mv = None if direct is not None else memoryview(src)
        while end - pos >= HEADER_LEN:
            (magic, opcode, keylen, extlen, datatype, vbs, bodylen, opaque,
             cas) = unpack(src, pos)
            if (magic != expect or keylen + extlen > bodylen
                    or bodylen > max_body or keylen > max_key):
                err = self._refusal(out, magic, opcode, keylen, extlen,
                                    bodylen, opaque)
                if not err.fatal:
                    # Key too long: the frame boundary is still known, so
                    # drop the body: what is here now, the rest as it comes.
                    have = min(end - pos - HEADER_LEN, bodylen)
                    self._skip = bodylen - have
                    pos += HEADER_LEN + have
                break
            stop = pos + HEADER_LEN + bodylen
            if stop > end:
                self._want = stop - pos
                break
            a = pos + HEADER_LEN
            b = a + extlen
            c = b + keylen
            if direct is not None:
                append(Packet(magic, opcode, datatype, vbs, opaque, cas,
                              direct[a:b], direct[b:c], direct[c:stop]))
            else:
                assert mv is not None
                append(Packet(magic, opcode, datatype, vbs, opaque, cas,
                              bytes(mv[a:b]) if extlen else b"",
                              bytes(mv[b:c]) if keylen else b"",
                              bytes(mv[c:stop]) if c < stop else b""))
            pos = stop
        if mv is not None:
            mv.release()
        return pos, err

    def _refusal(self, out: List[Packet], magic: int, opcode: int,
                 keylen: int, extlen: int, bodylen: int,
                 opaque: int) -> FrameError:
        """Build the FrameError for a refused header (see class doc)."""
        if magic != self._magic:
            return FrameError("bad magic 0x%02x (expected 0x%02x)"
                              % (magic, self._magic), Status.EINVAL, True,
                              packets=out)
        if keylen + extlen > bodylen:
            return FrameError("keylen %d + extlen %d > bodylen %d"
                              % (keylen, extlen, bodylen), Status.EINVAL,
                              True, opcode, opaque, out)
        if bodylen > self.max_body:
            return FrameError("bodylen %d above the %d byte limit"
                              % (bodylen, self.max_body), Status.E2BIG, True,
                              opcode, opaque, out)
        return FrameError("key length %d above the %d byte limit"
                          % (keylen, self.max_key), Status.EINVAL, False,
                          opcode, opaque, out)


# --- request validation --------------------------------------------------

# key / value rules
_NONE, _REQUIRED, _ANY = 0, 1, 2
# cas rules
_CAS_ANY, _CAS_ZERO, _CAS_NONZERO = 0, 1, 2

_Rule = Tuple[FrozenSet[int], int, int, int]

_E0 = frozenset((0,))
_E4 = frozenset((4,))
_E8 = frozenset((8,))
_E20 = frozenset((20,))
_E0_4 = frozenset((0, 4))

_RULES: Dict[int, _Rule] = {}


def _rule(opcodes: Tuple[int, ...], extlens: FrozenSet[int], key: int,
          value: int, cas: int = _CAS_ANY) -> None:
    for op in opcodes:
        _RULES[op] = (extlens, key, value, cas)


O = Opcode
# Mirrors memcached's dispatch_bin_command() (proto_bin.c), made strict
# where memcached would desynchronise (a value on GET/TOUCH/STAT), plus
# kv_engine's validators for the Couchbase opcodes.
_rule((O.GET, O.GETQ, O.GETK, O.GETKQ), _E0, _REQUIRED, _NONE)
_rule((O.SET, O.SETQ, O.ADD, O.ADDQ, O.REPLACE, O.REPLACEQ), _E8, _REQUIRED,
      _ANY)
_rule((O.DELETE, O.DELETEQ), _E0, _REQUIRED, _NONE)
_rule((O.INCREMENT, O.INCREMENTQ, O.DECREMENT, O.DECREMENTQ), _E20,
      _REQUIRED, _NONE)
_rule((O.QUIT, O.QUITQ, O.NOOP, O.VERSION, O.SASL_LIST_MECHS), _E0, _NONE,
      _NONE)
_rule((O.FLUSH, O.FLUSHQ), _E0_4, _NONE, _NONE)
_rule((O.APPEND, O.APPENDQ, O.PREPEND, O.PREPENDQ), _E0, _REQUIRED, _ANY)
_rule((O.STAT,), _E0, _ANY, _NONE)
_rule((O.VERBOSITY,), _E4, _NONE, _NONE)
_rule((O.TOUCH, O.GAT, O.GATQ, O.GATK, O.GATKQ), _E4, _REQUIRED, _NONE)
_rule((O.SASL_AUTH, O.SASL_STEP), _E0, _REQUIRED, _ANY)
_rule((O.GET_LOCKED,), _E0_4, _REQUIRED, _NONE, _CAS_ZERO)
_rule((O.UNLOCK_KEY,), _E0, _REQUIRED, _NONE, _CAS_NONZERO)
del O


def validate_request(packet: Packet,
                     max_key: int = MAX_KEY_LEN) -> Optional[int]:
    """
    Check a request's shape for its opcode, as memcached does before
    executing it.  Returns None when it is well formed, else the status to
    answer with: UNKNOWN_COMMAND for an opcode outside :class:`Opcode`,
    EINVAL for wrong extras length, a missing/forbidden key or value, a key
    above ``max_key``, or a CAS that GET_LOCKED forbids / UNLOCK_KEY needs.
    """
    if packet.magic != REQ_MAGIC:
        return Status.EINVAL
    rule = _RULES.get(packet.opcode)
    if rule is None:
        return Status.UNKNOWN_COMMAND
    extlens, key_rule, value_rule, cas_rule = rule
    if len(packet.extras) not in extlens:
        return Status.EINVAL
    keylen = len(packet.key)
    if keylen > max_key:
        return Status.EINVAL
    if key_rule == _REQUIRED:
        if not keylen:
            return Status.EINVAL
    elif key_rule == _NONE and keylen:
        return Status.EINVAL
    if value_rule == _NONE and packet.value:
        return Status.EINVAL
    if cas_rule == _CAS_ZERO and packet.cas:
        return Status.EINVAL
    if cas_rule == _CAS_NONZERO and not packet.cas:
        return Status.EINVAL
    return None
