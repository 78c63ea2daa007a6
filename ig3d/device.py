"""Device arrays: what ig3d reads from other frameworks' GPU arrays, and what it hands back.

The fused head and the crop kernel take arrays that already live on a CUDA device (torch CUDA
tensors, CuPy arrays, ONNX Runtime OrtValues, TensorRT output buffers) without a trip through host
memory. Two protocols describe such arrays, and ig3d reads both:

- ``__cuda_array_interface__`` (Numba's CUDA Array Interface, v2/v3): a dict with ``shape``,
  ``typestr`` (``"<f4"``), ``data`` = (pointer, read-only flag), ``strides`` (None: C-contiguous),
  ``version`` and, from v3, ``stream`` (the producer's stream, which ig3d's stream waits for).
- DLPack: objects with ``__dlpack__(stream=...)`` / ``__dlpack_device__()`` (the consumer names its
  stream and the producer orders its own work before it), or a raw ``"dltensor"`` capsule, which is
  consumed (renamed ``"used_dltensor"``; the producer's deleter runs when ig3d lets go of it).

:func:`inspect` turns any of them (and numpy arrays) into an :class:`ArrayInfo`; the checks that
name the argument (dtype, shape, device, contiguity) are in :func:`check_matrix` and the callers.

What ig3d returns on a device is a :class:`DeviceArray`: device memory from the device's
stream-ordered pool (the pool keeps its memory, so steady-state calls never reach ``cudaMalloc``),
valid for as long as the object lives, exposing both protocols, so ``torch.as_tensor(a,
device="cuda")``, ``torch.from_dlpack(a)`` and ``cupy.asarray(a)`` read it without a copy, and
``a.numpy()`` copies it to the host. Its memory is released, in order, on the stream it was made
on: consumers on another stream must keep the object alive until their work on it is done (the
same rule as torch's ``Tensor.record_stream``).

Streams are ``cudaStream_t`` handles as integers, as in both protocols: 0 is the default stream,
1 ``cudaStreamLegacy``, 2 ``cudaStreamPerThread``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence, Tuple

import numpy as np

from . import kernels

__all__ = [
    "ArrayInfo",
    "DeviceArray",
    "inspect",
    "is_device_array",
    "check_matrix",
    "common_device",
    "resolve_stream",
    "wait_for_producers",
    "warp_crops_device",
]

KDL_CPU, KDL_CUDA = 1, 2
# DLPack (type code, bits) -> array-interface typestr
_DL_TYPESTR = {(0, 8): "|i1", (0, 16): "<i2", (0, 32): "<i4", (0, 64): "<i8", (1, 8): "|u1", (1, 16): "<u2",
               (1, 32): "<u4", (1, 64): "<u8", (2, 16): "<f2", (2, 32): "<f4", (2, 64): "<f8", (4, 16): "<bf16",
               (6, 8): "|b1"}
_ITEMSIZE = {"|i1": 1, "<i2": 2, "<i4": 4, "<i8": 8, "|u1": 1, "<u2": 2, "<u4": 4, "<u8": 8, "<f2": 2, "<f4": 4,
             "<f8": 8, "<bf16": 2, "|b1": 1}
_DTYPE_NAME = {"<f4": "float32", "<f8": "float64", "<f2": "float16", "<bf16": "bfloat16", "|u1": "uint8",
               "|i1": "int8", "<i4": "int32", "<i8": "int64", "|b1": "bool"}


def _dtype_name(typestr: str) -> str:
    return _DTYPE_NAME.get(typestr, typestr)


@dataclass
class ArrayInfo:
    """One input array as ig3d sees it.

    name: the argument's name (used in every error); ptr: address of element 0; shape; strides in
    bytes (None: C-contiguous); typestr: ``"<f4"`` style; on_device: True for CUDA memory;
    device_id: the CUDA device (None until asked for, for ``__cuda_array_interface__`` arrays);
    stream: the producer's stream from ``__cuda_array_interface__`` v3 (None: nothing to wait for);
    owner: what keeps the memory alive (the object, or a consumed DLPack capsule's owner).
    """

    name: str
    ptr: int
    shape: Tuple[int, ...]
    strides: Optional[Tuple[int, ...]]
    typestr: str
    on_device: bool
    device_id: Optional[int]
    stream: Optional[int]
    owner: Any

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1

    def is_c_contiguous(self) -> bool:
        if self.strides is None or self.size == 0:
            return True
        want = _ITEMSIZE.get(self.typestr, 0)
        for dim, st in zip(reversed(self.shape), reversed(self.strides)):
            if dim != 1 and st != want:
                return False
            want *= dim
        return True


def _is_capsule(obj: Any) -> bool:
    return type(obj).__name__ == "PyCapsule"


def is_device_array(obj: Any) -> bool:
    """True for objects that say they live on a CUDA device (array interface, or DLPack device
    type CUDA). Raw DLPack capsules count as candidates (their device is read when consumed)."""
    if obj is None or isinstance(obj, np.ndarray):
        return False
    if hasattr(obj, "__cuda_array_interface__") or _is_capsule(obj):
        return True
    if hasattr(obj, "__dlpack_device__"):
        try:
            return int(obj.__dlpack_device__()[0]) == KDL_CUDA
        except Exception:  # noqa: BLE001 - a producer that cannot say is not ours to judge here
            return False
    return False


def _from_cai(obj: Any, name: str) -> ArrayInfo:
    try:
        cai = obj.__cuda_array_interface__
    except Exception as e:  # noqa: BLE001 - e.g. a torch tensor that needs grad
        raise ValueError(f"{name}: reading its __cuda_array_interface__ failed: {e}") from e
    if not isinstance(cai, dict):
        raise ValueError(f"{name}: __cuda_array_interface__ must be a dict, got {type(cai).__name__}")
    for key in ("shape", "typestr", "data", "version"):
        if key not in cai:
            raise ValueError(f"{name}: __cuda_array_interface__ has no {key!r} entry")
    if cai.get("mask") is not None:
        raise ValueError(f"{name}: masked arrays (__cuda_array_interface__ 'mask') are not supported")
    try:
        shape = tuple(int(d) for d in cai["shape"])
        ptr, _readonly = cai["data"]
        ptr = int(ptr)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name}: __cuda_array_interface__ 'shape' must be ints and 'data' (pointer, "
                         f"read-only flag), got shape={cai['shape']!r} data={cai['data']!r}") from e
    strides = cai.get("strides")
    strides = None if strides is None else tuple(int(s) for s in strides)
    if strides is not None and len(strides) != len(shape):
        raise ValueError(f"{name}: __cuda_array_interface__ has {len(shape)} dims but {len(strides)} strides")
    stream = cai.get("stream") if int(cai["version"]) >= 3 else None
    if stream is not None:
        stream = int(stream)
        if stream == 0:
            raise ValueError(f"{name}: __cuda_array_interface__ 'stream' 0 is not allowed (1 is the legacy "
                             "default stream, 2 the per-thread one)")
    info = ArrayInfo(name, ptr, shape, strides, str(cai["typestr"]), True, None, stream, obj)
    if ptr == 0 and info.size:
        raise ValueError(f"{name}: __cuda_array_interface__ 'data' is a null pointer")
    return info


def _from_capsule(capsule: Any, name: str, owner: Any = None) -> ArrayInfo:
    try:
        ptr, shape, strides, (code, bits, lanes), dev_type, dev_id, keep = kernels.core().dlpack_parse(capsule)
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from e
    typestr = _DL_TYPESTR.get((code, bits))
    if lanes != 1 or typestr is None:
        raise ValueError(f"{name}: unsupported DLPack dtype (code {code}, {bits} bits, {lanes} lanes)")
    if dev_type not in (KDL_CPU, KDL_CUDA):
        raise ValueError(f"{name}: DLPack device type {dev_type} is not supported (1: CPU, 2: CUDA)")
    item = bits // 8
    strides = None if strides is None else tuple(int(s) * item for s in strides)
    return ArrayInfo(name, int(ptr), tuple(shape), strides, typestr, dev_type == KDL_CUDA,
                     int(dev_id) if dev_type == KDL_CUDA else None, None, (keep, owner))


def _dlpack_stream(stream: int) -> int:
    """A consumer stream for ``__dlpack__``: the default stream (0) is spelled 1 there."""
    return 1 if stream == 0 else stream


def inspect(obj: Any, name: str, *, stream: int = 0) -> ArrayInfo:
    """Read ``obj`` (numpy array, ``__cuda_array_interface__`` object, ``__dlpack__`` object or
    DLPack capsule) into an :class:`ArrayInfo`. ``stream`` is the stream ig3d will read it on: a
    DLPack producer orders its pending work before it."""
    if isinstance(obj, np.ndarray):
        return ArrayInfo(name, int(obj.ctypes.data), tuple(obj.shape), tuple(obj.strides), obj.dtype.str,
                         False, None, None, obj)
    if hasattr(obj, "__cuda_array_interface__"):
        return _from_cai(obj, name)
    if _is_capsule(obj):
        return _from_capsule(obj, name)
    if hasattr(obj, "__dlpack__"):
        dev_type = KDL_CUDA
        if hasattr(obj, "__dlpack_device__"):
            dev_type = int(obj.__dlpack_device__()[0])
        try:
            cap = obj.__dlpack__(stream=_dlpack_stream(stream)) if dev_type == KDL_CUDA else obj.__dlpack__()
        except Exception as e:  # noqa: BLE001 - the producer's own reason
            raise ValueError(f"{name}: its __dlpack__() failed: {e}") from e
        return _from_capsule(cap, name, obj)
    raise ValueError(f"{name}: expected a numpy array, an object with __cuda_array_interface__ or __dlpack__, "
                     f"or a DLPack capsule, got {type(obj).__name__}")


def check_matrix(info: ArrayInfo, cols: int, rows: Optional[int] = None) -> int:
    """Check a float32 C-contiguous [rows, cols] array; returns its row count."""
    if info.typestr != "<f4":
        raise ValueError(f"{info.name}: expected float32, got {_dtype_name(info.typestr)}")
    if len(info.shape) != 2 or info.shape[1] != cols or (rows is not None and info.shape[0] != rows):
        raise ValueError(f"{info.name}: expected shape [{'B' if rows is None else rows}, {cols}], "
                         f"got {list(info.shape)}")
    if not info.is_c_contiguous():
        raise ValueError(f"{info.name}: must be C-contiguous, got strides {list(info.strides or ())} (bytes) for "
                         f"shape {list(info.shape)}")
    return int(info.shape[0])


def common_device(infos: Sequence[ArrayInfo]) -> int:
    """The one CUDA device of ``infos`` (all must be on it); raises naming the odd one out. Host
    arrays among device ones are refused; devices the DLPack producers named are compared before
    CUDA is asked anything, so a machine without a GPU still gets these errors."""
    first = infos[0]
    for a in infos[1:]:
        if a.on_device != first.on_device:
            dev, host = (a, first) if a.on_device else (first, a)
            raise ValueError(f"{host.name}: on the host while {dev.name} is on a CUDA device; pass every input "
                             "on the same device")
    known = [a for a in infos if a.device_id is not None]
    for a in known[1:]:
        if a.device_id != known[0].device_id:
            raise ValueError(f"{a.name}: on CUDA device {a.device_id} while {known[0].name} is on CUDA device "
                             f"{known[0].device_id}; pass every input on the same device")
    core = kernels.core()
    core.cuda_require_device(known[0].device_id if known else 0)  # RuntimeError with the reason
    for a in infos:
        if a.device_id is None:
            dev = int(core.cuda_pointer_device(a.ptr)) if a.size else (known[0].device_id if known else 0)
            if dev < 0:
                raise ValueError(f"{a.name}: its __cuda_array_interface__ pointer {a.ptr:#x} is not CUDA device memory")
            a.device_id = dev
    for a in infos[1:]:
        if a.device_id != first.device_id:
            raise ValueError(f"{a.name}: on CUDA device {a.device_id} while {first.name} is on CUDA device "
                             f"{first.device_id}; pass every input on the same device")
    return int(first.device_id)


def _torch_stream(objs: Sequence[Any]) -> Optional[int]:
    """The current torch stream of the first torch CUDA tensor among ``objs`` (torch only when the
    caller already imported it)."""
    torch = sys.modules.get("torch")
    if torch is None:
        return None
    for o in objs:
        if isinstance(o, torch.Tensor) and o.is_cuda:
            return int(torch.cuda.current_stream(o.device).cuda_stream)
    return None


def resolve_stream(objs: Sequence[Any], stream: Optional[int]) -> int:
    """The stream to run on: ``stream`` when given; else torch's current stream for torch tensors;
    else the first ``__cuda_array_interface__`` v3 ``stream``; else the default stream (0)."""
    if stream is not None:
        if isinstance(stream, bool) or not isinstance(stream, (int, np.integer)) or stream < 0:
            handle = getattr(stream, "cuda_stream", None)  # a torch.cuda.Stream
            if handle is None:
                handle = getattr(stream, "ptr", None)  # a cupy.cuda.Stream
            if handle is None:
                raise ValueError(f"stream: expected a cudaStream_t handle as an int (or an object with .cuda_stream "
                                 f"or .ptr), got {stream!r}")
            return int(handle)
        return int(stream)
    s = _torch_stream(objs)
    if s is not None:
        return s
    for o in objs:
        cai = getattr(o, "__cuda_array_interface__", None) if o is not None and not _is_capsule(o) else None
        if isinstance(cai, dict) and int(cai.get("version", 0)) >= 3 and cai.get("stream") is not None:
            return int(cai["stream"])
    return 0


def _same_stream(a: int, b: int) -> bool:
    return a == b or {a, b} == {0, 1}


def wait_for_producers(infos: Sequence[ArrayInfo], device: int, stream: int) -> None:
    """Make ``stream`` wait for the streams ``__cuda_array_interface__`` v3 producers named."""
    core = kernels.core()
    for a in infos:
        if a.stream is not None and not _same_stream(a.stream, stream):
            core.cuda_stream_wait(device, stream, a.stream)


class DeviceArray:
    """A C-contiguous array in device memory that ig3d made (see the module docstring).

    ``shape``, ``dtype`` (numpy), ``device`` (CUDA index), ``stream`` (where it was written),
    ``ptr``. ``numpy()`` (or ``np.asarray(a)``) copies to the host after the work on ``stream``.
    """

    __slots__ = ("_buffer", "_offset", "shape", "dtype", "device", "stream", "_keep")

    def __init__(self, buffer: Any, offset: int, shape: Sequence[int], dtype: Any, device: int, stream: int,
                 keep: Any = None) -> None:
        self._buffer = buffer  # a core DeviceBuffer (or any object with .ptr) that owns the memory
        self._offset = int(offset)
        self.shape = tuple(int(d) for d in shape)
        self.dtype = np.dtype(dtype)
        self.device = int(device)
        self.stream = int(stream)
        self._keep = keep  # inputs the kernel read: alive at least as long as this result

    @property
    def ptr(self) -> int:
        return int(self._buffer.ptr) + self._offset

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def nbytes(self) -> int:
        return self.size * self.dtype.itemsize

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"DeviceArray(shape={list(self.shape)}, dtype={self.dtype}, device=cuda:{self.device})"

    @property
    def __cuda_array_interface__(self) -> dict:
        return {"shape": self.shape, "typestr": self.dtype.str, "data": (self.ptr, False), "strides": None,
                "version": 3, "stream": _dlpack_stream(self.stream)}

    def __dlpack_device__(self) -> Tuple[int, int]:
        return (KDL_CUDA, self.device)

    def __dlpack__(self, *, stream: Optional[int] = None, max_version: Any = None, dl_device: Any = None,
                   copy: Optional[bool] = None) -> Any:
        """A DLPack capsule over this memory (no copy). The consumer's ``stream`` (None: the
        legacy default stream; -1: no ordering) is made to wait for the stream that wrote it."""
        if copy:
            raise BufferError("DeviceArray.__dlpack__: copy=True is not supported; use .numpy() for a host copy")
        if dl_device is not None and tuple(dl_device) != (KDL_CUDA, self.device):
            raise BufferError(f"DeviceArray.__dlpack__: lives on (2, {self.device}), cannot export to {dl_device}")
        consumer = 1 if stream is None else int(stream)
        if consumer != -1 and not _same_stream(consumer, self.stream):
            kernels.core().cuda_stream_wait(self.device, consumer, self.stream)
        code = {"f": 2, "u": 1, "i": 0}[self.dtype.kind]
        return kernels.core().dlpack_capsule(self.ptr, list(self.shape), code, self.dtype.itemsize * 8, KDL_CUDA,
                                             self.device, self)

    def numpy(self) -> np.ndarray:
        """A host copy (waits for the work queued on ``stream``)."""
        out = np.empty(self.shape, self.dtype)
        if out.size:
            kernels.core().copy_to_host(self.ptr, out, self.device, self.stream)
        return out

    def __array__(self, dtype: Any = None, copy: Optional[bool] = None) -> np.ndarray:
        a = self.numpy()
        return a if dtype is None else a.astype(dtype, copy=False)


def warp_crops_device(image: Any, M: Any, out_size: int = 256, *, border: str = "replicate",
                      stream: Optional[int] = None, value_range: Tuple[float, float] = (0.0, 1.0)) -> DeviceArray:
    """:func:`ig3d.faces.landmarks.warp_crops` on the GPU: the same crops, byte for byte.

    image: an ``[H, W, 3]`` uint8 RGB device array (torch CUDA tensor, CuPy array, anything with
    ``__cuda_array_interface__`` or DLPack; rows may be padded, pixels must be packed). M: the
    ``[N, 2, 3]`` (or ``[2, 3]``) image -> crop affines, on the host (a device array is copied to the
    host first: 48 bytes a crop, and a wait for its stream). Returns a :class:`DeviceArray`
    ``[N, S, S, 3]`` float32 in ``value_range``, written on ``stream`` (default: see
    :func:`resolve_stream`) by one kernel launch.
    """
    from .faces import landmarks

    if border not in ("replicate", "zero"):
        raise ValueError(f"border: expected 'replicate' or 'zero', got {border!r}")
    s = resolve_stream([image], stream)
    info = inspect(image, "image", stream=s)
    if not info.on_device:
        raise ValueError("image: expected a CUDA device array (use ig3d.faces.landmarks.warp_crops for host images)")
    if info.typestr != "|u1" or len(info.shape) != 3 or info.shape[2] != 3:
        raise ValueError(f"image: expected an [H, W, 3] uint8 array, got {_dtype_name(info.typestr)} "
                         f"{list(info.shape)}")
    h, w = int(info.shape[0]), int(info.shape[1])
    row_stride = 3 * w
    if info.strides is not None and info.size:
        if info.strides[2] != 1 or info.strides[1] != 3 or info.strides[0] < 3 * w:
            raise ValueError(f"image: pixels must be packed (strides [row, 3, 1] bytes with row >= 3 * width), got "
                             f"strides {list(info.strides)}")
        row_stride = int(info.strides[0])
    if is_device_array(M):
        M = _host_copy(inspect(M, "M", stream=s), s)
    M = np.asarray(M, np.float64)
    if M.ndim == 2:
        M = M[None]
    if M.ndim != 3 or M.shape[1:] != (2, 3) or not np.isfinite(M).all():
        raise ValueError(f"M: expected finite [N, 2, 3] affines, got shape {list(M.shape)}")
    dev = common_device([info])
    wait_for_producers([info], dev, s)
    minv = landmarks._invert_affine(M) if len(M) else M
    lut = landmarks._unit_lut(tuple(value_range))
    n, size = len(M), int(out_size)
    buf = kernels.core().warp_affine_device(info.ptr, h, w, row_stride, minv, size, border == "zero", lut, dev, s)
    return DeviceArray(buf, 0, (n, size, size, 3), np.float32, dev, s, keep=info.owner)


def _host_copy(info: ArrayInfo, stream: int) -> np.ndarray:
    """A host copy of a small C-contiguous device array (waits for ``stream``)."""
    if not info.on_device:
        raise ValueError(f"{info.name}: expected a device array")
    if not info.is_c_contiguous():
        raise ValueError(f"{info.name}: must be C-contiguous")
    dev = common_device([info])
    wait_for_producers([info], dev, stream)
    if info.typestr == "<bf16":
        raise ValueError(f"{info.name}: bfloat16 is not supported here")
    out = np.empty(info.shape, np.dtype(info.typestr))
    if out.size:
        kernels.core().copy_to_host(info.ptr, out, dev, stream)
    return out
