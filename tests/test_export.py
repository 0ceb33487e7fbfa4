"""Export: glTF/GLB/OBJ round trips, material packing, validator, metadata, atomic writes."""
from __future__ import annotations

import dataclasses
import io
import json
import os
import struct
import zlib
from pathlib import Path
from urllib.parse import unquote

import kornia
import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from PIL import Image

from csd_texture.datatypes import MeshData, PBRMaps
from csd_texture.errors import ExportError, InputError
from csd_texture.export import export_textured_mesh, output_files, read_metadata, save_maps, sidecar_path
from csd_texture.fileio import atomic_output, atomic_outputs, atomic_write_bytes
from csd_texture.version import __version__
import gltf_validator as validator_helper
from gltf_validator import assert_valid_gltf, validate_gltf

FORMATS = (".glb", ".gltf", ".obj")
SCALE = 2.5
OFFSET = np.array([1.0e7, -3.0e7, 2.0e7])
ROTATION = trimesh.transformations.rotation_matrix(0.7, [1.0, 2.0, 3.0])[:3, :3]


@dataclasses.dataclass
class _Schedule:
    start: float
    end: float


# ----------------------------------------------------------------------------- fixtures


def _to_source(mirror: bool = False) -> np.ndarray:
    """Uniform scale, a rotation, optionally a mirror, and a translation far from the origin."""
    linear = SCALE * ROTATION @ np.diag([-1.0 if mirror else 1.0, 1.0, 1.0])
    matrix = np.eye(4)
    matrix[:3, :3] = linear
    matrix[:3, 3] = OFFSET
    return matrix


def _ball(mirror: bool = False) -> MeshData:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    v = np.asarray(sphere.vertices, np.float32)
    u = np.arctan2(v[:, 2], v[:, 0]) / (2 * np.pi) + 0.5
    w = 1.0 - np.arccos(np.clip(v[:, 1], -1.0, 1.0)) / np.pi
    return MeshData(
        vertices=v,
        faces=np.asarray(sphere.faces, np.int32),
        normals=np.asarray(sphere.vertex_normals, np.float32),
        uv=np.stack([u, w], axis=1).astype(np.float32),
        to_source=_to_source(mirror),
        name="test ball",
        part_names=("body", "lid"),
    )


@pytest.fixture
def mesh() -> MeshData:
    return _ball()


@pytest.fixture
def maps() -> PBRMaps:
    """Random maps, 24 rows x 32 columns so a flip or transpose cannot go unnoticed."""
    rng = np.random.default_rng(5)
    height, width = 24, 32
    return PBRMaps(
        albedo=rng.random((height, width, 3), dtype=np.float32),
        roughness=rng.random((height, width, 1), dtype=np.float32),
        metallic=rng.random((height, width, 1), dtype=np.float32),
        coverage=np.ones((height, width), bool),
    )


@pytest.fixture
def metadata() -> dict:
    return {
        "prompt": "a weathered bronze statue",
        "negative_prompt": "",
        "seed": np.int64(7),
        "model": {"id": "tiny/sd", "revision": "abc123"},
        "steps": 12,
        "settings": {
            "guidance_scale": np.float32(0.5),
            "resolution": (64, 64),
            "out_dir": Path("/x/y"),
            "lr": float("nan"),
            "schedule": _Schedule(0.25, 1.0),
            "history": np.array([0.5, 0.25]),
            "extra": None,
        },
        "timings": {"optimize": 1.5},
        "device": "cpu",
        "note": "café ☕",
    }


EXPECTED_METADATA = {
    "generator": f"csd-texture {__version__}",
    "prompt": "a weathered bronze statue",
    "negative_prompt": "",
    "seed": 7,
    "model": {"id": "tiny/sd", "revision": "abc123"},
    "steps": 12,
    "settings": {
        "guidance_scale": 0.5,
        "resolution": [64, 64],
        "out_dir": "/x/y",
        "lr": "nan",
        "schedule": {"start": 0.25, "end": 1.0},
        "history": [0.5, 0.25],
        "extra": None,
    },
    "timings": {"optimize": 1.5},
    "device": "cpu",
    "note": "café ☕",
}


