"""BlazeFace (MediaPipe face detector) pre- and post-processing in vectorised numpy.

The networks themselves run elsewhere (ONNX Runtime, or LiteRT as the test oracle); this module
owns everything around them:

* :func:`letterbox` puts an arbitrary RGB image into the square detector input, keeping the
  aspect ratio, and remembers how to map back (:class:`Letterbox`).
* :func:`ssd_anchors` builds MediaPipe's SSD anchor grid.
* :func:`decode` turns the raw regressor/classifier tensors into boxes, six keypoints and
  scores for every anchor of every image at once.
* :func:`weighted_nms` is MediaPipe's "WEIGHTED" non-maximum suppression (score-weighted
  blending of each cluster).
* :func:`postprocess` chains threshold -> NMS -> un-letterbox into per-image
  :class:`FaceDetections` in original pixel coordinates.

Behaviour follows google-ai-edge/mediapipe (read at commit 85c0cdc7, Aug 2026; code written
from the description, not copied):

* options: mediapipe/modules/face_detection/face_detection.pbtxt (shared decode/NMS settings),
  face_detection_short_range.pbtxt, face_detection_full_range.pbtxt, and the Tasks defaults in
  mediapipe/tasks/cc/vision/face_detector/face_detector_graph.cc;
* anchors: mediapipe/calculators/tflite/ssd_anchors_calculator.cc (``GenerateAnchors``);
* decode: mediapipe/calculators/tensor/tensors_to_detections_calculator.cc (``DecodeBoxes``,
  score clipping + sigmoid, ``reverse_output_order`` -> XYWH box format);
* NMS: mediapipe/calculators/util/non_max_suppression_calculator.cc
  (``WeightedNonMaxSuppression``, ``OverlapSimilarity`` with INTERSECTION_OVER_UNION);
* input: mediapipe/calculators/tensor/image_to_tensor_converter_opencv.cc (keep_aspect_ratio,
  BORDER_ZERO, bilinear warp, pixel range mapped to [-1, 1]).

Keypoint order (MediaPipe ``FaceKeyPoint``): 0 right eye, 1 left eye, 2 nose tip, 3 mouth
centre, 4 right ear tragion, 5 left ear tragion, "right/left" of the subject (so keypoint 0 is
the eye on the observer's left).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "DetectorSpec",
    "FULL_RANGE",
    "FaceDetections",
    "KEYPOINT_NAMES",
    "Letterbox",
    "SHORT_RANGE",
    "ScaledView",
    "decode",
    "iou_matrix",
    "letterbox",
    "letterbox_batch",
    "postprocess",
    "scan_shape",
    "ssd_anchors",
    "weighted_nms",
]

KEYPOINT_NAMES = ("right_eye", "left_eye", "nose_tip", "mouth_center",
                  "right_ear_tragion", "left_ear_tragion")


@dataclass(frozen=True)
class DetectorSpec:
    """Everything needed to pre-/post-process one BlazeFace variant.

    ``min_score_thresh`` and ``min_suppression_threshold`` are the MediaPipe *solution* values
    (face_detection*.pbtxt); the Tasks API's FaceDetector defaults differ (0.5 / 0.5).
    """

    name: str
    input_size: int                      # square tensor side, pixels
    strides: tuple[int, ...]
    interpolated_scale_aspect_ratio: float
    min_score_thresh: float
    min_suppression_threshold: float = 0.3
    score_clipping_thresh: float = 100.0
    num_keypoints: int = 6
    # Both models' TFLite metadata: mean 127.5, std 127.5; pass to letterbox(value_range=...).
    input_range: tuple[float, float] = (-1.0, 1.0)

    @property
    def num_anchors(self) -> int:
        return len(self.anchors())

    def anchors(self, input_hw: tuple[int, int] | None = None) -> np.ndarray:
        """The anchors of the spec's own square input, or of a larger ``(height, width)`` input
        (both multiples of the largest stride the network has inside: 32 for BlazeFace) run
        through the same convolutional network: the grid is ``input / stride`` per layer, so
        the anchors follow the input size while every cell keeps its meaning."""
        if input_hw is None:
            return ssd_anchors(self.input_size, self.strides,
                               interpolated_scale_aspect_ratio=self.interpolated_scale_aspect_ratio)
        return _grid_anchors(self, (int(input_hw[0]), int(input_hw[1])))


#: 128x128 short-range BlazeFace (face_detection_short_range.tflite; face_detector.tflite in
#: face_landmarker.task). 896 anchors: 16x16x2 at stride 8, then 8x8x6 for the three stride-16
#: layers merged into one grid.
SHORT_RANGE = DetectorSpec("short_range", 128, (8, 16, 16, 16), 1.0, min_score_thresh=0.5)

#: 192x192 full-range BlazeFace (face_detection_full_range_sparse.tflite). 2304 anchors: 48x48x1.
#: face_detection_full_range.pbtxt uses min_score_thresh 0.6; the legacy Python solution passes
#: its min_detection_confidence (default 0.5) instead. 0.6 is the module default kept here.
FULL_RANGE = DetectorSpec("full_range", 192, (4,), 0.0, min_score_thresh=0.6)


# --------------------------------------------------------------------------------------------
# Anchors
# --------------------------------------------------------------------------------------------

_ANCHOR_CACHE: dict = {}


def _grid_anchors(spec: DetectorSpec, input_hw: tuple[int, int]) -> np.ndarray:
    """:func:`ssd_anchors` for ``spec`` on an ``input_hw`` input, kept for reuse (a video's frames
    all have one size); read-only."""
    key = (spec.strides, spec.interpolated_scale_aspect_ratio, input_hw)
    a = _ANCHOR_CACHE.get(key)
    if a is None:
        if len(_ANCHOR_CACHE) > 64:
            _ANCHOR_CACHE.clear()
        a = ssd_anchors(input_hw, spec.strides, interpolated_scale_aspect_ratio=spec.interpolated_scale_aspect_ratio)
        a.setflags(write=False)
        _ANCHOR_CACHE[key] = a
    return a

def ssd_anchors(input_size: int | tuple[int, int], strides, *,
                aspect_ratios=(1.0,), interpolated_scale_aspect_ratio: float = 1.0,
                anchor_offset: tuple[float, float] = (0.5, 0.5),
                fixed_anchor_size: bool = True,
                min_scale: float = 0.1484375, max_scale: float = 0.75) -> np.ndarray:
    """MediaPipe SSD anchors, ``[A, 4]`` float32 rows ``(x_center, y_center, w, h)``, normalised.

    ``input_size`` is an int (square) or ``(height, width)``. Consecutive layers with the same
    stride share one feature map and their anchors interleave per cell, as in MediaPipe; each
    layer contributes one anchor per aspect ratio plus one if
    ``interpolated_scale_aspect_ratio > 0``. With ``fixed_anchor_size`` (both BlazeFace models)
    w = h = 1, so the box regressors are plain pixel offsets scaled by the input size.
    """
    h_in, w_in = (input_size, input_size) if np.isscalar(input_size) else input_size
    strides = list(strides)
    n = len(strides)

    def layer_scale(i: int) -> float:
        if n == 1:
            return (min_scale + max_scale) * 0.5
        return min_scale + (max_scale - min_scale) * i / (n - 1.0)

    out = []
    layer = 0
    while layer < n:
        # Merge the run of layers that share this stride.
        sizes: list[tuple[float, float]] = []  # (w, h) per anchor in a cell
        last = layer
        while last < n and strides[last] == strides[layer]:
            scale = layer_scale(last)
            for ar in aspect_ratios:
                sizes.append((scale * np.sqrt(ar), scale / np.sqrt(ar)))
            if interpolated_scale_aspect_ratio > 0.0:
                nxt = 1.0 if last == n - 1 else layer_scale(last + 1)
                s = np.sqrt(scale * nxt)
                ar = interpolated_scale_aspect_ratio
                sizes.append((s * np.sqrt(ar), s / np.sqrt(ar)))
            last += 1
        fh = int(np.ceil(h_in / strides[layer]))
        fw = int(np.ceil(w_in / strides[layer]))
        yy, xx = np.meshgrid((np.arange(fh) + anchor_offset[1]) / fh,
                             (np.arange(fw) + anchor_offset[0]) / fw, indexing="ij")
        k = len(sizes)
        grid = np.empty((fh, fw, k, 4), np.float64)
        grid[..., 0] = xx[..., None]
        grid[..., 1] = yy[..., None]
        if fixed_anchor_size:
            grid[..., 2:] = 1.0
        else:
            grid[..., 2:] = np.asarray(sizes)
        out.append(grid.reshape(-1, 4))
        layer = last
    return np.concatenate(out).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Decode
# --------------------------------------------------------------------------------------------

def decode(raw_boxes: np.ndarray, raw_scores: np.ndarray, anchors: np.ndarray,
           input_size: int | tuple[int, int], *, num_keypoints: int = 6,
           score_clipping_thresh: float = 100.0):
    """Decode raw BlazeFace outputs for every anchor of every image.

    Args:
        raw_boxes: ``[N, A, 4 + 2K]`` regressors, MediaPipe's ``reverse_output_order`` layout:
            ``(dx, dy, w, h)`` then ``K`` keypoint ``(dx, dy)`` pairs, all in input pixels
            relative to the anchor centre.
        raw_scores: ``[N, A, 1]`` (or ``[N, A]``) classifier logits.
        anchors: ``[A, 4]`` from :func:`ssd_anchors`.
        input_size: the x/y/w/h scales, i.e. the tensor side (int) or ``(height, width)``.

    Returns:
        ``boxes [N, A, 4]`` as normalised ``(xmin, ymin, xmax, ymax)`` in the input tensor,
        ``keypoints [N, A, K, 2]`` normalised ``(x, y)``, ``scores [N, A]`` in (0, 1)
        (logits clipped to +-``score_clipping_thresh`` before the sigmoid, which keeps
        ``exp`` finite). All float32.
    """
    raw_boxes = np.asarray(raw_boxes, np.float32)
    raw_scores = np.asarray(raw_scores, np.float32)
    if raw_boxes.ndim == 2:
        raw_boxes = raw_boxes[None]
    if raw_scores.ndim == raw_boxes.ndim:
        raw_scores = raw_scores[..., 0]
    elif raw_scores.ndim == 1:
        raw_scores = raw_scores[None]
    n, a, c = raw_boxes.shape
    if anchors.shape != (a, 4) or c < 4 + 2 * num_keypoints or raw_scores.shape != (n, a):
        raise ValueError(f"decode: raw_boxes {raw_boxes.shape}, raw_scores {raw_scores.shape} "
                         f"and anchors {anchors.shape} do not match ({num_keypoints} keypoints)")
    h_in, w_in = (input_size, input_size) if np.isscalar(input_size) else input_size
    # Per-coordinate scale (x, y) and anchor geometry, broadcast over [N, A].
    scale_xy = np.array([w_in, h_in], np.float32)
    a_xy, a_wh = anchors[:, :2], anchors[:, 2:]

    centre = raw_boxes[..., 0:2] / scale_xy * a_wh + a_xy
    size = raw_boxes[..., 2:4] / scale_xy * a_wh
    boxes = np.concatenate([centre - size / 2, centre + size / 2], axis=-1)

    kp = raw_boxes[..., 4:4 + 2 * num_keypoints].reshape(n, a, num_keypoints, 2)
    keypoints = kp / scale_xy * a_wh[:, None, :] + a_xy[:, None, :]

    return boxes.astype(np.float32), keypoints.astype(np.float32), _sigmoid_scores(raw_scores, score_clipping_thresh)


def _sigmoid_scores(raw_scores: np.ndarray, clip: float) -> np.ndarray:
    """Logits clipped to +-``clip``, then the sigmoid, as float32."""
    # float64: exp(100) overflows float32 and would warn.
    logits = np.clip(raw_scores.astype(np.float64), -clip, clip)
    return (1.0 / (1.0 + np.exp(-logits))).astype(np.float32)


# --------------------------------------------------------------------------------------------
# Weighted NMS
# --------------------------------------------------------------------------------------------

def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of every box in ``a [M, 4]`` with every box in ``b [K, 4]`` (xyxy) -> ``[M, K]``.

    Zero where boxes do not intersect or the union is empty (MediaPipe's convention).
    """
    a = np.asarray(a, np.float32)[:, None, :]
    b = np.asarray(b, np.float32)[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0])
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1])
    inter = np.where((iw > 0) & (ih > 0), iw * ih, 0.0)
    area_a = (a[..., 2] - a[..., 0]) * (a[..., 3] - a[..., 1])
    area_b = (b[..., 2] - b[..., 0]) * (b[..., 3] - b[..., 1])
    union = area_a + area_b - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(union > 0, inter / union, 0.0).astype(np.float32)


