"""ig3d: facial-expression inference that fuses 3D face representations with 2D expression networks.

    import ig3d
    faces = ig3d.Predictor().predict("photo.jpg")   # list of FaceResult, largest face first

Importing ig3d needs numpy only: ONNX Runtime, Pillow, TensorRT and torch load on first use. The
sub-modules load on first attribute access too, so ``import ig3d`` is enough for every documented
name (``ig3d.hub.fetch(...)``, ``ig3d.convert.convert(...)``, ``ig3d.io.load_image(...)``).
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any, List

from . import kernels, metrics
from ._version import __version__
from .engines import available_backends
from .fusion import FusedHead, FusedOutput, Layer, fold_batchnorm, fuse_scores
from .pipelines.options import PredictorOptions
from .predictor import Predictor
from .results import FaceResult

if TYPE_CHECKING:  # pragma: no cover - for type checkers; at run time they load on first use
    from . import convert, engines, faces, fusion, hub, ig3d_presets, io, labels, models  # noqa: F401
    from . import overlay, pipelines, predictor, presets, prior, results  # noqa: F401


def _submodules() -> List[str]:
    """The public sub-modules and sub-packages of ig3d (names not starting with "_")."""
    import pkgutil

    return sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))


def __getattr__(name: str) -> Any:
    """``ig3d.<sub-module>`` imports it on first access (PEP 562), so ``import ig3d`` stays light
    and their own dependencies (urllib for hub, torch for models) load only when used."""
    if not name.startswith("_") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> List[str]:
    return sorted(set(globals()) | set(_submodules()))


__all__ = [
    "Predictor",
    "PredictorOptions",
    "FaceResult",
    "FusedHead",
    "FusedOutput",
    "Layer",
    "available_backends",
    "fold_batchnorm",
    "fuse_scores",
    "kernels",
    "metrics",
    "__version__",
]
