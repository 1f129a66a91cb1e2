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
