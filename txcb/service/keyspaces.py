"""
The keyspaces ``twistd txcb`` serves: one bucket per ``--bucket``, each with
its default collection and the ``--collection`` ones, every one its own
keyspace on whichever backend the options pick.

Where each keyspace keeps its data:

=============  ==================================================================
backend        keyspace of bucket B, collection S.C
=============  ==================================================================
--ephemeral    its own :class:`EmbeddedBucket` (memory only)
persistent     its own :class:`PersistentBucket` in its own directory:
               ``bucket_dir(B)`` = ``--data-dir`` itself for the bucket named
               ``default`` (today's single bucket, unchanged), else
               ``--data-dir/buckets/B/``; a collection in
               ``bucket_dir(B)/collections/S/C/``
--backend      ``memcached:...``: one :class:`MemcachedPool` (one set of
               connections) whose keyspaces differ by a key prefix,
               ``namespace_for(B, S, C)``; the first bucket's default
               collection has none
--backend      ``couchbase://...``: a :class:`CouchbaseBucket` per keyspace,
               on the cluster: the first bucket is the URL's bucket, another
               bucket B the cluster's bucket B, a collection S.C that
               bucket's collection S.C
=============  ==================================================================

Memory.  Every keyspace of an ``--ephemeral`` or persistent server is its own
bucket object with its own RAM quota: the total (``--memory-quota``, else
``QUOTA_SHARE`` of the machine's physical memory) divided evenly among them,
:func:`bucket_quota`; ``--bucket a --bucket b --collection a.s.c`` gives each
of the three a third.  The ``--backend`` keyspaces have none here (their
servers keep their own).

A bucket's directory depends on its name only, never on the order of the
options, so reordering ``--bucket`` never serves one bucket's data as
another's.  The sub-directories cannot collide with a bucket's own files
(``B.sqlite3``, ``B.manifest``, ``txcb.lock``), and each directory has its
own lock.  Data of buckets and collections no longer declared is kept, not
served, and named in one log line at start-up.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any, Callable, List, Optional, Tuple

from twisted.logger import Logger

from txcb.buckets.cbsdk import parse_url
from txcb.buckets.couchbase import CouchbaseBucket
from txcb.buckets.embedded import EmbeddedBucket
from txcb.buckets.memcached import MemcachedPool, parse_backend
from txcb.buckets.persistent import PersistentBucket
from txcb.keyspaces import DEFAULT_BUCKET, BucketSpace, Keyspaces
from txcb.limits import (
    DEFAULT_EVICTION, DEFAULT_MAX_VALUE_SIZE, QUOTA_SHARE, default_memory_quota)

__all__ = ["make_keyspaces", "make_keyspace", "is_couchbase_backend", "with_bucket",
           "keyspace_count", "total_memory_quota", "bucket_quota", "eviction_policy",
           "bucket_dir", "collection_dir", "namespace_for", "undeclared", "BUCKETS_DIR",
           "COLLECTIONS_DIR"]

_log = Logger()

#: Sub-directories of --data-dir (other buckets) and of a bucket's directory
#: (its collections).
BUCKETS_DIR = "buckets"
COLLECTIONS_DIR = "collections"

#: Separates a namespace's parts: no bucket, scope or collection name has it,
#: and no memcached ASCII key can start with it.
_SEP = b"\x1f"
#: A readable namespace longer than this is replaced by a hash of the names.
_MAX_READABLE = 48

#: (scope, collection), or None for a bucket's default collection.
Path = Optional[Tuple[str, str]]
#: ``new(bucket, path, first) -> IBucket``: makes one keyspace's bucket.
Maker = Callable[[str, Path, bool], Any]


def bucket_dir(data_dir: str, bucket: str) -> str:
    """Where a persistent bucket's default collection lives."""
    if bucket == DEFAULT_BUCKET:
        return data_dir
    return os.path.join(data_dir, BUCKETS_DIR, bucket)


