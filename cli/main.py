"""`csd-texture`: the command-line front end. It only parses arguments; csd_texture does the work."""
from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any, Callable

import click

from csd_texture.config import PRESETS, TEXTURES, Config, Schedule, default_model, load_config, preset
from csd_texture.errors import CSDTextureError
from csd_texture.version import __version__

log = logging.getLogger("csd_texture")


class DefaultCommandGroup(click.Group):
    """A group whose `texture` command runs when the first argument is not a subcommand, so
    `csd-texture MESH PROMPT -o OUT` and `csd-texture doctor` both work."""

    default_command = "texture"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("--help", "-h", "--version"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def setup_logging(quiet: bool, verbose: bool) -> None:
    """Our logs on stderr; third-party chatter (diffusers/transformers bars and notices) silenced."""
    level = logging.DEBUG if verbose else logging.WARNING if quiet else logging.INFO
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr, force=True)
    logging.getLogger("csd_texture").setLevel(level)
    try:
        import diffusers
        import transformers

        for lib in (diffusers, transformers):
            lib.utils.logging.set_verbosity_error()
            lib.utils.logging.disable_progress_bar()
    except ImportError:
        pass


def run_safely(verbose: bool, action: Callable[[], int | None]) -> None:
    """Run `action`; turn our errors into one line on stderr and the right exit code."""
    try:
        code = action() or 0
    except CSDTextureError as exc:
        if verbose:
            log.exception("failed")
        click.echo(f"error: {exc}", err=True)
        code = exc.exit_code
    except KeyboardInterrupt:
        click.echo("interrupted", err=True)
        code = 130
    except Exception as exc:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if verbose:
            log.exception("unexpected failure")
        click.echo(f"error: unexpected failure: {type(exc).__name__}: {exc} (run with --verbose for details)",
                   err=True)
        code = 1
    sys.exit(code)


def common_options(func: Callable) -> Callable:
    """--quiet/--verbose shared by every command."""
    func = click.option("--verbose", is_flag=True, help="Debug logs and full tracebacks on errors.")(func)
    return click.option("--quiet", "-q", is_flag=True, help="No progress bars; warnings and errors only.")(func)


