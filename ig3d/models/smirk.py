"""SMIRK's FLAME-parameter encoder in plain torch, and the Ig3D SMIRK feature vectors.

Re-implements georgeretsi/smirk: src/smirk_encoder.py (``SmirkEncoder``) with the timm backbones
replaced by :mod:`ig3d.models.mobilenetv3`. Module names equal upstream's, so the ``smirk_encoder.*``
entries of ``SMIRK_em1.pt`` (prefix stripped) load strictly with no renaming; see
:mod:`ig3d.convert.smirk` for reading and validating checkpoints.

Three independent branches see the same image (global average pool of the last map, then a Linear):

=========== ===================== ================ ===================================================
branch      backbone              head             outputs
=========== ===================== ================ ===================================================
pose        small_minimal (576)   Linear(576->6)   pose_params [0:3], cam [3:6]
shape       large_minimal (960)   Linear(960->300) shape_params
expression  large_minimal (960)   Linear(960->55)  expression [0:50], eyelid [50:52], jaw [52:55]
=========== ===================== ================ ===================================================

Input: [B, 3, 224, 224] float32 RGB in [0, 1] with **no** mean/std normalisation
(georgeretsi/smirk: demo.py, ``cropped_image ... .float() / 255.0`` fed straight to the encoder).

Ig3D features (docs REFERENCE 1.1: Ig3D deletes ``cam`` and concatenates the remaining segments in
dict order, dongludeeplearning/Ig3D: models/classification/nofusion/networks/SER.py; for SMIRK that
order is ``SmirkEncoder``'s): :func:`smirk_short` = pose 3, shape 300, expression 50 -> 353;
:func:`smirk_full` = those plus eyelid 2, jaw 3 -> 358. Both use the post-clamp values.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .mobilenetv3 import MobileNetV3Minimal, mobilenetv3_large_minimal_100, mobilenetv3_small_minimal_100

__all__ = [
    "INPUT_SIZE",
    "N_SHAPE",
    "N_EXP",
    "OUTPUT_DIMS",
    "SHORT_SEGMENTS",
    "FULL_SEGMENTS",
    "SHORT_DIM",
    "FULL_DIM",
    "PoseEncoder",
    "ShapeEncoder",
    "ExpressionEncoder",
    "SmirkEncoder",
    "smirk_short",
    "smirk_full",
]

#: Side of the square RGB crop SMIRK was trained on (georgeretsi/smirk: configs/config_train.yaml).
INPUT_SIZE = 224
#: FLAME shape and expression sizes of the released model (upstream defaults n_shape=300, n_exp=50).
N_SHAPE = 300
N_EXP = 50

#: ``SmirkEncoder.forward`` keys and widths, in upstream's dict order (pose, shape, expression branch).
OUTPUT_DIMS: "OrderedDict[str, int]" = OrderedDict(
    [("pose_params", 3), ("cam", 3), ("shape_params", N_SHAPE), ("expression_params", N_EXP),
     ("eyelid_params", 2), ("jaw_params", 3)])

#: Ig3D "SMIRK short" segments in concatenation order.
SHORT_SEGMENTS: Tuple[str, ...] = ("pose_params", "shape_params", "expression_params")
#: Ig3D "SMIRK full" segments in concatenation order.
FULL_SEGMENTS: Tuple[str, ...] = SHORT_SEGMENTS + ("eyelid_params", "jaw_params")
SHORT_DIM = sum(OUTPUT_DIMS[k] for k in SHORT_SEGMENTS)  # 353
FULL_DIM = sum(OUTPUT_DIMS[k] for k in FULL_SEGMENTS)  # 358


def _pooled(encoder: MobileNetV3Minimal, img: torch.Tensor) -> torch.Tensor:
    """[B, 3, H, W] -> global average of the last feature map [B, C]
    (upstream: ``F.adaptive_avg_pool2d(features, (1, 1)).squeeze(-1).squeeze(-1)``)."""
    return torch.flatten(F.adaptive_avg_pool2d(encoder(img), 1), 1)


class PoseEncoder(nn.Module):
    """[B, 3, 224, 224] -> {pose_params [B, 3], cam [B, 3]}.

    pose_params is FLAME's root (global head) rotation, axis-angle, and jaw_params the jaw joint's
    (georgeretsi/smirk: src/FLAME/FLAME.py, ``full_pose = cat([pose, neck, jaw, eye])``); cam is the
    renderer's camera and is not an Ig3D feature."""

    def __init__(self):
        super().__init__()
        self.encoder = mobilenetv3_small_minimal_100()
        # nn.Sequential kept for upstream's key names: pose_cam_layers.0.weight [6, 576].
        self.pose_cam_layers = nn.Sequential(nn.Linear(self.encoder.num_features, 6))

    def forward(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        pose_cam = self.pose_cam_layers(_pooled(self.encoder, img))
        return {"pose_params": pose_cam[..., :3], "cam": pose_cam[..., 3:]}


class ShapeEncoder(nn.Module):
    """[B, 3, 224, 224] -> {shape_params [B, n_shape]} (FLAME identity coefficients)."""

    def __init__(self, n_shape: int = N_SHAPE):
        super().__init__()
        self.encoder = mobilenetv3_large_minimal_100()
        self.shape_layers = nn.Sequential(nn.Linear(self.encoder.num_features, n_shape))

    def forward(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        return {"shape_params": self.shape_layers(_pooled(self.encoder, img))}


class ExpressionEncoder(nn.Module):
    """[B, 3, 224, 224] -> {expression_params [B, n_exp], eyelid_params [B, 2], jaw_params [B, 3]}.

    Post-processing as upstream (georgeretsi/smirk: src/smirk_encoder.py, ``ExpressionEncoder.forward``):
    eyelids clamped to [0, 1]; jaw = [relu(x[n_exp+2]), clamp(x[n_exp+3 : n_exp+5], -0.2, 0.2)], i.e. the
    jaw opens only one way and its two side rotations are bounded.
    """

    def __init__(self, n_exp: int = N_EXP):
        super().__init__()
        self.n_exp = n_exp
        self.encoder = mobilenetv3_large_minimal_100()
        self.expression_layers = nn.Sequential(nn.Linear(self.encoder.num_features, n_exp + 2 + 3))

    def forward(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        p = self.expression_layers(_pooled(self.encoder, img))
        n = self.n_exp
        return {
            "expression_params": p[..., :n],
            "eyelid_params": torch.clamp(p[..., n:n + 2], 0.0, 1.0),
            "jaw_params": torch.cat([F.relu(p[..., n + 2:n + 3]), torch.clamp(p[..., n + 3:n + 5], -0.2, 0.2)],
                                    dim=-1),
        }


class SmirkEncoder(nn.Module):
    """SMIRK encoder: [B, 3, 224, 224] RGB in [0, 1] (unnormalised) -> dict of [B, d] tensors, keys in
    upstream order (:data:`OUTPUT_DIMS`): pose_params 3, cam 3, shape_params 300, expression_params 50,
    eyelid_params 2, jaw_params 3.

    Freshly constructed weights are PyTorch's defaults, not upstream's training initialisation: this
    class is meant to receive a checkpoint (:func:`ig3d.convert.smirk.build_smirk`).
    """

    def __init__(self, n_exp: int = N_EXP, n_shape: int = N_SHAPE):
        super().__init__()
        self.pose_encoder = PoseEncoder()
        self.shape_encoder = ShapeEncoder(n_shape=n_shape)
        self.expression_encoder = ExpressionEncoder(n_exp=n_exp)

    def forward(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        out: Dict[str, torch.Tensor] = {}
        out.update(self.pose_encoder(img))
        out.update(self.shape_encoder(img))
        out.update(self.expression_encoder(img))
        return out


def _concat(out: Mapping[str, object], keys: Tuple[str, ...]):
    missing = [k for k in keys if k not in out]
    if missing:
        raise KeyError(f"SMIRK output lacks {missing}; it has {list(out)}")
    parts = [out[k] for k in keys]
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts, dim=-1)
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=-1)


def smirk_short(out: Mapping[str, object]):
    """Ig3D SMIRK-short features: [pose 3, shape 300, expression 50] -> [B, 353] (``cam`` dropped).

    ``out`` is a :class:`SmirkEncoder` output dict (torch tensors give a tensor; numpy arrays, e.g.
    ONNX Runtime outputs, give a float32 array)."""
    return _concat(out, SHORT_SEGMENTS)


def smirk_full(out: Mapping[str, object]):
    """Ig3D SMIRK-full features: [pose 3, shape 300, expression 50, eyelid 2, jaw 3] -> [B, 358]
    (``cam`` dropped). Same input conventions as :func:`smirk_short`."""
    return _concat(out, FULL_SEGMENTS)
