"""
``twistd txcb``: serve a bucket on one or more endpoints.

Everything is wired here, at the edge: the options pick a bucket provider and
the endpoints, and the services (:mod:`txcb.service.listen`) own their
lifetimes (the bucket is closed, and so flushed, when the service stops).
"""

from __future__ import annotations

import os
import platform
import sys
from typing import Any, Dict, List, Optional

import twisted
from twisted.application.service import MultiService
from twisted.python import usage

from txcb import __version__
from txcb.buckets.cbsdk import load as load_couchbase_sdk, parse_url
from txcb.buckets.memcached import parse_backend
from txcb.buckets.persistent import CorruptDataError, DataDirLockedError, StorageError
from txcb.keyspaces import DEFAULT_BUCKET, Keyspaces, check_bucket_name, parse_collection_path
from txcb.limits import (
    DEFAULT_EVICTION, DEFAULT_MAX_VALUE_SIZE, EVICTION_POLICIES, MIN_QUOTA, QUOTA_SHARE,
    parse_size)
from txcb.server.core import ServerStats
from txcb.server.couchbase import CouchbaseServerFactory
from txcb.server.memcached import MemcachedServerFactory, load_auth_file
from txcb.server.netstring import BucketServerFactory
from txcb.service.listen import (
    ENDPOINT_HELP, BucketService, ListenError, ListenService, OneLineStartup,
    endpoint_problem, lower_first)
from txcb.service.keyspaces import (
    bucket_quota, is_couchbase_backend, keyspace_count, make_keyspace, make_keyspaces,
    total_memory_quota)
from txcb.service.memory import MemoryTrimmer, glibc_heap
from txcb.service.metrics import install_metrics
from txcb.service.reactor import install_default

__all__ = ["Options", "makeService", "make_bucket", "backend_credentials", "BucketService",
           "ListenService", "DEFAULT_PORT", "endpoint_description", "startup_problem",
           "version_line"]

DEFAULT_PORT = "tcp:11222:interface=127.0.0.1"


def endpoint_description(value: str) -> str:
    """A bare port number means that port on the loopback interface only."""
    if value.isdigit():
        return "tcp:%s:interface=127.0.0.1" % (value,)
    return value


def version_line() -> str:
    """txcb's version, and the Twisted and Python it runs on."""
    return "txcb %s (Twisted %s, Python %s)" % (
        __version__, twisted.__version__, platform.python_version())


def memory_size(text: str) -> int:
    """``--memory-quota``'s value: bytes, or a number with K, M, G or T."""
    try:
        size = parse_size(text)
    except ValueError as e:
        raise usage.UsageError("--memory-quota: %s" % (e,))
    if size < 1:
        raise usage.UsageError("--memory-quota must be positive")
    return size


def size_text(size: int) -> str:
    """``size`` as --memory-quota takes it: in M where it is whole MiB."""
    return "%dM" % (size >> 20,) if size and not size % (1 << 20) else str(size)


def eviction_name(text: str) -> str:
    """``--eviction``'s value: one of EVICTION_POLICIES."""
    if text not in EVICTION_POLICIES:
        raise usage.UsageError("--eviction must be %s, not %r" % (
            " or ".join(EVICTION_POLICIES), text))
    return text


#: The options that name endpoints, as their Options keys.
ENDPOINT_OPTIONS = ("port", "memcached", "couchbase", "metrics")


