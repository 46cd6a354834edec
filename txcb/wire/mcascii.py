"""
A sans-IO parser and formatter for the memcached ASCII (text) protocol.

:class:`Parser` cuts the commands out of the bytes a memcached client sends
and calls its user's handler for each, with the command's fields (a table
by command name, like twisted's ``LineReceiver.lineReceived``), and an error
callback for each refused line; the ``format_*`` helpers and the reply
constants build what the server sends back.  Nothing here does I/O or
imports Twisted: a thin protocol wrapper feeds received bytes in, its
handlers act on the commands and it writes the replies out.
:class:`EventRecorder` is a handler table that rebuilds each call as a
:class:`Command` or :class:`Error` event, for a user that wants events.

The behaviour follows memcached 1.6's ``proto_text.c`` (checked against a
real memcached 1.6.18), including its error strings, its silent hang-up on
HTTP request lines (``t/malicious-commands.t``) and on over-long lines, its
``noreply`` rule (an error reply to a ``noreply`` command is not sent), and
its resynchronisation after a bad data chunk (exactly ``<bytes>`` + 2 bytes
are consumed, whatever they are).  Where this parser is deliberately stricter
than memcached, it is so in ways that keep the stream in sync:

* keys may not contain control characters (memcached accepts them;
  ``Parser(control_keys=True)`` does too, refusing only space, CR, LF and
  NUL, which would corrupt the reply stream: memcaslap's keys hold control
  characters);
* numbers must be plain decimal digits (memcached's ``strtol`` also takes a
  ``+`` sign and silently truncates out-of-range flags and exptimes);
* every line, whatever it arrived in, is limited to ``max_line`` bytes, so
  results do not depend on how the stream was split;
* when a storage command line is rejected but its ``<bytes>`` field is a
  valid length, the data block that follows is swallowed rather than being
  parsed as commands (memcached would execute it as commands);
* a multi-get is limited to ``max_keys`` keys, so a never-ending ``get`` line
  cannot grow memory without bound.

Memory is bounded: an unterminated line is never held beyond
``max_line + 1`` bytes, an over-long ``get``/``gets`` line is tokenised as it
streams in, an oversized data block is counted down without being stored,
and only a data block that will be delivered (at most ``max_value + 2``
bytes) is buffered.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple, Union

from txcb.wire._ascii_events import (
    GET_COMMANDS, STORAGE_COMMANDS, Command, Error, Event, EventRecorder)
from txcb.wire._ascii_replies import (
    BAD_DATA_CHUNK, BAD_DELETE, BAD_DELTA, BAD_EXPTIME, BAD_FORMAT, DELETED, END, ERROR,
    EXISTS, GET_TOO_MANY_KEYS, NOT_FOUND, NOT_STORED, OK, OUT_OF_MEMORY, OUT_OF_MEMORY_STORING,
    STORED, TOO_LARGE, TOUCHED, KEY_FORBIDDEN as _KEY_FORBIDDEN, format_hit, format_number,
    format_one_hit, format_stats, format_value, valid_key as _valid_key)

__all__ = [
    "Parser", "EventRecorder", "Command", "Error", "Event",
    "format_value", "format_hit", "format_one_hit", "format_number", "format_stats",
    "END", "STORED", "NOT_STORED", "EXISTS", "NOT_FOUND", "DELETED",
    "TOUCHED", "OK", "ERROR",
    "BAD_FORMAT", "BAD_DATA_CHUNK", "TOO_LARGE", "BAD_DELTA",
    "BAD_EXPTIME", "BAD_DELETE", "GET_TOO_MANY_KEYS", "OUT_OF_MEMORY_STORING",
    "OUT_OF_MEMORY",
    "STORAGE_COMMANDS", "GET_COMMANDS",
]

_HANGUP = b""

_INT32_MIN = -(2 ** 31)
_INT32_MAX = 2 ** 31 - 1
_UINT32_MAX = 2 ** 32 - 1
_UINT64_MAX = 2 ** 64 - 1
# memcached rejects a <bytes> field above INT_MAX - 2 (the +2 is the \r\n).
_MAX_VLEN = _INT32_MAX - 2
# try_read_command_ascii: more than this many leading spaces on an
# over-long line means junk, not a multi-get.
_MAX_LEADING_SPACES = 100
_NOREPLY = b"noreply"
# Largest slice of an over-long get line tokenised in one step.
_STREAM_SLICE = 65536

# With control_keys=True: only what would break the line-based protocol.
_KEY_FORBIDDEN_MIN = b" \r\n\x00"


# -- field parsing ----------------------------------------------------------

def _parse_uint(token: bytes, maximum: int) -> Optional[int]:
    """Parse plain decimal digits no larger than ``maximum``, else None."""
    if not token.isdigit():
        return None
    if len(token) < 10:     # below every maximum used here (2**31 - 3 and up)
        return int(token)
    digits = token.lstrip(b"0")
    # Bound the work (and dodge int()'s digit limit) before converting.
    if len(digits) > len(str(maximum)):
        return None
    value = int(digits) if digits else 0
    return value if value <= maximum else None


def _parse_delta(token: bytes) -> Optional[int]:
    """An incr/decr delta: an unsigned 64-bit decimal, or None."""
    return _parse_uint(token, _UINT64_MAX)


def _parse_int32(token: bytes) -> Optional[int]:
    """Parse an optionally negative decimal that fits a signed 32-bit int."""
    if token[:1] == b"-":
        magnitude = _parse_uint(token[1:], -_INT32_MIN)
        return None if magnitude is None else -magnitude
    return _parse_uint(token, _INT32_MAX)


def _parse_vlen(token: bytes) -> Optional[int]:
    """Parse a storage command's <bytes> field as memcached accepts it."""
    return _parse_uint(token, _MAX_VLEN)


