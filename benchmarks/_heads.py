"""The two heads the fused-head benchmarks measure, built once in torch (the way research code runs
them) and converted to ig3d, plus a float32 numpy version of the same computation."""

from __future__ import annotations

import numpy as np

import ig3d


def build(kind: str, seed: int = 0):
    """kind: "small" (D=55 -> 64 -> 7, late fusion with 7 2D scores) or "ig3d" (D=358 -> four
    Linear(2048)+BN+LeakyReLU(0.2) blocks -> 10 = 8 logits + V + A, late fusion with 8 scores).
    Returns (torch_fn, ig3d_head, numpy_fn, inputs_fn)."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    if kind == "small":
        d, widths, out, C, va, w = 55, [64], 7, 7, None, (0.8, 0.2)
    elif kind == "ig3d":
        d, widths, out, C, va, w = 358, [2048] * 4, 10, 8, 8, (0.77, 0.23)
    else:
        raise ValueError(kind)
    mods, n = [], d
    for h in widths:
        mods += [nn.Linear(n, h), nn.BatchNorm1d(h), nn.LeakyReLU(0.2), nn.Dropout(0.5)]
        n = h
    mods.append(nn.Linear(n, out))
    net = nn.Sequential(*mods).eval()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.BatchNorm1d):
                m.running_mean.normal_(0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    mean = torch.randn(d) * 0.1
    std = torch.rand(d) + 0.5
    K = C

    def torch_fn(p, s):
        with torch.inference_mode():
            x = (p - mean) / std
            o = net(x)
            fused = o.clone()
            fused[:, :K] = w[0] * s + w[1] * o[:, :K]
            probs = torch.softmax(fused[:, :C], dim=1)
            return probs, (fused[:, va:va + 2] if va is not None else None)

    head = ig3d.FusedHead.from_torch(net, input_dim=d, mean=mean.numpy(), std=std.numpy(), num_classes=C,
                                     va_index=va, fusion="weighted", scores2d_dim=K, fusion_weights=w)
    layers = [(l.weight.T.copy(), l.bias.copy(), l.activation) for l in head.layers]
    mean_np, inv_std_np = mean.numpy(), (1 / std).numpy()

    def numpy_fn(p, s):
        x = (p - mean_np) * inv_std_np
        for wt, b, act in layers:
            x = x @ wt + b
            if act == "leaky_relu":
                x = np.where(x > 0, x, 0.2 * x)
        fused = x.copy()
        fused[:, :K] = w[0] * s + w[1] * x[:, :K]
        z = np.exp(fused[:, :C] - fused[:, :C].max(1, keepdims=True))
        return z / z.sum(1, keepdims=True)

    def inputs(batch, rng=np.random.default_rng(seed)):
        p = rng.normal(size=(batch, d)).astype(np.float32)
        s = rng.normal(size=(batch, K)).astype(np.float32)
        return p, s

    return torch_fn, head, numpy_fn, inputs


def weight_bytes(head: "ig3d.FusedHead") -> int:
    return sum(l.weight.nbytes for l in head.layers)
