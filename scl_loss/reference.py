r"""Reference implementations to test kernels against: slow, plain, and independent.

* :func:`supcon_loss_loop` transcribes eq. 3 of Gunel et al. (2020) loop by loop in float64.
  It shares no numerics with the library's kernels, so it is the ground truth of the tests.
* :func:`supcon_loss_dense` is the plain ``N×N`` formulation most public code uses
  (HobbitLong/SupContrast style), with this library's semantics; the benchmarks' dense baseline.

Both take the same arguments as :func:`scl_loss.functional.supcon_loss` and return the same
shapes, so ``torch.testing.assert_close(my_kernel(*args), supcon_loss_loop(*args))`` is the
whole conformance check for a new kernel.
"""

from __future__ import annotations

import torch
from torch import Tensor

from scl_loss import _validation as v

__all__ = ["supcon_loss_dense", "supcon_loss_loop"]


def _check(
    features: Tensor,
    labels: Tensor | None,
    mask: Tensor | None,
    temperature: float,
    reduction: str,
    ignore_index: int,
) -> tuple[Tensor, Tensor | None, Tensor | None, float, str, int]:
    features = v.check_features(features)
    # The library reads tensor data only when asked to (a sync per check); the references are
    # slow anyway and always check, so their answer never depends on that setting.
    if not bool(torch.isfinite(features).all()):
        raise ValueError("features must be finite, but it contains NaN or Inf")
    temperature = v.check_temperature("temperature", temperature)
    reduction = v.check_reduction("reduction", reduction)
    ignore_index = v.check_int("ignore_index", ignore_index)
    n = features.shape[0]
    if labels is not None and mask is not None:
        raise ValueError("pass either labels or mask, not both")
    if labels is not None:
        labels = v.check_labels(labels, n, features.device)
    elif mask is not None:
        mask = v.check_mask(mask, n, features.device)
    elif features.dim() != 3 or features.shape[1] < 2:
        raise ValueError("labels and mask are both None, which needs features [N, V, D] with V >= 2")
    return features, labels, mask, temperature, reduction, ignore_index


