"""
``txcb``: the command-line client, in the spirit of libcouchbase's ``cbc``.

::

    txcb get KEY...                      print values (one per line)
    txcb set KEY VALUE [--ttl N] [--format auto|json|utf8|bytes] [--cas CAS]
    txcb insert KEY VALUE ...            store only if absent
    txcb replace KEY VALUE ...           store only if present
    txcb rm KEY... [--cas CAS]           remove
    txcb counter KEY [--delta N] [--initial N] [--ttl N]
    txcb touch KEY... --ttl N
    txcb stats [NAME...] [--json]
    txcb ping [--count N] [--interval S]
    txcb load FILE [--mode upsert|insert|replace] [--batch N] [--keep-going]
    txcb dump [--prefix P] [--start K] [--end K] [--ids-only] [-o FILE]

``--endpoint`` (``-e``, or ``$TXCB_ENDPOINT``) is a client endpoint string:
``tcp:HOST:PORT``, ``tcp6:...``, ``unix:PATH`` or a bare port number
(default ``tcp:127.0.0.1:11222``, where ``twistd txcb`` listens).  The tool
is built on :mod:`txcb.client.blocking` (plain sockets, the shared sans-IO codec):
a short-lived command reads best as straight-line code, its exit status is
simply the outcome of the calls it makes, and streaming to and from files
and pipes gets flow control for free (a blocked write to stdout is a dump
that stops asking for the next batch).  So it connects to what a plain
socket reaches: ``ssl:`` and other Twisted-only endpoints are refused with
exit status 2.

JSON lines (``load`` reads them, ``dump`` writes them), one item per line::

    {"key": "user:1", "value": {"name": "Ada"}}     JSON value
    {"key": "greeting", "value": "hello"}           UTF-8 text
    {"key": "s", "value": "text", "format": "json"} a JSON string (not UTF-8 text)
    {"key": "b", "value": "AAEC", "format": "bytes"}  raw bytes, base64
    {"key": "p", "value": "gASV", "flags": 16777217}  other flags, base64 value
    {"key": "t", "value": 1, "ttl": 3600}           with an expiry
    {"key_base64": "/w==", "value": 1}              a key that is not UTF-8

``value`` without ``format`` is stored by its JSON type: a string as UTF-8
text, anything else as JSON.  ``ttl`` follows the usual rule (up to 30 days
relative, larger an absolute Unix time); ``dump`` writes the absolute expiry
time, so a dump loaded again expires when the original would have.  Keys are
written in ascending byte order.

Exit status: 0 success; 1 other error; 2 bad usage, arguments or input;
3 key not found; 4 key exists (or CAS mismatch); 5 connection failure;
6 timeout; 7 temporary failure (locked, busy); 8 value too big; 9 bad value
(not a number for ``counter``, undecodable); 10 not supported by the server;
130 interrupted.  Expected failures print one line on stderr, never a
traceback.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import json
import os
import sys
import time
from typing import Any, Dict, List, Optional, TextIO, Tuple

from txcb import __version__
from txcb import errors
from txcb.client.blocking import DEFAULT_ENDPOINT, DEFAULT_TIMEOUT, Bucket
from txcb.formats import FMT_BYTES, FMT_JSON, FMT_UTF8, Encoded, format_of

__all__ = ["main", "EXIT"]

#: Exit statuses by outcome.
EXIT = {
    "ok": 0, "error": 1, "usage": 2, "not_found": 3, "exists": 4, "connect": 5,
    "timeout": 6, "tempfail": 7, "too_big": 8, "bad_value": 9, "not_supported": 10,
    "interrupted": 130,
}

# Exception class -> (exit status name, short description); first match wins.
_OUTCOMES = [
    (errors.NotFoundError, "not_found", "not found"),
    (errors.KeyExistsError, "exists", "exists"),
    (errors.ConnectError, "connect", "connection failed"),
    (errors.NetworkError, "connect", "connection lost"),
    (errors.TimeoutError, "timeout", "timed out"),
    (errors.TemporaryFailError, "tempfail", "temporary failure"),
    (errors.TooBigError, "too_big", "too big"),
    (errors.DeltaBadvalError, "bad_value", "bad value"),
    (errors.ValueFormatError, "bad_value", "bad value"),
    (errors.NotSupportedError, "not_supported", "not supported"),
    (errors.UnknownCommandError, "not_supported", "not supported by the server"),
    (errors.ArgumentError, "usage", "invalid argument"),
    (errors.CouchbaseError, "error", "error"),
]


class UsageError(Exception):
    """Bad command-line arguments or input: exit status 2."""


def _outcome(e: BaseException) -> Tuple[int, str]:
    for cls, name, what in _OUTCOMES:
        if isinstance(e, cls):
            return EXIT[name], what
    return EXIT["error"], "error"


def _describe(e: errors.CouchbaseError) -> str:
    what = _outcome(e)[1]
    text = "%s: %s" % (what, e.message)
    if e.key is not None:
        text += " (key %s)" % (_show_key(e.key),)
    return text


def _show_key(key: Any) -> str:
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            return repr(key)
    return json.dumps(key, ensure_ascii=False)


class Ctx:
    """What every command needs: the parsed options, the bucket, the streams."""

    def __init__(self, args: argparse.Namespace, stdout: Any, stderr: Any) -> None:
        self.args = args
        self.stdout = stdout
        self.stderr = stderr
        self.quiet = getattr(args, "quiet", False)
        self.endpoint = getattr(args, "endpoint", None) or os.environ.get(
            "TXCB_ENDPOINT") or DEFAULT_ENDPOINT
        self.timeout = getattr(args, "timeout", DEFAULT_TIMEOUT)
        self._bucket: Optional[Bucket] = None
        self.status = 0

    @property
    def bucket(self) -> Bucket:
        if self._bucket is None:
            self._bucket = Bucket(self.endpoint, timeout=self.timeout)
        return self._bucket

    def close(self) -> None:
        if self._bucket is not None:
            self._bucket.close()

    def out(self, text: str) -> None:
        self.stdout.write(text + "\n")

    def info(self, text: str) -> None:
        if not self.quiet:
            self.stderr.write(text + "\n")

    def error(self, text: str, e: Optional[BaseException] = None,
              status: Optional[int] = None) -> None:
        """Report one failure; the first one decides the exit status."""
        self.stderr.write("txcb %s: %s\n" % (self.args.command, text))
        self.stderr.flush()
        if not self.status:
            if status is None:
                status = _outcome(e)[0] if e is not None else EXIT["error"]
            self.status = status

    def stdin_bytes(self) -> bytes:
        stdin = getattr(sys.stdin, "buffer", sys.stdin)
        data = stdin.read()
        return data if isinstance(data, bytes) else data.encode("utf-8")

    def write_bytes(self, data: bytes) -> None:
        self.stdout.flush()
        buf = getattr(self.stdout, "buffer", None)
        if buf is not None:
            buf.write(data)
            buf.flush()
        else:
            self.stdout.write(data.decode("utf-8", "replace"))

    def progress(self, data_on_stdout: bool = False, **kwargs: Any) -> Any:
        """
        A tqdm bar on stderr, only when stderr is a terminal (and the data
        does not go to the same terminal), unless --progress/--no-progress.
        """
        forced = getattr(self.args, "progress", None)
        show = forced if forced is not None else (
            _isatty(self.stderr) and not (data_on_stdout and _isatty(self.stdout)))
        if not show or self.quiet:
            return _NoBar()
        from tqdm import tqdm
        return tqdm(file=self.stderr, dynamic_ncols=True, leave=False, **kwargs)


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


def _isatty(stream: Any) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


# -- values -------------------------------------------------------------------

def _parse_int(text: str) -> int:
    try:
        return int(text, 0)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % (text,))


def _parse_ttl(text: str) -> int:
    n = _parse_int(text)
    if not 0 <= n <= 0xFFFFFFFF:
        raise argparse.ArgumentTypeError("a ttl is 0 to 4294967295, not %d" % (n,))
    return n


def _read_value(ctx: Ctx, arg: str, fmt: str) -> Any:
    """The value to store for ``txcb set KEY VALUE`` (``-``: standard input)."""
    if arg == "-":
        data = ctx.stdin_bytes()
    else:
        data = os.fsencode(arg)
    if fmt == "bytes":
        return Encoded(data, FMT_BYTES)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UsageError("the value is not UTF-8 text (use --format bytes)")
    if fmt == "utf8":
        return Encoded(data, FMT_UTF8)
    try:
        json.loads(text)
        is_json = True
    except ValueError:
        is_json = False
    if fmt == "json" and not is_json:
        raise UsageError("the value is not valid JSON (use --format utf8 for text)")
    return Encoded(data, FMT_JSON if is_json else FMT_UTF8)


def render_value(raw: bytes, flags: int) -> Tuple[Optional[str], bytes]:
    """(text to print, or None, and the raw bytes to print if None)."""
    fmt = format_of(flags)
    if fmt in (FMT_JSON, FMT_UTF8):
        try:
            return raw.decode("utf-8"), raw
        except UnicodeDecodeError:
            pass
    return None, raw


def item_to_json(row: Any) -> Dict[str, Any]:
    """A scanned item as one ``dump`` line (see the module docstring)."""
    out: Dict[str, Any] = {}
    key = row.key
    if isinstance(key, bytes):
        try:
            key = key.decode("utf-8")
        except UnicodeDecodeError:
            out["key_base64"] = base64.b64encode(key).decode("ascii")
            key = None
    if key is not None:
        out["key"] = key
    raw = row.raw
    if raw is not None:
        flags = row.flags
        fmt = format_of(flags)
        done = False
        if fmt == FMT_JSON and flags == FMT_JSON:
            try:
                value = json.loads(raw)
                out["value"] = value
                if isinstance(value, str):
                    out["format"] = "json"
                done = True
            except ValueError:
                pass
        elif fmt == FMT_UTF8 and flags == FMT_UTF8:
            try:
                out["value"] = raw.decode("utf-8")
                done = True
            except UnicodeDecodeError:
                pass
        elif flags == FMT_BYTES:
            out["value"] = base64.b64encode(raw).decode("ascii")
            out["format"] = "bytes"
            done = True
        if not done:
            out["value"] = base64.b64encode(raw).decode("ascii")
            out["flags"] = flags
    expiry = getattr(row, "expiry", 0)
    if expiry:
        out["ttl"] = int(expiry)
    return out


def item_from_json(obj: Any, default_ttl: int = 0) -> Tuple[Any, Any, int]:
    """A ``load`` line as (key, value to store, ttl); raises UsageError."""
    if not isinstance(obj, dict):
        raise UsageError("not a JSON object")
    if "key" in obj:
        key = obj["key"]
        if not isinstance(key, str):
            raise UsageError('"key" must be a string')
    elif "key_base64" in obj:
        key = _b64(obj["key_base64"], "key_base64")
    else:
        raise UsageError('no "key"')
    if "value" not in obj:
        raise UsageError('no "value"')
    value = obj["value"]
    ttl = obj.get("ttl", default_ttl)
    if type(ttl) is not int or not 0 <= ttl <= 0xFFFFFFFF:
        raise UsageError('"ttl" must be an integer from 0 to 4294967295')
    if "flags" in obj:
        flags = obj["flags"]
        if type(flags) is not int or not 0 <= flags <= 0xFFFFFFFF:
            raise UsageError('"flags" must be a 32-bit unsigned integer')
        return key, Encoded(_b64(value, "value"), flags), ttl
    fmt = obj.get("format")
    if fmt is None:
        if isinstance(value, str):
            return key, Encoded(value.encode("utf-8"), FMT_UTF8), ttl
        fmt = "json"
    if fmt == "json":
        data = json.dumps(value, separators=(",", ":"), ensure_ascii=False)
        return key, Encoded(data.encode("utf-8"), FMT_JSON), ttl
    if fmt == "utf8":
        if not isinstance(value, str):
            raise UsageError('"format": "utf8" needs a string value')
        return key, Encoded(value.encode("utf-8"), FMT_UTF8), ttl
    if fmt == "bytes":
        return key, Encoded(_b64(value, "value"), FMT_BYTES), ttl
    raise UsageError('"format" must be "json", "utf8" or "bytes", not %r' % (fmt,))


def _b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise UsageError('"%s" must be a base64 string' % (name,))
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (ValueError, binascii.Error):
        raise UsageError('"%s" is not valid base64' % (name,))


# -- commands -------------------------------------------------------------------

def cmd_get(ctx: Ctx) -> None:
    a = ctx.args
    results = ctx.bucket.pipeline([("get", (k,), {}) for k in a.keys])
    for key, r in zip(a.keys, results):
        if isinstance(r, errors.CouchbaseError):
            ctx.error(_describe(r), r)
            continue
        if a.json:
            row = item_to_json(_Row(key, r.raw, r.flags))
            row["cas"] = r.cas
            ctx.out(json.dumps(row, ensure_ascii=False, separators=(",", ":")))
            continue
        if a.verbose:
            ctx.stderr.write("%s cas=0x%x flags=0x%x size=%d\n"
                             % (_show_key(key), r.cas, r.flags, len(r.raw)))
        text, raw = render_value(r.raw, r.flags)
        if text is not None:
            ctx.out(text)
        else:
            ctx.write_bytes(raw + b"\n")


class _Row:
    __slots__ = ("key", "raw", "flags", "expiry")

    def __init__(self, key: Any, raw: bytes, flags: int, expiry: int = 0) -> None:
        self.key, self.raw, self.flags, self.expiry = key, raw, flags, expiry


def _store(method: str, verb: str) -> Any:
    def cmd(ctx: Ctx) -> None:
        a = ctx.args
        value = _read_value(ctx, a.value, a.format)
        kw: Dict[str, Any] = {"ttl": a.ttl}
        if method != "insert":
            kw["cas"] = a.cas
        r = getattr(ctx.bucket, method)(a.key, value, **kw)
        ctx.info("%s %s cas=0x%x" % (verb, _show_key(a.key), r.cas))
    return cmd


def cmd_rm(ctx: Ctx) -> None:
    a = ctx.args
    if a.cas and len(a.keys) > 1:
        raise UsageError("--cas applies to one key only")
    results = ctx.bucket.pipeline([("remove", (k,), {"cas": a.cas}) for k in a.keys])
    for key, r in zip(a.keys, results):
        if isinstance(r, errors.CouchbaseError):
            ctx.error(_describe(r), r)
        else:
            ctx.info("removed %s" % (_show_key(key),))


def cmd_counter(ctx: Ctx) -> None:
    a = ctx.args
    r = ctx.bucket.counter(a.key, delta=a.delta, initial=a.initial, ttl=a.ttl)
    ctx.out(str(r.value))


def cmd_touch(ctx: Ctx) -> None:
    a = ctx.args
    results = ctx.bucket.pipeline([("touch", (k, a.ttl), {}) for k in a.keys])
    for key, r in zip(a.keys, results):
        if isinstance(r, errors.CouchbaseError):
            ctx.error(_describe(r), r)
        else:
            ctx.info("touched %s cas=0x%x" % (_show_key(key), r.cas))


def cmd_stats(ctx: Ctx) -> None:
    a = ctx.args
    stats = ctx.bucket.stats()
    if a.names:
        missing = [n for n in a.names if n not in stats]
        if missing:
            raise UsageError("no such statistic: %s" % (", ".join(missing),))
        stats = {n: stats[n] for n in a.names}
    if a.json:
        ctx.out(json.dumps(stats, sort_keys=True))
        return
    width = max((len(n) for n in stats), default=0)
    for name in sorted(stats):
        ctx.out("%-*s %s" % (width, name, stats[name]))


def cmd_ping(ctx: Ctx) -> None:
    a = ctx.args
    if a.count < 1:
        raise UsageError("--count must be at least 1")
    bucket = ctx.bucket
    times: List[float] = []
    for i in range(a.count):
        if i:
            time.sleep(a.interval)
        rtt = bucket.ping()
        times.append(rtt * 1000)
        ctx.out("%s seq=%d time=%.3f ms" % (ctx.endpoint, i + 1, rtt * 1000))
    ctx.out("%d pings: min/avg/max = %.3f/%.3f/%.3f ms"
            % (len(times), min(times), sum(times) / len(times), max(times)))


def _open_load_file(path: str, stdin: Any) -> Tuple[Any, Optional[int], str]:
    """(the file to read, its size if known, its name in messages)."""
    if path == "-":
        return stdin, None, "<stdin>"
    try:
        f = open(path, "rb")
    except OSError as e:
        raise UsageError("cannot read %s: %s" % (path, e.strerror))
    return f, os.fstat(f.fileno()).st_size, path


def _load_line(line: bytes, default_ttl: int) -> Tuple[Any, Any, int]:
    """One JSON line as (key, value, ttl); raises UsageError."""
    try:
        obj = json.loads(line)
    except ValueError as e:  # JSONDecodeError, UnicodeDecodeError
        raise UsageError("not JSON: %s" % (e,))
    return item_from_json(obj, default_ttl)


class _Loader:
    """Stores the items of ``load``'s file, ``--batch`` pipelined requests at a time."""

    def __init__(self, ctx: Ctx, bucket: Bucket, name: str) -> None:
        self.ctx, self.bucket, self.name = ctx, bucket, name
        self.args = ctx.args
        self.stored = self.failed = 0
        self.window: List[Tuple[int, Any, Any, int]] = []

    def run(self, f: Any, bar: Any) -> None:
        """Read and store every line; stop at the first failure unless --keep-going."""
        a = self.args
        for lineno, line in enumerate(f, 1):
            bar.update(len(line))
            if not line.strip():
                continue
            try:
                key, value, ttl = _load_line(line, a.ttl)
            except UsageError as e:
                self.failed += 1
                self.ctx.error("%s:%d: %s" % (self.name, lineno, e), status=EXIT["usage"])
                if a.keep_going:
                    continue
                break
            self.window.append((lineno, key, value, ttl))
            if len(self.window) >= a.batch:
                self.send()
                if self.failed and not a.keep_going:
                    break
        if self.window:  # everything before a bad line is stored
            self.send()

    def send(self) -> None:
        """Store the window in one pipeline; a lost connection ends the load."""
        window = self.window
        results = self.bucket.pipeline([(self.args.mode, (k, v), {"ttl": ttl})
                                        for _n, k, v, ttl in window])
        for (lineno, _k, _v, _t), r in zip(window, results):
            if isinstance(r, (errors.ConnectError, errors.NetworkError, errors.TimeoutError)):
                raise r
            if isinstance(r, errors.CouchbaseError):
                self.failed += 1
                self.ctx.error("%s:%d: %s" % (self.name, lineno, _describe(r)), r)
            else:
                self.stored += 1
        window.clear()


