"""The fused head against the numpy (float64) reference, for every activation, fusion mode,
intermediate and late fusion, residual blocks, batch sizes 0/1/7/256, every CPU instruction set this
machine has, and bf16 weight storage.

Tolerances: weights are scaled by 1/sqrt(fan_in) so activations stay O(1); float32 accumulation
over at most a few thousand terms then agrees with float64 to ~1e-5. We assert
|ours - ref| <= 2e-4 + 2e-4 * |ref| for fp32 (outputs and probabilities) and 3e-2 absolute after
normalising by the output scale for bf16 weights (8-bit mantissa, ~4e-3 relative per weight)."""

from __future__ import annotations

import itertools
import threading
import zlib

import numpy as np
import pytest

import ig3d
from ig3d import FusedHead, Layer
from ig3d._reference import reference_forward
from ig3d.fusion import ACTIVATIONS, FUSION_MODES

ISAS = ig3d.kernels.core().supported_cpu_isas()
BATCHES = [0, 1, 7, 256]
RTOL = ATOL = 2e-4


@pytest.fixture(params=ISAS)
def isa(request):
    core = ig3d.kernels.core()
    core.force_cpu_isa(request.param)
    yield request.param
    core.force_cpu_isa("auto")


def rand_layer(rng, n_in, n_out, act="none", skip=None):
    w = rng.normal(size=(n_out, n_in)) / np.sqrt(n_in)
    return Layer(w, rng.normal(size=n_out) * 0.1, act, float(rng.uniform(0.01, 0.3)), skip)


def random_head(rng, *, act="leaky_relu", fusion="weighted", intermediate=False, residual=False,
                va=True, precision="fp32", width=64, depth=2, d_raw=40):
    select = rng.permutation(d_raw)[: d_raw - 5]  # a subset, shuffled: like the Ig3D feature sets
    C = 7
    O = C + (2 if va else 0) + 1
    layers = []
    concat_at = None
    f2d = 0
    n_in = len(select)
    if intermediate:
        f2d = 24
        layers.append(rand_layer(rng, n_in, 32, "none"))  # projection of the 3D params
        concat_at, n_in = 1, 32 + f2d
    for i in range(depth):
        layers.append(rand_layer(rng, n_in, width, act))
        n_in = width
        if residual:
            j = len(layers)  # x_j is the output of the layer just added
            layers.append(rand_layer(rng, width, width, "relu"))
            layers.append(rand_layer(rng, width, width, "none", skip=j))
    layers.append(rand_layer(rng, n_in, O))
    K = 0 if fusion == "none" else 5
    fusion_map = rng.permutation(C)[:K] if K else None
    if va and K:
        fusion_map = np.concatenate([fusion_map, [C, C + 1]])
        K += 2
    return FusedHead(
        layers, input_dim=d_raw, select=select, mean=rng.normal(size=len(select)),
        std=rng.uniform(0.5, 2.0, size=len(select)), num_classes=C, va_index=C if va else None,
        concat_at=concat_at, concat_order=str(rng.choice(["3d_first", "2d_first"])), features2d_dim=f2d,
        fusion=fusion, scores2d_dim=K, fusion_map=fusion_map,
        fusion_weights=(rng.uniform(0, 1, K), rng.uniform(0, 1, K)) if fusion == "weighted" else None,
        precision=precision)


def inputs(rng, head, B):
    p = rng.normal(size=(B, head.input_dim)).astype(np.float32) * 2
    s = rng.normal(size=(B, head.scores2d_dim)).astype(np.float32) * 3 if head.scores2d_dim else None
    f = rng.normal(size=(B, head.features2d_dim)).astype(np.float32) if head.features2d_dim else None
    return p, s, f


def assert_matches(out, ref, rtol=RTOL, atol=ATOL):
    np.testing.assert_allclose(out.out3d, ref.out3d, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.logits, ref.logits, rtol=rtol, atol=atol)
    np.testing.assert_allclose(out.probs, ref.probs, rtol=rtol, atol=atol)
    if ref.va is None:
        assert out.va is None
    else:
        np.testing.assert_allclose(out.va, ref.va, rtol=rtol, atol=atol)


