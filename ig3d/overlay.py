"""Drawing results on an image: a box, the landmarks and a labelled score bar per face."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from .results import FaceResult

__all__ = ["draw_overlay"]

# one colour per label (neutral, happy, sad, surprise, fear, disgust, anger), readable on photos
_COLOURS = {
    "neutral": (200, 200, 200), "happy": (255, 210, 0), "sad": (70, 130, 255), "surprise": (255, 120, 220),
    "fear": (170, 90, 255), "disgust": (60, 200, 90), "anger": (255, 60, 40),
}


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 scales its built-in font
    except TypeError:  # pragma: no cover - older Pillow
        return ImageFont.load_default()


def _overlap(a, b) -> float:
    return max(0.0, min(a[2], b[2]) - max(a[0], b[0])) * max(0.0, min(a[3], b[3]) - max(a[1], b[1]))


def _place(w, h, box, boxes, title, W, H):
    """Top-left corner for a w x h panel: beside ``box`` (right, left, below, above) or in an
    image corner, wherever it covers the least face area (and never, if avoidable, the title)."""
    x0, y0, x1, y1 = box
    gap = 6
    candidates = [(x1 + gap, y0), (x0 - gap - w, y0), (x0, y1 + gap), (x0, title[1] - gap - h),
                  (0, 0), (W - w, 0), (0, H - h), (W - w, H - h)]
    best, best_cost = None, None
    for cx, cy in candidates:
        cx, cy = min(max(0.0, cx), max(0.0, W - w)), min(max(0.0, cy), max(0.0, H - h))
        panel = (cx, cy, cx + w, cy + h)
        cost = sum(_overlap(panel, b) for b in boxes) + 10 * _overlap(panel, title)
        if best is None or cost < best_cost:
            best, best_cost = (cx, cy), cost
        if cost == 0:
            break
    return best


def draw_overlay(image: np.ndarray, faces: Sequence[FaceResult]):
    """Return a PIL image: ``image`` (RGB uint8) with, per face, its box and landmarks in the
    colour of its label, the label with its probability and valence/arousal above the box, and a
    bar per class beside it (the fused probabilities)."""
    from PIL import Image, ImageDraw

    img = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
    draw = ImageDraw.Draw(img, "RGBA")
    H, W = img.height, img.width

    boxes = [tuple(float(v) for v in f.box) for f in faces]
    for face in faces:
        colour = _COLOURS.get(face.label, (255, 255, 255))
        x0, y0, x1, y1 = (float(v) for v in face.box)
        fw = max(x1 - x0, 1.0)
        line = max(2, int(round(fw / 60)))
        draw.rectangle([x0, y0, x1, y1], outline=colour + (255,), width=line)
        r = max(0.8, fw / 220)
        for x, y in face.landmarks[:, :2]:
            draw.ellipse([x - r, y - r, x + r, y + r], fill=(0, 255, 255, 110))
        fsize = int(max(11, min(28, fw / 7)))
        font = _font(fsize)
        title = f"{face.label} {face.scores[face.label]:.2f}  V{face.valence:+.2f} A{face.arousal:+.2f}"
        tb = draw.textbbox((0, 0), title, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y0 - th - 2 * line - 4 if y0 - th - 2 * line - 4 >= 0 else y1 + 4
        draw.rectangle([x0, ty, x0 + tw + 8, ty + th + 6], fill=(0, 0, 0, 170))
        draw.text((x0 + 4, ty + 1), title, fill=colour + (255,), font=font)

        # score bars, where they hide the fewest faces (right, left, below, above the box)
        bfont = _font(max(10, int(fsize * 0.6)))
        names = list(face.scores)
        row = max(11, int(fsize * 0.7))
        bar_w = max(50, int(fw * 0.45))
        label_w = max(draw.textbbox((0, 0), n, font=bfont)[2] for n in names) + 6
        panel_w, panel_h = label_w + bar_w + 8, row * len(names) + 4
        title_box = (x0, ty, x0 + tw + 8, ty + th + 6)
        bx, by = _place(panel_w, panel_h, (x0, y0, x1, y1), boxes, title_box, W, H)
        draw.rectangle([bx, by, bx + panel_w, by + panel_h], fill=(0, 0, 0, 150))
        for i, n in enumerate(names):
            yy = by + 2 + i * row
            draw.text((bx + 3, yy), n, fill=(255, 255, 255, 255), font=bfont)
            p = float(face.scores[n])
            draw.rectangle([bx + label_w, yy + 2, bx + label_w + bar_w * p, yy + row - 3],
                           fill=_COLOURS.get(n, (255, 255, 255)) + (230,))
    return img
