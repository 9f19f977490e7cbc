from __future__ import annotations

import importlib
import os

import pytest
import torch
from hypothesis import HealthCheck, settings

from tests._impls import IMPLEMENTATIONS

settings.register_profile("dev", max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile(
    "ci",
    max_examples=60,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.load_profile("ci" if os.environ.get("CI") else os.environ.get("HYPOTHESIS_PROFILE", "dev"))

torch.set_num_threads(max(1, min(2, torch.get_num_threads())))


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--impl",
        action="append",
        default=[],
        metavar="PKG.MOD:FUNC",
        help="check your own SupCon implementation (same signature as scl_loss.functional.supcon_loss) "
        "with the conformance suite instead of the library's own paths; may be repeated",
    )


def load_impl(spec: str):
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise pytest.UsageError(f"--impl expects 'package.module:function', got {spec!r}")
    obj = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise pytest.UsageError(f"--impl {spec!r} is not callable")
    return obj


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "impl" in metafunc.fixturenames:
        specs = metafunc.config.getoption("--impl")
        impls = {spec: load_impl(spec) for spec in specs} if specs else IMPLEMENTATIONS
        metafunc.parametrize("impl", list(impls.values()), ids=list(impls.keys()))
