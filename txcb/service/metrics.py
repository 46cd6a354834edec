"""
Prometheus metrics for a txcb server: ``twistd txcb --metrics ENDPOINT``.

Off by default.  With ``--metrics 9100`` (a bare port listens on 127.0.0.1
only) or any server endpoint string (``--metrics tcp:9100:interface=0.0.0.0``)
the service answers ``GET /metrics`` with the Prometheus text exposition
format (or OpenMetrics, if the scraper asks for it), made by the
``prometheus_client`` library from a registry private to the service.

What is exported (every name starts with ``txcb_``):

=====================================  =========  ===================================
name                                   type       what
=====================================  =========  ===================================
``txcb_info``                          info       version, bucket name and type
``txcb_operations_total{op}``          counter    bucket operations, by kind
``txcb_get_hits_total``                counter    reads that found the key
``txcb_get_misses_total``              counter    reads that did not
``txcb_expired_total``                 counter    items that expired
``txcb_items``                         gauge      items stored
``txcb_bytes``                         gauge      bytes of keys and values stored
``txcb_locked_items``                  gauge      items locked now
``txcb_high_seqno``                    gauge      the last mutation's sequence number
``txcb_uptime_seconds``                gauge      since the bucket started
``txcb_connections``                   gauge      client connections open
``txcb_connections_total``             counter    client connections accepted
``txcb_connections_rejected_total``    counter    refused over the connection limit
``txcb_request_duration_seconds{op}``  histogram  request to reply, in the server
``txcb_request_errors_total{op,status}`` counter  error replies, by status name
``txcb_disk_*``, ``txcb_warmup_*``     various    a persistent bucket's write queue,
                                                  items and batches written, write
                                                  errors, persisted seqno, warm-up
``txcb_mem_used_bytes``                gauge      bytes counted against the quota
``txcb_memory_quota_bytes``            gauge      the bucket's RAM quota
``txcb_resident_items``                gauge      items whose value is in memory
``txcb_resident_ratio``                gauge      their share of the items (0 to 1)
``txcb_ejections_total``               counter    values ejected (kept on disk)
``txcb_evictions_total``               counter    items evicted (gone)
``txcb_bg_fetches_total``              counter    ejected values read back from disk
``txcb_oom_errors_total``              counter    mutations refused for memory
``process_*``, ``python_*``            various    the usual process and runtime ones
=====================================  =========  ===================================

The memory figures (``txcb_mem_*`` to ``txcb_oom_errors_total``) have one
sample per keyspace the process serves, labelled ``bucket``, ``scope`` and
``collection`` (each keyspace is a bucket object with its own quota); the
other bucket figures are the first bucket's default collection's, unlabelled.
A keyspace whose stats lack a figure (a remote or memcached-pool bucket) has
no sample of it.

Cost.  Nothing is counted twice: the bucket's own counters (``stats()``) and
the server's connection counters are read when Prometheus scrapes, by a
custom collector, on the reactor thread that owns them.  The only per-request
work is timing each request into a plain-Python histogram (a bisect and two
additions, no locks: the reactor is single-threaded): the latency histograms
are the endpoints' request observer (``IRequestObserver``), installed on every
endpoint's factory only when ``--metrics`` is given; without it the servers
do no per-request work for metrics.  Error replies are counted by the same
call, on their status.
"""

from __future__ import annotations

from bisect import bisect_left
from time import perf_counter
from typing import Any, Dict, Iterable, Iterator, List, Optional, Tuple

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, InfoMetricFamily)
from prometheus_client.exposition import choose_encoder
from prometheus_client.gc_collector import GCCollector
from prometheus_client.platform_collector import PlatformCollector
from prometheus_client.process_collector import ProcessCollector
from twisted.web.resource import Resource
from twisted.web.server import Site
from zope.interface import implementer

from txcb import __version__
from txcb.errors import RC, CouchbaseError, code_names
from txcb.keyspaces import DEFAULT_BUCKET, Keyspaces
from txcb.server.core import IRequestObserver

__all__ = ["ServerMetrics", "LatencyHistograms", "MetricsSite", "install_metrics",
           "metrics_site"]

