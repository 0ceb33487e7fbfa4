"""Command-line options map onto Config: presets, guidance variants, schedules, editing."""
from __future__ import annotations

import click
import pytest
from click.testing import CliRunner

from csd_texture.config import PRESETS, Config, Schedule, edit_settings, load_config, preset, save_config
from csd_texture.errors import ConfigError
from csd_texture_cli.main import build_config, main, parse_timestep_range


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


def test_material_options_reach_the_settings(tmp_path) -> None:
    config = build_config(None, "balanced", options(material_prior=0.3, roughness="0.3,0.9", metallic="0"))
    assert config.material_prior == 0.3 and config.roughness == (0.3, 0.9) and config.metallic == (0.0, 0.0)
    assert build_config(None, "balanced", options()).material_prior == Config().material_prior
    result = CliRunner().invoke(main, [str(tmp_path / "m.obj"), "a ball", "--material-prior", "11"])
    assert result.exit_code == 2 and "--material-prior" in result.output, result.output


def test_edit_runs_half_the_steps_by_one_rule_for_cli_and_api() -> None:
    """The CLI records the steps asked for; edit_settings (used by texture_mesh) halves them, rounding up."""
    edit = build_config(None, "balanced", options(edit=True, source_prompt="a red chair", edit_strength=0.3))
    assert edit.edit and edit.source_prompt == "a red chair" and edit.edit_strength == 0.3
    assert edit.steps == preset("balanced").steps
    assert edit_settings(edit).steps == preset("balanced").steps // 2
    assert edit_settings(Config(edit=True)).steps == edit_settings(edit).steps  # API defaults: same rule
    given = build_config(None, "balanced", options(edit=True, steps=41))
    assert given.steps == 41 and edit_settings(given).steps == 21
    assert edit_settings(Config(edit=True, steps=0)).steps == 0


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


# ----------------------------------------------------------------------------- Config types


@pytest.mark.parametrize(("settings", "expected"), [
    ({"steps": "5"}, {"steps": 5}),
    ({"steps": 5.0, "seed": " 7 "}, {"steps": 5, "seed": 7}),
    ({"keep_uv": "no", "edit": "Yes"}, {"keep_uv": False, "edit": True}),
    ({"keep_uv": 1}, {"keep_uv": True}),
    ({"learning_rate": "0.01"}, {"learning_rate": 0.01}),
    ({"elevation_range": "0, 30"}, {"elevation_range": (0.0, 30.0)}),
    ({"negative_weight": "1,0.2", "timestep_max": 0.6}, {"negative_weight": Schedule(1.0, 0.2),
                                                         "timestep_max": Schedule(0.6, 0.6)}),
])
def test_config_coerces_text_and_numbers_to_each_settings_type(settings: dict, expected: dict) -> None:
    config = Config.from_dict(settings)
    for name, value in expected.items():
        assert getattr(config, name) == value and type(getattr(config, name)) is type(value)


@pytest.mark.parametrize(("settings", "message"), [
    ({"steps": "5x"}, "setting steps = '5x' (str): expected a whole number"),
    ({"seed": 1.5}, "setting seed = 1.5 (float): expected a whole number"),
    ({"texture_size": 1024.7}, "setting texture_size = 1024.7 (float): expected a whole number"),
    ({"keep_uv": "maybe"}, "setting keep_uv = 'maybe' (str): expected true or false"),
    ({"keep_uv": 2}, "setting keep_uv = 2 (int): expected true or false"),
    ({"steps": True}, "setting steps = True (bool): expected a whole number"),
    ({"elevation_range": [10]}, "setting elevation_range = [10] (list): expected 2 values, got 1"),
    ({"fov_range": "a,b"}, "setting fov_range = 'a,b' (str): expected a number"),
    ({"learning_rate": float("nan")}, "setting learning_rate = nan (float): expected a number (finite)"),
    ({"prompt": 5}, "setting prompt = 5 (int): expected text"),
    ({"negative_weight": [1, 2, 3]}, "setting negative_weight = [1, 2, 3] (list): expected a number or START,END"),
])
def test_config_refuses_wrong_types_naming_setting_value_type_and_expectation(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError) as error:
        Config.from_dict(settings)
    assert message in str(error.value)


@pytest.mark.parametrize("suffix", [".json", ".yaml"])
def test_config_file_with_text_values_loads_typed(suffix: str, tmp_path) -> None:
    path = tmp_path / f"settings{suffix}"
    path.write_text('{"steps": "5", "keep_uv": "no", "seed": "3"}' if suffix == ".json"
                    else "steps: '5'\nkeep_uv: 'no'\nseed: '3'\n")
    config = load_config(path)
    assert (config.steps, config.keep_uv, config.seed) == (5, False, 3)


def _settings_strategy():
    """Random valid settings of the typed fields (hypothesis)."""
    from hypothesis import strategies as st

    unit = st.floats(0.0, 1.0, allow_nan=False)
    return st.fixed_dictionaries({}, optional={
        "prompt": st.text(max_size=20),
        "steps": st.integers(0, 5000),
        "seed": st.integers(0, 2**31),
        "texture_size": st.integers(8, 4096),
        "learning_rate": st.floats(1e-6, 1.0, allow_nan=False),
        "keep_uv": st.booleans(),
        "negative_weight": st.tuples(st.floats(-2, 2, allow_nan=False), st.floats(-2, 2, allow_nan=False)),
        "timestep_max": st.tuples(unit, unit),
        "elevation_range": st.tuples(st.floats(-89, 89, allow_nan=False), st.floats(-89, 89, allow_nan=False)),
        "guidance": st.sampled_from(["csd", "sds"]),
        "up_axis": st.sampled_from([None, "y", "-z"]),
    })


def test_config_round_trips_through_dict_json_and_yaml(tmp_path) -> None:
    from hypothesis import HealthCheck, given, settings

    @settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
    @given(_settings_strategy())
    def round_trip(values: dict) -> None:
        config = Config.from_dict(values)
        assert Config.from_dict(config.to_dict()) == config
        for suffix in (".json", ".yaml"):
            save_config(config, tmp_path / f"c{suffix}")
            assert load_config(tmp_path / f"c{suffix}") == config
        text = {k: ",".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)  # every value as CSV text
                for k, v in config.to_dict().items()
                if v not in (None, (), []) and k not in ("prompt", "negative_prompt", "source_prompt")}
        assert Config.from_dict(text).updated(prompt=config.prompt) == config

    round_trip()
