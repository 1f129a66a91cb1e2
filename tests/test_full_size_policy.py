"""The full SD3.5 transformers, built on the meta device: what the policy does, in bytes."""

import pytest

from fp8pipe.loader import transformer_report_on_meta
from fp8pipe.specs import SPECS


@pytest.mark.parametrize(
    "name, params_b, quantized, fp8_gb, bf16_gb",
    [("sd3.5-large", 8.06, 529, 8.2, 16.1), ("sd3.5-medium", 2.24, 385, 2.3, 4.5)],
)
def test_full_size_policy_counts_layers_and_bytes_without_allocating(name, params_b, quantized, fp8_gb, bf16_gb):
    report = transformer_report_on_meta(SPECS[name].transformer_config)
    assert report["allocated_tensors"] == 0
    assert round(report["parameters"] / 1e9, 2) == params_b
    assert report["quantized_layers"] == quantized
    assert report["kept_linear_layers"] == [
        "time_text_embed.timestep_embedder.linear_1",
        "time_text_embed.timestep_embedder.linear_2",
        "time_text_embed.text_embedder.linear_1",
        "time_text_embed.text_embedder.linear_2",
        "context_embedder",
        "norm_out.linear",
        "proj_out",
    ]
    assert report["fp8_bytes"] / 1e9 == pytest.approx(fp8_gb, abs=0.05)
    assert report["bf16_bytes"] / 1e9 == pytest.approx(bf16_gb, abs=0.05)
    assert report["fp8_over_bf16"] <= 0.52
