"""Cameras, lighting, learnable textures and config: shapes, values, gradients, bad input."""
from __future__ import annotations

import pytest
import torch

from csd_texture.cameras import make_cameras, orbit_cameras, random_cameras, up_front_frame, view_bucket_index
from csd_texture.config import Config, Schedule, load_config, preset, save_config
from csd_texture.errors import ConfigError
from csd_texture.lighting import random_lighting
from csd_texture.texture import FourierFieldTexture, ImageTexture, UVPyramidTexture


def project(cameras, points: torch.Tensor) -> torch.Tensor:
    clip = torch.einsum("bij,vj->bvi", cameras.mvp, torch.nn.functional.pad(points, (0, 1), value=1.0))
    return clip[..., :3] / clip[..., 3:]


def test_front_camera_sees_front_nearest_and_up_is_up() -> None:
    cams = make_cameras(torch.tensor([0.0]), torch.tensor([0.0]), torch.tensor([40.0]), 1.0, 64)
    ndc = project(cams, torch.tensor([[0.0, 0.0, 1.0], [0.0, 0.0, -1.0], [0.0, 0.9, 0.0], [0.9, 0.0, 0.0]]))[0]
    assert ndc[0, 2] < ndc[1, 2]  # +Z (front) is nearer than -Z
    assert ndc[2, 1] > 0.3  # +Y projects to the top half
    assert ndc[3, 0] > 0.3  # +X is on the right when looking at the front


def test_z_up_front_is_minus_y() -> None:
    up, front, right = up_front_frame((0.0, 0.0, 1.0))
    assert torch.allclose(front, torch.tensor([0.0, -1.0, 0.0]))
    assert torch.allclose(torch.linalg.cross(up, front), right)


def test_bounding_sphere_fits_in_view() -> None:
    gen = torch.Generator().manual_seed(0)
    cams = random_cameras(16, gen, 64, (-10, 80), (30, 60), radius=1.0)
    sphere = torch.nn.functional.normalize(torch.randn(500, 3, generator=gen), dim=-1)
    ndc = project(cams, sphere)
    assert ndc[..., :2].abs().max() < 1.0 and (ndc[..., 2].abs() < 1.0).all()


def test_view_buckets() -> None:
    elevation = torch.tensor([0.0, 0.0, 0.0, 0.0, 75.0])
    azimuth = torch.tensor([10.0, 90.0, 180.0, -100.0, 0.0])
    assert view_bucket_index(elevation, azimuth).tolist() == [0, 1, 2, 1, 3]


def test_orbit_starts_at_front_and_spreads() -> None:
    cams = orbit_cameras(8, 32, 1.0)
    assert cams.azimuth[0] == 0 and len(set(cams.azimuth.tolist())) == 8


def test_lighting_is_seeded_and_has_unlit_views() -> None:
    cams = orbit_cameras(200, 32, 1.0)
    a = random_lighting(cams, torch.Generator().manual_seed(3), 0.25)
    b = random_lighting(cams, torch.Generator().manual_seed(3), 0.25)
    assert torch.equal(a.direction, b.direction)
    assert 0.1 < a.unlit.float().mean() < 0.4
    assert torch.allclose(a.direction.norm(dim=-1), torch.ones(200))


@pytest.mark.parametrize("kind", ["pyramid", "field"])
def test_textures_give_pbr_ranges_and_gradients(kind: str) -> None:
    texture = UVPyramidTexture(32) if kind == "pyramid" else FourierFieldTexture()
    uv = torch.rand(2, 8, 8, 2)
    sample = texture(uv, uv.new_zeros(2, 8, 8, 3).uniform_(-1, 1))
    assert sample.albedo.shape == (2, 8, 8, 3) and sample.roughness.shape == (2, 8, 8, 1)
    for values in sample:
        assert values.min() >= 0 and values.max() <= 1
    assert torch.allclose(sample.albedo, torch.full_like(sample.albedo, 0.25), atol=1e-4)
    sample.albedo[..., 0].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in texture.parameters())


def test_pyramid_initialised_from_an_image_reproduces_it() -> None:
    image = torch.rand(16, 16, 3) * 0.8 + 0.1
    texture = UVPyramidTexture(16)
    texture.initialise_albedo(image)
    centres = (torch.arange(16) + 0.5) / 16
    v, u = torch.meshgrid(1 - centres, centres, indexing="ij")  # row 0 = v 1
    sample = texture(torch.stack([u, v], -1)[None])
    assert torch.allclose(sample.albedo[0], image, atol=1e-3)


def test_image_texture_samples_rows_top_down() -> None:
    albedo = torch.zeros(4, 4, 3)
    albedo[:2, :, 0] = 1.0  # top rows red
    albedo[2:, :, 2] = 1.0  # bottom rows blue
    tex = ImageTexture(albedo, torch.ones(4, 4, 1), torch.zeros(4, 4, 1))
    sample = tex(torch.tensor([[[[0.5, 0.9], [0.5, 0.1]]]]))
    assert sample.albedo[0, 0, 0].tolist() == [1.0, 0.0, 0.0]
    assert sample.albedo[0, 0, 1].tolist() == [0.0, 0.0, 1.0]


def test_schedule_and_config_validation(tmp_path) -> None:
    assert Schedule(1.0, 0.5).at(0.5) == 0.75 and Schedule.parse("1,0.5") == Schedule(1.0, 0.5)
    with pytest.raises(ConfigError, match="START,END"):
        Schedule.parse("a,b")
    with pytest.raises(ConfigError, match="guidance must be"):
        Config(guidance="magic")
    with pytest.raises(ConfigError, match="unknown setting"):
        Config().updated(colour="red")
    config = preset("fast", seed=7, negative_weight=Schedule(0.8, 0.2))
    for name in ("settings.json", "settings.yaml"):
        save_config(config, tmp_path / name)
        assert load_config(tmp_path / name) == config
    (tmp_path / "bad.yaml").write_text("steps: [1, 2")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(tmp_path / "bad.yaml")
