"""Moved to :mod:`txcb.server.memcached`; this name keeps working (the memcached endpoints)."""

from txcb.server.memcached import *  # noqa: F401,F403
from txcb.server.memcached import __all__  # noqa: F401
