"""
``twistd txcb --bucket ... --collection ...``: the options, the keyspaces
built on every backend (txcb.service.keyspaces), where persistent ones keep
their data, the memcached pool's key namespaces against real memcached, and a
real twistd that serves several buckets and flushes them all when it stops.
"""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.internet import defer, reactor
from twisted.internet.task import Clock
from twisted.python import usage
from twisted.trial import unittest

from txcb import errors
from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.memcached import MemcachedPool
from txcb.buckets.persistent import DataDirLockedError, PersistentBucket
from txcb.client.blocking import Bucket as BlockingBucket
from txcb.service import tap
from txcb.service.keyspaces import (
    bucket_dir, collection_dir, make_keyspaces, namespace_for, undeclared)

from tests.support import ROOT, procs

SKIP_MEMCACHED = None if procs.have(procs.MEMCACHED) else (
    "memcached is not installed (Debian package memcached)")
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


def options(*args):
    o = tap.Options()
    o.parseOptions(list(args))
    return o


def data_dir(testcase):
    d = tempfile.mkdtemp(prefix="txcb-keyspaces-")
    testcase.addCleanup(shutil.rmtree, d, True)
    return os.path.join(d, "data")


class BucketOptionTests(unittest.TestCase):
    """--bucket and --collection: what parses, and one clear line for what does not."""

    def test_defaults(self):
        o = options()
        self.assertEqual(o["bucket"], ["default"])
        self.assertEqual(o["collection"], [])
        o = options("--collection", "default.s.c")
        self.assertEqual((o["bucket"], o["collection"]), (["default"], [("default", "s", "c")]))

    def test_buckets_and_collections_in_order(self):
        o = options("--bucket", "b2", "--bucket", "default", "--collection", "b2.s.c",
                    "--collection", "default.s.c", "--collection", "b2.s.d")
        self.assertEqual(o["bucket"], ["b2", "default"])
        self.assertEqual(o["collection"], [("b2", "s", "c"), ("default", "s", "c"),
                                           ("b2", "s", "d")])

    def test_dotted_bucket_name_in_a_collection(self):
        o = options("--bucket", "a.b", "--collection", "a.b.s.c")
        self.assertEqual(o["collection"], [("a.b", "s", "c")])

    #: (arguments, words the one-line error must contain)
    ILLEGAL = [
        (["--bucket", ""], ["--bucket", "bad bucket name"]),
        (["--bucket", "a b"], ["--bucket", "bad bucket name 'a b'"]),
        (["--bucket", "x" * 101], ["--bucket", "1-100"]),
        (["--bucket", "caf\u00e9"], ["--bucket", "bad bucket name"]),
        (["--bucket", ".."], ["--bucket", "cannot start with a dot"]),
        (["--bucket", ".hidden"], ["cannot start with a dot"]),
        (["--bucket", "a", "--bucket", "a"], ["--bucket a is given twice"]),
        (["--collection", "default.c"], ["--collection", "BUCKET.SCOPE.COLLECTION"]),
        (["--collection", "default"], ["--collection", "BUCKET.SCOPE.COLLECTION"]),
        (["--collection", "default._s.c"], ["--collection", "bad scope name '_s'"]),
        (["--collection", "default.s.%c"], ["bad collection name '%c'"]),
        (["--collection", "default.s."], ["bad collection name ''"]),
        (["--collection", "other.s.c"], ["no bucket other", "add --bucket other"]),
        (["--bucket", "a", "--collection", "default.s.c"],
         ["no bucket default", "add --bucket default"]),
        (["--collection", "default.s.c", "--collection", "default.s.c"],
         ["--collection default.s.c is given twice"]),
    ]

    def test_illegal_input_is_one_line_each(self):
        for args, words in self.ILLEGAL:
            with self.subTest(args=args):
                e = self.assertRaises(usage.UsageError, options, *args)
                self.assertNotIn("\n", str(e))
                for word in words:
                    self.assertIn(word, str(e))

    def test_under_twistd_a_usage_error_is_one_line_exit(self):
        o = tap.Options()
        o.parent = object()
        e = self.assertRaises(SystemExit, o.parseOptions, ["--collection", "x.s.c"])
        self.assertEqual(str(e), "txcb: --collection x.s.c: no bucket x; add --bucket x")


