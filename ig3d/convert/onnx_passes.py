"""Small rewrites of exported ONNX graphs that make ONNX Runtime's CPU path faster, exactly."""

from __future__ import annotations

import numpy as np

__all__ = ["expand_prelu", "merge_mixed_depthwise", "spatial_means_as_conv"]


def expand_prelu(model):
    """Rewrite every ``PRelu(x, slope)`` whose slope is an initializer as
    ``Add(Mul(Relu(x), 1 - slope), Mul(x, slope))``, or, when every slope is at most 1, as
    ``Add(Relu(Mul(x, 1 - slope)), Mul(x, slope))`` (the same numbers: a non-negative factor
    commutes with Relu), which ONNX Runtime runs as a 1x1 depthwise conv with the Relu fused in,
    one pass over ``x`` fewer (DDAMFN++: 5-8 %).

    Slopes that are initializers (possibly behind Identity nodes) are rewritten; others are kept.
    Why: ONNX Runtime's PRelu kernel is a generic broadcast and is not layout-aware, so around
    every convolution it forces NCHWc reorders; Relu/Mul/Add run in the blocked layout (MediaPipe's
    landmark model: 22 -> 10 ms). Equal to PRelu up to float32 rounding. Returns the model
    (modified in place).
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    # torch's exporter often routes an initializer through Identity nodes: see through them
    alias = {n.output[0]: n.input[0] for n in g.node if n.op_type == "Identity"}

    def source(name):
        while name in alias:
            name = alias[name]
        return name

    nodes = []
    n_new = 0
    for node in g.node:
        if node.op_type != "PRelu" or source(node.input[1]) not in inits:
            nodes.append(node)
            continue
        x, slope_name = node.input[0], source(node.input[1])
        y = node.output[0]
        slope = numpy_helper.to_array(inits[slope_name]).astype(np.float32)
        one_minus = f"{slope_name}__one_minus_{n_new}"
        g.initializer.append(numpy_helper.from_array((1.0 - slope.astype(np.float64)).astype(np.float32), one_minus))
        base = f"{node.name or y}__prelu{n_new}"
        if (slope <= 1).all():  # Relu(Mul(x, 1 - slope)): the same numbers, one pass fewer in ORT
            pos = [helper.make_node("Mul", [x, one_minus], [base + "_scaled"], name=base + "_scaled"),
                   helper.make_node("Relu", [base + "_scaled"], [base + "_pos"], name=base + "_pos")]
        else:
            pos = [helper.make_node("Relu", [x], [base + "_relu"], name=base + "_relu"),
                   helper.make_node("Mul", [base + "_relu", one_minus], [base + "_pos"], name=base + "_pos")]
        nodes += pos + [
            helper.make_node("Mul", [x, slope_name], [base + "_lin"], name=base + "_lin"),
            helper.make_node("Add", [base + "_pos", base + "_lin"], [y], name=base + "_add"),
        ]
        n_new += 1
    del g.node[:]
    g.node.extend(nodes)
    return model


def merge_mixed_depthwise(model):
    """Rewrite every mixed depthwise convolution, ``Split`` (channels) -> one depthwise ``Conv`` per
    part, kernel k_i, stride s, padding k_i // 2 -> ``Concat`` (channels), as one depthwise ``Conv``
    with the largest kernel K: each part's kernel centred in a K x K block of zeros, padding K // 2.

    The outputs are the same: an output pixel sees the same input pixels times the same weights,
    plus taps whose weight is zero. Why: ONNX Runtime runs the split form as separate small convs,
    each leaving and re-entering its blocked (NCHWc) layout (DDAMFN++'s 34 mixed blocks: about
    15-20 % of its time on one thread). Only weights that are initializers, without bias, square
    odd kernels, no dilation and outputs used only by the Concat are merged; anything else is
    left alone. Returns the model (modified in place; initializers no node reads any more are
    removed).
    """
    from onnx import helper, numpy_helper

    g = model.graph
    inits = {t.name: t for t in g.initializer}
    prod = {o: n for n in g.node for o in n.output}
    readers = {}
    for n in g.node:
        for i in n.input:
            readers[i] = readers.get(i, 0) + 1

    def attrs(n):
        return {a.name: helper.get_attribute_value(a) for a in n.attribute}

    replace, drop = {}, set()
    for cat in g.node:
        if cat.op_type != "Concat" or attrs(cat).get("axis") != 1:
            continue
        convs = [prod.get(i) for i in cat.input]
        if not all(c is not None and c.op_type == "Conv" and len(c.input) == 2 and c.input[1] in inits
                   and readers.get(c.output[0]) == 1 for c in convs):
            continue
        split = prod.get(convs[0].input[0])
        if split is None or split.op_type != "Split" or attrs(split).get("axis", 0) != 1 \
                or list(split.output) != [c.input[0] for c in convs] \
                or any(readers.get(o) != 1 for o in split.output):
            continue
        ws = [numpy_helper.to_array(inits[c.input[1]]) for c in convs]
        ats = [attrs(c) for c in convs]
        big = max(w.shape[2] for w in ws)
        if not all(w.ndim == 4 and w.shape[1] == 1 and a.get("group") == w.shape[0]
                   and w.shape[2] == w.shape[3] and w.shape[2] % 2 == 1
                   and list(a.get("pads", [0] * 4)) == [w.shape[2] // 2] * 4
                   and list(a.get("dilations", [1, 1])) == [1, 1]
                   and list(a.get("strides", [1, 1])) == list(ats[0].get("strides", [1, 1]))
                   for w, a in zip(ws, ats)):
            continue
        merged = np.zeros((sum(w.shape[0] for w in ws), 1, big, big), np.float32)
        row = 0
        for w in ws:
            d = (big - w.shape[2]) // 2
            merged[row:row + w.shape[0], :, d:d + w.shape[2], d:d + w.shape[2]] = w
            row += w.shape[0]
        name = f"{cat.output[0]}__merged_weight"
        g.initializer.append(numpy_helper.from_array(merged, name))
        replace[id(cat)] = helper.make_node(
            "Conv", [split.input[0], name], [cat.output[0]], name=f"{cat.name or cat.output[0]}__merged",
            group=merged.shape[0], kernel_shape=[big, big], pads=[big // 2] * 4,
            strides=list(ats[0].get("strides", [1, 1])), dilations=[1, 1])
        drop.update([id(split)] + [id(c) for c in convs])
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in drop]
    del g.node[:]
    g.node.extend(nodes)
    read = {i for n in g.node for i in n.input} | {o.name for o in g.output}
    kept = [t for t in g.initializer if t.name in read]
    del g.initializer[:]
    g.initializer.extend(kept)
    return model


def spatial_means_as_conv(model):
    """Rewrite ``ReduceMean(x, axes=[2] or [3], keepdims=1)`` of a 4-D ``x`` [B,C,H,W] whose C and
    reduced size n are known from shape inference as a depthwise ``Conv`` with an n x 1 (or 1 x n)
    kernel of 1/n, no padding: the same mean, as a sum of x/n products instead of a sum divided by
    n (float rounding apart).

    Why: ONNX Runtime runs the convolution in its blocked layout, next to the convolution that
    produced ``x``, and 1.5-6x faster than ReduceMean at DDAMFN's coordinate-attention shapes
    (measured, one thread). Returns the model (modified in place).
    """
    from onnx import helper, numpy_helper, shape_inference

    g = model.graph
    dims = {}
    inferred = shape_inference.infer_shapes(model).graph
    for vi in list(inferred.value_info) + list(inferred.input):
        t = vi.type.tensor_type
        if t.HasField("shape"):
            dims[vi.name] = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    consts = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    for n in g.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)

    nodes = []
    for node in g.node:
        a = {at.name: helper.get_attribute_value(at) for at in node.attribute}
        axes = a.get("axes")
        if axes is None and opset >= 18 and len(node.input) > 1:
            axes = consts.get(node.input[1])
        shape = dims.get(node.input[0]) if node.op_type == "ReduceMean" else None
        axes = None if axes is None else [int(v) % 4 for v in np.atleast_1d(axes)]
        if (shape is None or len(shape) != 4 or axes not in ([2], [3]) or a.get("keepdims", 1) != 1
                or shape[1] is None or shape[axes[0]] is None):
            nodes.append(node)
            continue
        c, n = shape[1], shape[axes[0]]
        kernel = [n, 1] if axes == [2] else [1, n]
        name = f"{node.output[0]}__mean_kernel"
        g.initializer.append(numpy_helper.from_array(np.full([c, 1] + kernel, 1.0 / n, np.float32), name))
        nodes.append(helper.make_node("Conv", [node.input[0], name], list(node.output),
                                      name=f"{node.name or node.output[0]}__conv", group=c, kernel_shape=kernel))
    del g.node[:]
    g.node.extend(nodes)
    return model
