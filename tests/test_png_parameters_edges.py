"""The PNG parameters text at its edges: limits at exactly their value and one past, LoRA tags, odd keys.

Reading the chunk back is user input (any PNG can be dropped on the page), so each limit of
fp8pipe.metadata is tried at its maximum and one past it, and each kind of malformed part.
"""

from __future__ import annotations

import pytest

from fp8pipe import metadata
from fp8pipe.metadata import MAX_NUMBER_DIGITS, add_loras, form_fields, format_parameters, number, parse_parameters, split_lora_tags, whole_number


def test_without_a_negative_prompt_there_is_no_negative_line_and_commas_in_values_become_spaces():
    text = format_parameters("a cat", "", {"Steps": 4, "Model": "a,b"})
    assert text == "a cat\nSteps: 4, Model: a b"
    assert format_parameters("a\nb", "c\r\nd", {"Seed": "1\n2"}) == "a b\nNegative prompt: c d\nSeed: 1 2"


@pytest.mark.parametrize("digits, read", [(MAX_NUMBER_DIGITS, True), (MAX_NUMBER_DIGITS + 1, False)])
def test_whole_numbers_are_read_up_to_the_digit_limit(digits, read):
    text = "9" * digits
    assert whole_number(text) == (int(text) if read else None)
    assert whole_number(f"  {text} ") == (int(text) if read else None)  # spaces around are not digits


@pytest.mark.parametrize("text", ["", " ", "-1", "+1", "1e3", "١٢", "²", "0x1", "1 2"])
def test_anything_but_plain_ascii_digits_is_not_a_whole_number(text):
    assert whole_number(text) is None


def test_zero_and_an_int_are_whole_numbers():
    assert whole_number("0") == 0 and whole_number(42) == 42


@pytest.mark.parametrize(
    "text, value",
    [("4.5", 4.5), ("7", 7.0), ("3.", 3.0), (" 2.25 ", 2.25), ("9" * MAX_NUMBER_DIGITS, float("9" * MAX_NUMBER_DIGITS)), ("1." + "5" * (MAX_NUMBER_DIGITS - 1), float("1." + "5" * (MAX_NUMBER_DIGITS - 1)))],
)
def test_plain_decimals_up_to_the_length_limit_are_numbers(text, value):
    assert number(text) == value


@pytest.mark.parametrize("text", [".5", "1.2.3", "1.-2", "inf", "nan", "1e5", "-1.5", "", "1." + "5" * MAX_NUMBER_DIGITS, "1" * (MAX_NUMBER_DIGITS + 1)])
def test_anything_but_a_short_plain_decimal_is_not_a_number(text):
    assert number(text) is None


def test_the_form_takes_each_setting_that_reads_cleanly_and_leaves_out_the_rest():
    text = "a dog\nNegative prompt: blur\nSteps: 12, CFG scale: 3.5, Seed: 4294967295, Size: 768x512, Sampler: x"
    assert form_fields(text) == {"prompt": "a dog", "negative_prompt": "blur", "steps": 12, "guidance": 3.5, "seed": 4294967295, "width": 768, "height": 512}
    odd = form_fields("a dog\nSteps: twelve, CFG scale: 3,5, Seed: -1, Size: 768")
    assert odd == {"prompt": "a dog", "negative_prompt": "", "width": 768}


def test_a_settings_line_needs_steps_and_every_part_to_extend_a_key():
    assert parse_parameters("a cat\nSeed: 1, Size: 64x64") == {"prompt": "a cat\nSeed: 1, Size: 64x64", "negative_prompt": ""}
    assert parse_parameters("a cat\nnot a key, Steps: 4") == {"prompt": "a cat\nnot a key, Steps: 4", "negative_prompt": ""}
    read = parse_parameters("a cat\nSteps: 4, Lora hashes: \"a: 1, b: 2\", Seed: 3, tail")
    assert read["Lora hashes"] == '"a: 1, b: 2"' and read["Seed"] == "3, tail"


@pytest.mark.parametrize("length, is_key", [(40, True), (41, False)])
def test_a_settings_key_is_at_most_40_characters(length, is_key):
    key = "K" * length
    read = parse_parameters(f"p\nSteps: 4, {key}: 1")
    assert (key in read) is is_key
    if not is_key:
        assert read["Steps"] == f"4, {key}: 1"  # not a key: it belongs to the value before it


@pytest.mark.parametrize("key, is_key", [("Model hash", True), ("a_b-c", True), ("a.b", False), ("a/b", False), ("", False)])
def test_a_settings_key_is_letters_digits_spaces_underscores_and_dashes(key, is_key):
    read = parse_parameters(f"p\nSteps: 4, {key}: 1")
    assert (key in read) is is_key


