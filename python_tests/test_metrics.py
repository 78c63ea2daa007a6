"""ig3d.metrics against scikit-learn (classification) and direct numpy formulas (regression)."""

from __future__ import annotations

import numpy as np
import pytest

from ig3d import metrics

sklearn_metrics = pytest.importorskip("sklearn.metrics", reason="scikit-learn is a test extra")


@pytest.mark.parametrize("seed", range(5))
def test_classification_matches_sklearn(seed):
    rng = np.random.default_rng(seed)
    k = 8 if seed % 2 else 7
    y_true = rng.integers(0, k, 300)
    y_pred = np.where(rng.random(300) < 0.5, y_true, rng.integers(0, k - 1, 300))  # one class never predicted
    got = metrics.classification_metrics(y_true, y_pred)
    exp = {"accuracy": sklearn_metrics.accuracy_score(y_true, y_pred)}
    for avg in ("weighted", "macro"):
        exp[f"f1_{avg}"] = sklearn_metrics.f1_score(y_true, y_pred, average=avg, zero_division=0)
        exp[f"precision_{avg}"] = sklearn_metrics.precision_score(y_true, y_pred, average=avg, zero_division=0)
        exp[f"recall_{avg}"] = sklearn_metrics.recall_score(y_true, y_pred, average=avg, zero_division=0)
    assert set(got) == set(exp)
    for key in exp:
        assert got[key] == pytest.approx(exp[key], abs=1e-12), key


def test_string_labels():
    got = metrics.classification_metrics(["happy", "sad", "happy"], ["happy", "happy", "happy"])
    assert got["accuracy"] == pytest.approx(2 / 3)


def test_va_metrics_match_formulas():
    rng = np.random.default_rng(0)
    true = rng.uniform(-1, 1, (500, 2))
    pred = 0.7 * true + rng.normal(0, 0.3, (500, 2)) + 0.05
    got = metrics.va_metrics(pred, true)
    for j, dim in enumerate(("valence", "arousal")):
        p, t = pred[:, j], true[:, j]
        mse = np.mean((p - t) ** 2)
        assert got[f"{dim}_mse"] == pytest.approx(mse)
        assert got[f"{dim}_rmse"] == pytest.approx(np.sqrt(mse))
        assert got[f"{dim}_mae"] == pytest.approx(np.mean(np.abs(p - t)))
        assert got[f"{dim}_pcc"] == pytest.approx(np.corrcoef(p, t)[0, 1])
        ccc = 2 * np.cov(p, t, bias=True)[0, 1] / (p.var() + t.var() + (p.mean() - t.mean()) ** 2)
        assert got[f"{dim}_ccc"] == pytest.approx(ccc)


def test_ccc_is_one_for_identical_and_below_pcc_for_shifted():
    x = np.linspace(-1, 1, 50)
    assert metrics.ccc(x, x) == pytest.approx(1.0)
    assert metrics.pcc(x, x + 0.5) == pytest.approx(1.0)
    assert metrics.ccc(x, x + 0.5) < 0.9


def test_metric_errors():
    with pytest.raises(ValueError, match="differ in length"):
        metrics.classification_metrics([1, 2], [1])
    with pytest.raises(ValueError, match=r"expected shape \[N, 2\]"):
        metrics.va_metrics(np.zeros((3, 3)), np.zeros((3, 3)))
