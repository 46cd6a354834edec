"""
Sans-IO wire codecs: bytes in, events or frames out, no Twisted and no I/O.

- :mod:`txcb.wire.netstring`: txcb's own netstring protocol
  (``docs/protocol.rst``);
- :mod:`txcb.wire.mcascii`: the memcached ASCII protocol;
- :mod:`txcb.wire.mcbinary`: the memcached binary protocol;
- :mod:`txcb.wire.couchbase`: the Couchbase KV protocol (memcached binary
  plus framing extras, collections, HELLO, the error map, the cluster config);
- :mod:`txcb.wire.sasl`: SASL PLAIN and SCRAM-SHA1/256/512.

Clients and servers of every kind frame with these and nothing else.
"""
