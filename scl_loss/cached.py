r"""Exact gradient caching: the SCL batch is the whole batch, the encoder sees micro-batches.

:func:`cached_backward` computes the parameter gradient of ``criterion`` on a batch of ``N``
examples while the encoder only ever holds the activations of ``micro_batch_size`` of them
(Gao et al. 2021, "GradCache"). docs/caching.md has the exactness argument, the comparison with
gradient accumulation, and the AMP and DDP recipes.

It is two encoder passes around the loss, and each pass is a function of its own for code that
cannot run them in one call (a loss whose backward the trainer drives, e.g. the
sentence-transformers ``CachedSupConLoss``): :func:`encode_micro_batches` encodes without a
graph and returns the outputs with a :class:`MicroBatches` record, and
:func:`backward_micro_batches` re-encodes from that record with a graph and backpropagates the
outputs' gradient into the parameters.
"""

from __future__ import annotations

import contextlib
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor

from scl_loss.functional import SCLComponents

__all__ = ["MicroBatches", "backward_micro_batches", "cached_backward", "encode_micro_batches"]

Inputs = Tensor | Mapping[str, Any] | Sequence[Any]
Outputs = tuple[Tensor | None, Tensor]  # (logits or None, features)
Grads = tuple[Tensor | None, Tensor | None]  # their gradients, None where the loss does not use one
Forward = Callable[[Any], Tensor | tuple[Tensor, Tensor]]
NoSync = Callable[[], contextlib.AbstractContextManager[Any]]


