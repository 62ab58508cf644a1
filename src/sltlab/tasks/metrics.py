"""Each GLUE task's official metric(s), computed with scikit-learn / SciPy, as plain floats.

CoLA: Matthews correlation (`mcc`); MRPC and QQP: F1 of the positive class (`f1`) and `accuracy`; STS-B:
Spearman and Pearson correlation (`spearman`, `pearson`); MNLI: `accuracy_matched` and `accuracy_mismatched`;
the others: `accuracy`. Values are fractions (accuracy, F1 in [0, 1]) or correlations (in [-1, 1]), as stored
in the run records; tables multiply by 100 to show GLUE "points", so "within 2 points" is a difference of 0.02
here.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

from sltlab.errors import DataError
from sltlab.tasks.glue import get_task


def main_metric(task: str) -> str:
    """The name of the task's headline metric (the first official one): what tables rank by."""
    return get_task(task).metrics[0]


def _as_array(x: Sequence[float] | np.ndarray, name: str) -> np.ndarray:
    a = np.asarray(x)
    if a.ndim != 1:
        raise DataError(f"{name} must be one-dimensional, got shape {a.shape}")
    return a


def _correlation(fn, a: np.ndarray, b: np.ndarray) -> float:
    # A constant prediction has no defined correlation; score it 0 (what it is worth) instead of NaN.
    if np.std(a) == 0 or np.std(b) == 0:
        return 0.0
    return float(fn(a, b)[0])


def compute_metrics(
    task: str,
    predictions: Sequence[float] | np.ndarray,
    labels: Sequence[float] | np.ndarray,
    labels_mismatched: Sequence[float] | np.ndarray | None = None,
    predictions_mismatched: Sequence[float] | np.ndarray | None = None,
) -> dict[str, float]:
    """The official metric(s) of `task`: fractions in [0, 1] or correlations in [-1, 1].

    predictions: class ids (classification) or scores (STS-B). For MNLI, `predictions`/`labels` are the
    matched dev set; pass the mismatched ones as predictions_mismatched/labels_mismatched to get both
    accuracies (without them only accuracy_matched is returned).
    """
    info = get_task(task)
    p = _as_array(predictions, "predictions")
    y = _as_array(labels, "labels")
    if p.shape != y.shape:
        raise DataError(f"predictions ({p.shape[0]}) and labels ({y.shape[0]}) differ in length")
    if p.size == 0:
        raise DataError("cannot score an empty prediction set")
    if info.is_regression:
        p, y = p.astype(np.float64), y.astype(np.float64)
        return {"spearman": _correlation(spearmanr, p, y), "pearson": _correlation(pearsonr, p, y)}
    p, y = p.astype(np.int64), y.astype(np.int64)
    if info.name == "cola":
        return {"mcc": float(matthews_corrcoef(y, p)), "accuracy": float(accuracy_score(y, p))}
    if info.name in ("mrpc", "qqp"):
        return {
            "f1": float(f1_score(y, p, pos_label=1, zero_division=0)),
            "accuracy": float(accuracy_score(y, p)),
        }
    if info.name == "mnli":
        out = {"accuracy_matched": float(accuracy_score(y, p))}
        if labels_mismatched is not None and predictions_mismatched is not None:
            pm = _as_array(predictions_mismatched, "predictions_mismatched").astype(np.int64)
            ym = _as_array(labels_mismatched, "labels_mismatched").astype(np.int64)
            if pm.shape != ym.shape:
                raise DataError("mismatched predictions and labels differ in length")
            out["accuracy_mismatched"] = float(accuracy_score(ym, pm))
        return out
    return {"accuracy": float(accuracy_score(y, p))}
