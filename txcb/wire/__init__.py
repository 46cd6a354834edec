"""
Sans-IO wire codecs: bytes in, events or frames out, no Twisted and no I/O.

- :mod:`txcb.wire.netstring`: txcb's own netstring protocol
  (``docs/protocol.rst``);
- :mod:`txcb.wire.mcascii`: the memcached ASCII protocol;
- :mod:`txcb.wire.mcbinary`: the memcached binary protocol.

Clients and servers of every kind frame with these and nothing else.
"""
