"""Frame sources for video streams: video files, cameras and iterables of frames, as
:class:`Frame` ``(index, timestamp, image)`` with the image in RGB uint8.

* A video file in any container and codec FFmpeg reads (H.264, HEVC, AV1, VP9, ...; MP4, MKV,
  WebM, MPEG-TS, ...), variable frame rate included, or a URL FFmpeg opens. Decoding uses PyAV
  (``pip install "ig3d[video]"``; its wheels bundle FFmpeg, built with the GPL codecs x264 and
  x265, which is why it is an optional extra), in a background thread that fills a bounded queue
  while the caller runs inference on earlier frames. Timestamps are the stream's presentation
  times, ``pts * time_base`` seconds, exact for variable frame rates (an average frame rate, as
  OpenCV's ``CAP_PROP_FPS`` gives, is wrong there).
* A camera: an int index or a device path, opened through PyAV (``v4l2`` on Linux, where index
  ``n`` is ``/dev/video<n>``; ``avfoundation`` on macOS). When inference is slower than the
  camera, the oldest waiting frame is dropped (``dropped`` counts them), so that results stay
  live instead of falling further and further behind.
* Any iterable of frames (numpy arrays from OpenCV or ROS, PIL images, ...) or of
  ``(frame, timestamp)`` pairs; without timestamps, frame ``i`` is at ``i / fps`` seconds.

Errors: the extra missing raises ``ImportError`` with the install command; a missing file
``FileNotFoundError``; an unreadable file, a file with no video stream, a truncated file and
timestamps that do not increase ``ValueError``; a camera that cannot be opened ``RuntimeError``,
each naming the source. A corrupt frame in the middle of a file is skipped: it is reported with a
:class:`CorruptFrameWarning` (and on the ``ig3d`` logger) and listed in ``skipped``; the frames
keep their positions in the file as their ``index``.
"""

from __future__ import annotations

import collections
import logging
import math
import numbers
import os
import queue
import stat
import sys
import threading
import warnings
from fractions import Fraction
from typing import Any, Iterable, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import numpy as np

from .io import describe, load_image

__all__ = ["Frame", "FrameSource", "CorruptFrameWarning", "VideoWriter", "open_source", "is_video_path",
           "VIDEO_EXTENSIONS"]

log = logging.getLogger("ig3d")

#: File name endings that ``ig3d predict`` reads as videos (any FFmpeg format works through the API).
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi", ".ts", ".mts", ".m2ts", ".mpg", ".mpeg",
                    ".flv", ".wmv", ".3gp", ".ogv", ".hevc", ".h264", ".h265", ".y4m")

#: Frame rate assumed for frames that come without timestamps.
DEFAULT_FPS = 30.0


class Frame(NamedTuple):
    """One decoded frame: its position in the source, its time in seconds, RGB uint8 pixels."""

    index: int
    timestamp: float
    image: np.ndarray


class CorruptFrameWarning(UserWarning):
    """A frame of a video file could not be decoded and was skipped."""


def _require_av():
    try:
        import av
    except ImportError as e:
        raise ImportError("reading video files and cameras needs PyAV: pip install \"ig3d[video]\" "
                          "(or pip install av)") from e
    return av


def is_video_path(path: Any) -> bool:
    """True for a path whose name ends in one of :data:`VIDEO_EXTENSIONS`, or a camera device."""
    if not isinstance(path, (str, os.PathLike)):
        return False
    p = os.fspath(path)
    return p.lower().endswith(VIDEO_EXTENSIONS) or _is_device(p)


def _is_device(path: str) -> bool:
    if path.startswith("/dev/video"):
        return True
    try:
        return stat.S_ISCHR(os.stat(path).st_mode)
    except OSError:
        return False


