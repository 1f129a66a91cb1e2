"""The filter's word forms, rule by rule: a blocked word is also caught inflected (fp8pipe.safety.word_forms).

Each rule of English spelling the filter follows, checked as the exact set of forms it adds, so a
form dropped (a filter bypass) or a wrong one added (a false block) shows.
"""

from __future__ import annotations

import pytest

from fp8pipe.safety import blocked_words, word_forms

BASE = ("s", "es", "d", "ed", "ing", "y")


def _plain(word):
    return {word, *(word + s for s in BASE)}


def test_every_word_takes_the_plural_past_ing_and_y_endings():
    assert word_forms("fix") == _plain("fix")  # x: never doubled
    assert word_forms("show") == _plain("show")  # w: never doubled


def test_a_final_e_is_dropped_before_ing_ed_and_y():
    assert word_forms("gore") == _plain("gore") | {"goring", "gored", "gory"}


def test_a_final_y_becomes_ies_and_ied():
    assert word_forms("gory") == _plain("gory") | {"gories", "goried"}
    assert word_forms("play") == _plain("play") | {"plaies", "plaied"}  # y is never doubled


def test_a_short_vowel_consonant_ending_doubles_its_consonant():
    assert word_forms("cut") == _plain("cut") | {"cutting", "cutted", "cutty"}
    assert word_forms("at") == _plain("at")  # two letters: not doubled


@pytest.mark.parametrize("prompt, hit", [("a cutting scene", True), ("cuttings", False), ("goried", True), ("a fixy thing", True), ("fixx", False)])
def test_inflected_forms_are_caught_as_whole_words(prompt, hit):
    assert bool(blocked_words(prompt, ("cut", "gory", "fix"))) is hit
