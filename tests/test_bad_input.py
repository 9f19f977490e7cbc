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
        ((X, Y), {"reduction": "avg"}, ValueError, "reduction must be one of"),
        ((X, Y), {"ignore_index": 1.5}, TypeError, "ignore_index must be an int"),
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


def test_module_validates_at_construction():
    with pytest.raises(ValueError, match="temperature"):
        SupConLoss(temperature=0)
    with pytest.raises(ValueError, match="reduction"):
        SupConLoss(reduction="max")


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
