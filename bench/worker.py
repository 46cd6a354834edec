"""
The client side of the benchmark: runs one job in this process and prints one
JSON line with what it measured.  Started by :mod:`bench.run` as
``python -m bench.worker '<job as JSON>'``, or (``--baseline``) as a script
run on another txcb tree's PYTHONPATH: so it imports only txcb names that
every layout of txcb has (``txcb.connect``, ``txcb.codec``, ``txcb.formats``)
and nothing from ``bench``.

Job kinds:

- ``ops``: drive one client library against one server for ``warmup`` then
  ``duration`` seconds and count completed operations.  ``depth`` requests in
  flight per connection (1 = one at a time), ``conns`` connections, ``multi``
  keys per multi-key call (0 = single-key calls); txcb upserts with
  ``persist_to`` if the job has it.  CPU time comes from this
  process's rusage and from the server's ``/proc/PID/stat``, both read at the
  start and the end of the measured window.
- ``load``: store keys ``key:START`` .. ``key:STOP-1`` with a raw pipelined
  socket (fast, so loading a million items takes seconds).
- ``idle``: open ``n`` connections, do one round trip on each, print READY
  and hold them open until stdin closes or the process is terminated.

Keys are ``key:N`` and values ``value_size`` bytes.  Results are consumed as a
caller would: ``result.value`` (txcb), the ``(flags, value)`` tuple
(MemCacheProtocol), the value (pymemcache).
"""

from __future__ import annotations

import json
import os
import random
import resource
import socket
import sys
import time
from array import array
from typing import Any, Callable, Dict, List, Optional