def cmd_load(ctx: Ctx) -> None:
    a = ctx.args
    if a.batch < 1:
        raise UsageError("--batch must be at least 1")
    stdin = getattr(sys.stdin, "buffer", sys.stdin)
    f, total, name = _open_load_file(a.file, stdin)
    loader = _Loader(ctx, ctx.bucket, name)
    bar = ctx.progress(total=total, unit="B", unit_scale=True, desc="load")
    started = time.monotonic()
    try:
        loader.run(f, bar)
    finally:
        bar.close()
        if f is not stdin:
            f.close()
    if loader.failed and not a.keep_going:
        return  # the error said it all
    took = time.monotonic() - started
    stored, failed = loader.stored, loader.failed
    ctx.info("loaded %d item%s in %.2fs (%.0f items/s)%s"
             % (stored, "" if stored == 1 else "s", took, stored / took if took else 0,
                ", %d failed" % failed if failed else ""))


def cmd_dump(ctx: Ctx) -> None:
    a = ctx.args
    bucket = ctx.bucket
    out: TextIO
    if a.output and a.output != "-":
        try:
            out = open(a.output, "w", encoding="utf-8")
        except OSError as e:
            raise UsageError("cannot write %s: %s" % (a.output, e.strerror))
    else:
        out = ctx.stdout
    total = None
    if not (a.prefix or a.start or a.end):
        total = bucket.stats().get("items")
    bar = ctx.progress(total=total, unit="item", desc="dump",
                       data_on_stdout=out is ctx.stdout)
    started = time.monotonic()
    n = 0
    dumps = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
    try:
        scan = bucket.scan(prefix=a.prefix, start=a.start, end=a.end, ids_only=a.ids_only,
                           batch_size=a.batch_size)
        while True:
            rows = scan.next_batch()
            if not rows:
                break
            out.write("".join([dumps(item_to_json(r)) + "\n" for r in rows]))
            n += len(rows)
            bar.update(len(rows))
        out.flush()
    finally:
        bar.close()
        if out is not ctx.stdout:
            out.close()
    took = time.monotonic() - started
    ctx.info("dumped %d item%s in %.2fs (%.0f items/s)"
             % (n, "" if n == 1 else "s", took, n / took if took else 0))


