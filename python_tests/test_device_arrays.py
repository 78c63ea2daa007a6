"""The fused head and the crop kernel on device arrays.

Without a GPU (every test not marked ``cuda``): the DLPack and ``__cuda_array_interface__`` reading
(against numpy and torch as independent producers and consumers of DLPack), every argument check
with the argument named, the clear error when device inputs come and no CUDA device exists, and the
CPU paths unchanged. With a GPU (``cuda``-marked, skipped otherwise): the device path against the
CPU path on every case of test_fused_head.py, torch CUDA tensors in and out, CuPy when installed,
and the GPU crops against the CPU crops byte for byte.
"""

from __future__ import annotations

import gc
import weakref

import numpy as np
import pytest

import ig3d
from ig3d import FusedHead, FusedOutput, Layer
from ig3d import device as dm
from ig3d.faces.landmarks import _warp_crops_numpy, warp_crops

from conftest import HostCore, host_view
from fused_head_cases import fused_head_cases

CORE = ig3d.kernels.core()
HAS_CUDA = ig3d.kernels.has_cuda()
REASON = ig3d.kernels.info()["cuda_status"]


def small_head(late=True, mid=False):
    rng = np.random.default_rng(0)
    layers = [Layer(rng.normal(size=(8, 6 + (3 if mid else 0))).astype(np.float32), None, "relu"),
              Layer(rng.normal(size=(5, 8)).astype(np.float32))]
    return FusedHead(layers, input_dim=6, num_classes=3, va_index=3, fusion="weighted" if late else "none",
                     scores2d_dim=3 if late else 0, fusion_weights=(0.5, 0.5) if late else None,
                     concat_at=0 if mid else None, features2d_dim=3 if mid else 0)


class FakeCAI:
    """An object that says it is a CUDA array: only __cuda_array_interface__, any fields."""

    def __init__(self, **fields):
        base = {"shape": (4, 6), "typestr": "<f4", "data": (0x7F0000000000, False), "version": 3, "strides": None,
                "stream": None}
        base.update(fields)
        self.__cuda_array_interface__ = {k: v for k, v in base.items() if v is not ...}


def fake_cuda_capsule(shape, device_id, keep=None):
    """A DLPack capsule that claims CUDA memory on `device_id` (never dereferenced by these tests)."""
    return CORE.dlpack_capsule(0x7F0000000000, list(shape), 2, 32, 2, device_id, keep)


# --- DLPack reading and making, against numpy and torch ----------------------------------------

def test_numpy_capsule_is_read_and_consumed():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    cap = a.__dlpack__()
    info = dm.inspect(cap, "x")
    assert (info.ptr, info.shape, info.typestr, info.on_device) == (a.ctypes.data, (3, 4), "<f4", False)
    assert info.is_c_contiguous()
    with pytest.raises(ValueError, match="x: this DLPack capsule was already consumed"):
        dm.inspect(cap, "x")


def test_dlpack_strides_and_dtypes_from_numpy():
    a = np.zeros((5, 8), np.float64)[:, ::2]
    info = dm.inspect(a.__dlpack__(), "v")
    assert info.typestr == "<f8" and info.shape == (5, 4) and info.strides == a.strides
    assert not info.is_c_contiguous()
    u = np.zeros((2, 3, 3), np.uint8)
    assert dm.inspect(u.__dlpack__(), "img").typestr == "|u1"


def test_torch_cpu_tensor_is_read_through_dlpack():
    torch = pytest.importorskip("torch")
    t = torch.arange(20, dtype=torch.float32).reshape(4, 5)[:, 1:]
    info = dm.inspect(t, "t")
    assert info.ptr == t.data_ptr() and info.shape == (4, 4) and not info.on_device
    assert info.strides == tuple(s * 4 for s in t.stride()) and not info.is_c_contiguous()


def test_consumed_capsule_calls_the_producers_deleter():
    class Owner:
        pass

    owner = Owner()
    ref = weakref.ref(owner)
    cap = CORE.dlpack_capsule(0x1000, [2, 2], 2, 32, 1, 0, owner)
    del owner
    assert ref() is not None  # the capsule keeps it
    info = dm.inspect(cap, "x")
    del cap
    gc.collect()
    assert ref() is not None  # consumed: the reader (info.owner) keeps it now
    del info
    gc.collect()
    assert ref() is None


