"""How per-anchor losses become the output: shared by every kernel path."""

from __future__ import annotations

from torch import Tensor

__all__ = ["reduce_per_anchor"]


def reduce_per_anchor(loss: Tensor, num_positives: Tensor, reduction: str) -> Tensor:
    """Apply ``reduction`` to per-anchor losses; anchors without a positive are not counted.

    ``"mean"`` divides by the number of anchors with at least one positive (by 1 when there
    are none, so an all-singleton batch gives a graph-connected 0, never 0/0).

    Example:
        >>> import torch
        >>> from scl_loss.functional import reduce_per_anchor
        >>> reduce_per_anchor(torch.tensor([1.0, 0.0, 3.0]), torch.tensor([2, 0, 1]), "mean")
        tensor(2.)
    """
    if reduction == "none":
        return loss
    total = loss.sum()
    if reduction == "sum":
        return total
    counted = (num_positives > 0).sum().clamp(min=1)
    return total / counted
