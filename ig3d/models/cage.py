"""CAGE (wagner-niklas/CAGE_expression_inference): MaxViT-T with CAGE's classifier, in plain torch.

CAGE takes torchvision's ImageNet ``maxvit_t`` and replaces ``model.classifier`` with its own
``nn.Sequential`` (wagner-niklas/CAGE_expression_inference: models/AffectNet8_Maxvit_Combined/train.py and
generate_csv.py for the combined model, models/AffectNet8_Maxvit_VA/train.py and generate_csv.py for the
VA model). Its checkpoints are that model's ``state_dict()``: :class:`CageNet` has the same modules and
keys (``stem.*``, ``blocks.*`` from :class:`ig3d.models.maxvit.MaxViT`, and ``classifier.<i>.*``), so they
load strictly with no renaming (see :mod:`ig3d.convert.cage`).

=========== ============================================================================ ===========
variant     ``classifier`` (index: module)                                               outputs
=========== ============================================================================ ===========
combined    0 AdaptiveAvgPool2d(1), 1 Flatten, 2 LayerNorm(512), 3 Linear(512, 512),      [B, 10]
            4 Tanh, 5 Linear(512, 10, bias=False)
va          0 .. 4 as above, 5 Dropout(0.3), 6 Linear(512, 2, bias=False)                [B, 2]
=========== ============================================================================ ===========

Combined outputs: [0:8] AffectNet-8 logits (no softmax), [8] valence, [9] arousal. VA outputs: [0]
valence, [1] arousal (no output activation). :meth:`CageNet.features` is the 512-d vector after the Tanh,
the F_2D of Ig3D's CAGE-based VA intermediate fusion (dongludeeplearning/Ig3D:
models/VA/intermediatefusion/intermediate_fusion_train.py; docs REFERENCE 1.3).

Input: [B, 3, 224, 224] RGB, ``ToTensor`` then ImageNet mean/std (:data:`IMAGENET_MEAN`,
:data:`IMAGENET_STD`), no resize (CAGE evaluates AffectNet's 224x224 crops as they are). Other sizes
raise ``ValueError``.
"""

from __future__ import annotations

from typing import Dict, Tuple

import torch
from torch import nn

from .maxvit import FEATURE_DIM, INPUT_SIZE, MaxViT

__all__ = [
    "INPUT_SIZE",
    "FEATURE_DIM",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "VARIANTS",
    "VA_DROPOUT",
    "CageNet",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
#: Output width per variant: combined = 8 AffectNet logits + valence + arousal; va = valence + arousal.
VARIANTS: Dict[str, int] = {"combined": 10, "va": 2}
#: Dropout before the VA model's last Linear (wagner-niklas/CAGE_expression_inference:
#: models/AffectNet8_Maxvit_VA/train.py); it shifts that Linear's key to ``classifier.6``.
VA_DROPOUT = 0.3
#: Number of leading ``classifier`` modules that produce :meth:`CageNet.features` (pool .. Tanh).
_FEATURE_MODULES = 5


def _cage_classifier(variant: str) -> nn.Sequential:
    head = [
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.LayerNorm(FEATURE_DIM),
        nn.Linear(FEATURE_DIM, FEATURE_DIM),
        nn.Tanh(),
    ]
    if variant == "va":
        head.append(nn.Dropout(VA_DROPOUT))
    head.append(nn.Linear(FEATURE_DIM, VARIANTS[variant], bias=False))
    return nn.Sequential(*head)


class CageNet(MaxViT):
    """MaxViT-T backbone plus CAGE's classifier; ``variant`` is ``"combined"`` (10 outputs) or ``"va"`` (2).

    * ``forward(x)``: x [B, 3, 224, 224] -> outputs [B, 10] or [B, 2] (raw; see the module docstring);
    * ``features(x)``: -> [B, 512], the classifier's Tanh output (Ig3D's CAGE F_2D);
    * ``forward_with_features(x)``: -> (outputs, features) from one pass.

    The classifier is freshly built after the backbone, with PyTorch's default initialisation, as CAGE's
    replacement of ``model.classifier`` is (only the backbone gets torchvision's ``_init_weights``).
    """

    def __init__(self, variant: str = "combined"):
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {sorted(VARIANTS)}, got {variant!r}")
        super().__init__(num_classes=VARIANTS[variant])
        self.variant = variant
        self.num_outputs = VARIANTS[variant]
        self.classifier = _cage_classifier(variant)

    def _features_from_map(self, m: torch.Tensor) -> torch.Tensor:
        return self.classifier[:_FEATURE_MODULES](m)                 # [B, 512, 7, 7] -> [B, 512]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, 224, 224] -> [B, 512] (after LayerNorm, Linear, Tanh; values in (-1, 1))."""
        return self._features_from_map(self.forward_features(x))

    def forward_with_features(self, x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """x [B, 3, 224, 224] -> (outputs [B, num_outputs], features [B, 512])."""
        f = self.features(x)
        return self.classifier[_FEATURE_MODULES:](f), f

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, 3, 224, 224] -> outputs [B, num_outputs]."""
        return self.classifier(self.forward_features(x))
