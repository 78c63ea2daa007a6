"""Ig3D heads (ig3d.models.ig3d_heads, ig3d.convert.ig3d_heads): keys and sizes, strict loading,
export to the fused head, feature sets and late fusion.

Equality with upstream was measured outside the repo (no upstream code is kept here): the head
classes of dongludeeplearning/Ig3D @ 23b3b15 (models/classification/{nofusion,latefusion}/networks/
SER.py: all nine MLP4 classes and SmirkEmoRecognition_S; EmocaFER with its Linear(2048->2) output;
the four DDAM_smirkfusion_feature.py networks, whole, against ig3d's DDAMNet trunk + DDAMFNFusionHead;
CustomClassifier with K=10 and K=2) with torch 2.13.0 CPU, random weights, randomised BatchNorm
statistics and affine parameters, eval mode, their state dicts loaded strictly into ig3d's heads.
Max abs diff of the raw outputs (|out| up to ~3.7): **0.0** for every head (and upstream's returned
tuples read as [8] V / [9] A agree); ig3d's fused head (C++ kernel, fp32) against upstream: at most
**6.4e-6**, also when selecting EMOCA-short / SMIRK-short out of the raw full vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the Ig3D torch heads need torch (pip install 'ig3d[torch]')")

from ig3d.convert import ig3d_heads as H  # noqa: E402  (after the torch skip)
from ig3d.convert.checkpoint import UnsafeCheckpointError  # noqa: E402
from ig3d.convert.ddamfn import (  # noqa: E402
    AFFECTNET8_LABELS,
    DDAMFN_FROM_RAFDB,
    RAFDB_LABELS,
    ddamfn_rafdb_to_native,
)
from ig3d.models.ig3d_heads import CageFusionHead, DDAMFNFusionHead, MLP4, ResidualHead  # noqa: E402
from ig3d.models.smirk import FULL_DIM, SHORT_DIM  # noqa: E402

TOL = 1e-4  # fused head (fp32 C++) vs torch eval
B = 5


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _randomise(model, seed=0, out_scale=4.0):
    """Random weights, BatchNorm statistics and affine parameters; a larger output layer so outputs
    are O(1) and a missed BN or activation would show."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.empty_like(p).uniform_(-1, 1, generator=g) / np.sqrt(max(p.shape[-1], 1)))
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm1d):
                m.running_mean.uniform_(-0.5, 0.5, generator=g)
                m.running_var.uniform_(0.3, 2.0, generator=g)
                m.weight.uniform_(0.5, 1.5, generator=g)
                m.bias.uniform_(-0.3, 0.3, generator=g)
                m.num_batches_tracked.fill_(3)
        last = [m for m in model.modules() if isinstance(m, torch.nn.Linear)][-1]
        last.weight.mul_(out_scale)
    return model.eval()


