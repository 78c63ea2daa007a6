"""Valence and arousal of the default preset (:func:`ig3d.prior.valence_arousal`): the documented
formula worked by hand, monotone in the action units that drive it, bounded, (0, 0) for a neutral
face at rest, and on real photos and video what a person sees (a broad smile reads more pleasant than
a faint one, a surprised face more aroused than smiling ones)."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

import ig3d
from ig3d import prior
from ig3d.faces.mediapipe_constants import BLENDSHAPE_NAMES

L = {name: i for i, name in enumerate(prior.LABELS)}
SMILE = ("mouthSmileLeft", "mouthSmileRight")
FROWN = ("mouthFrownLeft", "mouthFrownRight")


def rest_blendshapes() -> np.ndarray:
    """Every AU's blendshapes exactly at their resting level, the others at 0."""
    bs = np.zeros(len(BLENDSHAPE_NAMES))
    for au, names in prior.AU_BLENDSHAPES.items():
        for n in names:
            bs[BLENDSHAPE_NAMES.index(n)] = prior.AU_REST[au]
    return bs


def with_values(bs: np.ndarray, **values: float) -> np.ndarray:
    out = bs.copy()
    for name, v in values.items():
        out[BLENDSHAPE_NAMES.index(name)] = v
    return out


def probs(**p: float) -> np.ndarray:
    out = np.zeros(len(prior.LABELS))
    for name, v in p.items():
        out[L[name]] = v
    assert out.sum() == pytest.approx(1.0)
    return out


def at_activation(au: str, e: float) -> float:
    """The blendshape value whose activation is e for this AU."""
    rest = prior.AU_REST[au]
    return rest + e * (1.0 - rest)


# --- the formula, worked by hand ----------------------------------------------------------------

def test_half_smile_by_hand():
    # AU12 at half its range above rest: k = 0.5 + (1.25 - 0.5) * 0.5 = 0.875 times happy's (0.80, 0.35)
    x = at_activation("AU12", 0.5)
    bs = with_values(rest_blendshapes(), mouthSmileLeft=x, mouthSmileRight=x)
    np.testing.assert_allclose(prior.valence_arousal(probs(happy=1.0), bs), [0.8 * 0.875, 0.35 * 0.875], atol=1e-6)


def test_surprise_by_hand():
    # AU1 half on, AU2 at rest, AU26 fully on: surprise intensity (0.5 + 0 + 1) / 3 = 0.5, k = 0.875;
    # arousal activation is the same mean (AU5 is unobservable), a = a0 + (1 - a0) * 1.0 * 0.5
    bs = with_values(rest_blendshapes(), browInnerUp=at_activation("AU1", 0.5), jawOpen=1.0)
    a0 = 0.8 * 0.875
    np.testing.assert_allclose(prior.valence_arousal(probs(surprise=1.0), bs), [0.2 * 0.875, a0 + (1 - a0) * 0.5],
                               atol=1e-6)


def test_no_visible_au_gives_half_the_anchor():
    # a label carried by the probabilities alone (e.g. the 2D branch) keeps half its anchor
    va = prior.valence_arousal(np.eye(len(prior.LABELS)), np.tile(rest_blendshapes(), (len(prior.LABELS), 1)))
    np.testing.assert_allclose(va, 0.5 * prior.CIRCUMPLEX, atol=1e-6)


# --- monotone in the driving blendshapes --------------------------------------------------------

HAPPY_LIKE = [probs(happy=1.0), probs(happy=0.7, neutral=0.3), probs(happy=0.4, neutral=0.4, surprise=0.2)]
SURPRISE_LIKE = [probs(surprise=1.0), probs(surprise=0.5, fear=0.3, neutral=0.2),
                 probs(surprise=0.5, fear=0.27, sad=0.1, neutral=0.1, anger=0.03)]


def sweep(p: np.ndarray, names, grid: np.ndarray) -> np.ndarray:
    bs = np.tile(rest_blendshapes(), (len(grid), 1))
    for n in names:
        bs[:, BLENDSHAPE_NAMES.index(n)] = grid
    return prior.valence_arousal(np.tile(p, (len(grid), 1)), bs)


