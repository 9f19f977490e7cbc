"""Module forms of the losses: thin ``nn.Module`` wrappers over :mod:`scl_loss.functional`."""

from __future__ import annotations

import inspect

from torch import Tensor, nn

from scl_loss import _validation as v
from scl_loss.distributed import is_gathering
from scl_loss.functional import SCLComponents, scl_cross_entropy, supcon_loss
from scl_loss.memory import MemoryQueue, check_queue

__all__ = ["SCLCrossEntropy", "SupConLoss"]


class SupConLoss(nn.Module):
    r"""Supervised contrastive loss; see :func:`scl_loss.functional.supcon_loss` for the maths.

    Args:
        temperature: ``τ ≥ 1e-12`` (see ``scl_loss._validation.MIN_TEMPERATURE``).
        normalize: l2-normalise the features first.
        reduction: ``"mean"`` (over anchors with a positive), ``"sum"`` or ``"none"``.
        ignore_index: label of rows that are neither anchors nor contrasts.
        path: ``"auto"``, ``"dense"`` or ``"blocked"`` (see :func:`scl_loss.functional.supcon_loss`).
        chunk_size: anchor rows per block on the blocked path (``None``: automatic).
        gather_distributed: contrast against every rank's batch under torch.distributed, with
            DDP-exact gradients (see :func:`~scl_loss.functional.supcon_loss`).
        process_group: the group to gather over (``None``: the default group).
        queue: a :class:`~scl_loss.memory.MemoryQueue` of past training steps' embeddings (a
            submodule, so ``.to(device)``, ``state_dict`` and ``.eval()``, which stops it from
            learning, include it).

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
        gather_distributed: bool = False,
        process_group: object = None,
        queue: MemoryQueue | None = None,
    ) -> None:
        super().__init__()
        self.temperature = v.check_temperature("temperature", temperature)
        self.normalize = v.check_bool("normalize", normalize)
        self.reduction = v.check_reduction("reduction", reduction)
        self.ignore_index = v.check_int("ignore_index", ignore_index)
        self.path = v.check_path("path", path)
        self.chunk_size = v.check_chunk_size("chunk_size", chunk_size)
        is_gathering(gather_distributed, process_group)  # validates both
        self.gather_distributed = gather_distributed
        self.process_group = process_group
        self.queue = check_queue(queue, has_labels=True)

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
            gather_distributed=self.gather_distributed,
            process_group=self.process_group,
            queue=self.queue,
        )

    def extra_repr(self) -> str:
        return _options_repr(self, always=("temperature",))


class SCLCrossEntropy(nn.Module):
    r"""``(1 − λ)·CE + λ·SCL`` (Gunel et al. 2020); see :func:`scl_loss.functional.scl_cross_entropy`.

    Args:
        lambda_: weight λ ∈ [0, 1] of the SCL term.
        tau: temperature ``τ ≥ 1e-12`` of the SCL term.
        scl_reduction: ``"mean"`` (default) or ``"sum"`` (the paper's eq. 1–3 literally).
        ignore_index, label_smoothing, weight: as in :class:`torch.nn.CrossEntropyLoss`.
        return_components: return ``(loss, ce, scl)`` for logging.
        path, chunk_size: the SCL kernel path and its block size (see :class:`SupConLoss`).
        gather_distributed, process_group: global-batch SCL and CE under torch.distributed with
            DDP-exact gradients (see :func:`~scl_loss.functional.scl_cross_entropy`).
        queue: a :class:`~scl_loss.memory.MemoryQueue` of past training steps' embeddings for
            the SCL term (a submodule, as in :class:`SupConLoss`).

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
        gather_distributed: bool = False,
        process_group: object = None,
        queue: MemoryQueue | None = None,
    ) -> None:
        super().__init__()
        self.lambda_ = v.check_unit_interval("lambda_", lambda_)
        self.tau = v.check_temperature("tau", tau)
        if scl_reduction not in ("mean", "sum"):
            raise ValueError(f"scl_reduction must be 'mean' or 'sum', got {scl_reduction!r}")
        self.scl_reduction = scl_reduction
        self.ignore_index = v.check_int("ignore_index", ignore_index)
        self.label_smoothing = v.check_unit_interval("label_smoothing", label_smoothing)
        # A buffer, like nn.CrossEntropyLoss, so .to(device) moves the class weights too.
        self.register_buffer("weight", weight)
        self.return_components = v.check_bool("return_components", return_components)
        self.path = v.check_path("path", path)
        self.chunk_size = v.check_chunk_size("chunk_size", chunk_size)
        is_gathering(gather_distributed, process_group)  # validates both
        self.gather_distributed = gather_distributed
        self.process_group = process_group
        self.queue = check_queue(queue, has_labels=True)

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
            gather_distributed=self.gather_distributed,
            process_group=self.process_group,
            queue=self.queue,
        )

    def extra_repr(self) -> str:
        return _options_repr(self, always=("lambda_", "tau"))


def _options_repr(module: nn.Module, always: tuple[str, ...]) -> str:
    """torch's ``extra_repr`` style: the options in ``always``, then every other one that differs
    from its default (read from ``__init__``'s signature, so each default is declared once).

    The queue is left out: as a submodule, ``nn.Module.__repr__`` prints it as a child.
    """
    parts = []
    for name, parameter in inspect.signature(type(module).__init__).parameters.items():
        if name in ("self", "queue"):
            continue
        value = getattr(module, name)
        if name in always or not _is_default(value, parameter.default):
            parts.append(f"{name}={_short_repr(value)}")
    return ", ".join(parts)


def _is_default(value: object, default: object) -> bool:
    if isinstance(value, Tensor) or isinstance(default, Tensor):
        return value is default
    return type(value) is type(default) and value == default


def _short_repr(value: object) -> str:
    # A long class-weight vector would flood the repr: its shape and dtype say enough.
    if isinstance(value, Tensor) and value.numel() > 8:
        return f"tensor(shape={tuple(value.shape)}, dtype={value.dtype})"
    return repr(value)
