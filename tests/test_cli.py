"""
The installed ``txcb`` console script against a real ``twistd txcb`` on
loopback: every subcommand, its output and exit status, and a load then dump
round trip of 10,000 items.
"""

import atexit
import base64
import fcntl
import json
import os
import pty
import random
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import termios
import time

from twisted.trial.unittest import SynchronousTestCase

from txcb.service import tap
from txcb.client.blocking import Bucket
from txcb.cli import EXIT

from tests.support import ROOT, temp_path
from tests.support.procs import die_with_parent, free_port

TIMEOUT = 30


def txcb_script():
    """The installed console script (next to this Python, else on $PATH)."""
    here = os.path.join(os.path.dirname(sys.executable), "txcb")
    if os.path.exists(here):
        return here
    found = shutil.which("txcb")
    assert found, "the txcb console script is not installed: pip install -e ."
    return found


class _Server:
    """One `twistd -n txcb` for the whole module (started on first use)."""

    proc = None
    endpoint = None
    workdir = None

    @classmethod
    def get(cls):
        if cls.proc is None or cls.proc.poll() is not None:
            cls.start()
        return cls.endpoint

    @classmethod
    def start(cls):
        port = free_port()
        # Not under _trial_temp: a concurrent trial run would delete it.
        workdir = cls.workdir = tempfile.mkdtemp(prefix="txcb-cli-twistd-")
        args = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
                "-n", "--pidfile=", "--logfile", os.path.join(workdir, "twistd.log"),
                "txcb", "--port", "tcp:%d:interface=127.0.0.1" % port]
        if "--ephemeral" in str(tap.Options()):
            args.append("--ephemeral")
        cls.proc = subprocess.Popen(args, cwd=workdir, env=dict(os.environ, PYTHONPATH=ROOT),
                                    stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                    preexec_fn=die_with_parent)
        cls.endpoint = "tcp:127.0.0.1:%d" % port
        deadline = time.monotonic() + 20
        while True:
            try:
                Bucket(cls.endpoint, timeout=1).close()
                return
            except Exception:
                if time.monotonic() > deadline or cls.proc.poll() is not None:
                    cls.stop()
                    with open(os.path.join(workdir, "twistd.log")) as f:
                        raise AssertionError("twistd txcb did not start:\n" + f.read())
                time.sleep(0.05)

    @classmethod
    def stop(cls):
        proc, cls.proc = cls.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        workdir, cls.workdir = cls.workdir, None
        if workdir is not None:
            shutil.rmtree(workdir, ignore_errors=True)


atexit.register(_Server.stop)


class CLITestCase(SynchronousTestCase):
    def setUp(self):
        self.endpoint = _Server.get()
        self.p = self.id().rsplit(".", 1)[-1] + ":"  # a key prefix of this test's own

    def run_txcb(self, *args, input=None, endpoint=True, env=None):
        argv = [txcb_script()] + ([] if not endpoint else ["-e", self.endpoint])
        argv += [str(a) for a in args]
        out = subprocess.run(argv, input=input, capture_output=True, timeout=TIMEOUT,
                             env=dict(os.environ, PYTHONPATH=ROOT, **(env or {})))
        self.assertNotIn(b"Traceback", out.stderr, out.stderr.decode())
        return out

    def ok(self, *args, **kwargs):
        out = self.run_txcb(*args, **kwargs)
        self.assertEqual(out.returncode, 0, out.stderr.decode())
        return out.stdout.decode("utf-8")

    def fails(self, status, *args, **kwargs):
        """Run, expect exit ``status`` and one line on stderr; returns that line."""
        out = self.run_txcb(*args, **kwargs)
        self.assertEqual(out.returncode, EXIT[status], (out.stdout, out.stderr))
        lines = out.stderr.decode("utf-8").splitlines()
        self.assertEqual(len(lines), 1, lines)
        return lines[0]


class HelpTests(CLITestCase):
    COMMANDS = ["get", "set", "insert", "replace", "rm", "counter", "touch", "stats", "ping",
                "load", "dump"]

    def test_help_for_every_subcommand(self):
        text = self.ok("--help", endpoint=False)
        for name in self.COMMANDS:
            self.assertIn(name, text)
        self.assertIn("exit status", text)
        for name in self.COMMANDS:
            text = self.ok(name, "--help", endpoint=False)
            self.assertTrue(text.startswith("usage: txcb %s" % (name,)), text)
            self.assertIn("--endpoint", text)

    def test_usage_errors_exit_2(self):
        out = self.run_txcb("get", endpoint=False)
        self.assertEqual(out.returncode, 2)
        self.assertIn(b"usage:", out.stderr)
        out = self.run_txcb("frobnicate", endpoint=False)
        self.assertEqual(out.returncode, 2)
        out = self.run_txcb("touch", "k")  # --ttl is required
        self.assertEqual(out.returncode, 2)


