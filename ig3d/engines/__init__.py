"""Running the ONNX encoders: ONNX Runtime on the CPU or CUDA, or TensorRT engines (through ONNX
Runtime's TensorRT execution provider). Capability discovery instead of guessing, and no silent
fallback from a GPU to the CPU: asking for a device that is not there raises one clear error.

onnxruntime is imported on first use, never at ``import ig3d``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = ["available_backends", "resolve", "OnnxModel", "cache_root", "Workers", "Pending", "usable_cores",
           "describe_cuda"]

BACKENDS = ("auto", "onnxruntime", "tensorrt")
DEVICES = ("auto", "cpu", "cuda")


def cache_root() -> Path:
    """Root of every cached artefact (engines, downloaded weights): ``$IG3D_HOME`` or ~/.cache/ig3d."""
    return Path(os.environ.get("IG3D_HOME") or Path.home() / ".cache" / "ig3d")


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as e:  # pragma: no cover - onnxruntime is a dependency
        raise ImportError("ig3d needs onnxruntime to run its encoders: pip install onnxruntime "
                          "(or onnxruntime-gpu for CUDA/TensorRT)") from e
    return ort


def available_backends() -> List[str]:
    """What this machine can run, as "<backend>-<device>" strings, e.g. ["onnxruntime-cpu"]."""
    providers = _ort().get_available_providers()
    out = []
    if "CPUExecutionProvider" in providers:
        out.append("onnxruntime-cpu")
    if "CUDAExecutionProvider" in providers:
        out.append("onnxruntime-cuda")
    if "TensorrtExecutionProvider" in providers:
        out.append("tensorrt-cuda")
    return out


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


def resolve(backend: str = "auto", device: str = "auto") -> Tuple[str, str]:
    """Pick (backend, device) from what was asked and what exists. "auto" prefers CUDA when ONNX
    Runtime has it; an explicit request that cannot be met raises ``RuntimeError``."""
    if backend not in BACKENDS:
        raise ValueError(f"backend: expected one of {BACKENDS}, got {backend!r}")
    if device not in DEVICES:
        raise ValueError(f"device: expected one of {DEVICES}, got {device!r}")
    have = available_backends()
    if backend == "tensorrt":
        if device == "cpu":
            raise ValueError("backend='tensorrt' runs on a GPU: use device='cuda' or 'auto'")
        if "tensorrt-cuda" not in have:
            raise RuntimeError("backend='tensorrt' needs onnxruntime-gpu built with TensorRT, the tensorrt "
                               "package and a CUDA GPU (pip install onnxruntime-gpu tensorrt); available here: "
                               f"{have}")
        return "tensorrt", "cuda"
    if device == "cuda" and "onnxruntime-cuda" not in have:
        raise RuntimeError("device='cuda' was requested but ONNX Runtime has no CUDA execution provider here "
                           f"(pip install onnxruntime-gpu, and a CUDA GPU); available: {have}")
    if device == "auto":
        device = "cuda" if "onnxruntime-cuda" in have else "cpu"
    return "onnxruntime", device


class OnnxModel:
    """One ONNX file as an inference session with dynamic batch.

    ``run(x)`` or ``run({"name": x, ...})`` returns the outputs as a dict name -> array.
    """

    def __init__(self, model: Union[str, os.PathLike, bytes], *, backend: str = "onnxruntime",
                 device: str = "cpu", threads: Optional[int] = None, name: str = "", spin: bool = False):
        ort = _ort()
        self.name = name or (os.path.basename(os.fspath(model)) if not isinstance(model, bytes) else "model")
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
        if backend == "tensorrt":
            cache = cache_root() / "engines" / f"ort-{ort.__version__}"
            cache.mkdir(parents=True, exist_ok=True)
            providers: Sequence = [("TensorrtExecutionProvider", {"trt_engine_cache_enable": True,
                                                                   "trt_engine_cache_path": str(cache)}),
                                   "CUDAExecutionProvider"]
        elif device == "cuda":
            providers = ["CUDAExecutionProvider"]
        else:
            providers = ["CPUExecutionProvider"]
        src = model if isinstance(model, bytes) else os.fspath(model)
        try:
            self.session = ort.InferenceSession(src, sess_options=opts, providers=list(providers))
        except Exception as e:
            raise ValueError(f"{self.name}: ONNX Runtime could not load the model: {e}") from e
        self.backend, self.device = backend, device
        self.input_names = [i.name for i in self.session.get_inputs()]
        self.output_names = [o.name for o in self.session.get_outputs()]

    def run(self, inputs: Union[np.ndarray, Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        if not isinstance(inputs, dict):
            inputs = {self.input_names[0]: inputs}
        outs = self.session.run(self.output_names, inputs)
        return dict(zip(self.output_names, outs))

    def __repr__(self) -> str:
        return f"OnnxModel({self.name}, {self.backend}/{self.device})"


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

    def __init__(self, model: Union[str, os.PathLike, bytes], *, workers: "Workers", backend: str = "onnxruntime",
                 device: str = "cpu", threads: Optional[int] = None, name: str = "", spin: bool = False):
        #: size of the ONNX file in bytes
        self.nbytes = len(model) if isinstance(model, bytes) else os.path.getsize(model)
        small = self.nbytes <= PER_CORE_MAX_BYTES
        two = backend == "onnxruntime" and device == "cpu" and workers.parallel and small and threads != 1
        self.all_cores = OnnxModel(model, backend=backend, device=device, threads=threads, name=name,
                                   spin=spin and two)
        self.one_core = OnnxModel(model, backend=backend, device=device, threads=1, name=name) if two else self.all_cores
        self.name = self.all_cores.name
        self.input_names, self.output_names = self.all_cores.input_names, self.all_cores.output_names

    def for_items(self, n: int) -> "OnnxModel":
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

    On the CPU (``n > 1``) every item of a batch is its own single-threaded ONNX Runtime run, and
    the runs are spread over ``n`` worker threads (ONNX Runtime releases the GIL). Measured on a
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

    def start(self, model: "OnnxModel", items, prep=None) -> Pending:
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

    def run(self, model: "OnnxModel", items, prep=None) -> Dict[str, np.ndarray]:
        return self.start(model, items, prep).result()
