"""backend="openvino" against ONNX Runtime, the reference: every network of every preset, fp32, on the
inputs the shared photos give it (outputs equal within 1e-5 of each output's scale), and the presets
end to end on every shared photo (the same faces, labels identical). Also the compiled-model cache
and thread safety. The Ig3D encoders carry synthetic weights (randomly initialised upstream-layout
networks exported to ONNX, as in test_ig3d_presets.py)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
from conftest import calibrate_bn, one_torch_thread

import ig3d
from ig3d import engines
from ig3d.io import load_image

pytest.importorskip("openvino", reason="backend='openvino' needs OpenVINO (pip install 'ig3d[openvino]')")

#: fp32 outputs of two runtimes: max |difference| / max |reference output| (the equality bound)
EQUAL = 1e-5
#: networks held to a wider bound, and why: the blendshape model reads landmark coordinates in image
#: pixels (up to ~800), where a one-ulp change of its input alone moves ONNX Runtime's output by 7e-6;
#: OpenVINO's differs from ONNX Runtime's by up to 3.1e-5 on the shared photos (whatever its settings)
EQUAL_FOR = {"face_blendshapes.onnx": 5e-5,
             # random weights (340 convolutions): its 512-d feature differs by up to 3.1e-5 of its scale
             "ddamfn": 1e-4, "emoca": 5e-5}

_BUILDERS = {  # encoder -> (input shape, torch seed)
    "smirk": ((3, 224, 224), 0), "ddamfn": ((3, 112, 112), 0), "emoca": ((3, 224, 224), 1),
    "cage": ((3, 224, 224), 2),
}


def photos(faces: Path):
    return sorted(p for p in faces.iterdir() if p.suffix in (".png", ".jpg"))


def real_crops(faces: Path, name: str) -> np.ndarray:
    """Every face of the shared photos, cropped for encoder ``name`` by its own convention."""
    images = [load_image(f) for f in photos(faces)]
    found = ig3d.Predictor(backend="onnxruntime")._pipeline.run(images)
    owner = np.array([i for i, fs in enumerate(found) for _ in fs])
    lm = np.stack([f.landmarks for fs in found for f in fs])
    return ig3d.ig3d_presets.Ig3DPipeline._crops(None, images, owner, lm, name)


def synthetic_encoder(tmp_path_factory, name: str, faces: Path) -> Path:
    """``name``.onnx with random weights, exported once per test run and shared by the test files that
    need it. Batch-norm statistics are set from the real crops: with statistics from noise, random
    networks blow real crops' activations up to 1e5 and even ONNX Runtime's optimised and
    unoptimised graphs disagree on them."""
    torch = pytest.importorskip("torch", reason="building the synthetic encoders needs torch")
    pytest.importorskip("onnx", reason="ONNX export needs onnx")
    d = tmp_path_factory.getbasetemp() / "synthetic_encoders"
    d.mkdir(exist_ok=True)
    path = d / f"{name}.onnx"
    if path.is_file():
        return path
    shape, seed = _BUILDERS[name]
    torch.manual_seed(seed)
    with one_torch_thread():
        if name == "smirk":
            from ig3d.convert.smirk import export_smirk_onnx as export
            from ig3d.models.smirk import SmirkEncoder

            model = SmirkEncoder()
        elif name == "ddamfn":
            from ig3d.convert.ddamfn import export_ddamfn_onnx as export
            from ig3d.models.ddamfn import DDAMNet

            model = DDAMNet(num_classes=8)
        elif name == "emoca":
            from ig3d.convert.emoca import export_emoca_onnx as export
            from ig3d.models.emoca import EmocaEncoders

            model = EmocaEncoders()
        else:
            from ig3d.convert.cage import export_cage_onnx as export
            from ig3d.models.cage import CageNet

            model = CageNet("combined")
        # statistics from the real crops: with statistics from noise, random networks gave outputs on
        # which ONNX Runtime's own optimised and unoptimised graphs disagreed
        calibrate_bn(model, torch.from_numpy(real_crops(faces, name)))
        export(model, path)
    return path


def synthetic_head(d: Path, preset: str) -> Path:
    """A random late-fusion head for ``preset`` (8 classes + VA)."""
    _, _, width = ig3d.ig3d_presets.IG3D_PRESETS[preset]
    rng = np.random.default_rng(width)

    def lin(o, i):
        return ig3d.Layer(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1)

    head = ig3d.FusedHead([ig3d.Layer(lin(64, width).weight, None, "leaky_relu"), lin(10, 64)], input_dim=width,
                          num_classes=8, va_index=8, fusion="weighted", scores2d_dim=8, fusion_weights=(0.77, 0.23),
                          labels=ig3d.labels.AFFECTNET8_LABELS)
    path = d / f"{preset}_head.npz"
    head.save(path)
    return path


def preset_weights(tmp_path_factory, preset: str, faces: Path) -> dict:
    enc3d, enc2d, _ = ig3d.ig3d_presets.IG3D_PRESETS[preset]
    w = {e: synthetic_encoder(tmp_path_factory, e, faces) for e in (enc3d, enc2d)}
    w["head"] = synthetic_head(w[enc3d].parent, preset)
    return w


class _Recorder:
    """Stands in for a loaded model: runs it and keeps every input batch it saw."""

    def __init__(self, model):
        self.model, self.inputs = model, []
        self.name, self.input_names, self.output_names = model.name, model.input_names, model.output_names

    def run(self, x):
        self.inputs.append(x)
        return self.model.run(x)


def assert_equal_outputs(ref: dict, out: dict, what: str, bound: float = EQUAL, scales: dict = None) -> float:
    """Every output of ``out`` equals ``ref``'s within ``bound`` of that output's scale (``scales[name]``,
    else the largest |value| of ``ref[name]``); returns the worst ratio."""
    assert set(ref) == set(out), what
    worst = 0.0
    for k in ref:
        assert out[k].shape == ref[k].shape, f"{what} {k}: shape {out[k].shape} vs {ref[k].shape}"
        scale = max(float(np.abs(ref[k]).max()) if scales is None else scales[k], 1e-6)
        err = float(np.abs(out[k].astype(np.float64) - ref[k]).max()) / scale
        assert err <= bound, f"{what} output {k}: max difference {err:.2e} of the output scale (bound {bound:.0e})"
        worst = max(worst, err)
    return worst


def test_default_preset_networks_equal_onnxruntime_on_real_inputs(faces):
    """Each of the default preset's five networks, fed the inputs the shared photos give it (recorded
    from the ONNX Runtime pipeline), gives OpenVINO fp32 outputs equal to ONNX Runtime's."""
    ref = ig3d.Predictor(backend="onnxruntime", parallel_runs=1)
    pipe = ref._pipeline
    rec = {}
    for attr in ("det_full", "det_short", "blendshaper", "fer"):
        rec[attr] = _Recorder(getattr(pipe, attr))
        setattr(pipe, attr, rec[attr])
    rec["landmarker"] = _Recorder(pipe.landmarker.all_cores)
    pipe.landmarker.all_cores = pipe.landmarker.one_core = rec["landmarker"]
    ref.predict_batch(photos(faces))
    for attr, r in rec.items():
        assert r.inputs, f"{attr} never ran on the shared photos"
        ov = engines.load(ig3d.presets.asset_path(r.name), backend="openvino", threads=1)
        assert ov.precision == "fp32" and ov.output_names == r.output_names
        refs = [r.model.run(x) for x in r.inputs]
        # an output's scale: its largest |value| over every shared photo (a batch of one neutral face
        # has small blendshapes, and 1e-5 of that is below float32 rounding of a sigmoid near 1)
        scales = {k: max(float(np.abs(o[k]).max()) for o in refs) for k in r.output_names}
        for x, want in zip(r.inputs, refs):
            assert_equal_outputs(want, ov.run(x), f"{r.name} (OpenVINO vs ONNX Runtime)", scales=scales,
                                 bound=EQUAL_FOR.get(r.name, EQUAL))


