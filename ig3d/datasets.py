"""Labelled facial-expression datasets on disk, read into one list of samples in ig3d's class order.

Training and evaluating an Ig3D head starts from a labelled dataset, and every public one is laid out
and labelled differently: AffectNet numbers its classes one way, RAF-DB another, FER2013 a third, and
plain folders of images name them in words. :func:`open_dataset` reads five layouts and maps every
label onto ig3d's order (:data:`CANONICAL_LABELS`, AffectNet's), so that the rest of the workflow
(``ig3d extract``, training, evaluation) sees one format::

    ds = open_dataset("AffectNet/", classes=7)
    print(ds.summary())       # affectnet: 283901 samples (train 279401, test 4500), 7 classes (...), 4211 bad rows
    for i, s in enumerate(ds.samples):
        image = ds.load(i)    # RGB uint8 [H, W, 3]
        s.label, s.va, s.split

Every row that cannot become a sample (missing image, unknown label, malformed line, ...) is a
:class:`RowError` in ``ds.errors`` with its source and 1-based row: nothing is dropped silently.
Image files are checked for existence when the dataset is opened; whether they decode is found out by
:meth:`Dataset.load`, which raises ``ValueError`` / ``FileNotFoundError`` naming the file. Nothing is
downloaded.

Layouts (``kind="auto"`` tells them apart by what is on disk; see :func:`detect_kind`):

``imagefolder``
    ``root/<class>/*.{jpg,jpeg,png,bmp,webp}`` (images in subfolders of a class folder count for that
    class), optionally under a split level ``root/{train,val,test}/<class>/...`` (also ``training``,
    ``validation``, ``valid``, ``testing``). Folder names match class names case-insensitively, with
    synonyms (:data:`LABEL_SYNONYMS`: ``happiness``, ``angry``, ``surprised``, ...). Numbered class
    folders are refused: AffectNet and RAF-DB number their classes differently. Source of a row: the
    class folder; row: the image's 1-based position in that folder's sorted listing.
``csv``
    A CSV file with a header ``path,label[,valence,arousal][,split]`` (column names case-insensitive,
    other columns ignored). Paths are relative to the CSV's folder (or absolute); ``label`` is a class
    name or an integer index into :data:`CANONICAL_LABELS` (into ``classes`` when a list is given), and
    may be empty when valence and arousal are given; VA in [-1, 1]; split ``train``/``val``/``test``
    (also ``training``/``validation``/``valid``/``testing``). Row: the line in the file (the header is
    line 1).
``affectnet``
    (a) The per-image layout ``root/{train_set,val_set}/images/<id>.jpg`` with
    ``annotations/<id>_exp.npy``, ``<id>_val.npy`` and ``<id>_aro.npy`` (0-d arrays holding a string
    or a number, read with ``allow_pickle=False``); ``root`` may also be one split folder. Source of a
    row: the split folder; row: the id's 1-based position in the sorted list of ids, where an id is
    any image or ``*_exp.npy`` file (an image without annotations and annotations without an image are
    both bad rows).
    (b) The annotation CSV that Ig3D reads, header ``number,exp,val,aro``
    (dongludeeplearning/Ig3D: data/affectnet_annotations/val_set_annotation_without_lnd.csv). ``number``
    names the image: Ig3D opens ``<image folder>/<number>.jpg`` (dongludeeplearning/Ig3D:
    models/VA/intermediatefusion/intermediate_fusion_VA_train.py) or finds ``<number>.jpg`` in class
    subfolders (models/classification/intermediatefusion/Affectnet_Emoca_intermediate_fusion_train.py).
    ig3d's rule: the image is the file whose name without extension is ``number``, anywhere under the
    image folder (one recursive listing, so flat and class-folder layouts both work; two such files
    are a bad row). The image folder is ``images=`` when given, else the first that exists of
    ``<csv folder>/<set>/images``, ``<csv folder>/../<set>/images`` and ``<csv folder>/images``, where
    ``<set>`` is ``train_set`` for a CSV whose name starts with ``train`` and ``val_set`` for ``val``.
    Row: the line in the CSV.
    Codes 0-7 are Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt (the canonical order);
    8 None, 9 Uncertain and 10 Non-face are not expressions and become bad rows. ``classes=7`` makes
    contempt rows bad rows too (the default is 8). VA -2 means "no VA" (``va`` = (nan, nan)).
    **Splits**: ``train_set`` -> ``"train"``, ``val_set`` -> ``"test"``: AffectNet's test set is not
    public and its validation set is the set papers (Ig3D included) report on, so it is the test set
    here; model selection must use a held-out part of ``"train"``.
``rafdb``
    RAF-DB basic: ``root/EmoLabel/list_patition_label.txt`` (upstream's spelling; ``partition`` is
    accepted too), lines ``train_00001.jpg 5``, labels 1-7 = Surprise, Fear, Disgust, Happiness,
    Sadness, Anger, Neutral (:data:`ig3d.labels.RAFDB_LABELS`). Images: ``root/Image/aligned/
    <name>_aligned.jpg`` when that folder exists, else ``root/Image/original/<name>.jpg`` (one or the
    other for the whole set: aligned and original crops are not mixed); ``images=`` names another
    folder (``<name>_aligned.<ext>`` or ``<name>`` in it). Split from the name: ``train_`` ->
    ``"train"``, ``test_`` -> ``"test"``. Row: the line in the list file.
``fer2013``
    The FER2013 CSV ``emotion,pixels[,Usage]``: emotion 0-6 = Angry, Disgust, Fear, Happy, Sad,
    Surprise, Neutral; pixels = 2304 space-separated values 0-255 (48x48 gray, row-major); Usage
    ``Training`` -> ``"train"``, ``PublicTest`` -> ``"val"``, ``PrivateTest`` -> ``"test"``. The
    pixels are parsed when the file is opened into one uint8 array (35,887 images: 83 MB), not kept as
    strings; a sample's ``path`` is ``"<csv path>#row=<line>"``.

Classes (``classes=``): ``None`` gives the 8 canonical labels when the dataset can hold contempt
(AffectNet always; a folder or CSV only when one of its rows is contempt) and the first 7 otherwise;
``7`` or ``8`` force that many (with 7, contempt rows are bad rows); a list of names (``imagefolder``
and ``csv`` only) replaces the canonical classes with custom ones, in that order.
"""

