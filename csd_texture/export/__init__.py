"""Write textured meshes as glTF 2.0 (.glb / .gltf) or OBJ+MTL, plus standalone PBR maps.

Conventions (DESIGN.md): positions are written in the input's world space
(``MeshData.world_vertices``), relative to the bounding-box centre as float32 with the
centre in the node's ``translation``, so assets far from the origin keep their precision.
UVs are bottom-left in MeshData and OBJ; glTF gets ``(u, 1 - v)``. Map arrays have row 0
at the top, which is a PNG's first row. Albedo is linear and written as sRGB base colour;
roughness and metallic are linear and packed as glTF wants (G = roughness, B = metallic,
R = occlusion = 1). Every output records its provenance in ``asset.extras`` (glTF) and in a
JSON sidecar ``OUT.json``; all files are written atomically (see ``fileio``).

Modules: ``files`` (output paths), ``metadata`` (provenance), ``images`` (map images and PNG),
``geometry`` (world-space arrays), ``gltf`` and ``obj`` (the writers).
"""
from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

from ..datatypes import MeshData, PBRMaps
from ..errors import ExportError
from ..fileio import atomic_outputs
from ..mesh_io.scene import SceneUV
from .files import (
    SUPPORTED_SUFFIXES,
    SUPPORTED_TEXT,
    check_not_overwriting,
    output_files,
    sidecar_path,
)
from .geometry import world_geometry
from .gltf import glb_files, gltf_files
from .images import MAP_NAMES, encode_png, linear_to_srgb, map_images, save_maps
from .metadata import GENERATOR, provenance, read_metadata, to_jsonable
from .obj import obj_files
from .scene import scene_files, scene_record

logger = logging.getLogger(__name__)


def _recorded_inputs(metadata: Mapping[str, Any]) -> list[Path]:
    """The input file(s) recorded under metadata["input"], if any."""
    inputs = metadata.get("input")
    if inputs is None:
        return []
    if isinstance(inputs, (str, PurePath)):
        return [Path(inputs)]
    return [Path(p) for p in inputs]


_FORMATS = {".glb": glb_files, ".gltf": gltf_files, ".obj": obj_files}


def export_textured_mesh(mesh: MeshData, maps: PBRMaps, path: Path, metadata: dict,
                         scene: SceneUV | None = None) -> Path:
    """Write `mesh` with `maps` to `path`; the extension picks the format.

    With `scene` (a glTF input kept whole) a .glb/.gltf output is the source document patched
    by ``export.scene`` (its scene graph, skins, animations, materials... kept; new maps per
    group of materials); an .obj output gets the flattened `mesh`, with a warning naming
    what OBJ cannot hold.

    .glb: one file, images embedded. .gltf: OUT.gltf + OUT.bin + OUT_basecolor.png +
    OUT_metallicRoughness.png. .obj: OUT.obj + OUT.mtl + OUT_basecolor.png +
    OUT_roughness.png + OUT_metallic.png (spaces in an OBJ's companion names become _).
    Every format also gets the sidecar OUT.json;
    glTF files carry the same record in asset.extras. glTF images are 8-bit PNG.
    Files listed under ``metadata["input"]`` (a path or a list of paths) are never
    overwritten. Returns `path`; raises ExportError (or InputError) and leaves no partial
    output on failure.
    """
    path = Path(path)
    build = _FORMATS.get(path.suffix.lower())
    if build is None:
        raise ExportError(f"{path}: unsupported output format '{path.suffix}'; use one of {SUPPORTED_TEXT}")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder; give an output file name ending in {SUPPORTED_TEXT}")
    check_not_overwriting(path, _recorded_inputs(metadata))
    geometry = world_geometry(mesh, with_tangents=maps.normal is not None)
    pngs = {name: encode_png(image) for name, image in map_images(maps, bits=8).items()}
    record = provenance(metadata)
    if scene is not None and path.suffix.lower() != ".obj":
        payloads = scene_files(scene, maps, pngs, record, path)
    else:
        if scene is not None:
            _warn_flattened(scene, path)
        payloads = build(mesh, geometry, pngs, record, path)
    try:
        with atomic_outputs(output_files(path, maps.normal is not None)) as temps:
            for temp, payload in zip(temps, payloads, strict=True):
                temp.write_bytes(payload)
    except OSError as exc:
        raise ExportError(f"{path}: cannot write output: {exc}") from exc
    height, width = maps.albedo.shape[:2]
    logger.info("wrote %s (%d vertices, %d faces, %dx%d maps)", path, len(geometry.world), mesh.num_faces,
                width, height)
    return path


def _warn_flattened(scene: SceneUV, path: Path) -> None:
    """Name what an OBJ output of a glTF scene drops."""
    record = scene_record(scene)["kept"]
    lost = [f"{record[k]} {k}" for k in ("nodes", "skins", "animations", "morph_targets", "cameras", "lights")
            if record[k]]
    logger.warning("%s: OBJ holds one flattened mesh in its default pose; not kept: %s, materials %s "
                   "(write .glb or .gltf to keep them)", path, ", ".join(lost) or "nothing else",
                   ", ".join(scene_record(scene)["remade"]["materials_textured"] + record["materials_untouched"]))


__all__ = [
    "GENERATOR", "MAP_NAMES", "SUPPORTED_SUFFIXES", "check_not_overwriting", "encode_png", "export_textured_mesh",
    "linear_to_srgb", "map_images", "output_files", "read_metadata", "save_maps", "scene_record", "sidecar_path",
    "to_jsonable",
]
