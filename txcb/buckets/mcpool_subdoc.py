"""
The memcached pool's sub-document calls, ``lookup_in`` and ``mutate_in``,
over plain memcached commands: memcached has no sub-document engine, so the
pool reads the whole item (GET), runs :mod:`txcb.subdocument` on it and
writes it back with a CAS REPLACE (ADD for a document the call creates,
DELETE with the CAS for a whole-document delete).

* A CAS conflict (another client wrote the item between the GET and the
  write) makes the call start again from the GET, at most
  :attr:`SubdocOperations.subdoc_attempts` times in all; after that it
  errbacks TemporaryFailError.  A call given its own ``cas`` is not
  retried: a conflict is then the caller's KeyExistsError, as for
  ``replace``.  ``insert_doc`` is never retried either: an item that
  appears is its KeyExistsError.
* Extended attributes are refused: memcached stores one value per key and
  the pool keeps it exactly as other memcached clients read it, so an
  ``xattr=True`` spec (``$document`` included) errbacks NotSupportedError
  before anything is sent.  ``preserve_expiry`` is refused the same way
  (memcached does not tell a GET the item's expiry).  A mutation's ``ttl``
  is the item's new expiry, 0 none, as for ``replace``.  There are no
  tombstones: ``access_deleted`` changes nothing.
* The item keeps its flags; a document the call creates is stored as
  FMT_JSON (FMT_BYTES if a whole-document write made it something else).
  There are no sequence numbers: results have no mutation token.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

import txcb.subdocument as SD
from txcb.errors import (
    ArgumentError, CouchbaseError, KeyExistsError, NotFoundError, NotSupportedError, TemporaryFailError)
from txcb.formats import FMT_BYTES, FMT_JSON, Encoded
from txcb.buckets.items import LOCKED_CAS
from txcb.validation import check_ttl_cas, resolve_durability

__all__ = ["SubdocOperations"]


def _refuse_xattrs(specs: Sequence[Any], key: Any) -> None:
    for n, spec in enumerate(specs):
        if not isinstance(spec, SD.Spec):
            raise ArgumentError("specs must be txcb.subdocument specs (SD.get, SD.upsert...), "
                                "not %r" % (spec,), key=key)
        if spec.xattr:
            raise NotSupportedError(
                "spec %d: the memcached pool keeps no extended attributes (xattr=True)" % n,
                key=key)


class SubdocOperations:
    """
    ``lookup_in`` / ``mutate_in`` of :class:`~txcb.buckets.memcached.MemcachedPool`
    (see the module): the class using it provides the IBucket ``get``,
    ``insert``, ``replace`` and ``remove`` and ``max_value_size``.
    """

    #: How many GET + write rounds a ``mutate_in`` makes before giving up on
    #: CAS conflicts with TemporaryFailError.
    subdoc_attempts = 8

    def lookup_in(self, key: Any, *specs: Any, access_deleted: bool = False,
                  timeout: Optional[float] = None) -> Deferred:
        """The specs on the item (one GET); NotFoundError if there is none."""
        try:
            _refuse_xattrs(specs, key)
        except CouchbaseError as e:
            return fail(e)
        doc_flags = SD.DocFlag.ACCESS_DELETED if access_deleted else 0
        return self.get(key, timeout=timeout).addCallback(  # type: ignore[attr-defined]
            _lookup, key, list(specs), doc_flags)

    def mutate_in(self, key: Any, *specs: Any, cas: int = 0, ttl: int = 0,
                  upsert_doc: bool = False, insert_doc: bool = False, persist_to: int = 0,
                  replicate_to: int = 0, preserve_expiry: bool = False,
                  timeout: Optional[float] = None) -> Deferred:
        """The specs, all or nothing, written back with a CAS (see the module)."""
        try:
            _refuse_xattrs(specs, key)
            if preserve_expiry:
                raise NotSupportedError("the memcached pool cannot preserve an expiry it is "
                                        "not told (preserve_expiry)", key=key)
            check_ttl_cas(ttl, cas, key)
            if persist_to or replicate_to:
                resolve_durability(persist_to, replicate_to, 0, 0, key)
        except CouchbaseError as e:
            return fail(e)
        doc_flags = (SD.DocFlag.MKDOC if upsert_doc else 0) | (SD.DocFlag.ADD if insert_doc else 0)
        return _Mutation(self, key, list(specs), cas, ttl, doc_flags, timeout).attempt()


def _lookup(found: Any, key: Any, specs: Sequence[SD.Spec], doc_flags: int) -> SD.SubdocResult:
    meta = SD.DocumentMeta(cas=found.cas, flags=found.flags)
    return SD.SubdocResult.of_lookup(key, found.cas, specs,
                                     SD.lookup(found.raw, {}, specs, meta, doc_flags))


class _Mutation:
    """One mutate_in: GET, the engine, the CAS write; again on a conflict."""

    def __init__(self, pool: Any, key: Any, specs: Sequence[SD.Spec], cas: int, ttl: int,
                 doc_flags: int, timeout: Optional[float]) -> None:
        self.pool, self.key, self.specs, self.cas, self.ttl = pool, key, specs, cas, ttl
        self.doc_flags, self.timeout = doc_flags, timeout
        self.attempts = 0

    def attempt(self) -> Deferred:
        self.attempts += 1
        d = self.pool.get(self.key, quiet=True, timeout=self.timeout)
        return d.addCallback(self._got)

    def _got(self, found: Any) -> Deferred:
        doc = found.raw if not found.rc else None
        # A locked item reads with LOCKED_CAS: only the server can check the
        # caller's cas (the lock's) against it, so the write carries that one.
        locked = found.cas == LOCKED_CAS
        if self.cas and doc is not None and found.cas != self.cas and not locked:
            raise KeyExistsError("CAS mismatch", key=self.key)
        write_cas = self.cas if self.cas and locked else found.cas
        meta = SD.DocumentMeta(cas=found.cas, flags=found.flags)
        done = SD.mutate(doc, {}, self.specs, meta, self.doc_flags, cas=self.cas,
                         max_size=self.pool.max_value_size)
        d = self._write(done, doc is None, found, write_cas)
        return d.addCallbacks(self._written, self._conflict, callbackArgs=(done,),
                             errbackArgs=(doc is None,))

    def _write(self, done: Any, created: bool, found: Any, cas: int) -> Deferred:
        pool, key, timeout = self.pool, self.key, self.timeout
        if done.body is None:
            return pool.remove(key, cas=cas, timeout=timeout)
        if created:
            flags = FMT_JSON if done.is_json else FMT_BYTES
            return pool.insert(key, Encoded(done.body, flags), ttl=self.ttl, timeout=timeout)
        return pool.replace(key, Encoded(done.body, found.flags), cas=cas, ttl=self.ttl,
                            timeout=timeout)

    def _written(self, stored: Any, done: Any) -> SD.SubdocResult:
        return SD.SubdocResult.of_mutation(self.key, stored.cas, self.specs, done)

    def _conflict(self, f: Failure, created: bool) -> Any:
        """Another client wrote the item since the GET: start again, within the bound."""
        if not f.check(KeyExistsError, NotFoundError) or self.cas:
            return f
        if created and self.doc_flags & SD.DocFlag.ADD:
            return f  # insert_doc, and the document exists now
        if self.attempts >= self.pool.subdoc_attempts:
            raise TemporaryFailError("gave up after %d CAS conflicts with other writers"
                                     % self.attempts, key=self.key)
        return self.attempt()
