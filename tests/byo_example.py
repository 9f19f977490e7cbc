"""A bring-your-own-kernel example: two SupCon implementations written from scratch.

:func:`correct_supcon` is what a user's kernel looks like to our tooling: ``supcon_loss``'s
signature, its semantics, its own code. :func:`self_in_denominator_supcon` carries the most
common SupCon bug (the anchor itself left in the softmax denominator). tests/test_byo.py
checks that the conformance suite passes the first and fails the second when pointed at them
with ``--impl``, and that the benchmarks accept ``--impl`` too (docs/byo-kernel.md).
"""

from __future__ import annotations

import torch
from torch import Tensor


def _supcon(features, labels, mask, temperature, normalize, reduction, ignore_index, exclude_self):
    # Under torch.autocast the products would run in half precision: accumulate in float32.
    with torch.autocast(features.device.type, enabled=False):
        return _supcon_fp32(
            features, labels, mask, temperature, normalize, reduction, ignore_index, exclude_self
        )


def _supcon_fp32(features, labels, mask, temperature, normalize, reduction, ignore_index, exclude_self):
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    z = features.reshape(n * views, features.shape[-1])
    # Half precision accumulates in float32, float64 stays float64 (as the library does).
    z = z.double() if z.dtype == torch.float64 else z.float()
    if normalize:
        # Not F.normalize: its gradient at a zero row is g/eps, inf in a float16 gradient.
        norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
        z = z * torch.where(norm > 0, 1.0 / norm.clamp(min=1e-12), 0.0)
    rows = torch.arange(n, device=z.device).repeat_interleave(views)
    if labels is not None:
        row_labels = labels[rows]
        positive = row_labels[:, None] == row_labels[None, :]
        valid = row_labels != ignore_index
    else:
        base = mask.bool() if mask is not None else torch.eye(n, dtype=torch.bool, device=z.device)
        positive = base[rows][:, rows]
        valid = torch.ones(n * views, dtype=torch.bool, device=z.device)
    not_self = ~torch.eye(n * views, dtype=torch.bool, device=z.device)
    contrast = valid[None, :] & (not_self if exclude_self else True)
    positive = positive & not_self & contrast & valid[:, None]
    logits = z @ z.T / temperature
    log_denominator = torch.logsumexp(logits.masked_fill(~contrast, torch.finfo(z.dtype).min), dim=1)
    num_positives = positive.sum(1)
    mean_positive = torch.where(positive, logits, 0.0).sum(1) / num_positives.clamp(min=1)
    loss = torch.where(num_positives > 0, log_denominator - mean_positive, 0.0)
    if reduction == "none":
        return loss.reshape(features.shape[:-1])
    if reduction == "sum":
        return loss.sum()
    return loss.sum() / (num_positives > 0).sum().clamp(min=1)


def correct_supcon(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """A plain dense SupCon loss with the library's semantics (one ``[N·V, N·V]`` matrix)."""
    return _supcon(features, labels, mask, temperature, normalize, reduction, ignore_index, exclude_self=True)


def self_in_denominator_supcon(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    """Deliberately wrong: keeps ``k = i`` in the denominator ``Σ_k exp(Φ_i·Φ_k/τ)``."""
    return _supcon(
        features, labels, mask, temperature, normalize, reduction, ignore_index, exclude_self=False
    )
