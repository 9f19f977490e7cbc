r"""A FIFO memory of past embeddings that adds contrasts and positives beyond the batch.

SupCon learns from pairs of same-class examples. With a small batch and many classes most
anchors have few or no positives (Gunel et al. note that MNLI did not improve at batch 16
because "positive pairs are quite sparse"). A :class:`MemoryQueue` keeps the last ``K``
embeddings and labels of the training steps; each call contrasts the current anchors against
``[batch; queue]``, so an anchor finds positives (and negatives) in recent batches too.

Trade-off: queue entries were computed by older parameters (stale) and carry no gradient.
With a fast-changing encoder, stale entries are off the current embedding distribution;
keep ``K`` to a few batches' worth when fine-tuning with a large learning rate, or use a
momentum (EMA) encoder upstream. When every class already has several examples per batch,
the queue buys little and costs an ``[A, K]`` block of similarities per step.

The state is a fixed-shape ring (``K`` slots, a per-slot validity mask, the write position
as a tensor) plus the *staged* batch of the last training step, which enters the ring at the
start of the next call. Fixed shapes keep ``torch.compile`` from recompiling as the queue
fills; staging keeps a checkpoint's recomputation from seeing (or adding) its own batch; no
step reads a tensor's value on the host.
"""

from __future__ import annotations

import dataclasses
import numbers
from typing import Any

import torch
from torch import Tensor, nn

from scl_loss._problem import ContrastProblem, compute_dtype
from scl_loss.kernels._rows import prepare_rows

__all__ = ["MemoryQueue"]


