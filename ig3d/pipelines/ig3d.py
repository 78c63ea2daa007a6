"""The Ig3D presets: the paper's networks (EMOCA or SMIRK for the 3D face, DDAMFN++ or CAGE for the
2D branch) with weights a user supplies, fused by a 3D head in the fused kernel.

Each face goes: the default preset's detectors and landmarks -> one crop per encoder, each by its
own upstream convention (:mod:`ig3d.faces.align`) -> the 3D encoder's ONNX file (FLAME parameters,
the Ig3D vector) and the 2D encoder's ONNX file (logits and its 512-d feature) -> the head
(:class:`ig3d.FusedHead`: late fusion with the 2D logits, or intermediate fusion with the 2D
feature, as the head file says) -> :class:`ig3d.FaceResult` with the FLAME parameters.

Weights: ``weights={"smirk": ..., "ddamfn": ..., "head": ...}`` maps each part to a file (an
``.onnx`` file, or the folder ``ig3d convert`` wrote; the head: an ``.npz`` from
``FusedHead.save``). A part not given is looked for in ``$IG3D_HOME/weights/<part>/`` (the head in
``$IG3D_HOME/weights/<preset>/head.npz``). Every missing file is named in one error, each with where
to obtain it and the ``ig3d convert`` command to run.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Union

import numpy as np

from ..engines import PerCoreModel, network_precision
from ..faces import align
from ..fusion import FusedHead
from ..hub import HOW_TO_GET, weights_dir
from ..labels import AFFECTNET7_LABELS, AFFECTNET8_LABELS
from ..results import FaceResult

__all__ = ["IG3D_PRESETS", "Ig3DPipeline"]

#: preset -> (3D encoder, 2D encoder, width of the encoder's raw 3D vector)
IG3D_PRESETS: Dict[str, tuple] = {
    "ig3d-smirk-ddamfn": ("smirk", "ddamfn", 358),
    "ig3d-emoca-ddamfn": ("emoca", "ddamfn", 334),
    "ig3d-emoca-cage": ("emoca", "cage", 334),
    "ig3d-smirk-cage": ("smirk", "cage", 358),
}

_CROP = {  # encoder -> (affine builder, input size, ImageNet normalisation)
    "smirk": (align.smirk_affine, 224, False),
    "emoca": (align.emoca_affine, 224, False),
    "ddamfn": (align.ddamfn_affine, 112, True),
    "cage": (align.cage_affine, 224, True),
}
_SCORES = {"ddamfn": "logits", "cage": "outputs"}
#: The encoders that run in bf16 when a Predictor asks for ``precision="bf16"``: those whose bf16
#: outputs pass the accuracy gates on the shared photos' crops; the others stay fp32. None yet: the
#: gates have only been run with random weights (SMIRK's params_full moved 4.4e-2 of its scale there),
#: which say nothing about trained ones. ``precision={"emoca": "bf16"}`` opts one in explicitly.
BF16_GATED: frozenset = frozenset()


def _softmax(x: np.ndarray) -> np.ndarray:
    z = np.exp(x - x.max(axis=-1, keepdims=True))
    return z / z.sum(axis=-1, keepdims=True)


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


class Ig3DPipeline:
    """One Ig3D preset. ``run(images)`` -> one list of :class:`FaceResult` per image."""

    def __init__(self, preset: str, *, weights: Mapping[str, object], backend: str, device: str,
                 threads: Optional[int] = None, head_device: str = "cpu", faces_pipeline=None,
                 precision: Union[str, Mapping[str, str]] = "fp32"):
        if preset not in IG3D_PRESETS:
            raise ValueError(f"preset: expected one of {sorted(IG3D_PRESETS)}, got {preset!r}")
        self.preset = preset
        self.enc3d_name, self.enc2d_name, self.d_raw = IG3D_PRESETS[preset]
        found = _resolve(preset, weights)

        if faces_pipeline is None:
            from .default import DefaultPipeline

            faces_pipeline = DefaultPipeline(backend=backend, device=device, threads=threads, precision=precision)
        self.faces = faces_pipeline  # detectors and landmarks are the default preset's
        #: the default preset's workers run the encoders too: on the CPU one run per face, spread
        #: over the cores (measured 1.25-1.35x the images/s of one batched run of 32 for DDAMFN++
        #: and CAGE on 2 cores); a lone face runs on every core (see PerCoreModel), unless its two
        #: encoders are alike in size (see _runs)
        self.workers = faces_pipeline.workers

        #: encoder -> the precision it runs in (see BF16_GATED)
        self.precisions: Dict[str, str] = {}
        # threads inside a lone run: the faces pipeline's setting, else the runtime's default (all cores)
        run_threads = getattr(faces_pipeline, "threads_per_run", None) if threads is None else threads

        def model(part):
            self.precisions[part] = network_precision(precision, part, BF16_GATED)
            return PerCoreModel(found[part], workers=self.workers, backend=backend, device=device,
                                threads=run_threads, name=part, precision=self.precisions[part])

        self.enc3d = model(self.enc3d_name)
        self.enc2d = model(self.enc2d_name)
        head = found["head"]
        self.head = head if isinstance(head, FusedHead) else FusedHead.load(head)
        if self.head.input_dim != self.d_raw:
            raise ValueError(f"head: {preset} feeds the head the {self.enc3d_name} vector of {self.d_raw} values, "
                             f"but the head expects input_dim={self.head.input_dim}")
        if "params_full" not in self.enc3d.output_names:
            raise ValueError(f"{self.enc3d_name}: the ONNX file has no 'params_full' output "
                             f"(outputs: {self.enc3d.output_names}); convert it with `ig3d convert {self.enc3d_name}`")
        for out in (_SCORES[self.enc2d_name], "features"):
            if out not in self.enc2d.output_names:
                raise ValueError(f"{self.enc2d_name}: the ONNX file has no {out!r} output "
                                 f"(outputs: {self.enc2d.output_names}); convert it with `ig3d convert {self.enc2d_name}`")
        C = self.head.num_classes
        self.labels = tuple(self.head.labels) if self.head.labels else (
            AFFECTNET8_LABELS if C == 8 else AFFECTNET7_LABELS if C == 7 else tuple(f"class{i}" for i in range(C)))
        self.head_device = head_device

    def _crops(self, images: Sequence[np.ndarray], owner: np.ndarray, lm: np.ndarray, encoder: str,
               threads: int = 0, aligned: bool = False) -> np.ndarray:
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

    def _cropper(self, images: Sequence[np.ndarray], encoder: str, aligned: bool = False):
        """prep for an encoder run: items are (image index, landmarks) per face."""
        threads = 1 if self.workers.parallel else 0

        def prep(items):
            return self._crops(images, np.array([i for i, _ in items]), np.stack([l for _, l in items]), encoder,
                               threads, aligned)
        return prep

    def _fed_scores(self, raw: np.ndarray) -> np.ndarray:
        """The 2D scores the head late-fuses: all of them, or CAGE's logits / VA part."""
        k, width = self.head.scores2d_dim, raw.shape[1]
        if k == width:
            return raw
        if self.enc2d_name == "cage" and width == 10 and k in (2, 8):
            return raw[:, 8:10] if k == 2 else raw[:, :8]
        raise ValueError(f"head: it late-fuses {k} 2D scores, but {self.enc2d_name} gives {width}")

    def _runs(self, n: int) -> int:
        """How many runs each encoder's session is chosen for (``PerCoreModel.for_items``) in a call
        with ``n`` faces. The 3D and 2D runs of a lone face go at the same time: when the two encoders
        are within 2x of each other in size (SMIRK and DDAMFN++), each runs single-threaded on its own
        core (measured on 2 cores: 30-33 ms against 37-43 ms with two all-cores sessions side by
        side); a heavy encoder beside a light one keeps every core."""
        sizes = sorted((self.enc3d.nbytes, self.enc2d.nbytes))
        return 2 if n == 1 and sizes[1] <= 2 * sizes[0] else n

    def run(self, images: Sequence[np.ndarray], *, aligned: bool = False) -> List[List[FaceResult]]:
        """Faces per image. ``aligned=True``: each image is one pre-aligned face crop; detection is
        skipped and each encoder reads the whole image resized to its input (its normalisation
        unchanged)."""
        if not images:
            return []
        # boxes, landmarks, blendshapes, pose per face
        return self.results_from_faces(images, self.faces.run(images, aligned=aligned), aligned=aligned)

    def results_from_faces(self, images: Sequence[np.ndarray], base: List[List[FaceResult]], *,
                           aligned: bool = False) -> List[List[FaceResult]]:
        """The encoders and the head on faces the default pipeline found (``base``: one list per
        image): still images, and video frames whose faces it tracked (their ``track_id`` is kept)."""
        flat = [(i, f) for i, faces in enumerate(base) for f in faces]
        results: List[List[FaceResult]] = [[] for _ in images]
        if not flat:
            return results
        owner = np.array([i for i, _ in flat])
        order = np.argsort(owner, kind="stable")  # crops are built image by image
        flat = [flat[k] for k in order]
        owner = owner[order]
        lm = np.stack([f.landmarks for _, f in flat])

        items = list(zip(owner, lm))
        n = len(items)
        runs = self._runs(n)
        pending3d = self.workers.start(self.enc3d.for_items(runs), items,
                                       self._cropper(images, self.enc3d_name, aligned))
        out2d = self.workers.run(self.enc2d.for_items(runs), items, self._cropper(images, self.enc2d_name, aligned))
        out3d = pending3d.result()
        params = out3d["params_full"].astype(np.float32)
        scores2d_raw = out2d[_SCORES[self.enc2d_name]].astype(np.float32)
        feats = out2d["features"].astype(np.float32)
        h = self.head
        # the 2D network's class logits (CAGE's combined model: 8 logits, then V, A)
        width = scores2d_raw.shape[1]
        cls2d = scores2d_raw[:, :8] if self.enc2d_name == "cage" and width == 10 else (
            scores2d_raw if self.enc2d_name == "ddamfn" else None)
        fused = h(params, self._fed_scores(scores2d_raw) if h.scores2d_dim else None,
                  feats if h.features2d_dim else None, device=self.head_device)
        C = h.num_classes
        logits_3d = fused.out3d[:, :C]
        # the 2D branch alone, in the head's label order: through the head's fusion_map when the head
        # fuses these very scores (e.g. DDAMFN++'s RAF-DB order onto the native one), else as is
        logits_2d = np.full((len(flat), C), np.nan, np.float32)
        if cls2d is not None:
            k = cls2d.shape[1]
            fm = h.fusion_map if h.scores2d_dim == k and np.all(h.fusion_map < C) else np.arange(min(k, C))
            logits_2d[:] = -np.inf
            logits_2d[:, fm] = cls2d[:, :len(fm)]
        p2d, p3d = (_softmax(logits_2d) if cls2d is not None else logits_2d), _softmax(logits_3d)
        pieces = [n for n in self.enc3d.output_names if n not in ("params_full", "params_short")]
        for f, (i, base_face) in enumerate(flat):
            va = fused.va[f] if fused.va is not None else (np.nan, np.nan)
            results[i].append(FaceResult(
                box=base_face.box, score=base_face.score, landmarks=base_face.landmarks,
                blendshapes=base_face.blendshapes, head_pose=base_face.head_pose, params3d=params[f],
                label=self.labels[int(np.argmax(fused.probs[f]))],
                scores=dict(zip(self.labels, map(float, fused.probs[f]))),
                valence=float(va[0]), arousal=float(va[1]),
                label_2d=self.labels[int(np.argmax(p2d[f]))] if cls2d is not None else "",
                scores_2d=dict(zip(self.labels, map(float, p2d[f]))) if cls2d is not None else {},
                label_3d=self.labels[int(np.argmax(p3d[f]))], scores_3d=dict(zip(self.labels, map(float, p3d[f]))),
                logits_2d=logits_2d[f], logits_3d=logits_3d[f].copy(),
                flame={n: out3d[n][f] for n in pieces},
                scores2d_raw=scores2d_raw[f], features2d=feats[f], track_id=base_face.track_id,
            ))
        for r in results:
            r.sort(key=lambda fr: -fr.area)
        return results
