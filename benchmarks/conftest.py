"""Options and parametrisation of the benchmark grid (``pytest benchmarks/test_supcon_bench.py``).

``--impl pkg.mod:func`` adds your implementation to the grid (next to ours, the peers and the
floor); ``--bench-impls`` keeps only the named rows. Sizes: ``--bench-preset cpu`` (default,
the README's few-minute job) or ``gpu`` (the issue's targets), or ``--bench-n``/``--bench-d``/
``--bench-dtype`` explicitly. A case that runs out of memory is recorded (in the JSON's
``"unfinished"`` list, and as a skip saying so), not a crash.
"""

from __future__ import annotations

import contextlib

import pytest
import torch

from benchmarks._cases import CPU_SIZES, DTYPES, GPU_SIZES, Case
from benchmarks._registry import Impl, build_registry

UNFINISHED = pytest.StashKey[list]()
REGISTRY = pytest.StashKey[dict]()


def _add(parser: pytest.Parser, *args, **kwargs) -> None:
    # tests/conftest.py defines --impl too (same meaning: pkg.mod:func); loaded together
    # (`pytest tests benchmarks`) the first definition serves both.
    with contextlib.suppress(ValueError):
        parser.addoption(*args, **kwargs)


def pytest_addoption(parser: pytest.Parser) -> None:
    _add(
        parser,
        "--impl",
        action="append",
        default=[],
        metavar="PKG.MOD:FUNC",
        help="your SupCon implementation (supcon_loss's signature); may be repeated",
    )
    group = parser.getgroup("scl_loss benchmarks")
    group.addoption(
        "--bench-preset",
        choices=("cpu", "gpu"),
        default="cpu",
        help="size grid: cpu (N 16..8192, D 768, fp32) or gpu (N 16..262144, D 1024, bf16+fp32)",
    )
    group.addoption("--bench-n", default=None, help="comma-separated N, overrides the preset")
    group.addoption("--bench-d", type=int, default=None, help="feature width D, overrides the preset")
    group.addoption("--bench-dtype", default=None, help=f"comma-separated dtypes from {sorted(DTYPES)}")
    group.addoption("--bench-device", default="auto", help="cpu, cuda, cuda:1, ... (auto: cuda if present)")
    group.addoption("--bench-classes", type=int, default=10, help="number of label classes")
    group.addoption(
        "--bench-impls",
        default=None,
        help="comma-separated implementation names to keep (default: all available)",
    )
    group.addoption("--bench-no-memory", action="store_true", help="skip the peak-memory measurement")
    group.addoption(
        "--bench-threads",
        type=int,
        default=None,
        help="torch CPU threads (default: torch's own choice, the number of cores)",
    )
    group.addoption(
        "--bench-budget",
        type=float,
        default=2.0,
        help="seconds of timed rounds per case (rounds = budget / warm-up time, 1..200)",
    )


def _device(config: pytest.Config) -> str:
    device = config.getoption("--bench-device")
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def bench_cases(config: pytest.Config) -> list[Case]:
    preset = GPU_SIZES if config.getoption("--bench-preset") == "gpu" else CPU_SIZES
    ns = config.getoption("--bench-n")
    dtypes = config.getoption("--bench-dtype")
    d = config.getoption("--bench-d") or preset["d"]
    pairs = [(n, dtype) for dtype, n_list in preset["grid"].items() for n in n_list]
    if ns or dtypes:
        n_list = [int(x) for x in ns.split(",")] if ns else sorted({n for n, _ in pairs})
        dtype_list = dtypes.split(",") if dtypes else list(preset["grid"])
        pairs = [(n, dtype) for dtype in dtype_list for n in n_list]
    for _, dtype in pairs:
        if dtype not in DTYPES:
            raise pytest.UsageError(
                f"--bench-dtype: unknown dtype {dtype!r}, expected one of {sorted(DTYPES)}"
            )
    device, classes = _device(config), config.getoption("--bench-classes")
    return [Case(n=n, d=d, dtype=dtype, device=device, classes=classes) for n, dtype in pairs]


def pytest_configure(config: pytest.Config) -> None:
    config.stash[UNFINISHED] = []
    threads = config.getoption("--bench-threads", None)
    if threads:
        torch.set_num_threads(threads)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl_name" in metafunc.fixturenames:
        config = metafunc.config
        try:
            registry = build_registry(config.getoption("--impl"))
        except (ImportError, AttributeError, ValueError, TypeError) as error:
            raise pytest.UsageError(f"--impl: {error}") from error
        keep = config.getoption("--bench-impls")
        if keep:
            names = keep.split(",")
            unknown = [name for name in names if name not in registry]
            if unknown:
                raise pytest.UsageError(f"--bench-impls: unknown {unknown}; available: {list(registry)}")
            registry = {name: registry[name] for name in names}
        cases = bench_cases(config)
        config.stash[REGISTRY] = registry
        # Plain strings and dicts, so pytest-benchmark's JSON "params" stay readable.
        metafunc.parametrize("case_params", [c.to_dict() for c in cases], ids=[c.id for c in cases])
        metafunc.parametrize("impl_name", list(registry), ids=list(registry))


def pytest_benchmark_update_json(config: pytest.Config, benchmarks: list, output_json: dict) -> None:
    # Out-of-memory cases have no timings; keep them in the same file, beside the benchmarks.
    output_json["unfinished"] = list(config.stash[UNFINISHED])


@pytest.fixture
def record_unfinished(request: pytest.FixtureRequest):
    def record(entry: dict) -> None:
        request.config.stash[UNFINISHED].append(entry)

    return record


@pytest.fixture
def bench_impl(request: pytest.FixtureRequest, impl_name: str) -> Impl:
    return request.config.stash[REGISTRY][impl_name]


@pytest.fixture
def bench_case(case_params: dict) -> Case:
    return Case(**case_params)
