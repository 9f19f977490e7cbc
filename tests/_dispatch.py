"""Count what a call does at the aten level: compute ops, and host synchronisations.

A :class:`~torch.utils._python_dispatch.TorchDispatchMode` sees every aten call below autograd
(forward and backward). *Compute ops* are those calls minus views, ``detach`` and the wrapping
of Python scalars into CPU tensors (``lift_fresh``, ``scalar_tensor``), i.e. what launches a
kernel on a GPU; *syncs* are the calls that read a device value on the host or whose output
size depends on tensor values (the host must wait for the device).
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten

#: Calls that read a device value on the host or size their output from tensor values.
SYNC_OPS = frozenset(
    {
        "_local_scalar_dense",  # .item(), bool(t), int(t), float(t)
        "is_nonzero",
        "equal",
        "nonzero",  # boolean-mask indexing, torch.where(cond)
        "masked_select",
        "_unique",
        "_unique2",
        "unique_dim",
        "unique_consecutive",
        "unique_dim_consecutive",
        "bincount",
    }
)
_NOT_COMPUTE = frozenset({"detach", "lift_fresh", "lift_fresh_copy", "scalar_tensor"})


@dataclass
class OpCount:
    compute: int = 0
    syncs: int = 0
    names: collections.Counter = field(default_factory=collections.Counter)
    sync_names: collections.Counter = field(default_factory=collections.Counter)


def _sizes_from_data(func, args, kwargs) -> bool:
    """Boolean-mask indexing (a hidden ``nonzero``), and ``repeat_interleave`` with tensor repeats
    and no ``output_size``: the output's size comes from tensor values."""
    name = func.overloadpacket.__name__
    if name in ("index", "index_put", "index_put_", "_index_put_impl_"):
        indices = args[1] if len(args) > 1 else kwargs.get("indices", ())
        return any(t is not None and t.dtype in (torch.bool, torch.uint8) for t in indices)
    if func is aten.repeat_interleave.Tensor or func is aten.repeat_interleave.self_Tensor:
        return kwargs.get("output_size") is None
    return False


class _Counter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = OpCount()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        is_sync = name in SYNC_OPS or _sizes_from_data(func, args, kwargs or {})
        if is_sync:
            self.count.syncs += 1
            self.count.sync_names[str(func)] += 1
        elif not (func.is_view or name in _NOT_COMPUTE):
            self.count.compute += 1
            self.count.names[str(func)] += 1
        return func(*args, **(kwargs or {}))


def count_ops(fn: Callable[[], object]) -> OpCount:
    """Run ``fn()`` once under the counter."""
    counter = _Counter()
    with counter:
        fn()
    return counter.count
