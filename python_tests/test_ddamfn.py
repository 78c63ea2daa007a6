"""DDAMFN (ig3d.models.ddamfn, ig3d.convert.ddamfn): checkpoint schema, strict loading, RAF-DB class
orders, ONNX export.

The oracle for the checkpoint schema is the upstream key list, shared/reference/keys/ddamfn_keys.txt
(SainingZhang/DDAMFN ``DDAMNet(num_class=8, num_head=2).state_dict()``, 1,190 keys); synthetic
checkpoints are built from that file, not from our code.

Parity with upstream, measured once outside the repository (upstream code is not vendored): the
upstream DDAMFN++/networks/{DDAM,MixedFeatureNet}.py at SainingZhang/DDAMFN cebfe5c, built with
``DDAMNet(num_class=C, num_head=2, pretrained=False)`` (no pickled MFN load), random init, BN stats
calibrated on random images then perturbed (so the input survives the 40+ layers), eval mode; its
``state_dict`` saved as ``{'iter', 'model_state_dict', 'optimizer_state_dict'}`` and read back with
``load_ddamfn_checkpoint``. Same random inputs, float32, torch 2.13.0 CPU:
  C=8, batch 1 and 4: logits max|diff| 0.0, 512-d feature max|diff| 0.0 (bit-identical; logits up
      to 3.1, features up to 12.6 in magnitude)
  C=7, batch 1 and 4: 0.0 and 0.0
  upstream state_dict keys and shapes, in order == ddamfn_keys.txt == ig3d upstream_schema(8, 2)
      (and == upstream_schema(7, 2) for the 7-class upstream net)
  (With Tensor.mean in place of upstream's adaptive average pool in the trunk's coordinate attention
  the differences were 4.2e-5 on features and 9.8e-6 on logits; hence the pool.)
ONNX Runtime 1.31.1 vs torch, test_onnx_matches_torch's net (calibrated, outputs O(1)): logits
  1.3e-6 / 1.2e-6, features 3.3e-6 / 3.7e-6 max|diff| at batch 1 / 3 (logits up to 1.1, features up
  to 1.9), with the export's rewrites (merged mixed convs, means as convs, gate products; before
  them: 9.8e-7 / 1.2e-6 and 4.0e-6 / 4.4e-6). The gap is ~1e-5 relative to the activations' scale
  (ORT's conv kernels, a different summation order for the pool), so it grows with the outputs: ONNX vs the upstream net above at C=7, batch 3, features
  up to 37: 3.2e-4 on features, 6.9e-5 on logits.
Runtime of this file on the 2-core dev box: ~19 s (ONNX export ~3.7 s, ORT session ~1.2 s).
"""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
from conftest import reference_key_list

torch = pytest.importorskip("torch", reason="DDAMFN conversion needs torch (pip install ig3d[torch])")

from ig3d.convert.ddamfn import (  # noqa: E402
    AFFECTNET7_LABELS,
    AFFECTNET8_LABELS,
    DDAMFN_FROM_RAFDB,
    DDAMFN_RAFDB_LABELS,
    RAFDB_FROM_DDAMFN,
    RAFDB_LABELS,
    UnsafeCheckpointError,
    build_ddamfn,
    ddamfn_rafdb_to_native,
    dead_keys,
    export_ddamfn_onnx,
    load_ddamfn_checkpoint,
    native_rafdb_to_ddamfn,
    upstream_schema,
)
from ig3d.models.ddamfn import DDAMNet  # noqa: E402

N_KEYS, N_DEAD = 1190, 221


@pytest.fixture(scope="module")
def key_list():
    """[(key, shape)] from ddamfn_keys.txt, in file order."""
    return reference_key_list("ddamfn_keys.txt")


def synthetic_state_dict(key_list, num_classes=8, seed=0):
    """Random tensors of the listed shapes (fc.* and the top-level bn.* resized to ``num_classes``
    rows, as in upstream's 7-class checkpoints); int64 num_batches_tracked; valid BN variances."""
    g = torch.Generator().manual_seed(seed)
    sd = {}
    for key, shape in key_list:
        if key.startswith(("fc.", "bn.")):
            shape = (num_classes,) + shape[1:]
        if key.endswith("num_batches_tracked"):
            sd[key] = torch.tensor(int(torch.randint(0, 10_000, (), generator=g)), dtype=torch.int64)
        elif key.endswith("running_var"):
            sd[key] = torch.rand(shape, generator=g) + 0.5
        elif len(shape) >= 2:  # conv / linear weights at fan-in scale
            sd[key] = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        else:
            sd[key] = 0.1 * torch.randn(shape, generator=g) + (1.0 if key.endswith(".weight") else 0.0)
    return sd


