"""ig3d: facial-expression inference that fuses 3D face representations with 2D expression networks.

Importing ig3d needs numpy only: ONNX Runtime, TensorRT and torch load on first use.
"""

from . import kernels, metrics
from .fusion import FusedHead, FusedOutput, Layer, fold_batchnorm, fuse_scores

__version__ = "0.1.0"

__all__ = [
    "FusedHead",
    "FusedOutput",
    "Layer",
    "fold_batchnorm",
    "fuse_scores",
    "kernels",
    "metrics",
    "__version__",
]
