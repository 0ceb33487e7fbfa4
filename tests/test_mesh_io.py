"""mesh_io: every format round-trips with its placement, bad files get their exact outcome,
and references outside an asset's folder are never followed."""
from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import socket
import struct
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image
from scipy.spatial import cKDTree

from csd_texture.errors import ConfigError, MeshLoadError, MeshValidationError, UnsafeReferenceError
from csd_texture.mesh_io import SUPPORTED_EXTENSIONS, is_mesh_file, load_mesh, parse_up_axis

DATA = Path(__file__).parent / "data" / "meshes"
GOOD, BAD = DATA / "good", DATA / "bad"


# --- helpers -------------------------------------------------------------------------------

_AUDIT: dict[str, list] = {}


def _audit_hook(event: str, args: tuple) -> None:
    if event in _AUDIT:
        _AUDIT[event].append(args)


sys.addaudithook(_audit_hook)  # hooks cannot be removed; it records only inside `io_audit`


@pytest.fixture
def io_audit(monkeypatch):
    """Records every file opened and every socket connection attempted; connections fail.
    Clear a list before the code under test runs to ignore the test's own set-up."""
    _AUDIT.update({"open": [], "socket.connect": [], "socket.getaddrinfo": []})

    def refuse(*args, **kwargs):
        raise AssertionError("a network connection was attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    yield _AUDIT
    _AUDIT.clear()


def _opened(audit: dict) -> list[str]:
    return [os.fsdecode(args[0]) for args in audit["open"] if isinstance(args[0], (str, bytes, os.PathLike))]


def _reference_vertices(scene: trimesh.Scene | trimesh.Trimesh) -> np.ndarray:
    """World-space positions of every vertex used by a face, straight from trimesh."""
    if isinstance(scene, trimesh.Trimesh):
        scene = trimesh.Scene(scene)
    chunks = []
    for node in scene.graph.nodes_geometry:
        transform, name = scene.graph[node]
        geometry = scene.geometry[name]
        if isinstance(geometry, trimesh.Trimesh) and len(geometry.faces):
            used = np.asarray(geometry.vertices, dtype=np.float64)[np.unique(geometry.faces)]
            chunks.append(used @ transform[:3, :3].T + transform[:3, 3])
    return np.concatenate(chunks)


def _assert_placement(mesh, reference: np.ndarray, tol: float = 1e-5) -> None:
    """Output world positions equal the input's within `tol` of the bbox diagonal."""
    world = mesh.world_vertices()
    diagonal = float(np.linalg.norm(np.ptp(reference, axis=0)))
    limit = tol * diagonal
    np.testing.assert_allclose(world.min(axis=0), reference.min(axis=0), rtol=0, atol=limit)
    np.testing.assert_allclose(world.max(axis=0), reference.max(axis=0), rtol=0, atol=limit)
    assert cKDTree(reference).query(world)[0].max() <= limit
    assert cKDTree(world).query(reference)[0].max() <= limit


def _assert_normalised(mesh) -> None:
    v = mesh.vertices
    assert v.dtype == np.float32 and mesh.faces.dtype == np.int32 and mesh.normals.dtype == np.float32
    assert mesh.to_source.dtype == np.float64 and mesh.to_source.shape == (4, 4)
    assert np.abs(v).max() <= 1.0 + 1e-6
    assert np.ptp(v, axis=0).max() == pytest.approx(2.0, abs=1e-5)
    np.testing.assert_allclose((v.max(axis=0) + v.min(axis=0)) / 2, 0.0, atol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(mesh.normals, axis=1), 1.0, atol=1e-5)
    assert mesh.faces.min() >= 0 and mesh.faces.max() < len(v)


def _sample_mesh() -> trimesh.Trimesh:
    """A closed, asymmetric mesh: a capsule with a box stuck on it."""
    capsule = trimesh.creation.capsule(height=1.0, radius=0.4, count=[12, 12])
    box = trimesh.creation.box(extents=[0.3, 0.2, 0.5])
    box.apply_translation([0.5, 0.2, 0.1])
    return trimesh.util.concatenate([capsule, box])


def _write_triangle_gltf(folder: Path, name: str = "asset.gltf", buffer_uri: str | None = None,
                         image_uri: str | None = None, extra: dict | None = None) -> Path:
    """A one-triangle glTF whose buffer is `buffer_uri` (a data URI when None)."""
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype="<f4").tobytes()
    if buffer_uri is None:
        buffer_uri = "data:application/octet-stream;base64," + base64.b64encode(positions).decode()
    header = {
        "asset": {"version": "2.0"},
        "scene": 0,
        "scenes": [{"nodes": [0]}],
        "nodes": [{"mesh": 0, "name": "tri"}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}}]}],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                       "min": [0, 0, 0], "max": [1, 1, 0]}],
        "bufferViews": [{"buffer": 0, "byteLength": len(positions)}],
        "buffers": [{"byteLength": len(positions), "uri": buffer_uri}],
    }
    if image_uri is not None:
        header["images"] = [{"uri": image_uri}]
    header.update(extra or {})
    path = folder / name
    path.write_text(json.dumps(header), encoding="utf-8")
    return path


def _glb(header: dict, binary: bytes) -> bytes:
    text = json.dumps(header).encode()
    text += b" " * (-len(text) % 4)
    binary += b"\0" * (-len(binary) % 4)
    body = struct.pack("<II", len(text), 0x4E4F534A) + text + struct.pack("<II", len(binary), 0x004E4942) + binary
    return b"glTF" + struct.pack("<II", 2, 12 + len(body)) + body


