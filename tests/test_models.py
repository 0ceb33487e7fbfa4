"""Model families (issue 17): SD epsilon, SD v-prediction and SDXL folders, single-file checkpoints,
LoRA, the depth ControlNet, and the refusal of anything else. Tiny models built in code; the
expected values come from diffusers' own pipelines and direct UNet calls, not from our code."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pygltflib
import pytest
import torch

from csd_texture.config import Config
from csd_texture.errors import ModelLoadError
from csd_texture.guidance.csd import CSDGuidance, GuidanceWeights
from csd_texture.guidance.prompts import view_prompts
from csd_texture.testing import build_tiny_controlnet, save_single_file, save_tiny_pipeline

DATA = Path(__file__).parent / "data" / "meshes"
FAST = ["--steps", "2", "--texture-size", "64", "--render-size", "64", "--quiet"]
FAMILIES = {"sd-epsilon": ("sd", "epsilon", "sd1"), "sd-v": ("sd", "v_prediction", "sd2"),
            "sdxl": ("sdxl", "epsilon", "sdxl")}


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """One tiny saved folder per family."""
    root = tmp_path_factory.mktemp("families")
    return {name: str(save_tiny_pipeline(root / name, family=family, prediction_type=prediction))
            for name, (family, prediction, _) in FAMILIES.items()}


def csd_texture(*args: str | Path) -> subprocess.CompletedProcess:
    exe = Path(sys.executable).parent / "csd-texture"
    command = [str(exe)] if exe.exists() else [sys.executable, "-m", "csd_texture_cli.main"]
    return subprocess.run(command + [str(a) for a in args], capture_output=True, text=True, timeout=300)


def reference_inputs(folder: str, sdxl: bool, prompts: list[str]):
    """diffusers' own pipeline: (encode(prompt) -> UNet kwargs, the empty-prompt kwargs, unet, scheduler)."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    if not sdxl:
        pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, requires_safety_checker=False)
        encode = lambda p: {"encoder_hidden_states": pipe.encode_prompt(p, "cpu", 1, False)[0]}  # noqa: E731
        return [encode(p) for p in prompts], encode(""), pipe.unet, pipe.scheduler
    pipe = StableDiffusionXLPipeline.from_pretrained(folder)
    time_ids = pipe._get_add_time_ids((64, 64), (0, 0), (64, 64), torch.float32,
                                      text_encoder_projection_dim=pipe.text_encoder_2.config.projection_dim)
    out = [pipe.encode_prompt(p, device="cpu", do_classifier_free_guidance=True) for p in prompts]
    kwargs = [{"encoder_hidden_states": e, "added_cond_kwargs": {"text_embeds": pooled, "time_ids": time_ids}}
              for e, _, pooled, _ in out]
    # SDXL's unconditional branch: force_zeros_for_empty_prompt zeroes embeddings and pooled vector.
    _, zeros, _, zero_pooled = out[0]
    null = {"encoder_hidden_states": zeros, "added_cond_kwargs": {"text_embeds": zero_pooled, "time_ids": time_ids}}
    return kwargs, null, pipe.unet, pipe.scheduler


