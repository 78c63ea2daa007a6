"""Typed per-face results."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Dict, Optional

import numpy as np

__all__ = ["FaceResult"]


def _same(a: Any, b: Any) -> bool:
    """Exact equality of two field values: arrays by shape and values, dicts key by key."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        if a is None or b is None:
            return False
        a, b = np.asarray(a), np.asarray(b)
        return a.shape == b.shape and bool(np.array_equal(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return bool(a == b)


@dataclass(eq=False)
class FaceResult:
    """One face: where it is, its 3D representation, each branch's reading and the fused one.

    box: [4] (x0, y0, x1, y1) pixels; score: detector confidence; landmarks: [478, 3] pixels (z in
    the same scale as x, camera-facing negative); blendshapes: name -> value in [0, 1] (52, MediaPipe
    order); head_pose: yaw/pitch/roll in degrees; params3d: the 3D parameter vector the head saw;
    label / scores: the fused class and probabilities (label -> probability, sums to 1);
    valence / arousal: in [-1, 1]; scores_2d / scores_3d and label_2d / label_3d: each branch alone
    (2D expression network; 3D head) before late fusion; logits_2d / logits_3d: their raw scores in
    the label order; flame: FLAME parameters for the Ig3D presets (None for the default preset);
    scores2d_raw: the 2D network's raw output in its own order (what the head late-fuses: the
    default preset's mini-Xception logits in FER2013's order, DDAMFN++'s logits, CAGE's outputs);
    features2d: the 2D network's feature for intermediate fusion (Ig3D presets; None otherwise);
    track_id: in video streams, the face's track (kept while the face stays tracked, a new one when
    it comes back after being lost); None for still images.

    ``a == b`` compares values: every field equal, arrays element by element (same shape, exact
    values; NaN is unequal to itself, as for floats), dicts key by key. Comparing with anything other
    than a ``FaceResult`` is ``False``. Results are mutable, so they are not hashable.
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    blendshapes: Dict[str, float]
    head_pose: Dict[str, float]
    params3d: np.ndarray
    label: str
    scores: Dict[str, float]
    valence: float
    arousal: float
    label_2d: str
    scores_2d: Dict[str, float]
    label_3d: str
    scores_3d: Dict[str, float]
    logits_2d: np.ndarray
    logits_3d: np.ndarray
    flame: Optional[Dict[str, np.ndarray]] = field(default=None)
    scores2d_raw: Optional[np.ndarray] = field(default=None)
    features2d: Optional[np.ndarray] = field(default=None)
    track_id: Optional[int] = field(default=None)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, FaceResult):
            return NotImplemented
        return all(_same(getattr(self, f.name), getattr(other, f.name)) for f in fields(self))

    __hash__ = None  # type: ignore[assignment]  # mutable and compared by value

    @property
    def area(self) -> float:
        return float(max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1]))

    def to_dict(self, *, landmarks: bool = True) -> Dict[str, Any]:
        """Plain Python types only (``json.dumps`` accepts it). ``landmarks=False`` leaves out the
        478 points."""
        d: Dict[str, Any] = {
            "box": [float(v) for v in self.box],
            "score": float(self.score),
            "label": self.label,
            "scores": {k: float(v) for k, v in self.scores.items()},
            "valence": float(self.valence),
            "arousal": float(self.arousal),
            "label_2d": self.label_2d,
            "scores_2d": {k: float(v) for k, v in self.scores_2d.items()},
            "label_3d": self.label_3d,
            "scores_3d": {k: float(v) for k, v in self.scores_3d.items()},
            "logits_2d": [float(v) for v in self.logits_2d],
            "logits_3d": [float(v) for v in self.logits_3d],
            "head_pose": {k: float(v) for k, v in self.head_pose.items()},
            "blendshapes": {k: float(v) for k, v in self.blendshapes.items()},
            "params3d": [float(v) for v in self.params3d],
        }
        if landmarks:
            d["landmarks"] = np.asarray(self.landmarks, np.float64).round(2).tolist()
        if self.track_id is not None:
            d["track_id"] = int(self.track_id)
        if self.flame is not None:
            d["flame"] = {k: np.asarray(v, np.float64).tolist() for k, v in self.flame.items()}
        return d

    def __repr__(self) -> str:
        x0, y0, x1, y1 = (int(round(v)) for v in self.box)
        return (f"FaceResult({self.label} {self.scores[self.label]:.2f}, box=({x0}, {y0}, {x1}, {y1}), "
                f"valence={self.valence:+.2f}, arousal={self.arousal:+.2f}, 2D={self.label_2d}, 3D={self.label_3d})")
