"""Read task data: GLUE distribution files, CSV/JSON/JSONL, polarity CSVs, or the hub.

Every reader returns a list of :class:`Example` in file order, so a row index is the 0-based
position among data rows (header excluded) — the indices the split audit files refer to.
Malformed input raises :class:`DataFormatError` naming the file, the line and what was expected.

Quirks handled (see ``../shared/data/glue/README.md``): CoLA has no header; MRPC starts with a
UTF-8 BOM and calls its label ``Quality``; MNLI dev may come as JSON lines with
``premise``/``hypothesis``; QNLI/MNLI subsets come as JSON objects keyed by row id; polarity CSVs
have no header and labels 1 (negative) / 2 (positive); GLUE TSVs contain unbalanced quotes, so
they are split on tabs, never parsed with CSV quoting.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scl_loss.glue.tasks import TaskSpec

__all__ = ["DataFormatError", "Example", "find_task_files", "load_file", "load_hub", "records_to_examples"]


class DataFormatError(ValueError):
    """A data file does not have the expected layout; the message says where and what was expected."""

    def __init__(self, path: Path | str, where: str, expected: str, got: object = None) -> None:
        detail = "" if got is None else f", got {str(got)[:120]!r}"
        super().__init__(f"{path}:{where}: expected {expected}{detail}")


@dataclass(frozen=True)
class Example:
    """One input: ``text_b`` is ``None`` for single-sentence tasks; ``label`` is the class id."""

    text_a: str
    text_b: str | None
    label: int


# Column names accepted for each role, per task, in order of preference.
_TEXT_A: dict[str, tuple[str, ...]] = {
    "sst2": ("sentence", "text", "text_a"),
    "cola": ("sentence", "text", "text_a"),
    "mrpc": ("#1 String", "sentence1", "text_a"),
    "rte": ("sentence1", "text_a"),
    "qnli": ("question", "text_a"),
    "mnli": ("sentence1", "premise", "text_a"),
    "amazon2": ("text", "content", "text_a"),
    "yelp2": ("text", "text_a"),
}
_TEXT_B: dict[str, tuple[str, ...]] = {
    "mrpc": ("#2 String", "sentence2", "text_b"),
    "rte": ("sentence2", "text_b"),
    "qnli": ("sentence", "text_b"),
    "mnli": ("sentence2", "hypothesis", "text_b"),
}
_LABEL = ("gold_label", "label", "Quality")
_COLA_COLUMNS = 4  # source, label, original mark, sentence (no header)


def parse_label(raw: object, task: TaskSpec, path: Path | str, where: str) -> int:
    """Class id from a label given as its name (``entailment``) or its id (``1`` / ``"1"``).

    Example:
        >>> from scl_loss.glue.tasks import get_task
        >>> parse_label("not_entailment", get_task("rte"), "dev.tsv", "2")
        1
        >>> parse_label("1", get_task("sst2"), "dev.tsv", "2")
        1
    """
    if isinstance(raw, bool):
        raw = int(raw)
    if isinstance(raw, int) and 0 <= raw < task.num_labels:
        return raw
    text = str(raw).strip()
    if text in task.label_names:
        return task.label_names.index(text)
    if text.isdigit() and int(text) < task.num_labels:
        return int(text)
    choices = ", ".join(f"{i}/{name}" for i, name in enumerate(task.label_names))
    raise DataFormatError(path, where, f"a label in {{{choices}}}", raw)


def _pick(columns: Iterable[str], candidates: tuple[str, ...]) -> str | None:
    present = set(columns)
    return next((c for c in candidates if c in present), None)


def _roles(task: TaskSpec, columns: list[str], path: Path, where: str) -> tuple[str, str | None, str]:
    """The column names holding text_a, text_b and the label."""
    a = _pick(columns, _TEXT_A[task.name])
    b = _pick(columns, _TEXT_B[task.name]) if task.pair else None
    label = _pick(columns, _LABEL)
    missing = [
        f"one of {names}"
        for names, found in (
            (_TEXT_A[task.name], a),
            (_TEXT_B.get(task.name, ()), b if task.pair else "n/a"),
            (_LABEL, label),
        )
        if found is None
    ]
    if missing:
        raise DataFormatError(path, where, f"columns {' and '.join(missing)} for {task.display}", columns)
    assert a is not None
    assert label is not None
    return a, b, label


def _text(value: object, path: Path, where: str, column: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise DataFormatError(path, where, f"non-empty text in column {column!r}", value)
    return value


def _from_mapping(
    row: Mapping[str, Any], roles: tuple[str, str | None, str], task: TaskSpec, path: Path, where: str
) -> Example:
    a, b, label = roles
    for column in (c for c in roles if c is not None):
        if column not in row:
            raise DataFormatError(path, where, f"a field {column!r}", sorted(row))
    text_a = _text(row[a], path, where, a)
    if task.name == "amazon2" and isinstance(row.get("title"), str):
        text_a = _with_title(row["title"], text_a)
    text_b = _text(row[b], path, where, b) if b is not None else None
    return Example(text_a, text_b, parse_label(row[label], task, path, where))


def _with_title(title: str, text: str) -> str:
    """Amazon reviews: the title, as a sentence, before the text."""
    title = title.strip()
    if not title:
        return text
    return f"{title} {text}" if title[-1] in ".!?" else f"{title}. {text}"


def _data_lines(path: Path) -> list[tuple[int, str]]:
    """(1-based line number, line) for every line, BOM stripped, trailing blank lines dropped."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as err:
        raise DataFormatError(path, f"byte {err.start}", "UTF-8 text") from err
    lines = [(i + 1, line.rstrip("\r")) for i, line in enumerate(text.split("\n"))]
    while lines and not lines[-1][1].strip():
        lines.pop()
    return lines