def cached_backward(
    forward: Forward,
    inputs: Inputs,
    labels: Tensor | None,
    criterion: Callable[..., Tensor | SCLComponents],
    *,
    micro_batch_size: int,
    backward: Callable[[Tensor], object] | None = None,
    no_sync: NoSync | None = None,
) -> Tensor | SCLComponents:
    r"""Backpropagate ``criterion`` on the whole batch, running ``forward`` on micro-batches.

    Three passes, each over the micro-batches ``inputs[i·m : (i+1)·m]`` (``m = micro_batch_size``;
    the last may be shorter):

    1. without a graph: ``forward`` on each micro-batch, keeping only its outputs;
    2. ``criterion`` on the concatenated outputs (leaf tensors) and ``labels``, then
       ``backward(loss)``: the gradient of the loss with respect to every output row;
    3. with a graph, micro-batch by micro-batch: ``forward`` again, with the RNG state its first
       pass started from (same dropout masks), and backpropagation of that micro-batch's slice
       of the gradient from step 2.

    Parameter ``.grad`` then holds what the uncached step (the same micro-batches encoded with a
    graph, concatenated, ``criterion``, ``loss.backward()``) would have added: ``∂L/∂θ =
    Σ_j (∂z_j/∂θ)ᵀ ∂L/∂z_j`` over the micro-batches' outputs ``z_j``, exactly up to the order of
    float additions. The RNG is left as after step 2. The RNG state
    replayed is the CPU generator's and the CUDA generators of the current device and of every
    device that holds an input tensor. Steps 1 and 3 are :func:`encode_micro_batches` and
    :func:`backward_micro_batches`.

    Args:
        forward: maps one micro-batch (of the same kind as ``inputs``; a mapping becomes a
            ``dict``) to ``features`` for ``criterion(features, labels)`` (e.g.
            :class:`~scl_loss.SupConLoss`) or to ``(logits, features)`` for
            ``criterion(logits, features, labels)`` (e.g. :class:`~scl_loss.SCLCrossEntropy`).
            It must be deterministic given the RNG state (it runs twice per micro-batch) and
            should not update state that the second run would update again (BatchNorm running
            statistics are updated twice).
        inputs: a tensor, or a mapping (e.g. a Hugging Face ``BatchEncoding``), tuple or list,
            possibly nested (e.g. one ``BatchEncoding`` per view), whose tensors all have the
            same size ``N`` along dim 0; they are split along dim 0, other values are passed to
            every micro-batch unchanged.
        labels: ``[N]``, passed to ``criterion`` whole; ``None`` calls ``criterion`` without
            labels (e.g. SimCLR-style views).
        criterion: returns the scalar loss, or :class:`~scl_loss.SCLComponents` (its ``loss``
            is backpropagated). ``gather_distributed=True`` criteria work as usual.
        micro_batch_size: rows per micro-batch, an int ≥ 1.
        backward: how to backpropagate the loss in step 2; the gradient it leaves on the
            outputs (whatever scaling it applies) is what step 3 propagates into the
            parameters. Default ``loss.backward()``; with a
            :class:`torch.amp.GradScaler` pass ``lambda loss: scaler.scale(loss).backward()``,
            with Accelerate ``accelerator.backward``.
        no_sync: under DDP, the wrapped model's ``no_sync`` (``ddp_model.no_sync``): step 3
            runs every micro-batch but the last inside it, so the gradients are all-reduced
            once per call. ``None``: no context (correct under DDP too, with one
            all-reduce per micro-batch).

    Returns:
        the criterion's output, detached: the loss, or :class:`~scl_loss.SCLComponents`.

    Shape:
        - inputs: :math:`(N, *)` per tensor; labels: :math:`(N)`
        - forward's output per micro-batch of :math:`n` rows: :math:`(n, D)` or
          :math:`(n, V, D)` features, and :math:`(n, C)` logits
        - output: :math:`()` (or three of them in :class:`~scl_loss.SCLComponents`)

    Example:
        >>> import torch
        >>> from scl_loss import SCLCrossEntropy, cached_backward
        >>> encoder, head = torch.nn.Linear(32, 16), torch.nn.Linear(16, 2)
        >>> def forward(x):
        ...     phi = encoder(x)
        ...     return head(phi), phi
        >>> inputs, labels = torch.randn(10, 32), torch.randint(0, 2, (10,))
        >>> loss = cached_backward(forward, inputs, labels, SCLCrossEntropy(0.9, 0.3), micro_batch_size=4)
        >>> loss.requires_grad, encoder.weight.grad.shape
        (False, torch.Size([16, 32]))
    """
    n, tensors = _check_arguments(forward, inputs, labels, criterion, micro_batch_size, backward, no_sync)
    # Step 1: the outputs without a graph, and the RNG state each micro-batch started from.
    outputs, micro_batches = _encode(forward, inputs, n, tensors, micro_batch_size)

    # Step 2: the loss on the whole batch, with the outputs as leaves.
    leaves = [None if out is None else out.requires_grad_() for out in outputs]
    del outputs
    args = [leaf for leaf in leaves if leaf is not None] + ([] if labels is None else [labels])
    result = criterion(*args)
    loss = _check_result(result)
    if backward is None:
        loss.backward()
    else:
        backward(loss)
    grads = (None if leaves[0] is None else leaves[0].grad, leaves[1].grad)
    if all(grad is None for grad in grads):
        raise RuntimeError(
            "backward left no gradient on the forward's outputs: it must backpropagate the loss"
        )

    # Step 3: re-encode with a graph from the same RNG state; push each micro-batch's gradient through.
    _backward(micro_batches, grads, no_sync)
    if isinstance(result, SCLComponents):
        return SCLComponents(*(t.detach() for t in result))
    return loss.detach()


@dataclass(frozen=True, repr=False)
class MicroBatches:
    """What :func:`encode_micro_batches` keeps for :func:`backward_micro_batches` to re-encode the batch.

    Not built by hand. It holds ``forward`` and ``inputs`` themselves (not copies: neither may
    change between the two phases), the micro-batches' row bounds, the RNG state each one's
    graph-free pass started from, the CUDA devices whose generators those states cover, and
    each micro-batch's output shapes and dtypes (the replay must reproduce them).
    """

    forward: Forward
    inputs: Inputs
    bounds: tuple[tuple[int, int], ...]
    rng_states: tuple[_RngState, ...]
    devices: tuple[int, ...]
    signatures: tuple[tuple[object, ...], ...]
    shapes: tuple[torch.Size | None, torch.Size]  # of the concatenated (logits or None, features)

    def __repr__(self) -> str:
        rows = self.bounds[-1][1]
        kind = "features" if self.shapes[0] is None else "(logits, features)"
        return f"{type(self).__name__}(rows={rows}, micro_batches={len(self.bounds)}, outputs={kind})"


