"""The runtime interface: what every way of running an ONNX file (ONNX Runtime, OpenVINO, native
TensorRT) provides, so that the pipelines, the worker pool (:class:`ig3d.engines.Workers`) and
:class:`ig3d.engines.PerCoreModel` are written once, against this interface, and never compare
backend names.

How a runtime module plugs in
-----------------------------
A module ``ig3d/engines/<name>.py`` defines a subclass of :class:`Runtime` and a module-level
``RUNTIME`` instance of it (or another attribute, named in the registry entry). Its third-party
package is imported inside the methods, never at module import, so that ``import ig3d`` stays light
and a missing package is reported by :meth:`Runtime.missing`. Then one line in ``ig3d/engines/__init__.py``'s ``RUNTIME_MODULES``
(backend name -> "module" or "module:attribute") makes the backend known to :func:`ig3d.engines.resolve`,
:func:`ig3d.available_backends`, ``Predictor(backend=...)`` and the CLI's ``--backend``.
``Runtime.load`` returns a :class:`Model`: ``run(x)`` or ``run({name: x})`` -> dict name -> array,
safe to call from several threads at once (the CPU workers do).
"""

from __future__ import annotations

import os
from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np

__all__ = ["PRECISIONS", "Model", "Runtime", "ModelSource", "model_name"]

#: numeric precisions a network may run in; "fp32" is the default everywhere and is exact
PRECISIONS = ("fp32", "bf16")

#: an ONNX file's path, or its bytes
ModelSource = Union[str, os.PathLike, bytes]


def model_name(model: ModelSource, name: str = "") -> str:
    """A network's display name: ``name``, else the file's name."""
    return name or (os.path.basename(os.fspath(model)) if not isinstance(model, bytes) else "model")


class Model:
    """One ONNX file, loaded by a runtime and ready to run, with a dynamic batch dimension.

    Attributes every runtime sets: ``name``, ``backend`` (the runtime's name), ``device``,
    ``precision`` (one of :data:`PRECISIONS`), ``input_names`` and ``output_names`` (the ONNX
    file's, in its order)."""

    name: str = "model"
    backend: str = ""
    device: str = "cpu"
    precision: str = "fp32"
    input_names: List[str]
    output_names: List[str]

    def run(self, inputs: Union[np.ndarray, Dict[str, np.ndarray]]) -> Dict[str, np.ndarray]:
        """Outputs for one batch: ``inputs`` is the first input's array or a dict name -> array;
        returns a dict output name -> array (float32 for float outputs, whatever the precision)."""
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self.backend}/{self.device}, {self.precision})"


class Runtime:
    """One runtime. Subclasses set the class attributes and implement the methods.

    Attributes:
        name: the ``backend=`` value that selects it ("onnxruntime", "openvino", "tensorrt").
        exact_cpu: on the CPU its float32 outputs equal ONNX Runtime's within 1e-5 of the output
            scale (tests hold it to that); ``backend="auto"`` only picks such runtimes.
        auto_rank: order among the installed exact CPU runtimes for ``backend="auto"`` on the CPU,
            highest first (the measured fastest gets the highest rank).
        install_hint: what to install, for error messages.
    """

    name: str = ""
    exact_cpu: bool = False
    auto_rank: int = 0
    install_hint: str = ""

    def missing(self) -> Optional[str]:
        """None when the runtime can be used here, else why not (e.g. its package is absent)."""
        raise NotImplementedError

    def devices(self) -> List[str]:
        """Devices it can run on here ("cpu", "cuda"), best first; [] when it is not installed."""
        raise NotImplementedError

    def precisions(self, device: str) -> Sequence[str]:
        """The precisions it can run in on ``device`` here (always "fp32"; "bf16" only where the
        hardware computes in bf16 natively)."""
        return ("fp32",)

    def version(self) -> Optional[str]:
        """The installed version of its package (the distribution named ``name``), None when absent."""
        from importlib import metadata

        try:
            return metadata.version(self.name)
        except metadata.PackageNotFoundError:
            return None

    def backends(self) -> List[Dict[str, Any]]:
        """What it offers here, as :func:`ig3d.available_backends` lists it: one dict per backend a user
        can ask for, with ``name``, ``available``, ``version``, ``reason`` (why it is not available;
        None when it is), ``backend`` (the ``backend=`` value) and ``device``. Default: one entry named
        after the runtime, on its first device. A runtime with several devices lists one per device."""
        devs = self.devices()
        why = self.missing()
        if why is None and not devs:
            why = f"{self.name} has no device it can run on here"
        return [{"name": self.name, "available": why is None, "version": self.version(), "reason": why,
                 "backend": self.name, "device": devs[0] if devs else None}]

    def load(self, model: ModelSource, *, device: str = "cpu", threads: Optional[int] = None,
             parallel_runs: int = 1, precision: str = "fp32", name: str = "", spin: bool = False) -> Model:
        """Load ``model`` for ``device``.

        Args:
            threads: threads inside one run (None: the runtime's default, all cores).
            parallel_runs: how many runs of this model the caller will make at the same time
                from different threads (the CPU workers), so that the runtime can prepare for it.
            precision: one of :meth:`precisions`; anything else raises ``ValueError``.
            spin: the run has the cores to itself; threads may busy-wait between operators.
        """
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<ig3d runtime {self.name}>"
