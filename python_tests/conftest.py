"""Shared fixtures: where the real face photos are (beside the checkout in CI)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


def faces_dir() -> Path:
    env = os.environ.get("IG3D_FACES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces() -> Path:
    d = faces_dir()
    if not (d / "MANIFEST.csv").is_file():
        pytest.skip(f"the face photos are not here ({d}); set IG3D_FACES_DIR to the shared/data/faces folder")
    return d
