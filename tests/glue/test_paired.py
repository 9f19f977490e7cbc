"""experiments/paired.py: the paired CE vs CE+SCL comparison of docs/results.md."""

from __future__ import annotations

import importlib.util
import json
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def paired():
    pytest.importorskip("scipy")
    spec = importlib.util.spec_from_file_location("paired", ROOT / "experiments/paired.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def record(loss: str, lam: float | None, tau: float | None, sample: int, val: float, test: float) -> dict:
    spec = {
        "task": "sst2",
        "regime": "fewshot",
        "shots": 20,
        "per_class": None,
        "augment": None,
        "init": None,
        "model": "m",
        "loss": loss,
        "lambda": lam,
        "tau": tau,
        "sample": sample,
        "settings": {"lr": 1e-4},
    }
    result = {"val_acc": val, "test_acc": test, "test_mcc": 0.0, "test_f1": 0.0, "wall_s": 10.0 + sample}
    return {"key": f"{loss}{lam}{tau}{sample}", "spec": spec, "result": result}


@pytest.mark.parametrize(
    ("wins", "losses", "p"), [(5, 0, 2 / 32), (5, 5, 1.0), (0, 0, 1.0), (9, 1, 22 / 1024)]
)
def test_sign_test_is_the_exact_binomial_two_sided_p(paired, wins, losses, p):
    assert paired.sign_test(wins, losses) == pytest.approx(p)


def test_pair_row_uses_only_samples_both_losses_finished(paired):
    ce = {0: 0.50, 1: 0.60, 2: 0.70, 3: 0.80}
    scl = {0: 0.55, 1: 0.58, 2: 0.70}  # sample 3 unfinished: left out of the pairing
    row = paired.pair_row("S", ce, scl, "λ=0.9, τ=0.3")
    diffs = [5.0, -2.0, 0.0]
    assert row[2] == "3"
    assert row[3] == "60.00"
    assert row[4] == "61.00"
    assert row[5] == f"{statistics.fmean(diffs):+.2f} ± {statistics.stdev(diffs):.2f}"
    assert row[7] == "1/1/1"
    assert row[8] == "1.000"
    # the paired t-test, computed independently by scipy
    from scipy.stats import ttest_rel

    p_value = ttest_rel([55.0, 58.0, 70.0], [50.0, 60.0, 70.0]).pvalue
    assert row[9] == f"{p_value:.3f}"


def test_report_pairs_the_chosen_point_and_every_grid_point(paired, tmp_path, monkeypatch):
    ce = [0.50, 0.52, 0.54, 0.56, 0.58]
    records = [record("ce", None, None, k, 0.6, ce[k]) for k in range(5)]
    # (0.9, 0.3): better on validation and +2 points on every sample; (0.5, 0.1): −1 point.
    records += [record("scl", 0.9, 0.3, k, 0.7, ce[k] + 0.02) for k in range(5)]
    records += [record("scl", 0.5, 0.1, k, 0.5, ce[k] - 0.01) for k in range(5)]
    journal = tmp_path / "journal.jsonl"
    journal.write_text("".join(json.dumps(r) + "\n" for r in records))
    out = tmp_path / "paired.md"
    monkeypatch.setattr(sys, "argv", ["paired.py", str(journal), "--out", str(out)])
    paired.main()
    text = out.read_text()
    chosen, grid, timing = text.split("## ")[1:]
    assert (
        "λ=0.9, τ=0.3 | 5 | 54.00 | 56.00 | +2.00 ± 0.00 | [+2.00, +2.00] | 5/0/0 | 0.062 | 0.000 |" in chosen
    )
    assert "λ=0.5" not in chosen  # selection chose (0.9, 0.3) on validation
    assert "+2.00 ± 0.00" in grid
    assert "λ=0.5, τ=0.1 | 5 | 54.00 | 53.00 | -1.00 ± 0.00" in grid
    assert "0/0/5" in grid
    assert "| CE | 5 | 12 | 10 | 14 | 1.0 |" in timing
