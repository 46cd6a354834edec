"""
Tests for txcb.buckets.ketama: twemproxy-compatible key distribution.

The pure tests use vectors that were recorded from a real nutcracker 0.5.0
(Debian's) and point counts checked against twemproxy's own C expression
compiled with gcc.  The integration tests prove the same thing live: they
write keys through a real nutcracker in front of three real memcached
processes and check every key landed where Continuum/Modula say.
"""

from __future__ import annotations

import hashlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from typing import Any, Dict, Iterable, List, Optional, Sequence

from twisted.trial import unittest

from txcb.buckets.ketama import (
    Continuum, Modula, NoServersError, ServerSpec, hash_md5, ketama_points,
    parse_server)

from tests.support.procs import free_port as _free_port


# --- pure tests ----------------------------------------------------------

class PureTests(unittest.TestCase):

    def test_imports_nothing_but_stdlib(self) -> None:
        import ast
        import txcb.buckets.ketama as module
        with open(module.__file__, encoding="utf-8") as f:
            tree = ast.parse(f.read())
        imported: set = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(a.name for a in node.names)
            elif isinstance(node, ast.ImportFrom):
                imported.add(node.module or "")
        self.assertEqual(imported, {"__future__", "hashlib", "math", "struct",
                                    "bisect", "typing"})


class HashMd5Tests(unittest.TestCase):
    """hash_md5 is nc_md5.c's: first 4 digest bytes, little-endian."""

    def test_empty_string(self) -> None:
        # md5("") = d41d8cd98f00b204e9800998ecf8427e
        self.assertEqual(hash_md5(b""), 0xD98C1DD4)

    def test_abc(self) -> None:
        # md5("abc") = 900150983cd24fb0d6963f7d28e17f72
        self.assertEqual(hash_md5(b"abc"), 0x98500190)

    def test_matches_hashlib_little_endian(self) -> None:
        for key in (b"a", b"key:1", b"\x00\xff" * 40):
            d = hashlib.md5(key).digest()
            self.assertEqual(hash_md5(key),
                             d[0] | d[1] << 8 | d[2] << 16 | d[3] << 24)


class KetamaPointsTests(unittest.TestCase):
    """
    Points per server, as ketama_update computes them in C float.  Every
    expected number below was printed by twemproxy's expression compiled
    with gcc on x86-64; the rows marked "float" differ from exact
    arithmetic, which is why the module emulates single precision.
    """

    def test_equal_weights_get_160(self) -> None:
        for n in (1, 2, 3, 10, 24, 199):
            self.assertEqual(ketama_points(1, n, n), 160, n)
            self.assertEqual(ketama_points(7, 7 * n, n), 160, n)

    def test_float_rounding_loses_a_group(self) -> None:
        # exact: floor(1/25 * 40 * 25) * 4 = 160; float: 156.
        self.assertEqual(ketama_points(1, 25, 25), 156)
        # exact: floor(1/25 * 40 * 5) * 4 = 32; float: 28.
        self.assertEqual(ketama_points(1, 25, 5), 28)
        # weights 5, 26, 29: exact 29/60 * 120 = 58 groups; float 57.
        self.assertEqual(ketama_points(29, 60, 3), 228)
        self.assertEqual(ketama_points(26, 60, 3), 208)
        self.assertEqual(ketama_points(5, 60, 3), 40)

    def test_tiny_weight_gets_no_point(self) -> None:
        # 1/101 * 40 * 2 = 0.79 -> floor 0: twemproxy never picks it.
        self.assertEqual(ketama_points(1, 101, 2), 0)
        c = Continuum([("small", 1), ("big", 100)])
        self.assertEqual({i for _, i in c.points}, {1})
        self.assertEqual({c.server_for(b"k%d" % i) for i in range(200)}, {1})