class KeyValueTests(CLITestCase):
    def test_set_and_get_every_format(self):
        p = self.p
        self.assertEqual(self.ok("set", p + "j", '{"a": [1, 2]}'), "")
        self.ok("set", p + "t", "plain text é")
        self.ok("set", p + "n", "42")
        self.ok("set", p + "u", "42", "--format", "utf8")
        self.ok("set", p + "b", "-", "--format", "bytes", input=b"\x00\xff raw")
        self.assertEqual(self.ok("get", p + "j"), '{"a": [1, 2]}\n')
        self.assertEqual(self.ok("get", p + "t", p + "n", p + "u"), "plain text é\n42\n42\n")
        out = self.run_txcb("get", p + "b")
        self.assertEqual(out.stdout, b"\x00\xff raw\n")
        rows = [json.loads(line) for line in self.ok("get", "--json", p + "n", p + "u",
                                                     p + "b").splitlines()]
        self.assertEqual([(r["key"], r["value"], r.get("format")) for r in rows],
                         [(p + "n", 42, None), (p + "u", "42", None),
                          (p + "b", base64.b64encode(b"\x00\xff raw").decode(), "bytes")])
        self.assertTrue(all(isinstance(r["cas"], int) and r["cas"] for r in rows))
        out = self.run_txcb("get", "-v", p + "t")
        self.assertRegex(out.stderr.decode(), r'^"%s" cas=0x[0-9a-f]+ flags=0x4000004 '
                                              r'size=13\n$' % (p + "t",))
        line = self.fails("usage", "set", p + "x", "not json", "--format", "json")
        self.assertIn("not valid JSON", line)

    def test_messages_and_quiet(self):
        out = self.run_txcb("set", self.p + "k", "v")
        self.assertRegex(out.stderr.decode(), r'^stored "%sk" cas=0x[0-9a-f]+\n$' % self.p)
        out = self.run_txcb("-q", "set", self.p + "k", "v")
        self.assertEqual((out.returncode, out.stderr), (0, b""))
        out = self.run_txcb("set", self.p + "k", "v", "--quiet")  # options after the command
        self.assertEqual((out.returncode, out.stderr), (0, b""))

    def test_not_found_exists_and_cas(self):
        p = self.p
        line = self.fails("not_found", "get", p + "missing")
        self.assertEqual(line, 'txcb get: not found: no such key (key "%smissing")' % p)
        self.ok("insert", p + "k", "1")
        self.assertIn("exists", self.fails("exists", "insert", p + "k", "2"))
        self.fails("not_found", "replace", p + "nope", "2")
        cas = json.loads(self.ok("get", "--json", p + "k"))["cas"]
        self.fails("exists", "replace", p + "k", "3", "--cas", cas + 1)
        self.ok("replace", p + "k", "3", "--cas", hex(cas))
        self.fails("exists", "set", p + "k", "4", "--cas", cas)
        self.assertEqual(self.ok("get", p + "k"), "3\n")
        # Several keys: the found ones are printed, the missing one reported.
        out = self.run_txcb("get", p + "k", p + "missing")
        self.assertEqual((out.returncode, out.stdout), (EXIT["not_found"], b"3\n"))

    def test_rm(self):
        p = self.p
        self.ok("set", p + "a", "1")
        self.ok("set", p + "b", "1")
        out = self.run_txcb("rm", p + "a", p + "zz", p + "b")
        self.assertEqual(out.returncode, EXIT["not_found"])
        self.assertEqual(out.stderr.decode().count("removed"), 2)
        self.fails("not_found", "get", p + "a")
        self.fails("not_found", "get", p + "b")

    def test_counter(self):
        p = self.p
        self.fails("not_found", "counter", p + "c")
        self.assertEqual(self.ok("counter", p + "c", "--initial", "10"), "10\n")
        self.assertEqual(self.ok("counter", p + "c", "--delta", "5"), "15\n")
        self.assertEqual(self.ok("counter", p + "c", "--delta", "-20"), "0\n")
        self.ok("set", p + "t", "abc")
        self.assertIn("bad value", self.fails("bad_value", "counter", p + "t"))

    def test_touch(self):
        p = self.p
        self.fails("not_found", "touch", p + "k", "--ttl", "100")
        self.ok("set", p + "k", "v")
        before = int(time.time())
        self.ok("touch", p + "k", "--ttl", "100")
        row = json.loads(self.ok("dump", "--prefix", p + "k"))
        self.assertTrue(before + 99 <= row["ttl"] <= int(time.time()) + 101, row)

    def test_stats_and_ping(self):
        text = self.ok("stats")
        names = [line.split()[0] for line in text.splitlines()]
        self.assertEqual(names, sorted(names))
        for name in ("items", "bytes", "hits", "misses", "connections", "op_get"):
            self.assertIn(name, names)
        self.assertEqual(sorted(json.loads(self.ok("stats", "items", "hits", "--json"))),
                         ["hits", "items"])
        self.assertIn("no such statistic", self.fails("usage", "stats", "nope"))
        lines = self.ok("ping", "-c", "2", "-i", "0").splitlines()
        self.assertEqual(len(lines), 3)
        self.assertRegex(lines[0], r" seq=1 time=\d+\.\d{3} ms$")
        self.assertRegex(lines[2], r"^2 pings: min/avg/max = [\d.]+/[\d.]+/[\d.]+ ms$")

    def test_endpoint_from_the_environment(self):
        self.ok("set", self.p + "k", "env", endpoint=False, env={"TXCB_ENDPOINT": self.endpoint})
        self.assertEqual(self.ok("get", self.p + "k"), "env\n")


