"""Normal maps (Config.normal_map): tangents, the perturbed shading normal, recovery of a bump
pattern by the photometric objective, bake, and glTF/OBJ export (Khronos validator)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import torch
import trimesh
from click.testing import CliRunner

from csd_texture.bake import bake_maps
from csd_texture.cameras import orbit_cameras
from csd_texture.config import Config
from csd_texture.datatypes import MeshData, PBRMaps
from csd_texture.errors import ConfigError
from csd_texture.export import export_textured_mesh, save_maps
from csd_texture.lighting import fixed_environment_lighting, fixed_lighting
from csd_texture.optimize import PhotometricObjective, optimize
from csd_texture.render import get_rasterizer
from csd_texture.render.tangents import perturbed_normal, vertex_tangents
from csd_texture.render.views import Surface, render_views
from csd_texture.testing import bump_reference
from csd_texture.texture import (
    HybridTexture,
    ImageTexture,
    NormalMappedTexture,
    make_texture,
)

RASTERIZER = get_rasterizer("torch")
SIZE = 48
DATA = Path(__file__).parent / "data" / "meshes"


def _cube(rotation: np.ndarray | None = None) -> MeshData:
    """A cube of six quads (split vertices, flat normals), each face its own tile of a 3 x 2 UV
    layout, optionally rotated. Tile 1 (the -X face) has its u mirrored."""
    vertices, normals, uvs, faces = [], [], [], []
    for k in range(6):
        axis, sign = k // 2, (-1.0, 1.0)[k % 2]
        n = np.zeros(3)
        n[axis] = sign
        a = np.zeros(3)
        a[(axis + 1) % 3] = 1.0
        b = np.cross(n, a)
        col, row = k % 3, k // 3
        for u, v in ((0, 0), (1, 0), (1, 1), (0, 1)):
            vertices.append(n + (2 * u - 1) * a + (2 * v - 1) * b)
            normals.append(n)
            tu = 1 - u if k == 1 else u
            uvs.append(((col + 0.1 + 0.8 * tu) / 3, (row + 0.1 + 0.8 * v) / 2))
        faces += [[4 * k, 4 * k + 1, 4 * k + 2], [4 * k, 4 * k + 2, 4 * k + 3]]
    vertices, normals = np.array(vertices) * 0.8, np.array(normals)
    if rotation is not None:
        vertices, normals = vertices @ rotation.T, normals @ rotation.T
    return MeshData(vertices.astype(np.float32), np.array(faces, np.int32), normals.astype(np.float32),
                    np.array(uvs, np.float32), name="cube")


ROTATION = trimesh.transformations.rotation_matrix(0.6, [1.0, 2.0, 0.5])[:3, :3]


def _views(count: int = 4, resolution: int = 48, elevation: float = 30.0):
    cameras = orbit_cameras(count, resolution, 1.6, elevation=elevation)
    return cameras, torch.full((count, 3), 0.5)


# ----------------------------------------------------------------------------- tangents


def test_tangents_follow_the_uv_directions_with_handedness():
    mesh = _cube()
    tangents = vertex_tangents(mesh.vertices, mesh.faces, mesh.normals, mesh.uv)
    assert tangents.shape == (24, 4) and tangents.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(tangents[:, :3], axis=1), 1.0, atol=1e-6)
    np.testing.assert_allclose((tangents[:, :3] * mesh.normals).sum(1), 0.0, atol=1e-6)
    for k in range(6):
        corners = slice(4 * k, 4 * k + 4)
        p, t = mesh.vertices[corners].astype(np.float64), mesh.uv[corners].astype(np.float64)
        along_u = (p[1] - p[0]) / (t[1, 0] - t[0, 0])  # corners 0 -> 1 differ in u only
        along_v = (p[3] - p[0]) / (t[3, 1] - t[0, 1])  # corners 0 -> 3 differ in v only
        for tangent in tangents[corners]:
            assert tangent[:3] @ along_u > 0.99 * np.linalg.norm(along_u)
            bitangent = np.cross(mesh.normals[4 * k], tangent[:3]) * tangent[3]
            assert bitangent @ along_v > 0.99 * np.linalg.norm(along_v)
        assert set(tangents[corners, 3]) == ({-1.0} if k == 1 else {1.0})  # the mirrored tile


def test_tangents_of_a_smooth_sphere_are_orthogonal_and_follow_u():
    sphere = trimesh.creation.uv_sphere(count=[16, 24])
    v = np.asarray(sphere.vertices, np.float64)
    uv = np.stack([np.arctan2(v[:, 0], v[:, 2]) / (2 * np.pi) + 0.5, 0.5 + np.arcsin(np.clip(v[:, 1], -1, 1)) / np.pi], 1)
    faces = np.asarray(sphere.faces)
    normals = np.asarray(sphere.vertex_normals)
    tangents = vertex_tangents(v, faces, normals, uv)
    np.testing.assert_allclose((tangents[:, :3] * normals).sum(1), 0.0, atol=1e-5)
    east = np.cross([0.0, 1.0, 0.0], normals)  # u grows eastwards (atan2(x, z))
    ok = np.linalg.norm(east, axis=1) > 0.5  # away from the poles (whose own u is arbitrary)
    ok &= np.abs(uv[:, 0] - 0.5) < 0.45  # and away from the u seam
    cosine = (tangents[ok, :3] * east[ok]).sum(1) / np.linalg.norm(east[ok], axis=1)
    assert cosine.min() > 0.95
    assert (tangents[ok, 3] == 1.0).all()


def test_perturbed_normal_tilts_towards_the_tangent():
    normal = torch.tensor([[0.0, 0.0, 1.0]])
    tangent = torch.tensor([[1.0, 0.0, 0.0, -1.0]])
    tilted = perturbed_normal(normal, tangent, torch.nn.functional.normalize(torch.tensor([[0.0, 0.6, 0.8]]), dim=-1))
    # bitangent = cross(n, t) * w = (0, 1, 0) * -1
    torch.testing.assert_close(tilted, torch.tensor([[0.0, -0.6, 0.8]]))


# ----------------------------------------------------------------------------- render


@pytest.mark.parametrize("light", ["environment", "directional"])
def test_flat_normal_map_renders_as_no_normal_map(light):
    mesh = _cube(ROTATION)
    surface = Surface.from_mesh(mesh, "cpu")
    cameras, background = _views()
    lighting = fixed_environment_lighting(cameras) if light == "environment" else fixed_lighting(cameras)
    torch.manual_seed(0)
    base = HybridTexture(SIZE)
    with torch.no_grad():
        base.grids[0].normal_(0.0, 1.0)  # not a uniform colour
    plain = render_views(surface, base, cameras, lighting, RASTERIZER, background).image
    bumped = render_views(surface, NormalMappedTexture(base, SIZE), cameras, lighting, RASTERIZER, background).image
    torch.testing.assert_close(bumped, plain, atol=1e-5, rtol=0)
    ones = torch.ones(SIZE, SIZE, 1)
    flat_image = ImageTexture(torch.full((SIZE, SIZE, 3), 0.5), ones * 0.3, ones * 0.0,
                              torch.tensor([0.5, 0.5, 1.0]).expand(SIZE, SIZE, 3))
    no_map = ImageTexture(torch.full((SIZE, SIZE, 3), 0.5), ones * 0.3, ones * 0.0)
    a = render_views(surface, flat_image, cameras, lighting, RASTERIZER, background).image
    b = render_views(surface, no_map, cameras, lighting, RASTERIZER, background).image
    torch.testing.assert_close(a, b, atol=1e-4, rtol=0)
    bump_texture, _ = bump_reference(SIZE)
    c = render_views(surface, bump_texture, cameras, lighting, RASTERIZER, background).image
    assert (c - b).abs().max() > 0.1  # and a real bump does change the render


def test_bump_gradient_is_finite_on_a_face_that_looks_straight_up():
    """An axis-aligned cube's top face has the exact +Y normal: the pole of the environment map,
    where the lookup's derivatives are infinite."""
    mesh = _cube()
    surface = Surface.from_mesh(mesh, "cpu")
    cameras, background = _views(elevation=40.0)
    texture = NormalMappedTexture(HybridTexture(SIZE), SIZE)
    image = render_views(surface, texture, cameras, fixed_environment_lighting(cameras), RASTERIZER, background).image
    (image * torch.linspace(0, 1, image.shape[2]).view(1, 1, -1, 1)).sum().backward()
    grad = texture.bump.height.grad
    assert torch.isfinite(grad).all()
    assert grad.abs().sum() > 0


