"""ig3d.convert.tflite: MediaPipe's face models, TFLite -> ONNX, against LiteRT.

For each of the four upstream graphs (short- and full-range face detector,
FaceMesh v2 landmarks, blendshapes) the converted ONNX model runs in ONNX
Runtime and the original runs in ai-edge-litert (the numeric oracle), on

* random inputs in each model's real input range, and
* real photos from shared/data/faces (detectors: whole image letterboxed;
  landmarks: 1.5x square face crops; blendshapes: the 146-point subset of the
  landmarks the converted landmark model finds on those crops),

at batch 1 and as one batch in ONNX (every row of the batched run must equal
the batch-1 run).

Measured (onnxruntime 1.31.1 CPU, ai-edge-litert 2.3.0 with its default
XNNPACK delegate, numpy 2.4).  "abs" = max abs diff, "scaled" = max abs diff
divided by max(1, max |LiteRT output|) (see :func:`scaled_diff`); photos =
the six test photos (detectors) / five face crops (landmarks, blendshapes):

  model / output              random: abs   scaled  | photos: abs  scaled
  detector short  raw_boxes        6.1e-5  4.5e-7   |  1.9e-2*  1.7e-5
                  raw_scores       6.5e-5  1.6e-6   |  4.5e-2*  2.0e-5
  detector full   raw_boxes        1.3e-4  1.0e-6   |  1.1e-4   9.6e-7
                  raw_scores       2.4e-4  1.1e-6   |  1.2e-4   7.1e-7
  landmarks       landmarks (px)   8.2e-4  3.8e-6   |  2.0e-4   9.1e-7
                  presence logit   1.1e-4  1.1e-5   |  9.5e-6   4.5e-7
                  third output     1.0e-5  1.0e-5   |  1.3e-7   1.3e-7
  blendshapes     blendshapes      1.6e-6  1.6e-6   |  2.3e-6   2.3e-6

  * on the face-free landscape, whose raw outputs reach |x| ~ 2300 and where
    LiteRT's XNNPACK and reference kernels differ from each other by 3.8e-2;
    on the five face photos the short-range detector's max abs diffs are
    1.2e-4 (boxes) and 1.7e-4 (score logits).

Batched ONNX rows vs batch-1 ONNX runs: exactly equal (0.0) for both
detectors and the landmark model; up to 2.8e-6 for the blendshape model
(ONNX Runtime's kernels block the batched run differently).  What remains
is float32 summation order (XNNPACK vs MLAS); the weights are bit-identical.
(The detector-short and landmark figures are with channel-only PADs written as 1x1
convolutions, see ``op_PAD``, and the blendshape figures with its token-wise 1x1
convolutions written as MatMuls, see ``_pointwise_matmul``; before that: boxes 5.3e-5,
scores 7.4e-5, landmarks 6.7e-4 / 1.8e-4, presence 1.2e-4, third output 7.1e-6;
blendshapes 1.4e-6 / 2.1e-6, batch rows 4.6e-6.)
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="onnx builds the converted graphs")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime runs the converted graphs")

from ig3d.convert import tflite as tfl  # noqa: E402
from ig3d.convert.upstream import UpstreamUnavailable, upstream_file  # noqa: E402
from ig3d.faces.mediapipe_constants import (  # noqa: E402
    BLENDSHAPE_NAMES,
    LANDMARKS_SUBSET_IDXS,
)

REPO = Path(__file__).resolve().parents[1]

# Per model: input range; tolerance per TFLite output on scaled_diff (ONNX
# vs LiteRT); tolerance on max abs diff of a batched ONNX row vs its batch-1
# run.  Roughly 3-5x the measured values (module docstring).
MODELS = {
    "face_detector.tflite": dict(range=(-1.0, 1.0), tol=[1e-4, 1e-4], batch_tol=1e-5),
    "face_detection_full_range_sparse.tflite": dict(range=(-1.0, 1.0), tol=[1e-4, 1e-4],
                                                    batch_tol=1e-5),
    "face_landmarks_detector.tflite": dict(range=(0.0, 1.0), tol=[2e-5, 5e-5, 3e-5],
                                           batch_tol=1e-5),
    "face_blendshapes.tflite": dict(range=(0.0, 256.0), tol=[1e-5], batch_tol=2e-5),
}

# Face boxes (x0, y0, x1, y1) in image pixels, as measured with MediaPipe's
# full-range detector in test_convert_keras.py (only a source of realistic
# crops here; exactness does not matter).
FACE_BOXES = {
    "astronaut.png": (171, 66, 277, 173),
    "single_face.jpg": (160, 176, 380, 395),
    "0-f1-su-ph.jpg": (109, 148, 424, 464),
    "0-f15-hao-ph.jpg": (94, 147, 419, 471),
    "multi_face.jpg": (314, 250, 416, 351),
}
PHOTOS = ["astronaut.png", "single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg",
          "multi_face.jpg", "free-mountain-vector-01.jpg"]


# ---------------------------------------------------------------------------
# fixtures / helpers
# ---------------------------------------------------------------------------

_UNAVAILABLE: dict = {}


def _upstream(name: str) -> Path:
    """Path of a pinned upstream file (downloaded into the cache on first use)."""
    if name not in _UNAVAILABLE:
        try:
            return upstream_file(name)
        except UpstreamUnavailable as exc:
            # Remember, so an offline run tries pip once per file, not per test.
            _UNAVAILABLE[name] = str(exc)
    pytest.skip(f"pinned upstream file {name} unavailable (offline?): {_UNAVAILABLE[name]}")


def _litert():
    return pytest.importorskip("ai_edge_litert.interpreter", exc_type=ImportError,
                               reason="ai-edge-litert (the TFLite oracle) is not installed")


def faces_dir() -> Path:
    env = os.environ.get("IG3D_FACES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


def load_rgb(name: str):
    image_mod = pytest.importorskip("PIL.Image", exc_type=ImportError,
                                    reason="Pillow loads the test photos")
    path = faces_dir() / name
    if not path.is_file():
        pytest.skip(f"face photo {path} not found (set IG3D_FACES_DIR)")
    with image_mod.open(path) as im:
        return im.convert("RGB")


class Oracle:
    """LiteRT interpreter for one .tflite; runs one sample at a time."""

    def __init__(self, path: Path):
        self.interp = _litert().Interpreter(model_path=str(path))
        self.interp.allocate_tensors()
        self.inp = self.interp.get_input_details()[0]
        self.outs = self.interp.get_output_details()

    def __call__(self, x: np.ndarray):
        self.interp.set_tensor(self.inp["index"], x[None].astype(np.float32))
        self.interp.invoke()
        return [self.interp.get_tensor(o["index"]).copy() for o in self.outs]


class Converted:
    """The converted ONNX model in an ONNX Runtime session."""

    def __init__(self, path: Path):
        self.model = tfl.convert_tflite(path)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = 2
        self.sess = ort.InferenceSession(self.model.SerializeToString(), opts,
                                         providers=["CPUExecutionProvider"])

    def __call__(self, x: np.ndarray):
        return self.sess.run(None, {"input": x.astype(np.float32)})


_CACHE: dict = {}


def pair(name: str):
    """(Oracle, Converted) for a pinned model, built once per session."""
    if name not in _CACHE:
        path = _upstream(name)
        _CACHE[name] = (Oracle(path), Converted(path))
    return _CACHE[name]


def scaled_diff(a: np.ndarray, ref: np.ndarray) -> float:
    """max |a - ref| / max(1, max |ref|): absolute for outputs of scale <= 1,
    relative to the output's scale above that.

    The detectors' raw outputs reach |x| ~ 2300 on the face-free landscape
    (where LiteRT's own XNNPACK and reference kernels already differ by
    3.8e-2, 1.7e-5 of that scale), so a plain absolute tolerance would
    mostly measure the magnitude of the output.
    """
    return float(np.abs(a - ref).max() / max(1.0, float(np.abs(ref).max())))


def compare(name: str, x: np.ndarray):
    """Run ``x`` ([B, ...]) through both; return per-output max abs diffs.

    Returns ``(vs_litert_scaled, batch_vs_single, vs_litert_abs,
    onnx_batched_outputs)``; see :func:`scaled_diff`.
    """
    oracle, conv = pair(name)
    batched = conv(x)
    vs_lite = [0.0] * len(batched)
    vs_single = [0.0] * len(batched)
    abs_lite = [0.0] * len(batched)
    for i in range(len(x)):
        single = conv(x[i:i + 1])
        ref = oracle(x[i])
        for k, (b, s, r) in enumerate(zip(batched, single, ref)):
            assert b.shape[1:] == s.shape[1:] and s.shape[0] == 1
            # LiteRT keeps its batch-1 axis except where the graph squeezed
            # it (blendshapes: [52]); compare per sample.
            assert r.size == s.size
            r = r.reshape(s.shape)
            vs_lite[k] = max(vs_lite[k], scaled_diff(s, r))
            abs_lite[k] = max(abs_lite[k], float(np.abs(s - r).max()))
            vs_single[k] = max(vs_single[k], float(np.abs(b[i] - s[0]).max()))
    return vs_lite, vs_single, abs_lite, batched


def check(name: str, x: np.ndarray, label: str):
    cfg = MODELS[name]
    vs_lite, vs_single, abs_lite, batched = compare(name, x)
    print(f"{name} [{label}] vs LiteRT scaled {['%.2g' % d for d in vs_lite]} "
          f"abs {['%.2g' % d for d in abs_lite]} "
          f"batch-vs-single {['%.2g' % d for d in vs_single]}")
    for k, (d, tol) in enumerate(zip(vs_lite, cfg["tol"])):
        assert d < tol, f"{name} output {k} ({label}): ONNX vs LiteRT {d:.3g} >= {tol}"
    for k, d in enumerate(vs_single):
        assert d <= cfg["batch_tol"], f"{name} output {k} ({label}): batch row vs single {d}"
    return batched


def letterbox(im, size: int) -> np.ndarray:
    """Square-pad (zeros, centred) and resize to ``size``: uint8 RGB [size, size, 3]."""
    from PIL import Image

    side = max(im.size)
    canvas = Image.new("RGB", (side, side))
    canvas.paste(im, ((side - im.size[0]) // 2, (side - im.size[1]) // 2))
    return np.asarray(canvas.resize((size, size), Image.BILINEAR))


def face_crop(im, box, size: int = 256) -> np.ndarray:
    """1.5x square crop around a face box (MediaPipe's ROI scale), resized."""
    from PIL import Image

    x0, y0, x1, y1 = box
    cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, 0.75 * max(x1 - x0, y1 - y0)
    crop = im.crop((round(cx - half), round(cy - half), round(cx + half), round(cy + half)))
    return np.asarray(crop.resize((size, size), Image.BILINEAR))


def to_range(u8: np.ndarray, lo: float, hi: float) -> np.ndarray:
    return (u8.astype(np.float32) / 255.0 * (hi - lo) + lo).astype(np.float32)


# ---------------------------------------------------------------------------
# structure
# ---------------------------------------------------------------------------

def test_blendshape_pointwise_convs_are_matmuls():
    """The blendshape model's 1x1 convolutions over its [1, 1, tokens, channels] maps are MatMuls
    on the axis where the channels lie: no Conv and no Transpose is left in the graph."""
    model = pair("face_blendshapes.tflite")[1].model
    ops = [n.op_type for n in model.graph.node]
    n_conv = sum(op.name == "CONV_2D" for op in tfl.read_tflite(_upstream("face_blendshapes.tflite").read_bytes())
                 .subgraphs[0].operators)
    assert "Conv" not in ops and "Transpose" not in ops and ops.count("MatMul") == n_conv > 0


@pytest.mark.parametrize("name,n_pads", [("face_detector.tflite", 11), ("face_landmarks_detector.tflite", 3)])
def test_channel_pads_become_convs(name, n_pads):
    """The upstream graphs' channel-only PADs (residuals of widening blocks) are 1x1 Convs with
    [0; I; 0] weights; the comparisons with LiteRT below check that the numbers did not move."""
    from onnx import numpy_helper

    model = pair(name)[1].model
    assert sum(op.name == "PAD" for op in tfl.read_tflite(_upstream(name).read_bytes()).subgraphs[0].operators) \
        == n_pads
    assert "Pad" not in [n.op_type for n in model.graph.node]
    inits = {t.name: t for t in model.graph.initializer}
    pads = [n for n in model.graph.node if n.op_type == "Conv" and "channel_pad" in n.input[1]]
    assert len(pads) == n_pads
    for n in pads:
        w = numpy_helper.to_array(inits[n.input[1]])[:, :, 0, 0]
        assert w.shape[0] > w.shape[1] and np.array_equal(w[:w.shape[1]], np.eye(w.shape[1])) and not w[w.shape[1]:].any()


@pytest.mark.parametrize("name", list(MODELS))
def test_reader_agrees_with_litert(name):
    """Our flatbuffer reader sees the same ops and I/O shapes as LiteRT."""
    path = _upstream(name)
    oracle = Oracle(path)
    model = tfl.read_tflite(path.read_bytes())
    sg = model.subgraphs[0]
    if hasattr(oracle.interp, "_get_ops_details"):
        # The XNNPACK delegate appends one DELEGATE node after the graph's ops.
        lite_ops = [o["op_name"] for o in oracle.interp._get_ops_details()
                    if o["op_name"] != "DELEGATE"]
        assert [op.name for op in sg.operators] == lite_ops
    assert [list(sg.tensors[i].shape) for i in sg.outputs] == \
        [list(o["shape"]) for o in oracle.outs]
    assert list(sg.tensors[sg.inputs[0]].shape) == list(oracle.inp["shape"])


@pytest.mark.parametrize("name", list(MODELS))
def test_onnx_io_is_batched_nhwc(name):
    path = _upstream(name)
    model = tfl.convert_tflite(path)
    sg = tfl.read_tflite(path.read_bytes()).subgraphs[0]
    (inp,) = model.graph.input
    dims = [d.dim_param or d.dim_value for d in inp.type.tensor_type.shape.dim]
    assert dims == ["N"] + list(sg.tensors[sg.inputs[0]].shape[1:])
    for out in model.graph.output:
        assert out.type.tensor_type.shape.dim[0].dim_param == "N"
    assert {o.domain for o in model.opset_import} == {""}
    assert model.opset_import[0].version == tfl.OPSET
    # Weights are float32 initializers (float16 dequantized at conversion).
    assert {t.data_type for t in model.graph.initializer if t.dims} <= {
        onnx.TensorProto.FLOAT, onnx.TensorProto.INT64}
    # Only the input is transposed to NCHW once per image model.
    n_in_transposes = sum(1 for n in model.graph.node
                          if n.op_type == "Transpose" and inp.name in n.input)
    assert n_in_transposes <= 1


def test_input_normalization_metadata():
    """Detectors take [-1, 1], the landmark model [0, 1] (per the files' metadata)."""
    assert tfl.read_input_normalization(
        _upstream("face_detector.tflite").read_bytes()) == ([127.5], [127.5])
    assert tfl.read_input_normalization(
        _upstream("face_detection_full_range_sparse.tflite").read_bytes()) == ([127.5], [127.5])
    assert tfl.read_input_normalization(
        _upstream("face_landmarks_detector.tflite").read_bytes()) == ([0.0], [255.0])
    assert tfl.read_input_normalization(
        _upstream("face_blendshapes.tflite").read_bytes()) is None


def test_task_member_extraction():
    task = _upstream("face_landmarker.task")
    members = tfl.read_task_members(task)
    assert set(members) == set(tfl.TASK_MEMBERS)
    assert tfl.extract_task_member(task.read_bytes(), "face_detector.tflite") == \
        _upstream("face_detector.tflite").read_bytes()
    with pytest.raises(KeyError):
        tfl.extract_task_member(task, "nope.tflite")


# ---------------------------------------------------------------------------
# numerics: random inputs
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(MODELS))
def test_random_inputs_match_litert(name):
    oracle, _ = pair(name)
    shape = tuple(oracle.inp["shape"][1:])
    lo, hi = MODELS[name]["range"]
    x = np.random.default_rng(7).uniform(lo, hi, size=(4,) + shape).astype(np.float32)
    check(name, x, "random")


