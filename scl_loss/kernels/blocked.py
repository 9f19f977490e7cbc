"""The blocked kernel: exact SupCon in ``O(M·D + chunk·M)`` memory, hand-written backward.

The quadratic part of the loss (each anchor's logsumexp over its contrasts, and for user
masks the sum of its positive logits) is computed one block of ``chunk`` anchor rows at a
time inside a :class:`torch.autograd.Function`; the positive term for label-defined groups
needs no ``[A, M]`` matrix at all (class sums) and is left to autograd. The derivation of the
gradient is in ``docs/blocked.md``.

* Scalar output (``"mean"``/``"sum"``) with a gradient wanted: one sweep, three matrix
  products per block, the gradient is accumulated in the forward pass and only scaled by
  ``grad_output`` in backward.
* ``reduction="none"``: the forward sweep keeps the per-anchor logsumexp, backward
  recomputes each block.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

from scl_loss._problem import ContrastProblem, tile_mask_rows

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


def _masked_value(dtype: torch.dtype) -> float:
    # Finite, so exp() gives exactly 0 and no -inf ever meets a 0 (no NaN); half of min, so
    # adding a logit to it cannot overflow to -inf.
    return torch.finfo(dtype).min / 2


def _mm(a: Tensor, b: Tensor, out_dtype: torch.dtype) -> Tensor:
    """``a @ b`` in ``out_dtype``; half operands accumulate in float32 (tensor cores on CUDA)."""
    if a.dtype == out_dtype:
        return torch.mm(a, b)
    if a.is_cuda:
        return torch.mm(a, b, out_dtype=out_dtype)
    # Off CUDA there is no mixed-dtype product; upcasting the (rounded) operands computes the
    # same thing, which is how the tests check the half-operand path on the CPU.
    return torch.mm(a.to(out_dtype), b.to(out_dtype))


def _addmm_(c: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """``c + a @ b`` accumulated in ``c`` (in place where the dtypes allow it)."""
    if a.dtype == c.dtype:
        return c.addmm_(a, b)
    if a.is_cuda:
        return torch.addmm(c, a, b, out_dtype=c.dtype)
    return c.addmm_(a.to(c.dtype), b.to(c.dtype))


class _Blocks:
    """What every block needs: the operands, the column bias, the mask slice, the self entries."""

    def __init__(
        self,
        z: Tensor,
        col_bias: Tensor | None,
        pos_mask: Tensor | None,
        mask_views: int,
        valid: Tensor,
        anchor_start: int,
        num_anchors: int,
        temperature: float,
        chunk: int,
        operand_dtype: torch.dtype,
    ) -> None:
        self.z = z
        self.zo = z.to(operand_dtype)  # no copy when the dtypes agree
        self.col_bias = col_bias
        self.pos_mask = pos_mask
        self.mask_views = mask_views
        self.valid = valid
        self.start = anchor_start
        self.num_anchors = num_anchors
        self.inv_tau = 1.0 / temperature
        self.chunk = chunk
        self.neg = _masked_value(z.dtype)

    def ranges(self) -> range:
        return range(0, self.num_anchors, self.chunk)

    def size(self, b0: int) -> int:
        return min(self.chunk, self.num_anchors - b0)

    def logits(self, b0: int, c: int) -> Tensor:
        """``[c, M]`` logits of anchors ``b0 … b0+c−1``; entries outside the denominator masked."""
        rows = self.z.narrow(0, self.start + b0, c)
        # Scale the c×D side by 1/τ, not the c×M product (as the dense kernel does).
        anchors = (rows * self.inv_tau).to(self.zo.dtype)
        if self.col_bias is None:
            s = _mm(anchors, self.zo.T, self.z.dtype)
        elif anchors.dtype == self.col_bias.dtype:
            # Invalid (ignore_index) columns: the [M] bias row is added by the product itself,
            # which CUDA can fuse into the GEMM epilogue instead of another pass over the block.
            s = torch.addmm(self.col_bias, anchors, self.zo.T)
        else:
            s = _mm(anchors, self.zo.T, self.z.dtype).add_(self.col_bias)
        s.diagonal(self.start + b0).fill_(self.neg)  # the self entries: (i, start+b0+i)
        return s

    def positives(self, b0: int, c: int) -> Tensor:
        """``[c, M]`` bool user-mask positives of the block, cleared off the denominator."""
        assert self.pos_mask is not None
        q = tile_mask_rows(self.pos_mask, self.mask_views, b0, c) & self.valid.unsqueeze(0)
        q = q & self.valid.narrow(0, self.start + b0, c).unsqueeze(1)
        q.diagonal(self.start + b0).fill_(False)
        return q

    def add_gradient(self, buf: Tensor, g: Tensor, row_scale: Tensor | None, b0: int, c: int) -> Tensor:
        """``buf += (row_scale ⊙ g) Z`` on the block's rows, ``+= (row_scale ⊙ g)ᵀ Z_b`` on all rows.

        ``g`` is the ``[c, M]`` block gradient up to a per-row factor (without ``1/τ``, which
        the caller applies once to the whole buffer).
        """
        g = g.to(self.zo.dtype)
        rows = self.z.narrow(0, self.start + b0, c)
        row_part = _mm(g, self.zo, buf.dtype)
        if row_scale is not None:
            row_part.mul_(row_scale.unsqueeze(1))
            rows = rows * row_scale.unsqueeze(1)
        buf.narrow(0, self.start + b0, c).add_(row_part)
        return _addmm_(buf, g.T, rows.to(self.zo.dtype))


def _exp_shifted_(s: Tensor) -> tuple[Tensor, Tensor]:
    """In place ``s ← exp(s − rowmax)``; returns ``(rowmax, rowsum)`` so that ``LSE = max + log(sum)``."""
    row_max = s.amax(dim=1)
    s.sub_(row_max.unsqueeze(1)).exp_()
    return row_max, s.sum(dim=1)


class _ScalarSweep(torch.autograd.Function):
    """``c · Σ_a w_a (LSE_a − [mask] pos_a/|P(a)|)`` and, when wanted, its gradient, in one sweep.

    ``weights`` (labels) is ``[A]`` with ``w_a = [|P(a)| > 0]``; with a user mask it is
    ``None`` and computed per block. Returns ``(total, num_positives)``; ``num_positives``
    is all zeros for labels (the caller has it).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx,
        z: Tensor,
        weights: Tensor | None,
        blocks: _Blocks,
        mean: bool,
        need_grad: bool,
    ) -> tuple[Tensor, Tensor]:
        a = blocks.num_anchors
        total = z.new_zeros(())
        counted = z.new_zeros(())
        num_positives = torch.zeros(a, dtype=torch.int64, device=z.device)
        buf = torch.zeros_like(z) if need_grad else None
        for b0 in blocks.ranges():
            c = blocks.size(b0)
            s = blocks.logits(b0, c)
            if weights is None:
                q = blocks.positives(b0, c)
                npos = q.sum(dim=1)
                num_positives[b0 : b0 + c] = npos
                qf = q.to(s.dtype)
                pos_sum = (s * qf).sum(dim=1)  # before exp: q is 0 off the denominator
                w = (npos > 0).to(s.dtype)
                pos_weight = w / npos.clamp(min=1).to(s.dtype)
                total = total - (pos_weight * pos_sum).sum()
            else:
                w = weights.narrow(0, b0, c)
            row_max, row_sum = _exp_shifted_(s)
            total = total + (w * (row_max + row_sum.log())).sum()
            counted = counted + w.sum()
            if buf is not None:
                softmax_scale = w / row_sum
                if weights is None:
                    g = s.mul_(softmax_scale.unsqueeze(1)).sub_(qf.mul_(pos_weight.unsqueeze(1)))
                    buf = blocks.add_gradient(buf, g, None, b0, c)
                else:
                    buf = blocks.add_gradient(buf, s, softmax_scale, b0, c)
        scale = 1.0 / counted.clamp(min=1.0) if mean else torch.ones_like(counted)
        if buf is not None:
            buf.mul_(scale * blocks.inv_tau)
            ctx.save_for_backward(buf)  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(num_positives)  # type: ignore[attr-defined]
        return total * scale, num_positives

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad_total: Tensor, _grad_npos: Tensor) -> tuple[Tensor | None, ...]:
        (buf,) = ctx.saved_tensors  # type: ignore[attr-defined]
        return buf * grad_total, None, None, None, None


