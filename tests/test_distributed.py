"""Distributed SupCon / SCL: DDP on a split batch equals one process on the concatenated batch.

The multi-process cases live in tests/_distributed_cases.py and run in one spawn of three
gloo ranks on CPU (world size 3, then world size 2 on a subgroup), a few seconds in all.
"""

from __future__ import annotations

import json

import pytest
import torch
import torch.distributed as dist

from scl_loss import SCLCrossEntropy, SupConLoss
from scl_loss.functional import scl_cross_entropy, supcon_loss
from tests._distributed_cases import CASES, run_all
from tests._multiprocess import run_on_ranks

pytestmark = pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)

WORLD_SIZE = 3


@pytest.fixture(scope="module")
def rank_results(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, str | None]]:
    workdir = tmp_path_factory.mktemp("ddp")
    run_on_ranks(run_all, WORLD_SIZE, workdir)
    return [json.loads((workdir / f"results-{rank}.json").read_text()) for rank in range(WORLD_SIZE)]


@pytest.mark.parametrize("world", [3, 2])
@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_ddp_matches_single_process(rank_results, world: int, case: str) -> None:
    key = f"{world}/{case}"
    failures = []
    for rank in range(world):
        assert key in rank_results[rank], f"rank {rank} did not run {key}"
        if rank_results[rank][key] is not None:
            failures.append(f"--- rank {rank} ---\n{rank_results[rank][key]}")
    assert not failures, "\n".join(failures)


# --- single process: argument checks and the documented fallback ----------------------------


def test_without_process_group_falls_back_to_single_process() -> None:
    assert not dist.is_initialized()
    torch.manual_seed(0)
    features = torch.randn(10, 2, 8, dtype=torch.float64)
    labels = torch.randint(0, 3, (10,))
    torch.testing.assert_close(
        supcon_loss(features, labels, gather_distributed=True), supcon_loss(features, labels)
    )
    logits = torch.randn(10, 3, dtype=torch.float64)
    torch.testing.assert_close(
        scl_cross_entropy(logits, features, labels, lambda_=0.5, tau=0.3, gather_distributed=True),
        scl_cross_entropy(logits, features, labels, lambda_=0.5, tau=0.3),
    )


def test_gather_distributed_must_be_bool() -> None:
    with pytest.raises(TypeError, match="gather_distributed must be a bool"):
        supcon_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), gather_distributed=1)
    with pytest.raises(TypeError, match="gather_distributed must be a bool"):
        SupConLoss(gather_distributed="yes")


def test_process_group_without_gathering_is_rejected() -> None:
    with pytest.raises(ValueError, match="process_group is only used with gather_distributed=True"):
        supcon_loss(torch.randn(4, 3), torch.tensor([0, 0, 1, 1]), process_group=object())
    with pytest.raises(ValueError, match="process_group"):
        SCLCrossEntropy(0.5, 0.3, process_group=object())