class ParseServerTests(unittest.TestCase):
    """The hash name of a server line, as nc_conf.c conf_add_server."""

    def test_port_11211_is_left_out_of_the_name(self) -> None:
        self.assertEqual(parse_server("10.0.0.1:11211:1"),
                         ServerSpec("10.0.0.1:11211:1", "10.0.0.1",
                                    "10.0.0.1", 11211, 1))

    def test_other_port_is_in_the_name(self) -> None:
        self.assertEqual(parse_server("127.0.0.1:11212:3"),
                         ServerSpec("127.0.0.1:11212:3", "127.0.0.1:11212",
                                    "127.0.0.1", 11212, 3))

    def test_explicit_name_wins(self) -> None:
        spec = parse_server("127.0.0.1:11212:2 server1")
        self.assertEqual((spec.pname, spec.name, spec.port, spec.weight),
                         ("127.0.0.1:11212:2", "server1", 11212, 2))

    def test_unix_socket_name_keeps_the_colon(self) -> None:
        # twemproxy counts the separator of the absent port: "path:".
        spec = parse_server("/tmp/mc.sock:1")
        self.assertEqual((spec.name, spec.host, spec.port, spec.weight),
                         ("/tmp/mc.sock:", "/tmp/mc.sock", 0, 1))
        self.assertEqual(parse_server("/tmp/mc.sock:2 mc").name, "mc")

    def test_bad_lines(self) -> None:
        for line in ("127.0.0.1:11211", "127.0.0.1:11211:0",
                     "127.0.0.1:11211:-1", "127.0.0.1:0:1",
                     "127.0.0.1:70000:1", "127.0.0.1:port:1",
                     "/tmp/a:b:1", "/tmp/sock"):
            self.assertRaises(ValueError, parse_server, line)


