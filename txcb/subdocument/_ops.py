"""
One sub-document operation applied to JSON text, as subjson's
``Operation::op_exec`` does it (the order of its checks decides which error
a bad spec gets).  ``LOOKUPS[opcode](text, path)`` returns the result text
(``None`` when the operation returns none); ``MUTATIONS[opcode](text, path,
value, mkdir_p)`` returns the new text and the result text.  Failures raise
:class:`~txcb.subdocument._text.OpError`.
"""

from __future__ import annotations

import re
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from txcb.subdocument._const import MAX_DEPTH, MAX_PATH_COMPONENTS, Opcode, Status
from txcb.subdocument._text import (
    Found, OpError, depth_of, iter_members, kind_at, locate, next_start, parse_value, skip_ws)
from txcb.subdocument._path import Component

__all__ = ["LOOKUPS", "MUTATIONS"]

Path = Sequence[Component]
Lookup = Callable[[str, Path], Optional[str]]
Mutation = Callable[[str, Path, str, bool], Tuple[str, Optional[str]]]

_INT = re.compile(r"-?(?:0|[1-9][0-9]*)\Z")
_DELTA = re.compile(r"-?[1-9][0-9]*\Z")
_I64_MIN, _I64_MAX = -(1 << 63), (1 << 63) - 1


def _splice(s: str, start: int, end: int, text: str) -> str:
    return s[:start] + text + s[end:]


def _has_members(s: str, start: int) -> bool:
    return s[skip_ws(s, start + 1)] not in "]}"


def _parent_found(found: Found, path: Path) -> bool:
    return found.level == len(path) - 1


# -- values -----------------------------------------------------------------

def _decode(value: str, wrap: bool) -> Any:
    try:
        return parse_value("[%s]" % value if wrap else value)
    except (ValueError, RecursionError):
        raise OpError(Status.VALUE_CANTINSERT, "the value is not JSON")


def _check_depth(level: int, depth: int) -> None:
    """A value whose top lands at ``level`` (the root is 1) may not nest too deep."""
    if level - 1 + depth > MAX_DEPTH:
        raise OpError(Status.VALUE_ETOODEEP, "the value would nest deeper than %d"
                      % MAX_DEPTH)


def _dict_value(value: str, path: Path) -> None:
    _check_depth(len(path) + 1, depth_of(_decode(value, False)))


def _array_values(value: str, level: int) -> List[Any]:
    items = _decode(value, True)
    if not items:
        raise OpError(Status.VALUE_CANTINSERT, "no value to insert")
    _check_depth(level, max(depth_of(v) for v in items))
    return items


# -- lookups ----------------------------------------------------------------

def _match(s: str, path: Path) -> Found:
    found = locate(s, path)
    if not found.complete:
        raise OpError(Status.PATH_ENOENT, "the path does not exist")
    return found


def _get(s: str, path: Path) -> Optional[str]:
    found = _match(s, path)
    return s[found.start:found.end]


def _exists(s: str, path: Path) -> Optional[str]:
    _match(s, path)
    return None


def _get_count(s: str, path: Path) -> Optional[str]:
    found = _match(s, path)
    if kind_at(s, found.start) not in "{[":
        raise OpError(Status.PATH_MISMATCH, "get_count needs an array or an object")
    return str(sum(1 for _ in iter_members(s, found.start)))


LOOKUPS: Dict[int, Lookup] = {
    Opcode.GET: _get, Opcode.EXISTS: _exists, Opcode.GET_COUNT: _get_count,
}


# -- dictionary mutations ---------------------------------------------------

def _mkdir_p(s: str, found: Found, path: Path, inner: str) -> str:
    """Create the missing components below the deepest object found, then ``inner``."""
    missing = path[found.level:]
    if any(not isinstance(c, str) for c in missing):
        raise OpError(Status.PATH_ENOENT, "create_parents cannot create array elements")
    text = "".join('{"%s":' % c for c in missing[1:]) + inner + "}" * (len(missing) - 1)
    comma = "," if _has_members(s, found.start) else ""
    return _splice(s, found.end - 1, found.end - 1,
                   '%s"%s":%s' % (comma, missing[0], text))


def _add_key(s: str, found: Found, key: str, value: str) -> str:
    comma = "," if _has_members(s, found.start) else ""
    return _splice(s, found.end - 1, found.end - 1, '%s"%s":%s' % (comma, key, value))


def _store_dict(op: int, s: str, path: Path, value: str, mkdir_p: bool) -> str:
    if not path:
        raise OpError(Status.VALUE_CANTINSERT, "cannot replace the root this way")
    _dict_value(value, path)
    found = locate(s, path)
    if op != Opcode.REPLACE and isinstance(path[-1], int):
        raise OpError(Status.PATH_EINVAL, "a dictionary path cannot end in an index")
    if found.complete:
        if op == Opcode.DICT_ADD:
            raise OpError(Status.PATH_EEXISTS, "the path exists already")
        return _splice(s, found.start, found.end, value)
    if op == Opcode.REPLACE:
        raise OpError(Status.PATH_ENOENT, "nothing to replace")
    if _parent_found(found, path):
        return _add_key(s, found, str(path[-1]), value)
    if mkdir_p:
        return _mkdir_p(s, found, path, value)
    raise OpError(Status.PATH_ENOENT, "a parent of the path does not exist")


