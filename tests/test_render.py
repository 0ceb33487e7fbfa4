"""Rasterizers, interpolation and shading: shapes, values, bad input, gradients."""
from __future__ import annotations

import logging
import math
import sys

import pytest
import torch
import torch.nn.functional as F

from csd_texture.datatypes import Fragments, Lighting
from csd_texture.errors import BackendUnavailableError, ConfigError
from csd_texture.render import (
    TorchRasterizer,
    composite,
    get_rasterizer,
    interpolate,
    linear_to_srgb,
    shade,
    srgb_to_linear,
)
from csd_texture.render.nvdiffrast_rasterizer import import_nvdiffrast
from csd_texture.render.views import sample_covered
from csd_texture.texture import make_texture


# --- helpers ----------------------------------------------------------------------------
def look_at(eye, target=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0)) -> torch.Tensor:
    """(4, 4) OpenGL world->camera matrix (camera looks down -Z)."""
    eye, target, up = (torch.tensor(v, dtype=torch.float64) for v in (eye, target, up))
    forward = F.normalize(target - eye, dim=0)
    right = F.normalize(torch.linalg.cross(forward, up), dim=0)
    true_up = torch.linalg.cross(right, forward)
    view = torch.eye(4, dtype=torch.float64)
    view[0, :3], view[1, :3], view[2, :3] = right, true_up, -forward
    view[:3, 3] = -view[:3, :3] @ eye
    return view


def perspective(fov_deg: float = 45.0, near: float = 0.5, far: float = 10.0, aspect: float = 1.0):
    """(4, 4) OpenGL projection, aspect = W / H."""
    f = 1.0 / math.tan(math.radians(fov_deg) / 2)
    proj = torch.zeros(4, 4, dtype=torch.float64)
    proj[0, 0], proj[1, 1] = f / aspect, f
    proj[2, 2], proj[2, 3] = -(far + near) / (far - near), -2 * far * near / (far - near)
    proj[3, 2] = -1.0
    return proj


def to_clip(vertices: torch.Tensor, mvp: torch.Tensor) -> torch.Tensor:
    """(V, 3) world, (4, 4) or (B, 4, 4) mvp -> (B, V, 4) float32 clip positions."""
    homo = torch.cat([vertices.double(), torch.ones(len(vertices), 1, dtype=torch.float64)], 1)
    mvp = mvp if mvp.ndim == 3 else mvp[None]
    return torch.einsum("bij,vj->bvi", mvp.double(), homo).float()


def front_camera(distance: float = 3.0, **kw) -> torch.Tensor:
    return perspective(**kw) @ look_at((0.0, 0.0, distance))


def quad(size: float = 1.0):
    """A square in the z=0 plane facing +Z: vertices (4, 3), faces (2, 3), uv (4, 2)."""
    s = size
    vertices = torch.tensor([[-s, -s, 0.0], [s, -s, 0.0], [s, s, 0.0], [-s, s, 0.0]])
    uv = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.0, 1.0]])
    faces = torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32)
    return vertices, faces, uv


def sphere(rings: int = 24, segments: int = 32):
    """A UV sphere of radius 1: vertices (V, 3), faces (F, 3) int32."""
    theta = torch.linspace(0, math.pi, rings + 1)
    phi = torch.linspace(0, 2 * math.pi, segments + 1)[:-1]
    t, p = torch.meshgrid(theta, phi, indexing="ij")
    vertices = torch.stack([t.sin() * p.cos(), t.cos(), t.sin() * p.sin()], -1).reshape(-1, 3)
    i, j = torch.meshgrid(torch.arange(rings), torch.arange(segments), indexing="ij")
    a, b = i * segments + j, i * segments + (j + 1) % segments
    c, d = a + segments, b + segments
    faces = torch.cat([torch.stack([a, c, b], -1), torch.stack([b, c, d], -1)]).reshape(-1, 3)
    return vertices, faces.int()


