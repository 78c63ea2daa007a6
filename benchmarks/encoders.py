"""The Ig3D encoders: PyTorch eager (as the research code runs them) vs ig3d's ONNX Runtime path.

For each encoder (randomly initialised, same weights on both sides; the timing does not depend on
the values) at batch 1 and 32: torch eager in ``inference_mode`` and the ONNX file ig3d exports, run
the way the Ig3D presets run it (``ig3d.engines.PerCoreModel``): ig3d's session settings, a lone
image on a session that uses every core, a batch on the CPU as one run per image spread over worker
threads (``ig3d.engines.Workers``, one per core; single-threaded runs from a second session for
files up to 192 MB: all but EMOCA). The column "ORT 1 run" is the all-cores session given the whole
batch in one run, for comparison. Also images/s against a practical limit: the network's FLOPs
(Conv2d and Linear multiply-adds x 2, counted with forward hooks; attention matmuls are not counted,
so for CAGE the limit is optimistic) over the sgemm rate measured on the same machine in the same
run (a 2048x2048 float32 matmul in torch, the best of one measurement before each encoder and one at
the end). Times: minimum over repeats of the mean of an inner loop (``--min-time`` per side); the
three sides are timed in alternating rounds, so that the machine's drift hits each alike. Ends with
one JSON line mapping ``<encoder>_b1_speedup_vs_torch`` / ``<encoder>_b32_speedup_vs_torch`` to
torch time / ONNX Runtime time.

Run: python benchmarks/encoders.py [--encoders smirk,ddamfn,emoca,cage] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _bench_common import bench, bench_interleaved, cpu_name  # noqa: E402


def _encoders():
    """name -> (build torch model, input shape [C, H, W], export(model, path))."""
    out = {}
    try:
        from ig3d.convert.smirk import export_smirk_onnx
        from ig3d.models.smirk import SmirkEncoder

        out["smirk"] = (SmirkEncoder, (3, 224, 224), export_smirk_onnx)
    except ImportError:
        pass
    try:
        from ig3d.convert.ddamfn import export_ddamfn_onnx
        from ig3d.models.ddamfn import DDAMNet

        out["ddamfn"] = (lambda: DDAMNet(num_classes=8), (3, 112, 112), export_ddamfn_onnx)
    except ImportError:
        pass
    try:
        from ig3d.convert.emoca import export_emoca_onnx
        from ig3d.models.emoca import EmocaEncoders

        out["emoca"] = (EmocaEncoders, (3, 224, 224), export_emoca_onnx)
    except ImportError:
        pass
    try:
        from ig3d.convert.cage import export_cage_onnx
        from ig3d.models.cage import CageNet

        out["cage"] = (CageNet, (3, 224, 224), export_cage_onnx)
    except ImportError:
        pass
    return out


def count_flops(model, x) -> float:
    """2 x multiply-adds of every Conv2d and Linear in one forward pass of ``x`` (batch 1)."""
    import torch

    total = [0]

    def conv_hook(m, inp, out):
        k = m.weight.shape[1] * m.weight.shape[2] * m.weight.shape[3]
        total[0] += 2 * out.numel() * k

    def lin_hook(m, inp, out):
        total[0] += 2 * out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, torch.nn.Conv2d):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, torch.nn.Linear):
            hooks.append(m.register_forward_hook(lin_hook))
    with torch.inference_mode():
        model(x)
    for h in hooks:
        h.remove()
    return float(total[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", default="smirk,ddamfn,emoca,cage")
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier)")
    ap.add_argument("--min-time", type=float, default=None)
    args = ap.parse_args()
    import torch

    from ig3d.engines import PerCoreModel, Workers, usable_cores

    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    min_time = args.min_time or (0.5 if args.quick else 2.0)
    a = torch.randn(2048, 2048)
    sgemm_runs = []

    def measure_sgemm():
        # the machine's best sgemm rate so far: measured before every encoder (the host is shared,
        # and one slow moment must not inflate the limit column)
        sgemm_runs.append(2 * 2048 ** 3 / bench(lambda: torch.mm(a, a), min_time=min_time / 2, repeats=3))
        return max(sgemm_runs)

    workers = Workers(usable_cores())
    available = _encoders()
    result = {}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.encoders.split(","):
            if name not in available:
                print(f"{name:8} (not available in this ig3d)")
                continue
            build, shape, export = available[name]
            measure_sgemm()
            torch.manual_seed(0)
            model = build().eval()
            flops = count_flops(model, torch.randn(1, *shape))
            path = os.path.join(tmp, f"{name}.onnx")
            export(model, path)
            enc = PerCoreModel(path, workers=workers, name=name)  # as the Ig3D presets hold it
            for batch in (1, 32):
                x = torch.randn(batch, *shape)
                xn = x.numpy()
                repeats = 3 if batch == 1 else 2

                def run_torch():
                    with torch.inference_mode():
                        model(x)

                t = bench_interleaved({"torch": run_torch, "one": lambda: enc.all_cores.run(xn),
                                       "ig3d": lambda: workers.run(enc.for_items(len(xn)), xn)},
                                      min_time=min_time, repeats=repeats)
                rows.append((name, batch, flops, t["torch"], t["one"], t["ig3d"]))
                result[f"{name}_b{batch}_speedup_vs_torch"] = round(t["torch"] / t["ig3d"], 3)
    sgemm = measure_sgemm()
    print(f"# machine: {cpu_name()}, {threads} threads; torch {torch.__version__}; sgemm {sgemm / 1e9:.0f} "
          f"GFLOP/s (2048^3, torch; best of {len(sgemm_runs)} measurements in this run)")
    print(f"{'encoder':8} {'batch':>5} {'GFLOP/img':>9} {'torch img/s':>11} {'ORT 1 run':>10} {'ig3d img/s':>10} "
          f"{'limit img/s':>11} {'ig3d/limit':>10} {'speedup':>8}")
    for name, batch, flops, t_torch, t_one, t_ort in rows:
        limit = sgemm / flops
        print(f"{name:8} {batch:5d} {flops / 1e9:9.2f} {batch / t_torch:11.1f} {batch / t_one:10.1f} "
              f"{batch / t_ort:10.1f} {limit:11.1f} {batch / t_ort / limit:9.0%} {t_torch / t_ort:7.2f}x")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
