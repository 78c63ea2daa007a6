"""The default preset's small-face search on large photos: the scan (one full-range run over the
whole image at the scale where a ``min_face_size`` face spans 16 detector pixels, then a zoomed
look at each uncertain candidate) against the previous overlapping-tile search, which the preset
keeps reachable for this comparison only (``DefaultPipeline._small_faces = "tiles"``).

Workloads (the detection step, ``DefaultPipeline.detect``, which is where the two differ; the
landmark step that follows is the same for both):

* ``mountain``: the shared 1920x1080 landscape with no face;
* ``one_40px``: the same landscape with one 40-px face (a downscaled crop of the bundled
  astronaut photo) pasted in;
* ``astronaut``: the 512x512 demo photo, which neither search touches (a control).

Rounds are interleaved (scan, tiles, scan, tiles, ...) and each figure is the median over
rounds; the spread is the min-max over rounds. Run::

    python benchmarks/small_faces.py [--rounds 15] [--threads N]
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np


def _photo(path: Path) -> np.ndarray:
    from PIL import Image
    return np.asarray(Image.open(path).convert("RGB"))


def workloads(faces_dir: Path):
    from PIL import Image

    from ig3d.presets import asset_path

    astro = _photo(Path(asset_path("astronaut.png")))
    out = {"astronaut": astro}
    mountain = faces_dir / "free-mountain-vector-01.jpg"
    if mountain.is_file():
        bg = _photo(mountain)
        out["mountain"] = bg
        # the astronaut's face is about 95 px wide around (225, 125): a 2x-context crop scaled to 40 px
        crop = Image.fromarray(astro).crop((130, 30, 320, 220)).resize((80, 80), Image.LANCZOS)
        one = bg.copy()
        one[500:580, 1300:1380] = np.asarray(crop)
        out["one_40px"] = one
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--threads", type=int, default=None, help="CPU threads (default: all usable cores)")
    ap.add_argument("--faces-dir", type=Path,
                    default=Path(os.environ.get("IG3D_FACES_DIR", Path(__file__).resolve().parents[2] / "shared"
                                                / "data" / "faces")))
    args = ap.parse_args(argv)

    from ig3d.presets import DefaultPipeline

    pipes = {}
    for name in ("scan", "tiles"):
        p = DefaultPipeline(backend="onnxruntime", device="cpu", threads=args.threads)
        p._small_faces = name
        pipes[name] = p
    images = workloads(args.faces_dir)
    if "mountain" not in images:
        print(f"note: {args.faces_dir} has no free-mountain-vector-01.jpg; only the control runs")
    print(f"{'workload':>10} {'size':>10} {'scan ms':>16} {'tiles ms':>16} {'tiles/scan':>10} {'faces s/t':>9}")
    for wname, im in images.items():
        ts = {k: [] for k in pipes}
        found = {k: len(p.detect([im])[0][0]) for k, p in pipes.items()}  # warm-up
        for _ in range(args.rounds):
            for k, p in pipes.items():
                t = time.perf_counter()
                p.detect([im])
                ts[k].append(time.perf_counter() - t)
        med = {k: np.median(v) * 1e3 for k, v in ts.items()}
        spr = {k: f"{med[k]:.1f} ({min(v) * 1e3:.0f}-{max(v) * 1e3:.0f})" for k, v in ts.items()}
        print(f"{wname:>10} {im.shape[1]}x{im.shape[0]:<5} {spr['scan']:>16} {spr['tiles']:>16} "
              f"{med['tiles'] / med['scan']:>9.2f}x {found['scan']:>4}/{found['tiles']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
