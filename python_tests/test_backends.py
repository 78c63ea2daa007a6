"""ig3d.available_backends(): one dict per backend with name, available, version and reason; asking
for an unavailable backend raises with that reason; ``ig3d info`` prints the same list.

The CUDA and package situations that this machine does not have are made by replacing what ig3d
asks (ONNX Runtime's provider list, the CUDA probe, ``sys.modules`` entries), and the answers are
checked against the packages' own version strings and the core's own CUDA status.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from importlib import metadata

import pytest

import ig3d
from ig3d import engines
from ig3d.engines import _cuda
from ig3d.engines import onnxruntime as ort_runtime

NAMES = ["onnxruntime-cpu", "openvino", "onnxruntime-cuda", "tensorrt"]


def by_name():
    return {e["name"]: e for e in ig3d.available_backends()}


def test_one_dict_per_backend_with_its_reason():
    entries = ig3d.available_backends()
    assert [e["name"] for e in entries] == NAMES  # the CPU ones first
    for e in entries:
        assert set(e) == {"name", "available", "version", "reason", "backend", "device"}
        assert isinstance(e["available"], bool)
        assert (e["reason"] is None) == e["available"], e
        assert e["reason"] is None or (isinstance(e["reason"], str) and e["reason"])
        assert e["version"] is None or isinstance(e["version"], str)
    have = by_name()
    import onnxruntime

    assert have["onnxruntime-cpu"]["available"] and have["onnxruntime-cpu"]["version"] == onnxruntime.__version__
    assert (have["onnxruntime-cpu"]["backend"], have["onnxruntime-cpu"]["device"]) == ("onnxruntime", "cpu")
    assert (have["tensorrt"]["backend"], have["tensorrt"]["device"]) == ("tensorrt", "cuda")
    try:
        ov_version = metadata.version("openvino")
    except metadata.PackageNotFoundError:
        ov_version = None
    assert have["openvino"]["version"] == ov_version and have["openvino"]["available"] == (ov_version is not None)
    # a copy each call: callers may change what they get
    entries[0]["available"] = "changed"
    assert ig3d.available_backends()[0]["available"] is True


def test_onnxruntime_cuda_reasons(monkeypatch):
    monkeypatch.setattr(ort_runtime, "_providers", lambda: ["CPUExecutionProvider"])
    e = by_name()["onnxruntime-cuda"]
    assert not e["available"] and e["reason"] == "onnxruntime has no CUDAExecutionProvider (install onnxruntime-gpu)"
    with pytest.raises(RuntimeError, match="device='cuda' was requested but onnxruntime-cuda is not available: "
                                           r"onnxruntime has no CUDAExecutionProvider \(install onnxruntime-gpu\)"):
        engines.resolve("onnxruntime", "cuda")
    # onnxruntime-gpu installed, but no usable device: ONNX Runtime would quietly run on the CPU; ig3d says why not
    monkeypatch.setattr(ort_runtime, "_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    why = "no CUDA device: cudaErrorInsufficientDriver: CUDA driver version is insufficient for CUDA runtime version"
    monkeypatch.setattr(_cuda, "cuda_problem", lambda: why)
    e = by_name()["onnxruntime-cuda"]
    assert not e["available"] and e["reason"] == why
    assert ort_runtime.RUNTIME.devices() == ["cpu"]
    with pytest.raises(RuntimeError, match="device='cuda' was requested") as err:
        ig3d.Predictor(device="cuda")
    assert why in str(err.value)
    assert engines.resolve("auto", "auto")[1] == "cpu"  # auto: no CUDA, no error
    # and with a device: available, and auto takes it
    monkeypatch.setattr(_cuda, "cuda_problem", lambda: None)
    e = by_name()["onnxruntime-cuda"]
    assert e["available"] and e["reason"] is None
    assert ort_runtime.RUNTIME.devices() == ["cuda", "cpu"]
    assert engines.resolve("auto", "auto") == ("onnxruntime", "cuda")
    assert engines.resolve("onnxruntime", "cuda") == ("onnxruntime", "cuda")


def test_cuda_problem_is_the_cores_status_or_the_drivers():
    info = ig3d.kernels.info()
    if info["cuda_devices"]:
        assert _cuda.cuda_problem() is None
    else:
        assert _cuda.cuda_problem() == f"no CUDA device: {info['cuda_status']}"


def test_cuda_problem_without_a_cuda_core_asks_the_driver(monkeypatch):
    core = ig3d.kernels.core()
    monkeypatch.setattr(ig3d.kernels, "_core_module", type("Core", (), {
        "cuda_compiled": staticmethod(lambda: False), "__getattr__": lambda self, n: getattr(core, n)})())
    monkeypatch.setattr(_cuda, "driver_device_count", lambda: (0, "CUDA_ERROR_NO_DEVICE"))
    assert _cuda.cuda_problem() == "no CUDA device: CUDA_ERROR_NO_DEVICE"
    monkeypatch.setattr(_cuda, "driver_device_count", lambda: (2, ""))
    assert _cuda.cuda_problem() is None


def test_device_identity_reads_the_driver_or_says_why():
    n, why = _cuda.driver_device_count()
    if n == 0:
        assert why
        with pytest.raises(RuntimeError, match="cannot read CUDA device 0: "):
            _cuda.device_identity(0)
    else:  # pragma: no cover - on a GPU machine
        name, cc = _cuda.device_identity(0)
        assert name and re.fullmatch(r"\d+\.\d+", cc)


def test_missing_packages_are_reasons_and_errors(monkeypatch):
    monkeypatch.setitem(sys.modules, "tensorrt", None)
    monkeypatch.setitem(sys.modules, "openvino", None)
    have = by_name()
    assert have["tensorrt"]["reason"].startswith("tensorrt is not installed: pip install \"ig3d[tensorrt]\"")
    assert not have["openvino"]["available"] and "pip install" in have["openvino"]["reason"]
    for backend in ("tensorrt", "openvino"):
        with pytest.raises(RuntimeError, match=f"backend='{backend}' is not available here") as err:
            ig3d.Predictor(backend=backend)
        assert have[backend]["reason"] in str(err.value) and "available here: onnxruntime-cpu" in str(err.value)
    assert engines.resolve() == ("onnxruntime", "cpu")  # auto without OpenVINO: ONNX Runtime


def test_info_prints_the_list(tmp_path):
    r = subprocess.run([sys.executable, "-m", "ig3d", "info"], capture_output=True, text=True, cwd=tmp_path,
                       timeout=300)
    assert r.returncode == 0, r.stderr
    printed = json.loads(r.stdout)["backends"]
    assert printed == ig3d.available_backends()
