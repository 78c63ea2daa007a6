"""How a pipeline's network runs are spread over the machine, kept apart from what the pipeline computes.

An :class:`Execution` holds the worker threads (:class:`ig3d.engines.Workers`), the thread settings
and the runtime choice (backend, device, precision), and loads each network the way those settings
want it: on the CPU a single-threaded session per network whose runs (one per face, or per detector
view) are spread over one worker thread per core, plus an all-cores session where a lone run has the
machine to itself (:class:`ig3d.engines.PerCoreModel`); on a GPU, or with ``parallel_runs=1``, one
batched run per network per call. The stages (:mod:`ig3d.pipelines.stages`) only say which network
runs on which inputs and hand that to ``execution.workers``; a pipeline's presets and the video
tracker share one execution, so every preset runs the same way.
"""

from __future__ import annotations

from typing import Dict, FrozenSet, Mapping, Optional, Union

from ..engines import Model, PerCoreModel, Workers, load, network_precision, usable_cores

__all__ = ["Execution"]


class Execution:
    """Runtime settings and worker threads of one pipeline.

    Args:
        backend, device: as resolved by :func:`ig3d.engines.resolve` ("onnxruntime", "cpu", ...).
        threads: shorthand for ``parallel_runs=threads, threads_per_run=threads``; the explicit
            arguments win where given.
        parallel_runs: single-threaded runs at once on the CPU (worker threads; default: the usable
            cores). ``1`` runs each network once per call on the whole batch instead.
        threads_per_run: threads inside a run that has the cores to itself (a call's only face, a
            batched run); default: ``parallel_runs`` on the CPU, the runtime's own on a GPU.
        precision: "fp32", "bf16", or network -> precision; a network outside its preset's gated set
            stays fp32 unless named (:func:`ig3d.engines.network_precision`).
        tracking_backends: network file name -> the backend that runs it for a lone tracked face in a
            video stream instead of ``backend`` (:func:`ig3d.engines.tracking_backends`: what
            ``backend="auto"`` picks); loaded on first use by :meth:`tracking_model`.
    """

    def __init__(self, *, backend: str, device: str, threads: Optional[int] = None,
                 parallel_runs: Optional[int] = None, threads_per_run: Optional[int] = None,
                 precision: Union[str, Mapping[str, str]] = "fp32",
                 tracking_backends: Optional[Mapping[str, str]] = None):
        for arg, v in (("threads", threads), ("parallel_runs", parallel_runs), ("threads_per_run", threads_per_run)):
            if v is not None and int(v) < 1:
                raise ValueError(f"{arg} must be a positive number of CPU threads or None, got {v}")
        self.backend, self.device, self.precision = backend, device, precision
        cpu = device == "cpu"
        #: CPU: single-threaded runs, one per face, this many at once (worker threads)
        self.workers = Workers((int(parallel_runs or threads or 0) or usable_cores()) if cpu else 1)
        #: threads inside one run that has the cores to itself (a lone face, a batched run)
        self.threads_per_run: Optional[int] = int(threads_per_run or threads or 0) or (self.workers.n if cpu else None)
        #: network -> the precision it runs in, for every network loaded through this execution
        self.precisions: Dict[str, str] = {}
        #: network -> the backend of its lone tracked-face runs, where that differs from ``backend``
        self.tracking_backends: Dict[str, str] = dict(tracking_backends or {})

    @property
    def parallel(self) -> bool:
        """Whether runs are spread over worker threads (one single-threaded run per item)."""
        return self.workers.parallel

    @property
    def cpp_threads(self) -> int:
        """CPU threads for a C++ call (crops): 1 inside workers (the workers are the parallelism),
        0 (every core) otherwise."""
        return 1 if self.workers.parallel else 0

    def _precision(self, name: str, gated: FrozenSet[str]) -> str:
        self.precisions[name] = network_precision(self.precision, name, gated)
        return self.precisions[name]

    def model(self, source, name: str, gated: FrozenSet[str] = frozenset()) -> Model:
        """A network whose runs go through the workers: single-threaded sessions when they are
        spread over the cores, one session with ``threads_per_run`` threads otherwise."""
        precision = self._precision(name, gated)
        return load(source, backend=self.backend, device=self.device, name=name,
                    threads=1 if self.workers.parallel else self.threads_per_run,
                    parallel_runs=self.workers.n, precision=precision)

    def whole_machine_model(self, source, name: str, gated: FrozenSet[str] = frozenset()) -> Model:
        """A session with ``threads_per_run`` threads for a run that has the cores to itself for
        most of its time (the small-face scan); with one worker, the same as :meth:`model`."""
        precision = self._precision(name, gated)
        return load(source, backend=self.backend, device=self.device, name=name,
                    threads=self.threads_per_run, parallel_runs=1, precision=precision)

    def per_core(self, source, name: str, gated: FrozenSet[str] = frozenset(), *,
                 threads: Optional[int] = None, spin: bool = False) -> PerCoreModel:
        """A network with an all-cores session for a lone run and a single-threaded one for runs
        spread over the workers (:class:`ig3d.engines.PerCoreModel`)."""
        precision = self._precision(name, gated)
        return PerCoreModel(source, workers=self.workers, backend=self.backend, device=self.device,
                            threads=self.threads_per_run if threads is None else threads, name=name, spin=spin,
                            precision=precision)

    def tracking_model(self, source, name: str, gated: FrozenSet[str] = frozenset()) -> Optional[Model]:
        """The session for a lone tracked face's run of network ``name`` on its tracking backend,
        with ``threads_per_run`` threads; None where the network has none (then the tracker uses
        the network's usual sessions)."""
        backend = self.tracking_backends.get(name)
        if backend is None:
            return None
        return load(source, backend=backend, device=self.device, name=name, threads=self.threads_per_run,
                    parallel_runs=1, precision=network_precision(self.precision, name, gated))

    def close(self) -> None:
        """Stop the worker threads (runs already going finish); later runs through this execution
        fail. Called by ``Predictor.close()``."""
        self.workers.close()