def encode_micro_batches(
    forward: Forward, inputs: Inputs, *, micro_batch_size: int
) -> tuple[Tensor | tuple[Tensor, Tensor], MicroBatches]:
    r"""Phase 1 of gradient caching: ``forward`` on each micro-batch without a graph.

    Runs ``forward`` under :func:`torch.no_grad` on ``inputs[i·m : (i+1)·m]`` (``m =
    micro_batch_size``; the last may be shorter, an empty batch is one empty micro-batch),
    saving the RNG state each micro-batch starts from, and returns the concatenated outputs,
    which have no graph (the encoder keeps no activations), with the :class:`MicroBatches`
    record that :func:`backward_micro_batches` needs. Make the outputs leaves
    (``requires_grad_()``), compute the loss on them and backpropagate it; their ``.grad`` is
    what phase 2 pushes into the parameters. :func:`cached_backward` is these three steps in
    one call; use the two phases when the loss's backward runs elsewhere (docs/caching.md,
    "The two phases"). The RNG is left as after a plain forward of the micro-batches.

    Args:
        forward: maps one micro-batch (of the same kind as ``inputs``; a mapping becomes a
            ``dict``, built afresh for every call) to ``features`` or ``(logits, features)``,
            as in :func:`cached_backward`; it runs again in phase 2 and must be deterministic
            given the RNG state.
        inputs: as in :func:`cached_backward`: tensors split along dim 0, other values passed
            unchanged. They must not change before phase 2, which slices them again.
        micro_batch_size: rows per micro-batch, an int ≥ 1.

    Returns:
        ``(outputs, micro_batches)``: ``outputs`` is what ``forward`` returns (``features``
        or ``(logits, features)``) for the whole batch, without a graph.

    Shape:
        - inputs: :math:`(N, *)` per tensor
        - outputs: :math:`(N, D)` or :math:`(N, V, D)` features, and :math:`(N, C)` logits

    Example:
        >>> import torch
        >>> from scl_loss import SupConLoss
        >>> from scl_loss.cached import backward_micro_batches, encode_micro_batches
        >>> encoder = torch.nn.Linear(32, 16)
        >>> inputs, labels = torch.randn(10, 32), torch.randint(0, 3, (10,))
        >>> features, micro_batches = encode_micro_batches(encoder, inputs, micro_batch_size=4)
        >>> features.shape, features.requires_grad, micro_batches
        (torch.Size([10, 16]), False, MicroBatches(rows=10, micro_batches=3, outputs=features))
        >>> SupConLoss()(features.requires_grad_(), labels).backward()  # ∂L/∂features
        >>> backward_micro_batches(micro_batches, features.grad)  # 4 + 4 + 2 rows, with a graph
        >>> encoder.weight.grad.shape
        torch.Size([16, 32])
    """
    if not callable(forward):
        raise TypeError(f"forward must be a callable, got {type(forward).__name__}")
    _check_micro_batch_size(micro_batch_size)
    n, tensors = _rows(inputs)
    (logits, features), micro_batches = _encode(forward, inputs, n, tensors, micro_batch_size)
    return (features if logits is None else (logits, features)), micro_batches


