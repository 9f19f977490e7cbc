"""(1 − λ)·CE + λ·SCL: the mixture, its end points, CE's options, and the module wrapper."""

from __future__ import annotations

from unittest import mock

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given
from hypothesis import strategies as st

import scl_loss.functional as functional
from scl_loss import SCLComponents, SCLCrossEntropy
from scl_loss.functional import scl_cross_entropy, supcon_loss
from scl_loss.reference import supcon_loss_loop


def _batch(seed: int = 0, n: int = 12, c: int = 3, d: int = 16, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, c, generator=gen, dtype=dtype, requires_grad=True)
    features = torch.randn(n, d, generator=gen, dtype=dtype, requires_grad=True)
    labels = torch.randint(0, c, (n,), generator=gen)
    return logits, features, labels


@given(
    lambda_=st.floats(0.0, 1.0),
    tau=st.floats(0.05, 2.0),
    scl_reduction=st.sampled_from(["mean", "sum"]),
    seed=st.integers(0, 10_000),
    label_smoothing=st.sampled_from([0.0, 0.1]),
    weighted=st.booleans(),
)
def test_mixture_matches_its_definition(lambda_, tau, scl_reduction, seed, label_smoothing, weighted):
    logits, features, labels = _batch(seed)
    labels[::5] = -100
    weight = torch.rand(3, dtype=torch.float64) + 0.5 if weighted else None
    out = scl_cross_entropy(
        logits,
        features,
        labels,
        lambda_=lambda_,
        tau=tau,
        scl_reduction=scl_reduction,
        label_smoothing=label_smoothing,
        weight=weight,
    )
    ce = F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)
    scl = supcon_loss_loop(features, labels, temperature=tau, reduction=scl_reduction)
    torch.testing.assert_close(out, (1 - lambda_) * ce + lambda_ * scl, rtol=1e-10, atol=1e-12)
    inputs = (logits, features)
    grads = torch.autograd.grad(out, inputs, allow_unused=True, materialize_grads=True)
    expected = torch.autograd.grad(
        (1 - lambda_) * ce + lambda_ * scl, inputs, allow_unused=True, materialize_grads=True
    )
    for got, want in zip(grads, expected, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)


def test_lambda_zero_is_exactly_ce_and_skips_scl():
    logits, features, labels = _batch()
    with mock.patch.object(functional, "supcon_loss", side_effect=AssertionError("SCL computed")):
        out = scl_cross_entropy(logits, features, labels, lambda_=0.0, tau=0.3, return_components=True)
    assert torch.equal(out.loss, out.ce)
    # The CE term is F.cross_entropy's mean, summed in another order: equal to rounding.
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels), rtol=1e-14, atol=0.0)


@given(
    seed=st.integers(0, 10_000),
    n=st.integers(1, 12),
    classes=st.integers(2, 5),
    label_smoothing=st.sampled_from([0.0, 0.1, 0.5]),
    weighted=st.booleans(),
    ignored=st.floats(0.0, 0.6),
    dtype=st.sampled_from([torch.float64, torch.float32]),
)
def test_ce_term_is_torch_cross_entropy_mean(seed, n, classes, label_smoothing, weighted, ignored, dtype):
    """The sync-free CE (per-row losses over the clamped weight sum) is F.cross_entropy's batch
    mean, values and gradients, whenever that mean is defined (some row not ignored)."""
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=gen, dtype=dtype, requires_grad=True)
    features = torch.randn(n, 4, generator=gen, dtype=dtype)
    labels = torch.randint(0, classes, (n,), generator=gen)
    labels[torch.rand(n, generator=gen) < ignored] = -100
    labels[0] = 0  # non-degenerate: at least one row counts
    weight = torch.rand(classes, generator=gen, dtype=dtype) + 0.1 if weighted else None
    options = {"weight": weight, "label_smoothing": label_smoothing}
    out = scl_cross_entropy(logits, features, labels, lambda_=0.0, tau=0.3, **options)
    want = F.cross_entropy(logits, labels, **options)
    tol = {"rtol": 1e-12, "atol": 1e-14} if dtype == torch.float64 else {"rtol": 1e-5, "atol": 1e-6}
    torch.testing.assert_close(out, want, **tol)
    (grad,) = torch.autograd.grad(out, logits)
    (want_grad,) = torch.autograd.grad(want, logits)
    torch.testing.assert_close(grad, want_grad, **tol)


