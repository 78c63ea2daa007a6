"""Converters from upstream formats to ig3d's own: ONNX files and ``.npz`` weight files.

- ``tflite`` / ``keras_h5``: MediaPipe's TFLite graphs and fer's Keras HDF5 model -> ONNX (the
  bundled default assets; ``tools/build_default_assets.py``).
- ``convert(kind, checkpoint, out_dir)``: an upstream PyTorch checkpoint (SMIRK, DDAMFN++, ...) ->
  ``<out_dir>/<kind>.npz`` (the validated state dict as plain arrays, no pickle) and
  ``<out_dir>/<kind>.onnx`` (dynamic batch). Needs torch and onnx (``pip install 'ig3d[convert]'``).
  The same as ``ig3d convert KIND CHECKPOINT -o OUT_DIR``.

Output is all or nothing: the files are written into a temporary folder beside ``out_dir`` and
moved into place only once every one of them is complete, so a failed conversion (a bad key, a
missing package, an interrupted export) leaves no folder and no half of a weight set behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Tuple, Union

from .._optional import require

__all__ = ["KINDS", "convert", "convert_head", "staged_output"]

PathLike = Union[str, "os.PathLike[str]"]


def _smirk(path: PathLike, trust: bool):
    from .smirk import build_smirk, export_smirk_onnx, load_smirk_checkpoint

    return build_smirk(load_smirk_checkpoint(path, trust_checkpoint=trust)), export_smirk_onnx


def _ddamfn(path: PathLike, trust: bool):
    from .ddamfn import export_ddamfn_onnx, load_ddamfn_checkpoint

    return load_ddamfn_checkpoint(path, trust_checkpoint=trust), export_ddamfn_onnx


def _emoca(path: PathLike, trust: bool, expression_extra: Optional[str] = None):
    from .emoca import export_emoca_onnx, load_emoca

    return load_emoca(path, trust_checkpoint=trust, expression_extra=expression_extra), export_emoca_onnx


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


@contextlib.contextmanager
def staged_output(out_dir: PathLike) -> Iterator[Path]:
    """Write a set of files all or nothing: yields an empty temporary folder beside ``out_dir``.

    When the block ends normally, a new ``out_dir`` is that folder renamed (one step); into an existing
    ``out_dir`` its files are moved one by one with ``os.replace`` (same-named files are replaced, others
    left alone). When the block raises (or is interrupted), the temporary folder and any parent
    folders made for it are removed and the exception propagates: nothing of a failed run stays.
    """
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output: {out} exists and is not a folder")
    made = []  # parent folders created here, innermost first: removed again on failure
    p = out.parent
    while not p.exists():
        made.append(p)
        p = p.parent
    out.parent.mkdir(parents=True, exist_ok=True)
    # a plain mkdir (not tempfile.mkdtemp, which is 0700): the folder becomes out_dir by rename, so it
    # gets the permissions any new folder gets
    tmp = out.parent / f".{out.name}.part-{os.getpid()}-{os.urandom(4).hex()}"
    tmp.mkdir()
    try:
        yield tmp
        if not out.exists():
            os.rename(tmp, out)
        else:
            for f in sorted(tmp.iterdir()):
                os.replace(f, out / f.name)
            tmp.rmdir()
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for d in made:
            try:
                d.rmdir()
            except OSError:  # not empty: someone else put something there meanwhile
                break
        raise


def convert_head(checkpoint: PathLike, out_dir: PathLike, *, task: str, encoder: str, fusion: str = "weighted",
                 scores2d_order: Optional[str] = None, trust_checkpoint: bool = False) -> Dict[str, Path]:
    """An Ig3D head state dict -> ``<out_dir>/head.npz`` (a :class:`ig3d.FusedHead` for the presets).

    task: "affectnet8", "rafdb" or "affectnet_va"; encoder: "emoca" or "smirk" (the head's input
    width then says which feature set it was trained on). A 3D-only head (MLP4, residual) becomes a
    late-fusion head with Ig3D's weights for (task, encoder) (``fusion``: weighted, max, mean, min);
    an intermediate-fusion head (DDAMFN or CAGE fusion) keeps its own fusion. Needs torch to read the
    checkpoint (``pip install 'ig3d[convert]'``); a failed conversion writes nothing.
    """
    require("torch", "convert", "ig3d convert ig3d-head")
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
    with staged_output(out_dir) as tmp:
        head.save(tmp / "head.npz")
    return {"head": Path(out_dir) / "head.npz"}


def convert(kind: str, checkpoint: PathLike, out_dir: PathLike, *, trust_checkpoint: bool = False,
            onnx: bool = True, expression_extra: Optional[str] = None) -> Dict[str, Path]:
    """Validate an upstream checkpoint strictly and write ig3d's weight file (and ONNX file).

    ``expression_extra`` ("jaw" or "global"; emoca only): what the 3 extra outputs of a 53-wide EMOCA
    E_expression are, when no cfg.yaml beside the checkpoint says it (:mod:`ig3d.convert.emoca`).

    Returns the written paths by role (``"weights"``, ``"onnx"``, ``"meta"``). Raises
    ``ValueError`` for an unknown kind or a checkpoint that does not match the network (the error
    names the key and the shapes), ``FileNotFoundError`` for a missing file, and
    ``UnsafeCheckpointError`` for a pickled file without ``trust_checkpoint=True``, and
    :class:`ig3d._optional.MissingOptionalDependency` (an ``ImportError``) naming the extra when torch
    or onnx is not installed. Nothing is written unless every file is complete (:func:`staged_output`).
    """
    if kind not in KINDS:
        raise ValueError(f"kind: expected one of {sorted(KINDS)}, got {kind!r}")
    require("torch", "convert", "ig3d convert")
    if onnx:
        require("onnx", "convert", "ig3d convert (the ONNX export)")
    import numpy as np

    src = Path(checkpoint)
    if not src.is_file():
        raise FileNotFoundError(f"checkpoint not found: {src}")
    if expression_extra is not None and kind not in ("emoca", "deca"):
        raise ValueError(f"expression_extra is only for emoca checkpoints, not {kind!r}")
    extra = {"expression_extra": expression_extra} if kind in ("emoca", "deca") else {}
    model, export = KINDS[kind](src, trust_checkpoint, **extra)
    arrays = {k: v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    names = {"weights": f"{kind}.npz", **({"onnx": f"{kind}.onnx"} if onnx else {}), "meta": f"{kind}.json"}
    with staged_output(out_dir) as tmp:
        with open(tmp / names["weights"], "wb") as f:
            np.savez(f, **arrays)
        if onnx:
            export(model, tmp / names["onnx"])
        meta = {"kind": kind, "source": src.name, "source_sha256": hashlib.sha256(src.read_bytes()).hexdigest(),
                "tensors": len(arrays)}
        (tmp / names["meta"]).write_text(json.dumps(meta, indent=2) + "\n")
    return {role: Path(out_dir) / name for role, name in names.items()}