# ----------------------------------------------------------------------------- expectations


def _expected_basecolor(maps: PBRMaps, bits: int = 8) -> np.ndarray:
    """sRGB base colour computed independently with kornia (float64)."""
    linear = torch.from_numpy(maps.albedo.astype(np.float64)).permute(2, 0, 1)
    srgb = kornia.color.linear_rgb_to_rgb(linear).permute(1, 2, 0).numpy()
    return np.round(srgb * ((1 << bits) - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def _expected_grey(channel: np.ndarray, bits: int = 8) -> np.ndarray:
    return np.round(channel[..., 0].astype(np.float64) * ((1 << bits) - 1)).astype(np.uint8 if bits == 8 else np.uint16)


def _diagonal(points: np.ndarray) -> float:
    return float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))


def _assert_positions_close(actual: np.ndarray, expected: np.ndarray) -> None:
    error = np.abs(np.asarray(actual, np.float64) - expected).max()
    assert error < 1e-5 * _diagonal(expected), f"position error {error} vs diagonal {_diagonal(expected)}"


# ----------------------------------------------------------------------------- readers


def _pixels(data: bytes) -> np.ndarray:
    return np.array(Image.open(io.BytesIO(data)))


def _decode_png16(data: bytes) -> tuple[int, int, np.ndarray]:
    """(bit depth, colour type, samples) of a PNG using filter 0 rows (what we write)."""
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, chunks = 8, {}
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos:pos + 4])
        tag = data[pos + 4:pos + 8]
        chunks[tag] = chunks.get(tag, b"") + data[pos + 8:pos + 8 + length]
        pos += 12 + length
    width, height, depth, colour = struct.unpack(">IIBB", chunks[b"IHDR"][:10])
    channels = {0: 1, 2: 3, 6: 4}[colour]
    rows = np.frombuffer(zlib.decompress(chunks[b"IDAT"]), np.uint8).reshape(height, -1)
    assert (rows[:, 0] == 0).all()
    samples = rows[:, 1:].copy().view(">u2").reshape(height, width, channels).astype(np.uint16)
    return depth, colour, samples


