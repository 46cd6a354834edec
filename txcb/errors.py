"""
Exceptions raised (errbacked) by txcb buckets.

Every error carries a stable numeric ``rc``.  Where the memcached binary
protocol has a status code for the condition, ``rc`` is that status code, so
an error crosses the wire as its own ``rc`` and is rebuilt on the other side
by :func:`exception_for_rc`.  Conditions that only exist on the client side
(timeouts, connection failures, bad values) use codes from ``0x1000`` up,
which never collide with memcached's.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Type

__all__ = [
    "CouchbaseError", "NotFoundError", "KeyExistsError", "TooBigError",
    "ArgumentError", "NotStoredError", "DeltaBadvalError", "AuthError",
    "UnknownCommandError", "NotSupportedError", "InternalError",
    "TemporaryFailError", "NoMemoryError", "WouldBlock", "DurabilityError",
    "ProtocolError", "TimeoutError",
    "ConnectError", "NetworkError", "ValueFormatError", "SubdocError",
    "exception_for_rc", "RC", "McStatus", "code_names",
]


class McStatus:
    """
    The memcached binary protocol's response statuses
    (``protocol_binary_response_status``): the one table both :class:`RC`
    and :class:`txcb.wire.mcbinary.Status` are.
    """
    SUCCESS = 0x00
    KEY_ENOENT = 0x01
    KEY_EEXISTS = 0x02
    E2BIG = 0x03
    EINVAL = 0x04
    NOT_STORED = 0x05
    DELTA_BADVAL = 0x06
    AUTH_ERROR = 0x20
    AUTH_CONTINUE = 0x21
    UNKNOWN_COMMAND = 0x81
    ENOMEM = 0x82
    NOT_SUPPORTED = 0x83
    EINTERNAL = 0x84
    EBUSY = 0x85
    ETMPFAIL = 0x86


class RC(McStatus):
    """The numeric result codes, in one place: memcached's, then the rest."""
    DURABILITY_IMPOSSIBLE = 0xA1
    SUBDOC_MULTI_PATH_FAILURE = 0xCC
    # txcb's own codes: never sent by memcached.
    PROTOCOL_ERROR = 0x1001
    TIMEOUT = 0x1002
    CONNECT_ERROR = 0x1003
    NETWORK_ERROR = 0x1004
    VALUE_FORMAT = 0x1005


def code_names(table: type) -> Dict[int, str]:
    """code -> name of a table of upper-case int constants (``RC``, an
    ``Opcode`` class...), its base tables' constants included."""
    return {getattr(table, k): k for k in dir(table) if k.isupper()}


class CouchbaseError(Exception):
    """
    Base class of every txcb error.

    :ivar rc: the numeric result code (see :class:`RC`).
    :ivar key: the key the failed operation was about, if any.
    :ivar result: the failed per-key result, if any.
    :ivar all_results: for a ``*_multi`` operation, the
        :class:`~txcb.results.MultiResult` holding every key's result.
    """

    rc = RC.EINTERNAL

    def __init__(self, message: str = "", key: Any = None, rc: Optional[int] = None,
                 result: Any = None, all_results: Any = None) -> None:
        if not message:
            # The docstring's first line; None under ``python -OO``.
            doc = self.__class__.__doc__
            message = doc.strip().splitlines()[0] if doc else self.__class__.__name__
        super().__init__(message)
        if rc is not None:
            self.rc = rc
        self.message = self.args[0]
        self.key = key
        self.result = result
        self.all_results = all_results

    def __str__(self) -> str:
        text = "<rc=0x%02x> %s" % (self.rc, self.message)
        if self.key is not None:
            text += " (key=%r)" % (self.key,)
        return text


class NotFoundError(CouchbaseError):
    """The key does not exist."""
    rc = RC.KEY_ENOENT


class KeyExistsError(CouchbaseError):
    """The key exists already, or its CAS does not match."""
    rc = RC.KEY_EEXISTS


class TooBigError(CouchbaseError):
    """The value is larger than the bucket accepts."""
    rc = RC.E2BIG


class ArgumentError(CouchbaseError):
    """An argument is invalid (key, TTL, delta, durability...)."""
    rc = RC.EINVAL


class NotStoredError(CouchbaseError):
    """The item was not stored (append/prepend to a missing key)."""
    rc = RC.NOT_STORED


class DeltaBadvalError(CouchbaseError):
    """A counter operation met a value that is not an unsigned integer."""
    rc = RC.DELTA_BADVAL


