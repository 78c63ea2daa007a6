"""Small rewrites of exported ONNX graphs that make ONNX Runtime's CPU path faster, exactly."""

from __future__ import annotations

import numpy as np

__all__ = ["expand_prelu", "fuse_layer_norm", "merge_mixed_depthwise", "spatial_means_as_conv"]


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


def fuse_layer_norm(model):
    """Rewrite every layer normalisation that TFLite spells out in primitive ops (MediaPipe's
    blendshape model, an MLP-Mixer, has eight)::

        mean = ReduceMean(x, axes=[a]); d = Sub(x, mean); var = ReduceMean(Mul(d, d), axes=[a])
        g = Mul(Reciprocal(Sqrt(Add(var, eps))), gamma)
        y = Add(Mul(x, g), Mul(Neg(mean), g))

    as one ``LayerNormalization(x, gamma, 0, axis=a, epsilon=eps)`` (opset 17), where ``a`` is
    the last axis, ``eps`` a scalar initializer and ``gamma`` an initializer that varies along
    that axis only. The same function, float32 rounding apart (measured on the blendshape
    model: 1.3e-6). Why: eleven small ops per normalisation become one kernel (the blendshape
    model on one core: 0.95 -> 0.66 ms). Patterns whose intermediate values are used elsewhere,
    or that differ in any of these points, are left alone. Returns the model (modified in
    place; initializers no node reads any more are removed)."""
    from onnx import helper, numpy_helper, shape_inference

    g = model.graph
    if not any(o.domain in ("", "ai.onnx") and o.version >= 17 for o in model.opset_import):
        return model
    inits = {t.name: t for t in g.initializer}
    try:  # the rank of every value shape inference can tell (the normalised axis must be the last)
        inferred = shape_inference.infer_shapes(model).graph
        rank = {v.name: len(v.type.tensor_type.shape.dim) for v in list(inferred.value_info) + list(inferred.input)
                if v.type.tensor_type.HasField("shape")}
    except Exception:  # noqa: BLE001 - without shapes only axis -1 is known to be the last
        rank = {}
    prod = {o: n for n in g.node for o in n.output}
    users = {}
    for n in g.node:
        for i in dict.fromkeys(n.input):  # a node reading a value twice (Mul(d, d)) is one user
            users.setdefault(i, []).append(n)
    outputs = {o.name for o in g.output}

    def only(name, n_users):
        """``name`` is read by exactly this many nodes and is no graph output."""
        return name not in outputs and len(users.get(name, [])) == n_users

    def const(name):
        return numpy_helper.to_array(inits[name]) if name in inits else None

    def axes_of(node):
        a = [list(x.ints) for x in node.attribute if x.name == "axes"]
        keep = [x.i for x in node.attribute if x.name == "keepdims"]
        return (a[0] if a and len(node.input) == 1 else None), (keep[0] if keep else 1)

    def other(node, name):
        """The input of a two-input node that is not ``name`` (None when both or neither are)."""
        ins = list(node.input)
        return ins[1 - ins.index(name)] if len(ins) == 2 and ins.count(name) == 1 else None

    replace, dead = {}, set()
    for rec in g.node:
        if rec.op_type != "Reciprocal":
            continue
        try:
            sqrt = prod[rec.input[0]]
            add_eps = prod[sqrt.input[0]]
            var_name = next(i for i in add_eps.input if i in prod)
            eps = const(other(add_eps, var_name))
            var = prod[var_name]
            sq = prod[var.input[0]]
            d_name = sq.input[0]
            sub = prod[d_name]
            x, mean_name = sub.input
            mean = prod[mean_name]
        except (KeyError, StopIteration, ValueError, IndexError):
            continue
        if (sqrt.op_type, add_eps.op_type, var.op_type, sq.op_type, sub.op_type, mean.op_type) != (
                "Sqrt", "Add", "ReduceMean", "Mul", "Sub", "ReduceMean") or list(sq.input) != [d_name, d_name]:
            continue
        if mean.input[0] != x or eps is None or eps.size != 1:
            continue
        (ax_m, keep_m), (ax_v, keep_v) = axes_of(mean), axes_of(var)
        if ax_m is None or ax_m != ax_v or len(ax_m) != 1 or not keep_m or not keep_v:
            continue
        scale = users.get(rec.output[0], [])
        if len(scale) != 1 or scale[0].op_type != "Mul":
            continue
        scale = scale[0]
        gamma_name = other(scale, rec.output[0])
        gamma = const(gamma_name) if gamma_name else None
        negs = [u for u in users.get(mean_name, []) if u.op_type == "Neg"]
        muls = users.get(scale.output[0], [])
        if gamma is None or len(negs) != 1 or len(muls) != 2 or any(m.op_type != "Mul" for m in muls):
            continue
        neg = negs[0]
        mx = [m for m in muls if other(m, scale.output[0]) == x]
        mn = [m for m in muls if other(m, scale.output[0]) == neg.output[0]]
        if len(mx) != 1 or len(mn) != 1:
            continue
        fin = users.get(mx[0].output[0], [])
        if len(fin) != 1 or fin[0].op_type != "Add" or sorted(fin[0].input) != sorted(
                [mx[0].output[0], mn[0].output[0]]):
            continue
        fin = fin[0]
        # every intermediate value is used only inside the pattern
        if not (only(mean_name, 2) and only(d_name, 1) and only(sq.output[0], 1) and only(var_name, 1)
                and only(add_eps.output[0], 1) and only(sqrt.output[0], 1) and only(rec.output[0], 1)
                and only(scale.output[0], 2) and only(neg.output[0], 1) and only(mx[0].output[0], 1)
                and only(mn[0].output[0], 1)):
            continue
        # the normalised axis is the last one, and gamma varies along it only
        axis = ax_m[0]
        if axis != -1 and axis != rank.get(x, 0) - 1:
            continue
        if gamma.ndim and gamma.size != gamma.shape[-1]:
            continue
        if gamma.size == 1:
            continue  # the width of the axis is not known here: leave it
        k = len(replace)
        base = f"{fin.name or fin.output[0]}__layernorm{k}"
        g.initializer.extend([numpy_helper.from_array(gamma.reshape(-1).astype(np.float32), base + "_scale"),
                              numpy_helper.from_array(np.zeros(gamma.size, np.float32), base + "_bias")])
        replace[id(fin)] = helper.make_node("LayerNormalization", [x, base + "_scale", base + "_bias"],
                                            [fin.output[0]], name=base, axis=int(axis),
                                            epsilon=float(eps.reshape(-1)[0]))
        dead.update(id(n) for n in (mean, sub, sq, var, add_eps, sqrt, rec, scale, neg, mx[0], mn[0]))
    if not replace:
        return model
    nodes = [replace.get(id(n), n) for n in g.node if id(n) not in dead]
    del g.node[:]
    g.node.extend(nodes)
    used = {i for n in g.node for i in n.input}
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep)
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
