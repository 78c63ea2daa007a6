"""Named pipelines. ``default``: MediaPipe's face detectors, landmark and blendshape models (the 3D
branch) and fer's mini-Xception (the 2D branch), all as bundled ONNX files, fused by the default
prior head (:mod:`ig3d.prior`) in the C++ fused head.

Every face of every image in a call travels together: one batched run per network, one fused-head
call per batch.
"""

from __future__ import annotations

from importlib import resources
from typing import List, Optional, Sequence

import numpy as np

from . import prior
from .engines import OnnxModel
from .faces import detect, landmarks as lmk, pose
from .faces.mediapipe_constants import BLENDSHAPE_NAMES, LANDMARK_MIN_PRESENCE
from .fusion import FusedHead
from .results import FaceResult

__all__ = ["PRESETS", "DefaultPipeline", "asset_path"]

PRESETS = ("default",)

FER_SIZE = 64
FER_CROP_SCALE = 1.1  # square side = 1.1 x the longer side of the landmarks' bounding box
MERGE_IOU = 0.3
#: Smallest face (pixels) the default preset looks for. Faces below ~20 px in the full-range
#: detector's 192x192 input are missed, so larger images are also scanned in tiles.
MIN_FACE_SIZE = 40
TILE_FACE_PIXELS = 16


def asset_path(name: str) -> str:
    """Path of a file bundled in ``ig3d/assets``."""
    p = resources.files("ig3d") / "assets" / name
    if not p.is_file():
        raise FileNotFoundError(f"bundled asset {name!r} is missing from the ig3d installation ({p})")
    return str(p)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


def _merge_detections(full: detect.FaceDetections, short: detect.FaceDetections) -> detect.FaceDetections:
    """Full-range detections (small and distant faces), plus the short-range ones that overlap none
    of them (close-ups and whole-frame faces, which the full-range model misses)."""
    if len(short) == 0:
        return full
    if len(full) == 0:
        return short
    iou = detect.iou_matrix(short.boxes, full.boxes)
    sc = (short.boxes[:, :2] + short.boxes[:, 2:]) / 2
    inside = ((sc[:, None, 0] >= full.boxes[None, :, 0]) & (sc[:, None, 0] <= full.boxes[None, :, 2])
              & (sc[:, None, 1] >= full.boxes[None, :, 1]) & (sc[:, None, 1] <= full.boxes[None, :, 3]))
    new = ~np.any((iou > MERGE_IOU) | inside, axis=1)
    return detect.FaceDetections(np.concatenate([full.boxes, short.boxes[new]]),
                                 np.concatenate([full.scores, short.scores[new]]),
                                 np.concatenate([full.keypoints, short.keypoints[new]]))


def _tiles(h: int, w: int, side: Optional[int]) -> List[tuple]:
    """Overlapping square tiles (x0, y0, x1, y1) covering an h x w image, or [] when the image is
    small enough for faces of the wanted size to be found in the whole-image pass."""
    if not side or max(h, w) <= side * 1.2:
        return []
    stride = side * 3 // 4  # 25 % overlap: a face at a tile border is whole in the next tile

    def starts(n):
        if n <= side:
            return [0]
        k = int(np.ceil((n - side) / stride)) + 1
        return [int(round(v)) for v in np.linspace(0, n - side, k)]

    return [(x, y, min(w, x + side), min(h, y + side)) for y in starts(h) for x in starts(w)]


def _letterbox_batch(images, size: int):
    pairs = [lmk.letterbox_mediapipe(im, size) for im in images]
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


def _warp_per_image(images, owner: np.ndarray, M: np.ndarray, size: int) -> np.ndarray:
    """Crops [F, size, size, 3] for faces listed image by image (``owner`` is non-decreasing)."""
    return np.concatenate([lmk.warp_crops(images[i], M[owner == i], size)
                           for i in np.unique(owner)])


