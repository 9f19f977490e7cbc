"""What each rank runs in tests/test_distributed.py: DDP on a split batch vs one process on all of it.

One spawn of 3 ranks runs every case twice: on the default group (world size 3) and on a
subgroup of ranks 0 and 1 (world size 2, passed as ``process_group=``; rank 2 sits those out).
For each case every rank builds the same float64 model and data, computes the single-process
reference on the concatenated batch itself, runs DDP on its own slice with
``gather_distributed=True``, and records what disagreed (or ``None``) in
``<workdir>/results-<rank>.json``. Every collective of a case runs before its checks, so a
failing check on one rank cannot desynchronise the ranks.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from scl_loss import MemoryQueue, SCLCrossEntropy, SupConLoss
from scl_loss.functional import scl_cross_entropy, supcon_loss

IN_DIM, HIDDEN, DIM, CLASSES = 6, 8, 5, 3
IGNORE = -100

# The blocked kernel (branch `blocked`) adds `path=`; when it is there, every SupCon case also
# runs on it under DDP.
_HAS_PATH = "path" in inspect.signature(supcon_loss).parameters
PATHS: tuple[str | None, ...] = ("dense", "blocked") if _HAS_PATH else (None,)
_HAS_CHUNK = "chunk_size" in inspect.signature(supcon_loss).parameters

# Per-rank batch sizes: even, uneven with an empty rank in the middle, rank 0 empty.
SIZES = {
    "even": {2: [4, 4], 3: [4, 4, 4]},
    "uneven": {2: [5, 2], 3: [3, 0, 5]},
    "first-empty": {2: [0, 6], 3: [0, 4, 3]},
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str = "supcon"  # "supcon" | "scl_ce" | "queue" | "accumulate" | "mismatch"
    sizes: str = "uneven"
    views: int = 1
    labels: str = "classes"  # "classes" | "none" (SimCLR) | "ignore" | "singletons"
    reduction: str = "mean"
    module: bool = False
    dtype: torch.dtype = torch.float64
    extra: dict[str, Any] = field(default_factory=dict)


def _cases() -> list[Case]:
    cases = []
    for path in PATHS:
        p = {} if path is None else {"path": path}
        if path == "blocked" and _HAS_CHUNK:
            p["chunk_size"] = 2  # several blocks even for these tiny batches
        tag = "" if path is None else f"-{path}"
        cases += [
            Case(f"labels-mean-even{tag}", sizes="even", extra=p),
            Case(f"labels-mean-uneven{tag}", extra=p),
            Case(f"labels-sum-uneven{tag}", reduction="sum", extra=p),
            Case(f"labels-mean-first-empty{tag}", sizes="first-empty", extra=p),
            Case(f"views-mean-uneven{tag}", views=2, module=True, extra=p),
            Case(f"views-sum-first-empty{tag}", views=3, reduction="sum", extra=p),
            Case(f"simclr-mean-uneven{tag}", views=2, labels="none", extra=p),
            Case(f"ignore-mean-uneven{tag}", labels="ignore", extra=p),
            Case(
                f"ignore-sum-first-empty{tag}", labels="ignore", reduction="sum", sizes="first-empty", extra=p
            ),
            Case(f"no-positive-mean{tag}", labels="singletons", extra=p),
            Case(f"none-reduction{tag}", views=2, labels="ignore", reduction="none", extra=p),
            Case(f"float32-mean-uneven{tag}", dtype=torch.float32, extra=p),
        ]
    cases += [
        Case(
            "scl_ce-mean-weight-smoothing-ignore",
            kind="scl_ce",
            labels="ignore",
            extra={"lambda_": 0.6, "weight": True, "label_smoothing": 0.1},
        ),
        Case(
            "scl_ce-sum-first-empty",
            kind="scl_ce",
            reduction="sum",
            sizes="first-empty",
            extra={"lambda_": 0.5},
        ),
        Case("scl_ce-views-module", kind="scl_ce", views=2, module=True, extra={"lambda_": 0.9}),
        Case(
            "scl_ce-lambda0-pure-ce", kind="scl_ce", labels="ignore", extra={"lambda_": 0.0, "weight": True}
        ),
        Case("scl_ce-lambda1-pure-scl", kind="scl_ce", extra={"lambda_": 1.0}),
        Case("accumulate-no_sync", kind="accumulate", labels="ignore"),
        Case("queue-supcon-module-views", kind="queue", views=2, module=True),
        Case("queue-scl_ce-ignore", kind="queue", labels="ignore", extra={"lambda_": 0.7}),
        Case("mismatch-dim", kind="mismatch", extra={"what": "dim"}),
        Case("mismatch-views", kind="mismatch", extra={"what": "views"}),
        Case("mismatch-temperature", kind="mismatch", extra={"what": "temperature"}),
        Case("mask-rejected", kind="mismatch", extra={"what": "mask"}),
    ]
    return cases


CASES = _cases()


class _Encoder(nn.Module):
    """Features (and logits for scl_ce) from a shared body; no unused parameters under DDP."""

    def __init__(self, views: int, with_head: bool) -> None:
        super().__init__()
        self.views = views
        self.body = nn.Linear(IN_DIM, HIDDEN)
        self.proj = nn.Linear(HIDDEN, views * DIM)
        self.head = nn.Linear(HIDDEN, CLASSES) if with_head else None

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor]:
        h = torch.tanh(self.body(x))
        z = self.proj(h)
        features = z if self.views == 1 else z.reshape(x.shape[0], self.views, DIM)
        logits = self.head(h) if self.head is not None else None
        return logits, features


def _labels(kind: str, n: int, gen: torch.Generator) -> torch.Tensor | None:
    if kind == "none":
        return None
    if kind == "singletons":
        return torch.randperm(n, generator=gen) + 10  # every label unique: no anchor has a positive
    labels = torch.randint(0, CLASSES, (n,), generator=gen)
    if kind == "ignore":
        labels[torch.rand(n, generator=gen) < 0.3] = IGNORE
    return labels


def _loss_fn(case: Case, distributed: bool, group: object, queue: MemoryQueue | None) -> Callable[..., Any]:
    """``(logits, features, labels) -> loss`` for the case, single-process or gathering."""
    gather = {"gather_distributed": True, "process_group": group} if distributed else {}
    extra = dict(case.extra)
    if case.kind in ("scl_ce", "queue") and "lambda_" in extra:
        weight = torch.tensor([0.5, 2.0, 1.0], dtype=case.dtype) if extra.pop("weight", False) else None
        kwargs = dict(
            lambda_=extra.pop("lambda_"),
            tau=0.3,
            scl_reduction=case.reduction,
            ignore_index=IGNORE,
            weight=weight,
            label_smoothing=extra.pop("label_smoothing", 0.0),
            queue=queue,
            **gather,
        )
        if case.module:
            criterion = SCLCrossEntropy(kwargs.pop("lambda_"), kwargs.pop("tau"), **kwargs)
            return lambda logits, features, labels: criterion(logits, features, labels)
        return lambda logits, features, labels: scl_cross_entropy(logits, features, labels, **kwargs)
    kwargs = dict(
        temperature=0.2, reduction=case.reduction, ignore_index=IGNORE, queue=queue, **gather, **extra
    )
    if case.module:
        criterion = SupConLoss(**kwargs)
        return lambda logits, features, labels: criterion(features, labels)
    return lambda logits, features, labels: supcon_loss(features, labels, **kwargs)


def _close(what: str, actual: torch.Tensor, expected: torch.Tensor, dtype: torch.dtype) -> None:
    tol = {"rtol": 1e-9, "atol": 1e-11} if dtype == torch.float64 else {"rtol": 2e-4, "atol": 2e-5}
    torch.testing.assert_close(actual, expected, msg=lambda m: f"{what}: {m}", **tol)


def _run_case(case: Case, rank: int, world: int, group: object, seed: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    sizes = SIZES[case.sizes][world]
    start, n_local = sum(sizes[:rank]), sizes[rank]
    torch.manual_seed(seed)
    reference = _Encoder(case.views, with_head=case.kind in ("scl_ce", "queue") and "lambda_" in case.extra)
    reference = reference.to(case.dtype)
    # With λ = 0 the projection, with λ = 1 the head take no part in the loss: DDP must be told.
    unused = case.extra.get("lambda_") in (0.0, 1.0)
    ddp = DistributedDataParallel(
        copy.deepcopy(reference), process_group=group, find_unused_parameters=unused
    )

    # "queue": 3 steps (the queue fills and wraps); "accumulate": 2 micro-steps, the first under
    # DDP's no_sync(), gradients accumulated on both sides and compared after the last.
    steps = {"queue": 3, "accumulate": 2}.get(case.kind, 1)
    accumulate = case.kind == "accumulate"
    queue_kw = {"capacity": 11, "dim": DIM, "dtype": case.dtype}
    ref_queue = MemoryQueue(**queue_kw) if case.kind == "queue" else None
    queue = MemoryQueue(**queue_kw) if case.kind == "queue" else None
    ref_loss_fn = _loss_fn(case, False, None, ref_queue)
    loss_fn = _loss_fn(case, True, group, queue)
    for step in range(steps):
        total = sum(sizes)
        x = torch.randn(total, IN_DIM, generator=gen, dtype=case.dtype)
        labels = _labels(case.labels, total, gen)
        local_labels = None if labels is None else labels[start : start + n_local]

        if not accumulate:
            reference.zero_grad()
            ddp.zero_grad()
        ref_loss = ref_loss_fn(*reference(x), labels)
        sync = contextlib.nullcontext() if not accumulate or step == steps - 1 else ddp.no_sync()
        with sync:
            loss = loss_fn(*ddp(x[start : start + n_local]), local_labels)
            if case.reduction != "none":
                loss.backward()
        if case.reduction == "none":
            # Per-anchor values of this rank's rows; gradients are the user's business then.
            _close("per-anchor losses", loss, ref_loss[start : start + n_local], case.dtype)
            return
        ref_loss.backward()
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss, group=group)
        mean_loss /= world
        queues = None
        if queue is not None:
            stored, stored_labels = queue.contents()
            queues = [torch.empty_like(stored) for _ in range(world)]
            dist.all_gather(queues, stored.contiguous(), group=group)
        # --- checks (no collectives below) ---
        _close(f"step {step}: mean over ranks of the loss", mean_loss, ref_loss.detach(), case.dtype)
        _close(f"step {step}: this rank's loss", loss.detach(), ref_loss.detach(), case.dtype)
        if accumulate and step < steps - 1:
            continue  # the local gradients are not averaged yet
        for (name, p), p_ref in zip(ddp.module.named_parameters(), reference.parameters(), strict=True):
            if p_ref.grad is None:  # not part of the loss (λ = 0 or 1): no gradient under DDP either
                assert p.grad is None or not p.grad.any(), f"grad of {name} should be empty"
            else:
                _close(f"step {step}: grad of {name}", p.grad, p_ref.grad, case.dtype)
        if queues is not None:
            assert ref_queue is not None
            ref_stored, ref_stored_labels = ref_queue.contents()
            assert len(queue) == len(ref_queue), (len(queue), len(ref_queue))
            _close(f"step {step}: queue contents", stored, ref_stored, case.dtype)
            assert torch.equal(stored_labels, ref_stored_labels), "queue labels differ from the reference"
            for other, q in enumerate(queues):
                assert torch.equal(q, stored), (
                    f"step {step}: the queue of rank {other} differs from rank {rank}'s"
                )


def _run_mismatch(case: Case, rank: int, world: int, group: object) -> None:
    what = case.extra["what"]
    dim = DIM + rank if what == "dim" else DIM
    shape = (3, 1 + rank, dim) if what == "views" else (3, dim)
    features = torch.randn(*shape)
    labels = torch.tensor([0, 1, 0])
    kwargs: dict[str, Any] = {"gather_distributed": True, "process_group": group}
    kwargs["temperature"] = 0.1 * (1 + rank) if what == "temperature" else 0.1
    expected = "does not support mask" if what == "mask" else "they differ"
    try:
        if what == "mask":
            supcon_loss(features, mask=torch.eye(3, dtype=torch.bool), **kwargs)
        else:
            supcon_loss(features, labels, **kwargs)
    except ValueError as err:
        message = str(err)
    else:
        raise AssertionError("no ValueError raised")
    if expected not in message:
        raise AssertionError(f"wrong message: {message}")


def run_all(rank: int, world_size: int, workdir: str) -> None:
    """Every case on the default group (all ranks), then on a 2-rank subgroup (ranks 0 and 1)."""
    pair = dist.new_group([0, 1])  # every rank must take part in new_group
    results: dict[str, str | None] = {}
    for world, group in ((world_size, None), (2, pair)):
        if rank >= world:
            continue
        for index, case in enumerate(CASES):
            key = f"{world}/{case.name}"
            try:
                if case.kind == "mismatch":
                    _run_mismatch(case, rank, world, group)
                else:
                    _run_case(case, rank, world, group, seed=1000 + index)
                results[key] = None
            except Exception:
                results[key] = traceback.format_exc()
    (Path(workdir) / f"results-{rank}.json").write_text(json.dumps(results))