def weighted_nms(boxes: np.ndarray, scores: np.ndarray, iou_thresh: float = 0.3,
                 keypoints: np.ndarray | None = None):
    """MediaPipe's weighted NMS ("blending") for one image.

    Repeatedly take the highest-scoring remaining box; every remaining box whose IoU with it is
    *strictly* greater than ``iou_thresh`` (itself included) forms its cluster; the output box and
    keypoints are the score-weighted means over the cluster, the output score is the top
    box's own score (MediaPipe does not average scores).

    The IoU matrix is computed once for all boxes; the Python loop runs once per output face.
    Deviation from MediaPipe: a degenerate (zero-area) top box is still put in its own cluster,
    where MediaPipe would stop processing altogether.

    Args:
        boxes: ``[M, 4]`` xyxy. scores: ``[M]``. keypoints: optional ``[M, K, 2]``.

    Returns:
        ``(boxes [F, 4], scores [F], keypoints [F, K, 2] or None, clusters)`` with faces in
        descending score order; ``clusters`` is a list of index arrays into the input.
    """
    boxes = np.asarray(boxes, np.float32).reshape(-1, 4)
    scores = np.asarray(scores, np.float32).reshape(-1)
    m = len(scores)
    kdim = keypoints.shape[1:] if keypoints is not None else (0, 2)
    if m == 0:
        empty_kp = np.zeros((0, *kdim), np.float32) if keypoints is not None else None
        return np.zeros((0, 4), np.float32), np.zeros(0, np.float32), empty_kp, []

    # Stable sort: equal scores keep anchor order, which makes results reproducible.
    order = np.argsort(-scores, kind="stable")
    b, s = boxes[order], scores[order].astype(np.float64)
    overlap = iou_matrix(b, b) > iou_thresh
    np.fill_diagonal(overlap, True)

    remaining = np.ones(m, bool)
    clusters = []
    while remaining.any():
        top = int(np.argmax(remaining))  # first remaining == highest score
        members = remaining & overlap[top]
        remaining &= ~members
        clusters.append(np.flatnonzero(members))

    # Blend every cluster at once: a [F, M] weight matrix (rows sum to 1).
    weights = np.zeros((len(clusters), m), np.float64)
    for i, idx in enumerate(clusters):
        weights[i, idx] = s[idx]
    weights /= weights.sum(axis=1, keepdims=True)
    out_boxes = (weights @ b.astype(np.float64)).astype(np.float32)
    tops = np.array([c[0] for c in clusters])
    out_scores = s[tops].astype(np.float32)
    out_kp = None
    if keypoints is not None:
        kp = np.asarray(keypoints, np.float64)[order].reshape(m, -1)
        out_kp = (weights @ kp).astype(np.float32).reshape(len(clusters), *kdim)
    return out_boxes, out_scores, out_kp, [order[c] for c in clusters]