def collection_dir(data_dir: str, bucket: str, scope: str, collection: str) -> str:
    """Where a persistent bucket's collection ``scope.collection`` lives."""
    return os.path.join(bucket_dir(data_dir, bucket), COLLECTIONS_DIR, scope, collection)


def namespace_for(bucket: str, path: Path) -> bytes:
    """
    The key prefix of a keyspace in a shared memcached pool: readable
    (``\\x1fB\\x1fS.C\\x1f``; ``\\x1fB\\x1f\\x1f`` for B's default collection)
    when short, else a 64-bit hash of the names.  No two keyspaces share one.
    """
    names = "" if path is None else "%s.%s" % path
    readable = _SEP + bucket.encode("ascii") + _SEP + names.encode("ascii") + _SEP
    if len(readable) <= _MAX_READABLE:
        return readable
    digest = hashlib.blake2b(readable, digest_size=8).hexdigest()  # '#': in no name
    return _SEP + b"#" + digest.encode("ascii") + _SEP


def keyspace_count(options: Any) -> int:
    """How many bucket objects the options declare: every bucket's default
    collection and every ``--collection``."""
    return len(_buckets(options)) + len(options.get("collection") or ())


def total_memory_quota(options: Any) -> int:
    """The RAM all the keyspaces share: ``--memory-quota``, else
    ``QUOTA_SHARE`` of the machine's physical memory."""
    return options.get("memory-quota") or default_memory_quota(QUOTA_SHARE)


def bucket_quota(options: Any) -> int:
    """Each keyspace's quota: the total divided evenly (rounded down) among
    them all, the same for each whatever its name or order."""
    return total_memory_quota(options) // keyspace_count(options)


def eviction_policy(options: Any) -> str:
    """An ephemeral keyspace's policy when full: ``--eviction`` or the default."""
    return options.get("eviction") or DEFAULT_EVICTION


def _embedded(options: Any, reactor: Any) -> Maker:
    quota, eviction = bucket_quota(options), eviction_policy(options)

    def new(bucket: str, path: Path, first: bool) -> Any:
        return EmbeddedBucket(clock=reactor, max_value_size=options["max-value-size"],
                              pager_interval=options["pager-interval"], name=bucket,
                              memory_quota=quota, eviction=eviction)
    return new


def _persistent(options: Any, reactor: Any) -> Maker:
    quota = bucket_quota(options)

    def new(bucket: str, path: Path, first: bool) -> Any:
        where = (bucket_dir(options["data-dir"], bucket) if path is None
                 else collection_dir(options["data-dir"], bucket, *path))
        return PersistentBucket(where, clock=reactor, reactor=reactor, name=bucket,
                                max_value_size=options["max-value-size"],
                                pager_interval=options["pager-interval"], start=False,
                                memory_quota=quota)
    return new


def _memcached(options: Any, reactor: Any) -> Maker:
    """The first call makes the pool; later ones namespaced views of it."""
    pools: List[MemcachedPool] = []

    def new(bucket: str, path: Path, first: bool) -> Any:
        if not pools:
            size = options["max-value-size"]
            pools.append(MemcachedPool(
                parse_backend(options["backend"]), reactor=reactor,
                distribution=options["distribution"],
                auto_eject_hosts=options["auto-eject-hosts"], start=False,
                **({} if size == DEFAULT_MAX_VALUE_SIZE else {"max_value_size": size})))
        if first:
            return pools[0]
        return pools[0].namespaced(namespace_for(bucket, path))
    return new


def is_couchbase_backend(backend: Any) -> bool:
    """Whether a --backend names a Couchbase cluster (else memcached servers)."""
    return isinstance(backend, str) and backend.startswith(("couchbase:", "couchbases:"))


