"""Video and camera streams: faces tracked from frame to frame, with track ids and smoothing.

``Predictor.stream(source)`` iterates :class:`FrameResult` ``(index, timestamp, faces)`` over a
video file, a camera or any iterable of frames (:mod:`ig3d.video`); ``Predictor.tracker()`` gives
the same :class:`Tracker` for apps that own their loop (``faces = tracker.update(frame, t)``).
Both run the image path's stages of whichever preset the predictor has (the detectors and the
landmark model, then that preset's own networks through its ``results_from_landmarks``: blendshapes,
head pose, mini-Xception and the prior head for ``default``; the encoders and their head for the Ig3D
presets); what differs is where the landmark model looks and what happens to its outputs over time.

Tracking follows MediaPipe's FaceLandmarker in VIDEO mode (google-ai-edge/mediapipe:
mediapipe/tasks/cc/vision/face_landmarker/face_landmarker_graph.cc and
face_landmarks_detector_graph.cc; read for behaviour, code not copied):

* the landmark region of frame t+1 comes from frame t's raw (unsmoothed) landmarks: their bounding
  box, rotated by the eye corners 33 -> 263, squared and scaled 1.5x
  (:func:`ig3d.faces.landmarks.rois_from_landmarks`);
* a face is lost when the landmark model's face presence falls below 0.5;
* the detectors run on the first frame, and while fewer than ``max_faces`` faces are tracked.

Where ig3d goes beyond MediaPipe (what its users ask for, mediapipe#1634, #1690, #6010, #5253):

* every face has a ``track_id``, kept while the face stays tracked; a face that comes back after
  being lost gets a new one (ids count up from 0 and restart at :meth:`Tracker.reset`);
* while fewer than ``max_faces`` faces are tracked the detectors run every ``detect_every``
  frames, not on every frame (MediaPipe runs them on every frame then: with ``num_faces=2`` and
  one face in view, on all of them). They also run on the very frame where a face is lost (or
  their detections of that frame are used again): a face found there whose centre lies in the
  region where the lost face was looked for continues its track (same id, no frame without it),
  so a quick movement that outruns the landmark region does not drop the face or change its id;
* a detection never duplicates a tracked face (it is dropped when it overlaps one: IoU above 0.3
  or its centre inside the face's box), and two tracks that converge on one face (one face passing
  in front of another) become one: the track whose box moved least keeps it;
* every tracked face is smoothed (:mod:`ig3d.smoothing`), not only a lone one; ``reset()`` starts
  a new sequence with no state left (the same frames then give the same results).

Timestamps are seconds and must increase from frame to frame (a ``ValueError`` names the frame
otherwise); the filters use them, so a variable frame rate is handled.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

from ..faces import detect, landmarks as lmk
from ..faces.mediapipe_constants import LANDMARK_MIN_PRESENCE
from ..io import load_image
from ..results import FaceResult
from ..smoothing import FaceSmoother, Smoothing, resolve_smoothing
from ..video import DEFAULT_FPS, FrameSource, check_timestamp

__all__ = ["FrameResult", "Tracker", "Stream", "draw_frame", "MAX_FACES", "DETECT_EVERY"]

#: Default number of faces tracked at once.
MAX_FACES = 4
#: Default detector period (frames) while fewer than ``max_faces`` faces are tracked.
DETECT_EVERY = 10
#: A detection overlapping a tracked face by more than this IoU (or with its centre inside the
#: face's box) is that face (the rule that merges the two detectors' faces on images).
DETECTION_OVERLAP_IOU = 0.3
#: Two tracks whose boxes overlap by more than this IoU hold the same face (MediaPipe's
#: association threshold, ``min_tracking_confidence`` 0.5).
TRACK_DUPLICATE_IOU = 0.5


@dataclass
class FrameResult:
    """One frame of a stream: its position in the source, its time in seconds, and its faces
    (largest first, each with its ``track_id``; ``[]`` when there is none). ``image``: the frame
    itself (RGB uint8) with ``stream(..., with_images=True)``, e.g. for :func:`draw_frame`; None
    otherwise, so that keeping the results of a long video does not keep its frames."""

    index: int
    timestamp: float
    faces: List[FaceResult] = field(default_factory=list)
    image: Optional[np.ndarray] = field(default=None, repr=False, compare=False)

    def to_dict(self, *, landmarks: bool = False) -> Dict[str, Any]:
        """Plain Python types (one JSON Lines row in ``ig3d predict VIDEO --json``)."""
        return {"index": int(self.index), "timestamp": float(self.timestamp),
                "faces": [f.to_dict(landmarks=landmarks) for f in self.faces]}


def _boxes(lm: np.ndarray) -> np.ndarray:
    """``[N, 4]`` bounding boxes of ``[N, L, 2|3]`` landmarks."""
    lm = np.asarray(lm, np.float64)
    if lm.size == 0:
        return np.zeros((0, 4))
    return np.concatenate([lm[:, :, :2].min(axis=1), lm[:, :, :2].max(axis=1)], axis=1)


def _centre(lm: np.ndarray) -> np.ndarray:
    """Centre of the bounding box of one face's landmarks ``[L, 2|3]``."""
    xy = np.asarray(lm, np.float64)[:, :2]
    return (xy.min(axis=0) + xy.max(axis=0)) / 2


