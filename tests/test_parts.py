"""Per-part prompts (regional guidance) and repainting a region of an existing texture (issue 16).

Colour checks use the trained tiny prior (tests/data/tiny-prior), which knows red, yellow, green
and blue; hue is measured as in test_prior_guidance."""
from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
import trimesh
from click.testing import CliRunner
from csd_texture_cli.main import main
from PIL import Image

from csd_texture import texture_mesh
from csd_texture.config import Config, load_config
from csd_texture.errors import ConfigError
from csd_texture.export import read_metadata
from csd_texture.guidance.csd import GuidanceWeights
from csd_texture.guidance.regional import assign_parts, latent_masks
from csd_texture.mesh_io import load_mesh
from csd_texture.regions import face_region, feathered
from csd_texture.testing import NAMED_HUES, hue_distance, mean_color_hsv, textured_red_ball
from csd_texture.uv import prepare_uv

PRIOR = Path(__file__).parent / "data" / "tiny-prior"
CHAIR = Path(__file__).parent / "data" / "meshes" / "scenes" / "chair_hierarchy.glb"
SIZE = 64
FAST = ["--texture-size", str(SIZE), "--render-size", "64", "--seed", "0", "--quiet"]


def halves(path: Path) -> Path:
    """A sphere whose top and bottom halves are two materials, Top and Bottom (nodes TopNode, BottomNode)."""
    sphere = trimesh.creation.icosphere(subdivisions=3)
    top = sphere.triangles_center[:, 1] > 0
    scene = trimesh.Scene()
    for name, keep in (("Top", top), ("Bottom", ~top)):
        piece = sphere.submesh([np.flatnonzero(keep)], append=True)
        material = trimesh.visual.material.PBRMaterial(name=name, baseColorFactor=[200, 200, 200, 255])
        piece.visual = trimesh.visual.TextureVisuals(material=material)
        scene.add_geometry(piece, node_name=f"{name}Node", geom_name=name)
    scene.export(path)
    return path


def red_ball(folder: Path) -> Path:
    """An icosphere with a uniform red SIZE x SIZE base colour texture."""
    return textured_red_ball(folder / "red.glb", size=SIZE, subdivisions=3)


