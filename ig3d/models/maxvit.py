"""MaxViT-T (Multi-Axis Vision Transformer, tiny) in plain torch, equal to torchvision's ``maxvit_t``.

Written from torchvision's definition (pytorch/vision: torchvision/models/maxvit.py, ``maxvit_t``;
``Conv2dNormActivation`` and ``SqueezeExcitation`` from torchvision/ops/misc.py, ``StochasticDepth``
from torchvision/ops/stochastic_depth.py) so that a torchvision ``maxvit_t`` state dict loads into
:class:`MaxViT` under the same parameter names, in the same order and shapes, and gives the same numbers.
No torchvision import: every block is plain ``torch.nn``. Inference is what ig3d needs; training-mode
behaviour (stochastic depth, BN batch statistics) follows torchvision too.

Configuration (``maxvit_t``): stem 64 channels; 4 stages with 64, 128, 256, 512 channels and 2, 2, 5, 2
layers; head_dim 32; partition 7; MBConv expansion 4, squeeze 0.25; MLP ratio 4; GELU (exact);
BatchNorm eps 1e-3, momentum 0.01; LayerNorm eps 1e-5; stochastic depth 0 .. 0.2 over the 11 layers.

Shapes for the only supported input, [B, 3, 224, 224] (ImageNet mean/std normalised RGB)::

    stem     conv3x3 s2 + BN + GELU, conv3x3 (bias)          -> [B,  64, 112, 112]
    blocks.0 2 layers, first one stride 2                    -> [B,  64,  56,  56]
    blocks.1 2 layers                                        -> [B, 128,  28,  28]
    blocks.2 5 layers                                        -> [B, 256,  14,  14]
    blocks.3 2 layers                                        -> [B, 512,   7,   7]
    classifier: avg pool, flatten, LayerNorm, Linear, Tanh, Linear(bias=False) -> [B, num_classes]

Each layer (``blocks.i.layers.j.layers``) is ``MBconv`` (pre-BN, 1x1 expand, 3x3 depthwise, squeeze-
excitation, 1x1 project; residual through avg pool + 1x1 conv when it strides), then ``window_attention``
(self-attention inside non-overlapping 7x7 windows) and ``grid_attention`` (self-attention among the 7x7
tokens spaced H/7 apart, i.e. a dilated global grid), each followed by an MLP, all pre-norm residual.

Only 224x224 is supported (other sizes raise ``ValueError``): torchvision fixes the feature-grid sizes at
construction (``input_size``) and its CAGE models were trained on 224x224 crops.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "INPUT_SIZE",
    "STEM_CHANNELS",
    "BLOCK_CHANNELS",
    "BLOCK_LAYERS",
    "HEAD_DIM",
    "PARTITION_SIZE",
    "FEATURE_DIM",
    "StochasticDepth",
    "MBConv",
    "RelativePositionAttention",
    "PartitionAttention",
    "MaxVitLayer",
    "MaxVitBlock",
    "MaxViT",
    "relative_position_index",
    "check_input",
]

#: Side of the square input; the only size :class:`MaxViT` accepts.
INPUT_SIZE = 224
STEM_CHANNELS = 64
BLOCK_CHANNELS: Tuple[int, ...] = (64, 128, 256, 512)
BLOCK_LAYERS: Tuple[int, ...] = (2, 2, 5, 2)
HEAD_DIM = 32
PARTITION_SIZE = 7
EXPANSION_RATIO = 4
SQUEEZE_RATIO = 0.25
MLP_RATIO = 4
STOCHASTIC_DEPTH_PROB = 0.2
#: Width of the last stage, i.e. of the pooled feature the classifier takes.
FEATURE_DIM = BLOCK_CHANNELS[-1]


def _batch_norm(channels: int) -> nn.BatchNorm2d:
    # torchvision's MaxVit default norm_layer, after google-research/maxvit (eps 1e-3, momentum 0.01).
    return nn.BatchNorm2d(channels, eps=1e-3, momentum=0.01)


def _conv_bn_gelu(in_c: int, out_c: int, kernel: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    """Conv (no bias, 'same'-style padding (k-1)//2) -> BN -> GELU; keys ``0.weight``, ``1.*`` as in
    torchvision's ``Conv2dNormActivation`` (its bias defaults to off when a norm layer follows)."""
    return nn.Sequential(
        nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=(kernel - 1) // 2, groups=groups, bias=False),
        _batch_norm(out_c),
        nn.GELU(),
    )


def relative_position_index(size: int) -> torch.Tensor:
    """[size^2, size^2] int64: for query token i = (yi, xi) and key token j = (yj, xj) of a size x size
    window (row-major), the row of the bias table for the offset (yi - yj, xi - xj):
    ``(yi - yj + size - 1) * (2 * size - 1) + (xi - xj + size - 1)``, in 0 .. (2 * size - 1)^2 - 1."""
    ys, xs = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    ys, xs = ys.flatten(), xs.flatten()
    dy = ys[:, None] - ys[None, :] + (size - 1)
    dx = xs[:, None] - xs[None, :] + (size - 1)
    return dy * (2 * size - 1) + dx


def check_input(x: torch.Tensor) -> None:
    """Raise ``ValueError`` unless ``x`` is [B, 3, 224, 224]."""
    if torch.jit.is_tracing():
        # Traced sizes are tensors (comparing them warns and bakes the answer in); an exported graph
        # is fixed at 224x224 anyway by the constant partition reshapes, and refuses other sizes.
        return
    if x.dim() != 4 or tuple(x.shape[1:]) != (3, INPUT_SIZE, INPUT_SIZE):
        raise ValueError(f"MaxViT-T takes [B, 3, {INPUT_SIZE}, {INPUT_SIZE}] input (224x224 only), "
                         f"got {list(x.shape)}")


class StochasticDepth(nn.Module):
    """Row-mode stochastic depth (torchvision/ops/stochastic_depth.py): in training, zero the whole
    residual branch of each sample with probability ``p`` and scale survivors by 1/(1-p); identity in
    eval mode. No parameters."""

    def __init__(self, p: float):
        super().__init__()
        self.p = float(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        noise = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise


class SqueezeExcitation(nn.Module):
    """x * sigmoid(fc2(SiLU(fc1(mean_hw(x))))), with 1x1 convs ``fc1``/``fc2`` (torchvision/ops/misc.py
    ``SqueezeExcitation`` with ``activation=nn.SiLU``). [B, C, H, W] -> [B, C, H, W]."""

    def __init__(self, channels: int, squeeze_channels: int):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(s))))
        return s * x


