"""Running the ONNX networks: one interface (:mod:`ig3d.engines.base`) with a module per runtime -
ONNX Runtime on the CPU or CUDA (:mod:`~ig3d.engines.onnxruntime`, the reference), OpenVINO on the CPU
(:mod:`~ig3d.engines.openvino`, ``pip install "ig3d[openvino]"``), native TensorRT engines on CUDA
(:mod:`~ig3d.engines.tensorrt`, ``pip install "ig3d[tensorrt]"``). The pipelines, :class:`Workers` and
:class:`PerCoreModel` are written against the interface and never compare backend names.

Capability discovery instead of guessing, and no silent fallback: asking for a device, runtime or
precision that is not there raises one clear error, with the reason :func:`available_backends` gives.

Adding a runtime: see :mod:`ig3d.engines.base` (a module with a ``Runtime`` subclass, and one line in
:data:`RUNTIME_MODULES`).

``backend="auto"``: on a CUDA machine, ONNX Runtime's CUDA provider; on the CPU, the installed runtime
with the highest ``auto_rank`` among those whose float32 outputs are exact (equal to ONNX Runtime's
within 1e-5 of the output scale): ONNX Runtime, which measured faster than OpenVINO in the default
preset's per-face worker pool (``ig3d/engines/openvino.py`` has the figures); OpenVINO runs on
request. With ``precision="bf16"``, the runtime that has bf16 here (OpenVINO). One exception: in a
video stream, a lone tracked face's landmark run goes to OpenVINO when it is installed (``pip install
"ig3d[video]"`` or ``"ig3d[openvino]"``), where it measured faster (:data:`AUTO_TRACKING_BACKENDS`).

Runtimes are imported on first use, never at ``import ig3d``.
"""

from __future__ import annotations

import importlib
import os
from pathlib import Path
from typing import Any, Collection, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from .base import PRECISIONS, Model, ModelSource, Runtime
from .onnxruntime import OnnxModel  # the ONNX Runtime model class (imports onnxruntime on first use)

__all__ = ["available_backends", "resolve", "OnnxModel", "cache_root", "Workers", "Pending", "usable_cores",
           "describe_cuda", "PerCoreModel", "Model", "Runtime", "get_runtime", "runtimes", "load", "PRECISIONS",
           "RUNTIME_MODULES", "precisions", "network_precision", "tracking_backends", "AUTO_TRACKING_BACKENDS"]

#: backend name -> "module:attribute" of its :class:`Runtime` instance (attribute default: RUNTIME),
#: in the order they are listed
RUNTIME_MODULES: Dict[str, str] = {
    "onnxruntime": "onnxruntime",
    "openvino": "openvino",
    "tensorrt": "tensorrt",
}
BACKENDS = ("auto",) + tuple(RUNTIME_MODULES)
DEVICES = ("auto", "cpu", "cuda")


def cache_root() -> Path:
    """Root of every cached artefact (engines, compiled models, downloaded weights): ``$IG3D_HOME`` or
    ~/.cache/ig3d."""
    return Path(os.environ.get("IG3D_HOME") or Path.home() / ".cache" / "ig3d")


def get_runtime(backend: str) -> Runtime:
    """The :class:`Runtime` behind a backend name (its module is imported now; its third-party
    package only when it is used)."""
    if backend not in RUNTIME_MODULES:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    module, _, attr = RUNTIME_MODULES[backend].partition(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), attr or "RUNTIME")


def runtimes() -> List[Runtime]:
    """Every known runtime, installed or not."""
    return [get_runtime(b) for b in RUNTIME_MODULES]


def available_backends() -> List[Dict[str, Any]]:
    """Every backend ig3d knows, available here or not, one dict each: the CPU ones, then the CUDA ones
    (``onnxruntime-cpu``, ``openvino``, ``onnxruntime-cuda``, ``tensorrt``; a plugged-in runtime in
    its group).

    Each has ``name``, ``available`` (bool), ``version`` (the installed package's, None when absent),
    ``reason`` (None when available, else why not: "tensorrt is not installed (...)", "no CUDA device:
    cudaErrorInsufficientDriver: ...", "onnxruntime has no CUDAExecutionProvider (install
    onnxruntime-gpu)"), and ``backend`` / ``device``: the ``Predictor(backend=..., device=...)``
    values that select it. Asking for one that is not available raises ``RuntimeError`` with its
    reason."""
    entries = [dict(e) for rt in runtimes() for e in rt.backends()]
    return sorted(entries, key=lambda e: e["device"] == "cuda")  # the CPU backends first


