"""Write textured meshes as glTF 2.0 (.glb / .gltf) or OBJ+MTL, plus standalone PBR maps.

Conventions (DESIGN.md): positions are written in the input's world space
(``MeshData.world_vertices``), relative to the bounding-box centre as float32 with the
centre in the node's ``translation``, so assets far from the origin keep their precision.
UVs are bottom-left in MeshData and OBJ; glTF gets ``(u, 1 - v)``. Map arrays have row 0
at the top, which is a PNG's first row. Albedo is linear and written as sRGB base colour;
roughness and metallic are linear and packed as glTF wants (G = roughness, B = metallic,
R = occlusion = 1). Every output records its provenance in ``asset.extras`` (glTF) and in a
JSON sidecar ``OUT.json``; all files are written atomically (see ``fileio``).
"""
from __future__ import annotations

import dataclasses
import datetime
import enum
import io
import json
import logging
import math
import re
import struct
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path, PurePath
from typing import Any
from urllib.parse import quote

import numpy as np
import pygltflib
from PIL import Image

from .datatypes import MeshData, PBRMaps
from .errors import ExportError, InputError
from .fileio import atomic_outputs
from .version import __version__

logger = logging.getLogger(__name__)

GENERATOR = f"csd-texture {__version__}"
SUPPORTED_SUFFIXES = (".glb", ".gltf", ".obj")
_SUPPORTED = ", ".join(SUPPORTED_SUFFIXES)
MAP_NAMES = ("basecolor", "roughness", "metallic", "orm")

_GLB_MAGIC, _GLB_JSON, _GLB_BIN = 0x46546C67, 0x4E4F534A, 0x004E4942


# ----------------------------------------------------------------------------- metadata


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


def _provenance(metadata: Mapping[str, Any]) -> dict[str, Any]:
    """The record written to asset.extras and the sidecar: the generator plus `metadata`."""
    return {"generator": GENERATOR, **to_jsonable(dict(metadata))}


def sidecar_path(path: Path) -> Path:
    """The JSON metadata sidecar of an output: ``OUT.glb`` -> ``OUT.json``."""
    return Path(path).with_suffix(".json")


