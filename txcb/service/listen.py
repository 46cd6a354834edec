"""
The services an application built by ``twistd txcb`` is made of: one that
owns the bucket, and one per listening endpoint (the netstring and memcached
protocols, the metrics page).  Each owns one lifetime, so the application
stops in the reverse order it started: listeners first, the bucket last.

Under twistd the application is wrapped in :class:`OneLineStartup`, so a
start-up error the user can fix (a port in use, a locked data dir) is one
line in the log and exit status 1, not a traceback.
"""

from __future__ import annotations

import errno
from typing import Any, Callable, List, Optional, Sequence

from twisted.application.service import MultiService, Service
from twisted.internet.defer import DeferredList, maybeDeferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.error import CannotListenError
from twisted.logger import Logger
from twisted.python.failure import Failure

__all__ = ["BucketService", "ListenService", "ListenError", "OneLineStartup",
           "StartupExit", "endpoint_problem", "lower_first", "ENDPOINT_HELP"]

_log = Logger()

#: What an endpoint string may be, for messages about a bad one.
ENDPOINT_HELP = ("use tcp:PORT[:interface=ADDRESS], tcp6:..., unix:PATH, "
                 "ssl:PORT:privateKey=FILE or a bare port number")

#: errno -> (what happened, what to do); "{option}" names the option.
_LISTEN_ADVICE = {
    errno.EADDRINUSE: ("address already in use",
                       "stop the program listening there or choose another {option}"),
    errno.EACCES: ("permission denied",
                   "choose a port above 1023 or a path this user may create"),
    errno.EADDRNOTAVAIL: ("no such address on this host",
                          "choose an interface= address this host has"),
    errno.ENOENT: ("no such directory", "create the socket's directory first"),
}


def lower_first(text: str) -> str:
    """``text`` to go after a colon: "No such file" -> "no such file"."""
    return text[:1].lower() + text[1:]


class ListenError(Exception):
    """
    An endpoint cannot be listened on.  ``reason`` says why and ``advice``
    what to do (it may name ``{option}``, the option that gave the endpoint).
    """

    def __init__(self, description: str, reason: str, advice: str = "") -> None:
        Exception.__init__(self, "cannot listen on %s: %s" % (description, reason))
        self.description = description
        self.reason = reason
        self.advice = advice


#: What parsing a bad endpoint string raises: anything (ValueError for an
#: unknown type, TypeError for a missing argument, OSError for a missing ssl
#: key file, OpenSSL's errors for a bad one, IndexError for systemd: without
#: sockets); parsing runs no txcb code, so any error is the string's.
_PARSE_ERRORS = Exception


def endpoint_problem(description: str) -> Optional[str]:
    """
    Why ``description`` is not a server endpoint string (None: it is one).
    Only parses it: nothing listens, and no reactor is needed yet.
    """
    try:
        serverFromString(None, description)  # type: ignore[arg-type]
    except _PARSE_ERRORS as e:
        return _parse_problem(e)
    return None


def _parse_problem(error: Exception) -> str:
    if isinstance(error, ImportError):  # ssl: without pyOpenSSL (PyPy, a bare install)
        return "TLS support is not installed; pip install 'txcb[tls]'"
    if isinstance(error, OSError):  # ssl: a key or certificate file
        if error.filename and error.strerror:
            return "%s: %s" % (error.filename, lower_first(error.strerror))
        return str(error)
    if isinstance(error, TypeError):  # a missing or unknown argument
        return "malformed endpoint"
    if isinstance(error, ValueError):
        return str(error)
    return "%s (%s)" % (error, type(error).__name__)


#: What listening on a parsed endpoint raises when it cannot (a port over
#: 65535 is an OverflowError from bind).
_LISTEN_ERRORS = (CannotListenError, OSError, OverflowError)


def _listen_error(description: str, error: BaseException) -> ListenError:
    """The ListenError for ``error``, raised by listening on ``description``."""
    cause = error.socketError if isinstance(error, CannotListenError) else error
    if isinstance(cause, OSError) and cause.errno in _LISTEN_ADVICE:
        return ListenError(description, *_LISTEN_ADVICE[cause.errno])
    if isinstance(cause, OSError) and cause.strerror:
        return ListenError(description, lower_first(cause.strerror))
    if isinstance(cause, OverflowError):  # its text differs between interpreters
        return ListenError(description, "port must be 0-65535")
    return ListenError(description, str(cause) or type(cause).__name__)


