"""split → run (CE and CE+SCL, interrupted and resumed) → report, with a tiny offline model.

Also the full-data regime (Table 2), noisy training sets (Table 5) and transfer (Table 7).
"""

from __future__ import annotations

import json
import random

import pytest

from scl_loss.glue import runner
from scl_loss.glue.augment import augment_rows, write_augmented
from scl_loss.glue.cli import main
from scl_loss.glue.journal import read_journal
from scl_loss.glue.loaders import load_file
from scl_loss.glue.tasks import get_task

from .conftest import sentence

FAST = ["--epochs", "2", "--max-length", "32", "--quiet", "--lr", "1e-3", "--batch-size", "8"]


def run_cli(*args):
    code = main([str(a) for a in args])
    assert code == 0
    return code


def test_split_command_writes_the_audit_file(sst2_like, tmp_path):
    out = tmp_path / "split.json"
    run_cli(
        "split",
        "--task",
        "sst2",
        "--data-dir",
        sst2_like,
        "--seed",
        3,
        "--shots",
        10,
        "--samples",
        4,
        "--out",
        out,
    )
    split = json.loads(out.read_text())
    assert {"task", "seed", "test", "validation", "train_samples"} <= set(split)
    assert (split["task"], split["seed"]) == ("sst2", 3)
    assert len(split["test"]) == 20
    assert len(split["validation"]) == 20
    assert not set(split["test"]) & set(split["validation"])
    assert [len(s) for s in split["train_samples"]] == [10] * 4
    run_cli(
        "split",
        "--task",
        "sst2",
        "--data-dir",
        sst2_like,
        "--seed",
        3,
        "--shots",
        10,
        "--samples",
        4,
        "--out",
        tmp_path / "again.json",
    )
    assert json.loads((tmp_path / "again.json").read_text()) == split


