"""A plain numpy (float64) implementation of the fused head: the oracle the C++ and CUDA kernels
are tested against, and the "numpy" line of the benchmarks. Written for clarity, not speed."""

from __future__ import annotations

import numpy as np

from .fusion import FusedHead, FusedOutput

_ACT = {
    "none": lambda v, s: v,
    "relu": lambda v, s: np.maximum(v, 0.0),
    "leaky_relu": lambda v, s: np.where(v > 0, v, v * s),
    "tanh": lambda v, s: np.tanh(v),
    "sigmoid": lambda v, s: 1.0 / (1.0 + np.exp(-v)),
}


def combine(s2d, s3d, mode: str, w2d=0.5, w3d=0.5):
    s2d, s3d = np.asarray(s2d, np.float64), np.asarray(s3d, np.float64)
    if mode == "max":
        return np.maximum(s2d, s3d)
    if mode == "min":
        return np.minimum(s2d, s3d)
    if mode == "mean":
        return (s2d + s3d) / 2
    if mode == "weighted":
        return w2d * s2d + w3d * s3d
    raise ValueError(mode)


def reference_forward(head: FusedHead, params3d, scores2d=None, features2d=None, dtype=np.float64) -> FusedOutput:
    p = np.asarray(params3d, dtype)
    x = (p[:, head.select] - head.mean.astype(dtype)) / head.std.astype(dtype)
    xs = [x]
    for l, layer in enumerate(head.layers):
        if head.concat_at == l:
            f = np.asarray(features2d, dtype)
            x = np.concatenate([x, f] if head.concat_order == "3d_first" else [f, x], axis=1)
        y = x @ layer.weight.astype(dtype).T + layer.bias.astype(dtype)
        y = _ACT[layer.activation](y, layer.slope)
        if layer.skip_from is not None:
            y = y + xs[layer.skip_from]
        xs.append(y)
        x = y
    out3d = x
    fused = out3d.copy()
    if scores2d is not None and head.fusion != "none":
        s = np.asarray(scores2d, dtype)
        for k, o in enumerate(head.fusion_map):
            fused[:, o] = combine(s[:, k], out3d[:, o], head.fusion, float(head.w2d[k]), float(head.w3d[k]))
    C = head.num_classes
    logits = fused[:, :C]
    z = np.exp(logits - logits.max(axis=1, keepdims=True)) if C else logits
    probs = z / z.sum(axis=1, keepdims=True) if C else logits
    va = None if head.va_index is None else fused[:, head.va_index:head.va_index + 2]
    return FusedOutput(probs, logits, va, out3d)