def pixel_centres_ndc(height: int, width: int) -> torch.Tensor:
    """(H, W, 2) NDC (x, y) of pixel centres, row 0 at the top."""
    y = 1 - (torch.arange(height, dtype=torch.float64) + 0.5) / height * 2
    x = (torch.arange(width, dtype=torch.float64) + 0.5) / width * 2 - 1
    yy, xx = torch.meshgrid(y, x, indexing="ij")
    return torch.stack([xx, yy], -1)


def sample_texture(texture: torch.Tensor, uv: torch.Tensor) -> torch.Tensor:
    """texture (1, C, Ht, Wt), row 0 = v 1; uv (B, H, W, 2) -> (B, H, W, C)."""
    grid = torch.stack([uv[..., 0] * 2 - 1, 1 - 2 * uv[..., 1]], -1)
    batch = uv.shape[0]
    out = F.grid_sample(texture.expand(batch, -1, -1, -1), grid, padding_mode="border", align_corners=False)
    return out.permute(0, 2, 3, 1)


def lighting(batch: int = 1, direction=(0.0, 0.0, 1.0), unlit: bool = False) -> Lighting:
    return Lighting(
        direction=torch.tensor([direction] * batch),
        colour=torch.ones(batch, 3),
        ambient=torch.full((batch, 3), 0.1),
        unlit=torch.full((batch,), unlit),
    )


@pytest.fixture
def raster() -> TorchRasterizer:
    return TorchRasterizer()


# --- torch rasterizer: shapes and conventions ------------------------------------------
def test_fragments_shapes_dtypes_and_empty_values(raster):
    vertices, faces, _ = quad(0.5)
    pos = to_clip(vertices, torch.stack([front_camera(), front_camera(distance=5.0)]))
    frags = raster.rasterize(pos, faces, (24, 40))
    assert frags.triangle_id.shape == (2, 24, 40) and frags.triangle_id.dtype == torch.int64
    assert frags.barycentrics.shape == (2, 24, 40, 3) and frags.barycentrics.dtype == torch.float32
    assert frags.depth.shape == (2, 24, 40) and frags.depth.dtype == torch.float32
    empty = ~frags.mask
    assert empty.any() and frags.mask.any()
    assert (frags.barycentrics[empty] == 0).all() and torch.isinf(frags.depth[empty]).all()
    bary = frags.barycentrics[frags.mask]
    assert torch.allclose(bary.sum(-1), torch.ones(len(bary))) and (bary >= 0).all()
    assert frags.mask[1].sum() < frags.mask[0].sum()  # the farther camera sees a smaller quad


def test_orientation_top_red_bottom_blue(raster):
    """Pins the conventions: row 0 is the top, UV v = 1 is the top of a texture image."""
    vertices, faces, uv = quad(1.0)
    texture = torch.zeros(1, 3, 8, 8)
    texture[0, 0, :4] = 1.0  # rows 0-3 (v > 0.5): red
    texture[0, 2, 4:] = 1.0  # rows 4-7: blue
    frags = raster.rasterize(to_clip(vertices, front_camera()), faces, (32, 32))
    colour = sample_texture(texture, interpolate(uv, frags, faces))[0]
    mask = frags.mask[0]
    assert mask[:16].sum() > 50 and mask[16:].sum() > 50
    top, bottom = colour[:14][mask[:14]], colour[18:][mask[18:]]
    assert torch.allclose(top, torch.tensor([1.0, 0.0, 0.0]).expand_as(top), atol=1e-5)
    assert torch.allclose(bottom, torch.tensor([0.0, 0.0, 1.0]).expand_as(bottom), atol=1e-5)
    x = interpolate(vertices, frags, faces)[0, ..., 0]  # world +X is image right
    assert (x[:, :14][mask[:, :14]] < 0).all() and (x[:, 18:][mask[:, 18:]] > 0).all()


