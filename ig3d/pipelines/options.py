"""``ig3d.PredictorOptions``: every setting of a :class:`ig3d.Predictor` in one object, as MediaPipe's
tasks take theirs (``FaceLandmarkerOptions``: ``min_face_detection_confidence``,
``min_face_presence_confidence``, ``num_faces``, ``output_face_blendshapes``; google-ai-edge/mediapipe:
mediapipe/tasks/python/vision/face_landmarker.py, read for the names).

``Predictor(options=PredictorOptions(...))``; the Predictor's keyword arguments fill the same fields
(a keyword given wins over the options' field), and ``predictor.options`` gives them back. Each field
is checked when the object is made: a bad value raises ``ValueError`` naming the field.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import asdict, dataclass, fields, replace
from typing import Any, Dict, Mapping, Optional, Union

from ..faces.mediapipe_constants import LANDMARK_MIN_PRESENCE
from ..smoothing import resolve_smoothing

__all__ = ["PredictorOptions", "Outputs", "MIN_FACE_SIZE"]

#: Smallest face (pixels) the default preset looks for. The full-range detector misses faces below
#: ~16-20 px of its input, so an image too large for that at 192x192 is also scanned once whole,
#: at the scale where a face of this size spans SCAN_FACE_PIXELS (the small-face scan).
MIN_FACE_SIZE = 40


@dataclass(frozen=True)
class Outputs:
    """Which per-face outputs the results carry. ``landmarks=False``: an empty ``[0, 3]`` array
    instead of the 478 points; ``blendshapes=False``: empty ``blendshapes`` and ``head_pose`` (the
    Ig3D presets then skip the blendshape model and the pose fit; the default preset's head needs
    them, so it only leaves them out); ``features=False``: ``features2d`` is None."""

    landmarks: bool = True
    blendshapes: bool = True
    features: bool = True


def _positive_int(name: str, v: Any, *, none: bool, what: str) -> None:
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Integral) or v < 1:
        raise ValueError(f"{name} must be {what}{' or None' if none else ''}, got {v!r}")


def _unit(name: str, v: Any, *, none: bool) -> None:
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(v) or not 0.0 <= v <= 1.0:
        raise ValueError(f"{name} must be a number in [0, 1]{' or None' if none else ''}, got {v!r}")


@dataclass(frozen=True)
class PredictorOptions:
    """The settings of a :class:`ig3d.Predictor`.

    Runtime:
        backend: "auto", "onnxruntime", "openvino" or "tensorrt" (see ``Predictor``).
        device: "auto", "cpu" or "cuda".
        precision: "fp32", "bf16", or network -> precision.
        threads: shorthand for ``parallel_runs=threads, threads_per_run=threads``.
        parallel_runs: single-threaded network runs at once on the CPU (default: the usable cores);
            1 runs each network once per call on the whole batch.
        threads_per_run: threads inside a run that has the CPU to itself (default: ``parallel_runs``).

    Faces:
        min_face_size: smallest face looked for, in pixels (default 40; None: no small-face scan).
        min_detection_confidence: one score threshold for both face detectors; None (default) keeps
            each detector's own (full range 0.6, short range 0.5, as MediaPipe's graphs).
        min_face_presence_confidence: the landmark model's face presence below which a region holds
            no face (default 0.5, MediaPipe's); in video, a tracked face below it is lost.

    Video (``Predictor.stream`` and ``Predictor.tracker``):
        max_faces: most faces tracked at once (default 4; still images report every face).
        detect_every: frames between detector runs while fewer than ``max_faces`` faces are tracked.
        smoothing: "default", an :class:`ig3d.smoothing.Smoothing`, a dict of its fields, or None.

    Outputs (what each :class:`ig3d.FaceResult` carries; the networks a preset still needs run anyway):
        output_landmarks: the 478 points; False gives an empty ``[0, 3]`` array.
        output_blendshapes: blendshapes and head pose; False gives empty dicts, and the Ig3D presets
            then skip the blendshape model and the pose fit.
        output_features: the 2D network's feature (``features2d``, Ig3D presets); False gives None.
    """

    backend: str = "auto"
    device: str = "auto"
    precision: Union[str, Mapping[str, str]] = "fp32"
    threads: Optional[int] = None
    parallel_runs: Optional[int] = None
    threads_per_run: Optional[int] = None
    min_face_size: Optional[int] = MIN_FACE_SIZE
    min_detection_confidence: Optional[float] = None
    min_face_presence_confidence: float = LANDMARK_MIN_PRESENCE
    max_faces: int = 4
    detect_every: int = 10
    smoothing: Any = "default"
    output_landmarks: bool = True
    output_blendshapes: bool = True
    output_features: bool = True

    def __post_init__(self) -> None:
        for name in ("backend", "device"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{name}: expected a string, got {getattr(self, name)!r}")
        if not isinstance(self.precision, (str, Mapping)):
            raise ValueError(f"precision: expected 'fp32', 'bf16' or a mapping network -> precision, "
                             f"got {self.precision!r}")
        for name in ("threads", "parallel_runs", "threads_per_run"):
            _positive_int(name, getattr(self, name), none=True, what="a positive number of CPU threads")
        mfs = self.min_face_size
        if mfs is not None and (isinstance(mfs, bool) or not isinstance(mfs, numbers.Real) or not mfs > 0):
            raise ValueError(f"min_face_size must be a positive number of pixels or None, got {mfs!r}")
        _unit("min_detection_confidence", self.min_detection_confidence, none=True)
        _unit("min_face_presence_confidence", self.min_face_presence_confidence, none=False)
        _positive_int("max_faces", self.max_faces, none=False, what="a positive int")
        _positive_int("detect_every", self.detect_every, none=False, what="a positive int (frames)")
        resolve_smoothing(self.smoothing)  # raises "smoothing: ..." for a bad value
        for name in ("output_landmarks", "output_blendshapes", "output_features"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: expected True or False, got {getattr(self, name)!r}")

    @property
    def outputs(self) -> Outputs:
        """The output switches as the pipelines take them."""
        return Outputs(landmarks=self.output_landmarks, blendshapes=self.output_blendshapes,
                       features=self.output_features)

    def replace(self, **changes: Any) -> "PredictorOptions":
        """A copy with ``changes`` (each checked); an unknown field raises ``ValueError``."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ValueError(f"PredictorOptions has no field {', '.join(map(repr, unknown))} "
                             f"(fields: {', '.join(sorted(known))})")
        return replace(self, **changes)

    def to_dict(self) -> Dict[str, Any]:
        """The fields as a dict."""
        return asdict(self)
