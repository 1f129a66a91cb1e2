"""Every request limit holds at exactly its maximum (accepted) and one past it (refused, by name).

One past means the next value the field can take: +1 for whole numbers, +size_multiple for a
size (a size off the grid is refused for that reason instead), the next float for guidance.
"""

import math

import pytest

from fp8pipe.requests import MAX_BATCH, MAX_GUIDANCE, MAX_PROMPT_CHARS, MAX_SEED, MAX_STEPS, SHIFT_RANGE, GenerationRequest, Limits, RequestError
from fp8pipe.specs import SPECS

MEDIUM = SPECS["sd3.5-medium"]
LIMITS = Limits.for_spec(MEDIUM)


def _create(**fields):
    return GenerationRequest.create(MEDIUM, fields.pop("prompt", "a cat"), **{"seed": 1, **fields})


def _refused(field, words, **fields):
    with pytest.raises(RequestError) as err:
        _create(**fields)
    assert err.value.field == field and words in str(err.value), str(err.value)


def test_the_limits_are_the_documented_ones():
    assert (MAX_SEED, MAX_STEPS, MAX_BATCH, MAX_PROMPT_CHARS, MAX_GUIDANCE) == (2**32 - 1, 150, 8, 2000, 30.0)
    assert (LIMITS.min_size, LIMITS.max_size, LIMITS.size_multiple) == (MEDIUM.min_resolution, MEDIUM.max_resolution, MEDIUM.size_multiple)


def test_steps_at_the_maximum_pass_and_one_more_is_refused():
    assert _create(steps=MAX_STEPS).steps == MAX_STEPS
    assert _create(steps=1).steps == 1
    _refused("steps", f"1 to {MAX_STEPS}; got {MAX_STEPS + 1}", steps=MAX_STEPS + 1)
    _refused("steps", f"1 to {MAX_STEPS}; got 0", steps=0)


@pytest.mark.parametrize("field", ["width", "height"])
def test_sizes_at_the_maximum_and_minimum_pass_and_one_grid_step_beyond_is_refused(field):
    assert getattr(_create(**{field: LIMITS.max_size}), field) == LIMITS.max_size
    assert getattr(_create(**{field: LIMITS.min_size}), field) == LIMITS.min_size
    words = f"{LIMITS.min_size} to {LIMITS.max_size} in steps of {LIMITS.size_multiple}"
    _refused(field, words, **{field: LIMITS.max_size + LIMITS.size_multiple})
    _refused(field, words, **{field: LIMITS.min_size - LIMITS.size_multiple})
    _refused(field, words, **{field: LIMITS.max_size - 1})  # inside the range, off the grid


def test_seed_2_to_the_32_minus_1_passes_and_2_to_the_32_is_refused():
    assert _create(seed=2**32 - 1).seed == 2**32 - 1
    assert _create(seed=0).seed == 0
    _refused("seed", f"0 to {MAX_SEED}; got {2**32}", seed=2**32)
    _refused("seed", f"0 to {MAX_SEED}; got -1", seed=-1)


def test_batch_at_the_maximum_passes_and_one_more_is_refused():
    assert _create(batch=MAX_BATCH).batch == MAX_BATCH
    assert _create().batch == 1
    _refused("batch", f"1 to {MAX_BATCH}; got {MAX_BATCH + 1}", batch=MAX_BATCH + 1)
    _refused("batch", f"1 to {MAX_BATCH}; got 0", batch=0)


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_text_of_exactly_the_maximum_length_passes_and_one_character_more_is_refused(field):
    assert len(getattr(_create(**{field: "x" * MAX_PROMPT_CHARS}), field)) == MAX_PROMPT_CHARS
    _refused(field, f"at most {MAX_PROMPT_CHARS} characters; got {MAX_PROMPT_CHARS + 1}", **{field: "x" * (MAX_PROMPT_CHARS + 1)})


def test_the_length_limit_counts_the_text_after_control_characters_and_edges_are_removed():
    assert _create(prompt="  " + "x" * MAX_PROMPT_CHARS + "\x00\n ").prompt == "x" * MAX_PROMPT_CHARS


def test_guidance_at_zero_and_the_maximum_passes_and_the_next_float_is_refused():
    assert _create(guidance=MAX_GUIDANCE).guidance == MAX_GUIDANCE
    assert _create(guidance=0).guidance == 0.0
    _refused("guidance", f"0 to {MAX_GUIDANCE}", guidance=math.nextafter(MAX_GUIDANCE, math.inf))
    _refused("guidance", f"0 to {MAX_GUIDANCE}", guidance=math.nextafter(0.0, -math.inf))


def test_shift_at_both_ends_of_its_range_passes_and_just_beyond_is_refused():
    low, high = SHIFT_RANGE
    assert _create(shift=low).shift == low and _create(shift=high).shift == high
    _refused("shift", f"{low} to {high}", shift=math.nextafter(high, math.inf))
    _refused("shift", f"{low} to {high}", shift=math.nextafter(low, -math.inf))
    _refused("shift", f"{low} to {high}", shift=True)


def test_a_presets_narrower_limits_hold_at_their_own_maximum():
    narrow = Limits(min_size=256, max_size=512, size_multiple=64, max_steps=4, max_guidance=8.0, max_prompt_chars=20, max_batch=2)
    ok = GenerationRequest.create(MEDIUM, "x" * 20, steps=4, guidance=8.0, seed=1, width=512, height=256, batch=2, limits=narrow)
    assert (ok.steps, ok.guidance, ok.width, ok.height, ok.batch) == (4, 8.0, 512, 256, 2)
    for field, value, words in [
        ("steps", 5, "1 to 4"),
        ("guidance", 8.5, "0 to 8.0"),
        ("width", 576, "256 to 512 in steps of 64"),
        ("height", 320 - 1, "256 to 512 in steps of 64"),
        ("batch", 3, "1 to 2"),
    ]:
        with pytest.raises(RequestError) as err:
            GenerationRequest.create(MEDIUM, "a cat", seed=1, limits=narrow, **{"width": 512, "height": 512, "steps": 4, "guidance": 1.0, field: value})
        assert err.value.field == field and words in str(err.value)
    with pytest.raises(RequestError, match="at most 20 characters; got 21"):
        GenerationRequest.create(MEDIUM, "x" * 21, seed=1, width=512, height=512, steps=4, guidance=1.0, limits=narrow)


def test_whole_numbers_may_come_as_text_or_as_integral_floats():
    r = _create(steps=" 12 ", seed=7.0, width="512", batch=2.0)
    assert (r.steps, r.seed, r.width, r.batch) == (12, 7, 512, 2)
    _refused("steps", "whole number", steps="twelve")
    _refused("seed", "whole number", seed=math.inf)


def test_a_missing_negative_prompt_is_empty_and_text_must_be_a_string():
    assert _create().negative_prompt == ""
    _refused("negative_prompt", "must be text; got int", negative_prompt=5)


def test_a_guidance_that_is_not_a_number_names_the_field_and_range():
    _refused("guidance", f"must be a number from 0 to {MAX_GUIDANCE}; got 'lots'", guidance="lots")


def test_a_shift_given_as_text_is_refused_by_name():
    _refused("shift", "must be a number from", shift="3")


def test_a_random_seed_is_drawn_from_the_whole_range_0_to_2_to_the_32_minus_1(monkeypatch):
    import fp8pipe.requests as requests

    asked = []
    monkeypatch.setattr(requests.secrets, "randbelow", lambda n: asked.append(n) or n - 1)
    assert GenerationRequest.create(MEDIUM, "a cat").seed == MAX_SEED
    assert asked == [MAX_SEED + 1]
