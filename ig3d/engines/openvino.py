"""OpenVINO as an ig3d runtime (``backend="openvino"``, the optional extra ``ig3d[openvino]``): the
same ONNX files, read directly by OpenVINO and compiled for the CPU.

- fp32 is exact: ``INFERENCE_PRECISION_HINT`` is always set, to "f32" unless bf16 was asked for,
  because on CPUs with AMX or AVX512-BF16 OpenVINO's own default is bf16. Outputs equal ONNX
  Runtime's within 1e-5 of the output scale (``python_tests/test_openvino.py``).
- bf16 only on request, and only where the CPU computes in bf16 natively (AMX or AVX512-BF16, as
  /proc/cpuinfo and OpenVINO's ``OPTIMIZATION_CAPABILITIES`` say); elsewhere a clear error.
- ig3d's ONNX files spell PReLU out for ONNX Runtime; OpenVINO gets PRelu nodes back
  (:func:`contract_prelu`), which it fuses into the convolutions.
- Compiled models are cached under ``$IG3D_HOME/openvino_cache`` (OpenVINO's ``CACHE_DIR``), so that a
  second start skips compilation.
- Threads: ``INFERENCE_NUM_THREADS`` threads inside one run, ``NUM_STREAMS`` = the number of runs the
  CPU workers make at the same time; each worker thread has its own infer request (OpenVINO releases
  the GIL while a request runs).

openvino is imported on first use, never at ``import ig3d``.
"""

from __future__ import annotations

import functools
import os
import threading
from typing import Dict, List, Optional, Sequence, Union

import numpy as np

from .base import PRECISIONS, Model, ModelSource, Runtime, model_name

__all__ = ["OpenVinoModel", "OpenVinoRuntime", "RUNTIME", "cpu_has_bf16", "contract_prelu"]

_OV_PRECISION = {"fp32": "f32", "bf16": "bf16"}


def _ov():
    try:
        import openvino as ov
    except ImportError as e:
        raise ImportError("backend='openvino' needs OpenVINO: pip install \"ig3d[openvino]\" "
                          "(or pip install openvino)") from e
    return ov


@functools.lru_cache(maxsize=None)
def _core():
    """One OpenVINO Core per process, with the model cache under ``$IG3D_HOME/openvino_cache``."""
    from . import cache_root

    ov = _ov()
    core = ov.Core()
    cache = cache_root() / "openvino_cache" / f"ov-{ov.get_version().split('-')[0]}"
    try:
        cache.mkdir(parents=True, exist_ok=True)
        core.set_property({"CACHE_DIR": str(cache)})
    except OSError:  # pragma: no cover - a read-only home: compile every time
        pass
    return core


def _cpu_flags() -> Optional[set]:
    """The CPU's feature flags from /proc/cpuinfo (Linux), or None where it cannot be read."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return None


@functools.lru_cache(maxsize=None)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes in bf16 natively: AMX-BF16 or AVX512-BF16 in /proc/cpuinfo (where
    there is one) and "BF16" in OpenVINO's ``OPTIMIZATION_CAPABILITIES`` for the CPU."""
    flags = _cpu_flags()
    if flags is not None and not ({"amx_bf16", "avx512_bf16"} & flags):
        return False
    try:
        caps = _core().get_property("CPU", "OPTIMIZATION_CAPABILITIES")
    except Exception:  # pragma: no cover - OpenVINO absent or no CPU plugin
        return False
    return "BF16" in caps


def _constant(value) -> Optional[np.ndarray]:
    node = value.get_node()
    return node.get_data() if node.get_type_name() == "Constant" else None


def _times_constant(node, x=None):
    """``(x, c)`` when ``node`` is ``Multiply(x, c)`` with ``c`` a constant (and ``x`` the given
    value when one is given), else None."""
    if node.get_type_name() != "Multiply":
        return None
    ins = [node.input_value(i) for i in range(2)]
    for j in (0, 1):
        c = _constant(ins[j])
        if c is not None and (x is None or ins[1 - j] == x):
            return ins[1 - j], c
    return None


def contract_prelu(model) -> int:
    """Turn the PReLUs that ig3d's ONNX files spell out for ONNX Runtime
    (:func:`ig3d.convert.onnx_passes.expand_prelu`: ``Add(Relu(Mul(x, 1 - a)), Mul(x, a))`` or
    ``Add(Mul(Relu(x), 1 - a), Mul(x, a))``) back into OpenVINO ``PRelu(x, a)`` nodes, in the
    ``ov.Model`` ``model`` (in place); returns how many. The same function (``1 - a`` is checked to be
    the float32 of ``1 - a``); OpenVINO fuses PRelu into the convolution before it, which it does not
    do for the spelled-out form: MediaPipe's landmark model on 2 cores 8.7 -> 3.9 ms, below ONNX
    Runtime's 4.8 ms on the spelled-out form."""
    from openvino import opset13 as ops

    n = 0
    for add in model.get_ordered_ops():
        if add.get_type_name() != "Add":
            continue
        ins = [add.input_value(i) for i in range(2)]
        for k in (0, 1):
            lin = _times_constant(ins[1 - k].get_node())
            if lin is None:
                continue
            x, a = lin
            pos = ins[k].get_node()
            if pos.get_type_name() == "Relu":  # Relu(Mul(x, 1 - a))
                scaled = _times_constant(pos.input_value(0).get_node(), x)
                b = None if scaled is None else scaled[1]
            else:  # Mul(Relu(x), 1 - a)
                r = _times_constant(pos)
                b = None
                if r is not None and r[0].get_node().get_type_name() == "Relu" and r[0].get_node().input_value(0) == x:
                    b = r[1]
            if b is None or a.shape != b.shape:
                continue
            rank = x.get_partial_shape().rank
            if not rank.is_static or a.ndim > rank.get_length():
                continue
            dims = (1,) * (rank.get_length() - a.ndim) + a.shape  # broadcast from the right, as Multiply does
            if any(d != 1 for i, d in enumerate(dims) if i != 1):
                continue  # a slope per channel (axis 1) or one for all: what PRelu's slope can say
            if not np.array_equal(b.astype(np.float32), (1.0 - a.astype(np.float64)).astype(np.float32)):
                continue
            prelu = ops.prelu(x, ops.constant(a.reshape(-1).astype(np.float32)))
            add.output(0).replace(prelu.output(0))
            n += 1
            break
    return n


