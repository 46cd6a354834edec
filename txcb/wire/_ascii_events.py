"""
The memcached ASCII commands as events: :class:`Command`, :class:`Error` and
:class:`EventRecorder`, a :class:`~txcb.wire.mcascii.Parser` handler table
that rebuilds each call as one.  Public through :mod:`txcb.wire.mcascii`.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Union

STORAGE_COMMANDS = frozenset(
    ["set", "add", "replace", "append", "prepend", "cas"])
GET_COMMANDS = frozenset(["get", "gets", "gat", "gats"])
#: Every command the parser knows (its handler table's keys; a test checks).
COMMANDS = tuple(sorted(STORAGE_COMMANDS | GET_COMMANDS | {
    "incr", "decr", "touch", "delete", "flush_all", "verbosity", "version", "stats",
    "quit"}))


# -- events -----------------------------------------------------------------

class Command:
    """
    One complete, well-formed client command.

    ``name`` is the command as a ``str``.  Fields that a command does not use
    keep their defaults: ``keys`` (``get``/``gets``/``gat``/``gats``) and
    ``args`` are empty lists, ``key``/``cas``/``delta``/``value`` are
    ``None``, ``flags`` and ``exptime`` are ``0`` and ``noreply`` is false.
    """

    __slots__ = ("name", "keys", "key", "flags", "exptime", "cas", "delta",
                 "value", "noreply", "args")

    def __init__(self, name: str, *, keys: Optional[List[bytes]] = None,
                 key: Optional[bytes] = None, flags: int = 0,
                 exptime: int = 0, cas: Optional[int] = None,
                 delta: Optional[int] = None, value: Optional[bytes] = None,
                 noreply: bool = False,
                 args: Optional[List[bytes]] = None) -> None:
        self.name = name
        self.keys = [] if keys is None else keys
        self.key = key
        self.flags = flags
        self.exptime = exptime
        self.cas = cas
        self.delta = delta
        self.value = value
        self.noreply = noreply
        self.args = [] if args is None else args

    def __getattr__(self, field: str) -> Any:
        # Only called for a field left unset: the parser's hot paths set the
        # fields a command uses and leave the rest to their defaults.
        if field in _LIST_FIELDS:
            value: Any = []
            setattr(self, field, value)
            return value
        try:
            return _DEFAULTS[field]
        except KeyError:
            raise AttributeError(field) from None

    def __eq__(self, other: object) -> bool:
        if type(other) is not Command:
            return NotImplemented
        return all(getattr(self, s) == getattr(other, s)
                   for s in self.__slots__)

    def __repr__(self) -> str:
        shown = []
        for s in self.__slots__[1:]:
            v = getattr(self, s)
            if v is None or v == [] or (s in ("flags", "exptime") and v == 0) \
                    or (s == "noreply" and not v):
                continue
            if s == "value" and len(v) > 40:
                v = v[:40] + b"..."
            shown.append("%s=%r" % (s, v))
        return "Command(%r%s)" % (
            self.name, "".join(", " + x for x in shown))


_DEFAULTS = {"key": None, "flags": 0, "exptime": 0, "cas": None, "delta": None,
             "value": None, "noreply": False}
_LIST_FIELDS = frozenset(("keys", "args"))


class EventRecorder:
    """
    A :class:`Parser` handler table that turns each callback back into the
    :class:`Command` or :class:`Error` it stands for and hands it to
    ``sink``: for a user that wants events (tests, a login step).

    The parser calls, by command name: ``get``/``gets``: ``(keys,
    with_cas)``; ``gat``/``gats``: ``(keys, exptime, with_cas)``; the
    storage commands: ``(name, key, flags, exptime, value, cas, noreply)``;
    ``incr``/``decr``: ``(name, key, delta, noreply)``; ``touch``: ``(key,
    exptime, noreply)``; ``delete``: ``(key, noreply)``; ``flush_all``:
    ``(exptime, args, noreply)``; ``verbosity``: ``(args, noreply)``;
    ``version``/``stats``/``quit``: ``(args)``.
    """

    def __init__(self, sink: Callable[[Event], Any]) -> None:
        self.sink = sink
        self.handlers: Dict[str, Callable[..., None]] = {}
        for name in COMMANDS:
            self.handlers[name] = self._recorder(name)

    def on_error(self, response: bytes, close: bool) -> None:
        self.sink(Error(response, close))

    def _recorder(self, name: str) -> Callable[..., None]:
        sink = self.sink
        if name in ("get", "gets"):
            return lambda keys, with_cas: sink(Command(name, keys=keys))
        if name in ("gat", "gats"):
            return lambda keys, exptime, with_cas: sink(
                Command(name, keys=keys, exptime=exptime))
        if name in STORAGE_COMMANDS:
            return lambda n, key, flags, exptime, value, cas, noreply: sink(Command(
                n, key=key, flags=flags, exptime=exptime, value=value, cas=cas,
                noreply=noreply))
        if name in ("incr", "decr"):
            return lambda n, key, delta, noreply: sink(
                Command(n, key=key, delta=delta, noreply=noreply))
        if name == "touch":
            return lambda key, exptime, noreply: sink(
                Command(name, key=key, exptime=exptime, noreply=noreply))
        if name == "delete":
            return lambda key, noreply: sink(Command(name, key=key, noreply=noreply))
        if name == "flush_all":
            return lambda exptime, args, noreply: sink(
                Command(name, exptime=exptime, noreply=noreply, args=args))
        if name == "verbosity":
            return lambda args, noreply: sink(Command(name, noreply=noreply, args=args))
        return lambda args: sink(Command(name, args=args))


class Error:
    """
    A request the server must refuse.

    ``response`` is what memcached would write back (possibly ``b""``: for a
    ``noreply`` command, an HTTP request line or an over-long line memcached
    writes nothing).  When ``close`` is true the connection must be closed
    after writing it; the parser then ignores all further input.
    """

    __slots__ = ("response", "close")
    #: Not a command (a Command's name is a str): one key for both in a table.
    name = None

    def __init__(self, response: bytes, close: bool = False) -> None:
        self.response = response
        self.close = close

    def __eq__(self, other: object) -> bool:
        if type(other) is not Error:
            return NotImplemented
        return self.response == other.response and self.close == other.close

    def __repr__(self) -> str:
        return "Error(%r, close=%r)" % (self.response, self.close)


Event = Union[Command, Error]