@pytest.mark.parametrize("name", list(FAMILIES))
def test_csd_gradient_matches_direct_unet_calls(model_dirs: dict[str, str], name: str) -> None:
    """grad = w(t) (s eps(prompt) - w2 eps(negative) + (w2 - s) eps("")), eps from v via the schedule."""
    family, prediction, detected = FAMILIES[name]
    guidance = CSDGuidance.from_pretrained(model_dirs[name])
    assert (guidance.info.family, guidance.info.prediction_type) == (detected, prediction)
    embeds = guidance.encode_prompts("a red chair", "blurry")
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    views, t, scale, w2 = [0, 2], 700, 1.5, 0.7
    grad = guidance.csd_gradient(noisy, t, embeds.cond[torch.tensor(views)], embeds.negative, embeds.null,
                                 GuidanceWeights.csd(scale, w2))

    prompts = [view_prompts("a red chair")[v] for v in views] + ["blurry"]
    kwargs, null, unet, scheduler = reference_inputs(model_dirs[name], family == "sdxl", prompts)
    alpha_bar = scheduler.alphas_cumprod[t]

    def eps(x: torch.Tensor, cond: dict) -> torch.Tensor:
        with torch.no_grad():
            out = unet(x, torch.tensor([t]), **cond).sample
        return alpha_bar.sqrt() * out + (1 - alpha_bar).sqrt() * x if prediction == "v_prediction" else out

    eps_c = torch.cat([eps(noisy[i:i + 1], kwargs[i]) for i in range(2)])
    eps_n = torch.cat([eps(noisy[i:i + 1], kwargs[2]) for i in range(2)])
    eps_0 = torch.cat([eps(noisy[i:i + 1], null) for i in range(2)])
    expected = (1 - alpha_bar) * (scale * eps_c - w2 * eps_n + (w2 - scale) * eps_0)
    assert expected.abs().max() > 1e-3
    torch.testing.assert_close(grad, expected, atol=2e-5, rtol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(FAMILIES))
def test_cli_textures_with_each_family(model_dirs: dict[str, str], name: str, tmp_path: Path,
                                       gltf_validator) -> None:
    out = tmp_path / "out.glb"
    proc = csd_texture(DATA / "good" / "fuze.obj", "a red can", "-o", out, "--model", model_dirs[name], *FAST)
    assert proc.returncode == 0, proc.stderr
    gltf_validator(out)
    loaded = pygltflib.GLTF2().load(str(out)).asset.extras["model_loaded"]
    assert loaded.startswith(f"{FAMILIES[name][2]} ({FAMILIES[name][1]}, folder)"), loaded


