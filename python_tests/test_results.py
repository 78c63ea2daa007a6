"""FaceResult equality (value equality over every field), and a Predictor shared by threads giving
the same results as one thread."""

from __future__ import annotations

import copy
import dataclasses
import threading

import numpy as np
import pytest

import ig3d
from ig3d import FaceResult
from ig3d.presets import asset_path


def make_face(**changes) -> FaceResult:
    rng = np.random.default_rng(0)
    labels = ["neutral", "happy", "sad"]
    probs = {k: float(v) for k, v in zip(labels, [0.2, 0.7, 0.1])}
    face = FaceResult(
        box=np.array([10.0, 20.0, 110.0, 140.0], np.float32), score=0.93,
        landmarks=rng.normal(size=(478, 3)).astype(np.float32),
        blendshapes={"mouthSmileLeft": 0.8, "mouthSmileRight": 0.75},
        head_pose={"yaw": 1.5, "pitch": -3.0, "roll": 0.5},
        params3d=rng.normal(size=55).astype(np.float32), label="happy", scores=probs,
        valence=0.6, arousal=0.3, label_2d="happy", scores_2d=dict(probs), label_3d="happy", scores_3d=dict(probs),
        logits_2d=np.array([0.1, 2.0, -1.0], np.float32), logits_3d=np.array([0.0, 1.0, 0.5], np.float32),
        flame={"expression_params": np.arange(50, dtype=np.float32)})
    return dataclasses.replace(face, **changes)


def test_equal_results_compare_equal():
    a, b = make_face(), copy.deepcopy(make_face())
    assert a == b and not (a != b)
    assert a.landmarks is not b.landmarks  # by value, not identity
    # the same values in another dtype are the same values
    assert a == make_face(box=a.box.astype(np.float64))


@pytest.mark.parametrize("field, value", [
    ("box", np.array([10.0, 20.0, 110.0, 141.0], np.float32)),
    ("score", 0.94),
    ("label", "sad"),
    ("scores", {"neutral": 0.2, "happy": 0.6, "sad": 0.2}),
    ("blendshapes", {"mouthSmileLeft": 0.8}),                      # a key fewer
    ("head_pose", {"yaw": 1.5, "pitch": -3.0, "roll": 0.25}),
    ("valence", 0.61),
    ("logits_2d", np.array([0.1, 2.0], np.float32)),                # another shape
    ("flame", None),
    ("flame", {"expression_params": np.arange(1, 51, dtype=np.float32)}),
    ("scores2d_raw", np.zeros(7, np.float32)),                      # None on the other side
])
def test_a_difference_in_any_field_makes_them_unequal(field, value):
    a = make_face()
    b = make_face(**{field: value})
    assert a != b and not (a == b) and b != a


def test_one_landmark_coordinate_is_enough():
    a = make_face()
    lm = a.landmarks.copy()
    lm[477, 2] += 1e-3
    assert a != make_face(landmarks=lm)


def test_comparing_with_other_types_is_false_not_an_error():
    a = make_face()
    assert a != "happy" and a != None and a != a.to_dict()  # noqa: E711
    assert (a == 1) is False
    assert a in [make_face()] and make_face(label="sad") not in [a]


def test_results_are_not_hashable():
    with pytest.raises(TypeError, match="unhashable"):
        hash(make_face())


def test_the_same_photo_twice_gives_equal_results_and_another_does_not():
    p = ig3d.Predictor()
    img = np.asarray(ig3d.io.load_image(asset_path("astronaut.png")))
    first, again = p.predict(img), p.predict(img.copy())
    assert len(first) == 1 and first == again
    assert p.predict(np.ascontiguousarray(img[:, ::-1])) != first  # mirrored: another face box


def test_a_predictor_shared_by_threads_gives_the_single_thread_results():
    """Four threads calling one Predictor at once get exactly what one caller gets."""
    p = ig3d.Predictor()
    img = np.asarray(ig3d.io.load_image(asset_path("astronaut.png")))
    images = [img, np.ascontiguousarray(img[:, ::-1]), np.ascontiguousarray(img[::2, ::2])]
    expected = [p.predict(im) for im in images]
    got = {}
    errors = []
    start = threading.Barrier(4)

    def worker(k: int) -> None:
        try:
            start.wait()
            got[k] = [p.predict(images[(k + i) % 3]) for i in range(3)] + [p.predict_batch(images)]
        except Exception as e:  # reported below, in the main thread
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert not errors, errors
    for k in range(4):
        assert got[k][:3] == [expected[(k + i) % 3] for i in range(3)]
        assert got[k][3] == expected
