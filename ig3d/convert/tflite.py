"""TFLite -> ONNX converter for MediaPipe's face models (written for ig3d).

Why our own converter
---------------------
ig3d runs every face of a frame through one batched ONNX Runtime / TensorRT
call.  The upstream MediaPipe models are TFLite flatbuffers with the batch
size baked in (``RESHAPE`` constants such as ``[1, 896, 16]``), float16
weights behind ``DEQUANTIZE`` ops, sparse weights behind ``DENSIFY`` ops and
NHWC layouts.  The public converters either fail on these graphs or emit
NCHW inputs and fixed batch sizes (see docs/REFERENCE.md section 6), so this
module converts exactly the op set of the four graphs we ship, and refuses
anything else with a ``ValueError`` instead of guessing.

What it does
------------
* Reads the ``.tflite`` flatbuffer with a small hand-written reader on top of
  ``flatbuffers.table.Table`` (field slots follow TFLite's ``schema.fbs``; no
  dependency on tensorflow, tflite, tflite2onnx or mediapipe).
* Folds ``DEQUANTIZE`` (float16 -> float32) and ``DENSIFY`` of constants at
  conversion time, so the ONNX initializers are float32 and bit-identical to
  the values LiteRT computes at run time.
* Runs convolutions, pools, pads, resizes and depth-to-space in NCHW.  The
  layout is tracked per tensor: a 4-D activation is kept NCHW while it flows
  through layout-agnostic ops (element-wise ops, PRELU, concatenation,
  reductions) and only transposed back to NHWC where the TFLite semantics
  need it (``RESHAPE``, ``STRIDED_SLICE``, graph outputs).  Weights are
  transposed once, at conversion time.
* Keeps the model input NHWC float32 ``[N, H, W, C]`` exactly like upstream
  (one ``Transpose`` at the input), so the preprocessing written for the
  upstream runtime is shared.
* Makes the batch dimension dynamic: TFLite axis 0 of every activation is
  the batch axis (ops that would reduce, slice, pad, concatenate or transpose
  across it are rejected); ``RESHAPE``s whose constant shape embeds batch 1
  copy the batch from their input instead (ONNX ``0``), batch-1 constants
  concatenated to activations are ``Expand``-ed to the batch, and a ``RESHAPE`` or
  ``STRIDED_SLICE`` that *drops* the batch-1 axis (the blendshape model's
  ``[1, 1, 52] -> [52]`` head) keeps a leading batch axis in ONNX, so the
  output becomes ``[N, 52]``.

Public API: :func:`convert_tflite`, :func:`read_tflite`,
:func:`read_input_normalization`, :func:`append_sigmoid_output`,
:func:`extract_task_member` / :func:`read_task_members`.

Upstream value ranges (from each file's own TFLITE_METADATA
NormalizationOptions, see :func:`read_input_normalization`): the face
detectors take RGB in ``[-1, 1]`` (``(x - 127.5) / 127.5``), the landmark
model RGB in ``[0, 1]`` (``x / 255``).  The blendshape model takes the 146
landmark ``(x, y)`` pairs, in pixels, selected by ``kLandmarksSubsetIdxs`` of
google-ai-edge/mediapipe:
mediapipe/tasks/cc/vision/face_landmarker/face_blendshapes_graph.cc; that
list, the 52 output names and the detector anchor/decoding options are
recorded, with citations, in :mod:`ig3d.faces.mediapipe_constants`.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from .._optional import require

flatbuffers = require("flatbuffers", "convert", "the TFLite converter")
onnx = require("onnx", "convert", "the TFLite converter")

from flatbuffers.table import Table  # noqa: E402  (after the checks above)
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from .onnx_passes import expand_prelu, fuse_layer_norm  # noqa: E402

__all__ = [
    "OPSET",
    "convert_tflite",
    "read_tflite",
    "read_task_members",
    "extract_task_member",
    "read_input_normalization",
    "append_sigmoid_output",
    "TFLiteModel",
]

#: ONNX opset of the emitted models.  17 is supported by every ONNX Runtime
#: >= 1.12 and TensorRT >= 8.6, and has every op we need with attribute
#: (not input) forms where that keeps graphs simple.
OPSET = 17

# ---------------------------------------------------------------------------
# TFLite schema facts (tensorflow/lite/schema/schema.fbs).  Only the enum
# values and field slots we read are listed.  A table field's vtable slot is
# its declaration index; a union occupies two slots (type, then value).
# ---------------------------------------------------------------------------

#: BuiltinOperator codes of the ops this converter understands (plus a few
#: common ones so error messages can name them).
BUILTIN_OPS: Dict[int, str] = {
    0: "ADD",
    1: "AVERAGE_POOL_2D",
    2: "CONCATENATION",
    3: "CONV_2D",
    4: "DEPTHWISE_CONV_2D",
    5: "DEPTH_TO_SPACE",
    6: "DEQUANTIZE",
    9: "FULLY_CONNECTED",
    14: "LOGISTIC",
    17: "MAX_POOL_2D",
    18: "MUL",
    19: "RELU",
    21: "RELU6",
    22: "RESHAPE",
    23: "RESIZE_BILINEAR",
    25: "SOFTMAX",
    28: "TANH",
    32: "CUSTOM",
    34: "PAD",
    39: "TRANSPOSE",
    40: "MEAN",
    41: "SUB",
    42: "DIV",
    43: "SQUEEZE",
    45: "STRIDED_SLICE",
    54: "PRELU",
    59: "NEG",
    74: "SUM",
    75: "SQRT",
    76: "RSQRT",
    99: "SQUARED_DIFFERENCE",
    124: "DENSIFY",
}

# TensorType enum -> numpy dtype (only the types a float model may carry).
_TENSOR_TYPES: Dict[int, np.dtype] = {
    0: np.dtype("<f4"),  # FLOAT32
    1: np.dtype("<f2"),  # FLOAT16
    2: np.dtype("<i4"),  # INT32
    3: np.dtype("u1"),  # UINT8
    4: np.dtype("<i8"),  # INT64
    6: np.dtype("?"),  # BOOL
    7: np.dtype("<i2"),  # INT16
    9: np.dtype("i1"),  # INT8
    10: np.dtype("<f8"),  # FLOAT64
}
_TENSOR_TYPE_NAMES = {0: "FLOAT32", 1: "FLOAT16", 2: "INT32", 3: "UINT8",
                      4: "INT64", 6: "BOOL", 7: "INT16", 9: "INT8",
                      10: "FLOAT64"}

# Field kinds for the options decoder: 'b' int8, 'B' bool, 'i' int32,
# 'f' float32, 'vi' vector of int32.
# BuiltinOptions union index -> (table name, [(field, slot, kind, default)]).
_OPTIONS: Dict[int, Tuple[str, List[Tuple[str, int, str, object]]]] = {
    1: ("Conv2DOptions", [
        ("padding", 0, "b", 0), ("stride_w", 1, "i", 0), ("stride_h", 2, "i", 0),
        ("fused_activation_function", 3, "b", 0),
        ("dilation_w_factor", 4, "i", 1), ("dilation_h_factor", 5, "i", 1)]),
    2: ("DepthwiseConv2DOptions", [
        ("padding", 0, "b", 0), ("stride_w", 1, "i", 0), ("stride_h", 2, "i", 0),
        ("depth_multiplier", 3, "i", 0), ("fused_activation_function", 4, "b", 0),
        ("dilation_w_factor", 5, "i", 1), ("dilation_h_factor", 6, "i", 1)]),
    5: ("Pool2DOptions", [
        ("padding", 0, "b", 0), ("stride_w", 1, "i", 0), ("stride_h", 2, "i", 0),
        ("filter_width", 3, "i", 0), ("filter_height", 4, "i", 0),
        ("fused_activation_function", 5, "b", 0)]),
    10: ("ConcatenationOptions", [
        ("axis", 0, "i", 0), ("fused_activation_function", 1, "b", 0)]),
    11: ("AddOptions", [("fused_activation_function", 0, "b", 0)]),
    15: ("ResizeBilinearOptions", [
        ("align_corners", 2, "B", False), ("half_pixel_centers", 3, "B", False)]),
    17: ("ReshapeOptions", [("new_shape", 0, "vi", None)]),
    21: ("MulOptions", [("fused_activation_function", 0, "b", 0)]),
    22: ("PadOptions", []),
    26: ("TransposeOptions", []),
    27: ("ReducerOptions", [("keep_dims", 0, "B", False)]),
    28: ("SubOptions", [("fused_activation_function", 0, "b", 0)]),
    29: ("DivOptions", [("fused_activation_function", 0, "b", 0)]),
    32: ("StridedSliceOptions", [
        ("begin_mask", 0, "i", 0), ("end_mask", 1, "i", 0),
        ("ellipsis_mask", 2, "i", 0), ("new_axis_mask", 3, "i", 0),
        ("shrink_axis_mask", 4, "i", 0), ("offset", 5, "B", False)]),
    38: ("DequantizeOptions", []),
    42: ("NegOptions", []),
    76: ("SquaredDifferenceOptions", []),
    94: ("DepthToSpaceOptions", [("block_size", 0, "i", 0)]),
    99: ("DensifyOptions", []),
}

_ACTIVATIONS = {0: "NONE", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6",
                4: "TANH", 5: "SIGN_BIT"}
_PADDING = {0: "SAME", 1: "VALID"}


# ---------------------------------------------------------------------------
# Flatbuffer reader
# ---------------------------------------------------------------------------

class _Tbl:
    """Thin accessor over ``flatbuffers.table.Table`` addressing fields by slot."""

    __slots__ = ("_t",)

    def __init__(self, buf: bytearray, pos: int):
        self._t = Table(buf, pos)

    def _off(self, slot: int) -> int:
        # Vtable entries start after the vtable's two uint16 size fields.
        return self._t.Offset(4 + 2 * slot)

    def has(self, slot: int) -> bool:
        return self._off(slot) != 0

    def scalar(self, slot: int, kind: str, default):
        o = self._off(slot)
        if not o:
            return default
        flags = {"b": flatbuffers.number_types.Int8Flags,
                 "B": flatbuffers.number_types.BoolFlags,
                 "u8": flatbuffers.number_types.Uint8Flags,
                 "i": flatbuffers.number_types.Int32Flags,
                 "u32": flatbuffers.number_types.Uint32Flags,
                 "u64": flatbuffers.number_types.Uint64Flags,
                 "f": flatbuffers.number_types.Float32Flags}[kind]
        return self._t.Get(flags, self._t.Pos + o)

    def table(self, slot: int) -> Optional["_Tbl"]:
        o = self._off(slot)
        if not o:
            return None
        return _Tbl(self._t.Bytes, self._t.Indirect(self._t.Pos + o))

    def string(self, slot: int) -> Optional[str]:
        o = self._off(slot)
        if not o:
            return None
        return self._t.String(self._t.Pos + o).decode("utf-8", "replace")

    def tables(self, slot: int) -> List["_Tbl"]:
        o = self._off(slot)
        if not o:
            return []
        n = self._t.VectorLen(o)
        start = self._t.Vector(o)
        return [_Tbl(self._t.Bytes, self._t.Indirect(start + 4 * i))
                for i in range(n)]

    def array(self, slot: int, dtype) -> Optional[np.ndarray]:
        """A vector of scalars as a (copied) numpy array; ``None`` if absent."""
        o = self._off(slot)
        if not o:
            return None
        dtype = np.dtype(dtype)
        n = self._t.VectorLen(o)
        start = self._t.Vector(o)
        return np.frombuffer(self._t.Bytes, dtype=dtype, count=n,
                             offset=start).copy()


@dataclass
class TFLiteTensor:
    """One tensor of a TFLite subgraph.

    ``data`` holds the decoded constant (densified if the file stores it
    sparse) in the tensor's stored dtype, or ``None`` for activations.
    """

    index: int
    name: str
    shape: Tuple[int, ...]
    shape_signature: Optional[Tuple[int, ...]]
    type: int
    data: Optional[np.ndarray] = None
    quantized: bool = False

    @property
    def type_name(self) -> str:
        return _TENSOR_TYPE_NAMES.get(self.type, f"TensorType({self.type})")


@dataclass
class TFLiteOperator:
    """One operator: its builtin name, tensor indices and decoded options."""

    index: int
    name: str
    inputs: List[int]
    outputs: List[int]
    options: Dict[str, object] = field(default_factory=dict)
    options_type: int = 0


@dataclass
class TFLiteSubgraph:
    tensors: List[TFLiteTensor]
    inputs: List[int]
    outputs: List[int]
    operators: List[TFLiteOperator]
    name: str = ""


@dataclass
class TFLiteModel:
    version: int
    description: str
    subgraphs: List[TFLiteSubgraph]


def _densify(tensor: _Tbl, shape: Sequence[int], raw: np.ndarray) -> np.ndarray:
    """Expand a TFLite sparse constant (``SparsityParameters``) to dense.

    Follows the storage format documented in schema.fbs: the tensor is
    traversed in ``traversal_order`` over the original dims followed by the
    block dims (``block_map``); each level is DENSE (``dense_size`` entries)
    or SPARSE_CSR (``array_segments`` / ``array_indices``).  Values are
    consumed in that traversal order; missing entries are zero.
    """
    sp = tensor.table(6)
    traversal = [int(v) for v in sp.array(0, "<i4")]
    block_map = [int(v) for v in (sp.array(1, "<i4") if sp.has(1) else [])]
    dims = sp.tables(2)
    rank = len(shape)
    if len(traversal) != rank + len(block_map) or len(dims) != len(traversal):
        raise ValueError("malformed sparsity parameters")
    if sorted(traversal[:rank]) != list(range(rank)):
        # LiteRT's FormatConverter makes the same assumption: the original
        # dims are traversed before the block dims.
        raise ValueError("unsupported sparse traversal order %r" % traversal)
    idx_dtypes = {1: "<i4", 2: "<u2", 3: "u1"}  # SparseIndexVector union
    levels = []
    for d in dims:
        fmt = d.scalar(0, "b", 0)
        if fmt == 0:  # DENSE
            levels.append(("dense", d.scalar(1, "i", 0)))
        elif fmt == 1:  # SPARSE_CSR
            seg_t, idx_t = d.scalar(2, "u8", 0), d.scalar(4, "u8", 0)
            if seg_t not in idx_dtypes or idx_t not in idx_dtypes:
                raise ValueError("unsupported sparse index vector type")
            segs = d.table(3).array(0, idx_dtypes[seg_t]).astype(np.int64)
            ids = d.table(5).array(0, idx_dtypes[idx_t]).astype(np.int64)
            levels.append(("csr", segs, ids))
        else:
            raise ValueError(f"unsupported sparse dimension format {fmt}")
    block_sizes = [dims[traversal.index(rank + j)].scalar(1, "i", 0)
                   for j in range(len(block_map))]

    # Enumerate stored values level by level (breadth first): each entry of
    # ``coords`` is the per-level index tuple of one stored path, ``pos`` its
    # position in the level (the CSR "prev_idx").
    coords = np.zeros((1, 0), dtype=np.int64)
    pos = np.zeros(1, dtype=np.int64)
    for lvl in levels:
        if lvl[0] == "dense":
            n = lvl[1]
            coords = np.concatenate(
                [np.repeat(coords, n, axis=0),
                 np.tile(np.arange(n), len(pos))[:, None]], axis=1)
            pos = (np.repeat(pos, n) * n + np.tile(np.arange(n), len(pos)))
        else:
            segs, ids = lvl[1], lvl[2]
            counts = segs[pos + 1] - segs[pos]
            new_pos = np.concatenate(
                [np.arange(segs[p], segs[p + 1]) for p in pos]) if len(pos) else \
                np.zeros(0, np.int64)
            coords = np.concatenate(
                [np.repeat(coords, counts, axis=0), ids[new_pos][:, None]], axis=1)
            pos = new_pos
    if coords.shape[0] != raw.size:
        raise ValueError(f"sparse tensor holds {raw.size} values but its "
                         f"index structure addresses {coords.shape[0]}")
    orig = np.zeros((coords.shape[0], rank), dtype=np.int64)
    for level, dim in enumerate(traversal[:rank]):
        orig[:, dim] = coords[:, level]
    for level in range(rank, len(traversal)):
        j = traversal[level] - rank
        d = block_map[j]
        orig[:, d] = orig[:, d] * block_sizes[j] + coords[:, level]
    dense = np.zeros(shape, dtype=raw.dtype)
    dense[tuple(orig.T)] = raw.reshape(-1)
    return dense


def read_tflite(data: Union[bytes, bytearray, memoryview]) -> TFLiteModel:
    """Parse a ``.tflite`` flatbuffer into plain Python objects."""
    buf = bytearray(data)
    if len(buf) < 8 or bytes(buf[4:8]) != b"TFL3":
        raise ValueError("not a TFLite flatbuffer (missing 'TFL3' identifier)")
    root = _Tbl(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))

    opcodes = []
    for oc in root.tables(1):
        # Codes < 127 live in the deprecated int8 field; newer files put the
        # real code in `builtin_code` (int32) and keep the deprecated one
        # saturated at 127, so the larger of the two is the code.
        code = max(oc.scalar(0, "b", 0), oc.scalar(3, "i", 0))
        if code == 32:
            opcodes.append("CUSTOM:" + (oc.string(1) or "?"))
        else:
            opcodes.append(BUILTIN_OPS.get(code, f"BuiltinOperator({code})"))

    buffers = root.tables(4)
    for b in buffers:
        if b.scalar(1, "u64", 0):
            raise ValueError("TFLite buffers stored outside the flatbuffer "
                             "(offset/size) are not supported")

    subgraphs = []
    for sg in root.tables(2):
        tensors = []
        for i, t in enumerate(sg.tables(0)):
            shape_arr = t.array(0, "<i4")
            shape = tuple(int(v) for v in shape_arr) if shape_arr is not None else ()
            sig = t.array(7, "<i4")
            ttype = t.scalar(1, "b", 0)
            buf_idx = t.scalar(2, "u32", 0)
            quant = t.table(4)
            quantized = quant is not None and (quant.has(2) or quant.has(3))
            data = None
            raw = buffers[buf_idx].array(0, "u1") if buf_idx < len(buffers) else None
            if raw is not None and raw.size:
                if ttype not in _TENSOR_TYPES:
                    raise ValueError(f"tensor {t.string(3)!r}: unsupported "
                                     f"constant type {ttype}")
                arr = raw.view(_TENSOR_TYPES[ttype])
                if t.has(6):
                    data = _densify(t, shape, arr)
                else:
                    data = arr.reshape(shape)
            tensors.append(TFLiteTensor(
                index=i, name=t.string(3) or f"t{i}", shape=shape,
                shape_signature=tuple(int(v) for v in sig) if sig is not None else None,
                type=ttype, data=data, quantized=quantized))
        operators = []
        for i, op in enumerate(sg.tables(3)):
            name = opcodes[op.scalar(0, "u32", 0)]
            opts_type = op.scalar(3, "u8", 0)
            options: Dict[str, object] = {}
            if opts_type:
                if opts_type not in _OPTIONS:
                    raise ValueError(f"op #{i} {name}: unsupported options "
                                     f"table BuiltinOptions({opts_type})")
                tbl = op.table(4)
                for fname, slot, kind, default in _OPTIONS[opts_type][1]:
                    if kind == "vi":
                        v = tbl.array(slot, "<i4")
                        options[fname] = None if v is None else [int(x) for x in v]
                    else:
                        options[fname] = tbl.scalar(slot, kind, default)
            if op.scalar(11, "u8", 0):
                raise ValueError(f"op #{i} {name}: BuiltinOptions2 unsupported")
            operators.append(TFLiteOperator(
                index=i, name=name,
                inputs=[int(v) for v in op.array(1, "<i4")],
                outputs=[int(v) for v in op.array(2, "<i4")],
                options=options, options_type=opts_type))
        subgraphs.append(TFLiteSubgraph(
            tensors=tensors,
            inputs=[int(v) for v in sg.array(1, "<i4")],
            outputs=[int(v) for v in sg.array(2, "<i4")],
            operators=operators, name=sg.string(4) or ""))
    return TFLiteModel(version=root.scalar(0, "u32", 0),
                       description=root.string(3) or "", subgraphs=subgraphs)


def read_input_normalization(data: Union[bytes, bytearray]) -> Optional[Tuple[List[float], List[float]]]:
    """Return ``(mean, std)`` of the first input from the model's TFLite metadata.

    MediaPipe feeds ``(pixel - mean) / std``.  The face detectors carry
    ``mean = std = 127.5`` (input in ``[-1, 1]``), the landmark model
    ``mean = 0, std = 255`` (input in ``[0, 1]``); the blendshape model has
    no metadata (its input is landmark pixel coordinates).  ``None`` when the
    file carries no ``TFLITE_METADATA`` / ``NormalizationOptions``.

    Slots follow tensorflow/lite/experimental/support/metadata_schema.fbs:
    ModelMetadata.subgraph_metadata (3) -> SubGraphMetadata.
    input_tensor_metadata (2) -> TensorMetadata.process_units (4) ->
    ProcessUnit.options (union, type 0 / value 1; NormalizationOptions = 1)
    -> NormalizationOptions.mean (0) / std (1).
    """
    buf = bytearray(data)
    root = _Tbl(buf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, buf, 0))
    buffers = root.tables(4)
    for md in root.tables(6):
        if md.string(0) != "TFLITE_METADATA":
            continue
        raw = buffers[md.scalar(1, "u32", 0)].array(0, "u1")
        mbuf = bytearray(raw.tobytes())
        meta = _Tbl(mbuf, flatbuffers.encode.Get(flatbuffers.packer.uoffset, mbuf, 0))
        for sg in meta.tables(3):
            for tm in sg.tables(2):
                for pu in tm.tables(4):
                    if pu.scalar(0, "u8", 0) == 1:
                        opts = pu.table(1)
                        return ([float(v) for v in opts.array(0, "<f4")],
                                [float(v) for v in opts.array(1, "<f4")])
    return None


# ---------------------------------------------------------------------------
# face_landmarker.task helpers
# ---------------------------------------------------------------------------

#: Members of MediaPipe's ``face_landmarker.task`` bundle (a plain zip).
TASK_MEMBERS = (
    "face_detector.tflite",
    "face_landmarks_detector.tflite",
    "face_blendshapes.tflite",
    "geometry_pipeline_metadata_landmarks.binarypb",
)


def read_task_members(task: Union[str, Path, bytes]) -> Dict[str, bytes]:
    """Return every member of a MediaPipe ``.task`` bundle as ``{name: bytes}``."""
    src = io.BytesIO(task) if isinstance(task, (bytes, bytearray)) else task
    with zipfile.ZipFile(src) as zf:
        return {info.filename: zf.read(info) for info in zf.infolist()
                if not info.is_dir()}


def extract_task_member(task: Union[str, Path, bytes], member: str) -> bytes:
    """Return one member (e.g. ``"face_detector.tflite"``) of a ``.task`` bundle."""
    members = read_task_members(task)
    if member not in members:
        raise KeyError(f"{member!r} not in task bundle; it holds {sorted(members)}")
    return members[member]


# ---------------------------------------------------------------------------
# Converter
# ---------------------------------------------------------------------------

_INT64_MAX = np.iinfo(np.int64).max


@dataclass
class _Val:
    """Where a TFLite activation lives in the ONNX graph.

    ``onnx_value == tflite_value.transpose(perm)``, except that with
    ``extra_batch`` the ONNX value has one more leading axis (the batch)
    that the TFLite graph had squeezed away.  The ONNX batch axis is always
    axis 0 (transposes that move TFLite's axis 0 are rejected).
    """

    name: str
    perm: Tuple[int, ...]
    extra_batch: bool = False


def _identity(rank: int) -> Tuple[int, ...]:
    return tuple(range(rank))


_NCHW = (0, 3, 1, 2)  # onnx = nhwc.transpose(_NCHW)


def _same_pads(size: int, k: int, stride: int, dilation: int) -> Tuple[int, int]:
    """TF 'SAME' padding for one spatial dim: extra pixel goes after (bottom/right)."""
    out = -(-size // stride)
    eff_k = (k - 1) * dilation + 1
    total = max((out - 1) * stride + eff_k - size, 0)
    return total // 2, total - total // 2


class _Converter:
    def __init__(self, model: TFLiteModel, input_name: str):
        if len(model.subgraphs) != 1:
            raise ValueError(f"expected one subgraph, found {len(model.subgraphs)} "
                             "(control flow is not supported)")
        self.sg = model.subgraphs[0]
        self.input_name = input_name
        self.nodes: List[onnx.NodeProto] = []
        self.inits: List[onnx.TensorProto] = []
        self._init_by_key: Dict[Tuple, str] = {}
        self.consts: Dict[int, np.ndarray] = {}  # folded constants by tensor index
        self.vals: Dict[int, _Val] = {}
        self._layout_cache: Dict[Tuple[str, Tuple[int, ...]], str] = {}
        self._uid = 0

    # -- small helpers -----------------------------------------------------
    def fresh(self, hint: str) -> str:
        self._uid += 1
        return f"{hint}_{self._uid}"

    def node(self, op_type: str, inputs: Sequence[str], hint: str, **attrs) -> str:
        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op_type, list(inputs), [out],
                                           name=out, **attrs))
        return out

    def init(self, arr: np.ndarray, hint: str) -> str:
        """Add an initializer (deduplicated by content) and return its name."""
        arr = np.ascontiguousarray(arr)
        key = (arr.dtype.str, arr.shape, arr.tobytes())
        if key not in self._init_by_key:
            name = f"{hint}_c{len(self.inits)}"
            self.inits.append(numpy_helper.from_array(arr, name))
            self._init_by_key[key] = name
        return self._init_by_key[key]

    def tensor(self, idx: int) -> TFLiteTensor:
        return self.sg.tensors[idx]

    def const(self, idx: int) -> Optional[np.ndarray]:
        if idx < 0:
            return None
        if idx in self.consts:
            return self.consts[idx]
        return self.tensor(idx).data

    def const_f32(self, idx: int, what: str, op: TFLiteOperator) -> np.ndarray:
        arr = self.const(idx)
        if arr is None:
            raise ValueError(f"{self.where(op)}: {what} must be a constant")
        if arr.dtype != np.float32:
            raise ValueError(f"{self.where(op)}: {what} has dtype {arr.dtype}; "
                             "only float32 (or float16 behind DEQUANTIZE) is supported")
        return arr

    def const_int(self, idx: int, what: str, op: TFLiteOperator) -> List[int]:
        arr = self.const(idx)
        if arr is None or arr.dtype.kind not in "iu":
            raise ValueError(f"{self.where(op)}: {what} must be an integer constant")
        return [int(v) for v in np.asarray(arr).reshape(-1)]

    def where(self, op: TFLiteOperator) -> str:
        return f"op #{op.index} {op.name}"

    def val(self, idx: int, op: TFLiteOperator) -> _Val:
        if idx not in self.vals:
            if self.const(idx) is not None:
                raise ValueError(f"{self.where(op)}: constant input "
                                 f"{self.tensor(idx).name!r} where an activation is "
                                 "expected (constant folding is not supported)")
            raise ValueError(f"{self.where(op)}: input {self.tensor(idx).name!r} "
                             "has no producer")
        v = self.vals[idx]
        if v.extra_batch:
            raise ValueError(f"{self.where(op)}: consumes a tensor whose batch "
                             "axis the TFLite graph squeezed away; only graph "
                             "outputs may do that")
        return v

    def rank(self, idx: int) -> int:
        return len(self.tensor(idx).shape)

    def in_layout(self, v: _Val, perm: Tuple[int, ...]) -> str:
        """Name of ``v`` in layout ``perm`` (a cached Transpose when needed)."""
        if v.perm == perm:
            return v.name
        key = (v.name, perm)
        if key not in self._layout_cache:
            inv = np.argsort(v.perm)
            rel = [int(inv[p]) for p in perm]
            self._layout_cache[key] = self.node("Transpose", [v.name], "transpose",
                                                perm=rel)
        return self._layout_cache[key]

    def activation(self, x: str, code: int, op: TFLiteOperator) -> str:
        """Apply a TFLite fused activation."""
        if code == 0:
            return x
        if code == 1:
            return self.node("Relu", [x], "relu")
        if code == 2:
            return self.node("Clip", [x, self.init(np.float32(-1), "lo"),
                                      self.init(np.float32(1), "hi")], "relu_n1_to_1")
        if code == 3:
            return self.node("Clip", [x, self.init(np.float32(0), "lo"),
                                      self.init(np.float32(6), "hi")], "relu6")
        if code == 4:
            return self.node("Tanh", [x], "tanh")
        raise ValueError(f"{self.where(op)}: unsupported fused activation "
                         f"{_ACTIVATIONS.get(code, code)}")

    def broadcast_const(self, arr: np.ndarray, rank: int, perm: Tuple[int, ...],
                        op: TFLiteOperator) -> np.ndarray:
        """Lay a constant operand out like an activation of ``rank``/``perm``.

        TFLite broadcasts numpy-style (trailing dims align); after padding the
        constant to full rank it is transposed like the activation.
        """
        if arr.ndim == 0:
            return arr
        if arr.ndim > rank:
            raise ValueError(f"{self.where(op)}: constant of rank {arr.ndim} "
                             f"broadcast against rank {rank}")
        full = arr.reshape((1,) * (rank - arr.ndim) + arr.shape)
        if full.shape[0] != 1:
            raise ValueError(f"{self.where(op)}: constant spans the batch axis")
        return full.transpose(perm)

    def set_out(self, op: TFLiteOperator, name: str, perm: Tuple[int, ...],
                extra_batch: bool = False, k: int = 0) -> None:
        self.vals[op.outputs[k]] = _Val(name, tuple(perm), extra_batch)

    # -- conversion driver -------------------------------------------------
    def run(self) -> None:
        sg = self.sg
        if len(sg.inputs) != 1:
            raise ValueError(f"expected one graph input, found {len(sg.inputs)}")
        t_in = self.tensor(sg.inputs[0])
        if t_in.type != 0:
            raise ValueError(f"graph input {t_in.name!r} is {t_in.type_name}, "
                             "only FLOAT32 inputs are supported")
        if not t_in.shape or t_in.shape[0] != 1:
            raise ValueError(f"graph input {t_in.name!r} has shape {t_in.shape}; "
                             "expected batch 1 as axis 0")
        self.vals[sg.inputs[0]] = _Val(self.input_name, _identity(len(t_in.shape)))
        for op in sg.operators:
            handler = getattr(self, "op_" + op.name.split(":")[0], None)
            if handler is None:
                raise ValueError(f"unsupported TFLite op {op.name} (op #{op.index}, "
                                 f"output {self.tensor(op.outputs[0]).name!r})")
            handler(op)

    # -- constant producers (folded) -----------------------------------------
    def op_DEQUANTIZE(self, op):
        src = self.const(op.inputs[0])
        t = self.tensor(op.inputs[0])
        if src is None:
            raise ValueError(f"{self.where(op)}: DEQUANTIZE of an activation "
                             "is not supported")
        if src.dtype != np.float16 or t.quantized:
            raise ValueError(f"{self.where(op)}: only float16 -> float32 "
                             f"DEQUANTIZE is supported, got {t.type_name}")
        # float16 -> float32 is exact, so this equals LiteRT's run-time result.
        self.consts[op.outputs[0]] = src.astype(np.float32)

    def op_DENSIFY(self, op):
        src = self.const(op.inputs[0])
        if src is None:
            raise ValueError(f"{self.where(op)}: DENSIFY of an activation")
        # The reader already expanded sparse constants to dense arrays.
        self.consts[op.outputs[0]] = src

    # -- element-wise ------------------------------------------------------
    def _unary(self, op, onnx_op: str):
        v = self.val(op.inputs[0], op)
        self.set_out(op, self.node(onnx_op, [v.name], onnx_op.lower()), v.perm)

    def op_RELU(self, op):
        self._unary(op, "Relu")

    def op_LOGISTIC(self, op):
        self._unary(op, "Sigmoid")

    def op_NEG(self, op):
        self._unary(op, "Neg")

    def op_SQRT(self, op):
        self._unary(op, "Sqrt")

    def op_TANH(self, op):
        self._unary(op, "Tanh")

    def op_RSQRT(self, op):
        # LiteRT computes 1.f / std::sqrt(x); Reciprocal(Sqrt(x)) is the same.
        v = self.val(op.inputs[0], op)
        s = self.node("Sqrt", [v.name], "sqrt")
        self.set_out(op, self.node("Reciprocal", [s], "rsqrt"), v.perm)

    def _binary_operands(self, op) -> Tuple[str, str, Tuple[int, ...]]:
        a_idx, b_idx = op.inputs[:2]
        ca, cb = self.const(a_idx), self.const(b_idx)
        if ca is not None and cb is not None:
            raise ValueError(f"{self.where(op)}: both operands constant")
        if ca is not None or cb is not None:
            act_idx, c_idx = (b_idx, a_idx) if ca is not None else (a_idx, b_idx)
            v = self.val(act_idx, op)
            c = self.const_f32(c_idx, "operand", op)
            cname = self.init(self.broadcast_const(c, self.rank(act_idx), v.perm, op),
                              "k")
            names = (cname, v.name) if ca is not None else (v.name, cname)
            return names[0], names[1], v.perm
        va, vb = self.val(a_idx, op), self.val(b_idx, op)
        if self.rank(a_idx) == self.rank(b_idx):
            perm = va.perm
            return va.name, self.in_layout(vb, perm), perm
        # Different ranks: numpy broadcasting only holds in TFLite's layout.
        ra, rb = self.rank(a_idx), self.rank(b_idx)
        perm = _identity(max(ra, rb))
        return (self.in_layout(va, _identity(ra)), self.in_layout(vb, _identity(rb)),
                perm)

    def _binary(self, op, onnx_op: str):
        a, b, perm = self._binary_operands(op)
        y = self.node(onnx_op, [a, b], onnx_op.lower())
        y = self.activation(y, op.options.get("fused_activation_function", 0), op)
        self.set_out(op, y, perm)

    def op_ADD(self, op):
        self._binary(op, "Add")

    def op_SUB(self, op):
        self._binary(op, "Sub")

    def op_MUL(self, op):
        self._binary(op, "Mul")

    def op_DIV(self, op):
        self._binary(op, "Div")

    def op_SQUARED_DIFFERENCE(self, op):
        # LiteRT: d = x - y; d * d.
        a, b, perm = self._binary_operands(op)
        d = self.node("Sub", [a, b], "sqdiff_sub")
        self.set_out(op, self.node("Mul", [d, d], "sqdiff"), perm)

    def op_PRELU(self, op):
        v = self.val(op.inputs[0], op)
        alpha = self.const_f32(op.inputs[1], "PRELU alpha", op)
        slope = self.broadcast_const(alpha, self.rank(op.inputs[0]), v.perm, op)
        # Emitted as PRelu and written out as Relu/Mul/Add by onnx_passes.expand_prelu when the
        # graph is complete: ONNX Runtime's PRelu kernel is a slow generic broadcast that forces
        # NCHWc reorders around every convolution (landmark model: 22 -> 10 ms/face).
        self.set_out(op, self.node("PRelu", [v.name, self.init(slope, "alpha")], "prelu"), v.perm)

    # -- convolutions and pooling (NCHW) --------------------------------------
    def _spatial_pads(self, op, in_hw, k_hw, s_hw, d_hw) -> List[int]:
        pad = _PADDING.get(op.options["padding"])
        if pad == "VALID":
            return [0, 0, 0, 0]
        if pad == "SAME":
            (t, b), (l, r) = (_same_pads(in_hw[i], k_hw[i], s_hw[i], d_hw[i])
                              for i in range(2))
            return [t, l, b, r]  # ONNX order: begins (H, W), then ends
        raise ValueError(f"{self.where(op)}: unsupported padding {op.options['padding']}")

    def _check_4d(self, op):
        if self.rank(op.inputs[0]) != 4:
            raise ValueError(f"{self.where(op)}: expected a 4-D NHWC input")

    def _pointwise_matmul(self, op, v: _Val) -> bool:
        """A 1x1, stride-1, ungrouped CONV_2D over a one-row map ([1, 1, L, C]: the blendshape
        model's tokens) as a MatMul on the channel axis where it already lies, so that no
        Transpose is needed around it (the blendshape model: 18 Transposes fewer, about 1 ms per
        face). Returns False, emitting nothing, for any other conv."""
        o = op.options
        _, h, _, cin = self.tensor(op.inputs[0]).shape
        wt = self.const_f32(op.inputs[1], "filter", op)
        if (h != 1 or wt.shape[1:] != (1, 1, cin) or o["stride_h"] != 1 or o["stride_w"] != 1
                or len(v.perm) != 4 or v.perm.index(3) < 2):
            return False
        w2 = wt[:, 0, 0, :]  # [O, I]
        bias = (self.const_f32(op.inputs[2], "bias", op) if len(op.inputs) > 2 and op.inputs[2] >= 0
                else None)
        last = v.perm.index(3) == 3
        if last:  # channels last: [..., L, I] @ [I, O]
            y = self.node("MatMul", [v.name, self.init(np.ascontiguousarray(w2.T), "w")], "pointwise")
        else:     # channels second to last: [O, I] @ [..., I, L]
            y = self.node("MatMul", [self.init(np.ascontiguousarray(w2), "w"), v.name], "pointwise")
        if bias is not None:
            b = bias if last else bias[:, None]
            y = self.node("Add", [y, self.init(b.astype(np.float32), "b")], "pointwise_bias")
        self.set_out(op, self.activation(y, o["fused_activation_function"], op), v.perm)
        return True

    def _conv(self, op, depthwise: bool):
        self._check_4d(op)
        o = op.options
        v = self.val(op.inputs[0], op)
        if not depthwise and self._pointwise_matmul(op, v):
            return
        x = self.in_layout(v, _NCHW)
        _, h, w, cin = self.tensor(op.inputs[0]).shape
        wt = self.const_f32(op.inputs[1], "filter", op)
        kh, kw = wt.shape[1], wt.shape[2]
        if depthwise:
            cout = wt.shape[3]
            mult = o["depth_multiplier"]
            if cout % cin or (mult and cout != cin * mult):
                raise ValueError(f"{self.where(op)}: inconsistent depth multiplier")
            # [1, KH, KW, C*M] -> [C*M, 1, KH, KW]; TFLite's output channel
            # c*M + m is ONNX group c's m-th output, so no reordering needed.
            wt_onnx = wt.transpose(3, 0, 1, 2)
            group = cin
        else:
            # [O, KH, KW, I] -> [O, I, KH, KW]; I < C_in means grouped conv.
            wt_onnx = wt.transpose(0, 3, 1, 2)
            if cin % wt.shape[3]:
                raise ValueError(f"{self.where(op)}: input channels {cin} not a "
                                 f"multiple of filter depth {wt.shape[3]}")
            group = cin // wt.shape[3]
        strides = [o["stride_h"], o["stride_w"]]
        dil = [o["dilation_h_factor"], o["dilation_w_factor"]]
        pads = self._spatial_pads(op, (h, w), (kh, kw), strides, dil)
        ins = [x, self.init(wt_onnx.astype(np.float32), "w")]
        if len(op.inputs) > 2 and op.inputs[2] >= 0:
            ins.append(self.init(self.const_f32(op.inputs[2], "bias", op), "b"))
        y = self.node("Conv", ins, "dwconv" if depthwise else "conv",
                      kernel_shape=[kh, kw], strides=strides, dilations=dil,
                      pads=pads, group=group)
        y = self.activation(y, o["fused_activation_function"], op)
        self.set_out(op, y, _NCHW)

    def op_CONV_2D(self, op):
        self._conv(op, depthwise=False)

    def op_DEPTHWISE_CONV_2D(self, op):
        self._conv(op, depthwise=True)

    def op_MAX_POOL_2D(self, op):
        self._check_4d(op)
        o = op.options
        v = self.val(op.inputs[0], op)
        _, h, w, _ = self.tensor(op.inputs[0]).shape
        k = [o["filter_height"], o["filter_width"]]
        s = [o["stride_h"], o["stride_w"]]
        # Padded cells never win a TFLite max pool; ONNX MaxPool ignores pads too.
        pads = self._spatial_pads(op, (h, w), k, s, (1, 1))
        y = self.node("MaxPool", [self.in_layout(v, _NCHW)], "maxpool",
                      kernel_shape=k, strides=s, pads=pads)
        y = self.activation(y, o["fused_activation_function"], op)
        self.set_out(op, y, _NCHW)

    def op_RESIZE_BILINEAR(self, op):
        self._check_4d(op)
        o = op.options
        if o["align_corners"] and o["half_pixel_centers"]:
            raise ValueError(f"{self.where(op)}: align_corners with half_pixel_centers")
        mode = ("align_corners" if o["align_corners"] else
                "half_pixel" if o["half_pixel_centers"] else "asymmetric")
        v = self.val(op.inputs[0], op)
        x = self.in_layout(v, _NCHW)
        _, h, w, _ = self.tensor(op.inputs[0]).shape
        oh, ow = self.const_int(op.inputs[1], "size", op)
        if oh % h == 0 and ow % w == 0:
            # Integer factors: constant scales (exact in float, batch-agnostic,
            # and friendlier to TensorRT than a computed `sizes` input).
            scales = self.init(np.array([1, 1, oh // h, ow // w], np.float32), "scales")
            ins = [x, "", scales]
        else:
            nc = self.node("Shape", [x], "shape", start=0, end=2)
            sizes = self.node("Concat", [nc, self.init(np.array([oh, ow], np.int64),
                                                       "hw")], "sizes", axis=0)
            ins = [x, "", "", sizes]
        y = self.node("Resize", ins, "resize", mode="linear",
                      coordinate_transformation_mode=mode)
        self.set_out(op, y, _NCHW)

    def op_DEPTH_TO_SPACE(self, op):
        self._check_4d(op)
        v = self.val(op.inputs[0], op)
        # TF's NHWC depth_to_space reads channel (i * bs + j) * C_out + c for
        # output pixel offset (i, j): that is ONNX's DCR ordering.
        y = self.node("DepthToSpace", [self.in_layout(v, _NCHW)], "depth_to_space",
                      blocksize=op.options["block_size"], mode="DCR")
        self.set_out(op, y, _NCHW)

    # -- layout-agnostic data movement --------------------------------------
    def op_PAD(self, op):
        v = self.val(op.inputs[0], op)
        rank = self.rank(op.inputs[0])
        p = np.asarray(self.const_int(op.inputs[1], "paddings", op)).reshape(rank, 2)
        if p[0].any():
            raise ValueError(f"{self.where(op)}: padding the batch axis")
        shape = self.tensor(op.inputs[0]).shape
        if rank == 4 and not p[:3].any() and shape is not None and len(shape) == 4 and shape[3] > 0:
            # Zeros appended/prepended to the channels only (the residual branch of a block that
            # widens, e.g. BlazeFace, the landmark model): a 1x1 Conv with [0; I; 0] weights gives
            # the same values (x * 1 plus zero terms, for finite x) and, unlike Pad, keeps ONNX
            # Runtime in its blocked layout, so the Add that follows fuses into the next conv
            # (landmark model: 39 layout reorders and 60 unfused element-wise ops fewer, ~10 %).
            c, lo, hi = int(shape[3]), int(p[3, 0]), int(p[3, 1])
            w = np.zeros((lo + c + hi, c, 1, 1), np.float32)
            w[lo:lo + c, :, 0, 0] = np.eye(c, dtype=np.float32)
            y = self.node("Conv", [self.in_layout(v, _NCHW), self.init(w, "channel_pad")], "channel_pad",
                          kernel_shape=[1, 1])
            self.set_out(op, y, _NCHW)
            return
        pads = [int(p[a, 0]) for a in v.perm] + [int(p[a, 1]) for a in v.perm]
        y = self.node("Pad", [v.name, self.init(np.array(pads, np.int64), "pads")],
                      "pad", mode="constant")
        self.set_out(op, y, v.perm)

    def op_CONCATENATION(self, op):
        rank = self.rank(op.outputs[0])
        axis = op.options["axis"] % rank
        if axis == 0:
            raise ValueError(f"{self.where(op)}: concatenation along the batch axis")
        acts = [i for i in op.inputs if self.const(i) is None]
        if not acts:
            raise ValueError(f"{self.where(op)}: all inputs constant")
        ref = self.val(acts[0], op)
        perm = ref.perm
        names = []
        for i in op.inputs:
            c = self.const(i)
            if c is None:
                names.append(self.in_layout(self.val(i, op), perm))
                continue
            c = self.broadcast_const(self.const_f32(i, "input", op), rank, perm, op)
            # A batch-1 constant (e.g. the blendshape model's class token) must
            # be repeated to the run-time batch: Expand to [N, 1, ..., 1].
            n = self.node("Shape", [ref.name], "batch", start=0, end=1)
            shape = self.node("Concat", [n, self.init(np.ones(rank - 1, np.int64),
                                                      "ones")], "expand_shape", axis=0)
            names.append(self.node("Expand", [self.init(c, "k"), shape], "expand"))
        y = self.node("Concat", names, "concat", axis=perm.index(axis))
        y = self.activation(y, op.options["fused_activation_function"], op)
        self.set_out(op, y, perm)

    def op_TRANSPOSE(self, op):
        # No ONNX node: only the layout bookkeeping changes (see _Val).
        v = self.val(op.inputs[0], op)
        rank = self.rank(op.inputs[0])
        P = [a % rank for a in self.const_int(op.inputs[1], "perm", op)]
        if sorted(P) != list(range(rank)):
            raise ValueError(f"{self.where(op)}: invalid permutation {P}")
        if P[0] != 0:
            raise ValueError(f"{self.where(op)}: transposes the batch axis ({P})")
        inv = np.argsort(P)
        self.set_out(op, v.name, tuple(int(inv[p]) for p in v.perm))

    def _reduce(self, op, onnx_op: str):
        v = self.val(op.inputs[0], op)
        rank = self.rank(op.inputs[0])
        axes = sorted({a % rank for a in self.const_int(op.inputs[1], "axes", op)})
        if 0 in axes:
            raise ValueError(f"{self.where(op)}: reduction over the batch axis")
        keep = bool(op.options["keep_dims"])
        perm = v.perm if keep else _identity(rank)
        x = self.in_layout(v, perm)
        onnx_axes = sorted(perm.index(a) for a in axes)
        if onnx_op == "ReduceMean":  # opset 17: axes is an attribute
            y = self.node(onnx_op, [x], "mean", axes=onnx_axes, keepdims=int(keep))
        else:  # ReduceSum takes axes as an input since opset 13
            y = self.node(onnx_op, [x, self.init(np.array(onnx_axes, np.int64), "axes")],
                          "sum", keepdims=int(keep))
        self.set_out(op, y, perm if keep else _identity(rank - len(axes)))

    def op_MEAN(self, op):
        self._reduce(op, "ReduceMean")

    def op_SUM(self, op):
        self._reduce(op, "ReduceSum")

    def op_RESHAPE(self, op):
        v = self.val(op.inputs[0], op)
        in_shape = self.tensor(op.inputs[0]).shape
        if len(op.inputs) > 1 and op.inputs[1] >= 0:
            new = self.const_int(op.inputs[1], "shape", op)
        elif op.options.get("new_shape") is not None:
            new = list(op.options["new_shape"])
        else:
            raise ValueError(f"{self.where(op)}: no target shape")
        out_shape = list(self.tensor(op.outputs[0]).shape)
        sample = int(np.prod(in_shape[1:]))
        x = self.in_layout(v, _identity(len(in_shape)))
        rest = new[1:]
        if new and new[0] in (1, -1) and (
                (-1 in rest and new[0] == 1) or int(np.prod(rest)) == sample):
            # Axis 0 stays the batch axis: copy it from the input (ONNX 0).
            onnx_shape, extra = [0] + rest, False
        elif int(np.prod(out_shape)) == sample:
            # The reshape drops the batch-1 axis ([1, 1, 52] -> [52]): keep a
            # leading batch axis in ONNX and remember TFLite no longer has it.
            onnx_shape, extra = [0] + new, True
        else:
            raise ValueError(f"{self.where(op)}: reshape {list(in_shape)} -> {new} "
                             "mixes the batch axis with other axes")
        y = self.node("Reshape", [x, self.init(np.array(onnx_shape, np.int64), "shape")],
                      "reshape")
        self.set_out(op, y, _identity(len(out_shape)), extra)

    def op_STRIDED_SLICE(self, op):
        o = op.options
        for k in ("ellipsis_mask", "new_axis_mask"):
            if o[k]:
                raise ValueError(f"{self.where(op)}: {k} is not supported")
        if o["offset"]:
            raise ValueError(f"{self.where(op)}: offset=True is not supported")
        v = self.val(op.inputs[0], op)
        shape = self.tensor(op.inputs[0]).shape
        rank = len(shape)
        begin = self.const_int(op.inputs[1], "begin", op)
        end = self.const_int(op.inputs[2], "end", op)
        strides = self.const_int(op.inputs[3], "strides", op)
        x = self.in_layout(v, _identity(rank))
        starts, ends, axes, steps, squeeze = [], [], [], [], []
        extra = False
        for a in range(rank):
            bm, em, sm = ((o[k] >> a) & 1 for k in ("begin_mask", "end_mask",
                                                    "shrink_axis_mask"))
            s = strides[a]
            if s <= 0:
                raise ValueError(f"{self.where(op)}: non-positive stride {s}")
            b = 0 if bm else begin[a]
            e = b + 1 if sm else (_INT64_MAX if em else end[a])
            if a == 0:
                # TFLite sees batch 1: a slice of [0:1] (or the full axis) is the
                # whole batch.  Shrinking it squeezes the batch away -> keep it.
                if s != 1 or b not in (0, -1) or not (sm or em or e >= 1):
                    raise ValueError(f"{self.where(op)}: slices the batch axis")
                extra = bool(sm)
                continue
            full = (b in (0, -shape[a]) or bm) and (e >= shape[a]) and s == 1
            if full and not sm:
                continue
            starts.append(b)
            ends.append(e)
            axes.append(a)
            steps.append(s)
            if sm:
                squeeze.append(a)
        y = x
        if axes:
            y = self.node("Slice", [x, self.init(np.array(starts, np.int64), "starts"),
                                    self.init(np.array(ends, np.int64), "ends"),
                                    self.init(np.array(axes, np.int64), "axes"),
                                    self.init(np.array(steps, np.int64), "steps")],
                          "slice")
        if squeeze:
            y = self.node("Squeeze", [y, self.init(np.array(squeeze, np.int64), "axes")],
                          "squeeze")
        self.set_out(op, y, _identity(rank - len(squeeze) - (1 if extra else 0)),
                     extra)


def _prune(graph: onnx.GraphProto) -> None:
    """Drop nodes and initializers that no graph output depends on."""
    needed = {o.name for o in graph.output}
    keep = []
    for node in reversed(list(graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    keep.reverse()
    del graph.node[:]
    graph.node.extend(keep)
    inits = [t for t in graph.initializer if t.name in needed]
    del graph.initializer[:]
    graph.initializer.extend(inits)


def convert_tflite(
    path_or_bytes: Union[str, Path, bytes, bytearray],
    *,
    input_name: str = "input",
    output_names: Optional[Sequence[Optional[str]]] = None,
    output_shapes: Optional[Sequence[Optional[Sequence[int]]]] = None,
    doc_string: str = "",
) -> onnx.ModelProto:
    """Convert a float TFLite model to an ONNX model with a dynamic batch.

    Args:
      path_or_bytes: a ``.tflite`` path or its bytes.
      input_name: name of the ONNX input; it keeps TFLite's layout (NHWC for
        images) with axis 0 renamed to the dynamic dimension ``"N"``.
      output_names: one entry per TFLite output, in TFLite order; ``None``
        (the whole argument) keeps the TFLite names, a ``None`` entry drops
        that output (its private nodes are pruned).
      output_shapes: optional per-output per-sample shapes (without the
        batch axis), appended as a ``Reshape`` (e.g. ``(478, 3)`` for the
        ``[N, 1, 1, 1434]`` landmark tensor).
      doc_string: stored as the graph's doc string.

    Returns:
      An opset-17 ``onnx.ModelProto`` whose outputs are ``[N, ...]``, where
      ``...`` is the TFLite output shape without its batch-1 axis (a TFLite
      output that squeezed the batch away, like the blendshape ``[52]``,
      becomes ``[N, 52]``).

    Raises:
      ValueError: for any op, option, dtype or batch manipulation this
        converter does not implement.
    """
    if isinstance(path_or_bytes, (str, Path)):
        data = Path(path_or_bytes).read_bytes()
    else:
        data = bytes(path_or_bytes)
    model = read_tflite(data)
    conv = _Converter(model, input_name)
    conv.run()
    sg = conv.sg

    n_out = len(sg.outputs)
    names = list(output_names) if output_names is not None else \
        [sg.tensors[i].name for i in sg.outputs]
    shapes = list(output_shapes) if output_shapes is not None else [None] * n_out
    if len(names) != n_out or len(shapes) != n_out:
        raise ValueError(f"model has {n_out} outputs: "
                         f"{[sg.tensors[i].name for i in sg.outputs]}")

    outputs, renames = [], {}
    for t_idx, name, shape in zip(sg.outputs, names, shapes):
        if name is None:
            continue
        if t_idx not in conv.vals:
            raise ValueError(f"output {sg.tensors[t_idx].name!r} is not computed")
        v = conv.vals[t_idx]
        tshape = list(sg.tensors[t_idx].shape)
        x = conv.in_layout(v, _identity(len(tshape)))
        per_sample = tshape if v.extra_batch else tshape[1:]
        if shape is not None:
            if int(np.prod(shape)) != int(np.prod(per_sample)):
                raise ValueError(f"output {name!r}: cannot reshape {per_sample} "
                                 f"to {list(shape)}")
            x = conv.node("Reshape", [x, conv.init(np.array([0] + list(shape),
                                                            np.int64), "shape")],
                          "reshape")
            per_sample = list(shape)
        if x == input_name or x in renames:
            x = conv.node("Identity", [x], "output")
        renames[x] = name
        outputs.append(helper.make_tensor_value_info(
            name, TensorProto.FLOAT, ["N"] + [int(d) for d in per_sample]))

    # Give the producing nodes the output names directly (no Identity nodes).
    for node in conv.nodes:
        node.output[:] = [renames.get(o, o) for o in node.output]
        node.input[:] = [renames.get(i, i) for i in node.input]

    t_in = sg.tensors[sg.inputs[0]]
    inputs = [helper.make_tensor_value_info(
        input_name, TensorProto.FLOAT, ["N"] + [int(d) for d in t_in.shape[1:]])]
    graph = helper.make_graph(conv.nodes, "ig3d_" + (sg.name or "tflite"),
                              inputs, outputs, conv.inits, doc_string=doc_string)
    _prune(graph)
    onnx_model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)],
        producer_name="ig3d.convert.tflite", producer_version="1")
    # IR 8 keeps the file loadable by older runtimes (ONNX Runtime >= 1.14).
    onnx_model.ir_version = 8
    norm = read_input_normalization(data)
    meta = {"source_format": "tflite", "input_layout": "NHWC" if len(t_in.shape) == 4
            else "as-tflite"}
    if norm is not None:
        meta["input_mean"] = ",".join(f"{m:g}" for m in norm[0])
        meta["input_std"] = ",".join(f"{s:g}" for s in norm[1])
    helper.set_model_props(onnx_model, meta)
    expand_prelu(onnx_model)
    fuse_layer_norm(onnx_model)
    onnx.checker.check_model(onnx_model, full_check=True)
    return onnx_model


def append_sigmoid_output(model: onnx.ModelProto, output: str, new_name: str) -> None:
    """Replace graph output ``output`` by ``Sigmoid(output)`` named ``new_name``.

    Used for the landmark model's presence head: MediaPipe applies the sigmoid
    outside the TFLite graph (TensorsToFloatsCalculator, activation SIGMOID).
    """
    graph = model.graph
    for i, vi in enumerate(graph.output):
        if vi.name == output:
            break
    else:
        raise KeyError(f"no graph output {output!r}")
    graph.node.append(helper.make_node("Sigmoid", [output], [new_name], name=new_name))
    new_vi = onnx.ValueInfoProto()
    new_vi.CopyFrom(vi)
    new_vi.name = new_name
    graph.output.remove(vi)
    graph.output.insert(i, new_vi)
    onnx.checker.check_model(model, full_check=True)
