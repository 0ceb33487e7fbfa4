"""Batch texturing: discovery, mirrored outputs, per-asset failures, resume, report, workers, Ray."""
from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pygltflib
import pytest
import trimesh
from click.testing import CliRunner

from csd_texture.batch import runners as batch_runners
from csd_texture.batch import BatchItem, discover_items, texture_folder, texture_many
from csd_texture.config import Config
from csd_texture.errors import ConfigError, InputError, ModelLoadError
from csd_texture.export import read_metadata
from csd_texture.guidance.csd import CSDGuidance

DATA = Path(__file__).parent / "data" / "meshes"
SIZES = {"steps": 2, "texture_size": 64, "render_size": 64}
FAST = ["--steps", "2", "--texture-size", "64", "--render-size", "64", "--quiet"]


def csd_texture(*args: str | Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "csd-texture"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "csd_texture_cli.main"]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def make_library(root: Path, bad: bool = False) -> Path:
    """crate.stl (uses --prompt), props/barrel/barrel.obj (+ prompt.txt), props/monkey.ply; optionally
    broken/empty.obj."""
    (root / "props" / "barrel").mkdir(parents=True)
    trimesh.creation.box(extents=(2, 1, 1)).export(root / "crate.stl")
    trimesh.creation.cylinder(radius=0.5, height=1.2, sections=12).export(root / "props" / "barrel" / "barrel.obj")
    (root / "props" / "barrel" / "prompt.txt").write_text("a wooden barrel\n")
    shutil.copy(DATA / "good" / "suzanne.ply", root / "props" / "monkey.ply")
    if bad:
        (root / "broken").mkdir()
        shutil.copy(DATA / "bad" / "empty.obj", root / "broken" / "empty.obj")
    return root


def report_of(out: Path) -> dict:
    return json.loads((out / "report.json").read_text())


def statuses(out: Path) -> dict[str, str]:
    return {a["asset"]: a["status"] for a in report_of(out)["assets"]}


def assert_valid_glb(path: Path) -> None:
    gltf = pygltflib.GLTF2().load(str(path))
    (material,) = gltf.materials
    assert material.pbrMetallicRoughness.baseColorTexture is not None
    assert material.pbrMetallicRoughness.metallicRoughnessTexture is not None


def snapshot(out: Path) -> dict[str, tuple[int, bytes]]:
    return {str(p.relative_to(out)): (p.stat().st_mtime_ns, p.read_bytes()) for p in out.rglob("*.glb")}


# ----------------------------------------------------------------------------- CLI end to end


def test_cli_folder_mirrors_tree_records_bad_asset_and_resumes(tiny_model_dir: str, tmp_path: Path) -> None:
    lib, out = make_library(tmp_path / "lib", bad=True), tmp_path / "out"
    proc = csd_texture("batch", lib, "-o", out, "--prompt", "a red toy", "--model", tiny_model_dir, *FAST)
    assert proc.returncode == 1, proc.stderr
    assert statuses(out) == {"broken/empty.obj": "failed", "crate.stl": "succeeded",
                             "props/barrel/barrel.obj": "succeeded", "props/monkey.ply": "succeeded"}
    report = report_of(out)
    assert report["state"] == "finished" and report["counts"] == {"succeeded": 3, "skipped": 0, "failed": 1,
                                                                  "pending": 0}
    (failed,) = [a for a in report["assets"] if a["status"] == "failed"]
    assert failed["error"].startswith("MeshLoadError: ") and "empty.obj" in failed["error"]
    assert "\n" not in failed["error"]
    for line in ("crate.stl", "broken/empty.obj", "failed", "MeshLoadError"):  # the printed table
        assert line in proc.stdout
    for name in ("crate.glb", "props/barrel/barrel.glb", "props/monkey.glb"):
        assert_valid_glb(out / name)
    assert not list((out / "broken").iterdir())
    assert read_metadata(out / "props/barrel/barrel.glb")["prompt"] == "a wooden barrel"
    assert read_metadata(out / "crate.glb")["prompt"] == "a red toy"
    assert not [p for p in out.rglob(".*")]  # no temp files left

    shutil.rmtree(lib / "broken")
    before = snapshot(out)
    from csd_texture_cli.main import main

    again = CliRunner().invoke(main, ["batch", str(lib), "-o", str(out), "--prompt", "a red toy",  # in-process
                                      "--model", tiny_model_dir, *FAST])
    assert again.exit_code == 0, again.output
    assert set(statuses(out).values()) == {"skipped"}
    assert snapshot(out) == before


