"""Command line.

    ig3d predict PATH...            a table per face
    ig3d predict --demo             the photo bundled with ig3d
    ig3d predict PATH --json        JSON (one object per image)
    ig3d predict PATH --overlay OUT.png   also draw boxes, landmarks and scores
    ig3d convert KIND CKPT -o DIR   upstream checkpoint -> ig3d weights (.npz) + ONNX
    ig3d info                       build and hardware facts
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import List, Optional, Sequence


def _cmd_info(args: argparse.Namespace) -> int:
    from . import __version__, available_backends, kernels

    facts = {"version": __version__, **kernels.info(), "backends": available_backends()}
    print(json.dumps(facts, indent=2))
    return 0


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


def _cmd_predict(args: argparse.Namespace) -> int:
    from . import Predictor
    from .io import load_image
    from .presets import asset_path

    paths: List[str] = list(args.paths)
    if args.demo:
        paths.insert(0, asset_path("astronaut.png"))
    if not paths:
        print("ig3d predict: give image paths, or --demo", file=sys.stderr)
        return 2
    if args.overlay and len(paths) != 1:
        print("ig3d predict: --overlay takes exactly one image", file=sys.stderr)
        return 2
    predictor = Predictor(preset=args.preset, backend=args.backend, device=args.device)
    images = []
    for p in paths:
        try:
            images.append(load_image(p))
        except (FileNotFoundError, ValueError) as e:
            print(f"ig3d predict: {e}", file=sys.stderr)
            return 1
    results = predictor.predict_batch(images)
    if args.json:
        out = [{"image": p, "faces": [f.to_dict(landmarks=args.landmarks) for f in faces]}
               for p, faces in zip(paths, results)]
        print(json.dumps(out if len(out) > 1 else out[0], indent=2))
    else:
        shown = ["demo: " + p if args.demo and i == 0 else p for i, p in enumerate(paths)]
        print("\n".join(_table(p, faces) for p, faces in zip(shown, results)))
    if args.overlay:
        from .overlay import draw_overlay

        draw_overlay(images[0], results[0]).save(args.overlay)
        if not args.json:
            print(f"overlay written to {args.overlay}")
    return 0


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert, convert_head

    if args.kind == "ig3d-head":
        if not (args.task and args.encoder):
            raise ValueError("ig3d convert ig3d-head needs --task and --encoder")
        written = convert_head(args.checkpoint, args.output, task=args.task, encoder=args.encoder,
                               fusion=args.fusion, scores2d_order=args.scores2d_order,
                               trust_checkpoint=args.trust_checkpoint)
    else:
        written = convert(args.kind, args.checkpoint, args.output, trust_checkpoint=args.trust_checkpoint,
                          onnx=not args.no_onnx)
    for role, path in written.items():
        print(f"{role}: {path}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="ig3d", description="ig3d: facial-expression inference (Ig3D)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("predict", help="read the faces in images")
    p.add_argument("paths", nargs="*", help="image files")
    p.add_argument("--demo", action="store_true", help="run on the photo bundled with ig3d")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.add_argument("--landmarks", action="store_true", help="include the 478 landmarks in --json output")
    p.add_argument("--overlay", metavar="OUT.png", help="draw boxes, landmarks and scores into OUT.png")
    p.add_argument("--preset", default="default")
    p.add_argument("--backend", default="auto", choices=["auto", "onnxruntime", "tensorrt"])
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=_cmd_predict)

    from .convert import KINDS

    p_conv = sub.add_parser("convert", help="convert an upstream checkpoint to ig3d weights + ONNX (needs torch)")
    p_conv.add_argument("kind", choices=sorted(KINDS) + ["ig3d-head"])
    p_conv.add_argument("checkpoint", help="the upstream checkpoint file")
    p_conv.add_argument("-o", "--output", required=True, help="output folder")
    p_conv.add_argument("--trust-checkpoint", action="store_true",
                        help="allow unpickling Python objects (only for files you trust)")
    p_conv.add_argument("--no-onnx", action="store_true", help="write the weights only")
    p_conv.add_argument("--task", choices=["affectnet8", "rafdb", "affectnet_va"], help="ig3d-head: the head's task")
    p_conv.add_argument("--encoder", choices=["emoca", "smirk"], help="ig3d-head: the 3D encoder it reads")
    p_conv.add_argument("--fusion", default="weighted", choices=["weighted", "max", "mean", "min"],
                        help="ig3d-head: late fusion mode for a 3D-only head (Ig3D's weights)")
    p_conv.add_argument("--scores2d-order", choices=["native", "ddamfn++"],
                        help="ig3d-head, rafdb: class order of the 2D network's scores")
    p_conv.set_defaults(func=_cmd_convert)

    from .workflow_cli import add_parsers as add_workflow_parsers

    add_workflow_parsers(sub)

    p_info = sub.add_parser("info", help="print build and hardware facts as JSON")
    p_info.set_defaults(func=_cmd_info)

    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, RuntimeError, FileNotFoundError, ImportError) as e:
        print(f"ig3d {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
