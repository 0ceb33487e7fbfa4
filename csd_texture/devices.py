"""Choosing the compute device."""
from __future__ import annotations

import logging

import torch

from .errors import BackendUnavailableError

log = logging.getLogger(__name__)


def resolve_device(name: str) -> torch.device:
    """`auto` -> the first CUDA GPU if there is one, else the CPU; `cuda` must really exist."""
    if name == "auto":
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        log.info("device: %s", device)
        return device
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackendUnavailableError(
            f"--device {name} asked for, but this PyTorch build sees no CUDA GPU "
            f"(torch {torch.__version__}); use --device cpu, or install a CUDA build of torch (see README)"
        )
    return device
