"""Peak extra memory of one forward+backward: what the loss allocates beyond its inputs.

GPU: ``torch.cuda.max_memory_allocated`` after ``reset_peak_memory_stats``, minus what was
allocated before the call (the inputs). In-process; it counts tensors, not the caching
allocator's reserve.

CPU: there is no allocator counter, so each case runs once in a fresh child process
(``python -m benchmarks._memory``). The child builds its inputs, runs the implementation once
at a tiny size (so libraries' lazy set-up is not charged to the case), resets the kernel's
resident-set high-water mark (``/proc/self/clear_refs`` ← ``5``), reads ``VmRSS``, runs the
case once and reads ``VmHWM``. Peak extra = ``VmHWM − VmRSS``: every page the call touched
beyond what was resident before it, at its highest. The child is fresh, so no freed-but-kept
heap from an earlier call can hide an allocation. The result includes the features' gradient
(``N×D``), which every implementation allocates alike. Linux only (``clear_refs``); elsewhere
the result is an "error" record saying so, never a guess.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks._cases import Case, fwd_bwd_step, is_out_of_memory, make_inputs

METHOD = "peak RSS (VmHWM - VmRSS) of a fresh child process"
REPO_ROOT = Path(__file__).resolve().parent.parent


def cuda_peak_extra_bytes(step: Callable[[], None], device: str) -> int:
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    before = torch.cuda.memory_allocated(device)
    step()
    return torch.cuda.max_memory_allocated(device) - before


def subprocess_peak_extra_bytes(
    impl_name: str, case: Case, user_specs: list[str], timeout: float = 900.0
) -> dict[str, object]:
    """Run the case in a child; returns ``{"status": "ok"|"oom"|"error", "peak_extra_bytes", "method"}``."""
    cmd = [
        sys.executable,
        "-m",
        "benchmarks._memory",
        "--impl-name",
        impl_name,
        "--case",
        json.dumps(case.to_dict()),
    ]
    for spec in user_specs:
        cmd += ["--user-impl", spec]
    # The child must import what this process imports: the repo and the user's modules.
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), *[p for p in sys.path if p]])
    env["SCL_BENCH_THREADS"] = str(torch.get_num_threads())
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    if proc.returncode == 0:
        return json.loads(proc.stdout.strip().splitlines()[-1])
    if proc.returncode in (-9, 137):  # killed by the kernel's OOM killer
        return {"status": "oom", "peak_extra_bytes": None, "method": "killed (SIGKILL)"}
    return {"status": "error", "peak_extra_bytes": None, "method": proc.stderr.strip()[-2000:]}


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def _reset_high_water_mark() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _child(impl_name: str, case: Case, user_specs: list[str]) -> dict[str, object]:
    from benchmarks._registry import build_registry

    torch.set_num_threads(int(os.environ.get("SCL_BENCH_THREADS", torch.get_num_threads())))
    fn = build_registry(user_specs)[impl_name].fn
    # Warm up at a tiny size: thread pools, kernels' one-time tables, lazy imports.
    tiny = Case(n=8, d=case.d, dtype=case.dtype, device=case.device, classes=2)
    fwd_bwd_step(fn, *make_inputs(tiny), tiny)()
    features, labels = make_inputs(case)
    step = fwd_bwd_step(fn, features, labels, case)
    if not _reset_high_water_mark():
        return {"status": "error", "peak_extra_bytes": None, "method": "needs Linux /proc/self/clear_refs"}
    before = _rss_kib("VmRSS")
    try:
        step()
    except Exception as error:
        if is_out_of_memory(error):
            return {"status": "oom", "peak_extra_bytes": None, "method": METHOD}
        raise
    return {"status": "ok", "peak_extra_bytes": max(0, _rss_kib("VmHWM") - before) * 1024, "method": METHOD}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="measure one case's peak extra RSS (internal)")
    parser.add_argument("--impl-name", required=True)
    parser.add_argument("--case", required=True, help="JSON of benchmarks._cases.Case")
    parser.add_argument("--user-impl", action="append", default=[])
    args = parser.parse_args(argv)
    result = _child(args.impl_name, Case(**json.loads(args.case)), args.user_impl)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
