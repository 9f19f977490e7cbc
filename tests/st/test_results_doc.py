"""docs/results.md quotes the SetFit tables as experiments/setfit/table.py generates them from the
committed runs (experiments/setfit/results/runs.jsonl), row for row."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RUNS = ROOT / "experiments/setfit/results/runs.jsonl"
CONFIG = ROOT / "experiments/setfit/config.json"


def load_table_module():
    spec = importlib.util.spec_from_file_location("setfit_table", ROOT / "experiments/setfit/table.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_doc_quotes_every_generated_row(tmp_path):
    out = tmp_path / "table.md"
    load_table_module().main([str(RUNS), "--out", str(out)])
    rows = [line for line in out.read_text(encoding="utf-8").splitlines() if line.startswith("| ")]
    assert len(rows) > 4
    doc = (ROOT / "docs/results.md").read_text(encoding="utf-8")
    section = doc[doc.index("## SetFit few-shot SST-2") :]
    missing = [row for row in rows if row not in section]
    assert not missing, f"rows of table.py not in docs/results.md's SetFit section: {missing}"


def test_runs_cover_the_config():
    """Every (loss, shots, seed) of the config ran once, so the tables average what the doc states."""
    config = json.loads(CONFIG.read_text(encoding="utf-8"))
    rows = [json.loads(line) for line in RUNS.read_text(encoding="utf-8").splitlines()]
    keys = [(r["loss"], r["shots"], r["seed"]) for r in rows]
    expected = {(loss, n, s) for loss in config["losses"] for n in config["shots"] for s in config["seeds"]}
    assert sorted(keys) == sorted(expected)


def test_table_arithmetic():
    times = {"train_s": 10.0, "train_cpu_s": 5.0, "steps": 40}
    rows = [
        {"loss": loss, "shots": 8, "seed": seed, "accuracy": acc, **times}
        for loss, seed, acc in [
            ("CosineSimilarityLoss", 0, 0.50),
            ("CosineSimilarityLoss", 1, 0.60),
            ("scl_loss SupConLoss", 0, 0.70),
            ("scl_loss SupConLoss", 1, 0.60),
        ]
    ]
    text = load_table_module().tables(rows)
    assert "| 8 | CosineSimilarityLoss | 2 | 55.0 ± 7.1 | 10 ± 0 | 5 ± 0 | 40 |" in text
    assert "| 8 | scl_loss SupConLoss − CosineSimilarityLoss | 2 | 10.0 ± 14.1 | 1/2 |" in text
