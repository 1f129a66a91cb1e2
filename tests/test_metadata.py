"""The PNG `parameters` chunk reads back what was written."""

import pytest

from fp8pipe.metadata import format_parameters, parse_parameters


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