def test_pixel_centres_and_non_square_resolution(raster):
    """Square [-0.5, 0.5]^2 in NDC covers exactly the pixels whose centre lies inside."""
    vertices, faces, _ = quad(0.5)
    pos = torch.cat([vertices, torch.ones(4, 1)], 1)[None]  # clip = NDC
    height, width = 12, 20
    frags = raster.rasterize(pos, faces, (height, width))
    centres = pixel_centres_ndc(height, width)
    expected = (centres.abs() < 0.5).all(-1)
    assert torch.equal(frags.mask[0], expected)
    assert torch.allclose(frags.depth[0][expected], torch.zeros(int(expected.sum())))


def test_perspective_correct_barycentrics(raster):
    """A tilted quad: interpolated world positions equal the per-pixel ray-plane hits."""
    angle = math.radians(60)
    rot = torch.tensor([[1, 0, 0], [0, math.cos(angle), -math.sin(angle)],
                        [0, math.sin(angle), math.cos(angle)]], dtype=torch.float32)
    vertices, faces, _ = quad(1.0)
    vertices = vertices @ rot.T
    mvp = perspective(fov_deg=60) @ look_at((0.0, 0.3, 2.5))
    frags = raster.rasterize(to_clip(vertices, mvp), faces, (48, 48))
    position = interpolate(vertices, frags, faces)[0].double()
    mask = frags.mask[0]
    assert mask.sum() > 300

    inv = torch.linalg.inv(mvp)
    ndc = pixel_centres_ndc(48, 48)[mask]

    def unproject(z: float) -> torch.Tensor:
        p = torch.cat([ndc, torch.full((len(ndc), 1), z, dtype=torch.float64),
                       torch.ones(len(ndc), 1, dtype=torch.float64)], 1) @ inv.T
        return p[:, :3] / p[:, 3:]

    near, far = unproject(-1.0), unproject(1.0)
    normal = rot.double() @ torch.tensor([0.0, 0.0, 1.0], dtype=torch.float64)
    t = -(near @ normal) / ((far - near) @ normal)  # plane through the origin
    hit = near + t[:, None] * (far - near)
    assert (position[mask] - hit).abs().max() < 1e-5


def test_nearer_triangle_wins_in_either_order(raster):
    near_tri = torch.tensor([[-0.6, -0.6, 0.5], [0.6, -0.6, 0.5], [0.0, 0.6, 0.5]])
    far_tri = torch.tensor([[-1.2, -1.2, -0.5], [1.2, -1.2, -0.5], [0.0, 1.2, -0.5]])
    faces = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)
    mvp = front_camera()
    for order, near_id in (((near_tri, far_tri), 0), ((far_tri, near_tri), 1)):
        frags = raster.rasterize(to_clip(torch.cat(order), mvp), faces, (32, 32))
        assert frags.triangle_id[0, 16, 16] == near_id
        assert (frags.triangle_id[0] == 1 - near_id).any()  # the far one shows around it
        z_near = to_clip(near_tri, mvp)[0, 0]
        assert abs(float(frags.depth[0, 16, 16]) - float(z_near[2] / z_near[3])) < 1e-4