def test_unconsumed_capsule_releases_its_owner():
    class Owner:
        pass

    owner = Owner()
    ref = weakref.ref(owner)
    cap = CORE.dlpack_capsule(0x1000, [1], 2, 32, 1, 0, owner)
    del owner, cap
    gc.collect()
    assert ref() is None


def test_made_capsule_reads_back_in_numpy_and_torch():
    a = np.arange(6, dtype=np.float32).reshape(2, 3)

    class Host:
        def __dlpack__(self, stream=None, **kw):
            return CORE.dlpack_capsule(a.ctypes.data, [2, 3], 2, 32, 1, 0, a)

        def __dlpack_device__(self):
            return (1, 0)

    np.testing.assert_array_equal(np.from_dlpack(Host()), a)
    torch = pytest.importorskip("torch")
    np.testing.assert_array_equal(torch.from_dlpack(Host()).numpy(), a)


def test_non_array_is_refused_by_name():
    with pytest.raises(ValueError, match="scores: expected a numpy array, an object with __cuda_array_interface__"):
        dm.inspect([1.0, 2.0], "scores")
    cap = CORE.dlpack_capsule(0x1000, [2], 0, 8, 1, 0, None)  # int8 is read, then refused by the head check
    info = dm.inspect(cap, "p")
    with pytest.raises(ValueError, match="p: expected float32, got int8"):
        dm.check_matrix(info, 2)


# --- __cuda_array_interface__ reading and the head's argument checks ------------------------------

@pytest.mark.parametrize("fields,message", [
    ({"typestr": "<f8"}, "params3d: expected float32, got float64"),
    ({"typestr": "<f2"}, "params3d: expected float32, got float16"),
    ({"shape": (4, 5)}, r"params3d: expected shape \[B, 6\], got \[4, 5\]"),
    ({"shape": (24,)}, r"params3d: expected shape \[B, 6\], got \[24\]"),
    ({"strides": (4, 16)}, "params3d: must be C-contiguous, got strides"),
    ({"data": ...}, "params3d: __cuda_array_interface__ has no 'data' entry"),
    ({"shape": ...}, "params3d: __cuda_array_interface__ has no 'shape' entry"),
    ({"version": ...}, "params3d: __cuda_array_interface__ has no 'version' entry"),
    ({"data": (0, False)}, "params3d: __cuda_array_interface__ 'data' is a null pointer"),
    ({"mask": object()}, "params3d: masked arrays"),
    ({"stream": 0}, "params3d: __cuda_array_interface__ 'stream' 0 is not allowed"),
    ({"data": "nope"}, "params3d: __cuda_array_interface__ 'shape' must be ints"),
    ({"strides": (24,)}, "params3d: __cuda_array_interface__ has 2 dims but 1 strides"),
])
def test_cuda_array_interface_errors_name_the_argument(fields, message):
    with pytest.raises(ValueError, match=message):
        small_head(late=False)(FakeCAI(**fields))


def test_padded_rows_are_refused_but_contiguous_strides_accepted():
    info = dm.inspect(FakeCAI(strides=(24, 4)), "a")
    assert info.is_c_contiguous()  # explicit C strides are C-contiguous
    assert not dm.inspect(FakeCAI(strides=(32, 4)), "a").is_c_contiguous()
    assert dm.inspect(FakeCAI(shape=(1, 6), strides=(999, 4)), "a").is_c_contiguous()  # size-1 dims: any stride


