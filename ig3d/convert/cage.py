"""CAGE checkpoints -> :class:`ig3d.models.cage.CageNet` -> ONNX.

CAGE saves ``MODEL.state_dict()`` of torchvision's ``maxvit_t`` with its own ``classifier``
(wagner-niklas/CAGE_expression_inference: models/AffectNet8_Maxvit_Combined/train.py,
``torch.save(MODEL.state_dict(), "model.pt")``) and loads it strictly (…/generate_csv.py). No CAGE
weights were ever published (docs REFERENCE 5), so the files this reads are ones users trained. Here:

* :func:`read_cage_state_dict` reads a ``.pt``/``.pth`` with ``torch.load(weights_only=True)`` (tensors
  only, no code runs): a bare state dict, or ``{'model_state_dict': ...}`` whose other top-level entries
  may only be the training state in :data:`TRAINING_STATE_KEYS` (dropped on purpose).
* :func:`infer_cage_variant` tells the variant from the last classifier Linear: ``classifier.5.weight``
  [10, 512] is ``"combined"``, ``classifier.6.weight`` [2, 512] (after the VA model's Dropout) is ``"va"``.
* :func:`validate_cage_state_dict` checks a state dict against :func:`cage_schema` (582 entries, equal to
  torchvision's ``maxvit_t`` keys with CAGE's classifier; python_tests/data/maxvit_t_keys.txt) and raises
  ``ValueError`` naming every missing key, every unexpected key and every shape mismatch with both shapes.
* :func:`build_cage` / :func:`load_cage_checkpoint` return a validated :class:`CageNet` in eval mode.
* :func:`export_cage_onnx` writes ONNX (opset 17, dynamic batch) with outputs ``outputs`` and ``features``.

torch is imported with this module (it is an optional dependency of ig3d: ``ig3d[torch]``).
"""

from __future__ import annotations

import copy
import functools
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Optional, Tuple, Union

import torch

from ..models.cage import FEATURE_DIM, INPUT_SIZE, VARIANTS, CageNet
from ..models.maxvit import PARTITION_SIZE, relative_position_index
from ._onnx_export import export_onnx
from .checkpoint import UnsafeCheckpointError, load_torch_file

__all__ = [
    "VARIANTS",
    "OUTPUT_KEYS",
    "TRAINING_STATE_KEYS",
    "ONNX_INPUT",
    "ONNX_OUTPUTS",
    "UnsafeCheckpointError",
    "cage_schema",
    "infer_cage_variant",
    "validate_cage_state_dict",
    "read_cage_state_dict",
    "build_cage",
    "load_cage_checkpoint",
    "export_cage_onnx",
]

PathLike = Union[str, "os.PathLike[str]"]
Shape = Tuple[int, ...]

#: The last classifier Linear of each variant (VA has Dropout at index 5, so its Linear is at 6).
OUTPUT_KEYS: Dict[str, str] = {"combined": "classifier.5.weight", "va": "classifier.6.weight"}
#: Top-level entries allowed next to ``model_state_dict`` in a wrapped checkpoint; dropped on purpose
#: (training state, not weights).
TRAINING_STATE_KEYS = frozenset({"epoch", "iter", "optimizer_state_dict", "scheduler_state_dict", "loss"})
ONNX_INPUT = "input"
ONNX_OUTPUTS: Tuple[str, ...] = ("outputs", "features")


def _meta_model(variant: str) -> CageNet:
    # The meta device gives shapes and dtypes without allocating or initialising 30 M parameters.
    with torch.device("meta"):
        return CageNet(variant)


@functools.lru_cache(maxsize=None)
def _schema_items(variant: str) -> Tuple[Tuple[str, Tuple[Shape, torch.dtype]], ...]:
    # Cached: every load validates against it, and building even a meta model costs ~0.3 s.
    return tuple((k, (tuple(v.shape), v.dtype)) for k, v in _meta_model(variant).state_dict().items())


def cage_schema(variant: str = "combined") -> "OrderedDict[str, Tuple[Shape, torch.dtype]]":
    """Every key of ``CageNet(variant).state_dict()`` with its (shape, dtype), in order (582 entries)."""
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
    return OrderedDict(_schema_items(variant))


def _shape(v: object) -> Shape:
    return tuple(getattr(v, "shape", ()))


def _fmt(items: List[Tuple[str, Shape]], limit: int = 8) -> str:
    s = ", ".join(f"{k} {list(shape)}" for k, shape in items[:limit])
    return s + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def infer_cage_variant(state_dict: Mapping[str, object]) -> str:
    """``"combined"`` if ``classifier.5.weight`` is [10, 512], ``"va"`` if ``classifier.6.weight`` is
    [2, 512]; anything else raises ``ValueError`` saying what the classifier holds (e.g. a 9-output
    AffectNet-7 model, or torchvision's ImageNet head [1000, 512])."""
    found = [(k, _shape(state_dict[k])) for k in OUTPUT_KEYS.values() if k in state_dict]
    matches = [v for v, k in OUTPUT_KEYS.items() if k in state_dict
               and _shape(state_dict[k]) == (VARIANTS[v], FEATURE_DIM)]
    if len(found) == 1 and len(matches) == 1:
        return matches[0]
    expected = " or ".join(f"{k} [{VARIANTS[v]}, {FEATURE_DIM}] ({v})" for v, k in OUTPUT_KEYS.items())
    if not found:
        cls = sorted((str(k), _shape(v)) for k, v in state_dict.items() if str(k).startswith("classifier."))
        got = _fmt(cls) if cls else "no classifier.* keys"
    else:
        got = _fmt(found)
    raise ValueError(f"cannot tell the CAGE variant: expected {expected}; found {got}")


