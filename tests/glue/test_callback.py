"""BestEpoch: the best validation evaluation's weights are the ones kept and scored."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    EarlyStoppingCallback,
    TrainerCallback,
)

from scl_loss.glue.arguments import GlueTrainingArguments
from scl_loss.glue.data import read_file
from scl_loss.glue.tasks import get_task
from scl_loss.glue.train import BestEpoch, encode
from scl_loss.integrations.transformers import SCLTrainer


class Snapshots(TrainerCallback):
    """The weights at every evaluation."""

    def __init__(self):
        self.weights = []

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        self.weights.append({k: v.detach().clone() for k, v in model.state_dict().items()})


def _trainer(folder, data_dir, tmp_path, accuracies, callbacks, **options):
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    data = encode(tokenizer, read_file(data_dir / "train.tsv", get_task("sst2")).select(range(16)), 32)
    scores = iter(accuracies)
    args = GlueTrainingArguments(
        output_dir=str(tmp_path),
        learning_rate=1e-2,
        per_device_train_batch_size=8,
        disable_tqdm=True,
        dataloader_pin_memory=False,  # no GPU here: pinning would only warn
        **options,
    )
    return SCLTrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        processing_class=tokenizer,
        compute_metrics=lambda _: {"acc": next(scores)},  # a scripted validation accuracy per epoch
        callbacks=callbacks,
        scl_lambda=0.5,
        scl_tau=0.3,
    )


def test_the_first_best_epoch_is_restored_and_training_stops_after_patience(
    tiny_model_dir, sst2_like, tmp_path
):
    best, snapshots = BestEpoch(), Snapshots()
    callbacks = [best, snapshots, EarlyStoppingCallback(early_stopping_patience=2)]
    trainer = _trainer(
        tiny_model_dir, sst2_like, tmp_path, [0.5, 0.8, 0.8, 0.6, 0.9], callbacks, num_train_epochs=5
    )
    trainer.train()
    # 0.8 at epoch 2; the equal 0.8 of epoch 3 and the 0.6 of epoch 4 are two without improvement: stop
    assert len(snapshots.weights) == 4
    assert trainer.state.global_step == 8
    assert (best.epoch, best.metrics["eval_acc"]) == (2.0, 0.8)
    assert trainer.state.best_metric == 0.8  # the Trainer's own bookkeeping agrees
    restored = trainer.model.state_dict()
    for name, value in snapshots.weights[1].items():
        torch.testing.assert_close(restored[name], value, rtol=0, atol=0)
    assert any(not torch.equal(restored[n], v) for n, v in snapshots.weights[3].items())
    assert best.train_loss is not None
    assert best.train_loss > 0


def test_no_evaluation_is_an_error(tiny_model_dir, sst2_like, tmp_path):
    trainer = _trainer(
        tiny_model_dir, sst2_like, tmp_path, [], [BestEpoch()], num_train_epochs=1, eval_strategy="no"
    )
    with pytest.raises(ValueError, match="eval_strategy must evaluate"):
        trainer.train()
