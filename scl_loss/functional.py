r"""Functional forms of the losses: :func:`supcon_loss` and :func:`scl_cross_entropy`.

The modules in :mod:`scl_loss.losses` are thin wrappers over these two functions.
"""

from __future__ import annotations

import contextlib
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from scl_loss import _validation as v
from scl_loss import distributed, memory
from scl_loss._problem import build_problem
from scl_loss._reduction import reduce_per_anchor
from scl_loss.kernels import per_anchor_loss, reduced_loss

__all__ = ["SCLComponents", "reduce_per_anchor", "scl_cross_entropy", "supcon_loss"]


class SCLComponents(NamedTuple):
    """What :func:`scl_cross_entropy` returns with ``return_components=True``.

    ``loss = (1 − λ)·ce + λ·scl``. ``scl`` is a detached zero when ``λ = 0`` (it is not
    computed), ``ce`` a detached zero when ``λ = 1``.
    """

    loss: Tensor
    ce: Tensor
    scl: Tensor


def supcon_loss(
    features: Tensor,
    labels: Tensor | None = None,
    *,
    mask: Tensor | None = None,
    temperature: float = 0.1,
    normalize: bool = True,
    reduction: str = "mean",
    ignore_index: int = -100,
    path: str = "auto",
    chunk_size: int | None = None,
    gather_distributed: bool = False,
    process_group: object = None,
    queue: memory.MemoryQueue | None = None,
) -> Tensor:
    r"""Supervised contrastive loss (Khosla et al. 2020; Gunel et al. 2020, eq. 3).

    For each anchor :math:`i` with positives :math:`P(i)` (other vectors of its class, or of
    its row when only views define positives) and contrasts :math:`k \ne i`:

    .. math::

        \ell_i = -\frac{1}{|P(i)|} \sum_{j \in P(i)}
                 \log \frac{\exp(\Phi_i \cdot \Phi_j / \tau)}{\sum_{k \ne i} \exp(\Phi_i \cdot \Phi_k / \tau)}

    with :math:`\Phi = x / \lVert x \rVert_2`. With labels, :math:`|P(i)| = N_{y_i} - 1`, so
    ``reduction="sum"`` is the paper's eq. 3 literally. An anchor with no positive (alone in
    its class) is left out: it adds nothing and is not counted by ``"mean"``.

    Args:
        features: embeddings, ``[N, D]``, or ``[N, V, D]`` for ``V`` views per example (every
            one of the ``N·V`` vectors is an anchor and a contrast; views share their row's label).
        labels: integer class ids ``[N]``. Mutually exclusive with ``mask``.
        mask: ``[N, N]`` bool (convert a 0/1 mask with ``mask.bool()``); ``mask[i, j]`` makes
            row ``j`` a positive of anchor row ``i`` (may be asymmetric; tiled over views; the
            self entry is ignored).
            With neither ``labels`` nor ``mask``, ``V >= 2`` is required and the views of a
            row are its only positives (SimCLR).
        temperature: ``τ ≥ 1e-12``.
        normalize: l2-normalise ``features`` first (scale-safely: rows of any finite magnitude
            give the loss of their directions); pass ``False`` for already normalised input.
        reduction: ``"mean"`` over anchors with a positive, ``"sum"``, or ``"none"``.
        ignore_index: rows whose label equals it are neither anchors nor contrasts.
        path: ``"dense"`` (one ``[N·V, N·V]`` logit matrix; fastest for small batches),
            ``"blocked"`` (``chunk_size`` anchor rows at a time, ``O(N·V·D + chunk·N·V)`` extra
            memory, same result), or ``"auto"``: dense while ``(N·V)² ≤ 2**22``, else blocked
            (see ``docs/blocked.md``).
        chunk_size: anchor rows per block on the blocked path; ``None`` picks the largest
            multiple of 128 whose float32 block fits 256 MiB (32 MiB on the CPU).
        gather_distributed: under an initialised :mod:`torch.distributed` group, contrast this
            rank's anchors against every rank's features and labels, with exact gradients;
            the returned value is the loss of the global batch, its gradient is scaled so that
            DDP's averaging gives the single-process gradient (see :mod:`scl_loss.distributed`
            and docs/distributed.md). Ranks may hold different ``N`` (also 0) but must agree on
            ``V``, ``D``, dtype and the other arguments. ``mask`` is not supported. Without an
            initialised group it is the single-process loss.
        process_group: the group to gather over (``None``: the default group).
        queue: a :class:`~scl_loss.memory.MemoryQueue` of past embeddings used as extra
            contrasts and positives; the batch is appended to it after use. Needs ``labels``.

    Returns:
        A scalar, or with ``reduction="none"`` a tensor of shape ``[N]`` (``[N, V]`` for
        views) holding 0 for anchors without a positive (this rank's anchors only, when
        gathering). Its dtype is float32, or float64 for float64 features: fp16/bf16
        features (also under ``torch.autocast``) enter the similarity products unrounded and
        accumulate in float32 (docs/maths.md, "Half precision").

    The call never reads tensor values on the host (no synchronisation with the device,
    except to update a ``queue`` or to gather across ranks): NaN or Inf features give a
    non-finite loss, or a ``ValueError`` with :class:`scl_loss.set_data_checks` on. Its
    gradient can be differentiated again (``create_graph=True``, ``torch.func``); see
    docs/maths.md, "Transforms".

    Shape:
        - features: :math:`(N, D)` or :math:`(N, V, D)`
        - labels: :math:`(N)`; mask: :math:`(N, N)`
        - output: :math:`()`, or :math:`(N)` / :math:`(N, V)` for ``"none"``

    Example:
        >>> import torch
        >>> from scl_loss.functional import supcon_loss
        >>> features = torch.randn(8, 32, requires_grad=True)
        >>> labels = torch.tensor([0, 0, 1, 1, 2, 2, 2, 3])
        >>> loss = supcon_loss(features, labels, temperature=0.3)
        >>> loss.backward()
        >>> loss.shape, bool(features.grad.isfinite().all())
        (torch.Size([]), True)
    """
    path = v.check_path("path", path)
    chunk_size = v.check_chunk_size("chunk_size", chunk_size)
    features = v.check_features(features)
    temperature = v.check_temperature("temperature", temperature)
    reduction = v.check_reduction("reduction", reduction)
    ignore_index = v.check_int("ignore_index", ignore_index)
    normalize = v.check_bool("normalize", normalize)
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    if labels is not None and mask is not None:
        raise ValueError("pass either labels or mask, not both")
    if labels is not None:
        labels = v.check_labels(labels, n, features.device)
    elif mask is not None:
        mask = v.check_mask(mask, n, features.device)
    elif views < 2:
        raise ValueError(
            "labels and mask are both None, which needs features of shape [N, V, D] with V >= 2 "
            f"(the views of a row are its positives); got {tuple(features.shape)}"
        )
    # Every local check comes before the first collective: a rank raising alone would hang the others.
    queue = memory.check_queue(queue, has_labels=labels is not None)
    gather = distributed.is_gathering(gather_distributed, process_group)
    if gather and mask is not None:
        raise ValueError("gather_distributed=True does not support mask=; pass labels (or views only)")
    # Autocast would run the similarity products in half precision; the loss accumulates in
    # float32 (float64 for float64 input) whatever the caller's autocast state.
    with _autocast_off(features.device.type):
        problem = build_problem(
            features, labels, mask, temperature=temperature, normalize=normalize, ignore_index=ignore_index
        )
        if gather:  # contrasts: every rank's rows; anchors: this rank's
            problem = distributed.gather_problem(
                problem,
                features,
                labels is not None,
                normalize=normalize,
                ignore_index=ignore_index,
                process_group=process_group,
            )
        batch = problem
        if queue is not None:
            problem = memory.append_queue(problem, queue)
        if gather:  # per-anchor values: the reduction must count anchors over all ranks
            per_anchor, num_positives = per_anchor_loss(problem, path=path, chunk_size=chunk_size)
        else:
            out = reduced_loss(problem, reduction, path=path, chunk_size=chunk_size)
    if queue is not None:
        memory.enqueue_batch(queue, batch)
    if gather:
        if reduction == "none":
            return per_anchor.reshape(features.shape[:-1])
        return distributed.reduce_across_ranks(per_anchor, num_positives, reduction, process_group)
    if reduction == "none":
        return out.reshape(features.shape[:-1])
    return out