class ContinuumStructureTests(unittest.TestCase):

    def test_points_sorted_and_counted(self) -> None:
        c = Continuum([("a", 1), ("b", 1), ("c", 1)])
        values = [v for v, _ in c.points]
        self.assertEqual(values, sorted(values))
        self.assertEqual(len(c.points), 480)
        for index in range(3):
            self.assertEqual(sum(1 for _, i in c.points if i == index), 160)

    def test_points_are_md5_words_of_name_dash_index(self) -> None:
        c = Continuum([("a", 1), ("b", 1)])
        d = hashlib.md5(b"a-0").digest()
        words = {int.from_bytes(d[i:i + 4], "little") for i in range(0, 16, 4)}
        self.assertTrue(words <= {v for v, i in c.points if i == 0})
        d = hashlib.md5(b"b-159").digest()  # groups run 0..39 only
        self.assertNotIn(int.from_bytes(d[:4], "little"),
                         {v for v, _ in c.points})

    def test_lower_bound_and_wrap_around(self) -> None:
        c = Continuum([("a", 1), ("b", 1), ("c", 1)])
        first_value, first_index = c.points[0]
        last_value, last_index = c.points[-1]
        # A hash equal to a point goes to that point (lower bound).
        for value, index in c.points[::37]:
            self.assertEqual(c.index_for_hash(value), index)
        # Between two points: the upper one.
        v1, _ = c.points[10]
        v2, i2 = c.points[11]
        if v2 - v1 > 1:
            self.assertEqual(c.index_for_hash(v1 + 1), i2)
        # Past the last point: wraps to the first.
        self.assertEqual(c.index_for_hash(last_value), last_index)
        if last_value < 0xFFFFFFFF:
            self.assertEqual(c.index_for_hash(last_value + 1), first_index)
            self.assertEqual(c.index_for_hash(0xFFFFFFFF), first_index)
        self.assertEqual(c.index_for_hash(0), first_index)

    def test_single_server_and_empty_key(self) -> None:
        self.assertEqual(Continuum([("only", 1)]).server_for(b"x"), 0)
        c = Continuum([("a", 1), ("b", 1), ("c", 1)])
        # server_pool_hash: an empty key hashes to 0.
        self.assertEqual(c.key_hash(b""), 0)
        self.assertEqual(c.server_for(b""), c.index_for_hash(0))

    def test_ejected_server_keeps_others_in_place(self) -> None:
        servers = [("a", 1), ("b", 1), ("c", 1)]
        full = Continuum(servers)
        less = Continuum(servers, ejected=[1])
        self.assertEqual({i for _, i in less.points}, {0, 2})
        for n in range(500):
            key = b"key:%d" % n
            before = full.server_for(key)
            after = less.server_for(key)
            self.assertNotEqual(after, 1)
            if before != 1:
                self.assertEqual(after, before, key)

    def test_everything_ejected(self) -> None:
        c = Continuum([("a", 1), ("b", 1)], ejected=[0, 1])
        self.assertRaises(NoServersError, c.server_for, b"k")
        m = Modula([("a", 1), ("b", 1)], ejected=[0, 1])
        self.assertRaises(NoServersError, m.server_for, b"k")

    def test_bad_arguments(self) -> None:
        self.assertRaises(ValueError, Continuum, [])
        self.assertRaises(ValueError, Continuum, [("a", 0)])
        self.assertRaises(ValueError, Continuum, [("a", 1.5)])
        self.assertRaises(ValueError, Continuum, [("a", 1)], ejected=[3])
        self.assertRaises(ValueError, Continuum, [("a", 1)], hash_tag=b"{")
        # "name-index" must fit twemproxy's 86 byte buffer.
        self.assertRaises(ValueError, Continuum, [("x" * 84, 1), ("y", 1)])
        Continuum([("x" * 80, 1), ("y", 1)])

    def test_hash_tag(self) -> None:
        c = Continuum([("a", 1), ("b", 1), ("c", 1)], hash_tag=b"{}")
        self.assertEqual(c.key_hash(b"user:{42}:name"), hash_md5(b"42"))
        self.assertEqual(c.key_hash(b"user:{}:x"), hash_md5(b"user:{}:x"))
        self.assertEqual(c.key_hash(b"user:{42"), hash_md5(b"user:{42"))
        self.assertEqual(c.key_hash(b"}{ab}"), hash_md5(b"ab"))

    def test_modula_slots(self) -> None:
        m = Modula([("a", 1), ("b", 2), ("c", 3)])
        self.assertEqual(m.slots, [0, 1, 1, 2, 2, 2])
        for n in range(50):
            key = b"k%d" % n
            self.assertEqual(m.server_for(key), m.slots[hash_md5(key) % 6])
        self.assertEqual(Modula([("a", 1), ("b", 2)], ejected=[0]).slots,
                         [1, 1])

    def test_twemproxy_server_order(self) -> None:
        # conf_validate_server sorts by string_compare: length, then bytes.
        m = Modula([("zz", 1), ("b", 2), ("aaa", 1), ("a", 1)])
        self.assertEqual(m.twemproxy_order, [3, 1, 0, 2])
        self.assertEqual(m.slots, [3, 1, 1, 0, 2])

    def test_duplicate_names_refused(self) -> None:
        # twemproxy: "has servers with same name".
        self.assertRaises(ValueError, Continuum, [("a", 1), ("a", 2)])
        self.assertRaises(ValueError, Continuum.from_config,
                          ["10.0.0.1:11211:1", "10.0.0.1:11211:2"])

    def test_from_config_uses_twemproxy_names(self) -> None:
        c = Continuum.from_config(["10.0.0.1:11211:1", "10.0.0.2:11212:1"])
        self.assertEqual(c.servers, [(b"10.0.0.1", 1), (b"10.0.0.2:11212", 1)])
        # str and bytes names are the same server.
        b = Continuum([(b"10.0.0.1", 1), ("10.0.0.2:11212", 1)])
        self.assertEqual(b.points, c.points)


