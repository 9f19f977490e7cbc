"""Reading task data through ``datasets``: every real task folder, the format quirks, clear errors."""

from __future__ import annotations

from collections import Counter

import pytest

from scl_loss.glue.arguments import DataArguments
from scl_loss.glue.data import DataFormatError, find_task_files, load_task_data, read_file
from scl_loss.glue.tasks import TASKS, get_task

# Every task folder of ../shared/data/glue: task, DataArguments options, train rows, eval rows,
# eval label counts.
# Rows from ../shared/data/glue/README.md, label counts measured.
FOLDERS = [
    ("sst2", {}, 67349, 872, {0: 428, 1: 444}),
    ("cola", {}, 8551, 1043, {0: 322, 1: 721}),
    ("mrpc", {}, 3668, 408, {0: 129, 1: 279}),
    ("rte", {}, 2490, 277, {0: 146, 1: 131}),
    ("qnli", {"train_file": "train_subset_9k.json"}, 8999, 5463, {0: 2702, 1: 2761}),
    ("mnli", {"train_file": "train_subset_9k.json"}, 8999, 9815, {0: 3479, 1: 3123, 2: 3213}),
    ("yelp2", {"eval_file": "textfooler_yelp_test_1000.txt"}, None, 1000, {0: 518, 1: 482}),
    ("amazon2", {"train_file": "hf_dummy_train.csv", "eval_file": "hf_dummy_test.csv"}, 5, 5, None),
]


def test_the_table_covers_every_folder(glue_data):
    folders = {p.name for p in glue_data.iterdir() if p.is_dir()}
    assert folders == {task.folder for task in TASKS.values()}
    assert {name for name, *_ in FOLDERS} == set(TASKS)


@pytest.mark.parametrize(
    ("name", "options", "train_rows", "eval_rows", "counts"), FOLDERS, ids=lambda x: str(x)
)
def test_every_task_folder_loads(glue_data, name, options, train_rows, eval_rows, counts):
    task = get_task(name)
    data = load_task_data(task, DataArguments(data_root=str(glue_data), **options))
    assert len(data.eval) == eval_rows
    assert (data.train is None) == (train_rows is None)
    if data.train is not None:
        assert len(data.train) == train_rows
    if counts is not None:
        assert Counter(data.eval["label"][:]) == counts
    for part in (data.eval, data.train):
        if part is not None:
            assert part.column_names == (["text_a", "text_b", "label"] if task.pair else ["text_a", "label"])
            assert part.features["label"].names == list(task.label_names)
            assert all(text.strip() for text in part["text_a"])


# Files with their own quirks: (path, task, rows, label counts).
QUIRKS = [
    ("QNLI/train_subset_1k_b.json", "qnli", 1000, None),
    ("QNLI/k-shot/16-13/train.tsv", "qnli", 32, {0: 16, 1: 16}),
    ("MNLI/k-shot/16-13/train.tsv", "mnli", 48, {0: 16, 1: 16, 2: 16}),
    ("yelp-2/hf_dummy_train.csv", "yelp2", 2, {0: 1, 1: 1}),
]


@pytest.mark.parametrize(("path", "task", "rows", "counts"), QUIRKS, ids=lambda x: str(x))
def test_real_files(glue_data, path, task, rows, counts):
    data = read_file(glue_data / path, get_task(task))
    assert len(data) == rows
    if counts is not None:
        assert Counter(data["label"][:]) == counts


def test_real_quirks(glue_data):
    mrpc = read_file(glue_data / "MRPC/dev.tsv", get_task("mrpc"))
    assert mrpc[0]["text_a"].startswith("He said the foodservice")  # BOM stripped, quotes kept verbatim
    assert mrpc[0]["text_b"].startswith('"The foodservice')
    cola = read_file(glue_data / "CoLA/dev.tsv", get_task("cola"))
    assert (
        cola[0]["text_a"] == "The sailors rode the breeze clear of the rocks."
    )  # no header: first line is data
    amazon = read_file(glue_data / "amazon-2/hf_dummy_train.csv", get_task("amazon2"))
    assert amazon[0]["text_a"].startswith("Stuning even for the non-gamer. This sound track")
    yelp = read_file(glue_data / "yelp-2/hf_dummy_test.csv", get_task("yelp2"))
    assert "\\n" not in " ".join(yelp["text_a"])
    train, dev = find_task_files(DataArguments(data_root=str(glue_data)), get_task("mnli"))
    assert train is None
    assert dev.name == "dev_matched.jsonl"
    qnli = DataArguments(data_dir=str(glue_data / "QNLI"), train_file="train_subset_9k.json")
    assert find_task_files(qnli, get_task("qnli"))[0] == glue_data / "QNLI" / "train_subset_9k.json"


