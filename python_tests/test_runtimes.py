"""The runtime interface (ig3d.engines): the registry, a runtime plugged in through it driving the
worker pool and PerCoreModel, backend="auto"'s rule, precision requests, and per-network precision."""

from __future__ import annotations

import sys
import types

import numpy as np
import pytest

import ig3d
from ig3d import engines
from ig3d.engines.base import Model, Runtime


def test_registry_names_every_runtime():
    for name in engines.RUNTIME_MODULES:
        rt = engines.get_runtime(name)
        assert isinstance(rt, Runtime) and rt.name == name
        assert set(rt.devices()) <= {"cpu", "cuda"}
        assert (rt.missing() is None) == bool(rt.devices()) or name == "onnxruntime"
    entries = engines.available_backends()
    assert {"onnxruntime-cpu", "onnxruntime-cuda", "openvino", "tensorrt"} <= {e["name"] for e in entries}
    # each runtime's available devices are exactly its available entries
    for rt in engines.runtimes():
        assert sorted(rt.devices()) == sorted(e["device"] for e in entries if e["backend"] == rt.name and e["available"])
    with pytest.raises(ValueError, match="backend: expected one of"):
        engines.get_runtime("nope")


class _Scale(Model):
    """A numpy 'network': y = x * factor, batch kept; records the threads it was loaded with."""

    def __init__(self, factor, threads, parallel_runs, precision, name):
        self.factor, self.threads, self.parallel_runs = factor, threads, parallel_runs
        self.name, self.backend, self.precision = name, "fake", precision
        self.input_names, self.output_names = ["x"], ["y"]
        self.calls = 0

    def run(self, inputs):
        x = inputs["x"] if isinstance(inputs, dict) else inputs
        self.calls += 1
        return {"y": x * self.factor}


class _FakeRuntime(Runtime):
    name = "fake"
    exact_cpu = True
    auto_rank = 1000
    install_hint = "nothing"

    def __init__(self):
        self.loaded = []

    def missing(self):
        return None

    def devices(self):
        return ["cpu"]

    def precisions(self, device):
        return ("fp32", "bf16")

    def load(self, model, *, device="cpu", threads=None, parallel_runs=1, precision="fp32", name="", spin=False):
        m = _Scale(float(len(model)), threads, parallel_runs, precision, name)
        self.loaded.append(m)
        return m


@pytest.fixture
def fake_runtime(monkeypatch):
    """A runtime module ig3d.engines._fake plugged in through RUNTIME_MODULES, as a new runtime would be."""
    mod = types.ModuleType("ig3d.engines._fake")
    mod.RUNTIME = _FakeRuntime()
    monkeypatch.setitem(sys.modules, "ig3d.engines._fake", mod)
    monkeypatch.setitem(engines.RUNTIME_MODULES, "fake", "_fake")
    monkeypatch.setattr(engines, "BACKENDS", engines.BACKENDS + ("fake",))
    return mod.RUNTIME


def test_a_plugged_in_runtime_drives_workers_and_per_core_model(fake_runtime):
    assert {"name": "fake", "available": True, "version": None, "reason": None, "backend": "fake",
            "device": "cpu"} in engines.available_backends()
    assert engines.resolve("fake") == ("fake", "cpu")
    # auto on the CPU: the exact runtime with the highest auto_rank
    assert engines.resolve("auto", "cpu") == ("fake", "cpu")
    workers = engines.Workers(2)
    src = b"12345"  # the fake runtime's factor: len(model) = 5
    m = engines.PerCoreModel(src, workers=workers, backend="fake", threads=2, name="five", precision="bf16")
    all_cores, one_core = fake_runtime.loaded
    assert (all_cores.threads, all_cores.parallel_runs) == (2, 1)  # a lone item: every core
    assert (one_core.threads, one_core.parallel_runs) == (1, 2)  # items spread over the 2 workers
    assert m.for_items(1) is all_cores and m.for_items(3) is one_core and m.precision == "bf16"
    x = np.arange(12, dtype=np.float32).reshape(4, 3)
    np.testing.assert_array_equal(workers.run(m.for_items(4), x)["y"], x * 5)
    assert one_core.calls == 4  # one run per item
    # one worker: one model serves both roles, one batched run
    seq = engines.Workers(1)
    m1 = engines.PerCoreModel(src, workers=seq, backend="fake", threads=2)
    assert m1.for_items(1) is m1.for_items(4)
    np.testing.assert_array_equal(seq.run(m1.for_items(4), x)["y"], x * 5)
    assert m1.for_items(4).calls == 1


