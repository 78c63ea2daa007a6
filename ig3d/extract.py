"""``ig3d extract``: run a preset over every image of a labelled dataset and keep, per image, what
the Ig3D method trains and evaluates on.

The output is one ``.npz`` (readable with ``np.load(path, allow_pickle=False)``):

=========================  =================================================================
key                        what
=========================  =================================================================
``params3d`` [N, D]        float32, the preset's 3D vector (default 55: 52 blendshapes + head
                           yaw/pitch/roll; EMOCA 334 / SMIRK 358 FLAME parameters)
``param_names`` [D]        a name per value (:mod:`ig3d.params`); ``param_segments`` and
                           ``param_segment_sizes`` give the segments in order
``scores2d`` [N, K]        float32, the 2D network's raw output in its own order (what a fused
                           head late-fuses); ``scores2d_names`` [K] says what each column is
``features2d`` [N, F]      float32, the 2D feature that intermediate fusion uses (Ig3D presets)
``labels`` [N]             int64 index into ``class_names`` (-1: none), when the dataset has labels
``va`` [N, 2]              float32 valence, arousal (NaN: none), when the dataset has them
``class_names`` [C]        ig3d's canonical order (:data:`ig3d.datasets.CANONICAL_LABELS`)
``paths``, ``split`` [N]   where each row came from; "train" / "val" / "test", or "" (no split)
``sample_index`` [N]       the row's index in the dataset (so that shards merge exactly)
``failed_paths``,          every image that could not be read or shows no face, and every bad
``failed_reasons``         dataset row, with the reason
``preset``, ``dataset``,   provenance: preset name, dataset kind and root, whether ``aligned``,
``aligned``, ``shard``     the shard ("K/N") and a fingerprint of the inputs
``fingerprint``
=========================  =================================================================

Each image gives its largest face. ``aligned=True`` is for datasets of pre-aligned face crops
(RAF-DB's ``Image/aligned``, FER2013): no detection, each network reads the whole image (see
``run(aligned=True)`` of the presets).

**Resuming.** Rows are processed in blocks of :data:`BLOCK` images; each finished block is written
atomically into ``OUTPUT.parts/``. An interrupted run started again with the same arguments
continues after the last finished block; the finished output is written atomically and the parts
are removed. Running a finished extraction again does nothing (same inputs, same fingerprint).

**Sharding.** ``shard=(k, n)`` (1-based ``k``) processes the k-th of n contiguous, equal blocks of
the dataset's rows; :func:`merge` joins the n shard files into one, identical to a single run.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import params as params_mod

__all__ = ["extract", "merge", "load_features", "BLOCK", "scores2d_names"]

PathLike = Union[str, "os.PathLike[str]"]

#: images per resumable block (one file in OUTPUT.parts/ each)
BLOCK = 256
#: keys that every block and every output has, one row per image
_ROW_KEYS = ("params3d", "scores2d", "features2d", "labels", "va", "paths", "split", "sample_index")


def _str_array(items: Sequence[str]) -> np.ndarray:
    """A unicode array (never an object array: the file must load with allow_pickle=False)."""
    items = [str(s) for s in items]
    return np.array(items, dtype=f"<U{max([1] + [len(s) for s in items])}")


def scores2d_names(preset: str, width: int) -> List[str]:
    """What each column of a preset's raw 2D output is, in ig3d's label vocabulary.

    default: mini-Xception's FER2013 order; DDAMFN++: AffectNet-8 (8 wide) or the released RAF-DB
    checkpoint's order (7 wide); CAGE: AffectNet-8 logits then valence, arousal (10 wide) or
    valence, arousal (2 wide)."""
    from .labels import AFFECTNET7_LABELS, AFFECTNET8_LABELS, DDAMFN_RAFDB_LABELS

    if preset == "default":
        from .prior import FER_TO_LABELS, LABELS

        return [LABELS[i] for i in FER_TO_LABELS]
    enc2d = preset.rsplit("-", 1)[-1]
    known = {("ddamfn", 8): AFFECTNET8_LABELS, ("ddamfn", 7): DDAMFN_RAFDB_LABELS,
             ("cage", 10): AFFECTNET8_LABELS + ("valence", "arousal"), ("cage", 8): AFFECTNET8_LABELS,
             ("cage", 7): AFFECTNET7_LABELS, ("cage", 2): ("valence", "arousal")}
    if (enc2d, width) not in known:
        raise ValueError(f"{preset}: no known meaning for a {width}-wide output of {enc2d}")
    return list(known[(enc2d, width)])


def _fingerprint(ds, preset: str, aligned: bool, n_total: int) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([preset, bool(aligned), ds.kind, list(ds.class_names), n_total]).encode())
    for s in ds.samples:
        h.update(f"{s.path}\t{s.label}\t{s.va[0]!r}\t{s.va[1]!r}\t{s.split}\n".encode())
    for e in ds.errors:
        h.update(f"{e.source}\t{e.row}\t{e.reason}\n".encode())
    return h.hexdigest()[:32]


def _shard_range(n: int, shard: Optional[Tuple[int, int]]) -> Tuple[int, int]:
    if shard is None:
        return 0, n
    k, total = shard
    if not (isinstance(k, int) and isinstance(total, int)) or total < 1 or not 1 <= k <= total:
        raise ValueError(f"shard: expected K/N with 1 <= K <= N, got {k}/{total}")
    return n * (k - 1) // total, n * k // total


def parse_shard(text: str) -> Tuple[int, int]:
    """"K/N" -> (K, N)."""
    try:
        k, n = (int(t) for t in str(text).split("/"))
    except ValueError:
        raise ValueError(f"--shard: expected K/N (e.g. 3/8), got {text!r}") from None
    _shard_range(1, (k, n))
    return k, n


class _Progress:
    """A one-line progress bar on a terminal (images/s, ETA); nothing when stderr is not a tty."""

    def __init__(self, total: int, done: int = 0, enabled: Optional[bool] = None, stream=None):
        self.stream = stream or sys.stderr
        self.enabled = self.stream.isatty() if enabled is None else enabled
        self.total, self.done, self.start_done = total, done, done
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if not self.enabled or (now - self._last < 0.2 and self.done < self.total):
            return
        self._last = now
        rate = (self.done - self.start_done) / max(now - self.t0, 1e-9)
        eta = (self.total - self.done) / rate if rate > 0 else float("inf")
        frac = self.done / max(self.total, 1)
        bar = "#" * int(frac * 30)
        eta_s = time.strftime("%H:%M:%S", time.gmtime(eta)) if np.isfinite(eta) else "--:--:--"
        self.stream.write(f"\rextract [{bar:<30}] {self.done}/{self.total} {rate:6.1f} img/s ETA {eta_s}")
        self.stream.flush()

    def close(self) -> None:
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()


def _atomic_savez(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays)
    os.replace(tmp, path)


def _empty_block(D: int, K: int, F: int) -> Dict[str, np.ndarray]:
    return {"params3d": np.zeros((0, D), np.float32), "scores2d": np.zeros((0, K), np.float32),
            "features2d": np.zeros((0, F), np.float32), "labels": np.zeros(0, np.int64),
            "va": np.zeros((0, 2), np.float32), "paths": _str_array([]), "split": _str_array([]),
            "sample_index": np.zeros(0, np.int64), "failed_paths": _str_array([]),
            "failed_reasons": _str_array([]), "failed_index": np.zeros(0, np.int64)}


def _run_block(predictor, ds, idx: Sequence[int], aligned: bool, batch: int, loader: ThreadPoolExecutor,
               progress: _Progress, on_batch: Optional[Callable[[int], None]]) -> Dict[str, Any]:
    """Images ``idx`` of ``ds`` -> the rows of one block (and its failures)."""
    rows: Dict[str, list] = {k: [] for k in ("params3d", "scores2d", "features2d", "sample_index")}
    failed: List[Tuple[int, str, str]] = []

    def load(i):
        try:
            return ds.load(i), None
        except (OSError, ValueError) as e:  # missing, unreadable, truncated, corrupt
            return None, f"unreadable image: {e}"

    batches = [list(idx[s:s + batch]) for s in range(0, len(idx), batch)]
    pending = loader.submit(lambda b: [load(i) for i in b], batches[0]) if batches else None
    for bi, b in enumerate(batches):
        loaded = pending.result()
        if bi + 1 < len(batches):  # decode the next batch while this one runs
            pending = loader.submit(lambda b: [load(i) for i in b], batches[bi + 1])
        ok = [(i, im) for i, (im, err) in zip(b, loaded) if im is not None]
        failed += [(i, ds.samples[i].path, err) for i, (im, err) in zip(b, loaded) if im is None]
        results = predictor._pipeline.run([im for _, im in ok], aligned=aligned) if ok else []
        for (i, _), faces in zip(ok, results):
            if not faces:
                failed.append((i, ds.samples[i].path, "no face found"))
                continue
            f = faces[0]  # largest first
            rows["params3d"].append(np.asarray(f.params3d, np.float32))
            rows["scores2d"].append(np.asarray(f.scores2d_raw, np.float32))
            rows["features2d"].append(np.zeros(0, np.float32) if f.features2d is None
                                      else np.asarray(f.features2d, np.float32))
            rows["sample_index"].append(i)
        progress.update(len(b))
        if on_batch is not None:
            on_batch(len(b))
    return {"rows": rows, "failed": failed}


def _block_arrays(ds, out: Dict[str, Any], D: int, K: int, F: int) -> Dict[str, np.ndarray]:
    rows, failed = out["rows"], out["failed"]
    si = np.asarray(rows["sample_index"], np.int64)
    n = len(si)
    samples = [ds.samples[i] for i in si]
    return {
        "params3d": np.stack(rows["params3d"]) if n else np.zeros((0, D), np.float32),
        "scores2d": np.stack(rows["scores2d"]) if n else np.zeros((0, K), np.float32),
        "features2d": np.stack(rows["features2d"]) if n else np.zeros((0, F), np.float32),
        "labels": np.array([s.label for s in samples], np.int64),
        "va": np.array([s.va for s in samples], np.float32).reshape(n, 2),
        "paths": _str_array([s.path for s in samples]),
        "split": _str_array([s.split for s in samples]),
        "sample_index": si,
        "failed_paths": _str_array([p for _, p, _ in failed]),
        "failed_reasons": _str_array([r for _, _, r in failed]),
        "failed_index": np.array([i for i, _, _ in failed], np.int64),
    }


def _concat(blocks: List[Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
    keys = list(_ROW_KEYS) + ["failed_paths", "failed_reasons", "failed_index"]
    out = {}
    for k in keys:
        parts = [b[k] for b in blocks]
        out[k] = _str_array(np.concatenate(parts).tolist()) if parts[0].dtype.kind == "U" else np.concatenate(parts)
    return out


def _finish(arrays: Dict[str, np.ndarray], meta: Dict[str, np.ndarray], has_labels: bool, has_va: bool,
            has_features: bool) -> Dict[str, np.ndarray]:
    out = dict(meta)
    out.update({k: v for k, v in arrays.items()})
    if not has_labels:
        del out["labels"]
    if not has_va:
        del out["va"]
    if not has_features:
        del out["features2d"]
    return out


def extract(dataset, output: PathLike, *, preset: str = "default", aligned: bool = False, batch: int = 16,
            shard: Optional[Tuple[int, int]] = None, weights: Optional[dict] = None, backend: str = "auto",
            device: str = "auto", threads: Optional[int] = None, precision: str = "fp32", progress: Optional[bool] = None,
            on_batch: Optional[Callable[[int], None]] = None, predictor=None, **dataset_kw) -> Path:
    """Extract features of every image of ``dataset`` into ``output`` (see the module docstring).

    Args:
        dataset: a folder or file that :func:`ig3d.datasets.open_dataset` reads, or an opened
            :class:`ig3d.datasets.Dataset`.
        output: the ``.npz`` to write.
        preset, weights, backend, device, threads, precision: as :class:`ig3d.Predictor`.
        aligned: the images are pre-aligned face crops (no detection).
        batch: images per call of the preset (all faces of a call are batched over the cores).
        shard: (k, n): process only the k-th of n equal blocks of rows.
        progress: a progress bar on stderr (default: when stderr is a terminal).
        on_batch: called with the number of images after every batch (e.g. to stop a run).
        dataset_kw: passed to :func:`ig3d.datasets.open_dataset` (``kind``, ``classes``, ...).

    Returns the output path. Already finished with the same inputs: returns at once.
    """
    from .datasets import open_dataset

    if int(batch) < 1:
        raise ValueError(f"batch must be a positive number of images, got {batch}")
    ds = dataset if hasattr(dataset, "samples") else open_dataset(dataset, **dataset_kw)
    if not ds.has_labels and not ds.has_va:
        raise ValueError(f"{ds.root}: the dataset has neither labels nor valence/arousal to learn from")
    output = Path(output)
    encoder = params_mod.encoder_of_preset(preset)
    n_total = len(ds.samples)
    lo, hi = _shard_range(n_total, shard)
    fp = _fingerprint(ds, preset, aligned, n_total)
    shard_text = "" if shard is None else f"{shard[0]}/{shard[1]}"
    if output.is_file():
        try:
            with np.load(output, allow_pickle=False) as z:
                done = str(z["fingerprint"]) == fp and str(z["shard"]) == shard_text
        except Exception:
            done = False
        if done:
            return output
        raise FileExistsError(f"{output} exists and was extracted from other inputs (dataset, preset, "
                              f"--aligned or --shard differ); remove it or choose another output")

    parts = output.with_name(output.name + ".parts")
    state = {"fingerprint": fp, "shard": shard_text, "block": BLOCK}
    if parts.is_dir():
        try:
            old = json.loads((parts / "state.json").read_text())
        except (OSError, ValueError):
            old = None
        if old != state:
            raise FileExistsError(f"{parts} holds an unfinished extraction of other inputs; remove it to start over")
    else:
        parts.mkdir(parents=True)
        (parts / "state.json").write_text(json.dumps(state))

    names = params_mod.param_names(encoder)
    D = len(names)
    if predictor is None:
        from .predictor import Predictor

        w = None if preset == "default" else dict(weights or {})
        if w is not None and "head" not in w:
            from .hub import weights_dir

            if not (weights_dir() / preset / "head.npz").is_file():
                w["head"] = _placeholder_head(D)  # extraction reads the encoders only
        predictor = Predictor(preset, backend=backend, device=device, threads=threads, weights=w,
                              precision=precision)
    blocks_idx = [list(range(s, min(s + BLOCK, hi))) for s in range(lo, hi, BLOCK)]
    done_blocks = {p.name for p in parts.glob("block_*.npz")}
    n_done = sum(len(b) for k, b in enumerate(blocks_idx) if f"block_{k:06d}.npz" in done_blocks)
    bar = _Progress(hi - lo, n_done, progress)
    K = F = None
    blocks: List[Dict[str, np.ndarray]] = []
    try:
        with ThreadPoolExecutor(1, thread_name_prefix="ig3d-decode") as loader:
            for k, idx in enumerate(blocks_idx):
                path = parts / f"block_{k:06d}.npz"
                if path.name in done_blocks:
                    with np.load(path, allow_pickle=False) as z:
                        blocks.append({key: z[key] for key in z.files})
                    continue
                out = _run_block(predictor, ds, idx, aligned, int(batch), loader, bar, on_batch)
                if out["rows"]["params3d"]:
                    K = len(out["rows"]["scores2d"][0])
                    F = len(out["rows"]["features2d"][0])
                    if len(out["rows"]["params3d"][0]) != D:
                        raise RuntimeError(f"{preset} gave a {len(out['rows']['params3d'][0])}-wide 3D vector, "
                                           f"expected {D} ({encoder})")
                arrays = _block_arrays(ds, out, D, K or 0, F or 0)
                _atomic_savez(path, arrays)
                blocks.append(arrays)
    finally:
        bar.close()

    # widths from any block with rows (a block of only failures has 0-wide placeholders)
    for b in blocks:
        if len(b["sample_index"]):
            K, F = b["scores2d"].shape[1], b["features2d"].shape[1]
            break
    K, F = K or 0, F or 0
    for b in blocks:
        if not len(b["sample_index"]):
            b.update(params3d=np.zeros((0, D), np.float32), scores2d=np.zeros((0, K), np.float32),
                     features2d=np.zeros((0, F), np.float32))
    arrays = _concat(blocks) if blocks else _empty_block(D, K, F)
    # the dataset's bad rows belong to the first shard (so that merged shards list each once)
    if shard is None or shard[0] == 1:
        arrays["failed_paths"] = _str_array([e.path for e in ds.errors] + arrays["failed_paths"].tolist())
        arrays["failed_reasons"] = _str_array([f"{e.source}, row {e.row}: {e.reason}" for e in ds.errors]
                                              + arrays["failed_reasons"].tolist())
        arrays["failed_index"] = np.concatenate([np.full(len(ds.errors), -1, np.int64), arrays["failed_index"]])
    meta = _meta(ds, preset, encoder, names, K, aligned, shard_text, fp)
    final = _finish(arrays, meta, ds.has_labels, ds.has_va, F > 0)
    _atomic_savez(output, final)
    shutil.rmtree(parts, ignore_errors=True)
    return output


def _placeholder_head(D: int):
    """A head for an Ig3D preset that has none yet (the point of extracting is to train one): the
    features written do not depend on it."""
    from .fusion import FusedHead, Layer

    return FusedHead([Layer(np.zeros((1, D), np.float32), None)], input_dim=D, num_classes=1, labels=["none"],
                     name="extraction placeholder")


def _meta(ds, preset: str, encoder: str, names: List[str], K: int, aligned: bool, shard_text: str,
          fp: str) -> Dict[str, np.ndarray]:
    from . import __version__

    segs = params_mod.SEGMENTS[encoder]
    return {
        "param_names": _str_array(names),
        "param_segments": _str_array([s for s, _ in segs]),
        "param_segment_sizes": np.array([n for _, n in segs], np.int64),
        "scores2d_names": _str_array(scores2d_names(preset, K) if K else []),
        "class_names": _str_array(ds.class_names),
        "preset": np.array(preset),
        "dataset": np.array(f"{ds.kind}:{ds.root}"),
        "aligned": np.array(bool(aligned)),
        "shard": np.array(shard_text),
        "fingerprint": np.array(fp),
        "ig3d_version": np.array(__version__),
    }


def load_features(path: PathLike) -> Dict[str, np.ndarray]:
    """A features file as a dict of arrays, checked (:func:`ig3d.train.load_features`)."""
    from .train import load_features as load

    return load(path)


def _read_npz(path: PathLike) -> Dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"features file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as z:
            f = {k: z[k] for k in z.files}
    except Exception as e:
        raise ValueError(f"{path}: not a readable ig3d features file (.npz): {e}") from e
    for key in ("params3d", "shard", "fingerprint"):
        if key not in f:
            raise ValueError(f"{path}: missing {key!r}: not a features file written by `ig3d extract`")
    return f


def merge(shards: Sequence[PathLike], output: PathLike) -> Path:
    """Join the files of ``ig3d extract --shard k/n`` (all n of one extraction) into one, identical
    to the file a single run writes."""
    if not shards:
        raise ValueError("merge: no shard files given")
    files = [_read_npz(p) for p in shards]
    texts = [str(f["shard"]) for f in files]
    if any(not t for t in texts):
        bad = [str(p) for p, t in zip(shards, texts) if not t]
        raise ValueError(f"merge: {', '.join(bad)} is not a shard (extracted without --shard)")
    ks = [tuple(int(v) for v in t.split("/")) for t in texts]
    n = ks[0][1]
    fps = {str(f["fingerprint"]) for f in files}
    if len(fps) != 1 or any(t[1] != n for t in ks):
        raise ValueError("merge: the files come from different extractions (dataset, preset or shard count differ)")
    got = sorted(k for k, _ in ks)
    if got != list(range(1, n + 1)):
        missing = sorted(set(range(1, n + 1)) - set(got))
        dup = sorted({k for k in got if got.count(k) > 1})
        raise ValueError(f"merge: expected shards 1..{n} once each; missing {missing}, repeated {dup}")
    files = [f for _, f in sorted(zip([k for k, _ in ks], files), key=lambda t: t[0])]
    out = dict(files[0])
    for key in list(_ROW_KEYS) + ["failed_paths", "failed_reasons", "failed_index"]:
        if key in out:
            parts = [f[key] for f in files]
            out[key] = (_str_array(np.concatenate(parts).tolist()) if parts[0].dtype.kind == "U"
                        else np.concatenate(parts))
    out["shard"] = np.array("")
    output = Path(output)
    _atomic_savez(output, out)
    return output
