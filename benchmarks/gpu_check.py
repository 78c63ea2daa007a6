"""The GPU check, in one go: the cuda-marked tests, then the fused head and the crops timed.

For a machine with a CUDA GPU and only torch (CUDA build), numpy, CMake, nvcc, pybind11 and
scikit-build-core. It builds nothing: install ig3d first, from the checkout,

    pip install --no-build-isolation .        # nvcc on PATH: the CUDA launcher is compiled in
    python benchmarks/gpu_check.py [--out gpu_check.json] [--quick]

What it does (written to finish well within 8 minutes on one GPU, not yet timed on one: the tests
have their own time limit, and every part its own try/except, so a failure is recorded in the
JSON, not raised):

1. ``pytest -m cuda python_tests/test_device_arrays.py``: the fused head on device arrays against
   the CPU path on every case of test_fused_head.py, torch CUDA tensors in and out, every input
   protocol and streams, and the GPU crops against the CPU crops byte for byte.
2. The fused head, small (D=55 -> 64 -> 7) and Ig3D's MLP4 (D=358 -> 4 x 2048 -> 10), at batch 1,
   64 and 1024: CPU (numpy in and out), GPU with host arrays (``device="cuda"``: copies both ways
   and a wait), GPU with torch CUDA tensors in and device arrays out (launch only, timed over many
   calls with one synchronisation at the end).
3. The crops: 16 rotated 256 x 256 face crops of a 1920 x 1080 frame, on the CPU
   (``warp_crops``) and on the GPU (``warp_crops_device``, the frame already uploaded), plus the
   frame's upload alone.

Prints one JSON object (times in microseconds per call, the mean over an inner loop, best of 5).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from typing import Any, Callable, Dict

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _error(e: BaseException) -> Dict[str, Any]:
    return {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}


def _best_us(fn: Callable[[], Any], sync: Callable[[], Any], min_time: float) -> float:
    """Best of 5 of the mean time of an inner loop long enough to last min_time / 5."""
    fn()
    sync()
    n = 1
    while True:
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        dt = time.perf_counter() - t0
        if dt >= min_time / 5 or n >= 1 << 16:
            break
        n *= 2
    best = dt / n
    for _ in range(4):
        t0 = time.perf_counter()
        for _ in range(n):
            fn()
        sync()
        best = min(best, (time.perf_counter() - t0) / n)
    return round(best * 1e6, 2)


def environment() -> Dict[str, Any]:
    out: Dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__}
    try:
        import ig3d

        out["ig3d"] = ig3d.__version__
        out["kernels"] = ig3d.kernels.info()
    except Exception as e:  # noqa: BLE001 - recorded
        out["ig3d_error"] = _error(e)
    try:
        import torch

        out["torch"] = torch.__version__
        out["torch_cuda"] = torch.version.cuda
        if torch.cuda.is_available():
            out["gpu"] = torch.cuda.get_device_name(0)
            out["compute_capability"] = ".".join(map(str, torch.cuda.get_device_capability(0)))
    except Exception as e:  # noqa: BLE001
        out["torch_error"] = _error(e)
    return out


def run_tests(timeout: int) -> Dict[str, Any]:
    cmd = [sys.executable, "-m", "pytest", "-m", "cuda", "-q", "-rs", "-p", "no:cacheprovider",
           os.path.join(ROOT, "python_tests", "test_device_arrays.py")]
    t0 = time.perf_counter()
    try:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    except subprocess.TimeoutExpired as e:
        return {"error": f"pytest did not finish in {timeout} s", "output_tail": str(e.stdout or "")[-3000:]}
    lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
    return {"returncode": r.returncode, "summary": lines[-1] if lines else "",
            "seconds": round(time.perf_counter() - t0, 1),
            "output_tail": (r.stdout + r.stderr)[-3000:] if r.returncode else ""}


def _head(kind: str):
    import ig3d

    rng = np.random.default_rng(0)
    if kind == "small":
        dims, d, C, K = [64, 7], 55, 7, 7
    else:
        dims, d, C, K = [2048, 2048, 2048, 2048, 10], 358, 8, 8
    layers, n = [], d
    for i, o in enumerate(dims):
        act = "leaky_relu" if i < len(dims) - 1 else "none"
        layers.append(ig3d.Layer(rng.normal(size=(o, n)) / np.sqrt(n), rng.normal(size=o) * 0.1, act))
        n = o
    return ig3d.FusedHead(layers, input_dim=d, num_classes=C, va_index=8 if kind == "ig3d" else None,
                          fusion="weighted", scores2d_dim=K, fusion_weights=(0.77, 0.23))


def time_fused_head(min_time: float) -> Dict[str, Any]:
    import torch

    res: Dict[str, Any] = {}
    sync = torch.cuda.synchronize
    for kind in ("small", "ig3d"):
        head = _head(kind)
        for B in (1, 64, 1024):
            key = f"{kind}_b{B}"
            try:
                rng = np.random.default_rng(B)
                p = rng.normal(size=(B, head.input_dim)).astype(np.float32)
                s = rng.normal(size=(B, head.scores2d_dim)).astype(np.float32)
                tp, ts = torch.from_numpy(p).cuda(), torch.from_numpy(s).cuda()
                ref = head(p, s)
                out = head(tp, ts)
                err = float(np.abs(out.probs.numpy() - ref.probs).max())
                row = {"max_abs_diff_probs_vs_cpu": err,
                       "cpu_us": _best_us(lambda: head(p, s), lambda: None, min_time),
                       "gpu_host_arrays_us": _best_us(lambda: head(p, s, device="cuda"), lambda: None, min_time),
                       "gpu_device_arrays_us": _best_us(lambda: head(tp, ts), sync, min_time)}
                row["device_vs_host_arrays_speedup"] = round(
                    row["gpu_host_arrays_us"] / row["gpu_device_arrays_us"], 2)
                res[key] = row
            except Exception as e:  # noqa: BLE001 - recorded
                res[key] = _error(e)
    return res


def time_crops(min_time: float) -> Dict[str, Any]:
    import torch

    from ig3d import device as dm
    from ig3d.faces.landmarks import warp_crops

    rng = np.random.default_rng(1)
    frame = rng.integers(0, 256, size=(1080, 1920, 3), dtype=np.uint8)
    M = []
    for k in range(16):
        a, sc = rng.uniform(-0.6, 0.6), 256 / rng.uniform(120, 400)
        c, s = np.cos(a) * sc, np.sin(a) * sc
        cx, cy = rng.uniform(200, 1700), rng.uniform(200, 900)
        M.append([[c, -s, 128 - (c * cx - s * cy)], [s, c, 128 - (s * cx + c * cy)]])
    M = np.array(M)
    tframe = torch.from_numpy(frame).cuda()
    want = warp_crops(frame, M, 256)
    got = dm.warp_crops_device(tframe, M, 256).numpy()
    sync = torch.cuda.synchronize
    return {"crops": 16, "size": 256, "frame": [1080, 1920],
            "byte_equal": bool(np.array_equal(got, want)),
            "cpu_us": _best_us(lambda: warp_crops(frame, M, 256), lambda: None, min_time),
            "gpu_us": _best_us(lambda: dm.warp_crops_device(tframe, M, 256), sync, min_time),
            "frame_upload_us": _best_us(lambda: torch.from_numpy(frame).cuda(), sync, min_time)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", help="also write the JSON here")
    ap.add_argument("--quick", action="store_true", help="shorter timing loops")
    ap.add_argument("--skip-tests", action="store_true", help="timings only")
    ap.add_argument("--test-timeout", type=int, default=300, help="seconds for the cuda tests (default 300)")
    args = ap.parse_args()
    min_time = 0.1 if args.quick else 0.3
    t0 = time.perf_counter()
    report: Dict[str, Any] = {"environment": environment()}
    if not args.skip_tests:
        report["tests"] = run_tests(args.test_timeout)
    for name, fn in (("fused_head", time_fused_head), ("crops", time_crops)):
        try:
            report[name] = fn(min_time)
        except Exception as e:  # noqa: BLE001 - recorded
            report[name] = _error(e)
    report["seconds"] = round(time.perf_counter() - t0, 1)
    text = json.dumps(report, indent=1)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
