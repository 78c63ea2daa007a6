"""DDAMFN: DDAMNet (dual-direction attention heads) on a MixedFeatureNet trunk, in torch.

Written from the upstream definitions (SainingZhang/DDAMFN: DDAMFN++/networks/DDAM.py and
DDAMFN++/networks/MixedFeatureNet.py; the files under networks/ are the same) so that an upstream
``model_state_dict`` loads into :class:`DDAMNet` under the same parameter names and gives the same
numbers: bit-identical logits and features to upstream in float32 on the CPU (measured; see
python_tests/test_ddamfn.py). DDAMFN and DDAMFN++ share this network; ++ differs only in training and
face alignment.

Shapes (B = batch; input 112x112 RGB, ``ToTensor`` then ImageNet mean (0.485, 0.456, 0.406) / std
(0.229, 0.224, 0.225), as in SainingZhang/DDAMFN: DDAMFN++/affectnet8_test.py)::

    x [B,3,112,112] -> trunk (``features``, 9 stages)         -> map  [B,512,7,7]
    map -> num_head DDA heads                                 -> att  [B,512,7,7] each
    map * max(att_0, att_1, ...) -> depthwise 7x7 conv + BN   -> [B,512,1,1] -> flatten -> f [B,512]
    f -> fc                                                   -> logits [B,C]   (no softmax)

``f`` is what Ig3D's intermediate fusion takes as the 2D feature (F_2D, dongludeeplearning/Ig3D:
models/classification/intermediatefusion/networks/DDAM_smirkfusion_feature.py).

**Dead upstream parameters are not built here.** Upstream constructs modules that its forward never
calls; they sit in every checkpoint but cannot affect any output:

* ``<block>.conv_dw.bn.*`` and ``<block>.conv_dw.prelu.weight`` in each of the 34 mixed blocks
  (``MDConv.forward`` only splits, convolves and concatenates),
* ``cat_head<i>.CoordAtt.Linear.*`` (built in the head's ``CoordAtt.__init__``, unused in its forward),
* the top-level ``bn.*`` (a ``BatchNorm1d(num_class)`` that ``DDAMNet.forward`` never applies).

That is 81,424 trainable values (plus their BN running statistics) of upstream's 4,187,936 for 8
classes; :class:`DDAMNet` holds the 4,106,512 live ones. ``ig3d.convert.ddamfn`` knows the dead keys by
name and shape, checks and discards them when loading, and never exports them.

No torchvision: every block is plain ``torch.nn``.
"""

from __future__ import annotations

from typing import Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["DDAMNet", "FEATURE_DIM", "INPUT_SIZE", "IMAGENET_MEAN", "IMAGENET_STD", "mixed_feature_trunk"]

FEATURE_DIM = 512
INPUT_SIZE = 112
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def _h_swish(x: torch.Tensor) -> torch.Tensor:
    # Same operation order as upstream h_swish (x * (relu6(x + 3) / 6)), so results match bit for bit
    # rather than to rounding; F.hardswish would export to the same ONNX semantics but round differently.
    return x * (torch.clamp(x + 3.0, 0.0, 6.0) / 6.0)


class ConvBlock(nn.Module):
    """Conv (no bias) -> BN -> per-channel PReLU. Upstream ``Conv_block`` (MixedFeatureNet.py)."""

    def __init__(self, in_c: int, out_c: int, kernel: int = 1, stride: int = 1, padding: int = 0,
                 groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, stride=stride, padding=padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)
        self.prelu = nn.PReLU(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prelu(self.bn(self.conv(x)))


class LinearBlock(nn.Module):
    """Conv (no bias) -> BN, no activation. Upstream ``Linear_block`` (DDAM.py, MixedFeatureNet.py)."""

    def __init__(self, in_c: int, out_c: int, kernel: Tuple[int, int] = (1, 1), groups: int = 1):
        super().__init__()
        self.conv = nn.Conv2d(in_c, out_c, kernel, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x))