# -- the parser -------------------------------------------------------------

_LINE, _DATA, _SWALLOW, _GETSTREAM, _CLOSED = range(5)


class _CommandLines:
    """
    The grammar of command lines, one method per command: a complete line's
    tokens in, a handler call out (and the state a storage command's data block
    needs).  :class:`Parser` frames the stream around it.
    """

    max_key: int
    max_keys: int
    max_value: int
    _forbidden: bytes
    _buf: Union[bytes, bytearray]
    _pos: int
    _scan: int
    _state: int
    _pending: Optional[Tuple[str, bytes, int, int, Optional[int], bool]]
    handlers: Mapping[str, Callable[..., None]]
    on_error: Callable[[bytes, bool], None]
    _need: int

    def _close(self, response: bytes) -> None:
        self._state = _CLOSED
        self.on_error(response, True)


    def _collect_keys(self, tokens: List[bytes],
                      keys: List[bytes]) -> Optional[bytes]:
        """Append the non-empty tokens to keys; return an error or None."""
        max_key, max_keys = self.max_key, self.max_keys
        for token in tokens:
            if not token:
                continue
            if not _valid_key(token, max_key, self._forbidden):
                return BAD_FORMAT
            keys.append(token)
            if len(keys) > max_keys:
                return GET_TOO_MANY_KEYS
        return None

    def _unknown(self, tokens: List[bytes]) -> None:
        """A command line (its tokens) that names no command."""
        if not tokens or len(tokens[0]) < 2:
            # process_command_ascii: no command is shorter than two bytes.
            self.on_error(ERROR, False)
        elif tokens[-1].startswith(b"HTTP/"):
            # An HTTP request line: memcached hangs up without replying.
            self._close(_HANGUP)
        else:
            self.on_error(ERROR, False)

    def _get(self, name: str, tokens: List[bytes]) -> None:
        n = len(tokens)
        if n == 2 and (name == "get" or name == "gets"):
            key = tokens[1]     # the common case: one key (never empty here)
            if len(key) <= self.max_key and \
                    len(key.translate(None, self._forbidden)) == len(key):
                self.handlers[name]([key], name == "gets")
            else:
                self.on_error(BAD_FORMAT, False)
            return
        if n < 2:
            self.on_error(ERROR, False)
            return
        exptime = 0
        first_key = 1
        if name in ("gat", "gats"):
            parsed = _parse_int32(tokens[1])
            if parsed is None:
                self.on_error(BAD_EXPTIME, False)
                return
            exptime = parsed
            first_key = 2
        keys: List[bytes] = []
        failure = self._collect_keys(tokens[first_key:], keys)
        if failure is not None:
            self.on_error(failure, False)
            return
        # "gat <exptime>" with no keys is legal in memcached: it answers END.
        if first_key == 2:
            self.handlers[name](keys, exptime, name == "gats")
        else:
            self.handlers[name](keys, name == "gets")

    def _storage(self, name: str, tokens: List[bytes]) -> None:
        handle_cas = name == "cas"
        base = 6 if handle_cas else 5
        if len(tokens) not in (base, base + 1):
            # memcached answers ERROR and then reads the data as commands.
            self.on_error(ERROR, False)
            return
        noreply = tokens[-1] == _NOREPLY
        key = tokens[1]
        f, e, v = tokens[2], tokens[3], tokens[4]
        flags: Optional[int]
        exptime: Optional[int]
        vlen: Optional[int]
        if len(f) < 10 and len(e) < 10 and len(v) < 10 and f.isdigit() and \
                e.isdigit() and v.isdigit():
            # Short plain numbers (the usual): in range of every field.
            flags, exptime, vlen = int(f), int(e), int(v)
        else:
            flags, exptime, vlen = _parse_uint(f, _UINT32_MAX), _parse_int32(e), _parse_vlen(v)
        cas = _parse_uint(tokens[5], _UINT64_MAX) if handle_cas else None
        if (not 0 < len(key) <= self.max_key
                or len(key.translate(None, self._forbidden)) != len(key)
                or flags is None or exptime is None or vlen is None
                or (handle_cas and cas is None)):
            self.on_error(b"" if noreply else BAD_FORMAT, False)
            if vlen is not None:
                # Stricter than memcached: keep the stream in sync instead
                # of executing the data block as commands.
                self._swallow(vlen + 2)
            return
        if vlen > self.max_value:
            self.on_error(b"" if noreply else TOO_LARGE, False)
            self._swallow(vlen + 2)
            return
        buf, start = self._buf, self._pos
        stop = start + vlen
        if type(buf) is bytes and buf[stop:stop + 2] == b"\r\n":
            # The data block is here already (the usual): one copy, out of the read.
            self._pos = self._scan = stop + 2
            self.handlers[name](name, key, flags, exptime, buf[start:stop], cas, noreply)
            return
        self._pending = (name, key, flags, exptime, cas, noreply)
        self._need = vlen + 2
        self._state = _DATA

    def _swallow(self, count: int) -> None:
        self._need = count
        self._state = _SWALLOW

    def _key_and_number(self, tokens: List[bytes], parse: Any, bad: bytes) -> Any:
        """
        ``<cmd> <key> <number> [noreply]``: (noreply, number), or None once
        the line is refused (through ``on_error``).
        """
        if len(tokens) not in (3, 4):
            self.on_error(ERROR, False)
            return None
        noreply = tokens[-1] == _NOREPLY
        if not _valid_key(tokens[1], self.max_key, self._forbidden):
            self.on_error(b"" if noreply else BAD_FORMAT, False)
            return None
        number = parse(tokens[2])
        if number is None:
            self.on_error(b"" if noreply else bad, False)
            return None
        return noreply, number

    def _arithmetic(self, name: str, tokens: List[bytes]) -> None:
        got = self._key_and_number(tokens, _parse_delta, BAD_DELTA)
        if got is not None:
            self.handlers[name](name, tokens[1], got[1], got[0])

    def _touch(self, name: str, tokens: List[bytes]) -> None:
        got = self._key_and_number(tokens, _parse_int32, BAD_EXPTIME)
        if got is not None:
            self.handlers[name](tokens[1], got[1], got[0])

    def _delete(self, name: str, tokens: List[bytes]) -> None:
        n = len(tokens)
        if not 2 <= n <= 4:
            self.on_error(ERROR, False)
            return
        noreply = False
        if n > 2:
            # Only "delete <key> [0] [noreply]" is allowed; the legacy hold
            # time must be 0 (process_delete_command).
            hold_is_zero = tokens[2] == b"0"
            noreply = tokens[-1] == _NOREPLY
            if not ((n == 3 and (hold_is_zero or noreply))
                    or (n == 4 and hold_is_zero and noreply)):
                self.on_error(b"" if noreply else BAD_DELETE, False)
                return
        if not _valid_key(tokens[1], self.max_key, self._forbidden):
            self.on_error(b"" if noreply else BAD_FORMAT, False)
            return
        self.handlers[name](tokens[1], noreply)

    def _flush_all(self, name: str, tokens: List[bytes]) -> None:
        n = len(tokens)
        if not 1 <= n <= 3:
            self.on_error(ERROR, False)
            return
        noreply = n > 1 and tokens[-1] == _NOREPLY
        args = tokens[1:-1] if noreply else tokens[1:]
        exptime = 0
        if args:
            parsed = _parse_int32(args[0])
            if parsed is None:
                self.on_error(b"" if noreply else BAD_EXPTIME, False)
                return
            exptime = parsed
        self.handlers[name](exptime, args, noreply)

    def _verbosity(self, name: str, tokens: List[bytes]) -> None:
        if len(tokens) not in (2, 3):
            self.on_error(ERROR, False)
            return
        noreply = tokens[-1] == _NOREPLY
        if _parse_uint(tokens[1], _UINT32_MAX) is None:
            self.on_error(b"" if noreply else BAD_FORMAT, False)
            return
        args = tokens[1:-1] if noreply and len(tokens) == 3 else tokens[1:]
        self.handlers[name](args, noreply)

    def _simple(self, name: str, tokens: List[bytes]) -> None:
        # version and stats take anything after them, as memcached does;
        # stats subcommands are the server's to judge.
        self.handlers[name](tokens[1:])

    def _quit(self, name: str, tokens: List[bytes]) -> None:
        # memcached closes after quit and runs nothing pipelined behind it.
        self._state = _CLOSED
        self.handlers[name](tokens[1:])