# Recorded from nutcracker 0.5.0 (hash: md5) with named servers
# "127.0.0.1:PORT:W NAME": key -> index of the memcached that received it.
_NAMES = ["10.0.0.1", "10.0.0.2:11212", "cache-c"]
_KEYS = [b"foo", b"bar", b"baz", b"hello", b"user:1", b"user:2",
         b"session:abcdef", b"a", b"b", b"c", b"key:0", b"key:1", b"key:2",
         b"key:3", b"key:4", b"key:5", b"key:6", b"key:7", b"key:8",
         b"key:9", b"x" * 250, b"\xc3\xa9t\xc3\xa9", b"user:{42}:name",
         b"user:{42}:mail", b"{7}", b"{}",
         # With weights 5/26/29 these fall in arcs that exist only because
         # C float rounding gives "cache-c" 228 points instead of 232.
         b"float:355", b"float:492", b"float:690"]
RECORDED: Dict[str, List[int]] = {
    "ketama-1-1-1": [0, 1, 0, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 0, 2, 1,
                     1, 1, 0, 1, 1, 0, 0, 1, 1, 1, 1],
    "ketama-5-26-29": [2, 1, 1, 1, 2, 1, 1, 2, 1, 2, 1, 1, 1, 2, 1, 2, 2, 1,
                       1, 1, 1, 1, 1, 0, 2, 1, 1, 1, 1],
    "ketama-tag": [0, 1, 0, 1, 2, 1, 1, 1, 1, 2, 1, 1, 1, 1, 2, 0, 2, 1, 1,
                   1, 0, 1, 1, 1, 1, 1, 1, 1, 1],
    # twemproxy orders servers by name length, then bytes: "cache-c",
    # "10.0.0.1", "10.0.0.2:11212" -> slots [2, 2, 2, 0, 1, 1], not
    # [0, 1, 1, 2, 2, 2].
    "modula-1-2-3": [1, 1, 1, 0, 0, 0, 1, 2, 1, 1, 2, 2, 2, 1, 1, 1, 2, 2,
                     2, 2, 1, 2, 2, 2, 1, 2, 1, 0, 2],
}


class RecordedVectorTests(unittest.TestCase):
    """Known answers of a real nutcracker, for fixed server names."""

    def _check(self, dist: object, recorded: List[int]) -> None:
        got = [dist.server_for(k) for k in _KEYS]  # type: ignore[attr-defined]
        self.assertEqual(list(zip(_KEYS, got)), list(zip(_KEYS, recorded)))

    def test_ketama_equal_weights(self) -> None:
        self._check(Continuum([(n, 1) for n in _NAMES]),
                    RECORDED["ketama-1-1-1"])

    def test_ketama_weights_5_26_29(self) -> None:
        self._check(Continuum(list(zip(_NAMES, (5, 26, 29)))),
                    RECORDED["ketama-5-26-29"])

    def test_ketama_hash_tag(self) -> None:
        self._check(Continuum([(n, 1) for n in _NAMES], hash_tag=b"{}"),
                    RECORDED["ketama-tag"])

    def test_modula_weights_1_2_3(self) -> None:
        self._check(Modula(list(zip(_NAMES, (1, 2, 3)))),
                    RECORDED["modula-1-2-3"])


# --- integration with real memcached + nutcracker ------------------------

def _which(binary: str) -> Optional[str]:
    """PATH lookup, plus the sbin directories Debian puts nutcracker in."""
    path = os.environ.get("PATH", os.defpath)
    return shutil.which(binary, path=os.pathsep.join(
        [path, "/usr/local/sbin", "/usr/sbin", "/sbin"]))


