"""The glTF writer for glTF inputs: a patched copy of the source document.

Everything in the source JSON is kept as it was (nodes, hierarchy, TRS/matrices, skins,
animations, morph targets, cameras, lights, extensions, extras, materials' other
properties). What changes: textured materials get new base colour and metallic-roughness
textures (their factors become 1, base colour alpha kept), and with a normal map a new
normalTexture (replacing theirs) and a TANGENT attribute on their primitives, made from the
primitive's own positions, NORMAL and the UVs the maps use; primitives whose UVs were re-made
get new accessors for every vertex attribute and morph target delta, gathered through the
vertex split, a new TEXCOORD_0 and new indices. Kept UVs keep every accessor byte for byte.
All buffer views are copied into one buffer (external images are embedded), new data is
appended after them; the source's own accessors keep their byte offsets.

The source JSON is patched as a dict rather than through pygltflib objects, whose
round trip drops empty objects and re-serialises defaults; tests read the output with pygltflib.
"""
from __future__ import annotations

import copy
import logging
from pathlib import Path
from typing import Any
from urllib.parse import quote

import numpy as np

from ..datatypes import PBRMaps
from ..mesh_io.gltf import DTYPES
from ..mesh_io.scene import SceneUV
from . import prune
from .files import companion_names
from .gltf import glb_bytes
from .images import encode_png, map_images
from .metadata import GENERATOR, json_bytes

logger = logging.getLogger(__name__)

ARRAY_BUFFER, ELEMENT_ARRAY_BUFFER = 34962, 34963
_COMPONENT_TYPES = {np.dtype(v).newbyteorder("<").str: k for k, v in DTYPES.items()}
_TEXTURE_SLOTS = ("baseColorTexture", "metallicRoughnessTexture")


class _Blob:
    """One output buffer: payloads appended as bufferViews on 4-byte boundaries."""

    def __init__(self, views: list[dict]) -> None:
        self.data = bytearray()
        self.views = views

    def place(self, payload: bytes) -> int:
        """Append `payload` on a 4-byte boundary; returns its byte offset."""
        self.data += b"\0" * (-len(self.data) % 4)
        self.data += payload
        return len(self.data) - len(payload)

    def add(self, payload: bytes, target: int | None = None, stride: int | None = None) -> int:
        """Append `payload` as a new bufferView; returns its index."""
        view: dict[str, Any] = {"buffer": 0, "byteOffset": self.place(payload), "byteLength": len(payload)}
        if stride:
            view["byteStride"] = stride
        if target:
            view["target"] = target
        self.views.append(view)
        return len(self.views) - 1


