"""The scl-glue commands shown in README.md and docs/glue.md parse: every option they use exists."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from scl_loss.glue.cli import COMMANDS, parse

ROOT = Path(__file__).resolve().parents[2]
VALUES = {"task": "sst2", "target": "yelp2", "T": "0.3", "start": "models/start", "G": "data"}


def commands(markdown: str) -> list[list[str]]:
    """Each ``scl-glue COMMAND ...`` of the bash blocks: continuation lines joined, comments
    dropped, shell variables ($task, $T) given a value, placeholders (<key>) plain words."""
    found = []
    for block in re.findall(r"```bash\n(.*?)```", markdown, flags=re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s#.*$", "", line)
            start = line.find("scl-glue ")
            if start >= 0 and "--help" not in line:
                line = re.sub(r"\$\{?(\w+)(,,)?\}?", lambda m: VALUES.get(m[1], m[1]), line[start:])
                words = shlex.split(re.sub(r"[<>]", "", line).replace(";", " "))
                found.append(words[1 : (words.index("done") if "done" in words else len(words))])
    return found


CASES = [(doc, argv) for doc in ("README.md", "docs/glue.md") for argv in commands((ROOT / doc).read_text())]


@pytest.mark.parametrize(("doc", "argv"), CASES, ids=[f"{d}:{' '.join(a[:3])}" for d, a in CASES])
def test_documented_command_parses(doc, argv):
    command, *options = argv
    types, _ = COMMANDS[command]
    parsed = parse(types, options)
    assert len(parsed) == len(types)


def test_the_docs_show_every_command():
    assert {argv[0] for _, argv in CASES} >= {"split", "run", "report", "augment"}
