"""The ``ig3d`` command as a user runs it: the installed console script (and ``python -m ig3d``) in a
subprocess, on the bundled demo photo and on small files made here (a broken image, a text file, a
"video", folders), so that nothing depends on the shared photos."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import ig3d
from ig3d.presets import asset_path

DEMO = asset_path("astronaut.png")
IG3D = shutil.which("ig3d")
pytestmark = pytest.mark.skipif(IG3D is None, reason="the ig3d command is not on PATH (pip install ig3d)")


def ig3d_cmd(*args: str, cwd: Path, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([IG3D, *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


def json_lines(stdout: str):
    lines = stdout.splitlines()
    assert all(line.startswith("{") for line in lines), stdout[:500]
    return [json.loads(line) for line in lines]


@pytest.fixture(scope="module")
def demo_faces():
    """The demo photo's faces through the Python API: what the command must print."""
    return ig3d.Predictor().predict(DEMO)


@pytest.fixture()
def files(tmp_path):
    """A folder of inputs: good images, an undecodable .jpg, a .txt, a truncated .png, a "video"."""
    shutil.copy(DEMO, tmp_path / "a.png")
    data = Path(DEMO).read_bytes()
    (tmp_path / "broken.jpg").write_bytes(b"GIF? no: not an image at all")
    (tmp_path / "notes.txt").write_text("hello\n")
    (tmp_path / "truncated.png").write_bytes(data[: len(data) // 3])
    (tmp_path / "clip.mp4").write_bytes(b"\x00\x00\x00\x18ftypmp42")
    photos = tmp_path / "photos"
    (photos / "sub").mkdir(parents=True)
    shutil.copy(DEMO, photos / "b.jpg")  # PNG bytes under a .jpg name: decoded by content
    shutil.copy(DEMO, photos / "sub" / "c.png")
    shutil.copy(DEMO, photos / ".hidden.png")
    (photos / "readme.txt").write_text("not an image\n")
    (tmp_path / "empty").mkdir()
    return tmp_path


def test_version_and_python_m(tmp_path):
    for cmd in ([IG3D, "--version"], [sys.executable, "-m", "ig3d", "--version"]):
        r = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=120)
        assert r.returncode == 0 and r.stdout.strip() == f"ig3d {ig3d.__version__}", r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "ig3d", "predict", "--demo", "--json"], capture_output=True, text=True,
                       cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [o["image"] for o in json_lines(r.stdout)] == [DEMO]


def test_json_lines_have_one_shape_for_one_or_many(files, demo_faces):
    one = ig3d_cmd("predict", "a.png", "--json", cwd=files)
    assert one.returncode == 0, one.stderr
    many = ig3d_cmd("predict", "a.png", "photos/b.jpg", "--json", cwd=files)
    assert many.returncode == 0, many.stderr
    [single] = json_lines(one.stdout)
    objs = json_lines(many.stdout)
    assert [o["image"] for o in objs] == ["a.png", "photos/b.jpg"]
    for obj in [single, *objs]:
        assert set(obj) == {"image", "faces"}
        # the same numbers as the Python API (JSON round-trips floats exactly)
        assert obj["faces"] == [f.to_dict(landmarks=False) for f in demo_faces]
    assert single["faces"][0]["label"] == "happy"  # the astronaut smiles broadly
    assert "landmarks" not in single["faces"][0]


def test_landmarks_need_json(files):
    r = ig3d_cmd("predict", "a.png", "--landmarks", cwd=files)
    assert r.returncode == 2 and "--landmarks" in r.stderr and "--json" in r.stderr and r.stdout == ""
    r = ig3d_cmd("predict", "a.png", "--landmarks", "--json", cwd=files)
    assert r.returncode == 0, r.stderr
    [obj] = json_lines(r.stdout)
    assert np.asarray(obj["faces"][0]["landmarks"]).shape == (478, 3)


