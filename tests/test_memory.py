"""MemoryQueue: with a queue, the loss is the plain loss over [batch; queue.detach()] for batch anchors."""

from __future__ import annotations

import io

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from scl_loss import MemoryQueue, SCLCrossEntropy, SupConLoss
from scl_loss.functional import reduce_per_anchor, scl_cross_entropy, supcon_loss
from scl_loss.reference import supcon_loss_loop

IGNORE = -100


def _reference_with_queue(features, labels, stored, stored_labels, temperature, reduction):
    """Literal float64 loop loss over [batch; stored], per-anchor values of the batch's rows, then reduced."""
    n = features.shape[0]
    views = features.shape[1] if features.dim() == 3 else 1
    flat = features.reshape(n * views, -1)
    everything = torch.cat([flat, stored.detach().to(flat.dtype)])
    all_labels = torch.cat([labels.repeat_interleave(views), stored_labels])
    per_row = supcon_loss_loop(
        everything, all_labels, temperature=temperature, reduction="none", ignore_index=IGNORE
    )
    batch_part = per_row[: n * views]
    if reduction == "none":
        return batch_part.reshape(features.shape[:-1])
    # Which batch anchors have a positive in [batch; stored]: the same rule as the library's "mean".
    kept = all_labels != IGNORE
    same = (all_labels[: n * views, None] == all_labels[None, :]) & kept[None, :] & kept[: n * views, None]
    same.fill_diagonal_(False)
    return reduce_per_anchor(batch_part, same.sum(1), reduction)


@st.composite
def _batches(draw):
    n = draw(st.integers(1, 6))
    views = draw(st.sampled_from([None, 2]))
    dim = draw(st.integers(2, 5))
    classes = draw(st.integers(1, 4))
    capacity = draw(st.integers(1, 9))
    steps = draw(st.integers(1, 3))
    with_ignore = draw(st.booleans())
    seed = draw(st.integers(0, 2**31 - 1))
    return n, views, dim, classes, capacity, steps, with_ignore, seed


def _random_batch(gen, n, views, dim, classes, with_ignore):
    shape = (n, dim) if views is None else (n, views, dim)
    features = torch.randn(*shape, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, classes, (n,), generator=gen)
    if with_ignore:
        labels[torch.rand(n, generator=gen) < 0.3] = IGNORE
    return features, labels


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@given(batch=_batches())
def test_equals_plain_loss_over_batch_and_detached_queue(reduction, batch) -> None:
    n, views, dim, classes, capacity, steps, with_ignore, seed = batch
    gen = torch.Generator().manual_seed(seed)
    queue = MemoryQueue(capacity, dim, dtype=torch.float64)
    for _ in range(steps):
        features, labels = _random_batch(gen, n, views, dim, classes, with_ignore)
        stored, stored_labels = (t.clone() for t in queue.contents())
        features.requires_grad_(True)
        loss = supcon_loss(
            features, labels, temperature=0.5, reduction=reduction, ignore_index=IGNORE, queue=queue
        )
        (grad,) = torch.autograd.grad(loss.sum(), features)
        ref_features = features.detach().clone().requires_grad_(True)
        ref = _reference_with_queue(ref_features, labels, stored, stored_labels, 0.5, reduction)
        (ref_grad,) = torch.autograd.grad(ref.sum(), ref_features)
        torch.testing.assert_close(loss, ref.to(loss.dtype))
        torch.testing.assert_close(grad, ref_grad)


def test_empty_queue_is_the_plain_loss_and_the_batch_is_enqueued_after_use() -> None:
    torch.manual_seed(0)
    features, labels = torch.randn(6, 2, 4, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, IGNORE])
    queue = MemoryQueue(100, 4)
    torch.testing.assert_close(supcon_loss(features, labels, queue=queue), supcon_loss(features, labels))
    # 5 kept rows × 2 views, normalised, in flat order; the ignored row is not stored.
    assert len(queue) == 10
    stored, stored_labels = queue.contents()
    expected = torch.nn.functional.normalize(features.detach()[:5].reshape(10, 4), dim=1)
    torch.testing.assert_close(stored, expected)
    assert stored_labels.tolist() == [0, 0, 1, 1, 2, 2, 0, 0, 1, 1]
    # The next call sees them: singletons of the new batch now find positives in the queue.
    lone = torch.randn(1, 4)
    assert supcon_loss(lone, torch.tensor([2])) == 0
    assert supcon_loss(lone, torch.tensor([2]), queue=queue) > 0