def test_second_input_checks_name_it():
    head = small_head()
    with pytest.raises(ValueError, match=r"scores2d: expected shape \[4, 3\], got \[5, 3\]"):
        head(FakeCAI(), FakeCAI(shape=(5, 3)))
    with pytest.raises(ValueError, match="scores2d: expected float32, got int32"):
        head(FakeCAI(), FakeCAI(shape=(4, 3), typestr="<i4"))
    with pytest.raises(ValueError, match="features2d: this head has no intermediate fusion"):
        head(FakeCAI(), None, FakeCAI(shape=(4, 3)))
    with pytest.raises(ValueError, match="scores2d: this head has no late fusion"):
        small_head(late=False)(FakeCAI(), FakeCAI(shape=(4, 3)))
    with pytest.raises(ValueError, match="features2d: this head fuses a 2D feature of width 3"):
        small_head(late=False, mid=True)(FakeCAI())


def test_inputs_on_two_devices_are_refused():
    head = small_head()
    with pytest.raises(ValueError, match="scores2d: on CUDA device 1 while params3d is on CUDA device 0"):
        head(fake_cuda_capsule((4, 6), 0), fake_cuda_capsule((4, 3), 1))


def test_host_and_device_inputs_together_are_refused():
    head = small_head()
    with pytest.raises(ValueError, match="scores2d: on the host while params3d is on a CUDA device"):
        head(FakeCAI(), np.zeros((4, 3), np.float32))
    with pytest.raises(ValueError, match="params3d: on the host while scores2d is on a CUDA device"):
        head(np.zeros((4, 6), np.float32), FakeCAI(shape=(4, 3)))


def test_device_inputs_with_device_cpu_are_refused():
    with pytest.raises(ValueError, match="device: 'cpu' was asked for but the inputs are CUDA device arrays"):
        small_head(late=False)(FakeCAI(), device="cpu")


def test_stream_with_host_inputs_is_refused():
    with pytest.raises(ValueError, match="stream: only used with CUDA device inputs"):
        small_head(late=False)(np.zeros((2, 6), np.float32), stream=5)


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_valid_device_inputs_without_cuda_raise_the_reason():
    with pytest.raises(RuntimeError, match="no CUDA device is available|no CUDA support") as e:
        small_head()(FakeCAI(), FakeCAI(shape=(4, 3)))
    if ig3d.kernels.info()["cuda_compiled"]:
        assert REASON.split(":")[0] in str(e.value)  # e.g. cudaErrorInsufficientDriver
    with pytest.raises(RuntimeError):
        small_head()(fake_cuda_capsule((4, 6), 0))
    with pytest.raises(RuntimeError):
        small_head()(np.zeros((2, 6), np.float32), device="cuda")  # host inputs on the GPU: same reason


def test_resolve_stream():
    assert dm.resolve_stream([FakeCAI()], None) == 0
    assert dm.resolve_stream([FakeCAI(stream=7)], None) == 7
    assert dm.resolve_stream([FakeCAI(stream=7)], 9) == 9
    assert dm.resolve_stream([FakeCAI()], type("S", (), {"cuda_stream": 11})()) == 11
    assert dm.resolve_stream([FakeCAI()], type("S", (), {"ptr": 12})()) == 12
    with pytest.raises(ValueError, match="stream: expected a cudaStream_t handle"):
        dm.resolve_stream([FakeCAI()], "fast")
    with pytest.raises(ValueError, match="stream: expected a cudaStream_t handle"):
        dm.resolve_stream([FakeCAI()], -3)


def test_device_array_exposes_both_protocols():
    buf = type("Buf", (), {"ptr": 0x7F0000001000})()
    a = dm.DeviceArray(buf, 256, (4, 3), np.float32, 0, 0)
    cai = a.__cuda_array_interface__
    assert cai["data"] == (0x7F0000001100, False) and cai["typestr"] == "<f4" and cai["shape"] == (4, 3)
    assert cai["version"] == 3 and cai["stream"] == 1  # the default stream, spelled 1 (0 is not allowed)
    assert a.__dlpack_device__() == (2, 0)
    info = dm.inspect(a, "probs")  # what a consumer reads back is what was described
    assert (info.ptr, info.shape, info.typestr, info.on_device, info.is_c_contiguous()) == \
        (a.ptr, (4, 3), "<f4", True, True)
    cap = a.__dlpack__(stream=-1)  # -1: no ordering asked, so no CUDA call
    back = dm.inspect(cap, "probs")
    assert (back.ptr, back.shape, back.typestr, back.device_id) == (a.ptr, (4, 3), "<f4", 0)
    with pytest.raises(BufferError, match="copy=True"):
        a.__dlpack__(stream=-1, copy=True)


