"""View-dependent prompts: one text per view bucket (front, side, back, overhead)."""
from __future__ import annotations

from ..cameras import VIEW_BUCKETS


def view_prompts(prompt: str) -> list[str]:
    """The prompt with a view suffix for each bucket in VIEW_BUCKETS order."""
    prompt = prompt.strip()
    return [f"{prompt}, {bucket} view" for bucket in VIEW_BUCKETS]
