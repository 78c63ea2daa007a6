"""CAGE (ig3d.models.maxvit, ig3d.models.cage, ig3d.convert.cage): key schema, strict checkpoint
validation, variant detection, 224-only input, features, ONNX export.

Equality with torchvision was measured outside the repo (no torchvision here): torchvision 0.29.1 with
torch 2.14.1 (CPU) in a separate venv, ``maxvit_t(weights=None)`` with its classifier replaced exactly as
CAGE does (wagner-niklas/CAGE_expression_inference: models/AffectNet8_Maxvit_Combined/generate_csv.py,
models/AffectNet8_Maxvit_VA/generate_csv.py), eval mode, both as initialised and with every float entry
randomised (BN statistics, biases, bias tables); state dicts read here through
:func:`load_cage_checkpoint` under torch 2.13.0. Max abs diff in float32 on 3x3x224x224 inputs: **0.0**
(bitwise equal) for outputs and 512-d features, both variants, both inits; plain ``MaxViT()`` against
torchvision's ImageNet ``maxvit_t``: 0.0 as well. Key names, order, shapes and dtypes equal torchvision's
(582 entries; python_tests/data/maxvit_t_keys.txt, see python_tests/data/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="CAGE / MaxViT need torch (pip install 'ig3d[torch]')")

from ig3d.convert.cage import (  # noqa: E402  (after the torch skip)
    ONNX_OUTPUTS,
    UnsafeCheckpointError,
    build_cage,
    cage_schema,
    export_cage_onnx,
    infer_cage_variant,
    load_cage_checkpoint,
    read_cage_state_dict,
)
from ig3d.models.cage import CageNet  # noqa: E402
from ig3d.models.maxvit import MaxViT, PartitionAttention, relative_position_index  # noqa: E402

KEYS_FILE = Path(__file__).resolve().parent / "data" / "maxvit_t_keys.txt"
# Integer entries of a MaxViT state dict; everything else is float32.
INT_SUFFIXES = ("num_batches_tracked", "relative_position_index")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _parse_shape(text: str):
    text = text.strip()[1:-1].strip()
    return tuple(int(t) for t in text.split(",")) if text else ()


@pytest.fixture(scope="module")
def tv_keys():
    """[(key, shape)] of torchvision ``maxvit_t(weights=None).state_dict()`` (ImageNet head), in order."""
    rows = []
    for line in KEYS_FILE.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, _parse_shape(shape)))
    return rows


def _randomise(sd, seed: int = 0) -> None:
    """In place: every float entry random (BN statistics too), scaled so activations stay O(1), so that
    the checkpoint's values, not the init's identities, decide the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for k, v in sd.items():
            if not v.is_floating_point():
                continue
            if k.endswith("running_var"):
                v.copy_(torch.rand(v.shape, generator=g) * 0.5 + 0.75)
            elif k.endswith("running_mean"):
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
            elif v.ndim == 1 and k.endswith("weight"):              # BN / LayerNorm scale
                v.copy_(torch.rand(v.shape, generator=g) * 0.4 + 0.8)
            elif v.ndim == 1:                                        # biases
                v.copy_(torch.randn(v.shape, generator=g) * 0.1)
            elif k.endswith("relative_position_bias_table"):
                v.copy_(torch.randn(v.shape, generator=g) * 0.5)
            else:                                                    # conv / linear weights
                fan_in = int(np.prod(v.shape[1:]))
                v.copy_(torch.randn(v.shape, generator=g) * fan_in ** -0.5)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A synthetic combined CAGE ``model.pt``: our CageNet's randomised ``state_dict()``, saved bare as
    CAGE's train.py does."""
    torch.manual_seed(0)
    sd = CageNet("combined").state_dict()
    _randomise(sd)
    path = tmp_path_factory.mktemp("cage") / "model.pt"
    torch.save(sd, path)
    return path, sd


@pytest.fixture(scope="module")
def model(checkpoint):
    return load_cage_checkpoint(checkpoint[0])


