"""
txcb.wire.sasl: PLAIN and SCRAM-SHA1/256/512 against the RFC 5802 and RFC
7677 test vectors, the official SDK's nonce with spaces, and one test per
hostile input the Couchbase endpoint must refuse with a one-line error.
"""

import base64
import hashlib
import hmac
import importlib.util

from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.trial.unittest import SkipTest, SynchronousTestCase, TestCase

from txcb.wire import sasl
from txcb.wire.sasl import (MAX_PAYLOAD, MECHANISMS, SaslFailure, SaslServer, ScramClient,
                            ScramKeys, plain_payload)

from tests.support import sasl_peer

PASSWORD = b"pencil"
CREDS = {b"user": PASSWORD, b"a,b=c": b"s3cret", b"bob": b"hunter2"}

#: (mechanism, client nonce, server nonce, salt, client-final, server-final)
RFC_VECTORS = {
    "RFC 5802": (
        b"SCRAM-SHA1", b"fyko+d2lbbFgONRv9qkxdawL", b"3rfcNHYJY1ZVvWVs7j",
        b"QSXCR+Q6sek8bf92",
        b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,"
        b"p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts=",
        b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ="),
    "RFC 7677": (
        b"SCRAM-SHA256", b"rOprNGfwEbeRWgbNEkqO", b"%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        b"W22ZaJ0SNY7soEsUEjb6gQ==",
        b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
        b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ=",
        b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4="),
}

#: What the official SDK's C++ core sends as a client nonce: to_hex() of 8
#: random chars, each "0x.." (sign-extended when negative), space separated.
SDK_NONCE = b"0x1f 0xffffffa3 0x07 0x5c 0xffffff80 0x2e 0x00 0x7f"


def rfc_server(name):
    """A server and client primed with one RFC's nonces and salt."""
    mech, cnonce, snonce, salt, _final, _server_final = RFC_VECTORS[name]
    keys = ScramKeys(salt=lambda user: base64.b64decode(salt))
    server = SaslServer(CREDS, nonce=lambda: snonce, keys=keys)
    return server, ScramClient(mech, b"user", PASSWORD, nonce=cnonce)


def scram_first(server, mech=b"SCRAM-SHA512", user=b"user", password=PASSWORD,
                nonce=None):
    """Run SASL_AUTH; return (client, server-first)."""
    client = ScramClient(mech, user, password, nonce=nonce)
    done, first = server.auth(mech, client.first())
    assert not done
    return client, first


def scram_login(server, mech=b"SCRAM-SHA512", user=b"user", password=PASSWORD,
                nonce=None):
    """A whole SCRAM exchange; return (client, server-final)."""
    client, first = scram_first(server, mech, user, password, nonce)
    done, final = server.step(mech, client.final(first))
    assert done
    return client, final


#: Secrets no failure message may show (tests add their proofs and nonces).
SECRETS = (PASSWORD, b"s3cret", b"hunter2", SDK_NONCE)


class FailureRecorder:
    """Assert a call fails with a one-line message that shows no secret."""

    @staticmethod
    def expect(testcase, call, *args, secrets=()):
        """Assert ``call(*args)`` raises SaslFailure; return its message."""
        message = str(testcase.assertRaises(SaslFailure, call, *args))
        testcase.assertTrue(message)
        testcase.assertNotIn("\n", message)
        for secret in SECRETS + tuple(secrets):
            testcase.assertNotIn(secret.decode("latin-1"), message)
            testcase.assertNotIn(base64.b64encode(secret).decode(), message)
        return message


def signed_final(mech, password, server_first, bare, gs2):
    """
    An independent RFC 5802 client-final for any gs2 header (ScramClient
    always sends n,,), computed straight from the RFC's formulas.
    """
    algorithm = {b"SCRAM-SHA1": "sha1", b"SCRAM-SHA256": "sha256",
                 b"SCRAM-SHA512": "sha512"}[mech]
    fields = dict(part.split(b"=", 1) for part in server_first.split(b","))
    salted = hashlib.pbkdf2_hmac(algorithm, password, base64.b64decode(fields[b"s"]),
                                 int(fields[b"i"]))
    without_proof = b"c=" + base64.b64encode(gs2) + b",r=" + fields[b"r"]
    auth_message = b",".join((bare, server_first, without_proof))
    client_key = hmac.new(salted, b"Client Key", algorithm).digest()
    stored_key = hashlib.new(algorithm, client_key).digest()
    signature = hmac.new(stored_key, auth_message, algorithm).digest()
    proof = bytes(a ^ b for a, b in zip(client_key, signature))
    return without_proof + b",p=" + base64.b64encode(proof)


class ScramVectorTests(SynchronousTestCase):
    """The RFCs' exchanges, byte for byte, in both directions."""

    def check_vector(self, name):
        mech, cnonce, snonce, salt, client_final, server_final = RFC_VECTORS[name]
        server, client = rfc_server(name)
        done, first = server.auth(mech, client.first())
        self.assertEqual((done, first),
                         (False, b"r=" + cnonce + snonce + b",s=" + salt + b",i=4096"))
        self.assertEqual(client.final(first), client_final)
        self.assertEqual(server.step(mech, client_final), (True, server_final))
        client.verify(server_final)
        self.assertEqual(server.username, b"user")
        self.assertTrue(server.authenticated)

    def test_rfc5802_scram_sha1_vector(self):
        self.check_vector("RFC 5802")

    def test_rfc7677_scram_sha256_vector(self):
        self.check_vector("RFC 7677")

    def test_client_first_is_the_rfc_one(self):
        _server, client = rfc_server("RFC 5802")
        self.assertEqual(client.first(), b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL")

    def test_client_rejects_wrong_server_signature(self):
        server, client = rfc_server("RFC 7677")
        client.final(server.auth(b"SCRAM-SHA256", client.first())[1])
        FailureRecorder.expect(self, client.verify, b"v=" + base64.b64encode(b"x" * 32))

    def test_client_rejects_server_error(self):
        server, client = rfc_server("RFC 7677")
        client.final(server.auth(b"SCRAM-SHA256", client.first())[1])
        FailureRecorder.expect(self, client.verify, b"e=invalid-proof")


class ScramExchangeTests(SynchronousTestCase):
    """Round trips with the default salts, nonces and key cache."""

    def test_mechanisms(self):
        self.assertEqual(SaslServer(CREDS).mechanisms(),
                         b"SCRAM-SHA512 SCRAM-SHA256 SCRAM-SHA1 PLAIN")
        self.assertEqual(MECHANISMS[0], b"SCRAM-SHA512")

    def test_sha512_round_trip(self):
        server = SaslServer(CREDS)
        client, final = scram_login(server)
        client.verify(final)
        self.assertEqual(server.username, b"user")

    def test_every_scram_mechanism_round_trips(self):
        for mech in MECHANISMS[:3]:
            server = SaslServer(CREDS)
            client, final = scram_login(server, mech)
            client.verify(final)
            self.assertTrue(server.authenticated, mech)

    def test_sdk_nonce_with_spaces(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server, nonce=SDK_NONCE)
        self.assertTrue(first.startswith(b"r=" + SDK_NONCE))
        client.verify(server.step(b"SCRAM-SHA512", client.final(first))[1])
        self.assertTrue(server.authenticated)

    def test_server_first_is_exactly_r_s_i(self):
        # The SDK refuses a server-first with any other attribute.
        _client, first = scram_first(SaslServer(CREDS))
        self.assertEqual([part[:2] for part in first.split(b",")], [b"r=", b"s=", b"i="])

    def test_default_server_nonce_is_fresh_base64(self):
        server = SaslServer(CREDS)
        nonces = set()
        for _ in range(3):
            _client, first = scram_first(server, nonce=b"abc")
            snonce = first.split(b",")[0][len(b"r=abc"):]
            self.assertEqual(len(base64.b64decode(snonce, validate=True)), 24)
            nonces.add(snonce)
        self.assertEqual(len(nonces), 3)

    def test_salt_is_stable_per_user_across_connections(self):
        salts = {scram_first(SaslServer(CREDS))[1].split(b",")[1] for _ in range(3)}
        self.assertEqual(len(salts), 1)
        other = scram_first(SaslServer(CREDS), user=b"bob", password=b"hunter2")[1]
        self.assertNotIn(other.split(b",")[1], salts)

    def test_salted_password_is_computed_once_per_user(self):
        keys = ScramKeys()
        calls = []
        real = hashlib.pbkdf2_hmac

        def counting(*args):
            calls.append(args[0])
            return real(*args)
        self.patch(sasl.hashlib, "pbkdf2_hmac", counting)
        for _ in range(3):
            scram_login(SaslServer(CREDS, keys=keys))
        # One on the server for all three connections, one per client.
        self.assertEqual(len(calls), 1 + 3)

    def test_key_cache_is_bounded(self):
        keys = ScramKeys(capacity=2)
        creds = {b"u%d" % i: b"p" for i in range(5)}
        for user in creds:
            scram_login(SaslServer(creds, iterations=16, keys=keys), user=user, password=b"p")
        self.assertEqual(len(keys._cache), 2)

    def test_usernames_with_escaped_comma_and_equals(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server, user=b"a,b=c", password=b"s3cret")
        self.assertIn(b"n=a=2Cb=3Dc,", client.first())
        client.verify(server.step(b"SCRAM-SHA512", client.final(first))[1])
        self.assertEqual(server.username, b"a,b=c")

    def test_gs2_y_flag_and_authzid_accepted(self):
        for gs2 in (b"y,,", b"n,a=user,", b"y,a=user,", b"n,a=a=2Cb=3Dc,"):
            user, password = (b"a,b=c", b"s3cret") if b"=2C" in gs2 else (b"user", PASSWORD)
            bare = b"n=" + user.replace(b"=", b"=3D").replace(b",", b"=2C") + b",r=abc"
            server = SaslServer(CREDS)
            first = server.auth(b"SCRAM-SHA256", gs2 + bare)[1]
            final = signed_final(b"SCRAM-SHA256", password, first, bare, gs2)
            done, verifier = server.step(b"SCRAM-SHA256", final)
            self.assertTrue(done and verifier.startswith(b"v="), gs2)
            self.assertEqual(server.username, user)

    def test_client_final_binding_of_another_gs2_header(self):
        # Signed correctly, but c= is not the header client-first sent.
        bare = b"n=user,r=abc"
        server = SaslServer(CREDS)
        first = server.auth(b"SCRAM-SHA256", b"n,," + bare)[1]
        final = signed_final(b"SCRAM-SHA256", PASSWORD, first, bare, b"y,,")
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA256", final)
        self.assertFalse(server.authenticated)

    def test_new_auth_restarts_the_conversation(self):
        server = SaslServer(CREDS)
        stale, stale_first = scram_first(server)
        client, first = scram_first(server)
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", stale.final(stale_first))
        server.auth(b"SCRAM-SHA512", client.first())
        self.assertFalse(server.authenticated)


class AcceptAnyTests(SynchronousTestCase):
    """credentials=None: the endpoint allows it only on loopback."""

    def test_plain_accepts_any_user_and_password(self):
        server = SaslServer(None)
        self.assertEqual(server.auth(b"PLAIN", plain_payload(b"who", b"ever")), (True, b""))
        self.assertEqual(server.username, b"who")

    def test_scram_accepts_any_password_without_signature(self):
        server = SaslServer(None)
        client, first = scram_first(server, user=b"anyone", password=b"anything",
                                    nonce=SDK_NONCE)
        self.assertEqual(server.step(b"SCRAM-SHA512", client.final(first)), (True, b""))
        self.assertEqual(server.username, b"anyone")
        # A client that checks v= rightly refuses a server without the password.
        FailureRecorder.expect(self, client.verify, b"")

    def test_scram_still_checks_the_nonce(self):
        server = SaslServer(None)
        client, first = scram_first(server)
        final = client.final(first).replace(b"r=", b"r=X", 1)
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final)
        self.assertFalse(server.authenticated)

    def test_scram_replay_refused(self):
        server = SaslServer(None)
        client, first = scram_first(server)
        final = client.final(first)
        server.step(b"SCRAM-SHA512", final)
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final)


class PlainTests(SynchronousTestCase):
    """SASL PLAIN against the credentials."""

    def test_plain_without_authzid(self):
        server = SaslServer(CREDS)
        self.assertEqual(server.auth(b"PLAIN", plain_payload(b"user", PASSWORD)), (True, b""))
        self.assertEqual(server.username, b"user")

    def test_plain_with_matching_authzid(self):
        server = SaslServer(CREDS)
        self.assertEqual(server.auth(b"PLAIN", plain_payload(b"user", PASSWORD, b"user")),
                         (True, b""))

    def test_plain_with_other_authzid(self):
        server = SaslServer(CREDS)
        FailureRecorder.expect(self, server.auth, b"PLAIN",
                               plain_payload(b"user", PASSWORD, b"bob"), secrets=[PASSWORD])
        self.assertFalse(server.authenticated)

    def test_plain_wrong_password(self):
        server = SaslServer(CREDS)
        wrong = FailureRecorder.expect(self, server.auth, b"PLAIN",
                                       plain_payload(b"user", b"pencil2"), secrets=[b"pencil2"])
        unknown = FailureRecorder.expect(self, server.auth, b"PLAIN",
                                         plain_payload(b"nobody", PASSWORD))
        self.assertEqual(wrong, unknown)
        self.assertIsNone(server.username)

    def test_plain_malformed(self):
        server = SaslServer(CREDS)
        for payload in (b"", b"user", b"\0user", b"\0\0pw", b"a\0b\0c\0d"):
            FailureRecorder.expect(self, server.auth, b"PLAIN", payload)

    def test_plain_empty_password_is_checked(self):
        server = SaslServer({b"guest": b""})
        self.assertEqual(server.auth(b"PLAIN", plain_payload(b"guest", b"")), (True, b""))
        FailureRecorder.expect(self, SaslServer(CREDS).auth, b"PLAIN",
                               plain_payload(b"user", b""))

    def test_plain_payload_refuses_nul(self):
        self.assertRaises(ValueError, plain_payload, b"us\0er", b"pw")


def client_final_without(field):
    """A valid SHA-256 exchange whose client-final lacks one attribute."""
    server = SaslServer(CREDS)
    client, first = scram_first(server, b"SCRAM-SHA256")
    parts = [p for p in client.final(first).split(b",") if not p.startswith(field)]
    return server, b",".join(parts)


class HostileScramTests(SynchronousTestCase):
    """Each hostile input the issue lists: an error, never a traceback."""

    def auth_fails(self, payload, mech=b"SCRAM-SHA512", creds=CREDS):
        server = SaslServer(creds)
        message = FailureRecorder.expect(self, server.auth, mech, payload)
        self.assertFalse(server.authenticated)
        # No conversation was started by a refused SASL_AUTH.
        FailureRecorder.expect(self, server.step, mech, b"c=biws,r=x,p=eA==")
        return message

    def test_client_first_empty(self):
        self.auth_fails(b"")

    def test_client_first_missing_username(self):
        self.auth_fails(b"n,,r=abc")
        self.auth_fails(b"n,,x=user,r=abc")

    def test_client_first_missing_nonce(self):
        self.auth_fails(b"n,,n=user")
        self.auth_fails(b"n,,n=user,s=abc")
        self.auth_fails(b"n,,n=user,r=")

    def test_client_first_nonce_with_control_bytes(self):
        self.auth_fails(b"n,,n=user,r=ab\ncd")
        self.auth_fails(b"n,,n=user,r=ab\xffcd")

    def test_client_first_bad_gs2_header(self):
        for payload in (b"n=user,r=abc", b"x,,n=user,r=abc", b"n,b=user,n=user,r=abc",
                        b",,n=user,r=abc", b"nn,,n=user,r=abc"):
            self.auth_fails(payload)

    def test_client_first_channel_binding_requested(self):
        message = self.auth_fails(b"p=tls-unique,,n=user,r=abc")
        self.assertIn("channel binding", message)

    def test_client_first_mandatory_extension(self):
        self.auth_fails(b"n,,m=ext,n=user,r=abc")

    def test_client_first_authzid_differs(self):
        self.auth_fails(b"n,a=bob,n=user,r=abc")

    def test_client_first_empty_username(self):
        self.auth_fails(b"n,,n=,r=abc")

    def test_username_with_bad_escape(self):
        for name in (b"a=2", b"a=", b"a=3E", b"a=2c"):
            self.auth_fails(b"n,,n=" + name + b",r=abc")

    def test_unknown_mechanism(self):
        for mech in (b"CRAM-MD5", b"SCRAM-SHA-256", b"scram-sha512", b"", b"PLAINX"):
            self.auth_fails(b"n,,n=user,r=abc", mech=mech)

    def test_over_long_payload_refused_before_any_work(self):
        calls = []
        self.patch(sasl, "_parse_client_first", lambda *a: calls.append(a))
        server = SaslServer(CREDS)
        payload = b"n,,n=user,r=" + b"x" * MAX_PAYLOAD
        FailureRecorder.expect(self, server.auth, b"SCRAM-SHA512", payload)
        FailureRecorder.expect(self, server.auth, b"PLAIN", b"\0user\0" + b"x" * MAX_PAYLOAD)
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", b"x" * (MAX_PAYLOAD + 1))
        FailureRecorder.expect(self, server.auth, b"M" * 100_000, b"")
        self.assertEqual(calls, [])

    def test_client_final_missing_channel_binding(self):
        server, final = client_final_without(b"c=")
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA256", final)

    def test_client_final_missing_nonce(self):
        server, final = client_final_without(b"r=")
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA256", final)

    def test_client_final_missing_proof(self):
        server, final = client_final_without(b"p=")
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA256", final)

    def test_client_final_empty(self):
        server, _final = client_final_without(b"p=")
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA256", b"")

    def test_client_final_wrong_channel_binding(self):
        for binding in (b"eSws", b"cD10bHMtdW5pcXVlLCw=", b"!!notbase64", b""):
            server = SaslServer(CREDS)
            client, first = scram_first(server)
            final = client.final(first).replace(b"c=biws", b"c=" + binding)
            message = FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final)
            self.assertNotEqual(message, "authentication failed")

    def test_client_final_nonce_mismatch(self):
        cases = {"truncated": lambda n: n[:-1], "extended": lambda n: n + b"x",
                 "client part changed": lambda n: b"abd" + n[3:],
                 "client part only": lambda n: b"abc", "empty": lambda n: b""}
        for name, change in cases.items():
            server = SaslServer(CREDS)
            client, first = scram_first(server, nonce=b"abc")
            nonce = first.split(b",")[0][2:]
            final = client.final(first).replace(b"r=" + nonce, b"r=" + change(nonce))
            message = FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final,
                                             secrets=[nonce])
            self.assertIn("nonce", message, name)

    def test_client_final_nonce_of_another_conversation(self):
        server_a, server_b = SaslServer(CREDS), SaslServer(CREDS)
        client_a, first_a = scram_first(server_a)
        scram_first(server_b)
        FailureRecorder.expect(self, server_b.step, b"SCRAM-SHA512", client_a.final(first_a))

    def test_wrong_proof(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server, password=b"pencil2")
        final = client.final(first)
        message = FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final,
                                         secrets=[b"pencil2", final.rpartition(b"p=")[2]])
        self.assertEqual(message, "authentication failed")
        self.assertFalse(server.authenticated)

    def test_proof_not_base64_or_wrong_length(self):
        for proof in (b"!!!!", base64.b64encode(b"x" * 20), b""):
            server = SaslServer(CREDS)
            client, first = scram_first(server)
            final = client.final(first).rpartition(b",p=")[0] + b",p=" + proof
            FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final)

    def test_flipped_proof_bit(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server)
        head, _sep, proof = client.final(first).rpartition(b",p=")
        raw = bytearray(base64.b64decode(proof))
        raw[0] ^= 1
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512",
                               head + b",p=" + base64.b64encode(bytes(raw)),
                               secrets=[proof])

    def test_unknown_user_fails_like_wrong_password(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server, user=b"nobody")
        self.assertRegex(first, rb"^r=[^,]+,s=[A-Za-z0-9+/=]{24},i=4096$")
        unknown = FailureRecorder.expect(self, server.step, b"SCRAM-SHA512",
                                         client.final(first))
        server = SaslServer(CREDS)
        client, first = scram_first(server, password=b"wrong")
        wrong = FailureRecorder.expect(self, server.step, b"SCRAM-SHA512",
                                       client.final(first), secrets=[b"wrong"])
        self.assertEqual(unknown, wrong)

    def test_replayed_client_final_after_success(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server)
        final = client.final(first)
        server.step(b"SCRAM-SHA512", final)
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final)
        # ... and on a new conversation (another server nonce).
        server.auth(b"SCRAM-SHA512", client.first())
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final)
        self.assertFalse(server.authenticated)

    def test_retry_after_wrong_proof_needs_a_new_auth(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server, password=b"wrong")
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", client.final(first))
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", b"c=biws,r=x,p=eA==")

    def test_step_without_auth(self):
        server = SaslServer(CREDS)
        message = FailureRecorder.expect(self, server.step, b"SCRAM-SHA512",
                                         b"c=biws,r=abc,p=eA==")
        self.assertIn("without", message)

    def test_step_after_plain(self):
        server = SaslServer(CREDS)
        server.auth(b"PLAIN", plain_payload(b"user", PASSWORD))
        FailureRecorder.expect(self, server.step, b"PLAIN", b"")

    def test_step_with_another_mechanism(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server, b"SCRAM-SHA256")
        message = FailureRecorder.expect(self, server.step, b"SCRAM-SHA512",
                                         client.final(first))
        self.assertIn("mechanism", message)
        self.assertFalse(server.authenticated)

    def test_client_refuses_malformed_server_first(self):
        for first in (b"", b"r=abc", b"s=eA==,r=abcdef,i=1", b"r=abcd,s=eA==,i=x",
                      b"r=abcd,s=eA==,i=0", b"r=zzzz,s=eA==,i=1", b"r=abc,s=eA==,i=1",
                      b"r=abcd,s=!!,i=1"):
            client = ScramClient(b"SCRAM-SHA1", b"user", PASSWORD, nonce=b"abc")
            FailureRecorder.expect(self, client.final, first)


