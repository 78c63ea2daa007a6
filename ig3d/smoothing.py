"""Causal, time-aware smoothing of per-face video outputs.

Landmarks jitter from frame to frame on a still face (MediaPipe users report it: mediapipe#4927,
#5090, #825, #3495), and so do the class probabilities. Every filter here is causal (frame t's
output uses frames up to t only) and uses the frames' timestamps, so variable frame rates and
dropped frames are handled: the filters see the real time between samples.

* :class:`OneEuroFilter`: the 1 euro filter (Casiez, Roussel, Vogel, "1 euro filter: a simple
  speed-based low-pass filter for noisy input in interactive systems", CHI 2012), written after
  MediaPipe's implementation (google-ai-edge/mediapipe: mediapipe/util/filtering/one_euro_filter.cc,
  read for behaviour, code not copied): a first-order low-pass filter whose cutoff frequency rises
  with the signal's speed, ``fc = min_cutoff + beta * |speed|``; the speed is the difference to the
  previous *raw* sample (as in MediaPipe and in Casiez's own code; the paper's formula uses the
  previous filtered value) times the sample rate, low-passed at ``d_cutoff``, and multiplied by
  ``value_scale``. ``alpha(fc) = 1 / (1 + tau / Te)``, ``tau = 1 / (2 pi fc)``, ``Te`` the time
  since the previous sample. The first sample passes through unchanged.
* Landmarks use it the way MediaPipe's FaceLandmarker does in VIDEO mode
  (mediapipe/tasks/cc/vision/face_landmarker/face_landmarks_detector_graph.cc
  ``ConfigureLandmarksSmoothingCalculator``; mediapipe/calculators/util/landmarks_smoothing_calculator.cc):
  ``min_cutoff 0.05``, ``beta 80``, ``d_cutoff 1.0`` on pixel coordinates (x, y, and z, which has
  x's scale), with ``value_scale = 1 / face size`` (the mean of the landmarks' bounding-box width and
  height), so that ``beta`` acts on the speed in face sizes per second and a small distant face is
  smoothed like a close one. The face's box is the bounding box of its landmarks, so it is
  smoothed with them.
* :class:`ExponentialFilter`: class probabilities and valence/arousal. A first-order low-pass
  filter in continuous time, ``y += (1 - exp(-dt / tau)) * (x - y)``: the same time constant
  ``tau`` whatever the frame rate (at 30 frames/s and ``tau = 0.1 s`` each new frame weighs 28 %).
  Probabilities stay probabilities (a convex combination of distributions sums to 1).

MediaPipe smooths one face only (``num_faces == 1``); here every tracked face has its own filters
(:class:`FaceSmoother`), created when its track starts and dropped when it is lost.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Optional, Union

import numpy as np

__all__ = ["Smoothing", "OneEuroFilter", "ExponentialFilter", "FaceSmoother", "face_scale", "resolve_smoothing"]


@dataclass(frozen=True)
class Smoothing:
    """Smoothing parameters for video streams (``Predictor.stream(..., smoothing=Smoothing(...))``).

    Attributes:
        min_cutoff: One Euro minimum cutoff frequency (Hz) for landmarks: lower = steadier at rest.
            MediaPipe's FaceLandmarker: 0.05.
        beta: One Euro speed coefficient (per face size per second): higher = less lag when the
            face moves. MediaPipe's FaceLandmarker: 80.
        d_cutoff: cutoff frequency (Hz) of the speed estimate. MediaPipe: 1.0.
        scores_time_constant: time constant (seconds) of the exponential filter on the class
            probabilities (fused, 2D and 3D) and valence/arousal; 0 leaves them raw. Default 0.1 s
            (ig3d's choice: about three frames at 30 frames/s, short next to the 0.5-4 s an
            expression lasts).
    """

    min_cutoff: float = 0.05
    beta: float = 80.0
    d_cutoff: float = 1.0
    scores_time_constant: float = 0.1

    def __post_init__(self):
        for name in ("min_cutoff", "d_cutoff"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"Smoothing.{name}: expected a positive frequency in Hz, got {v!r}")
        for name in ("beta", "scores_time_constant"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= 0):
                raise ValueError(f"Smoothing.{name}: expected a number >= 0, got {v!r}")


def resolve_smoothing(value: Any) -> Optional[Smoothing]:
    """``"default"`` or ``True`` -> :class:`Smoothing` (), ``None`` or ``False`` -> ``None`` (raw
    outputs), a :class:`Smoothing` as is, a dict -> ``Smoothing(**dict)``."""
    if value is None or value is False:
        return None
    if value is True or (isinstance(value, str) and value == "default"):
        return Smoothing()
    if isinstance(value, Smoothing):
        return value
    if isinstance(value, dict):
        try:
            return Smoothing(**value)
        except TypeError as e:
            raise ValueError(f"smoothing: {e}") from e
    raise ValueError(f"smoothing: expected 'default', None, a Smoothing or a dict of its fields, got {value!r}")


def _alpha(cutoff: Union[float, np.ndarray], dt: float) -> Union[float, np.ndarray]:
    """Smoothing factor of a first-order low-pass filter with cutoff ``cutoff`` (Hz) sampled every
    ``dt`` seconds: ``1 / (1 + tau / dt)``, ``tau = 1 / (2 pi cutoff)``."""
    tau = 1.0 / (2.0 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """The 1 euro filter on an array of values (every element filtered independently).

    ``f(x, t, value_scale=1.0)`` returns the filtered array for the sample ``x`` taken at ``t``
    seconds; ``t`` must increase from call to call.
    """

    def __init__(self, min_cutoff: float = 0.05, beta: float = 80.0, d_cutoff: float = 1.0):
        self.min_cutoff, self.beta, self.d_cutoff = float(min_cutoff), float(beta), float(d_cutoff)
        self.reset()

    def reset(self) -> None:
        self._t: Optional[float] = None
        self._raw: Optional[np.ndarray] = None
        self._x: Optional[np.ndarray] = None
        self._dx: Optional[np.ndarray] = None

    def __call__(self, x: np.ndarray, t: float, value_scale: float = 1.0) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._t is None:
            self._t, self._raw, self._x, self._dx = float(t), x.copy(), x.copy(), np.zeros_like(x)
            return x.copy()
        dt = float(t) - self._t
        if not dt > 0:
            raise ValueError(f"OneEuroFilter: timestamps must increase, got {t} after {self._t}")
        if x.shape != self._x.shape:
            raise ValueError(f"OneEuroFilter: expected values of shape {self._x.shape}, got {x.shape}")
        speed = (x - self._raw) * (value_scale / dt)
        a_d = _alpha(self.d_cutoff, dt)
        self._dx = a_d * speed + (1.0 - a_d) * self._dx
        a = _alpha(self.min_cutoff + self.beta * np.abs(self._dx), dt)
        self._x = a * x + (1.0 - a) * self._x
        self._t, self._raw = float(t), x.copy()
        return self._x.copy()


class ExponentialFilter:
    """First-order low-pass filter in continuous time: ``y += (1 - exp(-dt / tau)) * (x - y)``.
    The first sample passes through; ``tau = 0`` passes every sample through."""

    def __init__(self, time_constant: float):
        self.tau = float(time_constant)
        self.reset()

    def reset(self) -> None:
        self._t: Optional[float] = None
        self._y: Optional[np.ndarray] = None

    def __call__(self, x: np.ndarray, t: float) -> np.ndarray:
        x = np.asarray(x, np.float64)
        if self._t is None or self.tau == 0:
            self._t, self._y = float(t), x.copy()
            return x.copy()
        dt = float(t) - self._t
        if not dt > 0:
            raise ValueError(f"ExponentialFilter: timestamps must increase, got {t} after {self._t}")
        self._y = self._y + (1.0 - math.exp(-dt / self.tau)) * (x - self._y)
        self._t = float(t)
        return self._y.copy()


def face_scale(landmarks: np.ndarray) -> float:
    """MediaPipe's object scale: the mean of the width and height of the landmarks' axis-aligned
    bounding box (pixels)."""
    xy = np.asarray(landmarks)[:, :2]
    return float(np.mean(xy.max(axis=0) - xy.min(axis=0)))


class FaceSmoother:
    """The filters of one tracked face: landmarks (One Euro, relative to face size) and the class
    probabilities and valence/arousal (exponential)."""

    #: below this face size (pixels) smoothing is skipped for the frame, as MediaPipe does below
    #: its ``min_allowed_object_scale``
    MIN_SCALE = 1e-6

    def __init__(self, params: Smoothing):
        self.params = params
        self.landmarks = OneEuroFilter(params.min_cutoff, params.beta, params.d_cutoff)
        self._scores = {}

    def smooth_landmarks(self, lm: np.ndarray, t: float) -> np.ndarray:
        """Filtered ``[L, 3]`` landmarks (pixels), the velocity measured in face sizes."""
        scale = face_scale(lm)
        if scale < self.MIN_SCALE:
            return np.asarray(lm, np.float32).copy()
        return self.landmarks(lm, t, 1.0 / scale).astype(np.float32)

    def smooth(self, name: str, x: np.ndarray, t: float) -> np.ndarray:
        """Filtered values of the named quantity (``"scores"``, ``"va"``, ...)."""
        f = self._scores.get(name)
        if f is None:
            f = self._scores[name] = ExponentialFilter(self.params.scores_time_constant)
        return f(x, t)
