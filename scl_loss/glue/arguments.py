"""Every option of ``scl-glue``, declared once, as dataclasses for ``transformers.HfArgumentParser``.

Optimisation, evaluation, mixed precision and multi-GPU options are ``TrainingArguments``
fields (``--learning_rate``, ``--per_device_train_batch_size``, ``--num_train_epochs``,
``--bf16``, ...); :class:`GlueTrainingArguments` only changes the defaults the paper fixes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from transformers import TrainingArguments

from scl_loss.glue.tasks import TASKS

__all__ = [
    "AugmentArguments",
    "DataArguments",
    "ExecutionArguments",
    "GlueTrainingArguments",
    "GridArguments",
    "MergeArguments",
    "ModelArguments",
    "ReportArguments",
    "SampleArguments",
    "SplitArguments",
]


def _help(text: str) -> dict[str, str]:
    return {"help": text}


def _check(name: str, ok: bool, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


def _check_tasks(name: str, tasks: list[str]) -> None:
    for task in tasks:
        _check(name, task.lower().replace("-", "") in TASKS, task, f"tasks among {', '.join(TASKS)}")


@dataclass
class DataArguments:
    """Where a task's data comes from: a task folder, a root of task folders, or the hub."""

    data_dir: str | None = field(default=None, metadata=_help("a task folder (GLUE TSV, CSV, JSON, JSONL)"))
    data_root: str | None = field(
        default=None, metadata=_help("a folder of task folders named as in GLUE (SST-2, CoLA, ..., yelp-2)")
    )
    train_file: str | None = field(
        default=None, metadata=_help("training file: a name inside the task folder, or a path")
    )
    eval_file: str | None = field(
        default=None, metadata=_help("the GLUE validation file: a name inside the task folder, or a path")
    )
    hub_dataset: str | None = field(
        default=None, metadata=_help("hub dataset instead of the task's default (nyu-mll/glue)")
    )

    def __post_init__(self) -> None:
        _check(
            "data_dir", not (self.data_dir and self.data_root), self.data_dir, "unset when data_root is set"
        )


@dataclass
class SampleArguments:
    """The protocol's split: test, validation and (few-shot) training samples."""

    regime: Literal["fewshot", "full"] = field(
        default="fewshot", metadata=_help("few-shot samples, or the full training set")
    )
    shots: list[int] = field(default_factory=lambda: [20], metadata=_help("few-shot N values"))
    per_class: int | None = field(
        default=None, metadata=_help("few-shot with this many examples of every class instead of N")
    )
    samples: int = field(default=10, metadata=_help("few-shot training samples per N"))
    split_seed: int = field(default=0, metadata=_help("seed of the test/validation/sample split"))
    validation_size: int = field(default=500, metadata=_help("validation rows (the paper's ~500)"))

    def __post_init__(self) -> None:
        _check("shots", bool(self.shots) and min(self.shots) >= 1, self.shots, "one or more N >= 1")
        _check("per_class", self.per_class is None or self.per_class >= 1, self.per_class, ">= 1")
        _check("samples", self.samples >= 1, self.samples, ">= 1")
        _check("validation_size", self.validation_size >= 1, self.validation_size, ">= 1")


@dataclass
class SplitArguments:
    """``split``: the task and the audit file to write."""

    task: str = field(metadata=_help("task name"))
    out: str = field(metadata=_help("JSON file to write"))

    def __post_init__(self) -> None:
        _check_tasks("task", [self.task])


@dataclass
class GridArguments:
    """``run``: what the grid is made of (tasks × sizes × losses × samples or seeds)."""

    tasks: list[str] = field(default_factory=list, metadata=_help("task names"))
    seeds: int = field(default=10, metadata=_help("full data: seeds per combination"))
    lambdas: list[float] = field(
        default_factory=lambda: [0.1, 0.3, 0.5, 0.7, 0.9, 1.0], metadata=_help("λ grid")
    )
    taus: list[float] = field(default_factory=lambda: [0.1, 0.3, 0.5, 0.7], metadata=_help("τ grid"))
    ce: bool = field(default=True, metadata=_help("include the CE-only baseline (--no_ce leaves it out)"))
    ce_only: bool = field(default=False, metadata=_help("only the CE baseline"))
    split: str | None = field(
        default=None, metadata=_help("split JSON (from `split`) instead of computing it")
    )
    augment: str | None = field(
        default=None, metadata=_help("JSONL of paraphrases (from `augment`) to add to the training rows")
    )

    def __post_init__(self) -> None:
        _check(
            "tasks", bool(self.tasks), self.tasks, 'one or more task names (--tasks, or "tasks" in --config)'
        )
        _check_tasks("tasks", self.tasks)
        _check("seeds", self.seeds >= 1, self.seeds, ">= 1")
        _check("ce", self.ce or not self.ce_only, self.ce, "True with ce_only")


