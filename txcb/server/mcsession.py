"""
What the memcached ASCII and binary sessions share: how a request reaches
the bucket (its :class:`~txcb.interfaces.ISyncBucket` calls when it provides
them, its IBucket Deferreds otherwise, decided once per connection), how a
result reaches the reply queue and the request observer, and the helpers
both protocols' replies use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Optional

from twisted.internet.defer import Deferred, fail
from twisted.python.failure import Failure

from txcb import __version__
from txcb.errors import RC, CouchbaseError, NotFoundError, WouldBlock
from txcb.interfaces import ISyncBucket
from txcb.limits import THIRTY_DAYS
from txcb.results import ValueResult
from txcb.server.mcauth import Authenticator
from txcb.server.mcreplies import OrderedReplies, Render

if TYPE_CHECKING:
    from txcb.server.memcached import MemcachedServerFactory

__all__ = ["VERSION", "EXPIRED_TTL", "Session", "status_of", "one_line", "stat_value",
           "get_and_touch"]

#: What ``version`` / VERSION answer: the memcached protocol level served
#: (numeric first, as memcached clients parse it), then txcb's own version.
VERSION = "1.6.0-txcb-" + __version__

#: An exptime that reads as already expired (an absolute time in 1970).
EXPIRED_TTL = THIRTY_DAYS + 1


class Session:
    """
    One connection's protocol session, ASCII or binary: the bucket, whether
    it is called synchronously, the observer, and the reply queue's calls.
    Subclasses provide ``data_received`` (bytes in), ``handle`` (one parsed
    request) and ``internal_error`` (the reply to a request that failed).
    """

    name = ""

    def __init__(self, conn: OrderedReplies, factory: "MemcachedServerFactory",
                 auth: Authenticator) -> None:
        self.conn = conn
        self.factory = factory
        self.auth = auth
        self.bucket = bucket = factory.bucket
        #: The bucket answers at once through ISyncBucket: no Deferreds.
        self.sync = ISyncBucket.providedBy(bucket)
        self.observer = factory.observer
        self.started = 0.0        # time.perf_counter() of the read, when observed
        self.reply = conn.reply
        self.submit = conn.submit
        self.run = conn.run
        self.close = conn.close

    def detach(self) -> None:
        """
        The connection is gone: forget everything.  A session keeps bound
        methods of itself and of its connection (handler tables, the parser's
        callbacks, the connection's reply calls), cycles that only the
        garbage collector would otherwise free; emptying it frees the session,
        its parser and what they buffered at once.  Nothing calls a session
        after its connection is lost.
        """
        vars(self).clear()

    def call(self, op: str, render: Render, ctx: Any, sync: Callable[[Any], Any],
             deferred: Callable[[Any], Deferred]) -> None:
        """
        Run one bucket operation, ``sync(bucket)`` (a result, or an exception)
        on an ISyncBucket, else ``deferred(bucket)`` (a Deferred), and answer
        with ``render(result or Failure, ctx)``.  A ``sync`` call that raises
        WouldBlock (a value not resident) is answered by ``deferred`` instead,
        in its turn: replies keep the request order.
        """
        if self.sync:
            try:
                r = sync(self.bucket)
            except WouldBlock:
                self.call_later(op, render, ctx, deferred)
                return
            except Exception:
                r = Failure()
            self.done(op, r, render, ctx)
        else:
            self.call_later(op, render, ctx, deferred)

    def call_later(self, op: str, render: Render, ctx: Any,
                   deferred: Callable[[Any], Deferred]) -> None:
        """Answer with ``render`` once ``deferred(bucket)`` fires (its exception: a Failure)."""
        try:
            d = deferred(self.bucket)
        except Exception:
            d = fail()
        self.later(op, d, render, ctx)

    def done(self, op: str, r: Any, render: Render, ctx: Any) -> None:
        """Answer a request whose result (or Failure) ``r`` is here now."""
        if self.observer is not None:
            self.observer.request_done(op, status_of(r), self.started)
        self.reply(render(r, ctx))

    def later(self, op: str, d: Deferred, render: Render, ctx: Any) -> None:
        """Answer a request once its Deferred ``d`` fires."""
        if self.observer is not None:
            d.addBoth(self._observed, op, self.started)
        self.submit(d, render, ctx)

    def _observed(self, r: Any, op: str, started: float) -> Any:
        observer = self.observer
        assert observer is not None
        observer.request_done(op, status_of(r), started)
        return r


def status_of(r: Any) -> int:
    """A request's status for the observer: 0, or the rc of its error or miss."""
    if type(r) is Failure:
        e = r.value
        return e.rc if isinstance(e, CouchbaseError) else RC.EINTERNAL
    if type(r) is list:
        return next((s for s in map(status_of, r) if s), 0)
    rc = getattr(r, "rc", 0)
    return rc if type(rc) is int else 0


def one_line(message: str) -> bytes:
    """An error message as one short line of a reply."""
    text = message.encode("utf-8", "replace")[:256]
    return text.replace(b"\r", b" ").replace(b"\n", b" ")


def stat_value(v: Any) -> Optional[bytes]:
    """A stat's value as one token-free line, or None for non-scalars."""
    if isinstance(v, bool):
        return b"1" if v else b"0"
    if isinstance(v, (int, float)):
        return str(v).encode("ascii")
    if isinstance(v, str):
        v = v.encode("utf-8", "replace")
    if isinstance(v, bytes):
        return v.replace(b"\r", b" ").replace(b"\n", b" ")
    return None


def get_and_touch(bucket: Any, key: bytes, ttl: int) -> Deferred:
    """
    memcached's gat: fetch and set the expiry.  The bucket's ``get(ttl=0)`` is
    a plain get, so exptime 0 ("never expire") is a touch, then a get.  A miss
    is a quiet (unsuccessful) result, never an error.
    """
    try:
        if ttl:
            return bucket.get(key, ttl=ttl, quiet=True)
        d = bucket.touch(key, 0)
    except Exception:
        return fail()

    def miss(f: Failure) -> Any:
        f.trap(NotFoundError)
        return ValueResult(key, rc=RC.KEY_ENOENT)

    return d.addCallback(lambda _: bucket.get(key, quiet=True)).addErrback(miss)
