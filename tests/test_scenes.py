"""Whole assets: a glTF comes back with its scene graph, skins, morph targets, animations,
instancing and materials; only the maps (and, where UVs are re-made, TEXCOORD_0 and the
vertex splits) change. Real pipeline with the tiny model, a couple of steps, small maps."""
from __future__ import annotations

import json
import logging
import logging.handlers
from pathlib import Path

import numpy as np
import pygltflib
import pytest
from gltf_validator import require_validator, validate_gltf

from csd_texture import texture_mesh
from csd_texture.errors import ConfigError
from csd_texture.mesh_io.gltf import GltfSource
from csd_texture.mesh_io.pose import (
    default_weights,
    local_matrix,
    posed_positions,
    world_matrices,
)

DATA = Path(__file__).parent / "data" / "meshes"
ASSETS = {
    "skinned_arm": DATA / "scenes" / "skinned_arm.glb",
    "chair_hierarchy": DATA / "scenes" / "chair_hierarchy.glb",
    "morph_blob": DATA / "scenes" / "morph_blob.glb",
    "CesiumMilkTruck": DATA / "good" / "CesiumMilkTruck.glb",
    "Duck": DATA / "good" / "Duck.glb",
}
TINY = {"steps": 1, "texture_size": 32, "render_size": 32, "progress": False}
_RUNS: dict[tuple, Path] = {}


def _textured(name: str, tmp_path_factory, guidance, suffix: str = ".glb", **settings) -> Path:
    """The output of texturing asset `name` (cached per settings for this test session)."""
    key = (name, suffix, tuple(sorted(settings.items())))
    if key not in _RUNS:
        out = tmp_path_factory.mktemp(name) / f"{name}{suffix}"
        texture_mesh(ASSETS[name], "a red thing", out, guidance=guidance, **TINY, **settings)
        _RUNS[key] = out
    return _RUNS[key]


def _json(path: Path) -> dict:
    return json.loads(pygltflib.GLTF2().load(str(path)).to_json())


# ----------------------------------------------------------------------------- structure


def _structure(document: dict) -> dict:
    """Everything that must survive, with accessor contents resolved to values."""
    nodes = [{k: v for k, v in node.items() if k != "extras"} | {"extras": node.get("extras")}
             for node in document.get("nodes") or []]
    meshes = [{"name": m.get("name"), "weights": m.get("weights"), "extras": m.get("extras"),
               "primitives": [(p.get("material"), len(p.get("targets") or []),
                               sorted(a for a in p["attributes"] if not a.startswith("TEXCOORD")))
                              for p in m["primitives"]]} for m in document.get("meshes") or []]
    return {"nodes": nodes, "meshes": meshes, "scenes": document.get("scenes"), "scene": document.get("scene"),
            "cameras": document.get("cameras"), "extensions": document.get("extensions"),
            "skins": [{k: v for k, v in s.items() if k != "inverseBindMatrices"} for s in document.get("skins") or []],
            "animations": [{"name": a.get("name"), "channels": a["channels"],
                            "interpolation": [s.get("interpolation") for s in a["samplers"]]}
                           for a in document.get("animations") or []]}


def _material_without_maps(material: dict) -> dict:
    material = json.loads(json.dumps(material))
    pbr = material.get("pbrMetallicRoughness", {})
    for key in ("baseColorTexture", "metallicRoughnessTexture", "metallicFactor", "roughnessFactor"):
        pbr.pop(key, None)
    pbr["baseColorFactor"] = (pbr.get("baseColorFactor") or [1, 1, 1, 1])[3:]  # only alpha is kept
    return material


@pytest.mark.parametrize("name", list(ASSETS))
def test_scene_graph_skins_animations_and_materials_are_kept(name, tmp_path_factory, tiny_guidance):
    source, out = ASSETS[name], _textured(name, tmp_path_factory, tiny_guidance)
    before, after = _json(source), _json(out)
    assert _structure(after) == _structure(before)
    src, dst = GltfSource.read(source), GltfSource.read(out)
    for a, b in zip(before.get("skins") or [], after.get("skins") or []):
        np.testing.assert_array_equal(dst.accessor(b["inverseBindMatrices"]), src.accessor(a["inverseBindMatrices"]))
    for a, b in zip(before.get("animations") or [], after.get("animations") or []):
        for sa, sb in zip(a["samplers"], b["samplers"]):
            np.testing.assert_array_equal(dst.accessor(sb["input"]), src.accessor(sa["input"]))
            np.testing.assert_array_equal(dst.accessor(sb["output"]), src.accessor(sa["output"]))
    assert len(after["materials"]) == len(before["materials"])
    for a, b in zip(before["materials"], after["materials"]):
        assert _material_without_maps(b) == _material_without_maps(a)
        pbr = b["pbrMetallicRoughness"]
        assert {"baseColorTexture", "metallicRoughnessTexture"} <= set(pbr)
    # per-material maps (the default): every material its own base colour image
    sources = {after["textures"][m["pbrMetallicRoughness"]["baseColorTexture"]["index"]]["source"]
               for m in after["materials"]}
    assert len(sources) == len(after["materials"])
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["asset"]["kept"]["nodes"] == len(before["nodes"])
    assert record["asset"]["remade"]["materials_textured"] == [m.get("name") or f"material_{i}"
                                                               for i, m in enumerate(before["materials"])]