@pytest.mark.parametrize("act,fusion", list(itertools.product(ACTIVATIONS, FUSION_MODES)))
@pytest.mark.parametrize("B", BATCHES)
def test_late_fusion_head_matches_reference(isa, act, fusion, B):
    rng = np.random.default_rng(zlib.crc32(f"{act}/{fusion}/{B}".encode()))
    head = random_head(rng, act=act, fusion=fusion)
    p, s, f = inputs(rng, head, B)
    out = head(p, s, f)
    assert out.probs.shape == (B, 7) and out.out3d.shape == (B, head.out_dim) and out.va.shape == (B, 2)
    assert_matches(out, reference_forward(head, p, s, f))
    if B:
        np.testing.assert_allclose(out.probs.sum(1), 1.0, atol=1e-5)


@pytest.mark.parametrize("act", list(ACTIVATIONS))
@pytest.mark.parametrize("fusion", ["none", "weighted", "max"])
@pytest.mark.parametrize("B", BATCHES)
def test_intermediate_fusion_matches_reference(isa, act, fusion, B):
    rng = np.random.default_rng(zlib.crc32(f"mid/{act}/{fusion}/{B}".encode()))
    head = random_head(rng, act=act, fusion=fusion, intermediate=True)
    p, s, f = inputs(rng, head, B)
    assert_matches(head(p, s, f), reference_forward(head, p, s, f))


@pytest.mark.parametrize("B", BATCHES)
def test_residual_head_matches_reference(isa, B):
    rng = np.random.default_rng(B)
    head = random_head(rng, act="relu", fusion="mean", residual=True, va=False)
    p, s, f = inputs(rng, head, B)
    out = head(p, s, f)
    assert out.va is None
    assert_matches(out, reference_forward(head, p, s, f))


def ig3d_sized_head(rng) -> FusedHead:
    """The paper's MLP4: D=358 -> 4 x (Linear(2048) + BN + LeakyReLU(0.2)) -> 10 (8 logits, V, A),
    late-fused with 8 2D scores as 0.77 * 2D + 0.23 * 3D."""
    layers, n = [], 358
    for _ in range(4):
        layers.append(rand_layer(rng, n, 2048, "leaky_relu"))
        layers[-1].slope = 0.2
        n = 2048
    layers.append(rand_layer(rng, n, 10))
    return FusedHead(layers, input_dim=358, num_classes=8, va_index=8, fusion="weighted", scores2d_dim=8,
                     fusion_weights=(0.77, 0.23))


@pytest.mark.parametrize("B", [1, 7, 64])
def test_ig3d_sized_head_matches_reference(isa, B):
    rng = np.random.default_rng(358)
    head = ig3d_sized_head(rng)
    p, s, _ = inputs(rng, head, B)
    assert_matches(head(p, s), reference_forward(head, p, s), rtol=1e-3, atol=1e-3)


@pytest.mark.parametrize("B", [1, 7, 256])
def test_bf16_weights_within_tolerance(isa, B):
    rng = np.random.default_rng(16)
    head32 = random_head(rng, width=256, depth=3)
    path_rng = np.random.default_rng(17)
    head16 = FusedHead(head32.layers, input_dim=head32.input_dim, select=head32.select, mean=head32.mean,
                       std=head32.std, num_classes=7, va_index=7, fusion="weighted", scores2d_dim=head32.scores2d_dim,
                       fusion_map=head32.fusion_map, fusion_weights=(head32.w2d, head32.w3d), precision="bf16")
    p, s, _ = inputs(path_rng, head32, B)
    ref = reference_forward(head32, p, s)
    out = head16(p, s)
    scale = max(1.0, float(np.abs(ref.out3d).max()))
    assert np.abs(out.out3d - ref.out3d).max() / scale < 3e-2
    assert np.abs(out.probs - ref.probs).max() < 3e-2
    # and bf16 really is a different path: it is not bit-identical to fp32
    assert B == 0 or not np.array_equal(out.out3d, head32(p, s).out3d)


def test_batch_rows_are_independent():
    rng = np.random.default_rng(3)
    head = random_head(rng, intermediate=True)
    p, s, f = inputs(rng, head, 33)
    full = head(p, s, f)
    for i in (0, 13, 32):
        one = head(p[i:i + 1], s[i:i + 1], f[i:i + 1])
        np.testing.assert_allclose(one.probs[0], full.probs[i], rtol=1e-6, atol=1e-7)


def test_float64_input_is_accepted_and_matches_float32():
    rng = np.random.default_rng(4)
    head = random_head(rng)
    p, s, f = inputs(rng, head, 5)
    a = head(p, s)
    b = head(p.astype(np.float64), s.astype(np.float64))
    np.testing.assert_array_equal(a.probs, b.probs)


