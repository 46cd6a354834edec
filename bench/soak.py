"""
Soak a real ``twistd txcb`` with the attacks of issue 12: ``python -m bench.soak``
(``--help`` for the options).

Starts ``twistd -n txcb --ephemeral`` on free loopback ports, a new one for
each attack (and, with ``--persistent``, a second round on a --data-dir in a
temporary directory).  A good client (its own process, a raw socket on the
memcached port getting a small key and a 1 MB key, one request at a time)
measures latency for a window before, during and after the attack, while the
server's RSS (/proc/PID/status) and CPU (/proc/PID/stat) are sampled.  One table row
per attack: RSS before / peak during / after (MB), server CPU seconds used
during, the good client's p99 before / during / after (ms), and PASS when,
after the attack, RSS is within 10% of where it started and p99 within 2x.

Not a test: figures on a shared machine drift, and the criteria are the
issue's targets.  Every process it starts is stopped by pid; every wait is
bounded.  Exit status 1 if any attack FAILs.
"""

from __future__ import annotations

import argparse
import errno
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

if not __package__:  # run as ``python bench/soak.py``: bench is a package of the tree
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench.run import ROOT, Server, child_env, free_port, rss_bytes, twistd_in

SMALL_KEY, BIG_KEY = b"soak-small", b"soak-big"
MB = 1 << 20
#: The server's --max-connections: room for every attack but the one over it.
MAX_CONNECTIONS = 200


# -- the server's RSS and CPU -------------------------------------------------

def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of ``pid`` so far, from /proc/PID/stat."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Sampler:
    """
    The peak RSS of a process, sampled in a thread until stopped; past
    ``cap`` bytes the attack is stopped (a shared machine's memory is not
    the attack's to take).
    """

    def __init__(self, pid: int, cap: int, attack: "Attack", every: float = 0.2) -> None:
        self.pid = pid
        self.peak = rss_bytes(pid)
        self._cap = cap
        self._attack = attack
        self._stop = threading.Event()
        self._every = every
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self._every):
            try:
                self.peak = max(self.peak, rss_bytes(self.pid))
            except (OSError, RuntimeError):
                return  # the server is gone: the row will say so
            if self.peak > self._cap and not self._attack.stop.is_set():
                self._attack.note += "stopped at the %d MB RSS cap; " % (self._cap // MB)
                self._attack.stop.set()

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(5)
        return self.peak


# -- the good client ------------------------------------------------------------

def read_value(f: Any) -> int:
    """Read one ASCII get reply from file ``f``: the value's length (-1: a miss)."""
    line = f.readline()
    if line == b"END\r\n":
        return -1
    parts = line.split()
    if len(parts) < 4 or parts[0] != b"VALUE":
        raise OSError("unexpected reply %r" % (line[:80],))
    size = int(parts[3])
    if len(f.read(size + 2)) != size + 2 or f.readline() != b"END\r\n":
        raise OSError("short reply")
    return size


def probe(port: int, seconds: float) -> Dict[str, Any]:
    """
    The good client: gets of the small and the 1 MB key, one at a time, for
    ``seconds``; -> latency percentiles (ms) and the error, if any.  Prints
    READY once connected, so that an attack starts after its connection.
    """
    lat: List[float] = []
    error = None
    misses = 0
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        f = s.makefile("rb")
        print("READY", flush=True)
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            for key in (SMALL_KEY, BIG_KEY):
                t0 = time.perf_counter()
                s.sendall(b"get %s\r\n" % key)
                if read_value(f) < 0:
                    misses += 1  # flushed: the flush attack stores it again
                lat.append(time.perf_counter() - t0)
        s.close()
    except OSError as e:
        error = "%s: %s" % (type(e).__name__, e)
        print("READY", flush=True)  # never leave the parent waiting
    lat.sort()
    pick = (lambda q: round(lat[min(len(lat) - 1, int(q * len(lat)))] * 1000, 3)
            if lat else None)
    return {"n": len(lat), "p50": pick(0.50), "p99": pick(0.99), "misses": misses,
            "error": error}


class Probe:
    """The good client, in a process of its own (no GIL shared with the attacks)."""

    def __init__(self, port: int, seconds: float) -> None:
        argv = [sys.executable, "-m", "bench.soak", "--probe", str(port), str(seconds)]
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     env=child_env(), cwd=ROOT)
        self.proc.stdout.readline()  # type: ignore[union-attr]  # READY

    def result(self, timeout: float) -> Dict[str, Any]:
        try:
            out, _ = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return {"n": 0, "p50": None, "p99": None, "error": "probe timed out"}
        lines = [ln for ln in out.decode().splitlines() if ln.startswith("{")]
        if not lines:
            return {"n": 0, "p50": None, "p99": None, "error": "probe printed nothing"}
        return json.loads(lines[-1])


