"""
txcb's reactor (txcb.service.reactor): Twisted's own reactor tests for TCP run
against it, plus what it changes (no per-event log context, errors still
logged and contained) and how ``twistd txcb`` picks it.
"""

import select
import socket
import subprocess
import sys

from twisted.internet.protocol import Factory, Protocol
from twisted.python.reflect import namedAny
from twisted.trial import unittest

from txcb.service import reactor as _reactor

try:
    from twisted.internet.test import test_core, test_tcp
except ImportError as e:  # Twisted's test modules need PyHamcrest ('.[test]' installs it)
    _twisted_tests = None
    _why = str(e)
else:
    _twisted_tests = (test_core, test_tcp)

OURS = "txcb.service.reactor.EPollReactor"
HAVE_EPOLL = hasattr(select, "epoll")


def _no_log_prefix(self):
    raise unittest.SkipTest("by design: txcb's reactor sets no per-event log context, so "
                            "legacy log lines from dataReceived carry no logPrefix "
                            "(txcb.service.reactor; ReactorTests checks the difference)")


def _ours(builder):
    """``builder`` (a Twisted ReactorBuilder) for txcb's reactor only."""
    attrs = {"_reactors": [OURS]}
    if hasattr(builder, "test_logPrefix"):
        attrs["test_logPrefix"] = _no_log_prefix
    return type("Txcb" + builder.__name__, (builder,), attrs)


#: The builders twisted/internet/test/test_core.py and test_tcp.py run for
#: each of Twisted's reactors (IPv4 ones: loopback IPv6 may be absent).
_BUILDERS = [("test_core", "SystemEventTestsBuilder")] + [("test_tcp", name) for name in (
    "TCP4ClientTestsBuilder", "TCPPortTestsBuilder", "TCPFDPortTestsBuilder",
    "TCPConnectionTestsBuilder", "TCP4ConnectorTestsBuilder", "TCPTransportTestsBuilder",
    "AdoptStreamConnectionTestsBuilder", "TestBindAddressBuilder", "AbortConnectionTests")]
#: Builders this Twisted release does not have (older releases lack some).
_absent = []

if _twisted_tests is not None and HAVE_EPOLL:
    for _module, _name in _BUILDERS:
        _builder = getattr(dict(test_core=test_core, test_tcp=test_tcp)[_module], _name, None)
        if _builder is None:
            _absent.append("%s.%s" % (_module, _name))
            continue
        globals().update(_ours(_builder).makeTestCaseClasses())
    del _module, _name, _builder


class TwistedSuiteAvailableTests(unittest.TestCase):
    """Says so (as a skip) when Twisted's reactor tests could not be loaded here."""

    def test_twisted_reactor_tests_were_loaded(self):
        if not HAVE_EPOLL:
            raise unittest.SkipTest("no epoll on this platform")
        if _twisted_tests is None:
            raise unittest.SkipTest("Twisted's reactor tests not run: %s" % (_why,))
        generated = [n for n, v in globals().items()
                     if n.startswith("Txcb") and isinstance(v, type)
                     and issubclass(v, unittest.SynchronousTestCase)]
        self.assertGreaterEqual(len(generated), len(_BUILDERS) - len(_absent), generated)

    def test_every_builder_exists_in_this_twisted(self):
        if _twisted_tests is None or not HAVE_EPOLL:
            raise unittest.SkipTest("Twisted's reactor tests not loaded here")
        if _absent:
            raise unittest.SkipTest("not in this Twisted release, so not run: %s"
                                    % (", ".join(_absent),))


class _Boom(Protocol):
    def dataReceived(self, data):
        raise ZeroDivisionError("boom in dataReceived")


class _Echo(Protocol):
    def dataReceived(self, data):
        self.transport.write(data)


