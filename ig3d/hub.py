"""Weights that ig3d can fetch on request, pinned by hash, cached under ``$IG3D_HOME``.

Nothing here runs by default: the default preset needs no download, and research-only weights are
fetched only when a user asks for them by name (``ig3d.hub.fetch("ddamfn++-affectnet8")``).
Downloads go to ``$IG3D_HOME/weights/<name>/`` (default ``~/.cache/ig3d``), are verified against
their pin before they are moved into place, and are never unpickled here.

Pins: the DDAMFN++ checkpoints are plain files in a public git repository, so they are pinned by
their git blob id (SHA-1 of ``b"blob <size>\\0" + content``), which the repository's tree records
(SainingZhang/DDAMFN at commit cebfe5c5969b7d1fd64ecd775e318d3834ca76bb). Entries may also pin a
sha256.

Weights that cannot be downloaded (EMOCA, DECA, SMIRK need registration or come from a file host
without stable links; CAGE and Ig3D never published theirs) have an entry in :data:`HOW_TO_GET`
instead: the error for a missing file says where a user obtains it and which ``ig3d convert``
command turns it into ig3d's format, written where the presets look (``$IG3D_HOME/weights/<part>``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional

from .engines import cache_root

__all__ = ["Entry", "REGISTRY", "HOW_TO_GET", "fetch", "weights_dir", "git_blob_id", "missing_weights_error"]

_DDAMFN_COMMIT = "cebfe5c5969b7d1fd64ecd775e318d3834ca76bb"
_DDAMFN_RAW = f"https://raw.githubusercontent.com/SainingZhang/DDAMFN/{_DDAMFN_COMMIT}/DDAMFN++/checkpoints_ver2.0/"


@dataclass(frozen=True)
class Entry:
    """A downloadable file: where it comes from, what it must hash to, and what it is."""

    url: str
    filename: str
    git_blob: Optional[str] = None  # git blob id (SHA-1), as in the source repository's tree
    sha256: Optional[str] = None
    kind: str = ""                  # which `ig3d convert` KIND reads it
    licence: str = ""
    note: str = ""


REGISTRY: Dict[str, Entry] = {
    "ddamfn++-affectnet8": Entry(
        _DDAMFN_RAW + "affecnet8_epoch25_acc0.6469.pth", "affecnet8_epoch25_acc0.6469.pth",
        git_blob="b8dce63bfc249c270cd09f5adc34cf7948954b1f", kind="ddamfn",
        licence="none stated (SainingZhang/DDAMFN has no LICENSE file): research use only",
        note="DDAMFN++ AffectNet-8, 8 classes (neutral, happy, sad, surprise, fear, disgust, anger, contempt)"),
    "ddamfn++-affectnet7": Entry(
        _DDAMFN_RAW + "affecnet7_epoch19_acc0.671.pth", "affecnet7_epoch19_acc0.671.pth",
        git_blob="a2399a1346f184f12725b37b3969bcc41529cdec", kind="ddamfn",
        licence="none stated (SainingZhang/DDAMFN has no LICENSE file): research use only",
        note="DDAMFN++ AffectNet-7"),
    "ddamfn++-rafdb": Entry(
        _DDAMFN_RAW + "rafdb_epoch20_acc0.9204_bacc0.8617.pth", "rafdb_epoch20_acc0.9204_bacc0.8617.pth",
        git_blob="3adfea01f296a4ef56ccd98578ab45a43e73f2eb", kind="ddamfn",
        licence="none stated (SainingZhang/DDAMFN has no LICENSE file): research use only",
        note="DDAMFN++ RAF-DB, 7 classes in the checkpoint's own order (see ig3d.convert.ddamfn)"),
}

HOW_TO_GET: Dict[str, str] = {
    "emoca": ("EMOCA v2 (EMOCA_v2_lr_mse_20) needs registration and accepting the MPI licence at "
              "https://emoca.is.tue.mpg.de (see radekd91/emoca on GitHub). Then run: "
              "ig3d convert emoca PATH/TO/EMOCA_v2_lr_mse_20/detail/checkpoints/<name>.ckpt "
              "-o $IG3D_HOME/weights/emoca --trust-checkpoint (Lightning checkpoints hold pickled hyper-parameters)"),
    "deca": ("DECA's deca_model.tar needs registration at https://deca.is.tue.mpg.de (see yfeng95/DECA). "
             "Then run: ig3d convert deca PATH/TO/deca_model.tar -o <dir>"),
    "smirk": ("SMIRK_em1.pt is linked from georgeretsi/smirk's quick_install.sh (its FLAME assets need "
              "registration at https://flame.is.tue.mpg.de). Then run: "
              "ig3d convert smirk PATH/TO/SMIRK_em1.pt -o $IG3D_HOME/weights/smirk"),
    "ddamfn": ("DDAMFN++ checkpoints: ig3d.hub.fetch('ddamfn++-affectnet8') (or -affectnet7, -rafdb) downloads "
               "a pinned copy (or download one yourself from SainingZhang/DDAMFN); then run: "
               "ig3d convert ddamfn PATH/TO/checkpoint.pth -o $IG3D_HOME/weights/ddamfn"),
    "cage": ("CAGE weights were never published (wagner-niklas/CAGE_expression_inference). Train one with "
             "that repository and run: ig3d convert cage PATH/TO/state_dict.pt -o $IG3D_HOME/weights/cage"),
    "ig3d-head": ("Ig3D's 3D heads were never published (dongludeeplearning/Ig3D). Train one with ig3d's "
                  "torch heads (ig3d.models.ig3d_heads) and run: ig3d convert ig3d-head PATH/TO/head.pt "
                  "--task <task> --encoder <emoca|smirk> -o $IG3D_HOME/weights/<preset>"),
}


def weights_dir() -> Path:
    """``$IG3D_HOME/weights``."""
    return cache_root() / "weights"


def git_blob_id(data: bytes) -> str:
    """The id git gives a file with this content (SHA-1 of ``b"blob <size>\\0" + data``)."""
    h = hashlib.sha1(usedforsecurity=False)  # an identity, not a security check: FIPS builds allow it
    h.update(b"blob %d\0" % len(data))
    h.update(data)
    return h.hexdigest()


def _verify(entry: Entry, data: bytes) -> Optional[str]:
    """None when ``data`` matches every pin of ``entry``, else what differs."""
    if entry.git_blob is not None:
        got = git_blob_id(data)
        if got != entry.git_blob:
            return f"git blob id {got}, expected {entry.git_blob}"
    if entry.sha256 is not None:
        got = hashlib.sha256(data).hexdigest()
        if got != entry.sha256:
            return f"sha256 {got}, expected {entry.sha256}"
    if entry.git_blob is None and entry.sha256 is None:
        return "the registry entry has no hash pin"
    return None


def missing_weights_error(kind: str, what: str = "") -> FileNotFoundError:
    """The error for a missing weight file of ``kind``: where to get it and how to convert it."""
    how = HOW_TO_GET.get(kind, f"no instructions for {kind!r}")
    return FileNotFoundError(f"{what + ': ' if what else ''}{kind} weights not found. {how}")


def fetch(name: str, *, local_files_only: bool = False, timeout: float = 60.0,
          registry: Optional[Dict[str, Entry]] = None) -> Path:
    """Path of the verified file of registry entry ``name``, downloading it on first use.

    Raises ``KeyError`` for an unknown name, ``FileNotFoundError`` when ``local_files_only`` and
    it is not cached, ``RuntimeError`` when the download fails (offline: the message says where to
    put the file by hand), ``ValueError`` when the bytes do not match the pin (nothing is kept).
    """
    reg = REGISTRY if registry is None else registry
    if name not in reg:
        raise KeyError(f"unknown weights {name!r}; known: {sorted(reg)}")
    entry = reg[name]
    target = weights_dir() / name / entry.filename
    if target.is_file():
        problem = _verify(entry, target.read_bytes())
        if problem is None:
            return target
        target.unlink()  # a damaged or stale copy: fetch again
    if local_files_only:
        raise FileNotFoundError(f"{name} is not in the ig3d cache ({target}) and local_files_only=True; "
                                f"download it from {entry.url}")
    try:
        with urllib.request.urlopen(entry.url, timeout=timeout) as r:  # noqa: S310 (pinned by hash)
            data = r.read()
    except (urllib.error.URLError, OSError, ValueError) as e:
        raise RuntimeError(f"could not download {name} from {entry.url} ({e}). Offline? Download it on a "
                           f"connected machine and place it at {target}") from e
    problem = _verify(entry, data)
    if problem is not None:
        raise ValueError(f"{name}: the downloaded file does not match its pin ({problem}); not kept")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".part-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)  # atomic: readers never see a half-written file
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target
