"""EMOCA / DECA checkpoints -> :class:`ig3d.models.emoca.EmocaEncoders` -> ONNX.

Two upstream layouts are read:

* **EMOCA Lightning ``.ckpt``** (radekd91/emoca, e.g. ``EMOCA_v2_lr_mse_20/detail/checkpoints/*.ckpt``): a
  dict whose ``state_dict`` holds the whole ``DecaModule``, i.e. ``deca.*`` (the ``DECA``/``ExpDECA``
  network: encoders, decoders, FLAME, renderer, loss nets) plus the module's own loss nets. Only
  ``deca.E_flame.*``, ``deca.E_expression.*`` and ``deca.E_detail.*`` are kept (322 entries each,
  shared/reference/keys/emoca_encoder_keys.txt). Everything else is dropped on purpose, whatever its
  name: Ig3D needs the codes, not the decoders or the losses. :data:`DROPPED_PREFIXES` names the
  families a real checkpoint is expected to carry (radekd91/emoca: gdl/models/DECA.py, ``DecaModule``
  and ``DECA`` attributes); the list documents the drop, it does not gate it.
* **DECA ``deca_model.tar``** (yfeng95/DECA: decalib/deca.py ``_create_model``): a dict of unprefixed
  ``E_flame``, ``E_detail`` and ``D_detail`` state dicts. There is no E_expression, so the model built
  from it takes ``exp`` from E_flame (plain DECA); ``D_detail`` is dropped.

A flat state dict in ig3d's own naming (``E_flame.encoder.conv1.weight``..., i.e.
``EmocaEncoders.state_dict()``) or with the ``deca.`` prefix is accepted too.

Which encoders the model gets is read from the file: E_flame is required; E_expression and E_detail are
built when present; E_expression's width (50, or 53 for the jaw-pose variant) is read from
``E_expression.layers.2.weight``. ``with_detail=False`` drops E_detail (Ig3D-short needs only E_flame and
E_expression: a third of the compute saved); ``with_detail=True`` requires it.

Validation raises ``ValueError`` naming every missing key, every unexpected key under an encoder prefix
and every shape mismatch with both shapes. Lightning checkpoints carry training state (callbacks,
loops, hyper-parameters as OmegaConf/AttributeDict objects in some versions) that
``torch.load(weights_only=True)`` may refuse; then :class:`UnsafeCheckpointError` asks for
``trust_checkpoint=True`` (only for a file you trust: it runs the pickle).
``weights_only`` compatibility of the real EMOCA v2 file is unverified.

torch is imported with this module (it is an optional dependency of ig3d: ``ig3d[torch]``).
"""

from __future__ import annotations

import copy
import logging
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..models.emoca import INPUT_SIZE, N_EXP, N_EXP_JAW, EmocaEncoders, emoca_full, emoca_short
from ._onnx_export import export_onnx
from .checkpoint import UnsafeCheckpointError, load_torch_file

__all__ = [
    "LIGHTNING_PREFIX",
    "ENCODER_NAMES",
    "DROPPED_PREFIXES",
    "UnsafeCheckpointError",
    "encoder_schema",
    "validate_emoca_state_dict",
    "load_emoca_checkpoint",
    "build_emoca",
    "onnx_output_names",
    "export_emoca_onnx",
]

log = logging.getLogger("ig3d")

PathLike = Union[str, "os.PathLike[str]"]
Shape = Tuple[int, ...]

#: Prefix of the network inside the Lightning ``DecaModule`` state dict (``DecaModule.deca``).
LIGHTNING_PREFIX = "deca."
#: The encoders ig3d keeps, as attribute names of upstream's ``DECA``/``ExpDECA`` and of
#: :class:`EmocaEncoders`.
ENCODER_NAMES: Tuple[str, ...] = ("E_flame", "E_expression", "E_detail")
_REQUIRED = "E_flame"

#: Families of non-encoder entries expected in EMOCA / DECA checkpoints, all dropped deliberately
#: (radekd91/emoca: gdl/models/DECA.py). Any other non-encoder entry is dropped as well.
DROPPED_PREFIXES: Tuple[str, ...] = (
    "deca.D_detail.",            # detail displacement decoder (Generator / GeneratorAdaIn)
    "deca.flame.",               # FLAME / FLAME_mediapipe model buffers (shapedirs, posedirs, faces, ...)
    "deca.flametex.",            # FLAME albedo space
    "deca.render.",              # SRenderY rasteriser buffers
    "deca.uv_face_eye_mask",     # detail-stage UV masks and the fixed displacement (registered buffers)
    "deca.displacement_mask",
    "deca.fixed_uv_dis",
    "deca.perceptual_loss.",     # ID-MRF loss VGG
    "deca.id_loss.",             # VGGFace2 identity loss
    "deca.vgg_loss.",            # VGG19 feature loss
    "deca.E_mica.",              # MICA identity encoder (EMICA class only)
    "emonet_loss.",              # DecaModule emotion losses and the optional emotion MLP
    "au_loss.",
    "lipread_loss.",
    "emotion_mlp.",
    "D_detail.",                 # yfeng95/DECA deca_model.tar top-level entry
)


