"""The ig3d side of ``default_pipeline.py``: ``ig3d.Predictor()`` with its default preset.

``--backend`` and ``--precision`` are passed to the Predictor; ``--min-face-size none`` turns the
small-face scan off (the "same work" as MediaPipe's FaceLandmarker, which has no such scan), a
number sets it, and the default leaves the Predictor's default. One image per call with
``Predictor.predict(img)``, several images in one call with ``Predictor.predict_batch(imgs)``. Started by ``default_pipeline.py`` in a fresh process of the
current interpreter (so its peak RSS is comparable with the MediaPipe side's); see
``_bench_common.py`` for the protocol. Exits with status 3 when ``ig3d.Predictor`` is missing.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bench_common import SideUnavailable, run_worker, worker_arguments  # noqa: E402


class Ig3dPredictor:
    """``ig3d.Predictor(backend=..., precision=..., [min_face_size=...])`` (default preset and device)
    behind the worker interface."""

    def __init__(self, backend: str = "auto", precision: str = "fp32", min_face_size: str = "default"):
        import ig3d

        if not hasattr(ig3d, "Predictor"):
            raise SideUnavailable(
                f"ig3d.Predictor is not available in ig3d {ig3d.__version__} ({ig3d.__file__}); "
                "ig3d/predictor.py has not landed yet")
        kwargs: Dict[str, Any] = {"backend": backend, "precision": precision}
        if min_face_size != "default":
            kwargs["min_face_size"] = None if min_face_size == "none" else int(min_face_size)
        try:
            self.predictor = ig3d.Predictor(**kwargs)
        except (RuntimeError, ValueError, ImportError) as exc:  # a backend or precision this machine lacks
            raise SideUnavailable(f"ig3d.Predictor({kwargs}): {exc}") from exc
        self.versions = {"ig3d": ig3d.__version__, "backend": self.predictor.backend,
                         "device": self.predictor.device, "precision": precision,
                         "min_face_size": str(kwargs.get("min_face_size", "default"))}
        try:
            import onnxruntime

            self.versions["onnxruntime"] = onnxruntime.__version__
        except ImportError:
            pass

    def predict(self, img: np.ndarray) -> Any:
        return self.predictor.predict(img)

    def predict_many(self, imgs: List[np.ndarray]) -> List[Any]:
        return list(self.predictor.predict_batch(imgs))

    def summary(self, faces: Any) -> Dict[str, Any]:
        """``faces``: one image's list of ``FaceResult`` (fused label and its probability)."""
        return {"faces": len(faces), "labels": [f"{f.label} {f.scores[f.label]:.2f}" for f in faces]}


def main() -> None:
    ap = worker_arguments(__doc__.splitlines()[0])
    ap.add_argument("--backend", default="auto", help="Predictor(backend=...)")
    ap.add_argument("--precision", default="fp32", help="Predictor(precision=...)")
    ap.add_argument("--min-face-size", default="default", help="'default', 'none' or a number of pixels")
    args = ap.parse_args()
    run_worker(args, "ig3d", lambda: Ig3dPredictor(args.backend, args.precision, args.min_face_size))


if __name__ == "__main__":
    main()
