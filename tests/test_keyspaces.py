"""Named buckets and collections (txcb.keyspaces)."""

from twisted.trial import unittest

from txcb.keyspaces import (
    FIRST_USER_ID, BucketSpace, Keyspaces, check_bucket_name, parse_collection_path)


class CollectionPathTests(unittest.TestCase):
    def test_three_names(self):
        self.assertEqual(parse_collection_path("default.inventory.airline"),
                         ("default", "inventory", "airline"))

    def test_bucket_name_may_hold_dots(self):
        self.assertEqual(parse_collection_path("travel.sample.inventory.hotel"),
                         ("travel.sample", "inventory", "hotel"))

    ILLEGAL = ["", "a", "a.b", "a..c", "a.b.", "a._s.c", "a.s.%c", "a.s c.d",
               "bad/bucket.s.c", "a." + "s" * 252 + ".c"]

    def test_illegal_paths(self):
        for path in self.ILLEGAL:
            with self.assertRaises(ValueError, msg=path) as e:
                parse_collection_path(path)
            self.assertNotIn("\n", str(e.exception))

    def test_bucket_names(self):
        self.assertEqual(check_bucket_name("travel-sample"), "travel-sample")
        for bad in ("", "a b", "x" * 101, "é"):
            self.assertRaises(ValueError, check_bucket_name, bad)


class BucketSpaceTests(unittest.TestCase):
    def setUp(self):
        self.default, self.airline, self.hotel = object(), object(), object()
        self.space = BucketSpace("travel", self.default)

    def test_default_collection_is_zero(self):
        c = self.space.collection(0)
        self.assertIs(c.bucket, self.default)
        self.assertEqual((c.scope, c.name, c.path), ("_default", "_default", "_default._default"))
        self.assertIs(self.space.find(""), c)
        self.assertIs(self.space.find("_default"), c)
        self.assertEqual(self.space.manifest_uid, 0)

    def test_declared_collections_get_ids_from_eight(self):
        a = self.space.add("inventory", "airline", self.airline)
        h = self.space.add("inventory", "hotel", self.hotel)
        self.assertEqual((a.cid, h.cid), (FIRST_USER_ID, FIRST_USER_ID + 1))
        self.assertEqual(a.sid, h.sid)
        self.assertEqual(a.sid, FIRST_USER_ID)
        self.assertIs(self.space.find("inventory.hotel"), h)
        self.assertIs(self.space.collection(h.cid).bucket, self.hotel)
        self.assertIsNone(self.space.collection(7))
        self.assertIsNone(self.space.find("inventory.cars"))
        self.assertEqual(self.space.manifest_uid, 2)

    def test_uuids_differ_and_are_stable(self):
        a = self.space.add("inventory", "airline", self.airline)
        self.assertNotEqual(a.uuid, self.space.default.uuid)
        self.assertIs(self.space.by_uuid(a.uuid), a)
        again = BucketSpace("travel", object()).add("inventory", "airline", object())
        self.assertEqual(again.uuid, a.uuid)

    def test_declared_twice(self):
        self.space.add("s", "c", self.airline)
        self.assertRaises(ValueError, self.space.add, "s", "c", self.hotel)

    def test_manifest(self):
        self.space.add("inventory", "airline", self.airline)
        self.assertEqual(self.space.manifest(), {
            "uid": "1",
            "scopes": [
                {"name": "_default", "uid": "0",
                 "collections": [{"name": "_default", "uid": "0"}]},
                {"name": "inventory", "uid": "8",
                 "collections": [{"name": "airline", "uid": "8"}]}]})


class KeyspacesTests(unittest.TestCase):
    def test_first_and_lookup(self):
        b1, b2 = object(), object()
        ks = Keyspaces([BucketSpace("default", b1), BucketSpace("other", b2)])
        self.assertIs(ks.first.default.bucket, b1)
        self.assertIs(ks.get("other").default.bucket, b2)
        self.assertIsNone(ks.get("missing"))
        self.assertEqual([s.name for s in ks], ["default", "other"])
        self.assertEqual(len(ks), 2)

    def test_buckets_once_each(self):
        b = object()
        space = BucketSpace("default", b)
        space.add("s", "c", b)
        other = object()
        space.add("s", "d", other)
        self.assertEqual(Keyspaces([space]).buckets(), [b, other])

    def test_named_twice(self):
        ks = Keyspaces.single(object())
        self.assertRaises(ValueError, ks.add, BucketSpace("default", object()))
