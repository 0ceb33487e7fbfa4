"""Any supported mesh file or trimesh object -> validated, normalised MeshData.

The stages, in order:

1. read the bytes and check the format's signature, so garbage is refused fast;
2. check every reference the file makes (glTF ``uri``, OBJ ``mtllib``/``map_Kd``): only
   relative paths inside the asset's folder and ``data:`` URIs are followed; trimesh parses
   from memory with a resolver confined to that folder, so nothing else is ever opened;
3. flatten the scene: every triangle primitive, in world space (node transforms applied);
4. repair what can be repaired (with a warning) and refuse what cannot (one-line error);
5. normalise into the box [-1, 1]^3, keeping the float64 ``to_source`` that maps back.
"""
from __future__ import annotations

import base64
import io
import json
import logging
import re
import struct
from collections import Counter
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Callable, Sequence
from urllib.parse import unquote

import numpy as np
import trimesh

from .datatypes import MeshData
from .errors import (
    ConfigError,
    CSDTextureError,
    MeshLoadError,
    MeshValidationError,
    UnsafeReferenceError,
)

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".obj", ".gltf", ".glb", ".ply", ".stl", ".off")

_FORMAT_NAMES = {".obj": "OBJ", ".gltf": "glTF", ".glb": "GLB", ".ply": "PLY", ".stl": "STL", ".off": "OFF"}
_AXES = {"x": 0, "y": 1, "z": 2}
_DEFAULT_UP = "y"  # glTF is +Y up by definition; OBJ/PLY/STL/OFF have no convention, so +Y unless told
_MOSTLY = 0.5  # refuse when more than this fraction of vertices is non-finite
_MERGE_QUANTUM = 2.0**-20  # vertices closer than ~1e-6 (normalised units) are the same vertex
_MIN_DOUBLE_AREA = 1e-14  # |cross| below this (normalised units) is a zero-area face
_MAX_IMAGE_SIDE = 4096
_SNIFF_BYTES = 1 << 16
_GLB_JSON, _GLB_BIN = 0x4E4F534A, 0x004E4942
_GL_POINTS_AND_LINES = (0, 1, 2, 3)
_GL_TRIANGLES, _GL_FAN = 4, 6
_UNSUPPORTED_GLTF_EXTENSIONS = {
    "KHR_draco_mesh_compression": "Draco-compressed geometry",
    "EXT_meshopt_compression": "meshopt-compressed geometry",
}


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
        scene = _load_file(path, label)
        default_name = path.stem
    else:
        raise MeshLoadError(f"cannot load a mesh from a {type(source).__name__}: pass a file path or a trimesh object")
    parts = _flatten_scene(scene, label, default_name)
    return _build_mesh_data(parts, label, name or default_name, up)


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


# ----------------------------------------------------------------------------------------
# Reading a file: signature checks, reference checks, parsing from memory.
# ----------------------------------------------------------------------------------------


def _load_file(path: Path, label: str) -> trimesh.Scene:
    """Read `path` and parse it with trimesh, confined to its folder."""
    ext = path.suffix.lower()
    if ext not in SUPPORTED_EXTENSIONS:
        raise MeshLoadError(
            f"{label}: unsupported file type {ext or '(no extension)'!r}; supported: {', '.join(SUPPORTED_EXTENSIONS)}"
        )
    if not path.exists():
        raise MeshLoadError(f"{label}: file not found")
    if not path.is_file():
        raise MeshLoadError(f"{label}: not a regular file")
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise MeshLoadError(f"{label}: cannot read file ({exc.strerror})") from exc
    if not data.strip():
        raise MeshLoadError(f"{label}: file is empty")
    resolver = _FolderResolver(path.absolute().parent, label)
    try:
        data = _PREPARE[ext](data, label, resolver)
        return trimesh.load_scene(io.BytesIO(data), file_type=ext[1:], resolver=resolver, process=False)
    except CSDTextureError:
        raise
    except Exception as exc:  # noqa: BLE001 - any parser failure means a corrupt file
        raise MeshLoadError(f"{label}: cannot parse {_FORMAT_NAMES[ext]} file ({_one_line(exc)})") from exc


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


