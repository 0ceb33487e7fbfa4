"""Command-line options map onto Config: presets, guidance variants, schedules, editing."""
from __future__ import annotations

import click
import pytest

from csd_texture.config import PRESETS, Schedule, save_config, preset
from csd_texture_cli.main import build_config, parse_timestep_range


def options(**values):
    return {"prompt": "a chair", **values}


def test_presets_choose_steps_and_sizes() -> None:
    fast, quality = build_config(None, "fast", options()), build_config(None, "quality", options())
    assert fast.steps == PRESETS["fast"]["steps"] < build_config(None, "balanced", options()).steps < quality.steps
    assert fast.texture_size < quality.texture_size


def test_guidance_variant_and_schedules() -> None:
    config = build_config(None, "balanced", options(guidance="sds", guidance_scale=50.0, negative_weight="0.8,0.2",
                                                     timestep_range="0.1,0.9,0.4"))
    assert config.guidance == "sds" and config.guidance_scale == 50.0
    assert config.negative_weight == Schedule(0.8, 0.2)
    assert config.timestep_min == Schedule(0.1, 0.1) and config.timestep_max == Schedule(0.9, 0.4)
    assert parse_timestep_range("0.2,0.6") == (Schedule(0.2, 0.2), Schedule(0.6, 0.6))
    with pytest.raises(click.BadParameter, match="LOW,HIGH"):
        parse_timestep_range("0.5")


def test_edit_halves_the_preset_steps_unless_given() -> None:
    edit = build_config(None, "balanced", options(edit=True, source_prompt="a red chair", edit_strength=0.3))
    assert edit.edit and edit.source_prompt == "a red chair" and edit.edit_strength == 0.3
    assert edit.steps == preset("balanced").steps // 2
    assert build_config(None, "balanced", options(edit=True, steps=40)).steps == 40


def test_config_file_then_options_override(tmp_path) -> None:
    path = tmp_path / "settings.yaml"
    save_config(preset("fast", seed=3, negative_prompt="blurry"), path)
    config = build_config(path, "balanced", options(seed=9))
    assert config.seed == 9 and config.negative_prompt == "blurry" and config.steps == PRESETS["fast"]["steps"]


def test_config_from_an_output_record(tmp_path) -> None:
    import json

    from csd_texture.config import load_config

    record = {"generator": "csd-texture 0.1.0", "prompt": "a chair",
              "settings": preset("fast", prompt="a chair", seed=11).to_dict(), "timings_s": {"bake": 1.0}}
    path = tmp_path / "out.json"
    path.write_text(json.dumps(record))
    assert load_config(path) == preset("fast", prompt="a chair", seed=11)
