"""
Coalesced reads for :class:`txcb.buckets.couchbase.CouchbaseBucket`,
self-clocking as Nagle's rule: a plain get goes to a worker at once while
fewer than ``max_in_flight`` batches are out; else it waits with the others
for the first batch to come back, and they go as one ``get_multi``.  An idle
bucket adds no latency; a busy one (a proxy's burst of client requests) pays
one worker hand-off per batch instead of per key.  Each key keeps its own
Deferred, deadline and cancellation; duplicate keys in a batch are read once.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, Tuple

from txcb.buckets.cbsdk import sdk_error
from txcb.errors import InternalError, NotFoundError, RC
from txcb.results import ValueResult

__all__ = ["GetBatcher"]

#: (SDK key, caller's key, quiet, done(outcome))
Entry = Tuple[str, Any, bool, Callable[[Any], None]]


class GetBatcher:
    """
    :param submit: ``submit(run, then)`` of the bucket's workers.
    :param collection: returns the SDK collection (on a worker).
    :param value: ``value(key, get_result)`` -> ValueResult.
    :param max_batch: a batch this big goes at once.
    :param max_in_flight: batches out at once before gets wait to be batched.
    """

    def __init__(self, reactor: Any, submit: Callable[..., None],
                 collection: Callable[[], Any], value: Callable[[Any, Any], ValueResult],
                 max_batch: int = 256, max_in_flight: int = 2) -> None:
        self._reactor = reactor
        self._submit = submit
        self._collection = collection
        self._value = value
        self.max_batch = max_batch
        self.max_in_flight = max_in_flight
        self._in_flight = 0
        self._batch: List[Entry] = []

    def add(self, entry: Entry) -> None:
        self._batch.append(entry)
        if self._in_flight < self.max_in_flight or len(self._batch) >= self.max_batch:
            self.flush()

    def flush(self) -> None:
        batch, self._batch = self._batch, []
        if batch:
            self._in_flight += 1
            self._submit(lambda: self._run(batch), lambda outcomes: self._deliver(
                batch, outcomes))

    def _deliver(self, batch: List[Entry], outcomes: List[Any]) -> None:
        self._in_flight -= 1
        for (_k, _key, _quiet, done), outcome in zip(batch, outcomes):
            done(outcome)
        if self._batch and self._in_flight < self.max_in_flight:
            self.flush()

    def _run(self, batch: List[Entry]) -> List[Any]:
        """On a worker: each entry's result or error (never raises)."""
        try:
            found, missing = self._read([k for k, _key, _q, _d in batch])
        except BaseException as e:
            return [sdk_error("get", e, key) for _k, key, _q, _d in batch]
        return [self._outcome(found, missing, k, key, quiet) for k, key, quiet, _d in batch]

    def _read(self, keys: List[str]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
        coll = self._collection()
        unique = list(dict.fromkeys(keys))
        if len(unique) == 1:
            try:
                return {unique[0]: coll.get(unique[0])}, {}
            except Exception as e:
                return {}, {unique[0]: e}
        r = coll.get_multi(unique, return_exceptions=True)
        return r.results, r.exceptions

    def _outcome(self, found: Dict[str, Any], missing: Dict[str, Any], k: str, key: Any,
                 quiet: bool) -> Any:
        if k in found:
            try:
                return self._value(key, found[k])
            except Exception as e:
                return InternalError("cannot read the SDK's result: %s" % (e,), key=key)
        err = sdk_error("get", missing.get(k) or InternalError("no result", key=key), key)
        if quiet and isinstance(err, NotFoundError):
            return ValueResult(key, rc=RC.KEY_ENOENT)
        return err
