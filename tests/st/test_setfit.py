"""The SetFit path: scl_loss.integrations.setfit.SupConLoss against setfit.losses.SupConLoss, and the
Trainer that gives it SetFit's (sentence, label) layout and the GROUP_BY_LABEL sampler."""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("setfit", reason="needs the [st] extra: pip install -e '.[st]'")

import setfit
from datasets import Dataset
from setfit import SetFitModel, TrainingArguments
from setfit.losses import SupConLoss as SetFitSupConLoss
from transformers import TrainerCallback

from scl_loss.integrations.setfit import SupConLoss, Trainer
from scl_loss.reference import supcon_loss_loop
from tests.st.conftest import CLASSES, TEXTS, param_grads


@pytest.mark.parametrize(("temperature", "base_temperature"), [(0.07, 0.07), (0.3, 0.07), (0.1, 0.5)])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_equals_setfit_when_every_label_has_a_positive(
    minilm64, temperature, base_temperature, contrast_mode
):
    minilm64.eval()
    features = [minilm64.preprocess(TEXTS)]
    labels = torch.tensor(CLASSES)
    kwargs = {
        "temperature": temperature,
        "contrast_mode": contrast_mode,
        "base_temperature": base_temperature,
    }
    ours = SupConLoss(minilm64, **kwargs)(features, labels)
    theirs = SetFitSupConLoss(minilm64, **kwargs)(features, labels)
    torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=0)
    for got, want in zip(param_grads(ours, minilm64), param_grads(theirs, minilm64), strict=True):
        torch.testing.assert_close(got, want, rtol=1e-7, atol=1e-12)


def test_singleton_label_nan_in_setfit_finite_here(minilm64):
    """Label 2 appears once: SetFit divides its anchor's sum by a zero positive count (NaN, and the
    NaN reaches every gradient); here it is left out as an anchor and the rest is eq. 3."""
    minilm64.eval()
    features = [minilm64.preprocess(TEXTS[:5])]
    labels = torch.tensor([0, 0, 1, 1, 2])
    theirs = SetFitSupConLoss(minilm64)(features, labels)
    ours = SupConLoss(minilm64)(features, labels)
    assert torch.isnan(theirs)
    assert all(torch.isnan(g).any() for g in param_grads(theirs, minilm64) if g.abs().sum() != 0)
    assert torch.isfinite(ours)
    assert all(torch.isfinite(g).all() for g in param_grads(ours, minilm64))
    emb = minilm64(features[0])["sentence_embedding"]
    per_anchor = supcon_loss_loop(emb, labels, temperature=0.07, reduction="none")
    torch.testing.assert_close(ours, per_anchor[:4].mean(), rtol=1e-10, atol=0)  # τ / τ_b = 1


def test_arguments_and_config(minilm):
    loss = SupConLoss(minilm)
    assert (loss.temperature, loss.contrast_mode, loss.base_temperature) == (0.07, "all", 0.07)  # SetFit's
    assert loss.get_config_dict() == {
        "temperature": 0.07,
        "gather_across_devices": False,
        "contrast_mode": "all",
        "base_temperature": 0.07,
    }
    with pytest.raises(ValueError, match="contrast_mode"):
        SupConLoss(minilm, contrast_mode="some")
    with pytest.raises(ValueError, match="base_temperature"):
        SupConLoss(minilm, base_temperature=-1.0)
    two_columns = [minilm.preprocess(TEXTS[:4])] * 2
    with pytest.raises(ValueError, match="contrast_mode='one'"):
        SupConLoss(minilm, contrast_mode="one")(two_columns, torch.tensor([0, 0, 1, 1]))


class SamplerRecorder(TrainerCallback):
    """The embedding phase's batch sampler and loss, as SetFit hands them to its callbacks."""

    sampler = None

    def on_train_begin(self, args, state, control, **kwargs):
        self.sampler = kwargs["st_args"].batch_sampler


QUIET = {"report_to": "none", "save_strategy": "no", "show_progress_bar": False}


def setfit_model(path: str) -> SetFitModel:
    return SetFitModel.from_pretrained(path)


def few_shot() -> Dataset:
    return Dataset.from_dict({"text": TEXTS[:6], "label": CLASSES[:6]})


def test_setfit_trainer_alone_gives_pairs_to_other_loss_classes(minilm_path):
    """Why :class:`Trainer` exists: SetFit picks the layout by ``args.loss is SupConLoss``; any other
    class gets sentence pairs with a 0/1 similarity label, from which the classes are lost."""
    args = TrainingArguments(loss=SupConLoss, num_iterations=1)
    trainer = setfit.Trainer(model=setfit_model(minilm_path), args=args, train_dataset=few_shot())
    dataset, _ = trainer.get_dataset(TEXTS[:6], CLASSES[:6], args=args)
    assert set(dataset.column_names) == {"sentence_1", "sentence_2", "label"}


def test_trainer_layout_loss_and_sampler(minilm_path):
    model = setfit_model(minilm_path)
    args = TrainingArguments(
        loss=SupConLoss, batch_size=4, num_epochs=2, report_to="none", save_strategy="no"
    )
    recorder = SamplerRecorder()
    trainer = Trainer(model=model, args=args, train_dataset=few_shot(), callbacks=[recorder])
    dataset, loss = trainer.get_dataset(TEXTS[:6], CLASSES[:6], args=args)
    assert dataset.column_names == ["sentence", "label"]
    assert dataset["label"] == CLASSES[:6]
    assert isinstance(loss, SupConLoss)
    assert loss.model is model.model_body
    before = [p.detach().clone() for p in model.model_body.parameters()]
    trainer.train()
    assert recorder.sampler == "group_by_label"
    assert trainer.st_trainer.args.batch_sampler == "batch_sampler"  # restored for a later call
    assert any(not torch.equal(a, b) for a, b in zip(before, model.model_body.parameters(), strict=True))
    assert model.predict(TEXTS[6:8]).shape == (2,)


def test_trainer_leaves_other_losses_to_setfit(minilm_path):
    recorder = SamplerRecorder()
    args = TrainingArguments(num_iterations=1, batch_size=4, report_to="none", save_strategy="no")
    trainer = Trainer(
        model=setfit_model(minilm_path), args=args, train_dataset=few_shot(), callbacks=[recorder]
    )
    dataset, loss = trainer.get_dataset(TEXTS[:6], CLASSES[:6], args=args)
    assert set(dataset.column_names) == {"sentence_1", "sentence_2", "label"}
    assert type(loss).__name__ == "CosineSimilarityLoss"
    trainer.train()
    assert recorder.sampler == "batch_sampler"


class HotSupConLoss(SupConLoss):
    """Other hyper-parameters: SetFit builds ``args.loss(model=body)``, so a subclass sets them."""

    def __init__(self, model):
        super().__init__(model, temperature=0.5, base_temperature=0.5)


def test_trainer_builds_a_subclass_with_its_settings(minilm_path):
    args = TrainingArguments(loss=HotSupConLoss)
    trainer = Trainer(model=setfit_model(minilm_path), args=args, train_dataset=few_shot())
    _, loss = trainer.get_dataset(TEXTS[:6], CLASSES[:6], args=args)
    assert isinstance(loss, HotSupConLoss)
    assert loss.temperature == 0.5
