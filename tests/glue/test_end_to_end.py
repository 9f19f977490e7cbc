"""split → run (CE and CE+SCL, interrupted and resumed) → report, with a tiny offline model.

Also the full-data regime (Table 2), noisy training sets (Table 5), transfer (Table 7), the
config file, and run keys that do not depend on where the model lies.
"""

from __future__ import annotations

import json
import random
import shutil

import pytest

from scl_loss.glue import runner
from scl_loss.glue.augment import augment_rows, write_augmented
from scl_loss.glue.cli import main
from scl_loss.glue.data import read_file
from scl_loss.glue.journal import read_journal
from scl_loss.glue.tasks import get_task

from .conftest import sentence

FAST = ["--num_train_epochs", 2, "--max_length", 32, "--disable_tqdm", "true", "--learning_rate", 1e-3]
FAST += ["--per_device_train_batch_size", 8]


def run_cli(*args):
    code = main([str(a) for a in args])
    assert code == 0
    return code


def test_split_command_writes_the_audit_file(sst2_like, tmp_path):
    args = [
        "split",
        "--task",
        "sst2",
        "--data_dir",
        sst2_like,
        "--split_seed",
        3,
        "--shots",
        10,
        "--samples",
        4,
    ]
    run_cli(*args, "--out", tmp_path / "split.json")
    split = json.loads((tmp_path / "split.json").read_text())
    assert {"task", "seed", "test", "validation", "train_samples", "files"} <= set(split)
    assert (split["task"], split["seed"]) == ("sst2", 3)
    assert split["files"] == {"train": "train.tsv", "eval": "dev.tsv"}
    assert len(split["test"]) == 20
    assert len(split["validation"]) == 20
    assert not set(split["test"]) & set(split["validation"])
    assert [len(s) for s in split["train_samples"]] == [10] * 4
    run_cli(*args, "--out", tmp_path / "again.json")
    assert json.loads((tmp_path / "again.json").read_text()) == split
    run_cli(*args[:-4], "--regime", "full", "--out", tmp_path / "full.json")
    assert "train_samples" not in json.loads((tmp_path / "full.json").read_text())


def test_few_shot_grid_interrupted_resumed_and_reported(sst2_like, tiny_model_dir, tmp_path, monkeypatch):
    journal = tmp_path / "journal.jsonl"
    args = ["run", "--tasks", "sst2", "--data_dir", sst2_like, "--model", tiny_model_dir, "--shots", 10]
    args += ["--samples", 3, "--lambdas", 0.9, "--taus", 0.3, "--journal", journal]
    args += ["--save_embeddings", tmp_path / "emb", *FAST]
    real_run_one = runner._run_one
    calls, crashed = [], []

    def crash_on_third(spec, cache, key):
        calls.append(key)
        if len(calls) == 3 and not crashed:
            crashed.append(key)
            raise KeyboardInterrupt
        return real_run_one(spec, cache, key)

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
        assert r["result"]["steps"] == 4  # 2 epochs of 2 batches
        assert 0 <= r["result"]["test_acc"] <= 1
        assert r["result"]["best_epoch"] in (1.0, 2.0)

    calls.clear()
    run_cli(*args)  # everything finished: nothing runs
    assert calls == []
    assert len(read_journal(journal)) == 6

    # deterministic: the same run in a fresh journal gives the same numbers
    monkeypatch.setattr(runner, "_run_one", real_run_one)
    again = tmp_path / "again.jsonl"
    run_cli(*[again if a == journal else a for a in args], "--max_runs", 1)
    [rerun] = read_journal(again)
    assert rerun["key"] == records[0]["key"]
    for metric in ("val_acc", "test_acc", "train_loss_last_epoch", "steps", "best_epoch"):
        assert rerun["result"][metric] == records[0]["result"][metric]

    out = tmp_path / "report"
    run_cli("report", "--journals", journal, "--out", out)
    text = (out / "report.md").read_text()
    assert "Table 4" in text
    assert "| SST-2 | 10 |" in text
    assert (out / "table4.csv").read_text().startswith("Task,N,CE,CE+SCL")
    [figure] = (out / "figures").glob("*.png")
    assert figure.read_bytes()[:4] == b"\x89PNG"


def test_run_keys_do_not_depend_on_where_the_model_lies(sst2_like, tiny_model_dir, tmp_path, capsys):
    moved = tmp_path / "elsewhere" / "tiny"
    shutil.copytree(tiny_model_dir, moved)
    args = ["run", "--tasks", "sst2", "--data_dir", sst2_like, "--shots", 6, "--samples", 1, "--ce_only"]
    args += ["--journal", tmp_path / "j.jsonl", "--max_runs", 1, *FAST]
    run_cli(*args, "--model", tiny_model_dir)
    [record] = read_journal(tmp_path / "j.jsonl")
    assert record["spec"]["model"].startswith("sha256:")
    assert str(tiny_model_dir) not in json.dumps(record["spec"])
    capsys.readouterr()
    run_cli(*args, "--model", moved)  # the same files elsewhere: the run is found, not redone
    assert "done: 0 new runs, 1 skipped" in capsys.readouterr().out


