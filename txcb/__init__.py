"""
txcb: a Twisted-native key-value bucket with Couchbase semantics.

The public face, importable from ``txcb`` directly:

- :class:`IBucket` -- the one asynchronous contract every bucket provides;
- :class:`EmbeddedBucket` -- the in-process bucket, and
  :class:`PersistentBucket` / :func:`create_bucket` for one kept on disk;
- :func:`connect` and :class:`BucketClientFactory` -- remote buckets served by
  ``twistd txcb``;
- :class:`BucketServerFactory` -- serve any bucket yourself;
- ``FMT_JSON``, ``FMT_UTF8``, ``FMT_BYTES``, ``FMT_PICKLE``, :class:`Encoded`,
  :class:`Transcoder` -- value formats;
- :mod:`txcb.errors`, :mod:`txcb.results`, :mod:`txcb.testing`.

Names are loaded on first use, so ``import txcb.wire.netstring`` (the sans-IO wire
codec) does not import Twisted.
"""

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_LAZY = {
    "IBucket": "txcb.interfaces",
    "EmbeddedBucket": "txcb.buckets.embedded",
    "PersistentBucket": "txcb.buckets.persistent",
    "create_bucket": "txcb.buckets.persistent",
    "RemoteBucket": "txcb.client.remote",
    "BucketClientFactory": "txcb.client.remote",
    "connect": "txcb.client.remote",
    "BucketServerFactory": "txcb.server.netstring",
    "FMT_JSON": "txcb.formats",
    "FMT_UTF8": "txcb.formats",
    "FMT_BYTES": "txcb.formats",
    "FMT_PICKLE": "txcb.formats",
    "FMT_AUTO": "txcb.formats",
    "Encoded": "txcb.formats",
    "Transcoder": "txcb.formats",
}

__all__ = sorted(_LAZY) + ["__version__"]


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError("module 'txcb' has no attribute %r" % (name,))
    value = getattr(import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list:
    return __all__
