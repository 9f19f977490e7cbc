"""Every bad input named in the API raises a TypeError/ValueError naming the argument."""

from __future__ import annotations

import math

import pytest
import torch

from scl_loss import SCLCrossEntropy, SupConLoss
from scl_loss.functional import scl_cross_entropy, supcon_loss
from scl_loss.reference import supcon_loss_dense, supcon_loss_loop


def _through_module(features, labels=None, *, mask=None, **options):
    return SupConLoss(**options)(features, labels, mask=mask)


SUPCON_FUNCTIONS = [supcon_loss, supcon_loss_loop, supcon_loss_dense, _through_module]
SUPCON_IDS = ["functional", "loop", "dense", "module"]

X = torch.randn(4, 8)
Y = torch.tensor([0, 0, 1, 1])


@pytest.mark.parametrize("fn", SUPCON_FUNCTIONS, ids=SUPCON_IDS)
@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((X.numpy(), Y), {}, TypeError, "features must be a torch.Tensor"),
        ((torch.ones(4, 8, dtype=torch.int64), Y), {}, TypeError, "features must have a floating dtype"),
        ((torch.randn(8), Y), {}, ValueError, r"features must have shape \[N, D\] or \[N, V, D\]"),
        ((torch.randn(4, 2, 3, 5), Y), {}, ValueError, "features must have shape"),
        ((torch.randn(4, 0), Y), {}, ValueError, "D >= 1"),
        ((X, Y.float()), {}, TypeError, "labels must have an integer dtype"),
        ((X, [0, 0, 1, 1]), {}, TypeError, "labels must be a torch.Tensor"),
        ((X, Y[:3]), {}, ValueError, r"labels must have shape \[N\] = \[4\]"),
        ((X, Y[:, None]), {}, ValueError, "labels must have shape"),
        ((X, Y), {"mask": torch.eye(4, dtype=torch.bool)}, ValueError, "either labels or mask"),
        ((X,), {}, ValueError, "labels and mask are both None"),
        ((X, None), {"mask": torch.eye(3, dtype=torch.bool)}, ValueError, r"mask must have shape \[N, N\]"),
        (
            (X, None),
            {"mask": torch.full((4, 4), 0.5)},
            TypeError,
            r"mask must be a bool tensor.*mask.bool\(\)",
        ),
        ((X, None), {"mask": torch.eye(4)}, TypeError, "mask must be a bool tensor"),
        ((X, None), {"mask": "eye"}, TypeError, "mask must be a torch.Tensor"),
        ((X, Y), {"temperature": 0.0}, ValueError, "temperature must be a finite number > 0"),
        ((X, Y), {"temperature": -1.0}, ValueError, "temperature must be a finite number > 0"),
        ((X, Y), {"temperature": math.inf}, ValueError, "temperature must be a finite number > 0"),
        ((X, Y), {"temperature": math.nan}, ValueError, "temperature must be a finite number > 0"),
        ((X, Y), {"temperature": "0.1"}, TypeError, "temperature must be a real number"),
        ((X, Y), {"temperature": True}, TypeError, "temperature must be a real number"),
        ((X, Y), {"temperature": 1e-45}, ValueError, r"temperature must be >= 1e-12"),
        ((X, Y), {"temperature": 0.99e-12}, ValueError, r"temperature must be >= 1e-12"),
        ((X, Y), {"reduction": "avg"}, ValueError, "reduction must be one of"),
        ((X, Y), {"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
        ((X, Y), {"ignore_index": 2**64}, ValueError, r"ignore_index must lie in the range of int64"),
        ((X, Y), {"ignore_index": -(2**63) - 1}, ValueError, r"ignore_index must lie in the range of int64"),
        (
            (X, Y.to(torch.uint64)),
            {},
            TypeError,
            r"labels must have an integer dtype .*uint32.*got torch\.uint64",
        ),
        ((X, Y.bool()), {}, TypeError, r"labels must have an integer dtype .*got torch\.bool"),
    ],
)
def test_supcon_bad_input(fn, args, kwargs, error, match):
    with pytest.raises(error, match=match):
        fn(*args, **kwargs)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device to put labels elsewhere")
@pytest.mark.gpu
def test_labels_on_another_device():
    with pytest.raises(ValueError, match="labels must be on the features' device"):
        supcon_loss(X.cuda(), Y)