def _couchbase(options: Any, reactor: Any) -> Maker:
    """A CouchbaseBucket per keyspace, on the cluster bucket of the same name
    (the first: the URL's bucket) and the collection of the same name."""
    url = options["backend"]
    user, password = options["backend-credentials"]
    first_bucket = parse_url(url).bucket

    def new(bucket: str, path: Path, first: bool) -> Any:
        name = first_bucket if bucket == _buckets(options)[0] else bucket
        scope, collection = path if path is not None else (None, None)
        return CouchbaseBucket(with_bucket(url, name), user, password, reactor=reactor,
                               max_value_size=options["max-value-size"], scope=scope,
                               collection=collection, start=False)
    return new


def with_bucket(url: str, bucket: str) -> str:
    """A couchbase:// URL naming ``bucket`` (its query kept)."""
    head, sep, query = url.partition("?")
    scheme, _, rest = head.partition("://")
    hosts = rest.split("/", 1)[0]
    return "%s://%s/%s%s%s" % (scheme, hosts, bucket, sep, query)


def _maker(options: Any, reactor: Any) -> Maker:
    """The keyspace constructor the options pick (table: first match wins)."""
    if is_couchbase_backend(options["backend"]):
        return _couchbase(options, reactor)
    if options["backend"] is not None:
        return _memcached(options, reactor)
    if options["ephemeral"]:
        return _embedded(options, reactor)
    return _persistent(options, reactor)


def make_keyspace(options: Any, reactor: Any) -> Any:
    """The first bucket's default collection alone (not started)."""
    return _maker(options, reactor)(_buckets(options)[0], None, True)


def _buckets(options: Any) -> List[str]:
    return list(options.get("bucket") or [DEFAULT_BUCKET])


def make_keyspaces(options: Any, reactor: Any) -> Keyspaces:
    """
    Every keyspace the options declare (not started: the service starts and
    closes them all).  ``options["collection"]``: (bucket, scope, collection)
    triples, each bucket one of ``options["bucket"]``.
    """
    new = _maker(options, reactor)
    spaces = Keyspaces()
    for i, name in enumerate(_buckets(options)):
        spaces.add(BucketSpace(name, new(name, None, i == 0)))
    for bucket, scope, collection in options.get("collection") or ():
        space = spaces.get(bucket)
        if space is None:
            raise ValueError("collection %s.%s.%s: no --bucket %s"
                             % (bucket, scope, collection, bucket))
        space.add(scope, collection, new(bucket, (scope, collection), False))
    if options["backend"] is None and not options["ephemeral"]:
        left = undeclared(options["data-dir"], spaces)
        if left:
            _log.warn("txcb: --data-dir {dir} also holds {what}: kept, not served (give "
                      "--bucket/--collection to serve it)", dir=options["data-dir"],
                      what=", ".join(left))
    return spaces


def _subdirs(path: str) -> List[str]:
    try:
        return sorted(n for n in os.listdir(path) if os.path.isdir(os.path.join(path, n)))
    except OSError:
        return []


def undeclared(data_dir: str, spaces: Keyspaces) -> List[str]:
    """What ``data_dir`` holds that ``spaces`` does not serve: "bucket B",
    "collection B.S.C" (a bucket left out covers its collections)."""
    left = []
    default_file = os.path.join(data_dir, DEFAULT_BUCKET + ".sqlite3")
    if spaces.get(DEFAULT_BUCKET) is None and os.path.exists(default_file):
        left.append("bucket " + DEFAULT_BUCKET)
    for name in _subdirs(os.path.join(data_dir, BUCKETS_DIR)):
        if spaces.get(name) is None:
            left.append("bucket " + name)
    for space in spaces:
        where = os.path.join(bucket_dir(data_dir, space.name), COLLECTIONS_DIR)
        for scope in _subdirs(where):
            for name in _subdirs(os.path.join(where, scope)):
                if space.find("%s.%s" % (scope, name)) is None:
                    left.append("collection %s.%s.%s" % (space.name, scope, name))
    return left
