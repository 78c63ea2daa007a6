"""The ig3d side of ``default_pipeline.py``: ``ig3d.Predictor()`` with its default preset.

One image per call with ``Predictor.predict(img)``, several images in one call with
``Predictor.predict_batch(imgs)``. Started by ``default_pipeline.py`` in a fresh process of the
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
    """``ig3d.Predictor()`` (default preset, backend and device) behind the worker interface."""

    def __init__(self):
        import ig3d

        if not hasattr(ig3d, "Predictor"):
            raise SideUnavailable(
                f"ig3d.Predictor is not available in ig3d {ig3d.__version__} ({ig3d.__file__}); "
                "ig3d/predictor.py has not landed yet")
        self.predictor = ig3d.Predictor()
        self.versions = {"ig3d": ig3d.__version__, "backend": self.predictor.backend,
                         "device": self.predictor.device}
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
    args = worker_arguments(__doc__.splitlines()[0]).parse_args()
    run_worker(args, "ig3d", Ig3dPredictor)


if __name__ == "__main__":
    main()
