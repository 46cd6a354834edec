"""
A sans-IO test client of txcb's Couchbase endpoint: a bucket on a
task.Clock, a CouchbaseServerFactory, and StringTransport connections that
speak frames built with :mod:`txcb.wire.couchbase`.
"""

import json
import struct
import time

from twisted.internet.address import IPv4Address
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport

from txcb.buckets.embedded import EmbeddedBucket
from txcb.keyspaces import BucketSpace, Keyspaces
from txcb.server.cbkv import KV_HANDLERS
from txcb.server.core import ServerStats
from txcb.server.couchbase import CouchbaseServerFactory
from txcb.wire import cbbootstrap as WB
from txcb.wire import couchbase as W
from txcb.wire.sasl import ScramClient, plain_payload

__all__ = ["HeldDiskBucket", "PEER", "HOST", "CbHarness", "CbConn", "responses", "ALL_FEATURES",
           "store_extras", "counter_extras"]

PEER = IPv4Address("TCP", "127.0.0.1", 54321)
#: The server's address: the port the cluster config names.
HOST = IPv4Address("TCP", "127.0.0.1", 11210)
O = W.Opcode
#: What the SDK 4.6.3 asks for in HELLO, in its order.
ALL_FEATURES = [0x03, 0x06, 0x07, 0x08, 0x0B, 0x0C, 0x10, 0x0F, 0x11, 0x15, 0x12, 0x17,
                0x14, 0x1C, 0x21, 0x0E, 0x0D, 0x1E, 0x0A, 0x04]


def store_extras(flags=0, ttl=0):
    return struct.pack(">II", flags, ttl)


def counter_extras(delta, initial=0, ttl=0):
    return struct.pack(">QQI", delta, initial, ttl)


def responses(data):
    return W.Decoder("response").feed(data)


class CbHarness:
    """Buckets on a Clock, a factory over them, and connections to it."""

    def __init__(self, bucket=None, credentials=None, max_inflight=1024,
                 max_connections=None, max_value_size=4096, collections=(), make_bucket=None,
                 idle_timeout=None):
        self.clock = Clock()
        self.clock.advance(time.time())
        if make_bucket is not None:
            bucket = make_bucket(self.clock)
        self.bucket = bucket if bucket is not None else EmbeddedBucket(
            clock=self.clock, max_value_size=max_value_size, pager_interval=0)
        space = BucketSpace("default", self.bucket)
        self.named = {}
        for scope, name in collections:
            other = EmbeddedBucket(clock=self.clock, max_value_size=max_value_size,
                                   pager_interval=0)
            self.named[(scope, name)] = space.add(scope, name, other)
        self.keyspaces = Keyspaces([space])
        self.stats = ServerStats(max_connections=max_connections, clock=self.clock,
                                 idle_timeout=idle_timeout)
        self.factory = CouchbaseServerFactory(self.keyspaces, stats=self.stats,
                                              credentials=credentials,
                                              max_inflight=max_inflight, clock=self.clock)

    def connect(self):
        p = self.factory.buildProtocol(PEER)
        if p is None:
            return None
        t = StringTransport(hostAddress=HOST, peerAddress=PEER)
        p.makeConnection(t)
        return CbConn(p, t)

    def ready(self, features=ALL_FEATURES, user=b"u", password=b"p"):
        """A connection through HELLO, PLAIN auth and SELECT_BUCKET default."""
        c = self.connect()
        c.bootstrap(features, user, password)
        return c


class CbConn:
    """One connection: send frames, read the decoded responses."""

    def __init__(self, p, t):
        self.p = p
        self.t = t
        self.opaque = 100
        self.collections = False

    def send(self, data):
        """Feed bytes; return (and clear) what the server wrote."""
        self.p.dataReceived(data)
        return self.take()

    def take(self):
        out = self.t.value()
        self.t.clear()
        return out

    def frame(self, opcode, key=b"", value=b"", extras=b"", cas=0, vbucket=0, framing=b"",
              cid=None, datatype=0):
        """A request frame; keys get the collection prefix once Collections is on."""
        self.opaque += 1
        if key and opcode in KV_HANDLERS and (cid is not None or self.collections):
            key = W.leb128(cid or 0) + key
        return W.encode_request(opcode, key, value, extras, self.opaque, cas, vbucket,
                                datatype, framing)

    def request(self, opcode, key=b"", value=b"", **kw):
        """Send one request; the decoded responses."""
        return responses(self.send(self.frame(opcode, key, value, **kw)))

    def one(self, opcode, key=b"", value=b"", **kw):
        """Send one request; its one response."""
        out = self.request(opcode, key, value, **kw)
        assert len(out) == 1, out
        return out[0]

    def hello(self, features=ALL_FEATURES):
        r = self.one(O.HELLO, b'{"a":"test"}', WB.hello_value(features))
        granted = WB.parse_hello(r.value)
        self.collections = W.Feature.COLLECTIONS in granted
        return granted

    def plain(self, user=b"u", password=b"p"):
        return self.one(O.SASL_AUTH, b"PLAIN", plain_payload(user, password))

    def scram(self, mechanism=b"SCRAM-SHA512", user=b"u", password=b"p"):
        """SASL_AUTH then SASL_STEP: the two responses."""
        client = ScramClient(mechanism, user, password)
        first = self.one(O.SASL_AUTH, mechanism, client.first())
        if first.status != W.Status.AUTH_CONTINUE:
            return first, None
        return first, self.one(O.SASL_STEP, mechanism, client.final(first.value))

    def bootstrap(self, features=ALL_FEATURES, user=b"u", password=b"p"):
        self.hello(features)
        assert self.plain(user, password).status == 0
        assert self.one(O.SELECT_BUCKET, b"default").status == 0

    def config(self):
        return json.loads(self.one(O.GET_CLUSTER_CONFIG).value)

    @property
    def closed(self):
        return self.t.disconnecting


class HeldDiskBucket(EmbeddedBucket):
    """A synchronous bucket with a disk that commits when the test says so
    (:meth:`commit`); ``persisted_seqno`` in its stats follows the commits."""

    max_persist_to = 1

    def __init__(self, *a, **kw):
        EmbeddedBucket.__init__(self, *a, **kw)
        self.waiting = []
        self.persisted = 0

    def on_durable(self, result, persist_to, replicate_to, target):
        self.waiting.append((result, target))
        return True

    def commit(self):
        waiting, self.waiting = self.waiting, []
        for result, target in waiting:
            self.persisted = max(self.persisted, result.seqno)
            if not target.called:
                target.callback(result)

    def stats_sync(self):
        s = EmbeddedBucket.stats_sync(self)
        s["persisted_seqno"] = self.persisted
        return s