def supcon_loss_loop(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    r"""Eq. 3, one anchor, one positive, one contrast at a time, in float64.

    .. math::

        \ell_i = -\frac{1}{|P(i)|}\sum_{j \in P(i)}
            \log\frac{\exp(\Phi_i\cdot\Phi_j/\tau)}{\sum_{k\ne i}\exp(\Phi_i\cdot\Phi_k/\tau)}

    Literal on purpose: no max-subtraction, no masking tricks, Python loops. Differentiable,
    so gradients can be compared too. Cost is ``O((N·V)²)`` Python steps: keep it to a few
    dozen vectors.

    Where it is not exact (write ``s_ik = Φ_i·Φ_k/τ`` and ``L_i = log Σ_{k≠i} exp(s_ik)``; float64
    overflows past ``exp(709.78)`` and underflows below ``exp(−745.1)``):

    * ``exp(s_ik)`` overflows once some ``s_ik > 709.78``: normalised features get there only
      for ``τ < 1/709.78 ≈ 1.41e-3`` and a pair with cosine above ``709.78·τ``;
    * a positive's ratio ``exp(s_ij)/Σ_k exp(s_ik)`` underflows to 0 (value ``inf``) once
      ``L_i − s_ij > 745``, e.g. at ``τ = 1e-3`` for cosines spread over ``±0.37``;
    * the *gradient* goes wrong earlier, silently: autograd's backward of that ratio forms
      ``exp(s_ij)/(Σ_k exp(s_ik))²``, which underflows to 0 once ``2·L_i − s_ij > 745``, e.g.
      at ``τ = 1e-3`` for cosines spread over ``±0.25``.

    None of this happens for ``τ ≥ 0.01`` with normalised features. For smaller ``τ`` use
    :func:`supcon_loss_dense`, which is exact at every accepted ``τ``.

    Shape:
        as :func:`scl_loss.functional.supcon_loss`.

    Example:
        >>> import torch
        >>> from scl_loss.reference import supcon_loss_loop
        >>> x = torch.randn(6, 4, dtype=torch.float64)
        >>> y = torch.tensor([0, 0, 1, 1, 1, 2])
        >>> float(supcon_loss_loop(x, y, temperature=0.5)) > 0
        True
    """
    features, labels, mask, temperature, reduction, ignore_index = _check(
        features, labels, mask, temperature, reduction, ignore_index
    )
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    x = features.to(torch.float64).reshape(n, views, -1)

    # Vector m = (row m // V, view m % V): the same flat order as the library.
    phi = []
    for row in range(n):
        for view in range(views):
            vec = x[row, view]
            if normalize:
                vec = vec / torch.clamp(torch.sqrt(torch.sum(vec * vec)), min=1e-12)
            phi.append(vec)

    def takes_part(row: int) -> bool:
        return labels is None or int(labels[row]) != ignore_index

    def is_positive(row_i: int, row_j: int) -> bool:
        if labels is not None:
            return int(labels[row_i]) == int(labels[row_j])
        if mask is not None:
            return bool(mask[row_i, row_j])
        return row_i == row_j

    m_total = n * views
    losses = []
    counted = 0
    for i in range(m_total):
        row_i = i // views
        contrasts = [k for k in range(m_total) if k != i and takes_part(k // views)]
        positives = [j for j in contrasts if is_positive(row_i, j // views)]
        if not takes_part(row_i) or not positives:
            losses.append(torch.zeros((), dtype=torch.float64) + 0.0 * x.sum())
            continue
        counted += 1
        denominator = sum(torch.exp(torch.dot(phi[i], phi[k]) / temperature) for k in contrasts)
        total = sum(
            torch.log(torch.exp(torch.dot(phi[i], phi[j]) / temperature) / denominator) for j in positives
        )
        losses.append(-total / len(positives))

    per_anchor = torch.stack(losses) if losses else x.sum() * 0.0 + torch.zeros(0, dtype=torch.float64)
    if reduction == "none":
        return per_anchor.reshape(features.shape[:-1])
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor.sum() / max(counted, 1)


def supcon_loss_dense(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    ignore_index: int = -100,
) -> Tensor:
    r"""The plain ``N×N`` formulation, computed in the input dtype, with this library's semantics.

    Builds the full positive mask, the self mask and the logit matrix, as
    HobbitLong/SupContrast's ``losses.py`` does, then subtracts the row max and takes
    ``log_prob = logits − log Σ_{k≠i} exp(logits)``. Memory: several ``(N·V)²`` tensors.
    Two differences from that code make it exact: anchors without a positive are left out
    instead of dividing 0 by 0, and the row max is taken over the denominator's entries only
    (``k ≠ i``, not ignored). SupContrast's max includes the self logit ``1/τ``, far above every
    contrast at small ``τ``, so ``exp`` of the shifted contrasts underflows to 0 and the loss
    comes out wrong (at ``τ = 0.001`` in float64, or ``τ = 0.01`` in float32 with ``D = 768``).

    For float32 and float64 input it is exact to the input's rounding at every temperature
    the library accepts (:data:`scl_loss._validation.MIN_TEMPERATURE` and up). Half-precision
    input is computed in half precision, as public code does: a timing peer there, not a
    reference (float16 logits overflow for ``τ < 1/65504``).

    Shape:
        as :func:`scl_loss.functional.supcon_loss`.

    Example:
        >>> import torch
        >>> from scl_loss.reference import supcon_loss_dense, supcon_loss_loop
        >>> x, y = torch.randn(10, 8, dtype=torch.float64), torch.randint(0, 3, (10,))
        >>> torch.allclose(supcon_loss_dense(x, y), supcon_loss_loop(x, y))
        True
    """
    features, labels, mask, temperature, reduction, ignore_index = _check(
        features, labels, mask, temperature, reduction, ignore_index
    )
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    z = features.reshape(n * views, -1)
    if normalize:
        z = torch.nn.functional.normalize(z, dim=1)
    device = z.device
    if labels is not None:
        row_labels = labels.repeat_interleave(views)
        pos = (row_labels[:, None] == row_labels[None, :]).to(z.dtype)
        keep = (row_labels != ignore_index).to(z.dtype)
    else:
        base = mask if mask is not None else torch.eye(n, dtype=torch.bool, device=device)
        pos = base.repeat_interleave(views, 0).repeat_interleave(views, 1).to(z.dtype)
        keep = torch.ones(n * views, dtype=z.dtype, device=device)
    logits_mask = (1.0 - torch.eye(n * views, dtype=z.dtype, device=device)) * keep[None, :]
    pos = pos * logits_mask * keep[:, None]

    in_denominator = logits_mask > 0
    logits = z @ z.T / temperature
    # Shift by the max over the denominator's entries (not the self logit); a row without any
    # contrast has no finite max and is shifted by 0 (it has no positive either).
    row_max = logits.masked_fill(~in_denominator, -torch.inf).amax(dim=1, keepdim=True)
    logits = logits - torch.where(row_max.isfinite(), row_max, 0.0).detach()
    # exp only where it counts: off the denominator a shifted logit may be large (the self
    # logit), and exp(-inf) = 0 exactly, with a zero gradient.
    exp_logits = torch.exp(logits.masked_fill(~in_denominator, -torch.inf))
    # A row with no contrast at all has an empty sum; it has no positive either and is dropped.
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True).clamp(min=torch.finfo(z.dtype).tiny))
    num_pos = pos.sum(1)
    per_anchor = -(pos * log_prob).sum(1) / num_pos.clamp(min=1.0)
    per_anchor = torch.where(num_pos > 0, per_anchor, torch.zeros_like(per_anchor))
    if reduction == "none":
        return per_anchor.reshape(features.shape[:-1])
    if reduction == "sum":
        return per_anchor.sum()
    return per_anchor.sum() / (num_pos > 0).sum().clamp(min=1)
