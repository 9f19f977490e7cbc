"""Transform conformance: every public entry point under every PyTorch transform, on both paths,
against the float64 loop reference.

The matrix is entry point (× with/without a MemoryQueue) × transform × path; a test id reads
``<entry>[<reduction>](+queue)-<transform>-<path>``. Every cell draws a few random small problems
(hypothesis) and checks the loss value and the gradients (for double backward also a
Hessian-vector product) against ``scl_loss.reference.supcon_loss_loop`` (and
``F.cross_entropy`` for the CE term) in float64, differentiated by plain autograd. With a
queue it also checks that the queue learned the batch exactly once (or, under ``torch.func``,
not at all: docs/distributed.md#the-memory-queue).

A second family checks that ``torch.compile`` and eager mode agree on invalid input: the same
value or the same exception.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor
from torch._dynamo.testing import CompileCounterWithBackend

from scl_loss import MemoryQueue, SCLCrossEntropy, SupConLoss
from scl_loss.functional import scl_cross_entropy, supcon_loss
from scl_loss.reference import supcon_loss_loop

IGNORE = -100
CHUNK = 3  # blocked path: several blocks, the last one ragged, for every problem size drawn here
CAPACITY, PREFILL = 7, 5  # the queue starts 5/7 full and wraps during the step
NUM_CLASSES = 3

# --- entry points -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Entry:
    """A public entry point and the reduction it is exercised with (each reduction on a sweep of its own)."""

    name: str
    reduction: str  # "none": the per-anchor output is summed with random weights
    takes_logits: bool

    def build(self, path: str, queue: MemoryQueue | None, temperature: float, lambda_: float) -> Callable:
        """``f(*inputs, labels) -> output``; inputs are ``(features,)`` or ``(logits, features)``."""
        common: dict[str, Any] = {"ignore_index": IGNORE, "path": path, "chunk_size": CHUNK, "queue": queue}
        if self.name == "supcon_loss":
            return lambda features, labels, mask=None: supcon_loss(
                features, labels, mask=mask, temperature=temperature, reduction=self.reduction, **common
            )
        if self.name == "SupConLoss":
            return SupConLoss(temperature, reduction=self.reduction, **common)
        if self.name == "scl_cross_entropy":
            return lambda logits, features, labels: scl_cross_entropy(
                logits,
                features,
                labels,
                lambda_=lambda_,
                tau=temperature,
                scl_reduction=self.reduction,
                **common,
            )
        return SCLCrossEntropy(lambda_, temperature, scl_reduction=self.reduction, **common)


ENTRIES = [
    Entry("supcon_loss", "none", takes_logits=False),
    Entry("SupConLoss", "mean", takes_logits=False),
    Entry("scl_cross_entropy", "sum", takes_logits=True),
    Entry("SCLCrossEntropy", "mean", takes_logits=True),
]

# --- problems ---------------------------------------------------------------------------------


@dataclass
class Problem:
    features: Tensor  # float64, [N, D] or [N, V, D]
    labels: Tensor  # [N], some may be IGNORE
    logits: Tensor  # float64, [N, C]
    weights: Tensor  # float64, shape of the per-anchor output, for reduction="none"
    temperature: float
    lambda_: float
    prefill: tuple[Tensor, Tensor]  # unit vectors [PREFILL, D] and their labels
    directions: tuple[Tensor, Tensor]  # Hessian-vector product directions for (logits, features)


def _draw_problem(
    draw, *, n: int, views: int | None, dim: int, temperature: float, lambda_: float
) -> Problem:
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (n, dim) if views is None else (n, views, dim)
    labels = torch.randint(0, NUM_CLASSES, (n,), generator=gen)
    if draw(st.booleans()):
        labels[torch.rand(n, generator=gen) < 0.3] = IGNORE
    stored = F.normalize(torch.randn(PREFILL, dim, generator=gen, dtype=torch.float64), dim=1)
    return Problem(
        features=torch.randn(shape, generator=gen, dtype=torch.float64),
        labels=labels,
        logits=torch.randn(n, NUM_CLASSES, generator=gen, dtype=torch.float64),
        weights=torch.rand(shape[:-1], generator=gen, dtype=torch.float64),
        temperature=temperature,
        lambda_=lambda_,
        prefill=(stored, torch.randint(0, NUM_CLASSES, (PREFILL,), generator=gen)),
        directions=(
            torch.randn(n, NUM_CLASSES, generator=gen, dtype=torch.float64),
            torch.randn(shape, generator=gen, dtype=torch.float64),
        ),
    )


@st.composite
def problems(draw) -> Problem:
    """Varied sizes, views, temperatures and λ."""
    return _draw_problem(
        draw,
        n=draw(st.integers(1, 7)),
        views=draw(st.sampled_from([None, 2])),
        dim=draw(st.integers(1, 5)),
        temperature=draw(st.sampled_from([0.05, 0.1, 0.3, 1.0])),
        lambda_=draw(st.sampled_from([0.3, 1.0])),
    )


#: torch.compile cells: one fixed shape and fixed options, so each cell compiles once and its
#: examples differ in values and labels only (tensor values are not guarded on).
COMPILED_SHAPE = {"n": 6, "views": 2, "dim": 4, "temperature": 0.3, "lambda_": 0.6}


@st.composite
def compile_problems(draw) -> Problem:
    return _draw_problem(draw, **COMPILED_SHAPE)


# --- the float64 reference ----------------------------------------------------------------------


def _flat_labels(problem: Problem) -> Tensor:
    views = problem.features.shape[1] if problem.features.dim() == 3 else 1
    return problem.labels.repeat_interleave(views)


def reference_loss(entry: Entry, problem: Problem, inputs: Sequence[Tensor], queued: bool) -> Tensor:
    """The entry's scalar, from the loop reference over ``[batch; prefilled queue]``, in float64."""
    features = inputs[-1]
    flat = features.reshape(-1, features.shape[-1])
    rows = flat.shape[0]
    flat_labels = _flat_labels(problem)
    if queued:
        stored, stored_labels = problem.prefill
        flat = torch.cat([flat, stored])
        flat_labels = torch.cat([flat_labels, stored_labels])
    per_anchor = supcon_loss_loop(
        flat, flat_labels, temperature=problem.temperature, reduction="none", ignore_index=IGNORE
    )[:rows]
    if entry.reduction == "none":
        scl = (per_anchor.reshape(problem.weights.shape) * problem.weights).sum()
    elif entry.reduction == "sum":
        scl = per_anchor.sum()
    else:  # "mean" over the batch's anchors that have a positive in [batch; queue]
        kept = flat_labels != IGNORE
        same = (flat_labels[:rows, None] == flat_labels[None, :]) & kept[None, :] & kept[:rows, None]
        same[:, :rows].fill_diagonal_(False)
        scl = per_anchor.sum() / max(int(same.any(dim=1).sum()), 1)
    if not entry.takes_logits:
        return scl
    logits = inputs[0]
    kept_rows = problem.labels != IGNORE
    # The library's CE of a batch without labelled rows is a connected 0 (torch's would be NaN).
    ce = F.cross_entropy(logits, problem.labels, ignore_index=IGNORE) if kept_rows.any() else logits.sum() * 0
    return (1.0 - problem.lambda_) * ce + problem.lambda_ * scl


