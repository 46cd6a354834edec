"""
Applications of the official Couchbase SDK's asynchronous APIs against txcb:
``acouchbase`` coroutines run on their own asyncio loop in a thread of their
own (so they never touch the reactor of the test run), and trial runs in a
subprocess with the asyncio reactor (``txcouchbase`` installs it on import).
The twistd server itself comes from :mod:`tests.support.couchbase_sdk`;
:data:`EXAMPLES` holds the README's txcouchbase examples these tests run.
"""

import asyncio
import os
import shutil
import subprocess
import sys
import tempfile
import threading
from datetime import timedelta

from tests.support import ROOT

__all__ = ["EXAMPLES", "run_coroutine", "acouchbase_collection", "run_trial"]

#: docs/examples: the README's txcouchbase application and its trial tests.
EXAMPLES = os.path.join(ROOT, "docs", "examples")


def run_coroutine(main, *args, timeout=60.0):
    """
    ``asyncio.run(main(*args))`` in a new thread (a loop of its own, never
    the test's thread's); its result, or its exception re-raised here.
    """
    out = {}

    def run():
        try:
            out["result"] = asyncio.run(main(*args))
        except BaseException as e:  # re-raised in the test's thread
            out["error"] = e
    thread = threading.Thread(target=run, name="acouchbase", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise AssertionError("the acouchbase coroutine did not finish in %.0fs" % (timeout,))
    if "error" in out:
        raise out["error"]
    return out["result"]


async def acouchbase_collection(port, user="user", password="pass", mechanisms=None,
                                bucket="default", kv_timeout=1.0):
    """(cluster, default collection) of an ``acouchbase`` cluster on ``port``."""
    from acouchbase.cluster import Cluster
    from couchbase.auth import PasswordAuthenticator
    from couchbase.options import ClusterOptions, ClusterTimeoutOptions
    auth = (PasswordAuthenticator(user, password, allowed_sasl_mechanisms=mechanisms)
            if mechanisms else PasswordAuthenticator(user, password))
    timeouts = ClusterTimeoutOptions(kv_timeout=timedelta(seconds=kv_timeout),
                                     connect_timeout=timedelta(seconds=5))
    cluster = Cluster("couchbase://127.0.0.1:%d" % (port,),
                      ClusterOptions(auth, timeout_options=timeouts))
    await cluster.on_connect()
    b = cluster.bucket(bucket)
    await b.on_connect()
    return cluster, b.default_collection()


def run_trial(testcase, module, cwd=EXAMPLES, reactor="asyncio", env=None, timeout=120):
    """
    ``python -m twisted.trial --reactor=REACTOR MODULE`` run from ``cwd``
    with this checkout on the path: (exit status, output).  Trial's working
    directory is a temporary one, removed at cleanup.
    """
    work = tempfile.mkdtemp(prefix="txcb-trial-")
    testcase.addCleanup(shutil.rmtree, work, True)
    argv = [sys.executable, "-m", "twisted.trial", "--reactor=" + reactor,
            "--temp-directory=" + os.path.join(work, "_trial_temp"), module]
    environ = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, cwd]), **(env or {}))
    proc = subprocess.run(argv, cwd=cwd, env=environ, stdin=subprocess.DEVNULL,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=timeout)
    return proc.returncode, proc.stdout.decode("utf-8", "replace")
