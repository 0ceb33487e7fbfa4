"""With the trained tiny prior (tests/data/tiny-prior), csd-texture must move a texture towards
what the prompt says: the right sign, timestep weighting and prompt routing of the CSD gradient.
Judged by the hue reached, not by how much the texture moved."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from csd_texture import texture_mesh
from csd_texture.datatypes import PBRMaps
from csd_texture.export import export_textured_mesh
from csd_texture.mesh_io import load_mesh
from csd_texture.testing import NAMED_HUES, hue_distance, mean_color_hsv
from csd_texture.uv import prepare_uv

PRIOR = Path(__file__).parent / "data" / "tiny-prior"
STEPS = 80
FAST = ["--steps", str(STEPS), "--texture-size", "64", "--render-size", "64", "--seed", "0", "--quiet"]


@pytest.fixture(scope="module")
def sphere_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("mesh") / "sphere.ply"
    trimesh.creation.icosphere(subdivisions=3).export(path)
    return path


def cli_texture(mesh: Path, prompt: str, out: Path, *extra: str) -> np.ndarray:
    """Run the normal CLI with the tiny prior; return the output's base colour image (sRGB)."""
    exe = Path(sys.executable).parent / "csd-texture"
    proc = subprocess.run([str(exe), str(mesh), prompt, "-o", str(out), "--model", str(PRIOR), *FAST, *extra],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return load_mesh(out).base_color_image


def hue_error(image: np.ndarray, colour: str) -> float:
    hue, saturation, _ = mean_color_hsv(torch.from_numpy(image))
    assert saturation > 0.15, f"the texture stayed grey (saturation {float(saturation):.2f})"
    return float(hue_distance(hue, NAMED_HUES[colour]))


def red_share(image: np.ndarray) -> float:
    """The red channel's share of the mean colour, R / (R + G + B)."""
    mean = image.reshape(-1, 3).mean(0)
    return float(mean[0] / mean.sum())


@pytest.mark.parametrize("colour", ["red", "blue"])
def test_prompt_colour_reaches_the_texture(colour: str, sphere_file: Path, tmp_path: Path) -> None:
    image = cli_texture(sphere_file, f"a {colour} ball", tmp_path / "out.glb")
    assert hue_error(image, colour) < 30.0


def test_flipped_classifier_score_fails_the_same_check(sphere_file: Path, tmp_path: Path) -> None:
    """Guidance scale -1 pushes away from the prompt: the check above must not pass (it can fail)."""
    image = cli_texture(sphere_file, "a red ball", tmp_path / "out.glb", "--guidance-scale", "-1")
    hue, saturation, _ = mean_color_hsv(torch.from_numpy(image))
    assert saturation <= 0.15 or float(hue_distance(hue, NAMED_HUES["red"])) >= 30.0


def test_negative_prompt_keeps_red_out(sphere_file: Path, tmp_path: Path) -> None:
    plain = cli_texture(sphere_file, "a plain object", tmp_path / "plain.glb")
    without_red = cli_texture(sphere_file, "a plain object", tmp_path / "neg.glb", "--negative-prompt", "red")
    assert red_share(without_red) < red_share(plain) - 0.1


def test_edit_turns_a_red_texture_blue(tmp_path: Path) -> None:
    mesh = prepare_uv(load_mesh(trimesh.creation.icosphere(subdivisions=3)))
    size = 64
    red = np.full((size, size, 3), 0.04, np.float32)  # a real red: green and blue low, not exactly 0
    red[..., 0] = 0.5  # (a channel at exactly 0 sits where the sigmoid is flat and barely moves)
    maps = PBRMaps(albedo=red, roughness=np.full((size, size, 1), 0.6, np.float32),
                   metallic=np.zeros((size, size, 1), np.float32), coverage=np.ones((size, size), bool))
    source = export_textured_mesh(mesh, maps, tmp_path / "red.glb", {"prompt": "a red ball"})
    assert hue_error(load_mesh(source).base_color_image, "red") < 5.0
    result = texture_mesh(source, "a blue ball", edit=True, source_prompt="a red ball", edit_strength=1.0,
                          steps=2 * STEPS, texture_size=size, render_size=64, model=str(PRIOR), progress=False)
    albedo_srgb = np.clip(result.maps.albedo, 0, 1) ** (1 / 2.2)
    assert hue_error(albedo_srgb, "blue") < 40.0
