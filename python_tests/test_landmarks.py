"""ig3d.faces.landmarks and ig3d.faces.pose: ROI geometry, warp, projection, head pose; then
the whole landmark pipeline on real photos against recorded MediaPipe output.

The real-photo tests compare with ``python_tests/data/mediapipe_reference.npz`` (MediaPipe
0.10.21 FaceLandmarker, IMAGE mode; see ``python_tests/data/README.md``), so mediapipe itself
is not needed. Measured on the dev box (ONNX Runtime, CPU), ig3d pipeline = letterbox_mediapipe
-> short-range detector ONNX -> postprocess (Tasks thresholds 0.5 / IoU 0.5) ->
rois_from_detections -> warp_crops -> face_landmarks.onnx -> landmarks_to_image ->
face_blendshapes.onnx:

    photo            landmark xy max / mean (px)   z max (px)   blendshape max
    astronaut        0.0010 / 0.0002               0.0017       0.00005
    single_face      0.0026 / 0.0009               0.0083       0.00008
    0-f1-su-ph       0.0022 / 0.0007               0.0013       0.00018
    0-f15-hao-ph     0.0054 / 0.0007               0.0015       0.00015

With :func:`ig3d.faces.detect.letterbox` (pixel-centre sampling) instead of MediaPipe's
corner-aligned letterbox the detector keypoints move by ~1.5 px, and with them the ROI:

    photo            landmark xy max / mean (px)   blendshape max
    astronaut        1.01 / 0.28                   0.135 (mouthLowerDownRight)
    single_face      1.31 / 0.52                   0.077
    0-f1-su-ph       1.59 / 0.53                   0.074
    0-f15-hao-ph     3.68 / 1.10                   0.060

Head pose (yaw, pitch, roll degrees) from MediaPipe's own landmarks: astronaut
(-1.2, -9.3, -3.0), single_face (-8.2, -5.0, 2.0), 0-f1-su-ph (1.5, 6.4, 0.1), 0-f15-hao-ph
(-0.2, -6.0, -2.1); MediaPipe's perspective transformation matrices agree within 1 degree in
yaw and roll and 5.7 degrees in pitch.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ig3d.faces import detect as D
from ig3d.faces.landmarks import (
    Rois,
    _invert_affine,
    _unit_lut,
    _warp_axis_aligned,
    _warp_crops_numpy,
    _warp_one,
    blendshape_points,
    landmarks_to_image,
    letterbox_mediapipe,
    roi_affine,
    rois_from_detections,
    rois_from_landmarks,
    warp_crops,
)
from ig3d.faces.mediapipe_constants import LANDMARKS_SUBSET_IDXS
from ig3d.faces.pose import (
    PROCRUSTES_LANDMARKS,
    canonical_face,
    euler_from_rotation,
    fit_similarity,
    head_pose,
    rotation_from_euler,
)

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "ig3d" / "assets"
REFERENCE = Path(__file__).resolve().parent / "data" / "mediapipe_reference.npz"


def _faces_dir() -> Path:
    env = os.environ.get("IG3D_FACES_DIR")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data" / "faces"


def _compose(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``a o b`` for [N, 2, 3] affine maps."""
    out = np.empty_like(a)
    out[:, :, :2] = a[:, :, :2] @ b[:, :, :2]
    out[:, :, 2] = (a[:, :, :2] @ b[:, :, 2:3])[:, :, 0] + a[:, :, 2]
    return out


def _apply(m: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """[N, 2, 3] affine applied to [N, K, 2] points."""
    return pts @ m[:, :, :2].transpose(0, 2, 1) + m[:, None, :, 2]


# ---------------------------------------------------------------------------------------------
# ROI geometry
# ---------------------------------------------------------------------------------------------


def test_rotation_from_eye_keypoints():
    # Subject's right eye (keypoint 0) on the observer's left; the left eye 20 degrees
    # clockwise (as displayed, y down) from it -> ROI angle +20 degrees.
    angles = np.radians([0.0, 20.0, -35.0, 90.0, 180.0])
    p0 = np.array([100.0, 200.0])
    kp = np.zeros((len(angles), 6, 2))
    kp[:, 0] = p0
    kp[:, 1] = p0 + 60.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)
    boxes = np.tile([50.0, 150.0, 250.0, 330.0], (len(angles), 1))
    rois = rois_from_detections(boxes, kp)
    got = np.degrees(rois.angle)
    np.testing.assert_allclose(got[:4], [0.0, 20.0, -35.0, 90.0], atol=1e-9)
    # Upside-down face: wrapped into [-pi, pi).
    assert abs(abs(got[4]) - 180.0) < 1e-9 and -180.0 <= got[4] < 180.0


