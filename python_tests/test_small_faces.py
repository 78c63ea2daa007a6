"""The default preset's small-face search: one full-range run over the whole large image (the
network is convolutional, its anchors follow the input size), then zoomed looks at uncertain
candidates. Checked against the previous overlapping-tile search, which the preset keeps for the
benchmark's comparison, on the shared photos and on 40-px faces pasted into 640x480 and
1920x1080 frames, and the larger-input decode against the 192x192 one."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from ig3d.faces import detect, landmarks as lmk
from ig3d.presets import DefaultPipeline, asset_path

PHOTOS = {"astronaut.png": 1, "single_face.jpg": 1, "0-f1-su-ph.jpg": 1, "0-f15-hao-ph.jpg": 1,
          "multi_face.jpg": 5, "free-mountain-vector-01.jpg": 0}


def _load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture(scope="module")
def pipes():
    scan = DefaultPipeline(backend="onnxruntime", device="cpu")
    tiles = DefaultPipeline(backend="onnxruntime", device="cpu")
    tiles._small_faces = "tiles"
    return scan, tiles


def _match(a: detect.FaceDetections, b: detect.FaceDetections, min_iou: float = 0.5):
    """For each face of ``b``: the index of the best-overlapping face of ``a`` and that IoU."""
    if len(a) == 0:
        return np.full(len(b), -1), np.zeros(len(b))
    iou = detect.iou_matrix(b.boxes, a.boxes)
    best = iou.argmax(axis=1)
    return np.where(iou.max(axis=1) > min_iou, best, -1), iou.max(axis=1)


def test_scan_geometry():
    assert detect.scan_shape((1080, 1920), 0.4) == (448, 768)
    assert detect.scan_shape((480, 640), 0.4) == (192, 256)
    with pytest.raises(ValueError, match="scale"):
        detect.scan_shape((10, 10), 0.0)
    # anchors of a larger grid: MediaPipe's formula, (x + 0.5) / grid, row-major
    a = detect.FULL_RANGE.anchors((448, 768))
    assert a.shape == (112 * 192, 4)
    np.testing.assert_allclose(a[1], [1.5 / 192, 0.5 / 112, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(a[192], [0.5 / 192, 1.5 / 112, 1, 1], rtol=1e-6)
    np.testing.assert_allclose(detect.FULL_RANGE.anchors((192, 192)), detect.FULL_RANGE.anchors())
    # a view's map: tensor pixel u = x * scale + pad
    v = detect.ScaledView((1080, 1920), (448, 768), 0.4, pad_x=-8.0, pad_y=4.0)
    xy = v.to_image(np.array([[100 / 768, 50 / 448]]))
    np.testing.assert_allclose(xy, [[(100 + 8) / 0.4, (50 - 4) / 0.4]], rtol=1e-5)


def test_larger_input_decodes_like_192(faces):
    """The group photo's 192x192 detector input, alone and in the top-left corner of a 384x320
    input (black beyond): the same five faces, boxes within 1.5 of 192 input pixels. The box
    regressors are input pixels, so the decode divides by the input's own size."""
    import onnxruntime as ort

    im = _load(faces / "multi_face.jpg")
    x, _ = lmk.letterbox_mediapipe(im, 192)
    sess = ort.InferenceSession(asset_path("face_detector_full.onnx"), providers=["CPUExecutionProvider"])
    small = detect.postprocess(*sess.run(None, {"image": x[None]}), detect.FULL_RANGE)[0]
    big_in = np.full((1, 320, 384, 3), -1.0, np.float32)
    big_in[0, :192, :192] = x
    raw = sess.run(None, {"image": big_in})
    assert raw[0].shape == (1, 80 * 96, 16)
    big = detect.postprocess(*raw, detect.FULL_RANGE, input_hw=(320, 384), min_score=0.5)[0]
    assert len(small) == 5
    big_px = detect.FaceDetections(big.boxes * [384, 320, 384, 320], big.scores, big.keypoints)
    small_px = detect.FaceDetections(small.boxes * 192, small.scores, small.keypoints)
    idx, iou = _match(big_px, small_px)
    assert (idx >= 0).all(), iou
    np.testing.assert_allclose(big_px.boxes[idx], small_px.boxes, atol=1.5)


@pytest.mark.parametrize("name", list(PHOTOS))
def test_shared_photos_same_faces(faces, pipes, name):
    """Every shared photo: the expected number of faces, the same ones as the tile search, boxes
    within 5 % of the face's size and keypoints within 5 %."""
    scan, tiles = pipes
    im = _load(faces / name)
    (a, ma), = scan.detect([im])
    (b, mb), = tiles.detect([im])
    assert len(a) == len(b) == PHOTOS[name]
    idx, iou = _match(a, b)
    assert (idx >= 0).all(), iou
    size = (b.boxes[:, 2:] - b.boxes[:, :2]).max(axis=1)
    assert np.all(np.abs(a.boxes[idx] - b.boxes).max(axis=1) <= 0.05 * size)
    assert np.all(np.abs(a.keypoints[idx] - b.keypoints).max(axis=(1, 2)) <= 0.05 * size)
    np.testing.assert_array_equal(ma[idx], mb)


