"""FP8 numerics against bounds derived from E4M3 itself, not picked from a run.

E4M3 keeps 3 mantissa bits, so rounding to nearest moves a normal value by at most half a
step: a relative error of 2^-4 per element. Below the smallest normal (2^-6 in the scaled
domain) the spacing is the subnormal step 2^-9, so the absolute error there is at most
2^-10 in the scaled domain, i.e. 2^-10 * scale in the original one. Every bound below is
built from these two numbers (plus float32 accumulation, which is 2^-24-relative and far
below them); a missing bias, scale or a wrong dtype crosses them.
"""

import math

import pytest
import torch
from torch import nn

from fp8pipe import fp8
from fp8pipe.fp8 import (
    FP8_DTYPE,
    FP8_MAX,
    FP8Linear,
    FP8Policy,
    choose_path,
    dequantize_rowwise,
    fp8_report,
    psnr,
    quantize_rowwise,
    relative_l2,
    set_fp8_path,
    swap_linears_to_fp8,
)

REL = 2.0**-4  # half an E4M3 step, relative (3 mantissa bits)
SUB = 2.0**-10  # half the E4M3 subnormal step, in units of the scale
ACCUM = 1e-5  # float32 accumulation over <= 64 terms, relative to sum |w||x|, with room


def _generator(seed=0):
    return torch.Generator().manual_seed(seed)


def _rows_spanning_1e4(out_features=8, in_features=64, seed=0):
    """A weight whose row magnitudes run from 1e-2 to 1e2: a factor 1e4 between rows."""
    magnitudes = torch.logspace(-2, 2, out_features)[:, None]
    return torch.randn(out_features, in_features, generator=_generator(seed)) * magnitudes


