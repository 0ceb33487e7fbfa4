"""Any supported mesh file or trimesh object -> validated, normalised MeshData.

The stages, in order (one module each: parse, confine, flatten, repair):

1. read the bytes and check the format's signature, so garbage is refused fast;
2. check every reference the file makes (glTF ``uri``, OBJ ``mtllib``/``map_Kd``): only
   relative paths inside the asset's folder and ``data:`` URIs are followed; trimesh parses
   from memory with a resolver confined to that folder, so nothing else is ever opened;
3. flatten the scene: every triangle primitive, in world space (node transforms applied);
4. repair what can be repaired (with a warning) and refuse what cannot (one-line error);
5. normalise into the box [-1, 1]^3, keeping the float64 ``to_source`` that maps back.
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import trimesh

from ..datatypes import MeshData
from ..errors import ConfigError, MeshLoadError
from .flatten import flatten_scene
from .parse import SUPPORTED_EXTENSIONS, load_file
from .repair import build_mesh_data

_AXES = {"x": 0, "y": 1, "z": 2}
_DEFAULT_UP = "y"  # glTF is +Y up by definition; OBJ/PLY/STL/OFF have no convention, so +Y unless told


def is_mesh_file(path: str | Path) -> bool:
    """True for an existing regular file whose extension csd-texture can load."""
    path = Path(path)
    return path.suffix.lower() in SUPPORTED_EXTENSIONS and path.is_file() and not path.name.startswith("._")


def load_mesh(
    source: str | Path | trimesh.Trimesh | trimesh.Scene,
    up_axis: str | None = None,
    name: str | None = None,
) -> MeshData:
    """Load, validate, repair and normalise a mesh file or trimesh object.

    All triangle geometry of a scene is merged in world space; the result fits [-1, 1]^3
    (longest side 2, centred) and ``to_source`` maps it back to the input's coordinates.
    ``up_axis`` ("x", "y", "z", "-z", ...) sets ``MeshData.up_axis``; the default is +Y.
    Raises MeshLoadError / MeshValidationError (one line naming the file) for unusable
    input and UnsafeReferenceError for references outside the asset's folder.
    """
    up = parse_up_axis(up_axis)
    if isinstance(source, (trimesh.Trimesh, trimesh.Scene)):
        label = name or str(source.metadata.get("name") or "mesh")
        scene = source if isinstance(source, trimesh.Scene) else trimesh.Scene(source)
        default_name = label
    elif isinstance(source, (str, Path)):
        path = Path(source)
        label = str(path)
        scene = load_file(path, label)
        default_name = path.stem
    else:
        raise MeshLoadError(f"cannot load a mesh from a {type(source).__name__}: pass a file path or a trimesh object")
    parts = flatten_scene(scene, label, default_name)
    return build_mesh_data(parts, label, name or default_name, up)


def parse_up_axis(value: str | Sequence[float] | None) -> tuple[float, float, float]:
    """"x", "+y", "-z" ... or a 3-vector -> unit vector; None -> +Y."""
    if value is None:
        value = _DEFAULT_UP
    if isinstance(value, str):
        text = value.strip().lower()
        sign = -1.0 if text.startswith("-") else 1.0
        axis = text.lstrip("+-")
        if axis not in _AXES or len(text) - len(axis) > 1:
            raise ConfigError(f"invalid up_axis {value!r}: use x, y, z, -x, -y or -z")
        vec = [0.0, 0.0, 0.0]
        vec[_AXES[axis]] = sign
        return (vec[0], vec[1], vec[2])
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    norm = float(np.linalg.norm(arr)) if arr.size == 3 else 0.0
    if not np.isfinite(norm) or norm == 0.0:
        raise ConfigError(f"invalid up_axis {value!r}: use x, y, z, -x, -y, -z or a non-zero 3-vector")
    return tuple(float(x) for x in arr / norm)  # type: ignore[return-value]



__all__ = ["SUPPORTED_EXTENSIONS", "is_mesh_file", "load_mesh", "parse_up_axis"]

