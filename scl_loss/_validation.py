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

#: Label dtypes whose every value is exactly an int64 (labels are compared as int64). The
#: unsigned 16/32-bit ones are widened to int64 first (torch implements few ops for them);
#: uint64 is refused: its values from 2**63 on have no int64 and would wrap onto other labels.
#: (torch < 2.3 has no uint16/uint32/uint64.)
_WIDENED_LABEL_DTYPES = tuple(getattr(torch, name) for name in ("uint16", "uint32") if hasattr(torch, name))
LABEL_DTYPES = (torch.uint8, torch.int8, torch.int16, torch.int32, torch.int64, *_WIDENED_LABEL_DTYPES)

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1

#: The smallest temperature accepted, ``τ ≥ 1e-12``. With l2-normalised features every logit
#: ``Φ_i·Φ_k/τ`` lies in ``[−1/τ, 1/τ]``, so at this bound logits are at most ``1e12``, a
#: per-anchor loss at most ``2/τ + log M ≈ 2e12`` and even a ``"sum"`` over ``1e26`` anchors
#: stays below float32's largest value (3.4e38): the loss is finite in the float32 compute
#: dtype, and ``scl_loss.reference.supcon_loss_dense`` is exact, for every accepted ``τ``.
#: Smaller values buy nothing: at ``τ = 1e-12`` float32 rounding alone moves a logit by
#: ``~6e-8/τ = 6e4``, and ``τ = 1e-45`` is not even a float32 (``1/τ`` overflows to inf).
MIN_TEMPERATURE = 1e-12

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


def check_temperature(name: str, value: object) -> float:
    """A temperature: a finite real number ``>= MIN_TEMPERATURE`` (see there why)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value <= 0.0:
        raise ValueError(f"{name} must be a finite number > 0, got {value}")
    if value < MIN_TEMPERATURE:
        raise ValueError(
            f"{name} must be >= {MIN_TEMPERATURE:g} (smaller temperatures overflow the float32 logits "
            f"and loss; see scl_loss._validation.MIN_TEMPERATURE), got {value:g}"
        )
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
    """An int that fits int64 (it is compared with int64 tensors, e.g. ``ignore_index``)."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {type(value).__name__}")
    value = int(value)
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{name} must lie in the range of int64, [-2**63, 2**63 - 1], got {value}")
    return value


def check_bool(name: str, value: object) -> bool:
    # bool only: a string such as "no" is truthy, and 0/1 hide a mix-up of arguments.
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {type(value).__name__}")
    return value


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
    """``labels`` must be an integer tensor of shape ``[N]`` on the device of ``against``.

    Returns them as given, or widened to int64 for uint16/uint32 (see :data:`LABEL_DTYPES`).
    """
    if not isinstance(labels, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer class ids, got {type(labels).__name__}")
    if labels.dtype not in LABEL_DTYPES:
        supported = ", ".join(str(d).removeprefix("torch.") for d in LABEL_DTYPES)
        hint = (
            "; uint64 values from 2**63 on do not fit int64: convert with labels.to(torch.int64) if yours fit"
            if labels.dtype == getattr(torch, "uint64", None)
            else ""
        )
        raise TypeError(
            f"{name} must have an integer dtype (class ids) among {supported}, got {labels.dtype}{hint}"
        )
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must have shape [N] = [{n}] to match {against}, got {tuple(labels.shape)}")
    if labels.device != device:
        raise ValueError(f"{name} must be on the {against}' device {device}, got {labels.device}")
    if labels.dtype in _WIDENED_LABEL_DTYPES:
        labels = labels.to(torch.int64)
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
