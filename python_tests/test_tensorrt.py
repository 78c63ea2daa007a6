"""The native TensorRT runtime (ig3d.engines.tensorrt) against a fake ``tensorrt`` module.

TensorRT and a GPU are not needed: a small stand-in for TensorRT's Python API is put in
``sys.modules``. It records every builder call (flags, optimisation profiles, what was parsed),
"serialises" an engine as JSON that names what it was built from, and "executes" it on host memory
(y = scale * x + offset), while a stand-in for the CUDA parts of ig3d's core keeps device buffers on
the host. What is checked: the cache key and file names, reuse, invalidation (every key field,
truncated, corrupt, mismatched and orphaned engines are rebuilt and never deserialised), atomic
writes, the profile each input gets, precision flags, batches split over launches, input checks,
device outputs, the registry and ``ig3d engines build|list|clear``, and the Ig3D presets' encoder outputs
feeding the fused head on the device (its ``forward_device`` computed on the host by a stand-in).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import logging
import os
import sys
import types

import numpy as np
import pytest
from conftest import HostCore, host_view, write_standin_encoder

import ig3d
from ig3d import engines
from ig3d import device as dm
from ig3d.engines import tensorrt as trt_rt


# --- the fake TensorRT ------------------------------------------------------------------------------------------

class _Enum:
    def __init__(self, name):
        self.name = name

    def __repr__(self):
        return self.name


def make_fake_trt(version="10.9.0", fp16_flag=True):
    """A module that answers the parts of TensorRT's Python API ig3d uses, recording each call."""
    trt = types.ModuleType("tensorrt")
    trt.__version__ = version
    trt.calls = []
    trt.deserialised = []  # every blob handed to deserialize_cuda_engine
    trt.launches = []

    class Logger:
        WARNING = _Enum("WARNING")

        def __init__(self, severity):
            self.severity = severity

    flags = {"TF32": _Enum("TF32")}
    if fp16_flag:
        flags["FP16"] = _Enum("FP16")
    trt.BuilderFlag = types.SimpleNamespace(**flags)
    trt.TensorIOMode = types.SimpleNamespace(INPUT=_Enum("INPUT"), OUTPUT=_Enum("OUTPUT"))
    trt.DataType = types.SimpleNamespace(FLOAT=_Enum("FLOAT"))
    trt.nptype = lambda dt: {"FLOAT": np.float32}[dt.name]

    class Tensor:
        def __init__(self, name, shape):
            self.name, self.shape = name, tuple(shape)

    class Network:
        def __init__(self):
            self.inputs, self.outputs, self.spec = [], [], None

        @property
        def num_inputs(self):
            return len(self.inputs)

        def get_input(self, i):
            return self.inputs[i]

    class Parser:
        def __init__(self, network, logger):
            self.network, self.errors = network, []

        @property
        def num_errors(self):
            return len(self.errors)

        def get_error(self, i):
            return self.errors[i]

        def parse(self, data):
            trt.calls.append(("parse", hashlib.sha256(data).hexdigest()))
            return self._read(data)

        def parse_from_file(self, path):
            with open(path, "rb") as f:
                data = f.read()
            trt.calls.append(("parse_from_file", os.path.basename(path), hashlib.sha256(data).hexdigest()))
            ok = self._read(data)
            if ok and not data.startswith(b"{"):
                self.network.spec["onnx_path"] = str(path)  # the "engine" runs it with ONNX Runtime
            return ok

        def _read(self, data):
            if data.startswith(b"{"):  # a test network: JSON with its inputs, outputs and arithmetic
                spec = json.loads(data)
            else:  # a real ONNX file: its inputs and outputs as ONNX Runtime reads them
                import onnxruntime as ort

                try:
                    s = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
                except Exception as e:  # noqa: BLE001
                    self.errors.append(f"In node -1: invalid model: {e}")
                    return False
                dims = lambda shape: [d if isinstance(d, int) else -1 for d in shape]  # noqa: E731
                spec = {"inputs": [{"name": i.name, "shape": dims(i.shape)} for i in s.get_inputs()],
                        "outputs": [{"name": o.name, "shape": dims(o.shape)} for o in s.get_outputs()]}
            self.network.spec = spec
            self.network.inputs = [Tensor(i["name"], i["shape"]) for i in spec["inputs"]]
            return True

    class Profile:
        def __init__(self):
            self.shapes = {}

        def set_shape(self, name, lo, mid, hi):
            self.shapes[name] = (tuple(lo), tuple(mid), tuple(hi))

    class Config:
        def __init__(self):
            self.flags, self.cleared, self.profiles = set(), set(), []

        def set_flag(self, flag):
            self.flags.add(flag.name)

        def clear_flag(self, flag):
            self.cleared.add(flag.name)

        def add_optimization_profile(self, profile):
            self.profiles.append(profile)
            return len(self.profiles) - 1

    class Builder:
        def __init__(self, logger):
            pass

        def create_network(self, flags):
            assert flags == 0  # explicit batch is TensorRT 10's default
            return Network()

        def create_builder_config(self):
            return Config()

        def create_optimization_profile(self):
            return Profile()

        def build_serialized_network(self, network, config):
            (profile,) = config.profiles
            trt.calls.append(("build", {"flags": sorted(config.flags), "cleared": sorted(config.cleared),
                                        "profile": dict(profile.shapes)}))
            blob = {"magic": "fake-engine", "spec": network.spec, "flags": sorted(config.flags),
                    "profile": {k: [list(s) for s in v] for k, v in profile.shapes.items()}}
            return json.dumps(blob).encode()

    class Context:
        def __init__(self, engine):
            self.engine, self.shapes, self.addresses = engine, {}, {}

        def set_input_shape(self, name, shape):
            lo, _, hi = self.engine.profile[name]
            ok = len(shape) == len(lo) and all(a <= d <= b for a, d, b in zip(lo, shape, hi))
            if ok:
                self.shapes[name] = tuple(shape)
            return ok

        def _ort_run(self, feed):
            names = [o["name"] for o in self.engine.spec["outputs"]]
            return dict(zip(names, self.engine.session().run(names, feed)))

        def get_tensor_shape(self, name):
            if "onnx_path" in self.engine.spec:  # a real network: its output shapes for the input shapes set
                feed = {k: np.zeros(v, np.float32) for k, v in self.shapes.items()}
                return tuple(self._ort_run(feed)[name].shape)
            spec = next(o for o in self.engine.spec["outputs"] if o["name"] == name)
            batch = next(iter(self.shapes.values()))[0]
            return tuple(batch if (i == 0 and d == -1) else d for i, d in enumerate(spec["shape"]))

        def set_tensor_address(self, name, ptr):
            self.addresses[name] = int(ptr)

        def execute_async_v3(self, stream):
            spec = self.engine.spec
            if "onnx_path" in spec:
                feed = {k: host_view(self.addresses[k], v).copy() for k, v in self.shapes.items()}
                for k, y in self._ort_run(feed).items():
                    host_view(self.addresses[k], y.shape)[...] = y
                trt.launches.append((next(iter(self.shapes.values()))[0], stream))
                return True
            (inp,) = spec["inputs"]
            shape = self.shapes[inp["name"]]
            x = host_view(self.addresses[inp["name"]], shape)
            for o in spec["outputs"]:
                y = host_view(self.addresses[o["name"]], self.get_tensor_shape(o["name"]))
                y[...] = x * o["scale"] + o["offset"]
            trt.launches.append((shape[0], stream))
            return True

    class Engine:
        def __init__(self, blob):
            self.spec, self._session = blob["spec"], None
            self.profile = {k: tuple(tuple(s) for s in v) for k, v in blob["profile"].items()}
            self.names = [i["name"] for i in self.spec["inputs"]] + [o["name"] for o in self.spec["outputs"]]

        def session(self):
            if self._session is None:
                import onnxruntime as ort

                self._session = ort.InferenceSession(self.spec["onnx_path"], providers=["CPUExecutionProvider"])
            return self._session

        @property
        def num_io_tensors(self):
            return len(self.names)

        def get_tensor_name(self, i):
            return self.names[i]

        def get_tensor_mode(self, name):
            inputs = {i["name"] for i in self.spec["inputs"]}
            return trt.TensorIOMode.INPUT if name in inputs else trt.TensorIOMode.OUTPUT

        def get_tensor_dtype(self, name):
            return trt.DataType.FLOAT

        def get_tensor_profile_shape(self, name, index):
            assert index == 0
            return self.profile[name]

        def create_execution_context(self):
            return Context(self)

    class Runtime:
        def __init__(self, logger):
            pass

        def deserialize_cuda_engine(self, blob):
            trt.deserialised.append(bytes(blob))
            try:
                parsed = json.loads(bytes(blob))
            except ValueError:
                return None
            return Engine(parsed) if isinstance(parsed, dict) and parsed.get("magic") == "fake-engine" else None

    trt.Logger, trt.Builder, trt.OnnxParser, trt.Runtime = Logger, Builder, Parser, Runtime
    return trt


