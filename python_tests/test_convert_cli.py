"""`ig3d convert` end to end on synthetic checkpoints in the upstream layouts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="ig3d convert needs torch (pip install 'ig3d[torch]')")
ort = pytest.importorskip("onnxruntime", reason="runs the exported file")


def test_convert_ddamfn_checkpoint(tmp_path):
    from ig3d.convert import convert
    from ig3d.models.ddamfn import DDAMNet

    torch.manual_seed(0)
    net = DDAMNet(num_classes=7).eval()
    sd = dict(net.state_dict())
    from ig3d.convert.ddamfn import dead_keys

    for k, shape in dead_keys(7).items():  # the released files carry the unused parameters too
        sd[k] = torch.zeros(shape, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
    ckpt = tmp_path / "rafdb.pth"
    torch.save({"iter": 20, "model_state_dict": sd, "optimizer_state_dict": {}}, ckpt)
    out = convert("ddamfn", ckpt, tmp_path / "out")
    with np.load(out["weights"], allow_pickle=False) as z:
        assert "fc.weight" in z.files and z["fc.weight"].shape == (7, 512)
        assert not any(k.startswith("bn.") for k in z.files)  # dead parameters are not exported
    meta = json.loads(out["meta"].read_text())
    assert meta["kind"] == "ddamfn" and len(meta["source_sha256"]) == 64
    x = torch.randn(2, 3, 112, 112)
    sess = ort.InferenceSession(str(out["onnx"]), providers=["CPUExecutionProvider"])
    got = sess.run(["logits"], {sess.get_inputs()[0].name: x.numpy()})[0]
    with torch.no_grad():
        np.testing.assert_allclose(got, net(x).numpy(), rtol=1e-4, atol=1e-4)


def test_convert_cli_errors(tmp_path):
    def run(*args):
        return subprocess.run([sys.executable, "-m", "ig3d.cli", "convert", *args], capture_output=True,
                              text=True, cwd=tmp_path, timeout=300)

    r = run("smirk", str(tmp_path / "missing.pt"), "-o", str(tmp_path / "o"))
    assert r.returncode == 1 and "checkpoint not found" in r.stderr
    bad = tmp_path / "bad.pt"
    torch.save({"smirk_encoder.pose_encoder.pose_cam_layers.0.weight": torch.zeros(6, 576)}, bad)
    r = run("smirk", str(bad), "-o", str(tmp_path / "o"))
    assert r.returncode == 1 and "missing" in r.stderr.lower()
    mod = tmp_path / "module.pt"
    torch.save(torch.nn.Linear(2, 2), mod)
    r = run("ddamfn", str(mod), "-o", str(tmp_path / "o"))
    assert r.returncode == 1 and "trust_checkpoint" in r.stderr
    r = run("nosuchkind", str(mod), "-o", str(tmp_path / "o"))
    assert r.returncode != 0


def test_convert_ig3d_head_to_a_preset_head(tmp_path):
    from ig3d import FusedHead
    from ig3d.models.ig3d_heads import MLP4

    torch.manual_seed(0)
    mlp = MLP4(358).eval()
    ckpt = tmp_path / "head.pt"
    torch.save(mlp.state_dict(), ckpt)
    r = subprocess.run([sys.executable, "-m", "ig3d.cli", "convert", "ig3d-head", str(ckpt), "-o", str(tmp_path / "o"),
                        "--task", "affectnet8", "--encoder", "smirk"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    head = FusedHead.load(tmp_path / "o" / "head.npz")
    assert (head.input_dim, head.num_classes, head.va_index, head.fusion) == (358, 8, 8, "weighted")
    np.testing.assert_allclose(head.w2d, 0.77) and np.testing.assert_allclose(head.w3d, 0.23)
    x = torch.randn(3, 358)
    with torch.no_grad():
        ref = mlp(x).numpy()
    np.testing.assert_allclose(head(x.numpy()).out3d, ref, rtol=1e-4, atol=1e-4)
    r = subprocess.run([sys.executable, "-m", "ig3d.cli", "convert", "ig3d-head", str(ckpt), "-o", str(tmp_path / "o"),
                        "--task", "affectnet8", "--encoder", "emoca"], capture_output=True, text=True, timeout=300,
                       cwd=tmp_path)
    assert r.returncode == 1 and "does not fit emoca" in r.stderr
