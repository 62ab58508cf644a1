"""Each task's official metric against values computed by hand."""

from __future__ import annotations

import math

import pytest

from sltlab.errors import ConfigError, DataError
from sltlab.tasks.metrics import compute_metrics, main_metric


def test_main_metric_names():
    assert main_metric("cola") == "mcc"
    assert main_metric("SST-2") == "accuracy"
    assert main_metric("mrpc") == "f1" and main_metric("qqp") == "f1"
    assert main_metric("stsb") == "spearman"
    assert main_metric("mnli") == "accuracy_matched"
    assert main_metric("rte") == "accuracy"
    with pytest.raises(ConfigError):
        main_metric("imdb")


def test_cola_matthews_by_hand():
    y = [1, 1, 1, 0, 0, 1]
    p = [1, 0, 1, 0, 1, 1]
    # TP=3, FN=1, TN=1, FP=1: (3*1 - 1*1) / sqrt(4 * 2 * 2 * 4) = 2 / 8
    m = compute_metrics("cola", p, y)
    assert m["mcc"] == pytest.approx(0.25)
    assert m["accuracy"] == pytest.approx(4 / 6)
    assert compute_metrics("cola", [1, 1, 1], [1, 0, 1])["mcc"] == 0.0  # constant prediction: no correlation


def test_mrpc_f1_by_hand():
    y = [1, 1, 0, 0, 1]
    p = [1, 0, 1, 0, 1]
    # TP=2, FP=1, FN=1: precision 2/3, recall 2/3, F1 2/3
    m = compute_metrics("mrpc", p, y)
    assert m["f1"] == pytest.approx(2 / 3) and m["accuracy"] == pytest.approx(3 / 5)
    assert compute_metrics("qqp", [0, 0], [1, 0])["f1"] == 0.0


def test_stsb_correlations_by_hand():
    y = [0.0, 1.0, 2.0, 3.0]
    p = [0.0, 2.0, 1.0, 3.0]
    # Spearman: ranks differ by (0, 1, -1, 0): 1 - 6 * 2 / (4 * 15) = 0.8; Pearson of these two is also 0.8.
    m = compute_metrics("stsb", p, y)
    assert m["spearman"] == pytest.approx(0.8)
    assert m["pearson"] == pytest.approx(0.8)
    exp = compute_metrics("stsb", [1.0, 4.0, 9.0, 16.0], [1.0, 2.0, 3.0, 4.0])
    assert exp["spearman"] == pytest.approx(1.0) and exp["pearson"] < 1.0
    mean_p, mean_y = 7.5, 2.5
    num = sum((a - mean_p) * (b - mean_y) for a, b in zip([1, 4, 9, 16], [1, 2, 3, 4], strict=True))
    den = math.sqrt(
        sum((a - mean_p) ** 2 for a in [1, 4, 9, 16]) * sum((b - mean_y) ** 2 for b in [1, 2, 3, 4])
    )
    assert exp["pearson"] == pytest.approx(num / den)
    assert compute_metrics("stsb", [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])["pearson"] == 0.0


def test_mnli_matched_and_mismatched():
    m = compute_metrics(
        "mnli", [0, 1, 2, 2], [0, 1, 2, 1], labels_mismatched=[2, 2], predictions_mismatched=[2, 0]
    )
    assert m == {"accuracy_matched": pytest.approx(0.75), "accuracy_mismatched": pytest.approx(0.5)}
    assert set(compute_metrics("mnli", [0], [0])) == {"accuracy_matched"}


def test_accuracy_tasks_and_bad_input():
    assert compute_metrics("rte", [0, 1, 1], [0, 1, 0]) == {"accuracy": pytest.approx(2 / 3)}
    assert compute_metrics("sst2", [1, 0], [1, 0])["accuracy"] == 1.0
    with pytest.raises(DataError, match="differ in length"):
        compute_metrics("sst2", [1, 0], [1])
    with pytest.raises(DataError, match="empty"):
        compute_metrics("sst2", [], [])
