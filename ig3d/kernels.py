"""The compiled core (``ig3d._core``) and facts about it.

``info()`` says which CPU instruction set the fused head uses, whether CUDA was compiled in and how
many CUDA devices are visible. Nothing here touches a GPU at import time.
"""

from __future__ import annotations

from typing import Any, Dict

__all__ = ["core", "info", "has_cuda", "get_num_threads", "set_num_threads"]

_core_module = None


def core():
    """The ``ig3d._core`` extension module (imported on first use)."""
    global _core_module
    if _core_module is None:
        try:
            from . import _core as mod
        except ImportError as e:  # pragma: no cover - only on a broken install
            raise ImportError(
                "ig3d's compiled core (ig3d._core) is missing or failed to load: reinstall with "
                f"'pip install ig3d' (or 'pip install .' in a checkout). Cause: {e}") from e
        _core_module = mod
    return _core_module


def info() -> Dict[str, Any]:
    """Build and run-time facts: ``cpu_isa`` (SIMD level in use), ``cpu_isas_supported``,
    ``cuda_compiled``, ``cuda_devices`` (0 without a GPU or driver, never an exception),
    ``cuda_status`` (why there are none), ``num_threads``."""
    c = core()
    n, why = c.cuda_device_count()
    return {
        "cpu_isa": c.cpu_isa(),
        "cpu_isas_supported": list(c.supported_cpu_isas()),
        "cuda_compiled": bool(c.cuda_compiled()),
        "cuda_devices": int(n),
        "cuda_status": why or "ok",
        "num_threads": int(c.get_num_threads()),
    }


def has_cuda() -> bool:
    """True when the CUDA launcher is compiled in and at least one device is visible."""
    c = core()
    return bool(c.cuda_compiled()) and c.cuda_device_count()[0] > 0


def get_num_threads() -> int:
    """CPU threads the fused head uses by default (OpenMP's default unless set)."""
    return int(core().get_num_threads())


def set_num_threads(n: int) -> None:
    """Set the default number of CPU threads for the fused head (0 or less: back to the default)."""
    core().set_num_threads(int(n))