class MBConv(nn.Module):
    """Inverted-residual bottleneck: [B, in_c, H, W] -> [B, out_c, H/stride, W/stride].

    ``layers``: ``pre_norm`` BN, ``conv_a`` 1x1 to 4*out_c (BN, GELU), ``conv_b`` 3x3 depthwise with the
    stride (BN, GELU), ``squeeze_excitation`` (to out_c/4 and back), ``conv_c`` 1x1 to out_c (bias).
    Residual ``proj``: identity, or [AvgPool 3x3 s2 if stride 2] + 1x1 conv (bias) when the shape changes.
    Note: the expansion and squeeze widths are fractions of ``out_c``, not ``in_c`` (as torchvision).
    """

    def __init__(self, in_c: int, out_c: int, stride: int, p_stochastic: float = 0.0):
        super().__init__()
        if stride != 1 or in_c != out_c:
            proj: List[nn.Module] = [nn.Conv2d(in_c, out_c, 1, bias=True)]
            if stride == 2:
                # count_include_pad=True (the default), as torchvision: border means include the zero pad.
                proj.insert(0, nn.AvgPool2d(kernel_size=3, stride=stride, padding=1))
            self.proj: nn.Module = nn.Sequential(*proj)
        else:
            self.proj = nn.Identity()
        mid = int(out_c * EXPANSION_RATIO)
        self.layers = nn.Sequential(OrderedDict([
            ("pre_norm", _batch_norm(in_c)),
            ("conv_a", _conv_bn_gelu(in_c, mid, 1)),
            ("conv_b", _conv_bn_gelu(mid, mid, 3, stride=stride, groups=mid)),
            ("squeeze_excitation", SqueezeExcitation(mid, int(out_c * SQUEEZE_RATIO))),
            ("conv_c", nn.Conv2d(mid, out_c, 1, bias=True)),
        ]))
        # torchvision builds nn.Identity for p == 0 and StochasticDepth otherwise: same keys (none).
        self.stochastic_depth = StochasticDepth(p_stochastic)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x) + self.stochastic_depth(self.layers(x))


