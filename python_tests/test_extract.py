"""ig3d extract on the real shared photos: rows, labels, failures, resuming, shards; and evaluate
against scikit-learn."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

import ig3d
from ig3d import extract as ex
from ig3d.datasets import open_dataset
from ig3d.evaluate import evaluate
from ig3d.params import param_names
from ig3d.prior import PARAMS3D_NAMES


@pytest.fixture(scope="module")
def folder(faces, tmp_path_factory):
    """An ImageFolder: three happy photos, one surprise, a face-less landscape (as neutral) and a
    broken file."""
    root = tmp_path_factory.mktemp("ds")
    for cls, names in {"happy": ["astronaut.png", "single_face.jpg", "0-f15-hao-ph.jpg"],
                       "surprise": ["0-f1-su-ph.jpg"], "neutral": ["free-mountain-vector-01.jpg"]}.items():
        (root / cls).mkdir()
        for n in names:
            shutil.copy(faces / n, root / cls / n)
    (root / "happy" / "broken.jpg").write_bytes(b"not an image")
    return root


@pytest.fixture(scope="module")
def predictor():
    return ig3d.Predictor(threads=2)


@pytest.fixture(scope="module")
def extracted(folder, predictor, tmp_path_factory):
    out = tmp_path_factory.mktemp("out") / "features.npz"
    ex.extract(folder, out, predictor=predictor, batch=2, progress=False)
    return out


def test_extract_rows_labels_and_failures(extracted, folder, predictor):
    with np.load(extracted, allow_pickle=False) as z:
        f = {k: z[k] for k in z.files}
    assert f["params3d"].shape == (4, 55) and f["params3d"].dtype == np.float32
    assert f["param_names"].tolist() == list(PARAMS3D_NAMES) == param_names("default")
    assert f["scores2d"].shape == (4, 7)
    assert "features2d" not in f  # the default preset's 2D network has no fusion feature
    names = f["class_names"].tolist()
    got = {p.split("/")[-1]: names[l] for p, l in zip(f["paths"].tolist(), f["labels"].tolist())}
    assert got == {"astronaut.png": "happy", "single_face.jpg": "happy", "0-f15-hao-ph.jpg": "happy",
                   "0-f1-su-ph.jpg": "surprise"}
    failed = dict(zip([p.split("/")[-1] for p in f["failed_paths"].tolist()], f["failed_reasons"].tolist()))
    assert failed["free-mountain-vector-01.jpg"] == "no face found"
    assert "not a readable image" in failed["broken.jpg"]
    assert str(f["preset"]) == "default" and f["split"].tolist() == [""] * 4
    # each row is what Predictor gives for the image's largest face
    i = f["paths"].tolist().index(str(folder / "happy" / "single_face.jpg"))
    face = predictor.predict(folder / "happy" / "single_face.jpg")[0]
    np.testing.assert_array_equal(f["params3d"][i], face.params3d)
    # scores2d: the 2D network's own (FER2013) order, named
    labels = list(predictor.labels)
    for k, name in enumerate(f["scores2d_names"].tolist()):
        assert f["scores2d"][i, k] == face.logits_2d[labels.index(name)]


def test_extract_again_does_nothing(extracted, folder, predictor):
    before = extracted.stat().st_mtime_ns

    def fail(n):
        raise AssertionError("a finished extraction must not run again")
    ex.extract(folder, extracted, predictor=predictor, on_batch=fail, progress=False)
    assert extracted.stat().st_mtime_ns == before
    with pytest.raises(FileExistsError, match="other inputs"):
        ex.extract(folder, extracted, predictor=predictor, aligned=True, progress=False)


def _load(p):
    with np.load(p, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def _assert_same(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_interrupted_run_resumes_to_the_same_file(folder, predictor, extracted, tmp_path, monkeypatch):
    monkeypatch.setattr(ex, "BLOCK", 2)
    out = tmp_path / "f.npz"
    calls = []

    def stop_in_the_second_block(n):
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        ex.extract(folder, out, predictor=predictor, batch=1, on_batch=stop_in_the_second_block, progress=False)
    assert not out.exists()
    assert len(list((tmp_path / "f.npz.parts").glob("block_*.npz"))) == 1  # the first block of 2 finished
    resumed = []
    ex.extract(folder, out, predictor=predictor, batch=1, on_batch=resumed.append, progress=False)
    assert sum(resumed) == 6 - 2  # the finished block was not run again
    assert not (tmp_path / "f.npz.parts").exists()
    _assert_same(_load(out), _load(extracted))


def test_shards_merge_to_a_single_run(folder, predictor, extracted, tmp_path):
    shards = []
    for k in (1, 2, 3):
        shards.append(ex.extract(folder, tmp_path / f"s{k}.npz", predictor=predictor, shard=(k, 3), progress=False))
    assert sum(len(_load(s)["sample_index"]) for s in shards) == 4
    merged = ex.merge(shards[::-1], tmp_path / "merged.npz")
    _assert_same(_load(merged), _load(extracted))
    with pytest.raises(ValueError, match="missing \\[2\\]"):
        ex.merge([shards[0], shards[2]], tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="not a shard"):
        ex.merge([extracted], tmp_path / "bad.npz")
    with pytest.raises(ValueError, match="K/N"):
        ex.parse_shard("4/3")


def test_aligned_crops(faces, predictor, tmp_path):
    """--aligned: tight face crops, no detection; the crop of a happy face reads happy."""
    from PIL import Image

    (tmp_path / "happy").mkdir()
    Image.open(faces / "astronaut.png").convert("RGB").crop((150, 40, 300, 190)).save(tmp_path / "happy" / "a.png")
    out = ex.extract(tmp_path, tmp_path / "f.npz", predictor=predictor, aligned=True, progress=False)
    f = _load(out)
    assert bool(f["aligned"]) and len(f["params3d"]) == 1
    rep = evaluate(f, split="all")
    assert rep["accuracy"] == 1.0


def test_evaluate_against_sklearn(extracted):
    metrics = pytest.importorskip("sklearn.metrics")
    f = _load(extracted)
    rng = np.random.default_rng(0)
    n = 200  # a larger synthetic file with the same layout: random 3D vectors and 2D scores
    idx = rng.integers(0, len(f["params3d"]), n)
    g = dict(f)
    g.update(params3d=np.clip(f["params3d"][idx] + rng.normal(0, 0.2, (n, 55)).astype(np.float32), 0, None),
             scores2d=rng.normal(size=(n, 7)).astype(np.float32), labels=rng.integers(0, 7, n),
             va=rng.uniform(-1, 1, (n, 2)).astype(np.float32), split=np.array(["test"] * n),
             paths=np.array(["x"] * n))
    head = ig3d.prior.default_head()
    rep = evaluate(g, head, split="test")
    fused = head(g["params3d"], g["scores2d"])
    pred = np.argmax(fused.probs, 1)
    y = g["labels"]
    assert rep["accuracy"] == pytest.approx(metrics.accuracy_score(y, pred))
    assert rep["f1_macro"] == pytest.approx(metrics.f1_score(y, pred, average="macro", zero_division=0))
    assert rep["f1_weighted"] == pytest.approx(metrics.f1_score(y, pred, average="weighted", zero_division=0))
    assert rep["precision_weighted"] == pytest.approx(
        metrics.precision_score(y, pred, average="weighted", zero_division=0))
    assert rep["recall_macro"] == pytest.approx(metrics.recall_score(y, pred, average="macro", zero_division=0))
    np.testing.assert_array_equal(rep["confusion_matrix"], metrics.confusion_matrix(y, pred, labels=range(7)))
    # the 2D branch alone: FER2013's columns put back in the label order
    labels = list(head.labels)
    s2 = np.full((n, 7), -np.inf)
    for k, name in enumerate(g["scores2d_names"].tolist()):
        s2[:, labels.index(name)] = g["scores2d"][:, k]
    assert rep["branches"]["2d"]["accuracy"] == pytest.approx(metrics.accuracy_score(y, s2.argmax(1)))
    # late "max" fusion by hand, and the 3D branch alone
    s3 = head(g["params3d"]).out3d[:, :7]
    assert rep["branches"]["3d"]["accuracy"] == pytest.approx(metrics.accuracy_score(y, s3.argmax(1)))
    assert rep["branches"]["late_fusion"]["max"]["accuracy"] == pytest.approx(
        metrics.accuracy_score(y, np.maximum(s2, s3).argmax(1)))
    # VA: the default prior head has no VA outputs, so no VA metrics are claimed
    assert "valence_ccc" not in rep


def test_default_preset_takes_a_head_with_other_classes(faces):
    """A head trained on AffectNet-8 (with contempt) runs in the default preset: labels follow the
    head, mini-Xception's 7 scores fuse into their classes by name, contempt is 3D-only, and
    valence/arousal still come from the prior's mapping."""
    from ig3d.labels import AFFECTNET8_LABELS
    from ig3d.prior import FER_TO_LABELS, LABELS

    rng = np.random.default_rng(0)
    fer_names = [LABELS[i] for i in FER_TO_LABELS]
    head = ig3d.FusedHead([ig3d.Layer(rng.normal(size=(8, 55)).astype(np.float32) * 0.1, None)], input_dim=55,
                          num_classes=8, labels=AFFECTNET8_LABELS, fusion="mean", scores2d_dim=7,
                          fusion_map=[AFFECTNET8_LABELS.index(n) for n in fer_names])
    p = ig3d.Predictor(head=head)
    assert tuple(p.labels) == AFFECTNET8_LABELS
    (face,) = p.predict(faces / "astronaut.png")
    assert list(face.scores) == list(AFFECTNET8_LABELS) and face.scores_2d["contempt"] == 0.0
    z = face.logits_3d.astype(np.float64).copy()
    for k, name in enumerate(fer_names):
        z[AFFECTNET8_LABELS.index(name)] = (face.scores2d_raw[k] + face.logits_3d[AFFECTNET8_LABELS.index(name)]) / 2
    probs = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(list(face.scores.values()), probs, atol=1e-5)
    assert face.label == "happy" and face.valence > 0.5
    with pytest.raises(ValueError, match="needs class names"):
        ig3d.Predictor(head=ig3d.FusedHead([ig3d.Layer(np.zeros((3, 55), np.float32), None)], input_dim=55,
                                           num_classes=3))


def test_progress_bar_shows_rate_and_eta():
    import io

    out = io.StringIO()
    bar = ex._Progress(10, 2, enabled=True, stream=out)
    bar.t0 -= 1.0  # one second in
    bar.update(4)
    bar.close()
    line = out.getvalue()
    assert "6/10" in line and "img/s" in line and "ETA 00:00:0" in line and line.endswith("\n")
    quiet = io.StringIO()
    q = ex._Progress(10, enabled=False, stream=quiet)
    q.update(10)
    q.close()
    assert quiet.getvalue() == ""
