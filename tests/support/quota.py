"""
Bucket doubles for the RAM quota.

For the servers' paths: an ISyncBucket whose
synchronous calls raise WouldBlock for the keys the test marks ejected
(their values "on disk"), whose IBucket calls answer those keys only after
a delay on a task.Clock (the read back from disk), and which can refuse the
mutations that would grow its memory (NoMemoryError, as a full bucket with
``eviction="none"``).

For the service's (metrics, options): StatsBucket, whose stats carry the
memory figures a quota'd bucket reports (MEMORY_STATS), or none of them.
"""

from twisted.internet.defer import Deferred, fail, succeed
from zope.interface import implementer

from txcb.buckets.persistent import PersistentBucket
from txcb.errors import WouldBlock
from txcb.interfaces import IBucket, ISyncBucket

__all__ = ["EjectingBucket", "AlwaysEjectingBucket", "READ_BACK", "StatsBucket",
           "MEMORY_STATS"]

#: Seconds an ejected key's IBucket call takes (its value read back).
READ_BACK = 1.0

#: The ISyncBucket calls, and where their key is (argument index).
_SYNC = {"get_sync": 0, "get_meta_sync": 0, "remove_sync": 0, "touch_sync": 0,
         "lock_sync": 0, "unlock_sync": 0, "counter_sync": 0, "lookup_in_sync": 0,
         "mutate_in_sync": 0, "store_sync": 1, "concat_sync": 1}
#: The IBucket calls of one key (the first argument).
_ASYNC = frozenset(("get", "upsert", "insert", "replace", "append", "prepend", "remove",
                    "touch", "lock", "unlock", "counter", "lookup_in", "mutate_in"))
#: The calls that grow memory: refused while the double is full.
_GROWING = frozenset(("store_sync", "concat_sync", "counter_sync", "mutate_in_sync",
                      "upsert", "insert", "replace", "append", "prepend", "counter",
                      "mutate_in"))


@implementer(IBucket, ISyncBucket)
class EjectingBucket:
    """
    ``inner`` (an EmbeddedBucket) with values that may be ejected.

    - ``ejected``: keys (bytes) whose ``*_sync`` calls raise WouldBlock (and
      are counted in ``blocked``, as ``(call, key)``), and whose IBucket
      calls answer ``READ_BACK`` seconds later on ``clock``, the key then
      resident again (``read_back`` lists them in order);
    - ``full``: an error class (NoMemoryError; TemporaryFailError for a disk
      that is behind), or None: while set, every growing mutation fails with
      it (raised by the sync call, errbacked by the IBucket one).
    Everything else is the inner bucket's.
    """

    def __init__(self, inner, clock, delay=READ_BACK):
        self._inner = inner
        self._clock = clock
        self._delay = delay
        self.ejected = set()
        self.full = None
        self.blocked = []
        self.read_back = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        call = getattr(self._inner, name)
        if name in _SYNC:
            return self._sync(name, call)
        if name in _ASYNC:
            return self._async(name, call)
        if name == "get_multi":
            return self._get_multi
        return call

    def _refused(self):
        return self.full("the bucket's memory is full")

    def _sync(self, name, call):
        where = _SYNC[name]

        def sync(*args, **kw):
            key = args[where]
            if key in self.ejected:
                self.blocked.append((name, key))
                raise WouldBlock((key,))
            if self.full and name in _GROWING:
                raise self._refused()
            return call(*args, **kw)
        return sync

    def _async(self, name, call):
        def deferred(key, *args, **kw):
            if self.full and name in _GROWING:
                return fail(self._refused())
            if key not in self.ejected:
                return call(key, *args, **kw)
            return self._later([key], lambda: call(key, *args, **kw))
        return deferred

    def _get_multi(self, keys, *args, **kw):
        ejected = [k for k in keys if k in self.ejected]
        call = self._inner.get_multi
        if not ejected:
            return call(keys, *args, **kw)
        return self._later(ejected, lambda: call(keys, *args, **kw))

    def _later(self, keys, call):
        """``call()``'s result, ``READ_BACK`` seconds from now, ``keys`` resident again."""
        d = Deferred()

        def read():
            for k in keys:
                self.ejected.discard(k)
                self.read_back.append(k)
            call().chainDeferred(d)
        self._clock.callLater(self._delay, read)
        return d


class AlwaysEjectingBucket(PersistentBucket):
    """
    A persistent bucket that ejects a key's value (if it is clean, unlocked
    and ejectable) each time an operation first looks the key up: run
    through the contract suite, every operation meets ejected values and
    takes the read-back path (its retry, once the value is back, does not
    eject again).  Every mutation waits for the disk (persist_to=1), so
    what the next operation looks up is clean.
    """

    def __init__(self, *args, **kwargs):
        self.retrying = False
        PersistentBucket.__init__(self, *args, **kwargs)

    def _lookup(self, k, now):
        item = self._items.get(k)
        if item is not None and not self.retrying:
            self._free_item(k, item)
        return PersistentBucket._lookup(self, k, now)

    def _mutate(self, key, persist_to, replicate_to, call, *args):
        # Every mutation waits for the disk: the next lookup finds it clean.
        return PersistentBucket._mutate(self, key, persist_to or 1, replicate_to, call, *args)

    def _again(self, key, call, args, fetches):
        self.retrying = True
        try:
            return PersistentBucket._again(self, key, call, args, fetches)
        finally:
            self.retrying = False


#: The memory figures of a bucket's stats, each with its own value.
MEMORY_STATS = {
    "mem_used": 1500000, "quota": 2097152, "mem_high_wat": 1782579,
    "mem_low_wat": 1572864, "resident_items": 40, "resident_ratio": 0.8,
    "ejections": 7, "evictions": 3, "bg_fetches": 5, "oom_errors": 2, "eviction": "value",
}


class StatsBucket:
    """
    Answers ``stats_sync()`` and ``stats()`` with ``figures`` (default: the
    common counters and MEMORY_STATS) and does nothing else.
    """

    def __init__(self, figures=None, name="default"):
        self.name = name
        if figures is None:
            figures = dict(MEMORY_STATS, items=50, bytes=1000, bucket_type="couchbase")
        self.figures = figures

    def stats_sync(self):
        return dict(self.figures)

    def stats(self):
        return succeed(self.stats_sync())