def test_instanced_meshes_stay_instanced_and_share_one_texture(tmp_path_factory, tiny_guidance):
    after = _json(_textured("chair_hierarchy", tmp_path_factory, tiny_guidance))
    legs = [n for n in after["nodes"] if n["name"].startswith("Leg_")]
    assert len(legs) == 4 and len({n["mesh"] for n in legs}) == 1
    assert len(after["meshes"]) == 3


# ----------------------------------------------------------------------------- poses


def _sample(times: np.ndarray, values: np.ndarray, interpolation: str, t: float) -> np.ndarray:
    """One animation sampler at time t (CUBICSPLINE: its values, linearly; rotations nlerped)."""
    if interpolation == "CUBICSPLINE":
        values = values.reshape(len(times), 3, -1)[:, 1]
    values = values.reshape(len(times), -1)
    if t <= times[0] or len(times) == 1:
        return values[0]
    if t >= times[-1]:
        return values[-1]
    k = int(np.searchsorted(times, t)) - 1
    if interpolation == "STEP":
        return values[k]
    w = (t - times[k]) / (times[k + 1] - times[k])
    return (1 - w) * values[k] + w * values[k + 1]


def _posed_corners(path: Path, t: float) -> dict[tuple[int, int, int], np.ndarray]:
    """(node, mesh, primitive) -> (F, 3, 3) world positions of its triangle corners at time t of
    the first animation (the default pose without one): node TRS and morph weights animated,
    then morph targets and skins evaluated."""
    source = GltfSource.read(path)
    document = source.document
    nodes = [dict(node) for node in document["nodes"]]
    weights: dict[int, np.ndarray] = {}
    for animation in (document.get("animations") or [])[:1]:
        for channel in animation["channels"]:
            sampler = animation["samplers"][channel["sampler"]]
            value = _sample(source.accessor_float(sampler["input"])[:, 0], source.accessor_float(sampler["output"]),
                            sampler.get("interpolation", "LINEAR"), t)
            node, path_name = channel["target"]["node"], channel["target"]["path"]
            if path_name == "weights":
                weights[node] = value
            else:
                nodes[node].pop("matrix", None)
                nodes[node][path_name] = list(value / np.linalg.norm(value) if path_name == "rotation" else value)
    worlds = world_matrices(document, [local_matrix(node) for node in nodes])
    corners = {}
    for index, node in enumerate(nodes):
        if "mesh" not in node:
            continue
        for p, primitive in enumerate(document["meshes"][node["mesh"]]["primitives"]):
            triangles = source.triangles(primitive)
            positions = posed_positions(source, index, primitive, worlds,
                                        weights.get(index, default_weights(document, index)))
            corners[(index, node["mesh"], p)] = positions[triangles]
    return corners


@pytest.mark.parametrize("name", list(ASSETS))
def test_posed_positions_are_unchanged_at_three_animation_times(name, tmp_path_factory, tiny_guidance):
    """Skinning, morphing and node animation of the output match the input's at the start,
    middle and end of the animation, corner by corner (re-made UVs split vertices but keep
    the triangles and their order)."""
    source, out = ASSETS[name], _textured(name, tmp_path_factory, tiny_guidance)
    gltf = GltfSource.read(source)
    ends = [float(gltf.accessor_float(s["input"]).max()) for a in gltf.document.get("animations") or []
            for s in a["samplers"]]
    end = max(ends, default=0.0)
    moved = []
    for t in (0.0, 0.37 * end, end):
        before, after = _posed_corners(source, t), _posed_corners(out, t)
        assert before.keys() == after.keys()
        for key in before:
            np.testing.assert_allclose(after[key], before[key], atol=1e-5, err_msg=f"{name} {key} at t={t}")
        moved.append(np.concatenate([c.reshape(-1, 3) for c in before.values()]))
    if end > 0:  # the check saw a real motion
        assert max(np.abs(m - moved[0]).max() for m in moved[1:]) > 1e-3


