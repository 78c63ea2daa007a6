"""Named pipelines. ``default``: MediaPipe's face detectors, landmark and blendshape models (the 3D
branch) and fer's mini-Xception (the 2D branch), all as bundled ONNX files, fused by the default
prior head (:mod:`ig3d.prior`) in the C++ fused head.

Every face of every image in a call travels together through each stage, and one fused-head call
serves the whole call. How a stage runs depends on the device: on a GPU one batched run per
network; on the CPU one single-threaded run per face spread over the cores, which measured about
2x faster there than one batched run (:class:`ig3d.engines.Workers`). A face's result does not
depend on the other images in the call.
"""

from __future__ import annotations

from importlib import resources
from typing import Dict, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .. import prior
from ..engines import PerCoreModel, Workers, load, network_precision, usable_cores
from ..faces import detect, landmarks as lmk, pose
from ..faces.detect import Letterbox
from ..faces.mediapipe_constants import BLENDSHAPE_NAMES, LANDMARK_MIN_PRESENCE
from ..fusion import FusedHead
from ..results import FaceResult

__all__ = ["PRESETS", "DefaultPipeline", "asset_path"]

PRESETS = ("default",)

FER_SIZE = 64
FER_CROP_SCALE = 1.1  # square side = 1.1 x the longer side of the landmarks' bounding box
MERGE_IOU = 0.3
#: a detection with more than this share of its box inside a larger detection's box is dropped
CONTAINED_SHARE = 0.6
#: Smallest face (pixels) the default preset looks for. The full-range detector misses faces below
#: ~16-20 px of its input, so an image too large for that at 192x192 is also scanned once whole,
#: at the scale where a face of this size spans SCAN_FACE_PIXELS (the small-face scan).
MIN_FACE_SIZE = 40
#: detector pixels a face of ``min_face_size`` spans in the small-face scan
SCAN_FACE_PIXELS = 16
#: scan detections scoring from this up to the detector's threshold (0.6) are looked at again,
#: zoomed: a 16-px face's score swings with its place on the network's grid and with what is
#: around it, the zoomed look settles it (see DefaultPipeline._finish_full)
PROPOSE_SCORE = 0.2
#: detector pixels a candidate's box spans in its zoomed look
ZOOM_FACE_PIXELS = 24
#: the previous search (overlapping square tiles of ``min_face_size * 192 / 16`` px), kept only
#: for the benchmark's comparison (``DefaultPipeline._small_faces = "tiles"``)
TILE_FACE_PIXELS = 16
#: The networks that run in bf16 when a Predictor asks for ``precision="bf16"``: those whose bf16
#: outputs pass the accuracy gates on every shared photo (python_tests/test_bf16_gates.py: same labels,
#: landmarks within 1 px, blendshapes and valence/arousal within 0.03); the others stay fp32. Measured
#: alone in bf16 against all-fp32 on the shared photos: the full-range detector moves landmarks 0.3 px,
#: blendshapes 0.021, VA 0.014; the short-range detector and mini-Xception (VA 0.002) less; the landmark
#: model (landmarks by pixels, blendshapes 0.39) and the blendshape model (0.36) fail and stay fp32.
BF16_GATED = frozenset({"face_detector_full.onnx", "face_detector_short.onnx", "fer_mini_xception.onnx"})


def asset_path(name: str) -> str:
    """Path of a file bundled in ``ig3d/assets``."""
    p = resources.files("ig3d") / "assets" / name
    if not p.is_file():
        raise FileNotFoundError(f"bundled asset {name!r} is missing from the ig3d installation ({p})")
    return str(p)


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


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


class _Faces(NamedTuple):
    """Faces of a call, one row each: owning image, detector score, crop -> image map, and the
    landmark model's output (crop pixels) and face presence."""

    owner: np.ndarray
    scores: np.ndarray
    Minv: np.ndarray
    landmarks: np.ndarray
    presence: np.ndarray

    def take(self, sel) -> "_Faces":
        return _Faces(*(a[sel] for a in self))


