"""The one prepared GPU run: correctness on the card first, then the benchmark grid, then a report.

    bash scripts/bench.sh --gpu                               # H100/H200, well under 8 minutes
    python -m benchmarks.gpu_check --out results/gpu          # the same, without the set-up
    python -m benchmarks.gpu_check --cpu-smoke --out /tmp/x   # the same steps at toy sizes on CPU

Steps, each writing into ``--out``:

1. ``correctness.json``: every implementation (our default and forced paths, the dense
   reference, pytorch-metric-learning, ``--impl`` ones) against the float64 references on the
   device: the loop reference at N = 16 and the float64 dense reference at sizes that straddle
   the blocked path's chunks, loss and gradient, in float32, bfloat16 and (ours) float16 (the
   reference runs on the same rounded inputs). Half precision is held to the library's
   contract (docs/maths.md): loss within 1e-4 relative, gradient error at most twice the
   float64 gradient's own rounding. Peers are checked and reported; they do not fail the run.
2. ``syncs.json``: one forward+backward of ``supcon_loss`` and ``scl_cross_entropy`` on each
   path and dtype under ``torch.cuda.set_sync_debug_mode("error")``: a host sync fails it
   (on CPU: counted by a dispatch mode).
3. ``kernels.json``: CUDA kernels launched by one forward+backward at N = 16 (torch.profiler),
   per implementation, and for ``scl_cross_entropy`` (on CPU: aten ops, to exercise the code).
4. ``half_gradient.json``: what the hi+lo split of the block gradient costs and buys — the
   blocked path's time at bf16 N = 32,768 with it and with the block gradient merely rounded,
   and both gradients' error against float64.
5. ``bench.json``: ``pytest benchmarks/test_supcon_bench.py --bench-preset gpu`` (time, peak
   extra memory, floor; out-of-memory cases recorded as such).
6. ``benchmarks.md`` + ``benchmarks.png``: :mod:`benchmarks.summarize` over the above, then the
   correctness, sync and half-precision summaries.

Exits non-zero when a check of ours failed or the benchmark run failed; the report is written
either way.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import importlib.util
import inspect
import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import scl_loss.kernels._rows as _rows
import scl_loss.kernels.blocked as _blocked
import scl_loss.kernels.dense as _dense
from benchmarks import summarize
from benchmarks._cases import DTYPES, Case, fwd_bwd_step, make_inputs, synchronize
from benchmarks._registry import build_registry
from benchmarks.cached_step import largest_batch_markdown
from scl_loss.functional import scl_cross_entropy, supcon_loss
from scl_loss.reference import supcon_loss_dense, supcon_loss_loop

REPO_ROOT = Path(__file__).resolve().parent.parent

# Tolerances against float64 on the same (rounded) inputs: on the loss (relative, floor 1) and
# on the relative l2 error of the gradient. Peers are held to these; bf16 leaves room for
# kernels that compute in bf16. Our half-precision rows are held to the contract instead.
TOLERANCES = {"float32": (1e-4, 1e-3), "bfloat16": (1e-2, 2e-2)}
HALF_CONTRACT = {"loss_rel": 1e-4, "grad_vs_rounding": 2.0}
OUR_KINDS = ("library", "user")


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


def _term_scale(x: torch.Tensor, temperature: float) -> float:
    # (1/τ)‖1/|x_i|‖: the size of the gradient terms that cancel (docs/maths.md, "Half precision").
    norms = x.double().reshape(-1, x.shape[-1]).norm(dim=1)
    return float((1.0 / norms[norms > 0]).norm()) / temperature


def check_correctness(device: str, sizes: tuple[int, ...], d: int, user_specs: list[str]) -> list[dict]:
    results = []
    impls = _correctness_impls(user_specs)
    for n in sizes:
        case = Case(n=n, d=d, dtype="float64", device=device, classes=max(2, n // 8), seed=n)
        x64, labels = make_inputs(case)
        reference = supcon_loss_loop if n <= 24 else supcon_loss_dense
        for dtype in ("float32", "bfloat16", "float16"):
            # float64 on the inputs rounded to `dtype`: what is left is the kernel's own error.
            rounded = x64.detach().to(DTYPES[dtype]).double().requires_grad_()
            ref_loss = reference(rounded, labels, temperature=case.temperature)
            (ref_grad,) = torch.autograd.grad(ref_loss, rounded)
            rounding = float((ref_grad.to(DTYPES[dtype]).double() - ref_grad).norm())
            floor = 2.0**-22 * _term_scale(rounded, case.temperature)
            for name, (kind, fn) in impls.items():
                if dtype == "float16" and kind not in OUR_KINDS:
                    continue  # peers are not asked for float16
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
                    grad_error = float((grad.double() - ref_grad).norm())
                    grad_err = grad_error / float(ref_grad.norm().clamp(min=1e-30))
                    entry.update(loss_rel_err=loss_err, grad_rel_err=grad_err)
                    if dtype == "float32" or kind not in OUR_KINDS:
                        loss_tol, grad_tol = TOLERANCES.get(dtype, TOLERANCES["bfloat16"])
                        entry["ok"] = bool(loss_err <= loss_tol and grad_err <= grad_tol)
                    else:  # the half-precision contract
                        ratio = grad_error / max(rounding, 1e-300)
                        entry.update(grad_err_vs_rounding=ratio)
                        entry["ok"] = bool(
                            loss_err <= HALF_CONTRACT["loss_rel"]
                            and grad_error <= HALF_CONTRACT["grad_vs_rounding"] * rounding + floor
                        )
                except Exception as error:  # a crash is a failed check, reported with the others
                    entry.update(ok=False, error=f"{type(error).__name__}: {error}"[:500])
                results.append(entry)
                errors = {k: v for k, v in entry.items() if k.endswith(("err", "rounding")) or k == "error"}
                print(
                    f"correctness {name:24s} {dtype:8s} N={n:<6d} {'ok' if entry['ok'] else 'FAIL'} {errors}",
                    flush=True,
                )
    return results


class _SyncCounter(TorchDispatchMode):
    """CPU stand-in for CUDA's sync debug mode: value reads and data-sized outputs."""

    SYNC_OPS = frozenset({"_local_scalar_dense", "is_nonzero", "nonzero", "masked_select", "equal"})

    def __init__(self) -> None:
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        if func.overloadpacket.__name__ in self.SYNC_OPS:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))


