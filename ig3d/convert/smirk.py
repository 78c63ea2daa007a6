"""SMIRK checkpoints -> :class:`ig3d.models.smirk.SmirkEncoder` -> ONNX.

Upstream saves one flat state dict holding ``smirk_encoder.*`` and ``smirk_generator.*`` entries
(georgeretsi/smirk: src/base_trainer.py, ``save_model``) and its demo keeps the ``smirk_encoder``
entries with the prefix removed and loads them strictly (georgeretsi/smirk: demo.py). Here:

* :func:`load_smirk_checkpoint` reads the file with ``torch.load(weights_only=True)`` (tensors only, no
  code runs), drops the :data:`DROPPED_PREFIXES` entries on purpose (the generator is a training-time
  image decoder Ig3D does not use), strips ``smirk_encoder.`` and validates the rest against the
  encoder schema (:func:`encoder_schema`, 762 entries, equal to
  shared/reference/keys/smirk_encoder_keys.txt once prefixed).
* :func:`build_smirk` validates a stripped state dict and loads it strictly into a :class:`SmirkEncoder`.
* :func:`export_smirk_onnx` writes ONNX with ``params_full`` [B, 358] plus upstream's six outputs.

Validation raises ``ValueError`` naming every missing key, every unexpected key (any prefix other than
``smirk_encoder.`` and :data:`DROPPED_PREFIXES`) and every shape mismatch with both shapes.

torch is imported with this module (it is an optional dependency of ig3d: ``ig3d[torch]``).
"""

from __future__ import annotations

import copy
import os
from collections import OrderedDict
from typing import Dict, List, Mapping, Tuple, Union

import torch

from ..models.mobilenetv3 import MobileNetV3Minimal
from ..models.smirk import INPUT_SIZE, OUTPUT_DIMS, SmirkEncoder, smirk_full
from ._onnx_export import export_onnx
from .checkpoint import UnsafeCheckpointError, load_torch_file

__all__ = [
    "ENCODER_PREFIX",
    "DROPPED_PREFIXES",
    "ONNX_OUTPUTS",
    "UnsafeCheckpointError",
    "encoder_schema",
    "validate_smirk_state_dict",
    "load_smirk_checkpoint",
    "build_smirk",
    "export_smirk_onnx",
]

PathLike = Union[str, "os.PathLike[str]"]
Shape = Tuple[int, ...]

#: Prefix of the encoder entries in ``SMIRK_em1.pt`` (georgeretsi/smirk: demo.py strips it).
ENCODER_PREFIX = "smirk_encoder."
#: Entries of ``SMIRK_em1.pt`` dropped deliberately: the image generator used for SMIRK's
#: reconstruction loss (georgeretsi/smirk: src/smirk_generator.py); Ig3D uses only the encoder.
DROPPED_PREFIXES: Tuple[str, ...] = ("smirk_generator.",)

#: ONNX output names, in order: the Ig3D full vector, then upstream's dict entries.
#: The SMIRK-short vector is ``params_full[:, :353]`` (its segments are a prefix of the full ones).
ONNX_OUTPUTS: Tuple[str, ...] = ("params_full",) + tuple(OUTPUT_DIMS)



def encoder_schema() -> "OrderedDict[str, Shape]":
    """Every key of ``SmirkEncoder().state_dict()`` (prefix stripped) with its shape, in order."""
    # The meta device gives shapes without allocating or initialising 3.6 M parameters.
    with torch.device("meta"):
        model = SmirkEncoder()
    return OrderedDict((k, tuple(v.shape)) for k, v in model.state_dict().items())


def _fmt(items: List[Tuple[str, Shape]], limit: int = 8) -> str:
    s = ", ".join(f"{k} {list(shape)}" for k, shape in items[:limit])
    return s + (f", ... ({len(items)} in all)" if len(items) > limit else "")


def validate_smirk_state_dict(state_dict: Mapping[str, object]) -> None:
    """Check a prefix-stripped encoder state dict against :func:`encoder_schema`.

    Raises ``ValueError`` naming every missing key, every unexpected key and every entry whose shape
    (both shapes given) or dtype kind (float, or integer for ``num_batches_tracked``) is wrong.
    """
    schema = encoder_schema()
    problems = []
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
            problems.append(f"{k}: shape {list(v.shape)} in the checkpoint, {list(schema[k])} expected")
        elif v.is_floating_point() == k.endswith("num_batches_tracked"):
            problems.append(f"{k}: dtype {v.dtype} is not {'an integer' if v.is_floating_point() else 'a float'} type")
    if problems:
        raise ValueError("not a SMIRK encoder state dict; " + "; ".join(problems))


