r"""Contrast every rank's anchors against the whole global batch, with exact gradients.

With ``gather_distributed=True`` (see :func:`scl_loss.functional.supcon_loss`) and an
initialised :mod:`torch.distributed` group of ``W`` ranks, rank ``r`` holding ``N_r`` rows:

1. every rank's normalised, flattened vectors are all-gathered in rank order (padded to the
   largest ``N_r``, then unpadded, so batch sizes may differ and may be 0);
2. rank ``r``'s anchors are its own slice of that global ``[M, D]`` matrix, its contrasts
   are all ``M`` rows; labels (and ``ignore_index``) are gathered too, so positives, the
   no-positive rule and the ``"mean"`` count are global;
3. the gather's backward all-reduces (sums) the gradient of the ``[M, D]`` matrix over ranks
   and hands each rank its own slice: rank ``r`` receives ``∂(Σ_s L_s)/∂x_r``.

Gradient scale. DDP (and FSDP) *average* parameter gradients over ranks. Let ``L`` be the
single-process loss on the concatenated batch, ``L = Σ_i ℓ_i / C`` (``C`` = global number of
anchors with a positive for ``"mean"``, 1 for ``"sum"``). If rank ``r`` back-propagates

.. math::

    L_r = W \cdot \frac{1}{C} \sum_{i \in \text{rank } r} \ell_i

then ``Σ_s L_s = W·L``, step 3 gives rank ``r`` the gradient ``W·∂L/∂x_r``, and DDP's
average ``(1/W) Σ_r W·(∂L/∂x_r)(∂x_r/∂θ)`` is exactly ``∂L/∂θ``. The value each rank
*returns* is ``L`` itself (computed with one scalar all-reduce); only its gradient is that
of ``L_r``. So ``mean_r(returned loss) = L`` and any rank may log it.

Without an initialised process group the loss falls back to the single-process computation
(a one-rank job is the same thing), so one script runs under ``python`` and ``torchrun``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from scl_loss._problem import ContrastProblem, compute_dtype

__all__ = [
    "cross_entropy_across_ranks",
    "gather_problem",
    "global_mean",
    "is_gathering",
    "reduce_across_ranks",
]

# Column names of the per-rank metadata row, used in error messages.
_META_FIELDS = ("rows", "views", "dim", "float64", "labels", "ignore_index", "temperature", "normalize")


def is_gathering(gather_distributed: object, process_group: object) -> bool:
    """Validate the two arguments; True when the loss must gather across ranks.

    ``gather_distributed=True`` without an initialised default process group falls back to
    single-process behaviour (documented): the same training script then runs unchanged on
    one process. Only with ``process_group=None``: an explicit group asks for gathering, and
    silently computing the single-process loss instead would be wrong.
    """
    if not isinstance(gather_distributed, bool):
        raise TypeError(f"gather_distributed must be a bool, got {type(gather_distributed).__name__}")
    if not gather_distributed:
        if process_group is not None:
            raise ValueError("process_group is only used with gather_distributed=True")
        return False
    initialised = dist.is_available() and dist.is_initialized()
    if process_group is None:
        return initialised
    if not dist.is_available() or not isinstance(process_group, dist.ProcessGroup):
        kind = type(process_group).__name__
        raise TypeError(f"process_group must be None or a torch.distributed.ProcessGroup, got {kind}")
    if not initialised:
        raise ValueError(
            "process_group was given but torch.distributed has no initialised default process group: "
            "call torch.distributed.init_process_group() first, or pass process_group=None to fall "
            "back to the single-process loss"
        )
    return True


def _world(group: object) -> tuple[int, int]:
    return dist.get_rank(group), dist.get_world_size(group)


def _gather_padded(x: Tensor, rows: list[int], group: object) -> Tensor:
    """All-gather ``x`` (``[rows[rank], ...]``) from every rank, concatenated in rank order."""
    longest = max(rows)
    if longest == 0:  # every rank is empty: same decision on all ranks, no collective needed
        return x.new_empty((0, *x.shape[1:]))
    padded = x.new_zeros((longest, *x.shape[1:]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(parts, padded, group=group)
    return torch.cat([part[:n] for part, n in zip(parts, rows, strict=True)])


class _AllGatherRows(torch.autograd.Function):
    """Forward: all-gather rows in rank order. Backward: sum the gradient over ranks, keep my slice.

    The sum is what makes the gradient exact: rank ``s``'s loss depends on rank ``r``'s rows
    through the gather, so rank ``r`` must receive ``Σ_s ∂L_s/∂x_r``, not only ``∂L_r/∂x_r``
    (the mistake of gathers whose backward returns the local gradient alone).
    """

    @staticmethod
    def forward(ctx: Any, x: Tensor, rows: list[int], rank: int, group: object) -> Tensor:  # type: ignore[override]
        ctx.rows, ctx.rank, ctx.group = rows, rank, group
        return _gather_padded(x, rows, group)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None, None, None]:  # type: ignore[override]
        # all_reduce works in place: never write into the gradient buffer autograd handed us.
        grad = grad.clone(memory_format=torch.contiguous_format)
        if grad.numel() > 0:
            dist.all_reduce(grad, op=dist.ReduceOp.SUM, group=ctx.group)
        start = sum(ctx.rows[: ctx.rank])
        return grad[start : start + ctx.rows[ctx.rank]], None, None, None


def gather_problem(
    problem: ContrastProblem,
    features: Tensor,
    has_labels: bool,
    *,
    normalize: bool,
    ignore_index: int,
    process_group: object,
) -> ContrastProblem:
    """Turn this rank's problem into: all ranks' contrasts, this rank's anchors.

    Also checks that every rank called with the same ``V``, ``D``, dtype, labels-or-not,
    ``ignore_index``, temperature and ``normalize``: a silent mismatch would give wrong
    gradients. Every rank sees the same gathered metadata, so all raise together.
    """
    rank, world = _world(process_group)
    # The rows as given (the kernel normalises them), upcast to the compute dtype: the gather's
    # backward then sums the ranks' gradients in float32, not in a half dtype.
    z = problem.contrasts.to(compute_dtype(problem.contrasts.dtype))
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    meta = torch.tensor(
        [
            n,
            views,
            z.shape[1],
            float(z.dtype == torch.float64),
            float(has_labels),
            ignore_index,
            problem.temperature,
            float(normalize),
        ],
        dtype=torch.float64,
        device=z.device,
    )
    metas = _gather_padded(meta.unsqueeze(0), [1] * world, process_group).cpu()
    differing = [
        name
        for col, name in enumerate(_META_FIELDS)
        if col > 0 and not bool((metas[:, col] == metas[0, col]).all())
    ]
    if differing:
        table = "; ".join(
            f"rank {s}: "
            + ", ".join(f"{name}={metas[s, _META_FIELDS.index(name)].item():g}" for name in differing)
            for s in range(world)
        )
        raise ValueError(
            "gather_distributed=True needs every rank to call the loss with the same views V, feature "
            f"dim D, dtype, labels-or-not, ignore_index, temperature and normalize; they differ: {table}"
        )
    row_counts = [int(r) for r in metas[:, 0].tolist()]
    sizes = [r * views for r in row_counts]
    assert problem.groups is not None  # callers reject mask= before gathering
    groups = problem.groups
    if not has_labels:  # SimCLR: groups are row ids, which must become global row ids
        groups = groups + sum(row_counts[:rank])
    ids_and_valid = torch.stack([groups, problem.valid.to(torch.int64)], dim=1)
    gathered_ids = _gather_padded(ids_and_valid, sizes, process_group)
    # replace(): any other field of the problem (e.g. the input dtype) carries over unchanged.
    return dataclasses.replace(
        problem,
        contrasts=_AllGatherRows.apply(z, sizes, rank, process_group),
        anchor_start=sum(sizes[:rank]),
        num_anchors=sizes[rank],
        groups=gathered_ids[:, 0].contiguous(),
        valid=gathered_ids[:, 1].bool(),
    )


def global_mean(local_sum: Tensor, local_denominator: Tensor | None, process_group: object) -> Tensor:
    """``Σ_r local_sum_r / Σ_r local_denominator_r`` on every rank, with DDP-exact gradients.

    The value is the global quantity; the gradient is that of ``W · local_sum / global
    denominator`` (see the module docstring). A global denominator of 0 (no anchor with a
    positive, every label ignored) divides by 1 instead: a graph-connected zero, as in the
    single-process loss. ``local_denominator=None`` means a plain sum (denominator 1).
    """
    _, world = _world(process_group)
    denominator = local_denominator if local_denominator is not None else local_sum.new_zeros(())
    stats = torch.stack([local_sum.detach().to(torch.float64), denominator.detach().to(torch.float64)])
    dist.all_reduce(stats, op=dist.ReduceOp.SUM, group=process_group)
    total, global_denominator = stats[0], stats[1]
    if local_denominator is None:
        global_denominator = torch.ones_like(global_denominator)
    else:
        global_denominator = torch.where(global_denominator > 0, global_denominator, 1.0)
    share = local_sum * (world / global_denominator).to(local_sum.dtype)
    value = (total / global_denominator).to(local_sum.dtype)
    # value + (share − share) is value exactly in the forward pass, share's gradient in backward.
    return value + (share - share.detach())


def reduce_across_ranks(
    per_anchor: Tensor, num_positives: Tensor, reduction: str, process_group: object
) -> Tensor:
    """``"mean"`` (global count of anchors with a positive) or ``"sum"`` of the global batch."""
    count = (num_positives > 0).sum() if reduction == "mean" else None
    return global_mean(per_anchor.sum(), count, process_group)


def cross_entropy_across_ranks(
    logits: Tensor,
    labels: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
    process_group: object,
) -> Tensor:
    """The batch-mean cross-entropy of the *global* batch, DDP-exact.

    ``F.cross_entropy``'s mean divides the (weighted, smoothed) sum by ``Σ w_{y_i}`` over the
    non-ignored rows (their count without ``weight``). Taking that mean per rank would weight a
    rank's rows by ``1/N_r``, which differs from the concatenated batch when batch sizes differ.
    """
    # A sum, unlike a mean, can overflow float16 (max 65504) on a large batch: accumulate in float32.
    if logits.dtype in (torch.float16, torch.bfloat16):
        logits = logits.float()
        weight = None if weight is None else weight.float()
    total = F.cross_entropy(
        logits,
        labels.to(torch.int64),
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction="sum",
    )
    kept = labels != ignore_index
    if weight is None:
        denominator = kept.sum()
    else:
        safe = labels.to(torch.int64).masked_fill(~kept, 0)
        denominator = torch.where(kept, weight.to(total.dtype)[safe], 0.0).sum()
    return global_mean(total, denominator, process_group)
