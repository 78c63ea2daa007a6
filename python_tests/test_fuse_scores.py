"""ig3d.fuse_scores reproduces Ig3D's late-fusion formulas on arrays (the C++ code of the head)."""

from __future__ import annotations

import numpy as np
import pytest

import ig3d


@pytest.fixture
def scores():
    rng = np.random.default_rng(0)
    return rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=(50, 8)).astype(np.float32)


def test_weighted(scores):
    a, b = scores
    # AffectNet-8 / EMOCA in Ig3D: 0.80 * 2D + 0.20 * 3D
    np.testing.assert_allclose(ig3d.fuse_scores(a, b, "weighted", (0.8, 0.2)), 0.8 * a + 0.2 * b, rtol=1e-6, atol=1e-7)


def test_mean(scores):
    a, b = scores
    np.testing.assert_allclose(ig3d.fuse_scores(a, b, "mean"), (a + b) / 2, rtol=1e-6, atol=1e-7)


def test_max_and_min(scores):
    a, b = scores
    np.testing.assert_array_equal(ig3d.fuse_scores(a, b, "max"), np.maximum(a, b))
    np.testing.assert_array_equal(ig3d.fuse_scores(a, b, "min"), np.minimum(a, b))


def test_shapes_and_dtypes():
    out = ig3d.fuse_scores([1.0, 5.0], [3.0, 2.0], "max")
    assert out.dtype == np.float32 and out.tolist() == [3.0, 5.0]
    va = np.zeros((0, 2), np.float32)
    assert ig3d.fuse_scores(va, va, "min").shape == (0, 2)
    a = np.arange(24, dtype=np.float64).reshape(2, 3, 4)
    np.testing.assert_array_equal(ig3d.fuse_scores(a, -a, "max"), a)


def test_errors(scores):
    a, b = scores
    with pytest.raises(ValueError, match="same shape"):
        ig3d.fuse_scores(a, b[:, :7], "max")
    with pytest.raises(ValueError, match="expected 'max', 'mean', 'min' or 'weighted'"):
        ig3d.fuse_scores(a, b, "sum")
    with pytest.raises(ValueError, match=r"weights=\(w2d, w3d\)"):
        ig3d.fuse_scores(a, b, "weighted")
    with pytest.raises(ValueError, match="only used by 'weighted'"):
        ig3d.fuse_scores(a, b, "mean", (0.5, 0.5))
    with pytest.raises(ValueError, match="s2d: expected a floating-point array"):
        ig3d.fuse_scores(np.zeros(3, np.int32), np.zeros(3, np.float32), "max")


def test_head_late_fusion_equals_fuse_scores_on_raw_outputs():
    """The fused head's late fusion is fuse_scores applied to (scores2d, out3d)."""
    rng = np.random.default_rng(1)
    head = ig3d.FusedHead([ig3d.Layer(rng.normal(size=(10, 6)))], input_dim=6, num_classes=8, va_index=8,
                          fusion="weighted", scores2d_dim=10, fusion_weights=(0.6, 0.4))
    p, s = rng.normal(size=(5, 6)).astype(np.float32), rng.normal(size=(5, 10)).astype(np.float32)
    out = head(p, s)
    fused = ig3d.fuse_scores(s, out.out3d, "weighted", (0.6, 0.4))
    np.testing.assert_allclose(out.logits, fused[:, :8], rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(out.va, fused[:, 8:], rtol=1e-6, atol=1e-6)
