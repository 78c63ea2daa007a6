"""ig3d.datasets: tiny copies of each layout built in tmp_path, read back through open_dataset.

The expected class of every row is written here by hand from each dataset's published order (RAF-DB
1 = Surprise ... 7 = Neutral; FER2013 0 = Angry ... 6 = Neutral; AffectNet 0 = Neutral ... 7 =
Contempt), not taken from ig3d's tables, and images are compared with what Pillow decodes from the
same files. Most tests use synthetic numpy images; the ones marked with the ``faces`` fixture use the
shared photos (astronaut.png and single_face.jpg are happy, 0-f1-su-ph.jpg is surprise).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ig3d.datasets import CANONICAL_LABELS, Dataset, RowError, Sample, detect_kind, open_dataset


def _image(path: Path, seed: int, size=(20, 16)) -> np.ndarray:
    """Write a random RGB image (PNG: lossless, so the pixels can be compared) and return its pixels."""
    path.parent.mkdir(parents=True, exist_ok=True)
    a = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(a).save(path)
    return a


def _names(ds: Dataset):
    return [ds.class_names[s.label] if s.label >= 0 else None for s in ds.samples]


def _reasons(ds: Dataset):
    return [(Path(e.source).name, e.row, e.reason) for e in ds.errors]


def _write_csv(path: Path, rows) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        csv.writer(f).writerows(rows)
    return path


def test_canonical_labels_are_affectnet_order():
    assert CANONICAL_LABELS == ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")


# --------------------------------------------------------------------------------------------
# ImageFolder.

def test_imagefolder_labels_synonyms_and_pixels(tmp_path):
    pix = {}
    pix["Happiness/b.png"] = _image(tmp_path / "Happiness" / "b.png", 1)
    pix["Happiness/a.png"] = _image(tmp_path / "Happiness" / "a.png", 2)
    pix["surprised/x.png"] = _image(tmp_path / "surprised" / "x.png", 3)
    pix["ANGRY/y.png"] = _image(tmp_path / "ANGRY" / "y.png", 4)
    pix["neutral/sub/z.png"] = _image(tmp_path / "neutral" / "sub" / "z.png", 5)
    (tmp_path / "neutral" / "notes.txt").write_text("not an image")
    ds = open_dataset(tmp_path)
    assert ds.kind == "imagefolder" and ds.root == tmp_path and len(ds) == 5
    assert ds.class_names == CANONICAL_LABELS[:7]  # no contempt folder
    rel = [str(Path(s.path).relative_to(tmp_path)) for s in ds.samples]
    assert rel == ["ANGRY/y.png", "Happiness/a.png", "Happiness/b.png", "neutral/sub/z.png", "surprised/x.png"]
    assert _names(ds) == ["anger", "happy", "happy", "neutral", "surprise"]
    assert [s.row for s in ds.samples] == [1, 1, 2, 1, 1]
    assert all(s.split == "" and math.isnan(s.va[0]) and math.isnan(s.va[1]) for s in ds.samples)
    assert ds.has_labels and not ds.has_va and ds.errors == []
    for i, r in enumerate(rel):
        img = ds.load(i)
        assert img.dtype == np.uint8 and img.shape == pix[r].shape
        np.testing.assert_array_equal(img, pix[r])
    assert ds.summary() == ("imagefolder: 5 samples (no split), 7 classes (neutral, happy, sad, surprise, fear, "
                            "disgust, anger), 0 bad rows")


def test_imagefolder_bad_folders_are_reported(tmp_path):
    _image(tmp_path / "happy" / "1.png", 1)
    _image(tmp_path / "xyz" / "1.png", 2)
    _image(tmp_path / "xyz" / "2.jpg", 3)
    _image(tmp_path / "3" / "1.png", 4)
    _image(tmp_path / "loose.png", 5)
    ds = open_dataset(tmp_path)
    assert _names(ds) == ["happy"]
    got = _reasons(ds)
    assert got[0] == (tmp_path.name, 1, "image not inside a class folder")
    assert got[1][:2] == ("3", 1) and "numbered class folders are ambiguous" in got[1][2]
    assert got[2:] == [("xyz", 1, "unknown label 'xyz' (expected one of neutral, happy, sad, surprise, fear, "
                                  "disgust, anger, contempt or a synonym)"),
                       ("xyz", 2, got[3][2])]
    assert ds.errors[3].path == str(tmp_path / "xyz" / "2.jpg")
    assert ds.summary().endswith("4 bad rows")


def test_imagefolder_contempt_and_classes(tmp_path):
    _image(tmp_path / "contempt" / "1.png", 1)
    _image(tmp_path / "sad" / "1.png", 2)
    ds = open_dataset(tmp_path)
    assert ds.class_names == CANONICAL_LABELS and _names(ds) == ["contempt", "sad"]
    ds7 = open_dataset(tmp_path, classes=7)
    assert ds7.class_names == CANONICAL_LABELS[:7] and _names(ds7) == ["sad"]
    assert _reasons(ds7) == [("contempt", 1, "contempt excluded (7 classes)")]
    assert open_dataset(tmp_path / "sad", kind="imagefolder").errors[0].reason == "image not inside a class folder"


def test_imagefolder_splits(tmp_path):
    _image(tmp_path / "train" / "happy" / "1.png", 1)
    _image(tmp_path / "train" / "sad" / "1.png", 2)
    _image(tmp_path / "Validation" / "happy" / "1.png", 3)
    _image(tmp_path / "test" / "fearful" / "1.png", 4)
    _image(tmp_path / "extra" / "happy" / "1.png", 5)
    _image(tmp_path / "stray.png", 6)
    ds = open_dataset(tmp_path)
    assert [(s.split, ds.class_names[s.label]) for s in ds.samples] == [
        ("val", "happy"), ("test", "fear"), ("train", "happy"), ("train", "sad")]
    assert ds.split_counts() == {"train": 2, "val": 1, "test": 1}
    reasons = _reasons(ds)
    assert reasons[0][0] == "extra" and "not a split" in reasons[0][2]
    assert reasons[1] == (tmp_path.name, 1, "image not inside a split folder")
    assert "4 samples (train 2, val 1, test 1)" in ds.summary()


def test_imagefolder_custom_classes(tmp_path):
    _image(tmp_path / "cat" / "1.png", 1)
    _image(tmp_path / "DOG" / "1.png", 2)
    _image(tmp_path / "bird" / "1.png", 3)
    ds = open_dataset(tmp_path, classes=["dog", "Cat"])
    assert ds.class_names == ("dog", "Cat")
    assert _names(ds) == ["dog", "Cat"]  # DOG before cat in the listing
    assert _reasons(ds) == [("bird", 1, "unknown label 'bird' (classes: dog, Cat)")]
    with pytest.raises(ValueError, match=r"duplicate names.*\['dog'\]"):
        open_dataset(tmp_path, classes=["dog", "Dog"])
    with pytest.raises(ValueError, match="non-empty list"):
        open_dataset(tmp_path, classes=[])
    with pytest.raises(ValueError, match="7 or 8"):
        open_dataset(tmp_path, classes=6)
    with pytest.raises(ValueError, match="expected None, 7, 8 or a list"):
        open_dataset(tmp_path, classes="dog")


# --------------------------------------------------------------------------------------------
# Generic CSV.

def test_csv_rows_labels_va_splits_and_errors(tmp_path):
    a = _image(tmp_path / "img" / "a.png", 1)
    _image(tmp_path / "img" / "b.png", 2)
    other = tmp_path.parent / f"{tmp_path.name}_abs.png"
    _image(other, 3)
    rows = [
        ["Path", "Label", "Valence", "Arousal", "Split"],              # line 1
        ["img/a.png", "Happiness", "0.5", "-0.25", "training"],        # 2: ok, synonym
        ["img/b.png", "3", "", "", "val"],                             # 3: ok, index -> surprise
        ["img/a.png", "", "0.1", "0.2", "test"],                       # 4: ok, VA only
        [str(other), "contempt", "", "", "Testing"],                    # 5: ok, absolute path
        ["img/a.png", "happy", "1.5", "0", "train"],                   # 6: VA out of range
        ["img/a.png", "happy", "0.5", "", "train"],                    # 7: valence without arousal
        ["img/a.png", "happy", "x", "0", "train"],                     # 8: not a number
        ["img/missing.png", "happy", "", "", "train"],                 # 9: missing file
        ["img/a.png", "bored", "", "", "train"],                       # 10: unknown label
        ["img/a.png", "8", "", "", "train"],                           # 11: index out of range
        ["img/a.png", "happy", "", "", "holdout"],                     # 12: unknown split
        ["img/a.png", "happy", "", ""],                                 # 13: too few fields
        ["img/a.png", "", "", "", "train"],                            # 14: nothing to learn
        ["", "happy", "", "", "train"],                                # 15: empty path
        ["img/a.png", "happy", "nan", "0", "train"],                   # 16: nan
    ]
    path = _write_csv(tmp_path / "labels.csv", rows)
    with open(path, "a") as f:
        f.write("\n")  # a blank line is not a row
    ds = open_dataset(path)
    assert ds.kind == "csv" and ds.root == tmp_path and ds.source == path
    assert ds.class_names == CANONICAL_LABELS  # a contempt row
    assert [s.row for s in ds.samples] == [2, 3, 4, 5]
    assert _names(ds) == ["happy", "surprise", None, "contempt"]
    assert [s.split for s in ds.samples] == ["train", "val", "test", "test"]
    assert ds.samples[0].va == (0.5, -0.25) and math.isnan(ds.samples[1].va[0]) and ds.samples[2].va == (0.1, 0.2)
    assert ds.samples[0].path == str(tmp_path / "img" / "a.png") and ds.samples[3].path == str(other)
    assert ds.has_labels and ds.has_va
    np.testing.assert_array_equal(ds.load(0), a)
    got = {e.row: e.reason for e in ds.errors}
    assert list(got) == list(range(6, 17))
    assert all(e.source == str(path) for e in ds.errors)
    assert got[6] == "valence 1.5 outside [-1, 1]"
    assert got[7] == "valence given without arousal"
    assert got[8] == "valence 'x' is not a number"
    assert got[9] == "missing file" and ds.errors[3].path == str(tmp_path / "img" / "missing.png")
    assert got[10].startswith("unknown label 'bored'")
    assert got[11] == "label index 8 outside 0..7"
    assert got[12] == "unknown split 'holdout' (expected train, val or test)"
    assert got[13] == "expected 5 fields (path,label,valence,arousal,split), got 4"
    assert got[14] == "no label and no valence/arousal"
    assert got[15] == "empty path"
    assert got[16] == "valence nan outside [-1, 1]"
    assert "4 samples (train 1, val 1, test 2)" in ds.summary() and ds.summary().endswith("11 bad rows")


def test_csv_without_split_custom_classes_and_header_errors(tmp_path):
    _image(tmp_path / "a.png", 1)
    path = _write_csv(tmp_path / "l.csv", [["path", "label"], ["a.png", "pos"], ["a.png", "1"], ["a.png", "2"]])
    ds = open_dataset(path, classes=["neg", "pos"])
    assert _names(ds) == ["pos", "pos"] and ds.samples[0].split == ""
    assert _reasons(ds) == [("l.csv", 4, "label index 2 outside 0..1")]
    ds = open_dataset(_write_csv(tmp_path / "m.csv", [["path", "label"], ["a.png", "sad"]]))
    assert ds.class_names == CANONICAL_LABELS[:7] and not ds.has_va
    with pytest.raises(ValueError, match=r"neither 'label' nor 'valence','arousal'"):
        open_dataset(_write_csv(tmp_path / "n.csv", [["path", "mood"], ["a.png", "sad"]]), kind="csv")
    with pytest.raises(ValueError, match="valence without arousal"):
        open_dataset(_write_csv(tmp_path / "o.csv", [["path", "valence"], ["a.png", "0"]]))
    with pytest.raises(ValueError, match=r"unknown CSV header \['file', 'label'\]"):
        open_dataset(_write_csv(tmp_path / "p.csv", [["file", "label"], ["a.png", "sad"]]))
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(ValueError, match="empty file"):
        open_dataset(tmp_path / "empty.csv")


# --------------------------------------------------------------------------------------------
# AffectNet.

def _npy(path: Path, value) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.array(value))


def _affectnet_item(split_dir: Path, ident: str, exp, val, aro, seed: int, image: bool = True):
    if image:
        _image(split_dir / "images" / f"{ident}.png", seed)
    for key, v in (("exp", exp), ("val", val), ("aro", aro)):
        if v is not None:
            _npy(split_dir / "annotations" / f"{ident}_{key}.npy", v)


def test_affectnet_per_image_layout(tmp_path):
    tr, va = tmp_path / "train_set", tmp_path / "val_set"
    _affectnet_item(tr, "10", "1", "0.785714", "-0.055556", 1)      # strings, as released
    _affectnet_item(tr, "2", 3, 0.25, 0.5, 2)                         # numbers; 2 sorts before 10
    _affectnet_item(tr, "3", "7", "-2", "-2", 3)                      # contempt, no VA
    _affectnet_item(tr, "4", "8", "-2", "-2", 4)                      # None: not an expression
    _affectnet_item(tr, "5", "10", "-2", "-2", 5)                     # Non-face
    _affectnet_item(tr, "6", "1", "0.5", None, 6)                     # missing aro annotation
    _affectnet_item(tr, "7", "2", "1.5", "0", 7)                      # VA outside [-1, 1]
    _affectnet_item(tr, "8", "2", "-2", "0.3", 8)                     # only one -2
    _affectnet_item(tr, "9", "4", "0", "0", 9, image=False)           # annotations without image
    _image(tr / "images" / "11.png", 11)                              # image without annotations
    np.save(tr / "annotations" / "12_exp.npy", np.array([{"a": 1}], dtype=object), allow_pickle=True)
    _npy(tr / "annotations" / "12_val.npy", "0")
    _npy(tr / "annotations" / "12_aro.npy", "0")
    _image(tr / "images" / "12.png", 12)
    _affectnet_item(va, "0", "0", "-0.176846", "-0.0776398", 20)
    ds = open_dataset(tmp_path)
    assert ds.kind == "affectnet" and ds.class_names == CANONICAL_LABELS
    assert [(Path(s.path).name, ds.class_names[s.label], s.split, s.row) for s in ds.samples] == [
        ("2.png", "surprise", "train", 1), ("3.png", "contempt", "train", 2),
        ("10.png", "happy", "train", 9), ("0.png", "neutral", "test", 1)]
    assert ds.samples[2].va == (pytest.approx(0.785714), pytest.approx(-0.055556))
    assert ds.samples[0].va == (0.25, 0.5) and all(math.isnan(v) for v in ds.samples[1].va)
    got = {e.row: e.reason for e in ds.errors if e.source == str(tr)}
    assert got == {
        3: "exp code 8 (None) is not an expression",
        4: "exp code 10 (Non-face) is not an expression",
        5: "missing annotation annotations/6_aro.npy",
        6: "val 1.5 outside [-1, 1]",
        7: "only one of val/aro is -2 (no value): -2, 0.3",
        8: "missing file (annotations/9_exp.npy has no image)",
        10: "missing annotation annotations/11_exp.npy",
        11: got[11]}
    assert got[11].startswith("unreadable annotation annotations/12_exp.npy")  # pickled: refused
    np.testing.assert_array_equal(ds.load(3), np.asarray(Image.open(va / "images" / "0.png").convert("RGB")))
    # classes=7 turns contempt into a bad row; one split folder opens alone
    ds7 = open_dataset(tmp_path, classes=7)
    assert ds7.class_names == CANONICAL_LABELS[:7] and len(ds7) == 3
    assert ("train_set", 2, "contempt excluded (7 classes)") in _reasons(ds7)
    one = open_dataset(va)
    assert one.kind == "affectnet" and [s.split for s in one.samples] == ["test"]


def test_affectnet_annotation_csv(tmp_path):
    # Ig3D's file names and header; images beside the CSV folder in <set>/images
    ann = tmp_path / "annotations"
    img = _image(tmp_path / "val_set" / "images" / "0.jpg", 1)
    Image.fromarray(img).save(tmp_path / "val_set" / "images" / "0.jpg", quality=95)
    _image(tmp_path / "val_set" / "images" / "1.png", 2)
    rows = [["number", "exp", "val", "aro"], ["0", "0", "-0.176846", "-0.0776398"], ["1", "6", "-2", "-2"],
            ["2", "4", "0", "0"], ["3", "9", "-2", "-2"], ["1", "x", "0", "0"], ["1", "12", "0", "0"], ["1", "1"]]
    path = _write_csv(ann / "val_set_annotation_without_lnd.csv", rows)
    ds = open_dataset(path)
    assert ds.kind == "affectnet" and ds.root == ann
    assert [(Path(s.path).name, ds.class_names[s.label], s.split, s.row) for s in ds.samples] == [
        ("0.jpg", "neutral", "test", 2), ("1.png", "anger", "test", 3)]
    assert ds.samples[0].va == (-0.176846, -0.0776398)
    want = np.asarray(Image.open(tmp_path / "val_set" / "images" / "0.jpg").convert("RGB"))
    np.testing.assert_array_equal(ds.load(0), want)
    got = [(e.row, e.reason) for e in ds.errors]
    assert got[0] == (4, f"missing file: no image named '2.*' under {tmp_path / 'val_set' / 'images'}")
    assert got[1:] == [(5, "exp code 9 (Uncertain) is not an expression"), (6, "exp 'x' is not an integer code"),
                       (7, "unknown exp code 12 (AffectNet codes are 0..10)"),
                       (8, "expected 4 fields (number,exp,val,aro), got 2")]

    # images=: Ig3D's classification layout (class subfolders), and a duplicate id
    imgs = tmp_path / "flat"
    _image(imgs / "1" / "5.png", 3)
    _image(imgs / "6" / "6.png", 4)
    _image(imgs / "0" / "6.jpg", 5)
    p2 = _write_csv(tmp_path / "train_set_annotation_without_lnd.csv",
                    [["number", "exp", "val", "aro"], ["5", "1", "0.5", "0.5"], ["6", "6", "0", "0"]])
    ds = open_dataset(p2, images=imgs)
    assert [(Path(s.path).name, ds.class_names[s.label], s.split) for s in ds.samples] == [("5.png", "happy", "train")]
    assert ds.errors[0].row == 3 and ds.errors[0].reason.startswith("2 images named '6.*'")
    with pytest.raises(ValueError, match=r"no image folder for this AffectNet annotation CSV.*pass images="):
        open_dataset(_write_csv(tmp_path / "x" / "other.csv", rows[:2]))
    with pytest.raises(ValueError, match="images= is only for"):
        open_dataset(tmp_path / "val_set" / "images", kind="imagefolder", images=imgs)


# --------------------------------------------------------------------------------------------
# RAF-DB.

def _rafdb(root: Path, lines, aligned: bool = True):
    root.mkdir(parents=True, exist_ok=True)
    (root / "EmoLabel").mkdir(exist_ok=True)
    (root / "EmoLabel" / "list_patition_label.txt").write_text("\n".join(lines) + "\n")
    return root / "EmoLabel" / "list_patition_label.txt"


def test_rafdb_labels_splits_and_errors(tmp_path):
    lines = ["train_00001.jpg 1", "train_00002.jpg 4", "", "test_0001.jpg 7", "test_0002.jpg 8",
             "valid_0001.jpg 2", "train_00003.jpg 5", "train_00004.jpg", "train_00005.jpg 2"]
    list_file = _rafdb(tmp_path, lines)
    pix = {}
    for stem, seed in (("train_00001", 1), ("train_00002", 2), ("test_0001", 3), ("train_00005", 5)):
        pix[stem] = _image(tmp_path / "Image" / "aligned" / f"{stem}_aligned.png", seed)
        (tmp_path / "Image" / "aligned" / f"{stem}_aligned.png").rename(
            tmp_path / "Image" / "aligned" / f"{stem}_aligned.jpg")  # PNG bytes, .jpg name: Pillow sniffs
    _image(tmp_path / "Image" / "original" / "train_00003.jpg", 6)  # not used: aligned exists
    ds = open_dataset(tmp_path)
    assert ds.kind == "rafdb" and ds.root == tmp_path and ds.class_names == CANONICAL_LABELS[:7]
    assert [(Path(s.path).name, ds.class_names[s.label], s.split, s.row) for s in ds.samples] == [
        ("train_00001_aligned.jpg", "surprise", "train", 1), ("train_00002_aligned.jpg", "happy", "train", 2),
        ("test_0001_aligned.jpg", "neutral", "test", 4), ("train_00005_aligned.jpg", "fear", "train", 9)]
    for i, stem in enumerate(("train_00001", "train_00002", "test_0001", "train_00005")):
        np.testing.assert_array_equal(ds.load(i), pix[stem])
    assert _reasons(ds) == [
        ("list_patition_label.txt", 5, "label '8' outside 1..7"),
        ("list_patition_label.txt", 6, "unknown split prefix in 'valid_0001.jpg' (expected train_ or test_)"),
        ("list_patition_label.txt", 7, "missing file"),
        ("list_patition_label.txt", 8, "expected '<image name> <label 1..7>', got 'train_00004.jpg'")]
    assert ds.errors[2].path == str(tmp_path / "Image" / "aligned" / "train_00003_aligned.jpg")
    # the list file itself opens the same dataset
    assert open_dataset(list_file).samples == ds.samples


def test_rafdb_original_images_and_images_argument(tmp_path):
    _rafdb(tmp_path, ["train_1.jpg 6", "test_1.jpg 3"])
    a = _image(tmp_path / "Image" / "original" / "train_1.png", 1)
    (tmp_path / "Image" / "original" / "train_1.png").rename(tmp_path / "Image" / "original" / "train_1.jpg")
    ds = open_dataset(tmp_path)
    assert _names(ds) == ["anger"] and _reasons(ds) == [("list_patition_label.txt", 2, "missing file")]
    np.testing.assert_array_equal(ds.load(0), a)
    other = tmp_path / "mine"
    _image(other / "test_1_aligned.png", 2)
    (other / "test_1_aligned.png").rename(other / "test_1_aligned.jpg")
    ds = open_dataset(tmp_path, images=other)
    assert _names(ds) == ["disgust"] and [s.split for s in ds.samples] == ["test"]
    empty = tmp_path / "empty"
    _rafdb(empty, ["train_1.jpg 6"])
    with pytest.raises(ValueError, match="RAF-DB images not found"):
        open_dataset(empty)


# --------------------------------------------------------------------------------------------
# FER2013.

def _pixels(a: np.ndarray) -> str:
    return " ".join(str(int(v)) for v in a.reshape(-1))


def test_fer2013(tmp_path):
    rng = np.random.default_rng(0)
    faces = [rng.integers(0, 256, (48, 48), dtype=np.uint8) for _ in range(4)]
    bad_count = _pixels(faces[0][:, :47])
    rows = [["emotion", "pixels", "Usage"],
            ["0", _pixels(faces[0]), "Training"],        # 2: anger
            ["6", _pixels(faces[1]), "PublicTest"],      # 3: neutral
            ["3", _pixels(faces[2]), "PrivateTest"],     # 4: happy
            ["5", bad_count, "Training"],                # 5: 2256 values
            ["7", _pixels(faces[3]), "Training"],        # 6: emotion outside 0..6
            ["2", _pixels(faces[3]), "Holdout"],         # 7: usage
            ["2", _pixels(faces[3])[:-1] + "x", "Training"],  # 8: not a number
            ["2", " ".join(["1"] * 2303 + ["256"]), "Training"],  # 9: outside 0..255
            ["4", _pixels(faces[3]), "Training"]]        # 10: sad
    path = _write_csv(tmp_path / "fer2013.csv", rows)
    ds = open_dataset(path)
    assert ds.kind == "fer2013" and ds.class_names == CANONICAL_LABELS[:7] and not ds.has_va
    assert [(ds.class_names[s.label], s.split, s.row) for s in ds.samples] == [
        ("anger", "train", 2), ("neutral", "val", 3), ("happy", "test", 4), ("sad", "train", 10)]
    assert ds.samples[0].path == f"{path}#row=2"
    for i, face in enumerate([faces[0], faces[1], faces[2], faces[3]]):
        img = ds.load(i)
        assert img.shape == (48, 48, 3) and img.dtype == np.uint8
        for c in range(3):
            np.testing.assert_array_equal(img[:, :, c], face)
    assert [(e.row, e.reason) for e in ds.errors] == [
        (5, "expected 2304 pixel values, got 2256"), (6, "emotion '7' outside 0..6"),
        (7, "unknown Usage 'Holdout' (expected Training, PublicTest or PrivateTest)"),
        (8, "pixels are not all integers"), (9, "pixel values outside 0..255 (1..256)")]
    assert ds.errors[0].path == f"{path}#row=5"
    # filtering the sample list keeps load() on the right image
    ds.samples = ds.samples[2:]
    np.testing.assert_array_equal(ds.load(0)[:, :, 0], faces[2])
    assert ds.summary() == ("fer2013: 2 samples (train 1, test 1), 7 classes (neutral, happy, sad, surprise, fear, "
                            "disgust, anger), 5 bad rows")


# --------------------------------------------------------------------------------------------
# Detection, kinds and load errors.

def test_detect_kind_and_explicit_kind(tmp_path):
    with pytest.raises(FileNotFoundError, match="dataset not found"):
        open_dataset(tmp_path / "nope")
    _image(tmp_path / "folder" / "happy" / "1.png", 1)
    assert detect_kind(tmp_path / "folder") == "imagefolder"
    (tmp_path / "x.txt").write_text("hi")
    with pytest.raises(ValueError, match="not a dataset"):
        open_dataset(tmp_path / "x.txt")
    with pytest.raises(ValueError, match="kind: expected 'auto' or one of"):
        open_dataset(tmp_path / "folder", kind="imagenet")
    with pytest.raises(ValueError, match="needs a CSV file"):
        open_dataset(tmp_path / "folder", kind="csv")
    fer = _write_csv(tmp_path / "f.csv", [["emotion", "pixels"], ["1", " ".join(["7"] * 2304)]])
    assert detect_kind(fer) == "fer2013"
    ds = open_dataset(fer)
    assert _names(ds) == ["disgust"] and ds.samples[0].split == ""
    with pytest.raises(ValueError, match="'path' column"):
        open_dataset(fer, kind="csv")
    with pytest.raises(ValueError, match=r"lacks \['number', 'exp', 'val', 'aro'\]"):
        open_dataset(fer, kind="affectnet")
    with pytest.raises(ValueError, match="no AffectNet split folder"):
        open_dataset(tmp_path / "folder", kind="affectnet")
    with pytest.raises(ValueError, match="not RAF-DB"):
        open_dataset(tmp_path / "folder", kind="rafdb")
    with pytest.raises(ValueError, match="only for 'imagefolder' and 'csv'"):
        open_dataset(fer, classes=["a", "b"])


def test_load_errors_name_the_file(tmp_path):
    _image(tmp_path / "happy" / "ok.png", 1)
    (tmp_path / "happy" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    ds = open_dataset(tmp_path)
    assert [Path(s.path).name for s in ds.samples] == ["broken.jpg", "ok.png"] and ds.errors == []
    with pytest.raises(ValueError, match="broken.jpg"):
        ds.load(0)
    (tmp_path / "happy" / "ok.png").unlink()
    with pytest.raises(FileNotFoundError, match="ok.png"):
        ds.load(1)


def test_sample_and_row_error_fields():
    s = Sample("a.png", 1, (0.1, 0.2), "train", 3)
    assert (s.path, s.label, s.va, s.split, s.row) == ("a.png", 1, (0.1, 0.2), "train", 3)
    e = RowError("l.csv", 4, "b.png", "missing file")
    assert (e.source, e.row, e.path, e.reason) == ("l.csv", 4, "b.png", "missing file")


# --------------------------------------------------------------------------------------------
# The shared photos as tiny datasets.

def test_photos_as_imagefolder_rafdb_and_fer(faces, tmp_path):
    root = tmp_path / "folder"
    for name, cls in (("astronaut.png", "happy"), ("single_face.jpg", "happiness"), ("0-f1-su-ph.jpg", "surprise"),
                      ("free-mountain-vector-01.jpg", "neutral")):
        (root / cls).mkdir(parents=True, exist_ok=True)
        (root / cls / name).write_bytes((faces / name).read_bytes())
    ds = open_dataset(root)
    by_name = {Path(s.path).name: ds.class_names[s.label] for s in ds.samples}
    assert by_name == {"astronaut.png": "happy", "single_face.jpg": "happy", "0-f1-su-ph.jpg": "surprise",
                       "free-mountain-vector-01.jpg": "neutral"}
    for i, s in enumerate(ds.samples):
        want = np.asarray(Image.open(faces / Path(s.path).name).convert("RGB"))
        np.testing.assert_array_equal(ds.load(i), want)
    mountain = [Path(s.path).name for s in ds.samples].index("free-mountain-vector-01.jpg")
    assert ds.load(mountain).shape == (1080, 1920, 3)

    # RAF-DB: 100x100 "aligned" crops; label 1 is surprise, 4 happiness
    raf = tmp_path / "raf"
    _rafdb(raf, ["test_0001.jpg 1", "train_00001.jpg 4"])
    (raf / "Image" / "aligned").mkdir(parents=True)
    Image.open(faces / "0-f1-su-ph.jpg").convert("RGB").resize((100, 100)).save(raf / "Image" / "aligned" /
                                                                                 "test_0001_aligned.jpg")
    Image.open(faces / "astronaut.png").convert("RGB").crop((170, 60, 280, 190)).resize((100, 100)).save(
        raf / "Image" / "aligned" / "train_00001_aligned.jpg")
    ds = open_dataset(raf)
    assert [(ds.class_names[s.label], s.split) for s in ds.samples] == [("surprise", "test"), ("happy", "train")]
    for i, s in enumerate(ds.samples):
        np.testing.assert_array_equal(ds.load(i), np.asarray(Image.open(s.path).convert("RGB")))

    # FER2013: the astronaut's face as a 48x48 gray row, emotion 3 (Happy), and the surprise face as 5
    gray = [np.asarray(Image.open(faces / "astronaut.png").convert("L").crop((170, 60, 280, 190)).resize((48, 48))),
            np.asarray(Image.open(faces / "0-f1-su-ph.jpg").convert("L").resize((48, 48)))]
    fer = _write_csv(tmp_path / "fer2013.csv", [["emotion", "pixels", "Usage"], ["3", _pixels(gray[0]), "Training"],
                                                 ["5", _pixels(gray[1]), "PrivateTest"]])
    ds = open_dataset(fer)
    assert [(ds.class_names[s.label], s.split) for s in ds.samples] == [("happy", "train"), ("surprise", "test")]
    for i in range(2):
        np.testing.assert_array_equal(ds.load(i), np.repeat(gray[i][:, :, None], 3, axis=2))
