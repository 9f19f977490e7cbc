"""``run --data-parallel`` under torchrun trains the same model as one process on the whole batch.

Two ranks on CPU (gloo), global batch 3 over 10 training rows: batches split 2+1 and the
last one (1 row) 1+0, so uneven shares and an empty rank are both exercised; dropout 0
makes the single-process run deterministic. The contract (docs/distributed.md) says the
gradients, hence the updates, are equal, so the selected models and the journal's metrics
must agree. The model is a float64 copy of the tiny test model: in float32, Adam turns the
rounding differences of the two summation orders in near-zero gradient components into
lr-sized steps (SCL run: up to 5e-4 apart after 8 steps), which would hide a real error.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from scl_loss.glue.cli import main
from scl_loss.glue.journal import read_journal
from scl_loss.glue.parallel import World, share

REPO = Path(__file__).resolve().parents[2]


def _run_args(data: Path, model: Path, journal: Path, saved: Path) -> list[str]:
    return [
        "run",
        "--tasks",
        "sst2",
        "--data-dir",
        str(data),
        "--model",
        str(model),
        "--shots",
        "10",
        "--samples",
        "1",
        "--lambdas",
        "0.9",
        "--taus",
        "0.3",
        "--batch-size",
        "3",
        "--epochs",
        "2",
        "--patience",
        "0",
        "--dropout",
        "0",
        "--lr",
        "1e-3",
        "--max-length",
        "32",
        "--quiet",
        "--journal",
        str(journal),
        "--save-model",
        str(saved),
    ]


def _state(folder: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(folder / "model.safetensors")


@pytest.fixture
def tiny_model_float64(tiny_model_dir: Path, tmp_path: Path) -> Path:
    """The tiny model saved in float64 (transformers loads it in the dtype it was saved in)."""
    from transformers import AutoModelForSequenceClassification

    folder = tmp_path / "tiny-bert-float64"
    shutil.copytree(tiny_model_dir, folder)
    AutoModelForSequenceClassification.from_pretrained(folder).double().save_pretrained(folder)
    return folder


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_torchrun_data_parallel_matches_one_process(sst2_like, tiny_model_float64, tmp_path):
    tiny_model_dir = tiny_model_float64
    one = _run_args(sst2_like, tiny_model_dir, tmp_path / "one.jsonl", tmp_path / "one")
    assert main(one) == 0

    two = _run_args(sst2_like, tiny_model_dir, tmp_path / "two.jsonl", tmp_path / "two")
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "scl_loss.glue", *two, "--data-parallel", "--threads", "1"]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("done: 2 new runs") == 1, done.stdout  # rank 0 alone reports

    single = {r["key"]: r for r in read_journal(tmp_path / "one.jsonl")}
    parallel = {r["key"]: r for r in read_journal(tmp_path / "two.jsonl")}
    assert len(single) == 2  # CE and CE+SCL
    assert sorted(parallel) == sorted(single)  # each written once, by rank 0
    for key, record in single.items():
        got, want = parallel[key], record
        assert got["processes"] == 2
        for metric in ("val_acc", "test_acc", "steps", "best_epoch"):
            assert got["result"][metric] == want["result"][metric], metric
        assert got["result"]["train_loss_last_epoch"] == pytest.approx(
            want["result"]["train_loss_last_epoch"], rel=1e-9
        )
        a, b = _state(Path(want["model_dir"])), _state(Path(got["model_dir"]))
        initial = _state(tiny_model_dir)
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == torch.float64, name
            torch.testing.assert_close(b[name], a[name], rtol=1e-7, atol=1e-9, msg=name)
        # The runs did train: the selected model is not the initial one.
        assert any(not torch.equal(a[n], initial[n]) for n in a if n in initial)


def test_share_splits_a_batch_in_rank_order():
    rows = [9, 4, 7, 1, 3]
    for size in (1, 2, 3, 7):
        parts = [share(rows, World(rank, size)) for rank in range(size)]
        assert [row for part in parts for row in part] == rows
        assert max(map(len, parts)) - min(map(len, parts)) <= 1


def test_data_parallel_needs_torchrun_and_refuses_shards(monkeypatch, tmp_path):
    base = ["run", "--tasks", "sst2", "--journal", str(tmp_path / "j.jsonl"), "--data-parallel"]
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    with pytest.raises(SystemExit, match="under torchrun"):
        main(base)
    with pytest.raises(SystemExit, match="drop --shard"):
        main([*base, "--shard", "0/2"])