class _FolderResolver(trimesh.resolvers.Resolver):
    """Gives trimesh the bytes of files inside one folder, and nothing else.

    A refused or missing reference is logged once and raised; trimesh's OBJ loader then
    carries on without that material or texture."""

    def __init__(self, folder: Path, label: str) -> None:
        self.folder = folder.resolve()
        self.label = label
        self._warned: set[str] = set()

    def get(self, name: str) -> bytes:
        try:
            path = _confined_path(name, self.folder, self.label)
        except UnsafeReferenceError as exc:
            self._warn_once(name, f"{exc}; ignoring it")
            raise
        if not path.is_file():
            self._warn_once(name, f"{self.label}: referenced file {name!r} not found; ignoring it")
            raise FileNotFoundError(name)
        return path.read_bytes()

    def write(self, name: str, data: str | bytes) -> None:
        raise UnsafeReferenceError(f"{self.label}: refusing to write {name!r}: inputs are never modified")

    def namespaced(self, namespace: str) -> "_FolderResolver":
        return _FolderResolver(_confined_path(namespace, self.folder, self.label), self.label)

    def keys(self):
        return iter(())

    def _warn_once(self, name: str, message: str) -> None:
        if name not in self._warned:
            self._warned.add(name)
            log.warning(message)


_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.\-]*:")


def _confined_path(reference: str, folder: Path, label: str) -> Path:
    """The file a relative reference names, or UnsafeReferenceError if it leaves `folder`."""
    text = unquote(reference.strip()).replace("\\", "/")
    if _SCHEME.match(reference.strip()) and not PureWindowsPath(text).drive:
        raise UnsafeReferenceError(
            f"{label}: unsafe reference {reference!r}: URLs and schemes are not allowed "
            "(only relative paths inside the asset's folder or data: URIs)"
        )
    if not text or PurePosixPath(text).is_absolute() or PureWindowsPath(text).drive:
        raise UnsafeReferenceError(f"{label}: unsafe reference {reference!r}: absolute paths are not allowed")
    target = (folder / text).resolve()
    if not target.is_relative_to(folder):
        why = "it escapes the asset's folder ('..')" if ".." in PurePosixPath(text).parts else (
            "it is a symbolic link that points outside the asset's folder"
        )
        raise UnsafeReferenceError(f"{label}: unsafe reference {reference!r}: {why}")
    return target


# --- OBJ ---------------------------------------------------------------------------------

_OBJ_FACE = re.compile(rb"^[ \t]*f[ \t]", re.MULTILINE)
_OBJ_SHORT_FACE = re.compile(rb"^[ \t]*f(?:[ \t]+[^ \t\r\n]+){0,2}[ \t]*\r?$", re.MULTILINE)
_OBJ_VERTEX = re.compile(rb"^[ \t]*v[ \t]", re.MULTILINE)
_OBJ_NONFINITE_VERTEX = re.compile(rb"^[ \t]*v[ \t].*(?:nan|inf).*$", re.MULTILINE | re.IGNORECASE)
_OBJ_NEGATIVE_FACE = re.compile(rb"^[ \t]*f[ \t][^\n]*-\d", re.MULTILINE)


def _prepare_obj(data: bytes, label: str, resolver: _FolderResolver) -> bytes:
    """Refuse binary garbage and files without faces; warn about what trimesh drops silently."""
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise MeshLoadError(f"{label}: not a text OBJ file (it contains binary data)")
    if not _OBJ_FACE.search(data):
        vertices = len(_OBJ_VERTEX.findall(data))
        if vertices:
            raise MeshValidationError(f"{label}: has {vertices} vertices but no faces (a point cloud); nothing to texture")
        raise MeshLoadError(f"{label}: no geometry (the file is empty or has only comments)")
    short = len(_OBJ_SHORT_FACE.findall(data))
    if short:
        log.warning(f"{label}: dropped {short} face(s) with fewer than 3 vertices")
    bad_colours = _count_nonfinite_obj_colours(data)
    if bad_colours:
        log.warning(f"{label}: {bad_colours} vertex colour(s) are NaN/inf; ignored (vertex colours are not used)")
    if _OBJ_NEGATIVE_FACE.search(data):
        data = _absolute_obj_indices(data)
    return data


def _absolute_obj_indices(data: bytes) -> bytes:
    """Rewrite negative (relative) face indices as absolute ones.

    An OBJ index -1 means the latest vertex *so far*; trimesh counts from the end of the file."""
    counts = {b"v": 0, b"vt": 0, b"vn": 0}
    lines = data.splitlines(keepends=True)
    for number, line in enumerate(lines):
        words = line.split()
        if not words:
            continue
        if words[0] in counts:
            counts[words[0]] += 1
        elif words[0] == b"f" and b"-" in line:
            corners = [word.split(b"/") for word in words[1:]]
            for corner in corners:
                for slot, (index, kind) in enumerate(zip(corner, (b"v", b"vt", b"vn"))):
                    if index.startswith(b"-") and index[1:].isdigit():
                        corner[slot] = b"%d" % (counts[kind] + 1 + int(index))
            lines[number] = b" ".join([b"f"] + [b"/".join(c) for c in corners]) + b"\n"
    return b"".join(lines)


