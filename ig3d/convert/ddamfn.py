"""DDAMFN / DDAMFN++ checkpoints -> :class:`ig3d.models.ddamfn.DDAMNet` -> ONNX, and class orders.

Upstream (SainingZhang/DDAMFN) saves ``{'iter', 'model_state_dict', 'optimizer_state_dict'}``
(DDAMFN++/rafdb_train_sam_opt_ver2.0.py) and loads ``model_state_dict`` strictly
(DDAMFN++/affectnet8_test.py). Here:

* :func:`read_ddamfn_state_dict` reads a file with ``torch.load(weights_only=True)``: tensors only,
  no code runs. ``iter`` and ``optimizer_state_dict`` are dropped on purpose (training state, not
  weights); a bare state dict is accepted too.
* :func:`build_ddamfn` validates a state dict against the upstream schema and loads it strictly. The
  schema is :class:`DDAMNet`'s own ``state_dict`` plus the upstream **dead keys**
  (:func:`dead_keys`: ``conv_dw.bn``/``conv_dw.prelu`` of every mixed block, each head's
  ``CoordAtt.Linear``, the top-level ``bn``; see ig3d/models/ddamfn.py). Dead keys are checked for
  shape and then discarded by name; they may be absent (ig3d's own ``DDAMNet.state_dict()`` has none).
  Any other missing or unexpected key, or any shape mismatch, raises ``ValueError`` naming it.
  ``num_classes`` comes from ``fc.weight``, ``num_head`` from the ``cat_head<i>`` keys.
* :func:`export_ddamfn_onnx` writes an ONNX graph with outputs ``logits`` [B,C] and ``features`` [B,512].

Class orders (docs REFERENCE 1.5): AffectNet checkpoints use the AffectNet order; the released
DDAMFN++ RAF-DB checkpoint uses its own order, not RAF-DB's native one that Ig3D uses. Use
:func:`ddamfn_rafdb_to_native` before fusing its scores with an Ig3D RAF-DB head.

torch is imported with this module (it is an optional dependency of ig3d: ``ig3d[torch]``).
"""

from __future__ import annotations

import os
import re
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple, Union

import numpy as np
import torch

from ..models.ddamfn import FEATURE_DIM, INPUT_SIZE, DDAMNet, MixedDepthwiseConv
from ._onnx_export import export_onnx
from .checkpoint import UnsafeCheckpointError, load_torch_file
from .onnx_passes import expand_prelu, merge_mixed_depthwise, spatial_means_as_conv

__all__ = [
    "AFFECTNET8_LABELS",
    "AFFECTNET7_LABELS",
    "RAFDB_LABELS",
    "DDAMFN_RAFDB_LABELS",
    "RAFDB_FROM_DDAMFN",
    "DDAMFN_FROM_RAFDB",
    "UnsafeCheckpointError",
    "ddamfn_rafdb_to_native",
    "native_rafdb_to_ddamfn",
    "dead_keys",
    "upstream_schema",
    "read_ddamfn_state_dict",
    "build_ddamfn",
    "load_ddamfn_checkpoint",
    "export_ddamfn_onnx",
]

PathLike = Union[str, "os.PathLike[str]"]

# Class orders live in ig3d.labels (torch-free, so the presets can use them at run time).
from ..labels import AFFECTNET7_LABELS, AFFECTNET8_LABELS, DDAMFN_RAFDB_LABELS, RAFDB_LABELS  # noqa: E402,F401

#: native RAF-DB logits = DDAMFN++ RAF-DB logits[..., RAFDB_FROM_DDAMFN]
RAFDB_FROM_DDAMFN: Tuple[int, ...] = (3, 4, 5, 1, 2, 6, 0)
#: DDAMFN++ RAF-DB logits = native RAF-DB logits[..., DDAMFN_FROM_RAFDB] (inverse permutation)
DDAMFN_FROM_RAFDB: Tuple[int, ...] = (6, 3, 4, 0, 1, 2, 5)


def _reorder(scores, index: Tuple[int, ...]):
    if scores.shape[-1] != len(index):
        raise ValueError(f"expected {len(index)} RAF-DB scores in the last axis, got shape {tuple(scores.shape)}")
    if isinstance(scores, torch.Tensor):
        return scores[..., list(index)]
    return np.asarray(scores)[..., list(index)]


def ddamfn_rafdb_to_native(scores):
    """Released DDAMFN++ RAF-DB scores [..., 7] (order :data:`DDAMFN_RAFDB_LABELS`) -> the same scores
    in RAF-DB's native order [..., 7] (:data:`RAFDB_LABELS`). numpy arrays or torch tensors."""
    return _reorder(scores, RAFDB_FROM_DDAMFN)


def native_rafdb_to_ddamfn(scores):
    """Inverse of :func:`ddamfn_rafdb_to_native`: native RAF-DB order [..., 7] -> DDAMFN++ order."""
    return _reorder(scores, DDAMFN_FROM_RAFDB)


# ---------------------------------------------------------------------------------------------
# The upstream key schema.