@pytest.mark.parametrize("name", ["smirk", "ddamfn", "emoca", "cage"])
def test_encoders_equal_onnxruntime_on_real_crops(name, tmp_path_factory, faces):
    """Each Ig3D encoder on the crops of every face in the shared photos, by its own convention."""
    path = synthetic_encoder(tmp_path_factory, name, faces)
    x = real_crops(faces, name)
    assert len(x) >= 8  # every face of every shared photo
    ort_model = engines.load(path, backend="onnxruntime")
    ov_model = engines.load(path, backend="openvino")
    ref = ort_model.run(x)
    # the network's output scale: its largest |output| (small sub-vectors such as SMIRK's eyelids are
    # slices of params_full, which goes to the head)
    scale = max(float(np.abs(v).max()) for v in ref.values())
    assert_equal_outputs(ref, ov_model.run(x), f"{name} (OpenVINO vs ONNX Runtime)",
                         scales={k: scale for k in ref}, bound=EQUAL_FOR.get(name, EQUAL))


def _compare_presets(ref_results, out_results, where):
    for path, ref, out in zip(where, ref_results, out_results):
        assert len(out) == len(ref), f"{path.name}: {len(out)} faces with OpenVINO, {len(ref)} with ONNX Runtime"
        scale = max(load_image(path).shape[:2])
        for a, b in zip(ref, out):
            assert b.label == a.label and b.label_2d == a.label_2d and b.label_3d == a.label_3d, path.name
            np.testing.assert_allclose(b.landmarks[:, :2], a.landmarks[:, :2], atol=EQUAL * scale, rtol=0)
            np.testing.assert_allclose(b.box, a.box, atol=EQUAL * scale, rtol=0)
            # probabilities and VA come through the blendshapes and the head: measured up to 6e-4
            np.testing.assert_allclose(list(b.scores.values()), list(a.scores.values()), atol=1e-3)
            np.testing.assert_allclose([b.valence, b.arousal], [a.valence, a.arousal], atol=1e-3)


