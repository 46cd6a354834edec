"""
Smoke test of the benchmark harness (bench/): ``python -m bench --smoke``
starts real servers (memcached, twistd txcb, the echo server), runs every
workload for a twentieth of a second (all jobs in one client process),
prints the table, writes the JSON and stops what it started.  It checks
that the harness works, not how fast anything is: no timed assertions.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT


pytestmark = pytest.mark.skipif(
    shutil.which("memcached") is None,
    reason="memcached is not installed (apt-get install memcached)")


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie is not alive
        with open("/proc/%d/stat" % pid) as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def test_bench_smoke(tmp_path):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--smoke", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = proc.stdout
    assert "ops/s" in out and "targets" in out, out
    [name] = [n for n in os.listdir(str(tmp_path)) if n.endswith(".json")]
    with open(os.path.join(str(tmp_path), name)) as f:
        report = json.load(f)
    assert report["ok"] is True
    results = report["results"]
    seen = {(r["workload"], r["client"]) for r in results}
    for workload in ("get1", "set1", "get100", "set100", "getmulti", "setmulti", "conn10",
                     "idle", "items_small", "items_large"):
        for client in ("txcb", "mcp"):
            assert (workload, client) in seen, (workload, client)
    assert ("getmulti", "pym") in seen and ("floor", "echo") in seen
    for r in results:
        assert "fatal" not in r and not r["errors"], r
        assert r["ops"] > 0 and r["ops_per_s"] > 0, r
        assert r["client_us_per_op"] is not None and r["server_us_per_op"] is not None, r
        assert r["p50_us"] is not None and r["p99_us"] >= r["p50_us"], r
    assert report["memory"]["bytes_per_item"]["txcb"] > 0
    assert report["memory"]["bytes_per_item"]["memcached"] > 0
    assert {t["target"] for t in report["targets"] if t["ratio"] is None} == set()
    # Every server the run started is stopped.
    pids = report["meta"]["server_pids"]
    assert set(pids) >= {"txcb", "memcached", "echo"}
    assert [name for name, pid in pids.items() if _alive(pid)] == []
