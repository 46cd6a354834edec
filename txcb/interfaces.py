"""
The one asynchronous contract every txcb bucket provides.

Method names and semantics follow the Couchbase Python SDK 2.x.  Every method
returns a :class:`~twisted.internet.defer.Deferred`; errors arrive as
:class:`txcb.errors.CouchbaseError` subclasses through the errback.

TTLs follow memcached and Couchbase: ``0`` means no expiry, up to 30 days
(2,592,000 s) is relative, anything larger is an absolute Unix time, and an
absolute time in the past means already expired.
"""

from zope.interface import Attribute, Interface

__all__ = ["IBucket", "ISyncBucket"]


class IBucket(Interface):
    """A key-value bucket with Couchbase semantics."""

    transcoder = Attribute(
        "The txcb.formats.Transcoder that encodes values and decodes results.")

    def get(key, ttl=0, quiet=False):
        """
        Fetch a value: fires a ValueResult.  ``ttl > 0`` also sets the
        expiry (get-and-touch).  A missing key errbacks NotFoundError, or
        with ``quiet=True`` fires a result with ``success=False`` and
        ``value=None``.  A locked item reads with ``cas`` 0xFFFFFFFFFFFFFFFF.
        """

    def upsert(key, value, cas=0, ttl=0, format=None, persist_to=0, replicate_to=0):
        """
        Store a value whether or not the key exists: fires an
        OperationResult.  A non-zero ``cas`` must match the item's
        (KeyExistsError, or NotFoundError if the key is gone).
        """

    def insert(key, value, ttl=0, format=None, persist_to=0, replicate_to=0):
        """Store a value only if the key is absent (else KeyExistsError)."""

    def replace(key, value, cas=0, ttl=0, format=None, persist_to=0, replicate_to=0):
        """Store a value only if the key exists (else NotFoundError)."""

    def remove(key, cas=0, quiet=False, persist_to=0, replicate_to=0):
        """
        Delete a key: fires an OperationResult.  Missing key: NotFoundError,
        or a failed result if ``quiet``.
        """

    def touch(key, ttl):
        """Set a new expiry on an existing key: fires an OperationResult."""

    def lock(key, ttl=15):
        """
        Fetch and lock a key for ``ttl`` seconds (1 to 30): fires a
        ValueResult whose ``cas`` unlocks it.  While locked, lock again or
        mutate without that cas errbacks TemporaryFailError.
        """

    def unlock(key, cas):
        """Unlock a key locked with :meth:`lock`, given the lock's cas."""

    def counter(key, delta=1, initial=None, ttl=0):
        """
        Add ``delta`` (may be negative) to an unsigned 64-bit counter: fires
        a ValueResult whose ``value`` is the new int.  Increments wrap at
        2**64, decrements stop at 0.  A missing key is created with
        ``initial`` (NotFoundError if it is None); a value that is not a
        decimal number errbacks DeltaBadvalError and is left unchanged.
        """

    def append(key, value, cas=0, format=None, persist_to=0, replicate_to=0):
        """Append raw bytes (or UTF-8 text) to a value; missing -> NotStoredError."""

    def prepend(key, value, cas=0, format=None, persist_to=0, replicate_to=0):
        """Prepend raw bytes (or UTF-8 text) to a value; missing -> NotStoredError."""

    def get_multi(keys, ttl=0, quiet=False):
        """
        get() for many keys: fires a MultiResult (dict key -> result).  If
        any key failed and ``quiet`` does not cover it, errbacks the first
        error, whose ``all_results`` holds every key's result.
        """

    def upsert_multi(keys, ttl=0, format=None, persist_to=0, replicate_to=0):
        """upsert() for a mapping of key -> value (same rules as get_multi)."""

    def insert_multi(keys, ttl=0, format=None, persist_to=0, replicate_to=0):
        """insert() for a mapping of key -> value."""

    def replace_multi(keys, ttl=0, format=None, persist_to=0, replicate_to=0):
        """replace() for a mapping of key -> value."""

    def remove_multi(keys, quiet=False, persist_to=0, replicate_to=0):
        """remove() for many keys."""

    def touch_multi(keys, ttl=0):
        """touch() for many keys."""

    def counter_multi(keys, delta=1, initial=None, ttl=0):
        """counter() for many keys."""

    def lock_multi(keys, ttl=15):
        """lock() for many keys."""

    def unlock_multi(keys):
        """unlock() for a mapping of key -> lock cas."""

    def endure(key, persist_to=-1, replicate_to=-1, cas=0, check_removed=False,
               timeout=5.0, interval=0.01):
        """
        Wait until a key (at ``cas``, if given) is on ``persist_to`` disks
        and ``replicate_to`` replicas, or until it is removed if
        ``check_removed``.  Negative counts mean "as many as the bucket
        has".  Asking for more than the bucket can ever give errbacks
        DurabilityError; not meeting the requirement within ``timeout``
        seconds errbacks TimeoutError.
        """

    def flush():
        """
        Remove every item (memcached's ``flush_all``): fires None once the
        bucket is empty.  Locks go with their items.  Each removal is an
        ordinary removal (a mutation, with its own sequence number), so a
        persistent bucket removes the items from disk too.
        """

    def scan(prefix=None, start=None, end=None, ids_only=False, batch_size=1000,
             batch_bytes=1048576):
        """
        Stream the items whose keys start with ``prefix``, are at least
        ``start`` and less than ``end`` (str or bytes; None: no bound), in
        ascending byte order of the key: fires a
        :class:`txcb.scan.ScanResult` once the first batch is in, whose
        ``next_batch()`` fires lists of :class:`txcb.results.ScanItem` (``[]``
        at the end), each batch fetched only when asked for.  A batch holds
        at most ``batch_size`` items (1 to 10,000) and ``batch_bytes`` bytes
        (1 to 16 MiB; a larger item comes alone).  ``ids_only``: keys and
        metadata without values.  Keys present for the whole scan are
        returned exactly once; keys added or removed meanwhile may or may not
        be.  Bad arguments errback ArgumentError; a provider that cannot scan
        errbacks NotSupportedError.
        """

    def lookup_in(key, *specs, access_deleted=False):
        """
        Read parts of a JSON document: fires a
        :class:`txcb.subdocument.SubdocResult` with one status (and raw JSON
        value) per spec.  ``specs`` are ``txcb.subdocument`` lookup specs
        (``SD.get``, ``SD.exists``, ``SD.get_count``, ``SD.get_fulldoc``; with
        ``xattr=True`` on xattrs and the virtual ``$document``), at most 16.
        Specs fail one by one, as in the Couchbase SDK 2.x: if any did, the
        result still fires, its ``rc`` MULTI_PATH_FAILURE (0xCC) and each
        failed spec's status its own (``result[i]`` raises its SubdocError).
        A missing document errbacks NotFoundError; a request the engine
        refuses (bad spec list, flags) errbacks SubdocError with ``index``
        None.  ``cas`` is the document's (0xFFFFFFFFFFFFFFFF if locked).
        ``access_deleted``: a deleted document's xattrs may be read, where
        the provider keeps deleted documents' system xattrs.
        """

    def mutate_in(key, *specs, cas=0, ttl=0, upsert_doc=False, insert_doc=False,
                  persist_to=0, replicate_to=0, preserve_expiry=False):
        """
        Change parts of a JSON document, all or nothing, with one new CAS:
        fires a :class:`txcb.subdocument.SubdocResult` whose ``cas`` is the new
        CAS, ``mutation_token`` / ``seqno`` the mutation's, and whose values
        are what counters and ``${Mutation...}`` macros produced.  ``specs``
        are ``txcb.subdocument`` mutation specs (at most 16).  A spec that
        fails changes nothing and errbacks SubdocError with its ``index`` and
        ``status`` (``rc`` MULTI_PATH_FAILURE); a refused request, SubdocError
        with ``index`` None.  As the other mutations: a missing document
        NotFoundError (unless ``upsert_doc`` or ``insert_doc`` creates it),
        an existing one with ``insert_doc`` KeyExistsError, a CAS mismatch
        KeyExistsError, a locked document TemporaryFailError, a result over
        the value limit TooBigError.  ``ttl`` sets the expiry (0: none),
        unless ``preserve_expiry`` keeps the document's.  Xattrs live beside
        the body: a whole-value upsert/replace/append keeps them, a removal
        drops them.
        """

    def stats():
        """Fire a dict of counters (items, bytes, hits, misses, ops, uptime...)."""

    def close():
        """Release the bucket's resources; fires when done."""


