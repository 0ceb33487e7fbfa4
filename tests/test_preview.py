"""Previews: contact sheet and turntable of a real textured output, and the CLI options."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from csd_texture.errors import ConfigError
from csd_texture.export import linear_to_srgb
from csd_texture.preview import SHEET_VIEWS, contact_sheet, orbit_frames, turntable
from csd_texture_cli.main import main

FUZE = Path(__file__).parent / "data" / "meshes" / "good" / "fuze.obj"
WHITE = 255


def foreground(tile: np.ndarray) -> np.ndarray:
    """(N, 3) pixels of an (H, W, 3) uint8 tile that are not the white background."""
    return tile[(tile < WHITE).any(axis=-1)]


def expected_srgb(result) -> np.ndarray:
    """Mean base colour (sRGB, 0..255) over the covered texels of the baked maps."""
    return linear_to_srgb(result.maps.albedo[result.maps.coverage]).mean(axis=0) * 255


def test_contact_sheet_rows_lit_and_albedo(tiny_textured_fuze, tmp_path: Path) -> None:
    result, size = tiny_textured_fuze, 48
    path = contact_sheet(result.mesh, result.maps, tmp_path / "sheet.png", size=size)
    sheet = np.asarray(Image.open(path))
    assert sheet.shape == (2 * size, SHEET_VIEWS * size, 3) and sheet.dtype == np.uint8
    tiles = sheet.reshape(2, size, SHEET_VIEWS, size, 3).transpose(0, 2, 1, 3, 4)
    for tile in tiles.reshape(-1, size, size, 3):
        assert len(foreground(tile)) > 0.05 * size * size  # the mesh is in every view
    albedo_only = np.concatenate([foreground(t) for t in tiles[1]])
    np.testing.assert_allclose(albedo_only.mean(axis=0), expected_srgb(result), atol=3.0)
    assert np.abs(tiles[0].astype(float) - tiles[1]).mean() > 1.0  # the top row is shaded
    assert not np.array_equal(tiles[1, 0], tiles[1, 2])  # the views go round the mesh
    assert [p.name for p in tmp_path.iterdir()] == ["sheet.png"]  # no temp files left


def test_contact_sheet_refuses_other_formats(tiny_textured_fuze, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"\.png"):
        contact_sheet(tiny_textured_fuze.mesh, tiny_textured_fuze.maps, tmp_path / "sheet.jpg", size=16)
    assert not list(tmp_path.iterdir())


def test_turntable_gif_loops_over_orbit_frames(tiny_textured_fuze, tmp_path: Path) -> None:
    result, frames, size = tiny_textured_fuze, 6, 40
    path = turntable(result.mesh, result.maps, tmp_path / "spin.gif", frames=frames, size=size)
    gif = Image.open(path)
    assert gif.format == "GIF" and gif.n_frames == frames and gif.size == (size, size)
    assert gif.info["loop"] == 0 and gif.info["duration"] > 0
    expected = orbit_frames(result.mesh, result.maps, frames, size)
    for index in (0, frames // 2):
        gif.seek(index)
        decoded = np.asarray(gif.convert("RGB"), dtype=float)
        assert np.abs(decoded - expected[index]).mean() < 4.0  # palette quantisation only
    assert [p.name for p in tmp_path.iterdir()] == ["spin.gif"]


def test_turntable_mp4_without_encoder_says_how_to_install(tiny_textured_fuze, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # import fails
    with pytest.raises(ConfigError, match="pip install imageio-ffmpeg"):
        turntable(tiny_textured_fuze.mesh, tiny_textured_fuze.maps, tmp_path / "spin.mp4", frames=2, size=16)
    with pytest.raises(ConfigError, match=r"\.gif or \.mp4"):
        turntable(tiny_textured_fuze.mesh, tiny_textured_fuze.maps, tmp_path / "spin.avi", frames=2, size=16)
    assert not list(tmp_path.iterdir())


def test_turntable_mp4_with_encoder(tiny_textured_fuze, tmp_path: Path) -> None:
    pytest.importorskip("imageio_ffmpeg", reason="optional: pip install imageio-ffmpeg for .mp4 turntables")
    path = turntable(tiny_textured_fuze.mesh, tiny_textured_fuze.maps, tmp_path / "spin.mp4", frames=4, size=32)
    data = path.read_bytes()
    assert data[4:8] == b"ftyp" and len(data) > 500  # an MP4 container with frames in it
    assert [p.name for p in tmp_path.iterdir()] == ["spin.mp4"]


def test_cli_writes_preview_and_turntable(tiny_model_dir: str, tmp_path: Path) -> None:
    out, sheet, spin = tmp_path / "fuze.glb", tmp_path / "sheet.png", tmp_path / "spin.gif"
    run = CliRunner().invoke(main, [str(FUZE), "a red bottle", "-o", str(out), "--model", tiny_model_dir,
                                    "--steps", "1", "--texture-size", "32", "--render-size", "32", "--quiet",
                                    "--preview", str(sheet), "--turntable", str(spin)])
    assert run.exit_code == 0, run.output
    assert out.is_file()
    assert Image.open(sheet).size[0] == SHEET_VIEWS * Image.open(sheet).size[1] // 2
    assert Image.open(spin).n_frames > 1


@pytest.mark.parametrize("option, name, message", [("--preview", "sheet.jpg", "ending in .png"),
                                                   ("--turntable", "spin.avi", ".gif or .mp4")])
def test_cli_refuses_bad_preview_names_before_work(option: str, name: str, message: str, tmp_path: Path) -> None:
    out = tmp_path / "fuze.glb"
    run = CliRunner().invoke(main, [str(FUZE), "a red bottle", "-o", str(out), "--model", str(tmp_path / "none"),
                                    option, str(tmp_path / name)])
    assert run.exit_code == 2 and message in run.output
    assert not out.exists()
