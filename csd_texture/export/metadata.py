"""Provenance: the record every output carries (glTF ``asset.extras`` and the JSON sidecar)."""
from __future__ import annotations

import dataclasses
import datetime
import enum
import json
import math
from collections.abc import Mapping
from pathlib import Path, PurePath
from typing import Any

import numpy as np
import pygltflib

from ..errors import InputError
from ..version import __version__
from .files import SUPPORTED_SUFFIXES, SUPPORTED_TEXT, sidecar_path

GENERATOR = f"csd-texture {__version__}"


def to_jsonable(value: Any) -> Any:
    """A JSON-safe copy of `value`: numpy/torch values become lists or numbers, paths and
    unknown objects strings, dataclasses dicts; non-finite floats become "nan"/"inf"."""
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, np.generic):
        return to_jsonable(value.item())
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, (set, frozenset)):
        return [to_jsonable(v) for v in sorted(value, key=repr)]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return to_jsonable({f.name: getattr(value, f.name) for f in dataclasses.fields(value)})
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value)
    if isinstance(value, (datetime.date, datetime.time)):
        return value.isoformat()
    if hasattr(value, "tolist"):  # numpy arrays, torch tensors
        return to_jsonable(value.tolist())
    return str(value)


def provenance(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The record written to asset.extras and the sidecar: the generator plus `metadata`."""
    return {"generator": GENERATOR, **to_jsonable(dict(metadata))}



def read_metadata(path: Path) -> dict[str, Any]:
    """The provenance record of an output: ``asset.extras`` of a .glb/.gltf (falling back to
    the sidecar), or the sidecar of an .obj. Raises InputError when there is none."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: cannot read metadata from '{suffix}' files; use one of {SUPPORTED_TEXT}")
    if suffix in (".glb", ".gltf"):
        extras = _read_asset_extras(path)
        if extras:
            return extras
    sidecar = sidecar_path(path)
    if sidecar.is_file():
        try:
            record = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise InputError(f"{sidecar}: cannot read metadata sidecar: {exc}") from exc
        if isinstance(record, dict) and record:
            return record
    raise InputError(
        f"{path}: no csd-texture metadata (no asset.extras and no sidecar {sidecar.name}); "
        "was it written by csd-texture?"
    )


def _read_asset_extras(path: Path) -> dict[str, Any]:
    """asset.extras of a glTF or GLB file ({} when absent)."""
    try:
        gltf = pygltflib.GLTF2().load(str(path))
    except Exception as exc:  # pygltflib raises many kinds on corrupt input
        raise InputError(f"{path}: not a readable glTF/GLB file: {exc}") from exc
    if gltf is None:
        raise InputError(f"{path}: not a readable glTF/GLB file")
    extras = gltf.asset.extras
    return dict(extras) if isinstance(extras, dict) else {}


def json_bytes(document: Mapping[str, Any]) -> bytes:
    """Strict (no NaN) UTF-8 JSON."""
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8")
