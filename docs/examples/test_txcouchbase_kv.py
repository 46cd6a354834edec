"""
Every key-value operation of the official ``txcouchbase`` API against txcb,
with the exception each failure raises: a reference for what your
application's error handling will see.  Run it from this directory:

    python -m twisted.trial --reactor=asyncio test_txcouchbase_kv
"""

from txcb.testing import couchbase_endpoint, import_txcouchbase

import_txcouchbase()  # first: trial has installed the asyncio reactor txcouchbase wants

from datetime import timedelta  # noqa: E402

from couchbase.auth import PasswordAuthenticator  # noqa: E402
from couchbase.exceptions import (  # noqa: E402
    CasMismatchException, DeltaInvalidException, DocumentExistsException,
    DocumentLockedException, DocumentNotFoundException, DocumentNotLockedException,
    PathNotFoundException)
from couchbase.options import (  # noqa: E402
    ClusterOptions, ClusterTimeoutOptions, DecrementOptions, DeltaValue, GetOptions,
    IncrementOptions, ReplaceOptions, SignedInt64, UpsertOptions)
from couchbase.transcoder import RawBinaryTranscoder  # noqa: E402
import couchbase.subdocument as SD  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402
from txcouchbase.cluster import TxCluster  # noqa: E402


class TxcouchbaseKeyValueTests(TestCase):

    @inlineCallbacks
    def setUp(self):
        self.endpoint = yield couchbase_endpoint(reactor)
        self.addCleanup(self.endpoint.stop)
        timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=1))
        cluster = TxCluster(self.endpoint.connection_string, ClusterOptions(
            PasswordAuthenticator("app", "secret"), timeout_options=timeouts))
        self.addCleanup(cluster.close)
        bucket = cluster.bucket("default")
        yield bucket.on_connect()
        self.coll = bucket.default_collection()

    @inlineCallbacks
    def test_upsert_get_insert_replace_remove_exists(self):
        stored = yield self.coll.upsert("doc", {"n": 1})
        got = yield self.coll.get("doc")
        self.assertEqual((got.content_as[dict], got.cas), ({"n": 1}, stored.cas))
        with self.assertRaises(DocumentExistsException):
            yield self.coll.insert("doc", {"n": 2})
        with self.assertRaises(CasMismatchException):
            yield self.coll.replace("doc", {"n": 2}, ReplaceOptions(cas=got.cas + 1))
        yield self.coll.replace("doc", {"n": 2}, ReplaceOptions(cas=got.cas))
        self.assertTrue((yield self.coll.exists("doc")).exists)
        yield self.coll.remove("doc")
        self.assertFalse((yield self.coll.exists("doc")).exists)
        for missing in (self.coll.get, self.coll.remove, lambda k: self.coll.replace(k, 1)):
            with self.assertRaises(DocumentNotFoundException):
                yield missing("doc")

    @inlineCallbacks
    def test_touch_and_get_and_touch(self):
        yield self.coll.upsert("doc", "v", UpsertOptions(expiry=timedelta(seconds=60)))
        yield self.coll.touch("doc", timedelta(seconds=120))
        self.assertEqual((yield self.coll.get_and_touch("doc", timedelta(seconds=60)))
                         .content_as[str], "v")
        with self.assertRaises(DocumentNotFoundException):
            yield self.coll.touch("nobody", timedelta(seconds=60))

    @inlineCallbacks
    def test_lock_and_unlock(self):
        yield self.coll.upsert("doc", "v")
        locked = yield self.coll.get_and_lock("doc", timedelta(seconds=10))
        with self.assertRaises(CasMismatchException):
            yield self.coll.unlock("doc", locked.cas + 1)
        with self.assertRaises(DocumentLockedException):  # retried until the 1 s timeout
            yield self.coll.upsert("doc", "w")
        yield self.coll.unlock("doc", locked.cas)
        with self.assertRaises(DocumentNotLockedException):
            yield self.coll.unlock("doc", locked.cas)

    @inlineCallbacks
    def test_binary_counters_and_append(self):
        binary = self.coll.binary()
        self.assertEqual((yield binary.increment(
            "hits", IncrementOptions(initial=SignedInt64(10)))).content, 10)
        self.assertEqual((yield binary.increment(
            "hits", IncrementOptions(delta=DeltaValue(5)))).content, 15)
        self.assertEqual((yield binary.decrement(
            "hits", DecrementOptions(delta=DeltaValue(3)))).content, 12)
        yield self.coll.upsert("json", {"not": "a number"})
        with self.assertRaises(DeltaInvalidException):
            yield binary.increment("json")
        raw = RawBinaryTranscoder()
        yield self.coll.upsert("bytes", b"mid", UpsertOptions(transcoder=raw))
        yield binary.append("bytes", b">")
        yield binary.prepend("bytes", b"<")
        self.assertEqual((yield self.coll.get("bytes", GetOptions(transcoder=raw))).value,
                         b"<mid>")
        with self.assertRaises(DocumentNotFoundException):
            yield binary.append("nobody", b"x")

    @inlineCallbacks
    def test_sub_documents(self):
        yield self.coll.upsert("doc", {"a": 1})
        found = yield self.coll.lookup_in("doc", [SD.get("a"), SD.exists("b")])
        self.assertEqual((found.content_as[int](0), found.exists(1)), (1, False))
        yield self.coll.mutate_in("doc", [SD.upsert("b", 2)])
        self.assertEqual((yield self.coll.get("doc")).content_as[dict], {"a": 1, "b": 2})
        with self.assertRaises(PathNotFoundException):
            yield self.coll.mutate_in("doc", [SD.replace("missing", 3)])
