"""The planner's reasons and its out-of-memory step-down, pinned line by line (pure: no GPU, no weights).

The reasons are what a user reads in `plan` and in the stats: each names a faster plan that was
passed over and the budget it broke, then the chosen plan with its prediction and the usable VRAM.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from fp8pipe import planner
from fp8pipe.cards import CARDS
from fp8pipe.sizes import SAFETY_FRACTION, GiB, Workload, format_size
from fp8pipe.specs import SPECS

LARGE = SPECS["sd3.5-large"]
WORK = Workload(1024, 1024, 1, True, 8)
CARD = CARDS["RTX 4060"]


def _usable(budget: int) -> int:
    return int(budget * (1 - SAFETY_FRACTION))


def _passed_over(ladder, chosen):
    """The plans faster than the chosen one that did not fit, fastest first."""
    return sorted((p for p in ladder if p.predicted_latency_s < chosen.predicted_latency_s and not p.fits), key=lambda p: p.predicted_latency_s)


def test_the_reasons_name_the_three_fastest_plans_passed_over_for_vram_then_the_choice():
    vram, host = 8 * GiB, 64 * GiB
    ladder = planner.plan_ladder(LARGE, vram, host, WORK, "fp8", "sdpa", "auto", CARD)
    chosen = planner.plan_placement(LARGE, vram, host, WORK, "fp8", "sdpa", "auto", CARD)
    passed = _passed_over(ladder, chosen)
    assert len(passed) > 3  # more than the three the reasons have room for
    for line, p in zip(chosen.reasons[:3], passed[:3]):
        assert line == f"not {planner._name(p)}: predicts {p.predicted_latency_s:.2f} s but needs {format_size(p.predicted_peak_vram_bytes)} VRAM"
    assert not chosen.reasons[3].startswith("not ")
    assert chosen.reasons[3] == (
        f"{planner._name(chosen)}: predicted {chosen.predicted_latency_s:.2f} s (floor {chosen.floor_latency_s:.2f} s) on RTX 4060, "
        f"{format_size(chosen.predicted_peak_vram_bytes)} of {format_size(_usable(vram))} usable VRAM"
    )


def test_a_plan_passed_over_for_host_ram_says_host_ram_and_what_it_needs_there():
    # T5 held to 16-bit and 12 GiB of host RAM: keeping everything resident fits the 24 GiB card
    # but its load passes T5 (9.1 GiB) through the host beside the runtime.
    vram, host = 24 * GiB, 12 * GiB
    chosen = planner.plan_placement(LARGE, vram, host, WORK, "fp8", "sdpa", "16bit", CARD)
    resident = next(p for p in planner.plan_ladder(LARGE, vram, host, WORK, "fp8", "sdpa", "16bit", CARD) if p.placement == "resident")
    assert resident.predicted_peak_vram_bytes <= _usable(vram)
    assert resident.predicted_peak_host_bytes > host and resident.predicted_latency_s < chosen.predicted_latency_s
    assert chosen.reasons[0] == f"not resident with T5 16bit: predicts {resident.predicted_latency_s:.2f} s but needs {format_size(resident.predicted_peak_host_bytes)} host RAM"
    assert len([r for r in chosen.reasons if r.startswith("not ")]) == len(_passed_over(planner.plan_ladder(LARGE, vram, host, WORK, "fp8", "sdpa", "16bit", CARD), chosen))


def test_a_plan_name_says_how_many_blocks_stay_resident_only_for_partial_residency():
    ladder = planner.plan_ladder(LARGE, 8 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD)
    partial = next(p for p in ladder if p.placement == "partial")
    assert planner._name(partial) == f"partial ({partial.resident_blocks} blocks resident) with T5 drop"
    offload = next(p for p in ladder if p.placement == "group_offload")
    assert planner._name(offload) == "group_offload with T5 drop"


def test_plans_tied_within_the_tie_fraction_go_to_the_more_exact_t5_then_the_least_vram():
    base = planner.plan_ladder(LARGE, 80 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "auto", CARD)[0]
    t = base.predicted_latency_s
    edge = t * (1 + planner.TIE_FRACTION)  # exactly at the tie bound: still a tie
    fast_drop = replace(base, t5="drop", predicted_latency_s=t, predicted_peak_vram_bytes=100)
    tied_16 = replace(base, t5="16bit", predicted_latency_s=edge, predicted_peak_vram_bytes=300)
    tied_fp8_small = replace(base, t5="fp8", predicted_latency_s=edge, predicted_peak_vram_bytes=50)
    assert planner.choose([fast_drop, tied_fp8_small, tied_16]) is tied_16
    assert planner.choose([fast_drop, tied_fp8_small]) is tied_fp8_small
    cpu_small = replace(base, t5="cpu", predicted_latency_s=edge, predicted_peak_vram_bytes=200)
    assert planner.choose([fast_drop, tied_16, cpu_small]) is cpu_small  # 16-bit T5 on either device is the same T5
    slower = replace(base, t5="16bit", predicted_latency_s=edge * 1.001, predicted_peak_vram_bytes=1)
    assert planner.choose([fast_drop, slower]) is fast_drop
    assert planner.choose([replace(fast_drop, fits=False)]) is None


@pytest.mark.parametrize("t5_policy", ["auto", "drop"])
def test_a_step_down_keeps_the_request_its_card_and_t5_hold_and_takes_the_fastest_fitting_plan_below(t5_policy):
    work = Workload(768, 1024, 2, False, 6)
    plan = planner.plan_placement(LARGE, 16 * GiB, 64 * GiB, work, "fp8", "sdpa-math", t5_policy, CARD)
    lower = planner.next_plan(plan, LARGE)
    same = ("width", "height", "batch", "guidance", "steps", "card", "t5_policy", "precision", "attention", "execution", "vram_budget_bytes", "host_budget_bytes")
    assert {k: getattr(lower, k) for k in same} == {k: getattr(plan, k) for k in same}
    ladder = planner.plan_ladder(LARGE, 16 * GiB, 64 * GiB, work, "fp8", "sdpa-math", t5_policy, CARD)
    below = [p for p in ladder if p.predicted_peak_vram_bytes < plan.predicted_peak_vram_bytes]
    expected = planner.choose(below)
    assert lower.predicted_peak_vram_bytes < plan.predicted_peak_vram_bytes
    assert (lower.placement, lower.t5, lower.resident_blocks, lower.predicted_latency_s) == (expected.placement, expected.t5, expected.resident_blocks, expected.predicted_latency_s)
    assert lower.reasons == (f"stepped down from {planner._name(plan)} after running out of memory", *expected.reasons)
    assert planner.next_plan(plan, LARGE, attention="sdpa").attention == "sdpa"  # a fallback attention is honoured


def test_a_step_down_with_nothing_fitting_below_takes_the_plan_needing_the_least_vram():
    plan = planner.plan_ladder(LARGE, 1 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD)[0]  # nothing fits 1 GiB
    lower = planner.next_plan(plan, LARGE)
    least = min(planner.plan_ladder(LARGE, 1 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD), key=lambda p: p.predicted_peak_vram_bytes)
    assert not lower.fits and lower.predicted_peak_vram_bytes == least.predicted_peak_vram_bytes
    assert lower.reasons[0].startswith("stepped down from resident with T5 drop")


def _synthetic(base, **fields):
    return replace(base, **fields)


def test_a_passed_over_plan_is_named_for_vram_only_when_its_peak_is_above_the_usable_share():
    base = planner.plan_ladder(LARGE, 100 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD)[0]
    usable = _usable(100 * GiB)
    chosen = _synthetic(base, predicted_latency_s=10.0, fits=True)
    at_usable = _synthetic(base, predicted_latency_s=5.0, fits=False, predicted_peak_vram_bytes=usable, predicted_peak_host_bytes=70 * GiB)
    above = _synthetic(base, predicted_latency_s=6.0, fits=False, predicted_peak_vram_bytes=95 * GiB)  # over 88 %, under the whole budget
    same_speed = _synthetic(base, predicted_latency_s=10.0, fits=False)  # not faster: not a reason
    lines = planner._why([chosen, at_usable, above, same_speed], chosen)
    assert lines[0].endswith(f"needs {format_size(70 * GiB)} host RAM")  # a peak of exactly the usable VRAM fits there
    assert lines[1].endswith(f"needs {format_size(95 * GiB)} VRAM")
    assert len(lines) == 3


def test_a_plan_without_a_card_steps_down_on_the_default_card():
    plan = replace(planner.plan_placement(LARGE, 16 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD), card="")
    assert planner.next_plan(plan, LARGE).card == planner.DEFAULT_CARD


def test_plan_placement_defaults_to_fp8_sdpa_auto_t5_eager_on_the_default_card():
    plain = planner.plan_placement(LARGE, 16 * GiB, 64 * GiB, WORK)
    explicit = planner.plan_placement(LARGE, 16 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "auto", CARDS[planner.DEFAULT_CARD], "eager")
    assert plain == explicit and (plain.precision, plain.attention, plain.t5_policy, plain.execution, plain.card) == ("fp8", "sdpa", "auto", "eager", planner.DEFAULT_CARD)


def test_the_candidates_are_the_fastest_fitting_plan_of_each_placement_and_t5_fitting_first():
    vram, host = 8 * GiB, 64 * GiB
    ladder = planner.plan_ladder(LARGE, vram, host, WORK, "fp8", "sdpa", "auto", CARD)
    summary = planner.plan_placement(LARGE, vram, host, WORK, "fp8", "sdpa", "auto", CARD).candidates
    groups = {(p.placement, p.t5) for p in ladder}
    assert {(c["placement"], c["t5"]) for c in summary} == groups and len(summary) == len(groups)
    for c in summary:
        plans = [p for p in ladder if (p.placement, p.t5) == (c["placement"], c["t5"])]
        fitting = [p for p in plans if p.fits]
        best = min(fitting or plans, key=lambda p: p.predicted_latency_s)  # a fitting one when any fits
        assert c == {
            "placement": best.placement,
            "t5": best.t5,
            "resident_blocks": best.resident_blocks,
            "fits": best.fits,
            "predicted_latency_s": round(best.predicted_latency_s, 4),
            "floor_latency_s": round(best.floor_latency_s, 4),
            "streamed_bytes_per_step": best.streamed_bytes_per_step,
            "predicted_peak_vram_bytes": best.predicted_peak_vram_bytes,
            "predicted_peak_host_bytes": best.predicted_peak_host_bytes,
        }
    fits = [c["fits"] for c in summary]
    assert True in fits and False in fits and fits == sorted(fits, reverse=True)  # fitting ones first
    for flag in (True, False):
        times = [c["predicted_latency_s"] for c in summary if c["fits"] is flag]
        assert times == sorted(times)
    # a group whose fastest plan does not fit: the summary shows the fastest that does
    fast = replace(ladder[0], placement="partial", t5="cpu", resident_blocks=30, predicted_latency_s=1.0, fits=False)
    slow = replace(fast, resident_blocks=10, predicted_latency_s=2.0, fits=True)
    (only,) = planner.candidates_summary([fast, slow])
    assert (only["resident_blocks"], only["fits"], only["predicted_latency_s"]) == (10, True, 2.0)


def test_when_nothing_fits_the_vram_the_first_reason_names_the_shortfall_in_numbers():
    plan = planner.plan_placement(LARGE, 1 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD)
    ladder = planner.plan_ladder(LARGE, 1 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD)
    least = min(ladder, key=lambda p: p.predicted_peak_vram_bytes)
    need, usable = least.predicted_peak_vram_bytes, _usable(1 * GiB)
    assert not plan.fits and plan.placement == least.placement
    assert plan.reasons[0] == f"nothing fits: even {least.placement} needs {format_size(need)} VRAM, {format_size(need - usable)} more than the {format_size(usable)} usable"
    assert plan.candidates == tuple(planner.candidates_summary(ladder))


def test_when_only_host_ram_is_short_the_first_reason_names_the_host_shortfall():
    host = 2 * GiB  # below the runtime's own host share: no placement fits
    plan = planner.plan_placement(LARGE, 80 * GiB, host, WORK, "fp8", "sdpa", "drop", CARD)
    least = min(planner.plan_ladder(LARGE, 80 * GiB, host, WORK, "fp8", "sdpa", "drop", CARD), key=lambda p: p.predicted_peak_vram_bytes)
    need = least.predicted_peak_host_bytes
    assert not plan.fits and least.predicted_peak_vram_bytes <= _usable(80 * GiB)
    assert plan.reasons[0] == f"nothing fits: host RAM {format_size(host)} is {format_size(need - host)} short of {least.placement}'s {format_size(need)}"
    assert plan.candidates and all(not c["fits"] for c in plan.candidates)


def test_a_chosen_plan_carries_the_candidates_summary_and_its_attention_and_execution():
    plan = planner.plan_placement(LARGE, 16 * GiB, 64 * GiB, WORK, "fp8", "sdpa-math", "drop", CARD, "compiled")
    ladder = planner.plan_ladder(LARGE, 16 * GiB, 64 * GiB, WORK, "fp8", "sdpa-math", "drop", CARD, "compiled")
    assert plan.fits and plan.candidates == tuple(planner.candidates_summary(ladder))
    assert (plan.attention, plan.execution) == ("sdpa-math", "compiled")


def test_the_ladder_counts_the_attention_scores_on_every_rung_tiled_or_not():
    from fp8pipe.sizes import denoise_activation_bytes

    # Large's counted sizes with two heads: the scores matrix small enough that the decode
    # dominates the peak, so that tiling turns on for the rungs over budget
    few_heads = replace(LARGE, transformer_config={**LARGE.transformer_config, "num_attention_heads": 2})
    ladder = planner.plan_ladder(few_heads, 8 * GiB, 64 * GiB, WORK, "fp8", "sdpa-math", "drop", CARD)
    scores = denoise_activation_bytes(few_heads, WORK, "fp8", "sdpa-math")
    assert scores > denoise_activation_bytes(few_heads, WORK, "fp8", "sdpa")
    assert any(p.vae_tiling for p in ladder) and any(not p.vae_tiling for p in ladder)
    assert all(p.breakdown["denoise_activations"] == scores for p in ladder)
    assert planner.plan_ladder(LARGE, 8 * GiB, 64 * GiB, WORK) == planner.plan_ladder(LARGE, 8 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "auto", CARDS[planner.DEFAULT_CARD], "eager")


@pytest.mark.parametrize("precision", ["fp16", "fp32"])
def test_the_ladder_plans_fp16_and_fp32_too(precision):
    ladder = planner.plan_ladder(LARGE, 80 * GiB, 64 * GiB, WORK, precision, "sdpa", "drop")
    bf16 = planner.plan_ladder(LARGE, 80 * GiB, 64 * GiB, WORK, "bf16", "sdpa", "drop")
    assert ladder[0].precision == precision and (ladder[0].predicted_peak_vram_bytes > bf16[0].predicted_peak_vram_bytes) is (precision == "fp32")


def test_vae_tiling_stays_off_where_a_tile_is_the_whole_image():
    small = Workload(512, 512, 1, True, 8)  # a 512 px tile decodes the whole 512 px image: nothing to save
    ladder = planner.plan_ladder(LARGE, 4 * GiB, 64 * GiB, small, "fp8", "sdpa", "drop", CARD)
    assert any(not p.fits for p in ladder) and not any(p.vae_tiling for p in ladder)


def test_vae_tiling_stays_off_for_a_plan_that_needs_exactly_the_usable_vram():
    resident = planner.plan_ladder(LARGE, 80 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD)[0]
    need = resident.predicted_peak_vram_bytes
    budget = next(b for b in range(int(need / (1 - SAFETY_FRACTION)) - 4, int(need / (1 - SAFETY_FRACTION)) + 4) if _usable(b) == need)
    top = planner.plan_ladder(LARGE, budget, 64 * GiB, WORK, "fp8", "sdpa", "drop", CARD)[0]
    assert (top.placement, top.vae_tiling, top.fits, top.predicted_peak_vram_bytes) == ("resident", False, True, need)


def _k(p):
    return p.resident_blocks if p.placement == "partial" else (0 if p.placement == "group_offload" else None)


def test_each_plan_carries_the_latency_models_prediction_for_its_own_placement_t5_and_tiling():
    from fp8pipe import latency

    ladder = planner.plan_ladder(LARGE, 8 * GiB, 64 * GiB, WORK, "fp8", "sdpa", "auto", CARD, "compiled")
    assert any(p.vae_tiling for p in ladder) and any(p.streamed_bytes_per_step for p in ladder)
    for p in ladder:
        pred = latency.predict(planner.latency_job(LARGE, "fp8", p.placement, p.t5, WORK, p.vae_tiling, _k(p), "compiled"), CARD)
        assert (p.predicted_latency_s, p.floor_latency_s, p.predicted_step_s, p.streamed_bytes_per_step) == (pred.latency_s, pred.floor_s, pred.step_s, pred.streamed_bytes_per_step)
        assert p.stages == {s.name: {"predicted_s": s.seconds, "floor_s": s.floor_seconds} for s in pred.stages}


@pytest.mark.parametrize("t5, resident_after", [("auto", True), ("drop", False)])
def test_a_step_down_stays_compiled_only_while_it_stays_resident(t5, resident_after):
    plan = planner.plan_placement(LARGE, 32 * GiB, 64 * GiB, WORK, "fp8", "sdpa", t5, CARDS["RTX 4090"], "compiled")
    assert plan.placement == "resident" and plan.execution == "compiled"
    lower = planner.next_plan(plan, LARGE)
    assert (lower.placement == "resident") is resident_after
    assert lower.execution == ("compiled" if resident_after else "eager")  # the engine compiles resident transformers only


@pytest.mark.parametrize("tiled_work, attention", [(False, "sdpa-math"), (True, "sdpa")])
def test_t5_on_the_host_becomes_drop_with_drops_peaks_when_host_ram_cannot_hold_it(tiled_work, attention):
    work = Workload(1536, 1536, 1, True, 8) if tiled_work else WORK  # 1536 px: the decode needs tiling on 8 GiB
    host = 8 * GiB
    ladder = planner.plan_ladder(LARGE, 8 * GiB, host, work, "fp8", attention, "cpu", CARD)
    dropped = [p for p in ladder if p.t5 == "drop"]
    assert dropped and any(p.vae_tiling for p in dropped) is tiled_work
    t5_size = format_size(planner.component_sizes(LARGE.name, "fp8").t5_16bit)
    for p in dropped:
        assert p.breakdown == planner.predict(LARGE, "fp8", p.placement, "drop", work, p.vae_tiling, attention, _k(p))
        assert f"T5 dropped: host RAM {format_size(host)} cannot also hold T5 ({t5_size})" in p.reasons


def test_t5_stays_on_the_host_when_the_host_ram_is_exactly_what_the_plan_needs():
    need = planner.predict(LARGE, "fp8", "resident", "cpu", WORK, False, "sdpa", None)["host"]
    ladder = planner.plan_ladder(LARGE, 80 * GiB, need, WORK, "fp8", "sdpa", "cpu", CARD)
    resident = next(p for p in ladder if p.placement == "resident")
    assert (resident.t5, resident.predicted_peak_host_bytes, resident.fits) == ("cpu", need, True)
    one_short = next(p for p in planner.plan_ladder(LARGE, 80 * GiB, need - 1, WORK, "fp8", "sdpa", "cpu", CARD) if p.placement == "resident")
    assert one_short.t5 == "drop"


def test_the_eager_twin_of_a_compiled_plan_keeps_its_placement_level_and_lora_bytes():
    work = replace(WORK, lora_bytes=512 * 2**20)
    compiled = replace(planner.plan_placement(LARGE, 32 * GiB, 64 * GiB, work, "fp8", "sdpa", "auto", CARDS["RTX 4090"], "compiled"), level=3)
    eager = planner.as_eager(compiled, LARGE, CARDS["RTX 4090"])
    assert compiled.execution == "compiled" and eager.execution == "eager"
    assert (eager.placement, eager.t5, eager.vae_tiling, eager.level) == (compiled.placement, compiled.t5, compiled.vae_tiling, 3)
    assert eager.lora_bytes == work.lora_bytes and eager.predicted_peak_vram_bytes == compiled.predicted_peak_vram_bytes
    assert eager.predicted_latency_s > compiled.predicted_latency_s  # the eager quantizer and elementwise traffic cost time
