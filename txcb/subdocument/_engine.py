"""
Running a checked spec list against one document: lookups spec by spec
(each with its own status), mutations all or nothing.  Pure: the inputs
are never changed, the caller stores what :func:`mutate` returns.
"""

from __future__ import annotations

from typing import Any, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from txcb.subdocument._const import MAX_DEPTH, DocFlag, Opcode, PathFlag, Status, SubdocError
from txcb.subdocument._text import (
    MALFORMED, OpError, check_document, kind_at, skip_ws, too_deep)
from txcb.subdocument._ops import LOOKUPS, MUTATIONS
from txcb.subdocument._path import PathError, parse
from txcb.subdocument._spec import Spec, check_request
from txcb.subdocument._xattr import (
    MUTATION_MACROS, DocumentMeta, Placeholders, join_xattrs, macro_text, split_xattrs,
    virtual_document, virtual_macro, xattr_key)
from txcb.errors import KeyExistsError, NotFoundError, TooBigError
from txcb.limits import DEFAULT_MAX_VALUE_SIZE

__all__ = ["SpecResult", "Lookup", "Mutation", "lookup", "mutate"]


class SpecResult(NamedTuple):
    """One spec's outcome: its status and the raw JSON it returned, if any."""
    status: int
    value: Optional[bytes] = None


class Lookup(NamedTuple):
    """A lookup's outcome: the overall status and one result per spec."""
    status: int
    results: List[SpecResult]


class _Body:
    """
    The document body while specs run: bytes, and its text once needed.
    Its checks come in memcached's order: JSON at all (the datatype), then
    -- once the path parsed -- not too deep.
    """

    def __init__(self, raw: bytes, trusted: bool = False) -> None:
        self.raw, self.trusted = raw, trusted
        self._text: Optional[str] = None
        self._error: Optional[OpError] = None
        self._decoded: Any = None
        self._deep: Optional[bool] = None

    def _check(self) -> None:
        if self._text is None and self._error is None:
            try:
                text = self.raw.decode("utf-8")
                self._decoded = check_document(text, self.trusted)
                self._text = text
            except UnicodeDecodeError:
                self._error = OpError(Status.DOC_NOTJSON, "the document is not UTF-8")
            except OpError as e:
                self._error = e

    def is_json(self) -> bool:
        self._check()
        return self._error is None

    def text(self) -> str:
        """The body as JSON text with a container at its root, else DOC_NOTJSON."""
        self._check()
        if self._error is not None:
            raise OpError(self._error.status, str(self._error))
        text = self._text or ""
        if kind_at(text, skip_ws(text, 0)) not in "{[":
            # subjson (jsonsl) parses only documents that are containers
            raise OpError(Status.DOC_NOTJSON, "the document is not an object or an array")
        return text

    def check_depth(self) -> None:
        if self._deep is None:
            self._deep = too_deep(self.text(), self._decoded)
            self._decoded = None
        if self._deep:
            raise OpError(Status.DOC_E2DEEP, "the document nests deeper than %d" % MAX_DEPTH)

    def set_text(self, text: str) -> None:
        self._text, self._error, self.raw = text, None, text.encode("utf-8")
        self._deep = False  # the operations keep within the limit

    def set_raw(self, raw: bytes) -> None:
        self.raw, self._text, self._error, self.trusted = raw, None, None, False
        self._deep = self._decoded = None


def _trusted(meta: DocumentMeta) -> bool:
    """The bucket says the body is JSON (memcached's datatype): no need to check."""
    return meta.datatype is not None and "json" in meta.datatype


def _path(spec: Spec) -> Tuple:
    try:
        return parse(spec.path)
    except PathError as e:
        raise OpError(e.status, str(e))


def _lookup_one(spec: Spec, body: _Body, xattrs: Mapping[str, bytes],
                meta: DocumentMeta) -> SpecResult:
    try:
        if spec.opcode == Opcode.GET_DOC:
            if not body.raw:
                raise OpError(Status.PATH_ENOENT, "the document has no body")
            return SpecResult(Status.SUCCESS, body.raw)
        if spec.xattr:
            text, path = _xattr_text(spec, body, xattrs, meta), _path(spec)
        else:
            text, path = body.text(), _path(spec)
            body.check_depth()
        value = LOOKUPS[spec.opcode](text, path)
    except OpError as e:
        return SpecResult(e.status)
    except MALFORMED:  # a trusted body that was not JSON after all
        return SpecResult(Status.DOC_NOTJSON)
    return SpecResult(Status.SUCCESS, None if value is None else value.encode("utf-8"))


