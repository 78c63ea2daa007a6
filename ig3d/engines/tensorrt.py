"""Native TensorRT as an ig3d runtime (``backend="tensorrt"``, the optional extra ``ig3d[tensorrt]``):
engines built from ig3d's ONNX files with TensorRT's Python API, cached on disk, and run on device
buffers that the fused head reads directly.

Building. ``trt.OnnxParser`` reads the ONNX file (from its path, so that external weights are found),
one optimisation profile makes the batch dimension dynamic (:class:`Profile`: min/opt/max batch; any
other dynamic dimension, such as the full-range detector's height and width, gets the profile's
``dim`` range), and the engine is built in fp16 (the default of :func:`build_engine` and ``ig3d
engines build``) or fp32. fp32 engines are built with TF32 off, so fp32 means fp32. fp16 uses
``BuilderFlag.FP16``, which TensorRT 10 has and TensorRT 11 removed (11 builds only strongly typed
networks, whose precision is in the ONNX graph: docs.nvidia.com, "Migrating from TensorRT 10.x to
11.x"); with TensorRT 11 ``precision="fp16"`` is refused with that reason. Through
``Predictor(backend="tensorrt")`` the networks run in ig3d's ``precision`` ("fp32" by default,
like every backend), so a Predictor never trades accuracy for speed unasked.

The cache. Engines live under ``$IG3D_HOME/engines`` (:func:`engine_dir`). An engine only fits the
ONNX file, TensorRT version, GPU and settings it was built for, so its :class:`EngineKey` holds the
ONNX file's sha256, the TensorRT version, the GPU's name and compute capability, the precision and
the profile. The key's digest is in the file name (``<onnx stem>.<precision>.<digest>.engine``),
and a JSON sidecar beside it records the key, the engine's size and sha256. Before an engine is
run, the sidecar's key must equal the wanted key and the file's size and sha256 the recorded ones,
and TensorRT must deserialise it; an engine that fails any of these (a truncated write, a copied
file, a cache from another GPU or TensorRT) is deleted and rebuilt, with a log line saying why, and
never run. Writes are atomic (a temporary file in the same folder, then ``os.replace``): the engine
first, then the sidecar, so a reader sees either no entry or a complete one; a lock file keeps
two processes from building the same engine at once.

Running. Device memory comes from ig3d's core (``ig3d._core.DeviceBuffer``, stream-ordered, so
steady-state calls do not reach ``cudaMalloc``) and host copies from its ``copy_to_device`` /
``copy_to_host``: no pycuda or cuda-python is needed. :meth:`TensorRTModel.run` takes and returns
numpy arrays (the :class:`~ig3d.engines.base.Model` interface the pipelines use);
:meth:`TensorRTModel.run_device` takes numpy or device arrays (``__cuda_array_interface__`` /
DLPack: torch CUDA tensors, CuPy, another engine's outputs) and returns
:class:`ig3d.device.DeviceArray` outputs, which :class:`ig3d.FusedHead` reads in place. A batch larger
than the profile's maximum runs in several launches into one output buffer.

tensorrt is imported on first use, never at ``import ig3d``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import re
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .base import Model, ModelSource, Runtime, model_name

__all__ = ["TRT_PRECISIONS", "Profile", "EngineKey", "Built", "TensorRTModel", "TensorRTRuntime", "RUNTIME",
           "engine_dir", "build_engine", "load_engine", "list_engines", "clear_engines", "tensorrt_problem"]

log = logging.getLogger("ig3d")

#: the precisions TensorRT engines are built in; fp16 is the default of build_engine and the CLI
TRT_PRECISIONS = ("fp16", "fp32")
#: version of the sidecar's layout; a sidecar of another format is a mismatch
FORMAT = 1
INSTALL_HINT = "pip install \"ig3d[tensorrt]\" (on a Jetson, TensorRT comes with JetPack)"


def _trt():
    try:
        import tensorrt as trt
    except ImportError as e:
        if getattr(e, "name", None) == "tensorrt":
            raise ImportError(f"tensorrt is not installed: {INSTALL_HINT}") from e
        raise ImportError(f"tensorrt could not be imported: {e}") from e
    return trt


def tensorrt_problem() -> Optional[str]:
    """None when TensorRT engines can be built and run here, else why not: "tensorrt is not
    installed (...)", "no CUDA device: cudaErrorInsufficientDriver: ...", or a core without CUDA."""
    try:
        _trt()
    except ImportError as e:
        return str(e)
    from .. import kernels
    from ._cuda import cuda_problem

    if not kernels.core().cuda_compiled():
        return "this build of ig3d has no CUDA support (its device buffers carry TensorRT's inputs and outputs)"
    return cuda_problem()


