"""Encoder input crops, each following its upstream network's own convention, built on the default
preset's landmarks (478 MediaPipe points in image pixels). All functions are vectorised over faces.

| encoder | convention (upstream) | here |
|---|---|---|
| EMOCA / DECA | FAN-68 landmark box; square of side mean(w, h) x 1.1 x 1.25 around its centre; 224x224; RGB in [0, 1] (radekd91/emoca: gdl/datasets/ImageTestDataset.py, ImageDatasetHelpers.py) | the FAN-68 box is approximated from MediaPipe points: x from the face oval, y from the top of the brows to the chin |
| SMIRK | MediaPipe landmark box; side mean(w, h) x 1.4 (demo --crop); 224x224; RGB in [0, 1] (georgeretsi/smirk: demo.py, utils/mediapipe_utils.py) | the same box, from the same landmarks |
| DDAMFN++ | 5 points fitted by a similarity to five pose templates (frontal, left/right, left/right profile), lowest summed error wins; 112x112, black border; ImageNet mean/std (SainingZhang/DDAMFN: DDAMFN++/Retinaface_alignment_ver2.0/face_align_v2.0.py) | the 5 points (eye centres, nose tip, mouth corners) from MediaPipe's iris centres and mesh instead of RetinaFace |
| CAGE | AffectNet face crops at 224x224, ImageNet mean/std (wagner-niklas/CAGE_expression_inference) | a square of side 1.25 x the landmark box (AffectNet's crops are the annotated face box with a margin; ig3d's choice) |
"""

from __future__ import annotations

from typing import Tuple

import numpy as np

from .landmarks import warp_crops

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "DDAMFN_TEMPLATES", "five_points", "similarity_2d",
           "ddamfn_affine", "square_affine", "emoca_affine", "smirk_affine", "cage_affine", "crop"]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)

#: DDAMFN++'s five 112x112 alignment templates (left profile, left, frontal, right, right profile),
#: points in RetinaFace order: image-left eye, image-right eye, nose tip, image-left and
#: image-right mouth corner (SainingZhang/DDAMFN: DDAMFN++/Retinaface_alignment_ver2.0/face_align_v2.0.py).
DDAMFN_TEMPLATES = np.array([
    [[55.550, 49.477], [62.116, 49.339], [38.075, 70.237], [55.017, 92.262], [61.466, 92.979]],
    [[47.241, 48.598], [72.887, 49.540], [40.555, 71.067], [47.423, 93.643], [71.236, 94.353]],
    [[33.566, 40.559], [78.321, 40.559], [55.338, 64.967], [38.479, 90.276], [73.591, 90.276]],
    [[39.516, 49.540], [65.162, 48.598], [71.849, 71.067], [41.167, 94.353], [64.980, 93.643]],
    [[50.225, 49.339], [56.791, 49.477], [74.266, 70.237], [50.875, 92.979], [65.317, 92.262]],
], np.float32)

# MediaPipe mesh indices: iris centres (468 = the subject's right eye, on the image left), nose
# tip, mouth corners (61 image-left, 291 image-right), brows, chin.
_FIVE = (468, 473, 1, 61, 291)
_BROWS = (70, 63, 105, 66, 107, 55, 65, 52, 53, 46, 300, 293, 334, 296, 336, 285, 295, 282, 283, 276)
_CHIN = 152


def five_points(landmarks: np.ndarray) -> np.ndarray:
    """[N, 478, >=2] -> [N, 5, 2] in RetinaFace's order (see :data:`DDAMFN_TEMPLATES`)."""
    return np.asarray(landmarks)[:, list(_FIVE), :2].astype(np.float64)