# ----------------------------------------------------------------------------- validator


@pytest.mark.parametrize("name", list(ASSETS))
def test_outputs_pass_the_khronos_validator(name, tmp_path_factory, tiny_guidance):
    """0 errors, and no warning the input does not already have (Blender's arm puts the skinned
    mesh under its armature, which the validator warns about in the input too)."""
    require_validator()
    out = _textured(name, tmp_path_factory, tiny_guidance)
    reports = validate_gltf(ASSETS[name], out)
    codes = [sorted(m["code"] for m in r["issues"]["messages"] if m["severity"] <= 1) for r in reports]
    assert reports[1]["issues"]["numErrors"] == 0
    assert codes[1] == codes[0], codes
    unused = [sum(m["code"] == "UNUSED_OBJECT" for m in r["issues"]["messages"]) for r in reports]
    assert unused[1] <= unused[0]  # replaced images and old vertex data are not left behind
    if name != "skinned_arm":
        assert codes[1] == []


def test_gltf_output_keeps_everything_too(tmp_path_factory, tiny_guidance):
    require_validator()
    out = _textured("skinned_arm", tmp_path_factory, tiny_guidance, suffix=".gltf")
    assert _structure(_json(out)) == _structure(_json(ASSETS["skinned_arm"]))
    assert validate_gltf(out)[0]["issues"]["numErrors"] == 0


# ----------------------------------------------------------------------------- keep-uv, atlas, materials


@pytest.mark.parametrize("name", ["skinned_arm", "chair_hierarchy", "morph_blob", "Duck"])
def test_keep_uv_leaves_every_vertex_accessor_byte_for_byte(name, tmp_path_factory, tiny_guidance):
    source, out = ASSETS[name], _textured(name, tmp_path_factory, tiny_guidance, keep_uv=True)
    src, dst = GltfSource.read(source), GltfSource.read(out)
    for mesh_a, mesh_b in zip(src.document["meshes"], dst.document["meshes"]):
        for pa, pb in zip(mesh_a["primitives"], mesh_b["primitives"]):
            pairs = [(pa["indices"], pb["indices"])] + [(pa["attributes"][k], pb["attributes"][k]) for k in pa["attributes"]]
            pairs += [(ta[k], tb[k]) for ta, tb in zip(pa.get("targets") or [], pb.get("targets") or []) for k in ta]
            assert pb["attributes"].keys() == pa["attributes"].keys()
            for a, b in pairs:
                assert dst.accessor(b).tobytes() == src.accessor(a).tobytes()
                assert {k: v for k, v in dst.document["accessors"][b].items() if k != "bufferView"} == \
                    {k: v for k, v in src.document["accessors"][a].items() if k != "bufferView"}
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["asset"]["remade"]["uvs_remade"] == []


def test_shared_atlas_gives_every_material_the_same_maps(tmp_path_factory, tiny_guidance):
    after = _json(_textured("CesiumMilkTruck", tmp_path_factory, tiny_guidance, atlas="shared"))
    textures = {(m["pbrMetallicRoughness"]["baseColorTexture"]["index"],
                 m["pbrMetallicRoughness"]["metallicRoughnessTexture"]["index"]) for m in after["materials"]}
    assert len(textures) == 1


def test_skipped_materials_stay_as_they_were(tmp_path_factory, tiny_guidance):
    """Glass stays glass: --skip-materials leaves the material and its primitives untouched."""
    out = _textured("CesiumMilkTruck", tmp_path_factory, tiny_guidance, skip_materials=("glass", "window*"))
    before, after = _json(ASSETS["CesiumMilkTruck"]), _json(out)
    assert after["materials"][1:3] == before["materials"][1:3]
    assert after["materials"][0] != before["materials"][0]
    src, dst = GltfSource.read(ASSETS["CesiumMilkTruck"]), GltfSource.read(out)
    for p in (1, 2):
        a, b = before["meshes"][0]["primitives"][p], after["meshes"][0]["primitives"][p]
        assert (a["material"], a["mode"], a["attributes"].keys()) == (b["material"], b["mode"], b["attributes"].keys())
        for name in a["attributes"]:  # renumbered (old accessors of re-made primitives are dropped), same bytes
            assert dst.accessor(b["attributes"][name]).tobytes() == src.accessor(a["attributes"][name]).tobytes()
        assert dst.accessor(b["indices"]).tobytes() == src.accessor(a["indices"]).tobytes()


