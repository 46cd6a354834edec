"""
The sub-document protocol's numbers, defined once (the engine's error,
:class:`txcb.errors.SubdocError`, is re-exported from here).

Every number is Couchbase's own (kv_engine ``include/mcbp/protocol/status.h``,
``opcode.h`` and ``include/memcached/protocol_binary.h``), so the Couchbase
endpoint writes them to the wire unchanged.  Public through
:mod:`txcb.subdocument`.
"""

from __future__ import annotations

from txcb.errors import McStatus, SubdocError

__all__ = ["Status", "Opcode", "PathFlag", "DocFlag", "SubdocError", "MAX_PATH_LEN",
           "MAX_SPECS", "MAX_DEPTH", "MAX_PATH_COMPONENTS", "MAX_XATTR_KEY_LEN"]

#: A path is at most this many bytes (memcached's SUBDOC_PATH_MAX_LENGTH).
MAX_PATH_LEN = 1024
#: At most this many specs per call (memcached's subdoc_multi_max_paths).
MAX_SPECS = 16
#: Documents nest at most this deep, a primitive counting as a level
#: (subjson's Limits::MAX_COMPONENTS).
MAX_DEPTH = 32
#: A path has at most this many components (the root takes one of the 32).
MAX_PATH_COMPONENTS = MAX_DEPTH - 1
#: An xattr key is shorter than this many bytes (SUBDOC_MAX_XATTR_LENGTH).
MAX_XATTR_KEY_LEN = 16


class Status(McStatus):
    """Response statuses (kv_engine ``cb::mcbp::Status``): memcached's
    (:class:`txcb.errors.McStatus`), and the sub-document ones."""
    XATTR_EINVAL = 0x87
    PATH_ENOENT = 0xC0
    PATH_MISMATCH = 0xC1
    PATH_EINVAL = 0xC2
    PATH_E2BIG = 0xC3
    DOC_E2DEEP = 0xC4
    VALUE_CANTINSERT = 0xC5
    DOC_NOTJSON = 0xC6
    NUM_ERANGE = 0xC7
    DELTA_EINVAL = 0xC8
    PATH_EEXISTS = 0xC9
    VALUE_ETOODEEP = 0xCA
    INVALID_COMBO = 0xCB
    MULTI_PATH_FAILURE = 0xCC
    SUCCESS_DELETED = 0xCD
    XATTR_INVALID_FLAG_COMBO = 0xCE
    XATTR_INVALID_KEY_COMBO = 0xCF
    XATTR_UNKNOWN_MACRO = 0xD0
    XATTR_UNKNOWN_VATTR = 0xD1
    XATTR_CANT_MODIFY_VATTR = 0xD2
    MULTI_PATH_FAILURE_DELETED = 0xD3
    INVALID_XATTR_ORDER = 0xD4
    XATTR_UNKNOWN_VATTR_MACRO = 0xD5
    CAN_ONLY_REVIVE_DELETED_DOCUMENTS = 0xD6
    DELETED_DOCUMENT_CANT_HAVE_VALUE = 0xD7


class Opcode:
    """Spec opcodes (kv_engine ``cb::mcbp::ClientOpcode``)."""
    GET_DOC = 0x00        # whole document (lookup, empty path)
    SET_DOC = 0x01        # whole document (mutation, empty path)
    DELETE_DOC = 0x04     # whole document (mutation, empty path, last)
    GET = 0xC5
    EXISTS = 0xC6
    DICT_ADD = 0xC7
    DICT_UPSERT = 0xC8
    DELETE = 0xC9
    REPLACE = 0xCA
    ARRAY_PUSH_LAST = 0xCB
    ARRAY_PUSH_FIRST = 0xCC
    ARRAY_INSERT = 0xCD
    ARRAY_ADD_UNIQUE = 0xCE
    COUNTER = 0xCF
    MULTI_LOOKUP = 0xD0
    MULTI_MUTATION = 0xD1
    GET_COUNT = 0xD2


class PathFlag:
    """Per-spec flags (kv_engine ``cb::mcbp::subdoc::PathFlag``)."""
    MKDIR_P = 0x01
    XATTR = 0x04
    EXPAND_MACROS = 0x10
    BINARY_VALUE = 0x20   # known, not supported here: refused as EINVAL


class DocFlag:
    """Per-call flags (kv_engine ``cb::mcbp::subdoc::DocFlag``)."""
    MKDOC = 0x01
    ADD = 0x02
    ACCESS_DELETED = 0x04
    CREATE_AS_DELETED = 0x08   # known, not supported here
    REVIVE_DOCUMENT = 0x10     # known, not supported here
    REPLICA_READ = 0x20        # accepted on lookups; there are no replicas
    KNOWN = 0x3F