def check_syncs(device: str) -> list[dict]:
    """One default forward+backward per function, path and dtype: no host synchronisation."""
    on_cuda = torch.device(device).type == "cuda"
    results = []
    gen = torch.Generator().manual_seed(0)
    for dtype in ("float32", "bfloat16"):
        for path in ("dense", "blocked"):
            features = torch.randn(64, 2, 32, generator=gen).to(device, DTYPES[dtype]).requires_grad_()
            logits = torch.randn(64, 5, generator=gen).to(device).requires_grad_()
            labels = torch.randint(0, 5, (64,), generator=gen).to(device)
            labels[:3] = -100
            calls = {
                "supcon_loss": functools.partial(supcon_loss, features, labels, path=path, chunk_size=48),
                "scl_cross_entropy": functools.partial(
                    scl_cross_entropy,
                    logits,
                    features,
                    labels,
                    lambda_=0.9,
                    tau=0.1,
                    path=path,
                    chunk_size=48,
                ),
            }
            for name, call in calls.items():
                entry = {"fn": name, "path": path, "dtype": dtype, "device": device}
                call().backward()  # warm: lazy initialisation may synchronise once
                try:
                    if on_cuda:
                        torch.cuda.synchronize(device)
                        torch.cuda.set_sync_debug_mode("error")
                        try:
                            call().backward()
                        finally:
                            torch.cuda.set_sync_debug_mode("default")
                        entry.update(ok=True, syncs=0)
                    else:
                        with _SyncCounter() as counter:
                            call().backward()
                        entry.update(ok=not counter.syncs, syncs=len(counter.syncs), ops=counter.syncs)
                except RuntimeError as error:  # the sync debug mode raises on a synchronising call
                    entry.update(ok=False, error=f"{type(error).__name__}: {error}"[:500])
                results.append(entry)
                print(f"syncs {name:18s} {path:8s} {dtype:8s} {'ok' if entry['ok'] else 'FAIL'}", flush=True)
    return results


def count_kernels(device: str, n: int, d: int, user_specs: list[str]) -> dict:
    from torch.profiler import ProfilerActivity

    on_cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if on_cuda else [])
    report: dict = {"device_type": torch.device(device).type, "n": n, "d": d, "dtype": "float32"}
    for name, impl in build_registry(user_specs).items():
        if impl.kind == "floor":
            continue
        case = Case(n=n, d=d, dtype="float32", device=device)
        step = fwd_bwd_step(impl.fn, *make_inputs(case), case)
        report[name] = _count(step, on_cuda, activities)
        print(f"kernels {name:24s} {report[name]}", flush=True)
    # The combined objective as fine-tuning code calls it (logits a leaf), and our default in bf16.
    extra: dict[str, tuple[str, object]] = {
        "scl_cross_entropy": ("float32", _scl_cross_entropy_row),
        "default (bfloat16)": ("bfloat16", supcon_loss),
    }
    for name, (dtype, fn) in extra.items():
        case = Case(n=n, d=d, dtype=dtype, device=device)
        step = fwd_bwd_step(fn, *make_inputs(case), case)  # type: ignore[arg-type]
        report[name] = _count(step, on_cuda, activities)
        print(f"kernels {name:24s} {report[name]}", flush=True)
    return report


