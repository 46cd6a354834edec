"""
SASL for the Couchbase endpoint: PLAIN (RFC 4616) and SCRAM-SHA1/256/512
(RFC 5802, RFC 7677), the server side and a client for tests.  Sans-IO: the
endpoint feeds ``SASL_AUTH`` (0x21) to :meth:`SaslServer.auth` and answers
``AUTH_CONTINUE`` with the server-first message, then feeds ``SASL_STEP``
(0x22) to :meth:`SaslServer.step` and answers success with ``v=...``.

What this accepts, and why:

- The client nonce is opaque up to the comma: the official SDK's nonce is
  "0x1f 0xffffffa3 ..." (``to_hex`` of 8 random bytes), with spaces that
  RFC 5802's ``printable`` excludes.  Any printable ASCII but ``,`` passes.
- The gs2 header is ``n,,`` or ``y,,`` (optionally with ``a=<user>``);
  channel binding (``p=``) is refused: there is no TLS to bind to.
- Usernames are saslnames (``=2C`` and ``=3D`` decoded), compared as bytes
  with no SASLprep.
- Salts are per user and stable for the process: an HMAC of the username
  under a random per-process key, so an unknown user gets a plausible salt
  and the server-first message does not tell who exists.  Unknown users and
  wrong passwords fail with the same message.  SaltedPassword is cached per
  (mechanism, user, password, salt, iterations) in a bounded
  :class:`ScramKeys`, so PBKDF2 runs once per user, not per connection.

Accept-any mode (``credentials=None``; the endpoint allows it only on
loopback): PLAIN accepts any user and password.  SCRAM cannot check a proof
or sign the server-final message without the password, so it checks
everything else (syntax, nonce, channel binding, proof length) and answers
success with an empty body instead of ``v=``.  This works with the official
SDK because its C++ core (``mcbp_session.cxx``) treats a successful
``SASL_STEP`` as authenticated without passing the server-final message to
its SCRAM backend, so ``v=`` is never checked (SDK 4.6.3 connects with an
empty body and with a wrong ``v=``: ``tests/test_sasl.py``, SdkSaslTests).
A client that does check (:class:`ScramClient`) rightly refuses such a server.

:class:`SaslFailure` messages are fixed strings: never a password, a proof,
a nonce or other bytes from the peer, so they are safe to log.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import secrets
from typing import Callable, Dict, Mapping, Optional, Tuple

__all__ = ["MECHANISMS", "MAX_PAYLOAD", "SaslFailure", "SaslServer", "ScramKeys",
           "ScramClient", "plain_payload", "check_password"]

MECHANISMS: Tuple[bytes, ...] = (b"SCRAM-SHA512", b"SCRAM-SHA256", b"SCRAM-SHA1", b"PLAIN")

#: Longest SASL payload read at all (a SCRAM-SHA512 client-final is ~250 bytes).
MAX_PAYLOAD = 4096

#: hashlib name per SCRAM mechanism.
_HASHES: Dict[bytes, str] = {
    b"SCRAM-SHA512": "sha512", b"SCRAM-SHA256": "sha256", b"SCRAM-SHA1": "sha1"}

#: The one message for an unknown user and a wrong password alike.
_AUTH_FAILED = "authentication failed"

_CLIENT_KEY = b"Client Key"
_SERVER_KEY = b"Server Key"


class SaslFailure(Exception):
    """A refused SASL message; ``str()`` is one line and safe to log."""


def _random_nonce() -> bytes:
    return base64.b64encode(secrets.token_bytes(24))


def check_password(credentials: Optional[Mapping[bytes, bytes]], user: bytes,
                   password: bytes) -> bool:
    """Whether ``user``/``password`` match (None: accept any), in constant time."""
    if credentials is None:
        return True
    expected = credentials.get(user)
    ok = hmac.compare_digest(password, expected if expected is not None else b"\0" * 64)
    return ok and expected is not None


def plain_payload(username: bytes, password: bytes, authzid: bytes = b"") -> bytes:
    """The PLAIN message ``authzid NUL user NUL password`` (RFC 4616)."""
    for part in (authzid, username, password):
        if b"\0" in part:
            raise ValueError("SASL PLAIN fields must not contain NUL")
    return b"\0".join((authzid, username, password))


# -- SCRAM helpers -----------------------------------------------------------

def _hmac(algorithm: str, key: bytes, msg: bytes) -> bytes:
    return hmac.new(key, msg, algorithm).digest()


def _xor(a: bytes, b: bytes) -> bytes:
    return bytes(x ^ y for x, y in zip(a, b))


def _b64decode(value: bytes, what: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise SaslFailure("SCRAM %s is not valid base64" % what) from None


def _decode_saslname(value: bytes) -> bytes:
    """RFC 5802 saslname: ``=2C`` is ``,``, ``=3D`` is ``=``, any other ``=`` is an error."""
    if not value:
        raise SaslFailure("SCRAM username is empty")
    out, rest = [], value
    while rest:
        head, eq, rest = rest.partition(b"=")
        out.append(head)
        if eq:
            code, rest = rest[:2], rest[2:]
            if code not in (b"2C", b"3D"):
                raise SaslFailure("SCRAM username has a bad '=' escape")
            out.append(b"," if code == b"2C" else b"=")
    return b"".join(out)


def _encode_saslname(value: bytes) -> bytes:
    return value.replace(b"=", b"=3D").replace(b",", b"=2C")


def _check_nonce(nonce: bytes) -> bytes:
    """A nonce is opaque up to the comma: printable ASCII (space too), not empty."""
    if not nonce or any(c < 0x20 or c > 0x7E for c in nonce):
        raise SaslFailure("SCRAM nonce is empty or not printable")
    return nonce


def _attribute(part: bytes, key: bytes, message: str) -> bytes:
    """The value of ``key=value``, or SaslFailure(message)."""
    if not part.startswith(key + b"="):
        raise SaslFailure(message)
    return part[len(key) + 1:]


def _parse_gs2(message: bytes) -> Tuple[bytes, Optional[bytes], bytes]:
    """Split a client-first message into (gs2 header, authzid, bare)."""
    parts = message.split(b",", 2)
    if len(parts) != 3:
        raise SaslFailure("SCRAM client-first message has no gs2 header")
    flag, authz, bare = parts
    if flag.startswith(b"p="):
        raise SaslFailure("SCRAM channel binding (p=) is not supported")
    if flag not in (b"n", b"y"):
        raise SaslFailure("SCRAM gs2 header is malformed")
    authzid = None
    if authz:
        authzid = _decode_saslname(_attribute(authz, b"a", "SCRAM gs2 header is malformed"))
    return b"%s,%s," % (flag, authz), authzid, bare


def _parse_client_first(message: bytes) -> Tuple[bytes, bytes, bytes, bytes]:
    """(gs2 header, bare, username, client nonce) of a client-first message."""
    gs2, authzid, bare = _parse_gs2(message)
    parts = bare.split(b",")
    if parts[0].startswith(b"m="):
        raise SaslFailure("SCRAM mandatory extension (m=) is not supported")
    if len(parts) < 2:
        raise SaslFailure("SCRAM client-first message needs n= and r=")
    user = _decode_saslname(_attribute(parts[0], b"n", "SCRAM client-first message has no n="))
    nonce = _check_nonce(_attribute(parts[1], b"r", "SCRAM client-first message has no r="))
    if authzid is not None and authzid != user:
        raise SaslFailure("SCRAM authzid differs from the username")
    return gs2, bare, user, nonce


def _parse_client_final(message: bytes) -> Tuple[bytes, bytes, bytes, bytes]:
    """(without-proof, channel binding, nonce, proof) of a client-final message."""
    without_proof, sep, proof = message.rpartition(b",p=")
    if not sep:
        raise SaslFailure("SCRAM client-final message has no p=")
    parts = without_proof.split(b",")
    if len(parts) < 2:
        raise SaslFailure("SCRAM client-final message needs c=, r= and p=")
    binding = _attribute(parts[0], b"c", "SCRAM client-final message has no c=")
    nonce = _attribute(parts[1], b"r", "SCRAM client-final message has no r=")
    return without_proof, binding, nonce, proof


class ScramKeys:
    """
    A server's SCRAM secrets: the per-process salt key and a bounded cache of
    SaltedPassword, shared by every connection.  ``salt`` overrides the
    derivation (the RFC test vectors need their fixed salts).
    """

    def __init__(self, salt: Optional[Callable[[bytes], bytes]] = None,
                 capacity: int = 1024) -> None:
        self._salt_key = secrets.token_bytes(32)
        self._salt = salt
        self._capacity = capacity
        self._cache: Dict[Tuple[bytes, bytes, bytes, bytes, int], bytes] = {}

    def salt(self, username: bytes) -> bytes:
        """The user's salt: stable for this object's life, plausible for anyone."""
        if self._salt is not None:
            return self._salt(username)
        return _hmac("sha256", self._salt_key, b"salt\0" + username)[:16]

    def salted_password(self, mechanism: bytes, username: bytes, password: bytes,
                        salt: bytes, iterations: int) -> bytes:
        """Hi(password, salt, i) of RFC 5802, computed once per key."""
        key = (mechanism, username, password, salt, iterations)
        found = self._cache.get(key)
        if found is None:
            found = hashlib.pbkdf2_hmac(_HASHES[mechanism], password, salt, iterations)
            if len(self._cache) >= self._capacity:
                del self._cache[next(iter(self._cache))]
            self._cache[key] = found
        return found

    def decoy(self, mechanism: bytes, username: bytes) -> bytes:
        """A SaltedPassword for an unknown user: no password can match it."""
        return hmac.new(self._salt_key, b"decoy\0" + username, _HASHES[mechanism]).digest()


#: The keys every SaslServer shares unless given its own: one per process,
#: so salts are stable and PBKDF2 is paid once per user for the server's life.
_SHARED_KEYS = ScramKeys()


class _Conversation:
    """A SCRAM exchange between server-first and client-final."""

    def __init__(self, mechanism: bytes, gs2: bytes, username: bytes,
                 nonce: bytes, auth_prefix: bytes) -> None:
        self.mechanism = mechanism
        self.gs2 = gs2
        self.username = username
        self.nonce = nonce
        self.auth_prefix = auth_prefix     # client-first-bare "," server-first


class SaslServer:
    """
    One connection's SASL state.  ``credentials`` maps user to password;
    None accepts any credentials (see the module docstring).  A new
    :meth:`auth` restarts the conversation and drops an earlier success.
    """

    def __init__(self, credentials: Optional[Mapping[bytes, bytes]],
                 nonce: Callable[[], bytes] = _random_nonce,
                 iterations: int = 4096, *, keys: Optional[ScramKeys] = None) -> None:
        self._credentials = credentials
        self._nonce = nonce
        self._iterations = iterations
        self._keys = keys if keys is not None else _SHARED_KEYS
        self._scram: Optional[_Conversation] = None
        self.username: Optional[bytes] = None

    @property
    def authenticated(self) -> bool:
        """True once a PLAIN or SCRAM exchange has succeeded."""
        return self.username is not None

    def mechanisms(self) -> bytes:
        """The SASL_LIST_MECHS answer."""
        return b" ".join(MECHANISMS)

    def auth(self, mechanism: bytes, payload: bytes) -> Tuple[bool, bytes]:
        """SASL_AUTH: (True, b"") done (PLAIN), or (False, server-first) to continue."""
        self._scram = None
        self.username = None
        self._check_size(mechanism, payload)
        if mechanism == b"PLAIN":
            return self._plain(payload), b""
        if mechanism not in _HASHES:
            raise SaslFailure("unknown SASL mechanism")
        return False, self._server_first(mechanism, payload)

    def step(self, mechanism: bytes, payload: bytes) -> Tuple[bool, bytes]:
        """SASL_STEP: (True, server-final) done; every refusal raises SaslFailure."""
        conversation, self._scram = self._scram, None
        self._check_size(mechanism, payload)
        if conversation is None:
            raise SaslFailure("SASL_STEP without a SCRAM SASL_AUTH in progress")
        if mechanism != conversation.mechanism:
            raise SaslFailure("SASL_STEP mechanism differs from SASL_AUTH's")
        return True, self._server_final(conversation, payload)

    @staticmethod
    def _check_size(mechanism: bytes, payload: bytes) -> None:
        if len(payload) > MAX_PAYLOAD or len(mechanism) > 64:
            raise SaslFailure("SASL message longer than %d bytes" % MAX_PAYLOAD)

    def _plain(self, payload: bytes) -> bool:
        parts = payload.split(b"\0")
        if len(parts) != 3 or not parts[1]:
            raise SaslFailure("SASL PLAIN message is malformed")
        authzid, user, password = parts
        if authzid and authzid != user:
            raise SaslFailure("SASL PLAIN authzid differs from the username")
        if not check_password(self._credentials, user, password):
            raise SaslFailure(_AUTH_FAILED)
        self.username = user
        return True

    def _server_first(self, mechanism: bytes, payload: bytes) -> bytes:
        gs2, bare, user, client_nonce = _parse_client_first(payload)
        nonce = client_nonce + self._nonce()
        salt = self._keys.salt(user)
        first = b"r=%s,s=%s,i=%d" % (nonce, base64.b64encode(salt), self._iterations)
        self._scram = _Conversation(mechanism, gs2, user, nonce, bare + b"," + first)
        return first

    def _server_final(self, conv: _Conversation, payload: bytes) -> bytes:
        without_proof, binding, nonce, proof_b64 = _parse_client_final(payload)
        if _b64decode(binding, "channel binding") != conv.gs2:
            raise SaslFailure("SCRAM channel binding differs from the gs2 header")
        if not hmac.compare_digest(nonce, conv.nonce):
            raise SaslFailure("SCRAM client-final nonce does not match")
        proof = _b64decode(proof_b64, "proof")
        algorithm = _HASHES[conv.mechanism]
        if len(proof) != hashlib.new(algorithm).digest_size:
            raise SaslFailure("SCRAM proof has the wrong length")
        auth_message = conv.auth_prefix + b"," + without_proof
        if self._credentials is None:
            self.username = conv.username
            return b""
        salted = self._salted(conv)
        if not self._proof_matches(algorithm, salted, auth_message, proof):
            raise SaslFailure(_AUTH_FAILED)
        self.username = conv.username
        server_key = _hmac(algorithm, salted, _SERVER_KEY)
        return b"v=" + base64.b64encode(_hmac(algorithm, server_key, auth_message))

    def _salted(self, conv: _Conversation) -> bytes:
        """The user's SaltedPassword, or a decoy no proof matches (unknown user)."""
        assert self._credentials is not None
        password = self._credentials.get(conv.username)
        if password is None:
            return self._keys.decoy(conv.mechanism, conv.username)
        salt = self._keys.salt(conv.username)
        return self._keys.salted_password(conv.mechanism, conv.username, password,
                                          salt, self._iterations)

    @staticmethod
    def _proof_matches(algorithm: str, salted: bytes, auth_message: bytes,
                       proof: bytes) -> bool:
        """RFC 5802 section 3: H(proof XOR ClientSignature) == StoredKey."""
        stored_key = hashlib.new(algorithm, _hmac(algorithm, salted, _CLIENT_KEY)).digest()
        signature = _hmac(algorithm, stored_key, auth_message)
        candidate = hashlib.new(algorithm, _xor(proof, signature)).digest()
        return hmac.compare_digest(candidate, stored_key)


