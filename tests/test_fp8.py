"""FP8 weights, the two execution paths, and what the policy keeps in 16-bit."""

import pytest
import torch
from conftest import TEST_TRANSFORMER, run_transformer, transformer_inputs
from torch import nn

from fp8pipe.checkpoint import transformer_storage_state
from fp8pipe.fp8 import (
    FP8_DTYPE,
    TRANSFORMER_POLICY,
    FP8Linear,
    is_weight_only_layer,
    quantize_rowwise,
    relative_l2,
    tensor_bytes,
)


def test_every_quantized_linear_holds_e4m3_weights_and_float32_row_scales(load_tiny):
    transformer = load_tiny(precision="fp8").pipe.transformer
    layers = [m for m in transformer.modules() if isinstance(m, FP8Linear)]
    assert len(layers) > 0
    for layer in layers:
        assert layer.weight.dtype == FP8_DTYPE
        assert layer.scale.dtype == torch.float32
        assert layer.scale.shape == (layer.out_features,)


def test_policy_keeps_embeddings_final_norm_and_proj_out_in_higher_precision(load_tiny):
    transformer = load_tiny(precision="fp8").pipe.transformer
    for name in ("context_embedder", "proj_out", "norm_out.linear", "time_text_embed.timestep_embedder.linear_1"):
        module = transformer.get_submodule(name)
        assert type(module) is nn.Linear and module.weight.dtype == torch.float32, name
    every_block_linear_is_fp8 = all(
        isinstance(m, FP8Linear) for n, m in transformer.named_modules() if n.startswith("transformer_blocks.") and isinstance(m, (nn.Linear, FP8Linear))
    )
    assert every_block_linear_is_fp8


def test_clip_and_vae_keep_their_dtype_when_the_transformer_is_fp8(load_tiny):
    pipe = load_tiny(precision="fp8").pipe
    for component in (pipe.text_encoder, pipe.text_encoder_2, pipe.vae, pipe.text_encoder_3):
        assert {p.dtype for p in component.parameters()} == {torch.float32}  # the CPU runs them in fp32


@pytest.mark.parametrize("path", ["scaled_mm", "upcast"])
def test_fp8_transformer_output_is_within_5_percent_of_fp32(load_tiny, path):
    inputs = transformer_inputs(TEST_TRANSFORMER)
    reference = run_transformer(load_tiny(precision="fp32"), inputs)
    fp8 = load_tiny(precision="fp8", fp8_path=path)
    paths = {name: m.path for name, m in fp8.pipe.transformer.named_modules() if isinstance(m, FP8Linear)}
    assert {p for name, p in paths.items() if not is_weight_only_layer(name)} == {path}  # AdaLN layers: always upcast
    assert relative_l2(run_transformer(fp8, inputs), reference) < 0.05


def test_fp8_weight_bytes_are_at_most_055_of_bf16(load_tiny):
    fp8 = load_tiny(precision="fp8").pipe.transformer
    bf16 = load_tiny(precision="bf16").pipe.transformer
    parameter_names = {n for n, _ in fp8.named_parameters()}
    fp8_bytes = sum(tensor_bytes(t) for n, t in transformer_storage_state(fp8).items() if n in parameter_names)
    bf16_bytes = sum(tensor_bytes(p) for p in bf16.parameters())
    assert all(p.dtype == torch.bfloat16 for p in bf16.parameters())
    assert fp8_bytes <= 0.55 * bf16_bytes


def test_row_scales_reconstruct_the_weight_within_e4m3_precision():
    w = torch.randn(64, 48, generator=torch.Generator().manual_seed(0))
    q, scale = quantize_rowwise(w)
    assert q.dtype == FP8_DTYPE and scale.shape == (64,)
    assert relative_l2(q.float() * scale[:, None], w) < 0.04  # 3 mantissa bits: ~2-3% RMS


def test_activation_outliers_are_clamped_instead_of_overflowing():
    layer = FP8Linear(32, 16, bias=False, path="scaled_mm", compute_dtype=torch.float32)
    layer.set_weight(torch.randn(16, 32))
    x = torch.randn(4, 32)
    x[0, 0] = 1e30  # far beyond E4M3's range
    y = layer(x)
    assert torch.isfinite(y).all()


def test_a_layer_whose_width_is_not_a_multiple_of_16_takes_the_upcast_path():
    from fp8pipe.fp8 import swap_linears_to_fp8

    model = nn.Sequential(nn.Linear(24, 32), nn.Linear(32, 32))
    swap_linears_to_fp8(model, TRANSFORMER_POLICY.__class__(quantize=("*",), keep=()), "scaled_mm", torch.float32)
    assert [m.path for m in model] == ["upcast", "scaled_mm"]
