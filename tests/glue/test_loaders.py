"""Readers: the real files (row and label counts) and clear errors on malformed files."""

from __future__ import annotations

from collections import Counter

import pytest

from scl_loss.glue.loaders import DataFormatError, find_task_files, load_file, records_to_examples
from scl_loss.glue.tasks import get_task

# path, task, rows, label counts by class id — rows from ../shared/data/glue/README.md, counts measured
REAL = [
    ("SST-2/dev.tsv", "sst2", 872, {0: 428, 1: 444}),
    ("CoLA/dev.tsv", "cola", 1043, {0: 322, 1: 721}),
    ("MRPC/dev.tsv", "mrpc", 408, {0: 129, 1: 279}),
    ("MRPC/train.tsv", "mrpc", 3668, {0: 1194, 1: 2474}),
    ("RTE/dev.tsv", "rte", 277, {0: 146, 1: 131}),
    ("QNLI/dev.tsv", "qnli", 5463, {0: 2702, 1: 2761}),
    ("QNLI/train_subset_1k_b.json", "qnli", 1000, None),
    ("QNLI/k-shot/16-13/train.tsv", "qnli", 32, {0: 16, 1: 16}),
    ("MNLI/dev_matched.jsonl", "mnli", 9815, {0: 3479, 1: 3123, 2: 3213}),
    ("MNLI/k-shot/16-13/train.tsv", "mnli", 48, {0: 16, 1: 16, 2: 16}),
    ("yelp-2/hf_dummy_train.csv", "yelp2", 2, {0: 1, 1: 1}),
    ("amazon-2/hf_dummy_test.csv", "amazon2", None, None),
    ("yelp-2/textfooler_yelp_test_1000.txt", "yelp2", 1000, {0: 518, 1: 482}),
]


@pytest.mark.parametrize(("path", "task", "rows", "counts"), REAL)
def test_real_files(glue_data, path, task, rows, counts):
    spec = get_task(task)
    examples = load_file(glue_data / path, spec)
    if rows is not None:
        assert len(examples) == rows
    if counts is not None:
        assert Counter(e.label for e in examples) == counts
    assert all(e.text_a.strip() for e in examples)
    assert all((e.text_b is not None) == spec.pair for e in examples)


def test_real_quirks(glue_data):
    mrpc = load_file(glue_data / "MRPC/dev.tsv", get_task("mrpc"))
    assert mrpc[0].text_a.startswith("He said the foodservice")  # BOM stripped, quotes kept verbatim
    assert mrpc[0].text_b.startswith('"The foodservice')
    cola = load_file(glue_data / "CoLA/dev.tsv", get_task("cola"))
    assert cola[0].text_a == "The sailors rode the breeze clear of the rocks."  # first line is data
    amazon = load_file(glue_data / "amazon-2/hf_dummy_train.csv", get_task("amazon2"))
    assert amazon[0].text_a.startswith("Stuning even for the non-gamer. This sound track")
    assert "\\n" not in " ".join(
        e.text_a for e in load_file(glue_data / "yelp-2/hf_dummy_test.csv", get_task("yelp2"))
    )
    train, dev = find_task_files(glue_data / "MNLI")
    assert train is None
    assert dev.name == "dev_matched.jsonl"
    train, _ = find_task_files(glue_data / "QNLI", train_file="train_subset_9k.json")
    assert train == glue_data / "QNLI" / "train_subset_9k.json"


def write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