def _entry(backend: str, device: str, entries: Sequence[Dict[str, Any]]) -> Optional[Dict[str, Any]]:
    return next((e for e in entries if e["backend"] == backend and e["device"] in (device, None)), None)


def _summary(entries: Sequence[Dict[str, Any]]) -> str:
    have = [e["name"] for e in entries if e["available"]]
    return f"available here: {', '.join(have) or 'none'}"


def precisions(backend: str, device: str = "cpu") -> Sequence[str]:
    """The precisions ``backend`` can run in on ``device`` here."""
    return get_runtime(backend).precisions(device)


def load(model: ModelSource, *, backend: str = "onnxruntime", device: str = "cpu", threads: Optional[int] = None,
         parallel_runs: int = 1, precision: str = "fp32", name: str = "", spin: bool = False) -> Model:
    """One ONNX file loaded by ``backend`` (see :meth:`Runtime.load`)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return get_runtime(backend).load(model, device=device, threads=threads, parallel_runs=parallel_runs,
                                     precision=precision, name=name, spin=spin)


def network_precision(precision: Union[str, Mapping[str, str]], network: str, passes_gate: Collection[str]) -> str:
    """The precision one network runs in. ``precision="fp32"``: fp32. ``"bf16"``: bf16 for the networks
    in ``passes_gate`` (those whose bf16 outputs passed the accuracy gates), fp32 for the others. A
    mapping network -> precision sets each network explicitly (unlisted ones: fp32), gates or not."""
    if isinstance(precision, Mapping):
        p = precision.get(network, "fp32")
        if p not in PRECISIONS:
            raise ValueError(f"precision[{network!r}]: expected one of {PRECISIONS}, got {p!r}")
        return p
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    return "bf16" if precision == "bf16" and network in passes_gate else "fp32"


#: CUDA runtime error name -> what it means for a user, for :func:`describe_cuda`
_CUDA_REASONS = {
    "cudaErrorNoDevice": "no NVIDIA GPU was found",
    "cudaErrorInsufficientDriver": "no NVIDIA driver is loaded, or it is older than this build's CUDA runtime",
    "cudaErrorNotPermitted": "the process may not use the GPU",
    "cudaErrorDevicesUnavailable": "every GPU is busy or in exclusive use",
    "cudaErrorSystemDriverMismatch": "the NVIDIA driver and its kernel module do not match",
}


def describe_cuda(devices: int, status: str = "", compiled: bool = True) -> str:
    """``kernels.info()``'s CUDA facts as words: "1 CUDA device", or "no CUDA device (why, then the
    raw CUDA error)" instead of a bare ``cudaErrorInsufficientDriver: ...``."""
    if devices > 0:
        return f"{devices} CUDA device{'s' if devices != 1 else ''}"
    if not compiled:
        return f"no CUDA device (this build of ig3d has no CUDA support: {status})" if status else \
            "no CUDA device (this build of ig3d has no CUDA support)"
    code = status.split(":")[0].strip()
    reason = _CUDA_REASONS.get(code)
    if reason and status:
        return f"no CUDA device ({reason}; {status})"
    return f"no CUDA device ({status})" if status and status != "ok" else "no CUDA device"


