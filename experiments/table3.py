"""The batch-size ablation (the paper's Table 3) from a journal: per task, loss and batch size.

`scl-glue report` treats the batch size as one more hyperparameter and picks one per loss; the
ablation needs every batch size side by side, and comparisons between them. Sample k is the
same training set and seed at every batch size and for both losses, so every comparison is
paired by seed:

- the table: test accuracy, mean ± std over the seeds, and the paper's statistic (the test
  accuracy of the best seed by validation accuracy), a column per task;
- paired comparisons (the columns of `paired.py`, p-values uncorrected): CE+SCL at each larger
  batch against batch 16; CE at each larger batch against 16 (the batch effect of training
  itself); CE+SCL against CE at each batch; and the interaction, (CE+SCL − CE) at the larger
  batch against (CE+SCL − CE) at 16, the part of the batch effect that belongs to SCL;
- per configuration: optimiser steps, best epoch, last-epoch training loss and wall time.

    python experiments/table3.py results/table3/journal.jsonl --out table3.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any, NamedTuple

from paired import markdown, pair_row  # experiments/paired.py: the same statistics

from scl_loss.glue.journal import merge_journals
from scl_loss.glue.tasks import GLUE_TASKS, get_task


class Config(NamedTuple):
    """One cell of the ablation: loss (with λ, τ), batch size, and learning rate."""

    loss: str
    lambda_: float | None
    tau: float | None
    batch: int
    lr: float

    @property
    def name(self) -> str:
        return "CE" if self.loss == "ce" else f"CE+SCL (λ={self.lambda_:g}, τ={self.tau:g})"


def config_of(spec: dict[str, Any]) -> Config:
    settings = spec["settings"]
    batch = settings["per_device_train_batch_size"] * settings["gradient_accumulation_steps"]
    batch *= settings["world_size"]
    return Config(spec["loss"], spec["lambda"], spec["tau"], batch, settings["learning_rate"])


def group(records: list[dict[str, Any]]) -> dict[str, dict[Config, dict[int, dict[str, Any]]]]:
    """``{task: {config: {sample: record}}}``; fails on runs that differ in anything else."""
    out: dict[str, dict[Config, dict[int, dict[str, Any]]]] = defaultdict(lambda: defaultdict(dict))
    rest: dict[str, set[str]] = defaultdict(set)
    for r in records:
        spec = r["spec"]
        varying = ("per_device_train_batch_size", "learning_rate", "micro_batch_size")
        others = {k: v for k, v in spec["settings"].items() if k not in varying}
        fixed = {k: spec[k] for k in ("regime", "shots", "model", "data", "split_file", "validation_size")}
        rest[spec["task"]].add(json.dumps({**fixed, **others}, sort_keys=True))
        out[spec["task"]][config_of(spec)][spec["sample"]] = r
    for task, variants in rest.items():
        if len(variants) > 1:
            raise ValueError(f"{task}: runs differ in more than loss, batch and learning rate: {variants}")
    return out


def ordered_tasks(tasks: Any) -> list[str]:
    return [t for t in GLUE_TASKS if t in tasks] + sorted(set(tasks) - set(GLUE_TASKS))


def ordered_configs(configs: Any) -> list[Config]:
    return sorted(configs, key=lambda c: (c.loss != "scl", c.batch))


def cell(runs: dict[int, dict[str, Any]] | None, best: bool) -> str:
    if not runs:
        return "–"
    tests = [100 * r["result"]["test_acc"] for r in runs.values()]
    if best:  # the paper's statistic: the best seed by validation (the first of equals)
        top = min(runs.items(), key=lambda kv: (-kv[1]["result"]["val_acc"], kv[0]))[1]
        return f"{100 * top['result']['test_acc']:.2f}"
    std = statistics.stdev(tests) if len(tests) > 1 else 0.0
    return f"{statistics.fmean(tests):.2f} ± {std:.2f} ({len(tests)})"


def tables(records: list[dict[str, Any]]) -> str:
    grouped = group(records)
    tasks = ordered_tasks(grouped)
    configs = ordered_configs({c for t in tasks for c in grouped[t]})
    display = [get_task(t).display for t in tasks]
    lead = ["Loss", "Bsz", "lr"]

    def row(c: Config, best: bool) -> list[str]:
        cells = [cell(grouped[t].get(c), best) for t in tasks]
        return [c.name, str(c.batch), f"{c.lr:g}", *cells]

    mean_table = markdown(lead + display, [row(c, False) for c in configs])
    best_table = markdown(lead + display, [row(c, True) for c in configs])

    def acc(task: str, c: Config) -> dict[int, float]:
        return {k: r["result"]["test_acc"] for k, r in grouped[task].get(c, {}).items()}

    pair_rows = []
    for task in tasks:
        here = ordered_configs(grouped[task])
        name = get_task(task).display
        for loss in ("scl", "ce"):
            family = [c for c in here if c.loss == loss]
            small = min(family, key=lambda c: c.batch, default=None)
            for big in family:
                if small is not None and big.batch > small.batch:
                    what = f"{big.name}: B={big.batch} vs B={small.batch}"
                    pair_rows.append(pair_row(name, acc(task, small), acc(task, big), what))
        gaps: dict[int, tuple[Config, dict[int, float]]] = {}
        for scl in (c for c in here if c.loss == "scl"):
            ce = next((c for c in here if c.loss == "ce" and (c.batch, c.lr) == (scl.batch, scl.lr)), None)
            if ce is None:
                continue
            a, b = acc(task, ce), acc(task, scl)
            pair_rows.append(pair_row(name, a, b, f"{scl.name} vs CE at B={scl.batch}"))
            gaps[scl.batch] = (scl, {k: b[k] - a[k] for k in set(a) & set(b)})
        if gaps:
            small_batch = min(gaps)
            for batch in sorted(gaps):
                if batch > small_batch:
                    what = f"interaction: (CE+SCL − CE) at B={batch} vs at B={small_batch}"
                    pair_rows.append(pair_row(name, gaps[small_batch][1], gaps[batch][1], what))
    header = [
        "Task",
        "Comparison (second − first)",
        "seeds",
        "first mean",
        "second mean",
        "Δ per seed, mean ± std",
        "95% CI of mean Δ (t)",
        "wins/ties/losses of the second",
        "sign test p",
        "paired t-test p",
    ]

    detail = []
    for task in tasks:
        for c in ordered_configs(grouped[task]):
            runs = list(grouped[task][c].values())
            res = [r["result"] for r in runs]
            mbs = {r["spec"]["settings"]["micro_batch_size"] for r in runs}
            detail.append(
                [
                    get_task(task).display,
                    c.name,
                    str(c.batch),
                    ", ".join("–" if m is None else str(m) for m in sorted(mbs, key=str)),
                    str(len(runs)),
                    "/".join(sorted({str(x["steps"]) for x in res})),
                    f"{statistics.fmean(x['best_epoch'] for x in res):.2f}",
                    f"{statistics.fmean(x['train_loss_last_epoch'] for x in res):.3f}",
                    f"{100 * statistics.fmean(x['val_acc'] for x in res):.2f}",
                    f"{statistics.fmean(x['wall_s'] for x in res):.0f}",
                    f"{sum(x['wall_s'] for x in res) / 60:.1f}",
                ]
            )
    detail_header = [
        "Task",
        "Loss",
        "Bsz",
        "micro-batch",
        "runs",
        "steps",
        "best epoch (mean)",
        "last-epoch train loss (mean)",
        "val acc (mean)",
        "wall s (mean)",
        "wall total (min)",
    ]
    return "\n\n".join(
        [
            f"# Table 3: batch-size ablation ({len(records)} runs)",
            "## Test accuracy, mean ± std over seeds (number of seeds)",
            mean_table,
            "## Test accuracy of the best seed by validation accuracy (the paper's statistic)",
            best_table,
            "## Paired comparisons by seed (test accuracy, %)",
            markdown(header, pair_rows),
            "## Runs: optimiser steps, selection, training loss and wall time",
            markdown(detail_header, detail),
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("journals", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    text = tables(merge_journals(args.journals))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
