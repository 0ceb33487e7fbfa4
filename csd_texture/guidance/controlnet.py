"""`--controlnet depth|normal[=ID_OR_FOLDER]`: condition every UNet call on the depth or normal
image the project's renderer drew for the same view, so the classifier score sees the shape.

Control images (B, 3, H, W) in [0, 1]:
  depth:  inverse-depth style like the MiDaS maps depth ControlNets were trained on: nearest
          covered point 1, farthest 0.1, background 0 (normalised per view).
  normal: camera-space unit normals in the convention of the NormalBae maps the normal ControlNets
          were trained on: red = left, green = up, blue = towards the camera, RGB = n * 0.5 + 0.5;
          background (0.5, 0.5, 1), a surface facing the camera.
"""
from __future__ import annotations

import logging

import kornia
import torch

from ..errors import ConfigError, ModelLoadError
from .families import resolve_model_folder

log = logging.getLogger(__name__)

KINDS = ("depth", "normal")
# ControlNets that match each base family (diffusers format); --controlnet KIND=ID_OR_FOLDER picks another.
DEFAULT_CONTROLNETS = {
    ("sd1", "depth"): "lllyasviel/control_v11f1p_sd15_depth",
    ("sd1", "normal"): "lllyasviel/control_v11p_sd15_normalbae",
    ("sd2", "depth"): "thibaud/controlnet-sd21-depth-diffusers",
    ("sd2", "normal"): "thibaud/controlnet-sd21-normalbae-diffusers",
    ("sdxl", "depth"): "diffusers/controlnet-depth-sdxl-1.0",
}
CONTROLNET_FILES = ["config.json", "diffusion_pytorch_model.safetensors"]


def parse_spec(text: str) -> tuple[str, str | None]:
    """`depth`, `normal`, `depth=ID_OR_FOLDER` -> (kind, source or None for the family default)."""
    kind, _, source = text.partition("=")
    kind = kind.strip().lower()
    if kind not in KINDS:
        raise ConfigError(f"--controlnet {text!r}: expected depth or normal, optionally =ID_OR_FOLDER")
    return kind, source.strip() or None


def control_images(kind: str, depth: torch.Tensor, normal: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) control images from the renderer's (B, H, W, 1) depth, (B, H, W, 3) camera-space
    normals and (B, H, W, 1) coverage."""
    if kind == "depth":
        covered = mask > 0.5
        far = torch.where(covered, depth, torch.full_like(depth, -torch.inf)).amax(dim=(1, 2, 3), keepdim=True)
        near = torch.where(covered, depth, torch.full_like(depth, torch.inf)).amin(dim=(1, 2, 3), keepdim=True)
        closeness = (far - depth) / (far - near).clamp(min=1e-6)
        image = torch.where(covered, 0.1 + 0.9 * closeness, torch.zeros_like(depth)).expand(-1, -1, -1, 3)
    else:
        flat = torch.tensor([0.5, 0.5, 1.0], device=normal.device, dtype=normal.dtype)
        bae = normal * torch.tensor([-1.0, 1.0, 1.0], device=normal.device, dtype=normal.dtype)  # x: right -> left
        image = mask * (bae * 0.5 + 0.5) + (1 - mask) * flat
    return image.permute(0, 3, 1, 2).contiguous().detach()


class GeometryControl:
    """A ControlNet and which rendered image (depth or normal) it is given."""

    def __init__(self, model: torch.nn.Module, kind: str, source: str, scale: float = 1.0) -> None:
        self.model, self.kind, self.source, self.scale = model, kind, source, scale

    def residuals(self, latents: torch.Tensor, timesteps: torch.Tensor, unet_kwargs: dict,
                  images: torch.Tensor, image_size: int) -> dict:
        """UNet keyword arguments adding the ControlNet residuals for (N, 3, H, W) control images
        (resized to the model's image size, cast to its dtype)."""
        if images.shape[-1] != image_size:
            images = kornia.geometry.transform.resize(images, (image_size, image_size), antialias=True)
        down, mid = self.model(latents, timesteps, controlnet_cond=images.to(latents.dtype),
                               conditioning_scale=self.scale, return_dict=False, **unet_kwargs)
        return {"down_block_additional_residuals": down, "mid_block_additional_residual": mid}


def load_controlnet(spec: str, family: str, dtype: torch.dtype) -> GeometryControl:
    """The ControlNet named by `spec` (or the one matching `family`), loaded in `dtype`."""
    from diffusers import ControlNetModel

    kind, source = parse_spec(spec)
    source = source or DEFAULT_CONTROLNETS.get((family, kind))
    if source is None:
        raise ConfigError(f"--controlnet {kind}: there is no standard {kind} ControlNet for {family}; "
                          f"pass one with --controlnet {kind}=ID_OR_FOLDER")
    try:
        folder = resolve_model_folder(source, None, CONTROLNET_FILES)
    except ModelLoadError as exc:
        reason = str(exc).split(": ", 1)[-1].split(". Download")[0].split("; pass")[0]
        raise ModelLoadError(f"cannot load the {kind} ControlNet {source!r}: {reason}; download it where you have "
                             f"internet (`hf download {source} --local-dir DIR`) and pass --controlnet {kind}=DIR") from None
    try:
        model = ControlNetModel.from_pretrained(folder, torch_dtype=dtype)
    except Exception as exc:  # noqa: BLE001 - missing files and format errors all mean "cannot load"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load ControlNet {source}: {text[:200]}") from None
    log.info("ControlNet %s: %s", kind, source)
    return GeometryControl(model, kind, source)
