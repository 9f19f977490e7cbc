"""examples/sentence_transformers_supcon.py runs end to end (both ways) on real SST-2 rows, tiny settings."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("setfit", reason="needs the [st] extra: pip install -e '.[st]'")

ROOT = Path(__file__).resolve().parents[2]
SST2 = ROOT.parent / "shared" / "data" / "glue" / "SST-2"


@pytest.mark.slow
@pytest.mark.parametrize("cached", [[], ["--mini-batch-size", "3"]], ids=["SupConLoss", "CachedSupConLoss"])
def test_example_runs_both_ways(minilm_path, capsys, cached):
    if not (SST2 / "dev.tsv").is_file():
        pytest.skip(f"real SST-2 not found at {SST2} (CI clones the repo next to shared/)")
    spec = importlib.util.spec_from_file_location(
        "example", ROOT / "examples/sentence_transformers_supcon.py"
    )
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    argv = [
        "--data-dir",
        str(SST2),
        "--model",
        minilm_path,
        "--shots",
        "4",
        "--epochs",
        "1",
        "--dev-size",
        "16",
    ]
    scores = example.main([*argv, "--batch-size", "8"])
    assert set(scores) == {"sentence-transformers", "setfit"}
    assert all(0.0 <= accuracy <= 1.0 for accuracy in scores.values())
    assert "setfit: accuracy" in capsys.readouterr().out
