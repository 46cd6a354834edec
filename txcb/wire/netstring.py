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
from typing import Any, List, Optional

from txcb.errors import RC
from txcb.limits import MAX_SCAN_BATCH, MAX_SCAN_BOUND, MAX_SCAN_BYTES
from txcb.validation import scan_args

__all__ = [
    "Op", "Request", "Response", "FrameError", "NetstringDecoder", "req_unpack", "res_pack",
    "encode_request", "decode_request", "encode_response", "decode_response",
    "netstring", "REQ_MAGIC", "RES_MAGIC", "HEADER_LEN", "OPT_DECREMENT",
    "OPT_INITIAL", "OPT_CHECK_REMOVED", "OPT_QUIET", "COUNTER_BODY",
    "OPT_IDS_ONLY", "OPT_UNKNOWN", "SCAN_BODY", "SCAN_ROW", "scan_args", "encode_scan_request",
    "decode_scan_request", "encode_scan_reply", "decode_scan_reply",
    "MAX_MULTI", "MULTI_ENTRY", "MULTI_MORE", "MULTI_FRAME_BYTES", "encode_multi_keys",
    "decode_multi_keys", "encode_multi_frame", "encode_multi_reply", "decode_multi_reply",
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
OPT_IDS_ONLY = 0x10       # SCAN: keys and metadata only, no values
#: The bits no option uses: a request with any of them set is refused (0x04).
OPT_UNKNOWN = 0xFFFF & ~(OPT_QUIET | OPT_DECREMENT | OPT_INITIAL | OPT_CHECK_REMOVED
                         | OPT_IDS_ONLY)


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
    SCAN = 0xDA
    GET_MULTI = 0x30


# Which opcodes take a key, and which take a body.
_KEYED = frozenset((Op.GET, Op.UPSERT, Op.INSERT, Op.REPLACE, Op.REMOVE, Op.COUNTER,
                    Op.APPEND, Op.PREPEND, Op.TOUCH, Op.GAT, Op.LOCK, Op.UNLOCK,
                    Op.ENDURE))
_BODY = {Op.UPSERT: None, Op.INSERT: None, Op.REPLACE: None, Op.APPEND: None,
         Op.PREPEND: None, Op.COUNTER: COUNTER_BODY.size, Op.ENDURE: ENDURE_BODY.size,
         Op.HELLO: None, Op.SCAN: None, Op.GET_MULTI: None}
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
    """
    A decoded request.  :func:`decode_request` fills the same slots without
    calling ``__init__``: a field added here is added there too.
    """

    __slots__ = ("opcode", "opaque", "key", "value", "cas", "ttl", "flags", "options",
                 "persist_to", "replicate_to", "keys")

    #: GET_MULTI only (set by :func:`decode_request`): the keys of the body.
    keys: List[bytes]

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
req_unpack = _REQ.unpack_from
res_pack = _RES.pack
_res_unpack = _RES.unpack_from
# The header with persist_to, replicate_to and options read as one word (0 in
# the commonest requests: one test covers the three), and those three alone.
_fast_unpack = struct.Struct("!BBIHIQII").unpack_from
_options_unpack = struct.Struct("!bbH").unpack_from


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
    magic, opcode, word, keylen, opaque, cas, ttl, flags = _fast_unpack(payload)
    end = HEADER_LEN + keylen
    if not (opcode <= 0x01 and magic == REQ_MAGIC and 0 < keylen <= MAX_KEY
            and (end == n if opcode == 0x00 else end <= n)):
        # Not a well-formed GET or UPSERT, the commonest requests (a key of 1
        # to 250 bytes, then nothing for a GET, the value for an UPSERT):
        # the checks every other request needs.
        _check_request(magic, opcode, keylen, n, opaque)
    # The request, made without an __init__ call (the commonest requests' cost).
    req = _new_request(Request)
    if word:  # options or durability: check them
        persist_to, replicate_to, options = _options_unpack(payload, 2)
        if options & OPT_UNKNOWN or persist_to < -1 or replicate_to < -1:
            _refuse_options(options, persist_to, replicate_to, opaque, opcode)
        req.options = options
        req.persist_to = persist_to
        req.replicate_to = replicate_to
    else:
        req.options = req.persist_to = req.replicate_to = 0
    req.opcode = opcode
    req.opaque = opaque
    req.key = payload[HEADER_LEN:end]
    req.value = payload[end:]
    req.cas = cas
    req.ttl = ttl
    req.flags = flags
    if opcode == 0x30:  # GET_MULTI: the keys of its body, checked
        try:
            req.keys = decode_multi_keys(req.value)
        except FrameError as e:
            e.opaque, e.opcode = opaque, opcode
            raise
    return req


_new_request = object.__new__


def _check_request(magic: int, opcode: int, keylen: int, n: int, opaque: int) -> None:
    """Raise the FrameError of a request header that does not fit its opcode."""
    end = HEADER_LEN + keylen
    if magic != REQ_MAGIC:
        raise FrameError("bad magic 0x%02x" % magic, opaque=opaque, opcode=opcode, fatal=True)
    if opcode not in KNOWN_OPS:
        raise FrameError("unknown opcode 0x%02x" % opcode, RC.UNKNOWN_COMMAND, opaque, opcode)
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


def _refuse_options(options: int, persist_to: int, replicate_to: int, opaque: int,
                    opcode: int) -> None:
    """Raise the FrameError (EINVAL) of unknown option bits or durability below -1."""
    if options & OPT_UNKNOWN:
        raise FrameError("unknown option bits 0x%04x" % (options & OPT_UNKNOWN), RC.EINVAL,
                         opaque, opcode)
    raise FrameError("persist_to %d / replicate_to %d: each must be -1 or more"
                     % (persist_to, replicate_to), RC.EINVAL, opaque, opcode)


def encode_response(opcode: int, opaque: int, status: int = 0, cas: int = 0, flags: int = 0,
                    seqno: int = 0, body: bytes = b"") -> bytes:
    """The payload of a response; on error ``body`` is a UTF-8 message."""
    return res_pack(RES_MAGIC, opcode, status, opaque, cas, flags, seqno) + body


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

    A frame arriving in pieces costs memory and work linear in what arrived,
    however small the pieces: its payload is appended to one bytearray (not
    kept as a list of pieces, each an object of its own), nothing held is
    scanned again, and the payload is copied out once, when whole.  The
    buffer grows with what arrives, never to the declared length at once (a
    length prefix alone would otherwise reserve memory nobody sent).
    """

    def __init__(self, max_length: int) -> None:
        self.max_length = max_length
        # An incomplete length prefix (at most 11 bytes), or, once it is
        # read, the payload so far.
        self._held = bytearray()
        self._need = -1  # payload length being read, -1 while reading the prefix
        self.broken = False

    @property
    def buffered(self) -> int:
        """Bytes held waiting for the rest of a frame."""
        return len(self._held)

    def feed(self, data: bytes) -> List[bytes]:
        """
        Return the payloads completed by ``data``; raises FrameError (fatal),
        whose ``payloads`` holds those completed before the bad frame.
        """
        if self.broken:
            raise FrameError("the stream is broken", fatal=True)
        if type(data) is not bytes:
            data = bytes(data)
        held = self._held
        out: List[bytes] = []
        pos = 0
        try:
            if self._need >= 0:
                missing = self._need + 1 - len(held)  # the payload's rest and its comma
                if len(data) < missing:
                    held += data
                    return out
                out.append(self._complete(data, missing))
                pos = missing
            elif held:
                data = bytes(held) + data  # a partial prefix: a few bytes
                self._held = bytearray()
            self._frames(data, pos, out)
        except FrameError as e:
            self.broken = True
            self._held = bytearray()
            e.payloads = out
            raise
        return out

    def _complete(self, data: bytes, missing: int) -> bytes:
        """The held payload, completed by the first ``missing`` bytes of ``data``."""
        need, held = self._need, self._held
        if held:
            held += memoryview(data)[:missing]
            src: Any = held
        else:
            src = data  # the payload came in one piece after its prefix
        if src[need] != 0x2C:  # ","
            raise FrameError("netstring not terminated by a comma", fatal=True)
        with memoryview(src) as view:
            payload = view[:need].tobytes()
        self._held = bytearray()
        self._need = -1
        return payload

    def _frames(self, buf: bytes, pos: int, out: List[bytes]) -> None:
        """Append the whole frames of ``buf[pos:]`` to ``out``; hold its incomplete tail."""
        n = len(buf)
        while pos < n:
            colon = buf.find(b":", pos, pos + 12)
            if colon < 0:
                prefix = buf[pos:pos + 12]
                if len(prefix) > 11 or not prefix.isdigit():
                    self._bad_prefix(prefix)
                self._held = bytearray(prefix)
                return
            prefix = buf[pos:colon]
            if not prefix.isdigit() or (len(prefix) > 1 and prefix[:1] == b"0"):
                self._bad_prefix(prefix)
            length = int(prefix)
            if length > self.max_length:
                raise FrameError("netstring of %d bytes is over the %d-byte limit"
                                 % (length, self.max_length), fatal=True)
            pos = colon + 1
            end = pos + length
            if end >= n:  # the payload or its comma is still to come
                self._need = length
                self._held = bytearray(memoryview(buf)[pos:])
                return
            if buf[end] != 0x2C:  # ","
                raise FrameError("netstring not terminated by a comma", fatal=True)
            out.append(buf[pos:end])
            pos = end + 1

    @staticmethod
    def _bad_prefix(prefix: bytes) -> None:
        raise FrameError("bad netstring length prefix %r" % (prefix[:12],), fatal=True)


# -- SCAN (docs/protocol.rst, 3.1) ---------------------------------------------

#: SCAN request body: batch item limit, batch byte limit, then the lengths of
#: the prefix, start and end bounds that follow it, in that order.
SCAN_BODY = struct.Struct("!IIHHH")
#: One row of a SCAN reply: key length, flags, cas, expiry (Unix seconds, 0 =
#: none), value length; then the key and the value.
SCAN_ROW = struct.Struct("!HIQII")
_MAX_BOUND = MAX_SCAN_BOUND


def encode_scan_request(batch_size: int, batch_bytes: int, prefix: bytes, start: bytes,
                        end: bytes) -> bytes:
    """The body of a SCAN request (bounds as bytes, ``b""`` for none)."""
    return SCAN_BODY.pack(batch_size, batch_bytes, len(prefix), len(start),
                          len(end)) + prefix + start + end


def decode_scan_request(body: bytes) -> tuple:
    """``(batch_size, batch_bytes, prefix, start, end)``; raises FrameError."""
    if len(body) < SCAN_BODY.size:
        raise FrameError("SCAN body shorter than %d bytes" % SCAN_BODY.size, RC.EINVAL)
    batch_size, batch_bytes, lp, ls, le = SCAN_BODY.unpack_from(body)
    if len(body) != SCAN_BODY.size + lp + ls + le:
        raise FrameError("SCAN bounds do not match the body length", RC.EINVAL)
    if max(lp, ls, le) > _MAX_BOUND or not batch_size or not batch_bytes:
        raise FrameError("SCAN bounds over %d bytes or a zero batch limit" % _MAX_BOUND,
                         RC.EINVAL)
    pos = SCAN_BODY.size
    return (batch_size, batch_bytes, body[pos:pos + lp], body[pos + lp:pos + lp + ls],
            body[pos + lp + ls:])


def encode_scan_reply(resume: bytes, rows: list) -> bytes:
    """
    The body of a SCAN reply: the bound to resume from (``b""``: the scan is
    complete) and rows of ``(key, flags, cas, expiry, value)``.
    """
    pack = SCAN_ROW.pack
    parts = [struct.pack("!H", len(resume)), resume]
    for key, flags, cas, expiry, value in rows:
        parts.append(pack(len(key), flags, cas, expiry, len(value)))
        parts.append(key)
        parts.append(value)
    return b"".join(parts)


def decode_scan_reply(body: bytes) -> tuple:
    """``(resume, [(key, flags, cas, expiry, value), ...])``; raises FrameError."""
    n = len(body)
    if n < 2:
        raise FrameError("SCAN reply shorter than 2 bytes", fatal=True)
    pos = 2 + struct.unpack_from("!H", body)[0]
    if pos > n:
        raise FrameError("truncated SCAN resume bound", fatal=True)
    resume = body[2:pos]
    rows = []
    unpack = SCAN_ROW.unpack_from
    size = SCAN_ROW.size
    while pos < n:
        if pos + size > n:
            raise FrameError("truncated SCAN row", fatal=True)
        klen, flags, cas, expiry, vlen = unpack(body, pos)
        pos += size
        end = pos + klen + vlen
        if end > n:
            raise FrameError("truncated SCAN row", fatal=True)
        rows.append((body[pos:pos + klen], flags, cas, expiry, body[pos + klen:end]))
        pos = end
    return resume, rows


# -- GET_MULTI (docs/protocol.rst, 3.2) ----------------------------------------

#: The most keys one GET_MULTI request may carry.
MAX_MULTI = 4096
#: One entry of a GET_MULTI reply: status, cas, flags, value length; then the
#: value (status 0), nothing (0x01, a miss), or a UTF-8 error message.
MULTI_ENTRY = struct.Struct("!HQII")
#: The response header's ``flags`` of a GET_MULTI reply frame that is not the
#: last one (the last has 0).
MULTI_MORE = 0x01
#: A server starts a new reply frame rather than let a body pass this many
#: bytes (or the client's limit, if lower), unless the frame is still empty.
MULTI_FRAME_BYTES = 1 << 20

_KEYLEN = [bytes((i,)) for i in range(MAX_KEY + 1)]


def encode_multi_keys(keys: List[bytes]) -> bytes:
    """
    The body of a GET_MULTI request: each key (1 to 250 bytes, checked by
    the caller) as ``<u8 length><key>``.
    """
    n = _KEYLEN
    return b"".join([n[len(k)] + k for k in keys])


def decode_multi_keys(body: bytes) -> List[bytes]:
    """The keys of a GET_MULTI request body; raises FrameError (EINVAL)."""
    n = len(body)
    if not n:
        raise FrameError("GET_MULTI needs 1 to %d keys, not 0" % MAX_MULTI, RC.EINVAL)
    keys: List[bytes] = []
    append = keys.append
    pos = 0
    for _ in range(MAX_MULTI):  # refused without parsing more than that many keys
        if pos >= n:
            break
        klen = body[pos]
        pos += 1
        end = pos + klen
        if not 0 < klen <= MAX_KEY or end > n:
            if not klen:
                why = "is empty"
            elif klen > MAX_KEY:
                why = "is %d bytes, over %d" % (klen, MAX_KEY)
            else:
                why = "runs %d bytes past the body" % (end - n)
            raise FrameError("GET_MULTI key %d %s" % (len(keys) + 1, why), RC.EINVAL)
        append(body[pos:end])
        pos = end
    else:
        if pos < n:
            raise FrameError("GET_MULTI of more than %d keys" % MAX_MULTI, RC.EINVAL)
    return keys


def encode_multi_frame(opaque: int, entries: List[tuple], more: bool = False) -> bytes:
    """
    One frame (response payload) of a GET_MULTI reply: ``entries`` are
    ``(status, cas, flags, data)`` (``data``: the value, the error message,
    or ``b""`` for a miss); ``more``: frames follow (:data:`MULTI_MORE`).
    """
    pack = MULTI_ENTRY.pack
    parts: List[bytes] = [res_pack(RES_MAGIC, Op.GET_MULTI, 0, opaque, 0,
                                    MULTI_MORE if more else 0, 0)]
    append = parts.append
    for status, cas, flags, data in entries:
        append(pack(status, cas, flags, len(data)))
        append(data)
    return b"".join(parts)


def encode_multi_reply(opaque: int, entries: List[tuple],
                       limit: int = MULTI_FRAME_BYTES) -> List[bytes]:
    """
    The frames of a whole GET_MULTI reply, ``entries`` in the request's key
    order (see :func:`encode_multi_frame`).  A new frame starts where the
    body would pass ``limit`` bytes; every frame holds at least one entry.
    """
    frames = []
    start = size = 0
    for i, e in enumerate(entries):
        m = 18 + len(e[3])
        if size + m > limit and size:
            frames.append(entries[start:i])
            start, size = i, 0
        size += m
    if not frames:
        return [encode_multi_frame(opaque, entries)]  # the usual case: one frame
    frames.append(entries[start:])
    last = len(frames) - 1
    return [encode_multi_frame(opaque, f, i < last) for i, f in enumerate(frames)]


def decode_multi_reply(body: bytes, pos: int = 0) -> List[tuple]:
    """
    The entries of one GET_MULTI reply frame's body (``body[pos:]``; pass a
    whole response payload and ``HEADER_LEN`` to save a copy): ``(status,
    cas, flags, data)``; raises FrameError (fatal) if the body does not parse.
    """
    n = len(body)
    out: List[tuple] = []
    append = out.append
    unpack = MULTI_ENTRY.unpack_from
    while pos < n:
        if pos + 18 > n:
            raise FrameError("truncated GET_MULTI entry header", fatal=True)
        status, cas, flags, vlen = unpack(body, pos)
        pos += 18
        end = pos + vlen
        if end > n:
            raise FrameError("GET_MULTI entry value runs %d bytes past the frame"
                             % (end - n), fatal=True)
        append((status, cas, flags, body[pos:end]))
        pos = end
    return out
