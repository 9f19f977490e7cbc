"""Module forms of the losses: thin ``nn.Module`` wrappers over :mod:`scl_loss.functional`."""

from __future__ import annotations

from torch import Tensor, nn

from scl_loss import _validation as v
from scl_loss.functional import SCLComponents, scl_cross_entropy, supcon_loss

__all__ = ["SCLCrossEntropy", "SupConLoss"]


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss; see :func:`scl_loss.functional.supcon_loss` for the maths.

    Args:
        temperature: ``τ > 0``.
        normalize: l2-normalise the features first.
        reduction: ``"mean"`` (over anchors with a positive), ``"sum"`` or ``"none"``.
        ignore_index: label of rows that are neither anchors nor contrasts.
        path: ``"auto"``, ``"dense"`` or ``"blocked"`` (see :func:`scl_loss.functional.supcon_loss`).
        chunk_size: anchor rows per block on the blocked path (``None``: automatic).

    Shape:
        - features: :math:`(N, D)` or :math:`(N, V, D)`; labels: :math:`(N)`; mask: :math:`(N, N)`
        - output: :math:`()`, or :math:`(N)` / :math:`(N, V)` for ``"none"``

    Example:
        >>> import torch
        >>> from scl_loss import SupConLoss
        >>> criterion = SupConLoss(temperature=0.1)
        >>> features = torch.randn(16, 2, 128)  # two augmented views per example
        >>> labels = torch.randint(0, 4, (16,))
        >>> bool(criterion(features, labels) >= 0)
        True
    """

    def __init__(
        self,
        temperature: float = 0.1,
        *,
        normalize: bool = True,
        reduction: str = "mean",
        ignore_index: int = -100,
        path: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.temperature = v.check_positive_finite("temperature", temperature)
        self.normalize = normalize
        self.reduction = v.check_reduction("reduction", reduction)
        self.ignore_index = v.check_int("ignore_index", ignore_index)
        self.path = v.check_path("path", path)
        self.chunk_size = v.check_chunk_size("chunk_size", chunk_size)

    def forward(
        self, features: Tensor, labels: Tensor | None = None, *, mask: Tensor | None = None
    ) -> Tensor:
        return supcon_loss(
            features,
            labels,
            mask=mask,
            temperature=self.temperature,
            normalize=self.normalize,
            reduction=self.reduction,
            ignore_index=self.ignore_index,
            path=self.path,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return (
            f"temperature={self.temperature}, normalize={self.normalize}, reduction={self.reduction!r}, "
            f"path={self.path!r}"
        )


class SCLCrossEntropy(nn.Module):
    r"""``(1 − λ)·CE + λ·SCL`` (Gunel et al. 2020); see :func:`scl_loss.functional.scl_cross_entropy`.

    Args:
        lambda_: weight λ ∈ [0, 1] of the SCL term.
        tau: temperature τ > 0 of the SCL term.
        scl_reduction: ``"mean"`` (default) or ``"sum"`` (the paper's eq. 1–3 literally).
        ignore_index, label_smoothing, weight: as in :class:`torch.nn.CrossEntropyLoss`.
        return_components: return ``(loss, ce, scl)`` for logging.
        path, chunk_size: the SCL kernel path and its block size (see :class:`SupConLoss`).

    Shape:
        - logits: :math:`(N, C)`; features: :math:`(N, D)` or :math:`(N, V, D)`; labels: :math:`(N)`
        - output: :math:`()`

    Example:
        >>> import torch
        >>> from scl_loss import SCLCrossEntropy
        >>> criterion = SCLCrossEntropy(0.9, 0.3)
        >>> logits, features = torch.randn(16, 2), torch.randn(16, 768)
        >>> labels = torch.randint(0, 2, (16,))
        >>> criterion(logits, features, labels).shape
        torch.Size([])
    """

    weight: Tensor | None

    def __init__(
        self,
        lambda_: float,
        tau: float,
        *,
        scl_reduction: str = "mean",
        ignore_index: int = -100,
        label_smoothing: float = 0.0,
        weight: Tensor | None = None,
        return_components: bool = False,
        path: str = "auto",
        chunk_size: int | None = None,
    ) -> None:
        super().__init__()
        self.lambda_ = v.check_unit_interval("lambda_", lambda_)
        self.tau = v.check_positive_finite("tau", tau)
        if scl_reduction not in ("mean", "sum"):
            raise ValueError(f"scl_reduction must be 'mean' or 'sum', got {scl_reduction!r}")
        self.scl_reduction = scl_reduction
        self.ignore_index = v.check_int("ignore_index", ignore_index)
        self.label_smoothing = v.check_unit_interval("label_smoothing", label_smoothing)
        # A buffer, like nn.CrossEntropyLoss, so .to(device) moves the class weights too.
        self.register_buffer("weight", weight)
        self.return_components = return_components
        self.path = v.check_path("path", path)
        self.chunk_size = v.check_chunk_size("chunk_size", chunk_size)

    def forward(self, logits: Tensor, features: Tensor, labels: Tensor) -> Tensor | SCLComponents:
        return scl_cross_entropy(
            logits,
            features,
            labels,
            lambda_=self.lambda_,
            tau=self.tau,
            scl_reduction=self.scl_reduction,
            ignore_index=self.ignore_index,
            label_smoothing=self.label_smoothing,
            weight=self.weight,
            return_components=self.return_components,
            path=self.path,
            chunk_size=self.chunk_size,
        )

    def extra_repr(self) -> str:
        return f"lambda_={self.lambda_}, tau={self.tau}, scl_reduction={self.scl_reduction!r}"