class OpenVinoModel(Model):
    """One ONNX file compiled by OpenVINO for the CPU. ``run`` is thread-safe: each calling thread
    gets its own infer request."""

    def __init__(self, model: ModelSource, *, threads: Optional[int] = None, parallel_runs: int = 1,
                 precision: str = "fp32", name: str = ""):
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        if precision == "bf16" and not cpu_has_bf16():
            raise ValueError("precision='bf16' needs a CPU with AMX or AVX512-BF16 (bf16 arithmetic in "
                             "hardware); this CPU has neither: use precision='fp32'")
        self.name = model_name(model, name)
        core = _core()
        config = {"INFERENCE_PRECISION_HINT": _OV_PRECISION[precision], "NUM_STREAMS": max(1, int(parallel_runs))}
        if threads:
            config["INFERENCE_NUM_THREADS"] = int(threads)
        try:
            # read, then compile the model object: the cache key is then the model's content (a file
            # rewritten in place is compiled again), and the names are the ONNX file's (a compiled
            # model's outputs may carry internal tensor names too)
            src = core.read_model(model if isinstance(model, bytes) else os.fspath(model))
            self.prelus = contract_prelu(src)
            self.compiled = core.compile_model(src, "CPU", config)
        except Exception as e:
            raise ValueError(f"{self.name}: OpenVINO could not load the model: {e}") from e
        self.backend, self.device, self.precision = "openvino", "cpu", precision
        self.threads, self.parallel_runs = threads, max(1, int(parallel_runs))
        self.input_names = [i.get_any_name() for i in src.inputs]
        self.output_names = [o.get_any_name() for o in src.outputs]
        self._local = threading.local()

    def _request(self):
        req = getattr(self._local, "request", None)
        if req is None:
            req = self._local.request = self.compiled.create_infer_request()
        return req

    def run(self, inputs: Union[np.ndarray, Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        if not isinstance(inputs, dict):
            inputs = {self.input_names[0]: inputs}
        unknown = set(inputs) - set(self.input_names)
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {sorted(unknown)}; the model's inputs are "
                             f"{self.input_names}")
        index = {n: i for i, n in enumerate(self.input_names)}
        out = self._request().infer({index[k]: np.ascontiguousarray(v) for k, v in inputs.items()})
        # infer() copies the outputs (share_outputs=False), so the request can run again
        return {name: out[k] for name, k in zip(self.output_names, self.compiled.outputs)}


class OpenVinoRuntime(Runtime):
    """OpenVINO on the CPU."""

    name = "openvino"
    exact_cpu = True
    #: below ONNX Runtime: in the default preset's pipeline (one single-threaded run per face over the
    #: cores) OpenVINO measured slower, 45 against 37 ms per photo at batch 1 and 38 against 29 ms per
    #: photo in a 15-photo call (2 cores, the five shared photos, interleaved rounds); with the landmark
    #: model's PReLUs given back (:func:`contract_prelu`) still 43 against 56 images/s at batch 1 and 80
    #: against 129 faces/s in 16-face calls. It is used on request (backend="openvino"), and by
    #: backend="auto" for a lone tracked face's landmark run in a video, where it is faster
    #: (engines.AUTO_TRACKING_BACKENDS)
    auto_rank = -1
    install_hint = "pip install \"ig3d[openvino]\""

    def missing(self) -> Optional[str]:
        # found, not imported: importing OpenVINO costs about 40 MB and 0.3 s, which a process that
        # runs ONNX Runtime (backend="auto") must not pay for listing the backends; load() imports it
        import importlib.util

        if importlib.util.find_spec("openvino") is None:
            return ("backend='openvino' needs OpenVINO: pip install \"ig3d[openvino]\" (or pip install "
                    "openvino)")
        return None

    def devices(self) -> List[str]:
        return ["cpu"] if self.missing() is None else []

    def precisions(self, device: str) -> Sequence[str]:
        return PRECISIONS if device == "cpu" and cpu_has_bf16() else ("fp32",)

    def load(self, model: ModelSource, *, device: str = "cpu", threads: Optional[int] = None,
             parallel_runs: int = 1, precision: str = "fp32", name: str = "", spin: bool = False) -> Model:
        if device != "cpu":
            raise ValueError(f"backend='openvino' runs on the CPU: device={device!r} is not supported")
        return OpenVinoModel(model, threads=threads, parallel_runs=parallel_runs, precision=precision, name=name)


RUNTIME = OpenVinoRuntime()
