"""
Processes for the ``--backend couchbase://`` tests: a backing ``twistd txcb
--couchbase`` server (persistent, with named collections so every test gets
an empty keyspace of its own), a proxy ``twistd txcb --memcached M --port N
--backend couchbase://127.0.0.1:P`` in front of it, and the official SDK
reading the backing server's raw bytes and flags.
"""

import itertools
import os
import shutil
import sys
import tempfile
from datetime import timedelta

from tests.support import ROOT
from tests.support.couchbase_sdk import SKIP_SDK, TxcbTwistd
from tests.support.procs import Process, free_port

__all__ = ["SKIP_SDK", "backing_server", "ProxyTwistd", "RawReader", "USER", "PASSWORD",
           "SCOPE", "next_collection", "COLLECTIONS"]

USER, PASSWORD = "proxy", "s3cret:with colon"
#: The scope of the backing server's test collections, and how many it has.
SCOPE = "t"
COLLECTIONS = 128
_names = itertools.count()


def next_collection():
    """A collection of the backing server no test has used yet."""
    n = next(_names)
    if n >= COLLECTIONS:
        raise RuntimeError("out of test collections: raise COLLECTIONS")
    return "c%d" % (n,)


def backing_server(extra=(), data_dir=None):
    """A persistent ``twistd txcb --couchbase`` with COLLECTIONS collections
    ``default.t.cN`` and a 4096-byte value limit (not started)."""
    args = ["--max-value-size", "4096"] + list(extra)
    for n in range(COLLECTIONS):
        args += ["--collection", "default.%s.c%d" % (SCOPE, n)]
    return TxcbTwistd(args, data_dir=data_dir)


class ProxyTwistd(Process):
    """``twistd -n txcb --memcached PORT --port NETSTRING --backend URL`` with
    the credentials in a --backend-auth-file."""

    name = "txcb-proxy"

    def __init__(self, backend_port, extra=()):
        Process.__init__(self)
        self.netstring_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="txcb-proxy-")
        self.auth_file = os.path.join(self.dir, "backend-auth")
        with open(self.auth_file, "w") as f:
            f.write("%s:%s\n" % (USER, PASSWORD))
        self.backend = "couchbase://127.0.0.1:%d" % (backend_port,)
        self.extra = list(extra)

    def argv(self):
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", self.log_path, "txcb",
                "--memcached", str(self.port), "--port", str(self.netstring_port),
                "--backend", self.backend, "--backend-auth-file", self.auth_file,
                "--data-dir", os.path.join(self.dir, "data")] + self.extra

    def env(self):
        env = dict(os.environ, PYTHONPATH=ROOT)
        env.pop("TXCB_BACKEND_USER", None)
        env.pop("TXCB_BACKEND_PASSWORD", None)
        return env

    def start(self, timeout=30.0):
        return Process.start(self, timeout)

    def remove(self):
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


class RawReader:
    """The official SDK on the backing server, reading (bytes, flags) as stored."""

    def __init__(self, port):
        from couchbase.auth import PasswordAuthenticator
        from couchbase.cluster import Cluster
        from couchbase.options import ClusterOptions, ClusterTimeoutOptions
        from couchbase.transcoder import Transcoder

        class Raw(Transcoder):
            def encode_value(self, value):
                return value

            def decode_value(self, value, flags):
                return value, flags
        timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=2),
                                         connect_timeout=timedelta(seconds=5))
        self.cluster = Cluster("couchbase://127.0.0.1:%d" % (port,), ClusterOptions(
            PasswordAuthenticator(USER, PASSWORD), timeout_options=timeouts,
            transcoder=Raw()))
        self.coll = self.cluster.bucket("default").default_collection()

    def read(self, key):
        """(bytes, flags) of ``key`` in the default collection."""
        return self.coll.get(key).value

    def write(self, key, data, flags):
        self.coll.upsert(key, (data, flags))

    def close(self):
        self.cluster.close()
