"""
Key distribution over N memcached servers, bit-compatible with twemproxy
(nutcracker) ``hash: md5`` with ``distribution: ketama`` or ``modula``.

A key sent through nutcracker and a key sent by a client using this module
land on the same server, so both can share one memcached pool.  The code
follows twemproxy's ``src/hashkit/nc_ketama.c``, ``nc_modula.c``,
``nc_md5.c``, ``server_pool_idx()`` in ``nc_server.c`` and the server line
parsing of ``conf_add_server()`` in ``nc_conf.c``:

* a server's hash name is the ``name`` after a space on its config line,
  else ``host`` when the port is 11211 (libmemcached's convention), else
  ``host:port``;
* ketama gives each live server ``floorf(pct * 160 / 4 * nlive + 1e-10) * 4``
  points, ``pct = weight / total_weight``, computed in C ``float`` (IEEE
  single precision) -- reproduced here bit for bit, since the rounding
  decides how many points a weighted server gets;
* each point group hashes ``"<name>-<i>"`` with md5 and takes 4 points, one
  per little-endian 4-byte word of the digest;
* a key hashes with ``hash_md5`` (first 4 digest bytes, little-endian); the
  first point ``>= hash`` wins, wrapping to the first point past the end;
* twemproxy sorts a pool's servers by name (shorter names first, then
  bytewise) when it loads its config: modula's slots follow that order, not
  the config order (``server_for`` still returns config-order indexes);
* a pool of one server, or an empty key, short-cut as twemproxy does.

Pure: no I/O, no Twisted.
"""

from __future__ import annotations

import hashlib
import math
import struct
from bisect import bisect_left
from typing import (Iterable, List, NamedTuple, Optional, Sequence, Tuple,
                    Type, TypeVar, Union)

__all__ = [
    "KETAMA_POINTS_PER_SERVER", "KETAMA_POINTS_PER_HASH",
    "KETAMA_MAX_HOSTLEN", "DEFAULT_KETAMA_PORT", "hash_md5", "ketama_points",
    "ServerSpec", "parse_server", "NoServersError", "Continuum", "Modula",
]

KETAMA_POINTS_PER_SERVER = 160
KETAMA_POINTS_PER_HASH = 4
#: twemproxy formats "name-index" into a buffer of this size (with its NUL).
KETAMA_MAX_HOSTLEN = 86
#: The port that is left out of a server's hash name (libmemcached compat).
DEFAULT_KETAMA_PORT = 11211

_F32 = struct.Struct("<f")
_POINTS = struct.Struct("<IIII")

ServerArg = Union[Tuple[Union[str, bytes], int], "ServerSpec"]
_D = TypeVar("_D", bound="_Distribution")


def _f32(x: float) -> float:
    """Round a double to the nearest IEEE single, as a C float store does."""
    return float(_F32.unpack(_F32.pack(x))[0])


def hash_md5(key: bytes) -> int:
    """twemproxy's ``hash_md5``: first 4 md5 bytes as a little-endian u32."""
    return int.from_bytes(hashlib.md5(key).digest()[:4], "little")


def ketama_points(weight: int, total_weight: int, nlive: int) -> int:
    """
    Points on the continuum for one server, exactly as ``ketama_update``
    computes them in single precision (each float operation's result rounded
    to float; the ``+ 0.0000000001`` is done in double, then cast back).
    """
    pct = _f32(_f32(float(weight)) / _f32(float(total_weight)))
    v = _f32(pct * float(KETAMA_POINTS_PER_SERVER))
    v = _f32(v / 4.0)
    v = _f32(v * _f32(float(nlive)))
    v = _f32(v + 0.0000000001)
    return int(math.floor(v)) * KETAMA_POINTS_PER_HASH


class ServerSpec(NamedTuple):
    """One parsed twemproxy server line."""
    #: the line without its " name" part, e.g. "127.0.0.1:11211:1".
    pname: str
    #: what the distribution hashes (see module doc).
    name: str
    #: host name / address, or a unix socket path.
    host: str
    #: 0 for a unix socket.
    port: int
    weight: int


