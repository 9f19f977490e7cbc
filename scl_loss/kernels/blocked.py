"""The blocked kernel: exact SupCon in ``O(M·D + chunk·M)`` memory, hand-written gradient.

The quadratic part of the loss (each anchor's logsumexp over its contrasts, and for user masks
the sum of its positive logits) is computed one block of ``chunk`` anchor rows at a time; the
positive term for group ids needs no ``[A, M]`` matrix at all (class sums). Everything,
normalisation included, happens inside one :class:`torch.autograd.Function`. The derivation of
the gradient is in ``docs/blocked.md``.

* Scalar output (``"mean"``/``"sum"``) with a gradient wanted: one sweep, three matrix products
  per block (five with half-precision parts), the gradient is accumulated in the forward pass and
  only scaled by ``grad_output`` in backward.
* ``reduction="none"``: the forward sweep keeps the per-anchor logsumexp, backward recomputes
  each block.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from scl_loss._problem import ContrastProblem, tile_mask_rows
from scl_loss.kernels import formula
from scl_loss.kernels._rows import (
    exact_addmm_,
    exact_mm,
    operand_scale,
    prepare_rows,
    split_operand,
)
from scl_loss.kernels.dense import column_bias, masked_value

__all__ = ["CHUNK_BUDGET_BYTES", "CPU_CHUNK_BUDGET_BYTES", "blocked_supcon", "default_chunk_size"]

#: Memory budget of one ``[chunk, M]`` block of logits on a GPU (the default chunk's bound):
#: large blocks keep the GPU's matrix units busy between launches.
CHUNK_BUDGET_BYTES = 256 * 2**20
#: The budget elsewhere (CPU): a 1,024-row block already runs the products at full speed on
#: a few cores, and 256 MiB blocks cost memory (N = 8,192 would be one single block).
CPU_CHUNK_BUDGET_BYTES = 32 * 2**20


def default_chunk_size(
    num_anchors: int, num_contrasts: int, element_size: int = 4, budget_bytes: int = CHUNK_BUDGET_BYTES
) -> int:
    """Anchor rows per block: the most whose ``[chunk, M]`` block fits ``budget_bytes``.

    Rounded down to a multiple of 128 (of 8 below 128) so the products tile well, at least 1
    and at most ``num_anchors``.

    Example:
        >>> from scl_loss.kernels import default_chunk_size
        >>> default_chunk_size(32768, 32768)
        2048
        >>> default_chunk_size(8192, 8192, budget_bytes=32 * 2**20)
        1024
        >>> default_chunk_size(100, 100)
        100
    """
    rows = budget_bytes // (element_size * max(1, num_contrasts))
    if rows >= 128:
        rows -= rows % 128
    elif rows >= 8:
        rows -= rows % 8
    return max(1, min(rows, num_anchors))


class _Blocks:
    """One call's rows, masking and block geometry; every block of the sweeps comes from here."""

    def __init__(self, x: Tensor, p: ContrastProblem, chunk: int) -> None:
        self.p = p
        self.rows = prepare_rows(x, p.normalize)
        self.dtype = self.rows.dtype
        self.start = p.anchor_start
        self.num_anchors = p.num_anchors
        self.inv_tau = 1.0 / p.temperature
        self.chunk = max(1, chunk)
        self.neg = masked_value(self.dtype)
        # ignore_index columns: an [M] bias row the product adds itself (CUDA fuses it into
        # the GEMM's epilogue). Always added: skipping it would need a host sync.
        self.bias = column_bias(p.valid, self.dtype)
        scales = self.rows.scales
        self.anchor_scales = None if scales is None else scales.narrow(0, self.start, self.num_anchors)

    def ranges(self) -> range:
        return range(0, self.num_anchors, self.chunk)

    def size(self, b0: int) -> int:
        return min(self.chunk, self.num_anchors - b0)

    def logits(self, b0: int, c: int) -> Tensor:
        """``[c, M]`` logits of anchors ``b0 … b0+c−1``; entries outside the denominator masked."""
        z = self.rows.operands
        anchors = z.narrow(0, self.start + b0, c)
        if not self.rows.half:
            s = torch.addmm(self.bias, anchors, z.T, alpha=self.inv_tau)
        elif self.anchor_scales is None:
            s = torch.add(self.bias, exact_mm(anchors, z.T), alpha=self.inv_tau)
        else:  # half operands: exact products, then the float32 scales
            assert self.rows.scales is not None
            s = exact_mm(anchors, z.T).mul_(self.rows.scales)
            row_scales = self.anchor_scales.narrow(0, b0, c).unsqueeze(1) * self.inv_tau
            s = torch.addcmul(self.bias, s, row_scales, out=s)
        s.diagonal(self.start + b0).fill_(self.neg)  # the self entries: (i, start+b0+i)
        return s

    def positives(self, b0: int, c: int) -> Tensor:
        """``[c, M]`` bool positives of the block (group ids or user mask), cleared off the denominator."""
        p = self.p
        if p.groups is not None:
            q = p.groups.narrow(0, self.start + b0, c).unsqueeze(1) == p.groups
        else:
            assert p.pos_mask is not None
            q = tile_mask_rows(p.pos_mask, p.mask_views, b0, c)
        q = q & p.valid & p.valid.narrow(0, self.start + b0, c).unsqueeze(1)
        q.diagonal(self.start + b0).fill_(False)
        return q

    def gradient_scale(self, weight: Tensor | None) -> Tensor | None:
        """float16 parts only: the power of two for :func:`split_operand`, from a bound on the
        entries of ``Ĝ``: block entries of at most 1 times the largest anchor ``weight`` (None:
        1), the largest scale squared and ``1/τ``."""
        scales = self.rows.scales
        if self.rows.operands.dtype != torch.float16 or self.rows.operands.shape[0] == 0:
            return None
        bound = torch.full((), self.inv_tau, dtype=self.dtype, device=self.rows.operands.device)
        if scales is not None:
            bound = bound * torch.linalg.vector_norm(scales, ord=math.inf) ** 2
        if weight is not None and weight.numel() > 0:
            bound = bound * torch.linalg.vector_norm(weight, ord=math.inf)
        return operand_scale(bound, torch.float16)

    def add_gradient(self, buf: Tensor, g: Tensor, b0: int, c: int, scale: Tensor | None) -> Tensor:
        """``buf += ∂/∂operands`` (scales held fixed) of ``Σ_ak g_ak ℓ_ak`` over the block: the row
        term ``Ĝ Z`` on the block's rows and the column term ``Ĝᵀ Z_b`` on all rows, with
        ``Ĝ = diag(s_b/τ) g diag(s)`` (``g/τ`` without scales). ``g`` is overwritten; half parts
        accumulate ``scale`` times the gradient."""
        z = self.rows.operands
        anchors = z.narrow(0, self.start + b0, c)
        rows_out = buf.narrow(0, self.start + b0, c)
        if not self.rows.half:
            rows_out.addmm_(g, z, alpha=self.inv_tau)
            return buf.addmm_(g.T, anchors, alpha=self.inv_tau)
        # Half operands enter the products unrounded: every factor goes into Ĝ, then hi + lo.
        if self.anchor_scales is None:
            g = g.mul_(self.inv_tau)
        else:
            assert self.rows.scales is not None
            g = g.mul_(self.rows.scales).mul_(self.anchor_scales.narrow(0, b0, c).unsqueeze(1) * self.inv_tau)
        parts = split_operand(g, z.dtype, scale)
        for part in parts:
            exact_addmm_(rows_out, part, z)
        for part in parts:
            buf = exact_addmm_(buf, part.T, anchors)
        return buf


