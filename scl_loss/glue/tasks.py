"""The task table: everything the protocol knows about a task, in one place (docs/glue.md, "Data")."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["GLUE_TASKS", "TASKS", "Headerless", "Task", "get_task"]


@dataclass(frozen=True)
class Headerless:
    """The layout of a task's original files that have no header line."""

    columns: tuple[str, ...]  # the names of the fields, in file order
    label_base: int = 0  # the id of the first class (the polarity originals count from 1)
    escaped_newlines: bool = False  # a newline is written as a literal backslash-n


@dataclass(frozen=True, kw_only=True)
class Task:
    """One task of the paper. Label ids follow ``nyu-mll/glue``, so hub and local files agree."""

    name: str  # on the command line
    display: str  # in the report's tables
    folder: str  # in a GLUE-layout --data_root
    label_names: tuple[str, ...]  # the position is the class id
    # Column aliases, tried in order: the first and the second sentence (none: a single-sentence
    # task), the label (a class name or id).
    text_a: tuple[str, ...]
    text_b: tuple[str, ...] = ()
    label: tuple[str, ...] = ("gold_label", "label", "Quality")
    headerless: Headerless | None = None  # the layout of its original files without a header
    title: str | None = None  # a column put, as a sentence, before text_a (Amazon reviews)
    metric: str | None = None  # its extra column in Table 2
    hub: str = "nyu-mll/glue"
    hub_splits: tuple[str, str] = ("train", "validation")  # playing "train" and "GLUE validation"

    @property
    def hub_config(self) -> str | None:
        return self.name if self.hub == "nyu-mll/glue" else None  # glue's configurations are its tasks

    @property
    def pair(self) -> bool:
        return bool(self.text_b)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


_ENTAILMENT = ("entailment", "not_entailment")
_POLARITY = ("negative", "positive")
_SENTENCE = ("sentence", "text", "text_a")
TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(name="sst2", display="SST-2", folder="SST-2", label_names=_POLARITY, text_a=_SENTENCE),
        Task(
            name="cola",
            display="CoLA",
            folder="CoLA",
            label_names=("unacceptable", "acceptable"),
            text_a=_SENTENCE,
            headerless=Headerless(("source", "label", "mark", "sentence")),
            metric="mcc",
        ),
        Task(
            name="mrpc",
            display="MRPC",
            folder="MRPC",
            label_names=("not_equivalent", "equivalent"),
            text_a=("#1 String", "sentence1", "text_a"),
            text_b=("#2 String", "sentence2", "text_b"),
            metric="f1",
        ),
        Task(
            name="rte",
            display="RTE",
            folder="RTE",
            label_names=_ENTAILMENT,
            text_a=("sentence1", "text_a"),
            text_b=("sentence2", "text_b"),
        ),
        Task(
            name="qnli",
            display="QNLI",
            folder="QNLI",
            label_names=_ENTAILMENT,
            text_a=("question", "text_a"),
            text_b=("sentence", "text_b"),
        ),
        Task(
            name="mnli",
            display="MNLI",
            folder="MNLI",
            label_names=("entailment", "neutral", "contradiction"),
            text_a=("sentence1", "premise", "text_a"),
            text_b=("sentence2", "hypothesis", "text_b"),
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
