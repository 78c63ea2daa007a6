"""Face-landmark (FaceMesh v2, 478 points) pre- and post-processing in vectorised numpy.

The network runs elsewhere (``ig3d/assets/face_landmarks.onnx`` under ONNX Runtime); this
module owns the geometry around it, following MediaPipe's Tasks ``FaceLandmarker``:

* :func:`rois_from_detections` turns BlazeFace detections into rotated face ROIs
  (``DetectionsToRectsCalculator`` + ``RectTransformationCalculator``).
* :func:`rois_from_landmarks` turns 478 landmarks into the ROI for the next frame (tracking)
  or for an optional second pass on the same image.
* :func:`roi_affine` gives the image <-> crop affine maps of each ROI.
* :func:`warp_crops` cuts the ``S x S`` model inputs out of the image (bilinear, replicated
  border, bit-exact with MediaPipe's OpenCV path up to rare 1/32-pixel rounding ties).
* :func:`landmarks_to_image` maps the model's landmarks (pixels of the 256 crop) back to
  image pixels, z included.
* :func:`blendshape_points` picks the ``[146, 2]`` input of the blendshape model.
* :func:`letterbox_mediapipe` makes the face *detector's* input exactly as MediaPipe does
  (same warp, zero border); with it the whole pipeline reproduces MediaPipe's FaceLandmarker
  landmarks to ~0.01 px and blendshapes to ~2e-4 (python_tests/test_landmarks.py).

Behaviour follows google-ai-edge/mediapipe (read at commit 85c0cdc7 and tag v0.10.21, which
agree on everything used here; code written from the description, not copied):

* mediapipe/tasks/cc/vision/face_detector/face_detector_graph.cc:
  ``ConfigureDetectionsToRectsCalculator`` (rotation from keypoint 0 to keypoint 1, target
  angle 0) and ``ConfigureRectTransformationCalculator`` (scale 1.5 x 1.5, **no**
  ``square_long``) produce ``EXPANDED_FACE_RECTS``, the ROIs the landmarker uses.
* mediapipe/modules/face_landmark/face_detection_front_detection_to_roi.pbtxt: the legacy
  "solutions" graph does the same but with ``square_long: true``.
* mediapipe/calculators/util/detections_to_rects_calculator.cc: rect = detection box
  (centre, width, height); ``ComputeRotation`` = ``NormalizeRadians(target -
  atan2(-(y1 - y0), x1 - x0))`` with keypoints in pixels.
* mediapipe/calculators/util/rect_transformation_calculator.cc: optional shift (zero here),
  ``square_long`` (both sides := the longer side, in pixels), then scale.
* mediapipe/tasks/cc/vision/face_landmarker/face_landmarks_detector_graph.cc: the crop is
  made by ``ImagePreprocessingGraph`` with default ``ImageToTensor`` options, i.e.
  ``keep_aspect_ratio`` false (the ROI is stretched to 256 x 256) and border mode
  unspecified = ``BORDER_REPLICATE`` (mediapipe/calculators/tensor/image_to_tensor_utils.cc
  ``GetBorderMode``); ``LandmarkProjectionCalculator`` maps landmarks back; next-frame ROI =
  bounding box of all landmarks, rotation from landmark 33 to 263, scale 1.5, ``square_long``
  (``ConfigureFaceDetectionsToRectsCalculator`` / ``ConfigureFaceRectTransformationCalculator``;
  mediapipe/calculators/util/landmarks_to_detection_calculator.cc for the box).
* mediapipe/calculators/tensor/image_to_tensor_converter_opencv.cc: ``cv::boxPoints`` of the
  rotated rect are mapped onto the tensor corners ``(0, 0) .. (S, S)`` with
  ``getPerspectiveTransform`` and the image is resampled with ``warpPerspective``
  (``INTER_LINEAR``) on the uint8 image, then scaled to the model range.
* mediapipe/calculators/tensor/image_to_tensor_utils.cc ``GetRotatedSubRectToRectTransformMatrix``
  and mediapipe/calculators/util/landmark_projection_calculator.cc: crop -> image projection,
  z scaled by the length of the projected unit x vector ("Z has the same scale as X").

Which ROI MediaPipe uses when (mediapipe/tasks/cc/vision/face_landmarker/face_landmarker_graph.cc):

* IMAGE mode: always the detector ROIs (:func:`rois_from_detections`), one landmark pass.
* VIDEO / LIVE_STREAM: the landmarks of frame t give the ROIs of frame t+1
  (:func:`rois_from_landmarks`); the detector runs only while fewer than ``num_faces`` faces
  are tracked, and its ROIs are merged with the tracked ones (``AssociationNormRectCalculator``).
* A second landmark pass on the *same* image from :func:`rois_from_landmarks` is not something
  MediaPipe does; it is offered here as an optional refinement (see :func:`rois_from_landmarks`).

Coordinate conventions: image pixels ``(x, y)``, x to the right, y down; landmark pixels are
MediaPipe's normalised landmarks times the image size. Like MediaPipe's OpenCV path, the crop
maps the ROI corners onto the crop corners *in pixel index space* (``warp_crops`` samples the
image at pixel index ``Minv @ (col, row, 1)``, integer = pixel centre), and the landmark
projection uses the same affine, exactly as MediaPipe pairs them.

Speed (2-core shared dev VM): ``warp_crops`` runs in C++ (``ig3d._core.warp_affine``, AVX2 where
the crop lies inside the image), about 0.3 ms for one rotated 256 x 256 face crop on 2 threads,
0.55 ms on one; its numpy reference ``_warp_crops_numpy`` takes ~3 ms.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .detect import Letterbox
from .mediapipe_constants import (
    LANDMARK_RECT_ROTATION_KEYPOINTS,
    LANDMARK_RECT_SCALE,
    LANDMARKS_SUBSET_IDXS,
)

__all__ = [
    "Rois",
    "blendshape_points",
    "landmarks_to_image",
    "letterbox_mediapipe",
    "roi_affine",
    "rois_from_detections",
    "rois_from_landmarks",
    "warp_crops",
]

#: Detector keypoints that define the face ROI rotation (right eye -> left eye of the subject,
#: i.e. observer's left -> observer's right), face_detector_graph.cc.
DETECTION_ROTATION_KEYPOINTS = (0, 1)
#: Detector box -> landmark ROI scale, face_detector_graph.cc.
DETECTION_RECT_SCALE = (1.5, 1.5)

_SUBSET = np.asarray(LANDMARKS_SUBSET_IDXS, np.intp)


@dataclass(frozen=True)
class Rois:
    """Rotated face regions in image pixels, one row per face.

    Attributes:
        center: ``[N, 2]`` float64 ``(x, y)`` centre.
        size: ``[N, 2]`` float64 ``(width, height)`` along the ROI's own (rotated) axes. Square
            (``width == height``) for :func:`rois_from_landmarks` and for
            ``rois_from_detections(..., square_long=True)``; MediaPipe's Tasks detector ROIs are
            1.5 x the detector box and only nearly square.
        angle: ``[N]`` float64 radians in ``[-pi, pi)``; the ROI's x axis points along
            ``(cos(angle), sin(angle))`` in image pixels (y down), so a positive angle is a
            clockwise rotation as displayed. MediaPipe's ``NormalizedRect.rotation``.
    """

    center: np.ndarray
    size: np.ndarray
    angle: np.ndarray

    def __len__(self) -> int:
        return len(self.angle)


def _normalize_radians(a: np.ndarray) -> np.ndarray:
    """Wrap angles to ``[-pi, pi)`` (MediaPipe's ``NormalizeRadians``)."""
    return a - 2.0 * np.pi * np.floor((a + np.pi) / (2.0 * np.pi))


def _rotation_from_points(p0: np.ndarray, p1: np.ndarray, target_angle: float) -> np.ndarray:
    """MediaPipe ``ComputeRotation``: the ROI angle that makes ``p0 -> p1`` point along
    ``target_angle`` (0 = horizontal, to the right) in the crop. ``p0, p1``: ``[N, 2]`` pixels.

    The y difference is negated because MediaPipe measures the angle with y up; with y down the
    result is simply ``atan2(dy, dx)`` for target 0.
    """
    d = p1 - p0
    return _normalize_radians(target_angle - np.arctan2(-d[:, 1], d[:, 0]))


def _transform_rects(center, size, angle, scale, square_long: bool) -> Rois:
    """``RectTransformationCalculator`` without shift: optional ``square_long``, then scale."""
    size = np.array(size, np.float64, copy=True)
    if square_long:
        size[:] = size.max(axis=1, keepdims=True)
    size *= np.asarray(scale, np.float64)
    return Rois(np.asarray(center, np.float64), size, np.asarray(angle, np.float64))


def rois_from_detections(boxes: np.ndarray, keypoints: np.ndarray, *,
                         scale: tuple[float, float] = DETECTION_RECT_SCALE,
                         square_long: bool = False,
                         rotation_keypoints: tuple[int, int] = DETECTION_ROTATION_KEYPOINTS,
                         target_angle: float = 0.0) -> Rois:
    """Face ROIs from BlazeFace detections (MediaPipe detector -> landmarker hand-off).

    ``DetectionsToRectsCalculator``: centre and size of the detection box, rotation such that
    keypoint 0 (subject's right eye) -> keypoint 1 (left eye) is horizontal in the crop. Then
    ``RectTransformationCalculator``: scale by 1.5. MediaPipe's Tasks ``FaceLandmarker``
    (which ig3d is validated against) does not square the ROI; its legacy solution graph does
    (``square_long=True``).

    Args:
        boxes: ``[N, 4]`` ``(xmin, ymin, xmax, ymax)`` in image pixels
            (:class:`ig3d.faces.detect.FaceDetections` ``.boxes``).
        keypoints: ``[N, K, 2]`` ``(x, y)`` image pixels (``.keypoints``).
        scale: ``(sx, sy)`` applied to width and height.
        square_long: make the ROI square with the longer side before scaling.
        rotation_keypoints: ``(start, end)`` keypoint indices of the rotation vector.
        target_angle: angle (radians) the start -> end vector should have in the crop.

    Returns:
        :class:`Rois` with ``N`` rows.
    """
    boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
    keypoints = np.asarray(keypoints, np.float64)
    if keypoints.ndim != 3 or len(keypoints) != len(boxes):
        raise ValueError(f"rois_from_detections: boxes {boxes.shape} and keypoints "
                         f"{keypoints.shape} do not match")
    center = (boxes[:, :2] + boxes[:, 2:]) * 0.5
    size = boxes[:, 2:] - boxes[:, :2]
    i0, i1 = rotation_keypoints
    angle = _rotation_from_points(keypoints[:, i0], keypoints[:, i1], target_angle)
    return _transform_rects(center, size, angle, scale, square_long)


def rois_from_landmarks(landmarks_px: np.ndarray, *,
                        scale: tuple[float, float] = LANDMARK_RECT_SCALE,
                        square_long: bool = True,
                        rotation_landmarks: tuple[int, int] = LANDMARK_RECT_ROTATION_KEYPOINTS,
                        ) -> Rois:
    """Face ROIs from 478 (or 468) landmarks, MediaPipe's "rect for the next frame".

    ``LandmarksToDetectionCalculator`` (axis-aligned bounding box of *all* landmarks' x, y) ->
    ``DetectionsToRectsCalculator`` (rotation from landmark 33, outer corner of the subject's
    right eye, to 263, outer corner of the left eye) -> ``RectTransformationCalculator``
    (``square_long``, scale 1.5).

    When to use: MediaPipe uses this ROI for the *next video frame* (VIDEO / LIVE_STREAM
    tracking), skipping the detector while every face stays tracked (with one face it also
    smooths the landmarks over time, face_landmarks_detector_graph.cc). ig3d can also use it
    for an optional second pass on the *same* image ("refinement"): its rotation comes from
    the eye corners rather than the detector's coarse eye keypoints, and a second pass is what
    MediaPipe's VIDEO mode would compute on a repeated still frame (minus smoothing).
    MediaPipe's IMAGE mode does not do this, so refined landmarks differ from its IMAGE-mode
    output (by 0.4-1.7 px mean on the test photos).

    Args:
        landmarks_px: ``[N, L, 2 or 3]`` image pixels (z ignored).

    Returns:
        :class:`Rois` (square when ``square_long``).
    """
    lm = np.asarray(landmarks_px, np.float64)
    if lm.ndim != 3 or lm.shape[2] < 2:
        raise ValueError(f"rois_from_landmarks: expected [N, L, 2|3], got {lm.shape}")
    xy = lm[..., :2]
    lo, hi = xy.min(axis=1), xy.max(axis=1)
    i0, i1 = rotation_landmarks
    angle = _rotation_from_points(xy[:, i0], xy[:, i1], 0.0)
    return _transform_rects((lo + hi) * 0.5, hi - lo, angle, scale, square_long)


def roi_affine(rois: Rois, out_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Affine maps between image pixels and the ``out_size x out_size`` crop of each ROI.

    Crop -> image (MediaPipe ``GetRotatedSubRectToRectTransformMatrix`` in pixels, and the
    ``cv::boxPoints`` -> tensor-corner map of the OpenCV converter)::

        p_image = center + R(angle) @ diag(w / S, h / S) @ (p_crop - (S/2, S/2))

    with ``R(a) = [[cos a, -sin a], [sin a, cos a]]``: the crop's corner ``(0, 0)`` is the ROI's
    top-left corner, ``(S, S)`` its bottom-right corner.

    Returns:
        ``(M, Minv)``, both ``[N, 2, 3]`` float64: ``M`` maps image ``(x, y, 1)`` to crop
        ``(u, v)``, ``Minv`` maps crop to image.
    """
    n = len(rois)
    s = float(out_size)
    c, sn = np.cos(rois.angle), np.sin(rois.angle)
    kx = rois.size[:, 0] / s  # image pixels per crop pixel, along the ROI's x axis
    ky = rois.size[:, 1] / s
    minv = np.empty((n, 2, 3), np.float64)
    minv[:, 0, 0] = c * kx
    minv[:, 0, 1] = -sn * ky
    minv[:, 1, 0] = sn * kx
    minv[:, 1, 1] = c * ky
    minv[:, :, 2] = rois.center - minv[:, :, :2] @ np.array([s / 2, s / 2])
    return _invert_affine(minv), minv


def _invert_affine(a: np.ndarray) -> np.ndarray:
    """Invert ``[N, 2, 3]`` affine maps."""
    lin = np.linalg.inv(a[:, :, :2])
    out = np.empty_like(a)
    out[:, :, :2] = lin
    out[:, :, 2] = -(lin @ a[:, :, 2:3])[:, :, 0]
    return out


# --------------------------------------------------------------------------------------------
# Warp
# --------------------------------------------------------------------------------------------

# OpenCV's INTER_LINEAR quantises source coordinates to 1/32 pixel (INTER_BITS = 5) and uses
# integer weights; with 1/32 fractions every bilinear weight is an exact multiple of 1/1024, so
# the uint8 result is round(sum(w_k * p_k) / 1024) with integer w_k summing to 1024.
_FRAC_BITS = 5
_FRAC = 1 << _FRAC_BITS
_WSHIFT = 2 * _FRAC_BITS
# "SIMD within a register": R, G, B each in a 20-bit lane of one uint64, enough for
# 255 * 1024 + rounding (< 2**18) without spilling into the next lane. numpy is slow at
# [S, S, 3] x [S, S, 1] broadcasts (length-3 inner loops), so one packed word per pixel makes
# each bilinear tap a single gather + integer multiply-add.
_LANE = 20
_ROUND = np.uint64(sum((1 << (_WSHIFT - 1)) << (_LANE * k) for k in range(3)))
# Byte offsets of the rounded R, G, B inside (acc >> 10, acc >> 14, acc >> 10) as uint64.
_R_BYTE, _G_BYTE, _B_BYTE = (0, 2, 5) if np.little_endian else (7, 5, 2)
# Fixed-point source coordinates: 1/32-pixel steps carry _SUB_BITS more fraction bits, so the
# per-row and per-column terms add up exactly in int64 and ">>" floors them.
_SUB_BITS = 16
# Output rows per vectorised block: uint64 temporaries of 16K elements (128 KiB) stay in cache
# and are recycled by the allocator instead of being page-faulted afresh.
_BLOCK = 1 << 14


def _packed_lanes(region: np.ndarray) -> np.ndarray:
    """``[h, w, 3]`` uint8 -> ``[h * w]`` uint64 with R | G << 20 | B << 40."""
    r = region.reshape(-1, 3)
    out = r[:, 2].astype(np.uint64)
    out <<= np.uint64(_LANE)
    out |= r[:, 1]
    out <<= np.uint64(_LANE)
    out |= r[:, 0]
    return out


def _fixed(v: np.ndarray) -> np.ndarray:
    """Float pixel coordinates -> int64 in units of 2**-(5 + _SUB_BITS) pixel."""
    return np.rint(v * float(1 << (_FRAC_BITS + _SUB_BITS))).astype(np.int64)


def _unit_lut(value_range: tuple[float, float] = (0.0, 1.0)) -> np.ndarray:
    """uint8 -> float32 table: ``v / 255`` mapped onto ``value_range``, rounded step by step in
    float32 exactly as the numpy reference does it (``v * (1/255)``, then ``* (hi - lo) + lo``)."""
    x = np.arange(256, dtype=np.uint8) * np.float32(1.0 / 255.0)
    lo, hi = value_range
    if (lo, hi) != (0.0, 1.0):
        x *= np.float32(hi - lo)
        x += np.float32(lo)
    return x


_LUT01 = _unit_lut()


def _warp_args(image, M, out_size, border, out):
    """Checked arguments of :func:`warp_crops` -> (image, M [N, 2, 3] float64, N, S)."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ValueError(f"warp_crops: expected an [H, W, 3] uint8 RGB image, got "
                         f"{image.dtype} {image.shape}")
    if border not in ("replicate", "zero"):
        raise ValueError(f"warp_crops: border must be 'replicate' or 'zero', not {border!r}")
    M = np.asarray(M, np.float64)
    if M.ndim == 2:
        M = M[None]
    if M.ndim != 3 or M.shape[1:] != (2, 3) or not np.isfinite(M).all():
        raise ValueError(f"warp_crops: M must be finite [N, 2, 3], got {M.shape}")
    n, s = len(M), int(out_size)
    if out is not None and (out.shape != (n, s, s, 3) or out.dtype != np.float32):
        raise ValueError(f"warp_crops: out must be float32 {(n, s, s, 3)}, got "
                         f"{out.dtype} {out.shape}")
    return image, M, n, s


def warp_crops(image: np.ndarray, M: np.ndarray, out_size: int = 256, *,
               border: str = "replicate", out: np.ndarray | None = None, threads: int = 0,
               _lut: np.ndarray | None = None) -> np.ndarray:
    """Cut ``N`` affine crops out of one RGB image: the landmark model's input.

    Output pixel ``(row i, col j)`` of crop ``n`` is the bilinear sample of ``image`` at pixel
    index ``Minv[n] @ (j, i, 1)`` (pixel centres at integer coordinates), ``Minv`` the inverse
    of ``M``, computed as MediaPipe's CPU ``ImageToTensor`` does with OpenCV
    ``warpPerspective(INTER_LINEAR)`` on the uint8 image: coordinates rounded to 1/32 pixel,
    integer weights, result rounded to uint8 (details in :func:`_warp_crops_numpy`, the numpy
    reference this C++ kernel equals byte for byte). All crops of one call run in one
    multi-threaded C++ call without the GIL, 8 pixels at a time with AVX2 where the crop lies
    inside the image: about 0.55 ms for a rotated 256 x 256 face crop on one core, 0.3 ms on 2.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        M: ``[N, 2, 3]`` (or ``[2, 3]``) image -> crop affine from :func:`roi_affine`.
        out_size: crop side ``S``.
        border: ``"replicate"`` (MediaPipe landmarker default: taps outside the image take
            the nearest edge pixel) or ``"zero"`` (black; MediaPipe's detector letterbox).
        out: optional ``[N, S, S, 3]`` float32 array to write into.
        threads: CPU threads (0: ``ig3d.kernels.get_num_threads()``; 1 inside worker threads).

    Returns:
        ``[N, S, S, 3]`` float32 in ``[0, 1]`` (pixel / 255, the landmark model's range).
    """
    image, M, n, s = _warp_args(image, M, out_size, border, out)
    minv = _invert_affine(M) if n else M
    from .. import kernels
    res = kernels.core().warp_affine(image, minv, s, border == "zero", _LUT01 if _lut is None else _lut, int(threads))
    if out is None:
        return res
    out[...] = res
    return out


def _warp_crops_numpy(image: np.ndarray, M: np.ndarray, out_size: int = 256, *,
                      border: str = "replicate", out: np.ndarray | None = None) -> np.ndarray:
    """The numpy reference of :func:`warp_crops` (same arguments, identical bytes out).

    :func:`warp_crops` runs the C++ form of this in ``ig3d._core``; the tests compare the two on
    random maps and real photos. What follows documents the arithmetic both implement.

    The sampling (see :func:`warp_crops`) is what MediaPipe's CPU ``ImageToTensor`` does with OpenCV
    ``warpPerspective(INTER_LINEAR)`` on the uint8 image, including OpenCV's fixed-point
    arithmetic: coordinates rounded to 1/32 pixel, integer weights, result rounded to uint8.
    Checked against OpenCV 4.11 (``cv2.boxPoints`` + ``getPerspectiveTransform`` +
    ``warpPerspective``, as MediaPipe calls them): identical up to a grey level or two on
    ~0.005% of pixels of a photo, where a coordinate sits on a 1/64-pixel rounding tie (OpenCV
    resolves ties through its slightly non-affine, float32-derived matrix; here they round up).
    Exact ties are frequent only for axis-aligned ROIs with "round" scales (a few percent of
    pixels, up to 3 grey levels on a photo).

    Vectorised over each crop's ``S x S`` pixels in blocks of rows (a Python loop runs over
    faces and row blocks only). Cost is about 1.7 ms per crop plus ~0.5 ms per 100k source
    pixels under the ROI (the region is packed once) on the 2-core dev VM. Maps without
    rotation (the detector letterbox) take a separable path whose cost does not depend on the
    source size (~1.5 ms for a 128 letterbox of a 572 x 562 photo, ~3 ms from 1920 x 1080).
    Arguments and result as :func:`warp_crops` (without ``threads``).
    """
    image, M, n, s = _warp_args(image, M, out_size, border, out)
    if out is None:
        out = np.empty((n, s, s, 3), np.float32)
    minv = _invert_affine(M) if n else M
    for f in range(n):
        _warp_one(image, minv[f], s, border == "zero", out[f])
    return out


def _region_words(image: np.ndarray, rows: np.ndarray, cols: np.ndarray,
                  zero_border: bool) -> np.ndarray:
    """Packed words of ``image[rows][:, cols]`` -> ``[len(rows), len(cols)]`` uint64.

    Indices outside the image repeat the edge, or are 0 with ``zero_border``. Only the part
    inside the image is packed; the rest is copied by whole rows / columns.
    """
    h, w = image.shape[:2]
    r0, r1 = int(np.clip(rows.min(), 0, h - 1)), int(np.clip(rows.max(), 0, h - 1))
    c0, c1 = int(np.clip(cols.min(), 0, w - 1)), int(np.clip(cols.max(), 0, w - 1))
    contiguous = (len(rows) == r1 - r0 + 1 and len(cols) == c1 - c0 + 1
                  and rows[0] == r0 and cols[0] == c0
                  and np.all(np.diff(rows) == 1) and np.all(np.diff(cols) == 1))
    if contiguous:
        return _packed_lanes(image[r0:r1 + 1, c0:c1 + 1]).reshape(len(rows), len(cols))
    if len(rows) * len(cols) < (r1 - r0 + 1) * (c1 - c0 + 1):
        # Sparse selection (downscaling): gather the needed pixels first, then pack.
        sub = image.take(np.clip(rows, 0, h - 1), axis=0).take(np.clip(cols, 0, w - 1), axis=1)
        words = _packed_lanes(sub).reshape(len(rows), len(cols))
    else:
        words = _packed_lanes(image[r0:r1 + 1, c0:c1 + 1]).reshape(r1 - r0 + 1, c1 - c0 + 1)
        words = words.take(np.clip(rows, r0, r1) - r0, axis=0)
        words = words.take(np.clip(cols, c0, c1) - c0, axis=1)
    if zero_border:
        words[(rows < 0) | (rows >= h)] = 0
        words[:, (cols < 0) | (cols >= w)] = 0
    return words


def _axis_fixed(scale: float, offset: float, s: int) -> tuple[np.ndarray, np.ndarray]:
    """Separable case: floor and 1/32 fraction of ``scale * i + offset`` for ``i < s``."""
    # Same two rounded terms as the general path (column term + offset term).
    q = _fixed(scale * np.arange(s, dtype=np.float64)) + _fixed(np.float64(offset))
    q += 1 << (_SUB_BITS - 1)
    q >>= _SUB_BITS
    return q >> _FRAC_BITS, (q & (_FRAC - 1)).view(np.uint64)


def _warp_axis_aligned(image: np.ndarray, minv: np.ndarray, s: int, zero_border: bool,
                       out: np.ndarray) -> None:
    """:func:`_warp_one` for maps without rotation or shear (e.g. the detector letterbox).

    Rows and columns are then independent: output row ``i`` reads source rows ``y0[i]`` and
    ``y0[i] + 1`` only, so just those ``2 S`` rows x ``2 S`` columns are gathered and packed
    (cost independent of the source size), and the bilinear blend needs no per-pixel gathers.
    Same integer arithmetic as the general path, hence the same result (up to how the float
    offset is rounded to 2**-21 pixel, which can only matter on an exact rounding tie).
    """
    x0, ax = _axis_fixed(minv[0, 0], minv[0, 2], s)   # [S] per output column
    y0, ay = _axis_fixed(minv[1, 1], minv[1, 2], s)   # [S] per output row
    cols = np.stack([x0, x0 + 1], axis=1).reshape(-1)  # taps of column j at 2j, 2j + 1
    rows = np.stack([y0, y0 + 1], axis=1).reshape(-1)
    words = _region_words(image, rows, cols, zero_border)
    one32 = np.uint64(_FRAC)
    bx, by = (one32 - ax)[None, :], (one32 - ay)[:, None]
    ax, ay = ax[None, :], ay[:, None]
    top = words[0::2, 0::2] * bx
    top += words[0::2, 1::2] * ax
    bot = words[1::2, 0::2] * bx
    bot += words[1::2, 1::2] * ax
    top *= by
    bot *= ay
    top += bot
    top += _ROUND
    _store_rgb(top, out)


def _store_rgb(acc: np.ndarray, out: np.ndarray) -> None:
    """Rounded packed sums ``[R, S]`` uint64 -> ``out [R, S, 3]`` float32 in [0, 1]."""
    r, s = acc.shape
    # Read the channels as bytes of shifted words: after >> 10, R is byte 0 and B byte 5;
    # after >> 14, G is byte 2 (little-endian; _LANE = 20, _WSHIFT = 10).
    rb = (acc >> np.uint64(_WSHIFT)).view(np.uint8).reshape(r, s, 8)
    gg = (acc >> np.uint64(_WSHIFT + 4)).view(np.uint8).reshape(r, s, 8)
    u8 = np.empty((r, s, 3), np.uint8)
    u8[..., 0] = rb[..., _R_BYTE]
    u8[..., 1] = gg[..., _G_BYTE]
    u8[..., 2] = rb[..., _B_BYTE]
    np.multiply(u8, np.float32(1.0 / 255.0), out=out)


def _warp_one(image: np.ndarray, minv: np.ndarray, s: int, zero_border: bool,
              out: np.ndarray) -> None:
    """One crop of :func:`warp_crops`: ``minv [2, 3]`` crop -> image, writes ``out [S, S, 3]``."""
    if minv[0, 1] == 0.0 and minv[1, 0] == 0.0:
        _warp_axis_aligned(image, minv, s, zero_border, out)
        return
    h, w = image.shape[:2]
    # Source region every tap can reach: the map is affine, so all samples lie in the hull of
    # the four corner samples. It is clamped to the image plus a 2-pixel ring, and taps are
    # clamped into it: a ring pixel repeats the edge (replicate) or is 0 (zero), and a tap
    # clamped onto the ring sees the same value as the true out-of-image tap would.
    corners = np.array([[0, 0, 1], [s - 1, 0, 1], [0, s - 1, 1], [s - 1, s - 1, 1]], np.float64)
    pts = corners @ minv.T
    lo = np.floor(pts.min(axis=0)).astype(np.int64) - 1
    hi = np.floor(pts.max(axis=0)).astype(np.int64) + 2
    x_lo, y_lo = int(max(lo[0], -2)), int(max(lo[1], -2))
    x_hi, y_hi = int(min(hi[0], w + 1)), int(min(hi[1], h + 1))
    x_lo, y_lo = min(x_lo, x_hi - 1), min(y_lo, y_hi - 1)  # ROI entirely off the image
    inside = x_lo >= 0 and y_lo >= 0 and x_hi < w and y_hi < h
    rw = x_hi - x_lo + 1
    words = _region_words(image, np.arange(y_lo, y_hi + 1), np.arange(x_lo, x_hi + 1),
                          zero_border).reshape(-1)

    # Fixed-point coordinates of output pixel (i, j), relative to the region origin:
    # off[i] + col[j] per axis, with the rounding half folded into the column term.
    grid = np.arange(s, dtype=np.float64)
    half = 1 << (_SUB_BITS - 1)
    off_x = _fixed(minv[0, 1] * grid + (minv[0, 2] - x_lo))
    off_y = _fixed(minv[1, 1] * grid + (minv[1, 2] - y_lo))
    col_x = _fixed(minv[0, 0] * grid) + half
    col_y = _fixed(minv[1, 0] * grid) + half
    one32 = np.uint64(_FRAC)
    rows_per_block = max(1, min(s, _BLOCK // s))

    for r0 in range(0, s, rows_per_block):
        r1 = min(s, r0 + rows_per_block)
        xq = off_x[r0:r1, None] + col_x            # [rows, S] int64
        yq = off_y[r0:r1, None] + col_y
        xq >>= _SUB_BITS                           # 1/32-pixel units
        yq >>= _SUB_BITS
        ax = (xq & (_FRAC - 1)).view(np.uint64)    # fractions 0..31
        ay = (yq & (_FRAC - 1)).view(np.uint64)
        xq >>= _FRAC_BITS                          # floor: region pixel index
        yq >>= _FRAC_BITS
        if not inside:
            np.clip(xq, 0, rw - 2, out=xq)
            np.clip(yq, 0, y_hi - y_lo - 1, out=yq)
        idx = yq
        idx *= rw
        idx += xq
        bx = one32 - ax
        by = one32 - ay
        # Exact integer bilinear, rows first. mode="wrap" skips bounds checks; idx is in range
        # by construction.
        top = np.take(words, idx, mode="wrap")
        top *= bx
        idx += 1
        tap = np.take(words, idx, mode="wrap")
        tap *= ax
        top += tap
        idx += rw
        bot = np.take(words, idx, mode="wrap")
        bot *= ax
        idx -= 1
        tap = np.take(words, idx, mode="wrap")
        tap *= bx
        bot += tap
        top *= by
        bot *= ay
        top += bot
        top += _ROUND
        _store_rgb(top, out[r0:r1])


def letterbox_mediapipe(image: np.ndarray, size: int,
                        value_range: tuple[float, float] = (-1.0, 1.0), *, threads: int = 0
                        ) -> tuple[np.ndarray, Letterbox]:
    """The face detector's input exactly as MediaPipe makes it -> ``([size, size, 3], Letterbox)``.

    MediaPipe's ``ImageToTensor`` with ``keep_aspect_ratio`` and ``BORDER_ZERO``
    (face_detector_graph.cc): the whole image, padded to a centred square (``PadRoi``), warped
    corner-to-corner in pixel index space (:func:`warp_crops` with ``border="zero"``), pixel
    values mapped linearly from ``[0, 255]`` onto ``value_range``. The returned
    :class:`ig3d.faces.detect.Letterbox` maps detections back exactly as MediaPipe's detection
    projection does.

    Why not :func:`ig3d.faces.detect.letterbox`: that one samples pixel centres
    (``x = (u + 0.5) / scale - 0.5``), MediaPipe samples ``x = u / scale``; for a 512-pixel
    image into the 128 detector that shifts the content by 1.5 image pixels, which moves the
    detected keypoints and therefore the landmark ROI (its rotation by several degrees on the
    test photos). The landmarks follow the face either way (about 1 px apart), but the
    blendshape model is sensitive to such sub-pixel landmark changes (up to 0.13 on
    ``astronaut.png``); with this function ig3d reproduces MediaPipe's FaceLandmarker landmarks
    to 0.01 px and blendshapes to 3e-4.

    Args:
        image: ``[H, W, 3]`` uint8 RGB.
        size: square detector input side (128 short range, 192 full range).
        value_range: output range of pixel values 0 and 255.
    """
    image = np.asarray(image)
    h, w = image.shape[:2]
    side = float(max(h, w))
    rois = Rois(np.array([[w / 2.0, h / 2.0]]), np.array([[side, side]]), np.zeros(1))
    m, _ = roi_affine(rois, size)
    x = warp_crops(image, m, size, border="zero", threads=threads, _lut=_unit_lut(value_range))[0]
    return x, Letterbox.fit((h, w), size)


# --------------------------------------------------------------------------------------------
# Landmarks back to the image
# --------------------------------------------------------------------------------------------

def landmarks_to_image(lm_crop: np.ndarray, Minv: np.ndarray) -> np.ndarray:
    """Map landmarks from crop pixels back to image pixels (``LandmarkProjectionCalculator``).

    ``x, y`` go through the crop -> image affine. ``z`` (the model's depth, in crop pixels, same
    scale as x, smaller = closer to the camera) is multiplied by the length of the projected
    unit x vector, ``|Minv[:, :, 0]| = roi_width / S``, which is MediaPipe's ``CalculateZScale``:
    z ends up in image pixels, on the same scale as x (MediaPipe's normalised z times the image
    width).

    Args:
        lm_crop: ``[N, L, 3]`` (or ``[N, L, 2]``) model output in crop pixels.
        Minv: ``[N, 2, 3]`` crop -> image from :func:`roi_affine`.

    Returns:
        ``[N, L, 3]`` (or ``[N, L, 2]``) float32 image pixels.
    """
    lm = np.asarray(lm_crop, np.float64)
    minv = np.asarray(Minv, np.float64)
    if minv.ndim == 2:
        minv = minv[None]
    if lm.ndim != 3 or lm.shape[2] not in (2, 3) or len(minv) != len(lm):
        raise ValueError(f"landmarks_to_image: landmarks {lm.shape} and Minv {minv.shape} "
                         f"do not match")
    out = np.empty_like(lm)
    out[..., :2] = lm[..., :2] @ minv[:, :, :2].transpose(0, 2, 1) + minv[:, None, :, 2]
    if lm.shape[2] == 3:
        out[..., 2] = lm[..., 2] * np.hypot(minv[:, 0, 0], minv[:, 1, 0])[:, None]
    return out.astype(np.float32)


def blendshape_points(landmarks_px: np.ndarray) -> np.ndarray:
    """The blendshape model's input: ``[N, 146, 2]`` float32 ``(x, y)`` image pixels.

    MediaPipe (face_blendshapes_graph.cc) takes :data:`LANDMARKS_SUBSET_IDXS` of the normalised
    landmarks and multiplies x by the image width and y by the image height, i.e. image pixels.

    Args:
        landmarks_px: ``[N, 478, 2|3]`` image pixels (from :func:`landmarks_to_image`).
    """
    lm = np.asarray(landmarks_px)
    if lm.ndim != 3 or lm.shape[1] < 478:
        raise ValueError(f"blendshape_points: expected [N, 478, 2|3], got {lm.shape}")
    return np.ascontiguousarray(lm[:, _SUBSET, :2], dtype=np.float32)