from __future__ import annotations

import csv
import math
import os
import warnings
from collections import Counter, defaultdict
from pathlib import Path
from typing import Callable, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from .io import load_image
from .labels import AFFECTNET7_LABELS, AFFECTNET8_LABELS, RAFDB_LABELS

__all__ = [
    "CANONICAL_LABELS",
    "KINDS",
    "IMAGE_EXTENSIONS",
    "LABEL_SYNONYMS",
    "AFFECTNET_CODES",
    "FER2013_LABELS",
    "Sample",
    "RowError",
    "Dataset",
    "open_dataset",
    "detect_kind",
]

PathLike = Union[str, "os.PathLike[str]"]

#: ig3d's class order (= AffectNet-8's): a sample's ``label`` indexes ``Dataset.class_names``, which is
#: this tuple or its first 7 entries (unless custom classes are given).
CANONICAL_LABELS: Tuple[str, ...] = AFFECTNET8_LABELS
#: The layouts :func:`open_dataset` reads.
KINDS: Tuple[str, ...] = ("imagefolder", "csv", "affectnet", "rafdb", "fer2013")
#: Image file extensions looked for in folders (lowercase, compared case-insensitively).
IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
#: Accepted spellings of each canonical label (lowercase; matched after lowercasing and stripping).
LABEL_SYNONYMS: Dict[str, str] = {
    "neutral": "neutral",
    "happy": "happy", "happiness": "happy",
    "sad": "sad", "sadness": "sad",
    "surprise": "surprise", "surprised": "surprise",
    "fear": "fear", "fearful": "fear",
    "disgust": "disgust", "disgusted": "disgust",
    "anger": "anger", "angry": "anger",
    "contempt": "contempt",
}
#: AffectNet's expression codes (Mollahosseini et al., "AffectNet", IEEE TAC 2017; 0-7 as read by
#: SainingZhang/DDAMFN: DDAMFN++/affectnet8_test.py): 0-7 are the canonical classes in order; 8-10 are
#: not expressions.
AFFECTNET_CODES: Tuple[str, ...] = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt",
                                    "None", "Uncertain", "Non-face")
#: FER2013's emotion 0..6 (Kaggle "Challenges in Representation Learning: Facial Expression Recognition
#: Challenge" data description), in ig3d's words.
FER2013_LABELS: Tuple[str, ...] = ("anger", "disgust", "fear", "happy", "sad", "surprise", "neutral")

_SPLITS: Dict[str, str] = {"train": "train", "training": "train", "val": "val", "valid": "val",
                           "validation": "val", "test": "test", "testing": "test"}
_FER_USAGE: Dict[str, str] = {"training": "train", "publictest": "val", "privatetest": "test"}
_FER_SIZE = 48
_RAFDB_LISTS = ("list_patition_label.txt", "list_partition_label.txt")
_NO_VA = (math.nan, math.nan)
_CONTEMPT = CANONICAL_LABELS.index("contempt")


class Sample(NamedTuple):
    """One labelled image. ``label`` indexes ``Dataset.class_names`` (-1: no label); ``va`` is
    (valence, arousal) in [-1, 1] or (nan, nan); ``split`` is "train", "val", "test" or "" (the
    dataset has no split); ``row`` is the 1-based row in the source (see the layouts)."""

    path: str
    label: int
    va: Tuple[float, float]
    split: str
    row: int