def load_smirk_checkpoint(path: PathLike, *, trust_checkpoint: bool = False) -> Dict[str, torch.Tensor]:
    """Read ``SMIRK_em1.pt`` (or any flat dict in its layout) and return the validated encoder state
    dict, ``smirk_encoder.`` stripped, tensors on the CPU, ready for :func:`build_smirk`.

    ``smirk_generator.*`` entries are dropped deliberately (:data:`DROPPED_PREFIXES`). A dict with no
    ``smirk_encoder.`` entries at all is taken as an already stripped encoder state dict (e.g. ig3d's own
    ``SmirkEncoder.state_dict()``). Loads with ``weights_only=True``: a file holding pickled Python
    objects raises :class:`UnsafeCheckpointError` unless ``trust_checkpoint=True``, which runs the
    pickle (only for files you trust). Raises ``ValueError`` as :func:`validate_smirk_state_dict`, and
    for keys under any other prefix.
    """
    name = os.fspath(path)
    obj = load_torch_file(path, trust_checkpoint=trust_checkpoint)
    if not isinstance(obj, Mapping):
        raise ValueError(f"{name}: expected a dict of tensors, got {type(obj).__name__}")

    keys = [str(k) for k in obj]
    if any(k.startswith(ENCODER_PREFIX) for k in keys):
        sd: Dict[str, torch.Tensor] = {}
        stray = []
        for k, v in obj.items():
            k = str(k)
            if k.startswith(ENCODER_PREFIX):
                sd[k[len(ENCODER_PREFIX):]] = v
            elif not k.startswith(DROPPED_PREFIXES):
                stray.append((k, tuple(getattr(v, "shape", ()))))
        if stray:
            raise ValueError(f"{name}: unexpected keys outside {ENCODER_PREFIX!r} and {list(DROPPED_PREFIXES)}: "
                             f"{_fmt(stray)}")
    else:
        # A generator-only file is not an encoder checkpoint: say so instead of listing 762 missing keys.
        if keys and all(k.startswith(DROPPED_PREFIXES) for k in keys):
            raise ValueError(f"{name}: holds only {list(DROPPED_PREFIXES)} entries, no {ENCODER_PREFIX!r} ones")
        sd = {str(k): v for k, v in obj.items()}
    try:
        validate_smirk_state_dict(sd)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None
    return sd


def build_smirk(state_dict: Mapping[str, torch.Tensor]) -> SmirkEncoder:
    """Validate a prefix-stripped encoder state dict and return a :class:`SmirkEncoder` holding it,
    float32, in eval mode (BN uses the checkpoint's running statistics)."""
    validate_smirk_state_dict(state_dict)
    model = SmirkEncoder()
    model.load_state_dict(dict(state_dict), strict=True)
    return model.float().eval()


class _OnnxOutputs(torch.nn.Module):
    """Tuple-returning wrapper for export: (params_full [B, 358], then upstream's six tensors)."""

    def __init__(self, model: SmirkEncoder):
        super().__init__()
        self.model = model

    def forward(self, img: torch.Tensor):
        out = self.model(img)
        return (smirk_full(out),) + tuple(out[k] for k in OUTPUT_DIMS)


def export_smirk_onnx(model: SmirkEncoder, path: PathLike, *, opset: int = 17) -> None:
    """Write ``model`` as ONNX. Input ``image`` [B, 3, 224, 224] float32 RGB in [0, 1], unnormalised.
    Outputs (:data:`ONNX_OUTPUTS`): ``params_full`` [B, 358] (Ig3D SMIRK-full; ``[:, :353]`` is
    SMIRK-short), then ``pose_params`` [B, 3], ``cam`` [B, 3], ``shape_params`` [B, 300],
    ``expression_params`` [B, 50], ``eyelid_params`` [B, 2], ``jaw_params`` [B, 3]. Batch is dynamic; the
    spatial size is fixed at 224 because the TF-SAME pads are baked in for it.

    Exported from a float32 eval-mode CPU copy (``model`` is left as it was) with torch's
    TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``, not ``onnxscript``.
    """
    m = copy.deepcopy(model).to("cpu", torch.float32).eval()
    for trunk in m.modules():
        if isinstance(trunk, MobileNetV3Minimal):
            trunk.fix_input_size((INPUT_SIZE, INPUT_SIZE))
    dummy = torch.zeros(1, 3, INPUT_SIZE, INPUT_SIZE)
    # The TF-SAME pads are constants, but the exporter reverses them with a step -1 Slice that its
    # folder skips; the graph stays correct and ONNX Runtime folds the Slice when it loads the model.
    export_onnx(_OnnxOutputs(m), dummy, path, input_name="image", output_names=ONNX_OUTPUTS, opset=opset,
                ignore_warnings=(r"Constant folding - Only steps=1 can be constant folded",))