class ConnectionErrorTests(CLITestCase):
    def test_connection_failure(self):
        port = free_port()
        line = self.fails("connect", "-e", "tcp:127.0.0.1:%d" % port, "get", "k",
                          endpoint=False)
        self.assertIn("connection failed", line)
        self.fails("connect", "-e", str(port), "stats", endpoint=False)

    def test_endpoints_the_tool_cannot_use(self):
        line = self.fails("usage", "-e", "ssl:127.0.0.1:1", "ping", endpoint=False)
        self.assertIn("tcp:, tcp6: and unix:", line)
        self.fails("usage", "-e", "tcp:nohost", "ping", endpoint=False)


def sample_items(n, prefix):
    """n items of every kind the JSON lines format has, in a random order."""
    now = int(time.time())
    items = []
    for i in range(n):
        key = "%s%05d" % (prefix, i)
        kind = i % 7
        if kind == 0:
            o = {"key": key, "value": {"i": i, "tags": ["a", "b"], "f": i / 8}}
        elif kind == 1:
            o = {"key": key, "value": "text %d é ✓" % i}
        elif kind == 2:
            o = {"key": key, "value": "a JSON string %d" % i, "format": "json"}
        elif kind == 3:
            o = {"key": key, "value": base64.b64encode(os.urandom(i % 40)).decode(),
                 "format": "bytes"}
        elif kind == 4:
            o = {"key": key, "value": i, "ttl": now + 3600 + i}
        elif kind == 5:
            o = {"key": key, "value": base64.b64encode(b"foreign %d" % i).decode(),
                 "flags": 0xDEAD00 + i}
        else:
            o = {"key": key, "value": [i, None, True, {"nested": "x" * (i % 100)}]}
        items.append(o)
    random.Random(7).shuffle(items)
    return items