def test_default_preset_equal_on_every_shared_photo(faces):
    where = photos(faces)
    ref = ig3d.Predictor(backend="onnxruntime").predict_batch(where)
    p = ig3d.Predictor(backend="openvino")
    assert p.backend == "openvino" and set(p.precisions.values()) == {"fp32"}
    _compare_presets(ref, p.predict_batch(where), where)
    # one photo at a time (the lone-face, all-cores path) too
    _compare_presets(ref, [p.predict(f) for f in where], where)


@pytest.mark.xfail(reason="open: with random encoder weights and a random head, OpenVINO's fp32 differences "
                          "(up to 3e-5 of scale) flip a label on 0-f1-su-ph.jpg (EMOCA+CAGE) and exceed the "
                          "end-to-end tolerances (SMIRK+DDAMFN++); not yet seen with trained weights")
@pytest.mark.parametrize("preset", ["ig3d-smirk-ddamfn", "ig3d-emoca-cage"])
def test_ig3d_presets_equal_on_every_shared_photo(preset, tmp_path_factory, faces):
    w = preset_weights(tmp_path_factory, preset, faces)
    where = photos(faces)
    ref = ig3d.Predictor(preset, backend="onnxruntime", weights=w).predict_batch(where)
    out = ig3d.Predictor(preset, backend="openvino", weights=w).predict_batch(where)
    _compare_presets(ref, out, where)
    for a, b in ((a, b) for r, o in zip(ref, out) for a, b in zip(r, o)):
        scale = max(float(np.abs(a.params3d).max()), 1e-6)
        assert float(np.abs(b.params3d - a.params3d).max()) / scale <= EQUAL


