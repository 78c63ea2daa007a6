"""ONNX Runtime as an ig3d runtime: the CPU and CUDA execution providers (``backend="onnxruntime"``).
TensorRT engines are ig3d's own runtime (:mod:`ig3d.engines.tensorrt`), not ONNX Runtime's TensorRT
execution provider: one cache, keyed and checked by ig3d, and outputs on device buffers.

The CUDA provider counts as available only when onnxruntime has it *and* a CUDA device is usable:
without a device, ONNX Runtime would quietly run on the CPU, and ig3d never falls back silently.

ONNX Runtime is ig3d's reference runtime: every other runtime's float32 outputs are tested against
it. onnxruntime is imported on first use, never at ``import ig3d``.
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Union

import numpy as np

from .base import Model, ModelSource, Runtime, model_name

__all__ = ["OnnxModel", "OnnxRuntime", "RUNTIME"]


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise ImportError("ig3d needs onnxruntime to run its encoders: pip install onnxruntime "
                          "(or onnxruntime-gpu for CUDA/TensorRT)") from e
    return ort


def _providers() -> List[str]:
    try:
        return list(_ort().get_available_providers())
    except ImportError:  # pragma: no cover - onnxruntime is a dependency
        return []


class OnnxModel(Model):
    """One ONNX file as an ONNX Runtime inference session with dynamic batch.

    ``run(x)`` or ``run({"name": x, ...})`` returns the outputs as a dict name -> array. Sessions
    are thread-safe: the CPU workers call ``run`` from several threads at once."""

    def __init__(self, model: ModelSource, *, backend: str = "onnxruntime", device: str = "cpu",
                 threads: Optional[int] = None, name: str = "", spin: bool = False, precision: str = "fp32"):
        if precision != "fp32":
            raise ValueError(f"precision={precision!r}: ONNX Runtime runs ig3d's networks in fp32 only; "
                             "bf16 needs backend='openvino' (pip install \"ig3d[openvino]\")")
        ort = _ort()
        self.name = model_name(model, name)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.log_severity_level = 3  # warnings about unused initialisers etc. are not the user's concern
        if threads:
            opts.intra_op_num_threads = int(threads)
        # A pipeline runs several small sessions back to back: threads that keep spinning after
        # one session's run steal the cores from the next (measured: 74 ms -> 22 ms for the
        # default preset's five models on 2 cores with spinning off).
        # ``spin``: threads spin between operators during a run and stop when it ends, for a
        # session that runs alone on several threads (see PerCoreModel).
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spin else "0")
        if spin:
            opts.add_session_config_entry("session.force_spinning_stop", "1")
        providers = ["CUDAExecutionProvider"] if device == "cuda" else ["CPUExecutionProvider"]
        src = model if isinstance(model, bytes) else os.fspath(model)
        try:
            self.session = ort.InferenceSession(src, sess_options=opts, providers=list(providers))
        except Exception as e:
            raise ValueError(f"{self.name}: ONNX Runtime could not load the model: {e}") from e
        self.backend, self.device, self.precision = backend, device, "fp32"
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: Union[np.ndarray, Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        if not isinstance(inputs, dict):
            inputs = {self.input_names[0]: inputs}
        outs = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, outs))

    def __repr__(self) -> str:
        return f"OnnxModel({self.name}, {self.backend}/{self.device})"


class OnnxRuntime(Runtime):
    """ONNX Runtime's CPU and CUDA execution providers."""

    name = "onnxruntime"
    exact_cpu = True  # the reference
    auto_rank = 0
    install_hint = "pip install onnxruntime (onnxruntime-gpu for CUDA)"

    def missing(self) -> Optional[str]:
        try:
            _ort()
        except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
            return str(e)
        return None

    def version(self) -> Optional[str]:
        try:
            return str(_ort().__version__)
        except ImportError:  # pragma: no cover - onnxruntime is a dependency
            return None

    def backends(self) -> List[Dict[str, Any]]:
        """``onnxruntime-cpu`` and ``onnxruntime-cuda``, each with why it is not available."""
        from ._cuda import cuda_problem

        version, why = self.version(), self.missing()
        have = _providers()
        cpu = why or (None if "CPUExecutionProvider" in have else "onnxruntime has no CPUExecutionProvider")
        cuda = why or (None if "CUDAExecutionProvider" in have else
                       "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)") or cuda_problem()
        return [{"name": f"onnxruntime-{d}", "available": r is None, "version": version, "reason": r,
                 "backend": self.name, "device": d} for d, r in (("cpu", cpu), ("cuda", cuda))]

    def devices(self) -> List[str]:
        return [e["device"] for e in sorted(self.backends(), key=lambda e: e["device"] != "cuda") if e["available"]]

    def load(self, model: ModelSource, *, device: str = "cpu", threads: Optional[int] = None,
             parallel_runs: int = 1, precision: str = "fp32", name: str = "", spin: bool = False) -> Model:
        return OnnxModel(model, backend=self.name, device=device, threads=threads, name=name, spin=spin,
                         precision=precision)


RUNTIME = OnnxRuntime()
