"""
The Couchbase KV protocol's bootstrap bodies (sans-IO): HELLO's feature
lists, GET_ERROR_MAP's error map (kv_engine docs/ErrorMap.md) and
GET_CLUSTER_CONFIG's terse one-node cluster config.  The framing is
:mod:`txcb.wire.couchbase`'s.
"""

from __future__ import annotations

import json
from functools import lru_cache
from typing import Any, Dict, Iterable, List, Optional, Tuple

from txcb.wire.couchbase import NUM_VBUCKETS, Status
from txcb.wire.mcbinary import U16 as _U16

__all__ = ['parse_hello', 'hello_value', 'error_map', 'cluster_config']


def parse_hello(value: bytes) -> List[int]:
    """HELLO's u16 feature codes (ValueError: an odd-length list)."""
    if len(value) % 2:
        raise ValueError("HELLO feature list of odd length %d" % (len(value),))
    return [_U16.unpack_from(value, i)[0] for i in range(0, len(value), 2)]


def hello_value(features: Iterable[int]) -> bytes:
    """HELLO's value: u16 feature codes."""
    return b"".join(_U16.pack(f) for f in features)


_RETRY_SOON = {"strategy": "exponential", "interval": 10, "after": 0, "ceil": 500,
               "max-duration": 120000}
#: status -> (name, description, attributes, retry spec or None)
_ERRORS: Dict[int, Tuple[str, str, List[str], Optional[Dict[str, Any]]]] = {
    Status.SUCCESS: ("SUCCESS", "Success", ["success"], None),
    Status.KEY_ENOENT: ("KEY_ENOENT", "Not Found", ["item-only"], None),
    Status.KEY_EEXISTS: ("KEY_EEXISTS", "key already exists, or CAS mismatch",
                         ["item-only"], None),
    Status.E2BIG: ("E2BIG", "Value is too big", ["item-only", "invalid-input"], None),
    Status.EINVAL: ("EINVAL", "Invalid packet", ["internal", "invalid-input"], None),
    Status.NOT_STORED: ("NOT_STORED", "Not Stored", ["item-only"], None),
    Status.DELTA_BADVAL: ("DELTA_BADVAL", "Existing document not a number",
                          ["item-only", "invalid-input"], None),
    Status.NOT_MY_VBUCKET: ("NOT_MY_VBUCKET", "Server does not know about this vBucket",
                            ["fetch-config", "invalid-input"], None),
    Status.NO_BUCKET: ("NO_BUCKET", "Not connected to any bucket", ["conn-state-invalidated"],
                       None),
    Status.LOCKED: ("LOCKED", "Requested resource is locked",
                    ["item-locked", "item-only", "retry-later"], _RETRY_SOON),
    Status.NOT_LOCKED: ("NOT_LOCKED", "Requested resource is not locked", ["item-only"], None),
    Status.AUTH_ERROR: ("AUTH_ERROR", "Authentication failed", ["auth"], None),
    Status.AUTH_CONTINUE: ("AUTH_CONTINUE", "Authentication continue",
                           ["auth", "special-handling"], None),
    Status.ERANGE: ("ERANGE", "Range error", ["invalid-input"], None),
    Status.EACCESS: ("EACCESS", "No access", ["support"], None),
    Status.UNKNOWN_FRAME_INFO: ("UNKNOWN_FRAME_INFO", "Unknown frame info",
                                ["support", "invalid-input"], None),
    Status.UNKNOWN_COMMAND: ("UNKNOWN_COMMAND", "Unknown command", ["support"], None),
    Status.ENOMEM: ("ENOMEM", "Out of memory", ["temp", "retry-later"], _RETRY_SOON),
    Status.NOT_SUPPORTED: ("NOT_SUPPORTED", "Not supported", ["support"], None),
    Status.EINTERNAL: ("EINTERNAL", "Internal error", ["internal"], None),
    Status.EBUSY: ("EBUSY", "Server busy", ["temp", "retry-later"], _RETRY_SOON),
    Status.ETMPFAIL: ("ETMPFAIL", "Temporary failure", ["temp", "retry-later"], _RETRY_SOON),
    Status.UNKNOWN_COLLECTION: ("UNKNOWN_COLLECTION", "Unknown Collection",
                                ["fetch-config", "item-only"], None),
    Status.UNKNOWN_SCOPE: ("UNKNOWN_SCOPE", "Unknown Scope", ["fetch-config", "item-only"],
                           None),
    Status.DURABILITY_INVALID_LEVEL: ("DURABILITY_INVALID_LEVEL",
                                      "Invalid durability level", ["support"], None),
    Status.DURABILITY_IMPOSSIBLE: ("DURABILITY_IMPOSSIBLE",
                                   "The durability requirement cannot be met", ["support"],
                                   None),
    Status.SYNC_WRITE_IN_PROGRESS: ("SYNC_WRITE_IN_PROGRESS",
                                    "A durable write is in progress on the key",
                                    ["temp", "retry-later", "item-only"], _RETRY_SOON),
    Status.SYNC_WRITE_AMBIGUOUS: ("SYNC_WRITE_AMBIGUOUS",
                                  "The durable write timed out; its outcome is unknown",
                                  ["special-handling", "item-only"], None),
}