@dataclass
class ModelArguments:
    """``run``: the encoder, its inputs, and the SCL options of ``SCLTrainer``."""

    model: str = field(default="roberta-large", metadata=_help("hub name or local folder"))
    init_from: str | None = field(
        default=None, metadata=_help("start from this fine-tuned model folder (transfer, Table 7)")
    )
    max_length: int = field(default=128, metadata=_help("tokens per input (truncation)"))
    dropout: float = field(default=0.1, metadata=_help("every dropout probability of the encoder and head"))
    scl_reduction: Literal["mean", "sum"] = field(
        default="mean",
        metadata=_help("SCL over anchors: mean (λ independent of batch size) or the paper's sum"),
    )
    patience: int = field(
        default=3, metadata=_help("stop after this many evaluations without a better one; 0: never")
    )
    micro_batch_size: int | None = field(
        default=None,
        metadata=_help(
            "gradient caching: the encoder sees micro-batches of this size, SCL the whole batch (exact)"
        ),
    )
    gather_distributed: bool = field(
        default=True, metadata=_help("under torchrun/accelerate: SCL contrasts every rank's batch (exact)")
    )

    def __post_init__(self) -> None:
        _check("max_length", self.max_length >= 8, self.max_length, ">= 8")
        _check("dropout", 0 <= self.dropout < 1, self.dropout, "in [0, 1)")
        _check("scl_reduction", self.scl_reduction in ("mean", "sum"), self.scl_reduction, "'mean' or 'sum'")
        _check("patience", self.patience >= 0, self.patience, ">= 0")
        ok = self.micro_batch_size is None or self.micro_batch_size >= 1
        _check("micro_batch_size", ok, self.micro_batch_size, ">= 1")


@dataclass
class ExecutionArguments:
    """``run``: the journal and how this process shares the grid."""

    journal: str = field(default="results/journal.jsonl", metadata=_help("results journal (resumable)"))
    shard: str = field(default="0/1", metadata=_help("i/n: run every n-th run starting at i"))
    max_runs: int | None = field(default=None, metadata=_help("stop after this many new runs"))
    save_model: str | None = field(
        default=None, metadata=_help("folder to save each run's selected model in")
    )
    save_embeddings: str | None = field(
        default=None, metadata=_help("folder to save each run's test-set Φ in (for the tSNE figures)")
    )
    list_runs: bool = field(default=False, metadata=_help("print the planned runs and exit"))
    config: str | None = field(
        default=None, metadata=_help("JSON or YAML file of option defaults; command-line options win")
    )

    def __post_init__(self) -> None:
        self.shard_index_count  # noqa: B018 - checks the format

    @property
    def shard_index_count(self) -> tuple[int, int]:
        """``shard`` as (i, n) with 0 <= i < n.

        Example:
            >>> ExecutionArguments(shard="1/4").shard_index_count
            (1, 4)
        """
        try:
            i, n = (int(x) for x in self.shard.split("/"))
        except ValueError as err:
            raise ValueError(f"shard must look like i/n, got {self.shard!r}") from err
        _check("shard", 0 <= i < n, self.shard, "i/n with 0 <= i < n")
        return i, n


@dataclass
class GlueTrainingArguments(TrainingArguments):
    """``TrainingArguments`` with the paper's settings (§4) and the protocol's evaluation as defaults."""

    learning_rate: float = field(default=1e-5, metadata=_help("Adam learning rate (paper: 1e-5)"))
    per_device_train_batch_size: int = field(default=16, metadata=_help("batch size per device (paper: 16)"))
    per_device_eval_batch_size: int = field(default=64, metadata=_help("evaluation batch size per device"))
    num_train_epochs: float = field(default=10.0, metadata=_help("maximum epochs"))
    # Adam as in the paper: a constant rate after the (default: no) warm-up, and no clipping.
    lr_scheduler_type: str = field(default="constant_with_warmup", metadata=_help("learning rate schedule"))
    max_grad_norm: float = field(default=0.0, metadata=_help("gradient clipping norm; 0: none (paper)"))
    eval_strategy: str = field(default="epoch", metadata=_help("when to evaluate on validation"))
    logging_strategy: str = field(default="epoch", metadata=_help("when to log the training loss"))
    save_strategy: str = field(
        default="no", metadata=_help("checkpoints: none, the best weights stay in memory")
    )
    metric_for_best_model: str | None = field(default="acc", metadata=_help("validation metric that selects"))
    seed: int = field(default=0, metadata=_help("base seed: run k (sample or seed index) uses seed + k"))

    def __post_init__(self) -> None:
        super().__post_init__()
        _check(
            "learning_rate",
            self.learning_rate > 0 and math.isfinite(self.learning_rate),
            self.learning_rate,
            "> 0",
        )


@dataclass
class ReportArguments:
    """``report``: journal(s) → the paper's tables and the tSNE figures."""

    journals: list[str] = field(metadata=_help("journal files (merged, one record per run)"))
    out: str = field(default="results/report", metadata=_help("output folder"))
    figures: bool = field(default=True, metadata=_help("tSNE figures (--no_figures: tables only)"))


@dataclass
class MergeArguments:
    """``merge``: journals → one journal, one record per run."""

    journals: list[str] = field(metadata=_help("journal files"))
    out: str = field(metadata=_help("journal to write (records already there are kept)"))


@dataclass
class AugmentArguments:
    """``augment``: back-translate training rows (en→de→en) into noisy paraphrases (Table 5)."""

    task: str = field(metadata=_help("task name"))
    out: str = field(metadata=_help("output folder: one augmented-T<temperature>.jsonl per T"))
    split: str | None = field(
        default=None, metadata=_help("paraphrase only the rows of this split's train_samples (default: all)")
    )
    temperatures: list[float] = field(
        default_factory=lambda: [0.3, 0.5, 0.7, 0.9], metadata=_help("T values")
    )
    copies: int = field(default=3, metadata=_help("paraphrases per example (1:3 in the paper)"))
    en_de: str = field(
        default="Helsinki-NLP/opus-mt-en-de", metadata=_help("local folder or cached hub name")
    )
    de_en: str = field(
        default="Helsinki-NLP/opus-mt-de-en", metadata=_help("local folder or cached hub name")
    )
    device: str = field(default="cpu", metadata=_help("device of the translation models"))
    seed: int = field(default=0, metadata=_help("sampling seed"))

    def __post_init__(self) -> None:
        _check_tasks("task", [self.task])
