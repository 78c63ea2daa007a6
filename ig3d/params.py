"""What each preset's 3D parameter vector holds: named segments, in order, and a name per value.

No torch here: ``ig3d extract`` writes these names into every features file, so that Ig3D's
"short" and "full" feature sets (docs REFERENCE 1.1) and a user's own choice are lists of names.

* ``default``: MediaPipe's 52 blendshapes (their own names, MediaPipe's order), then the head's
  yaw, pitch and roll in degrees (``head_yaw``, ``head_pitch``, ``head_roll``): 55 values.
* ``emoca``: the EMOCA-full vector of the Ig3D presets, exp 50, pose 6, tex 50, detail 128, shape
  100 (334; the order :data:`ig3d.convert.ig3d_heads.FEATURE_SETS` fixes as canonical).
* ``smirk``: SMIRK's outputs minus ``cam``, pose_params 3, shape_params 300, expression_params 50,
  eyelid_params 2, jaw_params 3 (358).

A FLAME value is named ``<segment>.<index>`` (``expression_params.0``); the default preset's
values keep their own names.
"""

from __future__ import annotations

from typing import Dict, List, Tuple

from .faces.mediapipe_constants import BLENDSHAPE_NAMES

__all__ = ["SEGMENTS", "SHORT_SEGMENTS", "param_names", "encoder_of_preset"]

#: encoder -> ((segment, width), ...) of its full vector, in order.
SEGMENTS: Dict[str, Tuple[Tuple[str, int], ...]] = {
    "default": (("blendshapes", len(BLENDSHAPE_NAMES)), ("head_pose", 3)),
    "emoca": (("exp", 50), ("pose", 6), ("tex", 50), ("detail", 128), ("shape", 100)),
    "smirk": (("pose_params", 3), ("shape_params", 300), ("expression_params", 50), ("eyelid_params", 2),
              ("jaw_params", 3)),
}

#: encoder -> the segments of Ig3D's "short" set, in its order (REFERENCE 1.1); the default preset's
#: short set is the blendshapes alone (ig3d's choice: the expression without the head pose).
SHORT_SEGMENTS: Dict[str, Tuple[str, ...]] = {
    "default": ("blendshapes",),
    "emoca": ("exp", "pose", "shape"),
    "smirk": ("pose_params", "shape_params", "expression_params"),
}


def param_names(encoder: str) -> List[str]:
    """One name per value of ``encoder``'s full vector (see the module docstring)."""
    if encoder not in SEGMENTS:
        raise ValueError(f"encoder {encoder!r}: expected one of {sorted(SEGMENTS)}")
    if encoder == "default":
        return list(BLENDSHAPE_NAMES) + ["head_yaw", "head_pitch", "head_roll"]
    return [f"{seg}.{i}" for seg, n in SEGMENTS[encoder] for i in range(n)]


def encoder_of_preset(preset: str) -> str:
    """The 3D representation a preset extracts: "default", "emoca" or "smirk"."""
    if preset == "default":
        return "default"
    for enc in ("emoca", "smirk"):
        if preset.startswith(f"ig3d-{enc}-"):
            return enc
    raise ValueError(f"preset {preset!r}: expected 'default' or an Ig3D preset (ig3d-emoca-*, ig3d-smirk-*)")