def test_a_multi_line_negative_prompt_from_another_tool_is_read_whole():
    read = parse_parameters("a cat\nNegative prompt: blur\nnoise\nSteps: 4")
    assert (read["prompt"], read["negative_prompt"], read["Steps"]) == ("a cat", "blur\nnoise", "4")
    assert parse_parameters("a\nNegative prompt: x\nNegative prompt: y\nSteps: 1")["negative_prompt"] == "x\nNegative prompt: y"


@pytest.mark.parametrize("name, safe", [('a:b<c>d,e"f', "a_b_c_d_e_f"), ("  ", "lora"), ("x\ny", "x y"), (" pad ", "pad")])
def test_a_lora_name_is_made_safe_inside_a_tag(name, safe):
    text = add_loras("a cat\nSteps: 1", [(name, 1.0, "h")])
    assert text == f'a cat <lora:{safe}:1>\nSteps: 1, Lora hashes: "{safe}: h"'


def test_without_loras_the_text_is_unchanged():
    assert add_loras("a cat\nSteps: 1", []) == "a cat\nSteps: 1"


def test_lora_tags_go_on_the_prompt_line_and_hashes_on_the_settings_line():
    text = add_loras("a cat\nNegative prompt: dog\nSteps: 1", [("a", 0.25, "h1"), ("b", 2.0, "h2")])
    assert text == 'a cat <lora:a:0.25> <lora:b:2>\nNegative prompt: dog\nSteps: 1, Lora hashes: "a: h1, b: h2"'
    assert add_loras("\nSteps: 1", [("a", 1.0, "h")]).split("\n")[0] == "<lora:a:1>"  # no leading space


def test_tags_come_out_of_the_prompt_and_the_rest_is_joined_with_single_spaces():
    assert split_lora_tags("a  <lora:one:0.5>cat <lora:two:1.25>  sits") == ("a cat sits", [("one", 0.5), ("two", 1.25)])
    assert split_lora_tags("<lora:x:y:0.5>") == ("", [("x:y", 0.5)])  # the strength is after the last colon
    assert split_lora_tags("a <lora:neg:-0.5> b") == ("a b", [("neg", -0.5)])


@pytest.mark.parametrize("prompt", ["a  <lora::1> b", "a  <lora:x:> b", "a  <lora:x:--1> b", "a  <lora:x:1", "a  <lora:x> b", "a  b"])
def test_a_malformed_or_unclosed_tag_stays_text_and_the_prompt_is_untouched(prompt):
    assert split_lora_tags(prompt) == (prompt, [])


def test_a_malformed_tag_beside_a_good_one_stays_in_place():
    assert split_lora_tags("<lora:bad> x <lora:good:1> y >") == ("<lora:bad> x y >", [("good", 1.0)])


def test_the_chunk_is_written_under_parameters():
    info = metadata.png_info("a cat\nSteps: 1")
    assert info.chunks[0][0] == b"tEXt" and info.chunks[0][1] == b"parameters\x00a cat\nSteps: 1"


def test_the_form_takes_lora_tags_out_of_the_prompt_and_a_chunk_without_settings_gives_only_prompts():
    assert form_fields("a <lora:XL style:0.5> cat\nSteps: 2") == {"prompt": "a cat", "negative_prompt": "", "loras": [("XL style", 0.5)], "steps": 2}
    assert form_fields("just a prompt") == {"prompt": "just a prompt", "negative_prompt": ""}


def test_a_lora_name_keeps_every_other_character():
    assert add_loras("p\nSteps: 1", [("XL-v2_final (1)", 1.0, "h")]).split("\n")[0] == "p <lora:XL-v2_final (1):1>"


def test_quotes_open_and_close_in_pairs_within_a_setting():
    read = parse_parameters('p\nSteps: 4, Note: "a "b" c", Seed: 3, Other: "x"y"z, Size: 8x8')
    assert read["Note"] == '"a "b" c"' and read["Seed"] == "3"  # four quotes: closed again
    assert read["Other"] == '"x"y"z, Size: 8x8'  # three quotes: still open, the rest belongs to it


def test_a_prompt_keeps_its_own_first_and_last_characters():
    assert parse_parameters("Xmas tree X\nSteps: 1")["prompt"] == "Xmas tree X"


def test_a_malformed_tag_next_to_text_stays_exactly_as_written():
    assert split_lora_tags("<lora:bad>x <lora:good:1>") == ("<lora:bad>x", [("good", 1.0)])
