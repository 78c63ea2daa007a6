"""MobileNetV3 "minimal" feature extractors, written without timm.

Numerically equal to timm's ``tf_mobilenetv3_large_minimal_100`` and ``tf_mobilenetv3_small_minimal_100``
built with ``features_only=True`` (huggingface/pytorch-image-models: timm/models/mobilenetv3.py,
``_gen_mobilenet_v3`` and ``MobileNetV3Features``), the backbones of SMIRK's encoders
(georgeretsi/smirk: src/smirk_encoder.py, ``create_backbone``). Only the last feature map is returned,
because that is all SMIRK uses (``self.encoder(img)[-1]``).

Module and parameter names are timm's, so a timm state dict loads with no renaming::

    conv_stem.weight, bn1.*                       stem: 3x3 s2 conv 3->16, BN, ReLU
    blocks.<stage>.<block>.conv_dw / bn1 / conv_pw / bn2                 depthwise-separable
    blocks.<stage>.<block>.conv_pw / bn1 / conv_dw / bn2 / conv_pwl / bn3   inverted residual
    blocks.<last>.0.conv / bn1                    1x1 conv, BN, ReLU

Conventions of the ``tf_`` variants (timm/models/mobilenetv3.py: ``pad_type='same'``,
``bn_eps=BN_EPS_TF_DEFAULT``; timm/layers/padding.py, timm/layers/conv2d_same.py):

* stride-2 convolutions pad TF-"SAME" at run time: total padding
  ``max((ceil(in / s) - 1) * s + k - in, 0)`` per axis, the odd pixel going bottom/right
  (224 -> 112 with k3 s2 pads 0 top, 1 bottom), so it differs from PyTorch's symmetric ``padding=1``;
* stride-1 convolutions pad ``k // 2`` on each side (equal to SAME for odd k);
* BatchNorm eps 1e-3; "minimal" means ReLU everywhere, 3x3 depthwise kernels, no squeeze-excite and no
  hard-swish.

Block layouts (timm/models/_efficientnet_blocks.py): a block adds its input back when its stride is 1
and its input and output widths are equal; the depthwise-separable block has no activation after its
pointwise BN, the inverted residual none after its projection BN. Channel widths below are what the
SMIRK checkpoint holds (shared/reference/keys/smirk_encoder_keys.txt); they equal timm's arch strings
after its ``round_channels`` (e.g. 24 * 3.67 -> 88).
"""

from __future__ import annotations

import math
from typing import NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "BN_EPS",
    "BlockSpec",
    "LARGE_MINIMAL",
    "SMALL_MINIMAL",
    "SameConv2d",
    "DepthwiseSeparable",
    "InvertedResidual",
    "ConvBnAct",
    "MobileNetV3Minimal",
    "mobilenetv3_large_minimal_100",
    "mobilenetv3_small_minimal_100",
]

#: BatchNorm eps of the ``tf_`` variants: timm's ``BN_EPS_TF_DEFAULT`` (timm/models/_efficientnet_builder.py).
BN_EPS = 1e-3


class BlockSpec(NamedTuple):
    """One block: ``kind`` ``"ds"`` (depthwise-separable), ``"ir"`` (inverted residual) or ``"cn"``
    (1x1 conv-BN-ReLU); ``stride`` of its depthwise conv; ``mid_chs`` the expanded width (``ir`` only);
    ``out_chs``."""

    kind: str
    stride: int
    mid_chs: int
    out_chs: int


def _ir(stride: int, mid: int, out: int) -> BlockSpec:
    return BlockSpec("ir", stride, mid, out)


#: ``tf_mobilenetv3_large_minimal_100``: stem 16, then 7 stages; last map 960 x H/32 x W/32.
#: timm arch: ds_r1_k3_s1_e1_c16 | ir_r1_k3_s2_e4_c24, ir_r1_k3_s1_e3_c24 | ir_r3_k3_s2_e3_c40 |
#: ir_r1_k3_s2_e6_c80, ir_r1_k3_s1_e2.5_c80, ir_r2_k3_s1_e2.3_c80 | ir_r2_k3_s1_e6_c112 |
#: ir_r3_k3_s2_e6_c160 | cn_r1_k1_s1_c960.
LARGE_MINIMAL: Tuple[Tuple[BlockSpec, ...], ...] = (
    (BlockSpec("ds", 1, 16, 16),),
    (_ir(2, 64, 24), _ir(1, 72, 24)),
    (_ir(2, 72, 40), _ir(1, 120, 40), _ir(1, 120, 40)),
    (_ir(2, 240, 80), _ir(1, 200, 80), _ir(1, 184, 80), _ir(1, 184, 80)),
    (_ir(1, 480, 112), _ir(1, 672, 112)),
    (_ir(2, 672, 160), _ir(1, 960, 160), _ir(1, 960, 160)),
    (BlockSpec("cn", 1, 960, 960),),
)

