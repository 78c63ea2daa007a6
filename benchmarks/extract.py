"""Throughput of ``ig3d extract`` with the default preset, against its anchor in the same run.

    python benchmarks/extract.py [--images 96] [--batch 16] [--rounds 3] [--faces DIR]

Builds an ImageFolder of ``--images`` JPEG files from the shared face photos (the four one-face
photos, mirrored and shifted so that no two files are equal), then times, in alternating rounds:

* ``extract``: :func:`ig3d.extract.extract` on that folder, from the files to the finished ``.npz``
  (decoding in its background thread, blocks written, the output assembled);
* ``anchor``: ``Predictor._pipeline.run`` on the same images already decoded, in batches of the same
  size: the preset's own work, with nothing of the extraction around it.

Each keeps its fastest round. Prints images/s for both, their ratio, and one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def _faces_dir(arg):
    if arg:
        return Path(arg)
    env = os.environ.get("IG3D_FACES_DIR")
    return Path(env) if env else HERE.parents[1] / "shared" / "data" / "faces"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--images", type=int, default=96)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--faces", help="folder of the shared face photos (default: ../shared/data/faces)")
    args = ap.parse_args(argv)

    from PIL import Image

    import ig3d
    from ig3d.extract import extract
    from ig3d.io import load_image

    src = _faces_dir(args.faces)
    names = ["astronaut.png", "single_face.jpg", "0-f15-hao-ph.jpg", "0-f1-su-ph.jpg"]
    if not all((src / n).is_file() for n in names):
        print(f"the shared face photos are not in {src} (use --faces)", file=sys.stderr)
        return 2
    tmp = Path(tempfile.mkdtemp(prefix="ig3d-bench-extract-"))
    try:
        root = tmp / "ds"
        (root / "happy").mkdir(parents=True)
        base = [Image.open(src / n).convert("RGB") for n in names]
        for i in range(args.images):
            im = base[i % len(base)]
            if (i // len(base)) % 2:
                im = im.transpose(Image.FLIP_LEFT_RIGHT)
            dx = (i // (2 * len(base))) % 8
            im.crop((dx, dx, im.width - 8 + dx, im.height - 8 + dx)).save(root / "happy" / f"{i:05d}.jpg", quality=92)
        paths = sorted((root / "happy").glob("*.jpg"))
        images = [load_image(p) for p in paths]

        predictor = ig3d.Predictor()
        pipe = predictor._pipeline

        def anchor():
            for s in range(0, len(images), args.batch):
                pipe.run(images[s:s + args.batch])

        def run_extract():
            out = tmp / "f.npz"
            if out.exists():
                out.unlink()
            extract(root, out, predictor=predictor, batch=args.batch, progress=False)

        anchor()  # warm-up: sessions, caches
        best = {"extract": float("inf"), "anchor": float("inf")}
        for _ in range(args.rounds):
            for name, fn in (("extract", run_extract), ("anchor", anchor)):
                t0 = time.perf_counter()
                fn()
                best[name] = min(best[name], time.perf_counter() - t0)
        n = len(images)
        ex_rate, an_rate = n / best["extract"], n / best["anchor"]
        print(f"default preset, {n} images ({', '.join(names)}, varied), batch {args.batch}, "
              f"{os.cpu_count()} cores, best of {args.rounds} alternating rounds")
        print(f"| | images/s |\n|---|---|\n| ig3d extract (files -> .npz) | {ex_rate:.1f} |\n"
              f"| anchor: the preset on decoded images | {an_rate:.1f} |\n"
              f"| extract / anchor | {ex_rate / an_rate:.2f}x |")
        print(json.dumps({"extract_images_per_s": round(ex_rate, 2), "anchor_images_per_s": round(an_rate, 2),
                          "extract_vs_anchor": round(ex_rate / an_rate, 3), "images": n, "batch": args.batch}))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
