"""The Ig3D presets end to end on a real photo with synthetic weights: ONNX files exported from
randomly initialised upstream-layout networks and a random head. Checks shapes, the fusion
arithmetic, determinism and batch = single; and the error for missing weights."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import calibrate_bn, one_torch_thread

import ig3d
from ig3d.labels import AFFECTNET8_LABELS

torch = pytest.importorskip("torch", reason="building the synthetic encoders needs torch (pip install 'ig3d[torch]')")
pytest.importorskip("onnx", reason="ONNX export needs onnx")


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from ig3d.convert.ddamfn import export_ddamfn_onnx
    from ig3d.convert.smirk import export_smirk_onnx
    from ig3d.models.ddamfn import DDAMNet
    from ig3d.models.smirk import SmirkEncoder

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    with one_torch_thread():
        smirk = SmirkEncoder()
        calibrate_bn(smirk, torch.rand(4, 3, 224, 224))
        export_smirk_onnx(smirk, d / "smirk.onnx")
        ddamfn = DDAMNet(num_classes=8)
        calibrate_bn(ddamfn, torch.randn(4, 3, 112, 112))
        export_ddamfn_onnx(ddamfn, d / "ddamfn.onnx")
    rng = np.random.default_rng(0)

    def lin(o, i):
        return ig3d.Layer(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1)

    late = ig3d.FusedHead([ig3d.Layer(lin(64, 358).weight, None, "leaky_relu"), lin(10, 64)], input_dim=358,
                          num_classes=8, va_index=8, fusion="weighted", scores2d_dim=8, fusion_weights=(0.77, 0.23),
                          labels=AFFECTNET8_LABELS)
    late.save(d / "late.npz")
    mid = ig3d.FusedHead([lin(512, 358), ig3d.Layer(lin(64, 1024).weight, None, "leaky_relu"), lin(10, 64)],
                         input_dim=358, num_classes=8, va_index=8, concat_at=1, concat_order="3d_first",
                         features2d_dim=512)
    mid.save(d / "mid.npz")
    return d


@pytest.fixture(scope="module")
def late_predictor(weights):
    return ig3d.Predictor("ig3d-smirk-ddamfn", weights={"smirk": weights / "smirk.onnx", "ddamfn": weights,
                                                        "head": weights / "late.npz"})


def test_late_fusion_preset_end_to_end(late_predictor, faces):
    (face,) = late_predictor.predict(faces / "astronaut.png")
    assert list(face.scores) == list(AFFECTNET8_LABELS)
    assert face.params3d.shape == (358,)
    assert {k: v.shape for k, v in face.flame.items()} == {
        "pose_params": (3,), "cam": (3,), "shape_params": (300,), "expression_params": (50,),
        "eyelid_params": (2,), "jaw_params": (3,)}
    assert 0 <= face.flame["eyelid_params"].min() and face.flame["eyelid_params"].max() <= 1
    # Ig3D late fusion on raw logits: 0.77 * DDAMFN + 0.23 * 3D head, then softmax
    z = 0.77 * face.logits_2d + 0.23 * face.logits_3d
    p = np.exp(z - z.max()) / np.exp(z - z.max()).sum()
    np.testing.assert_allclose(list(face.scores.values()), p, atol=1e-5)
    assert np.isfinite(face.valence) and np.isfinite(face.arousal)
    assert face.to_dict()["flame"]["shape_params"].__len__() == 300


def test_preset_is_deterministic_and_batch_equals_single(late_predictor, faces):
    names = ["astronaut.png", "multi_face.jpg", "free-mountain-vector-01.jpg"]
    single = [late_predictor.predict(faces / n) for n in names]
    again = late_predictor.predict(faces / names[0])
    np.testing.assert_array_equal(again[0].params3d, single[0][0].params3d)
    batch = late_predictor.predict_batch([faces / n for n in names])
    assert [len(b) for b in batch] == [1, 5, 0] == [len(s) for s in single]
    pipe = late_predictor._pipeline
    if pipe.workers.parallel:
        # SMIRK and DDAMFN++ are alike in size: a lone face's two runs go single-threaded side by side,
        # on the same one-core sessions as a batch's (the SMIRK+CAGE test covers all-cores vs one-core)
        assert pipe.enc3d.one_core is not pipe.enc3d.all_cores and pipe.enc2d.one_core is not pipe.enc2d.all_cores
        assert pipe._runs(1) == 2 and pipe._runs(5) == 5
    for b, s in zip(batch, single):
        for fb, fs in zip(b, s):
            np.testing.assert_allclose(fb.params3d, fs.params3d, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(list(fb.scores.values()), list(fs.scores.values()), atol=1e-4)


def test_intermediate_fusion_head(weights, faces):
    p = ig3d.Predictor("ig3d-smirk-ddamfn", weights={"smirk": weights, "ddamfn": weights,
                                                     "head": weights / "mid.npz"})
    (face,) = p.predict(faces / "0-f1-su-ph.jpg")
    assert len(face.scores) == 8 and abs(sum(face.scores.values()) - 1) < 1e-5
    np.testing.assert_allclose(list(face.scores.values()), list(face.scores_3d.values()), atol=1e-5)


def test_missing_weights_name_every_file(tmp_path, monkeypatch):
    monkeypatch.setenv("IG3D_HOME", str(tmp_path))
    with pytest.raises(FileNotFoundError) as e:
        ig3d.Predictor("ig3d-emoca-cage")
    msg = str(e.value)
    assert "missing 3 weight file(s)" in msg
    for part, cmd in (("emoca", "ig3d convert emoca"), ("cage", "ig3d convert cage"), ("head", "ig3d convert ig3d-head")):
        assert f"- {part}:" in msg and cmd in msg


def test_head_that_does_not_fit_the_encoder(weights):
    with pytest.raises(ValueError, match="expects input_dim=55"):
        ig3d.Predictor("ig3d-smirk-ddamfn", weights={"smirk": weights, "ddamfn": weights},
                       head=__import__("ig3d.prior", fromlist=["default_head"]).default_head())


@pytest.fixture(scope="module")
def emoca_weights(weights):
    """EMOCA's three ResNet-50 encoders, random, exported once (about 300 MB of ONNX)."""
    from ig3d.convert.emoca import export_emoca_onnx
    from ig3d.models.emoca import EmocaEncoders

    torch.manual_seed(1)
    with one_torch_thread():
        model = EmocaEncoders()
        calibrate_bn(model, torch.rand(2, 3, 224, 224))
        export_emoca_onnx(model, weights / "emoca.onnx")
    rng = np.random.default_rng(1)
    from ig3d.models.ig3d_heads import MLP4
    from ig3d.convert.ig3d_heads import late_fusion_head

    mlp = MLP4(156).eval()
    late_fusion_head(mlp, "affectnet8", "emoca").save(weights / "emoca_head.npz")
    return weights, rng


