"""Head pose from FaceMesh landmarks: weighted similarity fit of MediaPipe's canonical face.

:func:`head_pose` fits ``q ~ s * R @ p + t`` (Umeyama / weighted orthogonal Procrustes with
scale) from the canonical face mesh ``p`` (``ig3d/assets/canonical_face_468.npy``, MediaPipe's
``geometry_pipeline_metadata_landmarks.binarypb``) to the detected landmarks ``q`` and turns
``R`` into yaw / pitch / roll. This is the first, orthographic iteration of MediaPipe's
geometry pipeline (google-ai-edge/mediapipe, mediapipe/modules/face_geometry/libs/
geometry_pipeline.cc ``ConvertScreenLandmarkListToMetric`` + procrustes_solver.cc); MediaPipe
then un-projects with a perspective camera (63 degree vertical FOV) and refits, so its
``facial_transformation_matrixes`` differ from this by a few degrees for faces away from the
image centre.

Frames (right-handed, matching MediaPipe's ``ProjectXY`` + ``ChangeHandedness``):

* canonical face: x towards the observer's right (the subject's left), y up, z out of the face
  towards the viewer (nose tip has the largest z), centimetre-like units.
* landmarks: image pixels ``(x, y, z)`` with y down and z growing away from the camera
  (:func:`ig3d.faces.landmarks.landmarks_to_image`); they are mapped to ``(x, -y, -z)`` so that
  both frames are right-handed with y up and z towards the viewer. For a subject facing the
  camera upright, ``R`` is the identity.

Angles (degrees), with ``R = Ry(yaw) @ Rx(-pitch) @ Rz(roll)`` (standard right-handed
rotation matrices about the camera axes):

* yaw > 0: the subject turns to *their* left (nose moves to the observer's right, image +x).
* pitch > 0: the subject looks up (nose moves up in the image).
* roll > 0: the head tilts towards the subject's right shoulder, i.e. the face rotates
  counter-clockwise as displayed (the eye line's observer-right end goes up). So roll has the
  opposite sign of the ROI angle: roll ~ -degrees(``rois_from_landmarks(...).angle``) (within
  ~0.1 degree on the test photos; the detector-based ROI angle agrees only roughly, its eye
  keypoints are coarse).

The fit uses MediaPipe's Procrustes landmark basis (33 landmarks with weights, symmetric about
the face's midline, mostly rigid points around the eyes, nose and cheekbones, so expressions
barely move it) unless ``basis="all"`` (all 468 mesh points, uniform weights).
"""

from __future__ import annotations

from functools import lru_cache
from importlib import resources

import numpy as np

__all__ = [
    "PROCRUSTES_LANDMARKS",
    "canonical_face",
    "euler_from_rotation",
    "fit_similarity",
    "head_pose",
    "rotation_from_euler",
]

#: MediaPipe's ``procrustes_landmark_basis`` (landmark id, weight): the landmarks and weights
#: its geometry pipeline fits the pose with. Read from ``geometry_pipeline_metadata_landmarks
#: .binarypb`` in face_landmarker.task (mediapipe 0.10.21) with
#: :func:`ig3d.convert.mediapipe_geometry.parse_geometry_pipeline_metadata`; the same list is in
#: mediapipe/modules/face_geometry/data/geometry_pipeline_metadata_landmarks.pbtxt. Weights are
#: float32 values as stored (they sum to 1.055; only ratios matter).
PROCRUSTES_LANDMARKS: tuple[tuple[int, float], ...] = (
    (4, 0.07090994), (6, 0.032100145), (10, 0.008446551), (33, 0.05872417),
    (54, 0.00766708), (67, 0.009078059), (117, 0.009791938), (119, 0.014565368),
    (121, 0.018591361), (127, 0.0051979944), (129, 0.120625205), (132, 0.0055600186),
    (133, 0.053286184), (136, 0.066890456), (143, 0.014816548), (147, 0.014262834),
    (198, 0.025462192), (205, 0.04725228), (263, 0.05872417), (284, 0.00766708),
    (297, 0.009078059), (346, 0.009791938), (348, 0.014565368), (350, 0.018591361),
    (356, 0.0051979944), (358, 0.120625205), (361, 0.0055600186), (362, 0.053286184),
    (365, 0.066890456), (372, 0.014816548), (376, 0.014262834), (420, 0.025462192),
    (425, 0.04725228),
)