class _VectorSweep(torch.autograd.Function):
    """Per anchor ``(LSE_a, pos_a, |P(a)|)`` (the last two only for user masks, else zeros).

    Backward recomputes each block from the saved ``LSE``: ``∂/∂ℓ_b = diag(g_lse) π_b +
    diag(g_pos) Q_b`` (``g_pos`` already carries the ``−1/|P(a)|`` of the loss).
    """

    @staticmethod
    def forward(  # type: ignore[override]
        ctx: FunctionCtx, z: Tensor, blocks: _Blocks
    ) -> tuple[Tensor, Tensor, Tensor]:
        a = blocks.num_anchors
        lse = z.new_zeros(a)
        pos_sum = z.new_zeros(a)
        num_positives = torch.zeros(a, dtype=torch.int64, device=z.device)
        for b0 in blocks.ranges():
            c = blocks.size(b0)
            s = blocks.logits(b0, c)
            if blocks.pos_mask is not None:
                q = blocks.positives(b0, c)
                num_positives[b0 : b0 + c] = q.sum(dim=1)
                pos_sum[b0 : b0 + c] = (s * q.to(s.dtype)).sum(dim=1)
            row_max, row_sum = _exp_shifted_(s)
            lse[b0 : b0 + c] = row_max + row_sum.log()
        ctx.blocks = blocks  # type: ignore[attr-defined]
        ctx.save_for_backward(z, lse)  # type: ignore[attr-defined]
        ctx.mark_non_differentiable(num_positives)  # type: ignore[attr-defined]
        return lse, pos_sum, num_positives

    @staticmethod
    @once_differentiable
    def backward(
        ctx: FunctionCtx, grad_lse: Tensor, grad_pos: Tensor, _grad_npos: Tensor
    ) -> tuple[Tensor | None, ...]:
        blocks: _Blocks = ctx.blocks  # type: ignore[attr-defined]
        _, lse = ctx.saved_tensors  # type: ignore[attr-defined]
        buf = torch.zeros_like(blocks.z)
        for b0 in blocks.ranges():
            c = blocks.size(b0)
            s = blocks.logits(b0, c)
            g_lse = grad_lse.narrow(0, b0, c).to(s.dtype)
            p = s.sub_(lse.narrow(0, b0, c).unsqueeze(1)).exp_()  # the softmax block π_b
            if blocks.pos_mask is not None:
                q = blocks.positives(b0, c).to(s.dtype)
                g_pos = grad_pos.narrow(0, b0, c).to(s.dtype)
                g = p.mul_(g_lse.unsqueeze(1)).add_(q.mul_(g_pos.unsqueeze(1)))
                buf = blocks.add_gradient(buf, g, None, b0, c)
            else:
                buf = blocks.add_gradient(buf, p, g_lse, b0, c)
        return buf.mul_(blocks.inv_tau), None