def test_rois_from_detections_box_scale_and_square():
    boxes = np.array([[10.0, 20.0, 110.0, 140.0]])  # 100 wide, 120 high
    kp = np.array([[[40.0, 60.0], [80.0, 60.0]] + [[0.0, 0.0]] * 4])
    r = rois_from_detections(boxes, kp)
    np.testing.assert_allclose(r.center, [[60.0, 80.0]])
    np.testing.assert_allclose(r.size, [[150.0, 180.0]])   # Tasks: scale 1.5, not squared
    np.testing.assert_allclose(r.angle, [0.0])
    sq = rois_from_detections(boxes, kp, square_long=True)  # legacy solution graph
    np.testing.assert_allclose(sq.size, [[180.0, 180.0]])
    assert len(r) == 1


def test_rois_from_landmarks():
    rng = np.random.default_rng(0)
    lm = rng.uniform(100, 300, size=(2, 478, 3))
    lm[:, :, 0] = rng.uniform(150, 250, size=(2, 478))   # narrower than tall
    lm[0, 33, :2], lm[0, 263, :2] = (160.0, 200.0), (240.0, 200.0 - 80.0 * np.tan(0.3))
    lm[1, 33, :2], lm[1, 263, :2] = (240.0, 150.0), (160.0, 150.0)   # upside down
    r = rois_from_landmarks(lm)
    lo, hi = lm[..., :2].min(axis=1), lm[..., :2].max(axis=1)
    np.testing.assert_allclose(r.center, (lo + hi) / 2)
    side = 1.5 * (hi - lo).max(axis=1)
    np.testing.assert_allclose(r.size, np.stack([side, side], axis=1))
    np.testing.assert_allclose(r.angle[0], -0.3, atol=1e-12)
    assert abs(abs(r.angle[1]) - np.pi) < 1e-12


def test_affine_round_trip_and_corners():
    rois = Rois(center=np.array([[200.0, 150.0], [-30.0, 400.0]]),
                size=np.array([[300.0, 260.0], [120.0, 120.0]]),
                angle=np.array([0.4, -2.5]))
    s = 256
    m, minv = roi_affine(rois, s)
    ident = np.tile(np.eye(2, 3), (2, 1, 1))
    np.testing.assert_allclose(_compose(m, minv), ident, atol=1e-12)
    np.testing.assert_allclose(_compose(minv, m), ident, atol=1e-9)
    # Crop corners (0,0), (S,0), (0,S), (S,S) are the ROI corners, centre is the ROI centre.
    crop = np.array([[0.0, 0.0], [s, 0.0], [0.0, s], [s, s], [s / 2, s / 2]])
    img = _apply(minv, np.broadcast_to(crop, (2, 5, 2)))
    for n in range(2):
        c, (w, h), a = rois.center[n], rois.size[n], rois.angle[n]
        ux, uy = np.array([np.cos(a), np.sin(a)]), np.array([-np.sin(a), np.cos(a)])
        want = [c - w / 2 * ux - h / 2 * uy, c + w / 2 * ux - h / 2 * uy,
                c - w / 2 * ux + h / 2 * uy, c + w / 2 * ux + h / 2 * uy, c]
        np.testing.assert_allclose(img[n], want, atol=1e-9)


# ---------------------------------------------------------------------------------------------
# Warp
# ---------------------------------------------------------------------------------------------


