"""Bad input to the fused head raises ValueError naming the argument, the expected and the actual
shape or dtype; corrupt files are refused; the CUDA path without a GPU raises one clear error."""

from __future__ import annotations

import numpy as np
import pytest

import ig3d
from ig3d import FusedHead, Layer


def small_head(**kw):
    rng = np.random.default_rng(0)
    args = dict(input_dim=10, num_classes=3, va_index=3, fusion="mean", scores2d_dim=3)
    args.update(kw)
    return FusedHead([Layer(rng.normal(size=(8, 10)), None, "relu"), Layer(rng.normal(size=(5, 8)))], **args)


@pytest.fixture
def head():
    return small_head()


def test_wrong_width(head):
    with pytest.raises(ValueError, match=r"params3d: expected shape \[B, 10\], got \[4, 9\]"):
        head(np.zeros((4, 9), np.float32))


def test_wrong_rank(head):
    with pytest.raises(ValueError, match=r"params3d: expected shape \[B, 10\], got \[10\]"):
        head(np.zeros(10, np.float32))


def test_integer_dtype_is_refused(head):
    with pytest.raises(ValueError, match="params3d: expected a floating-point array.*int64"):
        head(np.zeros((2, 10), np.int64))


def test_not_an_array(head):
    with pytest.raises(ValueError, match="params3d: expected a numpy array, got list"):
        head([[0.0] * 10])


def test_scores2d_batch_mismatch(head):
    with pytest.raises(ValueError, match=r"scores2d: expected shape \[4, 3\], got \[3, 3\]"):
        head(np.zeros((4, 10), np.float32), np.zeros((3, 3), np.float32))


def test_scores2d_width_mismatch(head):
    with pytest.raises(ValueError, match=r"scores2d: expected shape \[2, 3\], got \[2, 7\]"):
        head(np.zeros((2, 10), np.float32), np.zeros((2, 7), np.float32))


def test_scores2d_without_late_fusion():
    h = small_head(fusion="none", scores2d_dim=0)
    with pytest.raises(ValueError, match="scores2d: this head has no late fusion"):
        h(np.zeros((2, 10), np.float32), np.zeros((2, 3), np.float32))


def test_features2d_required_for_intermediate_fusion():
    rng = np.random.default_rng(1)
    h = FusedHead([Layer(rng.normal(size=(4, 10))), Layer(rng.normal(size=(3, 4 + 6)))], input_dim=10,
                  num_classes=3, concat_at=1, features2d_dim=6)
    with pytest.raises(ValueError, match="features2d: .* is required"):
        h(np.zeros((2, 10), np.float32))
    with pytest.raises(ValueError, match=r"features2d: expected shape \[2, 6\], got \[2, 5\]"):
        h(np.zeros((2, 10), np.float32), None, np.zeros((2, 5), np.float32))


def test_features2d_given_without_intermediate_fusion(head):
    with pytest.raises(ValueError, match="features2d: this head has no intermediate fusion"):
        head(np.zeros((2, 10), np.float32), None, np.zeros((2, 4), np.float32))


def test_nan_weights_are_refused():
    w = np.ones((5, 10))
    w[2, 3] = np.nan
    with pytest.raises(ValueError, match=r"layers\[0\]: weights contain NaN"):
        FusedHead([Layer(w)], input_dim=10, num_classes=3)


def test_layer_width_mismatch_names_the_layer():
    rng = np.random.default_rng(2)
    with pytest.raises(ValueError, match=r"layers\[1\].weight: expected 8 input columns, got 7"):
        FusedHead([Layer(rng.normal(size=(8, 10))), Layer(rng.normal(size=(3, 7)))], input_dim=10, num_classes=3)


def test_select_out_of_range():
    with pytest.raises(ValueError, match=r"select\[1\] = 12 is outside \[0, 10\)"):
        FusedHead([Layer(np.ones((3, 2)))], input_dim=10, select=[0, 12], num_classes=3)


def test_bad_std_and_fusion_settings():
    with pytest.raises(ValueError, match="std: every entry must be finite and > 0"):
        small_head(std=np.zeros(10))
    with pytest.raises(ValueError, match="'weighted' fusion needs"):
        small_head(fusion="weighted")
    with pytest.raises(ValueError, match="fusion: expected one of"):
        small_head(fusion="product")
    with pytest.raises(ValueError, match="num_classes must be in"):
        small_head(num_classes=9, fusion="none", scores2d_dim=0, va_index=None)
    with pytest.raises(ValueError, match="va_index must be"):
        small_head(va_index=4)
    with pytest.raises(ValueError, match=r"fusion_map\[0\] = 5 is outside"):
        small_head(fusion_map=[5, 0, 1])


def test_unknown_device(head):
    with pytest.raises(ValueError, match="device: expected 'cpu' or 'cuda'"):
        head(np.zeros((1, 10), np.float32), device="tpu")


@pytest.mark.skipif(ig3d.kernels.has_cuda(), reason="this machine has a CUDA device")
def test_cuda_without_gpu_raises_one_clear_error(head):
    info = ig3d.kernels.info()
    assert info["cuda_devices"] == 0
    with pytest.raises(RuntimeError, match="CUDA path was requested but"):
        head(np.zeros((2, 10), np.float32), device="cuda")
    # the CPU path still works afterwards
    assert head(np.zeros((2, 10), np.float32)).probs.shape == (2, 3)


def test_load_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="fused head file not found"):
        FusedHead.load(tmp_path / "nope.npz")


def test_load_corrupt_file(tmp_path):
    p = tmp_path / "bad.npz"
    p.write_bytes(b"PK\x03\x04 this is not a zip")
    with pytest.raises(ValueError, match="not a readable ig3d fused head"):
        FusedHead.load(p)


def test_load_mismatched_weights(tmp_path, head):
    p = tmp_path / "h.npz"
    head.save(p)
    with np.load(p) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["layers.1.weight"] = arrays["layers.1.weight"][:, :7]
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match=r"layers.1.weight has shape \[5, 7\].*config says \[5, 8\]"):
        FusedHead.load(p)


def test_load_not_a_head(tmp_path):
    p = tmp_path / "other.npz"
    np.savez(p, x=np.zeros(3))
    with pytest.raises(ValueError, match="missing 'config_json'"):
        FusedHead.load(p)