def _paste_faces(faces, hw, places):
    """40-px faces (the shared portraits' full-range boxes scaled to 40 px, with as much context
    again around them) pasted at ``places`` (top-left corners) into the landscape resized to hw."""
    bg = np.asarray(Image.fromarray(_load(faces / "free-mountain-vector-01.jpg")).resize(hw[::-1]))
    canvas, centres = bg.copy(), []
    srcs = ["astronaut.png", "single_face.jpg", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg"]
    for k, (x, y) in enumerate(places):
        im = _load(faces / srcs[k % len(srcs)])
        xin, lb = lmk.letterbox_mediapipe(im, 192)
        import onnxruntime as ort
        sess = ort.InferenceSession(asset_path("face_detector_full.onnx"), providers=["CPUExecutionProvider"])
        d = detect.postprocess(*sess.run(None, {"image": xin[None]}), detect.FULL_RANGE, [lb])[0]
        box = d.boxes[0]
        c, side = (box[:2] + box[2:]) / 2, float((box[2:] - box[:2]).mean())
        patch = np.asarray(Image.fromarray(im).crop(tuple(int(v) for v in (c[0] - side, c[1] - side, c[0] + side,
                                                                          c[1] + side))).resize((80, 80),
                                                                                              Image.LANCZOS))
        canvas[y:y + 80, x:x + 80] = patch
        centres.append((x + 40, y + 40))
    return canvas, np.array(centres, np.float32)


@pytest.mark.parametrize("hw,places", [
    ((480, 640), [(0, 0), (560, 0), (0, 400), (560, 400), (280, 200), (150, 300)]),
    ((1080, 1920), [(0, 0), (1840, 0), (0, 1000), (1840, 1000), (900, 500), (400, 700), (1500, 200), (960, 0)]),
])
def test_pasted_40px_faces(faces, pipes, hw, places):
    """40-px faces at the corners, on the edges and inside 640x480 and 1920x1080 frames: the scan
    finds every face the tile search finds (boxes and keypoints within 10 px, a quarter of the face; a face in a corner
    differs most, as the tiles saw black around it where the scan sees the frame edge; the others
    within about 1 px), nothing
    that is not a pasted face, and each face it finds goes through the landmark step to a face
    result."""
    scan, tiles = pipes
    canvas, centres = _paste_faces(faces, hw, places)
    (a, _), = scan.detect([canvas])
    (b, _), = tiles.detect([canvas])

    def hits(d):
        c = (d.boxes[:, :2] + d.boxes[:, 2:]) / 2
        dist = np.linalg.norm(c[:, None] - centres[None], axis=-1)
        return dist.min(axis=0) < 16, dist.min(axis=1) < 16

    found_a, real_a = hits(a)
    found_b, _ = hits(b)
    assert real_a.all(), "the scan found something that is not a pasted face"
    assert np.all(found_a >= found_b), (found_a, found_b)
    assert found_a.sum() >= len(places) - 1, found_a
    idx, iou = _match(a, b)
    assert (idx >= 0).all(), iou
    assert np.abs(a.boxes[idx] - b.boxes).max() <= 10.0
    assert np.abs(a.keypoints[idx] - b.keypoints).max() <= 10.0
    assert np.median(np.abs(a.boxes[idx] - b.boxes)) <= 1.5
    results = scan.run([canvas])[0]
    rc = np.array([(r.box[:2] + r.box[2:]) / 2 for r in results]).reshape(-1, 2)
    got = np.linalg.norm(rc[:, None] - centres[None], axis=-1).min(axis=0) < 20
    assert got.sum() >= found_a.sum() - 1, (got, found_a)


def test_min_face_size_none_means_no_search(faces, monkeypatch):
    """``min_face_size=None``: only the whole-image passes, on any image size."""
    p = DefaultPipeline(backend="onnxruntime", device="cpu", min_face_size=None)
    im = _load(faces / "free-mountain-vector-01.jpg")
    assert not p._needs_scan(im.shape[:2])
    calls = []
    monkeypatch.setattr(p, "_scanner", lambda *a: calls.append(a))
    (d, _), = p.detect([im])
    assert calls == [] and len(d) == 0
    q = DefaultPipeline(backend="onnxruntime", device="cpu")
    assert q._needs_scan(im.shape[:2]) and not q._needs_scan((512, 512))


def test_a_box_inside_a_larger_face_is_dropped():
    """A detection lying mostly inside a larger one is part of that face (the small-face scan can
    propose one inside a whole-frame face): dropped; neighbouring and overlapping faces are kept."""
    from ig3d.presets import _inside_larger

    boxes = np.array([[100, 100, 800, 800],    # a whole-frame face
                      [150, 250, 450, 550],    # inside it
                      [760, 100, 1000, 340],   # overlaps it a little (a neighbour)
                      [1200, 100, 1240, 140]], np.float32)
    np.testing.assert_array_equal(_inside_larger(boxes), [False, True, False, False])
    assert not _inside_larger(boxes[:1]).any() and _inside_larger(np.zeros((0, 4))).shape == (0,)
