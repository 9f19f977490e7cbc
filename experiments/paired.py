"""Paired CE vs CE+SCL comparison over all training samples, and wall time per run.

The paper's tables (and `scl-glue report`) give mean ± std of the top 3 of 10 samples; with
n = 3 that says little about whether SCL helps. Here every sample k is trained with both
losses on the *same* training set, so the difference SCL_k − CE_k is a paired measurement:

- for every setting, CE against the CE+SCL combination that `report` chose (by validation),
  over the samples both have: mean test accuracy of each over *all* samples, mean ± std of the
  per-sample difference with a 95% t interval for its mean, wins/ties/losses of SCL, an
  exact two-sided sign test and the two-sided paired t-test p-value (uncorrected: with several
  settings and grid points, one p below 0.05 is expected by chance alone);
- for every setting, CE against each CE+SCL grid point in turn (no selection between points);
- for the transfer settings (a CE and a CE+SCL starting model), CE from the CE model against
  CE+SCL from the CE+SCL model, as in the paper's Table 7;
- wall time per run (the journal's `wall_s`) for every setting and loss.

    python experiments/paired.py results/experiments/journal.jsonl --out paired.md
"""

from __future__ import annotations

import argparse
import json
import statistics
from collections import defaultdict
from math import comb
from pathlib import Path
from typing import Any

from scl_loss.glue.journal import merge_journals
from scl_loss.glue.report import Combination, Setting, combination_of, select, setting_of
from scl_loss.glue.tasks import get_task


def sign_test(wins: int, losses: int) -> float:
    """Exact two-sided sign test p-value (ties dropped)."""
    n = wins + losses
    if n == 0:
        return 1.0
    tail = sum(comb(n, i) for i in range(min(wins, losses) + 1)) / 2**n
    return min(1.0, 2 * tail)


def label(setting: Setting) -> str:
    if setting.regime == "full":
        size = "full data"
    else:
        size = f"N={setting.shots}" if setting.shots else f"{setting.per_class}/class"
    start = f", from the SST-2 {setting.init} model" if setting.init else ""
    return f"{get_task(setting.task).display} {size}{start}"


def ordered(items: Any) -> list[Any]:
    """Settings and combinations in the report's order (by their values as a plain tuple)."""
    return sorted(items, key=lambda item: str(tuple(item)))


def pair_row(name: str, ce: dict[int, float], scl: dict[int, float], scl_name: str) -> list[str]:
    common = sorted(set(ce) & set(scl))
    if not common:
        return [name, scl_name, "0", "–", "–", "–", "–", "–", "–", "–"]
    diffs = [100 * (scl[k] - ce[k]) for k in common]
    wins = sum(d > 0 for d in diffs)
    losses = sum(d < 0 for d in diffs)
    std = statistics.stdev(diffs) if len(diffs) > 1 else 0.0
    mean = statistics.fmean(diffs)
    if len(diffs) > 1:
        from scipy.stats import t  # comes with scikit-learn (the glue extra)

        sem = std / len(diffs) ** 0.5
        half = t.ppf(0.975, len(diffs) - 1) * sem
        interval = f"[{mean - half:+.2f}, {mean + half:+.2f}]"
        if sem > 0:
            t_p = f"{2 * t.sf(abs(mean) / sem, len(diffs) - 1):.3f}"
        else:  # every sample moved by the same amount
            t_p = "1.000" if mean == 0 else "0.000"
    else:
        interval = t_p = "–"
    return [
        name,
        scl_name,
        str(len(common)),
        f"{100 * statistics.fmean(ce[k] for k in common):.2f}",
        f"{100 * statistics.fmean(scl[k] for k in common):.2f}",
        f"{mean:+.2f} ± {std:.2f}",
        interval,
        f"{wins}/{len(common) - wins - losses}/{losses}",
        f"{sign_test(wins, losses):.3f}",
        t_p,
    ]


def markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("journals", nargs="+")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()
    records = merge_journals(args.journals)

    # test accuracy per (setting, combination) and sample
    acc: dict[Setting, dict[Combination, dict[int, float]]] = defaultdict(lambda: defaultdict(dict))
    for r in records:
        acc[setting_of(r["spec"])][combination_of(r["spec"])][r["spec"]["sample"]] = r["result"]["test_acc"]
    chosen = {(s.setting, s.loss): combination_of(s.best_record["spec"]) for s in select(records)}

    def scl_name(combo: Combination) -> str:
        return f"λ={combo.lambda_}, τ={combo.tau}"

    rows = []
    transfer: dict[Setting, dict[str, tuple[Setting, Combination]]] = defaultdict(dict)
    for setting in ordered(acc):
        ce, scl = chosen.get((setting, "ce")), chosen.get((setting, "scl"))
        if setting.init is not None:  # transfer: pair across the two starting models below
            rest = setting._replace(init=None)
            for loss, combo in (("ce", ce), ("scl", scl)):
                if combo is not None and setting.init == loss:
                    transfer[rest][loss] = (setting, combo)
            continue
        if ce is not None and scl is not None:
            rows.append(pair_row(label(setting), acc[setting][ce], acc[setting][scl], scl_name(scl)))
    # Every CE+SCL grid point against CE (no selection between grid points, so no selection
    # bias; with several points, read each interval on its own, not as a family).
    grid_rows = []
    for setting in ordered(acc):
        ce = chosen.get((setting, "ce"))
        if setting.init is not None or ce is None:
            continue
        for combo in ordered(c for c in acc[setting] if c.loss == "scl"):
            grid_rows.append(pair_row(label(setting), acc[setting][ce], acc[setting][combo], scl_name(combo)))
    for rest in ordered(transfer):
        found = transfer[rest]
        if "ce" in found and "scl" in found:
            (s_ce, c_ce), (s_scl, c_scl) = found["ce"], found["scl"]
            name = label(s_ce).split(",")[0] + ": CE from CE model vs CE+SCL from CE+SCL model"
            rows.append(pair_row(name, acc[s_ce][c_ce], acc[s_scl][c_scl], scl_name(c_scl)))

    timing: dict[tuple[str, str], list[float]] = defaultdict(list)
    for r in records:
        loss = "CE" if r["spec"]["loss"] == "ce" else f"CE+SCL λ={r['spec']['lambda']}, τ={r['spec']['tau']}"
        timing[(label(setting_of(r["spec"])), loss)].append(r["result"]["wall_s"])
    time_rows = [
        [
            name,
            loss,
            str(len(w)),
            f"{statistics.fmean(w):.0f}",
            f"{min(w):.0f}",
            f"{max(w):.0f}",
            f"{sum(w) / 60:.1f}",
        ]
        for (name, loss), w in sorted(timing.items())
    ]

    header = [
        "Setting",
        "CE+SCL combination",
        "samples",
        "CE mean",
        "CE+SCL mean",
        "Δ per sample, mean ± std",
        "95% CI of mean Δ (t)",
        "SCL wins/ties/losses",
        "sign test p",
        "paired t-test p",
    ]
    text = "\n\n".join(
        [
            "## Paired comparison over all samples (test accuracy, %)",
            markdown(header, rows),
            "## Every CE+SCL grid point against CE (same columns)",
            markdown(header, grid_rows),
            "## Wall time per run (s, from the journal's `wall_s`)",
            markdown(["Setting", "Loss", "runs", "mean", "min", "max", "total (min)"], time_rows),
        ]
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text + "\n", encoding="utf-8")
    print(text)
    print(json.dumps({"wrote": args.out}))


if __name__ == "__main__":
    main()
