"""The default preset's 3D head: a documented prior from published facts, as fused-head weights.

No labelled expression data ships anywhere we can reach, so the default 3D head is not trained: it
encodes two published correspondences as a two-layer MLP that the fused kernel runs like any
trained head (a trained head saved with :meth:`ig3d.FusedHead.save` replaces it without code
changes, see ``Predictor(head=...)``):

1. **Blendshapes -> action units** (layer 1, ReLU). Each ARKit-style blendshape is defined by the
   facial movement it captures (Apple, ARKit ``ARFaceAnchor.BlendShapeLocation`` documentation),
   and those movements are FACS action units (Ekman, Friesen & Hager, *Facial Action Coding
   System*, 2002): e.g. ``browInnerUp`` = AU1 inner brow raiser, ``mouthSmileLeft/Right`` = AU12
   lip corner puller. Left/right pairs are averaged. A small resting offset (``AU_REST``, ig3d's
   choice, from MediaPipe's blendshape values on neutral faces, which rarely exceed 0.1-0.2 for
   these shapes) is subtracted before the ReLU so that a face at rest shows no AU evidence.
2. **Action units -> basic emotions** (layer 2). The EMFACS prototypes of the basic emotions
   (Friesen & Ekman, *EMFACS-7*, 1983; the prototype table as used for the CK+ labels in Lucey et
   al., CVPR Workshops 2010): happiness 6+12; sadness 1+4+15; surprise 1+2+5+26; fear
   1+2+4+5+7+20+26; anger 4+5+7+23; disgust 9+15+16 (AU10 often co-occurs and is included).
   MediaPipe's blendshape model barely activates ``eyeWide*``, ``noseSneer*`` and ``cheekSquint*``
   (google-ai-edge/mediapipe issues 4450 and 4436 report eyeWide/noseSneer/cheekPuff stuck near
   0; cheekSquint stays below 0.01 on every photo in our tests, broad smiles included), so AU5,
   AU6 and AU9 are unobservable here: they are computed in layer 1 but carry no weight in the
   prototypes (``UNOBSERVABLE``), which are scored on their observable AUs only.
   The logit of an emotion is the mean evidence of its prototype's AUs, so a partial match scores
   lower than a full one (fear's longer prototype is only matched when its brow-lowering and
   lip-stretching AUs are present, which is what separates it from surprise). A few AUs that
   contradict a prototype subtract (AU4 brow lowerer for surprise, AU12 for sadness and anger,
   AU15 for happiness). Neutral has a constant logit: it wins when no prototype is expressed.

The head's input is the default preset's 3D parameter vector: the 52 blendshapes in MediaPipe's
order followed by head yaw, pitch and roll in degrees (55 values). The pose gets zero weight in the
prior (it does not signal an emotion); it is part of the vector so that trained heads can use it.

**Labels**: ``LABELS`` = neutral, happy, sad, surprise, fear, disgust, anger (the AffectNet order
without contempt). **Valence/arousal**: expected circumplex coordinates under the fused class
probabilities, ``va = probs @ CIRCUMPLEX``. The coordinates place each category on Russell's
circumplex of affect (Russell, J. A., "A circumplex model of affect", JPSP 39(6), 1980: pleasure on
the horizontal, arousal on the vertical axis; happy at high pleasure and moderate arousal, surprise
(astonished) at high arousal and slightly positive pleasure, fear and anger at high arousal and low
pleasure, sadness at low pleasure and low arousal, neutral at the centre). The numbers are ig3d's
reading of those positions, rounded to 0.05 - approximate by nature, and a convex combination of
them always lies in [-1, 1].
"""

from __future__ import annotations

from typing import Dict, List, Tuple

import numpy as np

from .faces.mediapipe_constants import BLENDSHAPE_NAMES
from .fusion import FusedHead, Layer

__all__ = ["LABELS", "CIRCUMPLEX", "AU_BLENDSHAPES", "PROTOTYPES", "PARAMS3D_NAMES", "FER_TO_LABELS",
           "default_head"]

LABELS: Tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")

#: (valence, arousal) per label, see the module docstring.
CIRCUMPLEX = np.array([
    [0.00, 0.00],    # neutral
    [0.80, 0.35],    # happy
    [-0.70, -0.35],  # sad
    [0.20, 0.80],    # surprise
    [-0.55, 0.75],   # fear
    [-0.65, 0.35],   # disgust
    [-0.60, 0.65],   # anger
], np.float32)

