"""
Extended attributes as kv_engine's sub-document code sees them.

The xattrs of a document are a mapping of key to raw JSON value; specs with
the XATTR flag operate on them as one JSON object ``{"key":value,...}``.
Keys starting with ``$`` are virtual (``$document``, ``$XTOC``,
``$vbucket``), read-only and formatted here as kv_engine formats them
(``daemon/subdocument_context.cc``).  Macros (``${Mutation.CAS}``...) are
written as unique placeholders and replaced once the new CAS and seqno are
known.
"""

from __future__ import annotations

import json
import random
import struct
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence

from txcb.subdocument._const import MAX_XATTR_KEY_LEN
from txcb.subdocument._text import iter_members

try:  # an optional C implementation
    from crc32c import crc32c as _fast_crc32c  # type: ignore[import-not-found]
except ImportError:  # pragma: no cover - depends on the environment
    _fast_crc32c = None

__all__ = ["DocumentMeta", "crc32c", "xattr_key", "join_xattrs", "split_xattrs",
           "document_vattr", "virtual_document", "MUTATION_MACROS", "virtual_macro",
           "Placeholders", "macro_text"]

#: The macro names a spec's value may be (with their quotes, as on the wire).
MUTATION_MACROS = ('"${Mutation.CAS}"', '"${Mutation.seqno}"',
                   '"${Mutation.value_crc32c}"')


class DocumentMeta(NamedTuple):
    """
    What a bucket knows about a document besides its body and xattrs: what
    ``$document`` shows and ``${$document...}`` expands to.  ``datatype``
    containing ``"json"`` is the bucket's word that the body is JSON (it
    checked when it stored it, as memcached's datatype bit): the engine then
    skips its own check.
    """
    cas: int = 0
    exptime: int = 0          # absolute Unix time, 0 for none
    flags: int = 0            # the user flags
    seqno: int = 0
    deleted: bool = False     # a tombstone (only system xattrs remain)
    revid: int = 0
    vbucket_uuid: int = 0
    datatype: Optional[Sequence[str]] = None   # None: worked out from the body
    last_modified: Optional[int] = None        # seconds, when the CAS is a clock
    hlc_now: Optional[int] = None              # seconds, for $vbucket.HLC


def _crc_table() -> List[int]:
    table = []
    for n in range(256):
        for _ in range(8):
            n = (n >> 1) ^ 0x82F63B78 if n & 1 else n >> 1
        table.append(n)
    return table


