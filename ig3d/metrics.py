"""The Ig3D paper's evaluation metrics, in plain numpy.

``classification_metrics`` gives accuracy and weighted / macro precision, recall and F1 (as
scikit-learn computes them, with 0 for an undefined ratio); ``va_metrics`` gives, for valence and
arousal, MSE, MAE, RMSE, Pearson's r and Lin's concordance correlation coefficient (CCC, population
variances, as in the Ig3D and CAGE evaluation code).
"""

from __future__ import annotations

from typing import Dict

import numpy as np

__all__ = ["classification_metrics", "va_metrics", "ccc", "pcc"]


def _labels(y, name: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of class labels, got shape {list(y.shape)}")
    return y


def classification_metrics(y_true, y_pred) -> Dict[str, float]:
    """accuracy, f1/precision/recall (weighted and macro) over the labels present in either array."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred differ in length: {t.shape[0]} vs {p.shape[0]}")
    if t.size == 0:
        raise ValueError("y_true is empty")
    classes, inv = np.unique(np.concatenate([t, p]), return_inverse=True)
    ti, pi = inv[: t.size], inv[t.size:]
    k = classes.size
    cm = np.zeros((k, k), np.int64)
    np.add.at(cm, (ti, pi), 1)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(1).astype(np.float64)
    predicted = cm.sum(0).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        precision = np.where(predicted > 0, tp / predicted, 0.0)
        recall = np.where(support > 0, tp / support, 0.0)
        denom = precision + recall
        f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
    w = support / support.sum()
    return {
        "accuracy": float(tp.sum() / t.size),
        "f1_weighted": float((f1 * w).sum()),
        "precision_weighted": float((precision * w).sum()),
        "recall_weighted": float((recall * w).sum()),
        "f1_macro": float(f1.mean()),
        "precision_macro": float(precision.mean()),
        "recall_macro": float(recall.mean()),
    }


def pcc(x, y) -> float:
    """Pearson correlation coefficient."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    xc, yc = x - x.mean(), y - y.mean()
    den = np.sqrt((xc * xc).sum() * (yc * yc).sum())
    return float((xc * yc).sum() / den) if den > 0 else float("nan")


def ccc(x, y) -> float:
    """Lin's concordance correlation coefficient, population (1/N) variances."""
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    mx, my = x.mean(), y.mean()
    vx, vy = x.var(), y.var()
    cov = ((x - mx) * (y - my)).mean()
    den = vx + vy + (mx - my) ** 2
    return float(2 * cov / den) if den > 0 else float("nan")


def va_metrics(pred, true) -> Dict[str, float]:
    """pred, true: [N, 2] arrays of (valence, arousal). Returns ``valence_mse`` .. ``arousal_ccc``."""
    pred, true = np.asarray(pred, np.float64), np.asarray(true, np.float64)
    for name, a in (("pred", pred), ("true", true)):
        if a.ndim != 2 or a.shape[1] != 2:
            raise ValueError(f"{name}: expected shape [N, 2] (valence, arousal), got {list(a.shape)}")
    if pred.shape != true.shape:
        raise ValueError(f"pred and true differ in shape: {list(pred.shape)} vs {list(true.shape)}")
    if pred.shape[0] == 0:
        raise ValueError("pred is empty")
    out: Dict[str, float] = {}
    for j, dim in enumerate(("valence", "arousal")):
        d = pred[:, j] - true[:, j]
        mse = float((d * d).mean())
        out[f"{dim}_mse"] = mse
        out[f"{dim}_mae"] = float(np.abs(d).mean())
        out[f"{dim}_rmse"] = float(np.sqrt(mse))
        out[f"{dim}_pcc"] = pcc(pred[:, j], true[:, j])
        out[f"{dim}_ccc"] = ccc(pred[:, j], true[:, j])
    return out
