"""Worker-process harness shared by ``_ig3d_side.py`` and ``_mediapipe_side.py``.

``default_pipeline.py`` runs each side of its comparison in a fresh process so that the peak RSS
numbers are comparable (each process pays for its own interpreter, imports and models, and nothing
else). Both workers use this module, so it needs the standard library and numpy only: it also runs
in the separate MediaPipe virtualenv, where ig3d is not installed.

Protocol: a worker is started as ``python <worker>.py --images W.npz --out R.json [options]``.
``W.npz`` holds the decoded images (uint8 HxWx3 RGB, decoded once by the parent, so both sides see
the same pixels) and the two workloads; the worker writes its timings, face counts, versions and
peak RSS to ``R.json``. Exit status 3 means "this side is not available here" (message on stderr).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from typing import Any, Callable, Dict, List, Sequence

import numpy as np

#: Exit status of a worker whose pipeline cannot be built in this interpreter.
UNAVAILABLE = 3


class SideUnavailable(RuntimeError):
    """The pipeline of this side cannot run here (package or model missing)."""


def bench(fn: Callable[[], Any], *, min_time: float, repeats: int) -> float:
    """Seconds per call of ``fn``: the minimum over ``repeats`` of the mean of an inner loop.

    The inner loop is sized so that all repeats together take about ``min_time`` (at least one call
    each). ``fn`` is called twice before timing (warm-up, and to size the loop).
    """
    fn()
    t0 = time.perf_counter()
    fn()
    one = max(time.perf_counter() - t0, 1e-7)
    inner = max(1, int(min_time / repeats / one))
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(inner):
            fn()
        best = min(best, (time.perf_counter() - t0) / inner)
    return best


def bench_interleaved(fns: Dict[str, Callable[[], Any]], *, min_time: float, repeats: int) -> Dict[str, float]:
    """:func:`bench` for several functions whose times are compared, in rounds: each round times
    every function once (about ``min_time / repeats`` each), and each keeps its fastest round. On a
    shared machine whose speed drifts over minutes, a drift then hits both sides of a ratio alike
    instead of whichever happened to be timed last."""
    best = {k: float("inf") for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            best[k] = min(best[k], bench(fn, min_time=min_time / repeats, repeats=1))
    return best


def cpu_name() -> str:
    """The processor's model name (Linux), else what platform reports."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MB (2**20 bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports KiB, macOS bytes.
    return peak / (2**20 if sys.platform == "darwin" else 2**10)


def save_workloads(path: str, images: Dict[str, np.ndarray], b1: Sequence[str], b16: Sequence[str]) -> None:
    """Write the decoded images and the two workloads (lists of image names) to ``path`` (.npz)."""
    arrays = {f"img:{name}": np.ascontiguousarray(img, dtype=np.uint8) for name, img in images.items()}
    np.savez(path, **arrays, b1=np.array(list(b1)), b16=np.array(list(b16)))


def load_workloads(path: str):
    """Return ``(b1, b16)``: ``b1`` a list of ``(name, image)``, ``b16`` a list of images.

    Every entry of ``b16`` is its own copy, so a pipeline cannot benefit from repeated objects.
    """
    with np.load(path) as z:
        images = {k[4:]: z[k] for k in z.files if k.startswith("img:")}
        b1 = [(str(n), images[str(n)]) for n in z["b1"]]
        b16 = [images[str(n)].copy() for n in z["b16"]]
    return b1, b16


def worker_arguments(description: str) -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=description)
    ap.add_argument("--images", required=True, help=".npz written by save_workloads")
    ap.add_argument("--out", required=True, help="where to write the JSON result")
    ap.add_argument("--min-time", type=float, default=1.0, help="seconds per timed measurement")
    ap.add_argument("--repeats", type=int, default=5, help="repeats per measurement (min is kept)")
    ap.add_argument("--b1-only", action="store_true", help="time the batch-1 workload only (no 16-face call)")
    return ap


def run_worker(args: argparse.Namespace, side: str, build: Callable[[], "Pipeline"]) -> None:
    """Load the workloads, build the pipeline, time it and write the result JSON (``b16_s`` and
    ``b16_faces_found`` are null with ``--b1-only``).

    ``build()`` returns an object with ``versions`` (dict), ``predict(img)``,
    ``predict_many(imgs)`` and ``summary(result) -> {"faces": int|None, "labels": list|None}``
    for the result of one image. ``predict_many`` must return one result per image.
    It raises :class:`SideUnavailable` when the side cannot run here.
    """
    b1, b16 = load_workloads(args.images)
    base_rss = peak_rss_mb()  # interpreter + numpy + decoded images, before any pipeline import
    t0 = time.perf_counter()
    try:
        pipe = build()
    except SideUnavailable as exc:
        print(f"{side}: {exc}", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    # Warm-up outside the timed region; the summaries (faces found, labels) come from these calls.
    per_image = {name: pipe.summary(pipe.predict(img)) for name, img in b1}
    b16_summaries = []
    if not getattr(args, "b1_only", False):
        many = pipe.predict_many(b16)
        if len(many) != len(b16):
            raise RuntimeError(f"{side}: predict_many returned {len(many)} results for {len(b16)} images")
        b16_summaries = [pipe.summary(r) for r in many]
    setup_s = time.perf_counter() - t0

    b1_s = {name: bench(lambda img=img: pipe.predict(img), min_time=args.min_time, repeats=args.repeats)
            for name, img in b1}
    b16_s = (bench(lambda: pipe.predict_many(b16), min_time=args.min_time, repeats=args.repeats)
             if b16_summaries else None)

    faces16 = [s["faces"] for s in b16_summaries]
    result = {
        "side": side,
        "versions": {"python": platform.python_version(), "numpy": np.__version__, **pipe.versions},
        "setup_and_warmup_s": setup_s,
        "b1_s": b1_s,
        "b1_summary": per_image,
        "b16_s": b16_s,
        "b16_images": len(b16),
        "b16_faces_found": None if not faces16 or None in faces16 else int(sum(faces16)),
        "base_rss_mb": base_rss,
        "peak_rss_mb": peak_rss_mb(),
    }
    with open(args.out, "w") as fh:
        json.dump(result, fh, indent=1)


class Pipeline:  # documentation only: the interface run_worker expects
    versions: Dict[str, str]

    def predict(self, img: np.ndarray) -> Any: ...

    def predict_many(self, imgs: List[np.ndarray]) -> List[Any]: ...

    def summary(self, result: Any) -> Dict[str, Any]: ...
