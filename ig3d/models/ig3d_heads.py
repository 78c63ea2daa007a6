"""The Ig3D heads in plain torch, with upstream's parameter names.

Written from the upstream definitions (dongludeeplearning/Ig3D, no weights were ever published) so
that a state dict saved by the upstream scripts loads strictly under the same keys:

* :class:`MLP4`: keys ``fc1..fc4``, ``bn1..bn4``, ``output``. Upstream ``EmocaEmoRecognition_S/_F``,
  ``SmirkEmoRecognition_F``, ``RAFDB_*_Recognition``, ``AFF_*``/``RAF_*Recognition``
  (models/classification/{nofusion,latefusion}/networks/SER.py) and the VA head ``EmocaFER``
  (models/VA/nofusion/nofusion_emoca_VA_train.py).
* :class:`ResidualHead`: keys ``Smirk_Linear``, ``residual_block{1,2}.{0,3}``, ``fc``. Upstream
  ``SmirkEmoRecognition_S`` (models/classification/nofusion/networks/SER.py).
* :class:`DDAMFNFusionHead`: keys ``Wash_Linear1``, ``linear_fusion.{0,2}``, ``out``. The fusion part of
  upstream ``EmocaEarlyLinearFUsion``, ``SMirkEarlyLinearFUsion`` and ``RAFDB_*EarlyLinearFUsion``
  (models/classification/intermediatefusion/networks/DDAM_smirkfusion_feature.py).
* :class:`CageFusionHead`: keys ``additional_feature_transform``, ``classifier.{0,2}``. Upstream
  ``CustomClassifier`` (models/VA/intermediatefusion/intermediate_fusion_train.py and
  intermediate_fusion_VA_train.py).

Differences from upstream, all deliberate (docs REFERENCE 1.8):

* ``forward`` takes the 3D feature vector as one ``[B, D]`` tensor in the fixed segment order of
  :data:`ig3d.convert.ig3d_heads.FEATURE_SETS`, not a dict concatenated in whatever order its keys
  arrive in (bug 2), and returns the raw output layer ``[B, K]`` (no slicing, no softmax).
* One valence/arousal convention for every head: output **8 is valence, 9 is arousal**
  (:data:`VALENCE_INDEX`, :data:`AROUSAL_INDEX`); a 2-output VA head gives [0] valence, [1] arousal.
  Upstream's MLP4 forwards name [8] arousal and [9] valence while the other heads say the opposite
  (bug 1). In models/classification/nofusion/Affectnet_Emoca_S_train.py the dataset also returns
  ``(aro, val)`` and the loop unpacks ``val, aro``, so the two swaps cancel and [8] is trained on
  valence there too; no upstream weights exist anyway, and ig3d trains with this convention.
* Only the dropout that upstream's forward applies is built (MLP4: after stage 1; residual blocks:
  inside each block). Dropout has no parameters, so the state dicts are unchanged.
* The DDAMFN trunk of the intermediate-fusion network is :class:`ig3d.models.ddamfn.DDAMNet`; only the
  fusion part is here (its ``fc``/``bn`` are dead upstream, bug 5).
"""

from __future__ import annotations

import torch
from torch import nn

__all__ = [
    "HIDDEN_DIM",
    "FEATURE2D_DIM",
    "VALENCE_INDEX",
    "AROUSAL_INDEX",
    "LEAKY_SLOPE",
    "MLP4",
    "ResidualHead",
    "DDAMFNFusionHead",
    "CageFusionHead",
]

#: Width of the MLP4 hidden layers (upstream ``hidden_size=2048``).
HIDDEN_DIM = 2048
#: Width of the 2D feature of both intermediate fusions (DDAMFN's ``fc`` input; CAGE's 512-d Tanh output).
FEATURE2D_DIM = 512
#: ig3d's single VA convention for the 10-output heads: [0:8] AffectNet-8 logits, [8] valence, [9] arousal.
VALENCE_INDEX = 8
AROUSAL_INDEX = 9
#: Negative slope of every LeakyReLU in Ig3D.
LEAKY_SLOPE = 0.2


