"""Late-fusion fitting: against an exhaustive numpy search, and on Ig3D's published AffectNet VA
predictions (python_tests/data/ig3d_va, MIT; see its README)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from ig3d.fusion_fit import fit_late_fusion, weight_grid

DATA = Path(__file__).parent / "data" / "ig3d_va"


def _ccc(x, y):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    return 2 * np.mean((x - x.mean()) * (y - y.mean())) / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def _search(s2d, s3d, t, task, step):
    """Direct transcription: every mode, and every w2d on the grid for weighted, in float64."""
    s2d, s3d = s2d.astype(np.float64), s3d.astype(np.float64)

    def score(f):
        if task == "classification":
            return np.mean(np.argmax(f, 1) == t)
        return 0.5 * (_ccc(f[:, 0], t[:, 0]) + _ccc(f[:, 1], t[:, 1]))

    table = {"max": score(np.maximum(s2d, s3d)), "mean": score((s2d + s3d) / 2), "min": score(np.minimum(s2d, s3d))}
    best, best_w = -1.0, None
    for i in range(int(round(1 / step)) + 1):
        w = i * step
        sc = score(w * s2d + (1 - w) * s3d)
        if sc > best + 1e-12:
            best, best_w = sc, w
    table["weighted"] = best
    return table, best_w


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_classification_matches_exhaustive_search(seed):
    rng = np.random.default_rng(seed)
    n, k = 400, 7
    t = rng.integers(0, k, n)
    s2d = rng.normal(size=(n, k)).astype(np.float32)
    s3d = rng.normal(size=(n, k)).astype(np.float32)
    s2d[np.arange(n), t] += rng.uniform(0, 2.0)  # each branch right on part of the rows
    s3d[np.arange(n), t] += rng.uniform(0, 2.0) * (rng.random(n) < 0.6)
    fit = fit_late_fusion(s2d, s3d, t, step=0.05)
    table, w = _search(s2d, s3d, t, "classification", 0.05)
    for mode in ("max", "mean", "min", "weighted"):
        assert fit.table[mode]["score"] == pytest.approx(table[mode], abs=1e-12), mode
    assert fit.table["weighted"]["weights"][0] == pytest.approx(w)
    assert fit.table["weighted"]["weights"][1] == pytest.approx(1 - w)
    best_mode = max(table, key=lambda m: (table[m], -["max", "mean", "min", "weighted"].index(m)))
    assert fit.mode == best_mode and fit.score == pytest.approx(table[best_mode])


def test_ties_go_to_the_smaller_w2d():
    # the 3D branch alone is right on every row; the 2D branch is noise that never flips a row for
    # w2d <= 0.5 and flips some above: every w2d in [0, 0.5] ties, the smallest (0) must win
    t = np.array([0, 1, 2, 0, 1, 2])
    s3d = np.eye(3, dtype=np.float32)[t] * 2.0
    s2d = np.roll(s3d, 1, axis=1) * 1.5
    fit = fit_late_fusion(s2d, s3d, t, modes=("weighted",), step=0.1)
    assert fit.weights == (0.0, 1.0)
    assert fit.score == 1.0


def test_mode_subset_and_errors():
    rng = np.random.default_rng(0)
    s = rng.normal(size=(20, 3)).astype(np.float32)
    t = rng.integers(0, 3, 20)
    fit = fit_late_fusion(s, s, t, modes=("max", "min"))
    assert set(fit.table) == {"max", "min"} and fit.weights is None
    with pytest.raises(ValueError, match="same shape|one shape"):
        fit_late_fusion(s, s[:, :2], t)
    with pytest.raises(ValueError, match="labels must lie"):
        fit_late_fusion(s, s, t + 3)
    with pytest.raises(ValueError, match="modes"):
        fit_late_fusion(s, s, t, modes=("median",))
    with pytest.raises(ValueError, match="whole number"):
        weight_grid(0.3)
    with pytest.raises(ValueError, match="NaN"):
        fit_late_fusion(s[:, :2], s[:, :2], np.full((20, 2), np.nan), task="va")


def _ig3d_va():
    cage = np.loadtxt(DATA / "cage_reproduced_VA_inference.csv", delimiter=",", skiprows=1)
    mlp = np.loadtxt(DATA / "nofusion_VA_inference.csv", delimiter=",", skiprows=1)
    # both files hold the same rows: the true values agree exactly
    np.testing.assert_array_equal(cage[:, [1, 3]], mlp[:, [1, 3]])
    return cage[:, [0, 2]], mlp[:, [0, 2]], cage[:, [1, 3]]


def test_ig3d_published_va_predictions():
    """Ig3D's AffectNet VA CSVs: 2D CAGE alone CCC 0.718 / 0.645, their 0.6 / 0.4 weighted fusion
    0.724 / 0.648 (docs REFERENCE 1.6). The search over the same data must reproduce every mode's
    score and find a weighted fusion at least as good as Ig3D's hand-picked 0.6 / 0.4."""
    s2d, s3d, t = _ig3d_va()
    assert _ccc(s2d[:, 0], t[:, 0]) == pytest.approx(0.718, abs=5e-4)
    assert _ccc(s2d[:, 1], t[:, 1]) == pytest.approx(0.645, abs=5e-4)
    ig3d_weighted = 0.6 * s2d + 0.4 * s3d
    assert _ccc(ig3d_weighted[:, 0], t[:, 0]) == pytest.approx(0.724, abs=5e-4)
    assert _ccc(ig3d_weighted[:, 1], t[:, 1]) == pytest.approx(0.648, abs=1e-3)

    fit = fit_late_fusion(s2d, s3d, t, task="va")
    table, w = _search(s2d, s3d, t, "va", 0.01)
    for mode in table:
        assert fit.table[mode]["score"] == pytest.approx(table[mode], abs=1e-6), mode
    assert fit.mode == "weighted"
    assert fit.weights[0] == pytest.approx(w)
    assert fit.score >= 0.5 * (0.724 + 0.648) - 1e-3
    # Ig3D's mean and max fusions, as its CSVs report them (REFERENCE 1.6: CCC 0.721/0.643, 0.700/0.621)
    assert fit.table["mean"]["score"] == pytest.approx(0.5 * (0.721 + 0.643), abs=1e-3)
    assert fit.table["max"]["score"] == pytest.approx(0.5 * (0.700 + 0.621), abs=1e-3)