class RowError(NamedTuple):
    """A row of the source that did not become a sample, and why."""

    source: str
    row: int
    path: str
    reason: str


class Dataset:
    """A labelled dataset opened by :func:`open_dataset`.

    Attributes: ``kind`` (one of :data:`KINDS`), ``root`` (the dataset's folder: the folder given, or
    the folder holding the file given), ``source`` (the path given), ``class_names``, ``samples``
    (list of :class:`Sample`) and ``errors`` (list of :class:`RowError`).
    """

    def __init__(self, kind: str, root: Path, source: Path, class_names: Sequence[str], samples: List[Sample],
                 errors: List[RowError], pixels: Optional[np.ndarray] = None,
                 pixel_rows: Optional[Dict[int, int]] = None):
        self.kind = kind
        self.root = root
        self.source = source
        self.class_names: Tuple[str, ...] = tuple(class_names)
        self.samples = samples
        self.errors = errors
        self._pixels = pixels  # FER2013: [N, 48, 48] uint8, indexed through pixel_rows (source row -> index)
        self._pixel_rows = pixel_rows or {}

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return f"<Dataset {self.summary()}>"

    @property
    def has_labels(self) -> bool:
        """True when at least one sample has a class label."""
        return any(s.label >= 0 for s in self.samples)

    @property
    def has_va(self) -> bool:
        """True when at least one sample has valence and arousal."""
        return any(not math.isnan(s.va[0]) for s in self.samples)

    def split_counts(self) -> Dict[str, int]:
        """Number of samples per split, in the order train, val, test, "" (only the splits present)."""
        counts = Counter(s.split for s in self.samples)
        return {k: counts[k] for k in ("train", "val", "test", "") if counts[k]}

    def load(self, i: int) -> np.ndarray:
        """The image of ``samples[i]`` as an RGB uint8 ``[H, W, 3]`` array (a fresh copy).

        Raises ``FileNotFoundError`` for a file that is gone and ``ValueError`` naming the file for one
        that does not decode (:func:`ig3d.io.load_image`)."""
        sample = self.samples[i]
        if self._pixels is not None:
            index = self._pixel_rows.get(sample.row)
            if index is None:
                raise ValueError(f"{sample.path}: no pixels were read for row {sample.row}")
            return np.repeat(self._pixels[index][:, :, None], 3, axis=2)
        return load_image(sample.path)

    def summary(self) -> str:
        """One line: kind, samples per split, classes, number of bad rows."""
        counts = self.split_counts()
        if not counts:
            splits = ""
        elif list(counts) == [""]:
            splits = " (no split)"
        else:
            splits = " (" + ", ".join(f"{k or 'no split'} {n}" for k, n in counts.items()) + ")"
        va = ", with valence/arousal" if self.has_va else ""
        return (f"{self.kind}: {len(self.samples)} samples{splits}, {len(self.class_names)} classes "
                f"({', '.join(self.class_names)}){va}, {len(self.errors)} bad rows")


# --------------------------------------------------------------------------------------------
# Classes.

class _Classes:
    """How labels map to ``class_names`` for one dataset: canonical (7 or 8, or 8-if-contempt-seen)
    or custom names."""

    def __init__(self, classes, kind: str, default: Optional[int]):
        self.custom: Optional[Tuple[str, ...]] = None
        self.count: Optional[int] = default  # None: 8 if a contempt row is seen, else 7
        if classes is None:
            return
        if isinstance(classes, bool):
            raise ValueError(f"classes: expected None, 7, 8 or a list of class names, got {classes!r}")
        if isinstance(classes, (int, np.integer)):
            if int(classes) not in (7, 8):
                raise ValueError(f"classes: expected 7 or 8 canonical classes, got {classes!r}")
            self.count = int(classes)
            return
        if isinstance(classes, (str, bytes)) or not isinstance(classes, Iterable):
            raise ValueError(f"classes: expected None, 7, 8 or a list of class names, got {classes!r}")
        names = list(classes)
        if kind not in ("imagefolder", "csv"):
            raise ValueError(f"classes: a list of class names is only for 'imagefolder' and 'csv' datasets, "
                             f"not {kind!r} (use 7 or 8)")
        if not names or not all(isinstance(n, str) and n.strip() for n in names):
            raise ValueError(f"classes: expected a non-empty list of non-empty strings, got {classes!r}")
        lowered = [n.strip().lower() for n in names]
        dupes = sorted({n for n in lowered if lowered.count(n) > 1})
        if dupes:
            raise ValueError(f"classes: duplicate names (case-insensitive): {dupes}")
        self.custom = tuple(n.strip() for n in names)
        self._custom_index = {n: i for i, n in enumerate(lowered)}

    def by_name(self, name: str) -> Tuple[int, str]:
        """(label, "") or (-1, reason) for a class name."""
        key = name.strip().lower()
        if self.custom is not None:
            if key in self._custom_index:
                return self._custom_index[key], ""
            return -1, f"unknown label {name!r} (classes: {', '.join(self.custom)})"
        if key in LABEL_SYNONYMS:
            return self.canonical(CANONICAL_LABELS.index(LABEL_SYNONYMS[key]))
        return -1, f"unknown label {name!r} (expected one of {', '.join(CANONICAL_LABELS)} or a synonym)"

    def by_index(self, index: int) -> Tuple[int, str]:
        """(label, "") or (-1, reason) for an integer label (an index into the class list)."""
        n = len(self.custom) if self.custom is not None else len(CANONICAL_LABELS)
        if not 0 <= index < n:
            return -1, f"label index {index} outside 0..{n - 1}"
        return (index, "") if self.custom is not None else self.canonical(index)

    def canonical(self, index: int) -> Tuple[int, str]:
        """(label, "") or (-1, reason) for a canonical index 0..7."""
        if index == _CONTEMPT and self.count == 7:
            return -1, "contempt excluded (7 classes)"
        return index, ""

    def names(self, samples: List[Sample]) -> Tuple[str, ...]:
        if self.custom is not None:
            return self.custom
        count = self.count
        if count is None:
            count = 8 if any(s.label == _CONTEMPT for s in samples) else 7
        return AFFECTNET8_LABELS if count == 8 else AFFECTNET7_LABELS