@pytest.fixture(scope="module")
def images():
    g = torch.Generator().manual_seed(7)
    return torch.randn(2, 3, 224, 224, generator=g)


@pytest.fixture(scope="module")
def reference(model, images):
    """Torch outputs and features at batch 1 and 2, computed once (a forward costs ~0.3 s per image)."""
    with torch.no_grad():
        return {b: model.forward_with_features(images[:b]) for b in (1, 2)}


def _va_state_dict(sd):
    """The combined dict turned into a VA one: the last Linear moves to classifier.6 with 2 rows."""
    va = dict(sd)
    w = va.pop("classifier.5.weight")
    va["classifier.6.weight"] = w[8:10].clone()
    return va


def _save(tmp_path, obj, name="ckpt.pt"):
    p = tmp_path / name
    torch.save(obj, p)
    return p


# --------------------------------------------------------------------------------------------
# Schema.

def test_maxvit_keys_equal_torchvision(tv_keys):
    assert len(tv_keys) == 582
    with torch.device("meta"):
        ours = [(k, tuple(v.shape)) for k, v in MaxViT().state_dict().items()]
    assert ours == tv_keys


@pytest.mark.parametrize("variant,last", [("combined", ("classifier.5.weight", (10, 512))),
                                          ("va", ("classifier.6.weight", (2, 512)))])
def test_cage_keys_equal_torchvision_with_cage_head(tv_keys, variant, last):
    # CAGE's classifier differs from torchvision's ImageNet one only in its last Linear (and, for VA,
    # the Dropout before it that shifts the index): every other key is torchvision's.
    assert tv_keys[-1] == ("classifier.5.weight", (1000, 512))
    schema = cage_schema(variant)
    assert [(k, s) for k, (s, _) in schema.items()] == tv_keys[:-1] + [last]
    for k, (_, dtype) in schema.items():
        assert dtype == (torch.int64 if k.endswith(INT_SUFFIXES) else torch.float32), k


def test_relative_position_index_offsets():
    idx = relative_position_index(7)
    assert idx.shape == (49, 49) and idx.dtype == torch.int64
    assert idx.min() == 0 and idx.max() == 13 * 13 - 1
    assert torch.equal(idx.diagonal(), torch.full((49,), 6 * 13 + 6))  # zero offset: centre of the table
    # token 0 = (0, 0), token 8 = (1, 1): offset (-1, -1) -> (5, 5); and the opposite offset (1, 1) -> (7, 7)
    assert idx[0, 8] == 5 * 13 + 5 and idx[8, 0] == 7 * 13 + 7


# --------------------------------------------------------------------------------------------
# Loading and validation.

def test_synthetic_checkpoint_loads_strictly(checkpoint, model):
    _, sd = checkpoint
    assert isinstance(model, CageNet) and model.variant == "combined" and not model.training
    got = model.state_dict()
    assert list(got) == list(sd)
    for k, v in sd.items():
        assert torch.equal(got[k], v), k


def test_wrapped_checkpoint(checkpoint, tmp_path):
    _, sd = checkpoint
    p = _save(tmp_path, {"model_state_dict": sd, "epoch": 3, "optimizer_state_dict": {}})
    assert list(read_cage_state_dict(p)) == list(sd)
    p = _save(tmp_path, {"model_state_dict": sd, "notes": "x"}, "odd.pt")
    with pytest.raises(ValueError, match=r"unexpected top-level entries \['notes'\]"):
        read_cage_state_dict(p)


def test_missing_key_is_named(checkpoint, tmp_path):
    sd = dict(checkpoint[1])
    del sd["blocks.2.layers.4.layers.grid_attention.attn_layer.1.to_qkv.bias"]
    with pytest.raises(ValueError, match=r"model\.pt: not a CAGE combined state dict; missing keys: blocks\.2\."
                                         r"layers\.4\.layers\.grid_attention\.attn_layer\.1\.to_qkv\.bias \[768\]"):
        load_cage_checkpoint(_save(tmp_path, sd, "model.pt"))


