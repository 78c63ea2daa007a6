"""Turning any accepted image input into an RGB uint8 array, with clear errors.

Accepted: a path (``str`` / ``os.PathLike``), encoded bytes (JPEG, PNG, ...), a PIL image, or a
numpy array: ``[H, W, 3]`` uint8 RGB (``color="bgr"`` for OpenCV frames), ``[H, W]`` gray,
``[H, W, 4]`` RGBA (alpha dropped), ``[H, W, 1]``, or floating point in [0, 1].
"""

from __future__ import annotations

import io as _io
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["load_image", "describe"]


def describe(obj: Any) -> str:
    """A short name for an input, for error messages."""
    if isinstance(obj, (str, os.PathLike)):
        return f"'{os.fspath(obj)}'"
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return f"<{len(obj)} bytes>"
    if isinstance(obj, np.ndarray):
        return f"<array {obj.dtype} {list(obj.shape)}>"
    return f"<{type(obj).__name__}>"


def _decode(data: bytes, name: str) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    if len(data) == 0:
        raise ValueError(f"{name}: empty file (0 bytes)")
    try:
        with Image.open(_io.BytesIO(data)) as im:
            im.load()  # decode now: a truncated JPEG fails here, not later
            return _from_pil(im, name)
    except UnidentifiedImageError as e:  # its text names PIL's internal BytesIO object: not for users
        raise ValueError(f"{name}: not a readable image (not a format Pillow can decode)") from e
    except (OSError, SyntaxError) as e:  # truncated or corrupt data
        raise ValueError(f"{name}: corrupt or truncated image ({_without_reprs(e)})") from e


def _without_reprs(e: BaseException) -> str:
    """An exception's text without object reprs such as ``<_io.BytesIO object at 0x7f...>``."""
    return re.sub(r"\s*<[^<>]* at 0x[0-9a-fA-F]+>", "", str(e)).strip() or type(e).__name__


def _from_pil(im, name: str) -> np.ndarray:
    if im.width == 0 or im.height == 0:
        raise ValueError(f"{name}: empty image (size {im.width}x{im.height})")
    if im.mode != "RGB":
        im = im.convert("RGB")  # gray, palette, RGBA (alpha dropped), CMYK, 16-bit
    return np.asarray(im, dtype=np.uint8)


def _from_array(a: np.ndarray, name: str, color: str) -> np.ndarray:
    if a.size == 0:
        raise ValueError(f"{name}: empty image (shape {list(a.shape)})")
    if a.ndim == 3 and a.shape[2] == 1:
        a = a[:, :, 0]
    if a.ndim == 2:
        channels = 1
    elif a.ndim == 3 and a.shape[2] in (3, 4):
        channels = a.shape[2]
    else:
        raise ValueError(f"{name}: expected an image of shape [H, W], [H, W, 3] or [H, W, 4], got {list(a.shape)}")
    if a.dtype == np.uint8:
        out = a
    elif a.dtype.kind == "f":
        if not np.all(np.isfinite(a)):
            raise ValueError(f"{name}: float image contains NaN or inf")
        lo, hi = float(a.min()), float(a.max())
        if lo < -1e-3 or hi > 1 + 1e-3:
            raise ValueError(f"{name}: float images must hold values in [0, 1], got [{lo:.3g}, {hi:.3g}]")
        out = np.clip(np.rint(a * 255.0), 0, 255).astype(np.uint8)
    elif a.dtype == np.bool_ or a.dtype.kind not in "iu":
        raise ValueError(f"{name}: unsupported dtype {a.dtype} (use uint8, or float in [0, 1])")
    else:
        raise ValueError(f"{name}: unsupported dtype {a.dtype}: convert to uint8 (0..255) first")
    if channels == 1:
        out = np.repeat(out[:, :, None], 3, axis=2)
    elif channels == 4:
        out = out[:, :, :3]
    if color == "bgr":
        out = out[:, :, ::-1]
    return np.ascontiguousarray(out)


def load_image(image: Any, *, color: str = "rgb") -> np.ndarray:
    """Return ``image`` as a C-contiguous ``[H, W, 3]`` uint8 RGB array.

    ``color`` says how to read 3/4-channel numpy arrays: "rgb" (default) or "bgr" (OpenCV).
    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` (naming the input) for
    unreadable, corrupt, truncated or empty images and unsupported dtypes or shapes.
    """
    if color not in ("rgb", "bgr"):
        raise ValueError(f"color: expected 'rgb' or 'bgr', got {color!r}")
    name = describe(image)
    if isinstance(image, (str, os.PathLike)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {name}")
        return _decode(path.read_bytes(), name)
    if isinstance(image, (bytes, bytearray, memoryview)):
        return _decode(bytes(image), name)
    if isinstance(image, np.ndarray):
        return _from_array(image, name, color)
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - pillow is a dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        return _from_pil(image, name)
    raise ValueError(f"unsupported image input {name}: pass a path, bytes, a PIL image or a numpy array")
