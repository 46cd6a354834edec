"""
Providers of :class:`txcb.interfaces.IBucket`: the embedded (memory) bucket,
the persistent (SQLite) bucket and the pool of memcached servers.

Buckets know no server protocol; servers know buckets only through
:class:`~txcb.interfaces.IBucket` and :class:`~txcb.interfaces.ISyncBucket`.
"""