def test_photometric_objective_recovers_a_bump_pattern():
    mesh = _cube(ROTATION)
    surface = Surface.from_mesh(mesh, "cpu")
    reference, want = bump_reference(SIZE)
    config = Config(steps=80, render_size=48, texture_size=SIZE, views_per_step=2, unlit_fraction=0.0,
                    ema_decay=0.0, normal_map=True)
    torch.manual_seed(0)
    texture = make_texture("hybrid", SIZE, normal_map=True)
    optimize(texture, surface, RASTERIZER, PhotometricObjective(surface, reference, RASTERIZER), config)
    maps = bake_maps(mesh, texture, SIZE, RASTERIZER, pad_texels=2)
    got = maps.normal[maps.coverage][:, :2] * 2 - 1
    correlation = np.corrcoef(got.ravel(), want.numpy()[maps.coverage][:, :2].ravel())[0, 1]
    assert correlation > 0.5, correlation


# ----------------------------------------------------------------------------- bake


def test_bake_writes_a_padded_unit_normal_map():
    mesh = _cube()
    texture = NormalMappedTexture(HybridTexture(SIZE), SIZE)
    flat = bake_maps(mesh, texture, SIZE, RASTERIZER, pad_texels=2)
    np.testing.assert_allclose(flat.normal, np.broadcast_to([0.5, 0.5, 1.0], (SIZE, SIZE, 3)), atol=1e-6)
    with torch.no_grad():
        texture.bump.height.normal_(0.0, 2.0)
    maps = bake_maps(mesh, texture, SIZE, RASTERIZER, pad_texels=2)
    decoded = maps.normal * 2 - 1
    assert maps.normal.shape == (SIZE, SIZE, 3) and maps.normal.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(decoded, axis=-1), 1.0, atol=1e-5)
    want = torch.nn.functional.normalize(texture.bump.normal_image(), dim=1)[0].permute(1, 2, 0).detach().numpy()
    np.testing.assert_allclose(decoded[maps.coverage], want[maps.coverage], atol=1e-5)
    assert (decoded[..., 2] > 0).all()
    assert bake_maps(mesh, HybridTexture(SIZE), SIZE, RASTERIZER, pad_texels=2).normal is None