def _atoi(text: str, what: str, line: str) -> int:
    # nc_atoi: digits only, no sign, no blanks.
    if not text or not text.isdigit() or not text.isascii():
        raise ValueError("invalid %s %r in server line %r"
                         % (what, text, line))
    return int(text)


def parse_server(line: str) -> ServerSpec:
    """
    Parse ``"host:port:weight [name]"`` or ``"/unix/path:weight [name]"``
    like twemproxy's ``conf_add_server``.

    For a unix socket without a name, twemproxy's hash name is the path
    followed by a ":" (it counts the port separator of an absent port):
    reproduced so the distribution matches.
    """
    name: Optional[str] = None
    rest = line
    if " " in rest:
        rest, name = rest.rsplit(" ", 1)
    if rest.startswith("/"):
        if ":" not in rest:
            raise ValueError("server line %r is not \"/path:weight [name]\""
                             % (line,))
        host, weight_s = rest.rsplit(":", 1)
        if ":" in host:
            raise ValueError("unix socket path in %r contains ':'" % (line,))
        port = 0
        port_s = ""
    else:
        parts = rest.rsplit(":", 2)
        if len(parts) != 3:
            raise ValueError(
                "server line %r is not \"host:port:weight [name]\"" % (line,))
        host, port_s, weight_s = parts
        port = _atoi(port_s, "port", line)
        if not 0 < port < 65536:
            raise ValueError("invalid port %d in server line %r"
                             % (port, line))
    weight = _atoi(weight_s, "weight", line)
    if weight == 0:
        raise ValueError("zero weight in server line %r" % (line,))
    if name is None:
        name = host if port == DEFAULT_KETAMA_PORT else host + ":" + port_s
    return ServerSpec(rest, name, host, port, weight)


class NoServersError(LookupError):
    """Every server of the pool is ejected: no key can be placed."""


def _normalise(servers: Sequence[ServerArg]) -> List[Tuple[bytes, int]]:
    out = []
    for entry in servers:
        name: Union[str, bytes]
        if isinstance(entry, ServerSpec):
            name, weight = entry.name, entry.weight
        else:
            name, weight = entry
        bname = name.encode("utf-8") if isinstance(name, str) else bytes(name)
        if not bname or b"\0" in bname:
            raise ValueError("server name must be non-empty, without NUL: %r"
                             % (name,))
        if (not isinstance(weight, int) or isinstance(weight, bool)
                or weight <= 0):
            raise ValueError("server %r: weight must be a positive int, not %r"
                             % (name, weight))
        out.append((bname, weight))
    if not out:
        raise ValueError("a pool needs at least one server")
    return out


def _hash_tag(key: bytes, tag: Optional[bytes]) -> bytes:
    # server_pool_idx(): hash only what lies between the tag's two
    # characters, if both are present and enclose at least one byte.
    if tag:
        start = key.find(tag[0:1])
        if start >= 0:
            stop = key.find(tag[1:2], start + 1)
            if stop - start > 1:
                return key[start + 1:stop]
    return key


