"""Train an Ig3D 3D head on extracted features, with Ig3D's recipe, and write it as a :class:`FusedHead`.

The workflow is ``ig3d extract`` (a features ``.npz``) -> :func:`train_head` -> ``ig3d fit-fusion`` ->
``ig3d evaluate``. No Ig3D weights were ever published (docs REFERENCE 1), so ig3d trains its own heads;
this module reproduces the training of the upstream scripts (dongludeeplearning/Ig3D:
models/classification/nofusion/Affectnet_Emoca_S_train.py, Affectnet_Smirk_S_train.py,
models/classification/intermediatefusion/Affectnet_Emoca_intermediate_fusion_train.py,
models/classification/nofusion/RAFDB_Emoca_S_train.py, models/VA/nofusion/nofusion_emoca_VA_train.py):

* Loss ``CE + a * MSE + b * (1 - PCC) + c * (1 - CCC)`` (:func:`ig3d_loss`): MSE is the sum of the
  valence and arousal MSEs, PCC and CCC the means of their valence and arousal values over the batch.
  Each step draws ``a, b, c`` uniformly in [0, 1) and divides them by their sum (upstream
  ``alpha, beta, gamma = np.random.rand(3)`` and ``alpha / (alpha + beta + gamma)``).
* AdamW (weight decay 0.01, torch's default, as the AffectNet scripts; the RAF-DB scripts use 1e-5) under
  ``CyclicLR(base_lr=1e-6, max_lr=1e-4, mode="triangular", cycle_momentum=False)`` stepped once per
  batch. The CyclicLR sets the rate from the first step, so upstream's ``lr=5e-5`` has no effect.
  ``step_size_up`` is half an epoch's batches: ``len(train_loader) // 2`` in the RAF-DB scripts, 2241
  on AffectNet at batch 64 (4482 batches per epoch, models/VA/nofusion/nofusion_emoca_VA_train.py).
* Class-balanced sampling for the classification tasks: each epoch draws as many rows as the train set
  has, with replacement, row weight 1 / (count of its class) (upstream ``ImbalancedDatasetSampler``).
* Batch size, epochs and masking per head (:data:`RECIPES`): MLP4 batch 64, 100 epochs, no masking
  (the AffectNet EMOCA/SMIRK nofusion scripts); the residual head batch 256, 80 epochs, ``mask_prob``
  0.1 (Affectnet_Smirk_S_train.py). RAF-DB used batch 32 and 200 epochs.
* Feature masking (training only): for each row and each segment of the 3D vector (``exp``, ``pose``,
  ... as the file's ``param_segments``), with probability ``mask_prob`` a uniformly random number
  k in 1..n of its n entries is drawn and k distinct entries, chosen uniformly, are set to zero
  (upstream ``_mask_features``: ``random.randint(1, n)`` then ``random.sample``). Zero means the raw
  value 0, as upstream masks the raw parameters; here it is applied after standardisation as
  ``(0 - mean) / std``.
* Model selection on the validation rows: best accuracy (classification, as upstream), best mean of
  the valence and arousal CCC ("va"), best ``(accuracy + mean CCC) / 2`` ("classification+va").

Deliberate differences from upstream (REFERENCE 1.8 lists the upstream bugs):

* CCC is Lin's coefficient, ``2 cov / (var_t + var_p + (mean_t - mean_p)^2)`` with population
  variances (as :func:`ig3d.metrics.ccc`); upstream's loss multiplies the two *variances* by the PCC
  where the standard deviations belong.
* Upstream's ``Affectnet_Emoca_S_train.py`` weights the CE by 2 and calls ``scheduler.step(ce_loss)``
  after validation (which moves the cyclic schedule to an arbitrary position); the other scripts do
  neither, and neither does ig3d. The validation rows are never masked (upstream masks them unless
  ``--no_mask_in_val``).
* The 3D features are standardised with the train split's mean and std (Ig3D feeds raw values). The
  mean and std go into the fused head (``select``, ``mean``, ``std``), so a predictor still feeds the raw
  vector.
* Rows without a class label (-1) or without VA (NaN) are masked out of the terms they cannot feed,
  instead of failing; a task's rows are those that have its targets.
* Upstream's VA-only head (``EmocaFER``) was fine-tuned with a fixed ``3 MSE + (1 - CCC)`` per dimension
  at another learning-rate range (1e-5..5e-4, 20 epochs), and the residual head's script used plain
  ``CE + MSE_V + MSE_A``; ig3d trains every head and task with the loss above.

torch is imported inside the functions: ``import ig3d.train`` works without it, and the functions that
need it raise ``ImportError`` saying ``pip install "ig3d[train]"``.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

from . import metrics as _metrics
from .fusion import FusedHead, Layer
from .fusion_fit import LateFusionFit, fit_late_fusion  # the workflow's next step, importable from here too

__all__ = [
    "HEADS",
    "TASKS",
    "RECIPES",
    "SPLITS",
    "TrainResult",
    "load_features",
    "validate_features",
    "param_selection",
    "make_splits",
    "split_from_log",
    "ig3d_loss",
    "train_head",
    "fit_late_fusion",
    "LateFusionFit",
]

PathLike = Union[str, "os.PathLike[str]"]

#: Head types :func:`train_head` builds: Ig3D's MLP4 (:class:`ig3d.models.ig3d_heads.MLP4`), its residual
#: head (:class:`ig3d.models.ig3d_heads.ResidualHead`) and one Linear layer (a quick baseline).
HEADS: Tuple[str, ...] = ("mlp4", "residual", "linear")
#: Tasks: the class logits, valence/arousal, or both (C logits, then V at C and A at C + 1).
TASKS: Tuple[str, ...] = ("classification", "va", "classification+va")
#: Split names a features file may hold per row ("" = no split).
SPLITS: Tuple[str, ...] = ("train", "val", "test", "")

#: Ig3D's per-head settings (the defaults of :func:`train_head`). MLP4 and the linear baseline: the
#: AffectNet nofusion scripts (Affectnet_{Emoca,Smirk}_{S,F}_train.py: batch 64, 100 epochs,
#: ``mask_prob`` 0); the residual head: Affectnet_Smirk_S_train.py (batch 256, 80 epochs, 0.1).
RECIPES: Dict[str, Dict[str, Any]] = {
    "mlp4": dict(batch_size=64, epochs=100, mask_prob=0.0),
    "residual": dict(batch_size=256, epochs=80, mask_prob=0.1),
    "linear": dict(batch_size=64, epochs=100, mask_prob=0.0),
}

_STR_KEYS = ("param_names", "param_segments", "scores2d_names", "class_names", "split", "paths", "failed_paths",
             "failed_reasons")
_EVAL_CHUNK = 4096


def _torch():
    try:
        import torch
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError('ig3d.train needs torch: pip install "ig3d[train]"') from e
    return torch


# ---------------------------------------------------------------------------------------------
# The features file.


def _strings(arr: np.ndarray, key: str, source: str) -> np.ndarray:
    if arr.dtype.kind == "S":
        arr = np.char.decode(arr, "utf-8")
    if arr.dtype.kind != "U":
        raise ValueError(f"{source}: {key!r} must hold strings, got dtype {arr.dtype}")
    return arr


def validate_features(features: Mapping[str, Any], source: str = "features") -> Dict[str, Any]:
    """Check a features dict (the arrays of an ``ig3d extract`` file) and return a normalised copy:
    string arrays as numpy ``str``, ``preset`` as a Python ``str``, ``labels`` as int64, ``params3d``
    and ``va`` as float32. Raises ``ValueError`` naming ``source``, the key and expected vs actual."""
    f: Dict[str, Any] = {k: (v if k == "preset" and isinstance(v, str) else np.asarray(v)) for k, v in features.items()}
    for key in ("params3d", "param_names", "param_segments", "param_segment_sizes"):
        if key not in f:
            raise ValueError(f"{source}: missing {key!r} (a features file from `ig3d extract` has it)")
    for key in _STR_KEYS:
        if key in f:
            f[key] = _strings(f[key], key, source)
    if "preset" in f:
        p = f["preset"]
        f["preset"] = p if isinstance(p, str) else str(_strings(np.asarray(p).reshape(-1), "preset", source)[0])
    x = f["params3d"]
    if x.ndim != 2 or x.dtype.kind not in "fiu" or x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{source}: 'params3d' must be a non-empty float [N, D] array, got {x.dtype} {list(x.shape)}")
    n, d = x.shape
    f["params3d"] = x = x.astype(np.float32, copy=False)
    bad = ~np.isfinite(x).all(axis=1)
    if bad.any():
        raise ValueError(f"{source}: 'params3d' has {int(bad.sum())} rows with NaN or inf, the first at row "
                         f"{int(np.flatnonzero(bad)[0])}")

    def expect(key: str, shape: Tuple[Optional[int], ...]) -> None:
        if key not in f:
            return
        a = f[key]
        if a.ndim != len(shape) or any(s is not None and s != t for s, t in zip(shape, a.shape)):
            want = "[" + ", ".join("*" if s is None else str(s) for s in shape) + "]"
            raise ValueError(f"{source}: {key!r} has shape {list(a.shape)}, expected {want} "
                             f"(params3d has N={n} rows and D={d} columns)")

    expect("param_names", (d,))
    segs = f["param_segments"]
    expect("param_segments", (None,))
    sizes = f["param_segment_sizes"]
    expect("param_segment_sizes", (len(segs),))
    if sizes.dtype.kind not in "iu" or (sizes <= 0).any() or int(sizes.sum()) != d:
        raise ValueError(f"{source}: 'param_segment_sizes' {sizes.tolist()} must be positive integers summing to "
                         f"D={d} (the width of params3d)")
    f["param_segment_sizes"] = sizes.astype(np.int64)
    if len(set(segs.tolist())) != len(segs):
        raise ValueError(f"{source}: 'param_segments' lists a segment twice: {segs.tolist()}")
    if len(set(f["param_names"].tolist())) != d:
        raise ValueError(f"{source}: 'param_names' lists a name twice")
    expect("scores2d", (n, None))
    if "scores2d" in f:
        expect("scores2d_names", (f["scores2d"].shape[1],))
    expect("features2d", (n, None))
    expect("paths", (n,))
    expect("split", (n,))
    expect("class_names", (None,))
    if "split" in f:
        unknown = sorted(set(np.unique(f["split"]).tolist()) - set(SPLITS))
        if unknown:
            raise ValueError(f"{source}: 'split' has values {unknown}; expected 'train', 'val', 'test' or ''")
    if "labels" in f:
        expect("labels", (n,))
        y = f["labels"]
        if y.dtype.kind not in "iu":
            raise ValueError(f"{source}: 'labels' must be integer class indices (-1 = none), got dtype {y.dtype}")
        if "class_names" not in f:
            raise ValueError(f"{source}: 'labels' needs 'class_names' (what each index means)")
        c = len(f["class_names"])
        out = (y < -1) | (y >= c)
        if out.any():
            i = int(np.flatnonzero(out)[0])
            raise ValueError(f"{source}: 'labels' row {i} is {int(y[i])}; expected -1 (none) or 0..{c - 1} "
                             f"({c} class_names)")
        f["labels"] = y.astype(np.int64, copy=False)
    if "va" in f:
        expect("va", (n, 2))
        if f["va"].dtype.kind != "f":
            raise ValueError(f"{source}: 'va' must be float (valence, arousal; NaN = none), got dtype {f['va'].dtype}")
        f["va"] = f["va"].astype(np.float32, copy=False)
    return f


def load_features(path: PathLike) -> Dict[str, Any]:
    """Read a features ``.npz`` written by ``ig3d extract`` (``np.load(allow_pickle=False)``) into a dict
    of arrays, checked by :func:`validate_features` (errors name the file and the key)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            arrays = {}
            for k in z.files:
                try:
                    arrays[k] = z[k]
                except ValueError as e:  # an object array needs pickle
                    raise ValueError(f"{path}: {k!r} cannot be read without pickle ({e}); store strings as a "
                                     f"numpy str array") from e
    except ValueError as e:
        if str(e).startswith(path):
            raise
        raise ValueError(f"{path}: not a readable features (.npz) file: {e}") from e
    except OSError as e:
        raise ValueError(f"{path}: not a readable features (.npz) file: {e}") from e
    return validate_features(arrays, source=path)


