"""
Tests for txcb.wire.mcascii, the sans-IO memcached ASCII protocol parser.

Expected error replies were checked against a real memcached 1.6.18; tests
that mirror a memcached regression test are named after it (t/<name>.t).
"""

from __future__ import annotations

from typing import Any, List

from twisted.trial import unittest

from txcb.wire import _ascii_events  # the recorder's command names, checked below
from txcb.wire import mcascii as mc
from txcb.wire.mcascii import Command, Error


class Parser(mc.Parser):
    """
    The parser driven by a recording handler table (:class:`mc.EventRecorder`):
    ``feed`` returns what each callback stood for, as events, in order.
    """

    def __init__(self, **kwargs: Any) -> None:
        self.recorded: List[mc.Event] = []
        recorder = mc.EventRecorder(self.recorded.append)
        super().__init__(recorder.handlers, recorder.on_error, **kwargs)

    def feed(self, data: bytes) -> List[mc.Event]:  # type: ignore[override]
        super().feed(data)
        events = self.recorded[:]
        del self.recorded[:]
        return events


def parse(data: bytes, **kwargs: int) -> List[mc.Event]:
    """Feed ``data`` to a fresh parser in one piece."""
    return Parser(**kwargs).feed(data)


def parse_bytewise(data: bytes, **kwargs: int) -> List[mc.Event]:
    """Feed ``data`` to a fresh parser one byte at a time."""
    p = Parser(**kwargs)
    events: List[mc.Event] = []
    for i in range(len(data)):
        events.extend(p.feed(data[i:i + 1]))
    return events


def one_command(data: bytes, **kwargs: int) -> Command:
    """Parse ``data`` and return the single Command it must produce."""
    events = parse(data, **kwargs)
    assert len(events) == 1 and isinstance(events[0], Command), events
    return events[0]


VERSION = Command("version")


