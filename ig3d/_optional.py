"""Optional dependencies: one place that imports them and says which extra brings each.

ig3d's core needs numpy, ONNX Runtime and Pillow only. Features beyond reading faces need more:
``ig3d convert`` needs torch and onnx (the ``convert`` extra), the TFLite and Keras converters
flatbuffers and h5py (``convert`` too), training torch (``train``), video input PyAV (``video``).
:func:`require` imports such a module on first use and, when it is missing, raises one
:class:`MissingOptionalDependency` that names the feature, the package and the command that installs
it, instead of a bare ``No module named ...`` from deep inside the feature.
"""

from __future__ import annotations

import importlib
from types import ModuleType
from typing import Dict, Optional

__all__ = ["MissingOptionalDependency", "require", "PACKAGES"]

#: import name -> the name pip knows the package by, where they differ
PACKAGES: Dict[str, str] = {"PIL": "pillow", "av": "av", "cv2": "opencv-python"}


class MissingOptionalDependency(ImportError):
    """A feature was used whose optional package is not installed (an ``ImportError``)."""


def require(module: str, extra: Optional[str], feature: str) -> ModuleType:
    """Import ``module`` (e.g. "onnx" or "torch") for ``feature`` (e.g. "ig3d convert").

    ``extra``: the ig3d extra that installs it ("convert", "torch", "train", "video"), or None for a
    package that is a plain dependency of ig3d (only a broken install lacks it). Raises
    :class:`MissingOptionalDependency`: "<feature> needs the optional package <P>: pip install
    'ig3d[<extra>]'".
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        top = module.split(".")[0]
        package = PACKAGES.get(top, top)
        missing = isinstance(e, ModuleNotFoundError) and (e.name or "").split(".")[0] == top
        if not missing:  # installed, but broken (a failed native library, a missing dependency of its own)
            raise MissingOptionalDependency(f"{feature} needs {package}, which is installed but failed to import "
                                            f"({type(e).__name__}: {e})") from e
        if extra is None:
            how = f"pip install {package} (a dependency of ig3d: reinstalling ig3d brings it)"
            raise MissingOptionalDependency(f"{feature} needs the package {package}: {how}") from e
        raise MissingOptionalDependency(
            f"{feature} needs the optional package {package}: pip install 'ig3d[{extra}]'") from e