class MLP4(nn.Module):
    """Ig3D's four-stage MLP on a 3D feature vector.

    ``x [B, D] -> 4 x (Linear -> BatchNorm1d(2048, eps 1e-5) -> LeakyReLU(0.2)) -> output [B, out_dim]``,
    with Dropout(``dropout``) after stage 1 only (upstream builds ``dropout2``/``dropout3`` but never
    calls them). ``dropout=0`` gives the VA head ``EmocaFER``, whose forward applies none.

    Args:
        in_dim: D, 156 / 334 (EMOCA short / full) or 353 / 358 (SMIRK short / full).
        out_dim: 10 for AffectNet-8 ([0:8] logits, [8] valence, [9] arousal) and for RAF-DB (only
            [0:7] are used, upstream keeps the 10-wide layer); 2 for the VA head ([0] V, [1] A).
        dropout: p after stage 1 (0.5 upstream; 0.3 in the RAF-DB SMIRK late-fusion head).
    """

    def __init__(self, in_dim: int, out_dim: int = 10, dropout: float = 0.5):
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        h = HIDDEN_DIM
        # Registration order = upstream's, so state_dict() lists keys in upstream's order.
        self.fc1 = nn.Linear(self.in_dim, h)
        self.bn1 = nn.BatchNorm1d(h)
        self.dropout1 = nn.Dropout(dropout)
        self.fc2 = nn.Linear(h, h)
        self.bn2 = nn.BatchNorm1d(h)
        self.fc3 = nn.Linear(h, h)
        self.bn3 = nn.BatchNorm1d(h)
        self.fc4 = nn.Linear(h, h)
        self.bn4 = nn.BatchNorm1d(h)
        self.output = nn.Linear(h, self.out_dim)
        self.leaky_relu = nn.LeakyReLU(LEAKY_SLOPE)

    def stages(self):
        """The four (Linear, BatchNorm1d) pairs, in order."""
        return [(self.fc1, self.bn1), (self.fc2, self.bn2), (self.fc3, self.bn3), (self.fc4, self.bn4)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D] float -> raw outputs [B, out_dim]."""
        x = self.dropout1(self.leaky_relu(self.bn1(self.fc1(x))))
        x = self.leaky_relu(self.bn2(self.fc2(x)))
        x = self.leaky_relu(self.bn3(self.fc3(x)))
        x = self.leaky_relu(self.bn4(self.fc4(x)))
        return self.output(x)


class ResidualHead(nn.Module):
    """Ig3D's residual head (``SmirkEmoRecognition_S``, AffectNet-8 on SMIRK-short)::

        h0 = Smirk_Linear(x)                                   [B, 512]   (no activation)
        h1 = h0 + residual_block1(h0)   Linear(512->1024), ReLU, Dropout(0.5), Linear(1024->512)
        h2 = h1 + residual_block2(h1)   Linear(512->512),  ReLU, Dropout(0.5), Linear(512->512)
        out = fc(h2)                                           [B, out_dim]

    Args:
        in_dim: D (353 upstream, SMIRK-short).
        out_dim: 10 ([0:8] logits, [8] valence, [9] arousal; upstream ``num_class + 2``).
        dropout: p inside both blocks.
    """

    def __init__(self, in_dim: int = 353, out_dim: int = 10, dropout: float = 0.5):
        super().__init__()
        self.in_dim, self.out_dim = int(in_dim), int(out_dim)
        self.Smirk_Linear = nn.Linear(self.in_dim, 512)
        self.residual_block1 = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Dropout(dropout), nn.Linear(1024, 512))
        self.residual_block2 = nn.Sequential(nn.Linear(512, 512), nn.ReLU(), nn.Dropout(dropout), nn.Linear(512, 512))
        self.fc = nn.Linear(512, self.out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B, D] float -> raw outputs [B, out_dim]."""
        h = self.Smirk_Linear(x)
        h = h + self.residual_block1(h)
        h = h + self.residual_block2(h)
        return self.fc(h)