def _dict_add(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    return _store_dict(Opcode.DICT_ADD, s, path, value, mkdir_p), None


def _dict_upsert(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    return _store_dict(Opcode.DICT_UPSERT, s, path, value, mkdir_p), None


def _replace(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    return _store_dict(Opcode.REPLACE, s, path, value, False), None


def _remove(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    if not path:
        raise OpError(Status.VALUE_CANTINSERT, "cannot remove the root")
    found = _match(s, path)
    if found.prev_end >= 0:
        return _splice(s, found.prev_end, found.end, ""), None
    after = next_start(s, found)
    if after >= 0:
        return _splice(s, found.key_start, after, ""), None
    return _splice(s, found.key_start, found.end, ""), None


# -- array mutations --------------------------------------------------------

def _array(s: str, path: Path, mkdir_p: bool, value: str) -> Tuple[Found, Optional[str]]:
    """The array at ``path``, or the new text when create_parents made it."""
    found = locate(s, path)
    if not found.complete:
        if mkdir_p:
            return found, _mkdir_p(s, found, path, "[%s]" % value)
        raise OpError(Status.PATH_ENOENT, "the array does not exist")
    if kind_at(s, found.start) != "[":
        raise OpError(Status.PATH_MISMATCH, "the path is not an array")
    return found, None


def _push(s: str, found: Found, value: str, first: bool) -> str:
    if not _has_members(s, found.start):
        return _splice(s, found.start, found.end, "[%s]" % value)
    if first:
        at = skip_ws(s, found.start + 1)
        return _splice(s, at, at, value + ",")
    return _splice(s, found.end - 1, found.end - 1, "," + value)


def _push_last(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    _array_values(value, len(path) + 2)
    if not path:
        kind = kind_at(s, skip_ws(s, 0))
        if kind != "[":
            raise OpError(Status.PATH_MISMATCH if kind == "{" else Status.DOC_NOTJSON,
                          "the document is not an array")
    found, made = _array(s, path, mkdir_p, value)
    return (made if made is not None else _push(s, found, value, False)), None


def _push_first(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    _array_values(value, len(path) + 2)
    if len(path) == MAX_PATH_COMPONENTS:
        raise OpError(Status.PATH_E2BIG, "the path is too long to prepend to")
    found, made = _array(s, path, mkdir_p, value)
    return (made if made is not None else _push(s, found, value, True)), None


def _primitive(item: Any) -> bool:
    return not isinstance(item, (dict, list))


def _add_unique(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    items = _array_values(value, len(path) + 2)
    if len(items) != 1 or not _primitive(items[0]):
        raise OpError(Status.VALUE_CANTINSERT, "array_addunique takes one primitive")
    found, made = _array(s, path, mkdir_p, value)
    if made is not None:
        return made, None
    raw = value.strip(" \t\n\r")
    for _begin, start, end, _key in iter_members(s, found.start):
        if kind_at(s, start) in "{[":
            raise OpError(Status.PATH_MISMATCH, "the array holds non-primitives")
        if s[start:end] == raw:
            raise OpError(Status.PATH_EEXISTS, "the value is in the array already")
    return _push(s, found, value, False), None


def _insert(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    _array_values(value, len(path) + 1)
    if not path or not isinstance(path[-1], int) or path[-1] < 0:
        raise OpError(Status.PATH_EINVAL, "array_insert needs a path ending in [n], n >= 0")
    found = locate(s, path)
    if found.complete:
        return _splice(s, found.key_start, found.key_start, value + ","), None
    if _parent_found(found, path) and kind_at(s, found.start) == "[":
        size = sum(1 for _ in iter_members(s, found.start))
        if path[-1] == size:
            return _push(s, found, value, False), None
    raise OpError(Status.PATH_ENOENT, "no element at that index")


# -- counters ---------------------------------------------------------------

def _delta(value: str) -> int:
    if not _DELTA.match(value):
        raise OpError(Status.DELTA_EINVAL, "the delta is not a non-zero integer")
    delta = int(value)
    if not _I64_MIN <= delta <= _I64_MAX:
        raise OpError(Status.DELTA_EINVAL, "the delta is outside int64")
    return delta


def _counter(s: str, path: Path, value: str, mkdir_p: bool) -> Tuple[str, Optional[str]]:
    delta = _delta(value)
    found = locate(s, path)
    if not found.complete:
        return _new_counter(s, found, path, str(delta), mkdir_p)
    raw = s[found.start:found.end]
    if not _INT.match(raw):
        raise OpError(Status.PATH_MISMATCH, "the path is not an integer")
    number = int(raw)
    if not _I64_MIN <= number <= _I64_MAX:
        raise OpError(Status.NUM_ERANGE, "the number is outside int64")
    number += delta
    if not _I64_MIN <= number <= _I64_MAX:
        # subjson's DELTA_OVERFLOW, which memcached reports as VALUE_CANTINSERT.
        raise OpError(Status.VALUE_CANTINSERT, "the counter would overflow int64")
    text = str(number)
    return _splice(s, found.start, found.end, text), text


def _new_counter(s: str, found: Found, path: Path, text: str,
                 mkdir_p: bool) -> Tuple[str, Optional[str]]:
    if not mkdir_p and not _parent_found(found, path) or kind_at(s, found.start) != "{":
        raise OpError(Status.PATH_ENOENT, "the counter's parent does not exist")
    if isinstance(path[-1], int):
        raise OpError(Status.PATH_EINVAL, "a new counter needs a dictionary key")
    if _parent_found(found, path):
        return _add_key(s, found, path[-1], text), text
    return _mkdir_p(s, found, path, text), text


MUTATIONS: Dict[int, Mutation] = {
    Opcode.DICT_ADD: _dict_add, Opcode.DICT_UPSERT: _dict_upsert, Opcode.DELETE: _remove,
    Opcode.REPLACE: _replace, Opcode.ARRAY_PUSH_LAST: _push_last,
    Opcode.ARRAY_PUSH_FIRST: _push_first, Opcode.ARRAY_INSERT: _insert,
    Opcode.ARRAY_ADD_UNIQUE: _add_unique, Opcode.COUNTER: _counter,
}