@pytest.mark.parametrize("key", ["blocks.0.layers.0.layers.MBconv.extra.weight", "module.stem.0.0.weight"])
def test_unexpected_key_is_named(checkpoint, tmp_path, key):
    sd = dict(checkpoint[1])
    sd[key] = torch.zeros(2, 5)
    with pytest.raises(ValueError, match=r"unexpected keys: " + key.replace(".", r"\.") + r" \[2, 5\]"):
        load_cage_checkpoint(_save(tmp_path, sd))


def test_wrong_shape_is_named(checkpoint, tmp_path):
    sd = dict(checkpoint[1])
    sd["blocks.1.layers.0.layers.MBconv.layers.squeeze_excitation.fc1.weight"] = torch.zeros(16, 512, 1, 1)
    with pytest.raises(ValueError, match=r"squeeze_excitation\.fc1\.weight: shape \[16, 512, 1, 1\] in the "
                                         r"checkpoint, \[32, 512, 1, 1\] expected"):
        load_cage_checkpoint(_save(tmp_path, sd))
    with pytest.raises(ValueError, match=r"fc1\.weight: shape \[16, 512, 1, 1\]"):
        build_cage(sd)  # a state dict handed over directly is validated too


def test_wrong_dtype_and_foreign_index_are_named(checkpoint):
    sd = dict(checkpoint[1])
    sd["stem.0.1.num_batches_tracked"] = torch.tensor(1.0)
    key = "blocks.3.layers.1.layers.window_attention.attn_layer.1.relative_position_index"
    sd[key] = sd[key].flip(0)
    with pytest.raises(ValueError, match=r"num_batches_tracked: dtype torch\.float32 is not an integer type.*"
                                         + key.replace(".", r"\.") + r": not MaxViT's relative-position index"):
        build_cage(sd)


def test_variant_detection(checkpoint):
    sd = checkpoint[1]
    assert infer_cage_variant(sd) == "combined"
    with pytest.raises(ValueError, match=r"variant must be one of \['combined', 'va'\]"):
        CageNet("affectnet7")
    va = _va_state_dict(sd)
    assert infer_cage_variant(va) == "va"
    model = build_cage(va)
    assert model.variant == "va" and model.num_outputs == 2 and not model.training
    assert isinstance(model.classifier[5], torch.nn.Dropout) and model.classifier[5].p == 0.3
    # An explicit variant that disagrees with the classifier: the validation says which keys are off.
    with pytest.raises(ValueError, match=r"not a CAGE va state dict; missing keys: classifier\.6\.weight "
                                         r"\[2, 512\]; unexpected keys: classifier\.5\.weight \[10, 512\]"):
        build_cage(sd, variant="va")


@pytest.mark.parametrize("rows", [9, 1000])
def test_unknown_classifier_is_refused(checkpoint, rows):
    # 9 outputs: CAGE's AffectNet-7 combined model; 1000: torchvision's ImageNet maxvit_t.
    sd = dict(checkpoint[1])
    sd["classifier.5.weight"] = torch.zeros(rows, 512)
    with pytest.raises(ValueError, match=rf"cannot tell the CAGE variant.*found classifier\.5\.weight \[{rows}, 512\]"):
        build_cage(sd)
    del sd["classifier.5.weight"]
    with pytest.raises(ValueError, match=r"cannot tell the CAGE variant.*found classifier\.2\.bias \[512\]"):
        infer_cage_variant(sd)


def test_weights_only_refuses_pickled_module(model, tmp_path):
    path = _save(tmp_path, model, "whole_model.pt")  # torch.save(MODEL): code, not just tensors
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True"):
        load_cage_checkpoint(path)
    trusted = load_cage_checkpoint(path, trust_checkpoint=True)
    assert trusted.variant == "combined"


# --------------------------------------------------------------------------------------------
# Inputs and outputs.

