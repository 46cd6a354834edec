"""
The ``*_multi`` operations, built once on top of a provider's single-key ones.

A provider's single-key methods return Deferreds without waiting for one
another, so for a remote bucket the requests go out pipelined.  Results are
gathered into a :class:`~txcb.results.MultiResult` with the SDK's error rule,
:func:`settle_multi` (the one place it is written): if any key failed
(beyond what ``quiet`` covers), the Deferred errbacks with the first failed
key's error, whose ``all_results`` holds every key's result.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, List, Optional, Tuple

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from txcb.errors import CouchbaseError, RC
from txcb.limits import DEFAULT_LOCK_TTL
from txcb.results import MultiResult, OperationResult, ValueResult

__all__ = ["MultiMixin", "gather_results", "settle_multi", "unique"]


def settle_multi(outcomes: Iterable[Tuple[Any, Any]], quiet: bool = False,
                 result_cls: type = OperationResult) -> Any:
    """
    The one rule for the outcome of a ``*_multi`` operation.

    ``outcomes``: each key's ``(key, outcome)`` in the call's key order, the
    outcome being the key's result, or its error (an exception or a
    :class:`~twisted.python.failure.Failure` of one).

    Every key gets a result in the returned :class:`~txcb.results.MultiResult`:
    a failed key's is the error's ``result`` if it has one, else
    ``result_cls(key, rc=the error's rc)`` (``RC.EINTERNAL`` for an error
    that is not a CouchbaseError).  With ``quiet``, a KEY_ENOENT error
    counts as a miss, not a failure.  If no key failed, the MultiResult is
    returned; else the first failed key's error (as given: exception or
    Failure), its ``all_results`` set to the MultiResult (where the error
    allows attributes).  Pure: the caller fires or raises what it gets.
    """
    results = MultiResult()
    first: Any = None
    for key, r in outcomes:
        if not isinstance(r, (BaseException, Failure)):
            results[key] = r
            continue
        err = r.value if isinstance(r, Failure) else r
        if isinstance(err, CouchbaseError):
            rc, res = err.rc, err.result
        else:
            rc, res = RC.EINTERNAL, None
        results[key] = res if res is not None else result_cls(key, rc=rc)
        if first is None and not (quiet and rc == RC.KEY_ENOENT):
            first = r
    if first is None:
        return results
    try:
        (first.value if isinstance(first, Failure) else first).all_results = results
    except AttributeError:
        pass
    return first


def gather_results(pairs: List[Tuple[Any, Deferred]], result_cls: type = OperationResult,
                   quiet: bool = False) -> Deferred:
    """
    Combine per-key Deferreds into one Deferred of a MultiResult, once every
    key's has fired, by :func:`settle_multi`'s rule (errback: the first failed
    key's Failure).  Cancelling it cancels every key's Deferred.
    """
    outcomes: List[Any] = [None] * len(pairs)
    remaining = [len(pairs)]

    def cancel(_: Deferred) -> None:
        for _k, dk in pairs:
            dk.cancel()

    out: Deferred = Deferred(cancel)

    def settled(outcome: Any, idx: int) -> None:
        outcomes[idx] = outcome
        remaining[0] -= 1
        if not remaining[0]:
            finish()

    def finish() -> None:
        done = settle_multi(zip([k for k, _d in pairs], outcomes), quiet, result_cls)
        if isinstance(done, Failure):
            out.errback(done)
        else:
            out.callback(done)

    if not pairs:
        out.callback(MultiResult())
    for idx, (_key, dk) in enumerate(pairs):
        dk.addBoth(settled, idx)
    return out


def unique(keys: Iterable[Any]) -> List[Any]:
    """The keys of a ``*_multi`` call once each, in their first order."""
    if isinstance(keys, (str, bytes)):
        raise TypeError("keys must be an iterable of keys, not a single key")
    return list(dict.fromkeys(keys))


class MultiMixin:
    """``*_multi`` methods for any class with the IBucket single-key methods."""

    if TYPE_CHECKING:
        # The single-key methods the subclass provides (see IBucket).  Declared
        # for the type checker only: at run time they must come from the
        # subclass (and hasattr/getattr on the class must not see stubs here).
        def get(self, key: Any, ttl: int = 0, quiet: bool = False) -> Deferred: ...

        def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0,
                   format: Any = None, persist_to: int = 0,
                   replicate_to: int = 0) -> Deferred: ...

        def insert(self, key: Any, value: Any, ttl: int = 0, format: Any = None,
                   persist_to: int = 0, replicate_to: int = 0) -> Deferred: ...

        def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0,
                    format: Any = None, persist_to: int = 0,
                    replicate_to: int = 0) -> Deferred: ...

        def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
                   replicate_to: int = 0) -> Deferred: ...

        def touch(self, key: Any, ttl: int) -> Deferred: ...

        def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                    ttl: int = 0) -> Deferred: ...

        def lock(self, key: Any, ttl: int = DEFAULT_LOCK_TTL) -> Deferred: ...

        def unlock(self, key: Any, cas: int) -> Deferred: ...

    def _each(self, keys: Iterable[Any], call: Callable[[Any], Deferred],
              result_cls: type = OperationResult) -> Deferred:
        return gather_results([(k, call(k)) for k in unique(keys)], result_cls)

    def _each_item(self, mapping: Any, call: Callable[[Any, Any], Deferred]) -> Deferred:
        items = mapping.items() if hasattr(mapping, "items") else mapping
        return gather_results([(k, call(k, v)) for k, v in items])

    def get_multi(self, keys: Iterable[Any], ttl: int = 0, quiet: bool = False) -> Deferred:
        return self._each(keys, lambda k: self.get(k, ttl=ttl, quiet=quiet), ValueResult)

    def upsert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0) -> Deferred:
        return self._each_item(keys, lambda k, v: self.upsert(
            k, v, ttl=ttl, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def insert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0) -> Deferred:
        return self._each_item(keys, lambda k, v: self.insert(
            k, v, ttl=ttl, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def replace_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                      replicate_to: int = 0) -> Deferred:
        return self._each_item(keys, lambda k, v: self.replace(
            k, v, ttl=ttl, format=format, persist_to=persist_to, replicate_to=replicate_to))

    def remove_multi(self, keys: Iterable[Any], quiet: bool = False, persist_to: int = 0,
                     replicate_to: int = 0) -> Deferred:
        return self._each(keys, lambda k: self.remove(
            k, quiet=quiet, persist_to=persist_to, replicate_to=replicate_to))

    def touch_multi(self, keys: Iterable[Any], ttl: int = 0) -> Deferred:
        return self._each(keys, lambda k: self.touch(k, ttl))

    def counter_multi(self, keys: Iterable[Any], delta: int = 1, initial: Any = None,
                      ttl: int = 0) -> Deferred:
        return self._each(keys, lambda k: self.counter(k, delta=delta, initial=initial,
                                                       ttl=ttl), ValueResult)

    def lock_multi(self, keys: Iterable[Any], ttl: int = DEFAULT_LOCK_TTL) -> Deferred:
        return self._each(keys, lambda k: self.lock(k, ttl=ttl), ValueResult)

    def unlock_multi(self, keys: Any) -> Deferred:
        return self._each_item(keys, lambda k, cas: self.unlock(k, cas))