def _split_glb(blob: bytes) -> tuple[dict, bytes]:
    """(JSON header, binary chunk) of a two-chunk GLB."""
    size = struct.unpack_from("<I", blob, 12)[0]
    binary_size = struct.unpack_from("<I", blob, 20 + size)[0]
    return json.loads(blob[20:20 + size]), blob[28 + size:28 + size + binary_size]


def _digest(folder: Path) -> dict[str, tuple[str, float]]:
    return {str(p): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime)
            for p in sorted(folder.rglob("*")) if p.is_file() and not p.is_symlink()}


# --- API surface ---------------------------------------------------------------------------


def test_supported_extensions_and_is_mesh_file(tmp_path):
    assert SUPPORTED_EXTENSIONS == (".obj", ".gltf", ".glb", ".ply", ".stl", ".off")
    assert is_mesh_file(BAD / "busted.STL")  # extension case does not matter
    assert is_mesh_file(GOOD / "Duck.glb")
    assert not is_mesh_file(GOOD / "fuze uv.jpg")
    assert not is_mesh_file(GOOD / "fuze.obj.mtl")
    assert not is_mesh_file(tmp_path / "missing.obj")
    (tmp_path / "folder.obj").mkdir()
    assert not is_mesh_file(tmp_path / "folder.obj")


@pytest.mark.parametrize("value, expected", [(None, (0, 1, 0)), ("z", (0, 0, 1)), ("-X", (-1, 0, 0)),
                                             ("+y", (0, 1, 0)), ((0, 0, 2), (0, 0, 1))])
def test_parse_up_axis(value, expected):
    assert parse_up_axis(value) == pytest.approx(expected)


@pytest.mark.parametrize("value", ["w", "--z", "", (0, 0, 0), (1, 2)])
def test_parse_up_axis_refuses_nonsense(value):
    with pytest.raises(ConfigError, match="up_axis"):
        parse_up_axis(value)


def test_up_axis_sets_field_without_moving_the_output(tmp_path):
    path = tmp_path / "part.stl"
    _sample_mesh().export(path)
    default, z_up = load_mesh(path), load_mesh(path, up_axis="z")
    assert default.up_axis == (0.0, 1.0, 0.0)
    assert z_up.up_axis == (0.0, 0.0, 1.0)
    np.testing.assert_array_equal(z_up.world_vertices(), default.world_vertices())


def test_in_memory_trimesh_and_scene(tmp_path):
    mesh = _sample_mesh()
    before = mesh.vertices.copy()
    data = load_mesh(mesh, name="thing")
    assert data.name == "thing"
    _assert_normalised(data)
    _assert_placement(data, _reference_vertices(mesh))
    np.testing.assert_array_equal(mesh.vertices, before)  # the input object is not modified

    scene = trimesh.Scene()
    scene.add_geometry(mesh, node_name="left", transform=trimesh.transformations.translation_matrix([-3, 0, 0]))
    scene.add_geometry(mesh, node_name="right", transform=trimesh.transformations.translation_matrix([3, 0, 0]))
    data = load_mesh(scene)
    assert data.part_names == ("left", "right")
    assert data.num_faces == 2 * len(mesh.faces)
    _assert_placement(data, _reference_vertices(scene))


def test_rejects_other_objects():
    with pytest.raises(MeshLoadError, match="cannot load a mesh from a int"):
        load_mesh(3)


# --- round trips per format ----------------------------------------------------------------


@pytest.mark.parametrize("file_type, encoding", [("ply", "ascii"), ("ply", "binary"), ("stl", "ascii"),
                                                 ("stl", "binary"), ("off", None), ("obj", None)])
def test_round_trip_simple_formats(tmp_path, file_type, encoding):
    mesh = _sample_mesh()
    path = tmp_path / f"sample.{file_type}"
    if file_type == "stl":
        blob = trimesh.exchange.stl.export_stl_ascii(mesh) if encoding == "ascii" else trimesh.exchange.stl.export_stl(mesh)
        path.write_bytes(blob.encode() if isinstance(blob, str) else blob)
    else:
        kwargs = {"encoding": encoding} if encoding else {}
        mesh.export(path, file_type=file_type, **kwargs)
    data = load_mesh(path)
    _assert_normalised(data)
    _assert_placement(data, np.asarray(mesh.vertices))
    assert data.num_faces == len(mesh.faces)
    assert len(data.vertices) == len(mesh.vertices)  # STL's per-triangle corners are welded again
    assert data.name == "sample"
    # normals point outwards: the mesh is closed and its signed volume positive
    assert trimesh.Trimesh(data.vertices, data.faces, process=False).volume > 0