class ISyncBucket(Interface):
    """
    A bucket that can also answer at once, without a Deferred.

    A server serves an opcode through these calls when (and only when) its
    bucket provides this interface (``ISyncBucket.providedBy(bucket)``); any
    other bucket, and any wrapper that does not declare it (``FaultyBucket``,
    a user's proxy), is served through :class:`IBucket`'s Deferreds.  A
    provider guarantees that each call has the same effect and result as its
    IBucket counterpart, without the Deferred: errors are raised
    (:class:`txcb.errors.CouchbaseError`), not errbacked.
    """

    max_persist_to = Attribute("How many disks a mutation can be persisted to (0 or 1).")
    max_replicate_to = Attribute("How many replicas a mutation can reach (0: none).")

    def get_sync(key, ttl=0, quiet=False):
        """:meth:`IBucket.get`: returns the ValueResult."""

    def store_sync(op, key, value, cas=0, ttl=0, format=None, preserve_expiry=False):
        """
        ``op`` is "upsert", "insert" or "replace": returns the OperationResult.
        ``preserve_expiry``: an existing document keeps its expiry (a new one
        takes ``ttl``), as Couchbase's preserve-TTL framing extra asks.
        """

    def get_meta_sync(key):
        """
        A document's metadata without its value (what GET_META reports): a
        :class:`txcb.results.ScanItem` with ``raw`` None, its ``flags``,
        ``cas`` (0xFFFFFFFFFFFFFFFF if locked) and ``expiry`` (absolute whole
        seconds, 0: none); a missing key returns a result with ``rc``
        KEY_ENOENT (as a quiet get).
        """

    def remove_sync(key, cas=0, quiet=False):
        """:meth:`IBucket.remove` without durability: returns the OperationResult."""

    def touch_sync(key, ttl):
        """:meth:`IBucket.touch`."""

    def lock_sync(key, ttl=15):
        """:meth:`IBucket.lock`."""

    def unlock_sync(key, cas):
        """:meth:`IBucket.unlock`."""

    def counter_sync(key, delta=1, initial=None, ttl=0):
        """:meth:`IBucket.counter`."""

    def concat_sync(op, key, value, cas=0):
        """``op`` is "append" or "prepend"."""

    def lookup_in_sync(key, *specs, access_deleted=False):
        """:meth:`IBucket.lookup_in`: returns the SubdocResult."""

    def mutate_in_sync(key, *specs, cas=0, ttl=0, upsert_doc=False, insert_doc=False,
                       preserve_expiry=False):
        """:meth:`IBucket.mutate_in` without durability: returns the SubdocResult."""

    def flush_sync():
        """:meth:`IBucket.flush`: returns how many items it removed."""

    def stats_sync():
        """:meth:`IBucket.stats`: returns the dict."""

    def on_durable(result, persist_to, replicate_to, target):
        """
        Arrange for ``target.callback(result)`` (or ``target.errback(error)``)
        once the mutation of ``result`` (made by one of the calls above) meets
        the resolved durability requirement, and return True; or return False
        if it is met already (``target`` is then not used).  ``target`` is a
        Deferred or any object with ``called``, ``callback`` and ``errback``.
        """
