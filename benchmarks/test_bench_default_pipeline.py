"""pytest-benchmark cases for ig3d's default pipeline: ``Predictor().predict`` on the astronaut
photo (one 512x512 image, one face), with the default settings and with ``min_face_size=None`` (no
small-face scan: the "same work" as MediaPipe). Run: pytest benchmarks/test_bench_default_pipeline.py
(``python benchmarks/default_pipeline.py`` compares it with MediaPipe + FER and prints ratios).

The photo comes from ``$IG3D_FACES_DIR`` (default ``<repo>/../shared/data/faces``), else the
bundled ``ig3d/assets/astronaut.png``; it is decoded once, outside the timed region.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("pytest_benchmark", reason="needs pytest-benchmark")
Image = pytest.importorskip("PIL.Image", reason="decoding the photo needs Pillow")

import ig3d  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    faces_dir = Path(os.environ.get("IG3D_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
    for path in (faces_dir / "astronaut.png", REPO / "ig3d" / "assets" / "astronaut.png"):
        if path.is_file():
            with Image.open(path) as im:
                return np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    pytest.skip(f"astronaut.png not found in {faces_dir} (set IG3D_FACES_DIR) nor in ig3d/assets")


@pytest.fixture(scope="module", params=["default", "none"], ids=["min_face_size=40", "min_face_size=None"])
def predictor(request):
    if not hasattr(ig3d, "Predictor"):
        pytest.skip("ig3d.Predictor is not available in this ig3d")
    return ig3d.Predictor() if request.param == "default" else ig3d.Predictor(min_face_size=None)


def test_predict_astronaut(astronaut, predictor, benchmark):
    img = astronaut
    faces = predictor.predict(img)  # warm-up (first-call costs) and a sanity check
    assert len(faces) == 1, f"expected one face in astronaut.png, got {len(faces)}"
    benchmark.group = "default pipeline, batch 1"
    benchmark.extra_info.update(backend=predictor.backend, device=predictor.device)
    faces = benchmark(predictor.predict, img)
    assert len(faces) == 1
