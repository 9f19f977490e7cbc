"""The one prepared GPU run: correctness on the card first, then the benchmark grid, then a report.

    python -m benchmarks.gpu_check --out results/gpu          # on an H100/H200, about 10 minutes
    python -m benchmarks.gpu_check --cpu-smoke --out /tmp/x   # the same steps at toy sizes on CPU

Steps, each writing into ``--out``:

1. ``correctness.json``: every implementation (our default and forced paths, the dense
   reference, pytorch-metric-learning, ``--impl`` ones) against the float64 references on the
   device: the loop reference at N = 16 and the float64 dense reference at sizes that straddle
   the blocked path's chunks, loss and gradient, in float32 and bfloat16 (the reference runs
   on the same rounded inputs). Peers are checked and reported; they do not fail the run.
2. ``kernels.json``: CUDA kernels launched by one forward+backward at N = 16 (torch.profiler),
   per implementation (on CPU: aten ops, to exercise the code only).
3. ``bench.json``: ``pytest benchmarks/test_supcon_bench.py --bench-preset gpu`` (time, peak
   extra memory, floor; out-of-memory cases recorded as such).
4. ``benchmarks.md`` + ``benchmarks.png``: :mod:`benchmarks.summarize` over the above.

Exits non-zero when a correctness check or the benchmark run failed; the report is written
either way.
"""

from __future__ import annotations

import argparse
import functools
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import torch

from benchmarks import summarize
from benchmarks._cases import DTYPES, Case, fwd_bwd_step, make_inputs, synchronize
from benchmarks._registry import build_registry
from scl_loss.functional import supcon_loss
from scl_loss.reference import supcon_loss_dense, supcon_loss_loop

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tolerances against float64 on the same (rounded) inputs: on the loss (relative, floor 1) and
# on the relative l2 error of the gradient. bf16 leaves room for kernels that compute in bf16.
TOLERANCES = {"float32": (1e-4, 1e-3), "bfloat16": (1e-2, 2e-2)}


def _correctness_impls(user_specs: list[str]) -> dict[str, tuple[str, object]]:
    """``{name: (kind, fn)}``: every benchmark row except the floor, plus a many-chunk blocked run."""
    impls = {
        name: (impl.kind, impl.fn)
        for name, impl in build_registry(user_specs).items()
        if impl.kind != "floor"
    }
    if "chunk_size" in inspect.signature(supcon_loss).parameters:
        # Small chunks, so a few hundred rows already cross several chunk boundaries.
        impls["blocked(chunk_size=64)"] = (
            "library",
            functools.partial(supcon_loss, path="blocked", chunk_size=64),
        )
    return impls