def similarity_2d(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (rotation, uniform scale, translation; no reflection) mapping
    ``src`` [N, K, 2] onto ``dst`` [K, 2] or [N, K, 2] (Umeyama 1991). Returns [N, 2, 3]."""
    src = np.asarray(src, np.float64)
    dst = np.broadcast_to(np.asarray(dst, np.float64), src.shape)
    ms, md = src.mean(1, keepdims=True), dst.mean(1, keepdims=True)
    s, d = src - ms, dst - md
    cov = np.einsum("nki,nkj->nij", d, s) / src.shape[1]
    U, S, Vt = np.linalg.svd(cov)
    sign = np.sign(np.linalg.det(U @ Vt))
    D = np.stack([np.ones_like(sign), sign], axis=1)
    R = U @ (D[:, :, None] * Vt)
    var = (s ** 2).sum(axis=(1, 2)) / src.shape[1]
    scale = (S * D).sum(1) / var
    M = np.empty((src.shape[0], 2, 3))
    M[:, :, :2] = scale[:, None, None] * R
    M[:, :, 2] = md[:, 0] - np.einsum("nij,nj->ni", M[:, :, :2], ms[:, 0])
    return M


def ddamfn_affine(landmarks: np.ndarray, size: int = 112) -> Tuple[np.ndarray, np.ndarray]:
    """DDAMFN++'s alignment: fit each of the five templates, keep the one with the lowest summed
    point error. Returns (M [N, 2, 3] image -> crop, template index [N])."""
    pts = five_points(landmarks)
    n = len(pts)
    templates = DDAMFN_TEMPLATES.astype(np.float64) * (size / 112.0)
    best_M = np.zeros((n, 2, 3))
    best_err = np.full(n, np.inf)
    best_i = np.zeros(n, np.int64)
    for i, t in enumerate(templates):
        M = similarity_2d(pts, t)
        proj = np.einsum("nij,nkj->nki", M[:, :, :2], pts) + M[:, None, :, 2]
        err = np.sqrt(((proj - t) ** 2).sum(-1)).sum(-1)
        better = err < best_err
        best_M[better], best_err[better], best_i[better] = M[better], err[better], i
    return best_M.astype(np.float32), best_i


def square_affine(centre: np.ndarray, side: np.ndarray, size: int) -> np.ndarray:
    """Axis-aligned square of ``side`` pixels around ``centre`` [N, 2] -> [N, 2, 3] image -> crop
    (corner-to-corner: the square's edges land on the crop's edges)."""
    s = size / np.asarray(side, np.float64)
    M = np.zeros((len(s), 2, 3))
    M[:, 0, 0] = M[:, 1, 1] = s
    M[:, :, 2] = size / 2.0 - np.asarray(centre, np.float64) * s[:, None]
    return M.astype(np.float32)


def _box(points: np.ndarray):
    lo, hi = points.min(1), points.max(1)
    return (lo + hi) / 2, hi - lo


def emoca_affine(landmarks: np.ndarray, size: int = 224) -> np.ndarray:
    """EMOCA/DECA: FAN-68-like box (face oval in x, brows to chin in y), side mean(w, h) x 1.1 x 1.25."""
    lm = np.asarray(landmarks, np.float64)
    x = lm[:, :468, 0]
    y_top = lm[:, list(_BROWS), 1].min(1)
    y_bot = lm[:, _CHIN, 1]
    centre = np.stack([(x.min(1) + x.max(1)) / 2, (y_top + y_bot) / 2], 1)
    side = ((x.max(1) - x.min(1)) + (y_bot - y_top)) / 2 * 1.1 * 1.25
    return square_affine(centre, side, size)


def smirk_affine(landmarks: np.ndarray, size: int = 224, scale: float = 1.4) -> np.ndarray:
    """SMIRK: the 478 landmarks' box, side mean(w, h) x ``scale`` (1.4 as SMIRK's demo)."""
    centre, wh = _box(np.asarray(landmarks, np.float64)[:, :, :2])
    return square_affine(centre, wh.mean(1) * scale, size)


def cage_affine(landmarks: np.ndarray, size: int = 224, scale: float = 1.25) -> np.ndarray:
    """CAGE: a square of the landmarks' longer side x ``scale``."""
    centre, wh = _box(np.asarray(landmarks, np.float64)[:, :, :2])
    return square_affine(centre, wh.max(1) * scale, size)


def crop(image: np.ndarray, M: np.ndarray, size: int, *, imagenet: bool = False,
         threads: int = 0) -> np.ndarray:
    """Warp ``image`` (RGB uint8) by each affine -> float32 NCHW [N, 3, size, size]: RGB in [0, 1],
    or ImageNet-normalised when ``imagenet``. Black border, as the upstream crops. ``threads`` as
    in :func:`ig3d.faces.landmarks.warp_crops`."""
    x = warp_crops(image, M, size, border="zero", threads=threads)
    if imagenet:
        x = (x - IMAGENET_MEAN) / IMAGENET_STD
    return np.ascontiguousarray(x.transpose(0, 3, 1, 2), dtype=np.float32)