def validate_cage_state_dict(state_dict: Mapping[str, object], variant: str) -> None:
    """Check a state dict against :func:`cage_schema` for ``variant``.

    Raises ``ValueError`` naming every missing key, every unexpected key, every entry whose shape (both
    shapes given) or dtype kind (float, or integer for ``num_batches_tracked`` and
    ``relative_position_index``) is wrong, and any ``relative_position_index`` that is not the fixed
    offset table every MaxViT holds (a corrupt or foreign file).
    """
    schema = cage_schema(variant)
    problems = []
    missing = [(k, shape) for k, (shape, _) in schema.items() if k not in state_dict]
    if missing:
        problems.append(f"missing keys: {_fmt(missing)}")
    unexpected = [(str(k), _shape(v)) for k, v in state_dict.items() if k not in schema]
    if unexpected:
        problems.append(f"unexpected keys: {_fmt(unexpected)}")
    index = relative_position_index(PARTITION_SIZE)
    for k, v in state_dict.items():
        if k not in schema:
            continue
        shape, dtype = schema[k]
        if not isinstance(v, torch.Tensor):
            problems.append(f"{k}: expected a tensor, got {type(v).__name__}")
        elif tuple(v.shape) != shape:
            problems.append(f"{k}: shape {list(v.shape)} in the checkpoint, {list(shape)} expected")
        elif v.is_floating_point() != dtype.is_floating_point:
            kind = "a float" if dtype.is_floating_point else "an integer"
            problems.append(f"{k}: dtype {v.dtype} is not {kind} type")
        elif k.endswith("relative_position_index") and not torch.equal(v.to("cpu", torch.int64), index):
            problems.append(f"{k}: not MaxViT's relative-position index table")
    if problems:
        raise ValueError(f"not a CAGE {variant} state dict; " + "; ".join(problems))


def read_cage_state_dict(path: PathLike, *, trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """Read a CAGE ``.pt``/``.pth`` and return its state dict (CPU tensors), not yet validated.

    Accepts a bare state dict (what CAGE saves) or ``{'model_state_dict': ..., [training state]}``; only
    :data:`TRAINING_STATE_KEYS` may sit next to ``model_state_dict`` (they are dropped), anything else
    raises ``ValueError`` naming it. Loads with ``weights_only=True``: a file holding pickled Python
    objects (e.g. a whole ``torch.save(MODEL)``) raises :class:`UnsafeCheckpointError` unless
    ``trust_checkpoint=True``, which runs the pickle (only for files you trust); a whole module is then
    reduced to its ``state_dict()``.
    """
    name = os.fspath(path)
    obj = load_torch_file(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name}: expected a dict, got {type(obj).__name__}")
    if "model_state_dict" in obj:
        extra = sorted((str(k) for k in obj if k != "model_state_dict" and k not in TRAINING_STATE_KEYS))
        if extra:
            raise ValueError(f"{name}: unexpected top-level entries {extra} next to 'model_state_dict' "
                             f"(allowed: {sorted(TRAINING_STATE_KEYS)})")
        obj = obj["model_state_dict"]
        if isinstance(obj, torch.nn.Module):
            obj = obj.state_dict()
        if not isinstance(obj, Mapping):
            raise ValueError(f"{name}: 'model_state_dict' is a {type(obj).__name__}, not a dict")
    return {str(k): v for k, v in obj.items()}


def build_cage(state_dict: Mapping[str, torch.Tensor], variant: Optional[str] = None) -> CageNet:
    """Validate a CAGE state dict and return a :class:`CageNet` holding it, float32, in eval mode.

    ``variant`` defaults to :func:`infer_cage_variant`; if given, it must agree with the classifier
    (else the validation's missing/unexpected/shape errors say why). Raises ``ValueError`` as
    :func:`validate_cage_state_dict`.
    """
    if variant is None:
        variant = infer_cage_variant(state_dict)
    validate_cage_state_dict(state_dict, variant)
    # Built on the meta device and then given the checkpoint's tensors (assign=True), so the 30 M
    # parameters are never randomly initialised only to be overwritten.
    model = _meta_model(variant)
    own = {k: state_dict[k].detach().to(device="cpu", dtype=ref.dtype, copy=True)
           for k, ref in model.state_dict().items()}
    model.load_state_dict(own, strict=True, assign=True)
    return model.eval()


def load_cage_checkpoint(path: PathLike, variant: Optional[str] = None, *,
                         trust_checkpoint: bool = False) -> CageNet:
    """:func:`read_cage_state_dict` then :func:`build_cage`; errors name the file."""
    sd = read_cage_state_dict(path, trust_checkpoint=trust_checkpoint)
    try:
        return build_cage(sd, variant)
    except ValueError as e:
        raise ValueError(f"{os.fspath(path)}: {e}") from None


# ---------------------------------------------------------------------------------------------
# ONNX.

class _OutputsAndFeatures(torch.nn.Module):
    def __init__(self, model: CageNet):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model.forward_with_features(x)


def export_cage_onnx(model: CageNet, path: PathLike, *, opset: int = 17) -> None:
    """Write ``model`` as ONNX: input ``input`` [B, 3, 224, 224] float32 (ImageNet-normalised RGB),
    outputs ``outputs`` [B, 10] (combined) or [B, 2] (va) and ``features`` [B, 512]; batch is dynamic,
    the spatial size fixed (MaxViT's partition grids are baked in).

    Exported in eval mode (BN running statistics, no dropout) from a float32 CPU copy; ``model`` is left
    as it was. Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``, not
    ``onnxscript`` (not an ig3d dependency).
    """
    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    export_onnx(_OutputsAndFeatures(m), dummy, path, input_name=ONNX_INPUT, output_names=ONNX_OUTPUTS, opset=opset)
