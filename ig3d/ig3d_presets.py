"""The Ig3D presets' names where earlier releases had them: :mod:`ig3d.pipelines.ig3d_presets`."""

from __future__ import annotations

from .pipelines.ig3d_presets import BF16_GATED, IG3D_PRESETS, Ig3DPipeline  # noqa: F401

__all__ = ["IG3D_PRESETS", "Ig3DPipeline", "BF16_GATED"]