class Options(usage.Options):
    synopsis = "[options]"
    longdesc = ("Serve a Couchbase-style key-value bucket over txcb's netstring "
                "protocol.  Endpoints are Twisted server endpoint strings "
                "(tcp:, unix:, ssl:...); a bare port number listens on 127.0.0.1.")

    optParameters = [
        ["max-value-size", None, DEFAULT_MAX_VALUE_SIZE,
         "Largest value accepted, in bytes.", int],
        ["max-inflight", None, 1024,
         "Requests one connection may have outstanding before the server "
         "stops reading from it.", int],
        ["pager-interval", None, 10.0,
         "Seconds between runs of the expiry pager.", float],
        ["backend", None, None,
         "Serve a pool of memcached servers instead of a local bucket: "
         "memcached:HOST:PORT[:WEIGHT],HOST:PORT[:WEIGHT],... (binary protocol, "
         "keys placed like twemproxy with hash md5); or a Couchbase cluster: "
         "couchbase://HOST[:PORT][/BUCKET] (couchbases:// for TLS; bucket default "
         "if omitted; credentials from --backend-auth-file or TXCB_BACKEND_USER/"
         "TXCB_BACKEND_PASSWORD).", str],
        ["backend-auth-file", None, None,
         "With --backend couchbase://: a file of one user:password line, the "
         "cluster user txcb connects as.", str],
        ["distribution", None, "ketama",
         "Key distribution over the --backend servers: ketama or modula.", str],
        ["data-dir", None, "txcb-data",
         "Directory of the persistent bucket's data (created if missing).", str],
        ["max-connections", None, 1024,
         "Most client connections open at once, over all endpoints (netstring "
         "and memcached together); more are refused.", int],
        ["idle-timeout", None, None,
         "Close client connections that send nothing for this many seconds, "
         "on every endpoint (off by default, as in memcached).", float],
        ["auth-file", None, None,
         "File of user:password lines: memcached clients must then authenticate "
         "(binary: SASL PLAIN; ASCII: memcached's -Y style); Couchbase SDKs "
         "authenticate with these users (SCRAM-SHA512/256/1 or PLAIN).", str],
        ["metrics", None, None,
         "Endpoint to serve Prometheus metrics on, at /metrics (off by default; "
         "a bare port number listens on 127.0.0.1).", endpoint_description],
        ["memory-quota", None, None,
         "RAM for the buckets' items, in bytes or with a K, M, G or T suffix (binary: "
         "64M is 64 MiB): the total for this process, divided evenly among its "
         "buckets and collections (each is a bucket of its own, with an equal share "
         "as its quota, at least %s).  Default: %d%% of the machine's RAM, divided the "
         "same way.  Not with --backend (those servers have their own)."
         % (size_text(MIN_QUOTA), QUOTA_SHARE * 100), memory_size],
        ["eviction", None, None,
         "With --ephemeral, what a bucket whose quota is full does: none refuses "
         "mutations that would grow it (out of memory, 0x82), nru evicts "
         "not-recently-used items.  Default: %s, as Couchbase's ephemeral buckets "
         "(noEviction).  A persistent bucket never evicts: it ejects values to "
         "disk." % (DEFAULT_EVICTION,), eviction_name],
    ]

    optFlags = [
        ["ephemeral", None, "Keep the bucket in memory only (nothing is written to "
         "disk; a restart loses everything)."],
        ["auto-eject-hosts", None, "With --backend: take a failing memcached server out "
         "of the key distribution (moves its keys; twemproxy's auto_eject_hosts)."],
    ]

    def __init__(self) -> None:
        usage.Options.__init__(self)
        self["port"] = []
        self["memcached"] = []
        self["couchbase"] = []
        self["bucket"] = []
        self["collection"] = []

    def opt_port(self, value: str) -> None:
        """Endpoint to serve the netstring protocol on (repeatable; default
        tcp:11222:interface=127.0.0.1)."""
        self["port"].append(endpoint_description(value))

    opt_p = opt_port

    def opt_memcached(self, value: str) -> None:
        ("Endpoint to serve the memcached ASCII and binary protocols on (repeatable; "
         "off by default; a bare port number listens on 127.0.0.1).")
        self["memcached"].append(endpoint_description(value))

    def opt_couchbase(self, value: str) -> None:
        ("Endpoint to serve the Couchbase KV protocol on, for the official Couchbase "
         "SDKs (repeatable; off by default; a bare port number listens on 127.0.0.1; "
         "without --auth-file only loopback endpoints may be used, accepting any "
         "credentials).")
        self["couchbase"].append(endpoint_description(value))
    def opt_bucket(self, value: str) -> None:
        """A bucket to serve, its own keyspace with its own data (repeatable;
        default: default).  The netstring and memcached endpoints serve the
        first."""
        try:
            check_bucket_name(value)
        except ValueError as e:
            raise usage.UsageError("--bucket: %s" % (e,))
        if value.startswith("."):  # also: buckets/.. would be --data-dir itself
            raise usage.UsageError("--bucket: bad bucket name %r: it cannot start with a "
                                   "dot" % (value,))
        if value in self["bucket"]:
            raise usage.UsageError("--bucket %s is given twice" % (value,))
        self["bucket"].append(value)

    def opt_collection(self, value: str) -> None:
        """A named collection, BUCKET.SCOPE.COLLECTION, its own keyspace
        (repeatable; the netstring and memcached endpoints see the default
        collection)."""
        try:
            path = parse_collection_path(value)
        except ValueError as e:
            raise usage.UsageError("--collection: %s" % (e,))
        if path in self["collection"]:
            raise usage.UsageError("--collection %s is given twice" % (value,))
        self["collection"].append(path)

    def opt_version(self) -> None:
        """Print txcb's version (and Twisted's and Python's) and exit."""
        print(version_line())
        sys.exit(0)

    def parseOptions(self, options: Optional[List[str]] = None) -> None:
        """
        Under twistd (a parent Options), a usage error is one line and exit
        status 1: twistd itself would print its whole usage text first.
        """
        try:
            usage.Options.parseOptions(self, options)
        except usage.UsageError as e:
            if getattr(self, "parent", None) is None:
                raise
            raise SystemExit("txcb: %s" % (e,))

    def postOptions(self) -> None:
        if not self["port"]:
            self["port"] = [DEFAULT_PORT]
        if not self["bucket"]:
            self["bucket"] = [DEFAULT_BUCKET]
        self._check_collections()
        self._positive("max-value-size")
        self._positive("max-inflight")
        if self["distribution"] not in ("ketama", "modula"):
            raise usage.UsageError("--distribution must be ketama or modula")
        self._check_backend()
        self._check_memory()
        self._positive("max-connections")
        if self["idle-timeout"] is not None and not self["idle-timeout"] > 0:
            raise usage.UsageError("--idle-timeout must be positive")
        self._check_endpoints()
        self["credentials"] = self._credentials()
        self._check_couchbase_auth()
        # Absolute now: a daemonized twistd changes directory before start-up.
        self["data-dir"] = os.path.abspath(self["data-dir"])

    def _positive(self, name: str) -> None:
        if self[name] < 1:
            raise usage.UsageError("--%s must be positive" % (name,))

    def _check_collections(self) -> None:
        """Each --collection must be in a --bucket (there may be more than one)."""
        for bucket, scope, name in self["collection"]:
            if bucket not in self["bucket"]:
                raise usage.UsageError(
                    "--collection %s.%s.%s: no bucket %s; add --bucket %s"
                    % (bucket, scope, name, bucket, bucket))

    def _check_backend(self) -> None:
        """A --backend must parse now, not when the service starts."""
        self["backend-credentials"] = None
        if self["backend-auth-file"] is not None and not is_couchbase_backend(
                self["backend"]):
            raise usage.UsageError("--backend-auth-file is for --backend couchbase://... "
                                   "(memcached servers take no cluster credentials)")
        if is_couchbase_backend(self["backend"]):
            self._check_couchbase_backend()
        elif self["backend"] is not None:
            try:
                parse_backend(self["backend"])
            except ValueError as e:
                raise usage.UsageError("--backend: %s" % (e,))

    def _check_couchbase_backend(self) -> None:
        """The URL, the SDK and the credentials, each with its one-line error."""
        try:
            parse_url(self["backend"])
        except ValueError as e:
            raise usage.UsageError("--backend: %s" % (e,))
        try:
            load_couchbase_sdk()
        except ImportError as e:
            raise usage.UsageError("--backend %s: %s" % (self["backend"], e))
        self["backend-credentials"] = backend_credentials(
            self["backend-auth-file"], os.environ)

    def _check_memory(self) -> None:
        """--memory-quota and --eviction are for txcb's own buckets, --eviction
        for ephemeral ones."""
        given = [name for name in ("memory-quota", "eviction") if self[name] is not None]
        if given and self["backend"] is not None:
            raise usage.UsageError(
                "--%s is for txcb's own buckets: the --backend %s keep their own "
                "quota and eviction; drop --%s" % (given[0], _backend_servers(
                    self["backend"]), given[0]))
        if self["eviction"] is not None and not self["ephemeral"]:
            raise usage.UsageError(
                "--eviction is for --ephemeral buckets: a persistent bucket never "
                "evicts, it ejects values to disk when its quota fills; add "
                "--ephemeral or drop --eviction")
        if self["backend"] is None:
            self._check_quota_share()

    def _check_quota_share(self) -> None:
        """Each bucket's share of the total must be a quota a bucket takes."""
        count, share = keyspace_count(self), bucket_quota(self)
        if share >= MIN_QUOTA:
            return
        what = ("--memory-quota %s" % (size_text(self["memory-quota"]),)
                if self["memory-quota"] is not None else
                "the default quota (%d%% of the machine's RAM, %d bytes)"
                % (QUOTA_SHARE * 100, total_memory_quota(self)))
        each = "" if count == 1 else " each for %d buckets and collections" % (count,)
        raise usage.UsageError(
            "%s is %d bytes%s, under the %s a bucket needs: give --memory-quota %s or "
            "more" % (what, share, each, size_text(MIN_QUOTA), size_text(count * MIN_QUOTA)))

    def _check_endpoints(self) -> None:
        """Endpoint strings must parse now, not when the service starts."""
        for name in ENDPOINT_OPTIONS:
            values = self[name] if isinstance(self[name], list) else [self[name]]
            for description in filter(None, values):
                problem = endpoint_problem(description)
                if problem is not None:
                    raise usage.UsageError("bad --%s %s: %s; %s" % (
                        name, description, problem, ENDPOINT_HELP))

    def _credentials(self) -> Optional[Dict[bytes, bytes]]:
        """The --auth-file's users and passwords (None: no authentication)."""
        path = self["auth-file"]
        if path is None:
            return None
        try:
            return load_auth_file(path)
        except OSError as e:
            why = lower_first(e.strerror or str(e))
            raise usage.UsageError("cannot read --auth-file %s: %s; give a readable "
                                   "file of user:password lines" % (path, why))
        except ValueError as e:
            raise usage.UsageError("bad --auth-file: %s; write one user:password a line"
                                   % (e,))


    def _check_couchbase_auth(self) -> None:
        """Any credentials are accepted only where nobody else can connect."""
        if self["credentials"] is not None:
            return
        for description in self["couchbase"]:
            if not _loopback_only(description):
                raise usage.UsageError(
                    "--couchbase %s listens beyond loopback: give --auth-file (user:password "
                    "lines) or listen on 127.0.0.1" % (description,))