def grid_mesh(cells: int, pixels: int):
    """A (cells x cells) quad grid over the NDC square with vertices on pixel centres and
    jittered interior vertices (still on pixel centres): clip positions (1, V, 4), faces."""
    g = torch.Generator().manual_seed(0)
    step = (pixels - 2) // cells
    idx = torch.arange(cells + 1) * step + 1  # pixel indices of grid lines
    jj, ii = torch.meshgrid(idx, idx, indexing="xy")
    jitter = torch.randint(-(step // 3), step // 3 + 1, (2, cells + 1, cells + 1), generator=g)
    interior = torch.zeros_like(jj, dtype=torch.bool)
    interior[1:-1, 1:-1] = True
    jj, ii = jj + jitter[0] * interior, ii + jitter[1] * interior
    x = (jj.double() + 0.5) / pixels * 2 - 1
    y = 1 - (ii.double() + 0.5) / pixels * 2
    pos = torch.stack([x, y, torch.zeros_like(x), torch.ones_like(x)], -1).reshape(1, -1, 4).float()
    r, c = torch.meshgrid(torch.arange(cells), torch.arange(cells), indexing="ij")
    a = r * (cells + 1) + c
    b, d, e = a + 1, a + cells + 1, a + cells + 2
    faces = torch.stack([torch.stack([a, b, e], -1), torch.stack([a, e, d], -1)], -2).reshape(-1, 3)
    lo, hi = int(idx[0]), int(idx[-1])
    return pos, faces.int(), (lo, hi)


def test_shared_edges_and_vertices_covered_exactly_once(raster):
    """Split a grid mesh into its two triangle colour classes: no pixel in both, none missing."""
    pixels = 40
    pos, faces, (lo, hi) = grid_mesh(cells=6, pixels=pixels)
    even = raster.rasterize(pos, faces[0::2], (pixels, pixels)).mask[0]
    odd = raster.rasterize(pos, faces[1::2], (pixels, pixels)).mask[0]
    whole = raster.rasterize(pos, faces, (pixels, pixels)).mask[0]
    assert not (even & odd).any()
    assert torch.equal(even | odd, whole)
    inside = torch.zeros_like(whole)
    inside[lo:hi, lo:hi] = True  # the top-left rule owns the top and left outer edges
    assert torch.equal(whole, inside)


def test_two_triangle_square_every_pixel_once(raster):
    vertices, faces, _ = quad(0.5)
    pos = torch.cat([vertices, torch.ones(4, 1)], 1)[None]
    first = raster.rasterize(pos, faces[:1], (16, 16)).mask[0]
    second = raster.rasterize(pos, faces[1:], (16, 16)).mask[0]
    assert not (first & second).any()
    assert torch.equal(first | second, (pixel_centres_ndc(16, 16).abs() < 0.5).all(-1))


def test_triangle_behind_camera_and_beyond_far_plane_dropped(raster):
    tri = torch.tensor([[[-0.5, -0.5, 0.0, 1.0], [0.5, -0.5, 0.0, -0.1], [0.0, 0.5, 0.0, 1.0]]])
    faces = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    assert not raster.rasterize(tri, faces, (16, 16)).mask.any()
    far = torch.tensor([[[-0.5, -0.5, 1.5, 1.0], [0.5, -0.5, 1.5, 1.0], [0.0, 0.5, 1.5, 1.0]]])
    assert not raster.rasterize(far, faces, (16, 16)).mask.any()


def test_both_windings_render(raster):
    vertices, faces, _ = quad(0.5)
    pos = to_clip(vertices, front_camera())
    front = raster.rasterize(pos, faces, (16, 16))
    back = raster.rasterize(pos, faces[:, [0, 2, 1]], (16, 16))
    assert torch.equal(front.mask, back.mask) and front.mask.sum() > 20
    swapped = back.barycentrics[..., [0, 2, 1]]
    assert torch.allclose(front.barycentrics, swapped, atol=1e-6)


def test_chunking_gives_the_same_result():
    vertices, faces = sphere(16, 24)
    pos = to_clip(vertices, front_camera())
    whole = TorchRasterizer().rasterize(pos, faces, (48, 48))
    chunked = TorchRasterizer(max_candidates=200).rasterize(pos, faces, (48, 48))
    assert torch.equal(whole.triangle_id, chunked.triangle_id)
    assert torch.equal(whole.barycentrics, chunked.barycentrics)


@pytest.mark.parametrize(
    "pos, faces, resolution",
    [
        (torch.zeros(4, 4), torch.zeros(1, 3, dtype=torch.int32), (8, 8)),
        (torch.zeros(1, 4, 3), torch.zeros(1, 3, dtype=torch.int32), (8, 8)),
        (torch.zeros(1, 4, 4), torch.zeros(1, 3), (8, 8)),
        (torch.zeros(1, 4, 4), torch.tensor([[0, 1, 4]], dtype=torch.int32), (8, 8)),
        (torch.zeros(1, 4, 4), torch.zeros(1, 3, dtype=torch.int32), (0, 8)),
    ],
)
def test_rasterize_bad_input(raster, pos, faces, resolution):
    with pytest.raises(ValueError):
        raster.rasterize(pos, faces, resolution)


# --- interpolation ----------------------------------------------------------------------
def test_interpolate_batched_attributes_and_zero_where_empty(raster):
    vertices, faces, _ = quad(0.5)
    pos = to_clip(vertices, torch.stack([front_camera(), front_camera()]))
    frags = raster.rasterize(pos, faces, (16, 16))
    attr = torch.stack([torch.ones(4, 2), 2 * torch.ones(4, 2)])
    out = interpolate(attr, frags, faces)
    assert out.shape == (2, 16, 16, 2)
    assert torch.allclose(out[0][frags.mask[0]], torch.tensor(1.0))
    assert torch.allclose(out[1][frags.mask[1]], torch.tensor(2.0))
    assert (out[~frags.mask] == 0).all()
    with pytest.raises(ValueError):
        interpolate(torch.ones(3, 4, 2), frags, faces)
    with pytest.raises(ValueError):
        interpolate(torch.ones(4), frags, faces)


def test_interpolate_gradcheck(raster):
    vertices, faces, _ = quad(0.5)
    frags = raster.rasterize(to_clip(vertices, front_camera()), faces, (6, 6))
    frags64 = Fragments(frags.triangle_id, frags.barycentrics.double(), frags.depth)
    attr = torch.rand(4, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a: interpolate(a, frags64, faces), (attr,), fast_mode=True)


def test_gradient_reaches_texture_through_grid_sample(raster):
    vertices, faces, uv = quad(1.0)
    frags = raster.rasterize(to_clip(vertices, front_camera()), faces, (32, 32))
    texture = torch.rand(1, 3, 16, 16, requires_grad=True)
    image = sample_texture(texture, interpolate(uv, frags, faces)) * frags.mask[..., None]
    (image * torch.rand_like(image)).sum().backward()
    grad = texture.grad
    assert grad is not None and torch.isfinite(grad).all()
    assert (grad.abs().sum(1) > 0).float().mean() > 0.5  # most texels are seen


# --- backend choice ---------------------------------------------------------------------
def test_get_rasterizer_auto_on_cpu_is_torch(caplog):
    with caplog.at_level(logging.INFO, logger="csd_texture.render"):
        rasterizer = get_rasterizer("auto", "cpu")
    assert rasterizer.name == "torch" and isinstance(rasterizer, TorchRasterizer)
    assert "torch" in caplog.text
    assert get_rasterizer("torch").name == "torch"


def test_get_rasterizer_nvdiffrast_on_cpu_raises():
    with pytest.raises(BackendUnavailableError, match="CUDA"):
        get_rasterizer("nvdiffrast", "cpu")


def test_get_rasterizer_unknown_name():
    with pytest.raises(ConfigError, match="torch"):
        get_rasterizer("opengl")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the fallback without CUDA")
def test_auto_on_cuda_without_cuda_falls_back_and_logs_reason(caplog):
    with caplog.at_level(logging.INFO, logger="csd_texture.render"):
        assert get_rasterizer("auto", "cuda").name == "torch"
    assert "nvdiffrast unavailable" in caplog.text


def test_missing_nvdiffrast_package_message(monkeypatch):
    monkeypatch.setitem(sys.modules, "nvdiffrast", None)
    monkeypatch.setitem(sys.modules, "nvdiffrast.torch", None)
    with pytest.raises(BackendUnavailableError, match="pip install diffrp-nvdiffrast"):
        import_nvdiffrast()


@pytest.mark.gpu
def test_torch_and_nvdiffrast_agree():
    pytest.importorskip("nvdiffrast.torch")
    vertices, faces = sphere(32, 48)
    vertices = vertices * torch.tensor([1.0, 0.8, 0.6])  # break symmetry
    cams = torch.stack([perspective() @ look_at(e) for e in
                        ((0.0, 0.0, 3.0), (2.0, 1.5, 1.5), (-2.5, -0.5, 1.0))])
    device = torch.device("cuda")
    pos, faces_d = to_clip(vertices, cams).to(device), faces.to(device)
    ref = get_rasterizer("torch").rasterize(pos, faces_d, (96, 128))
    fast = get_rasterizer("nvdiffrast", device).rasterize(pos, faces_d, (96, 128))
    tid = ref.triangle_id
    padded = F.pad(tid[:, None].float(), (1, 1, 1, 1), mode="replicate")
    neighbours = F.unfold(padded, 3).view(tid.shape[0], 9, *tid.shape[1:])
    interior = (neighbours == tid[:, None].float()).all(1)  # not on a triangle/silhouette edge
    same = fast.triangle_id == tid
    assert (fast.mask == ref.mask)[interior].float().mean() >= 0.999
    assert same[interior & ref.mask].float().mean() >= 0.99
    both = same & ref.mask  # edge pixels included: nvdiffrast extrapolates a hair outside
    inner = both & interior
    attr = vertices.to(device)
    a, b = interpolate(attr, ref, faces_d), interpolate(attr, fast, faces_d)
    assert (a[inner] - b[inner]).abs().max() < 1e-3
    assert (a[both] - b[both]).abs().max() < 2e-2
    assert (ref.depth[both] - fast.depth[both]).abs().max() < 1e-3


# --- shading ----------------------------------------------------------------------------
def test_srgb_round_trip_values_and_gradient():
    x = torch.linspace(0, 1, 101).view(1, 1, -1, 1).expand(1, 1, 101, 3).clone()
    assert torch.allclose(srgb_to_linear(linear_to_srgb(x)), x, atol=1e-5)
    assert abs(float(linear_to_srgb(torch.full((3,), 0.5))[0]) - 0.7354) < 1e-3
    assert abs(float(srgb_to_linear(torch.full((3,), 0.5))[0]) - 0.2140) < 1e-3
    assert float(linear_to_srgb(torch.full((3,), 2.0)).max()) == pytest.approx(1.0)
    y = torch.tensor([0.0, 1e-6, 0.3], requires_grad=True)
    linear_to_srgb(y).sum().backward()
    assert torch.isfinite(y.grad).all()
    with pytest.raises(ValueError):
        linear_to_srgb(torch.zeros(2, 4))


def _surface(albedo=(1.0, 1.0, 1.0), roughness=1.0, metallic=0.0, size=2):
    shape = (1, size, size)
    return (
        torch.tensor(albedo).expand(*shape, 3).clone(),
        torch.full((*shape, 1), roughness),
        torch.full((*shape, 1), metallic),
        torch.tensor([0.0, 0.0, 1.0]).expand(*shape, 3).clone(),
    )


def test_shade_values_head_on():
    albedo, rough, metal, normal = _surface()
    out = shade(albedo, rough, metal, normal, normal, lighting())
    # diffuse 1 + pi * D G F / 4 with D = 1/pi, G = 1, F = 0.04 -> 1.01, plus ambient 0.1
    assert out.shape == (1, 2, 2, 3)
    assert torch.allclose(out, torch.full_like(out, 1.11), atol=1e-3)
    dark_metal = shade(torch.zeros_like(albedo), rough, torch.ones_like(metal), normal, normal, lighting())
    assert torch.allclose(dark_metal, torch.zeros_like(dark_metal), atol=1e-5)


def test_shade_light_behind_gives_ambient_and_unlit_gives_albedo():
    albedo, rough, metal, normal = _surface(albedo=(0.2, 0.4, 0.6))
    out = shade(albedo, rough, metal, normal, normal, lighting(direction=(0.0, 0.0, -1.0)))
    assert torch.allclose(out, 0.1 * albedo, atol=1e-6)
    grazing = shade(albedo, rough, metal, normal, normal, lighting(direction=(0.0, 0.8, 0.6)))
    head_on = shade(albedo, rough, metal, normal, normal, lighting())
    assert (grazing < head_on).all()
    unlit = shade(albedo, rough, metal, normal, normal, lighting(unlit=True))
    assert torch.equal(unlit, albedo)


def test_shade_is_two_sided_and_differentiable():
    albedo, rough, metal, normal = _surface(albedo=(0.5, 0.3, 0.2), roughness=0.4, metallic=0.3)
    view = F.normalize(torch.tensor([0.2, 0.1, 1.0]), dim=0).expand_as(normal)
    light = lighting(direction=tuple(F.normalize(torch.tensor([0.3, 0.5, 1.0]), dim=0).tolist()))
    front = shade(albedo, rough, metal, normal, view, light)
    back = shade(albedo, rough, metal, -normal, view, light)
    assert torch.allclose(front, back)
    params = [t.clone().requires_grad_(True) for t in (albedo, rough, metal)]
    shade(*params, normal, view, light).sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        shade(albedo, rough, metal, normal, view, lighting(batch=2))


def test_composite():
    rgb = torch.ones(2, 4, 4, 3)
    mask = torch.zeros(2, 4, 4, 1)
    mask[:, :2] = 1.0
    bg = torch.tensor([[0.0, 0.5, 0.0], [0.2, 0.2, 0.2]])
    out = composite(rgb, mask, bg)
    assert torch.equal(out[:, :2], rgb[:, :2])
    assert torch.allclose(out[1, 2:], torch.tensor([0.2, 0.2, 0.2]).expand(2, 4, 3))
    image_bg = torch.rand(2, 4, 4, 3)
    assert torch.equal(composite(rgb, mask, image_bg)[:, 2:], image_bg[:, 2:])
    with pytest.raises(ValueError):
        composite(rgb, mask, torch.zeros(2, 4))


def test_texture_is_sampled_at_covered_pixels_only():
    """render_views evaluates the texture only where the object is (the albedo field's MLP runs per
    point): one call on the covered points, the same values and parameter gradients there as
    evaluating every pixel, finite values on the background."""
    texture = make_texture("hybrid-field", 32, normal_map=True)
    with torch.no_grad():
        for parameter in texture.parameters():
            parameter.normal_(std=0.5)
    generator = torch.Generator().manual_seed(0)
    uv, position = torch.rand(2, 6, 5, 2, generator=generator), torch.rand(2, 6, 5, 3, generator=generator) * 2 - 1
    footprint = torch.rand(2, 6, 5, 1, generator=generator) * 0.05
    covered = torch.rand(2, 6, 5, generator=generator) < 0.4
    points = []

    def counted(*args):
        points.append(args[1].shape[:-1].numel())
        return texture(*args)

    got, want = sample_covered(counted, uv, position, footprint, covered), texture(uv, position, footprint)
    assert points == [int(covered.sum())] and 0 < points[0] < covered.numel()
    weights = [torch.rand(values.shape, generator=generator) * covered[..., None] for values in want]

    def gradients(sample) -> list[torch.Tensor]:
        texture.zero_grad()
        sum((values * w).sum() for values, w in zip(sample, weights)).backward()
        return [p.grad.clone() for p in texture.parameters()]

    for g, w in zip(got, want):
        assert torch.isfinite(g).all() and torch.allclose(g[covered], w[covered], atol=1e-6)
    for g, w in zip(gradients(got), gradients(want)):
        assert torch.allclose(g, w, atol=1e-5)