def test_few_shot_grid_interrupted_resumed_and_reported(sst2_like, tiny_model_dir, tmp_path, monkeypatch):
    journal = tmp_path / "journal.jsonl"
    args = [
        "run",
        "--tasks",
        "sst2",
        "--data-dir",
        sst2_like,
        "--model",
        tiny_model_dir,
        "--shots",
        10,
        "--samples",
        3,
        "--lambdas",
        0.9,
        "--taus",
        0.3,
        "--journal",
        journal,
        "--save-embeddings",
        tmp_path / "emb",
        *FAST,
    ]
    real_run_one = runner._run_one
    calls = []

    crashed = []

    def crash_on_third(spec, cache, options, key):
        calls.append(key)
        if len(calls) == 3 and not crashed:
            crashed.append(key)
            raise KeyboardInterrupt
        return real_run_one(spec, cache, options, key)

    monkeypatch.setattr(runner, "_run_one", crash_on_third)
    assert main([str(a) for a in args]) == 130
    first = read_journal(journal)
    assert [r["key"] for r in first] == calls[:2]

    calls.clear()
    run_cli(*args)
    records = read_journal(journal)
    assert len(records) == 6 == len({r["key"] for r in records})  # (CE + one CE+SCL) × 3 samples
    assert records[:2] == first  # finished runs kept, not redone
    assert len(calls) == 4
    assert {r["spec"]["loss"] for r in records} == {"ce", "scl"}
    for r in records:
        assert r["result"]["train_size"] == 10
        assert r["result"]["wall_s"] > 0
        assert 0 <= r["result"]["test_acc"] <= 1

    calls.clear()
    run_cli(*args)  # everything finished: nothing runs
    assert calls == []
    assert len(read_journal(journal)) == 6

    # deterministic: the same run in a fresh journal gives the same numbers
    monkeypatch.setattr(runner, "_run_one", real_run_one)
    again = tmp_path / "again.jsonl"
    run_cli(*[again if a == journal else a for a in args], "--max-runs", 1)
    [rerun] = read_journal(again)
    assert rerun["key"] == records[0]["key"]
    for metric in ("val_acc", "test_acc", "train_loss_last_epoch", "steps"):
        assert rerun["result"][metric] == records[0]["result"][metric]

    out = tmp_path / "report"
    run_cli("report", journal, "--out", out)
    text = (out / "report.md").read_text()
    assert "Table 4" in text
    assert "| SST-2 | 10 |" in text
    assert (out / "table4.csv").read_text().startswith("Task,N,CE,CE+SCL")
    [figure] = (out / "figures").glob("*.png")
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_shards_split_the_grid_and_merge(sst2_like, tiny_model_dir, tmp_path):
    common = [
        "run",
        "--tasks",
        "sst2",
        "--data-dir",
        sst2_like,
        "--model",
        tiny_model_dir,
        "--shots",
        6,
        "--samples",
        2,
        "--ce-only",
        *FAST,
    ]
    run_cli(*common, "--shard", "0/2", "--journal", tmp_path / "a.jsonl")
    run_cli(*common, "--shard", "1/2", "--journal", tmp_path / "b.jsonl")
    a, b = read_journal(tmp_path / "a.jsonl"), read_journal(tmp_path / "b.jsonl")
    assert len(a) == len(b) == 1
    assert a[0]["key"] != b[0]["key"]
    run_cli("merge", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--out", tmp_path / "all.jsonl")
    assert {r["key"] for r in read_journal(tmp_path / "all.jsonl")} == {a[0]["key"], b[0]["key"]}
    with pytest.raises(ValueError, match="shard must"):
        runner.parse_shard("2/2")


def write_polarity(folder, n_train=30, n_test=40, seed=1):
    rng = random.Random(seed)
    folder.mkdir()
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        rows = [(1 + i % 2, sentence(i % 2, rng)) for i in range(n)]
        (folder / name).write_text("".join(f'"{y}","{s}"\n' for y, s in rows))
    return folder


def test_full_data_noise_and_transfer_tables(sst2_like, tiny_model_dir, tmp_path):
    journal = tmp_path / "journal.jsonl"
    data = ["--tasks", "sst2", "--data-dir", sst2_like, "--model", tiny_model_dir]
    # Table 2: full data, 2 seeds, CE and CE+SCL; keep the models for transfer
    run_cli(
        "run",
        *data,
        "--regime",
        "full",
        "--seeds",
        2,
        "--lambdas",
        0.9,
        "--taus",
        0.3,
        "--journal",
        journal,
        "--save-model",
        tmp_path / "models",
        *FAST,
    )
    full = read_journal(journal)
    assert len(full) == 4
    assert all(r["result"]["train_size"] == 60 for r in full)

    # Table 5: few-shot N=10 with 1:3 paraphrases (stand-in translators: the script accepts any file)
    task = get_task("sst2")
    train = load_file(sst2_like / "train.tsv", task)
    split = tmp_path / "split.json"
    run_cli("split", "--task", "sst2", "--data-dir", sst2_like, "--shots", 10, "--samples", 3, "--out", split)
    rows = sorted({r for s in json.loads(split.read_text())["train_samples"] for r in s})
    items = augment_rows(
        train,
        rows,
        forward=lambda t, T: [x.upper() for x in t],
        backward=lambda t, T: [x.lower() + " the" for x in t],
        temperature=0.5,
    )
    write_augmented(tmp_path / "aug.jsonl", items)
    run_cli(
        "run",
        *data,
        "--shots",
        10,
        "--samples",
        3,
        "--lambdas",
        0.9,
        "--taus",
        0.3,
        "--split",
        split,
        "--augment",
        tmp_path / "aug.jsonl",
        "--journal",
        journal,
        *FAST,
    )
    noisy = read_journal(journal)[4:]
    assert len(noisy) == 6
    assert all(r["result"]["train_size"] == 40 for r in noisy)
    assert all(r["spec"]["augment"]["temperature"] == 0.5 for r in noisy)

    # Table 7: transfer from the saved SST-2 CE+SCL model to Yelp-2, 5 per class
    scl_model = next(r["model_dir"] for r in full if r["spec"]["loss"] == "scl")
    yelp = write_polarity(tmp_path / "yelp-2")
    run_cli(
        "run",
        "--tasks",
        "yelp2",
        "--data-dir",
        yelp,
        "--model",
        tiny_model_dir,
        "--init-from",
        scl_model,
        "--per-class",
        5,
        "--samples",
        3,
        "--ce-only",
        "--journal",
        journal,
        *FAST,
    )
    transfer = read_journal(journal)[10:]
    assert len(transfer) == 3
    assert all(r["spec"]["init"]["loss"] == "scl" and r["result"]["train_size"] == 10 for r in transfer)

    out = tmp_path / "report"
    run_cli("report", journal, "--out", out, "--no-figures")
    text = (out / "report.md").read_text()
    for table in ("Table 2", "Table 5", "Table 7"):
        assert table in text
    assert "| Yelp-2 | 5/class | SST-2 model (scl) |" in text


def test_config_file_supplies_defaults(sst2_like, tiny_model_dir, tmp_path, capsys):
    config = tmp_path / "grid.json"
    config.write_text(
        json.dumps(
            {
                "tasks": ["sst2"],
                "data_dir": str(sst2_like),
                "shots": [10, 20],
                "samples": 2,
                "lambdas": [0.1, 0.9],
                "taus": [0.3],
            }
        )
    )
    run_cli("run", "--config", config, "--list")
    planned = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(planned) == 2 * 2 * (1 + 2)  # N values × samples × (CE + 2 λ)
    config.write_text(json.dumps({"tasks": ["sst2"], "bogus": 1}))
    with pytest.raises(SystemExit, match="unknown options"):
        main(["run", "--config", str(config), "--list"])


def test_cli_reports_malformed_data_with_file_and_line(tmp_path, capsys):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "dev.tsv").write_text("sentence\tlabel\nfine\t1\nbroken line without label\n")
    code = main(["split", "--task", "sst2", "--data-dir", str(folder), "--out", str(tmp_path / "s.json")])
    assert code == 2
    assert "dev.tsv:3: expected 2 tab-separated fields" in capsys.readouterr().err