class RelativePositionAttention(nn.Module):
    """Multi-head self-attention within groups of ``size * size`` tokens, plus a learnt bias per head and
    relative offset. [B, G, P, C] -> [B, G, P, C] (G groups of P = size^2 tokens each).

    Keys as torchvision's ``RelativePositionalMultiHeadAttention``: ``to_qkv`` Linear(C -> 3C),
    ``merge`` Linear(C -> C), ``relative_position_bias_table`` [(2 size - 1)^2, heads] and the persistent
    int64 buffer ``relative_position_index`` [P, P] (:func:`relative_position_index`).
    """

    def __init__(self, dim: int, head_dim: int, size: int):
        super().__init__()
        if dim % head_dim:
            raise ValueError(f"dim {dim} is not divisible by head_dim {head_dim}")
        self.n_heads = dim // head_dim
        self.head_dim = head_dim
        self.tokens = size * size
        # torchvision scales by dim ** -0.5 (all channels), not head_dim ** -0.5 as in the paper: kept,
        # since the trained weights expect it. It multiplies k (not q or the product), also kept, because
        # the rounding then matches torchvision's bit for bit.
        self.scale = dim ** -0.5
        self.to_qkv = nn.Linear(dim, 3 * dim)
        self.merge = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(
            torch.empty((2 * size - 1) ** 2, self.n_heads, dtype=torch.float32))
        # Persistent, as in torchvision: the key is in every maxvit_t state dict.
        self.register_buffer("relative_position_index", relative_position_index(size))
        nn.init.trunc_normal_(self.relative_position_bias_table, std=0.02)

    def position_bias(self) -> torch.Tensor:
        """[1, heads, P, P]: the table gathered at every (query, key) offset."""
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        return bias.reshape(self.tokens, self.tokens, self.n_heads).permute(2, 0, 1).unsqueeze(0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, g, p, c = x.shape
        h, d = self.n_heads, self.head_dim
        # to_qkv's output is [q | k | v], each split into heads: [B, G, P, 3, H, D] -> 3 x [B, G, H, P, D].
        # The batch stays -1 so that an ONNX trace keeps it dynamic.
        q, k, v = self.to_qkv(x).reshape(-1, g, p, 3, h, d).permute(3, 0, 1, 4, 2, 5).unbind(0)
        k = k * self.scale
        attn = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) + self.position_bias(), dim=-1)
        out = torch.matmul(attn, v)                                   # [B, G, H, P, D]
        return self.merge(out.permute(0, 1, 3, 2, 4).reshape(-1, g, p, c))


