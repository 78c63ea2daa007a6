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
without contempt).

**Valence/arousal** (:func:`valence_arousal`; a trained head with valence/arousal outputs gives its
own instead). Each label has an anchor on Russell's circumplex of affect, ``CIRCUMPLEX`` (Russell,
J. A., "A circumplex model of affect", JPSP 39(6), 1980: pleasure on the horizontal, arousal on the
vertical axis; happy at high pleasure and moderate arousal, surprise (astonished) at high arousal and
slightly positive pleasure, fear and anger at high arousal and low pleasure, sadness at low pleasure
and low arousal, neutral at the centre). The numbers are ig3d's reading of those positions, rounded
to 0.05 - approximate by nature. A face's point moves continuously with how strongly its AUs show:

1. *Along each anchor.* An AU's activation ``e = clip((x - AU_REST) / (1 - AU_REST), 0, 1)`` is
   the share of its blendshape range above rest (``x`` as in layer 1); a label's intensity ``I_c``
   is the mean activation of its prototype's observable AUs (as in layer 2: AU12 for happy, AU1 + AU2
   + AU26 for surprise, AU1 + AU4 + AU15 for sad, ...). Then
   ``(v0, a0) = sum_c p_c * k_c * CIRCUMPLEX[c]`` with ``k_c = VA_FLOOR + (VA_CEIL - VA_FLOOR) * I_c``
   and ``p`` the fused class probabilities: a label that is probable while none of its AUs shows
   (it rests on the 2D branch, or on unobservable AUs) gets ``VA_FLOOR`` = half its anchor; the
   anchor itself is reached at ``I_c`` = 2/3 and a fully activated prototype goes to ``VA_CEIL`` =
   1.25 times it, the most that keeps every scaled anchor, and so their convex combination, in
   [-1, 1]. Both numbers are ig3d's choice. Why intensity: facial EMG over zygomaticus major (AU12)
   rises with the pleasantness, and over corrugator supercilii (AU4) with the unpleasantness, of what
   people are shown (Cacioppo, Petty, Losch & Kim, JPSP 50(2), 1986; Larsen, Norris & Cacioppo,
   Psychophysiology 40(5), 2003), so a broad smile reads more pleasant than a faint one. The cheek
   raiser AU6 that marks the felt (Duchenne) smile (Ekman, Davidson & Friesen, JPSP 58(2), 1990) is
   unobservable here, so a smile's intensity is AU12's alone.
