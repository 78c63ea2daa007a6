"""``ig3d.Predictor``: a preset's pipeline (:mod:`ig3d.pipelines`) behind ``predict``, ``predict_batch``
and ``stream``, with its settings in one :class:`ig3d.PredictorOptions`."""

from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Mapping, Optional, Sequence, Union

from . import engines
from .fusion import FusedHead
from .io import load_image
from .pipelines.options import PredictorOptions
from .results import FaceResult

__all__ = ["Predictor"]

log = logging.getLogger("ig3d")
#: a keyword argument not given (None is a value of min_face_size and smoothing)
_UNSET: Any = type("_Unset", (), {"__repr__": lambda self: "<from options>"})()


class Predictor:
    """Reads the faces in images.

    Args:
        preset: "default" (bundled, offline: MediaPipe face models + mini-Xception, fused by a
            documented prior head), or an Ig3D preset: "ig3d-smirk-ddamfn", "ig3d-emoca-ddamfn",
            "ig3d-emoca-cage", "ig3d-smirk-cage" (the paper's networks; their weights come from the
            user, see ``weights`` and :mod:`ig3d.ig3d_presets`).
        weights: for the Ig3D presets, part -> file: the encoders' ONNX files (or the folders
            ``ig3d convert`` wrote) and "head" (a ``FusedHead`` file). Parts not given are looked
            for under ``$IG3D_HOME/weights``; missing ones are listed in one error with where to
            get each.
        backend: what runs the networks: "auto", "onnxruntime", "openvino" (CPU; ``pip install
            "ig3d[openvino]"``) or "tensorrt". "auto": ONNX Runtime's CUDA provider on a CUDA machine;
            on the CPU the fastest installed runtime whose fp32 outputs equal ONNX Runtime's (OpenVINO
            when installed, else ONNX Runtime); see :mod:`ig3d.engines`.
        device: "auto" (CUDA when ONNX Runtime has it, else CPU), "cpu" or "cuda". An explicit
            "cuda" without a GPU raises ``RuntimeError``; there is no silent fallback.
        precision: "fp32" (default, exact) or "bf16": only on request, only on CPUs with AMX or
            AVX512-BF16 (elsewhere ``ValueError``), with OpenVINO. Per network: a network whose bf16
            outputs failed the accuracy gates stays fp32; :attr:`precisions` says which is which.
        head: a trained :class:`FusedHead` (or the path of one saved with ``FusedHead.save``) to
            replace the preset's 3D head.
        parallel_runs: how many network runs go at once on the CPU (worker threads; default: the
            cores this process may run on). Each face is its own single-threaded run, spread over
            them; ``parallel_runs=1`` runs each network once per call on the whole batch instead.
        threads_per_run: threads inside one run that has the CPU to itself (a call's only face, or
            the batched runs when ``parallel_runs=1``); default: ``parallel_runs``.
        threads: shorthand for ``parallel_runs=threads, threads_per_run=threads`` (its meaning
            before those two existed); the two explicit arguments win where given.
        min_face_size: smallest face, in pixels, to look for (default 40). Images more than
            14.4x that size are also scanned for small faces (one extra detector run over the whole
            image); ``None`` skips the scan when faces are known to be large (VR, a robot's close-up
            camera), which is faster.
        options: an :class:`ig3d.PredictorOptions` with every setting at once (thresholds, video
            tracking, which outputs, the runtime). The keyword arguments above, and any other
            field of it given as a keyword (``max_faces=2``, ``output_landmarks=False``), fill the
            same fields and win over ``options``; :attr:`options` gives the result back.

    ``predict(img)`` returns a list of :class:`FaceResult`, largest face first (empty when there
    is no face); ``predict_batch(images)`` returns one such list per image and runs every face of
    every image through each stage together (see ``threads``).
    """

    def __init__(self, preset: str = "default", backend: Optional[str] = None, device: Optional[str] = None, *,
                 options: Optional[PredictorOptions] = None,
                 head: Union[None, str, os.PathLike, FusedHead] = None, threads: Optional[int] = None,
                 min_face_size: Optional[int] = _UNSET, weights: Optional[dict] = None,
                 precision: Union[None, str, Mapping[str, str]] = None, parallel_runs: Optional[int] = None,
                 threads_per_run: Optional[int] = None, **more_options: Any):
        from .pipelines import default, ig3d_presets as ig3d_pipelines
        from .pipelines.execution import Execution

        known = list(default.PRESETS) + list(ig3d_pipelines.IG3D_PRESETS)
        if preset not in known:
            raise ValueError(f"preset: expected one of {known}, got {preset!r}")
        if weights is not None and preset in default.PRESETS:
            raise ValueError("weights: the default preset is bundled; use head= to replace its 3D head")
        if options is not None and not isinstance(options, PredictorOptions):
            raise ValueError(f"options: expected an ig3d.PredictorOptions, got {type(options).__name__}")
        given = {k: v for k, v in (("backend", backend), ("device", device), ("precision", precision),
                                   ("threads", threads), ("parallel_runs", parallel_runs),
                                   ("threads_per_run", threads_per_run)) if v is not None}
        if min_face_size is not _UNSET:
            given["min_face_size"] = min_face_size
        #: every setting of this predictor (the keyword arguments given win over ``options``' fields)
        self._options = (options or PredictorOptions()).replace(**given, **more_options)
        o = self._options
        asked = "bf16" if not isinstance(o.precision, str) and "bf16" in dict(o.precision).values() else o.precision
        self._backend, self._device = engines.resolve(o.backend, o.device, asked)
        if head is not None and not isinstance(head, FusedHead):
            head = FusedHead.load(head)
        from . import kernels

        head_device = "cuda" if self._device == "cuda" and kernels.has_cuda() else "cpu"
        if o.device == "cuda" and head_device != "cuda":  # asked for: an error, never a quiet CPU head
            raise RuntimeError("device='cuda': ig3d's fused head cannot run on CUDA here "
                               f"({kernels.info()['cuda_status']})")
        # how the runs are spread over the machine: one execution for every stage of the preset
        self._execution = Execution(backend=self._backend, device=self._device, threads=o.threads,
                                    parallel_runs=o.parallel_runs, threads_per_run=o.threads_per_run,
                                    precision=o.precision,
                                    tracking_backends=engines.tracking_backends(o.backend, self._backend, self._device))
        common = dict(execution=self._execution, head_device=head_device, min_face_size=o.min_face_size,
                      min_detection_confidence=o.min_detection_confidence,
                      min_face_presence_confidence=o.min_face_presence_confidence, outputs=o.outputs)
        if preset == "default":
            self._pipeline = default.DefaultPipeline(head=head, **common)
        else:
            w = dict(weights or {})
            if head is not None:
                w["head"] = head
            self._pipeline = ig3d_pipelines.Ig3DPipeline(preset, weights=w, **common)
        #: network -> the precision it runs in ("fp32" or "bf16")
        self._precisions: Dict[str, str] = dict(self._execution.precisions)
        #: network -> the backend of a lone tracked face's run, where it differs
        self._tracking_backends: Dict[str, str] = dict(self._execution.tracking_backends)
        self._preset = preset
        log.info("ig3d Predictor: preset=%s backend=%s%s device=%s fused head on %s", preset, self._backend,
                 "".join(f" (a tracked face's {n} on {b})" for n, b in sorted(self._tracking_backends.items())),
                 self._device, head_device)

    @property
    def options(self) -> PredictorOptions:
        """The settings this predictor was made with (:class:`ig3d.PredictorOptions`; read-only:
        ``options.replace(...)`` makes a changed copy for a new Predictor). ``backend`` / ``device``
        are as asked; :attr:`backend` and :attr:`device` say what "auto" became."""
        return self._options

    @property
    def preset(self) -> str:
        return self._preset

    @property
    def backend(self) -> str:
        """The backend chosen for the encoders (read-only)."""
        return self._backend

    @property
    def tracking_backends(self) -> Dict[str, str]:
        """Network -> the backend of its run for a lone tracked face in a video stream, where that
        is not :attr:`backend` (read-only copy): with ``backend="auto"`` on the CPU and OpenVINO
        installed, ``{"face_landmarks.onnx": "openvino"}``, where it runs faster
        (:data:`ig3d.engines.AUTO_TRACKING_BACKENDS`); empty otherwise."""
        return dict(self._tracking_backends)

    @property
    def precisions(self) -> Dict[str, str]:
        """Network -> the precision it runs in ("fp32" or "bf16"; read-only copy)."""
        return dict(self._precisions)

    @property
    def device(self) -> str:
        """The device chosen for the encoders (read-only)."""
        return self._device

    @property
    def labels(self) -> Sequence[str]:
        return self._pipeline.labels

    @property
    def head(self) -> FusedHead:
        return self._pipeline.head

    def predict(self, image: Any, *, color: str = "rgb") -> List[FaceResult]:
        """Faces in one image (path, bytes, PIL image or numpy array; ``color="bgr"`` for OpenCV
        arrays), largest first."""
        return self._open().run([load_image(image, color=color)])[0]

    def predict_batch(self, images: Sequence[Any], *, color: str = "rgb") -> List[List[FaceResult]]:
        """Faces in each of several images, one list per image, all faces batched together."""
        if isinstance(images, (str, bytes)) or not hasattr(images, "__len__"):
            raise ValueError("predict_batch: expected a sequence of images (use predict() for one image)")
        return self._open().run([load_image(im, color=color) for im in images])

    def tracker(self, *, max_faces: Optional[int] = None, smoothing: Any = _UNSET, detect_every: Optional[int] = None,
                color: str = "rgb", fps: Optional[float] = None):
        """A :class:`ig3d.stream.Tracker` for apps that own their frame loop:
        ``faces = tracker.update(frame, timestamp)`` per frame (timestamps in seconds, increasing),
        ``tracker.reset()`` between sequences. Same arguments and results as :meth:`stream`."""
        from .pipelines.stream import Tracker

        o = self._options
        return Tracker(self._open(), max_faces=o.max_faces if max_faces is None else max_faces,
                       smoothing=o.smoothing if smoothing is _UNSET else smoothing,
                       detect_every=o.detect_every if detect_every is None else detect_every, color=color, fps=fps)

    def stream(self, source: Any, *, max_faces: Optional[int] = None, smoothing: Any = _UNSET,
               detect_every: Optional[int] = None,
               color: str = "rgb", fps: Optional[float] = None, timestamps: Optional[Sequence[float]] = None,
               camera_options: Optional[dict] = None, with_images: bool = False):
        """Faces in every frame of a video file, a camera or an iterable of frames, tracked from
        frame to frame: an iterator of :class:`ig3d.stream.FrameResult` ``(index, timestamp, faces)``
        whose faces carry a ``track_id``.

        Args:
            source: a video path or URL (any container and codec FFmpeg reads; needs
                ``pip install "ig3d[video]"``), a camera (an int index or a device path), or an
                iterable of frames (numpy arrays, PIL images) or of ``(frame, timestamp)`` pairs.
            max_faces: most faces tracked at once (default: ``options.max_faces``, 4).
            smoothing: ``"default"``, a :class:`ig3d.smoothing.Smoothing`, or ``None`` for each
                frame's raw outputs (default: ``options.smoothing``).
            detect_every: while fewer than ``max_faces`` faces are tracked, the detectors run
                every this many frames (and on the first frame, and when a face is lost; default:
                ``options.detect_every``, 10).
            color: ``"bgr"`` for OpenCV frames.
            fps, timestamps: for iterables without timestamps (default: 30 frames/s).
            camera_options: FFmpeg options for a camera, e.g. ``{"video_size": "1280x720"}``.
            with_images: also hand back each frame's pixels (``FrameResult.image``, RGB), e.g. to
                draw on them with :func:`ig3d.stream.draw_frame`.

        A file is decoded in a background thread while earlier frames go through the networks.
        Use it in a ``with`` block (or call ``close()``) to stop decoding early.
        """
        from .pipelines.stream import Stream
        from .video import open_source

        # the source turns frames into RGB (``color`` applies there once)
        tracker = self.tracker(max_faces=max_faces, smoothing=smoothing, detect_every=detect_every, fps=fps)
        return Stream(tracker, open_source(source, timestamps=timestamps, fps=fps, color=color,
                                           camera_options=camera_options), with_images=with_images)

    def _open(self):
        if self._pipeline is None:
            raise RuntimeError("this Predictor is closed")
        return self._pipeline

    def close(self) -> None:
        """Release the networks and the worker threads (also at the end of a ``with`` block).
        Later calls raise ``RuntimeError``."""
        if self._pipeline is not None:
            self._pipeline = None
            self._execution.close()

    def __enter__(self) -> "Predictor":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        bf16 = sorted(n for n, p in self._precisions.items() if p == "bf16")
        fp32 = sorted(n for n, p in self._precisions.items() if p != "bf16")
        prec = f", bf16={bf16}, fp32={fp32}" if bf16 else ""  # all fp32 unless bf16 was asked for
        tracking = f", tracking_backends={self._tracking_backends}" if self._tracking_backends else ""
        return (f"Predictor(preset={self._preset!r}, backend={self._backend!r}, device={self._device!r}"
                f"{tracking}{prec})")