def _count_nonfinite_obj_colours(data: bytes) -> int:
    """Vertices whose colour columns (`v x y z r g b`) are NaN or infinite."""
    count = 0
    for line in _OBJ_NONFINITE_VERTEX.findall(data):
        values = line.split()[1:]
        try:
            colour = np.array([float(v) for v in values[3:6]])
        except ValueError:
            continue
        count += int(colour.size == 3 and not np.isfinite(colour).all())
    return count


# --- PLY, STL, OFF -------------------------------------------------------------------------


def _prepare_ply(data: bytes, label: str, resolver: _FolderResolver) -> bytes:
    """Check the PLY header: magic, end_header, and that it declares faces."""
    head = data[:_SNIFF_BYTES]
    if not re.match(rb"ply\r?\n", head):
        raise MeshLoadError(f"{label}: not a PLY file (it does not start with 'ply')")
    end = head.find(b"end_header")
    if end < 0:
        raise MeshLoadError(f"{label}: PLY header has no 'end_header' line (corrupt or truncated)")
    elements: dict[str, int] = {}
    for line in head[:end].decode("ascii", "replace").splitlines():
        words = line.split()
        if len(words) == 3 and words[0] == "element" and words[2].isdigit():
            elements[words[1]] = int(words[2])
    if not elements:
        raise MeshLoadError(f"{label}: PLY header declares no elements (empty header)")
    if not elements.get("face") and not elements.get("tristrips"):
        points = elements.get("vertex", 0)
        raise MeshValidationError(f"{label}: is a point cloud ({points} points, no faces); nothing to texture")
    return data


def _prepare_stl(data: bytes, label: str, resolver: _FolderResolver) -> bytes:
    """Accept a binary STL whose size matches its triangle count, or an ASCII STL."""
    count = struct.unpack_from("<I", data, 80)[0] if len(data) >= 84 else -1
    expected = 84 + 50 * count
    if len(data) == expected:
        if count == 0:
            raise MeshValidationError(f"{label}: STL file has no triangles")
        return data
    if data.lstrip()[:5].lower() == b"solid":
        if b"facet" not in data:
            raise MeshValidationError(f"{label}: ASCII STL file has no triangles")
        return data
    if count > 0 and len(data) > expected:
        return data  # binary with trailing bytes, which readers ignore
    raise MeshLoadError(
        f"{label}: not a valid STL file (neither ASCII nor a binary STL of the size its header declares)"
    )


def _prepare_off(data: bytes, label: str, resolver: _FolderResolver) -> bytes:
    """Check the OFF header keyword."""
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise MeshLoadError(f"{label}: not an OFF file (it contains binary data)")
    text = data[:_SNIFF_BYTES].decode("utf-8", "replace")
    words = re.sub(r"#[^\n]*", "", text).split()
    if not words or not re.fullmatch(r"C?OFF(\d.*)?", words[0]):
        raise MeshLoadError(f"{label}: not an OFF file (it does not start with 'OFF')")
    return data


# --- glTF / GLB ----------------------------------------------------------------------------


def _prepare_gltf(data: bytes, label: str, resolver: _FolderResolver) -> bytes:
    """Parse the glTF JSON, check every uri, and rewrite triangle fans trimesh cannot read."""
    try:
        header = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MeshLoadError(f"{label}: not a valid glTF file (invalid JSON: {_one_line(exc)})") from exc
    _check_gltf_header(header, label, resolver)

    def buffer(index: int) -> bytes:
        return _read_gltf_buffer(header, index, None, resolver, label)

    if _triangulate_fans(header, buffer):
        data = json.dumps(header).encode("utf-8")
    return data


def _prepare_glb(data: bytes, label: str, resolver: _FolderResolver) -> bytes:
    """Split the GLB into chunks (refusing truncated files), then check it like a .gltf."""
    header, chunks = _split_glb(data, label)
    _check_gltf_header(header, label, resolver)
    binary = next((payload for kind, payload in chunks if kind == _GLB_BIN), None)
    buffers = header.get("buffers") or []
    if buffers and "uri" not in buffers[0]:
        needed = int(buffers[0].get("byteLength", 0))
        if binary is None or len(binary) < needed:
            have = 0 if binary is None else len(binary)
            raise MeshLoadError(f"{label}: truncated GLB: binary chunk has {have} bytes, buffer 0 needs {needed}")

    def buffer(index: int) -> bytes:
        return _read_gltf_buffer(header, index, binary, resolver, label)

    if _triangulate_fans(header, buffer):
        data = _join_glb(header, chunks)
    return data


