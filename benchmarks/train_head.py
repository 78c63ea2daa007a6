"""Seconds per training epoch of Ig3D's MLP4 head with :func:`ig3d.train.train_head`.

Synthetic SMIRK-full features (D=358, 8 classes and valence/arousal, the AffectNet layout) of
``--rows`` rows (default 100,000: an epoch trains on the 80 % train split), task "classification+va"
(Ig3D's loss with all its terms), batch 64 (Ig3D on AffectNet) and 256, torch on every core (or
``--device cuda``). The time is the training loop of one epoch (sampling, masking off as Ig3D's MLP4
recipe, forward, loss, backward, AdamW, CyclicLR), from the run's own log (``train_seconds``), the
best of ``--epochs`` epochs; the validation pass is not included. Ends with one JSON line:
``{"rows": ..., "device": ..., "b64_s_per_epoch": ..., "b256_s_per_epoch": ..., ...}``.

Run: python benchmarks/train_head.py [--rows 100000] [--epochs 1] [--batch 64 256] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ig3d  # noqa: E402
from _bench_common import cpu_name  # noqa: E402
from ig3d import params as P  # noqa: E402
from ig3d.labels import AFFECTNET8_LABELS  # noqa: E402
from ig3d.train import train_head  # noqa: E402


def synthetic_features(rows: int, seed: int = 0) -> dict:
    """SMIRK-full vectors whose class means differ a little, VA a linear function of them, no split."""
    rng = np.random.default_rng(seed)
    d = len(P.param_names("smirk"))
    y = rng.integers(0, 8, rows)
    x = rng.standard_normal((rows, d), dtype=np.float32)
    x[:, 303:353] += rng.standard_normal((8, 50), dtype=np.float32)[y] * 0.5  # the expression segment
    va = np.tanh(x[:, 303:305] * 0.5).astype(np.float32)
    return dict(params3d=x, param_names=np.array(P.param_names("smirk")),
                param_segments=np.array([s for s, _ in P.SEGMENTS["smirk"]]),
                param_segment_sizes=np.array([w for _, w in P.SEGMENTS["smirk"]], np.int64),
                labels=y.astype(np.int64), va=va, class_names=np.array(AFFECTNET8_LABELS),
                preset=np.array("ig3d-smirk-ddamfn"))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rows", type=int, default=100_000, help="rows of the synthetic file (80 %% are trained on)")
    ap.add_argument("--epochs", type=int, default=1, help="epochs per batch size (the best one is reported)")
    ap.add_argument("--batch", type=int, nargs="+", default=[64, 256], help="batch sizes")
    ap.add_argument("--device", default="cpu", help="torch device (cpu, cuda)")
    args = ap.parse_args()
    import torch

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    print(f"# machine: {cpu_name()}, torch {torch.__version__} on {threads} threads, device {args.device}; "
          f"ig3d {ig3d.__version__}")
    feats = synthetic_features(args.rows)
    res = {"rows": args.rows, "device": args.device, "threads": threads, "epochs": args.epochs}
    print(f"{'batch':>5} {'train rows':>10} {'steps':>6} {'s/epoch':>8} {'ms/step':>8} {'rows/s':>8} {'val acc':>7}")
    for b in args.batch:
        t0 = time.perf_counter()
        r = train_head(feats, head="mlp4", task="classification+va", epochs=args.epochs, batch_size=b,
                                  device=args.device)
        total = time.perf_counter() - t0
        n = r.log["features"]["n_train"]
        steps = n // b + (1 if n % b >= 2 else 0)
        sec = min(e["train_seconds"] for e in r.log["epochs"])
        print(f"{b:>5} {n:>10} {steps:>6} {sec:>8.1f} {1e3 * sec / steps:>8.2f} {n / sec:>8.0f} "
              f"{r.log['best']['accuracy']:>7.3f}   (whole call {total:.1f} s)")
        res[f"b{b}_s_per_epoch"] = round(sec, 3)
        res[f"b{b}_ms_per_step"] = round(1e3 * sec / steps, 3)
    print(json.dumps(res))


if __name__ == "__main__":
    main()