class DefaultPipeline:
    """The default preset. ``run(images)`` takes RGB uint8 arrays and returns one list of
    :class:`FaceResult` per image, largest face first.

    Faces come from two detectors run at the same time: the full-range detector on the whole
    image and, for large images, once more over the whole image at a larger scale (small and
    distant faces; see _finish_full), plus MediaPipe's
    short-range detector with the FaceLandmarker task's thresholds (close-ups and whole-frame
    faces). On the CPU every face (and every detector view) is its own single-threaded run,
    spread over the cores together with its crop (:class:`ig3d.engines.Workers`), except that a
    call's only face runs the landmark model on all cores (:class:`ig3d.engines.PerCoreModel`);
    on a GPU each network gets one batched run per call.
    """

    labels = prior.LABELS

    def __init__(self, *, backend: str, device: str, threads: Optional[int] = None,
                 head: Optional[FusedHead] = None, head_device: str = "cpu",
                 min_face_size: Optional[int] = MIN_FACE_SIZE, precision: Union[str, Mapping[str, str]] = "fp32",
                 parallel_runs: Optional[int] = None, threads_per_run: Optional[int] = None):
        for arg, v in (("threads", threads), ("parallel_runs", parallel_runs), ("threads_per_run", threads_per_run)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{arg} must be a positive number of CPU threads or None, got {v}")
        cpu = device == "cpu"
        #: CPU: single-threaded runs, one per face, this many at once (worker threads)
        self.workers = Workers((int(parallel_runs or threads or 0) or usable_cores()) if cpu else 1)
        #: threads inside one run that has the cores to itself (a lone face, a batched run)
        self.threads_per_run = int(threads_per_run or threads or 0) or (self.workers.n if cpu else None)
        #: network file -> the precision it runs in (see BF16_GATED)
        self.precisions: Dict[str, str] = {}

        def model(name):
            self.precisions[name] = network_precision(precision, name, BF16_GATED)
            return load(asset_path(name), backend=backend, device=device, name=name,
                        threads=1 if self.workers.parallel else self.threads_per_run,
                        parallel_runs=self.workers.n, precision=self.precisions[name])

        self.det_full = model("face_detector_full.onnx")
        self.det_short = model("face_detector_short.onnx")
        #: a call's only face runs the landmark model on every core (nothing else is left to run
        #: then: the batch-1 critical path, 10.6 -> 8.4 ms on 2 cores), several faces one per core
        lm_name = "face_landmarks.onnx"
        self.precisions[lm_name] = network_precision(precision, lm_name, BF16_GATED)
        self.landmarker = PerCoreModel(asset_path(lm_name), workers=self.workers, backend=backend,
                                       device=device, threads=self.threads_per_run, name=lm_name, spin=True,
                                       precision=self.precisions[lm_name])
        self.blendshaper = model("face_blendshapes.onnx")
        self.fer = model("fer_mini_xception.onnx")
        self.head = head if head is not None else prior.default_head()
        h = self.head
        if (h.input_dim != len(prior.PARAMS3D_NAMES) or h.num_classes < 1
                or h.scores2d_dim not in (0, len(prior.FER_LABELS))):
            raise ValueError(f"head: the default preset needs a head with input_dim={len(prior.PARAMS3D_NAMES)}, "
                             f"num_classes >= 1 and, when it late-fuses, the {len(prior.FER_LABELS)} mini-Xception "
                             f"scores; got {h!r}")
        if h.labels is None and h.num_classes != len(prior.LABELS):
            raise ValueError(f"head: a {h.num_classes}-class head needs class names (labels) for the default preset")
        #: the head's classes (the prior's 7, or those a trained head was trained on)
        self.labels = tuple(h.labels) if h.labels else prior.LABELS
        fer_names = [prior.LABELS[i] for i in prior.FER_TO_LABELS]
        #: mini-Xception column k -> position in self.labels (-1: a class the head does not have)
        self._fer_cols = np.array([self.labels.index(n) if n in self.labels else -1 for n in fer_names])
        #: self.labels -> the prior's label order, for the prior's valence/arousal mapping
        self._to_prior = np.array([prior.LABELS.index(n) if n in prior.LABELS else -1 for n in self.labels])
        self.head_device = head_device
        if min_face_size is not None and min_face_size <= 0:
            raise ValueError(f"min_face_size must be a positive number of pixels or None, got {min_face_size}")
        # Images larger than 1.2 x this side get the small-face search (as the tiles of this side did):
        # at 192 / side a face of min_face_size pixels spans TILE_FACE_PIXELS of the detector's input.
        self._tile_side = (None if min_face_size is None else
                           int(min_face_size * detect.FULL_RANGE.input_size / TILE_FACE_PIXELS))
        #: scale of the small-face scan (image -> detector input)
        self._scan_scale = None if min_face_size is None else SCAN_FACE_PIXELS / float(min_face_size)
        #: "scan" (one run over the whole image, then zoomed looks at uncertain faces) or "tiles"
        #: (the previous search, for the benchmark's comparison)
        self._small_faces = "scan"
        full = "face_detector_full.onnx"
        #: the scan's run has the cores to itself for most of its time: a session with threads
        self.det_scan = (load(asset_path(full), backend=backend, device=device, name=full,
                              threads=self.threads_per_run, parallel_runs=1, precision=self.precisions[full])
                         if self.workers.parallel else self.det_full)
        self._anchors_full = detect.FULL_RANGE.anchors()
        self._anchors_short = detect.SHORT_RANGE.anchors()

    # -----------------------------------------------------------------------------------------
    def _threads(self) -> int:
        """CPU threads for a C++ call: 1 inside workers (the workers are the parallelism)."""
        return 1 if self.workers.parallel else 0

    def _letterboxer(self, size: int):
        t = self._threads()

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
        t = self._threads()
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
        t = self._threads()
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
        whole = self._decode(pending, spec, lbf, anchors=self._anchors_full)
        extra: List[List[detect.FaceDetections]] = [[] for _ in range(n_images)]
        zoom_items, zoom_views, zoom_owner = [], [], []
        for i, view, p in scans:
            out = p.result()
            raw = (out["raw_boxes"], out["raw_scores"], spec, [view])
            sure = detect.postprocess(*raw, input_hw=view.tensor_hw)[0]
            maybe = detect.postprocess(*raw, input_hw=view.tensor_hw, min_score=PROPOSE_SCORE)[0]
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
            for i, d in zip(zoom_owner, self._decode(pz, spec, zoom_views, anchors=self._anchors_full)):
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
        per_view = self._decode(pending, detect.FULL_RANGE, lbf, anchors=self._anchors_full)
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
        return self._decode(pending, detect.SHORT_RANGE, lbs, anchors=self._anchors_short, min_score=0.5,
                            iou_thresh=0.5)

    def _landmarks(self, images, dets: List[detect.FaceDetections], rois: Optional[lmk.Rois] = None) -> _Faces:
        owner, boxes, scores, kps = _stack(dets)
        return self.landmarks_in(images, owner, lmk.rois_from_detections(boxes, kps) if rois is None else rois,
                                 scores)

    def landmarks_in(self, images, owner: np.ndarray, rois: lmk.Rois, scores: np.ndarray) -> _Faces:
        """The landmark model on given regions: ``rois`` row ``k`` in ``images[owner[k]]`` (``scores``
        is carried along). One run per face, spread over the workers, as for detections; video
        tracking calls it with the regions computed from the previous frame's landmarks."""
        owner = np.asarray(owner, np.int64)
        scores = np.asarray(scores, np.float32)
        M, Minv = lmk.roi_affine(rois, 256)
        if owner.size == 0:
            return _Faces(owner, scores, Minv, np.zeros((0, 478, 3), np.float32), np.zeros(0, np.float32))
        items = list(zip(owner, M))
        out = self.workers.run(self.landmarker.for_items(len(items)), items, self._cropper(images, 256))
        return _Faces(owner, scores, Minv, out["landmarks"], out["presence"].reshape(-1))

    def _cropper(self, images, size: int):
        """prep for a model whose input is a crop per face: items are (image index, M)."""
        t = self._threads()

        def prep(items):
            return np.concatenate([lmk.warp_crops(images[i], m, size, threads=t) for i, m in items])
        return prep

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

    def refine(self, images, faces: _Faces, mask: np.ndarray) -> _Faces:
        """A second landmark pass for the faces of ``mask`` whose first pass found a face mesh, on
        the region computed from their first landmarks (:func:`ig3d.faces.landmarks.rois_from_landmarks`,
        the tracking step applied once). For faces that only the full-range detector found: its
        boxes (whole image or small-face scan) are not the short-range boxes the landmark model's
        regions come from in MediaPipe, and the first pass depends on where the box fell (measured
        on 40-56 px faces: mean distance to a tight crop's landmarks 0.73 % -> 0.50 % of the face
        width, spread between placements of one face about 8x smaller). A face whose second pass
        loses the mesh keeps its first one."""
        sel = np.flatnonzero(np.asarray(mask, bool) & (faces.presence >= LANDMARK_MIN_PRESENCE))
        if sel.size == 0:
            return faces
        lm = lmk.landmarks_to_image(faces.landmarks[sel], faces.Minv[sel])
        again = self.landmarks_in(images, faces.owner[sel], lmk.rois_from_landmarks(lm), faces.scores[sel])
        ok = again.presence >= LANDMARK_MIN_PRESENCE
        sel, again = sel[ok], again.take(ok)
        out = _Faces(*(a.copy() for a in faces))
        out.Minv[sel], out.landmarks[sel], out.presence[sel] = again.Minv, again.landmarks, again.presence
        return out

    def _faces(self, images) -> _Faces:
        """Every face with its landmark-model output (:meth:`detect`, then the landmark model, and a
        second pass for the faces only the full-range detector found: :meth:`refine`)."""
        found = self.detect(images)
        faces = self._landmarks(images, [d for d, _ in found])
        return self.refine(images, faces, np.concatenate([m for _, m in found] + [np.zeros(0, bool)]))

    def _prior_probs(self, probs: np.ndarray) -> np.ndarray:
        """The head's class probabilities in the prior's 7-label order (classes the prior does not
        have, such as contempt, are left out and the rest renormalised)."""
        if self.labels == prior.LABELS:
            return probs
        out = np.zeros((len(probs), len(prior.LABELS)), np.float32)
        keep = self._to_prior >= 0
        out[:, self._to_prior[keep]] = probs[:, keep]
        total = out.sum(axis=1, keepdims=True)
        out[total[:, 0] <= 0, prior.LABELS.index("neutral")] = 1.0
        return out / np.maximum(out.sum(axis=1, keepdims=True), 1e-12)

    def _aligned_faces(self, images) -> _Faces:
        """One face per image for pre-aligned face crops (``aligned=True``): no detector runs; the
        landmark model's region is the whole image, upright (its centre, a square of the longer
        side)."""
        n = len(images)
        hw = np.array([im.shape[:2] for im in images], np.float64)
        side = hw.max(axis=1)
        rois = lmk.Rois(hw[:, ::-1] / 2, np.stack([side, side], axis=1), np.zeros(n))
        boxes = np.concatenate([np.zeros((n, 2)), hw[:, ::-1]], axis=1).astype(np.float32)
        dets = [detect.FaceDetections(boxes[i:i + 1], np.ones(1, np.float32), np.zeros((1, 6, 2), np.float32))
                for i in range(n)]
        return self._landmarks(images, dets, rois)

    def run(self, images: Sequence[np.ndarray], *, aligned: bool = False) -> List[List[FaceResult]]:
        """Faces per image. ``aligned=True``: each image is one pre-aligned face crop (datasets such
        as RAF-DB's aligned images): detection is skipped (an image whose crop shows no face mesh
        still gives [])."""
        if not images:
            return []
        # 3D branch: landmarks on a rotated 256x256 crop per face
        faces = self._aligned_faces(images) if aligned else self._faces(images)
        keep = faces.presence >= LANDMARK_MIN_PRESENCE  # the detector's false positives have no face mesh
        if not np.any(keep):
            return [[] for _ in images]
        faces = faces.take(keep)
        return self.results_from_landmarks(images, faces.owner, faces.scores,
                                           lmk.landmarks_to_image(faces.landmarks, faces.Minv))

    def results_from_landmarks(self, images, owner: np.ndarray, scores: np.ndarray,
                               lm: np.ndarray) -> List[List[FaceResult]]:
        """Everything after the landmark model, for faces given by their landmarks ``lm``
        ``[N, 478, 3]`` (image pixels) in ``images[owner[k]]``: blendshapes, head pose, the 2D
        network on its crop, the fused head, and the :class:`FaceResult` objects, one list per
        image, largest face first. Still images and video frames (whose landmarks may be
        smoothed) both go through here."""
        pending_bs = self.workers.start(self.blendshaper, lmk.blendshape_points(lm).astype(np.float32))

        # 2D branch: mini-Xception on a square gray crop around the landmarks
        lo, hi = lm[:, :, :2].min(axis=1), lm[:, :, :2].max(axis=1)
        centre, side = (lo + hi) / 2, (hi - lo).max(axis=1) * FER_CROP_SCALE
        Mf = np.zeros((len(lm), 2, 3), np.float32)
        s = FER_SIZE / side
        Mf[:, 0, 0] = s
        Mf[:, 1, 1] = s
        Mf[:, :, 2] = FER_SIZE / 2 - centre * s[:, None]
        crop = self._cropper(images, FER_SIZE)

        def fer_input(items):
            gray = crop(items) @ np.array([0.299, 0.587, 0.114], np.float32)  # cv2's BGR2GRAY weights
            return ((gray - 0.5) * 2.0)[..., None].astype(np.float32)
        pending_fer = self.workers.start(self.fer, list(zip(owner, Mf)), fer_input)
        angles, _ = pose.head_pose(lm)
        bs = pending_bs.result()["blendshapes"].astype(np.float32)
        params3d = np.concatenate([bs, angles.astype(np.float32)], axis=1)
        logits_fer = pending_fer.result()["logits"].astype(np.float32)

        # fused head: normalise, 3D head, late fusion, softmax - one C++ call for every face
        fused = self.head(params3d, logits_fer if self.head.scores2d_dim else None, device=self.head_device,
                          threads=1 if self.workers.parallel else None)
        C = len(self.labels)
        logits_2d = np.full((len(lm), C), -np.inf, np.float32)  # a class mini-Xception lacks: probability 0
        have = self._fer_cols >= 0
        logits_2d[:, self._fer_cols[have]] = logits_fer[:, have]
        logits_3d = fused.out3d[:, :C]
        p2d, p3d = _softmax(logits_2d), _softmax(logits_3d)
        # a head trained with valence/arousal outputs gives its own; otherwise the prior's mapping,
        # which moves with the blendshapes' action-unit activations
        va = fused.va if fused.va is not None else prior.valence_arousal(self._prior_probs(fused.probs), bs)

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
                scores2d_raw=logits_fer[f],
            ))
        for r in results:
            r.sort(key=lambda fr: -fr.area)
        return results