def _split_glb(data: bytes, label: str) -> tuple[dict, list[tuple[int, bytes]]]:
    """(JSON header, [(chunk type, payload)]) of a GLB container."""
    if len(data) < 12 or data[:4] != b"glTF":
        raise MeshLoadError(f"{label}: not a GLB file (missing 'glTF' magic)")
    version, length = struct.unpack_from("<II", data, 4)
    if version != 2:
        raise MeshLoadError(f"{label}: glTF version {version} is not supported; convert it to glTF 2.0")
    if length > len(data):
        raise MeshLoadError(f"{label}: truncated GLB: header declares {length} bytes but the file has {len(data)}")
    chunks, offset = [], 12
    while offset + 8 <= length:
        size, kind = struct.unpack_from("<II", data, offset)
        if offset + 8 + size > length:
            raise MeshLoadError(f"{label}: truncated GLB: chunk {len(chunks)} runs past the end of the file")
        chunks.append((kind, data[offset + 8 : offset + 8 + size]))
        offset += 8 + size
    if not chunks or chunks[0][0] != _GLB_JSON:
        raise MeshLoadError(f"{label}: corrupt GLB: the first chunk is not JSON")
    try:
        header = json.loads(chunks[0][1].decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MeshLoadError(f"{label}: corrupt GLB: invalid JSON chunk ({_one_line(exc)})") from exc
    return header, chunks


def _join_glb(header: dict, chunks: list[tuple[int, bytes]]) -> bytes:
    """A GLB container with `header` as its JSON chunk and the other chunks unchanged."""
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 4)
    body = b"".join(struct.pack("<II", len(p), k) + p for k, p in [(_GLB_JSON, text)] + chunks[1:])
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def _check_gltf_header(header: object, label: str, resolver: _FolderResolver) -> None:
    """Refuse unsafe or missing uris, unsupported compression, and files without triangles."""
    if not isinstance(header, dict) or not isinstance(header.get("asset"), dict):
        raise MeshLoadError(f"{label}: not a valid glTF file (no 'asset' object)")
    version = str(header["asset"].get("version", ""))
    if not version.startswith("2"):
        raise MeshLoadError(f"{label}: glTF version {version or '?'} is not supported; convert it to glTF 2.0")
    for kind in ("buffers", "images"):
        for index, item in enumerate(header.get(kind) or []):
            uri = item.get("uri") if isinstance(item, dict) else None
            if uri is None or (isinstance(uri, str) and uri.startswith("data:")):
                continue
            if not isinstance(uri, str):
                raise MeshLoadError(f"{label}: corrupt glTF: {kind}[{index}].uri is not a string")
            if not _confined_path(uri, resolver.folder, label).is_file():
                raise MeshLoadError(f"{label}: referenced file {uri!r} ({kind}[{index}]) not found")
    for extension in header.get("extensionsRequired") or []:
        if extension in _UNSUPPORTED_GLTF_EXTENSIONS:
            raise MeshLoadError(
                f"{label}: uses {extension} ({_UNSUPPORTED_GLTF_EXTENSIONS[extension]}), which is not supported;"
                " re-export without mesh compression"
            )
    modes = Counter(p.get("mode", _GL_TRIANGLES) for m in header.get("meshes") or [] for p in m.get("primitives") or [])
    if not modes:
        raise MeshValidationError(f"{label}: contains no meshes; nothing to texture")
    skipped = sum(n for mode, n in modes.items() if mode in _GL_POINTS_AND_LINES)
    if skipped == sum(modes.values()):
        raise MeshValidationError(f"{label}: contains only points or lines (no triangles); nothing to texture")
    if skipped:
        log.warning(f"{label}: ignoring {skipped} point/line primitive(s); only triangles are textured")


def _read_gltf_buffer(header: dict, index: int, binary: bytes | None, resolver: _FolderResolver, label: str) -> bytes:
    """The bytes of buffer `index`: the GLB binary chunk, a data URI or a confined file."""
    uri = header["buffers"][index].get("uri")
    if uri is None:
        if binary is None:
            raise MeshLoadError(f"{label}: corrupt glTF: buffer {index} has no uri and there is no binary chunk")
        return binary
    if uri.startswith("data:"):
        try:
            return base64.b64decode(uri.split(",", 1)[1])
        except (IndexError, ValueError) as exc:
            raise MeshLoadError(f"{label}: corrupt glTF: buffer {index} has an invalid data URI") from exc
    return resolver.get(uri)


