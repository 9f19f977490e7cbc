"""Bring-your-own-kernel: the conformance suite and the benchmarks, pointed at tests/byo_example.py.

Each test runs pytest in a child process, as a user would from the command line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import summarize

REPO = Path(__file__).resolve().parent.parent
# A quick subset: the float64 comparison with the loop reference (one reduction), gradcheck, the
# no-positive edge cases.
CONFORMANCE_SUBSET = "(float64_matches_loop_reference and sum) or gradcheck or no_positive"


def _pytest(*args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-o", "addopts=", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


@pytest.mark.slow
def test_conformance_passes_a_correct_user_kernel():
    proc = _pytest(
        "tests/test_conformance.py", "--impl", "tests.byo_example:correct_supcon", "-k", CONFORMANCE_SUBSET
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert " passed" in proc.stdout
    assert " failed" not in proc.stdout


@pytest.mark.slow
def test_conformance_fails_a_wrong_user_kernel():
    proc = _pytest(
        "tests/test_conformance.py",
        "--impl",
        "tests.byo_example:self_in_denominator_supcon",
        "-k",
        CONFORMANCE_SUBSET,
    )
    assert proc.returncode == 1, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "FAILED tests/test_conformance.py::test_float64_matches_loop_reference" in proc.stdout


@pytest.mark.slow
def test_benchmarks_run_a_user_kernel_and_record_out_of_memory(tmp_path):
    pytest.importorskip("pytest_benchmark")
    correct, oom = "tests.byo_example:correct_supcon", "tests._bench_probes:always_out_of_memory"
    out = tmp_path / "bench.json"
    proc = _pytest(
        "benchmarks/test_supcon_bench.py",
        "--impl",
        correct,
        "--impl",
        oom,
        "--bench-impls",
        f"{correct},{oom},default,matmul_floor",
        "--bench-n",
        "16,32",
        "--bench-d",
        "8",
        "--bench-no-memory",
        "--bench-budget",
        "0.01",
        f"--benchmark-json={out}",
        "-rs",
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    data = json.loads(out.read_text())
    timed = {(b["extra_info"]["impl"], b["extra_info"]["n"]) for b in data["benchmarks"]}
    assert timed == {(name, n) for name in (correct, "default", "matmul_floor") for n in (16, 32)}
    assert all(
        b["extra_info"]["kind"] == "user" for b in data["benchmarks"] if b["extra_info"]["impl"] == correct
    )
    assert sorted(
        (u["extra_info"]["impl"], u["extra_info"]["n"], u["status"]) for u in data["unfinished"]
    ) == [(oom, 16, "oom"), (oom, 32, "oom")]
    assert "out of memory" in proc.stdout
    report = summarize.main([str(out)])
    assert f"| {correct} |" in report
    assert f"| {oom} | OOM |" in report
