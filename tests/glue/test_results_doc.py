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
    found = [RESULTS / name for name in ("journal.jsonl", "journal-mpnet.jsonl")]
    return [path for path in found if path.is_file()]


@pytest.mark.parametrize("journal", journals(), ids=lambda p: p.name)
def test_report_tables_are_quoted_verbatim(journal, tmp_path):
    assert scl_glue(["report", "--journals", str(journal), "--out", str(tmp_path), "--no_figures"]) == 0
    rows = table_rows((tmp_path / "report.md").read_text(encoding="utf-8"))
    assert rows
    missing = [row for row in rows if row not in DOC]
    assert not missing, f"rows of `scl-glue report {journal.name}` not in docs/results.md: {missing}"


@pytest.mark.parametrize("journal", journals(), ids=lambda p: p.name)
def test_paired_tables_are_quoted_verbatim(journal, tmp_path, monkeypatch):
    pytest.importorskip("scipy")
    spec = importlib.util.spec_from_file_location("paired", ROOT / "experiments/paired.py")
    paired = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(paired)
    out = tmp_path / "paired.md"
    monkeypatch.setattr(sys, "argv", ["paired.py", str(journal), "--out", str(out)])
    paired.main()
    rows = table_rows(out.read_text(encoding="utf-8"))
    assert rows
    missing = [row for row in rows if row not in DOC]
    assert not missing, f"rows of `paired.py {journal.name}` not in docs/results.md: {missing}"