def _read_tsv(path: Path, task: TaskSpec) -> list[Example]:
    lines = _data_lines(path)
    if not lines:
        raise DataFormatError(path, "1", "a GLUE TSV file with at least one row", "an empty file")
    if (
        task.name == "cola"
        and len(lines[0][1].split("\t")) == _COLA_COLUMNS
        and "sentence" not in lines[0][1]
    ):
        examples = []
        for number, line in lines:
            fields = line.split("\t")
            if len(fields) != _COLA_COLUMNS:
                raise DataFormatError(
                    path, str(number), "4 tab-separated fields (source, label, mark, sentence)", line
                )
            examples.append(
                Example(
                    _text(fields[3], path, str(number), "sentence"),
                    None,
                    parse_label(fields[1], task, path, str(number)),
                )
            )
        return examples
    header = lines[0][1].split("\t")
    roles = _roles(task, header, path, "1 (header)")
    examples = []
    for number, line in lines[1:]:
        fields = line.split("\t")
        if len(fields) != len(header):
            raise DataFormatError(
                path,
                str(number),
                f"{len(header)} tab-separated fields as in the header",
                f"{len(fields)} fields: {line}",
            )
        examples.append(_from_mapping(dict(zip(header, fields, strict=True)), roles, task, path, str(number)))
    return examples


def _read_csv(path: Path, task: TaskSpec) -> list[Example]:
    with path.open(encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle))
    if not rows:
        raise DataFormatError(path, "1", "a CSV file with at least one row", "an empty file")
    headed = _pick(rows[0], _LABEL) is not None
    if not headed:
        # The polarity layout: "label","title","text" (Amazon) or "label","text" (Yelp), labels 1/2.
        if task.name not in ("amazon2", "yelp2"):
            raise DataFormatError(
                path, "1 (header)", f"a header with a label column (one of {_LABEL})", rows[0]
            )
        return _read_polarity_rows(rows, path, task)
    roles = _roles(task, rows[0], path, "1 (header)")
    examples = []
    for number, row in enumerate(rows[1:], start=2):
        if len(row) != len(rows[0]):
            raise DataFormatError(path, f"row {number}", f"{len(rows[0])} comma-separated fields", row)
        examples.append(
            _from_mapping(dict(zip(rows[0], row, strict=True)), roles, task, path, f"row {number}")
        )
    return examples


def _read_polarity_rows(rows: list[list[str]], path: Path, task: TaskSpec) -> list[Example]:
    width = 3 if task.name == "amazon2" else 2
    layout = '"label","title","text"' if width == 3 else '"label","text"'
    examples = []
    for number, row in enumerate(rows, start=1):
        if len(row) != width:
            raise DataFormatError(path, f"row {number}", f"{width} fields {layout}", row)
        if row[0] not in ("1", "2"):
            raise DataFormatError(
                path, f"row {number}", "a polarity label 1 (negative) or 2 (positive)", row[0]
            )
        # The originals escape newlines as a literal backslash-n.
        body = row[-1].replace("\\n", " ").strip()
        if width == 3:
            body = _with_title(row[1].replace("\\n", " "), body)
        examples.append(Example(_text(body, path, f"row {number}", "text"), None, int(row[0]) - 1))
    return examples


def _read_json(path: Path, task: TaskSpec) -> list[Example]:
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except json.JSONDecodeError as err:
        raise DataFormatError(path, f"{err.lineno}:{err.colno}", f"valid JSON ({err.msg})") from err
    if isinstance(data, dict):
        items = list(data.items())  # {"0": {...}, "1": {...}}: keyed by row id, in row order
    elif isinstance(data, list):
        items = [(str(i), value) for i, value in enumerate(data)]
    else:
        raise DataFormatError(
            path, "1", "a JSON list of objects or an object keyed by row id", type(data).__name__
        )
    examples = []
    roles: tuple[str, str | None, str] | None = None
    for key, value in items:
        where = f"entry {key!r}"
        if not isinstance(value, dict):
            raise DataFormatError(path, where, "a JSON object per example", value)
        roles = roles or _roles(task, list(value), path, where)
        examples.append(_from_mapping(value, roles, task, path, where))
    return examples


