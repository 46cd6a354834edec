"""Moved to :mod:`txcb.wire.netstring`; this name keeps working (the sans-IO netstring codec)."""

from txcb.wire.netstring import *  # noqa: F401,F403
from txcb.wire.netstring import __all__  # noqa: F401