def _scalar(entry: Entry, problem: Problem, output: Tensor) -> Tensor:
    if entry.reduction == "none":
        return (output * problem.weights.to(output.dtype)).sum()
    return output


# --- the transforms -----------------------------------------------------------------------------


@dataclass
class Result:
    value: Tensor
    grads: tuple[Tensor, ...]
    hvp: tuple[Tensor, ...] | None = None


def _leaves(entry: Entry, problem: Problem) -> tuple[Tensor, ...]:
    tensors = (problem.logits, problem.features) if entry.takes_logits else (problem.features,)
    return tuple(t.detach().clone().requires_grad_(True) for t in tensors)


def _grads(value: Tensor, inputs: tuple[Tensor, ...], create_graph: bool = False) -> tuple[Tensor, ...]:
    # allow_unused: with λ = 1 the loss is SCL alone and does not depend on the logits.
    grads = torch.autograd.grad(value, inputs, create_graph=create_graph, allow_unused=True)
    return tuple(torch.zeros_like(x) if g is None else g for g, x in zip(grads, inputs, strict=True))


def _hvp(value: Tensor, inputs: tuple[Tensor, ...], directions: tuple[Tensor, ...]) -> Result:
    grads = _grads(value, inputs, create_graph=True)
    inner = sum((g * v).sum() for g, v in zip(grads, directions, strict=True))
    hvp = _grads(inner, inputs) if inner.requires_grad else tuple(torch.zeros_like(x) for x in inputs)
    return Result(value.detach(), tuple(g.detach() for g in grads), hvp)