def test_fused_output_to_numpy_keeps_host_arrays():
    head = small_head()
    p = np.random.default_rng(1).normal(size=(3, 6)).astype(np.float32)
    out = head(p, np.zeros((3, 3), np.float32))
    host = out.to_numpy()
    assert isinstance(host, FusedOutput) and all(x is y for x, y in zip(host, out))


def test_cpu_path_unchanged_for_numpy_and_float64():
    head = small_head()
    rng = np.random.default_rng(2)
    p, s = rng.normal(size=(5, 6)), rng.normal(size=(5, 3))
    a = head(p.astype(np.float32), s.astype(np.float32))
    b = head(p, s, device="cpu")
    np.testing.assert_array_equal(a.probs, b.probs)
    assert isinstance(a.probs, np.ndarray)


def test_device_path_end_to_end_with_an_emulated_gpu(monkeypatch):
    fake = HostCore(CORE)
    monkeypatch.setattr(ig3d.kernels, "_core_module", fake)
    case = next(c for c in CASES if c.id == "mid-relu-weighted-B7")
    head, p, s, f = case.build()
    ref = head(p, s, f)
    calls = []

    def forward_device(params3d, scores2d, features2d, batch, device, stream):
        calls.append((batch, device, stream))
        inputs = [host_view(params3d, (batch, head.input_dim)), host_view(scores2d, (batch, head.scores2d_dim)),
                  host_view(features2d, (batch, head.features2d_dim))]
        outs = head._core.forward(*inputs)
        blob = np.concatenate([o.ravel() for o in outs if o is not None])
        offsets, at = [], 0
        for o in outs:
            offsets.append(-1 if o is None else at * 4)
            at += 0 if o is None else o.size
        return type("Buf", (), {"ptr": blob.ctypes.data, "blob": blob})(), tuple(offsets)

    class Arr:  # a producer that only speaks __cuda_array_interface__ v3, on stream 5
        def __init__(self, a):
            self.a = a
            self.__cuda_array_interface__ = {"shape": a.shape, "typestr": "<f4", "data": (a.ctypes.data, True),
                                             "strides": None, "version": 3, "stream": 5}

    head._core = type("C", (), {"forward_device": staticmethod(forward_device), "forward": head._core.forward})()
    out = head(Arr(p), Arr(s), Arr(f))
    assert calls == [(7, 0, 5)]  # the producer's stream was taken as the stream to run on
    assert all(isinstance(a, dm.DeviceArray) and a.stream == 5 for a in out if a is not None)
    host = out.to_numpy()
    for name in ("probs", "logits", "va", "out3d"):
        np.testing.assert_array_equal(getattr(host, name), getattr(ref, name))
    out = head(Arr(p), Arr(s), Arr(f), stream=9)  # an explicit stream: it waits for the producer's
    assert calls[-1] == (7, 0, 9) and ("wait", 9, 5) in fake.calls
    np.testing.assert_array_equal(np.asarray(out.probs), ref.probs)


# --- the crop kernel's shared header on the CPU, and the GPU entry's checks -----------------------

def test_shared_warp_header_equals_numpy_reference():
    rng = np.random.default_rng(5)
    img = rng.integers(0, 256, size=(61, 47, 3), dtype=np.uint8)
    for k in range(24):
        angle, scale = rng.uniform(-np.pi, np.pi) * (k % 3 != 0), rng.uniform(0.3, 3.0)
        c, s = np.cos(angle) * scale, np.sin(angle) * scale
        M = np.array([[c, -s, rng.uniform(-40, 40)], [s, c, rng.uniform(-40, 40)]])
        size = int(rng.integers(1, 70))
        for border in ("replicate", "zero"):
            np.testing.assert_array_equal(warp_crops(img, M, size, border=border),
                                          _warp_crops_numpy(img, M, size, border=border))


