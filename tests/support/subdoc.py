"""
TEST DOUBLE for the sub-document wire tests: an EmbeddedBucket with a naive
``lookup_in`` / ``mutate_in`` (the txcb.subdocument engine over get_sync and
store_sync / remove_sync, no xattrs), until the embedded bucket implements
them natively.  Once it does, the tests serve a plain EmbeddedBucket and this
module goes (see tests/test_subdoc_wire.py's ``make_bucket``).
"""

from twisted.internet.defer import fail, succeed

import txcb.subdocument as SD
from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import CouchbaseError, KeyExistsError, NotSupportedError
from txcb.formats import FMT_BYTES, FMT_JSON, Encoded

__all__ = ["NaiveSubdocBucket"]


class NaiveSubdocBucket(EmbeddedBucket):
    """
    TEST DOUBLE: lookup_in / mutate_in as SD.lookup / SD.mutate between a
    get and a store, without xattrs (refused).  ``calls`` records each
    call's (method, key, specs, keyword arguments) so that tests can see what
    the server passed on.
    """

    def __init__(self, *a, **kw):
        EmbeddedBucket.__init__(self, *a, **kw)
        self.calls = []

    def lookup_in(self, key, *specs, access_deleted=False):
        self.calls.append(("lookup_in", key, specs, {"access_deleted": access_deleted}))
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
        self.calls.append(("mutate_in", key, specs, dict(
            cas=cas, ttl=ttl, upsert_doc=upsert_doc, insert_doc=insert_doc,
            persist_to=persist_to, replicate_to=replicate_to, preserve_expiry=preserve_expiry)))
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