def test_compiled_models_are_cached_under_ig3d_home(tmp_path, monkeypatch):
    from ig3d.engines import openvino as ov_runtime

    monkeypatch.setenv("IG3D_HOME", str(tmp_path))
    ov_runtime._core.cache_clear()
    try:
        m = engines.load(ig3d.presets.asset_path("fer_mini_xception.onnx"), backend="openvino")
        cached = list((tmp_path / "openvino_cache").rglob("*.blob"))
        assert cached, "no compiled model was written under $IG3D_HOME/openvino_cache"
        again = engines.load(ig3d.presets.asset_path("fer_mini_xception.onnx"), backend="openvino")
        x = np.random.default_rng(0).random((2, 64, 64, 1), np.float32)
        np.testing.assert_array_equal(again.run(x)["logits"], m.run(x)["logits"])
    finally:
        ov_runtime._core.cache_clear()


def test_runs_from_several_threads_at_once():
    """Each worker thread has its own infer request: parallel runs give what one-by-one runs give."""
    m = engines.load(ig3d.presets.asset_path("face_detector_short.onnx"), backend="openvino", threads=1,
                     parallel_runs=2)
    xs = np.random.default_rng(1).uniform(-1, 1, (8, 1, 128, 128, 3)).astype(np.float32)
    want = [m.run(x)["raw_scores"] for x in xs]
    got = [None] * len(xs)

    def work(k):
        for i in range(k, len(xs), 4):
            got[i] = m.run(xs[i])["raw_scores"]

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(want, got):
        np.testing.assert_array_equal(a, b)


def test_openvino_errors():
    with pytest.raises(ValueError, match="runs on the CPU"):
        engines.load(ig3d.presets.asset_path("fer_mini_xception.onnx"), backend="openvino", device="cuda")
    with pytest.raises(ValueError, match="could not load the model"):
        engines.load(b"not an onnx file", backend="openvino", name="broken.onnx")
    m = engines.load(ig3d.presets.asset_path("fer_mini_xception.onnx"), backend="openvino")
    with pytest.raises(ValueError, match="unknown input"):
        m.run({"nope": np.zeros((1, 64, 64, 1), np.float32)})


# -- PReLU given back to OpenVINO, and the landmark model on OpenVINO under backend="auto" ----------
def _spelled_out_prelu(slope, one_minus=None):
    """Conv -> PReLU as expand_prelu writes it (``one_minus``: the ``1 - slope`` constant, to spoil)."""
    onnx = pytest.importorskip("onnx", reason="building the test graph needs onnx")
    from onnx import TensorProto, helper, numpy_helper

    from ig3d.convert.onnx_passes import expand_prelu

    rng = np.random.default_rng(3)
    g = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
         helper.make_node("PRelu", ["c", "slope"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 9, 9])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 6, 9, 9])],
        initializer=[numpy_helper.from_array(rng.standard_normal((6, 4, 3, 3)).astype(np.float32), "w"),
                     numpy_helper.from_array(np.asarray(slope, np.float32).reshape(6, 1, 1), "slope")])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    prelu_bytes = m.SerializeToString()
    expand_prelu(m)
    if one_minus is not None:
        for t in m.graph.initializer:
            if "__one_minus_" in t.name:
                t.CopyFrom(numpy_helper.from_array(np.asarray(one_minus, np.float32).reshape(1, 6, 1, 1)
                                                   if numpy_helper.to_array(t).ndim == 4 else
                                                   np.asarray(one_minus, np.float32).reshape(6, 1, 1), t.name))
    return prelu_bytes, m.SerializeToString()