def _overlaps(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``[len(a), len(b)]``: box a overlaps box b by IoU above :data:`DETECTION_OVERLAP_IOU`, or
    a's centre lies inside b."""
    a, b = np.asarray(a, np.float64).reshape(-1, 4), np.asarray(b, np.float64).reshape(-1, 4)
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)), bool)
    c = (a[:, :2] + a[:, 2:]) / 2
    inside = ((c[:, None, 0] >= b[None, :, 0]) & (c[:, None, 0] <= b[None, :, 2])
              & (c[:, None, 1] >= b[None, :, 1]) & (c[:, None, 1] <= b[None, :, 3]))
    return (detect.iou_matrix(a, b) > DETECTION_OVERLAP_IOU) | inside


def _cat_rois(parts: Sequence[lmk.Rois]) -> lmk.Rois:
    parts = [p for p in parts if len(p)]
    if not parts:
        return lmk.Rois(np.zeros((0, 2)), np.zeros((0, 2)), np.zeros(0))
    return lmk.Rois(np.concatenate([p.center for p in parts]), np.concatenate([p.size for p in parts]),
                    np.concatenate([p.angle for p in parts]))


@dataclass
class _Track:
    id: int
    raw: np.ndarray            # this frame's raw landmarks [478, 3]: the next frame's region
    score: float               # the detector's score when the track started
    smoother: Optional[FaceSmoother]


@dataclass
class _Candidate:
    """A face found in the current frame: a continuing track, or a new detection."""

    raw: np.ndarray
    score: float
    track: Optional[_Track] = None
    moved: float = 0.0         # IoU of its box with the track's previous box (1 = did not move)