def _xattr_text(spec: Spec, body: _Body, xattrs: Mapping[str, bytes],
                meta: DocumentMeta) -> str:
    key = xattr_key(spec.path) or ""
    if not key.startswith("$"):
        return join_xattrs(xattrs)
    text = virtual_document(key, meta, body.raw, body.is_json(), xattrs)
    if text is None:
        raise OpError(Status.XATTR_UNKNOWN_VATTR, "unknown virtual xattr %s" % key)
    return text


def lookup(doc: Optional[bytes], xattrs: Mapping[str, bytes], specs: Sequence[Spec],
           meta: DocumentMeta = DocumentMeta(), doc_flags: int = 0) -> Lookup:
    """
    Run lookup specs on a document (``doc`` None: it does not exist).

    Raises SubdocError if the request is refused, NotFoundError if there is
    no document (or only a tombstone, without ACCESS_DELETED).
    """
    check_request(specs, False, doc_flags)
    if doc is None and not meta.deleted or meta.deleted and not doc_flags & DocFlag.ACCESS_DELETED:
        raise NotFoundError("no such document")
    body = _Body(doc or b"", _trusted(meta))
    results = [_lookup_one(spec, body, xattrs, meta) for spec in specs]
    failed = any(r.status != Status.SUCCESS for r in results)
    if meta.deleted:
        status = Status.MULTI_PATH_FAILURE_DELETED if failed else Status.SUCCESS_DELETED
    else:
        status = Status.MULTI_PATH_FAILURE if failed else Status.SUCCESS
    return Lookup(status, results)


class Mutation:
    """
    A successful mutate_in, to be stored by the bucket.

    :ivar body: the new body; None when a whole-document delete removed it.
    :ivar xattrs: the new xattrs, macros still as placeholders: store
        :meth:`finish`'s xattrs once the new CAS and seqno are known.
    :ivar results: one per spec (counters carry their new value).
    :ivar is_json: the body is JSON (memcached's datatype bit for it).
    :ivar created: the document did not exist (MKDOC / ADD made it).
    :ivar deleted: the document is now a tombstone (keep it only if system
        xattrs remain) or stayed one (ACCESS_DELETED).
    """

    __slots__ = ("body", "xattrs", "results", "is_json", "created", "deleted", "_macros",
                 "_keys", "_used")

    def __init__(self, body: Optional[bytes], xattrs: Dict[str, bytes],
                 results: List[SpecResult], is_json: bool, created: bool, deleted: bool,
                 run: "_Run") -> None:
        self.body, self.xattrs, self.results, self.is_json = body, xattrs, results, is_json
        self.created, self.deleted = created, deleted
        self._macros, self._keys, self._used = run.macros, run.expand_keys, run.used_macros

    @property
    def needs_finish(self) -> bool:
        return bool(self._keys)

    def finish(self, cas: int, seqno: int) -> Dict[str, bytes]:
        """The xattrs to store, with ``${Mutation...}`` macros expanded."""
        if not self._keys or self._macros is None:
            return self.xattrs
        out = dict(self.xattrs)
        for key in self._keys:
            if key in out:
                out[key] = self._macros.expand(out[key], cas, seqno, self.body or b"")
        return out

    def macro_values(self, cas: int, seqno: int) -> Dict[int, bytes]:
        """{spec index: what its ``${Mutation...}`` macro became} (not on the wire)."""
        return {n: macro_text(macro, cas, seqno, self.body or b"").encode()
                for n, macro in self._used}


def _root_template(specs: Sequence[Spec]) -> bytes:
    """The empty document MKDOC / ADD starts from (subjson's get_root_type)."""
    for spec in specs:
        if spec.opcode in (Opcode.SET_DOC, Opcode.DELETE_DOC):
            continue
        path = spec.path.lstrip()
        if not path:
            pushes = (Opcode.ARRAY_PUSH_LAST, Opcode.ARRAY_PUSH_FIRST, Opcode.ARRAY_ADD_UNIQUE)
            return b"[]" if spec.opcode in pushes else b""
        return b"[]" if path[0] == "[" else b"{}"
    return b""