def scene_files(layout: SceneUV, maps: PBRMaps, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    """The bytes of every file in output_files(path) for a .glb or .gltf output of a glTF
    input. A .gltf keeps its images in OUT.bin; OUT_basecolor.png and OUT_metallicRoughness.png
    (and OUT_normal.png) hold the optimiser's whole atlas (every map's tile), for inspection."""
    if path.suffix.lower() == ".glb":
        document, blob = scene_document(layout, maps, None)
        _set_extras(document, record)
        return [json_bytes(record), glb_bytes(document, blob)]
    names = companion_names(path, maps.normal is not None)
    document, blob = scene_document(layout, maps, quote(names["bin"]))
    _set_extras(document, record)
    normal = [pngs["normal"]] if maps.normal is not None else []
    return [blob, pngs["basecolor"], pngs["orm"], *normal, json_bytes(record), json_bytes(document)]


def _set_extras(document: dict, record: dict) -> None:
    """The provenance record in asset.extras, merged over the source's own asset.extras."""
    old = document["asset"].get("extras")
    if old is not None and not isinstance(old, dict):
        logger.warning("the source's asset.extras is not an object; replaced by the csd-texture record")
        old = None
    document["asset"]["extras"] = {**(old or {}), **record}


def scene_document(layout: SceneUV, maps: PBRMaps, bin_uri: str | None) -> tuple[dict, bytes]:
    """The output glTF JSON (without asset.extras) and its single binary buffer."""
    scene = layout.scene
    source = scene.source
    document = copy.deepcopy(scene.document)
    blob = _Blob(document.setdefault("bufferViews", []))
    for index, view in enumerate(document["bufferViews"]):
        view.update(buffer=0, byteOffset=blob.place(source.view_bytes(index)))
    for index, image in enumerate(document.get("images") or []):
        if "uri" in image:
            payload = source.image_bytes(index)
            image.pop("uri")
            image["bufferView"] = blob.add(payload)
            image.setdefault("mimeType", "image/jpeg" if payload[:2] == b"\xff\xd8" else "image/png")
    normal_map = maps.normal is not None
    shifted = _shifted_materials(layout, document)
    old_textures = {info["index"] for m in scene.textured if m is not None for slot, info in
                    (document["materials"][m].get("pbrMetallicRoughness") or {}).items() if slot in _TEXTURE_SLOTS}
    if normal_map:  # ours replaces theirs
        old_textures |= {document["materials"][m]["normalTexture"]["index"] for m in scene.textured
                         if m is not None and "normalTexture" in document["materials"][m]}
    old_accessors = set()
    for key, placed in layout.primitives.items():
        primitive = document["meshes"][key[0]]["primitives"][key[1]]
        tangents = _tangents(source, primitive, placed) if normal_map else None
        if normal_map and tangents is None:
            logger.info("mesh %d primitive %d has no NORMAL; written without TANGENT (readers derive both)", *key)
        if placed.remade:
            old_accessors |= prune.referenced({"meshes": [{"primitives": [primitive]}]}, "accessors")
            _rewrite_primitive(document, source, primitive, placed, blob, shift=primitive.get("material") in shifted,
                               skip=("TANGENT",) if normal_map else ())
        if tangents is not None:
            old_accessors |= {primitive["attributes"]["TANGENT"]} if "TANGENT" in primitive["attributes"] else set()
            primitive["attributes"]["TANGENT"] = _add_accessor(document, blob, tangents, None, ARRAY_BUFFER, "VEC4",
                                                               False)
    _attach_maps(layout, document, maps, blob, shifted)
    data = _without_orphans(document, bytes(blob.data), old_textures, old_accessors)
    document["buffers"] = [{"byteLength": len(data), **({"uri": bin_uri} if bin_uri else {})}]
    document["asset"]["generator"] = GENERATOR
    return document, data + b"\0" * (-len(data) % 4)


def _without_orphans(document: dict, data: bytes, old_textures: set[int], old_accessors: set[int]) -> bytes:
    """Drop the replaced textures, their images and samplers, the re-written primitives' old accessors and
    their buffer views when nothing else uses them; returns the compacted buffer."""
    images = {document["textures"][t].get("source") for t in old_textures} - {None}
    samplers = {document["textures"][t].get("sampler") for t in old_textures} - {None}
    views = {document["images"][i].get("bufferView") for i in images}
    for a in old_accessors:
        accessor = document["accessors"][a]
        sparse = accessor.get("sparse") or {}
        views |= {accessor.get("bufferView")} | {sparse[p]["bufferView"] for p in ("indices", "values") if p in sparse}
    prune.drop_unused(document, "textures", old_textures)
    prune.drop_unused(document, "images", images)
    prune.drop_unused(document, "samplers", samplers)
    prune.drop_unused(document, "accessors", old_accessors)
    if prune.drop_unused(document, "bufferViews", views - {None}):
        return prune.compact_buffer(document, data)
    return data


def _shifted_materials(layout: SceneUV, document: dict) -> set[int | None]:
    """Textured materials with re-made UVs that keep other textures (normal, occlusion,
    emissive, extensions): their primitives' old TEXCOORD_n move to TEXCOORD_n+1 so those
    textures still find them, and the new UVs become TEXCOORD_0."""
    remade = {document["meshes"][k[0]]["primitives"][k[1]].get("material")
              for k, p in layout.primitives.items() if p.remade}
    shifted = set()
    for material in remade:
        if material is not None and _other_textures(document["materials"][material]):
            shifted.add(material)
    return shifted


def _other_textures(node: Any, top: bool = True) -> list[dict]:
    """Every textureInfo object in a material except base colour and metallic-roughness."""
    found = []
    if isinstance(node, dict):
        for name, value in node.items():
            if top and name == "pbrMetallicRoughness" and isinstance(value, dict):
                value = {k: v for k, v in value.items() if k not in _TEXTURE_SLOTS}
            if isinstance(value, dict) and "index" in value and name.endswith("Texture"):
                found.append(value)
            else:
                found.extend(_other_textures(value, top=False))
    elif isinstance(node, list):
        for value in node:
            found.extend(_other_textures(value, top=False))
    return found


def _add_accessor(document: dict, blob: _Blob, values: np.ndarray, like: dict | None, target: int,
                  kind: str, bounds: bool) -> int:
    """Append (N, C) `values` as a new accessor (component type of `values`, or `like`'s
    normalized flag and type); rows are padded to 4 bytes as vertex attributes require."""
    values = np.ascontiguousarray(values.astype(values.dtype.newbyteorder("<")))
    row = values.dtype.itemsize * values.shape[1]
    stride = None
    payload = values.tobytes()
    if target == ARRAY_BUFFER and row % 4:
        stride = row + (-row % 4)
        padded = np.zeros((len(values), stride), np.uint8)
        padded[:, :row] = values.view(np.uint8).reshape(len(values), row)
        payload = padded.tobytes()
    accessor: dict[str, Any] = {
        "bufferView": blob.add(payload, target, stride),
        "componentType": _COMPONENT_TYPES[values.dtype.str],
        "count": len(values),
        "type": kind,
    }
    if like is not None and like.get("normalized"):
        accessor["normalized"] = True
    if bounds and len(values):
        cast = float if values.dtype.kind == "f" else int
        accessor["min"] = [cast(x) for x in values.min(axis=0)]
        accessor["max"] = [cast(x) for x in values.max(axis=0)]
    document["accessors"].append(accessor)
    return len(document["accessors"]) - 1


def _gathered(document: dict, source, blob: _Blob, accessor_index: int, vmapping: np.ndarray) -> int:
    """A new accessor holding the source accessor's rows at `vmapping` (a vertex split)."""
    like = source.document["accessors"][accessor_index]
    values = source.accessor(accessor_index)[vmapping]
    return _add_accessor(document, blob, values, like, ARRAY_BUFFER, like["type"], "min" in like and "max" in like)


def _rewrite_primitive(document: dict, source, primitive: dict, placed, blob: _Blob, shift: bool,
                       skip: tuple[str, ...] = ()) -> None:
    """New accessors for a primitive with re-made UVs: every attribute (but those in `skip`, which
    the caller re-makes) and morph target gathered through `placed.vmapping`, the new TEXCOORD_0
    (glTF's top-left origin) and TRIANGLES indices."""
    attributes = {}
    for name, index in primitive["attributes"].items():
        if name in skip:
            continue
        if shift and name.startswith("TEXCOORD_"):
            name = f"TEXCOORD_{int(name.split('_')[1]) + 1}"
        elif name == "TEXCOORD_0":
            continue  # replaced by the new UVs
        attributes[name] = _gathered(document, source, blob, index, placed.vmapping)
    texcoord = np.stack([placed.uv[:, 0], 1.0 - placed.uv[:, 1]], axis=1).astype(np.float32)
    attributes["TEXCOORD_0"] = _add_accessor(document, blob, texcoord, None, ARRAY_BUFFER, "VEC2", False)
    primitive["attributes"] = attributes
    if primitive.get("targets"):
        primitive["targets"] = [{name: _gathered(document, source, blob, index, placed.vmapping)
                                 for name, index in target.items()} for target in primitive["targets"]]
    small = len(placed.vmapping) <= 0xFFFF  # 65535 is the primitive-restart value
    indices = placed.faces.reshape(-1, 1).astype(np.uint16 if small else np.uint32)
    primitive["indices"] = _add_accessor(document, blob, indices, None, ELEMENT_ARRAY_BUFFER, "SCALAR", False)
    primitive["mode"] = 4


def _tangents(source, primitive: dict, placed) -> np.ndarray | None:
    """(N, 4) float32 TANGENT values (render.tangents' convention) of a primitive's new vertices for
    the UVs the maps use, from its source POSITION and NORMAL (its own space) gathered through
    `placed.vmapping`; None without NORMAL (glTF readers then make flat normals and ignore tangents)."""
    from ..render.tangents import vertex_tangents

    attributes = primitive["attributes"]
    if "NORMAL" not in attributes:
        return None
    positions = source.accessor_float(attributes["POSITION"])[placed.vmapping]
    normals = source.accessor_float(attributes["NORMAL"])[placed.vmapping]
    normals = normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-20)
    return vertex_tangents(positions, placed.faces, normals, placed.uv)