@dataclasses.dataclass(frozen=True)
class Profile:
    """The optimisation profile an engine is built for: the batch dimension runs from ``min_batch``
    to ``max_batch`` and is tuned for ``opt_batch``; every other dynamic dimension runs over ``dim``
    (min, opt, max). Larger batches are split into several runs."""

    min_batch: int = 1
    opt_batch: int = 16
    max_batch: int = 256
    dim: Tuple[int, int, int] = (32, 256, 2048)

    def __post_init__(self) -> None:
        b = (self.min_batch, self.opt_batch, self.max_batch)
        for what, (lo, mid, hi) in (("batch (min, opt, max)", b), ("dim (min, opt, max)", tuple(self.dim))):
            if not all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in (lo, mid, hi)) \
                    or not 1 <= lo <= mid <= hi:
                raise ValueError(f"Profile: {what} must be integers with 1 <= min <= opt <= max, got "
                                 f"{(lo, mid, hi)}")
        object.__setattr__(self, "dim", tuple(int(v) for v in self.dim))

    def as_dict(self) -> Dict[str, Any]:
        return {"batch": [int(self.min_batch), int(self.opt_batch), int(self.max_batch)], "dim": list(self.dim)}


@dataclasses.dataclass(frozen=True)
class EngineKey:
    """What a cached engine was built from and for; two engines are interchangeable only when
    their keys are equal."""

    onnx_sha256: str
    tensorrt: str
    gpu: str
    compute_capability: str
    precision: str
    profile: Profile

    def as_dict(self) -> Dict[str, Any]:
        return {"onnx_sha256": self.onnx_sha256, "tensorrt": self.tensorrt, "gpu": self.gpu,
                "compute_capability": self.compute_capability, "precision": self.precision,
                "profile": self.profile.as_dict()}

    def digest(self) -> str:
        """sha256 of the key's canonical JSON (first 20 hex digits: the file name's part)."""
        text = json.dumps({"format": FORMAT, **self.as_dict()}, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()[:20]


def engine_dir(root: Union[None, str, os.PathLike] = None) -> Path:
    """Where engines are cached: ``root``, else ``$IG3D_HOME/engines`` (default ~/.cache/ig3d/engines)."""
    if root is not None:
        return Path(root)
    from . import cache_root

    return cache_root() / "engines"


def _gpu_identity(device: int) -> Tuple[str, str]:
    """(GPU name, compute capability) of ``device`` (a function of its own so tests can stand in)."""
    from ._cuda import device_identity

    return device_identity(device)


def _stem(name: str) -> str:
    stem = name[:-5] if name.endswith(".onnx") else name
    return re.sub(r"[^A-Za-z0-9_.+-]", "_", stem) or "model"


def _paths(folder: Path, name: str, key: EngineKey) -> Tuple[Path, Path]:
    base = folder / f"{_stem(name)}.{key.precision}.{key.digest()}"
    return base.with_name(base.name + ".engine"), base.with_name(base.name + ".json")


def _read_onnx(model: ModelSource, name: str) -> Tuple[bytes, Optional[str], str]:
    """(bytes, path or None, display name) of an ONNX source, with a clear error for a missing file."""
    if isinstance(model, bytes):
        if not model:
            raise ValueError(f"{name or 'model'}: the ONNX bytes are empty")
        return model, None, name or "model"
    path = os.fspath(model)
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such ONNX file") from None
    if not data:
        raise ValueError(f"{path}: the ONNX file is empty")
    return data, path, model_name(model, name)


def _check_precision(precision: str) -> None:
    if precision not in TRT_PRECISIONS:
        raise ValueError(f"precision: TensorRT engines are built in one of {TRT_PRECISIONS}, got {precision!r}")


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file, no file, or all of the new one."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (a lock file) between processes, where the OS has flock."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, writes stay atomic
        yield
        return
    with open(path, "a+b") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


def _remove(*paths: Path) -> None:
    for p in paths:
        with contextlib.suppress(FileNotFoundError):
            p.unlink()


def _check_cached(engine_path: Path, meta_path: Path, key: EngineKey) -> Tuple[Optional[bytes], Optional[str]]:
    """(engine bytes, None) for a cached engine that matches ``key``; (None, None) when there is none;
    (None, why) when there is one that must not be run."""
    if not engine_path.exists() and not meta_path.exists():
        return None, None
    if not meta_path.exists():
        return None, "it has no sidecar (.json)"
    if not engine_path.exists():
        return None, "its engine file is missing"
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as e:
        return None, f"its sidecar is unreadable ({e})"
    if not isinstance(meta, dict):
        return None, "its sidecar is not a JSON object"
    if meta.get("format") != FORMAT:
        return None, f"its sidecar has format {meta.get('format')!r}, expected {FORMAT}"
    want = key.as_dict()
    got = meta.get("key")
    if got != want:
        got = got if isinstance(got, dict) else {}
        diff = [f"{k} {got.get(k)!r} != {v!r}" for k, v in want.items() if got.get(k) != v]
        return None, "it was built for something else: " + "; ".join(diff or ["malformed key"])
    data = engine_path.read_bytes()
    if len(data) != meta.get("engine_bytes"):
        return None, f"it has {len(data)} bytes, its sidecar records {meta.get('engine_bytes')} (truncated or replaced)"
    if hashlib.sha256(data).hexdigest() != meta.get("engine_sha256"):
        return None, "its sha256 differs from the one recorded when it was built (corrupt)"
    return data, None


def _build(trt: Any, data: bytes, path: Optional[str], name: str, precision: str, profile: Profile) -> bytes:
    """Serialised engine of the ONNX file for ``precision`` and ``profile``."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    parser = trt.OnnxParser(network, logger)
    ok = parser.parse_from_file(path) if path is not None else parser.parse(data)
    if not ok:
        errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
        raise ValueError(f"{name}: TensorRT could not parse the ONNX file: {'; '.join(errors) or 'no reason given'}")
    config = builder.create_builder_config()
    if precision == "fp16":
        if not hasattr(trt.BuilderFlag, "FP16"):
            raise ValueError(f"precision='fp16': TensorRT {trt.__version__} has no BuilderFlag.FP16 (TensorRT 11 "
                             "builds only strongly typed networks); use precision='fp32', or TensorRT 10 for fp16")
        config.set_flag(trt.BuilderFlag.FP16)
    elif hasattr(trt.BuilderFlag, "TF32"):
        config.clear_flag(trt.BuilderFlag.TF32)  # fp32 means fp32: no TF32 rounding in matrix products
    opt = builder.create_optimization_profile()
    for i in range(network.num_inputs):
        t = network.get_input(i)
        shape = tuple(int(d) for d in t.shape)
        if not shape:
            raise ValueError(f"{name}: input {t.name!r} is a scalar; ig3d's engines need a batch dimension")
        lo, mid, hi = [], [], []
        for axis, d in enumerate(shape):
            if d >= 0:
                rng = (d, d, d)
            elif axis == 0:
                rng = (profile.min_batch, profile.opt_batch, profile.max_batch)
            else:
                rng = profile.dim
            lo.append(rng[0]), mid.append(rng[1]), hi.append(rng[2])
        opt.set_shape(t.name, tuple(lo), tuple(mid), tuple(hi))
    config.add_optimization_profile(opt)
    blob = builder.build_serialized_network(network, config)
    if blob is None:
        raise RuntimeError(f"{name}: TensorRT could not build an engine (its log above says why)")
    return bytes(memoryview(blob))


def _key(trt: Any, data: bytes, precision: str, profile: Profile, device: int) -> EngineKey:
    gpu, cc = _gpu_identity(device)
    return EngineKey(hashlib.sha256(data).hexdigest(), str(trt.__version__), gpu, cc, precision, profile)


def _engine(model: ModelSource, *, precision: str, profile: Optional[Profile], device: int,
            cache_dir: Union[None, str, os.PathLike], name: str, rebuild: bool) -> Tuple[Any, Any, Path, bool]:
    """(deserialised engine, the TensorRT runtime that holds it, its path, whether it was built now):
    from the cache when a valid engine is there, else built, cached and then deserialised."""
    _check_precision(precision)
    profile = profile or Profile()
    trt = _trt()
    data, path, name = _read_onnx(model, name)
    key = _key(trt, data, precision, profile, device)
    folder = engine_dir(cache_dir)
    folder.mkdir(parents=True, exist_ok=True)
    engine_path, meta_path = _paths(folder, name, key)
    runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
    with _locked(engine_path.with_name(engine_path.name[:-len(".engine")] + ".lock")):
        if not rebuild:
            blob, problem = _check_cached(engine_path, meta_path, key)
            if blob is not None:
                engine = runtime.deserialize_cuda_engine(blob)
                if engine is not None:
                    return engine, runtime, engine_path, False
                problem = "TensorRT could not deserialise it"
            if problem:
                log.warning("ig3d: cached TensorRT engine %s is not used: %s; rebuilding it", engine_path, problem)
        _remove(engine_path, meta_path)
        t0 = time.perf_counter()
        blob = _build(trt, data, path, name, precision, profile)
        meta = {"format": FORMAT, "key": key.as_dict(), "onnx": name, "engine_bytes": len(blob),
                "engine_sha256": hashlib.sha256(blob).hexdigest(), "build_seconds": round(time.perf_counter() - t0, 3),
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        _write_atomic(engine_path, blob)
        _write_atomic(meta_path, (json.dumps(meta, indent=2) + "\n").encode())
        engine = runtime.deserialize_cuda_engine(blob)
        if engine is None:
            _remove(engine_path, meta_path)
            raise RuntimeError(f"{name}: TensorRT could not deserialise the engine it has just built")
        return engine, runtime, engine_path, True


class Built(NamedTuple):
    """What :func:`build_engine` did: the engine file, and whether it was built now (False: a valid
    cached one was found)."""

    path: Path
    built: bool


def build_engine(model: ModelSource, *, precision: str = "fp16", profile: Optional[Profile] = None, device: int = 0,
                 cache_dir: Union[None, str, os.PathLike] = None, name: str = "", force: bool = False) -> Built:
    """Build (or find valid in the cache) the engine of ``model`` for ``precision`` and ``profile``
    on CUDA device ``device``. ``force`` rebuilds even a valid one."""
    _, _, path, built = _engine(model, precision=precision, profile=profile, device=device, cache_dir=cache_dir,
                                name=name, rebuild=force)
    return Built(path, built)


def load_engine(model: ModelSource, *, precision: str = "fp16", profile: Optional[Profile] = None, device: int = 0,
                cache_dir: Union[None, str, os.PathLike] = None, name: str = "") -> "TensorRTModel":
    """``model`` as a :class:`TensorRTModel` on CUDA device ``device``, its engine from the cache
    (built there first when needed)."""
    engine, runtime, path, _ = _engine(model, precision=precision, profile=profile, device=device,
                                       cache_dir=cache_dir, name=name, rebuild=False)
    m = TensorRTModel(engine, name=model_name(model, name), precision=precision, device=device, path=path)
    m._runtime = runtime  # TensorRT's runtime must outlive the engines it deserialised
    return m


def list_engines(cache_dir: Union[None, str, os.PathLike] = None) -> List[Dict[str, Any]]:
    """The cached engines, one dict each: ``path``, ``onnx``, ``bytes``, ``valid`` (its size and sha256
    match its sidecar), ``problem`` (why not), and the sidecar's ``key`` and ``created``. Orphans
    (an engine without sidecar or the reverse) are listed as invalid. Needs no TensorRT."""
    folder = engine_dir(cache_dir)
    if not folder.is_dir():
        return []
    stems = sorted({p.name[:-len(p.suffix)] for p in folder.iterdir()
                    if p.suffix in (".engine", ".json") and not p.name.startswith(".")})
    out = []
    for stem in stems:
        engine_path, meta_path = folder / f"{stem}.engine", folder / f"{stem}.json"
        entry: Dict[str, Any] = {"path": str(engine_path), "onnx": None, "bytes": None, "valid": False,
                                 "problem": None, "key": None, "created": None}
        if engine_path.exists():
            entry["bytes"] = engine_path.stat().st_size
        try:
            meta = json.loads(meta_path.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
        except FileNotFoundError:
            entry["problem"] = "no sidecar (.json)"
            out.append(entry)
            continue
        except (OSError, ValueError) as e:
            entry["problem"] = f"unreadable sidecar ({e})"
            out.append(entry)
            continue
        entry.update(onnx=meta.get("onnx"), key=meta.get("key"), created=meta.get("created"))
        if entry["bytes"] is None:
            entry["problem"] = "engine file missing"
        elif entry["bytes"] != meta.get("engine_bytes"):
            entry["problem"] = f"{entry['bytes']} bytes, sidecar records {meta.get('engine_bytes')} (truncated)"
        elif hashlib.sha256(engine_path.read_bytes()).hexdigest() != meta.get("engine_sha256"):
            entry["problem"] = "sha256 differs from the sidecar's (corrupt)"
        else:
            entry["valid"] = True
        out.append(entry)
    return out


def clear_engines(cache_dir: Union[None, str, os.PathLike] = None, *, onnx: Optional[str] = None,
                  invalid_only: bool = False) -> List[Path]:
    """Delete cached engines (with their sidecars, lock and leftover temporary files): all of them, those
    built from the ONNX file named ``onnx`` (its file name, e.g. "face_landmarks.onnx"), or with
    ``invalid_only`` only those :func:`list_engines` marks invalid. Returns the deleted engine paths."""
    folder = engine_dir(cache_dir)
    removed: List[Path] = []
    for entry in list_engines(folder):
        if onnx is not None and entry["onnx"] != onnx and not Path(entry["path"]).name.startswith(_stem(onnx) + "."):
            continue
        if invalid_only and entry["valid"]:
            continue
        engine_path = Path(entry["path"])
        base = engine_path.name[:-len(".engine")]
        _remove(engine_path, folder / f"{base}.json", folder / f"{base}.lock")
        removed.append(engine_path)
    if onnx is None and not invalid_only and folder.is_dir():
        for p in folder.iterdir():
            if p.name.endswith(".tmp") or p.suffix == ".lock":
                _remove(p)
    return removed


# --- running an engine ------------------------------------------------------------------------------------------

_Input = Union[np.ndarray, Any]


class TensorRTModel(Model):
    """One deserialised TensorRT engine with an execution context, run on CUDA device ``device``.

    ``run`` (host arrays in and out) and ``run_device`` (host or device arrays in, device arrays
    out) are safe to call from several threads: calls take turns on the one execution context, and
    a call on another stream first waits for the previous call's stream."""

    def __init__(self, engine: Any, *, name: str = "model", precision: str = "fp16", device: int = 0,
                 path: Optional[Path] = None):
        trt = _trt()
        self.engine, self.name, self.path = engine, name, path
        self.backend, self.device, self.precision = "tensorrt", "cuda", precision
        self.device_index = int(device)
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        is_input = {n: engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT for n in names}
        self.input_names = [n for n in names if is_input[n]]
        self.output_names = [n for n in names if not is_input[n]]
        self._dtype = {n: np.dtype(trt.nptype(engine.get_tensor_dtype(n))) for n in names}
        #: input name -> (min shape, opt shape, max shape) of the engine's profile 0
        self.profile_shapes = {n: tuple(tuple(int(d) for d in s) for s in engine.get_tensor_profile_shape(n, 0))
                               for n in self.input_names}
        self._context = engine.create_execution_context()
        if self._context is None:
            raise RuntimeError(f"{name}: TensorRT could not create an execution context (out of GPU memory?)")
        self._lock = threading.Lock()
        self._last_stream: Optional[int] = None
        self._runtime: Any = None  # the TensorRT runtime that deserialised the engine (load_engine sets it)

    @property
    def max_batch(self) -> int:
        """The largest batch one launch takes (larger batches are split)."""
        return min(shapes[2][0] for shapes in self.profile_shapes.values()) if self.profile_shapes else 1

    def _inputs(self, inputs: Union[_Input, Dict[str, _Input]], stream: int):
        from .. import device as dm

        if not isinstance(inputs, dict):
            inputs = {self.input_names[0]: inputs}
        unknown = sorted(set(inputs) - set(self.input_names))
        if unknown:
            raise ValueError(f"{self.name}: unknown input(s) {unknown}; the engine's inputs are {self.input_names}")
        missing = [n for n in self.input_names if n not in inputs]
        if missing:
            raise ValueError(f"{self.name}: input(s) {missing} not given; the engine's inputs are {self.input_names}")
        infos = {}
        for n in self.input_names:
            x = inputs[n]
            if not isinstance(x, np.ndarray) and not dm.is_device_array(x):
                x = np.asarray(x)
            info = dm.inspect(np.ascontiguousarray(x) if isinstance(x, np.ndarray) else x, f"{self.name}: {n}",
                              stream=stream)
            want = self._dtype[n]
            if info.typestr == "<bf16" or np.dtype(info.typestr) != want:
                raise ValueError(f"{info.name}: expected {want}, got {dm._dtype_name(info.typestr)}")
            if not info.is_c_contiguous():
                raise ValueError(f"{info.name}: must be C-contiguous, got strides {list(info.strides or ())}")
            lo, _, hi = self.profile_shapes[n]
            if len(info.shape) != len(lo):
                raise ValueError(f"{info.name}: expected {len(lo)} dimensions, got shape {list(info.shape)}")
            for axis in range(1, len(lo)):
                if not lo[axis] <= info.shape[axis] <= hi[axis]:
                    raise ValueError(f"{info.name}: dimension {axis} is {info.shape[axis]}, outside the engine's "
                                     f"profile [{lo[axis]}, {hi[axis]}] (rebuild with another Profile)")
            infos[n] = info
        batches = {info.shape[0] for info in infos.values()}
        if len(batches) != 1:
            raise ValueError(f"{self.name}: the inputs' batch sizes differ: "
                             f"{ {n: i.shape[0] for n, i in infos.items()} }")
        if any(i.on_device for i in infos.values()):
            dev = dm.common_device(list(infos.values()))
            if dev != self.device_index:
                raise ValueError(f"{self.name}: inputs are on CUDA device {dev}, the engine on {self.device_index}")
        return infos, batches.pop()

    def _execute(self, inputs: Union[_Input, Dict[str, _Input]], stream: Optional[int]):
        """Run the engine; returns (outputs as (DeviceBuffer, shape) by name, stream, inputs' owners)."""
        from .. import device as dm
        from .. import kernels

        core = kernels.core()
        objs = list(inputs.values()) if isinstance(inputs, dict) else [inputs]
        s = dm.resolve_stream(objs, stream)
        infos, batch = self._inputs(inputs, s)
        dev = self.device_index
        core.cuda_require_device(dev)
        dm.wait_for_producers([i for i in infos.values() if i.on_device], dev, s)
        keep: List[Any] = []
        ptrs: Dict[str, int] = {}
        for n, info in infos.items():
            if info.on_device:
                ptrs[n] = info.ptr
                keep.append(info.owner)
            else:
                host = info.owner
                buf = core.DeviceBuffer(max(host.nbytes, 1), dev, s)
                if host.nbytes:
                    core.copy_to_device(buf.ptr, host, dev, s)
                ptrs[n] = buf.ptr
                keep += [buf, host]  # the host array until its copy has run
        step = max(1, min(self.max_batch, batch)) if batch else 0
        outs: Dict[str, Tuple[Any, Tuple[int, ...]]] = {}
        with self._lock:
            ctx = self._context
            if self._last_stream is not None and self._last_stream != s:
                core.cuda_stream_wait(dev, s, self._last_stream)  # one context: its launches stay in order
            for start in range(0, max(batch, 1), max(step, 1)):
                n_items = min(step, batch - start) if batch else 0
                for n, info in infos.items():
                    if not ctx.set_input_shape(n, (max(n_items, 1),) + tuple(info.shape[1:])):
                        raise ValueError(f"{self.name}: TensorRT refused input {n!r} with shape "
                                         f"{[max(n_items, 1)] + list(info.shape[1:])}")
                if not outs:
                    for n in self.output_names:
                        shape = tuple(int(d) for d in ctx.get_tensor_shape(n))
                        if batch > step and (not shape or shape[0] != n_items):
                            raise RuntimeError(f"{self.name}: output {n!r} has shape {list(shape)}, not batch-first; a "
                                               f"batch of {batch} above the profile's {self.max_batch} cannot be split")
                        full = ((batch,) + shape[1:]) if shape and (shape[0] == max(n_items, 1)) else shape
                        nbytes = int(np.prod(full, dtype=np.int64)) * self._dtype[n].itemsize
                        outs[n] = (core.DeviceBuffer(max(nbytes, 1), dev, s), full)
                if not batch:
                    break
                for n, info in infos.items():
                    row = int(np.prod(info.shape[1:], dtype=np.int64)) * self._dtype[n].itemsize
                    ctx.set_tensor_address(n, ptrs[n] + start * row)
                for n in self.output_names:
                    buf, full = outs[n]
                    row = int(np.prod(full[1:], dtype=np.int64)) * self._dtype[n].itemsize if full else 0
                    ctx.set_tensor_address(n, buf.ptr + start * row)
                if not ctx.execute_async_v3(s):
                    raise RuntimeError(f"{self.name}: TensorRT could not run the engine (its log says why)")
            self._last_stream = s
        return outs, s, keep

    def run(self, inputs: Union[np.ndarray, Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """Host arrays in, host arrays out (copied back after the engine's work on the stream)."""
        from .. import kernels

        outs, s, _keep = self._execute(inputs, None)
        result = {}
        for n in self.output_names:
            buf, shape = outs[n]
            host = np.empty(shape, self._dtype[n])
            if host.size:
                kernels.core().copy_to_host(buf.ptr, host, self.device_index, s)
            result[n] = host
        return result

    def run_device(self, inputs: Union[_Input, Dict[str, _Input]], *, stream: Optional[int] = None) -> Dict[str, Any]:
        """Host or device arrays in; :class:`ig3d.device.DeviceArray` outputs, written on ``stream``
        (default: torch's current stream for torch tensors, else the inputs' stream, else 0), which
        :class:`ig3d.FusedHead` and torch / CuPy read without a copy."""
        from ..device import DeviceArray

        outs, s, keep = self._execute(inputs, stream)
        return {n: DeviceArray(buf, 0, shape, self._dtype[n], self.device_index, s, keep=keep)
                for n, (buf, shape) in outs.items()}

    def __repr__(self) -> str:
        return f"TensorRTModel({self.name}, tensorrt/cuda:{self.device_index}, {self.precision})"


class TensorRTRuntime(Runtime):
    """Native TensorRT engines on CUDA (see the module docstring)."""

    name = "tensorrt"
    exact_cpu = False
    install_hint = f"TensorRT and a CUDA GPU: {INSTALL_HINT}"

    def missing(self) -> Optional[str]:
        return tensorrt_problem()

    def version(self) -> Optional[str]:
        try:
            return str(_trt().__version__)
        except ImportError:
            return None

    def devices(self) -> List[str]:
        return ["cuda"] if self.missing() is None else []

    def backends(self) -> List[Dict[str, Any]]:
        why = self.missing()
        return [{"name": "tensorrt", "available": why is None, "version": self.version(), "reason": why,
                 "backend": self.name, "device": "cuda"}]

    def precisions(self, device: str) -> Sequence[str]:
        return ("fp32",)

    def load(self, model: ModelSource, *, device: str = "cuda", threads: Optional[int] = None,
             parallel_runs: int = 1, precision: str = "fp32", name: str = "", spin: bool = False) -> Model:
        if device != "cuda":
            raise ValueError(f"backend='tensorrt' runs on CUDA: device={device!r} is not supported")
        if precision not in TRT_PRECISIONS:
            raise ValueError(f"precision={precision!r}: backend='tensorrt' builds engines in one of {TRT_PRECISIONS}")
        why = self.missing()
        if why is not None:
            raise RuntimeError(f"backend='tensorrt' is not available here: {why}")
        return load_engine(model, precision=precision, name=name)


RUNTIME = TensorRTRuntime()
