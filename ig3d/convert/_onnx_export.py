"""One place for exporting ig3d's torch networks to ONNX."""

from __future__ import annotations

import io
import os
import warnings
from typing import Callable, Optional, Sequence, Union

from .._optional import require

__all__ = ["export_onnx"]


def export_onnx(module, dummy, path: Union[str, "os.PathLike[str]"], *, input_name: str,
                output_names: Sequence[str], opset: int = 17, ignore_warnings: Sequence[str] = (),
                postprocess: Optional[Callable] = None) -> None:
    """Export ``module(dummy)`` (eval mode, float32, CPU) to ``path`` with a dynamic batch axis on
    the input and every output.

    Uses torch's TorchScript-based exporter (``dynamo=False``), which needs only ``onnx``, not
    ``onnxscript`` (not an ig3d dependency); torch >= 2.9 flags it as deprecated, and exactly those
    notices are silenced (plus ``ignore_warnings``, message regexes), so any other warning still
    surfaces. The file is built in memory first, so a failed export leaves nothing half-written.
    ``postprocess(onnx.ModelProto) -> ModelProto`` may rewrite the graph before it is written.
    """
    torch = require("torch", "convert", "ONNX export")
    onnx = require("onnx", "convert", "ONNX export")  # torch's exporter needs it too

    buf = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"You are using the legacy TorchScript-based ONNX export",
                                category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning, module=r"torch\.onnx\.")
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        for pattern in ignore_warnings:
            warnings.filterwarnings("ignore", message=pattern)
        torch.onnx.export(
            module, (dummy,), buf, dynamo=False, opset_version=opset,
            input_names=[input_name], output_names=list(output_names),
            dynamic_axes={n: {0: "batch"} for n in [input_name, *output_names]},
            do_constant_folding=True)
    data = buf.getvalue()
    if postprocess is not None:
        data = postprocess(onnx.load_from_string(data)).SerializeToString()
    with open(path, "wb") as f:
        f.write(data)
