"""Fused head vs PyTorch eager (as research code runs it) vs numpy, measured side by side.

Heads: small (D=55 -> 64 -> 7) and Ig3D's MLP4 (D=358 -> 4 x 2048 -> 10), at batch 1 and 64. For
the Ig3D head at batch 1 the anchor is a plain memory copy of the same number of bytes as its
weights (the time to stream them once). Each time is the minimum over repeats of the mean of an
inner loop. Ends with one JSON line:

  small_b1_speedup_vs_torch   torch time / ig3d time (goal >= 20)
  ig3d_b1_time_over_memcpy    ig3d time / memcpy time (goal <= 1.5)
  b64_speedup_vs_torch        min over both heads of torch time / ig3d time at batch 64 (goal >= 1)

Run: python benchmarks/fused_head.py [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ig3d  # noqa: E402
from _bench_common import bench, cpu_name  # noqa: E402
from _heads import build, weight_bytes  # noqa: E402






def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier)")
    args = ap.parse_args()
    import torch

    min_time = 0.1 if args.quick else 0.4
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    ig3d.kernels.set_num_threads(threads)
    print(f"# machine: {cpu_name()}, {threads} threads; torch {torch.__version__}, numpy {np.__version__}, "
          f"ig3d {ig3d.__version__} ({ig3d.kernels.info()['cpu_isa']})")
    print(f"{'head':6} {'batch':>5} {'torch us':>10} {'numpy us':>10} {'ig3d us':>10} {'ig3d bf16 us':>12} "
          f"{'vs torch':>9} {'vs numpy':>9}")
    res = {}
    for kind in ("small", "ig3d"):
        torch_fn, head, numpy_fn, inputs = build(kind)
        head16 = ig3d.FusedHead(head.layers, input_dim=head.input_dim, mean=head.mean, std=head.std,
                                num_classes=head.num_classes, va_index=head.va_index, fusion="weighted",
                                scores2d_dim=head.scores2d_dim, fusion_weights=(head.w2d, head.w3d),
                                precision="bf16")
        for batch in (1, 64):
            p, s = inputs(batch)
            tp, ts = torch.from_numpy(p), torch.from_numpy(s)
            # same answer first: a benchmark of different computations means nothing
            ref = torch_fn(tp, ts)[0].numpy()
            assert np.allclose(head(p, s).probs, ref, atol=1e-4), "ig3d and torch disagree"
            assert np.allclose(numpy_fn(p, s), ref, atol=1e-4), "numpy and torch disagree"
            t_torch = bench(lambda: torch_fn(tp, ts), min_time=min_time, repeats=7)
            t_np = bench(lambda: numpy_fn(p, s), min_time=min_time, repeats=7)
            t_ig = bench(lambda: head(p, s), min_time=min_time, repeats=7)
            t_16 = bench(lambda: head16(p, s), min_time=min_time, repeats=7)
            res[(kind, batch)] = dict(torch=t_torch, numpy=t_np, ig3d=t_ig, bf16=t_16)
            print(f"{kind:6} {batch:5d} {t_torch * 1e6:10.1f} {t_np * 1e6:10.1f} {t_ig * 1e6:10.1f} "
                  f"{t_16 * 1e6:12.1f} {t_torch / t_ig:8.1f}x {t_np / t_ig:8.1f}x")
        if kind == "ig3d":
            nbytes = weight_bytes(head)
            src = np.ones(nbytes // 4, np.float32)
            dst = np.empty_like(src)
            t_copy = bench(lambda: np.copyto(dst, src), min_time=min_time, repeats=7)
            res["memcpy"] = t_copy
            print(f"memcpy of the Ig3D head's weight bytes ({nbytes / 1e6:.1f} MB): {t_copy * 1e6:.1f} us "
                  f"({nbytes / t_copy / 1e9:.1f} GB/s); ig3d b1 / memcpy = {res[('ig3d', 1)]['ig3d'] / t_copy:.2f}, "
                  f"bf16 b1 / memcpy = {res[('ig3d', 1)]['bf16'] / t_copy:.2f}")

    out = {
        "small_b1_speedup_vs_torch": res[("small", 1)]["torch"] / res[("small", 1)]["ig3d"],
        "ig3d_b1_time_over_memcpy": res[("ig3d", 1)]["ig3d"] / res["memcpy"],
        "b64_speedup_vs_torch": min(res[(k, 64)]["torch"] / res[(k, 64)]["ig3d"] for k in ("small", "ig3d")),
        "small_b64_speedup_vs_torch": res[("small", 64)]["torch"] / res[("small", 64)]["ig3d"],
        "ig3d_b64_speedup_vs_torch": res[("ig3d", 64)]["torch"] / res[("ig3d", 64)]["ig3d"],
        "ig3d_b1_speedup_vs_torch": res[("ig3d", 1)]["torch"] / res[("ig3d", 1)]["ig3d"],
        "ig3d_b1_bf16_time_over_memcpy": res[("ig3d", 1)]["bf16"] / res["memcpy"],
        "small_b1_speedup_vs_numpy": res[("small", 1)]["numpy"] / res[("small", 1)]["ig3d"],
    }
    print(json.dumps({k: round(v, 3) for k, v in out.items()}))


if __name__ == "__main__":
    main()
