"""
The Couchbase sub-document path syntax, parsed as subjson's ``Path::parse``.

``a.b[0].c[-1]`` is fields ``a``, ``b``, index 0, field ``c``, the last
element.  A backtick-quoted field may hold ``.``, ``[`` and ``]``; two
backticks are one literal backtick.  Fields keep JSON escapes (``\\"``) as
written: they are compared with, and inserted as, a document's raw key text.
A component is a ``str`` (a field) or an ``int`` (an index, ``-1`` = last).
"""

from __future__ import annotations

from functools import lru_cache
from typing import List, Tuple, Union

from txcb.subdocument._const import MAX_PATH_COMPONENTS, Status

__all__ = ["Component", "PathError", "parse"]

Component = Union[str, int]
_JSON_ESCAPES = frozenset('"/\\bfnrt')


class PathError(Exception):
    """A path that does not parse: ``status`` is PATH_EINVAL or PATH_E2BIG."""

    def __init__(self, status: int, why: str) -> None:
        super().__init__(why)
        self.status = status


def _bad(why: str) -> PathError:
    return PathError(Status.PATH_EINVAL, why)


@lru_cache(maxsize=1024)
def parse(path: str) -> Tuple[Component, ...]:
    """The components of ``path`` (empty for the root)."""
    out: List[Component] = []
    i, n = 0, len(path)
    while i < n:
        if path[i] == "[":
            i = _bracket(path, i, out)
            if i < n and path[i] == ".":
                i += 1
            elif i < n and path[i] != "[":
                raise _bad("junk after ']'")
        else:
            i = _field(path, i, out)
    return tuple(out)


def _add(out: List[Component], comp: Component) -> None:
    if len(out) >= MAX_PATH_COMPONENTS:
        raise PathError(Status.PATH_E2BIG, "more than %d path components"
                        % MAX_PATH_COMPONENTS)
    out.append(comp)


def _bracket(path: str, i: int, out: List[Component]) -> int:
    """``[n]`` at ``i``: add the index, return the offset after ``]``."""
    end = path.find("]", i + 1)
    if end < 0:
        raise _bad("unbalanced '['")
    text = path[i + 1:end]
    if text == "-1":
        _add(out, -1)
    elif text.isdigit() and text.isascii() or text == "":
        # subjson reads "[]" as index 0.
        _add(out, int(text or "0"))
    else:
        raise _bad("array index %r is not a number or -1" % text)
    return end + 1


def _field(path: str, i: int, out: List[Component]) -> int:
    """A field starting at ``i``: add it, return the offset after it (and its dot)."""
    quoted = escape = False
    ticks = 0
    j = i
    for j in range(i, len(path)):
        c = path[j]
        if escape:
            if c not in _JSON_ESCAPES:
                raise _bad("bad JSON escape in path")  # \u included, as subjson
            escape = False
        elif c == "\\":
            escape = True
        elif c == '"' or c < " ":
            raise _bad("unescaped quote or control character in path")
        elif "\udc80" <= c <= "\udcff":
            raise _bad("the path is not UTF-8")
        if c == "`":
            ticks += 1
            quoted = not quoted
        if quoted:
            continue
        if c == "]":
            raise _bad("unbalanced ']'")
        if c in ".[":
            if escape:
                raise _bad("dangling backslash")
            _add(out, _unquote(path[i:j], ticks))
            return j + 1 if c == "." else j
    if quoted or escape:
        raise _bad("unbalanced backtick" if quoted else "dangling backslash")
    _add(out, _unquote(path[i:], ticks))
    return len(path)


def _unquote(text: str, ticks: int) -> str:
    if len(text) > 1 and text[0] == "`" and text[-1] == "`":
        text, ticks = text[1:-1], ticks - 2
    if not text:
        raise _bad("empty path component")
    if ticks:
        text = text.replace("``", "\x00").replace("`", "").replace("\x00", "`")
    return text
