"""
The protocol-neutral part of txcb's servers: what every endpoint serving a
bucket shares, whatever its wire protocol.
"""

from __future__ import annotations

from typing import Dict, Optional

from zope.interface import Interface

__all__ = ["ServerStats", "IRequestObserver"]


class IRequestObserver(Interface):
    """
    Told of every request an endpoint served, whatever its protocol: how
    metrics (``--metrics``) count the netstring, memcached and any later
    endpoint alike.  A factory's ``observer`` is None unless one is
    installed, and then the endpoints do no per-request work for it.
    """

    def request_done(op, status, started):
        """
        One request was answered.  ``op``: the IBucket operation it was
        ("get", "upsert", "get_multi", "stats", ...); ``status``: 0, or the
        rc of the error it was answered with; ``started``:
        ``time.perf_counter()`` when its bytes were read.
        """


class ServerStats:
    """
    Connection counters shared by every endpoint serving one bucket, and
    their common connection limit (``max_connections``, None: no limit).
    """

    def __init__(self, max_connections: Optional[int] = None) -> None:
        self.connections = 0
        self.total_connections = 0
        self.rejected_connections = 0
        self.max_connections = max_connections

    def admit(self) -> bool:
        """Whether one more connection may open now (a refusal is counted)."""
        if self.max_connections is not None and self.connections >= self.max_connections:
            self.rejected_connections += 1
            return False
        return True

    def as_dict(self) -> Dict[str, int]:
        return {"connections": self.connections,
                "total_connections": self.total_connections,
                "rejected_connections": self.rejected_connections}