class Tracker:
    """Faces tracked over a sequence of frames (the push API: ``faces = tracker.update(frame, t)``).

    Args:
        pipeline: the predictor's pipeline (:class:`ig3d.pipelines.base.FacePipeline`: the default
            preset's or an Ig3D preset's).
        max_faces: most faces tracked at once (default 4). Detections beyond it are ignored,
            highest detector scores first.
        smoothing: ``"default"`` (:class:`ig3d.smoothing.Smoothing` ()), a :class:`Smoothing`,
            a dict of its fields, or ``None`` for each frame's raw outputs.
        detect_every: while fewer than ``max_faces`` faces are tracked, the detectors run every
            this many frames (default 10; 1 = every frame, as MediaPipe does).
        color: ``"rgb"``, or ``"bgr"`` for OpenCV frames.
        fps: spacing of frames given without a timestamp (default 30 frames/s).
    """

    def __init__(self, pipeline, *, max_faces: int = MAX_FACES, smoothing: Any = "default",
                 detect_every: int = DETECT_EVERY, color: str = "rgb", fps: Optional[float] = None):
        if isinstance(max_faces, bool) or not isinstance(max_faces, (int, np.integer)) or max_faces < 1:
            raise ValueError(f"max_faces: expected a positive int, got {max_faces!r}")
        if isinstance(detect_every, bool) or not isinstance(detect_every, (int, np.integer)) or detect_every < 1:
            raise ValueError(f"detect_every: expected a positive int (frames), got {detect_every!r}")
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color: expected 'rgb' or 'bgr', got {color!r}")
        if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: expected a positive number of frames per second, got {fps!r}")
        self.pipeline = pipeline
        # a lone tracked face's landmark session on its own runtime (backend="auto" with OpenVINO):
        # made now, not in the first frame's time
        pipeline.landmarks.tracking_model()
        self.max_faces, self.detect_every = int(max_faces), int(detect_every)
        self.smoothing: Optional[Smoothing] = resolve_smoothing(smoothing)
        self.color, self.fps = color, float(fps) if fps else DEFAULT_FPS
        self.reset()

    def reset(self) -> None:
        """Forget every track, filter and timestamp: the next frame starts a new sequence (ids
        from 0 again, the detectors run on it)."""
        self._tracks: List[_Track] = []
        self._next_id = 0
        self._frames = 0
        self._since_detect = 0
        self._last_t: Optional[float] = None

    @property
    def track_ids(self) -> List[int]:
        """Ids of the faces tracked after the last frame."""
        return [t.id for t in self._tracks]

    # -----------------------------------------------------------------------------------------
    @staticmethod
    def _new_detections(found, avoid: np.ndarray, room: int):
        """The frame's detections ``found`` (the pipeline's ``detect``) that overlap none of the
        boxes ``avoid``, at most ``room``, best scores first: (Rois, scores, boxes, mask of those only
        the full-range detector found)."""
        dets, full_only = found
        keep = ~np.any(_overlaps(dets.boxes, avoid), axis=1) if len(dets) else np.zeros(0, bool)
        idx = np.flatnonzero(keep)
        idx = idx[np.argsort(-dets.scores[idx], kind="stable")][:max(room, 0)]
        rois = lmk.rois_from_detections(dets.boxes[idx], dets.keypoints[idx])
        return rois, dets.scores[idx].astype(np.float32), dets.boxes[idx], full_only[idx]

    def _landmarks(self, images, rois: lmk.Rois, scores: np.ndarray, refine: np.ndarray):
        """Raw landmarks (image pixels) and presence for ``rois`` (one landmark batch), with the
        second pass for the faces of ``refine``."""
        pipe = self.pipeline
        faces = pipe.landmarks_in(images, np.zeros(len(rois), np.int64), rois, scores, tracking=True)
        faces = pipe.refine(images, faces, refine, tracking=True)
        return lmk.landmarks_to_image(faces.landmarks, faces.Minv), faces.presence

    def update(self, frame: Any, timestamp: Optional[float] = None) -> List[FaceResult]:
        """The faces of the next frame (largest first, each with its ``track_id``). ``timestamp``
        in seconds must be greater than the previous frame's; without one the frame is
        ``1 / fps`` after the previous one."""
        try:
            image = load_image(frame, color=self.color)
        except (ValueError, FileNotFoundError) as e:
            raise type(e)(f"frame {self._frames}: {e}") from None
        t = check_timestamp("", self._frames, self._frames / self.fps if timestamp is None else timestamp,
                            self._last_t, " (call reset() to start a new sequence)")
        images = [image]
        tracks = self._tracks
        prev_boxes = _boxes(np.stack([tr.raw for tr in tracks])) if tracks else np.zeros((0, 4))

        # 1. the detectors: first frame, and every detect_every frames while faces are missing
        self._since_detect += 1
        due = self._frames == 0 or (len(tracks) < self.max_faces and self._since_detect >= self.detect_every)
        found = self.pipeline.detect(images)[0] if due else None
        if due:
            det_rois, det_scores, _, det_refine = self._new_detections(found, prev_boxes, self.max_faces - len(tracks))
        else:
            det_rois, det_scores, det_refine = _cat_rois([]), np.zeros(0, np.float32), np.zeros(0, bool)

        # 2. one landmark batch: tracked faces in the regions from their last landmarks, new ones
        #    in their detections' regions (a second pass for those only the full-range detector found)
        n_tr = len(tracks)
        rois = _cat_rois([lmk.rois_from_landmarks(np.stack([tr.raw for tr in tracks])) if tracks else _cat_rois([]),
                          det_rois])
        scores = np.concatenate([np.array([tr.score for tr in tracks], np.float32), det_scores])
        refine = np.concatenate([np.zeros(n_tr, bool), det_refine])
        lm, presence = self._landmarks(images, rois, scores, refine) if len(rois) else (np.zeros((0, 478, 3)),
                                                                                       np.zeros(0))
        min_presence = getattr(self.pipeline, "min_presence", LANDMARK_MIN_PRESENCE)
        ok = presence >= min_presence
        boxes = _boxes(lm)
        cands: List[_Candidate] = []
        lost: List[int] = []
        for k, tr in enumerate(tracks):
            if ok[k]:
                moved = float(detect.iou_matrix(boxes[k:k + 1], prev_boxes[k:k + 1])[0, 0])
                cands.append(_Candidate(lm[k], tr.score, tr, moved))
            else:
                lost.append(k)
        cands += [_Candidate(lm[k], float(scores[k])) for k in range(n_tr, len(rois)) if ok[k]]

        # 3. a face lost on this frame: the detectors look for it at once (or their detections of this
        #    frame are used again); a new face whose centre lies in the region where a lost face was
        #    looked for continues that face's track
        if lost:
            if found is None:
                found = self.pipeline.detect(images)[0]
            avoid = _boxes(np.stack([c.raw for c in cands])) if cands else np.zeros((0, 4))
            d_rois, d_scores, _, d_refine = self._new_detections(found, avoid, self.max_faces - len(cands))
            if len(d_rois):
                d_lm, d_presence = self._landmarks(images, d_rois, d_scores, d_refine)
                cands += [_Candidate(d_lm[j], float(d_scores[j])) for j in range(len(d_rois))
                          if d_presence[j] >= min_presence]
            # where each lost face was looked for: its region from the previous landmarks (upright box)
            regions = lmk.rois_from_landmarks(np.stack([tracks[k].raw for k in lost]))
            for i, k in enumerate(lost):
                new = [c for c in cands if c.track is None]
                d = np.array([_centre(c.raw) - regions.center[i] for c in new]).reshape(-1, 2)
                inside = np.flatnonzero(np.all(np.abs(d) <= regions.size[i] / 2, axis=1))
                if inside.size:
                    c = new[inside[np.argmin(np.linalg.norm(d[inside], axis=1))]]
                    c.track, c.score = tracks[k], tracks[k].score
            due = True
        if due:
            self._since_detect = 0

        # 4. one face, one track: continuing tracks first (the one that moved least), then new faces
        order = sorted(range(len(cands)), key=lambda i: (cands[i].track is None, -cands[i].moved))
        cands = [cands[i] for i in order]
        cboxes = _boxes(np.stack([c.raw for c in cands])) if cands else np.zeros((0, 4))
        iou = detect.iou_matrix(cboxes, cboxes) if cands else np.zeros((0, 0))
        kept: List[int] = []
        for i in range(len(cands)):
            if all(iou[i, j] <= TRACK_DUPLICATE_IOU for j in kept):
                kept.append(i)
        cands = [cands[i] for i in kept[:self.max_faces]]

        # 5. tracks: continuing ones keep id and filters, new faces get the next ids
        new_tracks: List[_Track] = []
        for c in cands:
            tr = c.track
            if tr is None:
                tr = _Track(self._next_id, c.raw, c.score, FaceSmoother(self.smoothing) if self.smoothing else None)
                self._next_id += 1
            tr.raw = c.raw
            new_tracks.append(tr)
        self._tracks = new_tracks
        self._frames += 1
        self._last_t = t
        if not new_tracks:
            return []

        # 6. the image path's stages on the (smoothed) landmarks; one entry per face in ``images``
        #    so that each face's result comes back in its own list
        raw = np.stack([tr.raw for tr in new_tracks]).astype(np.float32)
        shown = raw if self.smoothing is None else np.stack(
            [tr.smoother.smooth_landmarks(tr.raw, t) for tr in new_tracks]).astype(np.float32)
        n = len(new_tracks)
        per_face = self.pipeline.results_from_landmarks(
            [image] * n, np.arange(n), np.array([tr.score for tr in new_tracks], np.float32), shown,
            track_ids=[tr.id for tr in new_tracks])
        out = []
        for (face,), tr in zip(per_face, new_tracks):
            if self.smoothing is not None and self.smoothing.scores_time_constant > 0:
                _smooth_scores(face, tr.smoother, t)
            out.append(face)
        out.sort(key=lambda f: -f.area)
        return out


