"""Moved to :mod:`txcb.buckets.embedded`; this name keeps working (the embedded bucket)."""

from txcb.buckets.embedded import *  # noqa: F401,F403
from txcb.buckets.embedded import __all__  # noqa: F401
