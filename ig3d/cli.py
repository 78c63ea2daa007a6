"""Command line.

    ig3d predict PATH...            a table per image (PATH: image files or folders of images)
    ig3d predict --demo             the photo bundled with ig3d
    ig3d predict PATH --json        JSON Lines: one object per image
    ig3d predict PATH --overlay OUT also draw boxes, landmarks and scores (OUT: a file, a folder or a pattern)
    ig3d predict VIDEO --json       JSON Lines: one object per frame (index, timestamp, faces with track ids)
    ig3d predict VIDEO --overlay OUT.mp4   the annotated video
    ig3d predict --camera 0         live, until Ctrl-C
    ig3d convert KIND CKPT -o DIR   upstream checkpoint -> ig3d weights (.npz) + ONNX
    ig3d engines build|list|clear   prebuild and manage cached TensorRT engines
    ig3d info                       build and hardware facts, and every backend with why it is (not) available
    ig3d --version

It behaves like a Unix tool: results go to stdout, problems to stderr; a bad input is reported and
the others still run; the exit status is 0 when every input was read, 1 when some failed and 2 for
a usage error; output piped into ``head`` ends quietly.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Dict, List, NamedTuple, Optional, Sequence, Tuple

from ._version import __version__

__all__ = ["main", "build_parser", "IMAGE_SUFFIXES", "VIDEO_SUFFIXES"]

#: what ``ig3d predict FOLDER`` reads (case-insensitive)
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
#: files read as videos (frame by frame, faces tracked; needs the video extra)
VIDEO_SUFFIXES = (".mp4", ".m4v", ".mkv", ".avi", ".mov", ".webm", ".mpg", ".mpeg", ".wmv", ".flv", ".3gp")
#: images decoded and run together: a folder of thousands is never all in memory at once
BATCH = 16


class UsageError(Exception):
    """A command line that cannot run as given (exit status 2)."""


def _cmd_info(args: argparse.Namespace) -> int:
    from . import available_backends, kernels
    from .engines import describe_cuda

    facts = {"version": __version__, **kernels.info(), "backends": available_backends()}
    facts["cuda_status"] = describe_cuda(facts["cuda_devices"], facts["cuda_status"], facts["cuda_compiled"])
    facts.update(_precision_facts())
    from . import engines

    cpu_backend, _ = engines.resolve("auto", "cpu")
    # what backend="auto" runs on the CPU here: one runtime, and where a lone tracked face's networks go
    facts["auto_on_cpu"] = {"backend": cpu_backend,
                            "tracking": engines.tracking_backends("auto", cpu_backend, "cpu")}
    print(json.dumps(facts, indent=2))
    return 0


def _precision_facts() -> dict:
    """Whether bf16 can run here, and which network runs in which precision with --precision bf16
    (the others stay fp32: their bf16 outputs failed the accuracy gates)."""
    from . import engines, ig3d_presets, presets

    backend = next((b for b in engines.RUNTIME_MODULES if "bf16" in engines.get_runtime(b).precisions("cpu")), None)
    nets = ["face_detector_full.onnx", "face_detector_short.onnx", "face_landmarks.onnx", "face_blendshapes.onnx",
            "fer_mini_xception.onnx", "smirk", "emoca", "ddamfn", "cage"]
    gated = presets.BF16_GATED | ig3d_presets.BF16_GATED
    return {"bf16": f"available (backend={backend!r})" if backend else
            "not available (needs backend='openvino' and a CPU with AMX or AVX512-BF16)",
            "precision_with_bf16": {n: "bf16" if n in gated else "fp32" for n in nets}}


def _table(path: str, faces) -> str:
    lines = [f"{path}: {len(faces)} face{'s' if len(faces) != 1 else ''}"]
    if not faces:
        return lines[0]
    lines.append(f"  {'#':>2} {'box (x0,y0,x1,y1)':>22} {'label':>9} {'p':>5} {'valence':>8} {'arousal':>8} "
                 f"{'2D':>9} {'3D':>9} {'yaw':>6} {'pitch':>6} {'roll':>6}")
    for i, f in enumerate(faces):
        box = ",".join(str(int(round(v))) for v in f.box)
        hp = f.head_pose
        lines.append(f"  {i:>2} {box:>22} {f.label:>9} {f.scores[f.label]:5.2f} {f.valence:+8.2f} {f.arousal:+8.2f} "
                     f"{f.label_2d:>9} {f.label_3d:>9} {hp['yaw']:+6.1f} {hp['pitch']:+6.1f} {hp['roll']:+6.1f}")
    return "\n".join(lines)


def _is_video(path: Path) -> bool:
    """A video file, by its name (checked before reading, so a large video is never loaded as an image)."""
    return path.suffix.lower() in VIDEO_SUFFIXES


def _folder_images(folder: Path, recursive: bool) -> List[Path]:
    """The images in ``folder`` (and its subfolders with ``recursive``) in name order; hidden files and
    folders (names starting with ".") are skipped, as ``ls`` does. Symlinked folders are not followed."""
    found = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".")) if recursive else []
        found += [Path(root) / f for f in files if not f.startswith(".") and Path(f).suffix.lower() in IMAGE_SUFFIXES]
    return sorted(found, key=lambda q: q.relative_to(folder).parts)


class _Input(NamedTuple):
    name: str             # the path as shown and read
    error: Optional[str]  # why it cannot be read, found before reading it
    rel: Path             # its path below the folder argument it came from (its file name otherwise)


def _inputs(paths: Sequence[str], recursive: bool) -> List[_Input]:
    """Command-line paths -> one entry per image, or per argument that is no image source, in order."""
    out: List[_Input] = []
    for arg in paths:
        path = Path(arg)
        if path.is_dir():
            images = _folder_images(path, recursive)
            if not images:
                more = "" if recursive or not any(q.is_dir() for q in path.iterdir()) else \
                    "; --recursive reads its subfolders"
                out.append(_Input(arg, f"'{arg}': a folder with no images ({', '.join(IMAGE_SUFFIXES)}){more}",
                                  Path(path.name)))
            out += [_Input(str(q), None, q.relative_to(path)) for q in images]
        elif not path.exists():
            out.append(_Input(arg, f"'{arg}': no such file or folder", Path(path.name)))
        else:
            out.append(_Input(arg, None, Path(path.name)))
    return out


#: what --overlay may write (Pillow picks the format from the extension)
_OVERLAY_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


_PATTERN_KEYS = ("{stem}", "{name}", "{parent}")


def _overlay_paths(spec: str, several: bool, images: Sequence[_Input]) -> Dict[str, Path]:
    """Where --overlay writes each image's drawing: a file (one input); a folder (``<stem>.png`` in it,
    in the same subfolders as below a folder argument); or a pattern with ``{stem}`` (file name
    without extension), ``{name}`` (file name) or ``{parent}`` (its folder's name). Raises
    :class:`UsageError` for a target that cannot work: no image extension, two inputs on one file,
    or an input overwritten."""
    if any(k in spec for k in _PATTERN_KEYS):
        try:
            spec.format(stem="x", name="x.png", parent="p")
        except (KeyError, IndexError, ValueError) as e:
            raise UsageError(f"--overlay {spec!r}: a pattern may hold {', '.join(_PATTERN_KEYS)} only ({e!r})") from e

        def target(item: _Input) -> Path:
            q = Path(item.name)
            return Path(spec.format(stem=q.stem, name=q.name, parent=q.resolve().parent.name))
    elif several or Path(spec).is_dir() or spec.endswith(("/", os.sep)):
        folder = Path(spec)
        if folder.exists() and not folder.is_dir():
            raise UsageError(f"--overlay {spec!r}: with several images OUT is a folder (or a pattern with {{stem}}), "
                             "but this is a file")

        def target(item: _Input) -> Path:
            return folder / item.rel.with_suffix(".png")
    else:
        def target(item: _Input) -> Path:
            return Path(spec)
    plan: Dict[str, Path] = {}
    seen: Dict[Path, str] = {}
    inputs = {Path(i.name).resolve() for i in images}
    for item in images:
        out = target(item)
        if out.suffix.lower() not in _OVERLAY_SUFFIXES:
            raise UsageError(f"--overlay: {str(out)!r} needs an image extension ({', '.join(_OVERLAY_SUFFIXES)})")
        key = out.resolve()
        if key in seen:
            raise UsageError(f"--overlay: '{seen[key]}' and '{item.name}' would both be written to '{out}'; use a "
                             f"pattern that tells them apart ({', '.join(_PATTERN_KEYS)})")
        if key in inputs:
            raise UsageError(f"--overlay: '{out}' is an input image; it would be overwritten")
        seen[key] = item.name
        plan[item.name] = out
    return plan


class _Progress:
    """A progress line on stderr when it is a terminal: frames done (of how many), frames/s. Cleared
    before anything else is printed, so that it stays below the results on a shared terminal."""

    def __init__(self, name: str, total: Optional[int]):
        import time

        self._clock = time.perf_counter
        self.name, self.total, self.n = name, total, 0
        self.on = sys.stderr.isatty()
        self._t0, self._shown = self._clock(), False

    def step(self) -> None:
        self.n += 1
        if not self.on:
            return
        rate = self.n / max(self._clock() - self._t0, 1e-9)
        done = f"{self.n}/{self.total} frames ({100 * self.n / self.total:.0f} %)" if self.total else f"{self.n} frames"
        sys.stderr.write(f"\r\033[K{self.name}: {done}, {rate:.1f} frames/s")
        sys.stderr.flush()
        self._shown = True

    def clear(self) -> None:
        if self._shown:
            sys.stderr.write("\r\033[K")
            sys.stderr.flush()
            self._shown = False

    def done(self) -> None:
        if self._shown:
            sys.stderr.write("\n")
            sys.stderr.flush()
            self._shown = False


def _frame_line(name: str, r) -> str:
    """One line per video frame: its index and time, then each face with its track id."""
    faces = "; ".join(f"#{f.track_id} {f.label} {f.scores[f.label]:.2f} V{f.valence:+.2f} A{f.arousal:+.2f} "
                      f"box {','.join(str(int(round(v))) for v in f.box)}" for f in r.faces)
    n = len(r.faces)
    head = f"{name} frame {r.index} ({r.timestamp:.3f} s): {n} face{'s' if n != 1 else ''}"
    return head + (f": {faces}" if n else "")


def _camera(spec: str):
    """``--camera 0`` -> 0 (an index); anything else is a device path."""
    return int(spec) if spec.isdigit() else spec


def _predict_video(predictor, source, args: argparse.Namespace, report, overlay: Optional[Path]) -> None:
    """Stream a video file or a camera: a line (or a JSON object) per frame, the annotated video
    with --overlay, a progress line on a terminal. Ctrl-C ends a camera run normally."""
    import warnings

    from .video import VideoWriter

    live = not isinstance(source, str) or not _is_video(Path(source))
    name = f"camera {source}" if live else source
    try:
        stream = predictor.stream(source, max_faces=args.max_faces, detect_every=args.detect_every,
                                  smoothing=None if args.no_smoothing else "default", with_images=overlay is not None)
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        report(str(e))
        return
    progress = _Progress(name, stream.source.frames)
    writer = None

    def note(message: str) -> None:  # reported, not a failure (a skipped corrupt frame)
        progress.clear()
        sys.stdout.flush()
        print(f"ig3d predict: {message}", file=sys.stderr, flush=True)

    try:
        with stream, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            for r in stream:
                for w in caught:
                    note(str(w.message))
                caught.clear()
                progress.clear()
                if args.json:
                    print(json.dumps({"video": name, **r.to_dict(landmarks=args.landmarks)}), flush=live)
                else:
                    print(_frame_line(name, r), flush=live)
                if overlay is not None:
                    from .stream import draw_frame

                    if writer is None:
                        overlay.parent.mkdir(parents=True, exist_ok=True)
                        writer = VideoWriter(overlay)
                    writer.write(draw_frame(r.image, r.faces), r.timestamp)
                progress.step()
            for w in caught:
                note(str(w.message))
    except KeyboardInterrupt:
        if not live:
            raise
    except (ValueError, RuntimeError, OSError) as e:
        progress.clear()
        report(str(e))
    finally:
        progress.done()
        if writer is not None:
            writer.close()
            if not args.json:
                print(f"overlay written to {overlay} ({writer.frames} frames)")
    sys.stdout.flush()


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import Predictor
    from .io import load_image
    from .presets import asset_path

    if args.landmarks and not args.json:
        raise UsageError("--landmarks adds the 478 points to the JSON output: use it with --json")
    demo = asset_path("astronaut.png") if args.demo else None
    paths: List[str] = ([demo] if demo else []) + list(args.paths)
    camera = _camera(args.camera) if args.camera is not None else None
    for opt, v in (("--max-faces", args.max_faces), ("--detect-every", args.detect_every)):
        if v < 1:
            raise UsageError(f"{opt}: expected a positive number, got {v}")
    if not paths and camera is None:
        raise UsageError("give image files, folders or videos, --camera, or --demo")
    inputs = _inputs(paths, args.recursive)
    good = [i for i in inputs if i.error is None]
    overlay: Dict[str, Path] = {}
    video_overlay: Optional[Path] = None
    if args.overlay and (camera is not None or any(_is_video(Path(i.name)) for i in good)):
        if len(inputs) + (camera is not None) != 1:
            raise UsageError("--overlay with a video or a camera takes that one input only")
        if Path(args.overlay).suffix.lower() not in VIDEO_SUFFIXES:
            raise UsageError(f"--overlay {args.overlay!r}: a video's overlay is a video file "
                             f"({', '.join(VIDEO_SUFFIXES)})")
        if good and Path(args.overlay).resolve() == Path(good[0].name).resolve():
            raise UsageError(f"--overlay: '{args.overlay}' is the input video; it would be overwritten")
        video_overlay = Path(args.overlay)
    elif args.overlay:
        several = len(paths) > 1 or any(Path(q).is_dir() for q in paths)
        overlay = _overlay_paths(args.overlay, several, good)
    predictor = Predictor(preset=args.preset, backend=args.backend, device=args.device, precision=args.precision)
    failed = 0

    def report(message: str) -> None:
        nonlocal failed
        failed += 1
        sys.stdout.flush()  # what came before the bad input is printed before its message
        print(f"ig3d predict: {message}", file=sys.stderr, flush=True)

    def run(batch: List[Tuple[str, object]]) -> None:
        results = predictor.predict_batch([image for _, image in batch])
        for (name, image), faces in zip(batch, results):
            if args.json:
                print(json.dumps({"image": name, "faces": [f.to_dict(landmarks=args.landmarks) for f in faces]}))
            else:
                print(_table("demo: " + name if name == demo else name, faces))
            if name in overlay:
                from .overlay import draw_overlay

                out = overlay[name]
                try:
                    out.parent.mkdir(parents=True, exist_ok=True)
                    draw_overlay(image, faces).save(out)
                except (OSError, ValueError) as e:
                    report(f"'{out}': could not write the overlay ({e})")
                    continue
                if not args.json:
                    print(f"overlay written to {out}")
        sys.stdout.flush()

    batch: List[Tuple[str, object]] = []
    for name, error, _ in inputs:
        if error is not None:
            report(error)
            continue
        if _is_video(Path(name)):
            if batch:  # results stay in the order of the inputs
                run(batch)
                batch = []
            _predict_video(predictor, name, args, report, video_overlay)
            continue
        try:
            batch.append((name, load_image(name)))
        except ValueError as e:
            report(str(e))
            continue
        except OSError as e:  # unreadable: permissions, a device, ...
            report(f"'{name}': cannot read it ({e.strerror or type(e).__name__})")
            continue
        if len(batch) == BATCH:
            run(batch)
            batch = []
    if batch:
        run(batch)
    if camera is not None:
        _predict_video(predictor, camera, args, report, video_overlay)
    return 1 if failed else 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert, convert_head

    if args.kind == "ig3d-head":
        if not (args.task and args.encoder):
            raise ValueError("ig3d convert ig3d-head needs --task and --encoder")
        if args.expression_extra:
            raise ValueError("--expression-extra is only for ig3d convert emoca")
        written = convert_head(args.checkpoint, args.output, task=args.task, encoder=args.encoder,
                               fusion=args.fusion, scores2d_order=args.scores2d_order,
                               trust_checkpoint=args.trust_checkpoint)
    else:
        written = convert(args.kind, args.checkpoint, args.output, trust_checkpoint=args.trust_checkpoint,
                          onnx=not args.no_onnx, expression_extra=args.expression_extra)
    for role, path in written.items():
        print(f"{role}: {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    try:
        return _main(argv)
    except BrokenPipeError:
        # the reader went away (`ig3d predict ... | head`): stop quietly. Python's documented recipe:
        # point stdout at devnull so that the flush at exit does not raise a second time.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except KeyboardInterrupt:
        return 130


def build_parser() -> argparse.ArgumentParser:
    """The ``ig3d`` argument parser with every subcommand (the workflow ones from :mod:`ig3d.workflow_cli`)."""
    parser = argparse.ArgumentParser(prog="ig3d", description="ig3d: facial-expression inference (Ig3D)")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "predict", help="read the faces in images, videos or a camera",
        description="Read the faces in images: a table per image, or JSON Lines with --json. Videos and cameras: "
                    "a line (or JSON object) per frame, faces tracked. A bad input is reported on stderr and the "
                    "others still run; exit status 1 if any failed.")
    p.add_argument("paths", nargs="*", metavar="PATH",
                   help=f"image files, folders whose images ({', '.join(IMAGE_SUFFIXES)}) are read in name order, or "
                        f"videos ({', '.join(VIDEO_SUFFIXES)}; pip install 'ig3d[video]'), read frame by frame with "
                        "the faces tracked")
    p.add_argument("--camera", metavar="DEV",
                   help="read a camera live until Ctrl-C: an index (0 is /dev/video0 on Linux) or a device path")
    p.add_argument("--max-faces", type=int, default=4, metavar="N", help="videos: most faces tracked at once (4)")
    p.add_argument("--detect-every", type=int, default=10, metavar="N",
                   help="videos: while fewer than --max-faces are tracked, look for new faces every N frames (10)")
    p.add_argument("--no-smoothing", action="store_true", help="videos: each frame's raw outputs, unsmoothed")
    p.add_argument("--demo", action="store_true", help="run on the photo bundled with ig3d")
    p.add_argument("-r", "--recursive", action="store_true", help="also read the images in subfolders of folders")
    p.add_argument("--json", action="store_true",
                   help='JSON Lines instead of a table: one {"image": ..., "faces": [...]} object per line per image; '
                        'for a video one {"video": ..., "index": ..., "timestamp": ..., "faces": [...]} per frame')
    p.add_argument("--landmarks", action="store_true", help="add the 478 landmarks to each face (needs --json)")
    p.add_argument("--overlay", metavar="OUT",
                   help="draw boxes, landmarks and scores: with one image into the file OUT (e.g. out.png); with "
                        "several into the folder OUT (created; <stem>.png each) or a name pattern with {stem} or "
                        "{name}, e.g. 'out/{stem}_faces.jpg'; with a video or --camera the annotated video "
                        "(e.g. out.mp4: boxes, landmarks, score bars, track ids)")
    p.add_argument("--preset", default="default",
                   help="default (bundled), or an Ig3D preset: ig3d-smirk-ddamfn, ig3d-emoca-ddamfn, ig3d-emoca-cage, "
                        "ig3d-smirk-cage (their weights under $IG3D_HOME/weights)")
    from .engines import BACKENDS, PRECISIONS

    p.add_argument("--backend", default="auto", choices=list(BACKENDS),
                   help="what runs the networks (default: auto: CUDA through ONNX Runtime when there is a GPU, "
                        "else OpenVINO when installed, else ONNX Runtime)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                   help="auto: CUDA when ONNX Runtime has it, else the CPU; cuda without a GPU is an error")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="fp32 (default, exact) or bf16 (CPUs with AMX or AVX512-BF16, OpenVINO; only the networks "
                        "that pass the accuracy gates: see `ig3d info`)")
    p.set_defaults(func=_cmd_predict)

    from .convert import KINDS
    from .engines import cache_root

    weights = cache_root() / "weights"
    p_conv = sub.add_parser(
        "convert", help="convert an upstream checkpoint to ig3d weights + ONNX (pip install 'ig3d[convert]')",
        description="Convert an upstream checkpoint to ig3d weights (.npz) and an ONNX file. Needs the convert "
                    "extra (pip install 'ig3d[convert]'). Output is all or nothing: a failed run leaves no files.",
        epilog=f"The Ig3D presets look for each part in $IG3D_HOME/weights/<part> (here {weights}/<part>): "
               f"convert a SMIRK checkpoint with -o {weights / 'smirk'}, and an Ig3D head with "
               f"-o {weights}/<preset>, e.g. {weights / 'ig3d-smirk-ddamfn'}.")
    p_conv.add_argument("kind", choices=sorted(KINDS) + ["ig3d-head"],
                        help="what the checkpoint is: smirk (SMIRK_em1.pt), ddamfn (a DDAMFN++ .pth), emoca (an EMOCA "
                             "Lightning .ckpt), deca (deca_model.tar), cage (a CAGE state dict), ig3d-head (an Ig3D "
                             "3D head: needs --task and --encoder)")
    p_conv.add_argument("checkpoint", help="the upstream checkpoint file")
    p_conv.add_argument("-o", "--output", required=True, metavar="DIR",
                        help=f"output folder (created). The presets read $IG3D_HOME/weights/<part> (here "
                             f"{weights}/<part>), e.g. -o {weights / 'smirk'} for smirk")
    p_conv.add_argument("--trust-checkpoint", action="store_true",
                        help="allow unpickling Python objects (only for files you trust)")
    p_conv.add_argument("--no-onnx", action="store_true", help="write the weights only")
    p_conv.add_argument("--task", choices=["affectnet8", "rafdb", "affectnet_va"], help="ig3d-head: the head's task")
    p_conv.add_argument("--encoder", choices=["emoca", "smirk"], help="ig3d-head: the 3D encoder it reads")
    p_conv.add_argument("--fusion", default="weighted", choices=["weighted", "max", "mean", "min"],
                        help="ig3d-head: late fusion mode for a 3D-only head (Ig3D's weights)")
    p_conv.add_argument("--scores2d-order", choices=["native", "ddamfn++"],
                        help="ig3d-head, rafdb: class order of the 2D network's scores")
    p_conv.add_argument("--expression-extra", choices=["jaw", "global"],
                        help="emoca, 53-wide E_expression without a cfg.yaml beside the checkpoint: its 3 extra "
                             "outputs are the jaw pose (exp_deca_jaw_pose) or the global head rotation "
                             "(exp_deca_global_pose)")
    p_conv.set_defaults(func=_cmd_convert)

    from .workflow_cli import add_parsers as add_workflow_parsers

    add_workflow_parsers(sub)

    from .engines_cli import add_parser as add_engines_parser

    add_engines_parser(sub)

    p_info = sub.add_parser("info", help="print build and hardware facts as JSON")
    p_info.set_defaults(func=_cmd_info)
    return parser


def _main(argv: Optional[Sequence[str]]) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except UsageError as e:
        print(f"ig3d {args.command}: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        raise
    except (ValueError, RuntimeError, OSError, ImportError) as e:
        print(f"ig3d {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
