"""ig3d.train: the features file, parameter selection, splits, Ig3D's loss, training and the exported head.

References are independent of the code under test: the loss against a numpy transcription of its
formula, the exported fused head (C++ kernel) against the trained torch module in eval mode, Ig3D's
feature sets against hand-written index ranges and :func:`ig3d.convert.ig3d_heads.feature_select`, and
learning against what a synthetic problem makes possible (class means that differ, VA a linear
function of the parameters).
"""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs torch (pip install 'ig3d[train]')")

import ig3d  # noqa: E402
from ig3d import params as P  # noqa: E402
from ig3d import train as T  # noqa: E402
from ig3d.metrics import ccc  # noqa: E402

pytestmark = pytest.mark.usefixtures("torch_one_thread")

CLASSES = ["neutral", "happy", "sad"]


def synthetic(n=400, seed=0, split=True, encoder="default", sep=1.5):
    """A default-preset (or EMOCA/SMIRK) features dict: 3 classes whose means differ along 5 columns,
    VA a linear function of 4 columns (plus a little noise)."""
    rng = np.random.default_rng(seed)
    names = P.param_names(encoder)
    d = len(names)
    y = rng.integers(0, 3, n)
    x = rng.normal(0.3, 0.2, size=(n, d))
    centres = rng.normal(size=(3, 5)) * sep
    x[:, 2:7] += centres[y]
    va = np.stack([0.5 * x[:, 10] - 0.4 * x[:, 11], 0.6 * x[:, 12] + 0.3 * x[:, 13]], 1)
    va += rng.normal(0, 0.02, size=va.shape)
    f = dict(params3d=x.astype(np.float32), param_names=np.array(names),
             param_segments=np.array([s for s, _ in P.SEGMENTS[encoder]]),
             param_segment_sizes=np.array([w for _, w in P.SEGMENTS[encoder]], np.int64),
             labels=y.astype(np.int64), va=va.astype(np.float32), class_names=np.array(CLASSES),
             preset=np.array("default" if encoder == "default" else f"ig3d-{encoder}-ddamfn"))
    f["split"] = T.make_splits(n, 123) if split else np.array([""] * n)
    return f


def _rows(f, which, split=None):
    return np.flatnonzero((split if split is not None else f["split"]) == which)


# ---------------------------------------------------------------------------------------------
# The loss.


def _loss_numpy(logits, va_pred, labels, va_true, a, b, c):
    """Direct transcription: CE + a*(MSE_V + MSE_A) + b*(1 - mean PCC) + c*(1 - mean CCC)."""
    total = 0.0
    if logits is not None:
        keep = labels >= 0
        z = logits[keep].astype(np.float64)
        z = z - z.max(1, keepdims=True)
        logp = z - np.log(np.exp(z).sum(1, keepdims=True))
        total += -logp[np.arange(keep.sum()), labels[keep]].mean() if keep.any() else 0.0
    if va_pred is not None:
        keep = np.isfinite(va_true).all(1)
        p, t = va_pred[keep].astype(np.float64), va_true[keep].astype(np.float64)
        mse = sum(np.mean((p[:, j] - t[:, j]) ** 2) for j in range(2))
        pcc = np.mean([np.corrcoef(p[:, j], t[:, j])[0, 1] for j in range(2)])
        cccs = []
        for j in range(2):
            cov = np.mean((p[:, j] - p[:, j].mean()) * (t[:, j] - t[:, j].mean()))
            cccs.append(2 * cov / (p[:, j].var() + t[:, j].var() + (p[:, j].mean() - t[:, j].mean()) ** 2))
        total += a * mse + b * (1 - pcc) + c * (1 - np.mean(cccs))
    return total


@pytest.mark.parametrize("parts", ["both", "classification", "va"])
def test_ig3d_loss_matches_numpy(parts):
    rng = np.random.default_rng(7)
    for trial in range(5):
        B, C = 32, 8
        logits = rng.normal(size=(B, C)).astype(np.float32) * 2
        labels = rng.integers(0, C, B)
        labels[rng.random(B) < 0.3] = -1
        va_true = rng.uniform(-1, 1, size=(B, 2)).astype(np.float32)
        va_true[rng.random(B) < 0.25] = np.nan
        va_pred = (0.6 * np.nan_to_num(va_true) + rng.normal(0, 0.4, size=(B, 2))).astype(np.float32)
        a, b, c = rng.random(3)
        lg = None if parts == "va" else logits
        vp = None if parts == "classification" else va_pred
        got = T.ig3d_loss(None if lg is None else torch.from_numpy(lg), None if vp is None else torch.from_numpy(vp),
                          torch.from_numpy(labels), torch.from_numpy(va_true), float(a), float(b), float(c))
        want = _loss_numpy(lg, vp, labels, va_true, a, b, c)
        assert got.shape == ()
        np.testing.assert_allclose(float(got), want, rtol=1e-5, atol=1e-6)


