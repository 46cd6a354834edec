"""
txcb: a Twisted-native key-value bucket with Couchbase semantics.

The public face: :class:`~txcb.interfaces.IBucket` (the contract), the
providers (:class:`EmbeddedBucket`, and remote buckets from :func:`connect`
or :class:`BucketClientFactory`), the formats and the errors.
"""

__version__ = "0.1.0"
