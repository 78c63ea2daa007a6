"""Torch re-implementations of the upstream networks ig3d converts (weights load from upstream checkpoints)."""

from .._optional import require

require("torch", "torch", "ig3d.models (the torch networks)")
