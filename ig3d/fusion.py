"""The fused head: 3D-parameter normalisation, the head MLP and Ig3D late fusion in one C++ call.

A :class:`FusedHead` is a plain data object (numpy arrays and a few settings). It can be built from
arrays, from a torch ``nn.Sequential`` of the same structure (BatchNorm folded at load time), saved
to and loaded from an ``.npz`` file without pickle, and run on a batch::

    head = FusedHead([Layer(w1, b1, "leaky_relu"), Layer(w2, b2)], input_dim=55, num_classes=7,
                     fusion="weighted", scores2d_dim=7, fusion_weights=(0.8, 0.2))
    out = head(params3d, scores2d)      # FusedOutput: probs, logits, va, out3d

What one call computes, for a batch of B faces (shapes in brackets)::

    x0 = (params3d[:, select] - mean) / std                           [B, Dsel]
    x_{l+1} = act_l(x_l @ W_l.T + b_l)  (+ x_{skip_from} if set)        [B, O_l]
    intermediate fusion: before layer `concat_at`, x = [x, features2d] (3D first) or [features2d, x]
    out3d = x_L                                                         [B, O]
    fused = out3d; fused[:, fusion_map[k]] = combine(scores2d[:, k], out3d[:, fusion_map[k]])
    logits = fused[:, :C]; probs = softmax(logits); va = fused[:, va_index:va_index + 2]

``combine`` is Ig3D's late fusion on raw scores: ``max``, ``mean`` ((a + b) / 2), ``min`` or
``weighted`` (w2d * s2d + w3d * s3d).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from typing import Any, NamedTuple, Optional, Sequence, Union

import numpy as np

from . import kernels

__all__ = [
    "ACTIVATIONS",
    "FUSION_MODES",
    "Layer",
    "FusedOutput",
    "FusedHead",
    "fold_batchnorm",
    "fuse_scores",
]

ACTIVATIONS = {"none": 0, "relu": 1, "leaky_relu": 2, "tanh": 3, "sigmoid": 4}
FUSION_MODES = {"none": 0, "max": 1, "mean": 2, "min": 3, "weighted": 4}
PRECISIONS = ("fp32", "bf16")
_FORMAT = "ig3d.fused_head"
_FORMAT_VERSION = 1

PathLike = Union[str, "os.PathLike[str]"]


@dataclass
class Layer:
    """One Linear layer of a head, BatchNorm already folded in.

    weight: [out, in]; bias: [out] or None (zeros); activation: one of ``ACTIVATIONS``;
    slope: LeakyReLU's negative slope (Ig3D uses 0.2); skip_from: j to add x_j (x_0 is the
    normalised input, x_l the output of layer l-1) after the activation, for residual blocks.
    """

    weight: np.ndarray
    bias: Optional[np.ndarray] = None
    activation: str = "none"
    slope: float = 0.2
    skip_from: Optional[int] = None

    def __post_init__(self) -> None:
        self.weight = np.ascontiguousarray(self.weight, dtype=np.float32)
        if self.weight.ndim != 2:
            raise ValueError(f"Layer.weight: expected shape [out, in], got {list(self.weight.shape)}")
        if self.bias is None:
            self.bias = np.zeros(self.weight.shape[0], np.float32)
        self.bias = np.ascontiguousarray(self.bias, dtype=np.float32)
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"Layer.activation: expected one of {sorted(ACTIVATIONS)}, got {self.activation!r}")

    @property
    def in_features(self) -> int:
        return int(self.weight.shape[1])

    @property
    def out_features(self) -> int:
        return int(self.weight.shape[0])


class FusedOutput(NamedTuple):
    """What a fused head returns for a batch of B faces (a named tuple: cheap on the hot path).

    probs: [B, C] fused class probabilities (softmax of ``logits``); logits: [B, C] fused raw
    scores; va: [B, 2] fused (valence, arousal) or None when the head has none; out3d: [B, O] the
    3D branch's own raw outputs, before late fusion.
    """

    probs: np.ndarray
    logits: np.ndarray
    va: Optional[np.ndarray]
    out3d: np.ndarray

    def to_numpy(self) -> "FusedOutput":
        """The same output with every array on the host: device arrays (from a call on device
        inputs, see :class:`ig3d.device.DeviceArray`) are copied, numpy arrays returned as they are."""
        return FusedOutput(*(a if a is None or isinstance(a, np.ndarray) else a.numpy() for a in self))


_new_output = tuple.__new__


def _device_mod():
    from . import device

    return device


def fold_batchnorm(weight, bias, gamma, beta, running_mean, running_var, eps: float = 1e-5):
    """Fold an eval-mode BatchNorm1d that follows a Linear into the Linear: returns (weight, bias)."""
    weight = np.asarray(weight, np.float64)
    bias = np.zeros(weight.shape[0]) if bias is None else np.asarray(bias, np.float64)
    scale = np.asarray(gamma, np.float64) / np.sqrt(np.asarray(running_var, np.float64) + eps)
    w = weight * scale[:, None]
    b = (bias - np.asarray(running_mean, np.float64)) * scale + np.asarray(beta, np.float64)
    return w.astype(np.float32), b.astype(np.float32)


def _vector(value, n: int, name: str, dtype=np.float32) -> np.ndarray:
    arr = np.asarray(value, dtype=dtype)
    if arr.ndim == 0:
        arr = np.full(n, arr, dtype=dtype)
    if arr.shape != (n,):
        raise ValueError(f"{name}: expected shape [{n}], got {list(arr.shape)}")
    return np.ascontiguousarray(arr)


class FusedHead:
    """A 3D head with normalisation and Ig3D fusion, run by the C++/CUDA fused kernel.

    Args:
        layers: the MLP, in order (see :class:`Layer`).
        input_dim: width D of the raw ``params3d`` the caller passes.
        select: indices (into the D inputs) of the features the head uses, in order: the Ig3D
            "short"/"full" feature sets are index lists. Default: all D in order.
        mean, std: per selected feature standardisation. Default 0 and 1.
        num_classes: C, the first C outputs are class logits (0 for a regression-only head).
        va_index: index of valence in the outputs (arousal is the next one), or None.
        concat_at, concat_order, features2d_dim: intermediate fusion. Before layer ``concat_at``
            the 2D feature [B, features2d_dim] is concatenated, "3d_first" (Ig3D with DDAMFN) or
            "2d_first" (Ig3D with CAGE).
        fusion: late fusion mode, one of ``FUSION_MODES``.
        scores2d_dim: K, width of the 2D network's raw scores.
        fusion_map: [K] output index that 2D score k fuses with (default 0..K-1); this also maps a
            2D network's class order onto the head's.
        fusion_weights: (w2d, w3d) for ``weighted``, scalars or [K] arrays.
        labels: optional class names, C of them.
        precision: "fp32", or "bf16" to store the CPU weights as bfloat16 (half the bytes streamed;
            activations and accumulation stay float32).
    """

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        input_dim: int,
        select: Optional[Sequence[int]] = None,
        mean: Any = None,
        std: Any = None,
        num_classes: int,
        va_index: Optional[int] = None,
        concat_at: Optional[int] = None,
        concat_order: str = "3d_first",
        features2d_dim: int = 0,
        fusion: str = "none",
        scores2d_dim: int = 0,
        fusion_map: Optional[Sequence[int]] = None,
        fusion_weights: Any = None,
        labels: Optional[Sequence[str]] = None,
        precision: str = "fp32",
        name: str = "",
    ) -> None:
        self.layers = [l if isinstance(l, Layer) else Layer(**l) for l in layers]
        if not self.layers:
            raise ValueError("layers: a head needs at least one layer")
        self.input_dim = int(input_dim)
        if self.input_dim <= 0:
            raise ValueError(f"input_dim must be positive, got {input_dim}")
        sel = np.atleast_1d(np.asarray(np.arange(self.input_dim) if select is None else select))
        if sel.ndim != 1 or sel.dtype.kind not in "iu":
            raise ValueError(f"select: expected a 1-D integer index list, got {sel.dtype} {list(sel.shape)}")
        self.select = np.ascontiguousarray(sel, dtype=np.int32)
        d_sel = len(self.select)
        self.mean = _vector(0.0 if mean is None else mean, d_sel, "mean")
        self.std = _vector(1.0 if std is None else std, d_sel, "std")
        if not np.all(np.isfinite(self.std)) or np.any(self.std <= 0):
            raise ValueError("std: every entry must be finite and > 0")
        self.num_classes = int(num_classes)
        self.va_index = None if va_index is None else int(va_index)
        self.concat_at = None if concat_at is None else int(concat_at)
        if concat_order not in ("3d_first", "2d_first"):
            raise ValueError(f"concat_order: expected '3d_first' or '2d_first', got {concat_order!r}")
        self.concat_order = concat_order
        self.features2d_dim = int(features2d_dim)
        if fusion not in FUSION_MODES:
            raise ValueError(f"fusion: expected one of {sorted(FUSION_MODES)}, got {fusion!r}")
        self.fusion = fusion
        self.scores2d_dim = int(scores2d_dim)
        if (fusion == "none") != (self.scores2d_dim == 0):
            raise ValueError(
                f"late fusion needs both a mode and scores2d_dim > 0 (fusion={fusion!r}, scores2d_dim={scores2d_dim})")
        k = self.scores2d_dim
        self.fusion_map = _vector(np.arange(k) if fusion_map is None else fusion_map, k, "fusion_map", np.int32)
        if fusion == "weighted":
            if fusion_weights is None or len(fusion_weights) != 2:
                raise ValueError("fusion_weights: 'weighted' fusion needs (w2d, w3d)")
            self.w2d = _vector(fusion_weights[0], k, "fusion_weights[0] (w2d)")
            self.w3d = _vector(fusion_weights[1], k, "fusion_weights[1] (w3d)")
        else:
            if fusion_weights is not None:
                raise ValueError(f"fusion_weights are only used by 'weighted' fusion, not {fusion!r}")
            self.w2d = np.full(k, 0.5, np.float32)
            self.w3d = np.full(k, 0.5, np.float32)
        self.labels = None if labels is None else [str(s) for s in labels]
        if self.labels is not None and len(self.labels) != self.num_classes:
            raise ValueError(f"labels: expected {self.num_classes} names, got {len(self.labels)}")
        if precision not in PRECISIONS:
            raise ValueError(f"precision: expected one of {PRECISIONS}, got {precision!r}")
        self.precision = precision
        self.name = name
        for i, layer in enumerate(self.layers):
            if not (np.all(np.isfinite(layer.weight)) and np.all(np.isfinite(layer.bias))):
                raise ValueError(f"layers[{i}]: weights contain NaN or inf")
        # The C++ head re-checks every width and index and names what does not fit.
        self._core = kernels.core().Head(
            d_raw=self.input_dim,
            select=self.select,
            mean=self.mean,
            inv_std=(1.0 / self.std.astype(np.float64)).astype(np.float32),
            weights=[l.weight for l in self.layers],
            biases=[l.bias for l in self.layers],
            activations=[ACTIVATIONS[l.activation] for l in self.layers],
            slopes=[float(l.slope) for l in self.layers],
            skips=[-1 if l.skip_from is None else int(l.skip_from) for l in self.layers],
            concat_at=-1 if self.concat_at is None else self.concat_at,
            concat_2d_first=self.concat_order == "2d_first",
            f2d=self.features2d_dim,
            num_classes=self.num_classes,
            va_index=-1 if self.va_index is None else self.va_index,
            fusion_mode=FUSION_MODES[self.fusion],
            fusion_map=self.fusion_map,
            w2d=self.w2d,
            w3d=self.w3d,
            bf16=precision == "bf16",
        )

    # ------------------------------------------------------------------------------------------
    @property
    def out_dim(self) -> int:
        return self.layers[-1].out_features

    @property
    def isa(self) -> str:
        """The CPU instruction set this head's weights are packed for (e.g. "avx512")."""
        return self._core.isa

    def __repr__(self) -> str:
        widths = [self.layers[0].in_features] + [l.out_features for l in self.layers]
        return (f"FusedHead({self.name or 'unnamed'}: D={self.input_dim} -> {'->'.join(map(str, widths))}, "
                f"C={self.num_classes}, va={self.va_index}, fusion={self.fusion}, precision={self.precision})")

    def __call__(self, params3d, scores2d=None, features2d=None, *, device: Optional[str] = None,
                 threads: Optional[int] = None, stream: Any = None) -> FusedOutput:
        """Run the head on a batch.

        params3d: [B, D] float; scores2d: [B, K] raw 2D scores (optional: without them the result
        is the 3D branch alone); features2d: [B, F] (required for intermediate fusion).

        Host inputs (numpy arrays) give numpy outputs; ``device="cuda"`` runs them on the GPU
        (copied there and back). CUDA device inputs (torch CUDA tensors, CuPy arrays, anything with
        ``__cuda_array_interface__`` or DLPack, float32 and C-contiguous, all on one device) run as
        one kernel launch on ``stream`` (default: torch's current stream for torch tensors, else the
        producer's ``__cuda_array_interface__`` stream, else the default stream) and give
        :class:`ig3d.device.DeviceArray` outputs on that device: no host round trip and no
        synchronisation; ``out.to_numpy()`` copies them to the host.

        device: None (where the inputs are), "cpu" or "cuda". threads: CPU threads (default:
        ``ig3d.kernels.get_num_threads()``). stream: a ``cudaStream_t`` as an int, or a torch/CuPy
        stream object (device inputs only).
        """
        host = (type(params3d) is np.ndarray and (scores2d is None or type(scores2d) is np.ndarray)
                and (features2d is None or type(features2d) is np.ndarray))
        if not host:
            is_dev = _device_mod().is_device_array
            host = not (is_dev(params3d) or is_dev(scores2d) or is_dev(features2d))
        if host:
            if stream is not None:
                raise ValueError("stream: only used with CUDA device inputs; these inputs are on the host")
            # tuple.__new__ skips NamedTuple's argument parsing: this call is on the hot path
            return _new_output(FusedOutput, self._core.forward(params3d, scores2d, features2d, device or "cpu",
                                                               0 if threads is None else threads))
        if device not in (None, "cuda"):
            raise ValueError(f"device: {device!r} was asked for but the inputs are CUDA device arrays (pass host "
                             "arrays to run on the CPU, or device='cuda')")
        return self._call_device(params3d, scores2d, features2d, stream)

    def _call_device(self, params3d, scores2d, features2d, stream) -> FusedOutput:
        dev_mod = _device_mod()
        given = {"params3d": params3d, "scores2d": scores2d, "features2d": features2d}
        s = dev_mod.resolve_stream([a for a in given.values() if a is not None], stream)
        if scores2d is not None and self.scores2d_dim == 0:
            raise ValueError("scores2d: this head has no late fusion (scores2d_dim=0), but scores2d was given")
        if self.features2d_dim == 0 and features2d is not None:
            raise ValueError("features2d: this head has no intermediate fusion (features2d_dim=0), "
                             "but features2d was given")
        if self.features2d_dim > 0 and features2d is None:
            raise ValueError(f"features2d: this head fuses a 2D feature of width {self.features2d_dim} "
                             "(intermediate fusion); features2d is required")
        infos = [dev_mod.inspect(a, name, stream=s) for name, a in given.items() if a is not None]
        B = dev_mod.check_matrix(infos[0], self.input_dim)
        widths = {"scores2d": self.scores2d_dim, "features2d": self.features2d_dim}
        for info in infos[1:]:
            dev_mod.check_matrix(info, widths[info.name], B)
        dev = dev_mod.common_device(infos)
        dev_mod.wait_for_producers(infos, dev, s)
        ptr = {i.name: i.ptr for i in infos}
        buf, (o_probs, o_logits, o_va, o_out3d) = self._core.forward_device(
            ptr["params3d"], ptr.get("scores2d", 0), ptr.get("features2d", 0), B, dev, s)
        keep = tuple(i.owner for i in infos)
        C, O = self.num_classes, self.out_dim

        def arr(offset, width):
            return dev_mod.DeviceArray(buf, offset, (B, width), np.float32, dev, s, keep)

        return FusedOutput(arr(o_probs, C), arr(o_logits, C), None if o_va < 0 else arr(o_va, 2), arr(o_out3d, O))

    # ------------------------------------------------------------------------------------------
    def config(self) -> dict:
        """Every setting except the arrays, as JSON-able values."""
        return {
            "input_dim": self.input_dim,
            "num_classes": self.num_classes,
            "va_index": self.va_index,
            "concat_at": self.concat_at,
            "concat_order": self.concat_order,
            "features2d_dim": self.features2d_dim,
            "fusion": self.fusion,
            "scores2d_dim": self.scores2d_dim,
            "labels": self.labels,
            "precision": self.precision,
            "name": self.name,
            "layers": [{"activation": l.activation, "slope": float(l.slope), "skip_from": l.skip_from,
                        "in": l.in_features, "out": l.out_features} for l in self.layers],
        }

    def save(self, path: PathLike) -> None:
        """Write the head to an ``.npz`` file (arrays + a JSON config; no pickle)."""
        cfg = {"format": _FORMAT, "version": _FORMAT_VERSION, **self.config()}
        arrays = {"select": self.select, "mean": self.mean, "std": self.std, "fusion_map": self.fusion_map,
                  "w2d": self.w2d, "w3d": self.w3d,
                  "config_json": np.frombuffer(json.dumps(cfg).encode(), dtype=np.uint8)}
        for i, l in enumerate(self.layers):
            arrays[f"layers.{i}.weight"] = l.weight
            arrays[f"layers.{i}.bias"] = l.bias
        with open(path, "wb") as f:
            np.savez(f, **arrays)

    @classmethod
    def load(cls, path: PathLike, *, precision: Optional[str] = None) -> "FusedHead":
        """Read a head written by :meth:`save`. Corrupt or mismatched files raise ``ValueError``."""
        path = os.fspath(path)
        if not os.path.exists(path):
            raise FileNotFoundError(f"fused head file not found: {path}")
        try:
            with open(path, "rb") as f, np.load(f, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except Exception as e:  # zipfile/format errors from a corrupt file
            raise ValueError(f"{path}: not a readable ig3d fused head (.npz) file: {e}") from e
        if "config_json" not in arrays:
            raise ValueError(f"{path}: missing 'config_json': not an ig3d fused head file")
        try:
            cfg = json.loads(arrays["config_json"].tobytes().decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"{path}: corrupt config_json: {e}") from e
        if cfg.get("format") != _FORMAT or cfg.get("version") != _FORMAT_VERSION:
            raise ValueError(f"{path}: format {cfg.get('format')!r} v{cfg.get('version')!r}, "
                             f"expected {_FORMAT!r} v{_FORMAT_VERSION}")
        layers = []
        for i, lc in enumerate(cfg["layers"]):
            wk, bk = f"layers.{i}.weight", f"layers.{i}.bias"
            for key in (wk, bk):
                if key not in arrays:
                    raise ValueError(f"{path}: missing array {key!r}")
            w, b = arrays[wk], arrays[bk]
            if w.shape != (lc["out"], lc["in"]) or b.shape != (lc["out"],):
                raise ValueError(f"{path}: {wk} has shape {list(w.shape)} and {bk} {list(b.shape)}, "
                                 f"config says [{lc['out']}, {lc['in']}]")
            layers.append(Layer(w, b, lc["activation"], lc["slope"], lc["skip_from"]))
        for key in ("select", "mean", "std", "fusion_map", "w2d", "w3d"):
            if key not in arrays:
                raise ValueError(f"{path}: missing array {key!r}")
        return cls(
            layers, input_dim=cfg["input_dim"], select=arrays["select"], mean=arrays["mean"], std=arrays["std"],
            num_classes=cfg["num_classes"], va_index=cfg["va_index"], concat_at=cfg["concat_at"],
            concat_order=cfg["concat_order"], features2d_dim=cfg["features2d_dim"], fusion=cfg["fusion"],
            scores2d_dim=cfg["scores2d_dim"], fusion_map=arrays["fusion_map"],
            fusion_weights=(arrays["w2d"], arrays["w3d"]) if cfg["fusion"] == "weighted" else None,
            labels=cfg["labels"], precision=precision or cfg["precision"], name=cfg.get("name", ""))

    @classmethod
    def from_torch(cls, module, **kwargs) -> "FusedHead":
        """Build from a torch ``nn.Sequential`` (nested ones are flattened) of Linear, BatchNorm1d
        (folded into the Linear before it), ReLU / LeakyReLU / Tanh / Sigmoid, and Dropout /
        Identity (dropped: inference). Other keyword arguments go to the constructor."""
        try:
            import torch
            from torch import nn
        except ImportError as e:  # pragma: no cover - depends on the environment
            raise ImportError("FusedHead.from_torch needs torch: pip install 'ig3d[torch]'") from e

        def flat(m):
            if isinstance(m, nn.Sequential):
                for c in m:
                    yield from flat(c)
            else:
                yield m

        def arr(t):
            return None if t is None else t.detach().to(torch.float64).cpu().numpy()

        layers = []  # [weight, bias, activation, slope]
        for m in flat(module):
            if isinstance(m, nn.Linear):
                layers.append([arr(m.weight), arr(m.bias), "none", 0.2])
            elif isinstance(m, nn.BatchNorm1d):
                if not layers or layers[-1][2] != "none":
                    raise ValueError("from_torch: BatchNorm1d must follow a Linear directly")
                if m.running_mean is None:
                    raise ValueError("from_torch: BatchNorm1d without running statistics cannot be folded")
                gamma = arr(m.weight) if m.affine else np.ones(m.num_features)
                beta = arr(m.bias) if m.affine else np.zeros(m.num_features)
                layers[-1][0], layers[-1][1] = fold_batchnorm(layers[-1][0], layers[-1][1], gamma, beta,
                                                              arr(m.running_mean), arr(m.running_var), m.eps)
            elif isinstance(m, (nn.ReLU, nn.LeakyReLU, nn.Tanh, nn.Sigmoid)):
                if not layers or layers[-1][2] != "none":
                    raise ValueError(f"from_torch: {type(m).__name__} must follow a Linear (or its BatchNorm)")
                layers[-1][2] = {nn.ReLU: "relu", nn.LeakyReLU: "leaky_relu", nn.Tanh: "tanh",
                                 nn.Sigmoid: "sigmoid"}[type(m)]
                if isinstance(m, nn.LeakyReLU):
                    layers[-1][3] = float(m.negative_slope)
            elif isinstance(m, (nn.Dropout, nn.Identity)):
                continue
            else:
                raise ValueError(f"from_torch: unsupported module {type(m).__name__}")
        kwargs.setdefault("input_dim", layers[0][0].shape[1] if layers else 0)
        return cls([Layer(w, b, a, s) for w, b, a, s in layers], **kwargs)


def fuse_scores(s2d, s3d, mode: str, weights=None) -> np.ndarray:
    """Ig3D late fusion of two score arrays of the same shape, element-wise, on raw scores.

    mode: "max", "mean" ((s2d + s3d) / 2), "min", or "weighted" (w2d * s2d + w3d * s3d, with
    ``weights=(w2d, w3d)``). Runs the same C++ code as the fused head. Returns float32.
    """
    if mode not in FUSION_MODES or mode == "none":
        raise ValueError(f"mode: expected 'max', 'mean', 'min' or 'weighted', got {mode!r}")
    if mode == "weighted":
        if weights is None or len(weights) != 2:
            raise ValueError("weights: 'weighted' fusion needs weights=(w2d, w3d)")
        w2d, w3d = (float(w) for w in weights)
    elif weights is not None:
        raise ValueError(f"weights are only used by 'weighted' fusion, not {mode!r}")
    else:
        w2d = w3d = 0.5
    # Python sequences are taken as numbers; numpy arrays must already be floating point.
    s2d = s2d if isinstance(s2d, np.ndarray) else np.asarray(s2d, np.float32)
    s3d = s3d if isinstance(s3d, np.ndarray) else np.asarray(s3d, np.float32)
    return kernels.core().fuse_scores(s2d, s3d, FUSION_MODES[mode], w2d, w3d)
