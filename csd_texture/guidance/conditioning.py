"""Text conditioning per model family: prompts -> one embedding tensor per prompt -> UNet inputs.

SD 1.x/2.x: the text encoder's last hidden state, (N, L, D).
SDXL: both text encoders' penultimate hidden states side by side (N, L, D1 + D2), the second
encoder's pooled projection (N, P) and `time_ids` (original size, crop corner, target size).

The guidance indexes, expands and concatenates embeddings per view and prompt branch, so each
prompt is kept as ONE tensor: for SDXL the pooled vector rides along as an extra last row
(zero-padded to the row width), split off again in `unet_kwargs`. That keeps `PromptEmbeds`
and the gradient code the same for every family.
"""
from __future__ import annotations

import torch


class TextConditioning:
    """Encodes prompts for one UNet and turns encoded prompts back into UNet keyword arguments."""

    def __init__(self, text_encoders: list[torch.nn.Module], tokenizers: list, unet_config, image_size: int,
                 device: torch.device, dtype: torch.dtype, zero_empty_prompt: bool = False) -> None:
        """`text_encoders`/`tokenizers`: one (SD) or two (SDXL, the second with a projection).
        `zero_empty_prompt`: SDXL's `force_zeros_for_empty_prompt` (the empty prompt is all zeros)."""
        self.text_encoders, self.tokenizers = text_encoders, tokenizers
        self.device, self.dtype = device, dtype
        self.pooled = getattr(unet_config, "addition_embed_type", None) == "text_time"
        self.pooled_dim = int(text_encoders[-1].config.projection_dim) if self.pooled else 0
        self.image_size = image_size
        self.zero_empty_prompt = zero_empty_prompt and self.pooled

    def cut_off(self, text: str) -> str | None:
        """The part of `text` the first tokenizer truncates away (the model never reads it), or None
        when the whole text fits in its `model_max_length` tokens (start and end tokens included)."""
        tokenizer = self.tokenizers[0]
        ids = tokenizer(text, truncation=False, verbose=False).input_ids
        limit = tokenizer.model_max_length
        if len(ids) <= limit:
            return None
        return tokenizer.decode(ids[limit - 1:-1], skip_special_tokens=True).strip() or "(end token)"

    @torch.no_grad()
    def encode(self, texts: list[str]) -> torch.Tensor:
        """(N, L, D) embeddings for SD; (N, L + 1, max(D, P)) with the pooled row last for SDXL."""
        if not self.pooled:
            return self._hidden(0, texts, penultimate=False)[0].to(self.dtype)
        hidden = torch.cat([self._hidden(i, texts, penultimate=True)[0] for i in range(len(self.text_encoders))], -1)
        pooled = self._hidden(len(self.text_encoders) - 1, texts, penultimate=True)[1]
        width = max(hidden.shape[-1], pooled.shape[-1])
        packed = torch.zeros(len(texts), hidden.shape[1] + 1, width, device=self.device)
        packed[:, :-1, :hidden.shape[-1]] = hidden
        packed[:, -1, :pooled.shape[-1]] = pooled
        if self.zero_empty_prompt:
            packed[[i for i, t in enumerate(texts) if not t.strip()]] = 0.0
        return packed.to(self.dtype)

    def _hidden(self, index: int, texts: list[str], penultimate: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Encoder `index`'s (N, L, D) hidden states (last or penultimate layer) and its first output
        (the pooled projection for a CLIPTextModelWithProjection)."""
        tokenizer = self.tokenizers[index]
        ids = tokenizer(texts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                        return_tensors="pt").input_ids.to(self.device)
        out = self.text_encoders[index](ids, output_hidden_states=penultimate)
        hidden = out.hidden_states[-2] if penultimate else out[0]
        return hidden.float(), out[0].float()

    def unet_kwargs(self, embeds: torch.Tensor) -> dict:
        """UNet (and ControlNet) keyword arguments for a (B, L[+1], W) batch of encoded prompts."""
        if not self.pooled:
            return {"encoder_hidden_states": embeds}
        hidden_dim = self.text_encoders[0].config.hidden_size + self.text_encoders[-1].config.hidden_size
        size = float(self.image_size)
        time_ids = torch.tensor([size, size, 0.0, 0.0, size, size], device=embeds.device, dtype=embeds.dtype)
        return {
            "encoder_hidden_states": embeds[:, :-1, :hidden_dim],
            "added_cond_kwargs": {"text_embeds": embeds[:, -1, :self.pooled_dim],
                                  "time_ids": time_ids.expand(embeds.shape[0], -1)},
        }
