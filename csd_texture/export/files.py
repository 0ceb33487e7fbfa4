"""Which files an output path means: the main file, its companions and the JSON sidecar."""
from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path

from ..errors import InputError

SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj")
SUPPORTED_TEXT = ", ".join(SUPPORTED_SUFFIXES)


def sidecar_path(path: Path) -> Path:
    """The JSON metadata sidecar of an output: ``OUT.glb`` -> ``OUT.json``."""
    return Path(path).with_suffix(".json")


def companion_names(path: Path, normal_map: bool = False) -> dict[str, str]:
    """File names written beside OUT.gltf / OUT.obj (besides the sidecar), with OUT_normal.png
    when the maps have a normal map; OBJ/MTL statements are whitespace-separated, so OBJ
    companions get no spaces."""
    stem = path.stem
    if path.suffix.lower() == ".gltf":
        names = {"bin": f"{stem}.bin", "basecolor": f"{stem}_basecolor.png", "orm": f"{stem}_metallicRoughness.png"}
    elif path.suffix.lower() == ".obj":
        stem = obj_name(stem)
        names = {
            "mtl": f"{stem}.mtl", "basecolor": f"{stem}_basecolor.png",
            "roughness": f"{stem}_roughness.png", "metallic": f"{stem}_metallic.png",
        }
    else:
        return {}
    return {**names, "normal": f"{stem}_normal.png"} if normal_map else names


def output_files(path: Path, normal_map: bool = False) -> list[Path]:
    """Every file export_textured_mesh(…, path, …) writes, the main file last (`normal_map`: for
    maps with a normal map)."""
    path = Path(path)
    return [path.with_name(n) for n in companion_names(path, normal_map).values()] + [sidecar_path(path), path]


def check_not_overwriting(path: Path, inputs: Iterable[Path | str]) -> None:
    """Raise InputError if writing `path` (or its companions, a normal map's too) would replace one of `inputs`."""
    protected = {Path(p).resolve() for p in inputs}
    for target in output_files(path, normal_map=True):
        if target.resolve() in protected:
            raise InputError(f"{target}: refusing to overwrite an input file; choose another output path")



def obj_name(name: str) -> str:
    """A name safe for OBJ/MTL statements (no whitespace)."""
    return re.sub(r"\s+", "_", name.strip()) or "mesh"