_CLK_TCK = os.sysconf("SC_CLK_TCK")
_pc = time.perf_counter
_pc_ns = time.perf_counter_ns


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open("/proc/%d/stat" % pid, "rb") as f:
        data = f.read()
    fields = data[data.rindex(b")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Meter:
    """Wall time, this process's CPU and the server's CPU over a window."""

    def __init__(self, server_pid: Optional[int]) -> None:
        self.server_pid = server_pid
        self.ops = 0
        self.errors = 0
        self.first_error: Optional[str] = None
        self.lat = array("q")
        self.running = False

    def start(self) -> None:
        self.ops = 0
        del self.lat[:]
        self.running = True
        self.s0 = proc_cpu(self.server_pid) if self.server_pid else 0.0
        self.c0 = self_cpu()
        self.t0 = _pc()

    def stop(self) -> None:
        self.t1 = _pc()
        self.c1 = self_cpu()
        self.s1 = proc_cpu(self.server_pid) if self.server_pid else 0.0
        self.running = False

    def error(self, what: Any) -> None:
        self.errors += 1
        if self.first_error is None:
            self.first_error = str(what)[:300]

    def result(self) -> Dict[str, Any]:
        elapsed = self.t1 - self.t0
        ops = self.ops
        lat = sorted(self.lat)
        n = len(lat)
        out: Dict[str, Any] = {
            "ops": ops, "elapsed": elapsed,
            "ops_per_s": ops / elapsed if elapsed > 0 else 0.0,
            "client_cpu_s": self.c1 - self.c0,
            "client_us_per_op": (self.c1 - self.c0) * 1e6 / ops if ops else None,
            "server_cpu_s": (self.s1 - self.s0) if self.server_pid else None,
            "server_us_per_op": ((self.s1 - self.s0) * 1e6 / ops
                                 if self.server_pid and ops else None),
            "p50_us": lat[n // 2] / 1000.0 if n else None,
            "p99_us": lat[min(n - 1, int(n * 0.99))] / 1000.0 if n else None,
            "latency_samples": n,
            "errors": self.errors,
        }
        if self.first_error:
            out["first_error"] = self.first_error
        return out


def key_list(job: Dict[str, Any], as_bytes: bool) -> List[Any]:
    """The keys the job cycles through: sequential, or a random sample."""
    nkeys = job["nkeys"]
    if job.get("random"):
        rng = random.Random(job.get("seed", 1))
        # The same number of draws whatever the bucket size, so that the
        # client side costs the same for 1,000 and 1,000,000 items.
        idx = [rng.randrange(nkeys) for _ in range(job.get("draws", 200000))]
    else:
        idx = list(range(nkeys))
    if as_bytes:
        return [b"key:%d" % i for i in idx]
    return ["key:%d" % i for i in idx]


def chunks(keys: List[Any], m: int) -> List[List[Any]]:
    """Consecutive groups of ``m`` keys, wrapping around the key list."""
    n = len(keys)
    count = max(1, min(n // m if n >= m else 1, 2000))
    return [[keys[(i * m + j) % n] for j in range(m)] for i in range(count)]


# -- Twisted clients ----------------------------------------------------------

def run_twisted(job: Dict[str, Any]) -> Dict[str, Any]:
    """Run one Twisted client job (this runs and stops the reactor)."""
    from twisted.internet import reactor
    out: Dict[str, Any] = {}

    def run() -> None:
        def bad(f: Any) -> None:
            out["fatal"] = f.getErrorMessage()
        drive_twisted(job).addCallbacks(out.update, bad).addBoth(lambda _: reactor.stop())

    reactor.callWhenRunning(run)
    reactor.run()
    return out


def drive_twisted(job: Dict[str, Any]) -> Any:
    """Run one Twisted client job on the running reactor: a Deferred of its result."""
    from twisted.internet import defer, reactor

    client = job["client"]
    op = job["op"]
    m = job.get("multi", 0)
    depth = job.get("depth", 1)
    nconns = job.get("conns", 1)
    value = b"v" * job["value_size"]
    meter = Meter(job.get("server_pid"))
    host, port = "127.0.0.1", job["port"]
    consume: Optional[Callable[[Any], Any]] = None

    if client == "txcb":
        from txcb import connect  # the same name in every layout of txcb

        keys = key_list(job, as_bytes=False)

        def connect_one() -> Any:
            return connect(reactor, "tcp:%s:%d" % (host, port))

        if m:
            groups = chunks(keys, m)
            if op == "get":
                def call(c: Any, i: int) -> Any:
                    return c.get_multi(groups[i % len(groups)])
            else:
                maps = [dict.fromkeys(g, value) for g in groups]

                def call(c: Any, i: int) -> Any:
                    return c.upsert_multi(maps[i % len(maps)])
        elif op == "get":
            def call(c: Any, i: int) -> Any:
                return c.get(keys[i % len(keys)])
            consume = _txcb_value
        elif job.get("persist_to"):
            persist_to = job["persist_to"]

            def call(c: Any, i: int) -> Any:
                return c.upsert(keys[i % len(keys)], value, persist_to=persist_to)
        else:
            def call(c: Any, i: int) -> Any:
                return c.upsert(keys[i % len(keys)], value)

    elif client == "mcp":
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory
        from twisted.protocols.memcache import MemCacheProtocol

        keys = key_list(job, as_bytes=True)

        def connect_one() -> Any:
            return TCP4ClientEndpoint(reactor, host, port).connect(
                Factory.forProtocol(MemCacheProtocol))

        if m:
            groups = chunks(keys, m)
            if op == "get":
                def call(c: Any, i: int) -> Any:
                    return c.getMultiple(groups[i % len(groups)])
            else:
                def call(c: Any, i: int) -> Any:
                    # MemCacheProtocol has no multi-set: m pipelined sets.
                    return defer.gatherResults([c.set(k, value)
                                                for k in groups[i % len(groups)]])
        elif op == "get":
            def call(c: Any, i: int) -> Any:
                return c.get(keys[i % len(keys)])
            consume = _mcp_value
        else:
            def call(c: Any, i: int) -> Any:
                return c.set(keys[i % len(keys)], value)

    elif client == "echo-tw":
        from twisted.internet.endpoints import TCP4ClientEndpoint
        from twisted.internet.protocol import Factory

        msg = b"e" * job["value_size"]

        def connect_one() -> Any:
            return TCP4ClientEndpoint(reactor, host, port).connect(
                Factory.forProtocol(_EchoPingPong))

        def call(c: Any, i: int) -> Any:
            return c.ping(msg)
    else:
        raise SystemExit("unknown Twisted client %r" % (client,))

    per_call = m if m else 1
    lat = meter.lat
    state = {"stopping": False, "lanes": 0, "counter": 0}
    finished: defer.Deferred = defer.Deferred()

    def lane(conn: Any) -> None:
        state["lanes"] += 1

        def issue() -> None:
            i = state["counter"]
            state["counter"] = i + 1
            call(conn, i).addCallbacks(done, failed, (_pc_ns(),))

        def done(result: Any, t: int) -> None:
            if consume is not None:
                consume(result)
            if meter.running:
                lat.append(_pc_ns() - t)
                meter.ops += per_call
            if state["stopping"]:
                lane_end()
            else:
                issue()

        def failed(f: Any) -> None:
            meter.error(f.getErrorMessage())
            lane_end()

        issue()

    def lane_end() -> None:
        state["lanes"] -= 1
        if state["lanes"] == 0 and not finished.called:
            if meter.running:
                meter.stop()
            finished.callback(None)

    @defer.inlineCallbacks
    def main() -> Any:
        conns = yield defer.gatherResults([connect_one() for _ in range(nconns)])
        for c in conns:
            for _ in range(depth):
                lane(c)
        reactor.callLater(job["warmup"], meter.start)

        def stop() -> None:
            state["stopping"] = True
        reactor.callLater(job["warmup"] + job["duration"], stop)
        yield finished
        for c in conns:
            if client == "txcb":
                yield c.close()
            else:
                c.transport.loseConnection()
        return meter.result()

    return main()


def run_many(jobs: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """
    Several ops jobs in this one process, one after the other (the blocking
    clients' first, then the Twisted ones in one reactor run).  For
    ``--smoke``, where Python start-ups would cost more than the jobs.
    """
    out: List[Optional[Dict[str, Any]]] = [None] * len(jobs)
    twisted_jobs = []
    for i, job in enumerate(jobs):
        if job["client"] in ("pym", "echo"):
            try:
                out[i] = run_blocking(job)
            except Exception as e:  # noqa: BLE001 - reported in the result
                out[i] = {"fatal": "%s: %s" % (type(e).__name__, e)}
        else:
            twisted_jobs.append(i)
    if twisted_jobs:
        from twisted.internet import defer, reactor

        @defer.inlineCallbacks
        def all_jobs() -> Any:
            for i in twisted_jobs:
                try:
                    out[i] = yield drive_twisted(jobs[i])
                except Exception as e:  # noqa: BLE001 - reported in the result
                    out[i] = {"fatal": "%s: %s" % (type(e).__name__, e)}
        reactor.callWhenRunning(lambda: all_jobs().addBoth(lambda _: reactor.stop()))
        reactor.run()
    return [r if r is not None else {"fatal": "not run"} for r in out]


def _txcb_value(r: Any) -> Any:
    return r.value


def _mcp_value(r: Any) -> Any:
    _flags, value = r
    return value


def _make_echo_protocol() -> Any:
    from twisted.internet import defer
    from twisted.internet.protocol import Protocol

    class EchoPingPong(Protocol):
        """Sends a message, fires when all of it has come back."""
        _want = 0
        _d: Any = None

        def ping(self, msg: bytes) -> Any:
            self._want = len(msg)
            self._d = d = defer.Deferred()  # type: defer.Deferred[Any]
            self.transport.write(msg)  # type: ignore[union-attr]
            return d

        def dataReceived(self, data: bytes) -> None:
            self._want -= len(data)
            if self._want <= 0:
                d, self._d = self._d, None
                d.callback(None)

    return EchoPingPong


class _LazyEcho:
    cls: Any = None

    def __call__(self, *a: Any, **kw: Any) -> Any:
        if _LazyEcho.cls is None:
            _LazyEcho.cls = _make_echo_protocol()
        return _LazyEcho.cls(*a, **kw)


_EchoPingPong = _LazyEcho()


# -- blocking clients -----------------------------------------------------------

def run_blocking(job: Dict[str, Any]) -> Dict[str, Any]:
    client = job["client"]
    op = job["op"]
    m = job.get("multi", 0)
    value = b"v" * job["value_size"]
    meter = Meter(job.get("server_pid"))
    host, port = "127.0.0.1", job["port"]
    if job.get("depth", 1) != 1 or job.get("conns", 1) != 1:
        raise SystemExit("blocking clients run one request at a time on one connection")

    if client == "pym":
        from pymemcache.client.base import Client

        c = Client((host, port), no_delay=True, default_noreply=False, connect_timeout=5,
                   timeout=5)
        keys = key_list(job, as_bytes=False)
        if m:
            groups = chunks(keys, m)
            if op == "get":
                def call(i: int) -> Any:
                    return c.get_many(groups[i % len(groups)])
            else:
                maps = [dict.fromkeys(g, value) for g in groups]

                def call(i: int) -> Any:
                    failed = c.set_many(maps[i % len(maps)], noreply=False)
                    if failed:
                        raise RuntimeError("set_many failed for %d keys" % len(failed))
        elif op == "get":
            def call(i: int) -> Any:
                return c.get(keys[i % len(keys)])
        else:
            def call(i: int) -> Any:
                if not c.set(keys[i % len(keys)], value, noreply=False):
                    raise RuntimeError("set failed")
        close = c.close
    elif client == "echo":
        s = socket.create_connection((host, port))
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        msg = b"e" * job["value_size"]
        n = len(msg)
        send, recv = s.sendall, s.recv

        def call(i: int) -> Any:
            send(msg)
            got = len(recv(65536))
            while got < n:
                got += len(recv(65536))
        close = s.close
    else:
        raise SystemExit("unknown blocking client %r" % (client,))

    per_call = m if m else 1
    lat = meter.lat
    i = 0
    warm_end = _pc() + job["warmup"]
    while _pc() < warm_end:
        call(i)
        i += 1
    meter.start()
    end_ns = int((meter.t0 + job["duration"]) * 1e9)
    ops = 0
    while True:
        t = _pc_ns()
        try:
            call(i)
        except Exception as e:  # noqa: BLE001 - reported, not hidden
            meter.error(e)
            break
        t1 = _pc_ns()
        lat.append(t1 - t)
        ops += per_call
        i += 1
        if t1 >= end_ns:
            break
    meter.ops = ops
    meter.stop()
    close()
    return meter.result()


# -- loading and idle connections ----------------------------------------------

def run_load(job: Dict[str, Any]) -> Dict[str, Any]:
    """Store key:START..key:STOP-1 over one pipelined raw connection."""
    value = b"v" * job["value_size"]
    start, stop = job["start"], job["stop"]
    batch = job.get("batch", 500)
    s = socket.create_connection(("127.0.0.1", job["port"]))
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    t0 = _pc()
    if job["server"] == "txcb":
        from txcb.codec import NetstringDecoder, Op, decode_response, encode_request, netstring
        from txcb.formats import FMT_BYTES

        dec = NetstringDecoder(1 << 20)
        for lo in range(start, stop, batch):
            hi = min(lo + batch, stop)
            s.sendall(b"".join(netstring(encode_request(Op.UPSERT, i & 0xFFFFFFFF,
                                                        b"key:%d" % i, value,
                                                        flags=FMT_BYTES))
                               for i in range(lo, hi)))
            got = 0
            while got < hi - lo:
                data = s.recv(1 << 20)
                if not data:
                    raise SystemExit("txcb server closed the connection while loading")
                for payload in dec.feed(data):
                    res = decode_response(payload)
                    if res.status:
                        raise SystemExit("txcb store failed: status 0x%x %r"
                                         % (res.status, res.body))
                    got += 1
    else:
        for lo in range(start, stop, batch):
            hi = min(lo + batch, stop)
            s.sendall(b"".join(b"set key:%d 0 0 %d\r\n%s\r\n" % (i, len(value), value)
                               for i in range(lo, hi)))
            buf = b""
            while buf.count(b"\r\n") < hi - lo:
                data = s.recv(1 << 20)
                if not data:
                    raise SystemExit("memcached closed the connection while loading")
                buf += data
            if buf.count(b"STORED\r\n") != hi - lo:
                raise SystemExit("memcached store failed: %r" % (buf[:200],))
    s.close()
    return {"stored": stop - start, "elapsed": _pc() - t0}


def run_idle(job: Dict[str, Any]) -> None:
    """Open n connections, one round trip each, then hold them until told."""
    socks = []
    if job["server"] == "txcb":
        from txcb.codec import Op, encode_request, netstring
        hello = netstring(encode_request(Op.HELLO, 1))
    else:
        hello = b"version\r\n"
    for _ in range(job["n"]):
        s = socket.create_connection(("127.0.0.1", job["port"]))
        s.sendall(hello)
        if not s.recv(65536):
            raise SystemExit("server closed an idle connection")
        socks.append(s)
    sys.stdout.write("READY %d\n" % len(socks))
    sys.stdout.flush()
    try:
        sys.stdin.read()
    except KeyboardInterrupt:
        pass
    for s in socks:
        s.close()


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    job = json.loads(argv[0])
    if isinstance(job, list):
        for r in run_many(job):
            sys.stdout.write(json.dumps(r) + "\n")
        sys.stdout.flush()
        return 0
    kind = job["kind"]
    if kind == "idle":
        run_idle(job)
        return 0
    if kind == "load":
        out = run_load(job)
    elif job["client"] in ("pym", "echo"):
        out = run_blocking(job)
    else:
        out = run_twisted(job)
    txcb = sys.modules.get("txcb")
    if txcb is not None and txcb.__file__:  # which tree's client code ran
        out["txcb_from"] = os.path.dirname(os.path.realpath(txcb.__file__))
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
