"""The loss's gradient and tangent written in plain, differentiable torch ops.

The kernels' own backward passes are fast and hand-written (in-place, gradient in the forward
sweep, half-precision parts), which autograd cannot differentiate again. When a gradient must
itself be differentiable — ``backward(create_graph=True)``, ``torch.autograd.functional.hessian``,
``torch.func.grad``/``jacrev``/``hessian``, all of which run backward with grad mode on — the
kernels' backward returns :func:`input_gradient` instead: the same gradient, recomputed from
the saved input by ordinary torch operations that autograd records. Forward-mode AD
(``torch.func.jvp``, ``torch.autograd.forward_ad``) uses :func:`output_tangent`.

Both work on ``chunk`` anchor rows at a time, like the blocked kernel; the graph that double
backward keeps still holds ``O(A·M)`` values in all. The formulas are those of docs/maths.md
("The gradient") and docs/blocked.md, with the normalisation's gradient written out.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from scl_loss._problem import ContrastProblem, compute_dtype, tile_mask_rows
from scl_loss.kernels._rows import power_of_two_rows

__all__ = ["VMAP_MESSAGE", "input_gradient", "output_tangent"]

#: The error ``torch.func.vmap`` over the losses raises (docs/maths.md, "Transforms").
VMAP_MESSAGE = (
    "scl_loss does not support torch.func.vmap over its losses: a batch of SupCon problems is one "
    "larger problem only if its rows may contrast with each other. Call the loss once per problem "
    "(a Python loop), or stack the problems' rows into one call if they may. torch.func.grad, "
    "jacrev, jvp and hessian work (vmap over the loss's backward, as jacrev uses, is supported)."
)


def _vectors(x: Tensor, normalize: bool) -> tuple[Tensor, Tensor | None]:
    """``(u, f)``: the loss's vectors (differentiable) and the factor with
    ``(∂u/∂x)ᵀ v = f ⊙ (v − u (u·v))`` per row (None without normalisation: ``u = x``)."""
    x = x.to(compute_dtype(x.dtype))
    if not normalize:
        return x, None
    _, r = power_of_two_rows(x.detach())  # exact powers of two, locally constant
    z = x * r
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    zero = norm == 0  # a zero row stays zero and gets no gradient; NaN stays NaN
    inverse = torch.where(zero, 0.0, 1.0 / torch.where(zero, 1.0, norm))
    return z * inverse, r * inverse


def _positives(p: ContrastProblem, b0: int, c: int) -> Tensor:
    """``[c, M]`` bool: the positives of anchors ``b0 … b0+c−1``."""
    start = p.anchor_start + b0
    m = p.valid.shape[0]
    if p.groups is not None:
        same = p.groups.narrow(0, start, c).unsqueeze(1) == p.groups
    else:
        assert p.pos_mask is not None
        same = tile_mask_rows(p.pos_mask, p.mask_views, b0, c)
    return same & _in_denominator(p, b0, c, m) & p.valid.narrow(0, start, c).unsqueeze(1)


def _in_denominator(p: ContrastProblem, b0: int, c: int, m: int) -> Tensor:
    rows = torch.arange(c, device=p.valid.device) + (p.anchor_start + b0)
    return (torch.arange(m, device=p.valid.device) != rows.unsqueeze(1)) & p.valid


def _logits(u: Tensor, p: ContrastProblem, b0: int, c: int) -> Tensor:
    """``[c, M]`` logits, entries outside the denominator at the most negative finite value / 2."""
    anchors = u.narrow(0, p.anchor_start + b0, c)
    s = (anchors @ u.T) / p.temperature
    keep = _in_denominator(p, b0, c, u.shape[0])
    return torch.where(keep, s, torch.finfo(s.dtype).min / 2)


def _blocks(p: ContrastProblem, chunk: int) -> list[tuple[int, int]]:
    chunk = max(1, chunk)
    return [(b0, min(chunk, p.num_anchors - b0)) for b0 in range(0, p.num_anchors, chunk)]


def _anchor_weights(grad_out: Tensor, has_positive: Tensor, reduction: str, dtype: torch.dtype) -> Tensor:
    """``∂(Σ grad_out · output)/∂loss_a``: 0 for anchors without a positive."""
    w = grad_out.to(dtype) * has_positive
    if reduction == "mean":
        w = w / has_positive.sum().clamp(min=1)
    return w


def input_gradient(x: Tensor, p: ContrastProblem, reduction: str, grad_out: Tensor, chunk: int) -> Tensor:
    """``∂(Σ grad_out ⊙ output)/∂x`` of the loss on ``p`` with contrasts ``x``, differentiably.

    With ``G_ak = w_a (π_ak − q_ak)`` (``w`` the anchor weights, ``π`` the softmax over the
    denominator, ``q`` the positives over ``|P(a)|``): ``∂/∂u = (G U + Gᵀ U_anchors)/τ``, then
    through the normalisation.
    """
    u, f = _vectors(x, p.normalize)
    blocks = _blocks(p, chunk)
    positives = [_positives(p, b0, c) for b0, c in blocks]
    if not blocks:  # no anchor: the output does not depend on x
        return (x * 0).to(x.dtype)
    num_positives = torch.cat([q.sum(dim=1) for q in positives])
    w = _anchor_weights(grad_out, num_positives > 0, reduction, u.dtype)
    anchor_rows = []
    grad_u = torch.zeros_like(u)
    for (b0, c), q in zip(blocks, positives, strict=True):
        softmax = torch.softmax(_logits(u, p, b0, c), dim=1)
        q_weights = q.to(u.dtype) / num_positives.narrow(0, b0, c).clamp(min=1).unsqueeze(1)
        g = w.narrow(-1, b0, c).unsqueeze(-1) * (softmax - q_weights) / p.temperature
        anchor_rows.append(g @ u)
        grad_u = grad_u + g.transpose(-2, -1) @ u.narrow(0, p.anchor_start + b0, c)
    before, after = p.anchor_start, u.shape[0] - p.anchor_start - p.num_anchors
    grad_u = grad_u + F.pad(torch.cat(anchor_rows, dim=-2), (0, 0, before, after))
    if f is not None:
        grad_u = f * (grad_u - u * (u * grad_u).sum(dim=-1, keepdim=True))
    return grad_u.to(x.dtype)


def output_tangent(x: Tensor, x_tangent: Tensor, p: ContrastProblem, reduction: str, chunk: int) -> Tensor:
    """The forward-mode derivative of the output along ``x_tangent``:
    ``Σ_k (π_ak − q_ak) dℓ_ak`` per anchor with a positive, then the reduction."""
    u, f = _vectors(x, p.normalize)
    t = x_tangent.to(u.dtype)
    du = t if f is None else f * (t - u * (u * t).sum(dim=1, keepdim=True))
    blocks = _blocks(p, chunk)
    per_anchor, counts = [], []
    for b0, c in blocks:
        q = _positives(p, b0, c)
        num_positives = q.sum(dim=1)
        has_positive = (num_positives > 0).unsqueeze(1)
        softmax = torch.softmax(_logits(u, p, b0, c), dim=1)
        start = p.anchor_start + b0
        dl = (du.narrow(0, start, c) @ u.T + u.narrow(0, start, c) @ du.T) / p.temperature
        coefficient = softmax * has_positive - q.to(u.dtype) / num_positives.clamp(min=1).unsqueeze(1)
        per_anchor.append((coefficient * dl).sum(dim=1))
        counts.append(num_positives)
    if not blocks:
        tangent = u.new_zeros(0) + (du.sum() * 0)
        counted = torch.zeros((), dtype=torch.int64, device=u.device)
    else:
        tangent = torch.cat(per_anchor)
        counted = (torch.cat(counts) > 0).sum()
    if reduction == "none":
        return tangent
    total = tangent.sum()
    return total / counted.clamp(min=1) if reduction == "mean" else total
