"""Pinned downloads into IG3D_HOME, tested against a local HTTP server on 127.0.0.1 serving a
checkpoint the test makes."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import threading

import pytest

from ig3d import hub


@pytest.fixture
def server(tmp_path):
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(_QuietHandler, directory=str(root))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    t = threading.Thread(target=httpd.serve_forever, daemon=True)
    t.start()
    yield root, f"http://127.0.0.1:{httpd.server_address[1]}/"
    httpd.shutdown()
    httpd.server_close()
    t.join(timeout=5)


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):  # keep test output clean
        pass


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("IG3D_HOME", str(tmp_path / "home"))
    return tmp_path / "home"


def make_checkpoint(root, name="ckpt.pth"):
    data = b"\x80\x02fake-checkpoint" + bytes(range(256)) * 40  # the hub never unpickles it
    (root / name).write_bytes(data)
    return data


def test_git_blob_id_matches_git(tmp_path):
    data = b"hello ig3d\n"
    p = tmp_path / "f"
    p.write_bytes(data)
    try:
        expect = subprocess.run(["git", "hash-object", str(p)], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("git is not available")
    assert hub.git_blob_id(data) == expect


def test_download_verify_and_cache(server, home):
    root, url = server
    data = make_checkpoint(root)
    reg = {"toy": hub.Entry(url + "ckpt.pth", "ckpt.pth", git_blob=hub.git_blob_id(data),
                            sha256=hashlib.sha256(data).hexdigest())}
    path = hub.fetch("toy", registry=reg)
    assert path == home / "weights" / "toy" / "ckpt.pth" and path.read_bytes() == data
    (root / "ckpt.pth").unlink()  # the server no longer has it: the cached copy is used
    assert hub.fetch("toy", registry=reg).read_bytes() == data
    assert hub.fetch("toy", registry=reg, local_files_only=True) == path


def test_hash_mismatch_keeps_nothing(server, home):
    root, url = server
    make_checkpoint(root)
    reg = {"toy": hub.Entry(url + "ckpt.pth", "ckpt.pth", git_blob="0" * 40)}
    with pytest.raises(ValueError, match="does not match its pin.*git blob id"):
        hub.fetch("toy", registry=reg)
    assert not (home / "weights" / "toy" / "ckpt.pth").exists()
    assert not any((home / "weights" / "toy").glob(".part-*"))


def test_damaged_cache_is_fetched_again(server, home):
    root, url = server
    data = make_checkpoint(root)
    reg = {"toy": hub.Entry(url + "ckpt.pth", "ckpt.pth", git_blob=hub.git_blob_id(data))}
    path = hub.fetch("toy", registry=reg)
    path.write_bytes(b"damaged")
    assert hub.fetch("toy", registry=reg).read_bytes() == data


def test_offline_and_missing_errors(server, home):
    root, url = server
    reg = {"toy": hub.Entry(url + "absent.pth", "absent.pth", git_blob="0" * 40),
           "dead": hub.Entry("http://127.0.0.1:9/x.pth", "x.pth", git_blob="0" * 40)}
    with pytest.raises(RuntimeError, match="could not download toy .*place it at"):
        hub.fetch("toy", registry=reg)  # 404
    with pytest.raises(RuntimeError, match="Offline\\?"):
        hub.fetch("dead", registry=reg, timeout=5)  # nothing listens on port 9
    with pytest.raises(FileNotFoundError, match="local_files_only=True"):
        hub.fetch("toy", registry=reg, local_files_only=True)
    with pytest.raises(KeyError, match="unknown weights"):
        hub.fetch("nope", registry=reg)


def test_registry_is_pinned_and_instructions_name_the_convert_command():
    for name, e in hub.REGISTRY.items():
        assert e.git_blob or e.sha256, name
        assert e.kind in hub.HOW_TO_GET
    for kind in ("emoca", "smirk", "deca", "ddamfn", "cage"):
        err = hub.missing_weights_error(kind, "ig3d-emoca-ddamfn")
        assert isinstance(err, FileNotFoundError) and f"ig3d convert {kind}" in str(err)
    assert "registration" in str(hub.missing_weights_error("emoca"))
