"""The task table: everything the protocol knows about a task, in one place.

Label ids follow the Hugging Face ``nyu-mll/glue`` dataset, so hub and local files agree
(e.g. RTE/QNLI ``entailment`` = 0, MNLI ``entailment, neutral, contradiction`` = 0, 1, 2).
Column names are aliases, tried in order, so the GLUE distribution files, the hub's columns and
generic ``text_a``/``text_b`` files are all read by the same code.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GLUE_TASKS", "TASKS", "Headerless", "Task", "get_task"]


@dataclass(frozen=True)
class Headerless:
    """The layout of a task's original files that have no header line.

    Attributes:
        columns: the column names to give the fields, in file order.
        label_base: the id of the first class in the file (the polarity originals count from 1).
        escaped_newlines: the file writes a newline as a literal backslash-n.
    """

    columns: tuple[str, ...]
    label_base: int = 0
    escaped_newlines: bool = False


@dataclass(frozen=True, kw_only=True)
class Task:
    """One task of the paper.

    Attributes:
        name: the command-line name (``sst2``).
        display: the name in report tables (``SST-2``).
        folder: its folder in a GLUE-layout data root (``--data_root``).
        label_names: class names; the position is the class id.
        text_a, text_b: column aliases of the first and second sentence (``text_b`` empty:
            single-sentence task).
        label: column aliases of the label (given as a class name or id).
        headerless: the layout of the task's header-less original files, if it has any.
        title: a column whose text is put, as a sentence, before ``text_a`` (Amazon reviews).
        metric: the task's extra metric column in Table 2: ``"mcc"`` (CoLA), ``"f1"`` (MRPC).
        hub, hub_config, hub_splits: the default hub source and its splits playing "train" and
            "GLUE validation".
    """

    name: str
    display: str
    folder: str
    label_names: tuple[str, ...]
    text_a: tuple[str, ...]
    text_b: tuple[str, ...] = ()
    label: tuple[str, ...] = ("gold_label", "label", "Quality")
    headerless: Headerless | None = None
    title: str | None = None
    metric: str | None = None
    hub: str = "nyu-mll/glue"
    hub_config: str | None = None
    hub_splits: tuple[str, str] = ("train", "validation")

    @property
    def pair(self) -> bool:
        return bool(self.text_b)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


_ENTAILMENT = ("entailment", "not_entailment")
_POLARITY = ("negative", "positive")
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            name="sst2",
            display="SST-2",
            folder="SST-2",
            label_names=_POLARITY,
            text_a=("sentence", "text", "text_a"),
            hub_config="sst2",
        ),
        Task(
            name="cola",
            display="CoLA",
            folder="CoLA",
            label_names=("unacceptable", "acceptable"),
            text_a=("sentence", "text", "text_a"),
            headerless=Headerless(("source", "label", "mark", "sentence")),
            metric="mcc",
            hub_config="cola",
        ),
        Task(
            name="mrpc",
            display="MRPC",
            folder="MRPC",
            label_names=("not_equivalent", "equivalent"),
            text_a=("#1 String", "sentence1", "text_a"),
            text_b=("#2 String", "sentence2", "text_b"),
            metric="f1",
            hub_config="mrpc",
        ),
        Task(
            name="rte",
            display="RTE",
            folder="RTE",
            label_names=_ENTAILMENT,
            text_a=("sentence1", "text_a"),
            text_b=("sentence2", "text_b"),
            hub_config="rte",
        ),
        Task(
            name="qnli",
            display="QNLI",
            folder="QNLI",
            label_names=_ENTAILMENT,
            text_a=("question", "text_a"),
            text_b=("sentence", "text_b"),
            hub_config="qnli",
        ),
        Task(
            name="mnli",
            display="MNLI",
            folder="MNLI",
            label_names=("entailment", "neutral", "contradiction"),
            text_a=("sentence1", "premise", "text_a"),
            text_b=("sentence2", "hypothesis", "text_b"),
            hub_config="mnli",
            hub_splits=("train", "validation_matched"),
        ),
        # Transfer targets (Table 7): polarity sets have train/test only; "test" plays GLUE validation.
        Task(
            name="amazon2",
            display="Amazon-2",
            folder="amazon-2",
            label_names=_POLARITY,
            text_a=("text", "content", "text_a"),
            headerless=Headerless(("label", "title", "text"), label_base=1, escaped_newlines=True),
            title="title",
            hub="fancyzhx/amazon_polarity",
            hub_splits=("train", "test"),
        ),
        Task(
            name="yelp2",
            display="Yelp-2",
            folder="yelp-2",
            label_names=_POLARITY,
            text_a=("text", "text_a"),
            headerless=Headerless(("label", "text"), label_base=1, escaped_newlines=True),
            hub="fancyzhx/yelp_polarity",
            hub_splits=("train", "test"),
        ),
    )
}

# Table 2's columns, in the paper's order.
GLUE_TASKS = ("sst2", "cola", "mrpc", "rte", "qnli", "mnli")


def get_task(name: str) -> Task:
    """The :class:`Task` called ``name``; ``ValueError`` naming the known tasks otherwise.

    Example:
        >>> get_task("MNLI").label_names
        ('entailment', 'neutral', 'contradiction')
    """
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[key]
