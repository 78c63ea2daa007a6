"""The Ig3D workflow through the installed ``ig3d`` command: extract -> train -> fit-fusion ->
evaluate -> ``Predictor(head=...)``, on a small folder made from the shared photos."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import ig3d

pytest.importorskip("torch", reason="ig3d train needs torch (pip install 'ig3d[train]')")


def _ig3d(*args, check=True):
    # run outside the checkout, so that `-m ig3d` finds the installed package, not the source folder
    r = subprocess.run([sys.executable, "-m", "ig3d", *map(str, args)], capture_output=True, text=True, timeout=600,
                       cwd=tempfile.gettempdir())
    if check and r.returncode != 0:
        raise AssertionError(f"ig3d {' '.join(map(str, args))} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


@pytest.fixture(scope="module")
def photo_folder(faces, tmp_path_factory):
    """happy/ and surprise/ with 12 varied copies each (mirrored, shifted, brightness), split into
    train/val/test folders; plus a face-less image."""
    from PIL import Image, ImageEnhance

    root = tmp_path_factory.mktemp("photos")
    sources = {"happy": ["astronaut.png", "single_face.jpg", "0-f15-hao-ph.jpg"], "surprise": ["0-f1-su-ph.jpg"]}
    for cls, names in sources.items():
        base = [Image.open(faces / n).convert("RGB") for n in names]
        for i in range(12):
            im = base[i % len(base)]
            if i % 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            d = 4 * (i % 3)
            im = im.crop((d, d, im.width - 12 + d, im.height - 12 + d))
            im = ImageEnhance.Brightness(im).enhance(0.85 + 0.05 * (i % 4))
            split = "train" if i < 8 else "val" if i < 10 else "test"
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            im.save(root / split / cls / f"{cls}{i:02d}.jpg", quality=90)
    Image.open(faces / "free-mountain-vector-01.jpg").save(root / "train" / "happy" / "landscape.jpg")
    return root


def test_cli_round_trip(photo_folder, tmp_path, faces):
    feats, head = tmp_path / "features.npz", tmp_path / "head.npz"
    r = _ig3d("extract", photo_folder, "-o", feats, "--batch", 8)
    assert "24 images with a face; 1 failed (1 no face found)" in r.stdout
    r = _ig3d("extract", photo_folder, "-o", feats)  # finished: nothing to do
    assert r.returncode == 0

    r = _ig3d("train", feats, "-o", head, "--head", "mlp4", "--params", "short", "--epochs", "10", "--seed", "1")
    assert head.is_file() and (tmp_path / "head.json").is_file()
    assert "epoch 1" in r.stderr
    log = json.loads((tmp_path / "head.json").read_text())
    assert log["split"]["source"] == "file"

    r = _ig3d("fit-fusion", feats, "--head", head, "--split", "val")
    assert "<- chosen" in r.stdout
    fused = ig3d.FusedHead.load(head)
    assert fused.fusion in ("max", "mean", "min", "weighted")
    assert fused.scores2d_dim == 7 and fused.labels == list(ig3d.prior.LABELS)

    r = _ig3d("evaluate", feats, "--head", head, "--json", "--plot", tmp_path / "cm.png")
    report = json.loads(r.stdout)
    assert report["rows"] == 4 and report["selection"].startswith("split 'test'")
    # the 3D head learned happy vs surprise on these faces; the fused output keeps it
    assert report["branches"]["3d"]["accuracy"] >= 0.75
    assert report["accuracy"] == report["branches"]["fused"]["accuracy"] >= 0.75
    assert set(report["branches"]["late_fusion"]) >= {"max", "mean", "min"}
    from PIL import Image

    with Image.open(tmp_path / "cm.png") as im:
        assert im.size[0] > 300

    # the trained head in a Predictor: the happy demo photo reads happy, the surprise photo surprise
    p = ig3d.Predictor(head=head)
    assert p.predict(faces / "astronaut.png")[0].label == "happy"
    assert p.predict(faces / "0-f1-su-ph.jpg")[0].label_3d == "surprise"

    table = _ig3d("evaluate", feats, "--head", head).stdout
    assert "late mean" in table and "fused (head)" in table


def test_cli_errors(tmp_path):
    r = _ig3d("extract", tmp_path / "nowhere", "-o", tmp_path / "f.npz", check=False)
    assert r.returncode != 0 and "nowhere" in r.stderr and "Traceback" not in r.stderr
    bad = tmp_path / "bad.npz"
    np.savez(bad, x=np.zeros(3))
    for cmd in (["evaluate", bad], ["train", bad, "-o", tmp_path / "h.npz"]):
        r = _ig3d(*cmd, check=False)
        assert r.returncode != 0 and "features file" in r.stderr and "Traceback" not in r.stderr