def test_obj_quads_negative_indices_non_ascii_names_and_texture(tmp_path, caplog):
    folder = tmp_path / "Möbel und Stühle"
    folder.mkdir()
    Image.new("RGB", (8, 4), (200, 100, 50)).save(folder / "holz ö.png")
    (folder / "stuhl mat.mtl").write_text("newmtl holz\nKd 1 1 1\nmap_Kd holz ö.png\n", encoding="utf-8")
    corners = [(0, 0, 0), (2, 0, 0), (2, 1, 0), (0, 1, 0), (0, 0, 1), (2, 0, 1), (2, 1, 1), (0, 1, 1)]
    lines = ["# a box of quads, negative (relative) indices", "mtllib stuhl mat.mtl", "o Stuhl_ö"]
    lines += [f"v {x} {y} {z}" for x, y, z in corners[:4]]
    lines += ["vt 0 0", "vt 1 0", "vt 1 1", "vt 0 1", "usemtl holz", "f -4/-4 -3/-3 -2/-2 -1/-1"]
    lines += [f"v {x} {y} {z}" for x, y, z in corners[4:]]
    lines += ["f 5/1 8/4 7/3 6/2", "f 1/1 5/2 6/3 2/4"]
    path = folder / "stuhl ö.obj"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    caplog.set_level(logging.WARNING)
    data = load_mesh(path)
    assert not caplog.records
    assert data.num_faces == 6  # three quads, triangulated
    assert data.part_names == ("Stuhl_ö",)
    assert data.name == "stuhl ö"
    _assert_placement(data, np.array(corners, dtype=np.float64)[[0, 1, 2, 3, 4, 5, 6, 7]])
    assert data.uv is not None and data.uv.shape == (len(data.vertices), 2)
    assert data.base_color_image.shape == (4, 8, 3) and data.base_color_image.dtype == np.float32
    np.testing.assert_allclose(data.base_color_image[0, 0], np.array([200, 100, 50]) / 255, atol=1e-6)


def test_obj_with_vertex_colours(tmp_path):
    path = tmp_path / "coloured.obj"
    path.write_text("v 0 0 0 1 0 0\nv 1 0 0 0 1 0\nv 0 1 0 0 0 1\nv 1 1 0 1 1 1\nf 1 2 3\nf 2 4 3\n")
    data = load_mesh(path)
    assert data.num_faces == 2
    _assert_placement(data, np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype=np.float64))


def _textured_box() -> trimesh.Trimesh:
    box = trimesh.creation.box(extents=[1.0, 2.0, 3.0])
    uv = (box.vertices[:, :2] + [0.5, 1.0]) / [1.0, 2.0]
    image = Image.new("RGB", (16, 16), (10, 200, 30))
    box.visual = trimesh.visual.TextureVisuals(uv=uv, material=trimesh.visual.material.PBRMaterial(baseColorTexture=image))
    return box


def test_gltf_with_external_buffers_and_image(tmp_path):
    scene = trimesh.Scene()
    scene.add_geometry(_textured_box(), node_name="crate",
                       transform=trimesh.transformations.rotation_matrix(0.3, [0, 1, 0]))
    files = trimesh.exchange.gltf.export_gltf(scene)
    header = json.loads(files.pop("model.gltf"))
    for buffer in header["buffers"]:  # give the external files names with spaces
        data = files.pop(buffer["uri"])
        buffer["uri"] = buffer["uri"].replace("gltf_", "my%20")
        (tmp_path / buffer["uri"].replace("%20", " ")).write_bytes(data)
    assert not files and header.get("images", [{}])[0].get("uri") is None  # image lives in a buffer view
    path = tmp_path / "crate model.gltf"
    path.write_text(json.dumps(header))
    data = load_mesh(path)
    _assert_normalised(data)
    _assert_placement(data, _reference_vertices(scene))
    assert data.part_names == ("crate",)
    assert data.uv is not None
    np.testing.assert_allclose(data.base_color_image, np.broadcast_to(np.array([10, 200, 30]) / 255, (16, 16, 3)),
                               atol=1e-6)


def test_gltf_with_external_image_file(tmp_path):
    Image.new("RGB", (4, 4), (255, 0, 0)).save(tmp_path / "red tex.png")
    box = _textured_box()
    files = trimesh.exchange.gltf.export_gltf(trimesh.Scene(box), embed_buffers=True)
    header = json.loads(files["model.gltf"])
    header["images"] = [{"uri": "red%20tex.png"}]
    path = tmp_path / "box.gltf"
    path.write_text(json.dumps(header))
    data = load_mesh(path)
    np.testing.assert_allclose(data.base_color_image, np.broadcast_to([1.0, 0.0, 0.0], (4, 4, 3)))


def test_gltf_with_data_uri(tmp_path):
    mesh = _sample_mesh()
    files = trimesh.exchange.gltf.export_gltf(trimesh.Scene(mesh), embed_buffers=True)
    assert list(files) == ["model.gltf"]
    path = tmp_path / "embedded.gltf"
    path.write_bytes(files["model.gltf"])
    data = load_mesh(path)
    _assert_placement(data, np.asarray(mesh.vertices))
    assert data.up_axis == (0.0, 1.0, 0.0)


def test_glb_several_nodes_with_transforms(tmp_path):
    scene = trimesh.Scene()
    tf = trimesh.transformations
    scene.add_geometry(_sample_mesh(), node_name="body", transform=tf.translation_matrix([10, 0, 0]))
    scene.add_geometry(trimesh.creation.icosphere(subdivisions=2), node_name="head",
                       transform=tf.concatenate_matrices(tf.translation_matrix([0, 5, 0]), tf.scale_matrix(0.5)))
    scene.add_geometry(trimesh.creation.cylinder(radius=0.2, height=3), node_name="arm",
                       transform=tf.rotation_matrix(np.pi / 3, [1, 0, 1]))
    mirrored = np.diag([-1.0, 1.0, 1.0, 1.0])
    mirrored[:3, 3] = [-4, 0, 2]
    scene.add_geometry(_sample_mesh(), node_name="mirror image", transform=mirrored)
    path = tmp_path / "robot.glb"
    path.write_bytes(trimesh.exchange.gltf.export_glb(scene))
    data = load_mesh(path)
    _assert_normalised(data)
    _assert_placement(data, _reference_vertices(scene))
    assert set(data.part_names) == {"body", "head", "arm", "mirror image"}
    # every closed part still faces outwards, the mirrored one included
    pieces = trimesh.Trimesh(data.vertices, data.faces, process=False).split(only_watertight=False)
    assert all(piece.volume > 0 for piece in pieces if piece.is_watertight)


