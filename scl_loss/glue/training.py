"""One fine-tuning run: Adam, batch 16, CE or CE+SCL, model selection by validation accuracy."""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import Tensor, nn

from scl_loss.glue.metrics import task_metrics
from scl_loss.glue.modeling import Encoded, batches, predict
from scl_loss.glue.parallel import World, gather_rows, share
from scl_loss.integrations.transformers import first_token_features
from scl_loss.losses import SCLCrossEntropy

__all__ = ["RunOutcome", "TrainSettings", "make_criterion", "seed_everything", "train_and_evaluate"]


@dataclass(frozen=True)
class TrainSettings:
    """Optimisation settings; the defaults are the paper's where it states them.

    Attributes:
        lr: Adam learning rate (paper: 1e-5).
        batch_size: training batch size (paper: 16); SCL contrasts the examples of one batch.
        epochs: maximum number of epochs.
        warmup_ratio: fraction of the steps with a linear warm-up from 0; constant lr after it.
        max_length: inputs are truncated to this many tokens.
        patience: stop after this many evaluations without a better validation accuracy
            (``None``: run all epochs). The model with the best validation accuracy is kept either way.
        evals_per_epoch: validation evaluations per epoch.
        eval_batch_size: batch size of the (no-grad) evaluation passes.
        dropout: dropout probability of the encoder and head (paper: 0.1).
        scl_reduction: how SCL sums over anchors, ``"mean"`` or ``"sum"``.
    """

    lr: float = 1e-5
    batch_size: int = 16
    epochs: int = 10
    warmup_ratio: float = 0.0
    max_length: int = 128
    patience: int | None = 3
    evals_per_epoch: int = 1
    eval_batch_size: int = 64
    dropout: float = 0.1
    scl_reduction: str = "mean"

    def __post_init__(self) -> None:
        checks = {
            "lr": self.lr > 0 and math.isfinite(self.lr),
            "batch_size": self.batch_size >= 1,
            "epochs": self.epochs >= 1,
            "warmup_ratio": 0 <= self.warmup_ratio < 1,
            "max_length": self.max_length >= 8,
            "patience": self.patience is None or self.patience >= 1,
            "evals_per_epoch": self.evals_per_epoch >= 1,
            "eval_batch_size": self.eval_batch_size >= 1,
            "dropout": 0 <= self.dropout < 1,
            "scl_reduction": self.scl_reduction in ("mean", "sum"),
        }
        for name, ok in checks.items():
            if not ok:
                raise ValueError(f"{name} is out of range: {getattr(self, name)!r}")

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class RunOutcome:
    """Metrics of the selected model, plus what callers may want to keep."""

    metrics: dict[str, Any]
    model: nn.Module | None  # the selected model, when asked for (``keep_model``)
    test_features: Tensor | None


def seed_everything(seed: int) -> None:
    """Seed Python and torch (CPU and CUDA) so a run is reproducible."""
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np

        np.random.seed(seed % 2**32)
    except ImportError:  # pragma: no cover - numpy comes with scikit-learn
        pass


def make_criterion(
    lambda_: float | None, tau: float | None, scl_reduction: str, *, gather_distributed: bool = False
) -> SCLCrossEntropy:
    """``SCLCrossEntropy``; ``lambda_`` of ``None``/0 gives exactly cross-entropy (SCL not computed).

    ``gather_distributed``: CE and SCL over the global batch of all ranks (data-parallel runs).
    """
    if not lambda_:
        return SCLCrossEntropy(0.0, 1.0, gather_distributed=gather_distributed)
    if tau is None:
        raise ValueError("tau must be given when lambda_ > 0")
    return SCLCrossEntropy(lambda_, tau, scl_reduction=scl_reduction, gather_distributed=gather_distributed)


def _metrics(prefix: str, logits: Tensor, labels: list[int]) -> dict[str, float]:
    found = task_metrics(labels, logits.argmax(dim=-1).tolist())
    return {f"{prefix}_{k}": v for k, v in found.items()}


def _train_batches(
    tokenizer: Any,
    train: Encoded,
    order: list[int],
    batch_size: int,
    device: torch.device,
    world: World | None,
) -> Iterator[tuple[dict[str, Tensor], int]]:
    """(model inputs, rows to keep) per global batch of ``order``: all of it, or this rank's share.

    A rank whose share is empty (a last batch smaller than the world) runs the model on the
    batch's first row and keeps none of it: the loss still sees ``[0, D]`` features, and every
    parameter gets a (zero) gradient, so DDP's gradient all-reduce lines up on all ranks.
    """
    for start in range(0, len(order), batch_size):
        rows = order[start : start + batch_size]
        mine = rows if world is None else share(rows, world)
        _, inputs = next(batches(tokenizer, train, mine or rows[:1], batch_size, device))
        yield inputs, len(mine)