class DefaultPipeline:
    """The default preset. ``run(images)`` takes RGB uint8 arrays and returns one list of
    :class:`FaceResult` per image, largest face first."""

    labels = prior.LABELS

    def __init__(self, *, backend: str, device: str, threads: Optional[int] = None,
                 head: Optional[FusedHead] = None, head_device: str = "cpu",
                 min_face_size: Optional[int] = MIN_FACE_SIZE):
        def model(name):
            return OnnxModel(asset_path(name), backend=backend, device=device, threads=threads, name=name)

        self.det_full = model("face_detector_full.onnx")
        self.det_short = model("face_detector_short.onnx")
        self.landmarker = model("face_landmarks.onnx")
        self.blendshaper = model("face_blendshapes.onnx")
        self.fer = model("fer_mini_xception.onnx")
        self.head = head if head is not None else prior.default_head()
        if self.head.input_dim != len(prior.PARAMS3D_NAMES) or self.head.num_classes != len(prior.LABELS):
            raise ValueError(f"head: the default preset needs a head with input_dim={len(prior.PARAMS3D_NAMES)} "
                             f"and num_classes={len(prior.LABELS)}, got {self.head!r}")
        self.head_device = head_device
        if min_face_size is not None and min_face_size <= 0:
            raise ValueError(f"min_face_size must be a positive number of pixels or None, got {min_face_size}")
        # a face of min_face_size pixels must span TILE_FACE_PIXELS of the detector's input
        self._tile_side = (None if min_face_size is None else
                           int(min_face_size * detect.FULL_RANGE.input_size / TILE_FACE_PIXELS))
        self._anchors_full = detect.FULL_RANGE.anchors()
        self._anchors_short = detect.SHORT_RANGE.anchors()

    # -----------------------------------------------------------------------------------------
    def detect(self, images: Sequence[np.ndarray]) -> List[detect.FaceDetections]:
        # Detector inputs made exactly as MediaPipe makes them (corner-aligned warp): the
        # blendshapes are sensitive to sub-pixel shifts of the landmark ROI that follows.
        # The full-range model also sees overlapping tiles of large images, so that faces of
        # min_face_size pixels are big enough in its 192x192 input; all in one batched run.
        views, owners, offsets = [], [], []
        for i, im in enumerate(images):
            for x0, y0, x1, y1 in [(0, 0, im.shape[1], im.shape[0])] + _tiles(im.shape[0], im.shape[1],
                                                                               self._tile_side):
                views.append(im[y0:y1, x0:x1])
                owners.append(i)
                offsets.append((x0, y0))
        xf, lbf = _letterbox_batch(views, detect.FULL_RANGE.input_size)
        xs, lbs = _letterbox_batch(images, detect.SHORT_RANGE.input_size)
        of = self.det_full.run(xf)
        os_ = self.det_short.run(xs)
        per_view = detect.postprocess(of["raw_boxes"], of["raw_scores"], detect.FULL_RANGE, lbf,
                                      anchors=self._anchors_full)
        full = []
        for i in range(len(images)):
            idx = [k for k, o in enumerate(owners) if o == i]
            if len(idx) == 1:
                full.append(per_view[idx[0]])
                continue
            b = np.concatenate([per_view[k].boxes + np.tile(offsets[k], 2) for k in idx]).astype(np.float32)
            kp = np.concatenate([per_view[k].keypoints + np.asarray(offsets[k], np.float32) for k in idx])
            sc = np.concatenate([per_view[k].scores for k in idx])
            # the same face seen in the whole image and in one or more tiles: blend them
            fb, fs, fk, _ = detect.weighted_nms(b, sc, detect.FULL_RANGE.min_suppression_threshold, kp)
            full.append(detect.FaceDetections(fb, fs, fk))
        # the short-range detector with the FaceLandmarker task's own thresholds (score 0.5, NMS 0.5)
        short = detect.postprocess(os_["raw_boxes"], os_["raw_scores"], detect.SHORT_RANGE, lbs,
                                   anchors=self._anchors_short, min_score=0.5, iou_thresh=0.5)
        return [_merge_detections(f, s) for f, s in zip(full, short)]

    def run(self, images: Sequence[np.ndarray]) -> List[List[FaceResult]]:
        if not images:
            return []
        dets = self.detect(images)
        owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(dets)]).astype(np.int64)
        if owner.size == 0:
            return [[] for _ in images]
        boxes = np.concatenate([d.boxes for d in dets]).astype(np.float32)
        scores = np.concatenate([d.scores for d in dets]).astype(np.float32)
        kps = np.concatenate([d.keypoints for d in dets]).astype(np.float32)

        # 3D branch: landmarks on a rotated 256x256 crop per face, all faces in one run
        M, Minv = lmk.roi_affine(lmk.rois_from_detections(boxes, kps), 256)
        out = self.landmarker.run(_warp_per_image(images, owner, M, 256))
        presence = out["presence"].reshape(-1)
        keep = presence >= LANDMARK_MIN_PRESENCE  # the detector's false positives have no face mesh
        if not np.any(keep):
            return [[] for _ in images]
        owner, boxes, scores, Minv = owner[keep], boxes[keep], scores[keep], Minv[keep]
        lm = lmk.landmarks_to_image(out["landmarks"][keep], Minv)
        bs = self.blendshaper.run(lmk.blendshape_points(lm))["blendshapes"].astype(np.float32)
        angles, _ = pose.head_pose(lm)
        params3d = np.concatenate([bs, angles.astype(np.float32)], axis=1)

        # 2D branch: mini-Xception on a square gray crop around the landmarks
        lo, hi = lm[:, :, :2].min(axis=1), lm[:, :, :2].max(axis=1)
        centre, side = (lo + hi) / 2, (hi - lo).max(axis=1) * FER_CROP_SCALE
        Mf = np.zeros((len(lm), 2, 3), np.float32)
        s = FER_SIZE / side
        Mf[:, 0, 0] = s
        Mf[:, 1, 1] = s
        Mf[:, :, 2] = FER_SIZE / 2 - centre * s[:, None]
        fer_rgb = _warp_per_image(images, owner, Mf, FER_SIZE)
        gray = fer_rgb @ np.array([0.299, 0.587, 0.114], np.float32)  # cv2's BGR2GRAY weights
        fer_out = self.fer.run(((gray - 0.5) * 2.0)[..., None].astype(np.float32))
        logits_fer = fer_out["logits"].astype(np.float32)

        # fused head: normalise, 3D head, late fusion, softmax - one C++ call for every face
        fused = self.head(params3d, logits_fer, device=self.head_device)
        C = len(self.labels)
        logits_2d = np.zeros((len(lm), C), np.float32)
        logits_2d[:, prior.FER_TO_LABELS] = logits_fer
        logits_3d = fused.out3d[:, :C]
        p2d, p3d = _softmax(logits_2d), _softmax(logits_3d)
        va = fused.probs @ prior.CIRCUMPLEX

        results: List[List[FaceResult]] = [[] for _ in images]
        for f in range(len(lm)):
            results[owner[f]].append(FaceResult(
                box=np.array([lo[f, 0], lo[f, 1], hi[f, 0], hi[f, 1]], np.float32),
                score=float(scores[f]),
                landmarks=lm[f],
                blendshapes=dict(zip(BLENDSHAPE_NAMES, map(float, bs[f]))),
                head_pose=dict(zip(("yaw", "pitch", "roll"), map(float, angles[f]))),
                params3d=params3d[f],
                label=self.labels[int(np.argmax(fused.probs[f]))],
                scores=dict(zip(self.labels, map(float, fused.probs[f]))),
                valence=float(va[f, 0]),
                arousal=float(va[f, 1]),
                label_2d=self.labels[int(np.argmax(p2d[f]))],
                scores_2d=dict(zip(self.labels, map(float, p2d[f]))),
                label_3d=self.labels[int(np.argmax(p3d[f]))],
                scores_3d=dict(zip(self.labels, map(float, p3d[f]))),
                logits_2d=logits_2d[f],
                logits_3d=logits_3d[f].copy(),
            ))
        for r in results:
            r.sort(key=lambda fr: -fr.area)
        return results
