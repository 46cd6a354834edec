"""
Preserve-expiry (framing extra id 5) on the Couchbase endpoint's whole-document
stores, and GET_META's real exptime: sans-IO against the protocol (an
embedded bucket on a Clock), then the official SDK against a real twistd.
"""

import math
import struct
import time
import uuid
from datetime import timedelta

from twisted.internet.task import Clock
from twisted.trial import unittest

from txcb.buckets.embedded import EmbeddedBucket
from txcb.errors import RC
from txcb.wire import couchbase as W

from tests.support.couchbase import CbHarness, store_extras
from tests.support.couchbase_sdk import SKIP_SDK, connect, shared_txcb
from tests.support.netstring import DeferredOnlyBucket

if SKIP_SDK is None:
    from couchbase.options import GetOptions, ReplaceOptions, UpsertOptions

O = W.Opcode
S = W.Status
PRESERVE = W.encode_frame_info(5)


class PreserveExpiryProtocolTests(unittest.TestCase):
    """SET/REPLACE/ADD with preserve-expiry, checked through GET_META's exptime."""

    def setUp(self):
        self.h = CbHarness()
        self.c = self.h.ready()
        self.now = self.h.clock.seconds()

    def store(self, key, ttl=0, opcode=O.SET, framing=b""):
        return self.c.one(opcode, key, b"v", extras=store_extras(0, ttl), framing=framing)

    def exptime(self, key):
        r = self.c.one(O.GET_META, key, extras=b"\x02")
        self.assertEqual(r.status, 0)
        return struct.unpack(">IIIQB", r.extras)[2]

    def test_hello_grants_preserve_ttl(self):
        self.assertIn(W.Feature.PRESERVE_TTL, self.h.connect().hello([W.Feature.PRESERVE_TTL]))

    def test_get_meta_exptime_with_and_without_expiry(self):
        self.assertEqual(self.store(b"forever").status, 0)
        self.assertEqual(self.exptime(b"forever"), 0)
        self.assertEqual(self.store(b"brief", ttl=100).status, 0)
        self.assertEqual(self.exptime(b"brief"), math.ceil(self.now + 100))
        absolute = int(self.now) + 5000
        self.assertEqual(self.store(b"until", ttl=absolute).status, 0)
        self.assertEqual(self.exptime(b"until"), absolute)

    def test_set_preserving_keeps_the_existing_expiry(self):
        self.store(b"k", ttl=100)
        self.h.clock.advance(10)
        r = self.store(b"k", ttl=500, framing=PRESERVE)
        self.assertEqual(r.status, 0)
        self.assertEqual(self.exptime(b"k"), math.ceil(self.now + 100))
        # A document without expiry keeps none.
        self.store(b"none")
        self.store(b"none", ttl=50, framing=PRESERVE)
        self.assertEqual(self.exptime(b"none"), 0)

    def test_set_preserving_a_new_document_takes_the_request_expiry(self):
        self.assertEqual(self.store(b"new", ttl=200, framing=PRESERVE).status, 0)
        self.assertEqual(self.exptime(b"new"), math.ceil(self.now + 200))

    def test_set_without_the_flag_replaces_the_expiry(self):
        self.store(b"k", ttl=100)
        self.store(b"k", ttl=300)
        self.assertEqual(self.exptime(b"k"), math.ceil(self.now + 300))
        self.store(b"k")
        self.assertEqual(self.exptime(b"k"), 0)

    def test_replace_and_add_preserving(self):
        self.store(b"k", ttl=100)
        self.assertEqual(self.store(b"k", opcode=O.REPLACE, framing=PRESERVE).status, 0)
        self.assertEqual(self.exptime(b"k"), math.ceil(self.now + 100))
        self.assertEqual(self.store(b"k", opcode=O.ADD, framing=PRESERVE).status,
                         S.KEY_EEXISTS)
        self.assertEqual(self.store(b"a", ttl=70, opcode=O.ADD, framing=PRESERVE).status, 0)
        self.assertEqual(self.exptime(b"a"), math.ceil(self.now + 70))

    def test_preserved_expiry_still_expires(self):
        self.store(b"k", ttl=100)
        self.store(b"k", framing=PRESERVE)
        self.h.clock.advance(101)
        self.assertEqual(self.c.one(O.GET, b"k").status, S.KEY_ENOENT)

    def test_preserve_on_a_delete_not_supported(self):
        self.store(b"k", ttl=100)
        self.assertEqual(self.c.one(O.DELETE, b"k", framing=PRESERVE).status, S.NOT_SUPPORTED)
        self.assertEqual(self.exptime(b"k"), math.ceil(self.now + 100))

    def test_bucket_store_sync_preserve_expiry(self):
        clock = Clock()
        b = EmbeddedBucket(clock=clock, pager_interval=0)
        b.store_sync("upsert", "k", b"v", ttl=100)
        b.store_sync("upsert", "k", b"w", ttl=10, preserve_expiry=True)
        meta = b.get_meta_sync("k")
        self.assertEqual((meta.expiry, meta.raw), (100, None))
        self.assertEqual(b.get_sync("k").raw, b"w")
        self.assertEqual(b.get_meta_sync("missing").rc, RC.KEY_ENOENT)