def wrapped(sd):
    """Upstream's training-checkpoint layout (SainingZhang/DDAMFN: DDAMFN++/rafdb_train_sam_opt_ver2.0.py)."""
    return {"iter": 20, "model_state_dict": sd,
            "optimizer_state_dict": {"state": {0: {"step": torch.tensor(3.0)}}, "param_groups": [{"lr": 1e-4}]}}


@pytest.fixture(scope="module")
def sd8(key_list):
    return synthetic_state_dict(key_list, 8)


# --- schema ---------------------------------------------------------------------------------------

def test_schema_equals_upstream_key_list(key_list):
    assert len(key_list) == N_KEYS
    assert list(upstream_schema(8, 2).items()) == key_list  # names, shapes and order

    dead = dead_keys(8, 2)
    assert len(dead) == N_DEAD
    # REFERENCE section 4: every conv_dw.bn / conv_dw.prelu, each head's CoordAtt.Linear, top-level bn
    assert all(".conv_dw.bn." in k or k.endswith(".conv_dw.prelu.weight") or ".CoordAtt.Linear." in k
               or k.startswith("bn.") for k in dead)
    live = DDAMNet(8, 2).state_dict()
    assert set(live) | set(dead) == {k for k, _ in key_list} and not set(live) & set(dead)
    # trainable dead values (REFERENCE: 81,424) and the upstream parameter count (4,187,936)
    n_dead = sum(math.prod(s) for k, s in dead.items()
                 if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    n_live = sum(p.numel() for p in DDAMNet(8, 2).parameters())
    assert (n_dead, n_live + n_dead) == (81_424, 4_187_936)

    s7 = upstream_schema(7, 2)
    assert s7["fc.weight"] == (7, 512) and s7["bn.running_var"] == (7,) and len(s7) == N_KEYS


# --- loading ----------------------------------------------------------------------------------------

def test_wrapped_checkpoint_loads_strictly(tmp_path, sd8):
    path = tmp_path / "affecnet8.pth"
    torch.save(wrapped(sd8), path)
    model = load_ddamfn_checkpoint(path)
    assert isinstance(model, DDAMNet) and not model.training
    assert (model.num_classes, model.num_head) == (8, 2)
    got = model.state_dict()
    assert len(got) == N_KEYS - N_DEAD
    for k, v in got.items():
        assert torch.equal(v, sd8[k]), k


def test_seven_class_checkpoint(tmp_path, key_list):
    sd7 = synthetic_state_dict(key_list, 7, seed=1)
    path = tmp_path / "rafdb.pth"
    torch.save(wrapped(sd7), path)
    model = load_ddamfn_checkpoint(path)
    assert model.num_classes == 7 and model.fc.weight.shape == (7, 512)
    assert torch.equal(model.fc.bias, sd7["fc.bias"])


def test_bare_state_dict_and_missing_dead_keys(tmp_path, sd8):
    path = tmp_path / "bare.pth"
    torch.save(sd8, path)
    assert load_ddamfn_checkpoint(path).num_classes == 8
    # dead keys are optional: ig3d's own state_dict (live keys only) round-trips
    dead = dead_keys(8, 2)
    live_only = {k: v for k, v in sd8.items() if k not in dead}
    assert len(build_ddamfn(live_only).state_dict()) == len(live_only)


@pytest.mark.parametrize("key", ["features.5.model.3.CA.conv2.bias", "cat_head1.CoordAtt.Linear_w.conv.weight",
                                 "Linear.bn.running_var"])
def test_missing_key_is_named(sd8, key):
    sd = dict(sd8)
    del sd[key]
    with pytest.raises(ValueError, match="missing keys: " + key.replace(".", r"\.")):
        build_ddamfn(sd)


@pytest.mark.parametrize("key", ["module.fc.weight", "features.9.conv.weight", "cat_head0.CoordAtt.pool_h.weight"])
def test_unexpected_key_is_named(sd8, key):
    sd = dict(sd8)
    sd[key] = torch.zeros(3)
    with pytest.raises(ValueError, match=r"unexpected keys: .*" + key.replace(".", r"\.") + r" \[3\]"):
        build_ddamfn(sd)


@pytest.mark.parametrize("key,shape,expected", [
    ("cat_head1.CoordAtt.conv1.weight", (8, 512, 1, 1), (16, 512, 1, 1)),
    ("features.7.model.5.conv_dw.mixed_depthwise_conv.2.weight", (170, 1, 5, 5), (170, 1, 7, 7)),
    ("features.2.conv_dw.bn.weight", (64,), (128,)),     # a dead key is still shape-checked
    ("bn.running_mean", (7,), (8,)),                     # the dead top-level bn must match fc
])
def test_wrong_shape_is_named(sd8, key, shape, expected):
    sd = dict(sd8)
    sd[key] = torch.zeros(shape)
    msg = f"{key}: shape {list(shape)} in the checkpoint, {list(expected)} expected"
    with pytest.raises(ValueError, match=msg.replace(".", r"\.").replace("[", r"\[").replace("]", r"\]")):
        build_ddamfn(sd)


def test_other_malformed_inputs(tmp_path, sd8):
    with pytest.raises(ValueError, match="fc.weight"):
        build_ddamfn({k: v for k, v in sd8.items() if k != "fc.weight"})
    with pytest.raises(ValueError, match="cat_head"):
        build_ddamfn({k: v for k, v in sd8.items() if not k.startswith("cat_head")})
    bad = dict(sd8, **{"features.0.bn.num_batches_tracked": torch.tensor(1.0)})
    with pytest.raises(ValueError, match="features.0.bn.num_batches_tracked: dtype"):
        build_ddamfn(bad)
    path = tmp_path / "extra.pth"
    torch.save(dict(wrapped(sd8), scheduler={"last_epoch": 3}), path)
    with pytest.raises(ValueError, match="unexpected top-level entries.*scheduler"):
        load_ddamfn_checkpoint(path)


def test_pickled_objects_need_trust(tmp_path):
    # A whole pickled module, like upstream's pretrained/MFN_msceleb.pth (REFERENCE 1.8, bug 7).
    net = DDAMNet(7, 2).eval()
    path = tmp_path / "whole_module.pth"
    torch.save(net, path)
    with pytest.raises(UnsafeCheckpointError, match="trust_checkpoint=True") as err:
        load_ddamfn_checkpoint(path)
    assert isinstance(err.value, ValueError) and isinstance(err.value.__cause__, pickle.UnpicklingError)
    model = load_ddamfn_checkpoint(path, trust_checkpoint=True)
    assert model.num_classes == 7
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), net.state_dict().values()))