class LoadDumpTests(CLITestCase):
    def write_lines(self, items, extra=()):
        path = temp_path(self)
        with open(path, "w", encoding="utf-8") as f:
            for o in items:
                f.write(json.dumps(o, ensure_ascii=False) + "\n")
            for line in extra:
                f.write(line + "\n")
        return path

    def test_load_then_dump_10000_items_round_trip(self):
        items = sample_items(10000, self.p)
        path = self.write_lines(items)
        out = self.run_txcb("load", path)
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stderr.decode(),
                         r"^loaded 10000 items in [\d.]+s \(\d+ items/s\)\n$")
        dumped = temp_path(self)
        out = self.run_txcb("dump", "--prefix", self.p, "-o", dumped, "--batch-size", "700")
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertRegex(out.stderr.decode(),
                         r"^dumped 10000 items in [\d.]+s \(\d+ items/s\)\n$")
        with open(dumped, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
        self.assertEqual([r["key"] for r in rows], sorted(o["key"] for o in items))
        self.assertEqual(sorted(rows, key=lambda r: r["key"]),
                         sorted(items, key=lambda o: o["key"]))
        # Standard output carries the same lines, and a second load of the dump
        # (standard input) stores the same content again.
        stdout = self.ok("dump", "--prefix", self.p)
        with open(dumped, encoding="utf-8") as f:
            self.assertEqual(stdout, f.read())
        out = self.run_txcb("load", "-", "--mode", "replace", input=stdout.encode("utf-8"))
        self.assertEqual(out.returncode, 0, out.stderr)
        self.assertEqual(self.ok("dump", "--prefix", self.p), stdout)

    def test_dump_ranges_and_ids_only(self):
        p = self.p
        self.ok("load", "-", input="".join(
            json.dumps({"key": p + k, "value": k}) + "\n" for k in ["a", "b", "c", "d"]
        ).encode())
        keys = lambda text: [json.loads(line)["key"] for line in text.splitlines()]
        self.assertEqual(keys(self.ok("dump", "--start", p + "b", "--end", p + "d")),
                         [p + "b", p + "c"])
        text = self.ok("dump", "--prefix", p, "--ids-only", "--batch-size", "1")
        self.assertEqual([json.loads(line) for line in text.splitlines()],
                         [{"key": p + k} for k in "abcd"])

    def test_dump_into_a_closed_pipe_stops_quietly(self):
        self.ok("load", "-", input="".join(json.dumps({"key": "%s%04d" % (self.p, i),
                                                       "value": i}) + "\n"
                                           for i in range(3000)).encode())
        script = "%s -e %s dump --prefix %s --batch-size 100 | head -1" % (
            txcb_script(), self.endpoint, self.p)
        out = subprocess.run(["bash", "-c", "set -o pipefail; " + script],
                             capture_output=True, timeout=TIMEOUT)
        self.assertEqual(json.loads(out.stdout)["key"], self.p + "0000")
        self.assertNotIn(b"Traceback", out.stderr)
        self.assertEqual(out.returncode, 141)

    def test_bad_lines(self):
        p = self.p
        path = self.write_lines([{"key": p + "1", "value": 1}],
                                ["not json", json.dumps({"value": 1}),
                                 json.dumps({"key": p + "2", "value": "x", "format": "bytes"}),
                                 json.dumps({"key": p + "3", "value": 3})])
        line = self.fails("usage", "load", path)
        self.assertIn(":2: not JSON", line)
        self.assertEqual(self.ok("get", p + "1"), "1\n")  # lines before it are stored
        self.fails("not_found", "get", p + "3")
        out = self.run_txcb("load", path, "--keep-going")
        self.assertEqual(out.returncode, EXIT["usage"])
        errors = out.stderr.decode().splitlines()
        self.assertEqual([e.split(": ", 2)[1].rsplit(":", 1)[1] for e in errors[:3]],
                         ["2", "3", "4"])
        self.assertIn("loaded 2 items", errors[3])
        self.assertEqual(self.ok("get", p + "3"), "3\n")
        self.fails("usage", "load", temp_path(self))  # no such file

    def test_load_insert_reports_existing_keys(self):
        p = self.p
        path = self.write_lines([{"key": p + k, "value": k} for k in "abc"])
        self.ok("set", p + "b", "old")
        out = self.run_txcb("load", path, "--mode", "insert", "--keep-going")
        self.assertEqual(out.returncode, EXIT["exists"])
        self.assertIn("exists", out.stderr.decode().splitlines()[0])
        self.assertEqual(self.ok("get", p + "a", p + "b", p + "c"), "a\nold\nc\n")

    def test_progress_bar_only_on_a_terminal(self):
        path = self.write_lines(sample_items(2000, self.p))
        out = self.run_txcb("load", path)  # stderr is a pipe: no bar
        self.assertNotIn(b"\r", out.stderr)
        out = self.run_txcb("load", path, "--progress")
        self.assertIn(b"load:", out.stderr)
        # stderr on a terminal: the bar is drawn there.
        master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
        try:
            proc = subprocess.run([txcb_script(), "-e", self.endpoint, "dump", "--prefix",
                                   self.p], stdout=subprocess.PIPE, stderr=slave,
                                  timeout=TIMEOUT, env=dict(os.environ, PYTHONPATH=ROOT))
            os.close(slave)
            slave = None
            seen = b""
            while True:
                try:
                    chunk = os.read(master, 65536)
                except OSError:
                    break
                if not chunk:
                    break
                seen += chunk
        finally:
            if slave is not None:
                os.close(slave)
            os.close(master)
        self.assertEqual(proc.returncode, 0)
        self.assertEqual(len(proc.stdout.splitlines()), 2000)
        self.assertIn(b"dump:", seen)
        self.assertIn(b"dumped 2000 items", seen)
