"""The benchmark harness: work counting, random weights made in place, the JSON report, projections.

No timing assertions: timings are facts of a machine, not of the code.
"""

from __future__ import annotations

import json
import os

import pytest
import torch

from fp8pipe import bench, flops, specs
from fp8pipe.cli import main
from fp8pipe.fp8 import FP8_DTYPE, FP8_MAX, FP8Linear
from fp8pipe.projection import CARDS, project

# DESIGN.md, "Work per image": TFLOP per transformer pass at 512 / 768 / 1024 px, 333 text tokens.
DESIGN_TFLOP_PER_PASS = {"sd3.5-large": (8.0, 16.8, 31.1), "sd3.5-medium": (2.4, 5.6, 11.2)}


@pytest.mark.parametrize("name", sorted(DESIGN_TFLOP_PER_PASS))
def test_flop_count_matches_design_per_pass_figures(name):
    config = specs.SPECS[name].transformer_config
    for resolution, expected in zip((512, 768, 1024), DESIGN_TFLOP_PER_PASS[name]):
        counted = flops.transformer_pass_work(config, resolution, resolution, txt=333).flops / 1e12
        assert counted == pytest.approx(expected, rel=0.03), (resolution, counted)


def test_guidance_doubles_the_work_per_image():
    config = specs.SPECS["sd3.5-large"].transformer_config
    one = flops.image_flops(config, 1024, 1024, steps=4, guidance=0.0)
    assert flops.image_flops(config, 1024, 1024, steps=4, guidance=3.5) == pytest.approx(2 * one)
    assert one == pytest.approx(4 * flops.transformer_pass_work(config, 1024, 1024).flops)


def test_fp8_halves_the_counted_transformer_bytes_of_large():
    config = specs.SPECS["sd3.5-large"].transformer_config
    bf16, fp8 = flops.transformer_weight_bytes(config, "bf16"), flops.transformer_weight_bytes(config, "fp8")
    assert bf16 == pytest.approx(2 * 8.06e9, rel=0.03)  # DESIGN: 8.06 B parameters (+ the position table)
    assert 0.45 < fp8 / bf16 < 0.55


def test_random_e4m3_bytes_are_finite_and_in_range():
    q = bench.random_e4m3((256, 256), torch.device("cpu"), torch.Generator().manual_seed(0))
    assert q.dtype == FP8_DTYPE
    values = q.float()
    assert torch.isfinite(values).all() and values.abs().max() <= FP8_MAX
    assert (values < 0).any() and (values > 0).any()


def test_random_fp8_transformer_is_made_in_its_final_dtypes():
    config = specs.DEMO_TRANSFORMER
    model = bench.random_transformer(config, "fp8", torch.device("cpu"), seed=0, fp8_path="upcast")
    tensors = [*model.parameters(), *model.buffers()]
    assert not any(t.is_meta for t in tensors)
    layers = [m for m in model.modules() if isinstance(m, FP8Linear)]
    assert layers and all(m.weight.dtype == FP8_DTYPE and m.scale.dtype == torch.float32 for m in layers)
    assert all((m.scale > 0).all() for m in layers)
    x = torch.randn(1, 16, 16, 16)
    out = model(hidden_states=x, timestep=torch.tensor([500.0]), encoder_hidden_states=torch.randn(1, 10, 64), pooled_projections=torch.randn(1, 64), return_dict=False)[0]
    assert out.shape == x.shape and torch.isfinite(out).all()


def test_position_table_is_computed_like_the_constructor():
    from diffusers import SD3Transformer2DModel

    config = specs.SPECS["sd3.5-medium"].transformer_config | {"num_layers": 1, "dual_attention_layers": [], "num_attention_heads": 2}
    reference = SD3Transformer2DModel.from_config(config).pos_embed.pos_embed
    made = bench.random_transformer(config, "bf16", torch.device("cpu"), seed=0, dtype=torch.float32).pos_embed.pos_embed
    torch.testing.assert_close(made, reference)


def test_random_pipeline_ties_stay_tied_and_position_ids_count():
    pipe = bench.random_pipeline(specs.SPECS["demo"], "bf16", torch.device("cpu"))
    t5 = pipe.text_encoder_3
    assert t5.shared.weight is t5.encoder.embed_tokens.weight
    ids = pipe.text_encoder.text_model.embeddings.position_ids
    assert ids.tolist() == [list(range(ids.shape[-1]))]


def test_fp8_t5_encodes_with_its_gated_mlp_output_kept_16bit():
    pipe = bench.random_pipeline(specs.SPECS["demo"], "bf16", torch.device("cpu"), t5="fp8")
    t5 = pipe.text_encoder_3
    assert isinstance(t5.encoder.block[0].layer[1].DenseReluDense.wi_0, FP8Linear)
    assert not isinstance(t5.encoder.block[0].layer[1].DenseReluDense.wo, FP8Linear)
    out = t5(torch.tensor([[5, 6, 7, 1]])).last_hidden_state
    assert torch.isfinite(out).all()


def test_size_parsing_and_vram_cap_is_not_applied_on_cpu():
    assert bench.parse_size("8GiB") == 8 * 2**30
    assert bench.parse_size("7.5 GB") == int(7.5 * 2**30)  # binary units, as the planner reads --vram
    assert bench.parse_size("512MiB") == 512 * 2**20
    with pytest.raises(ValueError):
        bench.parse_size("eight")
    limit = bench.apply_vram_limit(bench.parse_size("8GiB"), torch.device("cpu"))
    assert limit["applied"] is False and "not applied" in limit["note"]


