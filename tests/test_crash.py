"""
Crash tests: a real ``twistd -n txcb`` process with a data dir, loaded by
several concurrent txcb clients, killed with SIGKILL (or stopped with
SIGTERM) mid-load, restarted on the same data dir, and checked: every write
(or remove) whose Deferred fired before the crash is there (or gone), with
the value and CAS it was acknowledged with.  Zero losses allowed.

Every loop is bounded in count and time; server processes are stopped by
pid at cleanup.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.trial import unittest

from txcb.client.remote import connect
from txcb.errors import CouchbaseError

from tests.support import sleep
from tests.support.procs import free_port

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLIENTS = 4
WORKERS = 16  # requests in flight per client
RING = 40  # keys each worker cycles through (so keys are also overwritten)
MAX_WRITES = 2000  # per worker: bounds the load even if the kill never comes
KILL_AFTER = 2500  # acknowledged operations before the signal


class Server:
    """One ``twistd -n txcb`` process on a data dir."""

    def __init__(self, testcase, data_dir, log_path):
        self.testcase = testcase
        self.data_dir = data_dir
        self.log_path = log_path
        self.proc = None
        self.port = None

    @defer.inlineCallbacks
    def start(self, timeout=20.0):
        """Start the server and connect ``CLIENTS`` clients to it."""
        self.port = free_port()
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + (os.pathsep + env["PYTHONPATH"]
                                    if env.get("PYTHONPATH") else "")
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                 "-n", "--pidfile=", "txcb",
                 "--port", "tcp:%d:interface=127.0.0.1" % (self.port,),
                 "--data-dir", self.data_dir],
                cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
        self.testcase.addCleanup(self.kill_now)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                self.testcase.fail("the server exited with %s at start-up:\n%s"
                                   % (self.proc.returncode, self.log()))
            try:
                first = yield connect(reactor, self.endpoint, timeout=5)
                break
            except CouchbaseError:
                if time.monotonic() > deadline:
                    self.testcase.fail("the server did not start:\n" + self.log())
                yield sleep(0.05)
        clients = [first]
        for _ in range(CLIENTS - 1):
            clients.append((yield connect(reactor, self.endpoint, timeout=5)))
        for c in clients:
            self.testcase.addCleanup(c.close)
        return clients

    @property
    def endpoint(self):
        return "tcp:127.0.0.1:%d" % (self.port,)

    def log(self):
        with open(self.log_path, "rb") as f:
            return f.read()[-4000:].decode("utf-8", "replace")

    def signal(self, sig):
        os.kill(self.proc.pid, sig)

    @defer.inlineCallbacks
    def wait_exit(self, timeout=20.0):
        deadline = time.monotonic() + timeout
        while self.proc.poll() is None:
            if time.monotonic() > deadline:
                self.testcase.fail("the server did not exit:\n" + self.log())
            yield sleep(0.02)
        return self.proc.returncode

    def kill_now(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class Load:
    """
    ``WORKERS`` sequential workers per client, each cycling through its own
    ``RING`` keys, so the state of every key is known exactly: its last
    acknowledged operation, plus at most one in flight when the server died.
    """

    def __init__(self, clients, op, prefix):
        self.clients = clients
        self.op = op  # (client, key, n) -> Deferred
        self.prefix = prefix
        self.acked = {}  # key -> (n, result) of the last acknowledged op
        self.pending = {}  # key -> n of the op in flight (if any)
        self.count = 0
        self.errors = []
        self.stopped = False

    def key(self, c, w, j):
        return "%s-c%d-w%d-%d" % (self.prefix, c, w, j)

    @defer.inlineCallbacks
    def worker(self, c, w, keys=None):
        client = self.clients[c]
        for n in range(MAX_WRITES):
            if self.stopped:
                return
            key = keys[n] if keys is not None else self.key(c, w, n % RING)
            if keys is not None and n >= len(keys):
                return
            self.pending[key] = n
            try:
                r = yield self.op(client, key, n)
            except CouchbaseError as e:
                self.errors.append(e)
                return  # the connection is gone: stay pending
            del self.pending[key]
            self.acked[key] = (n, r)
            self.count += 1

    def run(self, keys_for=None):
        return defer.DeferredList(
            [self.worker(c, w, keys_for(c, w) if keys_for else None)
             for c in range(len(self.clients)) for w in range(WORKERS)])

    @defer.inlineCallbacks
    def signal_after(self, server, sig, count, timeout=15.0):
        deadline = time.monotonic() + timeout
        while self.count < count:
            if time.monotonic() > deadline:
                raise AssertionError("only %d of %d ops acknowledged in %ss:\n%s"
                                     % (self.count, count, timeout, server.log()))
            yield sleep(0.005)
        server.signal(sig)
        self.signalled_at = self.count


def value_for(key, n):
    return "%s:%d" % (key, n)


@defer.inlineCallbacks
def fetch(client, keys):
    """key -> ValueResult (success False if missing), in pipelined chunks."""
    found = {}
    keys = list(keys)
    for i in range(0, len(keys), 500):
        r = yield client.get_multi(keys[i:i + 500], quiet=True)
        found.update(r)
    return found


class CrashTests(unittest.TestCase):
    """
    Each test crashes the server several times on one data dir (the exact
    moment of a crash decides what was in flight, so one crash could miss
    a bug); each restart checks every earlier cycle's acknowledgements.
    """
    timeout = 60

    def setUp(self):
        self.dir = tempfile.mkdtemp(prefix="txcb-crash-")
        self.addCleanup(shutil.rmtree, self.dir, True)
        self.data_dir = os.path.join(self.dir, "data")
        self.log_path = os.path.join(self.dir, "twistd.log")

    def server(self):
        return Server(self, self.data_dir, self.log_path)

    def check_upserts(self, load, found, server):
        lost = []
        for key, (n, r) in load.acked.items():
            g = found[key]
            if g.success and g.value == value_for(key, n) and g.cas == r.cas:
                continue
            # A later write of the key was in flight: it may have landed.
            if key in load.pending and g.success \
                    and g.value == value_for(key, load.pending[key]):
                continue
            lost.append((key, n, r.cas, g.success and g.value, g.cas))
        self.assertEqual(lost, [], "acknowledged writes lost (%d of %d):\n%s"
                         % (len(lost), len(load.acked), server.log()))

    @defer.inlineCallbacks
    def crash_cycles(self, cycles, sig, start_load, check):
        """
        ``cycles`` times: load the server (``start_load(clients, cycle)``
        fires (load, done, count to signal after)), signal it mid-load, wait
        for it to exit, restart it and ``check(load, clients, server)`` every
        load so far.  Returns the last clients.
        """
        server = self.server()
        clients = yield server.start()
        loads = []
        for cycle in range(cycles):
            load, done, count = yield start_load(clients, cycle)
            yield load.signal_after(server, sig, count)
            yield done
            rc = yield server.wait_exit()
            if sig == signal.SIGKILL:
                self.assertEqual(rc, -signal.SIGKILL)
            else:
                # twistd ends a SIGTERM shutdown by re-raising the signal.
                self.assertIn(rc, (0, -signal.SIGTERM), server.log())
                self.assertIn("Server Shut Down", server.log())
                self.assertNotIn("Traceback", server.log())
            self.assertTrue(load.pending, "nothing was in flight at the signal")
            loads.append(load)
            server = self.server()
            clients = yield server.start()
            for each in loads:
                yield check(each, clients, server)
        return clients

    @defer.inlineCallbacks
    def test_kill9_during_durable_upserts_loses_nothing(self):
        max_cas, max_seqno = [0], [0]

        def start_load(clients, cycle):
            def op(client, key, n):
                return client.upsert(key, value_for(key, n), persist_to=1)
            load = Load(clients, op, "up%d" % cycle)
            return defer.succeed((load, load.run(), KILL_AFTER))

        @defer.inlineCallbacks
        def check(load, clients, server):
            found = yield fetch(clients[0], set(load.acked) | set(load.pending))
            self.check_upserts(load, found, server)
            max_cas[0] = max([max_cas[0]] + [r.cas for _n, r in load.acked.values()])
            max_seqno[0] = max([max_seqno[0]] + [r.seqno for _n, r in load.acked.values()])
            # CAS and seqno stay monotonic across the crash.
            r = yield clients[1].upsert("after-restart", 1)
            self.assertGreater(r.cas, max_cas[0])
            self.assertGreater(r.seqno, max_seqno[0])
            max_cas[0], max_seqno[0] = r.cas, r.seqno

        yield self.crash_cycles(3, signal.SIGKILL, start_load, check)

    @defer.inlineCallbacks
    def test_kill9_during_durable_removes_loses_nothing(self):
        per_worker = 40

        @defer.inlineCallbacks
        def start_load(clients, cycle):
            keys = {(c, w): ["rm%d-c%d-w%d-%d" % (cycle, c, w, j) for j in range(per_worker)]
                    for c in range(CLIENTS) for w in range(WORKERS)}
            written = {}
            for c in range(CLIENTS):  # every key written durably first
                batch = {k: "v:" + k for w in range(WORKERS) for k in keys[(c, w)]}
                res = yield clients[c].upsert_multi(batch, persist_to=1)
                written.update({k: r.cas for k, r in res.items()})

            def op(client, key, n):
                return client.remove(key, persist_to=1)
            load = Load(clients, op, "rm")
            load.written = written
            done = load.run(lambda c, w: keys[(c, w)])
            return load, done, len(written) // 2

        @defer.inlineCallbacks
        def check(load, clients, server):
            found = yield fetch(clients[0], load.written)
            undone = [k for k in load.acked if found[k].success]
            self.assertEqual(undone, [], "acknowledged removes undone:\n" + server.log())
            untouched = set(load.written) - set(load.acked) - set(load.pending)
            self.assertTrue(untouched)
            lost = [k for k in untouched
                    if not (found[k].success and found[k].value == "v:" + k
                            and found[k].cas == load.written[k])]
            self.assertEqual(lost, [], "acknowledged writes lost:\n" + server.log())

        yield self.crash_cycles(2, signal.SIGKILL, start_load, check)

    @defer.inlineCallbacks
    def test_sigterm_during_plain_upserts_loses_nothing(self):
        def start_load(clients, cycle):
            def op(client, key, n):
                return client.upsert(key, value_for(key, n))
            load = Load(clients, op, "plain%d" % cycle)
            return defer.succeed((load, load.run(), KILL_AFTER * 2))

        @defer.inlineCallbacks
        def check(load, clients, server):
            found = yield fetch(clients[0], set(load.acked) | set(load.pending))
            self.check_upserts(load, found, server)

        clients = yield self.crash_cycles(2, signal.SIGTERM, start_load, check)
        s = yield clients[0].stats()
        self.assertEqual(s["warmup_expired"], 0)
        self.assertEqual(s["disk_errors"], 0)