class CommandParsingTests(unittest.TestCase):
    """Every supported command parses into the right fields."""

    def test_get_single(self) -> None:
        self.assertEqual(parse(b"get foo\r\n"),
                         [Command("get", keys=[b"foo"])])

    def test_get_multi(self) -> None:
        cmd = one_command(b"get a b  c\r\n")
        self.assertEqual(cmd.name, "get")
        self.assertEqual(cmd.keys, [b"a", b"b", b"c"])
        self.assertIsNone(cmd.key)
        self.assertFalse(cmd.noreply)

    def test_gets_multi(self) -> None:
        # t/cas.t: "gets foo1 foo2"
        self.assertEqual(parse(b"gets foo1 foo2\r\n"),
                         [Command("gets", keys=[b"foo1", b"foo2"])])

    def test_getandtouch_gat(self) -> None:
        # t/getandtouch.t: "gat 10 foo1 foo2"
        self.assertEqual(parse(b"gat 10 foo1 foo2\r\n"),
                         [Command("gat", keys=[b"foo1", b"foo2"], exptime=10)])

    def test_getandtouch_gats_negative_exptime(self) -> None:
        self.assertEqual(parse(b"gats -1 foo1\r\n"),
                         [Command("gats", keys=[b"foo1"], exptime=-1)])

    def test_gat_without_keys(self) -> None:
        # memcached 1.6.18 answers "gat 10" with END, so it is a command.
        self.assertEqual(parse(b"gat 10\r\n"),
                         [Command("gat", keys=[], exptime=10)])

    def test_get_keys_may_be_utf8(self) -> None:
        key = "clé".encode("utf-8")
        self.assertEqual(parse(b"get " + key + b"\r\n"),
                         [Command("get", keys=[key])])

    def test_storage_commands(self) -> None:
        for name in ("set", "add", "replace", "append", "prepend"):
            line = name.encode() + b" k 5 -1 3\r\nabc\r\n"
            self.assertEqual(
                parse(line),
                [Command(name, key=b"k", flags=5, exptime=-1,
                         value=b"abc")], name)

    def test_set_fields(self) -> None:
        cmd = one_command(b"set foo 4294967295 2147483647 6\r\nbar\r\nz\r\n")
        self.assertEqual(cmd.name, "set")
        self.assertEqual(cmd.key, b"foo")
        self.assertEqual(cmd.flags, 2 ** 32 - 1)
        self.assertEqual(cmd.exptime, 2 ** 31 - 1)
        # The data block is taken by length: an embedded \r\n is data.
        self.assertEqual(cmd.value, b"bar\r\nz")
        self.assertIsNone(cmd.cas)
        self.assertFalse(cmd.noreply)
        self.assertEqual(cmd.keys, [])

    def test_issue_70_zero_length_value(self) -> None:
        # t/issue_70.t: "set issue70 0 0 0\r\n\r\n" is STORED.
        self.assertEqual(parse(b"set issue70 0 0 0\r\n\r\n"),
                         [Command("set", key=b"issue70", value=b"")])

    def test_exptime_most_negative(self) -> None:
        cmd = one_command(b"set k 0 -2147483648 1\r\nx\r\n")
        self.assertEqual(cmd.exptime, -2 ** 31)

    def test_value_of_max_value_accepted(self) -> None:
        data = b"v" * 1000
        self.assertEqual(
            parse(b"set k 0 0 1000\r\n" + data + b"\r\n", max_value=1000),
            [Command("set", key=b"k", value=data)])

    def test_binary_value(self) -> None:
        data = bytes(range(256))
        cmd = one_command(b"set k 0 0 256\r\n" + data + b"\r\n")
        self.assertEqual(cmd.value, data)

    def test_cas(self) -> None:
        # t/cas.t: "cas foo 0 0 6 123\r\nbarva2\r\n"
        self.assertEqual(
            parse(b"cas foo 0 0 6 123\r\nbarva2\r\n"),
            [Command("cas", key=b"foo", value=b"barva2", cas=123)])

    def test_cas_max_unique(self) -> None:
        cmd = one_command(b"cas k 1 2 1 18446744073709551615\r\nx\r\n")
        self.assertEqual((cmd.flags, cmd.exptime, cmd.cas),
                         (1, 2, 2 ** 64 - 1))

    def test_delete(self) -> None:
        self.assertEqual(parse(b"delete foo\r\n"),
                         [Command("delete", key=b"foo")])

    def test_delete_legacy_zero_hold_time(self) -> None:
        self.assertEqual(parse(b"delete foo 0\r\n"),
                         [Command("delete", key=b"foo")])

    def test_incrdecr(self) -> None:
        # t/incrdecr.t
        self.assertEqual(parse(b"incr num 8\r\ndecr num 1\r\n"),
                         [Command("incr", key=b"num", delta=8),
                          Command("decr", key=b"num", delta=1)])

    def test_incr_max_delta(self) -> None:
        cmd = one_command(b"incr num 18446744073709551615\r\n")
        self.assertEqual(cmd.delta, 2 ** 64 - 1)

    def test_touch(self) -> None:
        self.assertEqual(parse(b"touch k 10\r\n"),
                         [Command("touch", key=b"k", exptime=10)])

    def test_flush_all(self) -> None:
        self.assertEqual(parse(b"flush_all\r\n"), [Command("flush_all")])

    def test_flush_all_delay(self) -> None:
        self.assertEqual(parse(b"flush_all 30\r\n"),
                         [Command("flush_all", exptime=30, args=[b"30"])])

    def test_flush_all_extra_argument_ignored_like_memcached(self) -> None:
        # memcached 1.6.18 answers OK to "flush_all 10 20".
        self.assertEqual(
            parse(b"flush_all 10 20\r\n"),
            [Command("flush_all", exptime=10, args=[b"10", b"20"])])

    def test_version(self) -> None:
        self.assertEqual(parse(b"version\r\n"), [VERSION])

    def test_verbosity(self) -> None:
        self.assertEqual(parse(b"verbosity 1\r\n"),
                         [Command("verbosity", args=[b"1"])])

    def test_stats(self) -> None:
        self.assertEqual(parse(b"stats\r\nstats items\r\nstats detail on\r\n"),
                         [Command("stats"),
                          Command("stats", args=[b"items"]),
                          Command("stats", args=[b"detail", b"on"])])

    def test_quit_stops_parsing(self) -> None:
        # memcached closes after quit; nothing pipelined behind it runs.
        p = Parser()
        self.assertEqual(p.feed(b"quit\r\nversion\r\n"), [Command("quit")])
        self.assertTrue(p.closed)
        self.assertEqual(p.feed(b"version\r\n"), [])
        self.assertEqual(p.buffered, 0)

    def test_bare_newline_line_endings(self) -> None:
        self.assertEqual(
            parse(b"get a\nversion\nset k 0 0 1\nx\r\n"),
            [Command("get", keys=[b"a"]), VERSION,
             Command("set", key=b"k", value=b"x")])

    def test_extra_spaces_ignored(self) -> None:
        self.assertEqual(parse(b"   set  k  1   2  1  \r\nx\r\n"),
                         [Command("set", key=b"k", flags=1, exptime=2,
                                  value=b"x")])

    def test_leading_zeros_accepted(self) -> None:
        cmd = one_command(b"set k 007 0 01\r\nx\r\n")
        self.assertEqual((cmd.flags, cmd.value), (7, b"x"))

    def test_pipelined_commands_in_order(self) -> None:
        self.assertEqual(
            parse(b"set a 0 0 1\r\n1\r\nget a\r\ndelete a\r\nversion\r\n"),
            [Command("set", key=b"a", value=b"1"),
             Command("get", keys=[b"a"]),
             Command("delete", key=b"a"), VERSION])

    def test_key_of_max_key_bytes(self) -> None:
        key = b"k" * 250
        self.assertEqual(parse(b"get " + key + b"\r\n"),
                         [Command("get", keys=[key])])
        self.assertEqual(parse(b"set " + key + b" 0 0 1\r\nx\r\n"),
                         [Command("set", key=key, value=b"x")])

    def test_configurable_max_key(self) -> None:
        self.assertEqual(parse(b"get abcd\r\n", max_key=3),
                         [Error(mc.BAD_FORMAT)])
        self.assertEqual(parse(b"get abc\r\n", max_key=3),
                         [Command("get", keys=[b"abc"])])


