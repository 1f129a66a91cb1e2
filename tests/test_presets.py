"""Presets: the shipped files load, and a bad file is refused naming the file, key and allowed values."""

import re

import pytest

from fp8pipe.presets import PresetError, available_presets, load_preset, parse_preset
from fp8pipe.specs import SPECS


@pytest.mark.parametrize("name", ["cpu-demo", "kiosk-8gb", "quality-12gb", "large-16gb", "zerogpu"])
def test_each_shipped_preset_loads_and_its_defaults_lie_within_its_limits(name):
    preset = load_preset(name)
    assert preset.name == name and name in available_presets()
    spec = SPECS["demo"] if preset.model == "demo" else SPECS[preset.model]
    limits, defaults = preset.limits_for(spec), preset.defaults_for(spec)
    assert 1 <= defaults["steps"] <= limits.max_steps
    assert limits.min_size <= defaults["width"] <= limits.max_size and defaults["width"] % limits.size_multiple == 0


def test_the_kiosk_preset_caps_steps_and_pixels_below_the_models_range():
    preset, spec = load_preset("kiosk-8gb"), SPECS["sd3.5-large-turbo"]
    limits = preset.limits_for(spec)
    assert limits.max_steps == 4 and limits.max_size == 1024 < spec.max_resolution
    assert preset.previews is False and preset.filter_words


@pytest.mark.parametrize(
    "text, words",
    [
        ('name = "x"\n[defaults]\nsteps = 0\n', ["x.toml", "[defaults]", "steps = 0", "1 to 150"]),
        ('name = "x"\ncolour = "red"\n', ["x.toml", "unknown key 'colour'", "allowed keys"]),
        ('name = "x"\nprecision = "int4"\n', ["precision", "one of fp8, bf16, fp16, fp32"]),
        ('name = "x"\n[limits]\nmax_guidance = nan\n', ["max_guidance", "0.0 to 30.0"]),
        ('name = "x"\n[limits]\nmin_size = 1024\nmax_size = 512\n', ["min_size 1024 is larger than max_size 512"]),
        ('name = "x"\n[defaults]\nsteps = 8\n[limits]\nmax_steps = 4\n', ["steps 8 exceeds", "max_steps 4"]),
        ("name = \n", ["x.toml", "not valid TOML"]),
        ('description = "no name"\n', ["missing key 'name'"]),
        ('name = "x"\nstyles = [{name = "a"}]\n', ["styles", "name and suffix"]),
    ],
)
def test_a_malformed_preset_names_the_file_the_key_and_the_allowed_values(text, words):
    with pytest.raises(PresetError) as err:
        parse_preset(text, "x.toml")
    for word in words:
        assert word in str(err.value)


@pytest.mark.parametrize("name", ["../app", "..", "/etc/passwd", "nope", "KIOSK"])
def test_unknown_or_path_like_preset_names_are_refused(name):
    with pytest.raises(PresetError):
        load_preset(name)


def test_a_preset_file_by_path_loads(tmp_path):
    path = tmp_path / "mine.toml"
    path.write_text('name = "mine"\nmodel = "demo"\n[defaults]\nsteps = 3\n')
    assert load_preset(str(path)).steps == 3


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "p"\n[defaults]\nwidth = 512\n[limits]\nmax_size = 256\n', "[defaults] width 512 is outside [limits]"),
        ('name = "p"\n[[styles]]\nname = 3\nsuffix = ""\n', "name = 3 is not allowed"),
        ('name = "p"\n[[styles]]\nname = "A"\nsuffix = ["x"]\n', "suffix = ['x'] is not allowed"),
        ("name = " + "[" * 3000 + "]" * 3000, "nested too deeply"),
        ("name = " + "[" * 20 + "]" * 20, "nested too deeply"),
    ],
    ids=["default-outside-limits", "style-name-number", "style-suffix-list", "deep-recursion", "deep"],
)
def test_preset_gaps_are_refused_with_the_file_and_key(text, message):
    from fp8pipe.presets import PresetError, parse_preset

    with pytest.raises(PresetError, match=re.escape(message)):
        parse_preset(text, "p.toml")


@pytest.mark.parametrize(
    "text, message",
    [
        ('name = "p"\n[defaults]\nwidth = 100\n', "[defaults] width: must be 64 to 256 in steps of 8; got 100"),  # off the size grid
        ('name = "p"\n[limits]\nmin_size = 512\n', "leave nothing that demo supports"),
        ('name = "p"\n[limits]\nmax_size = 128\nmin_size = 96\n', "the model's default (demo) width: must be 96 to 128"),
    ],
    ids=["off-grid", "no-size-left", "native-size-outside"],
)
def test_a_preset_whose_defaults_the_model_refuses_stops_the_app(text, message, tmp_path, capsys):
    import app as webapp

    path = tmp_path / "p.toml"
    path.write_text(text)
    from conftest import free_port

    assert webapp.main(["--preset", str(path), "--port", str(free_port())]) == 2
    assert message in capsys.readouterr().err
