"""The Blender add-on in a real, headless Blender: `csd-texture blender-addon` writes the zip,
Blender installs and enables it, and `bpy.ops.csd_texture.texture_selected()` textures a
subdivided cube (with a Subdivision Surface modifier) and a skinned, animated arm through the
real CLI and the tiny trained prior.

Setup: tools/install_test_deps.sh installs Debian's Blender and numpy < 1.24 for its Python (in
build/blender-python). Without Blender the test is skipped, or fails when CI is set.
Blender 4.x: set CSD_TEXTURE_BPY_PYTHON to a Python with the `bpy` module from PyPI (e.g. a
Python 3.11 venv with `pip install bpy==4.5.*`) and the same checks also run there.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY_PRIOR = ROOT / "tests" / "data" / "tiny-prior"
SKINNED_ARM = ROOT / "tests" / "data" / "meshes" / "scenes" / "skinned_arm.glb"
BLENDER_SITE = ROOT / "build" / "blender-python"
TIMEOUT_S = 600

# Runs inside Blender: builds the scene, installs the add-on, textures, writes what it found.
DRIVER = r'''
import json, sys
import bpy  # first: the bpy module (pip) provides bmesh once imported
import bmesh

args = json.loads(sys.argv[sys.argv.index("--") + 1])
bpy.ops.preferences.addon_install(filepath=args["zip"])
bpy.ops.preferences.addon_enable(module="csd_texture_blender")
prefs = bpy.context.preferences.addons["csd_texture_blender"].preferences
prefs.executable, prefs.device, prefs.extra_args = args["executable"], "cpu", "--render-size 64"

for obj in list(bpy.data.objects):
    bpy.data.objects.remove(obj)

# A cube cut into 3x3 quads per side, with its own material and a Subdivision Surface modifier.
bpy.ops.mesh.primitive_cube_add(size=2.0, location=(-3.0, 0.0, 1.0))
cube = bpy.context.object
cube.name = "Cube"
bm = bmesh.new(); bm.from_mesh(cube.data)
bmesh.ops.subdivide_edges(bm, edges=bm.edges[:], cuts=2, use_grid_fill=True)
bm.to_mesh(cube.data); bm.free()
material = bpy.data.materials.new("CubeMaterial"); material.use_nodes = True
cube.data.materials.append(material)
cube.modifiers.new("Subdivision", "SUBSURF").levels = 1

# An arm: a two-bone armature with a keyframed bend, and a cylinder skinned to it.
bpy.ops.object.armature_add(location=(2.0, 0.0, 0.0))
rig = bpy.context.object
rig.name = "Rig"
bpy.ops.object.mode_set(mode="EDIT")
upper = rig.data.edit_bones[0]; upper.name = "upper"; upper.head, upper.tail = (0, 0, 0), (0, 0, 2)
lower = rig.data.edit_bones.new("lower"); lower.head, lower.tail = (0, 0, 2), (0, 0, 4); lower.parent = upper
bpy.ops.object.mode_set(mode="OBJECT")
bone = rig.pose.bones["lower"]; bone.rotation_mode = "XYZ"
bone.keyframe_insert("rotation_euler", frame=1); bone.rotation_euler = (0.8, 0, 0)
bone.keyframe_insert("rotation_euler", frame=20); bone.rotation_euler = (0, 0, 0)
bpy.ops.mesh.primitive_cylinder_add(vertices=16, radius=0.4, depth=4.0, location=(2.0, 0.0, 2.0))
arm = bpy.context.object
arm.name = "Arm"
bm = bmesh.new(); bm.from_mesh(arm.data)
bmesh.ops.subdivide_edges(bm, edges=[e for e in bm.edges if abs(e.verts[0].co.z - e.verts[1].co.z) > 1], cuts=5)
bm.to_mesh(arm.data); bm.free()
groups = {name: arm.vertex_groups.new(name=name) for name in ("upper", "lower")}
for v in arm.data.vertices:
    weight = min(max((v.co.z + 0.5), 0.0), 1.0)  # blend around the elbow (z = 0 in the mesh)
    groups["lower"].add([v.index], weight, "REPLACE"); groups["upper"].add([v.index], 1 - weight, "REPLACE")
arm.parent = rig
arm.matrix_parent_inverse = rig.matrix_world.inverted()
arm.modifiers.new("Armature", "ARMATURE").object = rig

# The project's skinned, animated two-material arm, as Blender's glTF importer brings it in
# (armature modifier, vertex groups, action), moved aside.
bpy.ops.object.select_all(action="DESELECT")
bpy.ops.import_scene.gltf(filepath=args["skinned"])
imported = list(bpy.context.selected_objects)
for obj in imported:
    if obj.parent is None:
        obj.location.x += 7.0
imported_meshes = [o for o in imported if o.type == "MESH"]
imported_rig = next(o for o in imported if o.type == "ARMATURE")
for obj in imported_meshes:
    obj.name = "Imported" + obj.name
textured = [cube, arm, *imported_meshes]
rigs = {"Rig": rig, "ImportedRig": imported_rig}

def snapshot():
    objects = {}
    for obj in textured:
        mesh = obj.data
        uv = mesh.uv_layers.get("csd_texture")
        polygons = []
        if uv is not None:
            for polygon in mesh.polygons:
                corners = [uv.data[i].uv for i in polygon.loop_indices]
                area = 0.5 * abs(sum(a.x * b.y - b.x * a.y for a, b in zip(corners, corners[1:] + corners[:1])))
                polygons.append([area, polygon.area])
        materials = []
        for slot in obj.material_slots:
            tree = slot.material.node_tree
            bsdf = next(n for n in tree.nodes if n.type == "BSDF_PRINCIPLED")

            def colour_space(node):
                return node.image.colorspace_settings.name if node.type == "TEX_IMAGE" else None

            links = {link.to_socket.name: [link.from_node.bl_idname, link.from_socket.name,
                                           colour_space(link.from_node)]
                     for link in tree.links if link.to_node == bsdf}
            upstream = {}
            for link in tree.links:
                source = link.from_node
                if link.to_node.bl_idname in ("ShaderNodeSeparateColor", "ShaderNodeSeparateRGB", "ShaderNodeTexImage"):
                    upstream[link.to_node.name + ":" + link.to_socket.name] = [
                        source.bl_idname, getattr(source, "uv_map", None), colour_space(source),
                        source.type == "TEX_IMAGE" and source.image.packed_file is not None]
            materials.append({"name": slot.material.name, "links": links, "upstream": upstream,
                              "nodes": len(tree.nodes)})
        objects[obj.name] = {
            "modifiers": [m.type for m in obj.modifiers],
            "armature": next((m.object.name for m in obj.modifiers if m.type == "ARMATURE" and m.object), None),
            "parent": obj.parent.name if obj.parent else None,
            "uv_layers": [layer.name for layer in mesh.uv_layers],
            "active_uv": mesh.uv_layers.active.name if mesh.uv_layers.active else None,
            "vertices": [tuple(round(c, 6) for c in v.co) for v in mesh.vertices],
            "polygons": polygons, "materials": materials,
            "uv_range": [min(min(d.uv) for d in uv.data), max(max(d.uv) for d in uv.data)] if uv else None,
        }
    for name, armature in rigs.items():
        action = armature.animation_data.action if armature.animation_data else None
        objects[name] = {"action": action.name if action else None, "bones": [b.name for b in armature.data.bones]}
    return objects

bpy.ops.object.select_all(action="DESELECT")
for obj in textured:
    obj.select_set(True)
bpy.context.view_layer.objects.active = cube
scene = bpy.context.scene.csd_texture
scene.prompt, scene.preset, scene.steps, scene.seed, scene.texture_size = "a red box", "fast", 2, 3, 64
part = scene.parts.add()
part.material, part.prompt = "Sleeve", "a blue sleeve"  # the CLI refuses a --part that matches no material
report = {"before": snapshot(), "images_before": len(bpy.data.images)}

prefs.model = args["missing_model"]  # a failing run first: the file must stay as it was
try:
    report["failed"] = list(bpy.ops.csd_texture.texture_selected())
except RuntimeError as exc:
    report["failed"] = str(exc)
report["after_failure"] = snapshot()
report["images_after_failure"] = len(bpy.data.images)

prefs.model = args["model"]
report["result"] = list(bpy.ops.csd_texture.texture_selected())
report["after"] = snapshot()
with open(args["report"], "w") as f:
    json.dump(report, f)
'''


def blender() -> str:
    path = shutil.which("blender")
    if path is None:
        reason = "blender is not on PATH; run tools/install_test_deps.sh (as root it installs Debian's blender)"
        if os.environ.get("CI"):
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return path


def blender_command(kind: str) -> list[str]:
    """How to run a Python script in Blender: `blender -b` (PATH) or a Python with the bpy module."""
    if kind == "blender":
        return [blender(), "-b", "--factory-startup", "--python-exit-code", "1", "--python"]
    python = os.environ.get("CSD_TEXTURE_BPY_PYTHON")
    if not python:
        pytest.skip("set CSD_TEXTURE_BPY_PYTHON to a Python with the bpy module (pip install bpy) to test Blender 4.x")
    return [python]


@pytest.fixture(scope="module", params=["blender", "bpy"])
def textured(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """What the driver saw before, after a failing run and after a successful one."""
    command = blender_command(request.param)
    folder = tmp_path_factory.mktemp("blender")
    cli = Path(sys.executable).with_name("csd-texture")
    addon = folder / "csd_texture_blender.zip"
    subprocess.run([str(cli), "blender-addon", "-o", str(addon)], check=True, capture_output=True)
    (folder / "driver.py").write_text(DRIVER)
    report = folder / "report.json"
    args = {"zip": str(addon), "executable": str(cli), "model": str(TINY_PRIOR), "report": str(report),
            "skinned": str(SKINNED_ARM),
            "missing_model": str(folder / "no-such-model")}
    env = {**os.environ, "BLENDER_USER_CONFIG": str(folder / "config"), "BLENDER_USER_SCRIPTS": str(folder / "scripts"),
           "OMP_NUM_THREADS": "1"}
    if request.param == "blender":  # Debian's Blender runs the system Python: numpy < 1.24 from here
        env["PYTHONPATH"] = str(BLENDER_SITE)
    proc = subprocess.run([*command, str(folder / "driver.py"), "--", json.dumps(args)],
                          capture_output=True, text=True, timeout=TIMEOUT_S, env=env)
    assert proc.returncode == 0 and report.is_file(), \
        f"blender failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return json.loads(report.read_text())


def test_addon_zip_holds_the_module(tmp_path: Path) -> None:
    import zipfile

    from csd_texture.blender_addon import write_addon_zip

    first, second = write_addon_zip(tmp_path / "a.zip"), write_addon_zip(tmp_path / "b.zip")
    names = zipfile.ZipFile(first).namelist()
    assert "csd_texture_blender/__init__.py" in names and all(n.startswith("csd_texture_blender/") for n in names)
    assert first.read_bytes() == second.read_bytes()  # reproducible
    code = b"".join(zipfile.ZipFile(first).read(n) for n in names).decode()
    assert not re.search(r"^\s*(import|from)\s+(torch|csd_texture\b)", code, re.M)  # Blender's Python has neither



def meshes(snapshot: dict, prefix: str = "") -> list[str]:
    """The textured mesh objects of a driver snapshot (Cube, Arm, Imported...)."""
    return [name for name in snapshot if name.startswith(prefix) and not name.endswith("Rig")]


@pytest.mark.blender
@pytest.mark.slow
def test_failed_run_reports_the_cli_error_and_leaves_the_file(textured: dict) -> None:
    assert "error:" in textured["failed"] and "no-such-model" in textured["failed"], textured["failed"]
    assert textured["after_failure"] == textured["before"]
    assert textured["images_after_failure"] == textured["images_before"]


@pytest.mark.blender
@pytest.mark.slow
def test_texture_selected_wires_maps_into_the_objects_own_materials(textured: dict) -> None:
    assert textured["result"] == ["FINISHED"]
    after = textured["after"]
    assert after["Cube"]["materials"][0]["name"] == "CubeMaterial"  # its own material, not a new one
    imported = meshes(after, "Imported")
    assert imported and sum(len(after[n]["materials"]) for n in imported) >= 2  # the two-material arm
    for name in imported:  # its own materials, each wired
        names = [m["name"] for m in textured["before"][name]["materials"]]
        assert [m["name"] for m in after[name]["materials"]] == names
    for name in meshes(after):
        for material in after[name]["materials"]:
            links, upstream = material["links"], material["upstream"]
            assert links["Base Color"] == ["ShaderNodeTexImage", "Color", "sRGB"], links
            separate = links["Roughness"][0]
            assert separate in ("ShaderNodeSeparateColor", "ShaderNodeSeparateRGB"), links
            assert links["Roughness"][1] in ("G", "Green") and links["Metallic"][1] in ("B", "Blue"), links
            images = [v for k, v in upstream.items() if k.endswith(":Vector")]
            assert images and all(v[:2] == ["ShaderNodeUVMap", "csd_texture"] for v in images), upstream
            colour_spaces = sorted(v[2] for k, v in upstream.items() if k.split(":")[1] in ("Color", "Red", "Image")
                                   and v[0] == "ShaderNodeTexImage")
            assert colour_spaces == ["Non-Color"], upstream  # the ORM image feeding Separate Color
            assert all(v[3] for v in upstream.values() if v[0] == "ShaderNodeTexImage"), "images not packed"


@pytest.mark.blender
@pytest.mark.slow
def test_uv_map_follows_the_output_atlas(textured: dict) -> None:
    """Every face gets a non-degenerate piece of the atlas with one texel density (xatlas packs
    charts at a uniform scale): a corner looked up on the wrong output face breaks this."""
    for name in meshes(textured["after"]):
        data = textured["after"][name]
        assert data["uv_layers"][-1] == "csd_texture" and data["active_uv"] == "csd_texture"
        low, high = data["uv_range"]
        assert 0.0 <= low and high <= 1.0 and high - low > 0.5
        ratios = sorted(uv / area for uv, area in data["polygons"])
        assert ratios[0] > 0, f"{name}: a face collapsed to nothing in UV space"
        assert ratios[-1] / ratios[0] < 4, (name, ratios[0], ratios[-1])


@pytest.mark.blender
@pytest.mark.slow
def test_objects_modifiers_armature_and_animation_are_kept(textured: dict) -> None:
    before, after = textured["before"], textured["after"]
    assert after["Cube"]["modifiers"] == ["SUBSURF"]
    assert after["Arm"]["modifiers"] == ["ARMATURE"] and after["Arm"]["parent"] == "Rig"
    for rig in ("Rig", "ImportedRig"):
        assert after[rig] == before[rig] and after[rig]["action"], rig
    for name in meshes(after, "Imported"):
        assert after[name]["armature"] == before[name]["armature"] and "ARMATURE" in after[name]["modifiers"]
    for name in meshes(after):
        assert after[name]["vertices"] == before[name]["vertices"]
        assert after[name]["modifiers"] == before[name]["modifiers"]


def test_runner_command_asks_for_one_atlas_and_literal_material_prompts() -> None:
    import fnmatch

    run = addon_run_module()
    settings = run.Settings(prompt="a chair", parts=[("Seat*[1]", "red leather"), ("Leg", "oak")])
    command = settings.command("csd-texture", Path("in.glb"), Path("out.glb"), Path("maps"))
    assert command[command.index("--atlas") + 1] == "shared"  # one set of maps for every material
    parts = [command[i + 1] for i, arg in enumerate(command) if arg == "--part"]
    assert parts == ["Seat[*][[]1]=red leather", "Leg=oak"]
    pattern = parts[0].partition("=")[0]
    assert fnmatch.fnmatchcase("Seat*[1]", pattern) and not fnmatch.fnmatchcase("Seat 2[1]", pattern)
    with pytest.raises(ValueError, match="without '='"):
        run.Settings(prompt="x", parts=[("a=b", "y")]).command("csd-texture", Path("i"), Path("o"), Path("m"))


def addon_run_module():
    """The add-on's subprocess runner, loaded on its own (its package imports bpy)."""
    import importlib.util

    path = ROOT / "csd_texture" / "blender_addon" / "csd_texture_blender" / "run.py"
    spec = importlib.util.spec_from_file_location("csd_texture_blender_run", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.mark.slow
def test_runner_follows_the_cli_progress_and_cancels_it(tmp_path: Path) -> None:
    """The add-on's runner (no Blender needed) reads the real CLI's step from its progress bar,
    reports its one-line error, and Cancel ends the process group."""
    run = addon_run_module()
    cli = str(Path(sys.executable).with_name("csd-texture"))
    mesh = ROOT / "tests" / "data" / "meshes" / "good" / "fuze.obj"
    settings = run.Settings(prompt="a red can", preset="fast", steps=4, texture_size=64, model=str(TINY_PRIOR),
                            device="cpu", extra_args=["--render-size", "64"])
    done = run.Run(settings.command(cli, mesh, tmp_path / "out.glb", tmp_path / "maps"))
    assert done.wait() == 0, done.lines
    assert (done.step, done.total, done.progress) == (4, 4, 1.0)
    assert (tmp_path / "out.glb").is_file() and (tmp_path / "maps" / "orm.png").is_file()

    bad = run.Run(run.Settings(prompt="x", model=str(tmp_path / "none")).command(cli, mesh, tmp_path / "b.glb",
                                                                                 tmp_path / "b"))
    assert bad.wait() == 2 and bad.error_message().startswith("error: ") and "none" in bad.error_message()

    long = run.Run(run.Settings(**{**settings.__dict__, "steps": 100000}).command(cli, mesh, tmp_path / "c.glb",
                                                                                 tmp_path / "c"))
    deadline = time.monotonic() + 120
    while long.step < 1:
        assert long.poll() is None and time.monotonic() < deadline, long.lines
        time.sleep(0.1)
    start = time.monotonic()
    long.cancel()
    assert long.poll() is not None and long.process.returncode != 0 and time.monotonic() - start < 10
    assert not (tmp_path / "c.glb").exists()
