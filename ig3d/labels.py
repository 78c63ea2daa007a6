"""Class orders of the datasets and networks ig3d works with, in ig3d's label vocabulary
(lowercase: neutral, happy, sad, surprise, fear, disgust, anger, contempt); upstream spellings in
the comments. No torch here: the presets use these at run time.
"""

from __future__ import annotations

from typing import Tuple

__all__ = ["AFFECTNET8_LABELS", "AFFECTNET7_LABELS", "RAFDB_LABELS", "DDAMFN_RAFDB_LABELS"]


#: AffectNet-8 (Ig3D, DDAMFN, CAGE): Neutral, Happy, Sad, Surprise, Fear, Disgust, Anger, Contempt
#: (SainingZhang/DDAMFN: DDAMFN++/affectnet8_test.py).
AFFECTNET8_LABELS: Tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger", "contempt")
#: AffectNet-7: AffectNet-8 without contempt (SainingZhang/DDAMFN: DDAMFN++/affectnet7_test.py).
AFFECTNET7_LABELS: Tuple[str, ...] = AFFECTNET8_LABELS[:7]
#: RAF-DB native order (labels 1..7 -> 0..6): Surprise, Fear, Disgust, Happiness, Sadness, Anger,
#: Neutral; what Ig3D's RAF-DB heads use (dongludeeplearning/Ig3D:
#: models/classification/nofusion/RAFDB_Emoca_S_test.py).
RAFDB_LABELS: Tuple[str, ...] = ("surprise", "fear", "disgust", "happy", "sad", "anger", "neutral")
#: Order of the released DDAMFN++ RAF-DB checkpoint: Neutral, Happy, Sad, Surprise, Fear, Disgust,
#: Angry (SainingZhang/DDAMFN: DDAMFN++/rafdb_train_sam_opt_ver2.0.py ``class_names``; confirmed by
#: the per-row sample counts in DDAMFN++/checkpoints_ver2.0/rafdb_epoch20_acc0.9204_bacc0.8617.png).
DDAMFN_RAFDB_LABELS: Tuple[str, ...] = ("neutral", "happy", "sad", "surprise", "fear", "disgust", "anger")