# --------------------------------------------------------------------------------------------
# Letterbox
# --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Letterbox:
    """How an ``image_hw`` image sits in a square ``size`` tensor.

    Tensor pixel coordinate ``u = x * scale + pad_x`` (likewise y), with continuous coordinates
    in which pixel ``i`` spans ``[i, i + 1)``. The image is centred (equal padding on both
    sides, as MediaPipe's keep_aspect_ratio ROI is centred).
    """

    image_hw: tuple[int, int]
    size: int
    scale: float
    pad_x: float
    pad_y: float

    @classmethod
    def fit(cls, image_hw: tuple[int, int], size: int) -> "Letterbox":
        h, w = image_hw
        scale = size / max(h, w)
        return cls((int(h), int(w)), int(size), scale,
                   (size - w * scale) / 2.0, (size - h * scale) / 2.0)

    def to_image(self, xy_norm: np.ndarray) -> np.ndarray:
        """Map normalised tensor coordinates ``[..., 2]`` (x, y) to image pixels."""
        xy = np.asarray(xy_norm, np.float32) * self.size
        return (xy - np.array([self.pad_x, self.pad_y], np.float32)) / self.scale

    def boxes_to_image(self, boxes_norm: np.ndarray) -> np.ndarray:
        """Map normalised xyxy boxes ``[..., 4]`` to image pixels (not clipped)."""
        b = np.asarray(boxes_norm, np.float32)
        return self.to_image(b.reshape(*b.shape[:-1], 2, 2)).reshape(b.shape)


