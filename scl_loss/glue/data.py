"""Task data for the protocol: where it comes from, the split, and the training sets of runs."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from scl_loss.glue.loaders import DataFormatError, Example, find_task_files, load_file, load_hub
from scl_loss.glue.splits import ProtocolSplit, few_shot_samples, per_class_samples, protocol_split
from scl_loss.glue.tasks import TaskSpec

__all__ = [
    "TASK_FOLDERS",
    "DataSource",
    "TaskData",
    "load_augmented",
    "load_task_data",
    "make_split",
    "read_split",
    "split_to_json",
    "with_paraphrases",
]

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