class _Distribution:
    """What Continuum and Modula share: servers, ejection, key hashing."""

    def __init__(self, servers: Sequence[ServerArg],
                 ejected: Iterable[int] = (),
                 hash_tag: Optional[bytes] = None) -> None:
        self.servers: List[Tuple[bytes, int]] = _normalise(servers)
        self.ejected = frozenset(ejected)
        for i in self.ejected:
            if not 0 <= i < len(self.servers):
                raise ValueError("ejected index %r out of range" % (i,))
        if hash_tag is not None and len(hash_tag) != 2:
            raise ValueError("hash_tag must be exactly two bytes, like {}")
        self.hash_tag = hash_tag
        # conf_validate_server() sorts the pool's servers by name
        # (string_compare: shorter first, then bytewise) and refuses
        # duplicates; that order is what modula slots follow (and what
        # breaks ketama ties).  Indexes we return stay config indexes.
        names = [name for name, _ in self.servers]
        if len(set(names)) != len(names):
            raise ValueError("servers with the same name: %r" % (names,))
        self.twemproxy_order: List[int] = sorted(
            range(len(names)), key=lambda i: (len(names[i]), names[i]))
        self._live = [i for i in self.twemproxy_order
                      if i not in self.ejected]

    @classmethod
    def from_config(cls: Type[_D], lines: Sequence[str],
                    ejected: Iterable[int] = (),
                    hash_tag: Optional[bytes] = None) -> _D:
        """Build from twemproxy server lines, e.g. ``["10.0.0.1:11211:1"]``."""
        return cls([parse_server(line) for line in lines], ejected, hash_tag)

    def key_hash(self, key: bytes) -> int:
        """The hash twemproxy dispatches ``key`` with (0 for an empty key)."""
        key = _hash_tag(key, self.hash_tag)
        return hash_md5(key) if key else 0

    def server_for(self, key: bytes) -> int:
        """Index (into ``servers``) of the server that owns ``key``."""
        if len(self.servers) == 1:
            return 0
        return self.index_for_hash(self.key_hash(key))

    def index_for_hash(self, hash_value: int) -> int:  # pragma: no cover
        """Server index for an already computed key hash (per subclass)."""
        raise NotImplementedError

    def __len__(self) -> int:
        return len(self.servers)


class Continuum(_Distribution):
    """
    twemproxy's ``distribution: ketama`` with ``hash: md5``.

    :param servers: ``(name, weight)`` pairs or :class:`ServerSpec` s, in
        config order; ``server_for`` returns indexes into this list.
    :param ejected: indexes of servers left out of the continuum, as
        twemproxy does with ``auto_eject_hosts`` for a failed server; the
        others keep their points when the weights are equal.
    :param hash_tag: twemproxy's ``hash_tag``, two bytes such as ``b"{}"``.
    """

    def __init__(self, servers: Sequence[ServerArg],
                 ejected: Iterable[int] = (),
                 hash_tag: Optional[bytes] = None) -> None:
        super().__init__(servers, ejected, hash_tag)
        live = self._live
        total_weight = sum(self.servers[i][1] for i in live)
        points: List[Tuple[int, int]] = []
        for index in live:
            name, weight = self.servers[index]
            count = ketama_points(weight, total_weight, len(live))
            for group in range(count // KETAMA_POINTS_PER_HASH):
                host = b"%s-%d" % (name, group)
                if len(host) >= KETAMA_MAX_HOSTLEN:
                    raise ValueError(
                        "server name %r is too long for twemproxy's ketama "
                        "(%r must be under %d bytes)"
                        % (name, host, KETAMA_MAX_HOSTLEN))
                digest = hashlib.md5(host).digest()
                for value in _POINTS.unpack(digest):
                    points.append((value, index))
        # A stable sort: ties (md5 collisions on 32 bits) keep config order,
        # as glibc's merge-sort qsort does.
        points.sort(key=lambda p: p[0])
        self.points: List[Tuple[int, int]] = points
        self._values = [v for v, _ in points]
        self._indexes = [i for _, i in points]

    def index_for_hash(self, hash_value: int) -> int:
        """``ketama_dispatch``: first point >= hash, wrapping to the first."""
        values = self._values
        if not values:
            raise NoServersError("no live server in the continuum")
        i = bisect_left(values, hash_value)
        if i == len(values):
            i = 0
        return self._indexes[i]


class Modula(_Distribution):
    """
    twemproxy's ``distribution: modula`` with ``hash: md5``: each live
    server, in twemproxy's name order, takes ``weight`` consecutive slots;
    a key goes to slot ``hash % nslots``.
    """

    def __init__(self, servers: Sequence[ServerArg],
                 ejected: Iterable[int] = (),
                 hash_tag: Optional[bytes] = None) -> None:
        super().__init__(servers, ejected, hash_tag)
        self.slots: List[int] = [i for i in self._live
                                 for _ in range(self.servers[i][1])]

    def index_for_hash(self, hash_value: int) -> int:
        """``modula_dispatch``: slot ``hash % nslots``."""
        if not self.slots:
            raise NoServersError("no live server in the pool")
        return self.slots[hash_value % len(self.slots)]
