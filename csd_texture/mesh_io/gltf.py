"""The source glTF of a .gltf/.glb input, kept whole: its JSON, its buffers, and numpy views of
its accessors (strided, sparse and normalised accessors included).

pygltflib parses and writes glTF JSON but does not decode accessor data, so that part is
hand-written here (about 40 lines) rather than pulled in from another library.
"""
from __future__ import annotations

import base64
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .confine import FolderResolver
from .parse import read_gltf_document

COMPONENTS = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT2": 4, "MAT3": 9, "MAT4": 16}
DTYPES = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32, 5126: np.float32}
TRIANGLES, TRIANGLE_STRIP, TRIANGLE_FAN = 4, 5, 6


@dataclass(frozen=True)
class GltfSource:
    """A parsed glTF: `document` is the source JSON (never modified), `buffers` the bytes of
    each buffer, `resolver` reads external images from the asset's folder only."""

    path: Path
    document: dict
    buffers: list[bytes]
    resolver: FolderResolver

    @classmethod
    def read(cls, path: str | Path) -> GltfSource:
        path = Path(path)
        document, buffers, resolver = read_gltf_document(path, str(path))
        return cls(path, document, buffers, resolver)

    def view_bytes(self, index: int) -> bytes:
        """The bytes of bufferView `index`."""
        view = self.document["bufferViews"][index]
        start = view.get("byteOffset", 0)
        return self.buffers[view["buffer"]][start : start + view["byteLength"]]

    def image_bytes(self, index: int) -> bytes:
        """The encoded bytes of image `index` (bufferView, data URI or a file in the asset's folder)."""
        image = self.document["images"][index]
        if "bufferView" in image:
            return self.view_bytes(image["bufferView"])
        uri = image.get("uri", "")
        if uri.startswith("data:"):
            return base64.b64decode(uri.split(",", 1)[1])
        return self.resolver.get(uri)

    def accessor(self, index: int) -> np.ndarray:
        """(count, components) raw values of accessor `index` in its own component type
        (sparse substitutions applied; zeros where it has no bufferView)."""
        accessor = self.document["accessors"][index]
        dtype = np.dtype(DTYPES[accessor["componentType"]]).newbyteorder("<")
        width, count = COMPONENTS[accessor["type"]], int(accessor["count"])
        values = np.zeros((count, width), dtype)
        if "bufferView" in accessor:
            view = self.document["bufferViews"][accessor["bufferView"]]
            stride = view.get("byteStride") or dtype.itemsize * width
            start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
            raw = np.frombuffer(self.buffers[view["buffer"]], np.uint8)
            if count:
                rows = np.lib.stride_tricks.as_strided(raw[start:], (count, dtype.itemsize * width), (stride, 1))
                values = rows.copy().view(dtype).reshape(count, width)
        sparse = accessor.get("sparse")
        if sparse:
            values = values.copy()
            at = _typed(self, sparse["indices"], np.dtype(DTYPES[sparse["indices"]["componentType"]]), sparse["count"], 1)
            values[at[:, 0].astype(np.int64)] = _typed(self, sparse["values"], dtype, sparse["count"], width)
        return values

    def accessor_float(self, index: int) -> np.ndarray:
        """(count, components) float64 values of accessor `index`, normalised integers mapped to [0, 1] / [-1, 1]."""
        values = self.accessor(index)
        if not self.document["accessors"][index].get("normalized") or values.dtype.kind == "f":
            return values.astype(np.float64)
        top = float(np.iinfo(values.dtype).max)
        return np.maximum(values.astype(np.float64) / top, -1.0)

    def triangles(self, primitive: dict) -> np.ndarray | None:
        """(F, 3) int64 vertex indices of a triangle, strip or fan primitive; None for points/lines."""
        mode = primitive.get("mode", TRIANGLES)
        if mode not in (TRIANGLES, TRIANGLE_STRIP, TRIANGLE_FAN):
            return None
        if "indices" in primitive:
            order = self.accessor(primitive["indices"])[:, 0].astype(np.int64)
        else:
            order = np.arange(self.document["accessors"][primitive["attributes"]["POSITION"]]["count"])
        if mode == TRIANGLES:
            return order[: len(order) // 3 * 3].reshape(-1, 3)
        if len(order) < 3:
            return np.zeros((0, 3), np.int64)
        if mode == TRIANGLE_FAN:
            return np.stack([np.full(len(order) - 2, order[0]), order[1:-1], order[2:]], axis=1)
        strip = np.stack([order[:-2], order[1:-1], order[2:]], axis=1)
        strip[1::2] = strip[1::2][:, [1, 0, 2]]  # every other strip triangle is wound the other way
        return strip


def _typed(source: GltfSource, part: dict, dtype: np.dtype, count: int, width: int) -> np.ndarray:
    """(count, width) tightly packed values of a sparse accessor's indices or values."""
    view = source.document["bufferViews"][part["bufferView"]]
    start = view.get("byteOffset", 0) + part.get("byteOffset", 0)
    data = np.frombuffer(source.buffers[view["buffer"]], dtype, count * width, start)
    return data.reshape(count, width)