def test_shards_split_the_grid_and_merge(sst2_like, tiny_model_dir, tmp_path):
    common = ["run", "--tasks", "sst2", "--data_dir", sst2_like, "--model", tiny_model_dir, "--shots", 6]
    common += ["--samples", 2, "--ce_only", *FAST]
    run_cli(*common, "--shard", "0/2", "--journal", tmp_path / "a.jsonl")
    run_cli(*common, "--shard", "1/2", "--journal", tmp_path / "b.jsonl")
    a, b = read_journal(tmp_path / "a.jsonl"), read_journal(tmp_path / "b.jsonl")
    assert len(a) == len(b) == 1
    assert a[0]["key"] != b[0]["key"]
    run_cli(
        "merge", "--journals", tmp_path / "a.jsonl", tmp_path / "b.jsonl", "--out", tmp_path / "all.jsonl"
    )
    assert {r["key"] for r in read_journal(tmp_path / "all.jsonl")} == {a[0]["key"], b[0]["key"]}
    assert main([*map(str, common), "--shard", "2/2"]) == 2


def write_polarity(folder, n_train=30, n_test=40, seed=1):
    rng = random.Random(seed)
    folder.mkdir()
    for name, n in (("train.csv", n_train), ("test.csv", n_test)):
        rows = [(1 + i % 2, sentence(i % 2, rng)) for i in range(n)]
        (folder / name).write_text("".join(f'"{y}","{s}"\n' for y, s in rows))
    return folder


def test_full_data_noise_and_transfer_tables(sst2_like, tiny_model_dir, tmp_path):
    journal = tmp_path / "journal.jsonl"
    data = ["--tasks", "sst2", "--data_dir", sst2_like, "--model", tiny_model_dir]
    # Table 2: full data, 2 seeds, CE and CE+SCL; keep the models for transfer
    run_cli(
        "run", *data, "--regime", "full", "--seeds", 2, "--lambdas", 0.9, "--taus", 0.3, "--journal", journal,
        "--save_model", tmp_path / "models", *FAST,
    )  # fmt: skip
    full = read_journal(journal)
    assert len(full) == 4
    assert all(r["result"]["train_size"] == 60 for r in full)

    # Table 5: few-shot N=10 with 1:3 paraphrases (stand-in translators: the script accepts any file)
    train = read_file(sst2_like / "train.tsv", get_task("sst2"))
    split = tmp_path / "split.json"
    run_cli("split", "--task", "sst2", "--data_dir", sst2_like, "--shots", 10, "--samples", 3, "--out", split)
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
        "run", *data, "--shots", 10, "--samples", 3, "--lambdas", 0.9, "--taus", 0.3, "--split", split,
        "--augment", tmp_path / "aug.jsonl", "--journal", journal, *FAST,
    )  # fmt: skip
    noisy = read_journal(journal)[4:]
    assert len(noisy) == 6
    assert all(r["result"]["train_size"] == 40 for r in noisy)
    assert all(r["spec"]["augment"] == {"file": "aug.jsonl", "temperature": 0.5} for r in noisy)
    assert all(r["spec"]["split_file"] == "split.json" for r in noisy)

    # Table 7: transfer from the saved SST-2 CE+SCL model to Yelp-2, 5 per class
    scl_model = next(r["model_dir"] for r in full if r["spec"]["loss"] == "scl")
    yelp = write_polarity(tmp_path / "yelp-2")
    run_cli(
        "run", "--tasks", "yelp2", "--data_dir", yelp, "--model", tiny_model_dir, "--init_from", scl_model,
        "--per_class", 5, "--samples", 3, "--ce_only", "--journal", journal, *FAST,
    )  # fmt: skip
    transfer = read_journal(journal)[10:]
    assert len(transfer) == 3
    for r in transfer:
        assert r["spec"]["init"]["loss"] == "scl"
        assert r["spec"]["init"]["model"].startswith("sha256:")
        assert r["result"]["train_size"] == 10

    out = tmp_path / "report"
    run_cli("report", "--journals", journal, "--out", out, "--no_figures")
    text = (out / "report.md").read_text()
    for table in ("Table 2", "Table 5", "Table 7"):
        assert table in text
    assert "| Yelp-2 | 5/class | SST-2 model (scl) |" in text