# ----------------------------------------------------------------------------- export


def _maps_with_normal(size: int = 32) -> PBRMaps:
    rng = np.random.default_rng(3)
    normal = rng.normal(size=(size, size, 3)) * [0.3, 0.3, 0.0] + [0.0, 0.0, 1.0]
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    return PBRMaps(rng.random((size, size, 3), dtype=np.float32), rng.random((size, size, 1), dtype=np.float32),
                   rng.random((size, size, 1), dtype=np.float32), np.ones((size, size), bool),
                   (normal * 0.5 + 0.5).astype(np.float32))


def _tangent_values(path: Path) -> tuple[dict, np.ndarray]:
    gltf = pygltflib.GLTF2().load(str(path))
    document = json.loads(gltf.to_json())
    blob = gltf.binary_blob() if path.suffix == ".glb" else (path.with_suffix(".bin")).read_bytes()
    accessor = document["accessors"][document["meshes"][0]["primitives"][0]["attributes"]["TANGENT"]]
    view = document["bufferViews"][accessor["bufferView"]]
    start = view.get("byteOffset", 0) + accessor.get("byteOffset", 0)
    values = np.frombuffer(blob, "<f4", accessor["count"] * 4, start).reshape(-1, 4)
    return document, values


@pytest.mark.parametrize("mirror", [False, True])
def test_glb_with_a_normal_map_is_validator_clean(tmp_path, gltf_validator, mirror):
    mesh = _cube()
    linear = 2.5 * ROTATION @ np.diag([-1.0 if mirror else 1.0, 1.0, 1.0])
    to_source = np.eye(4)
    to_source[:3, :3], to_source[:3, 3] = linear, [10.0, -3.0, 2.0]
    mesh = MeshData(mesh.vertices, mesh.faces, mesh.normals, mesh.uv, to_source, name="cube")
    glb = export_textured_mesh(mesh, _maps_with_normal(), tmp_path / "cube.glb", {})
    gltf = export_textured_mesh(mesh, _maps_with_normal(), tmp_path / "cube.gltf", {})
    reports = gltf_validator(glb, gltf)
    assert all(r["info"]["hasTextures"] for r in reports)
    assert (tmp_path / "cube_normal.png").is_file()
    for path in (glb, gltf):
        document, tangents = _tangent_values(path)
        material = document["materials"][0]
        assert material["normalTexture"]["scale"] == 1.0
        normal_image = document["textures"][material["normalTexture"]["index"]]["source"]
        assert document["images"][normal_image]["name"] == "normal"
        assert document["accessors"][document["meshes"][0]["primitives"][0]["attributes"]["TANGENT"]]["type"] == "VEC4"
        assert len(tangents) == len(mesh.vertices)
        np.testing.assert_allclose(np.linalg.norm(tangents[:, :3], axis=1), 1.0, atol=1e-5)
        # world tangents are the renderer's, carried by the transform; a mirror flips handedness
        local = vertex_tangents(mesh.vertices, mesh.faces, mesh.normals, mesh.uv)
        want = local[:, :3] @ linear.T
        want /= np.linalg.norm(want, axis=1, keepdims=True)
        np.testing.assert_allclose(tangents[:, :3], want, atol=1e-5)
        np.testing.assert_array_equal(tangents[:, 3], local[:, 3] * (-1 if mirror else 1))