def _smooth_scores(face: FaceResult, smoother: FaceSmoother, t: float) -> None:
    """Exponential filter on the face's class probabilities (fused and per branch) and its
    valence/arousal; labels follow the filtered probabilities. Logits stay the frame's own."""
    for name, label_attr in (("scores", "label"), ("scores_2d", "label_2d"), ("scores_3d", "label_3d")):
        d = getattr(face, name)
        if not d:
            continue
        keys = list(d)
        v = np.array([d[k] for k in keys], np.float64)
        if not np.all(np.isfinite(v)):
            continue
        s = smoother.smooth(name, v, t)
        setattr(face, name, dict(zip(keys, map(float, s))))
        setattr(face, label_attr, keys[int(np.argmax(s))])
    va = np.array([face.valence, face.arousal], np.float64)
    if np.all(np.isfinite(va)):
        face.valence, face.arousal = map(float, smoother.smooth("va", va, t))


class Stream:
    """Iterator of :class:`FrameResult` over a source (``Predictor.stream``). ``source`` is the
    :class:`ig3d.video.FrameSource` (``skipped``, ``dropped``, ``frames``, ``fps``); ``close()``
    (or leaving a ``with`` block) stops the decoding."""

    def __init__(self, tracker: Tracker, source: FrameSource, *, with_images: bool = False):
        self.tracker, self.source, self.with_images = tracker, source, bool(with_images)
        self._it: Optional[Iterator] = None
        self._closed = False

    def __iter__(self) -> Iterator[FrameResult]:
        return self

    def __next__(self) -> FrameResult:
        if self._closed:
            raise StopIteration
        if self._it is None:
            self._it = iter(self.source)
        try:
            frame = next(self._it)
        except StopIteration:
            self.close()
            raise
        faces = self.tracker.update(frame.image, frame.timestamp)
        return FrameResult(frame.index, frame.timestamp, faces, frame.image if self.with_images else None)

    def close(self) -> None:
        self._closed = True
        it, self._it = self._it, None
        if it is not None and hasattr(it, "close"):
            it.close()
        self.source.close()

    def __enter__(self) -> "Stream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def draw_frame(image: np.ndarray, faces: Sequence[FaceResult]) -> np.ndarray:
    """``image`` (RGB uint8) with :func:`ig3d.overlay.draw_overlay`'s boxes, landmarks and score
    bars, and each face's track id in a tag at its box's top-right corner."""
    from PIL import ImageDraw

    from ..overlay import _font, draw_overlay

    img = draw_overlay(image, faces)
    draw = ImageDraw.Draw(img, "RGBA")
    for f in faces:
        if f.track_id is None:
            continue
        x0, y0, x1, y1 = (float(v) for v in f.box)
        font = _font(int(max(11, min(24, (x1 - x0) / 8))))
        text = f"#{f.track_id}"
        tb = draw.textbbox((0, 0), text, font=font)
        w, h = tb[2] - tb[0] + 8, tb[3] - tb[1] + 6
        x, y = max(0.0, x1 - w), min(max(0.0, y0), img.height - h)
        draw.rectangle([x, y, x + w, y + h], fill=(0, 0, 0, 190))
        draw.text((x + 4, y + 1 - tb[1]), text, fill=(255, 255, 255, 255), font=font)
    return np.asarray(img)
