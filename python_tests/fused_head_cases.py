"""The fused-head cases of test_fused_head.py as one list, for the tests that run the same heads
another way (CUDA device arrays in test_device_arrays.py): each case builds its head and inputs
from the same seeds as the CPU test of the same name, so both paths see identical problems."""

from __future__ import annotations

import itertools
import zlib
from typing import Callable, List, NamedTuple

import numpy as np

from ig3d.fusion import ACTIVATIONS, FUSION_MODES
from test_fused_head import BATCHES, ig3d_sized_head, inputs, random_head


class Case(NamedTuple):
    id: str
    build: Callable  # () -> (head, params3d, scores2d or None, features2d or None)
    tol: float  # rtol = atol for comparisons against the CPU path


def _late(act, fusion, B):
    def build():
        rng = np.random.default_rng(zlib.crc32(f"{act}/{fusion}/{B}".encode()))
        head = random_head(rng, act=act, fusion=fusion)
        return (head, *inputs(rng, head, B))
    return build


def _mid(act, fusion, B):
    def build():
        rng = np.random.default_rng(zlib.crc32(f"mid/{act}/{fusion}/{B}".encode()))
        head = random_head(rng, act=act, fusion=fusion, intermediate=True)
        return (head, *inputs(rng, head, B))
    return build


def _residual(B):
    def build():
        rng = np.random.default_rng(B)
        head = random_head(rng, act="relu", fusion="mean", residual=True, va=False)
        return (head, *inputs(rng, head, B))
    return build


def _ig3d(B):
    def build():
        rng = np.random.default_rng(358)
        head = ig3d_sized_head(rng)
        p, s, _ = inputs(rng, head, B)
        return head, p, s, None
    return build


def fused_head_cases() -> List[Case]:
    """Every fp32 case of test_fused_head.py (late and intermediate fusion for every activation and
    fusion mode, residual heads, the paper's MLP4) at the batch sizes used there."""
    cases = [Case(f"late-{a}-{f}-B{B}", _late(a, f, B), 2e-4)
             for a, f in itertools.product(ACTIVATIONS, FUSION_MODES) for B in BATCHES]
    cases += [Case(f"mid-{a}-{f}-B{B}", _mid(a, f, B), 2e-4)
              for a in ACTIVATIONS for f in ("none", "weighted", "max") for B in BATCHES]
    cases += [Case(f"residual-B{B}", _residual(B), 2e-4) for B in BATCHES]
    cases += [Case(f"mlp4-B{B}", _ig3d(B), 1e-3) for B in (1, 7, 64)]
    return cases