@dataclass(frozen=True)
class ScaledView:
    """How (part of) an ``image_hw`` image sits in a ``tensor_hw`` detector input of any shape:
    tensor pixel ``u = x * scale + pad_x`` (likewise y; ``pad`` negative where the view starts
    inside the image). The map of the default preset's small-face scan (the whole image at one
    scale in a larger input) and of its zoomed views; :class:`Letterbox` is the square case."""

    image_hw: tuple[int, int]
    tensor_hw: tuple[int, int]
    scale: float
    pad_x: float = 0.0
    pad_y: float = 0.0

    def to_image(self, xy_norm: np.ndarray) -> np.ndarray:
        """Map normalised tensor coordinates ``[..., 2]`` (x, y) to image pixels."""
        h, w = self.tensor_hw
        xy = np.asarray(xy_norm, np.float32) * np.array([w, h], np.float32)
        return (xy - np.array([self.pad_x, self.pad_y], np.float32)) / self.scale

    def boxes_to_image(self, boxes_norm: np.ndarray) -> np.ndarray:
        """Map normalised xyxy boxes ``[..., 4]`` to image pixels (not clipped)."""
        b = np.asarray(boxes_norm, np.float32)
        return self.to_image(b.reshape(*b.shape[:-1], 2, 2)).reshape(b.shape)