def test_only_chosen_materials_and_patterns_that_match_nothing(tmp_path, tiny_guidance, caplog):
    out = tmp_path / "truck.glb"
    with caplog.at_level(logging.WARNING):
        texture_mesh(ASSETS["CesiumMilkTruck"], "a red truck", out, guidance=tiny_guidance,
                     materials=("wheels", "chrome*"), **TINY)
    assert "'chrome*' matches none" in caplog.text
    after, before = _json(out), _json(ASSETS["CesiumMilkTruck"])
    assert after["materials"][:3] == before["materials"][:3]
    with pytest.raises(ConfigError, match="leave no material"):
        texture_mesh(ASSETS["CesiumMilkTruck"], "x", tmp_path / "none.glb", guidance=tiny_guidance,
                     materials=("nothing",), **TINY)
    assert not (tmp_path / "none.glb").exists()


def test_obj_output_of_a_scene_names_what_it_drops(tmp_path, tiny_guidance, caplog):
    out = tmp_path / "arm.obj"
    with caplog.at_level(logging.WARNING):
        texture_mesh(ASSETS["skinned_arm"], "a red arm", out, guidance=tiny_guidance, **TINY)
    assert out.is_file()
    assert "not kept: 4 nodes, 1 skins, 1 animations" in caplog.text


# ----------------------------------------------------------------------------- built cases