2. *Arousal from the orienting AUs.* ``act`` = mean activation of ``AROUSAL_AUS`` (AU1 inner and
   AU2 outer brow raiser, AU26 jaw drop; AU5 upper lid raiser belongs there too but is
   unobservable), the AUs that the high-arousal prototypes share (surprise 1+2+5+26, fear
   1+2+4+5+7+20+26 above); raised brows and widened eyes enlarge the visual field and speed up
   eye movements, an expression of heightened vigilance (Susskind et al., "Expressing fear enhances
   sensory acquisition", Nature Neuroscience 11(7), 2008). ``a = a0 + (1 - a0) * AROUSAL_GAIN * act``
   moves arousal that share of the way to the top of the scale: increasing in each of these AUs and
   inside [-1, 1] without clipping. ``AROUSAL_GAIN`` = 1 is ig3d's choice: brows fully raised with the
   jaw fully dropped (astonishment, terror) read the top of the arousal axis whatever the label,
   while a jaw half open alone (speech) adds about a seventh of the way.

A neutral face at rest reads (0, 0): the neutral anchor is the centre and no AU is above rest. The
mapping uses only what the pipeline already has (the blendshapes and the fused probabilities):
a few small numpy products over all faces at once.
"""

from __future__ import annotations

import functools
from typing import Dict, List, Tuple

import numpy as np

from .faces.mediapipe_constants import BLENDSHAPE_NAMES
from .fusion import FusedHead, Layer

__all__ = ["LABELS", "CIRCUMPLEX", "AU_BLENDSHAPES", "PROTOTYPES", "PARAMS3D_NAMES", "FER_TO_LABELS",
           "default_head", "au_activations", "valence_arousal"]

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


#: Valence/arousal: share of a label's anchor with none of its AUs showing, and at full activation
#: (1 / the largest anchor coordinate: every scaled anchor stays in [-1, 1]). ig3d's choice.
VA_FLOOR = 0.5
VA_CEIL = float(1.0 / np.abs(CIRCUMPLEX).max())

#: AUs whose activation raises arousal (the unobservable ones are skipped), and how far (share of the
#: way to +1) all of them fully on take it. ig3d's choice.
AROUSAL_AUS: Tuple[str, ...] = ("AU1", "AU2", "AU5", "AU26")
AROUSAL_GAIN = 1.0


def _as_rows(x, width: int, name: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim == 1:
        arr = arr[None]
    if arr.ndim != 2 or arr.shape[1] != width:
        raise ValueError(f"{name}: expected shape [B, {width}] (or [{width}] for one face), got {list(arr.shape)}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{name}: row {int(np.argmax(bad))} contains NaN or inf")
    return arr


@functools.lru_cache(maxsize=None)
def _va_matrices() -> Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """[52, 14] blendshapes -> AU (mean of its blendshapes), [14] resting offsets, [14, 7] AU
    activations -> label intensity (mean over the prototype's observable AUs), [14] arousal weights."""
    aus = list(AU_BLENDSHAPES)
    to_au = np.zeros((len(BLENDSHAPE_NAMES), len(aus)))
    for i, names in enumerate(AU_BLENDSHAPES.values()):
        for n in names:
            to_au[BLENDSHAPE_NAMES.index(n), i] = 1.0 / len(names)
    rest = np.array([AU_REST[au] for au in aus])
    intensity = np.zeros((len(aus), len(LABELS)))
    for label, (pos, _) in PROTOTYPES.items():
        pos = [au for au in pos if au not in UNOBSERVABLE]
        for au in pos:
            intensity[aus.index(au), LABELS.index(label)] = 1.0 / len(pos)
    observed = [au for au in AROUSAL_AUS if au not in UNOBSERVABLE]
    arousal = np.array([1.0 / len(observed) if au in observed else 0.0 for au in aus])
    return to_au, rest, intensity, arousal


def au_activations(blendshapes) -> np.ndarray:
    """[B, 52] blendshapes (MediaPipe's order) -> [B, 14] activations in [0, 1], one per
    ``AU_BLENDSHAPES`` key in order: the share of the AU's blendshape range above ``AU_REST``."""
    bs = _as_rows(blendshapes, len(BLENDSHAPE_NAMES), "blendshapes")
    to_au, rest, _, _ = _va_matrices()
    return np.clip((bs @ to_au - rest) / (1.0 - rest), 0.0, 1.0)


def valence_arousal(probs, blendshapes) -> np.ndarray:
    """Valence and arousal, [B, 2] in [-1, 1], from the class probabilities ``probs`` ([B, 7] in
    ``LABELS`` order, rows summing to 1) and the ``blendshapes`` ([B, 52], MediaPipe's order) of B
    faces; a single face's [7] and [52] give [2]. The mapping and its sources are in the module
    docstring: each label's circumplex anchor scaled by the activation of its prototype's AUs, plus
    arousal from the brow raisers and the jaw drop."""
    single = np.ndim(probs) == 1 and np.ndim(blendshapes) == 1
    p = _as_rows(probs, len(LABELS), "probs")
    e = au_activations(blendshapes)
    if len(p) != len(e):
        raise ValueError(f"probs has {len(p)} faces but blendshapes has {len(e)}")
    if len(p):
        if p.min() < -1e-6 or p.max() > 1 + 1e-6:
            raise ValueError(f"probs: expected probabilities in [0, 1], got values in [{p.min():.4g}, {p.max():.4g}]")
        sums = p.sum(axis=1)
        bad = np.abs(sums - 1.0) > 1e-3
        if bad.any():
            r = int(np.argmax(bad))
            raise ValueError(f"probs: row {r} sums to {sums[r]:.6g}, expected 1 (class probabilities)")
    _, _, intensity, arousal = _va_matrices()
    k = VA_FLOOR + (VA_CEIL - VA_FLOOR) * (e @ intensity)
    va = (p * k) @ CIRCUMPLEX.astype(np.float64)
    va[:, 1] += (1.0 - va[:, 1]) * AROUSAL_GAIN * (e @ arousal)
    va = np.clip(va, -1.0, 1.0).astype(np.float32)  # the 1e-3 slack allowed in the probability sums
    return va[0] if single else va


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