def scl_cross_entropy(
    logits: Tensor,
    features: Tensor,
    labels: Tensor,
    *,
    lambda_: float,
    tau: float,
    scl_reduction: str = "mean",
    ignore_index: int = -100,
    label_smoothing: float = 0.0,
    weight: Tensor | None = None,
    return_components: bool = False,
    path: str = "auto",
    chunk_size: int | None = None,
    gather_distributed: bool = False,
    process_group: object = None,
    queue: memory.MemoryQueue | None = None,
) -> Tensor | SCLComponents:
    r"""The fine-tuning objective of Gunel et al. (2020), eq. 1: ``(1 − λ)·CE + λ·SCL``.

    .. math::

        \mathcal{L} = (1 - \lambda)\,\mathcal{L}_{CE} + \lambda\,\mathcal{L}_{SCL}

    ``CE`` is :func:`torch.nn.functional.cross_entropy` with its usual batch mean (and its
    ``weight``, ``label_smoothing``, ``ignore_index``); ``SCL`` is :func:`supcon_loss` on the
    l2-normalised ``features`` with temperature ``tau`` and reduction ``scl_reduction``.
    The paper sums SCL over anchors while averaging CE: ``scl_reduction="sum"`` reproduces
    eq. 1–3 literally; the default ``"mean"`` keeps λ's meaning independent of batch size.

    ``λ = 0`` returns exactly CE and does not compute SCL; ``λ = 1`` returns exactly SCL.
    A batch whose labels are all ``ignore_index`` gives a graph-connected zero CE (where
    ``torch`` would return NaN). CE is accumulated in float32 for half-precision logits.
    Neither term reads tensor values on the host (no synchronisation); NaN or Inf in ``logits``
    or ``features`` gives a non-finite loss, or a ``ValueError`` with
    :class:`scl_loss.set_data_checks` on.

    Args:
        logits: classifier outputs ``[N, C]``.
        features: the embeddings Φ before the classifier (e.g. the [CLS] hidden state),
            ``[N, D]`` or ``[N, V, D]``.
        labels: integer class ids ``[N]``.
        lambda_: weight λ of SCL, in ``[0, 1]``.
        tau: temperature τ ≥ 1e-12 of SCL.
        scl_reduction: ``"mean"`` or ``"sum"`` over anchors (see above).
        ignore_index, label_smoothing, weight: as in :func:`torch.nn.functional.cross_entropy`;
            ``ignore_index`` rows are also left out of SCL.
        return_components: return :class:`SCLComponents` ``(loss, ce, scl)`` for logging.
        path, chunk_size: the SCL kernel path and its block size, as in :func:`supcon_loss`.
        gather_distributed, process_group: as in :func:`supcon_loss`, for SCL; and CE becomes
            the mean over the *global* batch, ``Σ_all w_{y_i}·ce_i / Σ_all w_{y_i}`` (non-ignored
            rows), with the same DDP-exact gradient scaling. So with uneven per-rank batches
            the loss and the DDP-averaged gradients equal those of one process on the
            concatenated batch.
        queue: as in :func:`supcon_loss` (used and updated only when ``λ > 0``).

    Shape:
        - logits: :math:`(N, C)`; features: :math:`(N, D)` or :math:`(N, V, D)`; labels: :math:`(N)`
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from scl_loss.functional import scl_cross_entropy
        >>> logits = torch.randn(6, 3, requires_grad=True)
        >>> features = torch.randn(6, 16, requires_grad=True)
        >>> labels = torch.tensor([0, 1, 2, 0, 1, 2])
        >>> out = scl_cross_entropy(logits, features, labels, lambda_=0.9, tau=0.3, return_components=True)
        >>> torch.allclose(out.loss, 0.1 * out.ce + 0.9 * out.scl)
        True
    """
    lambda_ = v.check_unit_interval("lambda_", lambda_)
    tau = v.check_temperature("tau", tau)
    path = v.check_path("path", path)
    chunk_size = v.check_chunk_size("chunk_size", chunk_size)
    if scl_reduction not in ("mean", "sum"):
        raise ValueError(f"scl_reduction must be 'mean' or 'sum', got {scl_reduction!r}")
    ignore_index = v.check_int("ignore_index", ignore_index)
    label_smoothing = v.check_unit_interval("label_smoothing", label_smoothing)
    return_components = v.check_bool("return_components", return_components)
    if not isinstance(logits, Tensor):
        raise TypeError(f"logits must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"logits must have a floating dtype, got {logits.dtype}")
    if logits.dim() != 2:
        raise ValueError(f"logits must have shape [N, C], got {tuple(logits.shape)}")
    v.check_finite(logits, "logits")  # the same data-check policy as for features
    if isinstance(features, Tensor) and features.device != logits.device:
        raise ValueError(f"features must be on the logits' device {logits.device}, got {features.device}")
    features = v.check_features(features)
    n = logits.shape[0]
    if features.shape[0] != n:
        raise ValueError(
            f"features must have the same batch size N = {n} as logits, got {tuple(features.shape)}"
        )
    labels = v.check_labels(labels, n, logits.device, against="logits")
    if weight is not None and not isinstance(weight, Tensor):
        raise TypeError(f"weight must be a torch.Tensor or None, got {type(weight).__name__}")

    gather = distributed.is_gathering(gather_distributed, process_group)
    memory.check_queue(queue, has_labels=True)

    if lambda_ < 1.0:
        if gather:
            ce = distributed.cross_entropy_across_ranks(
                logits, labels, weight, ignore_index, label_smoothing, process_group
            )
        else:
            ce = _cross_entropy(logits, labels, weight, ignore_index, label_smoothing)
    if lambda_ > 0.0:
        scl = supcon_loss(
            features,
            labels,
            temperature=tau,
            reduction=scl_reduction,
            ignore_index=ignore_index,
            path=path,
            chunk_size=chunk_size,
            gather_distributed=gather_distributed,
            process_group=process_group,
            queue=queue,
        )
    if lambda_ == 0.0:
        loss, scl = ce, ce.new_zeros(())
    elif lambda_ == 1.0:
        loss, ce = scl, scl.new_zeros(())
    else:
        if ce.dtype != scl.dtype:  # float32 CE with float64 SCL
            ce, scl = ce.to(torch.float64), scl.to(torch.float64)
        loss = torch.lerp(ce, scl, lambda_)  # (1 − λ)·ce + λ·scl in one op
    if return_components:
        return SCLComponents(loss, ce, scl)
    return loss


def _autocast_off(device_type: str) -> contextlib.AbstractContextManager[object]:
    # Devices without autocast (e.g. "meta") cannot even construct a disabled one.
    if torch.amp.is_autocast_available(device_type):
        return torch.autocast(device_type, enabled=False)
    return contextlib.nullcontext()


def _cross_entropy(
    logits: Tensor,
    labels: Tensor,
    weight: Tensor | None,
    ignore_index: int,
    label_smoothing: float,
) -> Tensor:
    """``F.cross_entropy``'s batch mean ``Σ_i w_{y_i} ce_i / Σ_i w_{y_i}`` (non-ignored rows), as
    per-row losses over the clamped weight sum: a batch whose every label is ``ignore_index``
    gives a graph-connected 0 (torch: 0/0 = NaN) without a host-side check. Summed in float32
    for half logits (a half sum overflows on large batches)."""
    labels = labels.to(torch.int64)
    per_row = F.cross_entropy(
        logits,
        labels,
        weight=weight,
        ignore_index=ignore_index,
        label_smoothing=label_smoothing,
        reduction="none",
    )
    total = per_row.sum(dtype=torch.float64 if per_row.dtype == torch.float64 else torch.float32)
    kept = labels != ignore_index
    if weight is None:
        return total / kept.sum().clamp(min=1)
    row_weight = weight.to(total.dtype).index_select(0, labels.masked_fill(~kept, 0))
    denominator = torch.where(kept, row_weight, 0.0).sum()
    return total / denominator.clamp(min=torch.finfo(total.dtype).tiny)
