"""The benchmark machinery (benchmarks/), checked quickly: memory method, summary maths, GPU script.

The benchmarks themselves are not tests; these check that what they report is right.
"""

from __future__ import annotations

import json
import sys

import pytest
import torch

from benchmarks import gpu_check, summarize
from benchmarks._cases import Case
from benchmarks._memory import subprocess_peak_extra_bytes
from benchmarks._registry import build_registry, matmul_floor

MIB = 1024**2
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="the CPU memory probe reads /proc"
)


@linux_only
@pytest.mark.slow
def test_memory_probe_sees_a_known_allocation():
    spec = "tests._bench_probes:allocate_64_mib"
    case = Case(n=16, d=8, dtype="float32", device="cpu")
    result = subprocess_peak_extra_bytes(spec, case, [spec])
    assert result["status"] == "ok", result
    # 64 MiB written, plus the small loss itself and allocator slack; a little below 64 MiB is
    # possible when the kernel evicts some of the child's file-backed pages (shared libraries)
    # during the call on a machine short of memory.
    peak = result["peak_extra_bytes"]
    assert 60 * MIB <= peak <= 80 * MIB, f"measured {peak / MIB:.1f} MiB for a 64 MiB allocation"


@linux_only
@pytest.mark.slow
def test_memory_probe_sees_the_dense_references_n_squared_matrices():
    case = Case(n=1024, d=16, dtype="float32", device="cpu")
    result = subprocess_peak_extra_bytes("reference_dense", case, [])
    assert result["status"] == "ok", result
    assert result["peak_extra_bytes"] >= 2 * 1024 * 1024 * 4  # at least two live N×N float32 matrices


def test_matmul_floor_runs_its_three_products_blockwise():
    z = torch.randn(300, 5)
    out = matmul_floor(z)
    out.backward()  # a no-op, but must not raise: the benchmark calls it
    assert out.shape == ()


def test_registry_has_our_paths_peers_and_floor():
    registry = build_registry()
    kinds = {name: impl.kind for name, impl in registry.items()}
    assert kinds["default"] == "library"
    assert kinds["reference_dense"] == "peer"
    assert kinds["matmul_floor"] == "floor"
    x = torch.randn(12, 6, requires_grad=True)
    y = torch.arange(12) % 3
    expected = build_registry()["reference_dense"].fn(x.double(), y, temperature=0.5)
    for name, impl in registry.items():
        if impl.kind in ("library", "peer"):  # every entry computes the same loss
            torch.testing.assert_close(
                impl.fn(x, y, temperature=0.5).double(),
                expected,
                rtol=1e-4,
                atol=1e-5,
                msg=lambda m, name=name: f"{name}: {m}",
            )


def _bench(impl, kind, n, median, peak, device_type="cpu", dtype="float32", d=768):
    info = {
        "impl": impl,
        "kind": kind,
        "n": n,
        "d": d,
        "dtype": dtype,
        "device_type": device_type,
        "device_name": "test-cpu",
        "torch_version": "x",
        "peak_extra_bytes": peak,
    }
    return {"extra_info": info, "stats": {"median": median, "min": median, "mean": median, "rounds": 3}}


def test_summary_ratios_targets_and_out_of_memory(tmp_path):
    data = {
        "datetime": "2026-01-01T00:00:00",
        "benchmarks": [
            _bench("default", "library", 2048, 0.30, 10 * MIB),
            _bench("reference_dense", "peer", 2048, 0.40, 100 * MIB),
            _bench("pml", "peer", 2048, 0.25, 120 * MIB),
            _bench("matmul_floor", "floor", 2048, 0.10, 5 * MIB),
            _bench("default", "library", 8192, 2.0, 20 * MIB),
            _bench("reference_dense", "peer", 8192, 3.0, 1000 * MIB),
        ],
        "unfinished": [
            {"extra_info": _bench("pml", "peer", 8192, None, None)["extra_info"], "status": "oom"}
        ],
    }
    path = tmp_path / "bench.json"
    path.write_text(json.dumps(data))
    report = summarize.main(
        [str(path), "--markdown", str(tmp_path / "r.md"), "--plot", str(tmp_path / "r.png")]
    )
    # 0.30 s against a 0.10 s floor and a 0.25 s best peer (pml, not the slower dense reference).
    assert "| test-cpu | float32 | 2,048 | 768 | default | 300.0 ms | 10.0 MiB | 3.00× | 1.20× |" in report
    assert "| test-cpu | float32 | 8,192 | 768 | pml | OOM | – | – | – |" in report
    # Targets: slower than the best peer at N = 2048 (FAIL); 20/1000 MiB at N = 8192 (PASS).
    assert (
        "| CPU fp32 N=2,048 D=768: default not slower than the best peer | 1.20× best peer | FAIL |" in report
    )
    assert (
        "| CPU fp32 N=8,192 D=768: peak memory ≤ 0.25× the dense reference's | 0.02× dense reference | PASS |"
        in report
    )
    assert "| GPU fp32 N=32,768 D=1024: ≤ 1.25× the three-product floor | not measured | – |" in report
    assert (tmp_path / "r.md").read_text() == report.split("\nplot:")[0]
    assert (tmp_path / "r.png").stat().st_size > 0


@pytest.mark.slow
def test_gpu_script_runs_end_to_end_in_cpu_smoke_mode(tmp_path):
    pytest.importorskip("pytest_benchmark")
    assert gpu_check.main(["--cpu-smoke", "--no-memory", "--out", str(tmp_path)]) == 0
    correctness = json.loads((tmp_path / "correctness.json").read_text())
    names = {c["impl"] for c in correctness}
    assert {"default", "dense", "blocked", "reference_dense"} <= names
    assert all(c["ok"] for c in correctness)
    # Every path of ours in every dtype, half precision held to the contract.
    ours = {(c["impl"], c["dtype"]) for c in correctness if c["kind"] == "library"}
    assert {
        (i, d) for i in ("default", "dense", "blocked") for d in ("float32", "bfloat16", "float16")
    } <= ours
    assert all(c["grad_err_vs_rounding"] <= 2.0 for c in correctness if "grad_err_vs_rounding" in c)
    syncs = json.loads((tmp_path / "syncs.json").read_text())
    assert {(c["fn"], c["path"]) for c in syncs} == {
        (fn, path) for fn in ("supcon_loss", "scl_cross_entropy") for path in ("dense", "blocked")
    }
    assert all(c["ok"] and c["syncs"] == 0 for c in syncs)
    kernels = json.loads((tmp_path / "kernels.json").read_text())
    assert kernels["default"]["aten_ops"] > 0
    assert kernels["scl_cross_entropy"]["aten_ops"] > 0
    half = json.loads((tmp_path / "half_gradient.json").read_text())
    assert half["hi+lo"]["fwd_bwd_seconds"] > 0
    assert half["hi+lo"]["grad_error_vs_rounding"] <= 2.0
    largest = json.loads((tmp_path / "largest_batch.json").read_text())
    if "skipped" not in largest:  # needs transformers (the glue extra)
        assert largest["plain"]["largest_batch"] >= 1
        assert largest["cached"]["largest_batch"] >= 1
    report = (tmp_path / "benchmarks.md").read_text()
    assert "| default |" in report
    assert "Largest all-mpnet-base-v2 batch" in report
    assert "checks passed" in report
    assert "calls without a host sync" in report
    assert "| hi+lo |" in report
    assert (tmp_path / "benchmarks.png").exists()