def _exp_shifted_(s: Tensor) -> tuple[Tensor, Tensor]:
    """In place ``s ← exp(s − rowmax)``; returns ``(rowmax, rowsum)`` so that ``LSE = max + log(sum)``."""
    row_max = s.amax(dim=1)
    s.sub_(row_max.unsqueeze(1)).exp_()
    return row_max, s.sum(dim=1)


class _GroupPositives:
    """For group ids, per anchor ``pos_a = Σ_{p∈P(a)} ℓ_ap`` and ``|P(a)|`` from class sums:
    ``O(M·D)``, no ``[A, M]`` matrix (docs/blocked.md). The gradient takes the positives block
    by block instead, so that ``π − q`` cancels in float32 before any product."""

    def __init__(self, u: Tensor, p: ContrastProblem) -> None:
        assert p.groups is not None
        m = u.shape[0]
        # Compact ids in [0, M) without a host sync (torch.unique would need one for its size):
        # sort, mark where the group changes, cumulative sum, scatter back. Invalid rows go to
        # an extra id M, so the sums need no masked copy of u.
        sorted_groups, order = torch.sort(p.groups, stable=True)
        starts = torch.ones_like(sorted_groups, dtype=torch.bool)
        starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
        ids = torch.empty_like(order).scatter_(0, order, torch.cumsum(starts, 0) - 1)
        ids = torch.where(p.valid, ids, m)
        class_sum = u.new_zeros(m + 1, u.shape[1]).index_add_(0, ids, u)
        class_count = torch.zeros(m + 1, dtype=torch.int64, device=u.device).index_add_(
            0, ids, torch.ones_like(ids)
        )
        anchor_ids = ids.narrow(0, p.anchor_start, p.num_anchors)
        anchor_valid = p.valid.narrow(0, p.anchor_start, p.num_anchors)
        anchors = u.narrow(0, p.anchor_start, p.num_anchors)
        self.num_positives = torch.where(anchor_valid, class_count.index_select(0, anchor_ids) - 1, 0)
        # z_a·(S_g − z_a), as two batched dot products (no [A, D] temporary beyond the gathered sums).
        gathered = class_sum.index_select(0, anchor_ids)
        del class_sum
        dots = torch.einsum("ad,ad->a", anchors, gathered) - torch.einsum("ad,ad->a", anchors, anchors)
        self.positive_sum = dots / p.temperature