def scan_shape(image_hw: tuple[int, int], scale: float, multiple: int = 32) -> tuple[int, int]:
    """``(height, width)`` of a detector input that holds an ``image_hw`` image at ``scale``,
    each side rounded up to a ``multiple`` of the network's largest inner stride (32 for
    BlazeFace: its feature maps then tile the input exactly, as at 128 and 192)."""
    if not scale > 0:
        raise ValueError(f"scan_shape: scale must be positive, got {scale}")
    h, w = image_hw
    return (max(multiple, int(np.ceil(h * scale / multiple)) * multiple),
            max(multiple, int(np.ceil(w * scale / multiple)) * multiple))


def _bilinear_axis(n_out: int, n_in: int, scale: float, pad: float):
    """Source indices and weights for one axis of the letterbox warp.

    Output pixel centre ``i + 0.5`` maps to source continuous ``(i + 0.5 - pad) / scale``,
    i.e. source index space ``x - 0.5``. (MediaPipe's OpenCV path maps corner to corner
    without the half-pixel terms, a sub-pixel shift of up to scale/2 source pixels; we keep
    the centre-aligned map because :meth:`Letterbox.to_image` is then its exact inverse.)
    Taps outside the image get weight 0: MediaPipe's BORDER_ZERO (black padding, which
    becomes -1 after the range mapping).
    """
    src = (np.arange(n_out) + 0.5 - pad) / scale - 0.5
    i0 = np.floor(src).astype(np.int64)
    f = (src - i0).astype(np.float32)
    idx = np.stack([i0, i0 + 1], axis=1)
    wts = np.stack([1.0 - f, f], axis=1)
    wts[(idx < 0) | (idx >= n_in)] = 0.0
    return np.clip(idx, 0, n_in - 1), wts


