"""Conformance suite: every implementation in tests/_impls.py (or ``--impl``) against the
float64 loop reference, plus the properties the maths guarantees.

Run it against your own kernel with ``pytest tests/test_conformance.py --impl pkg.mod:func``.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from scl_loss._validation import MIN_TEMPERATURE
from scl_loss.functional import supcon_loss
from scl_loss.reference import supcon_loss_dense, supcon_loss_loop
from tests.strategies import IGNORE, Case, cases, temperatures

REDUCTIONS = ["mean", "sum", "none"]


def _value_and_grad(fn, case: Case, dtype: torch.dtype, reduction: str, weights: torch.Tensor | None = None):
    x = case.features.detach().to(dtype).clone().requires_grad_(True)
    out = fn(x, case.labels, reduction=reduction, **case.kwargs())
    if reduction == "none":
        assert out.shape == case.features.shape[:-1]
        scalar = (out * weights.to(out.dtype)).sum()
    else:
        assert out.shape == ()
        scalar = out
    scalar.backward()
    return out.detach().double(), x.grad.double()


def _check_against_loop(impl, case: Case, reduction: str, dtype: torch.dtype, rtol: float, atol: float):
    weights = torch.rand(case.features.shape[:-1], dtype=torch.float64) if reduction == "none" else None
    ref_value, ref_grad = _value_and_grad(supcon_loss_loop, case, torch.float64, reduction, weights)
    value, grad = _value_and_grad(impl, case, dtype, reduction, weights)
    torch.testing.assert_close(value, ref_value, rtol=rtol, atol=atol)
    # The gradient through the l2-normalisation scales like 1/||x||: rounding errors do too,
    # even where the exact gradient is 0 (e.g. D = 1), so the floor scales with it.
    grad_scale = float(ref_grad.abs().max()) if ref_grad.numel() else 0.0
    norms = case.features.norm(dim=-1)
    conditioning = float((1.0 / norms).max()) if norms.numel() else 1.0
    torch.testing.assert_close(grad, ref_grad, rtol=rtol, atol=atol * max(1.0, grad_scale, conditioning))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=cases(positives="any"))
def test_float64_matches_loop_reference(impl, reduction, case):
    # 1e-10 relative; the absolute floor only covers values that are exactly 0 in one of them.
    _check_against_loop(impl, case, reduction, torch.float64, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reduction", REDUCTIONS)
@given(case=cases(positives="any"))
def test_float32_matches_loop_reference(impl, reduction, case):
    # float32 inputs carry a relative error of ~6e-8 into logits of size up to 1/τ.
    atol = 1e-5 * max(1.0, 1.0 / case.temperature)
    _check_against_loop(impl, case, reduction, torch.float32, rtol=1e-5, atol=atol)


@pytest.mark.parametrize("positives", ["labels", "mask", "views"])
def test_gradcheck_float64(impl, positives):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(5, 2, 3, dtype=torch.float64, generator=gen, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2]) if positives == "labels" else None
    mask = (torch.rand(5, 5, generator=gen) < 0.5) if positives == "mask" else None
    for reduction in REDUCTIONS:
        assert torch.autograd.gradcheck(
            lambda t, r=reduction: impl(t, labels, mask=mask, temperature=0.3, reduction=r), (x,)
        )


# --- properties -------------------------------------------------------------------------------


@given(case=cases(positives="any"), seed=st.integers(0, 2**31 - 1))
def test_permutation_invariance(impl, case, seed):
    n = case.features.shape[0]
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    kw = case.kwargs()
    if case.mask is not None:
        kw["mask"] = case.mask[perm][:, perm]
    labels = None if case.labels is None else case.labels[perm]
    base = impl(case.features, case.labels, **case.kwargs())
    permuted = impl(case.features[perm], labels, **kw)
    torch.testing.assert_close(permuted, base, rtol=1e-10, atol=1e-12)
    per_anchor = impl(case.features, case.labels, reduction="none", **case.kwargs())
    per_anchor_permuted = impl(case.features[perm], labels, reduction="none", **kw)
    torch.testing.assert_close(per_anchor_permuted, per_anchor[perm], rtol=1e-10, atol=1e-12)


@given(case=cases(positives="labels"), seed=st.integers(0, 2**31 - 1))
def test_relabelling_invariance(impl, case, seed):
    gen = torch.Generator().manual_seed(seed)
    relabel = torch.randperm(1000, generator=gen) + 7  # an injective map to other ids
    labels = torch.where(case.labels == IGNORE, case.labels, relabel[case.labels.clamp(min=0)])
    torch.testing.assert_close(
        impl(case.features, labels, temperature=case.temperature),
        impl(case.features, case.labels, temperature=case.temperature),
        rtol=1e-10,
        atol=1e-12,
    )


@given(case=cases(positives="any"), seed=st.integers(0, 2**31 - 1))
def test_positive_rescaling_and_rotation_invariance(impl, case, seed):
    gen = torch.Generator().manual_seed(seed)
    d = case.features.shape[-1]
    scale = torch.rand(case.features.shape[:-1], generator=gen, dtype=torch.float64)[..., None] * 100 + 0.01
    q, _ = torch.linalg.qr(torch.randn(d, d, generator=gen, dtype=torch.float64))
    base = impl(case.features, case.labels, **case.kwargs())
    torch.testing.assert_close(
        impl(case.features * scale, case.labels, **case.kwargs()), base, rtol=1e-9, atol=1e-11
    )
    torch.testing.assert_close(
        impl(case.features @ q, case.labels, **case.kwargs()), base, rtol=1e-9, atol=1e-11
    )


@given(case=cases(positives="any"))
def test_non_negative(impl, case):
    out = impl(case.features, case.labels, reduction="none", **case.kwargs())
    assert bool((out >= -1e-12).all())


@given(
    n=st.integers(1, 12),
    views=st.sampled_from([None, 1, 2, 3]),
    num_classes=st.integers(1, 4),
    temperature=temperatures,
    with_ignore=st.booleans(),
)
def test_identical_embeddings_give_log_m_minus_one(impl, n, views, num_classes, temperature, with_ignore):
    v = 1 if views is None else views
    shape = (n, 5) if views is None else (n, views, 5)
    x = torch.ones(shape, dtype=torch.float64)
    labels = torch.arange(n) % num_classes
    if with_ignore:
        labels[::3] = IGNORE
    out = impl(x, labels, temperature=temperature, reduction="none").reshape(-1)
    valid_rows = labels != IGNORE
    m = int(valid_rows.sum()) * v  # number of contrasts
    per_class = torch.bincount(labels[valid_rows], minlength=num_classes) * v
    has_positive = (per_class[labels.clamp(min=0)] > 1) & valid_rows
    log_m1 = torch.full((n,), math.log(max(m - 1, 1)), dtype=torch.float64)
    expected = torch.where(has_positive, log_m1, 0.0).repeat_interleave(v)
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def _supcontrast_all_mode(features, labels, temperature, base_temperature):
    """Our own transcription of HobbitLong/SupContrast losses.py, contrast_mode='all'."""
    batch_size, n_views = features.shape[:2]
    mask = torch.eq(labels.view(-1, 1), labels.view(1, -1)).double()
    contrast_feature = torch.cat(torch.unbind(features, dim=1), dim=0)
    anchor_dot_contrast = contrast_feature @ contrast_feature.T / temperature
    logits = anchor_dot_contrast - anchor_dot_contrast.max(dim=1, keepdim=True).values.detach()
    mask = mask.repeat(n_views, n_views)
    logits_mask = 1.0 - torch.eye(batch_size * n_views, dtype=torch.float64)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    loss = -(temperature / base_temperature) * mean_log_prob_pos
    return loss.view(n_views, batch_size).mean()


@given(
    n=st.integers(2, 10),
    views=st.integers(1, 3),
    temperature=temperatures,
    seed=st.integers(0, 2**31 - 1),
)
def test_multiview_equals_supcontrast_all_mode(impl, n, views, temperature, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.nn.functional.normalize(torch.randn(n, views, 6, generator=gen, dtype=torch.float64), dim=-1)
    labels = torch.randint(0, max(1, n // 2), (n,), generator=gen)
    if views == 1:  # SupContrast divides 0 by 0 for singletons; give every class a partner
        labels = (
            torch.arange(n) // 2 if n % 2 == 0 else torch.cat([torch.arange(n - 1) // 2, torch.tensor([0])])
        )
    expected = _supcontrast_all_mode(x, labels, temperature, base_temperature=temperature)
    torch.testing.assert_close(impl(x, labels, temperature=temperature), expected, rtol=1e-10, atol=1e-12)


# --- edge cases -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("shape", "labels"),
    [
        ((1, 4), torch.tensor([3])),  # N = 1
        ((5, 4), torch.arange(5)),  # all singletons
        ((4, 4), torch.full((4,), IGNORE)),  # everything ignored
        ((4, 2, 4), torch.full((4,), IGNORE)),
        ((0, 4), torch.zeros(0, dtype=torch.int64)),  # empty batch
    ],
)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_no_positive_gives_connected_zero(impl, shape, labels, reduction):
    x = torch.randn(shape, requires_grad=True)
    out = impl(x, labels, reduction=reduction)
    assert bool((out == 0).all())
    assert out.requires_grad
    out.sum().backward()
    assert x.grad is not None
    assert bool((x.grad == 0).all())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.float16, torch.bfloat16])
def test_zero_vectors_have_finite_gradients(impl, dtype):
    x = torch.randn(6, 2, 8, dtype=dtype)
    x[1] = 0
    x[4, 0] = 0
    x.requires_grad_(True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    impl(x, labels, temperature=0.05).backward()
    assert bool(torch.isfinite(x.grad).all())


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("temperature", [0.01, 0.1, 1.0])
@given(case=cases(positives="labels"))
def test_half_precision_is_finite_and_close_to_float64(impl, dtype, temperature, case):
    x64 = torch.nn.functional.normalize(case.features, dim=-1)
    x = x64.to(dtype).requires_grad_(True)
    out = impl(x, case.labels, temperature=temperature)
    assert out.dtype == torch.float32
    out.backward()
    assert bool(torch.isfinite(out))
    assert bool(torch.isfinite(x.grad).all())
    # The comparison is with fp64 on the *rounded* inputs: what is left is the kernel's own error.
    expected = supcon_loss_loop(x.detach().double(), case.labels, temperature=temperature)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-5 / temperature)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_autocast_accumulates_in_float32(impl, dtype):
    gen = torch.Generator().manual_seed(1)
    layer = torch.nn.Linear(16, 32)
    inputs = torch.randn(12, 16, generator=gen)
    labels = torch.arange(12) % 3
    with torch.autocast("cpu", dtype=dtype):
        feats = layer(inputs)
        assert feats.dtype == dtype
        out = impl(feats, labels, temperature=0.05)
    assert out.dtype == torch.float32
    out.backward()
    assert all(bool(torch.isfinite(p.grad).all()) for p in layer.parameters())
    expected = supcon_loss_loop(feats.detach().double(), labels, temperature=0.05)
    torch.testing.assert_close(out.double(), expected, rtol=1e-5, atol=1e-4)


# --- the references themselves at small temperatures ---------------------------------------------
# (no `impl`: these check scl_loss.reference, which every other test here trusts)


def _spread_unit_vectors(gen: torch.Generator, n: int, dim: int, max_cosine: float) -> torch.Tensor:
    """Random unit vectors whose pairwise cosines lie in ``(−max_cosine, max_cosine)`` (redrawn until
    they do), so that the loop reference stays exact at small τ (see its docstring)."""
    while True:
        x = torch.nn.functional.normalize(torch.randn(n, dim, generator=gen, dtype=torch.float64), dim=1)
        cosines = (x @ x.T).fill_diagonal_(0.0)
        if float(cosines.abs().max()) < max_cosine:
            return x


# Where the loop itself is exact (its docstring): with |cosines| < c the value needs
# 2c/τ + log M < 745 (c < 0.37 at τ = 1e-3), the gradient 3c/τ + 2·log M < 745 (c < 0.24).
_LOOP_EXACT = {"value": (64, 0.36), "gradient": (256, 0.24)}


@pytest.mark.parametrize("what", list(_LOOP_EXACT))
@pytest.mark.parametrize("temperature", [1e-3, 2e-3, 5e-3, 1e-2])
@settings(max_examples=15)
@given(
    n=st.integers(2, 10),
    positives=st.sampled_from(["labels", "ignore", "mask"]),
    seed=st.integers(0, 2**31 - 1),
)
def test_dense_reference_matches_loop_at_small_temperature_float64(what, temperature, n, positives, seed):
    gen = torch.Generator().manual_seed(seed)
    dim, max_cosine = _LOOP_EXACT[what]
    x = _spread_unit_vectors(gen, n, dim, max_cosine) * 3.0  # not unit norm: the references normalise
    kw: dict = {"temperature": temperature}
    labels = torch.randint(0, 3, (n,), generator=gen)
    if positives == "ignore":
        labels[torch.rand(n, generator=gen) < 0.3] = IGNORE
    if positives == "mask":
        kw["mask"], labels = torch.rand(n, n, generator=gen) < 0.5, None
    for reduction in REDUCTIONS:
        weights = torch.rand(n, dtype=torch.float64)
        x_ref, x_dense = (x.clone().requires_grad_(True) for _ in range(2))
        expected = supcon_loss_loop(x_ref, labels, reduction=reduction, **kw)
        got = supcon_loss_dense(x_dense, labels, reduction=reduction, **kw)
        assert bool(torch.isfinite(expected).all())
        torch.testing.assert_close(got, expected, rtol=1e-10, atol=1e-10)
        if what == "gradient":
            (expected * weights if reduction == "none" else expected).sum().backward()
            (got * weights if reduction == "none" else got).sum().backward()
            torch.testing.assert_close(x_dense.grad, x_ref.grad, rtol=1e-9, atol=1e-9)


@pytest.mark.parametrize("temperature", [1e-2, 3e-2])
@settings(max_examples=5)
@given(seed=st.integers(0, 2**31 - 1), num_classes=st.integers(1, 4))
def test_dense_reference_matches_loop_at_small_temperature_float32(temperature, seed, num_classes):
    # The case: N = 16, D = 768, float32; SupContrast's self-including row max gave 11.9 vs 6.5.
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(16, 768, generator=gen)
    labels = torch.randint(0, num_classes, (16,), generator=gen)
    x32 = x.clone().requires_grad_(True)
    x64 = x.double().requires_grad_(True)
    got = supcon_loss_dense(x32, labels, temperature=temperature)
    expected = supcon_loss_loop(x64, labels, temperature=temperature)
    got.backward()
    expected.backward()
    atol = 1e-5 / temperature  # float32 rounding of logits of size up to 1/τ
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=atol)
    grad_scale = float(x64.grad.abs().max())
    torch.testing.assert_close(x32.grad.double(), x64.grad, rtol=1e-4, atol=1e-4 * grad_scale)


@pytest.mark.parametrize("temperature", [1e-3, 1e-6, MIN_TEMPERATURE])
def test_dense_reference_is_exact_where_the_loop_overflows(temperature):
    # Identical embeddings: every logit is 1/τ (exp overflows for τ < 1.4e-3) and the loss is
    # log(M − 1) exactly for every anchor with a positive.
    x = torch.ones(6, 2, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, IGNORE])
    expected = torch.tensor([math.log(9)] * 10 + [0.0, 0.0], dtype=torch.float64).reshape(6, 2)
    out = supcon_loss_dense(x, labels, temperature=temperature, reduction="none")
    torch.testing.assert_close(out, expected, rtol=0, atol=1e-12 / temperature)
    if temperature < 1.4e-3:
        assert not bool(torch.isfinite(supcon_loss_loop(x, labels, temperature=temperature)))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@settings(max_examples=10)
@given(seed=st.integers(0, 2**31 - 1))
def test_dense_reference_at_the_smallest_temperature(dtype, seed):
    # At τ = MIN_TEMPERATURE logits reach 1e12: finite, and the same as the library's
    # logsumexp-based kernels (a formulation independent of the reference's).
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(12, 2, 8, generator=gen, dtype=torch.float64)
    labels = torch.randint(0, 3, (12,), generator=gen)
    labels[0] = IGNORE
    x_dense = x.to(dtype).clone().requires_grad_(True)
    out = supcon_loss_dense(x_dense, labels, temperature=MIN_TEMPERATURE, reduction="sum")
    out.backward()
    assert bool(torch.isfinite(out))
    assert bool(torch.isfinite(x_dense.grad).all())
    for path in ("dense", "blocked"):
        x_lib = x.clone().requires_grad_(True)
        lib = supcon_loss(
            x_lib, labels, temperature=MIN_TEMPERATURE, reduction="sum", path=path, chunk_size=5
        )
        lib.backward()
        # float32 logits of size 1/τ carry rounding errors of ~6e-8/τ each.
        atol = (1e-10 if dtype == torch.float64 else 1e-5) / MIN_TEMPERATURE
        torch.testing.assert_close(out.double(), lib, rtol=1e-6, atol=atol)
        torch.testing.assert_close(x_dense.grad.double(), x_lib.grad, rtol=1e-5, atol=atol)


def test_references_check_data_whatever_the_library_does():
    # The library reads tensor values only when asked to; the references always do.
    bad = torch.tensor([[1.0, math.nan], [0.0, 1.0]])
    for reference in (supcon_loss_loop, supcon_loss_dense):
        with pytest.raises(ValueError, match="features must be finite"):
            reference(bad, torch.tensor([0, 0]))