def test_split_file_must_match_the_requested_size(sst2_like, tiny_model_dir, tmp_path, capsys):
    split = tmp_path / "split.json"
    run_cli("split", "--task", "sst2", "--data-dir", sst2_like, "--shots", 10, "--samples", 1, "--out", split)
    args = ["run", "--tasks", "sst2", "--data-dir", sst2_like, "--model", tiny_model_dir, "--shots", 6]
    args += ["--samples", 1, "--ce-only", "--split", split, "--journal", tmp_path / "j.jsonl", *FAST]
    assert main([str(a) for a in args]) == 2
    assert "has 10 rows, the run asks for 6" in capsys.readouterr().err


def test_train_from_eval_samples_outside_test_and_validation(tmp_path):
    folder = write_polarity(tmp_path / "yelp-2", n_train=0, n_test=40)
    (folder / "train.csv").unlink()
    out = tmp_path / "split.json"
    run_cli(
        "split",
        "--task",
        "yelp2",
        "--data-dir",
        folder,
        "--train-from-eval",
        "--validation-size",
        10,
        "--per-class",
        3,
        "--samples",
        4,
        "--out",
        out,
    )
    split = json.loads(out.read_text())
    held_out = set(split["test"]) | set(split["validation"])
    assert len(split["test"]) == 20
    assert len(split["validation"]) == 10
    for sample in split["train_samples"]:
        assert len(sample) == 6
        assert not set(sample) & held_out
    labels = [e.label for e in load_file(folder / "test.csv", get_task("yelp2"))]
    assert all(sorted(labels[i] for i in s) == [0, 0, 0, 1, 1, 1] for s in split["train_samples"])


def test_torchrun_environment_picks_the_shard(monkeypatch):
    monkeypatch.setenv("RANK", "3")
    monkeypatch.setenv("WORLD_SIZE", "4")
    assert runner.parse_shard(None) == (3, 4)
    assert runner.parse_shard("1/2") == (1, 2)  # an explicit shard wins
    monkeypatch.delenv("RANK")
    monkeypatch.delenv("WORLD_SIZE")
    assert runner.parse_shard(None) == (0, 1)


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("lr", 0.0),
        ("batch_size", 0),
        ("epochs", 0),
        ("warmup_ratio", 1.0),
        ("patience", 0),
        ("dropout", 1.0),
        ("scl_reduction", "max"),
    ],
)
def test_train_settings_reject_bad_values(field, value):
    from scl_loss.glue.training import TrainSettings

    with pytest.raises(ValueError, match=field):
        TrainSettings(**{field: value})
