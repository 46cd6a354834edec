"""
The glue between txcb and the official Couchbase Python SDK 4.x, for
:mod:`txcb.buckets.couchbase`: the SDK loaded on demand, its exceptions
turned into txcb's errors (with txcb's ``rc`` codes), txcb's TTLs and
durability counts turned into the SDK's options, and a transcoder that
passes txcb's ``(bytes, flags)`` through untouched.

The SDK is imported by :func:`load` only, inside the function, so txcb
without it (``pip install 'txcb[couchbase]'`` adds it) is unchanged.
Nothing here touches the reactor: these functions run on the bucket's
worker threads.
"""

from __future__ import annotations

import json
import time
from datetime import timedelta
from types import SimpleNamespace
from typing import Any, Dict, Optional, Tuple, Type
from urllib.parse import parse_qsl, urlsplit

from txcb import errors
from txcb.formats import FMT_JSON
from txcb.validation import to_key

__all__ = ["load", "SDK_MISSING", "sdk_error", "expiry", "client_durability",
           "text_key", "parse_url", "CouchbaseURL", "THIRTY_DAYS"]

#: The one-line advice when the SDK cannot be imported.
SDK_MISSING = ("the official Couchbase Python SDK is not installed (%s): "
               "pip install 'txcb[couchbase]'")

#: Up to this many seconds a TTL is relative; above, a Unix time.
THIRTY_DAYS = 30 * 24 * 3600

_loaded: list = []


def load() -> Any:
    """The SDK's classes this provider uses (imported once, on first use);
    ImportError with :data:`SDK_MISSING`'s advice if it is not installed."""
    if _loaded:
        return _loaded[0]
    try:
        from couchbase import exceptions
        from couchbase import options
        from couchbase import subdocument
        from couchbase.auth import PasswordAuthenticator
        from couchbase.cluster import Cluster
        from couchbase.durability import ClientDurability, PersistToExtended, ReplicateTo
        from couchbase.transcoder import Transcoder
    except ImportError as e:
        raise ImportError(SDK_MISSING % (e,))

    class Passthrough(Transcoder):  # type: ignore[misc, valid-type]
        """Values go out as txcb's (bytes, flags) and come back as them.
        Anything else is a sub-document value the SDK built itself (a
        counter's delta, a macro's name): JSON, as the SDK's own transcoder."""

        def encode_value(self, value: Any) -> Tuple[bytes, int]:
            if isinstance(value, tuple):
                return value
            return json.dumps(value).encode("utf-8"), FMT_JSON

        def decode_value(self, value: bytes, flags: int) -> Tuple[bytes, int]:
            return value, flags

    sdk = SimpleNamespace(
        exceptions=exceptions, o=options, sd=subdocument, Cluster=Cluster,
        PasswordAuthenticator=PasswordAuthenticator, ClientDurability=ClientDurability,
        PersistToExtended=PersistToExtended, ReplicateTo=ReplicateTo,
        transcoder=Passthrough())
    _loaded.append(sdk)
    return sdk


# -- errors ---------------------------------------------------------------------

#: SDK exception class name -> txcb error class (the first match along the
#: exception's MRO wins).
_ERRORS: Dict[str, Type[errors.CouchbaseError]] = {
    "DocumentNotFoundException": errors.NotFoundError,
    "DocumentExistsException": errors.KeyExistsError,
    "CasMismatchException": errors.KeyExistsError,
    "DocumentLockedException": errors.TemporaryFailError,
    "DocumentNotLockedException": errors.TemporaryFailError,
    "TemporaryFailException": errors.TemporaryFailError,
    "DeltaInvalidException": errors.DeltaBadvalError,
    "InvalidArgumentException": errors.ArgumentError,
    "DurabilityImpossibleException": errors.DurabilityError,
    "DurabilityInvalidLevelException": errors.DurabilityError,
    "DurabilitySyncWriteAmbiguousException": errors.TimeoutError,
    "AuthenticationException": errors.AuthError,
    "BucketNotFoundException": errors.ConnectError,
    "ScopeNotFoundException": errors.ArgumentError,
    "CollectionNotFoundException": errors.ArgumentError,
    "FeatureUnavailableException": errors.NotSupportedError,
    "UnAmbiguousTimeoutException": errors.TimeoutError,
    "AmbiguousTimeoutException": errors.TimeoutError,
    "TimeoutException": errors.TimeoutError,
    "RequestCanceledException": errors.NetworkError,
    "ServiceUnavailableException": errors.NetworkError,
    "NetworkException": errors.NetworkError,
}

#: Per operation, where memcached's answer differs from the SDK's name for
#: it: append/prepend to a missing key is NOT_STORED; unlocking with the
#: wrong CAS (or an unlocked key) is TMPFAIL, as on every txcb provider.
_BY_OP: Dict[Tuple[str, str], Type[errors.CouchbaseError]] = {
    ("concat", "DocumentNotFoundException"): errors.NotStoredError,
    ("unlock", "CasMismatchException"): errors.TemporaryFailError,
}


#: The C++ core's key-value error codes the SDK raises without a class of
#: their own (couchbase-cxx-client's ``errc::key_value``).
_BY_CODE: Dict[int, Type[errors.CouchbaseError]] = {
    104: errors.TooBigError,  # value_too_large (E2BIG)
}


