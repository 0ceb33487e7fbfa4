"""Device plumbing: every rasterizer says its device, and the UV bake runs where the texture lives
(`--renderer torch --device cuda`, and the `auto` fallback when nvdiffrast is missing, used to build
the UV G-buffer on the CPU and sample a CUDA texture with it). On CPU machines this runs the same
code path on the CPU; the gpu cases run it on CUDA."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import trimesh

from csd_texture import texture_mesh
from csd_texture.bake import bake_maps
from csd_texture.mesh_io import load_mesh
from csd_texture.optimize import ObjectiveOutput
from csd_texture.render import Rasterizer, get_rasterizer
from csd_texture.texture import make_texture
from csd_texture.uv import prepare_uv

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


class DeviceRecorder(torch.nn.Module):
    """A texture that notes on which device the bake hands it texels."""

    def __init__(self, texture: torch.nn.Module) -> None:
        super().__init__()
        self.texture, self.devices = texture, set()

    def forward(self, uv: torch.Tensor, position: torch.Tensor):
        self.devices |= {uv.device, position.device}
        return self.texture(uv, position)


def grey(images, views, progress, generator) -> ObjectiveOutput:
    return ObjectiveOutput(((images - 0.5) ** 2).mean())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", ["torch", "auto"])
def test_rasterizers_have_the_requested_device(name: str, device: str) -> None:
    rasterizer = get_rasterizer(name, device)
    assert isinstance(rasterizer, Rasterizer)
    assert rasterizer.device == torch.device(device)


@pytest.mark.parametrize("device", DEVICES)
def test_bake_runs_on_the_textures_device(device: str) -> None:
    mesh = prepare_uv(load_mesh(trimesh.creation.icosphere(subdivisions=1)), texture_size=32)
    texture = DeviceRecorder(make_texture("image", 32).to(device))
    maps = bake_maps(mesh, texture, 32, get_rasterizer("torch", device))
    assert texture.devices == {torch.device(device)}
    assert maps.coverage.any() and np.isfinite(maps.albedo).all()


@pytest.mark.parametrize("device", DEVICES)
def test_texture_mesh_with_the_torch_renderer_bakes_on_its_device(device: str) -> None:
    result = texture_mesh(trimesh.creation.icosphere(subdivisions=1), objective=grey, steps=2, device=device,
                          renderer="torch", texture_size=32, render_size=32, progress=False)
    assert result.metadata["device"].startswith(device) and result.metadata["renderer"] == "torch"
    assert result.maps.coverage.any() and np.isfinite(result.maps.albedo).all()
