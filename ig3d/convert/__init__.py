"""Converters from upstream formats to ig3d's own: ONNX files and ``.npz`` weight files.

- ``tflite`` / ``keras_h5``: MediaPipe's TFLite graphs and fer's Keras HDF5 model -> ONNX (the
  bundled default assets; ``tools/build_default_assets.py``).
- ``convert(kind, checkpoint, out_dir)``: an upstream PyTorch checkpoint (SMIRK, DDAMFN++, ...) ->
  ``<out_dir>/<kind>.npz`` (the validated state dict as plain arrays, no pickle) and
  ``<out_dir>/<kind>.onnx`` (dynamic batch). Needs torch (``pip install 'ig3d[torch]'``). The same
  as ``ig3d convert KIND CHECKPOINT -o OUT_DIR``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Dict, Optional, Tuple, Union

__all__ = ["KINDS", "convert", "convert_head"]

PathLike = Union[str, "os.PathLike[str]"]


def _smirk(path: PathLike, trust: bool):
    from .smirk import build_smirk, export_smirk_onnx, load_smirk_checkpoint

    return build_smirk(load_smirk_checkpoint(path, trust_checkpoint=trust)), export_smirk_onnx


def _ddamfn(path: PathLike, trust: bool):
    from .ddamfn import export_ddamfn_onnx, load_ddamfn_checkpoint

    return load_ddamfn_checkpoint(path, trust_checkpoint=trust), export_ddamfn_onnx


def _emoca(path: PathLike, trust: bool):
    from .emoca import build_emoca, export_emoca_onnx, load_emoca_checkpoint

    return build_emoca(load_emoca_checkpoint(path, trust_checkpoint=trust)).eval(), export_emoca_onnx


def _cage(path: PathLike, trust: bool):
    from .cage import export_cage_onnx, load_cage_checkpoint

    return load_cage_checkpoint(path, trust_checkpoint=trust), export_cage_onnx


#: kind -> loader(path, trust_checkpoint) returning (torch model in eval mode, onnx exporter).
#: "emoca" reads EMOCA's Lightning .ckpt, "deca" DECA's deca_model.tar (same encoders, no E_expression).
KINDS: Dict[str, Callable[[PathLike, bool], Tuple[object, Callable]]] = {
    "smirk": _smirk,
    "ddamfn": _ddamfn,
    "emoca": _emoca,
    "deca": _emoca,
    "cage": _cage,
}


def convert_head(checkpoint: PathLike, out_dir: PathLike, *, task: str, encoder: str, fusion: str = "weighted",
                 scores2d_order: Optional[str] = None, trust_checkpoint: bool = False) -> Dict[str, Path]:
    """An Ig3D head state dict -> ``<out_dir>/head.npz`` (a :class:`ig3d.FusedHead` for the presets).

    task: "affectnet8", "rafdb" or "affectnet_va"; encoder: "emoca" or "smirk" (the head's input
    width then says which feature set it was trained on). A 3D-only head (MLP4, residual) becomes a
    late-fusion head with Ig3D's weights for (task, encoder) (``fusion``: weighted, max, mean, min);
    an intermediate-fusion head (DDAMFN or CAGE fusion) keeps its own fusion.
    """
    from .ig3d_heads import (CageFusionHead, DDAMFNFusionHead, late_fusion_head, load_head_checkpoint,
                             to_fused_head)

    src = Path(checkpoint)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if encoder not in ("emoca", "smirk"):
        raise ValueError(f"encoder: expected 'emoca' or 'smirk', got {encoder!r}")
    module = load_head_checkpoint(src, trust_checkpoint=trust_checkpoint)
    width = module.Wash_Linear1.in_features if isinstance(module, DDAMFNFusionHead) else (
        module.additional_feature_transform.in_features if isinstance(module, CageFusionHead) else module.in_dim)
    sets = {("emoca", 156): "emoca_short", ("emoca", 334): "emoca_full", ("smirk", 353): "smirk_short",
            ("smirk", 358): "smirk_full"}
    if (encoder, width) not in sets:
        raise ValueError(f"{src}: a head of input width {width} does not fit {encoder} "
                         f"(expected {[w for e, w in sets if e == encoder]})")
    name = f"{encoder}-{task}-{type(module).__name__}"
    if isinstance(module, (DDAMFNFusionHead, CageFusionHead)):
        head = to_fused_head(module, feature_set=sets[(encoder, width)], dataset=task, name=name)
    else:
        head = late_fusion_head(module, task, encoder, mode=fusion, scores2d_order=scores2d_order, name=name)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "head.npz"
    head.save(path)
    return {"head": path}


def convert(kind: str, checkpoint: PathLike, out_dir: PathLike, *, trust_checkpoint: bool = False,
            onnx: bool = True) -> Dict[str, Path]:
    """Validate an upstream checkpoint strictly and write ig3d's weight file (and ONNX file).

    Returns the written paths by role (``"weights"``, ``"onnx"``, ``"meta"``). Raises
    ``ValueError`` for an unknown kind or a checkpoint that does not match the network (the error
    names the key and the shapes), ``FileNotFoundError`` for a missing file, and
    ``UnsafeCheckpointError`` for a pickled file without ``trust_checkpoint=True``.
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    try:
        import torch  # noqa: F401
    except ImportError as e:
        raise ImportError("ig3d convert needs torch: pip install 'ig3d[torch]'") from e
    import numpy as np

    src = Path(checkpoint)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    model, export = KINDS[kind](src, trust_checkpoint)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    written = {"weights": out / f"{kind}.npz"}
    with open(written["weights"], "wb") as f:
        np.savez(f, **arrays)
    if onnx:
        written["onnx"] = out / f"{kind}.onnx"
        export(model, written["onnx"])
    meta = {"kind": kind, "source": src.name, "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
            "tensors": len(arrays)}
    written["meta"] = out / f"{kind}.json"
    written["meta"].write_text(json.dumps(meta, indent=2) + "\n")
    return written
