"""ig3d: facial-expression inference that fuses 3D face representations with 2D expression networks.

    import ig3d
    faces = ig3d.Predictor().predict("photo.jpg")   # list of FaceResult, largest face first

Importing ig3d needs numpy only: ONNX Runtime, Pillow, TensorRT and torch load on first use.
"""

from . import kernels, metrics
from .engines import available_backends
from .fusion import FusedHead, FusedOutput, Layer, fold_batchnorm, fuse_scores
from .predictor import Predictor
from .results import FaceResult

__version__ = "0.1.0"

__all__ = [
    "Predictor",
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
