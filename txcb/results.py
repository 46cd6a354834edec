"""
Result objects fired by every bucket operation (the Couchbase SDK 2.x shapes).

Values are kept as the bytes and flags the bucket stored and decoded on first
access to :attr:`ValueResult.value`, with the transcoder of the bucket that
produced them.  A server relaying results never pays for decoding, and a
value whose flags name no known format comes back as the raw bytes.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

from txcb.errors import RC

__all__ = ["Result", "OperationResult", "ValueResult", "ScanItem", "MultiResult"]

UNSET = object()


class Result:
    """
    The outcome of an operation on one key.

    :ivar key: the key, as the caller gave it (str or bytes).
    :ivar rc: the result code, ``0`` on success (see :class:`txcb.errors.RC`).
    """

    __slots__ = ("key", "rc")

    def __init__(self, key: Any, rc: int = RC.SUCCESS) -> None:
        self.key = key
        self.rc = rc

    @property
    def success(self) -> bool:
        """Whether the operation succeeded."""
        return self.rc == RC.SUCCESS

    def __repr__(self) -> str:
        return "%s<key=%r, rc=0x%02x>" % (type(self).__name__, self.key, self.rc)


class OperationResult(Result):
    """
    The outcome of a mutation.

    :ivar cas: the item's new CAS (``0`` for a failed or quiet miss).
    :ivar seqno: the bucket-wide mutation sequence number of this mutation
        (``0`` when unknown); durability waits on it.
    """

    __slots__ = ("cas", "seqno")

    def __init__(self, key: Any, cas: int = 0, rc: int = RC.SUCCESS, seqno: int = 0) -> None:
        self.key = key
        self.rc = rc
        self.cas = cas
        self.seqno = seqno

    def __repr__(self) -> str:
        return "%s<key=%r, rc=0x%02x, cas=0x%x>" % (
            type(self).__name__, self.key, self.rc, self.cas)


class ValueResult(OperationResult):
    """
    The outcome of an operation that returns a value (get, lock, counter).

    :ivar flags: the item's 32-bit flags (the format it was stored with).
    :ivar raw: the stored bytes, undecoded (``None`` for a miss).
    :ivar value: the decoded value (``None`` for a miss); decoding errors
        raise :class:`txcb.errors.ValueFormatError` here.
    """

    __slots__ = ("flags", "raw", "_value", "_transcoder")

    def __init__(self, key: Any, raw: Optional[bytes] = None, flags: int = 0, cas: int = 0,
                 rc: int = RC.SUCCESS, transcoder: Any = None, value: Any = UNSET,
                 seqno: int = 0) -> None:
        self.key = key
        self.rc = rc
        self.cas = cas
        self.seqno = seqno
        self.flags = flags
        self.raw = raw
        self._transcoder = transcoder
        self._value = value

    @property
    def value(self) -> Any:
        v = self._value
        if v is UNSET:
            if self.raw is None:
                v = None
            elif self._transcoder is None:
                v = self.raw
            else:
                v = self._transcoder.decode(self.raw, self.flags, self.key)
            self._value = v
        return v

    def __repr__(self) -> str:
        return "%s<key=%r, rc=0x%02x, cas=0x%x, flags=0x%x, raw=%r>" % (
            type(self).__name__, self.key, self.rc, self.cas, self.flags,
            self.raw if self.raw is None or len(self.raw) < 60 else self.raw[:57] + b"...")


class ScanItem(ValueResult):
    """
    One item of a scan (``IBucket.scan``), in ascending key order.

    :ivar key: the key: ``str`` if it is valid UTF-8, else ``bytes``.
    :ivar expiry: the item's absolute expiry time in whole seconds (a Unix
        time for a bucket on the real clock), ``0`` if it never expires.
    :ivar raw: the stored bytes; ``None`` (and so is ``value``) in an
        ``ids_only`` scan.
    """

    __slots__ = ("expiry",)

    def __init__(self, key: Any, raw: Optional[bytes] = None, flags: int = 0, cas: int = 0,
                 expiry: int = 0, transcoder: Any = None) -> None:
        ValueResult.__init__(self, key, raw, flags, cas, RC.SUCCESS, transcoder)
        self.expiry = expiry

    @classmethod
    def from_row(cls, k: bytes, flags: int, cas: int, expiry: int, raw: Optional[bytes],
                 transcoder: Any = None) -> "ScanItem":
        """An item from key bytes (shown as text when they are UTF-8)."""
        try:
            key: Any = k.decode("utf-8")
        except UnicodeDecodeError:
            key = k
        return cls(key, raw, flags, cas, expiry, transcoder)


class MultiResult(Dict[Any, Result]):
    """A dict of key -> :class:`Result` for a ``*_multi`` operation."""

    @property
    def all_ok(self) -> bool:
        """Whether every key succeeded."""
        return all(r.success for r in self.values())