def resolve(backend: str = "auto", device: str = "auto", precision: str = "fp32") -> Tuple[str, str]:
    """Pick (backend, device) from what was asked and what exists (see the module docstring for
    "auto"); an explicit request that cannot be met raises ``RuntimeError`` (``ValueError`` for a
    value that is not an option at all, or bf16 on hardware without it)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    if precision not in PRECISIONS:
        raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
    entries = available_backends()
    if backend == "auto":
        if device == "auto":
            cuda = _entry("onnxruntime", "cuda", entries)
            device = "cuda" if cuda and cuda["available"] and precision == "fp32" else "cpu"
        if device == "cuda":
            backend = "onnxruntime"
        else:
            # every runtime has fp32; asking a runtime for its other precisions may import it
            usable = [rt for rt in runtimes() if "cpu" in rt.devices() and rt.exact_cpu
                      and (precision == "fp32" or precision in rt.precisions("cpu"))]
            if not usable:
                _no_precision(precision, device)
            backend = max(usable, key=lambda rt: rt.auto_rank).name
    rt = get_runtime(backend)
    own = [e for e in entries if e["backend"] == backend]
    devs = [e["device"] for e in own if e["available"]]
    if device == "auto":
        if not devs:
            why = "; ".join(f"{e['name']}: {e['reason']}" for e in own) or f"it needs {rt.install_hint}"
            raise RuntimeError(f"backend={backend!r} is not available here ({why}); {_summary(entries)}")
        device = devs[0]
    if device not in devs:
        e = _entry(backend, device, own)
        if e is None:
            known = sorted({x["device"] for x in own if x["device"]}) or ["?"]
            raise ValueError(f"backend={backend!r} runs on {known}, not device={device!r}; {_summary(entries)}")
        what = f"device={device!r} was requested" if backend == "onnxruntime" else f"backend={backend!r} was requested"
        raise RuntimeError(f"{what} but {e['name']} is not available: {e['reason']}; {_summary(entries)}")
    if precision not in rt.precisions(device):
        _no_precision(precision, device, backend)
    return backend, device


#: ``backend="auto"`` on the CPU: networks whose run for a lone tracked face in a video stream (one
#: face, every core, every frame: :class:`ig3d.stream.Tracker`) goes to another installed runtime,
#: where it measured faster (file name -> runtimes, best first; the first installed one whose float32
#: outputs are exact is used). MediaPipe's landmark model on OpenVINO, its PReLUs fused into the
#: convolutions (:func:`ig3d.engines.openvino.contract_prelu`), against ONNX Runtime on 2 cores,
#: interleaved rounds: 3.5 against 5.1 ms on 2 threads; a tracked video frame about 1.2-1.3x the
#: frames/s (``benchmarks/README.md``). Photos stay on ONNX Runtime, so that a face's result never
#: depends on the other faces in a call (OpenVINO's landmarks differ from ONNX Runtime's by up to
#: 3e-4 px); so do the other networks, which ONNX Runtime runs faster (see
#: :class:`ig3d.engines.openvino.OpenVinoRuntime`).
AUTO_TRACKING_BACKENDS: Dict[str, Tuple[str, ...]] = {"face_landmarks.onnx": ("openvino",)}


def tracking_backends(asked: str, backend: str, device: str) -> Dict[str, str]:
    """The networks whose lone tracked-face runs go to another runtime than ``backend`` (what
    ``asked`` resolved to), by name: with ``asked="auto"`` on the CPU, those of
    :data:`AUTO_TRACKING_BACKENDS` whose runtime is installed here; none otherwise (an explicit
    backend runs every network)."""
    if asked != "auto" or device != "cpu":
        return {}
    out: Dict[str, str] = {}
    for name, preferred in AUTO_TRACKING_BACKENDS.items():
        for b in preferred:
            rt = get_runtime(b)
            if rt.exact_cpu and "cpu" in rt.devices():
                if b != backend:
                    out[name] = b
                break
    return out


def _no_precision(precision: str, device: str, backend: str = "") -> None:
    if precision == "bf16":
        from .openvino import cpu_has_bf16

        if device == "cpu" and get_runtime("openvino").missing() is None and not cpu_has_bf16():
            raise ValueError("precision='bf16' needs a CPU with AMX or AVX512-BF16 (bf16 arithmetic in hardware); "
                             "this CPU has neither: use precision='fp32'")
        raise ValueError(f"precision='bf16' runs on the CPU with backend='openvino' (pip install \"ig3d[openvino]\")"
                         f"{f', not with backend={backend!r}' if backend else ''} on device={device!r}")
    raise ValueError(f"precision={precision!r} is not available with backend={backend or 'auto'!r} on {device!r}")


#: Largest ONNX file (bytes) for which :class:`PerCoreModel` keeps a second, single-threaded
#: session, whose weights are held twice: SMIRK (14 MB), DDAMFN++ (18 MB) and CAGE (123 MB,
#: +210 MB RSS for +33 % images/s at batch 32 on 2 cores) do; EMOCA (308 MB, +360 MB RSS for
#: +6-10 %) does not.
PER_CORE_MAX_BYTES = 192 << 20


class PerCoreModel:
    """One ONNX file run the CPU workers' way (:class:`Workers`): a lone item on a session that
    uses every core; a batch as one single-threaded run per item, each worker on its own core,
    from a second session (ONNX Runtime's intra-op threads scale poorly on these graphs: measured
    on 2 cores with batches of 8, DDAMFN++ 52 -> 68 img/s, SMIRK 66 -> 73; batches of 32, CAGE
    6.8 -> 9.1, EMOCA 6.2 -> 6.5).
    The second session holds the weights again, so it exists only for files up to
    :data:`PER_CORE_MAX_BYTES`, and only when ``workers`` runs in parallel on the CPU; otherwise
    both roles are the same session. Both give the same numbers (same kernels, one per item).

    ``spin``: the all-cores session's threads spin between operators during a run and stop at its
    end, for a model whose lone run has the cores to itself (the default preset's landmark model:
    10.6 -> 8.4 ms per face on 2 cores). Not for the Ig3D encoders, whose 3D and 2D runs of a lone
    face go at the same time."""

    def __init__(self, model: ModelSource, *, workers: "Workers", backend: str = "onnxruntime",
                 device: str = "cpu", threads: Optional[int] = None, name: str = "", spin: bool = False,
                 precision: str = "fp32"):
        #: size of the ONNX file in bytes
        self.nbytes = len(model) if isinstance(model, bytes) else os.path.getsize(model)
        small = self.nbytes <= PER_CORE_MAX_BYTES
        two = device == "cpu" and workers.parallel and small and threads != 1
        # without a second model the all-cores one also serves the workers' parallel runs
        self.all_cores = load(model, backend=backend, device=device, threads=threads, name=name, spin=spin and two,
                              precision=precision, parallel_runs=1 if two else workers.n)
        self.one_core = load(model, backend=backend, device=device, threads=1, name=name, precision=precision,
                             parallel_runs=workers.n) if two else self.all_cores
        self.name = self.all_cores.name
        self.precision = precision
        self.input_names, self.output_names = self.all_cores.input_names, self.all_cores.output_names

    def for_items(self, n: int) -> Model:
        """The session for a run of ``n`` items."""
        return self.one_core if n > 1 else self.all_cores


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


class Pending:
    """Outputs of a model run that may still be in flight; ``result()`` waits and returns them
    as one dict name -> array, batch in input order."""

    def __init__(self, futures=None, value: Optional[Dict[str, np.ndarray]] = None):
        self._futures, self._value = futures, value

    def parts(self):
        """Yield ``(start, outputs)`` for each run in input order as soon as it is done (one
        part per item on CPU workers, the whole batch otherwise): the caller can work on the
        first results while later runs are still going."""
        if self._value is not None:
            yield 0, self._value
            return
        start = 0
        for f in self._futures:
            part = f.result()
            yield start, part
            start += len(next(iter(part.values())))

    def result(self) -> Dict[str, np.ndarray]:
        if self._value is None:
            parts = [f.result() for f in self._futures]
            self._value = {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}
            self._futures = None
        return self._value


class Workers:
    """Where a pipeline's model runs happen.

    On the CPU (``n > 1``) every item of a batch is its own single-threaded run, and the runs are
    spread over ``n`` worker threads (every runtime releases the GIL while it runs). ``model`` is
    any :class:`ig3d.engines.base.Model`. Measured on a
    2-core machine with the default preset's networks, per face: the landmark model 10.2 ms as
    one batched run of 16 on 2 intra-op threads, 5.2 ms as 16 runs of one on 2 workers; the
    detectors and the blendshape model gain 1.2-2x the same way (ONNX Runtime's intra-op
    threads barely speed up these small graphs, and large batches fall out of the cache).
    Items are independent, so a face's result does not depend on what else is in the call.

    With ``n == 1`` (and on GPUs, where one batched run is what the hardware wants) each call is
    one batched run in the calling thread.
    """

    def __init__(self, n: int = 1):
        self.n = max(1, int(n))
        self._pool = None
        self._pid = os.getpid()
        if self.n > 1:
            self._new_pool()

    def _new_pool(self) -> None:
        import weakref
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(self.n, thread_name_prefix="ig3d-worker")
        self._pid = os.getpid()
        weakref.finalize(self, self._pool.shutdown, wait=False)

    @property
    def parallel(self) -> bool:
        return self._pool is not None

    def close(self) -> None:
        """Stop the worker threads (runs already going finish); later parallel runs fail."""
        if self._pool is not None:
            self._pool.shutdown(wait=False)

    def start(self, model: Model, items, prep=None) -> Pending:
        """Begin running ``model`` over ``items`` (at least one): an array batch, or any sequence
        that ``prep`` turns into the model's input batch (``prep(items[i:i + 1])`` per run on the
        CPU, ``prep(items)`` once otherwise; a CPU worker runs ``prep`` too, so input
        preparation is spread over the cores as well)."""
        if prep is None:
            def prep(part):
                return part
        if self._pool is None:
            return Pending(value=model.run(prep(items)))
        if os.getpid() != self._pid:
            # a forked child (multiprocessing): the parent's worker threads do not exist here
            self._new_pool()

        def one(part):
            return model.run(prep(part))

        return Pending([self._pool.submit(one, items[i:i + 1]) for i in range(len(items))])

    def run(self, model: Model, items, prep=None) -> Dict[str, np.ndarray]:
        return self.start(model, items, prep).result()