class FrameSource:
    """An iterable of :class:`Frame` that holds resources: use it as a context manager or call
    :meth:`close`. ``frames``: the frame count when the source knows it (else None);
    ``skipped``: ``[(index, reason)]`` of the frames left out; ``dropped``: frames a live camera
    dropped while inference was busy."""

    name: str = "<frames>"
    frames: Optional[int] = None
    fps: Optional[float] = None

    def __init__(self) -> None:
        self.skipped: List[Tuple[int, str]] = []
        self.dropped = 0

    def __iter__(self) -> Iterator[Frame]:  # pragma: no cover - abstract
        raise NotImplementedError

    def close(self) -> None:
        pass

    def __enter__(self) -> "FrameSource":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_timestamp(name: str, index: int, t: Any, last: Optional[float], hint: str = "") -> float:
    """``t`` as float seconds, or a ``ValueError`` naming the frame (``"NAME: frame INDEX: ..."``;
    no ``NAME: `` when ``name`` is empty) when it is not a finite number greater than ``last``
    (``hint`` is added to that last message)."""
    where = f"{name}: frame {index}" if name else f"frame {index}"
    try:
        t = float(t)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: the timestamp must be a number of seconds, got {t!r}") from None
    if not math.isfinite(t):
        raise ValueError(f"{where}: the timestamp must be finite, got {t}")
    if last is not None and t <= last:
        raise ValueError(f"{where}: timestamps must increase, got {t} s after {last} s{hint}")
    return t


class IterableSource(FrameSource):
    """Frames from any iterable: images, or ``(image, timestamp)`` pairs, or images with
    ``timestamps`` given beside them; else frame ``i`` is at ``i / fps`` seconds."""

    def __init__(self, frames: Iterable[Any], *, timestamps: Optional[Sequence[float]] = None,
                 fps: Optional[float] = None, color: str = "rgb"):
        super().__init__()
        if color not in ("rgb", "bgr"):
            raise ValueError(f"color: expected 'rgb' or 'bgr', got {color!r}")
        if fps is not None and not (isinstance(fps, (int, float)) and math.isfinite(fps) and fps > 0):
            raise ValueError(f"fps: expected a positive number of frames per second, got {fps!r}")
        self._frames, self._timestamps, self._color = frames, timestamps, color
        self.fps = float(fps) if fps else None
        try:
            self.frames = len(frames)  # type: ignore[arg-type]
        except TypeError:
            self.frames = None
        if timestamps is not None and self.frames is not None and len(timestamps) != self.frames:
            raise ValueError(f"timestamps: {len(timestamps)} timestamps for {self.frames} frames")

    def __iter__(self) -> Iterator[Frame]:
        ts_iter = iter(self._timestamps) if self._timestamps is not None else None
        last: Optional[float] = None
        step = 1.0 / (self.fps or DEFAULT_FPS)
        for i, item in enumerate(self._frames):
            t: Any = None
            if (isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], numbers.Real)
                    and not isinstance(item[1], bool)):
                item, t = item
            if ts_iter is not None:
                try:
                    t = next(ts_iter)
                except StopIteration:
                    raise ValueError(f"timestamps: fewer timestamps than frames (none for frame {i})") from None
            t = check_timestamp(self.name, i, i * step if t is None else t, last)
            last = t
            try:
                image = load_image(item, color=self._color)
            except (ValueError, FileNotFoundError) as e:
                raise type(e)(f"frame {i}: {e}") from None
            yield Frame(i, t, image)


_END = object()


