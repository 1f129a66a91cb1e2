"""The memory planner: budgets in, placements and predicted peaks out (no GPU needed)."""

from __future__ import annotations

import itertools
import json
from dataclasses import replace

import pytest

from fp8pipe import memory
from fp8pipe.memory import PLACEMENTS, GiB, Workload, parse_size, plan_placement
from fp8pipe.specs import SPECS

MODELS = ("sd3.5-large", "sd3.5-large-turbo", "sd3.5-medium")
SIZES = (512, 768, 1024)
BUDGETS_GIB = (80, 24, 16, 12, 8, 6, 4)  # shrinking
HOST = 64 * GiB


def _plan(model, px, gib, precision="fp8", host=HOST):
    spec = SPECS[model]
    return plan_placement(spec, gib * GiB, host, Workload(px, px, 1, spec.guidance > 1.0), precision)


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("px", SIZES)
def test_chosen_plan_predicts_a_peak_within_the_budget(model, px):
    for gib in BUDGETS_GIB:
        plan = _plan(model, px, gib)
        assert plan.fits, (gib, plan.reasons)
        assert plan.predicted_peak_vram_bytes <= gib * GiB
        assert plan.predicted_peak_host_bytes <= HOST


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("px", SIZES)
def test_a_shrinking_budget_never_predicts_a_faster_plan(model, px):
    plans = [_plan(model, px, gib) for gib in BUDGETS_GIB]
    times = [p.predicted_latency_s for p in plans]
    assert all(a <= b * (1 + memory.TIE_FRACTION) for a, b in itertools.pairwise(times))
    peaks = [p.predicted_peak_vram_bytes for p in plans]
    assert all(peak <= gib * GiB for peak, gib in zip(peaks, BUDGETS_GIB))


@pytest.mark.parametrize("model", MODELS)
@pytest.mark.parametrize("px", SIZES)
def test_80_gib_keeps_everything_resident(model, px):
    plan = _plan(model, px, 80)
    assert (plan.placement, plan.t5, plan.vae_tiling) == ("resident", "16bit", False)


def test_kiosk_large_turbo_fp8_1024_fits_8_gib_with_margin():
    spec = SPECS["sd3.5-large-turbo"]
    plan = plan_placement(spec, 8 * GiB, HOST, Workload(1024, 1024, 1, False), "fp8", "sdpa", "drop")
    assert plan.fits
    assert plan.placement != "sequential"
    assert plan.predicted_peak_vram_bytes <= (1 - memory.SAFETY_FRACTION) * 8 * GiB


def test_bf16_needs_a_lower_rung_than_fp8_on_the_same_budget():
    # The memory ladder: the most VRAM-hungry rung that fits 16 GiB is lower for BF16 than for FP8.
    # (Which fitting rung each one then runs is the latency model's choice, not a memory fact.)
    def highest_fitting_rung(precision):
        spec = SPECS["sd3.5-large"]
        ladder = memory.plan_ladder(spec, 16 * GiB, HOST, Workload(1024, 1024, 1, spec.guidance > 1.0), precision)
        return next(p.level for p in ladder if p.fits)

    assert highest_fitting_rung("bf16") > highest_fitting_rung("fp8")


def test_fp8_transformer_weights_are_about_half_of_bf16():
    fp8 = memory.component_sizes("sd3.5-large", "fp8").transformer
    bf16 = memory.component_sizes("sd3.5-large", "bf16").transformer
    assert 0.45 < fp8 / bf16 < 0.6
    assert 15 * GiB < bf16 < 16 * GiB  # 8.06 B parameters at 2 bytes


def test_larger_images_predict_more_vram_on_the_same_placement():
    spec = SPECS["sd3.5-large"]
    peaks = [memory.predict(spec, "fp8", "resident", "cpu", Workload(px, px), False, "sdpa")["vram"] for px in SIZES]
    assert peaks == sorted(peaks) and len(set(peaks)) == 3


def test_attention_without_fused_kernels_counts_the_scores_matrix():
    spec, work = SPECS["sd3.5-large"], Workload(1024, 1024)
    fused = memory.denoise_activation_bytes(spec, work, "fp8", "sdpa")
    math = memory.denoise_activation_bytes(spec, work, "fp8", "sdpa-math")
    tokens = 64 * 64 + 333
    assert math - fused == 2 * 38 * tokens * tokens * 2 * 2


def test_vae_tiling_turns_on_when_the_full_decode_would_not_fit():
    spec, work = SPECS["sd3.5-medium"], Workload(1024, 1024)
    usable = 6 * GiB * (1 - memory.SAFETY_FRACTION)
    tiled = [p for p in memory.plan_ladder(spec, 6 * GiB, HOST, work) if p.vae_tiling]
    assert tiled and all(any("VAE tiling" in r for r in p.reasons) for p in tiled)
    for p in tiled:
        untiled = memory.predict(spec, "fp8", p.placement, p.t5, work, False, "sdpa", p.resident_blocks)
        assert untiled["vram"] > usable


def test_t5_is_dropped_when_host_ram_cannot_hold_it():
    plan = _plan("sd3.5-large", 1024, 8, host=16 * GiB)
    assert plan.t5 == "drop"
    assert any("T5 dropped" in r for r in plan.reasons)


def test_next_plan_is_a_lower_rung():
    plan = _plan("sd3.5-large", 1024, 24)
    lower = memory.next_plan(plan, SPECS["sd3.5-large"])
    assert lower is not None and lower.level > plan.level