#: FACS action unit -> ARKit blendshapes that capture it (averaged).
AU_BLENDSHAPES: Dict[str, List[str]] = {
    "AU1": ["browInnerUp"],                                 # inner brow raiser
    "AU2": ["browOuterUpLeft", "browOuterUpRight"],         # outer brow raiser
    "AU4": ["browDownLeft", "browDownRight"],               # brow lowerer
    "AU5": ["eyeWideLeft", "eyeWideRight"],                 # upper lid raiser
    "AU6": ["cheekSquintLeft", "cheekSquintRight"],         # cheek raiser
    "AU7": ["eyeSquintLeft", "eyeSquintRight"],             # lid tightener
    "AU9": ["noseSneerLeft", "noseSneerRight"],             # nose wrinkler
    "AU10": ["mouthUpperUpLeft", "mouthUpperUpRight"],      # upper lip raiser
    "AU12": ["mouthSmileLeft", "mouthSmileRight"],          # lip corner puller
    "AU15": ["mouthFrownLeft", "mouthFrownRight"],          # lip corner depressor
    "AU16": ["mouthLowerDownLeft", "mouthLowerDownRight"],  # lower lip depressor
    "AU20": ["mouthStretchLeft", "mouthStretchRight"],      # lip stretcher
    "AU23": ["mouthPressLeft", "mouthPressRight"],          # lip tightener (press, AU24, co-captured)
    "AU26": ["jawOpen"],                                    # jaw drop
}

#: Resting offset per AU (blendshape units), subtracted before the ReLU.
AU_REST: Dict[str, float] = {au: 0.1 for au in AU_BLENDSHAPES}
AU_REST.update({"AU6": 0.2, "AU7": 0.3, "AU16": 0.15})  # squints and lip parting are high at rest

#: EMFACS prototypes (positive AUs) and contradicting AUs (negative evidence), per label.
PROTOTYPES: Dict[str, Tuple[List[str], List[str]]] = {
    "happy": (["AU6", "AU12"], ["AU15"]),
    "sad": (["AU1", "AU4", "AU15"], ["AU12"]),
    "surprise": (["AU1", "AU2", "AU5", "AU26"], ["AU4"]),
    "fear": (["AU1", "AU2", "AU4", "AU5", "AU7", "AU20", "AU26"], []),
    "anger": (["AU4", "AU5", "AU7", "AU23"], ["AU12"]),
    "disgust": (["AU9", "AU10", "AU15", "AU16"], []),
}

#: AUs whose blendshapes MediaPipe's model does not produce reliably (see the module docstring).
UNOBSERVABLE = frozenset({"AU5", "AU6", "AU9"})

PARAMS3D_NAMES: Tuple[str, ...] = tuple(BLENDSHAPE_NAMES) + ("head_yaw", "head_pitch", "head_roll")

#: fer's mini-Xception class order, and where each of its classes sits in LABELS.
FER_LABELS: Tuple[str, ...] = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
FER_TO_LABELS = np.array([LABELS.index(n) for n in ("anger", "disgust", "fear", "happy", "sad", "surprise",
                                                      "neutral")], np.int32)

#: Logit units: a fully expressed prototype (mean AU evidence 1) scores LOGIT_SCALE above the
#: others; neutral sits at NEUTRAL_LOGIT. ig3d's choice, stated here rather than tuned on test images.
LOGIT_SCALE = 12.0
NEGATIVE_SCALE = 6.0
NEUTRAL_LOGIT = 1.5

#: Ig3D-style weighted late fusion of the 2D (mini-Xception) and 3D (prior) logits.
FUSION_WEIGHTS = (0.5, 0.5)


def default_head() -> FusedHead:
    """The prior as a :class:`FusedHead`: 55 params -> 14 AU evidences (ReLU) -> 7 logits, fused
    with the mini-Xception logits (reordered by ``FER_TO_LABELS``) as 0.5 * 2D + 0.5 * 3D."""
    D = len(PARAMS3D_NAMES)
    aus = list(AU_BLENDSHAPES)
    w1 = np.zeros((len(aus), D), np.float32)
    b1 = np.zeros(len(aus), np.float32)
    for i, au in enumerate(aus):
        names = AU_BLENDSHAPES[au]
        for n in names:
            w1[i, BLENDSHAPE_NAMES.index(n)] = 1.0 / len(names)
        b1[i] = -AU_REST[au]
    w2 = np.zeros((len(LABELS), len(aus)), np.float32)
    b2 = np.zeros(len(LABELS), np.float32)
    b2[LABELS.index("neutral")] = NEUTRAL_LOGIT
    for label, (pos, neg) in PROTOTYPES.items():
        c = LABELS.index(label)
        pos = [au for au in pos if au not in UNOBSERVABLE]
        for au in pos:
            w2[c, aus.index(au)] += LOGIT_SCALE / len(pos)
        for au in neg:
            w2[c, aus.index(au)] -= NEGATIVE_SCALE
    # blendshapes are already in [0, 1]; the pose (degrees) is scaled for trained heads' sake
    std = np.ones(D, np.float32)
    std[-3:] = 30.0
    return FusedHead(
        [Layer(w1, b1, "relu"), Layer(w2, b2, "none")], input_dim=D, std=std, num_classes=len(LABELS),
        fusion="weighted", scores2d_dim=len(FER_LABELS), fusion_map=FER_TO_LABELS,
        fusion_weights=FUSION_WEIGHTS, labels=LABELS, name="default-prior")