def _build_rig(path: Path) -> Path:
    """A pygltflib-built GLB with what Blender's assets lack: two skins, a node parented to a
    bone, a sparse morph target, a primitive without material, an alpha-masked material with
    a normal map on TEXCOORD_0, and KHR_texture_transform on its base colour texture."""
    import trimesh

    blob, views, accessors = bytearray(), [], []

    def add(array: np.ndarray, kind: str, component: int, target: int | None = 34962, bounds: bool = False,
            normalized: bool = False) -> int:
        blob.extend(b"\0" * (-len(blob) % 4))
        data = np.ascontiguousarray(array).tobytes()
        views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(data), **({"target": target} if target else {})})
        blob.extend(data)
        accessor = {"bufferView": len(views) - 1, "componentType": component, "count": len(array), "type": kind}
        if bounds:
            accessor |= {"min": array.min(0).tolist(), "max": array.max(0).tolist()}
        if normalized:
            accessor["normalized"] = True
        accessors.append(accessor)
        return len(accessors) - 1

    def box_primitive(offset: float, two_joints: bool, material: int | None) -> dict:
        box = trimesh.creation.box(extents=(0.4, 1.0, 0.4))
        box = box.subdivide()
        v = (box.vertices + [offset, 0.5, 0.0]).astype(np.float32)
        uv = np.stack([(v[:, 0] - v[:, 0].min()) / np.ptp(v[:, 0]), v[:, 1]], 1).astype(np.float32)
        w = np.zeros((len(v), 4), np.uint8)  # normalized UNSIGNED_BYTE weights summing to 255
        w[:, 1] = np.round((0.1 + 0.8 * v[:, 1]) * 255) if two_joints else 0
        w[:, 0] = 255 - w[:, 1]
        joints = np.array([0, 1 if two_joints else 0, 0, 0])
        primitive = {"attributes": {
            "POSITION": add(v, "VEC3", 5126, bounds=True),
            "NORMAL": add(np.asarray(box.vertex_normals, np.float32), "VEC3", 5126),
            "TANGENT": add(np.tile(np.float32([1, 0, 0, 1]), (len(v), 1)), "VEC4", 5126),
            "TEXCOORD_0": add(uv, "VEC2", 5126),
            "JOINTS_0": add(np.repeat(joints[None], len(v), 0).astype(np.uint8), "VEC4", 5121),
            "WEIGHTS_0": add(w, "VEC4", 5121, normalized=True)},
            "indices": add(box.faces.astype(np.uint16).reshape(-1), "SCALAR", 5123, target=34963)}
        if material is not None:
            primitive["material"] = material
        return primitive

    hat = trimesh.creation.icosphere(subdivisions=1, radius=0.15)
    hat_v = hat.vertices.astype(np.float32)
    hat_primitive = {"attributes": {"POSITION": add(hat_v, "VEC3", 5126, bounds=True)},
                     "indices": add(hat.faces.astype(np.uint16).reshape(-1), "SCALAR", 5123, target=34963)}
    moved = np.arange(0, len(hat_v), 3, dtype=np.uint16)  # a sparse morph target: a third of the vertices move up
    deltas = np.tile(np.float32([0.0, 0.1, 0.0]), (len(moved), 1))
    add(moved, "SCALAR", 5123, target=None)
    add(deltas, "VEC3", 5126, target=None)
    del accessors[-2:]  # only their buffer views are used, by the sparse accessor
    accessors.append({"componentType": 5126, "count": len(hat_v), "type": "VEC3", "min": [0, 0, 0], "max": [0, 0.1, 0],
                      "sparse": {"count": len(moved), "indices": {"bufferView": len(views) - 2, "componentType": 5123},
                                 "values": {"bufferView": len(views) - 1}}})
    hat_primitive["targets"] = [{"POSITION": len(accessors) - 1}]
    body_a = box_primitive(-0.5, True, 0)
    body_b = box_primitive(0.5, False, 1)
    inverse_bind = np.stack([np.eye(4), np.linalg.inv(trimesh.transformations.translation_matrix([0, 0.5, 0])),
                             np.eye(4)]).transpose(0, 2, 1).reshape(-1, 16).astype(np.float32)
    ibm_a = add(inverse_bind[:2], "MAT4", 5126, target=None)
    ibm_b = add(inverse_bind[2:], "MAT4", 5126, target=None)
    times = add(np.float32([[0.0], [0.5], [1.0]]), "SCALAR", 5126, target=None, bounds=True)
    turn = np.float32([[0, 0, 0, 1], [0, 0, np.sin(0.4), np.cos(0.4)], [0, 0, 0, 1]])
    rotations = add(turn, "VEC4", 5126, target=None)
    weights = add(np.float32([[0.0], [1.0], [0.0]]), "SCALAR", 5126, target=None)
    png = (DATA / "good" / "fuze uv.jpg").read_bytes()
    blob.extend(b"\0" * (-len(blob) % 4))
    views.append({"buffer": 0, "byteOffset": len(blob), "byteLength": len(png)})
    blob.extend(png)
    document = {
        "asset": {"version": "2.0", "generator": "test_scenes", "extras": {"author": "tests"}},
        "extensionsUsed": ["KHR_texture_transform", "KHR_materials_emissive_strength"],
        "scene": 0, "scenes": [{"nodes": [0, 3, 5, 6]}],
        "nodes": [{"name": "Root", "children": [1]}, {"name": "Upper", "children": [2]},
                  {"name": "Lower", "translation": [0, 0.5, 0], "children": [4]},
                  {"name": "BodyA", "mesh": 0, "skin": 0},
                  {"name": "Hat", "mesh": 2, "translation": [0, 0.6, 0], "extras": {"kind": "prop"}},
                  {"name": "Tail", "translation": [0.5, 0, 0]},
                  {"name": "BodyB", "mesh": 1, "skin": 1}],
        "skins": [{"name": "Arm", "joints": [1, 2], "inverseBindMatrices": ibm_a},
                  {"name": "TailSkin", "joints": [5], "inverseBindMatrices": ibm_b}],
        "meshes": [{"name": "BodyA", "primitives": [body_a]}, {"name": "BodyB", "primitives": [body_b]},
                   {"name": "Hat", "primitives": [hat_primitive], "weights": [0.0]}],
        "materials": [
            {"name": "Masked", "alphaMode": "MASK", "alphaCutoff": 0.3, "doubleSided": True,
             "normalTexture": {"index": 0, "scale": 0.5},
             "emissiveFactor": [0.1, 0.2, 0.3], "extensions": {"KHR_materials_emissive_strength": {"emissiveStrength": 2}},
             "pbrMetallicRoughness": {"baseColorFactor": [1, 1, 1, 0.8], "baseColorTexture": {
                 "index": 0, "extensions": {"KHR_texture_transform": {"scale": [2, 2]}}}}},
            {"name": "Plain", "pbrMetallicRoughness": {"metallicFactor": 0.2}}],
        "textures": [{"source": 0}], "images": [{"bufferView": len(views) - 1, "mimeType": "image/jpeg"}],
        "animations": [{"name": "Wave", "channels": [{"sampler": 0, "target": {"node": 2, "path": "rotation"}},
                                                     {"sampler": 1, "target": {"node": 4, "path": "weights"}}],
                        "samplers": [{"input": times, "output": rotations}, {"input": times, "output": weights}]}],
        "accessors": accessors, "bufferViews": views, "buffers": [{"byteLength": len(blob)}],
    }
    gltf = pygltflib.GLTF2().from_dict(document)
    gltf.accessors[hat_primitive["targets"][0]["POSITION"]].byteOffset = None  # no bufferView: all zeros + sparse
    gltf.set_binary_blob(bytes(blob))
    gltf.save_binary(str(path))
    return path


