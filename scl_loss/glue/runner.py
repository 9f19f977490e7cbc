"""Resumable execution of a grid: this shard's unfinished runs, each appended to the journal."""

from __future__ import annotations

import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from scl_loss.glue import journal
from scl_loss.glue.data import (
    TaskData,
    load_augmented,
    load_task_data,
    make_split,
    read_split,
    with_paraphrases,
)
from scl_loss.glue.grid import RUN_INFO, GridConfig, expand_grid, run_key
from scl_loss.glue.loaders import Example
from scl_loss.glue.modeling import Encoded, encode, load_model, load_tokenizer
from scl_loss.glue.parallel import World
from scl_loss.glue.splits import ProtocolSplit
from scl_loss.glue.tasks import TaskSpec, get_task
from scl_loss.glue.training import RunOutcome, train_and_evaluate

__all__ = ["ExecuteOptions", "default_device", "execute", "parse_shard"]


def parse_shard(text: str | None) -> tuple[int, int]:
    """``"i/n"`` → (i, n) with 0 <= i < n; ``None`` → from torchrun's RANK/WORLD_SIZE, else (0, 1)."""
    if text is None:
        return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    try:
        i, n = (int(x) for x in text.split("/"))
    except ValueError as err:
        raise ValueError(f"shard must look like i/n, got {text!r}") from err
    if not 0 <= i < n:
        raise ValueError(f"shard must satisfy 0 <= i < n, got {text!r}")
    return i, n


def default_device() -> torch.device:
    if torch.cuda.is_available():  # under torchrun, one GPU per local rank (shared when there are fewer)
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)) % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class ExecuteOptions:
    journal: Path
    shard: tuple[int, int] = (0, 1)
    device: torch.device = field(default_factory=default_device)
    max_runs: int | None = None
    save_model: str | None = None
    save_embeddings: str | None = None
    progress: bool = True
    # Data-parallel: every rank runs every run, each on its share of each batch; rank 0 writes.
    world: World | None = None

    @property
    def is_main(self) -> bool:
        return self.world is None or self.world.is_main


class _Cache:
    """Per-process caches so data, splits, tokenizers and encodings are built once per grid."""

    def __init__(self, config: GridConfig) -> None:
        self.config = config
        self.data: dict[str, TaskData] = {}
        self.splits: dict[tuple[str, Any, Any], ProtocolSplit] = {}
        self.tokenizer: Any = None
        self.encoded: dict[tuple[str, str], Encoded] = {}
        self.augmented = load_augmented(config.augment) if config.augment else None

    def task_data(self, task: TaskSpec) -> TaskData:
        if task.name not in self.data:
            self.data[task.name] = load_task_data(task, self.config.source)
        return self.data[task.name]

    def split(self, spec: dict[str, Any]) -> ProtocolSplit:
        key = (spec["task"], spec["shots"], spec["per_class"])
        if key not in self.splits:
            task = get_task(spec["task"])
            c = self.config
            if c.split_file:
                self.splits[key] = read_split(c.split_file, task)
            else:
                fewshot = c.regime == "fewshot"
                self.splits[key] = make_split(
                    self.task_data(task),
                    c.split_seed,
                    validation_size=c.validation_size,
                    shots=spec["shots"] if fewshot else None,
                    per_class=spec["per_class"] if fewshot else None,
                    samples=c.samples if fewshot else 0,
                )
        return self.splits[key]

    def get_tokenizer(self) -> Any:
        if self.tokenizer is None:
            self.tokenizer = load_tokenizer(self.config.init_from or self.config.model)
        return self.tokenizer

    def encode(self, name: str, examples: list[Example]) -> Encoded:
        if name not in self.encoded:
            self.encoded[name] = encode(self.get_tokenizer(), examples, self.config.settings.max_length)
        return self.encoded[name]


def _pick(examples: list[Example], rows: list[int], what: str) -> list[Example]:
    bad = [r for r in rows if not 0 <= r < len(examples)]
    if bad:
        raise ValueError(f"{what} indices {bad[:5]} are outside the file's {len(examples)} rows")
    return [examples[r] for r in rows]