def backward_micro_batches(
    micro_batches: MicroBatches,
    grads: Tensor | tuple[Tensor | None, Tensor | None],
    *,
    no_sync: NoSync | None = None,
) -> None:
    r"""Phase 2 of gradient caching: re-encode each micro-batch with a graph, backpropagate its gradient.

    For each micro-batch of ``micro_batches`` (from :func:`encode_micro_batches`), in order:
    restore the RNG state its phase-1 pass started from (the same dropout masks), run
    ``forward`` again with a graph, and backpropagate its rows of ``grads``, so that the
    parameters' ``.grad`` receives ``Σ_j (∂z_j/∂θ)ᵀ g_j``: the parameter gradient of the loss
    whose output gradient ``grads`` is (docs/caching.md). Grad mode is on inside, whatever the
    caller's (a backward hook runs without it). The RNG is restored afterwards to where it was
    when this was called.

    Args:
        micro_batches: what :func:`encode_micro_batches` returned with the outputs.
        grads: the gradient of the loss with respect to those outputs: a tensor for
            ``features``, or a ``(logits, features)`` pair whose entries may be ``None``
            where the loss does not use that output (not both).
        no_sync: under DDP, the wrapped model's ``no_sync``: every micro-batch but the last
            runs inside it, so the gradients are all-reduced once. ``None``: no context.

    Shape:
        - grads: the outputs' shapes, :math:`(N, D)` or :math:`(N, V, D)` and :math:`(N, C)`

    Example:
        >>> import torch
        >>> from scl_loss import SCLCrossEntropy
        >>> from scl_loss.cached import backward_micro_batches, encode_micro_batches
        >>> encoder, head = torch.nn.Linear(32, 16), torch.nn.Linear(16, 2)
        >>> def forward(x):
        ...     phi = encoder(x)
        ...     return head(phi), phi
        >>> inputs, labels = torch.randn(10, 32), torch.randint(0, 2, (10,))
        >>> (logits, features), micro_batches = encode_micro_batches(forward, inputs, micro_batch_size=4)
        >>> SCLCrossEntropy(0.9, 0.3)(logits.requires_grad_(), features.requires_grad_(), labels).backward()
        >>> backward_micro_batches(micro_batches, (logits.grad, features.grad))
        >>> head.weight.grad.shape, encoder.weight.grad.shape
        (torch.Size([2, 16]), torch.Size([16, 32]))
    """
    if not isinstance(micro_batches, MicroBatches):
        raise TypeError(
            "micro_batches must be the MicroBatches that encode_micro_batches returned, "
            f"got {type(micro_batches).__name__}"
        )
    if no_sync is not None and not callable(no_sync):
        raise TypeError(f"no_sync must be a callable or None, got {type(no_sync).__name__}")
    _backward(micro_batches, _check_grads(grads, micro_batches.shapes), no_sync)


def _encode(
    forward: Forward, inputs: Inputs, n: int, tensors: list[Tensor], micro_batch_size: int
) -> tuple[Outputs, MicroBatches]:
    """Phase 1 on checked arguments: the concatenated outputs (no graph) and the record for phase 2."""
    # An empty batch still runs once: under DDP every rank must take part in the backward.
    bounds = tuple(
        (start, min(start + micro_batch_size, n)) for start in range(0, max(n, 1), micro_batch_size)
    )
    devices = _cuda_devices(tensors)
    states: list[_RngState] = []
    firsts: list[Outputs] = []
    with torch.no_grad():
        for index, (start, stop) in enumerate(bounds):
            states.append(_get_rng(devices))
            firsts.append(_check_outputs(forward(_slice(inputs, start, stop)), index, stop - start))
    if len({out[0] is None for out in firsts}) > 1:
        raise TypeError("forward must return features, or (logits, features), alike for every micro-batch")
    outputs = (_concat([out[0] for out in firsts]), torch.cat([out[1] for out in firsts]))
    record = MicroBatches(
        forward=forward,
        inputs=inputs,
        bounds=bounds,
        rng_states=tuple(states),
        devices=tuple(devices),
        signatures=tuple(_signature(out) for out in firsts),
        shapes=(None if outputs[0] is None else outputs[0].shape, outputs[1].shape),
    )
    return outputs, record


def _backward(micro_batches: MicroBatches, grads: Grads, no_sync: NoSync | None) -> None:
    """Phase 2 on checked arguments."""
    forward, inputs, devices = micro_batches.forward, micro_batches.inputs, micro_batches.devices
    count = len(micro_batches.bounds)
    after = _get_rng(devices)
    try:
        with torch.enable_grad():
            for index, (start, stop) in enumerate(micro_batches.bounds):
                _set_rng(micro_batches.rng_states[index], devices)
                with _sync_context(no_sync, index, count):
                    # Sliced afresh: forward may have edited the containers phase 1 gave it.
                    outs = _check_outputs(forward(_slice(inputs, start, stop)), index, stop - start)
                    first = micro_batches.signatures[index]
                    if _signature(outs) != first:
                        raise RuntimeError(
                            f"forward returned {_signature(outs)} for micro-batch {index} on its second run "
                            f"but {first} on its first: it must be deterministic given the RNG state"
                        )
                    _backward_slice(outs, grads, start, stop)
    finally:
        _set_rng(after, devices)


