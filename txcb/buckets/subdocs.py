"""
Sub-document operations of the embedded (and so the persistent) bucket:
``lookup_in`` / ``mutate_in`` over the engine of :mod:`txcb.subdocument`.

The engine is pure; this is the bucket's side of it.  A lookup reads the
item (body, xattrs, CAS, expiry, flags) and hands it to ``SD.lookup``; a
mutation checks the lock and the CAS as every mutation does, runs
``SD.mutate`` (all or nothing: nothing is stored if it raises), then stores
the new body and xattrs with one new CAS and one seqno, expanding the
``${Mutation...}`` macros with them.  Xattrs are stored in the item itself
(:func:`txcb.buckets.items.make_xitem`), so the persistent bucket writes and
warms them up with the item.

Deletion is Couchbase's: ``remove``, ``remove_fulldoc`` and expiry drop the
body and the user xattrs; system xattrs (``_`` names), if any, stay on a
tombstone (:data:`txcb.buckets.items.TOMBSTONE`, kept apart from the live
items, persisted as they are) that only ``lookup_in(access_deleted=True)``
reads, until a new document of that key replaces it or, past
:data:`txcb.buckets.table.MAX_TOMBSTONES` of them, it is the oldest and is
purged (Couchbase purges them by age).  ``$document`` shows the bucket's CAS, expiry, flags and
body; its ``seqno`` is 0 (items do not keep their seqno) and
``vbucket_uuid`` 0 (one bucket, no vbuckets).
"""

from __future__ import annotations

from math import ceil
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Sequence, Tuple

from twisted.internet.defer import Deferred

import txcb.subdocument as SD
from txcb.buckets.items import (
    DELETED, LOCKED_CAS, cas_of, decode_xattrs, encode_xattrs, header, xattrs_of)
from txcb.errors import (
    ArgumentError, CouchbaseError, KeyExistsError, NotFoundError, TemporaryFailError)
from txcb.formats import FMT_BYTES, FMT_JSON
from txcb.validation import check_cas, check_ttl, expiry_time

__all__ = ["SubdocMixin"]

_NO_XATTRS: Dict[str, bytes] = {}


def _checked(specs: Sequence[Any], key: Any) -> Sequence[Any]:
    for spec in specs:
        if not isinstance(spec, SD.Spec):
            raise ArgumentError("sub-document specs are built by txcb.subdocument "
                                "(SD.get, SD.upsert...), not %r" % (spec,), key=key)
    return specs


def _split(item: Optional[bytes]) -> Tuple[Optional[bytes], Dict[str, bytes], int, float, int]:
    """``(body, xattrs, cas, expiry, flags)`` of a stored item (None: missing)."""
    if item is None:
        return None, _NO_XATTRS, 0, 0.0, 0
    cas, exp, flags, off = header(item)
    blob = xattrs_of(item)
    return item[off:], decode_xattrs(blob) if blob else _NO_XATTRS, cas, exp, flags


def _doc_flags(upsert_doc: bool, insert_doc: bool) -> int:
    """The engine's document flags (both: the engine refuses the request)."""
    return (SD.DocFlag.MKDOC if upsert_doc else 0) | (SD.DocFlag.ADD if insert_doc else 0)


def _keyed(e: CouchbaseError, key: Any) -> CouchbaseError:
    """The engine's error, naming the key (the engine does not know it)."""
    if e.key is None:
        e.key = key
    return e


