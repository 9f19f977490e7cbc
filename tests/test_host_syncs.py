"""No host synchronisation in a default forward+backward, and the small batch's op budget.

Counted at the aten level by a ``TorchDispatchMode`` (tests/_dispatch.py) on the CPU: the
same calls run on a GPU, where a sync stalls the training loop's queue and every compute op
is at least one kernel launch. Counts do not depend on machine load.
"""

from __future__ import annotations

import pytest
import torch

from scl_loss import scl_cross_entropy, supcon_loss
from tests._dispatch import count_ops

PATHS = ("dense", "blocked")


def _supcon_step(path: str, kind: str, reduction: str, normalize: bool, dtype: torch.dtype):
    gen = torch.Generator().manual_seed(0)
    shape = (12, 2, 16) if kind == "views" else (12, 16)
    x = torch.randn(shape, generator=gen).to(dtype).requires_grad_(True)
    labels = torch.randint(0, 3, (12,), generator=gen)
    labels[:2] = -100
    kwargs: dict = {"labels": labels} if kind == "labels" else {}
    if kind == "mask":
        kwargs["mask"] = torch.rand(12, 12, generator=gen) < 0.3

    def step() -> None:
        x.grad = None
        out = supcon_loss(x, path=path, reduction=reduction, normalize=normalize, chunk_size=5, **kwargs)
        out.sum().backward()

    return step


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("kind", ["labels", "mask", "views"])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float64])
def test_supcon_forward_backward_never_syncs(path, kind, reduction, normalize, dtype):
    counts = count_ops(_supcon_step(path, kind, reduction, normalize, dtype))
    assert counts.compute > 0, "the counter must see the call"
    assert counts.syncs == 0, f"host syncs: {dict(counts.sync_names)}"


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    "options",
    [{}, {"weight": torch.tensor([0.5, 2.0, 1.0]), "label_smoothing": 0.1}, {"scl_reduction": "sum"}],
)
@pytest.mark.parametrize("all_ignored", [False, True])
def test_scl_cross_entropy_forward_backward_never_syncs(path, options, all_ignored):
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(10, 3, generator=gen, requires_grad=True)
    x = torch.randn(10, 8, generator=gen, requires_grad=True)
    labels = torch.full((10,), -100) if all_ignored else torch.randint(0, 3, (10,), generator=gen)

    def step() -> None:
        logits.grad = x.grad = None
        scl_cross_entropy(
            logits, x, labels, lambda_=0.7, tau=0.3, path=path, chunk_size=4, **options
        ).backward()

    counts = count_ops(step)
    assert counts.syncs == 0, f"host syncs: {dict(counts.sync_names)}"


def test_the_counter_sees_syncs():
    """The counter is not blind: ``.item()`` and boolean indexing are syncs."""
    x = torch.randn(5)
    counts = count_ops(lambda: (x.sum().item(), x[x > 0]))
    assert counts.syncs == 2


# --- the paper's batch: N = 16, D = 1024, float32, labels, default arguments ------------------

#: Compute ops of one forward+backward at N = 16, D = 1024 (issue 10: ≤ 40 and ≤ 50). Measured
#: 33 and 46 (2026-11, torch 2.13); the bounds are the issue's targets.
SUPCON_OP_BUDGET = 40
SCL_CE_OP_BUDGET = 50


def _paper_batch():
    gen = torch.Generator().manual_seed(0)
    features = torch.randn(16, 1024, generator=gen, requires_grad=True)
    logits = torch.randn(16, 2, generator=gen, requires_grad=True)
    labels = torch.randint(0, 2, (16,), generator=gen)
    return features, logits, labels


def test_supcon_small_batch_op_budget():
    features, _, labels = _paper_batch()

    def step() -> None:
        features.grad = None
        supcon_loss(features, labels).backward()

    step()  # warm: nothing lazy is counted
    counts = count_ops(step)
    assert counts.syncs == 0
    assert counts.compute <= SUPCON_OP_BUDGET, f"{counts.compute} ops: {dict(counts.names)}"


def test_scl_cross_entropy_small_batch_op_budget():
    features, logits, labels = _paper_batch()

    def step() -> None:
        features.grad = logits.grad = None
        scl_cross_entropy(logits, features, labels, lambda_=0.9, tau=0.3).backward()

    step()
    counts = count_ops(step)
    assert counts.syncs == 0
    assert counts.compute <= SCL_CE_OP_BUDGET, f"{counts.compute} ops: {dict(counts.names)}"
