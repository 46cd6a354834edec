"""The twistd plugin and txcb.service.tap: discovery, options, services, a real run."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time

from twisted.application.service import IServiceMaker
from twisted.internet import reactor
from twisted.internet.defer import inlineCallbacks
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogLevel
from twisted.plugin import getPlugins
from twisted.python import usage
from twisted.trial import unittest

from txcb.service import tap
from txcb.service.listen import ENDPOINT_HELP
from txcb.client.remote import connect

from tests.support import ROOT
from tests.support.procs import free_port


class PluginTests(unittest.TestCase):
    def test_plugin_is_discovered(self):
        makers = [p for p in getPlugins(IServiceMaker) if p.tapname == "txcb"]
        self.assertEqual(len(makers), 1)
        self.assertIs(makers[0].options, tap.Options)

    def test_plugin_import_is_lazy(self):
        out = subprocess.check_output(
            [sys.executable, "-c", "import sys; sys.path.insert(0, %r); "
             "import twisted.plugins.txcb_plugin; print('txcb.service.tap' in sys.modules)" % ROOT],
            cwd=ROOT)
        self.assertEqual(out.strip(), b"False")

    def test_twistd_help_imports_no_txcb_module(self):
        """tap imports every bucket and server: only `twistd txcb` may pay for that."""
        code = ("import sys, io, contextlib; sys.path.insert(0, %r); "
                "sys.argv = ['twistd', '--help']; "
                "from twisted.scripts.twistd import run; out = io.StringIO()\n"
                "try:\n    with contextlib.redirect_stdout(out): run()\n"
                "except SystemExit: pass\n"
                "print('txcb' in out.getvalue(), "
                "[m for m in sys.modules if m.split('.')[0] == 'txcb'])" % ROOT)
        out = subprocess.check_output([sys.executable, "-c", code], cwd=ROOT)
        self.assertEqual(out.strip(), b"True []")

    def test_no_init_in_plugin_folder(self):
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "plugins",
                                                     "__init__.py")))
        self.assertFalse(os.path.exists(os.path.join(ROOT, "twisted", "__init__.py")))


class OptionsTests(unittest.TestCase):
    def parse(self, *args):
        o = tap.Options()
        o.parseOptions(list(args))
        return o

    def test_defaults_listen_on_loopback(self):
        o = self.parse()
        self.assertEqual(o["port"], ["tcp:11222:interface=127.0.0.1"])
        self.assertEqual(o["max-value-size"], 20 * 1024 * 1024)

    def test_bare_port_is_loopback_and_port_repeats(self):
        o = self.parse("--port", "1234", "-p", "unix:/tmp/txcb.sock")
        self.assertEqual(o["port"], ["tcp:1234:interface=127.0.0.1", "unix:/tmp/txcb.sock"])

    def test_bad_values_are_usage_errors(self):
        for args in (["--max-value-size", "0"], ["--max-inflight", "-1"],
                     ["--max-value-size", "big"], ["--no-such-option"]):
            self.assertRaises(usage.UsageError, self.parse, *args)

    def test_help_documents_every_option(self):
        text = str(tap.Options())
        for name in ("--port", "--max-value-size", "--max-inflight", "--pager-interval"):
            self.assertIn(name, text)


class MakeServiceTests(unittest.TestCase):
    def test_make_service_listens_and_closes_the_bucket(self):
        o = tap.Options()
        o.parseOptions(tap_test_args())
        r = MemoryReactorClock()
        svc = tap.makeService(o, reactor=r)
        svc.startService()
        self.assertEqual([(p, i) for p, _f, _b, i in r.tcpServers], [(11222, "127.0.0.1")])
        bucket = [s for s in svc if isinstance(s, tap.BucketService)][0].bucket
        self.successResultOf(bucket.upsert("k", "v"))
        self.successResultOf(svc.stopService())
        self.assertTrue(bucket._closed)

    def test_services_live_in_listen_and_tap_names_them(self):
        from txcb.service import listen
        self.assertIs(tap.BucketService, listen.BucketService)
        self.assertIs(tap.ListenService, listen.ListenService)

    def test_listen_failure_stops_start_up(self):
        o = tap.Options()
        o.parseOptions(tap_test_args("--port", "tcp:1:interface=256.1.1.1"))
        svc = tap.makeService(o)
        self.assertRaises(Exception, svc.startService)
        svc.stopService()


class OneLineStartupTests(unittest.TestCase):
    """Start-up errors under twistd: one line, exit status 1 (issue 13)."""

    def twistd_options(self, *args):
        """Options as twistd parses them: with a parent, twistd's own options."""
        o = tap.Options()
        o.parent = usage.Options()
        o.parseOptions(tap_test_args(*args))
        return o

    def test_usage_error_under_twistd_is_one_line_and_exit_1(self):
        o = tap.Options()
        o.parent = usage.Options()
        e = self.assertRaises(SystemExit, o.parseOptions, ["--max-inflight", "0"])
        self.assertEqual(e.code, "txcb: --max-inflight must be positive")

    def test_bad_endpoint_strings_are_usage_errors(self):
        for option in ("--port", "--memcached", "--metrics"):
            e = self.assertRaises(usage.UsageError, tap.Options().parseOptions,
                                  [option, "bogus:1"])
            self.assertIn("bad %s bogus:1: Unknown endpoint type: 'bogus'" % option, str(e))

    def test_version_names_txcb(self):
        import io
        from contextlib import redirect_stdout
        from txcb import __version__
        out = io.StringIO()
        with redirect_stdout(out):
            e = self.assertRaises(SystemExit, tap.Options().parseOptions, ["--version"])
        self.assertEqual(e.code, 0)
        self.assertTrue(out.getvalue().startswith("txcb %s (Twisted " % __version__))

    def test_make_service_under_twistd_is_one_line_startup(self):
        from txcb.service.listen import OneLineStartup
        svc = tap.makeService(self.twistd_options(), reactor=MemoryReactorClock())
        self.assertIsInstance(svc, OneLineStartup)
        direct = tap.Options()
        direct.parseOptions(tap_test_args())
        self.assertNotIsInstance(tap.makeService(direct, reactor=MemoryReactorClock()),
                                 OneLineStartup)

    def test_listen_failure_is_logged_one_line_then_startup_exit(self):
        from twisted.logger import formatEvent, globalLogPublisher
        from txcb.service.listen import StartupExit
        o = self.twistd_options("--memcached", "9")
        o["memcached"] = ["bogus:9"]  # (the options would have refused it)
        svc = tap.makeService(o, reactor=MemoryReactorClock())
        logged = []
        globalLogPublisher.addObserver(logged.append)
        self.addCleanup(globalLogPublisher.removeObserver, logged.append)
        e = self.assertRaises(StartupExit, svc.startService)
        self.assertIsInstance(e, Exception)  # so twistd removes its pid file
        self.assertEqual(e.code, 1)
        line = ("txcb: cannot listen on bogus:9 (--memcached): Unknown endpoint type: "
                "'bogus'; " + ENDPOINT_HELP)
        self.assertEqual(str(e), line)
        self.assertIn(line, [formatEvent(ev) for ev in logged
                             if ev.get("log_level") == LogLevel.critical])
        # What had started (the bucket, the netstring listener) was stopped again.
        self.assertEqual([s.running for s in svc], [0] * len(list(svc)))
        self.assertGreaterEqual(len(list(svc)), 3)
        self.assertTrue(list(svc)[0].bucket._closed)

    def test_unknown_start_up_errors_keep_their_traceback(self):
        from txcb.service.listen import OneLineStartup

        class Broken(tap.BucketService):
            def startService(self):
                raise KeyError("a bug")

        svc = OneLineStartup(lambda error: None, MemoryReactorClock())
        Broken(None).setServiceParent(svc)
        self.assertRaises(KeyError, svc.startService)

    def test_startup_problem_names_option_and_value(self):
        from txcb.buckets.persistent import DataDirLockedError
        from txcb.service.listen import ListenError
        o = self.twistd_options("--metrics", "9100", "-p", "1", "-p", "2")
        self.assertEqual(
            tap.startup_problem(o, ListenError("tcp:2:interface=127.0.0.1", "why",
                                               "not {option}")),
            "txcb: cannot listen on tcp:2:interface=127.0.0.1 (--port): why; not --port")
        self.assertEqual(
            tap.startup_problem(o, ListenError("tcp:9100:interface=127.0.0.1", "why")),
            "txcb: cannot listen on tcp:9100:interface=127.0.0.1 (--metrics): why")
        self.assertIn("--data-dir %s: locked; stop the txcb" % o["data-dir"],
                      tap.startup_problem(o, DataDirLockedError("locked")))
        self.assertIsNone(tap.startup_problem(o, KeyError("a bug")))

    def test_listen_service_raises_listen_error(self):
        from txcb.service.listen import ListenError
        svc = tap.ListenService("bogus:1", Factory(), MemoryReactorClock())
        e = self.assertRaises(ListenError, svc.startService)
        self.assertEqual(str(e), "cannot listen on bogus:1: Unknown endpoint type: 'bogus'")


