"""
Authentication of one memcached connection, when the factory has
credentials.

The binary protocol offers SASL PLAIN (``SASL_LIST_MECHS``/``SASL_AUTH``),
and every other command but ``VERSION`` and ``QUIT`` answers ``0x20`` until
it succeeds.  ASCII connections must authenticate as with memcached's ``-Y``
option: the first command is ``set <any key> 0 0 <n>`` whose data is
``<user> <password>`` (``STORED`` on success, ``CLIENT_ERROR authentication
failure`` otherwise); anything else answers ``CLIENT_ERROR unauthenticated``.
"""

from __future__ import annotations

from typing import Dict, Optional

from twisted.logger import Logger

from txcb.wire import mcascii as A
from txcb.wire import mcbinary as B
from txcb.wire.sasl import check_password

__all__ = ["Authenticator", "check_credentials", "CLIENT_ERROR_UNAUTHENTICATED",
           "CLIENT_ERROR_AUTH_FAILURE"]

CLIENT_ERROR_UNAUTHENTICATED = b"CLIENT_ERROR unauthenticated\r\n"
CLIENT_ERROR_AUTH_FAILURE = b"CLIENT_ERROR authentication failure\r\n"

_log = Logger()


#: Whether user / password match the credentials (None: no check), in constant
#: time: the one check every endpoint uses.
check_credentials = check_password


class Authenticator:
    """
    One connection's authentication state: :attr:`done` once it has
    authenticated (at once when the endpoint has no credentials).
    """

    def __init__(self, credentials: Optional[Dict[bytes, bytes]], peer: str) -> None:
        self.credentials = credentials
        self.peer = peer
        self.done = credentials is None

    @property
    def required(self) -> bool:
        """True when the endpoint has credentials (SASL is offered)."""
        return self.credentials is not None

    def check(self, user: bytes, password: bytes) -> bool:
        """Check (and log) one attempt; a success authenticates the connection."""
        ok = check_credentials(self.credentials, user, password)
        if ok:
            self.done = True
            _log.info("txcb memcached: {peer} authenticated as {user}",
                      peer=self.peer, user=user.decode("utf-8", "replace"))
        else:
            _log.warn("txcb memcached: authentication failure from {peer}", peer=self.peer)
        return ok

    def ascii_login(self, cmd: A.Command) -> bytes:
        """The reply to an ASCII ``set`` whose data is ``<user> <password>``."""
        user, sep, password = (cmd.value or b"").partition(b" ")
        ok = bool(sep) and self.check(user, password.rstrip(b"\r\n"))
        if cmd.noreply:
            return b""
        return A.STORED if ok else CLIENT_ERROR_AUTH_FAILURE

    def sasl_plain(self, p: B.Packet) -> bool:
        """Check a binary SASL_AUTH PLAIN request."""
        if p.opcode != B.Opcode.SASL_AUTH or p.key != b"PLAIN":
            return False
        try:
            plain = B.parse_sasl_plain(p.value)
        except ValueError:
            return False
        return self.check(plain.username, plain.password)