def sdk_error(op: str, e: BaseException, key: Any) -> errors.CouchbaseError:
    """The txcb error for an exception the SDK raised in ``op``."""
    if isinstance(e, errors.CouchbaseError):
        return e
    try:
        code = getattr(e, "error_code", None)
    except Exception:
        code = None
    if code in _BY_CODE:
        return _BY_CODE[code]("%s: %s" % (type(e).__name__, _reason(e)), key=key)
    for cls in type(e).__mro__:
        kind = _BY_OP.get((op, cls.__name__)) or _ERRORS.get(cls.__name__)
        if kind is not None:
            return kind("%s: %s" % (cls.__name__, _reason(e)), key=key)
    return errors.InternalError("%s: %s" % (type(e).__name__, _reason(e)), key=key)


def _reason(e: BaseException) -> str:
    """The SDK's message, without its context dump (one short line)."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    return text if len(text) <= 200 else text[:197] + "..."


# -- arguments ------------------------------------------------------------------

def text_key(key: Any) -> str:
    """The SDK wants str keys: txcb's key (checked) as UTF-8 text."""
    try:
        return to_key(key).decode("utf-8")
    except UnicodeDecodeError:
        raise errors.ArgumentError("this bucket's keys must be UTF-8 (the Couchbase SDK "
                                   "takes text keys)", key=key)


def expiry(ttl: int, now: Optional[float] = None) -> Optional[timedelta]:
    """
    A checked txcb TTL as the SDK's expiry: None for none, a relative
    timedelta, or for an absolute Unix time the time left (the SDK takes
    timedeltas only); ``timedelta(0)`` would mean "never", so an absolute time
    already past gives ``timedelta(-1)``: the caller expires the item itself.
    """
    if not ttl:
        return None
    if ttl <= THIRTY_DAYS:
        return timedelta(seconds=ttl)
    left = ttl - int(now if now is not None else time.time())
    return timedelta(seconds=left if left > 0 else -1)


def client_durability(sdk: Any, persist_to: int, replicate_to: int) -> Any:
    """
    txcb's resolved counts as the SDK's client durability (OBSERVE_SEQNO
    polling): ``persist_to=1`` is the active node's disk
    (``PersistToExtended.ACTIVE``), ``n > 1`` at least n nodes' disks;
    ``replicate_to=n`` n replicas' memory.  None when nothing is asked.
    """
    if not persist_to and not replicate_to:
        return None
    P = sdk.PersistToExtended
    persist = P.NONE if not persist_to else P.ACTIVE if persist_to == 1 else P(persist_to + 1)
    return sdk.ClientDurability(replicate_to=sdk.ReplicateTo(replicate_to),
                                persist_to=persist)


# -- the --backend URL ----------------------------------------------------------

class CouchbaseURL:
    """``couchbase[s]://HOST[:PORT][,HOST...][/BUCKET][?replicas=N]`` parsed:
    the SDK's connection string, the bucket, the replicas to expect."""

    def __init__(self, connstr: str, bucket: str, replicas: int, tls: bool) -> None:
        self.connstr = connstr
        self.bucket = bucket
        self.replicas = replicas
        self.tls = tls


def _good_host(host: str) -> bool:
    """HOST, HOST:PORT, [V6] or [V6]:PORT."""
    if host.startswith("["):
        addr, sep, rest = host[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else None
        return bool(addr and sep) and (rest == "" or (port is not None and port.isdigit()))
    name, sep, port = host.partition(":")
    return bool(name) and (not sep or port.isdigit())


def parse_url(url: str) -> CouchbaseURL:
    """Parse a ``--backend couchbase://`` URL (ValueError: one line saying why)."""
    form = "couchbase://HOST[:PORT][/BUCKET] or couchbases://..."
    parts = urlsplit(url)
    if parts.scheme not in ("couchbase", "couchbases") or not parts.netloc:
        raise ValueError("bad Couchbase URL %r: expected %s" % (url, form))
    if "@" in parts.netloc:
        raise ValueError("bad Couchbase URL %r: no credentials in the URL (use "
                         "--backend-auth-file or TXCB_BACKEND_USER/TXCB_BACKEND_PASSWORD)"
                         % (url,))
    bucket = parts.path.strip("/") or "default"
    if "/" in bucket:
        raise ValueError("bad Couchbase URL %r: one bucket name after the hosts" % (url,))
    query = dict(parse_qsl(parts.query, keep_blank_values=True))
    replicas = query.pop("replicas", "0")
    if not replicas.isdigit() or int(replicas) > 3:
        raise ValueError("bad Couchbase URL %r: replicas must be 0 to 3" % (url,))
    for host in parts.netloc.split(","):
        if not _good_host(host):
            raise ValueError("bad Couchbase URL %r: bad host %r" % (url, host))
    connstr = "%s://%s" % (parts.scheme, parts.netloc)
    if query:
        connstr += "?" + "&".join("%s=%s" % kv for kv in query.items())
    return CouchbaseURL(connstr, bucket, int(replicas), parts.scheme == "couchbases")
