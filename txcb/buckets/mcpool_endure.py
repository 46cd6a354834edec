"""
``endure`` on a memcached pool: memcached keeps items in memory, on one
server, so all there is to wait for is the key being there (at a CAS) or,
with ``check_removed``, gone: GETs, polled until a deadline.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txcb.errors import KeyExistsError, NotFoundError, TimeoutError
from txcb.results import OperationResult, ValueResult

__all__ = ["EndurePoll"]

#: ``get(timeout) -> Deferred`` of a quiet GET's ValueResult.
QuietGet = Callable[[float], Deferred]


class EndurePoll:
    """
    One ``endure``: a GET now, and with ``check_removed`` another every
    ``interval`` seconds until the key is gone or ``timeout`` has passed.
    Each GET waits at most ``op_timeout`` (0: no limit) and never past the
    deadline.  :attr:`d` fires with an OperationResult; cancelling it stops
    the polling.
    """

    def __init__(self, get: QuietGet, clock: Any, key: Any, cas: int, check_removed: bool,
                 timeout: float, interval: float, op_timeout: float) -> None:
        self._get = get
        self._clock = clock
        self._key = key
        self._cas = cas
        self._check_removed = check_removed
        self._timeout = timeout
        self._interval = interval
        self._op_timeout = op_timeout
        self._deadline = clock.seconds() + timeout
        #: the GET in flight (a Deferred) or the next one's DelayedCall.
        self._current: Any = None
        self.d: Deferred = Deferred(self._cancel)

    def start(self) -> Deferred:
        self._check()
        return self.d

    def _cancel(self, _d: Deferred) -> None:
        c, self._current = self._current, None
        if isinstance(c, Deferred):
            c.cancel()
        elif c is not None and c.active():
            c.cancel()

    def _check(self) -> None:
        left = self._deadline - self._clock.seconds()
        t = self._op_timeout
        if t:
            t = min(t, max(left, 0.001))
        g = self._current = self._get(t)
        g.addCallbacks(self._got, self._failed)

    def _got(self, r: ValueResult) -> None:
        self._current = None
        out = self.d
        if out.called:
            return
        key = self._key
        if not self._check_removed:
            if not r.success:
                out.errback(NotFoundError("no such key", key=key))
            elif self._cas and r.cas != self._cas:
                out.errback(KeyExistsError("the key was modified since (CAS differs)",
                                           key=key))
            else:
                out.callback(OperationResult(key, r.cas))
        elif not r.success:
            out.callback(OperationResult(key, 0))
        elif self._clock.seconds() >= self._deadline:
            out.errback(TimeoutError("key not removed within %.3gs" % (self._timeout,),
                                     key=key))
        else:
            self._current = self._clock.callLater(self._interval, self._check)

    def _failed(self, f: Failure) -> Optional[Failure]:
        self._current = None
        if not self.d.called:
            self.d.errback(f)
        return None