def _read_jsonl(path: Path, task: TaskSpec) -> list[Example]:
    examples = []
    roles: tuple[str, str | None, str] | None = None
    for number, line in _data_lines(path):
        try:
            value = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataFormatError(path, str(number), f"one JSON object per line ({err.msg})", line) from err
        if not isinstance(value, dict):
            raise DataFormatError(path, str(number), "a JSON object", line)
        roles = roles or _roles(task, list(value), path, str(number))
        examples.append(_from_mapping(value, roles, task, path, str(number)))
    return examples


def _read_label_text(path: Path, task: TaskSpec) -> list[Example]:
    """``LABEL TEXT`` per line (e.g. the TextFooler Yelp test file), labels given as class ids."""
    examples = []
    for number, line in _data_lines(path):
        label, _, text = line.partition(" ")
        examples.append(
            Example(_text(text, path, str(number), "text"), None, parse_label(label, task, path, str(number)))
        )
    return examples


_READERS = {
    ".tsv": _read_tsv,
    ".csv": _read_csv,
    ".json": _read_json,
    ".jsonl": _read_jsonl,
    ".txt": _read_label_text,
}


def load_file(path: str | Path, task: TaskSpec) -> list[Example]:
    """All examples of one file, in file order; the format follows the suffix."""
    path = Path(path)
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise ValueError(f"path must end in one of {', '.join(_READERS)}, got {str(path)!r}")
    if not path.is_file():
        raise FileNotFoundError(f"{task.display} data file not found: {path}")
    examples = reader(path, task)
    if not examples:
        raise DataFormatError(path, "1", "at least one example", "none")
    return examples


_TRAIN_NAMES = ("train.tsv", "train.jsonl", "train.json", "train.csv")
_EVAL_NAMES = (
    "dev.tsv",
    "dev_matched.tsv",
    "dev.jsonl",
    "dev_matched.jsonl",
    "dev.json",
    "dev.csv",
    "validation.jsonl",
    "test.csv",
)


def find_task_files(
    data_dir: str | Path, train_file: str | Path | None = None, eval_file: str | Path | None = None
) -> tuple[Path | None, Path]:
    """The training file (``None`` if absent) and the GLUE validation file of a task folder.

    Explicit ``train_file``/``eval_file`` win (relative names are looked up in ``data_dir``).
    """
    folder = Path(data_dir)
    if not folder.is_dir():
        raise FileNotFoundError(f"data_dir must be a folder, got {str(folder)!r}")

    def resolve(name: str | Path) -> Path:
        candidate = Path(name)
        return candidate if candidate.is_absolute() or candidate.exists() else folder / candidate

    train = (
        resolve(train_file)
        if train_file
        else next((folder / n for n in _TRAIN_NAMES if (folder / n).is_file()), None)
    )
    if eval_file:
        dev = resolve(eval_file)
    else:
        dev = next((folder / n for n in _EVAL_NAMES if (folder / n).is_file()), None)  # type: ignore[assignment]
        if dev is None:
            found = sorted(p.name for p in folder.iterdir())
            raise FileNotFoundError(
                f"no validation file ({', '.join(_EVAL_NAMES)}) in {folder}; found {found}: pass --eval-file"
            )
    return train, dev


def records_to_examples(records: Iterable[Mapping[str, Any]], task: TaskSpec, source: str) -> list[Example]:
    """Examples from hub-style records (``datasets`` rows) with the task's hub column names."""
    a, b = task.hub_columns
    roles = (a, b, "label")
    out = []
    for i, row in enumerate(records):
        out.append(_from_mapping(row, roles, task, source, f"row {i}"))
    return out


def load_hub(task: TaskSpec, dataset: str | None = None) -> tuple[list[Example], list[Example]]:
    """(train, GLUE validation) from the Hugging Face hub via ``datasets`` (needs network or a cache)."""
    from datasets import load_dataset  # optional dependency, imported only when the hub is used

    name = dataset or task.hub_dataset
    args = (name, task.hub_config) if task.hub_config else (name,)
    train = load_dataset(*args, split=task.hub_train_split)
    dev = load_dataset(*args, split=task.hub_eval_split)
    return (
        records_to_examples(train, task, f"{name}:{task.hub_train_split}"),
        records_to_examples(dev, task, f"{name}:{task.hub_eval_split}"),
    )
