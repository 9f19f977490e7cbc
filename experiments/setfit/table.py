"""Markdown tables of the SetFit few-shot runs (``run.py``'s JSONL): accuracy mean ± std per loss and
shots, times, and the per-seed paired differences of our loss against the other two.

    python experiments/setfit/table.py experiments/setfit/results/runs.jsonl
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from pathlib import Path

OURS = "scl_loss SupConLoss"
ORDER = ("CosineSimilarityLoss", "setfit SupConLoss", OURS)


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    mean = statistics.fmean(values) * scale
    std = statistics.stdev(values) * scale if len(values) > 1 else 0.0
    return f"{mean:.{digits}f} ± {std:.{digits}f}"


def tables(rows: list[dict]) -> str:
    runs: dict[tuple[int, str], dict[int, dict]] = defaultdict(dict)
    for row in rows:
        runs[row["shots"], row["loss"]][row["seed"]] = row
    shots = sorted({key[0] for key in runs})
    out = [
        "| shots per class | loss | runs | accuracy % (mean ± std) | train wall s | train CPU s | steps |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    for n in shots:
        for loss in ORDER:
            seeds = runs.get((n, loss))
            if not seeds:
                continue
            group = list(seeds.values())
            out.append(
                f"| {n} | {loss} | {len(group)} | {mean_std([r['accuracy'] for r in group], 100)} "
                f"| {mean_std([r['train_s'] for r in group], digits=0)} "
                f"| {mean_std([r['train_cpu_s'] for r in group], digits=0)} "
                f"| {'/'.join(sorted({str(r['steps']) for r in group}))} |"
            )
    out += [
        "",
        "| shots per class | paired difference (per seed) | pairs | points (mean ± std) | ours higher |",
        "|---:|---|---:|---:|---:|",
    ]
    for n in shots:
        for other in ORDER[:2]:
            ours, theirs = runs.get((n, OURS), {}), runs.get((n, other), {})
            seeds = sorted(set(ours) & set(theirs))
            if not seeds:
                continue
            diffs = [ours[s]["accuracy"] - theirs[s]["accuracy"] for s in seeds]
            wins = sum(d > 0 for d in diffs)
            row = f"| {n} | {OURS} − {other} | {len(seeds)} | {mean_std(diffs, 100)} | {wins}/{len(seeds)} |"
            out.append(row)
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("runs", type=Path, help="run.py's JSONL")
    parser.add_argument("--out", type=Path, help="write here instead of printing")
    cli = parser.parse_args(argv)
    rows = [json.loads(line) for line in cli.runs.read_text(encoding="utf-8").splitlines() if line.strip()]
    text = tables(rows)
    if cli.out:
        cli.out.write_text(text, encoding="utf-8")
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