# ---------------------------------------------------------------------------
# numerics and semantics: real photos
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("name,size", [("face_detector.tflite", 128),
                                       ("face_detection_full_range_sparse.tflite", 192)])
def test_detectors_on_photos(name, size):
    x = np.stack([to_range(letterbox(load_rgb(p), size), -1, 1) for p in PHOTOS])
    _, scores = check(name, x, "photos")
    # Sanity of meaning: a confident face on every face photo, none on the landscape.
    best = 1 / (1 + np.exp(-scores[..., 0].max(axis=1)))
    for photo, s in zip(PHOTOS, best):
        if photo == "free-mountain-vector-01.jpg":
            assert s < 0.5, (photo, s)
        elif photo != "multi_face.jpg" or size == 192:  # short range misses small faces
            assert s > 0.5, (photo, s)


def _crops():
    return np.stack([to_range(face_crop(load_rgb(p), b), 0, 1)
                     for p, b in FACE_BOXES.items()])


def test_landmarks_on_face_crops():
    x = _crops()
    landmarks, presence_logit, _ = check("face_landmarks_detector.tflite", x, "photos")
    pts = landmarks.reshape(len(x), 478, 3)
    # Faces fill the middle of a 1.5x crop: landmarks inside the 256 px input.
    assert (pts[..., :2].min() > 0) and (pts[..., :2].max() < 256)
    assert (1 / (1 + np.exp(-presence_logit.reshape(-1))) > 0.5).all()
    # A landscape crop is not a face.
    sky = to_range(face_crop(load_rgb("free-mountain-vector-01.jpg"), (100, 100, 400, 400)), 0, 1)
    _, conv = pair("face_landmarks_detector.tflite")
    assert 1 / (1 + np.exp(-conv(sky[None])[1].item())) < 0.5


