"""The kiosk prompt filter matches whole words through common disguises."""

import pytest

from fp8pipe.safety import blocked_words

WORDS = ["nude", "gore", "blood bath"]


@pytest.mark.parametrize("prompt", ["a NUDE statue", "n.u.d.e", "nüde", "nud3 figure", "nu\u200bde", "a blood  bath"])
def test_disguised_filter_words_are_caught(prompt):
    assert blocked_words(prompt, WORDS)


@pytest.mark.parametrize("prompt", ["a gorgeous sunset", "Sussex countryside", "blood orange juice", "a nudeless void"])
def test_words_that_merely_contain_a_filter_word_pass(prompt):
    assert blocked_words(prompt, WORDS) == []


@pytest.mark.parametrize(
    "prompt",
    ["nudes", "goring", "gored", "gory", "nu\x00de", "nu\u00adde", "nud\u0435", "\uff4e\uff55\uff44\uff45", "\U0001d427\U0001d42e\U0001d41d\U0001d41e", "n u d e", "nu-de", "blood baths"],
    ids=lambda s: " ".join(c if c.isascii() and c.isprintable() else f"U+{ord(c):04X}" for c in s),  # no backslash: node ids pass through mutmut intact
)
def test_word_forms_invisible_characters_and_look_alike_letters_are_caught(prompt):
    assert blocked_words(prompt, WORDS)


@pytest.mark.parametrize("prompt", ["a nudibranch", "gorilla", "a bathtub of blood oranges"])
def test_longer_words_that_start_with_a_filter_word_pass(prompt):
    assert blocked_words(prompt, WORDS) == []