# --------------------------------------------------------------------------------------------
# Helpers.

def _is_image(name: str) -> bool:
    return name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith(".")


def _sort_key(name: str):
    """Numbers in numeric order (AffectNet ids), then other names in byte order."""
    stem = os.path.splitext(name)[0]
    return (0, int(stem), name) if stem.isdigit() else (1, 0, name)


def _images_under(folder: str) -> List[str]:
    """Image files anywhere under ``folder``, sorted (folders walked in sorted order)."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out.extend(os.path.join(dirpath, f) for f in sorted(filenames, key=_sort_key) if _is_image(f))
    return out


def _subdirs(folder: Path) -> List[Path]:
    return sorted((d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")), key=lambda d: d.name)


def _parse_va(v: str, a: str, what: Tuple[str, str] = ("valence", "arousal"),
              missing: Optional[float] = None) -> Tuple[Tuple[float, float], str]:
    """((valence, arousal), "") or (_NO_VA, reason). Both empty (or both ``missing``) -> (nan, nan)."""
    v, a = v.strip(), a.strip()
    if not v and not a:
        return _NO_VA, ""
    if not v or not a:
        return _NO_VA, f"{what[0] if v else what[1]} given without {what[1] if v else what[0]}"
    out = []
    for name, text in zip(what, (v, a)):
        try:
            x = float(text)
        except ValueError:
            return _NO_VA, f"{name} {text!r} is not a number"
        out.append(x)
    if missing is not None and (out[0] == missing or out[1] == missing):
        if out[0] == out[1]:
            return _NO_VA, ""
        return _NO_VA, f"only one of {what[0]}/{what[1]} is {missing:g} (no value): {v}, {a}"
    for name, x, text in zip(what, out, (v, a)):
        if not math.isfinite(x) or not -1.0 <= x <= 1.0:
            return _NO_VA, f"{name} {text} outside [-1, 1]"
    return (out[0], out[1]), ""


def _read_header(path: Path) -> List[str]:
    """The first row of a CSV file, lowercased and stripped."""
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            row = next(csv.reader(f), None)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not a UTF-8 text CSV file ({e})") from None
    if not row:
        raise ValueError(f"{path}: empty file (expected a CSV header)")
    return [c.strip().lower() for c in row]


def _csv_rows(path: Path, header: Sequence[str], errors: List[RowError],
              row_path: Callable[[int], str] = lambda line: ""):
    """(line, row) for every data row of a CSV file after the header; blank lines skipped, and a
    row without one field per header column reported in ``errors`` (its path: ``row_path(line)``)
    and skipped."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        next(reader, None)
        line = reader.line_num
        for row in reader:
            start, line = line + 1, reader.line_num  # a quoted field may span lines: report the first
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if len(row) != len(header):
                errors.append(RowError(str(path), start, row_path(start),
                                       f"expected {len(header)} fields ({','.join(header)}), got {len(row)}"))
                continue
            yield start, row


# --------------------------------------------------------------------------------------------
# Detection.

def _is_affectnet_split(d: Path) -> bool:
    return (d / "images").is_dir() and (d / "annotations").is_dir()


def _rafdb_list(root: Path) -> Optional[Path]:
    for name in _RAFDB_LISTS:
        if (root / "EmoLabel" / name).is_file():
            return root / "EmoLabel" / name
    return None


