"""The grid of runs: tasks × sizes × (CE + λ × τ) × samples or seeds, one JSON-able *spec* per run,
keyed by its hash; nothing in a spec depends on where files lie (docs/glue.md, "Keys that travel")."""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import itertools
import json
from pathlib import Path
from typing import Any

from scl_loss.glue.arguments import RunArguments
from scl_loss.glue.data import describe, load_augmented
from scl_loss.glue.tasks import get_task

__all__ = ["RUN_INFO", "expand_grid", "model_id", "run_key"]

RUN_INFO = "scl_glue_run.json"  # written next to a saved model: the spec that produced it
# TrainingArguments fields that change what a run computes; they are part of its key.
TRAINING_FIELDS = (
    *("learning_rate", "lr_scheduler_type", "warmup_steps", "max_steps", "num_train_epochs"),
    *("optim", "weight_decay", "adam_beta1", "adam_beta2", "adam_epsilon", "max_grad_norm"),
    *("per_device_train_batch_size", "gradient_accumulation_steps", "label_smoothing_factor"),
    *("bf16", "fp16", "eval_strategy", "eval_steps", "metric_for_best_model"),
)


def run_key(spec: dict[str, Any]) -> str:
    """Short stable hash of a run spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@functools.cache
def model_id(name_or_path: str) -> str:
    """A hub name as it is; a local folder as ``sha256:`` + a hash of its config, weights and tokenizer files.

    Example:
        >>> model_id("roberta-large")
        'roberta-large'
    """
    folder = Path(name_or_path)
    if not folder.is_dir():
        return name_or_path
    digest = hashlib.sha256()
    files = [p for p in folder.iterdir() if p.is_file() and p.name != RUN_INFO]
    for path in sorted(p for p in files if p.suffix in (".json", ".safetensors", ".bin", ".txt", ".model")):
        digest.update(path.name.encode())
        with path.open("rb") as handle:
            for block in iter(lambda: handle.read(1 << 24), b""):
                digest.update(block)
    return f"sha256:{digest.hexdigest()[:16]}"


def init_info(init_from: str | None) -> dict[str, Any] | None:
    """The starting checkpoint: its hash, and what it was trained with (its ``scl_glue_run.json``)."""
    if init_from is None:
        return None
    info: dict[str, Any] = {"model": model_id(init_from)}
    info_path = Path(init_from) / RUN_INFO
    if info_path.is_file():
        spec = json.loads(info_path.read_text(encoding="utf-8"))["spec"]
        info.update(task=spec["task"], loss=spec["loss"], **{"lambda": spec["lambda"], "tau": spec["tau"]})
    return info


def augment_info(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    rows = load_augmented(path)
    temperatures = set(rows.unique("temperature")) if "temperature" in rows.column_names else set()
    return {"file": Path(path).name, "temperature": temperatures.pop() if len(temperatures) == 1 else None}


def settings(args: RunArguments) -> dict[str, Any]:
    """The training settings of every run (part of its key)."""
    found = {name: getattr(args.training, name) for name in TRAINING_FIELDS}
    found = {k: getattr(v, "value", v) for k, v in found.items()}  # enums as their strings
    ours = {k: v for k, v in dataclasses.asdict(args.model).items() if k not in ("model", "init_from")}
    return {**found, **ours, "world_size": args.training.world_size}


def expand_grid(args: RunArguments) -> list[dict[str, Any]]:
    """Every run spec of the grid, in a stable order (shards take every n-th)."""
    grid, sample = args.grid, args.sample
    losses: list[tuple[str, float | None, float | None]] = [("ce", None, None)] if grid.ce else []
    if not grid.ce_only:
        losses += [("scl", lam, tau) for lam in grid.lambdas for tau in grid.taus]
    if not losses:
        raise ValueError("the grid has no loss: give lambdas and taus, or keep CE")
    full = sample.regime == "full"
    if full or sample.per_class is not None:
        sizes: list[tuple[int | None, int | None]] = [(None, None if full else sample.per_class)]
    else:
        sizes = [(n, None) for n in sample.shots]
    common = {
        "regime": sample.regime,
        "model": model_id(args.model.model),
        "split_seed": sample.split_seed,
        "split_file": Path(grid.split).name if grid.split else None,
        "validation_size": sample.validation_size,
        "init": init_info(args.model.init_from),
        "augment": augment_info(grid.augment),
        "settings": settings(args),
    }
    tasks, repeats = map(get_task, grid.tasks), range(grid.seeds if full else sample.samples)
    specs = []
    for task, (shots, per_class), (loss, lam, tau), k in itertools.product(tasks, sizes, losses, repeats):
        run = {"task": task.name, "data": describe(args.data, task), "shots": shots, "per_class": per_class}
        run |= {"sample": k, "seed": args.training.seed + k, "loss": loss, "lambda": lam, "tau": tau}
        specs.append({**common, **run})
    return specs