class Parser(_CommandLines):
    """
    Incremental parser for the memcached ASCII protocol, as a server sees it.

    Feed it received bytes with :meth:`feed`; it calls ``handlers[name]``
    for each command the bytes completed (arguments: see
    :class:`EventRecorder`) and ``on_error(response, close)`` for each
    refused line, in order, and makes the same calls however the stream is
    split.  ``max_line`` bounds a command line (memcached uses 2048; only
    ``get``/``gets`` lines may be longer, as in memcached), ``max_value`` a
    data block, ``max_key`` a key and ``max_keys`` the keys of one multi-get.
    ``control_keys=True`` accepts control characters in keys, as memcached
    does (only space, CR, LF and NUL are refused).
    """

    def __init__(self, handlers: Mapping[str, Callable[..., None]],
                 on_error: Callable[[bytes, bool], None], max_line: int = 2048,
                 max_value: int = 20 * 1024 * 1024, max_key: int = 250,
                 max_keys: int = 65536, control_keys: bool = False) -> None:
        if max_line < 128:
            raise ValueError("max_line must be at least 128")
        if not 0 <= max_value <= _MAX_VLEN:
            raise ValueError("max_value out of range")
        if max_key < 1 or max_keys < 1:
            raise ValueError("max_key and max_keys must be positive")
        #: The callable per command name (see :class:`EventRecorder` for each
        #: one's arguments); the user may swap the table between commands.
        self.handlers = handlers
        #: ``on_error(response, close)``: a refused line (see :class:`Error`).
        self.on_error = on_error
        self.max_line = max_line
        self.max_value = max_value
        self.max_key = max_key
        self.max_keys = max_keys
        self._forbidden = _KEY_FORBIDDEN_MIN if control_keys else _KEY_FORBIDDEN
        # Unconsumed input: b"" when empty, the caller's bytes during a feed,
        # a bytearray while an incomplete command is held between feeds.
        self._buf: Union[bytes, bytearray] = b""
        self._pos = 0          # start of unconsumed bytes in _buf
        self._scan = 0         # _buf offset already searched for b"\n"
        self._state = _LINE
        # _DATA: the storage command awaiting its value.
        self._pending: Optional[Tuple[str, bytes, int, int, Optional[int], bool]] = None
        self._need = 0         # _DATA: bytes wanted; _SWALLOW: bytes left
        # _GETSTREAM state: an over-long get/gets line, tokenised as it comes.
        self._get_name = ""
        self._get_keys: List[bytes] = []
        self._get_partial = b""          # an unfinished key token
        self._get_failure: Optional[bytes] = None

    @property
    def buffered(self) -> int:
        """Bytes of input held internally (for checking memory bounds)."""
        return len(self._buf) - self._pos + len(self._get_partial)

    @property
    def closed(self) -> bool:
        """True once the connection must close; input is then ignored."""
        return self._state == _CLOSED

    @property
    def at_command(self) -> bool:
        """
        True when nothing is held and the next byte fed starts a command
        line (so a caller may recognise a simple complete line itself).
        """
        return self._state == _LINE and self._pos == len(self._buf)

    def feed(self, data: bytes) -> None:
        """
        Consume ``data``, calling a handler for every command it completed
        (or ``on_error`` for a refused line), in order.  When nothing is held
        from earlier input (the usual case) the commands are cut straight out
        of ``data``, and only an incomplete tail is copied into the buffer.
        """
        if not self._buf and self._state == _LINE and type(data) is bytes:
            # The usual read: nothing held, at a command line.
            if data[:4] == b"get " and data[-2:] == b"\r\n":
                # The commonest read of all, one "get <key>" line: as
                # _step_line reads it when the key is valid (no space, CR, LF).
                key = data[4:-2]
                size = len(key)
                if 0 < size <= self.max_key and \
                        len(key.translate(None, self._forbidden)) == size:
                    self.handlers["get"]([key], False)
                    return
            self._buf = data
            more = self._step_line()
            if not (more or self._buf):
                return              # every command of the read complete
        else:
            if self._state == _CLOSED or not data:
                return
            more = self._take(bytes(data) if type(data) is not bytes else data)
        if more:
            step = self._step
            while self._state != _CLOSED and step():
                pass
        if self._pos == len(self._buf) and self._state != _CLOSED:
            self._buf = b""
            self._pos = self._scan = 0
        else:
            self._keep_tail()

    def _take(self, data: bytes) -> bool:
        """Add ``data`` to what is held; True if the state machine may step on."""
        if not self._buf:       # nothing held (a held tail starts at 0)
            if self._state == _SWALLOW:
                # Skip swallowed bytes without copying them anywhere.
                n = min(len(data), self._need)
                self._need -= n
                data = data[n:] if n else data
                if self._need == 0:
                    self._state = _LINE
            self._buf = data
        else:
            self._buf += data
        return self._state != _LINE or self._step_line()

    def _keep_tail(self) -> None:
        """After a feed: keep only the unconsumed bytes, in a bytearray."""
        if self._state == _CLOSED:
            self._buf = b""
            self._pos = self._scan = 0
            self._pending = None
            self._get_partial = b""
            self._get_keys = []
            return
        buf, pos = self._buf, self._pos
        if pos == len(buf):
            self._buf = b""
            self._pos = self._scan = 0
        elif isinstance(buf, bytes):
            with memoryview(buf) as view:  # one copy of the tail, not two
                self._buf = bytearray(view[pos:])
            self._scan = max(0, self._scan - pos)
            self._pos = 0
        elif pos:
            del buf[:pos]
            self._scan = max(0, self._scan - pos)
            self._pos = 0

    # -- state machine --

    def _step(self) -> bool:
        """Make one unit of progress; False when more input is needed."""
        state = self._state
        if state == _LINE:
            return self._step_line()
        if state == _DATA:
            return self._step_data()
        if state == _SWALLOW:
            n = min(len(self._buf) - self._pos, self._need)
            self._pos += n
            self._need -= n
            if self._need:
                return False
            self._state = _LINE
            return True
        if state == _GETSTREAM:
            return self._step_getstream()
        return False

    def _step_line(self) -> bool:
        """
        Cut out every complete command line (and the data block of a
        storage command) while the parser stays in the line state; False
        when more input is needed.
        """
        buf = self._buf
        n = len(buf)
        pos = self._pos
        scan = self._scan       # searched for b"\n" up to here already
        if scan < pos:
            scan = pos
        max_line, max_key, forbidden = self.max_line, self.max_key, self._forbidden
        on_get = self.handlers["get"]   # fetched again after any other command
        while pos < n:
            nl = buf.find(b"\n", scan)
            if nl < 0:
                self._pos, self._scan = pos, n
                # Content plus a possible trailing \r, still without a newline.
                if n - pos > max_line + 1:
                    return self._long_line()
                return False
            end = nl - 1 if nl > pos and buf[nl - 1] == 0x0D else nl
            if end - pos > max_line:
                self._pos = pos
                return self._long_line()
            if buf.startswith(b"get ", pos):
                # The commonest line, "get <key>": as the tokens below would
                # read it when the rest is one valid key; anything else takes them.
                key = buf[pos + 4:end]
                size = len(key)
                if 0 < size <= max_key and len(key.translate(None, forbidden)) == size:
                    # (A get handler cannot change the parser's state.)
                    on_get([key if type(key) is bytes else bytes(key)], False)
                    pos = scan = nl + 1
                    continue
            line = buf[pos:end]
            self._pos = self._scan = pos = scan = nl + 1
            # The line's tokens name the command; its method parses the rest.
            tokens = (line if type(line) is bytes else bytes(line)).split(b" ")
            if b"" in tokens:
                tokens = [t for t in tokens if t]
            entry = _BY_NAME.get(tokens[0]) if tokens else None
            if entry is not None:
                entry[1](self, entry[0], tokens)
            else:
                self._unknown(tokens)
            on_get = self.handlers["get"]     # a command may swap the table (a login)
            state = self._state
            if state != _LINE:
                if state != _DATA or not self._step_data():
                    return state != _CLOSED
            pos = scan = self._pos    # past a data block that was taken with its line
        # Every byte consumed: nothing to hold.
        self._buf = b""
        self._pos = self._scan = 0
        return False

    def _long_line(self) -> bool:
        """A line over max_line: stream it if a multi-get, else hang up."""
        prefix = bytes(self._buf[self._pos:self._pos + self.max_line + 2])
        body = prefix.lstrip(b" ")
        skipped = len(prefix) - len(body)
        for name in ("get", "gets"):
            if skipped <= _MAX_LEADING_SPACES and \
                    body.startswith(name.encode() + b" "):
                self._state = _GETSTREAM
                self._get_name = name
                self._get_keys = []
                self._get_partial = b""
                self._get_failure = None
                self._pos += skipped + len(name) + 1
                return True
        self._close(_HANGUP)
        return False

    def _step_getstream(self) -> bool:
        buf, pos = self._buf, self._pos
        if pos == len(buf):
            return False
        # Work through at most _STREAM_SLICE bytes a step, so that one huge
        # feed() cannot make split() build millions of tokens at once.
        limit = pos + _STREAM_SLICE
        nl = buf.find(b"\n", pos, limit)
        stop = min(len(buf), limit) if nl < 0 else nl
        if self._get_failure is None:
            text = self._get_partial + bytes(buf[pos:stop])
            if nl >= 0 and text.endswith(b"\r"):
                text = text[:-1]
            tokens = text.split(b" ")
            if nl < 0:
                partial = tokens.pop()
                # +1: the token may yet turn out to end in the line's \r.
                if len(partial) > self.max_key + 1:
                    self._get_failure = BAD_FORMAT
                    partial = b""
                self._get_partial = partial
            else:
                self._get_partial = b""
            if self._get_failure is None:
                self._get_failure = self._collect_keys(tokens, self._get_keys)
            if self._get_failure is not None:
                self._get_keys = []
                self._get_partial = b""
        if nl < 0:
            self._pos = stop
            return stop < len(buf)
        self._pos = self._scan = nl + 1
        self._state = _LINE
        if self._get_failure is not None:
            self.on_error(self._get_failure, False)
        elif not self._get_keys:
            self.on_error(ERROR, False)     # "get" and only spaces
        else:
            self.handlers[self._get_name](self._get_keys, self._get_name == "gets")
        self._get_keys = []
        self._get_failure = None
        return True

    def _step_data(self) -> bool:
        pos, need = self._pos, self._need
        if len(self._buf) - pos < need:
            return False
        pending = self._pending
        assert pending is not None
        name, key, flags, exptime, cas, noreply = pending
        self._pending = None
        self._pos = self._scan = pos + need
        self._state = _LINE
        buf = self._buf
        if buf[pos + need - 2:pos + need] == b"\r\n":
            # One copy, straight out of the buffer.
            if type(buf) is bytes:
                value = buf[pos:pos + need - 2]
            else:
                with memoryview(buf) as view, view[pos:pos + need - 2] as block:
                    value = block.tobytes()
            self.handlers[name](name, key, flags, exptime, value, cas, noreply)
        else:
            # complete_nread_ascii: the block is consumed either way.
            self.on_error(b"" if noreply else BAD_DATA_CHUNK, False)
        return True

_HANDLERS: Dict[str, Callable[[_CommandLines, str, List[bytes]], None]] = {
    "get": _CommandLines._get, "gets": _CommandLines._get,
    "gat": _CommandLines._get, "gats": _CommandLines._get,
    "set": _CommandLines._storage, "add": _CommandLines._storage,
    "replace": _CommandLines._storage, "append": _CommandLines._storage,
    "prepend": _CommandLines._storage, "cas": _CommandLines._storage,
    "incr": _CommandLines._arithmetic, "decr": _CommandLines._arithmetic,
    "touch": _CommandLines._touch,
    "delete": _CommandLines._delete,
    "flush_all": _CommandLines._flush_all,
    "verbosity": _CommandLines._verbosity,
    "version": _CommandLines._simple, "stats": _CommandLines._simple,
    "quit": _CommandLines._quit,
}
# The same, by the command's bytes: (name, handler).
_BY_NAME = {name.encode("ascii"): (name, handler) for name, handler in _HANDLERS.items()}