Shape = Tuple[int, ...]


def _bn(prefix: str, n: int) -> List[Tuple[str, Shape]]:
    return [(prefix + "weight", (n,)), (prefix + "bias", (n,)), (prefix + "running_mean", (n,)),
            (prefix + "running_var", (n,)), (prefix + "num_batches_tracked", ())]


def _dead_groups(model: DDAMNet) -> List[Tuple[str, List[Tuple[str, Shape]]]]:
    """(owner prefix, [(key, shape)]) for every dead upstream entry, the owner prefix being the module
    the entries sit under in upstream's state-dict order."""
    groups = []
    for name, mod in model.named_modules():
        if isinstance(mod, MixedDepthwiseConv):
            # MixedFeatureNet.py MDConv: self.bn = BatchNorm2d(channels); self.prelu = PReLU(channels)
            p = name + "."
            groups.append((p, _bn(p + "bn.", mod.channels) + [(p + "prelu.weight", (mod.channels,))]))
    for i in range(model.num_head):
        # DDAM.py CoordAtt: self.Linear = Linear_block(oup, oup, groups=oup, kernel=(7, 7))
        p = f"cat_head{i}.CoordAtt."
        groups.append((p, [(p + "Linear.conv.weight", (FEATURE_DIM, 1, 7, 7))] + _bn(p + "Linear.bn.", FEATURE_DIM)))
    # DDAM.py DDAMNet: self.bn = nn.BatchNorm1d(num_class)
    groups.append(("", _bn("bn.", model.num_classes)))
    return groups


def _meta_model(num_classes: int, num_head: int) -> DDAMNet:
    # Shapes only: the meta device allocates no memory and initialises nothing.
    with torch.device("meta"):
        return DDAMNet(num_classes, num_head)


def dead_keys(num_classes: int = 8, num_head: int = 2) -> Dict[str, Shape]:
    """Upstream keys whose tensors the network never uses: {key: shape}. 221 keys for 2 heads."""
    return {k: s for _, entries in _dead_groups(_meta_model(num_classes, num_head)) for k, s in entries}


def upstream_schema(num_classes: int = 8, num_head: int = 2) -> "OrderedDict[str, Shape]":
    """Every key of an upstream ``DDAMNet(num_class, num_head).state_dict()`` with its shape, in
    upstream's order: :class:`DDAMNet`'s live keys with the dead ones inserted where upstream has them.
    Equals SainingZhang/DDAMFN's key list (shared/reference/keys/ddamfn_keys.txt for 8 classes, 2 heads)."""
    model = _meta_model(num_classes, num_head)
    keys = [(k, tuple(v.shape)) for k, v in model.state_dict().items()]
    for owner, entries in _dead_groups(model):
        # Upstream registers the dead module last inside its owner, so its keys follow the owner's.
        last = max(i for i, (k, _) in enumerate(keys) if k.startswith(owner))
        keys[last + 1:last + 1] = entries
    return OrderedDict(keys)


# ---------------------------------------------------------------------------------------------
# Reading, validating, building.


_WRAPPER_KEYS = {"model_state_dict", "iter", "optimizer_state_dict"}


