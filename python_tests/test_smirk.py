"""SMIRK encoder (ig3d.models.smirk, ig3d.convert.smirk): checkpoint validation, Ig3D feature vectors,
ONNX export.

Equality with upstream was measured outside the repo (no upstream code is kept here): upstream
georgeretsi/smirk src/smirk_encoder.py at c7de404 with timm 0.9.16 (``pretrained=False``) and torch
2.13.0 CPU, random weights with BN running statistics calibrated on random images and then randomised,
heads rescaled so that outputs vary per image and straddle the eyelid/jaw clamps; its state dict saved
as a fake ``SMIRK_em1.pt`` (``smirk_encoder.`` prefix plus a ``smirk_generator.x`` entry) and read
through :func:`load_smirk_checkpoint` / :func:`build_smirk`. Measured max abs diff over all six outputs
in float32: **0.0** (bitwise equal) on 4x3x224x224 inputs (outputs up to |113|) and 0.0 on 2x3x161x193
inputs (odd sizes exercise the TF-SAME padding); ig3d's prefixed key list equals upstream's
``state_dict()`` and shared/reference/keys/smirk_encoder_keys.txt in names, order and shapes (762 keys).
"""

from __future__ import annotations


import numpy as np
import pytest
from conftest import reference_key_list

torch = pytest.importorskip("torch", reason="the SMIRK encoder needs torch (pip install 'ig3d[torch]')")

from ig3d.convert.smirk import (  # noqa: E402  (after the torch skip)
    DROPPED_PREFIXES,
    ONNX_OUTPUTS,
    UnsafeCheckpointError,
    build_smirk,
    encoder_schema,
    export_smirk_onnx,
    load_smirk_checkpoint,
)
from ig3d.models.mobilenetv3 import SameConv2d, mobilenetv3_small_minimal_100  # noqa: E402
from ig3d.models.smirk import FULL_DIM, OUTPUT_DIMS, SHORT_DIM, SmirkEncoder, smirk_full, smirk_short  # noqa: E402

KEYS_FILE = "smirk_encoder_keys.txt"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


@pytest.fixture(scope="module")
def key_list():
    """[(key, shape)] of upstream's ``smirk_encoder.*`` entries, in upstream order."""
    return reference_key_list(KEYS_FILE)