def _run_one(spec: dict[str, Any], cache: _Cache, options: ExecuteOptions, key: str) -> dict[str, Any]:
    task = get_task(spec["task"])
    data = cache.task_data(task)
    split = cache.split(spec)
    validation = cache.encode(f"{task.name}/validation", _pick(data.eval, split.validation, "validation"))
    test = cache.encode(f"{task.name}/test", _pick(data.eval, split.test, "test"))
    if data.train is None:
        raise ValueError(f"{task.display} has no training file (pass --train-file)")
    if spec["regime"] == "full":
        if data.train_from_eval:
            raise ValueError(
                "--train-from-eval is for few-shot runs (the rest of a validation file is small)"
            )
        rows = list(range(len(data.train)))
    else:
        if spec["sample"] >= len(split.train_samples):
            raise ValueError(
                f"the split has {len(split.train_samples)} training samples, run needs #{spec['sample']}"
            )
        rows = split.train_samples[spec["sample"]]
        expected = spec["shots"] or spec["per_class"] * task.num_labels
        if len(rows) != expected:
            raise ValueError(
                f"training sample #{spec['sample']} of the split has {len(rows)} rows, the run asks for "
                f"{expected} (check --shots/--per-class against the --split file)"
            )
    train_examples = with_paraphrases(data.train, rows, cache.augmented)
    train = (
        cache.encode(f"{task.name}/train-full", train_examples)
        if spec["regime"] == "full" and not cache.augmented
        else encode(cache.get_tokenizer(), train_examples, cache.config.settings.max_length)
    )
    config = cache.config
    start_from = config.init_from or config.model

    def make_model() -> torch.nn.Module:
        return load_model(start_from, task.num_labels, config.settings.dropout)

    outcome: RunOutcome = train_and_evaluate(
        make_model=make_model,
        tokenizer=cache.get_tokenizer(),
        train=train,
        validation=validation,
        test=test,
        lambda_=spec["lambda"],
        tau=spec["tau"],
        settings=config.settings,
        seed=spec["seed"],
        device=options.device,
        keep_model=options.save_model is not None,
        test_features=options.save_embeddings is not None,
        progress=options.progress,
        world=options.world,
    )
    record: dict[str, Any] = {
        "key": key,
        "spec": spec,
        "result": outcome.metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "device": str(options.device),
    }
    if options.world is not None:
        record["processes"] = options.world.size
    if not options.is_main:  # data-parallel: rank 0 alone saves (execute() drops this record)
        return record
    if options.save_model and outcome.model is not None:
        folder = Path(options.save_model) / f"{task.name}-{spec['loss']}-{key}"
        outcome.model.save_pretrained(folder)
        cache.get_tokenizer().save_pretrained(folder)
        (folder / RUN_INFO).write_text(
            json.dumps({"key": key, "spec": spec, "result": outcome.metrics}, indent=1)
        )
        record["model_dir"] = str(folder)
    if options.save_embeddings and outcome.test_features is not None:
        import numpy as np

        target = Path(options.save_embeddings) / f"{key}.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(target, features=outcome.test_features.numpy(), labels=np.asarray(test.labels))
        record["embeddings"] = str(target)
    return record


def execute(
    config: GridConfig,
    options: ExecuteOptions,
    *,
    log: Callable[[str], None] = print,
    run_one: Callable[[dict[str, Any], _Cache, ExecuteOptions, str], dict[str, Any]] | None = None,
) -> dict[str, int]:
    """Run this shard's unfinished runs, appending each finished one to the journal.

    Returns counts ``{"planned", "skipped", "finished"}``. A ``KeyboardInterrupt`` or crash loses
    only the run in progress; re-running the same command resumes. With ``options.world``
    (data-parallel) there is no sharding: every rank runs the same runs and rank 0 alone logs
    and writes the journal.
    """
    specs = expand_grid(config)
    index, count = options.shard
    if options.world is not None and count != 1:
        raise ValueError("data-parallel runs are not sharded: every rank runs every run")
    mine = [s for i, s in enumerate(specs) if i % count == index]
    done = journal.finished_keys(options.journal)
    if options.world is not None:  # rank 0's journal decides: other ranks may not see the file
        import torch.distributed as dist

        shared = [done]
        dist.broadcast_object_list(shared, src=0)
        done = shared[0]
    if not options.is_main:
        log = _silent
    todo = [(run_key(s), s) for s in mine]
    todo = [(k, s) for k, s in todo if k not in done]
    stats = {"planned": len(mine), "skipped": len(mine) - len(todo), "finished": 0}
    log(
        f"shard {index}/{count}: {len(mine)} runs, {stats['skipped']} already in {options.journal}, "
        f"{len(todo)} to do"
    )
    cache = _Cache(config)
    run_one = run_one or _run_one
    for key, spec in _limited(todo, options.max_runs):
        record = run_one(spec, cache, options, key)
        if options.is_main:
            journal.append_record(options.journal, record)
        stats["finished"] += 1
        result = record["result"]
        size = spec["shots"] or spec["per_class"] or "all"
        log(
            f"[{stats['finished']}/{len(todo)}] {spec['task']} {spec['regime']} N={size} #{spec['sample']} "
            f"{spec['loss']} λ={spec['lambda']} τ={spec['tau']}: val {result['val_acc']:.4f} "
            f"test {result['test_acc']:.4f} ({result['wall_s']:.1f} s)"
        )
    return stats


def _limited(
    items: list[tuple[str, dict[str, Any]]], limit: int | None
) -> Iterator[tuple[str, dict[str, Any]]]:
    yield from items if limit is None else items[:limit]


def _silent(_: str) -> None:
    pass
