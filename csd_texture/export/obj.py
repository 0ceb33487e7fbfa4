"""OBJ + MTL (PBR extension) writer."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from ..datatypes import MeshData
from .files import companion_names, obj_name
from .geometry import Geometry, face_groups
from .metadata import GENERATOR, json_bytes

logger = logging.getLogger(__name__)


def _obj_text(mesh: MeshData, geometry: Geometry, mtl_name: str) -> str:
    """OBJ text: world positions (exact float64), bottom-left UVs, normals, then the faces of
    each source part under its group (`g`) and material (`usemtl`) names, 1-based."""
    corners = np.repeat(geometry.faces.astype(np.int64) + 1, 3, axis=1)
    blocks = []
    for material, group, faces in face_groups(mesh):
        blocks += [f"g {obj_name(group)}\nusemtl {obj_name(material)}\n",
                   _format_rows("f %d/%d/%d %d/%d/%d %d/%d/%d\n", corners[faces])]
    return "".join([
        f"# {GENERATOR}\nmtllib {mtl_name}\no {obj_name(mesh.name)}\n",
        _format_rows("v %.17g %.17g %.17g\n", geometry.world),
        _format_rows("vt %.9g %.9g\n", geometry.uv),
        _format_rows("vn %.9g %.9g %.9g\n", geometry.normals),
        *blocks,
    ])


def _format_rows(line: str, rows: np.ndarray) -> str:
    """`line` (a %-format with one field per column) applied to every row of `rows`."""
    return (line * len(rows)) % tuple(rows.ravel().tolist())


def _mtl_text(materials: list[str], names: dict[str, str]) -> str:
    """MTL with the PBR extension, one material per name, all on the same maps: map_Kd (sRGB),
    map_Pr and map_Pm (linear), and `norm` (the PBR extension's tangent-space normal map) when
    there is one. Not `map_Bump`: readers disagree whether it holds heights or normals."""
    normal = f"norm {names['normal']}\n" if "normal" in names else ""
    return f"# {GENERATOR}\n" + "".join(
        f"newmtl {material}\n"
        "Ka 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nPr 1\nPm 1\n"
        f"map_Kd {names['basecolor']}\nmap_Pr {names['roughness']}\nmap_Pm {names['metallic']}\n{normal}"
        for material in materials
    )


def obj_files(mesh: MeshData, geometry: Geometry, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    normal_map = "normal" in pngs
    names = companion_names(path, normal_map)
    if normal_map:
        logger.warning("%s: OBJ has no tangents; the normal map (MTL `norm`) shows as intended only in readers "
                       "that make MikkTSpace tangents from the UVs (write .glb or .gltf to carry them)", path)
    materials = list(dict.fromkeys(obj_name(material) for material, _, _ in face_groups(mesh)))
    normal = [pngs["normal"]] if normal_map else []
    return [
        _mtl_text(materials, names).encode("utf-8"), pngs["basecolor"], pngs["roughness"], pngs["metallic"], *normal,
        json_bytes(record), _obj_text(mesh, geometry, names["mtl"]).encode("utf-8"),
    ]