GPU = {"name": "NVIDIA Fake GPU", "cc": "8.7"}


@pytest.fixture
def fake_trt(monkeypatch, tmp_path):
    """The fake tensorrt in sys.modules, a fake GPU identity, the host-memory core, IG3D_HOME in tmp_path."""
    trt = make_fake_trt()
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    monkeypatch.setattr(trt_rt, "_gpu_identity", lambda device: (GPU["name"], GPU["cc"]))
    monkeypatch.setattr(ig3d.kernels, "_core_module", HostCore(ig3d.kernels.core()))
    monkeypatch.setenv("IG3D_HOME", str(tmp_path / "home"))
    monkeypatch.setitem(GPU, "name", "NVIDIA Fake GPU")
    monkeypatch.setitem(GPU, "cc", "8.7")
    return trt


def net(tmp_path, scale=2.0, offset=1.0, width=3, name="net.onnx", extra_outputs=()):
    """A test network file: y = scale * x + offset on [N, width] float32 (the fake parser reads JSON)."""
    spec = {"inputs": [{"name": "x", "shape": [-1, width]}],
            "outputs": [{"name": "y", "shape": [-1, width], "scale": scale, "offset": offset}, *extra_outputs]}
    path = tmp_path / name
    path.write_text(json.dumps(spec))
    return path


