# The twistd plugin for txcb.  This folder must have no __init__.py: it is
# merged into Twisted's own twisted.plugins package.  Keep this file cheap to
# import: ServiceMaker loads txcb.tap only when `twistd txcb` runs.
from twisted.application.service import ServiceMaker

txcb = ServiceMaker(
    "txcb",
    "txcb.tap",
    "Serve a Couchbase-style key-value bucket (txcb).",
    "txcb",
)
