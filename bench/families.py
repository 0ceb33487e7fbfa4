"""CPU cost per model family (issue 17), tiny models built in code, in one table.

For SD epsilon, SD v-prediction, SDXL, a single-file checkpoint, SD + LoRA and SD + depth ControlNet:
model load seconds (`load_guidance`, LoRA/ControlNet included) and seconds per optimisation step
(the whole pipeline: render, VAE encode, UNet calls, backward) on suzanne at the bench settings.
Tiny models measure what each family adds around the UNet (the second text encoder, time ids,
v conversion, ControlNet call), not the real models' UNet cost.

    python bench/families.py [--steps 60] [--texture-size 256] [--render-size 128] [--threads 1]
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch

from csd_texture.api import load_guidance, texture_mesh
from csd_texture.config import Config
from csd_texture.testing import build_tiny_controlnet, save_single_file, save_tiny_pipeline

MESH = Path(__file__).resolve().parent.parent / "tests" / "data" / "meshes" / "good" / "suzanne.ply"


def make_models(root: Path) -> dict[str, dict]:
    """Config changes for each variant, with the tiny folders, checkpoint, LoRA and ControlNet they need."""
    from diffusers import StableDiffusionPipeline, UNet2DConditionModel
    from peft import LoraConfig
    from peft.utils import get_peft_model_state_dict

    sd = save_tiny_pipeline(root / "sd")
    unet = UNet2DConditionModel.from_pretrained(sd, subfolder="unet")
    build_tiny_controlnet(unet).save_pretrained(root / "controlnet")
    unet.add_adapter(LoraConfig(r=4, target_modules=["to_q", "to_k", "to_v", "to_out.0"], init_lora_weights=False))
    StableDiffusionPipeline.save_lora_weights(root / "lora", unet_lora_layers=get_peft_model_state_dict(unet))
    return {
        "SD epsilon (folder)": {"model": str(sd)},
        "SD v-prediction (folder)": {"model": str(save_tiny_pipeline(root / "sd-v", prediction_type="v_prediction"))},
        "SDXL (folder)": {"model": str(save_tiny_pipeline(root / "sdxl", family="sdxl"))},
        "SD single-file": {"model": str(save_single_file(sd, root / "sd.safetensors")), "model_config": str(sd)},
        "SD + LoRA": {"model": str(sd), "loras": (str(root / "lora"),)},
        "SD + depth ControlNet": {"model": str(sd), "controlnet": f"depth={root / 'controlnet'}"},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=60)
    parser.add_argument("--texture-size", type=int, default=256)
    parser.add_argument("--render-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = [("variant", "family", "load s", "s/step", "vs SD epsilon")]
    with tempfile.TemporaryDirectory() as tmp:
        base = None
        for name, changes in make_models(Path(tmp)).items():
            config = Config(prompt="a painted toy", steps=args.steps, texture_size=args.texture_size,
                            render_size=args.render_size, device="cpu", **changes)
            start = time.perf_counter()
            guidance = load_guidance(config)
            load = time.perf_counter() - start
            result = texture_mesh(MESH, config=config, guidance=guidance, progress=False)
            per_step = result.timings["optimize"] / args.steps
            base = base or per_step
            rows.append((name, guidance.info.family, f"{load:.2f}", f"{per_step:.3f}", f"{per_step / base:.2f}x"))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    print(f"steps {args.steps}, texture {args.texture_size}, render {args.render_size}, "
          f"{args.threads} thread(s), mesh {MESH.name}")
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)))


if __name__ == "__main__":
    main()
