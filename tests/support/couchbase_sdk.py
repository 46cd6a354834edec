"""
A real ``twistd -n txcb --couchbase PORT`` process, and the official
Couchbase Python SDK (sync API) connected to it with short timeouts.

:func:`shared_txcb` is one ephemeral server per test run, started on first
use and stopped at exit (by pid, like every process of
:mod:`tests.support.procs`); tests that restart or configure a server start
their own :class:`TxcbTwistd` and stop it at cleanup.
"""

import os
import shutil
import sys
import tempfile
from datetime import timedelta

from tests.support import ROOT
from tests.support.procs import Process, free_port

try:
    from couchbase.auth import PasswordAuthenticator
    from couchbase.cluster import Cluster
    from couchbase.options import ClusterOptions, ClusterTimeoutOptions
    SKIP_SDK = None
except ImportError as e:  # pragma: no cover - no wheel for this platform
    SKIP_SDK = "the official couchbase SDK is not importable here: %s" % (e,)

__all__ = ["SKIP_SDK", "TxcbTwistd", "shared_txcb", "connect", "KV_TIMEOUT"]

#: The SDK's KV timeout in these tests: a retried failure costs this long.
KV_TIMEOUT = timedelta(seconds=1)


class TxcbTwistd(Process):
    """``twistd -n txcb --couchbase PORT ARGS`` from this checkout."""

    name = "txcb-twistd"

    def __init__(self, args=(), port=None, data_dir=None):
        Process.__init__(self, port)
        self.args = list(args)
        self.own_dir = data_dir is None
        self.data_dir = data_dir or tempfile.mkdtemp(prefix="txcb-cb-data-")

    def argv(self):
        return [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", self.log_path, "txcb",
                "--port", "tcp:0:interface=127.0.0.1", "--couchbase", str(self.port),
                "--data-dir", self.data_dir] + self.args

    def env(self):
        return dict(os.environ, PYTHONPATH=ROOT)

    def start(self, timeout=30.0):
        return Process.start(self, timeout)

    def stop(self, timeout=5.0):
        Process.stop(self, timeout)

    def remove(self):
        """Stop, and remove the data directory if it is this server's own."""
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)


_shared = []


def shared_txcb():
    """The run's shared ephemeral server (started on first use)."""
    if not _shared or not _shared[0].running:
        _shared[:] = [TxcbTwistd(["--ephemeral"]).start()]
    return _shared[0]


def connect(testcase, port, user="user", password="pass", mechanisms=None,
            bucket="default", wait=True):
    """(cluster, bucket, default collection), closed at the test's cleanup."""
    auth = (PasswordAuthenticator(user, password, allowed_sasl_mechanisms=mechanisms)
            if mechanisms else PasswordAuthenticator(user, password))
    timeouts = ClusterTimeoutOptions(kv_timeout=KV_TIMEOUT,
                                     kv_durable_timeout=timedelta(seconds=3),
                                     connect_timeout=timedelta(seconds=5))
    cluster = Cluster("couchbase://127.0.0.1:%d" % (port,),
                      ClusterOptions(auth, timeout_options=timeouts))
    testcase.addCleanup(cluster.close)
    if wait:
        cluster.wait_until_ready(timedelta(seconds=5))
    b = cluster.bucket(bucket)
    return cluster, b, b.default_collection()


def free_ports(n):
    """``n`` distinct free loopback ports."""
    ports = set()
    while len(ports) < n:
        ports.add(free_port())
    return sorted(ports)
