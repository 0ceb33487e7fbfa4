"""Text-guided editing: starts from the mesh's own texture on its own UVs."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh

from csd_texture import texture_mesh
from csd_texture.config import Config, edit_settings
from csd_texture.errors import MeshValidationError
from csd_texture.mesh_io import load_mesh
from csd_texture.render.shading import srgb_to_linear
from csd_texture.testing import NAMED_HUES, hue_distance, mean_color_hsv, textured_red_ball

FUZE = Path(__file__).parent / "data" / "meshes" / "good" / "fuze.obj"
PRIOR = Path(__file__).parent / "data" / "tiny-prior"


def test_edit_keeps_uvs_and_starts_exactly_from_the_texture(tiny_model_dir: str) -> None:
    source = load_mesh(FUZE)
    result = texture_mesh(FUZE, "a blue can", edit=True, source_prompt="a fuze drink can", steps=0,
                          texture_size=1024, model=tiny_model_dir, progress=False)  # the image's own size
    np.testing.assert_array_equal(result.mesh.uv, source.uv)
    np.testing.assert_array_equal(result.mesh.faces, source.faces)
    expected = srgb_to_linear(torch.from_numpy(source.base_color_image))
    covered = result.maps.coverage
    assert covered.mean() > 0.05  # fuze's label uses an eighth of its image
    np.testing.assert_allclose(result.maps.albedo[covered], expected.numpy()[covered], atol=2e-3)


def test_edit_settings_follow_the_paper() -> None:
    gentle = edit_settings(Config(edit=True, source_prompt="a red car", edit_strength=0.0))
    strong = edit_settings(Config(edit=True, source_prompt="a red car", edit_strength=1.0))
    assert gentle.negative_prompt == "a red car" and gentle.keep_uv and gentle.texture == "image"
    assert gentle.timestep_max.start < strong.timestep_max.start <= 0.8
    assert gentle.learning_rate < strong.learning_rate


def red_ball(folder: Path, size: int = 32) -> Path:
    """An icosphere with a uniform red base colour texture (sRGB (0.5, 0.04, 0.04) before export)."""
    return textured_red_ball(folder / "red.glb", size=size, subdivisions=2)


def test_edit_moves_the_texture_towards_the_prompt_hue(tmp_path: Path) -> None:
    """With the trained tiny prior, editing a red ball with "a blue ball" moves its hue towards blue and
    away from red (the direction, not just "changed"); api and CLI run half the steps asked for."""
    source = red_ball(tmp_path)
    before = torch.from_numpy(load_mesh(source).base_color_image)
    result = texture_mesh(source, "a blue ball", edit=True, source_prompt="a red ball", edit_strength=1.0,
                          steps=40, texture_size=32, render_size=64, learning_rate=0.1, model=str(PRIOR),
                          progress=False)
    assert len(result.history) == 20  # edit_settings: half the steps
    after = torch.from_numpy(np.clip(result.maps.albedo, 0, 1) ** (1 / 2.2))
    hue_before, hue_after = mean_color_hsv(before)[0], mean_color_hsv(after)[0]
    assert hue_distance(hue_after, NAMED_HUES["blue"]) < hue_distance(hue_before, NAMED_HUES["blue"]) - 20
    assert hue_distance(hue_after, NAMED_HUES["red"]) > hue_distance(hue_before, NAMED_HUES["red"]) + 20


def test_edit_needs_a_textured_mesh(tiny_model_dir: str) -> None:
    with pytest.raises(MeshValidationError, match="cannot edit this mesh's texture: it has no base colour texture"):
        texture_mesh(trimesh.creation.box(), "a blue box", edit=True, steps=0, model=tiny_model_dir, progress=False)


def test_edit_record_reproduces_the_run(tiny_model_dir: str, tmp_path: Path) -> None:
    """The record holds the settings the user asked for, so re-running from it gives the same maps
    (edit settings derive from them once, not twice)."""
    from csd_texture.config import Config

    first = texture_mesh(FUZE, "a blue can", edit=True, edit_strength=0.4, steps=2, texture_size=128,
                         render_size=64, model=tiny_model_dir, progress=False)
    settings = first.metadata["settings"]
    assert settings["learning_rate"] == Config().learning_rate and settings["edit"] is True
    assert first.metadata["effective_settings"]["learning_rate"] < settings["learning_rate"]
    again = texture_mesh(FUZE, config=Config.from_dict(settings), progress=False)
    np.testing.assert_array_equal(first.maps.albedo, again.maps.albedo)
