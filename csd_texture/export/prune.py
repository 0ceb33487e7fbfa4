"""Drop what the patched document no longer uses: replaced textures and their images, the
accessors of re-written primitives, and their buffer views (so the output does not carry
the old vertex data and images). Only objects the patch orphaned are candidates; anything
still referenced, or never touched by the patch, stays. References are looked up where
glTF 2.0 puts them (plus EXT_mesh_gpu_instancing and texture-source extensions)."""
from __future__ import annotations

from collections.abc import Iterator


def _refs(document: dict, kind: str) -> Iterator[tuple[dict, str]]:
    """(container, key) pairs whose value is an index into document[kind]."""
    if kind == "textures":
        yield from _texture_infos(document.get("materials") or [])
    elif kind == "images":
        for texture in document.get("textures") or []:
            if "source" in texture:
                yield texture, "source"
            for extension in (texture.get("extensions") or {}).values():
                if isinstance(extension, dict) and "source" in extension:
                    yield extension, "source"
    elif kind == "samplers":
        yield from ((texture, "sampler") for texture in document.get("textures") or [] if "sampler" in texture)
    elif kind == "accessors":
        for mesh in document.get("meshes") or []:
            for primitive in mesh["primitives"]:
                yield from ((primitive["attributes"], k) for k in primitive["attributes"])
                if "indices" in primitive:
                    yield primitive, "indices"
                for target in primitive.get("targets") or []:
                    yield from ((target, k) for k in target)
        for skin in document.get("skins") or []:
            if "inverseBindMatrices" in skin:
                yield skin, "inverseBindMatrices"
        for animation in document.get("animations") or []:
            for sampler in animation["samplers"]:
                yield from ((sampler, k) for k in ("input", "output"))
        for node in document.get("nodes") or []:
            instancing = (node.get("extensions") or {}).get("EXT_mesh_gpu_instancing") or {}
            attributes = instancing.get("attributes") or {}
            yield from ((attributes, k) for k in attributes)
    elif kind == "bufferViews":
        for accessor in document.get("accessors") or []:
            if "bufferView" in accessor:
                yield accessor, "bufferView"
            sparse = accessor.get("sparse") or {}
            for part in ("indices", "values"):
                if part in sparse:
                    yield sparse[part], "bufferView"
        for image in document.get("images") or []:
            if "bufferView" in image:
                yield image, "bufferView"


def _texture_infos(node: object) -> Iterator[tuple[dict, str]]:
    """Every textureInfo ({"index": ...} under a key ending in "Texture") inside `node`."""
    if isinstance(node, dict):
        for key, value in node.items():
            if isinstance(value, dict) and key.endswith("Texture") and "index" in value:
                yield value, "index"
            else:
                yield from _texture_infos(value)
    elif isinstance(node, list):
        for value in node:
            yield from _texture_infos(value)


def referenced(document: dict, kind: str) -> set[int]:
    """Indices into document[kind] that something references."""
    return {container[key] for container, key in _refs(document, kind)}


def drop_unused(document: dict, kind: str, candidates: set[int]) -> set[int]:
    """Remove the `candidates` of document[kind] that nothing references any more, renumbering
    every reference; returns the removed indices (as they were)."""
    removed = candidates - referenced(document, kind)
    if not removed:
        return set()
    items = document.get(kind) or []
    remap, kept = {}, []
    for index, item in enumerate(items):
        if index not in removed:
            remap[index] = len(kept)
            kept.append(item)
    for container, key in list(_refs(document, kind)):
        container[key] = remap[container[key]]
    document[kind] = kept
    return removed


def compact_buffer(document: dict, blob: bytes) -> bytes:
    """A new single buffer holding only the document's buffer views (all in buffer 0), each on
    a 4-byte boundary; their byteOffsets are updated."""
    data = bytearray()
    for view in document.get("bufferViews") or []:
        start = view.get("byteOffset", 0)
        data += b"\0" * (-len(data) % 4)
        payload = blob[start : start + view["byteLength"]]
        view["byteOffset"] = len(data)
        data += payload
    return bytes(data)
