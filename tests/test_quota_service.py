"""
The RAM quota at the service edge (issue 17): ``twistd txcb --memory-quota
SIZE --eviction none|nru``, how the total is divided among the keyspaces,
the per-keyspace memory metrics, and a real ``twistd`` that fills up, is
refused, and recovers after removes.
"""


from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.python import usage
from twisted.trial import unittest

from txcb import errors
from txcb.client.blocking import Bucket as BlockingBucket
from txcb.keyspaces import BucketSpace, Keyspaces
from txcb.limits import DEFAULT_EVICTION, QUOTA_SHARE, default_memory_quota
from txcb.service import tap
from txcb.service.keyspaces import (
    bucket_quota, eviction_policy, keyspace_count, make_keyspaces, total_memory_quota)
from txcb.service.metrics import ServerMetrics

from tests.support.procs import free_port, start_txcb_twistd
from tests.support import temp_path
from tests.support.quota import MEMORY_STATS, StatsBucket

MiB = 1 << 20


def options(*args):
    o = tap.Options()
    o.parseOptions(list(args))
    return o


def one_line_error(testcase, *args):
    """The UsageError ``args`` give, checked to be one line."""
    e = testcase.assertRaises(usage.UsageError, options, *args)
    testcase.assertNotIn("\n", str(e))
    return str(e)


class MemoryQuotaOptionTests(unittest.SynchronousTestCase):
    """--memory-quota SIZE: bytes, or a K/M/G/T suffix (binary units)."""

    SIZES = [("1048576", MiB), ("2048K", 2 * MiB), ("64M", 64 * MiB), ("64m", 64 * MiB),
             ("2G", 2 << 30), ("1T", 1 << 40), ("64MiB", 64 * MiB), ("8mb", 8 * MiB)]

    def test_sizes_and_suffixes(self):
        for text, size in self.SIZES:
            with self.subTest(text=text):
                self.assertEqual(options("--ephemeral", "--memory-quota", text)
                                 ["memory-quota"], size)

    def test_unset_by_default(self):
        o = options("--ephemeral")
        self.assertEqual((o["memory-quota"], o["eviction"]), (None, None))

    def test_bad_sizes_are_one_line_usage_errors(self):
        for text in ("64X", "", "-1", "1.5G", "M", "64 M B", "0"):
            with self.subTest(text=text):
                message = one_line_error(self, "--ephemeral", "--memory-quota", text)
                self.assertIn("--memory-quota", message)
        self.assertIn("K, M, G or T", one_line_error(self, "--memory-quota", "lots"))
        self.assertIn("must be positive", one_line_error(self, "--memory-quota", "0"))

    def test_under_twistd_a_bad_size_is_one_line_exit(self):
        o = tap.Options()
        o.parent = object()
        e = self.assertRaises(SystemExit, o.parseOptions, ["--memory-quota", "64X"])
        self.assertTrue(str(e).startswith("txcb: --memory-quota: '64X' is not a size"),
                        str(e))
        self.assertNotIn("\n", str(e))

    def test_share_under_the_smallest_bucket_quota_is_refused(self):
        message = one_line_error(self, "--ephemeral", "--memory-quota", "2M", "--bucket", "a",
                                 "--bucket", "b", "--collection", "a.s.c")
        self.assertEqual(message, "--memory-quota 2M is 699050 bytes each for 3 buckets "
                         "and collections, under the 1M a bucket needs: give "
                         "--memory-quota 3M or more")
        self.assertEqual(options("--ephemeral", "--memory-quota", "3M", "--bucket", "a",
                                 "--bucket", "b", "--collection", "a.s.c")["memory-quota"],
                         3 * MiB)
        self.assertEqual(one_line_error(self, "--memory-quota", "1048575"),
                         "--memory-quota 1048575 is 1048575 bytes, under the 1M a bucket "
                         "needs: give --memory-quota 1M or more")

    def test_help_says_the_default_and_the_split(self):
        text = " ".join(str(tap.Options()).split())
        self.assertIn("--memory-quota", text)
        self.assertIn("%d%% of the machine's RAM" % (QUOTA_SHARE * 100,), text)
        self.assertIn("divided evenly among its buckets and collections", text)
        self.assertIn("--eviction", text)
        self.assertIn("noEviction", text)


