"""Forward+backward time and peak extra memory of every implementation on every case.

Run with ``pytest benchmarks/test_supcon_bench.py --benchmark-json=results/bench.json`` and
turn the JSON into a table and a plot with ``python -m benchmarks.summarize results/bench.json``.
"""

from __future__ import annotations

import gc
import time

import pytest
import torch

from benchmarks._cases import Case, environment, fwd_bwd_step, is_out_of_memory, make_inputs
from benchmarks._memory import cuda_peak_extra_bytes, subprocess_peak_extra_bytes
from benchmarks._registry import Impl


def test_fwd_bwd(benchmark, bench_impl: Impl, bench_case: Case, record_unfinished, request) -> None:
    config = request.config
    measure_memory = not config.getoption("--bench-no-memory")
    on_cuda = torch.device(bench_case.device).type == "cuda"
    info = {
        "impl": bench_impl.name,
        "kind": bench_impl.kind,
        **bench_case.to_dict(),
        **environment(bench_case.device),
    }
    benchmark.group = f"{bench_case.dtype} N={bench_case.n} D={bench_case.d}"
    benchmark.extra_info.update(info)

    def out_of_memory(where: str) -> None:
        record_unfinished({"name": request.node.name, "status": "oom", "where": where, "extra_info": info})
        pytest.skip(f"out of memory ({where}): recorded in the JSON's 'unfinished' list")

    if measure_memory and not on_cuda:
        # First, in a child: a case too big for this machine is found there, not here.
        memory = subprocess_peak_extra_bytes(bench_impl.name, bench_case, config.getoption("--impl"))
        if memory["status"] == "oom":
            out_of_memory("memory probe")
        if memory["status"] != "ok":
            pytest.fail(f"memory probe failed: {memory['method']}")
        benchmark.extra_info["peak_extra_bytes"] = memory["peak_extra_bytes"]
        benchmark.extra_info["memory_method"] = memory["method"]

    features, labels = make_inputs(bench_case)
    step = fwd_bwd_step(bench_impl.fn, features, labels, bench_case)
    failed = None
    try:
        start = time.perf_counter()
        step()  # warm-up: lazy initialisation and autotuning stay out of the timings
        elapsed = time.perf_counter() - start
        if measure_memory and on_cuda:
            benchmark.extra_info["peak_extra_bytes"] = cuda_peak_extra_bytes(step, bench_case.device)
            benchmark.extra_info["memory_method"] = "torch.cuda.max_memory_allocated - memory_allocated"
    except Exception as error:
        if not is_out_of_memory(error):
            raise
        failed = f"{type(error).__name__}"
    if failed is not None:
        # Outside the except block, so the traceback no longer pins the failed call's tensors.
        del features, labels, step
        gc.collect()
        if on_cuda:
            torch.cuda.empty_cache()
        out_of_memory(f"warm-up: {failed}")
    # A fixed time budget per case, whatever N costs: rounds from one call's time. A cheap
    # call is timed again, since its warm-up time is mostly one-off set-up.
    budget = config.getoption("--bench-budget")
    if elapsed < budget / 10:
        start = time.perf_counter()
        step()
        elapsed = time.perf_counter() - start
    rounds = max(1, min(200, round(budget / max(elapsed, 1e-6))))
    benchmark.pedantic(step, rounds=rounds, iterations=1)
