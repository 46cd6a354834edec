"""
A path step through checked JSON text in a few regular-expression
matches: the grammar of a container's members, written as patterns, so
the members before the wanted one are skipped in C rather than one by one.

The patterns do not depend on the key (a key's places are found with
``str.find``), so many distinct keys cost no compiling; array indices up to
:data:`MAX_FAST_INDEX` have a pattern each.  A pattern cannot count
brackets, so a value nested deeper than :data:`NESTING` levels does not
match: the step then declines (None) and the caller takes the general
scanner.  Only plain keys (:data:`_PLAIN_KEY`: no quote, backslash,
escape, blank or non-ASCII character) are looked for.  The text must be
JSON (the caller checked it): the grammar is exact only for JSON.
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Optional, Tuple

__all__ = ["Hit", "member", "element", "last_element", "NESTING", "MAX_FAST_INDEX"]

#: The deepest nesting, below the container stepped through, that a pattern skips.
NESTING = 8
#: The largest array index that gets its own pattern.
MAX_FAST_INDEX = 64


def _possessive() -> bool:
    """Whether ``re`` has possessive quantifiers and atomic groups (Python 3.11+)."""
    try:
        re.compile(r"(?>a*+)")
    except re.error:
        return False
    return True


# Possessive where there is one way to match JSON: no backtracking into a value.
_P, _ATOM = ("+", "(?>") if _possessive() else ("", "(?:")
_WS = r"[ \t\n\r]*" + _P
_WS_CHARS = " \t\n\r"
_STR = r'"[^"\\]*%s(?:\\.[^"\\]*%s)*%s"' % (_P, _P, _P)
_RUN = r'[^"{}\[\]]*' + _P
_SCALAR = r"[-+.0-9A-Za-z]+" + _P
_PLAIN_KEY = re.compile(r"[A-Za-z0-9_$@#%&*+\-./;<=>?^|~!'()]+\Z")


def _containers(levels: int) -> str:
    """A balanced container, strings skipped whole, nesting at most ``levels``."""
    inner = _STR
    for _ in range(levels):
        inner = r"%s|[\[{]%s(?:(?:%s)%s)*%s[\]}]" % (_STR, _RUN, inner, _RUN, _P)
    return inner


_VALUE = "%s%s|%s)" % (_ATOM, _containers(NESTING), _SCALAR)

#: (key start, value start, value end, end of the previous value or -1)
Hit = Tuple[int, int, int, int]

_MEMBER = r"%s%s:%s%s%s" % (_STR, _WS, _WS, _VALUE, _WS)
#: Blanks, then the members followed by a comma, as many as there are (up to ``endpos``).
_MEMBERS = re.compile(r"%s(?:%s,%s)*%s" % (_WS, _MEMBER, _WS, _P))
#: One member, and its comma if there is one.
_ONE_MEMBER = re.compile(r"%s(?:,%s)?" % (_MEMBER, _WS))
_KEY_VALUE = re.compile(r"%s:%s(%s)" % (_WS, _WS, _VALUE))


@lru_cache(maxsize=MAX_FAST_INDEX + 1)
def _element_pattern(n: int) -> "re.Pattern[str]":
    return re.compile(r"\[%s(?:%s%s,%s){%d}(%s)" % (_WS, _VALUE, _WS, _WS, n, _VALUE))


_LAST = re.compile(r"\[%s(?:%s%s,%s)*%s(%s)%s\]" % (_WS, _VALUE, _WS, _WS, _P, _VALUE, _WS))


def _prev_end(s: str, begin: int) -> int:
    """The end of the value before the member at ``begin``, -1 if it is the first."""
    i = begin - 1
    while s[i] in _WS_CHARS:
        i -= 1
    if s[i] != ",":
        return -1  # the container's bracket
    i -= 1
    while s[i] in _WS_CHARS:
        i -= 1
    return i + 1


def _hit(s: str, m: "re.Match[str]", key: int, value: int) -> Hit:
    begin = m.start(key)
    return begin, m.start(value), m.end(value), _prev_end(s, begin)


_ABSENT = (False, (-1, -1, -1, -1))


@lru_cache(maxsize=4096)
def _plain(key: str) -> bool:
    return _PLAIN_KEY.match(key) is not None


def member(s: str, start: int, key: str) -> Optional[Tuple[bool, Hit]]:
    """
    The member ``key`` of the object at ``start``: (True, its Hit), or
    (False, ...) if the object has none; None if no pattern decides.

    Each place the text holds ``"key"`` is a member of this object if the
    members before it, matched as a run, end exactly there; a run that stops
    short stops at the member holding the place, which is then skipped whole.
    """
    if not _plain(key):
        return None
    quoted = '"%s"' % key
    pos = start + 1
    while True:
        q = s.find(quoted, pos)
        if q < 0:
            return _ABSENT  # a member's key would be in the text as it is
        p = _MEMBERS.match(s, pos, q).end()  # type: ignore[union-attr]
        if p == q:
            m = _KEY_VALUE.match(s, q + len(quoted))
            return None if m is None else (True, (q, m.start(1), m.end(1), _prev_end(s, q)))
        if s[p] == "}":
            return _ABSENT  # the object ends before that place
        m = _ONE_MEMBER.match(s, p)
        if m is None:
            return None  # nested deeper than the pattern
        pos = m.end()


def element(s: str, start: int, n: int) -> Optional[Hit]:
    """Element ``n`` (0 or more) of the array at ``start``; None if no pattern finds it."""
    if n > MAX_FAST_INDEX:
        return None
    m = _element_pattern(n).match(s, start)
    return None if m is None else _hit(s, m, 1, 1)


def last_element(s: str, start: int) -> Optional[Hit]:
    """The last element of the array at ``start``; None if no pattern finds it."""
    m = _LAST.match(s, start)
    return None if m is None else _hit(s, m, 1, 1)