# -- the attacks ------------------------------------------------------------------

class Attack:
    """What an attack is given: the ports, when to stop, and a note for its row."""

    def __init__(self, mc_port: int, ns_port: int, max_connections: int) -> None:
        self.mc_port = mc_port
        self.ns_port = ns_port
        self.max_connections = max_connections
        self.stop = threading.Event()
        self.note = ""

    def connect(self, port: int, timeout: float = 5.0) -> socket.socket:
        s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return s


def close_all(socks: List[socket.socket]) -> None:
    for s in socks:
        try:
            s.close()
        except OSError:
            pass


def attack_multiget(a: Attack) -> None:
    """5 connections each asking for 300 copies of the 1 MB key, reading slowly."""
    line = b"get " + b" ".join([BIG_KEY] * 300) + b"\r\n"
    socks = []
    for _ in range(5):
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        s.settimeout(5)
        s.connect(("127.0.0.1", a.mc_port))
        s.sendall(line)
        s.setblocking(False)
        socks.append(s)
    got = 0
    while not a.stop.wait(0.02):
        for s in socks:
            try:
                got += len(s.recv(16384))
            except BlockingIOError:
                pass
            except OSError:
                pass
    close_all(socks)
    a.note = "read %.0f MB of %d MB asked" % (got / MB, 5 * 300)


def _endure_frames(n: int) -> bytes:
    from txcb.wire.netstring import (
        ENDURE_BODY, OPT_CHECK_REMOVED, Op, encode_request, netstring)
    body = ENDURE_BODY.pack(3600 * 1000, 10)  # an hour's timeout
    return b"".join(netstring(encode_request(Op.ENDURE, i + 1, key=SMALL_KEY, value=body,
                                             options=OPT_CHECK_REMOVED)) for i in range(n))


def attack_endure(a: Attack) -> None:
    """4,000 ENDUREs (an hour's timeout) on 40 netstring connections that then close."""
    frames = _endure_frames(100)
    rounds = 0
    while not a.stop.is_set():
        socks = []
        for _ in range(40):
            s = a.connect(a.ns_port)
            s.sendall(frames)
            socks.append(s)
        a.stop.wait(1.0)
        close_all(socks)
        rounds += 1
        a.stop.wait(1.0)
    a.note = "%d x 4,000 ENDUREs" % rounds


def attack_trickle(a: Attack) -> None:
    """A 10 MiB netstring frame (an UPSERT) sent 1 byte per write."""
    from txcb.wire.netstring import Op, encode_request, netstring
    frame = netstring(encode_request(Op.UPSERT, 1, key=b"soak-trickle", value=b"t" * (10 * MB)))
    s = a.connect(a.ns_port)
    sent = 0
    send = s.send
    view = memoryview(frame)
    try:
        while sent < len(frame) - 1 and not a.stop.is_set():
            for _ in range(1000):
                send(view[sent:sent + 1])
                sent += 1
    except OSError as e:
        a.note = "%s after " % (type(e).__name__,)
    s.close()
    a.note += "%.2f MB sent" % (sent / MB)