NUM_MESH_POINTS = 468


@lru_cache(maxsize=1)
def canonical_face() -> np.ndarray:
    """MediaPipe's canonical face mesh, ``[468, 3]`` float64 (read-only, cached)."""
    ref = resources.files("ig3d") / "assets" / "canonical_face_468.npy"
    with resources.as_file(ref) as path:
        verts = np.load(path, allow_pickle=False).astype(np.float64)
    if verts.shape != (NUM_MESH_POINTS, 3):
        raise ValueError(f"canonical_face_468.npy has shape {verts.shape}, expected (468, 3)")
    verts.setflags(write=False)
    return verts


def _basis(basis: str) -> tuple[np.ndarray, np.ndarray]:
    if basis == "mediapipe":
        ids = np.array([i for i, _ in PROCRUSTES_LANDMARKS], np.intp)
        wts = np.array([w for _, w in PROCRUSTES_LANDMARKS], np.float64)
    elif basis == "all":
        ids = np.arange(NUM_MESH_POINTS)
        wts = np.ones(NUM_MESH_POINTS)
    else:
        raise ValueError(f"basis must be 'mediapipe' or 'all', not {basis!r}")
    return ids, wts


def fit_similarity(src: np.ndarray, dst: np.ndarray, weights: np.ndarray | None = None):
    """Weighted least-squares similarity ``dst ~ s * R @ src + t`` (Umeyama 1991), batched.

    Minimises ``sum_k w_k |s R src_k + t - dst_k|^2`` with ``R`` a proper rotation
    (``det R = +1``; a reflection is never returned).

    Args:
        src: ``[K, 3]`` or ``[N, K, 3]`` model points.
        dst: ``[N, K, 3]`` observed points.
        weights: ``[K]`` non-negative, not all zero (default uniform).

    Returns:
        ``(s [N], R [N, 3, 3], t [N, 3])`` float64.
    """
    dst = np.asarray(dst, np.float64)
    src = np.broadcast_to(np.asarray(src, np.float64), dst.shape)
    k = dst.shape[-2]
    w = np.ones(k) if weights is None else np.asarray(weights, np.float64)
    if w.shape != (k,) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError("fit_similarity: weights must be [K], non-negative, not all zero")
    w = w / w.sum()
    mu_s = np.einsum("k,nkd->nd", w, src)
    mu_d = np.einsum("k,nkd->nd", w, dst)
    a = src - mu_s[:, None]
    b = dst - mu_d[:, None]
    cov = np.einsum("k,nki,nkj->nij", w, b, a)          # sum w (dst - mu)(src - mu)^T
    u, sig, vt = np.linalg.svd(cov)
    # Flip the weakest axis when U V^T would be a reflection.
    d = np.sign(np.linalg.det(u) * np.linalg.det(vt))
    d = np.where(d == 0, 1.0, d)
    u[:, :, 2] *= d[:, None]
    sig[:, 2] *= d
    r = u @ vt
    var_src = np.einsum("k,nkd,nkd->n", w, a, a)
    s = sig.sum(axis=1) / var_src
    t = mu_d - s[:, None] * np.einsum("nij,nj->ni", r, mu_s)
    return s, r, t