def test_without_scores2d_the_result_is_the_3d_branch():
    rng = np.random.default_rng(5)
    head = random_head(rng, fusion="weighted")
    p, _, _ = inputs(rng, head, 4)
    out = head(p)
    np.testing.assert_allclose(out.logits, out.out3d[:, :7], rtol=0, atol=0)


def test_fold_batchnorm_matches_linear_then_bn():
    rng = np.random.default_rng(6)
    w, b = rng.normal(size=(6, 4)), rng.normal(size=6)
    g, beta, m, v = rng.normal(size=6), rng.normal(size=6), rng.normal(size=6), rng.uniform(0.1, 2, 6)
    x = rng.normal(size=(3, 4))
    expect = (x @ w.T + b - m) / np.sqrt(v + 1e-5) * g + beta
    wf, bf = ig3d.fold_batchnorm(w, b, g, beta, m, v, 1e-5)
    np.testing.assert_allclose(x @ wf.T + bf, expect, rtol=1e-5, atol=1e-5)


def test_gil_is_released_during_the_kernel():
    """While one thread runs a long kernel, another thread keeps executing Python code."""
    rng = np.random.default_rng(7)
    layers = [rand_layer(rng, 358, 2048, "leaky_relu")] + [rand_layer(rng, 2048, 2048, "leaky_relu") for _ in range(3)]
    layers.append(rand_layer(rng, 2048, 10))
    head = FusedHead(layers, input_dim=358, num_classes=8, va_index=8)
    p = rng.normal(size=(512, 358)).astype(np.float32)
    expect = head(p[:4], threads=1).probs
    results = {}

    def work(tag):
        results[tag] = head(p, threads=1).probs  # a few hundred ms on one core

    t1 = threading.Thread(target=work, args=("a",))
    t2 = threading.Thread(target=work, args=("b",))
    ticks = 0
    t1.start()
    t2.start()
    while t1.is_alive() or t2.is_alive():
        ticks += 1  # needs the GIL: stalls if a kernel holds it
    t1.join()
    t2.join()
    # With the GIL held for the whole call this loop would run a handful of times around the two
    # calls; released, it spins millions of times while they compute.
    assert ticks > 10_000, ticks
    np.testing.assert_array_equal(results["a"], results["b"])  # concurrent calls share no scratch
    np.testing.assert_allclose(results["a"][:4], expect, rtol=1e-6, atol=1e-7)


def test_threads_argument_gives_same_result():
    rng = np.random.default_rng(8)
    head = random_head(rng, width=512, depth=3)
    p, s, _ = inputs(rng, head, 64)
    a = head(p, s, threads=1).out3d
    b = head(p, s, threads=2).out3d
    np.testing.assert_array_equal(a, b)  # same tiles, same summation order


def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    head = random_head(rng, intermediate=True, residual=True, fusion="weighted")
    head.labels = None
    path = tmp_path / "head.npz"
    head.save(path)
    back = FusedHead.load(path)
    assert back.config() == head.config()
    p, s, f = inputs(rng, head, 9)
    np.testing.assert_array_equal(back(p, s, f).probs, head(p, s, f).probs)
    with np.load(path, allow_pickle=False) as z:  # no object arrays: loadable without pickle
        assert all(z[k].dtype != object for k in z.files)


def test_from_torch_folds_batchnorm_and_matches_eager():
    torch = pytest.importorskip("torch", reason="torch is an optional extra (pip install 'ig3d[torch]')")
    nn = torch.nn
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(55, 64), nn.BatchNorm1d(64), nn.LeakyReLU(0.2), nn.Dropout(0.5),
                        nn.Sequential(nn.Linear(64, 32), nn.Tanh()), nn.Linear(32, 9)).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_()
                m.running_var.uniform_(0.5, 2)
                m.weight.normal_()
                m.bias.normal_()
    head = FusedHead.from_torch(net, num_classes=7, va_index=7)
    x = torch.randn(16, 55)
    with torch.no_grad():
        y = net(x).numpy()
    out = head(x.numpy())
    np.testing.assert_allclose(out.out3d, y, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(out.probs, torch.softmax(torch.from_numpy(y[:, :7]), 1).numpy(), atol=1e-5)
    with pytest.raises(ValueError, match="unsupported module Conv1d"):
        FusedHead.from_torch(nn.Sequential(nn.Linear(3, 3), nn.Conv1d(1, 1, 1)), num_classes=3)
