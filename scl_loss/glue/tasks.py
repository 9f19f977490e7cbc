"""The tasks of the paper: label names, input form and where their data lives.

Label ids follow the Hugging Face ``nyu-mll/glue`` dataset, so hub and local files agree
(e.g. RTE/QNLI ``entailment`` = 0, MNLI ``entailment, neutral, contradiction`` = 0, 1, 2).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TASKS", "TaskSpec", "get_task"]


@dataclass(frozen=True)
class TaskSpec:
    """What the protocol needs to know about one task.

    Attributes:
        name: the command-line name (``sst2``).
        label_names: class names; the position is the class id.
        pair: whether inputs are sentence pairs (``[CLS] a [SEP] b [EOS]``).
        hub_dataset, hub_config: the default hub source.
        hub_train_split, hub_eval_split: the hub splits playing "train" and "GLUE validation".
        hub_columns: hub column names for ``(text_a, text_b)``; ``text_b`` may be ``None``.
        extra_metric: the task's extra column (``"mcc"`` for CoLA, ``"f1"`` for MRPC).
        display: the name used in report tables.
    """

    name: str
    label_names: tuple[str, ...]
    pair: bool
    hub_dataset: str
    hub_config: str | None
    hub_train_split: str
    hub_eval_split: str
    hub_columns: tuple[str, str | None]
    extra_metric: str | None
    display: str

    @property
    def num_labels(self) -> int:
        return len(self.label_names)


_GLUE = "nyu-mll/glue"
TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in (
        TaskSpec(
            "sst2",
            ("negative", "positive"),
            False,
            _GLUE,
            "sst2",
            "train",
            "validation",
            ("sentence", None),
            None,
            "SST-2",
        ),
        TaskSpec(
            "cola",
            ("unacceptable", "acceptable"),
            False,
            _GLUE,
            "cola",
            "train",
            "validation",
            ("sentence", None),
            "mcc",
            "CoLA",
        ),
        TaskSpec(
            "mrpc",
            ("not_equivalent", "equivalent"),
            True,
            _GLUE,
            "mrpc",
            "train",
            "validation",
            ("sentence1", "sentence2"),
            "f1",
            "MRPC",
        ),
        TaskSpec(
            "rte",
            ("entailment", "not_entailment"),
            True,
            _GLUE,
            "rte",
            "train",
            "validation",
            ("sentence1", "sentence2"),
            None,
            "RTE",
        ),
        TaskSpec(
            "qnli",
            ("entailment", "not_entailment"),
            True,
            _GLUE,
            "qnli",
            "train",
            "validation",
            ("question", "sentence"),
            None,
            "QNLI",
        ),
        TaskSpec(
            "mnli",
            ("entailment", "neutral", "contradiction"),
            True,
            _GLUE,
            "mnli",
            "train",
            "validation_matched",
            ("premise", "hypothesis"),
            None,
            "MNLI",
        ),
        # Transfer targets (Table 7): polarity sets have train/test only; "test" plays GLUE validation.
        TaskSpec(
            "amazon2",
            ("negative", "positive"),
            False,
            "fancyzhx/amazon_polarity",
            None,
            "train",
            "test",
            ("content", None),
            None,
            "Amazon-2",
        ),
        TaskSpec(
            "yelp2",
            ("negative", "positive"),
            False,
            "fancyzhx/yelp_polarity",
            None,
            "train",
            "test",
            ("text", None),
            None,
            "Yelp-2",
        ),
    )
}

GLUE_TASKS = ("sst2", "cola", "mrpc", "rte", "qnli", "mnli")
POLARITY_TASKS = ("amazon2", "yelp2")


def get_task(name: str) -> TaskSpec:
    """The :class:`TaskSpec` called ``name``; ``ValueError`` naming the known tasks otherwise.

    Example:
        >>> get_task("MNLI").label_names
        ('entailment', 'neutral', 'contradiction')
    """
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}, got {name!r}")
    return TASKS[key]
