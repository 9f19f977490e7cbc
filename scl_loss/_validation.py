"""Argument checks shared by every public entry point.

Each check raises a ``TypeError`` (wrong kind of object or dtype) or a ``ValueError``
(right kind, wrong value or shape) whose message names the argument and what was expected,
so a user sees at once which call site is wrong.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)


def _is_compiling() -> bool:
    # Data-dependent checks (they read tensor values, i.e. synchronise) are skipped while
    # torch.compile traces: the eager call of the same code has already checked them.
    return torch.compiler.is_compiling()


def check_positive_finite(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    return value


def check_unit_interval(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1], got {type(value).__name__}")
    value = float(value)
    if not (0.0 <= value <= 1.0):  # also rejects NaN
        raise ValueError(f"{name} must lie in [0, 1], got {value}")
    return value


def check_reduction(name: str, value: object) -> str:
    if value not in REDUCTIONS:
        raise ValueError(f"{name} must be one of {REDUCTIONS}, got {value!r}")
    return str(value)


def check_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    return int(value)


def check_features(features: object, name: str = "features") -> Tensor:
    """``features`` must be a finite floating tensor of shape ``[N, D]`` or ``[N, V, D]``."""
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {features.dtype}")
    if features.dim() not in (2, 3):
        raise ValueError(f"{name} must have shape [N, D] or [N, V, D] (V views), got {tuple(features.shape)}")
    if features.shape[-1] == 0 or (features.dim() == 3 and features.shape[1] == 0):
        raise ValueError(f"{name} must have D >= 1 and V >= 1, got shape {tuple(features.shape)}")
    if not _is_compiling() and not bool(torch.isfinite(features).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or Inf")
    return features


def check_labels(
    labels: object, n: int, device: torch.device, name: str = "labels", against: str = "features"
) -> Tensor:
    """``labels`` must be an integer tensor of shape ``[N]`` on the device of ``against``."""
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype not in _INTEGER_DTYPES:
        raise TypeError(f"{name} must have an integer dtype (class ids), got {labels.dtype}")
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [N] = [{n}] to match {against}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} must be on the {against}' device {device}, got {labels.device}")
    return labels


def check_mask(mask: object, n: int, device: torch.device, name: str = "mask") -> Tensor:
    """``mask`` must be a ``[N, N]`` bool or 0/1 tensor on the features' device."""
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype.is_complex:
        raise TypeError(f"{name} must be bool or hold 0/1 values, got {mask.dtype}")
    if mask.shape != (n, n):
        raise ValueError(f"{name} must have shape [N, N] = [{n}, {n}], got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} must be on the features' device {device}, got {mask.device}")
    if mask.dtype != torch.bool:
        if not _is_compiling() and not bool(((mask == 0) | (mask == 1)).all()):
            raise ValueError(f"{name} must hold only 0 and 1 (or be bool)")
        mask = mask != 0
    return mask


PATHS = ("auto", "dense", "blocked")


def check_path(name: str, value: object) -> str:
    if value not in PATHS:
        raise ValueError(f"{name} must be one of {PATHS}, got {value!r}")
    return str(value)


def check_chunk_size(name: str, value: object) -> int | None:
    """``None`` (chosen from the problem size) or an int ≥ 1."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be None or an int >= 1, got {type(value).__name__}")
    if value < 1:
        raise ValueError(f"{name} must be None or an int >= 1, got {value}")
    return int(value)
