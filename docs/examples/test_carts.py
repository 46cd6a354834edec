"""
Trial tests of carts.py against txcb's Couchbase endpoint, in the tests' own
process.  Run them from this directory:

    python -m twisted.trial --reactor=asyncio test_carts
"""

from txcb.testing import couchbase_endpoint, import_txcouchbase

import_txcouchbase()  # first: trial has installed the asyncio reactor txcouchbase wants

from couchbase.exceptions import DocumentNotFoundException  # noqa: E402
from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import gatherResults, inlineCallbacks  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402

import carts  # noqa: E402  (imports txcouchbase)


class CartsTests(TestCase):

    @inlineCallbacks
    def setUp(self):
        self.endpoint = yield couchbase_endpoint(reactor)  # 127.0.0.1, a free port
        self.addCleanup(self.endpoint.stop)
        self.carts, cluster = yield carts.connect(self.endpoint.connection_string,
                                                  "app", "secret")
        self.addCleanup(cluster.close)

    @inlineCallbacks
    def test_add_then_items(self):
        yield self.carts.add("cart:1", "apple")
        self.assertEqual((yield self.carts.add("cart:1", "pear")), ["apple", "pear"])
        self.assertEqual((yield self.carts.items("cart:1")), ["apple", "pear"])

    @inlineCallbacks
    def test_unknown_cart_is_empty(self):
        self.assertEqual((yield self.carts.items("cart:nobody")), [])

    @inlineCallbacks
    def test_concurrent_adds_both_land(self):
        yield gatherResults([self.carts.add("cart:2", "apple"),
                             self.carts.add("cart:2", "pear")])
        self.assertEqual(sorted((yield self.carts.items("cart:2"))), ["apple", "pear"])

    @inlineCallbacks
    def test_checkout_removes_the_cart(self):
        yield self.carts.add("cart:3", "apple")
        yield self.carts.checkout("cart:3")
        self.assertEqual((yield self.carts.items("cart:3")), [])
        with self.assertRaises(DocumentNotFoundException):
            yield self.carts.checkout("cart:3")

    @inlineCallbacks
    def test_the_stored_document(self):
        yield self.carts.add("cart:4", "apple")
        # The endpoint's bucket is txcb's own: read what the SDK stored.
        self.assertEqual(self.endpoint.bucket.get_sync("cart:4").value, {"items": ["apple"]})
