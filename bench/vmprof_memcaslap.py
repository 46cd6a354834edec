"""
Where a ``twistd txcb --ephemeral --memcached`` server spends its time under
memcaslap 90/10 (100-byte values, -c 32), sampled with vmprof: the way to
profile the server on PyPy, where py-spy and cProfile do not see the JIT.

    python -m bench.vmprof_memcaslap --python /tmp/pypyenv/bin/python \\
        --vmprof-path /tmp/vmprof-pypy [--time 5] [--limit 25]

``--vmprof-path`` is a directory holding the vmprof package for that
interpreter (``pypy3 -m pip install --target DIR vmprof``), put on the
server's PYTHONPATH after this tree, so a venv is left as it is.  The server
runs this tree's txcb and plugin (as :mod:`bench.run` starts it); memcaslap
runs once unmeasured (the JIT warms up), then once profiled.  The server is
stopped by its pid; the table lists functions by the share of the samples
taken in the reactor loop in which they are running (self: time in a C call,
a send or a recv, counts for the Python function making it) and on the stack
(total), with the server's user and system CPU time.  For finding hot
spots, not for figures.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
from typing import List, Optional, Tuple

from bench import memcaslap_bench
from bench.run import ROOT, Server, free_port, twistd_in

_WRAP = ("import sys, vmprof, os; f = open(sys.argv.pop(1), 'w+b'); "
         "vmprof.enable(f.fileno(), period=0.0005)\n"
         "try:\n"
         "    exec(sys.argv.pop(1))\n"
         "finally:\n"
         "    vmprof.disable(); f.close()\n")

_REPORT = """\
import collections, sys, vmprof
stats = vmprof.read_profile(sys.argv[1])
limit = int(sys.argv[2])
names = stats.adr_dict
own, total, n = collections.Counter(), collections.Counter(), 0
for prof in stats.profiles:
    stack, count = prof[0], prof[1]
    frames = [names[a] for a in stack if a in names and names[a].startswith("py:")]
    if not any(":mainLoop:" in f for f in frames):
        continue  # start-up (imports, options), not serving
    n += count
    own[frames[-1]] += count
    for name in set(frames):
        total[name] += count
print("%d samples in the reactor loop" % n)
print("%6s %6s  %s" % ("self%", "total%", "function (file:line)"))
for name, c in own.most_common(limit):
    _py, func, line, path = name.split(":", 3)
    print("%6.1f %6.1f  %s (%s:%s)" % (100.0 * c / n, 100.0 * total[name] / n, func,
          "/".join(path.split("/")[-3:]), line))
print("\\nby total (on the stack):")
for name, c in total.most_common(limit):
    _py, func, line, path = name.split(":", 3)
    print("%6s %6.1f  %s (%s:%s)" % ("", 100.0 * c / n, func,
          "/".join(path.split("/")[-3:]), line))
"""


def user_system(pid: int) -> Tuple[float, float]:
    """User and system CPU seconds of a process so far (Linux /proc)."""
    with open("/proc/%d/stat" % pid) as f:
        fields = f.read().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.vmprof_memcaslap")
    p.add_argument("--python", default=sys.executable, help="the server's interpreter")
    p.add_argument("--vmprof-path",
                   help="directory with the vmprof package for that interpreter (without: "
                   "only the server's user/system CPU split, on any interpreter)")
    p.add_argument("--time", type=int, default=5, help="profiled memcaslap seconds")
    p.add_argument("--limit", type=int, default=25)
    a = p.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="txcb-vmprof-")
    prof = os.path.join(workdir, "server.vmprof")
    port, mc_port = free_port(), free_port()
    base = twistd_in(ROOT, a.python)  # [python, -c, code, plugins dir]
    wrap = [a.python, "-c", _WRAP, prof, base[2]] if a.vmprof_path else base[:3]
    argv_ = wrap + [base[3], "-n", "--pidfile=",
                    "--logfile", os.path.join(workdir, "twistd.log"), "txcb", "--ephemeral",
                    "-p", "tcp:%d:interface=127.0.0.1" % port,
                    "--memcached", "tcp:%d:interface=127.0.0.1" % mc_port]
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [
        a.vmprof_path, os.environ.get("PYTHONPATH")]))
    srv = Server("txcb-vmprof", argv_, port, os.path.join(workdir, "server.out"),
                 cwd=workdir)
    try:
        srv.wait_ready()
        memcaslap_bench.wait_port(mc_port, srv.proc)
        for secs in (2, a.time):  # warm-up, then the profiled run
            opts = argparse.Namespace(time=secs, threads=1, concurrency=32, window="1k",
                                      binary=False)
            u0, s0 = user_system(srv.pid)
            r = memcaslap_bench.memcaslap(mc_port, opts, workdir, [srv.pid])
            u1, s1 = user_system(srv.pid)
            print("memcaslap %d s: %d ops/s, server CPU %.0f%% of a core (user %.1f s, "
                  "system %.1f s: %.0f%% in the kernel), %.1f us/op"
                  % (secs, r["tps"], 100 * r["server_cpu"], u1 - u0, s1 - s0,
                     100 * (s1 - s0) / max(u1 - u0 + s1 - s0, 1e-9),
                     r["server_cpu"] * 1e6 / max(r["tps"], 1)), flush=True)
    finally:
        srv.stop()
    code = 0
    if a.vmprof_path:
        code = subprocess.run([a.python, "-c", _REPORT, prof, str(a.limit)],
                              env=dict(os.environ), cwd=workdir).returncode
    shutil.rmtree(workdir, ignore_errors=True)
    return code


if __name__ == "__main__":
    sys.exit(main())
