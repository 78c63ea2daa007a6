"""Shared fixtures: where the real face photos are (beside the checkout in CI)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

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
    import numpy as np
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