def _x(dim, seed=1, n=B):
    return torch.randn(n, dim, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def mlp():
    """One randomised MLP4 per input width the late-fusion tests need (13 M parameters each)."""
    cache = {}

    def get(dim, out_dim=10):
        if (dim, out_dim) not in cache:
            torch.manual_seed(dim)
            cache[dim, out_dim] = _randomise(MLP4(dim, out_dim), seed=dim + out_dim)
        return cache[dim, out_dim]
    return get


# ---------------------------------------------------------------------------------------------
# Keys, shapes, parameter counts (docs REFERENCE 1.2)

MLP4_PARAMS = {156: 12_947_466, 334: 13_312_010, 353: 13_350_922, 358: 13_361_162}
MLP4_MILLIONS = {156: 12.95, 334: 13.31, 353: 13.35, 358: 13.36}


def _meta(cls, *args, **kwargs):
    with torch.device("meta"):
        return cls(*args, **kwargs)


def _nparams(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("dim", [156, 334, 353, 358])
def test_mlp4_keys_shapes_params(dim):
    m = _meta(MLP4, dim)

    def bn(i):
        return [(f"bn{i}.{k}", (2048,)) for k in ("weight", "bias", "running_mean", "running_var")] + [
            (f"bn{i}.num_batches_tracked", ())]
    want = [("fc1.weight", (2048, dim)), ("fc1.bias", (2048,))] + bn(1)
    for i in (2, 3, 4):
        want += [(f"fc{i}.weight", (2048, 2048)), (f"fc{i}.bias", (2048,))] + bn(i)
    want += [("output.weight", (10, 2048)), ("output.bias", (10,))]
    assert list(H.head_schema(m).items()) == want  # names, shapes and upstream's order
    assert _nparams(m) == MLP4_PARAMS[dim]
    assert round(_nparams(m) / 1e6, 2) == MLP4_MILLIONS[dim]
    assert all(bn.eps == 1e-5 for _, bn in m.stages())


def test_residual_keys_params():
    m = _meta(ResidualHead)
    assert list(H.head_schema(m).items()) == [
        ("Smirk_Linear.weight", (512, 353)), ("Smirk_Linear.bias", (512,)),
        ("residual_block1.0.weight", (1024, 512)), ("residual_block1.0.bias", (1024,)),
        ("residual_block1.3.weight", (512, 1024)), ("residual_block1.3.bias", (512,)),
        ("residual_block2.0.weight", (512, 512)), ("residual_block2.0.bias", (512,)),
        ("residual_block2.3.weight", (512, 512)), ("residual_block2.3.bias", (512,)),
        ("fc.weight", (10, 512)), ("fc.bias", (10,))]
    assert _nparams(m) == 1_761_802 and round(_nparams(m) / 1e6, 2) == 1.76


@pytest.mark.parametrize("dim,out", [(156, 10), (334, 7), (353, 10), (358, 7)])
def test_fusion_head_keys(dim, out):
    assert list(H.head_schema(_meta(DDAMFNFusionHead, dim, out)).items()) == [
        ("Wash_Linear1.weight", (512, dim)), ("Wash_Linear1.bias", (512,)),
        ("linear_fusion.0.weight", (2048, 1024)), ("linear_fusion.0.bias", (2048,)),
        ("linear_fusion.2.weight", (1024, 2048)), ("linear_fusion.2.bias", (1024,)),
        ("out.weight", (out, 1024)), ("out.bias", (out,))]
    assert list(H.head_schema(_meta(CageFusionHead, dim, out)).items()) == [
        ("additional_feature_transform.weight", (512, dim)), ("additional_feature_transform.bias", (512,)),
        ("classifier.0.weight", (512, 1024)), ("classifier.0.bias", (512,)), ("classifier.2.weight", (out, 512))]


# ---------------------------------------------------------------------------------------------
# Loading


def _small_heads():
    torch.manual_seed(0)
    return [_randomise(ResidualHead()), _randomise(DDAMFNFusionHead(334, 7)), _randomise(CageFusionHead(156, 2))]


def _run(m, x, f2d=None):
    with torch.no_grad():
        return m(x) if f2d is None else m(x, f2d)


def test_state_dict_round_trip(mlp, tmp_path):
    heads = [mlp(156)] + _small_heads()
    kinds = ["mlp4", "residual", "ddamfn_fusion", "cage_fusion"]
    for m, kind in zip(heads, kinds):
        sd = m.state_dict()
        assert H.infer_head(sd) == (kind, {"in_dim": m.in_dim, "out_dim": m.out_dim})
        x = _x(m.in_dim)
        f2d = None if kind in ("mlp4", "residual") else _x(512, seed=2)
        want = _run(m, x, f2d)
        got = H.build_head(sd)
        assert type(got) is type(m) and not got.training
        assert torch.equal(_run(got, x, f2d), want)
        # files: upstream classification scripts wrap it in model_state_dict, the VA ones save it bare
        wrapped, bare = tmp_path / f"{kind}_wrapped.pth", tmp_path / f"{kind}_bare.pt"
        torch.save({"iter": 3, "model_state_dict": sd, "optimizer_state_dict": {}}, wrapped)
        torch.save(sd, bare)
        for path in (wrapped, bare):
            assert torch.equal(_run(H.load_head_checkpoint(path, kind=kind), x, f2d), want)


def test_loading_errors(tmp_path):
    sd = ResidualHead().state_dict()
    bad = dict(sd)
    del bad["fc.bias"]
    bad["extra.weight"] = torch.zeros(3)
    bad["Smirk_Linear.weight"] = torch.zeros(512, 358)
    with pytest.raises(ValueError) as e:
        H.load_head_state_dict(ResidualHead(), bad)
    msg = str(e.value)
    assert "missing keys: fc.bias" in msg and "unexpected keys: extra.weight" in msg
    assert "Smirk_Linear.weight [512, 358] (expected [512, 353])" in msg
    # build_head infers D from Smirk_Linear, so only the missing/unexpected keys are reported there
    with pytest.raises(ValueError, match="missing keys: fc.bias.*unexpected keys: extra.weight"):
        H.build_head(bad)
    with pytest.raises(ValueError, match="holds a 'residual' head"):
        H.build_head(sd, "mlp4")
    with pytest.raises(ValueError, match="cannot tell the Ig3D head type"):
        H.build_head({"foo.weight": torch.zeros(2, 2)})
    # an MLP4 with a wrong hidden shape; dtype checks
    m = _meta(MLP4, 156).state_dict()
    m = {k: torch.zeros(v.shape, dtype=v.dtype) for k, v in m.items()}
    m["fc2.weight"] = torch.zeros(2048, 1024)
    m["bn1.num_batches_tracked"] = torch.tensor(1.0)
    with pytest.raises(ValueError) as e:
        H.build_head(m)
    assert "fc2.weight [2048, 1024] (expected [2048, 2048])" in str(e.value)
    assert "bn1.num_batches_tracked has dtype torch.float32" in str(e.value)
    # a whole DDAMFN intermediate-fusion network: the error points at the split
    whole = dict(_meta(DDAMFNFusionHead, 156).state_dict())
    whole["features.0.conv.weight"] = torch.zeros(64, 3, 3, 3)
    with pytest.raises(ValueError, match="split_ddamfn_fusion_state_dict"):
        H.build_head({k: torch.zeros(v.shape, dtype=v.dtype) for k, v in whole.items()})
    head, trunk = H.split_ddamfn_fusion_state_dict(whole)
    assert sorted(trunk) == ["features.0.conv.weight"] and len(head) == 8
    # files
    with pytest.raises(FileNotFoundError):
        H.load_head_checkpoint(tmp_path / "nope.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="junk.pt"):
        H.load_head_checkpoint(tmp_path / "junk.pt")
    torch.save({"model_state_dict": bad}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match=r"bad\.pth: .*missing keys: fc\.bias"):
        H.load_head_checkpoint(tmp_path / "bad.pth")
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(ValueError, match="expected a state dict"):
        H.read_head_state_dict(tmp_path / "list.pt")
    torch.save({"model": ResidualHead()}, tmp_path / "pickled.pt")  # needs full unpickling
    with pytest.raises(UnsafeCheckpointError):
        H.read_head_state_dict(tmp_path / "pickled.pt")


# ---------------------------------------------------------------------------------------------
# Feature sets


def test_feature_sets():
    dims = {k: v.dim for k, v in H.FEATURE_SETS.items()}
    assert dims == {"emoca_short": 156, "emoca_full": 334, "smirk_short": SHORT_DIM, "smirk_full": FULL_DIM}
    assert (SHORT_DIM, FULL_DIM) == (353, 358)
    assert [s for s, _ in H.FEATURE_SETS["emoca_full"].segments] == ["exp", "pose", "tex", "detail", "shape"]
    assert dict(H.FEATURE_SETS["emoca_full"].segments)["detail"] == 128
    # SMIRK-short is a prefix of SMIRK-full: a SMIRK-short head picks the first 353 values
    np.testing.assert_array_equal(H.feature_select("smirk_short"), np.arange(353))
    np.testing.assert_array_equal(H.feature_select("smirk_full"), np.arange(358))
    # EMOCA-short is exp, pose, shape: [0:56] and [234:334] of EMOCA-full
    np.testing.assert_array_equal(H.feature_select("emoca_short"),
                                  np.r_[np.arange(56), np.arange(234, 334)])
    np.testing.assert_array_equal(H.feature_select("emoca_short", "emoca_short"), np.arange(156))
    with pytest.raises(ValueError, match=r"needs segments \['tex', 'detail'\]"):
        H.feature_select("emoca_full", "emoca_short")
    with pytest.raises(ValueError, match="cannot be taken from"):
        H.feature_select("emoca_short", "smirk_full")
    with pytest.raises(ValueError, match="expected one of"):
        H.feature_select("flame")


def test_feature_sets_match_encoders():
    """The segment orders agree with the encoders' own feature functions (ig3d.models.smirk, and
    ig3d.models.emoca where present)."""
    from ig3d.models import smirk

    for name, segs in [("smirk_short", smirk.SHORT_SEGMENTS), ("smirk_full", smirk.FULL_SEGMENTS)]:
        assert H.FEATURE_SETS[name].segments == tuple((k, smirk.OUTPUT_DIMS[k]) for k in segs)
    emoca = pytest.importorskip("ig3d.models.emoca")
    for name, segs in [("emoca_short", emoca.SHORT_SEGMENTS), ("emoca_full", emoca.FULL_SEGMENTS)]:
        assert H.FEATURE_SETS[name].segments == tuple((k, emoca.OUTPUT_DIMS[k]) for k in segs)


# ---------------------------------------------------------------------------------------------
# Export to the fused head (C++ kernel) vs the torch module in eval mode


def _close(fused, ref):
    ref = ref.detach().numpy() if isinstance(ref, torch.Tensor) else ref
    assert fused.shape == ref.shape
    assert np.abs(fused - ref).max() <= TOL, np.abs(fused - ref).max()


def test_to_fused_head_mlp4(mlp):
    m = mlp(156)
    raw = _x(334, seed=5).numpy() * 2  # an EMOCA-full vector; the head takes EMOCA-short out of it
    fh = H.to_fused_head(m, feature_set="emoca_short", dataset="affectnet8")
    assert fh.input_dim == 334 and fh.num_classes == 8 and fh.va_index == 8
    assert fh.labels == list(AFFECTNET8_LABELS)
    ref = _run(m, torch.from_numpy(raw[:, np.r_[0:56, 234:334]]))
    out = fh(raw)
    _close(out.out3d, ref)
    _close(out.logits, ref[:, :8])
    _close(out.va, ref[:, 8:10])
    # RAF-DB: the 10-wide MLP4 output, only [0:7] are classes, no VA
    fr = H.to_fused_head(mlp(358), feature_set="smirk_full", dataset="rafdb")
    raw = _x(358, seed=6).numpy()
    ref = _run(mlp(358), torch.from_numpy(raw))
    out = fr(raw)
    assert fr.labels == list(RAFDB_LABELS) and out.va is None
    _close(out.logits, ref[:, :7])


def test_to_fused_head_small_heads():
    res, ddam, cage = _small_heads()
    x = _x(358, seed=7).numpy()  # SMIRK-full; the residual head takes the first 353
    _close(H.to_fused_head(res, feature_set="smirk_short", dataset="affectnet8")(x).out3d,
           _run(res, torch.from_numpy(x[:, :353])))
    f2d = np.tanh(_x(512, seed=8).numpy())
    x = _x(334, seed=9).numpy()
    fh = H.to_fused_head(ddam, feature_set="emoca_full", dataset="rafdb")
    assert (fh.concat_at, fh.concat_order, fh.features2d_dim) == (1, "3d_first", 512)
    _close(fh(x, features2d=f2d).out3d, _run(ddam, torch.from_numpy(x), torch.from_numpy(f2d)))
    fh = H.to_fused_head(cage, feature_set="emoca_short", dataset="affectnet_va", input_set="emoca_short")
    assert (fh.concat_order, fh.num_classes, fh.va_index) == ("2d_first", 0, 0)
    out = fh(x[:, :156], features2d=f2d)
    ref = _run(cage, torch.from_numpy(x[:, :156]), torch.from_numpy(f2d))
    _close(out.va, ref)
    # DDAMFN fusion, AffectNet-8 layout, from the whole-network split
    torch.manual_seed(3)
    ddam10 = _randomise(DDAMFNFusionHead(358, 10), seed=3)
    head_sd, _ = H.split_ddamfn_fusion_state_dict({**ddam10.state_dict(), "bn.weight": torch.ones(10)})
    fh = H.to_fused_head(H.build_head(head_sd), feature_set="smirk_full", dataset="affectnet8")
    x = _x(358, seed=10).numpy()
    _close(fh(x, features2d=f2d).out3d, _run(ddam10, torch.from_numpy(x), torch.from_numpy(f2d)))


def test_to_fused_head_errors(mlp):
    with pytest.raises(ValueError, match="takes 156 features, but feature set 'smirk_full' has 358"):
        H.to_fused_head(mlp(156), feature_set="smirk_full", dataset="affectnet8")
    with pytest.raises(ValueError, match="needs a head with 2 outputs"):
        H.to_fused_head(mlp(156), feature_set="emoca_short", dataset="affectnet_va")
    with pytest.raises(ValueError, match="dataset 'fer2013'"):
        H.to_fused_head(mlp(156), feature_set="emoca_short", dataset="fer2013")
    with pytest.raises(TypeError, match="expected an Ig3D head"):
        H.to_fused_head(torch.nn.Linear(156, 10), feature_set="emoca_short", dataset="affectnet8")


# ---------------------------------------------------------------------------------------------
# Late fusion


def test_late_fusion_table():
    assert H.LATE_FUSION[("affectnet8", "emoca")] == dict(w2d=0.80, w3d=0.20, feature_set="emoca_short",
                                                          scores2d="ddamfn_affectnet8")
    assert {k: (v["w2d"], v["w3d"], v["feature_set"]) for k, v in H.LATE_FUSION.items()} == {
        ("affectnet8", "emoca"): (0.80, 0.20, "emoca_short"),
        ("affectnet8", "smirk"): (0.77, 0.23, "smirk_full"),
        ("rafdb", "emoca"): (0.65, 0.35, "emoca_full"),
        ("rafdb", "smirk"): (0.65, 0.35, "smirk_full"),
        ("affectnet_va", "emoca"): (0.60, 0.40, "emoca_short")}
    assert H.rafdb_fusion_map("ddamfn++") == DDAMFN_FROM_RAFDB
    assert H.rafdb_fusion_map("native") == tuple(range(7))


def _weighted(entry, s2d, s3d):
    return entry["w2d"] * s2d + entry["w3d"] * s3d


@pytest.mark.parametrize("task,encoder", [("affectnet8", "emoca"), ("affectnet8", "smirk")])
def test_late_fusion_affectnet8(mlp, task, encoder):
    entry = H.LATE_FUSION[task, encoder]
    fs = H.FEATURE_SETS[entry["feature_set"]]
    m = mlp(fs.dim)
    raw = _x(H.FEATURE_SETS[fs.raw].dim, seed=11).numpy()
    s2d = 3 * _x(8, seed=12).numpy()
    s3d = _run(m, torch.from_numpy(raw[:, H.feature_select(fs.name)])).numpy()
    out = H.late_fusion_head(m, task, encoder)(raw, s2d)
    _close(out.out3d, s3d)
    _close(out.logits, _weighted(entry, s2d, s3d[:, :8]))
    _close(out.va, s3d[:, 8:10])  # DDAMFN has no VA: the 3D head's stays
    for mode, fn in [("max", np.maximum), ("min", np.minimum), ("mean", lambda a, b: (a + b) / 2)]:
        _close(H.late_fusion_head(m, task, encoder, mode=mode)(raw, s2d).logits, fn(s2d, s3d[:, :8]))


@pytest.mark.parametrize("encoder", ["emoca", "smirk"])
def test_late_fusion_rafdb_orders(mlp, encoder):
    entry = H.LATE_FUSION["rafdb", encoder]
    fs = H.FEATURE_SETS[entry["feature_set"]]
    m = mlp(fs.dim)
    raw = _x(fs.dim, seed=13).numpy()
    s3d = _run(m, torch.from_numpy(raw)).numpy()[:, :7]
    native = 3 * _x(7, seed=14).numpy()  # 2D scores in RAF-DB's native order
    released = native[:, list(DDAMFN_FROM_RAFDB)]  # the same scores as the released DDAMFN++ gives them
    np.testing.assert_array_equal(ddamfn_rafdb_to_native(released), native)
    want = _weighted(entry, native, s3d)
    for order, s2d in [("native", native), ("ddamfn++", released)]:
        fh = H.late_fusion_head(m, "rafdb", encoder, scores2d_order=order)
        assert fh.labels == list(RAFDB_LABELS) and fh.num_classes == 7
        _close(fh(raw, s2d).logits, want)
    # feeding released-order scores as if native gives a different (wrong) answer
    wrong = H.late_fusion_head(m, "rafdb", encoder, scores2d_order="native")(raw, released).logits
    assert np.abs(wrong - want).max() > 0.1
    with pytest.raises(ValueError, match="needs scores2d_order"):
        H.late_fusion_head(m, "rafdb", encoder)


def test_late_fusion_va(mlp):
    entry = H.LATE_FUSION["affectnet_va", "emoca"]
    raw = _x(334, seed=15).numpy()
    sel = torch.from_numpy(raw[:, H.feature_select("emoca_short")])
    cage = _x(2, seed=16).numpy()  # CAGE VA model: [V, A]
    # EmocaFER: a 2-output MLP4, [0] V, [1] A
    va_head = mlp(156, 2)
    s3d = _run(va_head, sel).numpy()
    fh = H.late_fusion_head(va_head, "affectnet_va", "emoca")
    assert list(fh.fusion_map) == [0, 1] and fh.num_classes == 0
    _close(fh(raw, cage).va, _weighted(entry, cage, s3d))
    # a 10-output AffectNet-8 head: CAGE's V, A fuse with outputs 8, 9; the logits stay 3D-only
    m = mlp(156)
    s3d = _run(m, sel).numpy()
    fh = H.late_fusion_head(m, "affectnet_va", "emoca")
    assert list(fh.fusion_map) == [8, 9]
    out = fh(raw, cage)
    _close(out.va, _weighted(entry, cage, s3d[:, 8:10]))
    _close(out.logits, s3d[:, :8])


def test_late_fusion_errors(mlp):
    with pytest.raises(ValueError, match="no Ig3D late fusion"):
        H.late_fusion_head(mlp(156), "rafdb", "flame")
    with pytest.raises(TypeError, match="3D-only head"):
        H.late_fusion_head(CageFusionHead(), "affectnet_va", "emoca")
    with pytest.raises(ValueError, match="only for RAF-DB"):
        H.late_fusion_head(mlp(156), "affectnet8", "emoca", scores2d_order="ddamfn++")
    with pytest.raises(ValueError, match="takes 156 features"):
        H.late_fusion_head(mlp(156), "affectnet8", "smirk")