def _segment_columns(features: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    """segment name -> its column indices in params3d (segments are consecutive, in file order)."""
    out, start = {}, 0
    for seg, size in zip(np.asarray(features["param_segments"]).tolist(),
                         np.asarray(features["param_segment_sizes"]).tolist()):
        out[seg] = np.arange(start, start + int(size))
        start += int(size)
    return out


def _encoder(features: Mapping[str, Any]) -> Optional[str]:
    """"default", "emoca" or "smirk": from the file's preset, else from its segment names."""
    from . import params as params_mod

    preset = features.get("preset", "")
    if not isinstance(preset, str):
        preset = str(np.asarray(preset).reshape(-1)[0]) if np.asarray(preset).size else ""
    if preset:
        try:
            return params_mod.encoder_of_preset(preset)
        except ValueError:
            pass
    segs = set(np.asarray(features["param_segments"]).tolist())
    for enc, enc_segs in params_mod.SEGMENTS.items():
        if segs == {s for s, _ in enc_segs}:
            return enc
    return None


def param_selection(features: Mapping[str, Any], params: Union[str, Sequence[str]] = "all") -> np.ndarray:
    """Column indices (int64) of the 3D vector a head is trained on, in order.

    params:
        "all": every column.
        "short" / "full": Ig3D's feature sets (REFERENCE 1.1; :data:`ig3d.convert.ig3d_heads.FEATURE_SETS`,
            whose segments :mod:`ig3d.params` lists without torch), found by name (``"exp.0"``, ...) in
            the file's ``param_names``: EMOCA short 156 (exp, pose, shape) / full 334, SMIRK short 353 /
            full 358. For the default preset short is the 52 blendshapes and full all 55 (with head yaw,
            pitch and roll).
        a list of names, or one comma-separated string: parameter names (``"jawOpen"``, ``"exp.3"``)
            or segment names (``"exp"``: all of its columns), in the order given.

    Raises ``ValueError`` naming unknown or repeated names, or a set the file cannot provide.
    """
    from . import params as params_mod

    names = [str(v) for v in np.asarray(features["param_names"]).tolist()]
    segs = [str(v) for v in np.asarray(features["param_segments"]).tolist()]
    cols = _segment_columns(features)
    d = len(names)
    if isinstance(params, str) and params in ("all", "short", "full"):
        if params == "all":
            return np.arange(d, dtype=np.int64)
        enc = _encoder(features)
        if enc is None:
            raise ValueError(f"params={params!r} is defined for the default, EMOCA and SMIRK vectors; this file's "
                             f"segments are {segs} (give 'all' or a list of names)")
        full_names, spans, start = params_mod.param_names(enc), {}, 0
        for seg, width in params_mod.SEGMENTS[enc]:
            spans[seg] = full_names[start:start + width]
            start += width
        want_segs = params_mod.SHORT_SEGMENTS[enc] if params == "short" else [s for s, _ in params_mod.SEGMENTS[enc]]
        want = [nm for seg in want_segs for nm in spans[seg]]
        index = {nm: i for i, nm in enumerate(names)}
        missing = [nm for nm in want if nm not in index]
        if missing:
            raise ValueError(f"params={params!r} ({enc}: {', '.join(want_segs)}; {len(want)} values) needs "
                             f"parameters missing from the file's param_names: {missing[:8]}"
                             f"{' ...' if len(missing) > 8 else ''}")
        return np.array([index[nm] for nm in want], dtype=np.int64)
    items = [s.strip() for s in params.split(",")] if isinstance(params, str) else [str(s).strip() for s in params]
    items = [s for s in items if s]
    if not items:
        raise ValueError("params: empty selection; give 'all', 'short', 'full' or parameter/segment names")
    index = {n: i for i, n in enumerate(names)}
    out: List[int] = []
    unknown = []
    for item in items:
        if item in cols:
            out.extend(cols[item].tolist())
        elif item in index:
            out.append(index[item])
        else:
            unknown.append(item)
    if unknown:
        raise ValueError(f"params: unknown names {unknown}; expected 'all', 'short', 'full', segment names "
                         f"{segs} or parameter names such as {names[:3]}")
    if len(set(out)) != len(out):
        dup = sorted({names[i] for i in out if out.count(i) > 1})
        raise ValueError(f"params: parameters selected more than once: {dup[:8]}")
    return np.array(out, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Splits.


def make_splits(n: int, seed: int, fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> np.ndarray:
    """A seeded split of n rows into "train", "val", "test" (``[n]`` str array) for files without one.

    ``round(n * fractions[1])`` rows go to val and ``round(n * fractions[2])`` to test, chosen by a
    permutation from ``np.random.default_rng(seed)``; the rest is train. The same (n, seed, fractions)
    always give the same split."""
    fr = [float(v) for v in fractions]
    if len(fr) != 3 or any(v < 0 for v in fr) or not math.isclose(sum(fr), 1.0, abs_tol=1e-6):
        raise ValueError(f"fractions: expected 3 non-negative numbers (train, val, test) summing to 1, got {fr}")
    n = int(n)
    if n < 1:
        raise ValueError(f"n: expected at least 1 row, got {n}")
    perm = np.random.default_rng(seed).permutation(n)
    n_val, n_test = int(round(n * fr[1])), int(round(n * fr[2]))
    if n_val + n_test > n:
        n_test = n - n_val
    split = np.full(n, "train", dtype="<U5")
    split[perm[:n_val]] = "val"
    split[perm[n_val:n_val + n_test]] = "test"
    return split


def _resolve_split(features: Mapping[str, Any], seed: int) -> Tuple[np.ndarray, dict]:
    """(split used, log entry). Generated (80/10/10) when the file has none; val held out of train
    (10 %) when it has train rows but no val rows."""
    n = features["params3d"].shape[0]
    file_split = features.get("split")
    if file_split is None or not (file_split != "").any():
        split = make_splits(n, seed)
        info = dict(source="generated", seed=int(seed), fractions=[0.8, 0.1, 0.1],
                    val_indices=np.flatnonzero(split == "val").tolist(),
                    test_indices=np.flatnonzero(split == "test").tolist())
    elif (file_split == "train").any() and not (file_split == "val").any():
        split = file_split.astype("<U5")
        train = np.flatnonzero(split == "train")
        if len(train) < 2:
            raise ValueError(f"the file has {len(train)} 'train' row(s) and no 'val' rows: too few to hold out a "
                             f"validation set")
        n_val = max(1, int(round(0.1 * len(train))))
        held = np.sort(np.random.default_rng(seed).choice(train, size=n_val, replace=False))
        split[held] = "val"
        info = dict(source="val held out of train", seed=int(seed), fraction=0.1, val_indices=held.tolist())
    else:
        split = file_split.astype("<U5")
        info = dict(source="file")
    info["counts"] = {s: int((split == s).sum()) for s in ("train", "val", "test")}
    return split, info


def split_from_log(features: Mapping[str, Any], log: Mapping[str, Any]) -> np.ndarray:
    """The split a training run used (``[N]`` str), from the features it was trained on and its log
    (:attr:`TrainResult.log`): the file's own split, or the rows the run generated or held out."""
    info = log["split"]
    n = np.asarray(features["params3d"]).shape[0]
    if info["source"] == "generated":
        split = np.full(n, "train", dtype="<U5")
        split[np.asarray(info["test_indices"], dtype=np.int64)] = "test"
    else:
        split = np.asarray(features["split"]).astype("<U5")
    if info["source"] != "file":
        split[np.asarray(info["val_indices"], dtype=np.int64)] = "val"
    return split


# ---------------------------------------------------------------------------------------------
# The loss.


def ig3d_loss(logits, va_pred, labels, va_true, a, b, c):
    """Ig3D's training loss on a batch: ``CE + a * MSE + b * (1 - PCC) + c * (1 - CCC)``.

    Args:
        logits: [B, C] raw class scores, or None (VA-only head: no CE term).
        va_pred: [B, 2] predicted (valence, arousal), or None (classification only: CE alone).
        labels: [B] int64 class indices; -1 = no label (the row is left out of the CE).
        va_true: [B, 2] float, NaN = no VA (the row is left out of the VA terms).
        a, b, c: weights (floats or 0-d tensors). :func:`train_head` draws them uniformly in [0, 1)
            each step and divides by their sum, as Ig3D does.

    Terms, over the rows that have the target: CE is the mean cross-entropy; MSE = MSE_V + MSE_A; PCC
    and CCC are the means over V and A of Pearson's r and Lin's concordance coefficient with population
    moments. A batch without labelled rows has CE 0; one without VA rows has no VA terms; PCC and CCC
    need 2 rows (else their terms are 0). Returns a 0-d tensor. No host synchronisation (works on a GPU
    without stalls).
    """
    torch = _torch()
    import torch.nn.functional as F

    ref = logits if logits is not None else va_pred
    if ref is None:
        raise ValueError("ig3d_loss: give logits, va_pred or both")
    loss = ref.new_zeros(())
    if logits is not None:
        if labels is None:
            raise ValueError("ig3d_loss: logits need labels")
        have = labels >= 0
        ce = F.cross_entropy(logits, labels.clamp_min(0), reduction="none")
        loss = loss + (ce * have).sum() / have.sum().clamp_min(1)
    if va_pred is not None:
        if va_true is None:
            raise ValueError("ig3d_loss: va_pred needs va_true")
        have = torch.isfinite(va_true).all(dim=1)
        w = have.to(va_pred.dtype)[:, None]
        m = w.sum()
        t = torch.where(have[:, None], va_true, torch.zeros_like(va_true))
        p = va_pred
        inv = 1.0 / m.clamp_min(1)
        mse = (((p - t) ** 2) * w).sum(dim=0) * inv  # [2]
        mp, mt = (p * w).sum(dim=0) * inv, (t * w).sum(dim=0) * inv
        dp, dt = (p - mp) * w, (t - mt) * w
        cov, vp, vt = (dp * dt).sum(dim=0) * inv, (dp * dp).sum(dim=0) * inv, (dt * dt).sum(dim=0) * inv
        pcc = cov / torch.sqrt(vp * vt + 1e-12)
        ccc = 2 * cov / (vp + vt + (mp - mt) ** 2 + 1e-12)
        two = (m >= 2).to(p.dtype)
        loss = loss + a * mse.sum() + two * (b * (1 - pcc.mean()) + c * (1 - ccc.mean()))
    return loss


# ---------------------------------------------------------------------------------------------
# Training.


@dataclass
class TrainResult:
    """What :func:`train_head` returns.

    head: the trained head as a :class:`FusedHead` (BatchNorm folded; ``select``, ``mean``, ``std`` take
        the raw 3D vector). log: JSON-able settings, split, per-epoch metrics and the selected epoch.
    module: the torch module of the selected epoch, on the CPU in eval mode; it takes the standardised
        selected features ``(params3d[:, head.select] - head.mean) / head.std``.
    split: the split used, ``[N]`` str (see :func:`split_from_log`).
    """

    head: FusedHead
    log: Dict[str, Any]
    module: Any = None
    split: np.ndarray = field(default_factory=lambda: np.zeros(0, "<U5"))

    def save(self, path: PathLike, log_path: Optional[PathLike] = None) -> None:
        """Write the head (:meth:`FusedHead.save`) and the log as JSON (default: ``path`` with
        ``.json`` in place of its suffix)."""
        self.head.save(path)
        if log_path is None:
            log_path = os.path.splitext(os.fspath(path))[0] + ".json"
        with open(log_path, "w") as f:
            json.dump(self.log, f, indent=1)


def _jsonable(v: Any) -> Any:
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, np.ndarray):
        return _jsonable(v.tolist())
    if isinstance(v, (np.floating, float)):
        return float(v) if math.isfinite(v) else None
    if isinstance(v, (np.integer,)):
        return int(v)
    return v


def _build_module(head: str, in_dim: int, out_dim: int, dropout: float):
    torch = _torch()
    if head == "mlp4":
        from .models.ig3d_heads import MLP4

        return MLP4(in_dim, out_dim, dropout=dropout)
    if head == "residual":
        from .models.ig3d_heads import ResidualHead

        return ResidualHead(in_dim, out_dim, dropout=dropout)
    return torch.nn.Linear(in_dim, out_dim)


def _module_layers(module) -> List[Layer]:
    torch = _torch()
    if isinstance(module, torch.nn.Linear):
        return [Layer(module.weight.detach().double().cpu().numpy(), module.bias.detach().double().cpu().numpy())]
    from .convert.ig3d_heads import _head_layers

    layers, concat = _head_layers(module)
    assert not concat  # 3D-only heads
    return layers


@contextlib.contextmanager
def _deterministic(torch, devices: List[int], on: bool):
    """A section with its own RNG state (the caller's is restored after) and, if ``on``, torch's
    deterministic algorithms (the caller's setting is restored after)."""
    before = torch.are_deterministic_algorithms_enabled()
    warn_only = torch.is_deterministic_algorithms_warn_only_enabled()
    with torch.random.fork_rng(devices=devices):
        torch.use_deterministic_algorithms(on or before, warn_only=True if on else warn_only)
        try:
            yield
        finally:
            torch.use_deterministic_algorithms(before, warn_only=warn_only)


def _segment_groups(features: Mapping[str, Any], select: np.ndarray) -> List[Tuple[str, np.ndarray]]:
    """(segment, positions in the selected vector) for every segment with a selected column."""
    pos = {int(c): i for i, c in enumerate(select)}
    out = []
    for seg, cols in _segment_columns(features).items():
        p = np.array([pos[int(c)] for c in cols if int(c) in pos], dtype=np.int64)
        if len(p):
            out.append((seg, p))
    return out


def _cols(positions: np.ndarray) -> Union[slice, np.ndarray]:
    """A slice when the positions are one consecutive run (the usual case: a whole segment)."""
    if len(positions) and np.array_equal(positions, np.arange(positions[0], positions[0] + len(positions))):
        return slice(int(positions[0]), int(positions[0]) + len(positions))
    return positions


def _epoch_order(torch, n: int, row_w, gen, dev):
    """The train rows of one epoch, in order: n draws with replacement with probabilities ``row_w``
    (Ig3D's class-balanced sampler), or a permutation when ``row_w`` is None."""
    if row_w is None:
        return torch.randperm(n, generator=gen, device=dev)
    return torch.multinomial(row_w, n, replacement=True, generator=gen)


def _mask_batch(torch, x, groups, zero, mask_prob: float, gen):
    """Ig3D's feature masking on a standardised batch x [B, D] (returns a new tensor)."""
    b = x.shape[0]
    hit = torch.rand(b, len(groups), generator=gen, device=x.device) < mask_prob
    out = x.clone()
    for s, (cols, n) in enumerate(groups):
        r = torch.rand(b, n, generator=gen, device=x.device)
        k = (torch.rand(b, generator=gen, device=x.device) * n).long().clamp_(max=n - 1)  # k - 1, k uniform in 1..n
        kth = r.sort(dim=1).values.gather(1, k[:, None])
        m = (r <= kth) & hit[:, s:s + 1]
        out[:, cols] = torch.where(m, zero[cols], x[:, cols])
    return out


def _val_metrics(task: str, c: int, out: np.ndarray, y: Optional[np.ndarray], va: Optional[np.ndarray]) -> dict:
    res: Dict[str, Any] = {}
    if task != "va":
        have = y >= 0
        res.update(_metrics.classification_metrics(y[have], out[have, :c].argmax(1)))
    if task != "classification":
        have = np.isfinite(va).all(1)
        pred = out[have, c:c + 2] if task == "classification+va" else out[have, 0:2]
        res.update(_metrics.va_metrics(pred, va[have]))
        res["ccc_mean"] = 0.5 * (res["valence_ccc"] + res["arousal_ccc"])
    if task == "classification":
        res["score"] = res["accuracy"]
    elif task == "va":
        res["score"] = res["ccc_mean"]
    else:
        res["score"] = 0.5 * (res["accuracy"] + res["ccc_mean"])
    return res


def train_head(
    features: Union[PathLike, Mapping[str, Any]],
    *,
    head: str = "mlp4",
    params: Union[str, Sequence[str]] = "all",
    task: str = "classification",
    epochs: Optional[int] = None,
    batch_size: Optional[int] = None,
    seed: int = 0,
    mask_prob: Optional[float] = None,
    dropout: float = 0.5,
    base_lr: float = 1e-6,
    max_lr: float = 1e-4,
    step_size_up: Optional[int] = None,
    weight_decay: float = 0.01,
    balance: Optional[bool] = None,
    std_floor: float = 1e-3,
    progress: Optional[Callable[[int, dict], Any]] = None,
    device: str = "cpu",
) -> TrainResult:
    """Train a 3D head on a features file (or the dict :func:`load_features` returns) with Ig3D's recipe.

    Args:
        head: "mlp4" (Ig3D's MLP4, 13 M parameters), "residual" (Ig3D's residual head) or "linear".
        params: the 3D parameters the head reads (:func:`param_selection`).
        task: "classification" (C logits, C = the file's ``class_names``), "va" (2 outputs: [0] valence,
            [1] arousal) or "classification+va" (C logits, valence at C, arousal at C + 1).
        epochs, batch_size, mask_prob: default per head from :data:`RECIPES`.
        seed: seeds the weights, dropout, sampling, masking, loss weights and any generated split.
        dropout: MLP4 after stage 1, residual head inside both blocks (Ig3D: 0.5); unused by "linear".
        base_lr, max_lr, step_size_up: the CyclicLR (triangular); ``step_size_up`` defaults to half an
            epoch's batches.
        weight_decay: AdamW's.
        balance: class-balanced sampling with replacement (default: on for the tasks with classes; rows
            without a label form their own group). Off: a seeded shuffle of the train rows each epoch.
        std_floor: the smallest std used to standardise a feature (a feature that barely varies in the
            train rows, such as a blendshape that never fires, is scaled by this instead).
        progress: called as ``progress(epoch, entry)`` after each epoch (entry: that epoch's log entry).
        device: torch device for training ("cpu", "cuda", "cuda:1"); torch's CPU threads are left as set.

    Rows: train on ``split == "train"``, select the epoch on ``split == "val"``, each restricted to rows
    that have the task's targets (a label >= 0, finite VA, or either). A file without a split gets
    :func:`make_splits` (80/10/10, this seed); a file with train rows but no val rows gets 10 % of its
    train rows held out (seeded). Both are recorded in ``log["split"]`` (:func:`split_from_log`).

    Returns a :class:`TrainResult`; its ``head`` takes the raw ``params3d`` of the file's preset
    (``input_dim`` = D) and has ``fusion="none"``. Same seed and settings on the same device give the
    same weights.
    """
    torch = _torch()
    if isinstance(features, Mapping):
        feats = validate_features(features)
        source = "features"
    else:
        source = os.fspath(features)
        feats = load_features(source)
    if head not in HEADS:
        raise ValueError(f"head: expected one of {list(HEADS)}, got {head!r}")
    if task not in TASKS:
        raise ValueError(f"task: expected one of {list(TASKS)}, got {task!r}")
    recipe = RECIPES[head]
    epochs = int(recipe["epochs"] if epochs is None else epochs)
    batch_size = int(recipe["batch_size"] if batch_size is None else batch_size)
    mask_prob = float(recipe["mask_prob"] if mask_prob is None else mask_prob)
    if epochs < 1:
        raise ValueError(f"epochs: expected >= 1, got {epochs}")
    if batch_size < 2:
        raise ValueError(f"batch_size: expected >= 2 (BatchNorm and the correlation terms need 2 rows), got "
                         f"{batch_size}")
    if not 0.0 <= mask_prob <= 1.0:
        raise ValueError(f"mask_prob: expected a probability in [0, 1], got {mask_prob}")
    if not (0 < base_lr <= max_lr):
        raise ValueError(f"base_lr, max_lr: expected 0 < base_lr <= max_lr, got {base_lr}, {max_lr}")
    if not std_floor > 0:
        raise ValueError(f"std_floor: expected > 0, got {std_floor}")

    classes = task != "va"
    want_va = task != "classification"
    n = feats["params3d"].shape[0]
    y = feats.get("labels")
    va = feats.get("va")
    if classes and (y is None or not (y >= 0).any()):
        raise ValueError(f"{source}: task {task!r} needs class labels, but the file has "
                         f"{'no labels' if y is None else 'no labelled row (all -1)'}")
    if want_va and (va is None or not np.isfinite(va).all(1).any()):
        raise ValueError(f"{source}: task {task!r} needs valence/arousal, but the file has "
                         f"{'no va' if va is None else 'no row with both values (all NaN)'}")
    class_names = [str(s) for s in feats["class_names"]] if classes else []
    c = len(class_names)
    if balance is None:
        balance = classes
    if balance and y is None:
        raise ValueError(f"{source}: balance=True needs class labels, the file has none")

    select = param_selection(feats, params)
    split, split_info = _resolve_split(feats, seed)
    has_y = (y >= 0) if classes else np.zeros(n, bool)
    has_va = np.isfinite(va).all(1) if want_va else np.zeros(n, bool)
    usable = has_y | has_va
    train_idx = np.flatnonzero((split == "train") & usable)
    val_idx = np.flatnonzero((split == "val") & usable)
    what = {"classification": "a class label", "va": "valence/arousal",
            "classification+va": "a label or valence/arousal"}[task]
    if len(train_idx) < 2:
        raise ValueError(f"{source}: {len(train_idx)} 'train' rows with {what} ({split_info['counts']['train']} "
                         f"'train' rows in all); at least 2 are needed")
    if classes and not has_y[val_idx].any():
        raise ValueError(f"{source}: no 'val' row with a class label to select the model on "
                         f"({split_info['counts']['val']} 'val' rows)")
    if want_va and not has_va[val_idx].sum() >= 2:
        raise ValueError(f"{source}: fewer than 2 'val' rows with valence/arousal to select the model on "
                         f"({split_info['counts']['val']} 'val' rows)")

    # Standardisation from the train rows; the head stores these float32 values and the tensors use them.
    x = feats["params3d"]
    x_train = x[train_idx][:, select]
    mean = x_train.mean(0, dtype=np.float64).astype(np.float32)
    std = np.maximum(x_train.std(0, dtype=np.float64), std_floor).astype(np.float32)
    out_dim = c + 2 if task == "classification+va" else (2 if task == "va" else c)

    dev = torch.device(device)

    def t(a, dtype=torch.float32):
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype, device=dev)

    x_tr = t((x_train - mean) / std)
    del x_train
    x_val = t((x[val_idx][:, select] - mean) / std)
    y_tr = t(y[train_idx], torch.int64) if classes else None
    va_tr = t(va[train_idx]) if want_va else None
    zero = t(-mean / std)  # a masked entry: the raw value 0, standardised
    groups = []  # (columns of the standardised batch, width) per segment, for the masking
    for _, pos in _segment_groups(feats, select):
        cols = _cols(pos)
        groups.append((cols if isinstance(cols, slice) else t(cols, torch.int64), len(pos)))
    n_tr = len(train_idx)
    n_batches = n_tr // batch_size + (1 if n_tr % batch_size >= 2 else 0)  # a last lone row is skipped (BN)
    step_size_up = int(step_size_up) if step_size_up is not None else max(1, n_batches // 2)
    row_w = None
    if balance:
        _, inv, counts = np.unique(y[train_idx], return_inverse=True, return_counts=True)
        row_w = t(1.0 / counts[inv], torch.float64)
    deterministic = dev.type != "cuda" or os.environ.get("CUBLAS_WORKSPACE_CONFIG") in (":4096:8", ":16:8")

    settings = dict(head=head, params=params if isinstance(params, str) else list(params), task=task, epochs=epochs,
                    batch_size=batch_size, seed=int(seed), mask_prob=mask_prob, dropout=dropout, base_lr=base_lr,
                    max_lr=max_lr, step_size_up=step_size_up, weight_decay=weight_decay, balance=bool(balance),
                    std_floor=std_floor, device=str(dev), deterministic=deterministic, optimizer="AdamW",
                    schedule="CyclicLR triangular, stepped per batch, cycle_momentum=False",
                    loss="CE + a*MSE + b*(1-PCC) + c*(1-CCC), (a,b,c) ~ U[0,1)^3 / sum, per step",
                    selection={"classification": "val accuracy", "va": "val mean CCC of valence and arousal",
                               "classification+va": "val (accuracy + mean CCC) / 2"}[task],
                    torch=torch.__version__)
    names = feats["param_names"]
    log: Dict[str, Any] = dict(
        settings=settings,
        features=dict(source=source, preset=feats.get("preset", ""), input_dim=int(feats["params3d"].shape[1]),
                      selected=[str(names[i]) for i in select],
                      segments=[s for s, _ in _segment_groups(feats, select)],
                      class_names=class_names, n_train=int(n_tr), n_val=int(len(val_idx))),
        split=split_info, epochs=[])

    cuda_devs = [dev.index if dev.index is not None else torch.cuda.current_device()] if dev.type == "cuda" else []
    with _deterministic(torch, cuda_devs, deterministic):
        torch.manual_seed(seed)
        model = _build_module(head, len(select), out_dim, dropout).to(dev)
        gen = torch.Generator(device=dev).manual_seed(seed)
        try:
            opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=weight_decay, fused=True)
        except (RuntimeError, TypeError):  # pragma: no cover - a device without the fused kernel
            opt = torch.optim.AdamW(model.parameters(), lr=base_lr, weight_decay=weight_decay)
        sched = torch.optim.lr_scheduler.CyclicLR(opt, base_lr=base_lr, max_lr=max_lr, step_size_up=step_size_up,
                                                  mode="triangular", cycle_momentum=False)
        best_score, best_epoch, best_state = -math.inf, 0, None
        for epoch in range(1, epochs + 1):
            t0 = time.perf_counter()
            model.train()
            order = _epoch_order(torch, n_tr, row_w, gen, dev)
            loss_sum = torch.zeros((), dtype=torch.float64, device=dev)
            correct = torch.zeros((), dtype=torch.int64, device=dev)
            labelled = torch.zeros((), dtype=torch.int64, device=dev)
            for i in range(n_batches):
                idx = order[i * batch_size:(i + 1) * batch_size]
                xb = x_tr[idx]
                if mask_prob > 0:
                    xb = _mask_batch(torch, xb, groups, zero, mask_prob, gen)
                out = model(xb)
                w = torch.rand(3, generator=gen, device=dev)
                w = w / w.sum()
                logits = out[:, :c] if classes else None
                va_pred = out[:, c:c + 2] if want_va else None
                yb = y_tr[idx] if classes else None
                loss = ig3d_loss(logits, va_pred, yb, va_tr[idx] if want_va else None, w[0], w[1], w[2])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
                loss_sum += loss.detach()
                if classes:
                    correct += ((logits.detach().argmax(1) == yb) & (yb >= 0)).sum()
                    labelled += (yb >= 0).sum()
            train_loss = float(loss_sum.item()) / max(n_batches, 1)
            train_acc = float(correct.item()) / max(int(labelled.item()), 1) if classes else None
            train_seconds = time.perf_counter() - t0
            model.eval()
            with torch.no_grad():
                out_val = torch.cat([model(x_val[j:j + _EVAL_CHUNK]) for j in range(0, len(val_idx), _EVAL_CHUNK)])
            res = _val_metrics(task, c, out_val.double().cpu().numpy(), y[val_idx] if classes else None,
                               va[val_idx] if want_va else None)
            entry = dict(epoch=epoch, train_loss=train_loss, lr=float(sched.get_last_lr()[0]),
                         train_seconds=train_seconds, seconds=time.perf_counter() - t0, val=res)
            if train_acc is not None:
                entry["train_accuracy"] = train_acc
            entry = _jsonable(entry)
            log["epochs"].append(entry)
            score = res["score"]
            if math.isfinite(score) and score > best_score:
                best_score, best_epoch = score, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if progress is not None:
                progress(epoch, entry)
    if best_state is None:
        raise RuntimeError(f"training gave no finite validation score in {epochs} epochs (NaN/inf outputs?)")
    model.load_state_dict(best_state)
    model = model.cpu().eval()
    log["best_epoch"], log["best_score"] = best_epoch, float(best_score)
    log["best"] = log["epochs"][best_epoch - 1]["val"]

    ptag = params if isinstance(params, str) and params in ("all", "short", "full") else f"custom{len(select)}"
    preset = feats.get("preset", "") or "features"
    fused = FusedHead(
        _module_layers(model), input_dim=int(feats["params3d"].shape[1]), select=select, mean=mean, std=std,
        num_classes=c, va_index=None if task == "classification" else c, labels=class_names if classes else None,
        fusion="none", name=f"ig3d-{preset}-{head}-{ptag}-{task}")
    return TrainResult(head=fused, log=_jsonable(log), module=model, split=split)
