"""The composition root: mesh in, textured mesh out. The CLI and batch mode call these."""
from __future__ import annotations

import logging
import platform
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import trimesh

from .bake import bake_maps
from .config import Config, edit_settings
from .datatypes import MeshData, PBRMaps, StepRecord
from .devices import resolve_device
from .errors import ConfigError, ExportError, MeshValidationError
from .export import SUPPORTED_SUFFIXES, check_not_overwriting, export_textured_mesh, scene_record
from .guidance.csd import CSDGuidance
from .guidance.regional import assign_parts, encode_part_prompts
from .mesh_io import load_mesh
from .mesh_io.scene import SceneUV, flatten_for_optimiser, load_scene
from .optimize import CSDObjective, Objective, optimize
from .render import get_rasterizer
from .regions import RegionTexture, composite_region, edit_region
from .render.views import Surface
from .texture import MaterialRange, make_texture
from .render.shading import srgb_to_linear
from .uv import prepare_uv, scene_uv, uv_problem
from .version import __version__

log = logging.getLogger(__name__)
MeshSource = str | Path | trimesh.Trimesh | trimesh.Scene


@dataclass
class TextureResult:
    """What texture_mesh returns: the mesh with UVs, the baked maps, where it was written,
    the config used, per-step history and timings (seconds per stage)."""

    mesh: MeshData
    maps: PBRMaps
    config: Config
    history: list[StepRecord] = field(default_factory=list)
    output_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    scene: SceneUV | None = None  # a glTF input kept whole: its UV layout per source primitive

    def save(self, path: str | Path) -> Path:
        """Write the textured mesh; the extension picks the format (.glb, .gltf, .obj)."""
        self.output_path = export_textured_mesh(self.mesh, self.maps, Path(path), self.metadata, self.scene)
        return self.output_path


@dataclass(frozen=True)
class StepProgress:
    """What texture_mesh's `on_step` gets after each optimisation step: steps done of `total`,
    and `preview(size)`, which bakes the texture as it is now into (size, size) maps (no grad)."""

    step: int
    total: int
    preview: Callable[[int], PBRMaps]


