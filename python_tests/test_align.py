"""Encoder crop conventions (ig3d.faces.align) on a real photo and on synthetic points."""

from __future__ import annotations

import numpy as np
import pytest

import ig3d
from ig3d.faces import align
from ig3d.io import load_image


@pytest.fixture(scope="module")
def astronaut(faces):
    img = load_image(faces / "astronaut.png")
    (face,) = ig3d.Predictor(min_face_size=None).predict(img)
    return img, face.landmarks[None]


def project(M, pts):
    return np.einsum("nij,nkj->nki", M[:, :, :2], pts[..., :2]) + M[:, None, :, 2]


def test_similarity_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.uniform(0, 100, (3, 5, 2))
    a, s, t = 0.3, 1.7, np.array([5.0, -3.0])
    R = s * np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
    dst = src[0] @ R.T + t
    M = align.similarity_2d(src[:1], dst)
    np.testing.assert_allclose(M[0, :, :2], R, atol=1e-9)
    np.testing.assert_allclose(M[0, :, 2], t, atol=1e-9)


def test_ddamfn_alignment_on_a_frontal_face(astronaut):
    img, lm = astronaut
    M, which = align.ddamfn_affine(lm)
    assert which.tolist() == [2]  # the frontal template
    pts = project(M.astype(np.float64), align.five_points(lm))
    err = np.linalg.norm(pts[0] - align.DDAMFN_TEMPLATES[2], axis=1)
    # the eyes land on the template (pixels of 112); nose and mouth less so on a broad smile,
    # the templates being neutral faces (measured: eyes 2.4-2.6, nose/mouth 8.7-9.1)
    assert err[:2].max() < 4.0 and err.max() < 12.0, err
    x = align.crop(img, M, 112, imagenet=True)
    assert x.shape == (1, 3, 112, 112) and x.dtype == np.float32
    assert -2.2 < x.min() and x.max() < 2.7  # ImageNet-normalised range


@pytest.mark.parametrize("name,fn,size,fill", [
    # the 478 points reach above the brows, which bound EMOCA's FAN-68-like box (measured 0.86)
    ("emoca", align.emoca_affine, 224, (0.70, 0.92)),
    ("smirk", align.smirk_affine, 224, (0.55, 0.80)),
    ("cage", align.cage_affine, 224, (0.70, 0.85)),
])
def test_square_crops_frame_the_face(astronaut, name, fn, size, fill):
    img, lm = astronaut
    M = fn(lm, size)
    pts = project(M.astype(np.float64), lm)[0]
    lo, hi = pts.min(0), pts.max(0)
    assert lo.min() > 0 and hi.max() < size  # the whole face is inside
    centre = (lo + hi) / 2
    assert np.all(np.abs(centre - size / 2) < size * 0.12)  # roughly centred
    frac = (hi - lo).max() / size
    assert fill[0] < frac < fill[1], frac  # the convention's margin
    x = align.crop(img, M, size)
    assert x.shape == (1, 3, size, size) and 0 <= x.min() and x.max() <= 1