class _DecodedSource(FrameSource):
    """A PyAV container decoded by a background thread into a bounded queue."""

    def __init__(self, container, name: str, *, live: bool, buffer: int):
        super().__init__()
        self.name = name
        self._container = container
        if not container.streams.video:
            kinds = sorted({s.type for s in container.streams}) or ["none"]
            container.close()
            raise ValueError(f"{name}: no video stream in this file (streams: {', '.join(kinds)})")
        self._stream = container.streams.video[0]
        self._live = live
        rate = self._stream.average_rate or self._stream.guessed_rate
        self.fps = float(rate) if rate else None
        self.frames = int(self._stream.frames) or None if not live else None
        self._queue: "queue.Queue" = queue.Queue(maxsize=1 if live else max(1, int(buffer)))
        self._stop = threading.Event()
        self._thread: Optional[threading.Thread] = None
        self._lock = threading.Lock()
        self._started = False
        self._reports: "collections.deque" = collections.deque()  # reports a live queue pushed out

    # -- the decoding thread ---------------------------------------------------------------
    def _put(self, item) -> bool:
        """Queue ``item``; False once the consumer has stopped. A live source drops its oldest
        waiting frame instead of waiting."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                if self._live:
                    try:
                        old = self._queue.get_nowait()
                    except queue.Empty:
                        continue
                    if isinstance(old, Frame):
                        self.dropped += 1
                    else:  # a report is never dropped
                        self._reports.append(old)
        return False

    def _decode(self) -> None:
        av = _require_av()
        stream = self._stream
        index = 0
        last: Optional[float] = None
        cut_short = False
        fallback_step = Fraction(1, 30) if not self.fps else 1 / Fraction(self.fps).limit_denominator(1001000)
        try:
            for packet in self._container.demux(stream):
                if self._stop.is_set():
                    return
                cut_short = bool(packet.is_corrupt) and packet.size > 0
                try:
                    decoded = packet.decode()
                except av.error.FFmpegError as e:
                    if packet.size == 0:  # the decoder's flush at the end: nothing left to lose
                        decoded = []
                    else:
                        self._put(("skip", index, f"undecodable data ({e.strerror or e})"))
                        index += 1
                        continue
                for f in decoded:
                    if f.is_corrupt:
                        self._put(("skip", index, "the decoder marked the frame corrupt"))
                        index += 1
                        continue
                    if f.pts is not None and f.time_base is not None:
                        t = float(f.pts * f.time_base)
                    else:
                        t = (last + float(fallback_step)) if last is not None else 0.0
                    if last is not None and t <= last:
                        self._put(("skip", index,
                                   f"timestamp {t:.6f} s is not after the previous frame's {last:.6f} s"))
                        index += 1
                        continue
                    image = f.to_ndarray(format="rgb24")
                    if not self._put(Frame(index, t, image)):
                        return
                    index += 1
                    last = t
            if not self._live:
                problem = self._truncation(index, last, cut_short)
                if problem:
                    self._put(("error", ValueError(f"{self.name}: {problem}")))
                    return
            self._put(_END)
        except Exception as e:  # noqa: BLE001 - handed to the consumer's thread
            self._put(("error", e))

    def _truncation(self, count: int, last: Optional[float], cut_short: bool) -> Optional[str]:
        """Why the file looks truncated, or None. The frame count alone can be short for sound
        files (an edit list drops frames at the start), so a short count must come with a short
        last timestamp."""
        s = self._stream
        if cut_short:
            return f"the file is truncated (its last packet is cut short after {count} frames)"
        end = None
        if s.duration and s.time_base is not None:
            end = float((s.start_time or 0) * s.time_base + s.duration * s.time_base)
        step = 1.0 / (self.fps or DEFAULT_FPS)
        short_time = end is not None and (last is None or last < end - 2 * step)
        if self.frames and count < self.frames and (short_time or end is None):
            return (f"the file is truncated: its index lists {self.frames} frames, {count} could be read"
                    + (f" (up to {last:.3f} s of {end:.3f} s)" if end is not None and last is not None else ""))
        if count == 0:
            return "no frame could be decoded (the file is truncated or corrupt)"
        return None

    # -- the consumer ----------------------------------------------------------------------
    def __iter__(self) -> Iterator[Frame]:
        with self._lock:
            if self._started:
                raise RuntimeError(f"{self.name}: a decoded source can be iterated only once")
            self._started = True
        self._thread = threading.Thread(target=self._decode, name="ig3d-decode", daemon=True)
        self._thread.start()
        try:
            while True:
                item = self._reports.popleft() if self._reports else self._queue.get()
                if item is _END:
                    return
                if isinstance(item, Frame):
                    yield item
                    continue
                kind = item[0]
                if kind == "skip":
                    _, idx, reason = item
                    self.skipped.append((idx, reason))
                    msg = f"{self.name}: frame {idx} skipped: {reason}"
                    log.info(msg)
                    warnings.warn(msg, CorruptFrameWarning, stacklevel=2)
                elif kind == "error":
                    err = item[1]
                    if isinstance(err, (ValueError, RuntimeError)) and self.name in str(err):
                        raise err
                    raise ValueError(f"{self.name}: decoding failed: {err}") from err
        finally:
            self.close()

    def close(self) -> None:
        self._stop.set()
        t = self._thread
        if t is not None and t is not threading.current_thread():
            while t.is_alive():  # unblock a thread waiting on a full queue
                try:
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                t.join(timeout=0.05)
        if self._container is not None:
            try:
                self._container.close()
            except Exception:  # noqa: BLE001 - closing twice or after an error is harmless
                pass
            self._container = None

    def __del__(self):  # pragma: no cover - best effort for sources never iterated to the end
        try:
            self._stop.set()
        except Exception:  # noqa: BLE001
            pass


def _open_file(path: str, buffer: int) -> _DecodedSource:
    av = _require_av()
    name = describe(path)
    if "://" not in path and not os.path.isfile(path):
        raise FileNotFoundError(f"video not found: {name}")
    if "://" not in path and os.path.getsize(path) == 0:
        raise ValueError(f"{name}: empty file (0 bytes)")
    try:
        container = av.open(path, mode="r")
    except av.error.FFmpegError as e:
        raise ValueError(f"{name}: not a readable video ({e.strerror or e}); the file may be truncated, corrupt, "
                         "or not a video file") from e
    return _DecodedSource(container, name, live=False, buffer=buffer)


def _open_camera(device: Any, options: Optional[dict]) -> _DecodedSource:
    av = _require_av()
    if isinstance(device, bool) or (isinstance(device, int) and device < 0):
        raise ValueError(f"camera: expected a non-negative index or a device path, got {device!r}")
    if sys.platform.startswith("linux"):
        fmt, file = "v4l2", f"/dev/video{device}" if isinstance(device, int) else os.fspath(device)
    elif sys.platform == "darwin":
        fmt, file = "avfoundation", str(device)
    elif sys.platform == "win32":
        if isinstance(device, int):
            raise RuntimeError(f"camera {device}: on Windows pass the DirectShow device name "
                               "(\"video=NAME\"; `ffmpeg -list_devices true -f dshow -i dummy` lists them)")
        fmt, file = "dshow", os.fspath(device)
    else:  # pragma: no cover
        raise RuntimeError(f"camera {device!r}: cameras are not supported on {sys.platform}")
    try:
        container = av.open(file, format=fmt, options=dict(options or {}))
    except (av.error.FFmpegError, OSError) as e:
        raise RuntimeError(f"camera {device!r} ({fmt} {file}) could not be opened: {e.strerror or e}") from e
    return _DecodedSource(container, f"camera {device!r}", live=True, buffer=1)


class VideoWriter:
    """Writes RGB frames to a video file at their own timestamps (variable frame rates kept):
    H.264 (libx264, the PyAV wheels' encoder; MPEG-4 Part 2 where it is missing), 4:2:0, in the
    container the file name says (``.mp4``, ``.mkv``, ...). Odd frame sizes lose their last row
    or column (4:2:0 needs even sizes). Use it as a context manager or call :meth:`close`."""

    def __init__(self, path: Any, *, crf: int = 20):
        av = _require_av()
        self.path = os.fspath(path)
        try:
            self._container = av.open(self.path, mode="w")
        except (av.error.FFmpegError, OSError) as e:
            raise ValueError(f"{describe(path)}: cannot write a video there ({e.strerror or e})") from e
        self._av, self._crf = av, int(crf)
        self._stream = None
        self._t0: Optional[float] = None
        self._last_pts = -1
        self.frames = 0

    def _open_stream(self, h: int, w: int) -> None:
        av = self._av
        codec = "libx264" if "libx264" in av.codecs_available else "mpeg4"
        s = self._container.add_stream(codec, rate=30)
        s.width, s.height, s.pix_fmt = w - w % 2, h - h % 2, "yuv420p"
        s.time_base = Fraction(1, 1000)
        s.codec_context.time_base = Fraction(1, 1000)
        if codec == "libx264":
            s.options = {"preset": "veryfast", "crf": str(self._crf)}
        self._stream = s

    def write(self, image: np.ndarray, timestamp: float) -> None:
        """Append ``image`` (RGB uint8 ``[H, W, 3]``, the first frame's size) shown at ``timestamp``
        seconds (the first frame is at 0 in the file)."""
        av = self._av
        image = np.asarray(image, np.uint8)
        if self._stream is None:
            self._open_stream(*image.shape[:2])
            self._t0 = float(timestamp)
        s = self._stream
        if image.shape[0] < s.height or image.shape[1] < s.width:
            raise ValueError(f"{self.path}: frame {self.frames} is {image.shape[1]}x{image.shape[0]}, the video "
                             f"{s.width}x{s.height}")
        pts = max(int(round((float(timestamp) - self._t0) * 1000)), self._last_pts + 1)
        frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(image[:s.height, :s.width]), format="rgb24")
        frame.pts, frame.time_base = pts, Fraction(1, 1000)
        for packet in s.encode(frame):
            self._container.mux(packet)
        self._last_pts = pts
        self.frames += 1

    def close(self) -> None:
        if self._container is None:
            return
        try:
            if self._stream is not None:
                for packet in self._stream.encode(None):
                    self._container.mux(packet)
        finally:
            self._container.close()
            self._container = None

    def __enter__(self) -> "VideoWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def open_source(source: Any, *, timestamps: Optional[Sequence[float]] = None, fps: Optional[float] = None,
                color: str = "rgb", camera_options: Optional[dict] = None, buffer: int = 8) -> FrameSource:
    """A :class:`FrameSource` for ``source``: a video path or URL, a camera (int index or device
    path such as ``/dev/video0``), an existing :class:`FrameSource`, or any iterable of frames or
    ``(frame, timestamp)`` pairs (``timestamps`` beside them, or ``fps`` to space them; default
    30 frames/s; ``color="bgr"`` for OpenCV frames). ``camera_options``: FFmpeg options for the
    camera (e.g. ``{"video_size": "1280x720", "framerate": "30", "input_format": "mjpeg"}``).
    ``buffer``: decoded frames a file's background thread may hold ahead of the caller."""
    if isinstance(source, FrameSource):
        return source
    if isinstance(source, bool):
        raise ValueError(f"source: expected a video path, a camera index or an iterable of frames, got {source!r}")
    if isinstance(source, int):
        return _open_camera(source, camera_options)
    if isinstance(source, (str, os.PathLike)):
        path = os.fspath(source)
        if _is_device(path):
            return _open_camera(path, camera_options)
        if timestamps is not None or fps is not None:
            raise ValueError("timestamps / fps: a video file's timestamps come from the file")
        return _open_file(path, buffer)
    if isinstance(source, (bytes, bytearray, memoryview)):
        raise ValueError("source: pass a video as a path (bytes are read as one image by predict())")
    if isinstance(source, np.ndarray) and source.ndim in (2, 3) and (source.ndim == 2 or source.shape[2] in (1, 3, 4)):
        raise ValueError(f"source: {describe(source)} is one image, not a sequence of frames (use predict(), "
                         "or pass a list / a [T, H, W, 3] array)")
    if not hasattr(source, "__iter__"):
        raise ValueError(f"source: expected a video path, a camera index or an iterable of frames, got "
                         f"{describe(source)}")
    return IterableSource(source, timestamps=timestamps, fps=fps, color=color)
