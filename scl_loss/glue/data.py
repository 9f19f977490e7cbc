"""Task data through ``datasets``, from local files or the hub: a ``Dataset`` with columns ``text_a``
(``text_b``) and ``label`` in file order, whatever the file's layout (docs/glue.md, "Data")."""

from __future__ import annotations

import csv
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
from datasets import ClassLabel, Dataset, Features, Value

from scl_loss.glue.arguments import DataArguments, SampleArguments
from scl_loss.glue.splits import ProtocolSplit, few_shot_samples, per_class_samples, protocol_split
from scl_loss.glue.tasks import Headerless, Task

__all__ = ["DataFormatError", "TaskData", "load_task_data", "make_split", "read_file", "read_split"]

TRAIN_FILES = ("train.tsv", "train.jsonl", "train.json", "train.csv")
# Polarity sets have no validation file: their test set plays GLUE validation.
EVAL_FILES = (
    *("dev.tsv", "dev_matched.tsv", "dev.jsonl", "dev_matched.jsonl"),
    *("dev.json", "dev.csv", "test.csv"),
)


class DataFormatError(ValueError):
    """A data file does not have the expected layout; the message says where and what was expected."""

    def __init__(self, path: Path | str, where: str, expected: str, got: object = None) -> None:
        detail = "" if got is None else f", got {str(got)[:120]!r}"
        super().__init__(f"{path}:{where}: expected {expected}{detail}")


def schema_of(task: Task) -> Features:
    """The columns (a ``datasets.Features`` schema) every task dataset has."""
    texts = ["text_a", "text_b"] if task.pair else ["text_a"]
    return Features(
        {**{t: Value("string") for t in texts}, "label": ClassLabel(names=list(task.label_names))}
    )


def _label(raw: object, task: Task, base: int, path: Path | str, row: int) -> int:
    """Class id from a label given as its name (``entailment``) or its id (``1``, ``"1"``)."""
    text = str(raw).strip()
    if text in task.label_names:
        return task.label_names.index(text)
    if text.isdigit() and 0 <= int(text) - base < task.num_labels:
        return int(text) - base
    choices = ", ".join(f"{i + base}/{name}" for i, name in enumerate(task.label_names))
    raise DataFormatError(path, f"row {row}", f"a label in {{{choices}}}", raw)


def to_task_dataset(raw: Dataset, task: Task, path: Path | str, layout: Headerless | None = None) -> Dataset:
    """``raw`` (any column names the task table knows) as a task dataset; every row is checked."""
    roles = {"text_a": task.text_a, "text_b": task.text_b, "label": task.label}
    found = {
        role: next((c for c in aliases if c in raw.column_names), None) for role, aliases in roles.items()
    }
    missing = [f"one of {roles[role]}" for role, name in found.items() if name is None and roles[role]]
    if missing:
        what = f"columns {' and '.join(missing)} for {task.display}"
        raise DataFormatError(path, "header", what, raw.column_names)
    if not len(raw):
        raise DataFormatError(path, "row 0", "at least one example", "none")
    base, unescape = (layout.label_base, layout.escaped_newlines) if layout else (0, False)

    def texts(column: str) -> list[str]:  # [:] makes a list: iterating a datasets Column is slow
        values = [v if isinstance(v, str) else "" for v in raw[column][:]]
        return [v.replace("\\n", " ").strip() for v in values] if unescape else values

    out: dict[str, list[Any]] = {}
    for role, column in found.items():
        if role != "label" and column is not None:
            out[role] = texts(column)
            for row in (i for i, text in enumerate(out[role]) if not text.strip()):
                raise DataFormatError(
                    path, f"row {row}", f"non-empty text in column {column!r}", out[role][row]
                )
    if task.title in raw.column_names:  # the title, as a sentence, before the text
        pairs = zip((t.strip() for t in texts(task.title)), out["text_a"], strict=True)
        out["text_a"] = [f"{t} {x}" if t[-1:] in ".!?" else f"{t}. {x}" if t else x for t, x in pairs]
    out["label"] = [_label(v, task, base, path, i) for i, v in enumerate(raw[str(found["label"])][:])]
    return Dataset.from_dict(out).cast(schema_of(task))  # cast: faster than encoding row by row