def _scalar_forward(blocks: _Blocks, mean: bool, need_grad: bool) -> tuple[Tensor, Tensor, Tensor | None]:
    """``(loss, num_positives, input gradient for grad_output = 1 or None)`` in one sweep."""
    p, rows, dtype = blocks.p, blocks.rows, blocks.dtype
    z = rows.operands
    device = z.device
    u = rows.vectors() if (p.groups is not None or (need_grad and p.normalize)) else None
    total = torch.zeros((), dtype=dtype, device=device)
    labels = p.groups is not None
    if labels:
        assert u is not None
        group_positives = _GroupPositives(u, p)
        num_positives = group_positives.num_positives
        w = (num_positives > 0).to(dtype)
        kappa = w / num_positives.clamp(min=1)
        total = total - (kappa * group_positives.positive_sum).sum()
    else:
        num_positives = torch.zeros(blocks.num_anchors, dtype=torch.int64, device=device)
    buf = (
        torch.zeros(z.shape, dtype=dtype, device=device) if need_grad else None
    )  # after the class sums: lower peak
    # Block gradients have entries of at most 1 (before the 1/τ and scales).
    scale = blocks.gradient_scale(None) if need_grad else None
    for b0 in blocks.ranges():
        c = blocks.size(b0)
        s = blocks.logits(b0, c)
        q = blocks.positives(b0, c) if (buf is not None or not labels) else None
        if labels:
            w_b, kappa_b = w.narrow(0, b0, c), kappa.narrow(0, b0, c)
        else:
            assert q is not None
            npos = q.sum(dim=1)
            num_positives[b0 : b0 + c] = npos
            w_b = (npos > 0).to(dtype)
            kappa_b = w_b / npos.clamp(min=1)
            # Σ_p ℓ_ap before exp (q is 0 off the denominator, where s is finite).
            total = total - (kappa_b * (s * q).sum(dim=1)).sum()
        row_max, row_sum = _exp_shifted_(s)
        total = total + (w_b * (row_max + row_sum.log())).sum()
        if buf is not None:
            assert q is not None
            # G_b = diag(w/Σ) E_b − diag(κ) Q_b: the two parts cancel in float32, before any product.
            g = s.mul_((w_b / row_sum).unsqueeze(1)).sub_(q * kappa_b.unsqueeze(1))
            buf = blocks.add_gradient(buf, g, b0, c, scale)
    counted = (num_positives > 0).sum()
    norm = 1.0 / counted.clamp(min=1).to(dtype) if mean else torch.ones((), dtype=dtype, device=device)
    if buf is None:
        return total * norm, num_positives, None
    if scale is not None:
        buf.div_(scale)
    return total * norm, num_positives, rows.input_gradient(buf.mul_(norm), u)