class FailureMessageTests(SynchronousTestCase):
    """Failure messages are fixed strings: peer bytes never reach them."""

    def test_messages_are_fixed_strings(self):
        server = SaslServer(CREDS)
        one = FailureRecorder.expect(self, server.auth, b"X-ONE", b"n,,n=user,r=abc")
        two = FailureRecorder.expect(self, server.auth, b"X-TWO", b"n,,n=bob,r=xyz")
        self.assertEqual(one, two)

    def test_wrong_password_message_shows_no_secret(self):
        server = SaslServer(CREDS)
        client, first = scram_first(server, password=b"Wr0ngPassw0rd", nonce=SDK_NONCE)
        final = client.final(first)
        FailureRecorder.expect(self, server.step, b"SCRAM-SHA512", final,
                               secrets=[b"Wr0ngPassw0rd", final.rpartition(b"p=")[2],
                                        first.split(b",")[0][2:]])


class SdkSaslTests(TestCase):
    """
    The official SDK (a child process) against SaslServer behind a minimal
    KV peer: what it sends, and what it accepts back.
    """

    timeout = 60

    def setUp(self):
        if importlib.util.find_spec("couchbase") is None:
            raise SkipTest("the couchbase SDK is not installed")

    def listen(self, credentials, bad_signature=False):
        factory = sasl_peer.SaslPeerFactory(credentials, bad_signature)
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        factory.port = port.getHost().port
        return factory

    @inlineCallbacks
    def test_sdk_scram_sha512_with_credentials(self):
        peer = self.listen({b"Administrator": b"password"})
        result = yield sasl_peer.run_sdk(peer.port, "Administrator", "password")
        self.assertEqual(result, ["RESULT OK 1"])
        opcode, done, first = peer.answers[0]
        self.assertEqual((opcode, done), (0x21, False))
        # The SDK chose SHA-512 and its nonce has spaces; the server signed.
        self.assertIn(b" ", first.split(b",")[0])
        self.assertTrue(peer.answers[1][2].startswith(b"v="))
        self.assertEqual(peer.failures, [])

    @inlineCallbacks
    def test_sdk_wrong_password_refused(self):
        peer = self.listen({b"Administrator": b"password"})
        result = yield sasl_peer.run_sdk(peer.port, "Administrator", "wrong")
        self.assertEqual(result, ["RESULT FAIL AuthenticationException"])
        self.assertIn("authentication failed", peer.failures)

    @inlineCallbacks
    def test_sdk_plain_when_asked(self):
        peer = self.listen({b"Administrator": b"password"})
        result = yield sasl_peer.run_sdk(peer.port, "Administrator", "password", "PLAIN")
        self.assertEqual(result, ["RESULT OK 1"])
        self.assertEqual(peer.answers[0], (0x21, True, b""))

    @inlineCallbacks
    def test_sdk_accept_any_scram_without_signature(self):
        # The decision accept-any mode rests on: the SDK connects although
        # the server cannot sign (the SASL_STEP answer has no v=).
        peer = self.listen(None)
        result = yield sasl_peer.run_sdk(peer.port, "anyone", "anything")
        self.assertEqual(result, ["RESULT OK 1"])
        self.assertEqual(peer.answers[1], (0x22, True, b""))

    @inlineCallbacks
    def test_sdk_does_not_check_server_signature(self):
        # Why accept-any works: a wrong v= does not stop the SDK either.
        peer = self.listen({b"Administrator": b"password"}, bad_signature=True)
        result = yield sasl_peer.run_sdk(peer.port, "Administrator", "password")
        self.assertEqual(result, ["RESULT OK 1"])
