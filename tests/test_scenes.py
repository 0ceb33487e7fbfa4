"""Whole assets: a glTF comes back with its scene graph, skins, morph targets, animations,
instancing and materials; only the maps (and, where UVs are re-made, TEXCOORD_0 and the
vertex splits) change. Real pipeline with the tiny model, a couple of steps, small maps."""
from __future__ import annotations

import json
import logging
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