def rotation_from_euler(yaw: np.ndarray, pitch: np.ndarray, roll: np.ndarray) -> np.ndarray:
    """``R = Ry(yaw) @ Rx(-pitch) @ Rz(roll)`` from angles in degrees -> ``[..., 3, 3]``.

    The inverse of :func:`euler_from_rotation` (see the module doc for the sign conventions).
    """
    a, b, c = (np.radians(np.asarray(v, np.float64)) for v in (yaw, -np.asarray(pitch), roll))
    a, b, c = np.broadcast_arrays(a, b, c)
    ca, sa, cb, sb, cc, sc = np.cos(a), np.sin(a), np.cos(b), np.sin(b), np.cos(c), np.sin(c)
    z, o = np.zeros_like(a), np.ones_like(a)
    ry = np.stack([np.stack([ca, z, sa], -1), np.stack([z, o, z], -1),
                   np.stack([-sa, z, ca], -1)], -2)
    rx = np.stack([np.stack([o, z, z], -1), np.stack([z, cb, -sb], -1),
                   np.stack([z, sb, cb], -1)], -2)
    rz = np.stack([np.stack([cc, -sc, z], -1), np.stack([sc, cc, z], -1),
                   np.stack([z, z, o], -1)], -2)
    return ry @ rx @ rz


def euler_from_rotation(r: np.ndarray) -> np.ndarray:
    """``[..., 3, 3]`` rotation -> ``[..., 3]`` (yaw, pitch, roll) degrees.

    With ``R = Ry(a) Rx(b) Rz(c)``: ``R[1, 2] = -sin b``, ``R[0, 2] / R[2, 2] = tan a``,
    ``R[1, 0] / R[1, 1] = tan c``; pitch = -b. Gimbal lock at pitch = +-90 degrees (then yaw and
    roll are not separable; roll is reported as 0 there).
    """
    r = np.asarray(r, np.float64)
    sb = np.clip(-r[..., 1, 2], -1.0, 1.0)
    b = np.arcsin(sb)
    a = np.arctan2(r[..., 0, 2], r[..., 2, 2])
    c = np.arctan2(r[..., 1, 0], r[..., 1, 1])
    locked = np.abs(sb) > 1.0 - 1e-9
    if np.any(locked):
        # cos b = 0: only a +- c is determined; put it all in yaw.
        a = np.where(locked, np.arctan2(-r[..., 2, 0], r[..., 0, 0]), a)
        c = np.where(locked, 0.0, c)
    return np.degrees(np.stack([a, -b, c], axis=-1))


def head_pose(landmarks_px: np.ndarray, *, basis: str = "mediapipe",
              return_fit: bool = False):
    """Head orientation of each face from its landmarks.

    Args:
        landmarks_px: ``[N, 478 or 468, 3]`` image pixels ``(x, y down, z away from camera)``
            as from :func:`ig3d.faces.landmarks.landmarks_to_image`; only the 468 mesh points
            are used (the iris points have no canonical counterpart in the fit).
        basis: ``"mediapipe"`` (default: MediaPipe's 33 weighted Procrustes landmarks,
            :data:`PROCRUSTES_LANDMARKS`) or ``"all"`` (468 points, uniform weights).
        return_fit: also return the similarity's scale ``s [N]`` (pixels per canonical unit)
            and translation ``t [N, 3]`` (in the flipped ``(x, -y, -z)`` pixel frame).

    Returns:
        ``(angles [N, 3], R [N, 3, 3])``: yaw, pitch, roll in degrees (conventions in the
        module doc) and the canonical -> camera rotation (x right, y up, z towards the viewer);
        with ``return_fit``: ``(angles, R, s, t)``.
    """
    lm = np.asarray(landmarks_px, np.float64)
    if lm.ndim != 3 or lm.shape[1] < NUM_MESH_POINTS or lm.shape[2] != 3:
        raise ValueError(f"head_pose: expected [N, >=468, 3] landmarks, got {lm.shape}")
    ids, wts = _basis(basis)
    # Image (x right, y down, z away) -> right-handed (x right, y up, z towards the viewer).
    dst = lm[:, ids] * np.array([1.0, -1.0, -1.0])
    s, r, t = fit_similarity(canonical_face()[ids], dst, wts)
    angles = euler_from_rotation(r)
    if return_fit:
        return angles, r, s, t
    return angles, r