def _strip_fan_glb() -> tuple[bytes, float]:
    """A GLB with a quad as an indexed triangle strip, and a node holding a regular hexagon as
    an unindexed fan plus the quad again as an indexed (uint8) fan; returns it and its area."""
    quad = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [1, 1, 0]], dtype="<f4")
    angles = np.arange(6) * np.pi / 3
    hexagon = np.stack([np.cos(angles), np.sin(angles), np.full(6, 2.0)], axis=1).astype("<f4")
    strip_indices = np.array([0, 1, 2, 3], dtype="<u2")
    fan_indices = np.array([0, 1, 3, 2], dtype="<u1")
    binary = quad.tobytes() + hexagon.tobytes() + strip_indices.tobytes() + fan_indices.tobytes()
    header = {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": [0, 1]}],
        "nodes": [{"mesh": 0, "name": "strip"}, {"mesh": 1, "name": "fan", "translation": [0, 0, 5]}],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "indices": 2, "mode": 5}]},
                   {"primitives": [{"attributes": {"POSITION": 1}, "mode": 6},
                                   {"attributes": {"POSITION": 0}, "indices": 3, "mode": 6}]}],
        "accessors": [
            {"bufferView": 0, "componentType": 5126, "count": 4, "type": "VEC3", "min": [0, 0, 0], "max": [1, 1, 0]},
            {"bufferView": 1, "componentType": 5126, "count": 6, "type": "VEC3",
             "min": hexagon.min(0).tolist(), "max": hexagon.max(0).tolist()},
            {"bufferView": 2, "componentType": 5123, "count": 4, "type": "SCALAR"},
            {"bufferView": 3, "componentType": 5121, "count": 4, "type": "SCALAR"}],
        "bufferViews": [{"buffer": 0, "byteOffset": 0, "byteLength": 48},
                        {"buffer": 0, "byteOffset": 48, "byteLength": 72},
                        {"buffer": 0, "byteOffset": 120, "byteLength": 8},
                        {"buffer": 0, "byteOffset": 128, "byteLength": 4}],
        "buffers": [{"byteLength": len(binary)}],
    }
    hexagon_area = 3 * np.sqrt(3) / 2
    return _glb(header, binary), 2.0 + hexagon_area


@pytest.mark.parametrize("ext", [".glb", ".gltf"])
def test_triangle_strips_and_fans(tmp_path, ext):
    blob, area = _strip_fan_glb()
    if ext == ".gltf":  # the same asset with its buffer as a data URI
        header, binary = _split_glb(blob)
        header["buffers"][0]["uri"] = "data:application/octet-stream;base64," + base64.b64encode(binary).decode()
        blob = json.dumps(header).encode()
    path = tmp_path / f"strips{ext}"
    path.write_bytes(blob)
    before = path.read_bytes()
    data = load_mesh(path)
    assert data.num_faces == 2 + 4 + 2
    assert sorted(data.part_names) == ["fan", "fan", "strip"]  # one part per primitive
    world = trimesh.Trimesh(data.world_vertices(), data.faces, process=False)
    assert world.area == pytest.approx(area, rel=1e-5)
    assert path.read_bytes() == before  # the fan was rewritten in memory only


def test_far_from_origin(tmp_path):
    mesh = _sample_mesh()
    offset = np.array([1.0e7, -2.0e7, 3.0e7])
    vertices = np.asarray(mesh.vertices) + offset
    lines = [f"v {x:.17g} {y:.17g} {z:.17g}" for x, y, z in vertices] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in mesh.faces]
    path = tmp_path / "far.obj"
    path.write_text("\n".join(lines) + "\n")
    data = load_mesh(path)
    _assert_normalised(data)
    _assert_placement(data, vertices)
    np.testing.assert_allclose(data.to_source[:3, 3], (vertices.min(0) + vertices.max(0)) / 2)


@pytest.mark.parametrize("scale", [1e-6, 1e6])
def test_tiny_and_huge_scales(tmp_path, scale):
    mesh = _sample_mesh()
    mesh.apply_scale(scale)
    path = tmp_path / "scaled.ply"
    mesh.export(path, encoding="binary")
    data = load_mesh(path)
    _assert_normalised(data)
    _assert_placement(data, np.asarray(mesh.vertices))
    assert data.num_faces == len(mesh.faces)


# --- the sample meshes ---------------------------------------------------------------------


@pytest.mark.parametrize("name", ["animal.obj", "blub.obj", "bunny.ply", "fuze.obj", "hand_prismatic.obj",
                                  "suzanne.ply", "teddy.obj", "Duck.glb", "CesiumMilkTruck.glb"])
def test_good_samples_keep_placement(name):
    data = load_mesh(GOOD / name)
    _assert_normalised(data)
    reference = trimesh.load_scene(GOOD / name, process=False)
    _assert_placement(data, _reference_vertices(reference))


def test_duck_keeps_uvs_and_texture():
    data = load_mesh(GOOD / "Duck.glb")
    assert data.up_axis == (0.0, 1.0, 0.0)
    assert data.part_names == ("LOD3spShape",)
    assert data.num_faces == 4212
    assert data.uv.shape == (len(data.vertices), 2) and data.uv.dtype == np.float32
    assert data.base_color_image.shape == (512, 512, 3)
    assert 0.0 <= data.base_color_image.min() and data.base_color_image.max() <= 1.0