def run_reference(entry: Entry, problem: Problem, queued: bool, transform: str) -> Result:
    inputs = _leaves(entry, problem)
    value = reference_loss(entry, problem, inputs, queued)
    if transform == "double-backward":
        return _hvp(value, inputs, _directions(entry, problem))
    grads = _grads(value, inputs)
    if transform == "func.jvp":  # the directional derivative ∇L·v
        directional = sum((g * v).sum() for g, v in zip(grads, _directions(entry, problem), strict=True))
        return Result(value.detach(), (directional,))
    return Result(value.detach(), grads)


def _directions(entry: Entry, problem: Problem) -> tuple[Tensor, ...]:
    return problem.directions if entry.takes_logits else problem.directions[1:]


def run_transform(transform: str, f: Callable, entry: Entry, problem: Problem) -> Result:
    """Apply ``transform`` to the library call ``f(*inputs, labels)``: value and gradients."""
    inputs = _leaves(entry, problem)
    labels = problem.labels

    def scalar(*xs: Tensor) -> Tensor:
        return _scalar(entry, problem, f(*xs, labels))

    if transform in ("eager", "compile"):
        value = scalar(*inputs)
        return Result(value.detach(), _grads(value, inputs))
    if transform == "func.grad":
        argnums = tuple(range(len(inputs)))
        grads, value = torch.func.grad_and_value(scalar, argnums=argnums)(*(x.detach() for x in inputs))
        return Result(value, tuple(grads))
    if transform == "func.jvp":  # forward mode
        primals = tuple(x.detach() for x in inputs)
        value, directional = torch.func.jvp(scalar, primals, _directions(entry, problem))
        return Result(value, (directional,))
    if transform == "double-backward":
        return _hvp(scalar(*inputs), inputs, _directions(entry, problem))
    if transform in ("checkpoint", "checkpoint-reentrant"):
        reentrant = transform == "checkpoint-reentrant"
        value = torch.utils.checkpoint.checkpoint(scalar, *inputs, use_reentrant=reentrant)
        value.backward()  # reentrant checkpoints do not support autograd.grad
        grads = tuple(torch.zeros_like(x) if x.grad is None else x.grad for x in inputs)
        return Result(value.detach(), grads)
    raise AssertionError(transform)


TRANSFORMS = [
    "eager",
    "compile",
    "func.grad",
    "func.jvp",
    "double-backward",
    "checkpoint",
    "checkpoint-reentrant",
]
PATHS = ["dense", "blocked"]


def _scale(t: Tensor) -> float:
    return max(1.0, float(t.abs().max())) if t.numel() else 1.0


def _assert_close(got: Result, want: Result) -> None:
    torch.testing.assert_close(got.value, want.value, rtol=1e-9, atol=1e-10)
    for g, w in zip(got.grads, want.grads, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-9 * _scale(w))
    if want.hvp is not None:
        assert got.hvp is not None
        for g, w in zip(got.hvp, want.hvp, strict=True):
            torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-8 * _scale(w))


# --- the matrix ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Cell:
    entry: Entry
    queued: bool
    transform: str
    path: str

    @property
    def id(self) -> str:
        queue = "+queue" if self.queued else ""
        return f"{self.entry.name}[{self.entry.reduction}]{queue}-{self.transform}-{self.path}"


CELLS = [
    Cell(entry, queued, transform, path)
    for entry in ENTRIES
    for queued in (False, True)
    for transform in TRANSFORMS
    for path in PATHS
]

_compiled: dict[Cell, tuple[Callable, MemoryQueue | None, CompileCounterWithBackend]] = {}


def _library_call(cell: Cell, problem: Problem) -> tuple[Callable, MemoryQueue | None]:
    """The call under test and its queue (prefilled). Compiled cells reuse one compiled callable and
    one queue, refilled in place, so that a cell compiles once."""
    if cell.transform == "compile":
        if cell not in _compiled:
            queue = MemoryQueue(CAPACITY, COMPILED_SHAPE["dim"], dtype=torch.float64) if cell.queued else None
            f = cell.entry.build(cell.path, queue, COMPILED_SHAPE["temperature"], COMPILED_SHAPE["lambda_"])
            counter = CompileCounterWithBackend("aot_eager")
            _compiled[cell] = (torch.compile(f, backend=counter), queue, counter)
        f, queue, _ = _compiled[cell]
        if queue is not None:
            queue.reset()
    else:
        dim = problem.features.shape[-1]
        queue = MemoryQueue(CAPACITY, dim, dtype=torch.float64) if cell.queued else None
        f = cell.entry.build(cell.path, queue, problem.temperature, problem.lambda_)
    if queue is not None:
        queue.enqueue(*problem.prefill)
    return f, queue


