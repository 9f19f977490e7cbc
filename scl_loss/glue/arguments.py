"""Every option of ``scl-glue``, declared once, as dataclasses for ``transformers.HfArgumentParser``."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

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
    "RunArguments",
    "SampleArguments",
    "SplitArguments",
]


def opt(default: Any, help: str) -> Any:
    """A field with a default (a list default is copied for each instance) and its ``--help`` text."""
    if isinstance(default, list):
        return field(default_factory=lambda: list(default), metadata={"help": help})
    return field(default=default, metadata={"help": help})


def required(help: str) -> Any:
    return field(metadata={"help": help})


def _check(name: str, ok: bool, value: object, expected: str) -> None:
    if not ok:
        raise ValueError(f"{name} must be {expected}, got {value!r}")


@dataclass
class DataArguments:
    """Where a task's data comes from: a task folder, a root of task folders, or the hub (default)."""

    data_dir: str | None = opt(None, "a task folder (GLUE TSV, CSV, JSON, JSONL, LABEL TEXT lines)")
    data_root: str | None = opt(None, "a folder of task folders named as in GLUE (SST-2, ..., yelp-2)")
    train_file: str | None = opt(None, "training file: a name inside the task folder, or a path")
    eval_file: str | None = opt(None, "the GLUE validation file: a name inside the task folder, or a path")
    hub_dataset: str | None = opt(None, "hub dataset instead of the task's default (nyu-mll/glue)")

    def __post_init__(self) -> None:
        _check(
            "data_dir", not (self.data_dir and self.data_root), self.data_dir, "unset when data_root is set"
        )


@dataclass
class SampleArguments:
    """The protocol's split: test, validation and (few-shot) training samples."""

    regime: Literal["fewshot", "full"] = opt("fewshot", "few-shot samples, or the full training set")
    shots: list[int] = opt([20], "few-shot N values")
    per_class: int | None = opt(None, "few-shot with this many examples of every class instead of N")
    samples: int = opt(10, "few-shot training samples per N")
    split_seed: int = opt(0, "seed of the test/validation/sample split")
    validation_size: int = opt(500, "validation rows (the paper's ~500)")

    def __post_init__(self) -> None:
        _check("shots", bool(self.shots) and min(self.shots) >= 1, self.shots, "one or more N >= 1")
        _check("per_class", self.per_class is None or self.per_class >= 1, self.per_class, ">= 1")
        _check("samples", self.samples >= 1, self.samples, ">= 1")
        _check("validation_size", self.validation_size >= 1, self.validation_size, ">= 1")


@dataclass
class SplitArguments:
    """``split``: write the protocol's rows for one task as a JSON audit file."""

    task: str = required("task name")
    out: str = required("JSON file to write")


@dataclass
class GridArguments:
    """``run``: tasks × sizes × (CE + λ × τ) × samples or seeds, each run appended to a journal."""

    tasks: list[str] = opt([], "task names")
    seeds: int = opt(10, "full data: seeds per combination")
    lambdas: list[float] = opt([0.1, 0.3, 0.5, 0.7, 0.9, 1.0], "λ values of the grid")
    taus: list[float] = opt([0.1, 0.3, 0.5, 0.7], "τ values of the grid")
    ce: bool = opt(True, "include the CE baseline (--no_ce: leave it out)")
    ce_only: bool = opt(False, "only the CE baseline")
    split: str | None = opt(None, "split JSON (from `split`) instead of computing the split")
    augment: str | None = opt(None, "JSONL of paraphrases (from `augment`) to add to the training rows")

    def __post_init__(self) -> None:
        _check("tasks", bool(self.tasks), self.tasks, 'one or more task names (or "tasks" in --config)')
        for task in self.tasks:  # before any data is read
            _check("tasks", task.lower().replace("-", "") in TASKS, task, f"tasks among {', '.join(TASKS)}")
        _check("seeds", self.seeds >= 1, self.seeds, ">= 1")
        _check("ce", self.ce or not self.ce_only, self.ce, "True with ce_only")


