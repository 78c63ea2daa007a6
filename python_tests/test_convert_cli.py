"""`ig3d convert` end to end on synthetic checkpoints in the upstream layouts."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="ig3d convert needs torch (pip install 'ig3d[convert]')")
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


# --- all or nothing: a failed conversion leaves no output; a missing package names its extra

def _ddamfn_checkpoint(path):
    from ig3d.convert.ddamfn import dead_keys
    from ig3d.models.ddamfn import DDAMNet

    torch.manual_seed(0)
    sd = dict(DDAMNet(num_classes=7).state_dict())
    for k, shape in dead_keys(7).items():
        sd[k] = torch.zeros(shape, dtype=torch.int64 if k.endswith("num_batches_tracked") else torch.float32)
    torch.save({"model_state_dict": sd}, path)
    return path


@pytest.mark.parametrize("missing", ["onnx", "torch"])
def test_convert_without_its_package_names_the_extra_and_writes_nothing(tmp_path, missing):
    """`ig3d convert` where torch or onnx is not installed (simulated: the module is blocked in
    sys.modules of the process that runs the command)."""
    ckpt = _ddamfn_checkpoint(tmp_path / "ddamfn.pth")
    code = ("import sys\n"
            "sys.modules[sys.argv[1]] = None\n"
            "from ig3d.cli import main\n"
            "sys.exit(main(sys.argv[2:]))\n")
    out = tmp_path / "new" / "weights" / "ddamfn"
    r = subprocess.run([sys.executable, "-c", code, missing, "convert", "ddamfn", str(ckpt), "-o", str(out)],
                       capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert r.returncode == 1
    assert f"needs the optional package {missing}: pip install 'ig3d[convert]'" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ddamfn.pth"]  # no folder, not even a parent


def _failing_kind(monkeypatch, written_before_failure: bool):
    """Replace the ddamfn converter's loader by one whose export writes part of a file and fails."""
    from ig3d import convert as conv

    def export(model, path):
        if written_before_failure:
            path.write_bytes(b"half an onnx file")
        raise RuntimeError("export failed half way")

    monkeypatch.setitem(conv.KINDS, "ddamfn", lambda path, trust: (torch.nn.Linear(2, 2), export))


def test_a_failed_convert_leaves_no_output(tmp_path, monkeypatch):
    from ig3d.convert import convert

    ckpt = tmp_path / "ckpt.pth"
    ckpt.write_bytes(b"checked by the loader, which is replaced here")
    _failing_kind(monkeypatch, written_before_failure=True)
    out = tmp_path / "a" / "b" / "out"
    with pytest.raises(RuntimeError, match="export failed half way"):
        convert("ddamfn", ckpt, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth"]  # not out, not a/b, no temporary folder

    # into a folder that exists: what was there stays as it was, nothing is added
    existing = tmp_path / "existing"
    existing.mkdir()
    (existing / "ddamfn.npz").write_bytes(b"an earlier conversion")
    (existing / "notes.txt").write_text("mine")
    with pytest.raises(RuntimeError):
        convert("ddamfn", ckpt, existing)
    assert sorted(p.name for p in existing.iterdir()) == ["ddamfn.npz", "notes.txt"]
    assert (existing / "ddamfn.npz").read_bytes() == b"an earlier conversion"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pth", "existing"]


def test_convert_into_an_existing_folder_replaces_its_own_files_only(tmp_path):
    from ig3d.convert import convert
    from ig3d.models.ddamfn import DDAMNet

    ckpt = _ddamfn_checkpoint(tmp_path / "ddamfn.pth")
    out = tmp_path / "out"
    out.mkdir()
    (out / "ddamfn.npz").write_bytes(b"stale")
    (out / "notes.txt").write_text("mine")
    written = convert("ddamfn", ckpt, out, onnx=False)
    assert written == {"weights": out / "ddamfn.npz", "meta": out / "ddamfn.json"}
    assert sorted(p.name for p in out.iterdir()) == ["ddamfn.json", "ddamfn.npz", "notes.txt"]
    torch.manual_seed(0)
    ref = DDAMNet(num_classes=7).state_dict()
    with np.load(out / "ddamfn.npz", allow_pickle=False) as z:
        np.testing.assert_array_equal(z["fc.weight"], ref["fc.weight"].numpy())
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


def test_a_new_output_folder_gets_ordinary_permissions(tmp_path):
    from ig3d.convert import staged_output

    ref = tmp_path / "plain"
    ref.mkdir()
    with staged_output(tmp_path / "new") as tmp:
        (tmp / "f.txt").write_text("x")
    assert (tmp_path / "new" / "f.txt").read_text() == "x"
    assert (tmp_path / "new").stat().st_mode & 0o777 == ref.stat().st_mode & 0o777
    with pytest.raises(ValueError, match="exists and is not a folder"):
        with staged_output(tmp_path / "new" / "f.txt"):
            pass
