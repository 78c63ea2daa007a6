"""Video tracking's names where earlier releases had them: :mod:`ig3d.pipelines.stream`."""

from __future__ import annotations

from .pipelines.stream import DETECT_EVERY, MAX_FACES, FrameResult, Stream, Tracker, draw_frame

__all__ = ["FrameResult", "Tracker", "Stream", "draw_frame", "MAX_FACES", "DETECT_EVERY"]