class PreserveExpiryDeferredBucketTests(unittest.TestCase):
    """A bucket without ISyncBucket: preserve-expiry refused, GET_META exptime 0."""

    def setUp(self):
        self.h = CbHarness(make_bucket=lambda clock: DeferredOnlyBucket(
            clock=clock, pager_interval=0))
        self.c = self.h.ready()

    def test_preserving_store_not_supported_and_nothing_stored(self):
        r = self.c.one(O.SET, b"k", b"v", extras=store_extras(0, 100), framing=PRESERVE)
        self.assertEqual(r.status, S.NOT_SUPPORTED)
        self.assertEqual(self.c.one(O.GET, b"k").status, S.KEY_ENOENT)

    def test_get_meta_falls_back_to_exptime_zero(self):
        self.c.one(O.SET, b"k", b"v", extras=store_extras(7, 100))
        r = self.c.one(O.GET_META, b"k", extras=b"\x02")
        self.assertEqual(r.status, 0)
        _deleted, flags, exptime, _seqno, _dt = struct.unpack(">IIIQB", r.extras)
        self.assertEqual((flags, exptime), (7, 0))


class SdkPreserveExpiryTests(unittest.TestCase):
    """The SDK's upsert/replace with preserve_expiry=True on a real twistd."""

    skip = SKIP_SDK

    def setUp(self):
        self.server = shared_txcb()
        self.cluster, self.bucket, self.coll = connect(self, self.server.port)

    def expiry(self, key):
        return self.coll.get(key, GetOptions(with_expiry=True)).expiry_time

    def assertAbout(self, when, seconds):
        # The SDK's expiry_time is a naive local datetime (fromtimestamp).
        self.assertLess(abs(when.timestamp() - (time.time() + seconds)), 5)

    def test_upsert_and_replace_preserve_expiry(self):
        coll, k = self.coll, "preserve-" + uuid.uuid4().hex[:12]
        coll.upsert(k, {"a": 1}, UpsertOptions(expiry=timedelta(seconds=3000)))
        first = self.expiry(k)
        self.assertAbout(first, 3000)
        coll.upsert(k, {"a": 2}, UpsertOptions(preserve_expiry=True))
        self.assertEqual(self.expiry(k), first)
        coll.replace(k, {"a": 3}, ReplaceOptions(preserve_expiry=True))
        self.assertEqual(self.expiry(k), first)
        self.assertEqual(coll.get(k).content_as[dict], {"a": 3})
        self.assertTrue(coll.exists(k).exists)
        coll.upsert(k, {"a": 4})
        self.assertIsNone(self.expiry(k))
        self.assertTrue(coll.exists(k).exists)
        self.assertFalse(coll.exists(k + "-missing").exists)