def read_metadata(path: Path) -> dict[str, Any]:
    """The provenance record of an output: ``asset.extras`` of a .glb/.gltf (falling back to
    the sidecar), or the sidecar of an .obj. Raises InputError when there is none."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file")
    suffix = path.suffix.lower()
    if suffix not in SUPPORTED_SUFFIXES:
        raise InputError(f"{path}: cannot read metadata from '{suffix}' files; use one of {_SUPPORTED}")
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


# ----------------------------------------------------------------------------- images


def linear_to_srgb(x: np.ndarray) -> np.ndarray:
    """The exact sRGB transfer function (IEC 61966-2-1), as kornia.color.linear_rgb_to_rgb."""
    x = np.clip(x, 0.0, 1.0)
    return np.where(x <= 0.0031308, 12.92 * x, 1.055 * np.power(x, 1.0 / 2.4) - 0.055)


def _quantize(x: np.ndarray, bits: int) -> np.ndarray:
    """[0, 1] floats -> uint8 (bits=8) or uint16 (bits=16), rounded to nearest."""
    top = (1 << bits) - 1
    dtype = np.uint8 if bits == 8 else np.uint16
    return np.round(np.clip(x, 0.0, 1.0) * top).astype(dtype)


def _check_maps(maps: PBRMaps) -> tuple[int, int]:
    """Validate map shapes and values; returns (H, W)."""
    albedo = np.asarray(maps.albedo)
    if albedo.ndim != 3 or albedo.shape[2] != 3:
        raise ExportError(f"PBRMaps.albedo must be (H, W, 3), got {albedo.shape}")
    height, width = albedo.shape[:2]
    for name in ("roughness", "metallic"):
        shape = np.shape(getattr(maps, name))
        if shape not in ((height, width), (height, width, 1)):
            raise ExportError(f"PBRMaps.{name} must be ({height}, {width}, 1) like albedo, got {shape}")
    for name in ("albedo", "roughness", "metallic"):
        if not np.all(np.isfinite(getattr(maps, name))):
            raise ExportError(f"PBRMaps.{name} has NaN or infinite values; the bake produced invalid texels")
    return height, width


def map_images(maps: PBRMaps, bits: int = 8) -> dict[str, np.ndarray]:
    """Quantised (H, W, C) images: basecolor (sRGB, C=3), roughness and metallic (linear,
    C=1), orm (R = 1, G = roughness, B = metallic); uint8 for bits=8, uint16 for bits=16."""
    if bits not in (8, 16):
        raise ExportError(f"map bit depth must be 8 or 16, got {bits}")
    height, width = _check_maps(maps)
    roughness = np.asarray(maps.roughness, np.float64).reshape(height, width, 1)
    metallic = np.asarray(maps.metallic, np.float64).reshape(height, width, 1)
    orm = np.concatenate([np.ones_like(roughness), roughness, metallic], axis=2)
    return {
        "basecolor": _quantize(linear_to_srgb(np.asarray(maps.albedo, np.float64)), bits),
        "roughness": _quantize(roughness, bits),
        "metallic": _quantize(metallic, bits),
        "orm": _quantize(orm, bits),
    }


def encode_png(image: np.ndarray) -> bytes:
    """PNG bytes of an (H, W, C) uint8 or uint16 image, C in {1, 3, 4}; row 0 is the top."""
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ExportError(f"PNG images must be (H, W, 1|3|4), got {image.shape}")
    if image.dtype == np.uint8:
        buffer = io.BytesIO()
        Image.fromarray(image[..., 0] if image.shape[2] == 1 else image).save(buffer, format="PNG")
        return buffer.getvalue()
    if image.dtype == np.uint16:
        return _encode_png16(image)
    raise ExportError(f"PNG images must be uint8 or uint16, got {image.dtype}")


def _encode_png16(image: np.ndarray) -> bytes:
    """16-bit PNG (PIL cannot write 16-bit RGB): big-endian samples, filter 0 per row."""
    height, width, channels = image.shape
    colour_type = {1: 0, 3: 2, 4: 6}[channels]
    rows = np.zeros((height, 1 + width * channels * 2), np.uint8)
    rows[:, 1:] = image.astype(">u2").reshape(height, -1).view(np.uint8)

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data))

    header = struct.pack(">IIBBBBB", width, height, 16, colour_type, 0, 0, 0)
    pixels = zlib.compress(rows.tobytes(), 6)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def save_maps(maps: PBRMaps, folder: Path, bits: int = 8) -> dict[str, Path]:
    """Write basecolor.png (sRGB), roughness.png, metallic.png (linear grey) and orm.png
    (R = 1, G = roughness, B = metallic) into `folder`, 8- or 16-bit; returns name -> path."""
    folder = Path(folder)
    images = map_images(maps, bits)
    paths = {name: folder / f"{name}.png" for name in MAP_NAMES}
    encoded = {name: encode_png(images[name]) for name in MAP_NAMES}
    with atomic_outputs(list(paths.values())) as temps:
        for temp, name in zip(temps, MAP_NAMES):
            temp.write_bytes(encoded[name])
    logger.info("wrote %d-bit maps %s to %s", bits, ", ".join(p.name for p in paths.values()), folder)
    return paths


# ----------------------------------------------------------------------------- geometry


@dataclasses.dataclass(frozen=True)
class _Geometry:
    """World-space arrays ready to write. world: (V, 3) float64 positions; centre: (3,)
    float64 bounding-box centre; normals: (V, 3) float32 unit; uv: (V, 2) float32
    bottom-left origin; faces: (F, 3) uint32, wound counter-clockwise in world space."""

    world: np.ndarray
    centre: np.ndarray
    normals: np.ndarray
    uv: np.ndarray
    faces: np.ndarray

    def offsets(self) -> np.ndarray:
        """(V, 3) float32 positions relative to the centre (what glTF stores)."""
        return (self.world - self.centre).astype(np.float32)


def _unit_normals(normals: np.ndarray, name: str) -> np.ndarray:
    """Renormalise (V, 3) normals; zero or non-finite ones (degenerate faces, stray
    vertices) become +Y, since glTF requires unit NORMAL vectors."""
    length = np.linalg.norm(normals, axis=1, keepdims=True)
    bad = ~(np.isfinite(length) & (length > 1e-12))[:, 0]
    if bad.any():
        logger.warning("mesh '%s': %d zero or invalid normals written as +Y", name, int(bad.sum()))
    return np.where(bad[:, None], [0.0, 1.0, 0.0], normals / np.where(bad[:, None], 1.0, length))


def _world_geometry(mesh: MeshData) -> _Geometry:
    """Transform `mesh` to its source world space; normals by the inverse transpose."""
    if mesh.uv is None:
        raise ExportError(f"mesh '{mesh.name}' has no UVs; unwrap it (uv stage) before exporting")
    world = mesh.world_vertices()
    if not np.all(np.isfinite(world)):
        raise ExportError(f"mesh '{mesh.name}' has non-finite positions after to_source")
    if not np.all(np.isfinite(mesh.uv)):
        raise ExportError(f"mesh '{mesh.name}' has NaN or infinite UVs; re-run the unwrap")
    linear = np.asarray(mesh.to_source, np.float64)[:3, :3]
    normals = _unit_normals(np.asarray(mesh.normals, np.float64) @ np.linalg.inv(linear), mesh.name)
    faces = np.asarray(mesh.faces, np.int64)
    if np.linalg.det(linear) < 0:  # a mirroring transform flips the winding
        faces = faces[:, ::-1]
    return _Geometry(
        world=world,
        centre=(world.min(axis=0) + world.max(axis=0)) / 2.0,
        normals=normals.astype(np.float32),
        uv=np.asarray(mesh.uv, np.float32),
        faces=np.ascontiguousarray(faces, dtype=np.uint32),
    )


# ----------------------------------------------------------------------------- glTF


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


def _accessors(geometry: _Geometry, buffer: _BinaryBuffer) -> list[pygltflib.Accessor]:
    """POSITION (with min/max), NORMAL, TEXCOORD_0 (u, 1 - v) and indices, in that order."""
    texcoord = np.stack([geometry.uv[:, 0], 1.0 - geometry.uv[:, 1]], axis=1).astype(np.float32)
    vertex_count = len(geometry.world)
    small = vertex_count <= 0xFFFF  # 65535 is the primitive-restart value
    indices = geometry.faces.astype(np.uint16 if small else np.uint32).reshape(-1)
    accessors = []
    for array, kind, bounds in (
        (geometry.offsets(), pygltflib.VEC3, True),
        (geometry.normals, pygltflib.VEC3, False),
        (texcoord, pygltflib.VEC2, False),
    ):
        view = buffer.add(np.ascontiguousarray(array, "<f4").tobytes(), pygltflib.ARRAY_BUFFER)
        accessors.append(pygltflib.Accessor(
            bufferView=view, componentType=pygltflib.FLOAT, count=vertex_count, type=kind,
            min=[float(x) for x in array.min(axis=0)] if bounds else None,
            max=[float(x) for x in array.max(axis=0)] if bounds else None,
        ))
    view = buffer.add(indices.astype("<u2" if small else "<u4").tobytes(), pygltflib.ELEMENT_ARRAY_BUFFER)
    accessors.append(pygltflib.Accessor(
        bufferView=view, componentType=pygltflib.UNSIGNED_SHORT if small else pygltflib.UNSIGNED_INT,
        count=int(indices.size), type=pygltflib.SCALAR,
    ))
    return accessors


def _material(name: str) -> pygltflib.Material:
    """Metallic-roughness material: texture 0 = base colour, texture 1 = ORM; factors 1."""
    return pygltflib.Material(
        name=name,
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
    mesh: MeshData, geometry: _Geometry, pngs: dict[str, bytes], names: dict[str, str] | None, bin_name: str | None
) -> tuple[dict[str, Any], bytes]:
    """The glTF JSON (as a dict, without asset.extras) and its binary buffer. With `names`
    (image -> file name) and `bin_name` the images and buffer are external (.gltf);
    without, they live in the buffer (.glb)."""
    buffer = _BinaryBuffer()
    accessors = _accessors(geometry, buffer)
    images = []
    for key, label in (("basecolor", "basecolor"), ("orm", "metallicRoughness")):
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
            attributes=pygltflib.Attributes(POSITION=0, NORMAL=1, TEXCOORD_0=2),
            indices=3, material=0, mode=pygltflib.TRIANGLES,
        )])],
        materials=[_material(f"{mesh.name}_material")],
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


def _json_bytes(document: Mapping[str, Any]) -> bytes:
    """Strict (no NaN) UTF-8 JSON."""
    return json.dumps(document, indent=2, ensure_ascii=False, allow_nan=False).encode("utf-8")


def _glb_bytes(document: Mapping[str, Any], blob: bytes) -> bytes:
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


def _companion_names(path: Path) -> dict[str, str]:
    """File names written beside OUT.gltf / OUT.obj (besides the sidecar); OBJ/MTL
    statements are whitespace-separated, so OBJ companions get no spaces."""
    stem = path.stem
    if path.suffix.lower() == ".gltf":
        return {"bin": f"{stem}.bin", "basecolor": f"{stem}_basecolor.png", "orm": f"{stem}_metallicRoughness.png"}
    if path.suffix.lower() == ".obj":
        stem = _obj_name(stem)
        return {
            "mtl": f"{stem}.mtl", "basecolor": f"{stem}_basecolor.png",
            "roughness": f"{stem}_roughness.png", "metallic": f"{stem}_metallic.png",
        }
    return {}


def output_files(path: Path) -> list[Path]:
    """Every file export_textured_mesh(…, path, …) writes, the main file last."""
    path = Path(path)
    return [path.with_name(n) for n in _companion_names(path).values()] + [sidecar_path(path), path]


def check_not_overwriting(path: Path, inputs: Iterable[Path | str]) -> None:
    """Raise InputError if writing `path` (or its companions) would replace one of `inputs`."""
    protected = {Path(p).resolve() for p in inputs}
    for target in output_files(path):
        if target.resolve() in protected:
            raise InputError(f"{target}: refusing to overwrite an input file; choose another output path")


# ----------------------------------------------------------------------------- writers


# Each returns the bytes of every file in output_files(path), in the same order.


def _glb_files(mesh: MeshData, geometry: _Geometry, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    document, blob = _gltf_document(mesh, geometry, pngs, names=None, bin_name=None)
    document["asset"]["extras"] = record
    return [_json_bytes(record), _glb_bytes(document, blob)]


def _gltf_files(mesh: MeshData, geometry: _Geometry, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    names = _companion_names(path)
    document, blob = _gltf_document(mesh, geometry, pngs, names=names, bin_name=names["bin"])
    document["asset"]["extras"] = record
    return [blob, pngs["basecolor"], pngs["orm"], _json_bytes(record), _json_bytes(document)]


def _obj_text(mesh: MeshData, geometry: _Geometry, mtl_name: str, material: str) -> str:
    """OBJ text: world positions (exact float64), bottom-left UVs, normals, 1-based faces."""
    corners = np.repeat(geometry.faces.astype(np.int64) + 1, 3, axis=1)
    return "".join([
        f"# {GENERATOR}\nmtllib {mtl_name}\no {_obj_name(mesh.name)}\n",
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


def _obj_name(name: str) -> str:
    """A name safe for OBJ/MTL statements (no whitespace)."""
    return re.sub(r"\s+", "_", name.strip()) or "mesh"


def _obj_files(mesh: MeshData, geometry: _Geometry, pngs: dict[str, bytes], record: dict, path: Path) -> list[bytes]:
    names = _companion_names(path)
    material = f"{_obj_name(mesh.name)}_material"
    return [
        _mtl_text(material, names).encode("utf-8"), pngs["basecolor"], pngs["roughness"], pngs["metallic"],
        _json_bytes(record), _obj_text(mesh, geometry, names["mtl"], material).encode("utf-8"),
    ]


def _recorded_inputs(metadata: Mapping[str, Any]) -> list[Path]:
    """The input file(s) recorded under metadata["input"], if any."""
    inputs = metadata.get("input")
    if inputs is None:
        return []
    if isinstance(inputs, (str, PurePath)):
        return [Path(inputs)]
    return [Path(p) for p in inputs]


_FORMATS = {".glb": _glb_files, ".gltf": _gltf_files, ".obj": _obj_files}


def export_textured_mesh(mesh: MeshData, maps: PBRMaps, path: Path, metadata: dict) -> Path:
    """Write `mesh` with `maps` to `path`; the extension picks the format.

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
        raise ExportError(f"{path}: unsupported output format '{path.suffix}'; use one of {_SUPPORTED}")
    if path.is_dir():
        raise ExportError(f"{path}: is a folder; give an output file name ending in {_SUPPORTED}")
    check_not_overwriting(path, _recorded_inputs(metadata))
    geometry = _world_geometry(mesh)
    pngs = {name: encode_png(image) for name, image in map_images(maps, bits=8).items()}
    record = _provenance(metadata)
    try:
        with atomic_outputs(output_files(path)) as temps:
            for temp, payload in zip(temps, build(mesh, geometry, pngs, record, path), strict=True):
                temp.write_bytes(payload)
    except OSError as exc:
        raise ExportError(f"{path}: cannot write output: {exc}") from exc
    height, width = maps.albedo.shape[:2]
    logger.info("wrote %s (%d vertices, %d faces, %dx%d maps)", path, len(geometry.world), mesh.num_faces,
                width, height)
    return path
