"""EMOCA / DECA image encoders in plain torch, and the Ig3D EMOCA feature vectors.

Re-implements the encoder half of EMOCA (radekd91/emoca: gdl/models/DecaEncoder.py ``ResnetEncoder``,
gdl/models/DECA.py ``DECA`` / ``ExpDECA``), itself DECA's (yfeng95/DECA: decalib/models/encoders.py
``ResnetEncoder``, decalib/deca.py). Module names equal upstream's, so the ``deca.E_flame.*``,
``deca.E_expression.*`` and ``deca.E_detail.*`` entries of an EMOCA Lightning checkpoint (``deca.``
stripped) load strictly with no renaming; see :mod:`ig3d.convert.emoca` for reading and validating files.

Every encoder is a ResNet-50 trunk (:mod:`ig3d.models.resnet`, [B, 2048]) and an MLP head
``layers`` = Linear(2048->1024), ReLU, Linear(1024->out):

============== ===== =====================================================================
encoder        out   role
============== ===== =====================================================================
E_flame        236   DECA coarse code: shape, tex, exp, pose, cam, light (:data:`FLAME_CODE_LAYOUT`)
E_expression   50    EMOCA expression, replacing E_flame's exp (53: + jaw pose, see below)
E_detail       128   DECA/EMOCA detail code (input to the displacement decoder)
============== ===== =====================================================================

Decomposition (:func:`decompose_codes`) follows ``DECA.decompose_code`` and ``ExpDECA.decompose_code``
(radekd91/emoca: gdl/models/DECA.py; the same slices in yfeng95/DECA: decalib/deca.py): E_flame's code is
cut in the order shape 100, tex 50, exp 50, pose 6, cam 3, light 27; EMOCA then takes ``exp`` from
E_expression. An E_expression with 53 outputs adds 3 pose values (``ExpDECA._reconfigure`` adds 3
outputs when ``exp_deca_jaw_pose`` or ``exp_deca_global_pose`` is set), and ``ExpDECA.decompose_code``
uses them as **jaw** pose (``exp_deca_jaw_pose``: they replace ``pose[:, 3:6]``, the global rotation
stays E_flame's) or as **global** head rotation (``exp_deca_global_pose``: they replace ``pose[:, 0:3]``,
the jaw stays E_flame's). The weights cannot tell the two apart, so a 53-wide model is built with
``expression_extra="jaw"`` or ``"global"`` (:func:`ig3d.convert.emoca.load_emoca` reads it from EMOCA's
``cfg.yaml``). Both flags at once (56 outputs, the whole pose) are not supported. Without E_expression
(a DECA ``deca_model.tar``) ``exp`` is E_flame's.

``light`` stays flat [B, 27] here; upstream reshapes it to [B, 9, 3] (9 SH coefficients x RGB), which
is ``light.view(-1, 9, 3)``. Ig3D never uses it (docs REFERENCE 1.1).

Input: [B, 3, 224, 224] float32 RGB in [0, 1], **no** mean/std normalisation (radekd91/emoca:
gdl/datasets/ImageTestDataset.py hands the [0, 1] crop straight to the encoders); 224 is required by the
trunk's fixed 7x7 pool.

Ig3D features (docs REFERENCE 1.1: ``cam`` deleted, segments concatenated in a fixed order):
:func:`emoca_short` = exp 50, pose 6, shape 100 -> 156; :func:`emoca_full` = exp 50, pose 6, tex 50,
detail 128, shape 100 -> 334.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Dict, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .resnet import FEATURE_DIM, INPUT_SIZE, ResNet50

__all__ = [
    "INPUT_SIZE",
    "FLAME_CODE_LAYOUT",
    "N_FLAME_CODE",
    "N_EXP",
    "N_EXP_JAW",
    "EXPRESSION_EXTRAS",
    "N_DETAIL",
    "HIDDEN_DIM",
    "OUTPUT_DIMS",
    "SHORT_SEGMENTS",
    "FULL_SEGMENTS",
    "SHORT_DIM",
    "FULL_DIM",
    "DecaEncoder",
    "EmocaEncoders",
    "decompose_codes",
    "emoca_short",
    "emoca_full",
]

#: E_flame's output, in slice order (radekd91/emoca: gdl_apps/EMOCA/emoca_conf/model/sizes/default.yaml;
#: the order is ``DECA.decompose_code``'s num_list): shape = FLAME identity, tex = albedo, exp = FLAME
#: expression, pose = global rotation 3 + jaw 3 (axis-angle), cam = orthographic scale, tx, ty,
#: light = 9 SH coefficients x RGB.
FLAME_CODE_LAYOUT: "OrderedDict[str, int]" = OrderedDict(
    [("shape", 100), ("tex", 50), ("exp", 50), ("pose", 6), ("cam", 3), ("light", 27)])
N_FLAME_CODE = sum(FLAME_CODE_LAYOUT.values())  # 236
#: E_expression width of the released EMOCA v2 models, and of the ``exp_deca_jaw_pose`` /
#: ``exp_deca_global_pose`` variants (50 + 3 pose values; see ``expression_extra``).
N_EXP = FLAME_CODE_LAYOUT["exp"]  # 50
N_EXP_JAW = N_EXP + 3  # 53
#: What the 3 extra E_expression outputs of a 53-wide model are: jaw pose or global head rotation.
EXPRESSION_EXTRAS: Tuple[str, ...] = ("jaw", "global")
#: E_detail width (``n_detail``; ``n_detail_emo`` is 0 in the released models).
N_DETAIL = 128
#: Hidden width of every encoder's MLP head.
HIDDEN_DIM = 1024

#: :class:`EmocaEncoders` output keys and widths, in order (``detail`` only with E_detail).
OUTPUT_DIMS: "OrderedDict[str, int]" = OrderedDict(list(FLAME_CODE_LAYOUT.items()) + [("detail", N_DETAIL)])
#: Ig3D "EMOCA short" segments in concatenation order.
SHORT_SEGMENTS: Tuple[str, ...] = ("exp", "pose", "shape")
#: Ig3D "EMOCA full" segments in concatenation order.
FULL_SEGMENTS: Tuple[str, ...] = ("exp", "pose", "tex", "detail", "shape")
SHORT_DIM = sum(OUTPUT_DIMS[k] for k in SHORT_SEGMENTS)  # 156
FULL_DIM = sum(OUTPUT_DIMS[k] for k in FULL_SEGMENTS)  # 334


class DecaEncoder(nn.Module):
    """One DECA/EMOCA encoder: [B, 3, 224, 224] -> [B, out_dim].

    ``encoder`` is the ResNet-50 trunk ([B, 2048]); ``layers`` = Linear(2048->1024), ReLU,
    Linear(1024->out_dim), an ``nn.Sequential`` so the keys are upstream's ``layers.0.*``/``layers.2.*``
    (yfeng95/DECA: decalib/models/encoders.py; upstream's ``last_op`` is None for all three encoders).
    """

    def __init__(self, out_dim: int):
        super().__init__()
        self.out_dim = int(out_dim)
        self.encoder = ResNet50()
        self.layers = nn.Sequential(nn.Linear(FEATURE_DIM, HIDDEN_DIM), nn.ReLU(), nn.Linear(HIDDEN_DIM, self.out_dim))

    def forward(self, img: torch.Tensor) -> torch.Tensor:
        return self.layers(self.encoder(img))


def decompose_codes(flame_code: torch.Tensor, exp_code: Optional[torch.Tensor] = None,
                    detail_code: Optional[torch.Tensor] = None, *,
                    exp_width: Optional[int] = None,
                    expression_extra: Optional[str] = None) -> Dict[str, torch.Tensor]:
    """Split the raw encoder outputs into named parameters, as upstream does.

    flame_code [B, 236] (E_flame), exp_code [B, 50 | 53] (E_expression) or None (DECA: exp stays
    E_flame's), detail_code [B, 128] or None. Returns an ordered dict: shape [B, 100], tex [B, 50],
    exp [B, 50], pose [B, 6], cam [B, 3], light [B, 27], then detail [B, 128] when given. With a 53-wide
    exp_code, ``expression_extra`` says what exp_code[:, 50:53] is: "jaw" -> ``pose`` = E_flame's global
    rotation + those 3 (``exp_deca_jaw_pose``); "global" -> ``pose`` = those 3 + E_flame's jaw
    (``exp_deca_global_pose``), as ``ExpDECA.decompose_code`` (radekd91/emoca: gdl/models/DECA.py).
    ``exp_width`` gives exp_code's width as a Python int (needed under tracing, where shapes are tensors);
    by default it is read from exp_code.
    """
    out: Dict[str, torch.Tensor] = OrderedDict()
    start = 0
    for name, width in FLAME_CODE_LAYOUT.items():
        out[name] = flame_code[:, start:start + width]
        start += width
    if exp_code is not None:
        width = int(exp_code.shape[1]) if exp_width is None else exp_width
        if width not in (N_EXP, N_EXP_JAW):
            raise ValueError(f"E_expression output must be {N_EXP} or {N_EXP_JAW} wide, got {list(exp_code.shape)}")
        out["exp"] = exp_code[:, :N_EXP]
        if width == N_EXP_JAW:
            if expression_extra == "jaw":
                out["pose"] = torch.cat([out["pose"][:, :3], exp_code[:, N_EXP:]], dim=1)
            elif expression_extra == "global":
                out["pose"] = torch.cat([exp_code[:, N_EXP:], out["pose"][:, 3:]], dim=1)
            else:
                raise ValueError(f"a {N_EXP_JAW}-wide exp_code needs expression_extra='jaw' or 'global' (what its "
                                 f"3 extra values are), got {expression_extra!r}")
    if detail_code is not None:
        out["detail"] = detail_code
    return out


class EmocaEncoders(nn.Module):
    """EMOCA's encoders: [B, 3, 224, 224] RGB in [0, 1] (unnormalised) -> dict of [B, d] tensors,
    keys in :data:`OUTPUT_DIMS` order: shape 100, tex 50, exp 50, pose 6, cam 3, light 27 and, with
    E_detail, detail 128 (see :func:`decompose_codes`).

    expression_dim: 50 (EMOCA v2), 53 (50 + 3 pose values) or None (no E_expression: plain DECA,
    exp from E_flame). expression_extra: for 53 only, and required then: "jaw" (``exp_deca_jaw_pose``) or
    "global" (``exp_deca_global_pose``), see :func:`decompose_codes`. detail: build E_detail (needed for
    :func:`emoca_full`). Freshly constructed weights are PyTorch's defaults: this class is meant to
    receive a checkpoint (:func:`ig3d.convert.emoca.build_emoca`).
    """

    def __init__(self, expression_dim: Optional[int] = N_EXP, detail: bool = True,
                 expression_extra: Optional[str] = None):
        super().__init__()
        if expression_dim not in (None, N_EXP, N_EXP_JAW):
            raise ValueError(f"expression_dim must be {N_EXP}, {N_EXP_JAW} or None, got {expression_dim!r}")
        if expression_dim == N_EXP_JAW and expression_extra not in EXPRESSION_EXTRAS:
            raise ValueError(f"expression_dim={N_EXP_JAW} needs expression_extra='jaw' or 'global' (what its 3 "
                             f"extra outputs are), got {expression_extra!r}")
        if expression_dim != N_EXP_JAW and expression_extra is not None:
            raise ValueError(f"expression_extra is only for a {N_EXP_JAW}-wide E_expression, not {expression_dim}")
        self.expression_extra = expression_extra
        self.E_flame = DecaEncoder(N_FLAME_CODE)
        self.E_expression = None if expression_dim is None else DecaEncoder(expression_dim)
        self.E_detail = DecaEncoder(N_DETAIL) if detail else None

    @property
    def expression_dim(self) -> Optional[int]:
        """E_expression's output width, or None without E_expression."""
        return None if self.E_expression is None else self.E_expression.out_dim

    @property
    def has_detail(self) -> bool:
        return self.E_detail is not None

    def output_dims(self) -> "OrderedDict[str, int]":
        """This model's output keys and widths, in forward order."""
        return OrderedDict((k, d) for k, d in OUTPUT_DIMS.items() if k != "detail" or self.has_detail)

    def forward(self, img: torch.Tensor) -> Dict[str, torch.Tensor]:
        # Three independent ResNet-50 passes over the same crop, as upstream (ExpDECA._encode_flame with
        # expression_backbone 'deca_clone', then DecaModule.encode for E_detail).
        return decompose_codes(
            self.E_flame(img),
            None if self.E_expression is None else self.E_expression(img),
            None if self.E_detail is None else self.E_detail(img),
            exp_width=self.expression_dim, expression_extra=self.expression_extra)


def _concat(out: Mapping[str, object], keys: Tuple[str, ...]):
    missing = [k for k in keys if k not in out]
    if missing:
        hint = " (build the model with E_detail)" if "detail" in missing else ""
        raise KeyError(f"EMOCA output lacks {missing}{hint}; it has {list(out)}")
    parts = [out[k] for k in keys]
    for k, p in zip(keys, parts):
        # Under tracing (ONNX export) shapes are tensors; the model's own outputs are right by construction.
        if not torch.jit.is_tracing() and p.shape[-1] != OUTPUT_DIMS[k]:
            raise ValueError(f"EMOCA output {k!r} is {list(p.shape)}, expected last dim {OUTPUT_DIMS[k]}")
    if all(isinstance(p, torch.Tensor) for p in parts):
        return torch.cat(parts, dim=-1)
    return np.concatenate([np.asarray(p, dtype=np.float32) for p in parts], axis=-1)


def emoca_short(out: Mapping[str, object]):
    """Ig3D EMOCA-short features: [exp 50, pose 6, shape 100] -> [B, 156].

    ``out`` is an :class:`EmocaEncoders` output dict (torch tensors give a tensor; numpy arrays, e.g.
    ONNX Runtime outputs, give a float32 array). A missing or mis-sized segment raises, never zero-fills
    (docs REFERENCE 1.8, item 2)."""
    return _concat(out, SHORT_SEGMENTS)


def emoca_full(out: Mapping[str, object]):
    """Ig3D EMOCA-full features: [exp 50, pose 6, tex 50, detail 128, shape 100] -> [B, 334]; needs
    ``detail`` (E_detail). Same conventions as :func:`emoca_short`."""
    return _concat(out, FULL_SEGMENTS)