def test_emoca_ddamfn_preset_end_to_end(emoca_weights, faces):
    d, _ = emoca_weights
    p = ig3d.Predictor("ig3d-emoca-ddamfn", weights={"emoca": d, "ddamfn": d, "head": d / "emoca_head.npz"})
    res = p.predict_batch([faces / "astronaut.png", faces / "0-f1-su-ph.jpg"])
    assert [len(r) for r in res] == [1, 1]
    face = res[0][0]
    assert face.params3d.shape == (334,)
    assert {"shape", "tex", "exp", "pose", "cam", "light", "detail"} <= set(face.flame)
    assert face.flame["detail"].shape == (128,) and face.flame["exp"].shape == (50,)
    # AffectNet-8 / EMOCA late fusion: 0.80 * DDAMFN + 0.20 * 3D on raw logits
    z = 0.8 * face.logits_2d + 0.2 * face.logits_3d
    np.testing.assert_allclose(list(face.scores.values()), np.exp(z - z.max()) / np.exp(z - z.max()).sum(), atol=1e-5)
    single = p.predict(faces / "0-f1-su-ph.jpg")[0]
    np.testing.assert_allclose(single.params3d, res[1][0].params3d, rtol=1e-4, atol=1e-3)


def test_emoca_cage_preset_fuses_valence_arousal(emoca_weights, faces):
    """AffectNet VA late fusion: 0.6 * CAGE + 0.4 * the EMOCA head, per dimension."""
    from ig3d.convert.cage import export_cage_onnx
    from ig3d.convert.ig3d_heads import late_fusion_head
    from ig3d.models.cage import CageNet
    from ig3d.models.ig3d_heads import MLP4

    d, _ = emoca_weights
    torch.manual_seed(2)
    with one_torch_thread():
        cage = CageNet("combined")
        calibrate_bn(cage, torch.randn(2, 3, 224, 224))
        export_cage_onnx(cage, d / "cage.onnx")
    late_fusion_head(MLP4(156).eval(), "affectnet_va", "emoca").save(d / "va_head.npz")
    p = ig3d.Predictor("ig3d-emoca-cage", weights={"emoca": d, "cage": d, "head": d / "va_head.npz"})
    (face,) = p.predict(faces / "astronaut.png")
    assert len(face.scores) == 8 and face.label_2d in face.scores
    # the class scores stay the 3D head's; V and A are fused with CAGE's outputs 8 and 9
    np.testing.assert_allclose(list(face.scores.values()), list(face.scores_3d.values()), atol=1e-5)
    sess = __import__("onnxruntime").InferenceSession(str(d / "cage.onnx"), providers=["CPUExecutionProvider"])
    from ig3d.faces import align
    from ig3d.io import load_image

    x = align.crop(load_image(faces / "astronaut.png"), align.cage_affine(face.landmarks[None]), 224, imagenet=True)
    cage_va = sess.run(["outputs"], {sess.get_inputs()[0].name: x})[0][0, 8:10]
    head_out = ig3d.FusedHead.load(d / "va_head.npz")(face.params3d[None].astype(np.float32)).out3d[0, 8:10]
    np.testing.assert_allclose([face.valence, face.arousal], 0.6 * cage_va + 0.4 * head_out, atol=1e-4)