def backend_credentials(path: Optional[str], environ: Any) -> tuple:
    """(user, password) for --backend couchbase://: from the file (one
    user:password line) or TXCB_BACKEND_USER/TXCB_BACKEND_PASSWORD; never
    from the command line."""
    if path is not None:
        try:
            with open(path, encoding="utf-8") as f:
                lines = [line.strip() for line in f if line.strip()]
        except (OSError, UnicodeDecodeError) as e:
            why = lower_first(getattr(e, "strerror", None) or str(e))
            raise usage.UsageError("cannot read --backend-auth-file %s: %s" % (path, why))
        user, sep, password = lines[0].partition(":") if len(lines) == 1 else ("", "", "")
        if not (user and sep and password):
            raise usage.UsageError("bad --backend-auth-file %s: write one user:password "
                                   "line" % (path,))
        return user, password
    user = environ.get("TXCB_BACKEND_USER")
    password = environ.get("TXCB_BACKEND_PASSWORD")
    if not user or not password:
        raise usage.UsageError(
            "--backend couchbase:// needs the cluster's credentials: give "
            "--backend-auth-file FILE (one user:password line) or set TXCB_BACKEND_USER "
            "and TXCB_BACKEND_PASSWORD")
    return user, password


def _backend_servers(backend: str) -> str:
    """What a --backend names, for messages."""
    if is_couchbase_backend(backend):
        return "Couchbase cluster's buckets (their RAM quota is set on the cluster)"
    return "memcached servers (their memory is memcached's -m)"