_TABLE = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli), as ``${Mutation.value_crc32c}`` uses."""
    if _fast_crc32c is not None:
        return int(_fast_crc32c(data))
    crc, table = 0xFFFFFFFF, _TABLE
    for byte in data:
        crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def xattr_key(path: str) -> Optional[str]:
    """The xattr key a path starts with, or None if it is not a valid one."""
    cut = min((i for i in (path.find("."), path.find("[")) if i >= 0), default=len(path))
    key = path[:cut]
    if not key or "\x00" in path or _surrogates(key) or \
            len(key.encode("utf-8")) >= MAX_XATTR_KEY_LEN:
        return None
    first = key[0]
    if first in "_$":
        return key if len(key) > 1 else None
    if first < " " or first == "\x7f" or (first.isascii() and not first.isalnum()
                                          and first != " "):
        return None  # C's ispunct() / iscntrl()
    return key


def _surrogates(text: str) -> bool:
    """Bytes that were not UTF-8 (decoded with surrogateescape)."""
    return any("\udc80" <= c <= "\udcff" for c in text)


def join_xattrs(xattrs: Mapping[str, bytes]) -> str:
    """The xattrs as one JSON object (keys are raw JSON string text)."""
    return "{%s}" % ",".join('"%s":%s' % (k, v.decode("utf-8")) for k, v in xattrs.items())


def split_xattrs(text: str) -> Dict[str, bytes]:
    """Back from one JSON object to the mapping, sorted as kv_engine stores it."""
    out = {key: text[start:end].encode("utf-8")
           for _b, start, end, key in iter_members(text, 0) if key is not None}
    return dict(sorted(out.items()))


def _hex64(n: int) -> str:
    return "0x%016x" % n


def _fields(meta: DocumentMeta, body: bytes, is_json: bool, has_xattrs: bool) -> Dict:
    datatype = list(meta.datatype) if meta.datatype is not None else (
        (["json"] if is_json else []) + (["xattr"] if has_xattrs else []) or ["raw"])
    doc = {"CAS": _hex64(meta.cas), "vbucket_uuid": _hex64(meta.vbucket_uuid),
           "seqno": _hex64(meta.seqno), "revid": str(meta.revid),
           "exptime": meta.exptime, "flags": meta.flags, "value_bytes": len(body),
           "datatype": datatype, "deleted": bool(meta.deleted),
           "value_crc32c": "0x%08x" % crc32c(body)}
    if meta.last_modified is not None:
        doc["last_modified"] = str(meta.last_modified)
    return doc


def document_vattr(meta: DocumentMeta, body: bytes, is_json: bool, has_xattrs: bool,
                   wrapped: bool = True) -> str:
    """``$document`` as JSON text (keys sorted: kv_engine builds it with nlohmann)."""
    doc = _fields(meta, body, is_json, has_xattrs)
    return json.dumps({"$document": doc} if wrapped else doc, sort_keys=True,
                      separators=(",", ":"))


def virtual_document(key: str, meta: DocumentMeta, body: bytes, is_json: bool,
                     xattrs: Mapping[str, bytes]) -> Optional[str]:
    """The JSON a lookup of virtual xattr ``key`` reads, None if unknown."""
    if key == "$document":
        return document_vattr(meta, body, is_json, bool(xattrs))
    if key == "$XTOC":
        return json.dumps({"$XTOC": [json.loads('"%s"' % k) for k in xattrs]},
                          separators=(",", ":"))
    if key == "$vbucket" and meta.hlc_now is not None:
        return json.dumps({"$vbucket": {"HLC": {"now": str(meta.hlc_now), "mode": "real"}}},
                          separators=(",", ":"))
    return None


def virtual_macro(value: str, meta: DocumentMeta, body: bytes, is_json: bool,
                  has_xattrs: bool) -> Optional[str]:
    """What ``"${$document...}"`` expands to (from the document as it was)."""
    if value == '"${$document}"':
        return document_vattr(meta, body, is_json, has_xattrs, wrapped=False)
    if not value.startswith('"${$document.') or not value.endswith('}"'):
        return None
    name = value[len('"${$document.'):-len('}"')]
    fields = _fields(meta, body, is_json, has_xattrs)
    if name not in fields or name == "value_crc32c":
        return None
    return json.dumps(fields[name], separators=(",", ":"))


class Placeholders:
    """
    Unique stand-ins for the mutation macros (kv_engine's padded macros),
    replaced by :meth:`expand` once the new CAS and seqno are known.
    """

    def __init__(self, avoid: str) -> None:
        self.avoid = avoid
        self.by_macro: Dict[str, str] = {}

    def get(self, macro: str) -> str:
        if macro not in self.by_macro:
            width = 8 if macro.endswith('crc32c}"') else 16
            while True:
                text = '"0x%0*x"' % (width, random.getrandbits(width * 4))
                if text not in self.avoid and text not in self.by_macro.values():
                    break
            self.by_macro[macro] = text
        return self.by_macro[macro]

    def expand(self, value: bytes, cas: int, seqno: int, body: bytes) -> bytes:
        text = value.decode("utf-8")
        for macro, stand_in in self.by_macro.items():
            text = text.replace(stand_in, macro_text(macro, cas, seqno, body))
        return text.encode("utf-8")


def macro_text(macro: str, cas: int, seqno: int, body: bytes) -> str:
    """What a mutation macro expands to, as JSON text."""
    if macro == MUTATION_MACROS[0]:
        # kv_engine formats htonll(cas): the CAS's bytes in network order.
        return '"%s"' % _hex64(struct.unpack("<Q", struct.pack(">Q", cas))[0])
    if macro == MUTATION_MACROS[1]:
        return '"%s"' % _hex64(seqno)
    return '"0x%08x"' % crc32c(body)
