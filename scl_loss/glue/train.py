"""One run on :class:`~scl_loss.integrations.transformers.SCLTrainer`: fine-tune with CE or CE+SCL,
validate after every epoch, score the epoch with the best validation accuracy on test."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from typing import Any

import torch
from datasets import Dataset
from torch import Tensor, nn
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    EarlyStoppingCallback,
    EvalPrediction,
    PrinterCallback,
    TrainerCallback,
    TrainerControl,
    TrainerState,
    TrainingArguments,
    set_seed,
)

from scl_loss.glue.arguments import RunArguments
from scl_loss.glue.tasks import get_task
from scl_loss.integrations.transformers import SCLTrainer, first_token_features

__all__ = ["BestEpoch", "encode", "first_token_embeddings", "load_model", "task_metrics", "train_and_score"]

METRICS = ("acc", "mcc", "f1")


def load_model(name_or_path: str, num_labels: int, dropout: float) -> nn.Module:
    """A sequence classifier with a fresh (or, for a fine-tuned checkpoint, its own) head;
    ``dropout`` sets every dropout probability the config knows (the paper: 0.1)."""
    config = AutoConfig.from_pretrained(name_or_path, num_labels=num_labels)
    for attr in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout"):
        if hasattr(config, attr):
            setattr(config, attr, dropout)
    return AutoModelForSequenceClassification.from_pretrained(name_or_path, config=config)


def encode(tokenizer: Any, data: Dataset, max_length: int) -> Dataset:
    """Tokenised ``[CLS] a [SEP]`` or the pair form, truncated to ``max_length``; ``label`` kept."""

    def tokenize(batch: dict[str, list[Any]]) -> Any:
        return tokenizer(batch["text_a"], batch.get("text_b"), truncation=True, max_length=max_length)

    texts = [name for name in data.column_names if name != "label"]
    return data.map(tokenize, batched=True, remove_columns=texts)


def task_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """``{"acc", "mcc", "f1"}``; F1 is the binary F1 of class 1 with two classes, else macro.

    Example:
        >>> task_metrics([0, 1, 1, 0], [0, 1, 0, 0])["acc"]
        0.75
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if len(labels) != len(predictions) or not len(labels):
        raise ValueError(
            f"labels and predictions must be non-empty, equally long; got {len(labels)}, {len(predictions)}"
        )
    binary = max(max(labels), max(predictions)) <= 1
    return {
        "acc": float(accuracy_score(labels, predictions)),
        "mcc": float(matthews_corrcoef(labels, predictions)),
        "f1": float(f1_score(labels, predictions, average="binary" if binary else "macro", zero_division=0)),
    }


def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
    logits = prediction.predictions
    logits = logits[0] if isinstance(logits, tuple) else logits
    return task_metrics(prediction.label_ids.tolist(), logits.argmax(-1).tolist())


class BestEpoch(TrainerCallback):
    """Keeps, in memory, the weights and metrics of the evaluation that ``metric_for_best_model``
    ranks best (the first of equals, as the Trainer's own ``best_metric``) and restores them at
    the end of training; also keeps the last logged training loss."""

    def __init__(self) -> None:
        self.weights: dict[str, Tensor] | None = None
        self.metrics: dict[str, float] = {}
        self.epoch = 0.0
        self.train_loss: float | None = None

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        metrics, model = kwargs["metrics"], kwargs["model"]
        value = metrics[f"eval_{args.metric_for_best_model}"]
        best = state.best_metric  # the Trainer updates it after this callback
        if best is None or (value > best if args.greater_is_better else value < best):
            self.weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.metrics, self.epoch = dict(metrics), float(state.epoch or 0.0)

    def on_log(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if "loss" in (kwargs.get("logs") or {}):
            self.train_loss = float(kwargs["logs"]["loss"])

    def on_train_end(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kwargs: Any
    ) -> None:
        if self.weights is None:
            raise ValueError("eval_strategy must evaluate during training (e.g. 'epoch') to select an epoch")
        kwargs["model"].load_state_dict(self.weights)


@torch.no_grad()
def first_token_embeddings(trainer: SCLTrainer, data: Dataset) -> Tensor:
    """Φ of every row of ``data`` (in order, gathered from every rank), on the CPU."""
    model = trainer.model.eval()
    parts = []
    for batch in trainer.get_test_dataloader(data):
        batch.pop("labels", None)
        phi = first_token_features(model(**batch, output_hidden_states=True))
        parts.append(trainer.accelerator.gather_for_metrics(phi).float().cpu())
    return torch.cat(parts)


def train_and_score(
    spec: dict[str, Any],
    args: RunArguments,
    tokenizer: Any,
    train: Dataset,
    validation: Dataset,
    test: Dataset,
) -> tuple[dict[str, Any], SCLTrainer]:
    """Train the run ``spec`` (its task, seed, loss, λ, τ) on the encoded datasets and score it on
    test: the journal's ``result``, and the trainer holding the selected model."""
    started = time.perf_counter()
    training = dataclasses.replace(args.training, seed=spec["seed"])
    set_seed(training.seed)  # the head's initialisation follows the run's seed
    ours = args.model
    model = load_model(ours.init_from or ours.model, get_task(spec["task"]).num_labels, ours.dropout)
    best = BestEpoch()
    callbacks: list[TrainerCallback] = [best]
    if ours.patience:
        callbacks.append(EarlyStoppingCallback(early_stopping_patience=ours.patience))
    trainer = SCLTrainer(
        model=model,
        args=training,
        train_dataset=train,
        eval_dataset=validation,
        processing_class=tokenizer,
        compute_metrics=compute_metrics,
        callbacks=callbacks,
        scl_lambda=spec["lambda"] or 0.0,  # 0: exactly cross-entropy (SCL is not computed)
        scl_tau=spec["tau"] or 1.0,
        scl_reduction=ours.scl_reduction,
        scl_micro_batch_size=ours.micro_batch_size,
        scl_gather_distributed=ours.gather_distributed,  # no effect in a single process
    )
    if training.disable_tqdm:
        trainer.remove_callback(PrinterCallback)
    trainer.train()
    scored, state = trainer.predict(test).metrics, trainer.state
    metrics = {
        **{f"val_{k}": best.metrics[f"eval_{k}"] for k in METRICS},
        **{f"test_{k}": scored[f"test_{k}"] for k in METRICS},
        "best_epoch": round(best.epoch, 4),
        "steps": state.global_step,
        "early_stopped": state.global_step < state.max_steps,
        "train_size": len(train),
        "train_loss_last_epoch": best.train_loss,
        "wall_s": round(time.perf_counter() - started, 3),
    }
    return metrics, trainer