@pytest.mark.parametrize("shape", [(1, 3, 160, 160), (1, 3, 224, 192), (1, 1, 224, 224), (3, 224, 224)])
def test_only_224_input(model, shape):
    with pytest.raises(ValueError, match=r"224x224 only"):
        model(torch.zeros(shape))
    with pytest.raises(ValueError, match=r"224x224 only"):
        model.features(torch.zeros(shape))


def test_outputs_and_features(model, images, reference):
    out, feat = reference[2]
    assert out.shape == (2, 10) and feat.shape == (2, 512)
    assert out.dtype == feat.dtype == torch.float32
    assert (feat.abs() < 1).all()                                    # after Tanh
    assert (out[0] - out[1]).abs().max() > 1e-3                     # the images are told apart
    with torch.no_grad():
        m = model.forward_features(images)
        assert m.shape == (2, 512, 7, 7)
        # features = Tanh(Linear(LayerNorm(mean over 7x7))); outputs = the last Linear of the features
        c = model.classifier
        manual = torch.tanh(c[3](c[2](m.mean(dim=(2, 3)))))
        torch.testing.assert_close(feat, manual, rtol=0, atol=1e-6)
        # forward / features / forward_with_features agree (the backbone map reused: forwards are slow)
        assert torch.equal(model.classifier(m), out)
        assert torch.equal(model.classifier[:5](m), feat)
        assert torch.equal(model.classifier[5](feat), out)
        assert torch.equal(model(images[:1]), reference[1][0])


# --------------------------------------------------------------------------------------------
# ONNX.

@pytest.mark.parametrize("kind", ["window", "grid"])
@pytest.mark.parametrize("grid", [7, 14, 28])
def test_map_tokens_equal_partitioned_attention(kind, grid):
    """The export form of an attention layer (both branches on the channels-last map's tokens, one
    Transpose for q|k|v and one for the output) gives the numbers of the partitioned forward. The
    bias table is made large so that the order of the tokens inside each group matters too."""
    torch.manual_seed(grid)
    att = PartitionAttention(64, kind, grid).eval()
    with torch.no_grad():
        att.attn_layer[1].relative_position_bias_table.normal_(0.0, 2.0)
    x = torch.randn(2, 64, grid, grid)
    with torch.inference_mode():
        want = att(x)
        got = att.map_tokens(x.permute(0, 2, 3, 1).reshape(-1, 64)).reshape(2, grid, grid, 64).permute(0, 3, 1, 2)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)
    if grid > 7:  # with one group, window and grid attention coincide
        other = PartitionAttention(64, "grid" if kind == "window" else "window", grid).eval()
        other.load_state_dict(att.state_dict())
        with torch.inference_mode():
            assert (other(x) - want).abs().max() > 1e-2


@pytest.fixture(scope="module")
def onnx_session(model, tmp_path_factory):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx", reason="exporting needs the onnx package")
    path = tmp_path_factory.mktemp("cage_onnx") / "cage.onnx"
    export_cage_onnx(model, path)
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1  # see conftest.one_torch_thread
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def test_onnx_signature(onnx_session):
    assert [i.name for i in onnx_session.get_inputs()] == ["input"]
    assert onnx_session.get_inputs()[0].shape == ["batch", 3, 224, 224]
    assert [(o.name, o.shape) for o in onnx_session.get_outputs()] == [
        ("outputs", ["batch", 10]), ("features", ["batch", 512])]
    assert list(ONNX_OUTPUTS) == ["outputs", "features"]


@pytest.mark.parametrize("batch", [1, 2])
def test_onnx_matches_torch(onnx_session, images, reference, batch):
    got = onnx_session.run(None, {"input": images[:batch].numpy()})
    for name, g, w in zip(ONNX_OUTPUTS, got, reference[batch]):
        assert g.shape == tuple(w.shape), name
        np.testing.assert_allclose(g, w.numpy(), rtol=0, atol=1e-4, err_msg=name)
