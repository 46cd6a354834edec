"""Moved to :mod:`txcb.service.metrics`; this name keeps working (Prometheus metrics)."""

from txcb.service.metrics import *  # noqa: F401,F403
from txcb.service.metrics import __all__  # noqa: F401
