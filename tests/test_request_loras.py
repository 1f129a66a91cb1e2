"""A request's `loras` field as GenerationRequest.create checks it: the door every caller uses
(the app's form, the HTTP API, Ray replicas).

Per-request LoRAs are names from the app's LoRA folder (`lora_choices`); an app without a folder
(a kiosk, whose LoRAs come from its preset) refuses any. The count is bounded by the preset's
`max_loras`, or by MAX_REQUEST_LORAS when the preset says nothing.
"""

import pytest

from fp8pipe.lora_library import MAX_REQUEST_LORAS
from fp8pipe.requests import GenerationRequest, RequestError
from fp8pipe.specs import SPECS

SPEC = SPECS["demo"]
FOLDER = ("house", "ink", "neon", "paper", "stone", "wood")  # more names than any request may send


def _create(loras, choices=FOLDER, max_loras=None):
    return GenerationRequest.create(SPEC, "a house", loras=loras, lora_choices=choices, max_loras=max_loras)


def test_named_loras_reach_the_request_with_their_strengths():
    request = _create([{"name": "house", "strength": 0.5}, {"name": "ink"}])
    assert request.loras == (("house", 0.5), ("ink", 1.0))


def test_a_name_given_with_its_file_suffix_is_stored_as_the_folder_lists_it():
    assert _create([{"name": "house.safetensors", "strength": 2}]).loras == (("house", 2.0),)


def test_no_loras_gives_an_empty_tuple_with_or_without_a_folder():
    assert _create(None).loras == ()
    assert _create([]).loras == ()
    assert _create(None, choices=None).loras == ()


def test_an_app_without_a_lora_folder_refuses_loras_by_field_and_says_why():
    with pytest.raises(RequestError) as caught:
        _create([{"name": "house"}], choices=None)
    assert caught.value.field == "loras"
    assert str(caught.value) == "loras: this app takes no LoRAs per request (its LoRAs come from its preset); send none"


def test_a_name_not_in_the_folder_is_refused_naming_the_choices():
    with pytest.raises(RequestError, match=r"^loras: no LoRA named 'glass' in the LoRA folder; choose from: house, ink") as caught:
        _create([{"name": "glass"}])
    assert caught.value.field == "loras"


def test_without_a_preset_limit_the_default_count_holds_exactly():
    names = [{"name": n} for n in FOLDER]
    assert len(_create(names[:MAX_REQUEST_LORAS]).loras) == MAX_REQUEST_LORAS
    with pytest.raises(RequestError, match=rf"^loras: at most {MAX_REQUEST_LORAS} LoRAs per request; got {MAX_REQUEST_LORAS + 1}$"):
        _create(names[: MAX_REQUEST_LORAS + 1])


@pytest.mark.parametrize("max_loras", [1, 2, 5])
def test_a_presets_limit_replaces_the_default_at_exactly_its_value(max_loras):
    names = [{"name": n} for n in FOLDER]
    assert len(_create(names[:max_loras], max_loras=max_loras).loras) == max_loras
    with pytest.raises(RequestError, match=rf"at most {max_loras} LoRAs per request; got {max_loras + 1}$"):
        _create(names[: max_loras + 1], max_loras=max_loras)


def test_the_same_lora_twice_under_two_spellings_is_refused():
    with pytest.raises(RequestError, match=r"^loras: each LoRA once; got house, house$"):
        _create([{"name": "house"}, {"name": "house.safetensors"}])
