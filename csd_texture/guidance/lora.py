"""`--lora PATH[:SCALE]`: LoRA weights loaded into the UNet (and the text encoders where the file
has weights for them) through diffusers' own loaders (`load_lora_weights`, `set_adapters`; they need peft)."""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

from ..errors import ConfigError, ModelLoadError
from .families import ModelParts, resolve_model_folder

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraSpec:
    """A LoRA file (or diffusers folder / hub id) and its scale."""

    source: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> "LoraSpec":
        """`PATH` or `PATH:SCALE` (a trailing `:number`; Windows drive letters stay part of the path)."""
        head, sep, tail = text.rpartition(":")
        if sep and head and not tail.startswith(("\\", "/")):
            try:
                return cls(head, float(tail))
            except ValueError:
                raise ConfigError(f"--lora {text!r}: scale {tail!r} is not a number (use PATH or PATH:SCALE)") from None
        return cls(text)

    def __str__(self) -> str:
        return f"{self.source}:{self.scale:g}"


def apply_loras(parts: ModelParts, specs: list[LoraSpec]) -> None:
    """Load each LoRA as its own adapter and activate them all with their scales (in place)."""
    if not specs:
        return
    pipe = parts.pipeline()
    names = []
    for i, spec in enumerate(specs):
        path = _local_path(spec.source)
        name = f"lora{i}"
        try:
            if path.is_file():
                pipe.load_lora_weights(str(path.parent), weight_name=path.name, adapter_name=name)
            else:
                pipe.load_lora_weights(str(path), adapter_name=name)
        except Exception as exc:  # noqa: BLE001 - a wrong or corrupt file, or one for another model family
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelLoadError(f"cannot load LoRA {spec.source} into the {parts.info.family} model: {text[:200]}") from None
        names.append(name)
    pipe.set_adapters(names, [spec.scale for spec in specs])
    log.info("LoRA loaded: %s", ", ".join(str(s) for s in specs))


def _local_path(source: str) -> Path:
    """The LoRA file or folder on disk: `source` itself, or a hub id from the cache or downloaded
    once (safetensors only), failing fast offline like the model."""
    path = Path(source).expanduser()
    if path.exists():
        return path
    if path.suffix or source.startswith((".", "/", "~")) or source.count("/") != 1:
        raise ModelLoadError(f"LoRA {source} does not exist; pass a .safetensors file, a folder or a hub id with --lora")
    try:
        return resolve_model_folder(source, None, ["*.safetensors", "*.json"])
    except ModelLoadError as exc:
        reason = str(exc).split(": ", 1)[-1].split(". Download")[0]
        raise ModelLoadError(f"cannot load LoRA {source!r}: {reason}; download it where you have internet "
                             f"(`hf download {source} --local-dir DIR`) and pass --lora DIR") from None