def test_milk_truck_parts_and_instances():
    data = load_mesh(GOOD / "CesiumMilkTruck.glb")
    # the wheels mesh is instanced by two nodes; both are kept, in world space
    assert data.part_names.count("Wheels") == 2
    assert len(data.part_names) == 5
    assert data.uv is None  # parts without texture coordinates: the atlas is rebuilt
    assert data.base_color_image is None


def test_fuze_texture_with_space_in_its_name():
    data = load_mesh(GOOD / "fuze.obj")
    expected = np.asarray(Image.open(GOOD / "fuze uv.jpg").convert("RGB"), dtype=np.float32) / 255
    assert data.base_color_image.shape == (1024, 1024, 3)
    np.testing.assert_allclose(data.base_color_image, expected)
    assert data.uv is not None


def test_teddy_parts_without_shared_texture_drop_uvs():
    data = load_mesh(GOOD / "teddy.obj")
    assert data.part_names == ("teddy", "teddy_1")
    assert data.uv is None


def test_suzanne_ply_uvs_without_texture():
    data = load_mesh(GOOD / "suzanne.ply")
    assert data.uv is not None and data.base_color_image is None
    assert np.isfinite(data.uv).all()


# --- each file in bad/ ---------------------------------------------------------------------


def test_bad_busted_stl_loads_welded(caplog):
    caplog.set_level(logging.WARNING)
    data = load_mesh(BAD / "busted.STL")
    assert (len(data.vertices), data.num_faces) == (1941, 3878)
    assert trimesh.Trimesh(data.vertices, data.faces, process=False).is_watertight
    assert not caplog.records


def test_bad_empty_obj_refused():
    with pytest.raises(MeshLoadError) as info:
        load_mesh(BAD / "empty.obj")
    assert str(info.value) == f"{BAD / 'empty.obj'}: no geometry (the file is empty or has only comments)"


def test_bad_nancolor_obj_repaired(caplog):
    caplog.set_level(logging.WARNING)
    data = load_mesh(BAD / "nancolor.obj")
    assert (len(data.vertices), data.num_faces) == (8, 12)
    assert [r.getMessage() for r in caplog.records] == [
        f"{BAD / 'nancolor.obj'}: 1 vertex colour(s) are NaN/inf; ignored (vertex colours are not used)"
    ]


def test_bad_notenoughindices_obj_repaired(caplog):
    caplog.set_level(logging.WARNING)
    data = load_mesh(BAD / "notenoughindices.obj")
    assert data.num_faces == 1
    _assert_placement(data, np.array([[-500, 0, 500], [500, 0, 500], [500, 500, 500]], dtype=np.float64))
    messages = [r.getMessage() for r in caplog.records]
    label = BAD / "notenoughindices.obj"
    assert messages == [f"{label}: dropped 1 face(s) with fewer than 3 vertices",
                        f"{label}: referenced file 'surface.mtl' not found; ignoring it"]


def test_bad_ply_empty_header_refused():
    with pytest.raises(MeshLoadError, match=r"ply_empty_header\.ply: PLY header declares no elements \(empty header\)$"):
        load_mesh(BAD / "ply_empty_header.ply")


def test_bad_points_ascii_ply_refused():
    with pytest.raises(MeshValidationError, match=r"points_ascii\.ply: is a point cloud \(5 points, no faces\)"):
        load_mesh(BAD / "points_ascii.ply")


def test_bad_soup_stl_loads_as_separate_triangles(caplog):
    caplog.set_level(logging.WARNING)
    data = load_mesh(BAD / "soup.stl")
    assert (len(data.vertices), data.num_faces) == (300, 100)
    assert not caplog.records


# --- other refusals ------------------------------------------------------------------------


def _refused(path: Path, error: type, text: str) -> str:
    start = time.perf_counter()
    with pytest.raises(error) as info:
        load_mesh(path)
    assert time.perf_counter() - start < 2.0  # refused fast
    message = str(info.value)
    assert "\n" not in message and message.startswith(str(path)) and text in message
    return message


@pytest.mark.parametrize("ext", SUPPORTED_EXTENSIONS)
def test_zero_byte_files_refused(tmp_path, ext):
    path = tmp_path / f"nothing{ext}"
    path.write_bytes(b"")
    _refused(path, MeshLoadError, "file is empty")


@pytest.mark.parametrize("ext, text", [
    (".obj", "not a text OBJ file"), (".ply", "not a PLY file"), (".stl", "not a valid STL file"),
    (".off", "not an OFF file"), (".glb", "not a GLB file"), (".gltf", "not a valid glTF file"),
])
def test_garbage_bytes_refused(tmp_path, ext, text):
    path = tmp_path / f"garbage{ext}"
    path.write_bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8).tobytes())
    _refused(path, MeshLoadError, text)