class EphemeralKeyspaceTests(unittest.TestCase):
    """--ephemeral: an EmbeddedBucket per keyspace, each with its own data."""

    @defer.inlineCallbacks
    def test_each_keyspace_is_its_own_bucket(self):
        ks = make_keyspaces(options("--ephemeral", "--bucket", "a", "--bucket", "b",
                                    "--collection", "a.s.c", "--collection", "b.s.c"),
                            Clock())
        spaces = [ks.first.default, ks.first.find("s.c"), ks.get("b").default,
                  ks.get("b").find("s.c")]
        self.assertEqual(ks.first.name, "a")
        self.assertEqual(len(ks.buckets()), 4)
        for i, c in enumerate(spaces):
            self.assertEqual(type(c.bucket), EmbeddedBucket)
            yield c.bucket.upsert("k", "value %d" % i)
        for i, c in enumerate(spaces):
            got = yield c.bucket.get("k")
            self.assertEqual(got.value, "value %d" % i)
        self.assertEqual(ks.get("b").default.bucket.name, "b")

    def test_make_bucket_is_the_first_default(self):
        b = tap.make_bucket(options("--ephemeral", "--bucket", "x"), Clock())
        self.assertEqual((type(b), b.name), (EmbeddedBucket, "x"))


class PersistentKeyspaceTests(unittest.TestCase):
    """Persistent: a PersistentBucket per keyspace, each in its own directory."""

    ARGS = ["--bucket", "default", "--bucket", "b2", "--collection", "default.s.c",
            "--collection", "b2.s.c"]

    def setUp(self):
        self.dir = data_dir(self)

    def keyspaces(self, *args):
        ks = make_keyspaces(options("--data-dir", self.dir, *args), reactor)
        for b in ks.buckets():
            self.addCleanup(b.close)
        return ks

    @defer.inlineCallbacks
    def start(self, *args):
        ks = self.keyspaces(*args)
        for b in ks.buckets():
            b.start()
        yield None
        return ks

    @defer.inlineCallbacks
    def test_data_dir_written_by_a_single_bucket_opens_with_the_same_items(self):
        old = PersistentBucket(self.dir, reactor=reactor)  # today's twistd txcb
        yield old.upsert("kept", {"v": 1})
        yield old.upsert("also", b"bytes")
        yield old.close()
        before = sorted(os.listdir(self.dir))
        ks = yield self.start()
        b = ks.first.default.bucket
        self.assertEqual((b.data_dir, b.path), (self.dir, os.path.join(self.dir,
                                                                      "default.sqlite3")))
        self.assertEqual((yield b.get("kept")).value, {"v": 1})
        self.assertEqual((yield b.get("also")).value, b"bytes")
        yield b.close()
        self.assertEqual(sorted(os.listdir(self.dir)), before)

    def test_layout(self):
        ks = self.keyspaces(*self.ARGS)
        d = self.dir
        self.assertEqual(
            [c.bucket.path for s in ks for c in s.collections()],
            [os.path.join(d, "default.sqlite3"),
             os.path.join(d, "collections", "s", "c", "default.sqlite3"),
             os.path.join(d, "buckets", "b2", "b2.sqlite3"),
             os.path.join(d, "buckets", "b2", "collections", "s", "c", "b2.sqlite3")])
        self.assertEqual(bucket_dir(d, "b2"), os.path.join(d, "buckets", "b2"))
        self.assertEqual(collection_dir(d, "default", "s", "c"),
                         os.path.join(d, "collections", "s", "c"))

    @defer.inlineCallbacks
    def write_each(self, *args):
        ks = yield self.start(*args)
        paths = []
        for s in ks:
            for c in s.collections():
                path = "%s.%s" % (s.name, c.path)
                yield c.bucket.upsert("k", path)
                paths.append(path)
        for b in ks.buckets():
            yield b.close()
        return paths

    @defer.inlineCallbacks
    def read_each(self, ks):
        got = {}
        for s in ks:
            for c in s.collections():
                got["%s.%s" % (s.name, c.path)] = (yield c.bucket.get("k")).value
        return got

    @defer.inlineCallbacks
    def test_each_collection_is_separate_and_survives_a_restart(self):
        paths = yield self.write_each(*self.ARGS)
        self.assertEqual(len(paths), 4)
        ks = yield self.start(*self.ARGS)
        self.assertEqual((yield self.read_each(ks)), {p: p for p in paths})

    @defer.inlineCallbacks
    def test_reordered_buckets_keep_their_own_data(self):
        yield self.write_each(*self.ARGS)
        ks = yield self.start("--bucket", "b2", "--bucket", "default",
                              "--collection", "b2.s.c", "--collection", "default.s.c")
        self.assertEqual(ks.first.name, "b2")
        got = yield self.read_each(ks)
        self.assertEqual(got["b2._default._default"], "b2._default._default")
        self.assertEqual(got["default.s.c"], "default.s.c")

    @defer.inlineCallbacks
    def test_fewer_options_keep_the_undeclared_data_and_say_so(self):
        yield self.write_each(*self.ARGS)
        events = []
        from twisted.logger import globalLogPublisher
        globalLogPublisher.addObserver(events.append)
        self.addCleanup(globalLogPublisher.removeObserver, events.append)
        ks = yield self.start("--bucket", "b2")
        self.assertEqual(undeclared(self.dir, ks), ["bucket default", "collection b2.s.c"])
        said = [e for e in events if "kept, not served" in e.get("log_format", "")]
        self.assertEqual(len(said), 1)
        self.assertEqual(said[0]["what"], "bucket default, collection b2.s.c")
        self.assertEqual((yield self.read_each(ks)), {"b2._default._default":
                                                      "b2._default._default"})
        for b in ks.buckets():
            yield b.close()
        ks = yield self.start(*self.ARGS)
        self.assertEqual(len((yield self.read_each(ks))), 4)
        self.assertEqual(undeclared(self.dir, ks), [])

    @defer.inlineCallbacks
    def test_service_starts_and_flushes_every_bucket(self):
        top = tap.makeService(options("--data-dir", self.dir, "-p", "tcp:0:interface=127.0.0.1",
                                      *self.ARGS), reactor)
        buckets = list(top)[0]
        self.assertEqual(len(buckets.buckets), 4)
        self.assertIs(buckets.bucket, buckets.buckets[0])
        top.startService()
        for i, b in enumerate(buckets.buckets):
            yield b.upsert("k", i)
        yield top.stopService()
        for i, b in enumerate(buckets.buckets):
            again = PersistentBucket(b.data_dir, name=b.name, reactor=reactor)
            self.assertEqual((yield again.get("k")).value, i)
            yield again.close()

    @defer.inlineCallbacks
    def test_a_locked_bucket_directory_stops_start_up_and_is_named(self):
        holder = PersistentBucket(bucket_dir(self.dir, "b2"), name="b2", reactor=reactor)
        self.addCleanup(holder.close)
        o = options("--data-dir", self.dir, "-p", "tcp:0:interface=127.0.0.1", *self.ARGS)
        top = tap.makeService(o, reactor)
        buckets, listen = list(top)[0], list(top)[-1]
        e = self.assertRaises(DataDirLockedError, top.startService)
        self.assertFalse(listen.running)
        self.assertEqual(buckets.failed.data_dir, bucket_dir(self.dir, "b2"))
        line = tap.startup_problem(o, e, buckets.failed.data_dir)
        self.assertTrue(line.startswith(
            "txcb: cannot start the bucket in %s (under --data-dir %s): data dir %s is in use"
            % (bucket_dir(self.dir, "b2"), self.dir, bucket_dir(self.dir, "b2"))), line)
        yield top.stopService()
        # What had started was closed: the default bucket's directory is free.
        again = PersistentBucket(self.dir, reactor=reactor)
        yield again.close()

    def test_root_bucket_error_is_as_before(self):
        o = options("--data-dir", self.dir)
        line = tap.startup_problem(o, DataDirLockedError("x"), self.dir)
        self.assertEqual(line, tap.startup_problem(o, DataDirLockedError("x")))
        self.assertTrue(line.startswith("txcb: cannot start the bucket in --data-dir %s: x;"
                                        % (self.dir,)))


