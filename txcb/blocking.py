"""Moved to :mod:`txcb.client.blocking`; this name keeps working (the blocking client)."""

from txcb.client.blocking import *  # noqa: F401,F403
from txcb.client.blocking import __all__  # noqa: F401