def check_correctness(device: str, sizes: tuple[int, ...], d: int, user_specs: list[str]) -> list[dict]:
    results = []
    impls = _correctness_impls(user_specs)
    for n in sizes:
        case = Case(n=n, d=d, dtype="float64", device=device, classes=max(2, n // 8), seed=n)
        x64, labels = make_inputs(case)
        reference = supcon_loss_loop if n <= 24 else supcon_loss_dense
        for dtype, (loss_tol, grad_tol) in TOLERANCES.items():
            # float64 on the inputs rounded to `dtype`: what is left is the kernel's own error.
            rounded = x64.detach().to(DTYPES[dtype]).double().requires_grad_()
            ref_loss = reference(rounded, labels, temperature=case.temperature)
            (ref_grad,) = torch.autograd.grad(ref_loss, rounded)
            for name, (kind, fn) in impls.items():
                x = x64.detach().to(DTYPES[dtype]).requires_grad_()
                entry = {
                    "impl": name,
                    "kind": kind,
                    "n": n,
                    "d": d,
                    "dtype": dtype,
                    "reference": reference.__name__,
                }
                try:
                    loss = fn(x, labels, temperature=case.temperature)
                    (grad,) = torch.autograd.grad(loss, x)
                    ref = float(ref_loss.detach())
                    loss_err = abs(float(loss.detach()) - ref) / max(1.0, abs(ref))
                    grad_err = float((grad.double() - ref_grad).norm() / ref_grad.norm().clamp(min=1e-30))
                    entry.update(
                        loss_rel_err=loss_err,
                        grad_rel_err=grad_err,
                        ok=bool(loss_err <= loss_tol and grad_err <= grad_tol),
                    )
                except Exception as error:  # a crash is a failed check, reported with the others
                    entry.update(ok=False, error=f"{type(error).__name__}: {error}"[:500])
                results.append(entry)
                errors = {k: v for k, v in entry.items() if k.endswith("err") or k == "error"}
                print(
                    f"correctness {name:24s} {dtype:8s} N={n:<6d} {'ok' if entry['ok'] else 'FAIL'} {errors}",
                    flush=True,
                )
    return results


def count_kernels(device: str, n: int, d: int, user_specs: list[str]) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    on_cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    report: dict = {"device_type": torch.device(device).type, "n": n, "d": d, "dtype": "float32"}
    for name, impl in build_registry(user_specs).items():
        if impl.kind == "floor":
            continue
        case = Case(n=n, d=d, dtype="float32", device=device)
        step = fwd_bwd_step(impl.fn, *make_inputs(case), case)
        step()
        step()  # warm: one-time set-up kernels are not the steady state
        with profile(activities=activities) as prof:
            step()
        events = prof.events()
        if on_cuda:
            device_events = [e for e in events if e.device_type == DeviceType.CUDA]
            kernels = [e for e in device_events if not e.name.startswith(("Memcpy", "Memset"))]
            report[name] = {
                "cuda_kernels": len(kernels),
                "cuda_memcpy_memset": len(device_events) - len(kernels),
            }
        else:
            report[name] = {"aten_ops": sum(1 for e in events if e.name.startswith("aten::"))}
        print(f"kernels {name:24s} {report[name]}", flush=True)
    return report


def run_benchmarks(out: Path, args: argparse.Namespace) -> int:
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        str(REPO_ROOT / "benchmarks" / "test_supcon_bench.py"),
        "-q",
        "-p",
        "no:cacheprovider",
        f"--benchmark-json={out / 'bench.json'}",
        f"--bench-budget={args.budget}",
        "-o",
        "addopts=",
    ]
    if args.cpu_smoke:
        cmd += ["--bench-device=cpu", "--bench-n=16,40", "--bench-d=32", "--bench-dtype=float32,bfloat16"]
        cmd += ["--bench-no-memory"] if args.no_memory else []
    else:
        cmd += ["--bench-preset=gpu", f"--bench-device={args.device}"]
    for spec in args.impl:
        cmd += ["--impl", spec]
    print("benchmarks:", " ".join(cmd), flush=True)
    return subprocess.run(cmd, cwd=REPO_ROOT, check=False).returncode


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.gpu_check", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, default=REPO_ROOT / "results" / "gpu")
    parser.add_argument("--device", default="cuda")
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="toy sizes on CPU: checks the script, not speed"
    )
    parser.add_argument(
        "--no-memory", action="store_true", help="(smoke) skip the per-case memory child processes"
    )
    parser.add_argument("--budget", type=float, default=None, help="seconds of timed rounds per case")
    parser.add_argument(
        "--impl", action="append", default=[], metavar="PKG.MOD:FUNC", help="add your implementation"
    )
    args = parser.parse_args(argv)
    if args.cpu_smoke:
        args.device = "cpu"
        args.budget = 0.05 if args.budget is None else args.budget
    elif not torch.cuda.is_available():
        parser.error("no CUDA device: run on a GPU machine, or pass --cpu-smoke")
    args.budget = 1.0 if args.budget is None else args.budget
    args.out.mkdir(parents=True, exist_ok=True)
    started = time.time()

    sizes, d = ((16, 100), 32) if args.cpu_smoke else ((16, 1000, 4097), 256)
    correctness = check_correctness(args.device, sizes, d, args.impl)
    (args.out / "correctness.json").write_text(json.dumps(correctness, indent=1))
    synchronize(args.device)

    kernels = count_kernels(args.device, 16, 32 if args.cpu_smoke else 1024, args.impl)
    (args.out / "kernels.json").write_text(json.dumps(kernels, indent=1))

    bench_rc = run_benchmarks(args.out, args)
    # A peer's inaccuracy is reported, but only ours and the user's rows decide the exit code.
    failed = [c for c in correctness if not c["ok"] and c["kind"] != "peer"]
    peer_failed = [c for c in correctness if not c["ok"] and c["kind"] == "peer"]
    report = ""
    if (args.out / "bench.json").exists():
        report = summarize.main(
            [
                str(args.out / "bench.json"),
                "--kernels",
                str(args.out / "kernels.json"),
                "--markdown",
                str(args.out / "benchmarks.md"),
                "--plot",
                str(args.out / "benchmarks.png"),
            ]
        )
    lines = [
        f"## Correctness on {args.device} (against float64 references)",
        "",
        f"{len(correctness) - len(failed)}/{len(correctness)} checks passed.",
    ]
    lines += [f"- FAIL {json.dumps(c)}" for c in failed]
    lines += [f"- FAIL (peer, not ours) {json.dumps(c)}" for c in peer_failed]
    with open(args.out / "benchmarks.md", "a") as f:
        f.write("\n" + "\n".join(lines) + f"\n\nTotal wall time: {time.time() - started:.0f} s\n")
    print("\n".join(lines))
    return 1 if failed or bench_rc != 0 or not report else 0


if __name__ == "__main__":
    sys.exit(main())