def test_warp_crops_device_checks():
    with pytest.raises(ValueError, match="image: expected a CUDA device array"):
        dm.warp_crops_device(np.zeros((4, 4, 3), np.uint8), np.eye(2, 3))
    with pytest.raises(ValueError, match=r"image: expected an \[H, W, 3\] uint8 array, got float32 \[4, 6\]"):
        dm.warp_crops_device(FakeCAI(), np.eye(2, 3))
    img = FakeCAI(shape=(4, 5, 3), typestr="|u1")
    with pytest.raises(ValueError, match="border: expected 'replicate' or 'zero'"):
        dm.warp_crops_device(img, np.eye(2, 3), border="wrap")
    with pytest.raises(ValueError, match=r"M: expected finite \[N, 2, 3\] affines"):
        dm.warp_crops_device(img, np.eye(3))
    with pytest.raises(ValueError, match="image: pixels must be packed"):
        dm.warp_crops_device(FakeCAI(shape=(4, 5, 3), typestr="|u1", strides=(15, 1, 5)), np.eye(2, 3))


@pytest.mark.skipif(HAS_CUDA, reason="this machine has a CUDA device")
def test_warp_crops_device_without_cuda_raises_the_reason():
    with pytest.raises(RuntimeError, match="no CUDA device is available|no CUDA support"):
        dm.warp_crops_device(FakeCAI(shape=(4, 5, 3), typestr="|u1"), np.eye(2, 3))


def test_predictor_cuda_head_without_cuda_is_an_error(monkeypatch):
    if HAS_CUDA:
        pytest.skip("this machine has a CUDA device")
    from ig3d import engines

    monkeypatch.setattr(engines, "resolve", lambda *args, **kwargs: ("onnxruntime", "cuda"))
    with pytest.raises(RuntimeError, match="fused head"):
        ig3d.Predictor(device="cuda")


# --- on a GPU ---------------------------------------------------------------------------------

def _torch_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("torch has no CUDA device")
    return torch


CASES = fused_head_cases()


def _assert_close(dev_out, cpu_out, tol):
    for name in ("probs", "logits", "va", "out3d"):
        c, d = getattr(cpu_out, name), getattr(dev_out, name)
        if c is None:
            assert d is None
            continue
        np.testing.assert_allclose(d.numpy(), c, rtol=tol, atol=tol, err_msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=f"no CUDA device for ig3d: {REASON}")
@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_cuda_device_path_matches_cpu(case):
    _run_case(case)


def _run_case(case):
    torch = _torch_cuda()
    head, p, s, f = case.build()
    ref = head(p, s, f)
    args = [None if a is None else torch.from_numpy(a).cuda() for a in (p, s, f)]
    out = head(*args)
    assert isinstance(out.probs, dm.DeviceArray) and out.probs.shape == ref.probs.shape
    _assert_close(out, ref, case.tol)
    # torch reads the outputs in place, both ways
    got = torch.as_tensor(out.logits, device="cuda")
    assert got.data_ptr() == out.logits.ptr
    np.testing.assert_allclose(got.cpu().numpy(), ref.logits, rtol=case.tol, atol=case.tol)
    if p.shape[0]:
        np.testing.assert_allclose(torch.from_dlpack(out.out3d).cpu().numpy(), ref.out3d, rtol=case.tol,
                                   atol=case.tol)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=f"no CUDA device for ig3d: {REASON}")
