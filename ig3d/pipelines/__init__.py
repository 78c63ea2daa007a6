"""The presets as pipelines of stages.

``default`` (:mod:`ig3d.pipelines.default`) and the Ig3D presets (:mod:`ig3d.pipelines.ig3d`) are
each a short list of the stages they run; video tracking (:mod:`ig3d.pipelines.stream`) calls the
same stages on the faces it follows. What the networks compute is said here; how their runs are
spread over the cores is :mod:`ig3d.engines`' part (``Workers``, ``PerCoreModel``).
"""

from __future__ import annotations

from .default import PRESETS, DefaultPipeline, asset_path
from .ig3d import IG3D_PRESETS, Ig3DPipeline

__all__ = ["PRESETS", "IG3D_PRESETS", "DefaultPipeline", "Ig3DPipeline", "asset_path"]
