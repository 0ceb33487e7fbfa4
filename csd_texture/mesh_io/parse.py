"""Reading a mesh file: format signature checks, reference checks, parsing from memory."""
from __future__ import annotations

import base64
import io
import json
import logging
import re
import struct
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import trimesh

from ..errors import CSDTextureError, MeshLoadError, MeshValidationError
from .confine import FolderResolver, confined_path

log = logging.getLogger(__name__)

SUPPORTED_EXTENSIONS = (".obj", ".gltf", ".glb", ".ply", ".stl", ".off")

_FORMAT_NAMES = {".obj": "OBJ", ".gltf": "glTF", ".glb": "GLB", ".ply": "PLY", ".stl": "STL", ".off": "OFF"}
_SNIFF_BYTES = 1 << 16
_GLB_JSON, _GLB_BIN = 0x4E4F534A, 0x004E4942
_GL_POINTS_AND_LINES = (0, 1, 2, 3)
_GL_TRIANGLES, _GL_FAN = 4, 6
_UNSUPPORTED_GLTF_EXTENSIONS = {
    "KHR_draco_mesh_compression": "Draco-compressed geometry",
    "EXT_meshopt_compression": "meshopt-compressed geometry",
}



def load_file(path: Path, label: str) -> trimesh.Scene:
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
    resolver = FolderResolver(path.absolute().parent, label)
    try:
        data = _PREPARE[ext](data, label, resolver)
        groups = {"split_groups": True} if ext == ".obj" else {}  # OBJ `g` groups stay parts (named in outputs)
        return trimesh.load_scene(io.BytesIO(data), file_type=ext[1:], resolver=resolver, process=False, **groups)
    except CSDTextureError:
        raise
    except Exception as exc:
        raise MeshLoadError(f"{label}: cannot parse {_FORMAT_NAMES[ext]} file ({one_line(exc)})") from exc


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text[:200]


# --- OBJ ---------------------------------------------------------------------------------

_OBJ_FACE = re.compile(rb"^[ \t]*f[ \t]", re.MULTILINE)
_OBJ_SHORT_FACE = re.compile(rb"^[ \t]*f(?:[ \t]+[^ \t\r\n]+){0,2}[ \t]*\r?$", re.MULTILINE)
_OBJ_VERTEX = re.compile(rb"^[ \t]*v[ \t]", re.MULTILINE)
_OBJ_NONFINITE_VERTEX = re.compile(rb"^[ \t]*v[ \t].*(?:nan|inf).*$", re.MULTILINE | re.IGNORECASE)
_OBJ_NEGATIVE_FACE = re.compile(rb"^[ \t]*f[ \t][^\n]*-\d", re.MULTILINE)


def _prepare_obj(data: bytes, label: str, resolver: FolderResolver) -> bytes:
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


def _prepare_ply(data: bytes, label: str, resolver: FolderResolver) -> bytes:
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


def _prepare_stl(data: bytes, label: str, resolver: FolderResolver) -> bytes:
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


def _prepare_off(data: bytes, label: str, resolver: FolderResolver) -> bytes:
    """Check the OFF header keyword."""
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise MeshLoadError(f"{label}: not an OFF file (it contains binary data)")
    text = data[:_SNIFF_BYTES].decode("utf-8", "replace")
    words = re.sub(r"#[^\n]*", "", text).split()
    if not words or not re.fullmatch(r"C?OFF(\d.*)?", words[0]):
        raise MeshLoadError(f"{label}: not an OFF file (it does not start with 'OFF')")
    return data


# --- glTF / GLB ----------------------------------------------------------------------------


def _prepare_gltf(data: bytes, label: str, resolver: FolderResolver) -> bytes:
    """Parse the glTF JSON, check every uri, and rewrite triangle fans trimesh cannot read."""
    try:
        header = json.loads(data.decode("utf-8-sig"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise MeshLoadError(f"{label}: not a valid glTF file (invalid JSON: {one_line(exc)})") from exc
    _check_gltf_header(header, label, resolver)

    def buffer(index: int) -> bytes:
        return _read_gltf_buffer(header, index, None, resolver, label)

    if _triangulate_fans(header, buffer):
        data = json.dumps(header).encode("utf-8")
    return data


def _prepare_glb(data: bytes, label: str, resolver: FolderResolver) -> bytes:
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
        raise MeshLoadError(f"{label}: corrupt GLB: invalid JSON chunk ({one_line(exc)})") from exc
    return header, chunks


def _join_glb(header: dict, chunks: list[tuple[int, bytes]]) -> bytes:
    """A GLB container with `header` as its JSON chunk and the other chunks unchanged."""
    text = json.dumps(header).encode("utf-8")
    text += b" " * (-len(text) % 4)
    body = b"".join(struct.pack("<II", len(p), k) + p for k, p in [(_GLB_JSON, text)] + chunks[1:])
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def _check_gltf_header(header: object, label: str, resolver: FolderResolver) -> None:
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
            if not confined_path(uri, resolver.folder, label).is_file():
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


def _read_gltf_buffer(header: dict, index: int, binary: bytes | None, resolver: FolderResolver, label: str) -> bytes:
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


_PREPARE: dict[str, Callable[[bytes, str, FolderResolver], bytes]] = {
    ".obj": _prepare_obj,
    ".gltf": _prepare_gltf,
    ".glb": _prepare_glb,
    ".ply": _prepare_ply,
    ".stl": _prepare_stl,
    ".off": _prepare_off,
}


def read_gltf_document(path: Path, label: str) -> tuple[dict, list[bytes], FolderResolver]:
    """The untouched JSON of a .gltf/.glb file, the bytes of each of its buffers, and the
    resolver confined to its folder (for external images). Checked like `load_file` does."""
    data = path.read_bytes()
    resolver = FolderResolver(path.absolute().parent, label)
    binary = None
    if path.suffix.lower() == ".glb":
        header, chunks = _split_glb(data, label)
        binary = next((payload for kind, payload in chunks if kind == _GLB_BIN), None)
    else:
        try:
            header = json.loads(data.decode("utf-8-sig"))
        except (UnicodeDecodeError, ValueError) as exc:
            raise MeshLoadError(f"{label}: not a valid glTF file (invalid JSON: {one_line(exc)})") from exc
    _check_gltf_header(header, label, resolver)
    buffers = [_read_gltf_buffer(header, i, binary, resolver, label) for i in range(len(header.get("buffers") or []))]
    return header, buffers, resolver