def _label_positive_term(p: ContrastProblem, all_valid: bool) -> tuple[Tensor, Tensor]:
    """Per anchor ``(Σ_{p∈P(a)} ℓ_ap / |P(a)|, |P(a)|)`` for group ids, from class sums (autograd).

    ``Σ_{p∈P(a)} z_a·z_p = z_a·(S_{g(a)} − z_a)`` with ``S_c`` the sum of the valid rows of
    group ``c``, and ``|P(a)| = n_{g(a)} − 1`` for a valid anchor: ``O(M·D)``, no ``[A, M]`` matrix.
    """
    assert p.groups is not None
    z = p.contrasts
    m = z.shape[0]
    # Compact ids in [0, M) without a host sync (torch.unique would need one for its size):
    # sort, mark where the group changes, cumulative sum, scatter back.
    sorted_groups, order = torch.sort(p.groups, stable=True)
    starts = torch.ones_like(sorted_groups, dtype=torch.bool)
    starts[1:] = sorted_groups[1:] != sorted_groups[:-1]
    compact = torch.empty_like(order).scatter_(0, order, torch.cumsum(starts, 0) - 1)

    summands = z if all_valid else z * p.valid.to(z.dtype).unsqueeze(1)  # skip an [M, D] copy
    class_sum = z.new_zeros(m, z.shape[1]).index_add(0, compact, summands)
    class_count = torch.zeros(m, dtype=torch.int64, device=z.device).index_add_(
        0, compact, p.valid.to(torch.int64)
    )
    anchor_ids = compact.narrow(0, p.anchor_start, p.num_anchors)
    anchor_valid = p.valid.narrow(0, p.anchor_start, p.num_anchors)
    anchors = z.narrow(0, p.anchor_start, p.num_anchors)
    num_positives = torch.where(anchor_valid, class_count.index_select(0, anchor_ids) - 1, 0)
    others = class_sum.index_select(0, anchor_ids) - anchors
    pos_sum = (anchors * others).sum(dim=1) / p.temperature
    return pos_sum / num_positives.clamp(min=1).to(z.dtype), num_positives