#: The sub-document statuses (0xd0 / 0xd1): name, description, attributes.
_SUBDOC_ERRORS: Dict[int, Tuple[str, str, List[str]]] = {
    Status.XATTR_EINVAL: ("XATTR_EINVAL", "Invalid xattr key or section", ["invalid-input"]),
    Status.SUBDOC_PATH_ENOENT: ("SUBDOC_PATH_ENOENT", "Path not found", ["item-only"]),
    Status.SUBDOC_PATH_MISMATCH: ("SUBDOC_PATH_MISMATCH", "The path does not match the "
                                  "document", ["item-only"]),
    Status.SUBDOC_PATH_EINVAL: ("SUBDOC_PATH_EINVAL", "Invalid path", ["invalid-input"]),
    Status.SUBDOC_PATH_E2BIG: ("SUBDOC_PATH_E2BIG", "The path is too big", ["invalid-input"]),
    Status.SUBDOC_DOC_E2DEEP: ("SUBDOC_DOC_E2DEEP", "The document is too deep",
                               ["item-only"]),
    Status.SUBDOC_VALUE_CANTINSERT: ("SUBDOC_VALUE_CANTINSERT", "The value cannot be "
                                     "inserted", ["invalid-input"]),
    Status.SUBDOC_DOC_NOTJSON: ("SUBDOC_DOC_NOTJSON", "The document is not JSON",
                                ["item-only"]),
    Status.SUBDOC_NUM_ERANGE: ("SUBDOC_NUM_ERANGE", "The number is out of range",
                               ["item-only"]),
    Status.SUBDOC_DELTA_EINVAL: ("SUBDOC_DELTA_EINVAL", "Invalid delta", ["invalid-input"]),
    Status.SUBDOC_PATH_EEXISTS: ("SUBDOC_PATH_EEXISTS", "The path exists already",
                                 ["item-only"]),
    Status.SUBDOC_VALUE_ETOODEEP: ("SUBDOC_VALUE_ETOODEEP", "The value would nest too deep",
                                   ["invalid-input"]),
    Status.SUBDOC_INVALID_COMBO: ("SUBDOC_INVALID_COMBO", "Invalid combination of specs",
                                  ["invalid-input"]),
    Status.SUBDOC_MULTI_PATH_FAILURE: ("SUBDOC_MULTI_PATH_FAILURE", "A spec failed: see "
                                       "the value", ["item-only"]),
    Status.SUBDOC_SUCCESS_DELETED: ("SUBDOC_SUCCESS_DELETED", "Success on a deleted "
                                    "document", ["success", "item-deleted"]),
    Status.SUBDOC_XATTR_INVALID_FLAG_COMBO: ("SUBDOC_XATTR_INVALID_FLAG_COMBO",
                                             "Invalid xattr flag combination",
                                             ["invalid-input"]),
    Status.SUBDOC_XATTR_INVALID_KEY_COMBO: ("SUBDOC_XATTR_INVALID_KEY_COMBO",
                                            "Invalid xattr key combination",
                                            ["invalid-input"]),
    Status.SUBDOC_XATTR_UNKNOWN_MACRO: ("SUBDOC_XATTR_UNKNOWN_MACRO", "Unknown macro",
                                        ["invalid-input"]),
    Status.SUBDOC_XATTR_UNKNOWN_VATTR: ("SUBDOC_XATTR_UNKNOWN_VATTR", "Unknown virtual xattr",
                                        ["invalid-input"]),
    Status.SUBDOC_XATTR_CANT_MODIFY_VATTR: ("SUBDOC_XATTR_CANT_MODIFY_VATTR",
                                            "Virtual xattrs are read-only", ["invalid-input"]),
    Status.SUBDOC_MULTI_PATH_FAILURE_DELETED: ("SUBDOC_MULTI_PATH_FAILURE_DELETED",
                                               "A spec failed on a deleted document",
                                               ["item-only", "item-deleted"]),
    Status.SUBDOC_INVALID_XATTR_ORDER: ("SUBDOC_INVALID_XATTR_ORDER", "Xattr specs must come "
                                        "first", ["invalid-input"]),
}
for _status, (_name, _desc, _attrs) in _SUBDOC_ERRORS.items():
    _ERRORS[_status] = (_name, _desc, _attrs + ["subdoc"], None)