#: Upper bounds of the latency histogram buckets, in seconds.
LATENCY_BUCKETS = (0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025,
                   0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

STATUS_NAMES: Dict[int, str] = {v: k.lower() for v, k in code_names(RC).items()}


@implementer(IRequestObserver)
class LatencyHistograms:
    """
    Per-operation latency histograms and error counts, keyed by the op
    name the endpoints report ("get", "upsert", ...), cheap to update
    (reactor thread only).
    """

    def __init__(self, bounds: Tuple[float, ...] = LATENCY_BUCKETS) -> None:
        self.bounds = bounds
        # op -> [per-bucket counts (the last one is +Inf), sum of seconds]
        self.by_op: Dict[str, List[Any]] = {}
        self.errors: Dict[Tuple[str, int], int] = {}

    def histogram(self, op: str) -> List[Any]:
        h = self.by_op.get(op)
        if h is None:
            h = self.by_op[op] = [[0] * (len(self.bounds) + 1), 0.0]
        return h

    def observe(self, op: str, seconds: float) -> None:
        h = self.by_op.get(op) or self.histogram(op)
        h[0][bisect_left(self.bounds, seconds)] += 1
        h[1] += seconds

    def error(self, op: str, status: int) -> None:
        k = (op, status)
        self.errors[k] = self.errors.get(k, 0) + 1

    def request_done(self, op: str, status: int, started: float) -> None:
        """IRequestObserver: time the request, and count it if it failed."""
        seconds = perf_counter() - started
        h = self.by_op.get(op) or self.histogram(op)
        h[0][bisect_left(self.bounds, seconds)] += 1
        h[1] += seconds
        if status:
            self.error(op, status)


def _bucket_stats(bucket: Any) -> Dict[str, Any]:
    """The bucket's counters now, without waiting (empty if not available now)."""
    try:
        sync = getattr(bucket, "stats_sync", None)
        if sync is not None:
            return sync()
        got: List[Any] = []
        bucket.stats().addBoth(got.append)
        return got[0] if got and isinstance(got[0], dict) else {}
    except CouchbaseError:  # closed, not started...
        return {}


# stats key -> (metric name, type, help); the disk ones appear for persistent buckets.
_SIMPLE = [
    ("hits", "txcb_get_hits", "counter", "Reads that found the key."),
    ("misses", "txcb_get_misses", "counter", "Reads that did not find the key."),
    ("expired", "txcb_expired", "counter", "Items that expired."),
    ("items", "txcb_items", "gauge", "Items stored."),
    ("bytes", "txcb_bytes", "gauge", "Bytes of keys and values stored."),
    ("locked", "txcb_locked_items", "gauge", "Items locked now."),
    ("high_seqno", "txcb_high_seqno", "gauge", "Sequence number of the last mutation."),
    ("uptime", "txcb_uptime_seconds", "gauge", "Seconds since the bucket started."),
    ("disk_write_queue", "txcb_disk_write_queue", "gauge",
     "Mutations waiting to be written to disk."),
    ("disk_flushed", "txcb_disk_flushed", "counter", "Mutations written to disk."),
    ("disk_batches", "txcb_disk_batches", "counter", "Write batches committed to disk."),
    ("disk_errors", "txcb_disk_errors", "counter", "Write batches that failed."),
    ("disk_last_flush_duration", "txcb_disk_last_flush_duration_seconds", "gauge",
     "Duration of the last write batch."),
    ("disk_last_batch", "txcb_disk_last_batch_items", "gauge",
     "Mutations in the last write batch."),
    ("persisted_seqno", "txcb_disk_persisted_seqno", "gauge",
     "Highest sequence number known to be on disk."),
    ("warmup_time", "txcb_warmup_seconds", "gauge", "Duration of the warm-up from disk."),
    ("warmup_items", "txcb_warmup_items", "gauge", "Items loaded at warm-up."),
]


# stats key -> (metric name, type, help): a sample per keyspace.
_MEMORY = [
    ("mem_used", "txcb_mem_used_bytes", "gauge",
     "Bytes the bucket counts against its quota: keys, values in memory, per-item "
     "overhead."),
    ("quota", "txcb_memory_quota_bytes", "gauge", "The bucket's RAM quota."),
    ("resident_items", "txcb_resident_items", "gauge", "Items whose value is in memory."),
    ("resident_ratio", "txcb_resident_ratio", "gauge",
     "Share of the items whose value is in memory (0 to 1)."),
    ("ejections", "txcb_ejections", "counter",
     "Values ejected from memory (kept on disk, read back on demand)."),
    ("evictions", "txcb_evictions", "counter", "Items evicted (gone) to make room."),
    ("bg_fetches", "txcb_bg_fetches", "counter", "Ejected values read back from disk."),
    ("oom_errors", "txcb_oom_errors", "counter", "Mutations refused for memory."),
]

#: The labels of the per-keyspace samples.
KEYSPACE_LABELS = ["bucket", "scope", "collection"]


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def memory_families(keyspaces: Keyspaces) -> Iterator[Any]:
    """The _MEMORY figures of every keyspace, a family each (none where no
    keyspace has the figure)."""
    per_keyspace = [([space.name, c.scope, c.name], _bucket_stats(c.bucket))
                    for space in keyspaces for c in space.collections()]
    for key, name, kind, text in _MEMORY:
        family_type = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
        family = family_type(name, text, labels=KEYSPACE_LABELS)
        for labels, stats in per_keyspace:
            if _number(stats.get(key)):
                family.add_metric(labels, stats[key])
        if family.samples:
            yield family


class BucketCollector:
    """Reads the bucket's and the server's counters at scrape time."""

    def __init__(self, metrics: "ServerMetrics") -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Any]:
        m = self.metrics
        stats = _bucket_stats(m.bucket)
        yield InfoMetricFamily("txcb", "The txcb server.", value={
            "version": __version__, "bucket": str(getattr(m.bucket, "name", "default")),
            "bucket_type": str(stats.get("bucket_type", getattr(m.bucket, "bucket_type", "")))})
        ops = CounterMetricFamily("txcb_operations", "Bucket operations, by kind.",
                                  labels=["op"])
        for name, value in sorted(stats.items()):
            if name.startswith("op_") and isinstance(value, (int, float)):
                ops.add_metric([name[3:]], value)
        yield ops
        for key, name, kind, text in _SIMPLE:
            value = stats.get(key)
            if _number(value):
                family = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
                yield family(name, text, value=value)
        yield from memory_families(m.keyspaces)
        server = m.server_stats
        if server is not None:
            yield GaugeMetricFamily("txcb_connections", "Client connections open.",
                                    value=server.connections)
            yield CounterMetricFamily("txcb_connections", "Client connections accepted.",
                                      value=server.total_connections)
            yield CounterMetricFamily("txcb_connections_rejected",
                                      "Client connections refused over the limit.",
                                      value=server.rejected_connections)
        lat = m.latency
        hist = HistogramMetricFamily(
            "txcb_request_duration_seconds",
            "Time from a request's arrival to its reply, in the server.", labels=["op"])
        for op, (counts, total) in sorted(lat.by_op.items()):
            buckets = []
            acc = 0
            for bound, n in zip(lat.bounds, counts):
                acc += n
                buckets.append((repr(bound), acc))
            buckets.append(("+Inf", acc + counts[-1]))
            hist.add_metric([op], buckets, total)
        yield hist
        errors = CounterMetricFamily("txcb_request_errors", "Error replies, by status.",
                                     labels=["op", "status"])
        for (op, status), n in sorted(lat.errors.items()):
            errors.add_metric([op,
                               STATUS_NAMES.get(status, "0x%04x" % (status,))], n)
        yield errors


