"""Per-part prompts: which prompt paints which faces, and the per-pixel composition of their
classifier scores (regional guidance).

Every part prompt k gets its own view-dependent embeddings. The guidance predicts the noise for
all K prompts and the shared negative and empty prompts in ONE batched UNet call, and composes
the conditional predictions per latent pixel:

    eps_cond = sum_k m_k * eps(x_t; prompt_k),   sum_k m_k = 1

m (B, K, h, w) are the render's part masks (part id per pixel from the rasterizer's triangle
ids), area-downsampled to latent size, blurred slightly so part borders blend, and
renormalised. The negative and empty terms are shared, so this equals composing the K full
CSD gradients with the same masks.
"""
from __future__ import annotations

from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import TYPE_CHECKING

import kornia
import numpy as np
import torch
import torch.nn.functional as F

from ..datatypes import MeshData, PromptEmbeds
from ..errors import ConfigError

if TYPE_CHECKING:
    from .csd import CSDGuidance

BORDER_SIGMA = 0.6  # latent cells: the blur that softens part borders (a latent cell is 8 pixels for SD)
_EMPTY = 1e-6  # latent cells with less part weight than this (background) get every prompt equally


@dataclass(frozen=True)
class PartPrompts:
    """Which prompt paints which face: `prompts` (K,) texts, each used by some face (the main
    prompt first when it paints any); `face_prompt` (F,) int64 index into `prompts`."""

    prompts: tuple[str, ...]
    face_prompt: np.ndarray

    @property
    def count(self) -> int:
        return len(self.prompts)


def assign_parts(mesh: MeshData, prompt: str, parts: tuple[tuple[str, str], ...]) -> PartPrompts:
    """Each face gets the prompt of the first (pattern, prompt) of `parts` whose glob matches its
    material or node name, else the main `prompt`. ConfigError naming the available material and
    node names when a pattern matches no face's (checked before any model loads)."""
    faces = mesh.num_faces
    if not parts:
        return PartPrompts((prompt,), np.zeros(faces, np.int64))
    labels = mesh.part_labels if mesh.face_parts is not None else ()
    face_parts = mesh.face_parts if mesh.face_parts is not None else np.zeros(faces, np.int64)
    label_prompt = np.zeros(max(len(labels), 1), np.int64)
    matched = set()
    for index, (material, node) in enumerate(labels):
        for k, (pattern, _) in enumerate(parts):
            if fnmatchcase(material, pattern) or fnmatchcase(node, pattern):
                matched.add(k)
                if not label_prompt[index]:
                    label_prompt[index] = k + 1
    missing = [pattern for k, (pattern, _) in enumerate(parts) if k not in matched]
    if missing:
        materials = sorted({m for m, _ in labels})
        nodes = sorted({n for _, n in labels})
        raise ConfigError(f"{mesh.name}: part pattern(s) {', '.join(map(repr, missing))} match no material or node; "
                          f"materials: {', '.join(materials) or '(none)'}; nodes: {', '.join(nodes) or '(none)'}")
    every = (prompt, *(text for _, text in parts))
    face_prompt = label_prompt[face_parts]
    used, face_prompt = np.unique(face_prompt, return_inverse=True)  # drop prompts that paint no face
    return PartPrompts(tuple(every[i] for i in used), face_prompt.reshape(-1).astype(np.int64))


def encode_part_prompts(guidance: CSDGuidance, prompts: tuple[str, ...], negative_prompt: str,
                        view_dependent: bool) -> PromptEmbeds:
    """PromptEmbeds for K prompts: cond (K, N_views, L, D), each part with its own view suffixes;
    one prompt gives the plain (N_views, L, D) embeddings."""
    first = guidance.encode_prompts(prompts[0], negative_prompt, view_dependent)
    if len(prompts) == 1:
        return first
    conds = [first.cond] + [guidance.encode_prompts(p, negative_prompt, view_dependent).cond for p in prompts[1:]]
    return PromptEmbeds(cond=torch.stack(conds), negative=first.negative, null=first.null)


def pixel_parts(triangle_id: torch.Tensor, face_prompt: torch.Tensor) -> torch.Tensor:
    """(B, H, W) int64 prompt index of each pixel from the rasterizer's triangle ids (-1 stays -1)."""
    return torch.where(triangle_id >= 0, face_prompt[triangle_id.clamp(min=0)], -1)


def latent_masks(parts: torch.Tensor, count: int, size: tuple[int, int]) -> torch.Tensor:
    """(B, count, h, w) weights summing to 1 per latent cell, from (B, H, W) prompt indices (-1 =
    background): one-hot masks area-downsampled to `size`, blurred by BORDER_SIGMA cells and
    renormalised; cells without any part (far background) weigh every prompt equally."""
    one_hot = F.one_hot(parts.clamp(min=0), count).float() * (parts >= 0)[..., None].float()
    area = F.interpolate(one_hot.permute(0, 3, 1, 2), size=tuple(size), mode="area")
    soft = kornia.filters.gaussian_blur2d(area, (3, 3), (BORDER_SIGMA, BORDER_SIGMA), border_type="replicate")
    total = soft.sum(1, keepdim=True)
    return torch.where(total > _EMPTY, soft / total.clamp(min=_EMPTY), torch.full_like(soft, 1.0 / count))


def compose_scores(eps: list[torch.Tensor], masks: torch.Tensor) -> torch.Tensor:
    """sum_k masks[:, k] * eps[k]: K (B, C, h, w) noise predictions composed by (B, K, h, w) masks."""
    return (torch.stack(eps, 1) * masks[:, :, None].to(eps[0])).sum(1)


__all__ = ["PartPrompts", "assign_parts", "compose_scores", "encode_part_prompts", "latent_masks", "pixel_parts"]