def test_fifo_order_capacity_and_wraparound() -> None:
    queue = MemoryQueue(5, 1)
    for start in (0, 3, 6):  # push rows 0..8 three at a time
        rows = torch.arange(start, start + 3, dtype=torch.float32)
        queue.enqueue(rows[:, None], rows.long())
    stored, stored_labels = queue.contents()
    assert len(queue) == queue.capacity == 5
    assert stored[:, 0].tolist() == [4.0, 5.0, 6.0, 7.0, 8.0]  # oldest first, last 5 kept
    assert stored_labels.tolist() == [4, 5, 6, 7, 8]
    # A batch longer than the capacity keeps only its newest rows.
    rows = torch.arange(100, 107, dtype=torch.float32)
    queue.enqueue(rows[:, None], rows.long())
    assert queue.contents()[1].tolist() == [102, 103, 104, 105, 106]
    queue.reset()
    assert len(queue) == 0
    assert queue.contents()[0].shape == (0, 1)


def test_warm_up_uses_only_filled_entries() -> None:
    queue = MemoryQueue(8, 3)
    queue.enqueue(torch.randn(2, 3), torch.tensor([0, 1]))
    assert len(queue) == 2
    assert queue.contents()[0].shape == (2, 3)
    # Unfilled slots (zeros, label 0) must not act as positives of class 0.
    anchor = torch.randn(1, 3)
    alone = MemoryQueue(8, 3)
    alone.enqueue(torch.randn(1, 3), torch.tensor([1]))
    assert supcon_loss(anchor, torch.tensor([0]), queue=alone) == 0


def test_dtypes_storage_is_cast_both_ways() -> None:
    torch.manual_seed(1)
    half = MemoryQueue(16, 4, dtype=torch.float16)
    features, labels = torch.randn(4, 4), torch.tensor([0, 0, 1, 1])
    supcon_loss(features, labels, queue=half)
    assert half.contents()[0].dtype == torch.float16
    loss = supcon_loss(torch.randn(4, 4, dtype=torch.float64), labels, queue=half)
    assert loss.dtype == torch.float64
    assert bool(loss.isfinite())
    low = supcon_loss(torch.randn(4, 4, dtype=torch.bfloat16), labels, queue=half)
    assert low.dtype == torch.float32


def test_state_dict_round_trip_keeps_contents_and_write_position() -> None:
    queue = MemoryQueue(4, 2)
    queue.enqueue(torch.randn(6, 2), torch.arange(6))
    buffer = io.BytesIO()
    torch.save(queue.state_dict(), buffer)
    buffer.seek(0)
    restored = MemoryQueue(4, 2)
    restored.load_state_dict(torch.load(buffer))
    for a, b in zip(queue.contents(), restored.contents(), strict=True):
        assert torch.equal(a, b)
    queue.enqueue(torch.ones(1, 2), torch.tensor([9]))
    restored.enqueue(torch.ones(1, 2), torch.tensor([9]))
    assert torch.equal(queue.contents()[1], restored.contents()[1])


def test_modules_and_scl_cross_entropy_use_the_queue() -> None:
    torch.manual_seed(2)
    features, labels = torch.randn(6, 8, requires_grad=True), torch.tensor([0, 1, 2, 0, 1, 2])
    logits = torch.randn(6, 3)
    prefill = (torch.randn(5, 8), torch.tensor([0, 0, 1, 2, 2]))

    def filled() -> MemoryQueue:
        q = MemoryQueue(10, 8)
        q.enqueue(*prefill)
        return q

    expected_scl = supcon_loss(features, labels, temperature=0.3, queue=filled())
    criterion = SupConLoss(0.3, queue=filled())
    assert "queue" in dict(criterion.named_modules())  # moves with .to(), saved in state_dict
    torch.testing.assert_close(criterion(features, labels), expected_scl)
    assert len(criterion.queue) == 10
    out = scl_cross_entropy(
        logits, features, labels, lambda_=0.4, tau=0.3, queue=filled(), return_components=True
    )
    torch.testing.assert_close(out.scl, expected_scl)
    module = SCLCrossEntropy(0.4, 0.3, queue=filled(), return_components=True)
    torch.testing.assert_close(module(logits, features, labels).loss, out.loss)


