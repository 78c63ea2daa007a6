"""ig3d.io.load_image: every accepted input form, and clear errors for bad ones."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from ig3d.io import load_image


@pytest.fixture
def rgb():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)


def png_bytes(a):
    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


def test_array_forms(rgb):
    assert load_image(rgb) is rgb or np.array_equal(load_image(rgb), rgb)
    np.testing.assert_array_equal(load_image(rgb[:, :, ::-1].copy(), color="bgr"), rgb)
    rgba = np.concatenate([rgb, np.full((20, 30, 1), 7, np.uint8)], axis=2)
    np.testing.assert_array_equal(load_image(rgba), rgb)
    g = rgb[:, :, 0]
    np.testing.assert_array_equal(load_image(g), np.repeat(g[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(g[:, :, None]), np.repeat(g[:, :, None], 3, 2))
    np.testing.assert_array_equal(load_image(rgb.astype(np.float32) / 255), rgb)
    np.testing.assert_array_equal(load_image(rgb.astype(np.float64) / 255), rgb)


def test_path_bytes_and_pil(rgb, tmp_path):
    p = tmp_path / "x.png"
    p.write_bytes(png_bytes(rgb))
    for form in (p, str(p), png_bytes(rgb), Image.fromarray(rgb), Image.fromarray(rgb).convert("RGBA")):
        np.testing.assert_array_equal(load_image(form), rgb)
    np.testing.assert_array_equal(load_image(Image.fromarray(rgb[:, :, 0])), np.repeat(rgb[:, :, :1], 3, 2))


def test_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="image not found: '.*nope.jpg'"):
        load_image(tmp_path / "nope.jpg")


def test_unreadable_file(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("this is text")
    with pytest.raises(ValueError, match="notes.jpg'?: not a readable image"):
        load_image(p)


def test_truncated_jpeg(rgb, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(np.tile(rgb, (10, 10, 1))).save(buf, format="JPEG")
    data = buf.getvalue()
    p = tmp_path / "cut.jpg"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="cut.jpg'?: corrupt or truncated image"):
        load_image(p)


def test_empty_inputs(tmp_path):
    with pytest.raises(ValueError, match="empty image"):
        load_image(np.zeros((0, 10, 3), np.uint8))
    with pytest.raises(ValueError, match="empty file"):
        load_image(b"")
    p = tmp_path / "empty.png"
    p.write_bytes(b"")
    with pytest.raises(ValueError, match="empty.png'?: empty file"):
        load_image(p)


def test_bad_dtypes_and_shapes(rgb):
    with pytest.raises(ValueError, match="unsupported dtype int64"):
        load_image(rgb.astype(np.int64))
    with pytest.raises(ValueError, match="unsupported dtype bool"):
        load_image(rgb > 3)
    with pytest.raises(ValueError, match=r"float images must hold values in \[0, 1\]"):
        load_image(rgb.astype(np.float32))
    with pytest.raises(ValueError, match=r"expected an image of shape .* got \[20, 30, 5\]"):
        load_image(np.zeros((20, 30, 5), np.uint8))
    with pytest.raises(ValueError, match="NaN"):
        load_image(np.full((4, 4, 3), np.nan, np.float32))
    with pytest.raises(ValueError, match="unsupported image input <int>"):
        load_image(42)
    with pytest.raises(ValueError, match="color: expected 'rgb' or 'bgr'"):
        load_image(rgb, color="hsv")