class _AsciiClient:
    """A tiny blocking memcached ASCII client (set / multi-get only)."""

    def __init__(self, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port),
                                             timeout=timeout)
        self.buf = b""

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        chunk = self.sock.recv(65536)
        if not chunk:
            raise ConnectionError("server closed the connection")
        self.buf += chunk

    def _line(self) -> bytes:
        while b"\r\n" not in self.buf:
            self._fill()
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def _exact(self, n: int) -> bytes:
        while len(self.buf) < n:
            self._fill()
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def set(self, key: bytes, value: bytes) -> bytes:
        self.sock.sendall(b"set %s 0 0 %d\r\n%s\r\n"
                          % (key, len(value), value))
        return self._line()

    def get_multi(self, keys: Sequence[bytes]) -> Dict[bytes, bytes]:
        found: Dict[bytes, bytes] = {}
        for start in range(0, len(keys), 50):
            self.sock.sendall(b"get " + b" ".join(keys[start:start + 50])
                              + b"\r\n")
            while True:
                line = self._line()
                if line == b"END":
                    break
                parts = line.split()
                if parts[0] != b"VALUE":
                    raise AssertionError("unexpected reply %r" % (line,))
                found[parts[1]] = self._exact(int(parts[3]))
                if self._exact(2) != b"\r\n":
                    raise AssertionError("bad data block for %r" % parts[1])
        return found