class NoreplyTests(unittest.TestCase):
    """noreply on every command that takes it (t/noreply.t)."""

    def test_noreply_storage_commands(self) -> None:
        for name in ("set", "add", "replace", "append", "prepend"):
            line = name.encode() + b" noreply:foo 0 0 1 noreply\r\n1\r\n"
            self.assertEqual(
                parse(line),
                [Command(name, key=b"noreply:foo", value=b"1",
                         noreply=True)], name)

    def test_noreply_cas(self) -> None:
        self.assertEqual(
            parse(b"cas noreply:foo 0 0 1 42 noreply\r\n6\r\n"),
            [Command("cas", key=b"noreply:foo", value=b"6", cas=42,
                     noreply=True)])

    def test_noreply_incr_decr(self) -> None:
        self.assertEqual(
            parse(b"incr noreply:foo 3 noreply\r\n"
                  b"decr noreply:foo 2 noreply\r\n"),
            [Command("incr", key=b"noreply:foo", delta=3, noreply=True),
             Command("decr", key=b"noreply:foo", delta=2, noreply=True)])

    def test_noreply_delete(self) -> None:
        self.assertEqual(
            parse(b"delete noreply:foo noreply\r\n"
                  b"delete noreply:foo 0 noreply\r\n"),
            [Command("delete", key=b"noreply:foo", noreply=True)] * 2)

    def test_noreply_touch(self) -> None:
        self.assertEqual(parse(b"touch k 10 noreply\r\n"),
                         [Command("touch", key=b"k", exptime=10,
                                  noreply=True)])

    def test_noreply_flush_all(self) -> None:
        self.assertEqual(
            parse(b"flush_all noreply\r\nflush_all 0 noreply\r\n"),
            [Command("flush_all", noreply=True),
             Command("flush_all", noreply=True, args=[b"0"])])

    def test_noreply_verbosity(self) -> None:
        self.assertEqual(parse(b"verbosity 0 noreply\r\n"),
                         [Command("verbosity", noreply=True, args=[b"0"])])

    def test_without_noreply_flag_is_false(self) -> None:
        lines = [b"set k 0 0 1\r\nx\r\n", b"cas k 0 0 1 1\r\nx\r\n",
                 b"delete k\r\n", b"incr k 1\r\n", b"decr k 1\r\n",
                 b"touch k 1\r\n", b"flush_all\r\n", b"verbosity 1\r\n"]
        for line in lines:
            cmd = one_command(line)
            self.assertIsInstance(cmd, Command)
            self.assertFalse(cmd.noreply, line)

    def test_noreply_is_a_key_for_get(self) -> None:
        # get does not take noreply; memcached looks the word up as a key.
        self.assertEqual(parse(b"get a noreply\r\n"),
                         [Command("get", keys=[b"a", b"noreply"])])

    def test_unknown_trailing_token_ignored_like_memcached(self) -> None:
        # memcached 1.6.18 STOREs "set k 0 0 1 foo".
        self.assertEqual(parse(b"set k 0 0 1 foo\r\nx\r\n"),
                         [Command("set", key=b"k", value=b"x")])

    def test_noreply_suppresses_error_replies(self) -> None:
        # memcached sends nothing for these (checked against 1.6.18); the
        # stream stays in sync, as the following version shows.
        rows = [
            ("negative length", b"set k 0 0 -1 noreply\r\n"),
            ("length is the word noreply", b"set k 0 0 noreply\r\n"),
            ("bad delta", b"incr k abc noreply\r\n"),
            ("bad touch exptime", b"touch k abc noreply\r\n"),
            ("bad verbosity", b"verbosity noreply\r\n"),
            ("bad flush_all delay", b"flush_all x noreply\r\n"),
            ("key too long", b"incr " + b"k" * 251 + b" 1 noreply\r\n"),
        ]
        for name, line in rows:
            self.assertEqual(parse(line + b"version\r\n"),
                             [Error(b""), VERSION], name)

    def test_issue_3_delete_with_hold_time_and_noreply(self) -> None:
        # t/issue_3.t: "delete $key 10 noreply" does not reply.
        self.assertEqual(parse(b"delete del_key 10 noreply\r\nversion\r\n"),
                         [Error(b""), VERSION])

    def test_noreply_bad_data_chunk_is_silent(self) -> None:
        # memcached 1.6.18: only the ERROR for the leftover "d" line.
        self.assertEqual(
            parse(b"set k 0 0 1 noreply\r\nabcd\r\nversion\r\n"),
            [Error(b""), Error(mc.ERROR), VERSION])

    def test_noreply_too_large_is_silent_and_swallowed(self) -> None:
        self.assertEqual(
            parse(b"set k 0 0 20 noreply\r\n" + b"x" * 20 + b"\r\n"
                  b"version\r\n", max_value=10),
            [Error(b""), VERSION])


STREAM = (
    b"set foo 1 0 5\r\nhello\r\n"
    b"get foo bar\r\n"
    b"gets foo\r\n"
    b"gat 100 foo\r\n"
    b"add k 0 0 0 noreply\r\n\r\n"
    b"cas foo 0 0 3 99\r\na\nb\r\n"
    b"incr n 5\n"
    b"bogus\r\n"
    b"set big 0 0 300\r\n" + b"B" * 300 + b"\r\n"
    b"set x 0 0 2\r\nabcd\r\n"
    b"delete foo noreply\r\n"
    b"get " + b"k" * 251 + b"\r\n"
    b"touch foo -1\r\n"
    b"stats\r\n"
    b"flush_all 0\r\n"
    b"version\r\n"
)