class MemoryQueue(nn.Module):
    r"""First-in-first-out memory of the last ``capacity`` embeddings and labels of training steps.

    Pass it as ``queue=`` to :func:`~scl_loss.functional.supcon_loss`,
    :func:`~scl_loss.functional.scl_cross_entropy` or their modules. Each such call

    1. contrasts the batch's anchors against ``[batch; queue]``: queue entries are contrasts and
       positives (same label) but never anchors, and are detached (no gradient);
    2. if it is a *training step* (below), then stages the batch's vectors (after
       l2-normalisation when ``normalize=True``; each view a separate entry; rows with
       ``ignore_index`` left out); they enter the queue, evicting the oldest entries, at the
       start of the next call, before that call reads the queue.

    So the per-anchor losses equal those of the plain loss over the concatenation
    ``[batch; queue.detach()]``, restricted to the batch's anchors, and the queue of step
    ``t + 1`` holds the batches of steps ``…, t − 1, t``.

    **Training step.** A call is a training step, and its batch is added to the queue exactly
    once, when all of these hold:

    * the queue is in training mode (``queue.train()``, the default; ``.eval()`` on a loss
      module or model that holds the queue switches it too);
    * autograd records the call: grad mode is on and the features require grad (so calls
      under ``torch.no_grad()``/``torch.inference_mode()`` and on frozen features are not);
    * it does not run inside a ``torch.func`` transform (``grad``, ``vmap``, …: a transformed
      function must be pure, so the queue is read but not written there).

    A call made while a backward pass runs, i.e. the recomputation of a
    ``torch.utils.checkpoint`` region, reads the queue exactly as the original forward did
    and stages its batch again in place of the original's (with ``use_reentrant=True`` the
    original forward ran under ``no_grad`` and only the recomputation stages), so a
    checkpointed step is added once, and its gradient uses the queue its loss value used.
    Use the queue once per checkpointed region: a second call with the same queue inside it
    would let the first call's recomputation see the second call's batch.

    Every ``queue=`` call that is not inside a backward pass or a ``torch.func`` transform
    first moves the staged batch into the queue, also evaluation calls: they see the last
    training batch but add nothing. ``len(queue)``, :meth:`contents` and ``state_dict()``
    include the staged batch; :meth:`enqueue` commits it before appending.

    Warm-up: the queue starts empty; every slot is always part of the contrast set, but an
    unfilled slot is masked out (it never enters the loss), so the first call is the plain loss.

    Distributed: with ``gather_distributed=True`` every rank stages the *gathered* global
    batch, in rank order, so the queues of all ranks stay identical without extra
    communication (give every rank its own queue of the same capacity, and call the loss in
    the same mode on every rank).

    Calls without ``queue=`` leave the queue untouched. The queue is an ``nn.Module`` with
    buffers: ``.to(device)`` moves it, its ``state_dict`` (entries, labels, validity, write
    position; state dicts of earlier versions load too) checkpoints it.

    Args:
        capacity: ``K``, the number of embeddings kept (≥ 1).
        dim: ``D``, the feature dimension of the embeddings.
        dtype: storage dtype (float32 default; float16/bfloat16 halve the memory, float64 for
            float64 training). Entries are cast to the loss's compute dtype when read.
        device: where the entries live; must be the features' device when used.

    Shape:
        - embeddings: :math:`(K, D)`; labels, valid: :math:`(K)`; position: :math:`()`.
          The staged batch takes another :math:`(K, D)`.

    Example:
        >>> import torch
        >>> from scl_loss import MemoryQueue, supcon_loss
        >>> queue = MemoryQueue(capacity=64, dim=32)
        >>> for step in range(3):
        ...     features = torch.randn(8, 32, requires_grad=True)
        ...     labels = torch.randint(0, 10, (8,))
        ...     loss = supcon_loss(features, labels, temperature=0.1, queue=queue)
        ...     loss.backward()
        >>> len(queue)
        24
        >>> with torch.no_grad():  # evaluation: reads the queue, adds nothing
        ...     _ = supcon_loss(torch.randn(8, 32), labels, temperature=0.1, queue=queue)
        >>> len(queue)
        24
    """

    embeddings: Tensor
    labels: Tensor
    valid: Tensor
    position: Tensor
    staged_embeddings: Tensor
    staged_labels: Tensor
    staged_count: Tensor

    def __init__(
        self,
        capacity: int,
        dim: int,
        *,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str | None = None,
    ) -> None:
        super().__init__()
        for name, value in (("capacity", capacity), ("dim", dim)):
            if isinstance(value, bool) or not isinstance(value, numbers.Integral):
                raise TypeError(f"{name} must be an int, got {type(value).__name__}")
            if value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.capacity = int(capacity)
        self.dim = int(dim)
        k, d = self.capacity, self.dim
        self.register_buffer("embeddings", torch.zeros(k, d, dtype=dtype, device=device))
        self.register_buffer("labels", torch.zeros(k, dtype=torch.int64, device=device))
        self.register_buffer("valid", torch.zeros(k, dtype=torch.bool, device=device))
        self.register_buffer("position", torch.zeros((), dtype=torch.int64, device=device))
        # The staged batch: its rows 0 … staged_count−1 go to slots position, position+1, … (mod K).
        # Not saved as such: state_dict() saves the queue with the staged rows written in.
        self.register_buffer(
            "staged_embeddings", torch.zeros(k, d, dtype=dtype, device=device), persistent=False
        )
        self.register_buffer(
            "staged_labels", torch.zeros(k, dtype=torch.int64, device=device), persistent=False
        )
        self.register_buffer(
            "staged_count", torch.zeros((), dtype=torch.int64, device=device), persistent=False
        )

    def __len__(self) -> int:
        """Entries held, the staged batch included (reads a device value: not for the training loop)."""
        return int((self.valid | self._staged_slots()[1]).sum())

    def reset(self) -> None:
        """Forget every entry, the staged batch too (the buffers keep their memory)."""
        self.valid.zero_()
        self.position.zero_()
        self.staged_count.zero_()

    def contents(self) -> tuple[Tensor, Tensor]:
        """The stored ``(embeddings [n, D], labels [n])``, oldest first; ``n = len(self)``."""
        embeddings, labels, valid, position = self._merged()
        order = (position + torch.arange(self.capacity, device=position.device)) % self.capacity
        held = valid[order]  # the oldest entry sits at the write position once the ring is full
        return embeddings[order][held], labels[order][held]

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        """Append rows (detached, cast to the storage dtype); beyond ``capacity`` the oldest go first.

        The loss calls its own staging; call this only to pre-fill the queue. Any staged batch
        is committed first, so the rows land after it.
        """
        if not isinstance(embeddings, Tensor) or not embeddings.is_floating_point():
            raise TypeError("embeddings must be a floating torch.Tensor")
        if embeddings.dim() != 2 or embeddings.shape[1] != self.dim:
            raise ValueError(
                f"embeddings must have shape [n, D] = [n, {self.dim}], got {tuple(embeddings.shape)}"
            )
        if not isinstance(labels, Tensor) or labels.dtype.is_floating_point or labels.dtype == torch.bool:
            raise TypeError("labels must be an integer torch.Tensor")
        if labels.shape != embeddings.shape[:1]:
            raise ValueError(
                f"labels must have shape [n] = [{embeddings.shape[0]}], got {tuple(labels.shape)}"
            )
        self._check_device(embeddings.device)
        self._commit()
        keep = torch.ones(embeddings.shape[0], dtype=torch.bool, device=embeddings.device)
        self._stage(embeddings, labels.to(torch.int64), keep)
        self._commit()

    def _staged_slots(self) -> tuple[Tensor, Tensor]:
        """``(row, take)``, both ``[K]``: slot ``s`` receives staged row ``row[s]`` where ``take[s]``."""
        slots = torch.arange(self.capacity, device=self.position.device)
        row = (slots - self.position) % self.capacity
        return row, row < self.staged_count

    def _merged(self) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``(embeddings, labels, valid, position)`` with the staged rows written in, out of place."""
        row, take = self._staged_slots()
        embeddings = torch.where(
            take.unsqueeze(1), self.staged_embeddings.index_select(0, row), self.embeddings
        )
        labels = torch.where(take, self.staged_labels.index_select(0, row), self.labels)
        return embeddings, labels, self.valid | take, (self.position + self.staged_count) % self.capacity

    def _commit(self) -> None:
        """Move the staged batch into the ring (fixed shapes, no host sync)."""
        embeddings, labels, valid, position = self._merged()
        self.embeddings.copy_(embeddings)
        self.labels.copy_(labels)
        self.valid.copy_(valid)
        self.position.copy_(position)
        self.staged_count.zero_()

    def _stage(self, rows: Tensor, labels: Tensor, keep: Tensor) -> None:
        """Stage the newest ``min(K, keep.sum())`` rows with ``keep`` set, in order.

        Replaces any staged batch: a checkpoint's recomputation stages its batch again.
        """
        n = rows.shape[0]
        if n == 0:
            self.staged_count.zero_()
            return
        rank = torch.cumsum(keep, 0)  # 1-based rank of each kept row among the kept rows
        total = rank[-1]
        count = total.clamp(max=self.capacity)
        # Staged row j is the kept row of rank total − count + 1 + j: found by binary search in
        # the (non-decreasing) ranks; rows j ≥ count are never read, any index will do.
        wanted = total - count + 1 + torch.arange(self.capacity, device=rows.device)
        source = torch.searchsorted(rank, wanted).clamp(max=n - 1)
        self.staged_embeddings.copy_(rows.detach().index_select(0, source))
        self.staged_labels.copy_(labels.index_select(0, source))
        self.staged_count.copy_(count)

    def _check_device(self, device: torch.device) -> None:
        if self.embeddings.device != device:
            raise ValueError(
                f"queue is on {self.embeddings.device} but the features are on {device}; "
                "move it with queue.to(device)"
            )

    def _save_to_state_dict(self, destination: dict[str, Any], prefix: str, keep_vars: bool) -> None:
        super()._save_to_state_dict(destination, prefix, keep_vars)
        # The staged batch belongs to the queue already (len() counts it): save it written in.
        for name, value in zip(("embeddings", "labels", "valid", "position"), self._merged(), strict=True):
            destination[prefix + name] = value

    def _load_from_state_dict(
        self, state_dict: dict[str, Any], prefix: str, *args: Any, **kwargs: Any
    ) -> None:
        # Earlier versions kept Python ints {"next", "filled"} as extra state and filled the
        # slots 0, 1, … in order: rebuild the validity mask and write position from them.
        old = state_dict.pop(prefix + "_extra_state", None)
        if isinstance(old, dict) and {"next", "filled"} <= old.keys() and prefix + "valid" not in state_dict:
            device = self.valid.device
            state_dict[prefix + "valid"] = torch.arange(self.capacity, device=device) < int(old["filled"])
            state_dict[prefix + "position"] = torch.tensor(int(old["next"]), device=device)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
        self.staged_count.zero_()  # a loaded queue replaces whatever was staged

    def extra_repr(self) -> str:
        filled = "" if self.valid.is_meta else f", filled={len(self)}"
        return f"capacity={self.capacity}, dim={self.dim}, dtype={self.embeddings.dtype}{filled}"


def check_queue(queue: object, has_labels: bool) -> MemoryQueue | None:
    """``queue`` must be ``None`` or a :class:`MemoryQueue`, and needs class labels."""
    if queue is None:
        return None
    if not isinstance(queue, MemoryQueue):
        raise TypeError(f"queue must be a scl_loss.MemoryQueue or None, got {type(queue).__name__}")
    if not has_labels:
        raise ValueError(
            "queue needs labels: queue entries are positives of the anchors with the same label "
            "(with mask= or without labels the positives of a stored entry are undefined)"
        )
    return queue


def _in_backward() -> bool:
    """True while autograd runs a backward pass: a checkpoint is recomputing its region."""
    # A compiled graph never re-runs Python in backward (checkpoints are traced, not replayed).
    return not torch.compiler.is_compiling() and torch._C._current_graph_task_id() != -1


def _in_func_transform() -> bool:
    return not torch.compiler.is_compiling() and torch._C._functorch.peek_interpreter_stack() is not None


def append_queue(problem: ContrastProblem, queue: MemoryQueue) -> ContrastProblem:
    """``problem`` with the queue's ``K`` slots appended as extra (detached) contrasts; anchors unchanged.

    Commits the staged batch first, unless inside a backward pass (a checkpoint's
    recomputation must read what its forward read) or a ``torch.func`` transform (which may
    not write to the queue's buffers: there the staged rows are merged out of place).
    """
    z = problem.contrasts
    queue._check_device(z.device)
    if z.shape[1] != queue.dim:
        raise ValueError(f"features have dimension D = {z.shape[1]} but the queue stores dim = {queue.dim}")
    assert problem.groups is not None  # check_queue requires labels
    if _in_func_transform():
        stored, stored_labels, stored_valid, _ = queue._merged()
    else:
        if not _in_backward():
            queue._commit()
        stored, stored_labels, stored_valid = queue.embeddings, queue.labels, queue.valid
    # Contrasts are the raw rows (the kernel normalises them). Half rows keep their dtype, and so
    # their exact half-precision products, only when the queue stores that dtype too.
    dtype = z.dtype if stored.dtype == z.dtype else compute_dtype(z.dtype)
    # All K slots, filled or not, so that shapes do not change as the queue fills; unfilled
    # slots are not valid and take no part. replace(): the anchors and every other field stay.
    return dataclasses.replace(
        problem,
        contrasts=torch.cat([z.to(dtype), stored.to(dtype)]),
        groups=torch.cat([problem.groups, stored_labels]),
        valid=torch.cat([problem.valid, stored_valid]),
    )


def enqueue_batch(queue: MemoryQueue, problem: ContrastProblem) -> None:
    """Stage the batch's vectors and labels (every rank's, when gathered) if this call is a training step."""
    z = problem.contrasts
    # Grad mode too: a view of a leaf made under no_grad still says requires_grad.
    if not (queue.training and torch.is_grad_enabled() and z.requires_grad) or _in_func_transform():
        return
    assert problem.groups is not None
    rows = z.detach()
    if problem.normalize:  # the queue keeps l2-normalised vectors
        rows = prepare_rows(rows, normalize=True).vectors()
    queue._stage(rows.to(queue.staged_embeddings.dtype), problem.groups, problem.valid)
