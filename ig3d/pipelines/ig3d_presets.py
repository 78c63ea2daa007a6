"""The Ig3D presets: the paper's networks (EMOCA or SMIRK for the 3D face, DDAMFN++ or CAGE for the
2D branch) with weights a user supplies, fused by a 3D head in the fused kernel.

Each face goes: the detectors and the landmark model (the stages the default preset uses too), with
the blendshapes and head pose that :class:`ig3d.FaceResult` carries -> one crop per encoder, each by
its own upstream convention (:mod:`ig3d.faces.align`) -> the 3D encoder's ONNX file (FLAME parameters,
the Ig3D vector) and the 2D encoder's ONNX file (logits and its 512-d feature) -> the head
(:class:`ig3d.FusedHead`: late fusion with the 2D logits, or intermediate fusion with the 2D
feature, as the head file says) -> :class:`ig3d.FaceResult` with the FLAME parameters. The default
preset's own networks (mini-Xception and its prior head) are not loaded, nor run.

Weights: ``weights={"smirk": ..., "ddamfn": ..., "head": ...}`` maps each part to a file (an
``.onnx`` file, or the folder ``ig3d convert`` wrote; the head: an ``.npz`` from
``FusedHead.save``). A part not given is looked for in ``$IG3D_HOME/weights/<part>/`` (the head in
``$IG3D_HOME/weights/<preset>/head.npz``). Every missing file is named in one error, each with where
to obtain it and the ``ig3d convert`` command to run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from ..faces.mediapipe_constants import LANDMARK_MIN_PRESENCE
from ..fusion import FusedHead
from ..hub import HOW_TO_GET, weights_dir
from ..labels import AFFECTNET7_LABELS, AFFECTNET8_LABELS
from ..results import FaceResult
from .base import FacePipeline, _delegate
from .execution import Execution
from .stages import (MIN_FACE_SIZE, Encoders, FaceArrays, HeadStage, Outputs, build_results, by_image_then_size,
                     device_columns, encoder_crops, softmax, to_device)

__all__ = ["IG3D_PRESETS", "Ig3DPipeline", "BF16_GATED"]

#: preset -> (3D encoder, 2D encoder, width of the encoder's raw 3D vector)
IG3D_PRESETS: Dict[str, tuple] = {
    "ig3d-smirk-ddamfn": ("smirk", "ddamfn", 358),
    "ig3d-emoca-ddamfn": ("emoca", "ddamfn", 334),
    "ig3d-emoca-cage": ("emoca", "cage", 334),
    "ig3d-smirk-cage": ("smirk", "cage", 358),
}

#: The encoders that run in bf16 when a Predictor asks for ``precision="bf16"``: those whose bf16
#: outputs pass the accuracy gates on the shared photos' crops; the others stay fp32. None yet: the
#: gates have only been run with random weights (SMIRK's params_full moved 4.4e-2 of its scale there),
#: which say nothing about trained ones. ``precision={"emoca": "bf16"}`` opts one in explicitly.
BF16_GATED: frozenset = frozenset()



def _resolve(preset: str, weights: Mapping[str, Union[str, os.PathLike, FusedHead]]) -> Dict[str, object]:
    enc3d, enc2d, _ = IG3D_PRESETS[preset]
    found: Dict[str, object] = {}
    missing: List[str] = []
    for part in (enc3d, enc2d, "head"):
        given = weights.get(part)
        if isinstance(given, FusedHead):
            found[part] = given
            continue
        if given is None:
            path = weights_dir() / (preset if part == "head" else part) / ("head.npz" if part == "head" else f"{part}.onnx")
        else:
            path = Path(given)
            if path.is_dir():
                path = path / ("head.npz" if part == "head" else f"{part}.onnx")
        if path.is_file():
            found[part] = path
        else:
            how = HOW_TO_GET["ig3d-head" if part == "head" else part]
            missing.append(f"- {part}: {path} not found. {how}")
    if missing:
        raise FileNotFoundError(f"preset {preset!r} is missing {len(missing)} weight file(s):\n" + "\n".join(missing))
    return found


class Ig3DPipeline(FacePipeline):
    """One Ig3D preset. ``run(images)`` -> one list of :class:`FaceResult` per image.

    ``execution``: an :class:`Execution` to share (its settings then replace ``backend`` ...
    ``threads_per_run``); the other keywords as for :class:`ig3d.pipelines.default.DefaultPipeline`.
    With ``outputs.blendshapes`` False the blendshape model and the pose fit do not run either (the
    head reads the 3D encoder's vector, not them).
    """

    def __init__(self, preset: str, *, weights: Mapping[str, object], backend: str = "onnxruntime",
                 device: str = "cpu", threads: Optional[int] = None, head_device: str = "cpu",
                 precision: Union[str, Mapping[str, str]] = "fp32", parallel_runs: Optional[int] = None,
                 threads_per_run: Optional[int] = None, min_face_size: Optional[int] = MIN_FACE_SIZE,
                 min_detection_confidence: Optional[float] = None,
                 min_face_presence_confidence: float = LANDMARK_MIN_PRESENCE, outputs: Outputs = Outputs(),
                 execution: Optional[Execution] = None):
        if preset not in IG3D_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(IG3D_PRESETS)}, got {preset!r}")
        self.preset = preset
        self.enc3d_name, self.enc2d_name, self.d_raw = IG3D_PRESETS[preset]
        found = _resolve(preset, weights)
        if execution is None:
            execution = Execution(backend=backend, device=device, threads=threads, parallel_runs=parallel_runs,
                                  threads_per_run=threads_per_run, precision=precision)
        super().__init__(execution, min_face_size=min_face_size, min_detection_confidence=min_detection_confidence,
                         min_face_presence_confidence=min_face_presence_confidence, outputs=outputs,
                         geometry=outputs.blendshapes)
        #: the two encoders, on this pipeline's workers (see ig3d.pipelines.stages.Encoders)
        self.encoders = Encoders(execution, (self.enc3d_name, found[self.enc3d_name]),
                                 (self.enc2d_name, found[self.enc2d_name]), BF16_GATED)
        head = found["head"]
        head = head if isinstance(head, FusedHead) else FusedHead.load(head)
        if head.input_dim != self.d_raw:
            raise ValueError(f"head: {preset} feeds the head the {self.enc3d_name} vector of {self.d_raw} values, "
                             f"but the head expects input_dim={head.input_dim}")
        self.head_stage = HeadStage(execution, head, head_device)
        C = head.num_classes
        self.labels = tuple(head.labels) if head.labels else (
            AFFECTNET8_LABELS if C == 8 else AFFECTNET7_LABELS if C == 7 else tuple(f"class{i}" for i in range(C)))

    enc3d = _delegate("encoders", "enc3d", "the 3D encoder (engines.PerCoreModel)")
    enc2d = _delegate("encoders", "enc2d", "the 2D encoder (engines.PerCoreModel)")
    head = _delegate("head_stage", "head", "the fused head (FusedHead)")
    head_device = _delegate("head_stage", "device", "where the fused head runs")

    def _crops(self, images: Sequence[np.ndarray], owner: np.ndarray, lm: np.ndarray, encoder: str,
               threads: int = 0, aligned: bool = False) -> np.ndarray:
        """:func:`ig3d.pipelines.stages.encoder_crops` (needs no pipeline: ``self`` may be None)."""
        return encoder_crops(images, owner, lm, encoder, threads, aligned)

    def _runs(self, n: int) -> int:
        """:meth:`ig3d.pipelines.stages.Encoders.runs`."""
        return self.encoders.runs(n)

    def _fed_columns(self, width: int) -> Optional[Tuple[int, int]]:
        """The columns of the 2D network's ``width`` scores the head late-fuses: None for all of them
        (or none), else CAGE's logits (0:8) or VA part (8:10)."""
        k = self.head.scores2d_dim
        if k == 0 or k == width:
            return None
        if self.enc2d_name == "cage" and width == 10 and k in (2, 8):
            return (8, 10) if k == 2 else (0, 8)
        raise ValueError(f"head: it late-fuses {k} 2D scores, but {self.enc2d_name} gives {width}")

    def _fed_scores(self, raw: np.ndarray) -> np.ndarray:
        """The 2D scores the head late-fuses: all of them, or CAGE's logits / VA part."""
        cols = self._fed_columns(raw.shape[1])
        return raw if cols is None else raw[:, cols[0]:cols[1]]

    def _encoders_and_head(self, images, owner: np.ndarray, lm: np.ndarray, aligned: bool):
        """Both encoders, then the head: (3D outputs, params3d, 2D scores, 2D features, head output),
        all on the host. With both encoders on TensorRT and the head on CUDA, the encoders' outputs stay
        on the device and feed the head on their stream; what the results carry is copied to the host
        once, after the head (CAGE's scores, when the head takes only some of their columns and there
        are several faces, are copied before it: see :func:`ig3d.pipelines.stages.device_columns`)."""
        score_name = Encoders.SCORES[self.enc2d_name]
        if self.head_stage.device != "cuda" or not self.encoders.on_device(len(lm)):
            out3d, out2d = self.encoders.run(images, owner, lm, aligned=aligned)
            params = out3d["params_full"].astype(np.float32)
            scores2d_raw = out2d[score_name].astype(np.float32)
            feats = out2d["features"].astype(np.float32)
            return out3d, params, scores2d_raw, feats, self.head_stage(params, self._fed_scores(scores2d_raw), feats)
        out3d, out2d = self.encoders.run_device(images, owner, lm, aligned=aligned)

        def f32(a):  # the head reads float32 (an engine's outputs are, unless its ONNX file says otherwise)
            return a if a.dtype == np.float32 else to_device(a.numpy().astype(np.float32), a)
        params, raw, feats = f32(out3d["params_full"]), f32(out2d[score_name]), f32(out2d["features"])
        cols, raw_host, fed = self._fed_columns(raw.shape[1]), None, raw
        if cols is not None:
            fed, raw_host = device_columns(raw, *cols)
        fused = self.head_stage(params, fed, feats, stream=params.stream).to_numpy()
        # the host copies the results carry, each made once, after the head
        host3d = {n: a.numpy() for n, a in out3d.items() if n != "params_short"}
        scores2d_raw = raw_host if raw_host is not None else raw.numpy()
        feats_host = feats.numpy() if self.outputs.features else None
        return host3d, host3d["params_full"].astype(np.float32), scores2d_raw, feats_host, fused

    def results_from_landmarks(self, images, owner: np.ndarray, scores: np.ndarray, lm: np.ndarray, *,
                               aligned: bool = False,
                               track_ids: Optional[Sequence[Optional[int]]] = None) -> List[List[FaceResult]]:
        """The encoders and the head on faces given by their landmarks ``lm`` ``[N, 478, 3]`` in
        ``images[owner[k]]`` (still images, and video frames whose faces were tracked), with the
        blendshapes and head pose: one list of :class:`FaceResult` per image, largest face first.
        ``aligned``: each image is a pre-aligned face crop that the encoders read whole."""
        results: List[List[FaceResult]] = [[] for _ in images]
        if len(lm) == 0:
            return results
        order = by_image_then_size(owner, lm)  # crops are built image by image
        owner, scores, lm = np.asarray(owner)[order], np.asarray(scores)[order], lm[order]
        track_ids = [track_ids[k] for k in order] if track_ids is not None else None
        geometry = self.geometry.start(lm) if self.geometry is not None else None  # beside the encoders
        out3d, params, scores2d_raw, feats, fused = self._encoders_and_head(images, owner, lm, aligned)
        bs, angles = geometry.result() if geometry is not None else (None, None)
        h = self.head
        # the 2D network's class logits (CAGE's combined model: 8 logits, then V, A)
        width = scores2d_raw.shape[1]
        cls2d = scores2d_raw[:, :8] if self.enc2d_name == "cage" and width == 10 else (
            scores2d_raw if self.enc2d_name == "ddamfn" else None)
        C = h.num_classes
        logits_3d = fused.out3d[:, :C]
        # the 2D branch alone, in the head's label order: through the head's fusion_map when the head
        # fuses these very scores (e.g. DDAMFN++'s RAF-DB order onto the native one), else as is
        logits_2d = np.full((len(lm), C), np.nan, np.float32)
        if cls2d is not None:
            k = cls2d.shape[1]
            fm = h.fusion_map if h.scores2d_dim == k and np.all(h.fusion_map < C) else np.arange(min(k, C))
            logits_2d[:] = -np.inf
            logits_2d[:, fm] = cls2d[:, :len(fm)]
        va = fused.va if fused.va is not None else np.full((len(lm), 2), np.nan)
        pieces = [n for n in self.enc3d.output_names if n not in ("params_full", "params_short")]
        return build_results(len(images), FaceArrays(
            owner=owner, scores=scores, landmarks=lm, blendshapes=bs, angles=angles, params3d=params,
            probs=fused.probs, va=va, logits_2d=logits_2d, logits_3d=logits_3d,
            probs_2d=softmax(logits_2d) if cls2d is not None else None, probs_3d=softmax(logits_3d),
            scores2d_raw=scores2d_raw, features2d=feats, flame={n: out3d[n] for n in pieces},
            track_ids=track_ids), self.labels, self.outputs)
