"""
The five store verbs, written once on top of a provider's ``_store`` and
``_concat``.

``upsert``, ``insert`` and ``replace`` differ only in the opcode they send
and in ``insert`` sending no CAS, ``append`` and ``prepend`` only in the
opcode: a provider that writes them through one ``_store(opcode, key, value,
cas, ttl, format, persist_to, replicate_to, timeout)`` and one
``_concat(opcode, key, value, cas, persist_to, replicate_to, timeout)``
names its five opcodes (or whatever its ``_store`` and ``_concat`` tell the
verbs apart by) and inherits the verbs from :class:`StoreVerbs`.
What those return (a Deferred, or a result for a blocking client) the verbs
return.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Generic, Optional, TypeVar

__all__ = ["StoreVerbs"]

#: What a provider's verbs return: a Deferred, or a result.
R = TypeVar("R")


class StoreVerbs(Generic[R]):
    """
    ``upsert`` / ``insert`` / ``replace`` through ``self._store`` and
    ``append`` / ``prepend`` through ``self._concat``, with the provider's
    ``UPSERT_OP``, ``INSERT_OP``, ``REPLACE_OP``, ``APPEND_OP`` and
    ``PREPEND_OP``.
    """

    UPSERT_OP: Any
    INSERT_OP: Any
    REPLACE_OP: Any
    APPEND_OP: Any
    PREPEND_OP: Any

    if TYPE_CHECKING:
        def _store(self, opcode: Any, key: Any, value: Any, cas: int, ttl: int, format: Any,
                   persist_to: int, replicate_to: int, timeout: Optional[float]) -> R: ...

        def _concat(self, opcode: Any, key: Any, value: Any, cas: int, persist_to: int,
                    replicate_to: int, timeout: Optional[float]) -> R: ...

    def upsert(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> R:
        """Store a value whether or not the key exists."""
        return self._store(self.UPSERT_OP, key, value, cas, ttl, format, persist_to,
                           replicate_to, timeout)

    def insert(self, key: Any, value: Any, ttl: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> R:
        """Store a value only if the key is absent (else KeyExistsError)."""
        return self._store(self.INSERT_OP, key, value, 0, ttl, format, persist_to,
                           replicate_to, timeout)

    def replace(self, key: Any, value: Any, cas: int = 0, ttl: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0,
                timeout: Optional[float] = None) -> R:
        """Store a value only if the key exists (else NotFoundError)."""
        return self._store(self.REPLACE_OP, key, value, cas, ttl, format, persist_to,
                           replicate_to, timeout)

    def append(self, key: Any, value: Any, cas: int = 0, format: Any = None,
               persist_to: int = 0, replicate_to: int = 0,
               timeout: Optional[float] = None) -> R:
        """Append raw bytes (or UTF-8 text); missing key: NotStoredError."""
        return self._concat(self.APPEND_OP, key, value, cas, persist_to, replicate_to, timeout)

    def prepend(self, key: Any, value: Any, cas: int = 0, format: Any = None,
                persist_to: int = 0, replicate_to: int = 0,
                timeout: Optional[float] = None) -> R:
        """Prepend raw bytes (or UTF-8 text); missing key: NotStoredError."""
        return self._concat(self.PREPEND_OP, key, value, cas, persist_to, replicate_to,
                            timeout)
