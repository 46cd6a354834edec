# The twistd plugin for txcb.  This folder must have no __init__.py: it is
# merged into Twisted's own twisted.plugins package.  Keep this file cheap to
# import: ServiceMaker loads txcb.service.tap only when `twistd txcb` runs.
from twisted.application.reactors import Reactor
from twisted.application.service import ServiceMaker

txcb = ServiceMaker(
    "txcb",
    "txcb.service.tap",
    "Serve a Couchbase-style key-value bucket (txcb).",
    "txcb",
)

# `twistd --reactor txcb ...`: the epoll reactor `twistd txcb` installs by
# default (txcb/service/reactor.py).
txcb_reactor = Reactor(
    "txcb",
    "txcb.service.reactor",
    "epoll reactor without the per-event log context (Linux; used by twistd txcb)",
)