class ReactorTests(unittest.TestCase):
    if not HAVE_EPOLL:
        skip = "no epoll on this platform"

    def setUp(self):
        self.reactor = namedAny(OURS)()
        self.addCleanup(self.close)

    def close(self):
        for p in getattr(self, "ports", []):
            p.stopListening()
        self.reactor.runUntilCurrent()
        for _ in range(5):
            self.reactor.doIteration(0)
        self.reactor._poller.close()

    def listen(self, protocol):
        port = self.reactor.listenTCP(0, Factory.forProtocol(protocol), interface="127.0.0.1")
        self.ports = getattr(self, "ports", []) + [port]
        return port.getHost().port

    def spin_until(self, done, turns=200):
        for _ in range(turns):
            if done():
                return
            self.reactor.runUntilCurrent()
            self.reactor.doIteration(0.01)
        self.fail("condition not reached in %d reactor turns" % (turns,))

    def test_does_not_build_a_log_context_per_event(self):
        """The point of it: no log.callWithLogger around each read."""
        from twisted.python import log
        calls = []
        original = log.callWithLogger
        self.patch(log, "callWithLogger",
                   lambda *a, **kw: (calls.append(a), original(*a, **kw))[1])
        port = self.listen(_Echo)
        c = socket.create_connection(("127.0.0.1", port))
        self.addCleanup(c.close)
        c.sendall(b"ping")
        got = []

        def read():
            c.setblocking(False)
            try:
                got.append(c.recv(10))
            except BlockingIOError:
                pass
            return b"".join(got) == b"ping"
        self.spin_until(read)
        self.assertEqual(calls, [])

    def test_error_in_a_protocol_is_logged_and_drops_only_that_connection(self):
        boom_port = self.listen(_Boom)
        echo_port = self.listen(_Echo)
        bad = socket.create_connection(("127.0.0.1", boom_port))
        good = socket.create_connection(("127.0.0.1", echo_port))
        self.addCleanup(bad.close)
        self.addCleanup(good.close)
        bad.sendall(b"x")
        good.sendall(b"still here")
        bad.setblocking(False)
        good.setblocking(False)
        state = {"bad_closed": False, "echo": b""}

        def check():
            try:
                if bad.recv(10) == b"":
                    state["bad_closed"] = True
            except BlockingIOError:
                pass
            try:
                state["echo"] += good.recv(100)
            except BlockingIOError:
                pass
            return state["bad_closed"] and state["echo"] == b"still here"
        self.spin_until(check)
        self.assertEqual(len(self.flushLoggedErrors(ZeroDivisionError)), 1)


class InstallTests(unittest.TestCase):

    def test_install_default_leaves_an_installed_reactor_alone(self):
        from twisted.internet import reactor
        self.assertFalse(_reactor.install_default())
        from twisted.internet import reactor as after
        self.assertIs(after, reactor)

    def run_python(self, code):
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                             timeout=60)
        self.assertEqual(out.returncode, 0, out.stderr)
        return out.stdout.strip()

    def test_twistd_txcb_runs_on_it_unless_told_otherwise(self):
        code = """if 1:
            import sys
            from twisted.python import usage
            from txcb.service import tap
            options = tap.Options()
            options.parseOptions(['--ephemeral', '--port', 'tcp:0:interface=127.0.0.1'])
            tap.makeService(options)
            from twisted.internet import reactor
            print(type(reactor).__module__ + '.' + type(reactor).__name__)
        """
        expected = OURS if HAVE_EPOLL else None
        got = self.run_python(code)
        if expected is not None:
            self.assertEqual(got, expected)
        chosen = self.run_python("""if 1:
            from twisted.internet import pollreactor
            pollreactor.install()
            """ + code.replace("if 1:", "").replace("\n            ", "\n"))
        self.assertEqual(chosen, "twisted.internet.pollreactor.PollReactor")

    def test_twistd_lists_it(self):
        out = subprocess.run([sys.executable, "-c",
                              "from twisted.scripts.twistd import run; run()",
                              "--help-reactors"], capture_output=True, text=True, timeout=60)
        self.assertIn("txcb", out.stdout)
