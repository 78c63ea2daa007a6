"""The presets as pipelines of stages.

``default`` (:mod:`ig3d.pipelines.default`) and the Ig3D presets (:mod:`ig3d.pipelines.ig3d_presets`) are
each the shared face stages (:mod:`ig3d.pipelines.base`: detection, landmarks, blendshapes and head
pose) followed by their own networks (:mod:`ig3d.pipelines.stages`); video tracking
(:mod:`ig3d.pipelines.stream`) calls the same stages of either on the faces it follows. What the
networks compute is said there; how their runs are spread over the cores is
:mod:`ig3d.pipelines.execution`'s part, on :mod:`ig3d.engines`' workers. Settings:
:class:`ig3d.PredictorOptions` (:mod:`ig3d.pipelines.options`).

The names below load on first access, so that ``import ig3d`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__all__ = ["PRESETS", "IG3D_PRESETS", "DefaultPipeline", "Ig3DPipeline", "PredictorOptions", "asset_path"]

_WHERE = {"PRESETS": "default", "DefaultPipeline": "default", "asset_path": "stages", "IG3D_PRESETS": "ig3d_presets",
          "Ig3DPipeline": "ig3d_presets", "PredictorOptions": "options"}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        return getattr(importlib.import_module(f"{__name__}.{_WHERE[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