def _triangulate_fans(header: dict, buffer: Callable[[int], bytes]) -> bool:
    """Rewrite TRIANGLE_FAN primitives as TRIANGLES with indices in a new data-URI buffer.

    trimesh reads triangles and strips but skips fans. Returns whether anything changed."""
    fans = [p for m in header.get("meshes") or [] for p in m.get("primitives") or [] if p.get("mode") == _GL_FAN]
    for primitive in fans:
        order = _gltf_indices(header, primitive, buffer)
        faces = np.stack([np.full(len(order) - 2, order[0]), order[1:-1], order[2:]], axis=1) if len(order) >= 3 else (
            np.zeros((0, 3))
        )
        blob = faces.astype("<u4").tobytes()
        header.setdefault("buffers", []).append(
            {"byteLength": len(blob), "uri": "data:application/octet-stream;base64," + base64.b64encode(blob).decode()}
        )
        header.setdefault("bufferViews", []).append({"buffer": len(header["buffers"]) - 1, "byteLength": len(blob)})
        header.setdefault("accessors", []).append(
            {"bufferView": len(header["bufferViews"]) - 1, "componentType": 5125, "count": faces.size, "type": "SCALAR"}
        )
        primitive["mode"] = _GL_TRIANGLES
        primitive["indices"] = len(header["accessors"]) - 1
    return bool(fans)


