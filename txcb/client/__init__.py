"""
txcb's clients: the Twisted client (:mod:`txcb.client.remote`), the blocking
client (:mod:`txcb.client.blocking`, no Twisted), and the sans-IO core they
share: the request builder (:mod:`txcb.client.requests`) and the reply
decoding (:mod:`txcb.client.replies`), so each client only moves bytes.
The Twisted client's connection is :mod:`txcb.client.protocol`, its multi-key
calls :mod:`txcb.client.multicalls`; the
blocking client's socket, handshake and round trips in :mod:`txcb.client.connection`.

``from txcb.client import connect, RemoteBucket, ...`` keeps working: the
Twisted client's public names are loaded from :mod:`txcb.client.remote` on
first use, so importing the blocking client imports no Twisted.
"""

from importlib import import_module
from typing import Any

__all__ = ["BucketClientProtocol", "RemoteBucket", "BucketClientFactory", "connect"]


def __getattr__(name: str) -> Any:
    if name not in __all__:
        raise AttributeError("module 'txcb.client' has no attribute %r" % (name,))
    value = getattr(import_module("txcb.client.remote"), name)
    globals()[name] = value
    return value