class ScramClient:
    """The client side of one SCRAM exchange (tests, and txcb's own clients)."""

    def __init__(self, mechanism: bytes, username: bytes, password: bytes,
                 nonce: Optional[bytes] = None) -> None:
        if mechanism not in _HASHES:
            raise ValueError("not a SCRAM mechanism")
        self._algorithm = _HASHES[mechanism]
        self._username = username
        self._password = password
        self._nonce = nonce if nonce is not None else _random_nonce()
        self._bare = b"n=%s,r=%s" % (_encode_saslname(username), self._nonce)
        self._server_signature: Optional[bytes] = None

    def first(self) -> bytes:
        """The client-first message (the SASL_AUTH payload)."""
        return b"n,," + self._bare

    def final(self, server_first: bytes) -> bytes:
        """The client-final message (the SASL_STEP payload) for ``server_first``."""
        parts = server_first.split(b",")
        if len(parts) < 3:
            raise SaslFailure("SCRAM server-first message is malformed")
        nonce = _attribute(parts[0], b"r", "SCRAM server-first message has no r=")
        salt = _b64decode(_attribute(parts[1], b"s", "SCRAM server-first has no s="), "salt")
        count = _attribute(parts[2], b"i", "SCRAM server-first message has no i=")
        if not nonce.startswith(self._nonce) or nonce == self._nonce:
            raise SaslFailure("SCRAM server nonce does not extend the client's")
        if not count.isdigit() or not 1 <= int(count) <= 10_000_000:
            raise SaslFailure("SCRAM iteration count is not a sane number")
        salted = hashlib.pbkdf2_hmac(self._algorithm, self._password, salt, int(count))
        without_proof = b"c=biws,r=" + nonce
        auth_message = b",".join((self._bare, server_first, without_proof))
        client_key = _hmac(self._algorithm, salted, _CLIENT_KEY)
        stored_key = hashlib.new(self._algorithm, client_key).digest()
        proof = _xor(client_key, _hmac(self._algorithm, stored_key, auth_message))
        server_key = _hmac(self._algorithm, salted, _SERVER_KEY)
        self._server_signature = _hmac(self._algorithm, server_key, auth_message)
        return without_proof + b",p=" + base64.b64encode(proof)

    def verify(self, server_final: bytes) -> None:
        """Check the server signature ``v=``: SaslFailure unless it proves the password."""
        if self._server_signature is None:
            raise SaslFailure("SCRAM verify before final")
        if server_final.startswith(b"e="):
            raise SaslFailure("SCRAM server refused the authentication")
        value = _attribute(server_final.split(b",")[0], b"v", "SCRAM server-final has no v=")
        if not hmac.compare_digest(_b64decode(value, "server signature"),
                                   self._server_signature):
            raise SaslFailure("SCRAM server signature is wrong")
