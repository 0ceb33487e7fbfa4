"""A new glTF document holding one textured mesh (inputs that are not glTF, or trimesh objects)."""
from __future__ import annotations

import json
import struct
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np
import pygltflib

from ..datatypes import MeshData
from .files import companion_names
from .geometry import Geometry, face_groups
from .metadata import GENERATOR, json_bytes

_GLB_MAGIC, _GLB_JSON, _GLB_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


class _BinaryBuffer:
    """Concatenates bufferView payloads, each starting on a 4-byte boundary."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.views: list[pygltflib.BufferView] = []

    def add(self, payload: bytes, target: int | None = None) -> int:
        """Append `payload` as a new bufferView; returns its index."""
        self.data += b"\0" * (-len(self.data) % 4)
        view = pygltflib.BufferView(buffer=0, byteOffset=len(self.data), byteLength=len(payload), target=target)
        self.views.append(view)
        self.data += payload
        return len(self.views) - 1

    def padded(self) -> bytes:
        """The buffer, zero-padded to a multiple of 4 bytes."""
        return bytes(self.data + b"\0" * (-len(self.data) % 4))


def _accessors(geometry: Geometry, buffer: _BinaryBuffer, groups: list[np.ndarray]) -> list[pygltflib.Accessor]:
    """POSITION (with min/max), NORMAL, TEXCOORD_0 (u, 1 - v), TANGENT when the geometry has
    tangents, then the indices of each group of faces."""
    texcoord = np.stack([geometry.uv[:, 0], 1.0 - geometry.uv[:, 1]], axis=1).astype(np.float32)
    vertex_count = len(geometry.world)
    small = vertex_count <= 0xFFFF  # 65535 is the primitive-restart value
    accessors = []
    attributes = [(geometry.offsets(), pygltflib.VEC3, True), (geometry.normals, pygltflib.VEC3, False),
                  (texcoord, pygltflib.VEC2, False)]
    if geometry.tangents is not None:
        attributes.append((geometry.tangents, pygltflib.VEC4, False))
    for array, kind, bounds in attributes:
        view = buffer.add(np.ascontiguousarray(array, "<f4").tobytes(), pygltflib.ARRAY_BUFFER)
        accessors.append(pygltflib.Accessor(
            bufferView=view, componentType=pygltflib.FLOAT, count=vertex_count, type=kind,
            min=[float(x) for x in array.min(axis=0)] if bounds else None,
            max=[float(x) for x in array.max(axis=0)] if bounds else None,
        ))
    for faces in groups:
        indices = geometry.faces[faces].reshape(-1)
        view = buffer.add(indices.astype("<u2" if small else "<u4").tobytes(), pygltflib.ELEMENT_ARRAY_BUFFER)
        accessors.append(pygltflib.Accessor(
            bufferView=view, componentType=pygltflib.UNSIGNED_SHORT if small else pygltflib.UNSIGNED_INT,
            count=int(indices.size), type=pygltflib.SCALAR,
        ))
    return accessors


def _material(name: str, normal_map: bool) -> pygltflib.Material:
    """Metallic-roughness material: texture 0 = base colour, texture 1 = ORM, texture 2 = the
    tangent-space normal map when there is one; factors 1."""
    return pygltflib.Material(
        name=name,
        normalTexture=pygltflib.NormalMaterialTexture(index=2, texCoord=0, scale=1.0) if normal_map else None,
        pbrMetallicRoughness=pygltflib.PbrMetallicRoughness(
            baseColorFactor=[1.0, 1.0, 1.0, 1.0],
            baseColorTexture=pygltflib.TextureInfo(index=0, texCoord=0),
            metallicRoughnessTexture=pygltflib.TextureInfo(index=1, texCoord=0),
            metallicFactor=1.0,
            roughnessFactor=1.0,
        ),
        doubleSided=True,
        alphaMode=pygltflib.OPAQUE,
        alphaCutoff=None,
    )


def _gltf_document(
    mesh: MeshData, geometry: Geometry, pngs: dict[str, bytes], names: dict[str, str] | None, bin_name: str | None
) -> tuple[dict[str, Any], bytes]:
    """The glTF JSON (as a dict, without asset.extras) and its binary buffer. With `names`
    (image -> file name) and `bin_name` the images and buffer are external (.gltf);
    without, they live in the buffer (.glb)."""
    buffer = _BinaryBuffer()
    parts = face_groups(mesh)
    materials = list(dict.fromkeys(material for material, _, _ in parts))
    by_material = [np.concatenate([f for m, _, f in parts if m == material]) for material in materials]
    accessors = _accessors(geometry, buffer, by_material)
    normal_map = geometry.tangents is not None
    first_indices = 4 if normal_map else 3
    images = []
    for key, label in (("basecolor", "basecolor"), ("orm", "metallicRoughness"), ("normal", "normal"))[:2 + normal_map]:
        if names is None:
            images.append(pygltflib.Image(name=label, mimeType="image/png", bufferView=buffer.add(pngs[key])))
        else:
            images.append(pygltflib.Image(name=label, mimeType="image/png", uri=quote(names[key])))
    blob = buffer.padded()
    mesh_extras = {"part_names": list(mesh.part_names)} if mesh.part_names else {}
    gltf = pygltflib.GLTF2(
        asset=pygltflib.Asset(version="2.0", generator=GENERATOR),
        scene=0,
        scenes=[pygltflib.Scene(nodes=[0])],
        nodes=[pygltflib.Node(name=mesh.name, mesh=0, translation=[float(c) for c in geometry.centre])],
        meshes=[pygltflib.Mesh(name=mesh.name, extras=mesh_extras, primitives=[pygltflib.Primitive(
            attributes=pygltflib.Attributes(POSITION=0, NORMAL=1, TEXCOORD_0=2, TANGENT=3 if normal_map else None),
            indices=first_indices + k, material=k, mode=pygltflib.TRIANGLES,
        ) for k in range(len(materials))])],  # one primitive per source material, sharing the vertices
        materials=[_material(name, normal_map) for name in materials],
        samplers=[pygltflib.Sampler(
            magFilter=pygltflib.LINEAR, minFilter=pygltflib.LINEAR_MIPMAP_LINEAR,
            wrapS=pygltflib.CLAMP_TO_EDGE, wrapT=pygltflib.CLAMP_TO_EDGE,
        )],
        textures=[pygltflib.Texture(name=img.name, sampler=0, source=i) for i, img in enumerate(images)],
        images=images,
        accessors=accessors,
        bufferViews=buffer.views,
        buffers=[pygltflib.Buffer(byteLength=len(blob), uri=None if bin_name is None else quote(bin_name))],
    )
    # pygltflib drops empty values recursively, so metadata is added after serialisation.
    return json.loads(gltf.to_json()), blob


def glb_bytes(document: Mapping[str, Any], blob: bytes) -> bytes:
    """A GLB container: 12-byte header, JSON chunk (space-padded), BIN chunk (zero-padded)."""
    json_chunk = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    json_chunk += b" " * (-len(json_chunk) % 4)
    blob += b"\0" * (-len(blob) % 4)
    total = 12 + 8 + len(json_chunk) + 8 + len(blob)
    return b"".join([
        struct.pack("<III", _GLB_MAGIC, 2, total),
        struct.pack("<II", len(json_chunk), _GLB_JSON), json_chunk,
        struct.pack("<II", len(blob), _GLB_BIN), blob,
    ])


# ----------------------------------------------------------------------------- writers


# Each returns the bytes of every file in output_files(path), in the same order.


def glb_files(mesh: MeshData, geometry: Geometry, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    document, blob = _gltf_document(mesh, geometry, pngs, names=None, bin_name=None)
    document["asset"]["extras"] = record
    return [json_bytes(record), glb_bytes(document, blob)]


def gltf_files(mesh: MeshData, geometry: Geometry, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    names = companion_names(path, geometry.tangents is not None)
    document, blob = _gltf_document(mesh, geometry, pngs, names=names, bin_name=names["bin"])
    document["asset"]["extras"] = record
    normal = [pngs["normal"]] if geometry.tangents is not None else []
    return [blob, pngs["basecolor"], pngs["orm"], *normal, json_bytes(record), json_bytes(document)]