def attack_pending(a: Attack) -> None:
    """Connections that ask for 1 MB values 50 at a time, read nothing, and close."""
    line = b"get %s\r\n" % BIG_KEY * 50
    n = 0
    while not a.stop.is_set():
        socks = []
        for _ in range(10):
            s = a.connect(a.mc_port)
            s.sendall(line)
            socks.append(s)
        a.stop.wait(0.5)
        for s in socks:  # close with the replies unread: a reset, nothing drained
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        close_all(socks)
        n += len(socks)
        a.stop.wait(0.5)
    a.note = "%d connections closed with 50 MB pending" % n


def attack_connections(a: Attack) -> None:
    """
    2,000 connections over --max-connections, opened without waiting (as
    many clients would) and reopened as the server refuses them.
    """
    want = a.max_connections + 2000
    socks: List[socket.socket] = []
    opened = refused = 0
    while not a.stop.is_set():
        held = [s for s in socks if _open(s)]  # the server closes those it refuses
        refused += len(socks) - len(held)
        socks = held
        while len(socks) < want:
            s = socket.socket()
            s.setblocking(False)
            s.connect_ex(("127.0.0.1", a.mc_port))
            socks.append(s)
            opened += 1
        a.stop.wait(0.5)
    close_all(socks)
    a.note = "%d connects, %d closed by the server" % (opened, refused)


def _open(s: socket.socket) -> bool:
    """
    Whether ``s`` is connected or connecting; if the server closed it, or
    sent it anything (the refusal: these sockets ask nothing), it is closed: False.
    """
    try:
        s.recv(4096)
        s.close()
        return False
    except BlockingIOError:
        return True
    except OSError as e:
        if e.errno == errno.ENOTCONN:  # the handshake is not done yet
            return True
        s.close()
        return False


def attack_flush(a: Attack) -> None:
    """300,000 items set (pipelined, noreply), then flush_all; again while time is left."""
    s = a.connect(a.mc_port, timeout=60)
    f = s.makefile("rb")
    rounds = 0
    while not a.stop.is_set():
        for start in range(0, 300000, 5000):
            s.sendall(b"".join(b"set soak-item-%d 0 0 10 noreply\r\n0123456789\r\n" % i
                               for i in range(start, start + 5000)))
        s.sendall(b"version\r\n")  # the sets are done when this is answered
        f.readline()
        s.sendall(b"flush_all\r\n")
        if f.readline() != b"OK\r\n":
            a.note = "flush_all not answered OK; "
            break
        seed(a.mc_port)  # the good client's keys, flushed with the rest
        rounds += 1
    s.close()
    a.note += "%d x (300,000 sets + flush_all)" % rounds


ATTACKS: List[Tuple[str, str, Callable[[Attack], None]]] = [
    ("multiget", "get of 300 x 1 MB key on 5 slow readers", attack_multiget),
    ("endure", "4,000 ENDUREs, connections close", attack_endure),
    ("trickle", "10 MiB frame, 1-byte writes", attack_trickle),
    ("pending", "close with big replies pending", attack_pending),
    ("conns", "2,000 over --max-connections", attack_connections),
    ("flush", "flush of 300,000 items", attack_flush),
]


# -- the run ----------------------------------------------------------------------

