"""Packaging facts: import ig3d pulls in neither torch nor onnxruntime; kernels.info() answers
without a GPU; the CLI prints it."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import ig3d


def test_import_is_light(tmp_path):
    code = ("import sys, ig3d; heavy = [m for m in ('torch', 'onnxruntime', 'tensorrt', 'PIL') if m in sys.modules];"
            "print(heavy)")
    # run outside the checkout so the installed package is imported, not the source tree
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=tmp_path)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_version():
    assert isinstance(ig3d.__version__, str) and ig3d.__version__.count(".") == 2


def test_kernels_info():
    info = ig3d.kernels.info()
    assert info["cpu_isa"] in ("avx512", "avx2", "sse2", "generic")
    assert info["cpu_isa"] == info["cpu_isas_supported"][0]
    assert isinstance(info["cuda_compiled"], bool)
    assert isinstance(info["cuda_devices"], int) and info["cuda_devices"] >= 0
    assert info["num_threads"] >= 1


def test_cli_info(tmp_path):
    out = subprocess.run([sys.executable, "-m", "ig3d.cli", "info"], capture_output=True, text=True, check=True,
                         cwd=tmp_path)
    facts = json.loads(out.stdout)
    assert facts["version"] == ig3d.__version__ and "cpu_isa" in facts


@pytest.mark.skipif(os.environ.get("IG3D_EXPECT_CUDA") != "1", reason="set IG3D_EXPECT_CUDA=1 where nvcc must have been used")
def test_cuda_launcher_was_compiled():
    """CI builds with IG3D_CUDA=ON and checks the CUDA launcher really is in the module."""
    assert ig3d.kernels.info()["cuda_compiled"] is True
