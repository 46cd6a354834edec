"""
txcb's servers: the protocol-neutral core (:mod:`txcb.server.core`) and one
module per wire protocol: :mod:`txcb.server.netstring` (txcb's own) and
:mod:`txcb.server.memcached` (memcached ASCII and binary).

Servers import no bucket implementation: they serve any IBucket.  ``from
txcb.server import BucketServerFactory, ...`` keeps working: the netstring
server's public names are re-exported here.
"""

from txcb.server.core import ServerStats
from txcb.server.netstring import BucketServerFactory, BucketServerProtocol

__all__ = ["BucketServerProtocol", "BucketServerFactory", "ServerStats"]