del _status, _name, _desc, _attrs


@lru_cache(maxsize=4)
def error_map(version: int) -> bytes:
    """GET_ERROR_MAP's body: version min(asked, 2) of the statuses txcb sends."""
    errors: Dict[str, Any] = {}
    for status, (name, desc, attrs, retry) in _ERRORS.items():
        entry: Dict[str, Any] = {"name": name, "desc": desc, "attrs": attrs}
        if retry is not None:
            entry["retry"] = retry
        errors["%x" % (status,)] = entry
    doc = {"version": max(1, min(version, 2)), "revision": 1, "errors": errors}
    return json.dumps(doc, separators=(",", ":")).encode("ascii")


@lru_cache(maxsize=64)   # polled every 2.5 s by every SDK connection
def cluster_config(rev: int, port: int, bucket: Optional[str] = None,
                   ssl: bool = False) -> bytes:
    """
    The terse config of a one-node cluster on ``port`` (the address the
    client dialled, "$HOST"), serving KV only: a bucket config with every
    vBucket on node 0, or without ``bucket`` the global config.
    """
    service = "kvSSL" if ssl else "kv"
    doc: Dict[str, Any] = {
        "rev": rev,
        "nodesExt": [{"services": {service: port}, "hostname": "$HOST", "thisNode": True}],
        "clusterCapabilitiesVer": [1, 0],
        "clusterCapabilities": {},
    }
    if bucket is not None:
        doc.update({
            "name": bucket,
            "nodeLocator": "vbucket",
            "bucketCapabilitiesVer": "",
            "bucketCapabilities": ["collections", "durableWrite", "couchapi", "xattr",
                                   "dcp", "cbhello", "touch", "cccp", "xdcrCheckpointing",
                                   "nodesExt"],
            "vBucketServerMap": {
                "hashAlgorithm": "CRC",
                "numReplicas": 0,
                "serverList": ["$HOST:%d" % (port,)],
                "vBucketMap": [[0]] * NUM_VBUCKETS,
            },
        })
    return json.dumps(doc, separators=(",", ":")).encode("ascii")
