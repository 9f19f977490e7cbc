"""scl_loss.integrations.sentence_transformers.SupConLoss: values and gradients against the float64
reference through a real encoder, the SentenceTransformerTrainer path, DDP gathering, bad arguments."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

pytest.importorskip("sentence_transformers", reason="needs the [st] extra: pip install -e '.[st]'")

from sentence_transformers import SentenceTransformer
from sentence_transformers.sentence_transformer.modules import Dense

from scl_loss.integrations.sentence_transformers import CachedSupConLoss, SupConLoss
from scl_loss.reference import supcon_loss_loop
from tests._multiprocess import run_on_ranks
from tests.st.conftest import CLASSES, TEXTS, param_grads

SLOW_FIXTURE = settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)


@SLOW_FIXTURE
@given(
    rows=st.lists(st.integers(0, len(TEXTS) - 1), min_size=2, max_size=6),
    views=st.integers(1, 2),
    temperature=st.sampled_from([0.05, 0.1, 0.5]),
)
def test_value_and_gradient_match_the_float64_reference(minilm64, rows, views, temperature):
    """Through MiniLM (eval mode, float64): the loss of V text columns equals the float64 loop
    transcription of eq. 3 on the stacked ``[N, V, D]`` embeddings, values and parameter gradients."""
    minilm64.eval()
    labels = torch.tensor([CLASSES[i] for i in rows])
    # Column v holds the rows shifted by v: different texts, the row's label.
    columns = [[TEXTS[(i + v) % len(TEXTS)] for i in rows] for v in range(views)]
    features = [minilm64.preprocess(texts) for texts in columns]
    loss = SupConLoss(minilm64, temperature=temperature)(features, labels)
    embeddings = [minilm64(f)["sentence_embedding"] for f in features]
    stacked = embeddings[0] if views == 1 else torch.stack(embeddings, dim=1)
    expected = supcon_loss_loop(stacked, labels, temperature=temperature)
    assert loss.dtype == torch.float64
    torch.testing.assert_close(loss, expected, rtol=1e-10, atol=1e-12)
    for got, want in zip(param_grads(loss, minilm64), param_grads(expected, minilm64), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-8, atol=1e-12)


def test_views_without_labels_are_simclr(minilm64):
    minilm64.eval()
    features = [minilm64.preprocess(TEXTS[:4]), minilm64.preprocess(TEXTS[4:8])]
    loss = SupConLoss(minilm64, temperature=0.2)(features, None)
    stacked = torch.stack([minilm64(f)["sentence_embedding"] for f in features], dim=1)
    torch.testing.assert_close(loss, supcon_loss_loop(stacked, None, temperature=0.2), rtol=1e-10, atol=0)


def test_singleton_label_is_finite_and_left_out(minilm64):
    """An example alone in its class is no anchor (its term would be 0/0), yet still a contrast."""
    minilm64.eval()
    features = [minilm64.preprocess(TEXTS[:5])]
    labels = torch.tensor([0, 0, 1, 1, 2])
    loss = SupConLoss(minilm64)(features, labels)
    emb = minilm64(features[0])["sentence_embedding"]
    per_anchor = supcon_loss_loop(emb, labels, temperature=0.1, reduction="none")
    assert torch.isfinite(loss)
    torch.testing.assert_close(loss, per_anchor[:4].mean(), rtol=1e-10, atol=0)


class LabelRecorder(SupConLoss):
    """Keeps the labels of every training batch."""

    def forward(self, sentence_features, labels):
        self.seen = [*getattr(self, "seen", []), labels.tolist()]
        return super().forward(sentence_features, labels)


def test_sentence_transformer_trainer_with_group_by_label(minilm, tmp_path):
    """``SentenceTransformerTrainer`` trains on a (sentence, label) dataset; GROUP_BY_LABEL gives every
    batch two examples of each label in it; training lowers the loss of the training set."""
    from datasets import Dataset
    from sentence_transformers import SentenceTransformerTrainer, SentenceTransformerTrainingArguments
    from sentence_transformers.sentence_transformer.training_args import BatchSamplers

    train = Dataset.from_dict({"sentence": TEXTS, "label": CLASSES})
    loss = LabelRecorder(minilm, temperature=0.1)
    minilm.eval()
    features = [minilm.preprocess(TEXTS)]
    with torch.no_grad():
        before = loss(features, torch.tensor(CLASSES)).item()
    loss.seen = []
    args = SentenceTransformerTrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=4,
        num_train_epochs=4,
        learning_rate=1e-4,
        batch_sampler=BatchSamplers.GROUP_BY_LABEL,
        report_to="none",
        save_strategy="no",
        seed=0,
        use_cpu=True,
        disable_tqdm=True,
    )
    SentenceTransformerTrainer(model=minilm, args=args, train_dataset=train, loss=loss).train()
    assert loss.seen, "the loss never saw a batch"
    for batch in loss.seen:
        counts = torch.tensor(batch).bincount()
        assert (counts[counts > 0] >= 2).all(), batch
    minilm.eval()
    with torch.no_grad():
        after = loss(features, torch.tensor(CLASSES)).item()
    assert after < before


def test_config_and_citation(minilm):
    loss = SupConLoss(minilm, temperature=0.3, gather_across_devices=True)
    assert loss.get_config_dict() == {"temperature": 0.3, "gather_across_devices": True}
    assert "Supervised Contrastive Learning" in loss.citation
    assert "@inproceedings" in loss.citation
    assert loss.model is minilm  # the Trainer swaps in its wrapped model through this attribute


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"temperature": 0.0}, ValueError, "temperature"),
        ({"temperature": "0.1"}, TypeError, "temperature"),
        ({"gather_across_devices": 1}, TypeError, "gather_across_devices"),
    ],
)
def test_bad_arguments(minilm, kwargs, error, match):
    with pytest.raises(error, match=match):
        SupConLoss(minilm, **kwargs)


def test_bad_model_and_inputs(minilm):
    with pytest.raises(TypeError, match="model"):
        SupConLoss("all-MiniLM-L6-v2")
    loss = SupConLoss(minilm)
    features = [minilm.preprocess(TEXTS[:4])]
    with pytest.raises(ValueError, match="label column"):
        loss(features, None)
    with pytest.raises(TypeError, match="labels must have an integer dtype"):
        loss(features, torch.tensor([0.0, 0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="at least one input column"):
        loss([], torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="same shape"):
        loss([features[0], minilm.preprocess(TEXTS[:3])], torch.tensor([0, 0, 1, 1]))


# Distributed: each rank embeds its shard; gathering makes the value the full batch's and the
# DDP-averaged gradient the single-process one.

WORLD_SIZE = 2
DIM_IN, DIM_OUT = 6, 5


def toy_batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(7, DIM_IN, generator=g, dtype=torch.float64), torch.tensor([0, 1, 0, 2, 1, 2, 0])


def toy_model() -> SentenceTransformer:
    torch.manual_seed(0)
    return SentenceTransformer(modules=[Dense(DIM_IN, DIM_OUT)], device="cpu").double()


LOSSES = {
    "SupConLoss": SupConLoss,
    "CachedSupConLoss": lambda *a, **k: CachedSupConLoss(*a, mini_batch_size=3, **k),
    "CachedSupConLoss, DDP": lambda *a, **k: CachedSupConLoss(*a, mini_batch_size=3, **k),
}


def counting_allreduce(state: dict, bucket):
    from torch.distributed.algorithms.ddp_comm_hooks.default_hooks import allreduce_hook

    state["calls"] += 1
    return allreduce_hook(None, bucket)


def gather_on_rank(rank: int, world_size: int, workdir: str, loss_name: str) -> None:
    """One step on this rank's shard; the gradients averaged over ranks as DDP does (by DDP itself for
    the DDP case: 4 rows = 2 mini-batches on rank 0, 1 on rank 1, one all-reduce each)."""
    inputs, labels = toy_batch()
    shard = torch.tensor_split(torch.arange(len(labels)), world_size)[rank]  # uneven: 4 and 3 rows
    model = toy_model()
    ddp = loss_name.endswith("DDP")
    state = {"calls": 0}
    if ddp:
        model = torch.nn.parallel.DistributedDataParallel(model)
        model.register_comm_hook(state, counting_allreduce)
    loss = LOSSES[loss_name](model, temperature=0.2, gather_across_devices=True)
    value = loss([{"sentence_embedding": inputs[shard]}], labels[shard])
    value.backward()
    grads = [p.grad for p in model.parameters()]
    if not ddp:
        for g in grads:
            dist.all_reduce(g)
            g /= world_size
    out = {
        "value": value.item(),
        "grads": [g.flatten().tolist() for g in grads],
        "allreduces": state["calls"],
    }
    (Path(workdir) / f"rank-{rank}.json").write_text(json.dumps(out))


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
@pytest.mark.parametrize("loss_name", sorted(LOSSES))
def test_gather_across_devices_equals_one_process(tmp_path, loss_name):
    run_on_ranks(gather_on_rank, WORLD_SIZE, tmp_path, loss_name)
    inputs, labels = toy_batch()
    model = toy_model()
    value = SupConLoss(model, temperature=0.2)([{"sentence_embedding": inputs}], labels)
    value.backward()
    for rank in range(WORLD_SIZE):
        out = json.loads((tmp_path / f"rank-{rank}.json").read_text())
        assert out["value"] == pytest.approx(value.item(), rel=1e-12)
        assert out["allreduces"] == (1 if loss_name.endswith("DDP") else 0)
        for got, param in zip(out["grads"], model.parameters(), strict=True):
            torch.testing.assert_close(torch.tensor(got, dtype=torch.float64), param.grad.flatten())
