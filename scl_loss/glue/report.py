"""Journal → the paper's tables (Markdown + CSV) and tSNE figures.

Selection rules (paper §4, §5):

- full data: per setting and loss, the (λ, τ) combination with the best *mean* validation
  accuracy over seeds is chosen; the table shows the test accuracy of its best-of-seeds model
  by validation accuracy;
- few-shot (and noise, transfer): per combination, the 3 samples with the best validation
  accuracy; the combination whose top 3 have the best mean validation accuracy is chosen; the
  table shows mean ± std (sample std, ddof = 1) of those 3 test accuracies.

A *combination* is (loss, λ, τ, training settings): runs with other epochs or learning rates in
the same journal compete like other hyperparameters. A *setting* (a table row) is task, regime,
size, augmentation, starting model, encoder, and data + split: runs with different test sets are
never pooled.
"""

from __future__ import annotations

import csv
import json
import statistics
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scl_loss.glue.tasks import GLUE_TASKS, get_task

__all__ = ["Selection", "select", "write_report"]

TOP_K = 3


@dataclass
class Selection:
    """The chosen combination of one setting and loss family, and its reported numbers."""

    setting: tuple[Any, ...]
    loss: str
    lambda_: float | None
    tau: float | None
    runs: int
    val: float
    test: float
    test_std: float | None
    extra: dict[str, float]
    best_record: dict[str, Any]
    used: list[dict[str, Any]]


def setting_of(spec: dict[str, Any]) -> tuple[Any, ...]:
    """What makes runs comparable: task, regime, size, augmentation, starting model."""
    augment = spec.get("augment")
    init = spec.get("init")
    aug_tag = None if augment is None else (augment.get("temperature") or augment.get("file"))
    init_tag = None if init is None else (init.get("loss") or init.get("path"))
    # Runs on different data or splits have different test sets: never pooled.
    data = json.dumps({k: spec.get(k) for k in ("data", "split_seed", "split_file", "validation_size")})
    return (
        spec["task"],
        spec["regime"],
        spec["shots"],
        spec["per_class"],
        aug_tag,
        init_tag,
        spec["model"],
        data,
    )


def combination_of(spec: dict[str, Any]) -> tuple[str, Any, Any, str]:
    """What the selection chooses between: the loss, λ, τ and the training settings (epochs, lr, ...)."""
    return (spec["loss"], spec["lambda"], spec["tau"], json.dumps(spec.get("settings"), sort_keys=True))


def _mean(values: Iterable[float]) -> float:
    return statistics.fmean(values)


def select(records: list[dict[str, Any]], top_k: int = TOP_K) -> list[Selection]:
    """Apply the selection rules to every setting × loss family present."""
    groups: dict[tuple[Any, ...], dict[tuple[str, Any, Any, str], list[dict[str, Any]]]] = {}
    for record in records:
        spec = record["spec"]
        groups.setdefault(setting_of(spec), {}).setdefault(combination_of(spec), []).append(record)
    out = []
    for setting, combos in sorted(groups.items(), key=lambda kv: str(kv[0])):
        full = setting[1] == "full"
        for family in ("ce", "scl"):
            candidates = []
            for (loss, lam, tau, _), runs in combos.items():
                if loss != family:
                    continue
                ranked = sorted(runs, key=lambda r: (-r["result"]["val_acc"], r["spec"]["sample"]))
                used = ranked if full else ranked[:top_k]
                candidates.append(
                    (_mean(r["result"]["val_acc"] for r in used), lam or 0.0, tau or 0.0, used, len(runs))
                )
            if not candidates:
                continue
            val, lam, tau, used, n = max(candidates, key=lambda c: (c[0], -c[1], -c[2]))
            best = used[0]
            if full:
                test, std = best["result"]["test_acc"], None
                extra = {k: best["result"][f"test_{k}"] for k in ("mcc", "f1")}
            else:
                tests = [r["result"]["test_acc"] for r in used]
                test = _mean(tests)
                std = statistics.stdev(tests) if len(tests) > 1 else 0.0
                extra = {k: _mean(r["result"][f"test_{k}"] for r in used) for k in ("mcc", "f1")}
            out.append(
                Selection(
                    setting,
                    family,
                    lam if family == "scl" else None,
                    tau if family == "scl" else None,
                    n,
                    val,
                    test,
                    std,
                    extra,
                    best,
                    used,
                )
            )
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _cell(sel: Selection | None) -> str:
    if sel is None:
        return "–"
    value = _pct(sel.test) if sel.test_std is None else f"{_pct(sel.test)} ± {_pct(sel.test_std)}"
    return value + (f" (λ={sel.lambda_:g}, τ={sel.tau:g})" if sel.loss == "scl" else "")


