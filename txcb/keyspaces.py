"""
Named buckets and their collections: the keyspaces a Couchbase endpoint serves.

A :class:`Keyspaces` maps bucket names to :class:`BucketSpace` objects; a
bucket space maps collection ids (and ``"scope.collection"`` paths) to
:class:`Collection` objects, each holding the ``IBucket`` provider that is its
own keyspace.  Collection 0, ``_default._default``, is the bucket's default
collection: the one the netstring and memcached endpoints serve.

This module knows no bucket implementation and no wire format: the service
layer builds the buckets, the servers look them up here.
"""

from __future__ import annotations

import hashlib
import re
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Tuple

__all__ = ["DEFAULT_BUCKET", "DEFAULT_SCOPE", "DEFAULT_COLLECTION", "FIRST_USER_ID", "Collection",
           "BucketSpace", "Keyspaces", "parse_collection_path", "check_bucket_name"]

#: The bucket served when no name is given (Couchbase's and txcb's).
DEFAULT_BUCKET = "default"
DEFAULT_SCOPE = "_default"
DEFAULT_COLLECTION = "_default"
#: Couchbase reserves collection and scope ids 1-7; declared ones start here.
FIRST_USER_ID = 8

_BUCKET_NAME = re.compile(r"^[A-Za-z0-9._%-]{1,100}$")
_NAME = re.compile(r"^[A-Za-z0-9-][A-Za-z0-9_%-]{0,250}$")


def check_bucket_name(name: str) -> str:
    """``name`` if Couchbase allows it as a bucket name, else ValueError."""
    if not _BUCKET_NAME.match(name):
        raise ValueError("bad bucket name %r: use 1-100 of A-Z a-z 0-9 . _ %% -" % (name,))
    return name


def parse_collection_path(path: str) -> Tuple[str, str, str]:
    """``"BUCKET.SCOPE.COLLECTION"`` as its three names, else ValueError."""
    parts = path.split(".")
    if len(parts) < 3:
        raise ValueError("bad collection %r: write BUCKET.SCOPE.COLLECTION" % (path,))
    bucket, scope, name = ".".join(parts[:-2]), parts[-2], parts[-1]
    check_bucket_name(bucket)
    for what, value in (("scope", scope), ("collection", name)):
        if not _NAME.match(value):
            raise ValueError("bad %s name %r in %r: use 1-251 of A-Z a-z 0-9 _ %% -, "
                             "not starting with _ or %%" % (what, value, path))
    return bucket, scope, name


def _uuid(*names: str) -> int:
    """A stable 64-bit id for a keyspace (its vBucket uuid in mutation tokens)."""
    digest = hashlib.blake2b("\0".join(names).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") or 1


class Collection(NamedTuple):
    """One keyspace: a collection of a bucket, and the IBucket that holds it."""

    scope: str
    name: str
    cid: int
    sid: int
    bucket: Any
    uuid: int

    @property
    def path(self) -> str:
        return "%s.%s" % (self.scope, self.name)

    def __repr__(self) -> str:
        return "<Collection %s id=%#x>" % (self.path, self.cid)


class BucketSpace:
    """A named bucket: its default collection and the declared ones."""

    def __init__(self, name: str, default: Any) -> None:
        self.name = check_bucket_name(name)
        self._by_id: Dict[int, Collection] = {}
        self._by_path: Dict[str, Collection] = {}
        self._by_uuid: Dict[int, Collection] = {}
        self._scopes: Dict[str, int] = {DEFAULT_SCOPE: 0}
        self._add(Collection(DEFAULT_SCOPE, DEFAULT_COLLECTION, 0, 0, default,
                             _uuid(name)))

    @property
    def default(self) -> Collection:
        return self._by_id[0]

    @property
    def manifest_uid(self) -> int:
        """Grows with every declared collection (0: only the default one)."""
        return len(self._by_id) - 1

    def add(self, scope: str, name: str, bucket: Any) -> Collection:
        """Declare ``scope.name`` (a new keyspace held by ``bucket``)."""
        path = "%s.%s" % (scope, name)
        if path in self._by_path:
            raise ValueError("collection %s.%s is declared twice" % (self.name, path))
        sid = self._scopes.setdefault(scope, FIRST_USER_ID + len(self._scopes) - 1)
        cid = FIRST_USER_ID + len(self._by_id) - 1
        return self._add(Collection(scope, name, cid, sid, bucket,
                                    _uuid(self.name, scope, name)))

    def _add(self, c: Collection) -> Collection:
        self._by_id[c.cid] = self._by_path[c.path] = self._by_uuid[c.uuid] = c
        return c

    def collection(self, cid: int) -> Optional[Collection]:
        """The collection with id ``cid``, or None."""
        return self._by_id.get(cid)

    def find(self, path: str) -> Optional[Collection]:
        """The collection ``"scope.collection"`` (``""`` or ``"."``: the default)."""
        if path in ("", "."):
            return self.default
        if "." not in path:
            path += "." + DEFAULT_COLLECTION
        return self._by_path.get(path)

    def by_uuid(self, uuid: int) -> Optional[Collection]:
        """The collection whose mutation tokens carry ``uuid``, or None."""
        return self._by_uuid.get(uuid)

    def collections(self) -> List[Collection]:
        return list(self._by_id.values())

    def manifest(self) -> Dict[str, Any]:
        """The collections manifest, as GET_COLLECTIONS_MANIFEST returns it."""
        scopes: Dict[str, Dict[str, Any]] = {}
        for c in self._by_id.values():
            scope = scopes.setdefault(c.scope, {"name": c.scope, "uid": "%x" % (c.sid,),
                                                "collections": []})
            scope["collections"].append({"name": c.name, "uid": "%x" % (c.cid,)})
        return {"uid": "%x" % (self.manifest_uid,), "scopes": list(scopes.values())}


class Keyspaces:
    """The named buckets a server serves, in the order they were given."""

    def __init__(self, spaces: Optional[List[BucketSpace]] = None) -> None:
        self._spaces: Dict[str, BucketSpace] = {}
        for space in spaces or ():
            self.add(space)

    def add(self, space: BucketSpace) -> BucketSpace:
        if space.name in self._spaces:
            raise ValueError("bucket %s is named twice" % (space.name,))
        self._spaces[space.name] = space
        return space

    def get(self, name: str) -> Optional[BucketSpace]:
        return self._spaces.get(name)

    @property
    def first(self) -> BucketSpace:
        """The first bucket: the one the netstring and memcached endpoints serve."""
        return next(iter(self._spaces.values()))

    def __iter__(self) -> Iterator[BucketSpace]:
        return iter(list(self._spaces.values()))

    def __len__(self) -> int:
        return len(self._spaces)

    def buckets(self) -> List[Any]:
        """Every IBucket provider, once each (to start and to close)."""
        seen: Dict[int, Any] = {}
        for space in self._spaces.values():
            for c in space.collections():
                seen.setdefault(id(c.bucket), c.bucket)
        return list(seen.values())

    @classmethod
    def single(cls, bucket: Any, name: str = DEFAULT_BUCKET) -> "Keyspaces":
        """One bucket, its default collection only."""
        return cls([BucketSpace(name, bucket)])
