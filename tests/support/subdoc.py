"""
The bucket the sub-document wire tests serve: :class:`SubdocTestBucket`, a
:class:`RecordingSubdoc` (what the server passed on) over :data:`SERVED`.

:data:`SERVED` is, for now, the TEST DOUBLE :class:`NaiveSubdocBucket`: an
EmbeddedBucket with a naive ``lookup_in`` / ``mutate_in`` (the
txcb.subdocument engine over get_sync and store_sync / remove_sync, no
xattrs), until the embedded bucket implements them natively.  Once it does,
set ``SERVED = EmbeddedBucket`` and delete NaiveSubdocBucket.
"""

from twisted.internet.defer import fail, succeed

import txcb.subdocument as SD
from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import CouchbaseError, KeyExistsError, NotSupportedError
from txcb.formats import FMT_BYTES, FMT_JSON, Encoded

__all__ = ["NaiveSubdocBucket", "RecordingSubdoc", "SERVED", "SubdocTestBucket"]


class NaiveSubdocBucket(EmbeddedBucket):
    """
    TEST DOUBLE: lookup_in / mutate_in as SD.lookup / SD.mutate between a
    get and a store, without xattrs (refused with NotSupportedError).
    """

    def lookup_in(self, key, *specs, access_deleted=False):
        try:
            self._no_xattrs(specs)
            r = self.get_sync(key)
            meta = SD.DocumentMeta(cas=r.cas, flags=r.flags)
            found = SD.lookup(r.raw, {}, specs, meta)
            return succeed(SD.SubdocResult.of_lookup(key, r.cas, specs, found))
        except CouchbaseError as e:
            return fail(e)

    def mutate_in(self, key, *specs, cas=0, ttl=0, upsert_doc=False, insert_doc=False,
                  persist_to=0, replicate_to=0, preserve_expiry=False):
        try:
            return succeed(self._mutate(key, specs, cas, ttl, upsert_doc, insert_doc))
        except CouchbaseError as e:
            return fail(e)

    def _mutate(self, key, specs, cas, ttl, upsert_doc, insert_doc):
        self._no_xattrs(specs)
        r = self.get_sync(key, quiet=True)
        doc = None if r.rc else r.raw
        if cas and doc is not None and r.cas != cas:
            raise KeyExistsError("CAS mismatch", key=key)
        flags = (SD.DocFlag.MKDOC if upsert_doc else 0) | (SD.DocFlag.ADD if insert_doc else 0)
        done = SD.mutate(doc, {}, specs, SD.DocumentMeta(cas=r.cas, flags=r.flags), flags,
                         cas=cas, max_size=self.max_value_size)
        if done.body is None:
            stored = self.remove_sync(key, cas=r.cas)
        elif doc is None:
            stored = self.store_sync("insert", key, Encoded(
                done.body, FMT_JSON if done.is_json else FMT_BYTES), ttl=ttl)
        else:
            stored = self.store_sync("replace", key, Encoded(done.body, r.flags), cas=r.cas,
                                     ttl=ttl)
        return SD.SubdocResult.of_mutation(key, stored.cas, specs, done,
                                           (0, stored.seqno) if stored.seqno else None)

    @staticmethod
    def _no_xattrs(specs):
        if any(s.xattr for s in specs):
            raise NotSupportedError("the test double keeps no xattrs")


class RecordingSubdoc:
    """
    Records each lookup_in / mutate_in call in ``calls`` as (method, key,
    specs, keyword arguments), then makes it (the next class's method).
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []

    def lookup_in(self, key, *specs, access_deleted=False):
        self.calls.append(("lookup_in", key, specs, {"access_deleted": access_deleted}))
        return super().lookup_in(key, *specs, access_deleted=access_deleted)

    def mutate_in(self, key, *specs, **kw):
        self.calls.append(("mutate_in", key, specs, kw))
        return super().mutate_in(key, *specs, **kw)


#: What SubdocTestBucket serves: EmbeddedBucket once it has lookup_in / mutate_in.
SERVED = NaiveSubdocBucket


class SubdocTestBucket(RecordingSubdoc, SERVED):
    """The served bucket of tests/test_subdoc_wire.py: SERVED, recording its calls."""
