"""Choosing Ig3D's late fusion on validation data: every mode, and for "weighted" every w2d on a grid.

Ig3D hard-codes its fusion weights and has no search code (dongludeeplearning/Ig3D:
models/classification/latefusion/*_fusion.py; docs REFERENCE 1.4, 1.8 bug 8). ig3d searches them on
a split the user names (the validation split, never the test split, by default):

* modes "max", "mean", "min" and "weighted" as :func:`ig3d.fuse_scores` computes them, element-wise on
  raw scores;
* "weighted": w2d on the grid 0, step, 2 step, ..., 1 and w3d = 1 - w2d;
* objective: accuracy of the argmax of the fused raw logits (classification, as Ig3D), or the mean of
  the valence and arousal CCC (VA; population CCC as :func:`ig3d.metrics.ccc`);
* ties: the smaller w2d wins within "weighted"; between modes, the first in ``modes`` order.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .fusion import fuse_scores
from .metrics import ccc

__all__ = ["LateFusionFit", "fit_late_fusion", "fusion_objective", "weight_grid"]

MODES = ("max", "mean", "min", "weighted")


@dataclass
class LateFusionFit:
    """The chosen late fusion: ``mode``; ``weights`` (w2d, w3d) (for "max"/"mean"/"min" the
    implied (0.5, 0.5) of ``mean`` is not used: None); ``score`` its objective; ``table``: mode ->
    {"score", "weights"}, each mode's best."""

    mode: str
    weights: Optional[Tuple[float, float]]
    score: float
    task: str = "classification"
    table: Dict[str, dict] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"mode": self.mode, "weights": None if self.weights is None else list(self.weights),
                "score": self.score, "task": self.task, "table": self.table}


def weight_grid(step: float) -> np.ndarray:
    """w2d = 0, step, ..., 1 (``1/step`` must be a whole number)."""
    if not (0 < step <= 1):
        raise ValueError(f"step must be in (0, 1], got {step}")
    n = int(round(1.0 / step))
    if abs(n * step - 1.0) > 1e-9:
        raise ValueError(f"step: 1/step must be a whole number (0.01, 0.05, 0.1, ...), got {step}")
    return np.round(np.arange(n + 1) * step, 12)


def fusion_objective(fused: np.ndarray, targets: np.ndarray, task: str) -> float:
    """Accuracy of argmax (classification: targets [N] ints) or mean CCC of the two columns (va:
    targets [N, 2])."""
    if task == "classification":
        return float(np.mean(np.argmax(fused, axis=1) == targets))
    return 0.5 * (ccc(fused[:, 0], targets[:, 0]) + ccc(fused[:, 1], targets[:, 1]))


def _check(scores2d, scores3d, targets, task: str):
    s2d = np.ascontiguousarray(scores2d, np.float32)
    s3d = np.ascontiguousarray(scores3d, np.float32)
    if s2d.ndim != 2 or s2d.shape != s3d.shape:
        raise ValueError(f"scores2d and scores3d must be [N, K] arrays of one shape, got {list(s2d.shape)} "
                         f"and {list(s3d.shape)}")
    if len(s2d) == 0:
        raise ValueError("no rows to fit the fusion on")
    t = np.asarray(targets)
    if task == "classification":
        if t.shape != (len(s2d),) or t.dtype.kind not in "iu":
            raise ValueError(f"targets: expected [N={len(s2d)}] integer class labels, got {t.dtype} {list(t.shape)}")
        if t.min() < 0 or t.max() >= s2d.shape[1]:
            raise ValueError(f"targets: labels must lie in 0..{s2d.shape[1] - 1}")
    elif task == "va":
        if s2d.shape[1] != 2 or t.shape != (len(s2d), 2):
            raise ValueError(f"va: expected scores [N, 2] and targets [N, 2] (valence, arousal), got "
                             f"{list(s2d.shape)} and {list(t.shape)}")
        t = t.astype(np.float64)
        if not np.all(np.isfinite(t)):
            raise ValueError("targets: valence/arousal contain NaN (drop the rows without VA first)")
    else:
        raise ValueError(f"task: expected 'classification' or 'va', got {task!r}")
    return s2d, s3d, t


def fit_late_fusion(scores2d, scores3d, targets, task: str = "classification",
                    modes: Sequence[str] = MODES, step: float = 0.01) -> LateFusionFit:
    """Try every late-fusion mode on (scores2d, scores3d) against ``targets`` and keep the best.

    scores2d, scores3d: [N, K] raw scores in the same column order (classification: logits of the
    same K classes; va: [N, 2] valence, arousal). targets: [N] labels or [N, 2] valence, arousal.
    """
    s2d, s3d, t = _check(scores2d, scores3d, targets, task)
    modes = tuple(modes)
    if not modes or any(m not in MODES for m in modes):
        raise ValueError(f"modes: expected a non-empty subset of {MODES}, got {modes}")
    table: Dict[str, dict] = {}
    for mode in modes:
        if mode != "weighted":
            table[mode] = {"score": fusion_objective(fuse_scores(s2d, s3d, mode), t, task), "weights": None}
            continue
        best, best_w = -np.inf, None
        for w in weight_grid(step):  # ascending: a tie keeps the smaller w2d
            score = fusion_objective(fuse_scores(s2d, s3d, "weighted", (w, 1.0 - w)), t, task)
            if score > best:
                best, best_w = score, (float(w), float(round(1.0 - w, 12)))
        table[mode] = {"score": float(best), "weights": list(best_w)}
    chosen = max(modes, key=lambda m: (table[m]["score"], -modes.index(m)))
    w = table[chosen]["weights"]
    return LateFusionFit(chosen, None if w is None else (w[0], w[1]), table[chosen]["score"], task, table)