def test_blendshapes_on_real_landmarks():
    _, lm_conv = pair("face_landmarks_detector.tflite")
    pts = lm_conv(_crops())[0].reshape(-1, 478, 3)
    # MediaPipe feeds normalized x, y times the image size; our landmarks are
    # already in pixels of the 256x256 crop.
    points = pts[:, list(LANDMARKS_SUBSET_IDXS), :2].astype(np.float32)
    (scores,) = check("face_blendshapes.tflite", points, "photos")
    names = list(FACE_BOXES)
    smile = (scores[:, BLENDSHAPE_NAMES.index("mouthSmileLeft")]
             + scores[:, BLENDSHAPE_NAMES.index("mouthSmileRight")]) / 2
    jaw = scores[:, BLENDSHAPE_NAMES.index("jawOpen")]
    brows = scores[:, BLENDSHAPE_NAMES.index("browInnerUp")]
    # Measured: smiles 0.90/0.91, 0.86/0.78, 0.83/0.89 on the happy photos
    # (MediaPipe's own FaceLandmarker: about 0.90, 0.88/0.80, 0.78/0.83 per
    # shared/data/faces/MANIFEST.csv); surprise jawOpen 0.49, browInnerUp 0.43
    # (MediaPipe: 0.52, 0.48).
    for photo in ("astronaut.png", "single_face.jpg", "0-f15-hao-ph.jpg"):
        assert smile[names.index(photo)] > 0.6, (photo, smile)
    su = names.index("0-f1-su-ph.jpg")
    assert jaw[su] > 0.35 and brows[su] > 0.3 and smile[su] < 0.1, (jaw, brows, smile)


