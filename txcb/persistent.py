"""Moved to :mod:`txcb.buckets.persistent`; this name keeps working (the persistent bucket)."""

from txcb.buckets.persistent import *  # noqa: F401,F403
from txcb.buckets.persistent import __all__  # noqa: F401