def _check_grads(grads: object, shapes: tuple[torch.Size | None, torch.Size]) -> Grads:
    """``grads`` as ``(logits' or None, features' or None)``, matching the phase-1 outputs."""
    with_logits = shapes[0] is not None
    expected = "a (logits, features) pair of tensors or None" if with_logits else "a features tensor"
    if with_logits and isinstance(grads, (tuple, list)) and len(grads) == 2:
        pair: Grads = (grads[0], grads[1])
    elif not with_logits and isinstance(grads, Tensor):
        pair = (None, grads)
    else:
        raise TypeError(
            f"grads must be {expected}, as encode_micro_batches' outputs, got {type(grads).__name__}"
        )
    for name, grad, shape in zip(("logits", "features"), pair, shapes, strict=True):
        if grad is None:
            continue
        if not isinstance(grad, Tensor):
            raise TypeError(f"grads must be {expected}, got {type(grad).__name__} for the {name}")
        if grad.shape != shape:
            raise ValueError(
                f"grads must have the shape of the {name}, {tuple(shape)}, got {tuple(grad.shape)}"
            )
    if pair[0] is None and pair[1] is None:
        raise ValueError("grads must hold the gradient of the logits, of the features or of both, got none")
    return pair


def _concat(parts: list[Tensor | None]) -> Tensor | None:
    """The micro-batches' logits as one tensor (``None`` when ``forward`` returns features only)."""
    if parts[0] is None:
        return None
    return torch.cat([p for p in parts if p is not None])


def _backward_slice(outs: Outputs, grads: Grads, start: int, stop: int) -> None:
    tensors, slices = [], []
    for out, grad in zip(outs, grads, strict=True):
        if out is not None and grad is not None:  # no gradient: the loss does not use this output
            tensors.append(out)
            slices.append(grad[start:stop])
    if not all(out.requires_grad for out in tensors):
        raise RuntimeError(
            "forward's outputs do not require grad on the second run: nothing to backpropagate into"
        )
    torch.autograd.backward(tensors, slices)


def _signature(outs: Outputs) -> tuple[object, ...]:
    return tuple(None if t is None else (tuple(t.shape), t.dtype) for t in outs)


def _check_arguments(
    forward: object,
    inputs: Inputs,
    labels: object,
    criterion: object,
    micro_batch_size: object,
    backward: object,
    no_sync: object,
) -> tuple[int, list[Tensor]]:
    """``N`` and the inputs' tensors, after checking every argument of :func:`cached_backward`."""
    for name, value, required in (
        ("forward", forward, True),
        ("criterion", criterion, True),
        ("backward", backward, False),
        ("no_sync", no_sync, False),
    ):
        if not callable(value) and (required or value is not None):
            expected = "a callable" if required else "a callable or None"
            raise TypeError(f"{name} must be {expected}, got {type(value).__name__}")
    _check_micro_batch_size(micro_batch_size)
    if not torch.is_grad_enabled():
        raise RuntimeError("cached_backward computes gradients: it cannot run under torch.no_grad()")
    n, tensors = _rows(inputs)
    if labels is not None:
        if not isinstance(labels, Tensor):
            raise TypeError(f"labels must be a torch.Tensor or None, got {type(labels).__name__}")
        if labels.dim() != 1 or labels.shape[0] != n:
            raise ValueError(
                f"labels must have shape [N] = [{n}] to match the inputs' rows, got {tuple(labels.shape)}"
            )
    return n, tensors


def _check_micro_batch_size(micro_batch_size: object) -> None:
    if isinstance(micro_batch_size, bool) or not isinstance(micro_batch_size, numbers.Integral):
        raise TypeError(f"micro_batch_size must be an int >= 1, got {type(micro_batch_size).__name__}")
    if micro_batch_size < 1:
        raise ValueError(f"micro_batch_size must be an int >= 1, got {micro_batch_size}")


class _RngState(NamedTuple):
    cpu: Tensor
    cuda: list[Tensor]


def _cuda_devices(tensors: list[Tensor]) -> list[int]:
    """The CUDA devices whose generators ``forward`` may draw from (as torch.utils.checkpoint, plus
    the current device, where a model on the GPU fed CPU tensors draws)."""
    if not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return []
    return sorted({t.get_device() for t in tensors if t.is_cuda} | {torch.cuda.current_device()})


