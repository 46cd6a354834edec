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
import platform
import shutil
import subprocess
import sys

import pytest
from twisted.trial.unittest import SynchronousTestCase

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


def _pypy_with_twisted():
    """A PyPy that can run the harness's servers and clients, or why there is none."""
    path = os.environ.get("TXCB_PYPY_PYTHON") or shutil.which("pypy3")
    if path is None:
        return None, ("no PyPy: set TXCB_PYPY_PYTHON to a PyPy venv's python with "
                      "txcb's test extra, or install pypy3")
    out = subprocess.run([path, "-c", "import platform, twisted; "
                          "assert platform.python_implementation() == 'PyPy'"],
                         capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        return None, ("%s is not a PyPy with Twisted (set TXCB_PYPY_PYTHON to a PyPy "
                      "venv's python with txcb's test extra): %s"
                      % (path, "".join(out.stderr.strip().splitlines()[-1:])))
    return path, None


def _run_pythons(tmp_path, pythons, only, extra=()):
    env = dict(os.environ)
    env["PYTHONPATH"] = ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH")
                                else "")
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--pythons", pythons, "--only", only,
         "--duration", "0.1", "--warmup", "0.05", "--rounds", "1", "--out", str(tmp_path)]
        + list(extra), cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    [name] = [n for n in os.listdir(str(tmp_path)) if n.endswith(".json")]
    with open(os.path.join(str(tmp_path), name)) as f:
        return proc.stdout, json.load(f)


def _check_pythons_report(report, names):
    tree = os.path.join(os.path.realpath(ROOT), "txcb")
    assert sorted(report["meta"]["interpreters"]) == sorted(names)
    for it in report["meta"]["interpreters"].values():
        assert it["txcb_from"] == tree, it
        assert it["plugin_from"].startswith(os.path.realpath(ROOT) + os.sep), it
    for r in report["results"]:
        assert "fatal" not in r and not r["errors"] and r["ops_per_s"] > 0, r
        if r["client"] == "txcb" and r["client_python"] != "-":  # not memcaslap
            assert r["txcb_from"] == tree, r
    pids = report["meta"]["server_pids"]
    assert pids and [n for n, pid in pids.items() if _alive(pid)] == []


@needs_memcached
def test_bench_pythons_smoke(tmp_path):
    """``--pythons`` on this interpreter: rows named by interpreter, targets per interpreter."""
    memcaslap = all(shutil.which(t) for t in ("memcaslap", "nutcracker"))
    out, report = _run_pythons(tmp_path, "here=" + sys.executable, "get1,persist,memory"
                               + (",memcaslap" if memcaslap else ""), ["--items", "3000"])
    _check_pythons_report(report, ["here"])
    rows = {(r["workload"], r["client"], r["server_python"], r["client_python"])
            for r in report["results"]}
    if memcaslap:  # memcaslap's rows where it is installed (apt-get install libmemcached-tools)
        assert {("memcaslap", c, s, "-") for c, s in (
            ("txcb", "here"), ("nutcracker", "-"), ("direct", "-"))} <= rows, rows
        rows -= {r for r in rows if r[0] == "memcaslap"}
    assert rows == {("get1", "txcb", "here", "here"), ("get1", "mcp", "-", "here"),
                    ("set100", "txcb", "here", "here"), ("set100", "mcp", "-", "here"),
                    ("persist", "txcb", "here", "here"),
                    ("persist_to1", "txcb", "here", "here")}, rows
    assert [m["server_python"] for m in report["memory"]] == ["here", "-"]
    assert all(m["bytes_per_item"] > 0 for m in report["memory"]), report["memory"]
    labels = {t["target"]: t for t in report["targets"]}
    assert labels["persistent plain upserts / ephemeral"]["ratio"] > 0
    assert labels["server RSS per item at 3,000 x 100 B vs memcached"]["ratio"] > 0
    assert "targets, all on here" in out, out


@needs_memcached
def test_bench_pythons_pypy_smoke(tmp_path):
    """CPython and PyPy side by side: both interpreters' rows, each running this tree."""
    pypy, why = _pypy_with_twisted()
    if pypy is None:
        pytest.skip(why)
    _out, report = _run_pythons(tmp_path, "cpython=%s,pypy=%s" % (sys.executable, pypy),
                                "get1")
    _check_pythons_report(report, ["cpython", "pypy"])
    assert report["meta"]["interpreters"]["pypy"]["impl"] == "PyPy"
    rows = {(r["client"], r["server_python"], r["client_python"]) for r in report["results"]}
    assert rows == {("txcb", "cpython", "cpython"), ("txcb", "pypy", "pypy"),
                    ("mcp", "-", "cpython"), ("mcp", "-", "pypy")}, rows


