"""The PNG `parameters` chunk reads back what was written."""

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