# -- the parser -------------------------------------------------------------------

_EPILOG = ("exit status: 0 ok, 1 error, 2 usage, 3 not found, 4 exists, "
           "5 connection failure, 6 timeout, 7 temporary failure, 8 too big, "
           "9 bad value, 10 not supported, 130 interrupted")

#: One argument of a subcommand: add_argument's (names, keywords).
Arg = Tuple[Tuple[str, ...], Dict[str, Any]]


def _arg(*names: str, **kwargs: Any) -> Arg:
    return names, kwargs


#: Marks where a subcommand takes --progress / --no-progress.
_PROGRESS: Arg = ((), {})

_KEYS = _arg("keys", nargs="+", metavar="KEY")
_KEY = _arg("key", metavar="KEY")
_TTL_HELP = "expiry: seconds (up to 30 days) or a Unix time; 0 = never"


def _store_args(method: str) -> List[Arg]:
    """set, insert and replace: KEY VALUE and how to store it."""
    args = [
        _KEY,
        _arg("value", metavar="VALUE", help="the value; - reads standard input"),
        _arg("--ttl", type=_parse_ttl, default=0, metavar="N", help=_TTL_HELP),
        _arg("--format", choices=("auto", "json", "utf8", "bytes"), default="auto",
             help="how to store VALUE: auto (JSON if it parses as JSON, else "
                  "UTF-8 text), json, utf8 or bytes"),
    ]
    if method != "insert":
        args.append(_arg("--cas", type=_parse_int, default=0, metavar="CAS",
                         help="only if the item's CAS is still this"))
    return args


