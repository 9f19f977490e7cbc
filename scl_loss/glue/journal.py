"""The results journal: one JSON line per finished run, safe against crashes (the old or the new
journal, never a torn line) and concurrent writers (shards, torchrun ranks share one)."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

__all__ = ["append_record", "finished_keys", "merge_journals", "read_journal"]


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_name(path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
    try:
        with contextlib.suppress(ImportError):  # pragma: no cover - no flock on Windows: single writer only
            import fcntl

            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the flock


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # pragma: no cover - not possible on every OS
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def read_journal(path: str | Path) -> list[dict[str, Any]]:
    """All records of one journal (missing file: none). A malformed line is an error naming it."""
    path = Path(path)
    if not path.exists():
        return []
    records = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise ValueError(f"{path}:{number}: expected one JSON record per line ({err.msg})") from err
        if not isinstance(record, dict) or "key" not in record:
            raise ValueError(f"{path}:{number}: expected a JSON object with a 'key'")
        records.append(record)
    return records


def finished_keys(path: str | Path) -> set[str]:
    return {r["key"] for r in read_journal(path)}


def append_record(path: str | Path, record: dict[str, Any]) -> bool:
    """Add ``record`` (which has a ``key``) unless its key is already there; ``True`` if added."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    line = json.dumps(record, sort_keys=True, allow_nan=False) + "\n"
    with _locked(path):
        if record["key"] in finished_keys(path):
            return False
        old = path.read_bytes() if path.exists() else b""
        if old and not old.endswith(b"\n"):
            old += b"\n"
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        with tmp.open("wb") as handle:
            handle.write(old + line.encode("utf-8"))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)  # atomic
        _fsync_dir(path.parent)  # the rename survives a power cut too
    return True


def merge_journals(paths: Iterable[str | Path]) -> list[dict[str, Any]]:
    """Records of several journals, one per key (the first seen wins), in reading order."""
    seen: dict[str, dict[str, Any]] = {}
    for path in paths:
        for record in read_journal(path):
            seen.setdefault(record["key"], record)
    return list(seen.values())
