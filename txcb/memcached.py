"""Moved to :mod:`txcb.buckets.memcached`; this name keeps working (the memcached pool)."""

from txcb.buckets.memcached import *  # noqa: F401,F403
from txcb.buckets.memcached import __all__  # noqa: F401