def test_bad_inputs_are_reported_and_the_others_still_run(files):
    r = ig3d_cmd("predict", "a.png", "broken.jpg", "notes.txt", "truncated.png", "clip.mp4", "missing.png", "empty",
                 "photos/b.jpg", "--json", cwd=files)
    assert r.returncode == 1
    assert [o["image"] for o in json_lines(r.stdout)] == ["a.png", "photos/b.jpg"]
    errors = {}  # input -> its message
    for line in r.stderr.splitlines():
        assert line.startswith("ig3d predict: '"), line
        name = line[len("ig3d predict: '"):].split("'")[0]
        assert name not in errors, r.stderr
        errors[name] = line
    expected = {  # input -> words its own message must hold
        "broken.jpg": "not a readable image",
        "notes.txt": "not a readable image",
        "truncated.png": "corrupt or truncated image",
        "clip.mp4": "video",  # not "not a readable image": a video is not a broken image
        "missing.png": "no such file or folder",
        "empty": "a folder with no images",
    }
    assert set(errors) == set(expected), r.stderr
    for name, words in expected.items():
        assert words in errors[name], errors[name]
    assert " at 0x" not in r.stderr and "Traceback" not in r.stderr
    # the same inputs as a table: the good ones still get theirs
    r = ig3d_cmd("predict", "notes.txt", "a.png", cwd=files)
    assert r.returncode == 1 and r.stdout.startswith("a.png: 1 face") and "'notes.txt'" in r.stderr


def test_all_good_inputs_exit_zero_and_nothing_is_a_usage_error(files):
    r = ig3d_cmd("predict", "a.png", cwd=files)
    assert r.returncode == 0 and r.stderr == "" and r.stdout.startswith("a.png: 1 face")
    r = ig3d_cmd("predict", cwd=files)
    assert r.returncode == 2 and "--demo" in r.stderr


def test_folders_are_read_in_name_order(files):
    r = ig3d_cmd("predict", "photos", "--json", cwd=files)
    assert r.returncode == 0, r.stderr
    # not the .txt, not the hidden file, not the subfolder
    assert [o["image"] for o in json_lines(r.stdout)] == [os.path.join("photos", "b.jpg")]
    r = ig3d_cmd("predict", "photos", "--recursive", "--json", cwd=files)
    assert r.returncode == 0, r.stderr
    assert [o["image"] for o in json_lines(r.stdout)] == [os.path.join("photos", "b.jpg"),
                                                          os.path.join("photos", "sub", "c.png")]
    # a folder holding only a subfolder says how to read it
    only_sub = files / "nested"
    (only_sub / "inner").mkdir(parents=True)
    shutil.copy(DEMO, only_sub / "inner" / "x.png")
    r = ig3d_cmd("predict", "nested", cwd=files)
    assert r.returncode == 1 and "--recursive" in r.stderr and r.stdout == ""