def test_cli_ray_without_ray_says_how_to_install(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from csd_texture_cli.main import main

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` now fails as if it were not installed
    lib = make_library(tmp_path / "lib")
    result = CliRunner().invoke(main, ["batch", str(lib), "-o", str(tmp_path / "out"), "--prompt", "x", "--ray"])
    assert result.exit_code == 2
    assert result.output.strip() == "error: --ray needs Ray: pip install 'csd-texture[ray]'"
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------- discovery and manifests


def write_manifest(path: Path, rows: list[dict]) -> Path:
    if path.suffix == ".jsonl":
        path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    else:
        with path.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, sorted({key for row in rows for key in row}))
            writer.writeheader()
            writer.writerows(rows)
    return path


@pytest.mark.parametrize("suffix", [".csv", ".jsonl"])
def test_manifest_rows_override_settings(suffix: str, tiny_model_dir: str, tmp_path: Path) -> None:
    lib = make_library(tmp_path / "lib")
    manifest = write_manifest(tmp_path / "lib" / f"assets{suffix}", [
        {"mesh": "crate.stl", "prompt": "a metal crate", "seed": 7, "texture_size": 32},
        {"mesh": "props/monkey.ply", "prompt": "a golden monkey", "negative_prompt": "blurry",
         "output": "named/gold.glb", "keep_uv": "false", "negative_weight": "0.8,0.2"},
    ])
    out = tmp_path / "out"
    results = list(texture_folder(manifest, out, model=tiny_model_dir, progress=False, **SIZES))
    assert [r.status for r in results] == ["succeeded", "succeeded"]
    crate, gold = read_metadata(out / "crate.glb"), read_metadata(out / "named" / "gold.glb")
    assert (crate["prompt"], crate["seed"], crate["settings"]["texture_size"]) == ("a metal crate", 7, 32)
    assert crate["settings"]["steps"] == 2  # run-wide settings still apply
    assert (gold["negative_prompt"], gold["settings"]["negative_weight"]) == ("blurry", [0.8, 0.2])
    assert gold["settings"]["texture_size"] == 64 and gold["seed"] == 0
    assert_valid_glb(out / "named" / "gold.glb")
    assert [a["asset"] for a in report_of(out)["assets"]] == ["crate.stl", "props/monkey.ply"]


@pytest.mark.parametrize(("text", "expected"), [
    ("mesh,prompt,colour\ncrate.stl,a crate,red\n", "assets.csv:1: unknown column(s) colour"),
    ("mesh,prompt,seed\ncrate.stl,a crate,1\ncrate.stl,a crate,one\n", "assets.csv:3: setting seed = 'one' (str): expected a whole number"),
    ("mesh,prompt,keep_uv\ncrate.stl,a crate,maybe\n", "assets.csv:2: setting keep_uv = 'maybe' (str): expected true or false"),
    ("mesh,prompt,steps\ncrate.stl,a crate,-3\n", "assets.csv:2: steps must be >= 0"),
    ("prompt\na crate\n", "assets.csv:1: the header needs a 'mesh' column"),
    ("mesh,prompt\ncrate.stl,a crate,extra\n", "assets.csv:2: more values than header columns"),
    ("mesh,seed\ncrate.stl,3\n", "assets.csv:2: no prompt"),
    ("mesh,prompt,output\ncrate.stl,a crate,crate.png\n", "assets.csv:2: output 'crate.png' must end in"),
])
def test_bad_csv_manifest_names_file_and_line(text: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "assets.csv").write_text(text)
    with pytest.raises(ConfigError) as error:
        discover_items(tmp_path / "assets.csv", tmp_path / "out")
    assert expected in str(error.value)


@pytest.mark.parametrize(("text", "expected"), [
    ('{"mesh": "a.obj", "prompt": "x"}\n\n{"mesh": "b.obj", "prompt": "x", "sed": 1}\n', "assets.jsonl:3: unknown column(s) sed"),
    ('{"mesh": "a.obj", "prompt": "x", "steps": 1.5}\n', "assets.jsonl:1: setting steps = 1.5 (float): expected a whole number"),
    ('{"mesh": "a.obj", "prompt": 5}\n', "assets.jsonl:1: setting prompt = 5 (int): expected text"),
    ('{"mesh": "a.obj", "prompt": "x"\n', "assets.jsonl:1: not valid JSON"),
    ('["a.obj", "x"]\n', "assets.jsonl:1: expected a JSON object"),
])
def test_bad_jsonl_manifest_names_file_and_line(text: str, expected: str, tmp_path: Path) -> None:
    (tmp_path / "assets.jsonl").write_text(text)
    with pytest.raises(ConfigError) as error:
        discover_items(tmp_path / "assets.jsonl", tmp_path / "out")
    assert expected in str(error.value)


def test_folder_discovery_errors(tmp_path: Path) -> None:
    lib = make_library(tmp_path / "lib")
    with pytest.raises(InputError, match=r"no prompt for crate.stl, props/monkey.ply; pass --prompt"):
        discover_items(lib, tmp_path / "out")
    trimesh.creation.box().export(lib / "crate.obj")  # crate.obj and crate.stl would both write crate.glb
    with pytest.raises(InputError, match="crate.stl: its output .*crate.glb is also written by crate.obj"):
        discover_items(lib, tmp_path / "out", "x")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no mesh files"):
        discover_items(tmp_path / "empty", tmp_path / "out", "x")
    with pytest.raises(InputError, match="no such folder or manifest"):
        discover_items(tmp_path / "missing", tmp_path / "out", "x")


def test_output_folder_inside_the_library_is_not_an_input(tmp_path: Path) -> None:
    lib = make_library(tmp_path / "lib")
    out = lib / "textured"
    (out / "props").mkdir(parents=True)
    trimesh.creation.box().export(out / "props" / "old.glb")
    items = discover_items(lib, out, "x", output_format="obj")
    assert [i.asset for i in items] == ["crate.stl", "props/barrel/barrel.obj", "props/monkey.ply"]
    assert items[1].output == (out / "props" / "barrel" / "barrel.obj").resolve()


# ----------------------------------------------------------------------------- running, resume, failures


def test_model_loads_once_and_results_stream(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: str,
                                             tmp_path: Path) -> None:
    calls = []
    original = CSDGuidance.from_pretrained.__func__

    def counting(cls, *args, **kwargs):
        calls.append(args)
        return original(cls, *args, **kwargs)

    monkeypatch.setattr(CSDGuidance, "from_pretrained", classmethod(counting))
    lib = make_library(tmp_path / "lib")
    items = [{"mesh": lib / "crate.stl", "prompt": "a crate"},
             {"mesh": lib / "props" / "monkey.ply", "prompt": "a monkey", "seed": 3},
             {"mesh": lib / "props" / "barrel" / "barrel.obj", "prompt": "a barrel", "output": "b/barrel.glb"}]
    stream = texture_many(items, tmp_path / "out", model=tiny_model_dir, progress=False, **SIZES)
    first = next(stream)
    assert first.status == "succeeded" and statuses(tmp_path / "out")[str(lib / "crate.stl")] == "succeeded"
    assert report_of(tmp_path / "out")["state"] == "running"
    rest = list(stream)
    assert [r.status for r in rest] == ["succeeded", "succeeded"]
    assert len(calls) == 1
    assert (tmp_path / "out" / "monkey.glb").is_file() and (tmp_path / "out" / "b" / "barrel.glb").is_file()


def test_resume_skips_up_to_date_and_redoes_changed(tiny_model_dir: str, tmp_path: Path) -> None:
    lib = make_library(tmp_path / "lib")
    out = lib / "textured"  # inside the library: its outputs must not become inputs

    def run(**changes) -> dict[str, str]:
        results = texture_folder(lib, out, "a toy", model=tiny_model_dir, progress=False, **{**SIZES, **changes})
        return {r.asset: r.status for r in results}

    assert set(run().values()) == {"succeeded"}
    before = snapshot(out)
    assert run() == {"crate.stl": "skipped", "props/barrel/barrel.obj": "skipped", "props/monkey.ply": "skipped"}
    assert snapshot(out) == before
    assert run(device="cpu", renderer="torch") == run()  # where it runs does not change what it makes
    assert set(statuses(out).values()) == {"skipped"}

    (lib / "props" / "barrel" / "prompt.txt").write_text("a steel barrel")
    assert run()["props/barrel/barrel.obj"] == "succeeded"
    assert read_metadata(out / "props/barrel/barrel.glb")["prompt"] == "a steel barrel"
    assert set(run(seed=1).values()) == {"succeeded"}
    assert set(run(seed=1, force=True).values()) == {"succeeded"}
    assert all(snapshot(out)[k][0] > before[k][0] for k in before)


def test_interrupt_keeps_finished_work_and_resumes(monkeypatch: pytest.MonkeyPatch, tiny_model_dir: str,
                                                   tmp_path: Path) -> None:
    lib, out = make_library(tmp_path / "lib"), tmp_path / "out"
    real = batch_runners.texture_mesh

    def interrupted_on_second(*args, **kwargs):
        if len(list(out.rglob("*.glb"))) == 1:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(batch_runners, "texture_mesh", interrupted_on_second)
    with pytest.raises(KeyboardInterrupt):
        list(texture_folder(lib, out, "a toy", model=tiny_model_dir, progress=False, **SIZES))
    report = report_of(out)
    assert report["state"] == "interrupted"
    assert report["counts"] == {"succeeded": 1, "skipped": 0, "failed": 0, "pending": 2}
    assert len(list(out.rglob("*.glb"))) == 1 and not list(out.rglob(".*"))

    monkeypatch.setattr(batch_runners, "texture_mesh", real)
    results = list(texture_folder(lib, out, "a toy", model=tiny_model_dir, progress=False, **SIZES))
    assert sorted(r.status for r in results) == ["skipped", "succeeded", "succeeded"]


def test_unloadable_model_fails_the_whole_run(tmp_path: Path) -> None:
    lib, out = make_library(tmp_path / "lib"), tmp_path / "out"
    with pytest.raises(ModelLoadError):
        list(texture_folder(lib, out, "a toy", model=str(tmp_path / "no-model"), progress=False, **SIZES))
    report = report_of(out)
    assert report["state"] == "aborted" and "no-model" in report["error"]
    assert report["counts"]["pending"] == 3


@pytest.mark.slow
def test_two_worker_processes(tiny_model_dir: str, tmp_path: Path) -> None:
    lib, out = make_library(tmp_path / "lib", bad=True), tmp_path / "out"
    results = list(texture_folder(lib, out, "a toy", model=tiny_model_dir, workers=2, progress=False, **SIZES))
    assert sorted(r.status for r in results) == ["failed", "succeeded", "succeeded", "succeeded"]
    assert report_of(out)["mode"] == "processes" and report_of(out)["workers"] == 2
    assert_valid_glb(out / "props" / "monkey.glb")


@pytest.mark.slow
def test_ray_batch_with_a_bad_file(tiny_model_dir: str, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray")
    lib, out = make_library(tmp_path / "lib", bad=True), tmp_path / "out"
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        results = list(texture_folder(lib, out, "a toy", model=tiny_model_dir, ray=True, progress=False, **SIZES))
    finally:
        ray.shutdown()
    assert len(results) == 4
    assert statuses(out) == {"broken/empty.obj": "failed", "crate.stl": "succeeded",
                             "props/barrel/barrel.obj": "succeeded", "props/monkey.ply": "succeeded"}
    report = report_of(out)
    assert report["mode"] == "ray" and report["state"] == "finished"
    assert next(a for a in report["assets"] if a["status"] == "failed")["error"].startswith("MeshLoadError: ")
    for name in ("crate.glb", "props/barrel/barrel.glb", "props/monkey.glb"):
        assert_valid_glb(out / name)


def test_batch_item_carries_its_own_config(tmp_path: Path) -> None:
    item = BatchItem(tmp_path / "a.obj", tmp_path / "out" / "a.glb", Config(prompt="x", seed=4), "a.obj")
    with pytest.raises(ConfigError, match="devices are for local runs"):
        next(texture_many([item], ray=True, devices=[0]))


def test_unexpected_asset_failure_keeps_its_traceback_without_verbose(monkeypatch: pytest.MonkeyPatch,
                                                                      tiny_model_dir: str, tmp_path: Path) -> None:
    """A bug (not bad input) in one asset: the report and errors.log keep the whole traceback even
    without --verbose; a bad input file stays a one-line error without one."""
    from csd_texture_cli.main import main

    lib, out = tmp_path / "lib", tmp_path / "out"
    lib.mkdir()
    trimesh.creation.box().export(lib / "crate.stl")
    shutil.copy(DATA / "bad" / "empty.obj", lib / "empty.obj")
    real = batch_runners.texture_mesh

    def buggy_on_crate(mesh, *args, **kwargs):
        if Path(mesh).name == "crate.stl":
            raise ZeroDivisionError("a bug deep inside")
        return real(mesh, *args, **kwargs)

    monkeypatch.setattr(batch_runners, "texture_mesh", buggy_on_crate)
    result = CliRunner().invoke(main, ["batch", str(lib), "-o", str(out), "--prompt", "a box",
                                       "--model", tiny_model_dir, *FAST])
    assert result.exit_code == 1, result.output
    assets = {a["asset"]: a for a in report_of(out)["assets"]}
    assert assets["crate.stl"]["error"] == "ZeroDivisionError: a bug deep inside"
    assert assets["crate.stl"]["traceback"].startswith("Traceback") and "buggy_on_crate" in assets["crate.stl"]["traceback"]
    assert assets["empty.obj"]["status"] == "failed" and assets["empty.obj"]["traceback"] is None
    errors = (out / "errors.log").read_text()
    assert "== crate.stl" in errors and "ZeroDivisionError: a bug deep inside" in errors and "empty.obj" not in errors