def read_ddamfn_state_dict(path: PathLike, *, trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """Read an upstream DDAMFN checkpoint and return its ``model_state_dict`` (on the CPU).

    Accepts ``{'iter', 'model_state_dict', 'optimizer_state_dict'}`` (upstream's training format; the
    iteration counter and optimizer state are dropped deliberately) or a bare state dict. Loads with
    ``weights_only=True``: a file holding pickled Python objects (e.g. a whole module, like upstream's
    ``pretrained/MFN_msceleb.pth``) raises :class:`UnsafeCheckpointError` unless
    ``trust_checkpoint=True``, which runs the pickle (only for files you trust). A whole pickled module
    is then reduced to its ``state_dict()``.
    """
    obj = load_torch_file(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{os.fspath(path)}: expected a dict, got {type(obj).__name__}")
    if "model_state_dict" in obj:
        extra = sorted(set(obj) - _WRAPPER_KEYS, key=str)
        if extra:
            raise ValueError(f"{os.fspath(path)}: unexpected top-level entries {extra} "
                             f"(expected {sorted(_WRAPPER_KEYS)})")
        obj = obj["model_state_dict"]
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise ValueError(f"{os.fspath(path)}: 'model_state_dict' is a {type(obj).__name__}, not a dict")
    return dict(obj)


_HEAD_KEY = re.compile(r"^cat_head(\d+)\.")


def _infer_config(state_dict: Mapping[str, torch.Tensor]) -> Tuple[int, int]:
    w = state_dict.get("fc.weight")
    if not isinstance(w, torch.Tensor) or w.ndim != 2 or w.shape[1] != FEATURE_DIM:
        got = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
        raise ValueError(f"'fc.weight' must be a [num_classes, {FEATURE_DIM}] tensor, got {got}")
    heads = {int(m.group(1)) for k in state_dict if (m := _HEAD_KEY.match(str(k)))}
    if not heads:
        raise ValueError("no attention-head keys ('cat_head<i>.*') in the state dict")
    # Gaps in 0..max are reported as missing keys by the schema check.
    return int(w.shape[0]), max(heads) + 1


def _fmt(keys: List[str], shapes: Mapping[str, Shape], limit: int = 8) -> str:
    s = ", ".join(f"{k} {list(shapes[k])}" for k in keys[:limit])
    return s + (f", ... ({len(keys)} in all)" if len(keys) > limit else "")


def build_ddamfn(state_dict: Mapping[str, torch.Tensor]) -> DDAMNet:
    """Validate an upstream ``model_state_dict`` and return a :class:`DDAMNet` holding it, in eval mode.

    ``num_classes`` is ``fc.weight.shape[0]``; ``num_head`` is one more than the highest ``cat_head<i>``.
    Dead keys (:func:`dead_keys`) are shape-checked and discarded; they may be absent. Raises
    ``ValueError`` naming every missing live key, every unexpected key and every shape mismatch.
    """
    num_classes, num_head = _infer_config(state_dict)
    # Built on the meta device: shapes for the checks, then the checkpoint's tensors are assigned, so
    # the 4.1 M parameters are never randomly initialised only to be overwritten.
    model = _meta_model(num_classes, num_head)
    live = {k: v for k, v in model.state_dict().items()}
    expected = {**{k: tuple(v.shape) for k, v in live.items()},
                **{k: shape for _, entries in _dead_groups(model) for k, shape in entries}}

    missing = [k for k in live if k not in state_dict]
    unexpected = [str(k) for k in state_dict if k not in expected]
    problems = []
    if missing:
        problems.append(f"missing keys: {_fmt(missing, expected)}")
    if unexpected:
        shapes = {k: tuple(getattr(state_dict[k], "shape", ())) for k in unexpected}
        problems.append(f"unexpected keys: {_fmt(unexpected, shapes)}")
    for k, v in state_dict.items():
        if k not in expected:
            continue
        if not isinstance(v, torch.Tensor):
            problems.append(f"{k}: expected a tensor, got {type(v).__name__}")
        elif tuple(v.shape) != expected[k]:
            problems.append(f"{k}: shape {list(v.shape)} in the checkpoint, {list(expected[k])} expected")
        elif v.is_floating_point() != (not k.endswith("num_batches_tracked")):
            problems.append(f"{k}: dtype {v.dtype} is not {'an integer' if v.is_floating_point() else 'a float'} type")
    if problems:
        raise ValueError(f"not a DDAMNet({num_classes} classes, {num_head} heads) state dict; "
                         + "; ".join(problems))

    # Own copies in the model's dtypes (float32, int64), on the CPU: the caller's dict stays independent.
    own = {k: state_dict[k].detach().to(device="cpu", dtype=ref.dtype, copy=True) for k, ref in live.items()}
    model.load_state_dict(own, strict=True, assign=True)
    return model.eval()


def load_ddamfn_checkpoint(path: PathLike, *, trust_checkpoint: bool = False) -> DDAMNet:
    """Read an upstream DDAMFN / DDAMFN++ ``.pth`` and return the validated :class:`DDAMNet` (eval mode).

    :func:`read_ddamfn_state_dict` then :func:`build_ddamfn`; see both for the accepted formats and
    the errors.
    """
    return build_ddamfn(read_ddamfn_state_dict(path, trust_checkpoint=trust_checkpoint))


# ---------------------------------------------------------------------------------------------
# ONNX.

class _LogitsAndFeatures(torch.nn.Module):
    def __init__(self, model: DDAMNet):
        super().__init__()
        self.model = model

    def forward(self, x):
        return self.model.forward_with_features(x)


def _onnx_passes(model):
    """PReLU as Relu/Mul/Add, each mixed depthwise conv as one conv, the coordinate-attention means
    as depthwise convs (and, in the modules' export form, the gates as one outer product,
    ``ig3d.models.ddamfn._gate_product``): the same numbers up to float rounding, and DDAMFN++ runs
    about 1.4x faster in ONNX Runtime on one thread (measured) than as exported."""
    return spatial_means_as_conv(merge_mixed_depthwise(expand_prelu(model)))


def export_ddamfn_onnx(model: DDAMNet, path: PathLike, *, opset: int = 17) -> None:
    """Write ``model`` as ONNX: input ``input`` [B,3,112,112] float32 (ImageNet-normalised RGB),
    outputs ``logits`` [B,num_classes] and ``features`` [B,512]; the batch axis is dynamic.

    Exported in eval mode (BN uses running statistics) from a float32 CPU copy; ``model`` is left as
    it was. Dead upstream parameters are not part of :class:`DDAMNet`, so they never reach the file.
    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``, not
    ``onnxscript`` (not an ig3d dependency); torch 2.13 still ships it, deprecated.
    """
    import copy

    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    export_onnx(_LogitsAndFeatures(m), dummy, path, input_name="input", output_names=("logits", "features"),
                opset=opset, postprocess=_onnx_passes)