def test_many_images_run_in_batches(tmp_path):
    """More images than one batch (16): every one answered, in order, with the same result."""
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(18):
        shutil.copy(DEMO, folder / f"img{i:02d}.png")
    r = ig3d_cmd("predict", "many", "--json", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    objs = json_lines(r.stdout)
    assert [o["image"] for o in objs] == [os.path.join("many", f"img{i:02d}.png") for i in range(18)]
    assert all(o["faces"] == objs[0]["faces"] for o in objs)


def _overlay_ok(path: Path) -> None:
    """An overlay is the photo, same size, with drawing on it (so not equal to the photo)."""
    from PIL import Image

    with Image.open(DEMO) as src, Image.open(path) as im:
        assert im.size == src.size
        a = np.asarray(im.convert("RGB"), np.int16)
        b = np.asarray(src.convert("RGB"), np.int16)
    changed = np.abs(a - b).max(axis=2) > 30
    assert 0.001 < changed.mean() < 0.5, changed.mean()


def test_overlay_one_image_to_a_file(files):
    r = ig3d_cmd("predict", "a.png", "--overlay", "out.png", cwd=files)
    assert r.returncode == 0, r.stderr
    assert "overlay written to out.png" in r.stdout
    _overlay_ok(files / "out.png")


def test_overlay_several_images_to_a_folder_or_a_pattern(files):
    r = ig3d_cmd("predict", "a.png", "photos", "--recursive", "--overlay", "drawn", cwd=files)
    assert r.returncode == 0, r.stderr
    written = sorted(str(p.relative_to(files / "drawn")) for p in (files / "drawn").rglob("*.png"))
    assert written == ["a.png", "b.png", os.path.join("sub", "c.png")]
    for p in (files / "drawn").rglob("*.png"):
        _overlay_ok(p)
    r = ig3d_cmd("predict", "a.png", "photos/b.jpg", "--json", "--overlay", "pat/{stem}_faces.jpg", cwd=files)
    assert r.returncode == 0, r.stderr
    assert len(json_lines(r.stdout)) == 2  # --json output stays pure JSON Lines
    assert sorted(p.name for p in (files / "pat").iterdir()) == ["a_faces.jpg", "b_faces.jpg"]
    _overlay_ok(files / "pat" / "b_faces.jpg")


def test_overlay_refuses_targets_that_cannot_work(files):
    shutil.copy(DEMO, files / "photos" / "a.png")
    cases = {
        ("a.png", "photos", "--overlay", "out"): "would both be written to",  # a.png twice in one folder
        ("a.png", "--overlay", "a.png"): "it would be overwritten",
        ("a.png", "--overlay", "noext"): "needs an image extension",
        ("a.png", "--overlay", "x/{size}{stem}.png"): "a pattern may hold",
    }
    for args, words in cases.items():
        r = ig3d_cmd("predict", *args, cwd=files)
        assert r.returncode == 2 and words in r.stderr and r.stdout == "", (args, r.stderr)
    assert not (files / "out").exists()
    assert (files / "a.png").read_bytes() == Path(DEMO).read_bytes()


def test_output_into_head_ends_quietly(tmp_path):
    """`ig3d predict ... | head -c 10`: the reader leaves early; no BrokenPipeError traceback."""
    if shutil.which("head") is None or shutil.which("sh") is None:
        pytest.skip("needs a POSIX shell and head")
    args = " ".join([f"'{IG3D}'", "predict", "--demo", "--json", "--landmarks"] + [f"'{DEMO}'"] * 24)
    # about 0.4 MB of JSON: far more than a pipe holds, so the writer meets the closed pipe
    r = subprocess.run(["sh", "-c", f"{args} | head -c 10"], capture_output=True, cwd=tmp_path, timeout=300)
    assert r.stdout == b'{"image": '
    assert r.stderr == b"", r.stderr.decode()[-2000:]


@pytest.mark.skipif(ig3d.kernels.has_cuda(), reason="this machine has a CUDA device")
def test_info_says_no_cuda_device_in_words(tmp_path):
    r = ig3d_cmd("info", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    facts = json.loads(r.stdout)
    assert facts["cuda_devices"] == 0 and facts["cuda_status"].startswith("no CUDA device")
    assert facts["version"] == ig3d.__version__
    # what backend="auto" runs on the CPU, as a Predictor would
    p = ig3d.Predictor()
    assert facts["auto_on_cpu"] == {"backend": p.backend, "tracking": p.tracking_backends}


def test_describe_cuda():
    from ig3d.engines import describe_cuda

    assert describe_cuda(1) == "1 CUDA device" and describe_cuda(2) == "2 CUDA devices"
    raw = "cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    words = describe_cuda(0, raw)
    assert words.startswith("no CUDA device (") and "driver" in words and words.endswith(raw + ")")
    assert describe_cuda(0, "cudaErrorNoDevice: no CUDA-capable device is detected").startswith(
        "no CUDA device (no NVIDIA GPU was found;")
    assert describe_cuda(0, "ig3d was built without CUDA", compiled=False).startswith(
        "no CUDA device (this build of ig3d has no CUDA support")


def test_every_argument_has_help():
    from ig3d.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    for name in ("predict", "convert"):
        for action in sub.choices[name]._actions:
            assert action.help and action.help.strip(), f"ig3d {name}: {action.option_strings or action.dest}"
    conv = sub.choices["convert"]
    assert "$IG3D_HOME/weights/<part>" in conv.epilog
    out = next(a for a in conv._actions if a.dest == "output")
    assert "$IG3D_HOME/weights/<part>" in out.help