def test_lora_changes_the_noise_prediction_by_its_scale(tiny_model_dir: str, tmp_path: Path) -> None:
    """A peft LoRA saved with diffusers' save_lora_weights: at scale 1 the guidance's UNet predicts what
    the peft-wrapped UNet predicts; at scale 0 what the plain UNet predicts."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    torch.manual_seed(0)
    unet.add_adapter(LoraConfig(r=4, lora_alpha=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"],
                                init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    lora_file = tmp_path / "lora" / "pytorch_lora_weights.safetensors"

    plain = CSDGuidance.from_pretrained(tiny_model_dir)
    embeds = plain.encode_prompts("a red chair").cond[:1]
    noisy = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        with_lora = unet(noisy, torch.tensor([500]), encoder_hidden_states=embeds).sample
    without = plain.predict_noise(noisy, 500, [embeds])[0]
    at_one = CSDGuidance.from_pretrained(tiny_model_dir, loras=(f"{lora_file}:1",))
    at_zero = CSDGuidance.from_pretrained(tiny_model_dir, loras=(f"{tmp_path / 'lora'}:0",))
    assert at_one.info.loras == (f"{lora_file}:1",)
    assert (with_lora - without).abs().max() > 1e-2
    torch.testing.assert_close(at_one.predict_noise(noisy, 500, [embeds])[0], with_lora, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(at_zero.predict_noise(noisy, 500, [embeds])[0], without, atol=1e-6, rtol=1e-5)


def test_lora_spec_parsing() -> None:
    from csd_texture.errors import ConfigError
    from csd_texture.guidance.lora import LoraSpec

    assert LoraSpec.parse("styles/wood.safetensors:0.6") == LoraSpec("styles/wood.safetensors", 0.6)
    assert LoraSpec.parse("styles/wood.safetensors") == LoraSpec("styles/wood.safetensors", 1.0)
    assert LoraSpec.parse(r"C:\loras\wood.safetensors") == LoraSpec(r"C:\loras\wood.safetensors", 1.0)
    with pytest.raises(ConfigError, match="not a number"):
        LoraSpec.parse("wood.safetensors:strong")


def test_controlnet_gets_the_rendered_depth_and_changes_the_gradient(tiny_model_dir: str, tmp_path: Path) -> None:
    from diffusers import UNet2DConditionModel

    from csd_texture.cameras import bounding_radius
    from csd_texture.mesh_io import load_mesh
    from csd_texture.optimize import CSDObjective, sample_views
    from csd_texture.render import get_rasterizer
    from csd_texture.render.views import Surface, render_views
    from csd_texture.texture import make_texture
    from csd_texture.uv import prepare_uv

    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    build_tiny_controlnet(unet).save_pretrained(tmp_path / "controlnet")
    plain = CSDGuidance.from_pretrained(tiny_model_dir)
    controlled = CSDGuidance.from_pretrained(tiny_model_dir, controlnet=f"depth={tmp_path / 'controlnet'}")
    assert controlled.info.controlnet == f"depth={tmp_path / 'controlnet'}"
    seen: list[torch.Tensor] = []
    controlled.control.model.register_forward_pre_hook(
        lambda module, args, kwargs: seen.append(kwargs["controlnet_cond"].clone()), with_kwargs=True)

    config = Config(prompt="a red can", negative_prompt="blurry", render_size=64, views_per_step=2)
    mesh = prepare_uv(load_mesh(DATA / "good" / "fuze.obj"), texture_size=64)
    surface = Surface.from_mesh(mesh, "cpu")
    texture = make_texture("image", 64, 0)
    views = sample_views(config, torch.Generator().manual_seed(3), bounding_radius(surface.vertices), mesh.up_axis,
                         torch.device("cpu"))
    rendered = render_views(surface, texture, views.cameras, views.lighting, get_rasterizer("torch", "cpu"),
                            views.background)
    views = replace(views, rendered=rendered)
    grads = []
    for guidance in (plain, controlled):
        objective = CSDObjective(guidance, guidance.encode_prompts(config.prompt, config.negative_prompt), config)
        loss = objective(rendered.image, views, 0.3, torch.Generator().manual_seed(4)).loss
        grads.append(torch.autograd.grad(loss, rendered.image, retain_graph=True)[0])

    # The ControlNet saw, for all three prompt branches alike, each view's rendered depth as an
    # inverse-depth image: nearest covered point 1, farthest 0.1, background 0.
    (control,) = seen
    assert control.shape == (3 * 2, 3, 64, 64)
    depth, covered = rendered.depth[..., 0], rendered.mask[..., 0] > 0.5
    for b in range(2):
        d = depth[b][covered[b]]
        expected = torch.where(covered[b], 0.1 + 0.9 * (d.max() - depth[b]) / (d.max() - d.min()), 0.0)
        for branch in range(3):
            torch.testing.assert_close(control[branch * 2 + b], expected.expand(3, -1, -1))
        # the renderer's depth is the distance along the view axis: within the mesh's reach of the camera
        distance = views.cameras.position[b].norm()
        radius = bounding_radius(surface.vertices)
        assert distance - radius - 1e-4 <= d.min() and d.max() <= distance + radius + 1e-4
    assert covered.any() and (~covered).any()
    assert (grads[0] - grads[1]).abs().max() > 1e-3 * grads[0].abs().max()


def test_single_file_checkpoint_gives_the_folder_gradient(tiny_model_dir: str, tmp_path: Path) -> None:
    """A checkpoint in the original single-file layout, with only the folder's configs (no weights)
    beside it, loads offline and gives exactly the folder's gradient."""
    checkpoint = save_single_file(tiny_model_dir, tmp_path / "tiny.safetensors")
    configs = tmp_path / "configs"
    shutil.copytree(tiny_model_dir, configs, ignore=shutil.ignore_patterns("*.safetensors", "*.bin"))
    folder = CSDGuidance.from_pretrained(tiny_model_dir)
    single = CSDGuidance.from_pretrained(str(checkpoint), model_config=str(configs))
    assert (single.info.family, single.info.source) == ("sd1", "single-file")
    embeds = folder.encode_prompts("a red chair", "blurry")
    noisy = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    weights = GuidanceWeights.csd(1.0, 0.5)
    want = folder.csd_gradient(noisy, 300, embeds.cond[:2], embeds.negative, embeds.null, weights)
    single_embeds = single.encode_prompts("a red chair", "blurry")
    got = single.csd_gradient(noisy, 300, single_embeds.cond[:2], single_embeds.negative, single_embeds.null, weights)
    torch.testing.assert_close(got, want, atol=0.0, rtol=0.0)


