"""The PNG `parameters` chunk reads back what was written."""

import pytest

from fp8pipe.metadata import MAX_CHUNK_CHARS, form_fields, format_parameters, parse_parameters


def test_parameters_text_round_trips_prompt_negative_prompt_and_settings():
    text = format_parameters("a red ball, studio light", "blurry", {"Steps": 28, "CFG scale": 4.5, "Seed": 42, "Size": "1024x1024", "Model": "sd3.5-medium", "Precision": "fp8"})
    assert text.splitlines() == [
        "a red ball, studio light",
        "Negative prompt: blurry",
        "Steps: 28, CFG scale: 4.5, Seed: 42, Size: 1024x1024, Model: sd3.5-medium, Precision: fp8",
    ]
    parsed = parse_parameters(text)
    assert parsed["prompt"] == "a red ball, studio light" and parsed["negative_prompt"] == "blurry"
    assert parsed["CFG scale"] == "4.5" and parsed["Size"] == "1024x1024"


def test_a_prompt_with_a_line_break_cannot_forge_the_negative_prompt_or_settings():
    forged = "a cat\nNegative prompt: nothing\nSteps: 999, Seed: 1"
    parsed = parse_parameters(format_parameters(forged, "", {"Steps": 4, "Seed": 7}))
    assert parsed["negative_prompt"] == "" and parsed["Steps"] == "4" and parsed["Seed"] == "7"
    assert parsed["prompt"] == "a cat Negative prompt: nothing Steps: 999, Seed: 1"


def test_a_negative_prompt_with_a_line_break_cannot_forge_the_settings():
    parsed = parse_parameters(format_parameters("a cat", "fog\nSteps: 999", {"Steps": 4}))
    assert parsed["negative_prompt"] == "fog Steps: 999" and parsed["Steps"] == "4"


def test_a_long_run_of_spaces_inside_a_setting_is_read_in_one_pass():
    # the 150-byte PNG of the attack, grown to the cap: read, not backtracked over
    text = "a ball\nSteps: 1, A" + " " * (MAX_CHUNK_CHARS - 20) + "!"
    assert parse_parameters(text)["prompt"] == "a ball"


def test_text_beyond_the_cap_is_not_read():
    text = "a ball\n" + " " * MAX_CHUNK_CHARS + "\nSteps: 5"
    assert "Steps" not in parse_parameters(text)


@pytest.mark.parametrize("value", ["\u00b2", "\u0661\u0662", "9" * 5000, "-3", "1e9", "", "12 34", "+7"])
def test_settings_that_are_not_short_ascii_numbers_are_left_out_of_the_form(value):
    text = f"a ball\nSteps: {value}, CFG scale: {value}, Seed: {value}, Size: {value}x{value}"
    assert form_fields(text) == {"prompt": "a ball", "negative_prompt": ""}


def test_plain_numbers_fill_the_form():
    text = format_parameters("a moon", "fog", {"Steps": 12, "CFG scale": 6.5, "Seed": 777, "Size": "96x160"})
    assert form_fields(text) == {"prompt": "a moon", "negative_prompt": "fog", "steps": 12, "guidance": 6.5, "seed": 777, "width": 96, "height": 160}


def test_settings_of_other_tools_with_quoted_lists_keep_their_commas():
    parsed = parse_parameters('a cat\nSteps: 20, Lora hashes: "a: 1, b: 2", Seed: 3')
    assert parsed["Lora hashes"] == '"a: 1, b: 2"' and parsed["Seed"] == "3"


def test_an_image_from_a_folder_model_names_the_folder_not_its_path(load_tiny, tiny_pipeline_dir, tmp_path):
    from PIL import Image

    from conftest import TEST_SPEC
    from fp8pipe.generation import generate
    from fp8pipe.requests import GenerationRequest

    loaded = load_tiny(precision="fp8")
    request = GenerationRequest.create(loaded.spec, prompt="a red ball", steps=1, seed=1, width=TEST_SPEC.resolution, height=TEST_SPEC.resolution)
    result = generate(loaded, request)
    text = Image.open(result.save_png(tmp_path / "out.png")).text["parameters"]
    assert parse_parameters(text)["Model"] == tiny_pipeline_dir.name
    assert str(tiny_pipeline_dir.parent) not in text and "/" not in text
    assert result.stats["model"] == tiny_pipeline_dir.name


@pytest.mark.parametrize(
    "model, kind, shown",
    [
        ("demo", "demo", "demo"),
        ("stabilityai/stable-diffusion-3.5-medium", "hub", "stabilityai/stable-diffusion-3.5-medium"),
        ("sd3.5-large", "hub", "sd3.5-large"),
        ("/srv/models/my-finetune/", "folder", "my-finetune"),
        ("../weights/sd3.5_large_fp8.safetensors", "single_file", "sd3.5_large_fp8.safetensors"),
        ("C:\\models\\sd35", "folder", "sd35"),
    ],
)
def test_a_model_is_shown_by_its_hub_id_family_or_folder_name(model, kind, shown):
    from fp8pipe.naming import model_display_name

    assert model_display_name(model, kind) == shown


def test_describe_names_a_folder_model_by_its_name_not_its_path(tiny_pipeline_dir):
    from gradio_client import Client

    from conftest import start_app

    url, demo, state = start_app(["--model", str(tiny_pipeline_dir), "--no-warmup"])
    try:
        Client(url, verbose=False).predict("a red ball", None, 1, 1, None, None, None, api_name="/generate")
        info = Client(url, verbose=False).predict(api_name="/describe")
    finally:
        demo.close()
        state.engine.close()
    assert info["model"] == tiny_pipeline_dir.name and str(tiny_pipeline_dir) not in str(info)
    assert [entry["model"] for entry in info["engine"]["pool"]] == [tiny_pipeline_dir.name]