def _gate_product(att: nn.Module, x_h: torch.Tensor, x_w: torch.Tensor) -> torch.Tensor:
    """Coordinate-attention gates a_h [B,C,H,1] x a_w [B,C,1,W] as one [B,C,H,W] tensor, the form
    written to ONNX (eval mode). Equal to the upstream form, which concatenates the pooled x_h
    [B,C,H,1] and x_w [B,C,1,W] (transposed) along H, runs conv1 / bn1 / h_swish once and splits:
    those are per-position ops, so here they run on each part on its own, with no concat, split or
    transposes. The outer product is a MatMul, and the caller multiplies x by it once: ONNX
    Runtime's two broadcasting Muls, [B,C,H,W] by [B,C,1,W] and then by [B,C,H,1], took 2-3x as
    long (measured, one thread). ``x * (a_h a_w)`` differs from upstream's ``x * a_w * a_h`` by
    float rounding only; the heads' bare ``a_h a_w`` is the same product."""
    def mid(v):
        return _h_swish(att.bn1(att.conv1(v)))
    a_h = att.conv2(mid(x_h)).sigmoid()                             # [B,C,H,1]
    a_w = att.conv3(mid(x_w)).sigmoid()                             # [B,C,1,W]
    return torch.matmul(a_h, a_w)


class MixedDepthwiseConv(nn.Module):
    """Channel-split depthwise conv, one kernel size per group, outputs concatenated.

    Upstream ``MDConv`` (MixedFeatureNet.py) without its dead ``bn``/``prelu`` (see module docstring):
    [B,sum(splits),H,W] -> [B,sum(splits),H/stride,W/stride].
    """

    def __init__(self, kernel_sizes: Sequence[int], splits: Sequence[int], stride: int):
        super().__init__()
        if len(kernel_sizes) != len(splits):
            raise ValueError(f"kernel_sizes {tuple(kernel_sizes)} and splits {tuple(splits)} differ in length")
        self.splits = [int(s) for s in splits]
        self.mixed_depthwise_conv = nn.ModuleList(
            nn.Conv2d(c, c, k, stride=stride, padding=k // 2, groups=c, bias=False)
            for k, c in zip(kernel_sizes, self.splits))

    @property
    def channels(self) -> int:
        return sum(self.splits)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.splits, dim=1)
        return torch.cat([conv(p) for conv, p in zip(self.mixed_depthwise_conv, parts)], dim=1)


