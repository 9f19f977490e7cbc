r"""A FIFO memory of past embeddings that adds contrasts and positives beyond the batch.

SupCon learns from pairs of same-class examples. With a small batch and many classes most
anchors have few or no positives (Gunel et al. note that MNLI did not improve at batch 16
because "positive pairs are quite sparse"). A :class:`MemoryQueue` keeps the last ``K``
embeddings and labels seen by the loss; each call contrasts the current anchors against
``[batch; queue]``, so an anchor finds positives (and negatives) in recent batches too.

Trade-off: queue entries were computed by older parameters (stale) and carry no gradient.
With a fast-changing encoder, stale entries are off the current embedding distribution;
keep ``K`` to a few batches' worth when fine-tuning with a large learning rate, or use a
momentum (EMA) encoder upstream. When every class already has several examples per batch,
the queue buys little and costs an ``[A, K]`` block of similarities per step.
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
    r"""First-in-first-out memory of the last ``capacity`` embeddings and labels.

    Pass it as ``queue=`` to :func:`~scl_loss.functional.supcon_loss`,
    :func:`~scl_loss.functional.scl_cross_entropy` or their modules. Each such call

    1. contrasts the batch's anchors against ``[batch; queue]``: queue entries are contrasts and
       positives (same label) but never anchors, and are detached (no gradient);
    2. then appends the batch's vectors (after l2-normalisation when ``normalize=True``; each
       view a separate entry; rows with ``ignore_index`` left out), evicting the oldest.

    So the per-anchor losses equal those of the plain loss over the concatenation
    ``[batch; queue.detach()]``, restricted to the batch's anchors.

    Warm-up: the queue starts empty and the loss uses only the entries filled so far, so the
    first call is the plain loss and the contrast set grows to ``capacity`` entries.
    Nothing is padded or masked: an unfilled slot never enters the loss.

    Distributed: with ``gather_distributed=True`` every rank enqueues the *gathered* global
    batch, in rank order, so the queues of all ranks stay identical without extra
    communication (give every rank its own queue of the same capacity).

    Calls without ``queue=`` (e.g. evaluation) leave the queue untouched. The queue is
    an ``nn.Module`` with buffers: ``.to(device)`` moves it, its ``state_dict`` (entries and
    write position) checkpoints it.

    Args:
        capacity: ``K``, the number of embeddings kept (≥ 1).
        dim: ``D``, the feature dimension of the embeddings.
        dtype: storage dtype (float32 default; float16/bfloat16 halve the memory, float64 for
            float64 training). Entries are cast to the loss's compute dtype when read.
        device: where the entries live; must be the features' device when used.

    Shape:
        - embeddings: :math:`(K, D)`; labels: :math:`(K)`

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
    """

    embeddings: Tensor
    labels: Tensor

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
        self.register_buffer("embeddings", torch.zeros(self.capacity, self.dim, dtype=dtype, device=device))
        self.register_buffer("labels", torch.zeros(self.capacity, dtype=torch.int64, device=device))
        # Python ints, not tensors: reading a device tensor's value would synchronise each step.
        self._next = 0  # slot the next entry is written to
        self._filled = 0

    def __len__(self) -> int:
        return self._filled

    def reset(self) -> None:
        """Forget every entry (the buffers keep their memory)."""
        self._next = 0
        self._filled = 0

    def contents(self) -> tuple[Tensor, Tensor]:
        """The stored ``(embeddings [n, D], labels [n])``, oldest first; ``n = len(self)``."""
        if self._filled < self.capacity:
            return self.embeddings[: self._filled], self.labels[: self._filled]
        order = (
            torch.arange(self._next, self._next + self.capacity, device=self.labels.device) % self.capacity
        )
        return self.embeddings[order], self.labels[order]

    @torch.no_grad()
    def enqueue(self, embeddings: Tensor, labels: Tensor) -> None:
        """Append rows (detached, cast to the storage dtype); beyond ``capacity`` the oldest go first.

        The loss calls this itself; call it directly only to pre-fill the queue.
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
        n = embeddings.shape[0]
        if n > self.capacity:  # only the newest `capacity` rows would survive anyway
            embeddings, labels = embeddings[n - self.capacity :], labels[n - self.capacity :]
            n = self.capacity
        if n == 0:
            return
        slots = torch.arange(self._next, self._next + n, device=self.labels.device) % self.capacity
        self.embeddings.index_copy_(0, slots, embeddings.detach().to(self.embeddings.dtype))
        self.labels.index_copy_(0, slots, labels.to(torch.int64))
        self._next = (self._next + n) % self.capacity
        self._filled = min(self.capacity, self._filled + n)

    def _check_device(self, device: torch.device) -> None:
        if self.embeddings.device != device:
            raise ValueError(
                f"queue is on {self.embeddings.device} but the features are on {device}; "
                "move it with queue.to(device)"
            )

    def get_extra_state(self) -> dict[str, int]:
        return {"next": self._next, "filled": self._filled}

    def set_extra_state(self, state: Any) -> None:
        self._next, self._filled = int(state["next"]), int(state["filled"])

    def extra_repr(self) -> str:
        return (
            f"capacity={self.capacity}, dim={self.dim}, dtype={self.embeddings.dtype}, filled={self._filled}"
        )


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


def append_queue(problem: ContrastProblem, queue: MemoryQueue) -> ContrastProblem:
    """``problem`` with the queue's entries appended as extra (detached) contrasts; anchors unchanged."""
    z = problem.contrasts
    queue._check_device(z.device)
    if z.shape[1] != queue.dim:
        raise ValueError(f"features have dimension D = {z.shape[1]} but the queue stores dim = {queue.dim}")
    assert problem.groups is not None  # check_queue requires labels
    # The order of contrasts does not change the loss: use the filled slots as stored, no copy.
    stored = queue.embeddings[: len(queue)]
    stored_labels = queue.labels[: len(queue)]
    # Contrasts are the raw rows (the kernel normalises them). Half rows keep their dtype, and so
    # their exact half-precision products, only when the queue stores that dtype too.
    dtype = z.dtype if stored.dtype == z.dtype else compute_dtype(z.dtype)
    # replace(): the anchors and any other field of the problem (e.g. the input dtype) stay as they are.
    return dataclasses.replace(
        problem,
        contrasts=torch.cat([z.to(dtype), stored.to(dtype)]),
        groups=torch.cat([problem.groups, stored_labels]),
        valid=torch.cat([problem.valid, torch.ones_like(stored_labels, dtype=torch.bool)]),
    )


def enqueue_batch(queue: MemoryQueue, problem: ContrastProblem) -> None:
    """Append the batch's vectors and labels (every rank's, when gathered), skipping ignored rows."""
    assert problem.groups is not None
    keep = problem.valid
    rows = problem.contrasts.detach()[keep]
    if problem.normalize:  # the queue keeps l2-normalised vectors
        rows = prepare_rows(rows, normalize=True).vectors()
    queue.enqueue(rows, problem.groups[keep])
