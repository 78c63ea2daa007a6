"""Torch re-implementations of the upstream networks ig3d converts (weights load from upstream checkpoints)."""