def _get_rng(devices: list[int]) -> _RngState:
    return _RngState(torch.get_rng_state(), [torch.cuda.get_rng_state(d) for d in devices])


def _set_rng(state: _RngState, devices: list[int]) -> None:
    torch.set_rng_state(state.cpu)
    for device, cuda_state in zip(devices, state.cuda, strict=True):
        torch.cuda.set_rng_state(cuda_state, device)


def _sync_context(no_sync: NoSync | None, index: int, count: int) -> contextlib.AbstractContextManager[Any]:
    # The last micro-batch's backward is the one DDP may all-reduce.
    return no_sync() if no_sync is not None and index < count - 1 else contextlib.nullcontext()


def _tensors(value: Any, name: str = "inputs") -> list[tuple[str, Tensor]]:
    """``(name for messages, tensor)`` of every tensor in ``value``, at any depth of dicts/tuples/lists."""
    if isinstance(value, Tensor):
        return [(name, value)]
    if isinstance(value, Mapping):
        return [t for key, v in value.items() for t in _tensors(v, f"{name}[{key!r}]")]
    if isinstance(value, (tuple, list)):
        return [t for i, v in enumerate(value) for t in _tensors(v, f"{name}[{i}]")]
    return []


def _rows(inputs: Inputs) -> tuple[int, list[Tensor]]:
    """``N``, the common dim-0 size of the inputs' tensors, and those tensors."""
    if not isinstance(inputs, (Tensor, Mapping, tuple, list)):
        raise TypeError(
            f"inputs must be a Tensor or a dict, tuple or list of tensors, got {type(inputs).__name__}"
        )
    named = _tensors(inputs)
    if not named:
        raise ValueError("inputs must contain at least one tensor to split along dim 0")
    for name, tensor in named:
        if tensor.dim() == 0:
            raise ValueError(f"{name} must have a batch dimension (dim 0) to split, got a 0-dim tensor")
    sizes = {name: tensor.shape[0] for name, tensor in named}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"the inputs' tensors must all have the same size N along dim 0, got {sizes}")
    return named[0][1].shape[0], [tensor for _, tensor in named]


def _slice(value: Any, start: int, stop: int) -> Any:
    """Rows ``start:stop`` of every tensor in ``value``; other values unchanged; mappings become dicts."""
    if isinstance(value, Tensor):
        return value[start:stop]
    if isinstance(value, Mapping):
        return {key: _slice(v, start, stop) for key, v in value.items()}
    if isinstance(value, (tuple, list)):
        parts = [_slice(v, start, stop) for v in value]
        return type(value)(*parts) if hasattr(value, "_fields") else type(value)(parts)  # namedtuple or not
    return value


def _check_outputs(out: object, index: int, rows: int) -> Outputs:
    """``(logits or None, features)`` from what ``forward`` returned for a micro-batch of ``rows``."""
    if isinstance(out, Tensor):
        named: list[tuple[str, Tensor]] = [("features", out)]
    elif isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(t, Tensor) for t in out):
        named = [("logits", out[0]), ("features", out[1])]
    else:
        raise TypeError(
            "forward must return features (a Tensor) or a (logits, features) pair of tensors, "
            f"got {type(out).__name__} for micro-batch {index}"
        )
    for name, tensor in named:
        if not tensor.is_floating_point():
            raise TypeError(
                f"forward's {name} must be floating point, got {tensor.dtype} for micro-batch {index}"
            )
        if tensor.dim() == 0 or tensor.shape[0] != rows:
            raise ValueError(
                f"forward's {name} must have one row per input row ({rows} for micro-batch {index}), "
                f"got shape {tuple(tensor.shape)}"
            )
    return (named[0][1], named[1][1]) if len(named) == 2 else (None, named[0][1])


def _check_result(result: object) -> Tensor:
    loss = result.loss if isinstance(result, SCLComponents) else result
    if not isinstance(loss, Tensor) or loss.dim() != 0:
        what = f"shape {tuple(loss.shape)}" if isinstance(loss, Tensor) else type(loss).__name__
        raise TypeError(f"criterion must return a scalar loss tensor or SCLComponents, got {what}")
    if not loss.requires_grad:
        raise ValueError(
            "criterion's loss does not depend on the forward's outputs (it does not require grad)"
        )
    return loss