def test_cuda_every_input_protocol_and_streams():
    torch = _torch_cuda()
    case = next(c for c in CASES if c.id == "mid-leaky_relu-weighted-B256")
    head, p, s, f = case.build()
    ref = head(p, s, f)
    tp, ts, tf = (torch.from_numpy(a).cuda() for a in (p, s, f))

    class OnlyCAI:
        def __init__(self, t):
            self.__cuda_array_interface__ = t.__cuda_array_interface__

    _assert_close(head(OnlyCAI(tp), OnlyCAI(ts), OnlyCAI(tf)), ref, case.tol)
    _assert_close(head(tp.__dlpack__(), ts.__dlpack__(), tf.__dlpack__()), ref, case.tol)  # raw capsules
    side = torch.cuda.Stream()
    with torch.cuda.stream(side):
        out = head(tp, ts, tf)
    assert out.probs.stream == side.cuda_stream
    _assert_close(out, ref, case.tol)
    out = head(tp, ts, tf, stream=side)
    assert out.probs.stream == side.cuda_stream
    _assert_close(out, ref, case.tol)
    _assert_close(head(p, s, f, device="cuda"), ref, case.tol)  # host arrays through the GPU
    assert out.to_numpy().probs.shape == ref.probs.shape


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=f"no CUDA device for ig3d: {REASON}")
def test_cuda_workspace_grows_and_is_reused():
    torch = _torch_cuda()
    head, _, _, _ = next(c for c in CASES if c.id == "late-leaky_relu-weighted-B7").build()
    rng = np.random.default_rng(9)
    for B in (1, 1024, 7, 1024, 0, 3):
        p = rng.normal(size=(B, head.input_dim)).astype(np.float32)
        s = rng.normal(size=(B, head.scores2d_dim)).astype(np.float32)
        _assert_close(head(torch.from_numpy(p).cuda(), torch.from_numpy(s).cuda()), head(p, s), 2e-4)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=f"no CUDA device for ig3d: {REASON}")
def test_cuda_tensor_checks():
    torch = _torch_cuda()
    head = small_head()
    p = torch.zeros((4, 6), device="cuda")
    with pytest.raises(ValueError, match="params3d: expected float32, got float64"):
        head(p.double(), torch.zeros((4, 3), device="cuda"))
    with pytest.raises(ValueError, match="scores2d: must be C-contiguous"):
        head(p, torch.zeros((3, 4), device="cuda").T)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=f"no CUDA device for ig3d: {REASON}")
def test_cuda_cupy_arrays():
    cp = pytest.importorskip("cupy")
    case = next(c for c in CASES if c.id == "late-tanh-max-B7")
    head, p, s, f = case.build()
    out = head(cp.asarray(p), None if s is None else cp.asarray(s))
    _assert_close(out, head(p, s), case.tol)
    np.testing.assert_allclose(cp.asnumpy(cp.asarray(out.probs)), head(p, s).probs, rtol=case.tol, atol=case.tol)


@pytest.mark.cuda
@pytest.mark.skipif(not HAS_CUDA, reason=f"no CUDA device for ig3d: {REASON}")
@pytest.mark.parametrize("border", ["replicate", "zero"])
def test_cuda_crops_equal_cpu_crops_byte_for_byte(border):
    torch = _torch_cuda()
    rng = np.random.default_rng(11)
    for shape in ((61, 47), (480, 640), (3, 2)):
        img = rng.integers(0, 256, size=(*shape, 3), dtype=np.uint8)
        timg = torch.from_numpy(img).cuda()
        Ms = []
        for k in range(16):
            angle = rng.uniform(-np.pi, np.pi) * (k % 4 != 0)  # every 4th: no rotation (separable path)
            sc = rng.uniform(0.2, 4.0)
            c, s = np.cos(angle) * sc, np.sin(angle) * sc
            t = rng.uniform(-0.5, 1.5, size=2) * np.array(shape[::-1])  # inside, across and off the image
            Ms.append(np.array([[c, -s, t[0]], [s, c, t[1]]]))
        for size in (1, 37, 128, 256):
            M = np.stack(Ms)
            want = warp_crops(img, M, size, border=border)
            got = dm.warp_crops_device(timg, M, size, border=border).numpy()
            np.testing.assert_array_equal(got, want)
        # padded rows: a column slice of a wider image
        wide = torch.from_numpy(rng.integers(0, 256, size=(shape[0], shape[1] + 5, 3), dtype=np.uint8)).cuda()
        view = wide[:, 2:2 + shape[1]]
        np.testing.assert_array_equal(dm.warp_crops_device(view, np.stack(Ms), 33, border=border).numpy(),
                                      warp_crops(np.ascontiguousarray(view.cpu().numpy()), np.stack(Ms), 33,
                                                 border=border))
