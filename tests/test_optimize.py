"""The optimisation loop on non-finite steps: skipped, counted, recorded, and fatal when most are."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
import trimesh

from csd_texture import texture_mesh
from csd_texture.errors import OptimizationError
from csd_texture.optimize import ObjectiveOutput

SMALL = dict(texture_size=32, render_size=32, progress=False)


class NonFiniteOn:
    """Pull renders towards grey; the loss (or only its gradient) is NaN on the given calls."""

    def __init__(self, bad: set[int], kind: str = "nan") -> None:
        self.bad, self.kind, self.calls = bad, kind, 0

    def __call__(self, images, views, progress, generator) -> ObjectiveOutput:
        loss = ((images - 0.5) ** 2).mean()
        if self.calls in self.bad:
            if self.kind == "nan":
                loss = loss * float("nan")
            else:  # a finite loss whose gradient is not
                loss = loss + _nan_grad(images)
        self.calls += 1
        return ObjectiveOutput(loss)


def _nan_grad(images: torch.Tensor) -> torch.Tensor:
    """0 in value, NaN in gradient (sqrt'(0) = inf, times 0)."""
    return torch.sqrt(images.sum() * 0.0)


@pytest.mark.parametrize("kind", ["nan", "nan-grad"])
def test_non_finite_steps_are_skipped_counted_and_recorded(kind: str, caplog: pytest.LogCaptureFixture) -> None:
    sphere = trimesh.creation.icosphere(subdivisions=2)
    with caplog.at_level(logging.WARNING, logger="csd_texture"):
        result = texture_mesh(sphere, objective=NonFiniteOn({1, 3}, kind), steps=6, **SMALL)
    assert [r.skipped for r in result.history] == [False, True, False, True, False, False]
    assert np.isfinite(result.maps.albedo).all() and np.isfinite(result.maps.roughness).all()
    assert result.metadata["skipped_steps"] == 2
    assert any("skipped 2 of 6 steps" in r.getMessage() for r in caplog.records)


def test_mostly_non_finite_run_stops_with_a_clear_error() -> None:
    sphere = trimesh.creation.icosphere(subdivisions=1)
    with pytest.raises(OptimizationError, match=r"4 of 6 steps had a non-finite loss or gradient"):
        texture_mesh(sphere, objective=NonFiniteOn({0, 1, 2, 3, 4, 5}), steps=6, **SMALL)