def settings_options(func: Callable) -> Callable:
    """The options that map onto Config fields (shared by texture and batch)."""
    options = [
        click.option("--model", help=f"Stable Diffusion 1.x/2.x or SDXL: diffusers folder, hub id or single-file "
                     f".safetensors [default: $CSD_TEXTURE_MODEL or {default_model()}]."),
        click.option("--model-revision", help="Pin a hub revision (branch, tag or commit) of --model."),
        click.option("--model-family", type=click.Choice(["sd1", "sd2", "sdxl"]),
                     help="Family of a single-file --model checkpoint [default: detected from its keys]."),
        click.option("--model-config", help="Diffusers folder or hub id whose configs describe a single-file "
                     "--model [default: the family's reference model: SD 1.5, SD 2.1-base, SDXL base]."),
        click.option("--lora", "loras", multiple=True, metavar="PATH[:SCALE]",
                     help="LoRA weights (.safetensors file, folder or hub id) at SCALE [default: 1]; repeatable."),
        click.option("--controlnet", metavar="depth|normal[=ID_OR_FOLDER]",
                     help="Condition the guidance on the rendered depth or normals through a ControlNet "
                          "[default: off; the ControlNet matching the model's family unless given]."),
        click.option("--preset", type=click.Choice(list(PRESETS)), default="balanced", show_default=True,
                     help="Steps, sizes and schedules chosen together."),
        click.option("--config", "config_file", type=click.Path(dir_okay=False, path_type=Path),
                     help="Settings from a YAML or JSON file (options given here override it)."),
        click.option("--steps", type=click.IntRange(min=0), help="Optimisation steps."),
        click.option("--texture-size", type=click.IntRange(min=8), help="Square UV texture size [default: 1024]."),
        click.option("--render-size", type=click.IntRange(min=8), help="Rendered view size [default: 512]."),
        click.option("--views-per-step", type=click.IntRange(min=1), help="Views rendered per step."),
        click.option("--seed", type=int, help="Random seed; the same seed, inputs and device give the same output."),
        click.option("--negative-prompt", help="What to keep out of the texture (annealed CSD negative prompt) "
                     "[default: \"oversaturated color, ugly, tiling, low quality, noisy\"; \"\" turns it off]."),
        click.option("--guidance", type=click.Choice(["csd", "sds"]), help="Guidance: CSD (default) or SDS."),
        click.option("--guidance-scale", type=float, help="Weight of the classifier score (s_cond) [default: 1]."),
        click.option("--negative-weight", help="Negative prompt weight START,END over the run [default: 1,0.5]."),
        click.option("--learning-rate", type=float, help="Adam learning rate."),
        click.option("--texture", "texture_kind", type=click.Choice(list(TEXTURES)),
                     help="Learnable texture: hybrid-field (3D grids over the surface + UV detail + a global albedo "
                          "field, so views agree on one pattern, e.g. periodic stripes; seamless; default), hybrid "
                          "(the same without the field), image (the old UV pyramid) or field (neural field)."),
        click.option("--normal-map/--no-normal-map", default=None,
                     help="Also optimise a bump map, written as a tangent-space normal map (glTF normalTexture "
                          "with tangents; OBJ `norm`) [default: off]."),
        click.option("--lighting", type=click.Choice(["environment", "directional"]),
                     help="Light for optimisation and previews: HDR environments (default) or the old directional light."),
        click.option("--roughness", metavar="V|LO,HI", help="Pin roughness to V or bound it to LO,HI [default: 0.08,1]."),
        click.option("--metallic", metavar="V|LO,HI", help="Pin metallic to V (e.g. 0) or bound it to LO,HI [default: 0,1]."),
        click.option("--material-prior", type=click.FloatRange(0.0, 10.0),
                     help="How hard roughness and metallic are pulled back to a neutral start each step: 0 lets "
                          "the prompt move them freely (more drift where it names no material), higher holds "
                          "them [default: 1]."),
        click.option("--view-prompts", type=click.Choice(["auto", "off"]),
                     help="Append ', front view' etc. by camera (auto, default) or use the prompt as given (off)."),
        click.option("--device", help="auto, cpu, cuda or cuda:N [default: auto]."),
        click.option("--renderer", type=click.Choice(["auto", "torch", "nvdiffrast"]),
                     help="Rasterizer backend [default: auto: nvdiffrast on CUDA, else torch]."),
        click.option("--keep-uv", is_flag=True, default=None, help="Use the mesh's own UVs when valid instead of xatlas."),
        click.option("--atlas", type=click.Choice(["per-material", "shared"]),
                     help="glTF inputs: maps for each material (default) or one atlas shared by all."),
        click.option("--materials", "material_patterns",
                     help="glTF inputs: texture only the materials whose names match these globs (NAME,...)."),
        click.option("--skip-materials", help="glTF inputs: leave materials matching these globs (NAME,...) as they are."),
        click.option("--up-axis", type=click.Choice(["x", "y", "z", "-x", "-y", "-z"]),
                     help="Which way is up for view-dependent prompts [default: from the format]."),
        click.option("--map-bits", type=click.Choice(["8", "16"]), help="Bit depth of --save-maps PNGs."),
        click.option("--timestep-range", help="Diffusion timesteps as fractions: LOW,HIGH or LOW,HIGH_START,HIGH_END "
                     "(the top of the range falls over the run) [default: 0.02,0.98,0.5]."),
        click.option("--edit", is_flag=True, default=None,
                     help="Edit the mesh's existing base colour texture (on its own UVs) instead of starting "
                          "blank; runs half the steps (of --steps or the preset)."),
        click.option("--source-prompt", help="With --edit: what the existing texture shows (kept out as the "
                     "negative prompt)."),
        click.option("--edit-strength", type=click.FloatRange(0.0, 1.0),
                     help="With --edit: 0 stays close to the original, 1 changes freely [default: 0.5]."),
        click.option("--part", "parts", multiple=True, metavar="PATTERN=PROMPT",
                     help="Paint the faces whose material or node name matches the glob PATTERN with PROMPT "
                          "(the main prompt paints the rest; the first matching --part wins); repeatable."),
        click.option("--region", metavar="MASK.png",
                     help="With --edit: repaint only where this UV-space greyscale mask (the source texture's "
                          "size) is white; texels where it is black stay exactly as they are."),
        click.option("--region-materials", metavar="NAME,...",
                     help="With --edit: repaint only the faces of these materials (globs)."),
        click.option("--region-nodes", metavar="NAME,...",
                     help="With --edit: repaint only the faces of these nodes (globs)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def build_config(config_file: Path | None, preset_name: str, options: dict[str, Any]) -> Config:
    """Preset, then config file, then command-line options."""
    config = load_config(config_file) if config_file else preset(preset_name)
    if config_file and preset_name != "balanced":
        config = config.updated(**PRESETS[preset_name])
    changes = {
        "prompt": options.get("prompt"),
        "negative_prompt": options.get("negative_prompt"),
        "model": options.get("model"),
        "model_revision": options.get("model_revision"),
        "model_family": options.get("model_family"),
        "model_config": options.get("model_config"),
        "loras": tuple(options["loras"]) if options.get("loras") else None,
        "controlnet": options.get("controlnet"),
        "steps": options.get("steps"),
        "texture_size": options.get("texture_size"),
        "render_size": options.get("render_size"),
        "views_per_step": options.get("views_per_step"),
        "seed": options.get("seed"),
        "guidance": options.get("guidance"),
        "guidance_scale": options.get("guidance_scale"),
        "learning_rate": options.get("learning_rate"),
        "texture": options.get("texture_kind"),
        "normal_map": options.get("normal_map"),
        "lighting": options.get("lighting"),
        "roughness": options.get("roughness"),
        "metallic": options.get("metallic"),
        "material_prior": options.get("material_prior"),
        "view_prompts": options.get("view_prompts"),
        "device": options.get("device"),
        "renderer": options.get("renderer"),
        "keep_uv": options.get("keep_uv"),
        "up_axis": options.get("up_axis"),
        "atlas": options.get("atlas"),
        "materials": _patterns(options.get("material_patterns")),
        "skip_materials": _patterns(options.get("skip_materials")),
        "map_bits": int(options["map_bits"]) if options.get("map_bits") else None,
        "parts": tuple(options["parts"]) if options.get("parts") else None,
        "region": options.get("region"),
        "region_materials": _patterns(options.get("region_materials")),
        "region_nodes": _patterns(options.get("region_nodes")),
    }
    if options.get("negative_weight"):
        changes["negative_weight"] = Schedule.parse(options["negative_weight"])
    if options.get("timestep_range"):
        changes["timestep_min"], changes["timestep_max"] = parse_timestep_range(options["timestep_range"])
    if options.get("edit"):
        changes.update(edit=True, source_prompt=options.get("source_prompt"), edit_strength=options.get("edit_strength"))
    return config.updated(**changes)


def _patterns(text: str | None) -> tuple[str, ...] | None:
    """`NAME,NAME*` -> ("NAME", "NAME*"); None when not given."""
    return None if text is None else tuple(p.strip() for p in text.split(",") if p.strip())


def parse_timestep_range(text: str) -> tuple[Schedule, Schedule]:
    """`LOW,HIGH` or `LOW,HIGH_START,HIGH_END` -> (timestep_min, timestep_max) schedules."""
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        values = []
    if len(values) not in (2, 3):
        raise click.BadParameter(f"{text!r}: expected LOW,HIGH or LOW,HIGH_START,HIGH_END", param_hint="--timestep-range")
    return Schedule(values[0], values[0]), Schedule(values[1], values[-1])


@click.group(cls=DefaultCommandGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="csd-texture")
def main() -> None:
    """Paint a PBR texture onto a mesh from a text prompt (Classifier Score Distillation).

    \b
    Examples:
      csd-texture chair.obj "a wooden chair" -o chair.glb
      csd-texture chair.obj "a wooden chair" -o chair.glb --model ./sd21-base --save-maps maps/
      csd-texture doctor          check the install (GPU, nvdiffrast, model, a tiny run)
      csd-texture info chair.glb  show how an output was made
    """


@main.command()
@click.argument("mesh", type=click.Path(path_type=Path))
@click.argument("prompt")
@click.option("--output", "-o", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Output file: .glb (embedded), .gltf (+.bin and PNGs) or .obj (+.mtl and PNGs).")
@click.option("--save-maps", type=click.Path(file_okay=False, path_type=Path),
              help="Also write basecolor/roughness/metallic/orm (and normal, with --normal-map) PNG maps into this folder.")
@click.option("--preview", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a PNG contact sheet: 8 views around the mesh, lit and albedo only.")
@click.option("--turntable", type=click.Path(dir_okay=False, path_type=Path),
              help="Also write a turntable animation: .gif, or .mp4 (needs `pip install imageio-ffmpeg`).")
@settings_options
@common_options
def texture(mesh: Path, prompt: str, output: Path, save_maps: Path | None, preview: Path | None,
            turntable: Path | None, config_file: Path | None, preset: str, quiet: bool, verbose: bool,
            **options: Any) -> None:
    """Texture MESH (OBJ, glTF/GLB, PLY, STL, OFF) towards PROMPT and write --output."""
    setup_logging(quiet, verbose)

    def action() -> None:
        from csd_texture.api import texture_mesh
        from csd_texture.export import save_maps as write_maps
        from csd_texture.preview import check_preview_paths, write_previews

        config = build_config(config_file, preset, {**options, "prompt": prompt})
        check_preview_paths(preview, turntable)  # e.g. .mp4 without its encoder: say so before the run
        result = texture_mesh(mesh, output=output, config=config, progress=not quiet)
        if save_maps is not None:
            save_maps.mkdir(parents=True, exist_ok=True)
            write_maps(result.maps, save_maps, bits=config.map_bits)
        write_previews(result.mesh, result.maps, preview, turntable, config.renderer, config.device)
        log.info("done in %.1f s (%s)", sum(result.timings.values()),
                 ", ".join(f"{k} {v:.1f} s" for k, v in result.timings.items()))

    run_safely(verbose, action)


@main.command()
@click.argument("path", type=click.Path(path_type=Path))
@common_options
def info(path: Path, quiet: bool, verbose: bool) -> None:
    """Print the record of how an output (.glb, .gltf, .obj) was made."""
    setup_logging(quiet, verbose)

    def action() -> None:
        from csd_texture.export import read_metadata

        click.echo(json.dumps(read_metadata(path), indent=2, sort_keys=False))

    run_safely(verbose, action)


@main.command()
@click.option("--model", help="Also check that this model (repo id or folder) is available locally.")
@click.option("--device", default="auto", show_default=True, help="Device for the trial run.")
@common_options
def doctor(model: str | None, device: str, quiet: bool, verbose: bool) -> None:
    """Check the install: torch and CUDA, nvdiffrast, the model, and a tiny real run."""
    setup_logging(quiet, verbose)

    def action() -> int:
        from csd_texture.doctor import run_checks

        checks = run_checks(model or default_model(), device)
        for check in checks:
            click.echo(f"[{'ok' if check.ok else 'FAIL' if check.required else 'warn'}] {check.name}: {check.detail}")
        failed = [c.name for c in checks if c.required and not c.ok]
        click.echo("verdict: " + (f"broken ({', '.join(failed)})" if failed else "ready"))
        return 1 if failed else 0

    run_safely(verbose, action)


@main.command()
@click.argument("source", metavar="INPUT", type=click.Path(path_type=Path))
@click.option("--output-dir", "-o", required=True, type=click.Path(file_okay=False, path_type=Path),
              help="Output folder; mirrors INPUT's tree and gets report.json.")
@click.option("--prompt", help="Prompt for meshes without their own (a prompt.txt beside the mesh, or the "
              "manifest's prompt column).")
@click.option("--format", "output_format", type=click.Choice(["glb", "gltf", "obj"]), default="glb",
              show_default=True, help="Output format.")
@click.option("--force", is_flag=True, help="Redo assets whose output is up to date.")
@click.option("--workers", type=click.IntRange(min=1),
              help="Worker processes, each loading the model once [default: 1, or one per --devices GPU; "
                   "with --ray: one per GPU of the cluster, or per CPU with --device cpu].")
@click.option("--devices", callback=lambda ctx, param, value: parse_devices(value),
              help="GPUs for local workers, one worker each: e.g. 0,1,2,3.")
@click.option("--ray", "ray_address", is_flag=False, flag_value="local", default=None, metavar="[ADDRESS]",
              help="Run on Ray: a new local instance, or the cluster at ADDRESS (auto, HOST:PORT, "
                   "ray://HOST:10001). Put --ray last or write --ray=ADDRESS.")
@settings_options
@common_options
def batch(source: Path, output_dir: Path, prompt: str | None, output_format: str, force: bool,
          workers: int | None, devices: list[int] | None, ray_address: str | None, config_file: Path | None,
          preset: str, quiet: bool, verbose: bool, **options: Any) -> None:
    """Texture every mesh of INPUT into --output-dir; prints a table and writes report.json.

    \b
    INPUT is a folder (every mesh inside, recursively; prompts from --prompt or a prompt.txt
    beside the mesh) or a manifest: .csv or .jsonl with columns mesh, prompt and optional
    negative_prompt, seed, output and any setting (texture_size, steps, ...).
    Re-running skips assets whose output is up to date (--force redoes them).
    Exit code: 0 when every asset succeeded or was up to date, 1 when any failed.
    """
    setup_logging(quiet, verbose)

    def action() -> int:
        from tqdm.contrib.logging import logging_redirect_tqdm

        from csd_texture.batch import REPORT_NAME, discover_items, format_table, import_ray, texture_many

        if ray_address is not None:
            import_ray()
        config = build_config(config_file, preset, options)
        items = discover_items(source, output_dir, prompt, config=config, output_format=output_format)
        results = {}
        try:
            with logging_redirect_tqdm():
                for result in texture_many(items, output_dir, force=force, workers=workers,
                                           devices=devices, ray=ray_address or False,
                                           progress=not quiet):
                    results[result.output] = result
        finally:
            if results:
                click.echo(format_table(results[str(i.output)] for i in items if str(i.output) in results))
        counts = {s: sum(r.status == s for r in results.values()) for s in ("succeeded", "skipped", "failed")}
        click.echo(", ".join(f"{n} {s}" for s, n in counts.items()) + f"; report: {output_dir / REPORT_NAME}")
        return 1 if counts["failed"] else 0

    run_safely(verbose, action)


def parse_devices(text: str | None) -> list[int] | None:
    """`0,1,2` -> [0, 1, 2] (GPU indices for `batch --devices`)."""
    if not text:
        return None
    try:
        return [int(d) for d in text.split(",") if d.strip()]
    except ValueError:
        raise click.BadParameter(f"{text!r}: expected GPU numbers like 0,1,2,3", param_hint="--devices") from None


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; 0.0.0.0 exposes the server to the network (no authentication).")
@click.option("--port", default=8765, show_default=True, type=click.IntRange(0, 65535), help="Port to listen on.")
@click.option("--model", help=f"Model for every job [default: $CSD_TEXTURE_MODEL or {default_model()}].")
@click.option("--preset", type=click.Choice(list(PRESETS)), default="balanced", show_default=True,
              help="Default settings of jobs (a job's own settings override them).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--workers", default=1, show_default=True, type=click.IntRange(min=1),
              help="Jobs run at once, each with its own copy of the model (one per GPU).")
@click.option("--max-upload-mb", default=200, show_default=True, type=click.IntRange(min=1),
              help="Largest upload (and largest unpacked zip) accepted.")
@click.option("--data-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Where jobs are kept [default: ~/.cache/csd-texture/serve].")
@common_options
def serve(host: str, port: int, model: str | None, preset: str, device: str, workers: int, max_upload_mb: int,
          data_dir: Path | None, quiet: bool, verbose: bool) -> None:
    """Run the local web app: a page at http://HOST:PORT/ and an HTTP API (/api/jobs)."""
    setup_logging(quiet, verbose)

    def action() -> None:
        from csd_texture.config import preset as preset_config
        from csd_texture.serve import run_server

        run_server(preset_config(preset, model=model, device=device), host=host, port=port, workers=workers,
                   max_upload_mb=max_upload_mb, data_dir=data_dir)

    run_safely(verbose, action)


@main.command("blender-addon")
@click.option("--output", "-o", default="csd_texture_blender.zip", show_default=True,
              type=click.Path(dir_okay=False, path_type=Path), help="Where to write the add-on zip.")
@common_options
def blender_addon(output: Path, quiet: bool, verbose: bool) -> None:
    """Write the Blender add-on (3.4 and 4.x) as a zip to install in Blender's preferences."""
    setup_logging(quiet, verbose)

    def action() -> None:
        from csd_texture.blender_addon import write_addon_zip
        from csd_texture.errors import ExportError

        if not output.parent.is_dir():
            raise ExportError(f"{output}: the output folder {output.parent} does not exist")
        click.echo(f"wrote {write_addon_zip(output)}: install it in Blender with Edit > Preferences > "
                   "Add-ons > Install, enable 'csd-texture', then use the csd-texture tab of the 3D view sidebar")

    run_safely(verbose, action)


if __name__ == "__main__":
    main()
