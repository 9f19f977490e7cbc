"""Implementations with a known memory footprint or a known failure, for the benchmark machinery tests."""

from __future__ import annotations

import torch
from torch import Tensor

from scl_loss.functional import supcon_loss

MIB = 1024**2


def allocate_64_mib(features: Tensor, labels: Tensor, *, temperature: float = 0.1) -> Tensor:
    """The loss plus a 64 MiB float32 buffer, every page written, alive until the loss returns."""
    buffer = torch.ones(64 * MIB // 4, dtype=torch.float32)
    loss = supcon_loss(features, labels, temperature=temperature)
    return loss + buffer[:1].sum() * 0


def always_out_of_memory(features: Tensor, labels: Tensor, *, temperature: float = 0.1) -> Tensor:
    """Fails as a too-large case does on a GPU."""
    raise torch.OutOfMemoryError("simulated out of memory")