def test_ig3d_loss_ignores_masked_rows_and_has_finite_gradients():
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(size=(6, 3)), dtype=torch.float32, requires_grad=True)
    va_pred = torch.tensor(rng.normal(size=(6, 2)), dtype=torch.float32, requires_grad=True)
    labels = torch.tensor([0, 2, -1, 1, -1, 0])
    va_true = torch.tensor(rng.uniform(-1, 1, size=(6, 2)), dtype=torch.float32)
    va_true[[1, 4]] = float("nan")
    loss = T.ig3d_loss(logits, va_pred, labels, va_true, 0.2, 0.3, 0.5)
    loss.backward()
    assert torch.isfinite(logits.grad).all() and torch.isfinite(va_pred.grad).all()
    assert torch.all(logits.grad[[2, 4]] == 0)          # unlabelled rows feed no CE
    assert torch.all(va_pred.grad[[1, 4]] == 0)         # rows without VA feed no VA term
    # nothing to learn from: zero loss rather than NaN
    none = T.ig3d_loss(logits, va_pred, torch.full((6,), -1), torch.full((6, 2), float("nan")), 1.0, 1.0, 1.0)
    assert float(none.detach()) == 0.0


# ---------------------------------------------------------------------------------------------
# Parameter selection and splits.


def test_param_selection_default_preset():
    f = synthetic(20)
    np.testing.assert_array_equal(T.param_selection(f, "all"), np.arange(55))
    np.testing.assert_array_equal(T.param_selection(f, "short"), np.arange(52))
    np.testing.assert_array_equal(T.param_selection(f, "full"), np.arange(55))
    names = list(f["param_names"])
    assert names.index("jawOpen") == T.param_selection(f, ["jawOpen"])[0]
    np.testing.assert_array_equal(T.param_selection(f, "head_pose, jawOpen"),
                                  [52, 53, 54, names.index("jawOpen")])


def test_param_selection_emoca_and_smirk_sets():
    emoca, smirk = synthetic(10, encoder="emoca"), synthetic(10, encoder="smirk")
    np.testing.assert_array_equal(T.param_selection(emoca, "short"), np.r_[0:56, 234:334])  # exp, pose, shape
    np.testing.assert_array_equal(T.param_selection(emoca, "full"), np.arange(334))
    np.testing.assert_array_equal(T.param_selection(smirk, "short"), np.arange(353))
    np.testing.assert_array_equal(T.param_selection(smirk, "full"), np.arange(358))
    from ig3d.convert.ig3d_heads import feature_select

    for f, enc in ((emoca, "emoca"), (smirk, "smirk")):
        for s in ("short", "full"):
            np.testing.assert_array_equal(T.param_selection(f, s), feature_select(f"{enc}_{s}"))
    # by name, not by position: a file whose segments come in another order selects the same values
    perm = np.r_[234:334, 0:234]
    g = dict(emoca, params3d=emoca["params3d"][:, perm], param_names=emoca["param_names"][perm],
             param_segments=np.array(["shape", "exp", "pose", "tex", "detail"]),
             param_segment_sizes=np.array([100, 50, 6, 50, 128]))
    sel = T.param_selection(g, "short")
    np.testing.assert_array_equal(g["param_names"][sel], emoca["param_names"][np.r_[0:56, 234:334]])
    np.testing.assert_array_equal(T.param_selection(g, ["pose"]), np.arange(150, 156))


def test_param_selection_errors():
    f = synthetic(10)
    with pytest.raises(ValueError, match=r"unknown names \['nope'\]"):
        T.param_selection(f, "jawOpen,nope")
    with pytest.raises(ValueError, match="more than once.*jawOpen"):
        T.param_selection(f, ["blendshapes", "jawOpen"])
    with pytest.raises(ValueError, match="empty selection"):
        T.param_selection(f, " , ")
    odd = dict(f, param_segments=np.array(["a", "b"]), preset=np.array("mine"))
    with pytest.raises(ValueError, match="params='short' is defined for"):
        T.param_selection(odd, "short")
    partial = synthetic(10, encoder="emoca")
    keep = np.r_[0:56]
    partial = dict(partial, params3d=partial["params3d"][:, keep], param_names=partial["param_names"][keep],
                   param_segments=np.array(["exp", "pose"]), param_segment_sizes=np.array([50, 6]))
    with pytest.raises(ValueError, match=r"params='short'.*missing.*shape\.0"):
        T.param_selection(partial, "short")


