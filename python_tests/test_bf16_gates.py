"""precision="bf16" accuracy gates for the default preset, on every shared photo: the networks listed
in ``ig3d.presets.BF16_GATED`` run in bf16 and the results stay within the gates of the fp32 ones
(same faces and labels, landmarks within 1 px on faces over 80 px, blendshapes and valence/arousal
within 0.03); the other networks stay fp32 and the Predictor says so. Needs a CPU with AMX or
AVX512-BF16 and OpenVINO."""

from __future__ import annotations

import numpy as np
import pytest

import ig3d
from ig3d import presets

pytest.importorskip("openvino", reason="bf16 runs with OpenVINO (pip install 'ig3d[openvino]')")
from ig3d.engines.openvino import cpu_has_bf16  # noqa: E402

pytestmark = pytest.mark.skipif(not cpu_has_bf16(), reason="bf16 needs a CPU with AMX or AVX512-BF16")


def test_default_preset_bf16_gates(faces):
    where = sorted(p for p in faces.iterdir() if p.suffix in (".png", ".jpg"))
    ref = ig3d.Predictor(backend="openvino").predict_batch(where)
    p = ig3d.Predictor(precision="bf16")
    assert p.backend == "openvino"
    assert {n for n, v in p.precisions.items() if v == "bf16"} == set(presets.BF16_GATED)
    assert "bf16=" in repr(p) and "face_landmarks.onnx" in repr(p).split("fp32=")[1]
    out = p.predict_batch(where)
    checked = 0
    for path, a_faces, b_faces in zip(where, ref, out):
        assert len(b_faces) == len(a_faces), f"{path.name}: {len(b_faces)} faces in bf16, {len(a_faces)} in fp32"
        for a, b in zip(a_faces, b_faces):
            assert b.label == a.label, path.name
            if a.box[2] - a.box[0] > 80:
                assert np.abs(b.landmarks[:, :2] - a.landmarks[:, :2]).max() <= 1.0, path.name
                checked += 1
            assert max(abs(b.blendshapes[k] - a.blendshapes[k]) for k in a.blendshapes) <= 0.03, path.name
            assert abs(b.valence - a.valence) <= 0.03 and abs(b.arousal - a.arousal) <= 0.03, path.name
    assert checked >= 4


def test_a_network_that_fails_its_gate_stays_fp32():
    """The blendshape model moved blendshapes by 0.36 in bf16: it is not in the gated set, and asking
    for bf16 leaves it in fp32."""
    assert "face_blendshapes.onnx" not in presets.BF16_GATED
    p = ig3d.Predictor(precision="bf16")
    assert p.precisions["face_blendshapes.onnx"] == "fp32" and p._pipeline.blendshaper.precision == "fp32"
