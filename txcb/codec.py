"""
The txcb wire codec: netstring framing and the binary messages inside it.

Sans-IO: nothing here imports Twisted or touches a socket, so the Twisted
protocols, a blocking client, or a client in another language (see
``docs/protocol.rst``) share one definition of the bytes.

A message is a netstring (``<decimal length>:<payload>,``) whose payload is a
fixed 28-byte header followed by a body.  Requests carry an opaque request id
that the response echoes, so a client may pipeline requests and a server may
answer them in any order.
"""

from __future__ import annotations

import struct
from typing import List, Optional

from txcb.errors import RC

__all__ = [
    "Op", "Request", "Response", "FrameError", "NetstringDecoder",
    "encode_request", "decode_request", "encode_response", "decode_response",
    "netstring", "REQ_MAGIC", "RES_MAGIC", "HEADER_LEN", "OPT_DECREMENT",
    "OPT_INITIAL", "OPT_CHECK_REMOVED", "OPT_QUIET", "COUNTER_BODY",
]

REQ_MAGIC = 0xCB
RES_MAGIC = 0xCC

# magic, opcode, persist_to, replicate_to, options, keylen, opaque, cas, ttl, flags
_REQ = struct.Struct("!BBbbHHIQII")
# magic, opcode, status, opaque, cas, flags, seqno
_RES = struct.Struct("!BBHIQIQ")
HEADER_LEN = _REQ.size
assert _RES.size == HEADER_LEN == 28

#: COUNTER request body: delta magnitude, initial value.
COUNTER_BODY = struct.Struct("!QQ")
#: ENDURE request body: timeout and poll interval, in milliseconds.
ENDURE_BODY = struct.Struct("!II")

# Request option bits.
OPT_QUIET = 0x01          # GET/REMOVE: a miss is not an error (informational)
OPT_DECREMENT = 0x02      # COUNTER: subtract the delta
OPT_INITIAL = 0x04        # COUNTER: create with the initial value if missing
OPT_CHECK_REMOVED = 0x08  # ENDURE: wait for removal


class Op:
    """Opcodes (numbered like memcached's where one exists)."""
    GET = 0x00
    UPSERT = 0x01
    INSERT = 0x02
    REPLACE = 0x03
    REMOVE = 0x04
    COUNTER = 0x05
    FLUSH = 0x08
    NOOP = 0x0A
    APPEND = 0x0E
    PREPEND = 0x0F
    STATS = 0x10
    TOUCH = 0x1C
    GAT = 0x1D
    HELLO = 0x1F
    LOCK = 0x94
    UNLOCK = 0x95
    ENDURE = 0xB0


# Which opcodes take a key, and which take a body.
_KEYED = frozenset((Op.GET, Op.UPSERT, Op.INSERT, Op.REPLACE, Op.REMOVE, Op.COUNTER,
                    Op.APPEND, Op.PREPEND, Op.TOUCH, Op.GAT, Op.LOCK, Op.UNLOCK,
                    Op.ENDURE))
_BODY = {Op.UPSERT: None, Op.INSERT: None, Op.REPLACE: None, Op.APPEND: None,
         Op.PREPEND: None, Op.COUNTER: COUNTER_BODY.size, Op.ENDURE: ENDURE_BODY.size,
         Op.HELLO: None}
KNOWN_OPS = frozenset(v for k, v in vars(Op).items() if not k.startswith("_"))
MAX_KEY = 250


class FrameError(Exception):
    """
    A malformed frame or message.

    :ivar status: the status to answer with.
    :ivar opaque: the request id, if it could be read (else None).
    :ivar fatal: the stream cannot continue; close the connection.
    :ivar payloads: from :meth:`NetstringDecoder.feed`, the good payloads
        completed by the same call before the refused frame; handle them first.
    """

    def __init__(self, message: str, status: int = RC.PROTOCOL_ERROR,
                 opaque: Optional[int] = None, opcode: int = 0, fatal: bool = False) -> None:
        super().__init__(message)
        self.status = status
        self.opaque = opaque
        self.opcode = opcode
        self.fatal = fatal
        self.payloads: List[bytes] = []


class Request:
    """A decoded request."""

    __slots__ = ("opcode", "opaque", "key", "value", "cas", "ttl", "flags", "options",
                 "persist_to", "replicate_to")

    def __init__(self, opcode: int, opaque: int, key: bytes = b"", value: bytes = b"",
                 cas: int = 0, ttl: int = 0, flags: int = 0, options: int = 0,
                 persist_to: int = 0, replicate_to: int = 0) -> None:
        self.opcode = opcode
        self.opaque = opaque
        self.key = key
        self.value = value
        self.cas = cas
        self.ttl = ttl
        self.flags = flags
        self.options = options
        self.persist_to = persist_to
        self.replicate_to = replicate_to

    def __repr__(self) -> str:
        return "Request(op=0x%02x, opaque=%d, key=%r, value=%r)" % (
            self.opcode, self.opaque, self.key, self.value[:32])


class Response:
    """A decoded response."""

    __slots__ = ("opcode", "status", "opaque", "cas", "flags", "seqno", "body")

    def __init__(self, opcode: int, status: int, opaque: int, cas: int = 0, flags: int = 0,
                 seqno: int = 0, body: bytes = b"") -> None:
        self.opcode = opcode
        self.status = status
        self.opaque = opaque
        self.cas = cas
        self.flags = flags
        self.seqno = seqno
        self.body = body

    def __repr__(self) -> str:
        return "Response(op=0x%02x, status=0x%02x, opaque=%d, body=%r)" % (
            self.opcode, self.status, self.opaque, self.body[:32])