#: The subcommands, in --help order: (name, function, help, description, arguments).
COMMANDS: List[Tuple[str, Any, str, str, List[Arg]]] = [
    ("get", cmd_get, "print the values of keys",
     "Print each key's value on a line of its own: JSON as JSON, UTF-8 text "
     "as text, other values as their raw bytes.", [
         _KEYS,
         _arg("--json", action="store_true",
              help="print JSON lines (key, value, cas) in the dump format"),
         _arg("-v", "--verbose", action="store_true",
              help="also print each key's cas, flags and size on stderr")]),
    ("set", _store("upsert", "stored"), "store a value (upsert)", "",
     _store_args("upsert")),
    ("insert", _store("insert", "inserted"), "store a value only if the key is absent", "",
     _store_args("insert")),
    ("replace", _store("replace", "replaced"), "store a value only if the key exists", "",
     _store_args("replace")),
    ("rm", cmd_rm, "remove keys", "", [
        _KEYS,
        _arg("--cas", type=_parse_int, default=0, metavar="CAS",
             help="only if the item's CAS is still this (one key)")]),
    ("counter", cmd_counter, "add to a counter and print its new value",
     "Add DELTA (may be negative) to an unsigned 64-bit counter and print the "
     "new value.  A missing key is created with --initial (without it: "
     "not found).", [
         _KEY,
         _arg("--delta", type=_parse_int, default=1, metavar="N"),
         _arg("--initial", type=_parse_int, default=None, metavar="N"),
         _arg("--ttl", type=_parse_ttl, default=0, metavar="N",
              help="expiry of a counter it creates")]),
    ("touch", cmd_touch, "set the expiry of keys", "", [
        _KEYS,
        _arg("--ttl", type=_parse_ttl, required=True, metavar="N",
             help="new " + _TTL_HELP)]),
    ("stats", cmd_stats, "print the server's statistics", "", [
        _arg("names", nargs="*", metavar="NAME", help="only these statistics"),
        _arg("--json", action="store_true", help="print one JSON object")]),
    ("ping", cmd_ping, "measure round-trip latency (NOOP)", "", [
        _arg("-c", "--count", type=int, default=3, metavar="N"),
        _arg("-i", "--interval", type=float, default=0.2, metavar="SECONDS")]),
    ("load", cmd_load, "store the items of a JSON lines file (pipelined)",
     "Store every item of FILE (JSON lines: key, value, optional ttl, "
     "format or flags; see 'dump'), BATCH requests at a time.", [
         _arg("file", metavar="FILE", help="JSON lines; - reads standard input"),
         _arg("--mode", choices=("upsert", "insert", "replace"), default="upsert"),
         _arg("--batch", type=int, default=1000, metavar="N",
              help="requests in flight at once (default 1000)"),
         _arg("--ttl", type=_parse_ttl, default=0, metavar="N",
              help="expiry of items whose line has no ttl"),
         _arg("--keep-going", action="store_true",
              help="go on after a failed item or a bad line"),
         _PROGRESS]),
    ("dump", cmd_dump, "write every item as JSON lines (streamed scan)",
     "Write the items whose keys are in a range, in key order, as JSON lines "
     "that 'load' reads back.  The scan is streamed in batches: the next batch "
     "is asked for only once the previous one is written.", [
         _arg("--prefix", default=None, help="only keys starting with this"),
         _arg("--start", default=None, metavar="KEY", help="from this key (included)"),
         _arg("--end", default=None, metavar="KEY", help="up to this key (excluded)"),
         _arg("--ids-only", action="store_true", help="write the keys only"),
         _arg("--batch-size", type=int, default=1000, metavar="N",
              help="items per batch (default 1000)"),
         _arg("-o", "--output", default=None, metavar="FILE",
              help="write to FILE instead of standard output"),
         _PROGRESS]),
]