def test_truncated_glb_refused(tmp_path):
    path = tmp_path / "cut.glb"
    blob = (GOOD / "Duck.glb").read_bytes()
    path.write_bytes(blob[: len(blob) // 2])
    _refused(path, MeshLoadError, f"truncated GLB: header declares {len(blob)} bytes but the file has {len(blob) // 2}")


def test_glb_binary_chunk_shorter_than_buffer_refused(tmp_path):
    header, binary = _split_glb((GOOD / "Duck.glb").read_bytes())
    header["buffers"][0]["byteLength"] += 100
    path = tmp_path / "short.glb"
    path.write_bytes(_glb(header, binary))
    _refused(path, MeshLoadError, "truncated GLB: binary chunk has")


@pytest.mark.parametrize("name", ["model.fbx", "model", "model.obj.bak"])
def test_unsupported_extension_refused(tmp_path, name):
    path = tmp_path / name
    path.write_text("v 0 0 0\n")
    _refused(path, MeshLoadError, "unsupported file type")


def test_missing_file_and_folder_refused(tmp_path):
    _refused(tmp_path / "absent.obj", MeshLoadError, "file not found")
    (tmp_path / "dir.obj").mkdir()
    _refused(tmp_path / "dir.obj", MeshLoadError, "not a regular file")


def test_obj_without_faces_refused(tmp_path):
    path = tmp_path / "points.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 0 1 0\n")
    _refused(path, MeshValidationError, "has 3 vertices but no faces")


def test_all_degenerate_refused(tmp_path):
    path = tmp_path / "flat.obj"
    path.write_text("v 0 0 0\nv 1 0 0\nv 2 0 0\nv 3 0 0\nf 1 2 3\nf 2 3 4\nf 1 1 2\n")
    _refused(path, MeshValidationError, "all 3 faces are degenerate (zero area)")
    point = tmp_path / "point.obj"
    point.write_text("v 1 1 1\nv 1 1 1\nv 1 1 1\nf 1 2 3\n")
    _refused(point, MeshValidationError, "degenerate (zero area)")


def test_mostly_nonfinite_refused(tmp_path):
    path = tmp_path / "nan.obj"
    path.write_text("v nan 0 0\nv 1 nan 0\nv 0 1 inf\nv 1 1 0\nf 1 2 3\nf 2 4 3\n")
    _refused(path, MeshValidationError, "3 of 4 vertices have NaN/inf coordinates")


def test_stl_with_zero_triangles_refused(tmp_path):
    path = tmp_path / "none.stl"
    path.write_bytes(b"\0" * 80 + struct.pack("<I", 0))
    _refused(path, MeshValidationError, "STL file has no triangles")


def test_ply_with_vertices_only_refused(tmp_path):
    path = tmp_path / "cloud.ply"
    trimesh.PointCloud(np.random.default_rng(0).random((20, 3))).export(path)
    _refused(path, MeshValidationError, "is a point cloud (20 points, no faces)")


def _points_and_lines_header(modes: list[int]) -> dict:
    positions = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype="<f4").tobytes()
    uri = "data:application/octet-stream;base64," + base64.b64encode(positions).decode()
    return {
        "asset": {"version": "2.0"}, "scene": 0, "scenes": [{"nodes": list(range(len(modes)))}],
        "nodes": [{"mesh": i} for i in range(len(modes))],
        "meshes": [{"primitives": [{"attributes": {"POSITION": 0}, "mode": m}]} for m in modes],
        "accessors": [{"bufferView": 0, "componentType": 5126, "count": 3, "type": "VEC3",
                       "min": [0, 0, 0], "max": [1, 1, 0]}],
        "bufferViews": [{"buffer": 0, "byteLength": len(positions)}],
        "buffers": [{"byteLength": len(positions), "uri": uri}],
    }


def test_gltf_with_only_points_and_lines_refused(tmp_path):
    path = tmp_path / "lines.gltf"
    path.write_text(json.dumps(_points_and_lines_header([0, 1, 3])))
    _refused(path, MeshValidationError, "contains only points or lines (no triangles)")


def test_gltf_points_and_lines_ignored_beside_triangles(tmp_path, caplog):
    path = tmp_path / "mixed.gltf"
    path.write_text(json.dumps(_points_and_lines_header([4, 0, 1])))
    caplog.set_level(logging.WARNING)
    data = load_mesh(path)
    assert data.num_faces == 1
    assert f"{path}: ignoring 2 point/line primitive(s); only triangles are textured" in caplog.messages


def test_scene_points_ignored_beside_triangles(caplog):
    scene = trimesh.Scene([_sample_mesh(), trimesh.PointCloud(np.random.default_rng(0).random((10, 3)) + 5)])
    caplog.set_level(logging.WARNING)
    data = load_mesh(scene, name="mixed")
    assert data.num_faces == len(_sample_mesh().faces)
    assert "mixed: ignoring 1 point/line geometry; only triangles are textured" in caplog.messages
    with pytest.raises(MeshValidationError, match="only points or lines"):
        load_mesh(trimesh.Scene([trimesh.PointCloud(np.random.default_rng(0).random((10, 3)))]))


def test_draco_compressed_gltf_refused(tmp_path):
    path = _write_triangle_gltf(tmp_path, extra={"extensionsRequired": ["KHR_draco_mesh_compression"],
                                                "extensionsUsed": ["KHR_draco_mesh_compression"]})
    _refused(path, MeshLoadError, "uses KHR_draco_mesh_compression")


def test_gltf_version_1_refused(tmp_path):
    path = _write_triangle_gltf(tmp_path, extra={"asset": {"version": "1.0"}})
    _refused(path, MeshLoadError, "glTF version 1.0 is not supported")


def test_gltf_missing_buffer_file_refused(tmp_path):
    path = _write_triangle_gltf(tmp_path, buffer_uri="gone.bin")
    _refused(path, MeshLoadError, "referenced file 'gone.bin' (buffers[0]) not found")


# --- repairs -------------------------------------------------------------------------------


