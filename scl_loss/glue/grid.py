"""The grid of runs: tasks × regime × size × (CE + λ × τ) × samples or seeds.

Every run is described by a JSON-able *spec*; its key is a hash of the spec, so re-running the
same command skips the runs already in the journal, and a changed setting makes a new run.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from scl_loss.glue.data import DataSource, load_augmented
from scl_loss.glue.tasks import get_task
from scl_loss.glue.training import TrainSettings

__all__ = ["RUN_INFO", "GridConfig", "expand_grid", "run_key"]

RUN_INFO = "scl_glue_run.json"  # written next to a saved model: the spec that produced it


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
