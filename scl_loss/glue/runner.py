"""The grid of runs (tasks × regime × samples/seeds × loss × λ × τ) and its resumable execution.

Every run is described by a JSON-able *spec*; its key is a hash of the spec, so re-running the
same command skips the runs already in the journal, and a changed setting makes a new run.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch

from scl_loss.glue import journal
from scl_loss.glue.loaders import DataFormatError, Example, find_task_files, load_file, load_hub
from scl_loss.glue.modeling import Encoded, encode, load_model, load_tokenizer
from scl_loss.glue.splits import ProtocolSplit, few_shot_samples, per_class_samples, protocol_split
from scl_loss.glue.tasks import TaskSpec, get_task
from scl_loss.glue.training import RunOutcome, TrainSettings, train_and_evaluate

__all__ = [
    "DataSource",
    "GridConfig",
    "TaskData",
    "execute",
    "expand_grid",
    "load_task_data",
    "make_split",
    "run_key",
]

RUN_INFO = "scl_glue_run.json"  # written next to a saved model: the spec that produced it


# Folder of each task inside a GLUE-layout data root (as in ../shared/data/glue).
TASK_FOLDERS = {
    "sst2": "SST-2",
    "cola": "CoLA",
    "mrpc": "MRPC",
    "rte": "RTE",
    "qnli": "QNLI",
    "mnli": "MNLI",
    "amazon2": "amazon-2",
    "yelp2": "yelp-2",
}


@dataclass(frozen=True)
class DataSource:
    """Where data comes from: a task folder (``data_dir``), a root of task folders (``data_root``,
    e.g. ``../shared/data/glue``), or the hub (neither; ``hub_dataset`` overrides the default)."""

    data_dir: str | None = None
    data_root: str | None = None
    train_file: str | None = None
    eval_file: str | None = None
    hub_dataset: str | None = None
    # Draw training samples from the GLUE-validation rows outside test and validation (for
    # sets that come with one labelled file only, e.g. the offline Yelp-2 test file).
    train_from_eval: bool = False

    def for_task(self, task: TaskSpec) -> DataSource:
        if self.data_root is None:
            return self
        folder = str(Path(self.data_root) / TASK_FOLDERS[task.name])
        return replace(self, data_dir=folder, data_root=None)

    def describe(self) -> str:
        if self.train_from_eval:
            return replace(self, train_from_eval=False).describe() + ",train:eval-rest"
        if self.data_dir is None and self.data_root is None:
            return f"hub:{self.hub_dataset or 'default'}"
        parts = [f"dir:{Path(self.data_dir or self.data_root or '').name}"]
        parts += [
            f"{k}:{Path(v).name}" for k, v in (("train", self.train_file), ("eval", self.eval_file)) if v
        ]
        return ",".join(parts)


@dataclass
class TaskData:
    task: TaskSpec
    train: list[Example] | None
    eval: list[Example]
    train_name: str
    eval_name: str
    train_from_eval: bool = False  # train is eval; samples come from rows outside test/validation


def load_task_data(task: TaskSpec, source: DataSource) -> TaskData:
    """Training examples (``None`` when the folder has no training file) and GLUE validation examples."""
    source = source.for_task(task)
    if source.data_dir is None:
        train, dev = load_hub(task, source.hub_dataset)
        name = source.hub_dataset or task.hub_dataset
        data = TaskData(task, train, dev, f"{name}:{task.hub_train_split}", f"{name}:{task.hub_eval_split}")
    else:
        train_path, eval_path = find_task_files(source.data_dir, source.train_file, source.eval_file)
        train = load_file(train_path, task) if train_path else None
        data = TaskData(task, train, load_file(eval_path, task), str(train_path), str(eval_path))
    if source.train_from_eval:
        return TaskData(task, data.eval, data.eval, data.eval_name, data.eval_name, train_from_eval=True)
    return data


def make_split(
    data: TaskData,
    seed: int,
    *,
    validation_size: int = 500,
    shots: int | None = None,
    per_class: int | None = None,
    samples: int = 0,
) -> ProtocolSplit:
    """Test/validation indices and, with ``shots`` or ``per_class``, ``samples`` training samples."""
    split = protocol_split([e.label for e in data.eval], seed, validation_size)
    if shots is None and per_class is None:
        return split
    if data.train is None:
        raise ValueError(
            f"few-shot samples need a training file; none found for {data.task.display} (pass --train-file)"
        )
    labels = [e.label for e in data.train]
    pool = None
    if data.train_from_eval:
        used = set(split.test) | set(split.validation)
        pool = [i for i in range(len(labels)) if i not in used]
    if per_class is not None:
        drawn = per_class_samples(labels, per_class, samples, seed, pool)
    else:
        assert shots is not None
        drawn = few_shot_samples(labels, shots, samples, seed, pool)
    return ProtocolSplit(split.test, split.validation, drawn)


def split_to_json(task: TaskSpec, seed: int, split: ProtocolSplit, data: TaskData) -> dict[str, Any]:
    out: dict[str, Any] = {
        "task": task.name,
        "seed": seed,
        "test": split.test,
        "validation": split.validation,
    }
    if split.train_samples:
        out["train_samples"] = split.train_samples
    out["files"] = {"train": data.train_name, "eval": data.eval_name}
    return out


def read_split(path: str | Path, task: TaskSpec) -> ProtocolSplit:
    """A split audit file written by ``split``; checked against the task."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    for name in ("task", "test", "validation"):
        if name not in record:
            raise DataFormatError(path, "1", f"a split file with a {name!r} field (from `scl-glue split`)")
    if record["task"] != task.name:
        raise ValueError(f"split file {path} is for task {record['task']!r}, not {task.name!r}")
    return ProtocolSplit(record["test"], record["validation"], record.get("train_samples", []))


