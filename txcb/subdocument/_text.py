"""
Finding a path in JSON text without rebuilding the document.

Documents stay text: a path is located as a span of the text (the C
scanner of :mod:`json` skips the values in between), and a mutation splices
new text in, so every byte outside the changed span is kept as it was
(number formats, whitespace, key order) and a lookup returns the raw
fragment, as Couchbase Server does.
"""

from __future__ import annotations

import json
import json.scanner
import re
from typing import Any, Iterator, List, Optional, Sequence, Tuple

from txcb.subdocument._const import MAX_DEPTH, Status
from txcb.subdocument._path import Component

__all__ = ["MALFORMED", "OpError", "Found", "check_document", "too_deep", "locate",
           "parse_value", "depth_of", "members", "iter_members", "next_start", "kind_at",
           "value_end", "skip_ws"]

_WS = re.compile(r"[ \t\n\r]*")
_KEY = re.compile(r'"((?:[^"\\]|\\.)*)"[ \t\n\r]*:[ \t\n\r]*', re.S)
_SEP = re.compile(r"[ \t\n\r]*([,\]}])[ \t\n\r]*")


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


#: What navigating text that is not JSON after all raises.
MALFORMED = (ValueError, StopIteration, AttributeError, IndexError, RecursionError)


def check_document(s: str, trusted: bool = False) -> Optional[Any]:
    """
    DOC_NOTJSON unless ``s`` is one JSON value.  ``trusted``: the caller
    knows it is (memcached's datatype), so it is not parsed.  Returns the
    decoded value when :func:`too_deep` may need it, else None.
    """
    maybe_deep = s.count("[") + s.count("{") >= MAX_DEPTH
    if trusted and not maybe_deep:
        return None
    try:
        obj = parse_value(s)
    except (ValueError, RecursionError):
        raise OpError(Status.DOC_NOTJSON, "the document is not JSON")
    return obj if maybe_deep else None


def too_deep(s: str, obj: Optional[Any]) -> bool:
    """Whether the (checked) document nests deeper than subjson parses."""
    if s.count("[") + s.count("{") < MAX_DEPTH:
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


def _child(s: str, start: int, comp: Component, found: Found) -> bool:
    """Step from the container at ``start`` into ``comp``; False if absent."""
    kind = s[start]
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


def _hit(found: Found, item: Tuple[int, int, int, Optional[str]], prev_end: int) -> None:
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