def _scl_cross_entropy_row(
    features: torch.Tensor, labels: torch.Tensor, *, temperature: float
) -> torch.Tensor:
    logits = _scl_cross_entropy_row.logits  # type: ignore[attr-defined]
    if logits is None or logits.shape[0] != features.shape[0] or logits.device != features.device:
        logits = torch.randn(features.shape[0], 10, device=features.device, requires_grad=True)
        _scl_cross_entropy_row.logits = logits  # type: ignore[attr-defined]
    logits.grad = None
    return scl_cross_entropy(logits, features, labels, lambda_=0.9, tau=temperature)


_scl_cross_entropy_row.logits = None  # type: ignore[attr-defined]


def _count(step: Callable[[], None], on_cuda: bool, activities: list) -> dict:
    from torch.autograd import DeviceType
    from torch.profiler import profile

    step()
    step()  # warm: one-time set-up kernels are not the steady state
    with profile(activities=activities) as prof:
        step()
    events = prof.events()
    if on_cuda:
        device_events = [e for e in events if e.device_type == DeviceType.CUDA]
        kernels = [e for e in device_events if not e.name.startswith(("Memcpy", "Memset"))]
        return {"cuda_kernels": len(kernels), "cuda_memcpy_memset": len(device_events) - len(kernels)}
    return {"aten_ops": sum(1 for e in events if e.name.startswith("aten::"))}


@contextlib.contextmanager
def _rounded_block_gradient() -> Iterator[None]:
    """The alternative to the hi+lo split: the block gradient merely rounded to the input dtype."""
    real = _rows.split_operand

    def hi_only(g: torch.Tensor, dtype: torch.dtype, scale: torch.Tensor | None) -> list[torch.Tensor]:
        return real(g, dtype, scale)[:1]

    modules = (_dense, _blocked)
    for module in modules:
        module.split_operand = hi_only  # type: ignore[attr-defined]
    try:
        yield
    finally:
        for module in modules:
            module.split_operand = real  # type: ignore[attr-defined]


def _time_call(fn: Callable[[], None], device: str, rounds: int) -> float:
    fn()  # warm
    synchronize(device)
    start = time.perf_counter()
    for _ in range(rounds):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / rounds


