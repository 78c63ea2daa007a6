"""Shared fixtures: where the real face photos are (beside the checkout in CI)."""

from __future__ import annotations

import contextlib
import ctypes
import os
import types
from pathlib import Path

import numpy as np
import pytest


def faces_dir() -> Path:
    env = os.environ.get("IG3D_FACES_DIR")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[1].parent / "shared" / "data" / "faces"


@pytest.fixture(scope="session")
def faces() -> Path:
    d = faces_dir()
    if not (d / "MANIFEST.csv").is_file():
        pytest.skip(f"the face photos are not here ({d}); set IG3D_FACES_DIR to the shared/data/faces folder")
    return d


def reference_key_list(filename: str):
    """[(key, shape)] of an upstream checkpoint key list (``shared/reference/keys/<filename>``, or
    ``$IG3D_REFERENCE_DIR``: that folder or its ``keys/``), in file order; skips when absent."""
    env = os.environ.get("IG3D_REFERENCE_DIR")
    if env:
        d = Path(env)
        path = d / filename if (d / filename).is_file() else d / "keys" / filename
    else:
        path = Path(__file__).resolve().parents[1].parent / "shared" / "reference" / "keys" / filename
    if not path.is_file():
        pytest.skip(f"the upstream key list is not here ({path}); set IG3D_REFERENCE_DIR to shared/reference")
    rows = []
    for line in path.read_text().splitlines():
        if line.strip():
            key, shape = line.split("\t")
            rows.append((key, tuple(int(t) for t in shape.strip().strip("[]").split(",") if t.strip())))
    return rows


@contextlib.contextmanager
def one_torch_thread():
    """Run torch on one thread, then restore: on a shared 2-core machine OpenMP threads waiting on a
    busy core made a 224x224 forward ~25x slower [measured], and these networks gain little from two."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


@pytest.fixture(scope="module")
def torch_one_thread():
    """:func:`one_torch_thread` for a whole test module (``pytestmark = usefixtures(...)``)."""
    with one_torch_thread():
        yield


def write_standin_encoder(path, size: int, outputs: dict, seed: int) -> None:
    """A tiny ONNX stand-in encoder (no torch): the image's channel means (global average pool, 3
    values) -> one random linear map per output (``outputs``: name -> width), batch dimension ``N``."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    nodes = [helper.make_node("GlobalAveragePool", ["input"], ["pooled"]),
             helper.make_node("Flatten", ["pooled"], ["flat"])]
    inits, outs = [], []
    for name, width in outputs.items():
        inits += [numpy_helper.from_array(rng.normal(size=(3, width)).astype(np.float32), f"{name}_w"),
                  numpy_helper.from_array(rng.normal(size=width).astype(np.float32), f"{name}_b")]
        nodes.append(helper.make_node("Gemm", ["flat", f"{name}_w", f"{name}_b"], [name]))
        outs.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", width]))
    graph = helper.make_graph(nodes, "standin", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                               ["N", 3, size, size])], outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))


def calibrate_bn(model, x) -> None:
    """Random init leaves BatchNorm statistics at 0/1: set them from ``x`` (one pass in train mode,
    cumulative averages) so that the outputs depend on the input; the model ends in eval mode."""
    import torch

    model.train()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.reset_running_stats()
                m.momentum = None
        model(x)
    model.eval()


# -- a GPU emulated in host memory (test_device_arrays.py, test_tensorrt.py) -------------------------
def host_view(ptr, shape):
    """``shape`` float32 values at host address ``ptr`` (a stand-in device pointer), as an array."""
    n = int(np.prod(shape))
    return np.ctypeslib.as_array((ctypes.c_float * max(n, 1)).from_address(ptr))[:n].reshape(shape)


class HostCore:
    """A stand-in for the CUDA parts of ig3d's core (``ig3d.kernels._core_module``) that keeps
    "device" memory on the host (one device, index 0): the Python device paths (pointer checks,
    streams, DeviceArray, engines' bindings, copies) run end to end on a machine without a GPU,
    with the CPU kernels doing the arithmetic. ``calls`` records stream waits and copies."""

    def __init__(self, real):
        self.real, self.calls, self.buffers = real, [], []

    def __getattr__(self, name):
        return getattr(self.real, name)

    def cuda_compiled(self):
        return True

    def cuda_device_count(self):
        return 1, ""

    def cuda_require_device(self, device):
        assert device == 0

    def cuda_pointer_device(self, ptr):
        return 0

    def cuda_stream_wait(self, device, waiter, waitee):
        self.calls.append(("wait", waiter, waitee))

    def DeviceBuffer(self, nbytes, device, stream):  # noqa: N802 - the core's class name
        mem = np.zeros(max(int(nbytes), 1), np.uint8)
        buf = types.SimpleNamespace(ptr=int(mem.ctypes.data), nbytes=int(nbytes), device=device, stream=stream,
                                    mem=mem)
        self.buffers.append(buf)
        return buf

    def copy_to_device(self, dst, src, device, stream):
        self.calls.append(("h2d", src.nbytes, stream))
        ctypes.memmove(dst, src.ctypes.data, src.nbytes)

    def copy_to_host(self, src, out, device, stream):
        self.calls.append(("d2h", out.nbytes, stream))
        ctypes.memmove(out.ctypes.data, src, out.nbytes)