class PartitionAttention(nn.Module):
    """Block ("window") or grid attention over a fixed [C, grid, grid] map: [B, C, H, W] -> same.

    ``window``: G = (H/7)^2 groups, each a contiguous 7x7 window. ``grid``: G = (H/7)^2 groups, each the
    7x7 tokens at stride H/7 (positions (i * H/7 + a, j * H/7 + b) for group (a, b), token (i, j)), i.e. a
    sparse global grid. Within the partitioned layout [B, G, 49, C] two pre-norm residual branches run:
    ``attn_layer`` (LayerNorm, :class:`RelativePositionAttention`) and ``mlp_layer`` (LayerNorm,
    Linear(C -> 4C), GELU, Linear(4C -> C)). torchvision's trailing Dropout modules (p = 0 in maxvit_t,
    no parameters) are left out; the indices of the parametrised modules are torchvision's.
    """

    def __init__(self, dim: int, kind: str, grid: int, p_stochastic: float = 0.0):
        super().__init__()
        if kind not in ("window", "grid"):
            raise ValueError(f"kind must be 'window' or 'grid', got {kind!r}")
        if grid % PARTITION_SIZE:
            raise ValueError(f"feature grid {grid} is not divisible by the partition size {PARTITION_SIZE}")
        self.kind = kind
        self.grid = grid
        self.dim = dim
        self.attn_layer = nn.Sequential(nn.LayerNorm(dim), RelativePositionAttention(dim, HEAD_DIM, PARTITION_SIZE))
        self.mlp_layer = nn.Sequential(
            nn.LayerNorm(dim), nn.Linear(dim, dim * MLP_RATIO), nn.GELU(), nn.Linear(dim * MLP_RATIO, dim))
        self.stochastic_dropout = StochasticDepth(p_stochastic)

    # How H (and W) split for each kind: window: h = (window row) * 7 + (row in window);
    # grid: h = (token row) * n + (group row). Permutation from the split [B, C, a, b, a, b] to the
    # partitioned layout [B, G rows, G cols, P rows, P cols, C], and from that back.
    _PARTITION = {"window": (0, 2, 4, 3, 5, 1), "grid": (0, 3, 5, 2, 4, 1)}
    _DEPARTITION = {"window": (0, 5, 1, 3, 2, 4), "grid": (0, 5, 3, 1, 4, 2)}

    def _split(self) -> Tuple[int, int]:
        """H = a * b: (windows, rows in a window) or (tokens, groups) along one side."""
        s, n = PARTITION_SIZE, self.grid // PARTITION_SIZE
        return (n, s) if self.kind == "window" else (s, n)

    def _partition(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, H, W] -> [B, G, 49, C]."""
        a, b = self._split()
        c, g = self.dim, (self.grid // PARTITION_SIZE) ** 2
        x = x.reshape(-1, c, a, b, a, b).permute(*self._PARTITION[self.kind])
        return x.reshape(-1, g, PARTITION_SIZE ** 2, c)

    def _departition(self, x: torch.Tensor) -> torch.Tensor:
        """[B, G, 49, C] -> [B, C, H, W]: the inverse of :meth:`_partition`."""
        s, n, c = PARTITION_SIZE, self.grid // PARTITION_SIZE, self.dim
        x = x.reshape(-1, n, n, s, s, c).permute(*self._DEPARTITION[self.kind])
        return x.reshape(-1, c, self.grid, self.grid)

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """The two residual branches on the partitioned layout: [B, G, 49, C] -> same."""
        x = x + self.stochastic_dropout(self.attn_layer(x))
        return x + self.stochastic_dropout(self.mlp_layer(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._departition(self.tokens(self._partition(x)))

    # The export form (:meth:`map_tokens`) works on the map's tokens in row-major order, [B*H*W, C]. With
    # H split as in :meth:`_split`, q|k|v [B, a, b, a, b, 3, heads, D] -> [3, B, G rows, G cols, heads,
    # P rows, P cols, D], and the attention output [B, G rows, G cols, heads, P rows, P cols, D] back to
    # [B, a, b, a, b, heads, D].
    _QKV_TO_GROUPS = {"window": (5, 0, 1, 3, 6, 2, 4, 7), "grid": (5, 0, 2, 4, 6, 1, 3, 7)}
    _GROUPS_TO_MAP = {"window": (0, 1, 4, 2, 5, 3, 6), "grid": (0, 4, 1, 5, 2, 3, 6)}

    def map_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Both residual branches on the map's tokens [B*H*W, C] (row-major, channels last) -> same.

        The same numbers as :meth:`forward` up to float rounding, with less data movement for an
        exported graph: LayerNorm, the Linears and the MLP act on each token alone, so they run on the
        map as it lies (2-D, so ONNX Runtime fuses each bias into its Gemm), and only q|k|v and the
        attention output are moved, each by one Transpose that partitions (or departitions) and splits
        (or merges) the heads at once."""
        a, b = self._split()
        s, n, c = PARTITION_SIZE, self.grid // PARTITION_SIZE, self.dim
        norm, attn = self.attn_layer
        h, d = attn.n_heads, attn.head_dim
        qkv = attn.to_qkv(norm(x)).reshape(-1, a, b, a, b, 3, h, d).permute(*self._QKV_TO_GROUPS[self.kind])
        q, k, v = qkv.reshape(3, -1, n * n, h, s * s, d).unbind(0)
        k = k * attn.scale
        weights = torch.softmax(torch.matmul(q, k.transpose(-2, -1)) + attn.position_bias(), dim=-1)
        out = torch.matmul(weights, v).reshape(-1, n, n, h, s, s, d).permute(*self._GROUPS_TO_MAP[self.kind])
        x = x + self.stochastic_dropout(attn.merge(out.reshape(-1, c)))
        return x + self.stochastic_dropout(self.mlp_layer(x))