def _make_blocks(p: ContrastProblem, chunk_size: int | None, operand_dtype: torch.dtype | None) -> _Blocks:
    z = p.contrasts
    col_bias: Tensor | None = None
    # One host sync to skip the bias on the common all-valid batch; while compiling the bias
    # is always added (a data-dependent branch would break the graph).
    if torch.compiler.is_compiling() or not bool(p.valid.all()):
        col_bias = z.new_zeros(z.shape[0]).masked_fill_(~p.valid, _masked_value(z.dtype))
    chunk = (
        chunk_size
        if chunk_size is not None
        else default_chunk_size(
            p.num_anchors,
            z.shape[0],
            z.element_size(),
            CHUNK_BUDGET_BYTES if z.is_cuda else CPU_CHUNK_BUDGET_BYTES,
        )
    )
    return _Blocks(
        z,
        col_bias,
        p.pos_mask,
        p.mask_views,
        p.valid,
        p.anchor_start,
        p.num_anchors,
        p.temperature,
        max(1, chunk),
        operand_dtype if operand_dtype is not None else z.dtype,
    )


def blocked_supcon(
    p: ContrastProblem,
    reduction: str,
    chunk_size: int | None = None,
    *,
    operand_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """SupCon on the blocked path: ``(output, num_positives [A])``.

    ``output`` is the per-anchor loss ``[A]`` for ``reduction="none"`` (0 where ``|P(a)| = 0``)
    and the reduced scalar for ``"mean"``/``"sum"``. ``chunk_size`` is the number of anchor
    rows per block (``None``: :func:`default_chunk_size`). ``operand_dtype`` (experimental,
    off by default) rounds the operands of the matrix products to that dtype, e.g.
    ``torch.bfloat16`` for tensor-core products with float32 accumulation on CUDA; this costs
    accuracy beyond the library's documented half-precision tolerance (``docs/blocked.md``).

    Example:
        >>> import torch
        >>> from scl_loss._problem import build_problem
        >>> from scl_loss.kernels.blocked import blocked_supcon
        >>> from scl_loss.kernels.dense import dense_per_anchor_loss
        >>> x, y = torch.randn(10, 4, dtype=torch.float64), torch.tensor([0, 0, 1, 1, 1, 2, 2, 3, 3, 3])
        >>> p = build_problem(x, y, None, temperature=0.5, normalize=True, ignore_index=-100)
        >>> loss, _ = blocked_supcon(p, "none", chunk_size=3)
        >>> torch.allclose(loss, dense_per_anchor_loss(p)[0])
        True
    """
    blocks = _make_blocks(p, chunk_size, operand_dtype)
    z = p.contrasts
    uses_labels = p.groups is not None
    if uses_labels:
        pos_mean, num_positives = _label_positive_term(p, all_valid=blocks.col_bias is None)
    has_positive = None
    if reduction == "none":
        lse, pos_sum, mask_npos = _VectorSweep.apply(z, blocks)
        if not uses_labels:
            num_positives = mask_npos
            pos_mean = pos_sum / num_positives.clamp(min=1).to(z.dtype)
        loss = torch.where(num_positives > 0, lse - pos_mean, 0.0)
        return loss, num_positives

    mean = reduction == "mean"
    need_grad = torch.is_grad_enabled() and z.requires_grad
    if uses_labels:
        has_positive = (num_positives > 0).to(z.dtype)
    total, mask_npos = _ScalarSweep.apply(z, has_positive, blocks, mean, need_grad)
    if not uses_labels:
        return total, mask_npos
    positive_total = (has_positive * pos_mean).sum()
    if mean:
        positive_total = positive_total / has_positive.sum().clamp(min=1.0)
    return total - positive_total, num_positives
