"""
The protocol-neutral part of txcb's servers: what every endpoint serving a
bucket shares, whatever its wire protocol.
"""

from __future__ import annotations

from typing import Dict, Optional

__all__ = ["ServerStats"]


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