# --- class orders -----------------------------------------------------------------------------------

def test_label_tuples():
    assert AFFECTNET8_LABELS == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
    assert AFFECTNET7_LABELS == AFFECTNET8_LABELS[:7]
    assert sorted(RAFDB_LABELS) == sorted(DDAMFN_RAFDB_LABELS) == sorted(AFFECTNET7_LABELS)


def test_rafdb_reorder_maps():
    fwd, inv = np.array(RAFDB_FROM_DDAMFN), np.array(DDAMFN_FROM_RAFDB)
    assert (fwd.tolist(), inv.tolist()) == ([3, 4, 5, 1, 2, 6, 0], [6, 3, 4, 0, 1, 2, 5])  # REFERENCE 1.5
    assert sorted(fwd) == list(range(7)) and (fwd[inv] == np.arange(7)).all() and (inv[fwd] == np.arange(7)).all()
    # names: slot i of the native order holds the DDAMFN++ score of the same emotion
    assert tuple(DDAMFN_RAFDB_LABELS[j] for j in fwd) == RAFDB_LABELS
    assert tuple(RAFDB_LABELS[j] for j in inv) == DDAMFN_RAFDB_LABELS

    # one-hot "happy" logits in DDAMFN++ order land on native "happy"; numpy and torch, batched
    s = np.zeros((2, 7), np.float32)
    s[:, DDAMFN_RAFDB_LABELS.index("happy")] = 1
    native = ddamfn_rafdb_to_native(s)
    assert native.shape == (2, 7) and (native.argmax(1) == RAFDB_LABELS.index("happy")).all()
    np.testing.assert_array_equal(native_rafdb_to_ddamfn(native), s)
    t = torch.arange(14.0).reshape(2, 7)
    assert torch.equal(native_rafdb_to_ddamfn(ddamfn_rafdb_to_native(t)), t)
    with pytest.raises(ValueError, match="7 RAF-DB scores"):
        ddamfn_rafdb_to_native(np.zeros((2, 8)))