def run_key(spec: dict[str, Any]) -> str:
    """Short stable hash of a run spec."""
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


@dataclass
class GridConfig:
    """Everything a ``run`` command expands into runs. See ``docs/glue.md`` for each option."""

    tasks: list[str]
    source: DataSource = field(default_factory=DataSource)
    model: str = "roberta-large"
    regime: str = "fewshot"  # "full" or "fewshot"
    shots: list[int] = field(default_factory=lambda: [20])
    per_class: int | None = None
    samples: int = 10  # few-shot: training samples per N
    seeds: int = 10  # full data: seeds per combination
    base_seed: int = 0
    split_seed: int = 0
    split_file: str | None = None
    validation_size: int = 500
    include_ce: bool = True
    lambdas: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9, 1.0])
    taus: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7])
    init_from: str | None = None
    augment: str | None = None
    settings: TrainSettings = field(default_factory=TrainSettings)

    def __post_init__(self) -> None:
        if self.regime not in ("full", "fewshot"):
            raise ValueError(f"regime must be 'full' or 'fewshot', got {self.regime!r}")
        for name in self.tasks:
            get_task(name)
        if self.regime == "fewshot" and not self.shots and self.per_class is None:
            raise ValueError("fewshot regime needs shots (N) or per_class")
        if self.samples < 1 or self.seeds < 1:
            raise ValueError(f"samples and seeds must be >= 1, got {self.samples}, {self.seeds}")


def init_info(init_from: str | None) -> dict[str, Any] | None:
    """What the starting checkpoint was trained with (read from its ``scl_glue_run.json``)."""
    if init_from is None:
        return None
    info_path = Path(init_from) / RUN_INFO
    info: dict[str, Any] = {"path": str(init_from)}
    if info_path.is_file():
        spec = json.loads(info_path.read_text(encoding="utf-8"))["spec"]
        info.update(task=spec["task"], loss=spec["loss"], **{"lambda": spec["lambda"], "tau": spec["tau"]})
    return info


def augment_info(path: str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    rows = load_augmented(path)
    temps = {r.get("temperature") for r in rows}
    return {"file": Path(path).name, "temperature": temps.pop() if len(temps) == 1 else None}


def expand_grid(config: GridConfig) -> list[dict[str, Any]]:
    """Every run spec of the grid, in a stable order (shards take every n-th)."""
    losses: list[tuple[str, float | None, float | None]] = [("ce", None, None)] if config.include_ce else []
    losses += [("scl", lam, tau) for lam in config.lambdas for tau in config.taus]
    if not losses:
        raise ValueError("the grid has no loss: give lambdas and taus, or keep CE")
    if config.regime == "full":
        sizes: list[tuple[int | None, int | None]] = [(None, None)]
    elif config.per_class is not None:
        sizes = [(None, config.per_class)]
    else:
        sizes = [(n, None) for n in config.shots]
    repeats = config.seeds if config.regime == "full" else config.samples
    common = {
        "regime": config.regime,
        "model": config.model,
        "data": config.source.describe(),
        "split_seed": config.split_seed,
        "split_file": Path(config.split_file).name if config.split_file else None,
        "validation_size": config.validation_size,
        "init": init_info(config.init_from),
        "augment": augment_info(config.augment),
        "settings": config.settings.as_dict(),
    }
    specs = []
    for task in config.tasks:
        for shots, per_class in sizes:
            for loss, lam, tau in losses:
                for index in range(repeats):
                    spec = {
                        **common,
                        "task": get_task(task).name,
                        "shots": shots,
                        "per_class": per_class,
                        "sample": index,
                        "seed": config.base_seed + index,
                        "loss": loss,
                        "lambda": lam,
                        "tau": tau,
                    }
                    specs.append(spec)
    return specs


def load_augmented(path: str | Path) -> list[dict[str, Any]]:
    """Paraphrases: JSON lines ``{"row": train row, "text_a": ..., ["text_b": ...], ["temperature": T]}``."""
    rows = []
    for number, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, str(number), f"one JSON object per line ({err.msg})", line) from err
        if (
            not isinstance(row, dict)
            or not isinstance(row.get("row"), int)
            or not isinstance(row.get("text_a"), str)
        ):
            raise DataFormatError(
                path, str(number), 'an object with an integer "row" and a "text_a" string', line
            )
        rows.append(row)
    if not rows:
        raise DataFormatError(path, "1", "at least one paraphrase", "an empty file")
    return rows


def with_paraphrases(
    train: list[Example], rows: list[int], augmented: list[dict[str, Any]] | None
) -> list[Example]:
    """The training rows, followed by the paraphrases of those rows (label of the original)."""
    chosen = [train[i] for i in rows]
    if augmented is None:
        return chosen
    wanted = set(rows)
    extra = []
    for para in augmented:
        if para["row"] in wanted:
            original = train[para["row"]]
            text_b = para.get("text_b") if original.text_b is not None else None
            extra.append(Example(para["text_a"], text_b if text_b else original.text_b, original.label))
    return chosen + extra


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
    )
    record: dict[str, Any] = {
        "key": key,
        "spec": spec,
        "result": outcome.metrics,
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "host": platform.node(),
        "device": str(options.device),
    }
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
    only the run in progress; re-running the same command resumes.
    """
    specs = expand_grid(config)
    index, count = options.shard
    mine = [s for i, s in enumerate(specs) if i % count == index]
    done = journal.finished_keys(options.journal)
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