def test_labels_on_another_device_meta():
    # The meta device stands in for a second device on machines without a GPU.
    with pytest.raises(ValueError, match="labels must be on the features' device"):
        supcon_loss(X, Y.to("meta"))
    with pytest.raises(ValueError, match="mask must be on the features' device"):
        supcon_loss(X, mask=torch.eye(4, dtype=torch.bool, device="meta"))


@pytest.mark.parametrize("fn", SUPCON_FUNCTIONS, ids=SUPCON_IDS)
@pytest.mark.parametrize(
    "dtype", [torch.uint8, torch.int8, torch.int16, torch.uint16, torch.int32, torch.uint32]
)
def test_every_int64_compatible_label_dtype_is_accepted(fn, dtype):
    x = torch.randn(6, 2, 5, dtype=torch.float64)
    labels = torch.tensor([0, 0, 1, 1, 2, 3])
    expected = fn(x, labels, ignore_index=3, reduction="none")
    torch.testing.assert_close(fn(x, labels.to(dtype), ignore_index=3, reduction="none"), expected)


@pytest.mark.parametrize("dtype", [torch.uint16, torch.uint32])
def test_scl_cross_entropy_takes_wide_unsigned_labels(dtype):
    labels = torch.tensor([0, 2, 1, 1])
    expected = scl_cross_entropy(LOGITS, X, labels, lambda_=0.5, tau=0.3, ignore_index=2)
    torch.testing.assert_close(
        scl_cross_entropy(LOGITS, X, labels.to(dtype), lambda_=0.5, tau=0.3, ignore_index=2), expected
    )


def test_the_smallest_temperature_gives_a_finite_loss():
    x = torch.randn(8, 2, 16, requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, 2, 3, 4])
    for path in ("dense", "blocked"):
        loss = supcon_loss(x, labels, temperature=1e-12, reduction="sum", path=path, chunk_size=3)
        (grad,) = torch.autograd.grad(loss, x)
        assert bool(torch.isfinite(loss))
        assert bool(torch.isfinite(grad).all())


def test_gathering_with_a_process_group_needs_one():
    # Without an initialised group, gather_distributed=True alone falls back to one process;
    # an explicit process_group cannot be honoured and must not be silently ignored.
    with pytest.raises(TypeError, match=r"process_group must be None or a torch\.distributed\.ProcessGroup"):
        supcon_loss(X, Y, gather_distributed=True, process_group=object())
    with pytest.raises(TypeError, match=r"process_group must be None or a torch\.distributed\.ProcessGroup"):
        SupConLoss(gather_distributed=True, process_group="world")
    with pytest.raises(TypeError, match=r"process_group must be None or a torch\.distributed\.ProcessGroup"):
        SCLCrossEntropy(0.5, 0.3, gather_distributed=True, process_group=object())
    group = torch.distributed.ProcessGroup.__new__(torch.distributed.ProcessGroup)  # never initialised
    with pytest.raises(ValueError, match="no initialised default process group"):
        scl_cross_entropy(LOGITS, X, Y, lambda_=0.5, tau=0.3, gather_distributed=True, process_group=group)


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0)
    with pytest.raises(ValueError, match="temperature must be >= 1e-12"):
        SupConLoss(temperature=1e-45)
    with pytest.raises(ValueError, match="reduction"):
        SupConLoss(reduction="max")
    with pytest.raises(TypeError, match="normalize must be a bool, got str"):
        SupConLoss(normalize="no")
    with pytest.raises(ValueError, match="ignore_index must lie in the range of int64"):
        SupConLoss(ignore_index=2**64)
    with pytest.raises(TypeError, match="gather_distributed must be a bool"):
        SupConLoss(gather_distributed="yes")


def test_meta_tensors_give_meta_outputs_of_the_right_shape():
    # Shape-only runs (e.g. estimating a model's memory on the meta device) read no values.
    # Depends on the core branch, which removes every .item()/bool(tensor) from the default path.
    x = torch.randn(6, 2, 8, device="meta", requires_grad=True)
    labels = torch.tensor([0, 0, 1, 1, 2, -100], device="meta")
    for path in ("dense", "blocked"):
        for reduction, shape in (("mean", ()), ("sum", ()), ("none", (6, 2))):
            out = supcon_loss(x, labels, reduction=reduction, path=path, chunk_size=4)
            assert out.is_meta
            assert out.shape == shape
        out.sum().backward()
        assert x.grad.is_meta
        assert x.grad.shape == x.shape
    loss = SCLCrossEntropy(0.5, 0.3)(torch.randn(6, 3, device="meta"), x, labels)
    assert loss.is_meta
    assert loss.shape == ()