# --- ONNX -------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def lively_model(sd8):
    """The synthetic 8-class net with its live BN statistics calibrated on random images.

    Random weights with arbitrary BN statistics make the output input-independent (the signal dies in
    40+ layers, into denormals that also make the CPU crawl), which would make a weak comparison.
    The final BN is scaled by 1/4 so the 512-d feature is O(1): ONNX Runtime and torch differ by
    ~1e-5 relative to the activations' scale (different conv kernels, ReduceMean for the pool)."""
    model = build_ddamfn(sd8)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the calibration batch
    model.train()
    with torch.no_grad():
        model(torch.randn(8, 3, 112, 112, generator=torch.Generator().manual_seed(1)))
        model.Linear.bn.weight.mul_(0.25)
        model.Linear.bn.bias.mul_(0.25)
    for m in bns:
        m.momentum = 0.1
    return model.eval()


@pytest.fixture(scope="module")
def onnx_path(lively_model, tmp_path_factory):
    pytest.importorskip("onnx", reason="onnx is needed to export")
    path = tmp_path_factory.mktemp("ddamfn") / "ddamfn.onnx"
    export_ddamfn_onnx(lively_model, path)
    return path


def test_onnx_graph(onnx_path):
    import onnx

    m = onnx.load(str(onnx_path))
    assert max(o.version for o in m.opset_import if o.domain in ("", "ai.onnx")) == 17
    assert [i.name for i in m.graph.input] == ["input"]
    assert [o.name for o in m.graph.output] == ["logits", "features"]
    assert m.graph.input[0].type.tensor_type.shape.dim[0].dim_param == "batch"
    # no dead upstream parameter can be in the file: fewer values than the live parameters alone
    # (not counting what the export passes add: the zeros around the smaller kernels of a merged
    # mixed depthwise conv, the 1/n kernels of the coordinate-attention means)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
    n_init = sum(int(np.count_nonzero(v)) if k.endswith("__merged_weight") else v.size
                 for k, v in inits.items() if not k.endswith("__mean_kernel"))
    assert n_init <= sum(p.numel() for p in DDAMNet(8, 2).parameters())
    # the export passes ran: no split/concat mixed convs, no ReduceMean, no broadcast gate pairs
    ops = [n.op_type for n in m.graph.node]
    assert "Split" not in ops and "ReduceMean" not in ops and "PRelu" not in ops
    assert sum(k.endswith("__merged_weight") for k in inits) == 34 and ops.count("MatMul") == 34 + 2  # one gate product per CoordAtt
    names = " ".join(t.name for t in m.graph.initializer)
    assert "conv_dw.bn" not in names and "CoordAtt.Linear." not in names


@pytest.fixture(scope="module")
def onnx_session(onnx_path):
    ort = pytest.importorskip("onnxruntime", reason="onnxruntime runs the exported graph")
    return ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])


@pytest.mark.parametrize("batch", [1, 3])
def test_onnx_matches_torch(lively_model, onnx_session, batch):
    sess = onnx_session
    x = torch.randn(batch, 3, 112, 112, generator=torch.Generator().manual_seed(10 + batch))
    logits, feats = sess.run(["logits", "features"], {"input": x.numpy()})
    with torch.no_grad():
        ref_logits, ref_feats = lively_model.forward_with_features(x)
        assert torch.equal(ref_logits, lively_model(x)) and torch.equal(ref_feats, lively_model.features(x))
    assert logits.shape == (batch, 8) and feats.shape == (batch, 512)
    # the net is not degenerate: different images give different outputs
    assert batch == 1 or float(ref_feats.std(0).mean()) > 0.1
    np.testing.assert_allclose(logits, ref_logits.numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(feats, ref_feats.numpy(), rtol=0, atol=1e-4)
