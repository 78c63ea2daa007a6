"""The default preset's names where earlier releases had them: :mod:`ig3d.pipelines.default`."""

from __future__ import annotations

from .pipelines.default import (BF16_GATED, MIN_FACE_SIZE, PRESETS, DefaultPipeline, _inside_larger,  # noqa: F401
                                asset_path)

__all__ = ["PRESETS", "DefaultPipeline", "asset_path", "BF16_GATED", "MIN_FACE_SIZE"]
