"""The results journal: append-once, atomic rewrite, merge, clear errors."""

from __future__ import annotations

import json

import pytest

from scl_loss.glue.journal import append_record, finished_keys, merge_journals, read_journal


def test_append_is_idempotent_per_key(tmp_path):
    path = tmp_path / "sub" / "journal.jsonl"
    assert read_journal(path) == []
    assert append_record(path, {"key": "a", "x": 1})
    assert not append_record(path, {"key": "a", "x": 2})
    assert append_record(path, {"key": "b", "x": 3})
    assert [r["x"] for r in read_journal(path)] == [1, 3]
    assert finished_keys(path) == {"a", "b"}
    assert path.read_text().endswith("\n")
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]


def test_append_repairs_a_missing_final_newline(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text(json.dumps({"key": "a"}))
    append_record(path, {"key": "b"})
    assert [r["key"] for r in read_journal(path)] == ["a", "b"]


def test_malformed_line_names_file_and_line(tmp_path):
    path = tmp_path / "j.jsonl"
    path.write_text('{"key": "a"}\n{"key": \n')
    with pytest.raises(ValueError, match=r"j\.jsonl:2: expected one JSON record"):
        read_journal(path)
    path.write_text('{"nokey": 1}\n')
    with pytest.raises(ValueError, match=r"j\.jsonl:1: expected a JSON object with a 'key'"):
        read_journal(path)


def test_nan_results_are_refused(tmp_path):
    with pytest.raises(ValueError, match="JSON compliant"):
        append_record(tmp_path / "j.jsonl", {"key": "a", "acc": float("nan")})


def test_merge_keeps_one_record_per_key(tmp_path):
    a, b = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    append_record(a, {"key": "1", "src": "a"})
    append_record(a, {"key": "2", "src": "a"})
    append_record(b, {"key": "2", "src": "b"})
    append_record(b, {"key": "3", "src": "b"})
    merged = merge_journals([a, b])
    assert [(r["key"], r["src"]) for r in merged] == [("1", "a"), ("2", "a"), ("3", "b")]
