"""
The bucket the sub-document wire tests serve: :class:`SubdocTestBucket`, a
:class:`RecordingSubdoc` (what the server passed on) over :data:`SERVED`.

:data:`SERVED` is the embedded bucket, which keeps xattrs.
"""


from txcb.buckets.embedded import EmbeddedBucket

__all__ = ["RecordingSubdoc", "SERVED", "SubdocTestBucket"]


class RecordingSubdoc:
    """
    Records each lookup_in / mutate_in call in ``calls`` as (method, key,
    specs, keyword arguments), then makes it (the next class's method).
    """

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        self.calls = []
        self._recording = False  # an IBucket call made through the sync one records once

    def _record(self, call, method, key, specs, kw):
        if not self._recording:
            self.calls.append(call)
        outer, self._recording = self._recording, True
        try:
            return method(key, *specs, **kw)
        finally:
            self._recording = outer

    def lookup_in(self, key, *specs, access_deleted=False):
        kw = {"access_deleted": access_deleted}
        return self._record(("lookup_in", key, specs, kw), super().lookup_in, key, specs, kw)

    def lookup_in_sync(self, key, *specs, access_deleted=False):
        """Recorded as lookup_in: the server's ISyncBucket path."""
        kw = {"access_deleted": access_deleted}
        return self._record(("lookup_in", key, specs, kw), super().lookup_in_sync, key, specs,
                            kw)

    def mutate_in_sync(self, key, *specs, **kw):
        """Recorded as mutate_in with no durability (the sync call has none)."""
        call = ("mutate_in", key, specs, dict(kw, persist_to=0, replicate_to=0))
        return self._record(call, super().mutate_in_sync, key, specs, kw)

    def mutate_in(self, key, *specs, **kw):
        self.calls.append(("mutate_in", key, specs, kw))
        return super().mutate_in(key, *specs, **kw)


#: What SubdocTestBucket serves: EmbeddedBucket once it has lookup_in / mutate_in.
SERVED = EmbeddedBucket


class SubdocTestBucket(RecordingSubdoc, SERVED):
    """The served bucket of tests/test_subdoc_wire.py: SERVED, recording its calls."""