@pytest.mark.parametrize("text", ["8GiB", "8GB", "8G", "8192MiB", "8 gib", 8 * GiB])
def test_sizes_parse_in_binary_units(text):
    assert parse_size(text) == 8 * GiB


@pytest.mark.parametrize("text", ["", "eight", "8XB", "-1G", "0"])
def test_bad_sizes_are_refused_with_the_accepted_forms(text):
    with pytest.raises(ValueError, match="8GiB"):
        parse_size(text)


def test_plan_cli_prints_one_json_object_with_the_contract_keys(capsys):
    from fp8pipe.cli import main

    assert main(["plan", "--vram", "8GiB", "--ram", "32GiB", "--model", "sd3.5-large-turbo", "--width", "1024", "--height", "1024", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    for key in ("placement", "predicted_peak_vram_bytes", "predicted_peak_host_bytes", "t5", "attention"):
        assert key in data
    assert data["predicted_peak_vram_bytes"] <= 8 * GiB


def test_plan_cli_names_the_field_of_a_bad_size(capsys):
    from fp8pipe.cli import main

    assert main(["plan", "--vram", "8GiB", "--ram", "32GiB", "--model", "medium", "--width", "1000"]) == 2
    assert "width" in capsys.readouterr().err


def test_planner_table_in_docs_is_what_the_cli_generates():
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "docs" / "planner_table.md"
    expected = memory.table_markdown(memory.planner_table("fp8"), "python -m fp8pipe plan --table docs/planner_table.md")
    assert path.read_text() == expected


def test_t5_held_to_drop_keeps_every_rung_without_t5():
    spec = SPECS["sd3.5-large-turbo"]
    ladder = memory.plan_ladder(spec, 8 * GiB, HOST, Workload(1024, 1024, 1, False), "fp8", "sdpa", "drop")
    assert {p.placement for p in ladder} == set(PLACEMENTS)
    assert {p.t5 for p in ladder} == {"drop"}
    chosen = plan_placement(spec, 8 * GiB, HOST, Workload(1024, 1024, 1, False), "fp8", "sdpa", "drop")
    assert chosen.fits and chosen.t5 == "drop"


def test_levels_stay_ordered_when_host_ram_forces_t5_out():
    plans = [_plan("sd3.5-large", 1024, gib, host=16 * GiB) for gib in BUDGETS_GIB]
    assert [p.level for p in plans] == sorted(p.level for p in plans)


# ---- properties of the ladder (what the docs table shows, asserted directly) ----------------


def test_each_rung_down_the_ladder_needs_no_more_vram_than_the_one_above_on_the_same_t5():
    spec = SPECS["sd3.5-large"]
    ladder = memory.plan_ladder(spec, 80 * GiB, HOST, Workload(1024, 1024, 1, True), "fp8")
    for t5 in memory.T5_PLACEMENTS:
        peaks = [p.predicted_peak_vram_bytes for p in ladder if p.t5 == t5]
        assert peaks == sorted(peaks, reverse=True), t5


def test_next_plan_from_the_last_rung_is_none():
    plan = _plan("sd3.5-large", 1024, 1)
    assert memory.next_plan(plan, SPECS["sd3.5-large"]) is None


@pytest.mark.parametrize("placement", ["model_offload", "group_offload", "sequential"])
def test_load_options_of_an_offload_plan_keep_the_weights_on_the_host(placement):
    plan = replace(_plan("sd3.5-large", 1024, 8), placement=placement, t5="cpu", precision="fp8")
    options = memory.load_options_for(plan, "cuda", fp8_path="upcast")
    assert (options.storage, options.device, options.precision, options.t5, options.fp8_path) == ("cpu", "cuda", "fp8", "cpu", "upcast")


def test_load_options_of_a_resident_plan_or_on_the_cpu_store_weights_where_they_run():
    plan = _plan("sd3.5-medium", 1024, 80)
    assert plan.placement == "resident"
    assert memory.load_options_for(plan, "cuda").storage is None
    offload = replace(plan, placement="group_offload")
    assert memory.load_options_for(offload, "cpu").storage is None


def test_sizes_format_in_the_largest_binary_unit_with_two_decimals():
    assert memory.format_size(8 * GiB) == "8.00 GiB"
    assert parse_size(memory.format_size(int(8.5 * GiB))) == int(8.5 * GiB)


def test_bf16_weights_on_the_gpu_are_predicted_larger_than_fp8_on_every_rung():
    spec, work = SPECS["sd3.5-large"], Workload(1024, 1024, 1, True)
    for placement in PLACEMENTS:
        fp8 = memory.predict(spec, "fp8", placement, "16bit", work, False, "sdpa")
        bf16 = memory.predict(spec, "bf16", placement, "16bit", work, False, "sdpa")
        assert fp8["vram"] <= bf16["vram"] and fp8["host"] <= bf16["host"], placement


def test_levels_order_the_candidates_by_predicted_vram():
    ladder = memory.plan_ladder(SPECS["sd3.5-large"], 8 * GiB, 16 * GiB, Workload(1024, 1024))
    assert [p.level for p in ladder] == list(range(len(ladder)))
    peaks = [p.predicted_peak_vram_bytes for p in ladder]
    assert peaks == sorted(peaks, reverse=True)