def test_unknown_single_file_asks_for_the_family(tmp_path: Path) -> None:
    from safetensors.torch import save_file

    save_file({"double_blocks.0.img_attn.qkv.weight": torch.zeros(2, 2)}, str(tmp_path / "flux.safetensors"))
    with pytest.raises(ModelLoadError, match=r"not a Stable Diffusion 1.x/2.x or SDXL checkpoint.*--model-family"):
        CSDGuidance.from_pretrained(str(tmp_path / "flux.safetensors"))


def one_line_error(proc: subprocess.CompletedProcess) -> str:
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert "Traceback" not in proc.stderr and len(lines) == 1, proc.stderr
    return lines[0]


def test_unsupported_and_incomplete_folders_are_one_line_exit_2(model_dirs: dict[str, str], tmp_path: Path) -> None:
    sd3 = tmp_path / "sd3"
    (sd3 / "transformer").mkdir(parents=True)
    (sd3 / "model_index.json").write_text(json.dumps({
        "_class_name": "StableDiffusion3Pipeline", "transformer": ["diffusers", "SD3Transformer2DModel"],
        "scheduler": ["diffusers", "FlowMatchEulerDiscreteScheduler"]}))
    (sd3 / "transformer" / "config.json").write_text("{}")
    partial = tmp_path / "sdxl-no-te2"
    partial.mkdir()
    for item in Path(model_dirs["sdxl"]).iterdir():
        if item.name != "text_encoder_2":
            (partial / item.name).symlink_to(item)
    out = tmp_path / "out.glb"
    for folder, words in [(sd3, ["StableDiffusion3Pipeline", "supported: Stable Diffusion 1.x/2.x", "SDXL"]),
                          (partial, ["has no text_encoder_2/", "SDXL"])]:
        proc = csd_texture(DATA / "good" / "fuze.obj", "a can", "-o", out, "--model", folder, *FAST)
        assert proc.returncode == 2, proc.stderr
        line = one_line_error(proc)
        assert all(word in line for word in words), line
        assert not out.exists()


def test_doctor_reports_the_family(model_dirs: dict[str, str]) -> None:
    from csd_texture.doctor import check_model

    assert check_model(model_dirs["sdxl"]).endswith(": sdxl (epsilon)")
    assert check_model(model_dirs["sd-v"]).endswith(": sd2 (v_prediction)")


