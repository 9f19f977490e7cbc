"""Resumable execution of a grid: this shard's unfinished runs, each appended to the journal.

Under torchrun or ``accelerate launch`` every process runs every run (the Trainer trains each
one data-parallel) and the main process alone writes; ``--shard i/n`` splits a grid between
independent processes instead. Every process reads the journal before the first run, and no
run can finish before every process has joined it, so all agree on the runs to do.
"""

from __future__ import annotations

import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

from datasets import Dataset

from scl_loss.glue import journal
from scl_loss.glue.data import (
    TaskData,
    load_augmented,
    load_task_data,
    make_split,
    read_split,
    with_paraphrases,
)
from scl_loss.glue.grid import RUN_INFO, RunArguments, expand_grid, run_key
from scl_loss.glue.splits import ProtocolSplit
from scl_loss.glue.tasks import get_task
from scl_loss.glue.train import encode, load_tokenizer, train_and_score

__all__ = ["Stats", "execute"]


class Stats(NamedTuple):
    planned: int
    skipped: int
    finished: int


class _Cache:
    """Data, splits, the tokenizer and encodings, built once per grid."""

    def __init__(self, args: RunArguments) -> None:
        self.args = args
        self.data: dict[str, TaskData] = {}
        self.splits: dict[tuple[str, int | None], ProtocolSplit] = {}
        self.encoded: dict[str, Dataset] = {}
        self.tokenizer = load_tokenizer(args.model.init_from or args.model.model)
        self.augmented = load_augmented(args.grid.augment) if args.grid.augment else None

    def task_data(self, name: str) -> TaskData:
        if name not in self.data:
            self.data[name] = load_task_data(get_task(name), self.args.data)
        return self.data[name]

    def split(self, spec: dict[str, Any]) -> ProtocolSplit:
        key = (spec["task"], spec["shots"])
        if key not in self.splits:
            if self.args.grid.split:
                self.splits[key] = read_split(self.args.grid.split, get_task(spec["task"]))
            else:
                self.splits[key] = make_split(self.task_data(spec["task"]), self.args.sample, spec["shots"])
        return self.splits[key]

    def encode(self, name: str, data: Dataset, cache: bool = True) -> Dataset:
        if not cache:
            return encode(self.tokenizer, data, self.args.model.max_length)
        if name not in self.encoded:
            self.encoded[name] = encode(self.tokenizer, data, self.args.model.max_length)
        return self.encoded[name]


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
    args = cache.args
    task, data, split = get_task(spec["task"]), cache.task_data(spec["task"]), cache.split(spec)
    validation = cache.encode(f"{task.name}/validation", _rows(data.eval, split.validation, "validation"))
    test = cache.encode(f"{task.name}/test", _rows(data.eval, split.test, "test"))
    rows = _train_rows(spec, split, data)
    assert data.train is not None
    examples = with_paraphrases(data.train, rows, cache.augmented)
    full = spec["regime"] == "full" and cache.augmented is None
    train = cache.encode(f"{task.name}/train-full", examples, cache=full)
    outcome = train_and_score(spec, args, cache.tokenizer, train, validation, test)
    record: dict[str, Any] = {
        "key": key,
        "spec": spec,
        "result": outcome.metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "device": str(args.training.device),
        "processes": args.training.world_size,
    }
    main = outcome.trainer.is_world_process_zero()
    if args.execution.save_model:
        folder = Path(args.execution.save_model) / f"{task.name}-{spec['loss']}-{key}"
        outcome.trainer.save_model(str(folder))  # on every process: FSDP/DeepSpeed gather the weights
        if main:
            (folder / RUN_INFO).write_text(
                json.dumps({"key": key, "spec": spec, "result": outcome.metrics}, indent=1)
            )
        record["model_dir"] = str(folder)
    if main and outcome.test_features is not None:
        import numpy as np

        target = Path(str(args.execution.save_embeddings)) / f"{key}.npz"
        target.parent.mkdir(parents=True, exist_ok=True)
        np.savez_compressed(
            target, features=outcome.test_features.numpy(), labels=np.asarray(test["label"][:])
        )
        record["embeddings"] = str(target)
    return record


def execute(args: RunArguments, *, log: Callable[[str], None] = print) -> Stats:
    """Run this shard's unfinished runs, appending each finished one to the journal.

    A ``KeyboardInterrupt`` or crash loses only the run in progress; re-running the same
    command resumes.
    """
    index, count = args.execution.shard_index_count
    if count > 1 and args.training.world_size > 1:
        raise ValueError(
            "shard must be 0/1 under torchrun/accelerate: every process trains every run together"
        )
    specs = expand_grid(args)
    mine = [spec for i, spec in enumerate(specs) if i % count == index]
    path = Path(args.execution.journal)
    done = journal.finished_keys(path)
    todo = [(key, spec) for key, spec in ((run_key(s), s) for s in mine) if key not in done]
    main = args.training.process_index == 0
    if not main:
        log = _silent
    skipped = len(mine) - len(todo)
    log(f"shard {index}/{count}: {len(mine)} runs, {skipped} already in {path}, {len(todo)} to do")
    todo = todo if args.execution.max_runs is None else todo[: args.execution.max_runs]
    cache = _Cache(args) if todo else None
    for finished, (key, spec) in enumerate(todo, start=1):
        assert cache is not None
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


def _silent(_: str) -> None:
    pass