class SubdocMixin:
    """lookup_in / mutate_in for :class:`~txcb.buckets.embedded.EmbeddedBucket`."""

    if TYPE_CHECKING:
        # What the bucket (an ItemTable) provides.
        clock: Any
        max_value_size: int
        _gated: bool
        _seqno: int
        _locks: Dict[bytes, float]
        _tombstones: Dict[bytes, bytes]

        def _begin(self, op: str, key: Any) -> bytes: ...
        def _lookup(self, k: bytes, now: float) -> Optional[bytes]: ...
        def _is_locked(self, k: bytes, now: float) -> bool: ...
        def _check_mutation(self, key: Any) -> None: ...
        def _next_cas(self) -> int: ...
        def _put(self, k: bytes, old: Optional[bytes], cas: int, exp: float, flags: int,
                 data: bytes, xattrs: Optional[bytes] = None) -> int: ...
        def _remove_item(self, k: bytes, item: bytes, why: int,
                         keep: Optional[bytes] = None) -> int: ...
        def _mutate(self, key: Any, persist_to: int, replicate_to: int,
                    call: Callable[..., Any], *args: Any) -> Deferred: ...
        def _answer(self, key: Any, call: Callable[..., Any], *args: Any) -> Deferred: ...

    # -- IBucket --------------------------------------------------------------

    def lookup_in(self, key: Any, *specs: Any, access_deleted: bool = False) -> Deferred:
        return self._answer(key, self._lookup_in, key, specs, access_deleted)

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, preserve_expiry: bool = False) -> Deferred:
        """The durable mutation path of every mutation (``_mutate``), made by _mutate_in."""
        return self._mutate(key, persist_to, replicate_to, self._mutate_in, key, specs, cas,
                            ttl, upsert_doc, insert_doc, preserve_expiry)

    # -- ISyncBucket ------------------------------------------------------------

    def _mutable(self, k: bytes, item: bytes, cas: int, now: float, key: Any) -> bool:
        """
        Refuse a locked item without the lock's cas, or a cas mismatch, as
        every mutation does; returns whether the item is locked (the mutation,
        once made, ends the lock: a failed one keeps it).
        """
        item_cas = cas_of(item)
        if self._locks and self._is_locked(k, now):
            if cas != item_cas:
                raise TemporaryFailError("the key is locked", key=key)
            return True
        if cas and cas != item_cas:
            raise KeyExistsError("CAS mismatch", key=key)
        return False

    def _meta(self, cas: int, exp: float, flags: int, now: float) -> SD.DocumentMeta:
        return SD.DocumentMeta(cas=cas, exptime=ceil(exp) if exp else 0, flags=flags,
                               hlc_now=int(now))

    def lookup_in_sync(self, key: Any, *specs: Any, access_deleted: bool = False
                       ) -> SD.SubdocResult:
        """:meth:`lookup_in` without the Deferred."""
        return self._lookup_in(key, specs, access_deleted)

    def _lookup_in(self, key: Any, specs: Sequence[Any], access_deleted: bool
                   ) -> SD.SubdocResult:
        k = self._begin("lookup_in", key)
        _checked(specs, key)
        now = self.clock.seconds()
        item = self._lookup(k, now)
        body, xattrs, cas, exp, flags = _split(item)
        meta = self._meta(cas, exp, flags, now)
        if item is None:
            tomb = self._tombstones.get(k) if access_deleted else None
            if tomb is not None:
                body, xattrs, cas = b"", decode_xattrs(xattrs_of(tomb)), cas_of(tomb)
                meta = SD.DocumentMeta(cas=cas, deleted=True, hlc_now=int(now))
        elif self._locks and self._is_locked(k, now):
            cas = LOCKED_CAS
            meta = meta._replace(cas=cas)
        doc_flags = SD.DocFlag.ACCESS_DELETED if access_deleted else 0
        try:
            found = SD.lookup(body, xattrs, specs, meta, doc_flags)
        except CouchbaseError as e:
            raise _keyed(e, key)
        return SD.SubdocResult.of_lookup(key, cas, specs, found)

    def mutate_in_sync(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0,
                       upsert_doc: bool = False, insert_doc: bool = False,
                       preserve_expiry: bool = False) -> SD.SubdocResult:
        """:meth:`mutate_in` without the Deferred (and without durability)."""
        return self._mutate_in(key, specs, cas, ttl, upsert_doc, insert_doc, preserve_expiry)

    def _mutate_in(self, key: Any, specs: Sequence[Any], cas: int, ttl: int,
                   upsert_doc: bool, insert_doc: bool, preserve_expiry: bool
                   ) -> SD.SubdocResult:
        k = self._begin("mutate_in", key)
        if self._gated:
            self._check_mutation(key)
        _checked(specs, key)
        if cas:
            check_cas(cas, key)
        if ttl:
            check_ttl(ttl, key)
        doc_flags = _doc_flags(upsert_doc, insert_doc)
        now = self.clock.seconds()
        old = self._lookup(k, now)
        if old is not None:
            self._mutable(k, old, cas, now, key)  # (the mutation, once made, ends a lock)
        if old is None and cas:
            raise NotFoundError("no such key (cas given)", key=key)
        body, xattrs, old_cas, exp, flags = _split(old)
        try:
            done = SD.mutate(body, xattrs, specs, self._meta(old_cas, exp, flags, now),
                             doc_flags, cas, self.max_value_size)
        except CouchbaseError as e:
            raise _keyed(e, key)
        if not (preserve_expiry and old is not None):
            exp = expiry_time(ttl, now) if ttl else 0.0
        if old is None:
            flags = FMT_JSON if done.is_json else FMT_BYTES
        new_cas = self._next_cas()
        seqno = self._store_mutation(k, old, done, new_cas, exp, flags)
        return SD.SubdocResult.of_mutation(key, new_cas, specs, done, (0, seqno), seqno)

    def _store_mutation(self, k: bytes, old: Optional[bytes], done: SD.Mutation,
                        cas: int, exp: float, flags: int) -> int:
        """Store what the engine made, with one seqno (returned)."""
        seqno = self._seqno + 1  # the one _put / _remove_item hands out
        xattrs = done.finish(cas, seqno)
        if done.body is None:
            if old is None:
                return self._seqno
            kept = {n: v for n, v in xattrs.items() if n[:1] == "_"}
            return self._remove_item(k, old, DELETED, encode_xattrs(kept))
        return self._put(k, old, cas, exp, flags, done.body,
                         encode_xattrs(xattrs) if xattrs else b"")
