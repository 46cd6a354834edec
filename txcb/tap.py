"""Moved to :mod:`txcb.service.tap`; this name keeps working (the twistd plugin's service maker)."""

from txcb.service.tap import *  # noqa: F401,F403
from txcb.service.tap import __all__  # noqa: F401
