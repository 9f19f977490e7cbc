"""Journal → the paper's tables (Markdown + CSV) and tSNE figures, by the selection rules of the
paper's §4–5 (docs/glue.md, "report")."""

from __future__ import annotations

import csv
import json
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from scl_loss.glue.tasks import GLUE_TASKS, get_task

__all__ = ["Combination", "Selection", "Setting", "combination_of", "select", "setting_of", "write_report"]

TOP_K = 3


class Setting(NamedTuple):
    """What makes runs comparable (a table row): runs of different settings are never pooled."""

    task: str
    regime: str
    shots: int | None
    per_class: int | None
    augment: Any  # the paraphrases' temperature (or file), None without
    init: Any  # the starting model's loss (or hash), None from the pre-trained encoder
    model: str
    data: str  # data, split seed, split file, validation size: runs with other test sets never pool


class Combination(NamedTuple):
    """What the selection chooses between: the loss, λ, τ and the training settings (epochs, lr, ...)."""

    loss: str
    lambda_: float | None
    tau: float | None
    settings: str


@dataclass
class Selection:
    """A combination of one setting and loss family, and its reported numbers."""

    setting: Setting
    loss: str
    lambda_: float | None
    tau: float | None
    runs: int  # of the combination
    val: float  # the mean validation accuracy of the runs used
    test: float
    test_std: float | None  # None: the test accuracy of the best-of-seeds model (full data)
    extra: dict[str, float]  # test MCC and F1, like test
    used: list[dict[str, Any]]  # the records, best validation accuracy first

    @property
    def best_record(self) -> dict[str, Any]:
        return self.used[0]


def setting_of(spec: dict[str, Any]) -> Setting:
    augment, init = spec.get("augment"), spec.get("init")
    return Setting(
        spec["task"],
        spec["regime"],
        spec["shots"],
        spec["per_class"],
        None if augment is None else (augment.get("temperature") or augment.get("file")),
        None if init is None else (init.get("loss") or init.get("model")),
        spec["model"],
        json.dumps({k: spec.get(k) for k in ("data", "split_seed", "split_file", "validation_size")}),
    )


def combination_of(spec: dict[str, Any]) -> Combination:
    return Combination(
        spec["loss"], spec["lambda"], spec["tau"], json.dumps(spec.get("settings"), sort_keys=True)
    )


def _score(setting: Setting, combo: Combination, runs: list[dict[str, Any]]) -> Selection:
    """Full data: every seed, test of the best one; few-shot: the top ``TOP_K`` samples, mean ± std."""
    ranked = sorted(runs, key=lambda r: (-r["result"]["val_acc"], r["spec"]["sample"]))
    full = setting.regime == "full"
    used = ranked if full else ranked[:TOP_K]
    results = [r["result"] for r in used]
    if full:
        test, std = results[0]["test_acc"], None
        extra = {k: results[0][f"test_{k}"] for k in ("mcc", "f1")}
    else:
        tests = [r["test_acc"] for r in results]
        test, std = statistics.fmean(tests), statistics.stdev(tests) if len(tests) > 1 else 0.0
        extra = {k: statistics.fmean(r[f"test_{k}"] for r in results) for k in ("mcc", "f1")}
    val = statistics.fmean(r["val_acc"] for r in results)
    scl = combo.loss == "scl"
    lam, tau = ((combo.lambda_ or 0.0), (combo.tau or 0.0)) if scl else (None, None)
    return Selection(setting, combo.loss, lam, tau, len(runs), val, test, std, extra, used)


def select(records: list[dict[str, Any]]) -> list[Selection]:
    """The chosen combination of every setting × loss family present."""
    groups: dict[Setting, dict[Combination, list[dict[str, Any]]]] = {}
    for record in records:
        spec = record["spec"]
        groups.setdefault(setting_of(spec), {}).setdefault(combination_of(spec), []).append(record)
    out = []
    for setting, combos in sorted(groups.items(), key=lambda kv: str(tuple(kv[0]))):
        for family in ("ce", "scl"):
            scored = [_score(setting, c, runs) for c, runs in combos.items() if c.loss == family]
            if scored:  # the best validation score; ties go to the smaller λ, then the smaller τ
                out.append(max(scored, key=lambda s: (s.val, -(s.lambda_ or 0.0), -(s.tau or 0.0))))
    return out


def _pct(x: float) -> str:
    return f"{100 * x:.2f}"


def _cell(sel: Selection | None) -> str:
    if sel is None:
        return "–"
    value = _pct(sel.test) if sel.test_std is None else f"{_pct(sel.test)} ± {_pct(sel.test_std)}"
    return value + (f" (λ={sel.lambda_:g}, τ={sel.tau:g})" if sel.loss == "scl" else "")


def _size(setting: Setting) -> str:
    return str(setting.shots) if setting.shots is not None else f"{setting.per_class}/class"


class Table(NamedTuple):
    title: str
    header: list[str]
    rows: list[list[str]]


