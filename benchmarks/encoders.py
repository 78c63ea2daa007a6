"""The Ig3D encoders: PyTorch eager (as the research code runs them) vs ig3d's runtimes, fp32 or bf16.

For each encoder (randomly initialised, same weights on both sides; the timing does not depend on
the values) at batch 1 and 32: torch eager in ``inference_mode`` and the ONNX file ig3d exports, run
the way the Ig3D presets run it (``ig3d.engines.PerCoreModel``) in the runtime and precision asked
for (``--backend``, ``--precision``): a lone image on a model that uses every core, a batch on the
CPU as one run per image spread over worker threads (``ig3d.engines.Workers``, one per core;
single-threaded runs from a second model for files up to 192 MB: all but EMOCA). The column
"1 run" is the all-cores model given the whole batch in one run, for comparison.

``--precision bf16`` loads every encoder in bf16 explicitly (OpenVINO on a CPU with AMX or
AVX512-BF16; the presets' accuracy gates keep random-weight encoders in fp32 by default), adds a
column for torch's own ``torch.autocast("cpu", dtype=torch.bfloat16)``, and prints how far each
bf16 side moved the outputs: the largest ``max|out - out_fp32| / max|out_fp32|`` over the outputs
(ig3d against the same ONNX file in ONNX Runtime fp32, torch autocast against torch fp32, on the
timed inputs).

Also images/s against a practical limit: the network's FLOPs (Conv2d and Linear multiply-adds x 2,
counted with forward hooks; attention matmuls are not counted, so for CAGE the limit is optimistic)
over the gemm rate measured on the same machine in the same run (a 2048x2048 matmul in torch, in
float32, or in bfloat16 with ``--precision bf16``; the best of one measurement before each encoder
and one at the end). Times: minimum over repeats of the mean of an inner loop (``--min-time`` per
side); the sides are timed in alternating rounds, so that the machine's drift hits each alike.

Ends with one JSON line: ``backend``, ``precision``, and per encoder and batch
``<encoder>_b<batch>_speedup_vs_torch`` = torch eager fp32 time / ig3d time (goal: 2x in fp32, 4x
in bf16), ``..._one_run_speedup_vs_torch`` the same for the "1 run" column; with bf16 also
``..._torch_bf16_speedup_vs_torch`` (autocast against eager fp32),
``..._speedup_vs_torch_bf16`` (ig3d against autocast), ``..._bf16_max_rel_change`` and
``..._torch_bf16_max_rel_change``.

Run: python benchmarks/encoders.py [--encoders smirk,ddamfn,emoca,cage] [--backend auto|onnxruntime|openvino]
         [--precision fp32|bf16] [--quick]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Dict, List, Sequence

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


def _arrays(out) -> List[np.ndarray]:
    """A torch model's outputs (a tensor, a tuple or a dict of them) as float32 numpy arrays, in order."""
    import torch

    if isinstance(out, torch.Tensor):
        return [out.detach().float().numpy()]
    if isinstance(out, dict):
        out = list(out.values())
    return [a for o in out for a in _arrays(o)]


def rel_change(test: Sequence[np.ndarray], ref: Sequence[np.ndarray]) -> float:
    """Largest ``max|test - ref| / max|ref|`` over the outputs (each output's own scale)."""
    if len(test) != len(ref):
        raise ValueError(f"{len(test)} outputs against {len(ref)} reference outputs")
    worst = 0.0
    for t, r in zip(test, ref):
        if t.shape != r.shape:
            raise ValueError(f"output shape {t.shape} against reference {r.shape}")
        scale = float(np.abs(r).max()) or 1.0
        worst = max(worst, float(np.abs(t.astype(np.float64) - r).max()) / scale)
    return worst


