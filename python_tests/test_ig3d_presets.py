"""The Ig3D presets end to end on a real photo with synthetic weights: ONNX files exported from
randomly initialised upstream-layout networks and a random head. Checks shapes, the fusion
arithmetic, determinism and batch = single; and the error for missing weights."""

from __future__ import annotations

import numpy as np
import pytest

import ig3d
from ig3d.labels import AFFECTNET8_LABELS

torch = pytest.importorskip("torch", reason="building the synthetic encoders needs torch (pip install 'ig3d[torch]')")
pytest.importorskip("onnx", reason="ONNX export needs onnx")


def _calibrate_bn(model, x):
    """Random init leaves BN statistics at 0/1; set them from data so outputs depend on the input."""
    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model(x)
    model.eval()


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    from ig3d.convert.ddamfn import export_ddamfn_onnx
    from ig3d.convert.smirk import export_smirk_onnx
    from ig3d.models.ddamfn import DDAMNet
    from ig3d.models.smirk import SmirkEncoder

    d = tmp_path_factory.mktemp("weights")
    torch.manual_seed(0)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        smirk = SmirkEncoder()
        _calibrate_bn(smirk, torch.rand(4, 3, 224, 224))
        export_smirk_onnx(smirk, d / "smirk.onnx")
        ddamfn = DDAMNet(num_classes=8)
        _calibrate_bn(ddamfn, torch.randn(4, 3, 112, 112))
        export_ddamfn_onnx(ddamfn, d / "ddamfn.onnx")
    finally:
        torch.set_num_threads(threads)
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