def test_make_splits():
    s = T.make_splits(1000, 5)
    assert [(s == k).sum() for k in ("train", "val", "test")] == [800, 100, 100]
    np.testing.assert_array_equal(s, T.make_splits(1000, 5))
    assert (s != T.make_splits(1000, 6)).any()
    s2 = T.make_splits(11, 0, (0.6, 0.2, 0.2))
    assert [(s2 == k).sum() for k in ("train", "val", "test")] == [7, 2, 2]
    with pytest.raises(ValueError, match="summing to 1"):
        T.make_splits(10, 0, (0.5, 0.1, 0.1))


def test_generated_and_held_out_splits_are_recorded():
    f = synthetic(200, split=False)
    r = T.train_head(f, head="linear", epochs=1)
    assert r.log["split"]["source"] == "generated"
    np.testing.assert_array_equal(r.split, T.make_splits(200, 0))
    np.testing.assert_array_equal(T.split_from_log(f, json.loads(json.dumps(r.log))), r.split)
    assert r.log["features"]["n_train"] == 160 and r.log["features"]["n_val"] == 20

    g = synthetic(200, split=False)
    g["split"] = np.where(np.arange(200) < 150, "train", "test")
    r = T.train_head(g, head="linear", epochs=1, seed=3)
    info = r.log["split"]
    assert info["source"] == "val held out of train" and len(info["val_indices"]) == 15
    assert all(i < 150 for i in info["val_indices"])
    assert info["counts"] == {"train": 135, "val": 15, "test": 50}
    np.testing.assert_array_equal(T.split_from_log(g, r.log), r.split)
    np.testing.assert_array_equal(r.split[150:], "test")


# ---------------------------------------------------------------------------------------------
# Learning.


def test_learns_a_classification_problem():
    f = synthetic(450)
    r = T.train_head(f, head="linear", task="classification", epochs=8, max_lr=2e-2, batch_size=32)
    test = _rows(f, "test")
    pred = r.head(f["params3d"][test]).logits.argmax(1)
    acc = (pred == f["labels"][test]).mean()
    assert acc > 0.9, acc                                           # chance: 1/3
    assert r.log["best"]["accuracy"] > 0.9
    assert r.head.labels == CLASSES


def test_mlp4_learns_a_classification_problem():
    f = synthetic(240, sep=2.0)
    r = T.train_head(f, head="mlp4", epochs=2, batch_size=32, max_lr=1e-3)
    test = _rows(f, "test")
    acc = (r.head(f["params3d"][test]).logits.argmax(1) == f["labels"][test]).mean()
    assert acc > 0.8, acc


def test_learns_valence_arousal():
    f = synthetic(450)
    r = T.train_head(f, head="linear", task="va", epochs=25, max_lr=5e-3, batch_size=16)
    test = _rows(f, "test")
    va = r.head(f["params3d"][test]).va
    for j in range(2):
        assert ccc(va[:, j], f["va"][test, j]) > 0.8
    assert r.log["best"]["ccc_mean"] > 0.8


def test_masking_zeroes_random_subsets_per_segment():
    """Ig3D's masking: per row and segment, with probability p, k ~ U{1..n} distinct entries set to raw 0."""
    gen = torch.Generator().manual_seed(0)
    sizes = [5, 3]
    groups = [(torch.arange(0, 5), 5), (torch.arange(5, 8), 3)]
    x = torch.full((4000, 8), 7.0)
    zero = torch.full((8,), -1.0)  # the standardised value of a raw 0
    out = T._mask_batch(torch, x, groups, zero, 1.0, gen)
    assert set(torch.unique(out).tolist()) == {7.0, -1.0}
    start = 0
    for n in sizes:
        k = (out[:, start:start + n] == -1).sum(1).numpy()
        assert k.min() == 1 and k.max() == n                           # never none, sometimes all
        counts = np.bincount(k, minlength=n + 1)[1:] / len(k)
        np.testing.assert_allclose(counts, 1 / n, atol=0.04)           # k uniform on 1..n
        assert np.allclose((out[:, start:start + n] == -1).float().mean(0).numpy(), (n + 1) / (2 * n), atol=0.04)
        start += n
    half = T._mask_batch(torch, x, groups, zero, 0.3, gen)
    hit = (half[:, :5] == -1).any(1).float().mean()
    assert abs(float(hit) - 0.3) < 0.03
    assert torch.equal(T._mask_batch(torch, x, groups, zero, 0.0, gen), x)