def test_smirk_cage_preset_is_deterministic_and_batch_equals_single(emoca_weights, faces):
    """SMIRK with CAGE (run after the EMOCA+CAGE test, which exports cage.onnx)."""
    from ig3d.convert.ig3d_heads import to_fused_head
    from ig3d.models.ig3d_heads import MLP4

    d, _ = emoca_weights
    if not (d / "cage.onnx").is_file():
        pytest.skip("cage.onnx is exported by test_emoca_cage_preset_fuses_valence_arousal")
    to_fused_head(MLP4(358).eval(), feature_set="smirk_full", dataset="affectnet8").save(d / "smirk_head.npz")
    p = ig3d.Predictor("ig3d-smirk-cage", weights={"smirk": d, "cage": d, "head": d / "smirk_head.npz"})
    names = ["0-f15-hao-ph.jpg", "free-mountain-vector-01.jpg", "single_face.jpg"]
    # CAGE is far bigger than SMIRK: a lone face runs each on its all-cores session, a batch on the
    # one-core sessions, and the numbers agree
    assert p._pipeline._runs(1) == 1
    single = [p.predict(faces / n) for n in names]
    batch = p.predict_batch([faces / n for n in names])
    assert [len(b) for b in batch] == [1, 0, 1] == [len(s) for s in single]
    for b, s in zip(batch, single):
        for fb, fs in zip(b, s):
            assert fb.params3d.shape == (358,) and fb.flame["jaw_params"].shape == (3,)
            np.testing.assert_allclose(fb.params3d, fs.params3d, rtol=1e-4, atol=1e-4)
            np.testing.assert_allclose(list(fb.scores.values()), list(fs.scores.values()), atol=1e-4)
    again = p.predict(faces / names[0])[0]
    np.testing.assert_array_equal(again.params3d, single[0][0].params3d)


def test_extract_with_an_ig3d_preset_and_no_head(weights, faces, tmp_path, monkeypatch):
    """ig3d extract runs an Ig3D preset before any head exists (training one is why it runs):
    SMIRK's 358 FLAME values, DDAMFN++'s 8 logits and its 512-d fusion feature per image, equal to
    what the preset gives for the same face."""
    import shutil

    from ig3d.extract import extract
    from ig3d.params import param_names

    monkeypatch.setenv("IG3D_HOME", str(tmp_path / "home"))  # no head.npz there
    (tmp_path / "ds" / "happy").mkdir(parents=True)
    shutil.copy(faces / "astronaut.png", tmp_path / "ds" / "happy")
    out = extract(tmp_path / "ds", tmp_path / "f.npz", preset="ig3d-smirk-ddamfn", progress=False,
                  weights={"smirk": weights / "smirk.onnx", "ddamfn": weights / "ddamfn.onnx"})
    with np.load(out, allow_pickle=False) as z:
        f = {k: z[k] for k in z.files}
    assert f["params3d"].shape == (1, 358) and f["param_names"].tolist() == param_names("smirk")
    assert f["scores2d"].shape == (1, 8) and f["scores2d_names"].tolist() == list(AFFECTNET8_LABELS)
    assert f["features2d"].shape == (1, 512)
    p = ig3d.Predictor("ig3d-smirk-ddamfn", weights={"smirk": weights / "smirk.onnx", "ddamfn": weights,
                                                      "head": weights / "mid.npz"})
    (face,) = p.predict(faces / "astronaut.png")
    np.testing.assert_allclose(f["params3d"][0], face.params3d, atol=1e-6)
    np.testing.assert_allclose(f["features2d"][0], face.features2d, atol=1e-6)
    np.testing.assert_allclose(f["scores2d"][0], face.scores2d_raw, atol=1e-6)