class MaxVitLayer(nn.Module):
    """``layers``: ``MBconv`` -> ``window_attention`` -> ``grid_attention``.
    [B, in_c, 2 grid, 2 grid] (stride 2) or [B, out_c, grid, grid] -> [B, out_c, grid, grid]."""

    def __init__(self, in_c: int, out_c: int, stride: int, grid: int, p_stochastic: float):
        super().__init__()
        self.layers = nn.Sequential(OrderedDict([
            ("MBconv", MBConv(in_c, out_c, stride, p_stochastic)),
            ("window_attention", PartitionAttention(out_c, "window", grid, p_stochastic)),
            ("grid_attention", PartitionAttention(out_c, "grid", grid, p_stochastic)),
        ]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.onnx.is_in_onnx_export():
            # The same numbers with less data movement for ONNX Runtime: both attentions on the
            # channels-last map's tokens (PartitionAttention.map_tokens), entered and left by one
            # NCHW <-> NHWC Transpose each, instead of [B, C, H, W] <-> partitions around each one.
            layers = self.layers
            x = layers.MBconv(x)
            grid, c = layers.window_attention.grid, layers.window_attention.dim
            x = x.permute(0, 2, 3, 1).reshape(-1, c)
            x = layers.grid_attention.map_tokens(layers.window_attention.map_tokens(x))
            return x.reshape(-1, grid, grid, c).permute(0, 3, 1, 2)
        return self.layers(x)


class MaxVitBlock(nn.Module):
    """One stage: ``layers`` = len(p_stochastic) :class:`MaxVitLayer`, the first with stride 2.
    [B, in_c, 2 grid, 2 grid] -> [B, out_c, grid, grid]."""

    def __init__(self, in_c: int, out_c: int, grid: int, p_stochastic: List[float]):
        super().__init__()
        self.grid = grid
        self.layers = nn.ModuleList(
            MaxVitLayer(in_c if i == 0 else out_c, out_c, 2 if i == 0 else 1, grid, p)
            for i, p in enumerate(p_stochastic))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return x


def _halve(n: int) -> int:
    # Output side of a 3x3, stride-2, padding-1 convolution.
    return (n - 1) // 2 + 1


class MaxViT(nn.Module):
    """torchvision ``maxvit_t(num_classes=num_classes)``: same modules, keys, shapes and numbers.

    * ``forward_features(x)``: x [B, 3, 224, 224] -> last feature map [B, 512, 7, 7];
    * ``forward(x)``: -> ``classifier`` output [B, num_classes].

    ``stochastic_depth_prob`` only matters in training mode. Weights are initialised as torchvision's
    ``_init_weights`` (conv/linear N(0, 0.02), zero biases, BN 1/0; bias tables truncated N(0, 0.02)).
    """

    def __init__(self, num_classes: int = 1000, stochastic_depth_prob: float = STOCHASTIC_DEPTH_PROB):
        super().__init__()
        self.stem = nn.Sequential(
            _conv_bn_gelu(3, STEM_CHANNELS, 3, stride=2),
            nn.Sequential(nn.Conv2d(STEM_CHANNELS, STEM_CHANNELS, 3, padding=1, bias=True)),
        )
        n_layers = sum(BLOCK_LAYERS)
        # Linear 0 .. p over all 11 layers, computed as numpy's linspace does (i * step, last = p exactly)
        # so the per-layer probabilities equal torchvision's np.linspace(0, p, 11) in float64.
        step = stochastic_depth_prob / (n_layers - 1)
        probs = [i * step for i in range(n_layers - 1)] + [stochastic_depth_prob]
        self.blocks = nn.ModuleList()
        grid, in_c, start = _halve(INPUT_SIZE), STEM_CHANNELS, 0
        for out_c, layers in zip(BLOCK_CHANNELS, BLOCK_LAYERS):
            grid = _halve(grid)
            self.blocks.append(MaxVitBlock(in_c, out_c, grid, probs[start:start + layers]))
            in_c, start = out_c, start + layers
        self.classifier = nn.Sequential(
            nn.AdaptiveAvgPool2d(1),
            nn.Flatten(),
            nn.LayerNorm(FEATURE_DIM),
            nn.Linear(FEATURE_DIM, FEATURE_DIM),
            nn.Tanh(),
            nn.Linear(FEATURE_DIM, num_classes, bias=False),
        )
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, 224, 224] (ImageNet-normalised RGB) -> [B, 512, 7, 7]; other sizes raise ValueError."""
        check_input(x)
        x = self.stem(x)
        for block in self.blocks:
            x = block(x)
        return x

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, 224, 224] -> [B, num_classes] (raw scores)."""
        return self.classifier(self.forward_features(x))
