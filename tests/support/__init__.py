"""
What the test modules share; no test module imports another.

- :mod:`tests.support.procs`: real processes (memcached, nutcracker) on free
  loopback ports, :func:`~tests.support.procs.free_port`, and
  :func:`~tests.support.procs.die_with_parent` for any child a test starts;
- :mod:`tests.support.servers`: txcb's own servers on loopback for the
  current test (netstring :func:`~tests.support.servers.start_server`,
  memcached :func:`~tests.support.servers.start_memcached_server`);
- :mod:`tests.support.netstring`: in-memory harnesses of the netstring
  server and client protocols (StringTransport, task.Clock);
- :mod:`tests.support.memcached`: the in-memory harness of the memcached
  server protocol;
- :mod:`tests.support.quota`: ``EjectingBucket``, an ISyncBucket whose
  chosen keys are "ejected" (WouldBlock) or whose memory is full, and
  ``StatsBucket``, whose stats carry the memory quota's figures;
- :mod:`tests.support.quota_server`: a real server process with a persistent
  bucket under a RAM quota (``twistd txcb --memory-quota``), and its RSS;
- :mod:`tests.support.contract` and :mod:`tests.support.sync_contract`: the
  IBucket contract suites every provider runs (and ``ThreadedServer``).

Here: the repository root and small helpers.
"""

import os
import platform
import shutil
import tempfile

try:
    import tracemalloc
except ImportError:  # PyPy has none
    tracemalloc = None

#: Why tests that measure Python's allocations cannot run here (None: they can).
NO_TRACEMALLOC = None if tracemalloc is not None else (
    "tracemalloc is CPython's; %s has none" % (platform.python_implementation(),))
#: Why tests that memory is freed by reference counting alone cannot run
#: here (None: they can): PyPy frees objects by its garbage collector only.
NO_REFCOUNTING = None if platform.python_implementation() == "CPython" else (
    "%s frees memory by its garbage collector only (no reference counting): "
    "freed-without-gc is CPython's behaviour" % (platform.python_implementation(),))

#: The repository root (PYTHONPATH of the processes tests start).
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def temp_path(testcase, name="f"):
    """A path in a fresh temporary directory removed after the test (never in
    the source tree, where pytest would leave trial's mktemp() directories)."""
    d = tempfile.mkdtemp(prefix="txcb-test-")
    testcase.addCleanup(shutil.rmtree, d, True)
    return os.path.join(d, name)


def sleep(seconds):
    """A Deferred that fires after ``seconds`` of real time (on the global
    reactor, imported here so that importing this package installs none)."""
    from twisted.internet import reactor
    from twisted.internet.task import deferLater
    return deferLater(reactor, seconds, lambda: None)