def detect_kind(path: PathLike) -> str:
    """The layout of ``path`` (one of :data:`KINDS`), from what is on disk.

    A file: RAF-DB's list file -> ``rafdb``; a CSV whose header has ``emotion`` and ``pixels`` ->
    ``fer2013``, ``number`` and ``exp`` -> ``affectnet``, ``path`` -> ``csv``. A folder: with
    ``EmoLabel/list_patition_label.txt`` -> ``rafdb``; with ``images/`` and ``annotations/`` (itself
    or in ``train_set/`` / ``val_set/``) -> ``affectnet``; anything else -> ``imagefolder``.
    """
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: '{p}'")
    if p.is_dir():
        if _rafdb_list(p) is not None:
            return "rafdb"
        if _is_affectnet_split(p) or any(_is_affectnet_split(p / s) for s in ("train_set", "val_set")):
            return "affectnet"
        return "imagefolder"
    if p.name.lower() in _RAFDB_LISTS:
        return "rafdb"
    if p.suffix.lower() != ".csv":
        raise ValueError(f"'{p}': not a dataset: expected a folder, a .csv file or RAF-DB's "
                         f"{_RAFDB_LISTS[0]}")
    header = _read_header(p)
    if {"emotion", "pixels"} <= set(header):
        return "fer2013"
    if {"number", "exp"} <= set(header):
        return "affectnet"
    if "path" in header:
        return "csv"
    raise ValueError(f"'{p}': unknown CSV header {header}: expected path,label[,valence,arousal][,split], "
                     f"emotion,pixels,Usage (FER2013) or number,exp,val,aro (AffectNet)")


# --------------------------------------------------------------------------------------------
# Readers. Each returns (samples, errors) and, for FER2013, the pixels.

def _read_imagefolder(root: Path, cls: _Classes) -> Tuple[List[Sample], List[RowError]]:
    samples: List[Sample] = []
    errors: List[RowError] = []
    top = _subdirs(root)
    split_dirs = [d for d in top if d.name.lower() in _SPLITS]
    custom = {n.lower() for n in cls.custom} if cls.custom is not None else set()
    if split_dirs and not any(d.name.lower() in custom for d in split_dirs):
        groups = [(d, _SPLITS[d.name.lower()]) for d in split_dirs]
        for d in top:
            if d not in split_dirs:
                for r, f in enumerate(_images_under(str(d)), 1):
                    errors.append(RowError(str(d), r, f, f"folder {d.name!r} is not a split "
                                                         f"(expected train, val or test beside the others)"))
        loose = sorted((f for f in os.listdir(root) if _is_image(f) and (root / f).is_file()), key=_sort_key)
        for r, f in enumerate(loose, 1):
            errors.append(RowError(str(root), r, str(root / f), "image not inside a split folder"))
    else:
        groups = [(root, "")]
    for base, split in groups:
        loose = sorted((f for f in os.listdir(base) if _is_image(f) and (base / f).is_file()), key=_sort_key)
        for r, f in enumerate(loose, 1):
            errors.append(RowError(str(base), r, str(base / f), "image not inside a class folder"))
        for d in _subdirs(base):
            if d.name.isdigit() and cls.custom is None:
                label, reason = -1, (f"unknown label {d.name!r} (numbered class folders are ambiguous: "
                                     f"AffectNet and RAF-DB number classes differently; name the folders "
                                     f"or pass classes=)")
            else:
                label, reason = cls.by_name(d.name)
            for r, f in enumerate(_images_under(str(d)), 1):
                if reason:
                    errors.append(RowError(str(d), r, f, reason))
                else:
                    samples.append(Sample(f, label, _NO_VA, split, r))
    return samples, errors


def _read_csv(path: Path, cls: _Classes) -> Tuple[List[Sample], List[RowError]]:
    header = _read_header(path)
    col = {name: i for i, name in reversed(list(enumerate(header)))}  # first occurrence wins
    if "path" not in col:
        raise ValueError(f"{path}: the header {header} has no 'path' column "
                         f"(expected path,label[,valence,arousal][,split])")
    has_va = "valence" in col or "arousal" in col
    if has_va and not ("valence" in col and "arousal" in col):
        raise ValueError(f"{path}: the header has {'valence' if 'valence' in col else 'arousal'} "
                         f"without {'arousal' if 'valence' in col else 'valence'}")
    if "label" not in col and not has_va:
        raise ValueError(f"{path}: the header {header} has neither 'label' nor 'valence','arousal' "
                         f"(expected path,label[,valence,arousal][,split])")
    base = path.parent
    samples: List[Sample] = []
    errors: List[RowError] = []
    for line, row in _csv_rows(path, header, errors):
        def bad(reason: str, p: str = "") -> None:
            errors.append(RowError(str(path), line, p, reason))

        rel = row[col["path"]].strip()
        if not rel:
            bad("empty path")
            continue
        full = os.path.abspath(os.path.join(base, rel))
        label, reason = -1, ""
        text = row[col["label"]].strip() if "label" in col else ""
        if text:
            if text.lstrip("+-").isdigit():
                label, reason = cls.by_index(int(text))
            else:
                label, reason = cls.by_name(text)
        if reason:
            bad(reason, full)
            continue
        va, reason = _parse_va(row[col["valence"]], row[col["arousal"]]) if has_va else (_NO_VA, "")
        if reason:
            bad(reason, full)
            continue
        if label < 0 and math.isnan(va[0]):
            bad("no label and no valence/arousal", full)
            continue
        split = ""
        if "split" in col:
            value = row[col["split"]].strip()
            if value.lower() not in _SPLITS:
                bad(f"unknown split {value!r} (expected train, val or test)", full)
                continue
            split = _SPLITS[value.lower()]
        if not os.path.isfile(full):
            bad("missing file", full)
            continue
        samples.append(Sample(full, label, va, split, line))
    return samples, errors