def _loopback_only(description: str) -> bool:
    """Whether a tcp:/ssl:/unix: endpoint can only be reached from this host."""
    kind, _, rest = description.partition(":")
    if kind == "unix":
        return True
    if kind not in ("tcp", "ssl", "tcp6"):
        return False
    for arg in rest.split(":"):
        name, sep, value = arg.partition("=")
        if sep and name == "interface":
            return value in ("127.0.0.1", "::1", "localhost") or value.startswith("127.")
    return False


def make_bucket(options: Options, reactor: Any) -> Any:
    """The first bucket's default collection alone (not started: BucketService
    starts it); :func:`~txcb.service.keyspaces.make_keyspaces` makes them all."""
    return make_keyspace(options, reactor)


def _default_reactor() -> Any:
    """The global reactor, txcb's own if none is installed yet."""
    # twistd installs a reactor here only if told to (--reactor); else
    # txcb's own (see txcb.service.reactor), where the platform has epoll.
    install_default()
    from twisted.internet import reactor
    return reactor


def _listen_netstring(top: MultiService, options: Options, bucket: Any,
                      stats: ServerStats, reactor: Any) -> BucketServerFactory:
    """A ListenService per --port, all on one netstring factory (returned)."""
    factory = BucketServerFactory(bucket, max_inflight=options["max-inflight"], stats=stats)
    for description in options["port"]:
        ListenService(description, factory, reactor).setServiceParent(top)
    return factory