def _synthetic_checkpoint(key_list, seed: int = 0):
    """A flat ``SMIRK_em1.pt``-style dict: random tensors of the listed shapes, scaled so activations stay
    O(1) (He-style conv/linear weights, BN near identity), plus generator entries to be dropped. The
    expression head's eyelid/jaw biases are set outside the clamp ranges so the clamps are exercised."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in key_list:
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(1000, dtype=torch.int64)
        elif key.endswith("running_mean"):
            sd[key] = torch.randn(shape, generator=g) * 0.1
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) * 0.5 + 0.75
        elif len(shape) >= 2:  # conv [O, I/groups, k, k] or linear [O, I]
            fan_in = int(np.prod(shape[1:]))
            sd[key] = torch.randn(shape, generator=g) * (1.0 / fan_in) ** 0.5
        elif key.endswith(".weight"):  # BN gamma
            sd[key] = torch.rand(shape, generator=g) * 0.4 + 0.8
        else:  # BN beta, linear bias
            sd[key] = torch.randn(shape, generator=g) * 0.1
    bias = sd["smirk_encoder.expression_encoder.expression_layers.0.bias"]
    bias[50:55] = torch.tensor([-0.6, 1.6, -0.3, 0.5, -0.5])
    sd["smirk_generator.encoder.0.weight"] = torch.randn(8, 3, 3, 3, generator=g)
    sd["smirk_generator.encoder.0.bias"] = torch.zeros(8)
    return sd


@pytest.fixture(scope="module")
def checkpoint(key_list, tmp_path_factory):
    sd = _synthetic_checkpoint(key_list)
    path = tmp_path_factory.mktemp("smirk") / "SMIRK_em1.pt"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def model(checkpoint):
    return build_smirk(load_smirk_checkpoint(checkpoint[0]))


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    x = torch.rand(3, 3, 224, 224, generator=g)
    x[0] = 0.0  # black and white frames too: the valid input range's ends
    x[1] = 1.0
    return x


# --------------------------------------------------------------------------------------------
# Schema and loading.

def test_schema_equals_upstream_key_list(key_list):
    ours = [("smirk_encoder." + k, s) for k, s in encoder_schema().items()]
    assert len(ours) == 762
    assert ours == key_list


def test_synthetic_checkpoint_loads_strictly(checkpoint, model):
    path, sd = checkpoint
    loaded = load_smirk_checkpoint(path)
    assert list(loaded) == list(encoder_schema())  # prefix stripped, order kept, generator gone
    for k, v in model.state_dict().items():
        assert torch.equal(v, sd["smirk_encoder." + k]), k
    assert not model.training


def test_generator_keys_are_dropped(checkpoint):
    path, sd = checkpoint
    assert DROPPED_PREFIXES == ("smirk_generator.",)
    assert any(k.startswith("smirk_generator.") for k in sd)
    loaded = load_smirk_checkpoint(path)
    assert not any("generator" in k for k in loaded)


def _save(tmp_path, sd):
    p = tmp_path / "ckpt.pt"
    torch.save(sd, p)
    return p


def test_missing_key_is_named(checkpoint, tmp_path):
    sd = dict(checkpoint[1])
    del sd["smirk_encoder.shape_encoder.encoder.blocks.3.2.bn2.running_var"]
    with pytest.raises(ValueError,
                       match=r"missing keys: shape_encoder\.encoder\.blocks\.3\.2\.bn2\.running_var \[184\]"):
        load_smirk_checkpoint(_save(tmp_path, sd))


@pytest.mark.parametrize("key", ["smirk_encoder.pose_encoder.extra.weight", "smirk_decoder.weight"])
def test_unexpected_key_is_named(checkpoint, tmp_path, key):
    sd = dict(checkpoint[1])
    sd[key] = torch.zeros(2, 5)
    name = key[len("smirk_encoder."):] if key.startswith("smirk_encoder.") else key
    with pytest.raises(ValueError, match=r"unexpected keys.*" + name.replace(".", r"\.") + r" \[2, 5\]"):
        load_smirk_checkpoint(_save(tmp_path, sd))


def test_wrong_shape_is_named(checkpoint, tmp_path):
    sd = dict(checkpoint[1])
    sd["smirk_encoder.expression_encoder.expression_layers.0.weight"] = torch.zeros(53, 960)
    with pytest.raises(ValueError, match=r"expression_encoder\.expression_layers\.0\.weight: shape \[53, 960\] "
                                         r"in the checkpoint, \[55, 960\] expected"):
        load_smirk_checkpoint(_save(tmp_path, sd))
    # build_smirk validates a state dict handed over directly, too.
    stripped = {k[len("smirk_encoder."):]: v for k, v in sd.items() if k.startswith("smirk_encoder.")}
    with pytest.raises(ValueError, match=r"expression_layers\.0\.weight: shape \[53, 960\]"):
        build_smirk(stripped)


def test_weights_only_refuses_pickled_objects(tmp_path):
    # A whole pickled module (code, not just tensors): refused by default, accepted when trusted.
    enc = SmirkEncoder()
    path = tmp_path / "whole_module.pt"
    torch.save(enc, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True"):
        load_smirk_checkpoint(path)
    sd = load_smirk_checkpoint(path, trust_checkpoint=True)
    assert list(sd) == list(encoder_schema())


# --------------------------------------------------------------------------------------------
# Conventions and outputs.

def test_same_padding_is_tf_style():
    """Stride-2 3x3: 224 -> 112 padding 0 top/left, 1 bottom/right; odd 7 -> 4 padding 1 each side."""
    conv = SameConv2d(1, 1, 3, 2)
    x = torch.randn(1, 1, 224, 224)
    ref = torch.nn.functional.conv2d(torch.nn.functional.pad(x, (0, 1, 0, 1)), conv.weight, stride=2)
    assert torch.equal(conv(x), ref) and ref.shape[-2:] == (112, 112)
    x = torch.randn(1, 1, 7, 7)
    assert torch.equal(conv(x), torch.nn.functional.conv2d(x, conv.weight, stride=2, padding=1))


def test_fixed_padding_rejects_other_sizes():
    trunk = mobilenetv3_small_minimal_100().eval()
    trunk.fix_input_size((224, 224))
    with pytest.raises(ValueError, match="224x224"):
        trunk(torch.zeros(1, 3, 160, 160))


def test_outputs_feature_vectors_and_postprocessing(model, images):
    raw = {}
    hook = model.expression_encoder.expression_layers.register_forward_hook(
        lambda mod, inp, out: raw.__setitem__("p", out.detach().clone()))
    try:
        with torch.no_grad():
            out = model(images)
    finally:
        hook.remove()
    assert list(out) == list(OUTPUT_DIMS)  # upstream dict order
    for k, d in OUTPUT_DIMS.items():
        assert out[k].shape == (3, d) and out[k].dtype == torch.float32, k
    assert all(torch.isfinite(v).all() for v in out.values())

    short, full = smirk_short(out), smirk_full(out)
    assert short.shape == (3, SHORT_DIM) == (3, 353)
    assert full.shape == (3, FULL_DIM) == (3, 358)
    order = ["pose_params", "shape_params", "expression_params", "eyelid_params", "jaw_params"]
    assert torch.equal(full, torch.cat([out[k] for k in order], dim=1))  # cam dropped
    assert torch.equal(short, full[:, :353])
    # numpy dicts (ONNX Runtime outputs) give the same vectors
    np.testing.assert_array_equal(smirk_full({k: v.numpy() for k, v in out.items()}), full.numpy())

    # Post-processing equals upstream's clamps of the raw head output, and the raw values do leave the
    # ranges (the synthetic biases put them there), so the clamps are really exercised.
    p = raw["p"]
    assert torch.equal(out["expression_params"], p[:, :50])
    assert torch.equal(out["eyelid_params"], p[:, 50:52].clamp(0, 1))
    assert torch.equal(out["jaw_params"][:, 0], torch.relu(p[:, 52]))
    assert torch.equal(out["jaw_params"][:, 1:], p[:, 53:55].clamp(-0.2, 0.2))
    assert (p[:, 50] < 0).any() and (p[:, 51] > 1).any() and (p[:, 52] < 0).any()
    assert (p[:, 53:55].abs() > 0.2).any()
    assert ((out["eyelid_params"] >= 0) & (out["eyelid_params"] <= 1)).all()
    assert (out["jaw_params"][:, 0] >= 0).all() and (out["jaw_params"][:, 1:].abs() <= 0.2).all()


# --------------------------------------------------------------------------------------------
# ONNX.

@pytest.fixture(scope="module")
def onnx_session(model, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx", reason="exporting needs the onnx package")
    path = tmp_path_factory.mktemp("smirk_onnx") / "smirk.onnx"
    export_smirk_onnx(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # see conftest.one_torch_thread
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch(model, images, onnx_session, batch):
    assert [o.name for o in onnx_session.get_outputs()] == list(ONNX_OUTPUTS)
    x = images[:batch]
    got = onnx_session.run(None, {"image": x.numpy()})
    with torch.no_grad():
        out = model(x)
    want = [smirk_full(out)] + [out[k] for k in ONNX_OUTPUTS[1:]]
    for name, g, w in zip(ONNX_OUTPUTS, got, want):
        assert g.shape == tuple(w.shape), name
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-4, err_msg=name)
