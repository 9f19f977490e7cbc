"""Task metrics with scikit-learn: accuracy for every task, plus MCC (CoLA) and F1 (MRPC)."""

from __future__ import annotations

from collections.abc import Sequence

__all__ = ["task_metrics"]


def task_metrics(labels: Sequence[int], predictions: Sequence[int]) -> dict[str, float]:
    """``{"acc", "mcc", "f1"}``; F1 is binary F1 of class 1 when there are two classes, else macro.

    Example:
        >>> task_metrics([0, 1, 1, 0], [0, 1, 0, 0])["acc"]
        0.75
    """
    from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

    if len(labels) != len(predictions) or not labels:
        raise ValueError(
            f"labels and predictions must be non-empty and equal in length, got "
            f"{len(labels)} and {len(predictions)}"
        )
    binary = len(set(labels) | set(predictions)) <= 2 and max(max(labels), max(predictions)) <= 1
    return {
        "acc": float(accuracy_score(labels, predictions)),
        "mcc": float(matthews_corrcoef(labels, predictions)),
        "f1": float(f1_score(labels, predictions, average="binary" if binary else "macro", zero_division=0)),
    }
