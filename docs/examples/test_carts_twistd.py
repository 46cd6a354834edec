"""
The same kind of trial tests of carts.py, against a txcb server running
beside them (or any Couchbase cluster): start one, then run the tests.

    twistd -n txcb --ephemeral --couchbase 11210 &
    python -m twisted.trial --reactor=asyncio test_carts_twistd

``CARTS_COUCHBASE`` overrides the connection string.
"""

import os
import uuid

from txcb.testing import import_txcouchbase

import_txcouchbase()  # first: trial has installed the asyncio reactor txcouchbase wants

from twisted.internet import reactor  # noqa: E402
from twisted.internet.defer import inlineCallbacks  # noqa: E402
from twisted.internet.task import deferLater  # noqa: E402
from twisted.trial.unittest import TestCase  # noqa: E402

import carts  # noqa: E402

CONNECTION_STRING = os.environ.get("CARTS_COUCHBASE", "couchbase://127.0.0.1:11210")


class CartsOnServerTests(TestCase):

    @inlineCallbacks
    def setUp(self):
        yield deferLater(reactor, 0)  # txcouchbase clusters need the reactor running
        self.carts, cluster = yield carts.connect(CONNECTION_STRING, "app", "secret")
        self.addCleanup(cluster.close)
        self.cart = "cart:" + uuid.uuid4().hex  # the server's data outlives the test

    @inlineCallbacks
    def test_add_then_checkout(self):
        yield self.carts.add(self.cart, "apple")
        self.assertEqual((yield self.carts.add(self.cart, "pear")), ["apple", "pear"])
        yield self.carts.checkout(self.cart)
        self.assertEqual((yield self.carts.items(self.cart)), [])
