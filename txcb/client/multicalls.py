"""
The Twisted client's calls over many keys: a ``*_multi`` call gathering one
reply per key (:class:`_MultiCall`) and GET_MULTI spread over a
connection's frames (:class:`_GetMulti`), for :class:`~txcb.client.remote.RemoteBucket`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Dict, List, Optional

from twisted.internet.defer import CancelledError, Deferred
from twisted.python.failure import Failure

from txcb.client import requests as _rq
from txcb.client.replies import failed_key_result, multi_frame
from txcb.errors import ProtocolError
from txcb.results import MultiResult

if TYPE_CHECKING:
    from txcb.client.protocol import BucketClientProtocol

__all__: list = []


class _Slot:
    """One key of a multi-key call, in the pending table instead of a Deferred."""

    __slots__ = ("multi", "idx", "key", "proto", "opaque")

    def __init__(self, multi: "_MultiCall", idx: int, key: Any,
                 proto: "BucketClientProtocol") -> None:
        self.multi = multi
        self.idx = idx
        self.key = key
        self.proto = proto
        self.opaque = 0

    def callback(self, result: Any) -> None:
        self.multi.ok(self.idx, self.key, result)

    def errback(self, error: Any) -> None:
        self.multi.failed(self.idx, self.key,
                          error if isinstance(error, Failure) else Failure(error))


class _MultiCall:
    """
    The Deferred of a multi-key call and its per-key outcomes, with
    :func:`txcb.multi.gather_results`'s rules: a MultiResult of every key,
    or the first (in key order) failed key's error carrying it as
    ``all_results``; cancelling cancels every key's request.
    """

    def __init__(self, result_cls: type) -> None:
        self.result_cls = result_cls
        self.results = MultiResult()
        self.errors: List[Any] = []
        self.slots: List[_Slot] = []
        self.deferreds: List[Deferred] = []
        self.count = 0
        self.remaining = 0
        self.started = False
        #: idx -> position in key order, where they differ (see RemoteBucket._gather).
        self.order: Optional[List[int]] = None
        self.d: Deferred = Deferred(self._cancel)

    def send(self, p: "BucketClientProtocol", fields: Any, timeout: Optional[float]) -> None:
        slot = _Slot(self, self.count, fields[1], p)
        self.count += 1
        self.remaining += 1
        self.slots.append(slot)
        slot.opaque = p.send(slot, fields, timeout)

    def add(self, key: Any, d: Deferred) -> None:
        """A key whose call gave a Deferred (an argument error, or a reconnection wait)."""
        idx = self.count
        self.count += 1
        self.remaining += 1
        self.deferreds.append(d)
        d.addCallbacks(lambda r: self.ok(idx, key, r), lambda f: self.failed(idx, key, f))

    def ok(self, idx: int, key: Any, result: Any) -> None:
        self.results[key] = result
        self._done()

    def failed(self, idx: int, key: Any, f: Failure) -> None:
        self.results[key] = failed_key_result(f.value, key, self.result_cls)
        self.errors.append((idx, f))
        self._done()

    def _done(self) -> None:
        self.remaining -= 1
        if self.started and not self.remaining:
            self._finish()

    def start(self) -> Deferred:
        self.started = True
        if not self.remaining:
            self._finish()
        return self.d

    def _finish(self) -> None:
        self.slots = []
        self.deferreds = []
        if self.d.called:
            return
        if self.errors:
            order = self.order
            f = min(self.errors, key=lambda e: e[0] if order is None else order[e[0]])[1]
            try:
                f.value.all_results = self.results
            except AttributeError:
                pass
            self.d.errback(f)
        else:
            self.d.callback(self.results)

    def _cancel(self, _d: Deferred) -> None:
        slots, self.slots = self.slots, []
        for slot in slots:
            if slot.proto.withdraw(slot.opaque, slot):
                slot.errback(CancelledError())
        for d in self.deferreds:
            d.cancel()


class _GetMulti:
    """
    A ``get_multi`` made of GET_MULTI requests (one per chunk of keys): its
    Deferred, and every key's result as the replies come, with the rules of
    :func:`txcb.multi.gather_results` (see :mod:`txcb.client.requests`).
    Cancelling takes its requests off the pending table.
    """

    __slots__ = ("keys", "quiet", "transcoder", "results", "errors", "parts", "left", "d")

    def __init__(self, keys: List[Any], quiet: bool, transcoder: Any) -> None:
        self.keys = keys
        self.quiet = quiet
        self.transcoder = transcoder
        self.results = MultiResult()
        self.errors: Dict[Any, Any] = {}
        self.parts: List[_GetMultiPart] = []
        self.left = 0
        self.d: Deferred = Deferred(self._cancel)

    def part_done(self) -> None:
        self.left -= 1
        if not self.left:
            self._finish()

    def _finish(self) -> None:
        self.parts = []
        if self.d.called:
            return
        error = _rq.multi_outcome(self.keys, self.results, self.errors)
        if error is None:
            self.d.callback(self.results)
        else:
            self.d.errback(error)

    def _cancel(self, _d: Deferred) -> None:
        parts, self.parts = self.parts, []
        for part in parts:
            if part.done:
                continue
            part.done = True
            part.proto.withdraw(part.opaque, part)
        # Deferred.cancel then errbacks self.d with CancelledError.


class _GetMultiPart:
    """One GET_MULTI request of a :class:`_GetMulti`, in the pending table."""

    __slots__ = ("call", "keys", "pos", "proto", "opaque", "done")

    def __init__(self, call: _GetMulti, keys: List[Any], proto: "BucketClientProtocol") -> None:
        self.call = call
        self.keys = keys
        self.pos = 0  # keys[:pos] are answered
        self.proto = proto
        self.opaque = 0
        self.done = False

    def frame(self, payload: bytes, last: bool) -> None:
        """A reply frame; raises ProtocolError if it does not parse or fit the keys."""
        if self.done:
            return
        c = self.call
        self.pos = multi_frame(payload, self.keys, self.pos, last, c.quiet, c.transcoder,
                               c.results, c.errors)
        if last:
            self.done = True
            c.part_done()

    def callback(self, result: Any) -> None:  # a reply not taken as frames: cannot happen
        self.errback(ProtocolError("unexpected GET_MULTI reply"))

    def errback(self, error: Any) -> None:
        """The request failed as a whole: every key not answered yet fails with it."""
        if self.done:
            return
        self.done = True
        c = self.call
        _rq.multi_fail(self.keys, self.pos, error.value if isinstance(error, Failure) else error,
                       c.results, c.errors)
        c.part_done()