class NamespaceTests(unittest.TestCase):
    """namespace_for: distinct, bounded prefixes no plain key can start with."""

    def test_readable_when_short(self):
        self.assertEqual(namespace_for("b", ("s", "c")), b"\x1fb\x1fs.c\x1f")
        self.assertEqual(namespace_for("b", None), b"\x1fb\x1f\x1f")

    def test_long_names_are_hashed_and_bounded(self):
        long = namespace_for("b" * 100, ("s" * 251, "c" * 251))
        self.assertEqual(len(long), 19)
        self.assertTrue(long.startswith(b"\x1f#"))
        self.assertNotEqual(long, namespace_for("b" * 100, ("s" * 251, "d" * 251)))

    def test_distinct(self):
        names = [("a", None), ("a", ("s", "c")), ("a", ("s", "d")), ("a.s", ("c", "d")),
                 ("b", None), ("a", ("sc", "x")), ("x" * 60, None), ("x" * 60, ("s", "c"))]
        spaces = {namespace_for(b, p) for b, p in names}
        self.assertEqual(len(spaces), len(names))


class MemcachedKeyspaceTests(unittest.TestCase):
    """--backend: one pool's connections, a key namespace per keyspace, real memcached."""

    skip = SKIP_MEMCACHED

    def setUp(self):
        self.group = procs.start_group(2)
        self.addCleanup(procs.stop_group, self.group)
        backend = "memcached:" + ",".join(m.address for m in self.group)
        self.ks = make_keyspaces(options("--backend", backend, "--bucket", "a", "--bucket",
                                         "b", "--collection", "a.s.c"), reactor)
        self.pools = [c.bucket for s in self.ks for c in s.collections()]
        for p in self.pools:
            p.start()
        # Another client of the same servers, as nutcracker or pylibmc would be.
        self.raw = MemcachedPool([m.address for m in self.group], reactor=reactor)
        self.addCleanup(self.close)

    @defer.inlineCallbacks
    def close(self):
        for p in self.pools + [self.raw]:
            yield p.close()

    def test_one_set_of_connections(self):
        first, coll, other = self.pools
        self.assertEqual([p.namespace for p in self.pools],
                         [b"", b"\x1fa\x1fs.c\x1f", b"\x1fb\x1f\x1f"])
        self.assertIs(coll._servers, first._servers)
        self.assertIs(other._dispatcher, first._dispatcher)

    @defer.inlineCallbacks
    def test_keyspaces_do_not_see_each_others_keys(self):
        for i, p in enumerate(self.pools):
            yield p.upsert("k%d" % i, "only in %d" % i)
            yield p.upsert("shared", i)
        for i, p in enumerate(self.pools):
            self.assertEqual((yield p.get("shared")).value, i)
            for j in range(3):
                if j != i:
                    yield self.assertFailure(p.get("k%d" % j), errors.NotFoundError)
            many = yield p.get_multi(["shared", "k%d" % i])
            self.assertEqual(sorted(many), ["k%d" % i, "shared"])
            self.assertEqual(many["k%d" % i].value, "only in %d" % i)
        yield self.pools[1].remove("shared")
        self.assertEqual((yield self.pools[0].get("shared")).value, 0)
        self.assertEqual((yield self.pools[2].get("shared")).value, 2)

    @defer.inlineCallbacks
    def test_first_default_has_no_prefix_and_others_their_namespace(self):
        first, coll, other = self.pools
        yield first.upsert("plain", b"p")
        yield other.upsert("mine", b"m")
        yield coll.upsert_multi({"c1": b"x", "c2": b"y"})
        self.assertEqual((yield self.raw.get("plain")).value, b"p")
        self.assertEqual((yield self.raw.get(b"\x1fb\x1f\x1fmine")).value, b"m")
        self.assertEqual((yield self.raw.get(b"\x1fa\x1fs.c\x1fc2")).value, b"y")
        yield self.assertFailure(self.raw.get("mine"), errors.NotFoundError)

    @defer.inlineCallbacks
    def test_over_long_namespaced_key_is_refused_clearly(self):
        first, coll, other = self.pools
        room = 250 - len(coll.namespace)
        yield coll.upsert("k" * room, b"fits")
        self.assertEqual((yield coll.get("k" * room)).value, b"fits")
        e = yield self.assertFailure(coll.upsert("k" * (room + 1), b"x"), errors.ArgumentError)
        self.assertIn("key of %d bytes is too long for this keyspace: its %d-byte namespace "
                      "prefix leaves %d of memcached's 250 key bytes"
                      % (room + 1, len(coll.namespace), room), str(e))
        yield coll.upsert("ok", b"ok")
        e = yield self.assertFailure(coll.get_multi(["ok", "k" * (room + 1)]),
                                     errors.ArgumentError)
        self.assertIn("namespace prefix leaves %d" % (room,), str(e))
        yield first.upsert("k" * 250, b"the plain pool keeps memcached's own limit")

    @defer.inlineCallbacks
    def test_namespaced_flush_is_refused_and_close_leaves_the_connections(self):
        first, coll, other = self.pools
        yield self.assertFailure(coll.flush(), errors.NotSupportedError)
        yield other.upsert("still", b"here")
        yield coll.close()
        yield other.close()
        self.assertEqual((yield other.get("still")).value, b"here")
        self.assertEqual({s["state"] for s in first.status().values()}, {"up"})