#: ``tf_mobilenetv3_small_minimal_100``: stem 16, then 6 stages; last map 576 x H/32 x W/32.
#: timm arch: ds_r1_k3_s2_e1_c16 | ir_r1_k3_s2_e4.5_c24, ir_r1_k3_s1_e3.67_c24 |
#: ir_r1_k3_s2_e4_c40, ir_r2_k3_s1_e6_c40 | ir_r2_k3_s1_e3_c48 | ir_r3_k3_s2_e6_c96 | cn_r1_k1_s1_c576.
SMALL_MINIMAL: Tuple[Tuple[BlockSpec, ...], ...] = (
    (BlockSpec("ds", 2, 16, 16),),
    (_ir(2, 72, 24), _ir(1, 88, 24)),
    (_ir(2, 96, 40), _ir(1, 240, 40), _ir(1, 240, 40)),
    (_ir(1, 120, 48), _ir(1, 144, 48)),
    (_ir(2, 288, 96), _ir(1, 576, 96), _ir(1, 576, 96)),
    (BlockSpec("cn", 1, 576, 576),),
)


def _same_pad(size: int, k: int, s: int) -> Tuple[int, int]:
    """TF "SAME" padding (before, after) of one axis; the odd pixel goes after
    (timm/layers/padding.py ``get_same_padding`` / ``pad_same``)."""
    total = max((math.ceil(size / s) - 1) * s + k - size, 0)
    return total // 2, total - total // 2


class SameConv2d(nn.Conv2d):
    """Conv2d with TF "SAME" padding computed from the input size at run time (timm's ``Conv2dSame``).

    Used for the stride-2 convolutions only: there SAME padding is asymmetric and depends on the input
    size, so it cannot be a constructor argument. Input [B, C, H, W] -> [B, C', ceil(H/s), ceil(W/s)].

    For tracing (ONNX export) the pads can be fixed for one input size with :meth:`fix_input_size`
    (what :meth:`MobileNetV3Minimal.fix_input_size` does for a whole trunk), because reading the size of
    a traced tensor as a Python int is not recorded in the graph (timm's ``Conv2dSameExport`` likewise
    freezes the pads).
    """

    def __init__(self, in_chs: int, out_chs: int, kernel_size: int, stride: int, groups: int = 1):
        super().__init__(in_chs, out_chs, kernel_size, stride=stride, padding=0, groups=groups, bias=False)
        self._fixed: Optional[Tuple[Tuple[int, int], Tuple[int, int, int, int]]] = None

    def _pads(self, h: int, w: int) -> Tuple[int, int, int, int]:
        top, bottom = _same_pad(h, self.kernel_size[0], self.stride[0])
        left, right = _same_pad(w, self.kernel_size[1], self.stride[1])
        return left, right, top, bottom  # F.pad order: last axis first

    def fix_input_size(self, size: Optional[Tuple[int, int]]) -> None:
        """Fix the pads for inputs of ``size`` = (H, W); ``None`` goes back to computing them per call."""
        self._fixed = None if size is None else (tuple(size), self._pads(*size))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self._fixed is None:
            pads = self._pads(int(x.shape[-2]), int(x.shape[-1]))
        else:
            size, pads = self._fixed
            if not torch.jit.is_tracing() and tuple(x.shape[-2:]) != size:
                raise ValueError(f"padding fixed for {size[0]}x{size[1]} inputs, got {tuple(x.shape)}")
        if any(pads):
            x = F.pad(x, pads)
        return self._conv_forward(x, self.weight, None)