def _vector_forward(blocks: _Blocks) -> tuple[Tensor, Tensor, Tensor]:
    """``(per-anchor loss, num_positives, LSE)``; the LSE is what backward recomputes blocks from."""
    p, rows, dtype = blocks.p, blocks.rows, blocks.dtype
    device = rows.operands.device
    a = blocks.num_anchors
    lse = torch.zeros(a, dtype=dtype, device=device)
    if p.groups is not None:
        group_positives = _GroupPositives(rows.vectors(), p)
        num_positives, positive_sum = group_positives.num_positives, group_positives.positive_sum
    else:
        num_positives = torch.zeros(a, dtype=torch.int64, device=device)
        positive_sum = torch.zeros(a, dtype=dtype, device=device)
    for b0 in blocks.ranges():
        c = blocks.size(b0)
        s = blocks.logits(b0, c)
        if p.groups is None:
            q = blocks.positives(b0, c)
            num_positives[b0 : b0 + c] = q.sum(dim=1)
            positive_sum[b0 : b0 + c] = (s * q.to(dtype)).sum(dim=1)
        row_max, row_sum = _exp_shifted_(s)
        lse[b0 : b0 + c] = row_max + row_sum.log()
    # A product, not a torch.where: a NaN input must reach every output, also through w = 0
    # (+ 0.0 turns the −0 of 0 · negative into +0).
    w = (num_positives > 0).to(dtype)
    loss = (lse - positive_sum / num_positives.clamp(min=1)).mul_(w).add_(0.0)
    return loss, num_positives, lse


def _vector_backward(blocks: _Blocks, lse: Tensor, num_positives: Tensor, grad_out: Tensor) -> Tensor:
    """``∂(Σ_a grad_out_a loss_a)/∂x``: ``G_b = diag(c) π_b − diag(c/|P|) Q_b`` block by block."""
    rows, dtype = blocks.rows, blocks.dtype
    z = rows.operands
    weight = grad_out.to(dtype) * (num_positives > 0)
    kappa = weight / num_positives.clamp(min=1)
    buf = torch.zeros(z.shape, dtype=dtype, device=z.device)
    scale = blocks.gradient_scale(weight)
    for b0 in blocks.ranges():
        c = blocks.size(b0)
        s = blocks.logits(b0, c)
        softmax = s.sub_(lse.narrow(0, b0, c).unsqueeze(1)).exp_()  # the softmax block π_b
        q = blocks.positives(b0, c)
        g = softmax.mul_(weight.narrow(0, b0, c).unsqueeze(1)).sub_(q * kappa.narrow(0, b0, c).unsqueeze(1))
        buf = blocks.add_gradient(buf, g, b0, c, scale)
    if scale is not None:
        buf.div_(scale)
    return rows.input_gradient(buf)