def tap_test_args(*extra):
    """Options for an in-memory bucket (never a data dir in the test's cwd)."""
    args = list(extra)
    if "--ephemeral" in str(tap.Options()):
        args.append("--ephemeral")
    return args


class RealProcessTests(unittest.TestCase):
    """`twistd -n txcb` as a user runs it: serve, answer, stop on SIGTERM."""

    timeout = 30

    @inlineCallbacks
    def test_twistd_serves_and_stops_cleanly(self):
        port = free_port()
        env = dict(os.environ, PYTHONPATH=ROOT)
        workdir = tempfile.mkdtemp(prefix="txcb-tap-")
        self.addCleanup(shutil.rmtree, workdir, True)
        log = os.path.join(workdir, "twistd.log")
        proc = subprocess.Popen(
            [sys.executable, "-c", "from twisted.scripts.twistd import run; run()",
             "-n", "--pidfile=", "--logfile", log, "txcb", "--port",
             "tcp:%d:interface=127.0.0.1" % port] + tap_test_args(),
            cwd=workdir, env=env)
        self.addCleanup(lambda: proc.poll() is None and proc.kill())
        deadline = time.time() + 15
        bucket = None
        while bucket is None:
            try:
                bucket = yield connect(reactor, "tcp:127.0.0.1:%d" % port)
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise
                yield _sleep(0.1)
        yield bucket.upsert("k", {"v": 1})
        r = yield bucket.get("k")
        self.assertEqual(r.value, {"v": 1})
        yield bucket.close()
        proc.send_signal(signal.SIGTERM)
        for _ in range(100):
            if proc.poll() is not None:
                break
            yield _sleep(0.1)
        # twistd re-raises the signal that stopped it, so its status says SIGTERM.
        self.assertIn(proc.returncode, (0, -signal.SIGTERM))
        with open(log) as f:
            text = f.read()
        self.assertIn("txcb listening on", text)
        self.assertNotIn("Traceback", text)


def _sleep(seconds):
    from twisted.internet.task import deferLater
    return deferLater(reactor, seconds, lambda: None)