@pytest.mark.slow
def test_cli_single_file_with_lora_and_controlnet(tiny_model_dir: str, tmp_path: Path, gltf_validator) -> None:
    """--model FILE.safetensors --model-config DIR --lora FILE:SCALE --controlnet depth=DIR, end to end."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    checkpoint = save_single_file(tiny_model_dir, tmp_path / "tiny.safetensors")
    unet = UNet2DConditionModel.from_pretrained(tiny_model_dir, subfolder="unet")
    build_tiny_controlnet(unet).save_pretrained(tmp_path / "controlnet")
    unet.add_adapter(LoraConfig(r=2, target_modules=["to_q", "to_v"], init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(tmp_path / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    out = tmp_path / "out.glb"
    proc = csd_texture(DATA / "good" / "fuze.obj", "a red can", "-o", out, "--model", checkpoint, "--model-config",
                       tiny_model_dir, "--lora", f"{tmp_path / 'lora'}:0.5", "--controlnet",
                       f"depth={tmp_path / 'controlnet'}", *FAST)
    assert proc.returncode == 0, proc.stderr
    gltf_validator(out)
    extras = pygltflib.GLTF2().load(str(out)).asset.extras
    assert extras["model_loaded"] == (f"sd1 (epsilon, single-file) + LoRA {tmp_path / 'lora'}:0.5; "
                                      f"ControlNet depth={tmp_path / 'controlnet'}")
    assert extras["settings"]["loras"] == [f"{tmp_path / 'lora'}:0.5"]


def test_rendered_depth_and_camera_space_normals_of_a_sphere() -> None:
    """Facing the camera: normal (0, 0, 1) and depth = distance - radius at the centre; normals point
    right on the right edge and up at the top (row 0); the normal ControlNet image is NormalBae's
    convention (red = left, green = up, blue = towards the camera)."""
    import trimesh

    from csd_texture.cameras import make_cameras
    from csd_texture.datatypes import Lighting
    from csd_texture.guidance.controlnet import control_images
    from csd_texture.mesh_io import load_mesh
    from csd_texture.render import get_rasterizer
    from csd_texture.render.views import Surface, render_views
    from csd_texture.texture import make_texture
    from csd_texture.uv import prepare_uv

    mesh = prepare_uv(load_mesh(trimesh.creation.icosphere(subdivisions=4)), texture_size=64)
    surface = Surface.from_mesh(mesh, "cpu")
    cameras = make_cameras(torch.tensor([20.0]), torch.tensor([30.0]), torch.tensor([40.0]), 1.0, 65)
    lighting = Lighting(torch.tensor([[0.0, 1.0, 0.0]]), torch.ones(1, 3), torch.zeros(1, 3), torch.tensor([True]))
    out = render_views(surface, make_texture("image", 64, 0), cameras, lighting, get_rasterizer("torch", "cpu"),
                       torch.zeros(1, 3))
    centre, distance = out.normal[0, 32, 32], cameras.position[0].norm()
    torch.testing.assert_close(centre, torch.tensor([0.0, 0.0, 1.0]), atol=0.03, rtol=0)
    assert abs(float(out.depth[0, 32, 32, 0]) - (float(distance) - 1.0)) < 0.02
    columns = out.mask[0, 32, :, 0].nonzero()
    rows = out.mask[0, :, 32, 0].nonzero()
    assert out.normal[0, 32, int(columns.max()), 0] > 0.7 and out.normal[0, int(rows.min()), 32, 1] > 0.7
    assert out.depth[0][out.mask[0] == 0].abs().max() == 0
    image = control_images("normal", out.depth, out.normal, out.mask)
    torch.testing.assert_close(image[0, :, 32, 32], centre * torch.tensor([-0.5, 0.5, 0.5]) + 0.5)
    assert image[0, 0, 32, int(columns.max())] < 0.2 and image[0, 1, int(rows.min()), 32] > 0.8
    torch.testing.assert_close(image[0, :, 0, 0], torch.tensor([0.5, 0.5, 1.0]))


def test_sdxl_vae_stays_fp32_in_fp16_unless_its_config_says_fixed(model_dirs: dict[str, str], tmp_path: Path) -> None:
    """SDXL's VAE overflows in fp16: it is kept in fp32 (force_upcast), except for a VAE whose config
    says it was fixed for fp16 (force_upcast false, like madebyollin/sdxl-vae-fp16-fix); SD's is not upcast."""
    fixed = tmp_path / "sdxl-fp16-fix"
    shutil.copytree(model_dirs["sdxl"], fixed)
    vae_config = json.loads((fixed / "vae" / "config.json").read_text())
    assert vae_config.get("force_upcast", True)
    (fixed / "vae" / "config.json").write_text(json.dumps({**vae_config, "force_upcast": False}))
    for folder, vae_dtype in [(model_dirs["sdxl"], torch.float32), (fixed, torch.float16),
                              (model_dirs["sd-epsilon"], torch.float16)]:
        guidance = CSDGuidance.from_pretrained(str(folder), dtype=torch.float16)
        assert next(guidance.unet.parameters()).dtype == torch.float16
        assert next(guidance.vae.parameters()).dtype == vae_dtype == guidance.vae_dtype, folder
