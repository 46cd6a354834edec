"""
The reactor ``twistd txcb`` runs on: Twisted's epoll reactor, less the
per-event logging context.

Twisted's ``EPollReactor.doPoll`` hands every ready descriptor to
``_doReadOrWrite`` through ``log.callWithLogger(selectable, ...)``, which asks
the connection for its ``logPrefix()`` and builds a new logging context (the
"system" of legacy ``log.msg`` lines) around each read or write.  On a server
answering one small request per read that is about 2 us of a 12-17 us request
(py-spy, memcaslap against the memcached endpoint).  txcb logs through
:mod:`twisted.logger`, whose events name their own namespace, so this reactor
calls ``_doReadOrWrite`` directly.  Errors are handled as before:
``_doReadOrWrite`` logs an exception from ``doRead``/``doWrite`` and drops
the connection; anything escaping it is logged here and the loop goes on.
Everything else is ``EPollReactor``'s.

``twistd txcb`` installs it when no reactor was chosen (``twistd --reactor
NAME txcb`` chooses another; ``--reactor txcb`` names this one), on
platforms with epoll.
"""

from __future__ import annotations

import errno
import sys
from typing import Any, Optional

from twisted.internet import epollreactor
from twisted.python import log

__all__ = ["EPollReactor", "install", "install_default"]


class EPollReactor(epollreactor.EPollReactor):
    """``EPollReactor`` dispatching events without ``log.callWithLogger``."""

    def doPoll(self, timeout: Optional[float]) -> None:
        if timeout is None:
            timeout = -1  # wait indefinitely
        try:
            events = self._poller.poll(timeout, len(self._selectables))
        except OSError as err:
            if err.errno == errno.EINTR:
                return
            raise
        _drdw = self._doReadOrWrite
        selectables = self._selectables
        for fd, event in events:
            selectable = selectables.get(fd)
            if selectable is not None:
                try:
                    _drdw(selectable, fd, event)
                except Exception:
                    log.err(None, "txcb reactor: error dispatching an event for %r"
                            % (selectable,))

    doIteration = doPoll


def install() -> Any:
    """Install this reactor as the global one (as Twisted's reactor modules do)."""
    reactor = EPollReactor()
    from twisted.internet.main import installReactor
    installReactor(reactor)
    return reactor


def install_default() -> bool:
    """
    Install this reactor if no reactor is installed yet and the platform has
    epoll; True if it did.
    """
    if "twisted.internet.reactor" in sys.modules:
        return False
    import select
    if not hasattr(select, "epoll"):
        return False
    install()
    return True