class _ProcessMixin:
    """Start real memcached / nutcracker processes; stop them by pid."""

    def _skip_unless_installed(self) -> None:
        missing = [b for b in ("memcached", "nutcracker")
                   if _which(b) is None]
        if missing:
            raise unittest.SkipTest(
                "needs %s on PATH or in /usr/sbin (CI installs Debian's "
                "memcached and nutcracker packages)" % " and ".join(missing))

    def _tmpdir(self) -> str:
        path = tempfile.mkdtemp(prefix="txcb-ketama-")
        self.addCleanup(  # type: ignore[attr-defined]
            shutil.rmtree, path, True)
        return path

    def _stop_all(self, procs: List[subprocess.Popen]) -> None:
        """SIGTERM every process by pid, then reap them (SIGKILL if stuck).

        Signalling all first matters: memcached takes about a second to
        exit, and the waits then overlap."""
        for proc in procs:
            if proc.poll() is None:
                proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=5)

    def _spawn(self, argv: List[str], log: str) -> subprocess.Popen:
        procs: Optional[List[subprocess.Popen]] = getattr(self, "_procs",
                                                          None)
        if procs is None:
            procs = []
            self._procs = procs
            self.addCleanup(  # type: ignore[attr-defined]
                self._stop_all, procs)
        with open(log, "wb") as out:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    def _wait_port(self, port: int, proc: subprocess.Popen, log: str,
                   timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                with open(log, "rb") as f:
                    raise AssertionError("%r exited with %s: %r" % (
                        proc.args, proc.returncode, f.read()[-2000:]))
            try:
                socket.create_connection(("127.0.0.1", port), 0.5).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    raise AssertionError("port %d not listening after %ss"
                                         % (port, timeout))
                time.sleep(0.05)

    def start_memcached(self, tmp: str, index: int) -> int:
        """Start one memcached on a free loopback port; return the port."""
        for _attempt in range(5):
            port = _free_port()
            argv = [str(_which("memcached")), "-U", "0", "-l", "127.0.0.1",
                    "-p", str(port)]
            if os.geteuid() == 0:  # memcached refuses root without -u
                argv += ["-u", pwd.getpwuid(0).pw_name]
            log = os.path.join(tmp, "memcached-%d.log" % index)
            proc = self._spawn(argv, log)
            try:
                self._wait_port(port, proc, log)
                return port
            except AssertionError:
                if proc.poll() is None:  # someone else took the port?
                    raise
        raise AssertionError("could not start memcached")

    def start_nutcracker(self, tmp: str, servers: Iterable[str],
                         distribution: str,
                         hash_tag: Optional[str] = None) -> int:
        """Start nutcracker in front of ``servers``; return its port."""
        for attempt in range(5):
            port = _free_port()
            stats = _free_port()
            conf = os.path.join(tmp, "nutcracker-%d.yml" % attempt)
            with open(conf, "w") as f:
                f.write("pool:\n"
                        "  listen: 127.0.0.1:%d\n"
                        "  hash: md5\n"
                        "  distribution: %s\n"
                        "  auto_eject_hosts: false\n"
                        "  timeout: 5000\n" % (port, distribution))
                if hash_tag:
                    f.write('  hash_tag: "%s"\n' % hash_tag)
                f.write("  servers:\n")
                for line in servers:
                    f.write("    - %s\n" % line)
            log = os.path.join(tmp, "nutcracker-%d.log" % attempt)
            proc = self._spawn([str(_which("nutcracker")), "-c", conf,
                                "-s", str(stats),
                                "-a", "127.0.0.1", "-v", "4"], log)
            try:
                self._wait_port(port, proc, log)
                return port
            except AssertionError:
                if proc.poll() is None:
                    raise
        raise AssertionError("could not start nutcracker")


class NutcrackerAgreementTests(_ProcessMixin, unittest.TestCase):
    """
    1,000 keys written through a real nutcracker land, on the real
    memcached servers behind it, exactly where our distribution says.
    """

    NKEYS = 1000

    def setUp(self) -> None:
        self._skip_unless_installed()
        self.tmp = self._tmpdir()
        ports = [self.start_memcached(self.tmp, i) for i in range(3)]
        # List the servers in the reverse of twemproxy's own name order
        # (length, then bytes), so that its internal order never matches
        # the config order by luck.
        self.ports = sorted(ports, key=lambda p: (len(str(p)), str(p)),
                            reverse=True)

    def where_are_the_keys(self, proxy_port: int,
                           keys: List[bytes]) -> Dict[bytes, List[int]]:
        """Write ``keys`` via the proxy; -> key: [indexes holding it]."""
        client = _AsciiClient(proxy_port)
        try:
            for key in keys:
                reply = client.set(key, b"value-of-" + key)
                self.assertEqual(reply, b"STORED", key)
        finally:
            client.close()
        holders: Dict[bytes, List[int]] = {key: [] for key in keys}
        for index, port in enumerate(self.ports):
            direct = _AsciiClient(port)
            try:
                found = direct.get_multi(keys)
            finally:
                direct.close()
            for key, value in found.items():
                self.assertEqual(value, b"value-of-" + key)
                holders[key].append(index)
        return holders

    def check(self, weights: Sequence[int], distribution: str,
              dist_class: Any, hash_tag: Optional[str] = None,
              keys: Optional[List[bytes]] = None) -> None:
        lines = ["127.0.0.1:%d:%d" % (port, w)
                 for port, w in zip(self.ports, weights)]
        proxy = self.start_nutcracker(self.tmp, lines, distribution, hash_tag)
        ours = dist_class.from_config(
            lines, hash_tag=hash_tag.encode() if hash_tag else None)
        if keys is None:
            keys = [b"key:%d" % n for n in range(self.NKEYS)]
        holders = self.where_are_the_keys(proxy, keys)
        wrong = [(key, ours.server_for(key), where)
                 for key, where in holders.items()
                 if where != [ours.server_for(key)]]
        self.assertEqual(wrong[:20], [], "%d of %d keys misplaced"
                         % (len(wrong), len(keys)))
        # The test means something only if every server got keys.
        used = {where[0] for where in holders.values()}
        self.assertEqual(used, {0, 1, 2})

    def test_ketama_equal_weights(self) -> None:
        self.check((1, 1, 1), "ketama", Continuum)

    def test_ketama_unequal_weights(self) -> None:
        # 29/60 of 480 points is 232 in exact arithmetic but 228 in C
        # float: this exercises the single-precision emulation.
        self.check((5, 26, 29), "ketama", Continuum)

    def test_ketama_weights_1_2_3(self) -> None:
        self.check((1, 2, 3), "ketama", Continuum)

    def test_ketama_hash_tag(self) -> None:
        keys = [b"user:{%d}:field%d" % (n // 3, n % 3) for n in range(300)]
        self.check((1, 1, 1), "ketama", Continuum, hash_tag="{}", keys=keys)

    def test_modula_unequal_weights(self) -> None:
        self.check((1, 2, 3), "modula", Modula)
