"""
A shopping-cart store written against the official Couchbase Python SDK's
Twisted API (``txcouchbase``): the application ``test_carts.py`` tests, as
an example of testing such code against txcb (README.rst, "Testing a
txcouchbase application").  Nothing in it knows about txcb: in production
``connect`` gets the cluster's connection string instead.
"""

from couchbase.auth import PasswordAuthenticator
from couchbase.exceptions import (CasMismatchException, DocumentExistsException,
                                  DocumentNotFoundException)
from couchbase.options import ClusterOptions, ReplaceOptions
from twisted.internet.defer import inlineCallbacks
from txcouchbase.cluster import TxCluster


@inlineCallbacks
def connect(connection_string, username, password, bucket_name="default"):
    """(a Carts over the bucket's default collection, the cluster to close)."""
    cluster = TxCluster(connection_string,
                        ClusterOptions(PasswordAuthenticator(username, password)))
    bucket = cluster.bucket(bucket_name)
    yield bucket.on_connect()
    return Carts(bucket.default_collection()), cluster


class Carts:
    """Carts are JSON documents ``{"items": [...]}``, one per cart id."""

    def __init__(self, collection):
        self.collection = collection

    @inlineCallbacks
    def add(self, cart_id, item):
        """Add ``item``; the cart's items.  Concurrent adds retry on CAS."""
        while True:
            try:
                current = yield self.collection.get(cart_id)
            except DocumentNotFoundException:
                try:
                    yield self.collection.insert(cart_id, {"items": [item]})
                except DocumentExistsException:
                    continue  # another add created it first
                return [item]
            items = current.content_as[dict]["items"] + [item]
            try:
                yield self.collection.replace(cart_id, {"items": items},
                                              ReplaceOptions(cas=current.cas))
            except CasMismatchException:
                continue  # another add changed it first
            return items

    @inlineCallbacks
    def items(self, cart_id):
        """The cart's items ([] for a cart nobody added to)."""
        try:
            current = yield self.collection.get(cart_id)
        except DocumentNotFoundException:
            return []
        return current.content_as[dict]["items"]

    def checkout(self, cart_id):
        """Remove the cart (DocumentNotFoundException if there is none)."""
        return self.collection.remove(cart_id)
