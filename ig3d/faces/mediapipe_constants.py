"""Facts about MediaPipe's face models that ig3d's own pipeline relies on.

These are constants (index lists, names, numeric options), not code.  Each
one cites where it is stated in google-ai-edge/mediapipe (Apache-2.0), read
at commit ``85c0cdc7d70653888903c88df45962b764296342``; paths below are
relative to that repository.  The model files themselves come from the pinned
wheels in :mod:`ig3d.convert.upstream`.

Model inputs (read from each ``.tflite``'s own TFLITE_METADATA
``NormalizationOptions``, see :func:`ig3d.convert.tflite.read_input_normalization`):

* face detectors (short range 128x128, full range 192x192): RGB,
  ``(pixel - 127.5) / 127.5``, i.e. in ``[-1, 1]``; NHWC float32.
* face landmarks (256x256): RGB, ``pixel / 255``, i.e. in ``[0, 1]``; NHWC.
* blendshapes: ``[146, 2]`` landmark ``(x, y)`` in pixels: the
  :data:`LANDMARKS_SUBSET_IDXS` subset of the 478 normalized landmarks times
  image width / height (``LandmarksToTensorCalculator`` with ``IMAGE_SIZE``,
  mediapipe/tasks/cc/vision/face_landmarker/face_blendshapes_graph.cc,
  ``ConvertLandmarksToTensor``).  The model itself centres and rescales the
  points, so only the aspect ratio of the pixel scale matters.
"""

from __future__ import annotations

from typing import Dict, Tuple

#: Commit of google-ai-edge/mediapipe these facts were read from.
MEDIAPIPE_COMMIT = "85c0cdc7d70653888903c88df45962b764296342"

# ---------------------------------------------------------------------------
# Blendshapes
# Source: mediapipe/tasks/cc/vision/face_landmarker/face_blendshapes_graph.cc,
# ``kBlendshapeNames`` (model output order) and ``kLandmarksSubsetIdxs``
# (which of the 478 face-mesh landmarks feed the model, in input order).
# ---------------------------------------------------------------------------

#: The 52 outputs of ``face_blendshapes.tflite``: ``_neutral`` then the 51
#: ARKit blendshapes in alphabetical order (``tongueOut`` is absent).
BLENDSHAPE_NAMES: Tuple[str, ...] = (
    "_neutral",
    "browDownLeft", "browDownRight", "browInnerUp",
    "browOuterUpLeft", "browOuterUpRight",
    "cheekPuff", "cheekSquintLeft", "cheekSquintRight",
    "eyeBlinkLeft", "eyeBlinkRight",
    "eyeLookDownLeft", "eyeLookDownRight",
    "eyeLookInLeft", "eyeLookInRight",
    "eyeLookOutLeft", "eyeLookOutRight",
    "eyeLookUpLeft", "eyeLookUpRight",
    "eyeSquintLeft", "eyeSquintRight",
    "eyeWideLeft", "eyeWideRight",
    "jawForward", "jawLeft", "jawOpen", "jawRight",
    "mouthClose",
    "mouthDimpleLeft", "mouthDimpleRight",
    "mouthFrownLeft", "mouthFrownRight",
    "mouthFunnel", "mouthLeft",
    "mouthLowerDownLeft", "mouthLowerDownRight",
    "mouthPressLeft", "mouthPressRight",
    "mouthPucker", "mouthRight",
    "mouthRollLower", "mouthRollUpper",
    "mouthShrugLower", "mouthShrugUpper",
    "mouthSmileLeft", "mouthSmileRight",
    "mouthStretchLeft", "mouthStretchRight",
    "mouthUpperUpLeft", "mouthUpperUpRight",
    "noseSneerLeft", "noseSneerRight",
)