class ServerMetrics:
    """
    The metrics of one served bucket, in a registry of their own.

    :param bucket: the served bucket (read with ``stats_sync()`` or
        ``stats()`` at scrape time).
    :param server_stats: the server's :class:`~txcb.server.netstring.ServerStats`.
    :param process: also export the process and Python runtime metrics.
    :param keyspaces: every keyspace served, for the per-keyspace memory
        figures (default: ``bucket`` alone, under its own name).
    """

    def __init__(self, bucket: Any, server_stats: Any = None, process: bool = True,
                 keyspaces: Optional[Keyspaces] = None) -> None:
        self.bucket = bucket
        self.server_stats = server_stats
        if keyspaces is None:
            keyspaces = Keyspaces.single(bucket, str(getattr(bucket, "name", DEFAULT_BUCKET)))
        self.keyspaces = keyspaces
        self.latency = LatencyHistograms()
        self.registry = CollectorRegistry()
        self.registry.register(BucketCollector(self))
        if process:
            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)


class MetricsPage(Resource):
    """
    ``/metrics``: the registry rendered on the reactor thread (the collector
    reads state the reactor owns, so not from a thread pool as
    ``prometheus_client.twisted.MetricsResource`` would).
    """

    isLeaf = True

    def __init__(self, registry: CollectorRegistry) -> None:
        Resource.__init__(self)
        self.registry = registry

    def render_GET(self, request: Any) -> bytes:
        accept = request.getHeader(b"accept")
        encoder, content_type = choose_encoder(accept.decode("latin-1") if accept else "")
        request.setHeader(b"content-type", content_type.encode("ascii"))
        return encoder(self.registry)


class _Root(Resource):
    def getChild(self, name: bytes, request: Any) -> Resource:
        return self if name == b"" else Resource.getChild(self, name, request)

    def render_GET(self, request: Any) -> bytes:
        request.setHeader(b"content-type", b"text/plain; charset=utf-8")
        return b"txcb metrics: GET /metrics\n"


class MetricsSite(Site):
    """The web site serving ``/metrics``; ``metrics``: what it serves."""

    noisy = False

    def __init__(self, metrics: ServerMetrics) -> None:
        root = _Root()
        root.putChild(b"metrics", MetricsPage(metrics.registry))  # type: ignore[arg-type]
        Site.__init__(self, root)
        self.metrics = metrics

    def log(self, request: Any) -> None:
        """No access log line per scrape."""


def metrics_site(metrics: ServerMetrics) -> MetricsSite:
    """The web site serving ``/metrics`` for these metrics."""
    return MetricsSite(metrics)


def install_metrics(bucket: Any, factories: Iterable[Any], server_stats: Any = None,
                    keyspaces: Optional[Keyspaces] = None) -> MetricsSite:
    """
    Count the requests of every endpoint factory given (netstring and
    memcached alike: each gets the metrics' latency histograms as its
    ``observer``) and return the web site serving ``/metrics`` for them,
    ``bucket``'s counters, ``server_stats``' connection counters and the
    memory figures of every keyspace in ``keyspaces``.  The
    caller listens with the site (``twistd txcb --metrics``: tap's
    ListenService).  Call it before the factories' connections are made.
    """
    metrics = ServerMetrics(bucket, server_stats, keyspaces=keyspaces)
    for factory in factories:
        factory.observer = metrics.latency
    return MetricsSite(metrics)