STREAM_EVENTS: List[mc.Event] = [
    Command("set", key=b"foo", flags=1, value=b"hello"),
    Command("get", keys=[b"foo", b"bar"]),
    Command("gets", keys=[b"foo"]),
    Command("gat", keys=[b"foo"], exptime=100),
    Command("add", key=b"k", value=b"", noreply=True),
    Command("cas", key=b"foo", value=b"a\nb", cas=99),
    Command("incr", key=b"n", delta=5),
    Error(mc.ERROR),
    Error(mc.TOO_LARGE),
    Error(mc.BAD_DATA_CHUNK),
    Error(mc.ERROR),                      # the leftover empty line
    Command("delete", key=b"foo", noreply=True),
    Error(mc.BAD_FORMAT),
    Command("touch", key=b"foo", exptime=-1),
    Command("stats"),
    Command("flush_all", args=[b"0"]),
    VERSION,
]

# With max_line=128 this stream has get/gets lines longer than max_line,
# so splits also exercise the streaming multi-get tokeniser.
LONG_GET_STREAM = (
    b"get " + b"a " * 60 + b"   " + b"z" * 20 + b"\r\n"
    b"gets" + b" " * 150 + b"k1 k2\n"
    b"get " + b"q" * 10 + b" " + b"b" * 260 + b" c\r\n"
    b"get" + b" " * 200 + b"\r\n"
    b"version\r\n"
)

LONG_GET_EVENTS: List[mc.Event] = [
    Command("get", keys=[b"a"] * 60 + [b"z" * 20]),
    Command("gets", keys=[b"k1", b"k2"]),
    Error(mc.BAD_FORMAT),
    Error(mc.ERROR),
    VERSION,
]


class SplitTests(unittest.TestCase):
    """The events do not depend on how the input is split."""

    def check_splits(self, stream: bytes, expected: List[mc.Event],
                     **kwargs: int) -> None:
        self.assertEqual(parse(stream, **kwargs), expected)
        self.assertEqual(parse_bytewise(stream, **kwargs), expected)
        for i in range(len(stream) + 1):
            p = Parser(**kwargs)
            events = p.feed(stream[:i]) + p.feed(stream[i:])
            self.assertEqual(events, expected, "split at %d" % (i,))
            self.assertEqual(p.buffered, 0)

    def test_stream_every_split(self) -> None:
        self.check_splits(STREAM, STREAM_EVENTS, max_value=200)

    def test_long_get_lines_every_split(self) -> None:
        self.check_splits(LONG_GET_STREAM, LONG_GET_EVENTS, max_line=128)

    def test_long_line_close_every_split(self) -> None:
        stream = (b"version\r\nset " + b"k" * 300
                  + b" 0 0 1\r\nx\r\nversion\r\n")
        self.check_splits(stream, [VERSION, Error(b"", close=True)],
                          max_line=128)

    def test_line_length_boundary_every_split(self) -> None:
        # A line of exactly max_line bytes is fine with either ending; one
        # byte more is too long.
        ok_line = b"get " + b"k" * 124
        self.assertEqual(len(ok_line), 128)
        for ending in (b"\r\n", b"\n"):
            self.check_splits(ok_line + ending + b"version\r\n",
                              [Command("get", keys=[b"k" * 124]), VERSION],
                              max_line=128, max_key=200)
            # A non-get line cannot fall back on the multi-get streaming.
            self.check_splits(b"version " + b"x" * 120 + ending,
                              [Command("version", args=[b"x" * 120])],
                              max_line=128)
            long_line = b"version " + b"x" * 121
            self.check_splits(long_line + ending,
                              [Error(b"", close=True)], max_line=128)

    def test_three_way_splits(self) -> None:
        stream = b"set a 0 0 3\r\nxyz\r\nget a b\r\nincr a 1\r\n"
        expected = [Command("set", key=b"a", value=b"xyz"),
                    Command("get", keys=[b"a", b"b"]),
                    Command("incr", key=b"a", delta=1)]
        n = len(stream)
        for i in range(n + 1):
            for j in range(i, n + 1):
                p = Parser()
                events = (p.feed(stream[:i]) + p.feed(stream[i:j])
                          + p.feed(stream[j:]))
                self.assertEqual(events, expected, (i, j))