def test_outputs_without_a_normal_map_are_unchanged(tmp_path):
    maps = _maps_with_normal()
    plain = PBRMaps(maps.albedo, maps.roughness, maps.metallic, maps.coverage)
    glb = export_textured_mesh(_cube(), plain, tmp_path / "plain.glb", {})
    document = json.loads(pygltflib.GLTF2().load(str(glb)).to_json())
    assert "normalTexture" not in document["materials"][0]
    assert "TANGENT" not in document["meshes"][0]["primitives"][0]["attributes"]
    assert sorted(p.name for p in save_maps(plain, tmp_path / "maps").values()) == [
        "basecolor.png", "metallic.png", "orm.png", "roughness.png"]
    assert "normal" in save_maps(maps, tmp_path / "with")
    assert not Config().normal_map
    assert not isinstance(make_texture("hybrid", 32), NormalMappedTexture)


def test_obj_writes_the_normal_map_as_mtl_norm_and_says_tangents_are_not_carried(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="csd_texture"):
        out = export_textured_mesh(_cube(), _maps_with_normal(), tmp_path / "cube.obj", {})
    mtl = (tmp_path / "cube.mtl").read_text()
    assert "norm cube_normal.png" in mtl and "map_Bump" not in mtl
    assert (tmp_path / "cube_normal.png").is_file() and out.is_file()
    assert "no tangents" in caplog.text


@pytest.mark.parametrize("name, keep_uv", [("Duck", True), ("morph_blob", False)])
def test_gltf_input_gets_normal_texture_and_tangents(tmp_path, tiny_guidance, gltf_validator, name, keep_uv):
    from csd_texture import texture_mesh

    source = DATA / ("good" if name == "Duck" else "scenes") / f"{name}.glb"
    out = tmp_path / f"{name}.glb"
    result = texture_mesh(source, "a red thing", out, guidance=tiny_guidance, steps=1, texture_size=32,
                          render_size=32, progress=False, normal_map=True, keep_uv=keep_uv)
    assert result.maps.normal is not None
    gltf_validator(out)
    gltf = pygltflib.GLTF2().load(str(out))
    blob = gltf.binary_blob()
    textured = [m for m in gltf.materials if m.pbrMetallicRoughness and m.pbrMetallicRoughness.baseColorTexture]
    assert textured and all(m.normalTexture is not None and m.normalTexture.scale == 1.0 for m in textured)
    for mesh in gltf.meshes:
        for primitive in mesh.primitives:
            if primitive.attributes.NORMAL is None:
                continue
            tangent = gltf.accessors[primitive.attributes.TANGENT]
            assert tangent.count == gltf.accessors[primitive.attributes.POSITION].count
            view = gltf.bufferViews[tangent.bufferView]
            values = np.frombuffer(blob, "<f4", tangent.count * 4, view.byteOffset + (tangent.byteOffset or 0))
            values = values.reshape(-1, 4)
            np.testing.assert_allclose(np.linalg.norm(values[:, :3], axis=1), 1.0, atol=1e-5)
            assert set(np.unique(values[:, 3])) <= {-1.0, 1.0}


# ----------------------------------------------------------------------------- settings


def test_normal_map_setting_cli_and_bad_combination(tmp_path):
    from csd_texture_cli.main import build_config

    assert build_config(None, "balanced", {"normal_map": True}).normal_map is True
    assert build_config(None, "balanced", {"normal_map": None}).normal_map is False
    assert Config(normal_map="yes").normal_map is True
    with pytest.raises(ConfigError, match="normal_map cannot be used with edit"):
        Config(edit=True, normal_map=True)
    with pytest.raises(ConfigError, match="setting normal_map"):
        Config(normal_map="maybe")
    from csd_texture_cli.main import main

    result = CliRunner().invoke(main, ["texture", "--help"])
    assert "--normal-map / --no-normal-map" in result.output
