"""OBJ + MTL (PBR extension) writer."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..datatypes import MeshData
from .files import companion_names, obj_name
from .geometry import Geometry
from .metadata import GENERATOR, json_bytes


def _obj_text(mesh: MeshData, geometry: Geometry, mtl_name: str, material: str) -> str:
    """OBJ text: world positions (exact float64), bottom-left UVs, normals, 1-based faces."""
    corners = np.repeat(geometry.faces.astype(np.int64) + 1, 3, axis=1)
    return "".join([
        f"# {GENERATOR}\nmtllib {mtl_name}\no {obj_name(mesh.name)}\n",
        _format_rows("v %.17g %.17g %.17g\n", geometry.world),
        _format_rows("vt %.9g %.9g\n", geometry.uv),
        _format_rows("vn %.9g %.9g %.9g\n", geometry.normals),
        f"usemtl {material}\n",
        _format_rows("f %d/%d/%d %d/%d/%d %d/%d/%d\n", corners),
    ])


def _format_rows(line: str, rows: np.ndarray) -> str:
    """`line` (a %-format with one field per column) applied to every row of `rows`."""
    return (line * len(rows)) % tuple(rows.ravel().tolist())


def _mtl_text(material: str, names: dict[str, str]) -> str:
    """MTL with the PBR extension: map_Kd (sRGB), map_Pr and map_Pm (linear)."""
    return (
        f"# {GENERATOR}\nnewmtl {material}\n"
        "Ka 0 0 0\nKd 1 1 1\nKs 0 0 0\nd 1\nillum 1\nPr 1\nPm 1\n"
        f"map_Kd {names['basecolor']}\nmap_Pr {names['roughness']}\nmap_Pm {names['metallic']}\n"
    )



def obj_files(mesh: MeshData, geometry: Geometry, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    names = companion_names(path)
    material = f"{obj_name(mesh.name)}_material"
    return [
        _mtl_text(material, names).encode("utf-8"), pngs["basecolor"], pngs["roughness"], pngs["metallic"],
        json_bytes(record), _obj_text(mesh, geometry, names["mtl"], material).encode("utf-8"),
    ]
