"""CachedSupConLoss: the gradient of SupConLoss on the same batch (dropout replayed), through MiniLM in
float64; the SentenceTransformerTrainer step (gradient accumulation) equals SupConLoss's; RNG, eval,
autocast, bad arguments."""

from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("sentence_transformers", reason="needs the [st] extra: pip install -e '.[st]'")

from scl_loss.functional import supcon_loss
from scl_loss.integrations.sentence_transformers import CachedSupConLoss, SupConLoss, stack_views
from tests.st.conftest import CLASSES, TEXTS, param_grads

SLOW_FIXTURE = settings(
    max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


def columns_of(model, rows: list[int], views: int) -> list[dict]:
    return [model.preprocess([TEXTS[(i + v) % len(TEXTS)] for i in rows]) for v in range(views)]


def micro_batched_graph(model, columns, labels, temperature, m) -> torch.Tensor:
    """SupConLoss's loss with the batch encoded m rows at a time, with a graph: what caching must equal."""
    n = len(labels)
    parts = []
    for start in range(0, n, m):
        cols = [{k: x[start : start + m] if torch.is_tensor(x) else x for k, x in c.items()} for c in columns]
        parts.append(stack_views([model(c)["sentence_embedding"] for c in cols]))
    return supcon_loss(torch.cat(parts), labels, temperature=temperature)


def cached_grads(model, columns, labels, temperature, m) -> tuple[torch.Tensor, list[torch.Tensor]]:
    model.zero_grad(set_to_none=True)
    value = CachedSupConLoss(model, temperature=temperature, mini_batch_size=m)(columns, labels)
    value.backward()
    return value, [p.grad if p.grad is not None else torch.zeros_like(p) for p in model.parameters()]


@SLOW_FIXTURE
@given(
    rows=st.lists(st.integers(0, len(TEXTS) - 1), min_size=3, max_size=7),
    views=st.integers(1, 2),
    m=st.integers(1, 4),
    seed=st.integers(0, 2**16),
)
def test_gradient_equals_supcon_with_dropout_replayed(minilm64, rows, views, m, seed):
    """Dropout on (train mode): value and parameter gradients equal SupConLoss's on the same micro-batches
    encoded with a graph from the same RNG state; the RNG ends where that plain forward leaves it."""
    minilm64.train()
    labels = torch.tensor([CLASSES[i] for i in rows])
    columns = columns_of(minilm64, rows, views)
    torch.manual_seed(seed)
    expected = micro_batched_graph(minilm64, columns, labels, 0.1, m)
    rng_after_plain = torch.get_rng_state()
    want = param_grads(expected, minilm64)
    torch.manual_seed(seed)
    value, got = cached_grads(minilm64, columns, labels, 0.1, m)
    assert torch.equal(torch.get_rng_state(), rng_after_plain)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-12, atol=0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-8, atol=1e-12)


def test_without_dropout_equals_the_full_batch(minilm64):
    minilm64.eval()
    rows = [0, 3, 6, 1, 4, 7, 2]
    labels = torch.tensor([CLASSES[i] for i in rows])
    columns = columns_of(minilm64, rows, 1)
    expected = SupConLoss(minilm64, temperature=0.2)(columns, labels)
    want = param_grads(expected, minilm64)
    value, got = cached_grads(minilm64, columns, labels, 0.2, 3)
    torch.testing.assert_close(value, expected.detach(), rtol=1e-10, atol=0)
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=1e-7, atol=1e-12)


def test_without_grad_returns_the_value_and_no_hook(minilm64):
    minilm64.eval()
    columns = columns_of(minilm64, list(range(6)), 1)
    labels = torch.tensor(CLASSES[:6])
    with torch.no_grad():
        value = CachedSupConLoss(minilm64, mini_batch_size=4)(columns, labels)
        expected = SupConLoss(minilm64)(columns, labels)
    assert not value.requires_grad
    torch.testing.assert_close(value, expected, rtol=1e-10, atol=0)


