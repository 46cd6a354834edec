"""
Finding a path in JSON text without rebuilding the document.

Documents stay text: a path is located as a span of the text (the C
scanner of :mod:`json` skips the values in between), and a mutation splices
new text in, so every byte outside the changed span is kept as it was
(number formats, whitespace, key order) and a lookup returns the raw
fragment, as Couchbase Server does.

A step into a plain key or a small index first tries :mod:`._fast` (the
members skipped by patterns), then, for an object nested too deep for
them, jumps from bracket to bracket; anything else (escaped or non-ASCII
keys, large indices) takes the general scanner, one member at a time.
"""

from __future__ import annotations

import json
import json.scanner
import re
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from txcb.subdocument import _fast
from txcb.subdocument._const import MAX_DEPTH, Status

try:  # optional (pip install txcb[fast]); the standard library decides without it
    import orjson as _orjson
except ImportError:  # pragma: no cover - PyPy, or not installed
    _orjson = None  # type: ignore[assignment]
from txcb.subdocument._path import Component

__all__ = ["MALFORMED", "OpError", "Found", "check_document", "too_deep", "maybe_deep",
           "locate", "parse_value", "parse_checked", "depth_of", "members", "iter_members",
           "next_start", "kind_at", "value_end", "skip_ws", "FAST"]

_WS = re.compile(r"[ \t\n\r]*")
_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"[ \t\n\r]*:[ \t\n\r]*', re.S)
_SEP = re.compile(r"[ \t\n\r]*([,\]}])[ \t\n\r]*")
#: Skips to the next bracket outside a string (strings skipped whole, in C).
_TO_BRACKET = re.compile(
    r'[^"{}\[\]]*(?:"[^"\\]*(?:\\.[^"\\]*)*"[^"{}\[\]]*)*', re.S)
#: A key the fast step may look for: printable ASCII, nothing JSON-structural.
_PLAIN_KEY = re.compile(r'[A-Za-z0-9_$@#%&*+\-./;<=>?^|~!\'()]+\Z')
_WS_CHARS = " \t\n\r"


class OpError(Exception):
    """One spec failed with ``status`` (a sub-document status)."""

    def __init__(self, status: int, why: str = "") -> None:
        super().__init__(why or "status 0x%02x" % status)
        self.status = status


def _no_constants(name: str) -> Any:
    raise ValueError("%s is not JSON" % name)


_DECODER = json.JSONDecoder(parse_constant=_no_constants)
_scan = json.scanner.make_scanner(_DECODER)  # type: ignore[arg-type]


def skip_ws(s: str, i: int) -> int:
    return _WS.match(s, i).end()  # type: ignore[union-attr]


def value_end(s: str, i: int) -> int:
    """The offset just after the JSON value starting at ``i``."""
    try:
        return _scan(s, i)[1]
    except StopIteration:
        raise ValueError("no JSON value at offset %d" % i)


def parse_value(text: str) -> Any:
    """Decode one JSON text strictly (no NaN/Infinity); ValueError if it is not."""
    return _DECODER.decode(text)


def depth_of(obj: Any) -> int:
    """Nesting levels of a decoded value, a primitive counting as one."""
    if isinstance(obj, dict):
        return 1 + max((depth_of(v) for v in obj.values()), default=0)
    if isinstance(obj, list):
        return 1 + max((depth_of(v) for v in obj), default=0)
    return 1


#: Whether a path step may take the fast steps (:mod:`._fast`, the bracket
#: jumps); the tests turn it off to compare them with the general scanner.
FAST = True

#: What navigating text that is not JSON after all raises.
MALFORMED = (ValueError, StopIteration, AttributeError, IndexError, RecursionError)


def maybe_deep(s: str) -> bool:
    """Whether ``s`` has enough brackets to nest deeper than MAX_DEPTH."""
    return s.count("[") + s.count("{") >= MAX_DEPTH


def parse_checked(s: str, deep: Optional[bool] = None) -> Any:
    """
    :func:`parse_value`, asking orjson first when it is installed and ``s``
    nests shallowly (:func:`maybe_deep` false, or ``deep`` given false):
    what it then accepts the standard library accepts too, with the same
    containers, so only what it refuses needs the standard library's
    verdict.  Deep texts go to the standard library alone, whose recursion
    limit refuses some that orjson reads.
    """
    if _orjson is not None and not (maybe_deep(s) if deep is None else deep):
        try:
            return _orjson.loads(s)
        except _orjson.JSONDecodeError:
            pass
    return parse_value(s)


def check_document(s: str, trusted: bool = False, deep: Optional[bool] = None
                   ) -> Optional[Any]:
    """
    DOC_NOTJSON unless ``s`` is one JSON value.  ``trusted``: the caller
    knows it is (memcached's datatype), so it is not parsed.  Returns the
    decoded value when :func:`too_deep` may need it, else None.  ``deep``:
    :func:`maybe_deep` of ``s``, if the caller knows it.
    """
    if deep is None:
        deep = maybe_deep(s)
    if trusted and not deep:
        return None
    try:
        obj = parse_checked(s, deep)
    except (ValueError, RecursionError):
        raise OpError(Status.DOC_NOTJSON, "the document is not JSON")
    return obj if deep else None


def too_deep(s: str, obj: Optional[Any], deep: Optional[bool] = None) -> bool:
    """Whether the (checked) document nests deeper than subjson parses."""
    if not (maybe_deep(s) if deep is None else deep):
        return False
    if obj is None:
        try:
            obj = parse_value(s)
        except (ValueError, RecursionError):
            return False
    return depth_of(obj) > MAX_DEPTH


