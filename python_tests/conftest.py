"""Shared fixtures: where the real face photos are (beside the checkout in CI)."""

from __future__ import annotations

import contextlib
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


def reference_key_list(filename: str):
    """[(key, shape)] of an upstream checkpoint key list (``shared/reference/keys/<filename>``, or
    ``$IG3D_REFERENCE_DIR``: that folder or its ``keys/``), in file order; skips when absent."""
    env = os.environ.get("IG3D_REFERENCE_DIR")
    if env:
        d = Path(env)
        path = d / filename if (d / filename).is_file() else d / "keys" / filename
    else:
        path = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "keys" / filename
    if not path.is_file():
        pytest.skip(f"the upstream key list is not here ({path}); set IG3D_REFERENCE_DIR to shared/reference")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, tuple(int(t) for t in shape.strip().strip("[]").split(",") if t.strip())))
    return rows


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread, then restore: on a shared 2-core machine OpenMP threads waiting on a
    busy core made a 224x224 forward ~25x slower [measured], and these networks gain little from two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch_one_thread():
    """:func:`one_torch_thread` for a whole test module (``pytestmark = usefixtures(...)``)."""
    with one_torch_thread():
        yield