def _common() -> argparse.ArgumentParser:
    # Accepted before or after the command name.
    p = argparse.ArgumentParser(add_help=False)
    g = p.add_argument_group("connection and output")
    g.add_argument("-e", "--endpoint", default=argparse.SUPPRESS, metavar="ENDPOINT",
                   help="server endpoint: tcp:HOST:PORT, tcp6:..., unix:PATH or a port "
                        "(default: $TXCB_ENDPOINT or %s)" % (DEFAULT_ENDPOINT,))
    g.add_argument("-t", "--timeout", type=float, default=argparse.SUPPRESS,
                   metavar="SECONDS",
                   help="seconds to wait for a connection or reply (default %g)"
                        % (DEFAULT_TIMEOUT,))
    g.add_argument("-q", "--quiet", action="store_true", default=argparse.SUPPRESS,
                   help="print nothing but results and errors")
    return p


def _progress_options(p: argparse.ArgumentParser) -> None:
    g = p.add_mutually_exclusive_group()
    g.add_argument("--progress", dest="progress", action="store_true", default=None,
                   help="show a progress bar on stderr even if it is not a terminal")
    g.add_argument("--no-progress", dest="progress", action="store_false",
                   help="never show a progress bar")


def _add_command(sub: Any, common: argparse.ArgumentParser, name: str, func: Any,
                 help: str, description: str, args: List[Arg]) -> None:
    p = sub.add_parser(name, parents=[common], help=help, epilog=_EPILOG,
                       description=description or help)
    p.set_defaults(func=func)
    for arg in args:
        if arg is _PROGRESS:
            _progress_options(p)
        else:
            p.add_argument(*arg[0], **arg[1])


