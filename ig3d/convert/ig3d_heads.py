"""Ig3D heads: feature sets, strict state-dict loading, export to :class:`ig3d.fusion.FusedHead`,
and the late-fusion table.

* :data:`FEATURE_SETS`: the four Ig3D 3D feature vectors (docs REFERENCE 1.1) as explicit segment
  lists, and :func:`feature_select`, the index list a fused head uses to pick a set out of the raw
  vector an encoder gives (EMOCA-full 334 or SMIRK-full 358).
* Loading: :func:`validate_head_state_dict` names every missing key, unexpected key and shape mismatch;
  :func:`build_head` infers the head type and sizes from the keys and loads strictly;
  :func:`load_head_checkpoint` reads a file with :func:`ig3d.convert.checkpoint.load_torch_file`
  (tensors only unless trusted); :func:`split_ddamfn_fusion_state_dict` separates an upstream
  intermediate-fusion network into this fusion head and the DDAMFN trunk
  (:func:`ig3d.convert.ddamfn.build_ddamfn`).
* :func:`to_fused_head`: any of the four heads -> a :class:`FusedHead` (BatchNorm folded, residual
  skips, intermediate-fusion concatenation), with the class/VA layout of a dataset (:data:`DATASETS`).
* :data:`LATE_FUSION` and :func:`late_fusion_head`: Ig3D's late-fusion weights (REFERENCE 1.4) and a
  fused head that combines a 3D head with a 2D network's raw scores, including the RAF-DB class-order
  mapping of the released DDAMFN++ checkpoint (REFERENCE 1.5).

VA convention everywhere: a 10-output head gives [0:8] AffectNet-8 logits, [8] valence, [9] arousal;
a 2-output VA head gives [0] valence, [1] arousal (REFERENCE 1.8, bug 1).

torch is imported with this module (it is an optional dependency of ig3d: ``ig3d[torch]``).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Type, Union

import numpy as np
import torch
from torch import nn

from ..fusion import FusedHead, Layer, fold_batchnorm
from ..models.ig3d_heads import CageFusionHead, DDAMFNFusionHead, MLP4, ResidualHead
from ..models.smirk import FULL_SEGMENTS as _SMIRK_FULL, OUTPUT_DIMS as _SMIRK_DIMS, SHORT_SEGMENTS as _SMIRK_SHORT
from .checkpoint import UnsafeCheckpointError, load_torch_file
from .ddamfn import AFFECTNET8_LABELS, DDAMFN_RAFDB_LABELS, RAFDB_LABELS

__all__ = [
    "FeatureSet",
    "FEATURE_SETS",
    "feature_select",
    "DATASETS",
    "HEAD_TYPES",
    "FUSION_HEAD_PREFIXES",
    "UnsafeCheckpointError",
    "head_schema",
    "validate_head_state_dict",
    "load_head_state_dict",
    "infer_head",
    "build_head",
    "read_head_state_dict",
    "load_head_checkpoint",
    "split_ddamfn_fusion_state_dict",
    "to_fused_head",
    "INTERMEDIATE_FUSION",
    "SCORES2D",
    "RAFDB_ORDERS",
    "LATE_FUSION",
    "rafdb_fusion_map",
    "late_fusion_head",
]

PathLike = Union[str, "os.PathLike[str]"]
Shape = Tuple[int, ...]
Head = Union[MLP4, ResidualHead, DDAMFNFusionHead, CageFusionHead]

# ---------------------------------------------------------------------------------------------
# Feature sets (docs REFERENCE 1.1).


@dataclass(frozen=True)
class FeatureSet:
    """One Ig3D 3D feature vector: named segments concatenated in a fixed order.

    name: key in :data:`FEATURE_SETS`; encoder: "emoca" or "smirk"; segments: ((name, width), ...)
    in concatenation order; raw: the name of the encoder's full vector this set is taken from.
    """

    name: str
    encoder: str
    segments: Tuple[Tuple[str, int], ...]
    raw: str

    @property
    def dim(self) -> int:
        return sum(n for _, n in self.segments)

    def spans(self) -> "OrderedDict[str, Tuple[int, int]]":
        """segment name -> (start, stop) in this vector."""
        out, start = OrderedDict(), 0
        for seg, n in self.segments:
            out[seg] = (start, start + n)
            start += n
        return out


# EMOCA: the JSON keys and widths of upstream's ``default_keys`` (dongludeeplearning/Ig3D:
# models/classification/nofusion/Affectnet_Emoca_{S,F}_train.py), in that order; ``cam`` (3) and
# ``light`` (27) are never used. The full order is inferred from those keys (REFERENCE 9, question 1):
# Ig3D's EMOCA writer is unpublished, and ig3d fixes this order as canonical.
_EMOCA_FULL: Tuple[Tuple[str, int], ...] = (("exp", 50), ("pose", 6), ("tex", 50), ("detail", 128), ("shape", 100))
_EMOCA_SHORT: Tuple[Tuple[str, int], ...] = (("exp", 50), ("pose", 6), ("shape", 100))

#: The four Ig3D feature sets. Segment order (widths):
#:
#: * ``emoca_short`` (156): exp 50, pose 6, shape 100
#: * ``emoca_full`` (334): exp 50, pose 6, tex 50, detail 128, shape 100
#: * ``smirk_short`` (353): pose_params 3, shape_params 300, expression_params 50
#: * ``smirk_full`` (358): pose_params 3, shape_params 300, expression_params 50, eyelid_params 2, jaw_params 3
#:
#: SMIRK-short is a prefix of SMIRK-full (SmirkEncoder's output order minus ``cam``,
#: :mod:`ig3d.models.smirk`), so a SMIRK-short head picks the first 353 of a full vector. EMOCA-short is
#: *not* a prefix of EMOCA-full: it picks [0:56] and [234:334] (exp, pose, shape).
FEATURE_SETS: Dict[str, FeatureSet] = {
    "emoca_short": FeatureSet("emoca_short", "emoca", _EMOCA_SHORT, "emoca_full"),
    "emoca_full": FeatureSet("emoca_full", "emoca", _EMOCA_FULL, "emoca_full"),
    "smirk_short": FeatureSet("smirk_short", "smirk", tuple((k, _SMIRK_DIMS[k]) for k in _SMIRK_SHORT), "smirk_full"),
    "smirk_full": FeatureSet("smirk_full", "smirk", tuple((k, _SMIRK_DIMS[k]) for k in _SMIRK_FULL), "smirk_full"),
}


def _feature_set(name: str) -> FeatureSet:
    if name not in FEATURE_SETS:
        raise ValueError(f"feature set {name!r}: expected one of {sorted(FEATURE_SETS)}")
    return FEATURE_SETS[name]


def feature_select(feature_set: str, input_set: Optional[str] = None) -> np.ndarray:
    """Indices [D_set] (int32) that pick ``feature_set`` out of an ``input_set`` vector, in the
    set's segment order. ``input_set`` defaults to the encoder's full vector (``emoca_full`` or
    ``smirk_full``). Raises ``ValueError`` when the input lacks a segment the set needs."""
    fs = _feature_set(feature_set)
    src = _feature_set(input_set or fs.raw)
    spans = src.spans()
    if fs.encoder != src.encoder:
        raise ValueError(f"feature set {fs.name!r} ({fs.encoder}) cannot be taken from {src.name!r} ({src.encoder})")
    missing = [seg for seg, _ in fs.segments if seg not in spans]
    if missing:
        raise ValueError(f"feature set {fs.name!r} needs segments {missing} that {src.name!r} does not have")
    return np.concatenate([np.arange(*spans[seg]) for seg, _ in fs.segments]).astype(np.int32)


# ---------------------------------------------------------------------------------------------
# Output layouts.

#: dataset -> (num_classes, va_index, class labels) of a head's outputs.
#: ``affectnet8``: [0:8] logits (:data:`ig3d.convert.ddamfn.AFFECTNET8_LABELS`), [8] V, [9] A.
#: ``rafdb``: [0:7] logits in RAF-DB's native order (:data:`ig3d.convert.ddamfn.RAFDB_LABELS`); an MLP4
#: keeps upstream's 10-wide output layer and only [0:7] are used. ``affectnet_va``: [0] V, [1] A.
DATASETS: Dict[str, Tuple[int, Optional[int], Optional[Tuple[str, ...]]]] = {
    "affectnet8": (8, 8, AFFECTNET8_LABELS),
    "rafdb": (7, None, RAFDB_LABELS),
    "affectnet_va": (0, 0, None),
}
# Output widths each dataset accepts (upstream RAF-DB MLP4s keep 10 outputs, the fusion heads 7).
_DATASET_OUT = {"affectnet8": (10,), "rafdb": (7, 10), "affectnet_va": (2,)}


def _layout(dataset: str, out_dim: int) -> Tuple[int, Optional[int], Optional[Tuple[str, ...]]]:
    if dataset not in DATASETS:
        raise ValueError(f"dataset {dataset!r}: expected one of {sorted(DATASETS)}")
    if out_dim not in _DATASET_OUT[dataset]:
        raise ValueError(f"dataset {dataset!r} needs a head with {' or '.join(map(str, _DATASET_OUT[dataset]))} "
                         f"outputs, this one has {out_dim}")
    return DATASETS[dataset]


# ---------------------------------------------------------------------------------------------
# State dicts.

#: head type -> class. :func:`infer_head` recognises each by its first key.
HEAD_TYPES: Dict[str, Type[nn.Module]] = {
    "mlp4": MLP4,
    "residual": ResidualHead,
    "ddamfn_fusion": DDAMFNFusionHead,
    "cage_fusion": CageFusionHead,
}
_MARKERS = {"fc1.weight": "mlp4", "Smirk_Linear.weight": "residual", "Wash_Linear1.weight": "ddamfn_fusion",
            "additional_feature_transform.weight": "cage_fusion"}
#: Key prefixes of the fusion head inside an upstream DDAMFN intermediate-fusion network
#: (dongludeeplearning/Ig3D: models/classification/intermediatefusion/networks/DDAM_smirkfusion_feature.py).
FUSION_HEAD_PREFIXES: Tuple[str, ...] = ("Wash_Linear1.", "linear_fusion.", "out.")


def head_schema(module: nn.Module) -> "OrderedDict[str, Shape]":
    """Every key of ``module.state_dict()`` with its shape, in order."""
    return OrderedDict((k, tuple(v.shape)) for k, v in module.state_dict().items())


def _fmt(items: List[str], limit: int = 8) -> str:
    return ", ".join(items[:limit]) + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def validate_head_state_dict(module: nn.Module, state_dict: Mapping[str, object]) -> None:
    """Check ``state_dict`` against ``module``'s keys and shapes. Raises ``ValueError`` naming every
    missing key, every unexpected key, every shape mismatch (both shapes) and every non-tensor or
    wrongly typed entry (float, or integer for ``num_batches_tracked``)."""
    schema = head_schema(module)
    problems = []
    missing = [k for k in schema if k not in state_dict]
    unexpected = [k for k in state_dict if k not in schema]
    if missing:
        problems.append(f"missing keys: {_fmt(missing)}")
    if unexpected:
        hint = ""
        if isinstance(module, DDAMFNFusionHead) and any(k.startswith(("features.", "cat_head")) for k in unexpected):
            hint = " (a whole intermediate-fusion network? use split_ddamfn_fusion_state_dict)"
        problems.append(f"unexpected keys: {_fmt(unexpected)}{hint}")
    bad_shape, bad_type = [], []
    for k, shape in schema.items():
        if k not in state_dict:
            continue
        v = state_dict[k]
        if not isinstance(v, torch.Tensor):
            bad_type.append(f"{k} is a {type(v).__name__}, not a tensor")
            continue
        if tuple(v.shape) != shape:
            bad_shape.append(f"{k} {list(v.shape)} (expected {list(shape)})")
        want_float = not k.endswith("num_batches_tracked")
        if v.is_floating_point() != want_float:
            bad_type.append(f"{k} has dtype {v.dtype} (expected {'floating point' if want_float else 'integer'})")
    if bad_shape:
        problems.append(f"shape mismatches: {_fmt(bad_shape)}")
    if bad_type:
        problems.append(f"bad entries: {_fmt(bad_type)}")
    if problems:
        raise ValueError(f"{type(module).__name__} state dict does not match: " + "; ".join(problems))


def load_head_state_dict(module: Head, state_dict: Mapping[str, torch.Tensor]) -> Head:
    """Validate (:func:`validate_head_state_dict`) and load strictly; returns ``module`` in eval mode."""
    validate_head_state_dict(module, state_dict)
    module.load_state_dict(state_dict, strict=True)
    return module.eval()


def _shape(state_dict: Mapping[str, object], key: str, ndim: int) -> Shape:
    v = state_dict.get(key)
    if not isinstance(v, torch.Tensor) or v.dim() != ndim:
        got = "missing" if v is None else (list(v.shape) if isinstance(v, torch.Tensor) else type(v).__name__)
        raise ValueError(f"{key!r} must be a {ndim}-D tensor, got {got}")
    return tuple(v.shape)


def infer_head(state_dict: Mapping[str, object]) -> Tuple[str, Dict[str, int]]:
    """(head type, constructor sizes) from the keys and shapes, e.g. ``("mlp4", {"in_dim": 156,
    "out_dim": 10})``. Raises ``ValueError`` when no or several head types match."""
    kinds = sorted({kind for key, kind in _MARKERS.items() if key in state_dict})
    if len(kinds) != 1:
        raise ValueError(f"cannot tell the Ig3D head type: expected exactly one of the keys {sorted(_MARKERS)}, "
                         f"found {'none' if not kinds else [k for k in _MARKERS if k in state_dict]}")
    kind = kinds[0]
    if kind == "mlp4":
        in_dim, out_dim = _shape(state_dict, "fc1.weight", 2)[1], _shape(state_dict, "output.weight", 2)[0]
    elif kind == "residual":
        in_dim, out_dim = _shape(state_dict, "Smirk_Linear.weight", 2)[1], _shape(state_dict, "fc.weight", 2)[0]
    elif kind == "ddamfn_fusion":
        in_dim, out_dim = _shape(state_dict, "Wash_Linear1.weight", 2)[1], _shape(state_dict, "out.weight", 2)[0]
    else:
        in_dim = _shape(state_dict, "additional_feature_transform.weight", 2)[1]
        out_dim = _shape(state_dict, "classifier.2.weight", 2)[0]
    return kind, {"in_dim": in_dim, "out_dim": out_dim}


def build_head(state_dict: Mapping[str, torch.Tensor], kind: Optional[str] = None) -> Head:
    """Build the head a state dict belongs to (type and sizes from :func:`infer_head`; ``kind``, if
    given, must agree) and load it strictly. Returns the module in eval mode."""
    found, sizes = infer_head(state_dict)
    if kind is not None and kind != found:
        if kind not in HEAD_TYPES:
            raise ValueError(f"kind {kind!r}: expected one of {sorted(HEAD_TYPES)}")
        raise ValueError(f"kind={kind!r}, but the state dict holds a {found!r} head")
    with torch.device("meta"):  # validate shapes before allocating ~13 M parameters
        validate_head_state_dict(HEAD_TYPES[found](**sizes), state_dict)
    return load_head_state_dict(HEAD_TYPES[found](**sizes), state_dict)


def read_head_state_dict(path: PathLike, *, trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """Read a head's state dict from a file: a bare state dict (upstream VA scripts,
    ``torch.save(MODEL_cls.state_dict())``) or a dict holding it under ``model_state_dict``
    (upstream classification scripts). Tensors only unless ``trust_checkpoint``."""
    obj = load_torch_file(path, trust_checkpoint=trust_checkpoint)
    if isinstance(obj, Mapping) and isinstance(obj.get("model_state_dict"), Mapping):
        obj = obj["model_state_dict"]  # iter / optimizer_state_dict are training state: dropped
    if not isinstance(obj, Mapping) or not obj:
        raise ValueError(f"{os.fspath(path)}: expected a state dict (or one under 'model_state_dict'), "
                         f"got {type(obj).__name__}")
    return dict(obj)


def load_head_checkpoint(path: PathLike, *, kind: Optional[str] = None, trust_checkpoint: bool = False) -> Head:
    """:func:`read_head_state_dict` then :func:`build_head`; errors name the file."""
    sd = read_head_state_dict(path, trust_checkpoint=trust_checkpoint)
    try:
        return build_head(sd, kind)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from e


def split_ddamfn_fusion_state_dict(
        state_dict: Mapping[str, torch.Tensor]) -> Tuple[Dict[str, torch.Tensor], Dict[str, torch.Tensor]]:
    """Split an upstream DDAMFN intermediate-fusion network's state dict into (fusion head, trunk).

    The head keys are those under :data:`FUSION_HEAD_PREFIXES` (for :class:`DDAMFNFusionHead`); the
    rest (``features``, ``cat_head<i>``, ``Linear``, and the dead ``fc``/``bn``) is a DDAMNet state
    dict for :func:`ig3d.convert.ddamfn.build_ddamfn` (which discards ``bn``; ``fc`` is loaded but the
    fusion uses :meth:`DDAMNet.features`, not the logits)."""
    head = {k: v for k, v in state_dict.items() if k.startswith(FUSION_HEAD_PREFIXES)}
    trunk = {k: v for k, v in state_dict.items() if not k.startswith(FUSION_HEAD_PREFIXES)}
    return head, trunk


# ---------------------------------------------------------------------------------------------
# Export to the fused head.


def _np(t: Optional[torch.Tensor]) -> Optional[np.ndarray]:
    return None if t is None else t.detach().to(torch.float64).cpu().numpy()


def _linear(m: nn.Linear, activation: str = "none", slope: float = 0.2, skip_from: Optional[int] = None) -> Layer:
    return Layer(_np(m.weight), _np(m.bias), activation, slope, skip_from)


def _head_layers(module: Head) -> Tuple[List[Layer], dict]:
    """(layers, intermediate-fusion settings) of a head, inference semantics (dropout off, BN folded)."""
    if isinstance(module, MLP4):
        slope = float(module.leaky_relu.negative_slope)
        layers = []
        for fc, bn in module.stages():
            w, b = fold_batchnorm(_np(fc.weight), _np(fc.bias), _np(bn.weight), _np(bn.bias),
                                  _np(bn.running_mean), _np(bn.running_var), bn.eps)
            layers.append(Layer(w, b, "leaky_relu", slope))
        return layers + [_linear(module.output)], {}
    if isinstance(module, ResidualHead):
        # Layer l's output is x_{l+1}: x_1 = Smirk_Linear(x); each block's second Linear adds the
        # block's input back (x_3 = ... + x_1, x_5 = ... + x_3).
        b1, b2 = module.residual_block1, module.residual_block2
        return [_linear(module.Smirk_Linear),
                _linear(b1[0], "relu"), _linear(b1[3], skip_from=1),
                _linear(b2[0], "relu"), _linear(b2[3], skip_from=3),
                _linear(module.fc)], {}
    if isinstance(module, DDAMFNFusionHead):
        lf = module.linear_fusion
        return ([_linear(module.Wash_Linear1),
                 _linear(lf[0], "leaky_relu", float(lf[1].negative_slope)),
                 _linear(lf[2], "leaky_relu", float(lf[3].negative_slope)),
                 _linear(module.out)],
                dict(concat_at=1, concat_order="3d_first", features2d_dim=module.features2d_dim))
    if isinstance(module, CageFusionHead):
        c = module.classifier
        return ([_linear(module.additional_feature_transform), _linear(c[0], "tanh"), _linear(c[2])],
                dict(concat_at=1, concat_order="2d_first", features2d_dim=module.features2d_dim))
    raise TypeError(f"to_fused_head: expected an Ig3D head ({', '.join(c.__name__ for c in HEAD_TYPES.values())}), "
                    f"got {type(module).__name__}")


def to_fused_head(
    module: Head,
    *,
    feature_set: str,
    dataset: str,
    input_set: Optional[str] = None,
    fusion: Optional[str] = None,
    scores2d_dim: int = 0,
    fusion_map: Optional[Sequence[int]] = None,
    fusion_weights=None,
    precision: str = "fp32",
    name: str = "",
) -> FusedHead:
    """An Ig3D head as a :class:`FusedHead` with the same eval-mode outputs.

    Args:
        module: :class:`MLP4` (BatchNorm folded, LeakyReLU 0.2), :class:`ResidualHead` (``skip_from``),
            :class:`DDAMFNFusionHead` or :class:`CageFusionHead` (``concat_at=1`` after the 3D
            projection, "3d_first" / "2d_first", ``features2d_dim=512``: call the result with
            ``features2d=``).
        feature_set: the set the head was trained on (:data:`FEATURE_SETS`); its width must equal the
            head's input width.
        dataset: output layout (:data:`DATASETS`): "affectnet8", "rafdb" or "affectnet_va".
        input_set: the vector the fused head will be given (``params3d`` [B, D_in]); default the
            encoder's full vector. The head's ``select`` picks ``feature_set`` out of it.
        fusion, scores2d_dim, fusion_map, fusion_weights: late fusion, as in :class:`FusedHead`
            (:func:`late_fusion_head` fills them from :data:`LATE_FUSION`).
        precision: "fp32" or "bf16" (CPU weight storage).

    Ig3D uses raw feature values: no mean/std standardisation.
    """
    layers, concat = _head_layers(module)
    fs = _feature_set(feature_set)
    if layers[0].in_features != fs.dim:
        raise ValueError(f"{type(module).__name__} takes {layers[0].in_features} features, "
                         f"but feature set {fs.name!r} has {fs.dim}")
    num_classes, va_index, labels = _layout(dataset, layers[-1].out_features)
    select = feature_select(fs.name, input_set)
    return FusedHead(
        layers, input_dim=_feature_set(input_set or fs.raw).dim, select=select,
        num_classes=num_classes, va_index=va_index, labels=labels, **concat,
        fusion=fusion or "none", scores2d_dim=scores2d_dim, fusion_map=fusion_map, fusion_weights=fusion_weights,
        precision=precision, name=name or f"ig3d-{type(module).__name__}-{fs.name}-{dataset}")


# ---------------------------------------------------------------------------------------------
# Fusion tables.

#: Intermediate fusion (REFERENCE 1.2/1.3): (dataset, encoder) -> head class and the feature set
#: its 3D input is. DDAMFN's 2D feature is :meth:`ig3d.models.ddamfn.DDAMNet.features`; CAGE's is the
#: 512-d Tanh output of its MaxViT classifier.
INTERMEDIATE_FUSION: Dict[Tuple[str, str], dict] = {
    ("affectnet8", "emoca"): dict(head="ddamfn_fusion", feature_set="emoca_short", out_dim=10),
    ("affectnet8", "smirk"): dict(head="ddamfn_fusion", feature_set="smirk_full", out_dim=10),
    ("rafdb", "emoca"): dict(head="ddamfn_fusion", feature_set="emoca_full", out_dim=7),
    ("rafdb", "smirk"): dict(head="ddamfn_fusion", feature_set="smirk_full", out_dim=7),
    ("affectnet_va", "emoca"): dict(head="cage_fusion", feature_set="emoca_short", out_dim=2),
}

#: The 2D networks' raw scores that late fusion takes: width and meaning of each column.
#: ``ddamfn_affectnet8``: DDAMNet's 8 logits (AffectNet-8 order, same as Ig3D's).
#: ``ddamfn_rafdb``: DDAMNet's 7 RAF-DB logits, in the order named by ``scores2d_order``
#: (:data:`RAFDB_ORDERS`). ``cage_va``: CAGE's VA model, [0] valence, [1] arousal.
SCORES2D: Dict[str, dict] = {
    "ddamfn_affectnet8": dict(dim=8, labels=AFFECTNET8_LABELS),
    "ddamfn_rafdb": dict(dim=7, labels=None),
    "cage_va": dict(dim=2, labels=("valence", "arousal")),
}

#: RAF-DB 2D score orders: "native" (RAF-DB's labels 1..7, Ig3D's order; the authors' own
#: ``RAFDB_acc0.9016.pth``) and "ddamfn++" (the released DDAMFN++ RAF-DB checkpoint,
#: :data:`ig3d.convert.ddamfn.DDAMFN_RAFDB_LABELS`).
RAFDB_ORDERS: Dict[str, Tuple[str, ...]] = {"native": RAFDB_LABELS, "ddamfn++": DDAMFN_RAFDB_LABELS}

#: Ig3D late fusion (REFERENCE 1.4; dongludeeplearning/Ig3D: models/classification/latefusion/
#: *_weight_fusion.py, models/VA/latefusion/latefusion_VA_test_generate_csv.py): (task, 3D encoder) ->
#: weights of ``w2d * s2d + w3d * s3d`` on raw scores, the feature set of the 3D head (an MLP4) and
#: the 2D scores (:data:`SCORES2D`). The VA weights apply to valence and arousal alike. Upstream
#: hard-codes these and apparently tuned them on the evaluation split (REFERENCE 1.8, bug 8).
LATE_FUSION: Dict[Tuple[str, str], dict] = {
    ("affectnet8", "emoca"): dict(w2d=0.80, w3d=0.20, feature_set="emoca_short", scores2d="ddamfn_affectnet8"),
    ("affectnet8", "smirk"): dict(w2d=0.77, w3d=0.23, feature_set="smirk_full", scores2d="ddamfn_affectnet8"),
    ("rafdb", "emoca"): dict(w2d=0.65, w3d=0.35, feature_set="emoca_full", scores2d="ddamfn_rafdb"),
    ("rafdb", "smirk"): dict(w2d=0.65, w3d=0.35, feature_set="smirk_full", scores2d="ddamfn_rafdb"),
    ("affectnet_va", "emoca"): dict(w2d=0.60, w3d=0.40, feature_set="emoca_short", scores2d="cage_va"),
}


def rafdb_fusion_map(order: str) -> Tuple[int, ...]:
    """fusion_map [7] for RAF-DB 2D scores in ``order`` (:data:`RAFDB_ORDERS`): 2D column k fuses with
    the head's native output ``fusion_map[k]``. "ddamfn++" gives (6, 3, 4, 0, 1, 2, 5), i.e.
    :data:`ig3d.convert.ddamfn.DDAMFN_FROM_RAFDB`."""
    if order not in RAFDB_ORDERS:
        raise ValueError(f"scores2d_order {order!r}: expected one of {sorted(RAFDB_ORDERS)}")
    return tuple(RAFDB_LABELS.index(label) for label in RAFDB_ORDERS[order])


def late_fusion_head(
    module: Union[MLP4, ResidualHead],
    task: str,
    encoder: str,
    *,
    mode: str = "weighted",
    scores2d_order: Optional[str] = None,
    input_set: Optional[str] = None,
    precision: str = "fp32",
    name: str = "",
) -> FusedHead:
    """A fused head that runs a 3D-only head and fuses its raw outputs with a 2D network's raw scores.

    Call the result as ``head(params3d [B, D_in], scores2d [B, K])``; it computes
    ``fused[:, map[k]] = w2d * scores2d[:, k] + w3d * out3d[:, map[k]]`` (mode "weighted", weights
    from :data:`LATE_FUSION`; "max", "mean" and "min" are Ig3D's other modes) and leaves the other
    outputs to the 3D head:

    * ("affectnet8", "emoca" | "smirk"): DDAMNet's 8 logits -> outputs 0..7; V, A (8, 9) stay 3D-only.
    * ("rafdb", "emoca" | "smirk"): DDAMNet's 7 logits -> outputs 0..6 in RAF-DB's native order; give
      ``scores2d_order`` "native" or "ddamfn++" (the released checkpoint: mapped through
      :func:`rafdb_fusion_map`). Required: a wrong order would silently wreck the fusion.
    * ("affectnet_va", "emoca"): CAGE's [V, A] -> outputs (0, 1) of a 2-output VA head (``EmocaFER``,
      dataset "affectnet_va") or (8, 9) of a 10-output AffectNet-8 head (its logits stay 3D-only).
    """
    key = (task, encoder)
    if key not in LATE_FUSION:
        raise ValueError(f"no Ig3D late fusion for {key}: expected one of {sorted(LATE_FUSION)}")
    if not isinstance(module, (MLP4, ResidualHead)):
        raise TypeError(f"late fusion takes a 3D-only head (MLP4 or ResidualHead), got {type(module).__name__}")
    entry = LATE_FUSION[key]
    k = SCORES2D[entry["scores2d"]]["dim"]
    dataset = task
    if task == "rafdb":
        if scores2d_order is None:
            raise ValueError(f"RAF-DB late fusion needs scores2d_order: one of {sorted(RAFDB_ORDERS)}")
        fusion_map = rafdb_fusion_map(scores2d_order)
    elif scores2d_order is not None:
        raise ValueError(f"scores2d_order is only for RAF-DB; {task!r} 2D scores share the head's order")
    elif task == "affectnet_va":
        if module.out_dim == 10:  # an AffectNet-8 head with V, A at 8, 9
            dataset, fusion_map = "affectnet8", (8, 9)
        else:
            fusion_map = (0, 1)
    else:
        fusion_map = tuple(range(k))
    weights = (entry["w2d"], entry["w3d"]) if mode == "weighted" else None
    return to_fused_head(module, feature_set=entry["feature_set"], dataset=dataset, input_set=input_set,
                         fusion=mode, scores2d_dim=k, fusion_map=fusion_map, fusion_weights=weights,
                         precision=precision, name=name or f"ig3d-late-{task}-{encoder}-{mode}")