def _obj(path: Path, vertices, faces) -> Path:
    lines = [f"v {' '.join(map(str, v))}" for v in vertices] + [f"f {' '.join(str(i + 1) for i in f)}" for f in faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_few_nonfinite_vertices_dropped_with_warning(tmp_path, caplog):
    grid = trimesh.creation.box()
    vertices = np.vstack([grid.vertices, [[np.nan, 0, 0], [0, np.inf, 0]]])
    faces = np.vstack([grid.faces, [[8, 0, 1], [9, 1, 2], [8, 9, 3]]])
    caplog.set_level(logging.WARNING)
    data = load_mesh(_obj(tmp_path / "some_nan.obj", vertices, faces))
    assert data.num_faces == 12 and len(data.vertices) == 8
    assert np.isfinite(data.vertices).all() and np.isfinite(data.to_source).all()
    assert any("2 vertices have NaN/inf coordinates; dropped 3 face(s) using them" in m for m in caplog.messages)


def test_duplicate_degenerate_and_unreferenced_repaired(tmp_path, caplog):
    box = trimesh.creation.box()
    vertices = np.vstack([box.vertices, [[5, 5, 5], [6, 6, 6]]])  # two unused vertices
    faces = np.vstack([box.faces, box.faces[:2], box.faces[3:4, ::-1], [[0, 0, 1], [0, 1, 1]]])
    caplog.set_level(logging.WARNING)
    path = tmp_path / "messy.ply"  # PLY keeps unused vertices (trimesh's OBJ reader drops them)
    trimesh.Trimesh(vertices, faces, process=False).export(path)
    data = load_mesh(path)
    assert data.num_faces == 12 and len(data.vertices) == 8
    _assert_placement(data, np.asarray(box.vertices))
    label = path
    assert caplog.messages == [f"{label}: dropped 2 degenerate (zero-area) face(s)",
                               f"{label}: dropped 3 duplicate face(s)",
                               f"{label}: removed 2 unreferenced vertices"]


def test_inconsistent_winding_fixed(tmp_path, caplog):
    sphere = trimesh.creation.icosphere(subdivisions=2)
    faces = sphere.faces.copy()
    faces[::7] = faces[::7, ::-1]
    caplog.set_level(logging.WARNING)
    data = load_mesh(_obj(tmp_path / "flipped.obj", sphere.vertices, faces))
    fixed = trimesh.Trimesh(data.vertices, data.faces, process=False)
    assert fixed.is_winding_consistent and fixed.volume > 0
    assert any("face winding was inconsistent; fixed" in m for m in caplog.messages)
    # normals point outwards on a sphere centred at the origin
    assert (np.einsum("ij,ij->i", data.normals, data.vertices) > 0).all()


def test_inside_out_closed_mesh_flipped(tmp_path, caplog):
    box = trimesh.creation.box()
    caplog.set_level(logging.WARNING)
    data = load_mesh(_obj(tmp_path / "inside_out.obj", box.vertices, box.faces[:, ::-1]))
    assert trimesh.Trimesh(data.vertices, data.faces, process=False).volume > 0
    assert caplog.messages == [f"{tmp_path / 'inside_out.obj'}: 12 face(s) of closed pieces pointed inwards; flipped"]


def test_nan_source_uvs_dropped(caplog):
    box = _textured_box()
    box.visual.uv[0] = np.nan
    caplog.set_level(logging.WARNING)
    data = load_mesh(box, name="nan uv")
    assert data.uv is None and data.base_color_image is None
    assert "nan uv: source UVs contain NaN/inf values; ignoring them" in caplog.messages


def test_uv_seams_stay_split_but_share_normals():
    box = _textured_box()  # trimesh's box has 8 corners; give each face its own corners and UVs
    unmerged = trimesh.Trimesh(box.vertices[box.faces].reshape(-1, 3), np.arange(36).reshape(-1, 3), process=False)
    uv = np.tile([[0, 0], [1, 0], [1, 1]], (12, 1)).astype(np.float64)
    unmerged.visual = trimesh.visual.TextureVisuals(uv=uv, material=box.visual.material)
    data = load_mesh(unmerged)
    assert data.uv is not None
    assert 8 < len(data.vertices) < 36  # welded where position and UV agree, split where UVs differ
    key = {tuple(v): n for v, n in zip(data.vertices.tolist(), data.normals.tolist())}
    for v, n in zip(data.vertices.tolist(), data.normals.tolist()):
        np.testing.assert_allclose(n, key[tuple(v)], atol=1e-6)  # one normal per position


# --- security ------------------------------------------------------------------------------


@pytest.fixture
def sandbox(tmp_path):
    """(asset folder, sentinel file outside it)."""
    folder = tmp_path / "asset"
    folder.mkdir()
    sentinel = tmp_path / "secret.bin"
    sentinel.write_bytes(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype="<f4").tobytes())
    return folder, sentinel


@pytest.mark.parametrize("kind", ["absolute", "dotdot", "encoded dotdot", "symlink", "http", "https", "file",
                                  "image absolute"])
def test_gltf_unsafe_references_refused(sandbox, io_audit, kind):
    folder, sentinel = sandbox
    (folder / "link.bin").symlink_to(sentinel)
    uri = {
        "absolute": str(sentinel), "dotdot": "../secret.bin", "encoded dotdot": "%2E%2E/secret.bin",
        "symlink": "link.bin", "http": "http://example.com/secret.bin", "https": "https://example.com/a.bin",
        "file": sentinel.as_uri(), "image absolute": str(sentinel),
    }[kind]
    if kind.startswith("image"):
        path = _write_triangle_gltf(folder, image_uri=uri)
    else:
        path = _write_triangle_gltf(folder, buffer_uri=uri)
    io_audit["open"].clear()
    with pytest.raises(UnsafeReferenceError) as info:
        load_mesh(path)
    message = str(info.value)
    assert repr(uri) in message and message.startswith(str(path)) and "\n" not in message
    assert str(sentinel) not in _opened(io_audit)
    assert not io_audit["socket.connect"] and not io_audit["socket.getaddrinfo"]


