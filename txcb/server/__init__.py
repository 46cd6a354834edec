"""
txcb's servers: the protocol-neutral core (:mod:`txcb.server.core`) and one
module per wire protocol: :mod:`txcb.server.netstring` (txcb's own) and
:mod:`txcb.server.memcached` (memcached ASCII and binary, chosen per
connection by its first byte, over the sessions in :mod:`txcb.server.mcascii`
and :mod:`txcb.server.mcbinary`, with :mod:`txcb.server.mcsession`,
:mod:`txcb.server.mcreplies` and :mod:`txcb.server.mcauth`), and
:mod:`txcb.server.couchbase` (the Couchbase KV protocol for the official
SDKs, its KV operations in :mod:`txcb.server.cbkv`, on ``mcreplies``).

Servers import no bucket implementation: they serve any IBucket.  ``from
txcb.server import BucketServerFactory, ...`` keeps working: the netstring
server's public names are re-exported here.
"""

from txcb.server.core import ServerStats
from txcb.server.netstring import BucketServerFactory, BucketServerProtocol

__all__ = ["BucketServerProtocol", "BucketServerFactory", "ServerStats"]