def encoder_schema(expression_dim: Optional[int] = N_EXP, detail: bool = True) -> "OrderedDict[str, Shape]":
    """Every key of ``EmocaEncoders(expression_dim, detail).state_dict()`` with its shape, in order
    (``E_flame.*``, then ``E_expression.*``, then ``E_detail.*``; prefix with ``deca.`` for upstream's)."""
    # The meta device gives shapes without allocating or initialising 77 M parameters.
    with torch.device("meta"):
        model = EmocaEncoders(expression_dim=expression_dim, detail=detail)
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _fmt(items: List[Tuple[str, Shape]], limit: int = 8) -> str:
    s = ", ".join(f"{k} {list(shape)}" for k, shape in items[:limit])
    return s + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def _layout(state_dict: Mapping[str, object]) -> Tuple[Optional[int], bool]:
    """(expression_dim, detail) that a stripped state dict asks for, read from its keys. An
    E_expression head of another width gives 50, so that validation reports the shape mismatch."""
    names = {str(k).split(".", 1)[0] for k in state_dict}
    expression_dim = None
    if "E_expression" in names:
        w = state_dict.get("E_expression.layers.2.weight")
        width = int(w.shape[0]) if getattr(w, "ndim", 0) == 2 else N_EXP
        expression_dim = width if width in (N_EXP, N_EXP_JAW) else N_EXP
    return expression_dim, "E_detail" in names


def validate_emoca_state_dict(state_dict: Mapping[str, object]) -> None:
    """Check a stripped state dict (keys ``E_flame.*``, optionally ``E_expression.*`` and ``E_detail.*``)
    against :func:`encoder_schema` for the encoders it holds.

    Raises ``ValueError`` naming every missing key, every unexpected key and every entry whose shape
    (both shapes given) or dtype kind (float, or integer for ``num_batches_tracked``) is wrong. E_flame
    must be present; E_expression may be 50 or 53 wide.
    """
    expression_dim, detail = _layout(state_dict)
    schema = encoder_schema(expression_dim, detail)
    problems = []
    if not any(str(k).startswith(_REQUIRED + ".") for k in state_dict):
        problems.append(f"no {_REQUIRED} entries (the DECA coarse encoder is required)")
    missing = [(k, s) for k, s in schema.items() if k not in state_dict]
    if missing:
        problems.append(f"missing keys: {_fmt(missing)}")
    unexpected = [(str(k), tuple(getattr(v, "shape", ()))) for k, v in state_dict.items() if k not in schema]
    if unexpected:
        problems.append(f"unexpected keys: {_fmt(unexpected)}")
    for k, v in state_dict.items():
        if k not in schema:
            continue
        if not isinstance(v, torch.Tensor):
            problems.append(f"{k}: expected a tensor, got {type(v).__name__}")
        elif tuple(v.shape) != schema[k]:
            alt = ""
            if k.startswith("E_expression.layers.2."):
                alt = f" (E_expression may be {N_EXP} or {N_EXP_JAW} wide)"
            problems.append(f"{k}: shape {list(v.shape)} in the checkpoint, {list(schema[k])} expected{alt}")
        elif v.is_floating_point() == k.endswith("num_batches_tracked"):
            problems.append(f"{k}: dtype {v.dtype} is not {'an integer' if v.is_floating_point() else 'a float'} type")
    if problems:
        raise ValueError("not an EMOCA/DECA encoder state dict; " + "; ".join(problems))


def _is_encoder_key(key: str) -> bool:
    return key.split(".", 1)[0] in ENCODER_NAMES


def _extract_encoders(obj: Mapping) -> Tuple[Dict[str, object], List[str]]:
    """Stripped encoder entries of any accepted layout, and the dropped keys."""
    if isinstance(obj.get("state_dict"), Mapping):  # Lightning: the rest is training state
        obj = obj["state_dict"]
    if any(isinstance(obj.get(n), Mapping) for n in ENCODER_NAMES):  # DECA tar: {name: state dict}
        sd, dropped = {}, []
        for name, sub in obj.items():
            if name in ENCODER_NAMES and isinstance(sub, Mapping):
                sd.update((f"{name}.{k}", v) for k, v in sub.items())
            else:
                dropped.append(str(name))
        return sd, dropped
    sd, dropped = {}, []
    for k, v in obj.items():
        k = str(k)
        stripped = k[len(LIGHTNING_PREFIX):] if k.startswith(LIGHTNING_PREFIX) else k
        if _is_encoder_key(stripped):
            sd[stripped] = v
        else:
            dropped.append(k)
    return sd, dropped


def _families(keys: List[str]) -> List[str]:
    """Dropped keys grouped by their first two name parts (``deca.D_detail``, ``emonet_loss.emonet``)."""
    return sorted({".".join(k.split(".")[:2]) for k in keys})


