"""``ig3d evaluate``: the Ig3D paper's metrics on a features file, for each branch and each fusion.

For the rows of one split (every row when the dataset had no split), with a head (a trained
:class:`ig3d.FusedHead`, or the preset's own):

* ``2d``: the 2D network alone (its raw scores, matched to the head's classes by name);
* ``3d``: the 3D head alone;
* ``late_fusion``: each of Ig3D's late-fusion modes, max / mean / min on raw scores, and weighted
  with the head's own weights when it has them (the paper's Tables 4, 5 and 7);
* ``fused``: what :class:`ig3d.Predictor` gives with this head (its own fusion, run by the fused
  kernel); its metrics are also the report's top level.

Metrics (:mod:`ig3d.metrics`): accuracy, F1 / precision / recall weighted and macro, the confusion
matrix; MSE / MAE / RMSE / PCC / CCC of valence and arousal on the rows that have them. A 2D
column that the head has no class for is left out; a head class the 2D network lacks never wins
the 2D branch's argmax and, in late fusion, keeps the 3D score (as the fused kernel does).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .fusion import FusedHead, fuse_scores
from .metrics import classification_metrics, va_metrics

__all__ = ["evaluate", "select_rows", "head_for", "format_report", "plot_confusion", "head_columns"]

PathLike = Union[str, "os.PathLike[str]"]
MODES = ("max", "mean", "min", "weighted")


def select_rows(features: Dict[str, np.ndarray], split: Optional[str], made_split: Optional[np.ndarray] = None
                ) -> Tuple[np.ndarray, str]:
    """Row indices of ``split`` and a description. A file with no splits: ``made_split`` (the split
    ``ig3d train`` made and recorded) if given, else every row."""
    sp = features["split"].astype(str)
    n = len(sp)
    if split in (None, "", "all"):
        return np.arange(n), "all rows"
    if not np.any(sp != ""):
        if made_split is not None:
            made = np.asarray(made_split).astype(str)
            if made.shape != (n,):
                raise ValueError(f"the recorded split has {made.shape[0]} rows, the features file {n}")
            rows = np.flatnonzero(made == split)
            return rows, f"split {split!r} made by `ig3d train` ({len(rows)} rows)"
        return np.arange(n), "all rows (the dataset has no splits)"
    rows = np.flatnonzero(sp == split)
    if rows.size == 0:
        have = sorted(set(sp.tolist()) - {""})
        raise ValueError(f"split {split!r} has no rows in this features file (it has: {', '.join(have)})")
    return rows, f"split {split!r} ({rows.size} rows)"


def head_for(features: Dict[str, np.ndarray], head: Union[None, PathLike, FusedHead]) -> FusedHead:
    """The head to evaluate: the given one, or the preset's own (default: the FACS prior; an Ig3D
    preset: ``$IG3D_HOME/weights/<preset>/head.npz``)."""
    if isinstance(head, FusedHead):
        h = head
    elif head is not None:
        h = FusedHead.load(head)
    else:
        preset = str(features.get("preset", "default"))
        if preset == "default":
            from .prior import default_head

            h = default_head()
        else:
            from .hub import weights_dir

            h = FusedHead.load(weights_dir() / preset / "head.npz")
    D = features["params3d"].shape[1]
    if h.input_dim != D:
        raise ValueError(f"head: it takes a {h.input_dim}-wide 3D vector, the features file has {D} "
                         f"({features.get('preset', '?')} preset)")
    return h


def _head_labels(h: FusedHead, class_names: Sequence[str]) -> List[str]:
    if h.labels:
        return list(h.labels)
    if h.num_classes == len(class_names):
        return list(class_names)
    return [f"class{i}" for i in range(h.num_classes)]


def head_columns(h: FusedHead, scores2d_names: Sequence[str], class_names: Sequence[str]) -> np.ndarray:
    """For each 2D column, the head output it corresponds to (by name), or -1."""
    labels = _head_labels(h, class_names)
    out = []
    for name in scores2d_names:
        if name in labels:
            out.append(labels.index(name))
        elif name in ("valence", "arousal") and h.va_index is not None:
            out.append(h.va_index + (name == "arousal"))
        else:
            out.append(-1)
    return np.array(out, np.int64)


def _late(s2d: np.ndarray, s3d_out: np.ndarray, cols: np.ndarray, mode: str, weights=None) -> np.ndarray:
    """Fuse the 2D columns into the 3D outputs they map to; the other outputs stay 3D-only."""
    fused = s3d_out.copy()
    use = np.flatnonzero(cols >= 0)
    if use.size:
        fused[:, cols[use]] = fuse_scores(np.ascontiguousarray(s2d[:, use]),
                                          np.ascontiguousarray(s3d_out[:, cols[use]]), mode, weights)
    return fused


def _metrics(out: np.ndarray, h: FusedHead, y: Optional[np.ndarray], va: Optional[np.ndarray]) -> dict:
    """Metrics of a [N, out_dim] output block (logits first, VA at va_index)."""
    m: dict = {}
    C = h.num_classes
    if C and y is not None:
        have = y >= 0
        if np.any(have):
            pred = np.argmax(out[have, :C], axis=1)
            m.update(classification_metrics(y[have], pred))
            cm = np.zeros((C, C), np.int64)
            np.add.at(cm, (y[have], pred), 1)
            m["confusion_matrix"] = cm.tolist()
    if h.va_index is not None and va is not None:
        have = np.all(np.isfinite(va), axis=1)
        pv = out[:, h.va_index:h.va_index + 2]
        if np.any(have) and np.all(np.isfinite(pv[have])):
            m.update(va_metrics(pv[have], va[have]))
    return m


def evaluate(features: Union[PathLike, Dict[str, np.ndarray]], head: Union[None, PathLike, FusedHead] = None, *,
             split: Optional[str] = "test", modes: Sequence[str] = MODES,
             made_split: Optional[np.ndarray] = None) -> dict:
    """The paper's metrics for the 2D branch, the 3D head, each late-fusion mode and the head's own
    fusion, on one split (see the module docstring). Returns a JSON-able dict: the fused output's
    metrics at the top level (``accuracy``, ``valence_ccc``, ...), ``branches`` with a section per
    branch and mode, and ``class_names``, ``rows``, ``head``."""
    from .extract import load_features

    f = load_features(features) if not isinstance(features, dict) else features
    h = head_for(f, head)
    rows, rows_text = select_rows(f, split, made_split)
    if rows.size == 0:
        raise ValueError(f"no rows to evaluate ({rows_text})")
    class_names = [str(c) for c in f["class_names"]]
    labels = _head_labels(h, class_names)
    params = np.ascontiguousarray(f["params3d"][rows], np.float32)
    s2d = np.ascontiguousarray(f["scores2d"][rows], np.float32)
    names2d = [str(s) for s in f["scores2d_names"]]
    feats = f["features2d"][rows].astype(np.float32) if "features2d" in f else None

    y = None
    if "labels" in f and h.num_classes:
        lab = f["labels"][rows]
        y = np.full(len(rows), -1, np.int64)
        for i, name in enumerate(class_names):
            if np.any(lab == i):
                if name not in labels:
                    raise ValueError(f"the dataset has class {name!r}, which the head ({', '.join(labels)}) "
                                     f"cannot predict")
                y[lab == i] = labels.index(name)
    va = f["va"][rows].astype(np.float64) if "va" in f else None

    cols = head_columns(h, names2d, class_names)
    branches: Dict[str, dict] = {}
    intermediate = h.concat_at is not None
    # 2D alone: its columns in the head's output layout; classes it lacks never win
    out2d = np.full((len(rows), h.out_dim), -np.inf, np.float32)
    use = np.flatnonzero(cols >= 0)
    out2d[:, cols[use]] = s2d[:, use]
    if h.va_index is not None and not {"valence", "arousal"} <= set(names2d):
        out2d[:, h.va_index:h.va_index + 2] = np.nan
    has_classes2d = bool(np.any((cols >= 0) & (cols < h.num_classes)))
    branches["2d"] = _metrics(out2d, h, y if has_classes2d else None, va)
    if not intermediate:
        out3d = h(params).out3d
        branches["3d"] = _metrics(out3d, h, y, va)
        late = {}
        for mode in modes:
            if mode == "weighted":
                if h.fusion != "weighted":
                    continue
                fused = out3d.copy()
                for k in use:  # the head's own per-column weights
                    fused[:, cols[k]] = h.w2d[k] * s2d[:, k] + h.w3d[k] * out3d[:, cols[k]]
            else:
                fused = _late(s2d, out3d, cols, mode)
            late[mode] = _metrics(fused, h, y, va)
        branches["late_fusion"] = late
    own = h(params, s2d if h.scores2d_dim else None, feats if h.features2d_dim else None)
    if h.scores2d_dim and h.scores2d_dim != s2d.shape[1]:
        raise ValueError(f"head: it late-fuses {h.scores2d_dim} 2D scores, the features file has {s2d.shape[1]}")
    fused_out = np.array(own.out3d, copy=True)
    fused_out[:, :h.num_classes] = own.logits
    if own.va is not None:
        fused_out[:, h.va_index:h.va_index + 2] = own.va
    branches["fused"] = _metrics(fused_out, h, y, va)
    report = {k: v for k, v in branches["fused"].items()}
    report.update({
        "rows": int(rows.size), "selection": rows_text, "class_names": labels,
        "head": h.name or "unnamed", "fusion": h.fusion if not intermediate else "intermediate",
        "fusion_weights": ([float(np.mean(h.w2d)), float(np.mean(h.w3d))] if h.fusion == "weighted" else None),
        "preset": str(f.get("preset", "")), "branches": branches,
    })
    return report


_COLUMNS = [("accuracy", "acc"), ("f1_weighted", "F1 w"), ("f1_macro", "F1 m"), ("precision_weighted", "P w"),
            ("recall_weighted", "R w"), ("valence_rmse", "V RMSE"), ("arousal_rmse", "A RMSE"),
            ("valence_pcc", "V PCC"), ("arousal_pcc", "A PCC"), ("valence_ccc", "V CCC"), ("arousal_ccc", "A CCC")]


def format_report(report: dict) -> str:
    """A plain-text table: one line per branch and fusion mode."""
    lines = [f"{report['preset'] or 'features'}: {report['selection']}, head {report['head']} "
             f"(fusion: {report['fusion']}{'' if not report['fusion_weights'] else ' %.2f/%.2f' % tuple(report['fusion_weights'])})"]
    b = report["branches"]
    entries = [("2D alone", b["2d"])]
    if "3d" in b:
        entries.append(("3D alone", b["3d"]))
    for mode, m in b.get("late_fusion", {}).items():
        entries.append((f"late {mode}", m))
    entries.append(("fused (head)", b["fused"]))
    cols = [(k, t) for k, t in _COLUMNS if any(k in m for _, m in entries)]
    lines.append(f"{'':<14}" + "".join(f"{t:>8}" for _, t in cols))
    for name, m in entries:
        lines.append(f"{name:<14}" + "".join(f"{m[k]:8.4f}" if k in m else f"{'-':>8}" for k, _ in cols))
    return "\n".join(lines)


def plot_confusion(cm: Sequence[Sequence[int]], labels: Sequence[str], path: PathLike, title: str = "") -> None:
    """A confusion matrix as a PNG: rows the true class, columns the predicted one; each cell's
    colour is its share of the row, and it shows the count."""
    from PIL import Image, ImageDraw

    cm = np.asarray(cm, np.int64)
    C = len(labels)
    cell, left, top = 64, 110, 60
    img = Image.new("RGB", (left + C * cell + 20, top + C * cell + 90), "white")
    d = ImageDraw.Draw(img)
    d.text((10, 10), title or "confusion matrix (rows: true, columns: predicted)", fill="black")
    rows = cm.sum(1, keepdims=True)
    share = np.divide(cm, rows, out=np.zeros(cm.shape, np.float64), where=rows > 0)
    for i in range(C):
        d.text((10, top + i * cell + cell // 2 - 6), labels[i][:14], fill="black")
        d.text((left + i * cell + 4, top + C * cell + 8 + 14 * (i % 2)), labels[i][:10], fill="black")
        for j in range(C):
            v = share[i, j]
            colour = (int(255 - 200 * v), int(255 - 140 * v), 255)
            x0, y0 = left + j * cell, top + i * cell
            d.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour, outline=(200, 200, 200))
            d.text((x0 + 6, y0 + cell // 2 - 12), str(int(cm[i, j])), fill="black" if v < 0.6 else "white")
            d.text((x0 + 6, y0 + cell // 2 + 2), f"{100 * v:.0f}%", fill="black" if v < 0.6 else "white")
    img.save(os.fspath(path))
