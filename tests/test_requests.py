"""GenerationRequest: defaults from the model, and errors that name the field and range."""

import math

import pytest

from fp8pipe.requests import MAX_SEED, GenerationRequest, RequestError
from fp8pipe.specs import SPECS

MEDIUM = SPECS["sd3.5-medium"]


def test_missing_settings_take_the_models_recommended_defaults():
    r = GenerationRequest.create(MEDIUM, "a cat", seed=1)
    assert (r.steps, r.guidance, r.width, r.height) == (28, 4.5, 1024, 1024)


def test_a_missing_seed_is_drawn_at_random_within_range():
    seeds = {GenerationRequest.create(MEDIUM, "a cat").seed for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s <= MAX_SEED for s in seeds)


@pytest.mark.parametrize(
    "field, value, words",
    [
        ("width", 1000, "in steps of 16"),
        ("height", 0, "256 to 1536"),
        ("width", 99999, "256 to 1536"),
        ("steps", 0, "1 to 150"),
        ("steps", 10_000, "1 to 150"),
        ("steps", 2.5, "whole number"),
        ("guidance", math.nan, "0 to 30"),
        ("guidance", math.inf, "0 to 30"),
        ("guidance", -1, "0 to 30"),
        ("seed", -1, f"0 to {MAX_SEED}"),
        ("seed", 2**40, f"0 to {MAX_SEED}"),
        ("seed", 1.5, "whole number"),
        ("seed", True, "whole number"),
    ],
)
def test_out_of_range_settings_name_the_field_and_the_allowed_range(field, value, words):
    with pytest.raises(RequestError) as err:
        GenerationRequest.create(MEDIUM, "a cat", **{field: value})
    assert err.value.field == field and words in str(err.value)


@pytest.mark.parametrize("prompt", ["", "   \n\t ", "\x00\x07"])
def test_an_empty_prompt_is_refused(prompt):
    with pytest.raises(RequestError, match="prompt: must not be empty"):
        GenerationRequest.create(MEDIUM, prompt)


def test_an_overlong_prompt_is_refused_with_its_length():
    with pytest.raises(RequestError, match="at most 2000 characters; got 10000"):
        GenerationRequest.create(MEDIUM, "x" * 10_000)


def test_control_characters_are_removed_but_emoji_and_rtl_text_are_kept():
    r = GenerationRequest.create(MEDIUM, "a\x00 cat 🐱 \u05e9\u05dc\u05d5\u05dd")
    assert r.prompt == "a cat 🐱 \u05e9\u05dc\u05d5\u05dd"
