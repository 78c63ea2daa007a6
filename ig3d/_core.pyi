"""Type stub of ``ig3d._core``, the pybind11 module built from ``csrc/bindings.cpp``.

The functions validate their inputs in C++ (``ValueError`` names the argument and both shapes) and
release the GIL while they compute. Users reach them through :class:`ig3d.FusedHead`,
:func:`ig3d.fuse_scores` and :mod:`ig3d.kernels`; the shapes below use B = batch, C = classes,
O = the 3D branch's outputs, N = crops, S = crop side.
"""

from typing import List, Optional, Sequence, Tuple

import numpy as np
from numpy.typing import ArrayLike, NDArray

class Head:
    """The fused head: 3D parameter selection and standardisation, the MLP, intermediate or late
    fusion with the 2D network, softmax and valence/arousal, in one call."""

    def __init__(
        self,
        *,
        d_raw: int,
        select: ArrayLike,  # [D] int32 indices into the raw 3D vector
        mean: ArrayLike,  # [D] float32
        inv_std: ArrayLike,  # [D] float32
        weights: List[ArrayLike],  # per layer [out, in] float32
        biases: List[ArrayLike],  # per layer [out] float32
        activations: Sequence[int],
        slopes: Sequence[float],
        skips: Sequence[int],
        concat_at: int,
        concat_2d_first: bool,
        f2d: int,
        num_classes: int,
        va_index: int,
        fusion_mode: int,
        fusion_map: ArrayLike,  # [K] int32
        w2d: ArrayLike,  # [K] float32
        w3d: ArrayLike,  # [K] float32
        bf16: bool,
    ) -> None: ...
    def forward(
        self,
        params3d: ArrayLike,  # [B, d_raw] float
        scores2d: Optional[ArrayLike] = None,  # [B, k2d] float, for late fusion
        features2d: Optional[ArrayLike] = None,  # [B, f2d] float, for intermediate fusion
        device: str = "cpu",  # "cpu" or "cuda"
        threads: int = 0,  # 0: the default thread count
    ) -> Tuple[NDArray[np.float32], NDArray[np.float32], Optional[NDArray[np.float32]], NDArray[np.float32]]:
        """(probs [B, C], logits [B, C], va [B, 2] or None, out3d [B, O])."""
    def forward_device(
        self,
        params3d: int,  # device pointer, [batch, d_raw] float32 C-contiguous (checked by ig3d.device)
        scores2d: int,  # device pointer [batch, k2d], or 0
        features2d: int,  # device pointer [batch, f2d], or 0
        batch: int,
        device: int,  # CUDA device index
        stream: int,  # cudaStream_t as an integer
    ) -> Tuple["DeviceBuffer", Tuple[int, int, int, int]]:
        """One launch on `stream`: (outputs, byte offsets of probs, logits, va (-1: none), out3d in it)."""
    @property
    def d_raw(self) -> int: ...
    @property
    def k2d(self) -> int: ...
    @property
    def f2d(self) -> int: ...
    @property
    def out_dim(self) -> int: ...
    @property
    def num_classes(self) -> int: ...
    @property
    def isa(self) -> str: ...
    @property
    def macs_per_row(self) -> int: ...

def fuse_scores(s2d: ArrayLike, s3d: ArrayLike, mode: int, w2d: float, w3d: float) -> NDArray[np.float32]:
    """Late fusion, element-wise, of two arrays of the same shape."""

def warp_affine(
    image: NDArray[np.uint8],  # [H, W, 3]
    minv: ArrayLike,  # [N, 2, 3] crop pixel -> image pixel
    out_size: int,  # S
    zero_border: bool,
    lut: ArrayLike,  # [256] float32, applied to each uint8 sample
    threads: int = 0,
) -> NDArray[np.float32]:
    """Affine crops [N, S, S, 3] float32 with OpenCV's fixed-point bilinear arithmetic."""

class DeviceBuffer:
    """Device memory from the device's stream-ordered pool, released on `stream` with the object."""

    def __init__(self, nbytes: int, device: int, stream: int) -> None: ...
    @property
    def ptr(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    @property
    def device(self) -> int: ...
    @property
    def stream(self) -> int: ...

def warp_affine_device(
    image: int,  # device pointer, [h, w, 3] uint8, `row_stride` bytes per row
    h: int,
    w: int,
    row_stride: int,
    minv: ArrayLike,  # [N, 2, 3] float64 on the host
    out_size: int,
    zero_border: bool,
    lut: ArrayLike,  # [256] float32 on the host
    device: int,
    stream: int,
) -> DeviceBuffer:
    """warp_affine on the GPU, one launch on `stream`: a DeviceBuffer of [N, S, S, 3] float32."""

def copy_to_host(src: int, out: NDArray, device: int, stream: int) -> None:
    """Copy out.nbytes from device pointer `src` into the C-contiguous `out`, after `stream`'s work."""

def copy_to_device(dst: int, src: NDArray, device: int, stream: int) -> None:
    """Queue a copy of the C-contiguous `src` to device pointer `dst` on `stream`."""

def cuda_pointer_device(ptr: int) -> int:
    """The CUDA device owning `ptr`, -1 for host memory; RuntimeError without CUDA."""

def cuda_require_device(device: int) -> None:
    """RuntimeError naming the reason when CUDA device `device` cannot be used."""

def cuda_stream_wait(device: int, waiter: int, waitee: int) -> None:
    """Work queued on `waiter` from now on runs after the work queued so far on `waitee`."""

def dlpack_parse(
    capsule: object,
) -> Tuple[int, Tuple[int, ...], Optional[Tuple[int, ...]], Tuple[int, int, int], int, int, object]:
    """Consume a "dltensor" capsule: (data pointer, shape, strides in elements or None, (code, bits, lanes),
    device type, device id, owner that calls the producer's deleter when collected)."""

def dlpack_capsule(data: int, shape: Sequence[int], code: int, bits: int, device_type: int, device_id: int,
                   owner: object) -> object:
    """A "dltensor" capsule over C-contiguous memory at `data`, keeping `owner` alive."""

def cpu_isa() -> str: ...
def supported_cpu_isas() -> List[str]: ...
def force_cpu_isa(name: str) -> None: ...
def cuda_compiled() -> bool: ...
def cuda_device_count() -> Tuple[int, str]:
    """(devices, why there are none: "" when there are)."""

def get_num_threads() -> int: ...
def set_num_threads(n: int) -> None: ...