def start_server(out_dir: str, persistent: bool, max_connections: int) -> Tuple[Server, int]:
    """``twistd -n txcb`` on two free ports: -> (the server, its memcached port)."""
    os.makedirs(out_dir)
    ns_port, mc_port = free_port(), free_port()
    name = "txcb-persistent" if persistent else "txcb-ephemeral"
    log = os.path.join(out_dir, name + ".log")
    argv = twistd_in(ROOT) + [
        "-n", "--pidfile=", "--logfile", log + ".twistd", "txcb",
        "--port", "tcp:%d:interface=127.0.0.1" % ns_port,
        "--memcached", "tcp:%d:interface=127.0.0.1" % mc_port,
        "--max-connections", str(max_connections)]
    argv += ["--data-dir", os.path.join(out_dir, "data")] if persistent else ["--ephemeral"]
    server = Server(name, argv, ns_port, log, root=ROOT, cwd=out_dir)
    server.wait_ready()
    deadline = time.monotonic() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", mc_port), timeout=1).close()
            break
        except OSError:
            if time.monotonic() > deadline:
                server.stop()
                raise RuntimeError("%s: memcached port %d not listening" % (name, mc_port))
            time.sleep(0.05)
    seed(mc_port)
    return server, mc_port


def seed(mc_port: int) -> None:
    """Store the good client's keys: 100 bytes and 1 MB."""
    s = socket.create_connection(("127.0.0.1", mc_port), timeout=10)
    f = s.makefile("rb")
    for key, size in ((SMALL_KEY, 100), (BIG_KEY, MB)):
        s.sendall(b"set %s 0 0 %d\r\n%s\r\n" % (key, size, b"v" * size))
        if f.readline() != b"STORED\r\n":
            raise RuntimeError("could not store %s" % key.decode())
    s.close()


def run_attack(server: Server, mc_port: int, name: str, fn: Callable[[Attack], None],
               a: argparse.Namespace) -> Dict[str, Any]:
    """Before, during and after one attack: -> its row."""
    pid = server.pid
    before = Probe(mc_port, a.window).result(a.window + 30)
    rss0, cpu0 = rss_bytes(pid), cpu_seconds(pid)
    attack = Attack(mc_port, server.port, a.max_connections)
    sampler = Sampler(pid, a.rss_cap_mb * MB, attack)
    during_probe = Probe(mc_port, a.seconds)
    thread = threading.Thread(target=_run_safely, args=(fn, attack), daemon=True)
    thread.start()
    during = during_probe.result(a.seconds + 60)
    attack.stop.set()
    thread.join(120)
    peak = sampler.stop()
    cpu = cpu_seconds(pid) - cpu0
    time.sleep(a.settle)
    after = Probe(mc_port, a.window).result(a.window + 30)
    alive = server.proc.poll() is None
    rss1 = rss_bytes(pid) if alive else 0
    row = {"attack": name, "server": server.name, "server_pid": pid, "rss_before": rss0,
           "rss_during": peak, "rss_after": rss1, "cpu_during": cpu,
           "p99_before": before["p99"], "p99_during": during["p99"],
           "p99_after": after["p99"], "note": attack.note.strip(),
           "errors": [p["error"] for p in (before, during, after) if p["error"]]}
    if not alive:
        row["errors"].append("the server exited (%s)" % server.proc.returncode)
    row["rss_ok"] = alive and rss1 <= 1.10 * rss0
    row["p99_ok"] = (after["p99"] is not None and before["p99"] is not None
                     and after["p99"] <= 2 * before["p99"])
    row["ok"] = row["rss_ok"] and row["p99_ok"]
    return row


def _run_safely(fn: Callable[[Attack], None], attack: Attack) -> None:
    try:
        fn(attack)
    except Exception as e:  # the row says what went wrong; the run goes on
        attack.note += " attack failed: %s: %s" % (type(e).__name__, e)


def _ms(v: Optional[float]) -> str:
    return "-" if v is None else "%.1f" % v


def print_row(row: Dict[str, Any]) -> None:
    rss = "%6.0f %7.0f %6.0f" % (row["rss_before"] / MB, row["rss_during"] / MB,
                                 row["rss_after"] / MB)
    p99 = "%7s %8s %7s" % (_ms(row["p99_before"]), _ms(row["p99_during"]),
                           _ms(row["p99_after"]))
    why = [] if row["ok"] else (([] if row["rss_ok"] else ["RSS"])
                                + ([] if row["p99_ok"] else ["p99"]))
    verdict = "PASS" if row["ok"] else "FAIL (%s)" % ", ".join(why)
    print("%-9s %s %7.1f  %s  %-15s %s" % (row["attack"], rss, row["cpu_during"], p99,
                                          verdict, row["note"]), flush=True)
    for e in row["errors"]:
        print("          ! %s" % (e,), flush=True)


