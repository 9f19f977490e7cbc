"""Non-finite inputs, the opt-in data checks, and eager == torch.compile for every input.

Default: nothing reads tensor values, and a NaN or Inf anywhere in the features (or in a
counted row of the logits) gives a non-finite loss, never a finite wrong number. With
``scl_loss.set_data_checks(True)`` the same inputs raise a ``ValueError`` naming the argument,
compiled or not. Invalid inputs that need no data read (a float mask) raise in both modes.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._dynamo.testing import CompileCounterWithBackend

import scl_loss
from scl_loss import SCLCrossEntropy, SupConLoss, scl_cross_entropy, supcon_loss
from scl_loss.reference import supcon_loss_dense, supcon_loss_loop

PATHS = ("dense", "blocked")
NON_FINITE = (math.nan, math.inf, -math.inf)


def _features(dtype=torch.float32, shape=(6, 4), bad_row=2, value=math.nan):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0)).to(dtype)
    if value is not None:
        x[bad_row].view(-1)[1] = value
    return x


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("normalize", [True, False])
@pytest.mark.parametrize(
    "labels",
    [[0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5], [0, 0, -100, 1, 1, 2]],
    ids=["positives", "no-positive-anywhere", "bad-row-ignored"],
)
def test_non_finite_features_give_a_non_finite_loss(path, value, dtype, normalize, labels):
    x = _features(dtype, value=value).requires_grad_(True)
    for reduction in ("mean", "sum", "none"):
        out = supcon_loss(
            x, torch.tensor(labels), path=path, normalize=normalize, reduction=reduction, chunk_size=4
        )
        assert not bool(out.isfinite().all()), f"{reduction}: finite loss {out} from a non-finite input"
    mask = torch.rand(6, 6, generator=torch.Generator().manual_seed(1)) < 0.5
    assert not bool(supcon_loss(x, mask=mask, path=path, normalize=normalize, chunk_size=4).isfinite())
    views = _features(dtype, shape=(3, 2, 4), bad_row=1, value=value)
    assert not bool(supcon_loss(views, path=path, normalize=normalize, chunk_size=4).isfinite())


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize(
    ("where", "value"),
    [("features", v) for v in NON_FINITE] + [("logits", math.nan), ("logits", math.inf)],
)
def test_scl_cross_entropy_non_finite_input_gives_non_finite_loss(path, value, where):
    logits = torch.randn(6, 3, generator=torch.Generator().manual_seed(2))
    features = _features(value=None)
    (logits if where == "logits" else features)[1, 2] = value
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    for lambda_ in (0.0, 0.5) if where == "logits" else (0.5, 1.0):
        out = scl_cross_entropy(logits, features, labels, lambda_=lambda_, tau=0.3, path=path, chunk_size=4)
        assert not bool(out.isfinite()), f"λ = {lambda_}: finite loss {out}"


def test_minus_infinity_logit_is_a_zero_probability_as_in_torch():
    """A -inf logit of a class that is not the target is a valid probability of 0: CE stays finite,
    exactly as torch.nn.functional.cross_entropy (NaN and +inf logits do not)."""
    logits, features = torch.randn(6, 3), _features(value=None)
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    logits[1, 2] = -math.inf
    out = scl_cross_entropy(logits, features, labels, lambda_=0.0, tau=0.3)
    torch.testing.assert_close(out, torch.nn.functional.cross_entropy(logits, labels))


def test_meta_tensors_need_no_data():
    """Nothing reads a value: the loss runs on the meta device (shapes only)."""
    x = torch.randn(8, 2, 16, device="meta", requires_grad=True)
    y = torch.zeros(8, dtype=torch.int64, device="meta")
    for path in PATHS:
        out = supcon_loss(x, y, path=path)
        assert out.device.type == "meta"
        assert out.shape == ()
        out.backward()
    logits = torch.randn(8, 3, device="meta")
    out = scl_cross_entropy(logits, x, y, lambda_=0.5, tau=0.1, weight=torch.ones(3, device="meta"))
    assert out.device.type == "meta"


# --- the switch ---------------------------------------------------------------------------------


def _supcon_through_module(features, labels):
    return SupConLoss()(features, labels)


def _scl_through_module(logits, features, labels):
    return SCLCrossEntropy(0.5, 0.3)(logits, features, labels)


@pytest.mark.parametrize("fn", [supcon_loss, _supcon_through_module], ids=lambda f: f.__name__)
@pytest.mark.parametrize("value", NON_FINITE)
def test_switch_on_non_finite_features_raise(fn, value):
    x, y = _features(value=value), torch.tensor([0, 0, 1, 1, 2, 2])
    with scl_loss.set_data_checks(True), pytest.raises(ValueError, match="features must be finite"):
        fn(x, y)
    assert not scl_loss.data_checks_enabled()
    assert not bool(fn(x, y).isfinite())  # off again: the value propagates


@pytest.mark.parametrize("fn", [supcon_loss_loop, supcon_loss_dense], ids=lambda f: f.__name__)
@pytest.mark.parametrize("value", NON_FINITE)
@pytest.mark.parametrize("checks", [True, False])
def test_references_always_refuse_non_finite_features(fn, value, checks):
    """The references are what kernels are tested against: they check their input whatever the switch."""
    x, y = _features(value=value), torch.tensor([0, 0, 1, 1, 2, 2])
    with scl_loss.set_data_checks(checks), pytest.raises(ValueError, match="features must be finite"):
        fn(x, y)


@pytest.mark.parametrize("fn", [scl_cross_entropy, _scl_through_module], ids=lambda f: f.__name__)
@pytest.mark.parametrize("where", ["logits", "features"])
def test_switch_on_scl_cross_entropy_raises_for_logits_and_features(fn, where):
    logits, features = torch.randn(6, 3), _features(value=None)
    (logits if where == "logits" else features)[0, 0] = math.nan
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    kwargs = {"lambda_": 0.5, "tau": 0.3} if fn is scl_cross_entropy else {}
    with scl_loss.set_data_checks(True), pytest.raises(ValueError, match=f"{where} must be finite"):
        fn(logits, features, labels, **kwargs)


def test_switch_on_finite_input_is_unchanged():
    x, y = _features(value=None), torch.tensor([0, 0, 1, 1, 2, 2])
    with scl_loss.set_data_checks(True):
        checked = supcon_loss(x, y)
    torch.testing.assert_close(checked, supcon_loss(x, y), rtol=0, atol=0)


def test_switch_as_function_and_context_manager():
    assert not scl_loss.data_checks_enabled()
    try:
        scl_loss.set_data_checks(True)
        assert scl_loss.data_checks_enabled()
        with scl_loss.set_data_checks(False):
            assert not scl_loss.data_checks_enabled()
        assert scl_loss.data_checks_enabled()  # restored on exit
    finally:
        scl_loss.set_data_checks(False)
    with pytest.raises(TypeError, match="mode must be a bool"):
        scl_loss.set_data_checks(1)  # type: ignore[arg-type]


@pytest.mark.parametrize("mask", [torch.full((6, 6), 0.5), torch.eye(6), torch.eye(6, dtype=torch.int64)])
def test_non_bool_masks_are_refused_by_dtype(mask):
    with pytest.raises(
        TypeError, match=r"mask must be a bool tensor, got .*; convert a 0/1 mask with mask.bool\(\)"
    ):
        supcon_loss(_features(value=None), mask=mask)


# --- eager == compiled, for every input ---------------------------------------------------------


def _outcome(fn, *args):
    """``("value", tensor)`` or ``("error", type, message)``: what a call did."""
    try:
        return ("value", fn(*args))
    except (TypeError, ValueError) as error:
        return ("error", type(error), str(error))


def _assert_same_outcome(eager, compiled):
    assert eager[0] == compiled[0], f"eager {eager} but compiled {compiled}"
    if eager[0] == "error":
        assert eager[1:] == compiled[1:]
    else:
        torch.testing.assert_close(compiled[1], eager[1], equal_nan=True, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("checks", [False, True])
def test_compiled_equals_eager_on_bad_and_degenerate_inputs(path, checks):
    def supcon(x, y):
        return supcon_loss(x, y, path=path, chunk_size=4)

    def masked(x, m):
        return supcon_loss(x, mask=m, path=path, chunk_size=4)

    def combined(logits, x, y):
        return scl_cross_entropy(logits, x, y, lambda_=0.5, tau=0.3, path=path, chunk_size=4)

    y = torch.tensor([0, 0, 1, 1, 2, 2])
    logits = torch.randn(6, 3)
    cases = [
        (supcon, (_features(value=None), y)),
        (supcon, (_features(value=math.nan), y)),
        (supcon, (_features(value=math.inf), torch.arange(6))),
        (masked, (_features(value=None), torch.full((6, 6), 0.5))),  # a 0.5 "mask": TypeError
        (masked, (_features(value=None), torch.rand(6, 6) < 0.5)),
        (combined, (logits, _features(value=None), torch.full((6,), -100))),  # all ignored: 0
        (
            combined,
            (logits.masked_fill(torch.eye(6, 3, dtype=torch.bool), math.nan), _features(value=None), y),
        ),
    ]
    torch._dynamo.reset()
    with scl_loss.set_data_checks(checks):
        for fn, args in cases:
            compiled = torch.compile(fn, backend="aot_eager")
            _assert_same_outcome(_outcome(fn, *args), _outcome(compiled, *args))


@pytest.mark.parametrize("path", PATHS)
def test_all_ignored_batch_is_a_connected_zero_when_compiled(path):
    logits = torch.randn(6, 3, requires_grad=True)
    x = torch.randn(6, 4, requires_grad=True)
    labels = torch.full((6,), -100)

    def combined(logits, x):
        return scl_cross_entropy(logits, x, labels, lambda_=0.5, tau=0.3, path=path, chunk_size=4)

    out = torch.compile(combined, backend="aot_eager", fullgraph=True)(logits, x)
    assert float(out.detach()) == 0.0
    out.backward()
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert torch.equal(x.grad, torch.zeros_like(x))


@pytest.mark.parametrize("checks", [False, True])
def test_no_recompile_per_step(checks):
    """A compiled training step compiles once per setting of the switch, not once per batch
    (with the switch on, the check is a graph break that runs eagerly each step)."""
    torch._dynamo.reset()
    model = torch.nn.Linear(8, 6)
    counter = CompileCounterWithBackend("aot_eager")

    @torch.compile(backend=counter)
    def step(inputs, labels):
        features = model(inputs)
        return supcon_loss(features, labels, temperature=0.2)

    gen = torch.Generator().manual_seed(0)
    with scl_loss.set_data_checks(checks):
        for _ in range(5):
            loss = step(torch.randn(12, 8, generator=gen), torch.randint(0, 3, (12,), generator=gen))
            loss.backward()
        after_first_steps = counter.frame_count
        for _ in range(5):
            step(torch.randn(12, 8, generator=gen), torch.randint(0, 3, (12,), generator=gen)).backward()
    assert counter.frame_count == after_first_steps, "recompiled on new data"
    assert after_first_steps <= (3 if checks else 1)
    if checks:
        bad = torch.randn(12, 8)
        bad[3, 1] = math.nan
        with scl_loss.set_data_checks(True), pytest.raises(ValueError, match="features must be finite"):
            step(bad, torch.randint(0, 3, (12,), generator=gen))
