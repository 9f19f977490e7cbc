"""Multi-process and gradient-caching runs train the same model as one plain process.

``torchrun --nproc-per-node 2`` on CPU (gloo): the Trainer trains every run data-parallel and
``SCLTrainer(scl_gather_distributed=True)`` contrasts the global batch, so with 8 training rows,
a global batch of 4 (2 per rank) and dropout 0 the selected model and the journal's metrics
equal those of one process with batch 4. ``--micro_batch_size 1`` (exact gradient caching) must
equal the plain run the same way. The model is a float64 copy of the tiny test model, so
summation-order rounding stays far below the tolerance.
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

REPO = Path(__file__).resolve().parents[2]


def _args(data: Path, model: Path, out: Path, batch: int) -> list[str]:
    return [
        "run", "--tasks", "sst2", "--data_dir", str(data), "--model", str(model), "--shots", "8",
        "--samples", "1", "--lambdas", "0.9", "--taus", "0.3", "--per_device_train_batch_size", str(batch),
        "--num_train_epochs", "2", "--patience", "0", "--dropout", "0", "--learning_rate", "1e-3",
        "--max_length", "32", "--disable_tqdm", "true", "--use_cpu", "true",
        "--journal", str(out / "j.jsonl"), "--save_model", str(out / "models"),
    ]  # fmt: skip


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


def _assert_same_runs(want_dir: Path, got_dir: Path, initial: dict[str, torch.Tensor]) -> None:
    want = {r["spec"]["loss"]: r for r in read_journal(want_dir / "j.jsonl")}
    got = {r["spec"]["loss"]: r for r in read_journal(got_dir / "j.jsonl")}
    assert sorted(want) == sorted(got) == ["ce", "scl"]
    for loss, record in want.items():
        for metric in ("val_acc", "test_acc", "steps", "best_epoch"):
            assert got[loss]["result"][metric] == record["result"][metric], (loss, metric)
        assert got[loss]["result"]["train_loss_last_epoch"] == pytest.approx(
            record["result"]["train_loss_last_epoch"], rel=1e-9
        )
        a, b = _state(Path(record["model_dir"])), _state(Path(got[loss]["model_dir"]))
        assert a.keys() == b.keys()
        for name in a:
            assert a[name].dtype == torch.float64, name
            torch.testing.assert_close(b[name], a[name], rtol=1e-7, atol=1e-9, msg=f"{loss} {name}")
        assert any(not torch.equal(a[n], initial[n]) for n in a if n in initial)  # it did train


@pytest.mark.skipif(not (dist.is_available() and dist.is_gloo_available()), reason="needs gloo")
def test_torchrun_trains_the_single_process_model(sst2_like, tiny_model_float64, tmp_path):
    assert main(_args(sst2_like, tiny_model_float64, tmp_path / "one", batch=4)) == 0
    argv = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    argv += ["-m", "scl_loss.glue", *_args(sst2_like, tiny_model_float64, tmp_path / "two", batch=2)]
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", CUDA_VISIBLE_DEVICES="")
    done = subprocess.run(argv, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout + done.stderr
    assert done.stdout.count("done: 2 new runs") == 1, done.stdout  # the main process alone reports
    assert all(r["processes"] == 2 for r in read_journal(tmp_path / "two" / "j.jsonl"))
    _assert_same_runs(tmp_path / "one", tmp_path / "two", _state(tiny_model_float64))


def test_micro_batches_train_the_plain_model(sst2_like, tiny_model_float64, tmp_path):
    assert main(_args(sst2_like, tiny_model_float64, tmp_path / "plain", batch=4)) == 0
    cached = [*_args(sst2_like, tiny_model_float64, tmp_path / "cached", batch=4), "--micro_batch_size", "1"]
    assert main(cached) == 0
    _assert_same_runs(tmp_path / "plain", tmp_path / "cached", _state(tiny_model_float64))
