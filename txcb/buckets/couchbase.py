"""
An IBucket over a real Couchbase cluster, through the official Couchbase
Python SDK 4.x (``pip install 'txcb[couchbase]'``).

The SDK does the cluster protocol (bootstrap, SCRAM, TLS, vBucket maps,
rebalance and failover); :class:`CouchbaseBucket` maps the IBucket contract
onto its collection API and its results and errors onto txcb's.

The bridge to Twisted, chosen by measuring against ``twistd txcb
--couchbase`` (``bench/couchbase_backend_bench.py``): the SDK's **blocking**
API on the bucket's own worker threads (:mod:`~txcb.buckets.cbworkers`:
``threads`` daemon threads, each in one SDK call at a time; outcomes handed
back to the reactor in batches, one ``callFromThread`` per batch).  At most
``max_pending`` calls are queued or running; more errback
TemporaryFailError.  Plain gets made while two batches of them are out go
as one ``get_multi`` when the first comes back (:mod:`~txcb.buckets.cbbatch`).
The SDK's tracer and meter are turned off: in Python they cost more than
the operation.

What it requires of the reactor: ``callFromThread``, ``callLater``,
``seconds`` and ``addSystemEventTrigger``, so it runs under any reactor:
txcb's own epoll reactor (what ``twistd txcb`` runs by default), the asyncio
reactor, trial's.  The SDK's ``acouchbase`` and ``txcouchbase`` APIs need
Twisted's asyncio reactor installed (``txcouchbase`` installs it on import),
which ``twistd txcb`` does not run, and they were not faster per operation
than the blocking API on threads in the same measurement.

The rules, as every provider's:

* Values are txcb's ``(bytes, flags)`` passed through the SDK with a
  transcoder that changes nothing, so flags are Couchbase common flags both
  ways: what the SDK, any other Couchbase SDK or txcb writes, the others read.
* Every call has a timeout (``timeout``, or ``durable_timeout`` for a
  durable mutation), given to the SDK and kept by the reactor as well: the
  Deferred errbacks TimeoutError even if the worker is still blocked.
  ``cancel()`` fires CancelledError at once; a late outcome is dropped.
* ``persist_to``/``replicate_to`` are the SDK's client durability (it polls
  OBSERVE_SEQNO): ``persist_to=1`` is the active node's disk.  The bucket has
  ``replicas`` replicas (the URL's ``?replicas=N``, default 0, as
  ``twistd txcb --couchbase``); asking for more errbacks DurabilityError
  before anything is sent (so is the SDK's own refusal, if the cluster has
  fewer).  ``endure`` checks presence, CAS and removal; it cannot observe
  another writer's persistence through the SDK, so it errbacks
  NotSupportedError when asked for disks or replicas.
* A mutation of a locked key is retried by the SDK until the call's
  timeout, then errbacks TemporaryFailError, as the SDK reports it.
* Counters never create on the server: a missing key with ``initial`` is
  inserted as JSON text (full unsigned 64-bit range, unlike the SDK's
  signed ``initial``), retrying the increment if another client won.
* ``lookup_in`` / ``mutate_in`` go through the SDK's sub-document API, the
  statuses and errors as every provider's (:mod:`~txcb.buckets.cbsubdocs`
  says what the SDK cannot express: refused with NotSupportedError).
* ``flush`` (HTTP bucket management in the SDK) and ``scan`` errback
  NotSupportedError.
* ``stats`` are this provider's own: per operation counts, errors and
  latencies, hits and misses, what is pending.
"""

from __future__ import annotations

from datetime import timedelta
from typing import Any, Dict, Optional

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import deferLater
from zope.interface import implementer

from txcb.buckets.cbcalls import SdkCalls
from txcb.buckets.cbsubdocs import SubdocCalls
from txcb.buckets.cbsdk import expiry, parse_url, sdk_error, text_key
from txcb.errors import (
    NotSupportedError, TemporaryFailError, TimeoutError,
    NotFoundError, KeyExistsError, RC)
