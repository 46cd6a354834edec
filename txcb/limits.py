"""The limits every layer shares, defined once (no Twisted)."""

__all__ = ["MAX_REPLY_MESSAGE", "MAX_KEY_LEN", "THIRTY_DAYS", "MAX_TTL", "DEFAULT_MAX_VALUE_SIZE",
           "MAX_LOCK_TTL", "U64", "DEFAULT_TIMEOUT", "MAX_SCAN_BATCH", "MAX_SCAN_BYTES",
           "MAX_SCAN_BOUND", "DEFAULT_LOCK_TTL", "DEFAULT_SCAN_BATCH", "DEFAULT_SCAN_BYTES",
           "DEFAULT_ENDURE_TIMEOUT", "DEFAULT_ENDURE_INTERVAL"]

#: Keys are 1 to this many bytes (memcached's and Couchbase's limit).
MAX_KEY_LEN = 250
#: TTLs up to this many seconds are relative; larger ones are Unix times.
THIRTY_DAYS = 30 * 24 * 3600
MAX_TTL = 0xFFFFFFFF
#: The largest value a bucket accepts unless told otherwise (20 MiB).
DEFAULT_MAX_VALUE_SIZE = 20 * 1024 * 1024
#: Locks last 1 to this many seconds.
MAX_LOCK_TTL = 30
#: A lock's duration unless told otherwise, in seconds.
DEFAULT_LOCK_TTL = 15
U64 = 0xFFFFFFFFFFFFFFFF
#: Seconds a client operation waits for its reply unless told otherwise.
DEFAULT_TIMEOUT = 2.5
#: A scan batch holds at most this many items and bytes.
MAX_SCAN_BATCH = 10000
MAX_SCAN_BYTES = 16 * 1024 * 1024
#: A scan bound (prefix, start, end) is at most a key and a zero byte.
MAX_SCAN_BOUND = MAX_KEY_LEN + 1
#: A scan batch's size unless told otherwise: items and bytes.
DEFAULT_SCAN_BATCH = 1000
DEFAULT_SCAN_BYTES = 1024 * 1024
#: How long ``endure`` waits unless told otherwise, and how often it polls
#: (seconds).
DEFAULT_ENDURE_TIMEOUT = 5.0
DEFAULT_ENDURE_INTERVAL = 0.01

#: The longest error message a netstring reply carries (bytes; longer ones are cut).
MAX_REPLY_MESSAGE = 512