MALFORMED = [
    (
        "sst2",
        "train.tsv",
        "sentence\tlabel\ngood film\t1\nbad film\n",
        r"train\.tsv:3: expected 2 tab-separated",
    ),
    (
        "sst2",
        "train.tsv",
        "sentence\tlabel\ngood film\tyes\n",
        r"train\.tsv:2: expected a label in \{0/negative",
    ),
    ("sst2", "train.tsv", "text_x\tlabel\ngood\t1\n", r"train\.tsv:1 \(header\): expected columns one of"),
    (
        "sst2",
        "train.tsv",
        "sentence\tlabel\n\t1\n",
        r"train\.tsv:2: expected non-empty text in column 'sentence'",
    ),
    ("cola", "dev.tsv", "gj04\t1\t\tFine.\ngj04\t1\tOops\n", r"dev\.tsv:2: expected 4 tab-separated fields"),
    (
        "rte",
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n",
        r"dev\.tsv:2: expected a label in \{0/entailment, 1/not_entailment\}",
    ),
    (
        "mnli",
        "dev.jsonl",
        '{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "a"\n',
        r"dev\.jsonl:2: expected one JSON object per line",
    ),
    (
        "mnli",
        "dev.jsonl",
        '{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "a", "label": 1}\n',
        r"dev\.jsonl:2: expected a field 'hypothesis'",
    ),
    (
        "qnli",
        "train.json",
        '{"0": {"text_a": "q", "text_b": "s", "label": "entailment"},\n "1": [1]}',
        r"train\.json:entry '1': expected a JSON object per example",
    ),
    ("qnli", "train.json", '{"0": {"text_a": "q",, }}', r"train\.json:1:22: expected valid JSON"),
    ("yelp2", "train.csv", '"1","fine"\n"3","what"\n', r"train\.csv:row 2: expected a polarity label 1"),
    (
        "amazon2",
        "train.csv",
        '"1","title","text"\n"2","only title"\n',
        r"train\.csv:row 2: expected 3 fields",
    ),
    ("sst2", "train.csv", "sentence,label\ngood,1\nbad\n", r"train\.csv:row 3: expected 2 comma-separated"),
    ("sst2", "train.tsv", "", r"train\.tsv:1: expected a GLUE TSV file"),
    ("yelp2", "test.txt", "1 fine\nnolabel\n", r"test\.txt:2: expected non-empty text"),
]


@pytest.mark.parametrize(("task", "name", "text", "message"), MALFORMED)
def test_malformed_files_name_file_line_and_expectation(tmp_path, task, name, text, message):
    path = write(tmp_path, name, text)
    with pytest.raises(DataFormatError, match=message):
        load_file(path, get_task(task))


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="path must end in one of"):
        load_file(tmp_path / "data.parquet", get_task("sst2"))
    with pytest.raises(FileNotFoundError, match="SST-2 data file not found"):
        load_file(tmp_path / "absent.tsv", get_task("sst2"))
    with pytest.raises(FileNotFoundError, match="no validation file"):
        find_task_files(tmp_path)


def test_csv_and_jsonl_with_generic_columns(tmp_path):
    csv_path = write(tmp_path, "train.csv", 'text_a,text_b,label\n"q, with comma",s,not_entailment\n')
    [ex] = load_file(csv_path, get_task("qnli"))
    assert (ex.text_a, ex.text_b, ex.label) == ("q, with comma", "s", 1)
    jsonl = write(tmp_path, "train.jsonl", '{"sentence": "nice", "label": 1}\n\n')
    assert load_file(jsonl, get_task("sst2"))[0].label == 1


def test_hub_records_use_hub_columns():
    datasets = pytest.importorskip("datasets")
    ds = datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [2], "idx": [0]})
    [ex] = records_to_examples(ds, get_task("mnli"), "nyu-mll/glue:validation_matched")
    assert (ex.text_a, ex.text_b, ex.label) == ("p", "h", 2)
    bad = datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [7]})
    with pytest.raises(DataFormatError, match="row 0: expected a label"):
        records_to_examples(bad, get_task("mnli"), "hub")


def test_hub_is_the_default_source(monkeypatch):
    """Without a data folder, nyu-mll/glue is read (here through a stand-in for load_dataset)."""
    datasets = pytest.importorskip("datasets")
    from scl_loss.glue.data import DataSource, load_task_data

    calls = []

    def fake_load_dataset(*args, split):
        calls.append((*args, split))
        return datasets.Dataset.from_dict({"premise": ["p", "q"], "hypothesis": ["h", "i"], "label": [0, 2]})

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task_data(get_task("mnli"), DataSource())
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_matched")]
    assert [e.label for e in data.eval] == [0, 2]
    assert data.eval_name == "nyu-mll/glue:validation_matched"
