"""Seam check on real outputs (and proof that it fails when padding is off), and the round
trip of a real pipeline output through trimesh and pygltflib."""
from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import numpy as np
import pygltflib
import trimesh
from PIL import Image

from csd_texture.bake import bake_maps
from csd_texture.datatypes import PBRMaps
from csd_texture.export import export_textured_mesh, linear_to_srgb
from csd_texture.render import get_rasterizer
from csd_texture.seams import border_texels_mask, seam_report
from csd_texture.texture import ImageTexture

CHECK = {"views": 12, "size": 96}
GREEN = (0.0, 1.0, 0.0)


def unpadded(maps: PBRMaps, mesh, fill: tuple[float, float, float]) -> PBRMaps:
    """`maps` re-baked with pad_texels=0 and every texel outside the charts set to `fill`."""
    baked = bake_maps(mesh, ImageTexture.from_maps(maps), maps.size, get_rasterizer("torch"), pad_texels=0)
    albedo = baked.albedo.copy()
    albedo[~baked.coverage] = fill
    return dataclasses.replace(baked, albedo=albedo)


def test_real_output_shows_the_optimised_texture_at_chart_borders(tiny_textured_fuze) -> None:
    result = tiny_textured_fuze
    report = seam_report(result.mesh, result.maps, result.output_path, **CHECK)
    assert report["views"] == 12 and len(report["per_view"]) == 12
    assert report["border_pixels"] > 1000  # the check looks at many chart-border pixels
    assert report["worst_border_error"] < 3 / 255
    assert report["max_border_error"] < 0.1
    assert report["background_pixels"] == 0 and report["bleed_pixels"] == 0


def test_check_fails_when_padding_is_disabled(tiny_textured_fuze, tmp_path: Path) -> None:
    result = tiny_textured_fuze
    maps = unpadded(result.maps, result.mesh, GREEN)
    np.testing.assert_allclose(maps.albedo[maps.coverage], result.maps.albedo[result.maps.coverage], atol=1e-4)
    out = export_textured_mesh(result.mesh, maps, tmp_path / "unpadded.glb", {})
    report = seam_report(result.mesh, result.maps, out, **CHECK)
    assert report["worst_border_error"] > 0.05  # the fill colour shows at chart borders
    assert report["bleed_pixels"] > 100
    assert report["interior_error"] < 3 / 255  # and only there


def test_check_finds_holes_showing_the_background(tiny_textured_fuze, tmp_path: Path) -> None:
    result = tiny_textured_fuze
    holed = dataclasses.replace(result.mesh, faces=result.mesh.faces[::2])
    out = export_textured_mesh(holed, result.maps, tmp_path / "holed.glb", {})
    report = seam_report(result.mesh, result.maps, out, **CHECK)
    assert report["background_pixels"] > 100


def test_border_texels_mask_is_a_band_around_each_chart() -> None:
    coverage = np.zeros((12, 12), dtype=bool)
    coverage[3:9, 3:9] = True
    band = border_texels_mask(coverage, border_texels=1).numpy()
    assert band.shape == (12, 12) and set(np.unique(band)) == {0.0, 1.0}
    expected = np.zeros((12, 12))
    expected[2:10, 2:10] = 1
    expected[4:8, 4:8] = 0
    np.testing.assert_array_equal(band, expected)
    assert border_texels_mask(coverage, border_texels=2).sum() > band.sum()


# ----------------------------------------------------------------------------- round trip


def gltf_accessor(gltf: pygltflib.GLTF2, index: int) -> np.ndarray:
    accessor = gltf.accessors[index]
    view = gltf.bufferViews[accessor.bufferView]
    width = {"SCALAR": 1, "VEC2": 2, "VEC3": 3}[accessor.type]
    dtype = {pygltflib.FLOAT: "<f4", pygltflib.UNSIGNED_SHORT: "<u2", pygltflib.UNSIGNED_INT: "<u4"}
    data = gltf.binary_blob()[view.byteOffset + (accessor.byteOffset or 0):][:accessor.count * width * 4]
    return np.frombuffer(data, dtype[accessor.componentType], accessor.count * width).reshape(accessor.count, width)


def gltf_image(gltf: pygltflib.GLTF2, texture: int) -> np.ndarray:
    view = gltf.bufferViews[gltf.images[gltf.textures[texture].source].bufferView]
    return np.asarray(Image.open(io.BytesIO(gltf.binary_blob()[view.byteOffset:view.byteOffset + view.byteLength])))


def test_pipeline_output_round_trips_through_trimesh_and_pygltflib(tiny_textured_fuze) -> None:
    result = tiny_textured_fuze
    world = result.mesh.world_vertices()
    tolerance = 1e-6 * np.linalg.norm(world.max(0) - world.min(0))
    basecolor = np.round(linear_to_srgb(result.maps.albedo) * 255).astype(np.uint8)
    roughness = np.round(result.maps.roughness[..., 0] * 255).astype(np.uint8)

    loaded = trimesh.load(result.output_path, process=False).to_geometry()
    np.testing.assert_allclose(loaded.vertices, world, atol=tolerance)
    np.testing.assert_array_equal(loaded.faces, result.mesh.faces)
    np.testing.assert_allclose(loaded.visual.uv, result.mesh.uv, atol=1e-7)
    np.testing.assert_array_equal(np.asarray(loaded.visual.material.baseColorTexture), basecolor)

    gltf = pygltflib.GLTF2().load(str(result.output_path))
    (node,), (primitive,) = gltf.nodes, gltf.meshes[0].primitives
    positions = gltf_accessor(gltf, primitive.attributes.POSITION) + np.asarray(node.translation)
    np.testing.assert_allclose(positions, world, atol=tolerance)
    uv = gltf_accessor(gltf, primitive.attributes.TEXCOORD_0)
    np.testing.assert_array_equal(uv, np.stack([result.mesh.uv[:, 0], 1 - result.mesh.uv[:, 1]], axis=1))
    pbr = gltf.materials[primitive.material].pbrMetallicRoughness
    np.testing.assert_array_equal(gltf_image(gltf, pbr.baseColorTexture.index), basecolor)
    np.testing.assert_array_equal(gltf_image(gltf, pbr.metallicRoughnessTexture.index)[..., 1], roughness)
