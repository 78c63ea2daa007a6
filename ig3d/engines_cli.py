"""``ig3d engines``: prebuild and manage the cached TensorRT engines (:mod:`ig3d.engines.tensorrt`).

    ig3d engines build [ONNX...]   build (or check) engines; without files, the default preset's networks
    ig3d engines list [--json]     the cached engines, whether each is valid, and what it was built for
    ig3d engines clear             delete them (--onnx NAME: one network's; --invalid: only broken ones)

Building takes minutes per network on a small GPU, so that a device (a Jetson, say) can build its
engines once, ahead of time; a ``Predictor(backend="tensorrt")`` then finds them in the cache. ``list``
and ``clear`` work without TensorRT.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List

__all__ = ["add_parser", "DEFAULT_NETWORKS"]

#: what ``ig3d engines build`` builds without file arguments: the default preset's bundled networks
DEFAULT_NETWORKS = ("face_detector_full.onnx", "face_detector_short.onnx", "face_landmarks.onnx",
                    "face_blendshapes.onnx", "fer_mini_xception.onnx")


def _dim(text: str):
    try:
        lo, mid, hi = (int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN,OPT,MAX (three integers), got {text!r}") from None
    return lo, mid, hi


def _cmd_build(args: argparse.Namespace) -> int:
    from .engines import tensorrt as trt_rt
    from .presets import asset_path

    profile = trt_rt.Profile(args.min_batch, args.opt_batch, args.max_batch, args.dim)
    why = trt_rt.tensorrt_problem()
    if why is not None:
        raise RuntimeError(f"cannot build TensorRT engines here: {why}")
    sources: List[str] = list(args.onnx) or [asset_path(n) for n in DEFAULT_NETWORKS]
    failed = 0
    for src in sources:
        try:
            res = trt_rt.build_engine(src, precision=args.precision, profile=profile, device=args.device,
                                      cache_dir=args.cache_dir, force=args.force)
        except (ValueError, RuntimeError, OSError) as e:
            print(f"ig3d engines build: {src}: {e}", file=sys.stderr)
            failed += 1
            continue
        print(f"{'built' if res.built else 'cached'}  {Path(src).name}  {args.precision}  "
              f"batch {profile.min_batch}-{profile.opt_batch}-{profile.max_batch}  {res.path}")
    return 1 if failed else 0


def _cmd_list(args: argparse.Namespace) -> int:
    from .engines.tensorrt import engine_dir, list_engines

    entries = list_engines(args.cache_dir)
    if args.json:
        for e in entries:
            print(json.dumps(e))
        return 0
    print(f"{engine_dir(args.cache_dir)}: {len(entries)} engine{'s' if len(entries) != 1 else ''}")
    for e in entries:
        key = e["key"] or {}
        prof = key.get("profile", {}).get("batch")
        what = (f"{key.get('precision')}  batch {'-'.join(str(v) for v in prof) if prof else '?'}  "
                f"TensorRT {key.get('tensorrt')}  {key.get('gpu')} (sm {key.get('compute_capability')})") if key else ""
        status = "ok" if e["valid"] else f"INVALID: {e['problem']}"
        print(f"  {e['onnx'] or Path(e['path']).name}  {what}  {e['bytes'] or 0} bytes  {status}")
    return 0


def _cmd_clear(args: argparse.Namespace) -> int:
    from .engines.tensorrt import clear_engines

    removed = clear_engines(args.cache_dir, onnx=args.onnx, invalid_only=args.invalid)
    print(f"removed {len(removed)} engine{'s' if len(removed) != 1 else ''}")
    return 0


def add_parser(sub: "argparse._SubParsersAction") -> None:
    """Add ``ig3d engines build|list|clear`` to the ``ig3d`` parser."""
    from .engines.tensorrt import TRT_PRECISIONS, Profile

    p = sub.add_parser("engines", help="prebuild and manage cached TensorRT engines (build, list, clear)",
                       description="TensorRT engines cached under $IG3D_HOME/engines, keyed by the ONNX file's "
                                   "sha256, the TensorRT version, the GPU and compute capability, the precision "
                                   "and the batch profile.")
    esub = p.add_subparsers(dest="engines_command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--cache-dir", help="engine folder (default: $IG3D_HOME/engines)")

    b = esub.add_parser("build", parents=[common], help="build engines (valid cached ones are kept)")
    b.add_argument("onnx", nargs="*", help="ONNX files (default: the default preset's bundled networks)")
    b.add_argument("--precision", default="fp16", choices=TRT_PRECISIONS, help="engine precision (default fp16)")
    d = Profile()
    b.add_argument("--min-batch", type=int, default=d.min_batch, help=f"smallest batch (default {d.min_batch})")
    b.add_argument("--opt-batch", type=int, default=d.opt_batch, help=f"batch tuned for (default {d.opt_batch})")
    b.add_argument("--max-batch", type=int, default=d.max_batch,
                   help=f"largest batch of one launch (default {d.max_batch}; larger batches are split)")
    b.add_argument("--dim", type=_dim, default=d.dim, metavar="MIN,OPT,MAX",
                   help=f"range of other dynamic dimensions, e.g. a detector's height and width (default "
                        f"{','.join(str(v) for v in d.dim)})")
    b.add_argument("--device", type=int, default=0, help="CUDA device index (default 0)")
    b.add_argument("--force", action="store_true", help="rebuild even when a valid engine is cached")
    b.set_defaults(func=_cmd_build)

    ls = esub.add_parser("list", parents=[common], help="list the cached engines and whether each is valid")
    ls.add_argument("--json", action="store_true", help="one JSON object per engine")
    ls.set_defaults(func=_cmd_list)

    c = esub.add_parser("clear", parents=[common], help="delete cached engines")
    c.add_argument("--onnx", metavar="NAME", help="only the engines of this ONNX file name (e.g. face_landmarks.onnx)")
    c.add_argument("--invalid", action="store_true", help="only the engines that fail their checks")
    c.set_defaults(func=_cmd_clear)