_req_pack = _REQ.pack
_req_unpack = _REQ.unpack_from
_res_pack = _RES.pack
_res_unpack = _RES.unpack_from


def encode_request(opcode: int, opaque: int, key: bytes = b"", value: bytes = b"",
                   cas: int = 0, ttl: int = 0, flags: int = 0, options: int = 0,
                   persist_to: int = 0, replicate_to: int = 0) -> bytes:
    """The payload of a request (frame it with :func:`netstring`)."""
    return _req_pack(REQ_MAGIC, opcode, persist_to, replicate_to, options, len(key), opaque,
                     cas, ttl, flags) + key + value


def decode_request(payload: bytes) -> Request:
    """Parse and check a request payload; raises :class:`FrameError`."""
    n = len(payload)
    if n < HEADER_LEN:
        opaque = struct.unpack_from("!I", payload, 8)[0] if n >= 12 else None
        raise FrameError("request shorter than the %d-byte header" % HEADER_LEN,
                         opaque=opaque, fatal=opaque is None)
    magic, opcode, persist_to, replicate_to, options, keylen, opaque, cas, ttl, flags = \
        _req_unpack(payload)
    if magic != REQ_MAGIC:
        raise FrameError("bad magic 0x%02x" % magic, opaque=opaque, opcode=opcode, fatal=True)
    if opcode not in KNOWN_OPS:
        raise FrameError("unknown opcode 0x%02x" % opcode, RC.UNKNOWN_COMMAND, opaque, opcode)
    end = HEADER_LEN + keylen
    if end > n:
        raise FrameError("key length %d runs past the message" % keylen, RC.EINVAL, opaque,
                         opcode)
    if opcode in _KEYED:
        if not 0 < keylen <= MAX_KEY:
            raise FrameError("key must be 1 to %d bytes" % MAX_KEY, RC.EINVAL, opaque, opcode)
    elif keylen:
        raise FrameError("opcode 0x%02x takes no key" % opcode, RC.EINVAL, opaque, opcode)
    size = _BODY.get(opcode, 0)
    if size is not None and n - end != size:
        raise FrameError("opcode 0x%02x takes a %d-byte body, not %d" % (opcode, size, n - end),
                         RC.EINVAL, opaque, opcode)
    return Request(opcode, opaque, payload[HEADER_LEN:end], payload[end:], cas, ttl, flags,
                   options, persist_to, replicate_to)


def encode_response(opcode: int, opaque: int, status: int = 0, cas: int = 0, flags: int = 0,
                    seqno: int = 0, body: bytes = b"") -> bytes:
    """The payload of a response; on error ``body`` is a UTF-8 message."""
    return _res_pack(RES_MAGIC, opcode, status, opaque, cas, flags, seqno) + body


def decode_response(payload: bytes) -> Response:
    """Parse a response payload; raises :class:`FrameError` (always fatal)."""
    if len(payload) < HEADER_LEN:
        raise FrameError("response shorter than the %d-byte header" % HEADER_LEN, fatal=True)
    magic, opcode, status, opaque, cas, flags, seqno = _res_unpack(payload)
    if magic != RES_MAGIC:
        raise FrameError("bad magic 0x%02x" % magic, fatal=True)
    return Response(opcode, status, opaque, cas, flags, seqno, payload[HEADER_LEN:])


def netstring(payload: bytes) -> bytes:
    """Frame one payload."""
    return b"%d:%s," % (len(payload), payload)


class NetstringDecoder:
    """
    Incremental netstring framing, for users without Twisted's
    ``NetstringReceiver`` (which the Twisted protocols use).  Lengths above
    ``max_length`` are refused as soon as the length prefix is read, before
    any of the payload is buffered.
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        self._chunks: List[bytes] = []
        self._have = 0
        self._need = -1  # payload length being read, -1 while reading the prefix
        self.broken = False

    def feed(self, data: bytes) -> List[bytes]:
        """
        Return the payloads completed by ``data``; raises FrameError (fatal),
        whose ``payloads`` holds those completed before the bad frame.
        """
        if self.broken:
            raise FrameError("the stream is broken", fatal=True)
        self._chunks.append(data)
        self._have += len(data)
        if self._need >= 0 and self._have <= self._need:
            return []  # still inside a payload: no copying until it is whole
        buf = b"".join(self._chunks)
        out = []
        pos = 0
        n = len(buf)
        try:
            while True:
                if self._need < 0:
                    colon = buf.find(b":", pos, pos + 12)
                    if colon < 0:
                        prefix = buf[pos:pos + 12]
                        if len(prefix) > 11 or (prefix and not prefix.isdigit()):
                            self._bad_prefix(prefix)
                        break
                    prefix = buf[pos:colon]
                    if not prefix.isdigit() or (len(prefix) > 1 and prefix[:1] == b"0"):
                        self._bad_prefix(prefix)
                    length = int(prefix)
                    if length > self.max_length:
                        raise FrameError("netstring of %d bytes is over the %d-byte limit"
                                         % (length, self.max_length), fatal=True)
                    self._need = length
                    pos = colon + 1
                end = pos + self._need
                if end >= n:
                    break
                if buf[end] != 0x2C:  # ","
                    raise FrameError("netstring not terminated by a comma", fatal=True)
                out.append(buf[pos:end])
                pos = end + 1
                self._need = -1
        except FrameError as e:
            self.broken = True
            self._chunks = []
            self._have = 0
            e.payloads = out
            raise
        rest = buf[pos:]
        self._chunks = [rest] if rest else []
        self._have = len(rest)
        return out

    @staticmethod
    def _bad_prefix(prefix: bytes) -> None:
        raise FrameError("bad netstring length prefix %r" % (prefix[:12],), fatal=True)
