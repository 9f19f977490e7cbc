"""Hypothesis strategies for SupCon problems: small enough for the loop reference."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from hypothesis import strategies as st

IGNORE = -100


@dataclass
class Case:
    features: torch.Tensor  # float64, [N, D] or [N, V, D]
    labels: torch.Tensor | None
    mask: torch.Tensor | None
    temperature: float

    def kwargs(self) -> dict:
        kw: dict = {"temperature": self.temperature}
        if self.mask is not None:
            kw["mask"] = self.mask
        return kw


temperatures = st.floats(min_value=0.01, max_value=10.0).map(lambda t: round(t, 4))


@st.composite
def cases(draw, *, positives: str = "labels", max_n: int = 10, with_ignore: bool = True) -> Case:
    """A random problem. ``positives`` is "labels", "mask", "views" (SimCLR) or "any"."""
    kind = draw(st.sampled_from(["labels", "mask", "views"])) if positives == "any" else positives
    n = draw(st.integers(1, max_n))
    views = draw(st.integers(2, 3)) if kind == "views" else draw(st.sampled_from([None, 1, 2, 3]))
    d = draw(st.integers(1, 8))
    seed = draw(st.integers(0, 2**31 - 1))
    gen = torch.Generator().manual_seed(seed)
    shape = (n, d) if views is None else (n, views, d)
    features = torch.randn(shape, generator=gen, dtype=torch.float64)
    # Occasionally near-duplicates and larger norms, where cancellation and overflow live.
    if draw(st.booleans()):
        features = features * draw(st.sampled_from([1e-3, 10.0, 1e3]))
    labels = mask = None
    if kind == "labels":
        num_classes = draw(st.integers(1, max(1, n)))
        labels = torch.randint(0, num_classes, (n,), generator=gen)
        if with_ignore and draw(st.booleans()):
            labels[torch.rand(n, generator=gen) < 0.3] = IGNORE
    elif kind == "mask":
        mask = torch.rand(n, n, generator=gen) < draw(st.sampled_from([0.2, 0.5, 0.9]))
    return Case(features, labels, mask, draw(temperatures))
