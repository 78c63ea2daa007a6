"""pytest-benchmark suite for the fused head: ig3d vs torch eager vs numpy on the small and the
Ig3D head at batch 1 and 64. Run: pytest benchmarks/ --benchmark-only
(`python benchmarks/fused_head.py` prints the same comparison as ratios and a JSON line.)"""

from __future__ import annotations

import os
import sys

import numpy as np
import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

torch = pytest.importorskip("torch", reason="the torch anchor needs torch (pip install 'ig3d[bench]')")
pytest.importorskip("pytest_benchmark", reason="needs pytest-benchmark")

from _heads import build  # noqa: E402

_cache = {}


def head_setup(kind, batch):
    if kind not in _cache:
        _cache[kind] = build(kind)
    torch_fn, head, numpy_fn, inputs = _cache[kind]
    p, s = inputs(batch)
    return torch_fn, head, numpy_fn, p, s


@pytest.mark.parametrize("kind", ["small", "ig3d"])
@pytest.mark.parametrize("batch", [1, 64])
@pytest.mark.parametrize("impl", ["ig3d", "ig3d_bf16", "torch", "numpy"])
def test_fused_head(benchmark, kind, batch, impl):
    torch_fn, head, numpy_fn, p, s = head_setup(kind, batch)
    benchmark.group = f"{kind} head, batch {batch}"
    if impl == "ig3d":
        out = benchmark(head, p, s)
        expect = torch_fn(torch.from_numpy(p), torch.from_numpy(s))[0].numpy()
        np.testing.assert_allclose(out.probs, expect, atol=1e-4)
    elif impl == "ig3d_bf16":
        import ig3d

        h16 = ig3d.FusedHead(head.layers, input_dim=head.input_dim, mean=head.mean, std=head.std,
                             num_classes=head.num_classes, va_index=head.va_index, fusion="weighted",
                             scores2d_dim=head.scores2d_dim, fusion_weights=(head.w2d, head.w3d), precision="bf16")
        benchmark(h16, p, s)
    elif impl == "torch":
        tp, ts = torch.from_numpy(p), torch.from_numpy(s)
        benchmark(torch_fn, tp, ts)
    else:
        benchmark(numpy_fn, p, s)