class AuthError(CouchbaseError):
    """Authentication is required or failed."""
    rc = RC.AUTH_ERROR


class InternalError(CouchbaseError):
    """The server failed while handling the request."""
    rc = RC.EINTERNAL


class NotSupportedError(CouchbaseError):
    """The operation is not supported by this bucket provider."""
    rc = RC.NOT_SUPPORTED


class TemporaryFailError(CouchbaseError):
    """Temporary failure: the key is locked, or the bucket is busy; retry."""
    rc = RC.ETMPFAIL


class NoMemoryError(TemporaryFailError):
    """
    Out of memory: the bucket's RAM quota is full and the mutation would grow
    it (an ephemeral bucket with ``eviction="none"``, or ``"nru"`` finding
    nothing to evict); removes and writes that do not grow still work, and
    it passes once memory is freed.  rc is memcached's and Couchbase's
    ENOMEM (0x82); the SDK 2.x name.
    """
    rc = RC.ENOMEM


class WouldBlock(Exception):
    """
    Raised by an :class:`~txcb.interfaces.ISyncBucket` method that cannot
    answer without waiting (a value ejected to disk must be read back first).
    Nothing was changed and nothing counted: call the
    :class:`~txcb.interfaces.IBucket` method instead, whose Deferred fires
    once the answer is ready.  Not a CouchbaseError: it never reaches a
    client.

    :ivar keys: the keys (bytes) the bucket must read back; empty means the
        call's own key.
    """

    def __init__(self, keys: Any = ()) -> None:
        super().__init__("the value is not resident: use the asynchronous method")
        self.keys = tuple(keys)


class DurabilityError(CouchbaseError):
    """The durability requirement cannot be met by this bucket."""
    rc = RC.DURABILITY_IMPOSSIBLE


class ProtocolError(CouchbaseError):
    """A malformed frame or message was received."""
    rc = RC.PROTOCOL_ERROR


class UnknownCommandError(ProtocolError):
    """The peer does not know this command (opcode)."""
    rc = RC.UNKNOWN_COMMAND


class TimeoutError(CouchbaseError):  # noqa: A001 - the SDK's name
    """The operation did not complete in time."""
    rc = RC.TIMEOUT


class ConnectError(CouchbaseError):
    """Could not connect to the server."""
    rc = RC.CONNECT_ERROR


class NetworkError(CouchbaseError):
    """The connection was lost or closed before the reply arrived."""
    rc = RC.NETWORK_ERROR


class ValueFormatError(CouchbaseError):
    """The value cannot be encoded or decoded with the requested format."""
    rc = RC.VALUE_FORMAT


class SubdocError(CouchbaseError):
    """
    A sub-document call failed with a Couchbase status, nothing changed.

    :ivar status: the status of the failure (``txcb.subdocument.Status``:
        kv_engine's numbers, 0xC0 up for paths).
    :ivar index: for a spec that failed while a mutation ran, its index;
        the wire reply is then ``MULTI_PATH_FAILURE`` with index and status.
        ``None`` when the request itself was refused.
    ``rc`` is MULTI_PATH_FAILURE (0xCC) with an index, else the status.
    """

    def __init__(self, status: int, message: str = "", index: Optional[int] = None,
                 key: Any = None) -> None:
        self.status = status
        self.index = index
        rc = RC.SUBDOC_MULTI_PATH_FAILURE if index is not None else status
        where = "" if index is None else "spec %d: " % index
        super().__init__(where + (message or "sub-document status 0x%02x" % status),
                         key=key, rc=rc)


_BY_RC: Dict[int, Type[CouchbaseError]] = {
    cls.rc: cls for cls in (
        NotFoundError, KeyExistsError, TooBigError, ArgumentError,
        NotStoredError, DeltaBadvalError, AuthError, UnknownCommandError,
        NotSupportedError, InternalError, TemporaryFailError, NoMemoryError,
        DurabilityError,
        ProtocolError, TimeoutError, ConnectError, NetworkError,
        ValueFormatError,
    )
}
_BY_RC[RC.EBUSY] = TemporaryFailError


def exception_for_rc(rc: int, message: str = "", key: Any = None) -> CouchbaseError:
    """Build the exception for a numeric result code (unknown codes -> base class)."""
    cls = _BY_RC.get(rc, CouchbaseError)
    return cls(message, key=key, rc=rc)
