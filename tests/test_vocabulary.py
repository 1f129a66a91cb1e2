"""The demo model's vocabulary, and what the app offers and warns from it."""

from fp8pipe.demo import data
from fp8pipe.presets import Style
from fp8pipe.vocabulary import demo_word_groups, demo_words, prompt_hints, unknown_words, unknown_words_warning


def test_the_demo_tokenizer_knows_exactly_the_words_of_the_captions():
    assert demo_words() == frozenset(data.vocabulary())
    assert {w for ws in demo_word_groups().values() for w in ws} | {","} == demo_words()


def test_unknown_words_are_found_as_the_tokenizer_splits_them():
    assert unknown_words("A Red star, on the LEFT.") == []
    assert unknown_words("a lighthouse on a cliff, bright colors") == ["lighthouse", "cliff", "bright", "colors"]


def test_for_the_demo_only_examples_and_styles_of_known_words_are_offered():
    styles = [Style("Plain", ""), Style("Bright", ", bright colors"), Style("Big", ", big")]
    hints = prompt_hints(True, ["a lighthouse on a cliff", "a red circle", "a blue square"], styles)
    assert hints["examples"] == ["a red circle", "a blue square"] and hints["placeholder"] == "a red circle"
    assert [s.name for s in hints["styles"]] == ["Plain", "Big"]
    assert "circle, square, triangle, star" in hints["vocabulary"]


def test_for_another_model_the_preset_is_offered_as_it_is():
    hints = prompt_hints(False, ["a lighthouse on a cliff"], [Style("Bright", ", bright colors")])
    assert hints["examples"] == ["a lighthouse on a cliff"] and len(hints["styles"]) == 1 and hints["vocabulary"] is None


def test_the_warning_names_each_unknown_word_once():
    assert unknown_words_warning("a red star") is None
    assert unknown_words_warning("a blue lighthouse, a lighthouse") == "the demo model does not know 'lighthouse': those words are ignored"