class BucketService(Service):
    """
    Owns the buckets: starts them (a persistent bucket warms up from disk,
    before any later service such as a ListenService starts) and closes them,
    so flushes them, when the application stops.  ``bucket`` is the one the
    netstring and memcached endpoints serve; ``more`` the other keyspaces'.
    A bucket that fails to start is ``failed`` (the error propagates).
    """

    def __init__(self, bucket: Any, more: Sequence[Any] = ()) -> None:
        self.bucket = bucket
        self.buckets = [bucket] + [b for b in more if b is not bucket]
        self.failed: Any = None

    def startService(self) -> None:
        Service.startService(self)
        for bucket in self.buckets:
            start = getattr(bucket, "start", None)
            if start is not None:
                try:
                    start()
                except Exception:
                    self.failed = bucket
                    raise

    def stopService(self) -> Any:
        """Close every bucket at once; fires when all are closed (with the
        first failure, if any closing failed)."""
        Service.stopService(self)
        closing = [maybeDeferred(b.close) for b in self.buckets]
        return DeferredList(closing, consumeErrors=True).addCallback(_first_failure)


def _first_failure(results: List[Any]) -> Any:
    for ok, result in results:
        if not ok:
            return result
    return None


class ListenService(Service):
    """
    Listens on one endpoint string while running, logging the address.
    A failure to listen stops start-up with a :class:`ListenError`.
    """

    def __init__(self, description: str, factory: Any, reactor: Any, what: str = "txcb"
                 ) -> None:
        self.description = description
        self.factory = factory
        self.reactor = reactor
        self.what = what
        self.port: Any = None

    def startService(self) -> None:
        Service.startService(self)
        try:
            endpoint = serverFromString(self.reactor, self.description)
        except _PARSE_ERRORS as e:
            raise ListenError(self.description, _parse_problem(e), ENDPOINT_HELP) from e
        result: List[Any] = []
        endpoint.listen(self.factory).addBoth(result.append)
        if result and isinstance(result[0], Failure):
            error = result[0].value
            if not isinstance(error, _LISTEN_ERRORS):
                result[0].raiseException()
            raise _listen_error(self.description, error) from error
        if result:
            self.port = result[0]
            _log.info("{what} listening on {address} ({description})", what=self.what,
                      address=str(self.port.getHost()), description=self.description)

    def stopService(self) -> Any:
        Service.stopService(self)
        if self.port is not None:
            port, self.port = self.port, None
            return port.stopListening()
        return None


class StartupExit(SystemExit, Exception):
    """
    Ends a twistd start-up that failed for a reason already logged in one
    line.  An Exception, so twistd's own clean-up runs (its pid file goes, a
    daemon's parent is told); a SystemExit with status 1, so Python prints no
    traceback.
    """

    def __init__(self, message: str) -> None:
        SystemExit.__init__(self, message)
        self.code = 1


class OneLineStartup(MultiService):
    """
    An application run by twistd.  A start-up error that ``explain`` can put
    in one line is logged as that line, what had started is stopped, and
    :class:`StartupExit` ends twistd.  Errors ``explain`` does not know (it
    returns None) propagate as they are: they are bugs, and want a traceback.
    """

    def __init__(self, explain: Callable[[Exception], Optional[str]], reactor: Any) -> None:
        MultiService.__init__(self)
        self.explain = explain
        self.reactor = reactor

    def privilegedStartService(self) -> None:
        self._or_exit(MultiService.privilegedStartService)

    def startService(self) -> None:
        self._or_exit(MultiService.startService)

    def _or_exit(self, start: Callable[[MultiService], None]) -> None:
        try:
            start(self)
        except Exception as e:
            message = self.explain(e)
            if message is None:
                raise
            _log.critical("{line}", line=message)
            self._stop_what_started()
            raise StartupExit(message) from None

    def _stop_what_started(self) -> None:
        """
        Stop the application now: a started persistent bucket must close (its
        writer thread would keep the process alive), so the reactor runs until
        that is done if closing needs it.
        """
        done = maybeDeferred(MultiService.stopService, self)
        done.addErrback(lambda f: _log.failure("txcb: stopping after a failed start-up", f))
        if not done.called:
            done.addBoth(lambda _: self.reactor.stop())
            self.reactor.run()