class IllegalInputTests(unittest.TestCase):
    """Hostile and malformed input gets memcached's exact reply."""

    # (name, input, expected events).  Each input is followed by
    # "version\r\n" unless the connection is closed, to prove the stream is
    # still in sync.  Replies were checked against memcached 1.6.18.
    ROWS = [
        ("issue_70 negative length", b"set issue70 0 0 -1\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("issue_70 length 4294967295", b"set issue70 0 0 4294967295\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("issue_70 length 2147483647", b"set issue70 0 0 2147483647\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("non-numeric length", b"set k 0 0 abc\r\n", [Error(mc.BAD_FORMAT)]),
        ("length with plus sign", b"set k 0 0 +1\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("negative flags", b"set k -1 0 1\r\nx\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("flags over 32 bits", b"set k 4294967296 0 1\r\nx\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("exptime over 32 bits", b"set k 0 2147483648 1\r\nx\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("non-numeric cas unique", b"cas k 0 0 1 abc\r\nx\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("negative cas unique", b"cas k 0 0 1 -1\r\nx\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("bad data chunk", b"set k 0 0 1\r\nabcd\r\n",
         # exactly 1 + 2 bytes are consumed; "d" is then a command.
         [Error(mc.BAD_DATA_CHUNK), Error(mc.ERROR)]),
        ("bad data chunk bare newline", b"set k 0 0 1\r\na\n\r\n",
         [Error(mc.BAD_DATA_CHUNK), Error(mc.ERROR)]),
        ("set key of 251 bytes", b"set " + b"k" * 251 + b" 0 0 1\r\nx\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("get key of 251 bytes", b"get " + b"k" * 251 + b"\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("second get key of 251 bytes",
         b"get a " + b"k" * 251 + b" b\r\n", [Error(mc.BAD_FORMAT)]),
        ("get key with control char", b"get a\x01b\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("get key with tab", b"get a\tb\r\n", [Error(mc.BAD_FORMAT)]),
        ("get key with DEL", b"get a\x7f\r\n", [Error(mc.BAD_FORMAT)]),
        ("get key with NUL", b"get a\x00b\r\n", [Error(mc.BAD_FORMAT)]),
        ("get key with inner CR", b"get a\rb\r\n", [Error(mc.BAD_FORMAT)]),
        ("set key with control char", b"set a\x01b 0 0 1\r\nx\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("delete key with control char", b"delete a\x02\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("touch key of 251 bytes", b"touch " + b"k" * 251 + b" 1\r\n",
         [Error(mc.BAD_FORMAT)]),
        ("incr non-numeric delta", b"incr k abc\r\n", [Error(mc.BAD_DELTA)]),
        ("incr negative delta", b"incr k -1\r\n", [Error(mc.BAD_DELTA)]),
        ("incr delta 2**64", b"incr k 18446744073709551616\r\n",
         [Error(mc.BAD_DELTA)]),
        ("decr non-numeric delta", b"decr k 1.5\r\n", [Error(mc.BAD_DELTA)]),
        ("touch bad exptime", b"touch k abc\r\n", [Error(mc.BAD_EXPTIME)]),
        ("gat bad exptime", b"gat abc k\r\n", [Error(mc.BAD_EXPTIME)]),
        ("flush_all bad delay", b"flush_all x\r\n", [Error(mc.BAD_EXPTIME)]),
        ("verbosity bad level", b"verbosity x\r\n", [Error(mc.BAD_FORMAT)]),
        ("delete with hold time", b"delete k 10\r\n",
         [Error(mc.BAD_DELETE)]),
        ("bogus-commands unknown command",
         b"boguscommand slkdsldkfjsd\r\n", [Error(mc.ERROR)]),
        ("uppercase command", b"GET k\r\n", [Error(mc.ERROR)]),
        ("one-letter command", b"g\r\n", [Error(mc.ERROR)]),
        ("empty line", b"\r\n", [Error(mc.ERROR)]),
        ("empty bare line", b"\n", [Error(mc.ERROR)]),
        ("only one CR is stripped", b"version\r\r\n", [Error(mc.ERROR)]),
        ("HTTP/ not last token", b"bogus HTTP/1.1 x\r\n", [Error(mc.ERROR)]),
        ("too few tokens get", b"get\r\n", [Error(mc.ERROR)]),
        ("too few tokens gat", b"gat\r\n", [Error(mc.ERROR)]),
        ("too few tokens set", b"set k 0 0\r\n", [Error(mc.ERROR)]),
        ("too few tokens incr", b"incr k\r\n", [Error(mc.ERROR)]),
        ("too few tokens touch", b"touch k\r\n", [Error(mc.ERROR)]),
        ("too few tokens delete", b"delete\r\n", [Error(mc.ERROR)]),
        ("too few tokens verbosity", b"verbosity\r\n", [Error(mc.ERROR)]),
        ("too many tokens set",
         b"set k 0 0 1 noreply extra\r\na\r\n",
         # memcached does not swallow here: "a" is then a command.
         [Error(mc.ERROR), Error(mc.ERROR)]),
        ("too many tokens cas", b"cas k 0 0 1 1 noreply x\r\n",
         [Error(mc.ERROR)]),
        ("too many tokens incr", b"incr k 1 noreply x\r\n",
         [Error(mc.ERROR)]),
        ("too many tokens touch", b"touch k 1 noreply x\r\n",
         [Error(mc.ERROR)]),
        ("too many tokens delete", b"delete k a b c\r\n", [Error(mc.ERROR)]),
        ("too many tokens flush_all", b"flush_all 1 2 3\r\n",
         [Error(mc.ERROR)]),
        ("too many tokens verbosity", b"verbosity 1 2 3\r\n",
         [Error(mc.ERROR)]),
    ]

    def test_table(self) -> None:
        for name, data, expected in self.ROWS:
            stream = data + b"version\r\n"
            for feed in (parse, parse_bytewise):
                self.assertEqual(feed(stream), expected + [VERSION], name)

    def test_issue_70_negative_length(self) -> None:
        # Nothing is buffered for a bad length: the next line is a command.
        p = Parser()
        self.assertEqual(p.feed(b"set issue70 0 0 -1\r\n"),
                         [Error(mc.BAD_FORMAT)])
        self.assertEqual(p.buffered, 0)
        self.assertEqual(p.feed(b"version\r\n"), [VERSION])

    def test_issue_70_huge_length(self) -> None:
        p = Parser()
        self.assertEqual(p.feed(b"set issue70 0 0 4294967295\r\n"),
                         [Error(mc.BAD_FORMAT)])
        self.assertEqual(p.buffered, 0)
        self.assertFalse(p.closed)

    def test_cas_empty_unique(self) -> None:
        # t/cas.t "cas empty, throw error" and "error out on barval2".
        self.assertEqual(parse(b"cas foo 0 0 6 \r\nbarva2\r\n"),
                         [Error(mc.ERROR), Error(mc.ERROR)])

    def test_bad_key_swallows_data_block(self) -> None:
        # Stricter than memcached: a rejected storage line with a valid
        # length skips its data, which could otherwise run as commands.
        self.assertEqual(
            parse(b"set a\x01 0 0 11\r\nflush_all\r\n\r\nversion\r\n"),
            [Error(mc.BAD_FORMAT), VERSION])

    # Issue 12 item 9: ``set k 0 0 2147483646``.  Every length memcached
    # 1.6.18 accepts (up to INT_MAX - 2) that is over the endpoint's max value
    # size is answered SERVER_ERROR object too large and its data swallowed;
    # a length over INT_MAX - 2 is CLIENT_ERROR bad command line format in
    # memcached 1.6.18 itself (checked live: "set k 0 0 2147483646\r\nab\r\n"
    # answers CLIENT_ERROR, then ERROR for "ab"), so it is here too.
    TOO_LARGE_LENGTHS = [101, 102, 1024 * 1024 + 1, 20 * 1024 * 1024 + 1,
                         2147483644, 2147483645]
    BAD_LENGTHS = [2147483646, 2147483647, 4294967295, 4294967296, 10 ** 30]

    def test_set_k_0_0_2147483646_table(self) -> None:
        for vlen in self.TOO_LARGE_LENGTHS:
            for name in ("set", "add", "replace", "append", "prepend"):
                p = Parser(max_value=100)
                line = b"%s k 0 0 %d\r\n" % (name.encode(), vlen)
                self.assertEqual(p.feed(line), [Error(mc.TOO_LARGE)], line)
                self.assertEqual(p.buffered, 0, line)
                # The data block is swallowed, not run as commands.
                self.assertEqual(p.feed(b"flush_all\r\n" if vlen == 101 else b"x" * 64), [],
                                 line)
                self.assertEqual(p.buffered, 0, line)
                self.assertFalse(p.closed, line)
            p = Parser(max_value=100)
            self.assertEqual(p.feed(b"set k 0 0 %d noreply\r\n" % vlen), [Error(b"")])
            self.assertEqual(p.buffered, 0)
        for vlen in self.BAD_LENGTHS:
            p = Parser(max_value=100)
            self.assertEqual(p.feed(b"set k 0 0 %d\r\nab\r\nversion\r\n" % vlen),
                             [Error(mc.BAD_FORMAT), Error(mc.ERROR), VERSION], vlen)
            self.assertEqual(p.buffered, 0)

    def test_value_of_max_value_plus_one_swallowed_exactly(self) -> None:
        # Exactly vlen + 2 bytes are swallowed; the next line is a command.
        stream = b"set k 0 0 101\r\n" + b"x" * 101 + b"\r\nversion\r\n"
        for feed in (parse, parse_bytewise):
            self.assertEqual(feed(stream, max_value=100), [Error(mc.TOO_LARGE), VERSION])

    def test_value_over_max_value_swallowed(self) -> None:
        # The data block is counted down, never buffered.
        p = Parser()
        size = 30 * 1024 * 1024
        self.assertEqual(p.feed(b"set k 0 0 %d\r\n" % (size,)),
                         [Error(mc.TOO_LARGE)])
        chunk = b"x" * 65536
        sent = 0
        while sent < size:
            self.assertEqual(p.feed(chunk[:size - sent]), [])
            sent += min(len(chunk), size - sent)
            self.assertEqual(p.buffered, 0)
        self.assertEqual(p.feed(b"\r\nget k\r\n"),
                         [Command("get", keys=[b"k"])])

    def test_value_over_max_value_swallowed_bytewise(self) -> None:
        stream = (b"set k 0 0 300\r\n" + b"x" * 300 + b"\r\nversion\r\n")
        p = Parser(max_value=100)
        events = []
        for i in range(len(stream)):
            events.extend(p.feed(stream[i:i + 1]))
            self.assertLessEqual(p.buffered, 64)
        self.assertEqual(events, [Error(mc.TOO_LARGE), VERSION])

    def test_value_over_max_value_swallowed_in_one_feed(self) -> None:
        p = Parser(max_value=100)
        self.assertEqual(
            p.feed(b"set k 0 0 300\r\n" + b"x" * 300 + b"\r\nversion\r\n"),
            [Error(mc.TOO_LARGE), VERSION])
        self.assertEqual(p.buffered, 0)

    def test_line_too_long_closes(self) -> None:
        # memcached 1.6.18 hangs up without a reply on a 4096-byte line
        # that is not a multi-get (try_read_command_ascii).
        p = Parser()
        events = []
        for _ in range(4096):
            events.extend(p.feed(b"x"))
            self.assertLessEqual(p.buffered, p.max_line + 1)
        self.assertEqual(events, [Error(b"", close=True)])
        self.assertTrue(p.closed)
        self.assertEqual(p.feed(b"\r\nversion\r\n"), [])
        self.assertEqual(p.buffered, 0)

    def test_line_too_long_in_one_feed(self) -> None:
        p = Parser()
        self.assertEqual(p.feed(b"set " + b"k" * 4092),
                         [Error(b"", close=True)])
        self.assertEqual(p.buffered, 0)

    def test_complete_long_line_closes(self) -> None:
        # Even with its newline in the same read, a long non-get line is
        # refused, so the result does not depend on packet boundaries.
        self.assertEqual(
            parse(b"set " + b"k" * 3000 + b" 0 0 1\r\nx\r\n"),
            [Error(b"", close=True)])

    def test_long_gat_line_closes(self) -> None:
        # memcached only lets get and gets lines run long.
        self.assertEqual(parse(b"gat 0 " + b"a " * 3000 + b"\r\n"),
                         [Error(b"", close=True)])

    def test_long_get_with_too_many_leading_spaces_closes(self) -> None:
        self.assertEqual(parse(b" " * 101 + b"get " + b"x " * 1500 + b"\r\n"),
                         [Error(b"", close=True)])

    def test_long_get_with_100_leading_spaces_allowed(self) -> None:
        cmd = one_command(b" " * 100 + b"get " + b"k " * 1500 + b"\r\n")
        self.assertEqual(cmd, Command("get", keys=[b"k"] * 1500))

    def test_get_then_10000_spaces_then_key(self) -> None:
        stream = b"get" + b" " * 10000 + b"foo\r\nversion\r\n"
        expected = [Command("get", keys=[b"foo"]), VERSION]
        self.assertEqual(parse(stream), expected)
        p = Parser()
        events = []
        for i in range(len(stream)):
            events.extend(p.feed(stream[i:i + 1]))
            self.assertLessEqual(p.buffered, p.max_line + 1)
        self.assertEqual(events, expected)

    def test_get_then_only_spaces(self) -> None:
        # memcached 1.6.18: ERROR ("get" needs a key).
        self.assertEqual(parse(b"gets" + b" " * 3000 + b"\r\n"),
                         [Error(mc.ERROR)])

    def test_long_get_with_huge_key_stays_bounded(self) -> None:
        p = Parser()
        self.assertEqual(p.feed(b"get "), [])
        for _ in range(64):
            self.assertEqual(p.feed(b"a" * 16384), [])
            self.assertLessEqual(p.buffered, p.max_line + 1)
        self.assertEqual(p.feed(b"\r\nversion\r\n"),
                         [Error(mc.BAD_FORMAT), VERSION])

    def test_long_get_many_keys(self) -> None:
        keys = [b"key%d" % (i,) for i in range(5000)]
        line = b"get " + b" ".join(keys) + b"\r\n"
        self.assertEqual(parse(line), [Command("get", keys=keys)])
        # 7-byte chunks split keys everywhere.
        p = Parser()
        events = []
        for i in range(0, len(line), 7):
            events.extend(p.feed(line[i:i + 7]))
        self.assertEqual(events, [Command("get", keys=keys)])

    def test_too_many_keys(self) -> None:
        self.assertEqual(parse(b"get a b c d\r\nget a b c\r\n", max_keys=3),
                         [Error(mc.GET_TOO_MANY_KEYS),
                          Command("get", keys=[b"a", b"b", b"c"])])

    def test_too_many_keys_in_long_get_line(self) -> None:
        p = Parser(max_keys=10)
        self.assertEqual(p.feed(b"get " + b"k " * 5000 + b"\r\nversion\r\n"),
                         [Error(mc.GET_TOO_MANY_KEYS), VERSION])

    def test_long_get_in_one_huge_feed(self) -> None:
        # One feed of a 2 MB get line (a million keys) hits max_keys and
        # leaves nothing behind.
        p = Parser()
        line = b"get " + b"a " * 1000000 + b"\r\n"
        self.assertEqual(p.feed(line + b"version\r\n"),
                         [Error(mc.GET_TOO_MANY_KEYS), VERSION])
        self.assertEqual(p.buffered, 0)

    def test_long_get_across_slices(self) -> None:
        # A ~500 KB line is tokenised in 64 KB slices; keys cut by a slice
        # boundary come out whole.
        keys = [b"key%d" % (i,) for i in range(70000)]
        line = b"get " + b" ".join(keys) + b"\r\n"
        self.assertEqual(Parser(max_keys=70000).feed(line),
                         [Command("get", keys=keys)])

    def test_malicious_commands_http_get(self) -> None:
        # t/malicious-commands.t: memcached hangs up without sending a byte.
        p = Parser()
        self.assertEqual(p.feed(b"GET / HTTP/1.0\r\nversion\r\n"),
                         [Error(b"", close=True)])
        self.assertTrue(p.closed)
        self.assertEqual(p.feed(b"version\r\n"), [])

    def test_malicious_commands_http_put_and_delete(self) -> None:
        for line in (b"PUT /asdf/asd/fasdfasdf/sadf HTTP/1.1\r\n",
                     b"DELETE HTTP/1.1\r\n",
                     b"POST /x HTTP/1.1\r\nHost: a\r\n\r\n"):
            self.assertEqual(parse(line), [Error(b"", close=True)], line)

    def test_http_after_commands(self) -> None:
        self.assertEqual(parse(b"version\r\nGET / HTTP/1.0\r\n"),
                         [VERSION, Error(b"", close=True)])

    def test_non_ascii_command(self) -> None:
        self.assertEqual(parse(b"\xff\xfe x\r\n"), [Error(mc.ERROR)])

    def test_huge_digit_strings_rejected_cheaply(self) -> None:
        self.assertEqual(parse(b"incr k " + b"9" * 2000 + b"\r\n"),
                         [Error(mc.BAD_DELTA)])
        self.assertEqual(parse(b"incr k " + b"0" * 2000 + b"7\r\n"),
                         [Command("incr", key=b"k", delta=7)])


class ParserConfigTests(unittest.TestCase):
    """Constructor limits are checked."""

    def test_defaults(self) -> None:
        p = Parser()
        self.assertEqual((p.max_line, p.max_value, p.max_key),
                         (2048, 20 * 1024 * 1024, 250))
        self.assertFalse(p.closed)
        self.assertEqual(p.buffered, 0)

    def test_bad_limits(self) -> None:
        for kwargs in ({"max_line": 10}, {"max_value": -1},
                       {"max_value": 2 ** 31}, {"max_key": 0},
                       {"max_keys": 0}):
            self.assertRaises(ValueError, Parser, **kwargs)

    def test_partial_data_buffered_up_to_value(self) -> None:
        p = Parser()
        self.assertEqual(p.feed(b"set k 0 0 10\r\n12345"), [])
        self.assertEqual(p.buffered, 5)
        self.assertEqual(p.feed(b"67890\r\n"),
                         [Command("set", key=b"k", value=b"1234567890")])
        self.assertEqual(p.buffered, 0)

    def test_events_repr_and_equality(self) -> None:
        cmd = Command("set", key=b"k", value=b"v" * 100)
        self.assertIn("'set'", repr(cmd))
        self.assertIn("...", repr(cmd))
        self.assertNotEqual(cmd, Command("set", key=b"k"))
        self.assertNotEqual(Error(mc.ERROR), Error(mc.ERROR, close=True))
        self.assertEqual(repr(Error(b"", close=True)),
                         "Error(b'', close=True)")
        self.assertFalse(hasattr(cmd, "__dict__"))
        self.assertFalse(hasattr(Error(b""), "__dict__"))


class FormattingTests(unittest.TestCase):
    """Reply builders produce memcached's wire format and refuse bad input."""

    def test_constants(self) -> None:
        self.assertEqual(
            [mc.END, mc.STORED, mc.NOT_STORED, mc.EXISTS, mc.NOT_FOUND,
             mc.DELETED, mc.TOUCHED, mc.OK, mc.ERROR],
            [b"END\r\n", b"STORED\r\n", b"NOT_STORED\r\n", b"EXISTS\r\n",
             b"NOT_FOUND\r\n", b"DELETED\r\n", b"TOUCHED\r\n", b"OK\r\n",
             b"ERROR\r\n"])

    def test_format_value(self) -> None:
        self.assertEqual(mc.format_value(b"foo", 5, b"bar\r\nx"),
                         b"VALUE foo 5 6\r\nbar\r\nx\r\n")

    def test_format_value_with_cas(self) -> None:
        self.assertEqual(mc.format_value(b"foo1", 0, b"1", cas=2 ** 64 - 1),
                         b"VALUE foo1 0 1 18446744073709551615\r\n1\r\n")

    def test_format_value_empty(self) -> None:
        self.assertEqual(mc.format_value(b"k", 0, b""),
                         b"VALUE k 0 0\r\n\r\n")

    def test_format_value_rejects_bad_input(self) -> None:
        self.assertRaises(ValueError, mc.format_value, b"a b", 0, b"")
        self.assertRaises(ValueError, mc.format_value, b"a\r\n", 0, b"")
        self.assertRaises(ValueError, mc.format_value, b"", 0, b"")
        self.assertRaises(ValueError, mc.format_value, b"k", -1, b"")
        self.assertRaises(ValueError, mc.format_value, b"k", 2 ** 32, b"")
        self.assertRaises(ValueError, mc.format_value, b"k", 0, b"", -1)
        self.assertRaises(ValueError, mc.format_value, b"k", 0, b"", 2 ** 64)

    def test_format_number(self) -> None:
        self.assertEqual(mc.format_number(0), b"0\r\n")
        self.assertEqual(mc.format_number(4294967297), b"4294967297\r\n")
        self.assertEqual(mc.format_number(2 ** 64 - 1),
                         b"18446744073709551615\r\n")
        self.assertRaises(ValueError, mc.format_number, -1)
        self.assertRaises(ValueError, mc.format_number, 2 ** 64)

    def test_format_stats(self) -> None:
        self.assertEqual(
            mc.format_stats({"pid": 42, b"version": b"1.6.18",
                             "cas_enabled": True, "rusage_user": 0.5}),
            b"STAT pid 42\r\nSTAT version 1.6.18\r\n"
            b"STAT cas_enabled yes\r\nSTAT rusage_user 0.5\r\nEND\r\n")

    def test_format_stats_empty(self) -> None:
        self.assertEqual(mc.format_stats({}), b"END\r\n")

    def test_format_stats_refuses_injection(self) -> None:
        self.assertRaises(ValueError, mc.format_stats, {"a b": 1})
        self.assertRaises(ValueError, mc.format_stats, {"": 1})
        self.assertRaises(ValueError, mc.format_stats,
                          {"x": "1\r\nSTAT evil 1"})
        self.assertRaises(ValueError, mc.format_stats, {"x": b"1\n"})


class EventRecorderCoverageTests(unittest.TestCase):
    """The recorder's command names are the parser's handler table's, exactly."""

    def test_recorder_knows_every_command_the_parser_dispatches(self):
        self.assertEqual(set(_ascii_events.COMMANDS), set(mc._HANDLERS))
        self.assertEqual(set(mc.EventRecorder(lambda e: None).handlers), set(mc._HANDLERS))