class _Gltf:
    """A written .glb/.gltf read back with pygltflib, with helpers for accessors and images."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.doc = pygltflib.GLTF2().load(str(path))

    def _buffer(self, index: int) -> bytes:
        uri = self.doc.buffers[index].uri
        return self.doc.binary_blob() if uri is None else (self.path.parent / unquote(uri)).read_bytes()

    def accessor(self, index: int) -> np.ndarray:
        acc = self.doc.accessors[index]
        view = self.doc.bufferViews[acc.bufferView]
        dtypes = {pygltflib.FLOAT: "<f4", pygltflib.UNSIGNED_SHORT: "<u2", pygltflib.UNSIGNED_INT: "<u4"}
        dtype = dtypes[acc.componentType]
        width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[acc.type]
        offset = (view.byteOffset or 0) + (acc.byteOffset or 0)
        data = np.frombuffer(self._buffer(view.buffer), dtype, count=acc.count * width, offset=offset)
        return data.reshape(acc.count, width)

    def image(self, texture_index: int) -> np.ndarray:
        image = self.doc.images[self.doc.textures[texture_index].source]
        if image.uri is not None:
            return _pixels((self.path.parent / unquote(image.uri)).read_bytes())
        view = self.doc.bufferViews[image.bufferView]
        offset = view.byteOffset or 0
        return _pixels(self._buffer(view.buffer)[offset:offset + view.byteLength])

    @property
    def primitive(self) -> pygltflib.Primitive:
        return self.doc.meshes[0].primitives[0]

    def world_positions(self) -> np.ndarray:
        translation = np.asarray(self.doc.nodes[0].translation, np.float64)
        return self.accessor(self.primitive.attributes.POSITION).astype(np.float64) + translation


# ----------------------------------------------------------------------------- glTF / GLB


@pytest.mark.parametrize("suffix", [".glb", ".gltf"])
def test_gltf_round_trip_pygltflib(tmp_path, mesh, maps, metadata, suffix):
    out = export_textured_mesh(mesh, maps, tmp_path / f"out{suffix}", metadata)
    gltf = _Gltf(out)
    attributes = gltf.primitive.attributes

    _assert_positions_close(gltf.world_positions(), mesh.world_vertices())
    uv = gltf.accessor(attributes.TEXCOORD_0)
    np.testing.assert_array_equal(uv, np.stack([mesh.uv[:, 0], np.float32(1) - mesh.uv[:, 1]], axis=1))
    np.testing.assert_allclose(gltf.accessor(attributes.NORMAL), mesh.normals @ ROTATION.T, atol=1e-5)
    np.testing.assert_array_equal(gltf.accessor(gltf.primitive.indices).reshape(-1, 3), mesh.faces)
    assert gltf.doc.accessors[gltf.primitive.indices].componentType == pygltflib.UNSIGNED_SHORT

    positions = gltf.accessor(attributes.POSITION)
    position_accessor = gltf.doc.accessors[attributes.POSITION]
    np.testing.assert_array_equal(position_accessor.min, positions.min(axis=0))
    np.testing.assert_array_equal(position_accessor.max, positions.max(axis=0))
    assert gltf.doc.asset.generator == f"csd-texture {__version__}"
    assert gltf.doc.meshes[0].extras == {"part_names": ["body", "lid"]}


@pytest.mark.parametrize("suffix", [".glb", ".gltf"])
def test_gltf_material_textures_and_sampler(tmp_path, mesh, maps, metadata, suffix):
    gltf = _Gltf(export_textured_mesh(mesh, maps, tmp_path / f"out{suffix}", metadata))
    material = gltf.doc.materials[gltf.primitive.material]
    pbr = material.pbrMetallicRoughness
    assert pbr.baseColorTexture is not None and pbr.metallicRoughnessTexture is not None
    assert (pbr.metallicFactor, pbr.roughnessFactor) == (1.0, 1.0)
    assert material.doubleSided is True

    basecolor = gltf.image(pbr.baseColorTexture.index)
    np.testing.assert_array_equal(basecolor, _expected_basecolor(maps))
    packed = gltf.image(pbr.metallicRoughnessTexture.index)
    assert packed.shape == (24, 32, 3) and packed.dtype == np.uint8
    np.testing.assert_array_equal(packed[..., 1], _expected_grey(maps.roughness))
    np.testing.assert_array_equal(packed[..., 2], _expected_grey(maps.metallic))

    for texture in gltf.doc.textures:
        sampler = gltf.doc.samplers[texture.sampler]
        assert sampler.minFilter == pygltflib.LINEAR_MIPMAP_LINEAR
        assert sampler.magFilter == pygltflib.LINEAR
        assert {sampler.wrapS, sampler.wrapT} <= {pygltflib.CLAMP_TO_EDGE, pygltflib.REPEAT}


@pytest.mark.parametrize("suffix", [".glb", ".gltf"])
def test_gltf_round_trip_trimesh(tmp_path, mesh, maps, metadata, suffix):
    out = export_textured_mesh(mesh, maps, tmp_path / f"out{suffix}", metadata)
    scene = trimesh.load(out, process=False)
    loaded = scene.to_geometry()
    _assert_positions_close(loaded.vertices, mesh.world_vertices())
    np.testing.assert_allclose(loaded.visual.uv, mesh.uv, atol=1e-6)
    material = loaded.visual.material
    np.testing.assert_array_equal(np.array(material.baseColorTexture), _expected_basecolor(maps))
    packed = np.array(material.metallicRoughnessTexture)
    np.testing.assert_array_equal(packed[..., 0], 255)
    np.testing.assert_array_equal(packed[..., 1], _expected_grey(maps.roughness))
    np.testing.assert_array_equal(packed[..., 2], _expected_grey(maps.metallic))


def test_gltf_writes_relative_companion_files(tmp_path, mesh, maps, metadata):
    out = export_textured_mesh(mesh, maps, tmp_path / "my model.gltf", metadata)
    expected = {
        "my model.gltf", "my model.bin", "my model_basecolor.png", "my model_metallicRoughness.png", "my model.json",
    }
    assert {p.name for p in tmp_path.iterdir()} == expected
    doc = json.loads(out.read_text(encoding="utf-8"))
    assert doc["buffers"][0]["uri"] == "my%20model.bin"
    assert [image["uri"] for image in doc["images"]] == ["my%20model_basecolor.png", "my%20model_metallicRoughness.png"]
    assert {p.name for p in output_files(out)} == expected


def test_glb_is_one_file_plus_sidecar(tmp_path, mesh, maps, metadata):
    out = export_textured_mesh(mesh, maps, tmp_path / "out.glb", metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.glb", "out.json"]
    magic, version, length = struct.unpack("<III", out.read_bytes()[:12])
    assert (magic, version, length) == (0x46546C67, 2, out.stat().st_size)
    assert length % 4 == 0


def test_gltf_outputs_pass_khronos_validator(tmp_path, mesh, maps, metadata, gltf_validator):
    glb = export_textured_mesh(mesh, maps, tmp_path / "out.glb", metadata)
    gltf = export_textured_mesh(mesh, maps, tmp_path / "out.gltf", metadata)
    mirrored = export_textured_mesh(_ball(mirror=True), maps, tmp_path / "mirrored.glb", metadata)
    reports = gltf_validator(glb, gltf, mirrored)
    for report in reports:
        assert report["info"]["hasTextures"] is True
        assert report["info"]["totalTriangleCount"] == mesh.num_faces
        assert {r["image"]["bits"] for r in report["info"]["resources"] if "image" in r} == {8}


def test_validator_harness_reports_broken_files(tmp_path, mesh, maps, metadata):
    out = export_textured_mesh(mesh, maps, tmp_path / "out.gltf", metadata)
    doc = json.loads(out.read_text(encoding="utf-8"))
    del doc["accessors"][0]["min"]  # POSITION accessors must have min and max
    out.write_text(json.dumps(doc), encoding="utf-8")
    with pytest.raises(AssertionError, match="error .* at /meshes/0/primitives/0/attributes/POSITION"):
        assert_valid_gltf(out)
    assert validate_gltf(out)[0]["issues"]["numErrors"] >= 1


def test_missing_validator_fails_under_ci_and_skips_locally(monkeypatch):
    monkeypatch.setattr(validator_helper.shutil, "which", lambda name: None)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="npm ci --prefix tools/gltf-validator"):
        validator_helper.require_validator()
    monkeypatch.delenv("CI")
    with pytest.raises(pytest.skip.Exception, match="npm ci --prefix tools/gltf-validator"):
        validator_helper.require_validator()


def test_zero_normals_are_written_as_unit_vectors(tmp_path, mesh, maps, metadata, caplog):
    normals = mesh.normals.copy()
    normals[:3] = [[0, 0, 0], [np.nan, 0, 0], [0, 0, 0]]
    out = export_textured_mesh(dataclasses.replace(mesh, normals=normals), maps, tmp_path / "out.glb", metadata)
    gltf = _Gltf(out)
    written = gltf.accessor(gltf.primitive.attributes.NORMAL)
    np.testing.assert_allclose(np.linalg.norm(written, axis=1), 1.0, atol=1e-6)
    np.testing.assert_array_equal(written[:3], [[0, 1, 0]] * 3)
    np.testing.assert_allclose(written[3:], mesh.normals[3:] @ ROTATION.T, atol=1e-5)
    assert "3 zero or invalid normals" in caplog.text
    assert_valid_gltf(out)


def _grid_mesh(rows: int, cols: int) -> MeshData:
    """A flat (rows x cols)-vertex grid in the z = 0 plane, normals +Z, uv = grid position."""
    u, v = np.meshgrid(np.linspace(0, 1, cols), np.linspace(0, 1, rows))
    vertices = np.stack([u * 2 - 1, v * 2 - 1, np.zeros_like(u)], axis=-1).reshape(-1, 3).astype(np.float32)
    index = np.arange(rows * cols).reshape(rows, cols)
    a, b, c, d = index[:-1, :-1], index[:-1, 1:], index[1:, 1:], index[1:, :-1]
    faces = np.concatenate([np.stack([a, b, c], -1).reshape(-1, 3), np.stack([a, c, d], -1).reshape(-1, 3)])
    normals = np.tile(np.float32([0, 0, 1]), (len(vertices), 1))
    uv = np.stack([u, v], axis=-1).reshape(-1, 2).astype(np.float32)
    return MeshData(vertices=vertices, faces=faces.astype(np.int32), normals=normals, uv=uv, name="grid")


def test_large_mesh_uses_uint32_indices_and_validates(tmp_path, maps, metadata):
    grid = _grid_mesh(260, 260)  # 67,600 vertices: more than UNSIGNED_SHORT can index
    out = export_textured_mesh(grid, maps, tmp_path / "grid.glb", metadata)
    gltf = _Gltf(out)
    assert gltf.doc.accessors[gltf.primitive.indices].componentType == pygltflib.UNSIGNED_INT
    np.testing.assert_array_equal(gltf.accessor(gltf.primitive.indices).reshape(-1, 3), grid.faces)
    assert_valid_gltf(out)


@pytest.mark.parametrize("mirror", [False, True])
def test_winding_matches_world_normals(tmp_path, maps, metadata, mirror):
    mesh = _ball(mirror)
    gltf = _Gltf(export_textured_mesh(mesh, maps, tmp_path / "out.glb", metadata))
    positions = gltf.world_positions()
    faces = gltf.accessor(gltf.primitive.indices).reshape(-1, 3)
    normals = gltf.accessor(gltf.primitive.attributes.NORMAL)
    a, b, c = (positions[faces[:, i]] for i in range(3))
    geometric = np.cross(b - a, c - a)
    assert (np.einsum("fc,fc->f", geometric, normals[faces].mean(axis=1)) > 0).all()
    np.testing.assert_allclose(np.linalg.norm(normals, axis=1), 1.0, atol=1e-6)


# ----------------------------------------------------------------------------- OBJ


def test_obj_round_trip(tmp_path, mesh, maps, metadata):
    out = export_textured_mesh(mesh, maps, tmp_path / "out.obj", metadata)
    loaded = trimesh.load(out, process=False, maintain_order=True)
    _assert_positions_close(loaded.vertices, mesh.world_vertices())
    np.testing.assert_allclose(loaded.visual.uv, mesh.uv, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, mesh.faces)
    np.testing.assert_array_equal(np.array(loaded.visual.material.image), _expected_basecolor(maps))

    mtl = {}
    for line in (tmp_path / "out.mtl").read_text().splitlines():
        key, _, value = line.partition(" ")
        mtl[key] = value
    assert mtl["map_Kd"] == "out_basecolor.png"
    np.testing.assert_array_equal(_pixels((tmp_path / mtl["map_Pr"]).read_bytes()), _expected_grey(maps.roughness))
    np.testing.assert_array_equal(_pixels((tmp_path / mtl["map_Pm"]).read_bytes()), _expected_grey(maps.metallic))
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in output_files(out))


def test_obj_companions_have_no_spaces(tmp_path, mesh, maps, metadata):
    out = export_textured_mesh(mesh, maps, tmp_path / "my model.obj", metadata)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([
        "my model.obj", "my model.json", "my_model.mtl",
        "my_model_basecolor.png", "my_model_roughness.png", "my_model_metallic.png",
    ])
    assert "mtllib my_model.mtl" in out.read_text().splitlines()
    loaded = trimesh.load(out, process=False, maintain_order=True)
    np.testing.assert_array_equal(np.array(loaded.visual.material.image), _expected_basecolor(maps))


def _two_parts(mesh: MeshData) -> MeshData:
    """The ball as two source parts: the upper half 'lid' in material 'brass', the rest 'body' in 'clay'."""
    upper = mesh.vertices[mesh.faces].mean(axis=1)[:, 1] > 0.3
    return dataclasses.replace(mesh, face_parts=upper.astype(np.int32), part_labels=(("clay", "body"), ("brass", "lid")))


def test_obj_keeps_groups_and_material_names(tmp_path, mesh, maps, metadata):
    """OBJ output: a `g` group and `usemtl` per source part, one MTL material per name on the same maps."""
    parts = _two_parts(mesh)
    out = export_textured_mesh(parts, maps, tmp_path / "out.obj", metadata)
    lines = out.read_text().splitlines()
    assert [line for line in lines if line.startswith(("g ", "usemtl "))] == ["g body", "usemtl clay", "g lid", "usemtl brass"]
    mtl = (tmp_path / "out.mtl").read_text()
    assert mtl.count("newmtl ") == 2 and "newmtl clay" in mtl and "newmtl brass" in mtl
    loaded = trimesh.load_scene(out, split_groups=True, process=False)
    faces = {name.split("_")[0]: len(geometry.faces) for name, geometry in loaded.geometry.items()}
    assert faces == {"body": int((parts.face_parts == 0).sum()), "lid": int((parts.face_parts == 1).sum())}


@pytest.mark.parametrize("suffix", [".glb", ".gltf"])
def test_gltf_has_one_primitive_per_source_material(tmp_path, mesh, maps, metadata, suffix, gltf_validator):
    parts = _two_parts(mesh)
    out = export_textured_mesh(parts, maps, tmp_path / f"out{suffix}", metadata)
    gltf = pygltflib.GLTF2().load(str(out))
    assert [m.name for m in gltf.materials] == ["clay", "brass"]
    (gltf_mesh,) = gltf.meshes
    assert [p.material for p in gltf_mesh.primitives] == [0, 1]
    assert len({p.attributes.POSITION for p in gltf_mesh.primitives}) == 1  # the vertices are shared
    counts = [gltf.accessors[p.indices].count // 3 for p in gltf_mesh.primitives]
    assert counts == [int((parts.face_parts == 0).sum()), int((parts.face_parts == 1).sum())]
    gltf_validator(out)


# ----------------------------------------------------------------------------- metadata


@pytest.mark.parametrize("suffix", FORMATS)
def test_metadata_round_trips(tmp_path, mesh, maps, metadata, suffix):
    out = export_textured_mesh(mesh, maps, tmp_path / f"out{suffix}", metadata)
    assert read_metadata(out) == EXPECTED_METADATA
    assert json.loads(sidecar_path(out).read_text(encoding="utf-8")) == EXPECTED_METADATA
    assert sidecar_path(out) == tmp_path / "out.json"
    if suffix != ".obj":
        assert _Gltf(out).doc.asset.extras == EXPECTED_METADATA
        sidecar_path(out).unlink()
        assert read_metadata(out) == EXPECTED_METADATA  # from asset.extras alone


def test_read_metadata_errors(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        read_metadata(tmp_path / "missing.glb")
    plain = tmp_path / "plain.glb"
    pygltflib.GLTF2(asset=pygltflib.Asset(version="2.0")).save(str(plain))
    with pytest.raises(InputError, match="no csd-texture metadata"):
        read_metadata(plain)
    corrupt = tmp_path / "corrupt.gltf"
    corrupt.write_text("{ not json")
    with pytest.raises(InputError, match="corrupt.gltf"):
        read_metadata(corrupt)
    other = tmp_path / "mesh.ply"
    other.write_text("ply")
    with pytest.raises(InputError, match=r"\.glb, \.gltf, \.obj"):
        read_metadata(other)


# ----------------------------------------------------------------------------- refusals


@pytest.mark.parametrize("name", ["out.fbx", "out.ply", "out", "out.glb.tmp"])
def test_unknown_extension_is_refused(tmp_path, mesh, maps, metadata, name):
    with pytest.raises(ExportError, match=r"\.glb, \.gltf, \.obj"):
        export_textured_mesh(mesh, maps, tmp_path / name, metadata)
    assert list(tmp_path.iterdir()) == []


def test_uppercase_extension_is_accepted(tmp_path, mesh, maps, metadata):
    out = export_textured_mesh(mesh, maps, tmp_path / "OUT.GLB", metadata)
    assert out.read_bytes()[:4] == b"glTF"


@pytest.mark.parametrize(
    ("output", "input_name"), [("in.obj", "in.obj"), ("scene.gltf", "scene.bin"), ("a.glb", "a.json")]
)
def test_refuses_to_overwrite_input(tmp_path, mesh, maps, metadata, output, input_name):
    source = tmp_path / input_name
    source.write_bytes(b"original")
    for recorded in (str(source), [tmp_path / "other.obj", source]):
        with pytest.raises(InputError, match="refusing to overwrite an input"):
            export_textured_mesh(mesh, maps, tmp_path / output, {**metadata, "input": recorded})
    assert source.read_bytes() == b"original"
    assert [p.name for p in tmp_path.iterdir()] == [input_name]


def test_bad_mesh_or_maps_raise_export_error(tmp_path, mesh, maps, metadata):
    with pytest.raises(ExportError, match="no UVs"):
        export_textured_mesh(dataclasses.replace(mesh, uv=None), maps, tmp_path / "a.glb", metadata)
    bad_uv = mesh.uv.copy()
    bad_uv[5, 1] = np.inf
    with pytest.raises(ExportError, match="infinite UVs"):
        export_textured_mesh(dataclasses.replace(mesh, uv=bad_uv), maps, tmp_path / "a.glb", metadata)
    with pytest.raises(ExportError, match="roughness"):
        short = dataclasses.replace(maps, roughness=maps.roughness[:5])
        export_textured_mesh(mesh, short, tmp_path / "a.glb", metadata)
    bad = maps.albedo.copy()
    bad[0, 0, 0] = np.nan
    with pytest.raises(ExportError, match="NaN"):
        export_textured_mesh(mesh, dataclasses.replace(maps, albedo=bad), tmp_path / "a.glb", metadata)
    with pytest.raises(ExportError, match="8 or 16"):
        save_maps(maps, tmp_path / "maps", bits=12)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- atomic writes


def _fail_on_write(monkeypatch, which: int) -> None:
    """Make the `which`-th Path.write_bytes call write half its data, then raise OSError."""
    real = Path.write_bytes
    calls = []

    def flaky(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == which:
            real(self, data[: len(data) // 2])
            raise OSError(28, "No space left on device")
        return real(self, data)

    monkeypatch.setattr(Path, "write_bytes", flaky)


@pytest.mark.parametrize("suffix", FORMATS)
@pytest.mark.parametrize("fail_at", ["first", "last"])
def test_failed_export_leaves_nothing(tmp_path, monkeypatch, mesh, maps, metadata, suffix, fail_at):
    path = tmp_path / f"out{suffix}"
    _fail_on_write(monkeypatch, 1 if fail_at == "first" else len(output_files(path)))
    with pytest.raises(ExportError, match="No space left"):
        export_textured_mesh(mesh, maps, path, metadata)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("suffix", FORMATS)
def test_failed_export_keeps_previous_output(tmp_path, monkeypatch, mesh, maps, metadata, suffix):
    path = export_textured_mesh(mesh, maps, tmp_path / f"out{suffix}", metadata)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    _fail_on_write(monkeypatch, len(output_files(path)))
    with pytest.raises(ExportError):
        export_textured_mesh(mesh, maps, path, {**metadata, "prompt": "something else"})
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before


def test_atomic_output_replaces_on_success_and_cleans_on_error(tmp_path):
    target = tmp_path / "sub" / "file.png"
    with atomic_output(target) as temp:
        assert temp.parent == target.parent and temp.suffix == ".png" and temp.name.startswith(".")
        temp.write_bytes(b"new")
        assert not target.exists()
    assert target.read_bytes() == b"new"
    with pytest.raises(RuntimeError):
        with atomic_output(target) as temp:
            temp.write_bytes(b"partial")
            raise RuntimeError("interrupted")
    assert target.read_bytes() == b"new"
    assert [p.name for p in target.parent.iterdir()] == ["file.png"]


def test_atomic_write_bytes_mode_follows_umask(tmp_path):
    old = os.umask(0o027)
    try:
        path = atomic_write_bytes(tmp_path / "a.bin", b"abc")
    finally:
        os.umask(old)
    assert path.read_bytes() == b"abc"
    assert path.stat().st_mode & 0o777 == 0o640


def test_atomic_outputs_rejects_duplicates(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        with atomic_outputs([tmp_path / "a", tmp_path / "a"]):
            pass
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- save_maps


def test_save_maps_8bit(tmp_path, maps):
    paths = save_maps(maps, tmp_path / "maps")
    assert {name: p.name for name, p in paths.items()} == {
        "basecolor": "basecolor.png", "roughness": "roughness.png", "metallic": "metallic.png", "orm": "orm.png",
    }
    images = {name: Image.open(p) for name, p in paths.items()}
    modes = {name: im.mode for name, im in images.items()}
    assert modes == {"basecolor": "RGB", "roughness": "L", "metallic": "L", "orm": "RGB"}
    np.testing.assert_array_equal(np.array(images["basecolor"]), _expected_basecolor(maps))
    np.testing.assert_array_equal(np.array(images["roughness"]), _expected_grey(maps.roughness))
    np.testing.assert_array_equal(np.array(images["metallic"]), _expected_grey(maps.metallic))
    orm = np.array(images["orm"])
    np.testing.assert_array_equal(orm[..., 0], 255)
    np.testing.assert_array_equal(orm[..., 1], _expected_grey(maps.roughness))
    np.testing.assert_array_equal(orm[..., 2], _expected_grey(maps.metallic))


def test_save_maps_16bit(tmp_path, maps):
    paths = save_maps(maps, tmp_path, bits=16)
    expected = {
        "basecolor": (2, _expected_basecolor(maps, 16)),
        "roughness": (0, _expected_grey(maps.roughness, 16)[..., None]),
        "metallic": (0, _expected_grey(maps.metallic, 16)[..., None]),
        "orm": (2, np.stack(
            [np.full((24, 32), 65535), _expected_grey(maps.roughness, 16), _expected_grey(maps.metallic, 16)], -1
        )),
    }
    for name, (colour, values) in expected.items():
        data = paths[name].read_bytes()
        depth, colour_type, samples = _decode_png16(data)
        assert (depth, colour_type) == (16, colour)
        np.testing.assert_array_equal(samples, values)
        decoded = np.array(Image.open(io.BytesIO(data)))  # PIL: full 16-bit grey, high byte of RGB
        np.testing.assert_array_equal(decoded.reshape(values.shape), values if colour == 0 else values >> 8)
    assert len(np.unique(expected["roughness"][1] & 0xFF)) > 1  # the low byte carries information
