"""The ``default`` preset: MediaPipe's face detectors, landmark and blendshape models (the 3D
branch) and fer's mini-Xception (the 2D branch), all as bundled ONNX files, fused by the default
prior head (:mod:`ig3d.prior`) in the C++ fused head.

Stages (:mod:`ig3d.pipelines.stages`): detection -> landmarks -> blendshapes and head pose, and
mini-Xception on its crop at the same time -> the fused head -> results. Every face of every image
in a call travels together through each stage, and one fused-head call serves the whole call. How a
stage runs depends on the device (:mod:`ig3d.pipelines.execution`): on a GPU one batched run per
network; on the CPU one single-threaded run per face spread over the cores, which measured about 2x
faster there than one batched run. A face's result does not depend on the other images in the call.
"""

from __future__ import annotations

from typing import List, Mapping, Optional, Sequence, Union

import numpy as np

from .. import prior
from ..faces.mediapipe_constants import LANDMARK_MIN_PRESENCE
from ..fusion import FusedHead
from ..results import FaceResult
from .base import FacePipeline, _delegate
from .execution import Execution
from .stages import (BF16_GATED, CONTAINED_SHARE, FER_CROP_SCALE, FER_SIZE, MERGE_IOU,  # noqa: F401
                     MIN_FACE_SIZE, PROPOSE_SCORE, SCAN_FACE_PIXELS, TILE_FACE_PIXELS, ZOOM_FACE_PIXELS,
                     FaceArrays, Faces, FerBranch, HeadStage, Outputs, _inside_larger, _new_faces, _tiles,
                     asset_path, build_results, softmax)

__all__ = ["PRESETS", "DefaultPipeline", "asset_path", "BF16_GATED", "MIN_FACE_SIZE"]

PRESETS = ("default",)

_Faces = Faces  # the name earlier releases used


class DefaultPipeline(FacePipeline):
    """The default preset. ``run(images)`` takes RGB uint8 arrays and returns one list of
    :class:`FaceResult` per image, largest face first.

    Faces come from two detectors run at the same time: the full-range detector on the whole
    image and, for large images, once more over the whole image at a larger scale (small and
    distant faces), plus MediaPipe's short-range detector with the FaceLandmarker task's thresholds
    (close-ups and whole-frame faces); see :class:`ig3d.pipelines.stages.Detection`. On the CPU every
    face (and every detector view) is its own single-threaded run, spread over the cores together
    with its crop, except that a call's only face runs the landmark model on all cores; on a GPU
    each network gets one batched run per call (:class:`ig3d.pipelines.execution.Execution`).

    ``execution``: an :class:`Execution` to share (its settings then replace ``backend`` ...
    ``threads_per_run``); ``min_detection_confidence``, ``min_face_presence_confidence``, ``outputs``:
    see :class:`ig3d.PredictorOptions`.
    """

    labels = prior.LABELS

    def __init__(self, *, backend: str = "onnxruntime", device: str = "cpu", threads: Optional[int] = None,
                 head: Optional[FusedHead] = None, head_device: str = "cpu",
                 min_face_size: Optional[int] = MIN_FACE_SIZE, precision: Union[str, Mapping[str, str]] = "fp32",
                 parallel_runs: Optional[int] = None, threads_per_run: Optional[int] = None,
                 min_detection_confidence: Optional[float] = None,
                 min_face_presence_confidence: float = LANDMARK_MIN_PRESENCE, outputs: Outputs = Outputs(),
                 execution: Optional[Execution] = None):
        if execution is None:
            execution = Execution(backend=backend, device=device, threads=threads, parallel_runs=parallel_runs,
                                  threads_per_run=threads_per_run, precision=precision)
        super().__init__(execution, min_face_size=min_face_size, min_detection_confidence=min_detection_confidence,
                         min_face_presence_confidence=min_face_presence_confidence, outputs=outputs)
        self.fer_branch = FerBranch(execution)
        h = head if head is not None else prior.default_head()
        if (h.input_dim != len(prior.PARAMS3D_NAMES) or h.num_classes < 1
                or h.scores2d_dim not in (0, len(prior.FER_LABELS))):
            raise ValueError(f"head: the default preset needs a head with input_dim={len(prior.PARAMS3D_NAMES)}, "
                             f"num_classes >= 1 and, when it late-fuses, the {len(prior.FER_LABELS)} mini-Xception "
                             f"scores; got {h!r}")
        if h.labels is None and h.num_classes != len(prior.LABELS):
            raise ValueError(f"head: a {h.num_classes}-class head needs class names (labels) for the default preset")
        self.head_stage = HeadStage(execution, h, head_device)
        #: the head's classes (the prior's 7, or those a trained head was trained on)
        self.labels = tuple(h.labels) if h.labels else prior.LABELS
        fer_names = [prior.LABELS[i] for i in prior.FER_TO_LABELS]
        #: mini-Xception column k -> position in self.labels (-1: a class the head does not have)
        self._fer_cols = np.array([self.labels.index(n) if n in self.labels else -1 for n in fer_names])
        #: self.labels -> the prior's label order, for the prior's valence/arousal mapping
        self._to_prior = np.array([prior.LABELS.index(n) if n in prior.LABELS else -1 for n in self.labels])

    fer = _delegate("fer_branch", "model", "mini-Xception")
    head = _delegate("head_stage", "head", "the fused head (FusedHead)")
    head_device = _delegate("head_stage", "device", "where the fused head runs")

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

    def results_from_landmarks(self, images, owner: np.ndarray, scores: np.ndarray, lm: np.ndarray, *,
                               aligned: bool = False,
                               track_ids: Optional[Sequence[Optional[int]]] = None) -> List[List[FaceResult]]:
        """Everything after the landmark model, for faces given by their landmarks ``lm``
        ``[N, 478, 3]`` (image pixels) in ``images[owner[k]]``: blendshapes, head pose, the 2D
        network on its crop, the fused head, and the :class:`FaceResult` objects, one list per
        image, largest face first. Still images and video frames (whose landmarks may be
        smoothed) both go through here."""
        owner = np.asarray(owner)
        geometry = self.geometry.start(lm)
        fer = self.fer_branch.start(images, owner, lm)  # 2D branch, while the blendshapes run
        bs, angles = geometry.result()
        params3d = np.concatenate([bs, angles.astype(np.float32)], axis=1)
        logits_fer = fer.result()

        # fused head: normalise, 3D head, late fusion, softmax - one C++ call for every face
        fused = self.head_stage(params3d, logits_fer)
        C = len(self.labels)
        logits_2d = np.full((len(lm), C), -np.inf, np.float32)  # a class mini-Xception lacks: probability 0
        have = self._fer_cols >= 0
        logits_2d[:, self._fer_cols[have]] = logits_fer[:, have]
        logits_3d = fused.out3d[:, :C]
        # a head trained with valence/arousal outputs gives its own; otherwise the prior's mapping,
        # which moves with the blendshapes' action-unit activations
        va = fused.va if fused.va is not None else prior.valence_arousal(self._prior_probs(fused.probs), bs)
        return build_results(len(images), FaceArrays(
            owner=owner, scores=scores, landmarks=lm, blendshapes=bs, angles=angles, params3d=params3d,
            probs=fused.probs, va=va, logits_2d=logits_2d, logits_3d=logits_3d, probs_2d=softmax(logits_2d),
            probs_3d=softmax(logits_3d), scores2d_raw=logits_fer, track_ids=track_ids), self.labels, self.outputs)
