"""The implementations the conformance suite (tests/test_conformance.py) checks.

Every entry has ``supcon_loss``'s signature. Add a forced kernel path here and the whole
float64-reference and property suite runs against it. ``pytest --impl pkg.mod:func``
(see conftest.py) replaces this list with the user's own implementation(s).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

from scl_loss.functional import supcon_loss

IMPLEMENTATIONS: dict[str, Callable[..., object]] = {
    "default": supcon_loss,
    "dense": partial(supcon_loss, path="dense"),
    # Chunk sizes that divide no typical N (the last block is ragged), and one larger than
    # most test batches (a single block). tests/test_blocked.py covers chunk 1 and None.
    "blocked-7": partial(supcon_loss, path="blocked", chunk_size=7),
    "blocked-64": partial(supcon_loss, path="blocked", chunk_size=64),
}