class _Run:
    """The state of one mutate_in while its specs run."""

    def __init__(self, body: bytes, xattrs: Mapping[str, bytes], specs: Sequence[Spec],
                 meta: DocumentMeta, mkdir_p: bool) -> None:
        self.orig, self.meta, self.mkdir_p = body, meta, mkdir_p
        self.body = _Body(body, _trusted(meta))
        self.orig_xattrs = xattrs
        self.xtext: Optional[str] = None
        self.deleted_body = False
        self.macros: Optional[Placeholders] = None
        self.expand_keys: List[str] = []
        self.used_macros: List[Tuple[int, str]] = []
        self.index = 0
        self.specs = specs

    def value(self, spec: Spec) -> str:
        try:
            text = spec.value.decode("utf-8")
        except UnicodeDecodeError:
            raise OpError(Status.VALUE_CANTINSERT, "the value is not UTF-8")
        if not spec.flags & PathFlag.EXPAND_MACROS:
            return text
        self.expand_keys.append(xattr_key(spec.path) or "")
        if text in MUTATION_MACROS:
            self.used_macros.append((self.index, text))
            if self.macros is None:
                avoid = join_xattrs(self.orig_xattrs) + "".join(
                    s.value.decode("utf-8", "replace") for s in self.specs)
                self.macros = Placeholders(avoid)
            return self.macros.get(text)
        body_json = _Body(self.orig).is_json()
        expanded = virtual_macro(text, self.meta, self.orig, body_json, bool(self.orig_xattrs))
        if expanded is None:
            raise OpError(Status.XATTR_UNKNOWN_VATTR_MACRO, "unknown macro %s" % text)
        return expanded

    def run(self, spec: Spec) -> Optional[str]:
        if spec.opcode == Opcode.SET_DOC:
            self.body.set_raw(spec.value)
            return None
        if spec.opcode == Opcode.DELETE_DOC:
            self.deleted_body = True
            self.body.set_raw(b"")
            return None
        if spec.xattr:
            value = self.value(spec)
            if self.xtext is None:
                self.xtext = join_xattrs(self.orig_xattrs)
            self.xtext, out = MUTATIONS[spec.opcode](self.xtext, _path(spec), value,
                                                     self.mkdir_p)
            return out
        text, path = self.body.text(), _path(spec)  # memcached's order of checks
        self.body.check_depth()
        text, out = MUTATIONS[spec.opcode](text, path, self.value(spec), self.mkdir_p)
        self.body.set_text(text)
        return out

    def xattrs(self) -> Dict[str, bytes]:
        out = dict(self.orig_xattrs) if self.xtext is None else split_xattrs(self.xtext)
        if self.deleted_body:
            out = {k: v for k, v in out.items() if k.startswith("_")}
        return out


def _start(doc: Optional[bytes], meta: DocumentMeta, specs: Sequence[Spec],
           doc_flags: int) -> Tuple[bytes, bool, bool]:
    """(body to start from, created, tombstone) by the document flags."""
    if meta.deleted and doc_flags & DocFlag.ACCESS_DELETED:
        return doc or b"", False, True
    if doc is not None and not meta.deleted:
        if doc_flags & DocFlag.ADD:
            raise KeyExistsError("the document exists (insert_doc)")
        return doc, False, False
    if not doc_flags & (DocFlag.MKDOC | DocFlag.ADD):
        raise NotFoundError("no such document")
    return _root_template(specs), True, False


def _size(body: Optional[bytes], xattrs: Mapping[str, bytes]) -> int:
    user = sum(len(k) + len(v) for k, v in xattrs.items() if not k.startswith("_"))
    return len(body or b"") + user


def mutate(doc: Optional[bytes], xattrs: Mapping[str, bytes], specs: Sequence[Spec],
           meta: DocumentMeta = DocumentMeta(), doc_flags: int = 0, cas: int = 0,
           max_size: int = DEFAULT_MAX_VALUE_SIZE) -> Mutation:
    """
    Run mutation specs on a document, all or nothing (``doc`` None: it does
    not exist).  Raises SubdocError for a refused request (``index`` None)
    or the first spec that fails (its ``index``), NotFoundError /
    KeyExistsError by the document flags, TooBigError past ``max_size``.
    """
    check_request(specs, True, doc_flags, cas)
    body, created, tombstone = _start(doc, meta, specs, doc_flags)
    if created:
        xattrs = {}  # a new document (a tombstone's xattrs are not carried over)
    mkdir_p = bool(doc_flags & (DocFlag.MKDOC | DocFlag.ADD))
    run = _Run(body, xattrs, specs, meta, mkdir_p)
    results = []
    for n, spec in enumerate(specs):
        try:
            mkdir = mkdir_p or bool(spec.flags & PathFlag.MKDIR_P)
            run.mkdir_p, run.index = mkdir, n
            out = run.run(spec)
        except OpError as e:
            raise SubdocError(e.status, str(e), index=n)
        except MALFORMED:  # a trusted body that was not JSON after all
            raise SubdocError(Status.DOC_NOTJSON, "the document is not JSON", index=n)
        results.append(SpecResult(Status.SUCCESS, None if out is None else out.encode()))
    new_xattrs = run.xattrs()
    new_body = None if run.deleted_body else run.body.raw
    if tombstone and new_body:
        raise SubdocError(Status.DELETED_DOCUMENT_CANT_HAVE_VALUE,
                          "a deleted document cannot get a body")
    if _size(new_body, new_xattrs) > max_size:
        raise TooBigError("the document would exceed %d bytes" % max_size)
    is_json = new_body is not None and run.body.is_json()
    return Mutation(new_body, new_xattrs, results, is_json, created,
                    tombstone or run.deleted_body, run)