def _load(builder: str, path: Path, **options: Any) -> Dataset:
    # A fresh cache each time, the result kept in memory: the builder's cache is keyed on the
    # file's mtime, which a quick rewrite can leave unchanged.
    try:
        with tempfile.TemporaryDirectory() as cache:
            options.update(data_files=str(path), split="train", cache_dir=cache, keep_in_memory=True)
            return datasets.load_dataset(builder, **options)
    except (datasets.exceptions.DatasetsError, ValueError) as err:  # pandas/pyarrow parse errors
        raise DataFormatError(path, "?", f"a readable {path.suffix} file", err.__cause__ or err) from err


def read_file(path: str | Path, task: Task) -> Dataset:
    """All examples of one file, in file order; the format follows the suffix."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".tsv", ".csv", ".json", ".jsonl", ".txt"):
        raise ValueError(f"path must end in one of .tsv, .csv, .json, .jsonl, .txt, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{task.display} data file not found: {path}")
    if suffix == ".jsonl":
        return to_task_dataset(_load("json", path), task, path)
    if suffix == ".json":
        try:
            records = json.loads(path.read_text(encoding="utf-8-sig"))
        except json.JSONDecodeError as err:
            raise DataFormatError(path, f"{err.lineno}:{err.colno}", f"valid JSON ({err.msg})") from err
        rows = list(records.values()) if isinstance(records, dict) else records  # keyed by row id, in order
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise DataFormatError(path, "1", "a JSON list of objects or an object of objects keyed by row id")
        return to_task_dataset(Dataset.from_list(rows), task, path)
    if suffix == ".txt":
        lines = _load("text", path)["text"]
        pairs = [line.partition(" ") for line in lines if line.strip()]
        raw = Dataset.from_dict({task.label[0]: [p[0] for p in pairs], task.text_a[0]: [p[2] for p in pairs]})
        return to_task_dataset(raw, task, path)
    tsv = suffix == ".tsv"
    quoting = csv.QUOTE_NONE if tsv else csv.QUOTE_MINIMAL  # GLUE TSVs contain unbalanced quotes
    with path.open(encoding="utf-8-sig", newline="") as handle:
        first = next(csv.reader(handle, delimiter="\t" if tsv else ",", quoting=quoting), None)
    if first is None:
        raise DataFormatError(path, "row 0", f"a {suffix} file with at least one row", "an empty file")
    headed = any(name in (*task.text_a, *task.text_b, *task.label) for name in first)
    layout = None if headed else task.headerless
    if not headed and (layout is None or len(layout.columns) != len(first)):
        raise DataFormatError(
            path, "header", f"a header naming the columns ({', '.join(task.text_a + task.label)})", first
        )
    columns = first if layout is None else list(layout.columns)
    raw = _load(
        "csv",
        path,
        delimiter="\t" if tsv else ",",
        quoting=quoting,
        column_names=None if layout is None else columns,
        features=Features({name: Value("string") for name in columns}),
        na_filter=False,  # "NA", "null", "nan" are text
        encoding="utf-8-sig",  # MRPC starts with a byte-order mark
    )
    return to_task_dataset(raw, task, path, layout)


@dataclass(frozen=True)
class TaskData:
    """A task's training set (``None`` when there is no training file) and GLUE validation set."""

    task: Task
    train: Dataset | None
    eval: Dataset
    train_name: str
    eval_name: str


def describe(args: DataArguments, task: Task) -> str:
    """Where the data comes from, without where it lies (part of each run's key).

    Example:
        >>> from scl_loss.glue.tasks import get_task
        >>> args = DataArguments(data_root="/data/glue", train_file="train_subset_9k.json")
        >>> describe(args, get_task("qnli"))
        'dir:QNLI,train:train_subset_9k.json'
    """
    if args.data_dir is None and args.data_root is None:
        return f"hub:{args.hub_dataset or 'default'}"
    folder = Path(args.data_dir) if args.data_dir else Path(task.folder)
    named = [f"{k}:{Path(v).name}" for k, v in (("train", args.train_file), ("eval", args.eval_file)) if v]
    return ",".join([f"dir:{folder.name}", *named])


