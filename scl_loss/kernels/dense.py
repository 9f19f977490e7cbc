"""The dense kernel: one ``[A, M]`` similarity matrix, the fewest launches, autograd backward.

Best for small batches (the paper's 16), where launch count rather than arithmetic or
memory decides the time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scl_loss._problem import ContrastProblem


def _contrast_and_positive_masks(p: ContrastProblem) -> tuple[Tensor, Tensor]:
    """``[A, M]`` masks: which contrasts enter anchor a's denominator, and which are its positives."""
    a, m = p.num_anchors, p.contrasts.shape[0]
    device = p.contrasts.device
    rows = torch.arange(a, device=device)
    not_self = torch.ones(a, m, dtype=torch.bool, device=device)
    not_self[rows, rows + p.anchor_start] = False
    in_denominator = not_self & p.valid.unsqueeze(0)
    anchor_valid = p.valid.narrow(0, p.anchor_start, a).unsqueeze(1)
    if p.groups is not None:
        anchor_groups = p.groups.narrow(0, p.anchor_start, a)
        same = anchor_groups.unsqueeze(1) == p.groups.unsqueeze(0)
    else:
        same = p.mask_rows(0, a)
    positive = same & in_denominator & anchor_valid
    return in_denominator, positive


def dense_per_anchor_loss(p: ContrastProblem) -> tuple[Tensor, Tensor]:
    """Per-anchor SupCon loss and positive counts from the full ``[A, M]`` logit matrix."""
    z = p.contrasts
    anchors = z.narrow(0, p.anchor_start, p.num_anchors)
    # Scale the A×D side, not the A×M product: one fewer pass over the big matrix.
    logits = (anchors / p.temperature) @ z.T
    in_denominator, positive = _contrast_and_positive_masks(p)
    # Mask with the most negative *finite* value, before logsumexp takes its max: exp()
    # underflows to exactly 0, and no -inf ever meets a 0 in forward or backward.
    masked = logits.masked_fill(~in_denominator, torch.finfo(logits.dtype).min)
    log_denominator = torch.logsumexp(masked, dim=1)
    num_positives = positive.sum(dim=1)
    positive_logit_sum = torch.where(positive, logits, 0.0).sum(dim=1)
    mean_positive_logit = positive_logit_sum / num_positives.clamp(min=1)
    loss = torch.where(num_positives > 0, log_denominator - mean_positive_logit, 0.0)
    return loss, num_positives