def _affectnet_label(code_text: str, cls: _Classes) -> Tuple[int, str]:
    text = code_text.strip()
    try:
        code = int(float(text)) if text and float(text).is_integer() else None
    except ValueError:
        code = None
    if code is None:
        return -1, f"exp {text!r} is not an integer code"
    if 8 <= code <= 10:
        return -1, f"exp code {code} ({AFFECTNET_CODES[code]}) is not an expression"
    if not 0 <= code <= 7:
        return -1, f"unknown exp code {code} (AffectNet codes are 0..10)"
    return cls.canonical(code)


def _affectnet_split_of(name: str) -> Tuple[str, str]:
    """(folder set name, split) from a CSV or folder name: train* -> train_set/train, val* -> val_set/test."""
    low = name.lower()
    if low.startswith("train"):
        return "train_set", "train"
    if low.startswith("val"):
        return "val_set", "test"
    return "", ""


def _read_affectnet_csv(path: Path, cls: _Classes, images: Optional[Path]) -> Tuple[List[Sample], List[RowError]]:
    header = _read_header(path)
    col = {name: i for i, name in reversed(list(enumerate(header)))}
    need = [c for c in ("number", "exp", "val", "aro") if c not in col]
    if need:
        raise ValueError(f"{path}: the header {header} lacks {need} (expected number,exp,val,aro)")
    set_name, split = _affectnet_split_of(path.name)
    if images is None:
        tried = [path.parent / set_name / "images", path.parent.parent / set_name / "images"] if set_name else []
        tried.append(path.parent / "images")
        images = next((d for d in tried if d.is_dir()), None)
        if images is None:
            raise ValueError(f"{path}: no image folder for this AffectNet annotation CSV; looked in "
                             f"{', '.join(str(d) for d in tried)}; pass images=")
    elif not images.is_dir():
        raise FileNotFoundError(f"images: folder not found: '{images}'")
    if not split:
        split = _affectnet_split_of(images.parent.name)[1]
    by_stem: Dict[str, List[str]] = defaultdict(list)
    for f in _images_under(str(images)):
        by_stem[os.path.splitext(os.path.basename(f))[0]].append(f)
    samples: List[Sample] = []
    errors: List[RowError] = []
    for line, row in _csv_rows(path, header, errors):
        def bad(reason: str, p: str = "") -> None:
            errors.append(RowError(str(path), line, p, reason))

        number = row[col["number"]].strip()
        expected = str(images / f"{number}.jpg")
        if not number:
            bad("empty number")
            continue
        label, reason = _affectnet_label(row[col["exp"]], cls)
        if reason:
            bad(reason, expected)
            continue
        va, reason = _parse_va(row[col["val"]], row[col["aro"]], ("val", "aro"), missing=-2.0)
        if reason:
            bad(reason, expected)
            continue
        found = by_stem.get(number, [])
        if not found:
            bad(f"missing file: no image named '{number}.*' under {images}", expected)
            continue
        if len(found) > 1:
            bad(f"{len(found)} images named '{number}.*' under {images}: {', '.join(found[:3])}", found[0])
            continue
        samples.append(Sample(found[0], label, va, split, line))
    return samples, errors


def _npy_scalar(p: Path) -> str:
    """The value of a 0-d (or one-element) .npy file as text; ValueError when it is not one."""
    a = np.load(p, allow_pickle=False)
    if a.size != 1:
        raise ValueError(f"expected one value, got shape {list(a.shape)}")
    v = a.reshape(()).item()
    if isinstance(v, bytes):
        v = v.decode("utf-8", "replace")
    return str(v)


