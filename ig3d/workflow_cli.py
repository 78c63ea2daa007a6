"""The Ig3D method as commands: ``ig3d extract``, ``ig3d train``, ``ig3d fit-fusion``, ``ig3d evaluate``.

    ig3d extract DATASET -o features.npz [--preset P] [--aligned] [--batch N] [--shard K/N]
    ig3d extract --merge shard1.npz shard2.npz ... -o features.npz
    ig3d train features.npz -o head.npz [--head mlp4|residual|linear] [--params all|short|full|NAMES]
               [--task classification|va|classification+va] [--epochs N] [--seed S]
    ig3d fit-fusion features.npz --head head.npz [--split val]
    ig3d evaluate features.npz [--head head.npz] [--split test] [--json] [--plot cm.png]

The same steps in Python: :func:`ig3d.extract.extract`, :func:`ig3d.train.train_head`,
:func:`ig3d.train.fit_late_fusion` (with :func:`refuse_head`), :func:`ig3d.evaluate.evaluate`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Optional, Tuple

import numpy as np

__all__ = ["add_parsers", "refuse_head", "fit_fusion"]


def _log_beside(head_path) -> Optional[dict]:
    """The training log ``ig3d train`` wrote beside a head (``head.json``), if any."""
    if head_path is None:
        return None
    p = Path(os.path.splitext(os.fspath(head_path))[0] + ".json")
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except ValueError:
        return None


def _made_split(features, head_path) -> Optional[np.ndarray]:
    """The split ``ig3d train`` used for a file with no splits of its own (recorded in its log)."""
    log = _log_beside(head_path)
    if log is None or "split" not in log or log["split"].get("source") == "file":
        return None
    if str(features.get("fingerprint", "")) and log.get("features_fingerprint") not in (
            None, str(features.get("fingerprint", ""))):
        return None
    from .train import split_from_log

    return split_from_log(features, log)


def refuse_head(head, mode: str, weights, scores2d_names, class_names, preset: str = "",
                va_weights=None):
    """A copy of ``head`` that late-fuses the 2D scores named ``scores2d_names`` in ``mode`` (with
    ``weights`` = (w2d, w3d) for "weighted"; ``va_weights`` for the valence/arousal columns when
    they differ). The 2D columns are matched to the head's outputs by name. CAGE's 10 outputs may
    be fused in part (its 8 logits, or its valence and arousal), as the Ig3D presets feed them."""
    from .evaluate import head_columns
    from .fusion import FusedHead

    cols = head_columns(head, scores2d_names, class_names)
    used = np.flatnonzero(cols >= 0)
    if used.size == 0:
        raise ValueError(f"no 2D column ({', '.join(scores2d_names)}) matches an output of the head")
    if used.size != len(cols):
        cage = preset.endswith("-cage") and len(cols) == 10
        if not (cage and (used.tolist() == list(range(8)) or used.tolist() == [8, 9])):
            missing = [scores2d_names[i] for i in np.flatnonzero(cols < 0)]
            raise ValueError(f"the 2D network's {', '.join(missing)} has no output in this head "
                             f"({', '.join(head.labels or [])}): train the head on the same classes "
                             f"(e.g. 8 AffectNet classes for an 8-class 2D network)")
    k = used.size
    w = None
    if mode == "weighted":
        w2d = np.full(k, weights[0], np.float32)
        w3d = np.full(k, weights[1], np.float32)
        if va_weights is not None:
            is_va = np.isin(np.asarray(scores2d_names)[used], ["valence", "arousal"])
            w2d[is_va], w3d[is_va] = va_weights
        w = (w2d, w3d)
    return FusedHead(head.layers, input_dim=head.input_dim, select=head.select, mean=head.mean, std=head.std,
                     num_classes=head.num_classes, va_index=head.va_index, concat_at=head.concat_at,
                     concat_order=head.concat_order, features2d_dim=head.features2d_dim, fusion=mode,
                     scores2d_dim=k, fusion_map=cols[used], fusion_weights=w, labels=head.labels,
                     precision=head.precision, name=head.name)


def fit_fusion(features, head, *, split: str = "val", step: float = 0.01, made_split=None):
    """Choose the late fusion of ``head`` with the features file's 2D scores on ``split`` and return
    ``(fused_head, {"classification": fit, "va": fit})`` (:func:`ig3d.train.fit_late_fusion`).

    A head with classes is fitted on accuracy; its valence/arousal columns, when the 2D network has
    them too, take the same mode (and, for "weighted", their own weights fitted on the mean CCC).
    A valence/arousal-only head is fitted on the mean CCC."""
    from .evaluate import _head_labels, head_columns, select_rows
    from .extract import load_features
    from .fusion import FusedHead
    from .fusion_fit import fit_late_fusion

    f = load_features(features) if not isinstance(features, dict) else features
    h = head if isinstance(head, FusedHead) else FusedHead.load(head)
    if h.concat_at is not None:
        raise ValueError("fit-fusion: this head fuses by intermediate fusion (the 2D feature), not late fusion")
    rows, _ = select_rows(f, split, made_split)
    class_names = [str(c) for c in f["class_names"]]
    names2d = [str(s) for s in f["scores2d_names"]]
    cols = head_columns(h, names2d, class_names)
    s2d = f["scores2d"][rows].astype(np.float32)
    out3d = h(np.ascontiguousarray(f["params3d"][rows], np.float32)).out3d
    fits = {}
    C = h.num_classes
    cls_cols = np.flatnonzero((cols >= 0) & (cols < C))
    if C and cls_cols.size and "labels" in f:
        labels = _head_labels(h, class_names)
        lab = f["labels"][rows]
        y = np.array([labels.index(class_names[v]) if v >= 0 and class_names[v] in labels else -1 for v in lab])
        have = y >= 0
        if not np.any(have):
            raise ValueError(f"fit-fusion: no labelled rows in split {split!r}")
        # the head's class outputs, with the 2D scores in the same columns (3D-only classes as 3D)
        a3 = out3d[have][:, :C]
        a2 = a3.copy()
        a2[:, cols[cls_cols]] = s2d[have][:, cls_cols]
        fits["classification"] = fit_late_fusion(a2, a3, y[have], "classification", step=step)
    va_cols = [names2d.index(n) for n in ("valence", "arousal") if n in names2d]
    if h.va_index is not None and len(va_cols) == 2 and "va" in f:
        va = f["va"][rows]
        have = np.all(np.isfinite(va), axis=1)
        if np.any(have):
            p2, p3 = s2d[have][:, va_cols], out3d[have][:, h.va_index:h.va_index + 2]
            modes = ("max", "mean", "min", "weighted")
            if "classification" in fits:
                modes = (fits["classification"].mode,)
            fits["va"] = fit_late_fusion(p2, p3, va[have], "va", modes=modes, step=step)
    if not fits:
        raise ValueError(f"fit-fusion: split {split!r} has no rows with targets that the head and the 2D "
                         f"network both predict")
    main = fits.get("classification") or fits["va"]
    va_w = fits["va"].weights if "va" in fits and "classification" in fits else None
    fused = refuse_head(h, main.mode, main.weights, names2d, class_names, str(f.get("preset", "")), va_w)
    return fused, fits


# ---------------------------------------------------------------------------------------------


def _cmd_extract(args: argparse.Namespace) -> int:
    from .extract import extract, merge, parse_shard

    if args.merge:
        out = merge(args.merge, args.output)
        print(f"merged {len(args.merge)} shards into {out}")
        return 0
    if not args.dataset:
        raise ValueError("give a DATASET (folder or file), or --merge SHARD.npz ...")
    from .datasets import open_dataset

    classes = None if args.classes is None else (int(args.classes) if args.classes.isdigit()
                                                 else [c.strip() for c in args.classes.split(",")])
    ds = open_dataset(args.dataset, kind=args.kind, classes=classes)
    print(ds.summary(), file=sys.stderr)
    for e in ds.errors[:10]:
        print(f"  bad row: {e.source}, row {e.row}: {e.reason}", file=sys.stderr)
    if len(ds.errors) > 10:
        print(f"  ... {len(ds.errors) - 10} more bad rows (all listed in the output's failed_paths)", file=sys.stderr)
    out = extract(ds, args.output, preset=args.preset, aligned=args.aligned, batch=args.batch,
                  shard=parse_shard(args.shard) if args.shard else None, threads=args.threads,
                  backend=args.backend, device=args.device, precision=args.precision)
    with np.load(out, allow_pickle=False) as z:
        n, nf = len(z["params3d"]), len(z["failed_paths"])
        reasons = {}
        for r in z["failed_reasons"].tolist():
            key = "no face found" if r == "no face found" else ("unreadable image" if r.startswith("unreadable")
                                                                 else "bad dataset row")
            reasons[key] = reasons.get(key, 0) + 1
    detail = ", ".join(f"{v} {k}" for k, v in reasons.items())
    print(f"{out}: {n} images with a face; {nf} failed{' (' + detail + ')' if detail else ''}")
    return 0


def _cmd_train(args: argparse.Namespace) -> int:
    from .train import train_head

    def progress(epoch, entry):
        shown = {k: v for k, v in entry.items() if isinstance(v, (int, float)) and k != "epoch"}
        print(f"epoch {epoch}: " + " ".join(f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}"
                                            for k, v in shown.items()), file=sys.stderr, flush=True)

    params = args.params if args.params in ("all", "short", "full") else [p.strip() for p in args.params.split(",")]
    res = train_head(args.features, head=args.head, params=params, task=args.task, epochs=args.epochs,
                     batch_size=args.batch_size, seed=args.seed, base_lr=args.lr[0], max_lr=args.lr[1],
                     progress=progress, device=args.device)
    from .extract import load_features

    res.log["features_fingerprint"] = str(load_features(args.features).get("fingerprint", ""))
    log_path = args.log or os.path.splitext(args.output)[0] + ".json"
    res.save(args.output, log_path)
    best = res.log.get("best_epoch")
    print(f"head written to {args.output} (epoch {best} selected on the val split); log: {log_path}")
    return 0


def _cmd_fit_fusion(args: argparse.Namespace) -> int:
    from .extract import load_features

    f = load_features(args.features)
    fused, fits = fit_fusion(f, args.head, split=args.split, step=args.step,
                             made_split=_made_split(f, args.head))
    for task, fit in fits.items():
        what = "accuracy" if task == "classification" else "mean VA CCC"
        print(f"{task} ({what} on {args.split}):")
        for mode, row in fit.table.items():
            w = "" if row["weights"] is None else f" w2d={row['weights'][0]:.2f} w3d={row['weights'][1]:.2f}"
            print(f"  {mode:<9} {row['score']:.4f}{w}{'  <- chosen' if mode == fit.mode else ''}")
    out = args.output or args.head
    fused.save(out)
    print(f"fusion written into {out}: {fused.fusion}"
          + (f" {float(fused.w2d[0]):.2f} * 2D + {float(fused.w3d[0]):.2f} * 3D" if fused.fusion == "weighted" else ""))
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import evaluate, format_report, plot_confusion
    from .extract import load_features

    f = load_features(args.features)
    report = evaluate(f, args.head, split=args.split, made_split=_made_split(f, args.head))
    if args.json:
        print(json.dumps(report))
    else:
        print(format_report(report))
    if args.plot:
        cm = report.get("confusion_matrix")
        if cm is None:
            raise ValueError("--plot: no confusion matrix (the head or the dataset has no classes)")
        plot_confusion(cm, report["class_names"], args.plot,
                       f"{report['preset']} {report['head']} ({report['selection']}): accuracy "
                       f"{report['accuracy']:.4f}")
        if not args.json:
            print(f"confusion matrix written to {args.plot}")
    return 0


def add_parsers(sub: "argparse._SubParsersAction") -> None:
    """Add the workflow subcommands to the ``ig3d`` parser."""
    p = sub.add_parser("extract", help="run a preset over a labelled dataset and save its features (.npz)",
                       description="Run a preset over every image of a labelled dataset (ImageFolder, CSV, "
                                   "AffectNet, RAF-DB, FER2013) and save, per image, its 3D vector, the 2D "
                                   "network's scores and the targets. Resumable: run it again to continue.")
    p.add_argument("dataset", nargs="?", help="dataset folder or file (see ig3d.datasets)")
    p.add_argument("-o", "--output", required=True, help="features file to write (.npz)")
    p.add_argument("--preset", default="default", help="default, or an Ig3D preset (ig3d-smirk-ddamfn, ...)")
    p.add_argument("--aligned", action="store_true", help="the images are pre-aligned face crops: no detection")
    p.add_argument("--batch", type=int, default=16, help="images per call of the preset (default 16)")
    p.add_argument("--shard", metavar="K/N", help="process only the K-th of N equal parts of the rows")
    p.add_argument("--merge", nargs="+", metavar="SHARD.npz", help="join the N shard files into -o")
    p.add_argument("--kind", default="auto", choices=["auto", "imagefolder", "csv", "affectnet", "rafdb", "fer2013"],
                   help="dataset layout (default: detected)")
    p.add_argument("--classes", help="7 or 8 (AffectNet without / with contempt), or class names a,b,c for "
                                     "an ImageFolder of other classes")
    p.add_argument("--threads", type=int, help="CPU worker threads (default: all cores)")
    from .engines import BACKENDS, PRECISIONS

    p.add_argument("--backend", default="auto", choices=list(BACKENDS), help="runtime for the networks")
    p.add_argument("--precision", default="fp32", choices=list(PRECISIONS),
                   help="bf16: the networks that pass ig3d's accuracy gates run in bf16 (AMX / AVX512-BF16 CPUs)")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"], help="device for the networks")
    p.set_defaults(func=_cmd_extract)

    p = sub.add_parser("train", help="train a 3D head on a features file (Ig3D's recipe; needs ig3d[train])",
                       description="Train a 3D head on the train split of a features file with Ig3D's recipe "
                                   "(AdamW, CyclicLR, CE + random a*MSE + b*(1-PCC) + c*(1-CCC), feature "
                                   "masking); the epoch is selected on the val split.")
    p.add_argument("features", help="features file from `ig3d extract`")
    p.add_argument("-o", "--output", required=True, help="head file to write (.npz); its log goes beside it (.json)")
    p.add_argument("--head", default="mlp4", choices=["mlp4", "residual", "linear"], help="head architecture")
    p.add_argument("--params", default="all", help="all, short, full, or comma-separated parameter or segment names")
    p.add_argument("--task", default="classification", choices=["classification", "va", "classification+va"],
                   help="what the head predicts")
    p.add_argument("--epochs", type=int, help="epochs (default per head)")
    p.add_argument("--batch-size", type=int, help="batch size (default per head)")
    p.add_argument("--seed", type=int, default=0, help="seed (same seed, same head)")
    p.add_argument("--lr", type=float, nargs=2, metavar=("MIN", "MAX"), default=(1e-6, 1e-4),
                   help="CyclicLR bounds (Ig3D: 1e-6 1e-4; a linear head on little data needs a larger MAX)")
    p.add_argument("--device", default="cpu", help="torch device (cpu, cuda, cuda:1)")
    p.add_argument("--log", help="where to write the JSON training log (default: beside the head)")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("fit-fusion", help="choose the late fusion of a head with the 2D network on validation data",
                       description="Try max, mean, min and weighted fusion (w2d on a grid, w3d = 1 - w2d) on a "
                                   "split and write the best into the head file.")
    p.add_argument("features", help="features file from `ig3d extract`")
    p.add_argument("--head", required=True, help="head file from `ig3d train`")
    p.add_argument("--split", default="val", help="split to choose on (default val)")
    p.add_argument("--step", type=float, default=0.01, help="grid step of w2d (default 0.01)")
    p.add_argument("-o", "--output", help="write the fused head here instead of over --head")
    p.set_defaults(func=_cmd_fit_fusion)

    p = sub.add_parser("evaluate", help="the paper's metrics for the 2D branch, the 3D head and each fusion",
                       description="Accuracy, F1/precision/recall (weighted, macro), and MSE/MAE/RMSE/PCC/CCC "
                                   "of valence and arousal, for the 2D network alone, the 3D head alone, each "
                                   "late-fusion mode and the head's own fusion.")
    p.add_argument("features", help="features file from `ig3d extract`")
    p.add_argument("--head", help="head file (default: the preset's own head)")
    p.add_argument("--split", default="test", help="split to evaluate (default test; 'all' for every row)")
    p.add_argument("--json", action="store_true", help="print JSON (the fused output's metrics at top level)")
    p.add_argument("--plot", metavar="CM.png", help="write the fused output's confusion matrix as a PNG")
    p.set_defaults(func=_cmd_evaluate)
