"""ResNet-50 feature trunk as used by DECA and EMOCA, in plain torch (no torchvision).

Re-implements yfeng95/DECA: decalib/models/resnet.py (``ResNet``, ``Bottleneck``,
``load_ResNet50Model``), copied unchanged into radekd91/emoca: gdl/models/ResNet.py. That code is
torchvision's ResNet with its module names, so checkpoint keys are torchvision's ``resnet50`` keys minus
``fc.*``:

* ``conv1`` 7x7/2, ``bn1``, ReLU, 3x3/2 max pool, then ``layer1..layer4`` of 3, 4, 6, 3 ``Bottleneck``
  blocks (``conv1/bn1`` 1x1, ``conv2/bn2`` 3x3, ``conv3/bn3`` 1x1 with 4x expansion, ``downsample.0/.1``
  1x1 conv + BN on the first block of each stage);
* the stride sits in the 3x3 conv (torchvision "v1.5"), BatchNorm eps 1e-5, no conv biases;
* **no** ``fc``; a fixed ``AvgPool2d(7, stride=1)`` on the 7x7 last map gives the [B, 2048] feature.

The fixed 7x7 pool is why the input must be 224x224. Upstream fails with a shape error in its Linear
head for most other sizes, but silently accepts 193..224 (the last map is still 7x7) and then encodes a
face at a scale it was not trained on. Here any size other than 224x224 raises ``ValueError``.
"""

from __future__ import annotations

from typing import Optional

import torch
from torch import nn

__all__ = ["INPUT_SIZE", "FEATURE_DIM", "Bottleneck", "ResNet50"]

#: Input side the fixed 7x7 average pool requires (224 / 32 = 7).
INPUT_SIZE = 224
#: Width of the pooled feature (512 planes x expansion 4).
FEATURE_DIM = 2048


class Bottleneck(nn.Module):
    """torchvision v1.5 bottleneck: 1x1 -> 3x3 (carries ``stride``) -> 1x1 (x4 channels), each followed
    by BN, ReLU after the first two and after the residual sum. [B, inplanes, H, W] ->
    [B, 4 * planes, H / stride, W / stride]."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: Optional[nn.Module] = None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, kernel_size=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, kernel_size=3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * self.expansion, kernel_size=1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


class ResNet50(nn.Module):
    """ResNet-50 trunk: [B, 3, 224, 224] -> [B, 2048] (after the fixed 7x7 average pool).

    Freshly constructed weights are PyTorch's defaults (upstream draws He-normal convs and then copies
    torchvision's ImageNet weights); this class is meant to receive a checkpoint.
    """

    #: Bottleneck blocks per stage (ResNet-50).
    STAGES = (3, 4, 6, 3)

    def __init__(self):
        super().__init__()
        self._inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(64, self.STAGES[0])
        self.layer2 = self._make_layer(128, self.STAGES[1], stride=2)
        self.layer3 = self._make_layer(256, self.STAGES[2], stride=2)
        self.layer4 = self._make_layer(512, self.STAGES[3], stride=2)
        # Upstream's pool, kept as is (not a global mean) so the arithmetic, and hence the output, is the same.
        self.avgpool = nn.AvgPool2d(7, stride=1)

    def _make_layer(self, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
        downsample = None
        if stride != 1 or self._inplanes != planes * Bottleneck.expansion:
            downsample = nn.Sequential(
                nn.Conv2d(self._inplanes, planes * Bottleneck.expansion, kernel_size=1, stride=stride, bias=False),
                nn.BatchNorm2d(planes * Bottleneck.expansion),
            )
        layers = [Bottleneck(self._inplanes, planes, stride, downsample)]
        self._inplanes = planes * Bottleneck.expansion
        layers += [Bottleneck(self._inplanes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Checked eagerly only: under tracing (ONNX export) the shape is the dummy input's, and a Python
        # comparison on traced sizes would only produce a TracerWarning.
        if not torch.jit.is_tracing() and (x.dim() != 4 or x.shape[1] != 3
                                          or tuple(x.shape[-2:]) != (INPUT_SIZE, INPUT_SIZE)):
            raise ValueError(f"ResNet-50 trunk needs [B, 3, {INPUT_SIZE}, {INPUT_SIZE}] input (its 7x7 average "
                             f"pool is fixed), got {list(x.shape)}")
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return torch.flatten(self.avgpool(x), 1)