def find_task_files(args: DataArguments, task: Task) -> tuple[Path | None, Path]:
    """The training file (``None`` if absent) and the GLUE validation file of a task folder."""
    folder = Path(args.data_dir) if args.data_dir else Path(args.data_root or ".") / task.folder
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir must be a folder, got {str(folder)!r}")

    def resolve(name: str | None, defaults: tuple[str, ...]) -> Path | None:
        if name:
            given = Path(name)
            return given if given.is_absolute() or given.exists() else folder / given
        return next((folder / n for n in defaults if (folder / n).is_file()), None)

    dev = resolve(args.eval_file, EVAL_FILES)
    if dev is None:
        found = sorted(p.name for p in folder.iterdir())
        raise FileNotFoundError(
            f"no validation file ({', '.join(EVAL_FILES)}) in {folder}; found {found}: pass --eval_file"
        )
    return resolve(args.train_file, TRAIN_FILES), dev


def load_task_data(task: Task, args: DataArguments) -> TaskData:
    """The task's training and GLUE validation sets, from ``args``' folder or the hub."""
    if args.data_dir is None and args.data_root is None:
        name = args.hub_dataset or task.hub
        config = (task.hub_config,) if task.hub_config else ()
        train, dev = (datasets.load_dataset(name, *config, split=split) for split in task.hub_splits)
        train_name, eval_name = (f"{name}:{split}" for split in task.hub_splits)
        train, dev = to_task_dataset(train, task, train_name), to_task_dataset(dev, task, eval_name)
        return TaskData(task, train, dev, train_name, eval_name)
    train_path, eval_path = find_task_files(args, task)
    train = read_file(train_path, task) if train_path else None
    train_name = train_path.name if train_path else "none"
    return TaskData(task, train, read_file(eval_path, task), train_name, eval_path.name)


def make_split(data: TaskData, sample: SampleArguments, shots: int | None) -> ProtocolSplit:
    """Test/validation rows and, few-shot, the training samples of ``shots`` (or per-class) rows."""
    split = protocol_split(data.eval["label"][:], sample.split_seed, sample.validation_size)
    if sample.regime == "full":
        return split
    if data.train is None:
        raise ValueError(
            f"few-shot samples need a training file; none found for {data.task.display} (pass --train_file)"
        )
    labels = data.train["label"][:]
    if sample.per_class is not None:
        drawn = per_class_samples(labels, sample.per_class, sample.samples, sample.split_seed)
    else:
        drawn = few_shot_samples(labels, shots, sample.samples, sample.split_seed)
    return ProtocolSplit(split.test, split.validation, drawn)


def split_to_json(task: Task, seed: int, split: ProtocolSplit, data: TaskData) -> dict[str, Any]:
    """The audit record ``split`` writes and ``run --split`` reads."""
    record = {"task": task.name, "seed": seed, "test": split.test, "validation": split.validation}
    samples = {"train_samples": split.train_samples} if split.train_samples else {}
    return {**record, **samples, "files": {"train": data.train_name, "eval": data.eval_name}}


def read_split(path: str | Path, task: Task) -> ProtocolSplit:
    """A split audit file written by ``split``; checked against the task."""
    record = json.loads(Path(path).read_text(encoding="utf-8"))
    for name in ("task", "test", "validation"):
        if name not in record:
            raise DataFormatError(path, "1", f"a split file with a {name!r} field (from `scl-glue split`)")
    if record["task"] != task.name:
        raise ValueError(f"split file {path} is for task {record['task']!r}, not {task.name!r}")
    return ProtocolSplit(record["test"], record["validation"], record.get("train_samples", []))


def load_augmented(path: str | Path) -> Dataset:
    """Paraphrases: JSON lines ``{"row": train row, "text_a": ..., ["text_b": ...], ["temperature": T]}``."""
    path = Path(path)
    rows = _load("json", path)
    if not {"row", "text_a"} <= set(rows.column_names) or None in rows["row"][:] or None in rows["text_a"][:]:
        raise DataFormatError(
            path, "1", 'an object with an integer "row" and a "text_a" string per line', rows.column_names
        )
    return rows


def with_paraphrases(train: Dataset, rows: list[int], augmented: Dataset | None) -> Dataset:
    """The training ``rows``, followed by the paraphrases of those rows (with the original's label)."""
    chosen = train.select(rows)
    if augmented is None:
        return chosen
    wanted = set(rows)
    extra: dict[str, list[Any]] = {name: [] for name in chosen.column_names}
    for para in augmented:
        if para["row"] not in wanted:
            continue
        original = train[para["row"]]
        extra["text_a"].append(para["text_a"])
        if "text_b" in extra:
            extra["text_b"].append(para.get("text_b") or original["text_b"])
        extra["label"].append(original["label"])
    return datasets.concatenate_datasets([chosen, Dataset.from_dict(extra, features=chosen.features)])
