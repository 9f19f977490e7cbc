"""``torch.compile`` of a small training step that uses the loss: both kernel paths trace into
one graph (``fullgraph=True``) and match eager mode, values and gradients, in float32 and with
bfloat16 features. Bad and degenerate inputs (eager == compiled) are in tests/test_data_checks.py."""

from __future__ import annotations

import pytest
import torch

from scl_loss import SCLCrossEntropy, supcon_loss


class TinyClassifier(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = torch.nn.Linear(8, 6)
        self.head = torch.nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = torch.tanh(self.encoder(x))
        return self.head(features), features


def grads(model: torch.nn.Module) -> list[torch.Tensor]:
    return [p.grad.clone() for p in model.parameters()]


def compiled_step_matches_eager(
    path: str, backend: str, with_per_anchor: bool, dtype: torch.dtype = torch.float32
) -> None:
    torch.manual_seed(0)
    model = TinyClassifier()
    criterion = SCLCrossEntropy(0.7, 0.2, path=path, chunk_size=8)
    x = torch.randn(12, 8)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 0, 0, 1, -100, 2, 2])
    weights = torch.linspace(0.5, 1.5, 12)

    def loss_fn(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        logits, features = model(x)
        features = features.to(dtype)  # bf16: the exact half-precision products
        loss = criterion(logits, features, y)  # scalar: gradient computed in the forward sweep
        if with_per_anchor:  # vector output: the blocked backward recomputes the blocks
            per_anchor = supcon_loss(features, y, temperature=0.3, reduction="none", path=path, chunk_size=8)
            loss = loss + (weights * per_anchor).mean()
        return loss

    eager = loss_fn(x, y)
    eager.backward()
    eager_grads = grads(model)
    model.zero_grad()

    compiled = torch.compile(loss_fn, backend=backend, fullgraph=True)
    got = compiled(x, y)
    got.backward()
    torch.testing.assert_close(got, eager)
    for g, e in zip(grads(model), eager_grads, strict=True):
        torch.testing.assert_close(g, e, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", ["dense", "blocked"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_traced_training_step_matches_eager(path, dtype):
    """Dynamo + AOTAutograd (no code generation): the whole step is one graph."""
    compiled_step_matches_eager(path, "aot_eager", with_per_anchor=True, dtype=dtype)


# Inductor generates and compiles C++ for the CPU (~40 s on two cores), so only for the path
# with the custom autograd.Function; the dense path is plain torch ops, traced above.
@pytest.mark.slow
def test_inductor_training_step_matches_eager():
    compiled_step_matches_eager("blocked", "inductor", with_per_anchor=False)