def left_half_mask(path: Path, size: int = SIZE, mode: str = "L") -> Path:
    mask = np.zeros((size, size), np.uint8)
    mask[:, : size // 2] = 255
    image = Image.fromarray(mask)
    (image if mode == "L" else image.convert(mode)).save(path)
    return path


def part_hue(result, material: str) -> tuple[float, float]:
    """Hue and saturation of the mean base colour (sRGB) over the texels of `material`'s faces."""
    mesh = result.mesh
    labels = [k for k, (name, _) in enumerate(mesh.part_labels) if name == material]
    texels = face_region(mesh, np.isin(mesh.face_parts, labels), result.maps.size, 0) > 0
    srgb = np.clip(result.maps.albedo[texels], 0, 1) ** (1 / 2.2)
    hue, saturation, _ = mean_color_hsv(torch.from_numpy(srgb[None]))
    return float(hue), float(saturation)


def cli(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result.exit_code, result.output


# ----------------------------------------------------------------------------- which prompt paints which face

def test_parts_route_faces_by_material_or_node_glob_first_match_wins() -> None:
    chair = load_mesh(CHAIR)
    parts = assign_parts(chair, "a chair", (("Seat", "red"), ("Leg_F*", "blue"), ("Oak", "green")))
    assert parts.prompts == ("red", "blue", "green")  # every face matches a part: the main prompt paints none
    node = np.array([chair.part_labels[i][1] for i in chair.face_parts])
    assert (parts.face_prompt[node == "Seat"] == 0).all()
    assert (parts.face_prompt[np.char.startswith(node, "Leg_F")] == 1).all()  # before Oak, which also matches
    assert (parts.face_prompt[(node == "Back") | np.char.startswith(node, "Leg_B")] == 2).all()
    plain = assign_parts(chair, "a chair", (("Fabric", "red"),))
    assert plain.prompts == ("a chair", "red") and (plain.face_prompt[node == "Seat"] == 1).all()
    assert (plain.face_prompt[node != "Seat"] == 0).all()


def test_part_matching_nothing_names_what_there_is() -> None:
    with pytest.raises(ConfigError) as error:
        assign_parts(load_mesh(CHAIR), "a chair", (("Seat", "red"), ("Cushion*", "blue")))
    message = str(error.value)
    assert "'Cushion*'" in message and "'Seat'" not in message
    assert "materials: Fabric, Oak" in message and "Leg_BL" in message and "Seat" in message


def test_latent_masks_are_one_hot_inside_parts_and_blend_at_borders() -> None:
    parts = torch.full((1, 128, 128), -1)
    parts[0, 32:96, 32:64] = 0
    parts[0, 32:96, 64:96] = 1
    masks = latent_masks(parts, 2, (16, 16))
    assert masks.shape == (1, 2, 16, 16)
    torch.testing.assert_close(masks.sum(1), torch.ones(1, 16, 16))
    assert masks[0, 0, 8, 5] > 0.99 and masks[0, 1, 8, 10] > 0.99  # inside each part
    assert 0.1 < masks[0, 0, 8, 7] < 0.9 and 0.1 < masks[0, 1, 8, 8] < 0.9  # softened at the border
    torch.testing.assert_close(masks[0, :, 0, 0], torch.tensor([0.5, 0.5]))  # far background: both equally


def test_regional_gradient_with_one_hot_masks_is_each_prompts_own_gradient(tiny_guidance) -> None:
    """Composition by masks is routing: where a mask picks prompt k, the gradient is prompt k's plain
    CSD gradient (all K prompts, negative and empty prompt in one batched UNet call)."""
    guidance = tiny_guidance
    torch.manual_seed(0)
    size = guidance.image_size // guidance.vae_scale_factor
    noisy = torch.randn(2, 4, size, size)
    t = torch.tensor([300, 600])
    conds = [guidance.encode_prompts(text, "ugly").cond[:2] for text in ("a red ball", "a blue cube")]
    negative, null = guidance.encode_prompts("x", "ugly").negative, guidance.encode_prompts("x", "ugly").null
    weights = GuidanceWeights.csd(1.0, 0.5)
    masks = torch.zeros(2, 2, size, size)
    masks[:, 0, :, : size // 2] = 1
    masks[:, 1, :, size // 2:] = 1
    both = guidance.csd_gradient(noisy, t, torch.stack(conds), negative, null, weights, masks=masks)
    for k, cond in enumerate(conds):
        alone = guidance.csd_gradient(noisy, t, cond, negative, null, weights)
        where = masks[:, k:k + 1].expand_as(alone) > 0
        torch.testing.assert_close(both[where], alone[where], atol=1e-5, rtol=1e-4)


@pytest.mark.slow
def test_two_parts_get_their_prompts_hues_and_swapping_swaps_them(tmp_path: Path) -> None:
    source = halves(tmp_path / "halves.glb")
    hues = {}
    for top, bottom in (("red", "blue"), ("blue", "red")):
        result = texture_mesh(source, "a ball", parts={"Top": f"a {top} ball", "Bottom*": f"a {bottom} ball"},
                              steps=60, texture_size=SIZE, render_size=64, model=str(PRIOR), progress=False)
        for material, colour in (("Top", top), ("Bottom", bottom)):
            hue, saturation = part_hue(result, material)
            assert saturation > 0.15, f"{material} stayed grey"
            assert hue_distance(hue, NAMED_HUES[colour]) < 30.0, (material, colour, hue)
            hues[material, colour] = hue
    assert hues["Top", "red"] != hues["Top", "blue"]


def test_parts_on_the_command_line_are_recorded_and_reproducible(tmp_path: Path) -> None:
    source = halves(tmp_path / "halves.glb")
    for suffix in (".glb", ".obj"):
        out = tmp_path / f"out{suffix}"
        code, output = cli(source, "a ball", "-o", out, "--model", PRIOR, "--steps", "1", *FAST,
                           "--part", "Top=a red ball", "--part", "Bottom*=a blue ball, with stripes")
        assert code == 0, output
        record = read_metadata(out)
        assert record["settings"]["parts"] == {"Top": "a red ball", "Bottom*": "a blue ball, with stripes"}
        assert [p["prompt"] for p in record["part_prompts"]] == ["a red ball", "a blue ball, with stripes"]
        assert load_config(out.with_suffix(".json")).parts == (("Top", "a red ball"),
                                                              ("Bottom*", "a blue ball, with stripes"))


def test_batch_manifest_parts_column_is_a_json_object(tmp_path: Path) -> None:
    from csd_texture.batch import discover_items

    source = halves(tmp_path / "halves.glb")
    manifest = tmp_path / "jobs.csv"
    with manifest.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["mesh", "prompt", "parts"])
        writer.writerow([source.name, "a ball", json.dumps({"Top": "a red ball", "Bottom": "a blue ball"})])
    (item,) = discover_items(manifest, tmp_path / "out")
    assert item.config.parts == (("Top", "a red ball"), ("Bottom", "a blue ball"))


# ----------------------------------------------------------------------------- repainting a region

def test_feather_fades_in_inside_the_mask_and_keeps_zero_outside() -> None:
    mask = np.zeros((16, 16), np.float32)
    mask[:, :8] = 1.0
    weight = feathered(mask, 3)
    assert (weight[:, 8:] == 0).all()
    row = weight[0, :8][::-1]  # from the border inwards
    assert 0 < row[0] < row[1] < row[2] < row[3] == 1.0
    steps = np.diff(np.concatenate([[0.0], row]))
    assert steps[0] < steps[1:3].max()  # the smallest step is the one at the border


@pytest.mark.slow
def test_region_repaint_keeps_texels_outside_bit_for_bit_and_blends_the_border(tmp_path: Path) -> None:
    source = red_ball(tmp_path)
    mask = left_half_mask(tmp_path / "mask.png")
    out = tmp_path / "out.glb"
    code, output = cli(source, "a blue ball", "-o", out, "--model", PRIOR, "--edit", "--source-prompt", "a red ball",
                       "--edit-strength", "1", "--learning-rate", "0.1", "--region", mask, "--steps", "80", *FAST)
    assert code == 0, output
    before, after = load_mesh(source).base_color_image, load_mesh(out).base_color_image
    half = SIZE // 2
    np.testing.assert_array_equal(after[:, half:], before[:, half:])  # outside the mask: bit for bit
    hue, saturation, _ = mean_color_hsv(torch.from_numpy(after[:, :half]))
    assert saturation > 0.15 and hue_distance(hue, NAMED_HUES["blue"]) < 30.0
    column_steps = np.abs(np.diff(np.round(after * 255), axis=1)).mean(axis=(0, 2))  # (SIZE - 1,)
    border = column_steps[half - 1]
    assert border <= max(column_steps[: half - 1].max(), column_steps[half:].max())
    assert read_metadata(out)["region"]["texels"] == SIZE * half


def test_region_materials_picks_the_faces_of_a_material(tmp_path: Path) -> None:
    """--region-materials selects the UV footprint of the material's faces, grown into the gutter only."""
    chair = prepare_uv(load_mesh(CHAIR), texture_size=SIZE)
    seat = np.array([chair.part_labels[i][0] == "Fabric" for i in chair.face_parts])
    inside, outside = face_region(chair, seat, SIZE, 0), face_region(chair, ~seat, SIZE, 0)
    grown = face_region(chair, seat, SIZE, 4)
    assert inside.any() and ((grown > 0) >= (inside > 0)).all()
    assert not ((grown > 0) & (outside > 0)).any()


@pytest.mark.parametrize("case", ["no-edit", "wrong-size", "colour", "unknown-part", "unknown-material"])
def test_bad_region_and_part_inputs_fail_in_one_line_before_the_model(case: str, tmp_path: Path) -> None:
    """One line naming the problem, exit 2, no output; the model does not exist, so each error must come
    before any model loads."""
    source = red_ball(tmp_path)
    out = tmp_path / "out.glb"
    edit = ["--edit", "--source-prompt", "a red ball"]
    args, expected = {
        "no-edit": (lambda: ["--region", left_half_mask(tmp_path / "m.png")], "add --edit"),
        "wrong-size": (lambda: edit + ["--region", left_half_mask(tmp_path / "m.png", 32)],
                       "m.png: region mask is 32x32 but the source texture is 64x64"),
        "colour": (lambda: edit + ["--region", _coloured(tmp_path / "m.png")],
                   "m.png: region mask is not a greyscale image"),
        "unknown-part": (lambda: ["--part", "Seat=a blue seat"], "part pattern(s) 'Seat' match no material or node"),
        "unknown-material": (lambda: edit + ["--region-materials", "Cloth"],
                             "region material pattern(s) 'Cloth' match no material; materials: "),
    }[case]
    code, output = cli(source, "a blue ball", "-o", out, "--model", tmp_path / "no-such-model", *FAST, *args())
    assert code == 2, output
    errors = [line for line in output.splitlines() if not line.startswith("WARNING:")]  # (--edit of a .glb warns)
    assert len(errors) == 1 and errors[0].startswith("error: ") and expected in errors[0], output
    assert not out.exists() and not out.with_suffix(".json").exists()


def _coloured(path: Path) -> Path:
    image = np.zeros((SIZE, SIZE, 3), np.uint8)
    image[:, : SIZE // 2] = (255, 0, 0)
    Image.fromarray(image).save(path)
    return path


def test_rgb_mask_with_grey_pixels_counts_as_greyscale(tmp_path: Path) -> None:
    from csd_texture.regions import read_mask

    grey = read_mask(left_half_mask(tmp_path / "m.png", mode="RGB"), (SIZE, SIZE))
    assert grey[:, : SIZE // 2].min() == 1.0 and grey[:, SIZE // 2:].max() == 0.0


def test_region_settings_need_edit() -> None:
    with pytest.raises(ConfigError, match="add --edit"):
        Config(region_nodes=("Seat",))
