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
built when present; E_expression's width (50, or 53) is read from ``E_expression.layers.2.weight``.
``with_detail=False`` drops E_detail (Ig3D-short needs only E_flame and E_expression: a third of the
compute saved); ``with_detail=True`` requires it.

**A 53-wide E_expression is ambiguous.** EMOCA adds 3 outputs to the 50 expression parameters when its
config sets ``model.exp_deca_jaw_pose`` (they become the jaw pose) or ``model.exp_deca_global_pose``
(they become the global head rotation, and the jaw stays E_flame's) (radekd91/emoca: gdl/models/DECA.py,
``ExpDECA._reconfigure`` and ``ExpDECA.decompose_code``); the weights look the same either way.
:func:`load_emoca` therefore reads the ``cfg.yaml`` that EMOCA writes into a model folder
(``<model>/cfg.yaml`` beside ``<model>/<stage>/checkpoints/*.ckpt``: one section per training stage,
``coarse_pretraining``, ``coarse``, ``detail``, each with its ``model`` settings; radekd91/emoca:
gdl_apps/EMOCA/training/train_deca.py), looking in the checkpoint's folder and up to
:data:`CFG_SEARCH_LEVELS` parents, and takes the two flags of the checkpoint's stage (the folder above
``checkpoints``). Without a cfg.yaml that answers, ``expression_extra="jaw"`` or ``"global"`` must be
given (``ig3d convert emoca --expression-extra jaw|global``); a cfg.yaml that says otherwise than an
explicit value is an error. The values end up where EMOCA puts them: in ``pose[:, 3:6]`` (jaw) or
``pose[:, 0:3]`` (global), so the Ig3D vectors keep their layout. The YAML is read with PyYAML's
``safe_load`` when PyYAML is installed, else with a small reader of block-style mappings that looks only
for these two keys (what OmegaConf writes). Both flags at once (56 outputs) are not supported.

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
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..models.emoca import (EXPRESSION_EXTRAS, INPUT_SIZE, N_EXP, N_EXP_JAW, EmocaEncoders, emoca_full,
                            emoca_short)
from ._onnx_export import export_onnx
from .checkpoint import UnsafeCheckpointError, load_torch_file

__all__ = [
    "LIGHTNING_PREFIX",
    "ENCODER_NAMES",
    "DROPPED_PREFIXES",
    "EXPRESSION_EXTRAS",
    "CFG_NAME",
    "CFG_SEARCH_LEVELS",
    "UnsafeCheckpointError",
    "encoder_schema",
    "validate_emoca_state_dict",
    "load_emoca_checkpoint",
    "build_emoca",
    "find_emoca_cfg",
    "read_cfg_expression_flags",
    "resolve_expression_extra",
    "load_emoca",
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
    extra = "jaw" if expression_dim == N_EXP_JAW else None  # same keys and shapes either way
    with torch.device("meta"):
        model = EmocaEncoders(expression_dim=expression_dim, detail=detail, expression_extra=extra)
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


def _ambiguity(what: str) -> str:
    return (f"E_expression has {N_EXP_JAW} outputs: {N_EXP} expression parameters and 3 pose values, which EMOCA "
            f"uses either as the jaw pose (model.exp_deca_jaw_pose) or as the global head rotation "
            f"(model.exp_deca_global_pose); the weights cannot tell which, and {what}. Say which with "
            f"expression_extra='jaw' or 'global' (ig3d convert emoca --expression-extra jaw|global), as set in "
            f"the cfg.yaml of the EMOCA model folder the checkpoint came from")


def build_emoca(state_dict: Mapping[str, torch.Tensor], expression_extra: Optional[str] = None) -> EmocaEncoders:
    """Validate a stripped encoder state dict and return an :class:`EmocaEncoders` holding it (with the
    encoders the dict has), float32, in eval mode (BN uses the checkpoint's running statistics).

    expression_extra: required for a 53-wide E_expression ("jaw" or "global", see the module docstring;
    :func:`load_emoca` finds it in EMOCA's cfg.yaml), refused otherwise."""
    validate_emoca_state_dict(state_dict)
    expression_dim, detail = _layout(state_dict)
    if expression_extra is not None and expression_extra not in EXPRESSION_EXTRAS:
        raise ValueError(f"expression_extra: expected 'jaw' or 'global', got {expression_extra!r}")
    if expression_dim == N_EXP_JAW and expression_extra is None:
        raise ValueError(_ambiguity("none was given"))
    if expression_dim != N_EXP_JAW and expression_extra is not None:
        have = "no E_expression" if expression_dim is None else f"a {expression_dim}-wide E_expression"
        raise ValueError(f"expression_extra={expression_extra!r} was given, but the checkpoint has {have}: it holds "
                         f"no extra pose values (only a {N_EXP_JAW}-wide E_expression does)")
    # Built on the meta device and then given uninitialised CPU storage: the strict load below overwrites
    # every parameter and buffer, so PyTorch's random init of 77 M weights would be wasted time.
    with torch.device("meta"):
        model = EmocaEncoders(expression_dim=expression_dim, detail=detail, expression_extra=expression_extra)
    model = model.to_empty(device="cpu")
    model.load_state_dict(dict(state_dict), strict=True)
    return model.float().eval()


# --------------------------------------------------------------------------------------------
# EMOCA's cfg.yaml: what a 53-wide E_expression's 3 extra outputs are.

#: The file EMOCA writes into a model folder (radekd91/emoca: gdl_apps/EMOCA/training/train_deca.py).
CFG_NAME = "cfg.yaml"
#: How many folders above the checkpoint's own are searched for :data:`CFG_NAME`
#: (``<model>/detail/checkpoints/x.ckpt`` -> ``<model>`` is 2 up).
CFG_SEARCH_LEVELS = 3
_FLAG_KEYS = {"exp_deca_jaw_pose": "jaw", "exp_deca_global_pose": "global"}
_YAML_BOOLS = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
_YAML_KEY = re.compile(r"""^(\s*)("[^"]*"|'[^']*'|[^\s#'"][^:#]*?)\s*:(?:\s+(.*?))?\s*$""")


def find_emoca_cfg(checkpoint: PathLike) -> Optional[Path]:
    """The nearest ``cfg.yaml`` in the checkpoint's folder or one of its :data:`CFG_SEARCH_LEVELS`
    parents, or None."""
    folder = Path(checkpoint).absolute().parent
    for d in [folder, *folder.parents][:CFG_SEARCH_LEVELS + 1]:
        if (d / CFG_NAME).is_file():
            return d / CFG_NAME
    return None


def _yaml_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().strip("'\"").lower()
    if text in _YAML_BOOLS:
        return _YAML_BOOLS[text]
    raise ValueError(f"{where}: expected true or false, got {value!r}")


def _flags_tolerant(text: str) -> Dict[Tuple[str, ...], str]:
    """{key path: raw value} of the two flag keys in block-style YAML (what OmegaConf writes), found by
    indentation; everything else (lists, flow style, multi-line scalars) is skipped."""
    out: Dict[Tuple[str, ...], str] = {}
    stack: List[Tuple[int, str]] = []
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", "-", "---", "...")):
            continue
        m = _YAML_KEY.match(line)
        if m is None:
            continue
        indent, key, value = len(m.group(1)), m.group(2).strip("'\""), (m.group(3) or "")
        if value.startswith("#"):
            value = ""
        value = re.sub(r"\s+#.*$", "", value)
        while stack and stack[-1][0] >= indent:
            stack.pop()
        path = tuple(k for _, k in stack) + (key,)
        if key in _FLAG_KEYS and value:
            out[path] = value
        if not value:
            stack.append((indent, key))
    return out


def _flags_yaml(data: Any, prefix: Tuple[str, ...] = ()) -> Dict[Tuple[str, ...], Any]:
    out: Dict[Tuple[str, ...], Any] = {}
    if isinstance(data, Mapping):
        for k, v in data.items():
            if str(k) in _FLAG_KEYS and not isinstance(v, Mapping):
                out[prefix + (str(k),)] = v
            else:
                out.update(_flags_yaml(v, prefix + (str(k),)))
    return out


def read_cfg_expression_flags(cfg_path: PathLike, *, use_pyyaml: Optional[bool] = None) -> Dict[str, Dict[str, bool]]:
    """The ``exp_deca_jaw_pose`` / ``exp_deca_global_pose`` settings of an EMOCA cfg.yaml, per stage:
    ``{stage: {"jaw": bool, "global": bool}}`` for every ``<stage>.model`` section that sets at least
    one of them (an unset one is False, as upstream's ``config.get(key, False)``); a cfg with a top-level
    ``model`` section gives stage ``""``. use_pyyaml: None uses PyYAML's ``safe_load`` when installed,
    False the built-in reader. Raises ``ValueError`` naming the file for a value that is not a boolean
    or YAML that PyYAML cannot parse."""
    path = Path(cfg_path)
    text = path.read_text(encoding="utf-8", errors="replace")
    raw: Dict[Tuple[str, ...], Any]
    yaml = None
    if use_pyyaml is not False:
        try:
            import yaml  # type: ignore[no-redef]
        except ImportError:
            if use_pyyaml:
                raise
    if yaml is not None:
        try:
            raw = _flags_yaml(yaml.safe_load(text))
        except yaml.YAMLError as e:
            raise ValueError(f"{path}: not valid YAML ({e})") from None
    else:
        raw = _flags_tolerant(text)
    stages: Dict[str, Dict[str, bool]] = {}
    for key_path, value in raw.items():
        if len(key_path) < 2 or key_path[-2] != "model":
            continue
        stage = ".".join(key_path[:-2])
        flags = stages.setdefault(stage, {"jaw": False, "global": False})
        flags[_FLAG_KEYS[key_path[-1]]] = _yaml_bool(value, f"{path}: {'.'.join(key_path)}")
    return stages


def _extra_from_cfg(cfg: Path, checkpoint: Path) -> Tuple[Optional[str], str]:
    """("jaw" | "global" | None, what the cfg says) for a 53-wide checkpoint."""
    stages = read_cfg_expression_flags(cfg)
    stage = checkpoint.absolute().parent.parent.name if checkpoint.absolute().parent.name == "checkpoints" else None

    def answer(flags: Dict[str, bool]) -> Optional[str]:
        return "jaw" if flags["jaw"] and not flags["global"] else (
            "global" if flags["global"] and not flags["jaw"] else None)

    def describe(name: str, flags: Dict[str, bool]) -> str:
        where = f"{name}.model" if name else "model"
        return f"{where}.exp_deca_jaw_pose={flags['jaw']}, {where}.exp_deca_global_pose={flags['global']}"

    if not stages:
        return None, f"{cfg} sets neither model.exp_deca_jaw_pose nor model.exp_deca_global_pose"
    if stage in stages:
        chosen = {stage: stages[stage]}
    elif "" in stages:
        chosen = {"": stages[""]}
    else:  # the checkpoint's stage is unknown: every stage must give the same answer
        chosen = stages
    answers = {answer(f) for f in chosen.values()}
    said = f"{cfg} sets " + "; ".join(describe(n, f) for n, f in chosen.items())
    if len(answers) == 1 and None not in answers:
        return answers.pop(), said
    if len(answers) > 1:
        return None, said + (" (the stages disagree, and the checkpoint is not in a <model>/<stage>/checkpoints/ "
                             "folder that says which stage it is)")
    widths = sorted({N_EXP + 3 * (f["jaw"] + f["global"]) for f in chosen.values()})
    return None, said + f", i.e. an E_expression {' or '.join(str(w) for w in widths)} wide"


def resolve_expression_extra(checkpoint: PathLike, expression_dim: Optional[int],
                             expression_extra: Optional[str] = None) -> Optional[str]:
    """What the 3 extra outputs of the checkpoint's E_expression are ("jaw" or "global"), or None when
    it has no extra outputs (50 wide, or no E_expression).

    For a 53-wide E_expression, the cfg.yaml found by :func:`find_emoca_cfg` decides when it answers;
    ``expression_extra`` must then agree with it, and is required when there is no cfg.yaml or it does
    not answer. ``expression_extra`` given for a checkpoint without extra outputs is an error too.
    Raises ``ValueError`` explaining what is missing or contradictory."""
    if expression_extra is not None and expression_extra not in EXPRESSION_EXTRAS:
        raise ValueError(f"expression_extra: expected 'jaw' or 'global', got {expression_extra!r}")
    name = os.fspath(checkpoint)
    if expression_dim != N_EXP_JAW:
        if expression_extra is not None:
            have = "no E_expression" if expression_dim is None else f"a {expression_dim}-wide E_expression"
            raise ValueError(f"{name}: expression_extra={expression_extra!r} was given, but the checkpoint has {have}: "
                             f"it holds no extra pose values (only a {N_EXP_JAW}-wide E_expression does)")
        return None
    cfg = find_emoca_cfg(checkpoint)
    if cfg is None:
        folder = Path(checkpoint).absolute().parent
        looked = [str(d) for d in [folder, *folder.parents][:CFG_SEARCH_LEVELS + 1]]
        if expression_extra is not None:
            return expression_extra
        raise ValueError(f"{name}: " + _ambiguity(f"no {CFG_NAME} was found beside it (looked in {', '.join(looked)})"))
    from_cfg, said = _extra_from_cfg(cfg, Path(checkpoint))
    if from_cfg is None:
        if expression_extra is not None:
            log.warning("%s: %s; using expression_extra=%r as given", name, said, expression_extra)
            return expression_extra
        raise ValueError(f"{name}: " + _ambiguity(f"{said}, which does not settle it for a {N_EXP_JAW}-wide one"))
    if expression_extra is not None and expression_extra != from_cfg:
        raise ValueError(f"{name}: expression_extra={expression_extra!r} contradicts the model folder's config: "
                         f"{said}, i.e. {from_cfg!r}; drop the argument or fix {cfg}")
    return from_cfg


def load_emoca(path: PathLike, *, trust_checkpoint: bool = False, with_detail: Optional[bool] = None,
               expression_extra: Optional[str] = None) -> EmocaEncoders:
    """:func:`load_emoca_checkpoint`, then :func:`resolve_expression_extra` (cfg.yaml or
    ``expression_extra``), then :func:`build_emoca`: a checkpoint file -> :class:`EmocaEncoders` in eval
    mode."""
    sd = load_emoca_checkpoint(path, trust_checkpoint=trust_checkpoint, with_detail=with_detail)
    extra = resolve_expression_extra(path, _layout(sd)[0], expression_extra)
    return build_emoca(sd, extra)


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
