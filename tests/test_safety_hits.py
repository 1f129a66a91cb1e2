"""What the prompt filter reports: the filter words as the preset wrote them."""

from fp8pipe.safety import blocked_words


def test_the_hits_are_the_preset_words_themselves_in_list_order():
    assert blocked_words("gore and a NUDE statue", ["nude", "Gore", "blood bath"]) == ["nude", "Gore"]
