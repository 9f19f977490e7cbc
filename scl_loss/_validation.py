"""Argument checks shared by every public entry point.

Each check raises a ``TypeError`` (wrong kind of object or dtype) or a ``ValueError``
(right kind, wrong value or shape) whose message names the argument and what was expected,
so a user sees at once which call site is wrong.

Checks of types, shapes, dtypes and devices are free (they read metadata) and always run.
Checks that read tensor *values* (finite features and logits) synchronise the host with
the device, so they are off by default and switched on by :class:`set_data_checks`.
"""

from __future__ import annotations

import math
import numbers

import torch
from torch import Tensor

REDUCTIONS = ("mean", "sum", "none")

_INTEGER_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64)

# The one switch for checks that read tensor values; see set_data_checks. A module global
# (not thread-local) so that torch.compile guards on it: flipping it recompiles once.
_data_checks = False


class set_data_checks:
    r"""Turn on (or off) the argument checks that read tensor values.

    By default the losses check only what is free to check (types, shapes, dtypes, devices)
    and never read tensor values: reading one waits for the device (a host sync). A non-finite
    input then gives a non-finite loss, as in torch's own losses. With the checks on, NaN or
    Inf in ``features`` or ``logits`` raises a ``ValueError`` naming the argument instead, in
    eager mode and under :func:`torch.compile` alike (the check runs outside the compiled graph).

    Use it like :class:`torch.autograd.set_detect_anomaly`: as a function call, or as a
    context manager that restores the previous setting on exit.

    Args:
        mode: ``True`` to check, ``False`` not to.

    Example:
        >>> import torch
        >>> import scl_loss
        >>> features = torch.tensor([[1.0, float("nan")], [0.0, 1.0]])
        >>> scl_loss.supcon_loss(features, torch.tensor([0, 0]))
        tensor(nan)
        >>> with scl_loss.set_data_checks(True):
        ...     scl_loss.supcon_loss(features, torch.tensor([0, 0]))
        Traceback (most recent call last):
        ...
        ValueError: features must be finite, but it contains NaN or Inf
        >>> scl_loss.data_checks_enabled()
        False
    """

    def __init__(self, mode: bool) -> None:
        global _data_checks
        if not isinstance(mode, bool):
            raise TypeError(f"mode must be a bool, got {type(mode).__name__}")
        self.previous = _data_checks
        _data_checks = mode

    def __enter__(self) -> None:
        pass

    def __exit__(self, *exc_info: object) -> None:
        global _data_checks
        _data_checks = self.previous


def data_checks_enabled() -> bool:
    """Whether the checks that read tensor values are on (see :class:`set_data_checks`)."""
    return _data_checks


@torch.compiler.disable
def _check_finite(tensor: Tensor, name: str) -> None:
    # Outside any compiled graph (a graph break when traced), so compiled and eager calls raise alike.
    if not bool(torch.isfinite(tensor).all()):
        raise ValueError(f"{name} must be finite, but it contains NaN or Inf")


def check_finite(tensor: Tensor, name: str) -> Tensor:
    """``tensor`` must hold no NaN or Inf, checked only when :class:`set_data_checks` is on."""
    if _data_checks:
        _check_finite(tensor, name)
    return tensor


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
    """``features`` must be a floating tensor of shape ``[N, D]`` or ``[N, V, D]``.

    Finite values are checked only with :class:`set_data_checks` on (see :func:`check_finite`).
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(features).__name__}")
    if not features.is_floating_point():
        raise TypeError(f"{name} must have a floating dtype, got {features.dtype}")
    if features.dim() not in (2, 3):
        raise ValueError(f"{name} must have shape [N, D] or [N, V, D] (V views), got {tuple(features.shape)}")
    if features.shape[-1] == 0 or (features.dim() == 3 and features.shape[1] == 0):
        raise ValueError(f"{name} must have D >= 1 and V >= 1, got shape {tuple(features.shape)}")
    return check_finite(features, name)


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
    """``mask`` must be a ``[N, N]`` bool tensor on the features' device.

    Other dtypes are refused by dtype: accepting a 0/1 float mask would mean reading its
    values to reject 0.5 (a host sync on every call).
    """
    if not isinstance(mask, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(mask).__name__}")
    if mask.dtype != torch.bool:
        raise TypeError(
            f"{name} must be a bool tensor, got {mask.dtype}; convert a 0/1 mask with {name}.bool() "
            f"(or {name} != 0)"
        )
    if mask.shape != (n, n):
        raise ValueError(f"{name} must have shape [N, N] = [{n}, {n}], got {tuple(mask.shape)}")
    if mask.device != device:
        raise ValueError(f"{name} must be on the features' device {device}, got {mask.device}")
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