def build_parser() -> argparse.ArgumentParser:
    """The ``txcb`` parser: the common options, then one subparser per COMMANDS row."""
    common = _common()
    parser = argparse.ArgumentParser(
        prog="txcb", parents=[common], epilog=_EPILOG,
        description="Command-line client for a txcb server (twistd txcb).")
    parser.add_argument("--version", action="version", version="txcb " + __version__)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for row in COMMANDS:
        _add_command(sub, common, *row)
    return parser


def main(argv: Optional[List[str]] = None, stdout: Any = None, stderr: Any = None) -> int:
    """Run the command line; returns the exit status."""
    stdout = stdout if stdout is not None else sys.stdout
    stderr = stderr if stderr is not None else sys.stderr
    parser = build_parser()
    args = parser.parse_args(argv)
    ctx = Ctx(args, stdout, stderr)
    try:
        try:
            args.func(ctx)
        finally:
            ctx.close()
        stdout.flush()
    except UsageError as e:
        stderr.write("txcb %s: %s\n" % (args.command, e))
        return EXIT["usage"]
    except errors.CouchbaseError as e:
        ctx.error(_describe(e), e)
    except KeyboardInterrupt:
        stderr.write("txcb %s: interrupted\n" % (args.command,))
        return EXIT["interrupted"]
    except BrokenPipeError:
        # The reader went away (txcb dump | head): stop quietly, as on SIGPIPE.
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, stdout.fileno())
        except (AttributeError, OSError, ValueError):
            pass
        return 141
    except OSError as e:  # writing the output file failed (disk full...)
        stderr.write("txcb %s: %s\n" % (args.command, e))
        return EXIT["error"]
    return ctx.status


if __name__ == "__main__":  # python -m txcb.cli
    sys.exit(main())
