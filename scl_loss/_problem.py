"""Turn the user's ``(features, labels | mask)`` into the flat problem the kernels solve.

Every kernel sees the same :class:`ContrastProblem`: ``M`` l2-normalised contrast vectors,
a contiguous slice of them that are the anchors, and the rule that says which contrasts
are positives of which anchor. Keeping this in one place means the dense path, the blocked
path and any user kernel agree on views, masks and ``ignore_index`` by construction.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class ContrastProblem:
    """The flat form of one SupCon loss evaluation.

    Attributes:
        contrasts: ``[M, D]`` vectors in the compute dtype (float32, or float64 for float64 input),
            already l2-normalised when the user asked for it.
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
    """

    contrasts: Tensor
    anchor_start: int
    num_anchors: int
    groups: Tensor | None
    pos_mask: Tensor | None
    valid: Tensor
    temperature: float
    mask_views: int = 1

    def mask_rows(self, start: int, length: int) -> Tensor:
        """``[length, M]`` bool: the tiled ``pos_mask`` rows of anchors ``start … start+length−1``.

        Only this slice is expanded over views, so the full ``(N·V)²`` mask is never built
        unless a caller asks for all rows (as the dense kernel does).
        """
        assert self.pos_mask is not None
        return tile_mask_rows(self.pos_mask, self.mask_views, start, length)


def tile_mask_rows(pos_mask: Tensor, views: int, start: int, length: int) -> Tensor:
    """Rows ``start … start+length−1`` of ``pos_mask`` tiled ``views × views`` (see ``ContrastProblem``)."""
    if views == 1:
        return pos_mask.narrow(0, start, length)
    rows = torch.arange(start, start + length, device=pos_mask.device) // views
    return pos_mask.index_select(0, rows).repeat_interleave(views, dim=1)


def compute_dtype(dtype: torch.dtype) -> torch.dtype:
    """Similarities and the logsumexp accumulate in float32 for half inputs, float64 for float64."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def flatten_views(features: Tensor, normalize: bool) -> Tensor:
    """``[N, D]`` or ``[N, V, D]`` -> ``[N·V, D]`` in the compute dtype.

    Row ``n·V + v`` is view ``v`` of example ``n``.
    """
    z = features.reshape(-1, features.shape[-1]).to(compute_dtype(features.dtype))
    return l2_normalize(z) if normalize else z


def l2_normalize(z: Tensor, eps: float = 1e-12) -> Tensor:
    """Rows divided by their l2 norm; an all-zero row stays zero and gets zero gradient.

    ``F.normalize`` gives a zero row the gradient ``g / eps`` (1e12·g): finite in float32 but
    inf once cast back to a float16 input's gradient. Normalisation has no derivative at 0,
    so a zero row gets none. Every intermediate stays finite, so no ``0·inf`` reaches backward.
    """
    norm = torch.linalg.vector_norm(z, dim=1, keepdim=True)
    inverse = torch.where(norm > 0, 1.0 / norm.clamp(min=eps), 0.0)
    return z * inverse


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
    z = flatten_views(features, normalize)
    groups: Tensor | None = None
    pos_mask: Tensor | None = None
    if labels is not None:
        labels = labels.to(torch.int64)
        valid = (labels != ignore_index).repeat_interleave(views)
        groups = labels.repeat_interleave(views)
    elif mask is not None:
        valid = torch.ones(n * views, dtype=torch.bool, device=z.device)
        pos_mask = mask  # kept untiled: ContrastProblem.mask_rows expands the rows a kernel needs
    else:  # SimCLR: the other views of a row are its only positives
        valid = torch.ones(n * views, dtype=torch.bool, device=z.device)
        groups = torch.arange(n, device=z.device).repeat_interleave(views)
    return ContrastProblem(
        contrasts=z,
        anchor_start=0,
        num_anchors=n * views,
        groups=groups,
        pos_mask=pos_mask,
        valid=valid,
        temperature=temperature,
        mask_views=views if mask is not None else 1,
    )