class TwistdBucketsTests(unittest.TestCase):
    """A real ``twistd txcb`` with two --bucket and a --collection."""

    def setUp(self):
        self.dir = data_dir(self)
        self.work = os.path.dirname(self.dir)

    def twistd(self, *args):
        """Start ``twistd -n txcb ARGS`` and wait until its --port accepts."""
        self.port = procs.free_port()
        self.log = os.path.join(self.work, "twistd.log")
        argv = TWISTD + ["-n", "--pidfile=", "--logfile", self.log, "txcb", "-p",
                         str(self.port), "--data-dir", self.dir] + list(args)
        proc = subprocess.Popen(argv, cwd=self.work, env=dict(os.environ, PYTHONPATH=ROOT),
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.addCleanup(lambda: proc.poll() is not None or (proc.kill(), proc.wait(10)))
        deadline = time.time() + 30
        while not procs.accepts(self.port):
            if proc.poll() is not None or time.time() > deadline:
                self.fail("twistd did not start (exit %s):\n%s" % (proc.poll(), self.text()))
            time.sleep(0.1)
        return proc

    def text(self):
        return open(self.log).read() if os.path.exists(self.log) else ""

    @defer.inlineCallbacks
    def test_two_buckets_and_a_collection_stop_cleanly_all_flushed(self):
        for where, name in [(bucket_dir(self.dir, "b2"), "b2"),
                            (collection_dir(self.dir, "default", "s", "c"), "default")]:
            seed = PersistentBucket(where, name=name, reactor=reactor)
            yield seed.upsert("seeded", where)
            yield seed.close()
        seed = PersistentBucket(collection_dir(self.dir, "b2", "old", "gone"), name="b2",
                                reactor=reactor)
        yield seed.close()
        proc = self.twistd("--bucket", "default", "--bucket", "b2",
                           "--collection", "default.s.c")
        client = BlockingBucket("tcp:127.0.0.1:%d" % self.port)
        client.upsert("via-netstring", "first bucket")
        client.close()
        proc.send_signal(signal.SIGTERM)
        # twistd re-raises the signal it stopped for once shut down cleanly.
        self.assertIn(proc.wait(30), (0, -signal.SIGTERM), self.text())
        text = self.text()
        self.assertNotIn("Traceback", text)
        self.assertIn("Server Shut Down.", text)
        self.assertEqual(text.count("warmed up"), 3, text)
        self.assertIn("also holds collection b2.old.gone: kept, not served", text)
        # Every directory is unlocked and holds what it held, plus the new write.
        expect = [(self.dir, "default", "via-netstring", "first bucket"),
                  (bucket_dir(self.dir, "b2"), "b2", "seeded", bucket_dir(self.dir, "b2")),
                  (collection_dir(self.dir, "default", "s", "c"), "default", "seeded",
                   collection_dir(self.dir, "default", "s", "c"))]
        for where, name, key, value in expect:
            again = PersistentBucket(where, name=name, reactor=reactor)
            self.assertEqual((yield again.get(key)).value, value)
            self.assertEqual(again.stats_sync()["warmup_items"], 1)
            yield again.close()

    def test_locked_bucket_directory_is_one_line_naming_it(self):
        where = bucket_dir(self.dir, "b2")
        holder = PersistentBucket(where, name="b2", reactor=reactor)
        self.addCleanup(holder.close)
        argv = TWISTD + ["-n", "--pidfile=", "txcb", "-p", str(procs.free_port()),
                         "--data-dir", self.dir, "--bucket", "default", "--bucket", "b2"]
        done = subprocess.run(argv, cwd=self.work, env=dict(os.environ, PYTHONPATH=ROOT),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60)
        out = done.stdout.decode("utf-8", "replace")
        self.assertEqual(done.returncode, 1, out)
        self.assertNotIn("Traceback", out)
        line = ("txcb: cannot start the bucket in %s (under --data-dir %s): data dir %s is in "
                "use by pid %d (%s is locked); refusing to start; stop the txcb using it or "
                "choose another --data-dir" % (where, self.dir, where, os.getpid(),
                                               os.path.join(where, "txcb.lock")))
        self.assertEqual([got for got in out.splitlines() if got.endswith(line)], [
            got for got in out.splitlines() if "cannot start" in got], out)
        self.assertIn(line, out)
        # The default bucket, started before b2 failed, was closed: its lock is free.
        again = PersistentBucket(self.dir, reactor=reactor)
        return again.close()
