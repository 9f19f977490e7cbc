"""docs/distributed.md's example: its torchrun command lines run as written, and its script is the file."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

REPO = Path(__file__).resolve().parent.parent
DOC = REPO / "docs" / "distributed.md"
SCRIPT = REPO / "examples" / "ddp_train.py"


def _torchrun_lines() -> list[str]:
    return re.findall(r"^torchrun .*$", DOC.read_text(), flags=re.MULTILINE)


def test_the_docs_show_the_example_script_verbatim() -> None:
    doc = DOC.read_text()
    marker = "The whole of `examples/ddp_train.py`:\n\n```python\n"
    assert marker in doc
    shown = doc.split(marker, 1)[1].split("```\n", 1)[0]
    assert shown == SCRIPT.read_text()


@pytest.mark.skipif(
    not (dist.is_available() and dist.is_gloo_available()), reason="needs torch.distributed with gloo"
)
@pytest.mark.parametrize("command", _torchrun_lines())
def test_torchrun_command_from_the_docs_runs(command: str) -> None:
    argv = shlex.split(command)
    # `torchrun` is the console script of `python -m torch.distributed.run`: use this interpreter's.
    argv = [sys.executable, "-m", "torch.distributed.run", *argv[1:]]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    # Rank 0 alone reports; the toy problem is easy, so training must have worked.
    reports = re.findall(r"train accuracy ([0-9.]+)", done.stdout)
    assert len(reports) == 1, done.stdout
    assert float(reports[0]) > 0.9, done.stdout
    losses = [float(x) for x in re.findall(r"mean loss ([0-9.]+)", done.stdout)]
    assert losses == sorted(losses, reverse=True), f"loss did not decrease: {losses}"
