"""Turn the user's ``(features, labels | mask)`` into the flat problem the kernels solve.

Every kernel sees the same :class:`ContrastProblem`: ``M`` contrast vectors (as the user gave
them; the kernel normalises them when asked), a contiguous slice of them that are the anchors,
and the rule that says which contrasts are positives of which anchor. Keeping this in one
place means the dense path, the blocked path and any user kernel agree on views, masks and
``ignore_index`` by construction.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ContrastProblem:
    """The flat form of one SupCon loss evaluation.

    Attributes:
        contrasts: ``[M, D]`` vectors as given (the input's dtype, rows flattened over views):
            the kernels l2-normalise them when ``normalize`` is set, scale-safely and with their
            own gradient (docs/maths.md), so half-precision values reach the products unrounded.
        anchor_start: anchors are ``contrasts[anchor_start : anchor_start + num_anchors]``;
            anchor ``a`` never contrasts with its own row ``anchor_start + a``.
        num_anchors: ``A``.
        groups: ``[M]`` int64 group ids (class labels tiled over views, or row ids when the
            views of a row are its only positives). ``None`` when ``pos_mask`` is given.
        pos_mask: ``[A, M]`` bool, ``pos_mask[a, m]`` says contrast ``m`` is a positive of anchor
            ``a`` (the self entry is ignored). ``None`` when ``groups`` is given. With
            ``mask_views = V > 1`` it is stored untiled, ``[A/V, M/V]``, one entry per pair of
            examples: ``positive(a, m) = pos_mask[a // V, m // V]`` (``anchor_start`` and ``A``
            are then multiples of ``V``); :meth:`mask_rows` expands a slice of rows.
        valid: ``[M]`` bool, False for rows that take no part (``ignore_index``).
        temperature: ``τ > 0``.
        mask_views: the view count ``V`` by which ``pos_mask`` is tiled (1: stored tiled).
        normalize: the loss is on ``contrasts / ‖contrasts‖`` (row-wise), not on ``contrasts``.
    """

    contrasts: Tensor
    anchor_start: int
    num_anchors: int
    groups: Tensor | None
    pos_mask: Tensor | None
    valid: Tensor
    temperature: float
    mask_views: int = 1
    normalize: bool = True

    def mask_rows(self, start: int, length: int) -> Tensor:
        """``[length, M]`` bool: the tiled ``pos_mask`` rows of anchors ``start … start+length−1``.

        Only this slice is expanded over views, so the full ``(N·V)²`` mask is never built
        unless a caller asks for all rows (as the dense kernel does).
        """
        assert self.pos_mask is not None
        return tile_mask_rows(self.pos_mask, self.mask_views, start, length)

    def tensors(self) -> tuple[Tensor, Tensor | None, Tensor | None, Tensor]:
        """``(contrasts, groups, pos_mask, valid)``.

        A kernel's ``autograd.Function`` takes these as inputs and rebuilds the problem with
        :meth:`with_tensors`: ``torch.func`` transforms unwrap a Function's tensor inputs, not
        tensors inside other objects.
        """
        return self.contrasts, self.groups, self.pos_mask, self.valid

    def with_tensors(
        self, contrasts: Tensor, groups: Tensor | None, pos_mask: Tensor | None, valid: Tensor
    ) -> ContrastProblem:
        """This problem with the tensors of :meth:`tensors` replaced."""
        return dataclasses.replace(self, contrasts=contrasts, groups=groups, pos_mask=pos_mask, valid=valid)


def tile_mask_rows(pos_mask: Tensor, views: int, start: int, length: int) -> Tensor:
    """Rows ``start … start+length−1`` of ``pos_mask`` tiled ``views × views`` (see ``ContrastProblem``)."""
    if views == 1:
        return pos_mask.narrow(0, start, length)
    rows = torch.arange(start, start + length, device=pos_mask.device) // views
    return pos_mask.index_select(0, rows).repeat_interleave(views, dim=1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Similarities and the logsumexp accumulate in float32 for half inputs, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def build_problem(
    features: Tensor,
    labels: Tensor | None,
    mask: Tensor | None,
    *,
    temperature: float,
    normalize: bool,
    ignore_index: int,
) -> ContrastProblem:
    """Build the problem in which every one of the ``N·V`` vectors is an anchor and a contrast.

    Arguments are assumed validated (see ``_validation``).
    """
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    z = features.reshape(n * views, features.shape[-1])  # row n·V + v is view v of example n
    groups: Tensor | None = None
    pos_mask: Tensor | None = None
    if labels is not None:
        labels = labels.to(torch.int64)
        valid = _tile_rows(labels != ignore_index, views)
        groups = _tile_rows(labels, views)
    elif mask is not None:
        valid = torch.ones(n * views, dtype=torch.bool, device=z.device)
        pos_mask = mask  # kept untiled: ContrastProblem.mask_rows expands the rows a kernel needs
    else:  # SimCLR: the other views of a row are its only positives
        valid = torch.ones(n * views, dtype=torch.bool, device=z.device)
        groups = _tile_rows(torch.arange(n, device=z.device), views)
    return ContrastProblem(
        contrasts=z,
        anchor_start=0,
        num_anchors=n * views,
        groups=groups,
        pos_mask=pos_mask,
        valid=valid,
        temperature=temperature,
        mask_views=views if mask is not None else 1,
        normalize=normalize,
    )


def _tile_rows(t: Tensor, views: int) -> Tensor:
    """``[N]`` -> ``[N·V]``, each entry repeated ``V`` times (no op for ``V = 1``)."""
    return t if views == 1 else t.repeat_interleave(views)