def test_glb_external_uri_outside_folder_refused(sandbox, io_audit):
    folder, sentinel = sandbox
    blob, _ = _strip_fan_glb()
    header, binary = _split_glb(blob)
    header["images"] = [{"uri": "../secret.bin"}]
    path = folder / "asset.glb"
    path.write_bytes(_glb(header, binary))
    io_audit["open"].clear()
    with pytest.raises(UnsafeReferenceError, match=r"'\.\./secret\.bin'.*escapes"):
        load_mesh(path)
    assert str(sentinel) not in _opened(io_audit)


def test_safe_relative_references_load(sandbox, io_audit):
    folder, _ = sandbox
    (folder / "sub").mkdir()
    (folder / "sub" / "tri.bin").write_bytes(np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype="<f4").tobytes())
    path = _write_triangle_gltf(folder, buffer_uri="sub/../sub/tri.bin")
    io_audit["open"].clear()
    data = load_mesh(path)
    assert data.num_faces == 1
    assert str((folder / "sub" / "tri.bin").resolve()) in _opened(io_audit)


def test_obj_references_outside_folder_ignored(sandbox, io_audit, caplog):
    folder, sentinel = sandbox
    outside_mtl = sentinel.parent / "outside.mtl"
    outside_mtl.write_text("newmtl m\nKd 1 0 0\n")
    (folder / "inside.mtl").write_text("newmtl m\nKd 1 1 1\nmap_Kd ../secret.bin\n")
    escaping = folder / "escaping.obj"
    escaping.write_text("mtllib ../outside.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nusemtl m\nf 1 2 3\n")
    texture = folder / "texture.obj"
    texture.write_text("mtllib inside.mtl\nv 0 0 0\nv 1 0 0\nv 0 1 0\nvt 0 0\nvt 1 0\nvt 0 1\nusemtl m\nf 1/1 2/2 3/3\n")
    caplog.set_level(logging.WARNING)
    io_audit["open"].clear()
    assert load_mesh(escaping).num_faces == 1
    data = load_mesh(texture)
    assert data.num_faces == 1 and data.base_color_image is None
    opened = _opened(io_audit)
    assert str(sentinel) not in opened and str(outside_mtl) not in opened
    assert str((folder / "inside.mtl").resolve()) in opened
    assert any(m.startswith(f"{escaping}: unsafe reference '../outside.mtl'") and m.endswith("ignoring it")
               for m in caplog.messages)
    assert any(m.startswith(f"{texture}: unsafe reference '../secret.bin'") for m in caplog.messages)


def test_inputs_never_modified(tmp_path):
    folder = tmp_path / "copy"
    folder.mkdir()
    for name in ("fuze.obj", "fuze.obj.mtl", "fuze uv.jpg", "Duck.glb"):
        (folder / name).write_bytes((GOOD / name).read_bytes())
    (folder / "fan.glb").write_bytes(_strip_fan_glb()[0])
    before = _digest(folder)
    for name in ("fuze.obj", "Duck.glb", "fan.glb"):
        load_mesh(folder / name)
    assert _digest(folder) == before
    assert sorted(p.name for p in folder.iterdir()) == sorted(Path(p).name for p in before)


@pytest.mark.parametrize("header", [
    {"asset": {"version": "2.0"}, "meshes": "nonsense"},
    {"asset": {"version": "2.0"}, "meshes": [{"primitives": [{"attributes": {"POSITION": 7}}]}]},
    {"asset": {"version": "2.0"}, "buffers": [{"uri": 5}], "meshes": [{"primitives": [{"attributes": {}}]}]},
])
def test_corrupt_gltf_structure_refused(tmp_path, header):
    path = tmp_path / "corrupt.gltf"
    path.write_text(json.dumps(header))
    message = _refused(path, MeshLoadError, "")
    assert "corrupt" in message or "cannot parse glTF file" in message


def test_box_is_exact_after_dropping_faces(tmp_path):
    """A dropped face's far vertex must not leave the result off-centre or smaller than 2."""
    box = trimesh.creation.box()
    vertices = np.vstack([box.vertices, [[100, 0, 0], [100, 0, 0.0]]])
    faces = np.vstack([box.faces, [[0, 8, 9]]])  # degenerate sliver reaching x = 100
    path = tmp_path / "sliver.ply"
    trimesh.Trimesh(vertices, faces, process=False).export(path)
    data = load_mesh(path)
    _assert_normalised(data)
    _assert_placement(data, np.asarray(box.vertices))


def test_obj_groups_and_materials_become_parts(tmp_path):
    """`g` groups and `usemtl` names are kept as (material, group) part labels for every face."""
    (tmp_path / "two.mtl").write_text("newmtl wood\nKd 0.5 0.3 0.1\nnewmtl cloth\nKd 0.8 0.1 0.1\n")
    (tmp_path / "two.obj").write_text(
        "mtllib two.mtl\nv 0 0 0\nv 1 0 0\nv 1 1 0\nv 0 1 0\nv 0 0 1\nv 1 0 1\n"
        "g seat\nusemtl wood\nf 1 2 3\nf 1 3 4\ng cushion\nusemtl cloth\nf 1 2 6\nf 1 6 5\n")
    data = load_mesh(tmp_path / "two.obj")
    labels = [data.part_labels[i] for i in data.face_parts]
    assert sorted(labels) == [("cloth", "cushion")] * 2 + [("wood", "seat")] * 2
    assert set(data.part_names) == {"seat", "cushion"}