def _expected_queue(problem: Problem, learns: bool) -> tuple[Tensor, Tensor]:
    twin = MemoryQueue(CAPACITY, problem.features.shape[-1], dtype=torch.float64)
    twin.enqueue(*problem.prefill)
    if learns:
        flat = problem.features.reshape(-1, problem.features.shape[-1])
        labels = _flat_labels(problem)
        kept = labels != IGNORE
        twin.enqueue(F.normalize(flat, dim=1)[kept], labels[kept])
    return twin.contents()


def _check_cell(cell: Cell, problem: Problem) -> None:
    f, queue = _library_call(cell, problem)
    got = run_transform(cell.transform, f, cell.entry, problem)
    want = run_reference(cell.entry, problem, cell.queued, cell.transform)
    _assert_close(got, want)
    if queue is not None:
        # Learns exactly once from the step; torch.func transforms only read the queue.
        stored, stored_labels = queue.contents()
        expected, expected_labels = _expected_queue(problem, learns=not cell.transform.startswith("func."))
        torch.testing.assert_close(stored, expected, rtol=0, atol=1e-12)
        assert torch.equal(stored_labels, expected_labels)


@pytest.mark.parametrize("cell", [c for c in CELLS if c.transform != "compile"], ids=lambda c: c.id)
@settings(max_examples=4)
@given(problem=problems())
def test_transform(cell: Cell, problem: Problem) -> None:
    _check_cell(cell, problem)


@pytest.mark.parametrize("cell", [c for c in CELLS if c.transform == "compile"], ids=lambda c: c.id)
@settings(max_examples=4)
@given(problem=compile_problems())
def test_transform_compiled(cell: Cell, problem: Problem) -> None:
    _check_cell(cell, problem)
    # One graph for the whole call, compiled once for all examples: no graph break, no
    # recompile, and no silent fallback to eager mode after too many recompiles.
    assert _compiled[cell][2].frame_count == 1


# --- eager and compiled agree on invalid input ----------------------------------------------------


def _invalid(kind: str, entry: Entry) -> tuple[tuple[Tensor, ...], Tensor | None, Tensor | None]:
    """``(inputs, labels, mask)`` of the fixed compiled shape, invalid in the way ``kind`` says."""
    gen = torch.Generator().manual_seed(0)
    n, views, dim = COMPILED_SHAPE["n"], COMPILED_SHAPE["views"], COMPILED_SHAPE["dim"]
    features = torch.randn(n, views, dim, generator=gen, dtype=torch.float64)
    logits = torch.randn(n, NUM_CLASSES, generator=gen, dtype=torch.float64)
    labels: Tensor | None = torch.tensor([0, 0, 1, 1, 2, 2])
    mask = None
    if kind == "nan-features":
        features[2, 1, 0] = math.nan
    elif kind == "inf-features":
        features[0, 0, 3] = math.inf
    elif kind == "nan-logits":
        logits[1, 2] = math.nan
    elif kind == "all-ignored":
        labels = torch.full((n,), IGNORE)
    elif kind == "fractional-mask":
        labels, mask = None, torch.full((n, n), 0.5, dtype=torch.float64)
    inputs = (logits, features) if entry.takes_logits else (features,)
    return inputs, labels, mask


def _outcome(call: Callable[[], Tensor]) -> tuple[str, Any]:
    try:
        out = call()
    except (TypeError, ValueError) as error:
        return type(error).__name__, str(error)
    return "value", out.detach()


INVALID = [
    (entry, kind, path)
    for entry in ENTRIES
    for kind in ["nan-features", "inf-features", "all-ignored"]
    + (["nan-logits"] if entry.takes_logits else ["fractional-mask"])
    for path in PATHS
]


@pytest.mark.parametrize(
    ("entry", "kind", "path"), INVALID, ids=[f"{e.name}[{e.reduction}]-{k}-{p}" for e, k, p in INVALID]
)
def test_compile_and_eager_agree_on_invalid_input(entry: Entry, kind: str, path: str) -> None:
    torch._dynamo.reset()
    inputs, labels, mask = _invalid(kind, entry)
    f = entry.build(path, None, COMPILED_SHAPE["temperature"], COMPILED_SHAPE["lambda_"])
    compiled = torch.compile(f, backend="aot_eager")
    kwargs = {} if mask is None else {"mask": mask}
    eager = _outcome(lambda: f(*inputs, labels, **kwargs))
    got = _outcome(lambda: compiled(*inputs, labels, **kwargs))
    assert got[0] == eager[0], (eager, got)
    if eager[0] == "value":
        torch.testing.assert_close(got[1], eager[1], equal_nan=True)
    else:
        assert got[1] == eager[1]