def _batch_loss(model: nn.Module, inputs: dict[str, Tensor], keep: int, criterion: nn.Module) -> Tensor:
    """``criterion(logits, Φ, labels)`` on the first ``keep`` rows (see ``scl_compute_loss``)."""
    labels = inputs.pop("labels")
    outputs = model(**inputs, output_hidden_states=True)
    return criterion(outputs.logits[:keep], first_token_features(outputs)[:keep], labels[:keep])


def _predict(
    model: nn.Module,
    tokenizer: Any,
    data: Encoded,
    settings: TrainSettings,
    device: torch.device,
    world: World | None,
    features: bool = False,
) -> tuple[Tensor, Tensor | None]:
    """``predict`` on the whole of ``data``; data-parallel: each rank a strided shard, then gathered."""
    if world is None:
        return predict(model, tokenizer, data, settings.eval_batch_size, device, features=features)
    rows = list(range(world.rank, len(data), world.size))
    logits = phi = None
    if rows:
        shard = Encoded([data.features[i] for i in rows], [data.labels[i] for i in rows])
        logits, phi = predict(model, tokenizer, shard, settings.eval_batch_size, device, features=features)
    gathered = gather_rows(logits, rows, len(data), world)
    assert gathered is not None
    return gathered, gather_rows(phi, rows, len(data), world) if features else None


def train_and_evaluate(
    *,
    make_model: Callable[[], nn.Module],
    tokenizer: Any,
    train: Encoded,
    validation: Encoded,
    test: Encoded,
    lambda_: float | None,
    tau: float | None,
    settings: TrainSettings,
    seed: int,
    device: torch.device,
    keep_model: bool = False,
    test_features: bool = False,
    progress: bool = False,
    world: World | None = None,
) -> RunOutcome:
    """Fine-tune, select the epoch with the best validation accuracy, score it on test.

    ``world``: train data-parallel across the ranks of the initialised process group
    (``parallel.py``); every rank must make the same call. ``None``: one process.
    """
    started = time.perf_counter()
    seed_everything(seed)  # the same seed on every rank: same initial model, same shuffling
    net = make_model().to(device)
    model: nn.Module = net
    if world is not None:
        from torch.nn.parallel import DistributedDataParallel

        # Evaluation runs on ``net`` itself: no DDP forward, so the uneven shards need no collective.
        model = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None)
    criterion = make_criterion(lambda_, tau, settings.scl_reduction, gather_distributed=world is not None).to(
        device
    )
    optimizer = torch.optim.Adam(net.parameters(), lr=settings.lr)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    total_steps = steps_per_epoch * settings.epochs
    warmup = int(settings.warmup_ratio * total_steps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / (warmup + 1)))
    shuffler = random.Random(f"shuffle:{seed}")
    eval_points = {
        round(steps_per_epoch * (j + 1) / settings.evals_per_epoch) for j in range(settings.evals_per_epoch)
    }

    best_acc, best_state, best_epoch, best_val_logits = -1.0, None, 0.0, None
    since_best, step, losses = 0, 0, []
    bar = None
    if progress and (world is None or world.is_main):
        from tqdm.auto import tqdm

        bar = tqdm(total=total_steps, desc="train", leave=False, unit="step")
    stop = False
    for epoch in range(settings.epochs):
        order = list(range(len(train)))
        shuffler.shuffle(order)
        model.train()
        for in_epoch, (inputs, keep) in enumerate(
            _train_batches(tokenizer, train, order, settings.batch_size, device, world), 1
        ):
            loss = _batch_loss(model, inputs, keep, criterion)  # data-parallel: the global batch's loss
            if not torch.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss {loss.item()} at step {step}")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            step += 1
            losses.append(loss.item())
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.4f}", best_val=f"{best_acc:.4f}")
            if in_epoch not in eval_points:
                continue
            logits, _ = _predict(net, tokenizer, validation, settings, device, world)
            acc = _metrics("val", logits, validation.labels)["val_acc"]
            if acc > best_acc:
                best_acc, best_epoch, since_best = acc, epoch + in_epoch / steps_per_epoch, 0
                best_val_logits = logits
                best_state = {k: v.detach().to("cpu", copy=True) for k, v in net.state_dict().items()}
            else:
                since_best += 1
                if settings.patience is not None and since_best >= settings.patience:
                    stop = True
                    break
        if stop:
            break
    if bar is not None:
        bar.close()

    assert best_state is not None
    assert best_val_logits is not None
    net.load_state_dict(best_state)
    val_logits = best_val_logits
    test_logits, phi = _predict(net, tokenizer, test, settings, device, world, features=test_features)
    metrics: dict[str, Any] = {
        **_metrics("val", val_logits, validation.labels),
        **_metrics("test", test_logits, test.labels),
        "best_epoch": round(best_epoch, 4),
        "steps": step,
        "early_stopped": stop,
        "train_size": len(train),
        "train_loss_last_epoch": sum(losses[-steps_per_epoch:]) / max(1, len(losses[-steps_per_epoch:])),
        "wall_s": round(time.perf_counter() - started, 3),
    }
    return RunOutcome(metrics, net if keep_model else None, phi)