HEADER = ("%-9s %6s %7s %6s %7s  %7s %8s %7s  %-15s %s\n" % (
    "", "RSS MB", "", "", "CPU s", "p99 ms", "", "", "", "") + "%-9s %6s %7s %6s %7s  %7s %8s "
    "%7s  %-15s %s" % ("attack", "before", "during", "after", "during", "before", "during",
                       "after", "result", "note"))


def soak(a: argparse.Namespace, persistent: bool) -> List[Dict[str, Any]]:
    """
    Every chosen attack, each against a server of its own (so that what one
    leaves behind is not the next one's starting point); -> the rows.
    """
    out_dir = tempfile.mkdtemp(prefix="txcb-soak-")
    rows = []
    print("\n%s bucket, a new server per attack, %ss per attack, %ss windows; logs in %s"
          % ("persistent" if persistent else "ephemeral", a.seconds, a.window, out_dir),
          flush=True)
    print(HEADER, flush=True)
    for name, _title, fn in ATTACKS:
        if a.only and name not in a.only:
            continue
        server, mc_port = start_server(os.path.join(out_dir, name), persistent,
                                       a.max_connections)
        try:
            row = run_attack(server, mc_port, name, fn, a)
        finally:
            server.stop()
        print_row(row)
        rows.append(row)
    if rows and all(r["ok"] for r in rows):
        shutil.rmtree(out_dir, ignore_errors=True)
    return rows


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.strip().split(
        "\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter, epilog="attacks: "
        + "; ".join("%s (%s)" % (n, t) for n, t, _ in ATTACKS))
    p.add_argument("--seconds", type=float, default=15.0,
                   help="how long each attack runs (default 15)")
    p.add_argument("--window", type=float, default=5.0,
                   help="the good client's window before and after each attack (default 5)")
    p.add_argument("--settle", type=float, default=3.0,
                   help="seconds between an attack's end and the after window (default 3)")
    p.add_argument("--only", default="", help="comma-separated attacks to run")
    p.add_argument("--persistent", action="store_true",
                   help="also soak a persistent bucket (--data-dir in a temporary directory)")
    p.add_argument("--max-connections", type=int, default=MAX_CONNECTIONS,
                   help="the server's --max-connections (default %d)" % MAX_CONNECTIONS)
    p.add_argument("--rss-cap-mb", type=int, default=6000,
                   help="stop an attack when the server's RSS passes this (default 6000)")
    p.add_argument("--json", metavar="PATH", help="also write the rows as JSON")
    p.add_argument("--probe", nargs=2, metavar=("PORT", "SECONDS"), help=argparse.SUPPRESS)
    a = p.parse_args(argv)
    if a.probe:
        print(json.dumps(probe(int(a.probe[0]), float(a.probe[1]))), flush=True)
        return 0
    a.only = [n for n in a.only.split(",") if n]
    unknown = set(a.only) - {n for n, _, _ in ATTACKS}
    if unknown:
        p.error("unknown attack(s): %s" % ", ".join(sorted(unknown)))
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < a.max_connections + 2500:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, a.max_connections + 3000), hard))
    rows = soak(a, persistent=False)
    if a.persistent:
        rows += soak(a, persistent=True)
    passed = sum(r["ok"] for r in rows)
    print("\n%d of %d attacks PASS (after: RSS within 10%% of before, p99 within 2x)"
          % (passed, len(rows)), flush=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return 0 if passed == len(rows) else 1


if __name__ == "__main__":
    sys.exit(main())
