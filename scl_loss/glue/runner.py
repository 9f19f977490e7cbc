"""Resumable execution of a grid: this shard's unfinished runs, each appended to the journal
(docs/glue.md, "run": resume, shards, several GPUs)."""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from datasets import Dataset
from transformers import AutoTokenizer

from scl_loss.glue import journal
from scl_loss.glue.arguments import RunArguments
from scl_loss.glue.data import (
    TaskData,
    load_augmented,
    load_task_data,
    make_split,
    read_split,
    with_paraphrases,
)
from scl_loss.glue.grid import RUN_INFO, expand_grid, run_key
from scl_loss.glue.splits import ProtocolSplit
from scl_loss.glue.tasks import get_task
from scl_loss.glue.train import encode, first_token_embeddings, train_and_score

__all__ = ["Stats", "execute"]


class Stats(NamedTuple):
    planned: int
    skipped: int
    finished: int


class _Cache:
    """What the runs of a grid share, made once: the tokenizer, data, splits, encodings."""

    def __init__(self, args: RunArguments) -> None:
        self.args = args
        self.made: dict[Any, Any] = {}

    def get(self, key: Any, make: Callable[[], Any]) -> Any:
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    @property
    def tokenizer(self) -> Any:
        name = self.args.model.init_from or self.args.model.model
        return self.get("tokenizer", lambda: AutoTokenizer.from_pretrained(name))

    def encode(self, data: Dataset) -> Dataset:
        return encode(self.tokenizer, data, self.args.model.max_length)


def _rows(data: Dataset, rows: list[int], what: str) -> Dataset:
    bad = [r for r in rows if not 0 <= r < len(data)]
    if bad:
        raise ValueError(f"{what} indices {bad[:5]} are outside the file's {len(data)} rows")
    return data.select(rows)


def _train_rows(spec: dict[str, Any], split: ProtocolSplit, data: TaskData) -> list[int]:
    if data.train is None:
        raise ValueError(f"{data.task.display} has no training file (pass --train_file)")
    if spec["regime"] == "full":
        return list(range(len(data.train)))
    if spec["sample"] >= len(split.train_samples):
        raise ValueError(
            f"the split has {len(split.train_samples)} training samples, run needs #{spec['sample']}"
        )
    rows = split.train_samples[spec["sample"]]
    expected = spec["shots"] or spec["per_class"] * data.task.num_labels
    if len(rows) != expected:
        raise ValueError(
            f"training sample #{spec['sample']} of the split has {len(rows)} rows, the run asks for "
            f"{expected} (check --shots/--per_class against the --split file)"
        )
    return rows


def _run_one(spec: dict[str, Any], cache: _Cache, key: str) -> dict[str, Any]:
    args, task, shots = cache.args, get_task(spec["task"]), spec["shots"]
    data: TaskData = cache.get(task.name, lambda: load_task_data(task, args.data))
    if args.grid.split:
        split = cache.get((task.name, "split"), lambda: read_split(str(args.grid.split), task))
    else:
        split = cache.get((task.name, "split", shots), lambda: make_split(data, args.sample, shots))
    # The protocol's validation and test rows are the same for every run of a task.
    validation = cache.get(
        (task.name, "validation"), lambda: cache.encode(_rows(data.eval, split.validation, "validation"))
    )
    test = cache.get((task.name, "test"), lambda: cache.encode(_rows(data.eval, split.test, "test")))
    augmented = None
    if args.grid.augment:
        augmented = cache.get("augmented", lambda: load_augmented(str(args.grid.augment)))
    examples = with_paraphrases(data.train, _train_rows(spec, split, data), augmented)
    if spec["regime"] == "full" and augmented is None:  # so is the full training set
        train = cache.get((task.name, "train"), lambda: cache.encode(examples))
    else:
        train = cache.encode(examples)
    metrics, trainer = train_and_score(spec, args, cache.tokenizer, train, validation, test)
    record: dict[str, Any] = {
        "key": key,
        "spec": spec,
        "result": metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "device": str(args.training.device),
        "processes": args.training.world_size,
    }
    main = trainer.is_world_process_zero()
    if args.execution.save_model:
        folder = Path(args.execution.save_model) / f"{task.name}-{spec['loss']}-{key}"
        trainer.save_model(str(folder))  # on every process: FSDP/DeepSpeed gather the weights
        if main:
            (folder / RUN_INFO).write_text(
                json.dumps({"key": key, "spec": spec, "result": metrics}, indent=1)
            )
        record["model_dir"] = str(folder)
    if args.execution.save_embeddings:
        features = first_token_embeddings(trainer, test)  # on every process: gathered from every rank
        if main:
            import numpy as np

            target = Path(args.execution.save_embeddings) / f"{key}.npz"
            target.parent.mkdir(parents=True, exist_ok=True)
            np.savez_compressed(target, features=features.numpy(), labels=np.asarray(test["label"][:]))
            record["embeddings"] = str(target)
    return record


def execute(args: RunArguments) -> Stats:
    """Run this shard's unfinished runs, appending each finished one to the journal: a crash loses
    only the run in progress. Under torchrun every process reads the journal before the first run
    and no run can finish before every process has joined it, so all agree on the runs to do."""
    index, count = args.execution.shard_index_count
    if count > 1 and args.training.world_size > 1:
        raise ValueError(
            "shard must be 0/1 under torchrun/accelerate: every process trains every run together"
        )
    mine = expand_grid(args)[index::count]
    path = Path(args.execution.journal)
    done = journal.finished_keys(path)
    todo = [(key, spec) for key, spec in ((run_key(s), s) for s in mine) if key not in done]
    main = args.training.process_index == 0
    log = print if main else lambda _: None  # the main process alone reports
    skipped = len(mine) - len(todo)
    log(f"shard {index}/{count}: {len(mine)} runs, {skipped} already in {path}, {len(todo)} to do")
    todo = todo[: args.execution.max_runs]
    cache = _Cache(args)
    for finished, (key, spec) in enumerate(todo, start=1):
        record = _run_one(spec, cache, key)
        if main:
            journal.append_record(path, record)
        result, size = record["result"], spec["shots"] or spec["per_class"] or "all"
        log(
            f"[{finished}/{len(todo)}] {spec['task']} {spec['regime']} N={size} #{spec['sample']} "
            f"{spec['loss']} λ={spec['lambda']} τ={spec['tau']}: val {result['val_acc']:.4f} "
            f"test {result['test_acc']:.4f} ({result['wall_s']:.1f} s)"
        )
    return Stats(len(mine), skipped, len(todo))