class EvictionOptionTests(unittest.SynchronousTestCase):
    """--eviction none|nru: ephemeral buckets only."""

    def test_policies(self):
        for name in ("none", "nru"):
            self.assertEqual(options("--ephemeral", "--eviction", name)["eviction"], name)

    def test_default_is_couchbases_no_eviction(self):
        self.assertEqual(eviction_policy(options("--ephemeral")), DEFAULT_EVICTION)
        self.assertEqual(DEFAULT_EVICTION, "none")
        self.assertEqual(eviction_policy(options("--ephemeral", "--eviction", "nru")), "nru")

    def test_unknown_policy_is_refused(self):
        message = one_line_error(self, "--ephemeral", "--eviction", "lru")
        self.assertEqual(message, "--eviction must be none or nru, not 'lru'")

    def test_persistent_bucket_refuses_eviction(self):
        for policy in ("none", "nru"):
            message = one_line_error(self, "--eviction", policy)
            self.assertIn("--eviction is for --ephemeral buckets", message)
            self.assertIn("never evicts, it ejects values to disk", message)

    def test_persistent_bucket_takes_a_quota(self):
        self.assertEqual(options("--memory-quota", "64M")["memory-quota"], 64 * MiB)


class BackendRefusesMemoryOptionsTests(unittest.SynchronousTestCase):
    """The memcached and Couchbase backends' servers keep their own quota."""

    MEMCACHED = ["--backend", "memcached:127.0.0.1:11211"]

    def couchbase(self):
        path = temp_path(self, "auth")
        with open(path, "w") as f:
            f.write("user:secret\n")
        return ["--backend", "couchbase://127.0.0.1/default", "--backend-auth-file", path]

    def test_memcached_backend(self):
        for extra in (["--memory-quota", "64M"], ["--eviction", "nru"]):
            message = one_line_error(self, *(self.MEMCACHED + extra))
            self.assertIn("%s is for txcb's own buckets" % (extra[0],), message)
            self.assertIn("memcached servers", message)
            self.assertIn("-m", message)

    def test_couchbase_backend(self):
        try:
            args = self.couchbase()
            options(*args)
        except usage.UsageError as e:  # no SDK here: the backend itself is refused
            raise unittest.SkipTest(str(e))
        for extra in (["--memory-quota", "64M"], ["--eviction", "none"]):
            message = one_line_error(self, *(args + extra))
            self.assertIn("%s is for txcb's own buckets" % (extra[0],), message)
            self.assertIn("Couchbase cluster", message)

    def test_backend_without_the_options_is_as_before(self):
        self.assertIsNone(options(*self.MEMCACHED)["memory-quota"])