LOGITS = torch.randn(4, 3)


@pytest.mark.parametrize(
    ("args", "kwargs", "error", "match"),
    [
        ((LOGITS, X, Y), {"lambda_": -0.1, "tau": 0.3}, ValueError, r"lambda_ must lie in \[0, 1\]"),
        ((LOGITS, X, Y), {"lambda_": 1.5, "tau": 0.3}, ValueError, r"lambda_ must lie in \[0, 1\]"),
        ((LOGITS, X, Y), {"lambda_": math.nan, "tau": 0.3}, ValueError, r"lambda_ must lie in \[0, 1\]"),
        ((LOGITS, X, Y), {"lambda_": "0.5", "tau": 0.3}, TypeError, "lambda_ must be a real number"),
        ((LOGITS, X, Y), {"lambda_": 0.5, "tau": 0.0}, ValueError, "tau must be a finite number > 0"),
        ((LOGITS, X, Y), {"lambda_": 0.5, "tau": math.inf}, ValueError, "tau must be a finite number > 0"),
        ((LOGITS, X, Y), {"lambda_": 0.5, "tau": 0.3, "scl_reduction": "none"}, ValueError, "scl_reduction"),
        ((LOGITS[0], X, Y), {"lambda_": 0.5, "tau": 0.3}, ValueError, r"logits must have shape \[N, C\]"),
        ((LOGITS.long(), X, Y), {"lambda_": 0.5, "tau": 0.3}, TypeError, "logits must have a floating dtype"),
        (
            (LOGITS, X[:3], Y),
            {"lambda_": 0.5, "tau": 0.3},
            ValueError,
            "features must have the same batch size",
        ),
        ((LOGITS, X, Y[:3]), {"lambda_": 0.5, "tau": 0.3}, ValueError, "labels must have shape"),
        (
            (LOGITS, X, Y.float()),
            {"lambda_": 0.5, "tau": 0.3},
            TypeError,
            "labels must have an integer dtype",
        ),
        ((LOGITS, X, Y), {"lambda_": 0.5, "tau": 0.3, "label_smoothing": 2.0}, ValueError, "label_smoothing"),
        ((LOGITS, X, Y), {"lambda_": 0.5, "tau": 0.3, "weight": [1.0, 2.0, 3.0]}, TypeError, "weight"),
        ((LOGITS, X, Y), {"lambda_": 0.5, "tau": 1e-45}, ValueError, "tau must be >= 1e-12"),
        (
            (LOGITS, X, Y),
            {"lambda_": 0.5, "tau": 0.3, "return_components": "no"},
            TypeError,
            "return_components must be a bool, got str",
        ),
        (
            (LOGITS, X, Y),
            {"lambda_": 0.5, "tau": 0.3, "ignore_index": 2**64},
            ValueError,
            "ignore_index must lie in the range of int64",
        ),
        (
            (LOGITS, X, Y.to(torch.uint64)),
            {"lambda_": 0.5, "tau": 0.3},
            TypeError,
            "labels must have an integer dtype",
        ),
    ],
)
def test_scl_cross_entropy_bad_input(args, kwargs, error, match):
    with pytest.raises(error, match=match):
        scl_cross_entropy(*args, **kwargs)


def test_scl_cross_entropy_devices():
    with pytest.raises(ValueError, match="labels must be on the logits' device"):
        scl_cross_entropy(LOGITS, X, Y.to("meta"), lambda_=0.5, tau=0.3)
    with pytest.raises(ValueError, match="features must be on the logits' device"):
        scl_cross_entropy(LOGITS, X.to("meta"), Y, lambda_=0.5, tau=0.3)


def test_scl_module_validates_at_construction():
    with pytest.raises(ValueError, match="lambda_"):
        SCLCrossEntropy(1.1, 0.3)
    with pytest.raises(ValueError, match="tau"):
        SCLCrossEntropy(0.5, -0.3)
    with pytest.raises(ValueError, match="scl_reduction"):
        SCLCrossEntropy(0.5, 0.3, scl_reduction="none")
    with pytest.raises(ValueError, match="tau must be >= 1e-12"):
        SCLCrossEntropy(0.5, 1e-45)
    with pytest.raises(TypeError, match="return_components must be a bool, got str"):
        SCLCrossEntropy(0.5, 0.3, return_components="no")
    with pytest.raises(ValueError, match="ignore_index must lie in the range of int64"):
        SCLCrossEntropy(0.5, 0.3, ignore_index=-(2**64))