class _BlockedSupCon(torch.autograd.Function):
    """``(output, num_positives, aux)``: ``aux`` is the input gradient for ``grad_output = 1``
    (scalar reductions with ``need_grad``; empty otherwise) or the per-anchor LSE (``"none"``).
    Outputs beyond the first are never differentiated."""

    @staticmethod
    def forward(  # type: ignore[override]
        x: Tensor,
        groups: Tensor | None,
        pos_mask: Tensor | None,
        valid: Tensor,
        p: ContrastProblem,
        reduction: str,
        chunk: int,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor, Tensor]:
        p = p.with_tensors(x, groups, pos_mask, valid)
        blocks = _Blocks(x, p, chunk)
        if reduction == "none":
            return _vector_forward(blocks)
        out, num_positives, grad = _scalar_forward(blocks, reduction == "mean", need_grad)
        return out, num_positives, grad if grad is not None else out.new_empty(0)

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, groups, pos_mask, valid, p, reduction, chunk, _ = inputs
        p = p.with_tensors(x, groups, pos_mask, valid)
        _, num_positives, aux = output
        ctx.mark_non_differentiable(num_positives, aux)
        ctx.set_materialize_grads(False)  # the other outputs get no gradient: no zeros for them
        ctx.problem, ctx.reduction, ctx.chunk = p, reduction, chunk
        ctx.save_for_backward(x, aux, num_positives)
        ctx.save_for_forward(x)

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor | None, *_: Tensor | None) -> tuple[Tensor | None, ...]:
        x, aux, num_positives = ctx.saved_tensors
        p, reduction, chunk = ctx.problem, ctx.reduction, ctx.chunk
        if grad_out is None:
            return (None,) * 8
        if torch.is_grad_enabled() or (reduction != "none" and aux.numel() == 0):
            # create_graph=True or torch.func: a gradient autograd can differentiate again.
            grad = formula.input_gradient(x, p, reduction, grad_out, chunk)
        elif reduction != "none":
            grad = (aux * grad_out).to(x.dtype)
        else:
            grad = _vector_backward(_Blocks(x, p, chunk), aux, num_positives, grad_out).to(x.dtype)
        return (grad, *([None] * 7))

    @staticmethod
    def vmap(info: Any, in_dims: Any, *args: Any) -> Any:
        raise NotImplementedError(formula.VMAP_MESSAGE)


class _BlockedSupConJvp(_BlockedSupCon):
    """The same Function with forward-mode AD (``torch.func.jvp``, ``forward_ad``) in eager mode:
    TorchDynamo refuses Functions that define ``jvp``, so compiled code uses the base class."""

    @staticmethod
    def jvp(ctx: Any, x_tangent: Tensor, *_: Any) -> tuple[Tensor | None, ...]:
        x = ctx.saved_tensors[0]
        return formula.output_tangent(x, x_tangent, ctx.problem, ctx.reduction, ctx.chunk), None, None


def blocked_supcon(
    p: ContrastProblem, reduction: str, chunk_size: int | None = None
) -> tuple[Tensor, Tensor]:
    """SupCon on the blocked path: ``(output, num_positives [A])``.

    ``output`` is the per-anchor loss ``[A]`` for ``reduction="none"`` (0 where ``|P(a)| = 0``)
    and the reduced scalar for ``"mean"``/``"sum"``. ``chunk_size`` is the number of anchor
    rows per block (``None``: :func:`default_chunk_size`).

    Example:
        >>> import torch
        >>> from scl_loss._problem import build_problem
        >>> from scl_loss.kernels.blocked import blocked_supcon
        >>> from scl_loss.kernels.dense import dense_supcon
        >>> x, y = torch.randn(10, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
        >>> p = build_problem(x, y, None, temperature=0.5, normalize=True, ignore_index=-100)
        >>> loss, _ = blocked_supcon(p, "none", chunk_size=3)
        >>> torch.allclose(loss, dense_supcon(p, "none")[0])
        True
    """
    x = p.contrasts
    if chunk_size is None:
        element_size = 8 if x.dtype == torch.float64 else 4  # the block is in the compute dtype
        budget = CHUNK_BUDGET_BYTES if x.is_cuda else CPU_CHUNK_BUDGET_BYTES
        chunk_size = default_chunk_size(p.num_anchors, x.shape[0], element_size, budget)
    need_grad = torch.is_grad_enabled() and x.requires_grad
    out, num_positives, _ = (_BlockedSupCon if torch.compiler.is_compiling() else _BlockedSupConJvp).apply(
        *p.tensors(), p, reduction, chunk_size, need_grad
    )
    return out, num_positives