#: Indices into the 478 landmarks whose ``(x, y)`` (pixels) form the
#: ``[146, 2]`` blendshape-model input, in that order.  The last ten
#: (468..477) are the iris landmarks.
LANDMARKS_SUBSET_IDXS: Tuple[int, ...] = (
    0, 1, 4, 5, 6, 7, 8, 10, 13, 14, 17, 21, 33, 37, 39,
    40, 46, 52, 53, 54, 55, 58, 61, 63, 65, 66, 67, 70, 78, 80,
    81, 82, 84, 87, 88, 91, 93, 95, 103, 105, 107, 109, 127, 132, 133,
    136, 144, 145, 146, 148, 149, 150, 152, 153, 154, 155, 157, 158, 159, 160,
    161, 162, 163, 168, 172, 173, 176, 178, 181, 185, 191, 195, 197, 234, 246,
    249, 251, 263, 267, 269, 270, 276, 282, 283, 284, 285, 288, 291, 293, 295,
    296, 297, 300, 308, 310, 311, 312, 314, 317, 318, 321, 323, 324, 332, 334,
    336, 338, 356, 361, 362, 365, 373, 374, 375, 377, 378, 379, 380, 381, 382,
    384, 385, 386, 387, 388, 389, 390, 397, 398, 400, 402, 405, 409, 415, 454,
    466, 468, 469, 470, 471, 472, 473, 474, 475, 476, 477,
)

# ---------------------------------------------------------------------------
# Face detectors (BlazeFace short range, and the full-range sparse model)
#
# Sources:
# * mediapipe/tasks/cc/vision/face_detector/face_detector_graph.cc:
#   ``ConfigureSsdAnchorsCalculator`` and
#   ``ConfigureTensorsToDetectionsCalculator`` "default settings for legacy
#   model without metadata" (the task bundle's face_detector.tflite carries
#   no FACE_DETECTOR_METADATA, so these defaults are what FaceLandmarker
#   uses), ``kShortRangeImageSize = 128``, ``kLongRangeImageSize = 192``,
#   ``ConfigureNonMaxSuppressionCalculator`` (IoU, WEIGHTED),
#   ``ConfigureDetectionsToRectsCalculator`` (rotation from keypoints 0 -> 1,
#   target angle 0) and ``ConfigureRectTransformationCalculator`` (scale 1.5).
# * mediapipe/tasks/cc/vision/face_detector/proto/
#   face_detector_graph_options.proto: min_detection_confidence and
#   min_suppression_threshold both default to 0.5.
# * mediapipe/modules/face_detection/face_detection_short_range.pbtxt,
#   face_detection_full_range.pbtxt and face_detection.pbtxt (the legacy
#   "solutions" graphs): same anchors and decoding; min_score_thresh 0.5
#   (short) / 0.6 (full); NMS min_suppression_threshold 0.3, IoU, WEIGHTED;
#   ImageToTensor keep_aspect_ratio true, BORDER_ZERO, float range [-1, 1].
# * mediapipe/python/solutions/face_detection.py ``FaceKeyPoint``: keypoint
#   order.
#
# Anchor facts (SsdAnchorsCalculator semantics): consecutive layers with the
# same stride share one feature map; each cell gets one anchor per aspect
# ratio plus one more when interpolated_scale_aspect_ratio > 0; with
# fixed_anchor_size the anchor width/height are 1 and centres are
# ((x + anchor_offset_x) / fm_w, (y + anchor_offset_y) / fm_h).  Short range:
# 16x16x2 (stride 8) + 8x8x6 (strides 16,16,16) = 896 anchors; full range:
# 48x48x1 (stride 4) = 2304.
#
# Decoding (TensorsToDetectionsCalculator with reverse_output_order=true):
# per anchor, raw[0:4] = (x_center, y_center, w, h) offsets, raw[4:16] = six
# (x, y) keypoints; x_center = raw[0] / x_scale * anchor_w + anchor_cx,
# w = raw[2] / w_scale * anchor_w (likewise y / h, and keypoints like
# centres); score = sigmoid(clip(logit, -score_clipping_thresh,
# +score_clipping_thresh)).  All results are normalized to the (letterboxed)
# model input.
# ---------------------------------------------------------------------------