@pytest.mark.parametrize("p", HAPPY_LIKE)
@pytest.mark.parametrize("names", [SMILE, SMILE[:1], SMILE[1:]])
def test_valence_rises_with_the_smile(p, names):
    grid = np.linspace(prior.AU_REST["AU12"], 1.0, 25)
    v = sweep(p, names, grid)[:, 0]
    assert np.all(np.diff(v) > 0), v
    # below the resting level the smile shows no AU: flat, never falling
    below = sweep(p, names, np.linspace(0.0, prior.AU_REST["AU12"], 5))[:, 0]
    assert np.all(np.diff(below) >= 0) and below[-1] == pytest.approx(v[0])


def test_valence_falls_with_the_frown_when_sad():
    grid = np.linspace(prior.AU_REST["AU15"], 1.0, 25)
    v = sweep(probs(sad=0.8, neutral=0.2), FROWN, grid)[:, 0]
    assert np.all(np.diff(v) < 0), v


@pytest.mark.parametrize("p", SURPRISE_LIKE)
@pytest.mark.parametrize("names", [("browInnerUp",), ("browOuterUpLeft", "browOuterUpRight"), ("jawOpen",)])
def test_arousal_rises_with_brows_and_jaw(p, names):
    au = next(a for a, bs in prior.AU_BLENDSHAPES.items() if names[0] in bs)
    grid = np.linspace(prior.AU_REST[au], 1.0, 25)
    a = sweep(p, names, grid)[:, 1]
    assert np.all(np.diff(a) > 0), a


def test_arousal_rises_with_brows_and_jaw_whatever_the_label():
    # the brow raisers and the jaw drop push arousal up even where the label does not predict them
    rng = np.random.default_rng(1)
    p = rng.dirichlet(np.full(len(prior.LABELS), 0.3), size=50)
    base = np.tile(rest_blendshapes(), (50, 1))
    raised = base.copy()
    for n in ("browInnerUp", "browOuterUpLeft", "browOuterUpRight", "jawOpen"):
        raised[:, BLENDSHAPE_NAMES.index(n)] = 0.6
    assert np.all(prior.valence_arousal(p, raised)[:, 1] > prior.valence_arousal(p, base)[:, 1])


# --- bounds and the neutral face ----------------------------------------------------------------

