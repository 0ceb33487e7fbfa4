"""UV G-buffer, seam padding and map baking: shapes, values, bad input, gradients."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from csd_texture.bake import bake_maps, pad_charts, uv_gbuffer
from csd_texture.datatypes import MeshData
from csd_texture.errors import MeshValidationError
from csd_texture.render import TorchRasterizer

# Two rectangular charts; no bound falls on a texel centre at 32 texels ((j + 0.5) / 32).
CHARTS = ((0.10, 0.45, 0.10, 0.90), (0.55, 0.90, 0.20, 0.80))  # (u0, u1, v0, v1)


def two_chart_mesh() -> MeshData:
    """Chart 0 lies in the plane z = 0 (normal +Z), chart 1 in x = 1 (normal +X); world
    positions are affine in uv so the expected G-buffer is known everywhere."""
    vertices, normals, uv, faces = [], [], [], []
    for k, (u0, u1, v0, v1) in enumerate(CHARTS):
        corners = [(u0, v0), (u1, v0), (u1, v1), (u0, v1)]
        for u, v in corners:
            uv.append((u, v))
            vertices.append(world_of_uv(k, u, v))
            normals.append((0.0, 0.0, 1.0) if k == 0 else (1.0, 0.0, 0.0))
        base = 4 * k
        faces += [(base, base + 1, base + 2), (base, base + 2, base + 3)]
    return MeshData(
        vertices=np.array(vertices, dtype=np.float32),
        faces=np.array(faces, dtype=np.int32),
        normals=np.array(normals, dtype=np.float32),
        uv=np.array(uv, dtype=np.float32),
    )


def world_of_uv(chart: int, u, v):
    if chart == 0:
        return (2 * u - 1, 2 * v - 1, 0 * u)
    return (1 + 0 * u, 2 * v - 1, 1 - 2 * u)


def texel_uv(size: int) -> torch.Tensor:
    """(S, S, 2) uv of texel centres, row 0 = v 1."""
    centres = (torch.arange(size, dtype=torch.float64) + 0.5) / size
    v, u = torch.meshgrid(1 - centres, centres, indexing="ij")
    return torch.stack([u, v], -1)


def expected_coverage(size: int) -> torch.Tensor:
    uv = texel_uv(size)
    inside = [(uv[..., 0] > u0) & (uv[..., 0] < u1) & (uv[..., 1] > v0) & (uv[..., 1] < v1)
              for u0, u1, v0, v1 in CHARTS]
    return inside[0] | inside[1]


def uv_sampler(uv: torch.Tensor, position: torch.Tensor):
    return torch.cat([uv, torch.full_like(uv[..., :1], 0.25)], -1), uv[..., :1], uv[..., 1:]


@pytest.fixture
def mesh() -> MeshData:
    return two_chart_mesh()


# --- uv_gbuffer -----------------------------------------------------------------------
def test_uv_gbuffer_shapes_coverage_positions_normals(mesh):
    size = 32
    gb = uv_gbuffer(mesh, size, TorchRasterizer())
    assert gb.mask.shape == (1, size, size, 1) and gb.position.shape == (1, size, size, 3)
    assert gb.normal.shape == (1, size, size, 3) and gb.uv.shape == (1, size, size, 2)
    covered = gb.mask[0, ..., 0] > 0
    assert torch.equal(covered, expected_coverage(size))
    uv = texel_uv(size)
    assert torch.allclose(gb.uv[0][covered].double(), uv[covered], atol=1e-6)
    chart0 = covered & (uv[..., 0] < 0.5)
    u, v = uv[..., 0], uv[..., 1]
    for chart, sel in ((0, chart0), (1, covered & ~chart0)):
        expected = torch.stack([torch.as_tensor(c, dtype=torch.float64).expand_as(u)
                                for c in world_of_uv(chart, u, v)], -1)
        assert torch.allclose(gb.position[0][sel].double(), expected[sel], atol=1e-5)
    assert torch.allclose(gb.normal[0][chart0], torch.tensor([0.0, 0.0, 1.0]))
    assert torch.allclose(gb.normal[0][covered & ~chart0], torch.tensor([1.0, 0.0, 0.0]))
    assert (gb.position[0][~covered] == 0).all()


def test_uv_gbuffer_needs_uvs(mesh):
    no_uv = MeshData(vertices=mesh.vertices, faces=mesh.faces, normals=mesh.normals, name="cube")
    with pytest.raises(MeshValidationError, match="cube"):
        uv_gbuffer(no_uv, 16, TorchRasterizer())
    with pytest.raises(ValueError):
        uv_gbuffer(mesh, 0, TorchRasterizer())


# --- bake_maps ------------------------------------------------------------------------
def test_bake_reproduces_function_of_uv(mesh):
    size = 32
    maps = bake_maps(mesh, uv_sampler, size, TorchRasterizer(), pad_texels=4)
    assert maps.albedo.shape == (size, size, 3) and maps.albedo.dtype == np.float32
    assert maps.roughness.shape == (size, size, 1) and maps.metallic.shape == (size, size, 1)
    assert maps.coverage.dtype == bool and maps.size == size
    cov = maps.coverage
    assert np.array_equal(cov, expected_coverage(size).numpy())
    uv = texel_uv(size).numpy()
    np.testing.assert_allclose(maps.albedo[cov][:, :2], uv[cov], atol=1e-5)
    np.testing.assert_allclose(maps.albedo[cov][:, 2], 0.25, atol=1e-6)
    np.testing.assert_allclose(maps.roughness[cov][:, 0], uv[cov][:, 0], atol=1e-5)
    np.testing.assert_allclose(maps.metallic[cov][:, 0], uv[cov][:, 1], atol=1e-5)


def test_bake_uv_image_texture_equals_image(mesh):
    size = 32
    image = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(1))

    def image_sampler(uv, position):
        grid = torch.stack([uv[..., 0] * 2 - 1, 1 - 2 * uv[..., 1]], -1)
        rgb = F.grid_sample(image, grid, align_corners=False).permute(0, 2, 3, 1)
        return rgb, rgb[..., :1], rgb[..., 1:2]

    maps = bake_maps(mesh, image_sampler, size, TorchRasterizer())
    expected = image[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(maps.albedo[maps.coverage], expected[maps.coverage], atol=1e-5)


def test_bake_clamps_and_samples_in_row_blocks(mesh, monkeypatch):
    import csd_texture.bake as bake

    monkeypatch.setattr(bake, "SAMPLE_TEXELS", 100)  # 3 rows of 32 texels per call
    calls = []

    def loud(uv, position):
        calls.append(uv.shape[1])
        return torch.full_like(position, 2.0), -torch.ones_like(uv[..., :1]), uv[..., :1] * 0 + 0.5

    maps = bake.bake_maps(mesh, loud, 32, TorchRasterizer())
    assert sum(calls) == 32 and max(calls) == 3
    assert maps.albedo.max() == 1.0 and maps.roughness.min() == 0.0
    np.testing.assert_allclose(maps.metallic, 0.5)  # padded everywhere, not only on charts


def test_bake_rejects_bad_sampler_output(mesh):
    def bad(uv, position):
        return uv, uv[..., :1], uv[..., :1]  # albedo with 2 channels

    with pytest.raises(ValueError, match="albedo"):
        bake_maps(mesh, bad, 16, TorchRasterizer())


def test_bilinear_lookup_at_chart_borders_equals_chart_colour():
    """One triangle chart of constant colour: bilinear taps on its edges see only that colour."""
    mesh = MeshData(
        vertices=np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0]], dtype=np.float32),
        faces=np.array([[0, 1, 2]], dtype=np.int32),
        normals=np.array([[0, 0, 1]] * 3, dtype=np.float32),
        uv=np.array([[0.2, 0.15], [0.85, 0.3], [0.3, 0.8]], dtype=np.float32),
    )
    colour = torch.tensor([0.9, 0.4, 0.1])

    def constant(uv, position):
        return colour.expand(*uv.shape[:-1], 3), uv[..., :1] * 0 + 0.7, uv[..., :1] * 0 + 0.2

    maps = bake_maps(mesh, constant, 32, TorchRasterizer(), pad_texels=2)
    corners = torch.as_tensor(mesh.uv)
    t = torch.linspace(0, 1, 25)[:, None]
    edges = torch.cat([corners[a] * (1 - t) + corners[b] * t for a, b in ((0, 1), (1, 2), (2, 0))])
    grid = torch.stack([edges[:, 0] * 2 - 1, 1 - 2 * edges[:, 1]], -1).view(1, 1, -1, 2)

    def lookup(albedo: np.ndarray) -> torch.Tensor:
        tex = torch.as_tensor(albedo).permute(2, 0, 1)[None]
        return F.grid_sample(tex, grid, align_corners=False)[0, :, 0].T

    padded = lookup(maps.albedo)
    assert torch.allclose(padded, colour.expand_as(padded), atol=1e-5)
    unpadded = lookup(maps.albedo * maps.coverage[..., None])
    assert (unpadded - colour).abs().max() > 0.1  # without padding the borders bleed


# --- pad_charts -----------------------------------------------------------------------
def chebyshev_distance(mask: torch.Tensor) -> torch.Tensor:
    """(H, W) int distance (8-neighbourhood) to the nearest True texel."""
    dist = torch.where(mask, 0, 10**6)
    frontier = mask.clone()
    for step in range(1, max(mask.shape)):
        grown = F.max_pool2d(frontier[None, None].float(), 3, 1, 1)[0, 0] > 0
        dist = torch.where(grown & ~frontier, step, dist)
        if torch.equal(grown, frontier):
            break
        frontier = grown
    return dist


def test_pad_charts_grows_by_texels_then_fills_with_mean():
    size, texels = 40, 4
    coverage = torch.zeros(size, size, dtype=torch.bool)
    coverage[5:15, 3:9] = True  # chart A
    coverage[20:30, 28:36] = True  # chart B, more than 2 * texels + 1 away
    image = torch.rand(size, size, 3, generator=torch.Generator().manual_seed(2))
    colour_a, colour_b = torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 0.0, 1.0])
    image[:, :18][coverage[:, :18]] = colour_a
    image[:, 18:][coverage[:, 18:]] = colour_b
    out = pad_charts(image, coverage, texels)
    assert out.shape == image.shape
    assert torch.equal(out[coverage], image[coverage])
    dist_a = chebyshev_distance(coverage & (torch.arange(size) < 18)[None])
    dist_b = chebyshev_distance(coverage & (torch.arange(size) >= 18)[None])
    near_a = (dist_a > 0) & (dist_a <= texels)
    near_b = (dist_b > 0) & (dist_b <= texels)
    assert torch.allclose(out[near_a], colour_a.expand(int(near_a.sum()), 3), atol=1e-6)
    assert torch.allclose(out[near_b], colour_b.expand(int(near_b.sum()), 3), atol=1e-6)
    far = (dist_a > texels) & (dist_b > texels)
    mean = image[coverage].mean(0)
    assert far.any() and torch.allclose(out[far], mean.expand(int(far.sum()), 3), atol=1e-6)


def test_pad_charts_zero_texels_and_empty_coverage():
    image = torch.rand(8, 8, 2)
    coverage = torch.zeros(8, 8, dtype=torch.bool)
    coverage[2:4, 2:4] = True
    out = pad_charts(image, coverage, 0)
    assert torch.allclose(out[~coverage], image[coverage].mean(0).expand(60, 2))
    assert torch.equal(pad_charts(image, torch.zeros_like(coverage), 3), torch.zeros_like(image))


@pytest.mark.parametrize(
    "image, coverage, texels",
    [
        (torch.zeros(8, 8), torch.ones(8, 8, dtype=torch.bool), 1),
        (torch.zeros(8, 8, 3), torch.ones(8, 7, dtype=torch.bool), 1),
        (torch.zeros(8, 8, 3), torch.ones(8, 8, dtype=torch.bool), -1),
    ],
)
def test_pad_charts_bad_input(image, coverage, texels):
    with pytest.raises(ValueError):
        pad_charts(image, coverage, texels)


def test_pad_charts_gradcheck():
    coverage = torch.zeros(6, 6, dtype=torch.bool)
    coverage[1:3, 2:5] = True
    image = torch.rand(6, 6, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x: pad_charts(x, coverage, 2), (image,), fast_mode=True)