class QuotaSplitTests(unittest.SynchronousTestCase):
    """The total (given, or QUOTA_SHARE of RAM) divided evenly among the keyspaces."""

    THREE = ["--bucket", "a", "--bucket", "b", "--collection", "a.s.c"]

    def test_default_total_is_the_share_of_ram_divided(self):
        o = options("--ephemeral", *self.THREE)
        self.assertEqual(keyspace_count(o), 3)
        self.assertEqual(total_memory_quota(o), default_memory_quota(QUOTA_SHARE))
        self.assertEqual(bucket_quota(o), default_memory_quota(QUOTA_SHARE) // 3)
        self.assertEqual(bucket_quota(options("--ephemeral")),
                         default_memory_quota(QUOTA_SHARE))

    def test_given_total_is_divided_rounding_down(self):
        self.assertEqual(bucket_quota(options("--ephemeral", "--memory-quota", "9M",
                                              *self.THREE)), 3 * MiB)
        self.assertEqual(bucket_quota(options("--memory-quota", "10M", *self.THREE)),
                         (10 * MiB) // 3)
        self.assertEqual(bucket_quota(options("--memory-quota", "64M")), 64 * MiB)

    def test_every_ephemeral_keyspace_gets_its_share_and_policy(self):
        ks = make_keyspaces(options("--ephemeral", "--memory-quota", "9M", "--eviction", "nru",
                                    *self.THREE), Clock())
        self.assertEqual(len(ks.buckets()), 3)
        for b in ks.buckets():
            self.assertEqual((b.memory_quota, b.eviction), (3 * MiB, "nru"))

    def test_ephemeral_default(self):
        b = tap.make_bucket(options("--ephemeral", "--bucket", "a", "--bucket", "b"), Clock())
        self.assertEqual((b.memory_quota, b.eviction),
                         (default_memory_quota(QUOTA_SHARE) // 2, DEFAULT_EVICTION))

    def test_every_persistent_keyspace_gets_its_share(self):
        data_dir = temp_path(self, "data")
        ks = make_keyspaces(options("--data-dir", data_dir, "--memory-quota", "8M",
                                    "--collection", "default.s.c"), Clock())
        buckets = ks.buckets()
        self.assertEqual([(b.memory_quota, b.eviction) for b in buckets],
                         [(4 * MiB, "value"), (4 * MiB, "value")])


def scrape(metrics):
    """{(sample name, labels as a frozenset): value} of one scrape."""
    text = generate_latest(metrics.registry).decode("utf-8")
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def labels(bucket, scope="_default", collection="_default"):
    return frozenset({"bucket": bucket, "scope": scope, "collection": collection}.items())


class MemoryMetricsTests(unittest.SynchronousTestCase):
    """Per-keyspace memory figures, read from each bucket's stats at scrape time."""

    #: stats key -> its sample's name.
    SAMPLES = {"mem_used": "txcb_mem_used_bytes", "quota": "txcb_memory_quota_bytes",
               "resident_items": "txcb_resident_items",
               "resident_ratio": "txcb_resident_ratio",
               "ejections": "txcb_ejections_total", "evictions": "txcb_evictions_total",
               "bg_fetches": "txcb_bg_fetches_total", "oom_errors": "txcb_oom_errors_total"}

    def test_every_keyspace_labelled(self):
        first, collection = StatsBucket(name="a"), StatsBucket(dict(MEMORY_STATS, mem_used=9))
        space = BucketSpace("a", first)
        space.add("s", "c", collection)
        pool = StatsBucket({"items": 1}, name="b")  # a memcached pool: no memory figures
        metrics = ServerMetrics(first, process=False,
                                keyspaces=Keyspaces([space, BucketSpace("b", pool)]))
        got = scrape(metrics)
        for key, name in self.SAMPLES.items():
            self.assertEqual(got[(name, labels("a"))], MEMORY_STATS[key])
        self.assertEqual(got[("txcb_mem_used_bytes", labels("a", "s", "c"))], 9)
        self.assertFalse([k for k in got if ("bucket", "b") in k[1]])
        self.assertEqual(got[("txcb_items", frozenset())], 50)

    def test_missing_figures_are_not_exported(self):
        got = scrape(ServerMetrics(StatsBucket({"items": 1, "mem_used": 10}),
                                   process=False))
        self.assertEqual(got[("txcb_mem_used_bytes", labels("default"))], 10)
        for name in set(self.SAMPLES.values()) - {"txcb_mem_used_bytes"}:
            self.assertFalse([k for k in got if k[0] == name], name)
        text = generate_latest(ServerMetrics(StatsBucket({"items": 1}),
                                             process=False).registry).decode("utf-8")
        self.assertNotIn("txcb_mem", text)
        self.assertNotIn("txcb_oom_errors", text)

    def test_single_bucket_is_labelled_by_its_name(self):
        got = scrape(ServerMetrics(StatsBucket(name="carts"), process=False))
        self.assertEqual(got[("txcb_memory_quota_bytes", labels("carts"))],
                         MEMORY_STATS["quota"])

    def test_twistd_metrics_cover_every_keyspace(self):
        r = MemoryReactorClock()
        o = options("--ephemeral", "--metrics", "9100", "--memory-quota", "4M", "--bucket",
                    "a", "--collection", "a.s.c")
        svc = tap.makeService(o, reactor=r)
        svc.startService()
        self.addCleanup(svc.stopService)
        site = [f for _, f, _, _ in r.tcpServers if hasattr(f, "metrics")][0]
        self.assertEqual(len(site.metrics.keyspaces.buckets()), 2)
        got = scrape(site.metrics)
        self.assertEqual(got[("txcb_memory_quota_bytes", labels("a"))], 2 * MiB)
        self.assertEqual(got[("txcb_memory_quota_bytes", labels("a", "s", "c"))], 2 * MiB)
        self.assertEqual(got[("txcb_oom_errors_total", labels("a", "s", "c"))], 0)


class TwistdQuotaTests(unittest.SynchronousTestCase):
    """A real ``twistd txcb --ephemeral --memory-quota 2M``, filled over the
    netstring protocol."""

    VALUE = b"v" * (32 << 10)

    def start(self, *args):
        """twistd with ``args``; a blocking client connected to it."""
        port = free_port()
        start_txcb_twistd(self, ["--ephemeral", "--memory-quota", "2M", "--port",
                                 "tcp:%d:interface=127.0.0.1" % port] + list(args), port)
        bucket = BlockingBucket("tcp:127.0.0.1:%d" % port)
        self.addCleanup(bucket.close)
        return bucket

    def test_full_bucket_refuses_then_recovers_after_removes(self):
        bucket = self.start("--eviction", "none")
        stored = self.fill(bucket)
        self.assertGreater(len(stored), 10)
        stats = bucket.stats()
        self.assertEqual((stats["quota"], stats["eviction"]), (2 * MiB, "none"))
        self.assertLessEqual(stats["mem_used"], stats["quota"])
        self.assertEqual((stats["oom_errors"], stats["evictions"]), (1, 0))
        self.assertEqual(bucket.get(stored[0]).value, self.VALUE)  # reads still work
        for key in stored[:len(stored) // 2]:
            bucket.remove(key)
        for i in range(5):
            bucket.upsert("again:%d" % (i,), self.VALUE)
        self.assertEqual(bucket.get("again:4").value, self.VALUE)
        self.assertEqual(bucket.stats()["items"], len(stored) - len(stored) // 2 + 5)

    def fill(self, bucket):
        """Upsert until NoMemoryError (rc 0x82); the keys stored before it."""
        stored = []
        for i in range(1000):  # 2 MiB of 32 KiB values: about 60
            key = "fill:%04d" % (i,)
            try:
                bucket.upsert(key, self.VALUE)
            except errors.NoMemoryError as e:
                self.assertEqual(e.rc, 0x82)
                return stored
            stored.append(key)
        self.fail("1000 upserts of 32 KiB into a 2 MiB quota were all stored")

    def test_nru_evicts_to_make_room(self):
        bucket = self.start("--eviction", "nru")
        for i in range(200):  # 6.25 MiB through a 2 MiB quota
            bucket.upsert("nru:%03d" % (i,), self.VALUE)
        stats = bucket.stats()
        self.assertEqual((stats["eviction"], stats["oom_errors"]), ("nru", 0))
        self.assertGreater(stats["evictions"], 100)
        self.assertLessEqual(stats["mem_used"], stats["quota"])
        self.assertEqual(stats["items"], 200 - stats["evictions"])
        self.assertEqual(bucket.get("nru:199").value, self.VALUE)
        self.assertFalse(bucket.get("nru:000", quiet=True).success)
