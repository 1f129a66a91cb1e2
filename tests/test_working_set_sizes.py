"""The working sets the planner adds to the weights, as the documented per-token and per-pixel sums.

fp8pipe.sizes states each model in its comments (widths of the block's width per token,
channels per pixel of the VAE decode, T5's per-token working set); these tests recount them
for a request whose width and height differ, so a swapped axis or a dropped term shows.
"""

from __future__ import annotations

import pytest

from fp8pipe import sizes
from fp8pipe.sizes import GiB, KiB, MiB, Workload
from fp8pipe.specs import SPECS

LARGE, MEDIUM = SPECS["sd3.5-large"], SPECS["sd3.5-medium"]


def test_image_tokens_are_the_latent_patches_per_side():
    assert sizes.image_tokens(LARGE, 1024, 768) == (1024 // 16) * (768 // 16) == 3072
    assert sizes.image_tokens(LARGE, 1000, 520) == 62 * 32  # floor per side: a partial patch holds no token


def test_text_tokens_are_clips_77_and_t5s_length():
    assert sizes.text_tokens(LARGE) == 77 + LARGE.max_sequence_length == 333


@pytest.mark.parametrize("spec", [LARGE, MEDIUM], ids=["large", "medium-dual-attention"])
@pytest.mark.parametrize("precision, value, extra", [("fp8", 2, sizes.FP8_ACTIVATION_EXTRA_WIDTHS), ("bf16", 2, 0), ("fp32", 4, 0)])
@pytest.mark.parametrize("batch, guidance", [(1, True), (3, False)])
def test_denoise_activations_are_widths_per_token_per_pass(spec, precision, value, extra, batch, guidance):
    config = spec.transformer_config
    d = config["num_attention_heads"] * config["attention_head_dim"]
    work = Workload(1024, 768, batch, guidance)
    tokens = 3072 + 333
    widths = sizes.BLOCK_ACTIVATION_WIDTHS + sizes.PERSISTENT_WIDTHS + extra + (sizes.DUAL_ATTENTION_EXTRA_WIDTHS if config.get("dual_attention_layers") else 0)
    expected = work.passes * tokens * d * widths * value
    if precision == "fp8":  # the largest layer's weight dequantized for the upcast path
        expected += sizes.component_sizes(spec.name, "fp8").transformer_max_leaf * sizes.FP8_UPCAST_BYTES_PER_WEIGHT
    assert sizes.denoise_activation_bytes(spec, work, precision, "sdpa") == expected
    # without a fused attention kernel every head's scores matrix and its softmax are held too
    scores = work.passes * config["num_attention_heads"] * tokens * tokens * value * 2
    assert sizes.denoise_activation_bytes(spec, work, precision, "sdpa-math") == expected + scores


def test_guidance_doubles_the_passes_of_a_batch():
    assert Workload(8, 8, 3, True).passes == 6 and Workload(8, 8, 3, False).passes == 3


@pytest.mark.parametrize("batch", [1, 2])
def test_the_vae_decode_holds_full_resolution_feature_maps_or_one_tiles_and_the_whole_image(batch):
    work = Workload(1024, 768, batch)
    scale = LARGE.vae_config["block_out_channels"][0] / 128
    image = 1024 * 768 * 3 * 4  # the decoded picture in float32
    full = int(1024 * 768 * sizes.VAE_DECODE_CHANNELS * scale * 2)
    assert sizes.vae_decode_bytes(LARGE, work, False) == sizes.VAE_DECODE_FIXED_BYTES + batch * (full + image)
    tile = int(512 * 512 * sizes.VAE_DECODE_CHANNELS * scale * 2)
    assert sizes.vae_decode_bytes(LARGE, work, True) == sizes.VAE_DECODE_FIXED_BYTES + batch * (tile + image)
    narrow = Workload(384, 1024, batch)  # a tile is never larger than the image
    edge = int(384 * 512 * sizes.VAE_DECODE_CHANNELS * scale * 2)
    assert sizes.vae_decode_bytes(LARGE, narrow, True) == sizes.VAE_DECODE_FIXED_BYTES + batch * (edge + 384 * 1024 * 12)


def test_the_vae_decode_scales_with_the_vaes_channels():
    import dataclasses

    half = dataclasses.replace(LARGE, vae_config={**LARGE.vae_config, "block_out_channels": [64, 128, 256, 256]})
    work = Workload(512, 512, 1)
    assert sizes.vae_decode_bytes(LARGE, work, False) - sizes.vae_decode_bytes(half, work, False) == 512 * 512 * sizes.VAE_DECODE_CHANNELS // 2 * 2


@pytest.mark.parametrize("guidance", [True, False])
def test_t5s_working_set_is_per_token_hidden_and_feed_forward_per_prompt(guidance):
    t5 = LARGE.t5_config
    work = Workload(1024, 768, 2, guidance)
    assert sizes.text_encode_bytes(LARGE, work) == work.passes * LARGE.max_sequence_length * (4 * t5["d_model"] + 2 * t5["d_ff"]) * 2


@pytest.mark.parametrize(
    "text, expected", [("1.5G", 3 * GiB // 2), ("512M", 512 * MiB), ("64KiB", 64 * KiB), ("2T", 2048 * GiB), ("4096", 4096), (" 2 gb ", 2 * GiB), (2.5, 2), ("0.5k", 512)]
)
def test_sizes_take_decimals_every_binary_unit_and_plain_bytes(text, expected):
    assert sizes.parse_size(text) == expected


@pytest.mark.parametrize("text", [True, 0, -5, 0.0, "0.0001k", "8 GiB RAM", "G"])
def test_zero_negative_rounded_to_nothing_or_non_sizes_are_refused(text):
    with pytest.raises(ValueError, match="size must"):
        sizes.parse_size(text)


def test_a_size_refusal_says_what_was_given_and_the_accepted_forms():
    with pytest.raises(ValueError, match=r"8GiB, 8GB, 8G or 8192MiB; got 'lots'"):
        sizes.parse_size("lots")
    with pytest.raises(ValueError, match=r"positive amount like 8GiB.*got -1"):
        sizes.parse_size(-1)
    with pytest.raises(ValueError, match=r"positive amount like 8GiB.*got '0M'"):
        sizes.parse_size("0M")


def test_sizes_print_in_gib_with_two_decimals():
    assert sizes.format_size(3 * GiB // 2) == "1.50 GiB" and sizes.format_size(0) == "0.00 GiB"


def test_one_byte_is_the_smallest_size():
    assert sizes.parse_size(1) == 1 and sizes.parse_size("1") == 1 and sizes.parse_size("1B") == 1


def test_text_tokens_follow_the_specs_clip_length():
    import dataclasses

    assert sizes.text_tokens(dataclasses.replace(LARGE, clip_tokens=10)) == 10 + LARGE.max_sequence_length
