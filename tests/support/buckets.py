"""Helpers for tests of the persistent bucket."""

import os

from txcb.buckets.embedded import EmbeddedBucket


def crash(bucket):
    """
    Drop an idle persistent bucket as a kill -9 would: no final flush, no
    clean-shutdown mark, the WAL left as it is (the data file and lock are let
    go as the kernel would).
    """
    assert not bucket._writing and not bucket._dirty
    bucket._state = "closed"
    EmbeddedBucket.close(bucket)  # stops the pager; operations fail from now
    if bucket._scheduled is not None and bucket._scheduled.active():
        bucket._scheduled.cancel()
    bucket._pool.stop()
    if bucket._bg_pool is not None:
        bucket._bg_pool.stop()
    bucket._fetcher.close()
    # Closing the connection deletes the WAL; a killed process leaves it.
    wal = bucket.path + "-wal"
    os.link(wal, wal + ".kept")
    bucket._conn.close()
    os.replace(wal + ".kept", wal)
    os.close(bucket._lock_fd)
