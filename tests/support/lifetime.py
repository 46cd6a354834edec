"""
What is left of a server's connections once they close: real loopback
connections (plain blocking sockets on the client side, the reactor's TCP
transports on the server side), weak references to the protocols the
server built, and the bytes Python still has allocated, with the garbage
collector off so that only reference counting frees anything.
"""

import gc
import select
import socket
import time
import tracemalloc
import weakref

from twisted.internet import defer, reactor
from twisted.internet.defer import Deferred
from twisted.internet.task import deferLater

from txcb.formats import FMT_BYTES
from txcb.results import ValueResult

__all__ = ["gc_off", "track_protocols", "listen", "connect", "send", "receive", "wait_until",
           "turns", "live", "Traced", "HangingBucket"]


def gc_off(testcase):
    """Collect once, then keep the garbage collector off until the test ends."""
    gc.collect()
    if gc.isenabled():
        gc.disable()
        testcase.addCleanup(gc.enable)


def track_protocols(factory):
    """A list that gets a weak reference to every protocol ``factory`` builds."""
    refs = []
    build = type(factory).buildProtocol

    class Tracking(type(factory)):
        def buildProtocol(self, addr):
            p = build(self, addr)
            if p is not None:
                refs.append(weakref.ref(p))
            return p
    factory.__class__ = Tracking
    return refs


def live(refs):
    """The protocols of ``refs`` still alive."""
    return [r() for r in refs if r() is not None]


def listen(testcase, factory):
    """Serve ``factory`` on a free loopback port until the test ends; its port number."""
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")
    testcase.addCleanup(port.stopListening)
    return port.getHost().port


def connect(testcase, port, data=b""):
    """
    A client socket to ``port`` (closed at cleanup) that has sent ``data``,
    which must fit in the socket buffers: the server reads only once the
    test yields to the reactor (see :func:`send`).
    """
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    testcase.addCleanup(s.close)
    if data:
        s.sendall(data)
    s.setblocking(False)
    return s


@defer.inlineCallbacks
def send(sock, data):
    """Send all of ``data``, the reactor running (the server reading) meanwhile."""
    view = memoryview(data)
    while view:
        try:
            view = view[sock.send(view[:1 << 20]):]
        except BlockingIOError:
            yield deferLater(reactor, 0.002, lambda: None)


@defer.inlineCallbacks
def receive(sock, n=65536):
    """Fires with what ``sock`` receives next, the reactor running meanwhile."""
    yield wait_until(lambda: select.select([sock], [], [], 0)[0], what="a reply")
    return sock.recv(n)  # non-blocking: something is there


@defer.inlineCallbacks
def wait_until(predicate, timeout=10.0, what="the condition"):
    """Let the reactor run until ``predicate()`` is true (AssertionError after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("%s did not happen within %ss" % (what, timeout))
        yield deferLater(reactor, 0.005, lambda: None)


@defer.inlineCallbacks
def turns(n=3):
    """Let the reactor turn ``n`` times (whatever runs at the end of a turn runs)."""
    for _ in range(n):
        yield deferLater(reactor, 0, lambda: None)


class Traced:
    """Bytes allocated by Python since :meth:`start` (tracemalloc), for one test."""

    def __init__(self, testcase):
        if tracemalloc.is_tracing():
            raise RuntimeError("tracemalloc is in use already")
        tracemalloc.start()
        testcase.addCleanup(tracemalloc.stop)
        self.base = tracemalloc.get_traced_memory()[0]

    def now(self):
        return tracemalloc.get_traced_memory()[0] - self.base


class HangingBucket:
    """
    A bucket (no ISyncBucket: served through its Deferreds) whose get and
    stats never answer, and which counts the Deferreds cancelled.
    """

    max_value_size = 1 << 20

    def __init__(self):
        self.calls = []
        self.cancelled = 0

    def _hang(self):
        d = Deferred(self._cancel)
        self.calls.append(d)
        return d

    def _cancel(self, d):
        self.cancelled += 1

    def get(self, key, ttl=0, quiet=False):
        return self._hang()

    def stats(self):
        return self._hang()

    def pending(self):
        return [d for d in self.calls if not d.called]

    def answer_all(self):
        for d in self.pending():
            d.callback(ValueResult(b"k", b"v", FMT_BYTES, 1))
