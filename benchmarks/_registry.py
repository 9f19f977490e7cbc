"""Which implementations the benchmarks run, by name.

Every entry is called as ``fn(features, labels, temperature=τ)`` (the subset of
:func:`scl_loss.functional.supcon_loss`'s signature the benchmarks use) and returns a scalar
loss to call ``backward()`` on. The memory probe (:mod:`benchmarks._memory`) rebuilds this
registry in a child process and looks entries up by name, so names must be reproducible from
the user's ``--impl`` specs alone.
"""

from __future__ import annotations

import functools
import importlib
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from scl_loss.functional import supcon_loss
from scl_loss.reference import supcon_loss_dense

#: Kinds: "library" (our paths), "peer" (what we compare against: the dense reference and
#: pytorch-metric-learning), "floor" (the three N×N×D products alone), "user" (``--impl``).
KINDS = ("library", "peer", "floor", "user")


@dataclass(frozen=True)
class Impl:
    name: str
    kind: str
    fn: Callable[..., Tensor]


def load_impl(spec: str) -> Callable[..., Tensor]:
    """Import ``package.module:function`` (the attribute may be dotted, e.g. ``mod:Class.method``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--impl expects 'package.module:function', got {spec!r}")
    obj: object = importlib.import_module(module_name)
    for part in attr.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"--impl {spec!r} is not callable")
    return obj  # type: ignore[return-value]


def forced_paths() -> tuple[str, ...]:
    """The kernel paths ``supcon_loss(path=...)`` accepts besides "auto"; empty before it had any."""
    if "path" not in inspect.signature(supcon_loss).parameters:
        return ()
    return ("dense", "blocked")


def matmul_floor(features: Tensor, labels: Tensor | None = None, *, temperature: float = 0.1) -> Tensor:
    """The three ``N×N×D`` products a SupCon forward+backward cannot avoid, and nothing else.

    Forward ``S = Z Zᵀ``; backward ``dZ = G Z + Gᵀ Z`` for the ``N×N`` gradient ``G`` of ``S``.
    Here ``G`` is ``S`` itself (values do not change a matmul's speed) and the products run
    over row blocks of at most ``2**28 / N`` rows, so the floor exists at any ``N`` with
    ``O(block·N)`` memory. ``labels`` and ``temperature`` are accepted and ignored. Returns a
    scalar whose ``backward()`` is a no-op: all the work is in the call.
    """
    del labels, temperature
    z = features.detach().reshape(-1, features.shape[-1])
    n = z.shape[0]
    block = max(1, min(n, 2**28 // max(n, 1)))
    grad = torch.empty_like(z)
    grad_t = torch.zeros_like(z)
    for start in range(0, n, block):
        rows = z[start : start + block]
        s = rows @ z.T  # forward product, [B, N]
        grad[start : start + block] = s @ z  # backward, G Z
        grad_t.addmm_(s.T, rows)  # backward, Gᵀ Z
    # Keep the results alive until here and hand back something backward() accepts.
    return (grad[0, 0] + grad_t[0, 0]).float().detach().requires_grad_()


def _pml_fn() -> Callable[..., Tensor] | None:
    try:
        from pytorch_metric_learning.losses import SupConLoss as PMLSupConLoss
    except ImportError:
        return None

    def pml_supcon(features: Tensor, labels: Tensor, *, temperature: float = 0.1) -> Tensor:
        # pytorch-metric-learning normalises (cosine similarity) and averages over anchors
        # with a non-zero loss, i.e. those with a positive: the same quantity as ours.
        return PMLSupConLoss(temperature=temperature)(features, labels)

    return pml_supcon


def build_registry(user_specs: list[str] | tuple[str, ...] = ()) -> dict[str, Impl]:
    """All implementations available here: ours, each forced path, peers, the floor, and ``--impl`` ones."""
    impls = [Impl("default", "library", supcon_loss)]
    impls += [Impl(path, "library", functools.partial(supcon_loss, path=path)) for path in forced_paths()]
    impls.append(Impl("reference_dense", "peer", supcon_loss_dense))
    pml = _pml_fn()
    if pml is not None:
        impls.append(Impl("pml", "peer", pml))
    impls.append(Impl("matmul_floor", "floor", matmul_floor))
    impls += [Impl(spec, "user", load_impl(spec)) for spec in user_specs]
    return {impl.name: impl for impl in impls}