def _gltf_indices(header: dict, primitive: dict, buffer: Callable[[int], bytes]) -> np.ndarray:
    """The vertex order of a primitive: its index accessor, or 0..count-1 without one."""
    if "indices" not in primitive:
        return np.arange(header["accessors"][primitive["attributes"]["POSITION"]]["count"])
    accessor = header["accessors"][primitive["indices"]]
    view = header["bufferViews"][accessor["bufferView"]]
    dtype = {5121: "<u1", 5123: "<u2", 5125: "<u4"}[accessor["componentType"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    return np.frombuffer(buffer(view["buffer"]), dtype=dtype, count=accessor["count"], offset=start).astype(np.int64)


_PREPARE: dict[str, Callable[[bytes, str, _FolderResolver], bytes]] = {
    ".obj": _prepare_obj,
    ".gltf": _prepare_gltf,
    ".glb": _prepare_glb,
    ".ply": _prepare_ply,
    ".stl": _prepare_stl,
    ".off": _prepare_off,
}


# ----------------------------------------------------------------------------------------
# Scene -> world-space parts.
# ----------------------------------------------------------------------------------------


@dataclass
class _Part:
    """One triangle primitive in world space (float64)."""

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    uv: np.ndarray | None
    image: object | None  # PIL image of the base colour texture


_UNNAMED_NODE = re.compile(r"\d+|geometry(_\d+)?")  # glTF node index, or trimesh's default


def _flatten_scene(scene: trimesh.Scene, label: str, default_name: str) -> list[_Part]:
    """Every triangle geometry instance of the scene, with node transforms applied."""
    parts, ignored = [], 0
    for node in scene.graph.nodes_geometry:
        transform, geometry_name = scene.graph[node]
        geometry = scene.geometry[geometry_name]
        if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces):
            name = _part_name(scene, node, geometry_name, default_name)
            parts.append(_world_part(geometry, np.asarray(transform, dtype=np.float64), name))
        else:
            ignored += 1
    if ignored and parts:
        log.warning(f"{label}: ignoring {ignored} point/line geometr{'y' if ignored == 1 else 'ies'}; only triangles are textured")
    if not parts:
        if ignored:
            raise MeshValidationError(f"{label}: contains only points or lines (no triangle faces); nothing to texture")
        raise MeshValidationError(f"{label}: contains no faces; nothing to texture")
    return parts


def _part_name(scene: trimesh.Scene, node: str, geometry_name: str, default_name: str) -> str:
    """The source's name for a part: its node, else its mesh, else the file's stem.

    trimesh names a multi-primitive glTF node's children `<node>_<6 hex digits>`, unnamed glTF
    nodes by index and single meshes `geometry[_N]`."""
    parent = scene.graph.transforms.parents.get(node)
    if parent is not None and re.fullmatch(re.escape(parent) + r"_[0-9a-f]{6}", node):
        node = parent
    for name in (node, geometry_name):
        if not _UNNAMED_NODE.fullmatch(name):
            return name
    return default_name


def _world_part(mesh: trimesh.Trimesh, transform: np.ndarray, name: str) -> _Part:
    """A part in world space; faces flipped under mirroring transforms to keep their facing."""
    vertices = np.asarray(mesh.vertices, dtype=np.float64)
    with np.errstate(invalid="ignore"):  # NaN vertices are dealt with later
        vertices = vertices @ transform[:3, :3].T + transform[:3, 3]
    faces = np.asarray(mesh.faces, dtype=np.int64)
    if np.linalg.det(transform[:3, :3]) < 0:
        faces = faces[:, ::-1]
    uv, image = None, None
    visual = mesh.visual
    if getattr(visual, "kind", None) == "texture" and visual.uv is not None:
        uv = np.asarray(visual.uv, dtype=np.float64)
        uv = uv if uv.shape == (len(vertices), 2) else None
        image = _base_color_source(getattr(visual, "material", None))
    return _Part(name, vertices, faces, uv, image)


def _base_color_source(material: object) -> object | None:
    """The material's base colour texture (PIL), ignoring trimesh's 2x2 colour placeholders."""
    image = getattr(material, "baseColorTexture", None) or getattr(material, "image", None)
    if image is None or not hasattr(image, "size") or (image.size[0] <= 2 and image.size[1] <= 2):
        return None
    return image


# ----------------------------------------------------------------------------------------
# Parts -> repaired, normalised MeshData.
# ----------------------------------------------------------------------------------------


def _build_mesh_data(parts: list[_Part], label: str, name: str, up: tuple[float, float, float]) -> MeshData:
    """Merge parts, repair, normalise, compute normals."""
    uv, image = _shared_uv(parts, label)
    vertices = np.concatenate([p.vertices for p in parts])
    part_ids = np.concatenate([np.full(len(p.vertices), i) for i, p in enumerate(parts)])
    offsets = np.cumsum([0] + [len(p.vertices) for p in parts[:-1]])
    faces = np.concatenate([p.faces + o for p, o in zip(parts, offsets)])
    faces = _drop_invalid_indices(faces, len(vertices), label)
    unreferenced = len(vertices) - int(_used(faces, len(vertices)).sum())
    faces = _drop_nonfinite(vertices, faces, label)
    if uv is not None and not np.isfinite(uv[_used(faces, len(uv))]).all():
        log.warning(f"{label}: source UVs contain NaN/inf values; ignoring them")
        uv, image = None, None
    centre, half = _bounds(vertices, faces, label)
    normalised = (vertices - centre) / half
    normalised, faces, uv, groups = _merge_vertices(normalised, faces, uv, part_ids)
    faces = _drop_degenerate(normalised, faces, label)
    faces = _drop_duplicates(faces, label)
    if unreferenced:
        log.warning(f"{label}: removed {unreferenced} unreferenced vertices")
    faces = _fix_winding(normalised, faces, label)
    normalised, faces, uv, groups = _compact(normalised, faces, uv, groups)
    centre_again, half_again = _box(normalised)  # dropped faces may have shrunk the box
    normalised = (normalised - centre_again) / half_again
    to_source = np.eye(4)
    to_source[:3, :3] *= half * half_again
    to_source[:3, 3] = centre + centre_again * half
    return MeshData(
        vertices=normalised.astype(np.float32),
        faces=faces.astype(np.int32),
        normals=_vertex_normals(normalised, faces, groups, up),
        uv=None if uv is None else uv.astype(np.float32),
        to_source=to_source,
        name=name,
        up_axis=up,
        base_color_image=None if image is None else _image_array(image),
        part_names=tuple(p.name for p in parts),
    )


def _shared_uv(parts: list[_Part], label: str) -> tuple[np.ndarray | None, object | None]:
    """Source UVs, kept only if every part has them and all parts share one texture."""
    if any(p.uv is None for p in parts):
        return None, None
    keys = {_image_key(p.image) for p in parts}
    if len(parts) > 1 and (len(keys) > 1 or None in keys):
        log.info(f"{label}: parts use different textures; source UVs not kept")
        return None, None
    return np.concatenate([p.uv for p in parts]), parts[0].image


def _image_key(image: object | None) -> object | None:
    if image is None:
        return None
    return (image.size, image.mode, hash(image.tobytes()))


def _used(faces: np.ndarray, count: int) -> np.ndarray:
    """(count,) bool: vertices referenced by a face."""
    used = np.zeros(count, dtype=bool)
    used[faces.reshape(-1)] = True
    return used


def _drop_invalid_indices(faces: np.ndarray, count: int, label: str) -> np.ndarray:
    bad = ((faces < 0) | (faces >= count)).any(axis=1)
    if bad.any():
        log.warning(f"{label}: dropped {int(bad.sum())} face(s) with out-of-range vertex indices")
    return faces[~bad]


def _drop_nonfinite(vertices: np.ndarray, faces: np.ndarray, label: str) -> np.ndarray:
    """Refuse mostly non-finite coordinates; otherwise drop faces that touch a NaN/inf vertex."""
    bad = ~np.isfinite(vertices).all(axis=1)
    if not bad.any():
        return faces
    if bad.mean() > _MOSTLY:
        raise MeshValidationError(
            f"{label}: {int(bad.sum())} of {len(vertices)} vertices have NaN/inf coordinates; the file is corrupt"
        )
    touched = bad[faces].any(axis=1)
    log.warning(f"{label}: {int(bad.sum())} vertices have NaN/inf coordinates; dropped {int(touched.sum())} face(s) using them")
    if touched.all():
        raise MeshValidationError(f"{label}: every face uses a vertex with NaN/inf coordinates; the file is corrupt")
    return faces[~touched]


def _box(points: np.ndarray) -> tuple[np.ndarray, float]:
    """Centre and half of the longest side of the points' bounding box."""
    low, high = points.min(axis=0), points.max(axis=0)
    return (low + high) / 2.0, float((high - low).max()) / 2.0


def _bounds(vertices: np.ndarray, faces: np.ndarray, label: str) -> tuple[np.ndarray, float]:
    """_box of the vertices faces use; refuses a mesh of zero extent."""
    used = vertices[_used(faces, len(vertices))]
    centre, half = _box(used)
    if not half > 1e-12 * max(1.0, float(np.abs(used).max())):
        raise MeshValidationError(f"{label}: all {len(faces)} faces are degenerate (zero area); nothing to texture")
    return centre, half


def _unique_rows(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(first index, inverse, counts) of the unique rows of an (N, K) integer array, in
    lexicographic order like np.unique(axis=0), but via 1-D keys (much faster)."""
    rows = rows - rows.min(axis=0)
    spans = rows.max(axis=0) + 1
    if float(np.prod(spans.astype(np.float64))) < 2.0**62:
        key = rows[:, 0].astype(np.int64)
        for k in range(1, rows.shape[1]):
            key = key * int(spans[k]) + rows[:, k]
    else:  # combine columns one at a time through dense ranks, which stay below N
        key = np.zeros(len(rows), dtype=np.int64)
        for column in rows.T:
            _, rank = np.unique(column, return_inverse=True)
            _, key = np.unique(key * (int(rank.max()) + 1) + rank.reshape(-1), return_inverse=True)
    _, first, inverse, counts = np.unique(key, return_index=True, return_inverse=True, return_counts=True)
    return first, inverse.reshape(-1), counts


def _merge_vertices(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, part_ids: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Weld coincident vertices (same position, part and UV); returns position-group ids too.

    Vertices at the same position share one position (the group's first), so normals and
    later welding agree; different parts and UV seams stay separate vertices."""
    finite = np.isfinite(vertices).all(axis=1)
    quantised = np.zeros(vertices.shape, dtype=np.int64)
    quantised[finite] = np.round(vertices[finite] / _MERGE_QUANTUM).astype(np.int64)
    quantised[~finite] = np.arange((~finite).sum())[:, None] - (1 << 40)  # never merge bad vertices
    first, groups, _ = _unique_rows(quantised)
    vertices = vertices[first[groups]]
    key = [groups[:, None], part_ids[:, None]]
    if uv is not None:
        uv_key = np.where(np.isfinite(uv), uv, 0.0)
        key.append(np.round(uv_key / _MERGE_QUANTUM).astype(np.int64))
    keep, inverse, _ = _unique_rows(np.hstack(key))
    return vertices[keep], inverse[faces], None if uv is None else uv[keep], groups[keep]


def _double_areas(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    return np.linalg.norm(np.cross(b - a, c - a), axis=1)


def _drop_degenerate(vertices: np.ndarray, faces: np.ndarray, label: str) -> np.ndarray:
    """Drop zero-area faces; refuse a mesh made only of them."""
    bad = ~(_double_areas(vertices, faces) > _MIN_DOUBLE_AREA)
    if bad.all():
        raise MeshValidationError(f"{label}: all {len(faces)} faces are degenerate (zero area); nothing to texture")
    if bad.any():
        log.warning(f"{label}: dropped {int(bad.sum())} degenerate (zero-area) face(s)")
    return faces[~bad]


def _drop_duplicates(faces: np.ndarray, label: str) -> np.ndarray:
    """Drop faces that repeat another face's vertices (in any order)."""
    first, _, _ = _unique_rows(np.sort(faces, axis=1))
    if len(first) < len(faces):
        log.warning(f"{label}: dropped {len(faces) - len(first)} duplicate face(s)")
    return faces[np.sort(first)]


def _fix_winding(vertices: np.ndarray, faces: np.ndarray, label: str) -> np.ndarray:
    """Make face winding consistent across manifold edges, and outward for closed pieces."""
    faces = faces.copy()
    pair = _manifold_edge_pairs(faces)
    if (pair[:, 2] == 0).any():
        flip = _consistent_flips(len(faces), pair)
        faces[flip] = faces[flip, ::-1]
        log.warning(f"{label}: face winding was inconsistent; fixed ({int(flip.sum())} face(s) flipped)")
        pair = _manifold_edge_pairs(faces)
    inward = _inward_faces(vertices, faces, pair)
    if inward.any():
        faces[inward] = faces[inward, ::-1]
        log.warning(f"{label}: {int(inward.sum())} face(s) of closed pieces pointed inwards; flipped")
    return faces


def _manifold_edge_pairs(faces: np.ndarray) -> np.ndarray:
    """(E, 3) rows (face a, face b, consistent 0/1), one per edge shared by exactly two faces;
    consistent when the two faces run along the edge in opposite directions."""
    directed = faces[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
    forward = directed[:, 0] < directed[:, 1]
    _, inverse, counts = _unique_rows(np.sort(directed, axis=1))
    shared = np.flatnonzero(counts[inverse] == 2)
    idx = shared[np.argsort(inverse[shared], kind="stable")].reshape(-1, 2)
    consistent = forward[idx[:, 0]] != forward[idx[:, 1]]
    return np.stack([idx[:, 0] // 3, idx[:, 1] // 3, consistent.astype(np.int64)], axis=1)


def _consistent_flips(count: int, pair: np.ndarray) -> np.ndarray:
    """Which faces to flip so every manifold edge is consistent (first face of each piece kept).

    Two copies of each face (as is, flipped) in one graph: a consistent edge joins same copies,
    an inconsistent one opposite copies; a face flips if its as-is copy is not connected to the
    as-is copy of its piece's first face."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    a, b, same = pair[:, 0], pair[:, 1], pair[:, 2].astype(bool)
    rows = np.concatenate([a, a + count])
    cols = np.concatenate([np.where(same, b, b + count), np.where(same, b + count, b)])
    doubled = coo_matrix((np.ones(len(rows)), (rows, cols)), shape=(2 * count, 2 * count))
    _, state = connected_components(doubled, directed=False)
    single = coo_matrix((np.ones(len(a)), (a, b)), shape=(count, count))
    _, piece = connected_components(single, directed=False)
    _, first = np.unique(piece, return_index=True)
    return state[:count] != state[first[piece]]


def _inward_faces(vertices: np.ndarray, faces: np.ndarray, pair: np.ndarray) -> np.ndarray:
    """Faces of closed, consistently wound pieces whose signed volume is negative."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    count = len(faces)
    single = coo_matrix((np.ones(len(pair)), (pair[:, 0], pair[:, 1])), shape=(count, count))
    pieces, piece = connected_components(single, directed=False)
    good_edges = np.bincount(pair[:, 0], pair[:, 2], minlength=count) + np.bincount(pair[:, 1], pair[:, 2], minlength=count)
    open_piece = np.bincount(piece, good_edges < 3, minlength=pieces) > 0
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    volume = np.bincount(piece, np.einsum("ij,ij->i", a, np.cross(b, c)), minlength=pieces)
    return (~open_piece & (volume < 0))[piece]


def _compact(
    vertices: np.ndarray, faces: np.ndarray, uv: np.ndarray | None, groups: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, np.ndarray]:
    """Remove vertices no face uses."""
    used = np.flatnonzero(_used(faces, len(vertices)))
    remap = np.full(len(vertices), -1, dtype=np.int64)
    remap[used] = np.arange(len(used))
    return vertices[used], remap[faces], None if uv is None else uv[used], groups[used]


def _vertex_normals(
    vertices: np.ndarray, faces: np.ndarray, groups: np.ndarray, up: tuple[float, float, float]
) -> np.ndarray:
    """(V, 3) float32 area-weighted normals, shared by all vertices at one position."""
    a, b, c = (vertices[faces[:, i]] for i in range(3))
    face_normals = np.cross(b - a, c - a)
    corner_groups = groups[faces].reshape(-1)
    size = int(groups.max()) + 1
    sums = np.stack(
        [np.bincount(corner_groups, np.repeat(face_normals[:, k], 3), minlength=size) for k in range(3)], axis=1
    )
    length = np.linalg.norm(sums, axis=1, keepdims=True)
    normals = np.where(length > 0, sums / np.where(length > 0, length, 1.0), np.asarray(up))
    return normals[groups].astype(np.float32)


def _image_array(image: object) -> np.ndarray:
    """(H, W, 3) float32 sRGB in [0, 1], longest side at most _MAX_IMAGE_SIDE."""
    from PIL import Image

    rgb = image.convert("RGB")
    if max(rgb.size) > _MAX_IMAGE_SIDE:
        scale = _MAX_IMAGE_SIDE / max(rgb.size)
        rgb = rgb.resize((max(1, round(rgb.size[0] * scale)), max(1, round(rgb.size[1] * scale))), Image.LANCZOS)
    return np.asarray(rgb, dtype=np.float32) / 255.0
