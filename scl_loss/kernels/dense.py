"""The dense kernel: the whole ``[A, M]`` logit matrix in one fused ``autograd.Function``.

Best for small batches (the paper's 16), where launch count rather than arithmetic or memory
decides the time: for a scalar reduction the gradient is computed in the forward pass (one
extra product, ``(G + Gᵀ) U``, when every row is an anchor), the masks become one additive bias
row and a diagonal, and the normalisation's gradient is applied once at the end. The
derivation is in docs/maths.md ("The dense kernel").
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from scl_loss._problem import ContrastProblem
from scl_loss.kernels import formula
from scl_loss.kernels._rows import (
    Rows,
    exact_addmm_,
    exact_mm,
    operand_scale,
    prepare_rows,
    split_operand,
)

__all__ = ["column_bias", "dense_supcon", "masked_value"]


def masked_value(dtype: torch.dtype) -> float:
    """The logit given to entries outside the denominator: finite, so ``exp`` is exactly 0 and
    no ``-inf`` ever meets a 0 (no NaN); half of ``finfo.min``, so adding to it cannot overflow."""
    return torch.finfo(dtype).min / 2


def column_bias(valid: Tensor, dtype: torch.dtype) -> Tensor:
    """``[M]``: 0 for valid columns, :func:`masked_value` for ``ignore_index`` ones."""
    return torch.where(valid, 0.0, torch.tensor(masked_value(dtype), dtype=dtype))


def _logits_and_positives(rows: Rows, p: ContrastProblem) -> tuple[Tensor, Tensor]:
    """``[A, M]`` masked logits (compute dtype) and positives (bool) of the whole problem."""
    a, start, neg = p.num_anchors, p.anchor_start, masked_value(rows.dtype)
    z = rows.operands
    anchors = z.narrow(0, start, a)
    bias = column_bias(p.valid, rows.dtype)
    if not rows.half:
        s = torch.addmm(bias, anchors, z.T, alpha=1.0 / p.temperature)
    elif rows.scales is None:
        s = torch.add(bias, exact_mm(anchors, z.T), alpha=1.0 / p.temperature)
    else:  # exact products of the half values, then the float32 scales
        s = exact_mm(anchors, z.T).mul_(rows.scales)
        anchor_scales = rows.scales.narrow(0, start, a).unsqueeze(1) / p.temperature
        s = torch.addcmul(bias, s, anchor_scales, out=s)
    s.diagonal(start).fill_(neg)  # anchor a is row start + a: never its own contrast
    if p.groups is not None:
        same = p.groups.narrow(0, start, a).unsqueeze(1) == p.groups
    else:
        same = p.mask_rows(0, a)
    positive = same & p.valid & p.valid.narrow(0, start, a).unsqueeze(1)
    positive.diagonal(start).fill_(False)
    return s, positive


def _operand_gradient(rows: Rows, g: Tensor, p: ContrastProblem) -> Tensor:
    """``(Ĝ Z + Ĝᵀ Z_anchors)/τ`` from ``g = −∂L/∂ℓ`` (``[A, M]``, overwritten), with
    ``Ĝ = diag(s_anchors) G diag(s)`` (``G`` itself without scales): the gradient with respect
    to the operands, scales held fixed. One product of ``Ĝ + Ĝᵀ`` when every row is an anchor."""
    z, start, a = rows.operands, p.anchor_start, p.num_anchors
    alpha = -1.0 / p.temperature
    if rows.scales is not None:
        g = g.mul_(rows.scales).mul_(rows.scales.narrow(0, start, a).unsqueeze(1))
    full = start == 0 and a == z.shape[0]
    if full:
        g = g + g.T
        if not rows.half:
            return torch.addmm(z, g, z, beta=0.0, alpha=alpha)  # beta = 0: the first z is ignored
    scale = None
    if z.dtype == torch.float16:
        scale = operand_scale(torch.linalg.vector_norm(g, ord=math.inf), z.dtype)
    parts = split_operand(g, z.dtype, scale)
    anchor_rows = exact_mm(parts[0], z)
    for part in parts[1:]:
        anchor_rows = exact_addmm_(anchor_rows, part, z)
    if full:
        out = anchor_rows
    else:
        out = z.new_zeros(z.shape, dtype=rows.dtype)
        out.narrow(0, start, a).copy_(anchor_rows)
        anchors = z.narrow(0, start, a)
        for part in parts:
            out = exact_addmm_(out, part.T, anchors)
    return out.mul_(alpha if scale is None else alpha / scale)


class _DenseSupCon(torch.autograd.Function):
    """Scalar reductions: ``(output, num_positives, input gradient)``, the gradient for
    ``grad_output = 1`` computed in the forward pass when ``need_grad`` (else empty), so that
    backward only scales it. ``"none"``: ``(output, num_positives, log-probabilities, positive
    weights)``, the last two kept for backward. Outputs beyond the first are never differentiated.
    """

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor,
        groups: Tensor | None,
        pos_mask: Tensor | None,
        valid: Tensor,
        p: ContrastProblem,
        reduction: str,
        need_grad: bool,
    ) -> tuple[Tensor, ...]:
        p = p.with_tensors(x, groups, pos_mask, valid)
        rows = prepare_rows(x, p.normalize)
        s, positive = _logits_and_positives(rows, p)
        num_positives = positive.sum(dim=1)
        log_p = torch.log_softmax(s, dim=1)
        if reduction == "none":
            q = positive / num_positives.clamp(min=1).unsqueeze(1).to(s.dtype)
            # −Σ_p log p_ap / |P(a)|: exactly +0 without positives (0 − x, not −x, which gives −0)
            out = torch.rsub((q * log_p).sum(dim=1), 0.0)
            return out, num_positives, log_p, q
        # w_a: ∂L/∂loss_a, 0 for anchors left out; q·w folds the positive weights in.
        has_positive = num_positives > 0
        if reduction == "mean":
            w = has_positive / has_positive.sum(dtype=s.dtype).clamp(min=1.0)
        else:
            w = has_positive.to(s.dtype)
        qw = positive * (w / num_positives.clamp(min=1)).unsqueeze(1)
        out = torch.rsub(torch.dot(qw.flatten(), log_p.flatten()), 0.0)  # +0, not −0, without positives
        if not need_grad:
            return out, num_positives, s.new_empty(0)
        # −G = qw − w·π: the negated gradient with respect to the logits.
        g = torch.addcmul(qw, log_p.exp(), w.unsqueeze(1), value=-1.0)
        return out, num_positives, rows.input_gradient(_operand_gradient(rows, g, p))

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, groups, pos_mask, valid, p, reduction, _ = inputs
        p = p.with_tensors(x, groups, pos_mask, valid)
        ctx.mark_non_differentiable(*output[1:])
        ctx.set_materialize_grads(False)  # the other outputs get no gradient: no zeros for them
        ctx.problem, ctx.reduction, ctx.num_outputs = p, reduction, len(output)
        ctx.save_for_backward(x, *output[1:])
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, *_: Tensor | None) -> tuple[Tensor | None, ...]:
        return (_dense_backward(ctx, grad_out), *([None] * 6))

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> Any:
        raise NotImplementedError(formula.VMAP_MESSAGE)


def _dense_backward(ctx: Any, grad_out: Tensor | None) -> Tensor | None:
    """``∂(Σ grad_out ⊙ output)/∂x`` for :class:`_DenseSupCon`'s backward."""
    x, num_positives, *saved = ctx.saved_tensors
    p, reduction = ctx.problem, ctx.reduction
    if grad_out is None:
        return None
    if torch.is_grad_enabled() or (reduction != "none" and saved[0].numel() == 0):
        # create_graph=True or torch.func: a gradient autograd can differentiate again.
        return formula.input_gradient(x, p, reduction, grad_out, p.num_anchors)
    if reduction != "none":
        return (saved[0] * grad_out).to(x.dtype)
    log_p, q = saved
    rows = prepare_rows(x, p.normalize)
    weight = grad_out.to(log_p.dtype) * (num_positives > 0)
    g = torch.addcmul(q * grad_out.to(q.dtype).unsqueeze(1), log_p.exp(), weight.unsqueeze(1), value=-1.0)
    return rows.input_gradient(_operand_gradient(rows, g, p)).to(x.dtype)


