"""
In-memory harnesses of the netstring server and client protocols: each side
driven through a StringTransport on a task.Clock (no sockets, no real time),
frame builders, and the buckets the server tests serve.
"""

import gc
import json
from io import BytesIO

from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.logger import LogLevel, globalLogPublisher
from twisted.python.failure import Failure
from twisted.trial import unittest
from zope.interface import implementer_only

from txcb.buckets.embedded import EmbeddedBucket
from txcb.client.remote import BucketClientProtocol, RemoteBucket
from txcb.formats import FMT_BYTES
from txcb.interfaces import IBucket
from txcb.results import ValueResult
from txcb.server.netstring import BucketServerFactory, BucketServerProtocol
from txcb.wire.netstring import (
    NetstringDecoder, Op, decode_request, decode_response, encode_request, encode_response,
    netstring)

__all__ = ["PEER", "SERVER_ADDR", "SERVER_NS", "CLIENT_NS", "HELLO_INFO", "buffered",
           "frame", "response", "LogCapture", "PendingBucket", "DelegatingBucket",
           "ServerTestBase", "ClientTestBase"]

#: The client's address as the server under test sees it.
PEER = IPv4Address("TCP", "127.0.0.1", 40000)
#: The server's address as the client under test sees it.
SERVER_ADDR = IPv4Address("TCP", "127.0.0.1", 11222)
SERVER_NS = BucketServerProtocol.__module__ + "." + BucketServerProtocol.__name__
CLIENT_NS = BucketClientProtocol.__module__ + "." + BucketClientProtocol.__name__
HELLO_INFO = {"server": "txcb/test", "protocol": 1, "max_value_size": 1000,
              "max_frame": 1278, "max_inflight": 16}


def buffered(proto):
    """Bytes the protocol holds, whatever its receive buffers are called."""
    total = 0
    for v in vars(proto).values():
        if isinstance(v, (bytes, bytearray, memoryview)):
            total += len(v)
        elif isinstance(v, BytesIO):
            total += len(v.getbuffer())
        elif isinstance(v, list):
            total += sum(len(x) for x in v if isinstance(x, (bytes, bytearray, memoryview)))
    return total


def frame(opcode, opaque, **kw):
    return netstring(encode_request(opcode, opaque, **kw))


def response(opcode, opaque, status=0, **kw):
    return netstring(encode_response(opcode, opaque, status, **kw))


class LogCapture:
    """Every log event while a test runs."""

    def __init__(self, testcase):
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        testcase.addCleanup(globalLogPublisher.removeObserver, self.events.append)

    def server_lines(self, min_level=LogLevel.info):
        return [e for e in self.events if e.get("log_namespace") == SERVER_NS
                and e["log_level"] >= min_level]

    def failures(self):
        return [e for e in self.events if "log_failure" in e]


class PendingBucket:
    """A bucket whose get() answers only when the test says so."""

    def __init__(self):
        self.calls = []

    def get(self, key, ttl=0, quiet=False):
        d = Deferred()
        self.calls.append((key, d))
        return d

    def answer(self, i, value=None):
        key, d = self.calls[i]
        d.callback(ValueResult(key, value if value is not None else key, FMT_BYTES, 1000 + i))

    def errors(self):
        """Failures left at the end of the server's callback chains (none expected)."""
        out = []
        for _key, d in self.calls:
            if d.called and isinstance(d.result, Failure):
                out.append(d.result)
                d.addErrback(lambda _f: None)  # reported here, not again at gc
        return out


class DelegatingBucket:
    """An IBucket that is no EmbeddedBucket: served through its Deferreds."""

    def __init__(self, inner):
        self._inner = inner

    def __getattr__(self, name):
        if name.startswith("__"):  # not the inner bucket's interfaces (ISyncBucket)
            raise AttributeError(name)
        return getattr(self._inner, name)


# -- the server under test --------------------------------------------------

class ServerTestBase(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.clock.advance(1700000000)
        self.log = LogCapture(self)
        self.addCleanup(self.assertNoStrayFailures)
        self.expected_failures = 0

    def assertNoStrayFailures(self):
        # Unhandled errors in Deferreds are logged when they are collected.
        gc.collect()
        self.assertEqual(len(self.log.failures()), self.expected_failures,
                         [e.get("log_format") for e in self.log.failures()])

    def make_factory(self, bucket=None, max_inflight=1024, max_value_size=1000):
        if isinstance(bucket, PendingBucket):
            self.addCleanup(lambda: self.assertEqual(bucket.errors(), []))
        if bucket is None:
            bucket = EmbeddedBucket(clock=self.clock, max_value_size=max_value_size,
                                    pager_interval=0)
            self.bucket = bucket
        return BucketServerFactory(bucket, max_inflight=max_inflight)

    def connect(self, factory):
        proto = factory.buildProtocol(PEER)
        transport = StringTransport(peerAddress=PEER)
        proto.makeConnection(transport)
        return proto, transport

    def setup_server(self, **kw):
        self.factory = self.make_factory(**kw)
        self.proto, self.transport = self.connect(self.factory)
        return self.proto, self.transport

    def responses(self, transport=None, clear=True):
        transport = transport if transport is not None else self.transport
        out = [decode_response(p) for p in NetstringDecoder(1 << 26).feed(transport.value())]
        if clear:
            transport.clear()
        return out

    def call(self, opcode, opaque=1, proto=None, transport=None, **kw):
        """Send one request; return its one response."""
        proto = proto or self.proto
        proto.dataReceived(frame(opcode, opaque, **kw))
        [res] = self.responses(transport)
        self.assertEqual((res.opcode, res.opaque), (opcode, opaque))
        return res


# -- the client under test --------------------------------------------------

class ClientTestBase(unittest.TestCase):

    def setUp(self):
        self.clock = Clock()
        self.events = []
        globalLogPublisher.addObserver(self.events.append)
        self.addCleanup(globalLogPublisher.removeObserver, self.events.append)
        self.addCleanup(self.assertNoStrayFailures)

    def assertNoStrayFailures(self):
        gc.collect()  # unhandled errors in Deferreds are logged when collected
        failures = [e for e in self.events if "log_failure" in e]
        self.assertEqual(failures, [])

    def client_warnings(self):
        return [e for e in self.events if e.get("log_namespace") == CLIENT_NS
                and e["log_level"] >= LogLevel.warn]

    def sent(self, transport):
        """The requests the client wrote since the last call."""
        reqs = [decode_request(p) for p in NetstringDecoder(1 << 26).feed(transport.value())]
        transport.clear()
        return reqs

    def make_client(self, timeout=2.5, hello=True):
        proto = BucketClientProtocol(clock=self.clock, timeout=timeout)
        transport = StringTransport()
        proto.makeConnection(transport)
        [req] = self.sent(transport)
        self.assertEqual((req.opcode, req.key), (Op.HELLO, b""))
        if hello:
            proto.dataReceived(response(Op.HELLO, req.opaque,
                                        body=json.dumps(HELLO_INFO).encode()))
        self.proto, self.transport = proto, transport
        self.bucket = RemoteBucket(proto, timeout=timeout)
        return proto, transport

    def assertIdle(self, proto=None):
        """Nothing lingers: no pending request, no timer."""
        proto = proto or self.proto
        self.assertEqual(proto._pending, {})
        self.assertEqual(self.clock.getDelayedCalls(), [])

    def one_request(self):
        [req] = self.sent(self.transport)
        return req


@implementer_only(IBucket)
class DeferredOnlyBucket(EmbeddedBucket):
    """An embedded bucket that does not provide ISyncBucket: served through its Deferreds."""
