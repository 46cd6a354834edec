"""
Smoke test of the benchmark harness (bench/): ``python -m bench --smoke``
starts real servers (memcached, twistd txcb, the echo server), runs every
workload for a twentieth of a second (all jobs in one client process),
prints the table, writes the JSON and stops what it started; and
``python -m bench --baseline DIR`` with this tree as its own baseline.  They
check that the harness works, not how fast anything is: no timed assertions.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from tests.support import ROOT


needs_memcached = pytest.mark.skipif(
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


@needs_memcached
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


def test_bench_baseline_smoke(tmp_path):
    """``--baseline`` with this tree as its own baseline: the A/B table and its JSON."""
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--baseline", ROOT, "--only", "get1,getmulti",
         "--duration", "0.1", "--warmup", "0.05", "--rounds", "1", "--out", str(tmp_path)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    # 3: a row came out more than 5% slower, which two runs of one tree may well do.
    assert proc.returncode in (0, 3), proc.stdout[-3000:] + proc.stderr[-3000:]
    lines = proc.stdout.splitlines()
    header = [ln for ln in lines if ln.startswith("row ")]
    assert len(header) == 1 and "baseline" in header[0] and "current" in header[0], lines
    rows = {ln.split()[0]: ln.split() for ln in lines[lines.index(header[0]):]
            if ln.split() and ln.split()[0] in ("get1", "getmulti", "set1")}
    assert set(rows) == {"get1", "getmulti"}, proc.stdout
    for row in rows.values():
        assert row[-3] in ("ok", "NO"), row  # the ratio could be taken
        assert float(row[-4]) > 0, row
    [name] = [n for n in os.listdir(str(tmp_path)) if n.endswith(".json")]
    with open(os.path.join(str(tmp_path), name)) as f:
        report = json.load(f)
    assert [r["row"] for r in report["rows"]] == ["get1", "getmulti"]
    for r in report["rows"]:
        assert r["ratio"] == r["current"]["ops_per_s"] / r["baseline"]["ops_per_s"], r
        assert r["ok"] is (r["ratio"] >= 0.95), r
        for side in ("baseline", "current"):
            assert r[side]["ops"] > 0 and not r[side]["errors"], r
            assert r[side]["txcb_from"] == os.path.join(os.path.realpath(ROOT), "txcb")
    pids = report["meta"]["server_pids"]
    assert set(pids) == {"baseline-ephemeral", "current-ephemeral"}, pids
    assert [n for n, pid in pids.items() if _alive(pid)] == []


def test_soak_smoke(tmp_path):
    """
    ``python -m bench.soak`` for a fraction of a second per window, two of
    its attacks: the table and its JSON come out, every figure measured, and
    the server it started is stopped.  Whether an attack PASSes is not checked.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    out = str(tmp_path / "soak.json")
    proc = subprocess.run(
        [sys.executable, "-m", "bench.soak", "--only", "trickle,conns", "--seconds", "0.5",
         "--window", "0.3", "--settle", "0", "--json", out],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode in (0, 1), proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "attacks PASS" in proc.stdout, proc.stdout
    with open(out) as f:
        rows = json.load(f)
    assert [r["attack"] for r in rows] == ["trickle", "conns"]
    for r in rows:
        assert r["errors"] == [] and "attack failed" not in r["note"], r
        assert 0 < r["rss_before"] <= r["rss_during"] and r["rss_after"] > 0, r
        assert r["cpu_during"] >= 0, r
        for phase in ("before", "during", "after"):
            assert r["p99_" + phase] > 0, r
        assert r["ok"] is (r["rss_ok"] and r["p99_ok"]), r
        assert ("PASS" if r["ok"] else "FAIL") in proc.stdout
    assert "MB sent" in rows[0]["note"] and "connects" in rows[1]["note"], rows
    assert not _alive(rows[0]["server_pid"])
