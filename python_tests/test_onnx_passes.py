"""ig3d.convert.onnx_passes: each rewrite against the graph it rewrites, in ONNX Runtime.

Every pass must leave the outputs as they were (float rounding apart), rewrite exactly the
patterns it names, and leave look-alikes it cannot rewrite exactly untouched. The graphs here are
small, built with onnx.helper; DDAMFN's full export is checked in test_ddamfn.py.
"""

from __future__ import annotations

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="the passes rewrite onnx graphs")
ort = pytest.importorskip("onnxruntime", reason="onnxruntime runs the graphs before and after")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from ig3d.convert.onnx_passes import (expand_prelu, fuse_layer_norm, merge_mixed_depthwise,  # noqa: E402
                                      spatial_means_as_conv)

RNG = np.random.default_rng(7)


def _model(nodes, x_shape, inits=(), out_rank=4):
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch"] + x_shape)],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * out_rank)],
                          initializer=[numpy_helper.from_array(np.asarray(v, np.float32), k) for k, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _run(model, x):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _ops(model):
    return [n.op_type for n in model.graph.node]


def _check(model, rewrite, x_shape, batch=2, tol=1e-5):
    x = RNG.standard_normal([batch] + x_shape).astype(np.float32)
    before = _run(model, x)
    after_model = rewrite(onnx.load_from_string(model.SerializeToString()))
    onnx.checker.check_model(after_model)
    after = _run(after_model, x)
    assert after.shape == before.shape
    np.testing.assert_allclose(after, before, rtol=0, atol=tol * max(1.0, float(np.abs(before).max())))
    return after_model


@pytest.mark.parametrize("hi", [1.0, 1.5])
def test_expand_prelu(hi):
    # slopes up to 1: Relu(Mul(x, 1 - a)) + a x; any slope above 1: Mul(Relu(x), 1 - a) + a x
    slope = RNG.uniform(-0.5, hi, (6, 1, 1))
    slope[0] = hi
    m = _model([helper.make_node("Conv", ["x", "w"], ["c"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
                helper.make_node("PRelu", ["c", "slope"], ["y"])], [4, 9, 9],
               [("w", RNG.standard_normal((6, 4, 3, 3))), ("slope", slope)])
    out = _check(m, expand_prelu, [4, 9, 9], tol=1e-6)
    ops = _ops(out)
    assert "PRelu" not in ops and ops.count("Relu") == 1
    relu_first = ops.index("Relu") < ops.index("Mul")
    assert relu_first == (hi > 1)


def _tflite_layer_norm(x="x", y="y", *, axis=3, gamma_shape=(1, 1, 1, 16), eps=1.013279e-06):
    """A layer norm spelled out as TFLite's converter writes it (MediaPipe's blendshape model):
    mean, squared difference, mean, + eps, sqrt, reciprocal, * gamma, x * g + (-mean) * g."""
    nodes = [
        helper.make_node("ReduceMean", [x], ["mean"], axes=[axis], keepdims=1),
        helper.make_node("Neg", ["mean"], ["neg"]),
        helper.make_node("Sub", [x, "mean"], ["d"]),
        helper.make_node("Mul", ["d", "d"], ["sq"]),
        helper.make_node("ReduceMean", ["sq"], ["var"], axes=[axis], keepdims=1),
        helper.make_node("Add", ["var", "eps"], ["ve"]),
        helper.make_node("Sqrt", ["ve"], ["sd"]),
        helper.make_node("Reciprocal", ["sd"], ["rs"]),
        helper.make_node("Mul", ["rs", "gamma"], ["g"]),
        helper.make_node("Mul", [x, "g"], ["xg"]),
        helper.make_node("Mul", ["neg", "g"], ["ng"]),
        helper.make_node("Add", ["xg", "ng"], [y]),
    ]
    inits = [("eps", np.array([eps])), ("gamma", RNG.uniform(0.5, 2.0, gamma_shape))]
    return nodes, inits


@pytest.mark.parametrize("axis", [3, -1])
def test_fuse_layer_norm(axis):
    nodes, inits = _tflite_layer_norm(axis=axis)
    m = _model(nodes, [1, 7, 16], inits)
    out = _check(m, fuse_layer_norm, [1, 7, 16], tol=1e-5)
    assert _ops(out) == ["LayerNormalization"]
    assert {t.name for t in out.graph.initializer}.isdisjoint({"eps", "gamma"})  # unused ones removed


@pytest.mark.parametrize("odd", ["leak", "gamma_on_other_axis", "not_last_axis", "rank_5"])
def test_fuse_layer_norm_leaves_lookalikes(odd):
    if odd == "leak":  # the variance is also a graph output
        nodes, inits = _tflite_layer_norm()
        m = _model(nodes, [1, 7, 16], inits)
        m.graph.output.append(helper.make_tensor_value_info("var", TensorProto.FLOAT, None))
    elif odd == "rank_5":  # axis 3 of a rank-5 input is not its last axis
        nodes, inits = _tflite_layer_norm(gamma_shape=(1, 1, 1, 7, 1))
        m = _model(nodes, [1, 2, 7, 16], inits, out_rank=5)
    elif odd == "gamma_on_other_axis":  # gamma varies over the rows: not a LayerNormalization scale
        nodes, inits = _tflite_layer_norm(gamma_shape=(1, 1, 7, 1))
        m = _model(nodes, [1, 7, 16], inits)
    else:  # normalised over axis 2 of a rank-4 tensor: LayerNormalization's axis means "and after"
        nodes, inits = _tflite_layer_norm(axis=2, gamma_shape=(1, 1, 7, 1))
        m = _model(nodes, [1, 7, 16], inits)
    before = _ops(m)
    out = fuse_layer_norm(onnx.load_from_string(m.SerializeToString()))
    assert _ops(out) == before


def test_fuse_layer_norm_on_the_blendshape_model():
    """The bundled blendshape model (built with this pass) has its eight layer norms fused and none
    of the spelled-out ones left."""
    from ig3d.pipelines.default import asset_path

    ops = _ops(onnx.load(str(asset_path("face_blendshapes.onnx"))))
    assert ops.count("LayerNormalization") == 8 and "Reciprocal" not in ops


def _mixed(kernels, splits, stride=1, bias_on=None, dilation_on=None):
    """x [B,sum(splits),12,12] -> Split -> one depthwise Conv per part -> Concat."""
    split = helper.make_node("Split", ["x", "parts"], [f"p{i}" for i in range(len(splits))], axis=1)
    nodes, inits = [split], []
    for i, (k, c) in enumerate(zip(kernels, splits)):
        ins = [f"p{i}", f"w{i}"] + ([f"b{i}"] if i == bias_on else [])
        dil = 2 if i == dilation_on else 1
        nodes.append(helper.make_node("Conv", ins, [f"c{i}"], group=c, kernel_shape=[k, k],
                                      pads=[dil * (k // 2)] * 4, strides=[stride, stride], dilations=[dil, dil]))
        inits.append((f"w{i}", RNG.standard_normal((c, 1, k, k))))
        if i == bias_on:
            inits.append((f"b{i}", RNG.standard_normal(c)))
    nodes.append(helper.make_node("Concat", [f"c{i}" for i in range(len(splits))], ["y"], axis=1))
    m = _model(nodes, [sum(splits), 12, 12], inits)
    m.graph.initializer.append(numpy_helper.from_array(np.asarray(splits, np.int64), "parts"))
    return m


@pytest.mark.parametrize("kernels,splits,stride", [((3, 5, 7), (8, 4, 4), 1), ((3, 5, 7, 9), (4, 4, 4, 4), 2),
                                                   ((3, 5), (12, 4), 1), ((5, 3), (4, 12), 2)])
def test_merge_mixed_depthwise(kernels, splits, stride):
    m = _mixed(kernels, splits, stride)
    out = _check(m, merge_mixed_depthwise, [sum(splits), 12, 12])
    assert _ops(out) == ["Conv"]
    conv = out.graph.node[0]
    attrs = {a.name: helper.get_attribute_value(a) for a in conv.attribute}
    k = max(kernels)
    assert attrs["kernel_shape"] == [k, k] and attrs["group"] == sum(splits) and attrs["strides"] == [stride] * 2
    # the split sizes and the per-part kernels are gone; only the merged kernel is left
    assert [t.name for t in out.graph.initializer] == [conv.input[1]]


@pytest.mark.parametrize("odd", ["bias", "dilation"])
def test_merge_mixed_depthwise_leaves_lookalikes(odd):
    m = _mixed((3, 5), (8, 8), bias_on=0 if odd == "bias" else None, dilation_on=1 if odd == "dilation" else None)
    out = _check(m, merge_mixed_depthwise, [16, 12, 12])
    assert _ops(out) == _ops(m)


@pytest.mark.parametrize("axes", [[2], [3], [-1]])
def test_spatial_means_as_conv(axes):
    m = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=1)], [5, 7, 11])
    out = _check(m, spatial_means_as_conv, [5, 7, 11])
    assert _ops(out) == ["Conv"]


@pytest.mark.parametrize("axes,keepdims", [([2, 3], 1), ([1], 1), ([3], 0)])
def test_spatial_means_as_conv_leaves_others(axes, keepdims):
    m = _model([helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=keepdims)], [5, 7, 11],
               out_rank=4 if keepdims else 3)
    out = _check(m, spatial_means_as_conv, [5, 7, 11])
    assert _ops(out) == ["ReduceMean"]


def test_spatial_means_needs_known_sizes():
    g = helper.make_graph([helper.make_node("ReduceMean", ["x"], ["y"], axes=[3], keepdims=1)], "g",
                          [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["b", 5, 7, "w"])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None] * 4)])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    assert _ops(spatial_means_as_conv(m)) == ["ReduceMean"]