def half_gradient_cost(device: str, n_time: int, n_error: int, d: int, rounds: int) -> dict:
    """Time (blocked path, bf16) and gradient error of the hi+lo split against rounding alone."""
    report: dict = {"device": device, "dtype": "bfloat16", "d": d}
    gen = torch.Generator().manual_seed(0)
    for variant, context in (("hi+lo", contextlib.nullcontext), ("rounded", _rounded_block_gradient)):
        x = torch.randn(n_time, d, generator=gen).to(device, torch.bfloat16).requires_grad_()
        y = torch.randint(0, 10, (n_time,), generator=gen).to(device)

        def step(x: torch.Tensor = x, y: torch.Tensor = y) -> None:
            x.grad = None
            supcon_loss(x, y, path="blocked").backward()

        xe = torch.randn(n_error, d, generator=gen).to(device, torch.bfloat16).requires_grad_()
        ye = torch.randint(0, 10, (n_error,), generator=gen).to(device)
        x64 = xe.detach().double().requires_grad_()
        supcon_loss(x64, ye, path="dense").backward()
        assert x64.grad is not None
        rounding = float((x64.grad.to(torch.bfloat16).double() - x64.grad).norm())
        with context():
            seconds = _time_call(step, device, rounds)
            supcon_loss(xe, ye, path="blocked", chunk_size=max(1, n_error // 4)).backward()
        assert xe.grad is not None
        report[variant] = {
            "n": n_time,
            "fwd_bwd_seconds": seconds,
            "grad_error_vs_rounding": float((xe.grad.double() - x64.grad).norm()) / max(rounding, 1e-300),
            "n_error": n_error,
        }
        print(f"half gradient {variant:8s} {report[variant]}", flush=True)
    return report


def largest_batch(device: str, smoke: bool) -> dict:
    """benchmarks.cached_step's search, or why it could not run (it needs transformers for MPNet,
    which the bench extra does not install: carry its wheel to a machine without an index)."""
    if importlib.util.find_spec("transformers") is None:
        return {"skipped": "transformers is not installed (pip install transformers; docs/benchmarks.md)"}
    from benchmarks.cached_step import largest_batch_report

    return largest_batch_report(device, smoke=smoke)


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

    def step(name: str) -> None:
        print(f"== {name} (at {time.time() - started:.0f} s)", flush=True)

    step("correctness")
    sizes, d = ((16, 100), 32) if args.cpu_smoke else ((16, 1000, 4097), 256)
    correctness = check_correctness(args.device, sizes, d, args.impl)
    (args.out / "correctness.json").write_text(json.dumps(correctness, indent=1))
    synchronize(args.device)

    step("host syncs")
    syncs = check_syncs(args.device)
    (args.out / "syncs.json").write_text(json.dumps(syncs, indent=1))

    step("kernel counts")
    kernels = count_kernels(args.device, 16, 32 if args.cpu_smoke else 1024, args.impl)
    (args.out / "kernels.json").write_text(json.dumps(kernels, indent=1))

    step("half-precision gradient: hi+lo against rounding")
    half = (
        half_gradient_cost(args.device, 96, 64, 32, rounds=2)
        if args.cpu_smoke
        else half_gradient_cost(args.device, 32768, 2048, 1024, rounds=5)
    )
    (args.out / "half_gradient.json").write_text(json.dumps(half, indent=1))

    step("benchmark grid")
    bench_rc = run_benchmarks(args.out, args)

    step("largest encoder batch with and without gradient caching")
    largest = largest_batch(args.device, args.cpu_smoke)
    (args.out / "largest_batch.json").write_text(json.dumps(largest, indent=1))
    # A peer's inaccuracy is reported, but only ours and the user's rows decide the exit code.
    failed = [c for c in correctness if not c["ok"] and c["kind"] != "peer"]
    peer_failed = [c for c in correctness if not c["ok"] and c["kind"] == "peer"]
    sync_failed = [c for c in syncs if not c["ok"]]
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
        f"{len(correctness) - len(failed) - len(peer_failed)}/{len(correctness)} checks passed.",
    ]
    lines += [f"- FAIL {json.dumps(c)}" for c in failed]
    lines += [f"- FAIL (peer, not ours) {json.dumps(c)}" for c in peer_failed]
    half_rows = [c for c in correctness if "grad_err_vs_rounding" in c]
    if half_rows:
        worst = max(half_rows, key=lambda c: c["grad_err_vs_rounding"])
        lines += [
            "",
            f"Half precision (ours): largest gradient error / float64 rounding error "
            f"{worst['grad_err_vs_rounding']:.3f} ({worst['impl']}, {worst['dtype']}, N={worst['n']}); "
            f"largest loss error {max(c['loss_rel_err'] for c in half_rows):.2e} relative.",
        ]
    lines += [
        "",
        "## Host syncs in one forward+backward",
        "",
        f"{len(syncs) - len(sync_failed)}/{len(syncs)} calls without a host sync"
        + (
            " (torch.cuda.set_sync_debug_mode('error'))."
            if args.device != "cpu"
            else " (dispatch-mode count)."
        ),
    ]
    lines += [f"- FAIL {json.dumps(c)}" for c in sync_failed]
    lines += [
        "",
        "## Half-precision block gradient: hi+lo split against rounding (blocked path, bf16)",
        "",
        "| block gradient operand | fwd+bwd time | gradient error / float64 rounding error |",
        "|---|---:|---:|",
    ]
    for variant in ("hi+lo", "rounded"):
        entry = half[variant]
        lines.append(
            f"| {variant} | {summarize.fmt_time(entry['fwd_bwd_seconds'])} (N={entry['n']:,}) "
            f"| {entry['grad_error_vs_rounding']:.3f} (N={entry['n_error']:,}) |"
        )
    lines += ["", "## Largest all-mpnet-base-v2 batch in a memory budget (docs/caching.md)", ""]
    lines += [
        largest_batch_markdown(largest) if "skipped" not in largest else f"Skipped: {largest['skipped']}."
    ]
    with open(args.out / "benchmarks.md", "a") as f:
        f.write("\n" + "\n".join(lines) + f"\n\nTotal wall time: {time.time() - started:.0f} s\n")
    print("\n".join(lines))
    return 1 if failed or sync_failed or bench_rc != 0 or not report else 0


if __name__ == "__main__":
    sys.exit(main())
