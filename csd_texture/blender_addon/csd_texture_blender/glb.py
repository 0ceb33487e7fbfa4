"""Read the triangles and UVs of a csd-texture output GLB with numpy (Blender has no trimesh).

Hand-written on purpose: Blender's Python has numpy but not pygltflib, and importing the GLB
with Blender's glTF importer would add objects, materials and images to the user's file.
"""
from __future__ import annotations

import json
import struct
from pathlib import Path

import numpy as np

COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}
# glTF is Y-up, Blender Z-up: Blender (x, y, z) = glTF (x, -z, y), as Blender's glTF add-on converts.
GLTF_TO_BLENDER = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


def _split(data: bytes) -> tuple[dict, bytes]:
    magic, version, _ = struct.unpack_from("<4sII", data, 0)
    if magic != b"glTF" or version != 2:
        raise ValueError("not a glTF 2.0 binary file")
    offset, document, binary = 12, None, b""
    while offset + 8 <= len(data):
        length, kind = struct.unpack_from("<I4s", data, offset)
        chunk = data[offset + 8: offset + 8 + length]
        if kind == b"JSON":
            document = json.loads(chunk.decode("utf-8"))
        elif kind == b"BIN\0":
            binary = chunk
        offset += 8 + length
    if document is None:
        raise ValueError("the GLB has no JSON chunk")
    return document, binary


def _accessor(document: dict, binary: bytes, index: int) -> np.ndarray:
    accessor = document["accessors"][index]
    view = document["bufferViews"][accessor["bufferView"]]
    dtype = np.dtype(COMPONENTS[accessor["componentType"]])
    width = WIDTH[accessor["type"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    stride = view.get("byteStride") or dtype.itemsize * width
    rows = [np.frombuffer(binary, dtype, width, start + i * stride) for i in range(accessor["count"])] \
        if stride != dtype.itemsize * width else \
        [np.frombuffer(binary, dtype, width * accessor["count"], start)]
    return np.concatenate(rows).reshape(accessor["count"], width)


def _local_matrix(node: dict) -> np.ndarray:
    if "matrix" in node:
        return np.array(node["matrix"], np.float64).reshape(4, 4).T  # column-major
    x, y, z, w = node.get("rotation", (0.0, 0.0, 0.0, 1.0))
    rotation = np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])
    matrix = np.eye(4)
    matrix[:3, :3] = rotation * np.asarray(node.get("scale", (1.0, 1.0, 1.0)))
    matrix[:3, 3] = node.get("translation", (0.0, 0.0, 0.0))
    return matrix


def read_triangles(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """(T, 3, 3) triangle corners in Blender world space and (T, 3, 2) their UVs (Blender's
    bottom-left origin), over every TEXCOORD_0 primitive of the default scene."""
    document, binary = _split(Path(path).read_bytes())
    corners, uvs = [], []
    scene = document.get("scenes", [{}])[document.get("scene", 0)]
    stack = [(index, np.eye(4)) for index in scene.get("nodes", [])]
    while stack:
        index, parent = stack.pop()
        node = document["nodes"][index]
        world = parent @ _local_matrix(node)
        stack += [(child, world) for child in node.get("children", [])]
        for primitive in document["meshes"][node["mesh"]]["primitives"] if "mesh" in node else []:
            attributes = primitive["attributes"]
            if primitive.get("mode", 4) != 4 or "TEXCOORD_0" not in attributes:
                continue
            positions = _accessor(document, binary, attributes["POSITION"]).astype(np.float64)
            uv = _accessor(document, binary, attributes["TEXCOORD_0"]).astype(np.float64)
            faces = (_accessor(document, binary, primitive["indices"]).reshape(-1, 3).astype(np.int64)
                     if "indices" in primitive else np.arange(len(positions)).reshape(-1, 3))
            positions = positions @ world[:3, :3].T + world[:3, 3]
            corners.append((positions @ GLTF_TO_BLENDER.T)[faces])
            uvs.append(np.stack([uv[:, 0], 1.0 - uv[:, 1]], axis=1)[faces])
    if not corners:
        raise ValueError("the GLB has no textured triangles")
    return np.concatenate(corners), np.concatenate(uvs)