def _element_bound(w: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Worst-case |dequantized - w| per element: half a step, relative or subnormal."""
    return REL * w.abs() + SUB * scale[:, None]


def test_each_row_is_scaled_so_its_largest_element_lands_on_the_e4m3_maximum():
    w = _rows_spanning_1e4()
    q, scale = quantize_rowwise(w)
    assert q.dtype == FP8_DTYPE and scale.dtype == torch.float32 and scale.shape == (w.shape[0],)
    # amax x (1/448), bit for bit: the same product on every device (a division by 448 is done as a
    # multiply by the reciprocal on CUDA but not on the CPU, so the bytes would depend on the device)
    torch.testing.assert_close(scale, w.abs().amax(dim=1) * (1.0 / FP8_MAX), rtol=0, atol=0)
    assert torch.equal(q.float().abs().amax(dim=1), torch.full((w.shape[0],), FP8_MAX))


def test_rows_differing_by_1e4_in_magnitude_each_keep_e4m3_relative_precision():
    # One scale for the whole tensor would push the 1e-2 row to subnormals (error ~1e-1 relative).
    w = _rows_spanning_1e4()
    q, scale = quantize_rowwise(w)
    error = (dequantize_rowwise(q, scale, torch.float32) - w).abs()
    assert (error <= _element_bound(w, scale)).all()
    for row in range(w.shape[0]):
        assert relative_l2(dequantize_rowwise(q, scale, torch.float32)[row], w[row]) <= REL


def test_an_all_zero_weight_row_stays_zero_and_finite():
    w = torch.randn(4, 32, generator=_generator(1))
    w[2] = 0.0
    q, scale = quantize_rowwise(w)
    assert torch.isfinite(scale).all() and scale[2] > 0
    restored = dequantize_rowwise(q, scale, torch.float32)
    assert torch.isfinite(restored).all() and torch.equal(restored[2], torch.zeros(32))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_dequantize_returns_the_asked_dtype_with_the_float32_product_rounded_once(dtype):
    w = _rows_spanning_1e4()
    q, scale = quantize_rowwise(w)
    out = dequantize_rowwise(q, scale, dtype)
    assert out.dtype == dtype
    assert torch.equal(out, (q.float() * scale[:, None]).to(dtype))


def _layer(path, weight, bias, compute_dtype=torch.float32):
    layer = FP8Linear(weight.shape[1], weight.shape[0], bias=bias is not None, path=path, compute_dtype=compute_dtype)
    layer.set_weight(weight)
    if bias is not None:
        layer.bias = nn.Parameter(bias.to(compute_dtype), requires_grad=False)
    return layer


def _output_bound(path, w, w_scale, x):
    """Worst-case |FP8Linear(x) - (x @ w.T + b)| per output element.

    upcast: only the weight is rounded: sum_j |dW_ij| |x_j|.
    scaled_mm: x is rounded per row too (scale amax/448), so with x^ = x + dx:
    |dW||x| + |W||dx| + |dW||dx|, each factor bounded as in _element_bound.
    """
    dw = _element_bound(w, w_scale)
    if path == "upcast":
        return x.abs() @ dw.T + ACCUM * (x.abs() @ w.abs().T)
    x_scale = x.abs().amax(dim=1, keepdim=True) / FP8_MAX
    dx = REL * x.abs() + SUB * x_scale
    return x.abs() @ dw.T + dx @ w.abs().T + dx @ dw.T + ACCUM * (x.abs() @ w.abs().T)


@pytest.mark.parametrize("path", ["scaled_mm", "upcast"])
def test_fp8_linear_output_is_within_the_e4m3_error_bound_of_the_exact_linear(path):
    # Activation rows also differ by 1e4: one activation scale per tensor would cross the bound.
    w = _rows_spanning_1e4(out_features=32, in_features=64)
    x = torch.randn(6, 64, generator=_generator(2)) * torch.logspace(-4, 0, 6)[:, None]
    b = torch.randn(32, generator=_generator(3))
    layer = _layer(path, w, b)
    exact = x.double() @ w.double().T + b.double()
    error = (layer(x).double() - exact).abs()
    bound = _output_bound(path, w.double(), layer.scale.double(), x.double())
    assert (error <= bound).all(), float((error / bound).max())


@pytest.mark.parametrize("path", ["scaled_mm", "upcast"])
def test_the_bias_is_added_once_the_bound_is_smaller_than_the_bias(path):
    # Guard for the test above: the bias is larger than the bound on some outputs, so a
    # layer that dropped (or doubled) it would fail there.
    w = _rows_spanning_1e4(out_features=32, in_features=64)
    x = torch.randn(6, 64, generator=_generator(2)) * torch.logspace(-4, 0, 6)[:, None]
    b = torch.randn(32, generator=_generator(3))
    bound = _output_bound(path, w.double(), _layer(path, w, b).scale.double(), x.double())
    assert (b.double().abs() > bound).any()


@pytest.mark.parametrize("path", ["scaled_mm", "upcast"])
def test_a_zero_input_row_gives_exactly_the_bias(path):
    w = torch.randn(16, 32, generator=_generator(4))
    b = torch.randn(16, generator=_generator(5))
    x = torch.zeros(3, 32)
    x[1] = torch.randn(32, generator=_generator(6))
    y = _layer(path, w, b)(x)
    assert torch.isfinite(y).all()
    assert torch.equal(y[0], b) and torch.equal(y[2], b)


@pytest.mark.parametrize("path", ["scaled_mm", "upcast"])
def test_output_keeps_the_input_dtype_and_leading_shape(path):
    w = torch.randn(16, 32, generator=_generator(7))
    layer = _layer(path, w, torch.randn(16, generator=_generator(8)), compute_dtype=torch.bfloat16)
    x = torch.randn(2, 5, 32, generator=_generator(9)).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 5, 16)
    exact = x.double().reshape(10, 32) @ w.double().T + layer.bias.double()
    # bf16 keeps 8 significant bits: rounding to it is 2^-9 relative, once for the dequantized
    # weight (upcast) and once for the output; 2^-8 on the output leaves room for its own error.
    x2d = x.double().reshape(10, 32)
    bound = _output_bound(path, w.double(), layer.scale.double(), x2d) + 2.0**-9 * (x2d.abs() @ w.double().abs().T) + 2.0**-8 * exact.abs()
    assert ((y.double().reshape(10, 16) - exact).abs() <= bound).all()


def test_a_layer_without_bias_has_none_and_runs():
    layer = _layer("upcast", torch.randn(16, 32, generator=_generator(10)), None)
    assert layer.bias is None
    x = torch.randn(2, 32, generator=_generator(11))
    # Two rows take the few-rows path (scale after the matmul): equal up to float32 rounding.
    torch.testing.assert_close(layer(x), x @ dequantize_rowwise(layer.weight, layer.scale, torch.float32).T, rtol=1e-5, atol=1e-5)


def test_few_rows_apply_the_scale_after_the_matmul_and_many_rows_dequantize_first():
    layer = _layer("upcast", torch.randn(16, 32, generator=_generator(12)), torch.randn(16, generator=_generator(13)))
    reference = lambda x: x.double() @ dequantize_rowwise(layer.weight, layer.scale, torch.float64).T + layer.bias.double()  # noqa: E731
    few = torch.randn(2, 32, generator=_generator(14))
    many = torch.randn(fp8.FEW_ROWS + 1, 32, generator=_generator(15))
    assert torch.equal(layer(many), many @ dequantize_rowwise(layer.weight, layer.scale, torch.float32).T + layer.bias)
    assert (layer(few).double() - reference(few)).abs().max() < 1e-5


def test_exactly_few_rows_take_the_few_rows_path_and_one_more_row_dequantizes(monkeypatch):
    layer = _layer("upcast", torch.randn(16, 32, generator=_generator(30)), torch.randn(16, generator=_generator(31)))
    dequantized = []
    real = fp8.dequantize_rowwise
    monkeypatch.setattr(fp8, "dequantize_rowwise", lambda *a: dequantized.append(a[-1]) or real(*a))
    layer(torch.randn(fp8.FEW_ROWS, 32, generator=_generator(32)))
    assert dequantized == []
    layer(torch.randn(2, fp8.FEW_ROWS // 2 + 1, 32, generator=_generator(33)))  # rows counted over the leading dimensions
    assert dequantized == [torch.float32]


@pytest.mark.parametrize("path", ["scaled_mm", "upcast"])
def test_many_rows_in_bf16_dequantize_to_bf16_and_stay_within_the_bound(path):
    w = torch.randn(16, 32, generator=_generator(34))
    layer = _layer(path, w, torch.randn(16, generator=_generator(35)), compute_dtype=torch.bfloat16)
    x = torch.randn(fp8.FEW_ROWS + 8, 32, generator=_generator(36)).to(torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (fp8.FEW_ROWS + 8, 16)
    exact = x.double() @ w.double().T + layer.bias.double()
    # as test_output_keeps_the_input_dtype_and_leading_shape: bf16 rounding of weight and output
    bound = _output_bound(path, w.double(), layer.scale.double(), x.double()) + 2.0**-9 * (x.double().abs() @ w.double().abs().T) + 2.0**-8 * exact.abs()
    assert ((y.double() - exact).abs() <= bound).all()


def test_many_float32_rows_with_a_bias_stored_in_bf16_compute_in_float32():
    w = torch.randn(16, 32, generator=_generator(37))
    layer = _layer("upcast", w, torch.randn(16, generator=_generator(38)), compute_dtype=torch.bfloat16)
    x = torch.randn(fp8.FEW_ROWS + 1, 32, generator=_generator(39))
    y = layer(x)
    assert y.dtype == torch.float32
    exact = x.double() @ w.double().T + layer.bias.double()
    assert ((y.double() - exact).abs() <= _output_bound("upcast", w.double(), layer.scale.double(), x.double())).all()


def test_few_rows_in_fp16_do_not_overflow_before_the_scale():
    # E4M3 values reach 448: 448 x 200 x 32 inputs passes fp16's 65504 unless the product runs wider.
    layer = _layer("upcast", torch.full((16, 32), 1e-3), None)
    x = torch.full((1, 32), 200.0, dtype=torch.float16)
    y = layer(x)
    assert y.dtype == torch.float16 and torch.isfinite(y).all()
    assert torch.allclose(y.float(), torch.full((1, 16), 32 * 200 * 1e-3), rtol=2**-7)


def test_fp8_report_counts_fp8_weight_bytes_and_everything_else_separately():
    model = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 8))
    swap_linears_to_fp8(model, FP8Policy(quantize=("0",), keep=()), "upcast", torch.bfloat16)
    report = fp8_report(model)
    assert report.quantized == ["0"] and report.kept_linear == ["1"]
    assert report.fp8_bytes == 16 * 32  # one byte per E4M3 weight
    # float32 row scales + bf16 bias of the FP8 layer, float32 weight and bias of the kept one
    assert report.other_bytes == 16 * 4 + 16 * 2 + 8 * 16 * 4 + 8 * 4
    assert report.total_bytes == report.fp8_bytes + report.other_bytes
    assert report.paths == {"upcast": 1}
    assert report.as_dict() == {
        "quantized_layers": 1,
        "kept_linear_layers": ["1"],
        "fp8_weight_bytes": 16 * 32,
        "other_bytes": 16 * 4 + 16 * 2 + 8 * 16 * 4 + 8 * 4,
        "total_bytes": 16 * 32 + 16 * 4 + 16 * 2 + 8 * 16 * 4 + 8 * 4,
        "paths": {"upcast": 1},
        "layer_paths": {"0": "upcast"},  # which path each FP8 layer takes (the plan decides per layer)
        "weight_only_adaln_layers": 0,  # no AdaLN modulation layer in this model
    }


def test_swapping_copies_the_bias_in_the_compute_dtype_and_quantizes_the_weight():
    linear = nn.Linear(32, 16)
    model = nn.Sequential(linear)
    names = swap_linears_to_fp8(model, FP8Policy(quantize=("*",), keep=()), "scaled_mm", torch.bfloat16)
    assert names == ["0"]
    layer = model[0]
    assert isinstance(layer, FP8Linear) and layer.path == "scaled_mm" and layer.compute_dtype == torch.bfloat16
    assert not any(p.requires_grad for p in layer.parameters())  # inference only: no autograd on E4M3
    assert torch.equal(layer.bias, linear.bias.data.to(torch.bfloat16))
    q, scale = quantize_rowwise(linear.weight.data)
    assert torch.equal(layer.weight.view(torch.uint8), q.view(torch.uint8)) and torch.equal(layer.scale, scale)


def test_swapping_a_meta_model_allocates_nothing_and_stays_on_meta():
    with torch.device("meta"):
        model = nn.Sequential(nn.Linear(32, 16))
    swap_linears_to_fp8(model, FP8Policy(quantize=("*",), keep=()), "upcast", torch.bfloat16)
    assert model[0].weight.device.type == "meta" and model[0].weight.dtype == FP8_DTYPE


def test_policy_quantizes_matches_unless_kept_and_survives_a_dict_round_trip():
    policy = FP8Policy(quantize=("blocks.*",), keep=("*.out",))
    assert policy.selects("blocks.0.attn") and not policy.selects("blocks.0.out") and not policy.selects("head")
    assert FP8Policy.from_dict(policy.as_dict()) == policy
    assert policy.as_dict() == {"quantize": ["blocks.*"], "keep": ["*.out"]}


def test_set_fp8_path_switches_every_layer_but_keeps_unaligned_ones_on_upcast():
    model = nn.Sequential(nn.Linear(24, 32), nn.Linear(32, 32))
    swap_linears_to_fp8(model, FP8Policy(quantize=("*",), keep=()), "upcast", torch.float32)
    set_fp8_path(model, "scaled_mm")
    assert [m.path for m in model] == ["upcast", "scaled_mm"]
    set_fp8_path(model, "upcast")
    assert [m.path for m in model] == ["upcast", "upcast"]


def test_the_cpu_takes_upcast_by_default_and_unknown_paths_are_refused_by_name():
    # on the CPU, scaled_mm measured slower and less accurate than upcast (issue 16's demo run)
    assert choose_path("cpu") == "upcast"
    assert choose_path("cpu", "scaled_mm") == "scaled_mm"
    assert choose_path("cpu", "upcast") == "upcast"
    with pytest.raises(ValueError, match="auto, scaled_mm, upcast"):
        choose_path("cpu", "fast")


def test_relative_l2_is_the_norm_of_the_difference_over_the_norm_of_the_reference():
    assert relative_l2(torch.tensor([3.0, 4.0]), torch.tensor([0.0, 4.0])) == pytest.approx(3 / 4)
    assert relative_l2(torch.tensor([0.0, 0.0]), torch.tensor([6.0, 8.0])) == pytest.approx(1.0)
    assert relative_l2(torch.tensor([0.3]), torch.tensor([0.4])) == pytest.approx(0.25)  # a reference norm below 1


def test_psnr_of_pictures_one_level_apart_everywhere_is_20_log10_255():
    import numpy as np
    from PIL import Image

    a = np.full((4, 4, 3), 100, dtype=np.uint8)
    assert psnr(a, a) == math.inf
    assert psnr(a, a + 1) == pytest.approx(20 * math.log10(255.0))  # 100 - 101 must not wrap around in uint8
    assert psnr(a + 2, a) == pytest.approx(20 * math.log10(255.0 / 2))
    gray = Image.fromarray(np.full((4, 4), 100, dtype=np.uint8))  # PIL pictures are compared in RGB
    assert psnr(gray, Image.fromarray(a + 1)) == pytest.approx(20 * math.log10(255.0))
    assert psnr(Image.fromarray(a + 1), gray) == pytest.approx(20 * math.log10(255.0))


def test_fp8_report_sums_the_bytes_and_path_counts_of_several_fp8_layers():
    model = nn.Sequential(nn.Linear(32, 16), nn.Linear(16, 32), nn.Linear(32, 8))
    swap_linears_to_fp8(model, FP8Policy(quantize=("*",), keep=()), "upcast", torch.float32)
    report = fp8_report(model)
    assert report.fp8_bytes == 16 * 32 + 32 * 16 + 8 * 32
    assert report.paths == {"upcast": 3}


def test_an_fp8_linear_built_with_defaults_has_a_bias_the_upcast_path_and_no_gradients():
    layer = FP8Linear(32, 16, device="meta")
    assert layer.path == "upcast" and layer.compute_dtype == torch.bfloat16
    assert (layer.weight.dtype, layer.weight.shape) == (FP8_DTYPE, (16, 32))
    assert (layer.scale.dtype, layer.scale.shape) == (torch.float32, (16,))
    assert (layer.bias.dtype, layer.bias.shape) == (torch.bfloat16, (16,))
    assert all(p.device.type == "meta" and not p.requires_grad for p in layer.parameters())


def test_the_scaled_mm_path_rounds_activations_to_e4m3_and_the_upcast_path_does_not():
    w = torch.randn(16, 32, generator=_generator(12))
    x = torch.randn(3, 32, generator=_generator(13))
    b = torch.randn(16, generator=_generator(14))
    weight = dequantize_rowwise(*quantize_rowwise(w), torch.float32)
    # three rows: the few-rows upcast (scale after the matmul), equal up to float32 rounding
    torch.testing.assert_close(_layer("upcast", w, b)(x), torch.nn.functional.linear(x, weight, b), rtol=1e-5, atol=1e-5)
    xs = x.abs().amax(dim=1, keepdim=True) / FP8_MAX
    x_rounded = (x / xs).to(FP8_DTYPE).float() * xs
    expected = x_rounded.double() @ weight.double().T + b.double()
    y = _layer("scaled_mm", w, b)(x).double()
    assert ((y - expected).abs() <= ACCUM * (x_rounded.abs().double() @ weight.abs().double().T) + 1e-6).all()
    assert not torch.allclose(y, torch.nn.functional.linear(x, weight, b).double(), rtol=0, atol=1e-6)


@pytest.mark.parametrize("path", ["scaled_mm", "upcast"])
def test_a_layer_computes_in_the_input_dtype_whatever_dtype_its_bias_is_stored_in(path):
    w = torch.randn(16, 32, generator=_generator(15))
    layer = _layer(path, w, torch.randn(16, generator=_generator(16)), compute_dtype=torch.bfloat16)
    x = torch.randn(4, 32, generator=_generator(17))
    y = layer(x)
    assert y.dtype == torch.float32
    exact = x.double() @ w.double().T + layer.bias.double()
    assert ((y.double() - exact).abs() <= _output_bound(path, w.double(), layer.scale.double(), x.double())).all()


def test_without_a_capable_device_the_path_is_upcast_and_scaled_mm_is_refused_by_name():
    assert choose_path("meta") == "upcast"
    assert choose_path("meta", "upcast") == "upcast"
    with pytest.raises(ValueError, match="scaled_mm needs compute capability >= 8.9 or the CPU"):
        choose_path("meta", "scaled_mm")


def test_a_layer_too_narrow_for_scaled_mm_is_named_in_the_log(caplog):
    import logging

    model = nn.Sequential(nn.Linear(24, 32))
    with caplog.at_level(logging.INFO, logger="fp8pipe.fp8"):
        swap_linears_to_fp8(model, FP8Policy(quantize=("*",), keep=()), "scaled_mm", torch.float32)
    assert "fp8: 0 (32x24) is not a multiple of 16: upcast path" in caplog.messages