def load_emoca_checkpoint(path: PathLike, *, trust_checkpoint: bool = False,
                          with_detail: Optional[bool] = None) -> Dict[str, torch.Tensor]:
    """Read an EMOCA Lightning ``.ckpt``, a DECA ``deca_model.tar`` or a flat encoder state dict and
    return the validated encoder state dict (keys ``E_flame.*`` [+ ``E_expression.*``] [+ ``E_detail.*``],
    tensors on the CPU), ready for :func:`build_emoca`.

    Non-encoder entries are dropped (:data:`DROPPED_PREFIXES`; their families are logged at DEBUG).
    ``with_detail``: None keeps E_detail when the file has it, False drops it, True requires it.
    Loads with ``weights_only=True``: a file holding pickled Python objects raises
    :class:`UnsafeCheckpointError` unless ``trust_checkpoint=True``, which runs the pickle (only for files
    you trust). Raises ``ValueError`` as :func:`validate_emoca_state_dict`.
    """
    name = os.fspath(path)
    try:
        obj = load_torch_file(path, trust_checkpoint=trust_checkpoint)
    except UnsafeCheckpointError as e:
        raise UnsafeCheckpointError(
            f"{e}. EMOCA Lightning checkpoints also store training state (callbacks, loops, hyper-parameter "
            "objects) that needs full unpickling; ig3d keeps only the encoder tensors from it") from e
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name}: expected a dict (Lightning checkpoint or state dicts), got {type(obj).__name__}")

    sd, dropped = _extract_encoders(obj)
    if not sd:
        raise ValueError(f"{name}: no {'/'.join(ENCODER_NAMES)} entries (with or without {LIGHTNING_PREFIX!r}); "
                         f"top-level keys: {[str(k) for k in list(obj)[:8]]}")
    if dropped:
        log.debug("%s: dropped %d non-encoder entries: %s", name, len(dropped), ", ".join(_families(dropped)))
    if with_detail is False:
        sd = {k: v for k, v in sd.items() if not k.startswith("E_detail.")}
    elif with_detail and not any(k.startswith("E_detail.") for k in sd):
        raise ValueError(f"{name}: with_detail=True but the file has no E_detail entries")
    try:
        validate_emoca_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return sd


def build_emoca(state_dict: Mapping[str, torch.Tensor]) -> EmocaEncoders:
    """Validate a stripped encoder state dict and return an :class:`EmocaEncoders` holding it (with the
    encoders the dict has), float32, in eval mode (BN uses the checkpoint's running statistics)."""
    validate_emoca_state_dict(state_dict)
    expression_dim, detail = _layout(state_dict)
    # Built on the meta device and then given uninitialised CPU storage: the strict load below overwrites
    # every parameter and buffer, so PyTorch's random init of 77 M weights would be wasted time.
    with torch.device("meta"):
        model = EmocaEncoders(expression_dim=expression_dim, detail=detail)
    model = model.to_empty(device="cpu")
    model.load_state_dict(dict(state_dict), strict=True)
    return model.float().eval()


def onnx_output_names(model: EmocaEncoders) -> Tuple[str, ...]:
    """ONNX output names for ``model``, in order: ``params_short`` [B, 156], ``params_full`` [B, 334]
    (only with E_detail: detail is never zero-filled), then the raw pieces of
    :meth:`EmocaEncoders.output_dims` (shape, tex, exp, pose, cam, light[, detail])."""
    head = ("params_short", "params_full") if model.has_detail else ("params_short",)
    return head + tuple(model.output_dims())


class _OnnxOutputs(torch.nn.Module):
    """Tuple-returning wrapper for export, in :func:`onnx_output_names` order."""

    def __init__(self, model: EmocaEncoders):
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor):
        out = self.model(img)
        head = (emoca_short(out), emoca_full(out)) if self.model.has_detail else (emoca_short(out),)
        return head + tuple(out.values())


def export_emoca_onnx(model: EmocaEncoders, path: PathLike, *, opset: int = 17) -> None:
    """Write ``model`` as ONNX. Input ``image`` [B, 3, 224, 224] float32 RGB in [0, 1], unnormalised.
    Outputs (:func:`onnx_output_names`): ``params_short`` [B, 156], ``params_full`` [B, 334] (with
    E_detail), ``shape`` [B, 100], ``tex`` [B, 50], ``exp`` [B, 50], ``pose`` [B, 6], ``cam`` [B, 3],
    ``light`` [B, 27], ``detail`` [B, 128] (with E_detail). Batch is dynamic; 224x224 is fixed by the
    trunk's 7x7 pool.

    Exported from a float32 eval-mode CPU copy (``model`` is left as it was) with torch's
    TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``, not ``onnxscript``. With
    all three encoders the file is ~310 MB (77 M float32 weights), under protobuf's 2 GB limit.
    """
    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    names = onnx_output_names(m)
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    export_onnx(_OnnxOutputs(m), dummy, path, input_name="image", output_names=names, opset=opset)
