"""The default preset end to end on real photos: what a person sees in them (happy, surprise),
face counts, the no-face case, batch = single, and every input form."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

import ig3d
from ig3d.io import load_image

HAPPY = ["astronaut.png", "0-f15-hao-ph.jpg", "single_face.jpg"]
ALL = HAPPY + ["0-f1-su-ph.jpg", "multi_face.jpg", "free-mountain-vector-01.jpg"]


@pytest.fixture(scope="module")
def predictor():
    return ig3d.Predictor()


@pytest.fixture(scope="module")
def single_results(predictor, faces):
    return {name: predictor.predict(faces / name) for name in ALL}


@pytest.mark.parametrize("name", HAPPY)
def test_happy_faces(single_results, name):
    res = single_results[name]
    assert len(res) == 1, res
    face = res[0]
    assert face.label == "happy", face
    assert face.valence > 0
    assert sum(face.scores.values()) == pytest.approx(1.0, abs=1e-5)
    assert face.blendshapes["mouthSmileLeft"] > 0.5 and face.blendshapes["mouthSmileRight"] > 0.5


def test_surprise_face_fusion_corrects_the_2d_branch(single_results):
    (face,) = single_results["0-f1-su-ph.jpg"]
    assert face.label == "surprise", face
    assert face.arousal > 0
    # each branch stays visible; the 3D prior reads the raised brows and dropped jaw
    assert face.label_3d == "surprise"
    assert face.blendshapes["jawOpen"] > 0.3 and face.blendshapes["browInnerUp"] > 0.3
    # the 2D network alone confuses this face with fear (as fer's own pipeline does)
    assert face.label_2d == "fear", face.scores_2d


def test_five_faces_in_group_photo(single_results):
    res = single_results["multi_face.jpg"]
    assert len(res) == 5
    areas = [f.area for f in res]
    assert areas == sorted(areas, reverse=True)  # largest face first
    boxes = np.stack([f.box for f in res])
    centres = (boxes[:, :2] + boxes[:, 2:]) / 2
    d = np.linalg.norm(centres[:, None] - centres[None], axis=-1) + np.eye(5) * 1e9
    assert d.min() > 30  # five different people, not duplicates


def test_no_face_is_an_empty_list(single_results):
    assert single_results["free-mountain-vector-01.jpg"] == []


def test_batch_equals_single(predictor, faces, single_results):
    batch = predictor.predict_batch([faces / n for n in ALL])
    assert [len(b) for b in batch] == [len(single_results[n]) for n in ALL]
    for name, faces_b in zip(ALL, batch):
        for fb, fs in zip(faces_b, single_results[name]):
            assert fb.label == fs.label
            np.testing.assert_allclose(fb.box, fs.box, atol=1e-3)
            np.testing.assert_allclose(list(fb.scores.values()), list(fs.scores.values()), atol=1e-4)
            np.testing.assert_allclose(fb.landmarks, fs.landmarks, atol=1e-2)


def test_per_face_workers_equal_one_batched_run(faces, single_results):
    # The default Predictor spreads single-face runs over worker threads; threads=1 runs each
    # network once on the whole batch in the calling thread (what a GPU gets). Same answers.
    p1 = ig3d.Predictor(threads=1)
    assert not p1._pipeline.workers.parallel
    batch = p1.predict_batch([faces / n for n in ALL])
    for name, faces_b in zip(ALL, batch):
        assert len(faces_b) == len(single_results[name]), name
        for fb, fs in zip(faces_b, single_results[name]):
            assert fb.label == fs.label
            np.testing.assert_allclose(fb.box, fs.box, atol=1e-3)
            np.testing.assert_allclose(list(fb.scores.values()), list(fs.scores.values()), atol=1e-4)
            np.testing.assert_allclose(list(fb.blendshapes.values()), list(fs.blendshapes.values()), atol=1e-4)
    with pytest.raises(ValueError, match="threads must be a positive"):
        ig3d.Predictor(threads=0)


def test_one_face_runs_on_all_cores_with_the_same_numbers(predictor, faces):
    # A call with one face runs the landmark model on the all-cores session (nothing else is left
    # to run then); the numbers must be those of the single-threaded per-face session.
    lm = predictor._pipeline.landmarker
    if lm.one_core is lm.all_cores:
        pytest.skip("one CPU core here: no multi-threaded landmark session")
    img = load_image(faces / "astronaut.png")
    all_cores, batches = lm.all_cores, []

    class Spy:
        def run(self, x):
            batches.append(len(x))
            return all_cores.run(x)

    try:
        lm.all_cores = Spy()
        (with_all,) = predictor._pipeline.run([img])
        lm.all_cores = lm.one_core
        (one_core,) = predictor._pipeline.run([img])
    finally:
        lm.all_cores = all_cores
    assert batches == [1] and len(with_all) == len(one_core) == 1
    np.testing.assert_array_equal(with_all[0].landmarks, one_core[0].landmarks)
    assert with_all[0].blendshapes == one_core[0].blendshapes and with_all[0].scores == one_core[0].scores


def test_workers_keep_item_order():
    from ig3d.engines import Workers

    class Echo:  # stands in for an OnnxModel: returns its batch, plus the batch size it saw
        def run(self, x):
            return {"y": np.asarray(x) * 2, "n": np.full(len(x), len(x))}

    items = np.arange(7.0)
    par, seq = Workers(3), Workers(1)
    assert par.parallel and not seq.parallel
    out = par.run(Echo(), items)
    np.testing.assert_array_equal(out["y"], items * 2)
    np.testing.assert_array_equal(out["n"], 1)          # one run per item
    out = seq.run(Echo(), list(items), prep=lambda part: np.asarray(part) + 1)
    np.testing.assert_array_equal(out["y"], (items + 1) * 2)
    np.testing.assert_array_equal(out["n"], 7)          # one batched run
    # parts(): each run's outputs with the index of its first item, in order
    parts = list(par.start(Echo(), items).parts())
    assert [start for start, _ in parts] == list(range(7))
    np.testing.assert_array_equal(np.concatenate([p["y"] for _, p in parts]), items * 2)
    (whole,) = list(seq.start(Echo(), items).parts())
    assert whole[0] == 0 and np.array_equal(whole[1]["y"], items * 2)


def test_per_core_model_sessions(monkeypatch):
    # A lone item runs on the all-cores session; a batch from the single-threaded one (small files
    # on parallel CPU workers only); both give the same numbers.
    from ig3d import engines
    from ig3d.presets import asset_path

    path = asset_path("fer_mini_xception.onnx")
    par, seq = engines.Workers(2), engines.Workers(1)
    enc = engines.PerCoreModel(path, workers=par)
    assert enc.one_core is not enc.all_cores and enc.for_items(1) is enc.all_cores and enc.for_items(3) is enc.one_core
    x = np.random.default_rng(0).uniform(-1, 1, (3, 64, 64, 1)).astype(np.float32)
    a = par.run(enc.for_items(3), x)["logits"]
    b = np.concatenate([enc.all_cores.run(x[i:i + 1])["logits"] for i in range(3)])
    np.testing.assert_array_equal(a, b)
    one = engines.PerCoreModel(path, workers=seq)
    assert one.one_core is one.all_cores                      # no parallel workers: one session
    monkeypatch.setattr(engines, "PER_CORE_MAX_BYTES", 1000)
    big = engines.PerCoreModel(path, workers=par)
    assert big.one_core is big.all_cores                      # a big file is not held twice


def _in_forked_child(check, timeout: float) -> bool:
    """Fork; the child runs ``check()`` and reports; True when it said True within ``timeout`` s
    (a child that hangs is killed)."""
    import select

    r, wfd = os.pipe()
    with warnings.catch_warnings():  # Python >= 3.12 warns about forking a threaded process
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # child
        ok = False
        try:
            ok = bool(check())
        finally:
            os.write(wfd, b"1" if ok else b"0")
            os._exit(0)
    os.close(wfd)
    ready, _, _ = select.select([r], [], [], timeout)
    got = os.read(r, 1) if ready else b""
    os.waitpid(pid, 0) if ready else os.kill(pid, 9)
    return got == b"1"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_workers_survive_fork():
    # A robot app may build its Predictor, then fork worker processes: the child must not wait
    # forever on worker threads that only exist in the parent.
    from ig3d.engines import Workers

    class Echo:
        def run(self, x):
            return {"y": np.asarray(x) + 1}

    w = Workers(2)
    np.testing.assert_array_equal(w.run(Echo(), np.arange(3.0))["y"], [1, 2, 3])
    assert _in_forked_child(lambda: list(w.run(Echo(), np.arange(4.0))["y"]) == [1, 2, 3, 4], 30), \
        "the forked child did not get its results within 30 s"


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_predictor_survives_fork(predictor, faces):
    # The same with a real Predictor, after the parent has run it (ONNX Runtime thread pools and
    # the C++ kernels' OpenMP team exist in the parent only): the child predicts, it does not hang.
    from ig3d.faces.landmarks import warp_crops

    img = load_image(faces / "astronaut.png")
    assert predictor.predict(img)[0].label == "happy"
    warp_crops(img, np.eye(2, 3)[None], 256, threads=2)  # an OpenMP team in the parent

    def child():
        one = predictor.predict(img)
        two = predictor.predict_batch([img, img])
        crop = warp_crops(img, np.eye(2, 3)[None], 256, threads=2)
        return (one[0].label == "happy" and [len(b) for b in two] == [1, 1]
                and np.array_equal(two[0][0].landmarks, one[0].landmarks) and crop.shape == (1, 256, 256, 3))

    assert _in_forked_child(child, 60), "the forked child did not predict within 60 s"


def test_result_fields_and_json(single_results):
    (face,) = single_results["astronaut.png"]
    assert face.landmarks.shape == (478, 3)
    assert len(face.blendshapes) == 52 and face.params3d.shape == (55,)
    assert set(face.head_pose) == {"yaw", "pitch", "roll"}
    from ig3d.prior import LABELS

    assert list(face.scores) == list(LABELS) == list(face.scores_2d) == list(face.scores_3d)
    assert -1 <= face.valence <= 1 and -1 <= face.arousal <= 1
    d = json.loads(json.dumps(face.to_dict()))
    assert d["label"] == "happy" and len(d["landmarks"]) == 478
    x0, y0, x1, y1 = face.box
    assert 140 < (x0 + x1) / 2 < 320 and 40 < (y0 + y1) / 2 < 200  # the astronaut's face, upper middle


def test_input_forms_agree(predictor, faces):
    rgb = load_image(faces / "astronaut.png")
    ref = predictor.predict(rgb)[0]
    bgr = predictor.predict(rgb[:, :, ::-1].copy(), color="bgr")[0]
    assert bgr.label == ref.label
    np.testing.assert_allclose(bgr.box, ref.box, atol=1e-3)
    rgba = predictor.predict(np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2))[0]
    np.testing.assert_allclose(rgba.box, ref.box, atol=1e-3)
    pil = predictor.predict(Image.fromarray(rgb))[0]
    np.testing.assert_allclose(pil.box, ref.box, atol=1e-3)
    raw = predictor.predict((faces / "astronaut.png").read_bytes())[0]
    np.testing.assert_allclose(raw.box, ref.box, atol=1e-3)
    as_float = predictor.predict(rgb.astype(np.float32) / 255)[0]
    np.testing.assert_allclose(as_float.box, ref.box, atol=1e-3)
    gray = predictor.predict(np.asarray(Image.fromarray(rgb).convert("L")))
    assert len(gray) == 1
    # gray loses colour but not the smile
    assert gray[0].blendshapes["mouthSmileLeft"] > 0.5


def test_bad_input_errors(predictor, tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.jpg"):
        predictor.predict(tmp_path / "missing.jpg")
    with pytest.raises(ValueError, match="empty image"):
        predictor.predict(np.zeros((0, 0, 3), np.uint8))
    with pytest.raises(ValueError, match="unsupported dtype"):
        predictor.predict(np.zeros((10, 10, 3), np.int16))
    with pytest.raises(ValueError, match="sequence of images"):
        predictor.predict_batch("a.jpg")


def test_tiny_and_blank_images_have_no_faces(predictor):
    assert predictor.predict(np.zeros((1, 1, 3), np.uint8)) == []
    assert predictor.predict(np.full((300, 200, 3), 128, np.uint8)) == []
    assert predictor.predict_batch([]) == []


def test_whole_frame_face(predictor, faces):
    """A face that fills the frame (a pre-cropped face): found once."""
    rgb = load_image(faces / "0-f15-hao-ph.jpg")
    face = predictor.predict(rgb)[0]
    x0, y0, x1, y1 = (int(v) for v in face.box)
    pad = int(0.15 * (x1 - x0))
    crop = rgb[max(0, y0 - pad):y1 + pad, max(0, x0 - pad):x1 + pad]
    big = np.asarray(Image.fromarray(crop).resize((900, 900), Image.BILINEAR))
    res = predictor.predict(big)
    assert len(res) == 1 and res[0].label == "happy"


def test_predictor_settings():
    with pytest.raises(ValueError, match="preset: expected one of"):
        ig3d.Predictor(preset="nope")
    with pytest.raises(ValueError, match="backend: expected one of"):
        ig3d.Predictor(backend="nope")
    have = {e["name"]: e for e in ig3d.available_backends()}
    if not have["onnxruntime-cuda"]["available"]:
        with pytest.raises(RuntimeError, match="device='cuda' was requested") as err:
            ig3d.Predictor(device="cuda")
        assert have["onnxruntime-cuda"]["reason"] in str(err.value)
    if not have["tensorrt"]["available"]:
        with pytest.raises(RuntimeError, match="backend='tensorrt' is not available here") as err:
            ig3d.Predictor(backend="tensorrt")
        assert have["tensorrt"]["reason"] in str(err.value)
    p = ig3d.Predictor(device="cpu")  # auto: the fastest exact CPU runtime installed
    assert (p.backend, p.device) == ("onnxruntime", "cpu")  # ONNX Runtime outranks OpenVINO (measured faster)


def test_trained_head_replaces_the_prior(tmp_path, faces):
    """A head saved with FusedHead.save plugs in without code changes."""
    from ig3d import prior

    head = prior.default_head()
    flipped = ig3d.FusedHead([ig3d.Layer(l.weight, l.bias, l.activation, l.slope) for l in head.layers],
                             input_dim=head.input_dim, std=head.std, num_classes=7, fusion="weighted",
                             scores2d_dim=7, fusion_map=head.fusion_map, fusion_weights=(0.0, 1.0),
                             labels=head.labels)
    path = tmp_path / "head.npz"
    flipped.save(path)
    (face,) = ig3d.Predictor(head=path).predict(faces / "0-f1-su-ph.jpg")
    # weights (0, 1): the fused result is the 3D head alone
    np.testing.assert_allclose(list(face.scores.values()), list(face.scores_3d.values()), atol=1e-5)


def test_cli_demo_and_overlay(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ig3d.cli", "predict", "--demo"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "happy" in out.stdout and "1 face" in out.stdout
    png = tmp_path / "o.png"
    from ig3d.presets import asset_path

    out = subprocess.run([sys.executable, "-m", "ig3d.cli", "predict", asset_path("astronaut.png"), "--json",
                          "--overlay", str(png)], capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 0, out.stderr
    d = json.loads(out.stdout)
    assert d["faces"][0]["label"] == "happy"
    im = np.asarray(Image.open(png).convert("RGB"))
    src = load_image(asset_path("astronaut.png"))
    assert im.shape == src.shape and np.abs(im.astype(int) - src).sum() > 0  # something was drawn


def test_cli_bad_path(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ig3d.cli", "predict", str(tmp_path / "nope.png")],
                         capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert out.returncode == 1 and f"'{tmp_path / 'nope.png'}': no such file or folder" in out.stderr


@pytest.mark.parametrize("hw", [(480, 640), (1080, 1920)])
def test_small_faces_of_40_pixels(predictor, faces, hw):
    """Three copies of a real face scaled to 40 px wide, pasted into a larger frame."""
    rgb = load_image(faces / "astronaut.png")
    x0, y0, x1, y1 = (int(v) for v in predictor.predict(rgb)[0].box)
    crop = rgb[max(0, y0 - 20):y1 + 20, max(0, x0 - 20):x1 + 20]
    s = 40 / (x1 - x0)
    small = np.asarray(Image.fromarray(crop).resize((round(crop.shape[1] * s), round(crop.shape[0] * s)),
                                                    Image.BILINEAR))
    H, W = hw
    canvas = np.full((H, W, 3), 120, np.uint8)
    spots = [(H // 2, W // 3), (H // 5, W - W // 4), (H - 80, 30)]
    for y, x in spots:
        canvas[y:y + small.shape[0], x:x + small.shape[1]] = small
    res = predictor.predict(canvas)
    assert len(res) == 3
    for f in res:
        assert 30 < f.box[2] - f.box[0] < 50
    # without the tile scan these faces are too small for the detector's 192x192 input
    if hw == (1080, 1920):
        assert len(ig3d.Predictor(min_face_size=None).predict(canvas)) < 3