def builds(trt):
    return [c[1] for c in trt.calls if c[0] == "build"]


def cache_files(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


# --- building and the cache key -------------------------------------------------------------------------------

def test_build_records_profile_precision_and_key(fake_trt, tmp_path):
    path = net(tmp_path)
    cache = tmp_path / "engines"
    res = trt_rt.build_engine(path, cache_dir=cache)  # fp16 and the default profile
    assert res.built and res.path.parent == cache
    (b,) = builds(fake_trt)
    assert b["flags"] == ["FP16"] and b["cleared"] == []
    assert b["profile"] == {"x": ((1, 3), (16, 3), (256, 3))}  # batch 1-16-256, the width fixed
    assert ("parse_from_file", "net.onnx", hashlib.sha256(path.read_bytes()).hexdigest()) in fake_trt.calls
    meta = json.loads(res.path.with_suffix(".json").read_text())
    want_key = {"onnx_sha256": hashlib.sha256(path.read_bytes()).hexdigest(), "tensorrt": "10.9.0",
                "gpu": "NVIDIA Fake GPU", "compute_capability": "8.7", "precision": "fp16",
                "profile": {"batch": [1, 16, 256], "dim": [32, 256, 2048]}}
    assert meta["key"] == want_key and meta["onnx"] == "net.onnx"
    blob = res.path.read_bytes()
    assert meta["engine_bytes"] == len(blob) and meta["engine_sha256"] == hashlib.sha256(blob).hexdigest()
    # the file name: ONNX stem, precision, and the digest of the key's canonical JSON (independently computed)
    canon = json.dumps({"format": 1, **want_key}, sort_keys=True, separators=(",", ":"))
    assert res.path.name == f"net.fp16.{hashlib.sha256(canon.encode()).hexdigest()[:20]}.engine"
    # fp32: TF32 off, no FP16
    res32 = trt_rt.build_engine(path, precision="fp32", cache_dir=cache)
    assert builds(fake_trt)[-1]["flags"] == [] and builds(fake_trt)[-1]["cleared"] == ["TF32"]
    assert res32.path != res.path and ".fp32." in res32.path.name


def test_default_cache_folder_is_under_ig3d_home(fake_trt, tmp_path):
    res = trt_rt.build_engine(net(tmp_path))
    assert res.path.parent == tmp_path / "home" / "engines"


def test_a_valid_cached_engine_is_reused(fake_trt, tmp_path):
    path, cache = net(tmp_path), tmp_path / "engines"
    first = trt_rt.build_engine(path, cache_dir=cache)
    again = trt_rt.build_engine(path, cache_dir=cache)
    assert not again.built and again.path == first.path and len(builds(fake_trt)) == 1
    trt_rt.load_engine(path, cache_dir=cache)
    assert len(builds(fake_trt)) == 1 and fake_trt.deserialised[-1] == first.path.read_bytes()
    forced = trt_rt.build_engine(path, cache_dir=cache, force=True)
    assert forced.built and len(builds(fake_trt)) == 2


@pytest.mark.parametrize("change", ["onnx", "tensorrt", "gpu", "compute_capability", "precision", "batch", "dim"])
def test_every_key_field_selects_its_own_engine(fake_trt, tmp_path, monkeypatch, change):
    path, cache = net(tmp_path), tmp_path / "engines"
    base = trt_rt.build_engine(path, cache_dir=cache).path
    kwargs = {}
    if change == "onnx":
        path = net(tmp_path, scale=3.0)  # same name, other bytes
    elif change == "tensorrt":
        fake_trt.__version__ = "10.10.0"
    elif change == "gpu":
        GPU["name"] = "NVIDIA Other GPU"
    elif change == "compute_capability":
        GPU["cc"] = "9.0"
    elif change == "precision":
        kwargs["precision"] = "fp32"
    elif change == "batch":
        kwargs["profile"] = trt_rt.Profile(1, 8, 64)
    else:
        kwargs["profile"] = trt_rt.Profile(dim=(64, 192, 1024))
    other = trt_rt.build_engine(path, cache_dir=cache, **kwargs)
    assert other.built and other.path != base and len(builds(fake_trt)) == 2
    assert base.exists()  # the other key's engine is kept (e.g. two GPUs sharing a home folder)
    assert not trt_rt.build_engine(path, cache_dir=cache, **kwargs).built


def _corrupt(kind, engine_path):
    meta_path = engine_path.with_suffix(".json")
    blob = engine_path.read_bytes()
    if kind == "truncated":
        engine_path.write_bytes(blob[: len(blob) // 2])
    elif kind == "flipped":
        engine_path.write_bytes(blob[:10] + bytes([blob[10] ^ 1]) + blob[11:])
    elif kind == "sidecar-other-gpu":  # e.g. a cache folder copied from another machine
        meta = json.loads(meta_path.read_text())
        meta["key"]["gpu"] = "NVIDIA Jetson Orin"
        meta_path.write_text(json.dumps(meta))
    elif kind == "sidecar-missing":  # a crash between the two writes
        meta_path.unlink()
    elif kind == "sidecar-garbage":
        meta_path.write_text("{not json")
    elif kind == "undeserialisable":  # size and hash recorded for bytes TensorRT rejects
        bad = b"\x00" * 64
        engine_path.write_bytes(bad)
        meta = json.loads(meta_path.read_text())
        meta.update(engine_bytes=len(bad), engine_sha256=hashlib.sha256(bad).hexdigest())
        meta_path.write_text(json.dumps(meta))


@pytest.mark.parametrize("kind", ["truncated", "flipped", "sidecar-other-gpu", "sidecar-missing", "sidecar-garbage",
                                  "undeserialisable"])
def test_corrupt_or_mismatched_engines_are_rebuilt_never_run(fake_trt, tmp_path, caplog, kind):
    path, cache = net(tmp_path), tmp_path / "engines"
    good = trt_rt.build_engine(path, cache_dir=cache).path
    good_bytes = good.read_bytes()
    _corrupt(kind, good)
    bad_bytes = good.read_bytes()
    fake_trt.deserialised.clear()
    with caplog.at_level(logging.WARNING, logger="ig3d"):
        model = trt_rt.load_engine(path, cache_dir=cache)
    assert len(builds(fake_trt)) == 2
    assert any("is not used" in r.getMessage() and "rebuilding" in r.getMessage() for r in caplog.records)
    if kind != "undeserialisable":  # only bytes that passed every check reach TensorRT
        assert bad_bytes not in fake_trt.deserialised or bad_bytes == good_bytes
    assert fake_trt.deserialised[-1] == good_bytes == good.read_bytes()
    assert trt_rt.list_engines(cache)[0]["valid"]
    np.testing.assert_allclose(model.run(np.ones((2, 3), np.float32))["y"], np.full((2, 3), 3.0))


def test_writes_are_atomic(fake_trt, tmp_path, monkeypatch):
    path, cache = net(tmp_path), tmp_path / "engines"
    real_replace = os.replace

    def failing_replace(src, dst):
        raise OSError("disk full")

    monkeypatch.setattr(trt_rt.os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        trt_rt.build_engine(path, cache_dir=cache)
    assert [f for f in cache_files(cache) if not f.endswith(".lock")] == []  # no engine, no temporary file
    # a crash after the engine and before its sidecar: the engine alone is never taken as valid
    calls = []

    def replace_once(src, dst):
        calls.append(dst)
        if str(dst).endswith(".json"):
            raise OSError("killed")
        return real_replace(src, dst)

    monkeypatch.setattr(trt_rt.os, "replace", replace_once)
    with pytest.raises(OSError, match="killed"):
        trt_rt.build_engine(path, cache_dir=cache)
    assert [os.path.splitext(c)[1] for c in calls] == [".engine", ".json"]  # the engine first, then its sidecar
    assert not any(f.endswith(".tmp") for f in cache_files(cache))
    monkeypatch.setattr(trt_rt.os, "replace", real_replace)
    (entry,) = trt_rt.list_engines(cache)
    assert not entry["valid"] and "sidecar" in entry["problem"]
    assert trt_rt.build_engine(path, cache_dir=cache).built
    assert trt_rt.list_engines(cache)[0]["valid"]


def test_real_onnx_inputs_get_the_profile(fake_trt, tmp_path):
    """The bundled networks as the fake parser reads them with ONNX Runtime: the batch axis gets the
    batch range, the full-range detector's symbolic height and width the dim range, fixed axes stay."""
    import onnxruntime as ort

    profile = trt_rt.Profile(2, 4, 8, dim=(64, 128, 512))
    for name in ("face_detector_full.onnx", "face_landmarks.onnx"):
        src = ig3d.presets.asset_path(name)
        trt_rt.build_engine(src, precision="fp32", profile=profile, cache_dir=tmp_path / "e")
        (inp,) = ort.InferenceSession(src, providers=["CPUExecutionProvider"]).get_inputs()
        want = tuple(zip(*[(2, 4, 8) if i == 0 else (64, 128, 512) if not isinstance(d, int) else (d, d, d)
                           for i, d in enumerate(inp.shape)]))
        assert builds(fake_trt)[-1]["profile"] == {inp.name: want}
    assert builds(fake_trt)[0]["profile"]["image"] == ((2, 64, 64, 3), (4, 128, 128, 3), (8, 512, 512, 3))


def test_build_errors(fake_trt, tmp_path):
    cache = tmp_path / "engines"
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    with pytest.raises(ValueError, match="bad.onnx: TensorRT could not parse the ONNX file: In node -1"):
        trt_rt.build_engine(bad, cache_dir=cache)
    assert [f for f in cache_files(cache) if not f.endswith(".lock")] == []
    with pytest.raises(FileNotFoundError, match="no such ONNX file"):
        trt_rt.build_engine(tmp_path / "missing.onnx", cache_dir=cache)
    with pytest.raises(ValueError, match="precision: TensorRT engines are built in one of"):
        trt_rt.build_engine(net(tmp_path), precision="bf16", cache_dir=cache)
    for args in ((0, 1, 4), (1, 8, 4), (1, 2, 3, (64, 32, 128))):
        with pytest.raises(ValueError, match="Profile: .* 1 <= min <= opt <= max"):
            trt_rt.Profile(*args)


def test_tensorrt_11_without_fp16_flag(monkeypatch, tmp_path, fake_trt):
    trt11 = make_fake_trt(version="11.4.0", fp16_flag=False)
    monkeypatch.setitem(sys.modules, "tensorrt", trt11)
    with pytest.raises(ValueError, match="TensorRT 11.4.0 has no BuilderFlag.FP16"):
        trt_rt.build_engine(net(tmp_path), cache_dir=tmp_path / "e")
    assert trt_rt.build_engine(net(tmp_path), precision="fp32", cache_dir=tmp_path / "e").built


# --- running ------------------------------------------------------------------------------------------------

def test_run_host_and_device_with_split_batches(fake_trt, tmp_path):
    model = trt_rt.load_engine(net(tmp_path, scale=0.5, offset=-2.0), profile=trt_rt.Profile(1, 4, 8),
                               cache_dir=tmp_path / "e")
    assert (model.input_names, model.output_names, model.max_batch) == (["x"], ["y"], 8)
    x = np.random.default_rng(0).normal(size=(19, 3)).astype(np.float32)
    np.testing.assert_array_equal(model.run(x)["y"], x * np.float32(0.5) - np.float32(2.0))
    assert [n for n, _ in fake_trt.launches] == [8, 8, 3]  # 19 rows over a profile of at most 8
    out = model.run_device({"x": x}, stream=7)["y"]
    assert isinstance(out, dm.DeviceArray) and out.shape == (19, 3) and out.stream == 7
    info = dm.inspect(out, "scores2d")  # what FusedHead reads: float32, C-contiguous, on the device
    assert dm.check_matrix(info, 3) == 19 and info.on_device
    np.testing.assert_array_equal(out.numpy(), x * np.float32(0.5) - np.float32(2.0))
    # a device array in (host memory standing in): read in place, no upload
    core = ig3d.kernels.core()
    n_h2d = sum(c[0] == "h2d" for c in core.calls)

    class Cai:
        def __init__(self, a):
            self.a = a
            self.__cuda_array_interface__ = {"shape": a.shape, "typestr": "<f4", "data": (a.ctypes.data, False),
                                             "strides": None, "version": 3, "stream": 5}

    y2 = model.run_device(Cai(x[:5].copy()))["y"]
    assert sum(c[0] == "h2d" for c in core.calls) == n_h2d and y2.stream == 5
    np.testing.assert_array_equal(y2.numpy(), x[:5] * np.float32(0.5) - np.float32(2.0))
    # the engine's outputs feed the next run on the device, and a call on another stream waits for the last one
    z = model.run_device(out, stream=9)["y"]
    assert ("wait", 9, 5) in core.calls
    np.testing.assert_allclose(z.numpy(), (x * 0.5 - 2.0) * 0.5 - 2.0, rtol=1e-6)
    empty = model.run(np.zeros((0, 3), np.float32))["y"]
    assert empty.shape == (0, 3)


def test_run_checks_name_the_input(fake_trt, tmp_path):
    model = trt_rt.load_engine(net(tmp_path), cache_dir=tmp_path / "e", profile=trt_rt.Profile(1, 2, 4))
    x = np.zeros((2, 3), np.float32)
    cases = [({"z": x}, r"net.onnx: unknown input\(s\) \['z'\]"),
             ({}, r"net.onnx: input\(s\) \['x'\] not given"),
             (x.astype(np.float64), "net.onnx: x: expected float32, got float64"),
             (np.zeros((2, 3, 1), np.float32), r"net.onnx: x: expected 2 dimensions, got shape \[2, 3, 1\]"),
             (np.zeros((2, 4), np.float32), r"net.onnx: x: dimension 1 is 4, outside the engine's profile \[3, 3\]")]
    for inputs, match in cases:
        with pytest.raises(ValueError, match=match):
            model.run(inputs)


# --- the registry, availability and the CLI -----------------------------------------------------------------

def test_registry_and_predictor_path(fake_trt, tmp_path):
    entry = next(e for e in ig3d.available_backends() if e["name"] == "tensorrt")
    assert entry == {"name": "tensorrt", "available": True, "version": "10.9.0", "reason": None,
                     "backend": "tensorrt", "device": "cuda"}
    assert engines.resolve("tensorrt") == ("tensorrt", "cuda")
    with pytest.raises(ValueError, match=r"backend='tensorrt' runs on \['cuda'\], not device='cpu'"):
        engines.resolve("tensorrt", "cpu")
    with pytest.raises(ValueError, match="precision='bf16'"):
        engines.resolve("tensorrt", precision="bf16")
    model = engines.load(str(net(tmp_path)), backend="tensorrt", device="cuda")
    assert isinstance(model, trt_rt.TensorRTModel) and model.precision == "fp32"
    assert builds(fake_trt)[-1]["flags"] == [] and builds(fake_trt)[-1]["cleared"] == ["TF32"]
    assert model.path.parent == tmp_path / "home" / "engines"
    np.testing.assert_array_equal(engines.Workers(1).run(model, np.ones((3, 3), np.float32))["y"], np.full((3, 3), 3.0))


def test_unavailable_reasons(monkeypatch, fake_trt):
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # import tensorrt -> ImportError
    why = trt_rt.tensorrt_problem()
    assert why.startswith("tensorrt is not installed: pip install \"ig3d[tensorrt]\"")
    with pytest.raises(RuntimeError, match="backend='tensorrt' is not available here") as err:
        engines.resolve("tensorrt")
    assert why in str(err.value)
    monkeypatch.setitem(sys.modules, "tensorrt", fake_trt)
    core = ig3d.kernels.core()
    monkeypatch.setattr(core, "cuda_device_count", lambda: (0, "cudaErrorInsufficientDriver: driver too old"),
                        raising=False)
    entry = next(e for e in ig3d.available_backends() if e["name"] == "tensorrt")
    assert entry["reason"] == "no CUDA device: cudaErrorInsufficientDriver: driver too old"
    assert not entry["available"] and entry["version"] == "10.9.0"
    monkeypatch.setattr(core, "cuda_compiled", lambda: False, raising=False)
    assert "no CUDA support" in trt_rt.tensorrt_problem()


def test_engines_cli(fake_trt, tmp_path, capsys):
    from ig3d.cli import main

    cache = tmp_path / "cli"
    a, b = net(tmp_path, name="a.onnx"), net(tmp_path, name="b.onnx", scale=4.0)
    assert main(["engines", "build", str(a), str(b), "--cache-dir", str(cache), "--max-batch", "32",
                 "--precision", "fp32"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in out] == [["built", "a.onnx", "fp32"], ["built", "b.onnx", "fp32"]]
    assert all(b["profile"]["x"][2] == (32, 3) for b in builds(fake_trt))
    assert main(["engines", "build", str(a), "--cache-dir", str(cache), "--max-batch", "32",
                 "--precision", "fp32"]) == 0
    assert capsys.readouterr().out.startswith("cached  a.onnx")
    assert main(["engines", "list", "--json", "--cache-dir", str(cache)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(e["onnx"], e["valid"]) for e in listed] == [("a.onnx", True), ("b.onnx", True)]
    assert listed[0]["key"]["profile"]["batch"] == [1, 16, 32]
    _corrupt("flipped", tmp_path / listed[1]["path"])
    assert main(["engines", "list", "--cache-dir", str(cache)]) == 0
    text = capsys.readouterr().out
    assert "2 engines" in text and "INVALID: sha256 differs" in text and "NVIDIA Fake GPU (sm 8.7)" in text
    assert main(["engines", "clear", "--invalid", "--cache-dir", str(cache)]) == 0
    assert [e["onnx"] for e in trt_rt.list_engines(cache)] == ["a.onnx"]
    assert main(["engines", "clear", "--cache-dir", str(cache)]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "removed 1 engine" and cache_files(cache) == []
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\x08\x01garbage")
    assert main(["engines", "build", str(bad), str(a), "--cache-dir", str(cache)]) == 1  # a failed, a built
    cap = capsys.readouterr()
    assert f"ig3d engines build: {bad}: bad.onnx: TensorRT could not parse the ONNX file" in cap.err
    assert cap.out.startswith("built  a.onnx  fp16  batch 1-16-256")


def test_engines_cli_without_tensorrt(monkeypatch, tmp_path, capsys):
    from ig3d.cli import main

    monkeypatch.setitem(sys.modules, "tensorrt", None)
    assert main(["engines", "build", "--cache-dir", str(tmp_path)]) == 1
    assert "cannot build TensorRT engines here: tensorrt is not installed" in capsys.readouterr().err
    assert main(["engines", "list", "--cache-dir", str(tmp_path / "none")]) == 0  # list works without TensorRT
    assert "0 engines" in capsys.readouterr().out


def test_predictor_on_tensorrt_engines_equals_onnxruntime(fake_trt, monkeypatch):
    """The default preset with backend="tensorrt": every network goes through the TensorRT runtime
    (parsed, profiled, cached, run on "device" buffers; the stand-in engines compute with ONNX
    Runtime), and the faces equal ONNX Runtime's batched run on the CPU."""
    monkeypatch.setattr(ig3d.kernels, "has_cuda", lambda: False)  # the fused head stays on the CPU here
    image = ig3d.presets.asset_path("astronaut.png")
    ref = ig3d.Predictor(backend="onnxruntime", device="cpu", parallel_runs=1).predict(image)
    p = ig3d.Predictor(backend="tensorrt")
    assert (p.backend, p.device) == ("tensorrt", "cuda")
    got = p.predict(image)
    assert len(got) == len(ref) == 1
    assert got[0].label == ref[0].label
    np.testing.assert_allclose(got[0].box, ref[0].box, atol=1e-3)
    np.testing.assert_allclose(got[0].landmarks, ref[0].landmarks, atol=1e-3)
    for field in ("blendshapes", "scores"):
        want = getattr(ref[0], field)
        np.testing.assert_allclose([getattr(got[0], field)[k] for k in want], list(want.values()), atol=1e-5)
    built = {c[1] for c in fake_trt.calls if c[0] == "parse_from_file"}
    assert {"face_detector_full.onnx", "face_detector_short.onnx", "face_landmarks.onnx", "face_blendshapes.onnx",
            "fer_mini_xception.onnx"} <= built
    assert all(b["flags"] == [] and b["cleared"] == ["TF32"] for b in builds(fake_trt))  # fp32 engines
    n_builds = len(builds(fake_trt))
    ig3d.Predictor(backend="tensorrt")  # a second start: every engine from the cache
    assert len(builds(fake_trt)) == n_builds


# --- the Ig3D presets: the encoders' device outputs feed the fused head ---------------------------------------

class HeadOnHost:
    """A fused head's core whose ``forward_device`` reads and writes host memory standing in for the
    device (the pointers the HostCore hands out): its CPU ``forward`` on the inputs, the outputs packed
    into one buffer at the offsets it returns, as the CUDA one does. Each call is logged in the core's
    ``calls`` (so its place among the copies is known)."""

    def __init__(self, head):
        self.real, self.head = head._core, head

    def __getattr__(self, name):
        return getattr(self.real, name)

    def forward_device(self, params3d, scores2d, features2d, batch, device, stream):
        h, core = self.head, ig3d.kernels.core()
        core.calls.append(("head", batch, stream))
        p = host_view(params3d, (batch, h.input_dim)).copy()
        s = host_view(scores2d, (batch, h.scores2d_dim)).copy() if scores2d else None
        f = host_view(features2d, (batch, h.features2d_dim)).copy() if features2d else None
        probs, logits, va, out3d = self.real.forward(p, s, f, "cpu", 0)
        parts = [probs, logits, va, out3d]
        offsets = np.cumsum([0] + [0 if a is None else a.nbytes for a in parts])[:-1]
        buf = core.DeviceBuffer(int(sum(a.nbytes for a in parts if a is not None)), device, stream)
        for a, o in zip(parts, offsets):
            if a is not None:
                ctypes.memmove(buf.ptr + int(o), np.ascontiguousarray(a, np.float32).ctypes.data, a.nbytes)
        return buf, tuple(-1 if a is None else int(o) for a, o in zip(parts, offsets))


@pytest.fixture
def standin_weights(tmp_path):
    """Stand-in SMIRK (params_full and one FLAME piece), DDAMFN++ and CAGE files, and two heads: DDAMFN++'s
    (intermediate fusion with the 512-d feature and late fusion with the 8 logits) and CAGE's VA head
    (late fusion with CAGE's outputs 8 and 9 only)."""
    pytest.importorskip("onnx", reason="the stand-in encoders are written with onnx")
    write_standin_encoder(tmp_path / "smirk.onnx", 224, {"params_full": 358, "expression_params": 50}, 0)
    write_standin_encoder(tmp_path / "ddamfn.onnx", 112, {"logits": 8, "features": 512}, 1)
    write_standin_encoder(tmp_path / "cage.onnx", 224, {"outputs": 10, "features": 512}, 2)
    rng = np.random.default_rng(3)

    def lin(o, i):
        return ig3d.Layer(rng.normal(size=(o, i)) / np.sqrt(i), rng.normal(size=o) * 0.1)

    ddamfn_head = ig3d.FusedHead([lin(64, 358), ig3d.Layer(lin(32, 64 + 512).weight, None, "leaky_relu"),
                                  lin(10, 32)], input_dim=358, num_classes=8, va_index=8, concat_at=1,
                                 features2d_dim=512, fusion="weighted", scores2d_dim=8, fusion_weights=(0.6, 0.4))
    cage_head = ig3d.FusedHead([ig3d.Layer(lin(32, 358).weight, None, "leaky_relu"), lin(10, 32)], input_dim=358,
                               num_classes=8, va_index=8, fusion="weighted", scores2d_dim=2, fusion_map=[8, 9],
                               fusion_weights=(0.6, 0.4))
    return tmp_path, {"ddamfn": ddamfn_head, "cage": cage_head}


@pytest.mark.parametrize("enc2d, n_images", [("ddamfn", 1), ("ddamfn", 2), ("cage", 1), ("cage", 2)])
def test_ig3d_preset_on_tensorrt_feeds_the_head_on_the_device(fake_trt, standin_weights, monkeypatch, enc2d,
                                                              n_images):
    """An Ig3D preset with backend="tensorrt" and the head on CUDA: the encoders run with ``run_device``,
    the head gets their DeviceArrays (CAGE's VA columns: a view of a lone face's row, a host slice copied
    back for several faces) on their stream, the results' host copies come after the head, and the faces
    equal ONNX Runtime's on the CPU."""
    d, heads = standin_weights
    head = heads[enc2d]
    weights = {"smirk": d / "smirk.onnx", enc2d: d / f"{enc2d}.onnx", "head": head}
    images = [ig3d.presets.asset_path("astronaut.png")] * n_images
    ref = ig3d.Predictor(f"ig3d-smirk-{enc2d}", backend="onnxruntime", device="cpu", parallel_runs=1,
                         weights=weights).predict_batch(images)

    monkeypatch.setattr(ig3d.kernels, "has_cuda", lambda: True)  # the Predictor puts the head on CUDA
    monkeypatch.setattr(head, "_core", HeadOnHost(head))
    core = ig3d.kernels.core()
    seen = []
    call = ig3d.FusedHead.__call__

    def spy_head(self, *args, **kwargs):
        seen.append((args, kwargs))
        return call(self, *args, **kwargs)

    monkeypatch.setattr(ig3d.FusedHead, "__call__", spy_head)
    run_device = trt_rt.TensorRTModel.run_device

    def spy_run_device(self, inputs, *, stream=None):
        out = run_device(self, inputs, stream=stream)
        core.calls.append(("run_device", self.name, stream))  # logged once its input crops are on the device
        return out

    monkeypatch.setattr(trt_rt.TensorRTModel, "run_device", spy_run_device)
    p = ig3d.Predictor(f"ig3d-smirk-{enc2d}", backend="tensorrt", weights=weights)
    assert p._pipeline.head_device == "cuda"
    got = p.predict_batch(images)

    # the head: one call, on DeviceArrays from the encoders, of the widths it fuses, on the encoders' stream
    ((args, kwargs),) = seen
    params, scores, feats = args
    assert all(isinstance(a, dm.DeviceArray) for a in (params, scores))
    assert params.shape == (n_images, 358) and scores.shape == (n_images, head.scores2d_dim)
    if enc2d == "ddamfn":
        assert isinstance(feats, dm.DeviceArray) and feats.shape == (n_images, 512)
    else:
        assert feats is None  # the VA head does not take CAGE's feature
    assert kwargs["device"] == "cuda" and kwargs["stream"] == params.stream == scores.stream
    # the order on the "device": both encoders, the head, then the host copies; none between the encoders and
    # the head, except CAGE's 10 scores for several faces (sliced to their VA columns on the host, sent back)
    events = core.calls[next(i for i, c in enumerate(core.calls) if c[0] == "run_device"):]
    assert [c[1] for c in events if c[0] == "run_device"] == ["smirk", enc2d]
    at_head = next(i for i, c in enumerate(events) if c[0] == "head")
    assert events[at_head] == ("head", n_images, params.stream)
    last_run = max(i for i, c in enumerate(events) if c[0] == "run_device")
    between = [c for c in events[last_run:at_head] if c[0] in ("d2h", "h2d")]
    f32 = 4
    if enc2d == "cage" and n_images > 1:
        assert between == [("d2h", n_images * 10 * f32, params.stream), ("h2d", n_images * 2 * f32, params.stream)]
    else:
        assert between == []
    after = [c[1] for c in events[at_head:] if c[0] == "d2h"]
    # the head's 4 outputs, then SMIRK's two outputs, the 2D scores (unless copied before) and the feature
    widths = [8, 8, 2, 10, 358, 50] + ([] if enc2d == "cage" and n_images > 1 else [10 if enc2d == "cage" else 8])
    assert sorted(after) == sorted(n_images * w * f32 for w in widths + [512])

    # the faces equal ONNX Runtime's
    assert [len(r) for r in got] == [len(r) for r in ref] == [1] * n_images
    for r, g in zip(ref, got):
        a, b = r[0], g[0]
        assert b.label == a.label and b.label_2d == a.label_2d
        np.testing.assert_allclose(b.params3d, a.params3d, atol=1e-5)
        np.testing.assert_allclose(b.scores2d_raw, a.scores2d_raw, atol=1e-5)
        np.testing.assert_allclose(b.features2d, a.features2d, atol=1e-5)
        np.testing.assert_allclose(b.flame["expression_params"], a.flame["expression_params"], atol=1e-5)
        np.testing.assert_allclose(list(b.scores.values()), list(a.scores.values()), atol=1e-5)
        np.testing.assert_allclose(list(b.scores_3d.values()), list(a.scores_3d.values()), atol=1e-5)
        np.testing.assert_allclose(b.logits_2d, a.logits_2d, atol=1e-5)
        np.testing.assert_allclose([b.valence, b.arousal], [a.valence, a.arousal], atol=1e-5)
    # and the fusion is the head's on these very inputs (CAGE: its outputs 8 and 9 fused with the head's V, A)
    face = got[0][0]
    want = head._core.real.forward(face.params3d[None].astype(np.float32),
                                   face.scores2d_raw[None, 8:10] if enc2d == "cage" else face.logits_2d[None],
                                   face.features2d[None] if enc2d == "ddamfn" else None, "cpu", 0)
    np.testing.assert_allclose(list(face.scores.values()), want[0][0], atol=1e-6)
    np.testing.assert_allclose([face.valence, face.arousal], want[2][0], atol=1e-6)
