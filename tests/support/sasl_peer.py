"""
A minimal Couchbase KV peer for SASL tests: just enough of the binary
protocol (HELLO, the SASL opcodes, SELECT_BUCKET, GET_CLUSTER_CONFIG, SET,
GET, NOOP) for the official SDK to bootstrap through
:class:`txcb.wire.sasl.SaslServer` and do one upsert and get.  Not the
Couchbase endpoint: it checks the SASL module against the real SDK on its own.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Dict, List, Optional, Tuple

from twisted.internet import protocol, utils

from txcb.wire.sasl import SaslFailure, SaslServer

from tests.support import ROOT

HEADER = struct.Struct(">BBHBBHIIQ")
AUTH_ERROR, AUTH_CONTINUE, UNKNOWN_COMMAND = 0x20, 0x21, 0x81

#: Run by a child python: connect, upsert, get; print one RESULT line.
SDK_SCRIPT = r"""
import sys
from datetime import timedelta
from couchbase.auth import PasswordAuthenticator
from couchbase.cluster import Cluster
from couchbase.options import ClusterOptions, ClusterTimeoutOptions
port, user, password, mechs = sys.argv[1:5]
kw = {"allowed_sasl_mechanisms": mechs.split(",")} if mechs else {}
opts = ClusterOptions(PasswordAuthenticator(user, password, **kw),
    timeout_options=ClusterTimeoutOptions(kv_timeout=timedelta(seconds=3),
        connect_timeout=timedelta(seconds=5), bootstrap_timeout=timedelta(seconds=5)))
url = ("couchbase://127.0.0.1:%s?enable_compression=false"
       "&enable_clustermap_notification=false&enable_unordered_execution=false"
       "&enable_mutation_tokens=false" % port)
try:
    coll = Cluster(url, opts).bucket("default").default_collection()
    coll.upsert("k", {"a": 1})
    print("RESULT OK", coll.get("k").content_as[dict]["a"])
except Exception as e:
    print("RESULT FAIL", type(e).__name__)
"""


def cluster_config(port: int) -> bytes:
    """The smallest config the SDK bootstraps with (one node, 1024 vbuckets)."""
    return json.dumps({
        "rev": 1, "name": "default", "nodeLocator": "vbucket",
        "nodesExt": [{"services": {"kv": port}, "hostname": "$HOST"}],
        "vBucketServerMap": {"hashAlgorithm": "CRC", "numReplicas": 0,
                             "serverList": ["$HOST:%d" % port],
                             "vBucketMap": [[0]] * 1024}}).encode()


def response(opcode: int, opaque: int, status: int = 0, extras: bytes = b"",
             value: bytes = b"") -> bytes:
    body = extras + value
    return HEADER.pack(0x81, opcode, 0, len(extras), 0, status, len(body), opaque, 1) + body


class SaslPeerProtocol(protocol.Protocol):
    """One SDK connection: SASL first, then a dict for SET and GET."""

    def __init__(self, factory: "SaslPeerFactory") -> None:
        self.factory = factory
        self.sasl = SaslServer(factory.credentials)
        self.buffer = b""

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        while len(self.buffer) >= 24:
            magic, opcode, keylen, extlen, _dt, _vb, bodylen, opaque, _cas = \
                HEADER.unpack_from(self.buffer)
            if len(self.buffer) < 24 + bodylen:
                return
            body, self.buffer = self.buffer[24:24 + bodylen], self.buffer[24 + bodylen:]
            framing = 0
            if magic == 0x08:
                framing, keylen = keylen >> 8, keylen & 0xFF
            extras = body[framing:framing + extlen]
            key = body[framing + extlen:framing + extlen + keylen]
            value = body[framing + extlen + keylen:]
            self.transport.write(self.answer(opcode, opaque, key, extras, value))

    def answer(self, opcode: int, opaque: int, key: bytes, extras: bytes,
               value: bytes) -> bytes:
        if opcode in (0x21, 0x22):
            return self.sasl_answer(opcode, opaque, key, value)
        if opcode == 0x1F:
            return response(opcode, opaque)
        if opcode == 0x20:
            return response(opcode, opaque, value=self.sasl.mechanisms())
        if not self.sasl.authenticated:
            return response(opcode, opaque, AUTH_ERROR)
        if opcode == 0xB5:
            return response(opcode, opaque, value=cluster_config(self.factory.port))
        if opcode == 0x01:
            self.factory.data[key] = (extras[:4], value)
        if opcode in (0x01, 0x89, 0x0A):
            return response(opcode, opaque)
        if opcode == 0x00 and key in self.factory.data:
            flags, stored = self.factory.data[key]
            return response(opcode, opaque, extras=flags, value=stored)
        return response(opcode, opaque, UNKNOWN_COMMAND)

    def sasl_answer(self, opcode: int, opaque: int, mechanism: bytes, payload: bytes) -> bytes:
        try:
            call = self.sasl.auth if opcode == 0x21 else self.sasl.step
            done, body = call(mechanism, payload)
        except SaslFailure as e:
            self.factory.failures.append(str(e))
            return response(opcode, opaque, AUTH_ERROR)
        if done and self.factory.bad_signature:
            body = b"v=AAAA"
        self.factory.answers.append((opcode, done, body))
        return response(opcode, opaque, 0 if done else AUTH_CONTINUE, value=body)


class SaslPeerFactory(protocol.Factory):
    """Shared state: credentials, the stored items, every SASL answer and failure."""

    def __init__(self, credentials: Optional[Dict[bytes, bytes]],
                 bad_signature: bool = False) -> None:
        self.credentials = credentials
        self.bad_signature = bad_signature
        self.port = 0
        self.data: Dict[bytes, Tuple[bytes, bytes]] = {}
        self.answers: List[Tuple[int, bool, bytes]] = []
        self.failures: List[str] = []

    def buildProtocol(self, addr: object) -> SaslPeerProtocol:
        return SaslPeerProtocol(self)


def run_sdk(port: int, user: str, password: str, mechanisms: str = ""):
    """A Deferred firing with the child's RESULT line (the SDK's own timeouts bound it)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    d = utils.getProcessOutput(sys.executable, ["-c", SDK_SCRIPT, str(port), user,
                                                password, mechanisms], env=env,
                               errortoo=True)
    return d.addCallback(lambda out: [line for line in out.decode().splitlines()
                                      if line.startswith("RESULT")][-1:])
