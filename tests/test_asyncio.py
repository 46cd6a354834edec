"""
txcb from asyncio: Twisted's asyncioreactor, ``Deferred.asFuture`` and
``defer.ensureDeferred``.

The reactor is process-global, so each check runs in a child process that
installs the asyncio reactor first: the remote contract suite under
``trial --reactor=asyncio``, and the README's ``async def`` example.
"""

import os
import subprocess
import sys
import textwrap

from twisted.trial import unittest

from tests.support import ROOT, temp_path

TIME_LIMIT = 90

#: The README's asyncio example (run against ``sys.argv[1]``).
EXAMPLE = textwrap.dedent('''
    import asyncio
    import sys

    from twisted.internet import asyncioreactor
    asyncioreactor.install()                      # before anything imports the reactor

    from twisted.internet import defer, task

    from txcb import connect
    from txcb.errors import NotFoundError


    async def main(reactor, endpoint):
        loop = asyncio.get_running_loop()
        # A native asyncio coroutine: turn each Deferred into an asyncio Future.
        bucket = await connect(reactor, endpoint).asFuture(loop)
        await bucket.upsert("greeting", {"text": "hello"}).asFuture(loop)
        got = await bucket.get("greeting").asFuture(loop)
        print("asyncio got", got.value)
        try:
            await bucket.get("missing").asFuture(loop)
        except NotFoundError:
            print("asyncio missing: NotFoundError")
        # Concurrency the asyncio way: gather futures.
        results = await asyncio.gather(*(
            bucket.counter("hits", delta=1, initial=1).asFuture(loop) for _ in range(10)))
        print("asyncio counters", sorted(r.value for r in results))

        # A coroutine run by Twisted (ensureDeferred) awaits Deferreds directly,
        # and may be awaited from asyncio in turn.
        async def twisted_style():
            r = await bucket.upsert_multi({"a": 1, "b": 2})
            many = await bucket.get_multi(["a", "b"])
            return {k: v.value for k, v in sorted(many.items())}
        print("ensureDeferred", await defer.ensureDeferred(twisted_style()).asFuture(loop))

        await bucket.close().asFuture(loop)


    def run(reactor, endpoint="tcp:127.0.0.1:11222"):
        # task.react runs the asyncio loop; main() runs as an asyncio Task on it.
        return defer.Deferred.fromFuture(asyncio.ensure_future(main(reactor, endpoint)))


    if __name__ == "__main__":
        task.react(run, sys.argv[1:])
''')

#: Serves a bucket in the same process (and the same asyncio loop), then runs
#: the example against it.
HARNESS = textwrap.dedent('''
    import runpy, sys
    example = runpy.run_path(sys.argv[1])          # installs the asyncio reactor
    from twisted.internet import reactor, task
    from twisted.internet.asyncioreactor import AsyncioSelectorReactor
    from txcb.buckets.embedded import EmbeddedBucket
    from txcb.server.netstring import BucketServerFactory
    assert isinstance(reactor, AsyncioSelectorReactor), reactor
    port = reactor.listenTCP(0, BucketServerFactory(EmbeddedBucket()), interface="127.0.0.1")
    print("reactor", type(reactor).__name__)
    task.react(example["run"], ["tcp:127.0.0.1:%d" % port.getHost().port])
''')


def run_python(args, timeout=TIME_LIMIT, env=None):
    env = dict(os.environ, PYTHONPATH=ROOT, **(env or {}))
    return subprocess.run([sys.executable] + args, cwd=ROOT, env=env, timeout=timeout,
                          capture_output=True, text=True)


if os.environ.get("TXCB_EXPECT_ASYNCIO") == "1":
    class AsyncioReactorCheck(unittest.TestCase):
        """Only in the child trial below: proves it runs the asyncio reactor."""

        def test_reactor_is_asyncio(self):
            from twisted.internet import reactor
            from twisted.internet.asyncioreactor import AsyncioSelectorReactor
            self.assertIsInstance(reactor, AsyncioSelectorReactor)


class AsyncioTests(unittest.TestCase):
    timeout = TIME_LIMIT + 10

    def test_contract_suite_under_the_asyncio_reactor(self):
        out = run_python(["-m", "twisted.trial", "--reactor=asyncio", "--temp-directory",
                          temp_path(self), "tests.test_remote",
                          "tests.test_asyncio.AsyncioReactorCheck"],
                         env={"TXCB_EXPECT_ASYNCIO": "1"})
        text = out.stdout + out.stderr
        self.assertEqual(out.returncode, 0, text[-3000:])
        last = text.strip().splitlines()[-1]
        self.assertTrue(last.startswith("PASSED (successes="), last)
        self.assertGreaterEqual(int(last.split("=")[1].rstrip(")")), 40, last)

    def test_async_def_example(self):
        path = os.path.abspath(temp_path(self) + ".py")
        with open(path, "w") as f:
            f.write(EXAMPLE)
        out = run_python(["-c", HARNESS, path])
        self.assertEqual(out.returncode, 0, out.stdout + out.stderr)
        self.assertEqual(out.stdout.splitlines(), [
            "reactor AsyncioSelectorReactor",
            "asyncio got {'text': 'hello'}",
            "asyncio missing: NotFoundError",
            "asyncio counters [1, 2, 3, 4, 5, 6, 7, 8, 9, 10]",
            "ensureDeferred {'a': 1, 'b': 2}",
        ])
