"""Read MediaPipe's canonical face model from ``geometry_pipeline_metadata_landmarks.binarypb``.

The file (a member of ``face_landmarker.task``) is a binary protobuf of
``mediapipe.face_geometry.GeometryPipelineMetadata``
(google-ai-edge/mediapipe: mediapipe/modules/face_geometry/protos/
geometry_pipeline_metadata.proto and mesh_3d.proto)::

    message GeometryPipelineMetadata {
      optional InputSource input_source = 3;       // enum (varint)
      optional Mesh3d canonical_mesh = 1;
      repeated WeightedLandmarkRef procrustes_landmark_basis = 2;
    }
    message Mesh3d {
      optional VertexType vertex_type = 1;         // VERTEX_PT = 0
      optional PrimitiveType primitive_type = 2;   // TRIANGLE = 0
      repeated float vertex_buffer = 3;
      repeated uint32 index_buffer = 4;
    }
    message WeightedLandmarkRef {
      optional uint32 landmark_id = 1;
      optional float weight = 2;
    }

With ``VERTEX_PT`` each vertex is 5 floats: position ``x, y, z`` (in
centimetre-like units of the canonical face, origin near the head centre,
y up, z towards the viewer) and texture ``u, v``.  ``index_buffer`` holds
triangles (3 vertex ids each).  Vertex ``i`` corresponds to face-mesh landmark
``i``; the file has 468 mesh vertices or 478 with irises (this one: 478).
``procrustes_landmark_basis`` lists the landmark ids and weights MediaPipe uses
to fit the pose (weighted orthogonal Procrustes).

The protobuf wire format is parsed by hand (varints, 32-bit and
length-delimited fields, packed or unpacked repeated scalars), so no
protobuf package or generated code is needed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterator, List, Tuple

import numpy as np

__all__ = ["CanonicalFace", "parse_geometry_pipeline_metadata"]


@dataclass
class CanonicalFace:
    vertices: np.ndarray  # float32 [V, 3]  (x, y, z)
    uv: np.ndarray  # float32 [V, 2]
    triangles: np.ndarray  # int32 [T, 3]
    procrustes_ids: np.ndarray  # int32 [K]
    procrustes_weights: np.ndarray  # float32 [K]
    input_source: int  # 0 DEFAULT, 1 FACE_LANDMARK_PIPELINE, 2 FACE_DETECTION_PIPELINE


def _varint(buf: bytes, pos: int) -> Tuple[int, int]:
    result = shift = 0
    while True:
        b = buf[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if not b & 0x80:
            return result, pos
        shift += 7
        if shift > 63:
            raise ValueError("malformed varint")


def _fields(buf: bytes) -> Iterator[Tuple[int, int, object]]:
    """Yield ``(field_number, wire_type, value)``; value is int or bytes."""
    pos = 0
    while pos < len(buf):
        key, pos = _varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        if pos > len(buf):
            raise ValueError("truncated protobuf")
        yield field, wire, value


def _floats(chunks: List[bytes]) -> np.ndarray:
    # Both packed (wire 2) and unpacked (wire 5) encodings are little-endian
    # float32 bytes, so concatenating works for either.
    return np.frombuffer(b"".join(chunks), dtype="<f4").astype(np.float32)


def _uints(values: List[object]) -> List[int]:
    out: List[int] = []
    for v in values:
        if isinstance(v, int):  # unpacked varint
            out.append(v)
        else:  # packed run of varints
            pos = 0
            while pos < len(v):
                x, pos = _varint(v, pos)
                out.append(x)
    return out


def parse_geometry_pipeline_metadata(data: bytes) -> CanonicalFace:
    """Parse ``geometry_pipeline_metadata*.binarypb`` bytes (see module doc)."""
    mesh = None
    input_source = 0
    basis_ids: List[int] = []
    basis_w: List[float] = []
    for field, wire, value in _fields(data):
        if field == 1 and wire == 2:
            mesh = value
        elif field == 2 and wire == 2:
            lid, w = 0, 0.0
            for f2, w2, v2 in _fields(value):
                if f2 == 1 and w2 == 0:
                    lid = v2
                elif f2 == 2 and w2 == 5:
                    w = float(np.frombuffer(v2, "<f4")[0])
            basis_ids.append(lid)
            basis_w.append(w)
        elif field == 3 and wire == 0:
            input_source = value
    if mesh is None:
        raise ValueError("no canonical_mesh in geometry pipeline metadata")

    vtype = ptype = 0
    vbuf: List[bytes] = []
    ibuf: List[object] = []
    for field, wire, value in _fields(mesh):
        if field == 1 and wire == 0:
            vtype = value
        elif field == 2 and wire == 0:
            ptype = value
        elif field == 3 and wire in (2, 5):
            vbuf.append(value)
        elif field == 4 and wire in (0, 2):
            ibuf.append(value)
    if vtype != 0 or ptype != 0:
        raise ValueError(f"unsupported mesh vertex_type={vtype} primitive_type={ptype}")
    verts = _floats(vbuf)
    if verts.size % 5:
        raise ValueError("VERTEX_PT buffer length is not a multiple of 5")
    verts = verts.reshape(-1, 5)
    idx = np.asarray(_uints(ibuf), dtype=np.int32)
    if idx.size % 3:
        raise ValueError("triangle index buffer length is not a multiple of 3")
    return CanonicalFace(
        vertices=np.ascontiguousarray(verts[:, :3]),
        uv=np.ascontiguousarray(verts[:, 3:]),
        triangles=idx.reshape(-1, 3),
        procrustes_ids=np.asarray(basis_ids, dtype=np.int32),
        procrustes_weights=np.asarray(basis_w, dtype=np.float32),
        input_source=int(input_source),
    )