from txcb.formats import FMT_JSON
from txcb.interfaces import IBucket
from txcb.multi import MultiMixin
from txcb.results import OperationResult, ValueResult
from txcb.refusals import refuses_with_deferred
from txcb.verbs import StoreVerbs
from txcb.validation import (
    check_cas, check_delta, check_lock_ttl, check_ttl, resolve_durability)

__all__ = ["CouchbaseBucket", "parse_url"]


def _seqno(r: Any) -> int:
    token = r.mutation_token() if hasattr(r, "mutation_token") else None
    return token.sequence_number if token is not None else 0


@implementer(IBucket)
class CouchbaseBucket(StoreVerbs[Deferred], SdkCalls, SubdocCalls, MultiMixin):
    """
    An IBucket over one bucket (or collection) of a Couchbase cluster.

    :param url: ``couchbase://HOST[:PORT][/BUCKET]`` (``couchbases://`` for
        TLS; ``?replicas=N`` says how many replicas the bucket has).
    :param username: / :param password: the cluster user (never logged).
    :param reactor: provides callFromThread, callLater, seconds and
        addSystemEventTrigger (default: the global reactor, when made).
    :param timeout: seconds per operation; ``durable_timeout`` for durable
        mutations; ``connect_timeout`` for the SDK's bootstrap.
    :param threads: worker threads (each blocks in one SDK call; a durable
        mutation holds one while it waits).  Few: the SDK's Python layer holds
        the GIL, and each more thread makes the reactor wait longer for it
        after every socket call.
    :param max_pending: calls queued or running before TemporaryFailError.
    :param scope: / :param collection: a named collection instead of the
        bucket's default one.
    :param batch_gets: coalesce plain gets into ``get_multi`` calls while
        others are out (see :mod:`~txcb.buckets.cbbatch`).
    """

    UPSERT_OP, INSERT_OP, REPLACE_OP = "upsert", "insert", "replace"
    APPEND_OP, PREPEND_OP = "append", "prepend"

    # -- IBucket: reads ------------------------------------------------------------

    @refuses_with_deferred
    def get(self, key: Any, ttl: int = 0, quiet: bool = False,
            timeout: Optional[float] = None) -> Deferred:
        k = text_key(key)
        check_ttl(ttl, key)
        life = expiry(ttl)
        if life is None and timeout is None and self.batch_gets:
            refused = self._refused(key)
            if refused is not None:
                return refused
            d, done = self._track("get", key, self.timeout)
            self._gets.add((k, key, quiet, done))
            return d

        def work(coll: Any, t: Any) -> Any:
            try:
                if life is None:
                    r = coll.get(k, *self._opts("GetOptions", t))
                elif life.total_seconds() < 0:
                    r = coll.get(k, *self._opts("GetOptions", t))
                    coll.remove(k, *self._opts("RemoveOptions", t, cas=r.cas))
                else:
                    r = coll.get_and_touch(k, life, *self._opts("GetAndTouchOptions", t))
            except Exception as e:
                err = sdk_error("get", e, key)
                if quiet and isinstance(err, NotFoundError):
                    return ValueResult(key, rc=RC.KEY_ENOENT)
                return err
            return self._value(key, r)
        return self._call("get", key, work, timeout)

    @refuses_with_deferred
    def lock(self, key: Any, ttl: int = 15, timeout: Optional[float] = None) -> Deferred:
        k = text_key(key)
        check_lock_ttl(ttl, key)
        life = timedelta(seconds=ttl)
        return self._call("lock", key, lambda coll, t: self._value(
            key, coll.get_and_lock(k, life, *self._opts("GetAndLockOptions", t))), timeout)

    @refuses_with_deferred
    def unlock(self, key: Any, cas: int, timeout: Optional[float] = None) -> Deferred:
        k = text_key(key)
        check_cas(cas, key)

        def work(coll: Any, t: Any) -> Any:
            coll.unlock(k, cas, *self._opts("UnlockOptions", t))
            return OperationResult(key)
        return self._call("unlock", key, work, timeout)

    # -- IBucket: mutations ------------------------------------------------------------

    @refuses_with_deferred
    def _store(self, op: str, key: Any, value: Any, cas: int, ttl: int, format: Any,
               persist_to: int, replicate_to: int, timeout: Optional[float]) -> Deferred:
        k = text_key(key)
        check_ttl(ttl, key)
        if cas:
            check_cas(cas, key)
        durability = self._durability(persist_to, replicate_to, key)
        encoded = self._encode(value, format, key)
        life = expiry(ttl)
        past = life is not None and life.total_seconds() < 0
        if op == "upsert" and cas:
            op = "replace"  # the SDK's upsert takes no CAS; a CAS implies the key exists

        def work(coll: Any, t: Any) -> Any:
            kw = dict(expiry=None if past else life, durability=durability)
            if op == "replace":
                r = coll.replace(k, encoded, *self._opts("ReplaceOptions", t, cas=cas or None,
                                                        **kw))
            elif op == "insert":
                r = coll.insert(k, encoded, *self._opts("InsertOptions", t, **kw))
            else:
                r = coll.upsert(k, encoded, *self._opts("UpsertOptions", t, **kw))
            if past:  # an absolute time already gone: stored and expired at once
                coll.remove(k, *self._opts("RemoveOptions", t, cas=r.cas))
            return OperationResult(key, r.cas, RC.SUCCESS, _seqno(r))
        return self._call(op, key, work, timeout, durability is not None)

    @refuses_with_deferred
    def remove(self, key: Any, cas: int = 0, quiet: bool = False, persist_to: int = 0,
               replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        k = text_key(key)
        if cas:
            check_cas(cas, key)
        durability = self._durability(persist_to, replicate_to, key)

        def work(coll: Any, t: Any) -> Any:
            try:
                r = coll.remove(k, *self._opts("RemoveOptions", t, cas=cas or None,
                                              durability=durability))
            except Exception as e:
                err = sdk_error("remove", e, key)
                if quiet and isinstance(err, NotFoundError):
                    return OperationResult(key, rc=RC.KEY_ENOENT)
                return err
            return OperationResult(key, r.cas, RC.SUCCESS, _seqno(r))
        return self._call("remove", key, work, timeout, durability is not None)

    @refuses_with_deferred
    def touch(self, key: Any, ttl: int, timeout: Optional[float] = None) -> Deferred:
        k = text_key(key)
        check_ttl(ttl, key)
        life = expiry(ttl) or timedelta(0)

        def work(coll: Any, t: Any) -> Any:
            if life.total_seconds() < 0:
                r = coll.remove(k, *self._opts("RemoveOptions", t))
            else:
                r = coll.touch(k, life, *self._opts("TouchOptions", t))
            return OperationResult(key, r.cas, RC.SUCCESS, _seqno(r))
        return self._call("touch", key, work, timeout)

    @refuses_with_deferred
    def counter(self, key: Any, delta: int = 1, initial: Optional[int] = None,
                ttl: int = 0, timeout: Optional[float] = None) -> Deferred:
        k = text_key(key)
        check_delta(delta, initial, key)
        check_ttl(ttl, key)
        life = expiry(ttl)
        return self._call("counter", key, lambda coll, t: self._count(
            coll, t, key, k, delta, initial, life), timeout)

    def _count(self, coll: Any, t: Any, key: Any, k: str, delta: int,
               initial: Optional[int], life: Any) -> ValueResult:
        o = self._sdk.o
        binary = coll.binary()
        step = binary.increment if delta >= 0 else binary.decrement
        opts = dict(delta=o.DeltaValue(abs(delta)), initial=o.SignedInt64(-1))
        for _ in range(3):
            try:
                r = step(k, *self._opts("IncrementOptions" if delta >= 0 else
                                       "DecrementOptions", t, **opts))
                v = r.content
                return ValueResult(key, b"%d" % v, FMT_JSON, r.cas, RC.SUCCESS,
                                   self.transcoder, v, _seqno(r))
            except Exception as e:
                if initial is None or not isinstance(sdk_error("counter", e, key),
                                                     NotFoundError):
                    raise
            raw = b"%d" % initial
            try:
                r = coll.insert(k, (raw, FMT_JSON), *self._opts(
                    "InsertOptions", t, expiry=life if life is None or
                    life.total_seconds() > 0 else None))
                return ValueResult(key, raw, FMT_JSON, r.cas, RC.SUCCESS, self.transcoder,
                                   initial, _seqno(r))
            except Exception as e:
                if not isinstance(sdk_error("counter", e, key), KeyExistsError):
                    raise  # else: created meanwhile: count again
        raise TemporaryFailError("counter: the key kept appearing and vanishing", key=key)

    @refuses_with_deferred
    def _concat(self, op: str, key: Any, value: Any, cas: int, persist_to: int,
                replicate_to: int, timeout: Optional[float]) -> Deferred:
        k = text_key(key)
        if cas:
            check_cas(cas, key)
        durability = self._durability(persist_to, replicate_to, key)
        data = self._raw(value, key)

        def work(coll: Any, t: Any) -> Any:
            binary = coll.binary()
            name = "AppendOptions" if op == "append" else "PrependOptions"
            r = getattr(binary, op)(k, data, *self._opts(name, t, cas=cas or None,
                                                        durability=durability))
            return OperationResult(key, r.cas, RC.SUCCESS, _seqno(r))
        # "concat": a missing key is NOT_STORED (see cbsdk._BY_OP)
        return self._call("concat", key, work, timeout, durability is not None)

    # -- IBucket: the rest ----------------------------------------------------------------

    @refuses_with_deferred
    def endure(self, key: Any, persist_to: int = -1, replicate_to: int = -1, cas: int = 0,
               check_removed: bool = False, timeout: float = 5.0,
               interval: float = 0.01) -> Deferred:
        """Presence, CAS and removal; disks and replicas cannot be observed here."""
        k = text_key(key)
        p, r = resolve_durability(persist_to, replicate_to, self.max_persist_to,
                                  self.max_replicate_to, key)
        if p or r:
            return fail(NotSupportedError(
                "endure cannot observe persistence or replication through the Couchbase "
                "SDK: pass persist_to/replicate_to to the mutation instead", key=key))

        deadline = self._reactor.seconds() + timeout

        def work(coll: Any, t: Any) -> Any:
            found = coll.exists(k, *self._opts("ExistsOptions", t))
            if check_removed:
                return found.exists or OperationResult(key)
            if not found.exists:
                return NotFoundError(key=key)
            if cas and found.cas != cas:
                return KeyExistsError("the key has another CAS", key=key)
            return OperationResult(key, found.cas)

        def attempt() -> Deferred:
            left = deadline - self._reactor.seconds()
            return self._call("endure", key, work, max(min(left, self.timeout), 0.001)
                              ).addCallback(again)

        def again(outcome: Any) -> Any:
            if outcome is not True:
                return outcome
            if self._reactor.seconds() + interval >= deadline:
                raise TimeoutError("the key was still there after %.3gs" % (timeout,),
                                   key=key)
            return deferLater(self._reactor, interval, attempt)
        return attempt()

    def flush(self) -> Deferred:
        return fail(NotSupportedError(
            "flush is not offered through the Couchbase SDK's key-value API (it is the "
            "cluster's HTTP bucket management)"))

    def scan(self, prefix: Any = None, start: Any = None, end: Any = None,
             ids_only: bool = False, batch_size: int = 1000,
             batch_bytes: int = 1048576) -> Deferred:
        return fail(NotSupportedError("scan is not supported by the Couchbase SDK provider"))

    def stats(self) -> Deferred:
        s: Dict[str, Any] = self._stats.snapshot()
        s.update(connections=1 if self._coll is not None else 0, pending=self._pending,
                 threads=self._pool.size, bucket=self._url.bucket,
                 bucket_type=self.bucket_type,
                 max_persist_to=self.max_persist_to, max_replicate_to=self.max_replicate_to)
        return succeed(s)