@pytest.fixture(scope="module")
def built_rig(tmp_path_factory, tiny_guidance):
    """(input, output, log text) of the built rig, textured once."""
    source = _build_rig(tmp_path_factory.mktemp("rig") / "rig.glb")
    out = source.with_name("rig_out.glb")
    handler = logging.handlers.BufferingHandler(1000)
    logging.getLogger("csd_texture").addHandler(handler)
    try:
        texture_mesh(source, "a red robot", out, guidance=tiny_guidance, **TINY)
    finally:
        logging.getLogger("csd_texture").removeHandler(handler)
    return source, out, "\n".join(record.getMessage() for record in handler.buffer)


def test_built_rig_keeps_two_skins_bone_child_sparse_morph_and_materials(built_rig):
    source, out, messages = built_rig
    before, after = _json(source), _json(out)
    structure_before, structure_after = _structure(before), _structure(after)
    assert structure_after["meshes"][2]["primitives"][0][0] == len(before["materials"])  # Hat had none: gets one
    structure_after["meshes"][2]["primitives"][0] = (None, *structure_after["meshes"][2]["primitives"][0][1:])
    assert structure_after == structure_before
    assert after["materials"][2]["name"] == "csd_texture"
    masked = after["materials"][0]
    assert (masked["alphaMode"], masked["alphaCutoff"], masked["emissiveFactor"]) == ("MASK", 0.3, [0.1, 0.2, 0.3])
    assert masked["extensions"] == before["materials"][0]["extensions"]
    assert masked["pbrMetallicRoughness"]["baseColorFactor"][3] == pytest.approx(0.8)
    # the normal map still reads the old UVs, now TEXCOORD_1; the new maps use TEXCOORD_0 without the transform
    assert masked["normalTexture"]["texCoord"] == 1 and masked["normalTexture"]["scale"] == 0.5
    assert "extensions" not in masked["pbrMetallicRoughness"]["baseColorTexture"]
    assert "KHR_texture_transform" in messages and "dropped" in messages
    src, dst = GltfSource.read(source), GltfSource.read(out)
    old_primitive, new_primitive = before["meshes"][0]["primitives"][0], after["meshes"][0]["primitives"][0]
    old_uv = src.accessor(old_primitive["attributes"]["TEXCOORD_0"])
    new_uv = dst.accessor(new_primitive["attributes"]["TEXCOORD_1"])
    assert {tuple(r) for r in new_uv.tolist()} == {tuple(r) for r in old_uv.tolist()}
    weights = dst.document["accessors"][new_primitive["attributes"]["WEIGHTS_0"]]
    assert (weights["componentType"], weights.get("normalized")) == (5121, True)
    assert after["asset"]["extras"]["author"] == "tests" and after["asset"]["extras"]["prompt"] == "a red robot"


def test_built_rig_poses_and_validator(built_rig):
    source, out, _ = built_rig
    for t in (0.0, 0.5, 0.8):
        before, after = _posed_corners(source, t), _posed_corners(out, t)
        for key in before:
            np.testing.assert_allclose(after[key], before[key], atol=1e-5, err_msg=f"{key} at t={t}")
    hat = _posed_corners(source, 0.5)[(4, 2, 0)] - _posed_corners(source, 0.0)[(4, 2, 0)]
    assert np.abs(hat).max() > 0.05  # the bone turned and the sparse target moved the hat
    require_validator()
    reports = validate_gltf(source, out)
    assert reports[0]["issues"]["numErrors"] == reports[0]["issues"]["numWarnings"] == 0, reports[0]["issues"]
    assert reports[1]["issues"]["numErrors"] == reports[1]["issues"]["numWarnings"] == 0, reports[1]["issues"]


# ----------------------------------------------------------------------------- OBJ parts


def test_obj_groups_and_materials_survive_obj_and_gltf_outputs(tmp_path, tiny_guidance):
    import trimesh

    box = trimesh.creation.box()
    lines = ["mtllib parts.mtl"] + [f"v {x:g} {y:g} {z:g}" for x, y, z in box.vertices]
    for group, material, faces in (("lid", "brass", box.faces[:4]), ("body", "clay", box.faces[4:])):
        lines += [f"g {group}", f"usemtl {material}"] + [f"f {a + 1} {b + 1} {c + 1}" for a, b, c in faces]
    (tmp_path / "parts.obj").write_text("\n".join(lines) + "\n")
    (tmp_path / "parts.mtl").write_text("newmtl brass\nKd 1 1 0\nnewmtl clay\nKd 1 0 0\n")
    texture_mesh(tmp_path / "parts.obj", "a red box", tmp_path / "out.obj", guidance=tiny_guidance, **TINY)
    written = (tmp_path / "out.obj").read_text().splitlines()
    assert sorted(line for line in written if line.startswith(("g ", "usemtl "))) == [
        "g body", "g lid", "usemtl brass", "usemtl clay"]
    assert (tmp_path / "out.mtl").read_text().count("newmtl ") == 2
    texture_mesh(tmp_path / "parts.obj", "a red box", tmp_path / "out.glb", guidance=tiny_guidance, **TINY)
    gltf = _json(tmp_path / "out.glb")
    assert sorted(m["name"] for m in gltf["materials"]) == ["brass", "clay"]
    assert len(gltf["meshes"][0]["primitives"]) == 2