class CoordAtt(nn.Module):
    """Coordinate attention of the trunk: gates from average pools along W and along H.

    Upstream ``CoordAtt`` in MixedFeatureNet.py (mip = max(8, inp // 32)). [B,C,H,W] -> [B,C,H,W].
    """

    def __init__(self, channels: int, groups: int = 32):
        super().__init__()
        mip = max(8, channels // groups)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, channels, 1)
        self.conv3 = nn.Conv2d(mip, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        # Means over W / over H. In torch: upstream's own kernel, AdaptiveAvgPool2d((None, 1)) /
        # ((1, None)), not Tensor.mean; the two sum in different orders, and their 1e-7 differences
        # grow to ~5e-5 over the 34 blocks (measured), past our 1e-5 parity budget. The ONNX exporter
        # rejects adaptive pooling with shape-derived sizes, so the export takes ReduceMean instead
        # (which ig3d.convert.ddamfn then writes as a depthwise conv) and the gate product.
        if torch.onnx.is_in_onnx_export():
            x_h = x.mean(dim=3, keepdim=True)
            x_w = x.mean(dim=2, keepdim=True)
            if not self.training:
                return x * _gate_product(self, x_h, x_w)
        else:
            x_h = F.adaptive_avg_pool2d(x, (h, 1))                  # [B,C,H,1]
            x_w = F.adaptive_avg_pool2d(x, (1, w))                  # [B,C,1,W]
        x_w = x_w.permute(0, 1, 3, 2)                               # [B,C,W,1]
        y = _h_swish(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv2(y_h).sigmoid()                             # [B,C,H,1]
        a_w = self.conv3(y_w.permute(0, 1, 3, 2)).sigmoid()         # [B,C,1,W]
        # Broadcasting instead of upstream's expand(); same products in the same order.
        return x * a_w * a_h


class MixDepthWise(nn.Module):
    """Mixed inverted block: 1x1 expand (Conv-BN-PReLU) -> mixed depthwise conv -> coordinate
    attention -> 1x1 project (Conv-BN), plus the input when ``residual``.

    Upstream ``Mix_Depth_Wise`` (MixedFeatureNet.py). Note: upstream applies no BN or activation
    after the mixed depthwise conv (its MDConv bn/prelu are dead), and neither do we.
    [B,in_c,H,W] -> [B,out_c,H/stride,W/stride].
    """

    def __init__(self, in_c: int, out_c: int, expand: int, kernel_sizes: Sequence[int], splits: Sequence[int],
                 stride: int, residual: bool = False):
        super().__init__()
        if sum(splits) != expand:
            raise ValueError(f"splits {tuple(splits)} must add up to the expanded width {expand}")
        self.conv = ConvBlock(in_c, expand, 1)
        self.conv_dw = MixedDepthwiseConv(kernel_sizes, splits, stride)
        self.CA = CoordAtt(expand)
        self.project = LinearBlock(expand, out_c)
        self.residual = residual

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.project(self.CA(self.conv_dw(self.conv(x))))
        return x + y if self.residual else y


class MixResidual(nn.Module):
    """``num_block`` residual :class:`MixDepthWise` blocks (stride 1) under ``.model``.

    Upstream ``Mix_Residual`` (MixedFeatureNet.py). [B,c,H,W] -> [B,c,H,W].
    """

    def __init__(self, c: int, num_block: int, expand: int, kernel_sizes: Sequence[int], splits: Sequence[int]):
        super().__init__()
        self.model = nn.Sequential(*(MixDepthWise(c, c, expand, kernel_sizes, splits, stride=1, residual=True)
                                     for _ in range(num_block)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


def mixed_feature_trunk() -> nn.Sequential:
    """MixedFeatureNet up to ``conv_6_sep``: [B,3,112,112] -> [B,512,7,7].

    Upstream DDAMNet takes ``list(MixedFeatureNet().children())[:-4]``, i.e. drops ``conv_6_dw``,
    ``conv_6_flatten``, ``linear`` and ``bn`` (the face-recognition embedding); the indices below are
    the ``features.<i>`` of the checkpoint keys.
    """
    return nn.Sequential(
        ConvBlock(3, 64, 3, stride=2, padding=1),                                    # 0 conv1      64x56x56
        ConvBlock(64, 64, 3, stride=1, padding=1, groups=64),                        # 1 conv2_dw   64x56x56
        MixDepthWise(64, 64, 128, (3, 5, 7), (64, 32, 32), stride=2),                # 2 conv_23    64x28x28
        MixResidual(64, 9, 128, (3, 5), (96, 32)),                                   # 3 conv_3     64x28x28
        MixDepthWise(64, 128, 256, (3, 5, 7), (128, 64, 64), stride=2),              # 4 conv_34   128x14x14
        MixResidual(128, 16, 256, (3, 5), (192, 64)),                                # 5 conv_4    128x14x14
        MixDepthWise(128, 256, 1024, (3, 5, 7, 9), (256, 256, 256, 256), stride=2),  # 6 conv_45   256x7x7
        MixResidual(256, 6, 512, (3, 5, 7), (172, 170, 170)),                        # 7 conv_5    256x7x7
        ConvBlock(256, 512, 1),                                                      # 8 conv_6_sep 512x7x7
    )


class DDACoordAtt(nn.Module):
    """One dual-direction attention map: [B,512,7,7] -> gates [B,512,7,7] (not multiplied by x).

    Upstream ``CoordAtt`` in DDAM.py: like the trunk's, but the pools are learned depthwise (1x7)
    and (7x1) convs + BN, and it returns the gate product alone. Its ``Linear`` (7x7) is dead and
    not built here. Needs a 7x7 map, i.e. 112x112 input.
    """

    def __init__(self, channels: int = FEATURE_DIM, groups: int = 32):
        super().__init__()
        self.Linear_h = LinearBlock(channels, channels, kernel=(1, 7), groups=channels)   # [B,C,7,1]
        self.Linear_w = LinearBlock(channels, channels, kernel=(7, 1), groups=channels)   # [B,C,1,7]
        mip = max(8, channels // groups)
        self.conv1 = nn.Conv2d(channels, mip, 1)
        self.bn1 = nn.BatchNorm2d(mip)
        self.conv2 = nn.Conv2d(mip, channels, 1)
        self.conv3 = nn.Conv2d(mip, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[2], x.shape[3]
        x_h = self.Linear_h(x)
        if torch.onnx.is_in_onnx_export() and not self.training:
            return _gate_product(self, x_h, self.Linear_w(x))
        x_w = self.Linear_w(x).permute(0, 1, 3, 2)
        y = _h_swish(self.bn1(self.conv1(torch.cat([x_h, x_w], dim=2))))
        y_h, y_w = torch.split(y, [h, w], dim=2)
        a_h = self.conv2(y_h).sigmoid()                             # [B,C,H,1]
        a_w = self.conv3(y_w.permute(0, 1, 3, 2)).sigmoid()         # [B,C,1,W]
        return a_w * a_h                                            # upstream: x_w * x_h, expanded


class DDAHead(nn.Module):
    """Upstream ``CoordAttHead`` (DDAM.py): a wrapper whose only child is named ``CoordAtt``."""

    def __init__(self):
        super().__init__()
        self.CoordAtt = DDACoordAtt(FEATURE_DIM)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.CoordAtt(x)


class DDAMNet(nn.Module):
    """DDAMNet: MixedFeatureNet trunk, ``num_head`` DDA heads, 512-d feature, linear classifier.

    ``num_classes``: 8 (AffectNet-8), 7 (AffectNet-7, RAF-DB); ``num_head``: 2 in every released
    checkpoint. Parameter names follow upstream (``features.*``, ``cat_head<i>.CoordAtt.*``,
    ``Linear.*``, ``fc.*``) so ``load_state_dict`` takes an upstream ``model_state_dict`` once its dead
    keys are removed (``ig3d.convert.ddamfn.build_ddamfn`` does that and checks everything else).

    Unlike upstream, whose forward returns ``(logits, trunk map, head maps)``:

    * ``forward(x)``: x [B,3,112,112] (ImageNet-normalised RGB) -> logits [B,num_classes];
    * ``features(x)``: -> the 512-d vector [B,512] that ``fc`` takes (Ig3D's F_2D);
    * ``forward_with_features(x)``: -> (logits, features) from one pass.

    The trunk is registered as ``features`` (the checkpoint prefix) but, since the method
    ``features`` takes that attribute name, it is reached as :attr:`trunk`.
    """

    def __init__(self, num_classes: int = 8, num_head: int = 2):
        super().__init__()
        if num_classes < 1 or num_head < 1:
            raise ValueError(f"num_classes ({num_classes}) and num_head ({num_head}) must be >= 1")
        self.num_classes = int(num_classes)
        self.num_head = int(num_head)
        # Registered straight into _modules: ``self.features`` is the method below, and the
        # checkpoint needs the prefix "features." (add_module would refuse the clash).
        self._modules["features"] = mixed_feature_trunk()
        for i in range(self.num_head):
            setattr(self, f"cat_head{i}", DDAHead())
        self.Linear = LinearBlock(FEATURE_DIM, FEATURE_DIM, kernel=(7, 7), groups=FEATURE_DIM)
        self.fc = nn.Linear(FEATURE_DIM, self.num_classes)

    @property
    def trunk(self) -> nn.Sequential:
        """The MixedFeatureNet trunk (checkpoint prefix ``features.``): [B,3,112,112] -> [B,512,7,7]."""
        return self._modules["features"]

    def heads(self):
        """The DDA heads ``cat_head0 .. cat_head{num_head-1}``, in order."""
        return [getattr(self, f"cat_head{i}") for i in range(self.num_head)]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,112,112] -> the 512-d feature [B,512] (input of ``fc``)."""
        m = self.trunk(x)                                           # [B,512,7,7]
        heads = self.heads()
        att = heads[0](m)
        for head in heads[1:]:
            att = torch.max(att, head(m))                           # element-wise max over heads
        return torch.flatten(self.Linear(m * att), 1)               # [B,512,1,1] -> [B,512]

    def forward_with_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B,3,112,112] -> (logits [B,num_classes], features [B,512])."""
        f = self.features(x)
        return self.fc(f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,112,112] -> logits [B,num_classes] (raw scores, no softmax)."""
        return self.fc(self.features(x))