def gemm_rate(dtype, min_time: float) -> float:
    """FLOP/s of a 2048x2048 matmul in torch (``dtype``), the best of 3 short measurements."""
    import torch

    a = torch.randn(2048, 2048).to(dtype)
    return 2 * 2048 ** 3 / bench(lambda: torch.mm(a, a), min_time=min_time, repeats=3)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--encoders", default="smirk,ddamfn,emoca,cage")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino"),
                    help="ig3d's runtime (default auto: ONNX Runtime in fp32, OpenVINO in bf16)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="ig3d's precision; bf16 also times torch's bf16 autocast (default fp32)")
    ap.add_argument("--quick", action="store_true", help="shorter runs (noisier)")
    ap.add_argument("--min-time", type=float, default=None)
    args = ap.parse_args()
    import torch

    from ig3d.engines import PerCoreModel, Workers, load, resolve, usable_cores

    # bf16 is asked for explicitly, encoder by encoder: the presets' gates keep these encoders in fp32
    # by default, and here the question is what bf16 does to their speed and outputs
    try:
        backend, _ = resolve(args.backend, "cpu", args.precision)
    except (RuntimeError, ValueError) as exc:
        sys.exit(f"--backend {args.backend} --precision {args.precision}: {exc}")
    bf16 = args.precision == "bf16"
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    min_time = args.min_time or (0.5 if args.quick else 2.0)
    # the limit column: the machine's best gemm rate so far in ig3d's precision, measured before every
    # encoder and at the end (the host is shared, and one slow moment must not inflate the limit)
    gemm_dtype = torch.bfloat16 if bf16 else torch.float32
    gemm_runs: List[float] = []

    def measure_gemm() -> float:
        gemm_runs.append(gemm_rate(gemm_dtype, min_time / 2))
        return max(gemm_runs)

    workers = Workers(usable_cores())
    available = _encoders()
    result: Dict[str, object] = {"backend": backend, "precision": args.precision}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.encoders.split(","):
            if name not in available:
                print(f"{name:8} (not available in this ig3d)")
                continue
            build, shape, export = available[name]
            measure_gemm()
            torch.manual_seed(0)
            model = build().eval()
            flops = count_flops(model, torch.randn(1, *shape))
            path = os.path.join(tmp, f"{name}.onnx")
            export(model, path)
            # as the Ig3D presets hold it, in the requested runtime and precision
            enc = PerCoreModel(path, workers=workers, backend=backend, name=name, precision=args.precision)
            ref = load(path, backend="onnxruntime", name=name) if bf16 else None  # ig3d's fp32 outputs
            for batch in (1, 32):
                x = torch.randn(batch, *shape)
                xn = x.numpy()
                repeats = 3 if batch == 1 else 2

                def run_torch():
                    with torch.inference_mode():
                        return model(x)

                def run_autocast():
                    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
                        return model(x)

                sides = {"torch": run_torch}
                if bf16:
                    sides["autocast"] = run_autocast
                sides.update({"one": lambda: enc.all_cores.run(xn),
                              "ig3d": lambda: workers.run(enc.for_items(len(xn)), xn)})
                t = bench_interleaved(sides, min_time=min_time, repeats=repeats)
                change = {}
                if bf16:
                    want = ref.run(xn)
                    got = workers.run(enc.for_items(len(xn)), xn)
                    change["ig3d"] = rel_change([got[k] for k in ref.output_names], [want[k] for k in ref.output_names])
                    change["autocast"] = rel_change(_arrays(run_autocast()), _arrays(run_torch()))
                    result[f"{name}_b{batch}_torch_bf16_speedup_vs_torch"] = round(t["torch"] / t["autocast"], 3)
                    result[f"{name}_b{batch}_speedup_vs_torch_bf16"] = round(t["autocast"] / t["ig3d"], 3)
                    result[f"{name}_b{batch}_bf16_max_rel_change"] = float(f"{change['ig3d']:.3g}")
                    result[f"{name}_b{batch}_torch_bf16_max_rel_change"] = float(f"{change['autocast']:.3g}")
                rows.append((name, batch, flops, t, change))
                result[f"{name}_b{batch}_speedup_vs_torch"] = round(t["torch"] / t["ig3d"], 3)
                result[f"{name}_b{batch}_one_run_speedup_vs_torch"] = round(t["torch"] / t["one"], 3)
    gemm = measure_gemm()
    goal = 4.0 if bf16 else 2.0
    kind = "bf16 gemm" if bf16 else "sgemm"
    print(f"# machine: {cpu_name()}, {threads} threads; torch {torch.__version__}; ig3d: {backend}, "
          f"{args.precision}; {kind} {gemm / 1e9:.0f} GFLOP/s (2048^3, torch; best of {len(gemm_runs)} "
          f"measurements in this run)")
    head = (f"{'encoder':8} {'batch':>5} {'GFLOP/img':>9} {'torch img/s':>11} "
            + (f"{'torch bf16':>10} " if bf16 else "")
            + f"{'1 run img/s':>11} {'ig3d img/s':>10} {'limit img/s':>11} {'ig3d/limit':>10} "
            + f"{'vs torch':>8} {'goal':>5}"
            + (f" {'vs t.bf16':>9} {'ig3d chg':>8} {'t.bf16 chg':>10}" if bf16 else ""))
    print(head)
    for name, batch, flops, t, change in rows:
        limit = gemm / flops
        sp = t["torch"] / t["ig3d"]
        line = (f"{name:8} {batch:5d} {flops / 1e9:9.2f} {batch / t['torch']:11.1f} "
                + (f"{batch / t['autocast']:10.1f} " if bf16 else "")
                + f"{batch / t['one']:11.1f} {batch / t['ig3d']:10.1f} {limit:11.1f} {batch / t['ig3d'] / limit:9.0%} "
                + f"{sp:7.2f}x {'met' if sp >= goal else 'MISS':>5}")
        if bf16:
            line += f" {t['autocast'] / t['ig3d']:8.2f}x {change['ig3d']:8.1e} {change['autocast']:10.1e}"
        print(line)
    print(f"# vs torch = torch eager fp32 time / ig3d time (goal {goal:g}x in {args.precision}); "
          + ("vs t.bf16 = torch bf16 autocast time / ig3d time; chg = max |output - fp32 output| / max |fp32 "
             "output| over the outputs (ig3d: against ig3d's fp32 ONNX Runtime outputs; torch bf16: against "
             "torch fp32)" if bf16 else "1 run = the all-cores model given the whole batch in one run"))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