def test_bf16_autocast_is_replayed(minilm):
    """The Trainer's autocast covers forward only; the re-embedding in backward runs under it too. Its
    gradients match the micro-batched graph under autocast to bf16 accuracy (that graph sums the
    micro-batches' weight gradients in bf16, through autocast's cached bf16 weights; the cached
    step sums them in float32): 1% of each gradient tensor's norm."""
    minilm.eval()
    rows = [0, 1, 3, 4, 6, 7]
    labels = torch.tensor([CLASSES[i] for i in rows])
    columns = columns_of(minilm, rows, 1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        expected = micro_batched_graph(minilm, columns, labels, 0.1, 2)
    want = param_grads(expected, minilm)
    calls = []
    minilm[0].register_forward_pre_hook(
        lambda *_: calls.append((torch.is_autocast_enabled("cpu"), torch.is_grad_enabled()))
    )
    minilm.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        value = CachedSupConLoss(minilm, mini_batch_size=2)(columns, labels)
    value.backward()
    assert calls == [(True, False)] * 3 + [(True, True)] * 3
    torch.testing.assert_close(value, expected.detach(), rtol=1e-6, atol=0)
    for p, w in zip(minilm.parameters(), want, strict=True):
        g = torch.zeros_like(p) if p.grad is None else p.grad
        # Per tensor, in norm: single bf16 entries differ by a rounding step.
        assert (g - w).norm() <= 1e-2 * w.norm() + 1e-6


def no_dropout(model):
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
    return model


@pytest.mark.parametrize("accumulation", [1, 2])
def test_trainer_step_equals_supcon(minilm, tmp_path, accumulation):
    """One SentenceTransformerTrainer step (SGD) with CachedSupConLoss moves the parameters as with
    SupConLoss: the Trainer's backward of the returned loss carries its scaling into the cached pass."""
    import copy

    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments

    train = Dataset.from_dict({"sentence": TEXTS, "label": CLASSES})
    models = {}
    for name in ("plain", "cached"):
        model = no_dropout(copy.deepcopy(minilm))
        loss = SupConLoss(model) if name == "plain" else CachedSupConLoss(model, mini_batch_size=2)
        args = SentenceTransformerTrainingArguments(
            output_dir=str(tmp_path / name),
            per_device_train_batch_size=9 // accumulation,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            learning_rate=0.5,
            optim="sgd",
            lr_scheduler_type="constant",
            max_grad_norm=1e9,
            report_to="none",
            save_strategy="no",
            seed=0,
            use_cpu=True,
            disable_tqdm=True,
        )
        SentenceTransformerTrainer(model=model, args=args, train_dataset=train, loss=loss).train()
        models[name] = model
    moved = 0.0
    for a, b, start in zip(
        models["plain"].parameters(), models["cached"].parameters(), minilm.parameters(), strict=True
    ):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
        moved = max(moved, (a - start).abs().max().item())
    assert moved > 1e-4, "the step did not move the parameters: the comparison would be vacuous"


def test_config_citation_and_bad_arguments(minilm):
    loss = CachedSupConLoss(minilm, temperature=0.3, mini_batch_size=8)
    assert loss.get_config_dict() == {
        "temperature": 0.3,
        "gather_across_devices": False,
        "mini_batch_size": 8,
    }
    assert "gao2021scaling" in loss.citation
    assert "khosla2020supervised" in loss.citation
    with pytest.raises(ValueError, match="mini_batch_size"):
        CachedSupConLoss(minilm, mini_batch_size=0)
    with pytest.raises(TypeError, match="mini_batch_size"):
        CachedSupConLoss(minilm, mini_batch_size=2.0)
    with pytest.raises(ValueError, match="at least one input column"):
        loss([], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="label column"):
        loss(columns_of(minilm, [0, 1], 1), None)
