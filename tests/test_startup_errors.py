"""
Issue 13, "start-up errors are one line, not a traceback": each mistake a
user can make starting ``twistd txcb`` prints one line naming the option, the
value and what to do, and twistd exits non-zero.  Real twistd processes.
"""

import fcntl
import os
import shutil
import socket
import subprocess
import sys
import tempfile
from unittest import skipIf

from twisted.trial import unittest

from txcb import __version__
from txcb.service.listen import ENDPOINT_HELP

try:
    import OpenSSL  # noqa: F401 (ssl: endpoints need it)
    NO_TLS = None
except ImportError:
    NO_TLS = "pyOpenSSL is not installed"

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TWISTD = [sys.executable, "-c", "from twisted.scripts.twistd import run; run()"]


class StartupErrorTests(unittest.TestCase):
    """``twistd -n txcb ...`` that cannot start: one line, status 1, nothing left."""

    def setUp(self):
        self.workdir = tempfile.mkdtemp(prefix="txcb-startup-")
        self.addCleanup(shutil.rmtree, self.workdir, True)

    def twistd(self, *args, daemon=False, timeout=30):
        """Run twistd txcb in the temp dir: (exit status, stdout + stderr)."""
        env = dict(os.environ, PYTHONPATH=ROOT)
        argv = TWISTD + ([] if daemon else ["-n"]) + ["txcb"] + list(args)
        proc = subprocess.run(argv, cwd=self.workdir, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, timeout=timeout)
        return proc.returncode, proc.stdout.decode("utf-8", "replace")

    def assertOneLine(self, output, line):
        """``line`` is one whole line of the output (after any log prefix)."""
        self.assertNotIn("Traceback", output)
        found = [got for got in output.splitlines() if got.endswith(line)]
        self.assertEqual(len(found), 1, output)
        # Only a log prefix (time, [namespace#level]) may come before it.
        prefix = found[0][:-len(line)]
        self.assertTrue(prefix == "" or prefix.endswith("#critical] "), found[0])

    def busy_port(self):
        """A port on 127.0.0.1 something already listens on."""
        s = socket.socket()
        self.addCleanup(s.close)
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        return s.getsockname()[1]

    def assertFailsWith(self, line, *args):
        status, output = self.twistd(*args)
        self.assertEqual(status, 1, output)
        self.assertOneLine(output, line)
        return output

    # -- endpoint strings: usage errors, before anything starts ---------------

    def test_bad_port_endpoint_is_one_line(self):
        out = self.assertFailsWith(
            "txcb: bad --port bogus:1: Unknown endpoint type: 'bogus'; " + ENDPOINT_HELP,
            "-p", "bogus:1", "--ephemeral")
        self.assertNotIn("Usage:", out)

    def test_bad_memcached_endpoint_is_one_line(self):
        self.assertFailsWith(
            "txcb: bad --memcached bogus:1: Unknown endpoint type: 'bogus'; " + ENDPOINT_HELP,
            "-p", "0", "--memcached", "bogus:1", "--ephemeral")

    def test_bad_metrics_endpoint_is_one_line(self):
        self.assertFailsWith(
            "txcb: bad --metrics bogus:1: Unknown endpoint type: 'bogus'; " + ENDPOINT_HELP,
            "-p", "0", "--metrics", "bogus:1", "--ephemeral")

    def test_bad_endpoint_with_a_persistent_bucket_exits(self):
        """It used to hang: the traceback came after the bucket's threads started."""
        self.assertFailsWith(
            "txcb: bad --port bogus:1: Unknown endpoint type: 'bogus'; " + ENDPOINT_HELP,
            "-p", "bogus:1", "--data-dir", os.path.join(self.workdir, "data"))

    @skipIf(NO_TLS, NO_TLS)
    def test_missing_ssl_key_file_is_one_line(self):
        key = os.path.join(self.workdir, "missing.pem")
        self.assertFailsWith(
            "txcb: bad --port ssl:0:privateKey=%s: %s: no such file or directory; %s"
            % (key, key, ENDPOINT_HELP), "-p", "ssl:0:privateKey=" + key, "--ephemeral")

    @skipIf(NO_TLS, NO_TLS)
    def test_bad_ssl_key_file_is_one_line(self):
        key = os.path.join(self.workdir, "bad.pem")
        with open(key, "w") as f:
            f.write("not a key\n")
        status, output = self.twistd("-p", "ssl:0:privateKey=" + key, "--ephemeral")
        self.assertEqual(status, 1, output)
        self.assertNotIn("Traceback", output)
        self.assertEqual(len(output.strip().splitlines()), 1, output)
        self.assertTrue(output.startswith("txcb: bad --port ssl:0:privateKey=%s: " % key))
        self.assertTrue(output.strip().endswith(ENDPOINT_HELP), output)

    def test_ssl_endpoint_without_tls_support_is_one_line(self):
        # As on PyPy, or after a bare `pip install txcb`: no pyOpenSSL.
        blocked = ["-c", "import sys; sys.modules['OpenSSL'] = None; "
                   "from twisted.scripts.twistd import run; run()"]
        self.patch(sys.modules[__name__], "TWISTD", [sys.executable] + blocked)
        status, output = self.twistd("-p", "ssl:0:privateKey=key.pem", "--ephemeral")
        self.assertEqual(status, 1, output)
        self.assertOneLine(output, "txcb: bad --port ssl:0:privateKey=key.pem: TLS support is "
                           "not installed; pip install 'txcb[tls]'; " + ENDPOINT_HELP)

    def test_usage_error_is_one_line_not_the_usage_text(self):
        out = self.assertFailsWith("txcb: --max-value-size must be positive",
                                   "--max-value-size", "0")
        self.assertNotIn("Usage:", out)

    # -- listening -----------------------------------------------------------

    def test_port_in_use_is_one_line(self):
        port = self.busy_port()
        data = os.path.join(self.workdir, "data")
        self.assertFailsWith(
            "txcb: cannot listen on tcp:%d:interface=127.0.0.1 (--port): address already in "
            "use; stop the program listening there or choose another --port" % port,
            "-p", str(port), "--data-dir", data)
        # The bucket that had started was closed: unlocked, and no thread kept
        # the process alive (twistd returned within the timeout).
        fd = os.open(os.path.join(data, "txcb.lock"), os.O_RDWR)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)

    def test_memcached_port_in_use_is_one_line(self):
        port = self.busy_port()
        self.assertFailsWith(
            "txcb: cannot listen on tcp:%d:interface=127.0.0.1 (--memcached): address "
            "already in use; stop the program listening there or choose another --memcached"
            % port, "-p", "0", "--memcached", str(port), "--ephemeral")

    def test_metrics_port_in_use_is_one_line(self):
        port = self.busy_port()
        self.assertFailsWith(
            "txcb: cannot listen on tcp:%d:interface=127.0.0.1 (--metrics): address "
            "already in use; stop the program listening there or choose another --metrics"
            % port, "-p", "0", "--metrics", str(port), "--ephemeral")

    def test_unix_socket_in_missing_directory_is_one_line(self):
        path = os.path.join(self.workdir, "no", "such", "txcb.sock")
        self.assertFailsWith(
            "txcb: cannot listen on unix:%s (--port): no such directory; create the "
            "socket's directory first" % path, "-p", "unix:" + path, "--ephemeral")

    def test_port_out_of_range_is_one_line(self):
        self.assertFailsWith(
            "txcb: cannot listen on tcp:99999 (--port): port must be 0-65535",
            "-p", "tcp:99999", "--ephemeral")

    def test_failed_start_leaves_no_pid_file(self):
        port = self.busy_port()
        status, output = self.twistd("-p", str(port), "--ephemeral")
        self.assertEqual(status, 1, output)
        self.assertFalse(os.path.exists(os.path.join(self.workdir, "twistd.pid")))

    def test_daemon_port_in_use_is_one_line_in_the_log(self):
        port = self.busy_port()
        status, output = self.twistd("-p", str(port), "--ephemeral", daemon=True)
        self.assertEqual(status, 1, output)
        self.assertIn("cannot listen on tcp:%d" % port, output)  # twistd's parent says so
        with open(os.path.join(self.workdir, "twistd.log")) as f:
            self.assertOneLine(f.read(), "txcb: cannot listen on tcp:%d:interface=127.0.0.1 "
                               "(--port): address already in use; stop the program "
                               "listening there or choose another --port" % port)

    # -- the data dir ----------------------------------------------------------

    def test_locked_data_dir_is_one_line(self):
        data = os.path.join(self.workdir, "data")
        os.mkdir(data)
        fd = os.open(os.path.join(data, "txcb.lock"), os.O_RDWR | os.O_CREAT)
        self.addCleanup(os.close, fd)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.write(fd, b"4242\n")
        self.assertFailsWith(
            "txcb: cannot start the bucket in --data-dir %s: data dir %s is in use by pid "
            "4242 (%s is locked); refusing to start; stop the txcb using it or choose "
            "another --data-dir" % (data, data, os.path.join(data, "txcb.lock")),
            "-p", "0", "--data-dir", data)

    def test_corrupt_data_file_is_one_line(self):
        data = os.path.join(self.workdir, "data")
        os.mkdir(data)
        path = os.path.join(data, "default.sqlite3")
        with open(path, "wb") as f:
            f.write(b"not a database " * 500)
        self.assertFailsWith(
            "txcb: cannot start the bucket in --data-dir %s: cannot use the data file %s: "
            "file is not a database (DatabaseError); it is left as it is; move the data "
            "file aside (txcb then starts empty) or restore a backup, or choose another "
            "--data-dir" % (data, path), "-p", "0", "--data-dir", data)
        with open(path, "rb") as f:
            self.assertEqual(f.read(), b"not a database " * 500)

    # -- the auth file ---------------------------------------------------------

    def test_unreadable_auth_file_is_one_line(self):
        path = os.path.join(self.workdir, "missing.auth")
        self.assertFailsWith(
            "txcb: cannot read --auth-file %s: no such file or directory; give a readable "
            "file of user:password lines" % path,
            "-p", "0", "--auth-file", path, "--ephemeral")

    def test_auth_file_that_is_a_directory_is_one_line(self):
        self.assertFailsWith(
            "txcb: cannot read --auth-file %s: is a directory; give a readable file of "
            "user:password lines" % self.workdir,
            "-p", "0", "--auth-file", self.workdir, "--ephemeral")

    def test_malformed_auth_file_is_one_line_without_passwords(self):
        path = os.path.join(self.workdir, "bad.auth")
        with open(path, "w") as f:
            f.write("alice:first-s3cret\nbob-second-s3cret\n")
        out = self.assertFailsWith(
            "txcb: bad --auth-file: %s line 2: expected user:password; write one "
            "user:password a line" % path, "-p", "0", "--auth-file", path, "--ephemeral")
        self.assertNotIn("s3cret", out)

    # -- versions ------------------------------------------------------------------

    def test_twistd_txcb_version_names_txcb(self):
        status, output = self.twistd("--version")
        self.assertEqual(status, 0, output)
        self.assertIn("txcb %s (Twisted " % (__version__,), output)

    def test_txcb_cli_version_names_txcb(self):
        out = subprocess.run(
            [sys.executable, "-m", "txcb.cli", "--version"], cwd=self.workdir,
            env=dict(os.environ, PYTHONPATH=ROOT), stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT, timeout=30)
        self.assertEqual(out.returncode, 0)
        self.assertEqual(out.stdout.decode().strip(), "txcb " + __version__)