# ---------------------------------------------------------------------------
# error handling and shipped assets
# ---------------------------------------------------------------------------

def test_unsupported_op_and_options_raise():
    data = _upstream("face_blendshapes.tflite").read_bytes()

    def run(model):
        tfl._Converter(model, "input").run()

    m = tfl.read_tflite(data)
    next(op for op in m.subgraphs[0].operators if op.name == "LOGISTIC").name = "SOFTMAX"
    with pytest.raises(ValueError, match="unsupported TFLite op SOFTMAX"):
        run(m)
    m = tfl.read_tflite(data)
    next(op for op in m.subgraphs[0].operators if op.name == "CONV_2D") \
        .options["fused_activation_function"] = 5
    with pytest.raises(ValueError, match="SIGN_BIT"):
        run(m)
    m = tfl.read_tflite(data)
    sg = m.subgraphs[0]
    mean = next(op for op in sg.operators if op.name == "MEAN")
    sg.tensors[mean.inputs[1]].data = np.array([0], np.int32)  # reduce over the batch
    with pytest.raises(ValueError, match="batch axis"):
        run(m)
    with pytest.raises(ValueError, match="TFLite"):
        tfl.read_tflite(b"\0" * 64)


ASSETS = {
    "face_detector_short.onnx": ("face_detector.tflite", ["raw_boxes", "raw_scores"]),
    "face_detector_full.onnx": ("face_detection_full_range_sparse.tflite",
                                ["raw_boxes", "raw_scores"]),
    "face_landmarks.onnx": ("face_landmarks_detector.tflite", ["landmarks", "presence"]),
    "face_blendshapes.onnx": ("face_blendshapes.tflite", ["blendshapes"]),
}