def _conv(in_chs: int, out_chs: int, k: int, stride: int = 1, groups: int = 1) -> nn.Conv2d:
    """timm ``create_conv2d(..., padding='same')``: dynamic SAME for stride 2, static k//2 for stride 1."""
    if stride > 1:
        return SameConv2d(in_chs, out_chs, k, stride, groups=groups)
    return nn.Conv2d(in_chs, out_chs, k, stride=1, padding=k // 2, groups=groups, bias=False)


def _bn(chs: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(chs, eps=BN_EPS)


class DepthwiseSeparable(nn.Module):
    """dw3x3 - BN - ReLU - pw1x1 - BN (no activation), + input when stride 1 and widths match.
    [B, C_in, H, W] -> [B, C_out, H/s, W/s]."""

    def __init__(self, in_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_dw = _conv(in_chs, in_chs, 3, stride, groups=in_chs)
        self.bn1 = _bn(in_chs)
        self.conv_pw = _conv(in_chs, out_chs, 1)
        self.bn2 = _bn(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv_dw(x)))
        y = self.bn2(self.conv_pw(y))
        return y + x if self.has_skip else y


class InvertedResidual(nn.Module):
    """pw1x1 expand - BN - ReLU - dw3x3 - BN - ReLU - pw1x1 project - BN (no activation), + input when
    stride 1 and widths match. [B, C_in, H, W] -> [B, C_out, H/s, W/s]."""

    def __init__(self, in_chs: int, mid_chs: int, out_chs: int, stride: int):
        super().__init__()
        self.has_skip = stride == 1 and in_chs == out_chs
        self.conv_pw = _conv(in_chs, mid_chs, 1)
        self.bn1 = _bn(mid_chs)
        self.conv_dw = _conv(mid_chs, mid_chs, 3, stride, groups=mid_chs)
        self.bn2 = _bn(mid_chs)
        self.conv_pwl = _conv(mid_chs, out_chs, 1)
        self.bn3 = _bn(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv_pw(x)))
        y = F.relu(self.bn2(self.conv_dw(y)))
        y = self.bn3(self.conv_pwl(y))
        return y + x if self.has_skip else y


class ConvBnAct(nn.Module):
    """1x1 conv - BN - ReLU, never a skip (timm ``ConvBnAct`` with ``skip=False``).
    [B, C_in, H, W] -> [B, C_out, H, W]."""

    def __init__(self, in_chs: int, out_chs: int):
        super().__init__()
        self.conv = _conv(in_chs, out_chs, 1)
        self.bn1 = _bn(out_chs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn1(self.conv(x)))


class MobileNetV3Minimal(nn.Module):
    """MobileNetV3 "minimal" trunk returning its last feature map.

    ``forward``: [B, 3, H, W] float32 -> [B, num_features, ceil(H/32), ceil(W/32)] (7x7 at 224).
    The input convention is the caller's (SMIRK feeds RGB in [0, 1], unnormalised).
    """

    def __init__(self, arch: Sequence[Sequence[BlockSpec]], stem_chs: int = 16):
        super().__init__()
        self.conv_stem = _conv(3, stem_chs, 3, stride=2)
        self.bn1 = _bn(stem_chs)
        stages = []
        chs = stem_chs
        for stage in arch:
            blocks = []
            for spec in stage:
                if spec.kind == "ds":
                    blocks.append(DepthwiseSeparable(chs, spec.out_chs, spec.stride))
                elif spec.kind == "ir":
                    blocks.append(InvertedResidual(chs, spec.mid_chs, spec.out_chs, spec.stride))
                elif spec.kind == "cn":
                    if spec.stride != 1:
                        raise ValueError("a 'cn' block must have stride 1")
                    blocks.append(ConvBnAct(chs, spec.out_chs))
                else:
                    raise ValueError(f"unknown block kind {spec.kind!r}")
                chs = spec.out_chs
            stages.append(nn.Sequential(*blocks))
        self.blocks = nn.Sequential(*stages)
        self.num_features = chs

    def fix_input_size(self, size: Optional[Tuple[int, int]]) -> None:
        """Fix every TF-SAME pad for inputs of ``size`` = (H, W) (``None`` undoes it); needed before
        tracing, see :class:`SameConv2d`. Inputs of another size then raise ``ValueError``."""
        h, w = (0, 0) if size is None else size
        # Modules are registered in execution order, and only stride changes the spatial size (SAME:
        # out = ceil(in / s); the stride-1 convs pad k//2 with odd k), so walking them tracks each input.
        for m in self.modules():
            if isinstance(m, SameConv2d):
                m.fix_input_size(None if size is None else (h, w))
            if isinstance(m, nn.Conv2d):
                h, w = -(-h // m.stride[0]), -(-w // m.stride[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn1(self.conv_stem(x)))
        return self.blocks(x)


def mobilenetv3_large_minimal_100() -> MobileNetV3Minimal:
    """timm ``tf_mobilenetv3_large_minimal_100`` trunk (features_only, last map): 960 channels,
    1.41 M parameters."""
    return MobileNetV3Minimal(LARGE_MINIMAL)


def mobilenetv3_small_minimal_100() -> MobileNetV3Minimal:
    """timm ``tf_mobilenetv3_small_minimal_100`` trunk (features_only, last map): 576 channels,
    0.43 M parameters."""
    return MobileNetV3Minimal(SMALL_MINIMAL)
