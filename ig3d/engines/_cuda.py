"""What the CUDA driver says about this machine, for the runtimes' availability reasons and the
TensorRT engine cache key.

- :func:`cuda_problem`: None when a CUDA device can be used, else why not, as
  ``"no CUDA device: cudaErrorInsufficientDriver: ..."``. ig3d's core answers when it was built with
  CUDA (the same CUDA runtime the fused head uses); a core built without CUDA cannot tell, so the
  driver library (``libcuda``) is asked directly.
- :func:`device_identity`: a device's name and compute capability ("NVIDIA H100 80GB HBM3", "9.0"),
  read from ``libcuda`` through ctypes, so that no pycuda or cuda-python is needed.

Nothing here runs at import time, and nothing raises: every failure becomes a reason.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import functools
import sys
from typing import Optional, Tuple

__all__ = ["cuda_problem", "device_identity", "driver_device_count"]

# CUdevice_attribute values (CUDA driver API, cuda.h)
_CC_MAJOR, _CC_MINOR = 75, 76


@functools.lru_cache(maxsize=None)
def _libcuda():
    """The CUDA driver library, or the reason it cannot be loaded."""
    names = ["nvcuda.dll"] if sys.platform == "win32" else ["libcuda.so.1", "libcuda.so", "libcuda.dylib"]
    found = ctypes.util.find_library("cuda")
    if found:
        names.append(found)
    for name in names:
        try:
            return ctypes.CDLL(name), ""
        except OSError:
            continue
    return None, "the NVIDIA driver library (libcuda) is not installed"


def _error_name(lib, code: int) -> str:
    text = ctypes.c_char_p()
    try:
        if lib.cuGetErrorName(int(code), ctypes.byref(text)) == 0 and text.value:
            return text.value.decode()
    except AttributeError:  # pragma: no cover - a very old driver
        pass
    return f"CUresult {code}"


def _init() -> Tuple[object, str]:
    lib, why = _libcuda()
    if lib is None:
        return None, why
    code = lib.cuInit(0)
    if code != 0:
        return None, _error_name(lib, code)
    return lib, ""


def driver_device_count() -> Tuple[int, str]:
    """(CUDA devices the driver sees, why there are none: "" when there are)."""
    lib, why = _init()
    if lib is None:
        return 0, why
    n = ctypes.c_int(0)
    code = lib.cuDeviceGetCount(ctypes.byref(n))
    if code != 0:
        return 0, _error_name(lib, code)
    return int(n.value), "" if n.value > 0 else "the driver sees no CUDA device"


def cuda_problem() -> Optional[str]:
    """None when CUDA device 0 can be used here, else ``"no CUDA device: <why>"``."""
    from .. import kernels

    try:
        core = kernels.core()
        compiled = bool(core.cuda_compiled())
    except ImportError:  # pragma: no cover - a broken install; the driver still answers
        compiled = False
    if compiled:
        n, why = core.cuda_device_count()
    else:
        n, why = driver_device_count()
    return None if n > 0 else f"no CUDA device: {why or 'none was found'}"


def device_identity(device: int = 0) -> Tuple[str, str]:
    """(name, compute capability "major.minor") of CUDA device ``device``; ``RuntimeError`` with
    the driver's reason when it cannot be read."""
    lib, why = _init()
    if lib is None:
        raise RuntimeError(f"cannot read CUDA device {device}: {why}")
    dev = ctypes.c_int(0)
    code = lib.cuDeviceGet(ctypes.byref(dev), int(device))
    if code != 0:
        raise RuntimeError(f"cannot read CUDA device {device}: {_error_name(lib, code)}")
    name = ctypes.create_string_buffer(256)
    major, minor = ctypes.c_int(0), ctypes.c_int(0)
    for call in (lambda: lib.cuDeviceGetName(name, 256, dev),
                 lambda: lib.cuDeviceGetAttribute(ctypes.byref(major), _CC_MAJOR, dev),
                 lambda: lib.cuDeviceGetAttribute(ctypes.byref(minor), _CC_MINOR, dev)):
        code = call()
        if code != 0:
            raise RuntimeError(f"cannot read CUDA device {device}: {_error_name(lib, code)}")
    return name.value.decode(errors="replace"), f"{major.value}.{minor.value}"