def test_lambda_one_is_exactly_scl():
    logits, features, labels = _batch()
    out = scl_cross_entropy(logits, features, labels, lambda_=1.0, tau=0.3)
    assert torch.equal(out, supcon_loss(features, labels, temperature=0.3))
    out.backward()
    assert logits.grad is None  # CE did not take part


def test_paper_sum_reduction_is_eq_3_literally():
    # Eq. 3: Σ_i −1/(N_{y_i} − 1) Σ_{j≠i, y_j = y_i} log(exp(Φi·Φj/τ) / Σ_{k≠i} exp(Φi·Φk/τ)).
    logits, features, labels = _batch(n=9)
    labels = torch.tensor([0, 0, 0, 1, 1, 2, 2, 2, 2])
    phi = F.normalize(features.detach(), dim=1)
    s = phi @ phi.T / 0.5
    total = 0.0
    for i in range(9):
        n_yi = int((labels == labels[i]).sum())
        denominator = sum(torch.exp(s[i, k]) for k in range(9) if k != i)
        total += sum(
            -torch.log(torch.exp(s[i, j]) / denominator) / (n_yi - 1)
            for j in range(9)
            if j != i and labels[j] == labels[i]
        )
    out = scl_cross_entropy(logits, features, labels, lambda_=0.6, tau=0.5, scl_reduction="sum")
    torch.testing.assert_close(out, 0.4 * F.cross_entropy(logits, labels) + 0.6 * total, rtol=1e-12, atol=0)


def test_components():
    logits, features, labels = _batch()
    out = scl_cross_entropy(logits, features, labels, lambda_=0.3, tau=0.2, return_components=True)
    assert isinstance(out, SCLComponents)
    torch.testing.assert_close(out.loss, 0.7 * out.ce + 0.3 * out.scl)
    torch.testing.assert_close(out.ce, F.cross_entropy(logits, labels))
    torch.testing.assert_close(out.scl, supcon_loss(features, labels, temperature=0.2))
    zero_lambda = scl_cross_entropy(logits, features, labels, lambda_=0.0, tau=0.2, return_components=True)
    assert float(zero_lambda.scl) == 0.0
    assert not zero_lambda.scl.requires_grad


def test_all_ignored_batch_is_a_connected_zero():
    logits, features, _ = _batch()
    labels = torch.full((12,), -100)
    out = scl_cross_entropy(logits, features, labels, lambda_=0.5, tau=0.3)
    assert float(out.detach()) == 0.0
    out.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert torch.equal(features.grad, torch.zeros_like(features))


def test_views_are_accepted():
    logits, _, labels = _batch()
    features = torch.randn(12, 2, 8, dtype=torch.float64)
    out = scl_cross_entropy(logits, features, labels, lambda_=0.5, tau=0.3, return_components=True)
    torch.testing.assert_close(out.scl, supcon_loss_loop(features, labels, temperature=0.3))


def test_module_is_the_function():
    logits, features, labels = _batch()
    weight = torch.tensor([1.0, 2.0, 0.5], dtype=torch.float64)
    criterion = SCLCrossEntropy(0.9, 0.3, scl_reduction="sum", label_smoothing=0.1, weight=weight)
    expected = scl_cross_entropy(
        logits,
        features,
        labels,
        lambda_=0.9,
        tau=0.3,
        scl_reduction="sum",
        label_smoothing=0.1,
        weight=weight,
    )
    assert torch.equal(criterion(logits, features, labels), expected)
    assert "weight" in dict(criterion.named_buffers())
    assert "lambda_=0.9" in repr(criterion)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_logits_and_features(dtype):
    logits, features, labels = _batch(dtype=torch.float32)
    out = scl_cross_entropy(logits.to(dtype), features.to(dtype), labels, lambda_=0.5, tau=0.1)
    assert torch.isfinite(out)
