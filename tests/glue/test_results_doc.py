"""docs/results.md quotes generated output only: every table row that `scl-glue report` and
experiments/paired.py produce from the committed journals appears in it verbatim."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

from scl_loss.glue.cli import main as scl_glue

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "experiments/results"
DOC = (ROOT / "docs/results.md").read_text(encoding="utf-8")


def table_rows(markdown: str) -> list[str]:
    """Data rows of the markdown tables (not header or rule lines)."""
    lines = markdown.splitlines()
    return [
        line
        for line, nxt in zip(lines, [*lines[1:], ""], strict=True)
        if line.startswith("| ") and not nxt.startswith("|---")
    ]


def journals() -> list[Path]:
    found = [RESULTS / name for name in ("journal.jsonl", "journal-mpnet.jsonl", "table2/journal.jsonl")]
    return [path for path in found if path.is_file()]


def load_experiment(name: str, monkeypatch: pytest.MonkeyPatch):
    """experiments/<name>.py as a module (its folder on sys.path: table3.py imports paired.py)."""
    monkeypatch.syspath_prepend(str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location(name, ROOT / f"experiments/{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("journal", journals(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_report_tables_are_quoted_verbatim(journal, tmp_path):
    assert scl_glue(["report", "--journals", str(journal), "--out", str(tmp_path), "--no_figures"]) == 0
    rows = table_rows((tmp_path / "report.md").read_text(encoding="utf-8"))
    assert rows
    missing = [row for row in rows if row not in DOC]
    assert not missing, f"rows of `scl-glue report {journal.name}` not in docs/results.md: {missing}"


@pytest.mark.parametrize("journal", journals(), ids=lambda p: str(p.relative_to(RESULTS)))
def test_paired_tables_are_quoted_verbatim(journal, tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    paired = load_experiment("paired", monkeypatch)
    out = tmp_path / "paired.md"
    monkeypatch.setattr(sys, "argv", ["paired.py", str(journal), "--out", str(out)])
    paired.main()
    rows = table_rows(out.read_text(encoding="utf-8"))
    assert rows
    missing = [row for row in rows if row not in DOC]
    assert not missing, f"rows of `paired.py {journal.name}` not in docs/results.md: {missing}"


TABLE3 = RESULTS / "table3/journal.jsonl"


@pytest.mark.skipif(not TABLE3.is_file(), reason="no Table 3 journal committed")
def test_table3_tables_are_quoted_verbatim(tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    table3 = load_experiment("table3", monkeypatch)
    out = tmp_path / "table3.md"
    monkeypatch.setattr(sys, "argv", ["table3.py", str(TABLE3), "--out", str(out)])
    table3.main()
    rows = table_rows(out.read_text(encoding="utf-8"))
    assert len(rows) >= 3 * 5  # the mean table, the best-seed table, paired rows, run details
    missing = [row for row in rows if row not in DOC]
    assert not missing, f"rows of `table3.py table3/journal.jsonl` not in docs/results.md: {missing}"


@pytest.mark.skipif(not TABLE3.is_file(), reason="no Table 3 journal committed")
def test_table3_report_is_the_committed_one(tmp_path, monkeypatch):
    """The committed report is what table3.py writes from the committed journal today."""
    pytest.importorskip("scipy")
    table3 = load_experiment("table3", monkeypatch)
    out = tmp_path / "table3.md"
    monkeypatch.setattr(sys, "argv", ["table3.py", str(TABLE3), "--out", str(out)])
    table3.main()
    committed = RESULTS / "table3/report/table3.md"
    assert out.read_text(encoding="utf-8") == committed.read_text(encoding="utf-8")


def _run(loss: str, batch: int, sample: int, test_acc: float, epochs: int = 2) -> dict:
    settings = {
        "per_device_train_batch_size": batch,
        "gradient_accumulation_steps": 1,
        "world_size": 1,
        "learning_rate": 1e-4 * (batch / 16) ** 0.5,
        "micro_batch_size": None if batch == 16 else 32,
        "num_train_epochs": epochs,
    }
    spec = {"task": "mnli", "regime": "fewshot", "shots": 2000, "model": "m", "data": "dir:MNLI"}
    spec.update(split_file=None, validation_size=500, sample=sample, settings=settings, loss=loss)
    spec.update({"lambda": 0.9 if loss == "scl" else None, "tau": 0.3 if loss == "scl" else None})
    result = {"test_acc": test_acc, "val_acc": test_acc, "steps": 4000 // batch, "best_epoch": 2.0}
    result.update(train_loss_last_epoch=1.0, wall_s=60.0)
    return {"key": f"{loss}{batch}{sample}{epochs}", "spec": spec, "result": result}


def test_table3_pairs_by_seed_and_isolates_the_scl_part(monkeypatch):
    pytest.importorskip("scipy")
    table3 = load_experiment("table3", monkeypatch)
    # per seed, CE+SCL − CE is +1, +2, +1 points at 16 and +5, +4, +5 at 256: the interaction is
    # +4, +2, +4, mean 3.33, std 1.15, t = 5 with 2 df: p = 1 − 5/√27 = 0.038 (closed form for 2 df)
    accs = {
        ("scl", 16): [0.80, 0.82, 0.81],
        ("ce", 16): [0.79, 0.80, 0.80],
        ("scl", 256): [0.83, 0.83, 0.84],
        ("ce", 256): [0.78, 0.79, 0.79],
    }
    records = [_run(loss, b, k, a) for (loss, b), values in accs.items() for k, a in enumerate(values)]
    text = table3.tables(records)
    rows = table_rows(text)
    interaction = [r for r in rows if "interaction: (CE+SCL − CE) at B=256 vs at B=16" in r]
    assert interaction == [
        "| MNLI | interaction: (CE+SCL − CE) at B=256 vs at B=16 | 3 | 1.33 | 4.67 | +3.33 ± 1.15 "
        "| [+0.46, +6.20] | 3/0/0 | 0.250 | 0.038 |"
    ]
    assert "| MNLI | CE: B=256 vs B=16 | 3 | 79.67 | 78.67 | -1.00 ± 0.00 |" in text
    assert "| CE+SCL (λ=0.9, τ=0.3) | 256 | 0.0004 | 83.33 ± 0.58 (3) |" in text
    # the best seed by validation is seed 2 for CE+SCL at 16 (val 0.82)
    assert "| CE+SCL (λ=0.9, τ=0.3) | 16 | 0.0001 | 82.00 |" in text
    with pytest.raises(ValueError, match="more than loss, batch and learning rate"):
        table3.tables([*records, _run("ce", 16, 3, 0.5, epochs=3)])