def build_tables(selections: list[Selection]) -> dict[str, Table]:
    """``{table id: (title, header, rows)}`` for every table that has data."""
    by = {(s.setting, s.loss): s for s in selections}
    settings = sorted({s.setting for s in selections}, key=lambda st: str(tuple(st)))
    tables: dict[str, Table] = {}

    full = [st for st in settings if st.regime == "full" and st.augment is None and st.init is None]
    if full:
        tasks = [t for t in GLUE_TASKS if any(st.task == t for st in full)]
        tasks += sorted({st.task for st in full} - set(tasks))
        extras = [(t, get_task(t).metric) for t in tasks if get_task(t).metric]
        header = ["Loss", *(get_task(t).display for t in tasks)]
        header += [f"{get_task(t).display} {str(m).upper()}" for t, m in extras]
        first: dict[str, Setting] = {}  # a task's column shows its first setting
        for st in full:
            first.setdefault(st.task, st)
        rows = []
        for loss, name in (("ce", "CE"), ("scl", "CE+SCL")):
            chosen = {t: by.get((first[t], loss)) for t in tasks}
            row = [name, *(_cell(chosen[t]) for t in tasks)]
            rows.append(
                row + ["–" if chosen[t] is None else _pct(chosen[t].extra[str(m)]) for t, m in extras]
            )
        title = "Table 2: full training data, test accuracy of the best-of-seeds model by validation accuracy"
        tables["table2"] = Table(title, header, rows)

    def loss_rows(chosen: list[Setting], lead: Any) -> list[list[str]]:
        rows = []
        for st in chosen:
            ce, scl = by.get((st, "ce")), by.get((st, "scl"))
            delta = "–" if ce is None or scl is None else f"{100 * (scl.test - ce.test):+.2f}"
            rows.append([*lead(st), _cell(ce), _cell(scl), delta])
        return rows

    few = [st for st in settings if st.regime == "fewshot"]
    if plain := [st for st in few if st.augment is None and st.init is None]:
        tables["table4"] = Table(
            "Table 4: few-shot, mean ± std test accuracy of the top-3 of the training samples",
            ["Task", "N", "CE", "CE+SCL", "Δ"],
            loss_rows(plain, lambda st: [get_task(st.task).display, _size(st)]),
        )
    if noise := [st for st in few if st.augment is not None and st.init is None]:
        tables["table5"] = Table(
            "Table 5: noisy (back-translated) training sets, mean ± std test accuracy of the top-3",
            ["Task", "N", "T", "CE", "CE+SCL", "Δ"],
            loss_rows(noise, lambda st: [get_task(st.task).display, _size(st), str(st.augment)]),
        )
    if transfer := [st for st in settings if st.init is not None]:
        tables["table7"] = Table(
            "Table 7: transfer from a fine-tuned SST-2 model, mean ± std test accuracy of the top-3",
            ["Target", "N", "Start", "CE", "CE+SCL", "Δ"],
            loss_rows(
                transfer, lambda st: [get_task(st.task).display, _size(st), f"SST-2 model ({st.init})"]
            ),
        )
    return tables


def tsne_figures(selections: list[Selection], folder: Path) -> list[Path]:
    """One PNG per setting with embeddings for both losses: tSNE of test Φ, CE | CE+SCL."""
    by: dict[Setting, dict[str, Selection]] = {}
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

        task, size = get_task(setting.task), _size(setting)
        fig, axes = plt.subplots(1, 2, figsize=(10, 4.5))
        for ax, loss, title in zip(axes, ("ce", "scl"), ("CE", "CE+SCL"), strict=True):
            data = np.load(paths[loss])
            feats = data["features"] / np.linalg.norm(data["features"], axis=1, keepdims=True).clip(1e-12)
            perplexity = float(min(30, max(2, len(feats) // 4)))
            tsne = TSNE(n_components=2, perplexity=perplexity, random_state=0, init="pca")
            points = tsne.fit_transform(feats)
            for label in sorted(set(data["labels"].tolist())):
                keep = data["labels"] == label
                ax.scatter(points[keep, 0], points[keep, 1], s=6, label=task.label_names[label])
            accuracy = _pct(pair[loss].best_record["result"]["test_acc"])
            ax.set(title=f"{title} (test acc {accuracy})", xticks=[], yticks=[])
        axes[0].legend(loc="best", fontsize=8)
        fig.suptitle(f"tSNE of test-set Φ: {task.display}, {setting.regime}, N={size}")
        fig.tight_layout()
        parts = (setting.task, setting.regime, size.replace("/", "per"), setting.augment, setting.init)
        target = folder / f"tsne-{'-'.join(str(x) for x in parts if x not in (None, ''))}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(target, dpi=120)
        plt.close(fig)
        written.append(target)
    return written


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def write_report(records: list[dict[str, Any]], out: str | Path, *, figures: bool = True) -> dict[str, Path]:
    """Write ``report.md``, ``selections.csv``, one CSV per table and the figures; return the paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    selections = select(records)
    written: dict[str, Path] = {}
    parts = [f"# Results ({len(records)} runs)\n"]
    for name, (title, header, rows) in build_tables(selections).items():
        markdown = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        markdown += ["| " + " | ".join(row) + " |" for row in rows]
        parts.append(f"## {title}\n\n" + "\n".join(markdown) + "\n")
        written[name] = _write_csv(out / f"{name}.csv", header, rows)
    chosen = [
        {
            **{name: getattr(s.setting, name) for name in Setting._fields if name != "data"},
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
            "data": s.setting.data,
            "best_key": s.best_record["key"],
            "best_model_dir": s.best_record.get("model_dir"),
        }
        for s in selections
    ]
    header = list(chosen[0]) if chosen else ["task"]
    written["selections"] = _write_csv(out / "selections.csv", header, [list(c.values()) for c in chosen])
    if figures:
        for path in tsne_figures(selections, out / "figures"):
            parts.append(f"![{path.stem}](figures/{path.name})\n")
            written[path.stem] = path
    (out / "report.md").write_text("\n".join(parts), encoding="utf-8")
    written["markdown"] = out / "report.md"
    return written