def _markdown(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


def _size(setting: tuple[Any, ...]) -> str:
    return str(setting[2]) if setting[2] is not None else f"{setting[3]}/class"


def build_tables(selections: list[Selection]) -> dict[str, tuple[str, list[str], list[list[str]]]]:
    """``{table id: (title, header, rows)}`` for every table that has data."""
    by = {(s.setting, s.loss): s for s in selections}
    settings = sorted({s.setting for s in selections}, key=str)
    tables: dict[str, tuple[str, list[str], list[list[str]]]] = {}

    full = [st for st in settings if st[1] == "full" and st[4] is None and st[5] is None]
    if full:
        tasks = [t for t in GLUE_TASKS if any(st[0] == t for st in full)]
        tasks += sorted({st[0] for st in full} - set(tasks))
        header = ["Loss", *(get_task(t).display for t in tasks)]
        extras = [(t, m) for t, m in (("cola", "mcc"), ("mrpc", "f1")) if t in tasks]
        header += [f"{get_task(t).display} {m.upper()}" for t, m in extras]
        rows = []
        for loss, name in (("ce", "CE"), ("scl", "CE+SCL")):
            row = [name]
            for t in tasks:
                row.append(_cell(next((by.get((st, loss)) for st in full if st[0] == t), None)))
            for t, m in extras:
                sel = next((by.get((st, loss)) for st in full if st[0] == t), None)
                row.append("–" if sel is None else _pct(sel.extra[m]))
            rows.append(row)
        tables["table2"] = (
            "Table 2: full training data, test accuracy of the best-of-seeds model by validation accuracy",
            header,
            rows,
        )

    def few(kind: str) -> list[tuple[Any, ...]]:
        chosen = [st for st in settings if st[1] == "fewshot"]
        if kind == "plain":
            return [st for st in chosen if st[4] is None and st[5] is None]
        if kind == "noise":
            return [st for st in chosen if st[4] is not None and st[5] is None]
        return [st for st in settings if st[5] is not None]

    def loss_rows(chosen: list[tuple[Any, ...]], lead: Any) -> list[list[str]]:
        rows = []
        for st in chosen:
            ce, scl = by.get((st, "ce")), by.get((st, "scl"))
            delta = "–" if ce is None or scl is None else f"{100 * (scl.test - ce.test):+.2f}"
            rows.append([*lead(st), _cell(ce), _cell(scl), delta])
        return rows

    if plain := few("plain"):
        rows = loss_rows(plain, lambda st: [get_task(st[0]).display, _size(st)])
        tables["table4"] = (
            "Table 4: few-shot, mean ± std test accuracy of the top-3 of the training samples",
            ["Task", "N", "CE", "CE+SCL", "Δ"],
            rows,
        )
    if noise := few("noise"):
        rows = loss_rows(noise, lambda st: [get_task(st[0]).display, _size(st), str(st[4])])
        tables["table5"] = (
            "Table 5: noisy (back-translated) training sets, mean ± std test accuracy of the top-3",
            ["Task", "N", "T", "CE", "CE+SCL", "Δ"],
            rows,
        )
    if transfer := few("transfer"):
        rows = loss_rows(transfer, lambda st: [get_task(st[0]).display, _size(st), f"SST-2 model ({st[5]})"])
        tables["table7"] = (
            "Table 7: transfer from a fine-tuned SST-2 model, mean ± std test accuracy of the top-3",
            ["Target", "N", "Start", "CE", "CE+SCL", "Δ"],
            rows,
        )
    return tables


def _csv_rows(selections: list[Selection]) -> list[dict[str, Any]]:
    return [
        {
            "task": s.setting[0],
            "regime": s.setting[1],
            "shots": s.setting[2],
            "per_class": s.setting[3],
            "augment": s.setting[4],
            "init": s.setting[5],
            "model": s.setting[6],
            "loss": s.loss,
            "lambda": s.lambda_,
            "tau": s.tau,
            "runs": s.runs,
            "used": len(s.used),
            "val_acc": s.val,
            "test_acc": s.test,
            "test_acc_std": s.test_std,
            "test_mcc": s.extra["mcc"],
            "test_f1": s.extra["f1"],
            "settings": json.dumps(s.best_record["spec"].get("settings"), sort_keys=True),
            "data": s.setting[7],
            "best_key": s.best_record["key"],
            "best_model_dir": s.best_record.get("model_dir"),
        }
        for s in selections
    ]


def tsne_figures(selections: list[Selection], folder: Path) -> list[Path]:
    """One PNG per setting with embeddings for both losses: tSNE of test Φ, CE | CE+SCL."""
    by: dict[tuple[Any, ...], dict[str, Selection]] = {}
    for s in selections:
        by.setdefault(s.setting, {})[s.loss] = s
    written = []
    for setting, pair in by.items():
        paths = {loss: pair[loss].best_record.get("embeddings") for loss in ("ce", "scl") if loss in pair}
        if len(paths) < 2 or not all(p and Path(p).is_file() for p in paths.values()):
            continue
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np
        from sklearn.manifold import TSNE

        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        for ax, loss, title in zip(axes, ("ce", "scl"), ("CE", "CE+SCL"), strict=True):
            data = np.load(paths[loss])
            feats = data["features"] / np.linalg.norm(data["features"], axis=1, keepdims=True).clip(1e-12)
            perplexity = float(min(30, max(2, len(feats) // 4)))
            points = TSNE(n_components=2, perplexity=perplexity, random_state=0, init="pca").fit_transform(
                feats
            )
            for label in sorted(set(data["labels"].tolist())):
                keep = data["labels"] == label
                ax.scatter(
                    points[keep, 0], points[keep, 1], s=6, label=get_task(setting[0]).label_names[label]
                )
            ax.set_title(f"{title} (test acc {_pct(pair[loss].best_record['result']['test_acc'])})")
            ax.set_xticks([])
            ax.set_yticks([])
        axes[0].legend(loc="best", fontsize=8)
        fig.suptitle(f"tSNE of test-set Φ: {get_task(setting[0]).display}, {setting[1]}, N={_size(setting)}")
        fig.tight_layout()
        name = "-".join(
            str(x)
            for x in (
                setting[0],
                setting[1],
                _size(setting).replace("/", "per"),
                setting[4] or "",
                setting[5] or "",
            )
            if x != ""
        )
        target = folder / f"tsne-{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=120)
        plt.close(fig)
        written.append(target)
    return written


def write_report(records: list[dict[str, Any]], out: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``selections.csv``, one CSV per table and the figures; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selections = select(records)
    tables = build_tables(selections)
    written: dict[str, Path] = {}
    parts = [f"# Results ({len(records)} runs)\n"]
    for name, (title, header, rows) in tables.items():
        parts.append(f"## {title}\n\n{_markdown(header, rows)}\n")
        target = out / f"{name}.csv"
        with target.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(header)
            writer.writerows(rows)
        written[name] = target
    target = out / "selections.csv"
    rows_csv = _csv_rows(selections)
    with target.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(rows_csv[0]) if rows_csv else ["task"])
        writer.writeheader()
        writer.writerows(rows_csv)
    written["selections"] = target
    if figures:
        for path in tsne_figures(selections, out / "figures"):
            parts.append(f"![{path.stem}](figures/{path.name})\n")
            written[path.stem] = path
    (out / "report.md").write_text("\n".join(parts), encoding="utf-8")
    written["markdown"] = out / "report.md"
    return written