def _attach_maps(layout: SceneUV, document: dict, maps: PBRMaps, blob: _Blob, shifted: set[int | None]) -> None:
    """One base colour and one ORM texture per group (cropped from the optimiser's atlas), and a
    normal texture with a normal map; the group's materials point at them."""
    document.setdefault("samplers", []).append(
        {"magFilter": 9729, "minFilter": 9987, "wrapS": 33071, "wrapT": 33071}  # linear, trilinear, clamp
    )
    sampler = len(document["samplers"]) - 1
    texcoords = {}
    for key, placed in layout.primitives.items():
        texcoords[document["meshes"][key[0]]["primitives"][key[1]].get("material")] = placed.texcoord
    for group, materials in enumerate(layout.groups):
        images = map_images(_tile(maps, group, layout.grid), bits=8)
        textures = {}
        slots = [("baseColorTexture", "basecolor"), ("metallicRoughnessTexture", "orm")]
        for slot, key in slots + ([("normalTexture", "normal")] if maps.normal is not None else []):
            name = f"{'_'.join(layout.scene.material_name(m) for m in materials)}_{key}"
            document.setdefault("images", []).append(
                {"name": name, "mimeType": "image/png", "bufferView": blob.add(encode_png(images[key]))})
            document.setdefault("textures", []).append({"sampler": sampler, "source": len(document["images"]) - 1})
            textures[slot] = len(document["textures"]) - 1
        for material in materials:
            target = _material(document, material, layout)
            pbr = target.setdefault("pbrMetallicRoughness", {})
            alpha = (pbr.get("baseColorFactor") or [1.0, 1.0, 1.0, 1.0])[3]
            pbr["baseColorFactor"] = [1.0, 1.0, 1.0, alpha]
            pbr["metallicFactor"] = 1.0
            pbr["roughnessFactor"] = 1.0
            for slot, texture in textures.items():
                if slot == "normalTexture":
                    continue
                old = pbr.get(slot) or {}
                if "extensions" in old:
                    logger.warning("material %r: %s had %s; dropped (the new map is baked for the new UVs)",
                                   target.get("name"), slot, ", ".join(old["extensions"]))
                pbr[slot] = {"index": texture, "texCoord": texcoords.get(material, 0)}
            if material in shifted:
                for info in _other_textures(target):
                    info["texCoord"] = info.get("texCoord", 0) + 1
            if "normalTexture" in textures:  # after the shift: it is made for the new UVs
                if "normalTexture" in target:
                    logger.warning("material %r: its normal map is replaced by the optimised one", target.get("name"))
                target["normalTexture"] = {"index": textures["normalTexture"], "texCoord": texcoords.get(material, 0),
                                           "scale": 1.0}