def _ramp_image(h=240, w=320):
    """Linear ramp, different per channel, inside 0..255 (bilinear reproduces it exactly)."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.stack([0.7 * x + 0.2 * y, 0.3 * x + 0.5 * y + 20, 250 - 0.4 * x - 0.3 * y], -1)
    return np.rint(img).astype(np.uint8), img


def test_warp_identity_translation_is_exact_copy():
    rng = np.random.default_rng(1)
    img = rng.integers(0, 256, size=(100, 120, 3), dtype=np.uint8)
    # ROI of side S at angle 0 with integer corner: crop pixel (i, j) = image pixel
    # (y0 + i, x0 + j) under MediaPipe's corner-to-corner index mapping.
    s, x0, y0 = 32, 17, 40
    rois = Rois(np.array([[x0 + s / 2, y0 + s / 2]]), np.array([[s, s]], float), np.zeros(1))
    m, _ = roi_affine(rois, s)
    out = warp_crops(img, m, s)
    np.testing.assert_array_equal(np.rint(out[0] * 255).astype(np.uint8),
                                  img[y0:y0 + s, x0:x0 + s])


def test_warp_quarter_turn_direction():
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, size=(64, 80, 3), dtype=np.uint8)
    s = 16
    # angle +90 degrees: the crop's x axis runs down the image, its y axis to the left.
    rois = Rois(np.array([[40.0, 30.0]]), np.array([[s, s]], float), np.array([np.pi / 2]))
    m, _ = roi_affine(rois, s)
    got = np.rint(warp_crops(img, m, s)[0] * 255).astype(np.uint8)
    i, j = np.mgrid[0:s, 0:s]
    # Minv @ (j, i): x = 40 - (i - 8), y = 30 + (j - 8)
    want = img[30 + j - 8, 40 - i + 8]
    np.testing.assert_array_equal(got, want)


def test_warp_linear_ramp_rotated_scaled():
    img, exact = _ramp_image()
    rois = Rois(np.array([[160.3, 118.7]]), np.array([[150.0, 131.0]]), np.array([0.37]))
    s = 64
    m, minv = roi_affine(rois, s)
    out = warp_crops(img, m, s)[0].astype(np.float64) * 255
    i, j = np.mgrid[0:s, 0:s]
    xy = _apply(minv, np.stack([j, i], -1).reshape(1, -1, 2).astype(float))[0]
    # Bilinear of the (uint8-rounded) ramp: within the ramp rounding + 1/32-pixel coordinate
    # quantisation + output rounding of the exact ramp value.
    y, x = xy[:, 1], xy[:, 0]
    want = np.stack([0.7 * x + 0.2 * y, 0.3 * x + 0.5 * y + 20, 250 - 0.4 * x - 0.3 * y], -1)
    assert np.abs(out.reshape(-1, 3) - want).max() <= 1.0 + 1e-6
    assert np.abs(out.reshape(-1, 3) - want).mean() < 0.35


def test_warp_border_modes():
    img = np.full((50, 60, 3), 200, np.uint8)
    img[:, 0] = (10, 20, 30)                         # distinctive left edge
    # ROI centred on the left edge: its left half lies outside the image.
    s = 40
    rois = Rois(np.array([[0.0, 25.0]]), np.array([[40.0, 40.0]]), np.zeros(1))
    m, _ = roi_affine(rois, s)
    rep = np.rint(warp_crops(img, m, s)[0] * 255).astype(np.uint8)
    zero = np.rint(warp_crops(img, m, s, border="zero")[0] * 255).astype(np.uint8)
    # Crop column j samples image x = j - 20.
    np.testing.assert_array_equal(rep[:, :20], np.broadcast_to([10, 20, 30], (s, 20, 3)))
    np.testing.assert_array_equal(zero[:, :19], 0)   # x <= -1: both taps outside
    np.testing.assert_array_equal(rep[:, 21:], zero[:, 21:])
    np.testing.assert_array_equal(rep[:, 22:], 200)


def test_warp_roi_entirely_outside():
    img = np.full((30, 40, 3), 90, np.uint8)
    rois = Rois(np.array([[-500.0, -300.0], [900.0, 15.0]]), np.full((2, 2), 50.0),
                np.array([0.3, 0.0]))
    m, _ = roi_affine(rois, 16)
    assert np.all(warp_crops(img, m, 16, border="zero") == 0)
    np.testing.assert_allclose(warp_crops(img, m, 16), 90 / 255, rtol=1e-6)


def test_warp_axis_aligned_path_matches_general_path():
    rng = np.random.default_rng(3)
    img = rng.integers(0, 256, size=(70, 90, 3), dtype=np.uint8)
    for center, size, s in [((45.0, 35.0), (90.0, 90.0), 32), ((10.3, 60.2), (37.3, 50.0), 48),
                            ((45.0, 35.0), (20.0, 20.0), 64)]:
        rois = Rois(np.array([center]), np.array([size]), np.zeros(1))
        m, _ = roi_affine(rois, s)
        minv = _invert_affine(m)[0]
        general_minv = minv.copy()
        general_minv[0, 1] = 1e-300   # not axis-aligned any more; same arithmetic
        for zero in (False, True):
            a = np.empty((s, s, 3), np.float32)
            b = np.empty((s, s, 3), np.float32)
            _warp_axis_aligned(img, minv, s, zero, a)
            _warp_one(img, general_minv, s, zero, b)
            np.testing.assert_array_equal(a, b)


def test_warp_batch_out_and_errors():
    rng = np.random.default_rng(4)
    img = rng.integers(0, 256, size=(60, 60, 3), dtype=np.uint8)
    rois = Rois(np.array([[30.0, 30.0], [20.0, 25.0]]), np.array([[40.0, 40.0], [30.0, 20.0]]),
                np.array([0.2, -0.1]))
    m, _ = roi_affine(rois, 24)
    batch = warp_crops(img, m, 24)
    assert batch.shape == (2, 24, 24, 3) and batch.dtype == np.float32
    np.testing.assert_array_equal(batch[1], warp_crops(img, m[1], 24)[0])
    buf = np.empty_like(batch)
    assert warp_crops(img, m, 24, out=buf) is buf
    np.testing.assert_array_equal(buf, batch)
    assert warp_crops(img, np.zeros((0, 2, 3)), 24).shape == (0, 24, 24, 3)
    with pytest.raises(ValueError):
        warp_crops(img.astype(np.float32), m, 24)
    with pytest.raises(ValueError):
        warp_crops(img, m, 24, border="reflect")
    with pytest.raises(ValueError):
        warp_crops(img, np.full((1, 2, 3), np.nan), 24)


def _random_maps(rng, n):
    """Rotated, scaled and axis-aligned maps, inside, across and outside the image."""
    M = np.zeros((n, 2, 3))
    for k in range(n):
        ang = rng.uniform(-np.pi, np.pi) if rng.random() < 0.7 else 0.0
        sc = rng.uniform(0.2, 3.0)
        c, sn = np.cos(ang) * sc, np.sin(ang) * sc
        M[k] = [[c, -sn, rng.uniform(-100, 100)], [sn, c, rng.uniform(-100, 100)]]
        if rng.random() < 0.3:
            M[k, :, 2] = np.round(M[k, :, 2])   # integer offsets: rounding ties
    return M


def test_warp_kernel_equals_numpy_reference():
    # The C++ kernel behind warp_crops against the numpy reference: identical bytes, for both
    # border modes, both code paths (rotated / axis-aligned), crops inside, across and entirely
    # outside the image, and on 1 or 2 threads.
    rng = np.random.default_rng(11)
    cases = 0
    for _ in range(150):
        h, w = (int(v) for v in rng.integers(1, 300, 2))
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        m = _random_maps(rng, int(rng.integers(1, 4)))
        s = int(rng.integers(1, 70))
        for border in ("replicate", "zero"):
            want = _warp_crops_numpy(img, m, s, border=border)
            for threads in (1, 2):
                np.testing.assert_array_equal(warp_crops(img, m, s, border=border, threads=threads), want)
                cases += 1
    assert cases == 600


def test_warp_kernel_vector_path_at_the_image_edges():
    # Crops entirely inside the image run 8 pixels at a time (AVX2 where the CPU has it) with
    # 4-byte loads per tap, unless a tap is the image's last pixel. Maps whose taps end on the
    # last row / last column / last pixel, or just short of them, at every crop width mod 8 (the
    # vector loop's tail), rotated and axis-aligned: identical bytes to the numpy reference.
    rng = np.random.default_rng(5)
    cases = 0
    for _ in range(60):
        h, w = (int(v) for v in rng.integers(2, 90, 2))
        img = rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)
        s = int(rng.integers(1, 41))
        for end_x, end_y in ((w - 1.2, h - 1.2), (w - 1.2, h - 2.6), (w - 2.6, h - 1.2), (w - 2.6, h - 2.6)):
            for ang in (0.0, float(rng.uniform(-0.05, 0.05))):
                # minv: output (0, 0) -> (0.3, 0.3), output (s-1, s-1) -> about (end_x, end_y)
                sx, sy = (end_x - 0.3) / max(s - 1, 1), (end_y - 0.3) / max(s - 1, 1)
                c, sn = np.cos(ang), np.sin(ang)
                minv = np.array([[sx * c, -sy * sn * 0.5, 0.3], [sx * sn * 0.5, sy * c, 0.3]])
                m = np.linalg.inv(np.vstack([minv, [0, 0, 1]]))[:2][None]
                for border in ("replicate", "zero"):
                    np.testing.assert_array_equal(warp_crops(img, m, s, border=border, threads=1),
                                                  _warp_crops_numpy(img, m, s, border=border))
                    cases += 1
    assert cases == 60 * 4 * 2 * 2


def test_warp_kernel_equals_numpy_reference_on_a_photo():
    img = _load_photo("single_face.jpg")
    rois = Rois(np.array([[290.0, 250.0], [100.0, 500.0]]), np.array([[230.0, 230.0], [300.0, 260.0]]),
                np.array([0.12, -2.5]))
    m, _ = roi_affine(rois, 256)
    np.testing.assert_array_equal(warp_crops(img, m, 256), _warp_crops_numpy(img, m, 256))
    # the detector letterbox with its value range, through the lookup table
    for size in (128, 192):
        x, _ = letterbox_mediapipe(img, size)
        h, w = img.shape[:2]
        side = float(max(h, w))
        mm, _ = roi_affine(Rois(np.array([[w / 2, h / 2]]), np.array([[side, side]]), np.zeros(1)), size)
        want = _warp_crops_numpy(img, mm, size, border="zero")[0]
        want *= np.float32(2.0)
        want += np.float32(-1.0)
        np.testing.assert_array_equal(x, want)
    np.testing.assert_allclose(_unit_lut(), np.arange(256) / 255.0, rtol=1e-7, atol=0)


def test_warp_kernel_errors():
    from ig3d import _core

    img = np.zeros((10, 12, 3), np.uint8)
    minv = np.eye(2, 3)[None]
    lut = _unit_lut()
    for bad, arg in [(img.astype(np.float32), "image"), (img[..., :2], "image"), (img[:0], "image"),
                     ([[1, 2, 3]], "image")]:
        with pytest.raises(ValueError, match=arg):
            _core.warp_affine(bad, minv, 8, False, lut)
    with pytest.raises(ValueError, match=r"minv: expected shape \[N, 2, 3\]"):
        _core.warp_affine(img, np.eye(3), 8, False, lut)
    with pytest.raises(ValueError, match="minv: must be finite"):
        _core.warp_affine(img, np.full((1, 2, 3), np.inf), 8, False, lut)
    with pytest.raises(ValueError, match="out_size"):
        _core.warp_affine(img, minv, 0, False, lut)
    with pytest.raises(ValueError, match="lut"):
        _core.warp_affine(img, minv, 8, False, lut[:10])
    # a strided view is read correctly
    big = np.random.default_rng(0).integers(0, 256, size=(20, 30, 3), dtype=np.uint8)
    view = big[::2, 1::2]
    np.testing.assert_array_equal(_core.warp_affine(view, minv, 8, False, lut),
                                  _core.warp_affine(np.ascontiguousarray(view), minv, 8, False, lut))


def test_letterbox_mediapipe_geometry():
    img = np.zeros((40, 80, 3), np.uint8)
    img[:, :] = (255, 255, 255)
    x, lb = letterbox_mediapipe(img, 16)
    assert x.shape == (16, 16, 3) and x.dtype == np.float32
    # 80x40 into 16x16: scale 0.2, 4 rows of padding top and bottom (value -1).
    assert lb.scale == pytest.approx(0.2) and lb.pad_y == pytest.approx(4.0)
    np.testing.assert_allclose(x[:3], -1.0)
    np.testing.assert_allclose(x[5:11], 1.0)
    np.testing.assert_allclose(x[13:], -1.0)


# ---------------------------------------------------------------------------------------------
# Landmark projection, blendshape input
# ---------------------------------------------------------------------------------------------


def test_landmarks_to_image_inverts_crop_map():
    rng = np.random.default_rng(5)
    rois = Rois(np.array([[300.0, 220.0], [80.0, 90.0]]), np.array([[310.0, 290.0], [90.0, 90.0]]),
                np.array([0.25, -0.6]))
    m, minv = roi_affine(rois, 256)
    pts = rng.uniform(0, 500, size=(2, 478, 2))
    crop = np.concatenate([_apply(m, pts), rng.normal(0, 20, size=(2, 478, 1))], axis=-1)
    img = landmarks_to_image(crop, minv)
    assert img.shape == (2, 478, 3) and img.dtype == np.float32
    np.testing.assert_allclose(img[..., :2], pts, atol=2e-3)
    # z scaled like x: ROI width / 256 image pixels per crop pixel.
    np.testing.assert_allclose(img[..., 2], crop[..., 2] * (rois.size[:, :1] / 256), rtol=1e-5)


def test_blendshape_points_subset():
    lm = np.arange(2 * 478 * 3, dtype=np.float32).reshape(2, 478, 3)
    pts = blendshape_points(lm)
    assert pts.shape == (2, 146, 2) and pts.dtype == np.float32
    np.testing.assert_array_equal(pts, lm[:, list(LANDMARKS_SUBSET_IDXS), :2])
    with pytest.raises(ValueError):
        blendshape_points(lm[:, :100])


# ---------------------------------------------------------------------------------------------
# Head pose
# ---------------------------------------------------------------------------------------------


def _project(angles_deg, scale=11.0, center=(320.0, 240.0)):
    """Rotate the canonical face and project orthographically to landmark pixels [N, 478, 3]."""
    a = np.asarray(angles_deg, np.float64)
    r = rotation_from_euler(a[:, 0], a[:, 1], a[:, 2])
    cam = np.einsum("nij,kj->nki", r, canonical_face()) * scale  # x right, y up, z to viewer
    lm = np.empty((len(a), 478, 3))
    lm[:, :468, 0] = center[0] + cam[..., 0]
    lm[:, :468, 1] = center[1] - cam[..., 1]                   # image y is down
    lm[:, :468, 2] = -cam[..., 2]                              # image z grows away
    lm[:, 468:] = lm[:, 467:468]                              # irises: unused by the fit
    return lm, r


def test_euler_round_trip():
    rng = np.random.default_rng(6)
    ang = np.column_stack([rng.uniform(-170, 170, 200), rng.uniform(-89, 89, 200),
                           rng.uniform(-170, 170, 200)])
    r = rotation_from_euler(ang[:, 0], ang[:, 1], ang[:, 2])
    np.testing.assert_allclose(np.einsum("nij,nkj->nik", r, r), np.tile(np.eye(3), (200, 1, 1)),
                               atol=1e-12)
    np.testing.assert_allclose(euler_from_rotation(r), ang, atol=1e-8)
    # Gimbal lock: pitch +-90, yaw and roll collapse into yaw.
    locked = euler_from_rotation(rotation_from_euler(30.0, 90.0, 0.0))
    np.testing.assert_allclose(locked, [30.0, 90.0, 0.0], atol=1e-6)


@pytest.mark.parametrize("basis", ["mediapipe", "all"])
def test_head_pose_recovers_synthetic_rotations(basis):
    ang = np.array([[0, 0, 0], [25, 0, 0], [0, 20, 0], [0, 0, 15], [-40, 10, -5],
                    [15, -30, 25], [60, 25, -40], [-70, -15, 30]], np.float64)
    lm, r_true = _project(ang)
    rng = np.random.default_rng(7)
    lm_noisy = lm + rng.normal(0, 0.3, lm.shape)   # 0.3 px landmark noise
    got, r = head_pose(lm_noisy, basis=basis)
    assert got.shape == (len(ang), 3) and r.shape == (len(ang), 3, 3)
    assert np.abs(got - ang).max() < 0.5
    exact, r_exact = head_pose(lm, basis=basis)
    np.testing.assert_allclose(exact, ang, atol=1e-6)
    np.testing.assert_allclose(r_exact, r_true, atol=1e-8)


def test_head_pose_sign_conventions():
    lm, _ = _project(np.array([[20.0, 0, 0], [0, 20.0, 0], [0, 0, 20.0]]))
    front, _ = _project(np.zeros((1, 3)))
    nose = 1
    # yaw > 0: subject turns to their left -> nose moves to the observer's right (+x).
    assert lm[0, nose, 0] > front[0, nose, 0] + 10
    # pitch > 0: looking up -> nose moves up in the image (smaller y).
    assert lm[1, nose, 1] < front[0, nose, 1] - 10
    # roll > 0: counter-clockwise as displayed -> outer corner of the subject's left eye (263,
    # observer's right) rises above the right eye's (33); the detector/landmark ROI angle is
    # then negative.
    assert lm[2, 263, 1] < lm[2, 33, 1] - 10
    assert rois_from_landmarks(lm[2:3]).angle[0] == pytest.approx(-np.radians(20.0), abs=1e-9)
    got, _ = head_pose(lm)
    np.testing.assert_allclose(got, np.diag([20.0, 20.0, 20.0]), atol=1e-6)


def test_head_pose_scale_translation_and_fit():
    lm, _ = _project(np.array([[10.0, -5.0, 3.0]]), scale=7.5, center=(100.0, 50.0))
    ang, r, s, t = head_pose(lm, return_fit=True)
    np.testing.assert_allclose(s, [7.5], rtol=1e-9)
    np.testing.assert_allclose(t[0, :2], [100.0, -50.0], atol=1e-6)
    # fit_similarity never returns a reflection.
    rng = np.random.default_rng(8)
    src = rng.normal(size=(20, 3))
    _, rr, _ = fit_similarity(src, (src * [1, 1, -1])[None])
    assert np.linalg.det(rr[0]) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        head_pose(lm[:, :400])


def test_procrustes_basis_matches_mediapipe_metadata():
    ids = [i for i, _ in PROCRUSTES_LANDMARKS]
    assert len(ids) == 33 and len(set(ids)) == 33 and max(ids) < 468
    try:
        from ig3d.convert.mediapipe_geometry import parse_geometry_pipeline_metadata
        from ig3d.convert.upstream import UpstreamUnavailable, upstream_file
        path = upstream_file("geometry_pipeline_metadata_landmarks.binarypb", download=False)
    except (ImportError, UpstreamUnavailable, OSError) as exc:
        pytest.skip(f"upstream geometry metadata not cached: {exc}")
    meta = parse_geometry_pipeline_metadata(path.read_bytes())
    np.testing.assert_array_equal(meta.procrustes_ids, ids)
    np.testing.assert_array_equal(meta.procrustes_weights,
                                  np.array([w for _, w in PROCRUSTES_LANDMARKS], np.float32))
    np.testing.assert_array_equal(meta.vertices[:468].astype(np.float64), canonical_face())


# ---------------------------------------------------------------------------------------------
# Real photos vs recorded MediaPipe output
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference():
    if not REFERENCE.exists():
        pytest.skip(f"{REFERENCE} missing")
    return np.load(REFERENCE)


@pytest.fixture(scope="module")
def sessions():
    ort = pytest.importorskip("onnxruntime")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1   # shared CI / dev machines
    names = {"short": "face_detector_short.onnx", "landmarks": "face_landmarks.onnx",
             "blendshapes": "face_blendshapes.onnx"}
    out = {}
    for key, name in names.items():
        if not (ASSETS / name).exists():
            pytest.skip(f"asset {name} missing")
        out[key] = ort.InferenceSession(str(ASSETS / name), opts,
                                        providers=["CPUExecutionProvider"])
    return out


def _load_photo(name: str) -> np.ndarray:
    path = _faces_dir() / name
    if not path.exists():
        pytest.skip(f"test photo {path} not found (set IG3D_FACES_DIR)")
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def _run_pipeline(sessions, img, *, mediapipe_letterbox=True):
    """ig3d's FaceLandmarker equivalent (IMAGE mode, best face) -> (landmarks, blendshapes,
    presence, rois)."""
    spec = D.SHORT_RANGE   # face_landmarker.task's face_detector.tflite
    if mediapipe_letterbox:
        x, lb = letterbox_mediapipe(img, spec.input_size)
    else:
        x, lb = D.letterbox(img, spec.input_size)
    raw_boxes, raw_scores = sessions["short"].run(None, {"image": x[None]})
    # MediaPipe Tasks FaceDetector defaults: min score 0.5, NMS IoU 0.5.
    det = D.postprocess(raw_boxes, raw_scores, spec, [lb], min_score=0.5, iou_thresh=0.5)[0]
    assert len(det) >= 1
    rois = rois_from_detections(det.boxes[:1], det.keypoints[:1])
    m, minv = roi_affine(rois, 256)
    crops = warp_crops(img, m, 256)
    lm_crop, presence = sessions["landmarks"].run(None, {"image": crops})
    lm = landmarks_to_image(lm_crop, minv)
    bs = sessions["blendshapes"].run(None, {"points": blendshape_points(lm)})[0]
    return lm[0], bs[0], float(presence[0, 0]), rois


def _photo_keys(reference):
    return [(str(p), str(p).rsplit(".", 1)[0]) for p in reference["photos"]]


def test_reference_file_contents(reference, sessions):
    assert str(reference["mediapipe_version"]) == "0.10.21"
    assert len(reference["blendshape_names"]) == 52
    for _, key in _photo_keys(reference):
        lm = reference[f"{key}/landmarks_px"]
        assert lm.shape == (478, 3)
        # Our blendshape model + input subset reproduce MediaPipe's scores from its landmarks.
        bs = sessions["blendshapes"].run(None, {"points": blendshape_points(lm[None])})[0][0]
        np.testing.assert_allclose(bs, reference[f"{key}/blendshapes"], atol=1e-5)


def test_pipeline_matches_mediapipe(reference, sessions):
    # Measured: xy <= 0.0054 px, z <= 0.0083 px, blendshapes <= 1.8e-4 (module doc). The
    # margins cover ONNX Runtime / CPU kernel differences.
    for photo, key in _photo_keys(reference):
        lm, bs, presence, _ = _run_pipeline(sessions, _load_photo(photo))
        ref_lm = reference[f"{key}/landmarks_px"]
        assert presence > 0.9, photo
        dxy = np.linalg.norm(lm[:, :2] - ref_lm[:, :2], axis=1)
        assert dxy.max() < 0.1, (photo, dxy.max())
        assert np.abs(lm[:, 2] - ref_lm[:, 2]).max() < 0.1, photo
        dbs = np.abs(bs - reference[f"{key}/blendshapes"]).max()
        assert dbs < 5e-3, (photo, dbs)


def test_pipeline_with_centre_aligned_letterbox_is_close(reference, sessions):
    # detect.letterbox samples pixel centres, MediaPipe corner-aligned: the detector keypoints,
    # hence the ROI, move slightly. Measured worst: 3.7 px (max), 1.1 px (mean), blendshapes
    # 0.135 (module doc).
    for photo, key in _photo_keys(reference):
        lm, bs, _, _ = _run_pipeline(sessions, _load_photo(photo), mediapipe_letterbox=False)
        dxy = np.linalg.norm(lm[:, :2] - reference[f"{key}/landmarks_px"][:, :2], axis=1)
        assert dxy.max() < 6.0 and dxy.mean() < 2.0, (photo, dxy.max(), dxy.mean())
        assert np.abs(bs - reference[f"{key}/blendshapes"]).max() < 0.25, photo


def test_head_pose_on_photos(reference):
    # Frontal photos: small angles; close to MediaPipe's own (perspective) pose in yaw and roll,
    # pitch differs by up to ~6 degrees (perspective vs orthographic fit).
    for _, key in _photo_keys(reference):
        ang, r = head_pose(reference[f"{key}/landmarks_px"][None])
        assert np.abs(ang).max() < 20.0, (key, ang)
        t = reference[f"{key}/transform"].astype(np.float64)
        mp_ang = euler_from_rotation(t[:3, :3] / np.linalg.norm(t[:3, 0]))
        assert abs(ang[0, 0] - mp_ang[0]) < 2.0 and abs(ang[0, 2] - mp_ang[2]) < 2.0, key
        assert abs(ang[0, 1] - mp_ang[1]) < 8.0, key


def test_refinement_pass_stays_on_the_face(reference, sessions):
    # Second pass from the landmark ROI (what MediaPipe uses for the next video frame).
    for photo, key in _photo_keys(reference):
        img = _load_photo(photo)
        lm, _, _, _ = _run_pipeline(sessions, img)
        rois = rois_from_landmarks(lm[None])
        m, minv = roi_affine(rois)
        lm2 = landmarks_to_image(sessions["landmarks"].run(None, {"image": warp_crops(img, m)})[0],
                                 minv)[0]
        d = np.linalg.norm(lm2[:, :2] - reference[f"{key}/landmarks_px"][:, :2], axis=1)
        assert d.mean() < 3.0, (photo, d.mean())