@pytest.mark.parametrize("asset", list(ASSETS))
def test_shipped_asset_matches_litert(asset):
    """The files in ig3d/assets (built by tools/build_default_assets.py)."""
    path = REPO / "ig3d" / "assets" / asset
    if not path.is_file():
        pytest.skip(f"{path} not built (run tools/build_default_assets.py)")
    name, out_names = ASSETS[asset]
    oracle, _ = pair(name)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == out_names
    shape = tuple(oracle.inp["shape"][1:])
    lo, hi = MODELS[name]["range"]
    x = np.random.default_rng(11).uniform(lo, hi, size=(3,) + shape).astype(np.float32)
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    for i in range(len(x)):
        ref = oracle(x[i])
        if asset == "face_landmarks.onnx":
            ref = [ref[0], 1 / (1 + np.exp(-ref[1]))]  # presence = sigmoid(output 1)
        for k, (o, r) in enumerate(zip(outs, ref)):
            assert o[i].size == r.size
            d = scaled_diff(o[i].reshape(-1), r.reshape(-1))
            assert d < MODELS[name]["tol"][k], (asset, k, d)


def test_canonical_face_asset():
    path = REPO / "ig3d" / "assets" / "canonical_face_468.npy"
    if not path.is_file():
        pytest.skip(f"{path} not built")
    from ig3d.convert.mediapipe_geometry import parse_geometry_pipeline_metadata

    face = parse_geometry_pipeline_metadata(
        _upstream("geometry_pipeline_metadata_landmarks.binarypb").read_bytes())
    v = np.load(path)
    assert v.dtype == np.float32 and v.shape == (468, 3)
    np.testing.assert_array_equal(v, face.vertices)
    assert face.triangles.shape == (898, 3) and face.triangles.max() == 467
    # Left/right symmetric about x = 0 (eye corners 33 and 263 mirror).
    np.testing.assert_allclose(v[33] * [-1, 1, 1], v[263], atol=1e-4)