class BenchPythonsOptionTests(SynchronousTestCase):
    """How --pythons, --server-python and --client-python become rows (no processes)."""

    def _interps(self):
        from bench.runtimes import Interp
        return (Interp("cpython", "/usr/bin/python3", "CPython", "3.11"),
                Interp("pypy", "/usr/bin/pypy3", "PyPy", "3.9 (PyPy 7.3)"))

    def test_specs_are_repeatable_and_comma_separated(self):
        from bench.runtimes import _specs
        self.assertEqual(_specs(["a=/x,/y", " b=/z "]),
                         [("a", "/x"), (None, "/y"), ("b", "/z")])

    def test_a_row_is_workload_client_server_and_client_interpreter(self):
        from bench.runtimes import plan_rows
        cp, pp = self._interps()
        rows = plan_rows([(pp, cp), (pp, pp)], ["memcaslap", "get1"])
        self.assertEqual(
            [(r["workload"], r["client"], r["server_python"], r["client_python"])
             for r in rows],
            [("memcaslap", "txcb", "pypy", "-"), ("memcaslap", "nutcracker", "-", "-"),
             ("memcaslap", "direct", "-", "-"), ("get1", "txcb", "pypy", "cpython"),
             ("get1", "txcb", "pypy", "pypy"), ("get1", "mcp", "-", "cpython"),
             ("get1", "mcp", "-", "pypy")])

    def test_persist_brings_the_ephemeral_upserts_it_is_compared_with(self):
        from bench.runtimes import plan_rows
        cp, _pp = self._interps()
        rows = plan_rows([(cp, cp)], ["persist"])
        self.assertEqual([r["workload"] for r in rows],
                         ["set100", "set100", "persist", "persist_to1"])

    def test_targets_follow_the_interpreter(self):
        from bench.runtimes import targets
        cp, pp = self._interps()
        results = [
            {"workload": "memcaslap", "client": "txcb", "server_python": "pypy",
             "client_python": "-", "ops_per_s": 90.0},
            {"workload": "memcaslap", "client": "direct", "server_python": "-",
             "client_python": "-", "ops_per_s": 100.0},
            {"workload": "memcaslap", "client": "nutcracker", "server_python": "-",
             "client_python": "-", "ops_per_s": 60.0},
            {"workload": "get1", "client": "txcb", "server_python": "pypy",
             "client_python": "cpython", "ops_per_s": 10.0},
            {"workload": "get1", "client": "mcp", "server_python": "-",
             "client_python": "cpython", "ops_per_s": 10.0}]
        got = {(t["target"], t["client_python"]): (t["want"], t["met"])
               for t in targets(results, [], [(pp, cp)])}
        self.assertEqual(got, {
            ("memcaslap 90/10 vs memcached", "-"): (1.0, False),  # PyPy's anchor
            ("memcaslap 90/10 vs nutcracker -> memcached", "-"): (None, None),
            # a mixed pair gets its ratio, no target
            ("netstring get, one at a time vs MemCacheProtocol", "cpython"): (None, None)})

    def test_server_and_client_pythons_pair_every_server_with_every_client(self):
        import argparse

        from bench.runtimes import parse_pythons
        a = argparse.Namespace(pythons=["x=%s" % sys.executable],
                               server_python=["s1=%s,s2=%s" % (sys.executable, sys.executable)],
                               client_python=["x=%s" % sys.executable])
        pairs = parse_pythons(a)
        self.assertEqual([(s.name, c.name) for s, c in pairs],
                         [("x", "x"), ("s1", "x"), ("s2", "x")])
        self.assertEqual({s.impl for s, _c in pairs}, {platform.python_implementation()})

    def test_a_bad_interpreter_is_a_one_line_error(self):
        proc = subprocess.run(
            [sys.executable, "-m", "bench", "--server-python", "/nonexistent/python"],
            cwd=ROOT, capture_output=True, text=True, timeout=60)
        self.assertEqual(proc.returncode, 2, proc.stderr)
        self.assertEqual(proc.stderr.strip(),
                         "bench: cannot run /nonexistent/python: No such file or directory")