# ----------------------------------------------------------------------------- CLI and batch


def test_cli_atlas_and_material_options(tmp_path, tiny_model_dir):
    from click.testing import CliRunner
    from csd_texture_cli.main import main

    out = tmp_path / "chair.glb"
    result = CliRunner().invoke(main, [
        "texture", str(ASSETS["chair_hierarchy"]), "a wooden chair", "-o", str(out), "--model", tiny_model_dir,
        "--steps", "1", "--texture-size", "32", "--render-size", "32", "--quiet",
        "--atlas", "shared", "--materials", "Oak,Fab*", "--skip-materials", "Fabric"])
    assert result.exit_code == 0, result.output
    before, after = _json(ASSETS["chair_hierarchy"]), _json(out)
    assert after["materials"][1] == before["materials"][1]  # Fabric: chosen by --materials, then skipped
    assert "baseColorTexture" in after["materials"][0]["pbrMetallicRoughness"]
    record = json.loads(out.with_suffix(".json").read_text())
    assert record["settings"]["atlas"] == "shared" and record["settings"]["skip_materials"] == ["Fabric"]
    assert record["asset"]["kept"]["materials_untouched"] == ["Fabric"]
    bad = CliRunner().invoke(main, ["texture", str(ASSETS["chair_hierarchy"]), "x", "-o", str(tmp_path / "b.glb"),
                                    "--model", tiny_model_dir, "--atlas", "tiles"])
    assert bad.exit_code == 2 and "tiles" in bad.output


def test_batch_keeps_scenes_too(tmp_path, tiny_model_dir):
    from csd_texture import texture_folder
    from csd_texture.export import read_metadata

    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "blob.glb").write_bytes(ASSETS["morph_blob"].read_bytes())
    results = list(texture_folder(folder, tmp_path / "out", "a clay blob", model=tiny_model_dir, steps=1,
                                  texture_size=32, render_size=32, progress=False))
    assert [r.status for r in results] == ["succeeded"], results
    out = tmp_path / "out" / "blob.glb"
    assert _structure(_json(out)) == _structure(_json(ASSETS["morph_blob"]))
    assert read_metadata(out)["asset"]["kept"]["morph_targets"] == 2


# ----------------------------------------------------------------------------- Blender

_BLENDER_IMPORT = r'''
import bpy, json, sys
import numpy as np
paths, report = json.loads(sys.argv[sys.argv.index("--") + 1])
result = []
for path in paths:
    bpy.ops.wm.read_factory_settings(use_empty=True)
    bpy.ops.import_scene.gltf(filepath=path)
    scene = bpy.context.scene
    seen = {"armatures": sorted(o.name for o in bpy.data.objects if o.type == "ARMATURE"),
            "bones": sorted(b.name for a in bpy.data.armatures for b in a.bones),
            "actions": len(bpy.data.actions), "materials": sorted(m.name for m in bpy.data.materials),
            "shape_keys": sorted(k.name for s in bpy.data.shape_keys for k in s.key_blocks), "poses": []}
    start, end = (int(x) for x in bpy.data.actions[0].frame_range) if bpy.data.actions else (1, 1)
    for frame in (start, (start + end) // 2, end):
        scene.frame_set(frame)
        depsgraph = bpy.context.evaluated_depsgraph_get()
        points = []
        for obj in bpy.data.objects:
            if obj.type == "MESH":
                mesh = obj.evaluated_get(depsgraph).to_mesh()
                points += [list(obj.matrix_world @ v.co) for v in mesh.vertices]
        seen["poses"].append(sorted({tuple(round(c, 3) for c in p) for p in points}))
    result.append(seen)
json.dump(result, open(report, "w"))
'''


