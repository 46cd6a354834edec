"""
The memcached pool's ``*_multi`` operations that go out as one pipelined
batch per server (see :meth:`Dispatcher.multi`): ``get_multi`` as GETKQ
(GATKQ with a ttl), the stores as SETQ/ADDQ/REPLACEQ and ``remove_multi`` as
DELETEQ, or their loud forms when ``quiet_multi`` is off.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Tuple

from twisted.internet.defer import Deferred, fail

from txcb.buckets.mcpool_dispatch import Dispatcher
from txcb.errors import ArgumentError, CouchbaseError
from txcb.multi import unique
from txcb.validation import check_ttl, resolve_durability
from txcb.wire import mcbinary as mcb

__all__ = ["MultiOperations"]

O = mcb.Opcode


def _keyed(to_wire: Callable[[Any], bytes], opcode: int, extras: bytes
           ) -> Callable[[int, Any], Tuple[bytes, int, bytes, bytes]]:
    """A multi's ``build`` sending ``opcode`` for every key, as ``to_wire`` makes it."""
    def build(i: int, key: Any) -> Tuple[bytes, int, bytes, bytes]:
        return to_wire(key), opcode, extras, b""
    return build


class MultiOperations:
    """
    The batched ``*_multi`` methods of :class:`MemcachedPool` (touch_multi,
    counter_multi, lock_multi and unlock_multi stay MultiMixin's pipelined
    single-key requests: TOUCH has no quiet form, counters need their values).

    The class using it provides ``_dispatcher`` (a :class:`Dispatcher`),
    ``_encode(value, format, key) -> (bytes, flags)``, ``_key(key) -> bytes``
    (the key as sent, with the pool's namespace) and ``_namespace``.
    """

    _dispatcher: Dispatcher
    _namespace: bytes
    _key: Callable[[Any], bytes]

    if TYPE_CHECKING:
        def _encode(self, value: Any, format: Any, key: Any) -> Tuple[bytes, int]: ...

    def get_multi(self, keys: Iterable[Any], ttl: int = 0, quiet: bool = False,
                  timeout: Optional[float] = None) -> Deferred:
        """One GETKQ (GATKQ with a ttl) batch per server, each closed by a NOOP."""
        try:
            keys = unique(keys)
            if ttl:
                check_ttl(ttl)
        except (CouchbaseError, TypeError) as e:
            return fail(e if isinstance(e, CouchbaseError) else ArgumentError(str(e)))
        if ttl:
            how: Any = (O.GATKQ, mcb.touch_extras(ttl))
        else:
            how = (O.GETKQ, b"")
        if self._namespace:  # the dispatcher's fast path knows no namespace
            how = _keyed(self._key, *how)
        return self._dispatcher.multi(keys, how, True, quiet, "get", timeout)

    def _store_multi(self, loud: int, quiet_op: int, verb: str, mapping: Any, ttl: int,
                     format: Any, persist_to: int, replicate_to: int,
                     timeout: Optional[float]) -> Deferred:
        try:
            items = list(mapping.items() if hasattr(mapping, "items") else mapping)
            if ttl:
                check_ttl(ttl)
            if persist_to or replicate_to:
                resolve_durability(persist_to, replicate_to, 0, 0, None)
        except (CouchbaseError, TypeError, ValueError) as e:
            return fail(e if isinstance(e, CouchbaseError) else ArgumentError(str(e)))
        values = dict(items)
        keys = list(values)
        dispatcher = self._dispatcher
        opcode = quiet_op if dispatcher.quiet_multi else loud
        encode = self._encode

        def build(i: int, key: Any) -> Tuple[bytes, int, bytes, bytes]:
            k = self._key(key)
            data, flags = encode(values[key], format, key)
            return k, opcode, mcb.store_extras(flags, ttl), data
        return dispatcher.multi(keys, build, False, False, verb, timeout)

    def upsert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        """SETQ per key, a NOOP per server (results have cas 0 unless ``quiet_multi`` is off)."""
        return self._store_multi(O.SET, O.SETQ, "upsert", keys, ttl, format, persist_to,
                                 replicate_to, timeout)

    def insert_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        return self._store_multi(O.ADD, O.ADDQ, "insert", keys, ttl, format, persist_to,
                                 replicate_to, timeout)

    def replace_multi(self, keys: Any, ttl: int = 0, format: Any = None, persist_to: int = 0,
                      replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        return self._store_multi(O.REPLACE, O.REPLACEQ, "replace", keys, ttl, format,
                                 persist_to, replicate_to, timeout)

    def remove_multi(self, keys: Iterable[Any], quiet: bool = False, persist_to: int = 0,
                     replicate_to: int = 0, timeout: Optional[float] = None) -> Deferred:
        try:
            keys = unique(keys)
            if persist_to or replicate_to:
                resolve_durability(persist_to, replicate_to, 0, 0, None)
        except (CouchbaseError, TypeError) as e:
            return fail(e if isinstance(e, CouchbaseError) else ArgumentError(str(e)))
        dispatcher = self._dispatcher
        opcode = O.DELETEQ if dispatcher.quiet_multi else O.DELETE

        def build(i: int, key: Any) -> Tuple[bytes, int, bytes, bytes]:
            return self._key(key), opcode, b"", b""
        return dispatcher.multi(keys, build, False, quiet, "remove", timeout)