def _read_affectnet_folders(root: Path, cls: _Classes) -> Tuple[List[Sample], List[RowError]]:
    if _is_affectnet_split(root):
        parts = [(root, _affectnet_split_of(root.name)[1])]
    else:
        parts = [(root / s, sp) for s, sp in (("train_set", "train"), ("val_set", "test"))
                 if _is_affectnet_split(root / s)]
        if not parts:
            raise ValueError(f"'{root}': no AffectNet split folder (train_set/ or val_set/ with images/ and "
                             f"annotations/, or images/ and annotations/ here)")
    samples: List[Sample] = []
    errors: List[RowError] = []
    for folder, split in parts:
        img_dir, ann_dir = folder / "images", folder / "annotations"
        with os.scandir(img_dir) as it:
            image_files = {os.path.splitext(e.name)[0]: e.name for e in it if _is_image(e.name) and e.is_file()}
        with os.scandir(ann_dir) as it:
            ann_ids = {e.name[:-len("_exp.npy")] for e in it if e.name.endswith("_exp.npy")}
        for row, ident in enumerate(sorted(image_files.keys() | ann_ids, key=_sort_key), 1):
            image = str(img_dir / image_files[ident]) if ident in image_files else str(img_dir / f"{ident}.jpg")

            def bad(reason: str) -> None:
                errors.append(RowError(str(folder), row, image, reason))

            if ident not in image_files:
                bad(f"missing file (annotations/{ident}_exp.npy has no image)")
                continue
            values = {}
            for key in ("exp", "val", "aro"):
                p = ann_dir / f"{ident}_{key}.npy"
                if not p.is_file():
                    bad(f"missing annotation annotations/{p.name}")
                    break
                try:
                    values[key] = _npy_scalar(p)
                except (ValueError, OSError) as e:
                    bad(f"unreadable annotation annotations/{p.name}: {e}")
                    break
            if len(values) < 3:
                continue
            label, reason = _affectnet_label(values["exp"], cls)
            if not reason:
                va, reason = _parse_va(values["val"], values["aro"], ("val", "aro"), missing=-2.0)
            if reason:
                bad(reason)
                continue
            samples.append(Sample(image, label, va, split, row))
    return samples, errors


def _read_rafdb(list_file: Path, cls: _Classes, images: Optional[Path]) -> Tuple[List[Sample], List[RowError]]:
    root = list_file.parent.parent
    if images is not None:
        if not images.is_dir():
            raise FileNotFoundError(f"images: folder not found: '{images}'")
        folders, style = [images], "either"
    elif (root / "Image" / "aligned").is_dir():
        folders, style = [root / "Image" / "aligned"], "aligned"
    elif (root / "Image" / "original").is_dir():
        folders, style = [root / "Image" / "original"], "original"
    else:
        raise ValueError(f"'{root}': RAF-DB images not found: expected Image/aligned/ or Image/original/ "
                         f"beside EmoLabel/ (or pass images=)")
    folder = folders[0]
    samples: List[Sample] = []
    errors: List[RowError] = []
    with open(list_file, encoding="utf-8-sig") as f:
        for line, text in enumerate(f, 1):
            fields = text.split()
            if not fields:
                continue

            def bad(reason: str, p: str = "") -> None:
                errors.append(RowError(str(list_file), line, p, reason))

            if len(fields) != 2:
                bad(f"expected '<image name> <label 1..7>', got {text.strip()!r}")
                continue
            name, label_text = fields
            stem, ext = os.path.splitext(name)
            aligned = str(folder / f"{stem}_aligned{ext or '.jpg'}")
            original = str(folder / name)
            candidates = {"aligned": [aligned], "original": [original], "either": [aligned, original]}[style]
            if not label_text.isdigit() or not 1 <= int(label_text) <= len(RAFDB_LABELS):
                bad(f"label {label_text!r} outside 1..{len(RAFDB_LABELS)}", candidates[0])
                continue
            label = CANONICAL_LABELS.index(RAFDB_LABELS[int(label_text) - 1])  # never contempt
            prefix = name.split("_", 1)[0].lower()
            if prefix not in ("train", "test"):
                bad(f"unknown split prefix in {name!r} (expected train_ or test_)", candidates[0])
                continue
            path = next((c for c in candidates if os.path.isfile(c)), None)
            if path is None:
                bad("missing file", candidates[0])
                continue
            samples.append(Sample(path, label, _NO_VA, prefix, line))
    return samples, errors


def _parse_pixels(text: str) -> Tuple[Optional[np.ndarray], str]:
    n = _FER_SIZE * _FER_SIZE
    text = text.strip()
    if not text:
        return None, f"expected {n} pixel values, got 0"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", DeprecationWarning)  # numpy 1.x warns on bad data instead of raising
            values = np.fromstring(text, dtype=np.int64, sep=" ")
    except (ValueError, DeprecationWarning):
        values = None
    if values is None or values.size != n:
        count = len(text.split())
        if count != n:
            return None, f"expected {n} pixel values, got {count}"
        return None, "pixels are not all integers"
    if values.min() < 0 or values.max() > 255:
        return None, f"pixel values outside 0..255 ({values.min()}..{values.max()})"
    return values.astype(np.uint8).reshape(_FER_SIZE, _FER_SIZE), ""