class _DenseSupConJvp(_DenseSupCon):
    """The same Function with forward-mode AD (``torch.func.jvp``, ``forward_ad``) in eager mode:
    TorchDynamo refuses Functions that define ``jvp``, so compiled code uses the base class."""

    @staticmethod
    def jvp(ctx: Any, x_tangent: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x = ctx.saved_tensors[0]
        p = ctx.problem
        tangent = formula.output_tangent(x, x_tangent, p, ctx.reduction, p.num_anchors)
        return (tangent, *([None] * (ctx.num_outputs - 1)))


def dense_supcon(p: ContrastProblem, reduction: str) -> tuple[Tensor, Tensor]:
    """SupCon on the dense path: ``(output, num_positives [A])``.

    ``output`` is the per-anchor loss ``[A]`` for ``reduction="none"`` (0 where ``|P(a)| = 0``)
    and the reduced scalar for ``"mean"``/``"sum"``; float32, or float64 for float64 contrasts.

    Example:
        >>> import torch
        >>> from scl_loss._problem import build_problem
        >>> from scl_loss.kernels.dense import dense_supcon
        >>> from scl_loss.reference import supcon_loss_loop
        >>> x, y = torch.randn(6, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1, 2])
        >>> p = build_problem(x, y, None, temperature=0.5, normalize=True, ignore_index=-100)
        >>> want = supcon_loss_loop(x, y, temperature=0.5, reduction="sum")
        >>> torch.allclose(dense_supcon(p, "sum")[0], want)
        True
    """
    x = p.contrasts
    need_grad = torch.is_grad_enabled() and x.requires_grad
    out, num_positives, *_ = (_DenseSupCon if torch.compiler.is_compiling() else _DenseSupConJvp).apply(
        *p.tensors(), p, reduction, need_grad
    )
    return out, num_positives