def _listen_kv(top: MultiService, options: Options, name: str, factory_type: Any,
               served: Any, stats: ServerStats, reactor: Any) -> List[Any]:
    """
    A ListenService per ``--memcached`` / ``--couchbase`` (``name``), all on
    one ``factory_type(served, ...)``: ``[the factory]``, or ``[]``.
    """
    if not options[name]:
        return []
    factory = factory_type(served, stats=stats, credentials=options["credentials"],
                           max_inflight=options["max-inflight"], clock=reactor)
    for description in options[name]:
        ListenService(description, factory, reactor, what="txcb " + name).setServiceParent(top)
    return [factory]


def _application(options: Options, reactor: Any, buckets: BucketService) -> MultiService:
    """
    The top service.  Under twistd (the options were parsed by twistd's, their
    parent) start-up errors are one line and exit status 1; called directly,
    start-up raises the error itself.
    """
    if getattr(options, "parent", None) is None:
        return MultiService()
    return OneLineStartup(
        lambda error: startup_problem(options, error, getattr(buckets.failed, "data_dir", None)),
        reactor)


def makeService(options: Options, reactor: Optional[Any] = None) -> MultiService:
    """
    The application: the buckets' service first (so they start first and
    stop last), then the listeners, which share one connection count.  The
    netstring and memcached endpoints (and the metrics) serve the first
    bucket's default collection.
    """
    if reactor is None:
        reactor = _default_reactor()
    keyspaces: Keyspaces = make_keyspaces(options, reactor)
    bucket = keyspaces.first.default.bucket
    buckets = BucketService(bucket, keyspaces.buckets())
    top = _application(options, reactor, buckets)
    buckets.setServiceParent(top)
    MemoryTrimmer(reactor, glibc_heap()).setServiceParent(top)
    stats = ServerStats(max_connections=options["max-connections"], clock=reactor,
                        idle_timeout=options["idle-timeout"])
    factories = [_listen_netstring(top, options, bucket, stats, reactor)]
    factories += _listen_kv(top, options, "memcached", MemcachedServerFactory, bucket, stats,
                            reactor)
    factories += _listen_kv(top, options, "couchbase", CouchbaseServerFactory, keyspaces,
                            stats, reactor)
    if options["metrics"]:
        site = install_metrics(bucket, factories, stats, keyspaces=keyspaces)
        ListenService(options["metrics"], site, reactor,
                      what="txcb metrics").setServiceParent(top)
    return top


#: What to do about a data dir the bucket cannot start from, by error.
_STORAGE_ADVICE = [
    (DataDirLockedError, "stop the txcb using it or choose another --data-dir"),
    (CorruptDataError, "move the data file aside (txcb then starts empty) or restore "
                       "a backup, or choose another --data-dir"),
    (StorageError, "check the directory and its permissions or choose another --data-dir"),
]


def startup_problem(options: Options, error: Exception,
                    data_dir: Optional[str] = None) -> Optional[str]:
    """
    The one line that says what stopped start-up and what to do, naming the
    option and its value (None: not an error the user can fix).  ``data_dir``:
    the directory of the bucket that failed, if not --data-dir itself.
    """
    if isinstance(error, ListenError):
        option = _endpoint_option(options, error.description)
        advice = error.advice.format(option=option)
        return "txcb: cannot listen on %s (%s): %s%s" % (
            error.description, option, error.reason, advice and "; " + advice)
    where = "--data-dir %s" % (options["data-dir"],)
    if data_dir is not None and os.path.abspath(data_dir) != options["data-dir"]:
        where = "%s (under %s)" % (data_dir, where)
    for kind, advice in _STORAGE_ADVICE:
        if isinstance(error, kind):
            return "txcb: cannot start the bucket in %s: %s; %s" % (where, error, advice)
    return None


def _endpoint_option(options: Options, description: str) -> str:
    """The option (--port, --memcached, --metrics) that gave ``description``."""
    for name in ENDPOINT_OPTIONS:
        value = options[name]
        if description == value or (isinstance(value, list) and description in value):
            return "--" + name
    return "an endpoint option"