def _read_fer2013(path: Path, cls: _Classes) -> Tuple[List[Sample], List[RowError], np.ndarray, Dict[int, int]]:
    header = _read_header(path)
    col = {name: i for i, name in reversed(list(enumerate(header)))}
    need = [c for c in ("emotion", "pixels") if c not in col]
    if need:
        raise ValueError(f"{path}: the header {header} lacks {need} (expected emotion,pixels,Usage)")
    samples: List[Sample] = []
    errors: List[RowError] = []
    pixels = np.empty((1024, _FER_SIZE, _FER_SIZE), np.uint8)
    rows: Dict[int, int] = {}
    for line, row in _csv_rows(path, header, errors, lambda line: f"{path}#row={line}"):
        ident = f"{path}#row={line}"

        def bad(reason: str) -> None:
            errors.append(RowError(str(path), line, ident, reason))

        text = row[col["emotion"]].strip()
        if not text.isdigit() or not 0 <= int(text) < len(FER2013_LABELS):
            bad(f"emotion {text!r} outside 0..{len(FER2013_LABELS) - 1}")
            continue
        label = CANONICAL_LABELS.index(FER2013_LABELS[int(text)])  # never contempt
        split = ""
        if "usage" in col:
            usage = row[col["usage"]].strip()
            if usage.lower() not in _FER_USAGE:
                bad(f"unknown Usage {usage!r} (expected Training, PublicTest or PrivateTest)")
                continue
            split = _FER_USAGE[usage.lower()]
        image, reason = _parse_pixels(row[col["pixels"]])
        if reason:
            bad(reason)
            continue
        if len(rows) == len(pixels):
            pixels = np.concatenate([pixels, np.empty_like(pixels)])
        pixels[len(rows)] = image
        rows[line] = len(rows)
        samples.append(Sample(ident, label, _NO_VA, split, line))
    return samples, errors, pixels[:len(rows)].copy(), rows


# --------------------------------------------------------------------------------------------

def open_dataset(path: PathLike, kind: str = "auto", classes: Union[None, int, Sequence[str]] = None, *,
                 images: Optional[PathLike] = None) -> Dataset:
    """Open a labelled expression dataset (see the module docstring for the layouts).

    path: a folder (ImageFolder, AffectNet per-image, RAF-DB root) or a file (CSV, AffectNet annotation
    CSV, FER2013 CSV, RAF-DB list file). kind: "auto" (:func:`detect_kind`) or one of :data:`KINDS`.
    classes: None, 7, 8, or a list of custom class names (imagefolder and csv). images: the image
    folder of an AffectNet annotation CSV or of RAF-DB.

    Raises ``FileNotFoundError`` for a missing path and ``ValueError`` for an unknown kind, a path
    that is not of that kind, a bad ``classes`` or a file without the expected header. Bad rows do not
    raise: they are listed in ``Dataset.errors``.
    """
    p = Path(path).absolute()
    if kind != "auto" and kind not in KINDS:
        raise ValueError(f"kind: expected 'auto' or one of {', '.join(KINDS)}, got {kind!r}")
    if not p.exists():
        raise FileNotFoundError(f"dataset not found: '{p}'")
    if kind == "auto":
        kind = detect_kind(p)
    if kind in ("csv", "fer2013") and not p.is_file():
        raise ValueError(f"kind={kind!r} needs a CSV file, got the folder '{p}'")
    if kind == "imagefolder" and not p.is_dir():
        raise ValueError(f"kind='imagefolder' needs a folder, got the file '{p}'")
    img = Path(images).absolute() if images is not None else None
    if img is not None and not (kind == "rafdb" or (kind == "affectnet" and p.is_file())):
        raise ValueError("images= is only for an AffectNet annotation CSV or RAF-DB")
    cls = _Classes(classes, kind, default=8 if kind == "affectnet" else (None if kind in ("imagefolder", "csv")
                                                                          else 7))
    pixels, pixel_rows = None, None
    root = p if p.is_dir() else p.parent
    if kind == "imagefolder":
        samples, errors = _read_imagefolder(p, cls)
    elif kind == "csv":
        samples, errors = _read_csv(p, cls)
    elif kind == "affectnet":
        samples, errors = _read_affectnet_csv(p, cls, img) if p.is_file() else _read_affectnet_folders(p, cls)
    elif kind == "rafdb":
        list_file = p if p.is_file() else _rafdb_list(p)
        if list_file is None:
            raise ValueError(f"'{p}': not RAF-DB: no EmoLabel/{_RAFDB_LISTS[0]}")
        root = list_file.parent.parent
        samples, errors = _read_rafdb(list_file, cls, img)
    else:
        samples, errors, pixels, pixel_rows = _read_fer2013(p, cls)
    return Dataset(kind, root, p, cls.names(samples), samples, errors, pixels, pixel_rows)