def _material(document: dict, material: int | None, layout: SceneUV) -> dict:
    """The material dict to patch; primitives without a material get a new one."""
    if material is not None:
        return document["materials"][material]
    document.setdefault("materials", []).append({"name": "csd_texture"})
    new = len(document["materials"]) - 1
    for key in layout.primitives:
        primitive = document["meshes"][key[0]]["primitives"][key[1]]
        if primitive.get("material") is None:
            primitive["material"] = new
    return document["materials"][new]


def _tile(maps: PBRMaps, group: int, grid: int) -> PBRMaps:
    """Group `group`'s tile of the atlas: column group % grid, row group // grid from the
    bottom (v = 0); map rows run from the top."""
    size = maps.albedo.shape[0] // grid
    column, row = group % grid, group // grid
    rows = slice((grid - 1 - row) * size, (grid - row) * size)
    cols = slice(column * size, (column + 1) * size)
    return PBRMaps(maps.albedo[rows, cols], maps.roughness[rows, cols], maps.metallic[rows, cols],
                   maps.coverage[rows, cols], None if maps.normal is None else maps.normal[rows, cols])


def scene_record(layout: SceneUV) -> dict[str, Any]:
    """What the output keeps from the source and what it re-makes (for the JSON record)."""
    document = layout.scene.document
    count = {kind: len(document.get(kind) or []) for kind in
             ("scenes", "nodes", "meshes", "skins", "animations", "cameras", "materials")}
    lights = len(((document.get("extensions") or {}).get("KHR_lights_punctual") or {}).get("lights") or [])
    targets = sum(len(p.get("targets") or []) for m in document.get("meshes") or [] for p in m["primitives"])
    remade = sorted(f"mesh {k[0]} primitive {k[1]}" for k, p in layout.primitives.items() if p.remade)
    kept_uv = sorted(f"mesh {k[0]} primitive {k[1]}" for k, p in layout.primitives.items() if not p.remade)
    name = layout.scene.material_name
    return {
        "kept": {**count, "lights": lights, "morph_targets": targets, "instances": len(layout.scene.instances),
                 "extensions": list(document.get("extensionsUsed") or []),
                 "materials_untouched": [name(m) for m in layout.scene.untouched],
                 "uvs_kept": kept_uv},
        "remade": {"materials_textured": [name(m) for m in layout.scene.textured],
                   "atlas": "shared" if len(layout.groups) == 1 and len(layout.groups[0]) > 1 else "per-material",
                   "maps": len(layout.groups), "uvs_remade": remade},
    }
