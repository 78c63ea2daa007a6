"""The presets as stages (ig3d.pipelines): an Ig3D preset runs only its own networks after the
landmarks (never mini-Xception nor the default prior head), the result builder, and the options
object (``ig3d.PredictorOptions``) with the keyword arguments that fill it."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import write_standin_encoder

import ig3d
from ig3d import fusion
from ig3d.io import load_image
from ig3d.pipelines import stages
from ig3d.pipelines.options import Outputs

onnx = pytest.importorskip("onnx", reason="the tiny stand-in encoders are written with onnx")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    d = tmp_path_factory.mktemp("standin")
    write_standin_encoder(d / "smirk.onnx", 224, {"params_full": 358}, 0)
    write_standin_encoder(d / "ddamfn.onnx", 112, {"logits": 8, "features": 512}, 1)
    rng = np.random.default_rng(2)
    head = ig3d.FusedHead([ig3d.Layer(rng.normal(size=(10, 358)) / 20, rng.normal(size=10) * 0.1)], input_dim=358,
                          num_classes=8, va_index=8, fusion="weighted", scores2d_dim=8, fusion_weights=(0.6, 0.4))
    return {"smirk": d / "smirk.onnx", "ddamfn": d / "ddamfn.onnx", "head": head}


def test_an_ig3d_preset_runs_neither_mini_xception_nor_the_prior_head(weights, faces, monkeypatch):
    started, made, heads_called = [], [], []
    real_start, real_init, real_call = stages.FerBranch.start, stages.FerBranch.__init__, fusion.FusedHead.__call__

    def init(self, *a, **k):
        made.append(1)
        real_init(self, *a, **k)

    def start(self, *a, **k):
        started.append(1)
        return real_start(self, *a, **k)

    def call(self, *a, **k):
        heads_called.append(self)
        return real_call(self, *a, **k)

    monkeypatch.setattr(stages.FerBranch, "__init__", init)
    monkeypatch.setattr(stages.FerBranch, "start", start)
    monkeypatch.setattr(fusion.FusedHead, "__call__", call)
    p = ig3d.Predictor("ig3d-smirk-ddamfn", backend="onnxruntime", weights=weights)
    # the networks this preset loads: the face stages' four and its two encoders, no mini-Xception
    assert set(p.precisions) == {"face_detector_full.onnx", "face_detector_short.onnx", "face_landmarks.onnx",
                                 "face_blendshapes.onnx", "smirk", "ddamfn"}
    assert made == [] and not hasattr(p._pipeline, "fer_branch")
    photo = load_image(faces / "multi_face.jpg")
    found = p.predict(photo)
    frames = [load_image(faces / "single_face.jpg")] * 3
    streamed = [f.faces for f in p.stream(frames, smoothing=None)]
    assert len(found) == 5 and [len(f) for f in streamed] == [1, 1, 1]
    assert started == []                                        # mini-Xception never ran
    assert heads_called and all(h is p.head for h in heads_called)  # only the preset's head, never the prior
    # the faces' stages are the default preset's: same boxes, landmarks, blendshapes, pose
    ref = ig3d.Predictor(backend="onnxruntime").predict(photo)
    assert started and made                                      # the default preset does run mini-Xception
    for a, b in zip(found, ref):
        np.testing.assert_array_equal(a.landmarks, b.landmarks)
        np.testing.assert_array_equal(a.box, b.box)
        assert a.blendshapes == b.blendshapes and a.head_pose == b.head_pose
        assert a.scores2d_raw.shape == (8,) and a.features2d.shape == (512,)
        z = 0.6 * a.logits_2d + 0.4 * a.logits_3d                # the head's late fusion, by hand
        np.testing.assert_allclose(list(a.scores.values()), np.exp(z - z.max()) / np.exp(z - z.max()).sum(),
                                   atol=1e-5)


def test_ig3d_preset_without_blendshapes_skips_the_blendshape_model(weights, faces):
    photo = load_image(faces / "astronaut.png")
    full = ig3d.Predictor("ig3d-smirk-ddamfn", backend="onnxruntime", weights=weights)
    lean = ig3d.Predictor("ig3d-smirk-ddamfn", backend="onnxruntime", weights=weights, output_blendshapes=False,
                          output_features=False)
    assert "face_blendshapes.onnx" not in lean.precisions and "face_blendshapes.onnx" in full.precisions
    (a,), (b,) = full.predict(photo), lean.predict(photo)
    assert b.blendshapes == {} and b.head_pose == {} and b.features2d is None
    assert len(a.blendshapes) == 52 and a.features2d.shape == (512,)
    np.testing.assert_array_equal(a.params3d, b.params3d)
    assert a.scores == b.scores


def test_build_results_orders_by_image_and_size_with_landmark_boxes():
    rng = np.random.default_rng(0)
    n, labels = 4, ("a", "b", "c")
    centres = np.array([[50, 50], [200, 80], [40, 300], [120, 120]], np.float32)
    half = np.array([10, 30, 20, 5], np.float32)
    lm = (centres[:, None, :] + rng.uniform(-1, 1, size=(n, 478, 2)).astype(np.float32) * half[:, None, None])
    lm = np.concatenate([lm, np.zeros((n, 478, 1), np.float32)], axis=2)
    logits = rng.normal(size=(n, 3)).astype(np.float32)
    probs = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    arrays = stages.FaceArrays(owner=np.array([0, 0, 1, 0]), scores=np.array([0.9, 0.8, 0.7, 0.6], np.float32),
                               landmarks=lm, blendshapes=None, angles=None, params3d=logits, probs=probs,
                               va=np.zeros((n, 2)), logits_2d=logits, logits_3d=logits, probs_2d=None,
                               probs_3d=probs, track_ids=[7, 8, 9, 10])
    out = stages.build_results(3, arrays, labels, Outputs(landmarks=False))
    assert [[f.track_id for f in r] for r in out] == [[8, 7, 10], [9], []]   # largest box first per image
    for r in out:
        for f in r:
            k = f.track_id - 7
            want = [lm[k, :, 0].min(), lm[k, :, 1].min(), lm[k, :, 0].max(), lm[k, :, 1].max()]
            np.testing.assert_array_equal(f.box, np.array(want, np.float32))
            assert f.label == labels[int(np.argmax(logits[k]))] and f.label_2d == "" and f.scores_2d == {}
            assert f.landmarks.shape == (0, 3) and f.blendshapes == {} and f.head_pose == {}
            assert "landmarks" in f.to_dict() and f.to_dict()["landmarks"] == []


def test_options_fill_from_keywords_and_reach_the_pipeline(faces):
    opts = ig3d.PredictorOptions(min_face_size=None, max_faces=2, detect_every=3, smoothing=None)
    p = ig3d.Predictor(backend="onnxruntime", options=opts, threads=1)
    assert p.options == opts.replace(backend="onnxruntime", threads=1)
    assert p._pipeline.detection.min_face_size is None and not p._pipeline.workers.parallel
    t = p.tracker()
    assert (t.max_faces, t.detect_every, t.smoothing) == (2, 3, None)
    assert p.tracker(max_faces=1).max_faces == 1                      # an argument wins over the options
    assert ig3d.Predictor(backend="onnxruntime", options=opts, min_face_size=80).options.min_face_size == 80
    assert ig3d.Predictor(backend="onnxruntime").options == ig3d.PredictorOptions(backend="onnxruntime")

    photo = load_image(faces / "multi_face.jpg")
    base = ig3d.Predictor(backend="onnxruntime").predict(photo)
    plain = ig3d.Predictor(backend="onnxruntime", output_landmarks=False, output_blendshapes=False).predict(photo)
    assert len(plain) == len(base)
    for a, b in zip(plain, base):
        np.testing.assert_array_equal(a.box, b.box)                    # boxes still come from the landmarks
        assert a.landmarks.shape == (0, 3) and a.blendshapes == {} and a.head_pose == {}
        assert a.scores == b.scores                                    # the head still read the blendshapes

    # one threshold for both detectors instead of their own (0.6 full range, 0.5 short range): on this
    # photo (detector scores 0.78-0.93) 0.9 keeps four faces, 0.95 none
    assert min(f.score for f in base) < 0.9
    for thr, n in ((0.9, 4), (0.95, 0)):
        strict = ig3d.Predictor(backend="onnxruntime", min_detection_confidence=thr).predict(photo)
        assert len(strict) == n and all(f.score >= thr for f in strict), (thr, [f.score for f in strict])


@pytest.mark.parametrize("field, value, msg", [
    ("min_detection_confidence", 1.5, "min_detection_confidence must be a number in"),
    ("min_face_presence_confidence", -0.1, "min_face_presence_confidence must be a number in"),
    ("max_faces", 0, "max_faces must be a positive int"),
    ("detect_every", 2.5, "detect_every must be a positive int"),
    ("min_face_size", 0, "min_face_size must be a positive number of pixels"),
    ("threads", 0, "threads must be a positive number"),
    ("smoothing", "heavy", "smoothing: expected"),
    ("output_landmarks", "yes", "output_landmarks: expected True or False"),
])
def test_bad_options_name_the_field(field, value, msg):
    with pytest.raises(ValueError, match=msg):
        ig3d.PredictorOptions(**{field: value})
    with pytest.raises(ValueError, match=msg):
        ig3d.Predictor(**{field: value})


def test_unknown_option_and_wrong_options_type():
    with pytest.raises(ValueError, match="PredictorOptions has no field 'max_face'"):
        ig3d.Predictor(max_face=2)
    with pytest.raises(ValueError, match="options: expected an ig3d.PredictorOptions, got dict"):
        ig3d.Predictor(options={"max_faces": 2})