def test_ratios_are_taken_between_twin_rows_only():
    base = {"arch": "tiny", "resolution": 128, "steps": 2, "guidance": 4.5, "placement": "resident", "compile": False, "status": "ok"}
    rows = [
        {**base, "precision": "bf16", "step_time_s": 2.0, "peak_memory_bytes": 100, "latency_s": 4.0},
        {**base, "precision": "fp8", "step_time_s": 1.0, "peak_memory_bytes": 60, "latency_s": 3.0},
        {**base, "precision": "fp8", "resolution": 256, "step_time_s": 1.0, "peak_memory_bytes": 60, "latency_s": 3.0},
    ]
    bench.add_ratios(rows)
    assert rows[0]["fp8_vs_bf16"] is None and rows[2]["fp8_vs_bf16"] is None
    assert rows[1]["fp8_vs_bf16"] == {"step_time_s": 0.5, "peak_memory_bytes": 0.6, "latency_s": 0.75}


def test_bench_cli_tiny_writes_json_schema_with_both_precisions_and_ratios(tmp_path, capsys):
    out, md, png = tmp_path / "out.json", tmp_path / "out.md", tmp_path / "out.png"
    argv = ["bench", "--arch", "tiny", "--precision", "bf16,fp8", "--steps", "2", "--repeats", "1", "--device", "cpu", "--vram-limit", "8GiB", "--min-warmup-s", "0"]
    assert main([*argv, "--json", str(out), "--markdown", str(md), "--plot", str(png)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "measurement" and report["command"].startswith("python -m fp8pipe bench --arch tiny")
    for key in ("torch", "diffusers", "transformers", "device", "device_name", "driver"):
        assert key in report["environment"]
    assert report["vram_limit"]["applied"] is False and "not applied" in report["vram_limit"]["note"]
    rows = {r["precision"]: r for r in report["rows"]}
    assert set(rows) == {"bf16", "fp8"}
    for row in rows.values():
        assert row["status"] == "ok", row.get("error")
        for key in ("step_time_s", "latency_s", "load_s", "tflop_per_image", "achieved_tflops", "peak_host_bytes", "peak_memory_bytes"):
            assert isinstance(row[key], (int, float)) and row[key] > 0, key
        assert row["peak_vram_allocated_bytes"] is None  # the CPU has no VRAM: said, not invented
        assert isinstance(row["step_times_s"], list) and len(row["step_times_s"]) == row["transformer_calls"] == 2
    ratio = rows["fp8"]["fp8_vs_bf16"]
    for key in bench.RATIO_KEYS:
        assert ratio[key] == pytest.approx(rows["fp8"][key] / rows["bf16"][key])
    assert rows["bf16"]["fp8_vs_bf16"] is None
    (fid,) = report["fidelity"]
    assert len(fid["per_step_rel_l2"]) == 2 and 0 < fid["final_latent_rel_l2"] < 0.5
    assert fid["finite"] is True
    assert rows["fp8"]["fidelity"]["final_latent_rel_l2"] == fid["final_latent_rel_l2"]
    assert report["still_to_measure"]  # a CPU run says what a GPU must still measure
    text = md.read_text()
    assert "| model" in text and report["command"] in text and "Still to be measured" in text
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_full_size_on_the_cpu_is_skipped_with_a_reason_not_built():
    cases = bench.make_cases(["large"], ["bf16", "fp8"], [512], 2, None, ["resident"], [False])
    report = bench.run_bench(cases, bench.BenchOptions(device="cpu"), log=lambda _: None)
    assert [r["status"] for r in report["rows"]] == ["skipped", "skipped"]
    assert all("full-size" in r["error"] for r in report["rows"])
    assert report["fidelity"][0]["error"].startswith("skipped")
    assert all(r["tflop_per_image"] > 0 for r in report["rows"])  # the work is still counted


def test_projection_is_labelled_and_3060_takes_the_upcast_path(tmp_path):
    large = specs.SPECS["sd3.5-large"]
    on_3060 = project(large, CARDS["RTX 3060"], "fp8", 1024, 28, 3.5)
    assert on_3060["kind"] == "projection" and on_3060["matmul"] == "upcast to 16-bit"
    on_4090 = {p: project(large, CARDS["RTX 4090"], p, 1024, 28, 3.5) for p in ("bf16", "fp8")}
    assert on_4090["fp8"]["latency_floor_s"] < on_4090["bf16"]["latency_floor_s"]
    assert project(large, CARDS["RTX 4060"], "fp8", 1024, 28, 3.5)["placement"] != "resident"  # 8 GB holds no Large
    out = tmp_path / "p.json"
    assert main(["bench", "--project", "--arch", "large", "--resolution", "1024", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["kind"] == "projection" and "not a measurement" in report["note"]
    assert {r["card"] for r in report["rows"]} == set(CARDS)


@pytest.mark.skipif(not os.environ.get("FP8PIPE_SLOW_TESTS"), reason="torch.compile on the CPU takes minutes; set FP8PIPE_SLOW_TESTS=1")
def test_compiled_and_fused_fp8_case_runs_on_cpu():
    case = bench.Case("tiny", "fp8", 128, 2, 4.5, compile=True)
    row = bench.run_case(case, bench.BenchOptions(device="cpu", fuse_quant=True, repeats=1, min_warmup_s=0))
    assert row["status"] == "ok", row.get("error")