@pytest.mark.parametrize("hi", [0.9, 1.5])  # both of expand_prelu's spellings
def test_contract_prelu_gives_openvino_its_prelu_back(hi):
    slope = np.linspace(-0.5, hi, 6)
    prelu, spelled = _spelled_out_prelu(slope)
    x = np.random.default_rng(4).standard_normal((1, 4, 9, 9)).astype(np.float32)
    m = engines.load(spelled, backend="openvino")
    assert m.prelus == 1
    want = engines.load(prelu, backend="onnxruntime").run(x)["y"]
    np.testing.assert_allclose(m.run(x)["y"], want, rtol=0, atol=1e-5 * float(np.abs(want).max()))


def test_contract_prelu_leaves_lookalikes():
    """A ``1 - a`` constant that is not the float32 of 1 - a is another function: left alone."""
    slope = np.linspace(-0.5, 0.9, 6)
    _, spelled = _spelled_out_prelu(slope, one_minus=1.0 - slope + 1e-3)
    assert engines.load(spelled, backend="openvino").prelus == 0


def test_landmark_model_gets_every_prelu_back():
    onnx = pytest.importorskip("onnx", reason="reading the bundled graph needs onnx")
    path = ig3d.presets.asset_path("face_landmarks.onnx")
    spelled = sum(1 for n in onnx.load(path).graph.node if n.op_type == "Add" and "__prelu" in n.name)
    assert spelled > 0 and engines.load(path, backend="openvino").prelus == spelled


def test_auto_tracks_a_lone_face_with_the_landmark_model_on_openvino(monkeypatch, faces):
    p = ig3d.Predictor()  # backend="auto"
    assert p.backend == "onnxruntime"
    pipe = p._pipeline
    assert {m.backend for m in (pipe.landmarker.all_cores, pipe.landmarker.one_core, pipe.blendshaper,
                                pipe.det_full, pipe.fer)} == {"onnxruntime"}
    assert p.tracking_backends == {"face_landmarks.onnx": "openvino"}
    assert "tracking_backends={'face_landmarks.onnx': 'openvino'}" in repr(p)
    stage = p._pipeline.landmarks
    assert stage._tracking_model is None  # made on first use: a photo-only app never loads it
    # photos stay on ONNX Runtime: a face's result does not depend on the other faces of a call
    where = photos(faces)
    ref = ig3d.Predictor(backend="onnxruntime")
    for f in where:
        for a, b in zip(ref.predict(f), p.predict(f)):
            np.testing.assert_array_equal(a.landmarks, b.landmarks)
    assert stage._tracking_model is None
    # a tracker makes the session when it is made, not in its first frame's time
    p.tracker()
    assert stage._tracking_model is not None and stage._tracking_model.backend == "openvino"
    # a video: the lone tracked face's landmark run goes to OpenVINO, with ONNX Runtime's landmarks
    # within OpenVINO's fp32 differences
    frames = [load_image(faces / "single_face.jpg")] * 3
    got = [fr.faces for fr in p.stream(frames, smoothing=None)]
    want = [fr.faces for fr in ref.stream(frames, smoothing=None)]
    assert stage._tracking_model is not None and stage._tracking_model.backend == "openvino"
    for a, b in zip(want, got):
        assert len(a) == len(b) == 1 and a[0].label == b[0].label
        np.testing.assert_allclose(b[0].landmarks[:, :2], a[0].landmarks[:, :2], atol=1e-5 * 1000, rtol=0)
        assert not np.array_equal(b[0].landmarks, a[0].landmarks)  # another runtime did run
    # an explicit backend runs every network, in videos too
    assert ig3d.Predictor(backend="onnxruntime").tracking_backends == {}
    assert ig3d.Predictor(backend="openvino").tracking_backends == {}
    # without OpenVINO installed, auto runs everything on ONNX Runtime
    monkeypatch.setattr(type(engines.get_runtime("openvino")), "missing", lambda self: "not installed (test)")
    assert engines.tracking_backends("auto", "onnxruntime", "cpu") == {}
    assert ig3d.Predictor().tracking_backends == {}