#: Six BlazeFace keypoints, in model output order.
DETECTOR_KEYPOINT_NAMES: Tuple[str, ...] = (
    "right_eye", "left_eye", "nose_tip", "mouth_center",
    "right_ear_tragion", "left_ear_tragion",
)

_COMMON_DETECTOR = dict(
    input_range=(-1.0, 1.0),
    keep_aspect_ratio=True,  # letterbox with zeros (BORDER_ZERO)
    min_scale=0.1484375,
    max_scale=0.75,
    anchor_offset_x=0.5,
    anchor_offset_y=0.5,
    aspect_ratios=(1.0,),
    fixed_anchor_size=True,
    num_classes=1,
    num_coords=16,
    box_coord_offset=0,
    keypoint_coord_offset=4,
    num_keypoints=6,
    num_values_per_keypoint=2,
    sigmoid_score=True,
    score_clipping_thresh=100.0,
    reverse_output_order=True,
    # Tasks API (FaceDetector / FaceLandmarker) defaults:
    min_score_thresh=0.5,
    min_suppression_threshold=0.5,
    nms_overlap_type="INTERSECTION_OVER_UNION",
    nms_algorithm="WEIGHTED",
    # Detection -> face ROI for the landmark model:
    rect_rotation_keypoints=(0, 1),
    rect_target_angle_degrees=0.0,
    rect_scale=(1.5, 1.5),
)

#: Anchor generation and tensor decoding options, keyed ``"short"``
#: (face_detector.tflite / face_detection_short_range.tflite, 128x128) and
#: ``"full"`` (face_detection_full_range_sparse.tflite, 192x192).
#: ``legacy_min_score_thresh`` / ``legacy_min_suppression_threshold`` are the
#: values of the older mediapipe.solutions graphs.
DETECTOR_OPTIONS: Dict[str, Dict[str, object]] = {
    "short": dict(
        _COMMON_DETECTOR,
        input_size=(128, 128),  # (height, width)
        num_layers=4,
        strides=(8, 16, 16, 16),
        interpolated_scale_aspect_ratio=1.0,
        num_boxes=896,
        x_scale=128.0, y_scale=128.0, w_scale=128.0, h_scale=128.0,
        legacy_min_score_thresh=0.5,
        legacy_min_suppression_threshold=0.3,
    ),
    "full": dict(
        _COMMON_DETECTOR,
        input_size=(192, 192),
        num_layers=1,
        strides=(4,),
        interpolated_scale_aspect_ratio=0.0,
        num_boxes=2304,
        x_scale=192.0, y_scale=192.0, w_scale=192.0, h_scale=192.0,
        legacy_min_score_thresh=0.6,
        legacy_min_suppression_threshold=0.3,
    ),
}

# ---------------------------------------------------------------------------
# Face landmarks (FaceMesh v2 with irises, 478 points)
# Sources: mediapipe/tasks/cc/vision/face_landmarker/
# face_landmarks_detector_graph.cc (output tensor 0 = landmarks, tensor 1 =
# presence flag passed through SIGMOID and thresholded at
# min_detection_confidence 0.5; ROI from landmarks uses keypoints 33 -> 263,
# scale 1.5 and square_long), tensors_to_face_landmarks_graph.cc (478
# landmarks, normalized by the 256x256 input size) and
# mediapipe/calculators/tensor/tensors_to_landmarks_calculator.cc (x / width,
# y / height, z / width / normalize_z with normalize_z = 1).
# ---------------------------------------------------------------------------

NUM_LANDMARKS = 478
LANDMARK_INPUT_SIZE = (256, 256)  # (height, width)
LANDMARK_INPUT_RANGE = (0.0, 1.0)
#: Index of the TFLite output that MediaPipe turns into the presence score
#: (with a sigmoid); the model's third output is not used by MediaPipe.
LANDMARK_PRESENCE_OUTPUT_INDEX = 1
LANDMARK_MIN_PRESENCE = 0.5
LANDMARK_RECT_ROTATION_KEYPOINTS = (33, 263)
LANDMARK_RECT_SCALE = (1.5, 1.5)