@dataclass
class ModelArguments:
    """``run``: the encoder, its inputs, and the SCL options of ``SCLTrainer``."""

    model: str = opt("roberta-large", "hub name or local folder")
    init_from: str | None = opt(None, "start from this fine-tuned model folder (transfer, Table 7)")
    max_length: int = opt(128, "tokens per input (truncation)")
    dropout: float = opt(0.1, "every dropout probability of the encoder and head")
    scl_reduction: Literal["mean", "sum"] = opt("mean", "SCL over anchors: mean, or the paper's sum")
    patience: int = opt(3, "stop after this many evaluations without a better one; 0: never")
    micro_batch_size: int | None = opt(None, "exact gradient caching: the encoder sees micro-batches")
    gather_distributed: bool = opt(True, "under torchrun/accelerate: SCL contrasts every rank's batch")

    def __post_init__(self) -> None:
        _check("max_length", self.max_length >= 8, self.max_length, ">= 8")
        _check("dropout", 0 <= self.dropout < 1, self.dropout, "in [0, 1)")
        _check("patience", self.patience >= 0, self.patience, ">= 0")
        mbs = self.micro_batch_size
        _check("micro_batch_size", mbs is None or mbs >= 1, mbs, ">= 1")


@dataclass
class ExecutionArguments:
    """``run``: the journal, how this process shares the grid, what it keeps."""

    journal: str = opt("results/journal.jsonl", "results journal (resumable)")
    shard: str = opt("0/1", "i/n: run every n-th run starting at i")
    max_runs: int | None = opt(None, "stop after this many new runs")
    save_model: str | None = opt(None, "folder to save each run's selected model in")
    save_embeddings: str | None = opt(None, "folder to save each run's test-set Φ in (tSNE figures)")
    list_runs: bool = opt(False, "print the planned runs and exit")
    config: str | None = opt(None, "JSON or YAML file of option defaults; command-line options win")

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
    """``TrainingArguments`` with the paper's settings (§4) and the protocol's evaluation as defaults:
    Adam at a constant rate (after the warm-up, none by default), no clipping; validation after
    every epoch selects by accuracy; the best weights stay in memory (no checkpoints)."""

    learning_rate: float = opt(1e-5, "Adam learning rate (paper: 1e-5)")
    per_device_train_batch_size: int = opt(16, "batch size per device (paper: 16)")
    per_device_eval_batch_size: int = opt(64, "evaluation batch size per device")
    num_train_epochs: float = opt(10.0, "maximum epochs")
    lr_scheduler_type: str = opt("constant_with_warmup", "learning rate schedule")
    max_grad_norm: float = opt(0.0, "gradient clipping norm; 0: none (paper)")
    eval_strategy: str = opt("epoch", "when to evaluate on validation")
    logging_strategy: str = opt("epoch", "when to log the training loss")
    save_strategy: str = opt("no", "checkpoints (none: the best weights stay in memory)")
    metric_for_best_model: str | None = opt("acc", "validation metric that selects the epoch")
    seed: int = opt(0, "base seed: run k (sample or seed index) uses seed + k")

    def __post_init__(self) -> None:
        super().__post_init__()
        _check("learning_rate", self.learning_rate > 0, self.learning_rate, "> 0")


@dataclass
class RunArguments:
    """Everything ``run`` is given: its option dataclasses, in the order the command parses them."""

    grid: GridArguments
    sample: SampleArguments
    data: DataArguments
    model: ModelArguments
    execution: ExecutionArguments
    training: GlueTrainingArguments


@dataclass
class ReportArguments:
    """``report``: journal(s) → the paper's tables (Markdown, CSV) and tSNE figures."""

    journals: list[str] = required("journal files (merged, one record per run)")
    out: str = opt("results/report", "output folder")
    figures: bool = opt(True, "tSNE figures (--no_figures: tables only)")


@dataclass
class MergeArguments:
    """``merge``: journals → one journal, one record per run."""

    journals: list[str] = required("journal files")
    out: str = required("journal to write (records already there are kept)")


@dataclass
class AugmentArguments:
    """``augment``: back-translate training rows (en→de→en) into noisy paraphrases (Table 5)."""

    task: str = required("task name")
    out: str = required("output folder: one augmented-T<temperature>.jsonl per T")
    split: str | None = opt(None, "paraphrase only the rows of this split's train_samples (default: all)")
    temperatures: list[float] = opt([0.3, 0.5, 0.7, 0.9], "sampling temperatures T")
    copies: int = opt(3, "paraphrases per example (1:3 in the paper)")
    en_de: str = opt("Helsinki-NLP/opus-mt-en-de", "local folder or cached hub name")
    de_en: str = opt("Helsinki-NLP/opus-mt-de-en", "local folder or cached hub name")
    device: str = opt("cpu", "device of the translation models")
    seed: int = opt(0, "sampling seed")
