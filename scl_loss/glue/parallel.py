"""Data parallelism within one run (``scl-glue run --data-parallel`` under torchrun).

Every rank walks the same global batches (same seed, same shuffle) and takes a contiguous
share of each; the model is wrapped in ``DistributedDataParallel`` and the loss gathers the
global batch (``gather_distributed=True``), so the update equals one process's on the whole
batch (docs/distributed.md). Evaluation is sharded across ranks and the predictions gathered,
so every rank sees the same metrics and takes the same early-stopping decisions.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor

__all__ = ["World", "gather_rows", "init_from_torchrun", "share"]


@dataclass(frozen=True)
class World:
    """This process's place in the data-parallel group."""

    rank: int
    size: int

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_from_torchrun(device: torch.device) -> World:
    """Join the process group torchrun describes (NCCL on a GPU, gloo on the CPU)."""
    if "WORLD_SIZE" not in os.environ:
        raise SystemExit("error: --data-parallel runs under torchrun (WORLD_SIZE is not set)")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size())


def share(rows: Sequence[int], world: World) -> list[int]:
    """Rank ``world.rank``'s contiguous part of ``rows``: the first ``len % size`` ranks get one more.

    Concatenated in rank order the parts are ``rows`` again, the order the loss gathers in.

    Example:
        >>> [share(range(5), World(r, 2)) for r in range(2)]
        [[0, 1, 2], [3, 4]]
        >>> [share([7], World(r, 2)) for r in range(2)]
        [[7], []]
    """
    base, extra = divmod(len(rows), world.size)
    start = world.rank * base + min(world.rank, extra)
    return list(rows[start : start + base + (world.rank < extra)])


def gather_rows(mine: Tensor | None, rows: list[int], total: int, world: World) -> Tensor | None:
    """Assemble per-row results ``[len(rows), ...]`` of every rank into ``[total, ...]`` (on the CPU).

    ``rows`` are the data rows this rank computed; ``mine`` is ``None`` when it computed none.
    """
    parts: list[tuple[list[int], Tensor | None] | None] = [None] * world.size
    dist.all_gather_object(parts, (rows, None if mine is None else mine.cpu()))
    filled = [(r, t) for r, t in parts if t is not None]  # type: ignore[misc]
    if not filled:
        return None
    out = filled[0][1].new_empty((total, *filled[0][1].shape[1:]))
    for part_rows, values in filled:
        out[torch.tensor(part_rows, dtype=torch.long)] = values
    return out
