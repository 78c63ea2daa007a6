"""The stages every preset is made of, as parts over arrays.

* :class:`Detection`: both MediaPipe detectors (full range with the small-face scan, short range),
  their detections merged per image;
* :class:`Landmarks`: the rotated 256x256 crops, the landmark model, its face presence, and the
  second pass (:meth:`Landmarks.refine`); video tracking calls it on regions from the previous frame;
* :class:`FaceGeometry`: the 3D read of the landmarks (the 52 blendshapes and the head pose);
* :class:`FerBranch`: the default preset's 2D branch (a gray 64x64 crop, mini-Xception);
* :class:`Encoders`: the Ig3D presets' crops (each encoder's own convention) and 3D / 2D networks (on
  TensorRT, :meth:`Encoders.run_device` leaves their outputs on the device for the head);
* :class:`HeadStage`: the fused head (:class:`ig3d.FusedHead`, one C++ call for every face);
* :func:`build_results`: the one place where :class:`ig3d.FaceResult` objects are made, from arrays.

A stage says what to compute and hands the runs to its :class:`ig3d.pipelines.execution.Execution`
(``start`` returns work in flight, so that a pipeline can overlap the stages that do not depend on
each other). Every face of every image in a call goes through each stage together; a face's result
does not depend on the other faces of the call.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from importlib import resources
from typing import Callable, Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from ..faces import align, detect, landmarks as lmk, pose
from ..faces.detect import Letterbox
from ..faces.mediapipe_constants import BLENDSHAPE_NAMES, LANDMARK_MIN_PRESENCE
from ..fusion import FusedHead, FusedOutput
from ..results import FaceResult
from .execution import Execution
from .options import MIN_FACE_SIZE, Outputs

__all__ = ["Detection", "Landmarks", "FaceGeometry", "FerBranch", "Encoders", "HeadStage", "Faces", "Started",
           "FaceArrays", "Outputs", "build_results", "asset_path", "encoder_crops", "to_device",
           "device_columns"]

MERGE_IOU = 0.3
#: a detection with more than this share of its box inside a larger detection's box is dropped
CONTAINED_SHARE = 0.6
#: detector pixels a face of ``min_face_size`` spans in the small-face scan
SCAN_FACE_PIXELS = 16
#: scan detections scoring from this up to the detector's threshold (0.6) are looked at again,
#: zoomed: a 16-px face's score swings with its place on the network's grid and with what is
#: around it, the zoomed look settles it (see Detection._finish_full)
PROPOSE_SCORE = 0.2
#: detector pixels a candidate's box spans in its zoomed look
ZOOM_FACE_PIXELS = 24
#: the previous search (overlapping square tiles of ``min_face_size * 192 / 16`` px), kept only
#: for the benchmark's comparison (``Detection._small_faces = "tiles"``)
TILE_FACE_PIXELS = 16
#: the short-range detector's score threshold: the FaceLandmarker task's own (its NMS is 0.5 too)
SHORT_RANGE_MIN_SCORE = 0.5
#: The default preset's networks that run in bf16 when a Predictor asks for ``precision="bf16"``: those
#: whose bf16 outputs pass the accuracy gates on every shared photo (python_tests/test_bf16_gates.py: same
#: labels, landmarks within 1 px, blendshapes and valence/arousal within 0.03); the others stay fp32.
#: Measured alone in bf16 against all-fp32 on the shared photos: the full-range detector moves landmarks
#: 0.3 px, blendshapes 0.021, VA 0.014; the short-range detector and mini-Xception (VA 0.002) less; the
#: landmark model (landmarks by pixels, blendshapes 0.39) and the blendshape model (0.36) fail and stay fp32.
BF16_GATED = frozenset({"face_detector_full.onnx", "face_detector_short.onnx", "fer_mini_xception.onnx"})
FER_SIZE = 64
FER_CROP_SCALE = 1.1  # square side = 1.1 x the longer side of the landmarks' bounding box


def asset_path(name: str) -> str:
    """Path of a file bundled in ``ig3d/assets``."""
    p = resources.files("ig3d") / "assets" / name
    if not p.is_file():
        raise FileNotFoundError(f"bundled asset {name!r} is missing from the ig3d installation ({p})")
    return str(p)


class Started:
    """A stage's work in flight: ``result()`` waits for it and returns the stage's arrays."""

    def __init__(self, finish: Callable[[], object]):
        self._finish = finish

    def result(self):
        return self._finish()


def _new_faces(found: detect.FaceDetections, more: detect.FaceDetections) -> np.ndarray:
    """Mask over ``more``: the detections that overlap none of ``found`` (IoU above MERGE_IOU, or
    the centre inside one of ``found``'s boxes)."""
    if len(found) == 0 or len(more) == 0:
        return np.ones(len(more), bool)
    iou = detect.iou_matrix(more.boxes, found.boxes)
    mc = (more.boxes[:, :2] + more.boxes[:, 2:]) / 2
    inside = ((mc[:, None, 0] >= found.boxes[None, :, 0]) & (mc[:, None, 0] <= found.boxes[None, :, 2])
              & (mc[:, None, 1] >= found.boxes[None, :, 1]) & (mc[:, None, 1] <= found.boxes[None, :, 3]))
    return ~np.any((iou > MERGE_IOU) | inside, axis=1)


def _tiles(h: int, w: int, side: Optional[int]) -> List[tuple]:
    """Overlapping square tiles (x0, y0, x1, y1) covering an h x w image, or [] when the image is
    small enough for faces of the wanted size to be found in the whole-image pass. The previous
    small-face search, kept for the benchmark's comparison only."""
    if not side or max(h, w) <= side * 1.2:
        return []
    stride = side * 3 // 4  # 25 % overlap: a face at a tile border is whole in the next tile

    def starts(n):
        if n <= side:
            return [0]
        k = int(np.ceil((n - side) / stride)) + 1
        return [int(round(v)) for v in np.linspace(0, n - side, k)]

    return [(x, y, min(w, x + side), min(h, y + side)) for y in starts(h) for x in starts(w)]


def _stack(dets: List[detect.FaceDetections]) -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per-image detections -> (owner, boxes, scores, keypoints) over all faces."""
    owner = np.concatenate([np.full(len(d), i, np.int64) for i, d in enumerate(dets)] + [np.zeros(0, np.int64)])
    if owner.size == 0:
        return owner, np.zeros((0, 4), np.float32), np.zeros(0, np.float32), np.zeros((0, 6, 2), np.float32)
    return (owner, np.concatenate([d.boxes for d in dets]).astype(np.float32),
            np.concatenate([d.scores for d in dets]).astype(np.float32),
            np.concatenate([d.keypoints for d in dets]).astype(np.float32))


def _subset(d: detect.FaceDetections, mask: np.ndarray) -> detect.FaceDetections:
    return detect.FaceDetections(d.boxes[mask], d.scores[mask], d.keypoints[mask])


def _inside_larger(boxes: np.ndarray, share: float = CONTAINED_SHARE) -> np.ndarray:
    """Mask: the boxes whose area lies for more than ``share`` inside a larger box. A face does not
    sit inside another face: such a box is part of a face that a detector took for a face of its own
    (the small-face scan proposes parts of a whole-frame face that only the short-range detector
    sees whole)."""
    n = len(boxes)
    out = np.zeros(n, bool)
    if n < 2:
        return out
    b = np.asarray(boxes, np.float64)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    iw = np.clip(np.minimum(b[:, None, 2], b[None, :, 2]) - np.maximum(b[:, None, 0], b[None, :, 0]), 0, None)
    ih = np.clip(np.minimum(b[:, None, 3], b[None, :, 3]) - np.maximum(b[:, None, 1], b[None, :, 1]), 0, None)
    inter = iw * ih  # [i, j]: overlap of i and j
    larger = area[None, :] > area[:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        frac = np.where(area[:, None] > 0, inter / area[:, None], 0.0)
    return np.any(larger & (frac > share), axis=1)


def _cat_dets(a: detect.FaceDetections, b: detect.FaceDetections) -> detect.FaceDetections:
    return detect.FaceDetections(np.concatenate([a.boxes, b.boxes]), np.concatenate([a.scores, b.scores]),
                                 np.concatenate([a.keypoints, b.keypoints]))




class Faces(NamedTuple):
    """Faces of a call, one row each: owning image, detector score, crop -> image map, and the
    landmark model's output (crop pixels) and face presence."""

    owner: np.ndarray
    scores: np.ndarray
    Minv: np.ndarray
    landmarks: np.ndarray
    presence: np.ndarray

    def take(self, sel) -> "Faces":
        return Faces(*(a[sel] for a in self))


class Detection:
    """Both detectors on whole images; per image, their detections merged.

    The full-range detector runs on the whole image and, for images too large for a face of
    ``min_face_size`` at 192x192, once more over the whole image at a larger scale (the small-face
    scan; see _finish_full); MediaPipe's short-range detector runs with the FaceLandmarker task's
    thresholds (close-ups and whole-frame faces, which the full-range model misses).
    ``min_score``: one score threshold for both detectors instead of their own (full range 0.6,
    short range 0.5).
    """

    def __init__(self, execution: Execution, *, min_face_size: Optional[int] = MIN_FACE_SIZE,
                 min_score: Optional[float] = None):
        if min_face_size is not None and min_face_size <= 0:
            raise ValueError(f"min_face_size must be a positive number of pixels or None, got {min_face_size}")
        if min_score is not None and not 0.0 <= float(min_score) <= 1.0:
            raise ValueError(f"min_detection_confidence must lie in [0, 1] or be None, got {min_score}")
        self.execution = execution
        self.workers = execution.workers
        full, short = "face_detector_full.onnx", "face_detector_short.onnx"
        self.det_full = execution.model(asset_path(full), full, BF16_GATED)
        self.det_short = execution.model(asset_path(short), short, BF16_GATED)
        #: the scan's run has the cores to itself for most of its time: a session with threads
        self.det_scan = (execution.whole_machine_model(asset_path(full), full, BF16_GATED)
                         if self.workers.parallel else self.det_full)
        self.min_face_size = min_face_size
        self.min_score = None if min_score is None else float(min_score)
        self._short_min_score = SHORT_RANGE_MIN_SCORE if min_score is None else float(min_score)
        self._propose_score = PROPOSE_SCORE if min_score is None else min(PROPOSE_SCORE, float(min_score))
        # Images larger than 1.2 x this side get the small-face search (as the tiles of this side did):
        # at 192 / side a face of min_face_size pixels spans TILE_FACE_PIXELS of the detector's input.
        self._tile_side = (None if min_face_size is None else
                           int(min_face_size * detect.FULL_RANGE.input_size / TILE_FACE_PIXELS))
        #: scale of the small-face scan (image -> detector input)
        self._scan_scale = None if min_face_size is None else SCAN_FACE_PIXELS / float(min_face_size)
        #: "scan" (one run over the whole image, then zoomed looks at uncertain faces) or "tiles"
        #: (the previous search, for the benchmark's comparison)
        self._small_faces = "scan"
        self._anchors_full = detect.FULL_RANGE.anchors()
        self._anchors_short = detect.SHORT_RANGE.anchors()

    def detect(self, images) -> List[Tuple[detect.FaceDetections, np.ndarray]]:
        """Per image: the full-range detections (small and distant faces), plus the short-range
        ones that overlap none of them (close-ups and whole-frame faces, which the full-range model
        misses), and a mask over them that is True for the faces only the full-range detector
        (whole image or small-face scan) found. Both detectors run at once; the short-range runs (the
        cheaper ones) go first, and each run is decoded while the later ones are still going."""
        pending_short, lbs = self._start_short(images)
        pending_full, views = self._start_full(images)
        short = self._finish_short(pending_short, lbs)
        full = self._finish_full(pending_full, views, len(images))
        out = []
        for f, s in zip(full, short):
            new_short = _new_faces(f, s)
            d = _cat_dets(f, _subset(s, new_short))
            only_full = np.concatenate([_new_faces(s, f), np.zeros(int(new_short.sum()), bool)])
            keep = ~_inside_larger(d.boxes)
            out.append((_subset(d, keep), only_full[keep]))
        return out

    def _letterboxer(self, size: int):
        t = self.execution.cpp_threads

        def prep(views):
            return np.stack([lmk.letterbox_mediapipe(v, size, threads=t)[0] for v in views])
        return prep

    def _needs_scan(self, hw) -> bool:
        """Whether an image this size gets the small-face search (its faces of min_face_size would
        span too few pixels of the whole-image 192x192 input)."""
        return bool(self._tile_side) and max(hw[0], hw[1]) > self._tile_side * 1.2

    def _start_full(self, images):
        """Start the full-range pass: whole images, then one scan of each large image at the scale
        where its smallest wanted faces span SCAN_FACE_PIXELS, all in flight."""
        if self._small_faces == "tiles":
            return self._start_tiles(images)
        # Detector inputs made exactly as MediaPipe makes them (corner-aligned warp): the
        # blendshapes are sensitive to sub-pixel shifts of the landmark ROI that follows.
        size = detect.FULL_RANGE.input_size
        lbf = [Letterbox.fit(im.shape[:2], size) for im in images]
        whole = self.workers.start(self.det_full, list(images), self._letterboxer(size))
        scans = []
        for i, im in enumerate(images):
            if self._needs_scan(im.shape[:2]):
                view = detect.ScaledView(im.shape[:2], detect.scan_shape(im.shape[:2], self._scan_scale),
                                         self._scan_scale)
                scans.append((i, view, self.workers.start(self.det_scan, [i], self._scanner(images, view))))
        return whole, ("scan", lbf, scans, images)

    def _scanner(self, images, view: detect.ScaledView):
        """prep for the scan: the image at ``view.scale`` in a ``view.tensor_hw`` input, black beyond
        its right and bottom edges, sampled as the 192x192 letterbox is (square warps of the shorter
        side, side by side along the longer one)."""
        t = self.execution.cpp_threads
        lut = lmk._unit_lut(detect.FULL_RANGE.input_range)

        def prep(items):
            (i,) = items
            h, w = view.tensor_hw
            s, side = view.scale, min(h, w)
            out = np.empty((1, h, w, 3), np.float32)
            for off in range(0, max(h, w), side):
                wide = w >= h
                m = np.array([[[s, 0.0, -off if wide else 0.0], [0.0, s, 0.0 if wide else -off]]])
                block = lmk.warp_crops(images[i], m, side, border="zero", threads=t, _lut=lut)[0]
                if wide:
                    out[0, :, off:off + side] = block[:, :w - off]
                else:
                    out[0, off:off + side] = block[:h - off]
            return out
        return prep

    def _zoomer(self, images):
        """prep for zoomed looks: items are (image index, image -> 192x192 affine), black border."""
        t = self.execution.cpp_threads
        lut = lmk._unit_lut(detect.FULL_RANGE.input_range)
        size = detect.FULL_RANGE.input_size

        def prep(items):
            return np.concatenate([lmk.warp_crops(images[i], m, size, border="zero", threads=t, _lut=lut)
                                   for i, m in items])
        return prep

    def _start_tiles(self, images):
        """The previous search: whole images plus overlapping tiles of large ones (benchmarks only)."""
        views, owners, offsets = [], [], []
        for i, im in enumerate(images):
            for x0, y0, x1, y1 in [(0, 0, im.shape[1], im.shape[0])] + _tiles(im.shape[0], im.shape[1],
                                                                               self._tile_side):
                views.append(im[y0:y1, x0:x1])
                owners.append(i)
                offsets.append((x0, y0))
        size = detect.FULL_RANGE.input_size
        lbf = [Letterbox.fit(v.shape[:2], size) for v in views]
        return self.workers.start(self.det_full, views, self._letterboxer(size)), ("tiles", lbf, owners, offsets)

    @staticmethod
    def _decode(pending, spec, letterboxes, **kw) -> List[detect.FaceDetections]:
        """Detections per view, each run decoded as soon as it is done (while later runs go on)."""
        out: List[detect.FaceDetections] = []
        for start, part in pending.parts():
            n = len(part["raw_boxes"])
            out += detect.postprocess(part["raw_boxes"], part["raw_scores"], spec, letterboxes[start:start + n], **kw)
        return out

    def _finish_full(self, pending, views, n_images: int) -> List[detect.FaceDetections]:
        if views[0] == "tiles":
            return self._finish_tiles(pending, views, n_images)
        _, lbf, scans, images = views
        spec = detect.FULL_RANGE
        whole = self._decode(pending, spec, lbf, anchors=self._anchors_full,
                            min_score=self.min_score)
        extra: List[List[detect.FaceDetections]] = [[] for _ in range(n_images)]
        zoom_items, zoom_views, zoom_owner = [], [], []
        for i, view, p in scans:
            out = p.result()
            raw = (out["raw_boxes"], out["raw_scores"], spec, [view])
            sure = detect.postprocess(*raw, input_hw=view.tensor_hw, min_score=self.min_score)[0]
            maybe = detect.postprocess(*raw, input_hw=view.tensor_hw, min_score=self._propose_score)[0]
            extra[i].append(sure)
            # Candidates the scan is unsure of get a second, zoomed look (a 192x192 view centred on
            # the box, the box spanning ZOOM_FACE_PIXELS); what that look finds above the detector's
            # threshold counts. A 16-px face's scan score swings between looks (measured on 40-px
            # faces pasted into 1920x1080 frames: one look at threshold 0.6 found 32 % of them, the
            # overlapping tiles 62 %, the scan with zoomed looks 88 %); a 24-px look is steadier.
            for box in maybe.boxes[_new_faces(sure, maybe)]:
                side = float(max(box[2] - box[0], box[3] - box[1])) * spec.input_size / ZOOM_FACE_PIXELS
                centre = (box[:2] + box[2:]) / 2.0
                rois = lmk.Rois(centre[None].astype(np.float64), np.array([[side, side]]), np.zeros(1))
                m, _ = lmk.roi_affine(rois, spec.input_size)
                k = spec.input_size / side
                zoom_items.append((i, m[0]))
                zoom_views.append(detect.ScaledView(view.image_hw, (spec.input_size,) * 2, k,
                                                    spec.input_size / 2.0 - centre[0] * k,
                                                    spec.input_size / 2.0 - centre[1] * k))
                zoom_owner.append(i)
        if zoom_items:
            pz = self.workers.start(self.det_full, zoom_items, self._zoomer(images))
            for i, d in zip(zoom_owner, self._decode(pz, spec, zoom_views, anchors=self._anchors_full,
                            min_score=self.min_score)):
                extra[i].append(d)
        full = []
        for i in range(n_images):
            if not extra[i]:
                full.append(whole[i])
                continue
            parts = [whole[i]] + extra[i]
            # the same face seen whole, in the scan and zoomed: blend them
            fb, fs, fk, _ = detect.weighted_nms(np.concatenate([d.boxes for d in parts]).astype(np.float32),
                                                np.concatenate([d.scores for d in parts]),
                                                spec.min_suppression_threshold,
                                                np.concatenate([d.keypoints for d in parts]))
            full.append(detect.FaceDetections(fb, fs, fk))
        return full

    def _finish_tiles(self, pending, views, n_images: int) -> List[detect.FaceDetections]:
        _, lbf, owners, offsets = views
        per_view = self._decode(pending, detect.FULL_RANGE, lbf, anchors=self._anchors_full,
                            min_score=self.min_score)
        full = []
        for i in range(n_images):
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
        return full

    def _start_short(self, images):
        size = detect.SHORT_RANGE.input_size
        lbs = [Letterbox.fit(im.shape[:2], size) for im in images]
        return self.workers.start(self.det_short, list(images), self._letterboxer(size)), lbs

    def _finish_short(self, pending, lbs) -> List[detect.FaceDetections]:
        # the FaceLandmarker task's own thresholds (score 0.5, NMS 0.5)
        return self._decode(pending, detect.SHORT_RANGE, lbs, anchors=self._anchors_short,
                            min_score=self._short_min_score,
                            iou_thresh=0.5)



def _cropper(execution: Execution, images, size: int):
    """prep for a model whose input is a crop per face: items are (image index, M)."""
    t = execution.cpp_threads

    def prep(items):
        return np.concatenate([lmk.warp_crops(images[i], m, size, threads=t) for i, m in items])
    return prep


class Landmarks:
    """The landmark model on rotated 256x256 crops: a :class:`Faces` row per region, with the
    model's 478 points (crop pixels) and its face presence. A call's only face runs on every core
    (nothing else is left to run then: the batch-1 critical path, 10.6 -> 8.4 ms on 2 cores),
    several faces one per core. ``min_presence``: below it a region holds no face (MediaPipe's 0.5).
    """

    def __init__(self, execution: Execution, *, min_presence: float = LANDMARK_MIN_PRESENCE):
        if not 0.0 <= float(min_presence) <= 1.0:
            raise ValueError(f"min_face_presence_confidence must lie in [0, 1], got {min_presence}")
        self.execution = execution
        self.workers = execution.workers
        self.min_presence = float(min_presence)
        name = "face_landmarks.onnx"
        self.model = execution.per_core(asset_path(name), name, BF16_GATED, spin=True)
        #: the backend of a lone tracked face's run when it differs (``backend="auto"`` with OpenVINO
        #: installed: :data:`ig3d.engines.AUTO_TRACKING_BACKENDS`), its session made on first use
        self.tracking_backend: Optional[str] = execution.tracking_backends.get(name)
        self._tracking_model = None
        self._tracking_lock = threading.Lock()

    def from_detections(self, images, dets: List[detect.FaceDetections], rois: Optional[lmk.Rois] = None) -> Faces:
        """The landmark model on each detection's region (or on ``rois``, one per detection)."""
        owner, boxes, scores, kps = _stack(dets)
        return self.run(images, owner, lmk.rois_from_detections(boxes, kps) if rois is None else rois, scores)

    def tracking_model(self):
        """The lone tracked face's session on :attr:`tracking_backend` (None without one)."""
        if self._tracking_model is not None or self.tracking_backend is None:
            return self._tracking_model  # every tracked frame asks: no lock once it exists
        with self._tracking_lock:
            if self._tracking_model is None:
                name = "face_landmarks.onnx"
                self._tracking_model = self.execution.tracking_model(asset_path(name), name, BF16_GATED)
        return self._tracking_model

    def run(self, images, owner: np.ndarray, rois: lmk.Rois, scores: np.ndarray, *,
            tracking: bool = False) -> Faces:
        """The landmark model on given regions: ``rois`` row ``k`` in ``images[owner[k]]`` (``scores``
        is carried along). One run per face, spread over the workers, as for detections; video
        tracking calls it with the regions computed from the previous frame's landmarks
        (``tracking=True``: a lone face then runs on :attr:`tracking_backend` where there is one)."""
        owner = np.asarray(owner, np.int64)
        scores = np.asarray(scores, np.float32)
        M, Minv = lmk.roi_affine(rois, 256)
        if owner.size == 0:
            return Faces(owner, scores, Minv, np.zeros((0, 478, 3), np.float32), np.zeros(0, np.float32))
        items = list(zip(owner, M))
        model = self.tracking_model() if tracking and len(items) == 1 else None
        if model is None:
            model = self.model.for_items(len(items))
        out = self.workers.run(model, items, _cropper(self.execution, images, 256))
        return Faces(owner, scores, Minv, out["landmarks"], out["presence"].reshape(-1))

    def refine(self, images, faces: Faces, mask: np.ndarray, *, tracking: bool = False) -> Faces:
        """A second landmark pass for the faces of ``mask`` whose first pass found a face mesh, on
        the region computed from their first landmarks (:func:`ig3d.faces.landmarks.rois_from_landmarks`,
        the tracking step applied once). For faces that only the full-range detector found: its
        boxes (whole image or small-face scan) are not the short-range boxes the landmark model's
        regions come from in MediaPipe, and the first pass depends on where the box fell (measured
        on 40-56 px faces: mean distance to a tight crop's landmarks 0.73 % -> 0.50 % of the face
        width, spread between placements of one face about 8x smaller). A face whose second pass
        loses the mesh keeps its first one."""
        sel = np.flatnonzero(np.asarray(mask, bool) & (faces.presence >= self.min_presence))
        if sel.size == 0:
            return faces
        lm = lmk.landmarks_to_image(faces.landmarks[sel], faces.Minv[sel])
        again = self.run(images, faces.owner[sel], lmk.rois_from_landmarks(lm), faces.scores[sel], tracking=tracking)
        ok = again.presence >= self.min_presence
        sel, again = sel[ok], again.take(ok)
        out = Faces(*(a.copy() for a in faces))
        out.Minv[sel], out.landmarks[sel], out.presence[sel] = again.Minv, again.landmarks, again.presence
        return out

    def aligned(self, images) -> Faces:
        """One face per image for pre-aligned face crops: no detector runs; the landmark model's
        region is the whole image, upright (its centre, a square of the longer side)."""
        n = len(images)
        hw = np.array([im.shape[:2] for im in images], np.float64)
        side = hw.max(axis=1)
        rois = lmk.Rois(hw[:, ::-1] / 2, np.stack([side, side], axis=1), np.zeros(n))
        boxes = np.concatenate([np.zeros((n, 2)), hw[:, ::-1]], axis=1).astype(np.float32)
        dets = [detect.FaceDetections(boxes[i:i + 1], np.ones(1, np.float32), np.zeros((1, 6, 2), np.float32))
                for i in range(n)]
        return self.from_detections(images, dets, rois)


class FaceGeometry:
    """The 3D read of a face's landmarks (image pixels, ``[N, 478, 3]``): MediaPipe's 52 blendshapes
    (its blendshape model on 146 of the points) and the head's yaw / pitch / roll (a weighted
    similarity fit of MediaPipe's canonical face, :func:`ig3d.faces.pose.head_pose`)."""

    def __init__(self, execution: Execution):
        self.execution = execution
        name = "face_blendshapes.onnx"
        self.model = execution.model(asset_path(name), name, BF16_GATED)

    def start(self, lm: np.ndarray) -> Started:
        """Blendshapes in flight; ``result()`` -> (blendshapes ``[N, 52]`` float32, angles ``[N, 3]``
        degrees). The pose is fitted while the blendshape runs go on."""
        pending = self.execution.workers.start(self.model, lmk.blendshape_points(lm).astype(np.float32))

        def finish():
            angles, _ = pose.head_pose(lm)
            return pending.result()["blendshapes"].astype(np.float32), angles
        return Started(finish)


class FerBranch:
    """The default preset's 2D branch: fer's mini-Xception on a square 64x64 gray crop around each
    face's landmarks (1.1x the longer side of their box), seven FER2013 logits per face."""

    def __init__(self, execution: Execution):
        self.execution = execution
        name = "fer_mini_xception.onnx"
        self.model = execution.model(asset_path(name), name, BF16_GATED)

    def start(self, images, owner: np.ndarray, lm: np.ndarray) -> Started:
        """mini-Xception in flight on the faces ``lm`` of ``images[owner[k]]``; ``result()`` ->
        logits ``[N, 7]`` float32 (FER2013's order)."""
        lo, hi = lm[:, :, :2].min(axis=1), lm[:, :, :2].max(axis=1)
        centre, side = (lo + hi) / 2, (hi - lo).max(axis=1) * FER_CROP_SCALE
        Mf = np.zeros((len(lm), 2, 3), np.float32)
        s = FER_SIZE / side
        Mf[:, 0, 0] = s
        Mf[:, 1, 1] = s
        Mf[:, :, 2] = FER_SIZE / 2 - centre * s[:, None]
        crop = _cropper(self.execution, images, FER_SIZE)

        def fer_input(items):
            gray = crop(items) @ np.array([0.299, 0.587, 0.114], np.float32)  # cv2's BGR2GRAY weights
            return ((gray - 0.5) * 2.0)[..., None].astype(np.float32)
        pending = self.execution.workers.start(self.model, list(zip(owner, Mf)), fer_input)
        return Started(lambda: pending.result()["logits"].astype(np.float32))


_CROP = {  # encoder -> (affine builder, input size, ImageNet normalisation)
    "smirk": (align.smirk_affine, 224, False),
    "emoca": (align.emoca_affine, 224, False),
    "ddamfn": (align.ddamfn_affine, 112, True),
    "cage": (align.cage_affine, 224, True),
}


def encoder_crops(images: Sequence[np.ndarray], owner: np.ndarray, lm: np.ndarray, encoder: str,
                  threads: int = 0, aligned: bool = False) -> np.ndarray:
    """Encoder ``encoder``'s input for each face ``lm[k]`` of ``images[owner[k]]``, by its own
    convention (:mod:`ig3d.faces.align`); ``aligned``: the whole image resized to the input (a
    pre-aligned crop). Faces must come image by image (``owner`` sorted)."""
    fn, size, imagenet = _CROP[encoder]
    if aligned:  # a pre-aligned crop: the whole image, resized to the encoder's input
        M = np.zeros((len(owner), 2, 3), np.float32)
        for k, i in enumerate(owner):
            h, w = images[i].shape[:2]
            M[k, 0, 0], M[k, 1, 1] = size / w, size / h
            M[k, :, 2] = 0.5 * np.array([size / w, size / h]) - 0.5  # pixel centres onto pixel centres
    else:
        M = fn(lm, size)
    if isinstance(M, tuple):  # ddamfn_affine also returns the template index
        M = M[0]
    return np.concatenate([align.crop(images[i], M[owner == i], size, imagenet=imagenet, threads=threads)
                           for i in np.unique(owner)])


class Encoders:
    """The Ig3D presets' two encoders: a 3D face encoder (SMIRK, EMOCA: ``params_full`` and the FLAME
    pieces) and a 2D expression network (DDAMFN++ ``logits``, CAGE ``outputs``, both ``features``), each
    on its own crop of every face. On the CPU one run per face spread over the cores (measured
    1.25-1.35x the images/s of one batched run of 32 for DDAMFN++ and CAGE on 2 cores); a lone face
    runs on every core (:class:`ig3d.engines.PerCoreModel`), unless its two encoders are alike in size
    (see :meth:`runs`)."""

    SCORES = {"ddamfn": "logits", "cage": "outputs"}

    def __init__(self, execution: Execution, enc3d: Tuple[str, object], enc2d: Tuple[str, object],
                 gated: frozenset = frozenset()):
        self.execution = execution
        self.enc3d_name, self.enc2d_name = enc3d[0], enc2d[0]
        self.enc3d = execution.per_core(enc3d[1], enc3d[0], gated)
        self.enc2d = execution.per_core(enc2d[1], enc2d[0], gated)
        if "params_full" not in self.enc3d.output_names:
            raise ValueError(f"{self.enc3d_name}: the ONNX file has no 'params_full' output "
                             f"(outputs: {self.enc3d.output_names}); convert it with `ig3d convert {self.enc3d_name}`")
        for out in (self.SCORES[self.enc2d_name], "features"):
            if out not in self.enc2d.output_names:
                raise ValueError(f"{self.enc2d_name}: the ONNX file has no {out!r} output "
                                 f"(outputs: {self.enc2d.output_names}); convert it with `ig3d convert {self.enc2d_name}`")

    def runs(self, n: int) -> int:
        """How many runs each encoder's session is chosen for (``PerCoreModel.for_items``) in a call
        with ``n`` faces. The 3D and 2D runs of a lone face go at the same time: when the two encoders
        are within 2x of each other in size (SMIRK and DDAMFN++), each runs single-threaded on its own
        core (measured on 2 cores: 30-33 ms against 37-43 ms with two all-cores sessions side by
        side); a heavy encoder beside a light one keeps every core."""
        sizes = sorted((self.enc3d.nbytes, self.enc2d.nbytes))
        return 2 if n == 1 and sizes[1] <= 2 * sizes[0] else n

    def _cropper(self, images, encoder: str, aligned: bool):
        threads = self.execution.cpp_threads

        def prep(items):
            return encoder_crops(images, np.array([i for i, _ in items]), np.stack([l for _, l in items]), encoder,
                                 threads, aligned)
        return prep

    def run(self, images, owner: np.ndarray, lm: np.ndarray, *,
            aligned: bool = False) -> Tuple[Dict[str, np.ndarray], Dict[str, np.ndarray]]:
        """Both encoders on the faces ``lm`` of ``images[owner[k]]`` (image by image): (3D outputs,
        2D outputs), each name -> ``[N, ...]``."""
        items = list(zip(owner, lm))
        runs = self.runs(len(items))
        workers = self.execution.workers
        pending3d = workers.start(self.enc3d.for_items(runs), items, self._cropper(images, self.enc3d_name, aligned))
        out2d = workers.run(self.enc2d.for_items(runs), items, self._cropper(images, self.enc2d_name, aligned))
        return pending3d.result(), out2d

    def on_device(self, n: int) -> bool:
        """Whether both encoders' runs for ``n`` faces can leave their outputs on the device (each is a
        batched run of a model with ``run_device``, as TensorRT engines are; never on CPU workers)."""
        if self.execution.parallel:
            return False
        return all(callable(getattr(m.for_items(self.runs(n)), "run_device", None)) for m in (self.enc3d, self.enc2d))

    def run_device(self, images, owner: np.ndarray, lm: np.ndarray, *, aligned: bool = False,
                   stream: Optional[int] = None) -> Tuple[Dict[str, object], Dict[str, object]]:
        """:meth:`run` with the outputs left on the device (:class:`ig3d.device.DeviceArray`, name ->
        ``[N, ...]``), for the fused head to read in place (see :meth:`on_device`). The crops are made on
        the host; both encoders run on one stream (``stream``, default: the 3D run's, the default
        stream for host crops), the 2D crops are made while the 3D engine runs."""
        items = list(zip(owner, lm))
        runs = self.runs(len(items))
        x3d = self._cropper(images, self.enc3d_name, aligned)(items)
        out3d = self.enc3d.for_items(runs).run_device(x3d, stream=stream)
        s = next(iter(out3d.values())).stream if stream is None else stream
        x2d = self._cropper(images, self.enc2d_name, aligned)(items)
        return out3d, self.enc2d.for_items(runs).run_device(x2d, stream=s)


def to_device(host: np.ndarray, like) -> object:
    """``host`` copied to a new :class:`ig3d.device.DeviceArray` on the device and stream of the device
    array ``like`` (queued on that stream, after the work already there)."""
    from .. import kernels
    from ..device import DeviceArray

    host = np.ascontiguousarray(host)
    core = kernels.core()
    buf = core.DeviceBuffer(max(host.nbytes, 1), like.device, like.stream)
    if host.nbytes:
        core.copy_to_device(buf.ptr, host, like.device, like.stream)
    return DeviceArray(buf, 0, host.shape, host.dtype, like.device, like.stream, keep=host)


def device_columns(a, start: int, stop: int) -> Tuple[object, Optional[np.ndarray]]:
    """Columns ``start:stop`` of the ``[N, W]`` device array ``a`` as a C-contiguous device array, and
    the host copy of ``a`` when one was made. A :class:`ig3d.device.DeviceArray` is C-contiguous, so a
    column slice is one only for a single row: then a view of ``a`` (no copy); otherwise ``a`` is
    copied to the host, sliced there and the slice copied back on ``a``'s stream (ig3d's core has no
    device-to-device copy)."""
    from ..device import DeviceArray

    n, width = a.shape
    if not 0 <= start <= stop <= width:
        raise ValueError(f"columns {start}:{stop} lie outside an array of width {width}")
    if n <= 1:
        return DeviceArray(a, start * a.dtype.itemsize, (n, stop - start), a.dtype, a.device, a.stream, keep=a), None
    host = a.numpy()
    return to_device(host[:, start:stop], a), host


class HeadStage:
    """The fused head: normalisation, the 3D head, fusion with the 2D scores or features, softmax,
    one C++ call for every face of the call, on ``device``."""

    def __init__(self, execution: Execution, head: FusedHead, device: str = "cpu"):
        self.execution, self.head, self.device = execution, head, device

    def __call__(self, params3d: np.ndarray, scores2d: Optional[np.ndarray] = None,
                 features2d: Optional[np.ndarray] = None, *, stream: Optional[int] = None) -> FusedOutput:
        """The head on ``N`` faces; 2D scores / features the head does not take are not passed. Device
        arrays (an encoder's :meth:`Encoders.run_device` outputs) run as one launch on ``stream`` and
        give device outputs (``FusedOutput.to_numpy()``); ``stream`` is for device inputs only."""
        scores2d = scores2d if self.head.scores2d_dim else None
        features2d = features2d if self.head.features2d_dim else None
        if stream is not None:
            return self.head(params3d, scores2d, features2d, device=self.device, stream=stream)
        return self.head(params3d, scores2d, features2d, device=self.device,
                         threads=1 if self.execution.parallel else None)


@dataclass
class FaceArrays:
    """What a preset computed for ``N`` faces, as arrays, in the label order ``labels``: the input of
    :func:`build_results`. ``probs_2d`` None: the 2D network has no class scores (an empty
    ``scores_2d``); ``blendshapes`` / ``angles`` None: not computed."""

    owner: np.ndarray                       # [N] image index
    scores: np.ndarray                      # [N] detector score
    landmarks: np.ndarray                   # [N, 478, 3] image pixels
    blendshapes: Optional[np.ndarray]       # [N, 52]
    angles: Optional[np.ndarray]            # [N, 3] yaw, pitch, roll (degrees)
    params3d: np.ndarray                    # [N, D] what the head saw
    probs: np.ndarray                       # [N, C] fused
    va: np.ndarray                          # [N, 2]
    logits_2d: np.ndarray                   # [N, C]
    logits_3d: np.ndarray                   # [N, C]
    probs_2d: Optional[np.ndarray]          # [N, C]
    probs_3d: np.ndarray                    # [N, C]
    scores2d_raw: Optional[np.ndarray] = None
    features2d: Optional[np.ndarray] = None
    flame: Optional[Mapping[str, np.ndarray]] = None
    track_ids: Optional[Sequence[Optional[int]]] = None


def face_boxes(lm: np.ndarray) -> np.ndarray:
    """``[N, 4]`` float32 (x0, y0, x1, y1): the bounding boxes of landmarks ``[N, L, 2|3]``, a face's box."""
    lo, hi = lm[:, :, :2].min(axis=1), lm[:, :, :2].max(axis=1)
    return np.concatenate([lo, hi], axis=1).astype(np.float32)


def by_image_then_size(owner: np.ndarray, lm: np.ndarray) -> np.ndarray:
    """Order of faces: image by image, largest box first within an image (the order of the results)."""
    b = face_boxes(lm)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    return np.lexsort((-area.astype(np.float64), np.asarray(owner)))


def build_results(n_images: int, a: FaceArrays, labels: Sequence[str],
                  outputs: Outputs = Outputs()) -> List[List[FaceResult]]:
    """:class:`FaceResult` objects from a preset's arrays: one list per image, largest face first."""
    labels = tuple(labels)
    boxes = face_boxes(a.landmarks) if len(a.landmarks) else np.zeros((0, 4), np.float32)
    no_points = np.zeros((0, 3), np.float32)
    pieces = list(a.flame) if a.flame is not None else []
    results: List[List[FaceResult]] = [[] for _ in range(n_images)]
    for f in range(len(a.owner)):
        show_bs = outputs.blendshapes and a.blendshapes is not None
        results[a.owner[f]].append(FaceResult(
            box=boxes[f],
            score=float(a.scores[f]),
            landmarks=a.landmarks[f] if outputs.landmarks else no_points,
            blendshapes=dict(zip(BLENDSHAPE_NAMES, map(float, a.blendshapes[f]))) if show_bs else {},
            head_pose=(dict(zip(("yaw", "pitch", "roll"), map(float, a.angles[f])))
                       if outputs.blendshapes and a.angles is not None else {}),
            params3d=a.params3d[f],
            label=labels[int(np.argmax(a.probs[f]))],
            scores=dict(zip(labels, map(float, a.probs[f]))),
            valence=float(a.va[f, 0]),
            arousal=float(a.va[f, 1]),
            label_2d=labels[int(np.argmax(a.probs_2d[f]))] if a.probs_2d is not None else "",
            scores_2d=dict(zip(labels, map(float, a.probs_2d[f]))) if a.probs_2d is not None else {},
            label_3d=labels[int(np.argmax(a.probs_3d[f]))],
            scores_3d=dict(zip(labels, map(float, a.probs_3d[f]))),
            logits_2d=a.logits_2d[f],
            logits_3d=a.logits_3d[f].copy(),
            flame={n: a.flame[n][f] for n in pieces} if a.flame is not None else None,
            scores2d_raw=a.scores2d_raw[f] if a.scores2d_raw is not None else None,
            features2d=a.features2d[f] if a.features2d is not None and outputs.features else None,
            track_id=a.track_ids[f] if a.track_ids is not None else None,
        ))
    for r in results:
        r.sort(key=lambda fr: -fr.area)
    return results


def softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)