MALFORMED = [
    (
        "sst2",
        "train.tsv",
        "sentence\tlabel\ngood film\t1\nbad film\n",
        r"train\.tsv:row 1: expected a label in",
    ),
    (
        "sst2",
        "train.tsv",
        "sentence\tlabel\ngood\t1\nbad\tfilm\t0\n",
        r"train\.tsv:\?: .*Expected 2 fields in line 3",
    ),
    (
        "sst2",
        "train.tsv",
        "sentence\tlabel\ngood film\tyes\n",
        r"train\.tsv:row 0: expected a label in \{0/negative",
    ),
    ("sst2", "train.tsv", "text_x\tlabel\ngood\t1\n", r"train\.tsv:header: expected columns one of"),
    (
        "sst2",
        "train.tsv",
        "words\tmark\ngood\t1\n",
        r"train\.tsv:header: expected a header naming the columns",
    ),
    (
        "sst2",
        "train.tsv",
        "sentence\tlabel\n\t1\n",
        r"train\.tsv:row 0: expected non-empty text in column 'sentence'",
    ),
    ("sst2", "train.tsv", "", r"train\.tsv:row 0: expected a \.tsv file with at least one row"),
    (
        "cola",
        "dev.tsv",
        "gj04\t1\t\tFine.\ngj04\t1\t\t\n",
        r"dev\.tsv:row 1: expected non-empty text in column 'sentence'",
    ),
    (
        "rte",
        "dev.tsv",
        "index\tsentence1\tsentence2\tlabel\n0\ta\tb\tcontradiction\n",
        r"row 0: expected a label in \{0/entailment, 1/not_entailment\}",
    ),
    (
        "mnli",
        "dev.jsonl",
        '{"premise": "a", "hypothesis": "b", "label": "neutral"}\n{"premise": "a"\n',
        r"dev\.jsonl:\?: expected a readable \.jsonl file",
    ),
    (
        "mnli",
        "dev.jsonl",
        '{"premise": "a", "label": 1}\n',
        r"dev\.jsonl:header: expected columns one of \('sentence2', 'hypothesis', 'text_b'\)",
    ),
    (
        "qnli",
        "train.json",
        '{"0": {"text_a": "q", "text_b": "s", "label": "entailment"},\n "1": [1]}',
        r"train\.json:1: expected a JSON list of objects",
    ),
    ("qnli", "train.json", '{"0": {"text_a": "q",, }}', r"train\.json:1:22: expected valid JSON"),
    (
        "yelp2",
        "train.csv",
        '"1","fine"\n"3","what"\n',
        r"train\.csv:row 1: expected a label in \{1/negative, 2/positive\}",
    ),
    ("sst2", "train.csv", "sentence,label\ngood,1\nbad\n", r"train\.csv:row 1: expected a label in"),
    ("yelp2", "test.txt", "1 fine\nnolabel\n", r"test\.txt:row 1: expected non-empty text in column 'text'"),
]


@pytest.mark.parametrize(("task", "name", "text", "message"), MALFORMED)
def test_malformed_files_name_file_row_and_expectation(tmp_path, task, name, text, message):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    with pytest.raises(DataFormatError, match=message):
        read_file(path, get_task(task))


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="path must end in one of"):
        read_file(tmp_path / "data.parquet", get_task("sst2"))
    with pytest.raises(FileNotFoundError, match="SST-2 data file not found"):
        read_file(tmp_path / "absent.tsv", get_task("sst2"))
    with pytest.raises(FileNotFoundError, match="no validation file"):
        find_task_files(DataArguments(data_dir=str(tmp_path)), get_task("sst2"))
    with pytest.raises(ValueError, match="data_dir must be unset when data_root is set"):
        DataArguments(data_dir="a", data_root="b")


def test_csv_json_and_jsonl_with_generic_columns(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('text_a,text_b,label\n"q, with comma",s,not_entailment\n')
    [row] = read_file(path, get_task("qnli"))
    assert row == {"text_a": "q, with comma", "text_b": "s", "label": 1}
    path = tmp_path / "train.jsonl"
    path.write_text('{"sentence": "nice", "label": "positive"}\n\n{"sentence": "NA", "label": "negative"}\n')
    assert read_file(path, get_task("sst2"))["label"] == [1, 0]
    path.write_text('{"sentence": "nice", "label": 1}\n{"sentence": "NA", "label": "negative"}\n')
    assert read_file(path, get_task("sst2"))["label"] == [1, 0]  # ids and names mixed
    path = tmp_path / "train.json"
    path.write_text('[{"sentence": "null", "label": 0}]')  # "null", "NA" are text, not missing values
    assert read_file(path, get_task("sst2"))["text_a"] == ["null"]


def test_hub_is_the_default_source(monkeypatch):
    """Without a data folder, nyu-mll/glue is read (here through a stand-in for load_dataset)."""
    import datasets

    calls = []

    def fake_load_dataset(*args, split):
        calls.append((*args, split))
        return datasets.Dataset.from_dict(
            {"premise": ["p", "q"], "hypothesis": ["h", "i"], "label": [0, 2], "idx": [0, 1]}
        )

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    data = load_task_data(get_task("mnli"), DataArguments())
    assert calls == [("nyu-mll/glue", "mnli", "train"), ("nyu-mll/glue", "mnli", "validation_matched")]
    assert data.eval["label"] == [0, 2]
    assert data.eval[0] == {"text_a": "p", "text_b": "h", "label": 0}
    assert data.eval_name == "nyu-mll/glue:validation_matched"