def letterbox(image: np.ndarray, size: int,
              value_range: tuple[float, float] = (-1.0, 1.0)) -> tuple[np.ndarray, Letterbox]:
    """Fit an ``[H, W, 3]`` RGB uint8 image into a ``[size, size, 3]`` float32 tensor.

    Keeps the aspect ratio and centres the image; the border is black (pixel value 0). Bilinear
    sampling without an anti-alias prefilter, like MediaPipe's CPU path (OpenCV warp with
    INTER_LINEAR), so the network sees what it sees under MediaPipe. Pixel values 0..255 are
    mapped linearly onto ``value_range``.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"letterbox: expected an [H, W, 3] RGB image, got shape {image.shape}")
    lb = Letterbox.fit(image.shape[:2], size)
    yi, yw = _bilinear_axis(size, image.shape[0], lb.scale, lb.pad_y)
    xi, xw = _bilinear_axis(size, image.shape[1], lb.scale, lb.pad_x)
    # Separable: rows first ([size, W, 3]), then columns ([size, size, 3]). Gather the uint8
    # rows before converting: only 2 x size rows of a large photo ever become float.
    rows = (image[yi[:, 0]].astype(np.float32) * yw[:, 0, None, None]
            + image[yi[:, 1]].astype(np.float32) * yw[:, 1, None, None])
    out = rows[:, xi[:, 0]] * xw[None, :, 0, None] + rows[:, xi[:, 1]] * xw[None, :, 1, None]
    lo, hi = value_range
    return (out * ((hi - lo) / 255.0) + lo).astype(np.float32), lb


def letterbox_batch(images, size: int, value_range: tuple[float, float] = (-1.0, 1.0)):
    """:func:`letterbox` for a list of images -> ``([N, size, size, 3], [Letterbox] * N)``."""
    pairs = [letterbox(im, size, value_range) for im in images]
    if not pairs:
        return np.zeros((0, size, size, 3), np.float32), []
    return np.stack([p[0] for p in pairs]), [p[1] for p in pairs]


# --------------------------------------------------------------------------------------------
# Full post-processing
# --------------------------------------------------------------------------------------------

@dataclass
class FaceDetections:
    """Faces found in one image, in original image pixels, best first.

    ``boxes [F, 4]`` float32 ``(xmin, ymin, xmax, ymax)`` (may extend past the image edge),
    ``scores [F]``, ``keypoints [F, 6, 2]`` ``(x, y)`` in :data:`KEYPOINT_NAMES` order.
    """

    boxes: np.ndarray
    scores: np.ndarray
    keypoints: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def postprocess(raw_boxes: np.ndarray, raw_scores: np.ndarray, spec: DetectorSpec,
                letterboxes: list[Letterbox] | None = None, *,
                min_score: float | None = None, iou_thresh: float | None = None,
                anchors: np.ndarray | None = None,
                input_hw: tuple[int, int] | None = None) -> list[FaceDetections]:
    """Decode + score threshold + weighted NMS + un-letterbox, for a batch.

    Args:
        raw_boxes: ``[N, A, 16]``; raw_scores: ``[N, A, 1]`` (the two detector outputs).
        spec: :data:`SHORT_RANGE` or :data:`FULL_RANGE` (or a custom :class:`DetectorSpec`).
        letterboxes: one per image from :func:`letterbox` (or :class:`ScaledView` maps);
            ``None`` keeps normalised tensor coordinates.
        min_score, iou_thresh: override ``spec.min_score_thresh`` /
            ``spec.min_suppression_threshold``.
        input_hw: ``(height, width)`` of an input larger than ``spec.input_size`` run through
            the same network; the anchors default to that grid and the regressors, which are in
            input pixels, are scaled by it.
    """
    if anchors is None:
        anchors = spec.anchors(input_hw)
    size = spec.input_size if input_hw is None else input_hw
    raw_boxes = np.asarray(raw_boxes, np.float32)
    raw_scores = np.asarray(raw_scores, np.float32)
    if raw_boxes.ndim == 2:
        raw_boxes, raw_scores = raw_boxes[None], raw_scores[None]
    raw_scores = raw_scores.reshape(raw_boxes.shape[0], -1)
    if raw_scores.shape[1] != raw_boxes.shape[1]:
        raise ValueError(f"postprocess: raw_boxes {raw_boxes.shape} and raw_scores {raw_scores.shape} "
                         "have different anchor counts")
    thr = spec.min_score_thresh if min_score is None else min_score
    iou = spec.min_suppression_threshold if iou_thresh is None else iou_thresh
    # Scores first, then decode only the anchors above the threshold (a few of thousands):
    # the same element-wise arithmetic as decoding everything, a fraction of the work.
    all_scores = _sigmoid_scores(raw_scores, spec.score_clipping_thresh)

    results = []
    for i in range(raw_boxes.shape[0]):  # per image; the per-anchor work is vectorised
        cand = np.flatnonzero(all_scores[i] >= thr)
        boxes, kps, _ = decode(raw_boxes[i, cand][None], raw_scores[i, cand][None], anchors[cand],
                               size, num_keypoints=spec.num_keypoints,
                               score_clipping_thresh=spec.score_clipping_thresh)
        boxes, kps, scores = boxes[0], kps[0], all_scores[i, cand]
        # MediaPipe drops boxes with negative or NaN size before NMS (b/171391719).
        wh = boxes[:, 2:] - boxes[:, :2]
        sel = np.flatnonzero(np.all(wh >= 0, axis=-1))
        fb, fs, fk, _ = weighted_nms(boxes[sel], scores[sel], iou, kps[sel])
        if letterboxes is not None:
            fb = letterboxes[i].boxes_to_image(fb)
            fk = letterboxes[i].to_image(fk)
        results.append(FaceDetections(fb, fs, fk))
    return results