def test_bad_arguments_raise_clear_errors() -> None:
    with pytest.raises(ValueError, match="capacity must be >= 1"):
        MemoryQueue(0, 4)
    with pytest.raises(TypeError, match="capacity must be an int"):
        MemoryQueue(2.5, 4)
    with pytest.raises(ValueError, match="dim must be >= 1"):
        MemoryQueue(4, 0)
    with pytest.raises(TypeError, match="dtype must be a floating"):
        MemoryQueue(4, 2, dtype=torch.int64)
    queue = MemoryQueue(4, 3)
    features, labels = torch.randn(4, 5), torch.tensor([0, 0, 1, 1])
    with pytest.raises(ValueError, match="dimension D = 5 but the queue stores dim = 3"):
        supcon_loss(features, labels, queue=queue)
    with pytest.raises(TypeError, match=r"queue must be a scl_loss\.MemoryQueue"):
        supcon_loss(features, labels, queue=[])
    with pytest.raises(ValueError, match="queue needs labels"):
        supcon_loss(torch.randn(4, 2, 3), queue=queue)
    with pytest.raises(ValueError, match="queue needs labels"):
        supcon_loss(torch.randn(4, 3), mask=torch.eye(4, dtype=torch.bool), queue=queue)
    with pytest.raises(ValueError, match="embeddings must have shape"):
        queue.enqueue(torch.randn(2, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="labels must have shape"):
        queue.enqueue(torch.randn(2, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(TypeError, match="labels must be an integer"):
        queue.enqueue(torch.randn(2, 3), torch.tensor([0.0, 1.0]))
    on_meta = MemoryQueue(4, 3, device="meta")
    with pytest.raises(
        ValueError, match=r"queue is on meta but the features are on cpu; move it with queue.to"
    ):
        supcon_loss(torch.randn(4, 3), labels, queue=on_meta)
    assert len(queue) == 0  # failed calls leave the queue untouched


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_blocked_path_with_queue_matches_dense(reduction) -> None:
    # Queue contrasts make M > A: the blocked kernel must handle the extra columns too.
    gen = torch.Generator().manual_seed(3)
    results = {}
    for path in ("dense", "blocked"):
        queue = MemoryQueue(7, 4, dtype=torch.float64)
        queue.enqueue(
            torch.randn(9, 4, generator=torch.Generator().manual_seed(4), dtype=torch.float64),
            torch.tensor([0, 1, 2, 3, 4, 0, 1, 2, 3]),
        )
        features = torch.randn(5, 2, 4, generator=gen.manual_seed(3), dtype=torch.float64, requires_grad=True)
        labels = torch.tensor([0, 1, IGNORE, 5, 1])
        loss = supcon_loss(
            features, labels, reduction=reduction, ignore_index=IGNORE, queue=queue, path=path, chunk_size=3
        )
        (grad,) = torch.autograd.grad(loss.sum(), features)
        results[path] = (loss.detach(), grad, queue.contents())
    torch.testing.assert_close(results["blocked"][:2], results["dense"][:2])
    for a, b in zip(results["blocked"][2], results["dense"][2], strict=True):
        assert torch.equal(a, b)


# --- when the queue learns: exactly once per training step --------------------------------------


def _step_inputs(seed: int, n: int = 6, dim: int = 4):
    gen = torch.Generator().manual_seed(seed)
    features = torch.randn(n, dim, generator=gen, dtype=torch.float64, requires_grad=True)
    return features, torch.randint(0, 3, (n,), generator=gen)


def _filled_queue(capacity: int = 9, dim: int = 4) -> MemoryQueue:
    queue = MemoryQueue(capacity, dim, dtype=torch.float64)
    gen = torch.Generator().manual_seed(99)
    # Unit vectors, as the loss stores them (the loop reference normalises every row again).
    entries = torch.nn.functional.normalize(torch.randn(5, dim, generator=gen, dtype=torch.float64), dim=1)
    queue.enqueue(entries, torch.tensor([0, 1, 2, 0, 1]))
    return queue


def _snapshot(queue: MemoryQueue) -> tuple[torch.Tensor, torch.Tensor]:
    return tuple(t.clone() for t in queue.contents())


def _assert_same_contents(
    queue: MemoryQueue, expected: tuple[torch.Tensor, torch.Tensor], exact: bool = True
) -> None:
    stored, stored_labels = queue.contents()
    torch.testing.assert_close(stored, expected[0], **({"rtol": 0, "atol": 0} if exact else {}))
    assert torch.equal(stored_labels, expected[1])


def _after_one_step(queue_before, features, labels, capacity):
    """The contents a queue must hold after one training step on (features, labels)."""
    expected = MemoryQueue(capacity, features.shape[-1], dtype=torch.float64)
    expected.enqueue(*queue_before)
    expected.enqueue(torch.nn.functional.normalize(features.detach(), dim=1), labels)
    return expected.contents()


def test_evaluation_calls_read_the_queue_but_do_not_enqueue() -> None:
    criterion = SupConLoss(0.5, queue=_filled_queue())
    features, labels = _step_inputs(0)
    criterion(features, labels).backward()  # a training step: staged, counted by len()
    after_training = _snapshot(criterion.queue)
    assert len(criterion.queue) == 9
    other, other_labels = _step_inputs(1)
    criterion.eval()
    with torch.no_grad():  # the usual validation loop
        value = criterion(other, other_labels)
    _assert_same_contents(criterion.queue, after_training)
    # ... and it used the queue, last training batch included.
    expected = _reference_with_queue(other.detach(), other_labels, *after_training, 0.5, "mean")
    torch.testing.assert_close(value, expected)
    criterion(other, other_labels)  # eval mode, grad on (e.g. an input-attribution pass)
    _assert_same_contents(criterion.queue, after_training)
    criterion.train()
    with torch.no_grad():  # training mode, grad off
        criterion(other, other_labels)
    with torch.inference_mode():
        criterion(other, other_labels)
    criterion(other.detach(), other_labels)  # frozen features: nothing to train
    _assert_same_contents(criterion.queue, after_training)
    criterion(other, other_labels)  # a training step again
    assert len(criterion.queue) == 9
    assert not torch.equal(criterion.queue.contents()[0], after_training[0])


def test_each_training_call_is_one_step() -> None:
    # Gradient accumulation: every micro-batch call is a step of its own, seen by the next one.
    queue = MemoryQueue(20, 4, dtype=torch.float64)
    first, first_labels = _step_inputs(0)
    second, second_labels = _step_inputs(1)
    supcon_loss(first, first_labels, queue=queue).backward()
    value = supcon_loss(second, second_labels, temperature=0.5, queue=queue)
    stored = torch.nn.functional.normalize(first.detach(), dim=1)
    torch.testing.assert_close(
        value, _reference_with_queue(second.detach(), second_labels, stored, first_labels, 0.5, "mean")
    )
    assert len(queue) == 12


@pytest.mark.parametrize("use_reentrant", [True, False], ids=["reentrant", "non-reentrant"])
@pytest.mark.parametrize("path", ["dense", "blocked"])
def test_checkpointed_step_enqueues_once_and_matches_the_plain_step(use_reentrant, path) -> None:
    capacity = 9
    results = {}
    for mode in ("plain", "checkpoint"):
        queue = _filled_queue(capacity)
        before = _snapshot(queue)
        features, labels = _step_inputs(3)

        def loss_fn(x, queue=queue, labels=labels):
            return supcon_loss(x, labels, temperature=0.5, queue=queue, path=path, chunk_size=2)

        if mode == "plain":
            loss = loss_fn(features)
        else:
            loss = torch.utils.checkpoint.checkpoint(loss_fn, features, use_reentrant=use_reentrant)
        loss.backward()
        _assert_same_contents(queue, _after_one_step(before, features, labels, capacity), exact=False)
        results[mode] = (loss.detach(), features.grad)
        expected = _reference_with_queue(features.detach(), labels, *before, 0.5, "mean")
        torch.testing.assert_close(loss.detach(), expected)
    torch.testing.assert_close(results["checkpoint"], results["plain"])


def test_torch_func_reads_the_queue_and_leaves_it_unchanged() -> None:
    queue = _filled_queue()
    features, labels = _step_inputs(4)
    supcon_loss(features, labels, queue=queue).backward()  # staged: must be read below
    before = _snapshot(queue)
    other, other_labels = _step_inputs(5)

    def loss_fn(x):
        return supcon_loss(x, other_labels, temperature=0.5, queue=queue)

    grad = torch.func.grad(loss_fn)(other.detach())
    _assert_same_contents(queue, before)
    x = other.detach().clone().requires_grad_(True)
    expected = _reference_with_queue(x, other_labels, *before, 0.5, "mean")
    (expected_grad,) = torch.autograd.grad(expected, x)
    torch.testing.assert_close(grad, expected_grad)


@pytest.mark.parametrize("path", ["dense", "blocked"])
def test_compiled_steps_do_not_recompile_as_the_queue_fills(path) -> None:
    from torch._dynamo.testing import CompileCounterWithBackend

    torch._dynamo.reset()
    torch.manual_seed(0)
    encoder, head = torch.nn.Linear(8, 6), torch.nn.Linear(6, 3)
    queues = {"eager": MemoryQueue(40, 6), "compiled": MemoryQueue(40, 6)}
    criteria = {
        mode: SCLCrossEntropy(0.5, 0.3, queue=q, path=path, chunk_size=5) for mode, q in queues.items()
    }

    def step(x, y, criterion):
        features = encoder(x)
        return criterion(head(features), features, y)

    counter = CompileCounterWithBackend("aot_eager")
    compiled = torch.compile(step, backend=counter)
    graphs = []
    for _ in range(12):  # 8 rows a step: the queue fills in 5 steps, then wraps
        x, y = torch.randn(8, 8), torch.randint(0, 3, (8,))
        encoder.zero_grad()
        eager = step(x, y, criteria["eager"])
        eager.backward()
        eager_grad = encoder.weight.grad.clone()
        encoder.zero_grad()
        loss = compiled(x, y, criteria["compiled"])
        loss.backward()
        torch.testing.assert_close(loss, eager)
        torch.testing.assert_close(encoder.weight.grad, eager_grad)
        for a, b in zip(queues["compiled"].contents(), queues["eager"].contents(), strict=True):
            torch.testing.assert_close(a, b)
        graphs.append(counter.frame_count)
    assert len(queues["compiled"]) == 40
    assert graphs == [1] * 12, graphs  # main: 17 graphs in 12 steps


def test_the_per_step_path_reads_no_device_value() -> None:
    # On the meta device tensors have no values: every op that needs one on the host (.item(),
    # nonzero, boolean-mask indexing: a sync on a GPU) raises there.
    from scl_loss import memory
    from scl_loss._problem import build_problem

    queue = MemoryQueue(9, 4, device="meta")
    features = torch.randn(6, 4, device="meta", requires_grad=True)
    labels = torch.tensor([0, IGNORE, 1, 1, 2, 0], device="meta")
    problem = build_problem(features, labels, None, temperature=0.5, normalize=True, ignore_index=IGNORE)
    for _ in range(3):  # commit, read, stage
        with_queue = memory.append_queue(problem, queue)
        memory.enqueue_batch(queue, problem)
    assert with_queue.contrasts.shape == (6 + 9, 4)  # every slot, filled or not
    assert with_queue.valid.shape == (6 + 9,)


def test_state_dict_includes_the_staged_batch_and_old_state_dicts_load() -> None:
    queue = _filled_queue()
    features, labels = _step_inputs(7)
    supcon_loss(features, labels, queue=queue).backward()  # staged, not yet committed
    state = queue.state_dict()
    assert set(state) == {"embeddings", "labels", "valid", "position"}
    restored = MemoryQueue(9, 4, dtype=torch.float64)
    restored.load_state_dict(state)
    _assert_same_contents(restored, _snapshot(queue))
    # The format of earlier versions: slots filled in order, write position and count as ints.
    old = {
        "embeddings": torch.arange(12.0).reshape(4, 3),
        "labels": torch.tensor([5, 6, 7, 0]),
        "_extra_state": {"next": 3, "filled": 3},
    }
    legacy = MemoryQueue(4, 3)
    legacy.load_state_dict(old)
    assert legacy.contents()[1].tolist() == [5, 6, 7]
    legacy.enqueue(torch.ones(2, 3), torch.tensor([8, 9]))  # slot 3, then the oldest (slot 0)
    assert legacy.contents()[1].tolist() == [6, 7, 8, 9]
