"""What every preset shares: the faces' stages (detection, landmarks, and the 3D read of the
landmarks) and the path of a call, ``run(images)`` -> faces -> ``results_from_landmarks``.

A preset (:class:`ig3d.pipelines.default.DefaultPipeline`, :class:`ig3d.pipelines.ig3d_presets.Ig3DPipeline`)
adds only its own networks after the landmarks; video tracking (:mod:`ig3d.pipelines.stream`) calls
:meth:`FacePipeline.detect`, :meth:`FacePipeline.landmarks_in`, :meth:`FacePipeline.refine` and
:meth:`FacePipeline.results_from_landmarks` of whichever preset it is given.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import numpy as np

from ..faces import landmarks as lmk
from ..faces.detect import FaceDetections
from ..faces.mediapipe_constants import LANDMARK_MIN_PRESENCE
from ..results import FaceResult
from .execution import Execution
from .stages import MIN_FACE_SIZE, Detection, FaceGeometry, Faces, Landmarks, Outputs

__all__ = ["FacePipeline"]


def _delegate(stage: str, attr: str, doc: str) -> property:
    """A pipeline attribute that is a stage's (read and replaced through the pipeline)."""
    return property(lambda self: getattr(getattr(self, stage), attr),
                    lambda self, v: setattr(getattr(self, stage), attr, v), doc=doc)


class FacePipeline:
    """Detection, landmarks and (``geometry=True``) blendshapes and head pose, on one
    :class:`Execution`; a preset subclasses it with its own :meth:`results_from_landmarks`."""

    labels: Tuple[str, ...] = ()

    def __init__(self, execution: Execution, *, min_face_size: Optional[int] = MIN_FACE_SIZE,
                 min_detection_confidence: Optional[float] = None,
                 min_face_presence_confidence: float = LANDMARK_MIN_PRESENCE,
                 outputs: Outputs = Outputs(), geometry: bool = True):
        self.execution = execution
        self.detection = Detection(execution, min_face_size=min_face_size, min_score=min_detection_confidence)
        self.landmarks = Landmarks(execution, min_presence=min_face_presence_confidence)
        self.geometry: Optional[FaceGeometry] = FaceGeometry(execution) if geometry else None
        self.outputs = outputs

    # what the execution and the stages hold, where callers have found it so far
    workers = property(lambda self: self.execution.workers, doc="the worker threads (engines.Workers)")
    threads_per_run = property(lambda self: self.execution.threads_per_run,
                               doc="threads inside a run that has the cores to itself")
    precisions = property(lambda self: self.execution.precisions, doc="network -> the precision it runs in")
    det_full = _delegate("detection", "det_full", "the full-range detector")
    det_short = _delegate("detection", "det_short", "the short-range detector")
    det_scan = _delegate("detection", "det_scan", "the full-range detector's session for the small-face scan")
    _small_faces = _delegate("detection", "_small_faces", "'scan' or 'tiles' (the benchmark's comparison)")
    _needs_scan = _delegate("detection", "_needs_scan", "whether an image of this size gets the small-face scan")
    _scanner = _delegate("detection", "_scanner", "the small-face scan's input maker")
    landmarker = _delegate("landmarks", "model", "the landmark model (engines.PerCoreModel)")
    blendshaper = _delegate("geometry", "model", "the blendshape model")

    @property
    def min_presence(self) -> float:
        """Face presence below which the landmark model's region holds no face."""
        return self.landmarks.min_presence

    # ---- the stages, as the video tracker and the tests call them -----------------------------
    def detect(self, images) -> List[Tuple[FaceDetections, np.ndarray]]:
        """Per image: merged detections and the mask of those only the full-range detector found
        (:meth:`ig3d.pipelines.stages.Detection.detect`)."""
        return self.detection.detect(images)

    def landmarks_in(self, images, owner: np.ndarray, rois: lmk.Rois, scores: np.ndarray, *,
                     tracking: bool = False) -> Faces:
        """The landmark model on given regions (:meth:`ig3d.pipelines.stages.Landmarks.run`;
        ``tracking``: the video tracker's call)."""
        return self.landmarks.run(images, owner, rois, scores, tracking=tracking)

    def refine(self, images, faces: Faces, mask: np.ndarray, *, tracking: bool = False) -> Faces:
        """The second landmark pass (:meth:`ig3d.pipelines.stages.Landmarks.refine`)."""
        return self.landmarks.refine(images, faces, mask, tracking=tracking)

    def _landmarks(self, images, dets: List[FaceDetections], rois: Optional[lmk.Rois] = None) -> Faces:
        return self.landmarks.from_detections(images, dets, rois)

    def _start_short(self, images):
        return self.detection._start_short(images)

    def _finish_short(self, pending, lbs):
        return self.detection._finish_short(pending, lbs)

    def _faces(self, images) -> Faces:
        """Every face with its landmark-model output (:meth:`detect`, then the landmark model, and a
        second pass for the faces only the full-range detector found: :meth:`refine`)."""
        found = self.detect(images)
        faces = self._landmarks(images, [d for d, _ in found])
        return self.refine(images, faces, np.concatenate([m for _, m in found] + [np.zeros(0, bool)]))

    def run(self, images: Sequence[np.ndarray], *, aligned: bool = False) -> List[List[FaceResult]]:
        """Faces per image, largest first. ``aligned=True``: each image is one pre-aligned face crop
        (datasets such as RAF-DB's aligned images): detection is skipped (an image whose crop shows
        no face mesh still gives [])."""
        if not images:
            return []
        faces = self.landmarks.aligned(images) if aligned else self._faces(images)
        keep = faces.presence >= self.landmarks.min_presence  # the detector's false positives have no face mesh
        if not np.any(keep):
            return [[] for _ in images]
        faces = faces.take(keep)
        return self.results_from_landmarks(images, faces.owner, faces.scores,
                                           lmk.landmarks_to_image(faces.landmarks, faces.Minv), aligned=aligned)

    def results_from_landmarks(self, images, owner: np.ndarray, scores: np.ndarray, lm: np.ndarray, *,
                               aligned: bool = False,
                               track_ids: Optional[Sequence[Optional[int]]] = None) -> List[List[FaceResult]]:
        """Everything after the landmark model for faces given by their landmarks ``lm`` ``[N, 478, 3]``
        (image pixels) in ``images[owner[k]]``: one list of :class:`FaceResult` per image, largest
        face first. Still images and video frames (whose landmarks may be smoothed) both come here."""
        raise NotImplementedError
