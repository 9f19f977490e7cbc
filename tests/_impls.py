"""The implementations the conformance suite (tests/test_conformance.py) checks.

Every entry has ``supcon_loss``'s signature. Add a forced kernel path here and the whole
float64-reference and property suite runs against it. ``pytest --impl pkg.mod:func``
(see conftest.py) replaces this list with the user's own implementation(s).
"""

from __future__ import annotations

from collections.abc import Callable

from scl_loss.functional import supcon_loss

IMPLEMENTATIONS: dict[str, Callable[..., object]] = {
    "default": supcon_loss,
}