class Found:
    """
    Where a path led.  ``complete``: the whole path exists and
    ``start:end`` is its value; otherwise ``start:end`` is the deepest
    container found, reached with ``level`` components.  For a complete
    match inside a container, ``key_start`` is where the member begins (its
    key, or the element) and ``prev_end`` the end of the previous member (or
    -1); :func:`next_start` finds the next one.
    """

    __slots__ = ("complete", "start", "end", "level", "key_start", "prev_end")

    def __init__(self) -> None:
        self.complete = True
        self.start = self.end = self.level = 0
        self.key_start = self.prev_end = -1


def iter_members(s: str, start: int) -> Iterator[Tuple[int, int, int, Optional[str]]]:
    """The container at ``start``: (member start, value start, value end, raw key)."""
    obj = s[start] == "{"
    close = "}" if obj else "]"
    i = skip_ws(s, start + 1)
    if s[i] == close:
        return
    while True:
        if obj:
            m = _KEY.match(s, i)
            begin, key, i = m.start(1) - 1, m.group(1), m.end()  # type: ignore[union-attr]
        else:
            begin, key = i, None
        end = value_end(s, i)
        yield begin, i, end, key
        m = _SEP.match(s, end)
        if m.group(1) == close:  # type: ignore[union-attr]
            return
        i = m.end()  # type: ignore[union-attr]


def members(s: str, start: int) -> List[Tuple[int, int, int, Optional[str]]]:
    return list(iter_members(s, start))


def _fast_member(s: str, start: int, key: str, found: Found) -> bool:
    """
    The member ``key`` (a plain key, see :mod:`._fast`) of the object at
    ``start``, found by jumping from bracket to bracket and looking only in
    the stretches of the object's own level: what a pattern-sized step
    (:func:`._fast.member`) declines, nested too deep.  In JSON text a plain
    key's ``{"k":`` or ``,"k":`` cannot occur inside a string, so such a
    place in those stretches is a member.
    """
    quoted = '"%s"' % key
    depth, i = 0, start
    while True:
        depth += 1 if s[i] in "{[" else -1
        if depth == 0:
            return False
        j = _TO_BRACKET.match(s, i + 1).end()  # type: ignore[union-attr]
        if depth == 1:
            q = s.find(quoted, i, j)
            while q >= 0:
                if _is_member_at(s, q, len(quoted), found):
                    return True
                q = s.find(quoted, q + 1, j)
        i = j


def _is_member_at(s: str, q: int, size: int, found: Found) -> bool:
    """Whether the key at ``q`` follows a ``{`` or ``,`` and precedes a ``:`` (then a hit)."""
    before = q - 1
    while s[before] in _WS_CHARS:
        before -= 1
    colon = skip_ws(s, q + size)
    if s[before] not in "{," or s[colon] != ":":
        return False
    found.key_start, found.start = q, skip_ws(s, colon + 1)
    found.end = value_end(s, found.start)
    if s[before] == "{":
        found.prev_end = -1
    else:
        while s[before - 1] in _WS_CHARS:
            before -= 1
        found.prev_end = before
    return True


def _child(s: str, start: int, comp: Component, found: Found) -> bool:
    """Step from the container at ``start`` into ``comp``; False if absent."""
    kind = s[start]
    if not FAST:
        pass
    elif kind == "{" and isinstance(comp, str):
        decided = _fast.member(s, start, comp)
        if decided is not None:
            if decided[0]:
                _hit(found, decided[1], decided[1][3])
            return decided[0]
        if _PLAIN_KEY.match(comp):
            return _fast_member(s, start, comp, found)
    elif kind == "[" and isinstance(comp, int):
        hit = _fast.last_element(s, start) if comp == -1 else _fast.element(s, start, comp)
        if hit is not None:
            _hit(found, hit, hit[3])
            return True
    if kind not in "{[" or isinstance(comp, str) != (kind == "{"):
        raise OpError(Status.PATH_MISMATCH, "the path treats a value as the wrong type")
    items = iter_members(s, start)
    if comp == -1:
        prev = last = None
        for item in items:
            prev, last = last, item
        if last is None:
            return False
        _hit(found, last, prev[2] if prev else -1)
        return True
    prev_end = -1
    for n, item in enumerate(items):
        if (item[3] == comp) if isinstance(comp, str) else (n == comp):
            _hit(found, item, prev_end)
            return True
        prev_end = item[2]
    return False


def _hit(found: Found, item: Tuple[int, int, int, Any], prev_end: int) -> None:
    found.key_start, found.start, found.end = item[0], item[1], item[2]
    found.prev_end = prev_end


def next_start(s: str, found: Found) -> int:
    """Where the member after a complete match starts, -1 if it is the last."""
    m = _SEP.match(s, found.end)
    return m.end() if m.group(1) == "," else -1  # type: ignore[union-attr]


def locate(s: str, path: Sequence[Component]) -> Found:
    """Follow ``path`` through the (checked) document ``s``."""
    found = Found()
    found.start = skip_ws(s, 0)
    found.end = len(s.rstrip(" \t\n\r"))
    for level, comp in enumerate(path):
        parent = (found.start, found.end)
        if not _child(s, parent[0], comp, found):
            found.complete = False
            found.start, found.end = parent
            found.level = level
            found.key_start = found.prev_end = -1
            return found
        found.level = level + 1
    return found


def kind_at(s: str, i: int) -> str:
    """'{', '[', '"' or 'x' (a number, true, false, null) for the value at ``i``."""
    c = s[i]
    return c if c in '{["' else "x"