def test_auto_rule_and_explicit_requests(monkeypatch):
    have = {e["name"] for e in engines.available_backends() if e["available"]}
    cpu_exact = [rt for rt in engines.runtimes() if rt.exact_cpu and "cpu" in rt.devices()]
    want = max(cpu_exact, key=lambda rt: rt.auto_rank).name
    assert engines.resolve("auto", "cpu") == (want, "cpu")
    # ONNX Runtime outranks OpenVINO on the CPU (measured faster in the per-face worker pool)
    assert want == "onnxruntime"
    if "openvino" in have:
        assert engines.resolve("openvino", "cpu") == ("openvino", "cpu")
    assert engines.resolve("onnxruntime", "cpu") == ("onnxruntime", "cpu")
    for bad, match in ((dict(backend="nope"), "backend: expected one of"),
                       (dict(device="tpu"), "device: expected one of"),
                       (dict(precision="fp16"), "precision: expected one of"),
                       (dict(backend="onnxruntime", device="cpu", precision="bf16"), "precision='bf16' runs on the CPU")):
        with pytest.raises(ValueError, match=match):
            engines.resolve(**bad)
    with pytest.raises(ValueError, match="precision='bf16'"):
        ig3d.Predictor(backend="onnxruntime", precision="bf16")
    with pytest.raises(ValueError, match="precision"):
        engines.load(ig3d.presets.asset_path("fer_mini_xception.onnx"), backend="onnxruntime", precision="bf16")


def test_bf16_is_refused_without_bf16_hardware(monkeypatch):
    pytest.importorskip("openvino", reason="bf16 runs with OpenVINO (pip install 'ig3d[openvino]')")
    from ig3d.engines import openvino as ov_runtime

    monkeypatch.setattr(ov_runtime, "cpu_has_bf16", lambda: False)
    with pytest.raises(ValueError, match="AMX or AVX512-BF16"):
        ig3d.Predictor(precision="bf16")
    with pytest.raises(ValueError, match="AMX or AVX512-BF16"):
        engines.load(ig3d.presets.asset_path("fer_mini_xception.onnx"), backend="openvino", precision="bf16")


def test_network_precision():
    gated = {"a"}
    assert engines.network_precision("fp32", "a", gated) == "fp32"
    assert engines.network_precision("bf16", "a", gated) == "bf16"
    assert engines.network_precision("bf16", "b", gated) == "fp32"  # failed its gate: stays fp32
    assert engines.network_precision({"b": "bf16"}, "b", gated) == "bf16"  # explicit
    assert engines.network_precision({"b": "bf16"}, "a", gated) == "fp32"
    with pytest.raises(ValueError, match="precision: expected one of"):
        engines.network_precision("int8", "a", gated)
    with pytest.raises(ValueError, match=r"precision\['a'\]"):
        engines.network_precision({"a": "fp16"}, "a", gated)


def test_thread_settings():
    p = ig3d.Predictor(backend="onnxruntime", parallel_runs=2, threads_per_run=1)
    pipe = p._pipeline
    assert pipe.workers.n == 2 and pipe.threads_per_run == 1
    old = ig3d.Predictor(backend="onnxruntime", threads=1)  # threads= keeps its meaning: one batched run
    assert old._pipeline.workers.n == 1 and not old._pipeline.workers.parallel and old._pipeline.threads_per_run == 1
    for arg in ("threads", "parallel_runs", "threads_per_run"):
        with pytest.raises(ValueError, match=f"{arg} must be a positive number"):
            ig3d.Predictor(backend="onnxruntime", **{arg: 0})
