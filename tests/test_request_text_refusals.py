"""Text fields of a request: each refusal names the field and says exactly what is wrong.

The prompt comes over HTTP: a lone surrogate (which no encoder can write out), an empty or
invisible-only prompt, and a non-number guidance are refused with the field named first.
"""

from __future__ import annotations

import pytest

from fp8pipe.requests import GenerationRequest, RequestError
from fp8pipe.specs import SPECS

SPEC = SPECS["demo"]


def _refusal(**fields) -> RequestError:
    with pytest.raises(RequestError) as e:
        GenerationRequest.create(SPEC, **{"prompt": "a red ball", **fields})
    return e.value


@pytest.mark.parametrize("field", ["prompt", "negative_prompt"])
def test_a_lone_surrogate_is_refused_naming_the_field_its_position_and_code_point(field):
    error = _refusal(**{field: "ab\ud83dc"})
    assert error.field == field
    assert str(error) == f"{field}: must be valid Unicode text; character 3 is a lone surrogate (U+D83D)"


def test_an_empty_prompt_is_refused_and_one_of_only_invisible_characters_says_so():
    assert str(_refusal(prompt="")) == "prompt: must not be empty"
    assert str(_refusal(prompt="   ")) == "prompt: must not be empty"  # spaces are stripped to nothing
    assert str(_refusal(prompt="\u200b\u2060")) == "prompt: must not be empty (it holds only invisible characters)"


def test_an_empty_negative_prompt_is_fine():
    assert GenerationRequest.create(SPEC, prompt="a red ball", negative_prompt="").negative_prompt == ""


@pytest.mark.parametrize("guidance", [True, False, [4.5], {"g": 1}])
def test_a_guidance_that_is_not_a_number_is_refused_naming_the_range(guidance):
    error = _refusal(guidance=guidance)
    assert error.field == "guidance" and str(error).startswith("guidance: must be a number from 0 to ")
    assert str(error).endswith(f"; got {guidance!r}")