def test_balanced_sampling_draws_classes_equally():
    """Ig3D's ImbalancedDatasetSampler: n draws with replacement, row weight 1 / count of its class."""
    y = np.array([0] * 900 + [1] * 90 + [2] * 10)
    _, inv, counts = np.unique(y, return_inverse=True, return_counts=True)
    gen = torch.Generator().manual_seed(0)
    order = T._epoch_order(torch, len(y), torch.tensor(1.0 / counts[inv]), gen, torch.device("cpu")).numpy()
    assert len(order) == len(y)
    np.testing.assert_allclose(np.bincount(y[order], minlength=3) / len(y), 1 / 3, atol=0.05)
    plain = T._epoch_order(torch, len(y), None, gen, torch.device("cpu")).numpy()
    np.testing.assert_array_equal(np.sort(plain), np.arange(len(y)))  # a permutation


# ---------------------------------------------------------------------------------------------
# The exported head, determinism, the log.


@pytest.mark.parametrize("head", ["linear", "mlp4", "residual"])
@pytest.mark.parametrize("task", ["classification", "va", "classification+va"])
def test_fused_head_equals_torch_module(head, task, tmp_path):
    f = synthetic(60)
    r = T.train_head(f, head=head, task=task, epochs=1, batch_size=16, params="short", mask_prob=0.2)
    h = r.head
    c = 0 if task == "va" else 3
    assert h.input_dim == 55 and h.fusion == "none"
    np.testing.assert_array_equal(h.select, np.arange(52))
    assert h.num_classes == c and h.va_index == (None if task == "classification" else c)
    assert h.out_dim == {"classification": 3, "va": 2, "classification+va": 5}[task]
    assert h.labels == (None if task == "va" else CLASSES)
    train = _rows(f, "train")
    np.testing.assert_allclose(h.mean, f["params3d"][train][:, :52].mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(h.std, np.maximum(f["params3d"][train][:, :52].astype(np.float64).std(0), 1e-3),
                               rtol=1e-5)
    x = np.random.default_rng(1).normal(0.3, 1.0, size=(17, 55)).astype(np.float32)
    with torch.no_grad():
        ref = r.module(torch.from_numpy((x[:, :52] - h.mean) / h.std)).numpy()
    out = h(x)
    scale = max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(out.out3d, ref, atol=1e-4 * scale)
    if task != "va":
        np.testing.assert_allclose(out.logits, ref[:, :3], atol=1e-4 * scale)
    if task != "classification":
        np.testing.assert_allclose(out.va, ref[:, c:c + 2], atol=1e-4 * scale)
    r.save(tmp_path / "head.npz")
    back = ig3d.FusedHead.load(tmp_path / "head.npz")
    np.testing.assert_array_equal(back(x).out3d, out.out3d)
    assert back.name == h.name and back.labels == h.labels
    assert json.loads((tmp_path / "head.json").read_text())["best_epoch"] == r.log["best_epoch"]


def _weights(r):
    return [(l.weight.copy(), l.bias.copy()) for l in r.head.layers]


def test_same_seed_same_head_other_seed_other_head():
    f = synthetic(120)
    kw = dict(head="residual", task="classification+va", epochs=2, batch_size=16, mask_prob=0.3)
    a, b, c = (T.train_head(f, seed=s, **kw) for s in (1, 1, 2))
    for (wa, ba), (wb, bb) in zip(_weights(a), _weights(b)):
        np.testing.assert_array_equal(wa, wb)
        np.testing.assert_array_equal(ba, bb)
    assert any(not np.array_equal(wa, wc) for (wa, _), (wc, _) in zip(_weights(a), _weights(c)))
    assert [e["train_loss"] for e in a.log["epochs"]] == [e["train_loss"] for e in b.log["epochs"]]


def test_progress_and_log():
    f = synthetic(100)
    seen = []
    r = T.train_head(f, head="linear", task="classification+va", epochs=3, progress=lambda e, m: seen.append((e, m)))
    assert [e for e, _ in seen] == [1, 2, 3]
    log = json.loads(json.dumps(r.log, allow_nan=False))
    assert [e["epoch"] for e in log["epochs"]] == [1, 2, 3]
    for e in log["epochs"]:
        assert {"train_loss", "val", "lr", "seconds", "train_accuracy"} <= set(e)
        assert {"accuracy", "f1_macro", "valence_ccc", "arousal_ccc", "score"} <= set(e["val"])
        assert e["val"]["score"] == pytest.approx(0.5 * (e["val"]["accuracy"] + e["val"]["ccc_mean"]))
    best = max(range(3), key=lambda i: log["epochs"][i]["val"]["score"])
    assert log["best_epoch"] == best + 1
    s = log["settings"]
    assert (s["batch_size"], s["mask_prob"], s["seed"], s["base_lr"], s["max_lr"]) == (64, 0.0, 0, 1e-6, 1e-4)
    assert s["step_size_up"] == 1  # half of the one batch of 80 rows (a last lone row would be skipped)
    assert log["features"]["selected"] == list(f["param_names"])


# ---------------------------------------------------------------------------------------------
# Errors.


def test_clear_errors(tmp_path):
    f = synthetic(50)
    with pytest.raises(ValueError, match="0 'train' rows"):
        T.train_head(dict(f, split=np.array(["test"] * 25 + ["val"] * 25)), head="linear", epochs=1)
    no_labels = {k: v for k, v in f.items() if k != "labels"}
    with pytest.raises(ValueError, match="task 'classification' needs class labels.*no labels"):
        T.train_head(no_labels, head="linear", epochs=1)
    with pytest.raises(ValueError, match="all -1"):
        T.train_head(dict(f, labels=np.full(50, -1)), head="linear", epochs=1)
    no_va = {k: v for k, v in f.items() if k != "va"}
    with pytest.raises(ValueError, match="task 'va' needs valence/arousal.*no va"):
        T.train_head(no_va, head="linear", task="va", epochs=1)
    with pytest.raises(ValueError, match="head: expected one of"):
        T.train_head(f, head="mlp5")
    with pytest.raises(ValueError, match="task: expected one of"):
        T.train_head(f, task="regression")
    with pytest.raises(ValueError, match="no 'val' row with a class label"):
        T.train_head(dict(f, labels=np.where(f["split"] == "val", -1, f["labels"])), head="linear", epochs=1)


@pytest.mark.parametrize("key, value, match", [
    ("labels", np.zeros(49, np.int64), r"'labels' has shape \[49\], expected \[50\]"),
    ("param_names", np.array(["a"] * 54), r"'param_names' has shape \[54\], expected \[55\]"),
    ("param_segment_sizes", np.array([52, 2]), r"'param_segment_sizes' \[52, 2\] .* summing to D=55"),
    ("va", np.zeros((50, 3), np.float32), r"'va' has shape \[50, 3\], expected \[50, 2\]"),
    ("split", np.array(["train"] * 49 + ["dev"]), r"'split' has values \['dev'\]"),
    ("labels", np.full(50, 3), r"'labels' row 0 is 3; expected -1 \(none\) or 0..2"),
])
def test_load_features_names_the_problem(tmp_path, key, value, match):
    f = synthetic(50)
    path = tmp_path / "bad.npz"
    np.savez(path, **dict(f, **{key: value}))
    with pytest.raises(ValueError, match=match) as e:
        T.load_features(path)
    assert str(path) in str(e.value)


def test_load_features_roundtrip_and_no_pickle(tmp_path):
    f = synthetic(30)
    good = tmp_path / "f.npz"
    np.savez(good, **f)
    got = T.load_features(good)
    np.testing.assert_array_equal(got["params3d"], f["params3d"])
    assert got["preset"] == "default" and list(got["class_names"]) == CLASSES
    r = T.train_head(good, head="linear", epochs=1)
    assert r.log["features"]["source"] == str(good)
    bad = tmp_path / "obj.npz"
    np.savez(bad, **dict(f, paths=np.array(["a", 1] * 15, dtype=object)))
    with pytest.raises(ValueError, match="'paths' cannot be read without pickle"):
        T.load_features(bad)
    with pytest.raises(FileNotFoundError):
        T.load_features(tmp_path / "missing.npz")
    nan = dict(f, params3d=f["params3d"].copy())
    nan["params3d"][7, 3] = np.nan
    with pytest.raises(ValueError, match="1 rows with NaN or inf, the first at row 7"):
        T.validate_features(nan)


def test_import_without_torch_and_its_error():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import ig3d.train as T\n"
            "try:\n    T.train_head({}, head='linear')\nexcept ImportError as e:\n    print('ERR', e)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert 'pip install "ig3d[train]"' in out