class DDAMFNFusionHead(nn.Module):
    """The fusion part of Ig3D's DDAMFN intermediate fusion (3D features first)::

        f3d = Wash_Linear1(x3d)                 [B, 512]   (no activation)
        y = cat([f3d, f2d], 1)                  [B, 1024]
        y = linear_fusion(y)                    Linear(1024->2048), LeakyReLU(0.2), Linear(2048->1024), LeakyReLU(0.2)
        out = out(y)                            [B, out_dim]

    ``f2d`` [B, 512] is DDAMFN's pooled feature, the input of its ``fc``
    (:meth:`ig3d.models.ddamfn.DDAMNet.features`).

    Args:
        in_dim: D, 156 (AffectNet EMOCA-short), 334 (RAF-DB EMOCA-full) or 358 (SMIRK-full).
        out_dim: 10 for AffectNet-8 ([0:8] logits, [8] valence, [9] arousal), 7 for RAF-DB.
    """

    def __init__(self, in_dim: int, out_dim: int = 10, features2d_dim: int = FEATURE2D_DIM):
        super().__init__()
        self.in_dim, self.out_dim, self.features2d_dim = int(in_dim), int(out_dim), int(features2d_dim)
        self.Wash_Linear1 = nn.Linear(self.in_dim, 512)
        self.linear_fusion = nn.Sequential(
            nn.Linear(512 + self.features2d_dim, 2048), nn.LeakyReLU(LEAKY_SLOPE),
            nn.Linear(2048, 1024), nn.LeakyReLU(LEAKY_SLOPE))
        self.out = nn.Linear(1024, self.out_dim)

    def forward(self, x3d: torch.Tensor, features2d: torch.Tensor) -> torch.Tensor:
        """x3d [B, D], features2d [B, 512] -> raw outputs [B, out_dim]."""
        y = torch.cat((self.Wash_Linear1(x3d), features2d), dim=1)
        return self.out(self.linear_fusion(y))


class CageFusionHead(nn.Module):
    """Ig3D's CAGE intermediate fusion head (``CustomClassifier``; 2D features first)::

        f3d = additional_feature_transform(x3d)   [B, 512]   (no activation)
        y = cat([f2d, f3d], 1)                    [B, 1024]
        out = classifier(y)                       Linear(1024->512), Tanh, Linear(512->out_dim, bias=False)

    ``f2d`` [B, 512] is CAGE's MaxViT-T pooled feature after its classifier's LayerNorm, Linear and Tanh.
    Note the argument order: ``forward(x3d, features2d)``, the reverse of upstream's ``forward(x, feat3d)``.

    Args:
        in_dim: D, 156 (EMOCA-short, columns 4..159 of upstream's EMOCA CSV).
        out_dim: 10 in stage 1 ([0:8] AffectNet-8 logits, [8] valence, [9] arousal); 2 in the VA
            stage 2 ([0] valence, [1] arousal).
    """

    def __init__(self, in_dim: int = 156, out_dim: int = 10, features2d_dim: int = FEATURE2D_DIM):
        super().__init__()
        self.in_dim, self.out_dim, self.features2d_dim = int(in_dim), int(out_dim), int(features2d_dim)
        self.additional_feature_transform = nn.Linear(self.in_dim, self.features2d_dim)
        self.classifier = nn.Sequential(
            nn.Linear(2 * self.features2d_dim, self.features2d_dim), nn.Tanh(),
            nn.Linear(self.features2d_dim, self.out_dim, bias=False))

    def forward(self, x3d: torch.Tensor, features2d: torch.Tensor) -> torch.Tensor:
        """x3d [B, D], features2d [B, 512] -> raw outputs [B, out_dim]."""
        y = torch.cat((features2d, self.additional_feature_transform(x3d)), dim=1)
        return self.classifier(y)