def texture_mesh(mesh: MeshSource, prompt: str | None = None, output: str | Path | None = None, *,
                 config: Config | None = None, guidance: CSDGuidance | None = None,
                 objective: Objective | None = None, progress: bool = True,
                 on_step: Callable[[StepProgress], None] | None = None, **settings: Any) -> TextureResult:
    """Texture `mesh` (a file path or a trimesh object) towards `prompt`.

    Settings are Config fields (steps=..., texture_size=..., ...) or a whole `config`. Pass a
    loaded `guidance` to reuse a model across meshes, or an `objective` to replace CSD.
    `on_step` is called with a StepProgress after every step (an exception it raises stops the run).
    Writes `output` (.glb, .gltf or .obj) when given; returns the maps, mesh, history and record.
    """
    requested = (config or Config()).updated(prompt=prompt, **settings)
    config = edit_settings(requested) if requested.edit else requested
    if not config.prompt.strip() and objective is None:
        raise ConfigError("a prompt is required: describe the texture, e.g. \"a wooden chair\"")
    output = _check_output(output, mesh)
    timings: dict[str, float] = {}
    device = resolve_device(config.device)
    with _timed(timings, "load"):
        data = load_mesh(mesh, up_axis=config.up_axis)
    if config.edit:
        _check_editable(data)
    with _timed(timings, "unwrap"):
        data, scene = _with_uvs(mesh, data, config)
    parts = assign_parts(data, config.prompt, config.parts)  # unknown part names fail here, before the model
    if config.parts and objective is not None:
        log.warning(f"{data.name}: parts apply to the CSD guidance; ignored with a custom objective")
    region = edit_region(config, data, config.pad_texels) if config.edit else None
    if region is not None and config.texture_size != len(region.weight):
        log.info(f"{data.name}: repainting a region bakes at the source texture's size, {len(region.weight)}")
        config = config.updated(texture_size=len(region.weight))  # so kept texels stay one for one
    atlas_size = config.texture_size * (scene.grid if scene is not None else 1)  # a tile per material map
    if objective is None:
        with _timed(timings, "model_load"):
            guidance = guidance or load_guidance(config, device)
            embeds = encode_part_prompts(guidance, parts.prompts, config.negative_prompt, config.view_prompts != "off")
            objective = CSDObjective(guidance, embeds, config, torch.from_numpy(parts.face_prompt))
    torch.manual_seed(config.seed)
    rasterizer = get_rasterizer(config.renderer, device)
    surface = Surface.from_mesh(data, device)
    material = MaterialRange(config.roughness, config.metallic)
    texture = make_texture(config.texture, atlas_size, config.seed, material, config.normal_map).to(device)
    if config.edit:
        texture.initialise_albedo(srgb_to_linear(torch.from_numpy(data.base_color_image)).to(device))
    if region is not None:
        texture = RegionTexture(texture, region.weight)  # paints the region only

    def preview(size: int) -> PBRMaps:
        with torch.no_grad():
            return bake_maps(data, texture, size, rasterizer, max(1, config.pad_texels * size // config.texture_size))

    with _timed(timings, "optimize"), _progress_bar(config.steps, progress) as bar_step:
        def step_done(step: int, loss: torch.Tensor) -> None:
            bar_step(step, loss)
            if on_step is not None:
                on_step(StepProgress(step + 1, config.steps, preview))

        history = optimize(texture, surface, rasterizer, objective, config, data.up_axis, step_done)
    with _timed(timings, "bake"), torch.no_grad():
        maps = bake_maps(data, texture, atlas_size, rasterizer, config.pad_texels)
        if region is not None:
            maps = composite_region(maps, data.base_color_image, region)  # the source's texels outside, exactly
    result = TextureResult(mesh=data, maps=maps, config=config, history=history, timings=timings, scene=scene)
    result.metadata = run_record(requested, timings, device, rasterizer.name)
    if isinstance(objective, CSDObjective) and objective.guidance.info is not None:
        result.metadata["model_loaded"] = objective.guidance.info.describe()  # family, prediction, LoRA, ControlNet
    result.metadata["skipped_steps"] = sum(record.skipped for record in history)  # non-finite steps
    if config != requested:
        result.metadata["effective_settings"] = config.to_dict()
    if isinstance(mesh, (str, Path)):
        result.metadata["input"] = str(mesh)
    if config.parts:
        result.metadata["part_prompts"] = [{"prompt": p, "faces": int((parts.face_prompt == k).sum())}
                                           for k, p in enumerate(parts.prompts)]
    if region is not None:
        result.metadata["region"] = region.record
    if scene is not None:
        result.metadata["asset"] = scene_record(scene)  # what the output keeps and what it re-makes
    if output is not None:
        with _timed(timings, "export"):
            result.save(output)
    return result


def load_guidance(config: Config, device: torch.device | str | None = None) -> CSDGuidance:
    """Load the configured diffusion model once (reuse it across meshes)."""
    device = resolve_device(config.device) if device is None else torch.device(device)
    return CSDGuidance.from_pretrained(config.model, config.model_revision, device, family=config.model_family,
                                       model_config=config.model_config, loras=config.loras,
                                       controlnet=config.controlnet)


def run_record(config: Config, timings: dict[str, float], device: torch.device, renderer: str) -> dict[str, Any]:
    """What made an output: prompt, seed, model, every setting, tool version, timings, device."""
    return {
        "generator": f"csd-texture {__version__}",
        "prompt": config.prompt,
        "negative_prompt": config.negative_prompt,
        "seed": config.seed,
        "model": config.model,
        "model_revision": config.model_revision,
        "steps": config.steps,
        "settings": config.to_dict(),
        "timings_s": timings,
        "device": _device_name(device),
        "renderer": renderer,
        "torch": torch.__version__,
        "python": platform.python_version(),
    }


def _with_uvs(source: MeshSource, data: MeshData, config: Config) -> tuple[MeshData, SceneUV | None]:
    """The mesh the optimiser sees, with UVs. A glTF file is kept whole (`SceneUV`): UVs are made
    per source primitive and the optimiser sees every node instance in the default pose. Other
    inputs (and --edit, which paints over the flattened mesh's own texture) are one flattened mesh."""
    gltf = isinstance(source, (str, Path)) and Path(source).suffix.lower() in (".gltf", ".glb")
    if gltf and not config.edit:
        layout = scene_uv(load_scene(source, config.materials, config.skip_materials), config.keep_uv,
                          config.atlas == "shared", config.texture_size)
        if layout.grid * config.texture_size > 4096:
            log.warning(f"{source}: {len(layout.groups)} material maps of {config.texture_size} texels are optimised"
                        f" as one {layout.grid * config.texture_size}-texel atlas; --atlas shared or a smaller"
                        " --texture-size needs less memory")
        return flatten_for_optimiser(layout, data.name, data.up_axis), layout
    if gltf:
        log.warning(f"{source}: --edit works on the flattened mesh; the output holds one mesh and one material"
                    " (no nodes, skins, animations or morph targets)")
    if config.materials or config.skip_materials or config.atlas != "per-material":
        log.warning(f"{data.name}: --materials, --skip-materials and --atlas apply to glTF inputs only; ignored")
    return prepare_uv(data, keep_uv=config.keep_uv, texture_size=config.texture_size), None


def _check_editable(mesh: MeshData) -> None:
    """Editing starts from the mesh's own base colour image on its own UVs: both must be usable."""
    problem = "it has no base colour texture" if mesh.base_color_image is None else uv_problem(mesh)
    if problem is not None:
        raise MeshValidationError(f"{mesh.name}: cannot edit this mesh's texture: {problem}; "
                                  "texture it without --edit instead")


def _check_output(output: str | Path | None, source: MeshSource) -> Path | None:
    """Refuse an unsupported output format or an output (or companion file) that would overwrite the
    input, before any work."""
    if output is None:
        return None
    output = Path(output)
    if output.suffix.lower() not in SUPPORTED_SUFFIXES:
        raise ConfigError(f"{output}: unsupported output format; use one of {', '.join(SUPPORTED_SUFFIXES)}")
    if isinstance(source, (str, Path)) and Path(source).exists():
        check_not_overwriting(output, [source])
    if not output.parent.exists():
        raise ExportError(f"{output}: the output folder {output.parent} does not exist")
    return output


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return f"cuda ({torch.cuda.get_device_name(device)})"
    return f"cpu ({platform.processor() or platform.machine()})"


@contextmanager
def _timed(timings: dict[str, float], stage: str) -> Iterator[None]:
    start = time.perf_counter()
    try:
        yield
    finally:
        timings[stage] = round(timings.get(stage, 0.0) + time.perf_counter() - start, 4)


@contextmanager
def _progress_bar(total: int, enabled: bool) -> Iterator[Any]:
    """A tqdm bar on stderr (step, loss, elapsed, ETA); yields the per-step callback."""
    from tqdm.auto import tqdm

    bar = tqdm(total=total, desc="texturing", unit="step", disable=not enabled, dynamic_ncols=True)

    def on_step(step: int, loss: torch.Tensor) -> None:
        bar.update(1)
        if enabled and (step % 10 == 0 or step == total - 1):  # reading the loss waits for the device
            bar.set_postfix(loss=f"{float(loss):.4g}", refresh=False)

    try:
        yield on_step
    finally:
        bar.close()


__all__ = ["MeshData", "StepProgress", "TextureResult", "load_guidance", "run_record", "texture_mesh"]
