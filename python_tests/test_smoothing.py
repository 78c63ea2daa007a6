"""The video filters: the One Euro filter against a line-by-line transcription of its published
formulas, causality, time-awareness (variable frame rates), face-size invariance, jitter reduction,
and the errors for bad parameters and timestamps."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ig3d.smoothing import ExponentialFilter, FaceSmoother, OneEuroFilter, Smoothing, face_scale, resolve_smoothing


def one_euro_reference(xs, ts, min_cutoff, beta, d_cutoff, value_scale=1.0):
    """Scalar 1 euro filter, transcribed from Casiez et al. (CHI 2012) with MediaPipe's derivative
    (one_euro_filter.cc: the speed from the previous *raw* sample, times value_scale)."""
    def alpha(fc, te):
        tau = 1.0 / (2 * math.pi * fc)
        return 1.0 / (1.0 + tau / te)

    scales = np.broadcast_to(np.asarray(value_scale, np.float64), (len(xs),))
    out, x_prev, raw_prev, dx_prev, t_prev = [], None, None, 0.0, None
    for x, t, value_scale in zip(xs, ts, scales):
        if x_prev is None:
            x_prev, raw_prev, t_prev = x, x, t
            out.append(x)
            continue
        te = t - t_prev
        dx = (x - raw_prev) * value_scale / te
        dx_hat = alpha(d_cutoff, te) * dx + (1 - alpha(d_cutoff, te)) * dx_prev
        fc = min_cutoff + beta * abs(dx_hat)
        x_hat = alpha(fc, te) * x + (1 - alpha(fc, te)) * x_prev
        out.append(x_hat)
        x_prev, raw_prev, dx_prev, t_prev = x_hat, x, dx_hat, t
    return np.array(out)


def test_one_euro_matches_the_published_formulas():
    rng = np.random.default_rng(0)
    ts = np.cumsum(rng.uniform(0.01, 0.06, 80))           # variable frame rate
    signal = np.sin(ts * 3) * 20 + rng.normal(0, 0.5, (80, 3)).T  # 3 channels filtered at once
    f = OneEuroFilter(min_cutoff=0.3, beta=0.7, d_cutoff=1.5)
    got = np.stack([f(signal[:, i], ts[i], 0.25) for i in range(80)])
    for c in range(3):
        ref = one_euro_reference(signal[c], ts, 0.3, 0.7, 1.5, value_scale=0.25)
        np.testing.assert_allclose(got[:, c], ref, rtol=1e-12, atol=1e-12)
    assert np.array_equal(got[0], signal[:, 0])            # the first sample passes through


def test_one_euro_is_causal_and_follows_a_constant():
    ts = np.arange(40) / 30
    x = np.where(np.arange(40) < 20, 0.0, 10.0)
    f, g = OneEuroFilter(1.0, 0.0), OneEuroFilter(1.0, 0.0)
    full = [f(np.array([v]), t)[0] for v, t in zip(x, ts)]
    # a different future does not change the past
    x2 = x.copy()
    x2[30:] = -5
    part = [g(np.array([v]), t)[0] for v, t in zip(x2, ts)]
    assert full[:30] == part[:30]
    assert full[:20] == [0.0] * 20
    assert 0 < full[20] < full[25] < 10                   # a low-pass step response


def test_value_scale_makes_the_filter_relative_to_face_size():
    # a face twice as large moving twice as fast: value_scale = 1 / size gives the same relative path
    rng = np.random.default_rng(1)
    ts = np.arange(60) / 30
    path = np.cumsum(rng.normal(0, 2, 60))
    small, big = OneEuroFilter(0.05, 80.0, 1.0), OneEuroFilter(0.05, 80.0, 1.0)
    a = np.array([small(np.array([p]), t, 1 / 50)[0] for p, t in zip(path, ts)])
    b = np.array([big(np.array([2 * p]), t, 1 / 100)[0] for p, t in zip(path, ts)])
    np.testing.assert_allclose(b, 2 * a, rtol=1e-10, atol=1e-10)


def test_one_euro_lowers_jitter_and_keeps_up_with_motion():
    rng = np.random.default_rng(2)
    ts = np.arange(300) / 30
    still = 100 + rng.normal(0, 0.3, 300)                  # a still face: 0.3 px noise, face 100 px
    f = OneEuroFilter(0.05, 80.0, 1.0)
    out = np.array([f(np.array([v]), t, 1 / 100)[0] for v, t in zip(still, ts)])
    # MediaPipe's beta 80 keeps the filter responsive: 0.24x here (0.48x for 1 px of noise)
    assert np.std(np.diff(out[30:])) < 0.35 * np.std(np.diff(still[30:]))
    # moving at 2 face sizes per second: the speed term opens the filter (beta), so it lags far less
    # than the same filter without it
    moving = 100 + 200 * ts + rng.normal(0, 1.0, 300)
    lag = {}
    for beta in (0.0, 80.0):
        f = OneEuroFilter(0.05, beta, 1.0)
        out = np.array([f(np.array([v]), t, 1 / 100)[0] for v, t in zip(moving, ts)])
        lag[beta] = np.mean(np.abs(out[150:] - (100 + 200 * ts[150:])))
    assert lag[80.0] < 0.05 * lag[0.0] and lag[80.0] < 5


def test_exponential_filter_is_time_aware():
    # a step seen at any frame rate: after T seconds the output is 1 - exp(-T / tau), exactly
    tau = 0.1
    for ts in (np.arange(0, 1.0, 1 / 30), np.cumsum(np.r_[0, np.random.default_rng(3).uniform(0.005, 0.08, 40)])):
        f = ExponentialFilter(tau)
        f(np.array([0.0]), ts[0] - 1e-3)
        out = np.array([f(np.array([1.0]), t)[0] for t in ts])
        np.testing.assert_allclose(out, 1 - np.exp(-(ts - ts[0] + 1e-3) / tau), rtol=1e-9, atol=1e-12)
    # probabilities stay probabilities
    f = ExponentialFilter(0.2)
    rng = np.random.default_rng(4)
    for i in range(20):
        p = rng.dirichlet(np.ones(7))
        q = f(p, i / 25)
        assert q.sum() == pytest.approx(1.0, abs=1e-12) and np.all(q >= 0)
    assert np.array_equal(ExponentialFilter(0.0)(np.array([3.0]), 0.0), [3.0])


def test_face_smoother_landmarks():
    # MediaPipe's object scale: mean of the landmark box's width and height
    lm = np.zeros((4, 3))
    lm[:, :2] = [[10, 20], [110, 20], [10, 80], [110, 80]]
    assert face_scale(lm) == pytest.approx((100 + 60) / 2)
    # every coordinate through MediaPipe's filter, the speed scaled by 1 / that frame's face size
    rng = np.random.default_rng(5)
    s = FaceSmoother(Smoothing())
    base = rng.uniform(0, 100, (478, 3))
    raw = np.stack([base + rng.normal(0, 0.5, base.shape) for _ in range(60)])
    ts = np.arange(60) / 30
    outs = np.stack([s.smooth_landmarks(raw[i], ts[i]) for i in range(60)])
    sizes = np.array([np.mean(r[:, :2].max(0) - r[:, :2].min(0)) for r in raw])
    for p, c in [(0, 0), (17, 1), (400, 2)]:
        ref = one_euro_reference(raw[:, p, c], ts, 0.05, 80.0, 1.0, value_scale=1 / sizes)
        np.testing.assert_allclose(outs[:, p, c], ref, rtol=1e-5, atol=1e-4)
    assert np.std(np.diff(outs[20:], axis=0)) < 0.5 * np.std(np.diff(raw[20:], axis=0))
    assert outs.dtype == np.float32 and outs.shape == (60, 478, 3)


def test_bad_parameters_and_timestamps():
    with pytest.raises(ValueError, match="Smoothing.min_cutoff"):
        Smoothing(min_cutoff=0)
    with pytest.raises(ValueError, match="Smoothing.beta"):
        Smoothing(beta=-1)
    with pytest.raises(ValueError, match="Smoothing.scores_time_constant"):
        Smoothing(scores_time_constant=float("nan"))
    with pytest.raises(ValueError, match="smoothing: expected"):
        resolve_smoothing("strong")
    with pytest.raises(ValueError, match="smoothing:.*unexpected keyword"):
        resolve_smoothing({"cutoff": 1})
    assert resolve_smoothing(None) is None and resolve_smoothing(False) is None
    assert resolve_smoothing("default") == Smoothing() == resolve_smoothing(True)
    assert resolve_smoothing({"beta": 10.0}).beta == 10.0
    f = OneEuroFilter()
    f(np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="timestamps must increase"):
        f(np.zeros(2), 1.0)
    with pytest.raises(ValueError, match="expected values of shape"):
        f(np.zeros(3), 2.0)
    e = ExponentialFilter(0.1)
    e(np.zeros(1), 0.5)
    with pytest.raises(ValueError, match="timestamps must increase"):
        e(np.zeros(1), 0.4)