@pytest.mark.blender
@pytest.mark.slow
def test_blender_imports_the_rig_with_its_armature_and_animation(tmp_path_factory, tiny_guidance, tmp_path):
    """Blender's own glTF importer sees the same armature, bones, action, shape keys and materials in
    the output as in the input, and the same skinned vertex positions at three frames."""
    import os
    import shutil
    import subprocess

    blender = shutil.which("blender")
    if blender is None:
        if os.environ.get("CI"):
            pytest.fail("blender is not on PATH; run tools/install_test_deps.sh", pytrace=False)
        pytest.skip("blender is not on PATH; run tools/install_test_deps.sh")
    script, report = tmp_path / "import.py", tmp_path / "report.json"
    script.write_text(_BLENDER_IMPORT)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "build" / "blender-python")}
    for name in ("skinned_arm", "morph_blob"):
        out = _textured(name, tmp_path_factory, tiny_guidance)
        proc = subprocess.run([blender, "-b", "--factory-startup", "--python-exit-code", "1", "--python", str(script),
                               "--", json.dumps([[str(ASSETS[name]), str(out)], str(report)])],
                              capture_output=True, text=True, timeout=300, env=env, check=False)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        before, after = json.loads(report.read_text())
        assert after == before
        assert before["armatures"] or before["shape_keys"]


# ----------------------------------------------------------------------------- three.js

_ANIMATE_JS = r'''
// Load ?a=URL and ?b=URL, play each one's first animation to three times with AnimationMixer,
// and log every mesh vertex in world space (skinning and morphs applied by three.js itself).
import * as THREE from "three";
import { GLTFLoader } from "three/addons/loaders/GLTFLoader.js";

async function poses(url) {
  const gltf = await new GLTFLoader().loadAsync(url);
  const clip = gltf.animations[0];
  const mixer = new THREE.AnimationMixer(gltf.scene);
  if (clip) mixer.clipAction(clip).play();
  const result = [];
  for (const fraction of [0, 0.37, 1]) {
    mixer.setTime(clip ? clip.duration * fraction : 0);
    gltf.scene.updateMatrixWorld(true);
    const points = [];
    const v = new THREE.Vector3();
    gltf.scene.traverse((object) => {
      if (!object.isMesh) return;
      if (object.isSkinnedMesh) object.skeleton.update();
      const count = object.geometry.attributes.position.count;
      for (let i = 0; i < count; i++) {
        object.getVertexPosition(i, v);
        if (object.isSkinnedMesh) object.applyBoneTransform(i, v);
        v.applyMatrix4(object.matrixWorld);
        points.push([v.x, v.y, v.z].map((c) => Math.round(c * 1000) / 1000).join(","));
      }
    });
    result.push([...new Set(points)].sort());
  }
  return result;
}

const query = new URLSearchParams(window.location.search);
Promise.all([poses(query.get("a")), poses(query.get("b"))]).then(
  ([a, b]) => {
    const same = JSON.stringify(a) === JSON.stringify(b);
    const moved = JSON.stringify(a[0]) !== JSON.stringify(a[1]);
    console.log(`poses same=${same} moved=${moved} points=${a[0].length}`);
    document.title = "done";
  },
  (error) => console.error(`cannot load: ${error}`),
);
'''


@pytest.mark.slow
def test_three_js_plays_the_textured_rig_like_the_input(tmp_path_factory, tiny_guidance, tmp_path):
    """three.js GLTFLoader + AnimationMixer in headless Chromium: the textured arm and blob pose
    exactly like their inputs at three animation times, and the animation does move them."""
    import functools
    import http.server
    import threading

    from test_browser import PAGE_DIR, require_browser, screenshot

    browser = require_browser()
    page = tmp_path / "page"
    page.mkdir()
    (page / "animate.js").write_text(_ANIMATE_JS)
    (page / "index.html").write_text((PAGE_DIR / "index.html").read_text().replace("./render.js", "./animate.js"))
    files = {f"/{name}/in.glb": ASSETS[name] for name in ("skinned_arm", "morph_blob")}
    files |= {f"/{name}/out.glb": _textured(name, tmp_path_factory, tiny_guidance) for name in ("skinned_arm", "morph_blob")}

    class Handler(http.server.SimpleHTTPRequestHandler):
        def translate_path(self, path: str) -> str:
            path = path.split("?")[0]
            if path in files:
                return str(files[path])
            if path.startswith("/node_modules/"):
                return str(PAGE_DIR) + path
            return super().translate_path(path)

        def log_message(self, format: str, *args) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(Handler, directory=str(page)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        for name in ("skinned_arm", "morph_blob"):
            url = f"http://127.0.0.1:{httpd.server_address[1]}/index.html?a=/{name}/in.glb&b=/{name}/out.glb"
            _, console = screenshot(browser, url, tmp_path / name)
            assert "poses same=true moved=true" in console, f"{name}: {console}"
    finally:
        httpd.shutdown()
        httpd.server_close()
