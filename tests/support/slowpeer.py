"""
A transport whose peer reads only when the test says so, with the write-buffer
flow control of Twisted's real transports; and a measure of the memory a call
allocates.
"""


from twisted.internet.testing import StringTransport
from twisted.trial.unittest import SkipTest

from tests.support import NO_TRACEMALLOC, tracemalloc

__all__ = ["SlowPeerTransport", "peak_allocated"]


class SlowPeerTransport(StringTransport):
    """
    A StringTransport whose written bytes wait until the peer reads them
    (:meth:`read`).  Like ``twisted.internet.abstract.FileDescriptor``, it
    pauses its streaming producer when a write leaves more than
    ``buffer_size`` bytes waiting, and resumes it once the peer has read all
    of them.  ``peak`` is the most bytes it ever held; ``writes`` counts the
    producer's writes.  ``eager``: the peer reads everything as soon as a
    write pauses the producer, which is resumed from inside that write (what
    it read is kept in ``early``).
    """

    def __init__(self, buffer_size=65536, **kw):
        StringTransport.__init__(self, **kw)
        self.buffer_size = buffer_size
        self.pieces = []
        self.held = 0
        self.peak = 0
        self.writes = 0
        self.producer_paused = False
        self.eager = False
        self.early = []

    def write(self, data):
        self.pieces.append(data)
        self.held += len(data)
        self.writes += 1
        self.peak = max(self.peak, self.held)
        if (self.held > self.buffer_size and self.producer is not None and self.streaming
                and not self.producer_paused):
            self.producer_paused = True
            self.producer.pauseProducing()
            if self.eager:
                self.early.append(self.read())

    def writeSequence(self, data):
        self.write(b"".join(data))

    def value(self):
        return b"".join(self.pieces)

    def clear(self):
        """Forget what was written (the peer does not read it: nothing resumes)."""
        self.pieces = []
        self.held = 0

    def read(self, n=None):
        """The peer reads up to ``n`` bytes (None: all); all read resumes the producer."""
        data = b"".join(self.pieces)
        taken, rest = (data, b"") if n is None else (data[:n], data[n:])
        self.pieces = [rest] if rest else []
        self.held = len(rest)
        if not rest and self.producer_paused and self.producer is not None:
            self.producer_paused = False
            self.producer.resumeProducing()
        return taken

    def read_all(self, n=None, between=None):
        """
        Read (``n`` bytes at a time) until nothing more comes, calling
        ``between()`` whenever nothing is waiting (to let a clock move).
        """
        out = []
        idle = 0
        while idle < 3:
            data = self.read(n)
            if data:
                out.append(data)
                idle = 0
            else:
                idle += 1
                if between is not None:
                    between()
        return b"".join(out)


def peak_allocated(call, *args):
    """The most memory (bytes) Python allocated at once during ``call(*args)``, above its start."""
    if NO_TRACEMALLOC:
        raise SkipTest(NO_TRACEMALLOC)
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        call(*args)
        return tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