def test_saved_model_is_the_scored_one(sst2_like, tiny_model_dir, tmp_path):
    """The journal's test metrics are those of the selected (best validation) weights."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from scl_loss.glue.arguments import DataArguments, SampleArguments
    from scl_loss.glue.data import load_task_data, make_split
    from scl_loss.glue.train import task_metrics

    journal = tmp_path / "j.jsonl"
    run_cli(
        "run", "--tasks", "sst2", "--data_dir", sst2_like, "--model", tiny_model_dir, "--shots", 10,
        "--samples", 1, "--ce_only", "--journal", journal, "--save_model", tmp_path / "models",
        "--patience", 0, *FAST, "--num_train_epochs", 4, "--learning_rate", 3e-3,
    )  # fmt: skip
    [record] = read_journal(journal)
    data = load_task_data(get_task("sst2"), DataArguments(data_dir=str(sst2_like)))
    test = data.eval.select(make_split(data, SampleArguments(shots=[10], samples=1), 10).test)
    tokenizer = AutoTokenizer.from_pretrained(record["model_dir"])
    model = AutoModelForSequenceClassification.from_pretrained(record["model_dir"]).eval()
    with torch.no_grad():
        inputs = tokenizer(
            test["text_a"][:], truncation=True, max_length=32, padding=True, return_tensors="pt"
        )
        predictions = model(**inputs).logits.argmax(-1).tolist()
    assert task_metrics(test["label"][:], predictions)["acc"] == record["result"]["test_acc"]


def test_config_file_supplies_defaults(sst2_like, tmp_path, capsys):
    config = tmp_path / "grid.json"
    values = {
        "tasks": ["sst2"],
        "data_dir": str(sst2_like),
        "shots": [10, 20],
        "samples": 2,
        "lambdas": [0.1, 0.9],
    }
    config.write_text(json.dumps({**values, "taus": [0.3], "learning_rate": 1e-4}))
    run_cli("run", "--config", config, "--list_runs")
    planned = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert len(planned) == 2 * 2 * (1 + 2)  # N values × samples × (CE + 2 λ)
    run_cli("run", "--config", config, "--list_runs", "--samples", 1)  # the command line wins
    assert len(capsys.readouterr().out.splitlines()) == 2 * (1 + 2)
    yaml = tmp_path / "grid.yaml"
    yaml.write_text("tasks: [sst2]\nshots: [10]\nsamples: 1\nce_only: true\n")
    run_cli("run", "--config", yaml, "--list_runs")
    assert [json.loads(line)["loss"] for line in capsys.readouterr().out.splitlines()] == ["ce"]
    config.write_text(json.dumps({"tasks": ["sst2"], "bogus": 1}))
    with pytest.raises(SystemExit, match="unknown options"):
        main(["run", "--config", str(config), "--list_runs"])


def test_cli_reports_malformed_data_with_file_and_row(tmp_path, capsys):
    folder = tmp_path / "SST-2"
    folder.mkdir()
    (folder / "dev.tsv").write_text("sentence\tlabel\nfine\t1\nbroken line without label\n")
    code = main(
        [
            "split",
            "--task",
            "sst2",
            "--data_dir",
            str(folder),
            "--regime",
            "full",
            "--out",
            str(tmp_path / "s"),
        ]
    )
    assert code == 2
    assert "dev.tsv:row 1: expected a label in" in capsys.readouterr().err


def test_split_file_must_match_the_requested_size(sst2_like, tiny_model_dir, tmp_path, capsys):
    split = tmp_path / "split.json"
    run_cli("split", "--task", "sst2", "--data_dir", sst2_like, "--shots", 10, "--samples", 1, "--out", split)
    args = ["run", "--tasks", "sst2", "--data_dir", sst2_like, "--model", tiny_model_dir, "--shots", 6]
    args += ["--samples", 1, "--ce_only", "--split", split, "--journal", tmp_path / "j.jsonl", *FAST]
    assert main([str(a) for a in args]) == 2
    assert "has 10 rows, the run asks for 6" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("option", "value", "name"),
    [
        ("--learning_rate", "0", "learning_rate"),
        ("--max_length", "4", "max_length"),
        ("--dropout", "1.0", "dropout"),
        ("--patience", "-1", "patience"),
        ("--micro_batch_size", "0", "micro_batch_size"),
        ("--samples", "0", "samples"),
        ("--seeds", "0", "seeds"),
        ("--shard", "2/2", "shard"),
        ("--tasks", "sst3", "tasks"),
    ],
)
def test_bad_options_name_the_option(option, value, name, tmp_path, capsys):
    args = ["run", "--tasks", "sst2", "--list_runs", "--journal", str(tmp_path / "j.jsonl"), option, value]
    assert main(args) == 2
    assert f"error: {name} must" in capsys.readouterr().err
