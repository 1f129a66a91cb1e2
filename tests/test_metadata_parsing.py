"""Reading a `parameters` chunk back: which line is which, whatever the prompt looks like."""

import io

from PIL import Image

from fp8pipe.metadata import CHUNK, format_parameters, parse_parameters, png_info

SETTINGS = {"Steps": 4, "Seed": 1}


def test_a_png_written_with_png_info_carries_the_text_under_parameters():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, format="PNG", pnginfo=png_info("a cat\nSteps: 4, Seed: 1"))
    assert CHUNK == "parameters"
    assert Image.open(io.BytesIO(buffer.getvalue())).text == {"parameters": "a cat\nSteps: 4, Seed: 1"}


def test_a_multi_line_prompt_is_written_on_one_line_and_the_settings_line_is_the_last_one():
    # one line per field, so a line break in a prompt cannot forge the negative prompt or settings
    text = format_parameters("a, b\n(c)", "", SETTINGS)
    assert text.splitlines()[-1] == "Steps: 4, Seed: 1"
    assert parse_parameters(text) == {"prompt": "a, b (c)", "negative_prompt": "", "Steps": "4", "Seed": "1"}


def test_without_a_settings_line_everything_is_prompt_even_a_line_that_looks_like_a_setting():
    assert parse_parameters("style: oil painting") == {"prompt": "style: oil painting", "negative_prompt": ""}
    assert parse_parameters("a cat") == {"prompt": "a cat", "negative_prompt": ""}


def test_only_line_breaks_around_the_text_are_dropped_not_the_prompts_own_spaces():
    assert parse_parameters("\n  indented cat\nSteps: 4\n")["prompt"] == "  indented cat"