def test_bounded_for_any_blendshapes_and_probabilities():
    rng = np.random.default_rng(0)
    n = 4000
    p = np.concatenate([rng.dirichlet(np.full(len(prior.LABELS), alpha), size=n // 4) for alpha in (0.05, 0.3, 1, 5)])
    bs = rng.uniform(0, 1, size=(n, len(BLENDSHAPE_NAMES)))
    bs[: n // 8] = rng.integers(0, 2, size=(n // 8, len(BLENDSHAPE_NAMES)))  # corners of the cube
    va = prior.valence_arousal(p, bs)
    assert va.shape == (n, 2) and va.dtype == np.float32
    assert np.all(np.abs(va) <= 1.0)
    # every label, every blendshape fully on: the bound is reached, never passed
    one_hot = prior.valence_arousal(np.eye(len(prior.LABELS)), np.ones((len(prior.LABELS), len(BLENDSHAPE_NAMES))))
    assert np.all(np.abs(one_hot) <= 1.0)
    assert one_hot[L["happy"], 0] == pytest.approx(1.0) and one_hot[L["surprise"], 1] == pytest.approx(1.0)


def test_neutral_face_at_rest_reads_the_centre():
    va = prior.valence_arousal(probs(neutral=1.0), rest_blendshapes())
    assert va.shape == (2,)
    np.testing.assert_allclose(va, [0.0, 0.0], atol=1e-7)
    # a typical resting face (small blendshapes, squinting lids) and mostly-neutral probabilities
    typical = with_values(np.full(len(BLENDSHAPE_NAMES), 0.05), eyeSquintLeft=0.25, eyeSquintRight=0.25,
                          mouthLowerDownLeft=0.12, mouthLowerDownRight=0.12)
    rest_probs = np.full(len(prior.LABELS), 0.2 / (len(prior.LABELS) - 1))
    rest_probs[L["neutral"]] = 0.8
    v, a = prior.valence_arousal(rest_probs, typical)
    assert abs(v) < 0.1 and abs(a) < 0.1


def test_one_face_equals_its_row_in_a_batch():
    rng = np.random.default_rng(2)
    p = rng.dirichlet(np.ones(len(prior.LABELS)), size=6)
    bs = rng.uniform(0, 1, size=(6, len(BLENDSHAPE_NAMES)))
    batch = prior.valence_arousal(p, bs)
    for i in range(6):
        np.testing.assert_array_equal(prior.valence_arousal(p[i], bs[i]), batch[i])
    assert prior.valence_arousal(np.zeros((0, 7)), np.zeros((0, 52))).shape == (0, 2)


@pytest.mark.parametrize("p, bs, message", [
    (np.full((2, 6), 1 / 6), np.zeros((2, 52)), r"probs: expected shape \[B, 7\]"),
    (np.full((2, 7), 1 / 7), np.zeros((2, 55)), r"blendshapes: expected shape \[B, 52\]"),
    (np.full((3, 7), 1 / 7), np.zeros((2, 52)), "probs has 3 faces but blendshapes has 2"),
    (np.full((2, 7), 0.5), np.zeros((2, 52)), "row 0 sums to 3.5"),
    (np.array([[1.5, -0.5, 0, 0, 0, 0, 0]]), np.zeros((1, 52)), r"probabilities in \[0, 1\]"),
    (np.full((2, 7), 1 / 7), np.where(np.arange(52) == 3, np.nan, 0.0)[None].repeat(2, 0), "row 0 contains NaN"),
])
def test_bad_input_is_named(p, bs, message):
    with pytest.raises(ValueError, match=message):
        prior.valence_arousal(p, bs)


# --- real photos and video ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def predictor():
    return ig3d.Predictor()


def smile(face) -> float:
    return float(np.mean([face.blendshapes[n] for n in SMILE]))


def test_the_default_preset_reports_this_mapping(predictor, faces):
    for face in predictor.predict(faces / "multi_face.jpg"):
        p = np.array([face.scores[n] for n in prior.LABELS])
        bs = np.array([face.blendshapes[n] for n in BLENDSHAPE_NAMES])
        np.testing.assert_allclose([face.valence, face.arousal], prior.valence_arousal(p, bs), atol=1e-5)


def test_group_photo_smiles_differ(predictor, faces):
    group = predictor.predict(faces / "multi_face.jpg")
    assert len(group) == 5 and all(f.label == "happy" for f in group)
    v = np.array([f.valence for f in group])
    s = np.array([smile(f) for f in group])
    # four broad grins and one faint closed-mouth smile (mouthSmile about 0.3, happy only 0.6)
    faint = int(np.argmin(s))
    broad = [i for i in range(5) if i != faint]
    assert s[faint] < 0.5 and np.all(s[broad] > 0.8)
    assert np.all(v[broad] > v[faint] + 0.3), (s, v)
    # the four broad grins no longer read one number, and the broadest reads the most pleasant
    assert np.ptp(v[broad]) > 0.03, v
    assert spearmanr(s[broad], v[broad])[0] == pytest.approx(1.0), (s, v)


def test_happy_photos_positive_and_surprise_more_aroused(predictor, faces):
    happy = [predictor.predict(faces / n)[0] for n in ("astronaut.png", "0-f15-hao-ph.jpg", "single_face.jpg")]
    (surprised,) = predictor.predict(faces / "0-f1-su-ph.jpg")
    assert all(f.valence > 0.5 for f in happy), [f.valence for f in happy]
    assert surprised.arousal > max(f.arousal for f in happy) + 0.1, (surprised.arousal, [f.arousal for f in happy])
    assert surprised.valence < min(f.valence for f in happy) - 0.5


def test_video_valence_follows_the_smile(predictor, faces):
    av = pytest.importorskip("av", reason="PyAV reads the test video")
    with av.open(str(faces / "single_face.mp4")) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    found = predictor.predict_batch(frames)
    assert len(frames) == 72 and all(len(r) == 1 for r in found)
    face = [r[0] for r in found]
    v = np.array([f.valence for f in face])
    a = np.array([f.arousal for f in face])
    # neutral at the start (frames 0-17), smiling on frames 18-69 (see the photos' MANIFEST.csv); this
    # man's inner brows sit high at rest (browInnerUp 0.3-0.45 on the first frames), which the prior
    # reads as a little arousal: measured up to 0.19 on frames 0-16
    assert np.all(np.abs(v[:17]) < 0.15) and np.all(np.abs(a[:17]) < 0.2), (v[:17], a[:17])
    assert np.all(v[20:69] > 0.7), v[20:69]
    # and in between, valence goes with the smile's strength frame by frame
    assert spearmanr([smile(f) for f in face], v)[0] > 0.9
